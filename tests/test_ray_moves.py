"""The move protocol of ``lstminfer.ray`` without Ray: two ``ReplicaStreams`` and one ``StreamDirectory`` in one loop.

A chunk sent to the new owner while the old one still steps the previous chunk waits for it, then runs
on the moved state (never twice, never lost); a drained replica parks its streams for the next claimant;
a dead holder's streams are "lost" without a checkpoint and resume from the last one with it.
"""
import asyncio

import numpy as np
import pytest

pytest.importorskip("aiohttp")  # lstminfer.serve (the codec, the sequence manager) is the serve extra
pytest.importorskip("prometheus_client")

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from lstminfer.ray.directory import StreamDirectory  # noqa: E402
from lstminfer.ray.moves import ResumedFromCheckpointError, SequenceLostError  # noqa: E402
from lstminfer.ray.owner_core import ReplicaStreams  # noqa: E402
from lstminfer.serve.app import ServeOptions  # noqa: E402

MODEL = "adding_lstm"


class _Calls:
    """``ReplicaStreams``' directory: the directory's own methods, called in the same loop."""

    def __init__(self, directory: StreamDirectory):
        self.d = directory

    async def claim(self, key, me, create):
        return await self.d.claim(key, me, create)

    async def handed(self, records):
        self.d.handed(records)

    def checkpoint(self, key, record):
        self.d.checkpoint(key, record)

    def release(self, keys):
        self.d.release(keys)


class _DeadActor:
    class _Ready:
        def remote(self):
            async def died():
                raise type("ActorDiedError", (Exception,), {})("the actor died")
            return died()

    __ray_ready__ = _Ready()


class _LiveActor:
    class _Ready:
        def remote(self):
            async def fine():
                return True
            return fine()

    __ray_ready__ = _Ready()


async def _polling(calls, replica: ReplicaStreams) -> None:
    """A replica's long poll, as ``StreamOwner`` runs it (``calls.d``: the directory now)."""
    while True:
        keys = await calls.d.next_handover(replica.me)
        if keys is None:
            calls.d.register(replica.me, _LiveActor(), replica.held_keys())
        elif keys:
            asyncio.get_running_loop().create_task(replica.hand_over(keys))


def _chunks(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, int(rng.integers(1, 4)), 2)).astype(np.float32) for _ in range(count)]


def _whole(model, chunks):
    out = model.predict(x=np.concatenate(chunks, axis=1))
    return out["y"] if isinstance(out, dict) else out


async def _step(replica: ReplicaStreams, sid, chunk, start: bool = False):
    async def op(seqs):
        if start:
            seqs.manager.start(sid)
        return await seqs.manager.step(sid, chunk)
    return await replica.run(MODEL, sid, op, create=start, steps=True)


@pytest.fixture
def model():
    return lstminfer.Model(lstminfer.models.path(MODEL))


def _replicas(checkpoint_every: int = 0, checkpoint_dir=None):
    directory = StreamDirectory(checkpoint_dir)
    calls = _Calls(directory)
    a = ReplicaStreams([], ServeOptions(), "a", calls, checkpoint_every)
    b = ReplicaStreams([], ServeOptions(), "b", calls, checkpoint_every)
    return directory, a, b


def test_a_chunk_sent_during_a_move_waits_and_runs_once_on_the_moved_state(model):
    async def run():
        directory, a, b = _replicas()
        directory.register("a", _LiveActor())
        directory.register("b", _LiveActor())
        polls = [asyncio.ensure_future(_polling(a.directory, r)) for r in (a, b)]
        streams = {sid: _chunks(sid, 6) for sid in range(20)}
        outputs = {sid: [] for sid in streams}
        for k in range(3):  # chunks 1-3 on a
            ys = await asyncio.gather(*(_step(a, sid, c[k], start=k == 0) for sid, c in streams.items()))
            for sid, y in zip(streams, ys):
                outputs[sid].append(y.copy())
        # chunk 4 still on a (in flight) while chunk 5 already goes to b: b's claim waits for chunk 4
        fourth = [asyncio.ensure_future(_step(a, sid, c[3])) for sid, c in streams.items()]
        fifth = [asyncio.ensure_future(_step(b, sid, c[4])) for sid, c in streams.items()]
        for sid, y4, y5 in zip(streams, await asyncio.gather(*fourth), await asyncio.gather(*fifth)):
            outputs[sid] += [y4.copy(), y5.copy()]
        assert all(owner == "b" for owner in directory.owners().values())
        assert len(b.move_seconds) == 20 and len(a.sequences[MODEL].manager) == 0
        # b drained: every stream parked, a claims them back for chunk 6
        directory.park(await b.take_all())
        for sid, y in zip(streams, await asyncio.gather(*(_step(a, sid, c[5]) for sid, c in streams.items()))):
            outputs[sid].append(y.copy())
        for p in polls:
            p.cancel()
        return streams, outputs

    streams, outputs = asyncio.run(run())
    for sid, chunks in streams.items():
        np.testing.assert_allclose(np.concatenate(outputs[sid], axis=1), _whole(model, chunks), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpoint_every", [0, 2])
def test_a_dead_holders_streams_are_lost_or_resumed_from_their_checkpoint(model, checkpoint_every):
    async def run():
        directory, a, b = _replicas(checkpoint_every)
        directory.register("a", _DeadActor())  # a never answers a hand-over: the ping finds it dead
        chunks = _chunks(7, 5)
        outputs = [(await _step(a, 1, chunks[0], start=True)).copy()]
        for k in (1, 2):
            outputs.append((await _step(a, 1, chunks[k])).copy())
        try:
            await _step(b, 1, chunks[3])
        except (SequenceLostError, ResumedFromCheckpointError) as e:
            failure = e
        else:
            failure = None
        if isinstance(failure, ResumedFromCheckpointError):  # the client sends again from the checkpoint
            del outputs[failure.resumed_after_chunk:]
            for k in range(failure.resumed_after_chunk, 5):
                outputs.append((await _step(b, 1, chunks[k])).copy())
        return failure, outputs, chunks

    failure, outputs, chunks = asyncio.run(run())
    if checkpoint_every == 0:
        assert isinstance(failure, SequenceLostError)
        assert "sequence 1 was lost: its replica (a) died" in str(failure)
    else:
        assert isinstance(failure, ResumedFromCheckpointError) and failure.resumed_after_chunk == 2
        assert "resumed from its checkpoint after chunk 2" in str(failure) and failure.status == 409
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), _whole(model, chunks), atol=1e-5, rtol=1e-5)


def test_starting_again_a_sequence_whose_holder_died_starts_it_fresh(model):
    async def run():
        directory, a, b = _replicas(checkpoint_every=1)
        directory.register("a", _DeadActor())
        chunks = _chunks(9, 2)
        await _step(a, "s", chunks[0], start=True)
        return (await _step(b, "s", chunks[1], start=True)).copy()  # no "lost", no "resumed": a new sequence

    np.testing.assert_allclose(asyncio.run(run()), _whole(model, [_chunks(9, 2)[1]]), atol=1e-5, rtol=1e-5)


def test_a_restarted_directory_learns_again_who_holds_what(model):
    async def run():
        directory, a, b = _replicas()
        directory.register("a", _LiveActor())
        chunks = {sid: _chunks(20 + sid, 3) for sid in range(5)}
        outputs = {sid: [(await _step(a, sid, c[0], start=True)).copy()] for sid, c in chunks.items()}
        a.directory.d = StreamDirectory()  # the directory replica restarted: it knows nothing
        polls = [asyncio.ensure_future(_polling(a.directory, r)) for r in (a, b)]
        await asyncio.sleep(0.05)  # a's next poll is refused: it registers again with its streams
        for sid, c in chunks.items():
            outputs[sid].append((await _step(b, sid, c[1])).copy())  # moved from a, not "unknown"
            outputs[sid].append((await _step(a, sid, c[2])).copy())  # and back
        for p in polls:
            p.cancel()
        return chunks, outputs

    chunks, outputs = asyncio.run(run())
    for sid, c in chunks.items():
        np.testing.assert_allclose(np.concatenate(outputs[sid], axis=1), _whole(model, c), atol=1e-5, rtol=1e-5)


def test_checkpoints_in_a_directory_outlive_a_restart_of_the_stream_directory(model, tmp_path):
    async def run():
        directory, a, b = _replicas(checkpoint_every=2, checkpoint_dir=str(tmp_path))
        directory.register("a", _DeadActor())  # a dies after chunk 3 (its checkpoint is after chunk 2)
        chunks = _chunks(11, 5)
        outputs = [(await _step(a, 5, chunks[0], start=True)).copy()]
        for k in (1, 2):
            outputs.append((await _step(a, 5, chunks[k])).copy())
        files = sorted(p.name for p in tmp_path.iterdir())
        a.directory.d = StreamDirectory(str(tmp_path))  # the directory restarted too: memory gone, files kept
        try:
            await _step(b, 5, chunks[3])
        except ResumedFromCheckpointError as e:
            failure = e
        del outputs[failure.resumed_after_chunk:]
        for k in range(failure.resumed_after_chunk, 5):
            outputs.append((await _step(b, 5, chunks[k])).copy())
        return files, failure, outputs, chunks

    files, failure, outputs, chunks = asyncio.run(run())
    assert len(files) == 1 and files[0].endswith(".ckpt")
    assert failure.resumed_after_chunk == 2
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), _whole(model, chunks), atol=1e-5, rtol=1e-5)


def test_an_unreadable_checkpoint_file_is_skipped_not_fatal(tmp_path):
    (tmp_path / "0123.ckpt").write_bytes(b"not a header")
    assert StreamDirectory(str(tmp_path)).checkpoints == {}
