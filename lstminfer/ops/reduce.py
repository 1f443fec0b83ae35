"""Reductions (Reduce*) and ArgMax/ArgMin.

``axes`` is an attribute before opset 13 (ReduceSum) / 18 (the others) and an
optional input after; an empty/absent ``axes`` reduces everything unless
``noop_with_empty_axes`` is set, in which case only the element-wise part of
the op applies (onnxruntime: ReduceSumSquare gives x*x, ReduceL1 gives |x|).
"""
from __future__ import annotations

import math

import numpy as np

from ..graph import Node
from .registry import BuildContext, register
from .tensor import as_array, attr_flag, attr_int, attr_ints, fail, int_values, norm_axes, norm_axis

Array = np.ndarray
Axes = tuple[int, ...]


def _empty_fill(x: Array, largest: bool):
    """Identity of max (largest=False) / min (largest=True) for x's dtype."""
    if x.dtype == np.bool_:
        return largest
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return info.max if largest else info.min
    return np.inf if largest else -np.inf


def _max(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.max(x, axis=axes, keepdims=keepdims, initial=_empty_fill(x, largest=False))


def _min(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.min(x, axis=axes, keepdims=keepdims, initial=_empty_fill(x, largest=True))


def _sum(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _mean(x: Array, axes: Axes, keepdims: bool) -> Array:
    count = math.prod(x.shape[a] for a in axes)
    if x.dtype.kind in "iu":  # integer mean truncates toward zero, like onnxruntime
        return (np.sum(x, axis=axes, keepdims=keepdims, dtype=np.int64) / count).astype(x.dtype)
    # float16 accumulates in float32; the mean of nothing is 0/0 = NaN.
    work = np.float32 if x.dtype == np.float16 else x.dtype
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=work) / np.asarray(count, work)


def _prod(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.prod(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _l1(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.sum(np.abs(x), axis=axes, keepdims=keepdims, dtype=x.dtype)


def _sum_square(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.sum(x * x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _l2(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.sqrt(_sum_square(x, axes, keepdims))


def _log_sum(x: Array, axes: Axes, keepdims: bool) -> Array:
    return np.log(_sum(x, axes, keepdims))


def _log_sum_exp(x: Array, axes: Axes, keepdims: bool) -> Array:
    # Shift by the max so exp cannot overflow; an all -inf (or empty) slice shifts by 0.
    peak = np.max(x, axis=axes, keepdims=True, initial=-np.inf) if x.dtype.kind == "f" \
        else np.zeros((1,) * x.ndim, x.dtype)
    peak = np.where(np.isfinite(peak), peak, 0).astype(x.dtype)
    total = np.sum(np.exp(x - peak), axis=axes, keepdims=True)
    out = np.log(total) + peak
    return out if keepdims else np.squeeze(out, axis=axes)


def _register_reduce(op_type: str, fn, axes_input_since: int) -> None:
    def factory(node: Node, ctx: BuildContext):
        keepdims = attr_flag(node, "keepdims", 1)
        from_input = ctx.opset() >= axes_input_since
        noop = attr_flag(node, "noop_with_empty_axes", 0) if from_input else False
        fixed_axes = None if from_input else attr_ints(node, "axes", None)

        def kernel(x, axes=None):
            chosen = fixed_axes if not from_input else (
                None if axes is None else int_values(node, axes, "axes"))
            if not chosen:
                reduce_over: Axes = () if noop else tuple(range(x.ndim))
            else:
                reduce_over = tuple(norm_axes(node, chosen, x.ndim))
            with np.errstate(all="ignore"):  # log(0) = -inf etc. are the answers
                out = fn(x, reduce_over, keepdims)
            return (as_array(out).astype(x.dtype, copy=False),)

        return kernel

    register(op_type)(factory)


_register_reduce("ReduceSum", _sum, 13)
for _name, _fn in {
    "ReduceMean": _mean, "ReduceMax": _max, "ReduceMin": _min, "ReduceProd": _prod,
    "ReduceL1": _l1, "ReduceL2": _l2, "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _log_sum_exp, "ReduceSumSquare": _sum_square,
}.items():
    _register_reduce(_name, _fn, 18)


def _register_arg(op_type: str, pick) -> None:
    def factory(node: Node, ctx: BuildContext):
        axis = attr_int(node, "axis", 0)
        keepdims = attr_flag(node, "keepdims", 1)
        last = attr_flag(node, "select_last_index", 0) if ctx.opset() >= 12 else False

        def kernel(x):
            a = norm_axis(node, axis, x.ndim)
            n = x.shape[a]
            if n == 0:
                raise fail(node, f"cannot take {op_type} over axis {a} of length 0")
            if last:  # the first hit in the reversed axis is the last one
                idx = (n - 1) - pick(np.flip(x, a), axis=a)
            else:
                idx = pick(x, axis=a)
            idx = np.asarray(idx, dtype=np.int64)
            return (np.expand_dims(idx, a) if keepdims else idx,)

        return kernel

    register(op_type)(factory)


_register_arg("ArgMax", np.argmax)
_register_arg("ArgMin", np.argmin)
