"""Shape and indexing ops: the reshaping/slicing glue exporters put around RNN layers.

Also holds the small helpers (attribute validation, axis normalisation, reading
int tensors) that the other glue-op modules (elementwise, nn, reduce) share.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from ..dtypes import numpy_dtype
from ..errors import ExecutionError, InvalidModelError, UnsupportedModelError
from ..graph import Node
from .registry import BuildContext, register

# ---------------------------------------------------------------- helpers


def unsupported_attr(node: Node, name: str, value: Any, supported: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{node.label()}: attribute '{name}' = {value!r} is not supported (supported: {supported})"
    )


def attr_choice(node: Node, name: str, default: Any, allowed: Sequence[Any]) -> Any:
    """Attribute value (or default), which must be one of ``allowed``."""
    value = node.attr(name, default)
    if value not in allowed:
        raise unsupported_attr(node, name, value, ", ".join(repr(a) for a in allowed))
    return value


def attr_flag(node: Node, name: str, default: int) -> bool:
    """A 0/1 integer attribute as a bool."""
    return bool(attr_choice(node, name, default, (0, 1)))


def attr_int(node: Node, name: str, default: Any = None) -> Any:
    value = node.attr(name, default)
    if value is not None and not isinstance(value, (int, np.integer)):
        raise InvalidModelError(f"{node.label()}: attribute '{name}' must be an int, got {value!r}")
    return None if value is None else int(value)


def attr_ints(node: Node, name: str, default: Any = None) -> list[int] | None:
    value = node.attr(name, default)
    if value is None:
        return None
    try:
        return [int(v) for v in np.asarray(value).reshape(-1)]
    except (TypeError, ValueError):
        raise InvalidModelError(
            f"{node.label()}: attribute '{name}' must be a list of ints, got {value!r}"
        ) from None


def fail(node: Node, message: str) -> ExecutionError:
    """A run-time error naming the node."""
    return ExecutionError(f"{node.label()}: {message}")


def int_values(node: Node, value: np.ndarray, what: str) -> list[int]:
    """A 0-D/1-D integer tensor input as Python ints."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise fail(node, f"input '{what}' must be an integer tensor, got {arr.dtype}")
    if arr.ndim > 1:
        raise fail(node, f"input '{what}' must be 1-D, got shape {arr.shape}")
    return [int(v) for v in arr.reshape(-1)]


def int_scalar(node: Node, value: np.ndarray, what: str) -> int:
    """A scalar (or one-element) integer tensor input as a Python int."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise fail(node, f"input '{what}' must hold exactly one value, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise fail(node, f"input '{what}' must be an integer tensor, got {arr.dtype}")
    return int(arr.reshape(-1)[0])


def norm_axis(node: Node, axis: int, rank: int, what: str = "axis") -> int:
    """``axis`` in [-rank, rank-1] mapped to [0, rank-1]."""
    if not -rank <= axis < rank:
        raise fail(node, f"{what} {axis} is out of range for a rank-{rank} tensor "
                         f"(expected [{-rank}, {rank - 1}])")
    return axis + rank if axis < 0 else axis


def norm_axes(node: Node, axes: Iterable[int], rank: int, what: str = "axes") -> list[int]:
    """Normalised axes, which must be distinct."""
    out = [norm_axis(node, int(a), rank, what) for a in axes]
    if len(set(out)) != len(out):
        raise fail(node, f"{what} {list(axes)} contain duplicates")
    return out


def as_array(value: Any) -> np.ndarray:
    """NumPy ufuncs return scalars for 0-D operands; kernels must return arrays."""
    return value if isinstance(value, np.ndarray) else np.asarray(value)


# ---------------------------------------------------------------- constants


_CONSTANT_ATTRS = (
    "value", "sparse_value", "value_float", "value_floats", "value_int",
    "value_ints", "value_string", "value_strings",
)


def _constant_value(node: Node) -> np.ndarray:
    present = [name for name in _CONSTANT_ATTRS if name in node.attrs]
    if len(present) != 1:
        raise InvalidModelError(
            f"{node.label()}: exactly one of {', '.join(_CONSTANT_ATTRS)} must be set, "
            f"got {present or 'none'}"
        )
    name = present[0]
    value = node.attrs[name]
    if name == "sparse_value":
        raise unsupported_attr(node, name, "<sparse tensor>", "value, value_float(s), "
                               "value_int(s), value_string(s)")
    if name == "value":
        return np.array(value)
    if name in ("value_float", "value_floats"):
        return np.array(value, dtype=np.float32)
    if name in ("value_int", "value_ints"):
        return np.array(value, dtype=np.int64)
    if isinstance(value, list):
        return np.array([_text(v) for v in value], dtype=object).reshape(len(value))
    return np.array(_text(value), dtype=object)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@register("Constant")
def constant(node: Node, ctx: BuildContext):
    value = _constant_value(node)
    value.setflags(write=False)  # shared by every run: nobody may write it

    def kernel():
        return (value,)

    return kernel


@register("ConstantOfShape", since=9)
def constant_of_shape(node: Node, ctx: BuildContext):
    fill = node.attr("value", None)
    if fill is None:
        fill = np.zeros(1, dtype=np.float32)
    fill = np.asarray(fill)
    if fill.size != 1:
        raise InvalidModelError(
            f"{node.label()}: attribute 'value' must hold one element, got shape {fill.shape}"
        )
    scalar = fill.reshape(-1)[0]

    def kernel(shape):
        dims = int_values(node, shape, "input")
        if any(d < 0 for d in dims):
            raise fail(node, f"shape {dims} has a negative dimension")
        return (np.full(dims, scalar, dtype=fill.dtype),)

    return kernel


# ---------------------------------------------------------------- shape queries


@register("Shape")
def shape(node: Node, ctx: BuildContext):
    start = attr_int(node, "start", 0)
    end = attr_int(node, "end", None)

    def kernel(x):
        # Python slicing clamps exactly as the spec asks (negatives count from the end).
        return (np.array(x.shape[start:end], dtype=np.int64),)

    return kernel


@register("Size")
def size(node: Node, ctx: BuildContext):
    def kernel(x):
        return (np.array(np.asarray(x).size, dtype=np.int64),)

    return kernel


# ---------------------------------------------------------------- reshaping


def _reshape_target(node: Node, in_shape: tuple[int, ...], target: list[int],
                    allowzero: bool) -> list[int]:
    out: list[int] = []
    infer_at = None
    for i, dim in enumerate(target):
        if dim == -1:
            if infer_at is not None:
                raise fail(node, f"shape {target} has more than one -1")
            infer_at = i
            out.append(1)
        elif dim == 0 and not allowzero:
            if i >= len(in_shape):
                raise fail(node, f"shape {target}: 0 at position {i} copies a dimension the "
                                 f"rank-{len(in_shape)} input does not have")
            out.append(in_shape[i])
        elif dim < 0:
            raise fail(node, f"shape {target} has an invalid dimension {dim}")
        else:
            out.append(dim)
    total = math.prod(in_shape)
    if infer_at is not None:
        known = math.prod(out)
        if known == 0 or total % known:
            raise fail(node, f"cannot reshape input of shape {in_shape} to {target}")
        out[infer_at] = total // known
    elif math.prod(out) != total:
        raise fail(node, f"cannot reshape input of shape {in_shape} ({total} elements) "
                         f"to {target} ({math.prod(out)} elements)")
    return out


@register("Reshape")
def reshape(node: Node, ctx: BuildContext):
    allowzero = attr_flag(node, "allowzero", 0) if ctx.opset() >= 14 else False
    if ctx.opset() < 5:
        fixed = attr_ints(node, "shape", [])

        def kernel_attr(x):
            return (x.reshape(_reshape_target(node, x.shape, fixed, allowzero)),)

        return kernel_attr

    def kernel(x, shape):
        target = int_values(node, shape, "shape")
        return (x.reshape(_reshape_target(node, x.shape, target, allowzero)),)

    return kernel


@register("Transpose")
def transpose(node: Node, ctx: BuildContext):
    perm = attr_ints(node, "perm", None)
    if perm is not None and sorted(perm) != list(range(len(perm))):
        raise InvalidModelError(f"{node.label()}: attribute 'perm' = {perm} is not a permutation")

    def kernel(x):
        if perm is None:
            return (np.transpose(x),)
        if len(perm) != x.ndim:
            raise fail(node, f"perm {perm} has {len(perm)} entries but the input has rank {x.ndim}")
        return (np.transpose(x, perm),)

    return kernel


def _squeeze(node: Node, x: np.ndarray, axes: list[int] | None) -> np.ndarray:
    if axes is None or len(axes) == 0:
        return x.reshape([d for d in x.shape if d != 1])
    axes = norm_axes(node, axes, x.ndim)
    for a in axes:
        if x.shape[a] != 1:
            raise fail(node, f"cannot squeeze axis {a} of size {x.shape[a]} (input shape {x.shape})")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@register("Squeeze")
def squeeze(node: Node, ctx: BuildContext):
    if ctx.opset() < 13:
        fixed = attr_ints(node, "axes", None)
        return lambda x: (_squeeze(node, x, fixed),)

    def kernel(x, axes=None):
        return (_squeeze(node, x, None if axes is None else int_values(node, axes, "axes")),)

    return kernel


def _unsqueeze(node: Node, x: np.ndarray, axes: list[int]) -> np.ndarray:
    out_rank = x.ndim + len(axes)
    axes = norm_axes(node, axes, out_rank)
    dims = iter(x.shape)
    return x.reshape([1 if i in axes else next(dims) for i in range(out_rank)])


@register("Unsqueeze")
def unsqueeze(node: Node, ctx: BuildContext):
    if ctx.opset() < 13:
        fixed = attr_ints(node, "axes", None)
        if fixed is None:
            raise InvalidModelError(f"{node.label()}: required attribute 'axes' is missing")
        return lambda x: (_unsqueeze(node, x, fixed),)
    return lambda x, axes: (_unsqueeze(node, x, int_values(node, axes, "axes")),)


@register("Flatten")
def flatten(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", 1)

    def kernel(x):
        a = axis + x.ndim if axis < 0 else axis
        if not 0 <= a <= x.ndim:
            raise fail(node, f"axis {axis} is out of range for a rank-{x.ndim} tensor "
                             f"(expected [{-x.ndim}, {x.ndim}])")
        return (x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:])),)

    return kernel


# ---------------------------------------------------------------- joining / splitting


@register("Concat")
def concat(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", 1 if ctx.opset() < 4 else None)
    if axis is None:
        raise InvalidModelError(f"{node.label()}: required attribute 'axis' is missing")

    def kernel(*inputs):
        if not inputs:
            raise fail(node, "needs at least one input")
        rank = inputs[0].ndim
        if any(t.ndim != rank for t in inputs):
            raise fail(node, f"inputs have different ranks {[t.ndim for t in inputs]}")
        a = norm_axis(node, axis, rank)
        return (np.concatenate(inputs, axis=a),)

    return kernel


def _split_sizes(node: Node, dim: int, parts: int, split: list[int] | None,
                 num_outputs: int | None) -> list[int]:
    if split is not None:
        if len(split) != parts or sum(split) != dim or any(s < 0 for s in split):
            raise fail(node, f"split {split} must be {parts} non-negative sizes summing to "
                             f"the axis length {dim}")
        return split
    if num_outputs is not None:  # opset 18: the last chunk may be smaller
        chunk = -(-dim // num_outputs)
        last = dim - chunk * (num_outputs - 1)
        if last < 0:
            raise fail(node, f"num_outputs {num_outputs} cannot split an axis of length {dim}")
        return [chunk] * (num_outputs - 1) + [last]
    if dim % parts:
        raise fail(node, f"axis of length {dim} is not evenly splittable into {parts} outputs")
    return [dim // parts] * parts


@register("Split")
def split(node: Node, ctx: BuildContext):
    opset = ctx.opset()
    axis = attr_int(node, "axis", 0)
    parts = len(node.outputs)
    fixed = attr_ints(node, "split", None) if opset < 13 else None
    num_outputs = attr_int(node, "num_outputs", None) if opset >= 18 else None
    if num_outputs is not None and num_outputs != parts:
        raise InvalidModelError(
            f"{node.label()}: attribute 'num_outputs' = {num_outputs} but the node has "
            f"{parts} outputs"
        )

    def kernel(x, split_input=None):
        a = norm_axis(node, axis, x.ndim)
        given = fixed if split_input is None else int_values(node, split_input, "split")
        sizes = _split_sizes(node, x.shape[a], parts, given, num_outputs)
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=a))

    return kernel


# ---------------------------------------------------------------- slicing


def _slice(node: Node, x: np.ndarray, starts: list[int], ends: list[int],
           axes: list[int] | None, steps: list[int] | None) -> np.ndarray:
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise fail(node, f"starts {starts}, ends {ends}, axes {axes} and steps {steps} "
                         "must have the same length")
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, norm_axes(node, axes, x.ndim), steps):
        dim = x.shape[axis]
        if step == 0:
            raise fail(node, f"step for axis {axis} is 0")
        start += dim if start < 0 else 0
        end += dim if end < 0 else 0
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:  # -1 means "before index 0", which a Python slice spells as None
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = slice(start, end if end >= 0 else None, step)
    return x[tuple(index)]


@register("Slice")
def slice_op(node: Node, ctx: BuildContext):
    if ctx.opset() < 10:
        starts = attr_ints(node, "starts", None)
        ends = attr_ints(node, "ends", None)
        axes = attr_ints(node, "axes", None)
        if starts is None or ends is None:
            raise InvalidModelError(f"{node.label()}: attributes 'starts' and 'ends' are required")
        return lambda x: (_slice(node, x, starts, ends, axes, None),)

    def kernel(x, starts, ends, axes=None, steps=None):
        return (_slice(
            node, x, int_values(node, starts, "starts"), int_values(node, ends, "ends"),
            None if axes is None else int_values(node, axes, "axes"),
            None if steps is None else int_values(node, steps, "steps"),
        ),)

    return kernel


# ---------------------------------------------------------------- gather / scatter


def _wrap_indices(node: Node, indices: np.ndarray, dim: int | np.ndarray, what: str) -> np.ndarray:
    """Indices in [-dim, dim-1] mapped to [0, dim-1]; anything else raises."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise fail(node, f"{what} must be an integer tensor, got {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    bad = (idx < -dim) | (idx >= dim)
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        limit = np.broadcast_to(dim, idx.shape)[where]
        raise fail(node, f"{what} value {int(idx[where])} at {where} is out of range "
                         f"[{-limit}, {limit - 1}]")
    return np.where(idx < 0, idx + dim, idx)


@register("Gather")
def gather(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", 0)

    def kernel(data, indices):
        a = norm_axis(node, axis, data.ndim)
        idx = _wrap_indices(node, indices, data.shape[a], "indices")
        return (as_array(np.take(data, idx, axis=a)),)

    return kernel


def _element_index(node: Node, data: np.ndarray, indices: np.ndarray, axis: int) -> tuple:
    """The fancy index that addresses data[..., indices[i], ...] along ``axis``."""
    if indices.ndim != data.ndim:
        raise fail(node, f"indices rank {indices.ndim} differs from data rank {data.ndim}")
    a = norm_axis(node, axis, data.ndim)
    for d in range(data.ndim):
        if d != a and indices.shape[d] > data.shape[d]:
            raise fail(node, f"indices shape {indices.shape} exceeds data shape {data.shape} "
                             f"on axis {d}")
    grid = list(np.ogrid[tuple(slice(0, n) for n in indices.shape)]) if indices.ndim else []
    grid[a] = _wrap_indices(node, indices, data.shape[a], "indices")
    return tuple(grid)


@register("GatherElements", since=11)
def gather_elements(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", 0)
    return lambda data, indices: (as_array(data[_element_index(node, data, indices, axis)]),)


def _nd_index(node: Node, data_shape: tuple[int, ...], indices: np.ndarray, batch_dims: int):
    """Split GatherND/ScatterND indices into one index array per addressed dimension."""
    if indices.ndim < 1:
        raise fail(node, "indices must have rank >= 1")
    depth = indices.shape[-1]
    if depth > len(data_shape) - batch_dims:
        raise fail(node, f"indices last dimension {depth} exceeds data rank {len(data_shape)} "
                         f"minus batch_dims {batch_dims}")
    if tuple(indices.shape[:batch_dims]) != tuple(data_shape[:batch_dims]):
        raise fail(node, f"batch dimensions of indices {indices.shape} and data {data_shape} differ")
    dims = np.array(data_shape[batch_dims:batch_dims + depth], dtype=np.int64)
    idx = _wrap_indices(node, indices, dims, "indices")
    return [idx[..., j] for j in range(depth)]


@register("GatherND", since=11)
def gather_nd(node: Node, ctx: BuildContext):
    batch_dims = attr_int(node, "batch_dims", 0) if ctx.opset() >= 12 else 0
    if batch_dims < 0:
        raise unsupported_attr(node, "batch_dims", batch_dims, "integers >= 0")

    def kernel(data, indices):
        if batch_dims >= min(data.ndim, indices.ndim):
            raise fail(node, f"batch_dims {batch_dims} must be smaller than both ranks "
                             f"(data {data.ndim}, indices {indices.ndim})")
        cols = _nd_index(node, data.shape, indices, batch_dims)
        # Batch coordinates broadcast against the per-batch index columns.
        batch = np.ogrid[tuple(slice(0, n) for n in indices.shape[:-1])][:batch_dims] \
            if batch_dims else []
        return (as_array(data[tuple(batch) + tuple(cols)]),)

    return kernel


_SCATTER_REDUCTIONS = {
    "none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
}


def _scatter_reduction(node: Node, ctx: BuildContext):
    allowed = ["none"]
    if ctx.opset() >= 16:
        allowed += ["add", "mul"]
    if ctx.opset() >= 18:
        allowed += ["max", "min"]
    return _SCATTER_REDUCTIONS[attr_choice(node, "reduction", "none", allowed)]


def _scatter_into(data: np.ndarray, index: tuple, updates: np.ndarray, ufunc) -> np.ndarray:
    out = data.copy()
    if ufunc is None:
        out[index] = updates
    else:
        ufunc.at(out, index, updates)  # unbuffered, so duplicate indices accumulate
    return out


@register("ScatterND", since=11)
def scatter_nd(node: Node, ctx: BuildContext):
    ufunc = _scatter_reduction(node, ctx)

    def kernel(data, indices, updates):
        cols = _nd_index(node, data.shape, indices, 0)
        expected = indices.shape[:-1] + data.shape[indices.shape[-1]:]
        if updates.shape != expected:
            raise fail(node, f"updates shape {updates.shape} must be {expected}")
        return (_scatter_into(data, tuple(cols), updates, ufunc),)

    return kernel


def _scatter_elements_factory(node: Node, ctx: BuildContext, with_reduction: bool):
    axis = attr_int(node, "axis", 0)
    ufunc = _scatter_reduction(node, ctx) if with_reduction else None

    def kernel(data, indices, updates):
        if updates.shape != indices.shape:
            raise fail(node, f"updates shape {updates.shape} differs from indices shape "
                             f"{indices.shape}")
        return (_scatter_into(data, _element_index(node, data, indices, axis), updates, ufunc),)

    return kernel


@register("ScatterElements", since=11)
def scatter_elements(node: Node, ctx: BuildContext):
    return _scatter_elements_factory(node, ctx, with_reduction=True)


@register("Scatter", since=9, until=10)  # deprecated alias of ScatterElements
def scatter(node: Node, ctx: BuildContext):
    return _scatter_elements_factory(node, ctx, with_reduction=False)


# ---------------------------------------------------------------- expanding / padding


@register("Expand", since=8)
def expand(node: Node, ctx: BuildContext):
    def kernel(x, shape):
        dims = int_values(node, shape, "shape")
        try:
            out_shape = np.broadcast_shapes(x.shape, tuple(dims))
        except ValueError:
            raise fail(node, f"input shape {x.shape} cannot be broadcast with shape {dims}") from None
        return (np.array(np.broadcast_to(x, out_shape)),)

    return kernel


@register("Tile", since=6)
def tile(node: Node, ctx: BuildContext):
    def kernel(x, repeats):
        reps = int_values(node, repeats, "repeats")
        if len(reps) != x.ndim or any(r < 0 for r in reps):
            raise fail(node, f"repeats {reps} must be {x.ndim} non-negative values")
        return (np.tile(x, reps),)

    return kernel


def _pad(node: Node, x: np.ndarray, pads: list[int], mode: str, value: Any,
         axes: list[int] | None) -> np.ndarray:
    axes = list(range(x.ndim)) if axes is None else norm_axes(node, axes, x.ndim)
    if len(pads) != 2 * len(axes):
        raise fail(node, f"pads {pads} must have 2 * {len(axes)} entries")
    begin = [0] * x.ndim
    end = [0] * x.ndim
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + len(axes)]
    # Negative pads crop first; padding (edge/reflect) then reads the cropped tensor.
    crop = tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(zip(begin, end)))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if not any(b or e for b, e in widths):
        return np.array(x)
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=value)
    if x.size == 0:
        raise fail(node, f"mode '{mode}' cannot pad an empty tensor (shape {x.shape})")
    if mode == "reflect":  # a reflection cannot reach past the opposite edge
        for a, (b, e) in enumerate(widths):
            if max(b, e) > x.shape[a] - 1:
                raise fail(node, f"reflect pads ({b}, {e}) exceed {x.shape[a] - 1}, the most "
                                 f"an axis of length {x.shape[a]} allows")
    return np.pad(x, widths, mode=mode)


@register("Pad", since=2)
def pad(node: Node, ctx: BuildContext):
    opset = ctx.opset()
    modes = ["constant", "reflect", "edge"] + (["wrap"] if opset >= 19 else [])
    mode = attr_choice(node, "mode", "constant", modes)
    if opset < 11:
        pads = attr_ints(node, "pads", None)
        if pads is None:
            raise InvalidModelError(f"{node.label()}: required attribute 'pads' is missing")
        value = float(node.attr("value", 0.0))
        return lambda x: (_pad(node, x, pads, mode, np.array(value).astype(x.dtype), None),)

    def kernel(x, pads, constant_value=None, axes=None):
        fill = np.zeros((), x.dtype) if constant_value is None else \
            np.asarray(constant_value).reshape(-1)[:1].astype(x.dtype).reshape(())
        return (_pad(node, x, int_values(node, pads, "pads"), mode, fill,
                     None if axes is None else int_values(node, axes, "axes")),)

    return kernel


# ---------------------------------------------------------------- generators


@register("Range", since=11)
def range_op(node: Node, ctx: BuildContext):
    def kernel(start, limit, delta):
        dtype = np.asarray(start).dtype
        s, l, d = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
        if d == 0:
            raise fail(node, "delta is 0")
        if dtype.kind in "iu":
            count = max(-(-(int(l) - int(s)) // int(d)), 0)
            return (np.arange(count, dtype=np.int64).astype(dtype) * dtype.type(d) + dtype.type(s),)
        count = max(math.ceil((float(l) - float(s)) / float(d)), 0)
        # onnxruntime accumulates "value += delta" in T; a sequential cumsum does the same.
        steps = np.full(count, d, dtype=dtype)
        if count:
            steps[0] = s
        return (np.cumsum(steps, dtype=dtype),)

    return kernel


@register("OneHot", since=9)
def one_hot(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", -1)

    def kernel(indices, depth, values):
        if np.asarray(depth).size != 1:
            raise fail(node, f"depth must hold one value, got shape {np.shape(depth)}")
        n = int(np.asarray(depth).reshape(-1)[0])
        if n < 1:
            raise fail(node, f"depth must be positive, got {n}")
        if np.asarray(values).size != 2:
            raise fail(node, f"values must be [off_value, on_value], got shape {np.shape(values)}")
        off, on = np.asarray(values).reshape(-1)
        idx = np.asarray(indices).astype(np.int64)  # float indices truncate, like onnxruntime
        idx = np.where(idx < 0, idx + n, idx)
        a = norm_axis(node, axis, idx.ndim + 1)
        hot = np.moveaxis(idx[..., None] == np.arange(n), -1, a)
        return (np.where(hot, on, off).astype(np.asarray(values).dtype),)

    return kernel


@register("EyeLike", since=9)
def eye_like(node: Node, ctx: BuildContext):
    code = attr_int(node, "dtype", None)
    dtype = None if code is None else numpy_dtype(code, f"{node.label()} attribute 'dtype'")
    k = attr_int(node, "k", 0)

    def kernel(x):
        if x.ndim != 2:
            raise fail(node, f"input must be 2-D, got shape {x.shape}")
        return (np.eye(x.shape[0], x.shape[1], k, dtype=dtype or x.dtype),)

    return kernel


# ---------------------------------------------------------------- selection


@register("NonZero", since=9)
def non_zero(node: Node, ctx: BuildContext):
    def kernel(x):
        # onnxruntime treats a scalar as a one-element vector.
        x = np.asarray(x).reshape(1) if np.ndim(x) == 0 else x
        return (np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1),)

    return kernel


@register("Compress", since=9)
def compress(node: Node, ctx: BuildContext):
    axis = attr_int(node, "axis", None)

    def kernel(x, condition):
        cond = np.asarray(condition).reshape(-1).astype(bool)
        if axis is None:
            flat = x.reshape(-1)
            return (flat[: cond.size][cond[: flat.size]],)
        a = norm_axis(node, axis, x.ndim)
        if cond.size > x.shape[a] and cond[x.shape[a]:].any():
            raise fail(node, f"condition of length {cond.size} selects beyond axis length "
                             f"{x.shape[a]}")
        return (np.compress(cond[: x.shape[a]], x, axis=a),)

    return kernel


@register("TopK")
def top_k(node: Node, ctx: BuildContext):
    opset = ctx.opset()
    axis = attr_int(node, "axis", -1)
    largest = attr_flag(node, "largest", 1) if opset >= 11 else True
    attr_flag(node, "sorted", 1)  # unsorted output may be in any order: we always sort
    fixed_k = attr_int(node, "k", None) if opset < 10 else None
    if opset < 10 and fixed_k is None:
        raise InvalidModelError(f"{node.label()}: required attribute 'k' is missing")

    def kernel(x, k=None):
        count = fixed_k if k is None else int_scalar(node, k, "K")
        a = norm_axis(node, axis, x.ndim)
        n = x.shape[a]
        if not 0 <= count <= n:
            raise fail(node, f"k = {count} is out of range for an axis of length {n}")
        if largest:
            # Stable sort of the reversed axis, reversed back: descending, ties by lower index.
            order = np.flip(np.argsort(np.flip(x, a), axis=a, kind="stable"), a)
            order = (n - 1) - order
        else:
            order = np.argsort(x, axis=a, kind="stable")
        order = np.take(order, np.arange(count), axis=a)
        return (np.take_along_axis(x, order, axis=a), order.astype(np.int64))

    return kernel


@register("Trilu", since=14)
def trilu(node: Node, ctx: BuildContext):
    upper = attr_flag(node, "upper", 1)

    def kernel(x, k=None):
        if x.ndim < 2:
            raise fail(node, f"input must have rank >= 2, got shape {x.shape}")
        diag = 0 if k is None else int_scalar(node, k, "k")
        # Clamp so huge k values stay cheap; beyond the matrix size they change nothing.
        diag = max(min(diag, x.shape[-1]), -x.shape[-2])
        return ((np.triu if upper else np.tril)(x, diag),)

    return kernel


@register("CumSum", since=11)
def cum_sum(node: Node, ctx: BuildContext):
    exclusive = attr_flag(node, "exclusive", 0)
    reverse = attr_flag(node, "reverse", 0)

    def kernel(x, axis):
        a = norm_axis(node, int_scalar(node, axis, "axis"), x.ndim)
        y = np.flip(x, a) if reverse else x
        out = np.cumsum(y, axis=a, dtype=x.dtype)
        if exclusive:
            head = np.zeros_like(np.take(out, [0], axis=a)) if x.shape[a] else np.take(out, [], axis=a)
            out = np.concatenate([head, np.take(out, np.arange(x.shape[a] - 1), axis=a)], axis=a)
        return (np.flip(out, a).copy() if reverse else out,)

    return kernel


@register("ReverseSequence", since=10)
def reverse_sequence(node: Node, ctx: BuildContext):
    batch_axis = attr_choice(node, "batch_axis", 1, (0, 1))
    time_axis = attr_choice(node, "time_axis", 0, (0, 1))
    if batch_axis == time_axis:
        raise InvalidModelError(f"{node.label()}: batch_axis and time_axis are both {time_axis}")

    def kernel(x, sequence_lens):
        lens = int_values(node, sequence_lens, "sequence_lens")
        if x.ndim < 2 or len(lens) != x.shape[batch_axis]:
            raise fail(node, f"sequence_lens has {len(lens)} entries for input shape {x.shape} "
                             f"(batch_axis {batch_axis})")
        steps = x.shape[time_axis]
        out = x.copy()
        src = np.moveaxis(x, (time_axis, batch_axis), (0, 1))
        dst = np.moveaxis(out, (time_axis, batch_axis), (0, 1))  # a view: writes land in out
        for b, n in enumerate(lens):
            if not 0 <= n <= steps:
                raise fail(node, f"sequence_lens[{b}] = {n} is outside [0, {steps}]")
            dst[:n, b] = src[:n, b][::-1]
        return (out,)

    return kernel
