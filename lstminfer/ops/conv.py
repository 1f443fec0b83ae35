"""Convolution front-ends: Conv (1-D, 2-D, N-D), MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

A convolution is one im2col copy per kernel tap into a column buffer, then one GEMM through
NumPy's BLAS (``np.matmul(..., out=)``): W is repacked once at load into ``[G, M/G, C/G*taps]``
(taps in row-major kernel order), the columns are ``[N, G, C/G*taps, L]`` with L the output's
spatial size, so ``W @ cols`` is ``[N, G, M/G, L]``: the output's own layout. Pools walk the same
taps over strided views of the padded input, accumulating in place.

Geometry follows the ONNX spec (and onnxruntime where the spec is loose): explicit ``pads``
[begin..., end...] or ``auto_pad`` SAME_UPPER/SAME_LOWER/VALID; ``ceil_mode`` drops a last window
that would start in the end padding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidModelError
from ..conv_fusion import ACTIVATION_ATTR, FOLDED_ATTR, POOL_ATTR, STREAMED_TIME_ATTR
from ..graph import Node
from ..kernels import conv_native
from .registry import INTERNAL_DOMAIN, BuildContext, register
from .tensor import attr_choice, attr_flag, attr_int, attr_ints, fail, unsupported_attr

Array = np.ndarray
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
_COLS_FLOATS = 1 << 18  # a conv's column block (1 MiB of float32): stays in cache between im2col and GEMM
_NATIVE = True  # float32 Conv/MaxPool through lstminfer.kernels.conv_native where built (tests turn it off)


def _work_dtype(x: Array) -> np.dtype:
    """float16 has no BLAS: compute in float32 (and round back), like the other dense ops."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Window:
    """A sliding window's attributes over the spatial axes (kernel from the node or from W)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...] | None  # explicit [begin..., end...]; None with auto_pad
    auto_pad: str
    ceil_mode: bool = False
    streamed: int | None = None  # the spatial axis a stream feeds chunk by chunk: too short gives 0 frames

    def geometry(self, node: Node, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(begin pads, end pads, output sizes) for an input of spatial sizes ``spatial``."""
        n = len(self.kernel)
        if len(spatial) != n:
            raise fail(node, f"input has {len(spatial)} spatial axes, the kernel {n} ({list(self.kernel)})")
        begins, ends, outs = [], [], []
        for i in range(n):
            size, k, s, d = spatial[i], self.kernel[i], self.strides[i], self.dilations[i]
            span = (k - 1) * d + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-size // s)
                total = max(0, (out - 1) * s + span - size)
                small = total // 2
                b, e = (small, total - small) if self.auto_pad == "SAME_UPPER" else (total - small, small)
            elif self.auto_pad == "VALID":
                b = e = 0
                out = (size - span) // s + 1
            else:
                b, e = (self.pads[i], self.pads[i + n]) if self.pads is not None else (0, 0)
                room = size + b + e - span
                if self.ceil_mode:
                    out = -(-room // s) + 1
                    if (out - 1) * s >= size + b:  # the last window would start in the end padding
                        out -= 1
                else:
                    out = room // s + 1
            if out < 1 and i == self.streamed:
                out = 0  # a chunk shorter than one window (conv_streaming): no output frame yet
            elif out < 1:
                raise fail(node, f"spatial axis {i}: input size {size} with pads ({b}, {e}) is smaller "
                                 f"than the kernel's span {span} (kernel {k}, dilation {d})")
            begins.append(b)
            ends.append(e)
            outs.append(out)
        return tuple(begins), tuple(ends), tuple(outs)


def _window(node: Node, kernel: Sequence[int], *, dilations: bool = True, ceil_mode: bool = False) -> Window:
    n = len(kernel)
    if any(k < 1 for k in kernel):
        raise InvalidModelError(f"{node.label()}: kernel_shape {list(kernel)} must be positive")

    def per_axis(name: str) -> tuple[int, ...]:
        values = attr_ints(node, name, None) if (name != "dilations" or dilations) else None
        if values is None:
            return (1,) * n
        if len(values) != n or any(v < 1 for v in values):
            raise InvalidModelError(f"{node.label()}: attribute '{name}' = {values} must hold {n} positive ints "
                                    f"(one per spatial axis of kernel_shape {list(kernel)})")
        return tuple(values)

    auto_pad = node.attr("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in AUTO_PADS:
        raise unsupported_attr(node, "auto_pad", auto_pad, ", ".join(AUTO_PADS))
    pads = attr_ints(node, "pads", None)
    if pads is not None:
        if len(pads) != 2 * n or any(p < 0 for p in pads):
            raise InvalidModelError(f"{node.label()}: attribute 'pads' = {pads} must hold {2 * n} non-negative ints "
                                    "([begin..., end...] per spatial axis)")
        if auto_pad != "NOTSET" and any(pads):
            raise InvalidModelError(f"{node.label()}: 'pads' {pads} and auto_pad='{auto_pad}' are both set")
    streamed = node.attr(STREAMED_TIME_ATTR, None)
    return Window(tuple(kernel), per_axis("strides"), per_axis("dilations"),
                  tuple(pads) if pads is not None else None, auto_pad, ceil_mode,
                  None if streamed is None else int(streamed) - 2)


def _padded(x: Array, begins: Sequence[int], ends: Sequence[int], extra: Sequence[int], fill) -> Array:
    """``x`` with its spatial axes padded by ``fill`` (``extra``: more at the end, for ceil_mode)."""
    if not any(begins) and not any(ends) and not any(extra):
        return x
    shape = x.shape[:2] + tuple(s + b + e + x_ for s, b, e, x_ in zip(x.shape[2:], begins, ends, extra))
    out = np.full(shape, fill, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(begins, x.shape[2:]))] = x
    return out


def _tap_views(padded: Array, window: Window, outs: Sequence[int], first: int = 0, stop: int | None = None):
    """For each kernel tap (row-major): the strided view of ``padded`` it reads, shape [N, C, *outs]
    (output rows ``first``..``stop`` of the first spatial axis only, when given)."""
    starts = [0] * len(outs)
    starts[0] = first
    ends = list(outs)
    ends[0] = outs[0] if stop is None else stop
    for tap in np.ndindex(*window.kernel):
        index = tuple(slice(t * d + a * s, t * d + (b - 1) * s + 1, s)
                      for t, d, s, a, b in zip(tap, window.dilations, window.strides, starts, ends))
        yield padded[(slice(None), slice(None)) + index]


def _ceil_extra(x_spatial, begins, ends, outs, window: Window) -> tuple[int, ...]:
    """End padding beyond ``ends`` that ceil_mode's last windows reach into."""
    return tuple(max(0, (o - 1) * s + (k - 1) * d + 1 - (n + b + e))
                 for n, b, e, o, k, s, d in zip(x_spatial, begins, ends, outs, window.kernel, window.strides,
                                                window.dilations))


# ---------------------------------------------------------------- Conv


def conv_into(x: Array, packed_w: Array, bias: Array | None, window: Window, node: Node,
              groups: int, relu: bool = False) -> Array:
    """Y = conv(x) as [N, M, *outs]: per block of batch items (or, for large items, of output
    rows), im2col into one column buffer kept small enough to stay in cache, one GEMM of W
    against it, then the bias (and a fused Relu) on that block while it is still in cache.

    ``packed_w``: [G, M/G, C/G * taps] in the compute dtype; ``bias``: [M] or None.
    """
    N, C = x.shape[:2]
    G, Mg, K = packed_w.shape
    taps = math.prod(window.kernel)
    if C != G * (K // taps):
        raise fail(node, f"input has {C} channels; W expects {G * (K // taps)} ({G} group(s) of {K // taps})")
    begins, ends, outs = window.geometry(node, x.shape[2:])
    L, Cg = math.prod(outs), C // G
    rest = math.prod(outs[1:])
    bias = None if bias is None else bias.reshape(G, Mg, 1)

    def finish(block: Array) -> None:  # [G, Mg, columns], just written
        if bias is not None:
            block += bias
        if relu:
            np.maximum(block, 0, out=block)

    y = np.empty((N, G, Mg) + outs, dtype=packed_w.dtype)
    unit = taps == 1 and all(s == 1 for s in window.strides) and not any(begins) and not any(ends)
    if unit:  # a 1x1 conv: the input is its own column buffer
        out = y.reshape(N, G, Mg, L)
        np.matmul(packed_w, x.reshape(N, G, Cg, L), out=out)
        finish(out)
        return y.reshape((N, G * Mg) + outs)
    padded = _padded(x, begins, ends, (0,) * len(outs), 0)
    if G * K * L <= _COLS_FLOATS:  # whole items per block (many small items: few Python steps)
        items = min(N, _COLS_FLOATS // (G * K * L))
        cols_buffer = np.empty(items * G * K * L, dtype=x.dtype)
        for n0 in range(0, N, items):
            n1 = min(N, n0 + items)
            cols = cols_buffer[:(n1 - n0) * G * K * L].reshape((n1 - n0, G, Cg, taps) + outs)
            for t, view in enumerate(_tap_views(padded[n0:n1], window, outs)):
                cols[:, :, :, t] = view.reshape((n1 - n0, G, Cg) + outs)
            out = y[n0:n1].reshape(n1 - n0, G, Mg, L)
            np.matmul(packed_w, cols.reshape(n1 - n0, G, K, L), out=out)
            finish(out)
        return y.reshape((N, G * Mg) + outs)
    rows = max(1, min(outs[0], _COLS_FLOATS // max(1, G * K * rest)))  # blocks of output rows within an item
    cols_buffer = np.empty(G * K * rows * rest, dtype=x.dtype)
    out_buffer = np.empty(G * Mg * rows * rest, dtype=packed_w.dtype)
    for n in range(N):
        for r0 in range(0, outs[0], rows):
            nr = min(rows, outs[0] - r0)
            cols = cols_buffer[:G * K * nr * rest].reshape((G, Cg, taps, nr) + outs[1:])
            for t, view in enumerate(_tap_views(padded[n:n + 1], window, outs, r0, r0 + nr)):
                cols[:, :, t] = view.reshape((G, Cg, nr) + outs[1:])
            block = out_buffer[:G * Mg * nr * rest].reshape(G, Mg, nr * rest)
            np.matmul(packed_w, cols.reshape(G, K, nr * rest), out=block)
            finish(block)
            y[n, :, :, r0:r0 + nr] = block.reshape((G, Mg, nr) + outs[1:])
    return y.reshape((N, G * Mg) + outs)


def pack_conv_weights(W: Array, groups: int, work: np.dtype) -> Array:
    """W [M, C/G, *k] as the GEMM's left operand [G, M/G, C/G * taps], contiguous, in ``work``."""
    M = W.shape[0]
    return np.ascontiguousarray(W.reshape(groups, M // groups, -1), dtype=work)


@register("Conv")
def conv(node: Node, ctx: BuildContext):
    groups = attr_int(node, "group", 1)
    if groups < 1:
        raise InvalidModelError(f"{node.label()}: attribute 'group' = {groups} must be >= 1")
    W_const = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    B_const = ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    kernel_attr = attr_ints(node, "kernel_shape", None)
    folded = node.attr(FOLDED_ATTR, None)  # what lstminfer.conv_fusion joined to this Conv
    activation = node.attr(ACTIVATION_ATTR, None)
    if activation is not None and activation[0] != "Relu":
        raise InvalidModelError(f"{node.label()}: cannot run a fused {activation[0]}")
    relu = activation is not None
    pool = node.attr(POOL_ATTR, None)  # (kernel, name) of a MaxPool run inside (conv_fusion)

    def check_w(W: Array) -> None:
        if W.ndim < 3:
            raise fail(node, f"W must have rank >= 3 ([M, C/group, *kernel]), got shape {W.shape}")
        if W.shape[0] % groups:
            raise fail(node, f"W has {W.shape[0]} output channels, not a multiple of group={groups}")
        if kernel_attr is not None and tuple(kernel_attr) != W.shape[2:]:
            raise fail(node, f"kernel_shape {kernel_attr} differs from W's kernel {list(W.shape[2:])}")

    window = packed = packed_bias = native = None
    if W_const is not None:  # repacked once, here
        W_const = np.asarray(W_const)
        check_w(W_const)
        window = _window(node, W_const.shape[2:])
        work = _work_dtype(W_const)
        packed = pack_conv_weights(W_const, groups, work)
        if B_const is not None:
            packed_bias = np.ascontiguousarray(B_const, dtype=work).reshape(-1)
        if work == np.float32 and W_const.ndim <= 5 and (B_const is not None or len(node.inputs) < 3
                                                         or not node.inputs[2]) and _NATIVE and conv_native.available():
            native = conv_native.NativeConv(W_const, packed_bias, groups, window.dilations, window.strides, relu)
    elif kernel_attr is not None:
        window = _window(node, kernel_attr)  # validates the attributes at load

    seen: dict[tuple[int, ...], tuple] = {}  # float32 input shapes the native path took: (geometry, out shape)

    def kernel(x, W, B=None, out=None):
        known = seen.get(x.shape) if x.__class__ is np.ndarray and x.dtype == np.float32 else None
        if known is not None and (B is None or packed_bias is not None):  # checked before: the native call only
            begins, ends, outs, shape = known
            if pool is not None:
                return (native.run_max_pool(x, begins, ends, outs, pool[0], _into(out, shape)),)
            return (native.run(x, begins, ends, outs, _into(out, shape)),)
        if x.ndim < 3:
            raise fail(node, f"input X must have rank >= 3 ([N, C, *spatial]), got shape {x.shape}")
        work = _work_dtype(x)
        if packed is not None and packed.dtype == work:
            w, win, bias = packed, window, packed_bias
            if B is not None and packed_bias is None:
                bias = np.asarray(B, dtype=work).reshape(-1)
        else:
            check_w(W)
            win = window if window is not None and window.kernel == W.shape[2:] else _window(node, W.shape[2:])
            w = pack_conv_weights(W, groups, work)
            bias = None if B is None else np.asarray(B, dtype=work).reshape(-1)
        if x.ndim != w.ndim + len(win.kernel) - 1:
            raise fail(node, f"X of shape {x.shape} and a {len(win.kernel)}-D kernel differ in rank")
        if bias is not None and bias.size != w.shape[0] * w.shape[1]:
            raise fail(node, f"B has {bias.size} values; the conv has {w.shape[0] * w.shape[1]} output channels")
        if win.streamed is not None:
            outs = win.geometry(node, x.shape[2:])[2]
            if 0 in outs:  # a streamed chunk shorter than one window
                return (np.zeros((x.shape[0], w.shape[0] * w.shape[1]) + outs, x.dtype),)
        if native is not None and w is packed and x.dtype == np.float32:
            if x.shape[1] != groups * native.Cg:
                raise fail(node, f"input has {x.shape[1]} channels; W expects {groups * native.Cg} "
                                 f"({groups} group(s) of {native.Cg})")
            begins, ends, outs = win.geometry(node, x.shape[2:])
            shape = (x.shape[0], w.shape[0] * w.shape[1]) + (outs if pool is None else _pooled(outs, pool))
            if 0 not in outs and (bias is packed_bias or B is None):
                if len(seen) >= 16:  # streams of varying lengths: keep the recent ones only
                    seen.clear()
                seen[x.shape] = (begins, ends, outs, shape)
            if pool is not None:
                return (native.run_max_pool(x, begins, ends, outs, pool[0], _into(out, shape)),)
            return (native.run(x, begins, ends, outs, _into(out, shape)),)
        y = conv_into(x.astype(work, copy=False), w, bias, win, node, groups, relu)
        if pool is not None:
            y = _max_pool_tiles(y, _pooled(y.shape[2:], pool), pool[0])
        return (y.astype(x.dtype, copy=False),)

    def _pooled(outs, pool) -> tuple[int, ...]:
        kernel, name = pool
        if len(kernel) != len(outs) or any(o < k for o, k in zip(outs, kernel)):
            raise fail(node, f"the MaxPool '{name}' fused into it has kernel {list(kernel)}, which does not fit "
                             f"the conv's output of spatial size {list(outs)}")
        return tuple(o // k for o, k in zip(outs, kernel))

    kernel.writes_into = native is not None  # a compiled program hands it its output's memory
    kernel.describe = ("native conv (li_conv.h), weights packed at load; numpy im2col + BLAS GEMM otherwise"
                       if native is not None else "numpy im2col + BLAS GEMM, weights packed at load") \
        + (f", BatchNormalization '{folded}' folded in" if folded else "") \
        + (f", {activation[0]} '{activation[1]}' fused" if activation else "") \
        + (f", MaxPool '{pool[1]}' fused (the conv's output never written whole)" if pool else "")
    return kernel


def _max_pool_tiles(y: Array, pooled: tuple[int, ...], kernel: tuple[int, ...]) -> Array:
    """MaxPool of ``y`` [N, M, *spatial] with windows ``kernel`` that tile it (strides = kernel, floor),
    a NaN losing as in np.fmax."""
    index = (slice(None), slice(None)) + tuple(slice(0, p * k) for p, k in zip(pooled, kernel))
    tiles = y[index].reshape(y.shape[:2] + tuple(d for p, k in zip(pooled, kernel) for d in (p, k)))
    for i in reversed(range(len(kernel))):
        tiles = np.fmax.reduce(tiles, axis=3 + 2 * i)
    return tiles


# ---------------------------------------------------------------- pools


def _pool_window(node: Node, ctx: BuildContext, dilations: bool) -> Window:
    kernel = attr_ints(node, "kernel_shape", None)
    if kernel is None:
        raise InvalidModelError(f"{node.label()}: required attribute 'kernel_shape' is missing")
    return _window(node, kernel, dilations=dilations, ceil_mode=attr_flag(node, "ceil_mode", 0))


def _check_pool_input(node: Node, x: Array, window: Window) -> None:
    if x.ndim != len(window.kernel) + 2:
        raise fail(node, f"input X of shape {x.shape} must have rank {len(window.kernel) + 2} "
                         f"([N, C] and kernel_shape {list(window.kernel)})")


def _lowest(dtype: np.dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@register("MaxPool")
def max_pool(node: Node, ctx: BuildContext):
    window = _pool_window(node, ctx, dilations=ctx.opset() >= 10)
    storage_order = attr_choice(node, "storage_order", 0, (0, 1))
    with_indices = len(node.outputs) > 1 and bool(node.outputs[1])
    native_module = conv_native.pool_module() if _NATIVE else None
    native_out = conv_native.Reusable() if native_module is not None else None

    def kernel(x, out=None):
        _check_pool_input(node, x, window)
        begins, ends, outs = window.geometry(node, x.shape[2:])
        if 0 in outs:  # a streamed chunk shorter than one window
            y = np.zeros(x.shape[:2] + outs, x.dtype)
            return (y, np.zeros(y.shape, np.int64)) if with_indices else (y,)
        extra = _ceil_extra(x.shape[2:], begins, ends, outs, window)
        if not with_indices and native_out is not None:
            into = _into(out, x.shape[:2] + outs)
            y = conv_native.max_pool(x, window.kernel, window.strides, window.dilations, begins, outs,
                                     native_out if into is None else into, native_module)
            if y is not None:
                return (y,)
        if not with_indices:
            larger = np.fmax if x.dtype.kind == "f" else np.maximum  # fmax: a NaN loses, as in onnxruntime
            return (_pool_by_axis(x, window, begins, ends, extra, outs, _lowest(x.dtype), larger),)
        padded = _padded(x, begins, ends, extra, _lowest(x.dtype))
        views = _tap_views(padded, window, outs)
        y = np.array(next(views))
        index = _input_index(x.shape, storage_order)
        padded_index = _padded(index, begins, ends, extra, -1)
        index_views = _tap_views(padded_index, window, outs)
        arg = np.array(next(index_views))
        for view, where in zip(views, index_views):
            better = view > y
            np.copyto(y, view, where=better)
            np.copyto(arg, where, where=better)
        return (y, arg)

    kernel.writes_into = not with_indices and native_out is not None
    return kernel


def _into(out, shape) -> Array | None:
    """A compiled program's memory for output 0 (``out=``), when it is float32 C order of ``shape``."""
    y = out[0] if out else None
    if y is not None and y.dtype == np.float32 and y.shape == shape and y.flags.c_contiguous:
        return y
    return None


def _pool_by_axis(x: Array, window: Window, begins, ends, extra, outs, fill, combine) -> Array:
    """A max (or sum) over each window, one spatial axis at a time: over a box it is the max (sum)
    along the first axis of the maxima (sums) along the others, and k0 + k1 taps cost less than
    k0 * k1. The first spatial axis goes first: its taps are whole contiguous rows."""
    y = x
    for a in range(len(outs)):
        axis = 2 + a
        k, s, d, o = window.kernel[a], window.strides[a], window.dilations[a], outs[a]
        if k == 1 and s == 1 and not begins[a] and not ends[a] + extra[a]:
            continue
        padded = _pad_axis(y, axis, begins[a], ends[a] + extra[a], fill)
        index = [slice(None)] * y.ndim
        out = None
        for t in range(k):
            index[axis] = slice(t * d, t * d + (o - 1) * s + 1, s)
            view = padded[tuple(index)]
            if out is None:
                out = np.array(view)
            else:
                combine(out, view, out=out)
        y = out
    return y if y is not x else np.array(x)


def _pad_axis(x: Array, axis: int, begin: int, end: int, fill) -> Array:
    if not begin and not end:
        return x
    shape = list(x.shape)
    shape[axis] += begin + end
    out = np.full(shape, fill, dtype=x.dtype)
    index = [slice(None)] * x.ndim
    index[axis] = slice(begin, begin + x.shape[axis])
    out[tuple(index)] = x
    return out


def _input_index(shape: tuple[int, ...], storage_order: int) -> Array:
    """Each input element's flat index as MaxPool's Indices reports it (storage_order 1: spatial
    axes in column-major order)."""
    N, C = shape[:2]
    spatial = shape[2:]
    inner = math.prod(spatial)
    flat = np.arange(inner, dtype=np.int64).reshape(spatial)
    if storage_order:
        flat = np.arange(inner, dtype=np.int64).reshape(spatial[::-1]).transpose()
    base = (np.arange(N * C, dtype=np.int64) * inner).reshape((N, C) + (1,) * len(spatial))
    return base + flat


@register("AveragePool")
def average_pool(node: Node, ctx: BuildContext):
    window = _pool_window(node, ctx, dilations=ctx.opset() >= 19)
    include_pad = attr_flag(node, "count_include_pad", 0)

    def kernel(x):
        _check_pool_input(node, x, window)
        work = _work_dtype(x)
        begins, ends, outs = window.geometry(node, x.shape[2:])
        if 0 in outs:  # a streamed chunk shorter than one window
            return (np.zeros(x.shape[:2] + outs, x.dtype),)
        extra = _ceil_extra(x.shape[2:], begins, ends, outs, window)
        y = _pool_by_axis(x.astype(work, copy=False), window, begins, ends, extra, outs, 0, np.add)
        y /= _window_counts(x.shape[2:], begins, ends, outs, window, include_pad).astype(work)
        return (y.astype(x.dtype, copy=False),)

    return kernel


def _window_counts(spatial, begins, ends, outs, window: Window, include_pad: bool) -> Array:
    """How many taps of each output window the average divides by: those inside the input, or
    (count_include_pad) inside the input and its explicit pads; never ceil_mode's overhang."""
    counts = np.ones((), dtype=np.int64)
    for size, b, e, o, k, s, d in zip(spatial, begins, ends, outs, window.kernel, window.strides,
                                      window.dilations):
        starts = np.arange(o) * s - b  # in input coordinates
        positions = starts[:, None] + np.arange(k) * d
        lo, hi = (-b, size + e) if include_pad else (0, size)
        axis_counts = ((positions >= lo) & (positions < hi)).sum(axis=1)
        counts = np.multiply.outer(counts, axis_counts)
    return np.maximum(counts, 1)


def _register_global(op_type: str, reduce) -> None:
    def factory(node: Node, ctx: BuildContext):
        def kernel(x):
            if x.ndim < 3:
                raise fail(node, f"input X must have rank >= 3 ([N, C, *spatial]), got shape {x.shape}")
            work = _work_dtype(x)
            y = reduce(x.astype(work, copy=False), axis=tuple(range(2, x.ndim)), keepdims=True)
            return (np.asarray(y).astype(x.dtype, copy=False),)

        return kernel

    register(op_type)(factory)


_register_global("GlobalAveragePool", np.mean)
_register_global("GlobalMaxPool", np.max)


# ---------------------------------------------------------------- streaming


@register("TimeHistory", domain=INTERNAL_DOMAIN)
def time_history(node: Node, ctx: BuildContext):
    """A stream's carried input frames in front of a window over time (``conv_streaming``):
    (x [.., T, ..], history [.., frames, ..]) -> (history + x along ``axis``, its last ``frames``).

    With a third input, the phase p (int64 [batch], one value: the pool steps streams of one
    phase together): windows of ``frames`` + 1 frames, ``stride`` apart, start at p, p + stride,
    ... of history + x; only the frames of those starting in x are handed on (none: 0 frames),
    and the phase comes back for the next chunk."""
    axis = attr_int(node, "axis")
    frames = attr_int(node, "frames")
    stride = attr_int(node, "stride", 1)
    phased = len(node.inputs) > 2 and bool(node.inputs[2])

    def kernel(x, history, phase=None):
        if history.ndim != x.ndim or history.shape[axis] != frames or \
                history.shape[:axis] + history.shape[axis + 1:] != x.shape[:axis] + x.shape[axis + 1:]:
            raise fail(node, f"carried history of shape {history.shape} does not fit a chunk of shape {x.shape} "
                             f"({frames} frames on axis {axis})")
        extended = np.concatenate((history, x.astype(history.dtype, copy=False)), axis=axis)
        tail = (slice(None),) * axis + (slice(extended.shape[axis] - frames, None),)
        if not phased:
            return (extended, np.ascontiguousarray(extended[tail]))
        phases = np.asarray(phase).reshape(-1)
        if phases.size < 1 or np.any(phases != phases[0]) or phases[0] < 0:
            raise fail(node, f"carried phases {phases.tolist()} must be one value >= 0 (streams of one phase "
                             "are stepped together)")
        start, length = int(phases[0]), x.shape[axis]
        windows = -(-(length - start) // stride) if length > start else 0  # starts before the chunk's end
        stop = start + (windows - 1) * stride + frames + 1 if windows else start
        used = (slice(None),) * axis + (slice(start, stop),)
        return (extended[used], np.ascontiguousarray(extended[tail]),
                np.full(phases.shape, start + windows * stride - length, np.int64))

    return kernel
