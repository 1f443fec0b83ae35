"""Where a model's recurrent state lives, and the graph a stream runs.

State is kept AT THE RECURRENT NODES: for every forward LSTM/GRU/RNN node,
the state carried from one chunk to the next is its (Y_h[, Y_c]). The
streaming graph is the model's graph with each recurrent node's
initial_h/initial_c replaced by a fresh graph input and its Y_h/Y_c added
as graph outputs, so one run of one plan steps every layer at once.

Graph inputs that only feed initial_h/initial_c (directly or through the
exporter's glue: PyTorch's per-layer Slice of h0, ...) are *state inputs*;
graph outputs that copy Y_h/Y_c only through data movement (PyTorch's Concat
of h_n) are *state outputs*. A stream neither takes nor returns them: their
glue is dead code in the streaming plan. An output that computes something
from the final state (a head, ``fc(h_n[-1])``) is a data output: each chunk
gives it at the chunk's last step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from .errors import NotStreamableError
from .graph import Graph, Node, ValueInfo

# onnxruntime's DynamicQuantizeLSTM (com.microsoft) is an LSTM with its inputs and outputs in the same places.
RECURRENT_OPS = ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM")
_RECURRENT_DOMAINS = {"DynamicQuantizeLSTM": ("com.microsoft",)}
# Input index of initial_h/initial_c and output index of Y_h/Y_c, per state kind.
STATE_PORTS = {"LSTM": (("h", 5, 1), ("c", 6, 2)), "GRU": (("h", 5, 1),), "RNN": (("h", 5, 1),),
               "DynamicQuantizeLSTM": (("h", 5, 1), ("c", 6, 2))}
_SEQUENCE_LENS = 4
_STATE_INPUT_PREFIX = "__stream_state_in"
_STATE_OUTPUT_PREFIX = "__stream_state_out"
# Ops that only move or pick state elements: an output reaching Y_h/Y_c through these alone is a state copy.
_DATA_MOVEMENT = {"Identity", "Concat", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Slice", "Gather", "Split",
                  "Cast", "Flatten", "Expand"}


@dataclass(frozen=True)
class StateSlot:
    """One carried state tensor: initial_h or initial_c of one recurrent node."""

    key: str  # public name: the node's Y_h/Y_c output name (or "<node>:Y_h" if it had none)
    node: Node  # the ORIGINAL node
    kind: str  # "h" | "c"
    original_input: str  # its initial_h/initial_c in the original graph ("" if omitted)
    stream_input: str  # graph input of the streaming graph that replaces it
    stream_output: str  # the node's Y_h/Y_c in the streaming graph
    batch_axis: int  # 1 with layout 0 ([D, B, H]), 0 with layout 1 ([B, D, H])


@dataclass(frozen=True)
class Pairing:
    graph: Graph  # the streaming graph
    slots: tuple[StateSlot, ...]
    data_inputs: tuple[ValueInfo, ...]
    data_outputs: tuple[ValueInfo, ...]
    state_inputs: tuple[str, ...]  # original graph inputs that only carry state
    state_outputs: tuple[str, ...]  # original graph outputs computed only from Y_h/Y_c


def is_recurrent(node: Node) -> bool:
    """A node whose state streams: LSTM/GRU/RNN, or onnxruntime's DynamicQuantizeLSTM."""
    return node.op_type in RECURRENT_OPS and node.domain in _RECURRENT_DOMAINS.get(node.op_type, ("", "ai.onnx"))


def walk(graph: Graph):
    for node in graph.nodes:
        yield node
        for sub in node.subgraphs():
            yield from walk(sub)


def state_input_names(graph: Graph) -> list[str]:
    """The graph inputs that only carry an initial recurrent state (h0/c0 and their glue)."""
    consumers = _consumers(graph)
    graph_outputs = {vi.name for vi in graph.outputs}
    return [vi.name for vi in graph.inputs if _only_feeds_initial_state(vi.name, consumers, graph_outputs)]


def find_pairing(graph: Graph) -> Pairing:
    """Analyse ``graph``; raise ``NotStreamableError`` naming the node that prevents streaming."""
    recurrent = _check_recurrent_nodes(graph)
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    constants = set(graph.initializers)

    state_inputs = state_input_names(graph)
    data_inputs = [vi for vi in graph.inputs if vi.name not in state_inputs]
    for node in recurrent:
        for kind, port, _ in STATE_PORTS[node.op_type]:
            name = node.inputs[port] if port < len(node.inputs) else ""
            _check_initial_state_source(node, kind, name, producers, set(state_inputs) | constants)
    state_outputs = [vi.name for vi in graph.outputs if _only_from_final_state(vi.name, producers, constants)]
    data_outputs = [vi for vi in graph.outputs if vi.name not in state_outputs]
    if not data_outputs:
        raise NotStreamableError(
            f"every output of the model ({', '.join(state_outputs)}) is a copy of a recurrent state (h_n/c_n): "
            "a stream would return nothing; read the state with Stream.state, or export a head on it")

    slots, nodes = _rewrite_nodes(graph, recurrent)
    stream_inputs = list(data_inputs)
    stream_inputs += [ValueInfo(s.stream_input, _state_dtype(graph, s.node)) for s in slots]
    # State inputs stay declared (their glue still reads them) but are never fed: the glue is dead.
    stream_inputs += [vi for vi in graph.inputs if vi.name in state_inputs]
    stream_outputs = list(data_outputs) + [ValueInfo(s.stream_output) for s in slots]
    stream_graph = Graph(nodes=nodes, inputs=stream_inputs, outputs=stream_outputs,
                         initializers=graph.initializers, value_info=graph.value_info,
                         opsets=graph.opsets, name=graph.name)
    return Pairing(stream_graph, tuple(slots), tuple(data_inputs), tuple(data_outputs),
                   tuple(state_inputs), tuple(state_outputs))


def _check_recurrent_nodes(graph: Graph) -> list[Node]:
    for node in graph.nodes:
        for sub in node.subgraphs():
            inner = next((n for n in walk(sub) if n.op_type in RECURRENT_OPS), None)
            if inner is not None:
                raise NotStreamableError(
                    f"{node.label()} runs {inner.label()} inside its body: state cannot be carried "
                    "between chunks through a subgraph (only top-level LSTM/GRU/RNN nodes stream)"
                )
    recurrent = [n for n in graph.nodes if is_recurrent(n)]
    if not recurrent:
        raise NotStreamableError("the model has no LSTM, GRU or RNN node: there is no state to carry")
    for node in recurrent:
        direction = node.attr("direction", "forward")
        if direction != "forward":
            raise NotStreamableError(
                f"{node.label()}: direction='{direction}' needs the whole sequence; "
                "only forward layers can run chunk by chunk"
            )
        if len(node.inputs) > _SEQUENCE_LENS and node.inputs[_SEQUENCE_LENS]:
            raise NotStreamableError(
                f"{node.label()}: input sequence_lens ('{node.inputs[_SEQUENCE_LENS]}') is given; "
                "per-sequence lengths are not supported when streaming"
            )
    return recurrent


def _consumers(graph: Graph) -> dict[str, list[tuple[Node, int]]]:
    """name -> (node, input index) reading it; index -1 for reads from a subgraph body."""
    out: dict[str, list[tuple[Node, int]]] = {}
    for node in graph.nodes:
        for i, name in enumerate(node.inputs):
            if name:
                out.setdefault(name, []).append((node, i))
        for sub in node.subgraphs():
            for name in sub.free_names():
                out.setdefault(name, []).append((node, -1))
    return out


def _only_feeds_initial_state(name: str, consumers, graph_outputs: set[str]) -> bool:
    """True if every path from ``name`` ends at a recurrent initial_h/initial_c (or a Shape)."""
    reached_state = False
    stack, seen = [name], {name}
    while stack:
        value = stack.pop()
        if value in graph_outputs:
            return False
        for node, index in consumers.get(value, ()):
            if node.op_type in RECURRENT_OPS:
                if index not in {port for _, port, _ in STATE_PORTS[node.op_type]}:
                    return False
                reached_state = True
            elif node.op_type == "Shape":
                continue  # shapes only: e.g. the batch size for zero states
            elif index < 0:
                return False
            else:
                for out in node.outputs:
                    if out and out not in seen:
                        seen.add(out)
                        stack.append(out)
    return reached_state


def _sources(name: str, producers) -> Iterator[tuple[str, Node | None]]:
    """Where ``name`` is computed from, walking up through ordinary nodes: each graph input or
    initializer reached (producer None) and each recurrent op output reached, once. Shape nodes
    end a path: only a shape flows through them, never data or state."""
    stack, seen = ([name] if name else []), set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        producer = producers.get(value)
        if producer is None or producer.op_type in RECURRENT_OPS:
            yield value, producer
        elif producer.op_type != "Shape":
            stack.extend(i for i in producer.inputs if i)


def _check_initial_state_source(node: Node, kind: str, name: str, producers, allowed: set[str]) -> None:
    """initial_h/c must come from state inputs, constants or shapes, never from the data."""
    for value, producer in _sources(name, producers):
        if producer is None:  # a graph input or an initializer
            if value not in allowed:
                raise NotStreamableError(
                    f"{node.label()}: its initial_{kind} ('{name}') is computed from the data "
                    f"input '{value}', so it cannot be replaced by the carried state"
                )
        else:
            raise NotStreamableError(
                f"{node.label()}: its initial_{kind} ('{name}') is computed from the output of "
                f"{producer.label()} (an encoder-decoder hand-off), which streaming cannot carry"
            )


def _only_from_final_state(name: str, producers, constants: set[str]) -> bool:
    """True if ``name`` copies recurrent Y_h/Y_c only (plus constants) through data movement;
    False for a graph input reached, a Y output, or any op that computes (a head on the state)."""
    reached_state = False
    stack, seen = [name], set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        producer = producers.get(value)
        if producer is None:  # a graph input (data or state) or an initializer
            if value in constants:
                continue
            return False
        if producer.op_type in RECURRENT_OPS:
            if producer.outputs.index(value) not in {out for _, _, out in STATE_PORTS[producer.op_type]}:
                return False
            reached_state = True
        elif producer.op_type in ("Constant", "Shape"):
            continue  # no data flows through: a constant, or only a shape
        elif producer.op_type in _DATA_MOVEMENT:
            # the moved data only: indices, shapes and axes inputs are not state
            stack.extend(i for i in (producer.inputs if producer.op_type == "Concat" else producer.inputs[:1]) if i)
        else:
            return False
    return reached_state


def _rewrite_nodes(graph: Graph, recurrent: list[Node]) -> tuple[list[StateSlot], list[Node]]:
    slots: list[StateSlot] = []
    nodes: list[Node] = []
    for node in graph.nodes:
        if node not in recurrent:
            nodes.append(node)
            continue
        index = recurrent.index(node)
        layout = node.attr("layout", 0)
        inputs = list(node.inputs) + [""] * (8 - len(node.inputs))
        outputs = list(node.outputs) + [""] * (3 - len(node.outputs))
        for kind, in_port, out_port in STATE_PORTS[node.op_type]:
            stream_input = f"{_STATE_INPUT_PREFIX}_{index}_{kind}"
            if not outputs[out_port]:
                outputs[out_port] = f"{_STATE_OUTPUT_PREFIX}_{index}_{kind}"
            key = node.outputs[out_port] if out_port < len(node.outputs) and node.outputs[out_port] else \
                f"{node.name or node.outputs[0]}:Y_{kind}"
            slots.append(StateSlot(
                key=key, node=node, kind=kind, original_input=node.inputs[in_port] if in_port < len(node.inputs) else "",
                stream_input=stream_input, stream_output=outputs[out_port],
                batch_axis=1 if layout == 0 else 0,
            ))
            inputs[in_port] = stream_input
        n_in = len(_inputs_of(node.op_type))
        n_out = max(p for _, _, p in STATE_PORTS[node.op_type]) + 1
        nodes.append(replace(node, inputs=tuple(inputs[:n_in]), outputs=tuple(outputs[:n_out])))
    return slots, nodes


def _inputs_of(op: str) -> tuple[str, ...]:
    if op == "DynamicQuantizeLSTM":
        return ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P",
                "W_scale", "W_zero_point", "R_scale", "R_zero_point")
    return ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")[: 8 if op == "LSTM" else 6]


def _state_dtype(graph: Graph, node: Node) -> np.dtype | None:
    W = graph.initializers.get(node.inputs[1])
    if W is not None and W.dtype.kind == "f":  # (int8 W: a DynamicQuantizeLSTM, whose state is X's type)
        return W.dtype
    vi = graph.value_info.get(node.inputs[0])
    return vi.dtype if vi is not None else None
