"""The activation functions LSTM, GRU and RNN accept, with their alpha/beta.

Names are matched case-insensitively (onnxruntime lower-cases them too).
``activation_alpha``/``activation_beta`` are consumed in the order of the
activations list, each function taking only the values it uses: with
``["LeakyRelu", "Tanh", "HardSigmoid"]`` and alpha ``[0.1, 0.3]`` LeakyRelu
gets 0.1 and HardSigmoid 0.3 (onnxruntime's reading of the spec).

Defaults, when the lists run out, are "the same as of corresponding ONNX
operators" (spec): LeakyRelu 0.01, ThresholdedRelu 1.0, HardSigmoid 0.2/0.5,
Elu 1.0, Affine 1.0/0.0 (the old Affine op). ScaledTanh had no default in
its old op; we use 1.0/1.0 (plain tanh). NOTE: onnxruntime differs here: it
uses 0.0 for Affine, ThresholdedRelu and ScaledTanh, and its RNN kernel uses
0.0 for every function and indexes alpha/beta by direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def _sigmoid(x, alpha, beta):
    with np.errstate(over="ignore"):  # exp(-x) -> inf for very negative x gives the right 0
        return 1 / (1 + np.exp(-x))


def _relu(x, alpha, beta):
    return np.maximum(x, 0)


def _tanh(x, alpha, beta):
    return np.tanh(x)


def _affine(x, alpha, beta):
    return alpha * x + beta


def _leaky_relu(x, alpha, beta):
    return np.where(x >= 0, x, alpha * x)


def _thresholded_relu(x, alpha, beta):
    # Strict ">" as in the ThresholdedRelu op and onnxruntime (the RNN doc says ">=").
    return np.where(x > alpha, x, 0)


def _scaled_tanh(x, alpha, beta):
    return alpha * np.tanh(beta * x)


def _hard_sigmoid(x, alpha, beta):
    return np.minimum(np.maximum(alpha * x + beta, 0), 1)


def _elu(x, alpha, beta):
    # expm1 of min(x, 0): no overflow warning from the branch np.where discards.
    return np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _softsign(x, alpha, beta):
    return x / (1 + np.abs(x))


def _softplus(x, alpha, beta):
    return np.logaddexp(0, x)  # log(1 + e^x) without overflow


@dataclass(frozen=True)
class ActivationKind:
    """One entry of the table: canonical name, which of alpha/beta it takes, defaults."""

    name: str
    fn: Callable
    uses_alpha: bool = False
    uses_beta: bool = False
    default_alpha: float = 0.0
    default_beta: float = 0.0


_KINDS = (
    ActivationKind("Relu", _relu),
    ActivationKind("Tanh", _tanh),
    ActivationKind("Sigmoid", _sigmoid),
    ActivationKind("Affine", _affine, True, True, 1.0, 0.0),
    ActivationKind("LeakyRelu", _leaky_relu, True, False, 0.01),
    ActivationKind("ThresholdedRelu", _thresholded_relu, True, False, 1.0),
    ActivationKind("ScaledTanh", _scaled_tanh, True, True, 1.0, 1.0),
    ActivationKind("HardSigmoid", _hard_sigmoid, True, True, 0.2, 0.5),
    ActivationKind("Elu", _elu, True, False, 1.0),
    ActivationKind("Softsign", _softsign),
    ActivationKind("Softplus", _softplus),
)
ACTIVATION_KINDS: dict[str, ActivationKind] = {k.name.lower(): k for k in _KINDS}
SUPPORTED_ACTIVATIONS: tuple[str, ...] = tuple(k.name for k in _KINDS)


@dataclass(frozen=True)
class Activation:
    """An activation with its alpha/beta resolved; call it on an array."""

    name: str  # canonical spelling, e.g. "LeakyRelu"
    alpha: float = 0.0
    beta: float = 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kind = ACTIVATION_KINDS[self.name.lower()]
        # alpha/beta in x's dtype so float32 stays float32.
        alpha = np.asarray(self.alpha, dtype=x.dtype)
        beta = np.asarray(self.beta, dtype=x.dtype)
        return np.asarray(kind.fn(x, alpha, beta), dtype=x.dtype)


def activation_kind(name: str) -> ActivationKind:
    """Table entry for ``name`` (any case); ``ValueError`` listing the supported ones."""
    kind = ACTIVATION_KINDS.get(str(name).lower())
    if kind is None:
        raise ValueError(
            f"unknown activation '{name}' (supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
        )
    return kind


def resolve_activations(
    names: Sequence[str],
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
) -> tuple[Activation, ...]:
    """Pair each name with its alpha/beta, consuming the lists in order (see module doc).

    Surplus alpha/beta values are ignored, as onnxruntime does.
    """
    alpha_values = list(alphas or [])
    beta_values = list(betas or [])
    resolved = []
    for name in names:
        kind = activation_kind(name)
        alpha = beta = 0.0
        if kind.uses_alpha:
            alpha = float(alpha_values.pop(0)) if alpha_values else kind.default_alpha
        if kind.uses_beta:
            beta = float(beta_values.pop(0)) if beta_values else kind.default_beta
        resolved.append(Activation(kind.name, alpha, beta))
    return tuple(resolved)
