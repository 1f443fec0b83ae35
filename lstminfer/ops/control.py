"""Control flow: Loop, If and Scan, whose bodies are subgraphs.

Each factory checks at load that the body's inputs and outputs fit the node
(the usual way a hand-edited or mis-converted model breaks), then compiles the
body once with ``ctx.compile_subgraph``. Kernels receive the values the bodies
read from enclosing scopes as ``outer=``; they pass that dict on unchanged.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExecutionError, InvalidModelError, UnsupportedModelError
from ..graph import Graph, Node, ValueInfo
from .registry import BuildContext, register


# ---------------------------------------------------------------- helpers

def _body(node: Node, ctx: BuildContext, attr: str) -> tuple[Graph, Any]:
    """The GRAPH attribute ``attr`` and its compiled runner."""
    graph = node.attr(attr)
    if not isinstance(graph, Graph):
        raise InvalidModelError(
            f"{node.label()}: attribute '{attr}' must be a graph, got {type(graph).__name__}"
        )
    if ctx.compile_subgraph is None:
        raise UnsupportedModelError(f"{node.label()}: this build context cannot compile subgraphs")
    return graph, ctx.compile_subgraph(graph)


def _scalar(value: Any, node: Node, what: str) -> Any:
    """The single element of a one-element tensor (ONNX allows shape [] or [1])."""
    array = np.asarray(value)
    if array.size != 1:
        raise ExecutionError(
            f"{node.label()}: {what} must hold exactly one element, got shape {array.shape}"
        )
    return array.reshape(-1)[0]


def _empty_like_declared(info: ValueInfo, axis: int = 0) -> np.ndarray:
    """A zero-length stack of ``info``'s per-iteration values (no iteration ran).

    Like onnxruntime: the declared shape, unknown dims as 0, a 0 inserted at
    ``axis``; rank 1 when the body declares no shape.
    """
    dtype = info.dtype if info.dtype is not None else np.dtype(np.float32)
    dims = [d if isinstance(d, int) else 0 for d in info.shape] if info.shape is not None else []
    dims.insert(axis if axis >= 0 else len(dims) + 1 + axis, 0)
    return np.empty(dims, dtype=dtype)


def _stack(values: list[np.ndarray], axis: int, node: Node, what: str) -> np.ndarray:
    """Stack per-iteration outputs along a new ``axis``; they must agree in shape."""
    first = np.asarray(values[0])
    for step, value in enumerate(values):
        if np.shape(value) != first.shape:
            raise ExecutionError(
                f"{node.label()}: {what} changed shape between iterations: "
                f"{first.shape} at iteration 0, {np.shape(value)} at iteration {step}"
            )
    rank = first.ndim + 1
    if not -rank <= axis < rank:
        raise ExecutionError(
            f"{node.label()}: {what} axis {axis} is out of range for rank {rank} (after stacking)"
        )
    return np.stack(values, axis=axis)


def _check_count(node: Node, what: str, expected: int, got: int, hint: str) -> None:
    if expected != got:
        raise InvalidModelError(f"{node.label()}: {what}: expected {expected}, got {got} ({hint})")


# ---------------------------------------------------------------- If

@register("If", since=1)
def if_factory(node: Node, ctx: BuildContext):
    branches = {}
    for attr in ("then_branch", "else_branch"):
        graph, runner = _body(node, ctx, attr)
        if graph.inputs:
            raise InvalidModelError(
                f"{node.label()}: {attr} must take no inputs, got {len(graph.inputs)} "
                f"({', '.join(vi.name for vi in graph.inputs)})"
            )
        _check_count(node, f"{attr} output count", len(node.outputs), len(graph.outputs),
                     "a branch must produce one value per If output")
        branches[attr] = runner
    then_runner, else_runner = branches["then_branch"], branches["else_branch"]

    def kernel(cond, outer=None):
        if cond is None:
            raise ExecutionError(f"{node.label()}: input 'cond' is required")
        taken = then_runner if bool(_scalar(cond, node, "input 'cond'")) else else_runner
        return list(taken.run([], outer or {}))

    return kernel


# ---------------------------------------------------------------- Loop

@register("Loop", since=1)
def loop_factory(node: Node, ctx: BuildContext):
    body, runner = _body(node, ctx, "body")
    # body inputs: (iteration_num, cond, v_1..v_N); outputs: (cond, v_1..v_N, scan_1..scan_K)
    if len(body.inputs) < 2:
        raise InvalidModelError(
            f"{node.label()}: body must take at least 2 inputs (iteration_num, cond), "
            f"got {len(body.inputs)}"
        )
    carried = len(body.inputs) - 2
    # Trailing omitted inputs may be dropped, so M/cond may be missing when N == 0.
    given = max(len(node.inputs) - 2, 0)
    _check_count(node, "loop-carried inputs", carried, given,
                 "the body takes (iteration_num, cond) plus one input per loop-carried value")
    scans = len(body.outputs) - 1 - carried
    if scans < 0:
        raise InvalidModelError(
            f"{node.label()}: body must produce at least {1 + carried} outputs "
            f"(cond plus {carried} loop-carried values), got {len(body.outputs)}"
        )
    _check_count(node, "output count", carried + scans, len(node.outputs),
                 f"{carried} loop-carried + {scans} scan outputs of the body")
    scan_infos = body.outputs[1 + carried:]

    def kernel(trip_count=None, cond=None, *initial, outer=None):
        outer = outer or {}
        limit = None if trip_count is None else int(_scalar(trip_count, node, "input 'M'"))
        keep_going = True if cond is None else bool(_scalar(cond, node, "input 'cond'"))
        values = list(initial)
        collected: list[list[np.ndarray]] = [[] for _ in range(scans)]
        step = 0
        # Like onnxruntime and the ONNX reference, the body's cond is always honoured.
        while keep_going and (limit is None or step < limit):
            outputs = runner.run(
                [np.array(step, dtype=np.int64), np.array(keep_going), *values], outer
            )
            keep_going = bool(_scalar(outputs[0], node, "body output 'cond'"))
            values = list(outputs[1:1 + carried])
            for k in range(scans):
                collected[k].append(outputs[1 + carried + k])
            step += 1
        stacked = [
            _stack(collected[k], 0, node, f"scan output {k}") if collected[k]
            else _empty_like_declared(scan_infos[k])
            for k in range(scans)
        ]
        return values + stacked

    return kernel


# ---------------------------------------------------------------- Scan

def _int_list(node: Node, name: str, length: int, allowed: tuple[int, ...] | None = None) -> list[int]:
    values = list(node.attr(name, [0] * length))
    if len(values) != length:
        raise InvalidModelError(
            f"{node.label()}: attribute '{name}' must have {length} entries, got {len(values)}"
        )
    if allowed is not None and any(v not in allowed for v in values):
        raise InvalidModelError(
            f"{node.label()}: attribute '{name}' entries must be 0 (forward) or 1 (reverse), "
            f"got {values}"
        )
    return [int(v) for v in values]


@register("Scan", since=9)
def scan_factory(node: Node, ctx: BuildContext):
    body, runner = _body(node, ctx, "body")
    num_scan_inputs = int(node.attr("num_scan_inputs"))
    if num_scan_inputs < 1:
        raise InvalidModelError(
            f"{node.label()}: attribute 'num_scan_inputs' must be >= 1, got {num_scan_inputs}"
        )
    states = len(node.inputs) - num_scan_inputs
    if states < 0:
        raise InvalidModelError(
            f"{node.label()}: num_scan_inputs={num_scan_inputs} but the node has only "
            f"{len(node.inputs)} inputs"
        )
    _check_count(node, "body input count", states + num_scan_inputs, len(body.inputs),
                 f"{states} state variables + {num_scan_inputs} scan inputs")
    scans = len(body.outputs) - states
    if scans < 0:
        raise InvalidModelError(
            f"{node.label()}: body must produce at least {states} outputs (one per state "
            f"variable), got {len(body.outputs)}"
        )
    _check_count(node, "output count", states + scans, len(node.outputs),
                 f"{states} final states + {scans} scan outputs of the body")
    in_dirs = _int_list(node, "scan_input_directions", num_scan_inputs, (0, 1))
    in_axes = _int_list(node, "scan_input_axes", num_scan_inputs)
    out_dirs = _int_list(node, "scan_output_directions", scans, (0, 1))
    out_axes = _int_list(node, "scan_output_axes", scans)
    scan_infos = body.outputs[states:]

    def kernel(*inputs, outer=None):
        outer = outer or {}
        values = list(inputs[:states])
        sequences = [np.asarray(x) for x in inputs[states:]]
        axes, length = [], None
        for i, (x, axis) in enumerate(zip(sequences, in_axes)):
            if not -x.ndim <= axis < x.ndim:
                raise ExecutionError(
                    f"{node.label()}: scan input {i} has rank {x.ndim}; "
                    f"scan_input_axes[{i}]={axis} is out of range"
                )
            axis %= x.ndim
            axes.append(axis)
            if length is None:
                length = x.shape[axis]
            elif x.shape[axis] != length:
                raise ExecutionError(
                    f"{node.label()}: scan inputs disagree on sequence length: "
                    f"{length} for input 0, {x.shape[axis]} for input {i}"
                )
        collected: list[list[np.ndarray]] = [[] for _ in range(scans)]
        for step in range(length or 0):
            # Views, not copies (bodies never mutate inputs); the Ellipsis keeps 0-d results arrays.
            slices = [
                x[(slice(None),) * axis + (length - 1 - step if reverse else step, Ellipsis)]
                for x, axis, reverse in zip(sequences, axes, in_dirs)
            ]
            outputs = runner.run(values + slices, outer)
            values = list(outputs[:states])
            for k in range(scans):
                collected[k].append(outputs[states + k])
        stacked = []
        for k in range(scans):
            items = collected[k][::-1] if out_dirs[k] else collected[k]
            stacked.append(
                _stack(items, out_axes[k], node, f"scan output {k}") if items
                else _empty_like_declared(scan_infos[k], out_axes[k])
            )
        return values + stacked

    return kernel


@register("Scan", since=8, until=8)
def scan8_factory(node: Node, ctx: BuildContext):
    """Scan-8: every input has a leading batch axis and the scan axis is 1;
    ``sequence_lens`` (optional first input) gives each batch row's length.

    Runs as one Scan-9 per batch row (its scan axis is then 0); scan outputs
    past a row's length are zeros.
    """
    num_scan_inputs = int(node.attr("num_scan_inputs"))
    directions = node.attr("directions", [0] * num_scan_inputs)
    attrs = {k: v for k, v in node.attrs.items() if k != "directions"}
    attrs["scan_input_directions"] = list(directions)
    per_row = scan_factory(Node("Scan", node.inputs[1:], node.outputs, attrs, node.name, node.domain), ctx)
    states = len(node.inputs) - 1 - num_scan_inputs

    def kernel(sequence_lens, *inputs, outer=None):
        batch = inputs[0].shape[0]
        length = inputs[states].shape[1] if num_scan_inputs else 0
        if sequence_lens is None:
            sequence_lens = np.full(batch, length, dtype=np.int64)
        elif sequence_lens.shape != (batch,) or np.any((sequence_lens < 0) | (sequence_lens > length)):
            raise ExecutionError(
                f"{node.label()}: sequence_lens must have shape ({batch},) with values in [0, {length}], "
                f"got {sequence_lens.tolist()}"
            )
        rows = []
        for b in range(batch):
            n = int(sequence_lens[b])
            row_inputs = [x[b] for x in inputs[:states]] + [x[b, :n] for x in inputs[states:]]
            rows.append(per_row(*row_inputs, outer=outer))
        outputs = [np.stack([row[k] for row in rows]) for k in range(states)]
        for k in range(states, len(node.outputs)):
            parts = [row[k] for row in rows]
            full = np.zeros((batch, length) + parts[0].shape[1:], dtype=parts[0].dtype)
            for b, part in enumerate(parts):
                full[b, : part.shape[0]] = part
            outputs.append(full)
        return outputs

    return kernel
