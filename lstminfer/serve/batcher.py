"""The batcher: chunks of different streams that arrive close together go into ONE ``StreamPool.step``.

Each stream (a *lane*, keyed by its pool id) has a FIFO of queued chunks. A stream with
chunks waiting is *ready*; the batcher takes the head chunk of every ready stream (up to
``max_batch``), at most one per stream, once the oldest of them has waited
``max_delay_us`` (at once when every open stream has one, or ``max_batch`` have), and
steps them in a worker thread, so the event loop keeps reading the next chunks while the
kernels run (they release the GIL). Under load most batching comes from the step in flight:
chunks arriving meanwhile make the next batch. asyncio's timers have 1 ms resolution, so a
nonzero ``max_delay_us`` that waits at all waits ~1 ms. A stream re-enters the ready set
only when its step is done: its chunks run strictly in arrival order, never two in one step.

If a batched step raises, the chunks are stepped per group of equal shapes, then one by one,
so that only the bad chunk's caller gets the error (a pool step checks every chunk before it
touches any state). Transport-agnostic and single-loop: call it from the event loop's thread.

The WebSocket stream's usual chunk (one whole binary frame) comes through the pool's *express
lane* instead (``express_lane``, ``_runtime.ExpressLane``): queued in C with no Python object per
chunk, stepped by this batcher in turn with the Python lanes (oldest chunk first), its replies
written in C. What the lane's C step declines is stepped at once the Python way. A stream's
chunks stay in arrival order across both: while one path holds a chunk of it, the other queues
the next ones behind it (``ExpressLane.python_queued``, ``_behind_express``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable

import numpy as np

from ..errors import InvalidArgumentError, LstminferError

DEFAULT_MAX_DELAY_US = 500
DEFAULT_MAX_QUEUED = 64
DEFAULT_INLINE_BELOW_US = 50
DEFAULT_MAX_BATCH = 128  # chunks per pool step: a backlog runs as several steps of this many (see Batcher)
_ALWAYS_INLINE_US = 10 ** 9  # longer than any step
_log = logging.getLogger("lstminfer.serve")
_SAMPLES_KEPT = 4096  # recent samples per series: bounded memory whatever the scrape interval


def inline_below_us_for_this_process() -> int:
    """``inline_below_us`` for a server: the default, or every step inline where the process may run on one
    core only (taskset, a one-CPU container): there the worker thread cannot run beside the event loop,
    so its hop (~70 us of CPU, plus GIL hand-offs) buys nothing. Measured: 64 streams of a T=1 LSTM
    H=256 on one core, 14.2-15.4 -> 11.8-11.9 us of CPU per chunk (benchmarks/serve_hotpath.py)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform: its CPU count
        cores = os.cpu_count() or 1
    return _ALWAYS_INLINE_US if cores == 1 else DEFAULT_INLINE_BELOW_US


class ServeError(LstminferError):
    """An error of the service; ``status`` is the HTTP status the transport answers with."""

    status = 500


class TooManyQueuedError(ServeError):
    """A stream already has ``max_queued`` chunks waiting; the client must wait for replies."""

    status = 429


class BadChunkError(ServeError, ValueError):
    """A chunk the model refuses (dtype, shape, batch, ...); only its own request fails."""

    status = 400


class StepFailedError(ServeError, RuntimeError):
    """The model failed while running this chunk (not the chunk's fault as far as we can tell)."""

    status = 500


class ServeStats:
    """Counters and recent samples the transport exports as metrics (plain attributes, cheap to update).

    ``batch_sizes``, ``queue_delays`` (seconds from arrival to the start of its step) and
    ``step_seconds`` keep the last few thousand samples: a metrics exporter drains them
    (``popleft``) into histograms; ``on_batch(size, step_seconds, queue_delays)``, when
    set, is called after every step instead of needing a drain.
    """

    def __init__(self) -> None:
        self.open_streams = 0
        self.started_total = 0
        self.ended_total = 0
        self.expired_total = 0
        self.batches_total = 0
        self.chunks_total = 0
        self.chunk_errors_total = 0
        self.step_seconds_total = 0.0
        self.queue_delay_seconds_total = 0.0
        self.batch_sizes: deque[int] = deque(maxlen=_SAMPLES_KEPT)
        self.queue_delays: deque[float] = deque(maxlen=_SAMPLES_KEPT)
        self.step_seconds: deque[float] = deque(maxlen=_SAMPLES_KEPT)
        self.on_batch: Callable[[int, float, list[float]], None] | None = None

    @property
    def mean_batch_size(self) -> float:
        return self.chunks_total / self.batches_total if self.batches_total else 0.0

    def record_batch(self, size: int, seconds: float, delays: list[float]) -> None:
        self.batches_total += 1
        self.chunks_total += size
        self.step_seconds_total += seconds
        self.queue_delay_seconds_total += sum(delays)
        self.batch_sizes.append(size)
        self.step_seconds.append(seconds)
        self.queue_delays.extend(delays)
        if self.on_batch is not None:
            self.on_batch(size, seconds, delays)


class _Queued:
    __slots__ = ("chunk", "future", "arrived", "label")

    def __init__(self, chunk: Any, future: asyncio.Future, arrived: float, label: Any):
        self.chunk, self.future, self.arrived, self.label = chunk, future, arrived, label


class Batcher:
    """Steps queued chunks of many streams of one ``StreamPool`` together; see the module doc."""

    def __init__(self, pool, *, max_delay_us: int = DEFAULT_MAX_DELAY_US, max_queued: int = DEFAULT_MAX_QUEUED,
                 inline_below_us: int = DEFAULT_INLINE_BELOW_US, max_batch: int = DEFAULT_MAX_BATCH,
                 stats: ServeStats | None = None):
        for name, value, least in (("max_delay_us", max_delay_us, 0), ("max_queued", max_queued, 1),
                                   ("inline_below_us", inline_below_us, 0), ("max_batch", max_batch, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidArgumentError(f"{name} must be an integer >= {least}, got {value!r}")
        self._pool = pool
        self._max_delay = max_delay_us / 1e6
        self.max_queued = max_queued
        # A step predicted shorter than this runs on the event loop: the hop to the worker
        # thread and back costs more (~100 us on 2 cores) than such a step blocks the loop.
        self._inline_below = inline_below_us / 1e6
        self._always_inline = inline_below_us >= _ALWAYS_INLINE_US
        # A step of a few hundred chunks costs no less per chunk than one of ~100 (the weights are read
        # once per step either way) but sizes that keep changing each need a compiled program, and the
        # first replies of a backlog wait for the whole step: a backlog runs as steps of max_batch.
        self.max_batch = max_batch
        self._seconds_per_byte: float | None = None  # running mean of step seconds per input byte
        self.stats = stats if stats is not None else ServeStats()
        self._lanes: dict[Hashable, deque[_Queued]] = {}
        self._ready: dict[Hashable, None] = {}  # insertion-ordered: first ready, first stepped
        self._in_step: set[Hashable] = set()
        self._after_step: dict[Hashable, list[Callable[[], None]]] = {}
        # one worker: pool steps are serialised by the pool's lock anyway
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstminfer-step")
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._express = None  # the pool's ExpressLane once a stream asked for it
        self._behind_express: set[Hashable] = set()  # keys whose Python chunks wait for an express chunk ahead
        self.count_express: Callable[[int, int, int], None] | None = None  # (replies, bytes in, bytes out) per step

    # -- what the sequence manager calls --------------------------------------------
    def submit(self, key: Hashable, chunk: Any, label: Any = None, waiter: Any = None) -> Any:
        """Queue one chunk of stream ``key``; the waiter gets its output or its error: a new future, or
        ``waiter``, any object with ``done()``, ``set_result(output)`` and ``set_exception(error)`` (the
        WebSocket path's connection: no future and no task per chunk), called on the event loop."""
        if self._closed:
            raise StepFailedError("the batcher is closed")
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        elif len(lane) >= self.max_queued:
            raise TooManyQueuedError(f"sequence {label!r} has {len(lane)} chunks queued (the limit is "
                                     f"{self.max_queued}); wait for replies before sending more")
        if self._task is None:
            self._start()
        future = self._loop.create_future() if waiter is None else waiter
        lane.append(_Queued(chunk, future, time.monotonic(), label))
        ready, express = self._ready, self._express
        if express is not None:
            express.python_queued(key, True)  # the stream's express chunks now queue behind this one
        if key not in ready and key not in self._in_step:
            if express is not None and express.pending(key):  # its express chunk came first
                self._behind_express.add(key)
            else:
                if not ready:  # else the batcher was woken (and idle cleared) by the chunk that made it non-empty
                    self._idle.clear()
                    self._wakeup.set()
                ready[key] = None
        return future

    def express_lane(self, features: int) -> Any:
        """The pool's express lane for chunks of ``features`` float32 values per frame (see the module
        doc), woken by this batcher; None where the pool has none or the batcher is closed."""
        if self._express is None and not self._closed:
            lane = self._pool.express_lane(features, time.monotonic)
            if lane is not None:
                lane.wake = self._express_woken
                self._express = lane
        return self._express

    def refuse_express(self) -> None:
        """From now on every chunk takes the Python path (the service drains: there it is refused)."""
        if self._express is not None:
            self._express.accepting = False

    def pending(self, key: Hashable) -> int:
        """Chunks of ``key`` queued or being stepped."""
        lane = self._lanes.get(key)
        express = self._express.pending(key) if self._express is not None else 0
        return (len(lane) if lane else 0) + (key in self._in_step) + express

    def cancel(self, key: Hashable, error: BaseException) -> None:
        """Fail every queued chunk of ``key`` with ``error`` and forget the lane (a chunk in a step completes)."""
        self._ready.pop(key, None)
        self._behind_express.discard(key)
        lane = self._lanes.pop(key, None)
        for item in lane or ():
            if not item.future.done():
                item.future.set_exception(error)
        if self._express is not None:
            self._express.python_queued(key, key in self._in_step)
            dropped = self._express.cancel(key)
            if dropped is not None:
                stream, sizes = dropped
                for size in sizes:
                    stream.connection.express_failed(size, error)
        self._check_idle()

    def after_step(self, key: Hashable, action: Callable[[], None]) -> None:
        """Run ``action`` now, or when the step ``key`` is in finishes (e.g. closing its slot)."""
        if key in self._in_step or (self._express is not None and self._express.stepping(key)):
            self._after_step.setdefault(key, []).append(action)
        else:
            action()

    async def drain(self) -> None:
        """Wait until every queued chunk has been stepped and delivered."""
        if self._idle is not None:
            await self._idle.wait()

    async def aclose(self) -> None:
        """Drain, stop the batching task and the worker thread."""
        await self.drain()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False)

    # -- the batching task ----------------------------------------------------------
    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._task = self._loop.create_task(self._run(), name="lstminfer-batcher")

    def _check_idle(self) -> None:
        express = self._express
        if self._idle is not None and not self._ready and not self._in_step \
                and (express is None or not (express.waiting_count or express.in_step)):
            self._idle.set()

    def _express_woken(self) -> None:
        """A chunk waits in the express lane and none did."""
        if self._task is None:
            self._start()
        if not self._ready:  # else the batcher was woken (and idle cleared) by the Python lanes
            self._idle.clear()
            self._wakeup.set()

    def _oldest(self) -> float | None:
        """When the oldest chunk ready in the Python lanes arrived (None: none is)."""
        return self._lanes[next(iter(self._ready))][0].arrived if self._ready else None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        limit = min(self._pool.max_streams, self.max_batch)
        while True:
            express = self._express
            waiting = express.waiting_count if express is not None else 0
            if not self._ready and not waiting:
                self._wakeup.clear()
                self._check_idle()
                await self._wakeup.wait()
                continue
            oldest, express_oldest = self._oldest(), express.oldest if waiting else None
            if len(self._ready) + waiting < min(limit, len(self._pool)):  # else every open stream has a chunk ready
                first = min(t for t in (oldest, express_oldest) if t is not None)
                wait = first + self._max_delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # let chunks of other streams join this step
                    oldest, express_oldest = self._oldest(), express.oldest if express is not None else None
            if express_oldest is not None and (oldest is None or express_oldest <= oldest):
                await self._express_step(express, limit, loop)
                continue
            # No padded rows: past 16 streams the pool runs bucket sizes; the rest go in the next step.
            batch = self._take(self._pool.unpadded_batch(min(len(self._ready), limit)))
            if not batch:
                continue
            started = time.monotonic()
            frames = {key: item.chunk for key, item in batch}
            if self._always_inline:  # no step's cost to predict
                inline, nbytes, rate = True, None, None
            else:
                nbytes = _nbytes(frames)
                rate = self._seconds_per_byte
                inline = nbytes is not None and rate is not None and nbytes * rate < self._inline_below
            results, seconds = await self._step_inline_or_not(frames, batch, inline, loop)
            if nbytes and seconds:  # 0.0: the worker failed, no sample
                sample = seconds / nbytes
                self._seconds_per_byte = sample if rate is None else 0.8 * rate + 0.2 * sample
            self._record(len(batch), seconds, [started - item.arrived for _, item in batch])
            self._deliver(batch, results)
            if inline:  # let the loop read (and serve) before the next step: waiters that queue their next
                await asyncio.sleep(0)  # chunk in their callback would otherwise keep it stepping unbroken

    async def _express_step(self, express: Any, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        """One step of the express lane's oldest chunks (what its C step declines: ``_step_declined``)."""
        n = express.collect(self._pool.unpadded_batch(min(express.waiting_count, limit)))
        if not n:
            return
        started = time.monotonic()
        nbytes = express.batch_bytes
        rate = self._seconds_per_byte
        if self._always_inline or (rate is not None and nbytes * rate < self._inline_below):
            seconds, inline = express.run(), True
        else:
            try:
                seconds = await loop.run_in_executor(self._executor, express.run)
            except Exception:  # the worker itself failed (shut down): the Python path reports it
                seconds = -1.0
            inline = False
        keys = express.pool_ids() if self._after_step else ()
        if seconds < 0:
            await self._step_declined(express, started, loop, inline)
        else:
            sample = seconds / nbytes
            self._seconds_per_byte = sample if rate is None else 0.8 * rate + 0.2 * sample
            self._record(n, seconds, express.delays(started))
            counts = express.deliver()
            if self.count_express is not None:
                self.count_express(*counts)
        for key in keys:
            self._run_after_step(key)
        for key in [key for key in self._behind_express if not express.pending(key)]:
            self._behind_express.discard(key)
            if self._lanes.get(key) and key not in self._in_step:
                self._ready[key] = None
        self._check_idle()
        if inline:  # let the loop read before the next step (see _run)
            await asyncio.sleep(0)

    async def _step_declined(self, express: Any, started: float, loop: asyncio.AbstractEventLoop,
                             inline: bool) -> None:
        """The chunks the express lane's C step declined, stepped at once through the pool's checked
        step (which checks, compiles and reports errors), ahead of the Python chunks queued behind them."""
        try:
            delays = express.delays(started)
            frames, batch = {}, []
            for stream in express.declined():
                connection = stream.connection
                try:
                    chunk = connection.express_declined(stream.payload())
                except Exception as e:  # not a chunk after all: its connection says why
                    connection.set_exception(e)
                    continue
                frames[stream.pool_id] = chunk
                batch.append((stream.pool_id, _Queued(chunk, connection, started, connection.sid)))
                self._in_step.add(stream.pool_id)
            if batch:
                results, seconds = await self._step_inline_or_not(frames, batch, inline, loop)
                self._record(len(batch), seconds, delays[:len(batch)])
                self._deliver(batch, results)
        finally:
            express.finish()

    async def _step_inline_or_not(self, frames: dict, batch: list[tuple[Hashable, _Queued]], inline: bool,
                                  loop: asyncio.AbstractEventLoop) -> tuple[dict, float]:
        """``_step`` on the event loop, or in the worker thread (seconds 0.0 where the worker itself failed:
        every chunk then fails, and the batcher keeps serving)."""
        if inline:
            return self._step(frames, batch)
        try:
            return await loop.run_in_executor(self._executor, self._step, frames, batch)
        except Exception as e:  # the worker itself failed (shut down)
            return {key: StepFailedError(f"pool step could not run: {e}") for key in frames}, 0.0

    def _record(self, size: int, seconds: float, delays: list[float]) -> None:
        try:
            self.stats.record_batch(size, seconds, delays)
        except Exception:  # a metrics hook must not stop the batcher
            _log.exception("lstminfer serve: the on_batch hook failed")

    def _run_after_step(self, key: Hashable) -> None:
        """The actions ``after_step`` deferred until the step of ``key`` finished."""
        for action in self._after_step.pop(key, ()):
            try:
                action()
            except Exception:  # e.g. closing a slot: never stop the batcher
                _log.exception("lstminfer serve: an action after a pool step failed")

    def _take(self, limit: int) -> list[tuple[Hashable, _Queued]]:
        """The head chunk of up to ``limit`` ready streams (dropping chunks whose caller went away)."""
        batch = []
        ready, lanes, in_step = self._ready, self._lanes, self._in_step
        for key in list(ready):
            if len(batch) >= limit:
                break
            del ready[key]
            lane = lanes[key]
            while lane and lane[0].future.done():  # cancelled by its caller before its step
                lane.popleft()
            if not lane:
                del lanes[key]
                if self._express is not None:
                    self._express.python_queued(key, False)
                continue
            batch.append((key, lane.popleft()))
            in_step.add(key)
        return batch

    def _step(self, frames: dict, batch: list[tuple[Hashable, _Queued]]) -> tuple[dict, float]:
        """In the worker thread: one pool step; if it raises, one step per group of equal chunk
        shapes (a pool that refuses mixed lengths still batches), then per chunk in a failing group."""
        t0 = time.perf_counter()
        try:
            results = self._pool.step(frames)
        except Exception:
            labels = {key: item.label for key, item in batch}
            groups: dict[Any, dict] = {}
            for key, chunk in frames.items():
                groups.setdefault(_shape_of(chunk), {})[key] = chunk
            results = {}
            for group in groups.values():
                if len(groups) > 1 and len(group) > 1:
                    try:
                        results.update(self._pool.step(group))
                        continue
                    except Exception:
                        pass
                for key, chunk in group.items():
                    try:
                        results[key] = self._pool.step({key: chunk})[key]
                    except Exception as e:  # this chunk's own error, for its own caller
                        results[key] = _as_serve_error(e, labels[key])
        return results, time.perf_counter() - t0

    def _deliver(self, batch: list[tuple[Hashable, _Queued]], results: dict) -> None:
        ready, lanes, in_step = self._ready, self._lanes, self._in_step
        for key, item in batch:
            in_step.discard(key)
            value = results.get(key)
            future = item.future
            if not future.done():
                if isinstance(value, BaseException):
                    self.stats.chunk_errors_total += 1
                    future.set_exception(value)
                else:
                    future.set_result(value)
            lane = lanes.get(key)
            if lane:
                if key not in self._behind_express:  # else its express chunks go first (_express_step)
                    ready[key] = None
            else:
                if lane is not None:
                    del lanes[key]
                if self._express is not None:  # before an action closes the slot: the flag goes with it
                    self._express.python_queued(key, False)
            if self._after_step:
                self._run_after_step(key)
        self._check_idle()


def _nbytes(frames: dict) -> int | None:
    """The chunks' size in bytes (None if any is not an array or a dict of arrays: unknown cost)."""
    total = 0
    for chunk in frames.values():
        if isinstance(chunk, dict):
            for value in chunk.values():
                if not isinstance(value, np.ndarray):
                    return None
                total += value.nbytes
        elif isinstance(chunk, np.ndarray):
            total += chunk.nbytes
        else:
            return None
    return total


def _shape_of(chunk: Any) -> Any:
    """A grouping key: the chunk's shape, or per input for a dict of inputs (None when unknown)."""
    if isinstance(chunk, dict):
        return tuple(sorted((str(name), getattr(value, "shape", None)) for name, value in chunk.items()))
    return getattr(chunk, "shape", None)


def _as_serve_error(e: Exception, label: Any) -> ServeError:
    """``e`` as the error its caller gets, naming the sequence (the pool only knows its own ids)."""
    if isinstance(e, ServeError):
        return e
    cls = BadChunkError if isinstance(e, (ValueError, TypeError)) else StepFailedError
    error = cls(f"sequence {label!r}: {e}")
    error.__cause__ = e
    return error
