"""The sequence manager and batcher of ``lstminfer serve`` (no transport): asyncio via ``asyncio.run``."""
import asyncio
import random
import threading
import time

import numpy as np
import pytest

import lstminfer
import lstminfer.models
from lstminfer.serve.sequences import (BadChunkError, BadSequenceIdError, BadStateError, DrainingError,
                                       ExpiredSequenceError, PoolFullError, SequenceExistsError, SequenceManager,
                                       ServeError, TooManyQueuedError, UnknownSequenceError, check_sequence_id,
                                       parse_sequence_id, sequence_id_of, state_file_name)


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(lstminfer.models.path("adding_lstm"))


def whole_run(model, x):
    return model.stream().step(x)


def inputs(n, T, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, T, 2)).astype(np.float32) for _ in range(n)]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def spy_steps(manager):
    """Record the streams of every successful pool step (the batcher calls ``pool.step``)."""
    pool, calls = manager.pool, []
    original = pool.step

    def step(frames):
        out = original(frames)
        calls.append(list(frames))
        return out

    pool.step = step
    return calls


def test_hundreds_of_concurrent_streams_each_equal_its_own_run(model):
    n, T = 200, 9
    xs = inputs(n, T)
    rng = random.Random(1)
    cuts = [[0] + sorted(rng.sample(range(1, T), 3)) + [T] for _ in range(n)]  # chunks of 1..6 steps, own per stream

    async def main():
        manager = SequenceManager(model, n)
        for i in range(n):
            manager.start(i if i % 2 else f"seq-{i}")

        async def run(i):
            sid = i if i % 2 else f"seq-{i}"
            parts = [await manager.step(sid, xs[i][:, a:b]) for a, b in zip(cuts[i], cuts[i][1:])]
            return np.concatenate(parts, axis=1)

        results = await asyncio.gather(*(run(i) for i in range(n)))
        await manager.aclose()
        return results

    results = asyncio.run(main())
    for i in range(n):
        np.testing.assert_allclose(results[i], whole_run(model, xs[i]), atol=1e-6, rtol=1e-5)


def test_concurrent_chunks_of_equal_length_are_stepped_together(model):
    n, T, chunk = 100, 6, 2
    xs = inputs(n, T, seed=2)

    async def main():
        manager = SequenceManager(model, n)
        calls = spy_steps(manager)
        for i in range(n):
            manager.start(i)

        async def run(i):
            return np.concatenate([await manager.step(i, xs[i][:, t:t + chunk]) for t in range(0, T, chunk)], axis=1)

        results = await asyncio.gather(*(run(i) for i in range(n)))
        await manager.aclose()
        return manager, calls, results

    manager, calls, results = asyncio.run(main())
    for i in range(n):
        np.testing.assert_allclose(results[i], whole_run(model, xs[i]), atol=1e-6, rtol=1e-5)
    assert manager.stats.chunks_total == n * T // chunk
    assert manager.stats.mean_batch_size > 1
    assert max(len(c) for c in calls) > 1
    assert len(manager.stats.batch_sizes) == manager.stats.batches_total
    assert all(d >= 0 for d in manager.stats.queue_delays) and manager.stats.step_seconds_total > 0


def test_chunks_of_different_lengths_arriving_together_are_still_batched(model):
    n = 40
    xs = inputs(n, 3, seed=11)

    async def main():
        manager = SequenceManager(model, n, max_delay_us=20_000)  # wide window: all in one batch
        calls = spy_steps(manager)
        for i in range(n):
            manager.start(i)
        # streams 0, 2, 4 ... send 1 step, the others 3 steps
        results = await asyncio.gather(*(manager.step(i, xs[i][:, :1 + 2 * (i % 2)]) for i in range(n)))
        await manager.aclose()
        return results, calls

    results, calls = asyncio.run(main())
    for i in range(n):
        np.testing.assert_allclose(results[i], whole_run(model, xs[i][:, :1 + 2 * (i % 2)]), atol=1e-6)
    assert max(len(c) for c in calls) >= n // 2  # whether the pool takes mixed lengths or not


@pytest.mark.parametrize("inline_below_us", [0, 10 ** 6])
def test_steps_run_off_the_event_loop_unless_predicted_cheaper_than_the_hop(model, inline_below_us):
    x = np.zeros((1, 2, 2), np.float32)

    async def main():
        manager = SequenceManager(model, 2, inline_below_us=inline_below_us)
        pool, threads = manager.pool, []
        original = pool.step
        pool.step = lambda frames: threads.append(threading.get_ident()) or original(frames)
        manager.start(1)
        for _ in range(5):
            await manager.step(1, x)
        await manager.aclose()
        return threads

    threads = asyncio.run(main())
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread  # no cost known yet: the worker thread
    assert all((t == loop_thread) == bool(inline_below_us) for t in threads[1:])


def test_chunks_of_one_stream_run_in_arrival_order_never_two_in_one_step(model):
    (x,), others = inputs(1, 12, seed=3), inputs(5, 12, seed=4)

    async def main():
        manager = SequenceManager(model, 8)
        calls = spy_steps(manager)
        manager.start("a")
        for i in range(5):
            manager.start(i)
        # all chunks of "a" queued at once, interleaved with other streams' chunks
        tasks = []
        for t in range(12):
            tasks.append(asyncio.ensure_future(manager.step("a", x[:, t:t + 1])))
            tasks.append(asyncio.ensure_future(manager.step(t % 5, others[t % 5][:, t // 5:t // 5 + 1])))
        results = await asyncio.gather(*tasks)
        await manager.aclose()
        return results[0::2], calls

    parts, calls = asyncio.run(main())
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole_run(model, x), atol=1e-6, rtol=1e-5)
    for frames in calls:
        assert len(frames) == len(set(frames))
    assert sum(len(frames) for frames in calls) == 24


def test_a_bad_chunk_fails_only_its_own_caller(model):
    xs = inputs(6, 4, seed=5)

    async def main():
        manager = SequenceManager(model, 8, max_delay_us=20_000)  # wide window: all in one batch
        for i in range(6):
            manager.start(i)
        manager.start("bad")
        steps = [manager.step(i, xs[i][:, :2]) for i in range(6)]
        steps.append(manager.step("bad", np.zeros((1, 2, 5), np.float32)))  # 5 features, not 2
        results = await asyncio.gather(*steps, return_exceptions=True)
        after = await manager.step("bad", xs[0][:, :2])  # its state was not touched
        rest = await asyncio.gather(*(manager.step(i, xs[i][:, 2:]) for i in range(6)))
        await manager.aclose()
        return results, after, rest

    results, after, rest = asyncio.run(main())
    error = results[-1]
    assert isinstance(error, BadChunkError) and error.status == 400
    assert "'bad'" in str(error) and "2" in str(error) and "5" in str(error)
    np.testing.assert_allclose(after, whole_run(model, xs[0][:, :2]), atol=1e-6)
    for i in range(6):
        np.testing.assert_allclose(np.concatenate([results[i], rest[i]], axis=1), whole_run(model, xs[i]),
                                   atol=1e-6, rtol=1e-5)


def test_lifecycle_errors_name_the_id_and_carry_a_status(model):
    async def main():
        manager = SequenceManager(model, 2)
        manager.start(7)
        with pytest.raises(SequenceExistsError, match="7") as e:
            manager.start(7)
        assert e.value.status == 409
        manager.start("7")  # a string id is another sequence
        with pytest.raises(PoolFullError, match="2 stream slots") as e:
            manager.start(8)
        assert e.value.status == 503 and e.value.retry_after >= 1
        with pytest.raises(UnknownSequenceError, match="'nope'") as e:
            await manager.step("nope", np.zeros((1, 1, 2), np.float32))
        assert e.value.status == 404 and not isinstance(e.value, ExpiredSequenceError)
        assert manager.end(7) is True
        with pytest.raises(UnknownSequenceError, match="7"):
            manager.get_state(7)
        assert manager.end(7, missing_ok=True) is False
        manager.start(2 ** 64 - 1)
        for bad in (-1, 2 ** 64, 1.5, True, "", "x" * 200, None):
            with pytest.raises(BadSequenceIdError) as e:
                manager.start(bad)
            assert e.value.status == 400
        with pytest.raises(BadStateError, match="magic"):
            manager.put_state("7", b"not a state")
        await manager.aclose()
        with pytest.raises(DrainingError):
            manager.start(9)

    asyncio.run(main())


def test_too_many_queued_chunks_of_one_stream_are_refused(model):
    async def main():
        manager = SequenceManager(model, 2, max_queued=2, max_delay_us=50_000)
        manager.start(1)
        x = np.zeros((1, 1, 2), np.float32)
        tasks = [asyncio.ensure_future(manager.step(1, x)) for _ in range(4)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await manager.aclose()
        return results

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results[2:]] == ["TooManyQueuedError"] * 2
    assert results[2].status == 429 and "2 chunks queued" in str(results[2])
    assert all(isinstance(r, np.ndarray) for r in results[:2])


def test_idle_streams_expire_with_their_own_message_unless_held(model):
    clock = FakeClock()

    async def main():
        manager = SequenceManager(model, 4, idle_timeout=0.05, clock=clock)
        manager.start("idle")
        manager.start("held")
        manager.hold("held")
        clock.now += 1
        assert manager.expire_idle() == ["idle"]
        with pytest.raises(ExpiredSequenceError, match=r"expired.*0\.05 s") as e:
            await manager.step("idle", np.zeros((1, 1, 2), np.float32))
        assert e.value.status == 404
        with pytest.raises(ExpiredSequenceError, match="expired"):
            manager.get_state("idle")
        manager.release("held")
        assert manager.expire_idle() == []  # its idle time starts at the release
        clock.now += 1
        assert manager.expire_idle() == ["held"]
        manager.start("idle")  # an expired id can start again
        assert manager.stats.expired_total == 2 and len(manager) == len(manager.pool) == 1
        await manager.aclose()

    asyncio.run(main())


def test_the_background_task_expires_idle_streams(model):
    async def main():
        manager = SequenceManager(model, 4, idle_timeout=0.02)
        manager.start(1)
        deadline = time.monotonic() + 5
        while 1 in manager and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await manager.aclose()
        return manager

    manager = asyncio.run(main())
    assert 1 not in manager and manager.stats.expired_total == 1 and len(manager.pool) == 0


@pytest.mark.parametrize("inline_below_us", [0, 50], ids=["worker-thread", "inline-when-cheap"])
def test_end_expiry_and_a_step_of_one_stream_at_once_free_the_slot_exactly_once(model, inline_below_us):
    clock = FakeClock()
    rng = random.Random(7)
    x = np.ones((1, 1, 2), np.float32)

    async def main():
        manager = SequenceManager(model, 4, idle_timeout=1, max_delay_us=0, inline_below_us=inline_below_us,
                                  clock=clock)
        pool, opened, closed = manager.pool, [], []
        original_open, original_close = pool.open, pool.close
        pool.open = lambda state=None: opened.append(original_open(state)) or opened[-1]
        pool.close = lambda pid: closed.append(pid) or original_close(pid)
        outcomes = {"stepped": 0, "refused": 0}
        for i in range(300):
            sid = i % 3
            manager.start(sid)
            if rng.random() < 0.5:
                manager.hold(sid)
            step = asyncio.ensure_future(manager.step(sid, x))
            actions = ["end", "expire", "release", "yield", "yield", "thread"]
            rng.shuffle(actions)
            for action in actions:
                if action == "end":
                    manager.end(sid, missing_ok=True)
                elif action == "expire":
                    clock.now += 10
                    manager.expire_idle()
                elif action == "release":
                    manager.release(sid)
                elif action == "yield":
                    await asyncio.sleep(0)
                else:  # let the worker thread finish a step in flight
                    await asyncio.sleep(0.001)
            try:
                await step
                outcomes["stepped"] += 1
            except UnknownSequenceError:
                outcomes["refused"] += 1
            manager.end(sid, missing_ok=True)
            assert len(manager) == 0
        await manager.drain()
        assert sorted(closed) == sorted(opened) and len(set(closed)) == len(closed) == 300
        assert len(pool) == len(manager) == manager.stats.open_streams == 0
        await manager.aclose()
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes["stepped"] > 0 and outcomes["refused"] > 0  # both orders happened


def test_state_get_put_reset(model):
    x = inputs(1, 6, seed=8)[0]

    async def main():
        manager = SequenceManager(model, 2)
        manager.start(1)
        await manager.step(1, x[:, :3])
        blob = manager.get_state(1)
        assert isinstance(blob, bytes)
        assert manager.put_state("copy", blob) is True
        tail = await manager.step("copy", x[:, 3:])
        manager.reset(1)
        fresh = await manager.step(1, x[:, :3])
        assert manager.put_state(1, blob) is False  # overwrite an open sequence
        again = await manager.step(1, x[:, 3:])
        await manager.aclose()
        return tail, fresh, again

    tail, fresh, again = asyncio.run(main())
    whole = whole_run(model, x)
    np.testing.assert_allclose(tail, whole[:, 3:], atol=1e-6)
    np.testing.assert_allclose(again, whole[:, 3:], atol=1e-6)
    np.testing.assert_allclose(fresh, whole[:, :3], atol=1e-6)


def test_save_all_load_all_round_trip(model, tmp_path):
    ids = [0, 1, "1", "ü/../x", 2 ** 64 - 1, "a" * 128]
    xs = inputs(len(ids), 5, seed=9)

    async def first():
        manager = SequenceManager(model, 8)
        for sid in ids + ["ended"]:
            manager.start(sid)
        heads = await asyncio.gather(*(manager.step(sid, x[:, :2]) for sid, x in zip(ids, xs)))
        (tmp_path / state_file_name("stale")).write_bytes(b"old")
        manager.end("ended")
        await manager.drain()
        written = manager.save_all(tmp_path)
        await manager.aclose()
        return heads, written

    async def second():
        manager = SequenceManager(model, 8)
        result = manager.load_all(tmp_path)
        for sid in ids:  # the very bytes saved: a restart changes no number
            assert manager.get_state(sid) == (tmp_path / state_file_name(sid)).read_bytes()
        tails = await asyncio.gather(*(manager.step(sid, x[:, 2:]) for sid, x in zip(ids, xs)))
        await manager.aclose()
        return result, tails

    heads, written = asyncio.run(first())
    assert len(written) == len(ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(state_file_name(sid) for sid in ids)
    result, tails = asyncio.run(second())
    assert result.failed == [] and sorted(map(repr, result.loaded)) == sorted(map(repr, ids))
    for head, tail, x in zip(heads, tails, xs):
        np.testing.assert_allclose(np.concatenate([head, tail], axis=1), whole_run(model, x), atol=1e-6, rtol=1e-5)


def test_load_all_reports_a_bad_file_and_restores_the_rest(model, tmp_path):
    (tmp_path / state_file_name(3)).write_bytes(b"garbage")
    (tmp_path / "README").write_text("not a state file")
    manager = SequenceManager(model, 2)
    manager.start(5)
    manager.save_all(tmp_path / "good")
    (tmp_path / state_file_name(5)).write_bytes((tmp_path / "good" / state_file_name(5)).read_bytes())
    result = SequenceManager(model, 2).load_all(tmp_path)
    assert result.loaded == [5]
    assert len(result.failed) == 1 and result.failed[0][0].name == "int-3.state" and "magic" in result.failed[0][1]
    assert SequenceManager(model, 2).load_all(tmp_path / "missing") == ([], [])


def test_state_file_names_keep_int_and_string_ids_apart():
    for sid in (0, 18446744073709551615, "0", "A/b\\c:d", "é" * 64, "..", "\ud800"):
        name = state_file_name(sid)
        assert "/" not in name and "\\" not in name and len(name) < 255 and name == name.lower()
        back = sequence_id_of(name)
        assert back == sid and type(back) is type(sid)
    assert sequence_id_of(".int-1.state.123.tmp") is None and sequence_id_of("int-01.state") is None
    assert parse_sequence_id("42") == 42 and parse_sequence_id("4x2") == "4x2" and parse_sequence_id("٤") == "٤"
    with pytest.raises(BadSequenceIdError, match="2\\*\\*64"):
        parse_sequence_id("18446744073709551616")
    assert check_sequence_id(np.uint64(5)) == 5 and type(check_sequence_id(np.uint64(5))) is int


def test_drain_finishes_accepted_chunks_then_refuses(model):
    xs = inputs(20, 1, seed=10)

    async def main():
        manager = SequenceManager(model, 20, max_delay_us=10_000)
        for i in range(20):
            manager.start(i)
        tasks = [asyncio.ensure_future(manager.step(i, xs[i])) for i in range(20)]
        await asyncio.sleep(0)  # every step submitted
        await manager.drain()
        assert all(t.done() and not t.exception() for t in tasks)
        with pytest.raises(DrainingError) as e:
            await manager.step(0, xs[0])
        assert e.value.status == 503
        await manager.aclose()

    asyncio.run(main())


def test_errors_are_serve_errors_with_statuses():
    for cls, status in ((UnknownSequenceError, 404), (ExpiredSequenceError, 404), (SequenceExistsError, 409),
                        (PoolFullError, 503), (TooManyQueuedError, 429), (BadChunkError, 400)):
        assert issubclass(cls, ServeError) and issubclass(cls, lstminfer.LstminferError) and cls.status == status


def test_a_server_on_one_core_steps_inline(monkeypatch):
    """One core: the worker thread cannot run beside the loop, so every step runs inline; more: the default."""
    import os

    from lstminfer.serve import batcher

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    one = batcher.inline_below_us_for_this_process()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert batcher.inline_below_us_for_this_process() == batcher.DEFAULT_INLINE_BELOW_US < one
    assert one >= 10 ** 6  # longer than any step: nothing is predicted above it


def test_waiters_that_queue_their_next_chunk_at_once_leave_the_loop_free(model):
    """``submit`` with a waiter object (the WebSocket path): it gets each output, and a waiter that queues
    its next chunk from inside ``set_result`` (steps inline) still lets other tasks run between steps."""
    chunk = np.ones((1, 2, 2), np.float32)

    class Chain:
        def __init__(self, manager, sid, count):
            self.manager, self.sid, self.left, self.outputs = manager, sid, count, []
            self.finished = asyncio.get_running_loop().create_future()

        def done(self):
            return False

        def set_result(self, output):
            self.outputs.append(output)
            self.left -= 1
            if self.left:
                self.manager.submit(self.sid, chunk, self)
            else:
                self.finished.set_result(None)

        def set_exception(self, error):
            self.finished.set_exception(error)

    async def run():
        manager = SequenceManager(model, 2, inline_below_us=10 ** 9, max_delay_us=0)
        manager.start(1)
        chain = Chain(manager, 1, 200)
        manager.submit(1, chunk, chain)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while not chain.finished.done():
                ticks += 1
                await asyncio.sleep(0)

        await asyncio.gather(chain.finished, ticker())
        await manager.aclose()
        return chain.outputs, ticks

    outputs, ticks = asyncio.run(run())
    assert len(outputs) == 200 and ticks >= 150  # the other task ran between (nearly) every two steps
    stream = model.stream()
    expected = [np.asarray(stream.step(chunk)) for _ in range(200)]
    np.testing.assert_allclose(np.stack([np.asarray(o) for o in outputs]), np.stack(expected), rtol=1e-5, atol=1e-6)


def test_a_backlog_is_stepped_max_batch_chunks_at_a_time_in_arrival_order(model):
    """300 streams' chunks queued at once: steps of at most max_batch streams (a step of hundreds costs
    no less per chunk and each new size needs a program), each of a size the pool runs unpadded (44
    ready: 40, then 4), the first-ready streams first; every result equals its stream run alone."""
    n, max_batch = 300, 64
    xs = inputs(n, 1, seed=7)

    async def main():
        manager = SequenceManager(model, n, max_batch=max_batch, inline_below_us=10 ** 9)
        calls = spy_steps(manager)
        for i in range(n):
            manager.start(i)
        results = await asyncio.gather(*(manager.step(i, xs[i]) for i in range(n)))
        await manager.aclose()
        return manager, calls, results

    manager, calls, results = asyncio.run(main())
    assert [len(c) for c in calls] == [64, 64, 64, 64, 40, 4]
    pool_ids = [pid for c in calls for pid in c]
    assert pool_ids == [manager._seqs[i].pool_id for i in range(n)]  # first ready, first stepped
    for i in range(n):
        np.testing.assert_allclose(results[i], whole_run(model, xs[i]), atol=1e-6, rtol=1e-5)
    with pytest.raises(lstminfer.InvalidArgumentError, match="max_batch"):
        SequenceManager(model, 4, max_batch=0)
