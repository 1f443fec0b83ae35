"""What every fast backend (Cython, Numba) shares: which nodes it can run,
the identity check on packed constants, and the helper thread pools."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from .packing import num_gates

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

_F32 = np.dtype(np.float32)


def weights_problem(spec: Any, W: Any, R: Any, B: Any, P: Any, kernel: str,
                    activation_codes: dict[str, int]) -> str | None:
    """Why a fast ``kernel`` (e.g. "Cython kernel") can't pack this node, or None.

    Shape problems only decline the node: the reference then reports them at run time.
    """
    op = spec.op
    if op not in ("LSTM", "GRU", "RNN"):
        return f"no {kernel} for op {op}"
    if W is None or R is None:
        return f"W and R are not constants, and the {kernel} packs them at load"
    for name, value in (("W", W), ("R", R), ("B", B), ("P", P)):
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            return f"{name} is not an array"
        if value.dtype != _F32:
            return f"the {kernel} is float32 only ({name} is {value.dtype})"
    if R.ndim != 3 or W.ndim != 3:
        return "W/R are not rank 3 (the reference reports it at run time)"
    D, G, H = spec.num_directions, num_gates(op), R.shape[2]
    if spec.hidden_size is not None and spec.hidden_size != H:
        return f"hidden_size {spec.hidden_size} does not match R (the reference reports it)"
    expected = {"W": (D, G * H, W.shape[2]), "R": (D, G * H, H), "B": (D, 2 * G * H), "P": (D, 3 * H)}
    for name, value in (("W", W), ("R", R), ("B", B), ("P", P if op == "LSTM" else None)):
        if value is not None and value.shape != expected[name]:
            return f"{name} has shape {list(value.shape)}, expected {list(expected[name])} (the reference reports it)"
    for activation in spec.activations:
        if activation.name.lower() not in activation_codes:
            return f"activation {activation.name} has no {kernel} version"
    return None


def same_constant(given: Any, packed: np.ndarray | None) -> bool:
    """Is the run-time value the constant that was packed? (identity first: it is cheap)"""
    if given is packed:
        return True
    if given is None or packed is None:
        return False
    return (isinstance(given, np.ndarray) and given.shape == packed.shape and given.dtype == packed.dtype
            and np.array_equal(given, packed))


def same_weights(op: str, packed: tuple, W: Any, R: Any, B: Any, P: Any) -> bool:
    """Are the run-time W, R, B (and P for LSTM) the constants ``packed`` = (W, R, B, P)?"""
    W0, R0, B0, P0 = packed
    return (same_constant(W, W0) and same_constant(R, R0) and same_constant(B, B0)
            and (op != "LSTM" or same_constant(P, P0)))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_in_child() -> None:
    """After fork(): the child has none of the pools' threads (work sent to them would wait
    forever), and the lock may have been held by a parent thread: both start afresh."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_in_child)


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """Shared helper threads, per size (created on first use; idle ones block, never spin)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            # Imported here: concurrent.futures slows cold start, and one thread needs no pool.
            from concurrent.futures import ThreadPoolExecutor

            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lstminfer")
        return pool
