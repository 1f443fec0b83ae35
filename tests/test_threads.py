"""Threads and processes: one Model or StreamPool shared by 8 threads gives, bit for bit, what
the same calls give made one after the other; a fork() with kernel worker threads alive leaves
a child that computes correctly. Short runs here; ``benchmarks/soak.py --threads`` runs them long."""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import lstminfer
from workloads import (THREADS, bundled_paths, chunk, feeds, run_shared, thread_jobs, torch_two_layer_lstm,
                       warm_until_compiled)


def _models() -> list[tuple[str, object]]:
    sources = list(bundled_paths().items())[:2]
    exported = torch_two_layer_lstm()
    if exported is not None:
        sources.append(("torch_lstm_2layer", exported))
    return sources


SOURCES = _models()


@pytest.mark.parametrize("backend, threads, calls", [("cython", 1, 400), ("cython", 2, 300), ("numba", 1, 300),
                                                     ("numba", 2, 200), ("reference", 1, 40)])
@pytest.mark.parametrize("name, source", SOURCES, ids=[n for n, _ in SOURCES])
def test_one_model_shared_by_eight_threads_matches_serial_calls(name, source, backend, threads, calls):
    model = lstminfer.load(source, backend=backend, threads=threads)
    failures = run_shared(model, thread_jobs(model, seed=len(name) + threads), calls)
    assert not failures, failures[:5]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name, source", SOURCES, ids=[n for n, _ in SOURCES])
def test_one_stream_pool_shared_by_eight_threads_matches_serial_steps(name, source, threads):
    """Each thread opens, steps (random chunk lengths: one-shape, padded and grouped steps) and
    closes its own streams in one shared pool, keeping every returned row (views of batch
    outputs a later step must not overwrite). Replayed serially, thread after thread, on a
    fresh pool, the same step calls give the same bits."""
    model = lstminfer.load(source, threads=threads)
    pool = model.stream_pool(max_streams=THREADS * 4)
    steps = 150
    logs: list[list[tuple[str, object]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        log = logs[t]
        start.wait()
        try:
            mine = {pool.open(): int(rng.integers(1, 40)) for _ in range(3)}  # id -> steps left
            for _ in range(steps):
                same_length = rng.random() < 0.5
                length = int(rng.integers(1, 5))
                frames = {sid: chunk(pool, rng, length if same_length else int(rng.integers(1, 5))) for sid in mine}
                out = pool.step(frames)
                log.append(("step", [(sid, frames[sid], out[sid]) for sid in frames]))
                for sid in list(mine):  # a stream whose lifetime is over: closed, a new one opened
                    mine[sid] -= 1
                    if mine[sid] == 0:
                        pool.close(sid)
                        del mine[sid]
                        new = pool.open()
                        mine[new] = int(rng.integers(1, 40))
                        log.append(("open", (sid, new)))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads_ = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads_:
        th.start()
    for th in threads_:
        th.join()
    assert not errors, errors[:3]

    for t, log in enumerate(logs):
        replay = model.stream_pool(max_streams=4)
        ids: dict[int, int] = {}
        for kind, what in log:
            if kind == "open":
                old, new = what
                replay.close(ids.pop(old))
                ids[new] = replay.open()
                continue
            for sid, _, _ in what:
                if sid not in ids:
                    ids[sid] = replay.open()
            out = replay.step({ids[sid]: x for sid, x, _ in what})
            for sid, _, got in what:
                np.testing.assert_array_equal(got, out[ids[sid]], err_msg=f"thread {t} stream {sid}")


def test_fork_with_worker_threads_alive_leaves_a_child_that_computes():
    """8 threads keep calling a threads=2 model (its C worker thread busy) while the main thread
    forks; the child runs the model, a stream and a pool and checks them against the parent's
    serial results: its exit code tells. The parent's threads go on unharmed."""
    source = bundled_paths()["adding_lstm"]
    model = lstminfer.load(source, threads=2)
    rng = np.random.default_rng(7)
    job = feeds(model, rng, batch=12, time=5)
    locals_ = [feeds(model, np.random.default_rng(t), batch=8 + t, time=4) for t in range(THREADS)]
    warm_until_compiled(model, [job] + locals_)  # threads=2 at an odd batch: compiled, for stable bits
    expected = model.run(None, job)
    stream_chunks = [chunk(model.stream(), rng, int(n)) for n in rng.integers(1, 6, size=20)]
    warm = model.stream()
    for x in stream_chunks * 3:
        warm.step(x)
    stream = model.stream()
    stream_expected = [stream.step(x) for x in stream_chunks]
    stop = threading.Event()
    failures: list[str] = []

    def busy(t: int) -> None:
        local = locals_[t]
        want = model.run(None, local)
        while not stop.is_set():
            if not all(np.array_equal(g, e) for g, e in zip(model.run(None, local), want)):
                failures.append(f"thread {t}")

    threads = [threading.Thread(target=busy, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                signal.alarm(60)  # a deadlock kills the child: the parent sees a signal, not a 0
                checks = [all(np.array_equal(g, e) for g, e in zip(model.run(None, job), expected))]
                child_stream = model.stream()
                # bits: a chunk length may run the plan in one process and its compiled program in
                # the other, which give the same bits
                checks.append(all(np.array_equal(child_stream.step(x), y)
                                  for x, y in zip(stream_chunks, stream_expected)))
                pool = model.stream_pool(max_streams=16)
                ids = [pool.open() for _ in range(12)]
                out = pool.step({sid: stream_chunks[0] for sid in ids})
                checks.append(all(np.array_equal(out[sid], stream_expected[0]) for sid in ids))
                fresh = lstminfer.load(source, threads=2)  # new worker threads started in the child
                checks.append(all(np.array_equal(g, e) for g, e in zip(fresh.run(None, job), expected)))
                failed = [i for i, passed in enumerate(checks) if not passed]
                code = 10 + failed[0] if failed else 0  # 10 run, 11 stream, 12 pool, 13 a model loaded in the child
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else status}"
    assert os.WEXITSTATUS(status) == 0, "the forked child computed wrong results"
    assert not failures, failures[:5]
    assert all(np.array_equal(g, e) for g, e in zip(model.run(None, job), expected))
