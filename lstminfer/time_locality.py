"""Static check that a streaming graph treats every time step on its own.

Running a model chunk by chunk equals running it on the whole sequence when
the recurrent nodes carry their state and every other node that sees a
per-step value acts on each time step separately. We follow the time axis
of every value from the data inputs and the recurrent Y outputs through the
live nodes; a node that may mix time steps (a reduction, softmax, slice,
concat or reshape over time, a contraction over time, an unknown op...)
raises ``NotStreamableError`` naming it. The rule is conservative: a node it
cannot prove per-step is rejected.

A value's kind is ``Time(axis, rank)``, ``FINAL`` (computed from a
recurrent Y_h/Y_c or from the last time step of a per-step value: the value
after the chunk, not per-step), ``ShapeOf`` (computed from the shape of a
per-step value; its entries followed symbolically where they can be, so a
Reshape whose target keeps the time length, as dynamo exports compute it
from Shape/Slice/Concat, is seen to keep the time axis) or ``PLAIN`` (data
that has no time axis); constants have no kind.

A ``FINAL`` output is a *last-step head* (``fc(y[:, -1])``, ``fc(h_n[-1])``):
each chunk's output is the head at that chunk's last step, so after the
final chunk it equals the whole-sequence output.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .conv_streaming import HISTORY_OP, STREAMED_TIME_ATTR, WINDOWED_OPS
from .errors import NotStreamableError
from .graph import Node, ValueInfo
from .state_pairing import RECURRENT_OPS


@dataclass(frozen=True)
class Time:
    axis: int
    rank: int


FINAL, PLAIN = "final", "plain"

# A symbolic dimension: (constant factor, sorted symbols). A symbol is _TIME (the chunk length),
# ("param", dim_param) or (value name, axis); equal expressions are equal sizes at run time.
Dim = tuple
_TIME = "time"


@dataclass(frozen=True)
class ShapeOf:
    """A value computed from the shape of a per-step value: its entries (Dims) when followed, else None."""

    dims: tuple | None = None


def _const_dim(d: int) -> Dim:
    return (int(d), ())


def _mul_dims(a: Dim, b: Dim) -> Dim:
    return (a[0] * b[0], tuple(sorted(a[1] + b[1], key=repr)))


def _product(dims) -> Dim:
    out = _const_dim(1)
    for d in dims:
        out = _mul_dims(out, d)
    return out

UNARY = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Cos", "Cosh",
    "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
    "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign",
    "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Dropout", "Clip",
}
BROADCASTING = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "BitShift",
}
SHAPE_GLUE = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Add", "Sub", "Mul", "Div",
              "Reshape", "Max", "Min"}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_INT64_MAX = 2**63 - 1


class _Reject(Exception):
    pass


class Analysis:
    """Time axes of the data inputs and outputs of a streaming graph."""

    def __init__(self, input_axes: dict[str, int | None], output_axes: dict[str, int | None],
                 last_step_picks: tuple[str, ...] = ()):
        self.input_axes = input_axes
        self.output_axes = output_axes  # None: a last-step head (one value per chunk, no time axis)
        self.last_step_picks = last_step_picks  # labels of the nodes that pick a per-step value's last step


def analyse(nodes: Sequence[Node], data_inputs: Sequence[ValueInfo], data_outputs: Sequence[ValueInfo],
            constant: Callable[[str], Any], value_info: dict[str, ValueInfo], opset: int) -> Analysis:
    """Find the time axis of each data input such that every live node is per-step.

    ``nodes``: the live nodes in run order; ``constant(name)`` gives folded values.
    Each input's candidate time axes are its non-fixed dims; the first
    combination under which the whole graph checks out wins. If none does,
    the error of the combination that got furthest is raised.
    """
    candidates = []
    for vi in data_inputs:
        if vi.shape is None:
            raise NotStreamableError(f"input '{vi.name}' has no declared shape: its time axis is unknown")
        free = [i for i, d in enumerate(vi.shape) if not isinstance(d, int)]
        candidates.append(free or [None])
    best: tuple[int, str] | None = None
    for axes in itertools.product(*candidates):
        input_axes = {vi.name: a for vi, a in zip(data_inputs, axes)}
        kinds: dict[str, Any] = {}
        for vi, axis in zip(data_inputs, axes):
            kinds[vi.name] = PLAIN if axis is None else Time(axis, len(vi.shape))
        try:
            picks: list[str] = []
            _propagate(nodes, kinds, constant, value_info, opset, picks)
            output_axes = _check_outputs(nodes, data_outputs, kinds)
            return Analysis(input_axes, output_axes, tuple(picks))
        except _Reject as e:
            depth, message = e.args
            message += _assumption(data_inputs, input_axes)
            if best is None or depth > best[0]:
                best = (depth, message)
    raise NotStreamableError(best[1])


def _assumption(data_inputs: Sequence[ValueInfo], input_axes: dict[str, int | None]) -> str:
    """What the analysis assumed; for an input whose only dynamic axis is the batch (or none), how to
    export it with a dynamic time axis, which streaming needs."""
    assumed = ", ".join(f"'{n}' axis {a}" for n, a in input_axes.items())
    hints = []
    for vi in data_inputs:
        free = [i for i, d in enumerate(vi.shape) if not isinstance(d, int)]
        batchish = [i for i in free if isinstance(vi.shape[i], str) and "batch" in vi.shape[i].lower()]
        if len(vi.shape) < 2 or (free and free != batchish):
            continue
        guesses = [i for i in (0, 1) if i not in batchish]
        axis = guesses[0] if len(guesses) == 1 else None
        where = f"axis {axis}" if axis is not None else "axis 0 (time-first) or 1 (batch_first)"
        shown = axis if axis is not None else 0
        hints.append(f"input '{vi.name}' {list(vi.shape)} has a fixed time length: streaming needs its time axis "
                     f"({where}) dynamic; export with torch.onnx.export(..., dynamic_axes={{'{vi.name}': "
                     f"{{{shown}: 'time'}}}}) or, with dynamo=True, dynamic_shapes={{'{vi.name}': "
                     f"{{{shown}: torch.export.Dim.DYNAMIC}}}}")
    return f" (assuming time on {assumed}" + ("; " + "; ".join(hints) if hints else "") + ")"


def _propagate(nodes, kinds, constant, value_info, opset, picks: list[str]) -> int:
    for position, node in enumerate(nodes):
        ins = [kinds.get(n) if n else None for n in node.inputs]
        outer = [kinds.get(n) for sub in node.subgraphs() for n in sub.free_names()]
        if any(k is not None for k in outer):
            _reject(position, node, "its subgraph reads per-step values")
        if node.op_type in RECURRENT_OPS:
            outs = _recurrent(node, ins, position)
        elif all(k is None for k in ins):
            continue
        elif FINAL in ins:
            if any(isinstance(k, Time) for k in ins):
                _reject(position, node, "it mixes a value at the chunk's last step (a recurrent node's final "
                        "state Y_h/Y_c, or y[-1]) with per-step values")
            outs = [FINAL] * len(node.outputs)
        elif any(isinstance(k, Time) for k in ins):
            rule = RULES.get(node.op_type)
            if rule is None:
                _reject(position, node, f"op {node.op_type} is not known to act on each time step separately")
            try:
                outs = rule(node, ins, _Ranks(constant, value_info, kinds, opset))
            except _Reject as e:
                _reject(position, node, e.args[0])
            if FINAL in outs:
                picks.append(node.label())
        elif any(isinstance(k, ShapeOf) for k in ins):
            if node.op_type not in SHAPE_GLUE or (node.op_type == "Reshape" and ins[0] == PLAIN):
                _reject(position, node, "it uses the shape of a per-step value (it may depend on the chunk length)")
            outs = [ShapeOf(_shape_glue(node, ins, constant))] + [ShapeOf()] * (len(node.outputs) - 1)
        else:
            outs = [PLAIN] * len(node.outputs)
        for name, kind in zip(node.outputs, outs):
            if name:
                kinds[name] = kind
    return len(nodes)


def _reject(position: int, node: Node, why: str):
    raise _Reject(position, f"{node.label()} prevents streaming: {why}")


def _check_outputs(nodes, data_outputs, kinds) -> dict[str, int]:
    producers = {o: n for n in nodes for o in n.outputs}
    axes = {}
    for vi in data_outputs:
        kind = kinds.get(vi.name)
        if isinstance(kind, Time):
            axes[vi.name] = kind.axis
            continue
        where = producers[vi.name].label() if vi.name in producers else f"input '{vi.name}'"
        if kind == FINAL:  # a last-step head: one value per chunk
            axes[vi.name] = None
            continue
        why = "it is computed from the shape of the input" if isinstance(kind, ShapeOf) else "it has no time axis"
        raise _Reject(len(nodes), f"{where} prevents streaming: output '{vi.name}': {why}")
    return axes


class _Ranks:
    def __init__(self, constant, value_info, kinds, opset):
        self.constant, self.value_info, self.kinds, self.opset = constant, value_info, kinds, opset

    def dims(self, name: str) -> list[Dim] | None:
        """The symbolic dims of a per-step value: time, fixed sizes, dim_params, else (name, axis)."""
        kind = self.kinds.get(name)
        if not isinstance(kind, Time):
            return None
        vi = self.value_info.get(name)
        shape = vi.shape if vi is not None and vi.shape is not None and len(vi.shape) == kind.rank else None
        out = []
        for i in range(kind.rank):
            d = shape[i] if shape is not None else None
            if i == kind.axis:
                out.append((1, (_TIME,)))
            elif isinstance(d, int) and d >= 0:
                out.append(_const_dim(d))
            elif isinstance(d, str) and d:
                out.append((1, (("param", d),)))
            else:
                out.append((1, ((name, i),)))
        return out

    def target_dims(self, name: str) -> list[Dim] | None:
        """A Reshape target's entries as dims: from a constant, or from followed shape arithmetic."""
        value = self.constant(name)
        if value is not None:
            return [_const_dim(v) for v in np.asarray(value).reshape(-1).tolist()]
        kind = self.kinds.get(name)
        if isinstance(kind, ShapeOf) and kind.dims is not None:
            return list(kind.dims)
        return None

    def rank(self, name: str) -> int | None:
        kind = self.kinds.get(name)
        if isinstance(kind, Time):
            return kind.rank
        value = self.constant(name)
        if value is not None:
            return np.ndim(value)
        vi = self.value_info.get(name)
        return len(vi.shape) if vi is not None and vi.shape is not None else None

    def shape(self, name: str):
        value = self.constant(name)
        if value is not None:
            return np.shape(value)
        vi = self.value_info.get(name)
        return vi.shape if vi is not None else None

    def ints(self, node: Node, attr: str, index: int) -> list[int] | None:
        """An axes-like list from the attribute (older opsets) or a constant input."""
        if attr in node.attrs:
            return [int(a) for a in node.attrs[attr]]
        if index < len(node.inputs) and node.inputs[index]:
            value = self.constant(node.inputs[index])
            if value is None:
                raise _Reject(f"its input '{node.inputs[index]}' is computed at run time")
            return [int(a) for a in np.asarray(value).reshape(-1)]
        return None


def _single_time(ins) -> Time:
    times = [k for k in ins if isinstance(k, Time)]
    if len({(t.axis, t.rank) for t in times}) != 1:
        raise _Reject("its per-step inputs have their time axes in different places")
    return times[0]


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ------------------------------------------------------------------ rules --

def _unary(node, ins, r):
    if ins[0] is None or not isinstance(ins[0], Time) or any(isinstance(k, Time) for k in ins[1:]):
        raise _Reject("only its first input may be per-step")
    return [ins[0]] * len(node.outputs)


def _broadcasting(node, ins, r):
    ranks = [r.rank(n) if n else None for n in node.inputs]
    if any(n and rk is None for n, rk in zip(node.inputs, ranks)):
        raise _Reject("the rank of one of its inputs is unknown")
    out_rank = max(rk for rk in ranks if rk is not None)
    times = {(out_rank - t.rank + t.axis) for t in ins if isinstance(t, Time)}
    if len(times) != 1:
        raise _Reject("its per-step inputs have their time axes in different places")
    axis = times.pop()
    for name, kind, rank in zip(node.inputs, ins, ranks):
        if not name or isinstance(kind, Time):
            continue
        local = axis - (out_rank - rank)
        if local >= 0:
            shape = r.shape(name)
            if shape is None or shape[local] != 1:
                raise _Reject(f"input '{name}' is broadcast against the time axis with a size other than 1")
    return [Time(axis, out_rank)]


def _transpose(node, ins, r):
    t = ins[0]
    perm = [int(v) for v in np.asarray(node.attr("perm", list(reversed(range(t.rank))))).reshape(-1)]  # as the kernel reads it
    if len(perm) != t.rank or t.axis not in perm:  # the kernel refuses it at run time
        raise _Reject(f"perm {perm} does not fit an input of rank {t.rank}")
    return [Time(perm.index(t.axis), t.rank)]


def _squeeze(node, ins, r):
    t = ins[0]
    axes = r.ints(node, "axes", 1)
    if not axes:
        raise _Reject("it squeezes every size-1 axis, which may include a chunk of length 1")
    axes = [_norm(a, t.rank) for a in axes]
    if t.axis in axes:
        raise _Reject("it squeezes the time axis")
    return [Time(t.axis - sum(a < t.axis for a in axes), t.rank - len(axes))]


def _unsqueeze(node, ins, r):
    t = ins[0]
    axes = r.ints(node, "axes", 1) or []
    out_rank = t.rank + len(axes)
    axis = t.axis
    for a in sorted(_norm(a, out_rank) for a in axes):
        if a <= axis:
            axis += 1
    return [Time(axis, out_rank)]


def _matmul(node, ins, r):
    a, b = ins
    if isinstance(b, Time) or not isinstance(a, Time):
        raise _Reject("its right-hand input is per-step (a contraction over time)")
    rb = r.rank(node.inputs[1])
    if rb is None or a.rank < 2 or a.axis == a.rank - 1:
        raise _Reject("it contracts over the time axis")
    if rb == 1:
        return [Time(a.axis, a.rank - 1)]
    if rb > 2 and a.axis < a.rank - 2:
        raise _Reject("its batched right-hand input is broadcast against the time axis")
    out_rank = max(a.rank, rb)
    return [Time(out_rank - a.rank + a.axis, out_rank)]


def _gemm(node, ins, r):
    a = ins[0]
    if not isinstance(a, Time) or any(isinstance(k, Time) for k in ins[1:]) or node.attr("transA", 0) or a.axis != 0:
        raise _Reject("only its A input may be per-step, with time on the rows (transA=0)")
    if len(node.inputs) > 2 and node.inputs[2]:
        shape = r.shape(node.inputs[2])
        if shape is None or (len(shape) == 2 and shape[0] != 1):
            raise _Reject("its C input is broadcast against the time axis")
    return [Time(0, 2)]


def _gather(node, ins, r):
    data, indices = ins[0], ins[1]
    axis = node.attr("axis", 0)
    if isinstance(data, Time):
        if isinstance(indices, Time):
            raise _Reject("both its data and indices are per-step")
        axis = _norm(axis, data.rank)
        if axis == data.axis:
            picked = r.constant(node.inputs[1])
            if picked is not None and np.size(picked) == 1 and int(np.asarray(picked).reshape(-1)[0]) == -1:
                return [FINAL]  # y[:, -1]: a last-step head
            raise _Reject("it picks elements along the time axis (only the last step, index -1, streams: "
                          "each chunk then gives the head at its last step)")
        ri = r.rank(node.inputs[1])
        if ri is None:
            raise _Reject("the rank of its indices is unknown")
        return [Time(data.axis if data.axis < axis else data.axis + ri - 1, data.rank + ri - 1)]
    rd = r.rank(node.inputs[0])
    if rd is None:
        raise _Reject("the rank of its data is unknown")
    axis = _norm(axis, rd)
    return [Time(axis + indices.axis, rd + indices.rank - 1)]


def _softmax(node, ins, r):
    t = ins[0]
    if r.opset < 13:
        axis = _norm(node.attr("axis", 1), t.rank)
        if t.axis >= axis:  # flattened into the normalised block
            raise _Reject("its (flattened) softmax block includes the time axis")
    elif _norm(node.attr("axis", -1), t.rank) == t.axis:
        raise _Reject("it normalises over the time axis")
    return [t]


def _layernorm(node, ins, r):
    t = ins[0]
    if any(isinstance(k, Time) for k in ins[1:]):
        raise _Reject("its scale or bias is per-step")
    if t.axis >= _norm(node.attr("axis", -1), t.rank):
        raise _Reject("it normalises over the time axis")
    return [t] * len(node.outputs)


def _concat(node, ins, r):
    if any(n and not isinstance(k, Time) for n, k in zip(node.inputs, ins)):
        raise _Reject("it concatenates per-step values with values that have no time axis")
    t = _single_time(ins)
    if _norm(node.attr("axis"), t.rank) == t.axis:
        raise _Reject("it concatenates along the time axis")
    return [t]


def _split(node, ins, r):
    t = ins[0]
    if _norm(node.attr("axis", 0), t.rank) == t.axis:
        raise _Reject("it splits the time axis")
    return [t] * len(node.outputs)


def _slice(node, ins, r):
    t = ins[0]
    starts, ends = r.ints(node, "starts", 1), r.ints(node, "ends", 2)
    axes = r.ints(node, "axes", 3) or list(range(len(starts)))
    steps = r.ints(node, "steps", 4) or [1] * len(starts)
    last = False
    for s, e, a, st in zip(starts, ends, axes, steps):
        if _norm(a, t.rank) == t.axis and not (s == 0 and st == 1 and e >= _INT64_MAX // 2):
            if s == -1 and st == 1 and e >= _INT64_MAX // 2:
                last = True  # y[:, -1:]: the last step
                continue
            raise _Reject("it slices the time axis (only the last step, [-1:], streams)")
    return [FINAL if last else t]


def _reshape(node, ins, r):
    """Row-major: time stays an axis of its own iff the entries before it multiply to the same size."""
    t = ins[0]
    if isinstance(ins[1], Time):
        raise _Reject("its target shape is per-step")
    target = r.target_dims(node.inputs[1])
    source = r.dims(node.inputs[0])
    if target is None or source is None:
        raise _Reject("its target shape is unknown")
    if node.attr("allowzero", 0):
        raise _Reject("allowzero=1")
    resolved = []
    for i, d in enumerate(target):
        if d == _const_dim(0):  # 0 copies the source's dim
            if i >= len(source):
                raise _Reject("its target copies a dim the input does not have")
            d = source[i]
        resolved.append(None if d == _const_dim(-1) else d)
    before, after = _product(source[:t.axis]), _product(source[t.axis + 1:])
    for j, d in enumerate(resolved):
        if d is not None and d != (1, (_TIME,)):
            continue  # only the time length itself, or the one -1, can be the time axis
        head, tail = resolved[:j], resolved[j + 1:]
        if any(x is not None and _TIME in x[1] for x in head + tail):
            continue
        head_ok = None not in head and _product(head) == before
        tail_ok = None not in tail and _product(tail) == after
        if d is None and not (head_ok and tail_ok):
            continue  # a -1 is the time axis only if both sides are known to match
        if head_ok or (d is not None and None in head and tail_ok):
            return [Time(j, len(target))]
    raise _Reject("it may merge the time axis with other axes, or fix its length")


def _reduce(node, ins, r):
    t = ins[0]
    axes = r.ints(node, "axes", 1)
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [t]
        raise _Reject("it reduces over every axis, time included")
    axes = [_norm(a, t.rank) for a in axes]
    if t.axis in axes:
        raise _Reject("it reduces over the time axis")
    if node.attr("keepdims", 1):
        return [t]
    return [Time(t.axis - sum(a < t.axis for a in axes), t.rank - len(axes))]


def _shape(node, ins, r):
    dims = r.dims(node.inputs[0])
    if dims is None:
        return [ShapeOf()]
    rank = len(dims)
    start, end = node.attr("start", 0), node.attr("end", rank)
    return [ShapeOf(tuple(dims[slice(max(-rank, min(start, rank)), max(-rank, min(end, rank)))]))]


def _shape_glue(node, ins, constant) -> tuple | None:
    """The dims of shape arithmetic (Slice/Gather/Concat/Mul/... over 1-D int vectors), else None."""
    def entries(index):
        if index >= len(node.inputs) or not node.inputs[index]:
            return None
        kind = ins[index]
        if isinstance(kind, ShapeOf):
            return None if kind.dims is None else list(kind.dims)
        value = constant(node.inputs[index])
        if value is None or np.asarray(value).dtype.kind not in "iu":
            return None
        return [_const_dim(v) for v in np.asarray(value).reshape(-1).tolist()]

    def ints(index):
        if index >= len(node.inputs) or not node.inputs[index]:
            return None
        value = constant(node.inputs[index])
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    op, data = node.op_type, entries(0)
    if op in ("Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape"):
        return None if data is None else tuple(data)
    if op == "Concat":
        parts = [entries(i) for i in range(len(node.inputs))]
        return None if any(p is None for p in parts) else tuple(d for p in parts for d in p)
    if op == "Gather":
        picks = ints(1)
        if data is None or picks is None or any(not -len(data) <= i < len(data) for i in picks):
            return None
        return tuple(data[i] for i in picks)
    if op == "Slice":
        starts, ends = node.attr("starts", None) or ints(1), node.attr("ends", None) or ints(2)
        axes, steps = node.attr("axes", None) or ints(3) or [0], ints(4) or [1]
        if data is None or not starts or not ends or len(starts) != 1 or axes not in ([0], [-1]) or steps != [1]:
            return None
        return tuple(data[starts[0]:ends[0]])  # ONNX clamps step-1 bounds as Python does
    if op == "Mul":
        other = entries(1)
        if data is None or other is None or (len(data) != len(other) and 1 not in (len(data), len(other))):
            return None
        n = max(len(data), len(other))
        return tuple(_mul_dims(data[i if len(data) > 1 else 0], other[i if len(other) > 1 else 0]) for i in range(n))
    return None  # Add, Sub, Div, ...: followed as an opaque shape


def _recurrent(node: Node, ins, position: int):
    x = ins[0]
    layout = node.attr("layout", 0)
    if not isinstance(x, Time) or x.rank != 3 or x.axis != layout:
        where = "no time axis" if not isinstance(x, Time) else f"its time axis at {x.axis}"
        _reject(position, node, f"its input X has {where}; expected time on axis {layout} (layout={layout})")
    if any(k is not None for k in ins[1:]):
        _reject(position, node, "its weights or initial state are computed from the data")
    outs = [Time(layout, 4), FINAL, FINAL]
    return outs[: len(node.outputs)]


def _time_history(node, ins, r):
    t = ins[0]
    if not isinstance(t, Time) or any(isinstance(k, Time) for k in ins[1:]) or t.axis != node.attr("axis"):
        raise _Reject("its carried history is not on the time axis")
    return [t] + [FINAL] * (len(node.outputs) - 1)


def _windowed(node, ins, r):
    """Conv and pools: per-step when time is their batch axis, when they are one frame wide in time,
    or when ``conv_streaming`` prefixed their input with its carried history (and phase)."""
    t = ins[0]
    if any(isinstance(k, Time) for k in ins[1:]):
        raise _Reject("its weights are per-step")
    if t.axis == 1:
        raise _Reject("it mixes the time axis as channels")
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        raise _Reject("its Indices output counts positions from the start of the whole input, not the chunk")
    if t.axis >= 2 and node.attrs.get(STREAMED_TIME_ATTR) != t.axis:
        spatial, i = t.rank - 2, t.axis - 2
        kernel = node.attrs.get("kernel_shape") or (r.shape(node.inputs[1]) or ())[2:] or None
        pads = node.attrs.get("pads", [0] * 2 * spatial)
        one_frame = kernel is not None and kernel[i] == 1 and node.attrs.get("strides", [1] * spatial)[i] == 1 \
            and pads[i] == pads[i + spatial] == 0 and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        if not one_frame:
            raise _Reject("it slides a window over the time axis")
    return [t] * len(node.outputs)


def _batchnorm(node, ins, r):
    """Inference BatchNormalization: a per-channel affine map, per-step unless time is the channels."""
    t = ins[0]
    if not isinstance(t, Time) or any(isinstance(k, Time) for k in ins[1:]):
        raise _Reject("its scale, bias, mean or variance is per-step")
    if t.axis == 1:
        raise _Reject("it normalises the time axis as channels")
    return [t] + [None] * (len(node.outputs) - 1)


RULES: dict[str, Callable] = {op: _unary for op in UNARY}
RULES.update({op: _broadcasting for op in BROADCASTING})
RULES.update({op: _reduce for op in REDUCTIONS})
RULES.update({
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "MatMul": _matmul, "Gemm": _gemm,
    "Gather": _gather, "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "LayerNormalization": _layernorm, "Concat": _concat, "Split": _split, "Slice": _slice,
    "Reshape": _reshape, "Shape": _shape, HISTORY_OP: _time_history,
})
RULES.update({op: _windowed for op in WINDOWED_OPS})
RULES["BatchNormalization"] = _batchnorm
