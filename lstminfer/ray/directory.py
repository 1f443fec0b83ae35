"""The stream directory: which replica holds each sequence, its state while it moves, and its last checkpoint.

One per application (a one-replica Serve deployment). A replica that gets work for a sequence it does
not hold ``claim``s it here. The verdict:

* ``new``: nobody holds it (the claimant starts it, or answers "unknown sequence");
* ``moved``: another live replica held it: that replica is told at once (its ``next_handover`` long poll
  returns the key), finishes the chunk in flight, ``save()``s, forgets the stream and sends the bytes
  back with ``handed``; a drained replica ``park``s all of its streams here beforehand;
* ``lost`` / ``resumed``: its replica died (its actor no longer answers): without a checkpoint the
  state is gone; with one (``checkpoint``: every K chunks) the claimant resumes from it.

Claims of one key run one at a time; state bytes stay in this actor's memory, not in objects owned by a
replica (those would die with it).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from .checkpoint_files import CheckpointFiles
from .moves import Handover

POLL_S = 1.0  # a replica's long poll returns at least this often: its metrics and its liveness
PING_TIMEOUT_S = 5.0  # a holder that does not answer a ping this long is busy, not dead: keep waiting


class StreamDirectory:
    def __init__(self, checkpoint_dir: str | None = None) -> None:
        self.owner: dict[tuple, str] = {}
        self.parked: dict[tuple, Handover] = {}
        # checkpoint_dir: each checkpoint also written there, and read back here (a restart keeps them)
        self.files = CheckpointFiles(checkpoint_dir) if checkpoint_dir else None
        self.checkpoints: dict[tuple, Handover] = self.files.load() if self.files else {}
        self.lost: dict[tuple, str] = {}
        self.dead: set[str] = set()
        self.handles: dict[str, Any] = {}
        self.snapshots: dict[str, dict] = {}
        self.ingresses: dict[str, tuple[float, dict]] = {}
        self.seen: dict[str, float] = {}
        self._mailboxes: dict[str, asyncio.Queue] = {}
        self._waiting: dict[tuple, asyncio.Future] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}

    # -- replicas -------------------------------------------------------------------------
    def register(self, me: str, actor: Any, held: list | None = None) -> None:
        """Replica ``me`` (its actor handle, for pings) and the sequences it holds (after a restart of this
        directory: its records are rebuilt from the replicas; a claim made meanwhile keeps its key)."""
        self.handles[me] = actor
        self.seen[me] = time.monotonic()
        self._mailbox(me)
        for key in held or ():
            self.owner.setdefault(tuple(key), me)

    async def next_handover(self, me: str, snapshot: dict | None = None, gone: list | None = None) -> list | None:
        """The keys ``me`` must hand over now (waits up to ``POLL_S``); ``snapshot``: its metrics;
        ``gone``: keys it no longer holds (expired). None: this directory does not know ``me`` (it was
        restarted): register again, with the keys held."""
        if me not in self.handles:
            return None
        self.seen[me] = time.monotonic()
        if snapshot is not None:
            self.snapshots[me] = snapshot
        if gone:
            self.release(gone, me)
        box = self._mailbox(me)
        keys = []
        try:
            keys.append(await asyncio.wait_for(box.get(), POLL_S))
        except asyncio.TimeoutError:
            return keys
        while not box.empty():
            keys.append(box.get_nowait())
        return keys

    def stopped(self, me: str) -> None:
        """``me`` is shutting down cleanly (after parking its streams): not a death, no metrics."""
        self.snapshots.pop(me, None)
        self.handles.pop(me, None)

    # -- claims ----------------------------------------------------------------------------
    async def claim(self, key: tuple, me: str, create: bool) -> tuple[str, Any]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                return await self._claim(key, me, create)
            finally:
                if not lock._waiters:  # noqa: SLF001
                    self._locks.pop(key, None)

    async def _claim(self, key: tuple, me: str, create: bool) -> tuple[str, Any]:
        parked = self.parked.pop(key, None)
        if parked is not None:
            self.owner[key] = me
            return "moved", parked
        holder = self.owner.get(key)
        if holder is not None and holder != me:
            record = await self._take_from(holder, key)
            if record is not None:
                self.owner[key] = me
                return "moved", record
            if holder in self.dead:
                if create:  # a START discards the old state anyway: a fresh sequence, not an error
                    if self.checkpoints.pop(key, None) is not None and self.files is not None:
                        self.files.remove(key)
                    self.owner[key] = me
                    return "new", None
                return self._after_death(key, me, holder)
        if key in self.lost and not create:
            return "lost", self.lost[key]
        if holder is None and not create and key in self.checkpoints:
            # no replica registered it after this directory restarted: its holder died meanwhile
            return self._after_death(key, me, self.checkpoints[key].replica)
        self.lost.pop(key, None)
        if create:
            self.owner[key] = me
        else:
            self.owner.pop(key, None)
        return "new", None

    def _after_death(self, key: tuple, me: str, holder: str) -> tuple[str, Any]:
        checkpoint = self.checkpoints.get(key)
        if checkpoint is not None:
            self.owner[key] = me
            return "resumed", checkpoint
        self.owner.pop(key, None)
        self.lost[key] = holder
        return "lost", holder

    async def _take_from(self, holder: str, key: tuple) -> Handover | None:
        """``key``'s state from ``holder`` (None: it does not have it, or it died)."""
        if holder in self.dead:
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._mailbox(holder).put_nowait(key)
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(future), POLL_S)
                except asyncio.TimeoutError:
                    if not await self._alive(holder):
                        self.dead.add(holder)
                        return None
        finally:
            self._waiting.pop(key, None)

    async def _alive(self, replica: str) -> bool:
        handle = self.handles.get(replica)
        if handle is None:  # never polled, or stopped cleanly: it cannot answer; wait on its last sign of life
            return time.monotonic() - self.seen.get(replica, 0.0) < 10 * POLL_S
        try:
            await asyncio.wait_for(handle.__ray_ready__.remote(), PING_TIMEOUT_S)
        except asyncio.TimeoutError:
            return True
        except Exception as e:  # noqa: BLE001  (ActorDiedError and kin: the actor is gone)
            return type(e).__name__ == "ActorUnavailableError"  # unreachable for now, not dead: keep waiting
        return True

    def handed(self, records: list[tuple[tuple, Handover | None]]) -> None:
        """A holder's answer to hand-over requests: (key, its state, or None when it did not hold it)."""
        for key, record in records:
            key = tuple(key)
            future = self._waiting.get(key)
            if future is not None and not future.done():
                future.set_result(record)
            elif record is not None:  # the claimant gave up meanwhile: keep the state for the next one
                self.parked[key] = record
                self.owner.pop(key, None)

    def park(self, records: list[tuple[tuple, Handover]]) -> None:
        """A replica being drained leaves its streams here for whoever claims them next."""
        for key, record in records:
            future = self._waiting.get(key)
            if future is not None and not future.done():
                future.set_result(record)
            else:
                self.parked[key] = record
                self.owner.pop(key, None)

    def checkpoint(self, key: tuple, record: Handover) -> None:
        kept = self.checkpoints.get(key)
        if kept is None or record.chunks >= kept.chunks or record.replica != kept.replica:
            self.checkpoints[key] = record
            if self.files is not None:
                self.files.write(key, record)

    def release(self, keys: list, replica: str | None = None) -> None:
        """Sequences ended (or expired): forget them, and their checkpoints."""
        for key in keys:
            key = tuple(key)
            if replica is None or self.owner.get(key) == replica:
                self.owner.pop(key, None)
                if self.checkpoints.pop(key, None) is not None and self.files is not None:
                    self.files.remove(key)

    # -- reading -----------------------------------------------------------------------------
    def metrics(self) -> dict[str, dict]:
        """The metrics snapshot of every replica that polled within the last few seconds."""
        now = time.monotonic()
        return {me: snap for me, snap in self.snapshots.items()
                if me not in self.dead and now - self.seen.get(me, 0.0) < 5 * POLL_S}

    def ingress_counts(self, ingress: str, counts: dict) -> None:
        """An ingress replica's request counters (sent about once a second): /metrics adds them up."""
        self.ingresses[ingress] = (time.monotonic(), counts)

    def scrape(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """(the owners' snapshots, the ingress replicas' counters), those sent within the last few seconds."""
        now = time.monotonic()
        return self.metrics(), {me: counts for me, (at, counts) in self.ingresses.items() if now - at < 5 * POLL_S}

    def owners(self) -> dict[tuple, str]:
        return dict(self.owner)

    def replica_handles(self) -> dict[str, Any]:
        return dict(self.handles)

    def _mailbox(self, me: str) -> asyncio.Queue:
        box = self._mailboxes.get(me)
        if box is None:
            box = self._mailboxes[me] = asyncio.Queue()
        return box
