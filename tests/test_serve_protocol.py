"""The v2 codec (lstminfer.serve.protocol): decode requests, encode responses, name every problem.

Responses are decoded with tritonclient's own parser, so "a client can read it" is what is tested.
"""
import json

import numpy as np
import pytest

from lstminfer.serve.protocol import (ProtocolError, TensorSpec, check_inputs, check_outputs,
                                      encode_infer_response, model_config, parse_header_length,
                                      parse_infer_request, v2_datatype)

InferResult = pytest.importorskip("tritonclient.http").InferResult

NUMERIC = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]
DTYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def _values(datatype, rng, shape=(2, 3)):
    dtype = np.dtype(DTYPES[datatype])
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def _binary_body(tensors, extra=None):
    """A request with every tensor binary: (body, header length), as tritonclient builds it."""
    header = {"inputs": [{"name": n, "shape": list(v.shape), "datatype": v2_datatype(v.dtype),
                          "parameters": {"binary_data_size": v.nbytes}} for n, v in tensors.items()]}
    header.update(extra or {})
    raw = json.dumps(header).encode()
    return raw + b"".join(v.tobytes() for v in tensors.values()), len(raw)


def _decode(body, header_length, name):
    return InferResult.from_response_body(body, header_length=header_length).as_numpy(name)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_datatype_round_trips_binary_and_json(datatype, rng):
    value = _values(datatype, rng)
    body, length = _binary_body({"t": value})
    request = parse_infer_request(body, length)
    np.testing.assert_array_equal(request.inputs["t"], value)
    assert request.inputs["t"].dtype == value.dtype and request.datatypes["t"] == datatype

    json_body = json.dumps({"inputs": [{"name": "t", "shape": [2, 3], "datatype": datatype,
                                        "data": value.tolist()}]}).encode()
    from_json = parse_infer_request(json_body).inputs["t"]
    np.testing.assert_array_equal(from_json, value)
    assert from_json.dtype == value.dtype

    for binary in (True, False):
        request.binary_by_default = binary
        out, out_length = encode_infer_response("m", request, [("t", value)])
        assert (out_length is not None) == binary
        decoded = _decode(out, out_length, "t")
        np.testing.assert_array_equal(decoded, value)
        assert decoded.dtype == value.dtype


@pytest.mark.parametrize("pad", range(4))
def test_binary_inputs_are_aligned_whatever_the_header_length(pad):
    """Models take their fast path on aligned arrays only (an unaligned feed once changed y's last bit)."""
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = _binary_body({"x": value}, extra={"id": "p" * pad})
    decoded = parse_infer_request(body, length).inputs["x"]
    assert decoded.flags.aligned
    np.testing.assert_array_equal(decoded, value)


def test_bytes_tensors_round_trip():
    value = np.array([[b"ab", b""], [b"xyz", b"\x00q"]], dtype=object)
    raw = b"".join(len(v).to_bytes(4, "little") + v for v in value.reshape(-1))
    header = json.dumps({"inputs": [{"name": "s", "shape": [2, 2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    request = parse_infer_request(header + raw, len(header))
    assert request.inputs["s"].tolist() == value.tolist()
    request.binary_by_default = True
    out, length = encode_infer_response("m", request, [("s", value)])
    assert _decode(out, length, "s").tolist() == value.tolist()
    from_json = parse_infer_request(json.dumps({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                                                             "data": ["hi", "there"]}]}).encode())
    assert from_json.inputs["s"].tolist() == [b"hi", b"there"]


def test_per_output_binary_choice_and_id_are_honoured(rng):
    a, b = rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal(3)
    body = json.dumps({"id": "req-7", "inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32",
                                                   "data": a.reshape(-1).tolist()}],
                       "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}]}).encode()
    request = parse_infer_request(body)
    assert request.outputs == ["b", "a"] and request.binary_outputs == {"b": True}
    out, length = encode_infer_response("m", request, [("b", b), ("a", a)])
    header = json.loads(out[:length])
    assert header["id"] == "req-7" and header["model_name"] == "m"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": b.nbytes}
    assert "data" in header["outputs"][1]
    np.testing.assert_array_equal(_decode(out, length, "b"), b)
    np.testing.assert_array_equal(_decode(out, length, "a"), a)


def _json_request(**tensor):
    return json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2], **tensor}]}).encode()


@pytest.mark.parametrize("body, header_length, words", [
    (b"{not json", None, ["malformed JSON", "request body"]),
    (b"[1, 2]", None, ["JSON object", "list"]),
    (b'{"inputs": []}', None, ["'inputs'", "non-empty"]),
    (_json_request(datatype="FP8"), None, ["unknown datatype", "FP8"]),
    (_json_request(shape=[2, -1]), None, ["'shape'", "non-negative"]),
    (_json_request(shape=[3]), None, ["needs 3 values", "has 2"]),
    (_json_request(datatype="INT8", data=[1, 300]), None, ["out of range", "INT8"]),
    (_json_request(datatype="INT32", data=[1.5, 2]), None, ["INT32", "integers", "1.5"]),
    (_json_request(datatype="BOOL", data=[1, 0]), None, ["BOOL", "true/false"]),
    (_json_request(data=[[1], [2, 3]]), None, ["ragged"]),
    (json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}).encode(), None,
     ["neither 'data'", "binary_data_size"]),
])
def test_malformed_requests_name_the_problem(body, header_length, words):
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, header_length)
    assert info.value.status == 400
    for word in words:
        assert word in info.value.message


def test_binary_sizes_are_checked_against_the_body_and_the_shape():
    value = np.arange(6, dtype=np.float32)
    body, length = _binary_body({"x": value})
    with pytest.raises(ProtocolError, match="add up to 24"):
        parse_infer_request(body + b"\0\0\0\0", length)
    with pytest.raises(ProtocolError, match="runs past"):
        parse_infer_request(body[:-4], length)
    bad = json.dumps({"inputs": [{"name": "x", "shape": [5], "datatype": "FP32",
                                  "parameters": {"binary_data_size": 24}}]}).encode()
    with pytest.raises(ProtocolError, match="needs 20 bytes, binary_data_size is 24"):
        parse_infer_request(bad + value.tobytes(), len(bad))
    with pytest.raises(ProtocolError, match="must be an integer"):
        parse_header_length("twelve", 100)
    with pytest.raises(ProtocolError, match="outside the body"):
        parse_header_length("101", 100)


def test_inputs_and_outputs_are_checked_against_the_model():
    specs = [TensorSpec("x", np.dtype(np.float32), (-1, -1, 2))]
    good = parse_infer_request(json.dumps({"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32",
                                                        "data": [0, 1, 2, 3]}]}).encode())
    assert check_inputs("m", specs, good)["x"].shape == (1, 2, 2)
    for tensor, words in [({"name": "q"}, ["model 'm' has no input 'q'", "inputs: x"]),
                          ({"datatype": "FP64"}, ["expected datatype FP32, got FP64"]),
                          ({"shape": [1, 1, 4]}, ["expected shape [-1, -1, 2]", "got [1, 1, 4]"]),
                          ({"shape": [4]}, ["expected shape", "got [4]"])]:
        body = {"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "data": [0, 1, 2, 3], **tensor}
        with pytest.raises(ProtocolError) as info:
            check_inputs("m", specs, parse_infer_request(json.dumps({"inputs": [body]}).encode()))
        for word in words:
            assert word in info.value.message
    outputs = [TensorSpec("y", np.dtype(np.float32), (-1,))]
    assert check_outputs("m", outputs, good) == ["y"]
    good.outputs = ["z"]
    with pytest.raises(ProtocolError, match="model 'm' has no output 'z' \\(outputs: y\\)"):
        check_outputs("m", outputs, good)


def test_config_has_a_sequence_block_only_for_streamable_models():
    specs = [TensorSpec("x", np.dtype(np.float32), (-1, -1, 2))]
    kwargs = dict(max_streams=8, max_delay_us=100, idle_timeout_s=2.5)
    streaming = model_config("m", specs, specs, {"h": np.zeros((1, 1, 4), np.float32)}, **kwargs)
    assert streaming["sequence_batching"]["max_sequence_idle_microseconds"] == 2_500_000
    assert streaming["sequence_batching"]["state"] == [{"name": "h", "data_type": "TYPE_FP32", "dims": [1, 1, 4]}]
    assert "sequence_batching" not in model_config("m", specs, specs, None, **kwargs)
