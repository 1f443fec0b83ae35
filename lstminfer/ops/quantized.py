"""Quantization ops: what ``onnxruntime.quantization.quantize_dynamic`` emits.

Default domain: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger. Domain com.microsoft: DynamicQuantizeLSTM,
DynamicQuantizeMatMul, MatMulIntegerToFloat (onnxruntime's contrib ops).

Dynamic activation quantization follows onnxruntime exactly (the contrib
ops have no other spec): the range [min(x), max(x)] widened to include 0,
scale = (max - min) / 255 (1.0 for an all-zero range), zero point =
round_half_even(clamp(-min / scale, 0, 255)), q = saturate(rint(x / scale) + zp).

Integer products are computed as float64 matmuls of the integer values:
every partial sum is an integer below 2**53 (K * 255 * 255 < 2**53 for any
K we could hold in memory), so the result is exact and uses BLAS.

These kernels are onnxruntime's semantics, the oracle (``backend="reference"``
runs them). Elsewhere a DynamicQuantizeLSTM with constant weights runs on the
backend's int8 recurrent kernel (``int8_rows`` maps the file's weights to it),
and ``lstminfer.quantized_heads`` rewrites the quantized MatMuls of a constant
weight before any op is built.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidModelError, UnsupportedModelError
from ..graph import Node
from ..kernels.shell import RecurrentWeights
from ..quantization import dequantize_per_row, int8_per_row, remember_int8, stored_int8
from ..reference.rnn import lstm_step, recurrence  # the reference's own cell: same semantics
from .recurrent import parse_spec
from .recurrent_kernel import build_stored_int8_kernel
from .registry import BuildContext, register
from .tensor import attr_int, fail

MS_DOMAIN = "com.microsoft"

# Integer types each op may produce or read, with their ranges.
_RANGES = {
    np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535),
}
_OUTPUT_DTYPE_CODES = {2: np.dtype(np.uint8), 3: np.dtype(np.int8), 4: np.dtype(np.uint16), 5: np.dtype(np.int16)}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
_INT8S = (np.dtype(np.int8), np.dtype(np.uint8))


# ---------------------------------------------------------------- helpers


def dynamic_uint8_params(x: np.ndarray) -> tuple[np.float32, np.uint8]:
    """onnxruntime's per-tensor uint8 parameters for ``x`` (see module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    lo = np.float32(min(float(x.min()), 0.0)) if x.size else np.float32(0)
    hi = np.float32(max(float(x.max()), 0.0)) if x.size else np.float32(0)
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero_point = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    return scale, np.uint8(zero_point)


def quantize_values(x: np.ndarray, scale: Any, zero_point: Any, dtype: np.dtype) -> np.ndarray:
    """saturate(rint(x / scale) + zero_point) as ``dtype`` (round half to even)."""
    work = np.float64 if x.dtype.kind in "iu" else np.float32
    q = np.rint(x.astype(work, copy=False) / np.asarray(scale, dtype=work))
    q = q + np.asarray(zero_point, dtype=work)
    lo, hi = _RANGES[np.dtype(dtype)]
    return np.clip(q, lo, hi).astype(dtype)


def fake_quantize_uint8(x: np.ndarray) -> np.ndarray:
    """``x`` quantized the way onnxruntime quantizes a GEMM's activations, back in float32."""
    scale, zero_point = dynamic_uint8_params(x)
    q = quantize_values(x, scale, zero_point, np.dtype(np.uint8))
    return ((q.astype(np.int32) - int(zero_point)).astype(np.float32) * scale).astype(np.float32)


def integer_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact matmul of integer-valued arrays as int32 (see module docstring)."""
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int32)


def _axis_shaped(node: Node, param: np.ndarray, x: np.ndarray, axis: int, block_size: int, what: str) -> np.ndarray:
    """``param`` (scale or zero point) broadcastable against ``x``: per tensor, per axis or per block.

    ``axis`` only matters per axis or per block, so it is checked only then.
    """
    if param.size == 1 and param.ndim <= 1 and block_size == 0:
        return param.reshape(())
    axis = _norm_axis(node, axis, x.ndim)
    if block_size > 0:
        if param.ndim != x.ndim:
            raise fail(node, f"blocked {what} must have the rank of x ({x.ndim}), got shape {param.shape}")
        blocks = -(-x.shape[axis] // block_size)
        if param.shape[axis] != blocks:
            raise fail(node, f"{what} has {param.shape[axis]} blocks on axis {axis}, expected {blocks} "
                             f"(x shape {x.shape}, block_size {block_size})")
        return np.take(np.repeat(param, block_size, axis=axis), np.arange(x.shape[axis]), axis=axis)
    if param.ndim != 1 or param.shape[0] != x.shape[axis]:
        raise fail(node, f"{what} must be a scalar or 1-D of size x.shape[{axis}]={x.shape[axis]}, "
                         f"got shape {param.shape}")
    shape = [1] * x.ndim
    shape[axis] = param.shape[0]
    return param.reshape(shape)


def _quant_attrs(node: Node, ctx: BuildContext, allowed: dict[str, int]) -> dict[str, int]:
    """Integer attributes allowed at this opset (``allowed``: name -> first opset), checked."""
    opset = ctx.opset()
    known = {name for name, since in allowed.items() if opset >= since}
    unknown = sorted(set(node.attrs) - known)
    if unknown:
        raise InvalidModelError(f"{node.label()}: unknown attribute(s) {unknown} at opset {opset} "
                                f"(allowed: {', '.join(sorted(known)) or 'none'})")
    defaults = {"axis": 1, "block_size": 0, "saturate": 1, "output_dtype": 0, "precision": 0}
    values = {name: attr_int(node, name, defaults[name]) for name in known}
    if values.get("block_size", 0) < 0:
        raise InvalidModelError(f"{node.label()}: attribute 'block_size' must be >= 0, got {values['block_size']}")
    return values


def _norm_axis(node: Node, axis: int, rank: int) -> int:
    if rank == 0:
        return 0
    if not -rank <= axis < rank:
        raise fail(node, f"axis {axis} is out of range for a rank-{rank} input (expected [{-rank}, {rank - 1}])")
    return axis % rank


# ---------------------------------------------------------------- ONNX ops


@register("QuantizeLinear", since=10)
def quantize_linear(node: Node, ctx: BuildContext):
    attrs = _quant_attrs(node, ctx, {"axis": 13, "saturate": 19, "block_size": 21, "output_dtype": 21,
                                     "precision": 23})
    output_dtype = attrs.get("output_dtype", 0)
    if output_dtype and output_dtype not in _OUTPUT_DTYPE_CODES:
        raise UnsupportedModelError(
            f"{node.label()}: attribute 'output_dtype' = {output_dtype} is not supported "
            f"(supported: 2 uint8, 3 int8, 4 uint16, 5 int16)")
    if attrs.get("precision", 0) not in (0, 1):
        raise UnsupportedModelError(f"{node.label()}: attribute 'precision' = {attrs['precision']} is not "
                                    "supported (supported: 0 = the scale's type, 1 = float)")

    def kernel(x, scale, zero_point=None):
        if x.dtype not in _FLOATS and x.dtype != np.int32:
            raise fail(node, f"x must be float or int32, got {x.dtype}")
        if zero_point is not None:
            dtype = zero_point.dtype
            if dtype not in _RANGES:
                raise fail(node, f"y_zero_point type {dtype} is not supported (int8, uint8, int16, uint16)")
            if output_dtype and _OUTPUT_DTYPE_CODES[output_dtype] != dtype:
                raise fail(node, f"y_zero_point is {dtype} but output_dtype is {_OUTPUT_DTYPE_CODES[output_dtype]}")
        else:
            dtype = _OUTPUT_DTYPE_CODES.get(output_dtype, np.dtype(np.uint8))
            zero_point = np.zeros((), dtype)
        axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
        s = _axis_shaped(node, scale, x, axis, block, "y_scale")
        z = _axis_shaped(node, zero_point, x, axis, block, "y_zero_point")
        return (quantize_values(x, s, z, dtype),)

    return kernel


@register("DequantizeLinear", since=10)
def dequantize_linear(node: Node, ctx: BuildContext):
    attrs = _quant_attrs(node, ctx, {"axis": 13, "block_size": 21, "output_dtype": 23})
    output_dtype = attrs.get("output_dtype", 0)
    if output_dtype not in (0, 1, 10):
        raise UnsupportedModelError(f"{node.label()}: attribute 'output_dtype' = {output_dtype} is not "
                                    "supported (supported: 1 float, 10 float16)")

    def kernel(x, scale, zero_point=None):
        if x.dtype not in _RANGES and x.dtype != np.int32:
            raise fail(node, f"x type {x.dtype} is not supported (int8, uint8, int16, uint16, int32)")
        if zero_point is not None and zero_point.dtype != x.dtype:
            raise fail(node, f"x_zero_point must have x's type {x.dtype}, got {zero_point.dtype}")
        if x.dtype == np.int32 and zero_point is not None and np.any(zero_point != 0):
            raise fail(node, "x_zero_point must be 0 for int32 x")
        if scale.dtype not in _FLOATS:
            raise fail(node, f"x_scale must be float, got {scale.dtype}")
        axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
        s = _axis_shaped(node, scale, x, axis, block, "x_scale").astype(np.float32)
        values = x.astype(np.int32)
        if zero_point is not None:
            values = values - _axis_shaped(node, zero_point, x, axis, block, "x_zero_point").astype(np.int32)
        out_dtype = {1: np.dtype(np.float32), 10: np.dtype(np.float16)}.get(output_dtype, scale.dtype)
        result = (values.astype(np.float32) * s).astype(out_dtype, copy=False)
        if (x.dtype == np.int8 and x.ndim >= 2 and result.dtype == np.float32 and not x.flags.writeable
                and not scale.flags.writeable):
            remember_int8(result, x, s, zero_point)  # constants (folded at load): see stored_int8
        return (result,)

    return kernel


@register("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(node: Node, ctx: BuildContext):
    def kernel(x):
        if x.dtype != np.float32:
            raise fail(node, f"x must be float32, got {x.dtype}")
        scale, zero_point = dynamic_uint8_params(x)
        y = quantize_values(x, scale, zero_point, np.dtype(np.uint8))
        return y, np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8)

    return kernel


def _zero_point_operand(node: Node, zp: np.ndarray | None, operand: np.ndarray, name: str, row: bool) -> Any:
    """A zero point as an int array broadcastable against ``operand``: scalar, per row of A or per column of B."""
    if zp is None:
        return 0
    if zp.dtype != operand.dtype:
        raise fail(node, f"{name} must have the type of its matrix ({operand.dtype}), got {zp.dtype}")
    zp = zp.astype(np.int32)
    if zp.size == 1:
        return zp.reshape(())
    axis = -2 if row else -1
    length = operand.shape[axis] if operand.ndim >= (2 if row else 1) else -1
    if zp.ndim == 1 and zp.shape[0] == length:
        return zp[:, None] if row else zp
    if zp.ndim == operand.ndim:  # N-D per-row/column zero points, broadcast by matmul's batch rules
        return zp
    raise fail(node, f"{name} must be a scalar or 1-D of size {length}, got shape {zp.shape}")


@register("MatMulInteger", since=10)
def matmul_integer(node: Node, ctx: BuildContext):
    def kernel(a, b, a_zero_point=None, b_zero_point=None):
        if a.dtype not in _INT8S or b.dtype not in _INT8S:
            raise fail(node, f"A and B must be int8 or uint8, got {a.dtype} and {b.dtype}")
        if a.ndim == 0 or b.ndim == 0:
            raise fail(node, f"inputs must have rank >= 1, got shapes {a.shape} and {b.shape}")
        a_zp = _zero_point_operand(node, a_zero_point, a, "a_zero_point", row=True)
        b_zp = _zero_point_operand(node, b_zero_point, b, "b_zero_point", row=False)
        try:
            return (integer_matmul(a.astype(np.int32) - a_zp, b.astype(np.int32) - b_zp),)
        except ValueError:
            raise fail(node, f"shapes {a.shape} and {b.shape} are not aligned") from None

    return kernel


# ---------------------------------------------------------------- com.microsoft ops


def _scaled_product(node: Node, a_int: np.ndarray, b_int: np.ndarray, scale: np.ndarray, bias) -> np.ndarray:
    try:
        acc = integer_matmul(a_int, b_int)
    except ValueError:
        raise fail(node, f"shapes {a_int.shape} and {b_int.shape} are not aligned") from None
    out = acc.astype(np.float32) * scale.astype(np.float32)
    if bias is not None:
        out = out + bias.astype(np.float32)
    return out.astype(np.float32, copy=False)


@register("MatMulIntegerToFloat", domain=MS_DOMAIN)
def matmul_integer_to_float(node: Node, ctx: BuildContext):
    """Y = (A - a_zp) @ (B - b_zp) * (a_scale * b_scale) + bias."""
    def kernel(a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        if a.dtype not in _INT8S or b.dtype not in _INT8S:
            raise fail(node, f"A and B must be int8 or uint8, got {a.dtype} and {b.dtype}")
        a_int = a.astype(np.int32) - _zero_point_operand(node, a_zero_point, a, "a_zero_point", row=True)
        b_int = b.astype(np.int32) - _zero_point_operand(node, b_zero_point, b, "b_zero_point", row=False)
        scale = a_scale.astype(np.float32) * b_scale.astype(np.float32)
        return (_scaled_product(node, a_int, b_int, scale, bias),)

    return kernel


@register("DynamicQuantizeMatMul", domain=MS_DOMAIN)
def dynamic_quantize_matmul(node: Node, ctx: BuildContext):
    """Y = uint8-quantized(A) @ (B - b_zp) * (a_scale * b_scale) + bias."""
    def kernel(a, b, b_scale, b_zero_point=None, bias=None):
        if a.dtype != np.float32 or b.dtype not in _INT8S:
            raise fail(node, f"A must be float32 and B int8/uint8, got {a.dtype} and {b.dtype}")
        a_scale, a_zp = dynamic_uint8_params(a)
        a_int = quantize_values(a, a_scale, a_zp, np.dtype(np.uint8)).astype(np.int32) - int(a_zp)
        b_int = b.astype(np.int32) - _zero_point_operand(node, b_zero_point, b, "b_zero_point", row=False)
        return (_scaled_product(node, a_int, b_int, a_scale * b_scale.astype(np.float32), bias),)

    return kernel


# -- DynamicQuantizeLSTM: int8/uint8 W [D, I, 4H] and R [D, H, 4H] (transposed
# vs ONNX LSTM), per-direction or per-(direction, column) scales/zero points.
# onnxruntime quantizes X once per direction (all valid steps, one GEMM) and
# h_{t-1} at every step (the whole batch), both per tensor to uint8.

_DQ_LSTM_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P",
                   "W_scale", "W_zero_point", "R_scale", "R_zero_point")


def dequantize_lstm_weight(node: Node, name: str, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                           D: int, H: int, error=InvalidInputError) -> np.ndarray:
    """``q`` [D, K, 4H] with its scale/zero point -> float32 [D, 4H, K] (ONNX LSTM layout)."""
    if q.dtype not in _INT8S:
        raise error(f"{node.label()}: input '{name}' must be int8 or uint8, got {q.dtype}")
    if q.ndim != 3 or q.shape[0] != D or q.shape[2] != 4 * H:
        raise error(f"{node.label()}: input '{name}' has shape {list(q.shape)}, expected "
                    f"[{D}, K, {4 * H}] = [num_directions, input or hidden size, 4*hidden_size]")
    for what, value in (("scale", scale), ("zero_point", zero_point)):
        if value is None or value.shape not in ((D,), (D, 4 * H)):
            shape = None if value is None else list(value.shape)
            raise error(f"{node.label()}: input '{name}_{what}' has shape {shape}, expected [{D}] (per "
                        f"direction) or [{D}, {4 * H}] (per channel)")
    if zero_point.dtype != q.dtype:
        raise error(f"{node.label()}: input '{name}_zero_point' must have {name}'s type {q.dtype}, "
                    f"got {zero_point.dtype}")
    per_column = (D, 1, -1) if scale.ndim == 2 else (D, 1, 1)
    zp = zero_point.astype(np.int32).reshape(per_column if zero_point.ndim == 2 else (D, 1, 1))
    values = (q.astype(np.int32) - zp).astype(np.float32) * scale.astype(np.float32).reshape(per_column)
    return np.ascontiguousarray(values.transpose(0, 2, 1))


def int8_rows(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A checked DynamicQuantizeLSTM weight [D, K, 4H] as the int8 kernel's rows: (int8 [D, 4H, K],
    float32 scales [D, 4H], how). Exact ("stored values") where every q - zero_point fits int8
    (quantize_dynamic's default symmetric int8 weights); otherwise (uint8 weights with a zero
    point) the dequantized rows re-rounded to int8 per row ("re-rounded per row")."""
    D, _, GH = q.shape
    zp = zero_point.astype(np.int16).reshape((D, 1, GH) if zero_point.ndim == 2 else (D, 1, 1))
    values = q.astype(np.int16) - zp
    row_scale = np.ascontiguousarray(np.broadcast_to(scale.astype(np.float32).reshape(D, -1), (D, GH)))
    if values.min(initial=0) >= -128 and values.max(initial=0) <= 127:
        return np.ascontiguousarray(values.astype(np.int8).transpose(0, 2, 1)), row_scale, "stored values"
    qk, sk = int8_per_row(values.astype(np.float32).transpose(0, 2, 1) * row_scale[..., None])
    return np.ascontiguousarray(qk), sk, "re-rounded per row"


@register("DynamicQuantizeLSTM", domain=MS_DOMAIN)
def dynamic_quantize_lstm(node: Node, ctx: BuildContext):
    """The file's int8 W/R on the backend's int8 kernel where it has one (Cython: activations
    quantized per row and step, see README's Quantization); else the emulation of onnxruntime."""
    if len(node.inputs) != len(_DQ_LSTM_INPUTS) or any(not node.inputs[i] for i in (0, 1, 2, 8, 9, 10, 11)):
        raise InvalidModelError(f"{node.label()}: expected 12 inputs ({', '.join(_DQ_LSTM_INPUTS)}) with X, W, R "
                                f"and the four scale/zero-point inputs present, got {list(node.inputs)}")
    if "layout" in node.attrs:
        raise InvalidModelError(f"{node.label()}: DynamicQuantizeLSTM has no 'layout' attribute")
    if node.attr("hidden_size", None) is None:
        raise InvalidModelError(f"{node.label()}: attribute 'hidden_size' is required")
    as_lstm = Node("LSTM", tuple(node.inputs[:8]), tuple(node.outputs), dict(node.attrs), node.name, "")
    spec = parse_spec(as_lstm, ctx)
    emulated = _emulated_kernel(node, spec)
    constants = [ctx.constant(node.inputs[i]) for i in (1, 2, 8, 9, 10, 11)]
    if any(c is None for c in constants):
        return emulated
    Wq, Rq, Ws, Wz, Rs, Rz = constants
    D, H = spec.num_directions, spec.hidden_size
    for index, q, scale, zp in ((1, Wq, Ws, Wz), (2, Rq, Rs, Rz)):  # the checks, at load
        dequantize_lstm_weight(node, _DQ_LSTM_INPUTS[index], q, scale, zp, D, H, InvalidModelError)
    (qW, sW, how_W), (qR, sR, how_R) = int8_rows(Wq, Ws, Wz), int8_rows(Rq, Rs, Rz)
    W_f, R_f = dequantize_per_row(qW, sW), dequantize_per_row(qR, sR)
    B, P = (ctx.constant(node.inputs[i]) if node.inputs[i] else None for i in (3, 7))
    if (node.inputs[3] and B is None) or (node.inputs[7] and P is None):
        return emulated
    per = "per channel" if Ws.ndim == 2 else "per tensor"
    note = (f", stored in the file (DynamicQuantizeLSTM: {Wq.dtype} W/R {per}, "
            f"{how_W if how_W == how_R else how_W + ' / ' + how_R})")
    core = build_stored_int8_kernel(spec, RecurrentWeights(W_f, R_f, B, P, stored=(qW, sW, qR, sR)), ctx,
                                    node.label(), note)
    if core is None:
        return emulated

    def kernel(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *scales):
        if W is Wq and R is Rq and all(a is b for a, b in zip(scales, constants[2:])):
            return core(X, W_f, R_f, B, sequence_lens, initial_h, initial_c, P)
        return emulated(X, W, R, B, sequence_lens, initial_h, initial_c, P, *scales)

    def packs(W, R, B, P=None):
        """Whether a compiled program may call ``core`` on pointers for these W, R, B, P."""
        core_packs = getattr(core, "packs", None)
        return W is Wq and R is Rq and core_packs is not None and core_packs(W_f, R_f, B, P)

    kernel.recurrent_core = core  # what a compiled program runs (program_compiler.recurrent)
    kernel.packs = packs
    kernel.describe = core.describe
    kernel.precision = core.precision
    return kernel


def _emulated_kernel(node: Node, spec: Any):
    """onnxruntime's DynamicQuantizeLSTM emulated in the reference (exact to its rounding)."""
    D, H = spec.num_directions, spec.hidden_size
    acts = spec.activations

    def make_step(d, Wd, Rd, Wbd, Rbd, P):
        step = lstm_step(Wd, Rd, Wbd, Rbd, P[d], acts[3 * d: 3 * d + 3], spec.clip, int(spec.input_forget))

        def quantized_step(Xt, states):  # h_{t-1} only feeds the R product in an LSTM cell
            return step(Xt, (fake_quantize_uint8(states[0]), states[1]))

        return quantized_step

    last: list = [None, None]  # (the weight inputs, their dequantized W, R): constants come every call

    def kernel(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
               W_scale=None, W_zero_point=None, R_scale=None, R_zero_point=None):
        if X.dtype != np.float32 or X.ndim != 3:
            raise InvalidInputError(f"{node.label()}: input 'X' must be float32 [seq_length, batch, input_size], "
                                    f"got {X.dtype} {list(X.shape)}")
        given = (W, R, W_scale, W_zero_point, R_scale, R_zero_point)
        if last[0] is not None and all(a is b for a, b in zip(given, last[0])):
            W_f, R_f = last[1]
        else:
            W_f = dequantize_lstm_weight(node, _DQ_LSTM_INPUTS[1], W, W_scale, W_zero_point, D, H)
            R_f = dequantize_lstm_weight(node, _DQ_LSTM_INPUTS[2], R, R_scale, R_zero_point, D, H)
            if not any(isinstance(a, np.ndarray) and a.flags.writeable for a in given):  # constants only
                last[:] = [given, (W_f, R_f)]
        if P is None:
            P = np.zeros((D, 3 * H), np.float32)
        elif P.shape != (D, 3 * H):
            raise InvalidInputError(f"{node.label()}: input 'P' has shape {list(P.shape)}, expected [{D}, {3 * H}]")
        rows = X.shape[0] if sequence_lens is None or not np.size(sequence_lens) else int(np.max(sequence_lens))
        X_q = X.copy()
        X_q[:rows] = fake_quantize_uint8(X[:rows])
        try:
            outputs = recurrence(
                "LSTM", X_q, W_f, R_f, B, sequence_lens,
                {"initial_h": initial_h, "initial_c": initial_c}, H, spec.direction, 0,
                lambda d, Wd, Rd, Wbd, Rbd: make_step(d, Wd, Rd, Wbd, Rbd, P),
            )
        except InvalidInputError as err:
            raise InvalidInputError(f"{node.label()}: {err}") from None
        return outputs[: spec.num_outputs]

    kernel.describe = "reference (int8 weights, uint8 dynamic activations, emulated)"
    kernel.precision = "int8 (dynamic: uint8 activations, emulated in the reference)"
    return kernel


__all__ = ["stored_int8", "dynamic_uint8_params", "fake_quantize_uint8", "quantize_values", "integer_matmul",
           "dequantize_lstm_weight", "int8_rows"]
