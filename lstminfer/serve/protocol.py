"""The Open Inference Protocol (KServe v2) codec: request bodies in, response bodies out.

Pure functions over bytes, dicts and NumPy arrays; no server library. JSON tensors and the
binary tensor extension (``Inference-Header-Content-Length``, ``binary_data_size``,
``binary_data_output``, ``binary_data``). Every malformed or mismatched request raises
``ProtocolError`` with the HTTP status to answer and a message naming the problem.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import onnx_type_name

MODEL_VERSION = "1"
PLATFORM = "lstminfer_onnx"

# v2 datatype name <-> NumPy dtype (little-endian on the wire)
_V2_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_V2_NAMES = {dtype: name for name, dtype in _V2_DTYPES.items()}
# onnxruntime's type names (NodeArg.type is "tensor(<name>)") -> NumPy dtype
_ORT_DTYPES = {onnx_type_name(dtype): dtype for dtype in _V2_DTYPES.values()}
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "fiu", "O": "OUS"}  # element kinds JSON data may have


class ProtocolError(Exception):
    """A request the protocol answers with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name of a NumPy dtype (strings are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        return _V2_NAMES[dtype.newbyteorder("=")]
    except KeyError:
        raise ProtocolError(500, f"dtype {dtype} has no Open Inference Protocol datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The NumPy dtype of a v2 datatype name."""
    return _V2_DTYPES[datatype]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, NumPy dtype, shape with -1 for every dynamic dim."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return v2_datatype(self.dtype)

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def tensor_specs(node_args) -> list[TensorSpec]:
    """TensorSpecs of ``model.get_inputs()`` / ``get_outputs()`` (onnxruntime-style NodeArgs)."""
    specs = []
    for arg in node_args:
        inner = arg.type[arg.type.find("(") + 1:arg.type.rfind(")")]
        dtype = _ORT_DTYPES.get(inner, np.dtype(object) if inner == "string" else np.dtype(np.float32))
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        specs.append(TensorSpec(arg.name, dtype, shape))
    return specs


# -- metadata -------------------------------------------------------------------

def served_model(models: dict, name: str, version: str | None) -> Any:
    """The model a path names (``/v2/models/{name}[/versions/{version}]``), or a 404 naming what is served."""
    served = models.get(name)
    if served is None:
        raise ProtocolError(404, f"unknown model '{name}' (serving: {', '.join(models)})")
    if version is not None and version != MODEL_VERSION:
        raise ProtocolError(404, f"model '{name}' has no version '{version}' (versions: {MODEL_VERSION})")
    return served


def server_metadata(name: str, version: str, extensions: list[str]) -> dict:
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> dict:
    return {"name": name, "versions": [MODEL_VERSION], "platform": PLATFORM,
            "inputs": [s.metadata() for s in inputs], "outputs": [s.metadata() for s in outputs]}


def model_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 state: dict[str, np.ndarray] | None, *, max_streams: int, max_delay_us: int,
                 idle_timeout_s: float) -> dict:
    """Triton-style model configuration; ``state`` (carried-state key -> initial value) or None when
    the model cannot stream, which leaves out the ``sequence_batching`` block."""
    def entry(spec: TensorSpec) -> dict:
        return {"name": spec.name, "data_type": "TYPE_" + ("STRING" if spec.datatype == "BYTES" else spec.datatype),
                "dims": list(spec.shape)}

    config = {"name": name, "platform": PLATFORM, "backend": "lstminfer", "max_batch_size": 0,
              "input": [entry(s) for s in inputs], "output": [entry(s) for s in outputs],
              "instance_group": [{"kind": "KIND_CPU", "count": 1}],
              "version_policy": {"specific": {"versions": [int(MODEL_VERSION)]}}}
    if state is not None:
        config["sequence_batching"] = {
            "max_sequence_idle_microseconds": int(idle_timeout_s * 1_000_000),
            "max_candidate_sequences": max_streams,
            "direct": {"max_queue_delay_microseconds": max_delay_us},
            "state": [{"name": key, "data_type": "TYPE_" + v2_datatype(value.dtype), "dims": list(value.shape)}
                      for key, value in state.items()],
        }
    return config


# -- requests ---------------------------------------------------------------------

@dataclass
class InferRequest:
    """A decoded inference request: inputs as arrays, the outputs asked for and how to send them."""

    id: str | None
    parameters: dict
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[str] | None  # None: every output
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # per requested output
    binary_by_default: bool = False  # parameters.binary_data_output


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header's value, checked against the body."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ProtocolError(400, f"Inference-Header-Content-Length must be an integer, got {value!r}") from None
    if not 0 <= length <= body_length:
        raise ProtocolError(400, f"Inference-Header-Content-Length {length} is outside the body "
                                 f"(0..{body_length} bytes)")
    return length


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body: JSON, followed by binary tensors when ``header_length`` is given."""
    header = body if header_length is None else body[:header_length]
    binary = memoryview(body)[len(header):] if header_length is not None else memoryview(b"")
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as e:
        what = "inference header" if header_length is not None else "request body"
        raise ProtocolError(400, f"malformed JSON in the {what}: {e}") from None
    if not isinstance(request, dict):
        raise ProtocolError(400, f"the request must be a JSON object, got {type(request).__name__}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, f"'id' must be a string, got {json.dumps(request_id)}")
    parameters = _object(request.get("parameters"), "'parameters'")
    tensors = request.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise ProtocolError(400, "'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for i, tensor in enumerate(tensors):
        name, datatype, shape, tensor_parameters = _tensor_header(tensor, f"inputs[{i}]")
        if name in inputs:
            raise ProtocolError(400, f"input '{name}' is given twice")
        if "binary_data_size" in tensor_parameters:
            size = tensor_parameters["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(400, f"input '{name}': binary_data_size must be a non-negative integer, "
                                         f"got {json.dumps(size)}")
            if offset + size > len(binary):
                raise ProtocolError(400, f"input '{name}': binary_data_size {size} runs past the body's binary "
                                         f"part ({len(binary) - offset} bytes left after the header and the "
                                         f"inputs before it)")
            inputs[name] = _from_binary(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            inputs[name] = _from_json(name, datatype, shape, tensor["data"])
        else:
            raise ProtocolError(400, f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        datatypes[name] = datatype
    if offset != len(binary):
        raise ProtocolError(400, f"the body has {len(binary)} bytes after the inference header but the inputs' "
                                 f"binary_data_size add up to {offset}")
    outputs, binary_outputs = _requested_outputs(request.get("outputs"))
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(400, f"parameters.binary_data_output must be true or false, "
                                 f"got {json.dumps(binary_default)}")
    return InferRequest(request_id, parameters, inputs, datatypes, outputs, binary_outputs, binary_default)


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what} must be a JSON object, got {json.dumps(value)[:80]}")
    return value


def _tensor_header(tensor: Any, where: str) -> tuple[str, str, tuple[int, ...], dict]:
    if not isinstance(tensor, dict):
        raise ProtocolError(400, f"{where} must be a JSON object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(400, f"{where}: 'name' must be a non-empty string, got {json.dumps(name)}")
    datatype = tensor.get("datatype")
    if datatype not in _V2_DTYPES:
        raise ProtocolError(400, f"input '{name}': unknown datatype {json.dumps(datatype)} "
                                 f"(expected one of {', '.join(_V2_DTYPES)})")
    shape = tensor.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(400, f"input '{name}': 'shape' must be a list of non-negative integers, "
                                 f"got {json.dumps(shape)}")
    return name, datatype, tuple(shape), _object(tensor.get("parameters"), f"input '{name}': 'parameters'")


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_tensor(name, shape, raw)
    dtype = _V2_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(400, f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, "
                                 f"binary_data_size is {len(raw)}")
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    # after a JSON header of any length the data is seldom aligned; models run aligned arrays on their fast path
    return array if array.flags.aligned else array.copy()


def _bytes_tensor(name: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    """BYTES on the wire: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(400, f"input '{name}': BYTES element {len(items)} has a truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(400, f"input '{name}': BYTES element {len(items)} claims {length} bytes, "
                                     f"{len(raw) - offset - 4} are left")
        items.append(bytes(raw[offset + 4:offset + 4 + length]))
        offset += 4 + length
    if len(items) != math.prod(shape):
        raise ProtocolError(400, f"input '{name}': shape {list(shape)} needs {math.prod(shape)} BYTES "
                                 f"elements, got {len(items)}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    dtype = _V2_DTYPES[datatype]
    if not isinstance(data, list):
        data = [data]
    try:
        values = np.array(data, dtype=object if datatype == "BYTES" else None).reshape(-1)
    except ValueError:
        raise ProtocolError(400, f"input '{name}': 'data' is a ragged nested list") from None
    if values.size != math.prod(shape):
        raise ProtocolError(400, f"input '{name}': shape {list(shape)} needs {math.prod(shape)} values, "
                                 f"'data' has {values.size}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise ProtocolError(400, f"input '{name}': BYTES data must be strings")
        return np.array([v.encode() for v in values], dtype=object).reshape(shape)
    if dtype.kind in "iu" and values.dtype.kind in "fO":  # ints past int64's range: NumPy made them floats
        return _big_integers(name, datatype, shape, data)
    if values.size and values.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise ProtocolError(400, f"input '{name}': {datatype} data must be "
                                 f"{'true/false' if dtype.kind == 'b' else 'numbers'}, got "
                                 f"{json.dumps(values[0].item() if hasattr(values[0], 'item') else values[0])}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype)
    if dtype.kind in "iu" and values.size and not np.array_equal(array, values):
        raise ProtocolError(400, f"input '{name}': values out of range for {datatype}")
    return array.reshape(shape)


def _big_integers(name: str, datatype: str, shape: tuple[int, ...], data: list) -> np.ndarray:
    values = np.array(data, dtype=object).reshape(-1)
    bad = next((v for v in values if not isinstance(v, int) or isinstance(v, bool)), None)
    if bad is not None:
        raise ProtocolError(400, f"input '{name}': {datatype} data must be integers, got {json.dumps(bad)}")
    info = np.iinfo(_V2_DTYPES[datatype])
    if values.size and not (info.min <= min(values) and max(values) <= info.max):
        raise ProtocolError(400, f"input '{name}': values out of range for {datatype}")
    return np.array(values.tolist(), dtype=_V2_DTYPES[datatype]).reshape(shape)


def _requested_outputs(outputs: Any) -> tuple[list[str] | None, dict[str, bool]]:
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list):
        raise ProtocolError(400, f"'outputs' must be a list, got {json.dumps(outputs)[:80]}")
    names, binary = [], {}
    for i, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ProtocolError(400, f"outputs[{i}] must be an object with a string 'name'")
        name = output["name"]
        parameters = _object(output.get("parameters"), f"output '{name}': 'parameters'")
        if "binary_data" in parameters:
            if not isinstance(parameters["binary_data"], bool):
                raise ProtocolError(400, f"output '{name}': binary_data must be true or false")
            binary[name] = parameters["binary_data"]
        names.append(name)
    return names, binary


def check_inputs(model_name: str, specs: list[TensorSpec], request: InferRequest) -> dict[str, np.ndarray]:
    """The request's inputs, checked against the model's names, datatypes and shapes."""
    by_name = {s.name: s for s in specs}
    for name, value in request.inputs.items():
        spec = by_name.get(name)
        if spec is None:
            raise ProtocolError(400, f"model '{model_name}' has no input '{name}' "
                                     f"(inputs: {', '.join(by_name)})")
        if request.datatypes[name] != spec.datatype:
            raise ProtocolError(400, f"input '{name}': expected datatype {spec.datatype}, "
                                     f"got {request.datatypes[name]}")
        if len(value.shape) != len(spec.shape) or any(
                want != -1 and want != got for want, got in zip(spec.shape, value.shape)):
            raise ProtocolError(400, f"input '{name}': expected shape {list(spec.shape)} (-1: any), "
                                     f"got {list(value.shape)}")
    return request.inputs


def check_outputs(model_name: str, specs: list[TensorSpec], request: InferRequest) -> list[str]:
    """Names of the outputs to compute: the requested ones (checked) or all."""
    names = [s.name for s in specs]
    if request.outputs is None:
        return names
    for name in request.outputs:
        if name not in names:
            raise ProtocolError(400, f"model '{model_name}' has no output '{name}' (outputs: {', '.join(names)})")
    return list(request.outputs)


# -- responses ----------------------------------------------------------------------

def encode_infer_response(model_name: str, request: InferRequest, outputs: list[tuple[str, np.ndarray]],
                          ) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, its JSON header's length."""
    tensors, chunks = [], []
    for name, value in outputs:
        value = np.asarray(value)
        tensor = {"name": name, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
        if request.binary_outputs.get(name, request.binary_by_default):
            raw = _to_bytes(value)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _to_json(value)
        tensors.append(tensor)
    response = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_bytes(value: np.ndarray) -> bytes:
    if value.dtype.kind in "OUS":
        parts = []
        for item in value.reshape(-1):
            item = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(item)) + item)
        return b"".join(parts)
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def _to_json(value: np.ndarray) -> list:
    if value.dtype.kind in "OUS":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    return value.reshape(-1).tolist()


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
