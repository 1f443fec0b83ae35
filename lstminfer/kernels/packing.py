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
  512 bytes puts the rows a kernel reads together in the same L1 sets
  (measured: 50 -> 70 GFLOP/s at H=256 once padded).
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

# Gate order of the ONNX spec, and the order the kernels compute them in.
ONNX_GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
KERNEL_GATES = {"LSTM": "ifco", "GRU": "zrh", "RNN": "i"}
PEEPHOLE_ONNX = "iof"  # order of P's three rows in ONNX
PEEPHOLE_KERNEL = "ifo"  # order of the ``peep`` rows in the packed buffer

ALIGN_FLOATS = 16  # 64 bytes: one cache line / one AVX-512 register


def num_gates(op: str) -> int:
    return len(ONNX_GATES[op])


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
NUM_SEGMENTS = 7


def row_stride(n: int) -> int:
    """Floats between rows of an ``n``-wide matrix: 64-byte aligned, never a multiple of 512 bytes."""
    stride = -(-n // ALIGN_FLOATS) * ALIGN_FLOATS
    return stride + ALIGN_FLOATS if stride % 128 == 0 else stride


def _aligned_zeros(size: int) -> np.ndarray:
    raw = np.zeros(size + ALIGN_FLOATS, dtype=np.float32)
    shift = (-raw.ctypes.data // 4) % ALIGN_FLOATS
    return raw[shift: shift + size]


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
