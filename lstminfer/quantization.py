"""Load-time weight quantization of the recurrent ops: ``lstminfer.load(path, quantize="int8")``.

``int8``: per-output-channel symmetric int8 for LSTM/GRU/RNN W and R: each
row of W[d] (one gate unit's input weights) and of R[d] gets its own scale
max|row| / 127, values rint(w / scale) in [-127, 127], zero point 0.
``bf16``: every weight rounded to the nearest bfloat16 (ties to even).

Compute scheme (weight-only: the state, activations and accumulation stay float32):

* int8 on the Cython backend: the int8 kernel
  (``kernels.cython_backend.cython_int8_kernel``) keeps W and R as int8
  panels with per-row float32 scales and dequantizes them on the fly inside
  its products: a quarter of the weight bytes streamed per step.
* everywhere else (reference, Numba, bf16, or a node the Cython kernel
  declines): the quantized weights are expanded back to float32 once, at
  load, and the float kernels run on them. That is the accuracy oracle the
  int8 kernel matches (to float32 accumulation order); it saves no memory
  and gains no speed.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np

from .errors import InvalidArgumentError
from .graph import Node

MODES = ("int8", "bf16")
INT8_MAX = 127


def check_mode(mode: Any) -> str | None:
    if mode is None or mode in MODES:
        return mode
    raise InvalidArgumentError(f"quantize must be None, 'int8' or 'bf16', got {mode!r}")


def int8_per_row(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row of the last two axes: ``w`` [..., N, K] -> (q int8 [..., N, K], scale [..., N])."""
    w = np.asarray(w, dtype=np.float32)
    peak = np.max(np.abs(w), axis=-1) if w.shape[-1] else np.zeros(w.shape[:-1], np.float32)
    scale = np.where(peak > 0, peak / np.float32(INT8_MAX), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def dequantize_per_row(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * scale[..., None]).astype(np.float32)


def round_to_bf16(w: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), still stored as float32."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    rounded = np.where(np.isnan(w), bits, (bits + rounding) & np.uint32(0xFFFF0000))
    return rounded.astype(np.uint32).view(np.float32)


def fake_quantize(w: np.ndarray, mode: str) -> np.ndarray:
    """``w`` as the kernels will see it under ``mode``: quantized then expanded to float32."""
    if mode == "int8":
        return dequantize_per_row(*int8_per_row(w))
    return round_to_bf16(w)


PRECISION_TEXT = {
    "int8": "int8 weights (per-channel symmetric, weight-only: expanded to float32 at load)",
    "int8-kernel": "int8 weights (per-channel symmetric, weight-only: int8 in the kernel, float32 accumulation)",
    "bf16": "bf16 weights (weight-only: expanded to float32 at load)",
}


def quantized_recurrent_build(node: Node, ctx: Any, mode: str, build: Callable[[Any], Any]) -> Any:
    """Build a recurrent node's kernel with its constant W and R quantized under ``mode``.

    ``build(ctx)`` builds the float kernel; it sees the quantized weights through
    ``ctx.constant`` (fast kernels pack them at load) and so does the returned
    kernel at run time. Non-constant W/R stay float32, and describe() says so.
    """
    names = {i: node.inputs[i] for i in (1, 2)}
    originals = {i: ctx.constant(name) for i, name in names.items()}
    if any(v is None or np.asarray(v).dtype != np.float32 for v in originals.values()):
        kernel = build(ctx)
        kernel.describe = f"{kernel.describe}; float32 weights (W/R not float32 constants: not quantized)"
        return kernel
    if mode == "int8" and getattr(ctx, "backend", None) == "cython":
        kernel = _cython_int8_kernel(node, ctx, originals[1], originals[2])
        if kernel is not None:
            return kernel
    replaced = {names[i]: fake_quantize(originals[i], mode) for i in names}
    base_constant = ctx.constant
    inner = build(replace(ctx, constant=lambda name: replaced[name] if name in replaced else base_constant(name)))
    W_q, R_q = replaced[names[1]], replaced[names[2]]

    def kernel(X, W, R, *rest):
        return inner(X, W_q, R_q, *rest)

    kernel.describe = f"{getattr(inner, 'describe', 'reference')}; {PRECISION_TEXT[mode]}"
    return kernel


def _cython_int8_kernel(node: Node, ctx: Any, W: np.ndarray, R: np.ndarray) -> Any:
    """The int8 Cython kernel for this node (weights quantized and packed now), or None if it declines."""
    from .kernels import cython_backend
    from .ops.recurrent import parse_spec

    if not cython_backend.available():
        return None
    spec = parse_spec(node, ctx)
    if spec.hidden_size is None and np.ndim(R) == 3:
        spec = replace(spec, hidden_size=int(np.shape(R)[2]))
    B, P = (ctx.constant(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] else None for i in (3, 7))
    if W.ndim != 3 or R.ndim != 3:
        return None
    kernel = cython_backend.cython_int8_kernel(
        spec, W, R, B, P, (*int8_per_row(W), *int8_per_row(R)),
        threads=ctx.options.get("threads", 1), label=node.label())
    if kernel is not None:
        kernel.describe = f"{kernel.describe}; {PRECISION_TEXT['int8-kernel']}"
    return kernel
