"""Sequence ops (ONNX ``seq(tensor)``) and Optional ops.

A sequence is a Python list of np.ndarray; kernels build new lists and never
change the one they are given (it may be a graph input or a loop value).
An optional value is its element, or ``None`` when empty.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import numpy_dtype, onnx_type_name
from ..errors import ExecutionError, InvalidModelError
from ..graph import Node
from .registry import BuildContext, register


# ---------------------------------------------------------------- helpers

def _sequence(value: Any, node: Node, what: str = "input_sequence") -> list:
    if not isinstance(value, list):
        raise ExecutionError(
            f"{node.label()}: input '{what}' must be a sequence, got {type(value).__name__}"
        )
    return value


def _position(value: Any, node: Node, length: int, allow_end: bool) -> int:
    """A position input normalised to [0, length) (or [0, length] for an insert)."""
    array = np.asarray(value)
    if array.dtype not in (np.int32, np.int64) or array.size != 1:
        raise ExecutionError(
            f"{node.label()}: input 'position' must be an int32 or int64 scalar, "
            f"got {array.dtype} of shape {array.shape}"
        )
    position = int(array.reshape(-1)[0])
    high = length if allow_end else length - 1
    if not -length <= position <= high:
        raise ExecutionError(
            f"{node.label()}: position {position} is out of range [{-length}, {high}] "
            f"for a sequence of {length} tensors"
        )
    return position + length if position < 0 else position


def _same_dtype(tensors: list[np.ndarray], node: Node) -> None:
    if tensors and any(t.dtype != tensors[0].dtype for t in tensors):
        got = ", ".join(onnx_type_name(t.dtype) for t in tensors)
        raise ExecutionError(
            f"{node.label()}: all tensors of a sequence must share one element type, got {got}"
        )


def _axis(node: Node, rank: int, low: int, high: int) -> int:
    axis = int(node.attr("axis"))
    if not low <= axis <= high:
        raise ExecutionError(
            f"{node.label()}: attribute 'axis'={axis} is out of range [{low}, {high}] "
            f"for inputs of rank {rank}"
        )
    return axis % (high + 1)


# ---------------------------------------------------------------- construction

@register("SequenceConstruct", since=11)
def sequence_construct(node: Node, ctx: BuildContext):
    def kernel(*tensors):
        items = [np.asarray(t) for t in tensors]
        _same_dtype(items, node)
        return (items,)

    return kernel


@register("SequenceEmpty", since=11)
def sequence_empty(node: Node, ctx: BuildContext):
    numpy_dtype(int(node.attr("dtype", 1)), node.label())  # reject unsupported types at load

    def kernel():
        return ([],)

    return kernel


# ---------------------------------------------------------------- access and editing

@register("SequenceLength", since=11)
def sequence_length(node: Node, ctx: BuildContext):
    def kernel(seq):
        return (np.array(len(_sequence(seq, node)), dtype=np.int64),)

    return kernel


@register("SequenceAt", since=11)
def sequence_at(node: Node, ctx: BuildContext):
    def kernel(seq, position):
        seq = _sequence(seq, node)
        return (seq[_position(position, node, len(seq), allow_end=False)],)

    return kernel


@register("SequenceInsert", since=11)
def sequence_insert(node: Node, ctx: BuildContext):
    def kernel(seq, tensor, position=None):
        seq = _sequence(seq, node)
        tensor = np.asarray(tensor)
        if seq and tensor.dtype != seq[0].dtype:
            raise ExecutionError(
                f"{node.label()}: cannot insert a tensor({onnx_type_name(tensor.dtype)}) into a "
                f"sequence of tensor({onnx_type_name(seq[0].dtype)})"
            )
        at = len(seq) if position is None else _position(position, node, len(seq), allow_end=True)
        return (seq[:at] + [tensor] + seq[at:],)

    return kernel


@register("SequenceErase", since=11)
def sequence_erase(node: Node, ctx: BuildContext):
    def kernel(seq, position=None):
        seq = _sequence(seq, node)
        if not seq:
            raise ExecutionError(f"{node.label()}: cannot erase from an empty sequence")
        at = len(seq) - 1 if position is None else _position(position, node, len(seq), allow_end=False)
        return (seq[:at] + seq[at + 1:],)

    return kernel


# ---------------------------------------------------------------- tensor <-> sequence

def _split_lengths(split: Any, dim: int, axis: int, node: Node) -> list[int]:
    """Chunk lengths from SplitToSequence's 'split': a chunk size or a list of lengths."""
    split = np.asarray(split)
    if split.dtype not in (np.int32, np.int64) or split.ndim > 1:
        raise ExecutionError(
            f"{node.label()}: input 'split' must be an int32/int64 scalar or 1-D tensor, "
            f"got {split.dtype} of shape {split.shape}"
        )
    if split.ndim == 0:
        size = int(split)
        if size <= 0:
            raise ExecutionError(f"{node.label()}: scalar 'split' must be positive, got {size}")
        # Chunks of `size`; the last one alone may be shorter.
        return [min(size, dim - start) for start in range(0, dim, size)]
    lengths = [int(v) for v in split]
    # onnxruntime accepts zero-length parts, so only negatives are refused.
    if any(v < 0 for v in lengths) or sum(lengths) != dim:
        raise ExecutionError(
            f"{node.label()}: 'split' lengths {lengths} must be non-negative and sum to "
            f"the size of axis {axis} ({dim})"
        )
    return lengths


def _chunks(data: np.ndarray, axis: int, lengths: list[int]) -> list[np.ndarray]:
    starts = np.cumsum([0] + lengths[:-1])
    return [
        data[(slice(None),) * axis + (slice(int(s), int(s) + n),)]
        for s, n in zip(starts, lengths)
    ]


@register("SplitToSequence", since=11)
def split_to_sequence(node: Node, ctx: BuildContext):
    keepdims = int(node.attr("keepdims", 1))
    if keepdims not in (0, 1):
        raise InvalidModelError(f"{node.label()}: attribute 'keepdims' must be 0 or 1, got {keepdims}")
    axis_attr = int(node.attr("axis", 0))

    def kernel(data, split=None):
        data = np.asarray(data)
        rank, axis = data.ndim, axis_attr
        if not -rank <= axis < rank:
            raise ExecutionError(
                f"{node.label()}: attribute 'axis'={axis} is out of range [{-rank}, {rank - 1}] "
                f"for an input of rank {rank}"
            )
        axis %= rank
        dim = data.shape[axis]
        if split is None:
            # keepdims only applies here: the spec ignores it once 'split' is given.
            if keepdims:
                return (_chunks(data, axis, [1] * dim),)
            return ([data[(slice(None),) * axis + (i, Ellipsis)] for i in range(dim)],)
        return (_chunks(data, axis, _split_lengths(split, dim, axis, node)),)

    return kernel


@register("ConcatFromSequence", since=11)
def concat_from_sequence(node: Node, ctx: BuildContext):
    node.attr("axis")  # required: fail at load when missing
    new_axis = int(node.attr("new_axis", 0))
    if new_axis not in (0, 1):
        raise InvalidModelError(f"{node.label()}: attribute 'new_axis' must be 0 or 1, got {new_axis}")

    def kernel(seq):
        seq = _sequence(seq, node)
        if not seq:
            raise ExecutionError(f"{node.label()}: cannot concatenate an empty sequence")
        _same_dtype(seq, node)
        rank = seq[0].ndim
        if new_axis:
            axis = _axis(node, rank, -rank - 1, rank)
        else:
            axis = _axis(node, rank, -rank, rank - 1)
        try:
            joined = np.stack(seq, axis=axis) if new_axis else np.concatenate(seq, axis=axis)
        except ValueError as err:
            shapes = ", ".join(str(t.shape) for t in seq)
            raise ExecutionError(f"{node.label()}: cannot join tensors of shapes {shapes}: {err}") from None
        return (joined,)

    return kernel


# ---------------------------------------------------------------- optional

@register("Optional", since=15)
def optional(node: Node, ctx: BuildContext):
    if not (node.inputs and node.inputs[0]) and "type" not in node.attrs:
        raise InvalidModelError(
            f"{node.label()}: attribute 'type' is required when the input is omitted"
        )

    def kernel(value=None):
        return (value,)

    return kernel


@register("OptionalHasElement", since=15)
def optional_has_element(node: Node, ctx: BuildContext):
    def kernel(value=None):
        return (np.array(value is not None),)

    return kernel


@register("OptionalGetElement", since=15)
def optional_get_element(node: Node, ctx: BuildContext):
    def kernel(value=None):
        if value is None:
            raise ExecutionError(f"{node.label()}: the optional input is empty")
        return (value,)

    return kernel
