"""The ONNX protobuf messages and tensor decoding, without importing the ``onnx`` package.

``import onnx`` costs ~50 ms of cold start (helper, compose, json_format,
importlib.metadata...), and loading a model needs only the generated message
classes. They are read from onnx's own ``onnx_ml_pb2.py``, executed under a
private module name; the message classes come from protobuf's default
descriptor pool, so with protobuf's upb backend they are the very classes
``onnx.ModelProto`` etc. (``as_model_proto`` re-parses a proto of another
class otherwise). If ``onnx`` is already imported we simply use it.

``to_array`` decodes a ``TensorProto`` like ``onnx.numpy_helper.to_array`` for
every element type lstminfer runs, with errors naming the tensor.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from .dtypes import numpy_dtype
from .errors import InvalidModelError

_PRIVATE_NAME = "lstminfer._onnx_ml_pb2"
_pb2 = None
_PB2_LOCK = threading.Lock()  # two first loads in two threads: one executes the module


def pb2():
    """The module holding ModelProto, TensorProto, ... (onnx's generated code)."""
    global _pb2
    if _pb2 is None:
        with _PB2_LOCK:
            if _pb2 is None:
                _pb2 = sys.modules.get("onnx.onnx_ml_pb2") or _load_pb2()
    return _pb2


def _load_pb2():
    import importlib.util

    spec = importlib.util.find_spec("onnx")  # locates the package without running its __init__
    generated = None
    if spec is not None and spec.submodule_search_locations:
        generated = os.path.join(list(spec.submodule_search_locations)[0], "onnx_ml_pb2.py")
    if generated is None or not os.path.isfile(generated):
        import onnx  # an unusual layout: let the package find its own messages

        return onnx.onnx_ml_pb2 if hasattr(onnx, "onnx_ml_pb2") else onnx
    module_spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, generated)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[_PRIVATE_NAME] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PRIVATE_NAME]
        raise
    return module


def as_model_proto(obj):
    """``obj`` as one of our ModelProto instances if it is an ONNX ModelProto, else None."""
    ModelProto = pb2().ModelProto
    if isinstance(obj, ModelProto):
        return obj
    descriptor = getattr(obj, "DESCRIPTOR", None)
    if getattr(descriptor, "full_name", None) == "onnx.ModelProto":
        # Same message from another class (a pure-Python protobuf build): go through bytes.
        proto = ModelProto()
        proto.ParseFromString(obj.SerializeToString())
        return proto
    return None


# ------------------------------------------------------------------ tensors --

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_STRING = 8
_BOOL = 9
# Element types whose typed values are 16-bit patterns in int32_data (as numpy_helper reads them).
_INT32_BIT_PATTERNS_16 = {4, 5, 10}  # uint16, int16, float16
# Element type -> the repeated field holding its values when raw_data is absent.
_TYPED_FIELD = {
    1: "float_data", 2: "int32_data", 3: "int32_data", 4: "int32_data", 5: "int32_data",
    6: "int32_data", 7: "int64_data", 9: "int32_data", 10: "int32_data", 11: "double_data",
    12: "uint64_data", 13: "uint64_data",
}
_FIELD_DTYPE = {"float_data": np.float32, "int32_data": np.int32, "int64_data": np.int64,
                "double_data": np.float64, "uint64_data": np.uint64}


def uses_external_data(t) -> bool:
    return t.HasField("data_location") and t.data_location == _EXTERNAL


def checked_dims(proto_dims, where: str) -> tuple[tuple[int, ...], int]:
    """(dims, element count) of a tensor proto's dims, refusing a negative one; the count is a
    Python int, so a product of huge dims cannot wrap around before it is checked."""
    dims = tuple(int(d) for d in proto_dims)
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{where}: negative dimension in dims {list(dims)}")
    count = 1
    for d in dims:
        count *= d
    return dims, count


def to_array(t, where: str) -> np.ndarray:
    """The values of TensorProto ``t`` as a read-only array; ``where`` names it in errors.

    bfloat16 initializers (``lstminfer.quantize(..., mode="bf16")`` writes them, each
    followed by a Cast to float) are widened exactly to float32: lstminfer has no
    bfloat16 arithmetic, and a bfloat16 graph input or output stays unsupported."""
    if t.data_type == _BFLOAT16 and not uses_external_data(t) and not t.HasField("segment"):
        return _bfloat16_widened(t, where)
    dtype = numpy_dtype(t.data_type, where)  # raises a clear error for unsupported types
    if t.HasField("segment"):
        raise InvalidModelError(f"{where}: tensors split into segments are not supported")
    dims, count = checked_dims(t.dims, where)
    if t.data_type == _STRING:
        array = _strings(t, where)
    elif uses_external_data(t):
        array = _external(t, where)
    elif t.HasField("raw_data"):
        array = _raw(t.raw_data, dtype, count, dims, where)
    else:
        array = _typed(t, dtype, where)
    if array.size != count:
        source = "raw_data" if t.HasField("raw_data") else _TYPED_FIELD.get(t.data_type, "string_data")
        raise InvalidModelError(
            f"{where}: {source} holds {array.size} values, expected {count} for dims {list(dims)} "
            f"({dtype.name if dtype != object else 'string'})"
        )
    array = _shaped(array, dims, where)
    array.setflags(write=False)  # initializers are shared by every run
    return array


_BFLOAT16 = 16


def _bfloat16_widened(t, where: str) -> np.ndarray:
    dims, count = checked_dims(t.dims, where)
    if t.HasField("raw_data"):
        if len(t.raw_data) != 2 * count:
            raise InvalidModelError(f"{where}: raw_data holds {len(t.raw_data)} bytes, expected {2 * count} "
                                    f"({count} x bfloat16 for dims {list(dims)})")
        bits = np.frombuffer(t.raw_data, dtype="<u2")
    else:  # typed: one bit pattern per int32_data entry
        bits = np.asarray(t.int32_data, dtype=np.int64).astype(np.uint16)
        if bits.size != count:
            raise InvalidModelError(f"{where}: int32_data holds {bits.size} values, expected {count} "
                                    f"for dims {list(dims)} (bfloat16)")
    array = _shaped((bits.astype(np.uint32) << np.uint32(16)).view(np.float32), dims, where)
    array.setflags(write=False)
    return array


def _shaped(array: np.ndarray, dims: tuple, where: str) -> np.ndarray:
    """``array`` in shape ``dims``; an empty tensor's dims can still be more than NumPy holds."""
    try:
        return array.reshape(dims)
    except ValueError as e:
        raise InvalidModelError(f"{where}: dims {list(dims)} cannot be a NumPy array ({e})") from None


def _raw(raw: bytes, dtype: np.dtype, count: int, dims: tuple, where: str) -> np.ndarray:
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidModelError(
            f"{where}: raw_data holds {len(raw)} bytes, expected {expected} "
            f"({count} x {dtype.name} for dims {list(dims)})"
        )
    # ONNX stores raw data little-endian.
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _typed(t, dtype: np.dtype, where: str) -> np.ndarray:
    field = _TYPED_FIELD[t.data_type]
    values = np.asarray(getattr(t, field), dtype=_FIELD_DTYPE[field])
    if t.data_type in _INT32_BIT_PATTERNS_16:
        return values.view(np.uint32).astype(np.uint16).view(dtype)
    if t.data_type == _BOOL:
        return values != 0
    return values.astype(dtype, copy=False)


def _strings(t, where: str) -> np.ndarray:
    try:
        decoded = [s.decode("utf-8") for s in t.string_data]
    except UnicodeDecodeError as e:
        raise InvalidModelError(f"{where}: string_data is not valid UTF-8 ({e})") from None
    array = np.empty(len(decoded), dtype=object)
    array[:] = decoded
    return array


def _external(t, where: str) -> np.ndarray:
    # Data beside a model file was read in by onnx_import before this; a model given as bytes
    # or a ModelProto has no directory to resolve the location against (reading it relative to
    # the working directory would let a model read any file there).
    location = next((e.value for e in t.external_data if e.key == "location"), "?")
    raise InvalidModelError(
        f"{where}: its data lives in an external file ('{location}') that a model given as bytes or "
        "a ModelProto has no directory to find; load the model from its file path")
