"""LSTM, GRU and RNN: attributes parsed and checked at load, kernels swappable.

The factory turns a node into a ``RecurrentSpec`` (frozen, backend-neutral)
and then asks ``recurrent_kernel.build_recurrent_kernel`` for a kernel: the
builder of ``ctx.backend`` (``lstminfer.backends``) gets the first try, in
the weights' precision, the pure-NumPy reference (``lstminfer.reference``)
is the fallback. Every kernel carries ``kernel.describe``, a short string
naming what runs it.

Weights that are constants at load (initializers, folded values) are
checked against hidden_size/direction at load (``InvalidModelError``); all
shapes are checked again at run time, where W/R may be graph inputs, and
raise ``InvalidInputError`` naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import reference
from ..errors import InvalidModelError, UnsupportedModelError
from ..graph import Node
from ..reference.activations import Activation, activation_kind
from .recurrent_kernel import build_recurrent_kernel
from .registry import BuildContext, Kernel, register

# Inputs and outputs of each op, in spec order.
_INPUTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
_OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
_REQUIRED_INPUTS = 3  # X, W, R

_COMMON_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size")
_OP_ATTRS = {"LSTM": ("input_forget",), "GRU": ("linear_before_reset",), "RNN": ()}
_LAYOUT_SINCE = 14  # the layout attribute exists from opset 14


@dataclass(frozen=True)
class RecurrentSpec:
    """A recurrent node's attributes, validated, with the spec defaults filled in."""

    op: str  # "LSTM" | "GRU" | "RNN"
    hidden_size: int | None  # None: taken from R at run time
    direction: str  # "forward" | "reverse" | "bidirectional"
    layout: int  # 0: [T, B, ...]; 1: [B, T, ...]
    activations: tuple[Activation, ...]  # per direction, in spec order (LSTM f,g,h; GRU f,g; RNN f)
    clip: float | None  # None: no clip
    input_forget: bool = False  # LSTM only
    linear_before_reset: bool = False  # GRU only
    num_outputs: int = 1  # how many outputs the node lists (trailing ones may be omitted)

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    def reference_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``reference.lstm``/``gru``/``rnn`` for this spec."""
        kwargs: dict[str, Any] = dict(
            hidden_size=self.hidden_size, direction=self.direction, layout=self.layout,
            activations=self.activations, clip=self.clip,
        )
        if self.op == "LSTM":
            kwargs["input_forget"] = int(self.input_forget)
        if self.op == "GRU":
            kwargs["linear_before_reset"] = int(self.linear_before_reset)
        return kwargs


# ------------------------------------------------------------ parsing --


def _expect(node: Node, name: str, value: Any, types: tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        raise InvalidModelError(f"{node.label()}: attribute '{name}' must be {what}, got {value!r}")
    return value


def _float_list(node: Node, name: str) -> list[float] | None:
    values = node.attr(name, None)
    if values is None:
        return None
    if not isinstance(values, (list, tuple)):
        raise InvalidModelError(f"{node.label()}: attribute '{name}' must be a list of floats, got {values!r}")
    return [float(_expect(node, name, v, (int, float), "a list of floats")) for v in values]


def _check_structure(node: Node, op: str, opset: int) -> None:
    """Input/output counts and attribute names allowed at this opset."""
    inputs, outputs = _INPUTS[op], _OUTPUTS[op]
    if len(node.inputs) < _REQUIRED_INPUTS or any(not n for n in node.inputs[:_REQUIRED_INPUTS]):
        raise InvalidModelError(
            f"{node.label()}: inputs X, W and R are required, got inputs {list(node.inputs)}"
        )
    if len(node.inputs) > len(inputs):
        raise InvalidModelError(
            f"{node.label()}: at most {len(inputs)} inputs ({', '.join(inputs)}), got {len(node.inputs)}"
        )
    if not 1 <= len(node.outputs) <= len(outputs):
        raise InvalidModelError(
            f"{node.label()}: expected 1 to {len(outputs)} outputs ({', '.join(outputs)}), "
            f"got {len(node.outputs)}"
        )
    allowed = set(_COMMON_ATTRS) | set(_OP_ATTRS[op])
    if opset >= _LAYOUT_SINCE:
        allowed.add("layout")
    unknown = sorted(set(node.attrs) - allowed)
    if unknown:
        raise InvalidModelError(
            f"{node.label()}: unknown attribute(s) {unknown} for {op} at opset {opset} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def parse_spec(node: Node, ctx: BuildContext) -> RecurrentSpec:
    """Read and validate the node's attributes with their ONNX defaults."""
    op = node.op_type
    _check_structure(node, op, ctx.opset())

    hidden_size = node.attr("hidden_size", None)
    if hidden_size is not None:
        _expect(node, "hidden_size", hidden_size, (int,), "an integer")
        if hidden_size <= 0:
            raise InvalidModelError(f"{node.label()}: attribute 'hidden_size' must be > 0, got {hidden_size}")

    direction = _expect(node, "direction", node.attr("direction", "forward"), (str,), "a string")
    if direction not in reference.DIRECTIONS:
        raise InvalidModelError(
            f"{node.label()}: attribute 'direction' must be one of {', '.join(reference.DIRECTIONS)}, "
            f"got '{direction}'"
        )

    layout = _expect(node, "layout", node.attr("layout", 0), (int,), "an integer")
    if layout not in (0, 1):
        raise InvalidModelError(f"{node.label()}: attribute 'layout' must be 0 or 1, got {layout}")

    clip = node.attr("clip", None)
    if clip is not None:
        clip = float(_expect(node, "clip", clip, (int, float), "a float"))
        if not clip > 0:
            raise InvalidModelError(f"{node.label()}: attribute 'clip' must be a positive threshold, got {clip}")

    input_forget = _expect(node, "input_forget", node.attr("input_forget", 0), (int,), "an integer")
    if input_forget not in (0, 1):
        raise InvalidModelError(f"{node.label()}: attribute 'input_forget' must be 0 or 1, got {input_forget}")
    linear_before_reset = _expect(
        node, "linear_before_reset", node.attr("linear_before_reset", 0), (int,), "an integer"
    )

    return RecurrentSpec(
        op=op, hidden_size=hidden_size, direction=direction, layout=layout,
        activations=_parse_activations(node, op, direction), clip=clip,
        input_forget=bool(input_forget), linear_before_reset=linear_before_reset != 0,
        num_outputs=len(node.outputs),
    )


def _parse_activations(node: Node, op: str, direction: str) -> tuple[Activation, ...]:
    names = node.attr("activations", None)
    if names is not None:
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise InvalidModelError(f"{node.label()}: attribute 'activations' must be a list of strings, got {names!r}")
        for name in names:
            try:
                activation_kind(name)
            except ValueError as err:
                raise UnsupportedModelError(f"{node.label()}: attribute 'activations': {err}") from None
    alphas = _float_list(node, "activation_alpha")
    betas = _float_list(node, "activation_beta")
    try:
        return reference.cell_activations(op, direction, names, alphas, betas)
    except ValueError as err:
        raise InvalidModelError(f"{node.label()}: attribute 'activations': {err}") from None


# ------------------------------------------------------------ kernels --

def _check_constant_weights(node: Node, spec: RecurrentSpec, ctx: BuildContext) -> RecurrentSpec:
    """Check W, R, B, P that are known at load; fill hidden_size from R if absent."""
    def constant(index: int):
        if index < len(node.inputs) and node.inputs[index]:
            return ctx.constant(node.inputs[index])
        return None

    G, D = reference.GATES[spec.op], spec.num_directions
    R = constant(2)
    if spec.hidden_size is None and R is not None and np.ndim(R) == 3:
        spec = replace(spec, hidden_size=int(np.shape(R)[2]))
    H = spec.hidden_size
    if H is None:
        return spec
    expected = {  # input index -> (name, shape with None for "any", meaning)
        1: ("W", (D, G * H, None), f"[num_directions, {G}*hidden_size, input_size]"),
        2: ("R", (D, G * H, H), f"[num_directions, {G}*hidden_size, hidden_size]"),
        3: ("B", (D, 2 * G * H), f"[num_directions, {2 * G}*hidden_size]"),
        7: ("P", (D, 3 * H), "[num_directions, 3*hidden_size]"),
    }
    for index, (name, shape, meaning) in expected.items():
        value = constant(index)
        if value is None:
            continue
        value = np.asarray(value)
        if value.dtype not in reference.SUPPORTED_DTYPES:
            raise UnsupportedModelError(
                f"{node.label()}: input '{name}' ('{node.inputs[index]}') has element type {value.dtype}; "
                "supported: float32, float64"
            )
        fits = value.ndim == len(shape) and all(e is None or e == g for e, g in zip(shape, value.shape))
        if not fits:
            shown = [("input_size" if e is None else e) for e in shape]
            raise InvalidModelError(
                f"{node.label()}: input '{name}' ('{node.inputs[index]}') has shape {list(value.shape)}, "
                f"expected {shown} = {meaning} for hidden_size={H}, direction '{spec.direction}'"
            )
    return spec


def _build(node: Node, ctx: BuildContext) -> Kernel:
    return build_recurrent_kernel(_check_constant_weights(node, parse_spec(node, ctx), ctx), node, ctx)


@register("LSTM", since=7)
def lstm_factory(node: Node, ctx: BuildContext) -> Kernel:
    return _build(node, ctx)


@register("GRU", since=7)
def gru_factory(node: Node, ctx: BuildContext) -> Kernel:
    return _build(node, ctx)


@register("RNN", since=7)
def rnn_factory(node: Node, ctx: BuildContext) -> Kernel:
    return _build(node, ctx)
