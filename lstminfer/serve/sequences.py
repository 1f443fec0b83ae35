"""Sequences of one served model: ids -> streams of one ``StreamPool``, their lifecycle and state.

    manager = SequenceManager(model, max_streams=1000)
    manager.start(42)                      # or manager.start("user-7", state=blob)
    y = await manager.step(42, chunk)      # batched with other sequences' chunks (see batcher.py)
    blob = manager.get_state(42); manager.end(42)

Ids are what the client gave: an unsigned 64-bit int or a (non-empty) string, kept as given
(1 and "1" are two sequences). Every open sequence holds one pool slot; ending, expiring
(idle for ``idle_timeout`` and not held by a WebSocket) and a disconnect free it exactly
once: the id leaves ``_seqs`` in one step on the event loop, and its slot is closed then,
or after the pool step it is in finishes. Transport-agnostic and single-loop: call it from
the event loop's thread; the only other thread is the batcher's worker running pool steps.

Not thread-safe by design; the sync calls (start, end, reset, get/put_state) take the pool's
lock, so they wait for a pool step in flight (one step: milliseconds).
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union

from ..errors import InvalidArgumentError, LstminferError
from .batcher import (DEFAULT_INLINE_BELOW_US, DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY_US, DEFAULT_MAX_QUEUED,
                      BadChunkError, Batcher, ServeError, ServeStats, StepFailedError, TooManyQueuedError)

__all__ = [
    "SequenceManager", "SequenceId", "LoadResult", "ServeStats", "check_sequence_id", "parse_sequence_id",
    "state_file_name", "sequence_id_of",
    "ServeError", "BadSequenceIdError", "UnknownSequenceError", "ExpiredSequenceError", "SequenceExistsError",
    "PoolFullError", "DrainingError", "BadStateError", "StateDirError", "TooManyQueuedError", "BadChunkError",
    "StepFailedError",
]

SequenceId = Union[int, str]
DEFAULT_IDLE_TIMEOUT = 300.0
MAX_ID_BYTES = 128  # a string id, UTF-8: its file name (base32, ~1.6x) stays under 255 bytes
_U64_MAX = 2 ** 64 - 1
_REMEMBERED_EXPIRED = 65_536  # expired ids kept to say "expired" rather than "unknown" (<= ~15 MB)
_STATE_FILE = re.compile(r"^(int-(0|[1-9][0-9]{0,19})|str-([a-z2-7]+))\.state$")


class BadSequenceIdError(ServeError, ValueError):
    status = 400


class UnknownSequenceError(ServeError, LookupError):
    """No open sequence has this id (never started, or ended)."""

    status = 404


class ExpiredSequenceError(UnknownSequenceError):
    """The sequence was open, then idle longer than the idle timeout."""


class SequenceExistsError(ServeError):
    """START of a sequence that is already open."""

    status = 409


class PoolFullError(ServeError):
    """Every slot is taken; ``retry_after`` (seconds) is the transport's Retry-After."""

    status = 503
    retry_after = 1


class DrainingError(ServeError):
    """The service is draining (shutting down): no new sequences or chunks."""

    status = 503
    retry_after = 1


class BadStateError(ServeError, ValueError):
    """A state blob or dict the model refuses (other model, corrupt, wrong shapes)."""

    status = 400


class StateDirError(ServeError, OSError):
    """The state directory cannot be read or written."""

    status = 500


class LoadResult(NamedTuple):
    loaded: list  # ids restored
    failed: list  # (path, why) for files that could not be restored


def check_sequence_id(sid: Any) -> SequenceId:
    """``sid`` as a sequence id: an int in [0, 2**64) (numpy's too, as int) or a non-empty string."""
    if sid.__class__ is int and 0 <= sid <= _U64_MAX:  # the common case, first
        return sid
    if isinstance(sid, str):
        if not sid:
            raise BadSequenceIdError("a sequence id string must not be empty")
        if len(sid.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            raise BadSequenceIdError(f"a sequence id string is at most {MAX_ID_BYTES} bytes in UTF-8, "
                                     f"got {len(sid.encode('utf-8', 'surrogatepass'))}")
        return sid
    if isinstance(sid, bool) or not hasattr(sid, "__index__"):
        raise BadSequenceIdError(f"a sequence id is an unsigned 64-bit integer or a string, got {type(sid).__name__}")
    value = sid.__index__()
    if not 0 <= value <= _U64_MAX:
        raise BadSequenceIdError(f"a sequence id integer must be in [0, 2**64 - 1], got {value}")
    return value


def parse_sequence_id(text: str) -> SequenceId:
    """An id written in a URL path or query: all ASCII digits is the integer id, anything else the string."""
    if text.isascii() and text.isdigit():
        return check_sequence_id(int(text))
    return check_sequence_id(text)


class _Sequence:
    __slots__ = ("sid", "pool_id", "last_used", "holds")

    def __init__(self, sid: SequenceId, pool_id: int, now: float):
        self.sid, self.pool_id, self.last_used, self.holds = sid, pool_id, now, 0


class SequenceManager:
    """The open sequences of one model, stepped together by a ``Batcher``; see the module doc."""

    def __init__(self, model, max_streams: int = 64, *, max_delay_us: int = DEFAULT_MAX_DELAY_US,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, max_queued: int = DEFAULT_MAX_QUEUED,
                 inline_below_us: int = DEFAULT_INLINE_BELOW_US, max_batch: int = DEFAULT_MAX_BATCH,
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) or not idle_timeout > 0:
            raise InvalidArgumentError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}")
        self._model = model
        self._pool = model.stream_pool(max_streams)
        self.max_streams = max_streams
        self.idle_timeout = float(idle_timeout)
        self.stats = ServeStats()
        self._batcher = Batcher(self._pool, max_delay_us=max_delay_us, max_queued=max_queued,
                                inline_below_us=inline_below_us, max_batch=max_batch, stats=self.stats)
        self._clock = clock
        self._seqs: dict[SequenceId, _Sequence] = {}
        self._expired: OrderedDict[SequenceId, None] = OrderedDict()
        self._reaper: asyncio.Task | None = None
        self._draining = False

    # -- lookups ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, sid: Any) -> bool:
        return sid in self._seqs

    def ids(self) -> list[SequenceId]:
        return list(self._seqs)

    @property
    def pool(self):
        """The ``StreamPool`` (read-only use: its ``len`` counts slots, freed ones included once closed)."""
        return self._pool

    # -- lifecycle -------------------------------------------------------------------
    def start(self, sid: Any, state: Any = None) -> None:
        """Open sequence ``sid`` from the initial state, or ``state`` (bytes from ``get_state``, or a dict)."""
        sid = check_sequence_id(sid)
        if self._draining:
            raise DrainingError(f"cannot start sequence {sid!r}: the service is draining")
        if sid in self._seqs:
            raise SequenceExistsError(f"sequence {sid!r} is already open; end it first or step it without START")
        if len(self._pool) >= self.max_streams:
            raise PoolFullError(f"cannot start sequence {sid!r}: all {self.max_streams} stream slots are taken; "
                                "retry later")
        try:
            pool_id = self._pool.open(state)
        except LstminferError as e:
            raise BadStateError(f"sequence {sid!r}: bad initial state: {e}") from e
        self._seqs[sid] = _Sequence(sid, pool_id, self._clock())
        self._expired.pop(sid, None)
        self.stats.started_total += 1
        self.stats.open_streams = len(self._seqs)
        self._ensure_reaper()

    def end(self, sid: Any, missing_ok: bool = False) -> bool:
        """End sequence ``sid`` (its queued chunks fail; one in a step completes). False if it was not open
        and ``missing_ok`` (a disconnect racing an end or the expiry), else raises."""
        sid = check_sequence_id(sid)
        seq = self._seqs.pop(sid, None)
        if seq is None:
            if missing_ok:
                return False
            raise self._unknown(sid)
        self._free(seq, UnknownSequenceError(f"sequence {sid!r} was ended while this chunk was queued"))
        self.stats.ended_total += 1
        return True

    def hold(self, sid: Any) -> None:
        """Mark ``sid`` attached (a WebSocket holds it): it does not expire until every hold is released."""
        self._open(sid).holds += 1

    def release(self, sid: Any) -> bool:
        """Undo one ``hold``; its idle time starts now. False if the sequence is no longer open."""
        seq = self._seqs.get(check_sequence_id(sid))
        if seq is None:
            return False
        seq.holds = max(0, seq.holds - 1)
        seq.last_used = self._clock()
        return True

    def expire_idle(self, now: float | None = None) -> list[SequenceId]:
        """End every sequence idle for ``idle_timeout`` (not held, nothing queued); the ids expired."""
        cutoff = (self._clock() if now is None else now) - self.idle_timeout
        pending = self._batcher.pending
        idle = [seq for seq in self._seqs.values()
                if seq.holds == 0 and seq.last_used <= cutoff and not pending(seq.pool_id)]
        for seq in idle:
            del self._seqs[seq.sid]
            self._expired[seq.sid] = None
            if len(self._expired) > _REMEMBERED_EXPIRED:
                self._expired.popitem(last=False)
            self._free(seq, None)
            self.stats.expired_total += 1
        return [seq.sid for seq in idle]

    # -- state ---------------------------------------------------------------------------
    def reset(self, sid: Any) -> None:
        """Zero the state of ``sid`` (as started without a state); applies before its queued chunks."""
        seq = self._open(sid)
        self._pool.reset(seq.pool_id)

    def get_state(self, sid: Any) -> bytes:
        """The state of ``sid`` as bytes (``StreamPool.save``): ``put_state``/``start`` take them back."""
        return self._pool.save(self._open(sid).pool_id)

    def put_state(self, sid: Any, blob: Any) -> bool:
        """Set the state of ``sid`` from ``blob`` (bytes from ``get_state``), starting it if not open.
        True if it was started."""
        sid = check_sequence_id(sid)
        seq = self._seqs.get(sid)
        if seq is None:
            self.start(sid, state=self._checked_blob(sid, blob))
            return True
        try:
            state = self._model.stream(state=self._checked_blob(sid, blob)).state
            self._pool.set_state(seq.pool_id, state)
        except LstminferError as e:
            raise BadStateError(f"sequence {sid!r}: bad state: {e}") from e
        seq.last_used = self._clock()
        return False

    # -- stepping ------------------------------------------------------------------------
    async def step(self, sid: Any, chunk: Any) -> Any:
        """Step ``sid`` by one chunk (the model's data input, batch 1): its output, as ``StreamPool.step``
        gives it. Chunks of one sequence run in the order ``step`` was called."""
        seq = self._open(sid)
        if self._draining:
            raise DrainingError(f"cannot step sequence {seq.sid!r}: the service is draining")
        future = self._batcher.submit(seq.pool_id, chunk, seq.sid)
        if self._reaper is None:
            self._ensure_reaper()
        try:
            return await future
        finally:
            seq.last_used = self._clock()

    def express_stream(self, sid: Any, connection: Any, write: Callable[[bytes], Any], features: int,
                       max_bytes: int, count: Callable[[int, int, int], None]) -> Any:
        """An ``ExpressStream`` of ``sid`` for a WebSocket ``connection`` whose replies go to ``write``
        (``Batcher.express_lane``), or None where the pool has no express lane; ``count(replies, bytes in,
        bytes out)`` is called after each express step."""
        seq = self._open(sid)
        lane = self._batcher.express_lane(features)
        if lane is None:
            return None
        self._batcher.count_express = count
        return lane.stream(connection, write, seq.pool_id, max_bytes, self._batcher.max_queued)

    def submit(self, sid: Any, chunk: Any, waiter: Any) -> None:
        """``step`` without a coroutine: queue one chunk of ``sid``; ``waiter`` (an object with ``done()``,
        ``set_result(output)`` and ``set_exception(error)``, called on the event loop) gets its outcome.
        Raises at once what ``step`` raises before queueing (unknown sequence, draining, a full queue)."""
        seq = self._open(sid)
        if self._draining:
            raise DrainingError(f"cannot step sequence {seq.sid!r}: the service is draining")
        self._batcher.submit(seq.pool_id, chunk, seq.sid, waiter)
        if self._reaper is None:
            self._ensure_reaper()

    async def drain(self) -> None:
        """Refuse new sequences and chunks; return when every accepted chunk has been stepped."""
        self._draining = True
        self._batcher.refuse_express()
        await self._batcher.drain()

    async def aclose(self) -> None:
        """Drain, then stop the expiry task and the batcher (the open sequences stay: ``save_all`` them)."""
        await self.drain()
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass
            self._reaper = None
        await self._batcher.aclose()

    async def __aenter__(self) -> "SequenceManager":
        self._ensure_reaper()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- persistence ---------------------------------------------------------------------
    def save_all(self, directory: str | os.PathLike) -> list[Path]:
        """Write every open sequence's state to ``directory`` (one file each, atomically), and remove
        state files of sequences no longer open; the paths written. ``drain()`` first for a
        consistent snapshot. One directory per model: it owns every state file in it."""
        directory = Path(directory)
        written = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for seq in list(self._seqs.values()):
                written.append(write_atomically(directory / state_file_name(seq.sid), self._pool.save(seq.pool_id)))
            keep = {p.name for p in written}
            for path in directory.iterdir():
                if _STATE_FILE.match(path.name) and path.name not in keep:
                    path.unlink()
            _sync_directory(directory)
        except OSError as e:
            raise StateDirError(f"cannot save sequence states to {str(directory)!r}: {e}") from e
        return written

    def load_all(self, directory: str | os.PathLike) -> LoadResult:
        """Restore every sequence saved in ``directory`` under its id (started, or overwritten if open).
        A missing directory restores nothing; a file that cannot be restored is reported, not fatal."""
        directory = Path(directory)
        loaded, failed = [], []
        try:
            paths = sorted(directory.iterdir()) if directory.exists() else []
        except OSError as e:
            raise StateDirError(f"cannot read the state directory {str(directory)!r}: {e}") from e
        for path in paths:
            sid = sequence_id_of(path.name)
            if sid is None:
                continue
            try:
                self.put_state(sid, path.read_bytes())
            except (OSError, ServeError) as e:
                failed.append((path, str(e)))
            else:
                loaded.append(sid)
        return LoadResult(loaded, failed)

    # -- internals -----------------------------------------------------------------------
    def _open(self, sid: Any) -> _Sequence:
        sid = check_sequence_id(sid)
        seq = self._seqs.get(sid)
        if seq is None:
            raise self._unknown(sid)
        seq.last_used = self._clock()
        return seq

    def _unknown(self, sid: SequenceId) -> UnknownSequenceError:
        if sid in self._expired:
            return ExpiredSequenceError(f"sequence {sid!r} expired: it was idle longer than the idle timeout "
                                        f"({self.idle_timeout:g} s); start it again")
        return UnknownSequenceError(f"unknown sequence {sid!r}: it is not open (never started, or ended)")

    def _free(self, seq: _Sequence, error: BaseException | None) -> None:
        """Release the slot of ``seq``, already removed from ``_seqs``: called once per sequence."""
        pool_id = seq.pool_id
        self._batcher.cancel(pool_id, error or self._unknown(seq.sid))
        self._batcher.after_step(pool_id, lambda: self._pool.close(pool_id))
        self.stats.open_streams = len(self._seqs)

    def _checked_blob(self, sid: SequenceId, blob: Any) -> bytes:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise BadStateError(f"sequence {sid!r}: a state is bytes from get_state, got {type(blob).__name__}")
        return bytes(blob)

    def _ensure_reaper(self) -> None:
        if self._reaper is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # used outside a loop (e.g. load_all at startup): started on first async use
                return
            self._reaper = loop.create_task(self._reap(), name="lstminfer-expiry")

    async def _reap(self) -> None:
        interval = min(1.0, max(self.idle_timeout / 4, 0.005))  # at least once a second
        while True:
            await asyncio.sleep(interval)
            self.expire_idle()


def state_file_name(sid: SequenceId) -> str:
    """A file name for ``sid`` that is safe on any file system and tells an int id from a string id."""
    if isinstance(sid, int):
        return f"int-{sid}.state"
    encoded = base64.b32encode(sid.encode("utf-8", "surrogatepass")).decode("ascii").rstrip("=").lower()
    return f"str-{encoded}.state"


def sequence_id_of(name: str) -> SequenceId | None:
    """The id a ``state_file_name`` encodes, or None for any other file (temp files included)."""
    match = _STATE_FILE.match(name)
    if match is None:
        return None
    if match.group(2) is not None:
        value = int(match.group(2))
        return value if value <= _U64_MAX else None
    text = match.group(3).upper()
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8)).decode("utf-8", "surrogatepass")
    except ValueError:
        return None


def write_atomically(path: Path, data: bytes) -> Path:
    """``data`` in ``path`` whole or not at all (a temp file fsynced, then renamed over it)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path


def _sync_directory(directory: Path) -> None:
    """Make the renames durable (where the platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
