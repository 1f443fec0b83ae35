"""What ``lstminfer info`` prints: inputs, outputs, op counts, recurrent layers."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .graph import Graph, Node
from .reference import GATES

RECURRENT_OPS = {**GATES, "DynamicQuantizeLSTM": GATES["LSTM"]}  # op -> gates per hidden unit


@dataclass(frozen=True)
class RecurrentLayer:
    node: str
    op_type: str
    direction: str
    input_size: int | None
    hidden_size: int | None
    parameters: int | None
    streamable: bool
    reason: str


def walk_nodes(graph: Graph):
    """Every node of ``graph``, including those inside Loop/If/Scan bodies."""
    for node in graph.nodes:
        yield node
        for sub in node.subgraphs():
            yield from walk_nodes(sub)


def op_counts(graph: Graph) -> Counter:
    return Counter(n.op_type for n in walk_nodes(graph))


def recurrent_layers(graph: Graph, folded=None) -> list[RecurrentLayer]:
    """``folded(name)``: a plan's constant lookup, for weights computed at load (e.g. DequantizeLinear)."""
    constants = dict(graph.initializers)
    for node in graph.nodes:  # Constant nodes carry weights in some exporters' graphs
        if node.op_type == "Constant" and "value" in node.attrs:
            constants[node.outputs[0]] = node.attrs["value"]
    if folded is not None:
        for node in graph.nodes:
            if node.op_type in RECURRENT_OPS:
                for name in node.inputs:
                    value = folded(name) if name and name not in constants else None
                    if isinstance(value, np.ndarray):
                        constants[name] = value
    return [_layer(n, constants) for n in walk_nodes(graph) if n.op_type in RECURRENT_OPS]


def _layer(node: Node, constants: dict[str, np.ndarray]) -> RecurrentLayer:
    direction = node.attr("direction", "forward")
    hidden = node.attr("hidden_size", None)
    W = constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    input_axis = 1 if node.op_type == "DynamicQuantizeLSTM" else 2  # its W is [D, input_size, 4H]
    input_size = int(W.shape[input_axis]) if W is not None and W.ndim == 3 else None
    params = 0
    for i in (1, 2, 3, 7):  # W, R, B, P
        if len(node.inputs) > i and node.inputs[i]:
            value = constants.get(node.inputs[i])
            if value is None:
                params = None
                break
            params += int(value.size)
    if direction == "forward":
        streamable, reason = True, "forward recurrence: state can be carried between chunks"
    else:
        streamable, reason = False, f"direction={direction} needs the whole sequence"
    return RecurrentLayer(node.name, node.op_type, direction, input_size, hidden, params, streamable, reason)


def format_info(model) -> str:
    """Human-readable summary of a loaded ``Model``."""
    graph = model._imported.graph
    lines = [f"model: {model.source}"]
    meta = model._imported
    if meta.producer_name:
        lines.append(f"producer: {meta.producer_name} {meta.producer_version}".rstrip())
    lines.append("opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in graph.opsets.items()))
    lines.append("inputs:")
    lines += [f"  {a.name}: {a.type} {a.shape}" for a in model.get_inputs()]
    lines.append("outputs:")
    lines += [f"  {a.name}: {a.type} {a.shape}" for a in model.get_outputs()]
    counts = op_counts(graph)
    lines.append("ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())))
    layers = recurrent_layers(graph, model._plan.constant)
    lines.append(f"recurrent layers: {len(layers)}")
    runs_on = {step.node.name: step.describe for step in model._plan.steps}
    precision = {step.node.name: getattr(step.kernel, "precision", None) for step in model._plan.steps}
    for layer in layers:
        sizes = f"input={layer.input_size if layer.input_size is not None else '?'} hidden={layer.hidden_size}"
        params = layer.parameters if layer.parameters is not None else "? (weights computed at run time)"
        lines.append(
            f"  {layer.node}: {layer.op_type} {layer.direction} {sizes} parameters={params} "
            f"streamable={'yes' if layer.streamable else 'no'} ({layer.reason})"
        )
        if layer.node in runs_on:  # absent for layers inside Loop/If bodies
            lines.append(f"    runs on: {runs_on[layer.node]}")
        if precision.get(layer.node):
            lines.append(f"    precision: {precision[layer.node]}")
    from .streaming import streamability

    ok, why = streamability(model)
    lines.append(f"streamable: {'yes' if ok else 'no'} ({why})")
    fallback = getattr(model, "fallback_nodes", None)
    if fallback:
        lines.append(f"run by onnxruntime (fallback): {len(fallback)} node(s): " + ", ".join(fallback))
    lines.append(f"backend: {model.backend}")
    lines.append("cpu features: " + cpu_features_text())
    return "\n".join(lines)


def cpu_features_text() -> str:
    try:
        from ._native import _cpu
    except ImportError as e:  # running from a source tree without a build
        return f"unknown (native extension not built: {e})"
    flags = _cpu.features()
    return ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items())


def info(path, *, backend: str = "auto", quantize: str | None = None):
    """``(text, model)`` for ``lstminfer info``: the loaded model's summary; for a model lstminfer
    parses but cannot run, ``(text, None)``: its inputs, outputs, ops and layers, the unsupported
    nodes flagged, and why it cannot stream."""
    from .errors import UnsupportedModelError
    from .model import Model

    try:
        model = Model(path, backend=backend, quantize=quantize)
    except UnsupportedModelError as e:
        return format_unrunnable(path, e), None
    return format_info(model), model


def format_unrunnable(path, error: Exception) -> str:
    """The summary of a model that parses but does not load (``error`` is why)."""
    from .onnx_import import import_model
    from .ops.registry import unsupported_nodes
    from .errors import NotStreamableError
    from .state_pairing import find_pairing

    imported = import_model(path)
    graph = imported.graph
    lines = [f"model: {imported.source}"]
    if imported.producer_name:
        lines.append(f"producer: {imported.producer_name} {imported.producer_version}".rstrip())
    lines.append("opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in graph.opsets.items()))
    lines.append("inputs:")
    lines += [f"  {vi.name}: {vi.dtype} {list(vi.shape) if vi.shape is not None else '?'}" for vi in graph.inputs]
    lines.append("outputs:")
    lines += [f"  {vi.name}: {vi.dtype} {list(vi.shape) if vi.shape is not None else '?'}" for vi in graph.outputs]
    counts = op_counts(graph)
    lines.append("ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())))
    unsupported = unsupported_nodes(graph)
    lines.append(f"runs: no ({len(unsupported) or 'a'} node(s) lstminfer cannot run; "
                 "load(..., fallback='onnxruntime') runs them through onnxruntime)")
    lines.append("unsupported nodes:")
    lines += [f"  UNSUPPORTED {why}" for _, why in unsupported] or [f"  {error}"]
    layers = recurrent_layers(graph)
    lines.append(f"recurrent layers: {len(layers)}")
    for layer in layers:
        lines.append(f"  {layer.node}: {layer.op_type} {layer.direction} hidden={layer.hidden_size} "
                     f"streamable={'yes' if layer.streamable else 'no'} ({layer.reason})")
    try:
        find_pairing(graph)
        why = _streamability_with_fallback(path)
    except NotStreamableError as e:
        why = str(e)
    lines.append(f"streamable: no ({why})")
    return "\n".join(lines)


def _streamability_with_fallback(path) -> str:
    """Why the model cannot stream even with its unsupported nodes run by onnxruntime (if installed)."""
    from .errors import LstminferError
    from .model import Model
    from .streaming import streamability

    unknown = "lstminfer cannot run it; with fallback='onnxruntime' "
    try:
        model = Model(path, fallback="onnxruntime")
    except LstminferError as e:
        return unknown + f"it does not load either: {e}"
    ok, why = streamability(model)
    return unknown + ("it would stream: " if ok else "it still could not: ") + why
