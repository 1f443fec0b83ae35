"""``lstminfer.client``: the sync and asyncio clients against a real ``lstminfer serve`` (v2 HTTP: infer,
sequences, errors), and the WebSocket stream and state endpoints against a small in-process aiohttp
server on a real socket that speaks the issue's protocol (hello frame, binary chunk -> binary reply,
text v2 body -> text reply, {"error"} for a bad frame, refusals as close codes).
"""
import asyncio
import json
import socket
import threading

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from lstminfer.client import PATHS, AsyncClient, Client, ServerError, ServerUnreachableError  # noqa: E402
from lstminfer.errors import InvalidArgumentError, LstminferError  # noqa: E402
from test_serve_http import _start, _stop  # noqa: E402

MODEL = "adding_lstm"
TOKEN = "fake-token"


@pytest.fixture(scope="module")
def server():
    proc, url = _start(lstminfer.models.path(MODEL))
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(lstminfer.models.path(MODEL))


def _x(seed, T):
    return np.random.default_rng(seed).standard_normal((1, T, 2)).astype(np.float32)


def _run(model, x):
    return model.run(["y"], {"x": x, "h0": np.zeros((1, 1, 32), np.float32), "c0": np.zeros((1, 1, 32), np.float32)})[0]


# -- sync HTTP against the real server -------------------------------------------------

def test_health_and_metadata(server):
    with Client(server) as client:
        assert client.live() and client.ready()
        assert "sequence" in client.metadata()["extensions"]
        meta = client.model_metadata(MODEL)
        assert [t["name"] for t in meta["inputs"]] == ["x", "h0", "c0"]
        assert "sequence_batching" in client.config(MODEL)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_equals_the_in_process_run(server, model, binary):
    x = _x(1, 9)
    feeds = {"x": x, "h0": np.full((1, 1, 32), 0.1, np.float32), "c0": np.zeros((1, 1, 32), np.float32)}
    want = dict(zip(["y", "h_n"], model.run(["y", "h_n"], feeds)))
    with Client(server) as client:
        got = client.infer(MODEL, feeds, outputs=["y", "h_n"], binary=binary)
        assert set(got) == {"y", "h_n"}
        for name in want:
            assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
        again = client.infer(MODEL, {"x": x}, binary=binary)  # the same kept-alive connection, every output
        assert set(again) == {"y", "h_n", "c_n"}


def test_a_sequence_in_chunks_equals_the_whole_run(server, model):
    x = _x(2, 12)
    with Client(server) as client:
        sequence = client.sequence(MODEL)
        parts = [sequence.step(x[:, 0:5]), sequence.step(x[:, 5:6]), sequence.step(x[:, 6:12], end=True)]
        assert sequence.ended
        np.testing.assert_allclose(np.concatenate(parts, axis=1), _run(model, x), rtol=1e-5, atol=1e-6)
        with pytest.raises(InvalidArgumentError, match="has ended"):
            sequence.step(x[:, :1])
        named = client.sequence(MODEL, sid="named-seq")  # a dict in, a dict out
        out = named.step({"x": x[:, :4]}, end=True)
        np.testing.assert_allclose(out["y"], _run(model, x[:, :4]), rtol=1e-5, atol=1e-6)


def test_server_errors_carry_status_and_message(server):
    with Client(server) as client:
        with pytest.raises(ServerError) as caught:
            client.infer("no_such_model", {"x": _x(3, 2)})
        assert caught.value.status == 404 and "no_such_model" in caught.value.message
        assert isinstance(caught.value, LstminferError)
        with pytest.raises(ServerError) as caught:
            client.infer(MODEL, {"x": _x(3, 2)[0]})  # missing batch axis
        assert caught.value.status == 400
        with pytest.raises(ServerError) as caught:
            client.sequence(MODEL, sid=99).step(_x(3, 2), start=False)  # never started
        assert caught.value.status == 404 and "99" in caught.value.message
        assert client.live()  # the connection survives errors


def test_bad_arguments_are_refused_before_sending():
    with pytest.raises(InvalidArgumentError, match="URL"):
        Client("ftp://host:1")
    with pytest.raises(InvalidArgumentError, match="non-empty dict"):
        Client("http://127.0.0.1:1").infer(MODEL, [1, 2])
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port now
    with pytest.raises(ServerUnreachableError, match=f"127.0.0.1:{port}"):
        Client(f"127.0.0.1:{port}").live()


def test_a_kept_alive_connection_the_server_dropped_is_reopened():
    """A server that closes every connection after one answer (as one does at its keep-alive timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        for _ in range(3):
            connection, _ = listener.accept()
            accepted.append(connection)
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5) as client:
        assert [client.metadata() for _ in range(3)] == [{}, {}, {}]
    thread.join(5)
    listener.close()
    assert len(accepted) == 3


# -- asyncio HTTP against the real server ------------------------------------------------

def test_async_client_matches_the_in_process_run(server, model):
    x = _x(4, 10)

    async def main():
        async with AsyncClient(server) as client:
            assert await client.live() and await client.ready()
            assert (await client.model_metadata(MODEL))["name"] == MODEL
            assert "sequence_batching" in await client.config(MODEL)
            whole = {b: (await client.infer(MODEL, {"x": x}, outputs=["y"], binary=b))["y"] for b in (True, False)}
            sequence = client.sequence(MODEL)
            parts = [await sequence.step(x[:, :3]), await sequence.step(x[:, 3:], end=True)]
            with pytest.raises(ServerError) as caught:
                await client.infer("nope", {"x": x})
            return whole, parts, caught.value

    whole, parts, error = asyncio.run(main())
    want = _run(model, x)
    for got in (whole[True], whole[False], np.concatenate(parts, axis=1)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert error.status == 404 and "nope" in error.message


# -- the WebSocket stream and state endpoints against a fake server ------------------------

HELLO_INPUTS = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
HELLO_OUTPUTS = [{"name": "y", "datatype": "FP32", "shape": [-1, 2]},
                 {"name": "z", "datatype": "FP32", "shape": [-1]}]


def test_websocket_stream_and_state_endpoints_of_the_real_server(server, model):
    """The sync WebSocket stream and the state endpoints against `lstminfer serve` itself."""
    x = _x(5, 9)
    expected = _run(model, x)
    with Client(server) as client:
        with client.stream(MODEL) as stream:
            assert [i["name"] for i in stream.inputs] == ["x"] and [o["name"] for o in stream.outputs] == ["y"]
            got = np.concatenate([stream.send(x[0, :4]), stream.send(x[0, 4:])], axis=0)
        np.testing.assert_allclose(got, expected[0], atol=1e-5, rtol=1e-5)
        seq = client.sequence(MODEL, 77)
        first = seq.step(x[:, :5])
        blob = client.get_state(MODEL, 77)
        client.put_state(MODEL, 78, blob)  # a copy continues exactly as the original
        rest_77 = seq.step(x[:, 5:])
        rest_78 = client.sequence(MODEL, 78).step(x[:, 5:], start=False)
        np.testing.assert_allclose(np.concatenate([first, rest_77], axis=1), expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(rest_78, rest_77)
        client.delete(MODEL, 77)
        with pytest.raises(ServerError) as err:
            client.get_state(MODEL, 77)
        assert err.value.status == 404


def _fake_reply(x: np.ndarray, output: str) -> np.ndarray:
    """What the fake model answers: y = 2x, z = row sums (so the client's reshape can be checked)."""
    return x * 2 if output == "y" else x.sum(axis=-1)


class FakeServer:
    """The issue's WebSocket protocol and the state endpoints, on 127.0.0.1 in a thread of its own."""

    def __init__(self):
        self.states: dict[str, bytes] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        app = web.Application()
        app.router.add_get(PATHS["stream"].format(m="{m}"), self.stream)
        state = PATHS["state"].format(m="{m}", sid="{sid}")
        app.router.add_get(state, self.get_state)
        app.router.add_put(state, self.put_state)
        app.router.add_delete(state, self.delete_state)
        app.router.add_post(PATHS["reset"].format(m="{m}", sid="{sid}"), self.reset)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app)
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _seen(self, request: web.Request) -> str:
        self.calls.append((request.method, request.raw_path, request.headers.get("Authorization")))
        return f"{request.match_info['m']}/{request.match_info['sid']}"

    async def get_state(self, request):
        key = self._seen(request)
        if key not in self.states:
            return web.json_response({"error": f"unknown sequence '{key}'"}, status=404)
        return web.Response(body=self.states[key])

    async def put_state(self, request):
        self.states[self._seen(request)] = await request.read()
        return web.Response()

    async def delete_state(self, request):
        key = self._seen(request)
        if self.states.pop(key, None) is None:
            return web.json_response({"error": f"unknown sequence '{key}'"}, status=404)
        return web.Response()

    async def reset(self, request):
        key = self._seen(request)
        self.states[key] = bytes(len(self.states.get(key, b"")))
        return web.Response()

    async def stream(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        model, output = request.match_info["m"], request.query.get("output", "y")
        if model == "full":
            await ws.close(code=1013, message=b"at --max-streams")
            return ws
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            await ws.close(code=1008, message=b"missing or wrong token")
            return ws
        await ws.send_str(json.dumps({"sequence_id": request.query.get("sequence_id", 7), "model": model,
                                      "inputs": HELLO_INPUTS, "outputs": HELLO_OUTPUTS}))
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                if not message.data or len(message.data) % 8:
                    await ws.send_str(json.dumps({"error": f"a chunk is a multiple of 8 bytes, got {len(message.data)}"}))
                    continue
                x = np.frombuffer(message.data, "<f4").reshape(-1, 2)
                await ws.send_bytes(_fake_reply(x, output).astype("<f4").tobytes())
            elif message.type == aiohttp.WSMsgType.TEXT:
                body = json.loads(message.data)
                tensor = body["inputs"][0]
                x = np.array(tensor["data"], np.float32).reshape(tensor["shape"])
                names = [o["name"] for o in body.get("outputs", [{"name": "y"}])]
                outs = [{"name": n, "datatype": "FP32", "shape": list(_fake_reply(x, n).shape),
                         "data": _fake_reply(x, n).reshape(-1).tolist()} for n in names]
                await ws.send_str(json.dumps({"model_name": model, "outputs": outs}))
        return ws


@pytest.fixture(scope="module")
def fake():
    server = FakeServer()
    yield server
    server.stop()


def test_async_stream_sends_chunks_and_requests(fake):
    x = np.random.default_rng(5).standard_normal((6, 2)).astype(np.float32)

    async def main():
        async with AsyncClient(fake.url, token=TOKEN) as client:
            async with client.stream("echo", sequence_id=42) as stream:
                assert stream.sequence_id == "42" and stream.inputs == HELLO_INPUTS and stream.outputs == HELLO_OUTPUTS
                first = await stream.send(x)
                batched = await stream.send(x[None, :2].astype(np.float64))  # a batch axis of 1, cast to FP32
                with pytest.raises(InvalidArgumentError, match=r"\[-1, 2\].*\[6, 3\]"):
                    await stream.send(np.zeros((6, 3), np.float32))
                answered = await stream.request({"x": x[None]}, outputs=["y", "z"])
                after_error = await stream.send(x[:1])
            async with client.stream("echo", output="z") as summed:
                z = await summed.send(x)
            return first, batched, answered, after_error, z

    first, batched, answered, after_error, z = asyncio.run(main())
    np.testing.assert_array_equal(first, x * 2)
    np.testing.assert_array_equal(batched, x[:2] * 2)
    np.testing.assert_array_equal(answered["y"], x[None] * 2)
    np.testing.assert_allclose(answered["z"], x[None].sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(after_error, x[:1] * 2)
    assert z.shape == (6,)
    np.testing.assert_allclose(z, x.sum(-1), rtol=1e-6)


def test_stream_refusals_and_error_frames_raise_server_error(fake):
    async def main():
        errors = []
        async with AsyncClient(fake.url, token=TOKEN) as client:
            for model in ("full",):
                try:
                    async with client.stream(model):
                        pass
                except ServerError as e:
                    errors.append(e)
            async with client.stream("echo") as stream:
                await stream._ws.send_bytes(b"\x00" * 5)  # a bad frame: the server answers {"error"}
                try:
                    await stream._receive(aiohttp.WSMsgType.BINARY)
                except ServerError as e:
                    errors.append(e)
                errors.append(await stream.send(np.ones((1, 2), np.float32)))  # the stream stays usable
        async with AsyncClient(fake.url) as no_token:
            try:
                async with no_token.stream("echo"):
                    pass
            except ServerError as e:
                errors.append(e)
        return errors

    full, bad_frame, still_working, no_token = asyncio.run(main())
    assert full.status == 503 and "1013" in full.message and "max-streams" in full.message
    assert bad_frame.status == 400 and "multiple of 8" in bad_frame.message
    np.testing.assert_array_equal(still_working, np.full((1, 2), 2, np.float32))
    assert no_token.status == 401 and "token" in no_token.message


def test_sync_stream_runs_its_own_loop(fake):
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    with Client(fake.url, token=TOKEN) as client:
        with client.stream("echo") as stream:
            assert stream.sequence_id == 7 and stream.outputs[0]["name"] == "y"
            np.testing.assert_array_equal(stream.send(x), x * 2)
            np.testing.assert_array_equal(stream.request({"x": x[None]})["y"], x[None] * 2)
            with pytest.raises(InvalidArgumentError, match="got float32|FP32"):
                stream.send(np.array([["a", "b"]]))
        with pytest.raises(InvalidArgumentError, match="not open"):
            stream.send(x)
        with pytest.raises(ServerError) as caught:
            client.stream("full").open()
        assert caught.value.status == 503
    assert not [t for t in threading.enumerate() if t.name == "lstminfer-client-stream"]


def test_state_endpoints_sync_and_async(fake):
    blob = bytes(range(200))
    with Client(fake.url, token=TOKEN) as client:
        client.put_state("m", "a/b", blob)  # an id with a slash is quoted into one path segment
        assert client.get_state("m", "a/b") == blob
        client.reset("m", "a/b")
        assert client.get_state("m", "a/b") == bytes(200)
        client.delete("m", "a/b")
        with pytest.raises(ServerError) as caught:
            client.get_state("m", "a/b")
        assert caught.value.status == 404 and "unknown sequence" in caught.value.message
        sequence = client.sequence("m", sid=5)
        client.put_state("m", 5, b"s")
        sequence.end()  # ending a sequence is DELETE on its state
        assert "m/5" not in fake.states and sequence.ended

    async def main():
        async with AsyncClient(fake.url, token=TOKEN) as client:
            await client.put_state("m", 12345678901234567890, blob[::-1])
            got = await client.get_state("m", 12345678901234567890)
            await client.reset("m", 12345678901234567890)
            await client.delete("m", 12345678901234567890)
            return got

    assert asyncio.run(main()) == blob[::-1]
    assert ("PUT", "/v2/models/m/sequences/a%2Fb/state", f"Bearer {TOKEN}") in fake.calls
    assert ("DELETE", "/v2/models/m/sequences/12345678901234567890/state", f"Bearer {TOKEN}") in fake.calls
    assert ("POST", "/v2/models/m/sequences/12345678901234567890/reset", f"Bearer {TOKEN}") in fake.calls


def test_import_lstminfer_does_not_import_the_client():
    import subprocess
    import sys

    code = "import sys, lstminfer; print('lstminfer.client' in sys.modules, 'aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out == ["False", "False"]
    code = "import sys, lstminfer.client; print('aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() == "False"


def test_without_aiohttp_the_async_parts_name_the_extra_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['aiohttp'] = None\n"
            "from lstminfer.client import AsyncClient, Client\n"
            "for make in (lambda: AsyncClient('http://127.0.0.1:1'), lambda: Client('http://127.0.0.1:1').stream('m')):\n"
            "    try:\n        make()\n    except ImportError as e:\n        print(e)\n")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert len(lines) == 2 and all("pip install 'lstminfer[serve]'" in line for line in lines)
