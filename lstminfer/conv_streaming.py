"""Streaming through convolutions and pools over time: the carried input history.

A Conv (or MaxPool/AveragePool) sliding over the time axis with stride 1, padded only at the
start by ``(kernel-1)*dilation`` frames (its own ``pads``, a Pad node before it, or both: PyTorch's
``F.pad(x, ((k-1)*d, 0))`` + ``nn.Conv1d(padding=0)``), is causal: output frame t reads input
frames t-(k-1)d .. t. Chunk by chunk it equals the whole sequence when each chunk is prefixed
by the last (k-1)d frames of the input before it, and the first chunk by the padding itself. So
the streaming graph gets, in front of each such node, a ``lstminfer:TimeHistory`` node that
concatenates the carried frames and the chunk along time and hands back the new last frames
as a carried state (a ``HistorySlot``); the node itself then runs unpadded in time.

A window padded at the start by fewer frames (none: ``nn.Conv1d(padding=0)``, T in, T-(k-1)d
out) or striding over time (``nn.MaxPool1d(2)``: floor division) streams too: its TimeHistory
also carries a *phase* (a ``PhaseSlot``: where, in the carried frames + the chunk, the next
output window starts), and hands the node only the frames of the whole windows that start in
this chunk. A chunk may then yield no output frame (too short yet, or between strides): the
node's output and everything per-step after it have 0 frames on time, a recurrent node steps
0 times and keeps its state. A last-step head (``fc(y[:, -1])``) of such a model reads the last
frame produced so far: a one-frame history (state ``<node>:last_frame``) in front of its pick
keeps it, so a chunk that produced no frame repeats the previous head (before the first frame:
the head of a zero frame).

Anything else that slides over time cannot stream exactly, and says why: padding at the end
(look-ahead: each output needs frames that have not arrived), padding at the start by more than
(k-1)d frames (outputs made of padding alone), ceil_mode with a stride over time (the last window
depends on where the sequence ends).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .conv_fusion import STREAMED_TIME_ATTR
from .errors import LstminferError, NotStreamableError
from .graph import Node, ValueInfo
from .plan import Plan
from .state_pairing import Pairing, StateSlot

HISTORY_OP, HISTORY_DOMAIN = "TimeHistory", "lstminfer"
WINDOWED_OPS = ("Conv", "MaxPool", "AveragePool")
# every free input dim set to these: what changes with them is time (far enough apart that a
# few strides over time still leave different lengths, long enough for unpadded windows)
_PROBE_LENGTHS = (32, 64)
_HISTORY_PREFIX = "__stream_history"
CAUSAL_HINT = ("export a causal convolution instead: pad only the start of the time axis by (kernel-1)*dilation "
               "frames, e.g. nn.Conv1d(..., padding=0) applied to F.pad(x, ((kernel-1)*dilation, 0))")


@dataclass(frozen=True, eq=False)
class HistorySlot(StateSlot):
    """The last frames of a windowed node's input, carried between chunks ([1, C, ..., frames])."""

    initial: Any = None  # the history before the first chunk: the padding the whole sequence would see
    stride: int = 1  # the window's stride over time
    frames: int = 0  # carried along time
    phased: bool = False  # a PhaseSlot goes with it: chunks may yield other numbers of frames than they hold


@dataclass(frozen=True, eq=False)
class PhaseSlot(HistorySlot):
    """Where the next output window starts in the carried frames + the next chunk (int64 [1]):
    what makes a stride or a short start padding stream."""


@dataclass(frozen=True)
class _Window:
    node: Node
    time_axis: int  # of the node's input X
    frames: int  # (kernel-1)*dilation along time: the history carried
    source: str  # the unpadded per-step value the history is prefixed to
    fill: float  # what the whole sequence pads the start with
    shape: tuple[int, ...]  # X's shape in the probe (channels and other spatial sizes)
    dtype: np.dtype
    stride: int = 1
    begin: int = -1  # the start padding (< frames: the first outputs wait for whole windows); -1: frames

    @property
    def phased(self) -> bool:
        return self.stride != 1 or self.begin not in (-1, self.frames)


@dataclass(frozen=True)
class _Pick:
    """A node picking the last step of a per-step value (y[:, -1]) in a model whose chunks may yield
    no frame: it gets a one-frame history of that value."""

    node: Node
    time_axis: int
    batch_axis: int
    shape: tuple[int, ...]
    dtype: np.dtype


def frames_to_fill(slots) -> int:
    """Input frames after which every window of ``slots`` (``HistorySlot``s) has yielded frames
    for sure: a bound for checks that want whole-sequence outputs of some length."""
    scale, total = 1, 0
    for s in slots:
        if isinstance(s, HistorySlot) and not isinstance(s, PhaseSlot):
            scale *= s.stride
            total += s.frames + s.stride
    return total * scale


def with_time_history(pairing: Pairing, model_plan: Plan, keeping=None) -> Pairing:
    """``pairing`` with a TimeHistory in front of every windowed node over time, or itself when no
    node slides over time; ``NotStreamableError`` naming a node that cannot stream.
    ``keeping(names)``: a plan of the model whose values include ``names`` (a load-time fusion may
    have joined a pool to the conv before it, so ``model_plan`` lacks the value between them)."""
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
    pick_candidates = [n for n in graph.nodes if n.op_type in ("Gather", "Slice") and n.domain in ("", "ai.onnx")
                       and n.inputs and n.inputs[0] not in pairing.state_outputs]
    for node in pick_candidates:
        wanted.update(name for name in node.inputs[:5] if name)
    names = sorted(wanted)
    if keeping is not None and not all(_computes(model_plan, n) for n in names):
        model_plan = keeping(names)
    probes = _probe(model_plan, names)
    windows = [w for w in (_window(node, producers, readers, probes) for node in candidates) if w is not None]
    if not windows:
        return pairing
    picks = [p for p in (_pick(node, probes) for node in pick_candidates) if p is not None] \
        if any(w.phased for w in windows) else []
    return _rewrite(pairing, windows, picks)


# ---------------------------------------------------------------- finding the windows


def _pad_before(node: Node, producers, readers) -> Node | None:
    pad = producers.get(node.inputs[0])
    if pad is None or pad.op_type != "Pad" or readers.get(node.inputs[0], 0) != 1:
        return None
    return pad


def _computes(plan: Plan, name: str) -> bool:
    try:
        plan.output_slot(name)
    except KeyError:
        return False
    return True


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
    if probes[0][source].size == 0 or probes[1][source].size == 0:
        return None
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
    if begin > span:
        raise NotStreamableError(f"{where}: it pads the start of the time axis by {begin} frame(s) where a causal "
                                 f"window of kernel {k}, dilation {d} needs at most {span}: its first "
                                 f"{begin - span} output frame(s) would read padding alone; " + CAUSAL_HINT)
    if s != 1 and node.op_type != "Conv" and node.attrs.get("ceil_mode", 0):
        raise NotStreamableError(f"{where}: ceil_mode=1 with a stride of {s} over time: whether its last window "
                                 "is made depends on where the whole sequence ends; use ceil_mode=0")
    if fill is None and begin > 0:
        raise NotStreamableError(f"{where}: its padding is not a constant (or, for AveragePool, is left out of "
                                 "the average), so no carried history reproduces the first frames")
    return _Window(node, t, span, source, 0.0 if fill is None else fill, tuple(first), probes[0][source].dtype,
                   s, begin)


def _pick(node: Node, probes) -> _Pick | None:
    """The last-step pick ``node`` makes (Gather index -1, Slice [-1:] along an axis that grows
    with the input), or None."""
    data = node.inputs[0]
    first, second = (np.shape(p[data]) for p in probes)
    if len(first) != len(second):
        return None
    rank = len(first)
    if node.op_type == "Gather":
        axis = int(node.attrs.get("axis", 0)) % max(rank, 1)
        index = np.asarray(probes[0][node.inputs[1]]) if len(node.inputs) > 1 else None
        if index is None or index.size != 1 or int(index.reshape(-1)[0]) != -1:
            return None
    else:
        if "starts" in node.attrs or len(node.inputs) < 3:
            return None
        starts = np.asarray(probes[0][node.inputs[1]]).reshape(-1)
        axes = np.asarray(probes[0][node.inputs[3]]).reshape(-1) if len(node.inputs) > 3 and node.inputs[3] \
            else np.arange(starts.size)
        last = [int(a) % rank for a, b in zip(axes, starts) if int(b) == -1]
        if len(last) != 1:
            return None
        axis = last[0]
    if first[axis] == second[axis]:
        return None  # not the time axis
    others = [a for a in range(rank) if a != axis and first[a] != second[a]]
    if len(others) > 1:
        raise NotStreamableError(f"{node.label()} prevents streaming: it picks the last step of a value whose "
                                 f"batch axis is ambiguous (axes {others} grow with the input)")
    batch = others[0] if others else next((a for a in range(rank) if a != axis and first[a] == 1), 0)
    shape = tuple(1 if a in (axis, batch) else n for a, n in enumerate(first))
    return _Pick(node, axis, batch, shape, probes[0][data].dtype)


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


def _rewrite(pairing: Pairing, windows: list[_Window], picks: list[_Pick]) -> Pairing:
    graph = pairing.graph
    by_node = {id(w.node): w for w in windows}
    picked = {id(p.node): p for p in picks}
    nodes: list[Node] = []
    slots: list[HistorySlot] = []
    for node in graph.nodes:
        p = picked.get(id(node))
        if p is not None:  # y[:, -1] reads [last frame so far, chunk's frames][-1]: defined for 0 frames too
            index = len(slots)
            label = node.name or node.outputs[0]
            state_in, state_out = f"{_HISTORY_PREFIX}_in_{index}", f"{_HISTORY_PREFIX}_out_{index}"
            extended = f"{_HISTORY_PREFIX}_x_{index}"
            nodes.append(Node(HISTORY_OP, (node.inputs[0], state_in), (extended, state_out),
                              {"axis": p.time_axis, "frames": 1}, name=f"{label}/last_frame", domain=HISTORY_DOMAIN))
            nodes.append(replace(node, inputs=(extended,) + tuple(node.inputs[1:])))
            slots.append(HistorySlot(key=f"{label}:last_frame", node=node, kind="history", original_input="",
                                     stream_input=state_in, stream_output=state_out, batch_axis=p.batch_axis,
                                     initial=np.zeros(p.shape, p.dtype), frames=1))
            continue
        w = by_node.get(id(node))
        if w is None:
            nodes.append(node)
            continue
        index = len(slots)
        label = node.name or node.outputs[0]
        state_in, state_out = f"{_HISTORY_PREFIX}_in_{index}", f"{_HISTORY_PREFIX}_out_{index}"
        extended = f"{_HISTORY_PREFIX}_x_{index}"
        history_inputs, history_outputs = (w.source, state_in), (extended, state_out)
        attrs = {"axis": w.time_axis, "frames": w.frames}
        if w.phased:
            phase_in, phase_out = f"{_HISTORY_PREFIX}_phase_in_{index}", f"{_HISTORY_PREFIX}_phase_out_{index}"
            history_inputs += (phase_in,)
            history_outputs += (phase_out,)
            attrs["stride"] = w.stride
        nodes.append(Node(HISTORY_OP, history_inputs, history_outputs, attrs, name=f"{label}/history",
                          domain=HISTORY_DOMAIN))
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
                                 stream_input=state_in, stream_output=state_out, batch_axis=0, initial=initial,
                                 stride=w.stride, frames=w.frames, phased=w.phased))
        if w.phased:  # the first window starts after the frames the start padding does not cover
            slots.append(PhaseSlot(key=f"{label}:phase", node=node, kind="phase", original_input="",
                                   stream_input=phase_in, stream_output=phase_out, batch_axis=0,
                                   initial=np.array([w.frames - w.begin], np.int64), stride=w.stride,
                                   frames=w.frames, phased=True))
    at = len(pairing.data_inputs) + len(pairing.slots)  # the carried states follow the data inputs, in slot order
    inputs = list(graph.inputs[:at]) + [ValueInfo(s.stream_input, s.initial.dtype) for s in slots] \
        + list(graph.inputs[at:])
    outputs = list(graph.outputs) + [ValueInfo(s.stream_output) for s in slots]
    stream_graph = replace(graph, nodes=nodes, inputs=inputs, outputs=outputs)
    return replace(pairing, graph=stream_graph, slots=pairing.slots + tuple(slots))
