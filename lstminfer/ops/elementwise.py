"""Element-wise ops: arithmetic, activations, comparisons, logic, casts.

Binary ops use NumPy broadcasting, which is ONNX multidirectional broadcasting.
Every kernel returns arrays of the input's ONNX dtype (comparisons: bool).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

from ..c_runtime import _runtime
from ..dtypes import numpy_dtype
from ..errors import UnsupportedModelError
from ..graph import Node
from .registry import BuildContext, register
from .tensor import as_array, attr_choice, attr_flag, attr_int, fail

Array = np.ndarray


# float32 through the C loop a compiled program's Unary instruction runs: the plan gives its bits
_C_UNARY = frozenset({"Sigmoid", "Tanh", "Exp"}) if _runtime is not None else frozenset()


def _c_unary(op_type: str, x: Array) -> Array:
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    _runtime.unary(op_type, flat, out)
    return out.reshape(x.shape)


def _register_simple(op_type: str, fn: Callable[..., Array], since: int = 1) -> None:
    """An op without attributes: kernel(*inputs) = (fn(*inputs),)."""

    def factory(node: Node, ctx: BuildContext):
        def kernel(*inputs):
            if op_type in _C_UNARY and len(inputs) == 1 and isinstance(inputs[0], np.ndarray) and inputs[0].dtype == np.float32:
                return (_c_unary(op_type, inputs[0]),)
            with np.errstate(all="ignore"):  # inf/nan results are the op's answer, not an error
                return (as_array(fn(*inputs)),)

        return kernel

    register(op_type, since=since)(factory)


# ---------------------------------------------------------------- arithmetic


def _int_divide(a: Array, b: Array) -> Array:
    """Integer division truncating toward zero (C semantics, as onnxruntime)."""
    if a.dtype.kind == "u":
        return np.floor_divide(a, b)
    q = np.floor_divide(a, b)
    inexact = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return q + inexact.astype(q.dtype)


def _divide(a: Array, b: Array) -> Array:
    if np.asarray(a).dtype.kind in "iu":
        return _int_divide(np.asarray(a), np.asarray(b))
    return np.divide(a, b)


def _power(base: Array, exponent: Array) -> Array:
    """Pow: the result has the base's dtype, whatever the exponent's type."""
    base, exponent = np.asarray(base), np.asarray(exponent)
    if base.dtype.kind in "iu":
        if exponent.dtype.kind in "iu" and not np.any(exponent < 0):
            return np.power(base, exponent.astype(base.dtype))
        # Fractional or negative exponents: compute in double, truncate like a C cast.
        return np.power(base.astype(np.float64), exponent.astype(np.float64)).astype(base.dtype)
    return np.power(base, exponent.astype(base.dtype))


_register_simple("Add", np.add, since=7)
_register_simple("Sub", np.subtract, since=7)
_register_simple("Mul", np.multiply, since=7)
_register_simple("Div", _divide, since=7)
_register_simple("Pow", _power, since=7)


@register("Mod", since=10)
def mod(node: Node, ctx: BuildContext):
    use_fmod = attr_flag(node, "fmod", 0)

    def kernel(a, b):
        with np.errstate(all="ignore"):
            # fmod=1: sign of the dividend (C fmod); fmod=0: sign of the divisor (Python %).
            return (as_array(np.fmod(a, b) if use_fmod else np.mod(a, b)),)

    return kernel


# ---------------------------------------------------------------- unary math

for _name, _fn in {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Tanh": np.tanh,
}.items():
    _register_simple(_name, _fn)

_register_simple("Round", np.round, since=11)  # half to even, as ONNX asks
_register_simple("Sign", np.sign, since=9)
for _name, _fn in {"Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin,
                   "Acos": np.arccos, "Atan": np.arctan}.items():
    _register_simple(_name, _fn, since=7)
for _name, _fn in {"Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh,
                   "Acosh": np.arccosh, "Atanh": np.arctanh}.items():
    _register_simple(_name, _fn, since=9)


@functools.lru_cache(maxsize=1)
def _erf_impl():
    """SciPy's vectorised erf when installed, else the exact scalar one (imported lazily:
    SciPy's import costs ~0.2 s of cold start and few models use Erf)."""
    try:
        from scipy.special import erf
    except ImportError:  # NumPy has no erf
        return np.frompyfunc(math.erf, 1, 1)
    return erf


def _erf(x: Array) -> Array:
    return np.asarray(_erf_impl()(x)).astype(x.dtype)


_register_simple("Erf", _erf, since=9)


def _sigmoid(x: Array) -> Array:
    # exp(-x) may overflow to inf for very negative x: 1/(1+inf) = 0 is then exact enough.
    # float16 would overflow already at x < -11 (sigmoid ~1e-5): work in float32.
    out = as_array(np.exp(-x.astype(np.float32) if x.dtype == np.float16 else -x))
    out += 1
    np.reciprocal(out, out=out)
    return out.astype(x.dtype, copy=False)


_register_simple("Sigmoid", _sigmoid)


def _relu(x: Array) -> Array:
    return np.maximum(x, np.zeros((), x.dtype))


_register_simple("Relu", _relu)


def _softplus(x: Array) -> Array:
    return np.logaddexp(np.zeros((), x.dtype), x)


_register_simple("Softplus", _softplus)
_register_simple("Softsign", lambda x: x / (1 + np.abs(x)))
_register_simple("Mish", lambda x: x * np.tanh(_softplus(x)), since=18)


# ---------------------------------------------------------------- parametrised activations


def _float_attr(node: Node, name: str, default: float) -> float:
    value = node.attr(name, default)
    if not isinstance(value, (int, float)):
        raise UnsupportedModelError(f"{node.label()}: attribute '{name}' must be a float, got {value!r}")
    return float(value)


def _activation(op_type: str, since: int, defaults: dict[str, float], fn) -> None:
    """Register an activation whose float attributes are read once at load."""

    def factory(node: Node, ctx: BuildContext):
        params = {k: _float_attr(node, k, v) for k, v in defaults.items()}

        def kernel(x):
            with np.errstate(all="ignore"):
                return (as_array(fn(x, **params)).astype(x.dtype, copy=False),)

        return kernel

    register(op_type, since=since)(factory)


def _scaled(x: Array, value: float) -> Array:
    """``value`` as a 0-D array of x's dtype, so NumPy keeps float16/float32 results."""
    return np.asarray(value, dtype=x.dtype)


_activation("LeakyRelu", 1, {"alpha": 0.01},
            lambda x, alpha: np.where(x >= 0, x, x * _scaled(x, alpha)))
_activation("Elu", 1, {"alpha": 1.0},
            lambda x, alpha: np.where(x >= 0, x, _scaled(x, alpha) * np.expm1(x)))
_activation("Selu", 1, {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
            lambda x, alpha, gamma: _scaled(x, gamma) * np.where(
                x > 0, x, _scaled(x, alpha) * np.expm1(x)))
_activation("Celu", 12, {"alpha": 1.0},
            lambda x, alpha: np.maximum(x, 0) + np.minimum(
                0, _scaled(x, alpha) * np.expm1(x / _scaled(x, alpha))))
_activation("HardSigmoid", 1, {"alpha": 0.2, "beta": 0.5},
            lambda x, alpha, beta: np.clip(_scaled(x, alpha) * x + _scaled(x, beta), 0, 1))
_activation("HardSwish", 14, {},
            lambda x: x * np.clip(x / _scaled(x, 6.0) + _scaled(x, 0.5), 0, 1))
_activation("ThresholdedRelu", 10, {"alpha": 1.0},
            lambda x, alpha: np.where(x > _scaled(x, alpha), x, np.zeros((), x.dtype)))
_activation("Shrink", 9, {"bias": 0.0, "lambd": 0.5},
            lambda x, bias, lambd: np.where(
                x < -lambd, x + _scaled(x, bias),
                np.where(x > lambd, x - _scaled(x, bias), np.zeros((), x.dtype))))


@register("PRelu")
def prelu(node: Node, ctx: BuildContext):
    def kernel(x, slope):
        return (np.where(x < 0, x * slope, x).astype(x.dtype, copy=False),)

    return kernel


@register("Gelu", since=20)
def gelu(node: Node, ctx: BuildContext):
    approximate = attr_choice(node, "approximate", "none", ("none", "tanh"))

    def kernel(x):
        work = x.astype(np.float32) if x.dtype == np.float16 else x
        if approximate == "tanh":
            inner = math.sqrt(2 / math.pi) * (work + 0.044715 * work ** 3)
            y = 0.5 * work * (1 + np.tanh(inner))
        else:
            y = 0.5 * work * (1 + _erf(work / math.sqrt(2)))
        return (as_array(y).astype(x.dtype, copy=False),)

    return kernel


# ---------------------------------------------------------------- clip and variadic


@register("Clip")
def clip(node: Node, ctx: BuildContext):
    if ctx.opset() < 11:
        low = node.attr("min", None)
        high = node.attr("max", None)

        def kernel_attr(x):
            return (_clip(x, low, high),)

        return kernel_attr

    def kernel(x, low=None, high=None):
        for name, bound in (("min", low), ("max", high)):
            if bound is not None and np.size(bound) != 1:
                raise fail(node, f"input '{name}' must be a scalar, got shape {np.shape(bound)}")
        return (_clip(x, low, high),)

    return kernel


def _clip(x: Array, low, high) -> Array:
    # max then min: when min > max every value becomes max, as the spec says.
    out = x
    if low is not None:
        out = np.maximum(out, np.asarray(low).astype(x.dtype).reshape(()))
    if high is not None:
        out = np.minimum(out, np.asarray(high).astype(x.dtype).reshape(()))
    return as_array(out) if out is not x else x.copy()


def _variadic(op_type: str, ufunc, finish=None) -> None:
    def factory(node: Node, ctx: BuildContext):
        def kernel(*inputs):
            if not inputs:
                raise fail(node, "needs at least one input")
            total = functools.reduce(ufunc, inputs[1:], inputs[0])
            if finish is not None:
                total = finish(total, len(inputs))
            total = as_array(total)
            return (total.copy() if total is inputs[0] else total,)

        return kernel

    register(op_type)(factory)


_variadic("Max", np.maximum)
_variadic("Min", np.minimum)
_variadic("Sum", np.add)
_variadic("Mean", np.add, lambda total, n: (total / np.asarray(n, total.dtype)).astype(total.dtype))


# ---------------------------------------------------------------- comparison and logic

for _name, _fn in {"Equal": np.equal, "Less": np.less, "Greater": np.greater}.items():
    _register_simple(_name, _fn, since=7)
for _name, _fn in {"LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal}.items():
    _register_simple(_name, _fn, since=12)
for _name, _fn in {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}.items():
    _register_simple(_name, _fn, since=7)
_register_simple("Not", np.logical_not)
for _name, _fn in {"BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or,
                   "BitwiseXor": np.bitwise_xor, "BitwiseNot": np.invert}.items():
    _register_simple(_name, _fn, since=18)
_register_simple("Where", lambda cond, x, y: np.where(cond, x, y), since=9)
_register_simple("IsNaN", np.isnan, since=9)


@register("IsInf", since=10)
def is_inf(node: Node, ctx: BuildContext):
    negative = attr_flag(node, "detect_negative", 1)
    positive = attr_flag(node, "detect_positive", 1)

    def kernel(x):
        return (as_array((np.isneginf(x) & negative) | (np.isposinf(x) & positive)),)

    return kernel


@register("BitShift", since=11)
def bit_shift(node: Node, ctx: BuildContext):
    direction = attr_choice(node, "direction", None, ("LEFT", "RIGHT"))

    def kernel(x, y):
        if x.dtype.kind not in "iu":
            raise fail(node, f"input X must be an integer tensor, got {x.dtype}")
        bits = x.dtype.itemsize * 8
        in_range = (y >= 0) & (y < bits)
        amount = np.where(in_range, y, 0).astype(x.dtype)
        with np.errstate(all="ignore"):
            shifted = np.left_shift(x, amount) if direction == "LEFT" else np.right_shift(x, amount)
        # Shifting by >= the width (or by a negative amount) leaves only the sign fill.
        fill = np.where(x < 0, -1, 0).astype(x.dtype) if direction == "RIGHT" else np.zeros((), x.dtype)
        return (as_array(np.where(in_range, shifted, fill)).astype(x.dtype, copy=False),)

    return kernel


# ---------------------------------------------------------------- casts and pass-through


def _cast(node: Node, x: Array, dtype: np.dtype) -> Array:
    x = np.asarray(x)
    if x.dtype == object and dtype.kind in "fiub":
        # Strings parse as numbers ("1e3", "NaN", "-INF" ...); bool parses via int.
        try:
            values = [float(v) for v in x.reshape(-1)]
        except ValueError as exc:
            raise fail(node, f"cannot cast string to {dtype}: {exc}") from None
        return np.array(values, dtype=np.float64).reshape(x.shape).astype(dtype)
    with np.errstate(all="ignore"):  # NaN/overflow to int: implementation-defined, like C
        return x.astype(dtype)


def _cast_target(node: Node, code: int) -> np.dtype:
    dtype = numpy_dtype(code, f"{node.label()} attribute 'to'")
    if dtype == object:
        raise UnsupportedModelError(
            f"{node.label()}: attribute 'to' = string is not supported: casting to string "
            "(supported: numeric and bool targets)"
        )
    return dtype


@register("Cast", since=6)
def cast(node: Node, ctx: BuildContext):
    to = attr_int(node, "to", None)
    if to is None:
        raise UnsupportedModelError(f"{node.label()}: required attribute 'to' is missing")
    dtype = _cast_target(node, to)
    attr_flag(node, "saturate", 1)  # only affects float8 targets, which we reject above
    return lambda x: (_cast(node, x, dtype),)


@register("CastLike", since=15)
def cast_like(node: Node, ctx: BuildContext):
    attr_flag(node, "saturate", 1)

    def kernel(x, target):
        if np.asarray(target).dtype == object and np.asarray(x).dtype != object:
            raise fail(node, "casting to string is not supported")
        return (_cast(node, x, np.asarray(target).dtype),)

    return kernel


@register("Identity")
def identity(node: Node, ctx: BuildContext):
    return lambda x: (x,)


def _trains(node: Node, ctx: BuildContext) -> bool:
    """Whether a constant training_mode input switches real dropout on (ratio > 0)."""
    names = list(node.inputs) + ["", ""]
    mode = ctx.constant(names[2]) if names[2] else None
    if mode is None or not bool(np.asarray(mode).reshape(-1)[0]):
        return False
    ratio = ctx.constant(names[1]) if names[1] else np.asarray(0.5)
    return ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0


@register("Dropout", since=7)
def dropout(node: Node, ctx: BuildContext):
    """Inference only: Y = X, mask all True (of X's dtype before opset 10)."""
    opset = ctx.opset()
    if opset < 12:
        ratio = node.attr("ratio", 0.5)
        if not 0 <= ratio < 1:
            raise UnsupportedModelError(f"{node.label()}: attribute 'ratio' = {ratio} must be in [0, 1)")
    else:
        attr_int(node, "seed", None)
    if opset >= 12 and _trains(node, ctx):
        raise UnsupportedModelError(
            f"{node.label()}: training_mode = True is not supported (inference only)"
        )
    n_outputs = len(node.outputs)
    wants_mask = n_outputs > 1 and node.outputs[1] != ""

    def kernel(x, ratio=None, training_mode=None):
        if training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0]):
            if ratio is not None and float(np.asarray(ratio).reshape(-1)[0]) == 0:
                pass  # dropping nothing is the identity even in training mode
            else:
                raise UnsupportedModelError(
                    f"{node.label()}: training_mode = True is not supported (inference only)"
                )
        if not wants_mask:
            return (x, None)[:n_outputs]
        mask = np.ones(x.shape, dtype=x.dtype if opset < 10 else np.bool_)
        return (x, mask)

    return kernel
