"""Checkpoints on disk (``checkpoint_dir``): one file per sequence, written atomically, read back at start.

Kept by the stream directory beside its memory, so a checkpoint survives the directory's restart as
well as its holder's death. A file: one JSON header line (the key, the chunk count, the replica that
sent it), then the ``save()`` bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..serve.sequences import write_atomically
from .moves import Handover

log = logging.getLogger("lstminfer.ray")
SUFFIX = ".ckpt"


class CheckpointFiles:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: tuple) -> Path:
        name = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:32]
        return self.directory / (name + SUFFIX)

    def write(self, key: tuple, record: Handover) -> None:
        header = json.dumps({"key": list(key), "chunks": record.chunks, "replica": record.replica}).encode()
        write_atomically(self._path(key), header + b"\n" + record.state)  # old or new, never half of one

    def remove(self, key: tuple) -> None:
        self._path(key).unlink(missing_ok=True)

    def load(self) -> dict[tuple, Handover]:
        """Every readable checkpoint in the directory; an unreadable file is logged and skipped."""
        found: dict[tuple, Handover] = {}
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            try:
                header, state = path.read_bytes().split(b"\n", 1)
                meta = json.loads(header)
                key = tuple(meta["key"])
                found[key] = Handover(state=state, chunks=int(meta["chunks"]), holds=0, replica=str(meta["replica"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("checkpoint file %s is unreadable (%s): skipped", path, e)
        return found
