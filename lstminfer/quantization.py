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
* bf16 on the Cython backend: ``cython_bf16_kernel`` when the extension has
  one (bf16 weights widened inside the products).
* everywhere else (reference, Numba, or a node the Cython kernel
  declines): the quantized weights are expanded back to float32 once, at
  load, and the float kernels run on them. That is the accuracy oracle the
  int8 kernel matches (to float32 accumulation order); it saves no memory
  and gains no speed.

Without the option, weights the file stores quantized (``lstminfer.quantize``'s
output: folded int8 ``DequantizeLinear``, see ``ops.quantized.stored_int8``;
bf16-exact values) take the same kernels with the same values and scales
(``stored_precision_build``). Every recurrent kernel gets ``kernel.precision``
(printed by ``lstminfer info``) and its describe() names the precision.
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


# kernel.precision (what ``lstminfer info`` prints) and the describe() suffix of each case.
PRECISION = {
    "float32": ("float32", "float32 weights"),
    "int8": ("int8 (weight-only, expanded to float32 at load)",
             "int8 weights (per-channel symmetric, weight-only: expanded to float32 at load)"),
    "int8-kernel": ("int8 (int8 kernel, weight-only)",
                    "int8 weights (per-channel symmetric, weight-only: int8 in the kernel, float32 accumulation)"),
    "bf16": ("bf16 (weight-only, expanded to float32 at load)", "bf16 weights (weight-only: expanded to float32 at load)"),
    "bf16-kernel": ("bf16 (bf16 kernel, weight-only)",
                    "bf16 weights (weight-only: bf16 in the kernel, float32 accumulation)"),
}
PRECISION_TEXT = {k: text for k, (_, text) in PRECISION.items()}
STORED = "stored in the file"  # describe() note for weights that come quantized in the model


def _tag(kernel: Any, precision: str, note: str = "") -> Any:
    short, text = PRECISION[precision]
    scheme = getattr(kernel, "scheme", "weight-only") if precision == "int8-kernel" else "weight-only"
    if scheme != "weight-only":  # the int8 kernel's dynamic scheme (int8 activations, int32 accumulation)
        short, text = f"int8 (int8 kernel, dynamic: {scheme})", f"int8 weights and activations ({scheme})"
    kernel.precision = short
    kernel.describe = f"{getattr(kernel, 'describe', 'reference')}; {text}{note}"
    return kernel


def _float_constants(node: Node, ctx: Any) -> tuple[np.ndarray, np.ndarray] | None:
    W, R = (ctx.constant(node.inputs[i]) for i in (1, 2))
    if any(v is None or np.asarray(v).dtype != np.float32 for v in (W, R)):
        return None
    return W, R


def is_bf16_exact(w: np.ndarray) -> bool:
    """Every value exactly a bfloat16 (and not all zero): a model saved by ``quantize(mode="bf16")``."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    return bool(bits.size) and not np.any(bits & np.uint32(0xFFFF)) and bool(np.any(bits << np.uint32(1)))


def stored_precision_build(node: Node, ctx: Any, build: Callable[[Any], Any]) -> Any:
    """No ``quantize`` option: the kernel for the weights as the file stores them.

    W/R that are folded ``DequantizeLinear`` outputs of int8 constants with
    one scale per row (``lstminfer.quantize``'s files) run on the int8 Cython
    kernel with those very values and scales; bf16-exact weights on the bf16
    kernel where there is one. Everything else is float32.
    """
    from .ops.quantized import stored_int8

    weights = _float_constants(node, ctx)
    if weights is None:
        kernel = build(ctx)
        kernel.precision = PRECISION["float32"][0]
        return kernel
    W, R = weights
    stored = stored_int8(W), stored_int8(R)
    if stored[0] is not None and stored[1] is not None:
        if getattr(ctx, "backend", None) == "cython":
            # Dequantized weights (a DequantizeLinear computed them) may run with int8
            # activations too; float initializers that merely happen to be int8-exact
            # (small integers, say) keep float results: weight-only.
            plain = ctx.options.get("initializers", frozenset())
            scheme = "weight-only" if node.inputs[1] in plain or node.inputs[2] in plain else "auto"
            kernel = _cython_int8_kernel(node, ctx, W, R, (*stored[0], *stored[1]), scheme)
            if kernel is not None:
                return _tag(kernel, "int8-kernel", f", {STORED}")
        return _tag(build(ctx), "int8", f", {STORED}")
    if is_bf16_exact(W) and is_bf16_exact(R):
        kernel = _cython_bf16_kernel(node, ctx, W, R) if getattr(ctx, "backend", None) == "cython" else None
        if kernel is not None:
            return _tag(kernel, "bf16-kernel", f", {STORED}")
        return _tag(build(ctx), "bf16", f", {STORED}")
    return _tag(build(ctx), "float32")


def quantized_recurrent_build(node: Node, ctx: Any, mode: str, build: Callable[[Any], Any]) -> Any:
    """Build a recurrent node's kernel with its constant W and R quantized under ``mode``.

    ``build(ctx)`` builds the float kernel; it sees the quantized weights through
    ``ctx.constant`` (fast kernels pack them at load) and so does the returned
    kernel at run time. Non-constant W/R stay float32, and describe() says so.
    """
    from .ops.quantized import stored_int8

    weights = _float_constants(node, ctx)
    if weights is None:
        kernel = build(ctx)
        kernel.describe = f"{kernel.describe}; float32 weights (W/R not float32 constants: not quantized)"
        kernel.precision = PRECISION["float32"][0]
        return kernel
    names = {1: node.inputs[1], 2: node.inputs[2]}
    originals = {1: weights[0], 2: weights[1]}
    on_cython = getattr(ctx, "backend", None) == "cython"
    if mode == "int8" and on_cython:
        # Weights the file already stores as int8 keep their scales (a re-derived scale can differ by 1 ulp).
        quantized = [stored_int8(w) or int8_per_row(w) for w in weights]
        kernel = _cython_int8_kernel(node, ctx, *weights, (*quantized[0], *quantized[1]))
        if kernel is not None:
            return _tag(kernel, "int8-kernel")
    if mode == "bf16" and on_cython:
        kernel = _cython_bf16_kernel(node, ctx, *weights)
        if kernel is not None:
            return _tag(kernel, "bf16-kernel")
    replaced = {names[i]: fake_quantize(originals[i], mode) for i in names}
    base_constant = ctx.constant
    inner = build(replace(ctx, constant=lambda name: replaced[name] if name in replaced else base_constant(name)))
    W_q, R_q = replaced[names[1]], replaced[names[2]]

    def kernel(X, W, R, *rest):
        return inner(X, W_q, R_q, *rest)

    kernel.describe = getattr(inner, "describe", "reference")
    return _tag(kernel, mode)


def _kernel_inputs(node: Node, ctx: Any, R: np.ndarray):
    """(spec with hidden_size filled in, B, P) for the Cython kernel builders."""
    from .ops.recurrent import parse_spec

    spec = parse_spec(node, ctx)
    if spec.hidden_size is None and np.ndim(R) == 3:
        spec = replace(spec, hidden_size=int(np.shape(R)[2]))
    B, P = (ctx.constant(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] else None for i in (3, 7))
    return spec, B, P


def _cython_int8_kernel(node: Node, ctx: Any, W: np.ndarray, R: np.ndarray, quantized: tuple,
                        scheme: str = "auto") -> Any:
    """The int8 Cython kernel for this node (``quantized``: qW, sW, qR, sR), or None if it declines."""
    from .kernels import cython_backend

    if not cython_backend.available() or W.ndim != 3 or R.ndim != 3:
        return None
    spec, B, P = _kernel_inputs(node, ctx, R)
    # "auto": dynamic int8 activations on VNNI where the CPU has it, else weight-only
    # (cython_backend.INT8_SCHEME_ENV forces one).
    return cython_backend.cython_int8_kernel(spec, W, R, B, P, quantized, scheme=scheme,
                                             threads=ctx.options.get("threads", 1), label=node.label())


def _cython_bf16_kernel(node: Node, ctx: Any, W: np.ndarray, R: np.ndarray) -> Any:
    """The bf16 Cython kernel when the extension has one (it rounds W/R itself), else None."""
    from .kernels import cython_backend

    make = getattr(cython_backend, "cython_bf16_kernel", None)
    if make is None or not cython_backend.available() or W.ndim != 3 or R.ndim != 3:
        return None
    spec, B, P = _kernel_inputs(node, ctx, R)
    return make(spec, W, R, B, P, threads=ctx.options.get("threads", 1), label=node.label())


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
