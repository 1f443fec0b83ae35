"""onnxruntime's ``OrtValue`` for the CPU: a tensor held as a NumPy array, shared, never copied.

``OrtValue.ortvalue_from_numpy(a)`` wraps ``a`` itself (onnxruntime's CPU OrtValue is backed by the
array's buffer too), so a session writing an output into an OrtValue writes into that array.
"""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from .arguments import strict_keywords
from .dtypes import numpy_dtype, onnx_code, onnx_type_name
from .errors import InvalidArgumentError


def check_cpu(device_type: Any, what: str) -> None:
    """Only CPU memory exists here; another device is a clear error, not a silent copy."""
    if str(device_type).lower() != "cpu":
        raise InvalidArgumentError(f"{what}: device_type {device_type!r} is not available; lstminfer runs on the CPU "
                                   "only (device_type='cpu')")


def element_dtype(element_type: Any, what: str) -> np.dtype:
    """A NumPy dtype from onnxruntime's element_type: a NumPy type or an ONNX TensorProto code."""
    if isinstance(element_type, (int, np.integer)) and not isinstance(element_type, bool):
        return numpy_dtype(int(element_type), what)
    try:
        return np.dtype(element_type)
    except TypeError:
        raise InvalidArgumentError(f"{what}: element_type {element_type!r} is neither a NumPy type "
                                   "nor an ONNX element type code") from None


def array_at(buffer_ptr: int, dtype: np.dtype, shape: Sequence[int], what: str) -> np.ndarray:
    """A C-order array of ``shape`` over the caller's memory at address ``buffer_ptr`` (no copy)."""
    if not isinstance(buffer_ptr, (int, np.integer)) or buffer_ptr <= 0:
        raise InvalidArgumentError(f"{what}: buffer_ptr must be a memory address (an int such as array.ctypes.data), "
                                   f"got {buffer_ptr!r}")
    shape = tuple(int(d) for d in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (ctypes.c_char * nbytes).from_address(int(buffer_ptr))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class OrtValue:
    """A CPU tensor as onnxruntime's ``OrtValue`` presents one (``numpy()``, ``shape()``, ``data_type()``...)."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray):
        if not isinstance(array, np.ndarray):
            raise InvalidArgumentError(f"OrtValue holds a NumPy array, got {type(array).__name__}; "
                                       "use OrtValue.ortvalue_from_numpy")
        self._array = array

    @staticmethod
    @strict_keywords
    def ortvalue_from_numpy(numpy_obj: Any, device_type: str = "cpu", device_id: int = 0,
                            vendor_id: int = -1) -> "OrtValue":
        """An OrtValue over ``numpy_obj``'s memory (C-contiguous; copied once only if it is not)."""
        check_cpu(device_type, "OrtValue.ortvalue_from_numpy")
        return OrtValue(np.ascontiguousarray(numpy_obj))

    @staticmethod
    @strict_keywords
    def ortvalue_from_shape_and_type(shape: Sequence[int], element_type: Any, device_type: str = "cpu",
                                     device_id: int = 0, vendor_id: int = -1) -> "OrtValue":
        """A new, uninitialised tensor of ``shape`` and ``element_type`` (a NumPy type or ONNX code)."""
        check_cpu(device_type, "OrtValue.ortvalue_from_shape_and_type")
        return OrtValue(np.empty(tuple(shape), element_dtype(element_type, "OrtValue.ortvalue_from_shape_and_type")))

    def numpy(self) -> np.ndarray:
        """The tensor as a NumPy array: the array itself (CPU memory, no copy)."""
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def data_type(self) -> str:
        """onnxruntime's type string, e.g. 'tensor(float)'."""
        return f"tensor({onnx_type_name(self._array.dtype)})"

    def element_type(self) -> int:
        """The ONNX TensorProto element type code (1 for float)."""
        return onnx_code(self._array.dtype)

    def device_name(self) -> str:
        return "cpu"

    def is_tensor(self) -> bool:
        return True

    def is_tensor_sequence(self) -> bool:
        return False

    def is_sparse_tensor(self) -> bool:
        return False

    def has_value(self) -> bool:
        return True

    def data_ptr(self) -> int:
        return int(self._array.ctypes.data)

    def tensor_size_in_bytes(self) -> int:
        return int(self._array.nbytes)

    def update_inplace(self, np_arr: Any) -> None:
        """Copy ``np_arr`` into this tensor's memory (same shape and dtype)."""
        value = np.asarray(np_arr)
        if value.shape != self._array.shape or value.dtype != self._array.dtype:
            raise InvalidArgumentError(f"OrtValue.update_inplace: expected {self._array.dtype} {self._array.shape}, "
                                       f"got {value.dtype} {value.shape}")
        np.copyto(self._array, value)

    def __repr__(self) -> str:
        return f"<lstminfer.OrtValue {self.data_type()} shape={self.shape()}>"
