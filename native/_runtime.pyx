# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-call loop of ``Model.run`` in C: feed checks, the step loop, output detaching.

At H=64 one recurrent step is ~2 µs of kernel; the same work as Python
bytecode (check three feeds, walk the schedule, check the outputs for
aliasing) cost ~5 µs more. These functions do exactly what the Python code
in model.py/plan.py does (which remains the fallback when this extension is
not built, and the path for anything unusual): they either finish the job
or return None so the caller takes the full path, which reports errors.
"""
from cpython.ref cimport PyObject, Py_INCREF

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # steals a reference to descr
    object PyArray_NewFromDescr(type subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, object base)

from lstminfer.errors import LstminferError

cdef extern from *:
    """
    /* The leading fields of numpy's PyArrayObject_fields (stable across numpy 1.x
       and 2.x); read only after layout_ok() checked them on live arrays. */
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        Py_ssize_t *dimensions;
        Py_ssize_t *strides;
        PyObject *base;
        PyObject *descr;
        int flags;
    } rt_ndarray;
    #define RT_WRITEABLE 0x0400
    """
    ctypedef struct rt_ndarray:
        int nd
        Py_ssize_t* dimensions
        Py_ssize_t* strides
        PyObject* base
        PyObject* descr
        int flags
    const int RT_WRITEABLE

cdef extern from "string.h":
    void* memcpy(void* dst, const void* src, size_t n) nogil

cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        char *data;
    } rt_ndarray_data;
    #define RT_C_CONTIGUOUS 0x0001
    """
    ctypedef struct rt_ndarray_data:
        char* data
    const int RT_C_CONTIGUOUS

cdef type _NDARRAY = np.ndarray


cdef inline rt_ndarray* as_array(object value) noexcept:
    return <rt_ndarray*><PyObject*>value


def _layout_ok():
    """Does rt_ndarray match numpy's arrays here? (checked on live arrays, once)"""
    cdef rt_ndarray* a
    base = np.zeros((3, 4), dtype=np.float32)
    view = base[1:]
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    for arr in (base, view, frozen):
        a = as_array(arr)
        if a.nd != arr.ndim or a.descr != <PyObject*>arr.dtype or bool(a.flags & RT_WRITEABLE) != arr.flags.writeable:
            return False
        if (a.base == NULL) != (arr.base is None) or (a.base != NULL and <object>a.base is not arr.base):
            return False
        for k in range(arr.ndim):
            if a.dimensions[k] != arr.shape[k]:
                return False
        if <size_t>(<rt_ndarray_data*><PyObject*>arr).data != <size_t>arr.__array_interface__["data"][0]:
            return False
    return True


cdef bint LAYOUT_OK = _layout_ok()
AVAILABLE = LAYOUT_OK


cdef inline object root_of(object value):
    """The ndarray that owns ``value``'s memory (following .base through ndarrays)."""
    cdef PyObject* base = as_array(value).base
    while base != NULL and type(<object>base) is _NDARRAY:
        value = <object>base
        base = as_array(value).base
    return value


cdef extern from "Python.h":
    object PyObject_Call(object func, object args, PyObject* kwargs)
    object PyTuple_New(Py_ssize_t n)
    void PyTuple_SET_ITEM(object t, Py_ssize_t i, object v)  # steals v: INCREF first
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    void PyList_SET_ITEM(object l, Py_ssize_t i, object v)  # steals v, does not release the old item
    object PyList_New(Py_ssize_t n)


cdef class FeedChecks:
    """The fast acceptance test of a model's feeds, its numbers held as C arrays.

    ``checks``: per input (name, dtype, rank, ((axis, size), ...)). ``feeds(feed)`` returns
    the feeds in input order when each is an exact ndarray of its input's dtype, rank and
    fixed dims and ``feed`` has no other names; else None (the caller checks fully and reports).
    """
    cdef tuple names, dtypes
    cdef Py_ssize_t n
    cdef Py_ssize_t[:] rank, dim_at, axis, size  # input k's fixed dims: axis/size[dim_at[k]:dim_at[k+1]]

    def __init__(self, tuple checks):
        cdef list dim_at = [0], axes = [], sizes = []
        for name, dtype, rank, dims in checks:
            for a, d in dims:
                if not 0 <= a < rank:
                    raise ValueError(f"FeedChecks: axis {a} outside input {name!r}'s rank {rank}")
                axes.append(a)
                sizes.append(d)
            dim_at.append(len(axes))
        self.names = tuple(c[0] for c in checks)
        self.dtypes = tuple(np.dtype(c[1]) for c in checks)
        self.n = len(checks)
        self.rank = _index_array([c[2] for c in checks])
        self.dim_at = _index_array(dim_at)
        self.axis = _index_array(axes)
        self.size = _index_array(sizes)

    def feeds(self, dict feed):
        return self._feeds(feed)

    cdef object _feeds(self, dict feed):
        cdef rt_ndarray* a
        cdef Py_ssize_t k, j
        if len(feed) != self.n:
            return None
        out = PyList_New(self.n)
        for k in range(self.n):
            value = feed.get(self.names[k])
            if type(value) is not _NDARRAY:
                return None
            a = as_array(value)
            if a.descr != <PyObject*>self.dtypes[k] or a.nd != self.rank[k]:
                return None
            for j in range(self.dim_at[k], self.dim_at[k + 1]):
                if a.dimensions[self.axis[j]] != self.size[j]:
                    return None
            Py_INCREF(value)
            PyList_SET_ITEM(out, k, value)
        return out


cdef class Schedule:
    """``Plan.execute`` over one compiled schedule, its slot numbers held as C arrays.

    ``steps``: (kernel, inputs, outputs, frees, step) per step, input slots valid list
    indices, ABSENT (-1) outputs skipped; ``template`` the plan's slot values (constants,
    None elsewhere); ``feed_slots`` where the feeds go; ``wanted`` the slots returned.
    ``on_error(step, args, error, outputs)`` builds the exception for a failing kernel
    (``outputs`` None) or for one returning too few outputs. Immutable: shared by threads.
    """
    cdef list template, kernels, step_objects
    cdef Py_ssize_t nfeeds, nsteps, nwanted
    cdef object on_error
    # per step k: inputs slot_at[in_at[k]:in_at[k+1]], outputs out_at.., frees free_at..
    cdef Py_ssize_t[:] feed_slot, wanted_slot, slot_at, in_at, out_at, free_at

    def __init__(self, list template, tuple feed_slots, tuple steps, tuple wanted, on_error):
        cdef list slots = []
        cdef list in_at = [], out_at = [], free_at = []
        self.template, self.on_error = template, on_error
        self.kernels = [entry[0] for entry in steps]
        self.step_objects = [entry[4] for entry in steps]
        for entry in steps:  # one flat array: inputs, then outputs, then frees of each step
            in_at.append(len(slots))
            slots.extend(entry[1])
            out_at.append(len(slots))
            slots.extend(entry[2])
            free_at.append(len(slots))
            slots.extend(entry[3])
        in_at.append(len(slots))
        # every slot written or read without bounds checks in _run: checked here, once
        for name, values, lowest in (("inputs", [s for entry in steps for s in entry[1]], 0),
                                     ("outputs", [s for entry in steps for s in entry[2]], -1),
                                     ("frees", [s for entry in steps for s in entry[3]], 0),
                                     ("feed slots", feed_slots, 0), ("wanted", wanted, 0)):
            if any(not lowest <= s < len(template) for s in values):
                raise ValueError(f"Schedule: {name} {values} outside the template's {len(template)} slots")
        self.nfeeds, self.nsteps, self.nwanted = len(feed_slots), len(steps), len(wanted)
        self.feed_slot = _index_array(feed_slots)
        self.wanted_slot = _index_array(wanted)
        self.slot_at = _index_array(slots)
        self.in_at = _index_array(in_at)
        self.out_at = _index_array(out_at)
        self.free_at = _index_array(free_at)

    def run(self, list feeds):
        """The wanted values after running every step on ``feeds`` (in feed-slot order; extra ignored)."""
        return self._run(feeds)

    cdef list _run(self, list feeds):
        cdef list values = list(self.template)
        cdef Py_ssize_t i, k, j, slot, n = min(self.nfeeds, len(feeds))  # as zip() would
        cdef Py_ssize_t a, b, nout
        for i in range(n):
            values[self.feed_slot[i]] = feeds[i]
        for k in range(self.nsteps):
            a, b = self.in_at[k], self.out_at[k]
            args = PyTuple_New(b - a)
            for j in range(b - a):
                value = <object>PyList_GET_ITEM(values, self.slot_at[a + j])
                Py_INCREF(value)
                PyTuple_SET_ITEM(args, j, value)
            try:
                result = PyObject_Call(self.kernels[k], args, NULL)
            except LstminferError:
                raise
            except Exception as e:
                raise self.on_error(self.step_objects[k], list(args), e, None) from e
            nout = self.free_at[k] - b
            if len(result) < nout:
                raise self.on_error(self.step_objects[k], list(args), None, result)
            for j in range(nout):
                slot = self.slot_at[b + j]
                if slot >= 0:
                    values[slot] = result[j]
            for j in range(self.free_at[k], self.in_at[k + 1]):
                values[self.slot_at[j]] = None
        out = PyList_New(self.nwanted)
        for i in range(self.nwanted):
            value = <object>PyList_GET_ITEM(values, self.wanted_slot[i])
            Py_INCREF(value)
            PyList_SET_ITEM(out, i, value)
        return out


cdef Py_ssize_t[:] _index_array(values):
    return np.asarray(list(values), dtype=np.intp) if len(values) else np.zeros(1, dtype=np.intp)


def detach(list outputs, list feeds):
    return _detach(outputs, feeds)


cdef object _detach(list outputs, list feeds):
    """Model.run's outputs, each copied if it aliases a feed or is read-only (a constant);
    None when an output is not a plain ndarray owning (through its bases) its memory: the
    caller then takes the general path."""
    cdef list out = []
    cdef list feed_roots = None
    for value in outputs:
        if type(value) is not _NDARRAY:
            return None
        root = root_of(value)
        if as_array(root).base != NULL:
            return None  # memory owned by something else (a buffer, bytes...)
        if not (as_array(value).flags & RT_WRITEABLE):
            out.append(value.copy())
            continue
        if feed_roots is None:
            feed_roots = [root_of(f) if type(f) is _NDARRAY else f for f in feeds]
        for f in feed_roots:
            if f is root:
                value = value.copy()
                break
        out.append(value)
    return out


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* A chunk's row into the batch: inline for the small rows of a pool step (the libc call
       per 256-byte row showed in its profile), memcpy beyond. */
    static inline void rt_copy(char *dst, const char *src, Py_ssize_t n) {
    #if defined(__SSE2__)
        if (n <= 1024) {
            Py_ssize_t i = 0;
            for (; i + 16 <= n; i += 16)
                _mm_storeu_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
            for (; i < n; i++)
                dst[i] = src[i];
            return;
        }
    #endif
        memcpy(dst, src, (size_t)n);
    }
    """
    void rt_copy(char* dst, const char* src, Py_ssize_t n) noexcept nogil
    dict _PyDict_NewPresized(Py_ssize_t minused)


cdef inline bint chunk_ok(object chunk, PyObject* descr, tuple shape):
    """An exact C-contiguous ndarray of dtype ``descr`` and of ``shape``: a chunk copied as is."""
    cdef rt_ndarray* a
    cdef Py_ssize_t k
    if type(chunk) is not _NDARRAY:
        return False
    a = as_array(chunk)
    if a.descr != descr or a.nd != len(shape) or not (a.flags & RT_C_CONTIGUOUS):
        return False
    for k in range(a.nd):
        if a.dimensions[k] != <Py_ssize_t>shape[k]:
            return False
    return True


cdef extern from "Python.h":
    long long as_long_long "PyLong_AsLongLong"(PyObject* value) noexcept
    void PyErr_Clear() noexcept


cdef inline Py_ssize_t slot_by_id(object sid, const long long* sid_at, long long id_mask,
                                  Py_ssize_t max_streams):
    """The slot of open stream ``sid`` (an exact int: 1.0 or True must not find stream 1) from
    the pool's ids: generation << id bits | slot, and sid_at[slot] the id open there (-1: none);
    -1 if none. Two array reads where a dict lookup cost ~20 ns a stream."""
    cdef long long value
    cdef Py_ssize_t slot
    if type(sid) is not int:
        return -1
    value = as_long_long(<PyObject*>sid)
    if value < 0:
        PyErr_Clear()  # -1 with an overflow error: no such id either
        return -1
    slot = <Py_ssize_t>(value & id_mask)
    if slot >= max_streams or sid_at[slot] != value:
        return -1
    return slot


def gather_chunks(list chunks, out, tuple shape):
    """Copy each chunk (an exact C-contiguous ndarray of ``out``'s dtype and of ``shape``) into
    ``out[i]`` (C-contiguous, ``len(chunks)`` rows of ``shape``); False, copying nothing
    useful, as soon as a chunk is anything else (the caller then checks them one by one)."""
    cdef rt_ndarray* o = as_array(out)
    cdef Py_ssize_t i, k, n = len(chunks), nd = len(shape)
    cdef Py_ssize_t row_bytes = (<object>o.descr).itemsize
    if type(out) is not _NDARRAY or not (o.flags & RT_C_CONTIGUOUS) or o.nd != nd + 1 or o.dimensions[0] != n:
        return False
    for k in range(nd):
        if o.dimensions[k + 1] != <Py_ssize_t>shape[k]:
            return False
        row_bytes *= <Py_ssize_t>shape[k]
    cdef char* dst = (<rt_ndarray_data*><PyObject*>out).data
    for i in range(n):
        chunk = chunks[i]
        if not chunk_ok(chunk, o.descr, shape):
            return False
        rt_copy(dst + i * row_bytes, (<rt_ndarray_data*><PyObject*>chunk).data, row_bytes)
    return True


def lookup_slots(sid_at, int id_bits, list sids):
    """(slots, contiguous) for the stream ids ``sids`` (a pool's ids: see slot_by_id; exact ints
    only), contiguous when they are lo, lo+1, ...; None if any id is unknown or not an int
    (the caller then reports which)."""
    cdef const long long[::1] ids = sid_at
    cdef long long mask = (1LL << id_bits) - 1
    cdef list slots = []
    cdef bint contiguous = True
    cdef Py_ssize_t i, first = 0, slot
    for i in range(len(sids)):
        slot = slot_by_id(sids[i], &ids[0], mask, ids.shape[0])
        if slot < 0:
            return None
        if i == 0:
            first = slot
        elif slot != first + i:
            contiguous = False
        slots.append(slot)
    return slots, contiguous


def rows_by_stream(list sids, y, int axis):
    """{sids[i]: y's row i along ``axis``, as a view keeping that axis (size 1)}: the pool's
    per-stream outputs. Made here because numpy's own view making (``list(y)``) costs
    about twice as much per row. None when ``y`` is not a writeable ndarray with ``len(sids)``
    rows along ``axis`` (the caller then splits it in Python)."""
    return _rows(sids, None, y, axis)


cdef object _rows(list sids, dict keyed, y, int axis):
    """rows_by_stream for the ids ``sids``, or the keys of ``keyed`` in its order when sids is None."""
    cdef Py_ssize_t n = len(sids) if sids is not None else len(keyed), i, pos = 0
    cdef cnp.ndarray a
    cdef cnp.npy_intp dims[32]
    cdef cnp.npy_intp* strides
    cdef char* data
    cdef int k, nd
    cdef dict out
    cdef PyObject* key
    cdef PyObject* value
    if type(y) is not _NDARRAY:
        return None
    a = <cnp.ndarray>y
    nd = cnp.PyArray_NDIM(a)
    if not (0 <= axis < nd <= 32) or cnp.PyArray_DIMS(a)[axis] != n or not cnp.PyArray_ISWRITEABLE(a):
        return None
    descr = a.dtype
    strides = cnp.PyArray_STRIDES(a)
    data = cnp.PyArray_BYTES(a)
    for k in range(nd):
        dims[k] = cnp.PyArray_DIMS(a)[k]
    dims[axis] = 1
    out = _PyDict_NewPresized(n)  # no resizing on the way to n entries
    for i in range(n):
        if sids is not None:
            sid = sids[i]
        elif PyDict_Next(keyed, &pos, &key, &value):
            sid = <object>key
        else:
            return None  # keyed changed size: cannot happen under the pool's lock
        Py_INCREF(descr)
        row = PyArray_NewFromDescr(_NDARRAY, descr, nd, dims, strides, data + i * strides[axis],
                                   cnp.NPY_ARRAY_WRITEABLE, None)
        Py_INCREF(a)
        cnp.PyArray_SetBaseObject(row, a)  # steals the reference
        out[sid] = row
    return out


include "_program.pxi"


cdef class CheckedRun:
    """Model.run(None, feed) in one call: ``FeedChecks``, the plan's ``Schedule`` of all
    outputs, ``detach``. Returns None (nothing run) when the feeds need the full check;
    ``detach_fallback(outputs, feeds)`` handles outputs ``detach`` declines."""
    cdef FeedChecks checks
    cdef Schedule schedule
    cdef object detach_fallback
    cdef public ProgramSet programs  # the plan compiled per signature (None: the schedule alone)

    def __init__(self, FeedChecks checks, Schedule schedule, detach_fallback):
        self.checks, self.schedule, self.detach_fallback = checks, schedule, detach_fallback

    def __call__(self, dict feed):
        return self.run(feed)

    cdef object run(self, dict feed):
        feeds = self.checks._feeds(feed)
        if feeds is None:
            return None
        if self.programs is not None:
            outputs = self.programs._run(feeds, None)
            if outputs is not None:
                return outputs  # fresh arrays: nothing to detach
        outputs = self.schedule._run(feeds)
        detached = _detach(outputs, feeds)
        return detached if detached is not None else self.detach_fallback(outputs, feeds)


cdef class RunCore:
    """``Model.run``'s usual call in C (lstminfer.model.Model subclasses it): ``run(None, dict)``
    goes straight to the plan's ``CheckedRun``; anything else, or feeds it declines, to the
    Python ``_run_checked``. The Python method alone cost ~0.3 us of a 2.3 us GRU H=64 step."""
    cdef public CheckedRun _run_all  # None: no C path for this plan

    def run(self, output_names, input_feed, run_options=None):
        """Run the model; returns the requested outputs in order, like onnxruntime."""
        cdef CheckedRun whole = self._run_all
        if output_names is None and type(input_feed) is dict and whole is not None:
            outputs = whole.run(<dict>input_feed)
            if outputs is not None:
                return outputs
        return self._run_checked(output_names, input_feed)


cdef class StreamCore:
    """``Stream.step``'s fast path in C (lstminfer.streaming.Stream subclasses it): the chunk
    goes straight to the kernel's ``run_into`` with the stream's states (it checks the chunk
    and writes the new states over them); anything it declines goes to ``_step_checked``."""
    cdef public object _into  # the kernel's run_into, or None
    cdef public list _states
    cdef public ProgramSet _programs  # a whole model's streaming plan compiled (None: none)
    cdef public tuple _names  # its data outputs

    def step(self, x):
        """Run one chunk (any number of time steps >= 1, batch 1); returns the outputs like ``predict``."""
        cdef list states = self._states
        cdef Py_ssize_t n
        if self._into is not None:
            if len(states) == 2:
                y = self._into(x, states[0], states[1])
            elif len(states) == 1:
                y = self._into(x, states[0])
            else:
                y = self._into(x, *states)
            if y is not None:
                return y
        elif self._programs is not None:  # a chunk of a signature already compiled: new states in place
            n = len(self._names)
            out = self._programs._run_cached([x] + states, [None] * n + states)
            if out is not None:
                return out[0] if n == 1 else dict(zip(self._names, out))
        return self._step_checked(x)


cdef extern from "Python.h":
    int PyDict_Next(object p, Py_ssize_t* ppos, PyObject** pkey, PyObject** pvalue)


cdef class RowsOf:
    """then(Y) for the kernel's run_into: {stream id: its row of Y} (rows_by_stream, else the
    pool's Python split) for the ids of ``frames``, the step under way (set per step, under
    the pool's lock)."""
    cdef dict frames
    cdef int axis
    cdef object split_rows
    cdef object y  # the Y it was last called with

    def __init__(self, int axis, split_rows):
        self.axis, self.split_rows = axis, split_rows

    def __call__(self, y):
        self.y = y
        rows = _rows(None, self.frames, y, self.axis)
        return rows if rows is not None else self.split_rows(list(self.frames), y)


cdef class PoolCore:
    """``StreamPool.step``'s usual call in C (lstminfer.streaming.StreamPool subclasses it): a
    non-empty dict goes to the pool's ``PoolStepCore`` under the pool's lock; anything else,
    or frames it declines, to the Python ``_step_checked``, which reports errors."""
    cdef public PoolStepCore _fast  # None: no C path for this pool's model
    cdef public tuple _shape  # a chunk shape that passed the full check (None: none yet)

    def step(self, frames):
        """Step the given streams by one chunk each, in one batched run; streams not given are untouched.

        All chunks must have the same shape (same number of time steps).
        """
        cdef PoolStepCore fast = self._fast
        if fast is not None and type(frames) is dict and len(<dict>frames) > 0:
            done = fast.locked(<dict>frames)
            if done is not None:
                return done
        return self._step_checked(frames)


cdef class PoolStepCore:
    """``StreamPool.step``'s fast path in C, for a pool whose model is one recurrent node with
    rank-3 chunks: ids looked up, chunks gathered into one batch, the kernel's ``run_into``
    on the slots' state views, {stream id: its view of Y}. Returns None (nothing changed)
    whenever anything is unusual; the caller then takes its full path, which reports errors."""
    cdef object into, empty, dtype, slot_views, X, Y, acquire, release, sid_array
    cdef PoolCore pool
    cdef ProgramSet programs  # a whole model of one data output (into None): its streaming plan compiled
    cdef dict views
    cdef const long long* sid_at
    cdef long long id_mask
    cdef Py_ssize_t max_streams
    cdef Py_ssize_t batch_axis  # of the chunks (and of X): 1 time-major, 0 batch-major
    cdef RowsOf rows_of

    def __init__(self, into, PoolCore pool, lock, sid_at, int id_bits, dict views, slot_views,
                 Py_ssize_t batch_axis, int out_axis, split_rows, ProgramSet programs=None):
        """``sid_at``: the pool's int64 array of the id open in each slot (-1: none), updated in
        place by open/close; ids are generation << id_bits | slot. ``into``: the bare recurrent
        node's run_into; else (None) ``programs``, the compiled programs of a one-output model,
        which run a batch whose signature the pool's full path compiled before."""
        cdef const long long[::1] ids = sid_at
        if (into is None) == (programs is None):
            raise ValueError("PoolStepCore: one of into and programs")
        self.into, self.pool, self.views, self.slot_views = into, pool, views, slot_views
        self.programs = programs
        self.acquire, self.release = lock.acquire, lock.release
        self.sid_array, self.sid_at, self.max_streams = sid_at, &ids[0], ids.shape[0]
        self.id_mask = (1LL << id_bits) - 1
        self.batch_axis = batch_axis
        self.rows_of = RowsOf(out_axis, split_rows)  # split_rows: (sids, Y) -> dict, where rows_by_stream declines
        self.empty = np.empty
        self.dtype = np.dtype(np.float32)

    cdef object locked(self, dict frames):
        """__call__ holding the pool's lock."""
        self.acquire()
        try:
            return self._step(frames)
        finally:
            self.release()

    cdef object batch_buffer(self, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2):
        """The step's batch X [d0, d1, d2], reused from the last step of that shape: it never
        leaves this object (the kernel reads it during the call) and the pool's lock serializes
        steps, where a fresh 16 KiB buffer per step cost ~1 us in malloc at 64 streams."""
        cdef rt_ndarray* a
        X = self.X
        if X is not None:
            a = as_array(X)
            if a.dimensions[0] == d0 and a.dimensions[1] == d1 and a.dimensions[2] == d2:
                return X
        X = self.empty((d0, d1, d2), self.dtype)
        if d0 * d1 * d2 <= (1 << 20):  # kept only while small (1M floats)
            self.X = X
        return X

    def __call__(self, dict frames):
        """One step (the caller holds the pool's lock); None when declined."""
        return self._step(frames)

    cdef object _step(self, dict frames):
        cdef Py_ssize_t n = len(frames), pos = 0, i = 0, t, T, I, first = 0, slot
        cdef PyObject* key
        cdef PyObject* value
        cdef tuple shape = self.pool._shape
        cdef char* dst
        cdef char* src
        if n == 0 or shape is None or len(shape) != 3:
            return None
        if self.batch_axis == 1:  # chunks [T, 1, I] -> X [T, n, I]
            T, I = <Py_ssize_t>shape[0], <Py_ssize_t>shape[2]
            if <Py_ssize_t>shape[1] != 1:
                return None
            X = self.batch_buffer(T, n, I)
        elif self.batch_axis == 0:  # chunks [1, T, I] -> X [n, T, I]
            T, I = <Py_ssize_t>shape[1], <Py_ssize_t>shape[2]
            if <Py_ssize_t>shape[0] != 1:
                return None
            X = self.batch_buffer(n, T, I)
        else:
            return None
        dst = (<rt_ndarray_data*><PyObject*>X).data
        while PyDict_Next(frames, &pos, &key, &value):
            sid = <object>key
            slot = slot_by_id(sid, self.sid_at, self.id_mask, self.max_streams)
            if slot < 0:
                return None
            if i == 0:
                first = slot
            elif slot != first + i:
                return None  # not consecutive slots: the full path gathers them
            chunk = <object>value
            if not chunk_ok(chunk, <PyObject*>self.dtype, shape):
                return None
            src = (<rt_ndarray_data*><PyObject*>chunk).data
            if self.batch_axis == 1:
                for t in range(T):
                    rt_copy(dst + ((t * n + i) * I) * 4, src + t * I * 4, I * 4)
            else:
                rt_copy(dst + i * T * I * 4, src, T * I * 4)
            i += 1
        views = self.views.get((first, n))
        if views is None:
            views = self.slot_views(first, n)
        if self.programs is not None:  # the new states written over the slots' views
            out = self.programs._run_cached([X] + views, [None] + views)  # Y, then the states
            if out is None:
                return None
            self.rows_of.frames = frames
            try:
                return self.rows_of(out[0])
            finally:
                self.rows_of.frames = self.rows_of.y = None
        # The last step's Y again when nothing but this object holds it any more (the caller
        # dropped every row of it: no one can see it change); a fresh 16 KiB Y per step cost
        # ~1 us in malloc and free at 64 streams.
        out = self.Y if self.Y is not None and (<PyObject*>self.Y).ob_refcnt == 1 else None
        self.Y = None
        self.rows_of.frames = frames
        try:  # the rows are made while the kernel's workers compute (run_into's ``then``)
            if len(views) == 2:
                rows = self.into(X, views[0], views[1], self.rows_of, out)
            elif len(views) == 1:
                rows = self.into(X, views[0], None, self.rows_of, out)
            else:
                rows = None
            y = self.rows_of.y
            if rows is not None and y is not None and cnp.PyArray_SIZE(<cnp.ndarray>y) <= (1 << 20):
                self.Y = y
            return rows
        finally:
            self.rows_of.frames = self.rows_of.y = None

