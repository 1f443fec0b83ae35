"""``lstminfer._native._runtime``, the per-call paths in C, or None where it is not built: every
caller then takes its Python path, which gives the same results."""
try:
    from ._native import _runtime
except ImportError:  # pragma: no cover - only when the extension was not built
    _runtime = None
