"""Dense-layer ops around recurrent layers: MatMul, Gemm, softmax family, norms, Einsum."""
from __future__ import annotations

import math
import re

import numpy as np

from ..c_runtime import _runtime
from ..errors import InvalidModelError, UnsupportedModelError
from ..graph import Node
from .registry import BuildContext, register
from .tensor import as_array, attr_choice, attr_flag, attr_int, fail, norm_axis, unsupported_attr

Array = np.ndarray


def _compute_dtype(x: Array) -> np.dtype:
    """float16 has no fast kernels in NumPy and loses precision: work in float32."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


def _float_attr(node: Node, name: str, default: float) -> float:
    value = node.attr(name, default)
    if not isinstance(value, (int, float)):
        raise InvalidModelError(f"{node.label()}: attribute '{name}' must be a float, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- matrix products


def _dense_layout(W: Array) -> Array | None:
    """A constant float32 [K, N] weight as li_dense_rows takes it (a program's Dense instruction:
    W, or W^T for few outputs), made once at load; None when the C runtime is not built."""
    if _runtime is None or not isinstance(W, np.ndarray) or W.dtype != np.float32 or W.ndim != 2 or W.shape[0] < 1:
        return None
    return np.ascontiguousarray(W if W.shape[1] >= _runtime.DENSE_ROWS_FROM else W.T, dtype=np.float32)


def _dense(a: Array, packed: Array, K: int, N: int) -> Array | None:
    """a @ W through the C routine a compiled program's Dense instruction runs, so the plan and
    the program give the same bits; None where the program would use NumPy's BLAS too."""
    if a.dtype != np.float32 or a.ndim < 1 or a.shape[-1] != K:
        return None
    M = math.prod(a.shape[:-1])
    if M * K * N > _runtime.DENSE_MAX_MACS:
        return None
    out = np.empty((M, N), np.float32)
    _runtime.dense(np.ascontiguousarray(a.reshape(M, K)), packed, None, out)
    return out.reshape(a.shape[:-1] + (N,))


@register("MatMul")
def matmul(node: Node, ctx: BuildContext):
    W = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    packed = _dense_layout(W)

    def kernel(a, b):
        if packed is not None:
            y = _dense(a, packed, *W.shape)
            if y is not None:
                return (y,)
        if a.ndim == 0 or b.ndim == 0:
            raise fail(node, f"inputs must have rank >= 1, got shapes {a.shape} and {b.shape}")
        work = _compute_dtype(a)
        try:
            out = np.matmul(a.astype(work, copy=False), b.astype(work, copy=False))
        except ValueError:
            raise fail(node, f"shapes {a.shape} and {b.shape} are not aligned") from None
        return (as_array(out).astype(a.dtype, copy=False),)

    return kernel


@register("Gemm", since=7)
def gemm(node: Node, ctx: BuildContext):
    alpha = _float_attr(node, "alpha", 1.0)
    beta = _float_attr(node, "beta", 1.0)
    trans_a = attr_flag(node, "transA", 0)
    trans_b = attr_flag(node, "transB", 0)
    B = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 and not trans_a else None
    # alpha folded into the weights, as a program's Dense instruction has them
    W = None if _dense_layout(B) is None else (B.T if trans_b else B) * np.float32(alpha) if alpha != 1.0 \
        else (B.T if trans_b else B)
    packed = _dense_layout(W)

    def kernel(a, b, c=None):
        if a.ndim != 2 or b.ndim != 2:
            raise fail(node, f"A and B must be 2-D, got shapes {a.shape} and {b.shape}")
        work = _compute_dtype(a)
        y = _dense(a, packed, *W.shape) if packed is not None else None
        if y is None:
            a2 = (a.T if trans_a else a).astype(work, copy=False)
            b2 = (b.T if trans_b else b).astype(work, copy=False)
            if a2.shape[1] != b2.shape[0]:
                raise fail(node, f"inner dimensions differ: op(A) is {a2.shape}, op(B) is {b2.shape}")
            y = a2 @ b2
            if alpha != 1.0:
                y = y * np.asarray(alpha, dtype=work)
        if c is not None and beta != 0.0:
            bias = c.astype(work, copy=False)
            if beta != 1.0:
                bias = bias * np.asarray(beta, dtype=work)
            try:
                if np.broadcast_shapes(bias.shape, y.shape) != y.shape:
                    raise ValueError
            except ValueError:
                raise fail(node, f"C of shape {c.shape} cannot broadcast to {y.shape}") from None
            y = y + bias
        return (as_array(y).astype(a.dtype, copy=False),)

    return kernel


# ---------------------------------------------------------------- softmax family


def _softmax(x: Array, axis: int) -> Array:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: Array, axis: int) -> Array:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _hardmax(x: Array, axis: int) -> Array:
    out = np.zeros_like(x)
    if x.size:
        first = np.expand_dims(np.argmax(x, axis=axis), axis)  # ties: the first index wins
        np.put_along_axis(out, first, 1, axis=axis)
    return out


def _register_softmax_like(op_type: str, fn, native: str | None = None) -> None:
    """``native``: "exp" or "log" where float32 rows go through the C routine (a program's bits)."""
    native = native if _runtime is not None else None

    def factory(node: Node, ctx: BuildContext):
        legacy = ctx.opset() < 13
        axis = attr_int(node, "axis", 1 if legacy else -1)

        def kernel(x):
            if native is not None and x.dtype == np.float32 and x.ndim:
                a = norm_axis(node, axis, x.ndim)
                if legacy or a == x.ndim - 1:  # rows: the program's Softmax instruction and its routine
                    rows = np.ascontiguousarray(x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:])))
                    y = np.empty_like(rows)
                    _runtime.softmax(rows, y, native == "log")
                    return (y.reshape(x.shape),)
            work = x.astype(_compute_dtype(x), copy=False)
            with np.errstate(all="ignore"):
                if legacy:
                    # Before opset 13 the input is viewed as 2-D: [prod(dims < axis), rest].
                    a = norm_axis(node, axis, x.ndim)
                    rows = math.prod(x.shape[:a])
                    y = fn(work.reshape(rows, math.prod(x.shape[a:])), 1).reshape(x.shape)
                else:
                    y = fn(work, norm_axis(node, axis, x.ndim))
            return (as_array(y).astype(x.dtype, copy=False),)

        return kernel

    register(op_type)(factory)


_register_softmax_like("Softmax", _softmax, "exp")
_register_softmax_like("LogSoftmax", _log_softmax, "log")
_register_softmax_like("Hardmax", _hardmax)


# ---------------------------------------------------------------- normalisation


@register("LayerNormalization", since=17)
def layer_normalization(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", -1)
    epsilon = _float_attr(node, "epsilon", 1e-5)
    attr_choice(node, "stash_type", 1, (1,))  # Mean/InvStdDev are float32, like onnxruntime
    n_outputs = len(node.outputs)

    def kernel(x, scale, bias=None):
        a = norm_axis(node, axis, x.ndim)
        axes = tuple(range(a, x.ndim))
        work = np.float64 if x.dtype == np.float64 else np.float32
        xw = x.astype(work, copy=False)
        mean = np.mean(xw, axis=axes, keepdims=True)
        centered = xw - mean
        inv_std = 1.0 / np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True) + epsilon)
        y = centered * inv_std * scale.astype(work, copy=False)
        if bias is not None:
            y = y + bias.astype(work, copy=False)
        outs = (y.astype(x.dtype, copy=False), mean.astype(np.float32), inv_std.astype(np.float32))
        return outs[:n_outputs]

    return kernel


@register("BatchNormalization", since=7)
def batch_normalization(node: Node, ctx: BuildContext):
    opset = ctx.opset()
    epsilon = _float_attr(node, "epsilon", 1e-5)
    _float_attr(node, "momentum", 0.9)  # running-stat update: training only
    if opset >= 14:
        attr_choice(node, "training_mode", 0, (0,))
    spatial = attr_flag(node, "spatial", 1) if opset < 9 else True
    extra = [name for name in node.outputs[1:] if name]
    if extra:
        raise UnsupportedModelError(
            f"{node.label()}: outputs {extra} (running/saved mean and variance) exist only in "
            "training mode, which is not supported (supported: inference, output Y only)"
        )

    def kernel(x, scale, bias, mean, var):
        if x.ndim < 2:
            raise fail(node, f"input must have rank >= 2, got shape {x.shape}")
        work = _compute_dtype(x)
        # Per-channel parameters (C,) broadcast over N and the spatial dims; with
        # spatial=0 (opsets 7-8) they have shape (C, D1, ...) and broadcast over N only.
        shape = (1,) + (scale.shape if not spatial else (x.shape[1],) + (1,) * (x.ndim - 2))

        def param(p):
            return np.asarray(p, dtype=work).reshape(shape)

        factor = param(scale) / np.sqrt(param(var) + np.asarray(epsilon, work))
        y = (x.astype(work, copy=False) - param(mean)) * factor + param(bias)
        return (y.astype(x.dtype, copy=False),)

    return kernel


# ---------------------------------------------------------------- einsum

_EINSUM_TERM = r"(?:[A-Za-z]|\.\.\.)*"
_EINSUM = re.compile(rf"^{_EINSUM_TERM}(?:,{_EINSUM_TERM})*(?:->{_EINSUM_TERM})?$")


@register("Einsum", since=12)
def einsum(node: Node, ctx: BuildContext):
    equation = node.attr("equation")
    if isinstance(equation, str):
        equation = equation.replace(" ", "")
    if not isinstance(equation, str) or not _EINSUM.match(equation):
        raise unsupported_attr(node, "equation", equation,
                               "terms of letters and '...', separated by ',' with optional '->'")
    n_terms = len(equation.split("->")[0].split(","))

    def kernel(*inputs):
        if len(inputs) != n_terms:
            raise fail(node, f"equation '{equation}' has {n_terms} terms but got {len(inputs)} inputs")
        work = _compute_dtype(inputs[0])
        try:
            out = np.einsum(equation, *(t.astype(work, copy=False) for t in inputs))
        except ValueError as exc:
            raise fail(node, f"einsum '{equation}' on shapes {[t.shape for t in inputs]}: {exc}") from None
        return (as_array(out).astype(inputs[0].dtype, copy=False),)

    return kernel
