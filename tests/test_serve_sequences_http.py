"""Sequences over HTTP (the v2 sequence extension) on a real ``lstminfer serve``: a stream sent chunk by
chunk with tritonclient equals the whole sequence run in-process; state inputs set the initial state
with sequence_start; lifecycle errors carry their status; SIGTERM with --state-dir saves every open
sequence and a restarted server continues it with the same numbers.
"""
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("aiohttp")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from test_serve_http import _start, _stop, whole_output  # noqa: E402

MODEL = "adding_lstm"


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(lstminfer.models.path(MODEL))



def _sequence(rng, T):
    return rng.standard_normal((1, T, 2)).astype(np.float32)


def _send(client, x, sid, start=False, end=False, binary=True, extra=()):
    given = [httpclient.InferInput("x", list(x.shape), "FP32")]
    given[0].set_data_from_numpy(x, binary_data=binary)
    for name, value in extra:
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        given.append(tensor)
    result = client.infer(MODEL, given, sequence_id=sid, sequence_start=start, sequence_end=end)
    return result.as_numpy("y")


def _in_chunks(client, x, sid, sizes, **kw):
    out, t = [], 0
    for k, size in enumerate(sizes):
        out.append(_send(client, x[:, t:t + size], sid, start=k == 0, end=k == len(sizes) - 1, **kw))
        t += size
    return np.concatenate(out, axis=1)


def test_a_sequence_in_chunks_equals_the_whole_run(model):
    proc, url = _start(lstminfer.models.path(MODEL))
    try:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        rng = np.random.default_rng(0)
        whole = _sequence(rng, 12)
        expected = whole_output(model, whole)
        np.testing.assert_allclose(_in_chunks(client, whole, 7, [1, 3, 5, 3]), expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(_in_chunks(client, whole, "utterance-a", [12], binary=False), expected,
                                   atol=1e-5, rtol=1e-5)
        # state inputs with sequence_start set the initial state
        h0 = rng.standard_normal((1, 1, model.get_inputs()[1].shape[2])).astype(np.float32)
        c0 = rng.standard_normal(h0.shape).astype(np.float32)
        expected = model.run(["y"], {"x": whole, "h0": h0, "c0": c0})[0]
        got = np.concatenate([_send(client, whole[:, :5], 2**64 - 1, start=True, extra=[("h0", h0), ("c0", c0)]),
                              _send(client, whole[:, 5:], 2**64 - 1, end=True)], axis=1)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
        # lifecycle errors, each with its status; the server keeps serving
        _send(client, whole[:, :1], 11, start=True)
        for call, status, words in [
            (lambda: _send(client, whole[:, :1], 11, start=True), 409, ["11"]),
            (lambda: _send(client, whole[:, :1], 12), 404, ["unknown sequence 12"]),
            (lambda: _send(client, whole[:, :1], 11, extra=[("h0", h0), ("c0", c0)]), 400, ["sequence_start"]),
        ]:
            with pytest.raises(InferenceServerException) as err:
                call()
            assert str(status) in str(err.value.status()) and all(w in str(err.value) for w in words), err.value
        _send(client, whole[:, :1], 11, end=True)
        with pytest.raises(InferenceServerException, match="unknown sequence 11"):
            _send(client, whole[:, :1], 11)
    finally:
        assert _stop(proc) == 0


def test_state_dir_keeps_open_sequences_across_a_restart(model, tmp_path):
    rng = np.random.default_rng(1)
    whole = _sequence(rng, 9)
    expected = whole_output(model, whole)
    proc, url = _start(lstminfer.models.path(MODEL), "--state-dir", str(tmp_path))
    try:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        first = _send(client, whole[:, :4], 42, start=True)
        other = _send(client, whole[:, :2], "b", start=True)
    finally:
        assert _stop(proc) == 0
    assert sorted(p.name for p in (tmp_path / MODEL).iterdir()) == ["int-42.state", "str-mi.state"]
    proc, url = _start(lstminfer.models.path(MODEL), "--state-dir", str(tmp_path))
    try:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        rest = _send(client, whole[:, 4:], 42, end=True)
        np.testing.assert_allclose(np.concatenate([first, rest], axis=1), expected, atol=1e-5, rtol=1e-5)
        more = _send(client, whole[:, 2:3], "b", end=True)
        np.testing.assert_allclose(np.concatenate([other, more], axis=1), expected[:, :3], atol=1e-5, rtol=1e-5)
    finally:
        assert _stop(proc) == 0


def test_a_model_that_cannot_stream_refuses_sequence_requests(tmp_path):
    """A stateless-only model answers sequence requests with 400 naming it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    proc, url = _start(str(path))
    try:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, -2, 3]}],
                           "parameters": {"sequence_id": 1, "sequence_start": True}}).encode()
        request = urllib.request.Request(f"{url}/v2/models/relu/infer", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 400 and "cannot stream" in json.loads(err.value.read())["error"]
    finally:
        assert _stop(proc) == 0
