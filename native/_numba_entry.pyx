# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Numba backend's per-call fast path in C: checks, outputs, one call of the op's cfunc.

Through Numba's dispatcher a kernel call costs more before any work (typing
and unboxing 22 arguments) than a whole small one-step call. ``EntryCore``
(subclassed by ``lstminfer.kernels.fused.FusedKernel``) checks the inputs
here, allocates the outputs through numpy's C API, fills the flat argument
block of ``lstminfer.kernels.numba_entry`` and calls its C entry with the GIL
released. Anything it does not take (other weights, dtypes, strides, shapes,
sequence_lens out of range) goes to ``self._slow``, the Python path, which
computes it or raises the reference's error.
"""
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import numpy as np
cimport numpy as cnp

cnp.import_array()

ctypedef int64_t (*entry_fn)(int64_t* block, double clip) noexcept nogil

# The block's slots: the same numbers as lstminfer/kernels/numba_entry.py (checked at bind).
cdef enum:
    S_X, S_X_D0, S_X_D1, S_LENS, S_HAS_LENS, S_H0, S_HAS_H0, S_C0, S_HAS_C0, S_H0_TMP, S_C0_TMP, S_Y, S_Y_TMP
    S_YH, S_YC, S_STATES, S_SCRATCH, S_SCRATCH_SIZE, S_WBUF, S_WBUF_SIZE, S_TABLE, S_TABLE_SIZE, S_FPARAMS
    S_FPARAMS_SIZE, S_SYNC, S_HIDDEN, S_INPUT, S_DIRECTIONS, S_NUM_STATES, S_NBLOCKS, S_REVERSE_FIRST, S_FLAG
    S_TIME_MAJOR, S_ROUTE, NUM_SLOTS

SLOT_NAMES = ("X", "X_D0", "X_D1", "LENS", "HAS_LENS", "H0", "HAS_H0", "C0", "HAS_C0", "H0_TMP", "C0_TMP", "Y",
              "Y_TMP", "YH", "YC", "STATES", "SCRATCH", "SCRATCH_SIZE", "WBUF", "WBUF_SIZE", "TABLE", "TABLE_SIZE",
              "FPARAMS", "FPARAMS_SIZE", "SYNC", "HIDDEN", "INPUT", "DIRECTIONS", "NUM_STATES", "NBLOCKS",
              "REVERSE_FIRST", "FLAG", "TIME_MAJOR", "ROUTE")
assert len(SLOT_NAMES) == NUM_SLOTS

ctypedef Py_ssize_t idx

cdef object _NDARRAY = np.ndarray
cdef int _ALIGN = 16  # floats: 64 bytes


cdef inline idx padded(idx n) noexcept nogil:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


cdef inline object empty(int nd, idx a, idx b, idx c, idx d):
    cdef cnp.npy_intp dims[4]
    dims[0], dims[1], dims[2], dims[3] = a, b, c, d
    return cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32, 0)


cdef inline bint f32_c_array(object value, int nd) noexcept:
    """An exact ndarray of native, aligned float32, C-contiguous, rank nd."""
    if type(value) is not _NDARRAY:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>value
    return (cnp.PyArray_NDIM(a) == nd and cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32
            and cnp.PyArray_ISBEHAVED_RO(a) and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef object given_or_empty(object out, int k, int nd, idx a, idx b, idx c, idx d):
    """out[k] when it is a writeable float32 C array of exactly these dims, else a new one."""
    cdef cnp.npy_intp* dims
    cdef idx want[4]
    cdef int j
    if out is not None:
        value = (<list>out)[k]
        if f32_c_array(value, nd) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>value):
            want[0], want[1], want[2], want[3] = a, b, c, d
            dims = cnp.PyArray_DIMS(<cnp.ndarray>value)
            for j in range(nd):
                if dims[j] != want[j]:
                    return empty(nd, a, b, c, d)
            return value
    return empty(nd, a, b, c, d)


cdef inline bint writeable(object value) noexcept:
    return type(value) is _NDARRAY and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>value)


cdef inline int64_t address(object value) noexcept:
    return <int64_t><uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>value)


cdef class EntryCore:
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P])`` and ``run_into(X, h[, c])``
    through the op's Numba cfunc; ``_bind_entry`` once at load (unbound: every call is ``_slow``)."""
    cdef entry_fn fn
    cdef bint ready
    cdef object constants  # (W, R, B, P) as given at load; identity means "the packed ones"
    cdef object keep  # the arrays the block's constant addresses point into
    cdef object scratch_size  # numba_rnn.scratch_size, called when (T, B) changes
    cdef int64_t consts[NUM_SLOTS]
    cdef double clip
    cdef idx H, I_, D, S, G, outputs  # (not I: complex.h's macro)
    cdef bint check_p, time_major
    cdef idx last_T, last_B, last_need
    # one scratch buffer for whichever call gets it first; a concurrent call (another
    # thread, while the GIL is released) allocates its own. busy: read and set with the GIL.
    cdef float* scratch
    cdef idx scratch_floats
    cdef bint scratch_busy
    cdef readonly int64_t last_route  # the entry's ROUTE of the last call (1: numba_rnn's one-step path)

    def __dealloc__(self):
        free(self.scratch)

    def _bind_entry(self, uintptr_t entry_address, tuple slot_names, W, R, B, P, bint check_p,
                    wbuf, table, fparams, sync, idx hidden_size, idx input_size, idx num_directions,
                    idx num_states, idx gates, idx nblocks, bint reverse_first, bint flag, bint time_major,
                    double clip, idx outputs, scratch_size):
        """Hold the packed constants (C-contiguous arrays, kept alive here) as block addresses."""
        if slot_names != SLOT_NAMES:
            raise ValueError("_numba_entry: the block layout differs from lstminfer.kernels.numba_entry's "
                             "(rebuild the extension)")
        for value, dtype in ((wbuf, np.float32), (table, np.int64), (fparams, np.float32), (sync, np.int64)):
            if not (type(value) is _NDARRAY and value.dtype == dtype and value.ndim == 1
                    and value.flags.c_contiguous and value.size > 0):
                raise ValueError(f"_numba_entry: constants must be non-empty C-contiguous {dtype.__name__} vectors")
        self.keep = (wbuf, table, fparams, sync)
        self.constants = (W, R, B, P)
        self.scratch_size = scratch_size
        cdef idx k
        for k in range(NUM_SLOTS):
            self.consts[k] = 0
        self.consts[S_WBUF], self.consts[S_WBUF_SIZE] = address(wbuf), wbuf.size
        self.consts[S_TABLE], self.consts[S_TABLE_SIZE] = address(table), table.size
        self.consts[S_FPARAMS], self.consts[S_FPARAMS_SIZE] = address(fparams), fparams.size
        self.consts[S_SYNC] = address(sync)
        self.consts[S_HIDDEN], self.consts[S_INPUT] = hidden_size, input_size
        self.consts[S_DIRECTIONS], self.consts[S_NUM_STATES] = num_directions, num_states
        self.consts[S_NBLOCKS] = nblocks
        self.consts[S_REVERSE_FIRST], self.consts[S_FLAG], self.consts[S_TIME_MAJOR] = reverse_first, flag, time_major
        self.H, self.I_, self.D, self.S, self.G = hidden_size, input_size, num_directions, num_states, gates
        self.outputs, self.check_p, self.time_major, self.clip = outputs, check_p, time_major, clip
        self.last_T = self.last_B = -1
        self.fn = <entry_fn>entry_address
        self.ready = entry_address != 0

    @property
    def entry_bound(self):
        """Whether calls take the C entry (False: every call runs the Python path)."""
        return bool(self.ready)

    def __call__(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
                 out=None):
        """``out``: arrays to write (Y, Y_h[, Y_c]) into, each None or of the output's exact shape
        (C-contiguous, writeable float32, not overlapping an input); a compiled program hands its own
        memory (``writes_into``), so that nothing is copied after the call. The fast path returns
        them; the Python path ignores them."""
        cdef tuple constants
        if self.ready:
            constants = <tuple>self.constants
            if (W is constants[0] and R is constants[1] and B is constants[2]
                    and (P is constants[3] or not self.check_p)):
                result = self.fast(X, sequence_lens, initial_h, initial_c, out)
                if result is not None:
                    return result
        return self._slow(X, W, R, B, sequence_lens, initial_h, initial_c, P)

    cdef bint state(self, int64_t* block, object value, idx batch, int slot, int used_slot) noexcept:
        """Point the block at an initial state of the node's exact shape; False: Python path."""
        cdef cnp.ndarray a
        if value is None:
            return True
        if not f32_c_array(value, 3):
            return False
        a = <cnp.ndarray>value
        if self.time_major:
            if a.shape[0] != self.D or a.shape[1] != batch:
                return False
        elif a.shape[0] != batch or a.shape[1] != self.D:
            return False
        if a.shape[2] != self.H:
            return False
        block[slot], block[used_slot] = address(value), 1
        return True

    cdef bint bind(self, int64_t* block, object X, object lens, object h0, object c0) noexcept:
        """Fill the block's per-call inputs; False: these need the Python path."""
        cdef cnp.ndarray a
        cdef idx batch
        if not f32_c_array(X, 3):
            return False
        a = <cnp.ndarray>X
        if a.shape[2] != self.I_ or a.shape[0] == 0 or a.shape[1] == 0:
            return False
        memcpy(block, self.consts, sizeof(self.consts))
        block[S_X], block[S_X_D0], block[S_X_D1] = address(X), a.shape[0], a.shape[1]
        batch = a.shape[1] if self.time_major else a.shape[0]
        if lens is not None:
            if type(lens) is not _NDARRAY:
                return False
            a = <cnp.ndarray>lens
            if not (cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_TYPE(a) == cnp.NPY_INT32 and a.shape[0] == batch
                    and cnp.PyArray_ISBEHAVED_RO(a) and cnp.PyArray_IS_C_CONTIGUOUS(a)):
                return False
            block[S_LENS], block[S_HAS_LENS] = address(lens), 1
        if not self.state(block, h0, batch, S_H0, S_HAS_H0):
            return False
        return self.S == 1 or self.state(block, c0, batch, S_C0, S_HAS_C0)

    cdef idx driver_need(self, idx T, idx batch) except -1:
        """numba_rnn.scratch_size for (T, batch); Python only when they change."""
        if T != self.last_T or batch != self.last_B:
            need = self.scratch_size(T, batch, self.G, self.H, self.time_major)
            self.last_T, self.last_B, self.last_need = T, batch, need
        return self.last_need

    cdef int launch(self, int64_t* block) except -2:
        """Scratch carved (and the transposes placed), then the entry without the GIL; its status."""
        cdef idx T, batch, D = self.D, H = self.H, off, k
        cdef int64_t status
        cdef float* scratch
        cdef bint own = not self.scratch_busy
        cdef idx tmp_at[4]
        T = block[S_X_D0] if self.time_major else block[S_X_D1]
        batch = block[S_X_D1] if self.time_major else block[S_X_D0]
        off = padded(self.driver_need(T, batch))
        block[S_SCRATCH_SIZE] = off
        tmp_at[0] = off  # states
        off += padded(self.S * D * batch * H)
        tmp_at[1] = tmp_at[2] = tmp_at[3] = -1
        # layout=1: [B, T, D, H] and [B, D, H] have the driver's memory order only in these cases
        if not self.time_major and batch > 1 and not (T == 1 and D == 1):
            tmp_at[1] = off
            off += padded(T * D * batch * H)
        if not self.time_major and batch > 1 and D > 1:
            if block[S_HAS_H0]:
                tmp_at[2] = off
                off += padded(D * batch * H)
            if block[S_HAS_C0]:
                tmp_at[3] = off
                off += padded(D * batch * H)
        if own:
            if self.scratch_floats < off:
                free(self.scratch)
                self.scratch_floats = 0
                self.scratch = <float*>malloc(off * sizeof(float) + 64)
                if self.scratch == NULL:
                    raise MemoryError()
                self.scratch_floats = off
            self.scratch_busy = True
            scratch = self.scratch
        else:
            scratch = <float*>malloc(off * sizeof(float) + 64)
            if scratch == NULL:
                raise MemoryError()
        block[S_SCRATCH] = ((<int64_t><uintptr_t>scratch) + 63) // 64 * 64  # cache-line aligned
        block[S_STATES] = block[S_SCRATCH] + tmp_at[0] * 4
        if tmp_at[1] >= 0:
            block[S_Y_TMP] = block[S_SCRATCH] + tmp_at[1] * 4
        if tmp_at[2] >= 0:
            block[S_H0_TMP] = block[S_SCRATCH] + tmp_at[2] * 4
        if tmp_at[3] >= 0:
            block[S_C0_TMP] = block[S_SCRATCH] + tmp_at[3] * 4
        with nogil:
            status = self.fn(block, self.clip)
        self.last_route = block[S_ROUTE]
        if own:
            self.scratch_busy = False
        else:
            free(scratch)
        return <int>status

    cdef object fast(self, object X, object lens, object h0, object c0, object out):
        cdef int64_t block[NUM_SLOTS]
        cdef idx T, batch, H = self.H, D = self.D
        if not self.bind(block, X, lens, h0, c0):
            return None
        if out is not None and (type(out) is not list or len(<list>out) < self.outputs):
            out = None
        if self.time_major:
            T, batch = block[S_X_D0], block[S_X_D1]
            Y = given_or_empty(out, 0, 4, T, D, batch, H)
            Yh = given_or_empty(out, 1, 3, D, batch, H, 0) if self.outputs >= 2 else None
            Yc = given_or_empty(out, 2, 3, D, batch, H, 0) if self.outputs >= 3 else None
        else:
            T, batch = block[S_X_D1], block[S_X_D0]
            Y = given_or_empty(out, 0, 4, batch, T, D, H)
            Yh = given_or_empty(out, 1, 3, batch, D, H, 0) if self.outputs >= 2 else None
            Yc = given_or_empty(out, 2, 3, batch, D, H, 0) if self.outputs >= 3 else None
        block[S_Y] = address(Y)
        if Yh is not None:
            block[S_YH] = address(Yh)
        if Yc is not None:
            block[S_YC] = address(Yc)
        if self.launch(block):  # sequence_lens outside [0, T]: the Python path sends it to the reference
            return None
        if Yc is not None:
            return (Y, Yh, Yc)
        if Yh is not None:
            return (Y, Yh)
        return (Y,)

    def run_into(self, X, h, c=None, then=None, out=None):
        """One chunk of a stream: Y for ``X`` from the states ``h`` (and ``c`` for LSTM), which
        receive the new states in place. ``h``/``c``: C-contiguous, writeable float32
        [D, batch, H] (layout 0) / [batch, D, H], owned by the caller. Returns Y (fresh), or
        None when anything needs the general path (``__call__``); then(Y) instead of Y when
        ``then`` is given (the Cython kernel's contract; here called after the run). ``out``
        (an array the Cython kernel may fill as Y) is not used here: Y is always fresh."""
        cdef int64_t block[NUM_SLOTS]
        cdef idx T, batch, H = self.H, D = self.D
        if not self.ready or (c is None) != (self.S == 1):
            return None
        if not writeable(h) or (c is not None and not writeable(c)):
            return None
        if not self.bind(block, X, None, h, c):
            return None
        if self.time_major:
            T, batch = block[S_X_D0], block[S_X_D1]
            Y = empty(4, T, D, batch, H)
        else:
            T, batch = block[S_X_D1], block[S_X_D0]
            Y = empty(4, batch, T, D, H)
        block[S_Y], block[S_YH] = address(Y), address(h)
        if c is not None:
            block[S_YC] = address(c)
        if self.launch(block):
            return None
        return Y if then is None else then(Y)
