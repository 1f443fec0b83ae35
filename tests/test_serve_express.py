"""The WebSocket stream's express lane (``_runtime.ExpressLane``): whole binary chunks queued, stepped
and answered in C must give every stream exactly what it gets stepped alone, change nothing where the
C step declines, and refuse (leaving it to the Python path) every frame that is not one whole masked
binary chunk. The lane is driven here by hand and through the serve batcher with real
``StreamConnection`` objects on a recording transport; the servers of test_serve_websocket.py run
every binary chunk through it too.
"""
import asyncio
import random
import time
from collections import deque

import numpy as np
import pytest

import lstminfer
import lstminfer.models
from lstminfer.c_runtime import _runtime
from lstminfer.serve.sequences import SequenceManager, UnknownSequenceError
from lstminfer.serve.stream_connection import StreamConnection
from lstminfer.serve.wsframes import OP_BINARY, OP_TEXT
from test_serve_websocket import _time_first_lstm  # x [time, batch, 3] -> y [time, batch, 4]
from test_serve_wsframes import _client_frame  # an encoder independent of the server's codec

pytestmark = pytest.mark.skipif(_runtime is None, reason="the native runtime is not built")


def reply_payload(frame: bytes) -> bytes:
    """The payload of one unmasked server frame."""
    assert frame[0] == 0x82
    n, head = frame[1], 2
    if n == 126:
        n, head = int.from_bytes(frame[2:4], "big"), 4
    assert len(frame) == head + n
    return frame[head:]


@pytest.fixture(scope="module", params=["batch_first", "time_first"])
def case(request, tmp_path_factory):
    """(model, features, chunk [T, F] -> the model's chunk)."""
    if request.param == "batch_first":
        return lstminfer.load(lstminfer.models.path("adding_lstm")), 2, lambda x: x[None]
    path = _time_first_lstm(tmp_path_factory.mktemp("express") / "tf.onnx")
    return lstminfer.load(path), 3, lambda x: x[:, None]


class Connection:
    """What the lane touches of a StreamConnection once its chunks are answered."""

    def __init__(self):
        self._queue, self.nexts = deque(), 0

    def _next(self):
        self.nexts += 1


def run_alone(model, to_model, frames):
    out = model.stream().step(to_model(frames))
    return np.asarray(out).reshape(len(frames), -1)


def test_lane_steps_equal_each_stream_stepped_alone(case):
    model, features, to_model = case
    pool = model.stream_pool(24)
    lane = pool.express_lane(features, time.monotonic)
    assert lane is not None
    rng = random.Random(5)
    n = 20
    ids = [pool.open() for _ in range(n)]
    writes = [[] for _ in range(n)]
    streams = [lane.stream(Connection(), writes[i].append, ids[i], 1 << 20, 8) for i in range(n)]
    sent = [[] for _ in range(n)]
    python_path = [[] for _ in range(n)]
    ran = declined = most_queued = 0
    for _ in range(12):
        for i in rng.choices(range(n), k=rng.randint(1, 2 * n)):  # a stream may queue several chunks
            x = np.random.default_rng(rng.randrange(1 << 30)).standard_normal((rng.randint(1, 3), features))
            x = x.astype(np.float32)
            if streams[i].take(_client_frame(OP_BINARY, x.tobytes())):
                sent[i].append(x)
            else:
                assert streams[i].queued == 8  # its queue is full: the Python path's turn
        most_queued = max([most_queued] + [s.queued for s in streams])
        while lane.waiting_count:
            assert lane.collect(rng.randint(1, n))
            if lane.run() >= 0:
                ran += 1
                lane.deliver()
                continue
            declined += 1
            for s in lane.declined():  # the Python path: the pool's checked step
                i = ids.index(s.pool_id)
                chunk = np.frombuffer(s.payload(), np.float32).reshape(-1, features)
                out = pool.step({s.pool_id: to_model(chunk)})[s.pool_id]
                python_path[i].append(len(writes[i]))
                writes[i].append(b"\x82\x00" + np.ascontiguousarray(out).tobytes())
            lane.finish()
    assert ran and declined  # lengths the pool had not checked went the Python way first
    assert most_queued > 1  # a stream's chunks queued behind one another, one step each
    for i in range(n):
        got = [np.frombuffer(reply_payload(w) if k not in python_path[i] else w[2:], np.float32)
               for k, w in enumerate(writes[i])]
        assert len(got) == len(sent[i])
        np.testing.assert_allclose(np.concatenate(got), run_alone(model, to_model, np.concatenate(sent[i])).ravel(),
                                   rtol=1e-5, atol=1e-6)
        assert streams[i].queued == 0 and streams[i].state == 0


def test_a_declined_step_changes_no_state(case):
    model, features, to_model = case
    pool = model.stream_pool(4)
    lane = pool.express_lane(features, time.monotonic)
    pid = pool.open(model.stream().state)
    before = {k: v.copy() for k, v in pool.state(pid).items()}
    stream = lane.stream(Connection(), [].append, pid, 1 << 20, 4)
    assert stream.take(_client_frame(OP_BINARY, np.ones((2, features), np.float32).tobytes()))
    assert lane.collect(8) == 1 and lane.run() == -1.0  # the pool never checked a chunk of 2 frames
    for key, value in pool.state(pid).items():
        np.testing.assert_array_equal(value, before[key])
    assert [s.pool_id for s in lane.declined()] == [pid] and stream.state == 2
    lane.finish()
    assert stream.state == 0 and stream.queued == 0 and lane.pending(pid) == 0
    other = pool.open()
    for T in (1, 2):  # both lengths checked: alone, each would run in C
        pool.step({other: to_model(np.zeros((T, features), np.float32))})
    assert stream.take(_client_frame(OP_BINARY, np.ones((2, features), np.float32).tobytes()))
    assert lane.stream(Connection(), [].append, other, 1 << 20, 4).take(
        _client_frame(OP_BINARY, np.ones((1, features), np.float32).tobytes()))
    assert lane.collect(8) == 2 and lane.run() == -1.0  # different lengths: one masked step, the Python way
    assert sorted(s.pool_id for s in lane.declined()) == sorted([pid, other])
    lane.finish()
    pool.close(pid)


def test_take_refuses_all_but_one_whole_masked_binary_chunk(case):
    model, features, _ = case
    pool = model.stream_pool(4)
    lane = pool.express_lane(features, time.monotonic)
    pid = pool.open()
    stream = lane.stream(Connection(), [].append, pid, 64 * features, 2)
    chunk = np.ones((2, features), np.float32).tobytes()
    refused = [
        _client_frame(OP_TEXT, chunk),  # text
        _client_frame(OP_BINARY, chunk, masked=False),
        _client_frame(OP_BINARY, chunk, fin=False),  # a fragment
        _client_frame(OP_BINARY, chunk)[:-1],  # cut short
        _client_frame(OP_BINARY, chunk) + _client_frame(OP_BINARY, chunk),  # two frames in one read
        _client_frame(OP_BINARY, chunk[:-4]),  # not whole frames
        _client_frame(OP_BINARY, b""),
        _client_frame(OP_BINARY, np.ones((65, features), np.float32).tobytes()),  # over max_bytes
        bytearray(_client_frame(OP_BINARY, chunk)),
    ]
    for data in refused:
        assert not stream.take(data), data[:4]
    assert lane.waiting_count == 0
    assert stream.take(_client_frame(OP_BINARY, chunk)) and lane.waiting_count == 1
    assert stream.take(_client_frame(OP_BINARY, chunk))
    assert stream.queued == 2 and lane.waiting_count == 1  # one entry per stream
    assert not stream.take(_client_frame(OP_BINARY, chunk))  # its queue is full
    assert lane.cancel(pid) == (stream, [len(chunk)] * 2)
    assert lane.waiting_count == 0 and stream.state == 0 and stream.queued == 0
    lane.accepting = False
    assert not stream.take(_client_frame(OP_BINARY, chunk))
    lane.accepting = True
    stream.gone = True
    assert not stream.take(_client_frame(OP_BINARY, chunk))
    stream.gone = False
    pool.close(pid)
    assert not stream.take(_client_frame(OP_BINARY, chunk))  # its stream is closed: the Python path says so


def test_pending_and_stepping_follow_a_chunk(case):
    model, features, to_model = case
    pool = model.stream_pool(4)
    lane = pool.express_lane(features, time.monotonic)
    a, b = pool.open(), pool.open()
    pool.step({a: to_model(np.zeros((1, features), np.float32))})  # the pool checks chunks of 1 frame
    writes = []
    stream = lane.stream(Connection(), writes.append, b, 1 << 20, 4)
    assert lane.pending(b) == 0
    frame = _client_frame(OP_BINARY, np.zeros((1, features), np.float32).tobytes())
    assert stream.take(frame)
    assert lane.pending(b) == 1 and not lane.stepping(b) and lane.pending(a) == 0
    assert lane.collect(4) == 1 and lane.stepping(b) and lane.in_step == 1
    assert stream.take(frame) and lane.waiting_count == 0  # behind the one in the step
    assert lane.run() >= 0
    replies, received, sent = lane.deliver()
    assert (replies, received) == (1, 4 * features) and sent == len(reply_payload(writes[0]))
    assert lane.in_step == 0 and lane.waiting_count == 1 and stream.state == 1  # the next one waits
    stream.connection._queue.append("a text frame")  # came after: it waits for the lane's chunks
    assert lane.collect(4) == 1 and stream.take(frame)
    assert lane.cancel(b) == (stream, [4 * features])  # the one in the step completes
    assert lane.run() >= 0 and lane.deliver()[0] == 1
    assert lane.pending(b) == 0 and stream.queued == 0 and stream.connection.nexts == 1


# -- through the batcher, with real connections ----------------------------------------------------

class Transport:
    def __init__(self):
        self.written, self.closed = [], False

    def write(self, data):
        self.written.append(bytes(data))

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed


def connect(manager, sid, features, to_model):
    transport = Transport()
    connection = StreamConnection(
        transport, manager, sid, max_size=1 << 20, close_wait_s=1.0,
        on_binary=lambda p: to_model(np.frombuffer(p, np.float32).reshape(-1, features)),
        on_reply=lambda out: np.ascontiguousarray(out).tobytes(), on_text=None,
        on_error=lambda e, n: (None, str(e)), count_frame=lambda r, s: None, lost=lambda exc: None)
    connection.express = manager.express_stream(sid, connection, transport.write, features, 1 << 20,
                                                lambda *counts: None)
    assert connection.express is not None
    return connection, transport


async def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def test_connections_through_the_batcher_equal_each_stream_alone(case):
    model, features, to_model = case
    n, rounds = 12, 6
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((rounds, features)).astype(np.float32) for _ in range(n)]

    async def main():
        manager = SequenceManager(model, n, max_delay_us=0)
        python_steps = []
        original = manager.pool.step
        manager.pool.step = lambda frames: python_steps.append(len(frames)) or original(frames)
        conns = []
        for i in range(n):
            manager.start(i)
            manager.hold(i)
            conns.append(connect(manager, i, features, to_model))
        for r in range(rounds):
            for i, (connection, _) in enumerate(conns):
                connection.data_received(_client_frame(OP_BINARY, xs[i][r:r + 1].tobytes()))
            await until(lambda: all(len(t.written) == r + 1 for _, t in conns))
        await manager.aclose()
        return conns, python_steps

    conns, python_steps = asyncio.run(main())
    for i, (_, transport) in enumerate(conns):
        got = np.concatenate([np.frombuffer(reply_payload(w), np.float32) for w in transport.written])
        np.testing.assert_allclose(got, run_alone(model, to_model, xs[i]).ravel(), rtol=1e-5, atol=1e-6)
    assert sum(python_steps) < n * rounds / 2  # after the first chunks (checked, compiled) the lane steps them


def test_ending_a_sequence_answers_its_waiting_chunk_and_a_lost_connection_gets_nothing(case):
    model, features, to_model = case

    async def main():
        manager = SequenceManager(model, 4, max_delay_us=200_000)  # chunks wait: the end comes first
        for sid in (1, 2, 3):
            manager.start(sid)
            manager.hold(sid)
        (c1, t1), (c2, t2), (c3, t3) = (connect(manager, sid, features, to_model) for sid in (1, 2, 3))
        frame = _client_frame(OP_BINARY, np.ones((1, features), np.float32).tobytes())
        for connection in (c1, c2, c3):
            connection.data_received(frame)
        manager.end(1)
        c2.connection_lost(None)
        await until(lambda: t3.written)
        await manager.aclose()
        return t1, t2, t3, c1, manager

    t1, t2, t3, c1, manager = asyncio.run(main())
    assert len(t1.written) == 1 and b"was ended while this chunk was queued" in t1.written[0]
    assert t2.written == []
    assert len(t3.written) == 1 and t3.written[0][0] == 0x82
    assert not c1.express.take(_client_frame(OP_BINARY, np.ones((1, features), np.float32).tobytes()))
    with pytest.raises(UnknownSequenceError):
        manager.submit(1, None, c1)


def test_a_stream_has_one_chunk_in_the_lane_whoever_sends_it(case):
    model, features, _ = case
    pool = model.stream_pool(4)
    lane = pool.express_lane(features, time.monotonic)
    pid = pool.open()
    first, second = (lane.stream(Connection(), [].append, pid, 1 << 20, 4) for _ in range(2))  # two attached sockets
    frame = _client_frame(OP_BINARY, np.ones((1, features), np.float32).tobytes())
    assert first.take(frame) and not second.take(frame) and first.take(frame)
    assert lane.cancel(pid)[0] is first and second.take(frame)
    lane.cancel(pid)
    lane.python_queued(pid, True)  # the batcher's Python lanes hold a chunk of it: the next ones go there too
    assert not first.take(frame) and lane.pending(pid) == 0
    lane.python_queued(pid, False)
    assert first.take(frame) and lane.pending(pid) == 1


def test_chunks_of_one_stream_from_both_paths_run_in_arrival_order(case):
    """A connection's express chunk, then the same sequence stepped the Python way (HTTP) while an older
    Python chunk of another sequence makes the Python lanes step first, then the connection again:
    three steps of the sequence in arrival order, each equal to the stream stepped alone."""
    model, features, to_model = case
    xs = np.random.default_rng(4).standard_normal((3, features)).astype(np.float32)

    async def main():
        manager = SequenceManager(model, 4, max_delay_us=50_000)  # chunks wait for their step
        for sid in (7, 8):
            manager.start(sid)
        manager.hold(7)
        warm = manager.pool.open()
        manager.pool.step({warm: to_model(xs[:1])})  # chunks of 1 frame checked: the lane may step them
        connection, transport = connect(manager, 7, features, to_model)
        other = asyncio.ensure_future(manager.step(8, to_model(xs[2:3])))
        await asyncio.sleep(0)
        connection.data_received(_client_frame(OP_BINARY, xs[0:1].tobytes()))
        assert manager._batcher.pending(manager._seqs[7].pool_id) == 1
        http = asyncio.ensure_future(manager.step(7, to_model(xs[1:2])))
        await asyncio.sleep(0)
        await until(lambda: len(transport.written) == 1)
        second = await http
        await other
        connection.data_received(_client_frame(OP_BINARY, xs[2:3].tobytes()))
        await until(lambda: len(transport.written) == 2)
        await manager.aclose()
        return transport.written, second

    written, second = asyncio.run(main())
    alone = run_alone(model, to_model, xs)
    np.testing.assert_allclose(np.frombuffer(reply_payload(written[0]), np.float32), alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(second).ravel(), alone[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.frombuffer(reply_payload(written[1]), np.float32), alone[2], rtol=1e-5, atol=1e-6)


def test_pipelined_chunks_and_a_text_frame_between_them_keep_their_order(case):
    """Chunks sent before their replies queue in the lane, one step each; a text frame after them waits
    for their replies, and the chunk after it for its answer."""
    model, features, to_model = case
    xs = np.random.default_rng(6).standard_normal((3, features)).astype(np.float32)

    async def main():
        manager = SequenceManager(model, 4, max_delay_us=0)
        manager.start(3)
        manager.hold(3)
        warm = manager.pool.open()
        manager.pool.step({warm: to_model(xs[:1])})
        connection, transport = connect(manager, 3, features, to_model)
        seen_at_text = []

        async def on_text(payload):
            seen_at_text.append(len(transport.written))
            return b'{"text": true}'

        connection._on_text = on_text
        frames = [_client_frame(OP_BINARY, x[None].tobytes()) for x in xs]
        connection.data_received(frames[0])
        connection.data_received(frames[1])  # queued in the lane behind the first
        assert connection.express.queued == 2
        connection.data_received(_client_frame(OP_TEXT, b'{"inputs": []}'))
        connection.data_received(frames[2])  # behind the text frame: the Python path
        assert connection.express.queued == 2
        await until(lambda: len(transport.written) == 4)
        await manager.aclose()
        return transport.written, seen_at_text

    written, seen_at_text = asyncio.run(main())
    assert seen_at_text == [2] and written[2] == b"\x81\x0e" + b'{"text": true}'
    alone = run_alone(model, to_model, xs)
    got = [np.frombuffer(reply_payload(w), np.float32) for w in written[:2] + written[3:]]
    np.testing.assert_allclose(np.stack(got), alone, rtol=1e-5, atol=1e-6)
