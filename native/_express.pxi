# The WebSocket stream's express lane (included by _runtime.pyx: it steps through PoolStep's internals).
#
# ``lstminfer serve``'s usual chunk is one whole masked binary frame of float32 frames, for a stream
# with nothing else in flight. Through the Python path it became a bytearray, an ndarray, a queue
# entry, a row view and two reply bytes objects, and ~30 Python calls. Here ``ExpressStream.take``
# unmasks it into the stream's own buffer and queues the stream; ``ExpressLane.collect`` copies the
# queued chunks into one batch, ``run`` steps them on the pool's states (``PoolStep``'s gathered step)
# and ``deliver`` writes each reply frame from its row of the output with the transport's ``write``.
# Anything else (another frame, a chunk size the pool never checked, a program not compiled yet)
# stays on the Python path, which checks and reports errors; see lstminfer/serve/express.py.

cdef extern from "Python.h":
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    char* PyBytes_AS_STRING(object o) noexcept
    Py_ssize_t PyBytes_GET_SIZE(object o) noexcept
    double PyFloat_AsDouble(object o) except? -1.0
    object PyObject_CallOneArg(object func, object arg)
    object PyObject_CallNoArgs(object func)

cdef extern from "stdlib.h":
    void* realloc(void* p, size_t n) nogil
    void* calloc(size_t n, size_t size) nogil
    void free(void* p) nogil

cdef extern from "stdint.h":
    ctypedef unsigned int uint32_t

cdef enum:
    IDLE = 0
    WAITING = 1
    IN_STEP = 2

cdef enum:  # ExpressLane.owner[slot]: who has chunks of the stream in that slot
    BY_EXPRESS = 1  # one waiting or in a step, of any of the stream's connections
    BY_PYTHON = 2  # queued with the batcher's Python lanes, or in their step


cdef class KeptOutput:
    """``then`` for a bare node's ``run_into``: keeps Y, makes no per-stream rows."""
    cdef object y

    def __call__(self, y):
        self.y = y
        return True


cdef inline void unmask(unsigned char* dst, const unsigned char* src, Py_ssize_t n, uint32_t key) noexcept nogil:
    """RFC 6455 5.3: payload XOR the 4-byte key, for a payload of whole 4-byte words."""
    cdef Py_ssize_t i
    cdef uint32_t word
    for i in range(0, n, 4):
        memcpy(&word, src + i, 4)
        word ^= key
        memcpy(dst + i, &word, 4)


cdef class ExpressStream:
    """One WebSocket stream's place in its model's ``ExpressLane``: its chunk buffer, its state
    (``state``: 0 idle, 1 waiting for a step, 2 in one) and how its replies are written."""
    cdef ExpressLane lane
    cdef readonly object connection  # its StreamConnection: _busy, _queue and _next after a reply
    cdef object write  # the transport's write
    cdef readonly long long pool_id
    cdef Py_ssize_t slot, max_bytes, capacity
    cdef readonly Py_ssize_t nbytes, T
    cdef unsigned char* buf
    cdef double arrived
    cdef readonly int state
    cdef public bint gone  # closed or lost: nothing more is written, a waiting chunk is dropped

    def __cinit__(self):
        self.buf = NULL

    def __dealloc__(self):
        free(self.buf)

    def take(self, data):
        """Queue ``data`` when it is exactly one whole masked binary frame of T >= 1 frames, the stream
        is idle and still open in the pool, and the lane accepts chunks; False: nothing was done."""
        cdef ExpressLane lane = self.lane
        cdef const unsigned char* p
        cdef Py_ssize_t size, length, head = 2
        cdef uint32_t key
        cdef unsigned char* grown
        if self.state != IDLE or self.gone or not lane.accepting or type(data) is not bytes:
            return False
        size = PyBytes_GET_SIZE(data)
        p = <const unsigned char*>PyBytes_AS_STRING(data)
        if size <= 6 or p[0] != 0x82 or not p[1] & 0x80:
            return False
        length = p[1] & 0x7F
        if length == 126:
            length, head = (<Py_ssize_t>p[2]) << 8 | p[3], 4
        elif length == 127:
            return False
        if head + 4 + length != size or length == 0 or length % lane.frame_bytes or length > self.max_bytes:
            return False
        if lane.step.sid_at[self.slot] != self.pool_id:  # ended or expired: the Python path says so
            return False
        if lane.owner[self.slot]:  # a chunk of this stream is ahead (another connection's, or Python's)
            return False
        if length > self.capacity:
            grown = <unsigned char*>realloc(self.buf, length)
            if grown == NULL:
                return False
            self.buf, self.capacity = grown, length
        memcpy(&key, p + head, 4)
        unmask(self.buf, p + head + 4, length, key)
        self.nbytes, self.T = length, length // lane.frame_bytes
        self.arrived = PyFloat_AsDouble(PyObject_CallNoArgs(lane.monotonic))
        self.state = WAITING
        lane.owner[self.slot] = BY_EXPRESS
        lane.waiting.append(self)
        if len(lane.waiting) == 1 and lane.wake is not None:
            lane.wake()
        return True

    def payload(self):
        """The unmasked chunk as bytes (the Python path's input when the lane declines a step)."""
        return PyBytes_FromStringAndSize(<char*>self.buf, self.nbytes)


cdef class ExpressLane:
    """The express chunks of one ``StreamPool``, stepped in batches; one per pool, driven by the
    serve batcher on the event loop (``collect``, ``run`` there or in its worker, ``deliver``)."""
    cdef PoolStep step
    cdef readonly Py_ssize_t frame_bytes, features
    cdef object monotonic
    cdef public object wake  # called when a chunk waits and none did: the batcher's wake-up
    cdef public bint accepting  # False once the service drains: chunks take the Python path (and its error)
    cdef list waiting  # streams with a chunk waiting, oldest first
    cdef list batch  # the streams of the step collected and not yet delivered or declined
    cdef Py_ssize_t T
    cdef Py_ssize_t* slots
    cdef Py_ssize_t slots_capacity
    cdef object X, Y
    cdef KeptOutput kept
    cdef set checked_T  # chunk lengths the pool's checked step passed: the C step may run them
    cdef unsigned char* owner  # per pool slot: BY_EXPRESS | BY_PYTHON, who has chunks of its stream

    def __cinit__(self):
        self.slots = NULL
        self.owner = NULL

    def __dealloc__(self):
        PyMem_Free(self.slots)
        free(self.owner)

    def __init__(self, PoolStep step not None, Py_ssize_t features, monotonic):
        """``step``: the pool's C step (with its state buffers); ``features``: float32 values per frame."""
        if step.buffers is None or step.batch_axis not in (0, 1) or features < 1:
            raise ValueError("ExpressLane: the pool's step keeps no state buffers, or its chunks are not rank 3")
        self.step, self.features, self.frame_bytes = step, features, features * 4
        self.monotonic, self.wake, self.accepting = monotonic, None, True
        self.waiting, self.batch = [], []
        self.kept, self.checked_T = KeptOutput(), set()
        self.T = 0
        self.owner = <unsigned char*>calloc(step.max_streams, 1)
        if self.owner == NULL:
            raise MemoryError()

    def stream(self, connection, write, long long pool_id, Py_ssize_t max_bytes):
        """A new stream of pool id ``pool_id`` whose replies go to ``write``; chunks over ``max_bytes``
        stay on the Python path (which refuses them)."""
        cdef ExpressStream s = ExpressStream.__new__(ExpressStream)
        s.lane, s.connection, s.write, s.pool_id = self, connection, write, pool_id
        s.slot, s.max_bytes, s.capacity, s.nbytes, s.T = pool_id & self.step.id_mask, max_bytes, 0, 0, 0
        s.state, s.gone = IDLE, False
        return s

    @property
    def waiting_count(self):
        return len(self.waiting)

    @property
    def oldest(self):
        """When the oldest waiting chunk arrived (None: none waits)."""
        return (<ExpressStream>self.waiting[0]).arrived if self.waiting else None

    @property
    def in_step(self):
        """Streams collected and not yet delivered or declined."""
        return len(self.batch)

    @property
    def batch_bytes(self):
        cdef ExpressStream s
        return sum([s.nbytes for s in self.batch])

    cdef inline Py_ssize_t slot_of(self, long long pool_id) noexcept:
        """The slot of open stream ``pool_id``, or -1."""
        cdef Py_ssize_t slot = pool_id & self.step.id_mask
        return slot if 0 <= pool_id and slot < self.step.max_streams and self.step.sid_at[slot] == pool_id else -1

    def pending(self, long long pool_id):
        """Chunks of ``pool_id`` waiting in the lane or in its step (0 or 1)."""
        cdef Py_ssize_t slot = self.slot_of(pool_id)
        return 1 if slot >= 0 and self.owner[slot] & BY_EXPRESS else 0

    def python_queued(self, long long pool_id, bint queued):
        """The batcher's Python lanes hold chunks of ``pool_id`` (or no longer): its connections' chunks
        go there too meanwhile, behind them."""
        cdef Py_ssize_t slot = self.slot_of(pool_id)
        if slot >= 0:
            if queued:
                self.owner[slot] |= BY_PYTHON
            else:
                self.owner[slot] &= ~BY_PYTHON

    def stepping(self, long long pool_id):
        cdef ExpressStream s
        for s in self.batch:
            if s.pool_id == pool_id:
                return True
        return False

    def cancel(self, long long pool_id):
        """The waiting stream of ``pool_id`` taken off the queue (idle again), or None."""
        cdef ExpressStream s
        cdef Py_ssize_t k
        for k in range(len(self.waiting)):
            s = self.waiting[k]
            if s.pool_id == pool_id:
                del self.waiting[k]
                s.state = IDLE
                self.owner[s.slot] &= ~BY_EXPRESS
                return s
        return None

    def collect(self, Py_ssize_t limit):
        """Move up to ``limit`` waiting chunks (the oldest, and those of its length) into a step;
        streams gone meanwhile are dropped. The number taken (0: none waits)."""
        cdef ExpressStream s
        cdef list batch = self.batch, rest = []
        cdef Py_ssize_t n = 0, T = 0
        if batch:
            raise RuntimeError("ExpressLane.collect: the last step was neither delivered nor declined")
        for s in self.waiting:
            if s.gone:
                s.state = IDLE
                self.owner[s.slot] &= ~BY_EXPRESS
            elif n == limit or (T and s.T != T):
                rest.append(s)
            else:
                T = s.T
                s.state = IN_STEP
                batch.append(s)
                n += 1
        self.waiting, self.T = rest, T
        return n

    def run(self):
        """Step the collected chunks on their streams' states, holding the pool's lock (the kernels
        release the GIL): the seconds it took, or -1.0 with nothing changed where the pool's C step
        declines (a chunk length its checked step never passed, a batch size with no compiled program
        yet, a stream no longer open): ``declined`` then hands the chunks to the Python path."""
        cdef PoolStep step = self.step
        cdef Py_ssize_t k, n = len(self.batch), rows = len(self.batch), T = self.T
        cdef Py_ssize_t batch_axis = step.batch_axis
        cdef ExpressStream s
        cdef char* dst
        if n == 0:
            return -1.0
        started = PyFloat_AsDouble(PyObject_CallNoArgs(self.monotonic))
        step.acquire()
        try:
            if T not in self.checked_T:
                wanted = (T, 1, self.features)
                if batch_axis == 0:
                    wanted = (1, T, self.features)
                if step.shape != wanted:
                    return -1.0
                self.checked_T.add(T)
            for k in range(n):
                s = self.batch[k]
                if step.sid_at[s.slot] != s.pool_id:
                    return -1.0
            if step.programs is not None and step.rows_for is not None:
                rows = step.rows_for(n)
            if rows > self.slots_capacity:
                PyMem_Free(self.slots)
                self.slots = <Py_ssize_t*>PyMem_Malloc(rows * sizeof(Py_ssize_t))
                self.slots_capacity = rows if self.slots != NULL else 0
                if self.slots == NULL:
                    raise MemoryError()
            X = self.X
            if X is None or cnp.PyArray_DIMS(<cnp.ndarray>X)[batch_axis] != rows \
                    or cnp.PyArray_DIMS(<cnp.ndarray>X)[1 - batch_axis] != T:
                dims = (T, rows, self.features)
                if batch_axis == 0:
                    dims = (rows, T, self.features)
                X = step.empty(dims, step.dtype)
                if T * rows * self.features <= (1 << 20):  # kept while small
                    self.X = X
            dst = data_of(X)
            for k in range(n):
                s = self.batch[k]
                self.slots[k] = s.slot
                put_row(dst, <char*>s.buf, k, rows, T, self.features, batch_axis)
            s = self.batch[0]
            for k in range(n, rows):  # the padded rows: copies of the first
                put_row(dst, <char*>s.buf, k, rows, T, self.features, batch_axis)
            states = step.gathered_states(self.slots, n, rows)
            if step.programs is not None:
                out = step.programs._run_cached(prepend(X, 1, states), prepend(None, 1, states))
                if out is None:
                    return -1.0
                y = out[0]
            else:
                if len(states) == 2:
                    result = step.into(X, states[0], states[1], self.kept, None)
                elif len(states) == 1:
                    result = step.into(X, states[0], None, self.kept, None)
                else:
                    return -1.0
                y, self.kept.y = self.kept.y, None
                if result is None or y is None:
                    return -1.0
            step.move_rows(states, self.slots, n, rows, False)
        finally:
            step.release()
        if type(y) is not _NDARRAY or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>y):
            y = np.ascontiguousarray(y)
        self.Y = y
        return PyFloat_AsDouble(PyObject_CallNoArgs(self.monotonic)) - started

    def delays(self, double started):
        """Each collected chunk's wait from its arrival to ``started``."""
        cdef ExpressStream s
        return [started - s.arrived for s in self.batch]

    def pool_ids(self):
        cdef ExpressStream s
        return [s.pool_id for s in self.batch]

    def declined(self):
        """The collected streams, idle again, handed back for the Python path."""
        cdef ExpressStream s
        cdef list batch = self.batch
        self.batch = []
        for s in batch:
            s.state = IDLE
            self.owner[s.slot] &= ~BY_EXPRESS
        return batch

    def deliver(self):
        """Each collected stream's reply frame (its row of the output, batch axis dropped, C order)
        written to its transport; each connection then goes on with the messages it queued.
        (replies written, their chunks' bytes, the replies' bytes)."""
        cdef ExpressStream s
        cdef list batch = self.batch
        cdef Py_ssize_t k, o, outer = 1, inner, total, size, head, axis = self.step.out_axis
        cdef long long replies = 0, received = 0, sent = 0
        cdef char* src
        cdef char* dst
        y = self.Y
        self.batch, self.Y = [], None
        for k in range(axis):
            outer *= cnp.PyArray_DIMS(<cnp.ndarray>y)[k]
        total = cnp.PyArray_DIMS(<cnp.ndarray>y)[axis]
        inner = cnp.PyArray_NBYTES(<cnp.ndarray>y) // (outer * total) if outer * total else 0
        size = outer * inner
        head = 2 if size < 126 else (4 if size < 65536 else 10)
        src = data_of(y)
        for k in range(len(batch)):
            s = batch[k]
            s.state = IDLE
            self.owner[s.slot] &= ~BY_EXPRESS
            if not s.gone:
                reply = PyBytes_FromStringAndSize(NULL, head + size)
                dst = PyBytes_AS_STRING(reply)
                dst[0] = <char>0x82
                if head == 2:
                    dst[1] = <char>size
                elif head == 4:
                    dst[1], dst[2], dst[3] = <char>126, <char>(size >> 8), <char>size
                else:
                    dst[1] = <char>127
                    for o in range(8):
                        dst[2 + o] = <char>(size >> (8 * (7 - o)))
                for o in range(outer):
                    memcpy(dst + head + o * inner, src + (o * total + k) * inner, inner)
                try:
                    PyObject_CallOneArg(s.write, reply)
                except Exception:  # the transport went away under us: its connection_lost follows
                    s.gone = True
                else:
                    replies += 1
                    received += s.nbytes
                    sent += size
            connection = s.connection
            connection._busy = False
            if connection._queue:
                connection._next()
        return replies, received, sent
