"""What moves between replicas: a sequence's ``save()`` bytes with its chunk count, and the two errors of a death.

A sequence is keyed ``(model, sequence id)``; the router hashes ``routing_key`` of it, so every request
of a sequence reaches one replica while the replica set stays the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..serve.batcher import ServeError
from ..serve.sequences import UnknownSequenceError


@dataclass(frozen=True)
class Handover:
    """A sequence's state in transit: ``state`` (``StreamPool.save`` bytes) after ``chunks`` chunks, the
    WebSocket ``holds`` on it, and the ``replica`` it comes from."""

    state: bytes
    chunks: int
    holds: int
    replica: str


def sequence_key(model: str, sid: Any) -> tuple:
    return (model, sid)


def routing_key(model: str, sid: Any) -> str:
    """The session id the consistent-hash router hashes (1 and "1" may share a replica: harmless)."""
    return f"{model}/{sid}"


class SequenceLostError(UnknownSequenceError):
    """The replica holding the sequence died and no checkpoint of it was kept."""

    def __init__(self, sid: Any, replica: str):
        super().__init__(f"sequence {sid!r} was lost: its replica ({replica}) died and its state with it "
                         "(no checkpoint: serve with checkpoint_every=K to resume instead); start it again")
        self.sid = sid


class ResumedFromCheckpointError(ServeError):
    """The replica holding the sequence died; the sequence is open again, at its checkpoint after chunk ``chunk``.

    The chunk that found it out is NOT stepped (the chunks after the checkpoint were lost with the
    replica): the client sends again from chunk ``chunk + 1``."""

    status = 409

    def __init__(self, sid: Any, chunk: int, replica: str):
        super().__init__(f"sequence {sid!r}: its replica ({replica}) died; it resumed from its checkpoint after "
                         f"chunk {chunk} (chunks counted from 1 since its start): this chunk was not stepped; "
                         f"send its chunks again from chunk {chunk + 1}")
        self.sid = sid
        self.resumed_after_chunk = chunk
