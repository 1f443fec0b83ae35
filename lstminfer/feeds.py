"""Input feeds checked and converted at the boundary, for ``Model``, ``Stream`` and ``StreamPool``.

``Inputs`` holds a graph's inputs and answers two questions about a feed dict: ``exact`` (is it,
as given, what the plan takes? a cheap yes-or-None) and ``checked`` (the feeds in input order, or
an ``InvalidInputError`` that explains what is wrong). ``check_input`` and ``cast_same_kind``
are the per-value rules both use, and what a stream's chunks go through.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .dtypes import onnx_code, onnx_type_name
from .errors import InvalidInputError
from .listing import brief
from .graph import ValueInfo
from .c_runtime import _runtime


class Inputs:
    """A graph's inputs, with the test of a feed dict that takes it as it is."""

    def __init__(self, inputs: Sequence[ValueInfo]):
        self.inputs = list(inputs)
        self.names = [vi.name for vi in self.inputs]
        self.by_name = {vi.name: vi for vi in self.inputs}
        # Per input (name, dtype, rank, fixed dims): a feed passing all of them needs no full check.
        self.exact_checks = tuple(
            (vi.name, vi.dtype, len(vi.shape), tuple((i, d) for i, d in enumerate(vi.shape) if isinstance(d, int)))
            for vi in self.inputs
            if vi.kind == "tensor" and vi.dtype is not None and vi.dtype != np.dtype(object) and vi.shape is not None
        )
        self.all_exact = len(self.exact_checks) == len(self.inputs)
        # The same test in C (None: the extension is not built, or an input it cannot test).
        self.c_checks = _runtime.FeedChecks(self.exact_checks) if self.all_exact and _runtime is not None else None

    def exact(self, input_feed: Any) -> list[Any] | None:
        """The feeds in input order when each is an exact ndarray of its input's dtype, rank and fixed
        dims and there are no other names; else None (``checked`` then says what is wrong)."""
        if self.c_checks is not None:
            return self.c_checks.feeds(input_feed) if input_feed.__class__ is dict else None
        if not self.all_exact or not isinstance(input_feed, Mapping) or len(input_feed) != len(self.exact_checks):
            return None
        feeds = []
        for name, dtype, rank, fixed in self.exact_checks:
            value = input_feed.get(name)
            if value.__class__ is not np.ndarray or value.ndim != rank or (
                    value.dtype is not dtype and value.dtype != dtype):  # `is`: the usual, cheap case
                return None
            shape = value.shape
            for axis, size in fixed:
                if shape[axis] != size:
                    return None
            feeds.append(value)
        return feeds

    def checked(self, input_feed: Mapping[str, Any]) -> list[Any]:
        """The feeds in input order, each checked against its input (dtype, rank, fixed dims)."""
        if not isinstance(input_feed, Mapping):
            raise InvalidInputError(
                f"input feed must be a dict name -> array, got {type(input_feed).__name__}"
            )
        unknown = [n for n in input_feed if n not in self.by_name]
        if unknown:
            raise InvalidInputError(
                f"unknown input name(s) [{brief(map(repr, unknown))}]; the model's inputs are {brief(self.names)}"
            )
        feeds = self.exact(input_feed)
        if feeds is not None:
            return feeds
        feeds = []
        for vi in self.inputs:
            if vi.name not in input_feed:
                raise InvalidInputError(
                    f"missing input '{vi.name}' (expected {vi.type_string()} with shape "
                    f"{shape_text(vi.shape)}); the model's inputs are {brief(self.names)}"
                )
            feeds.append(check_input(vi, input_feed[vi.name]))
        return feeds


def check_input(vi: ValueInfo, value: Any) -> Any:
    """``value`` as input ``vi`` takes it (an ndarray, a list of them, None), or InvalidInputError."""
    if vi.kind in ("optional", "optional_sequence") and value is None:
        return None
    if vi.kind in ("sequence", "optional_sequence"):
        if not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"input '{vi.name}': expected a sequence (list of arrays), got {type(value).__name__}")
        return [_check_tensor(vi, np.asarray(v), f"input '{vi.name}' element {i}", check_shape=False)
                for i, v in enumerate(value)]
    if not isinstance(value, np.ndarray):
        value = _from_python(vi, value)
    return _check_tensor(vi, value, f"input '{vi.name}'", check_shape=True)


def _from_python(vi: ValueInfo, value: Any) -> np.ndarray:
    """A list (or scalar) feed as an array of the input's dtype, as onnxruntime converts a list
    (``[1, 2]`` feeds a float input as float32); other objects as NumPy makes them."""
    if vi.dtype is None or vi.dtype == np.dtype(object) or not isinstance(
            value, (list, tuple, int, float, bool, np.generic)):
        return np.asarray(value)
    try:
        return np.asarray(value, dtype=vi.dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInputError(f"input '{vi.name}': cannot convert the {type(value).__name__} given to "
                                f"tensor({onnx_type_name(vi.dtype)}): {e}") from None


def cast_same_kind(value: Any, vi: ValueInfo) -> Any:
    """``value`` as an array, cast to ``vi``'s dtype when that is a same-kind cast (float64 -> float32)."""
    arr = np.asarray(value)
    if arr.dtype != vi.dtype and np.can_cast(arr.dtype, vi.dtype, casting="same_kind"):
        return arr.astype(vi.dtype)
    return arr


def shape_text(shape) -> str:
    if shape is None:
        return "(any)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _check_tensor(vi: ValueInfo, value: np.ndarray, where: str, check_shape: bool) -> np.ndarray:
    if vi.dtype is not None and not value.dtype.isnative and value.dtype.newbyteorder("=") == vi.dtype:
        value = value.astype(vi.dtype)  # big-endian values read as what they are (never reinterpreted)
    if vi.dtype is not None:
        ok = value.dtype == vi.dtype or (vi.dtype == np.dtype(object) and value.dtype.kind in "OUS")
        if not ok:
            got = onnx_type_name(value.dtype) if _known_dtype(value.dtype) else str(value.dtype)
            raise InvalidInputError(
                f"{where}: wrong dtype: expected tensor({onnx_type_name(vi.dtype)}), got tensor({got})"
            )
    if value.size == 0 and value.ndim > 1:
        _check_empty_extent(value, where)
    if check_shape and vi.shape is not None:
        if value.ndim != len(vi.shape):
            raise InvalidInputError(
                f"{where}: wrong rank: expected {len(vi.shape)} dimensions {shape_text(vi.shape)}, "
                f"got {value.ndim} with shape {tuple(value.shape)}"
            )
        for axis, (want, got) in enumerate(zip(vi.shape, value.shape)):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(
                    f"{where}: wrong size on axis {axis}: expected {want} (shape {shape_text(vi.shape)}), "
                    f"got {got} (shape {tuple(value.shape)})"
                )
    return value


# A zero-size feed costs nothing, yet its other dims still size the outputs (a batch of 10^9
# empty sequences has 10^9 final states): past what a non-empty feed could hold, refuse it.
MAX_EMPTY_EXTENT_BYTES = 1 << 24


def _check_empty_extent(value: np.ndarray, where: str) -> None:
    extent = value.dtype.itemsize
    for d in value.shape:
        extent *= max(d, 1)
    if extent > MAX_EMPTY_EXTENT_BYTES:
        raise InvalidInputError(
            f"{where}: shape {tuple(value.shape)} is empty but its other dimensions span {extent} bytes "
            f"(limit {MAX_EMPTY_EXTENT_BYTES >> 20} MiB): outputs sized by them could not be allocated")


def _known_dtype(dtype: np.dtype) -> bool:
    try:
        onnx_code(dtype)
        return True
    except KeyError:
        return False
