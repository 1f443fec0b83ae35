# The WebSocket stream's express lane (included by _runtime.pyx: it steps through PoolStep's internals).
#
# ``lstminfer serve``'s usual chunk is one whole masked binary frame of float32 frames. Through the
# Python path it became a bytearray, an ndarray, a queue entry, a row view and two reply bytes objects,
# and ~30 Python calls. Here ``ExpressStream.take`` unmasks it into the stream's own queue of buffers;
# ``ExpressLane.collect`` takes the head chunk of the waiting streams, ``run`` steps them on the pool's
# states (``PoolStep``'s gathered step) and ``deliver`` writes each reply frame from its row of the
# output with the transport's ``write``. What the C step declines (a chunk length or batch size the
# pool has not checked and compiled yet, chunks of different lengths) is stepped by the serve batcher
# the Python way, which checks and reports errors (lstminfer/serve/batcher.py).

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
    """One WebSocket stream's place in its model's ``ExpressLane``: its queue of unmasked chunks (up to
    ``max_queued``; the head is the one waiting or in a step), its state (``state``: 0 idle, 1 waiting
    for a step, 2 in one) and how its replies are written."""
    cdef ExpressLane lane
    cdef readonly object connection  # its StreamConnection: _queue and _next once its chunks are answered
    cdef object write  # the transport's write
    cdef readonly long long pool_id
    cdef Py_ssize_t slot, max_bytes, max_queued
    cdef unsigned char** bufs  # a ring of max_queued chunk buffers, grown to the largest chunk each held
    cdef Py_ssize_t* caps
    cdef Py_ssize_t* sizes
    cdef double* arrivals
    cdef Py_ssize_t head
    cdef readonly Py_ssize_t queued  # chunks held, the head included
    cdef readonly int state
    cdef public bint gone  # closed or lost: nothing more is written, its chunks are dropped

    def __cinit__(self):
        self.bufs, self.caps, self.sizes, self.arrivals = NULL, NULL, NULL, NULL

    def __dealloc__(self):
        cdef Py_ssize_t k
        if self.bufs != NULL:
            for k in range(self.max_queued):
                free(self.bufs[k])
        free(self.bufs)
        free(self.caps)
        free(self.sizes)
        free(self.arrivals)

    @property
    def nbytes(self):
        """Bytes of the head chunk."""
        return self.sizes[self.head] if self.queued else 0

    @property
    def busy(self):
        """Chunks of this connection are held here: its other messages wait for them."""
        return self.queued > 0

    cdef inline Py_ssize_t head_T(self) noexcept:
        return self.sizes[self.head] // self.lane.frame_bytes

    def take(self, data):
        """Queue ``data`` when it is exactly one whole masked binary frame of T >= 1 frames, the stream is
        still open in the pool, no other connection's or the Python lanes' chunk of it is ahead, the
        queue has room and the lane accepts chunks; False: nothing was done."""
        cdef ExpressLane lane = self.lane
        cdef const unsigned char* p
        cdef Py_ssize_t size, length, head = 2, at
        cdef uint32_t key
        cdef unsigned char* grown
        cdef unsigned char owner
        if self.gone or not lane.accepting or type(data) is not bytes or self.queued == self.max_queued:
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
        owner = lane.owner[self.slot]
        if owner & BY_PYTHON or (owner & BY_EXPRESS and not self.queued):  # a chunk of another path is ahead
            return False
        if self.bufs == NULL:
            self.bufs = <unsigned char**>calloc(self.max_queued, sizeof(unsigned char*))
            self.caps = <Py_ssize_t*>calloc(self.max_queued, sizeof(Py_ssize_t))
            self.sizes = <Py_ssize_t*>calloc(self.max_queued, sizeof(Py_ssize_t))
            self.arrivals = <double*>calloc(self.max_queued, sizeof(double))
            if self.bufs == NULL or self.caps == NULL or self.sizes == NULL or self.arrivals == NULL:
                free(self.bufs)
                free(self.caps)
                free(self.sizes)
                free(self.arrivals)
                self.bufs, self.caps, self.sizes, self.arrivals = NULL, NULL, NULL, NULL
                return False
        at = (self.head + self.queued) % self.max_queued
        if length > self.caps[at]:
            grown = <unsigned char*>realloc(self.bufs[at], length)
            if grown == NULL:
                return False
            self.bufs[at], self.caps[at] = grown, length
        memcpy(&key, p + head, 4)
        unmask(self.bufs[at], p + head + 4, length, key)
        self.sizes[at] = length
        self.arrivals[at] = PyFloat_AsDouble(PyObject_CallNoArgs(lane.monotonic))
        self.queued += 1
        if self.queued == 1:
            lane.owner[self.slot] |= BY_EXPRESS
            lane.enqueue(self)
        return True

    def payload(self):
        """The unmasked head chunk as bytes (the Python path's input when the lane declines a step)."""
        return PyBytes_FromStringAndSize(<char*>self.bufs[self.head], self.sizes[self.head])

    cdef void drop(self, Py_ssize_t keep) noexcept:
        """Forget all chunks but the first ``keep`` (0 or 1)."""
        self.queued = min(self.queued, keep)
        if not self.queued:
            self.state = IDLE
            self.lane.owner[self.slot] &= ~BY_EXPRESS


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

    def stream(self, connection, write, long long pool_id, Py_ssize_t max_bytes, Py_ssize_t max_queued):
        """A new stream of pool id ``pool_id`` whose replies go to ``write``, holding up to ``max_queued``
        chunks; chunks over ``max_bytes``, or past that many, stay on the Python path."""
        if max_queued < 1:
            raise ValueError(f"ExpressLane.stream: max_queued must be >= 1, got {max_queued}")
        cdef ExpressStream s = ExpressStream.__new__(ExpressStream)
        s.lane, s.connection, s.write, s.pool_id = self, connection, write, pool_id
        s.slot, s.max_bytes, s.max_queued = pool_id & self.step.id_mask, max_bytes, max_queued
        s.head, s.queued, s.state, s.gone = 0, 0, IDLE, False
        return s

    cdef void enqueue(self, ExpressStream s):
        """``s`` has a head chunk to step: it waits for the next ``collect``."""
        s.state = WAITING
        self.waiting.append(s)
        if len(self.waiting) == 1 and self.wake is not None:
            self.wake()

    @property
    def waiting_count(self):
        return len(self.waiting)

    @property
    def oldest(self):
        """When the oldest waiting chunk arrived (None: none waits)."""
        cdef ExpressStream s
        if not self.waiting:
            return None
        s = self.waiting[0]
        return s.arrivals[s.head]

    @property
    def in_step(self):
        """Streams collected and not yet finished."""
        return len(self.batch)

    @property
    def batch_bytes(self):
        cdef ExpressStream s
        cdef Py_ssize_t total = 0
        for s in self.batch:
            total += s.sizes[s.head]
        return total

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
        """Drop the chunks of ``pool_id`` not in a step (its sequence ended): (its stream, their sizes in
        bytes), or None when it has none here."""
        cdef ExpressStream s
        cdef Py_ssize_t k, keep
        cdef list streams = [s for s in self.waiting if s.pool_id == pool_id] \
            + [s for s in self.batch if s.pool_id == pool_id]
        if not streams:
            return None
        s = streams[0]
        keep = 1 if s.state == IN_STEP else 0  # the head in a step completes
        sizes = [s.sizes[(s.head + k) % s.max_queued] for k in range(keep, s.queued)]
        if s.state == WAITING:
            self.waiting.remove(s)
        s.drop(keep)
        return s, sizes

    def collect(self, Py_ssize_t limit):
        """Move the oldest ``limit`` waiting chunks (one per stream: its head) into a step; streams gone
        meanwhile are dropped. The number taken (0: none waits). Chunks of different lengths are one
        step too: the pool's masked step (``run`` declines them)."""
        cdef ExpressStream s
        cdef list batch = self.batch, rest = []
        cdef Py_ssize_t n = 0, T = 0
        if batch:
            raise RuntimeError("ExpressLane.collect: the last step was neither delivered nor finished")
        for s in self.waiting:
            if s.gone:
                s.drop(0)
            elif n == limit:
                rest.append(s)
            else:
                T = s.head_T() if n == 0 or s.head_T() == T else -1
                s.state = IN_STEP
                batch.append(s)
                n += 1
        self.waiting, self.T = rest, T
        return n

    def run(self):
        """Step the collected chunks on their streams' states, holding the pool's lock (the kernels
        release the GIL): the seconds it took, or -1.0 with nothing changed where the pool's C step
        declines (chunks of different lengths, a length its checked step never passed, a batch size
        with no compiled program yet, a stream no longer open): ``declined`` then hands the chunks to
        the Python path."""
        cdef PoolStep step = self.step
        cdef Py_ssize_t k, n = len(self.batch), rows = len(self.batch), T = self.T
        cdef Py_ssize_t batch_axis = step.batch_axis
        cdef ExpressStream s
        cdef char* dst
        if n == 0 or T < 0:  # none, or of different lengths
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
                put_row(dst, <char*>s.bufs[s.head], k, rows, T, self.features, batch_axis)
            s = self.batch[0]
            for k in range(n, rows):  # the padded rows: copies of the first
                put_row(dst, <char*>s.bufs[s.head], k, rows, T, self.features, batch_axis)
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
        return [started - s.arrivals[s.head] for s in self.batch]

    def pool_ids(self):
        cdef ExpressStream s
        return [s.pool_id for s in self.batch]

    def declined(self):
        """The collected streams, for the Python path to step their head chunks (``payload``) and
        answer them; ``finish()`` after."""
        return list(self.batch)

    def finish(self):
        """After the Python path answered the collected streams' head chunks: the next chunk of each
        waits for a step; a connection with none goes on with the messages it queued."""
        cdef ExpressStream s
        cdef list batch = self.batch
        self.batch = []
        for s in batch:
            self.advance(s)

    cdef inline void advance(self, ExpressStream s):
        if s.queued:
            s.head = (s.head + 1) % s.max_queued
            s.queued -= 1
        if s.gone:
            s.drop(0)
        if s.queued:
            self.enqueue(s)
            return
        s.drop(0)
        connection = s.connection
        if connection._queue:
            connection._next()

    def deliver(self):
        """Each collected stream's reply frame (its row of the output, batch axis dropped, C order)
        written to its transport; then as ``finish``. (replies written, their chunks' bytes, the
        replies' bytes)."""
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
                    received += s.sizes[s.head]
                    sent += size
            self.advance(s)
        return replies, received, sent
