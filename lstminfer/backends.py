"""Which backend runs the recurrent kernels, chosen once at load.

"reference" is the pure-NumPy oracle and always available. "numba" runs the
fused kernels of ``lstminfer.kernels`` (JIT-compiled at load, cached on
disk). A fast backend may decline a node it cannot fuse (non-constant
weights, float64, ...); that node then runs the reference and ``describe()``
says why. "auto" takes the best available backend; ``LSTMINFER_BACKEND``
overrides the default "auto".
"""
from __future__ import annotations

import os

from .errors import BackendUnavailableError, InvalidArgumentError
from .graph import Node
from .ops.recurrent import register_recurrent_kernel
from .ops.registry import BuildContext

KNOWN_BACKENDS = ("auto", "reference", "numba", "cython")
_NOT_YET = {
    "cython": "the Cython kernels are not part of this version yet; use backend='numba', 'reference' or 'auto'",
}


# What "auto" picks. Stays "reference" until the fused kernels hold float32
# parity on long sequences (the cell state integrates activation error).
_AUTO = "reference"


def _why_numba_unavailable() -> str | None:
    from . import kernels

    return None if kernels.available() else "numba cannot be imported (pip install numba)"


def available_backends() -> list[str]:
    """Backends that run here, best first ("auto" takes the first)."""
    return (["numba"] if _why_numba_unavailable() is None else []) + ["reference"]


def resolve_backend(requested: str | None = "auto") -> str:
    """Concrete backend name for ``requested`` (None/"auto" -> env var or best available)."""
    if requested is None or requested == "auto":
        requested = os.environ.get("LSTMINFER_BACKEND", "auto") or "auto"
    if not isinstance(requested, str) or requested not in KNOWN_BACKENDS:
        raise InvalidArgumentError(
            f"unknown backend {requested!r}; choose one of {', '.join(KNOWN_BACKENDS)}"
        )
    if requested == "auto":
        return _AUTO
    if requested == "numba":
        why = _why_numba_unavailable()
        if why is not None:
            raise BackendUnavailableError(f"backend 'numba' is not available: {why}")
    if requested in _NOT_YET:
        raise BackendUnavailableError(f"backend '{requested}' is not available: {_NOT_YET[requested]}")
    return requested


def _constant_input(node: Node, ctx: BuildContext, index: int):
    name = node.inputs[index] if len(node.inputs) > index else ""
    return ctx.constant(name) if name else None


def _numba_builder(spec, node: Node, ctx: BuildContext):
    from . import kernels

    W, R, B, P = (_constant_input(node, ctx, i) for i in (1, 2, 3, 7))
    kernel = kernels.numba_kernel(spec, W, R, B, P, threads=ctx.options.get("threads", 1), label=node.label())
    if kernel is None:
        return None, kernels.why_not_fused(spec, W, R, B, P)
    return kernel, ""


for _op in ("LSTM", "GRU", "RNN"):
    register_recurrent_kernel("numba", _op, _numba_builder)
