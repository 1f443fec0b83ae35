"""The Numba backend: fused recurrent kernels, JIT-compiled at load (cached on disk).

``build(spec, weights, precision, ctx)`` is the backend's builder (registered
in ``lstminfer.backends``); ``numba_kernel(spec, W, R, B, P, threads=1,
label=...)`` makes the kernel, or returns None where ``why_not_fused`` has a
reason (Numba missing, W/R not constants, dtypes other than float32, weight
shapes that don't match, an activation without a fused version). Only
float32: low-precision weights run here expanded to float32 at load.

* ``W``, ``R``: the constant weights, ``None`` when they are not constants.
* ``B``, ``P``: the constant values, or ``None`` (omitted, or not constants:
  each call compares the W/R/B/P it receives with the packed ones, identity
  first, and runs the reference when they differ).
* ``threads``: 1 (default: no thread pool) or more: a batch of at least 4
  rows per thread is split across threads (each runs the whole sequence on
  its rows: no barrier per step); a smaller one splits the hidden units
  (H >= 256 only) so each core keeps its slice of W/R in its own cache, with
  one spinning barrier per step; a thread that finds its partner descheduled
  takes over the partner's block after a grace period.

The kernel returns ``(Y, Y_h[, Y_c])`` cut to ``spec.num_outputs``, float32,
with the reference's semantics; ``kernel.describe`` names what runs it.
``compile_all()`` fills the cache ahead of time (``lstminfer compile``).
"""
from __future__ import annotations

import importlib.util
from typing import Any

from .shell import FLOAT32, KernelContext, Precision, RecurrentWeights, check_threads


# numba is optional, and only looked up here, not imported: importing it is a cold start
# that the Cython and reference backends don't need.
_NUMBA_ERROR: str | None = (
    None if importlib.util.find_spec("numba") is not None else "numba is not installed"
)

OPS = ("LSTM", "GRU", "RNN")
HIDDEN_SPLIT_MIN_UNITS = 256


def available() -> bool:
    return _NUMBA_ERROR is None


def unavailable_reason() -> str | None:
    return None if _NUMBA_ERROR is None else ("numba is not installed: the JIT backend is an extra, "
                                              "`pip install lstminfer[numba]` (or `pip install numba`)")


def why_not_fused(spec: Any, W: Any, R: Any, B: Any = None, P: Any = None) -> str | None:
    """Why ``numba_kernel`` would fall back for this node, or None if it fuses."""
    if _NUMBA_ERROR:
        return _NUMBA_ERROR
    from .common import weights_problem
    from .numba_math import ACTIVATION_CODES

    return weights_problem(spec, W, R, B, P, "fused Numba kernel", ACTIVATION_CODES)


def numba_kernel(spec: Any, W: Any, R: Any, B: Any = None, P: Any = None, *, threads: int = 1,
                 label: str = ""):
    """A fused kernel for this node (weights packed, code compiled), or None (see ``why_not_fused``)."""
    if why_not_fused(spec, W, R, B, P) is not None:
        return None
    from .fused import FusedKernel
    from .packing import pack

    check_threads(threads)
    P = P if spec.op == "LSTM" else None
    lbr = bool(getattr(spec, "linear_before_reset", False))
    # Splitting the hidden units costs a barrier per time step: below this size
    # the step is too short for that to pay, so small batches stay on one core.
    blocks = threads if R.shape[2] >= HIDDEN_SPLIT_MIN_UNITS else 1
    packed = pack(spec.op, W, R, B, P, linear_before_reset=lbr, blocks=blocks)
    serial = pack(spec.op, W, R, B, P, linear_before_reset=lbr, blocks=1) if threads > 1 else None
    return FusedKernel(spec, packed, W, R, B, P, threads=threads, serial_packed=serial, label=label)


def build(spec: Any, weights: RecurrentWeights, precision: Precision = FLOAT32, ctx: KernelContext = KernelContext()):
    """The backend's builder: (kernel, "") or (None, why not); float32 only."""
    if precision.name != "float32":
        return None, f"no {precision.name} Numba kernel"
    W, R, B, P = weights.W, weights.R, weights.B, weights.P
    kernel = numba_kernel(spec, W, R, B, P, threads=ctx.threads, label=ctx.label)
    return (kernel, "") if kernel is not None else (None, why_not_fused(spec, W, R, B, P) or "")


def compile_all() -> list[str]:
    """Compile (or load from the cache) every kernel; returns their names. For ``lstminfer compile``.

    One driver per op serves every thread count (each thread runs one part); its C entry
    (``numba_entry``, used at one thread when ``lstminfer._native._numba_entry`` is built) is cached too."""
    if _NUMBA_ERROR:
        return []
    from .numba_entry import entry
    from .numba_rnn import driver

    names = []
    for op in OPS:
        driver(op)
        entry(op)
        names += [f"{op.lower()}_sequence", f"{op.lower()}_entry"]
    return names


warm_up = compile_all


def compile_kernels(ops=OPS) -> list[tuple[str, str]]:
    """Compile (or load from the cache) the kernels of ``ops``: (name, how) with how "compiled",
    "loaded from the cache", "compiled in memory (cache disabled)" or "already loaded" (earlier in
    this process). For ``lstminfer compile``."""
    if _NUMBA_ERROR:
        return []
    from . import numba_config
    from .numba_entry import entry, entry_loaded
    from .numba_rnn import driver, driver_loaded

    done = []
    for op in ops:
        loaded = driver_loaded(op), entry_loaded(op)
        sequence, step_entry = driver(op), entry(op)
        hits = sum(sequence.stats.cache_hits.values()), step_entry.cache_hits  # a Counter; an int for a cfunc
        for name, was_loaded, hit in zip((f"{op.lower()}_sequence", f"{op.lower()}_entry"), loaded, hits):
            how = "already loaded" if was_loaded else "loaded from the cache" if hit else \
                "compiled" if numba_config.caching_enabled else "compiled in memory (cache disabled)"
            done.append((name, how))
    return done


def cache_info() -> dict[str, Any]:
    """Where Numba caches the kernels, and whether caching works here (numba missing: an error naming the extra)."""
    if _NUMBA_ERROR:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"backend 'numba' is not available: {unavailable_reason()}")
    from numba.core import config

    from . import numba_config

    return {"enabled": numba_config.caching_enabled, "NUMBA_CACHE_DIR": config.CACHE_DIR or None}
