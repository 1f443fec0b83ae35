"""Which backend runs the recurrent kernels, chosen once at load.

- "reference": the pure-NumPy oracle, always available.
- "cython": kernels compiled ahead of time (native/), no JIT, GIL released.
- "numba": the fused Numba kernels (JIT at load, cached on disk).

A fast backend may decline a node it cannot fuse (non-constant weights,
float64, ...): that node then runs the reference and ``describe()`` says why.
"auto" takes the first available of AUTO_ORDER; ``LSTMINFER_BACKEND``
overrides the default "auto".
"""
from __future__ import annotations

import os

from .errors import BackendUnavailableError, InvalidArgumentError
from .graph import Node
from .ops.recurrent import register_recurrent_kernel
from .ops.registry import BuildContext

KNOWN_BACKENDS = ("auto", "reference", "numba", "cython")
# Cython first: no JIT (instant cold start), and per call it measured at least
# as fast as the Numba kernels on every shape we benchmark (benchmarks/).
AUTO_ORDER = ("cython", "numba", "reference")


def _fast_module(backend: str):
    if backend == "cython":
        from .kernels import cython_backend

        return cython_backend
    from . import kernels

    return kernels


def why_unavailable(backend: str) -> str | None:
    """None if ``backend`` runs here, else the reason."""
    if backend == "reference":
        return None
    if backend == "cython":
        return _fast_module("cython").unavailable_reason()
    if backend == "numba":
        return None if _fast_module("numba").available() else "numba cannot be imported (pip install numba)"
    return f"unknown backend {backend!r}"


def available_backends() -> list[str]:
    """Backends that run here, in the order "auto" prefers them."""
    return [b for b in AUTO_ORDER if why_unavailable(b) is None]


def resolve_backend(requested: str | None = "auto") -> str:
    """Concrete backend name for ``requested`` (None/"auto" -> env var or best available)."""
    if requested is None or requested == "auto":
        requested = os.environ.get("LSTMINFER_BACKEND", "auto") or "auto"
    if not isinstance(requested, str) or requested not in KNOWN_BACKENDS:
        raise InvalidArgumentError(
            f"unknown backend {requested!r}; choose one of {', '.join(KNOWN_BACKENDS)}"
        )
    if requested == "auto":
        return available_backends()[0]
    why = why_unavailable(requested)
    if why is not None:
        raise BackendUnavailableError(f"backend '{requested}' is not available: {why}")
    return requested


def _constant_input(node: Node, ctx: BuildContext, index: int):
    name = node.inputs[index] if len(node.inputs) > index else ""
    return ctx.constant(name) if name else None


def _builder(backend: str):
    """The recurrent-op builder of a fast backend: packs constant weights once, at load."""

    def build(spec, node: Node, ctx: BuildContext):
        module = _fast_module(backend)
        make = module.cython_kernel if backend == "cython" else module.numba_kernel
        W, R, B, P = (_constant_input(node, ctx, i) for i in (1, 2, 3, 7))
        kernel = make(spec, W, R, B, P, threads=ctx.options.get("threads", 1), label=node.label())
        if kernel is None:
            return None, module.why_not_fused(spec, W, R, B, P)
        return kernel, ""

    return build


for _backend in ("cython", "numba"):
    for _op in ("LSTM", "GRU", "RNN"):
        register_recurrent_kernel(_backend, _op, _builder(_backend))
