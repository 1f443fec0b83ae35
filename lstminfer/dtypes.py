"""ONNX element types <-> NumPy dtypes, in one table."""
from __future__ import annotations

import numpy as np

from .errors import UnsupportedModelError

# ONNX TensorProto.DataType code -> (numpy dtype, onnxruntime's type name)
_ONNX_TYPES: dict[int, tuple[np.dtype, str]] = {
    1: (np.dtype(np.float32), "float"),
    2: (np.dtype(np.uint8), "uint8"),
    3: (np.dtype(np.int8), "int8"),
    4: (np.dtype(np.uint16), "uint16"),
    5: (np.dtype(np.int16), "int16"),
    6: (np.dtype(np.int32), "int32"),
    7: (np.dtype(np.int64), "int64"),
    8: (np.dtype(object), "string"),
    9: (np.dtype(np.bool_), "bool"),
    10: (np.dtype(np.float16), "float16"),
    11: (np.dtype(np.float64), "double"),
    12: (np.dtype(np.uint32), "uint32"),
    13: (np.dtype(np.uint64), "uint64"),
}
_UNSUPPORTED_NAMES = {
    0: "undefined", 14: "complex64", 15: "complex128", 16: "bfloat16",
    17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
    21: "uint4", 22: "int4", 23: "float4e2m1",
}
_BY_DTYPE = {dtype: code for code, (dtype, _) in _ONNX_TYPES.items()}


def numpy_dtype(code: int, where: str = "") -> np.dtype:
    """NumPy dtype of an ONNX element type code; unsupported ones raise."""
    try:
        return _ONNX_TYPES[code][0]
    except KeyError:
        name = _UNSUPPORTED_NAMES.get(code, f"code {code}")
        supported = ", ".join(n for _, n in _ONNX_TYPES.values())
        raise UnsupportedModelError(
            f"{where + ': ' if where else ''}element type {name} is not supported "
            f"(supported: {supported})"
        ) from None


def onnx_code(dtype: np.dtype) -> int:
    """ONNX element type code of a NumPy dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "US":
        return 8
    return _BY_DTYPE[dtype]


def onnx_type_name(dtype: np.dtype | None) -> str:
    """onnxruntime's name for a dtype: float, int64, ... ('unknown' if None)."""
    if dtype is None:
        return "unknown"
    return _ONNX_TYPES[onnx_code(dtype)][1]
