# Included by _runtime.pyx: the executor of a compiled program (lstminfer/program.py builds it).
#
# A program is a model's plan specialised, for one signature of its feeds (dtypes and shapes),
# into instructions over raw memory: shape-only ops became views at compile time and run
# nothing; layout changes, dense heads, elementwise ops, softmax, embedding lookups and the
# recurrent kernels run here in C; any other op calls its NumPy kernel on views of that memory.
# Every value lives at a fixed byte offset from a base: the arena (the call's scratch, reused),
# a feed, an output array made for the call, or an absolute address (a constant the program
# keeps alive). The C loops themselves are in li_dense.h, li_vector.h and li_typed.h.
from libc.math cimport expf, logf
from cpython.pycapsule cimport PyCapsule_GetPointer

cdef extern from "li_call.h":
    ctypedef struct li_call:
        const float* X
        Py_ssize_t T, B
        const int* lens
        const float* h0
        Py_ssize_t h0_d, h0_b
        const float* c0
        Py_ssize_t c0_d, c0_b
        float* Y
        Py_ssize_t y_t, y_d, y_b
        float* Sh
        float* Sc
        Py_ssize_t s_d, s_b
        const float* xtable
        Py_ssize_t vocab
        const void* ids
        int id_bytes
        Py_ssize_t ids_t, ids_b
    const char* LI_CALL_CAPSULE

ctypedef int (*call_kernel_fn)(object, const li_call*) except -1

DEF MAX_DIMS = 8
DEF KEEP_ARENA_BYTES = 4 << 20  # up to this, KEEP_ARENAS kept per program
DEF KEEP_ARENAS = 4  # per program: one per thread running it at once
# Larger arenas (a batch of images through convolutions: tens of MB) are kept one per program while
# all those kept in the process stay within KEEP_LARGE_TOTAL: made per call, each of their pages
# faults and is zeroed again on every call. Beyond the budget (32 signatures' would add up, or a
# very long sequence's) they are freed after the call.
DEF KEEP_LARGE_ARENA_BYTES = 64 << 20
DEF KEEP_LARGE_TOTAL = 256 << 20
cdef Py_ssize_t large_arenas_kept = 0  # bytes of large arenas kept, all programs together
DEF MAX_FEEDS = 64
DEF MAX_OUTPUTS = 64
# bases[0] is the arena, bases[1 + k] feed k, bases[OUTPUT0 + k] output k (an array made for the
# call, written in place), bases[ABSOLUTE] NULL (offsets are addresses)
cdef enum:
    ARENA = 0
    OUTPUT0 = MAX_FEEDS + 1
    ABSOLUTE = OUTPUT0 + MAX_OUTPUTS
BASE_ABSOLUTE = ABSOLUTE
BASE_OUTPUT0 = OUTPUT0
MAX_PROGRAM_OUTPUTS = MAX_OUTPUTS
BASE_ARENA = ARENA
MAX_PROGRAM_FEEDS = MAX_FEEDS

cdef enum:  # how a feed is checked (Program.feed_kind)
    FEED_C_ORDER = 0
    FEED_STRIDED = 1
    FEED_PINNED = 2

cdef struct Ref:
    int base
    Py_ssize_t offset

cdef inline char* at(char** bases, Ref r) noexcept nogil:
    return bases[r.base] + r.offset


cdef Ref make_ref(tuple ref):
    cdef Ref r
    r.base, r.offset = ref[0], ref[1]
    if not (0 <= r.base <= ABSOLUTE):
        raise ValueError(f"program: base {r.base} out of range")
    return r


cdef int fill_dims(Py_ssize_t* out, values, int nd, bint counts=False) except -1:
    """``values`` into ``out``; ``counts``: sizes, never negative (strides may be)."""
    cdef int k
    if len(values) != nd or nd > MAX_DIMS:
        raise ValueError(f"program: {len(values)} dims where {nd} (at most {MAX_DIMS}) expected")
    for k in range(nd):
        out[k] = values[k]
        if counts and out[k] < 0:
            raise ValueError(f"program: a dim of {out[k]}")
    return 0


# -- extents: the bytes each instruction touches, checked once by Program.__init__ (run trusts them)

cdef object big(Py_ssize_t value):
    """``value`` as a Python int: extents are computed without C overflow."""
    return value


cdef list dims_of(const Py_ssize_t* values, int nd):
    return [values[k] for k in range(nd)]


cdef object count(shape):
    n = 1
    for d in shape:
        n = n * d
    return n


cdef object span(Ref r, shape, strides, item, bint writes):
    """(base, lo, hi, writes): the bytes [lo, hi) from ``r``'s base that ``item``-byte runs at
    ``r`` + i . strides (i over ``shape``) touch; None when none, or a constant (ABSOLUTE)."""
    if r.base == ABSOLUTE or item <= 0:
        return None
    lo = hi = big(r.offset)
    for n, step in zip(shape, strides):
        if n <= 0:
            return None
        reach = (n - 1) * step
        if reach < 0:
            lo = lo + reach
        else:
            hi = hi + reach
    return (r.base, lo, hi + item, writes)


cdef str base_name(int base):
    return "arena" if base == ARENA else f"feed {base - 1}" if base < OUTPUT0 else f"output {base - OUTPUT0}"


cdef int check_reach(str kind, extent, dict regions) except -1:
    """ValueError unless ``extent`` (see span) lies in its base's region [start, end) of ``regions``."""
    if extent is None:
        return 0
    base, lo, hi, writes = extent
    start, end = regions.get(base, (0, 0))  # a base no call sets (a pinned feed, an output copied): nothing
    if lo < start or hi > end:
        raise ValueError(f"program: {kind} {'writes' if writes else 'reads'} {base_name(base)} bytes [{lo}, {hi}) "
                         f"outside its {end - start} bytes")
    if writes and 1 <= base < OUTPUT0:
        raise ValueError(f"program: {kind} writes {base_name(base)}, the caller's array (maybe read-only)")
    return 0


cdef tuple feed_region(tuple spec):
    """[start, end) of a checked feed's bytes from its element 0 (a strided one may start below)."""
    shape, item = spec[1], spec[0].itemsize
    if any(d == 0 for d in shape):
        return (0, 0)
    if len(spec) != 4:
        return (0, count(shape) * item)
    lo = hi = 0
    for n, step in zip(shape, spec[3]):
        if n > 1:  # feeds_ok checks the strides only of dims that step
            reach = (n - 1) * step
            if reach < 0:
                lo = lo + reach
            else:
                hi = hi + reach
    return (lo, hi + item)


cdef int check_view(str kind, shape, strides, dtype) except -1:
    """A view view_of may make: at most MAX_DIMS sizes >= 0, as many strides, a NumPy dtype."""
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape) or (strides is not None and len(strides) != len(shape)):
        raise ValueError(f"{kind}: a view's shape {shape} / strides {strides} do not fit")
    if not isinstance(dtype, np.dtype):
        raise TypeError(f"{kind}: a view's dtype is not a numpy dtype")
    return 0


cdef void strided_copy(char* dst, const char* src, int nd, const Py_ssize_t* shape,
                       const Py_ssize_t* dst_strides, const Py_ssize_t* src_strides,
                       Py_ssize_t inner_bytes) noexcept nogil:
    """Copy an nd-dim block of ``inner_bytes``-byte items (the innermost contiguous run)."""
    cdef Py_ssize_t i
    if nd == 0:
        rt_copy(dst, src, inner_bytes)
        return
    if nd == 1 and inner_bytes == 4:  # a transpose's 4-byte elements: a load and a store each (bits as they are), no call
        for i in range(shape[0]):
            (<unsigned int*>(dst + i * dst_strides[0]))[0] = (<const unsigned int*>(src + i * src_strides[0]))[0]
        return
    for i in range(shape[0]):
        strided_copy(dst + i * dst_strides[0], src + i * src_strides[0], nd - 1, shape + 1,
                     dst_strides + 1, src_strides + 1, inner_bytes)


cdef class Instr:
    """One instruction: ``run(bases)`` returns 0 when done, 1 to decline the whole call."""

    cdef int run(self, char** bases) except -1:
        return 0

    cdef list extents(self):
        """Per ref it reads or writes: a span (see span), or None."""
        return []


cdef class Copy(Instr):
    """A strided block copied to another place (layout changes, Concat's pieces, outputs)."""
    cdef Ref src, dst
    cdef int nd
    cdef Py_ssize_t inner
    cdef Py_ssize_t shape[MAX_DIMS]
    cdef Py_ssize_t src_strides[MAX_DIMS]
    cdef Py_ssize_t dst_strides[MAX_DIMS]

    def __init__(self, tuple src, tuple dst, tuple shape, tuple src_strides, tuple dst_strides, Py_ssize_t inner):
        """``shape``/strides: the outer dims (bytes); ``inner``: bytes of the contiguous innermost run."""
        self.src, self.dst, self.nd, self.inner = make_ref(src), make_ref(dst), len(shape), inner
        if inner < 0:
            raise ValueError("Copy: inner < 0")
        fill_dims(self.shape, shape, self.nd, True)
        fill_dims(self.src_strides, src_strides, self.nd)
        fill_dims(self.dst_strides, dst_strides, self.nd)

    cdef object reach(self, Ref r, bint dst):
        """The block at ``r``, by the destination's strides (written) or the source's (read)."""
        if dst:
            return span(r, dims_of(self.shape, self.nd), dims_of(self.dst_strides, self.nd), self.inner, True)
        return span(r, dims_of(self.shape, self.nd), dims_of(self.src_strides, self.nd), self.inner, False)

    cdef list extents(self):
        return [self.reach(self.src, False), self.reach(self.dst, True)]

    cdef int run(self, char** bases) except -1:
        strided_copy(at(bases, self.dst), at(bases, self.src), self.nd, self.shape, self.dst_strides,
                     self.src_strides, self.inner)
        return 0


cdef class Dense(Instr):
    """out[m, :] = A[m, :] @ W + bias for M rows of K floats (row stride lda bytes) into
    contiguous rows of N (li_dense.h): the heads (MatMul/Gemm + Add) exporters put after a
    recurrent node. ``weights``: W [K, N] when N >= DENSE_ROWS_FROM, else W transposed [N, K]."""
    cdef Ref a, out
    cdef Py_ssize_t M, K, N, lda
    cdef const float* w
    cdef const float* bias
    cdef object keep

    def __init__(self, tuple a, Py_ssize_t M, Py_ssize_t K, Py_ssize_t lda, weights, bias, tuple out, Py_ssize_t N):
        cdef const float[:, ::1] w_v = weights
        cdef const float[::1] b_v
        if (w_v.shape[0], w_v.shape[1]) != ((K, N) if N >= DENSE_ROWS_FROM else (N, K)) or K < 1:
            raise ValueError("Dense: weights do not match K, N")
        if M < 0 or N < 0:
            raise ValueError("Dense: M or N < 0")
        self.a, self.out, self.M, self.K, self.N, self.lda = make_ref(a), make_ref(out), M, K, N, lda
        self.w, self.bias = &w_v[0, 0], NULL
        if bias is not None:
            b_v = bias
            if b_v.shape[0] != N:
                raise ValueError("Dense: bias does not match N")
            self.bias = &b_v[0]
        self.keep = (weights, bias)

    cdef list extents(self):
        return [span(self.a, [self.M], [self.lda], big(self.K) * 4, False),
                span(self.out, [], [], big(self.M) * self.N * 4, True)]

    cdef int run(self, char** bases) except -1:
        cdef const char* a = at(bases, self.a)
        cdef float* out = <float*>at(bases, self.out)
        with nogil:
            dense_rows(<const float*>a, self.M, self.K, self.lda, self.w, self.bias, out, self.N)
        return 0


cdef extern from "li_dense.h":
    void dense_rows "li_dense_rows"(const float* A, Py_ssize_t M, Py_ssize_t K, Py_ssize_t lda, const float* w,
                                    const float* bias, float* out, Py_ssize_t N) noexcept nogil
    const Py_ssize_t LI_DENSE_ROWS_FROM

DENSE_ROWS_FROM = LI_DENSE_ROWS_FROM
DENSE_MAX_MACS = 1 << 22  # above: NumPy's BLAS (blocked, multi-level cache) beats the plain C loops


def dense(const float[:, ::1] a, const float[:, ::1] weights, const float[::1] bias, float[:, ::1] out):
    """out = a @ W (+ bias) by li_dense_rows, the routine of the Dense instruction, so the plan's
    MatMul/Gemm give a program's bits. ``weights`` laid out as Dense takes them."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = out.shape[1]
    if out.shape[0] != M or K < 1 or (weights.shape[0], weights.shape[1]) != ((K, N) if N >= DENSE_ROWS_FROM else (N, K)):
        raise ValueError(f"dense: a {a.shape[0], a.shape[1]}, weights {weights.shape[0], weights.shape[1]} and "
                         f"out {out.shape[0], out.shape[1]} do not match")
    if bias is not None and bias.shape[0] != N:
        raise ValueError(f"dense: bias has {bias.shape[0]} values, expected {N}")
    if M == 0:
        return
    with nogil:
        dense_rows(&a[0, 0], M, K, K * 4, &weights[0, 0], &bias[0] if bias is not None else NULL, &out[0, 0], N)


cdef extern from "li_vector.h":
    enum:
        U_SIGMOID "LI_U_SIGMOID"
        U_TANH "LI_U_TANH"
        U_RELU "LI_U_RELU"
        U_EXP "LI_U_EXP"
        U_NEG "LI_U_NEG"
        U_ABS "LI_U_ABS"
        U_SQRT "LI_U_SQRT"
        B_ADD "LI_B_ADD"
        B_SUB "LI_B_SUB"
        B_MUL "LI_B_MUL"
        B_DIV "LI_B_DIV"
    void li_unary(int code, const float* x, float* y, Py_ssize_t n) noexcept nogil
    void li_binary(int code, float* o, const float* x, Py_ssize_t sa, const float* y, Py_ssize_t sb,
                   Py_ssize_t n) noexcept nogil

UNARY_CODES = {"Sigmoid": U_SIGMOID, "Tanh": U_TANH, "Relu": U_RELU, "Exp": U_EXP, "Neg": U_NEG,
               "Abs": U_ABS, "Sqrt": U_SQRT}


def unary(str op_type, const float[::1] x, float[::1] y):
    """y = op(x) by the loop of the Unary instruction (li_vector.h), so the plan's Sigmoid/Tanh/Exp
    give a program's bits."""
    cdef int code = UNARY_CODES[op_type]
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"unary: x has {x.shape[0]} values, y {y.shape[0]}")
    if x.shape[0]:
        with nogil:
            li_unary(code, &x[0], &y[0], x.shape[0])


cdef class Unary(Instr):
    """A float32 elementwise function over n contiguous values (li_vector.h)."""
    cdef Ref src, dst
    cdef Py_ssize_t n
    cdef int code

    def __init__(self, tuple src, tuple dst, Py_ssize_t n, int code):
        self.src, self.dst, self.n, self.code = make_ref(src), make_ref(dst), n, code
        if n < 0 or code not in UNARY_CODES.values():
            raise ValueError(f"Unary: n {n} or code {code} out of range")

    cdef list extents(self):
        return [span(self.src, [], [], big(self.n) * 4, False), span(self.dst, [], [], big(self.n) * 4, True)]

    cdef int run(self, char** bases) except -1:
        cdef const float* x = <const float*>at(bases, self.src)
        cdef float* y = <float*>at(bases, self.dst)
        with nogil:
            li_unary(self.code, x, y, self.n)
        return 0


BINARY_CODES = {"Add": B_ADD, "Sub": B_SUB, "Mul": B_MUL, "Div": B_DIV}


cdef void binary_block(char* out, const char* a, const char* b, int nd, const Py_ssize_t* shape,
                       const Py_ssize_t* out_strides, const Py_ssize_t* a_strides, const Py_ssize_t* b_strides,
                       int code) noexcept nogil:
    cdef Py_ssize_t i
    if nd == 1:  # innermost: strides in floats (0 for a broadcast operand)
        li_binary(code, <float*>out, <const float*>a, a_strides[0] // 4, <const float*>b, b_strides[0] // 4, shape[0])
        return
    for i in range(shape[0]):
        binary_block(out + i * out_strides[0], a + i * a_strides[0], b + i * b_strides[0], nd - 1, shape + 1,
                     out_strides + 1, a_strides + 1, b_strides + 1, code)


cdef class Binary(Instr):
    """A float32 Add/Sub/Mul/Div with NumPy broadcasting (stride 0), into a contiguous output."""
    cdef Ref a, b, out
    cdef int nd, code
    cdef Py_ssize_t shape[MAX_DIMS]
    cdef Py_ssize_t a_strides[MAX_DIMS]
    cdef Py_ssize_t b_strides[MAX_DIMS]
    cdef Py_ssize_t out_strides[MAX_DIMS]

    def __init__(self, tuple a, tuple b, tuple out, tuple shape, tuple a_strides, tuple b_strides,
                 tuple out_strides, int code):
        self.a, self.b, self.out, self.nd, self.code = make_ref(a), make_ref(b), make_ref(out), len(shape), code
        if self.nd < 1:
            raise ValueError("Binary: at least one dim")
        if code not in BINARY_CODES.values():
            raise ValueError(f"Binary: code {code} out of range")
        fill_dims(self.shape, shape, self.nd, True)
        fill_dims(self.a_strides, a_strides, self.nd)
        fill_dims(self.b_strides, b_strides, self.nd)
        fill_dims(self.out_strides, out_strides, self.nd)

    cdef list extents(self):
        cdef int last = self.nd - 1
        cdef list shape = dims_of(self.shape, self.nd)
        cdef list sa = dims_of(self.a_strides, self.nd), sb = dims_of(self.b_strides, self.nd)
        cdef list so = dims_of(self.out_strides, self.nd)
        # the innermost dim as binary_block steps it: whole floats, the output contiguous
        sa[last], sb[last], so[last] = self.a_strides[last] // 4 * 4, self.b_strides[last] // 4 * 4, 4
        return [span(self.a, shape, sa, 4, False), span(self.b, shape, sb, 4, False),
                span(self.out, shape, so, 4, True)]

    cdef int run(self, char** bases) except -1:
        cdef char* out = at(bases, self.out)
        cdef const char* a = at(bases, self.a)
        cdef const char* b = at(bases, self.b)
        with nogil:
            binary_block(out, a, b, self.nd, self.shape, self.out_strides, self.a_strides, self.b_strides, self.code)
        return 0


cdef extern from "li_typed.h":
    void typed_block "li_typed_block"(char* out, const char* a, const char* b, int nd, const Py_ssize_t* shape,
                                      const Py_ssize_t* so, const Py_ssize_t* sa, const Py_ssize_t* sb, int op,
                                      int ta, int tb, int to, int in_float) noexcept nogil

TYPED_OPS = {"Cast": 0, "Add": 1, "Sub": 2, "Mul": 3, "Div": 4, "Less": 5, "LessOrEqual": 6, "Greater": 7,
             "GreaterOrEqual": 8, "Equal": 9, "And": 10, "Or": 11, "Xor": 12, "Not": 13, "Neg": 14, "Max": 15,
             "Min": 16}
TYPED_DTYPES = {np.dtype(np.bool_): 0, np.dtype(np.int32): 1, np.dtype(np.int64): 2, np.dtype(np.float32): 3,
                np.dtype(np.float64): 4}
cdef tuple TYPED_BYTES = (1, 4, 8, 4, 8)  # by TYPED_DTYPES code


cdef class Typed(Instr):
    """An elementwise op on bool/int32/int64/float32/float64 values with broadcasting (li_typed.h):
    the casts, comparisons, logic and counters around loops and shapes."""
    cdef Ref a, b, out
    cdef bint has_b
    cdef int nd, op, ta, tb, to, in_float
    cdef Py_ssize_t shape[MAX_DIMS]
    cdef Py_ssize_t a_strides[MAX_DIMS]
    cdef Py_ssize_t b_strides[MAX_DIMS]
    cdef Py_ssize_t out_strides[MAX_DIMS]

    def __init__(self, int op, tuple a, int ta, b, int tb, tuple out, int to, tuple shape, tuple a_strides,
                 tuple b_strides, tuple out_strides):
        """``b`` None for a unary op (Cast, Not, Neg); strides in bytes."""
        self.op, self.ta, self.tb, self.to, self.nd = op, ta, tb, to, len(shape)
        if not (0 <= op < len(TYPED_OPS) and 0 <= ta < 5 and 0 <= tb < 5 and 0 <= to < 5):
            raise ValueError(f"Typed: op {op} or a type code ({ta}, {tb}, {to}) out of range")
        self.a, self.out, self.has_b = make_ref(a), make_ref(out), b is not None
        if self.has_b:
            self.b = make_ref(b)
        self.in_float = ta >= 3 or (self.has_b and tb >= 3)
        fill_dims(self.shape, shape, self.nd, True)
        fill_dims(self.a_strides, a_strides, self.nd)
        fill_dims(self.b_strides, b_strides if b is not None else a_strides, self.nd)
        fill_dims(self.out_strides, out_strides, self.nd)

    cdef list extents(self):
        cdef list shape = dims_of(self.shape, self.nd)
        return [span(self.a, shape, dims_of(self.a_strides, self.nd), TYPED_BYTES[self.ta], False),
                span(self.b, shape, dims_of(self.b_strides, self.nd), TYPED_BYTES[self.tb], False)
                if self.has_b else None,
                span(self.out, shape, dims_of(self.out_strides, self.nd), TYPED_BYTES[self.to], True)]

    cdef int run(self, char** bases) except -1:
        typed_block(at(bases, self.out), at(bases, self.a), at(bases, self.b) if self.has_b else NULL, self.nd,
                    self.shape, self.out_strides, self.a_strides, self.b_strides, self.op, self.ta, self.tb,
                    self.to, self.in_float)
        return 0


cdef class Softmax(Instr):
    """Softmax over the last axis of contiguous float32 rows (max subtracted, as NumPy's kernel)."""
    cdef Ref src, dst
    cdef Py_ssize_t rows, cols
    cdef bint log

    def __init__(self, tuple src, tuple dst, Py_ssize_t rows, Py_ssize_t cols, bint log=False):
        self.src, self.dst, self.rows, self.cols, self.log = make_ref(src), make_ref(dst), rows, cols, log
        if rows < 0 or cols < 0 or (rows > 0 and cols == 0):  # a row of no columns still reads its first
            raise ValueError(f"Softmax: {rows} rows of {cols} columns")

    cdef list extents(self):
        return [span(self.src, [], [], big(self.rows) * self.cols * 4, False),
                span(self.dst, [], [], big(self.rows) * self.cols * 4, True)]

    cdef int run(self, char** bases) except -1:
        cdef const float* x = <const float*>at(bases, self.src)
        cdef float* y = <float*>at(bases, self.dst)
        with nogil:
            softmax_rows(x, y, self.rows, self.cols, self.log)
        return 0


cdef void softmax_rows(const float* x, float* y, Py_ssize_t rows, Py_ssize_t n, bint log) noexcept nogil:
    cdef Py_ssize_t r, i
    cdef float top, total
    for r in range(rows):
        top = x[r * n]
        for i in range(1, n):
            if x[r * n + i] > top:
                top = x[r * n + i]
        total = 0.0
        for i in range(n):
            y[r * n + i] = expf(x[r * n + i] - top)
            total = total + y[r * n + i]
        if log:
            for i in range(n):
                y[r * n + i] = (x[r * n + i] - top) - logf(total)
        else:
            for i in range(n):
                y[r * n + i] = y[r * n + i] / total


def softmax(const float[:, ::1] x, float[:, ::1] y, bint log=False):
    """(Log)Softmax over each row of x into y by the routine of the Softmax instruction, so the
    plan's kernel gives a program's bits."""
    if x.shape[0] != y.shape[0] or x.shape[1] != y.shape[1]:
        raise ValueError(f"softmax: x {x.shape[0], x.shape[1]} and y {y.shape[0], y.shape[1]} differ")
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        softmax_rows(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], log)



cdef class GatherRows(Instr):
    """out[i] = table[ids[i]]: Gather along axis 0 (an embedding lookup, a loop's read of its
    step) by int32/int64 ids, negative ids counted from the end; an id out of range declines
    (the general path reports it). The table is a constant or a per-call value of any strides:
    a row is ``row_stride`` bytes after the last, and copied as a strided block (see Copy)."""
    cdef Ref table, ids, out
    cdef Py_ssize_t rows, row_stride, out_row_bytes, n, inner
    cdef int id_bytes, nd
    cdef Py_ssize_t shape[MAX_DIMS]
    cdef Py_ssize_t src_strides[MAX_DIMS]
    cdef Py_ssize_t dst_strides[MAX_DIMS]

    def __init__(self, tuple table, Py_ssize_t rows, Py_ssize_t row_stride, tuple ids, Py_ssize_t n, int id_bytes,
                 tuple out, Py_ssize_t out_row_bytes, tuple shape, tuple src_strides, tuple dst_strides,
                 Py_ssize_t inner):
        if id_bytes not in (4, 8):
            raise ValueError("GatherRows: ids are int32 or int64")
        self.table, self.rows, self.row_stride = make_ref(table), rows, row_stride
        self.ids, self.n, self.id_bytes, self.out = make_ref(ids), n, id_bytes, make_ref(out)
        self.out_row_bytes, self.nd, self.inner = out_row_bytes, len(shape), inner
        if rows < 0 or n < 0 or inner < 0:
            raise ValueError("GatherRows: rows, n or inner < 0")
        fill_dims(self.shape, shape, self.nd, True)
        fill_dims(self.src_strides, src_strides, self.nd)
        fill_dims(self.dst_strides, dst_strides, self.nd)

    cdef list extents(self):
        cdef list shape = dims_of(self.shape, self.nd)
        return [span(self.ids, [], [], big(self.n) * self.id_bytes, False),
                span(self.table, [self.rows] + shape, [self.row_stride] + dims_of(self.src_strides, self.nd),
                     self.inner, False),
                span(self.out, [self.n] + shape, [self.out_row_bytes] + dims_of(self.dst_strides, self.nd),
                     self.inner, True)]

    cdef int run(self, char** bases) except -1:
        cdef const char* table = at(bases, self.table)
        cdef const char* ids = at(bases, self.ids)
        cdef char* out = at(bases, self.out)
        cdef Py_ssize_t i
        cdef long long k
        for i in range(self.n):
            k = (<const long long*>ids)[i] if self.id_bytes == 8 else (<const int*>ids)[i]
            if k < 0:
                k += self.rows
            if not 0 <= k < self.rows:
                return 1
            strided_copy(out + i * self.out_row_bytes, table + k * self.row_stride, self.nd, self.shape,
                         self.dst_strides, self.src_strides, self.inner)
        return 0


cdef class Recurrent(Instr):
    """An LSTM/GRU/RNN node on its Cython kernel, called on pointers (li_call.h). With ``lookup``,
    its input projections are rows of a constant table picked by ids (an Embedding folded into
    them, see embedding_fold.py) and ``x`` is those ids."""
    cdef object core
    cdef call_kernel_fn call
    cdef Ref x, lens, h0, c0, y, yh, yc, table
    cdef bint has_lens, has_h0, has_c0, has_yc, lstm, looks_up
    cdef Py_ssize_t inputs, dirs, hidden  # the core's I, D, H
    cdef Py_ssize_t row_floats  # looked up: floats per table row (D * gates * H)
    cdef li_call args

    def __init__(self, core, capsule, Py_ssize_t T, Py_ssize_t B, tuple x, lens, h0, tuple h0_strides, c0,
                 tuple c0_strides, tuple y, tuple y_strides, tuple yh, yc, tuple s_strides, lookup=None):
        """Strides in floats: states (d, b), Y (t, d, b), Y_h/Y_c (d, b); None: absent.
        ``lookup``: (table ref, rows, floats per row, id bytes, id strides (t, b) in ids), ``x``
        then the ids' ref."""
        self.core = core
        self.call = <call_kernel_fn>PyCapsule_GetPointer(capsule, LI_CALL_CAPSULE)
        # call_kernel takes core for a bound KernelCore unchecked: only one has these sizes
        self.inputs, self.dirs, self.hidden, self.lstm = core.call_sizes
        if T < 1 or B < 1 or len(y_strides) != 3 or len(s_strides) != 2 or (self.lstm and yc is None) \
                or (h0 is not None and len(h0_strides) != 2) or (c0 is not None and len(c0_strides) != 2):
            raise ValueError("Recurrent: T, B >= 1, strides (t, d, b) for Y, (d, b) for states, Y_c for an LSTM")
        self.x, self.y, self.yh = make_ref(x), make_ref(y), make_ref(yh)
        self.has_lens, self.has_h0, self.has_c0, self.has_yc = lens is not None, h0 is not None, c0 is not None, yc is not None
        if self.has_lens:
            self.lens = make_ref(lens)
        if self.has_h0:
            self.h0 = make_ref(h0)
            self.args.h0_d = h0_strides[0]
            self.args.h0_b = h0_strides[1]
        if self.has_c0:
            self.c0 = make_ref(c0)
            self.args.c0_d = c0_strides[0]
            self.args.c0_b = c0_strides[1]
        if self.has_yc:
            self.yc = make_ref(yc)
        self.args.T = T
        self.args.B = B
        self.args.y_t = y_strides[0]
        self.args.y_d = y_strides[1]
        self.args.y_b = y_strides[2]
        self.args.s_d = s_strides[0]
        self.args.s_b = s_strides[1]
        self.looks_up = lookup is not None
        if self.looks_up:
            table, rows, self.row_floats, id_bytes, ids_strides = lookup
            if rows < 1 or id_bytes not in (4, 8) or len(ids_strides) != 2 \
                    or self.row_floats != self.dirs * self.hidden * core.call_gates:
                raise ValueError("Recurrent: a lookup needs rows >= 1, int32/int64 ids, (t, b) id strides "
                                 "and D * gates * H floats per row")
            self.table = make_ref(table)
            self.args.vocab, self.args.id_bytes = rows, id_bytes
            self.args.ids_t, self.args.ids_b = ids_strides

    cdef list extents(self):
        cdef li_call* c = &self.args
        T, B, row = big(c.T), big(c.B), big(self.hidden) * 4  # strides in floats, H floats per (t, d, b)
        db = [self.dirs, c.B]
        if self.looks_up:
            inputs = [span(self.x, [c.T, c.B], [big(c.ids_t) * c.id_bytes, big(c.ids_b) * c.id_bytes], c.id_bytes,
                           False),
                      span(self.table, [], [], big(c.vocab) * self.row_floats * 4, False)]
        else:
            inputs = [span(self.x, [], [], T * B * self.inputs * 4, False)]
        return inputs + [
                span(self.lens, [], [], B * 4, False) if self.has_lens else None,
                span(self.h0, db, [big(c.h0_d) * 4, big(c.h0_b) * 4], row, False) if self.has_h0 else None,
                span(self.c0, db, [big(c.c0_d) * 4, big(c.c0_b) * 4], row, False) if self.has_c0 else None,
                span(self.y, [c.T, self.dirs, c.B], [big(c.y_t) * 4, big(c.y_d) * 4, big(c.y_b) * 4], row, True),
                span(self.yh, db, [big(c.s_d) * 4, big(c.s_b) * 4], row, True),
                span(self.yc, db, [big(c.s_d) * 4, big(c.s_b) * 4], row, True) if self.has_yc else None]

    cdef int run(self, char** bases) except -1:
        cdef li_call call = self.args  # a copy: threads may run this program at once
        cdef li_call* c = &call
        if self.looks_up:
            c.X = NULL
            c.ids = at(bases, self.x)
            c.xtable = <const float*>at(bases, self.table)
        else:
            c.X = <const float*>at(bases, self.x)
            c.xtable = NULL
        c.lens = <const int*>at(bases, self.lens) if self.has_lens else NULL
        c.h0 = <const float*>at(bases, self.h0) if self.has_h0 else NULL
        c.c0 = <const float*>at(bases, self.c0) if self.has_c0 else NULL
        c.Y = <float*>at(bases, self.y)
        c.Sh = <float*>at(bases, self.yh)
        c.Sc = <float*>at(bases, self.yc) if self.has_yc else NULL
        return self.call(self.core, c)


cdef class PyCall(Instr):
    """An op without a C instruction: its NumPy kernel called on views of the program's memory,
    its outputs copied to their places (declined when one differs from the compiled signature).
    ``into``: the kernel takes ``out=`` (views of those places) and returns them when it wrote there."""
    cdef object kernel, step, on_error
    cdef bint into
    cdef tuple args  # per input: None, ("obj", value) or ("ref", ref, shape, strides, dtype)
    cdef tuple outer_names
    cdef tuple outer_at  # positions in args of the outer-scope values (after the inputs)
    cdef tuple outs  # per output: None (unused) or (ref, shape, dtype)
    cdef Py_ssize_t ninputs

    def __init__(self, kernel, tuple args, Py_ssize_t ninputs, tuple outer_names, tuple outs, step, on_error,
                 bint into=False):
        self.kernel, self.args, self.ninputs, self.outer_names, self.outs = kernel, args, ninputs, outer_names, outs
        self.step, self.on_error, self.into = step, on_error, into and not outer_names
        for a in args:
            if a is None:
                continue
            if a[0] == "ref":
                make_ref(a[1])
                check_view("PyCall", a[2], a[3], a[4])
            elif a[0] != "obj":  # run takes anything else for a ref
                raise ValueError("PyCall: an argument is None, ('obj', value) or ('ref', ref, shape, strides, dtype)")
        for o in outs:
            if o is not None:
                make_ref(o[0])
                check_view("PyCall", o[1], None, o[2])

    cdef list extents(self):
        # the views NumPy makes from these shapes/strides are checked; what the kernel does past them is unknowable
        cdef list spans = []
        for a in self.args:
            if a is not None and a[0] == "ref":
                spans.append(span(make_ref(a[1]), a[2], a[3], a[4].itemsize, False))
        for o in self.outs:
            if o is not None:
                spans.append(span(make_ref(o[0]), [], [], count(o[1]) * o[2].itemsize, True))
        return spans

    cdef int run(self, char** bases) except -1:
        cdef Py_ssize_t i, n = len(self.args)
        cdef Ref r
        values = PyList_New(n)
        for i in range(n):
            spec = self.args[i]
            if spec is None:
                value = None
            elif spec[0] == "obj":
                value = spec[1]
            else:
                r = make_ref(spec[1])
                value = view_of(at(bases, r), spec[2], spec[3], spec[4])
            Py_INCREF(value)
            PyList_SET_ITEM(values, i, value)
        inputs = values[:self.ninputs]
        cdef list dsts = None
        if self.into:
            dsts = [None if out is None else view_of(at(bases, make_ref(out[0])), out[1], None, out[2])
                    for out in self.outs]
        try:
            if dsts is not None:
                result = self.kernel(*inputs, out=dsts)
            elif self.outer_names:
                result = self.kernel(*inputs, outer=dict(zip(self.outer_names, values[self.ninputs:])))
            else:
                result = self.kernel(*inputs)
        except LstminferError:
            raise
        except Exception as e:
            raise self.on_error(self.step, inputs, e, None) from e
        if len(result) < len(self.outs):
            raise self.on_error(self.step, inputs, None, result)
        for i in range(len(self.outs)):
            out = self.outs[i]
            if out is None:
                continue
            value = result[i]
            if dsts is not None and value is dsts[i]:
                continue  # written in place by the kernel
            if type(value) is not _NDARRAY or value.shape != out[1] or value.dtype != out[2]:
                return 1  # not the compiled signature (a data-dependent shape): the general path
            r = make_ref(out[0])
            dst = view_of(at(bases, r), out[1], None, out[2])
            cnp.PyArray_CopyInto(<cnp.ndarray>dst, <cnp.ndarray>value)
        return 0


cdef object view_of(char* data, tuple shape, strides, dtype):
    """An ndarray over ``data`` (C order when ``strides`` is None); the caller keeps the memory alive."""
    cdef cnp.npy_intp dims[MAX_DIMS]
    cdef cnp.npy_intp steps[MAX_DIMS]
    cdef int k, nd = len(shape)
    if nd > MAX_DIMS:
        raise ValueError("program: too many dims")
    for k in range(nd):
        dims[k] = shape[k]
        if strides is not None:
            steps[k] = strides[k]
    Py_INCREF(dtype)
    return PyArray_NewFromDescr(_NDARRAY, <cnp.dtype>dtype, nd, dims, steps if strides is not None else NULL, data,
                                cnp.NPY_ARRAY_WRITEABLE, None)


cdef class Program:
    """The instructions of one signature, run on feeds (checked here: exact ndarrays of the
    compiled dtypes and shapes, C-contiguous and aligned) into fresh outputs, or into the
    caller's arrays (``into``: a stream's states, written once everything has been read; an io_binding's
    buffers, which the instructions write in place when they share no memory with a feed; a
    declined call may then have written them: its caller runs the plan and writes them again).

    ``feed_specs``: (dtype, shape) per C-order feed, (dtype, shape, None, strides) for one with
    other strides (a view the enclosing graph hands a body), or (dtype, shape, value) for a feed
    compiled in as a constant (then only that object is accepted).
    ``outputs``: (shape, dtype, OutCopy, alias, direct) per wanted value: the copy from where it
    lives into a C-order array of its shape; or with alias ("feed", k) / ("obj", value) that
    object itself (a subgraph body's pass-through values, which may alias; never for Model.run);
    or, ``direct``, an array made for the call at base OUTPUT0 + k that the instructions write in
    place (no copy). ``arena_bytes``: the scratch memory of one call, reused through a free list
    (a call in another thread takes another arena)."""
    cdef public tuple feed_specs, outputs, instructions
    cdef Py_ssize_t nfeeds, nout, arena_bytes, ndirect
    cdef list arenas
    cdef object keep
    cdef list out_copies  # per output: a Copy from its ref into a C-order array of its shape
    cdef public object text
    # feed_specs as C numbers: feed k's kind, dtype, rank, and shape/strides at feed_at[k]..
    cdef int feed_kind[MAX_FEEDS]
    cdef int feed_nd[MAX_FEEDS]
    cdef Py_ssize_t feed_at[MAX_FEEDS]
    cdef tuple feed_dtypes
    cdef Py_ssize_t[:] feed_shape, feed_strides

    def __init__(self, tuple feed_specs, tuple instructions, tuple outputs, Py_ssize_t arena_bytes, keep, text=""):
        cdef Py_ssize_t k
        cdef list shapes = [], strides = []
        if len(feed_specs) > MAX_FEEDS or len(outputs) > MAX_OUTPUTS:
            raise ValueError(f"program: at most {MAX_FEEDS} feeds and {MAX_OUTPUTS} outputs")
        self.feed_specs, self.instructions, self.outputs = feed_specs, instructions, outputs
        self.nfeeds, self.nout, self.arena_bytes = len(feed_specs), len(outputs), arena_bytes
        self.arenas, self.keep, self.text = [], keep, text
        self.out_copies = [o[2] for o in outputs]
        self.ndirect = sum(1 for o in outputs if o[4])
        for o in outputs:
            if not (isinstance(o[2], OutCopy) or (o[2] is None and o[4])):
                raise TypeError("program: an output is copied by an OutCopy or written in place")
        for ins in instructions:
            if not isinstance(ins, Instr):
                raise TypeError("program: instructions are Instr objects")
        for k, spec in enumerate(feed_specs):
            self.feed_kind[k] = FEED_PINNED if len(spec) == 3 else FEED_STRIDED if len(spec) == 4 else FEED_C_ORDER
            self.feed_nd[k], self.feed_at[k] = len(spec[1]), len(shapes)
            shapes.extend(spec[1])
            strides.extend(spec[3] if len(spec) == 4 else spec[1])
            if len(spec) == 4 and len(spec[3]) != len(spec[1]):
                raise ValueError(f"program: feed {k}'s shape and strides do not match")
        self.feed_dtypes = tuple(spec[0] for spec in feed_specs)
        self.feed_shape, self.feed_strides = _index_array(shapes), _index_array(strides)
        self.check_extents()

    cdef int check_extents(self) except -1:
        """Refuse (ValueError) any instruction or output copy reaching outside its base: run trusts
        them all; also what run takes unchecked from feed_specs and outputs (dtypes, aliases)."""
        cdef Ref target
        cdef OutCopy copy
        if self.arena_bytes < 0:
            raise ValueError("program: arena_bytes < 0")
        cdef dict regions = {ARENA: (0, self.arena_bytes)}
        for k, spec in enumerate(self.feed_specs):
            if not isinstance(spec[0], np.dtype) or any(d < 0 for d in spec[1]):
                raise ValueError(f"program: feed {k}'s dtype or shape is not a numpy dtype and sizes")
            if len(spec) != 3:  # a pinned feed's base is never set: nothing may reach into it
                regions[1 + k] = feed_region(spec)
        for k, o in enumerate(self.outputs):
            if not isinstance(o[1], np.dtype) or any(d < 0 for d in o[0]):
                raise ValueError(f"program: output {k}'s shape or dtype is not sizes and a numpy dtype")
            if o[3] is not None and o[3][0] == "feed" and not 0 <= o[3][1] < self.nfeeds:
                raise ValueError(f"program: output {k} aliases feed {o[3][1]} of {self.nfeeds}")
            if o[4]:
                regions[OUTPUT0 + k] = (0, count(o[0]) * o[1].itemsize)
        for ins in self.instructions:
            for extent in (<Instr>ins).extents():
                check_reach(type(ins).__name__, extent, regions)
        for k, o in enumerate(self.outputs):
            if o[2] is None:
                continue
            copy = <OutCopy>o[2]  # into a C-order array of the output's shape (fresh or the caller's)
            target.base, target.offset = OUTPUT0 + k, 0
            check_reach("OutCopy", copy.reach(copy.src, False), regions)
            check_reach("OutCopy", copy.reach(target, True), {OUTPUT0 + k: (0, count(o[0]) * o[1].itemsize)})
        return 0

    cdef bint feeds_ok(self, list feeds, char** bases):
        cdef Py_ssize_t k, j, at
        cdef int nd, kind
        cdef cnp.npy_intp* dims
        cdef cnp.npy_intp* strides
        if len(feeds) != self.nfeeds:
            return False
        for k in range(self.nfeeds):
            value = <object>PyList_GET_ITEM(feeds, k)
            kind = self.feed_kind[k]
            if kind == FEED_PINNED:  # compiled in as a constant, so only this very object
                if value is not (<tuple>self.feed_specs[k])[2]:
                    return False
                continue
            if type(value) is not _NDARRAY:
                return False
            nd, at = self.feed_nd[k], self.feed_at[k]
            if not same_dtype(descr_of(value), self.feed_dtypes[k]) or cnp.PyArray_NDIM(<cnp.ndarray>value) != nd \
                    or not cnp.PyArray_ISALIGNED(<cnp.ndarray>value):
                return False
            dims = cnp.PyArray_DIMS(<cnp.ndarray>value)
            for j in range(nd):
                if dims[j] != self.feed_shape[at + j]:
                    return False
            if kind == FEED_STRIDED:  # these very strides (where a dim steps at all)
                strides = cnp.PyArray_STRIDES(<cnp.ndarray>value)
                for j in range(nd):
                    if dims[j] > 1 and strides[j] != self.feed_strides[at + j]:
                        return False
            elif not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>value):
                return False
            bases[1 + k] = data_of(value)
        return True

    def kept_arenas(self):
        """How many arenas wait for the next call."""
        return len(self.arenas)

    def run(self, list feeds, list into=None):
        """The wanted values for ``feeds``, or None (nothing written) when the program declines."""
        return self._run(feeds, into)

    cdef object _run(self, list feeds, list into):
        cdef char* bases[ABSOLUTE + 1]
        if not self.feeds_ok(feeds, bases):
            return None
        return self._run_on(feeds, into, bases)

    cdef object _run_on(self, list feeds, list into, char** bases):
        """``_run`` for feeds ``feeds_ok`` accepted, their addresses in ``bases``."""
        cdef Py_ssize_t k
        cdef Instr ins
        cdef int status = 0
        if into is not None and not self.into_ok(into):
            return None
        bases[ABSOLUTE] = NULL
        cdef list direct = None
        if self.ndirect:  # the outputs instructions write in place: the caller's array, else a fresh one
            direct = prepend(None, self.nout, [])
            for k in range(self.nout):
                spec = <tuple>self.outputs[k]
                if spec[4]:
                    target = into[k] if into is not None else None
                    if target is None or overlaps_any(target, feeds):  # a feed's memory: written at the end
                        target = _empty(spec[0], spec[1])
                    direct[k] = target
                    bases[OUTPUT0 + k] = data_of(target)
        global large_arenas_kept
        if self.arenas:
            arena = self.arenas.pop()
            if self.arena_bytes > KEEP_ARENA_BYTES:
                large_arenas_kept -= self.arena_bytes
        else:
            arena = np.empty(self.arena_bytes + 64, np.uint8)
        bases[ARENA] = <char*>(((<size_t>data_of(arena)) + 63) & ~(<size_t>63))
        try:
            for ins in self.instructions:
                status = ins.run(bases)
                if status:
                    return None
            out = PyList_New(self.nout)
            for k in range(self.nout):
                spec = <tuple>self.outputs[k]
                target = into[k] if into is not None else None
                if spec[4]:  # written in place: handed over, or copied into the caller's array
                    if target is None:
                        target = direct[k]
                    elif target is not direct[k]:
                        memcpy(data_of(target), data_of(direct[k]), cnp.PyArray_NBYTES(<cnp.ndarray>target))
                    Py_INCREF(target)
                    PyList_SET_ITEM(out, k, target)
                    continue
                alias = spec[3]
                if target is None and alias is not None:  # a feed or a constant handed back as it is
                    target = feeds[<Py_ssize_t>alias[1]] if alias[0] == "feed" else alias[1]
                    Py_INCREF(target)
                    PyList_SET_ITEM(out, k, target)
                    continue
                if target is None:
                    target = _empty(spec[0], spec[1])
                (<OutCopy>self.out_copies[k]).run_into(bases, data_of(target))
                Py_INCREF(target)
                PyList_SET_ITEM(out, k, target)
            return out
        finally:  # kept for the next call unless enough are kept already, or big beyond the budget
            if self.arena_bytes <= KEEP_ARENA_BYTES:
                if len(self.arenas) < KEEP_ARENAS:
                    self.arenas.append(arena)
            elif not self.arenas and self.arena_bytes <= KEEP_LARGE_ARENA_BYTES \
                    and large_arenas_kept + self.arena_bytes <= KEEP_LARGE_TOTAL:
                self.arenas.append(arena)
                large_arenas_kept += self.arena_bytes

    def __dealloc__(self):
        global large_arenas_kept
        if self.arenas and self.arena_bytes > KEEP_ARENA_BYTES:
            large_arenas_kept -= self.arena_bytes * len(self.arenas)

    cdef bint into_ok(self, list into):
        cdef Py_ssize_t k, j
        cdef cnp.npy_intp* dims
        cdef tuple shape
        if len(into) != self.nout:
            return False
        for k in range(self.nout):
            value = into[k]
            if value is None:
                continue
            spec = <tuple>self.outputs[k]
            shape = <tuple>spec[0]
            if type(value) is not _NDARRAY:
                return False
            if not same_dtype(descr_of(value), spec[1]) or cnp.PyArray_NDIM(<cnp.ndarray>value) != len(shape) \
                    or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>value) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>value):
                return False
            dims = cnp.PyArray_DIMS(<cnp.ndarray>value)
            for j in range(len(shape)):
                if dims[j] != <Py_ssize_t>shape[j]:
                    return False
        return True


cdef bint overlaps_any(object target, list feeds):
    """Whether C-contiguous ``target``'s bytes meet any ndarray feed's (by address range: the
    instructions read feeds until the end, so an output sharing a feed's memory is written last)."""
    cdef char* lo = data_of(target)
    cdef char* hi = lo + cnp.PyArray_NBYTES(<cnp.ndarray>target)
    cdef char* flo
    cdef char* fhi
    for value in feeds:
        if type(value) is not _NDARRAY:
            continue
        byte_range(value, &flo, &fhi)
        if flo < hi and lo < fhi:
            return True
    return False


cdef void byte_range(object array, char** lo, char** hi) noexcept:
    """The lowest and one past the highest byte ``array`` reaches (any strides, negative too)."""
    cdef int j, nd = cnp.PyArray_NDIM(<cnp.ndarray>array)
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(<cnp.ndarray>array)
    cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(<cnp.ndarray>array)
    cdef char* start = data_of(array)
    lo[0] = start
    hi[0] = start + cnp.PyArray_ITEMSIZE(<cnp.ndarray>array)
    for j in range(nd):
        if dims[j] == 0:
            hi[0] = start  # no elements: reaches no byte
            return
        if strides[j] < 0:
            lo[0] += (dims[j] - 1) * strides[j]
        else:
            hi[0] += (dims[j] - 1) * strides[j]


cdef extern from "numpy/arrayobject.h":
    object PyArray_Empty(int nd, cnp.npy_intp* dims, cnp.dtype descr, int fortran)  # steals descr


cdef inline bint same_dtype(PyObject* descr, object dtype):
    """The usual case by identity; an equal descr made elsewhere ('<i4' read from a file) by value."""
    return descr == <PyObject*>dtype or cnp.PyArray_EquivTypes(<cnp.dtype><object>descr, <cnp.dtype>dtype)


cdef object _empty(tuple shape, dtype):
    cdef cnp.npy_intp dims[64]  # numpy's most dims
    cdef int k, nd = len(shape)
    if nd > 64:
        raise ValueError("program: too many dims")
    for k in range(nd):
        dims[k] = shape[k]
    Py_INCREF(dtype)
    return PyArray_Empty(nd, dims, <cnp.dtype>dtype, 0)


cdef class OutCopy(Copy):
    """A Copy whose destination is given per call (a fresh output array or the caller's)."""

    cdef int run_into(self, char** bases, char* dst) except -1:
        strided_copy(dst, at(bases, self.src), self.nd, self.shape, self.dst_strides, self.src_strides, self.inner)
        return 0


cdef class ProgramSet:
    """The compiled programs of one plan: the last one used, checked against the feeds in C,
    and Python's lookup by signature for any other."""
    cdef Program last
    cdef object lookup, find
    cdef public long long hits  # calls the last program took without asking Python

    def __init__(self, lookup, find):
        """``lookup(feeds)`` compiles on first sight (feeds checked by the caller);
        ``find(feeds)`` only returns a program already compiled."""
        self.lookup, self.find = lookup, find

    def run(self, list feeds, list into=None):
        """The program's outputs for ``feeds`` or None (no program for them, or it declined)."""
        return self._run(feeds, into)

    cdef object _run(self, list feeds, list into):
        return self._take(feeds, into, self.lookup)

    cdef object _run_cached(self, list feeds, list into):
        """``run`` for feeds nobody has checked: only a program compiled before (whose own check
        of the feeds then stands for the full one) runs them."""
        return self._take(feeds, into, self.find)

    cdef object _take(self, list feeds, list into, finder):
        """The last program on ``feeds`` when it accepts them (checked once), else ``finder``'s."""
        cdef char* bases[ABSOLUTE + 1]
        cdef Program program = self.last
        if program is not None and program.feeds_ok(feeds, bases):
            self.hits += 1
            return program._run_on(feeds, into, bases)
        program = finder(feeds)
        if program is None:
            return None
        self.last = program
        return program._run(feeds, into)
