"""Streaming through convolutions and pools over time: the carried input history.

A Conv (or MaxPool/AveragePool) sliding over the time axis with stride 1, padded only at the
start by ``(kernel-1)*dilation`` frames (its own ``pads``, a Pad node before it, or both: PyTorch's
``F.pad(x, ((k-1)*d, 0))`` + ``nn.Conv1d(padding=0)``), is causal: output frame t reads input
frames t-(k-1)d .. t. Chunk by chunk it equals the whole sequence when each chunk is prefixed
by the last (k-1)d frames of the input before it, and the first chunk by the padding itself. So
the streaming graph gets, in front of each such node, a ``lstminfer:TimeHistory`` node that
concatenates the carried frames and the chunk along time and hands back the new last frames
as a carried state (a ``HistorySlot``); the node itself then runs unpadded in time.

Anything else that slides over time cannot stream exactly, and says why: padding at the end
(look-ahead: each output needs frames that have not arrived), a stride over time (a chunk's
outputs depend on where it starts), padding at the start other than (k-1)d frames (the stream
would shift or shorten the sequence).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import LstminferError, NotStreamableError
from .graph import Node, ValueInfo
from .plan import Plan
from .state_pairing import Pairing, StateSlot

HISTORY_OP, HISTORY_DOMAIN = "TimeHistory", "lstminfer"
# On a windowed node fed by a TimeHistory: the axis of its input that is time (it is unpadded there).
STREAMED_TIME_ATTR = "lstminfer.streamed_time_axis"
WINDOWED_OPS = ("Conv", "MaxPool", "AveragePool")
_PROBE_LENGTHS = (7, 8)  # every free input dim set to these: what changes with them is time
_HISTORY_PREFIX = "__stream_history"
CAUSAL_HINT = ("export a causal convolution instead: pad only the start of the time axis by (kernel-1)*dilation "
               "frames, e.g. nn.Conv1d(..., padding=0) applied to F.pad(x, ((kernel-1)*dilation, 0))")


@dataclass(frozen=True, eq=False)
class HistorySlot(StateSlot):
    """The last frames of a windowed node's input, carried between chunks ([1, C, ..., frames])."""

    initial: Any = None  # the history before the first chunk: the padding the whole sequence would see


@dataclass(frozen=True)
class _Window:
    node: Node
    time_axis: int  # of the node's input X
    frames: int  # (kernel-1)*dilation along time: the history carried
    source: str  # the unpadded per-step value the history is prefixed to
    fill: float  # what the whole sequence pads the start with
    shape: tuple[int, ...]  # X's shape in the probe (channels and other spatial sizes)
    dtype: np.dtype


def with_time_history(pairing: Pairing, model_plan: Plan) -> Pairing:
    """``pairing`` with a TimeHistory in front of every causal windowed node over time, or itself
    when no node slides over time; ``NotStreamableError`` naming a node that cannot stream."""
    graph = pairing.graph
    candidates = [n for n in graph.nodes if n.op_type in WINDOWED_OPS and n.domain in ("", "ai.onnx")]
    if not candidates:
        return pairing
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    readers: dict[str, int] = {}
    for n in graph.nodes:
        for name in n.inputs:
            readers[name] = readers.get(name, 0) + 1
    wanted = set()
    for node in candidates:
        wanted.update(node.inputs[:2] if node.op_type == "Conv" else node.inputs[:1])
        pad = _pad_before(node, producers, readers)
        if pad is not None:
            wanted.update(name for name in pad.inputs[:2] if name)
    probes = _probe(model_plan, sorted(wanted))
    windows = [w for w in (_window(node, producers, readers, probes) for node in candidates) if w is not None]
    if not windows:
        return pairing
    return _rewrite(pairing, windows)


# ---------------------------------------------------------------- finding the windows


def _pad_before(node: Node, producers, readers) -> Node | None:
    pad = producers.get(node.inputs[0])
    if pad is None or pad.op_type != "Pad" or readers.get(node.inputs[0], 0) != 1:
        return None
    return pad


def _probe(plan: Plan, names: list[str]) -> list[dict[str, np.ndarray]]:
    """The values of ``names`` in runs of the model with every free input dim 7, then 8."""
    wanted = tuple(plan.output_slot(n) for n in names)
    runs = []
    for length in _PROBE_LENGTHS:
        feeds = []
        for vi in plan.graph.inputs:
            shape = tuple(d if isinstance(d, int) else length for d in (vi.shape or ()))
            feeds.append(np.zeros(shape, dtype=vi.dtype or np.float32))
        try:
            values = plan.execute(feeds, wanted)
        except LstminferError as e:
            raise NotStreamableError(f"could not find the time axis of the convolutions: running the model with "
                                     f"every free input dim {length} failed: {e}") from e
        runs.append(dict(zip(names, values)))
    return runs


def _window(node: Node, producers, readers, probes) -> _Window | None:
    """How ``node`` slides over time (None: it does not), or NotStreamableError saying why it cannot stream."""
    x = node.inputs[0]
    pad = _pad_before(node, producers, readers)
    source = pad.inputs[0] if pad is not None else x
    first, second = (np.shape(p[source]) for p in probes)
    timed = [a for a in range(2, len(first)) if first[a] != second[a]]
    if not timed:
        return None  # time is the batch axis, or does not reach this node: the time analysis decides
    if len(timed) > 1:
        raise NotStreamableError(f"{node.label()} prevents streaming: several of its spatial axes {timed} "
                                 "grow with the input, so which one is time is ambiguous")
    t = timed[0]
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        raise NotStreamableError(f"{node.label()} prevents streaming: its Indices output counts positions from "
                                 "the start of the whole input, which a chunk does not know")
    spatial = len(first) - 2
    kernel, strides, dilations, pads, auto_pad = _attrs(node, probes[0], spatial)
    i = t - 2
    k, s, d = kernel[i], strides[i], dilations[i]
    span = (k - 1) * d
    begin, end = pads[i], pads[i + spatial]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        small = span // 2
        begin, end = (small, span - small) if auto_pad == "SAME_UPPER" else (span - small, small)
        if spatial > 1:
            raise NotStreamableError(f"{node.label()} prevents streaming: auto_pad={auto_pad} with several "
                                     "spatial axes; give explicit pads")
    fill = _own_fill(node)
    if pad is not None:
        pad_begin, pad_end, pad_fill = _pad_amounts(pad, probes[0], len(first), t, node)
        if begin and pad_begin and pad_fill != fill:
            fill = None  # two different fills at the start: no one history reproduces both
        elif pad_begin:
            fill = pad_fill
        begin, end = begin + pad_begin, end + pad_end
    if k == 1 and s == 1 and begin == 0 and end == 0:
        return None  # one frame in, one frame out
    where = f"{node.label()} prevents streaming"
    if end > 0:
        raise NotStreamableError(f"{where}: it pads the end of the time axis by {end} frame(s), so each output "
                                 f"frame has a look-ahead of {end} frame(s) that a stream has not received yet; "
                                 + CAUSAL_HINT)
    if s != 1:
        raise NotStreamableError(f"{where}: it strides over the time axis by {s}, so a chunk's outputs depend on "
                                 "where the chunk starts; use stride 1 over time (pool over features instead)")
    if begin != span:
        raise NotStreamableError(f"{where}: it pads the start of the time axis by {begin} frame(s) where a causal "
                                 f"window of kernel {k}, dilation {d} needs {span}: its output would be "
                                 f"{abs(span - begin)} frame(s) {'shorter' if begin < span else 'longer'} than "
                                 "its input; " + CAUSAL_HINT)
    if fill is None:
        raise NotStreamableError(f"{where}: its padding is not a constant (or, for AveragePool, is left out of "
                                 "the average), so no carried history reproduces the first frames")
    return _Window(node, t, span, source, fill, tuple(first), probes[0][source].dtype)


def _attrs(node: Node, probe, spatial: int):
    if node.op_type == "Conv":
        kernel = node.attrs.get("kernel_shape") or np.shape(probe[node.inputs[1]])[2:]
    else:
        kernel = node.attrs.get("kernel_shape")
    if not kernel:
        raise NotStreamableError(f"{node.label()} prevents streaming: its kernel shape is unknown")
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        auto_pad = "NOTSET"
    return ([int(v) for v in kernel], [int(v) for v in node.attrs.get("strides", [1] * spatial)],
            [int(v) for v in node.attrs.get("dilations", [1] * spatial)],
            [int(v) for v in node.attrs.get("pads", [0] * (2 * spatial))], auto_pad)


def _own_fill(node: Node) -> float | None:
    """What the node's own pads read as: zeros for Conv, -inf for MaxPool; None for an AveragePool
    that leaves its pads out of the count (no value does that)."""
    if node.op_type == "MaxPool":
        return -np.inf
    if node.op_type == "AveragePool" and not node.attrs.get("count_include_pad", 0):
        return None
    return 0.0


def _pad_amounts(pad: Node, probe, rank: int, t: int, node: Node) -> tuple[int, int, float | None]:
    """(begin, end, fill) a Pad node adds on axis ``t`` (fill None: not a constant); it must pad
    nothing else."""
    mode = pad.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if "pads" in pad.attrs:
        pads = [int(v) for v in pad.attrs["pads"]]
        value = float(pad.attrs.get("value", 0.0))
    else:
        pads = [int(v) for v in np.asarray(probe[pad.inputs[1]]).reshape(-1)]
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2]:
            raise NotStreamableError(f"{pad.label()} before {node.label()} prevents streaming: only a zero pad "
                                     "value is supported")
        if len(pad.inputs) > 3 and pad.inputs[3]:
            raise NotStreamableError(f"{pad.label()} before {node.label()} prevents streaming: its 'axes' input "
                                     "is not supported")
    if len(pads) != 2 * rank or any(p for a, p in enumerate(pads) if a % rank != t):
        raise NotStreamableError(f"{pad.label()} before {node.label()} prevents streaming: it pads axes other "
                                 f"than time (pads {pads})")
    return pads[t], pads[t + rank], (value if mode == "constant" else None)


# ---------------------------------------------------------------- the rewrite


def _rewrite(pairing: Pairing, windows: list[_Window]) -> Pairing:
    graph = pairing.graph
    by_node = {id(w.node): w for w in windows}
    nodes: list[Node] = []
    slots: list[HistorySlot] = []
    for node in graph.nodes:
        w = by_node.get(id(node))
        if w is None:
            nodes.append(node)
            continue
        index = len(slots)
        label = node.name or node.outputs[0]
        state_in, state_out = f"{_HISTORY_PREFIX}_in_{index}", f"{_HISTORY_PREFIX}_out_{index}"
        extended = f"{_HISTORY_PREFIX}_x_{index}"
        nodes.append(Node(HISTORY_OP, (w.source, state_in), (extended, state_out),
                          {"axis": w.time_axis, "frames": w.frames}, name=f"{label}/history", domain=HISTORY_DOMAIN))
        spatial = len(w.shape) - 2
        attrs = dict(node.attrs)
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        pads[w.time_axis - 2] = pads[w.time_axis - 2 + spatial] = 0
        attrs.update(pads=pads, auto_pad="NOTSET")
        attrs[STREAMED_TIME_ATTR] = w.time_axis
        nodes.append(replace(node, inputs=(extended,) + tuple(node.inputs[1:]), attrs=attrs))
        shape = (1,) + w.shape[1:w.time_axis] + (w.frames,) + w.shape[w.time_axis + 1:]
        initial = np.full(shape, w.fill, dtype=w.dtype)
        slots.append(HistorySlot(key=f"{label}:history", node=node, kind="history", original_input="",
                                 stream_input=state_in, stream_output=state_out, batch_axis=0, initial=initial))
    at = len(pairing.data_inputs) + len(pairing.slots)  # the carried states follow the data inputs, in slot order
    inputs = list(graph.inputs[:at]) + [ValueInfo(s.stream_input, s.initial.dtype) for s in slots] \
        + list(graph.inputs[at:])
    outputs = list(graph.outputs) + [ValueInfo(s.stream_output) for s in slots]
    stream_graph = replace(graph, nodes=nodes, inputs=inputs, outputs=outputs)
    return replace(pairing, graph=stream_graph, slots=pairing.slots + tuple(slots))
