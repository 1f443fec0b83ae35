"""Vectorizable float32 building blocks for the recurrent kernels.

* ``fast_exp``/``fast_tanh``/``fast_sigmoid``: polynomials, one division and
  an exponent built from bits, so LLVM vectorizes loops that use them (a
  libm ``tanhf``/``expf`` call per element would not). Within a few float32
  ulps of the exact functions (tests: tanh/sigmoid abs error < 1.5e-7): long
  sequences accumulate these errors in the cell state, which a cruder
  approximation lets past the 1e-5 parity.
* ``activate``/``activate_inplace``: every activation of the ONNX RNN ops,
  selected by an integer code (``ACTIVATION_CODES``).
* ``product``: ``out[m, c0+n] = A[m] . Bm[n0+n]``: a register-tiled GEMM
  (``gemm_tiles``, its micro-kernel written in LLVM IR) for 4+ rows, a
  register-tiled matrix-vector product (``matvec_panels``, weights in L2) or a
  vectorized one (``matvec_kn``, larger weights) for the rest; cache-
  blocked, single-threaded: no BLAS thread pool spinning next to the kernel,
  no call overhead at batch 1, and no SciPy dependency.

All arithmetic stays float32: constants are ``np.float32`` (a Python float
would promote the expression to float64).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .numba_config import jit

F32 = np.float32
ZERO = F32(0.0)
ONE = F32(1.0)
HALF = F32(0.5)

# exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial
# for e^r (max rel. error 4.6e-9 in float64; coefficients fitted for this
# project), and 2^n built from its exponent bits. Inputs are clamped to
# [-87, 88] so 2^n stays a normal float.
_EXP_LO = F32(-87.0)
_EXP_HI = F32(88.0)
_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI exact in few bits
_LN2_LO = F32(-2.1219444005469057e-04)
_E0 = F32(1.0)
_E1 = F32(1.0000000281441013)
_E2 = F32(0.500000008440243)
_E3 = F32(0.16666455876315142)
_E4 = F32(0.041666280339128475)
_E5 = F32(0.00837191219414511)
_E6 = F32(0.001394460077755586)
# tanh(x) = x * T(x^2) for |x| < 0.625 (max rel. error 4.4e-10 in float64),
# else sign(x) * (1 - 2 / (e^(2|x|) + 1)), where there is no cancellation.
_TANH_SMALL = F32(0.625)
_T0 = F32(0.999999999899251)
_T1 = F32(-0.33333330596960725)
_T2 = F32(0.13333212457152305)
_T3 = F32(-0.053948235080212965)
_T4 = F32(0.021710702834346958)
_T5 = F32(-0.008205207588960822)
_T6 = F32(0.002170434489101387)
TWO = F32(2.0)
_EXPONENT_BIAS = np.int32(127)
_MANTISSA_BITS = np.int32(23)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@jit
def fast_exp(x):
    x = min(max(x, _EXP_LO), _EXP_HI)
    n = np.floor(x * _LOG2E + HALF)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    # Estrin's scheme: half the dependent multiply-adds of Horner's. At batch 1
    # the gate pass is latency-bound (one chain per lane, few lanes), not
    # throughput-bound.
    r2 = r * r
    p = (_E1 * r + _E0) + r2 * (_E3 * r + _E2) + (r2 * r2) * ((_E5 * r + _E4) + r2 * _E6)
    scale = _float32_from_bits(np.int32((np.int32(n) + _EXPONENT_BIAS) << _MANTISSA_BITS))
    return p * scale


@jit
def fast_tanh(x):
    ax = abs(x)
    z = x * x
    z2 = z * z
    small = x * ((_T1 * z + _T0) + z2 * (_T3 * z + _T2) + (z2 * z2) * ((_T5 * z + _T4) + z2 * _T6))
    big = ONE - TWO / (fast_exp(TWO * ax) + ONE)
    signed_big = big if x >= ZERO else -big
    return small if ax < _TANH_SMALL else signed_big


@jit
def fast_sigmoid(x):
    return ONE / (ONE + fast_exp(-x))


# Activation codes: the kernels branch on these outside their inner loops.
RELU, TANH, SIGMOID, AFFINE, LEAKY_RELU, THRESHOLDED_RELU = 0, 1, 2, 3, 4, 5
SCALED_TANH, HARD_SIGMOID, ELU, SOFTSIGN, SOFTPLUS = 6, 7, 8, 9, 10
ACTIVATION_CODES = {
    "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID, "affine": AFFINE, "leakyrelu": LEAKY_RELU,
    "thresholdedrelu": THRESHOLDED_RELU, "scaledtanh": SCALED_TANH, "hardsigmoid": HARD_SIGMOID,
    "elu": ELU, "softsign": SOFTSIGN, "softplus": SOFTPLUS,
}


@jit
def activate(x, code, alpha, beta):
    """One activation applied to the float32 scalar ``x``."""
    if code == SIGMOID:
        return fast_sigmoid(x)
    if code == TANH:
        return fast_tanh(x)
    if code == RELU:
        return max(x, ZERO)
    if code == AFFINE:
        return alpha * x + beta
    if code == LEAKY_RELU:
        return x if x >= ZERO else alpha * x
    if code == THRESHOLDED_RELU:
        return x if x > alpha else ZERO
    if code == SCALED_TANH:
        return alpha * fast_tanh(beta * x)
    if code == HARD_SIGMOID:
        return min(max(alpha * x + beta, ZERO), ONE)
    if code == ELU:
        return x if x >= ZERO else alpha * F32(math.expm1(min(x, ZERO)))
    if code == SOFTSIGN:
        return x / (ONE + abs(x))
    # SOFTPLUS: log(1 + e^x) without overflow
    return max(x, ZERO) + F32(math.log1p(math.exp(-abs(x))))


@jit
def activate_inplace(v, code, alpha, beta):
    """``v[:] = act(v)`` for a 1-D contiguous row; the branch sits outside the loop."""
    n = v.shape[0]
    if code == SIGMOID:
        for j in range(n):
            v[j] = fast_sigmoid(v[j])
    elif code == TANH:
        for j in range(n):
            v[j] = fast_tanh(v[j])
    elif code == RELU:
        for j in range(n):
            v[j] = max(v[j], ZERO)
    elif code == HARD_SIGMOID:
        for j in range(n):
            v[j] = min(max(alpha * v[j] + beta, ZERO), ONE)
    else:  # the rest are rare: one generic loop
        for j in range(n):
            v[j] = activate(v[j], code, alpha, beta)


# Cache blocking of matmul_nt: MB rows of A stay in L2 while NB rows of Bm
# (weights) stay in L1; a 4x4 register tile reads 8 values per 16 FMAs.
_MB = 64
_NB = 16


@jit
def _dot(A, m, Bm, n):
    s = ZERO
    for k in range(A.shape[1]):
        s += A[m, k] * Bm[n, k]
    return s


@jit
def _tile_4x4(A, m, Bm, n, out, c):
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = ZERO
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = ZERO
    for k in range(A.shape[1]):
        r0 = Bm[n, k]
        r1 = Bm[n + 1, k]
        r2 = Bm[n + 2, k]
        r3 = Bm[n + 3, k]
        a = A[m, k]
        s00 += a * r0
        s01 += a * r1
        s02 += a * r2
        s03 += a * r3
        a = A[m + 1, k]
        s10 += a * r0
        s11 += a * r1
        s12 += a * r2
        s13 += a * r3
        a = A[m + 2, k]
        s20 += a * r0
        s21 += a * r1
        s22 += a * r2
        s23 += a * r3
        a = A[m + 3, k]
        s30 += a * r0
        s31 += a * r1
        s32 += a * r2
        s33 += a * r3
    out[m, c] = s00
    out[m, c + 1] = s01
    out[m, c + 2] = s02
    out[m, c + 3] = s03
    out[m + 1, c] = s10
    out[m + 1, c + 1] = s11
    out[m + 1, c + 2] = s12
    out[m + 1, c + 3] = s13
    out[m + 2, c] = s20
    out[m + 2, c + 1] = s21
    out[m + 2, c + 2] = s22
    out[m + 2, c + 3] = s23
    out[m + 3, c] = s30
    out[m + 3, c + 1] = s31
    out[m + 3, c + 2] = s32
    out[m + 3, c + 3] = s33


@jit
def matmul_nt(A, Bm, n0, n1, out, c0):
    """``out[m, c0 + n - n0] = sum_k A[m, k] * Bm[n, k]`` for every row m of A and n in [n0, n1)."""
    M = A.shape[0]
    for m0 in range(0, M, _MB):
        m1 = min(m0 + _MB, M)
        for nb in range(n0, n1, _NB):
            nb1 = min(nb + _NB, n1)
            m = m0
            while m + 4 <= m1:
                n = nb
                while n + 4 <= nb1:
                    _tile_4x4(A, m, Bm, n, out, c0 + n - n0)
                    n += 4
                for nn in range(n, nb1):
                    for mm in range(m, m + 4):
                        out[mm, c0 + nn - n0] = _dot(A, mm, Bm, nn)
                m += 4
            for mm in range(m, m1):  # callers send multiples of 4 rows (see ``product``)
                for nn in range(nb, nb1):
                    out[mm, c0 + nn - n0] = _dot(A, mm, Bm, nn)


@jit
def add_bias_rows(out, bias, c0, c1):
    """``out[m, c] += bias[c]`` for c in [c0, c1)."""
    b = bias[c0:c1]
    for m in range(out.shape[0]):
        row = out[m, c0:c1]
        for c in range(c1 - c0):
            row[c] += b[c]


@jit
def matvec_kn(h, RT, n0, n1, out, backward=False):
    """``out[n - n0] = sum_k h[k] * RT[k, n]`` for n in [n0, n1): one row, k-major weights.

    Vectorized along n, so there is no horizontal sum to pay at small K
    (batch 1); eight rows of RT per pass keep loads and stores of ``out`` low.
    ``backward`` walks the rows of RT from the end: alternated step by step,
    the rows read last are read first again while they are still in cache
    (weights a bit larger than L2 otherwise miss on every row under LRU-like
    replacement).
    """
    K = h.shape[0]
    width = n1 - n0
    o = out[:width]
    for j in range(width):
        o[j] = ZERO
    chunks = K // 8
    for chunk in range(chunks):
        k = 8 * (chunks - 1 - chunk if backward else chunk)
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        h4, h5, h6, h7 = h[k + 4], h[k + 5], h[k + 6], h[k + 7]
        w0, w1, w2, w3 = RT[k, n0:n1], RT[k + 1, n0:n1], RT[k + 2, n0:n1], RT[k + 3, n0:n1]
        w4, w5, w6, w7 = RT[k + 4, n0:n1], RT[k + 5, n0:n1], RT[k + 6, n0:n1], RT[k + 7, n0:n1]
        for j in range(width):
            o[j] += ((h0 * w0[j] + h1 * w1[j]) + (h2 * w2[j] + h3 * w3[j])) + \
                    ((h4 * w4[j] + h5 * w5[j]) + (h6 * w6[j] + h7 * w7[j]))
    k = 8 * chunks
    while k < K:
        hk = h[k]
        w = RT[k, n0:n1]
        for j in range(width):
            o[j] += hk * w[j]
        k += 1


@jit
def _axpy_4rows(A, m, BmT, n0, n1, out, c0):
    """Rows m..m+3 of ``out[:, c0:] = A . BmT[:, n0:n1]``, vectorized along n (k-major weights).

    No horizontal sums, so it wins at small K; the column offsets are
    unsigned so that Numba emits no negative-index fix-up and LLVM vectorizes.
    """
    K = A.shape[1]
    width = np.uint64(n1 - n0)
    n0u = np.uint64(n0)
    c0u = np.uint64(c0)
    for i in range(4):
        for j in range(width):
            out[m + i, c0u + j] = ZERO
    k = 0
    while k + 4 <= K:
        a0, a1, a2, a3 = A[m, k], A[m, k + 1], A[m, k + 2], A[m, k + 3]
        b0, b1, b2, b3 = A[m + 1, k], A[m + 1, k + 1], A[m + 1, k + 2], A[m + 1, k + 3]
        c0_, c1, c2, c3 = A[m + 2, k], A[m + 2, k + 1], A[m + 2, k + 2], A[m + 2, k + 3]
        d0, d1, d2, d3 = A[m + 3, k], A[m + 3, k + 1], A[m + 3, k + 2], A[m + 3, k + 3]
        for j in range(width):
            n = n0u + j
            w0, w1, w2, w3 = BmT[k, n], BmT[k + 1, n], BmT[k + 2, n], BmT[k + 3, n]
            o = c0u + j
            out[m, o] += (a0 * w0 + a1 * w1) + (a2 * w2 + a3 * w3)
            out[m + 1, o] += (b0 * w0 + b1 * w1) + (b2 * w2 + b3 * w3)
            out[m + 2, o] += (c0_ * w0 + c1 * w1) + (c2 * w2 + c3 * w3)
            out[m + 3, o] += (d0 * w0 + d1 * w1) + (d2 * w2 + d3 * w3)
        k += 4
    while k < K:
        a0, b0, c0_, d0 = A[m, k], A[m + 1, k], A[m + 2, k], A[m + 3, k]
        for j in range(width):
            w0 = BmT[k, n0u + j]
            o = c0u + j
            out[m, o] += a0 * w0
            out[m + 1, o] += b0 * w0
            out[m + 2, o] += c0_ * w0
            out[m + 3, o] += d0 * w0
        k += 1


# ------------------------------------------------- register-tiled GEMM --
# The products at 4+ rows (input projection, batched recurrent step) run on a
# micro-kernel written in LLVM IR: an MR x (NV * VW) tile of ``out`` stays in
# vector registers for a whole K block while each step broadcasts MR values
# of A and loads NV vectors of the k-major weights (LLVM's vectorizer, given
# the same loop in Python, keeps the tile in memory: a load and a store per
# FMA). With AVX-512 (32 registers) an 8 x 32 tile of 512-bit vectors: half
# the instructions of 256-bit ones and twice the rows per weight load; a
# 4-row tile takes the rows left over. With AVX2 (16 registers) 4 x 16 tiles.
_HOST_FEATURES = llvm_binding.get_host_cpu_features()
_AVX512 = bool(_HOST_FEATURES.get("avx512f", False))
_VW = 16 if _AVX512 else 8  # floats per vector
_NV = 2
_NR = _NV * _VW  # columns per tile
_MR = 4  # rows per narrow tile (and the unit of rows the tiles take)
_MR_WIDE = 8 if _AVX512 else 4
_KC = 512  # K block: an NR-wide panel of weights (<= 64 KiB) stays in L2 while the row tiles reuse it
_A_BLOCK_FLOATS = 32768  # M block: rows of A (MC x K, 128 KiB) that stay in L2 across the panels


def _make_tile_kernel(mr, nv=_NV, prefetch_rows=False):
    """An intrinsic ``C[mr, nv*VW] (+)= A[mr, K] . Bt[K, nv*VW]`` at addresses a, b, c (row strides in floats).

    With ``prefetch_rows``, each row of Bt read also prefetches the ``nv*VW``
    floats ``prefetch`` floats along it (the next panel's row, see ``gemm_tiles``).
    """

    @intrinsic
    def tile_kernel(typingctx, a, lda, b, ldb, c, ldc, K, accumulate, prefetch):
        sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp,
                         types.intp, types.boolean, types.intp)

        def codegen(context, builder, signature, args):
            return _tile_codegen(builder, args, mr, nv, prefetch_rows, context)

        return sig, codegen

    return tile_kernel


class _VectorIR:
    """What the micro-kernels share: float32 vectors of VW lanes, their pointers, FMA and broadcast."""

    def __init__(self, builder):
        self.builder = builder
        self.i64 = ir.IntType(64)
        self.i32 = ir.IntType(32)
        self.vec = ir.VectorType(ir.FloatType(), _VW)
        self.fptr = ir.FloatType().as_pointer()
        self.vptr = self.vec.as_pointer()
        self.zero = ir.Constant(self.vec, [0.0] * _VW)
        self._undef = ir.Constant(self.vec, ir.Undefined)
        self._splat = ir.Constant(ir.VectorType(self.i32, _VW), [0] * _VW)
        self._fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vec, [self.vec] * 3),
                                                   f"llvm.fma.v{_VW}f32")

    def pointer(self, address):
        return self.builder.inttoptr(address, self.fptr)

    def const(self, value):
        return ir.Constant(self.i64, value)

    def vector_at(self, base, offset):
        """The address ``base + offset`` floats, as a vector pointer."""
        return self.builder.bitcast(self.builder.gep(base, [offset]), self.vptr)

    def broadcast_load(self, base, offset):
        scalar = self.builder.load(self.builder.gep(base, [offset]), align=4)
        inserted = self.builder.insert_element(self._undef, scalar, ir.Constant(self.i32, 0))
        return self.builder.shuffle_vector(inserted, self._undef, self._splat)

    def fma(self, a, b, c):
        return self.builder.call(self._fma, [a, b, c])


def _tile_codegen(builder, args, mr, nv, prefetch_rows, context):
    a_addr, lda_, b_addr, ldb_, c_addr, ldc_, k_count, acc_flag, pf_offset = args
    v_ = _VectorIR(builder)
    i64, i32, vec, fptr = v_.i64, v_.i32, v_.vec, v_.fptr
    a0, b0, c0 = v_.pointer(a_addr), v_.pointer(b_addr), v_.pointer(c_addr)
    zero = v_.zero

    def vload(base, offset):
        return builder.load(v_.vector_at(base, offset), align=4)

    c_rows = [builder.gep(c0, [builder.mul(ir.Constant(i64, i), ldc_)]) for i in range(mr)]
    a_rows = [builder.gep(a0, [builder.mul(ir.Constant(i64, i), lda_)]) for i in range(mr)]
    init = []
    for i in range(mr):
        for v in range(nv):
            loaded = vload(c_rows[i], ir.Constant(i64, v * _VW))
            init.append(builder.select(acc_flag, loaded, zero))
    entry = builder.block
    loop = builder.append_basic_block("tile_loop")
    done = builder.append_basic_block("tile_done")
    builder.cbranch(builder.icmp_signed(">", k_count, ir.Constant(i64, 0)), loop, done)

    builder.position_at_end(loop)
    k = builder.phi(i64)
    b_row = builder.phi(fptr)
    accs = [builder.phi(vec) for _ in init]
    k.add_incoming(ir.Constant(i64, 0), entry)
    b_row.add_incoming(b0, entry)
    for acc, value in zip(accs, init):
        acc.add_incoming(value, entry)
    weights = [vload(b_row, ir.Constant(i64, v * _VW)) for v in range(nv)]
    if prefetch_rows:
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]),
            "llvm.prefetch.p0i8")
        pf_row = builder.gep(b_row, [pf_offset])
        for line in range(max(nv * _VW // 16, 1)):  # the 64-byte lines of a panel row
            target = builder.bitcast(builder.gep(pf_row, [ir.Constant(i64, 16 * line)]), ir.IntType(8).as_pointer())
            builder.call(prefetch, [target, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
    new_accs = []
    for i in range(mr):
        bcast = v_.broadcast_load(a_rows[i], k)
        for v in range(nv):
            new_accs.append(v_.fma(bcast, weights[v], accs[i * nv + v]))
    k_next = builder.add(k, ir.Constant(i64, 1))
    b_next = builder.gep(b_row, [ldb_])
    loop_end = builder.block
    k.add_incoming(k_next, loop_end)
    b_row.add_incoming(b_next, loop_end)
    for acc, value in zip(accs, new_accs):
        acc.add_incoming(value, loop_end)
    builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

    builder.position_at_end(done)
    results = []
    for first, last in zip(init, new_accs):  # every phi before the first store
        result = builder.phi(vec)
        result.add_incoming(first, entry)
        result.add_incoming(last, loop_end)
        results.append(result)
    for i in range(mr):
        for v in range(nv):
            builder.store(results[i * nv + v], v_.vector_at(c_rows[i], ir.Constant(i64, v * _VW)), align=4)
    return context.get_dummy_value()


_tile_kernel = _make_tile_kernel(_MR)
_tile_kernel_wide = _make_tile_kernel(_MR_WIDE)
# The first row tile of each panel fetches the next panel: the weights' rows are a row stride apart (no
# sequential stream for the hardware prefetcher), and at large batches X and Y push them out of L3.
_tile_kernel_wide_pf = _make_tile_kernel(_MR_WIDE, _NV, True)
_tile_kernel_pf = _make_tile_kernel(_MR, _NV, True)


# Batch 1, weights in cache: one row against panels of NR columns, 4 rows of
# the weights per step into 4 sets of accumulators (8 independent FMA chains,
# like the 4-row tiles), summed at the end; ``matvec_kn``, which loads and
# stores ``out`` once per 8 rows, wins once the weights stream from L3.
_ROW_UNROLL = 4


@intrinsic
def _row_kernel(typingctx, a, b, ldb, c, steps):
    """``C[0:NR] = sum_k a[k] Bt[k, 0:NR]`` for k < 4 * steps, at addresses a, b, c (``ldb`` in floats)."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        a_addr, b_addr, ldb_, c_addr, steps_ = args
        v_ = _VectorIR(builder)
        i64, vec, fptr, zero = v_.i64, v_.vec, v_.fptr, v_.zero
        a0, b0, c0 = v_.pointer(a_addr), v_.pointer(b_addr), v_.pointer(c_addr)
        n_acc = _ROW_UNROLL * _NV
        entry = builder.block
        loop = builder.append_basic_block("row_loop")
        done = builder.append_basic_block("row_done")
        builder.cbranch(builder.icmp_signed(">", steps_, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        step = builder.phi(i64)
        b_row = builder.phi(fptr)
        a_ptr = builder.phi(fptr)
        accs = [builder.phi(vec) for _ in range(n_acc)]
        step.add_incoming(ir.Constant(i64, 0), entry)
        b_row.add_incoming(b0, entry)
        a_ptr.add_incoming(a0, entry)
        for acc in accs:
            acc.add_incoming(zero, entry)
        new_accs = []
        row = b_row
        for u in range(_ROW_UNROLL):
            bcast = v_.broadcast_load(a_ptr, ir.Constant(i64, u))
            for v in range(_NV):
                weight = builder.load(v_.vector_at(row, ir.Constant(i64, v * _VW)), align=4)
                new_accs.append(v_.fma(bcast, weight, accs[u * _NV + v]))
            row = builder.gep(row, [ldb_])
        step_next = builder.add(step, ir.Constant(i64, 1))
        loop_end = builder.block
        step.add_incoming(step_next, loop_end)
        b_row.add_incoming(row, loop_end)
        a_ptr.add_incoming(builder.gep(a_ptr, [ir.Constant(i64, _ROW_UNROLL)]), loop_end)
        for acc, value in zip(accs, new_accs):
            acc.add_incoming(value, loop_end)
        builder.cbranch(builder.icmp_signed("<", step_next, steps_), loop, done)

        builder.position_at_end(done)
        results = []
        for last in new_accs:
            result = builder.phi(vec)
            result.add_incoming(zero, entry)
            result.add_incoming(last, loop_end)
            results.append(result)
        for v in range(_NV):
            total = results[v]
            for u in range(1, _ROW_UNROLL):
                total = builder.fadd(total, results[u * _NV + v])
            builder.store(total, v_.vector_at(c0, ir.Constant(i64, v * _VW)), align=4)
        return context.get_dummy_value()

    return sig, codegen
@jit
def gemm_tiles(A, BmT, n0, n1, out, c0):
    """``out[m, c0 + n - n0] = A[m] . BmT[:, n]`` for m < M - M % MR and n in [n0, n1), n1 - n0 a multiple of NR."""
    M, K = A.shape
    full = M - M % _MR
    lda = A.strides[0] // 4
    ldb = BmT.strides[0] // 4
    ldc = out.strides[0] // 4
    a_base = A.ctypes.data
    b_base = BmT.ctypes.data
    c_base = out.ctypes.data
    # rows per M block: A's block (~128 KiB) stays in L2, a multiple of the wide tile
    mc = min(max(_A_BLOCK_FLOATS // max(K, 1), 16), 256) // _MR_WIDE * _MR_WIDE
    for m0 in range(0, full, mc):  # the MC x N block of ``out`` stays in cache across the K blocks
        m1 = min(m0 + mc, full)
        wide_end = m0 + (m1 - m0) // _MR_WIDE * _MR_WIDE
        for k0 in range(0, K, _KC):
            kc = min(_KC, K - k0)
            for n in range(n0, n1, _NR):
                b_addr = b_base + 4 * (k0 * ldb + n)
                c_col = c_base + 4 * (c0 + n - n0)
                m = m0
                if m + _MR_WIDE <= wide_end:
                    _tile_kernel_wide_pf(a_base + 4 * (m * lda + k0), lda, b_addr, ldb,
                                         c_col + 4 * m * ldc, ldc, kc, k0 > 0, _NR)
                    m += _MR_WIDE
                else:
                    _tile_kernel_pf(a_base + 4 * (m * lda + k0), lda, b_addr, ldb,
                                    c_col + 4 * m * ldc, ldc, kc, k0 > 0, _NR)
                    m += _MR
                while m < wide_end:
                    _tile_kernel_wide(a_base + 4 * (m * lda + k0), lda, b_addr, ldb,
                                      c_col + 4 * m * ldc, ldc, kc, k0 > 0, 0)
                    m += _MR_WIDE
                while m < m1:
                    _tile_kernel(a_base + 4 * (m * lda + k0), lda, b_addr, ldb,
                                 c_col + 4 * m * ldc, ldc, kc, k0 > 0, 0)
                    m += _MR


@jit
def matvec_panels(h, RT, n0, n1, out, backward=False):
    """``out[n - n0] = sum_k h[k] * RT[k, n]`` for n in [n0, n1): one row, k-major weights in cache.

    Panels of ``_NR`` columns (``_row_kernel``: the panel's sums in registers
    over all of K, no loads and stores of ``out`` per group of k as in
    ``matvec_kn``), ``matvec_kn`` for the last columns and the last K % 4
    rows. ``backward`` walks the panels from the end (see ``matvec_kn``).
    """
    K = h.shape[0]
    width = n1 - n0
    panels = width // _NR
    done = panels * _NR
    k4 = K - K % _ROW_UNROLL
    ldb = RT.strides[0] // 4
    a_addr = h.ctypes.data
    b_base = RT.ctypes.data + 4 * n0
    c_base = out.ctypes.data
    if done < width:
        matvec_kn(h, RT, n0 + done, n1, out[done:width], backward)
    for p in range(panels):
        col = _NR * (panels - 1 - p if backward else p)
        _row_kernel(a_addr, b_base + 4 * col, ldb, c_base + 4 * col, k4 // _ROW_UNROLL)
    if k4 < K and done:
        o = out[:done]
        for k in range(k4, K):
            hk = h[k]
            w = RT[k, n0:n0 + done]
            for j in range(done):
                o[j] += hk * w[j]


# Above this many bytes of k-major weights (about half of L2), the 4-row axpy
# streams them from L3 once per 4 rows: the dot-product tiles reuse them better.
_AXPY_WEIGHT_BYTES = 512 * 1024


@jit
def _product_4rows(A, Bm, BmT, n0, n1, out, c0):
    """``product`` for the columns the tiles leave, rows in multiples of 4."""
    K = A.shape[1]
    if K * (n1 - n0) * 4 <= _AXPY_WEIGHT_BYTES:
        for m in range(0, A.shape[0], 4):
            _axpy_4rows(A, m, BmT, n0, n1, out, c0)
    else:
        matmul_nt(A, Bm, n0, n1, out, c0)


# Batch 1: up to this many bytes of weights (in L2), ``matvec_panels``; above,
# ``matvec_kn``, whose whole-row reads stream better from L3.
_PANEL_MATVEC_BYTES = 1100 * 1024


@jit
def product(A, Bm, BmT, n0, n1, out, c0, backward=False):
    """``out[m, c0 + n - n0] = A[m] . Bm[n]`` for n in [n0, n1), ``BmT`` = Bm transposed.

    Rows in multiples of MR, columns in multiples of NR: the register tiles
    (``gemm_tiles``); the columns left over: the 4-row axpy or dot tiles;
    the rows left over (all of them at batch 1..3): ``matvec_kn``, which
    reads the weights ``backward`` when asked (alternate it step by step).
    """
    M = A.shape[0]
    full = M - M % _MR
    if full:
        tiled = (n1 - n0) - (n1 - n0) % _NR
        if tiled:
            gemm_tiles(A[:full], BmT, n0, n0 + tiled, out[:full], c0)
        if n0 + tiled < n1:
            _product_4rows(A[:full], Bm, BmT, n0 + tiled, n1, out[:full], c0 + tiled)
    panels = A.shape[1] * (n1 - n0) * 4 <= _PANEL_MATVEC_BYTES
    for m in range(full, M):
        if panels:
            matvec_panels(A[m], BmT, n0, n1, out[m, c0:], backward)
        else:
            matvec_kn(A[m], BmT, n0, n1, out[m, c0:], backward)


# ------------------------------------------------ batch 1 over packed panels --
# ``packing.with_panels`` also lays each column range of W^T / R^T out as
# panels: K rows of PANEL_WIDTH contiguous floats, one panel after the other,
# the last zero-padded. A row against a panel then reads one sequential stream
# (what the hardware prefetcher follows best once the weights come from L3)
# instead of 128 bytes from each of K rows a row stride apart.
PANEL_WIDTH = 32  # floats per panel row: packing.PANEL_WIDTH (two AVX-512 / four AVX2 vectors)
_PANEL_VECTORS = PANEL_WIDTH // _VW
_PANEL_UNROLL = (16 if _AVX512 else 8) // _PANEL_VECTORS  # rows per step: 16 (AVX2: 8) independent accumulators
_PANEL_PREFETCH_FLOATS = 0  # software prefetch distance along the stream (0: none)


def _panel_codegen(context, builder, streams, c_addr, ncols, addend_addr=None):
    """``C[j] = addend[j] + sum over streams (a, P, K) of sum_k a[k] P[k, j]`` for j < ncols (one
    set of accumulators: several products and a bias cost one store)."""
    v_ = _VectorIR(builder)
    i64, i32, vec, fptr, zero = v_.i64, v_.i32, v_.vec, v_.fptr, v_.zero
    c0 = v_.pointer(c_addr)
    n_acc = _PANEL_UNROLL * _PANEL_VECTORS

    def counted_loop(name, count, start_b, start_a, start_accs, body):
        """A loop of ``count`` iterations carrying the weight and row pointers and the accumulators."""
        head = builder.block
        loop = builder.append_basic_block(name)
        done = builder.append_basic_block(name + "_done")
        builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        i = builder.phi(i64)
        b_ptr = builder.phi(fptr)
        a_ptr = builder.phi(fptr)
        accs = [builder.phi(vec) for _ in start_accs]
        i.add_incoming(ir.Constant(i64, 0), head)
        b_ptr.add_incoming(start_b, head)
        a_ptr.add_incoming(start_a, head)
        for acc, value in zip(accs, start_accs):
            acc.add_incoming(value, head)
        next_b, next_a, new_accs = body(b_ptr, a_ptr, accs)
        i_next = builder.add(i, ir.Constant(i64, 1))
        end = builder.block
        i.add_incoming(i_next, end)
        b_ptr.add_incoming(next_b, end)
        a_ptr.add_incoming(next_a, end)
        for acc, value in zip(accs, new_accs):
            acc.add_incoming(value, end)
        builder.cbranch(builder.icmp_signed("<", i_next, count), loop, done)
        builder.position_at_end(done)
        out_b, out_a = builder.phi(fptr), builder.phi(fptr)
        out_b.add_incoming(start_b, head)
        out_b.add_incoming(next_b, end)
        out_a.add_incoming(start_a, head)
        out_a.add_incoming(next_a, end)
        results = []
        for first, last in zip(start_accs, new_accs):
            result = builder.phi(vec)
            result.add_incoming(first, head)
            result.add_incoming(last, end)
            results.append(result)
        return out_b, out_a, results

    def rows(count):
        def body(b_ptr, a_ptr, accs):
            if _PANEL_PREFETCH_FLOATS and count > 1:
                prefetch = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]),
                    "llvm.prefetch.p0i8")
                for line in range(count * PANEL_WIDTH // 16):
                    target = builder.gep(b_ptr, [ir.Constant(i64, _PANEL_PREFETCH_FLOATS + 16 * line)])
                    builder.call(prefetch, [builder.bitcast(target, ir.IntType(8).as_pointer()),
                                            ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            new_accs = []
            for u in range(count):
                bcast = v_.broadcast_load(a_ptr, ir.Constant(i64, u))
                for v in range(_PANEL_VECTORS):
                    weight = builder.load(v_.vector_at(b_ptr, ir.Constant(i64, u * PANEL_WIDTH + v * _VW)),
                                          align=4)
                    new_accs.append(v_.fma(bcast, weight, accs[u * _PANEL_VECTORS + v]))
            new_accs += accs[len(new_accs):]
            return (builder.gep(b_ptr, [ir.Constant(i64, count * PANEL_WIDTH)]),
                    builder.gep(a_ptr, [ir.Constant(i64, count)]), new_accs)
        return body

    accs = [zero] * n_acc
    for a_addr, b_addr, k_count in streams:
        steps = builder.sdiv(k_count, ir.Constant(i64, _PANEL_UNROLL))
        b_end, a_end, accs = counted_loop("panel_rows", steps, v_.pointer(b_addr), v_.pointer(a_addr), accs,
                                          rows(_PANEL_UNROLL))
        tail = builder.srem(k_count, ir.Constant(i64, _PANEL_UNROLL))
        _, _, accs = counted_loop("panel_tail", tail, b_end, a_end, accs, rows(1))
    # masked store of the first ``ncols`` columns: the panel's padding columns belong to no output
    lanes = ir.VectorType(i64, _VW)
    mask_type = ir.VectorType(ir.IntType(1), _VW)
    store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vec, v_.vptr, i32, mask_type]),
        f"llvm.masked.store.v{_VW}f32.p0")
    load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [v_.vptr, i32, mask_type, vec]), f"llvm.masked.load.v{_VW}f32.p0")
    addend = v_.pointer(addend_addr) if addend_addr is not None else None
    limit = builder.insert_element(ir.Constant(lanes, ir.Undefined), ncols, ir.Constant(i32, 0))
    limit = builder.shuffle_vector(limit, ir.Constant(lanes, ir.Undefined), ir.Constant(ir.VectorType(i32, _VW), [0] * _VW))
    for v in range(_PANEL_VECTORS):
        total = accs[v]
        for u in range(1, _PANEL_UNROLL):
            total = builder.fadd(total, accs[u * _PANEL_VECTORS + v])
        index = ir.Constant(lanes, [v * _VW + j for j in range(_VW)])
        mask = builder.icmp_signed("<", index, limit)
        if addend is not None:
            total = builder.fadd(total, builder.call(load, [v_.vector_at(addend, ir.Constant(i64, v * _VW)),
                                                            ir.Constant(i32, 4), mask, zero]))
        builder.call(store, [total, v_.vector_at(c0, ir.Constant(i64, v * _VW)), ir.Constant(i32, 4), mask])
    return context.get_dummy_value()


@intrinsic
def _panel_kernel(typingctx, a, b, c, K, ncols):
    """``C[j] = sum_k a[k] P[k, j]`` for j < ncols (<= PANEL_WIDTH), P = the panel at b (K x PANEL_WIDTH)."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        a_addr, b_addr, c_addr, k_count, ncols = args
        return _panel_codegen(context, builder, [(a_addr, b_addr, k_count)], c_addr, ncols)

    return sig, codegen


@intrinsic
def _panel2_kernel(typingctx, a1, b1, K1, a2, b2, K2, bias, c, ncols):
    """``C[j] = bias[j] + a1 . P1[:, j] + a2 . P2[:, j]`` for j < ncols: two panels (K1 and K2 rows) and a bias
    through the same accumulators."""
    sig = types.void(*[types.intp] * 9)

    def codegen(context, builder, signature, args):
        a1_, b1_, k1, a2_, b2_, k2, bias_, c_, ncols_ = args
        return _panel_codegen(context, builder, [(a1_, b1_, k1), (a2_, b2_, k2)], c_, ncols_, bias_)

    return sig, codegen


@jit
def matvec2_packed(x, panels_x, h, panels_h, bias, width, out):
    """``out[n] = bias[n] + x . MX[:, n] + h . MH[:, n]`` for n < width (MX, MH packed as panels: see
    ``matvec_packed``): the input and recurrent products of one step in one pass, no projection stored."""
    matvec2_at(x.ctypes.data, x.shape[0], panels_x.ctypes.data, h.ctypes.data, h.shape[0], panels_h.ctypes.data,
               bias.ctypes.data, width, out.ctypes.data)


@jit
def matvec2_at(x, KX, panels_x, h, KH, panels_h, bias, width, out):
    """``matvec2_packed`` on addresses: an out-of-line call passes integers only (an array argument is
    reference-counted on the way in and out), and its code is compiled once, not at every inlined call."""
    count = (width + PANEL_WIDTH - 1) // PANEL_WIDTH
    for q in range(count):
        _panel2_kernel(x, panels_x + 4 * q * KX * PANEL_WIDTH, KX, h, panels_h + 4 * q * KH * PANEL_WIDTH, KH,
                       bias + 4 * q * PANEL_WIDTH, out + 4 * q * PANEL_WIDTH, min(PANEL_WIDTH, width - q * PANEL_WIDTH))


@jit
def matvec_packed(h, panels, width, out, backward=False):
    """``out[n] = sum_k h[k] * M[k, n]`` for n < width, M (K x width) packed as panels (``packing.with_panels``).

    ``h``: a contiguous row of K floats; ``panels``: the range's panels from
    its first; ``out``: at least ``width`` floats (nothing written past).
    ``backward`` walks the panels from the end (see ``matvec_kn``).
    """
    K = h.shape[0]
    count = (width + PANEL_WIDTH - 1) // PANEL_WIDTH
    a_addr = h.ctypes.data
    b_base = panels.ctypes.data
    c_base = out.ctypes.data
    for p in range(count):
        q = count - 1 - p if backward else p
        _panel_kernel(a_addr, b_base + 4 * q * K * PANEL_WIDTH, c_base + 4 * q * PANEL_WIDTH, K,
                      min(PANEL_WIDTH, width - q * PANEL_WIDTH))
