"""Fast kernels for the recurrent ops (Numba, gates fused).

Contract with the recurrent op factory (``lstminfer/ops/recurrent.py``)::

    kernel = numba_kernel(spec, W, R, B, P, threads=1, label=node.label())
    if kernel is None:
        reason = why_not_fused(spec, W, R, B, P)   # a short sentence for describe()/info
        ...fall back to the reference kernel...

* ``spec``: the parsed ``RecurrentSpec`` (op, hidden_size, direction, layout,
  activations with alpha/beta, clip, input_forget, linear_before_reset,
  num_outputs).
* ``W``, ``R``: the constant weights (``ctx.constant(name)``); ``None`` when
  they are not constants, which is one of the cases that fall back.
* ``B``, ``P``: the constant values, or ``None`` when the input is omitted.
  If such an input exists but is not a constant, pass ``None`` anyway: each
  call compares the W/R/B/P it receives with the packed ones (identity
  first, so it costs nothing for constants) and runs the reference when they
  differ.
* ``threads``: 1 (default: no thread pool, best at batch 1) or more: a
  batch of at least 4 rows per thread is split across threads (each runs the
  whole sequence on its rows: no barrier per step); a smaller one splits the
  hidden units (H >= 256 only) so each core keeps its slice of W/R in its
  own cache (DeepCPU's private-cache partitioning), with one spinning
  barrier per step (no prange: its fork/join cost ~10 us per step); a thread
  that finds its partner descheduled takes over the partner's block after a
  grace period, so a busy second core costs little. It pays only when the
  second core is free (1.5-1.8x at H=256-512 measured).

The returned ``kernel(X, W, R, B, sequence_lens, initial_h, initial_c, P)``
(GRU/RNN: the first six) returns ``(Y, Y_h[, Y_c])`` cut to
``spec.num_outputs``, with the reference's semantics and float32 outputs;
``kernel.describe`` names what runs it. Compilation happens inside
``numba_kernel`` (at load) or comes from Numba's cache; ``compile_all()``
fills the cache ahead of time (``lstminfer compile``).

Falls back (``numba_kernel`` returns None): Numba missing, W/R not
constants, dtypes other than float32 (float64 runs on the reference), weight
shapes that don't match (the reference reports them at run time), an
activation without a fused version.
"""
from __future__ import annotations

import importlib.util
from typing import Any


# numba is optional, and only looked up here, not imported: importing it costs
# ~0.15 s of cold start that the Cython and reference backends don't need.
_NUMBA_ERROR: str | None = (
    None if importlib.util.find_spec("numba") is not None else "numba is not installed"
)

OPS = ("LSTM", "GRU", "RNN")
HIDDEN_SPLIT_MIN_UNITS = 256


def available() -> bool:
    return _NUMBA_ERROR is None


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

    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    P = P if spec.op == "LSTM" else None
    lbr = bool(getattr(spec, "linear_before_reset", False))
    # Splitting the hidden units costs a barrier per time step: below this size
    # the step is too short for that to pay, so small batches stay on one core.
    blocks = threads if R.shape[2] >= HIDDEN_SPLIT_MIN_UNITS else 1
    packed = pack(spec.op, W, R, B, P, linear_before_reset=lbr, blocks=blocks)
    serial = pack(spec.op, W, R, B, P, linear_before_reset=lbr, blocks=1) if threads > 1 else None
    return FusedKernel(spec, packed, W, R, B, P, threads=threads, serial_packed=serial, label=label)


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


def cache_info() -> dict[str, Any]:
    """Where Numba caches the kernels, and whether caching works here."""
    from numba.core import config

    from . import numba_config

    return {"enabled": numba_config.caching_enabled, "NUMBA_CACHE_DIR": config.CACHE_DIR or None}
