"""``lstminfer serve`` over HTTP: a real server (``python -m lstminfer serve --port 0``) on 127.0.0.1.

tritonclient.http (binary and JSON tensors) must get what ``model.run`` gives in-process; plain
HTTP reads metadata, config and health; every bad request gets ``{"error": ...}`` with its status
and the server keeps serving; a token guards every endpoint; SIGTERM exits 0.
"""
import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
httpclient = pytest.importorskip("tritonclient.http")

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from lstminfer.serve.app import InferenceServer, ServeOptions, load_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "adding_lstm"
MAX_BODY = 8192
TOKEN = "s3cret-token"


def _start(*args: str, env_token: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server; returns (process, URL) once it printed its URL (at most 30 s)."""
    env = {k: v for k, v in os.environ.items() if k != "LSTMINFER_TOKEN"}
    if env_token:
        env["LSTMINFER_TOKEN"] = env_token
    proc = subprocess.Popen([sys.executable, "-m", "lstminfer", "serve", "--port", "0", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        line = proc.stdout.readline() if ready else ""
        if "listening on " in line:
            return proc, line.split("listening on ")[1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.communicate(timeout=5)[1]}")


def whole_output(model, x):
    """The in-process whole-sequence output y of ``x`` (zero initial state): what a served stream must equal."""
    out = model.predict(x=x)
    return out["y"] if isinstance(out, dict) else out


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def server():
    proc, url = _start(lstminfer.models.path(MODEL), f"fc={lstminfer.models.path('forecast_gru')}",
                       "--max-request-bytes", str(MAX_BODY))
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(lstminfer.models.path(MODEL))


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one plain HTTP request; error statuses do not raise."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _client(url: str):
    return httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=10)


def _assert_same(got, want):
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype


def _feeds(rng, t: int = 7) -> dict:
    return {"x": rng.standard_normal((1, t, 2)).astype(np.float32),
            "h0": rng.standard_normal((1, 1, 32)).astype(np.float32),
            "c0": rng.standard_normal((1, 1, 32)).astype(np.float32)}


def test_several_models_each_under_its_name(server, rng):
    forecast = lstminfer.load(lstminfer.models.path("forecast_gru"))
    feeds = {"x": rng.standard_normal((2, 4, 1)).astype(np.float32),
             "h0": rng.standard_normal((1, 2, 32)).astype(np.float32)}
    result = _client(server).infer("fc", _inputs(feeds, binary=True))
    for name, want in zip(forecast.output_names, forecast.run(None, feeds)):
        _assert_same(result.as_numpy(name), want)
    meta = json.loads(_request(server + "/v2/models/fc")[2])
    assert meta["name"] == "fc" and [i["name"] for i in meta["inputs"]] == ["x", "h0"]


def _inputs(feeds: dict, binary: bool) -> list:
    inputs = []
    for name, value in feeds.items():
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_tritonclient_binary_infer_equals_model_run(server, model, rng):
    feeds = _feeds(rng)
    expected = model.run(None, feeds)
    for version in ("", "1"):  # /v2/models/m/infer and /v2/models/m/versions/1/infer
        result = _client(server).infer(MODEL, _inputs(feeds, binary=True), model_version=version)  # all binary
        assert result.get_response()["model_name"] == MODEL
        for name, want in zip(model.output_names, expected):
            _assert_same(result.as_numpy(name), want)


def test_tritonclient_json_infer_equals_model_run_with_zero_state(server, model, rng):
    x = _feeds(rng, t=5)["x"]
    zeros = np.zeros((1, 1, 32), np.float32)
    expected = dict(zip(model.output_names, model.run(None, {"x": x, "h0": zeros, "c0": zeros})))
    outputs = [httpclient.InferRequestedOutput("y", binary_data=False),
               httpclient.InferRequestedOutput("c_n", binary_data=True)]
    result = _client(server).infer(MODEL, _inputs({"x": x}, binary=False), outputs=outputs, request_id="r1")
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["y", "c_n"] and response["id"] == "r1"
    assert "data" in response["outputs"][0] and "binary_data_size" in response["outputs"][1]["parameters"]
    _assert_same(result.as_numpy("y"), expected["y"])
    _assert_same(result.as_numpy("c_n"), expected["c_n"])


def test_metadata_config_and_health_over_plain_http(server):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready",
                 f"/v2/models/{MODEL}/versions/1/ready"):
        assert _request(server + path)[0] == 200, path
    status, _, body = _request(server + "/v2")
    meta = json.loads(body)
    assert status == 200 and meta["name"] == "lstminfer"
    assert {"binary_tensor_data", "sequence"} <= set(meta["extensions"])
    status, _, body = _request(server + f"/v2/models/{MODEL}")
    meta = json.loads(body)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, -1, 2]}
    assert [o["name"] for o in meta["outputs"]] == ["y", "h_n", "c_n"]
    config = json.loads(_request(server + f"/v2/models/{MODEL}/config")[2])
    assert config["name"] == MODEL and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 300_000_000
    assert {s["name"] for s in config["sequence_batching"]["state"]} == {"h_n", "c_n"}
    client = _client(server)
    assert client.is_server_live() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["inputs"] == meta["inputs"]


def _infer_body(**tensor) -> bytes:
    x = {"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "data": [0.1, 1, 0.2, 0], **tensor}
    return json.dumps({"inputs": [x]}).encode()


def _binary_infer(declared: int, sent: int, length_header: str | None = None) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    return header + bytes(sent), {"Inference-Header-Content-Length": length_header or str(len(header))}


INFER = f"/v2/models/{MODEL}/infer"
BAD_REQUESTS = [
    # (name, method, path, body, headers, status, words in the error)
    ("unknown model", "POST", "/v2/models/nope/infer", _infer_body(), {}, 404, ["unknown model 'nope'", MODEL]),
    ("unknown model metadata", "GET", "/v2/models/nope", None, {}, 404, ["unknown model 'nope'"]),
    ("unknown version", "POST", f"/v2/models/{MODEL}/versions/7/infer", _infer_body(), {}, 404, ["version '7'"]),
    ("wrong input name", "POST", INFER, _infer_body(name="q"), {}, 400, ["no input 'q'", "inputs: x, h0, c0"]),
    ("wrong dtype", "POST", INFER, _infer_body(datatype="FP64"), {}, 400, ["expected datatype FP32, got FP64"]),
    ("wrong shape", "POST", INFER, _infer_body(shape=[1, 1, 4]), {}, 400, ["expected shape [-1, -1, 2]", "[1, 1, 4]"]),
    ("wrong value count", "POST", INFER, _infer_body(shape=[1, 3, 2]), {}, 400, ["needs 6 values", "has 4"]),
    ("wrong byte count", "POST", INFER, *_binary_infer(12, 12), 400, ["needs 16 bytes", "binary_data_size is 12"]),
    ("body past the sizes", "POST", INFER, *_binary_infer(16, 20), 400, ["20 bytes after", "add up to 16"]),
    ("malformed JSON", "POST", INFER, b'{"inputs": [', {}, 400, ["malformed JSON"]),
    ("malformed binary header", "POST", INFER, *_binary_infer(16, 16, "x1"), 400,
     ["Inference-Header-Content-Length", "integer"]),
    ("binary header past the body", "POST", INFER, *_binary_infer(16, 16, "9999"), 400, ["outside the body"]),
    ("unknown output", "POST", INFER,
     json.dumps({"inputs": json.loads(_infer_body())["inputs"], "outputs": [{"name": "z"}]}).encode(), {}, 400,
     ["no output 'z'", "outputs: y, h_n, c_n"]),
    ("too large", "POST", INFER, b" " * (MAX_BODY + 1), {}, 413, [str(MAX_BODY), "--max-request-bytes"]),
    ("unknown path", "GET", "/v2/nothing/here", None, {}, 404, ["/v2/nothing/here"]),
    ("wrong method", "GET", INFER, None, {}, 405, ["GET", "POST"]),
    ("unknown sequence", "POST", INFER,
     json.dumps({"inputs": json.loads(_infer_body())["inputs"], "parameters": {"sequence_id": 5}}).encode(), {},
     404, ["unknown sequence 5", "never started, or ended"]),
]


@pytest.mark.parametrize("name, method, path, body, headers, status, words", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_named_error_and_the_server_keeps_serving(server, name, method, path, body, headers,
                                                                      status, words):
    got, response_headers, answer = _request(server + path, method, body, headers)
    assert got == status, answer
    assert response_headers["Content-Type"].startswith("application/json")
    message = json.loads(answer)["error"]
    for word in words:
        assert word in message
    assert "Traceback" not in message
    assert _request(server + "/v2/health/live")[0] == 200


def test_token_is_required_then_accepted_and_sigterm_exits_0(rng, model):
    proc, url = _start(env_token=TOKEN)
    try:
        for headers, status in [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                ({"Authorization": f"Bearer {TOKEN}"}, 200)]:
            got, _, answer = _request(url + "/v2/health/live", headers=headers)
            assert got == status, answer
            if status == 401:
                assert "Authorization: Bearer" in json.loads(answer)["error"]
        feeds = _feeds(rng, t=3)
        result = _client(url).infer(MODEL, _inputs(feeds, binary=True),
                                    headers={"Authorization": f"Bearer {TOKEN}"})
        _assert_same(result.as_numpy("y"), model.run(["y"], feeds)[0])
        started = time.monotonic()
        assert _stop(proc) == 0
        assert time.monotonic() - started < 5
        assert "stopped" in proc.stderr.read()
    finally:
        _stop(proc)


def test_binding_beyond_loopback_without_a_token_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "LSTMINFER_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "lstminfer", "serve", "--host", "0.0.0.0", "--port", "0"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "0.0.0.0" in result.stderr and "token" in result.stderr and "LSTMINFER_TOKEN" in result.stderr


def test_an_unknown_model_file_is_an_error_at_start():
    result = subprocess.run([sys.executable, "-m", "lstminfer", "serve", "/nonexistent/m.onnx", "--port", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "/nonexistent/m.onnx" in result.stderr and "Traceback" not in result.stderr


@contextlib.contextmanager
def _server_log_errors():
    """The server's ERROR records, whatever logging state earlier tests left (disabled loggers, levels)."""
    logger, records = logging.getLogger("lstminfer.serve"), []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    saved = logger.disabled, logger.level, logging.root.manager.disable
    logger.disabled = False
    logger.setLevel(logging.ERROR)
    logging.disable(logging.NOTSET)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.disabled = saved[0]
        logger.setLevel(saved[1])
        logging.disable(saved[2])


def test_an_unexpected_exception_is_a_one_line_500_and_the_server_keeps_serving():
    """In-process (to break the model on purpose), over a real socket."""
    options = ServeOptions(port=0)
    models = load_models([], options)
    server = InferenceServer(models, options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    served = models[MODEL]
    try:
        def broken(names, feeds):
            raise RuntimeError("kernel exploded\nsecond line")

        served.run = broken
        with _server_log_errors() as records:
            status, _, body = _request(url + INFER, "POST", _infer_body())
        assert status == 500
        assert json.loads(body)["error"] == "internal error: RuntimeError: kernel exploded"
        assert len(records) == 1 and "kernel exploded" in records[0].getMessage()
        del served.run
        status, _, body = _request(url + INFER, "POST", _infer_body())
        assert status == 200 and json.loads(body)["outputs"][0]["name"] == "y"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
