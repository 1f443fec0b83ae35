"""The one place that decides how kernels are compiled by Numba.

Every kernel goes through ``jit`` (helpers) or ``jit_entry`` (the drivers a
kernel call enters; threads are started by the caller, see numba_rnn), so the compile
flags live here only:

* fastmath without ``nnan``/``ninf``: NaN and inf inputs must propagate as in
  onnxruntime, but reassociation (vectorized dot products), contraction (FMA)
  and approximate functions are fine for the float32 parity bound (1e-5);
* ``error_model="numpy"``: a division never raises, so loops with ``/``
  still vectorize;
* ``nogil=True``: several threads may run models at the same time;
* ``cache=True`` for the entry points only: compiled code is written next to
  the sources (or to ``NUMBA_CACHE_DIR``, or the user-wide cache); when no
  location is writable we compile in memory only, with a warning, instead of
  failing the import. Helpers are not cached on their own: Numba keys a
  cached function on its own file's timestamp only, so a helper cached in
  numba_rnn.py would keep running an old copy of what it calls from
  numba_math.py. An entry point's cached code contains its helpers, and its
  name carries a hash of all the kernel sources (``numba_rnn.driver``).
"""
from __future__ import annotations

import warnings

import numba

FASTMATH_FLAGS = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
_COMMON = dict(fastmath=set(FASTMATH_FLAGS), nogil=True, error_model="numpy")

# Set to False (with a warning) the first time a cache location can't be written.
caching_enabled = True


def _compile(fn, **flags):
    global caching_enabled
    if caching_enabled:
        try:
            return numba.njit(cache=True, **_COMMON, **flags)(fn)
        except RuntimeError as err:  # numba: "cannot cache function ...: no locator available"
            caching_enabled = False
            warnings.warn(
                f"lstminfer: Numba cannot write its cache ({err}); kernels are compiled in memory "
                "at every start. Point NUMBA_CACHE_DIR at a writable directory to keep them.",
                RuntimeWarning, stacklevel=3,
            )
    return numba.njit(cache=False, **_COMMON, **flags)(fn)


def jit(fn):
    """A helper: compiled (in memory) into the entry points that call it."""
    return numba.njit(cache=False, **_COMMON)(fn)


def jit_inline(fn):
    """A small helper on the per-step path, inlined at Numba's IR level into its callers (LLVM
    does not inline across Numba's per-function modules; each call passes arrays as dozens of words)."""
    return numba.njit(cache=False, inline="always", **_COMMON)(fn)


def jit_entry(fn, parallel: bool = False):
    """An entry point, cached on disk; ``parallel`` spreads its ``prange`` loops over cores."""
    return _compile(fn, parallel=True) if parallel else _compile(fn)
