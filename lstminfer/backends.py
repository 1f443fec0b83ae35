"""Which backend runs the recurrent kernels, chosen once at load.

"reference" is the pure-NumPy oracle and always available. The fast
backends ("numba", "cython") plug in here as they land; "auto" picks the best
available one. ``LSTMINFER_BACKEND`` overrides the default "auto".
"""
from __future__ import annotations

import os

from .errors import BackendUnavailableError, InvalidArgumentError

KNOWN_BACKENDS = ("auto", "reference", "numba", "cython")
# Backends that run today, best first; "auto" takes the first.
_AVAILABLE = ("reference",)
_NOT_YET = {
    "numba": "the Numba kernels are not part of this version yet; use backend='reference' or 'auto'",
    "cython": "the Cython kernels are not part of this version yet; use backend='reference' or 'auto'",
}


def available_backends() -> list[str]:
    return list(_AVAILABLE)


def resolve_backend(requested: str | None = "auto") -> str:
    """Concrete backend name for ``requested`` (None/"auto" -> env var or best available)."""
    if requested is None or requested == "auto":
        requested = os.environ.get("LSTMINFER_BACKEND", "auto") or "auto"
    if not isinstance(requested, str) or requested not in KNOWN_BACKENDS:
        raise InvalidArgumentError(
            f"unknown backend {requested!r}; choose one of {', '.join(KNOWN_BACKENDS)}"
        )
    if requested == "auto":
        return _AVAILABLE[0]
    if requested not in _AVAILABLE:
        raise BackendUnavailableError(f"backend '{requested}' is not available: {_NOT_YET[requested]}")
    return requested
