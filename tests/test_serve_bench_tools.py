"""The benchmark tools of ``lstminfer serve``: the peer server and the load generator.

A real peer (``benchmarks/serve_peer.py``, onnxruntime behind Starlette/uvicorn) on a free
loopback port, on a tiny time-first LSTM built with ``onnx.helper``; the generator
(``benchmarks/serve_load.py``) drives it for well under a second and every stream's replies
are checked against onnxruntime run on that stream's whole sequence.
"""
from __future__ import annotations

import asyncio
import json
import selectors
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("websockets")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import serve_load  # noqa: E402

FEATURES, HIDDEN = 3, 4
START_TIMEOUT_S = 30.0


def tiny_lstm(path: Path) -> str:
    """x [time, batch, 3], h0/c0 [1, batch, 4] -> y [time, batch, 4], h_n, c_n: one ONNX LSTM node."""
    rng = np.random.default_rng(7)
    w = rng.uniform(-0.5, 0.5, (1, 4 * HIDDEN, FEATURES)).astype(np.float32)
    r = rng.uniform(-0.5, 0.5, (1, 4 * HIDDEN, HIDDEN)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, (1, 8 * HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "h_n", "c_n"], hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["Y", "axis1"], ["y"]),
    ]
    state = ["layers", "batch", HIDDEN]
    graph = helper.make_graph(
        nodes, "tiny_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", FEATURES]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", HIDDEN]),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, "batch", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["time", "batch", HIDDEN]),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("c_n", TensorProto.FLOAT, state)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"), numpy_helper.from_array(b, "B"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return tiny_lstm(tmp_path_factory.mktemp("serve_bench") / "tiny.onnx")


@pytest.fixture(scope="module")
def peer(model_path):
    """The peer on a free port: (base URL, pid); stopped by SIGTERM at the end."""
    proc = subprocess.Popen([sys.executable, str(BENCH / "serve_peer.py"), model_path, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _first_line(proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _first_line(proc: subprocess.Popen) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(START_TIMEOUT_S):
        raise AssertionError(f"peer printed no URL within {START_TIMEOUT_S} s")
    line = proc.stdout.readline().strip()
    if not line.startswith("http://"):
        raise AssertionError(f"peer did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}")
    return line


def whole_sequence(model_path: str, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the whole sequence ``x [T, 3]`` from zero state: y [T, 4]."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    return session.run(["y"], {"x": x[:, None, :], "h0": zeros, "c0": zeros})[0][:, 0, :]


def test_streams_get_one_reply_per_chunk_equal_to_the_whole_sequence(peer, model_path):
    url, pid = peer
    streams, frames = 4, 2
    result = asyncio.run(serve_load.run_load(serve_load.stream_url(url, "tiny"), streams, frames, 10.0, 0.6,
                                             seed=3, server_pid=pid, keep_replies=True))
    per_stream = int(0.6 / (frames * 10.0 / 1000))
    assert result.chunks_sent == streams * per_stream
    assert result.chunks_answered == result.chunks_sent and result.errors == 0, result.first_error
    assert len(result.replies) == streams
    for i, replies in enumerate(result.replies):
        assert len(replies) == per_stream
        chunk = serve_load.chunk_for(i, frames, (FEATURES,), "<f4", 3)
        got = np.frombuffer(b"".join(replies), "<f4").reshape(per_stream * frames, HIDDEN)
        expected = whole_sequence(model_path, np.tile(chunk, (per_stream, 1)))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    summary = result.summary()
    for key in ("streams", "p50_ms", "p99_ms", "max_ms", "chunks_per_s", "held", "late_sends",
                "server_cpu_us_per_chunk", "client_cpu_util"):
        assert key in summary, key
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert summary["server_cpu_us_per_chunk"] is not None and summary["server_cpu_us_per_chunk"] >= 0
    json.dumps(summary)  # the report is one JSON line


def test_streams_differ_so_that_mixed_up_replies_would_show(peer):
    a = serve_load.chunk_for(0, 2, (FEATURES,), "<f4", 3)
    b = serve_load.chunk_for(1, 2, (FEATURES,), "<f4", 3)
    assert not np.array_equal(a, b)


def test_peer_answers_a_bad_chunk_with_an_error_and_keeps_the_stream(peer, model_path):
    from websockets.asyncio.client import connect

    url, _ = peer

    async def talk():
        async with connect(serve_load.stream_url(url, "tiny"), compression=None) as ws:
            header = json.loads(await ws.recv())
            await ws.send(b"\x00" * 5)
            error = json.loads(await ws.recv())
            x = np.ones((3, FEATURES), np.float32)
            await ws.send(x.tobytes())
            return header, error, np.frombuffer(await ws.recv(), "<f4").reshape(3, HIDDEN), x

    header, error, y, x = asyncio.run(talk())
    assert header["model"] == "tiny" and header["inputs"][0]["shape"] == [-1, FEATURES]
    assert header["outputs"][0]["shape"] == [-1, HIDDEN]
    assert "5 bytes" in error["error"] and "12-byte" in error["error"]
    np.testing.assert_allclose(y, whole_sequence(model_path, x), rtol=1e-5, atol=1e-6)


def test_peer_http_infer_keeps_a_sequence(peer, model_path):
    import urllib.request

    url, _ = peer
    x = serve_load.chunk_for(0, 4, (FEATURES,), "<f4", 5)

    def infer(part, **params):
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(part), 1, FEATURES],
                            "data": part.ravel().tolist()}], "parameters": params}
        request = urllib.request.Request(f"{url}/v2/models/tiny/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            out = json.loads(response.read())["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])[:, 0, :]

    first = infer(x[:2], sequence_id=9, sequence_start=True)
    second = infer(x[2:], sequence_id=9, sequence_end=True)
    np.testing.assert_allclose(np.concatenate([first, second]), whole_sequence(model_path, x), rtol=1e-5, atol=1e-6)


def test_round_trip_against_the_echo_server():
    async def measure():
        urls: list[str] = []
        ready = asyncio.Event()
        server = asyncio.ensure_future(serve_load.echo_server("127.0.0.1", 0, FEATURES,
                                                              ready=lambda u: (urls.append(u), ready.set())))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            return await serve_load.round_trip(urls[0], 1, 20, 5.0)
        finally:
            server.cancel()

    rtt = asyncio.run(measure())
    assert rtt["chunks"] == 20 and 0 < rtt["min_ms"] <= rtt["median_ms"] <= rtt["p99_ms"]


def test_interleaved_round_trips_give_a_slower_servers_share():
    """Two echo servers, one answering 2 ms late: measured against the prompt one in alternating
    blocks, its share of the round trip is those 2 ms (give or take the loop's scheduling)."""
    async def slow_echo(host: str, ready) -> None:
        from websockets.asyncio.server import serve

        async def echo(ws) -> None:
            await ws.send(json.dumps({"sequence_id": 0, "model": "slow", "outputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}], "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}]}))
            async for message in ws:
                await asyncio.sleep(0.002)
                await ws.send(message)

        async with serve(echo, host, 0) as server:
            port = server.sockets[0].getsockname()[1]
            ready(f"ws://{host}:{port}/v2/models/slow/stream")
            await asyncio.Future()

    async def measure():
        urls: dict[str, str] = {}
        both = asyncio.Event()

        def got(name):
            return lambda u: (urls.__setitem__(name, u), len(urls) == 2 and both.set())
        servers = [asyncio.ensure_future(serve_load.echo_server("127.0.0.1", 0, FEATURES, ready=got("echo"))),
                   asyncio.ensure_future(slow_echo("127.0.0.1", got("slow")))]
        await asyncio.wait_for(both.wait(), 10)
        try:
            return await serve_load.interleaved_round_trips(urls["slow"], urls["echo"], 1, 40, 10.0, blocks=4)
        finally:
            for server in servers:
                server.cancel()

    rtt = asyncio.run(measure())
    assert rtt["blocks"] == 4 and rtt["server"]["chunks"] == rtt["echo"]["chunks"] == 40
    assert rtt["server"]["median_ms"] > rtt["echo"]["median_ms"] + 1.5
    assert 1.5 < rtt["server_share_ms"] < 10.0


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "ws://example.com/v2/models/m/stream",
                                 "http://192.168.1.2:80"])
def test_generator_refuses_a_host_that_is_not_loopback(url, capsys):
    with pytest.raises(serve_load.LoadError, match="only targets loopback"):
        serve_load.stream_url(url, "m")
    assert serve_load.main([url, "--model", "m", "-n", "1", "--duration", "0.1"]) == 2
    assert "refusing host" in capsys.readouterr().err


def test_generator_accepts_loopback_urls():
    assert serve_load.stream_url("http://127.0.0.1:8000", "m") == "ws://127.0.0.1:8000/v2/models/m/stream"
    assert serve_load.stream_url("ws://localhost:1/v2/models/x/stream", None) == "ws://localhost:1/v2/models/x/stream"
    with pytest.raises(serve_load.LoadError, match="give --model"):
        serve_load.stream_url("http://127.0.0.1:8000", None)


def test_generator_refuses_bad_counts():
    with pytest.raises(serve_load.LoadError, match="streams >= 1"):
        asyncio.run(serve_load.run_load("ws://127.0.0.1:1/v2/models/m/stream", 0, 1, 20.0, 1.0))
    assert serve_load.main(["http://127.0.0.1:1", "--model", "m", "-n", "0"]) == 2


class _Transport:
    def __init__(self):
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _server_frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode, n]) if n < 126 else bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    return head + payload


def test_fast_stream_parses_replies_split_anywhere_and_counts_errors():
    async def scenario():
        transport = _Transport()
        stream = serve_load._FastStream(transport, b"frame", reply_bytes=200, keep=True)
        stream.expected = 3
        for due in (0.0, 0.0, 0.0):
            stream.send(due)
        wire = (_server_frame(b"a" * 200, 0x2) + _server_frame(b"ping", 0x9)
                + _server_frame(b'{"error": "bad chunk"}', 0x1) + _server_frame(b"b" * 200, 0x2))
        for i in range(len(wire)):  # one byte per read: every frame boundary split
            stream.data_received(wire[i:i + 1])
        return transport, stream

    transport, stream = asyncio.run(scenario())
    assert transport.written[:3] == [b"frame"] * 3
    pong = transport.written[3]
    assert pong[0] == 0x8A and pong[1] == 0x80 | 4  # a masked pong of the ping's 4 bytes
    assert stream.replies == [b"a" * 200, b"b" * 200] and len(stream.latencies) == 2
    assert stream.errors == 1 and "bad chunk" in stream.first_error
    assert stream.answered == 3 and stream.done.done()


def test_masked_frame_unmasks_to_the_payload():
    payload = bytes(range(256)) * 3
    frame = serve_load.masked_frame(payload)
    assert frame[0] == 0x82 and frame[1] == 0x80 | 126 and int.from_bytes(frame[2:4], "big") == len(payload)
    mask, body = frame[4:8], frame[8:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload


def test_generator_reports_a_model_the_server_refuses(peer):
    url, _ = peer
    with pytest.raises(serve_load.LoadError, match="no stream opened"):
        asyncio.run(serve_load.run_load(serve_load.stream_url(url, "nope"), 2, 1, 20.0, 0.1))


def test_mean_batch_size_comes_from_the_histogram_totals():
    text = ('# TYPE lstminfer_batch_size histogram\n'
            'lstminfer_batch_size_bucket{model="a",le="1.0"} 2.0\n'
            'lstminfer_batch_size_sum{model="a"} 30.0\nlstminfer_batch_size_count{model="a"} 4.0\n'
            'lstminfer_batch_size_sum{model="b"} 6.0\nlstminfer_batch_size_count{model="b"} 2.0\n'
            'lstminfer_step_seconds_sum 9.0\n')
    assert serve_load.histogram_totals(text) == (36.0, 6.0)
    assert serve_load.metrics_endpoint("ws://127.0.0.1:8000/v2/models/m/stream") == "http://127.0.0.1:8000/metrics"


def test_summary_is_strict_json_when_nothing_was_answered():
    summary = serve_load.LoadResult(streams=1, frames=1, period_ms=20.0, duration_s=1.0).summary()
    assert summary["p99_ms"] is None and summary["held"] is False
    json.loads(json.dumps(summary, allow_nan=False))


def test_search_doubles_up_to_the_cap_when_every_run_holds(peer):
    url, pid = peer
    seen: list[int] = []
    best, runs = asyncio.run(serve_load.search(serve_load.stream_url(url, "tiny"), 1, 20.0, 0.3, start=2,
                                               max_streams=4, tries=3, server_pid=pid,
                                               progress=lambda r: seen.append(r.streams)))
    assert best is not None and best.streams == 4 and best.held
    assert sorted(set(seen)) == [2, 4] and len(runs) == len(seen) <= 6


@pytest.mark.parametrize("capacity", [1, 5, 37, 100, 333, 4096])
def test_the_step_wise_search_finds_the_capacity_within_its_resolution(capacity):
    steps = serve_load.Bisection(start=16, max_streams=4096, resolution=0.05, max_runs=40)
    while (n := steps.next()) is not None:
        steps.record(n, n <= capacity)
    assert steps.best_n <= capacity and capacity - steps.best_n <= max(1, int(steps.best_n * 0.05))


def test_the_step_wise_search_retries_a_burst_and_refuses_a_result_for_another_n():
    """tries=2: one failed run at an N that holds (another job's burst) does not end the doubling."""
    steps = serve_load.Bisection(start=8, max_streams=1024, resolution=0.1, max_runs=40, tries=2)
    bursts = {32}
    asked = []
    while (n := steps.next()) is not None:
        asked.append(n)
        burst = n in bursts
        bursts.discard(n)
        steps.record(n, n <= 200 and not burst)
    assert asked[:5] == [8, 16, 32, 32, 64] and 180 <= steps.best_n <= 200
    with pytest.raises(ValueError, match="asked for"):
        fresh = serve_load.Bisection(start=8)
        fresh.record(9, True)
