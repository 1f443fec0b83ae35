# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-call paths in C: feed checks, the step loop, output detaching, and the fast-path
objects ``Model``, ``Stream`` and ``StreamPool`` own (``ModelRun``, ``StreamStep``, ``PoolStep``).

Each does exactly what the Python code in model.py, plan.py and streaming.py does (the
fallback when this extension is not built, and the path for anything unusual): it finishes
the job or returns None (or hands the call back) so that the full path runs and reports errors.
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject, Py_INCREF

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # steals a reference to descr
    object PyArray_NewFromDescr(type subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, object base)

from lstminfer.errors import LstminferError

cdef extern from "string.h":
    void* memcpy(void* dst, const void* src, size_t n) nogil

cdef type _NDARRAY = np.ndarray


cdef inline PyObject* descr_of(object array) noexcept:
    """The dtype of ``array`` (an exact ndarray: the caller checked), borrowed."""
    return <PyObject*>cnp.PyArray_DESCR(<cnp.ndarray>array)


cdef inline char* data_of(object array) noexcept:
    return cnp.PyArray_BYTES(<cnp.ndarray>array)


cdef inline object root_of(object value):
    """The ndarray that owns ``value``'s memory (following .base through ndarrays)."""
    cdef PyObject* base = cnp.PyArray_BASE(<cnp.ndarray>value)
    while base != NULL and type(<object>base) is _NDARRAY:
        value = <object>base
        base = cnp.PyArray_BASE(<cnp.ndarray>value)
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
        cdef Py_ssize_t k, j
        cdef cnp.npy_intp* dims
        if len(feed) != self.n:
            return None
        out = PyList_New(self.n)
        for k in range(self.n):
            value = feed.get(self.names[k])
            if type(value) is not _NDARRAY:
                return None
            if descr_of(value) != <PyObject*>self.dtypes[k] or cnp.PyArray_NDIM(<cnp.ndarray>value) != self.rank[k]:
                return None
            if cnp.PyArray_SIZE(<cnp.ndarray>value) == 0:  # empty: its other dims may still be huge (full check)
                return None
            dims = cnp.PyArray_DIMS(<cnp.ndarray>value)
            for j in range(self.dim_at[k], self.dim_at[k + 1]):
                if dims[self.axis[j]] != self.size[j]:
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
        if cnp.PyArray_BASE(<cnp.ndarray>root) != NULL:
            return None  # memory owned by something else (a buffer, bytes...)
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>value):
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


cdef extern from "li_vector.h":
    void rt_copy "li_copy_bytes"(char* dst, const char* src, Py_ssize_t n) noexcept nogil


cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)


cdef inline bint chunk_ok(object chunk, PyObject* descr, tuple shape):
    """An exact C-contiguous ndarray of dtype ``descr`` and of ``shape``: a chunk copied as is."""
    cdef Py_ssize_t k
    cdef cnp.npy_intp* dims
    if type(chunk) is not _NDARRAY:
        return False
    if descr_of(chunk) != descr or cnp.PyArray_NDIM(<cnp.ndarray>chunk) != len(shape) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>chunk):
        return False
    dims = cnp.PyArray_DIMS(<cnp.ndarray>chunk)
    for k in range(len(shape)):
        if dims[k] != <Py_ssize_t>shape[k]:
            return False
    return True


cdef extern from "Python.h":
    long long as_long_long "PyLong_AsLongLong"(PyObject* value) noexcept
    void PyErr_Clear() noexcept


cdef inline Py_ssize_t slot_by_id(object sid, const long long* sid_at, long long id_mask,
                                  Py_ssize_t max_streams):
    """The slot of open stream ``sid`` (an exact int: 1.0 or True must not find stream 1) from
    the pool's ids: generation << id bits | slot, and sid_at[slot] the id open there (-1: none);
    -1 if none. Two array reads: cheaper than a dict lookup per stream."""
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
    cdef Py_ssize_t i, k, n = len(chunks), nd = len(shape), row_bytes
    cdef cnp.npy_intp* dims
    if type(out) is not _NDARRAY or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out) \
            or cnp.PyArray_NDIM(<cnp.ndarray>out) != nd + 1:
        return False
    dims = cnp.PyArray_DIMS(<cnp.ndarray>out)
    if dims[0] != n:
        return False
    row_bytes = cnp.PyArray_ITEMSIZE(<cnp.ndarray>out)
    for k in range(nd):
        if dims[k + 1] != <Py_ssize_t>shape[k]:
            return False
        row_bytes *= <Py_ssize_t>shape[k]
    cdef char* dst = data_of(out)
    for i in range(n):
        chunk = chunks[i]
        if not chunk_ok(chunk, descr_of(out), shape):
            return False
        rt_copy(dst + i * row_bytes, data_of(chunk), row_bytes)
    return True


def lookup_slots(sid_at, int id_bits, list sids):
    """(slots, contiguous) for the stream ids ``sids`` (a pool's ids: see slot_by_id; exact ints
    only), contiguous when they are lo, lo+1, ...; None if any id is unknown or not an int
    (the caller then reports which)."""
    cdef const long long[::1] ids = sid_at
    cdef long long mask
    cdef list slots = []
    cdef bint contiguous = True
    cdef Py_ssize_t i, first = 0, slot
    if ids.shape[0] < 1 or not 0 < id_bits < 63:
        raise ValueError(f"lookup_slots: {ids.shape[0]} slots, {id_bits} id bits")
    mask = (1LL << id_bits) - 1
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
    per-stream outputs, made here: cheaper per row than numpy's own view making (``list(y)``).
    None when ``y`` is not a writeable ndarray with ``len(sids)``
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


cdef list prepend(object first, Py_ssize_t n, list rest):
    """[first] * n + rest, made in one allocation (a step's feeds and targets)."""
    cdef Py_ssize_t k, m = len(rest)
    out = PyList_New(n + m)
    for k in range(n):
        Py_INCREF(first)
        PyList_SET_ITEM(out, k, first)
    for k in range(m):
        value = <object>PyList_GET_ITEM(rest, k)
        Py_INCREF(value)
        PyList_SET_ITEM(out, n + k, value)
    return out


include "_program.pxi"


cdef class ModelRun:
    """``Model.run``'s fast path, which a Model owns and binds as its ``run``: ``run(None, dict)``
    goes through ``FeedChecks``, then the compiled program of the feeds' signature, else the
    plan's ``Schedule`` (None: none), then ``detach``; so does ``run(all_names, dict)``, every
    output named in order, as onnxruntime tutorials write it; any other call, or feeds these decline,
    goes to ``checked`` (``Model._run_checked``), which reports errors.
    ``detach_fallback(outputs, feeds)`` handles outputs ``detach`` declines."""
    cdef object checked, detach_fallback
    cdef FeedChecks checks
    cdef Schedule schedule
    cdef ProgramSet programs
    cdef list all_names  # every output's name, in order: run(that list, dict) is run(None, dict)

    def __init__(self, checked, FeedChecks checks not None, Schedule schedule, ProgramSet programs, detach_fallback,
                 all_names=()):
        self.checked, self.checks, self.schedule = checked, checks, schedule
        self.programs, self.detach_fallback = programs, detach_fallback
        self.all_names = [str(name) for name in all_names]

    def run(self, output_names, input_feed, run_options=None):
        """Run the model; returns the requested outputs in order, like onnxruntime."""
        if (output_names is None or (type(output_names) is list and <list>output_names == self.all_names)) \
                and type(input_feed) is dict:
            outputs = self.whole(<dict>input_feed)
            if outputs is not None:
                return outputs
        return self.checked(output_names, input_feed)

    cdef object whole(self, dict feed):
        """All outputs for ``feed``, or None (nothing run) when it needs the full check."""
        feeds = self.checks._feeds(feed)
        if feeds is None:
            return None
        if self.programs is not None:
            outputs = self.programs._run(feeds, None)
            if outputs is not None:
                return outputs  # fresh arrays: nothing to detach
        if self.schedule is None:
            return None
        outputs = self.schedule._run(feeds)
        detached = _detach(outputs, feeds)
        return detached if detached is not None else self.detach_fallback(outputs, feeds)


cdef class StreamStep:
    """The fast path a ``Stream`` owns: the chunk goes straight to the kernel's ``run_into``
    (``into``) with the stream's states (it checks the chunk and writes the new states over
    them), or to ``programs`` when the program of its signature was compiled before.
    ``states`` is the stream's own list, which both sides update in place."""
    cdef object into
    cdef list states
    cdef ProgramSet programs  # a whole model's streaming plan compiled (None: none)
    cdef tuple names  # its data outputs

    def __init__(self, list states not None, into, ProgramSet programs, tuple names not None):
        if (into is None) == (programs is None):
            raise ValueError("StreamStep: one of into and programs")
        self.states, self.into, self.programs, self.names = states, into, programs, names

    def run(self, x):
        """The outputs for chunk ``x``, or None (nothing changed) when it needs the full check."""
        return self.take(x)

    cdef object take(self, x):
        cdef list states = self.states
        cdef Py_ssize_t n
        if self.into is not None:
            if len(states) == 2:
                return self.into(x, states[0], states[1])
            if len(states) == 1:
                return self.into(x, states[0])
            return self.into(x, *states)
        n = len(self.names)  # a chunk of a signature already compiled: new states in place
        out = self.programs._run_cached(prepend(x, 1, states), prepend(None, n, states))
        if out is None:
            return None
        return out[0] if n == 1 else dict(zip(self.names, out))


def stream_step(stream, x):
    """Run one chunk (any number of time steps >= 1, batch 1); returns the outputs like ``predict``."""
    # Stream.step itself, a function of the class: a bound method per stream would add to every stream's memory.
    cdef StreamStep fast = stream._fast
    if fast is not None:
        y = fast.take(x)
        if y is not None:
            return y
    return stream._step_checked(x)


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


cdef inline void put_row(char* dst, const char* src, Py_ssize_t r, Py_ssize_t rows, Py_ssize_t T, Py_ssize_t I,
                         Py_ssize_t batch_axis) noexcept:
    """A float32 chunk [T, I] into row r of X: [T, rows, I] (batch axis 1) or [rows, T, I]."""
    cdef Py_ssize_t t
    if batch_axis == 1:
        for t in range(T):
            rt_copy(dst + ((t * rows + r) * I) * 4, src + t * I * 4, I * 4)
    else:
        rt_copy(dst + r * T * I * 4, src, T * I * 4)


cdef class PoolStep:
    """``StreamPool.step``'s fast path, which a pool owns and binds as its ``step``, for a model
    that is one recurrent node (or compiles to one program) with rank-3 chunks: under the pool's
    lock, ids looked up, chunks gathered into one batch, the kernel's ``run_into`` on the slots'
    state views, {stream id: its view of Y}. Anything unusual (nothing changed) goes to
    ``checked`` (``StreamPool._step_checked``), which reports errors. Streams in scattered slots
    (a server's) have their states gathered into scratch arrays, run there and written back; a
    program's batch past 16 streams runs padded to the pool's bucket size (``rows_for``)."""
    cdef object into, checked, empty, dtype, slot_views, X, Y, acquire, release, sid_array, rows_for
    cdef ProgramSet programs  # a whole model of one data output (into None): its streaming plan compiled
    cdef dict views
    cdef dict scratch  # rows -> the state arrays a gathered step of that many rows runs on
    cdef list buffers  # the pool's state buffers (C-contiguous), each with its batch axis in axes
    cdef tuple axes
    cdef int out_axis
    cdef const long long* sid_at
    cdef long long id_mask
    cdef Py_ssize_t max_streams
    cdef Py_ssize_t batch_axis  # of the chunks (and of X): 1 time-major, 0 batch-major
    cdef RowsOf rows_of
    cdef public tuple shape  # the chunk shape the pool's full check passed (None: none yet)

    def __init__(self, into, checked, lock, sid_at, int id_bits, dict views not None, slot_views,
                 Py_ssize_t batch_axis, int out_axis, split_rows, ProgramSet programs=None,
                 list buffers=None, tuple axes=None, rows_for=None):
        """``sid_at``: the pool's int64 array of the id open in each slot (-1: none), updated in
        place by open/close; ids are generation << id_bits | slot. ``into``: the bare recurrent
        node's run_into; else (None) ``programs``, the compiled programs of a one-output model,
        which run a batch whose signature the pool's full path compiled before. ``buffers``/``axes``:
        the pool's state buffers and their batch axes (None: contiguous slots only); ``rows_for(n)``:
        the rows a program's batch of n streams runs (padded past n: the pool's buckets)."""
        cdef const long long[::1] ids = sid_at
        if (into is None) == (programs is None):
            raise ValueError("PoolStep: one of into and programs")
        if ids.shape[0] < 1 or not 0 < id_bits < 63 or batch_axis not in (0, 1):
            raise ValueError(f"PoolStep: {ids.shape[0]} slots, {id_bits} id bits, batch axis {batch_axis}")
        self.into, self.checked, self.views, self.slot_views = into, checked, views, slot_views
        self.programs = programs
        self.acquire, self.release = lock.acquire, lock.release
        self.sid_array, self.sid_at, self.max_streams = sid_at, &ids[0], ids.shape[0]
        self.id_mask = (1LL << id_bits) - 1
        self.batch_axis = batch_axis
        self.rows_of = RowsOf(out_axis, split_rows)  # split_rows: (sids, Y) -> dict, where rows_by_stream declines
        self.empty = np.empty
        self.dtype = np.dtype(np.float32)
        self.out_axis, self.rows_for, self.scratch = out_axis, rows_for, {}
        self.buffers, self.axes = None, None
        if buffers is not None:
            if axes is None or len(axes) != len(buffers) or not all(
                    type(b) is _NDARRAY and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>b)
                    and 0 <= a < b.ndim and b.shape[a] == ids.shape[0] for b, a in zip(buffers, axes)):
                raise ValueError("PoolStep: the state buffers must be C-contiguous with max_streams along their axes")
            self.buffers, self.axes = list(buffers), tuple(axes)

    def step(self, frames):
        """``StreamPool.step`` (its docstring is the contract): the common case in C, anything it declines
        through the pool's checked Python step."""
        if type(frames) is dict and len(<dict>frames) > 0:
            done = self.locked(<dict>frames)
            if done is not None:
                return done
        return self.checked(frames)

    cdef object locked(self, dict frames):
        """One step holding the pool's lock; None when declined."""
        self.acquire()
        try:
            return self._step(frames)
        finally:
            self.release()

    cdef object batch_buffer(self, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2):
        """The step's batch X [d0, d1, d2], reused from the last step of that shape: it never
        leaves this object (the kernel reads it during the call) and the pool's lock serializes
        steps, so no malloc per step."""
        cdef cnp.npy_intp* dims
        X = self.X
        if X is not None:
            dims = cnp.PyArray_DIMS(<cnp.ndarray>X)
            if dims[0] == d0 and dims[1] == d1 and dims[2] == d2:
                return X
        X = self.empty((d0, d1, d2), self.dtype)
        if d0 * d1 * d2 <= (1 << 20):  # kept only while small (1M floats)
            self.X = X
        return X

    cdef list gathered_states(self, Py_ssize_t* slots, Py_ssize_t n, Py_ssize_t rows):
        """Scratch arrays of ``rows`` rows holding the states of ``slots`` (rows past n: slot 0's)."""
        cdef list states = self.scratch.get(rows)
        if states is None:
            states = []
            for buf, axis in zip(self.buffers, self.axes):
                dims = list(buf.shape)
                dims[axis] = rows
                states.append(self.empty(tuple(dims), buf.dtype))
            if len(self.scratch) < 64:
                self.scratch[rows] = states
        self.move_rows(states, slots, n, rows, True)
        return states

    cdef void move_rows(self, list states, Py_ssize_t* slots, Py_ssize_t n, Py_ssize_t rows, bint gather):
        """Each state buffer's rows of ``slots`` to rows 0.. of its scratch array (``gather``; rows past n:
        slot 0's), or the scratch's first n rows back to their slots. A buffer is [outer, max_streams,
        inner bytes] around its batch axis, a scratch array the same with ``rows`` rows."""
        cdef Py_ssize_t k, o, r, outer, inner, cap = self.max_streams
        cdef char* pool_rows
        cdef char* scratch_rows
        for k in range(len(states)):
            buf = self.buffers[k]
            outer = 1
            for o in range(<Py_ssize_t>self.axes[k]):
                outer *= cnp.PyArray_DIMS(<cnp.ndarray>buf)[o]
            inner = cnp.PyArray_NBYTES(<cnp.ndarray>buf) // (outer * cap)
            pool_rows, scratch_rows = data_of(buf), data_of(states[k])
            for o in range(outer):
                for r in range(rows if gather else n):
                    if gather:
                        rt_copy(scratch_rows + (o * rows + r) * inner,
                                pool_rows + (o * cap + slots[r if r < n else 0]) * inner, inner)
                    else:
                        rt_copy(pool_rows + (o * cap + slots[r]) * inner, scratch_rows + (o * rows + r) * inner, inner)

    cdef object _step(self, dict frames):
        cdef Py_ssize_t n = len(frames)
        cdef Py_ssize_t* slots
        if n == 0 or n > self.max_streams:
            return None
        slots = <Py_ssize_t*>PyMem_Malloc(n * sizeof(Py_ssize_t))
        if slots == NULL:
            return None
        try:
            return self._step_on(frames, n, slots)
        finally:
            PyMem_Free(slots)

    cdef object _step_on(self, dict frames, Py_ssize_t n, Py_ssize_t* slots):
        cdef Py_ssize_t pos = 0, i = 0, t, T, I, first = 0, slot, rows = n, r
        cdef bint contiguous = True
        cdef PyObject* key
        cdef PyObject* value
        cdef tuple shape = self.shape
        cdef char* dst
        cdef char* src
        if shape is None or len(shape) != 3:
            return None
        while PyDict_Next(frames, &pos, &key, &value):
            slot = slot_by_id(<object>key, self.sid_at, self.id_mask, self.max_streams)
            if slot < 0:
                return None
            slots[i] = slot
            if i > 0 and slot != slots[0] + i:
                contiguous = False
            i += 1
        if self.programs is not None and self.rows_for is not None and self.buffers is not None:
            rows = self.rows_for(n)
        if (not contiguous or rows != n) and self.buffers is None:
            return None  # the full path gathers them
        if self.batch_axis == 1:  # chunks [T, 1, I] -> X [T, rows, I]
            T, I = <Py_ssize_t>shape[0], <Py_ssize_t>shape[2]
            if <Py_ssize_t>shape[1] != 1:
                return None
            X = self.batch_buffer(T, rows, I)
        elif self.batch_axis == 0:  # chunks [1, T, I] -> X [rows, T, I]
            T, I = <Py_ssize_t>shape[1], <Py_ssize_t>shape[2]
            if <Py_ssize_t>shape[0] != 1:
                return None
            X = self.batch_buffer(rows, T, I)
        else:
            return None
        dst = data_of(X)
        pos, i = 0, 0
        while PyDict_Next(frames, &pos, &key, &value):
            chunk = <object>value
            if not chunk_ok(chunk, <PyObject*>self.dtype, shape):
                return None
            src = data_of(chunk)
            put_row(dst, src, i, rows, T, I, self.batch_axis)
            if i == 0:  # the padded rows: copies of the first
                for r in range(n, rows):
                    put_row(dst, src, r, rows, T, I, self.batch_axis)
            i += 1
        if not contiguous or rows != n:
            return self.gathered_step(frames, X, slots, n, rows)
        first = slots[0]
        views = self.views.get((first, n))
        if views is None:
            views = self.slot_views(first, n)
        if self.programs is not None:  # the new states written over the slots' views
            out = self.programs._run_cached(prepend(X, 1, views), prepend(None, 1, views))  # Y, then the states
            if out is None:
                return None
            self.rows_of.frames = frames
            try:
                return self.rows_of(out[0])
            finally:
                self.rows_of.frames = self.rows_of.y = None
        # The last step's Y again when nothing but this object holds it (the caller dropped every
        # row of it, so no one sees it change): no malloc per step.
        out = self.Y if self.Y is not None and (<PyObject*>self.Y).ob_refcnt == 1 else None
        self.Y = None
        self.rows_of.frames = frames
        try:  # the rows are made while the kernel's workers compute (run_into's ``then``)
            if len(views) == 2:
                result = self.into(X, views[0], views[1], self.rows_of, out)
            elif len(views) == 1:
                result = self.into(X, views[0], None, self.rows_of, out)
            else:
                result = None
            y = self.rows_of.y
            if result is not None and y is not None and cnp.PyArray_SIZE(<cnp.ndarray>y) <= (1 << 20):
                self.Y = y
            return result
        finally:
            self.rows_of.frames = self.rows_of.y = None

    cdef object gathered_step(self, dict frames, object X, Py_ssize_t* slots, Py_ssize_t n, Py_ssize_t rows):
        """The step of streams in scattered slots: states gathered into scratch arrays (``rows`` rows),
        run there in place, the first n written back; {stream id: its row of Y}. None, with no slot
        changed, where the program declines."""
        states = self.gathered_states(slots, n, rows)
        self.rows_of.frames = frames
        try:
            if self.programs is not None:
                out = self.programs._run_cached(prepend(X, 1, states), prepend(None, 1, states))
                if out is None:
                    return None
                y = out[0]
                if rows != n:  # the padded rows' outputs dropped
                    index = [slice(None)] * cnp.PyArray_NDIM(<cnp.ndarray>y)
                    index[self.out_axis] = slice(0, n)
                    y = y[tuple(index)]
                self.move_rows(states, slots, n, rows, False)
                return self.rows_of(y)
            if len(states) == 2:
                result = self.into(X, states[0], states[1], self.rows_of, None)
            elif len(states) == 1:
                result = self.into(X, states[0], None, self.rows_of, None)
            else:
                return None
            if result is not None:
                self.move_rows(states, slots, n, rows, False)
            return result
        finally:
            self.rows_of.frames = self.rows_of.y = None

include "_express.pxi"
