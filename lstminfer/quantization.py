"""Weight quantization maths: per-row int8, bf16 rounding, and which weights a node has.

``int8``: per-output-channel symmetric int8 for LSTM/GRU/RNN W and R: each
row of W[d] (one gate unit's input weights) and of R[d] gets its own scale
max|row| / 127, values rint(w / scale) in [-127, 127], zero point 0.
``bf16``: every weight rounded to the nearest bfloat16 (ties to even).

A leaf module (numpy only): the kernels, the ops and ``lstminfer.quantize``
all use it. Which kernel runs a quantized recurrent node (an int8/bf16
kernel, or float32 kernels on the weights expanded at load) is decided in
``lstminfer.ops.recurrent_kernel``.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from .errors import InvalidArgumentError

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


def is_bf16_exact(w: np.ndarray) -> bool:
    """Every value exactly a bfloat16 (and not all zero): a model saved by ``quantize(mode="bf16")``."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    return bool(bits.size) and not np.any(bits & np.uint32(0xFFFF)) and bool(np.any(bits << np.uint32(1)))


# ------------------------------------------------------------------ int8 stored in the file
# Folded DequantizeLinear outputs that are int8 values times one scale per
# row (zero point 0): id(output) -> (weakref to it, q, row scales). The
# recurrent ops look their W/R up here (``stored_int8``) to run the int8
# kernel on the stored values: how ``lstminfer.quantize``'s files load back.
_STORED_INT8: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}


def remember_int8(result: np.ndarray, x: np.ndarray, scale: np.ndarray, zero_point) -> None:
    """Note that ``result`` = ``x`` (int8) * ``scale``, if that is one scale per row and zero point 0."""
    if zero_point is not None and np.any(zero_point != 0):
        return
    full = np.broadcast_to(scale, x.shape)
    if x.shape[-1] and full.strides[-1] != 0 and not np.all(full == full[..., :1]):
        return  # the scale varies along a row
    row_scale = np.ascontiguousarray(full[..., 0], dtype=np.float32)
    key = id(result)
    _STORED_INT8[key] = (weakref.ref(result), x, row_scale)
    weakref.finalize(result, _STORED_INT8.pop, key, None)


def stored_int8(w: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(q int8 [..., N, K], scale float32 [..., N]) when ``w`` is exactly q * scale per row, as a
    folded ``DequantizeLinear`` of an int8 constant (zero point 0) computed it, possibly reshaped;
    else None."""
    if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim < 2 or not w.flags.c_contiguous:
        return None
    root = w
    while isinstance(root.base, np.ndarray):
        root = root.base
    entry = _STORED_INT8.get(id(root))
    if entry is None or entry[0]() is not root:
        return None
    _, q, row_scale = entry
    if q.size != w.size or q.shape[-1] != w.shape[-1] or w.ctypes.data != root.ctypes.data:
        return None
    q, scale = q.reshape(w.shape), row_scale.reshape(w.shape[:-1])
    if not np.array_equal(q.astype(np.float32) * scale[..., None], w):
        return None
    return q, scale


# ------------------------------------------------------------------ dense weights
DENSE_MIN_WEIGHTS = 4096  # MatMul/Gemm/Gather weights below this stay float32 (they save nothing)
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def weight_roles(op_type: str, domain: str, attr: Callable[[str, int], int]) -> list[tuple[int, str, str, bool]]:
    """(input index, role, layout, dense) of the weights a node of ``op_type`` may have quantized.

    ``layout``: "recurrent" ([D, G*H, K], a scale per row), "columns" ([K, N], a scale per
    output column) or "rows" ([N, K], a scale per row). ``attr(name, default)`` reads the
    node's integer attributes. The one rule for ``load(quantize=)`` and ``lstminfer.quantize``.
    """
    if domain not in ("", "ai.onnx"):
        return []
    if op_type in RECURRENT_OPS:
        return [(1, "W", "recurrent", False), (2, "R", "recurrent", False)]
    if op_type == "MatMul":
        return [(1, "B", "columns", True)]
    if op_type == "Gemm":
        return [(1, "B", "rows" if attr("transB", 0) else "columns", True)]
    if op_type == "Gather":
        return [(0, "data", "rows", True)] if attr("axis", 0) == 0 else []
    return []


def quantized_dense(w: np.ndarray, layout: str, mode: str) -> np.ndarray:
    """A dense weight as ``mode`` stores it, expanded back to float32."""
    if mode == "bf16":
        return round_to_bf16(w)
    if layout == "columns":
        return np.ascontiguousarray(dequantize_per_row(*int8_per_row(w.T)).T)
    return dequantize_per_row(*int8_per_row(w))


def quantize_dense_initializers(graph: Any, mode: str) -> list[str]:
    """Replace, in ``graph.initializers``, the float32 MatMul/Gemm/Gather weights of at least
    ``DENSE_MIN_WEIGHTS`` elements by their quantized values (weight-only: expanded to float32
    at load, as ``lstminfer.quantize`` stores them); returns their names."""
    done: list[str] = []
    for node in graph.nodes:
        for index, _, layout, dense in weight_roles(node.op_type, node.domain, node.attr):
            name = node.inputs[index] if index < len(node.inputs) else ""
            w = graph.initializers.get(name)
            if (not dense or name in done or w is None or w.dtype != np.float32 or w.ndim != 2
                    or w.size < DENSE_MIN_WEIGHTS):
                continue
            q = quantized_dense(w, layout, mode)
            q.setflags(write=False)
            graph.initializers[name] = q
            done.append(name)
    return done
