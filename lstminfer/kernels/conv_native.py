"""Convolution and max pooling in C (native/li_conv.h, in each ISA build of the Cython kernels).

``NativeConv(W, bias, groups, dilations, strides, relu)`` packs W once (at load) into the
micro-kernel's row blocks; ``run(x, begins, ends, outs)`` computes Y for one input: the column
offsets of each input geometry are computed once and kept; ``run_max_pool(..., pool)`` is that conv
with a MaxPool of tiling windows fused (conv_fusion). ``max_pool(...)`` is MaxPool over
1-D/2-D float32 planes. ``available()`` says whether the extension is built; lstminfer.ops.conv
keeps its NumPy path for everything else (other dtypes, 3+ spatial axes, no build).
"""
from __future__ import annotations

import math
import sys
import threading
from typing import Sequence

import numpy as np

from . import cython_backend

_F32 = np.dtype(np.float32)
_POOL_ROWS_FLOATS = 1 << 14  # a fused pool wider than 2: its conv rows (64 KiB) computed, then pooled in cache
_IDX = np.dtype(np.intp)


def _module():
    if cython_backend._IMPORT_ERROR:
        return None
    module = cython_backend._module(cython_backend.isa())
    return module if hasattr(module, "conv") else None


def available() -> bool:
    return _module() is not None


def pool_module():
    """The extension module max_pool calls (None without the build): looked up once per node."""
    return _module()


class Reusable:
    """An output buffer handed out again once nobody holds it any more (its reference count says so):
    a large fresh array costs the kernel's page faults and zeroing on every call."""

    def __init__(self):
        self._array: np.ndarray | None = None

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        array = self._array
        # 3 references: self._array, ``array`` and getrefcount's argument; any view or holder adds one
        if array is None or array.shape != shape or sys.getrefcount(array) != 3:
            array = self._array = np.empty(shape, dtype=_F32)
        return array


def _three(values: Sequence[int], fill: int) -> tuple[int, ...]:
    """Spatial values as 3 axes (leading ``fill`` for 1-D and 2-D)."""
    return (fill,) * (3 - len(values)) + tuple(values)


class NativeConv:
    """One Conv node's float32 weights packed for li_conv, and its per-geometry offsets."""

    def __init__(self, W: np.ndarray, bias: np.ndarray | None, groups: int, dilations: Sequence[int],
                 strides: Sequence[int], relu: bool):
        self.module = _module()
        mr, self.nr, kc = self.module.CONV_TILE
        M = W.shape[0]
        self.kernel = tuple(W.shape[2:])
        self.G, self.Mg, self.Cg = groups, M // groups, W.shape[1]
        self.K = self.Cg * math.prod(self.kernel)
        blocks = -(-self.Mg // mr)
        rows = np.zeros((groups, blocks * mr, self.K), dtype=_F32)  # zero rows pad the last block
        rows[:, :self.Mg] = W.reshape(groups, self.Mg, self.K)
        self.wpack = np.ascontiguousarray(rows.reshape(groups, blocks, mr, self.K).transpose(0, 1, 3, 2)).reshape(-1)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=_F32).reshape(-1)
        self.dilations, self.strides, self.relu = tuple(dilations), tuple(strides), relu
        self.panel_floats, self.part_floats = min(self.K, kc) * self.nr, blocks * mr * self.nr
        self._geometry: dict = {}
        self._out = Reusable()

    def _offsets(self, spatial: tuple[int, ...], begins: tuple[int, ...], ends: tuple[int, ...],
                 outs: tuple[int, ...]):
        key = (spatial, begins, ends)
        found = self._geometry.get(key)
        if found is None:
            padded = tuple(s + b + e for s, b, e in zip(spatial, begins, ends))
            steps = np.cumprod((1,) + padded[::-1])[:-1][::-1]  # element strides of a padded channel
            pad_size = math.prod(padded)
            taps = np.zeros(1, dtype=_IDX)
            for k, d, st in zip(self.kernel, self.dilations, steps):
                taps = (taps[:, None] + np.arange(k) * d * st).reshape(-1)
            koff = (np.arange(self.Cg)[:, None] * pad_size + taps).reshape(-1).astype(_IDX)
            pos = np.zeros(1, dtype=_IDX)
            for o, s, st in zip(outs, self.strides, steps):
                pos = (pos[:, None] + np.arange(o) * s * st).reshape(-1)
            found = (np.array(_three(spatial, 1), dtype=_IDX), np.array(_three(padded, 1), dtype=_IDX),
                     np.array(_three(begins, 0), dtype=_IDX), koff, pos.astype(_IDX), self.G * self.Cg * pad_size)
            if len(self._geometry) > 16:  # streams of varying lengths: keep the recent ones only
                self._geometry.clear()
            self._geometry[key] = found
        return found

    def run(self, x: np.ndarray, begins, ends, outs, out: np.ndarray | None = None) -> np.ndarray:
        """Y [N, M, *outs] of a float32 ``x`` [N, C, *spatial] (into ``out`` when given)."""
        x = np.ascontiguousarray(x, dtype=_F32)
        ins, padded, begin, koff, pos, scratch_floats = self._offsets(x.shape[2:], tuple(begins), tuple(ends),
                                                                      tuple(outs))
        N = x.shape[0]
        scratch, panel, part, _ = _buffers(scratch_floats, self.panel_floats, self.part_floats, 0)
        y = self._out.get((N, self.G * self.Mg) + tuple(outs)) if out is None else out
        self.module.conv(x.reshape(-1), N, self.G, self.Cg, ins, padded, begin, self.wpack, self.Mg, koff, pos,
                         self.bias, self.relu, y.reshape(-1), scratch, panel, part)
        return y

    def run_max_pool(self, x: np.ndarray, begins, ends, outs, pool: tuple[int, ...],
                     out: np.ndarray | None = None) -> np.ndarray:
        """MaxPool(``pool`` windows, strides = kernel, no pads)(Y) [N, M, *outs // pool] of a float32
        ``x`` [N, C, *spatial] (1-D or 2-D; into ``out`` when given): Y is never written whole."""
        x = np.ascontiguousarray(x, dtype=_F32)
        ins, padded, begin, koff, pos, scratch_floats = self._offsets(x.shape[2:], tuple(begins), tuple(ends),
                                                                      tuple(outs))
        (CH, CW), (ph, pw) = (1,) * (2 - len(outs)) + tuple(outs), (1,) * (2 - len(pool)) + tuple(pool)
        OW = CW // pw
        segp = max(1, min(OW, _POOL_ROWS_FLOATS // (self.Mg * ph * pw)))
        if segp < OW and segp * pw > self.nr and self.nr % pw == 0:
            segp = segp * pw // self.nr * self.nr // pw  # whole panels of conv columns per segment
        rows_floats = self.Mg * ph * segp * pw  # (unused by windows 1-2 wide: pooled in the tiles)
        N = x.shape[0]
        scratch, panel, part, rows = _buffers(scratch_floats, self.panel_floats, self.part_floats, rows_floats)
        shape = (N, self.G * self.Mg) + tuple(o // k for o, k in zip(outs, pool))
        y = self._out.get(shape) if out is None else out
        self.module.conv_max_pool(x.reshape(-1), N, self.G, self.Cg, ins, padded, begin, self.wpack, self.Mg, koff,
                                  pos, CH, CW, ph, pw, segp, self.bias, self.relu, y.reshape(-1), scratch, panel,
                                  part, rows)
        return y


_THREAD = threading.local()  # each thread's scratch (threads may run one model at once), kept between calls


def _buffers(*sizes: int) -> tuple[np.ndarray, ...]:
    """Views of this thread's scratch memory of ``sizes`` floats each: kept between calls, so that a
    call neither allocates nor faults in fresh pages; grown when too small."""
    views = getattr(_THREAD, "views", None)
    if views is None:
        views = _THREAD.views = {}
    found = views.get(sizes)
    if found is None:
        total = sum(sizes)
        memory = getattr(_THREAD, "memory", None)
        if memory is None or memory.size < total:
            memory = _THREAD.memory = np.empty(total, dtype=_F32)
            views.clear()
        at, found = 0, []
        for n in sizes:
            found.append(memory[at:at + n])
            at += n
        found = tuple(found)
        if len(views) > 32:
            views.clear()
        views[sizes] = found
    return found


def max_pool(x: np.ndarray, kernel, strides, dilations, begins, outs, out=None, module=None) -> np.ndarray | None:
    """MaxPool of float32 ``x`` [N, C, *spatial] (1 or 2 spatial axes), or None without the build;
    into ``out``: an array of the output's shape, or a ``Reusable``; ``module``: ``pool_module()``'s,
    looked up once at load."""
    module = module if module is not None else _module()
    if module is None or x.dtype != _F32 or x.ndim not in (3, 4):
        return None
    x = np.ascontiguousarray(x)
    two = lambda v, fill: (fill,) * (4 - x.ndim) + tuple(v)  # noqa: E731
    H, W = two(x.shape[2:], 1)
    OH, OW = two(outs, 1)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = two(kernel, 1), two(strides, 1), two(dilations, 1), two(begins, 0)
    shape = x.shape[:2] + tuple(outs)
    y = out if isinstance(out, np.ndarray) else np.empty(shape, dtype=_F32) if out is None else out.get(shape)
    row = np.empty((OW - 1) * sw + (kw - 1) * dw + 1, dtype=_F32)
    module.max_pool2d(x.reshape(-1), x.shape[0] * x.shape[1], H, W, y.reshape(-1), OH, OW, kh, kw, sh, sw, dh, dw,
                      ph, pw, row)
    return y
