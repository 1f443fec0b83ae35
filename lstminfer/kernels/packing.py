"""Repack ONNX recurrent weights, once at load, into the layout the kernels read.

ONNX stores W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] (Wb then Rb) with the
gates in spec order (``ONNX_GATES``). The kernels want, per direction:

* ``W``/``R``: one fused matrix per side, its rows grouped by *unit block*
  (a slice of hidden units that one core owns) and, inside a block, by gate
  in ``KERNEL_GATES`` order. With one block this is simply gate-major; with
  two, each core's rows of W and R are contiguous, so they stay in its own
  cache across time steps (DeepCPU's private-cache partitioning).
* ``WT``/``RT``: the same matrices transposed (k-major), for the products
  vectorized along the outputs (batch 1..3, and small weights). Their rows
  are ``row_stride(G*H)`` floats apart: a stride that is a multiple of
  512 bytes would put the rows a kernel reads together in the same L1 sets.
* ``bias_x``: the biases added to the input projection, pre-summed (Wb + Rb;
  GRU with linear_before_reset keeps Rbh apart, since r multiplies it).
* ``bias_rh``: that GRU Rbh (zeros otherwise), per unit.
* ``peep``: LSTM peepholes as rows (i, f, o), per unit (zeros without P).

Everything lives in one float32 buffer (each segment 64-byte aligned), so a
kernel call passes a single array, whatever the number of directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..reference import GATES

# Gate order of the ONNX spec, and the order the kernels compute them in.
ONNX_GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
KERNEL_GATES = {"LSTM": "ifco", "GRU": "zrh", "RNN": "i"}
PEEPHOLE_ONNX = "iof"  # order of P's three rows in ONNX
PEEPHOLE_KERNEL = "ifo"  # order of the ``peep`` rows in the packed buffer

ALIGN_FLOATS = 16  # 64 bytes: one cache line / one AVX-512 register


def num_gates(op: str) -> int:
    return GATES[op]


def unit_blocks(hidden_size: int, blocks: int) -> np.ndarray:
    """Boundaries [u0=0, u1, ..., H] of ``blocks`` slices of hidden units.

    Inner boundaries fall on multiples of ALIGN_FLOATS when H allows it.
    """
    blocks = max(1, min(blocks, hidden_size))
    edges = [0]
    for k in range(1, blocks):
        cut = round(hidden_size * k / blocks)
        aligned = (cut // ALIGN_FLOATS) * ALIGN_FLOATS
        edges.append(aligned if edges[-1] < aligned < hidden_size else cut)
    edges.append(hidden_size)
    return np.asarray(edges, dtype=np.int64)


def kernel_row_order(op: str, hidden_size: int, edges: np.ndarray) -> np.ndarray:
    """For each packed row, the ONNX row (of W, R, Wb or Rb) it comes from."""
    H = hidden_size
    onnx_index = {g: i for i, g in enumerate(ONNX_GATES[op])}
    rows = []
    for u0, u1 in zip(edges[:-1], edges[1:]):
        for gate in KERNEL_GATES[op]:
            start = onnx_index[gate] * H
            rows.extend(range(start + u0, start + u1))
    return np.asarray(rows, dtype=np.int64)


@dataclass(frozen=True)
class PackedWeights:
    """The packed buffer and where each direction's segments start in it."""

    op: str
    hidden_size: int
    input_size: int
    num_directions: int
    edges: np.ndarray  # unit block boundaries, int64 [blocks + 1]
    buffer: np.ndarray  # float32 1-D, 64-byte aligned
    offsets: np.ndarray  # int64 [D, NUM_SEGMENTS]: W, R, bias_x, bias_rh, peep, WT, RT

    @property
    def blocks(self) -> int:
        return len(self.edges) - 1

    def segment(self, d: int, which: int, shape: tuple[int, ...]) -> np.ndarray:
        start = int(self.offsets[d, which])
        return self.buffer[start: start + int(np.prod(shape))].reshape(shape)


SEG_W, SEG_R, SEG_BIAS_X, SEG_BIAS_RH, SEG_PEEP, SEG_WT, SEG_RT = range(7)
NUM_SEGMENTS = 7  # what ``pack`` makes (and the Cython kernels read)
SEG_WP, SEG_RP = 7, 8  # W^T / R^T as panels: ``with_panels`` only
PANEL_SEGMENTS = 9  # segments per direction after ``with_panels`` (the Numba drivers' table)
PANEL_WIDTH = 32  # floats per panel row (numba_math.PANEL_WIDTH)


def row_stride(n: int) -> int:
    """Floats between rows of an ``n``-wide matrix: 64-byte aligned, never a multiple of 512 bytes."""
    stride = -(-n // ALIGN_FLOATS) * ALIGN_FLOATS
    return stride + ALIGN_FLOATS if stride % 128 == 0 else stride


def _aligned_zeros(size: int) -> np.ndarray:
    raw = np.zeros(size + ALIGN_FLOATS, dtype=np.float32)
    shift = (-raw.ctypes.data // 4) % ALIGN_FLOATS
    return raw[shift: shift + size]


def concatenate_aligned(pieces: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(pieces)`` into a buffer that starts on a 64-byte boundary.

    np.concatenate's result starts wherever malloc put it; an AVX-512 load of
    unaligned panels splits across two cache lines.
    """
    dtype = pieces[0].dtype
    size = sum(piece.size for piece in pieces)
    per_line = 64 // dtype.itemsize
    raw = np.empty(size + per_line, dtype=dtype)
    shift = (-raw.ctypes.data // dtype.itemsize) % per_line
    out = raw[shift: shift + size]
    np.concatenate(pieces, out=out)
    return out


def pack(op: str, W: np.ndarray, R: np.ndarray, B: np.ndarray | None, P: np.ndarray | None,
         *, linear_before_reset: bool = False, blocks: int = 1) -> PackedWeights:
    """Pack ONNX-layout weights (already shape-checked, float32) for the kernels."""
    D, GH, I = W.shape
    G = num_gates(op)
    H = GH // G
    edges = unit_blocks(H, blocks)
    order = kernel_row_order(op, H, edges)

    GHs = row_stride(GH)
    sizes = (GH * I, GH * H, GH, H, 3 * H, I * GHs, H * GHs)
    padded = [-(-s // ALIGN_FLOATS) * ALIGN_FLOATS for s in sizes]
    offsets = np.zeros((D, len(sizes)), dtype=np.int64)
    position = 0
    for d in range(D):
        for which, size in enumerate(padded):
            offsets[d, which] = position
            position += size
    buffer = _aligned_zeros(max(position, ALIGN_FLOATS))
    packed = PackedWeights(op, H, I, D, edges, buffer, offsets)

    for d in range(D):
        packed.segment(d, SEG_W, (GH, I))[:] = W[d][order]
        packed.segment(d, SEG_R, (GH, H))[:] = R[d][order]
        packed.segment(d, SEG_WT, (I, GHs))[:, :GH] = W[d][order].T
        packed.segment(d, SEG_RT, (H, GHs))[:, :GH] = R[d][order].T
        if B is not None:
            wb, rb = B[d, :GH], B[d, GH:]
            bias_x = wb + rb
            if op == "GRU" and linear_before_reset:  # Rbh sits inside r * (...): keep it apart
                h_rows = slice(2 * H, 3 * H)
                bias_x[h_rows] = wb[h_rows]
                packed.segment(d, SEG_BIAS_RH, (H,))[:] = rb[h_rows]
            packed.segment(d, SEG_BIAS_X, (GH,))[:] = bias_x[order]
        if P is not None:
            onnx_rows = P[d].reshape(3, H)
            peep = packed.segment(d, SEG_PEEP, (3, H))
            for row, gate in enumerate(PEEPHOLE_KERNEL):
                peep[row] = onnx_rows[PEEPHOLE_ONNX.index(gate)]
    buffer.flags.writeable = False
    return packed


# ------------------------------------------------------- float panels --
# The Numba kernels at batch 1 (and the rows a batch's register tiles leave)
# read W^T and R^T as panels: each column range a product covers (per unit
# block: all its G*bs columns; GRU: z,r then h, as its two phases need),
# PANEL_WIDTH columns at a time, each panel K rows of PANEL_WIDTH contiguous
# floats (the last zero-padded), panels one after another. A matrix-vector
# product then reads one sequential stream instead of 128 bytes from each of
# K rows a row stride apart.

def panel_ranges(op: str, edges: np.ndarray) -> list[tuple[int, int]]:
    """The column ranges [c0, c1) of the packed k-major matrices that get their own panels, in order."""
    G = GATES[op]
    ranges = []
    for u0, u1 in zip(edges[:-1], edges[1:]):
        c0, c1 = G * int(u0), G * int(u1)
        if op == "GRU":
            ranges += [(c0, c0 + 2 * (int(u1) - int(u0))), (c0 + 2 * (int(u1) - int(u0)), c1)]
        else:
            ranges.append((c0, c1))
    return ranges


def panel_columns(width: int) -> int:
    """Columns that ``width`` columns take as panels (a multiple of PANEL_WIDTH)."""
    return -(-width // PANEL_WIDTH) * PANEL_WIDTH


def _as_panels(matrix: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([column_panels(matrix[:, c0:c1], PANEL_WIDTH) for c0, c1 in ranges])


def with_panels(packed: PackedWeights) -> PackedWeights:
    """``packed`` plus, per direction, W^T and R^T as panels (segments SEG_WP, SEG_RP).

    Costs one more copy of W and R (each range padded to PANEL_WIDTH
    columns): the buffer grows by about half (W, R, W^T, R^T -> three copies).
    """
    op, D, H, I = packed.op, packed.num_directions, packed.hidden_size, packed.input_size
    GH = GATES[op] * H
    ranges = panel_ranges(op, packed.edges)
    columns = sum(panel_columns(c1 - c0) for c0, c1 in ranges)
    sizes = (I * columns, H * columns)
    offsets = np.zeros((D, PANEL_SEGMENTS), dtype=np.int64)
    offsets[:, :NUM_SEGMENTS] = packed.offsets
    position = packed.buffer.size
    for d in range(D):
        for which, size in zip((SEG_WP, SEG_RP), sizes):
            offsets[d, which] = position
            position += -(-size // ALIGN_FLOATS) * ALIGN_FLOATS
    buffer = _aligned_zeros(position)
    buffer[:packed.buffer.size] = packed.buffer
    GHs = row_stride(GH)
    for d in range(D):
        for which, source, K in ((SEG_WP, SEG_WT, I), (SEG_RP, SEG_RT, H)):
            matrix = packed.segment(d, source, (K, GHs))[:, :GH]
            buffer[offsets[d, which]: offsets[d, which] + K * columns] = _as_panels(matrix, ranges)
    buffer.flags.writeable = False
    return PackedWeights(op, H, I, D, packed.edges, buffer, offsets)


# ------------------------------------------------- low-precision panels --
# The Cython kernels' products read weights as panels: a column range of the
# k-major matrix, ``width`` columns at a time, each panel one sequential stream
# (see native/_rnn_core.pxi). These make the int8-VNNI and bf16 variants.

def vnni_panels(matrix: np.ndarray, width: int = 64) -> np.ndarray:
    """int8 k-major ``matrix`` [K, N] as VNNI panels (native/li_vnni.h), int8 bytes.

    Per panel of ``width`` columns: for each group of 4 k (K padded to a
    multiple of 4 with zero rows), the columns' 4 bytes side by side (one
    vpdpbusd operand per 16 columns), then ``width`` int32 corrections
    128 * sum_k matrix[k, j] (undoing the +128 that makes activations unsigned).
    """
    K, N = matrix.shape
    Kp = -(-K // 4) * 4
    columns = -(-N // width) * width
    padded = np.zeros((Kp, columns), dtype=np.int8)
    padded[:K, :N] = matrix
    count = columns // width
    groups = padded.reshape(Kp // 4, 4, count, width).transpose(2, 0, 3, 1).reshape(count, Kp * width)
    corrections = (128 * padded.astype(np.int32).sum(axis=0)).astype("<i4").reshape(count, width)
    return np.concatenate([groups, corrections.view(np.int8)], axis=1).ravel()


def bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 values already rounded to bf16 (``quantization.round_to_bf16``) -> their uint16 bits."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    if np.any(bits & np.uint32(0xFFFF)):
        raise ValueError("bf16_bits: the weights are not rounded to bf16")
    return (bits >> np.uint32(16)).astype(np.uint16)


def column_panels(matrix: np.ndarray, width: int) -> np.ndarray:
    """k-major ``matrix`` [K, N] (any dtype) as panels of ``width`` columns, the last zero-padded."""
    K, N = matrix.shape
    columns = -(-N // width) * width
    padded = np.zeros((K, columns), dtype=matrix.dtype)
    padded[:, :N] = matrix
    return padded.reshape(K, columns // width, width).transpose(1, 0, 2).ravel()


def _column_ranges(op: str, W: np.ndarray, R: np.ndarray, sW: np.ndarray | None, sR: np.ndarray | None):
    """Per direction, the three k-major column ranges the products read (as in ``pack_panels``),
    each with its columns' scales (None without scales): yields (d, which, matrix [K, N], scales)."""
    D, GH, _ = W.shape
    H = R.shape[2]
    split = 2 * H if op == "GRU" else GH
    order = kernel_row_order(op, H, unit_blocks(H, 1))
    for d in range(D):
        WT, RT = W[d][order].T, R[d][order].T
        sw = sW[d][order] if sW is not None else None
        sr = sR[d][order] if sR is not None else None
        yield d, 0, WT, sw
        yield d, 1, RT[:, :split], (sr[:split] if sr is not None else None)
        yield d, 2, RT[:, split:], (sr[split:] if sr is not None else None)


def _pack_ranges(op, W, R, sW, sR, make_panels, width):
    """Byte panels of every column range (``make_panels(matrix)`` -> 1-D array), 64-byte aligned,
    and their scales padded to whole panels. Returns (panels int8, offsets [D, 3] in bytes,
    scales float32, offsets [D, 3])."""
    D = W.shape[0]
    pieces, scale_pieces = [], []
    offsets = np.zeros((D, 3), dtype=np.int64)
    scale_offsets = np.zeros((D, 3), dtype=np.int64)
    position = scale_position = 0
    for d, which, matrix, scale in _column_ranges(op, W, R, sW, sR):
        panels = np.ascontiguousarray(make_panels(matrix)).view(np.int8)
        panels = np.concatenate([panels, np.zeros(-panels.size % 64, dtype=np.int8)])
        columns = -(-matrix.shape[1] // width) * width
        scales = np.zeros(-(-columns // ALIGN_FLOATS) * ALIGN_FLOATS, dtype=np.float32)
        if scale is not None:
            scales[:matrix.shape[1]] = scale
        offsets[d, which], scale_offsets[d, which] = position, scale_position
        position += panels.size
        scale_position += scales.size
        pieces.append(panels)
        scale_pieces.append(scales)
    buffer = concatenate_aligned(pieces + [np.zeros(64, dtype=np.int8)])
    scale_buffer = concatenate_aligned(scale_pieces + [np.zeros(ALIGN_FLOATS, dtype=np.float32)])
    for array in (buffer, offsets, scale_buffer, scale_offsets):
        array.flags.writeable = False
    return buffer, offsets, scale_buffer, scale_offsets


def pack_int8_panels(op: str, qW: np.ndarray, sW: np.ndarray, qR: np.ndarray, sR: np.ndarray,
                     panel_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``pack_panels`` for int8 weights: the same three column ranges per direction, int8
    panels, and each range's per-column scales (zero-padded like its columns).

    Returns (panels int8, offsets [D, 3] into them, scales float32, offsets [D, 3] into those).
    """
    return _pack_ranges(op, qW, qR, sW, sR, lambda m: column_panels(m, panel_width), panel_width)


def pack_vnni_panels(op: str, qW: np.ndarray, sW: np.ndarray, qR: np.ndarray, sR: np.ndarray,
                     panel_width: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``pack_int8_panels`` in the VNNI layout (``packing.vnni_panels``: 4 k per column, column sums)."""
    return _pack_ranges(op, qW, qR, sW, sR, lambda m: vnni_panels(m, panel_width), panel_width)


def pack_bf16_panels(op: str, W: np.ndarray, R: np.ndarray,
                     panel_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``pack_panels`` of bf16-rounded float32 W/R as bf16 bit patterns (bytes, offsets in bytes);
    the scales returned are zeros (the kernel reads none)."""
    return _pack_ranges(op, W, R, None, None, lambda m: column_panels(bf16_bits(m), panel_width), panel_width)
