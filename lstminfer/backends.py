"""Which backend runs the recurrent kernels, chosen once at load.

- "cython": kernels compiled ahead of time (native/), no JIT, GIL released.
- "numba": the fused Numba kernels (JIT at load, cached on disk).
- "reference": the pure-NumPy oracle, always available.

A backend is a module with ``unavailable_reason()`` (None where it runs) and
``build(spec, weights, precision, ctx)`` (``lstminfer.kernels.shell``), named
by one ``register_backend`` line below; it is imported only when asked for.
A fast backend may decline a node it cannot run (non-constant weights,
float64, ...): that node then runs the reference and ``describe()`` says why.
"auto" takes the first available backend in registration order;
``LSTMINFER_BACKEND`` overrides the default "auto".
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Callable

from .errors import BackendUnavailableError, InvalidArgumentError

REFERENCE = "reference"
_MODULES: dict[str, str | ModuleType | Any] = {}  # name -> module (or its import path), in "auto" order


def register_backend(name: str, module: str | ModuleType | Any) -> None:
    """Let ``name`` run recurrent nodes; ``module``: a module, or its import path (imported on first use)."""
    _MODULES[name] = module


# Cython first: no JIT (instant cold start), and per call at least as fast as Numba (benchmarks/).
register_backend("cython", "lstminfer.kernels.cython_backend")
register_backend("numba", "lstminfer.kernels.numba_backend")


def _module(backend: str):
    module = _MODULES[backend]
    if isinstance(module, str):
        module = _MODULES[backend] = importlib.import_module(module)
    return module


def known_backends() -> tuple[str, ...]:
    return ("auto", REFERENCE, *reversed(_MODULES))


def why_unavailable(backend: str) -> str | None:
    """None if ``backend`` runs here, else the reason."""
    if backend == REFERENCE:
        return None
    if backend not in _MODULES:
        return f"unknown backend {backend!r}"
    return _module(backend).unavailable_reason()


def available_backends() -> list[str]:
    """Backends that run here, in the order "auto" prefers them."""
    return [b for b in (*_MODULES, REFERENCE) if why_unavailable(b) is None]


def resolve_backend(requested: str | None = "auto") -> str:
    """Concrete backend name for ``requested`` (None/"auto" -> env var or best available)."""
    if requested is None or requested == "auto":
        requested = os.environ.get("LSTMINFER_BACKEND", "auto") or "auto"
    known = known_backends()
    if not isinstance(requested, str) or requested not in known:
        raise InvalidArgumentError(f"unknown backend {requested!r}; choose one of {', '.join(known)}")
    if requested == "auto":
        return available_backends()[0]
    why = why_unavailable(requested)
    if why is not None:
        raise BackendUnavailableError(f"backend '{requested}' is not available: {why}")
    return requested


def builder(backend: str) -> Callable | None:
    """``backend``'s ``build(spec, weights, precision, ctx)``, or None for the reference (and unknown names)."""
    if backend == REFERENCE or backend not in _MODULES:
        return None
    return _module(backend).build
