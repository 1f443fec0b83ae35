"""One replica's streams: its models' ``SequenceManager``s, and moving a stream in or out with its state.

``StreamOwner`` (``owner.py``) is the Ray Serve deployment around this class; everything here is plain
asyncio, so the move protocol can be read without Ray. Every operation on a sequence runs under that
sequence's lock: a sequence this replica does not hold is first claimed from the ``directory`` (moved
in with its ``save()`` bytes, started, or refused as lost), and a hand-over waits for the operation in
flight, so a chunk is never stepped on two replicas and never stepped twice.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from ..serve.app import ServedModel, ServeOptions, load_models
from ..serve.http_sequences import SequenceRequests
from ..serve.protocol import ProtocolError
from ..serve.sequences import DrainingError, SequenceManager, check_sequence_id
from ..serve.websocket import StreamLayout, stream_layout
from .moves import Handover, ResumedFromCheckpointError, SequenceLostError, sequence_key

Key = tuple  # (model name, sequence id)
log = logging.getLogger("lstminfer.ray")


class Directory:
    """What a replica needs of the stream directory (``directory.StreamDirectory`` behind a handle)."""

    async def claim(self, key: Key, me: str, create: bool) -> tuple: ...
    async def handed(self, records: list[tuple[Key, Handover | None]]) -> None: ...
    async def checkpoint(self, key: Key, record: Handover) -> None: ...
    async def release(self, keys: list) -> None: ...


class ReplicaStreams:
    """The models of one replica and the sequences it holds; ``me`` names it in the directory."""

    def __init__(self, model_specs: list[str], options: ServeOptions, me: str, directory: Directory,
                 checkpoint_every: int = 0):
        self.me = me
        self.options = options
        self.directory = directory
        self.checkpoint_every = checkpoint_every
        self.models: dict[str, ServedModel] = load_models(model_specs, options)
        self.sequences: dict[str, SequenceRequests] = {}
        for name, served in self.models.items():
            if served.streamable:
                manager = SequenceManager(served.model, options.max_streams, max_delay_us=options.max_delay_us,
                                          idle_timeout=options.idle_timeout, max_batch=options.max_batch)
                self.sequences[name] = SequenceRequests(name, manager, served.inputs, manager.pool.output_names)
        self.layouts: dict[str, StreamLayout] = {}
        self.draining = False
        self.move_seconds: list[float] = []  # claim -> state in place, per stream moved in (the figures)
        self._locks: dict[Key, asyncio.Lock] = {}
        self._chunks: dict[Key, int] = {}  # chunks stepped since the sequence started, moved with it
        self._holds: dict[Key, int] = {}  # WebSocket holds, moved with the sequence
        self._checkpointed: dict[Key, int] = {}  # chunk count of the last checkpoint sent
        self._known: set[Key] = set()  # held here; one that vanished from its manager expired

    # -- the operations (each under its sequence's lock) ---------------------------------
    async def run(self, model: str, sid: Any, op: Callable[[SequenceRequests], Awaitable[Any]], *,
                  create: bool = False, steps: bool = False, state_changes: bool = False) -> Any:
        """``op(sequences)`` on sequence ``sid`` of ``model`` once it is held here; ``steps``: it stepped one
        chunk when it returns; ``state_changes``: it replaced the state (the checkpoint must follow)."""
        sequences = self._sequences(model)
        sid = check_sequence_id(sid)
        key = sequence_key(model, sid)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            try:
                if sid not in sequences.manager:
                    await self._claim(key, sequences, create)
                result = await op(sequences)
                if sid in sequences.manager:
                    self._known.add(key)
                    if steps:
                        self._chunks[key] = self._chunks.get(key, 0) + 1
                    self._maybe_checkpoint(key, sequences, force=state_changes)
                else:
                    self._forget(key, release=True)
                return result
            finally:
                self._drop_lock(key, lock)

    def _drop_lock(self, key: Key, lock: asyncio.Lock) -> None:
        """Forget ``key``'s lock once nobody waits on it (called with no await before the release)."""
        if self._locks.get(key) is lock and not lock._waiters:  # noqa: SLF001
            del self._locks[key]

    def chunks(self, model: str, sid: Any) -> int:
        return self._chunks.get(sequence_key(model, check_sequence_id(sid)), 0)

    def hold(self, model: str, sid: Any) -> None:
        key = sequence_key(model, sid)
        self._sequences(model).manager.hold(sid)
        self._holds[key] = self._holds.get(key, 0) + 1

    def release(self, model: str, sid: Any) -> None:
        key = sequence_key(model, sid)
        if self._sequences(model).manager.release(sid):
            self._holds[key] = max(0, self._holds.get(key, 0) - 1)

    def layout(self, model: str) -> StreamLayout:
        layout = self.layouts.get(model)
        if layout is None:
            layout = self.layouts[model] = stream_layout(self.models[model], self._sequences(model))
        return layout

    # -- moving in -------------------------------------------------------------------------
    async def _claim(self, key: Key, sequences: SequenceRequests, create: bool) -> None:
        if self.draining:
            refusal = DrainingError(f"sequence {key[1]!r}: this replica is draining; retry (another replica takes it)")
            refusal.replica_draining = True  # the ingress retries: the router sends it elsewhere
            raise refusal
        began = time.perf_counter()
        verdict, detail = await self.directory.claim(key, self.me, create)
        sid = key[1]
        if verdict in ("moved", "resumed"):
            record: Handover = detail
            sequences.manager.put_state(sid, record.state)
            for _ in range(record.holds):
                sequences.manager.hold(sid)
            self._chunks[key], self._holds[key] = record.chunks, record.holds
            self._checkpointed[key] = record.chunks
            self._known.add(key)
            if verdict == "moved":
                self.move_seconds.append(time.perf_counter() - began)
                return
            raise ResumedFromCheckpointError(sid, record.chunks, record.replica)
        if verdict == "lost":
            raise SequenceLostError(sid, detail)
        # "new": nothing held anywhere; the operation starts it, or refuses it as unknown

    # -- moving out ------------------------------------------------------------------------
    async def hand_over(self, keys: list[Key]) -> None:
        """The directory asks for ``keys``: for each, wait for its operation in flight, save and forget it;
        then hand all the bytes over in one call (a scale-up asks for many at once)."""
        taken = await asyncio.gather(*(self._take(key) for key in keys), return_exceptions=True)
        records = []
        for key, record in zip(keys, taken):
            if isinstance(record, BaseException):  # its claimant must not wait forever: "not held here"
                log.error("replica %s: sequence %r not handed over: %s: %s", self.me, key[1],
                          type(record).__name__, record)
                record = None
            records.append((key, record))
        await self.directory.handed(records)

    async def take_all(self) -> list[tuple[Key, Handover]]:
        """Every sequence held here, saved and forgotten (a replica being drained hands them all over)."""
        self.draining = True
        taken = []
        for key in self.held_keys():
            record = await self._take(key)
            if record is not None:
                taken.append((key, record))
        return taken

    def held_keys(self) -> list[Key]:
        return [sequence_key(name, sid) for name, seqs in self.sequences.items() for sid in seqs.manager.ids()]

    async def _take(self, key: Key) -> Handover | None:
        model, sid = key
        sequences = self.sequences.get(model)
        if sequences is None or sid not in sequences.manager:
            return None  # not here (it may be claiming it itself: never wait for the lock then)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if sid not in sequences.manager:
                return None
            record = Handover(sequences.manager.get_state(sid), self._chunks.get(key, 0), self._holds.get(key, 0),
                              self.me)
            sequences.manager.end(sid, missing_ok=True)
            self._forget(key, release=False)
        self._drop_lock(key, lock)
        return record

    # -- checkpoints and bookkeeping -----------------------------------------------------
    def _maybe_checkpoint(self, key: Key, sequences: SequenceRequests, force: bool) -> Awaitable | None:
        every = self.checkpoint_every
        if not every:
            return None
        chunks = self._chunks.get(key, 0)
        if not force and (chunks % every or self._checkpointed.get(key) == chunks):
            return None
        self._checkpointed[key] = chunks
        record = Handover(sequences.manager.get_state(key[1]), chunks, self._holds.get(key, 0), self.me)
        return self.directory.checkpoint(key, record)  # not awaited: the stream does not wait for its copy

    def _forget(self, key: Key, release: bool) -> None:
        for table in (self._chunks, self._holds, self._checkpointed):
            table.pop(key, None)
        self._known.discard(key)
        if release:
            self.directory.release([key])

    def expired(self) -> list[Key]:
        """Sequences held here that their manager ended on its own (idle timeout): forgotten, to release."""
        gone = [key for key in self._known if key[1] not in self.sequences[key[0]].manager]
        for key in gone:
            self._forget(key, release=False)
        return gone

    def _sequences(self, model: str) -> SequenceRequests:
        sequences = self.sequences.get(model)
        if sequences is None:
            if model in self.models:
                raise ProtocolError(400, f"model '{model}' cannot stream, so it takes no sequence requests")
            raise ProtocolError(404, f"unknown model '{model}' (serving: {', '.join(self.models)})")
        return sequences

    def stats(self) -> dict[str, Any]:
        return {name: seqs.manager.stats for name, seqs in self.sequences.items()}

    async def aclose(self) -> None:
        for sequences in self.sequences.values():
            await sequences.manager.aclose()
