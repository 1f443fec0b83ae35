"""A sequence's state over HTTP (GET/PUT/DELETE .../state, POST .../reset), ``GET /metrics`` and the idle
expiry, on a real ``lstminfer serve``: a state moved to another id continues with the same numbers as
the original; reset equals a fresh start; an ended or expired sequence is 404; /metrics carries every
name dashboards rely on, behind the token like every endpoint.
"""
import asyncio
import json
import re
import time

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from test_serve_http import _request, _start, _stop, whole_output  # noqa: E402

MODEL = "adding_lstm"
TOKEN = "state-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRIC_NAMES = ("lstminfer_open_streams", "lstminfer_requests_total", "lstminfer_errors_total",
                "lstminfer_expired_streams_total", "lstminfer_batch_size", "lstminfer_queue_delay_seconds",
                "lstminfer_step_seconds", "lstminfer_bytes_received_total", "lstminfer_bytes_sent_total")


@pytest.fixture(scope="module")
def server():
    proc, url = _start(lstminfer.models.path(MODEL), "--token", TOKEN)
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(lstminfer.models.path(MODEL))



def _chunk(url, sid, x, start=False, end=False):
    """One sequence chunk (JSON tensors): (status, y or the error message)."""
    params = {"sequence_id": sid, "sequence_start": start, "sequence_end": end}
    body = json.dumps({"parameters": params, "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                                          "data": x.ravel().tolist()}]}).encode()
    status, _, answer = _request(f"{url}/v2/models/{MODEL}/infer", "POST", body, {**AUTH, "Content-Type": "application/json"})
    reply = json.loads(answer)
    if status != 200:
        return status, reply["error"]
    y = next(o for o in reply["outputs"] if o["name"] == "y")
    return status, np.asarray(y["data"], np.float32).reshape(y["shape"])


def _sequence_url(url, sid, tail="state"):
    return f"{url}/v2/models/{MODEL}/sequences/{sid}" + (f"/{tail}" if tail else "")


def _metrics(url) -> dict[str, float]:
    status, headers, body = _request(url + "/metrics", headers=AUTH)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def test_a_state_put_into_a_new_id_continues_like_the_original(server, model, rng):
    x = rng.standard_normal((1, 9, 2)).astype(np.float32)
    whole = whole_output(model, x)
    status, first = _chunk(server, 501, x[:, :4], start=True)
    assert status == 200
    np.testing.assert_allclose(first, whole[:, :4], rtol=1e-5, atol=1e-6)

    status, headers, blob = _request(_sequence_url(server, 501), headers=AUTH)
    assert status == 200 and headers["Content-Type"] == "application/octet-stream" and len(blob) > 0
    status, _, answer = _request(_sequence_url(server, "moved-501"), "PUT", blob, AUTH)
    assert status == 201 and json.loads(answer) == {"model": MODEL, "sequence_id": "moved-501", "created": True}
    status, _, answer = _request(_sequence_url(server, "moved-501"), "PUT", blob, AUTH)
    assert status == 200 and json.loads(answer)["created"] is False  # overwritten, not started again

    rest_original, rest_moved = _chunk(server, 501, x[:, 4:])[1], _chunk(server, "moved-501", x[:, 4:])[1]
    np.testing.assert_allclose(rest_original, whole[:, 4:], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rest_moved, rest_original)
    for sid in (501, "moved-501"):
        assert _request(_sequence_url(server, sid), "DELETE", headers=AUTH)[0] == 204


def test_delete_ends_the_sequence_and_then_it_is_unknown(server, rng):
    x = rng.standard_normal((1, 2, 2)).astype(np.float32)
    assert _chunk(server, 502, x, start=True)[0] == 200
    assert _request(_sequence_url(server, 502, tail=None), "DELETE", headers=AUTH)[0] == 204
    status, message = _chunk(server, 502, x)
    assert status == 404 and "502" in message
    for method, tail in (("GET", "state"), ("DELETE", "state"), ("POST", "reset")):
        status, _, answer = _request(_sequence_url(server, 502, tail), method, b"" if method == "POST" else None, AUTH)
        assert status == 404 and "unknown sequence 502" in json.loads(answer)["error"], (method, tail)


def test_reset_equals_a_fresh_start(server, model, rng):
    x = rng.standard_normal((1, 6, 2)).astype(np.float32)
    assert _chunk(server, "r-503", rng.standard_normal((1, 5, 2)).astype(np.float32), start=True)[0] == 200
    assert _request(_sequence_url(server, "r-503", "reset"), "POST", b"", AUTH)[0] == 204
    status, y = _chunk(server, "r-503", x, end=True)
    assert status == 200
    np.testing.assert_allclose(y, whole_output(model, x), rtol=1e-5, atol=1e-6)


def test_bad_state_requests_get_their_error(server):
    cases = [
        (_sequence_url(server, 504), "PUT", b"not a state", 400, "bad"),
        (_sequence_url(server, 504), "PUT", b"", 400, "empty body"),
        (f"{server}/v2/models/nope/sequences/1/state", "GET", None, 404, "unknown model 'nope'"),
        (f"{server}/v2/models/{MODEL}/versions/7/sequences/1/state", "GET", None, 404, "no version '7'"),
        (_sequence_url(server, 99999999999999999999999), "GET", None, 400, "2**64"),
        (_sequence_url(server, 504), "POST", b"", 405, "not allowed"),
    ]
    for url, method, body, want_status, want_text in cases:
        status, _, answer = _request(url, method, body, AUTH)
        assert status == want_status and want_text in json.loads(answer)["error"], (url, method, answer)
    assert _request(_sequence_url(server, 504), headers=AUTH)[0] == 404  # the bad PUT started nothing


def test_metrics_has_every_name_after_traffic_and_needs_the_token(server, rng):
    before = _metrics(server)
    x = rng.standard_normal((1, 3, 2)).astype(np.float32)
    for k in range(3):
        assert _chunk(server, 505, x, start=k == 0, end=k == 2)[0] == 200
    assert _chunk(server, 505, x)[0] == 404
    after = _metrics(server)
    text = _request(server + "/metrics", headers=AUTH)[2].decode()
    for name in METRIC_NAMES:
        assert re.search(rf"^{name}(\{{|_bucket|_count| )", text, re.M), name
    assert after["lstminfer_batch_size_count"] >= before.get("lstminfer_batch_size_count", 0) + 3
    assert after["lstminfer_batch_size_count"] > 0 and after['lstminfer_batch_size_bucket{le="+Inf"}'] > 0
    assert after['lstminfer_requests_total{kind="infer"}'] == before['lstminfer_requests_total{kind="infer"}'] + 4
    assert after['lstminfer_errors_total{kind="infer"}'] == before['lstminfer_errors_total{kind="infer"}'] + 1
    assert after['lstminfer_requests_total{kind="metrics"}'] >= 1
    assert after["lstminfer_bytes_received_total"] > before["lstminfer_bytes_received_total"]
    assert after["lstminfer_bytes_sent_total"] > before["lstminfer_bytes_sent_total"]
    assert f'lstminfer_open_streams{{model="{MODEL}"}}' in after
    status, _, answer = _request(server + "/metrics")
    assert status == 401 and "token" in json.loads(answer)["error"]


def test_an_idle_sequence_expires_and_says_so(rng):
    proc, url = _start(lstminfer.models.path(MODEL), "--idle-timeout", "1", "--token", TOKEN)
    try:
        x = rng.standard_normal((1, 2, 2)).astype(np.float32)
        assert _chunk(url, 506, x, start=True)[0] == 200
        assert _metrics(url)[f'lstminfer_open_streams{{model="{MODEL}"}}'] == 1
        time.sleep(2.5)  # idle 1 s, checked every 0.25 s: expired well before 2.5 s
        status, message = _chunk(url, 506, x)
        assert status == 404 and "expired" in message and "1 s" in message, message
        metrics = _metrics(url)
        assert metrics["lstminfer_expired_streams_total"] == 1
        assert metrics[f'lstminfer_open_streams{{model="{MODEL}"}}'] == 0
    finally:
        assert _stop(proc) == 0


def test_bucket_counts_are_prometheus_le_buckets_whether_observed_one_by_one_or_many(rng):
    from lstminfer.serve.metrics import SECONDS_BUCKETS, BucketCounts

    values = [*SECONDS_BUCKETS, *rng.uniform(0, 12, 200).tolist(), 0.0]  # bounds themselves fall in their bucket
    one, many = BucketCounts(SECONDS_BUCKETS), BucketCounts(SECONDS_BUCKETS)
    for v in values:
        one.observe(v)
    many.observe_many(values)
    assert one.counts == many.counts and sum(one.counts) == len(values)
    assert one.sum == pytest.approx(many.sum) and one.sum == pytest.approx(sum(values))
    for i, bound in enumerate(SECONDS_BUCKETS):  # cumulative count at le=bound: the values <= bound
        assert sum(one.counts[:i + 1]) == sum(v <= bound for v in values)


def test_a_model_that_cannot_stream_has_no_state_endpoints():
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from lstminfer.serve.app import InferenceServer, ServeOptions, load_models

    options = ServeOptions(port=0)
    server = InferenceServer(load_models([lstminfer.models.path(MODEL)], options), options)
    server.sequences.clear()  # as for a model without recurrent state (none is bundled)

    async def ask():
        async with TestClient(TestServer(server.app)) as client:
            response = await client.get(f"/v2/models/{MODEL}/sequences/1/state")
            return response.status, await response.json()

    status, body = asyncio.run(ask())
    assert status == 400 and "cannot stream" in body["error"] and MODEL in body["error"]


def test_websocket_frames_and_their_errors_are_counted(server, rng):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    async def one_good_one_bad():
        ws_url = server.replace("http://", "ws://") + f"/v2/models/{MODEL}/stream"
        async with connect(ws_url, additional_headers=AUTH) as ws:
            json.loads(await ws.recv())  # the stream's description
            await ws.send(rng.standard_normal((2, 2)).astype(np.float32).tobytes())
            assert isinstance(await ws.recv(), bytes)
            await ws.send(b"\x00" * 3)  # not a whole frame of 2 float32 features
            assert "error" in json.loads(await ws.recv())

    before = _metrics(server)
    asyncio.run(one_good_one_bad())
    after = _metrics(server)
    assert after['lstminfer_requests_total{kind="frame"}'] == before['lstminfer_requests_total{kind="frame"}'] + 2
    assert after['lstminfer_errors_total{kind="frame"}'] == before['lstminfer_errors_total{kind="frame"}'] + 1
    assert after["lstminfer_bytes_received_total"] >= before["lstminfer_bytes_received_total"] + 16 + 3
