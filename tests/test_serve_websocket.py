"""The WebSocket stream of ``lstminfer serve`` (``ws://HOST:PORT/v2/models/{m}/stream``) on a real server.

Binary chunks of varying length and v2 text frames equal the in-process whole-sequence run, for a
batch-first and a time-first model and for 120 concurrent streams each alone; a bad frame gets its
error and leaves the state as it was; a sequence started over HTTP continues over WebSocket; every
refusal accepts the upgrade and closes with its code; a client that drops mid-stream frees its slot.
"""
import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("aiohttp")
websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from test_serve_http import _start, _stop, whole_output  # noqa: E402

MODEL = "adding_lstm"
TOKEN = "ws-token"
TIMEOUT_S = 10


def _time_first_lstm(path, features=3, hidden=4):
    """An ONNX LSTM with its own layout, time first: x [time, batch, 3] -> y [time, batch, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
               for name, shape in (("W", (1, 4 * hidden, features)), ("R", (1, 4 * hidden, hidden)))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=hidden),
             helper.make_node("Squeeze", ["Y", "axes"], ["y"])]
    graph = helper.make_graph(
        nodes, "time_first", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["time", "batch", hidden])],
        [*weights, numpy_helper.from_array(np.array([1], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _stateless(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws_models")
    return {MODEL: lstminfer.models.path(MODEL), "tf": _time_first_lstm(tmp / "tf.onnx"),
            "relu": _stateless(tmp / "relu.onnx")}


@pytest.fixture(scope="module")
def server(paths):
    proc, url = _start(paths[MODEL], f"tf={paths['tf']}", f"relu={paths['relu']}")
    yield url
    assert _stop(proc) == 0


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(lstminfer.models.path(MODEL))


def _ws(url: str, path: str) -> str:
    return url.replace("http://", "ws://", 1) + path



async def _stream(ws, chunks, dtype=np.float32):
    """Each chunk [T, features] as one binary frame; the replies, in order."""
    replies = []
    for chunk in chunks:
        await ws.send(np.ascontiguousarray(chunk).tobytes())
        replies.append(np.frombuffer(await asyncio.wait_for(ws.recv(), TIMEOUT_S), dtype))
    return replies


async def _closed(url, headers=None):
    """(close code, reason) of a connection the server refuses after the upgrade."""
    async with connect(url, additional_headers=headers, open_timeout=TIMEOUT_S) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        return ws.close_code, ws.close_reason


def _split(total, sizes):
    cuts = np.cumsum(sizes)[:-1]
    assert sum(sizes) == total
    return cuts


def test_binary_chunks_of_varying_length_equal_the_whole_run(server, model):
    x = np.random.default_rng(0).standard_normal((1, 20, 2)).astype(np.float32)

    async def run():
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream")) as ws:
            header = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            chunks = np.split(x[0], _split(20, [1, 3, 7, 2, 6, 1]))
            return header, await _stream(ws, chunks)

    header, replies = asyncio.run(run())
    assert header["model"] == MODEL and isinstance(header["sequence_id"], int)
    assert header["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert header["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]
    assert [r.size for r in replies] == [1, 3, 7, 2, 6, 1]
    np.testing.assert_allclose(np.concatenate(replies), whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def test_a_time_first_model_streams_its_frames(server, paths):
    tf_model = lstminfer.load(paths["tf"])
    x = np.random.default_rng(1).standard_normal((9, 1, 3)).astype(np.float32)  # [time, batch, features]

    async def run():
        async with connect(_ws(server, "/v2/models/tf/stream")) as ws:
            header = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            return header, await _stream(ws, np.split(x[:, 0], _split(9, [4, 1, 4])))

    header, replies = asyncio.run(run())
    assert header["inputs"][0]["shape"] == [-1, 3] and header["outputs"][0]["shape"] == [-1, 4]
    expected = np.asarray(tf_model.predict(x=x))[:, 0]  # [time, hidden]
    np.testing.assert_allclose(np.concatenate(replies).reshape(9, 4), expected, rtol=1e-5, atol=1e-6)


def test_many_concurrent_streams_each_equal_its_own_run(server, model):
    count, rng = 120, np.random.default_rng(2)
    inputs = [rng.standard_normal((1, 6, 2)).astype(np.float32) for _ in range(count)]
    sizes = [[1, 5], [2, 2, 2], [3, 3], [6]]

    async def one(i):
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream"), open_timeout=TIMEOUT_S) as ws:
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            return np.concatenate(await _stream(ws, np.split(inputs[i][0], _split(6, sizes[i % 4]))))

    async def run():
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)

    outputs = asyncio.run(run())
    for x, got in zip(inputs, outputs):
        np.testing.assert_allclose(got, whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def _request(x, **extra):
    return json.dumps({"id": "c1", "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                               "data": x.reshape(-1).tolist()}], **extra})


def test_text_frames_are_v2_requests_on_the_same_stream(server, model):
    x = np.random.default_rng(3).standard_normal((1, 5, 2)).astype(np.float32)

    async def run():
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream")) as ws:
            await ws.recv()
            await ws.send(_request(x[:, :2], outputs=[{"name": "y"}]))
            first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            binary = await _stream(ws, [x[0, 2:]])
            return first, binary[0]

    first, rest = asyncio.run(run())
    assert first["id"] == "c1" and first["model_name"] == MODEL
    (y,) = first["outputs"]
    assert y["name"] == "y" and y["shape"] == [1, 2, 1]
    got = np.concatenate([np.array(y["data"], np.float32), rest])
    np.testing.assert_allclose(got, whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def test_a_bad_frame_gets_its_error_and_the_stream_goes_on(server, model):
    x = np.random.default_rng(4).standard_normal((1, 6, 2)).astype(np.float32)
    bad = [(b"\x00" * 12, "8 bytes each), got 12 bytes"), (b"", "got 0 bytes"),
           ("{not json", "JSON"), (_request(x[:, :1], parameters={"sequence_end": True}), "sequence_end"),
           (_request(x[:, :1], parameters={"sequence_id": 5}), "no other sequence_id"),
           (json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1, 2], "data": [1, 2]}]}),
            "expected datatype FP32"),
           (_request(np.zeros((1, 1, 3), np.float32)), "expected shape"),
           (_request(np.zeros((2, 1, 2), np.float32)), "batch"),
           (_request(np.zeros((1, 1, 32), np.float32)).replace('"x"', '"h0"', 1), "only taken with sequence_start")]

    async def run():
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream")) as ws:
            await ws.recv()
            before = await _stream(ws, [x[0, :3]])
            errors = []
            for frame, _ in bad:
                await ws.send(frame)
                errors.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))["error"])
            return errors, before + await _stream(ws, [x[0, 3:]])

    errors, replies = asyncio.run(run())
    for (_, expected), error in zip(bad, errors):
        assert expected in error, error
    np.testing.assert_allclose(np.concatenate(replies), whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def _http_step(url, x, sid, **flags):
    body = _request(x, parameters={"sequence_id": sid, **flags}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=body),
                                timeout=TIMEOUT_S) as response:
        return np.array(json.loads(response.read())["outputs"][0]["data"], np.float32)


def test_attach_to_a_sequence_started_over_http(server, model):
    x = np.random.default_rng(5).standard_normal((1, 7, 2)).astype(np.float32)
    sid = 424242
    first = _http_step(server, x[:, :2], sid, sequence_start=True)

    async def run():
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream?sequence_id={sid}&output=y")) as ws:
            header = json.loads(await ws.recv())
            return header, await _stream(ws, [x[0, 2:4], x[0, 4:5]])

    header, middle = asyncio.run(run())
    assert header["sequence_id"] == sid
    last = _http_step(server, x[:, 5:], sid, sequence_end=True)  # closing the attached socket kept it open
    got = np.concatenate([first, *middle, last])
    np.testing.assert_allclose(got, whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def test_refusals_close_with_their_code(server):
    stream = f"/v2/models/{MODEL}/stream"

    async def run():
        return [await _closed(_ws(server, path)) for path in (
            "/v2/models/nope/stream", stream + "?sequence_id=987654321", "/v2/models/relu/stream",
            stream + "?output=h_n", stream + "?sequence_id=")]

    (unknown_model, unknown_seq, stateless, bad_output, bad_id) = asyncio.run(run())
    assert unknown_model[0] == 4404 and "unknown model 'nope'" in unknown_model[1]
    assert unknown_seq[0] == 4404 and "987654321" in unknown_seq[1]
    assert stateless[0] == 4404 and "cannot stream" in stateless[1]
    assert bad_output[0] == 4400 and "no stream output 'h_n'" in bad_output[1]
    assert bad_id[0] == 4400 and "empty" in bad_id[1]


def test_token_full_server_and_a_dropped_client():
    """--token: 1008 without it; --max-streams 1: 1013 for a second stream, and a client that drops
    mid-stream (no close handshake) frees its slot."""
    proc, url = _start(lstminfer.models.path(MODEL), "--max-streams", "1", "--token", TOKEN)
    stream = _ws(url, f"/v2/models/{MODEL}/stream")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def admitted():
        """A stream admitted once the server has freed the dropped one's slot (at most TIMEOUT_S)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            async with connect(stream, additional_headers=auth) as ws:
                try:
                    header = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                    return header, await _stream(ws, [np.ones((2, 2), np.float32)])
                except ConnectionClosed:
                    if ws.close_code != 1013 or time.monotonic() > deadline:
                        raise
            await asyncio.sleep(0.05)

    async def run():
        missing = await _closed(stream)
        wrong = await _closed(stream, {"Authorization": "Bearer nope"})
        async with connect(stream, additional_headers=auth) as first:
            await first.recv()
            full = await _closed(stream, auth)
            await first.send(np.ones((3, 2), np.float32).tobytes())
            first.transport.abort()  # gone mid-chunk, without a close frame
        return missing, wrong, full, await admitted()

    try:
        missing, wrong, full, (header, replies) = asyncio.run(run())
        with pytest.raises(urllib.error.HTTPError) as err:  # the stream's exemption is not the other endpoints'
            urllib.request.urlopen(f"{url}/v2/models/{MODEL}", timeout=TIMEOUT_S)
        assert err.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as err:  # plain HTTP on the stream path: told what it is
            urllib.request.urlopen(f"{url}/v2/models/{MODEL}/stream", timeout=TIMEOUT_S)
        assert err.value.code == 400 and "WebSocket endpoint" in json.loads(err.value.read())["error"]
    finally:
        assert _stop(proc) == 0
    assert missing[0] == 1008 and "token" in missing[1]
    assert wrong[0] == 1008
    assert full[0] == 1013 and "slots" in full[1]
    assert header["model"] == MODEL and replies[0].shape == (2,)


def test_shutdown_closes_streams_1001_and_keeps_them_for_the_restart(model, tmp_path):
    """SIGTERM closes every stream with 1001 without ending it: --state-dir saves it, and after the
    restart a client attaches by the header's sequence_id and continues with the same numbers."""
    x = np.random.default_rng(6).standard_normal((1, 5, 2)).astype(np.float32)
    state_dir = str(tmp_path / "state")
    proc, url = _start(lstminfer.models.path(MODEL), "--state-dir", state_dir)

    async def before_stop():
        ws = await connect(_ws(url, f"/v2/models/{MODEL}/stream"))
        header = json.loads(await ws.recv())
        first = await _stream(ws, [x[0, :3]])
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        return header["sequence_id"], first, ws.close_code

    try:
        sid, first, code = asyncio.run(before_stop())
    finally:
        assert _stop(proc) == 0
    assert code == 1001 and 0 <= sid < 2 ** 53
    proc, url = _start(lstminfer.models.path(MODEL), "--state-dir", state_dir)

    async def after_restart():
        async with connect(_ws(url, f"/v2/models/{MODEL}/stream?sequence_id={sid}")) as ws:
            await ws.recv()
            return await _stream(ws, [x[0, 3:]])

    try:
        rest = asyncio.run(after_restart())
    finally:
        assert _stop(proc) == 0
    np.testing.assert_allclose(np.concatenate(first + rest), whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def test_frames_are_moved_into_a_layout_where_time_is_not_the_first_axis():
    """[batch, features, time] (no bundled model has it): the bytes [T, features] are transposed in, and
    an output [batch, hidden, time] comes back as [T, hidden]."""
    from lstminfer.serve.protocol import TensorSpec
    from lstminfer.serve.websocket import StreamLayout

    spec = TensorSpec("x", np.dtype(np.float32), (-1, 3, -1))
    layout = StreamLayout(spec, (3,), (0, 2, 1), None, 12, {"y": (0, 2)}, [], [])
    frames = np.arange(12, dtype=np.float32).reshape(4, 3)  # T=4
    chunk = layout.chunk(frames.tobytes())
    np.testing.assert_array_equal(chunk, frames.T[None])
    y = np.arange(8, dtype=np.float32).reshape(1, 2, 4)
    np.testing.assert_array_equal(np.frombuffer(layout.reply("y", y), np.float32).reshape(4, 2), y[0].T)


@pytest.mark.parametrize("chunk_shape, time_at", [((1, -1, 3), 1), ((-1, 1, 3), 0)])
def test_a_connections_chunk_reader_views_every_length_and_refuses_a_partial_frame(chunk_shape, time_at):
    """The per-connection reader (one array over the payload, shapes kept per payload size) gives what
    ``StreamLayout.chunk`` gives for 100 lengths (past its 64 kept shapes), and refuses what it refuses."""
    from lstminfer.serve.protocol import ProtocolError, TensorSpec
    from lstminfer.serve.websocket import StreamLayout

    spec = TensorSpec("x", np.dtype(np.float32), chunk_shape)
    layout = StreamLayout(spec, (3,), (0, 1, 2) if time_at else (1, 0, 2), chunk_shape, 12, {}, [], [])
    read = layout.chunk_reader()
    rng = np.random.default_rng(5)
    for t in list(range(1, 101)) + [7, 1, 100]:
        payload = bytearray(rng.standard_normal((t, 3)).astype(np.float32).tobytes())
        chunk = read(payload)
        want = layout.chunk(bytes(payload))
        assert chunk.shape == want.shape and chunk.shape[time_at] == t and chunk.dtype is spec.dtype
        np.testing.assert_array_equal(chunk, want)
        payload[:4] = np.float32(123.5).tobytes()  # a view over the payload, not a copy
        assert chunk.reshape(-1)[0] == np.float32(123.5)
    for size in (0, 11, 13, 40):
        with pytest.raises(ProtocolError, match=f"got {size} bytes"):
            read(bytearray(size))


def test_pipelined_fragmented_pinged_then_closed_by_the_client(server, model):
    """The callback path's protocol: chunks sent without waiting are answered in order, a fragmented
    chunk is one chunk, a ping gets its pong between them, and the client's close code comes back."""
    x = np.random.default_rng(8).standard_normal((1, 9, 2)).astype(np.float32)

    async def run():
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream")) as ws:
            await ws.recv()
            for chunk in np.split(x[0, :6], [2, 3]):
                await ws.send(chunk.tobytes())
            pong = await ws.ping(b"are you there")
            await ws.send([x[0, 6:7].tobytes(), x[0, 7:9].tobytes()])  # one message in two fragments
            replies = [np.frombuffer(await asyncio.wait_for(ws.recv(), TIMEOUT_S), np.float32) for _ in range(4)]
            await asyncio.wait_for(pong, TIMEOUT_S)
            await ws.close(code=4321, reason="done")
            return replies, ws.close_code

    replies, code = asyncio.run(run())
    assert [r.size for r in replies] == [2, 1, 3, 3] and code == 4321
    np.testing.assert_allclose(np.concatenate(replies), whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-6)


def test_an_unmasked_client_frame_closes_with_1002(server):
    """RFC 6455 5.1: a server closes on an unmasked client frame (raw socket: clients always mask)."""
    import base64
    import os
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT_S) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /v2/models/{MODEL}/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(4096)
        head, rest = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(b"\x82\x08" + np.zeros(2, np.float32).tobytes())  # no mask bit
        while True:
            more = sock.recv(4096)
            if not more:
                break
            rest += more
    frames = []
    while rest:  # the header (text), then the close
        length, start = rest[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(rest[2:4], "big"), 4
        frames.append((rest[0] & 0x0F, rest[start:start + length]))
        rest = rest[start + length:]
    assert frames[-1][0] == 0x8 and int.from_bytes(frames[-1][1][:2], "big") == 1002
    assert b"masked" in frames[-1][1]


def test_a_client_far_ahead_of_its_replies_gets_them_all_in_order(server, model):
    """500 chunks sent without waiting while replies are read slowly: the server pauses reading while
    64 messages wait (and stepping while its write buffer is full), then resumes; nothing is lost."""
    x = np.random.default_rng(9).standard_normal((1, 500, 2)).astype(np.float32)

    async def run():
        async with connect(_ws(server, f"/v2/models/{MODEL}/stream")) as ws:
            await ws.recv()

            async def send_all():
                for t in range(500):
                    await ws.send(x[0, t:t + 1].tobytes())

            async def read_all():
                replies = []
                for i in range(500):
                    if i % 100 == 0:
                        await asyncio.sleep(0.05)  # fall behind: the server's queue fills
                    replies.append(np.frombuffer(await asyncio.wait_for(ws.recv(), TIMEOUT_S), np.float32))
                return replies

            _, replies = await asyncio.gather(send_all(), read_all())
            return replies

    replies = asyncio.run(run())
    np.testing.assert_allclose(np.concatenate(replies), whole_output(model, x).reshape(-1), rtol=1e-5, atol=1e-5)


def test_the_connection_pauses_reading_while_64_messages_wait_and_resumes_after():
    """StreamConnection alone (a fake transport and manager): one chunk in flight, 100 more arrive in one
    read -> reading pauses; answering them resumes it once 8 or fewer wait; replies keep the order."""
    import os

    from lstminfer.serve.stream_connection import StreamConnection

    class Transport:
        def __init__(self):
            self.written, self.paused, self.pauses = [], False, 0

        def write(self, data):
            self.written.append(bytes(data))

        def pause_reading(self):
            self.paused, self.pauses = True, self.pauses + 1

        def resume_reading(self):
            self.paused = False

    class Manager:
        def __init__(self):
            self.waiting = []

        def submit(self, sid, chunk, waiter):
            self.waiting.append((chunk, waiter))

    def frame(payload):
        key = os.urandom(4)
        return bytes([0x82, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    async def run():
        transport, manager = Transport(), Manager()
        connection = StreamConnection(
            transport, manager, 7, max_size=1024, close_wait_s=1.0, on_binary=bytes, on_reply=lambda y: y,
            on_text=None, on_error=lambda e, n: (None, str(e)), count_frame=lambda a, b: None, lost=lambda e: None)
        connection.data_received(b"".join(frame(bytes([i])) for i in range(101)))
        assert len(manager.waiting) == 1 and transport.paused  # one in flight, 100 waiting
        answered = 0
        while manager.waiting:
            chunk, waiter = manager.waiting.pop()
            waiter.set_result(chunk)  # the batcher's delivery; the connection submits its next
            answered += 1
            if answered == 100 - 64:
                assert transport.paused  # still more than 8 waiting
        assert not transport.paused and transport.pauses == 1
        return transport.written

    written = asyncio.run(run())
    assert written == [b"\x82\x01" + bytes([i]) for i in range(101)]
