# Shared source of the _rnn_kernels* extension modules (included, not compiled alone).
#
# setup.py compiles this same code several times, once per instruction set
# (portable baseline, AVX2+FMA, AVX-512: native/li_simd.h decides the vector
# width), each into its own private module; lstminfer/kernels/cython_backend.py
# imports the one the CPU supports.
#
# Whole LSTM/GRU/RNN sequences, every attribute, over preallocated buffers:
# for each direction the input projection of all steps at once
# (xp = X . W^T + bias), then per step one product gates = h . R^T and a
# few vectorized passes over the hidden units. No allocation and no GIL inside.
# The C lives in headers: li_gemm.h (products), li_vmath.h (vector maths),
# li_cells.h (whole cells, the fused one step), li_vnni.h, li_workers.h.
#
# Weights come packed by lstminfer/kernels/packing.py (one block; gate-major,
# kernel gate order LSTM i,f,c,o; GRU z,r,h): we read its bias_x [G*H],
# bias_rh [H] and peep [3, H] (i,f,o) segments, and the panels that
# cython_backend.pack_panels makes of its k-major WT [I, G*H] and RT [H, G*H].

from libc.math cimport INFINITY, expm1f, expf, fabsf, log1pf
from libc.string cimport memcpy, memmove, memset
from libc.stdlib cimport free, malloc
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New

import numpy as np
cimport numpy as cnp

from li_constants cimport *

cdef extern from "li_no_complex_i.h":
    pass

cnp.import_array()

ctypedef Py_ssize_t idx

cdef extern from "li_math.h":
    const float LI_ZERO, LI_HALF, LI_ONE
    float li_tanh(float x) noexcept nogil
    float li_sigmoid(float x) noexcept nogil
    # restrict-qualified pointers: without them GCC gives up vectorizing loops
    # that write one row while reading several others.
    ctypedef float* fptr "float * __restrict__"
    ctypedef const float* cfptr "const float * __restrict__"

cdef extern from "li_simd.h":
    const int LI_VEC
    const char* LI_ISA

cdef extern from "li_gemm.h":
    void li_tile_rows(const float* A, idx lda, int rows, idx K, const float* B, float* C, idx ldc,
                      const float* bias) noexcept nogil
    void li_tile4(const float* A, idx lda, idx K, const float* B, idx ldb, float* C, idx ldc,
                  const float* bias) noexcept nogil
    ctypedef unsigned short u16 "uint16_t"
    void li_tile1_q(const float* a, idx K, const signed char* Q, float* C, const float* scale,
                    const float* bias) noexcept nogil
    void li_dequantize_panel(const signed char* Q, idx K, const float* scale, float* out) noexcept nogil
    void li_tile1_bf(const float* a, idx K, const u16* Q, float* C, const float* bias) noexcept nogil
    void li_expand_panel_bf(const u16* Q, idx K, float* out) noexcept nogil

cdef extern from "li_vmath.h":
    void li_sigmoid_n(float* v, idx n) noexcept nogil
    void li_tanh_n(float* v, idx n) noexcept nogil

cdef extern from "li_cells.h":
    idx li_lstm_cells_std(const float* x, const float* g, float* h, float* c, const float* pi, const float* pf,
                          const float* po, idx n, idx S, float clip) noexcept nogil
    const bint LI_STEP_FUSED
    void li_lstm_step4(const float* const* x, const float* const* h, const float* const* c, idx I, idx H, idx j,
                       const float* wpanels, const float* rpanels, const float* bias, const float* peep, float clip,
                       bint clipped, int store, float* const* y, float* const* cn) noexcept nogil
    unsigned long long li_fused_steps_run
    void li_count_fused_step() noexcept nogil
    const bint LI_VNNI_STEP
    void li_vnni_lstm_step1(const float* h, idx H, const signed char* panels, const float* scales, const float* x,
                            float* g, float* hn, float* c, const float* pi, const float* pf, const float* po,
                            float* y, float clip, bint backwards) noexcept nogil
    unsigned long long li_vnni_steps_run
    void li_count_vnni_steps() noexcept nogil
    const bint LI_SMALL_STEP
    bint li_small_step_fits(idx H) noexcept nogil
    void li_lstm_step1_small(const float* x, const float* hp, float* hn, float* c, float* y, const float* rpanels,
                             idx H, const float* peep, float clip) noexcept nogil
    void li_gru_lbr_step1_small(const float* x, const float* hp, float* hn, float* y, const float* pzr,
                                const float* pn, idx H, const float* rbh, float clip) noexcept nogil
    unsigned long long li_small_steps_run
    void li_count_small_steps() noexcept nogil
    idx li_gru_zr_std(const float* x, float* g, const float* hp, float* rh, idx n, idx S, float clip) noexcept nogil
    idx li_gru_output_std(const float* xh, const float* z, const float* gh, const float* hp, float* h, idx n,
                          float clip) noexcept nogil
    idx li_gru_lbr_cells_std(const float* x, const float* g, const float* hp, float* h, const float* rbh, idx n,
                             idx S, float clip) noexcept nogil

# The shared numbers (li_constants.pxd), for the Python side and for the test that checks they agree.
PACKING = {"SEG_W": SEG_W, "SEG_R": SEG_R, "SEG_BIAS_X": SEG_BIAS_X, "SEG_BIAS_RH": SEG_BIAS_RH,
           "SEG_PEEP": SEG_PEEP, "SEG_WT": SEG_WT, "SEG_RT": SEG_RT, "NUM_SEGMENTS": NUM_SEGMENTS,
           "ALIGN_FLOATS": ALIGN_FLOATS}  # packing.py's names
ACTIVATION_CODES = {
    "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID, "affine": AFFINE, "leakyrelu": LEAKY_RELU,
    "thresholdedrelu": THRESHOLDED_RELU, "scaledtanh": SCALED_TANH, "hardsigmoid": HARD_SIGMOID,
    "elu": ELU, "softsign": SOFTSIGN, "softplus": SOFTPLUS,
}
OPS = {"LSTM": OP_LSTM, "GRU": OP_GRU, "RNN": OP_RNN}
GATES = {"LSTM": GATES_LSTM, "GRU": GATES_GRU, "RNN": GATES_RNN}
ACTS_PER_DIRECTION = {"LSTM": ACTS_LSTM, "GRU": ACTS_GRU, "RNN": ACTS_RNN}
QKINDS = {"float32": QK_FLOAT, "int8": QK_INT8, "int8-vnni": QK_VNNI, "bf16": QK_BF16}
ISA = LI_ISA.decode("ascii")  # this build's instruction set, as li_simd.h chose it


cdef inline idx gates_of(int op) noexcept nogil:
    return GATES_LSTM if op == OP_LSTM else (GATES_GRU if op == OP_GRU else GATES_RNN)


cdef inline idx acts_of(int op) noexcept nogil:
    return ACTS_LSTM if op == OP_LSTM else (ACTS_GRU if op == OP_GRU else ACTS_RNN)


# ---------------------------------------------------------- activations --
# Ternaries rather than fminf/fmaxf: they compile to min/max instructions
# (fminf's NaN rules block vectorization) and still let NaN through.

cdef inline float clampf(float x, float clip) noexcept nogil:
    x = clip if x > clip else x
    return -clip if x < -clip else x


cdef inline float fast_tanh(float x) noexcept nogil:
    return li_tanh(x)


cdef inline float fast_sigmoid(float x) noexcept nogil:
    return li_sigmoid(x)


cdef inline float activate(float x, int code, float alpha, float beta) noexcept nogil:
    if code == SIGMOID:
        return fast_sigmoid(x)
    if code == TANH:
        return fast_tanh(x)
    if code == RELU:
        return LI_ZERO if x <= LI_ZERO else x  # NaN stays NaN, as the reference's np.maximum and li_unary
    if code == AFFINE:
        return alpha * x + beta
    if code == LEAKY_RELU:
        return x if x >= LI_ZERO else alpha * x
    if code == THRESHOLDED_RELU:
        return x if x > alpha else LI_ZERO
    if code == SCALED_TANH:
        return alpha * fast_tanh(beta * x)
    if code == HARD_SIGMOID:
        x = alpha * x + beta
        x = LI_ONE if x > LI_ONE else x
        return LI_ZERO if x < LI_ZERO else x
    if code == ELU:
        return x if x >= LI_ZERO else alpha * expm1f(x)
    if code == SOFTSIGN:
        return x / (LI_ONE + fabsf(x))
    # SOFTPLUS: log(1 + e^x) without overflow
    return (x if x > LI_ZERO else LI_ZERO) + log1pf(expf(-fabsf(x)))


# -------------------------------------------------------------- products --
# Weights pre-packed in panels (cython_backend.pack_panels), multiplied by the
# register-tiled micro-kernels of li_gemm.h (faster than OpenBLAS at these shapes).

cdef void act_inplace(fptr v, idx n, int code, float alpha, float beta) noexcept nogil:
    """v[:n] = act(v); the common codes get their own (vectorized) loop."""
    cdef idx j
    if code == SIGMOID:
        li_sigmoid_n(v, n)
    elif code == TANH:
        li_tanh_n(v, n)
    elif code == RELU:
        for j in range(n):
            v[j] = LI_ZERO if v[j] <= LI_ZERO else v[j]  # NaN stays NaN
    else:
        for j in range(n):
            v[j] = activate(v[j], code, alpha, beta)


def apply_activation(float[::1] values, str name, float alpha=0.0, float beta=0.0):
    """values[:] = activation(values), in place (for tests)."""
    cdef int code = ACTIVATION_CODES[name.lower()]
    with nogil:
        act_inplace(&values[0], values.shape[0], code, alpha, beta)



cdef void gemm(const float* A, idx M, idx K, idx lda, const float* panels, idx n0, idx n1,
               float* C, idx ldc, const float* bias, bint backwards=False) noexcept nogil:
    """C[m, j] = bias[n0 + j] + sum_k A[m, k] BT[k, n0 + j] for j < n1 - n0 (bias may be NULL).

    ``panels`` holds the columns [n0, n1) of the k-major weights BT packed for the micro-kernel
    (``pack_panels``): PANEL_WIDTH columns at a time, each panel K rows of
    contiguous floats, the last one zero-padded. Groups of 4 rows go through
    the register-tiled micro-kernel, in row blocks whose A stays in L2 (each
    panel is reused by every row group of a block); the last M % 4 rows
    (all of them at batch 1..3) go together through each panel (li_tile_rows),
    reading the panels as one sequential stream. ``n0`` only offsets ``bias``.
    """
    cdef idx width = n1 - n0
    cdef idx nr = 2 * LI_VEC
    cdef idx full_rows = M - M % 4
    cdef idx mb = (32768 // (K if K > 0 else 1)) // 4 * 4
    mb = 16 if mb < 16 else (256 if mb > 256 else mb)
    cdef idx m0, m1, m, j, w, r, q
    cdef float tmp[4 * 64]  # one partial tile (nr <= 64)
    cdef const float* panel
    m0 = 0
    while m0 < full_rows:
        m1 = m0 + mb if m0 + mb < full_rows else full_rows
        j = 0
        while j < width:
            panel = panels + (j // nr) * K * nr
            w = width - j
            m = m0
            if w >= nr:
                while m < m1:
                    li_tile4(A + m * lda, lda, K, panel, nr, C + m * ldc + j, ldc,
                             (bias + n0 + j) if bias != NULL else NULL)
                    m += 4
            else:  # last, partial panel: through a small buffer, bias added after
                while m < m1:
                    li_tile4(A + m * lda, lda, K, panel, nr, tmp, nr, NULL)
                    for r in range(4):
                        for q in range(w):
                            C[(m + r) * ldc + j + q] = tmp[r * nr + q] + (bias[n0 + j + q] if bias != NULL else LI_ZERO)
                    m += 4
            j += nr
        m0 = m1
    # the last M % 4 rows (all of them at batch 1..3): one pass over the panels for all of them.
    # ``backwards`` walks the panels last to first: a recurrent product alternates it step
    # by step, so the panels read last (still in L2) are read first again, where a scan in
    # one direction over weights just larger than L2 would miss on every line.
    cdef idx npanels = (width + nr - 1) // nr, p
    cdef int rest = <int>(M - full_rows)
    if rest == 0:
        return
    m = full_rows
    for p in range(npanels):
        j = (npanels - 1 - p) * nr if backwards else p * nr
        panel = panels + (j // nr) * K * nr
        w = width - j
        if w >= nr:
            li_tile_rows(A + m * lda, lda, rest, K, panel, C + m * ldc + j, ldc,
                         (bias + n0 + j) if bias != NULL else NULL)
        else:
            li_tile_rows(A + m * lda, lda, rest, K, panel, tmp, nr, NULL)
            for r in range(rest):
                for q in range(w):
                    C[(m + r) * ldc + j + q] = tmp[r * nr + q] + (bias[n0 + j + q] if bias != NULL else LI_ZERO)



PANEL_WIDTH = 2 * LI_VEC  # columns per panel of the micro-kernel in this build


def matmul(const float[:, ::1] A, const float[::1] panels, int n0, int n1, float[:, ::1] C,
           const float[::1] bias=None):
    """C[:, :n1-n0] = A . BT[:, n0:n1] (+ bias[n0:n1]); ``panels``: BT[:, n0:n1] packed. For tests."""
    cdef idx nr = PANEL_WIDTH
    if C.shape[0] != A.shape[0] or C.shape[1] < n1 - n0:
        raise ValueError("matmul: shapes do not match")
    if not (0 <= n0 <= n1) or (bias is not None and bias.shape[0] < n1):
        raise ValueError("matmul: column range out of bounds")
    if panels.shape[0] < (n1 - n0 + nr - 1) // nr * nr * A.shape[1]:
        raise ValueError("matmul: panels too small")
    cdef const float* b = &bias[0] if bias is not None else NULL
    with nogil:
        gemm(&A[0, 0], A.shape[0], A.shape[1], A.shape[1], &panels[0], n0, n1,
             &C[0, 0], C.shape[1], b)


# ------------------------------------------------------- int8 products --
# Seq.qkind picks the product: QK_INT8 (weight-only int8 panels with per-column scales),
# QK_BF16 (the same code on bf16 panels) or QK_VNNI (li_vnni.h). At batch 1..3 li_gemm.h
# converts the weights inside the micro-kernel (a quarter of the bytes streamed per step);
# row groups of 4 dequantize each panel once per row block and run the float micro-kernel.

# Dynamic int8 on AVX-512 VNNI (quantize="int8" on a CPU that has it): see the header.
cdef extern from "li_vnni.h":
    const int LI_VNNI_NR, LI_VNNI_COMPILED, LI_VNNI_STACK
    int li_vnni_gemm(const float* A, idx M, idx K, idx lda, const signed char* panels, const float* scales,
                     idx width, float* C, idx ldc, const float* bias) noexcept nogil

VNNI_PANEL_WIDTH = LI_VNNI_NR  # columns per VNNI panel (cython_backend.pack_vnni_panels)
VNNI_COMPILED = bool(LI_VNNI_COMPILED)  # False: this compiler had no VNNI code (never select it)


cdef void gemm_q(const float* A, idx M, idx K, idx lda, const void* panels, const float* scales,
                 idx n0, idx n1, float* C, idx ldc, const float* bias, bint bf16) noexcept nogil:
    """``gemm`` on int8 panels with per-column ``scales`` (padded to whole panels),
    or (``bf16``) on bf16 panels, no scales."""
    cdef idx width = n1 - n0
    cdef idx nr = 2 * LI_VEC
    cdef idx full_rows = M - M % 4
    cdef idx mb = (32768 // (K if K > 0 else 1)) // 4 * 4
    mb = 16 if mb < 16 else (256 if mb > 256 else mb)
    cdef idx m0, m1, m, j, w, r, q
    cdef float tmp[4 * 64]  # one partial tile (nr <= 64)
    cdef float* panel = NULL
    if full_rows:
        panel = <float*>malloc((K * nr + 1) * sizeof(float))
        if panel == NULL:  # out of memory: every row through the one-row kernel below
            full_rows = 0
    m0 = 0
    while m0 < full_rows:
        m1 = m0 + mb if m0 + mb < full_rows else full_rows
        j = 0
        while j < width:
            if bf16:
                li_expand_panel_bf(<const u16*>panels + (j // nr) * K * nr, K, panel)
            else:
                li_dequantize_panel(<const signed char*>panels + (j // nr) * K * nr, K, scales + j, panel)
            w = width - j
            m = m0
            if w >= nr:
                while m < m1:
                    li_tile4(A + m * lda, lda, K, panel, nr, C + m * ldc + j, ldc,
                             (bias + n0 + j) if bias != NULL else NULL)
                    m += 4
            else:
                while m < m1:
                    li_tile4(A + m * lda, lda, K, panel, nr, tmp, nr, NULL)
                    for r in range(4):
                        for q in range(w):
                            C[(m + r) * ldc + j + q] = tmp[r * nr + q] + (bias[n0 + j + q] if bias != NULL else LI_ZERO)
                    m += 4
            j += nr
        m0 = m1
    free(panel)
    for m in range(full_rows, M):
        j = 0
        while j < width:
            w = width - j
            if w >= nr and bf16:
                li_tile1_bf(A + m * lda, K, <const u16*>panels + (j // nr) * K * nr, C + m * ldc + j,
                            (bias + n0 + j) if bias != NULL else NULL)
            elif w >= nr:
                li_tile1_q(A + m * lda, K, <const signed char*>panels + (j // nr) * K * nr, C + m * ldc + j,
                           scales + j, (bias + n0 + j) if bias != NULL else NULL)
            else:
                if bf16:
                    li_tile1_bf(A + m * lda, K, <const u16*>panels + (j // nr) * K * nr, tmp, NULL)
                else:
                    li_tile1_q(A + m * lda, K, <const signed char*>panels + (j // nr) * K * nr, tmp,
                               scales + j, NULL)
                for q in range(w):
                    C[m * ldc + j + q] = tmp[q] + (bias[n0 + j + q] if bias != NULL else LI_ZERO)
            j += nr


def matmul_int8(const float[:, ::1] A, const signed char[::1] panels, const float[::1] scales, int n0, int n1,
                float[:, ::1] C, const float[::1] bias=None):
    """``matmul`` on int8 panels (``pack_int8_panels``) with their per-column scales. For tests."""
    cdef idx nr = PANEL_WIDTH
    cdef idx cols = (n1 - n0 + nr - 1) // nr * nr
    if C.shape[0] != A.shape[0] or C.shape[1] < n1 - n0:
        raise ValueError("matmul_int8: shapes do not match")
    if not (0 <= n0 <= n1) or (bias is not None and bias.shape[0] < n1):
        raise ValueError("matmul_int8: column range out of bounds")
    if panels.shape[0] < cols * A.shape[1] or scales.shape[0] < cols:
        raise ValueError("matmul_int8: panels or scales too small")
    cdef const float* b = &bias[0] if bias is not None else NULL
    with nogil:
        gemm_q(&A[0, 0], A.shape[0], A.shape[1], A.shape[1], &panels[0], &scales[0], n0, n1,
               &C[0, 0], C.shape[1], b, False)


def matmul_bf16(const float[:, ::1] A, const unsigned short[::1] panels, int n0, int n1, float[:, ::1] C,
                const float[::1] bias=None):
    """``matmul`` on bf16 panels (``pack_bf16_panels``: bit patterns as uint16). For tests."""
    cdef idx nr = PANEL_WIDTH
    if C.shape[0] != A.shape[0] or C.shape[1] < n1 - n0:
        raise ValueError("matmul_bf16: shapes do not match")
    if not (0 <= n0 <= n1) or (bias is not None and bias.shape[0] < n1):
        raise ValueError("matmul_bf16: column range out of bounds")
    if panels.shape[0] < (n1 - n0 + nr - 1) // nr * nr * A.shape[1]:
        raise ValueError("matmul_bf16: panels too small")
    cdef const float* b = &bias[0] if bias is not None else NULL
    with nogil:
        gemm_q(&A[0, 0], A.shape[0], A.shape[1], A.shape[1], &panels[0], NULL, n0, n1,
               &C[0, 0], C.shape[1], b, True)


def matmul_vnni(const float[:, ::1] A, const signed char[::1] panels, const float[::1] scales, int width,
                float[:, ::1] C, const float[::1] bias=None):
    """C[:, :width] = dynamic-int8 A . panels (``pack_vnni_panels``) (+ bias). For tests; the caller
    checks that the CPU has AVX-512 VNNI."""
    cdef idx nr = LI_VNNI_NR
    cdef idx cols = (width + nr - 1) // nr * nr
    cdef idx Kp = (A.shape[1] + 3) // 4 * 4
    cdef int status
    if C.shape[0] != A.shape[0] or C.shape[1] < width or width < 0:
        raise ValueError("matmul_vnni: shapes do not match")
    if (bias is not None and bias.shape[0] < width) or scales.shape[0] < cols:
        raise ValueError("matmul_vnni: bias or scales too small")
    if panels.shape[0] < cols // nr * (Kp * nr + 4 * nr):
        raise ValueError("matmul_vnni: panels too small")
    cdef const float* b = &bias[0] if bias is not None else NULL
    with nogil:
        status = li_vnni_gemm(&A[0, 0], A.shape[0], A.shape[1], A.shape[1], &panels[0], &scales[0], width,
                              &C[0, 0], C.shape[1], b)
    if status:
        raise MemoryError("matmul_vnni: no memory for the quantized rows")


# ------------------------------------------------------------- sequence --

cdef extern from "li_workers.h":
    ctypedef int (*li_job_fn)(void* arg) noexcept nogil
    ctypedef struct li_worker:
        pass
    ctypedef struct li_block:
        pass
    ctypedef struct li_sched:
        int parts
        li_block* blocks
        idx* bounds
    void li_worker_post(li_worker* w, li_job_fn fn, void* arg) noexcept nogil
    int li_worker_wait(li_worker* w) noexcept nogil
    li_worker* li_pool_take(int n) noexcept nogil
    void li_pool_give() noexcept nogil
    void li_block_reset(li_block* b) noexcept nogil
    bint li_block_claim(li_block* b, int task) noexcept nogil
    void li_block_finish(li_block* b, int done) noexcept nogil
    int li_block_done(li_block* b) noexcept nogil
    long long li_now_ns() noexcept nogil
    void li_relax() noexcept nogil
    size_t li_line_stride(size_t size) noexcept nogil
    void* li_lines_alloc(size_t n, size_t size) noexcept nogil
    ctypedef struct li_range:
        int next
        int end
    int li_range_claim(li_range* r) noexcept nogil


cdef struct Seq:
    # X [T, B, I] (time_major) or [B, T, I], C-contiguous
    const float* X
    idx T, B, I, H, D
    bint time_major
    const int* lens
    bint has_lens
    # initial states, element strides per direction and per batch row
    const float* h0
    idx h0_d, h0_b
    bint has_h0
    const float* c0
    idx c0_d, c0_b
    bint has_c0
    # Y[t, d, b, :], Y_h[d, b, :] and Y_c[d, b, :] (any strides, units contiguous;
    # Sc is NULL for GRU/RNN)
    float* Y
    idx y_t, y_d, y_b
    float* Sh
    float* Sc
    idx s_d, s_b
    const float* wbuf
    const long long* offsets  # [D, NUM_SEGMENTS]
    const float* pbuf  # micro-kernel panels (see pack_panels)
    const long long* poff  # [D, 3]: panels of W^T, of R^T columns [0, n_a), of R^T columns [n_a, G*H)
    # int8 weights (NULL: float32): then poff indexes qpbuf, and qsoff [D, 3] the per-column scales
    const signed char* qpbuf
    const float* qscale
    const long long* qsoff
    int qkind  # QK_*: how qpbuf's weights are stored and multiplied
    const int* codes  # activation codes [D, acts per direction]
    const float* fparams  # alpha, beta per activation
    float* scratch
    bint reverse_first
    bint flag  # LSTM input_forget, GRU linear_before_reset
    float clip
    # threads=N at small batch: the parts share this schedule of hidden-unit blocks
    # (NULL: the whole node in this thread); ``part`` is this thread's own block
    li_sched* sched
    int part
    idx chunk  # chunk_steps(T, B, G*H), set once per call (per-step code reads it)
    # a part of a batch split (number ``part`` of ``parts``): the uncut call, and the parts'
    # ranges of its 4-row groups when the fused one step runs it (lstm_step_claimed); NULL otherwise
    const Seq* whole
    li_range* ranges
    int parts
    bint flip  # T = 1: this call reads R before W, both last panel first (see flip_products)
    # input projections looked up in xtable [vocab, D, G*H] by ids (li_call.h), not X through W;
    # NULL: projected from X
    const float* xtable
    idx vocab
    const char* ids
    int id_bytes
    idx ids_t, ids_b



cdef inline idx padded(idx n) noexcept nogil:
    return (n + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS


cdef inline idx chunk_steps(idx T, idx B, idx GH) noexcept nogil:
    """Steps whose input projections are computed together, just before the first of them:
    ~128 KiB of projections, which stay in L2 next to the recurrent weights (all T steps
    at once would be T*B*GH floats, evicting R on every step). At least one step."""
    cdef idx c = 32768 // (B * GH) if B * GH > 0 else T
    if c < 1:
        c = 1
    if c >= 8:  # whole 4-row tiles at batch 1: a leftover row reads all of W alone (one row at a time)
        c -= c % 4
    return c if c < T else (T if T > 0 else 1)


cdef inline idx scratch_need(idx T, idx B, idx G, idx H) noexcept nogil:
    return (padded(chunk_steps(T, B, G * H) * B * G * H) + padded(B * G * H) + padded(2 * B * H)
            + 2 * padded(B * H) + 16)


def scratch_floats(idx T, idx B, idx G, idx H):
    """Floats of scratch a sequence needs: xp [chunk_steps*B, G*H], gates [B, G*H], h [2, B, H], c [B, H], rh [B, H]."""
    return scratch_need(T, B, G, H)


cdef inline const float* segment(const Seq* s, idx d, idx which) noexcept nogil:
    return s.wbuf + s.offsets[d * NUM_SEGMENTS + which]


cdef inline const float* panels_of(const Seq* s, idx d, idx which) noexcept nogil:
    return s.pbuf + s.poff[d * 3 + which]


cdef inline void product(const Seq* s, idx d, idx which, const float* A, idx M, idx K, idx n0, idx n1,
                         float* C, idx ldc, const float* bias, bint backwards=False, idx skip=0) noexcept nogil:
    """C = A . (panels ``which`` of direction d)[:, n0:n1] (+ bias): float32 or int8 weights."""
    if s.qkind == QK_VNNI:
        li_vnni_gemm(A, M, K, K, s.qpbuf + s.poff[d * 3 + which], s.qscale + s.qsoff[d * 3 + which],
                     n1 - n0, C, ldc, (bias + n0) if bias != NULL else NULL)
    elif s.qkind == QK_INT8:
        gemm_q(A, M, K, K, s.qpbuf + s.poff[d * 3 + which], s.qscale + s.qsoff[d * 3 + which],
               n0, n1, C, ldc, bias, False)
    elif s.qkind == QK_BF16:
        gemm_q(A, M, K, K, s.qpbuf + s.poff[d * 3 + which], NULL, n0, n1, C, ldc, bias, True)
    else:
        # ``skip``: columns of this panel set before n0 (whole panels; float32 only, see units_ok)
        gemm(A, M, K, K, panels_of(s, d, which) + (skip // (2 * LI_VEC)) * K * (2 * LI_VEC), n0, n1, C, ldc,
             bias, backwards)


cdef inline void product_units(const Seq* s, idx d, idx which, const float* A, idx M, idx K, idx base,
                               idx G, float* C0, idx ldc, const float* bias, bint backwards,
                               idx u0, idx u1) noexcept nogil:
    """Columns base + g*H + [u0, u1) of C0 (g < G) from panel set ``which`` (whose columns
    start at ``base``): all G*H of them in one product for the whole of H."""
    cdef idx g, n0, H = s.H
    if u0 == 0 and u1 == H:
        product(s, d, which, A, M, K, base, base + G * H, C0 + base, ldc, bias, backwards)
        return
    for g in range(G):
        n0 = base + g * H + u0
        product(s, d, which, A, M, K, n0, n0 + u1 - u0, C0 + n0, ldc, bias, backwards, n0 - base)


cdef void init_states(const Seq* s, idx d, float* h, float* c, idx u0, idx u1) noexcept nogil:
    """Units [u0, u1) of the h (and c) rows, from h0/c0 or zeros."""
    cdef idx b
    cdef idx H = s.H, n = u1 - u0
    for b in range(s.B):
        if s.has_h0:
            memcpy(h + b * H + u0, s.h0 + d * s.h0_d + b * s.h0_b + u0, n * sizeof(float))
        else:
            memset(h + b * H + u0, 0, n * sizeof(float))
        if c != NULL:
            if s.has_c0:
                memcpy(c + b * H + u0, s.c0 + d * s.c0_d + b * s.c0_b + u0, n * sizeof(float))
            else:
                memset(c + b * H + u0, 0, n * sizeof(float))


cdef void store_states(const Seq* s, idx d, const float* h, const float* c, idx u0, idx u1) noexcept nogil:
    cdef idx b
    cdef idx H = s.H, n = u1 - u0
    for b in range(s.B):
        memcpy(s.Sh + d * s.s_d + b * s.s_b + u0, h + b * H + u0, n * sizeof(float))
        if c != NULL:
            memcpy(s.Sc + d * s.s_d + b * s.s_b + u0, c + b * H + u0, n * sizeof(float))


cdef inline void finish_row(const Seq* s, bint active, float* hn, const float* hp, idx t, idx d, idx b,
                            idx u0, idx u1) noexcept nogil:
    """Y for this step (units [u0, u1) of the row); an inactive row keeps its state and writes zeros."""
    cdef idx n = u1 - u0
    cdef float* y = s.Y + t * s.y_t + d * s.y_d + b * s.y_b + u0
    if active:
        memcpy(y, hn + u0, n * sizeof(float))
    else:
        memcpy(hn + u0, hp + u0, n * sizeof(float))
        memset(y, 0, n * sizeof(float))


cdef inline const float* xp_row(const Seq* s, const float* xp, idx GH, idx t, idx b, idx tb) noexcept nogil:
    """Row of the projections of time t, batch row b, in the chunk starting at time tb."""
    return xp + (((t - tb) * s.B + b) if s.time_major else (b * s.chunk + t - tb)) * GH


cdef inline idx chunk_start(const Seq* s, idx GH, idx k, bint reverse) noexcept nogil:
    """The first time (in X) of the projection chunk holding step k."""
    cdef idx C = s.chunk, k0 = k - k % C
    cdef idx n = C if k0 + C <= s.T else s.T - k0
    return s.T - k0 - n if reverse else k0


cdef inline long long given_id(const Seq* s, idx t, idx b) noexcept nogil:
    """The id given for step t of batch row b (int32 or int64, maybe negative)."""
    cdef idx at = t * s.ids_t + b * s.ids_b
    return (<const long long*>s.ids)[at] if s.id_bytes == 8 else (<const int*>s.ids)[at]


cdef inline long long id_at(const Seq* s, idx t, idx b) noexcept nogil:
    """The row of s.xtable that step t of batch row b looks up (ids checked at the call: ids_in_range)."""
    cdef long long v = given_id(s, t, b)
    return v + s.vocab if v < 0 else v


cdef void look_up_chunk(const Seq* s, idx d, idx tb, idx n, idx G, float* xp, idx u0, idx u1) noexcept nogil:
    """project_chunk's work when the projections are looked up: units [u0, u1) of each gate of the
    rows of times tb .. tb+n-1, copied from s.xtable."""
    cdef idx GH = G * s.H, H = s.H, t, b, g
    cdef const float* src
    cdef float* dst
    for t in range(tb, tb + n):
        for b in range(s.B):
            src = s.xtable + (id_at(s, t, b) * s.D + d) * GH
            dst = <float*>xp_row(s, xp, GH, t, b, tb)
            if u0 == 0 and u1 == H:
                memcpy(dst, src, GH * sizeof(float))
            else:
                for g in range(G):
                    memcpy(dst + g * H + u0, src + g * H + u0, (u1 - u0) * sizeof(float))


cdef bint ids_in_range(const Seq* s) noexcept nogil:
    """Whether every id a call looks up is a row of s.xtable (-vocab <= id < vocab)."""
    cdef idx t, b
    cdef long long v
    for t in range(s.T):
        for b in range(s.B):
            v = given_id(s, t, b)
            if not -s.vocab <= v < s.vocab:
                return False
    return True


cdef void project_chunk(const Seq* s, idx d, idx k, bint reverse, idx G, float* xp, idx u0, idx u1,
                       bint backwards=False) noexcept nogil:
    """At the first step of a chunk: the input projections of its steps, units [u0, u1)
    (``backwards``: at batch 1..3, W's panels last to first)."""
    cdef idx GH = G * s.H, C = s.chunk, b
    cdef idx k0 = k - k % C, n, tb
    if k != k0:
        return
    n = C if k0 + C <= s.T else s.T - k0
    tb = s.T - k0 - n if reverse else k0
    if s.xtable != NULL:
        look_up_chunk(s, d, tb, n, G, xp, u0, u1)
    elif s.time_major:  # times tb .. tb+n-1 are n*B consecutive rows of X
        product_units(s, d, 0, s.X + tb * s.B * s.I, n * s.B, s.I, 0, G, xp, GH, segment(s, d, SEG_BIAS_X),
                      backwards, u0, u1)
    else:
        for b in range(s.B):
            product_units(s, d, 0, s.X + (b * s.T + tb) * s.I, n, s.I, 0, G, xp + b * C * GH, GH,
                          segment(s, d, SEG_BIAS_X), backwards, u0, u1)


# ----------------------------------------------------------------- LSTM --

cdef void lstm_cells(cfptr x, fptr g, fptr h, fptr c, cfptr pi, cfptr pf, cfptr po,
                             idx H, idx S, float clip, bint input_forget, const int* codes, const float* ab) noexcept nogil:
    """One step of H units of one batch row (gates S apart in x and g), as a few vectorized
    passes, the gate rows of ``g`` overwritten (the default activations: one fused pass)."""
    cdef idx j = 0
    if codes[0] == SIGMOID and codes[1] == TANH and codes[2] == TANH and not input_forget:
        j = li_lstm_cells_std(x, g, h, c, pi, pf, po, H, S, clip)
        if j == H:
            return
        x, g, h, c, pi, pf, po, H = x + j, g + j, h + j, c + j, pi + j, pf + j, po + j, H - j
    cdef fptr gi = g
    cdef fptr gf = g + S
    cdef fptr gc = g + 2 * S
    cdef fptr go = g + 3 * S
    for j in range(H):
        gi[j] = clampf(x[j] + gi[j] + pi[j] * c[j], clip)
        gf[j] = clampf(x[S + j] + gf[j] + pf[j] * c[j], clip)
        gc[j] = clampf(x[2 * S + j] + gc[j], clip)
    act_inplace(gi, H, codes[0], ab[0], ab[1])
    if input_forget:
        for j in range(H):
            gf[j] = LI_ONE - gi[j]
    else:
        act_inplace(gf, H, codes[0], ab[0], ab[1])
    act_inplace(gc, H, codes[1], ab[2], ab[3])
    for j in range(H):
        c[j] = gf[j] * c[j] + gi[j] * gc[j]
        go[j] = clampf(x[3 * S + j] + go[j] + po[j] * c[j], clip)
        h[j] = c[j]
    act_inplace(go, H, codes[0], ab[0], ab[1])
    act_inplace(h, H, codes[2], ab[4], ab[5])
    for j in range(H):
        h[j] *= go[j]


cdef inline bint vnni_step_ok(const Seq* s, const int* codes, idx t, idx u0, idx u1) noexcept nogil:
    """Whether li_vnni_lstm_step1 runs this step: an AVX-512 build, int8 (VNNI) weights, batch 1
    with the whole of H in this thread (whole VNNI panels, at most LI_VNNI_STACK), an active row,
    sigmoid/tanh/tanh without input_forget, and not the float kernel's R-first order (s.flip)."""
    return (LI_VNNI_STEP and s.qkind == QK_VNNI and s.B == 1 and u0 == 0 and u1 == s.H and s.H % LI_VNNI_NR == 0
            and s.H <= LI_VNNI_STACK and not s.flip and not s.flag and (not s.has_lens or t < s.lens[0])
            and codes[0] == SIGMOID and codes[1] == TANH and codes[2] == TANH)


def vnni_steps_run():
    """How many sequence calls so far ran their steps through li_vnni_lstm_step1, for tests."""
    return li_vnni_steps_run


cdef inline bint small_row_ok(const Seq* s, idx u0, idx u1) noexcept nogil:
    """Float32 weights, batch 1 with the whole of a small H (li_small_step_fits) in this thread:
    the calls whose steps a small step (li_cells.h) may run. Whatever the order of the products
    (s.flip): every call the same bits."""
    return s.qkind == QK_FLOAT and s.B == 1 and u0 == 0 and u1 == s.H and li_small_step_fits(s.H)


cdef inline bint small_step_ok(const Seq* s, const int* codes, idx u0, idx u1) noexcept nogil:
    """Whether li_lstm_step1_small runs this call's active steps: small_row_ok, sigmoid/tanh/tanh
    without input_forget."""
    return (small_row_ok(s, u0, u1) and not s.flag
            and codes[0] == SIGMOID and codes[1] == TANH and codes[2] == TANH)


SMALL_STEP = bool(LI_SMALL_STEP)  # this build has li_lstm_step1_small (AVX-512)


cdef inline bint small_gru_ok(const Seq* s, const int* codes, idx u0, idx u1) noexcept nogil:
    """small_step_ok for GRU: small_row_ok, linear_before_reset (one task a step) with sigmoid/tanh."""
    return small_row_ok(s, u0, u1) and s.flag and codes[0] == SIGMOID and codes[1] == TANH


def small_steps_run():
    """How many directions of sequence calls so far ran their active steps through
    li_lstm_step1_small or li_gru_lbr_step1_small, for tests."""
    return li_small_steps_run


cdef void lstm_task(const Seq* s, idx d, bint reverse, idx k, idx u0, idx u1) noexcept nogil:
    """Task k of direction d for hidden units [u0, u1): k = -1 the input projection and the
    initial state, 0 <= k < T step k, k = T the final state (see run_sequence)."""
    cdef idx T = s.T, B = s.B, H = s.H, GH = 4 * s.H
    cdef float* xp = s.scratch
    cdef float* gates = xp + padded(s.chunk * B * GH)
    cdef float* hbuf = gates + padded(B * GH)
    cdef float* c = hbuf + padded(2 * B * H)
    cdef const float* peep = segment(s, d, SEG_PEEP)
    cdef const int* codes = s.codes + 3 * d
    cdef const float* ab = s.fparams + 6 * d
    cdef idx t, b, tb, n = u1 - u0
    cdef bint active
    cdef float* hp = hbuf + (k & 1) * B * H  # the state alternates between two buffers
    cdef float* hn = hbuf + (1 - (k & 1)) * B * H
    if k < 0:
        init_states(s, d, hbuf, c, u0, u1)
        return
    if k == T:
        store_states(s, d, hp, c, u0, u1)
        if small_step_ok(s, codes, u0, u1) and (not s.has_lens or s.lens[0] > 0):
            li_count_small_steps()
        return
    t = T - 1 - k if reverse else k
    tb = chunk_start(s, GH, k, reverse)
    if vnni_step_ok(s, codes, t, u0, u1):  # batch 1, int8: product and cells in one pass (li_cells.h)
        project_chunk(s, d, k, reverse, 4, xp, u0, u1)
        li_vnni_lstm_step1(hp, H, s.qpbuf + s.poff[d * 3 + 1], s.qscale + s.qsoff[d * 3 + 1],
                           xp_row(s, xp, GH, t, 0, tb), gates, hn, c, peep, peep + H, peep + 2 * H,
                           s.Y + t * s.y_t + d * s.y_d, s.clip, k & 1)  # Y written by the cells (finish_row's copy)
        if k == 0:
            li_count_vnni_steps()
        return
    if small_step_ok(s, codes, u0, u1) and (not s.has_lens or t < s.lens[0]):
        # batch 1, small H: product and cells in registers (li_cells.h)
        project_chunk(s, d, k, reverse, 4, xp, u0, u1)
        li_lstm_step1_small(xp_row(s, xp, GH, t, 0, tb), hp, hn, c, s.Y + t * s.y_t + d * s.y_d,
                            panels_of(s, d, 1), H, peep, s.clip)
        return
    if s.flip:  # R then W, each last panel first (see flip_products)
        product_units(s, d, 1, hp, B, H, 0, 4, gates, GH, NULL, True, u0, u1)
        project_chunk(s, d, k, reverse, 4, xp, u0, u1, True)
    else:
        project_chunk(s, d, k, reverse, 4, xp, u0, u1)
        product_units(s, d, 1, hp, B, H, 0, 4, gates, GH, NULL, k & 1, u0, u1)
    for b in range(B):
        active = (not s.has_lens) or t < s.lens[b]
        if active:
            lstm_cells(xp_row(s, xp, GH, t, b, tb) + u0, gates + b * GH + u0, hn + b * H + u0, c + b * H + u0,
                       peep + u0, peep + H + u0, peep + 2 * H + u0, n, H, s.clip, s.flag, codes, ab)
        finish_row(s, active, hn + b * H, hp + b * H, t, d, b, u0, u1)


# ------------------------------------------------------------------ GRU --

cdef void gru_zr(cfptr x, fptr g, cfptr hp, fptr rh, idx H, idx S, float clip,
                 int code, float alpha, float beta) noexcept nogil:
    """z (kept in g[:H]) and r * h_prev (into rh) of H units, gates S apart, for linear_before_reset = 0."""
    cdef idx j = 0
    if code == SIGMOID:
        j = li_gru_zr_std(x, g, hp, rh, H, S, clip)
        if j == H:
            return
        x, g, hp, rh, H = x + j, g + j, hp + j, rh + j, H - j  # (now H < S: z and r one pass each)
    for j in range(H):
        g[j] = clampf(x[j] + g[j], clip)
        g[S + j] = clampf(x[S + j] + g[S + j], clip)
    if S == H:
        act_inplace(g, 2 * H, code, alpha, beta)
    else:
        act_inplace(g, H, code, alpha, beta)
        act_inplace(g + S, H, code, alpha, beta)
    for j in range(H):
        rh[j] = g[S + j] * hp[j]


cdef void gru_output(cfptr xh, cfptr z, fptr gh, cfptr hp, fptr h, idx H, float clip,
                     int code, float alpha, float beta) noexcept nogil:
    """h~ = g(xh + gh) and H = (1 - z) h~ + z h_prev; gh holds the recurrent part (overwritten)."""
    cdef idx j = 0
    if code == TANH:
        j = li_gru_output_std(xh, z, gh, hp, h, H, clip)
        if j == H:
            return
        xh, z, gh, hp, h, H = xh + j, z + j, gh + j, hp + j, h + j, H - j
    for j in range(H):
        gh[j] = clampf(xh[j] + gh[j], clip)
    act_inplace(gh, H, code, alpha, beta)
    for j in range(H):
        h[j] = (LI_ONE - z[j]) * gh[j] + z[j] * hp[j]


cdef void gru_lbr_cells(cfptr x, fptr g, cfptr hp, fptr h, cfptr rbh, idx H, idx S, float clip,
                        const int* codes, const float* ab) noexcept nogil:
    """linear_before_reset: h~ = g(xh + r (h_prev . Rh^T + Rbh)); the whole step of H units
    (gates S apart in x and g)."""
    cdef idx j = 0
    if codes[0] == SIGMOID and codes[1] == TANH:
        j = li_gru_lbr_cells_std(x, g, hp, h, rbh, H, S, clip)
        if j == H:
            return
        x, g, hp, h, rbh, H = x + j, g + j, hp + j, h + j, rbh + j, H - j  # (now H < S)
    for j in range(H):
        g[j] = clampf(x[j] + g[j], clip)
        g[S + j] = clampf(x[S + j] + g[S + j], clip)
    if S == H:  # z and r adjacent: one pass
        act_inplace(g, 2 * H, codes[0], ab[0], ab[1])
    else:
        act_inplace(g, H, codes[0], ab[0], ab[1])
        act_inplace(g + S, H, codes[0], ab[0], ab[1])
    for j in range(H):  # fold r into the recurrent part, then the common output
        g[2 * S + j] = g[S + j] * (g[2 * S + j] + rbh[j])
    gru_output(x + 2 * S, g, g + 2 * S, hp, h, H, clip, codes[1], ab[2], ab[3])


cdef void gru_task(const Seq* s, idx d, bint reverse, idx k, idx u0, idx u1, int phase) noexcept nogil:
    """``lstm_task`` for GRU. Without linear_before_reset a step is two tasks (``phase`` 0:
    z and r * h_prev; 1: the candidate, whose product reads all of r * h_prev)."""
    cdef idx T = s.T, B = s.B, H = s.H, GH = 3 * s.H
    cdef float* xp = s.scratch
    cdef float* gates = xp + padded(s.chunk * B * GH)
    cdef float* hbuf = gates + padded(B * GH)
    cdef float* rh = hbuf + padded(2 * B * H) + padded(B * H)
    cdef const float* rbh = segment(s, d, SEG_BIAS_RH)
    cdef const int* codes = s.codes + 2 * d
    cdef const float* ab = s.fparams + 4 * d
    cdef idx t, b, tb, n = u1 - u0
    cdef bint active
    cdef float* hp = hbuf + (k & 1) * B * H
    cdef float* hn = hbuf + (1 - (k & 1)) * B * H
    cdef const float* x
    if k < 0:
        init_states(s, d, hbuf, NULL, u0, u1)
        return
    if k == T:
        store_states(s, d, hp, NULL, u0, u1)
        if small_gru_ok(s, codes, u0, u1) and (not s.has_lens or s.lens[0] > 0):
            li_count_small_steps()
        return
    t = T - 1 - k if reverse else k
    tb = chunk_start(s, GH, k, reverse)
    if small_gru_ok(s, codes, u0, u1) and (not s.has_lens or t < s.lens[0]):
        # batch 1, small H, linear_before_reset: products and cells in registers (li_cells.h)
        project_chunk(s, d, k, reverse, 3, xp, u0, u1)
        li_gru_lbr_step1_small(xp_row(s, xp, GH, t, 0, tb), hp, hn, s.Y + t * s.y_t + d * s.y_d,
                               panels_of(s, d, 1), panels_of(s, d, 2), H, rbh, s.clip)
        return
    if s.flip and phase == 0:  # the recurrent products of phase 0 first, then W, each last panel first
        if s.flag:
            product_units(s, d, 2, hp, B, H, 2 * H, 1, gates, GH, NULL, True, u0, u1)
        product_units(s, d, 1, hp, B, H, 0, 2, gates, GH, NULL, True, u0, u1)
        project_chunk(s, d, k, reverse, 3, xp, u0, u1, True)
    elif phase == 0:
        project_chunk(s, d, k, reverse, 3, xp, u0, u1)
    if s.flag:  # linear_before_reset
        if not s.flip:
            product_units(s, d, 1, hp, B, H, 0, 2, gates, GH, NULL, k & 1, u0, u1)
            product_units(s, d, 2, hp, B, H, 2 * H, 1, gates, GH, NULL, k & 1, u0, u1)
        for b in range(B):
            active = (not s.has_lens) or t < s.lens[b]
            if active:
                gru_lbr_cells(xp_row(s, xp, GH, t, b, tb) + u0, gates + b * GH + u0, hp + b * H + u0,
                              hn + b * H + u0, rbh + u0, n, H, s.clip, codes, ab)
            finish_row(s, active, hn + b * H, hp + b * H, t, d, b, u0, u1)
        return
    if phase == 0:  # z and r first: the candidate's product needs all of r * h_prev
        if not s.flip:
            product_units(s, d, 1, hp, B, H, 0, 2, gates, GH, NULL, k & 1, u0, u1)
        for b in range(B):
            if (not s.has_lens) or t < s.lens[b]:
                gru_zr(xp_row(s, xp, GH, t, b, tb) + u0, gates + b * GH + u0, hp + b * H + u0, rh + b * H + u0,
                       n, H, s.clip, codes[0], ab[0], ab[1])
            else:
                memset(rh + b * H + u0, 0, n * sizeof(float))
        return
    product_units(s, d, 2, rh, B, H, 2 * H, 1, gates, GH, NULL, k & 1, u0, u1)
    for b in range(B):
        active = (not s.has_lens) or t < s.lens[b]
        if active:
            x = xp_row(s, xp, GH, t, b, tb)
            gru_output(x + 2 * H + u0, gates + b * GH + u0, gates + b * GH + 2 * H + u0, hp + b * H + u0,
                       hn + b * H + u0, n, s.clip, codes[1], ab[2], ab[3])
        finish_row(s, active, hn + b * H, hp + b * H, t, d, b, u0, u1)


# ------------------------------------------------------------------ RNN --

cdef void rnn_cells(cfptr x, cfptr g, fptr h, idx H, float clip, int code, float alpha, float beta) noexcept nogil:
    """H units of one row: h = f(x + g)."""
    cdef idx j
    for j in range(H):
        h[j] = clampf(x[j] + g[j], clip)
    act_inplace(h, H, code, alpha, beta)


cdef void rnn_task(const Seq* s, idx d, bint reverse, idx k, idx u0, idx u1) noexcept nogil:
    """``lstm_task`` for RNN."""
    cdef idx T = s.T, B = s.B, H = s.H
    cdef float* xp = s.scratch
    cdef float* gates = xp + padded(s.chunk * B * H)
    cdef float* hbuf = gates + padded(B * H)
    cdef int code = s.codes[d]
    cdef float alpha = s.fparams[2 * d], beta = s.fparams[2 * d + 1]
    cdef idx t, b, tb, n = u1 - u0
    cdef bint active
    cdef float* hp = hbuf + (k & 1) * B * H
    cdef float* hn = hbuf + (1 - (k & 1)) * B * H
    if k < 0:
        init_states(s, d, hbuf, NULL, u0, u1)
        return
    if k == T:
        store_states(s, d, hp, NULL, u0, u1)
        return
    t = T - 1 - k if reverse else k
    if s.flip:  # R then W, each last panel first (see flip_products)
        product_units(s, d, 1, hp, B, H, 0, 1, gates, H, NULL, True, u0, u1)
        project_chunk(s, d, k, reverse, 1, xp, u0, u1, True)
    else:
        project_chunk(s, d, k, reverse, 1, xp, u0, u1)
        product_units(s, d, 1, hp, B, H, 0, 1, gates, H, NULL, k & 1, u0, u1)
    tb = chunk_start(s, H, k, reverse)
    for b in range(B):
        active = (not s.has_lens) or t < s.lens[b]
        if active:
            rnn_cells(xp_row(s, xp, H, t, b, tb) + u0, gates + b * H + u0, hn + b * H + u0, n, s.clip,
                      code, alpha, beta)
        finish_row(s, active, hn + b * H, hp + b * H, t, d, b, u0, u1)


# ------------------------------------------------------ fused one step --
# One-step calls (T = 1) of a batch: StreamPool.step, many streams at once. The general path
# projects x (x W^T + bias into scratch), multiplies h by R^T into scratch, then reads both
# back in the gate pass, and copies the state in and out of scratch. li_lstm_step4 does
# it all in registers per 4 rows and LI_VEC units, reading h0/c0 and writing Y, Y_h, Y_c
# directly.

# Smallest batch that takes it: at 1..3 rows a 4-row tile would mostly compute padding,
# where the general path's li_tile_rows reads each panel once for just those rows.
cdef enum:
    STEP_MIN_ROWS = 4
FUSED_STEP_MIN_ROWS = STEP_MIN_ROWS
FUSED_STEP = bool(LI_STEP_FUSED)  # this build has the fused step (AVX-512)
FUSED_STEP_MAX_BYTES = STEP_MAX_BYTES


def fused_steps_run():
    """How many calls so far ran as one fused LSTM step (lstm_step_fused), for tests."""
    return li_fused_steps_run


# Largest W + R (per direction) that takes it: each 4-row group reads all of them, which pays
# only while they stay in L2 (the general path's products keep each panel in L1 for every row).
cdef enum:
    STEP_MAX_BYTES = 1024 * 1024


cdef bint fused_step_ok(const Seq* s, int op) noexcept nogil:
    """Whether this call is one LSTM step that li_lstm_step4 runs: an AVX-512 build, float32
    weights up to STEP_MAX_BYTES, T = 1 at FUSED_STEP_MIN_ROWS+ rows (each thread's rows of a
    batch split), whole vectors of hidden units, sigmoid/tanh/tanh without input_forget in
    every direction. (Clip, peepholes, sequence_lens, both directions and layouts: all run here.)"""
    cdef idx d
    if not (LI_STEP_FUSED and op == OP_LSTM and s.T == 1 and s.B >= STEP_MIN_ROWS and s.qkind == QK_FLOAT
            and s.xtable == NULL and s.sched == NULL and not s.flag and s.H % LI_VEC == 0
            and 4 * s.H * (s.I + s.H) * sizeof(float) <= STEP_MAX_BYTES):
        return False
    for d in range(s.D):
        if s.codes[3 * d] != SIGMOID or s.codes[3 * d + 1] != TANH or s.codes[3 * d + 2] != TANH:
            return False
    return True


cdef bint all_zero(const float* v, idx n) noexcept nogil:
    cdef idx i
    for i in range(n):
        if v[i] != 0:
            return False
    return True


cdef void keep_state_row(const Seq* s, idx d, idx b, const float* zeros) noexcept nogil:
    """A row that sequence_lens ends before the step: Y zero, Y_h/Y_c its initial state."""
    cdef idx H = s.H
    cdef const float* h = s.h0 + d * s.h0_d + b * s.h0_b if s.has_h0 else zeros
    cdef const float* c = s.c0 + d * s.c0_d + b * s.c0_b if s.has_c0 else zeros
    memset(s.Y + d * s.y_d + b * s.y_b, 0, H * sizeof(float))
    memmove(s.Sh + d * s.s_d + b * s.s_b, h, H * sizeof(float))  # memmove: run_into's states are h0/c0
    memmove(s.Sc + d * s.s_d + b * s.s_b, c, H * sizeof(float))


cdef void lstm_step_group(const Seq* s, idx d, idx b0, float* zeros, const float* peep) noexcept nogil:
    """Rows b0 .. b0+3 of direction d through li_lstm_step4 (past the batch: padded with row
    b0, never stored). run_into passes Y_h = h0 and Y_c = c0: each tile reads and writes c
    only in its own units, and the group's Y_h rows are written from Y once its last tile
    has read h. ``zeros``: H zero floats (h0/c0 when not given); ``peep``: NULL if all zero."""
    cdef idx H = s.H, b, r, j
    cdef const float* xr[4]
    cdef const float* hr[4]
    cdef const float* cr[4]
    cdef float* yr[4]
    cdef float* cnr[4]
    cdef const float* wpanels = panels_of(s, d, 0)
    cdef const float* rpanels = panels_of(s, d, 1)
    cdef const float* bias = segment(s, d, SEG_BIAS_X)
    cdef bint clipped = s.clip < INFINITY
    cdef int store = 0
    for r in range(4):
        b = b0 + r if b0 + r < s.B else b0
        xr[r] = s.X + b * s.I  # T = 1: row b of X in either layout
        hr[r] = s.h0 + d * s.h0_d + b * s.h0_b if s.has_h0 else zeros
        cr[r] = s.c0 + d * s.c0_d + b * s.c0_b if s.has_c0 else zeros
        yr[r] = s.Y + d * s.y_d + b * s.y_b
        cnr[r] = s.Sc + d * s.s_d + b * s.s_b
        if b0 + r < s.B and (not s.has_lens or s.lens[b] > 0):
            store |= 1 << r
    j = 0
    while j < H:
        li_lstm_step4(xr, hr, cr, s.I, H, j, wpanels, rpanels, bias, peep, s.clip, clipped, store, yr, cnr)
        j += LI_VEC
    for r in range(4):
        b = b0 + r
        if b >= s.B:
            break
        if store >> r & 1:
            memcpy(s.Sh + d * s.s_d + b * s.s_b, yr[r], H * sizeof(float))
        else:
            keep_state_row(s, d, b, zeros)


cdef const float* nonzero_peepholes(const Seq* s, idx d) noexcept nogil:
    """Direction d's peepholes, NULL when all zero (the tiles then skip their multiply-adds,
    a tenth of the cells' share)."""
    cdef const float* peep = segment(s, d, SEG_PEEP)
    return NULL if all_zero(peep, 3 * s.H) else peep


cdef void lstm_step_fused(const Seq* s, float* zeros) noexcept nogil:
    """A one-step call through li_lstm_step4, 4 rows at a time, every direction."""
    cdef idx d, b0
    cdef const float* peep
    memset(zeros, 0, s.H * sizeof(float))
    for d in range(s.D):
        peep = nonzero_peepholes(s, d)
        b0 = 0
        while b0 < s.B:
            lstm_step_group(s, d, b0, zeros, peep)
            b0 += 4


cdef void lstm_step_claimed(const Seq* whole, li_range* ranges, int parts, int me, float* zeros) noexcept nogil:
    """This thread's share of a batch split's one-step call: the 4-row groups (of every
    direction) of its own range, then those left in the other parts' ranges, so that a
    thread that starts late (the caller runs run_into's ``then`` first) or whose core is
    slower now takes fewer groups instead of holding up the call. (Whole groups: finer items
    cost more in claims than they save.)"""
    cdef idx groups = (whole.B + 3) // 4, d, last_d = -1
    cdef int g, k, q
    cdef const float* peep = NULL
    memset(zeros, 0, whole.H * sizeof(float))
    for k in range(parts):
        q = (me + k) % parts
        while True:
            g = li_range_claim(&ranges[q])
            if g < 0:
                break
            d = g // groups
            if d != last_d:
                peep, last_d = nonzero_peepholes(whole, d), d
            lstm_step_group(whole, d, g % groups * 4, zeros, peep)


cdef inline idx tasks_per_step(const Seq* s, int op) noexcept nogil:
    return 2 if op == OP_GRU and not s.flag else 1


cdef inline void run_task(const Seq* s, int op, idx task, idx u0, idx u1) noexcept nogil:
    """Task number ``task`` of the whole node: per direction the projection (k = -1), each
    step k (in ``tasks_per_step`` phases) and the final state (k = T)."""
    cdef idx m = tasks_per_step(s, op), per_direction = s.T * m + 2
    cdef idx d = task // per_direction, i = task % per_direction, k, phase = 0
    cdef bint reverse = s.reverse_first or d == 1
    if i == 0:
        k = -1
    elif i == per_direction - 1:
        k = s.T
    else:
        k, phase = (i - 1) // m, (i - 1) % m
    if op == OP_LSTM:
        lstm_task(s, d, reverse, k, u0, u1)
    elif op == OP_GRU:
        gru_task(s, d, reverse, k, u0, u1, <int>phase)
    else:
        rnn_task(s, d, reverse, k, u0, u1)


cdef void run_shared(const Seq* s, int op) noexcept nogil:
    """This thread's share of a hidden-unit split: every task of its own block, and of a
    partner's block that its thread has not started in time (a descheduled thread on a busy
    machine would otherwise stall every step). Task i of any block starts only once task
    i - 1 of every block is done (a step reads all of h)."""
    cdef li_sched* sched = s.sched
    cdef int me = s.part, parts = sched.parts, b
    cdef idx i, ntasks = s.D * (s.T * tasks_per_step(s, op) + 2)
    cdef long long started, own_ns = 0, until
    cdef bint partner_away = False
    for i in range(ntasks):
        if li_block_claim(&sched.blocks[me], <int>i):
            started = li_now_ns()
            run_task(s, op, i, sched.bounds[me], sched.bounds[me + 1])
            own_ns = li_now_ns() - started
            li_block_finish(&sched.blocks[me], <int>i + 1)
        for b in range(parts):
            if li_block_done(&sched.blocks[b]) > i:
                continue
            # Wait for block b; take its task over if nobody started it in a few times our
            # own task's time (at once if its thread was already away last time).
            until = li_now_ns() + (0 if partner_away else 4 * own_ns + 2000)
            while li_block_done(&sched.blocks[b]) <= i:
                if b != me and li_now_ns() >= until and li_block_claim(&sched.blocks[b], <int>i):
                    run_task(s, op, i, sched.bounds[b], sched.bounds[b + 1])
                    li_block_finish(&sched.blocks[b], <int>i + 1)
                    partner_away = True
                    break
                li_relax()
            else:
                partner_away = False


cdef int run_sequence(const Seq* s, int op) noexcept nogil:
    cdef idx b, task
    cdef Seq local = s[0]
    if s.has_lens:
        for b in range(s.B):
            if s.lens[b] < 0 or s.lens[b] > s.T:
                return 1
    local.chunk = chunk_steps(s.T, s.B, s.H * (4 if op == OP_LSTM else 3 if op == OP_GRU else 1))
    if s.whole != NULL and fused_step_ok(s.whole, op):  # decided on the whole batch: alike in every part
        lstm_step_claimed(s.whole, s.ranges, s.parts, s.part, s.scratch)
        li_count_fused_step()
        return 0
    if s.whole == NULL and fused_step_ok(s, op):
        lstm_step_fused(s, s.scratch)
        li_count_fused_step()
        return 0
    if s.sched != NULL:
        run_shared(&local, op)
        return 0
    for task in range(s.D * (s.T * tasks_per_step(s, op) + 2)):
        run_task(&local, op, task, 0, s.H)
    return 0


# ------------------------------------------------------------ size checks --
# The def entry points run C over raw pointers with bounds checks off: each checks
# first (O(1) per direction) every size it then trusts.

cdef object bad(str who, str what, object expected, object got):
    return ValueError(f"{who}: {what}: expected {expected}, got {got}")


cdef inline idx panel_columns(idx n, idx nr) noexcept:
    return (n + nr - 1) // nr * nr


cdef int check_weights(str who, int op, idx D, idx I, idx H, int qkind, idx nr,
                       const long long[:, ::1] offsets, idx wbuf_n, const long long[:, ::1] poff, idx pbuf_n,
                       const long long[:, ::1] qsoff, idx qpbuf_n, idx qscale_n, idx codes_n,
                       idx fparams_n) except -1:
    """The packed constants cover everything run_sequence reads for D directions of I inputs
    and H units: the segments of ``offsets`` in wbuf, the three panel ranges of ``poff`` in
    pbuf (float32, in floats) or qpbuf (low precision, in bytes), their scales, the codes."""
    cdef idx G = gates_of(op), d, which, K, N, cols, need, start, end
    cdef idx split = 2 * H if op == OP_GRU else G * H
    if op != OP_LSTM and op != OP_GRU and op != OP_RNN:
        raise bad(who, "op", "0 (LSTM), 1 (GRU) or 2 (RNN)", op)
    if offsets.shape[0] != D or offsets.shape[1] != NUM_SEGMENTS:
        raise bad(who, "offsets shape", (D, NUM_SEGMENTS), (offsets.shape[0], offsets.shape[1]))
    if poff.shape[0] != D or poff.shape[1] != 3:
        raise bad(who, "poff shape", (D, 3), (poff.shape[0], poff.shape[1]))
    if codes_n < D * acts_of(op):
        raise bad(who, "codes length", f">= {D * acts_of(op)}", codes_n)
    if fparams_n < 2 * D * acts_of(op):
        raise bad(who, "fparams length", f">= {2 * D * acts_of(op)}", fparams_n)
    if qkind != QK_FLOAT and (qsoff.shape[0] != D or qsoff.shape[1] != 3):
        raise bad(who, "qsoff shape", (D, 3), (qsoff.shape[0], qsoff.shape[1]))
    for d in range(D):
        for which, need in ((SEG_BIAS_X, G * H), (SEG_BIAS_RH, H if op == OP_GRU else 0),
                            (SEG_PEEP, 3 * H if op == OP_LSTM else 0)):
            start = offsets[d, which]
            if start < 0 or start + need > wbuf_n:
                raise bad(who, f"wbuf segment {which} of direction {d}", f"{need} floats within {wbuf_n}",
                          f"offset {start}")
        for which in range(3):
            K = I if which == 0 else H
            N = G * H if which == 0 else (split if which == 1 else G * H - split)
            cols = panel_columns(N, nr)
            if qkind == QK_FLOAT:
                need, end = cols * K, pbuf_n
            elif qkind == QK_INT8:
                need, end = cols * K, qpbuf_n
            elif qkind == QK_BF16:
                need, end = 2 * cols * K, qpbuf_n
            else:  # QK_VNNI: per panel of LI_VNNI_NR columns, K rounded up to 4 rows, then its column sums
                cols = panel_columns(N, LI_VNNI_NR)
                need, end = cols // LI_VNNI_NR * ((K + 3) // 4 * 4 * LI_VNNI_NR + 4 * LI_VNNI_NR), qpbuf_n
            start = poff[d, which]
            if start < 0 or start + need > end:
                raise bad(who, f"panels {which} of direction {d}",
                          f"{need} {'floats' if qkind == QK_FLOAT else 'bytes'} within {end}", f"offset {start}")
            if qkind == QK_INT8 or qkind == QK_VNNI:
                start = qsoff[d, which]
                if start < 0 or start + cols > qscale_n:
                    raise bad(who, f"scales {which} of direction {d}", f"{cols} floats within {qscale_n}",
                              f"offset {start}")
    return 0


def sequence(int op, const float[:, :, ::1] X, const int[::1] lens, bint has_lens,
             const float[:, :, :] h0, bint has_h0, const float[:, :, :] c0, bint has_c0,
             float[:, :, :, :] Y, float[:, :, :, :] states,
             const float[::1] wbuf, const long long[:, ::1] offsets,
             const float[::1] pbuf, const long long[:, ::1] poff, const int[::1] codes,
             const float[::1] fparams, float[::1] scratch,
             bint reverse_first, bint flag, bint time_major, float clip,
             const signed char[::1] qpbuf=None, const float[::1] qscale=None, const long long[:, ::1] qsoff=None,
             int qkind=QK_INT8):
    """Run one recurrent node over a whole sequence, without the GIL. Returns 0, or 1 for bad lens.

    Arrays are in kernel order: Y viewed as [T, D, B, H], states as [S, D, B, H] (S = 2 for
    LSTM, else 1), h0/c0 as [D, B, H], all with any strides but unit stride along H (for
    layout=1 pass transposed views); ``pbuf``/``poff`` from ``pack_panels``, ``scratch`` of
    ``scratch_floats(T, B, G, H)``. Low-precision weights: ``qpbuf``/``qscale``/``qsoff`` from
    ``pack_int8_panels`` (``qkind`` QK_INT8), ``pack_vnni_panels`` (QK_VNNI) or
    ``pack_bf16_panels`` (QK_BF16, bytes; its scales unused); ``poff`` then holds byte offsets
    into ``qpbuf`` and ``pbuf`` is not read. Every size is checked (ValueError) before any is trusted.
    """
    if op != OP_LSTM and op != OP_GRU and op != OP_RNN:
        raise bad("sequence", "op", "0 (LSTM), 1 (GRU) or 2 (RNN)", op)
    if (qpbuf is None) != (qscale is None) or (qpbuf is None) != (qsoff is None):
        raise ValueError("sequence: qpbuf, qscale and qsoff come together")
    if qpbuf is not None and qkind not in (QK_INT8, QK_VNNI, QK_BF16):
        raise ValueError(f"sequence: qkind {qkind} is not a low-precision kind")
    # (the stride of a length-1 axis is meaningless: numpy may set anything there)
    if ((h0.shape[2] > 1 and h0.strides[2] != 4) or (c0.shape[2] > 1 and c0.strides[2] != 4)
            or (Y.shape[3] > 1 and Y.strides[3] != 4) or (states.shape[3] > 1 and states.strides[3] != 4)):
        raise ValueError("sequence: h0, c0, Y and states need unit stride along hidden units")
    cdef idx T = X.shape[0] if time_major else X.shape[1]
    cdef idx B = X.shape[1] if time_major else X.shape[0]
    cdef idx I = X.shape[2], D = states.shape[1], H = states.shape[3]
    cdef int kind = qkind if qpbuf is not None else QK_FLOAT
    cdef idx S = 2 if op == OP_LSTM else 1
    if states.shape[0] != S or states.shape[2] != B:
        raise bad("sequence", "states shape", (S, D, B, H),
                  (states.shape[0], states.shape[1], states.shape[2], states.shape[3]))
    if Y.shape[0] != T or Y.shape[1] != D or Y.shape[2] != B or Y.shape[3] != H:
        raise bad("sequence", "Y shape", (T, D, B, H), (Y.shape[0], Y.shape[1], Y.shape[2], Y.shape[3]))
    if has_lens and lens.shape[0] != B:
        raise bad("sequence", "lens length", B, lens.shape[0])
    if has_h0 and (h0.shape[0] != D or h0.shape[1] != B or h0.shape[2] != H):
        raise bad("sequence", "h0 shape", (D, B, H), (h0.shape[0], h0.shape[1], h0.shape[2]))
    if has_c0 and op == OP_LSTM and (c0.shape[0] != D or c0.shape[1] != B or c0.shape[2] != H):
        raise bad("sequence", "c0 shape", (D, B, H), (c0.shape[0], c0.shape[1], c0.shape[2]))
    check_weights("sequence", op, D, I, H, kind, 2 * LI_VEC, offsets, wbuf.shape[0], poff, pbuf.shape[0],
                  qsoff, qpbuf.shape[0] if qpbuf is not None else 0, qscale.shape[0] if qscale is not None else 0,
                  codes.shape[0], fparams.shape[0])
    if scratch.shape[0] < scratch_need(T, B, gates_of(op), H):
        raise bad("sequence", "scratch length", f">= {scratch_need(T, B, gates_of(op), H)}", scratch.shape[0])
    cdef Seq s
    s.X = &X[0, 0, 0]
    s.time_major = time_major
    s.T, s.B, s.I, s.D, s.H = T, B, I, D, H
    s.lens = &lens[0] if has_lens else NULL
    s.has_lens = has_lens
    s.h0 = &h0[0, 0, 0]
    s.h0_d = h0.strides[0] // 4
    s.h0_b = h0.strides[1] // 4
    s.has_h0 = has_h0
    s.c0 = &c0[0, 0, 0]
    s.c0_d = c0.strides[0] // 4
    s.c0_b = c0.strides[1] // 4
    s.has_c0 = has_c0 and op == OP_LSTM
    s.Y = &Y[0, 0, 0, 0]
    s.y_t = Y.strides[0] // 4
    s.y_d = Y.strides[1] // 4
    s.y_b = Y.strides[2] // 4
    s.Sh = &states[0, 0, 0, 0]
    s.Sc = (s.Sh + states.strides[0] // 4) if op == OP_LSTM else NULL
    s.s_d = states.strides[1] // 4
    s.s_b = states.strides[2] // 4
    s.wbuf = &wbuf[0]
    s.offsets = &offsets[0, 0]
    s.pbuf = &pbuf[0]
    s.poff = &poff[0, 0]
    s.qpbuf = &qpbuf[0] if qpbuf is not None else NULL
    s.qscale = &qscale[0] if qscale is not None else NULL
    s.qsoff = &qsoff[0, 0] if qsoff is not None else NULL
    s.qkind = kind
    s.codes = &codes[0]
    s.fparams = &fparams[0]
    s.scratch = &scratch[0]
    s.reverse_first = reverse_first
    s.flag = flag
    s.clip = clip
    s.sched, s.part = NULL, 0
    s.whole, s.ranges, s.parts = NULL, NULL, 1
    s.flip = False
    s.xtable, s.vocab, s.ids, s.id_bytes, s.ids_t, s.ids_b = NULL, 0, NULL, 0, 0, 0
    cdef int status
    with nogil:
        status = run_sequence(&s, op)
    return status


# ------------------------------------------------------- per-call entry --
# A def taking ~20 typed memoryviews costs several times a small step's arithmetic. So a
# kernel is a KernelCore (cython_backend.CythonKernel subclasses it): everything constant is
# turned into raw pointers once, at load, and __call__ (a C slot: no Python frame) checks the
# few per-call arrays through numpy's C API, allocates the outputs and runs. Anything unusual
# returns to the Python path (CythonKernel._slow), which keeps every fallback and error.

ctypedef int (*sequence_fn)(const Seq* s, int op) noexcept nogil
ctypedef void (*project_fn)(const Seq* s, idx d, const float* A, idx M, idx GH, float* C, idx ldc) noexcept nogil


cdef void project_rows(const Seq* s, idx d, const float* A, idx M, idx GH, float* C, idx ldc) noexcept nogil:
    """C[m, :GH] = A[m] . W_d^T + direction d's input bias, for m < M: input_projections' products
    (this build's, on the panels it packed)."""
    product(s, d, 0, A, M, s.I, 0, GH, C, ldc, segment(s, d, SEG_BIAS_X))


# A stream of one-step calls reads W then R in every call. Every other call (Seq.flip) reads
# them in the opposite order, R then W, each last panel first, so that it starts on the panels
# the previous call left in L2; beyond ~1.5 MiB the reversed scan's worse prefetch from L3 costs
# more. One direction only (two would alternate W0 R0 W1 R1); panel order never changes a sum.
cdef enum:
    FLIP_MAX_BYTES = 3 * 1024 * 1024 // 2


cdef bint flip_products(idx directions, idx weights, int qkind) noexcept:
    """Whether one-step calls alternate the order of their products (``weights``: floats of W and R)."""
    return directions == 1 and qkind == QK_FLOAT and weights * 4 <= FLIP_MAX_BYTES


# Smallest hidden size whose units are split across threads at small batch: below it a step
# is a few microseconds, and a barrier per step costs more than half of it.
UNIT_SPLIT_MIN_H = 128


cdef extern from "stdlib.h":
    int posix_memalign(void** memptr, size_t alignment, size_t size) nogil


cdef float* aligned_floats(idx n) noexcept nogil:
    """n floats on a 64-byte boundary (NULL if out of memory; free() releases them), so that the
    scratch's rows (each padded to ALIGN_FLOATS) start on cache lines: no split vector loads."""
    cdef void* p = NULL
    if posix_memalign(&p, 64, (n if n > 0 else 1) * sizeof(float)) != 0:
        return NULL
    return <float*>p


cdef struct Part:  # one thread's share of a batch split
    Seq s
    sequence_fn run
    int op


cdef int run_part(void* arg) noexcept nogil:
    cdef Part* part = <Part*>arg
    return part.run(&part.s, part.op)

cdef struct Build:  # what a KernelCore (the portable build's class) needs of the build that runs
    sequence_fn run
    project_fn project
    idx panel_width


cdef const char* BUILD_NAME = "lstminfer._native._rnn_kernels.build"
cdef Build BUILD
BUILD.run, BUILD.project, BUILD.panel_width = run_sequence, project_rows, 2 * LI_VEC
# This build's run_sequence and panel width, for the KernelCore of any build (they share Seq).
RUN_SEQUENCE = PyCapsule_New(<void*>&BUILD, BUILD_NAME, NULL)

cdef object _NDARRAY = np.ndarray


cdef inline object empty3(idx a, idx b, idx c):
    """np.empty((a, b, c), float32) through numpy's C API (a third of np.empty's call cost)."""
    cdef cnp.npy_intp dims[3]
    dims[0], dims[1], dims[2] = a, b, c
    return cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)


cdef inline object empty4(idx a, idx b, idx c, idx d):
    cdef cnp.npy_intp dims[4]
    dims[0], dims[1], dims[2], dims[3] = a, b, c, d
    return cnp.PyArray_EMPTY(4, dims, cnp.NPY_FLOAT32, 0)
cdef object _FLOAT32 = np.dtype(np.float32)
cdef object _INT32 = np.dtype(np.int32)


# Per-call checks of arrays already known to be exact ndarrays (``type(v) is _NDARRAY``), through
# numpy's C API on the borrowed object (no reference counting). Exact dtype objects: the
# canonical native float32 / int32 descrs, one pointer comparison each.

cdef inline bint has_flags(cnp.ndarray a, int flags) noexcept:
    return (cnp.PyArray_FLAGS(a) & flags) == flags


cdef inline bint f32_array(object value, int nd) noexcept:
    """An exact ndarray of native float32 (the canonical descr), rank nd, aligned, strides in floats."""
    cdef int k
    if type(value) is not _NDARRAY:
        return False
    cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(<cnp.ndarray>value)
    if (cnp.PyArray_NDIM(<cnp.ndarray>value) != nd or <void*>cnp.PyArray_DESCR(<cnp.ndarray>value) != <void*>_FLOAT32
            or not has_flags(<cnp.ndarray>value, cnp.NPY_ARRAY_ALIGNED)):
        return False
    for k in range(nd):
        if strides[k] % 4:
            return False
    return True


cdef inline bint owned_state(object value) noexcept:
    """An exact ndarray, C-contiguous and writeable: a state run_into may overwrite."""
    return type(value) is _NDARRAY and has_flags(<cnp.ndarray>value,
                                                 cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_WRITEABLE)


cdef inline bint fits4(object value, idx a, idx b, idx c, idx d) noexcept:
    """An exact float32 ndarray [a, b, c, d], C-contiguous, aligned and writeable: an ``out`` run_into may fill."""
    if value is None or type(value) is not _NDARRAY:
        return False
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(<cnp.ndarray>value)
    return (<void*>cnp.PyArray_DESCR(<cnp.ndarray>value) == <void*>_FLOAT32
            and cnp.PyArray_NDIM(<cnp.ndarray>value) == 4
            and dims[0] == a and dims[1] == b and dims[2] == c and dims[3] == d
            and has_flags(<cnp.ndarray>value,
                          cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED | cnp.NPY_ARRAY_WRITEABLE))


cdef inline float* data_of(object array) noexcept:
    return <float*>cnp.PyArray_DATA(<cnp.ndarray>array)


cdef class KernelCore:
    """The per-call fast path of a recurrent kernel; ``_bind_core`` once at load, then call it.

    ``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P])``: with the
    packed constants W/R/B/P (by identity), float32 X, h0, c0 of the exact
    shapes and int32 lens, runs here; otherwise (or for sequence_lens out of
    range) calls ``self._slow`` with the same arguments.
    """
    cdef sequence_fn run
    cdef project_fn project
    cdef bint ready
    cdef object constants  # (W, R, B, P) as given at load; identity means "the packed ones"
    cdef object keep  # the arrays the pointers below point into
    cdef const float* wbuf
    cdef const long long* offsets
    cdef const float* pbuf
    cdef const long long* poff
    cdef const signed char* qpbuf  # int8 weights (NULL: float32)
    cdef const float* qscale
    cdef const long long* qsoff
    cdef int qkind
    cdef const int* codes
    cdef const float* fparams
    cdef int op, outputs
    cdef idx H, I, D, G, split_rows
    cdef bint check_p, time_major, reverse_first, flag
    cdef float clip
    # one scratch buffer for whichever call gets it first; a concurrent call
    # (another thread, while the GIL is released) takes the Python path's
    # per-thread buffer. busy is only read and set while holding the GIL.
    cdef float* scratch
    cdef idx scratch_size
    cdef bint scratch_busy
    # threads > 1: batches of split_rows+ rows are cut into ``threads`` parts, part 0 run by
    # the caller and the others by the process's worker threads (li_workers.h's li_pool, held
    # for the call); they use the scratch buffer too, so only its holder splits.
    cdef idx threads
    cdef char* part_jobs  # one Part per thread, each on cache lines of its own (part_at)
    cdef li_range* ranges  # a batch split's fused one step: each part's 4-row groups (lstm_step_claimed)
    # Below split_rows rows, threads split the hidden units instead (DeepCPU's partitioning:
    # each core keeps its slice of R in its own L2 across steps), scheduled step by step
    # through ``sched`` (run_shared); float32 LSTM, GRU and RNN with whole panels per part
    # (units_ok, set at load).
    cdef bint units_ok
    cdef li_sched sched
    # the float panel width of the build that runs (this class is the portable build's,
    # shared by every build: its own LI_VEC is not the running one's)
    cdef idx panel_width
    # one-step calls, counted for flip_products (which alternates the order of the products)
    cdef bint flip_ok
    cdef unsigned int steps

    def __dealloc__(self):
        free(self.part_jobs)
        free(self.sched.blocks)
        free(self.sched.bounds)
        free(self.ranges)
        free(self.scratch)

    def _bind_core(self, run_sequence_capsule, int op, W, R, B, P, bint check_p, wbuf, offsets, pbuf, poff,
                   codes, fparams, idx hidden_size, idx input_size, idx num_directions, idx gates, int outputs,
                   bint reverse_first, bint flag, bint time_major, float clip, idx split_rows,
                   qpbuf=None, qscale=None, qsoff=None, int qkind=QK_INT8, idx threads=1, idx panel_width=0):
        """Hold the packed constants (read-only arrays, kept alive here) as raw pointers, once
        checked to cover everything the kernel reads (ValueError otherwise)."""
        cdef const signed char[::1] qpbuf_v = None
        cdef const float[::1] qscale_v = None
        cdef const long long[:, ::1] qsoff_v = None
        cdef const Build* build = <const Build*>PyCapsule_GetPointer(run_sequence_capsule, BUILD_NAME)
        if (qpbuf is None) != (qscale is None) or (qpbuf is None) != (qsoff is None):
            raise ValueError("_bind_core: qpbuf, qscale and qsoff come together")
        if qpbuf is not None and qkind not in (QK_INT8, QK_VNNI, QK_BF16):
            raise ValueError(f"_bind_core: qkind {qkind} is not a low-precision kind")
        cdef int kind = qkind if qpbuf is not None else QK_FLOAT
        if qpbuf is not None:
            qpbuf_v, qscale_v, qsoff_v = qpbuf, qscale, qsoff
        cdef const float[::1] wbuf_v = wbuf
        cdef const long long[:, ::1] offsets_v = offsets
        cdef const float[::1] pbuf_v = pbuf
        cdef const long long[:, ::1] poff_v = poff
        cdef const int[::1] codes_v = codes
        cdef const float[::1] fparams_v = fparams
        if panel_width != 0 and panel_width != build.panel_width:
            raise bad("_bind_core", "panel_width (of the build that runs)", build.panel_width, panel_width)
        if gates != gates_of(op):
            raise bad("_bind_core", "gates", gates_of(op), gates)
        if threads < 1:
            raise bad("_bind_core", "threads", ">= 1", threads)
        check_weights("_bind_core", op, num_directions, input_size, hidden_size, kind, build.panel_width,
                      offsets_v, wbuf_v.shape[0], poff_v, pbuf_v.shape[0], qsoff_v,
                      qpbuf_v.shape[0] if qpbuf is not None else 0, qscale_v.shape[0] if qpbuf is not None else 0,
                      codes_v.shape[0], fparams_v.shape[0])
        self.run = build.run
        self.project = build.project
        self.keep = (wbuf, offsets, pbuf, poff, codes, fparams, qpbuf, qscale, qsoff)
        self.constants = (W, R, B, P)
        self.wbuf = &wbuf_v[0]
        self.offsets = &offsets_v[0, 0]
        self.pbuf = &pbuf_v[0]
        self.poff = &poff_v[0, 0]
        self.qkind = kind
        self.qpbuf = &qpbuf_v[0] if qpbuf is not None else NULL
        self.qscale = &qscale_v[0] if qpbuf is not None else NULL
        self.qsoff = &qsoff_v[0, 0] if qpbuf is not None else NULL
        self.codes = &codes_v[0]
        self.fparams = &fparams_v[0]
        self.op, self.outputs, self.check_p = op, outputs, check_p
        self.H, self.I, self.D, self.G = hidden_size, input_size, num_directions, gates
        self.reverse_first, self.flag, self.time_major, self.clip = reverse_first, flag, time_major, clip
        self.split_rows = split_rows
        self.threads = threads if split_rows else 1
        self.panel_width = build.panel_width
        self.flip_ok = flip_products(num_directions, gates * hidden_size * (input_size + hidden_size),
                                     self.qkind)
        self.steps = 0
        self.units_ok = (self.threads > 1 and self.qkind == QK_FLOAT and hidden_size >= UNIT_SPLIT_MIN_H
                         and hidden_size % self.panel_width == 0 and hidden_size // self.panel_width >= self.threads)
        self.ready = True

    @property
    def alternates_products(self):
        """Whether one-step calls alternate the order of their products (flip_products)."""
        return bool(self.flip_ok)

    @property
    def splits_units(self):
        """Whether batches below the batch split run with the hidden units split across threads."""
        return bool(self.units_ok)

    def packs(self, W, R, B, P=None):
        """Whether W, R, B (and P) are the constants this kernel packed (by identity): a compiled
        program calls the kernel on raw pointers (``call_kernel``) only then."""
        cdef tuple constants = <tuple>self.constants
        return bool(self.ready and W is constants[0] and R is constants[1] and B is constants[2]
                    and (P is constants[3] or not self.check_p))

    @property
    def layout_time_major(self):
        return bool(self.time_major)

    @property
    def call_sizes(self):
        """(I, D, H, LSTM?): what a program's Recurrent needs to bound the memory ``call_kernel`` touches."""
        if not self.ready:
            raise ValueError("kernel: not bound (_bind_core) yet")
        return (self.I, self.D, self.H, self.op == OP_LSTM)

    @property
    def call_gates(self):
        """Gates per hidden unit (4, 3, 1): a looked-up projection row holds D * gates * H floats."""
        return self.G

    @property
    def looks_up_projections(self):
        """Whether a compiled program may hand this kernel its input projections as rows of a table
        (``input_projections``) instead of X: float32 weights."""
        return bool(self.ready and self.qkind == QK_FLOAT)

    def input_projections(self, const float[:, ::1] rows):
        """[N, D, G*H]: each row of ``rows`` [N, I] through W plus the input bias, as this kernel
        projects a step's input (the same products: rows in groups of four), for a table that a
        compiled program's call looks up by id (li_call.h's xtable)."""
        if not self.looks_up_projections:
            raise ValueError("input_projections: needs a bound kernel with float32 weights")
        if rows.shape[1] != self.I:
            raise bad("input_projections", "row length (the input size)", self.I, rows.shape[1])
        cdef idx n = rows.shape[0], GH = self.G * self.H, d, padded_n = (rows.shape[0] + 3) // 4 * 4
        if n == 0:
            return np.zeros((0, self.D, GH), np.float32)
        # padded to whole groups of four rows: every row through the 4-row micro-kernel, as in a sequence
        cdef float[:, ::1] a = np.zeros((padded_n, self.I), np.float32)
        a[:n] = rows
        cdef float[:, ::1] full = np.empty((padded_n, self.D * GH), np.float32)
        cdef Seq s
        self.bind_constants(&s)
        with nogil:
            for d in range(self.D):
                self.project(&s, d, &a[0, 0], padded_n, GH, &full[0, d * GH], self.D * GH)
        return np.asarray(full)[:n].reshape(n, self.D, GH)

    def __call__(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        cdef tuple constants
        if self.ready:
            constants = <tuple>self.constants
            if (W is constants[0] and R is constants[1] and B is constants[2]
                    and (P is constants[3] or not self.check_p)):
                out = self.fast(X, sequence_lens, initial_h, initial_c)
                if out is not None:
                    return out
        return self._slow(X, W, R, B, sequence_lens, initial_h, initial_c, P)

    cdef bint state(self, Seq* s, object value, idx batch, bint is_c):
        """Point s at an initial state of shape [D, B, H] (layout 0) / [B, D, H]; False: Python path."""
        cdef idx ax_d = 0 if self.time_major else 1
        if value is None:
            return True
        if not f32_array(value, 3):
            return False
        cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(<cnp.ndarray>value)
        cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(<cnp.ndarray>value)
        if dims[ax_d] != self.D or dims[1 - ax_d] != batch or dims[2] != self.H or (strides[2] != 4 and self.H > 1):
            return False
        if is_c:
            s.c0, s.has_c0 = data_of(value), True
            s.c0_d, s.c0_b = strides[ax_d] // 4, strides[1 - ax_d] // 4
        else:
            s.h0, s.has_h0 = data_of(value), True
            s.h0_d, s.h0_b = strides[ax_d] // 4, strides[1 - ax_d] // 4
        return True

    cdef int bind(self, Seq* s, object X, object lens, object h0, object c0) except -1:
        """Point ``s`` at the per-call inputs and the constants; 1: these need the Python path."""
        cdef idx T, batch
        cdef cnp.npy_intp* dims
        if not f32_array(X, 3) or not has_flags(<cnp.ndarray>X, cnp.NPY_ARRAY_C_CONTIGUOUS):
            return 1
        dims = cnp.PyArray_DIMS(<cnp.ndarray>X)
        if dims[2] != self.I:
            return 1
        T = dims[0] if self.time_major else dims[1]
        batch = dims[1] if self.time_major else dims[0]
        if T == 0 or batch == 0:
            return 1
        s.X = data_of(X)
        s.has_lens, s.has_h0, s.has_c0 = False, False, False
        s.lens, s.h0, s.c0 = NULL, NULL, NULL
        if lens is not None:
            if type(lens) is not _NDARRAY:
                return 1
            if (<void*>cnp.PyArray_DESCR(<cnp.ndarray>lens) != <void*>_INT32 or cnp.PyArray_NDIM(<cnp.ndarray>lens) != 1
                    or cnp.PyArray_DIMS(<cnp.ndarray>lens)[0] != batch
                    or not has_flags(<cnp.ndarray>lens, cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED)):
                return 1
            s.lens, s.has_lens = <const int*>cnp.PyArray_DATA(<cnp.ndarray>lens), True
        if not self.state(s, h0, batch, False):
            return 1
        if self.op == OP_LSTM and not self.state(s, c0, batch, True):
            return 1
        s.T, s.B = T, batch
        self.bind_constants(s)
        return 0

    cdef void bind_constants(self, Seq* s) noexcept:
        """Point ``s`` at this kernel's sizes, packed weights and settings, one whole call in
        this thread (no batch split, no unit schedule)."""
        s.I, s.H, s.D = self.I, self.H, self.D
        s.time_major = self.time_major
        s.wbuf, s.offsets, s.pbuf, s.poff = self.wbuf, self.offsets, self.pbuf, self.poff
        s.qpbuf, s.qscale, s.qsoff, s.qkind = self.qpbuf, self.qscale, self.qsoff, self.qkind
        s.codes, s.fparams = self.codes, self.fparams
        s.reverse_first, s.flag, s.clip = self.reverse_first, self.flag, self.clip
        s.sched, s.part = NULL, 0
        s.whole, s.ranges, s.parts = NULL, NULL, 1
        s.flip = False
        s.xtable, s.vocab, s.ids, s.id_bytes, s.ids_t, s.ids_b = NULL, 0, NULL, 0, 0, 0

    cdef void output_strides(self, Seq* s) noexcept:
        """Y and state strides for outputs allocated in the node's layout (fresh, C order)."""
        cdef idx T = s.T, batch = s.B, H = self.H, D = self.D
        if self.time_major:
            s.y_t, s.y_d, s.y_b = D * batch * H, batch * H, H
            s.s_d, s.s_b = batch * H, H
        else:
            s.y_t, s.y_d, s.y_b = D * H, H, T * D * H
            s.s_d, s.s_b = H, D * H

    cdef int launch(self, Seq* s, object then=None, object Y=None, list result=None) except -1:
        """Run ``s`` (inputs and outputs bound) by one of three strategies: in this thread, its
        hidden units split across the workers, or its batch split across them. Returns
        run_sequence's status (1: sequence_lens out of range). ``then``: appends then(Y) to
        ``result``, while the workers compute when the batch is split, else after the run."""
        cdef idx parts
        cdef int status
        cdef float* scratch
        cdef li_worker* workers
        if self.flip_ok and s.T == 1:
            s.flip = self.steps & 1
            self.steps += 1
        if self.scratch_busy and self.threads > 1 and self.split_rows and s.B >= self.split_rows:
            status = self.run_parts_here(s, self.threads)  # the split's rows, so the split's bits
        elif self.scratch_busy:  # another thread has this kernel's buffer: its own, serially
            buffer = self._scratch(s.T, s.B)  # CythonKernel's per-thread buffer
            status = self.run_here(s, data_of(buffer))
        else:
            parts = self.parts_for(s.B)
            scratch = self.take_scratch(self.scratch_floats(s, parts))
            workers = li_pool_take(<int>parts - 1) if parts > 1 else NULL
            try:
                if parts == 1 or (workers == NULL and self.unit_split(s, parts)):
                    status = self.run_here(s, scratch)  # a unit split's bits, serially
                elif workers == NULL:  # another call holds the process's workers
                    status = self.run_parts_here(s, parts)
                elif self.unit_split(s, parts):
                    status = self.run_unit_split(s, parts, scratch, workers)
                else:
                    status = self.run_batch_split(s, parts, scratch, workers, then, Y, result)
                    then = None
            finally:
                if workers != NULL:
                    li_pool_give()
                self.scratch_busy = False
        if then is not None:
            result.append(then(Y))
        return status

    cdef inline bint unit_split(self, const Seq* s, idx parts) noexcept:
        """Whether ``parts`` threads split the hidden units (below split_rows rows), not the batch."""
        return parts > 1 and s.B < self.split_rows

    cdef idx scratch_floats(self, const Seq* s, idx parts) noexcept:
        """Scratch floats a call needs: one shared scratch for a unit split, else the parts' own."""
        cdef idx need = 0, p
        if self.unit_split(s, parts):
            return scratch_need(s.T, s.B, self.G, self.H)
        for p in range(parts):
            need += self.part_need(s, s.B * p // parts, s.B * (p + 1) // parts, parts)
        return need

    cdef float* take_scratch(self, idx need) except NULL:
        """This kernel's scratch buffer, grown to ``need`` floats and marked busy (the caller frees
        it for the next call: ``scratch_busy = False``). Only read and set holding the GIL."""
        if self.scratch_size < need:
            free(self.scratch)
            self.scratch_size = 0
            self.scratch = aligned_floats(need)
            if self.scratch == NULL:
                raise MemoryError()
            self.scratch_size = need
        self.scratch_busy = True
        return self.scratch

    cdef int run_here(self, Seq* s, float* scratch) noexcept:
        """The whole call in this thread."""
        cdef int status
        s.scratch = scratch
        with nogil:
            status = self.run(s, self.op)
        return status

    cdef int run_unit_split(self, Seq* s, idx parts, float* scratch, li_worker* workers) noexcept:
        """Each of ``parts`` threads takes whole weight panels of hidden units, step by step
        (run_shared), all in one scratch."""
        cdef idx p
        cdef int status
        cdef Part* part
        self.sched.parts = <int>parts
        for p in range(parts + 1):
            self.sched.bounds[p] = self.unit_bound(p, parts)
        for p in range(parts):
            li_block_reset(&self.sched.blocks[p])
            part = self.part_at(p)
            part.s = s[0]
            part.s.scratch = scratch
            part.s.sched, part.s.part = &self.sched, <int>p
            part.run, part.op = self.run, self.op
        with nogil:
            for p in range(1, parts):
                li_worker_post(&workers[p - 1], run_part, self.part_at(p))
            status = run_part(self.part_at(0))
            for p in range(1, parts):
                status |= li_worker_wait(&workers[p - 1])
        return status

    cdef int run_batch_split(self, Seq* s, idx parts, float* scratch, li_worker* workers, object then,
                             object Y, list result) except -1:
        """Each of ``parts`` threads runs the whole sequence on its own batch rows (no barrier),
        this one last: ``then`` (Python work that needs only Y's address) runs first, beside
        the workers. If it raises, the parts still run to the end before the error goes up."""
        cdef idx p, offset = 0, groups = s.D * ((s.B + 3) // 4)
        cdef int status = 0
        cdef Part* part
        for p in range(parts):
            self.ranges[p].next, self.ranges[p].end = <int>(groups * p // parts), <int>(groups * (p + 1) // parts)
        for p in range(parts):
            part = self.part_at(p)
            part.s = s[0]
            part.run, part.op = self.run, self.op
            offset += self.cut_part(&part.s, s.B * p // parts, s.B * (p + 1) // parts, scratch + offset)
            part.s.whole, part.s.ranges, part.s.parts, part.s.part = s, self.ranges, <int>parts, <int>p
        with nogil:
            for p in range(1, parts):
                li_worker_post(&workers[p - 1], run_part, self.part_at(p))
        try:
            if then is not None:
                result.append(then(Y))
        finally:
            with nogil:
                status = run_part(self.part_at(0))
                for p in range(1, parts):
                    status |= li_worker_wait(&workers[p - 1])
        return status

    cdef int run_parts_here(self, Seq* s, idx parts) except -1:
        """A batch split's parts one after the other in this thread, with scratch of its own (another
        call holds the kernel's scratch, or the process's workers): each part runs the same rows as in
        the split, so a call's bits never depend on whether another thread was using the kernel."""
        cdef idx p, offset = 0, groups = s.D * ((s.B + 3) // 4)
        cdef int status = 0
        cdef Part part
        cdef float* scratch = aligned_floats(self.scratch_floats(s, parts))
        cdef li_range* ranges = <li_range*>li_lines_alloc(parts, sizeof(li_range))
        if scratch == NULL or ranges == NULL:
            free(scratch)
            free(ranges)
            raise MemoryError()
        with nogil:
            for p in range(parts):
                ranges[p].next, ranges[p].end = <int>(groups * p // parts), <int>(groups * (p + 1) // parts)
            for p in range(parts):
                part.s = s[0]
                offset += self.cut_part(&part.s, s.B * p // parts, s.B * (p + 1) // parts, scratch + offset)
                part.s.whole, part.s.ranges, part.s.parts, part.s.part = s, ranges, <int>parts, <int>p
                status |= self.run(&part.s, self.op)
        free(scratch)
        free(ranges)
        return status

    cdef idx parts_for(self, idx batch) except -1:
        """How many threads run a batch of ``batch`` rows: 1 unless the kernel splits the
        batch (at split_rows rows or more) or, below that, the hidden units (``units_ok``)."""
        if not self.split_rows or (batch < self.split_rows and not self.units_ok) or self.scratch_busy:
            return 1
        if self.part_jobs == NULL:
            self.part_jobs = <char*>li_lines_alloc(self.threads, sizeof(Part))
            self.sched.blocks = <li_block*>li_lines_alloc(self.threads, sizeof(li_block))
            self.sched.bounds = <idx*>li_lines_alloc(1, (self.threads + 1) * sizeof(idx))
            self.ranges = <li_range*>li_lines_alloc(self.threads, sizeof(li_range))
            if self.part_jobs == NULL or self.sched.blocks == NULL or self.sched.bounds == NULL or self.ranges == NULL:
                raise MemoryError()
        return self.threads

    cdef inline Part* part_at(self, idx p) noexcept nogil:
        return <Part*>(self.part_jobs + p * li_line_stride(sizeof(Part)))

    cdef idx unit_bound(self, idx p, idx parts) noexcept:
        """First hidden unit of part p of a unit split: whole weight panels per part."""
        cdef idx nr = self.panel_width
        return (self.H // nr) * p // parts * nr

    cdef idx part_need(self, const Seq* s, idx b0, idx b1, idx parts) noexcept:
        """Scratch floats of the part with rows [b0, b1) (a time-major X of several steps is
        copied into its own rows, so that each part reads a C-contiguous X)."""
        cdef idx need = scratch_need(s.T, b1 - b0, self.G, self.H)
        if parts > 1 and s.time_major and s.T > 1 and s.xtable == NULL:
            need += padded(s.T * (b1 - b0) * s.I)
        return need

    cdef idx cut_part(self, Seq* s, idx b0, idx b1, float* scratch) noexcept nogil:
        """Narrow ``s`` to batch rows [b0, b1) with scratch from ``scratch``; returns floats used."""
        cdef idx nb = b1 - b0, t, used = scratch_need(s.T, b1 - b0, self.G, self.H)
        cdef float* xcopy
        if s.xtable != NULL:  # the part's ids: b0 rows on, in any layout
            s.ids = s.ids + b0 * s.ids_b * s.id_bytes
        elif not s.time_major:
            s.X = s.X + b0 * s.T * s.I
        elif s.T == 1:
            s.X = s.X + b0 * s.I
        else:
            xcopy = scratch + used
            for t in range(s.T):
                memcpy(xcopy + t * nb * s.I, s.X + (t * s.B + b0) * s.I, nb * s.I * sizeof(float))
            s.X = xcopy
            used += padded(s.T * nb * s.I)
        if s.has_lens:
            s.lens = s.lens + b0
        if s.has_h0:
            s.h0 = s.h0 + b0 * s.h0_b
        if s.has_c0:
            s.c0 = s.c0 + b0 * s.c0_b
        s.Y = s.Y + b0 * s.y_b
        s.Sh = s.Sh + b0 * s.s_b
        if s.Sc != NULL:
            s.Sc = s.Sc + b0 * s.s_b
        s.B = nb
        s.scratch = scratch
        return used

    cdef object fast(self, object X, object lens, object h0, object c0):
        cdef Seq s
        cdef idx T, batch, H = self.H, D = self.D
        if self.bind(&s, X, lens, h0, c0):
            return None
        T, batch = s.T, s.B
        if self.time_major:
            Y = empty4(T, D, batch, H)
            Yh = empty3(D, batch, H)
            Yc = empty3(D, batch, H) if self.op == OP_LSTM else None
        else:
            Y = empty4(batch, T, D, H)
            Yh = empty3(batch, D, H)
            Yc = empty3(batch, D, H) if self.op == OP_LSTM else None
        self.output_strides(&s)
        s.Y = data_of(Y)
        s.Sh = data_of(Yh)
        s.Sc = data_of(Yc) if Yc is not None else NULL
        if self.launch(&s):  # sequence_lens outside [0, T]: the Python path sends it to the reference
            return None
        if self.outputs >= 3 and Yc is not None:
            return (Y, Yh, Yc)
        if self.outputs == 2:
            return (Y, Yh)
        return (Y,)

    def run_into(self, X, h, c=None, then=None, out=None):
        """One chunk of a stream: Y for ``X`` from the states ``h`` (and ``c`` for LSTM), which
        receive the new states in place (the kernel copies them in before it writes). ``h``/``c``:
        C-contiguous, writeable float32 [D, batch, H] (layout 0) / [batch, D, H], owned by the
        caller. Returns Y (fresh, or ``out``), or None when anything needs the general path (``__call__``).
        ``then``: returns then(Y) instead, called while worker threads may still be writing Y
        (it may take Y's shape and address, not its values): StreamPool.step's per-stream views.
        ``out``: written as Y instead of a fresh array when it is a C-contiguous writeable
        float32 array of Y's shape that nothing else can see (the caller's business)."""
        cdef Seq s
        cdef idx T, batch, H = self.H, D = self.D
        if not self.ready or not owned_state(h) or ((c is None) != (self.op != OP_LSTM)):
            return None
        if c is not None and not owned_state(c):
            return None
        if self.bind(&s, X, None, h, c):
            return None
        T, batch = s.T, s.B
        if self.time_major:
            Y = out if fits4(out, T, D, batch, H) else empty4(T, D, batch, H)
        else:
            Y = out if fits4(out, batch, T, D, H) else empty4(batch, T, D, H)
        self.output_strides(&s)  # the states are C-contiguous in the same layout as fresh ones
        s.Y = data_of(Y)
        s.Sh = data_of(h)
        s.Sc = data_of(c) if c is not None else NULL
        if then is None:
            return None if self.launch(&s) else Y
        result = []
        return None if self.launch(&s, then, Y, result) else result[0]


cdef extern from "li_call.h":
    ctypedef struct li_call:
        const float* X
        idx T, B
        const int* lens
        const float* h0
        idx h0_d, h0_b
        const float* c0
        idx c0_d, c0_b
        float* Y
        idx y_t, y_d, y_b
        float* Sh
        float* Sc
        idx s_d, s_b
        const float* xtable
        idx vocab
        const void* ids
        int id_bytes
        idx ids_t, ids_b
    const char* LI_CALL_CAPSULE


cdef int call_kernel(object core, const li_call* c) except -1:
    """A compiled program's call of ``core`` (a KernelCore whose ``packs`` held) on raw pointers:
    0 done, 1 declined (sequence_lens outside [0, T]: the caller's general path reports it)."""
    cdef KernelCore k = <KernelCore>core
    cdef Seq s
    s.X, s.T, s.B = c.X, c.T, c.B
    s.lens, s.has_lens = c.lens, c.lens != NULL
    s.h0, s.h0_d, s.h0_b, s.has_h0 = c.h0, c.h0_d, c.h0_b, c.h0 != NULL
    s.c0, s.c0_d, s.c0_b, s.has_c0 = c.c0, c.c0_d, c.c0_b, c.c0 != NULL
    s.Y, s.y_t, s.y_d, s.y_b = c.Y, c.y_t, c.y_d, c.y_b
    s.Sh, s.Sc, s.s_d, s.s_b = c.Sh, c.Sc, c.s_d, c.s_b
    k.bind_constants(&s)
    if c.xtable != NULL:
        if k.qkind != QK_FLOAT:
            return 1
        s.xtable, s.vocab, s.ids, s.id_bytes = c.xtable, c.vocab, <const char*>c.ids, c.id_bytes
        s.ids_t, s.ids_b = c.ids_t, c.ids_b
        if not ids_in_range(&s):
            return 1
    return k.launch(&s)


# The program's entry into this build's kernels (any KernelCore: the class is the portable build's).
CALL_KERNEL = PyCapsule_New(<void*>call_kernel, LI_CALL_CAPSULE, NULL)
include "_conv.pxi"
