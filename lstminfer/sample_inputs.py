"""Inputs for a model that came without any: what ``lstminfer demo --model``, ``bench`` and
``quantize --report`` run a user's model on.

Free dims: the batch axis gets ``batch`` and the time axis ``time``, read from the streaming
analysis where the model streams, else from the dim's name ("batch", "N" ... -> batch; any
other symbol -> time). A symbol gets one value everywhere it appears. Values, seeded:

* float: normal, standard deviation 0.5;
* integer: a recurrent node's ``sequence_lens`` gets the time length; an input that indexes a
  constant ``Gather`` table (an embedding, possibly through Cast/Reshape/Transpose/...) gets
  ids below the table's size (the vocabulary); any other integer input gets 0..3;
* bool: random.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError, NotStreamableError
from .graph import Graph

BATCH_NAMES = {"n", "b", "bs", "batch", "batch_size", "batchsize", "num_batches"}
SMALL_INTEGERS = 4  # integer inputs with no known range: 0..3 (a safe index into most things)
# Ops that pass their input's values through unchanged (same ids, other layout): followed from
# an integer input to the Gather that reads it.
_VALUE_PRESERVING = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten",
                     "Expand", "Slice", "Split", "Concat", "Clip"}
_SEQUENCE_LENS = {"LSTM": 4, "GRU": 4, "RNN": 4}  # input index of sequence_lens


def sample_feeds(model, *, time: int = 16, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per input of ``model`` (a loaded ``lstminfer.Model``); see the module doc."""
    if time < 1 or batch < 1:
        raise InvalidArgumentError(f"time and batch must be >= 1, got time={time}, batch={batch}")
    graph = model._imported.graph
    sizes = free_dim_sizes(model, time=time, batch=batch)
    rng = np.random.default_rng(seed)
    vocab = _gather_table_sizes(graph)
    lens = _sequence_lens_inputs(graph)
    feeds = {}
    for vi in graph.inputs:
        if vi.kind != "tensor":
            raise InvalidArgumentError(
                f"input '{vi.name}' is a {vi.kind}, not a tensor: generated inputs cover tensors only; "
                "give the inputs in a file")
        shape = [_size(d, axis, vi.name, sizes) for axis, d in enumerate(vi.shape or ())]
        dtype = np.dtype(vi.dtype) if vi.dtype is not None else np.dtype(np.float32)
        if dtype.kind == "f":
            value = (0.5 * rng.standard_normal(shape)).astype(dtype)
        elif dtype.kind == "b":
            value = rng.random(shape) < 0.5
        elif dtype.kind in "iu" and vi.name in lens:
            value = np.full(shape, time, dtype)
        elif dtype.kind in "iu":
            value = rng.integers(0, vocab.get(vi.name, SMALL_INTEGERS), size=shape).astype(dtype)
        elif dtype.kind in "OU":
            value = np.full(shape, "", dtype=object)
        else:
            raise InvalidArgumentError(f"input '{vi.name}': cannot generate values of type {vi.type_string()}")
        feeds[vi.name] = value
    return feeds


def free_dim_sizes(model, *, time: int, batch: int) -> dict[tuple[str, int] | str, int]:
    """Size of each free dim: by symbol name (str) or, for an unnamed dim, by (input name, axis)."""
    sizes: dict[tuple[str, int] | str, int] = {}
    for name, (time_axis, batch_axis) in _stream_axes(model).items():
        vi = next(v for v in model._imported.graph.inputs if v.name == name)
        for axis, value in ((time_axis, time), (batch_axis, batch)):
            if axis is None or vi.shape is None or axis >= len(vi.shape) or isinstance(vi.shape[axis], int):
                continue
            sizes.setdefault(vi.shape[axis] if isinstance(vi.shape[axis], str) else (name, axis), value)
    for vi in model._imported.graph.inputs:
        for d in vi.shape or ():
            if isinstance(d, str) and d not in sizes:
                sizes[d] = batch if d.strip().lower() in BATCH_NAMES or "batch" in d.lower() else time
    return sizes


def _size(d, axis: int, name: str, sizes) -> int:
    if isinstance(d, int):
        return d
    return sizes.get(d if isinstance(d, str) else (name, axis), 1)


def _stream_axes(model) -> dict[str, tuple[int | None, int | None]]:
    """(time axis, batch axis) of each data input, where the model streams; else {}."""
    try:
        program = model._stream_program()
    except NotStreamableError:
        return {}
    return {vi.name: (program.time_axes.get(vi.name), program.batch_axes.get(vi.name)) for vi in program.data_inputs}


def _gather_table_sizes(graph: Graph) -> dict[str, int]:
    """Graph input -> the smallest constant Gather table (along its axis) its values index."""
    producers_of = {}  # value -> the values it is computed from through value-preserving ops
    for node in graph.nodes:
        if node.op_type in _VALUE_PRESERVING:
            for out in node.outputs:
                producers_of[out] = [i for i in node.inputs[:1] if i] if node.op_type != "Concat" else \
                    [i for i in node.inputs if i]
    constants = dict(graph.initializers)
    for node in graph.nodes:
        if node.op_type == "Constant" and isinstance(node.attrs.get("value"), np.ndarray):
            constants[node.outputs[0]] = node.attrs["value"]
    inputs = {vi.name for vi in graph.inputs}
    sizes: dict[str, int] = {}
    for node in graph.nodes:
        if node.op_type not in ("Gather", "GatherElements") or len(node.inputs) < 2:
            continue
        table = constants.get(node.inputs[0])
        if table is None or table.ndim == 0:
            continue
        axis = int(node.attrs.get("axis", 0)) % table.ndim
        for source in _sources(node.inputs[1], producers_of):
            if source in inputs:
                sizes[source] = min(sizes.get(source, table.shape[axis]), int(table.shape[axis]))
    return sizes


def _sources(name: str, producers_of: dict[str, list[str]]):
    seen, todo = set(), [name]
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        yield value
        todo += producers_of.get(value, [])


def _sequence_lens_inputs(graph: Graph) -> set[str]:
    return {node.inputs[_SEQUENCE_LENS[node.op_type]] for node in graph.nodes
            if node.op_type in _SEQUENCE_LENS and len(node.inputs) > _SEQUENCE_LENS[node.op_type]
            and node.inputs[_SEQUENCE_LENS[node.op_type]]}
