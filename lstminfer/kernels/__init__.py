"""The fast recurrent kernels, one module per backend, around one shell.

* ``shell``: what every backend's kernel shares (``RecurrentShell``) and what a
  builder is given (``RecurrentWeights``, ``Precision``, ``KernelContext``).
* ``cython_backend``, ``numba_backend``: each a ``build(spec, weights,
  precision, ctx)`` and ``unavailable_reason()``, registered in ``lstminfer.backends``.
* ``packing``: ONNX weights repacked once, at load, into the kernels' layout.

The Numba backend's names stay importable from here (``kernels.numba_kernel``).
"""
from .numba_backend import (HIDDEN_SPLIT_MIN_UNITS, available, cache_info, compile_all, numba_kernel,
                            unavailable_reason, warm_up, why_not_fused)

__all__ = ["HIDDEN_SPLIT_MIN_UNITS", "available", "cache_info", "compile_all", "numba_kernel", "unavailable_reason",
           "warm_up", "why_not_fused"]
