"""Compiling a plan for one signature of its feeds into a ``_runtime.Program`` (see ``program``).

``Compiler`` runs the plan's schedule once on the feeds (the trace), keeping every value,
and decides for each node what becomes of it: folded (its value depends on shapes alone),
vanished (a NumPy view of its input: an offset and strides, no work), a C instruction over
the program's memory, or its NumPy kernel called on views of that memory. Every per-call value
gets a place: a feed, an output array made for the call, or the arena (the call's scratch);
a value's traced array has the layout it has at run time, so that the views NumPy makes in the
trace have the offsets and strides they will have in every call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import embedding_fold
from .c_runtime import _runtime
from .plan import _ABSENT, _NONDETERMINISTIC, Plan, _run_step, _step_error

VIEW_OPS = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice", "Split",
                      "Expand", "Dropout"})
SHAPE_OPS = frozenset({"Shape", "Size"})  # a static result from a per-call input
_ALIGN = 64
_DENSE_MAX_MACS = _runtime.DENSE_MAX_MACS  # above: NumPy's BLAS; the plan's MatMul/Gemm draw the same line
_F32 = np.dtype(np.float32)


@dataclass
class _Place:
    """Where a per-call value lives during a call, and its traced value (same layout)."""

    base: int
    offset: int
    array: np.ndarray

    @property
    def ref(self) -> tuple[int, int]:
        return (self.base, self.offset)


class CompileDeclined(Exception):
    """This plan cannot be compiled for this signature (the general path runs it)."""


def collapse(shape: Sequence[int], *strides: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """``shape`` and its stride lists with size-1 dims dropped and dims that step together in
    every list merged: the same elements visited in as few loops as possible."""
    dims: list[int] = []
    merged: list[list[int]] = [[] for _ in strides]
    if any(d == 0 for d in shape):
        return [0], [[1] for _ in strides]
    for axis, d in enumerate(shape):
        if d == 1:
            continue
        if dims and all(m[-1] == d * s[axis] for m, s in zip(merged, strides)):
            dims[-1] *= d
            for m, s in zip(merged, strides):
                m[-1] = s[axis]
        else:
            dims.append(d)
            for m, s in zip(merged, strides):
                m.append(s[axis])
    return dims, merged


def copy_plan(shape: Sequence[int], src_strides: Sequence[int], dst_strides: Sequence[int], itemsize: int):
    """(outer dims, their source and destination strides, bytes of the innermost contiguous run):
    a strided block copy as ``_runtime.Copy`` and ``GatherRows`` take it."""
    dims, (s, d) = collapse(shape, src_strides, dst_strides)
    inner = itemsize
    if dims and s[-1] == itemsize and d[-1] == itemsize:
        inner = itemsize * dims[-1]
        dims, s, d = dims[:-1], s[:-1], d[:-1]
    return tuple(dims), tuple(s), tuple(d), inner


def copy_instruction(cls, src: tuple[int, int], dst: tuple[int, int], shape: Sequence[int],
                     src_strides: Sequence[int], dst_strides: Sequence[int], itemsize: int):
    """A ``_runtime.Copy`` (or ``OutCopy``) of a strided block, its innermost contiguous run one memcpy."""
    return cls(src, dst, *copy_plan(shape, src_strides, dst_strides, itemsize))


def c_strides(shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


try:  # numpy >= 2
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # pragma: no cover - numpy 1.x
    _byte_bounds = np.byte_bounds


def _copy_with_strides(value: np.ndarray) -> np.ndarray:
    """A copy of ``value`` in memory of its own, laid out with the same strides."""
    if value.flags.c_contiguous:
        return np.array(value, order="C", copy=True)
    lo, hi = _byte_bounds(value)
    buffer = np.empty(max(hi - lo, 1) + _ALIGN, np.uint8)
    first = (-_address(buffer)) % _ALIGN + (_address(value) - lo)  # element 0, the lowest byte aligned
    copy = np.ndarray(value.shape, value.dtype, buffer, first, value.strides)
    copy[...] = value
    return copy


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _is_c_contiguous(array: np.ndarray) -> bool:
    return array.flags.c_contiguous and array.flags.aligned


class Compiler:
    """One compile: the trace of ``plan``'s schedule for ``wanted`` on ``feeds``, lowered."""

    def __init__(self, plan: Plan, wanted: tuple[int, ...], feeds: Sequence[Any], body: bool = False,
                 pinned: frozenset[int] = frozenset(), shared: dict | None = None):
        """``body``: a subgraph's program, whose outputs that are a feed or a constant hand it
        back as it is; ``pinned``: feeds compiled in as constants (only they are accepted);
        ``shared``: what programs of the same plan share (weights laid out for an instruction)."""
        self.plan, self.wanted, self.body = plan, wanted, body
        self.shared = shared if shared is not None else {}
        self.schedule = [step for step, _ in plan.schedule(wanted)]
        self.values: list[Any] = plan._template.copy()
        self.places: dict[int, _Place] = {}
        self.regions: list[tuple[int, int, int, int]] = []  # (start, end, base, offset) of owned memory
        self.arena = 0
        self.instructions: list[Any] = []
        self.keep: list[Any] = []  # constants the instructions point into
        self.lines: dict[int, str] = {}  # index in schedule -> what became of that node
        self.fused: dict[int, str] = {}  # index in schedule -> the instruction that did its work
        self.gathers: dict[int, embedding_fold.PendingGather] = {}  # by output slot: Gathers a node may fold
        self.step_index = -1  # of the step being lowered
        self.vanished: set[int] = set()  # indices in schedule of the steps that became views
        feed_specs = []
        self.dynamic: set[int] = set()
        if len(feeds) > _runtime.MAX_PROGRAM_FEEDS:
            raise CompileDeclined(f"more than {_runtime.MAX_PROGRAM_FEEDS} feeds")
        for k, (slot, value) in enumerate(zip(plan._feed_slots, feeds)):
            if value.__class__ is not np.ndarray or value.dtype.hasobject:
                raise CompileDeclined(f"feed {k} is not a numeric ndarray")
            if k in pinned:
                self.values[slot] = value
                feed_specs.append((value.dtype, tuple(value.shape), value))
                continue
            if not value.flags.aligned:
                raise CompileDeclined(f"feed {k} is not aligned")
            traced = _copy_with_strides(value)  # memory of its own: views are found by address
            self.values[slot] = traced
            self._own(slot, 1 + k, 0, traced)
            self.dynamic.add(slot)
            strided = not value.flags.c_contiguous
            feed_specs.append((value.dtype, tuple(value.shape)) + ((None, value.strides) if strided else ()))
        self.feed_specs = tuple(feed_specs)
        if len(wanted) > _runtime.MAX_PROGRAM_OUTPUTS:
            raise CompileDeclined(f"more than {_runtime.MAX_PROGRAM_OUTPUTS} outputs")
        # outputs an instruction may write in place (each wanted once; placed by alloc())
        self.direct = {slot: k for k, slot in enumerate(wanted) if wanted.count(slot) == 1}
        self.direct_at = [False] * len(wanted)

    # -- memory ---------------------------------------------------------------
    def _own(self, slot: int, base: int, offset: int, array: np.ndarray) -> _Place:
        """``array`` (its element 0 at ``offset`` from ``base``) owns the memory its bytes span."""
        place = self.places[slot] = _Place(base, offset, array)
        lo, hi = _byte_bounds(array)
        self.regions.append((lo, max(hi, lo + 1), base, offset - (_address(array) - lo)))
        self.values[slot] = array
        return place

    def alloc(self, slot: int, shape: Sequence[int], dtype: np.dtype, value: Any = None) -> _Place:
        """Memory for ``slot`` (C order), its traced value ``value`` copied there: the output array
        itself when ``slot`` is an output of the program (written in place), else the arena."""
        array = np.empty(tuple(shape), dtype)
        if value is not None:
            array[...] = value
        k = self.direct.pop(slot, None)
        if k is not None:
            self.direct_at[k] = True
            return self._own(slot, _runtime.BASE_OUTPUT0 + k, 0, array)
        offset = self.arena
        self.arena = offset + (array.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        return self._own(slot, _runtime.BASE_ARENA, offset, array)

    def temp(self, shape: Sequence[int], dtype: np.dtype) -> tuple[tuple[int, int], np.ndarray]:
        offset = self.arena
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.arena = offset + (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        return (_runtime.BASE_ARENA, offset), np.empty(tuple(shape), dtype)

    def view_place(self, value: Any) -> _Place | None:
        """The place of ``value`` when it is a view into per-call memory already placed."""
        if value.__class__ is not np.ndarray:
            return None
        lo, hi = _byte_bounds(value)
        ptr = _address(value)
        for start, end, base, offset in self.regions:
            if start <= lo and hi <= end and (hi > lo or start <= ptr <= end):
                return _Place(base, offset + (ptr - start), value)
        return None

    def source(self, slot: int) -> tuple[tuple[int, int], np.ndarray]:
        """(ref, array with the run-time layout) of a value an instruction reads: placed, or a constant."""
        place = self.places.get(slot)
        if place is not None:
            return place.ref, place.array
        value = self.values[slot]
        if value.__class__ is not np.ndarray:
            raise CompileDeclined(f"value of slot {slot} is not an ndarray")
        self.keep.append(value)
        return (_runtime.BASE_ABSOLUTE, _address(value)), value

    def contiguous_source(self, slot: int) -> tuple[tuple[int, int], np.ndarray]:
        """``source`` in C order and aligned: as it is, or copied into the arena first."""
        ref, array = self.source(slot)
        if _is_c_contiguous(array):
            return ref, array
        dst, copy = self.temp(array.shape, array.dtype)
        copy[...] = array
        self.instructions.append(copy_instruction(_runtime.Copy, ref, dst, array.shape, array.strides,
                                                  c_strides(array.shape, array.itemsize), array.itemsize))
        return dst, copy

    # -- the trace --------------------------------------------------------------
    def run(self) -> Any:
        dynamic = self.dynamic
        readers: dict[int, list[int]] = {}
        for i, step in enumerate(self.schedule):
            for s in step.inputs + step.outer:
                readers.setdefault(s, []).append(i)
        self.readers = readers
        for i, step in enumerate(self.schedule):
            node = step.node
            reads = [s for s in step.inputs + step.outer if s != _ABSENT]
            is_dynamic = node.op_type in _NONDETERMINISTIC or (
                node.op_type not in SHAPE_OPS and any(s in dynamic for s in reads))
            if i in self.fused:  # its outputs were placed (and traced) by the instruction it joined
                dynamic.update(s for s in step.outputs if s != _ABSENT)
                continue
            outputs = _run_step(step, self.values)
            if not is_dynamic:
                for slot, value in zip(step.outputs, outputs):
                    if slot != _ABSENT:
                        if isinstance(value, np.ndarray):
                            value = np.array(value)
                            value.setflags(write=False)
                        self.values[slot] = value
                self.lines[i] = f"{node.label()}: folded (fixed for this signature)"
                continue
            dynamic.update(s for s in step.outputs if s != _ABSENT)
            self.step_index = i
            how = self.lower(step, outputs)
            self.lines[i] = f"{node.label()}: {how}"
        return self.program()

    # -- lowering ---------------------------------------------------------------
    def lower(self, step, outputs: Sequence[Any]) -> str:
        op = step.node.op_type if step.node.domain in ("", "ai.onnx") else None
        if op in VIEW_OPS:
            places = [self.view_place(v) if s != _ABSENT else None for s, v in zip(step.outputs, outputs)]
            if all(p is not None for p, s in zip(places, step.outputs) if s != _ABSENT):
                for slot, place in zip(step.outputs, places):
                    if slot != _ABSENT:
                        self.places[slot] = place
                        self.values[slot] = place.array
                self.vanished.add(self.step_index)
                return "vanished (a view)"
        lowering = {"LSTM": self.recurrent, "GRU": self.recurrent, "RNN": self.recurrent, "MatMul": self.matmul,
                    "Gemm": self.gemm, "Concat": self.concat, "Gather": self.gather, "Softmax": self.softmax,
                    "LogSoftmax": self.softmax}.get(op)
        if step.node.op_type == "DynamicQuantizeLSTM" and step.node.domain == "com.microsoft":
            lowering = self.recurrent  # its kernel wraps an int8 LSTM core (ops.quantized)
        if lowering is None and op in _runtime.UNARY_CODES:
            lowering = self.unary
        if lowering is None and op in _runtime.BINARY_CODES:
            lowering = self.binary
        if op in _runtime.TYPED_OPS and (lowering is None or not self._out_f32(outputs)):
            lowering = self.typed
        if lowering is not None:
            how = lowering(step, outputs)
            if how is not None:
                return how
        return self.python_call(step, outputs)

    def reader_kind(self, j: int) -> str | None:
        """What schedule step j (lowered already) did with its inputs: "view" (it vanished, a view),
        "shape" (it reads shapes alone) or None (it reads the values)."""
        if self.schedule[j].node.op_type in SHAPE_OPS:
            return "shape"
        return "view" if j in self.vanished else None

    def _out_f32(self, outputs, n: int = 1) -> bool:
        return all(isinstance(v, np.ndarray) and v.dtype == _F32 for v in outputs[:n])

    def recurrent(self, step, outputs):
        packs = getattr(step.kernel, "packs", None)
        kernel = getattr(step.kernel, "recurrent_core", step.kernel)  # a wrapper's core (DynamicQuantizeLSTM)
        node = step.node
        is_lstm = node.op_type in ("LSTM", "DynamicQuantizeLSTM")
        args = [self.values[s] for s in step.inputs] + [None] * (8 - len(step.inputs))
        if packs is None or not packs(args[1], args[2], args[3], args[7] if is_lstm else None):
            return None
        if any(s in self.places for s in step.inputs[1:4]) or not self._out_f32(outputs):
            return None
        X = args[0]
        if not (isinstance(X, np.ndarray) and X.dtype == _F32 and X.ndim == 3 and 0 not in X.shape):
            return None
        time_major = kernel.layout_time_major
        T, B = (X.shape[0], X.shape[1]) if time_major else (X.shape[1], X.shape[0])
        Y = outputs[0]
        D, H = (Y.shape[1], Y.shape[3]) if time_major else (Y.shape[2], Y.shape[3])
        lens_slot = step.inputs[4] if len(step.inputs) > 4 else _ABSENT
        if lens_slot != _ABSENT:
            lens = self.values[lens_slot]
            if not (isinstance(lens, np.ndarray) and lens.dtype == np.int32 and lens.shape == (B,)):
                return None
        states = []
        for k in (5, 6):
            slot = step.inputs[k] if len(step.inputs) > k else _ABSENT
            if slot == _ABSENT or (k == 6 and not is_lstm):
                states.append((None, (0, 0)))
                continue
            ref, value = self.source(slot)
            want = (D, B, H) if time_major else (B, D, H)
            if not (value.dtype == _F32 and value.shape == want and value.flags.aligned
                    and all(st % 4 == 0 for st in value.strides) and (value.strides[2] == 4 or H == 1)):
                return None
            d_stride, b_stride = (value.strides[0], value.strides[1]) if time_major else (value.strides[1], value.strides[0])
            states.append((ref, (d_stride // 4, b_stride // 4)))
        y_shape = (T, D, B, H) if time_major else (B, T, D, H)
        s_shape = (D, B, H) if time_major else (B, D, H)
        if Y.shape != y_shape:
            return None
        # every check passed: from here on instructions are emitted (a layout copy first, if any)
        lookup = embedding_fold.fold(self, step, self.step_index, kernel, X, time_major, T, B)
        if lookup is None:
            x_ref, _ = self.contiguous_source(step.inputs[0])
        else:
            x_ref, lookup, gather = lookup
            self.instructions[gather.instruction] = None
            self.lines[gather.index] = (f"{self.schedule[gather.index].node.label()}: folded into "
                                        f"{node.label()}'s input projections")
        lens_ref = self.contiguous_source(lens_slot)[0] if lens_slot != _ABSENT else None
        slots = list(step.outputs) + [_ABSENT] * (3 - len(step.outputs))
        places = []
        for k, shape in enumerate((y_shape, s_shape, s_shape)):
            if k == 2 and not is_lstm:
                places.append(None)
                continue
            value = outputs[k] if k < len(outputs) else None
            if slots[k] != _ABSENT:
                places.append(self.alloc(slots[k], shape, _F32, value).ref)
            else:
                places.append(self.temp(shape, _F32)[0])
        y_strides = (D * B * H, B * H, H) if time_major else (D * H, H, T * D * H)
        s_strides = (B * H, H) if time_major else (H, D * H)
        self.instructions.append(_runtime.Recurrent(
            kernel, _kernel_capsule(), T, B, x_ref, lens_ref, states[0][0], states[0][1], states[1][0],
            states[1][1], places[0], y_strides, places[1], places[2], s_strides, lookup))
        if lookup is not None:
            return (f"C {node.op_type} kernel on the program's memory, its input projections looked up by id "
                    f"(a table of {lookup[1]} rows, the Embedding folded in)")
        return f"C {node.op_type} kernel on the program's memory"

    def _dense(self, a_slot: int, shape: tuple[int, int], weights, bias: np.ndarray | None, out_slot: int,
               out_value, how: str):
        """A Dense instruction: out_slot = a_slot @ W (+ bias), W [K, N] of ``shape`` laid out as
        Dense takes it by ``weights()``; None when A does not fit."""
        a_ref, A = self.source(a_slot)
        K, N = shape
        if A.dtype != _F32 or A.ndim < 1 or A.shape[-1] != K:
            return None
        M = int(np.prod(A.shape[:-1], dtype=np.int64))
        out_shape = tuple(A.shape[:-1]) + (N,)
        if M * K * N > _DENSE_MAX_MACS or tuple(np.shape(out_value)) != out_shape:
            return None
        rows = A.reshape(M, K) if M else None
        if rows is None or not np.may_share_memory(rows, A) or (K > 1 and rows.strides[1] != 4) or not A.flags.aligned:
            a_ref, A = self.contiguous_source(a_slot)
            rows = A.reshape(M, K)
        lda = rows.strides[0] if M > 1 else K * 4
        place = self.alloc(out_slot, out_shape, _F32, out_value)
        self.instructions.append(_runtime.Dense(a_ref, M, K, lda, weights(), bias, place.ref, N))
        return how

    def _bias_after(self, out_slot: int, N: int) -> tuple[int, np.ndarray] | None:
        """(index, bias [N]) of the Add of a constant bias that alone reads the MatMul's output."""
        readers = self.readers.get(out_slot, [])
        if len(readers) != 1 or out_slot in self.wanted:
            return None
        j = readers[0]
        add = self.schedule[j]
        if add.node.op_type != "Add" or add.node.domain not in ("", "ai.onnx") or add.outer_names:
            return None
        other = [s for s in add.inputs if s != out_slot]
        if len(other) != 1 or other[0] in self.places or other[0] == _ABSENT:
            return None
        bias = self.values[other[0]]
        if not (isinstance(bias, np.ndarray) and bias.dtype == _F32 and bias.size in (1, N)
                and all(d == 1 for d in bias.shape[:-1]) and bias.ndim <= 2):
            return None
        return j, np.ascontiguousarray(np.broadcast_to(bias.reshape(-1), (N,)), dtype=_F32)

    def dense_weights(self, B: np.ndarray, transposed: bool, alpha: float):
        """``() -> weights`` for Dense: alpha * B (B^T when ``transposed``) in its layout, made once
        per weight and shared by every signature's program (``self.shared``)."""
        def make():
            key = ("dense", id(B), transposed, alpha)
            hit = self.shared.get(key)
            if hit is None:
                W = (B.T if transposed else B).astype(_F32) * np.float32(alpha) if alpha != 1.0 else \
                    (B.T if transposed else B)
                layout = W if W.shape[1] >= _runtime.DENSE_ROWS_FROM else W.T
                hit = self.shared[key] = (B, np.ascontiguousarray(layout, dtype=_F32))  # B: its id stays its
            return hit[1]

        return make

    def matmul(self, step, outputs):
        W = self.values[step.inputs[1]]
        if step.inputs[1] in self.places or not isinstance(W, np.ndarray) or W.dtype != _F32 or W.ndim != 2:
            return None
        N = W.shape[1]
        weights = self.dense_weights(W, False, 1.0)
        fused = self._bias_after(step.outputs[0], N)
        if fused is None:
            return self._dense(step.inputs[0], W.shape, weights, None, step.outputs[0], outputs[0], "C dense (MatMul)")
        j, bias = fused
        add = self.schedule[j]
        how = self._dense(step.inputs[0], W.shape, weights, bias, add.outputs[0],
                          self._add_value(add, step, outputs[0]), f"C dense (MatMul + {add.node.label()})")
        if how is not None:
            self.fused[j] = step.node.label()
            self.lines[j] = f"{add.node.label()}: fused into {step.node.label()} (its bias)"
        return how

    def _add_value(self, add, matmul_step, matmul_out):
        values = list(self.values)
        values[matmul_step.outputs[0]] = matmul_out
        return _run_step(add, values)[0]

    def gemm(self, step, outputs):
        node = step.node
        if node.attr("transA", 0) or len(step.inputs) < 2:
            return None
        B = self.values[step.inputs[1]]
        if step.inputs[1] in self.places or not isinstance(B, np.ndarray) or B.dtype != _F32 or B.ndim != 2:
            return None
        transposed = bool(node.attr("transB", 0))
        shape = B.shape[::-1] if transposed else B.shape
        N = shape[1]
        bias = None
        if len(step.inputs) > 2 and step.inputs[2] != _ABSENT:
            C = self.values[step.inputs[2]]
            if step.inputs[2] in self.places or not isinstance(C, np.ndarray) or C.dtype != _F32 or C.size not in (1, N) \
                    or (C.ndim == 2 and C.shape[0] != 1) or C.ndim > 2:
                return None
            bias = np.ascontiguousarray(np.broadcast_to(C.reshape(-1), (N,)) * np.float32(node.attr("beta", 1.0)),
                                        dtype=_F32)
        A = self.values[step.inputs[0]]
        if not isinstance(A, np.ndarray) or A.ndim != 2:
            return None
        weights = self.dense_weights(B, transposed, float(node.attr("alpha", 1.0)))
        return self._dense(step.inputs[0], shape, weights, bias, step.outputs[0], outputs[0], "C dense (Gemm)")

    def unary(self, step, outputs):
        if not self._out_f32(outputs) or not self._inputs_f32(step, 1):
            return None
        ref, x = self.contiguous_source(step.inputs[0])
        place = self.alloc(step.outputs[0], x.shape, _F32, outputs[0])
        self.instructions.append(_runtime.Unary(ref, place.ref, x.size, _runtime.UNARY_CODES[step.node.op_type]))
        return "C elementwise"

    def _inputs_f32(self, step, n: int) -> bool:
        return len(step.inputs) == n and all(
            s != _ABSENT and isinstance(self.values[s], np.ndarray) and self.values[s].dtype == _F32 for s in step.inputs)

    def binary(self, step, outputs):
        if not self._out_f32(outputs) or not self._inputs_f32(step, 2):
            return None
        (a_ref, a), (b_ref, b) = self.source(step.inputs[0]), self.source(step.inputs[1])
        shape = np.broadcast_shapes(a.shape, b.shape)
        if shape != outputs[0].shape or not (a.flags.aligned and b.flags.aligned):
            return None
        a_strides = np.broadcast_to(a, shape).strides
        b_strides = np.broadcast_to(b, shape).strides
        place = self.alloc(step.outputs[0], shape, _F32, outputs[0])
        out_strides = c_strides(shape, 4)
        dims, (sa, sb, so) = collapse(shape, a_strides, b_strides, out_strides)
        if not dims:
            dims, sa, sb, so = [1], [4], [4], [4]
        self.instructions.append(_runtime.Binary(a_ref, b_ref, place.ref, tuple(dims), tuple(sa), tuple(sb), tuple(so),
                                                 _runtime.BINARY_CODES[step.node.op_type]))
        return "C elementwise"

    def softmax(self, step, outputs):
        node = step.node
        if not self._out_f32(outputs) or not self._inputs_f32(step, 1):
            return None
        x = self.values[step.inputs[0]]
        if x.ndim == 0:
            return None
        axis = node.attr("axis", -1 if step.opset >= 13 else 1) % x.ndim
        if step.opset >= 13 and axis != x.ndim - 1:
            return None  # along an inner axis: not rows
        ref, x = self.contiguous_source(step.inputs[0])
        place = self.alloc(step.outputs[0], x.shape, _F32, outputs[0])
        cols = int(np.prod(x.shape[axis:], dtype=np.int64))  # before 13: the dims from axis on, flattened
        self.instructions.append(_runtime.Softmax(ref, place.ref, x.size // max(cols, 1), cols,
                                                  node.op_type == "LogSoftmax"))
        return "C softmax"

    def concat(self, step, outputs):
        out = outputs[0]
        if not isinstance(out, np.ndarray) or out.dtype.hasobject or any(s == _ABSENT for s in step.inputs):
            return None
        axis = step.node.attr("axis", 0) % out.ndim if out.ndim else 0
        sources = [self.source(s) for s in step.inputs]
        if any(a.dtype != out.dtype for _, a in sources):
            return None
        place = self.alloc(step.outputs[0], out.shape, out.dtype, out)
        strides = place.array.strides
        at = 0
        for ref, array in sources:
            dst = (place.base, place.offset + at * strides[axis])
            self.instructions.append(copy_instruction(_runtime.Copy, ref, dst, array.shape, array.strides, strides,
                                                      out.itemsize))
            at += array.shape[axis]
        return "C copies (Concat)"

    def gather(self, step, outputs):
        if len(step.inputs) != 2:
            return None
        table, ids = self.values[step.inputs[0]], self.values[step.inputs[1]]
        if isinstance(ids, np.ndarray) and ids.ndim == 0 and step.inputs[1] not in self.places:
            return self._gather_one(step, table, int(ids))
        if step.node.attr("axis", 0) != 0:
            return None
        if not (isinstance(table, np.ndarray) and table.ndim >= 1 and not table.dtype.hasobject
                and isinstance(ids, np.ndarray) and ids.dtype in (np.int32, np.int64)):
            return None
        out = outputs[0]
        if not isinstance(out, np.ndarray) or out.shape != ids.shape + table.shape[1:] or out.dtype != table.dtype:
            return None
        table_ref, table = self.source(step.inputs[0])
        if not table.flags.aligned:
            return None
        ids_ref, ids = self.contiguous_source(step.inputs[1])
        place = self.alloc(step.outputs[0], out.shape, out.dtype, out)
        row_shape = table.shape[1:]
        row = copy_plan(row_shape, table.strides[1:], c_strides(row_shape, table.itemsize), table.itemsize)
        self.instructions.append(_runtime.GatherRows(
            table_ref, table.shape[0], table.strides[0], ids_ref, ids.size, ids.itemsize, place.ref,
            table.itemsize * int(np.prod(row_shape, dtype=np.int64)), *row))
        if step.inputs[0] not in self.places:
            pending = embedding_fold.candidate(step, table, ids_ref, ids, len(self.instructions) - 1,
                                               self.step_index, place.array)
            if pending is not None:
                self.gathers[pending.out_slot] = pending
        return "C row lookup (Gather)"

    def _gather_one(self, step, data, index: int):
        """Gather of one constant index (``y[:, -1]``, the last step a classifier reads): a view."""
        place = self.places.get(step.inputs[0])
        if place is None or not isinstance(data, np.ndarray) or data.ndim == 0:
            return None
        axis = step.node.attr("axis", 0) % data.ndim
        size = data.shape[axis]
        if not -size <= index < size:
            return None  # out of range: the kernel reports it
        view = place.array[(slice(None),) * axis + (index % size,)]
        at = self.view_place(view)
        if at is None:
            return None
        self.places[step.outputs[0]] = at
        self.values[step.outputs[0]] = view
        return "vanished (a view: Gather of a constant index)"

    def typed(self, step, outputs):
        node, codes = step.node, _runtime.TYPED_DTYPES
        out = outputs[0]
        unary = node.op_type in ("Cast", "Not", "Neg")
        if len(step.inputs) != (1 if unary else 2) or _ABSENT in step.inputs or len(outputs) != 1:
            return None
        if not isinstance(out, np.ndarray) or out.dtype not in codes:
            return None
        sources = [self.source(s) for s in step.inputs]
        if any(a.dtype not in codes for _, a in sources):
            return None
        if node.op_type == "Div" and any(a.dtype.kind != "f" for _, a in sources):
            return None  # integer division: NumPy's rounding, left to its kernel
        shape = np.broadcast_shapes(*(a.shape for _, a in sources))
        if shape != out.shape:
            return None
        place = self.alloc(step.outputs[0], shape, out.dtype, out)
        strides = [np.broadcast_to(a, shape).strides for _, a in sources] + [c_strides(shape, out.itemsize)]
        dims, merged = collapse(shape, *strides)
        (a_ref, a), (b_ref, b) = sources[0], sources[-1]
        self.instructions.append(_runtime.Typed(
            _runtime.TYPED_OPS[node.op_type], a_ref, codes[a.dtype], None if unary else b_ref, codes[b.dtype],
            place.ref, codes[out.dtype], tuple(dims), tuple(merged[0]), tuple(merged[-2]), tuple(merged[-1])))
        return "C elementwise"

    def python_call(self, step, outputs) -> str:
        args = []
        for slot in tuple(step.inputs) + tuple(step.outer):
            if slot == _ABSENT:
                args.append(None)
            elif slot in self.places:
                place = self.places[slot]
                a = place.array
                args.append(("ref", place.ref, tuple(a.shape), tuple(a.strides), a.dtype))
            else:
                args.append(("obj", self.values[slot]))
        outs = []
        for slot, value in zip(step.outputs, outputs):
            if slot == _ABSENT:
                outs.append(None)
                continue
            if value.__class__ is not np.ndarray or value.dtype.hasobject:
                raise CompileDeclined(f"{step.node.label()} returns a {type(value).__name__}, not a numeric ndarray")
            place = self.alloc(slot, value.shape, value.dtype, value)
            outs.append((place.ref, tuple(value.shape), value.dtype))
        self.instructions.append(_runtime.PyCall(step.kernel, tuple(args), len(step.inputs), tuple(step.outer_names),
                                                 tuple(outs), step, _step_error,
                                                 getattr(step.kernel, "writes_into", False)))
        via = "" if step.describe == "numpy" else f" ({step.describe})"
        return f"falls back: its numpy kernel{via}, called on the program's memory"

    # -- the program --------------------------------------------------------------
    def alias(self, slot: int):
        """What a body's program may hand back for output ``slot`` as it is: ("feed", k) when it
        is all of feed k, ("obj", value) for a constant; None (copied) otherwise, and always
        for a model's own run (its outputs never alias its inputs or constants)."""
        if not self.body:
            return None
        place = self.places.get(slot)
        if place is None:
            value = self.values[slot]
            return ("obj", value) if is_pinned(value) else None
        if place.base >= 1 and place.base - 1 < len(self.feed_specs) and place.offset == 0:
            k = place.base - 1
            shape = self.feed_specs[k][1]
            if place.array.shape == shape and place.array.strides == c_strides(shape, place.array.itemsize):
                return ("feed", k)
        return None

    def program(self):
        outputs = []
        for slot in self.wanted:
            value = self.values[slot]
            if value.__class__ is not np.ndarray or value.dtype.hasobject:
                raise CompileDeclined("an output is not a numeric ndarray")
            ref, array = self.source(slot)
            if self.direct_at[len(outputs)]:
                outputs.append((tuple(array.shape), array.dtype, None, None, True))
                continue
            copy = copy_instruction(_runtime.OutCopy, ref, (_runtime.BASE_ARENA, 0), array.shape, array.strides,
                                    c_strides(array.shape, array.itemsize), array.itemsize)
            outputs.append((tuple(array.shape), array.dtype, copy, self.alias(slot), False))
        text = "\n".join(self.lines[i] for i in sorted(self.lines))
        instructions = tuple(ins for ins in self.instructions if ins is not None)  # None: folded away
        return _runtime.Program(self.feed_specs, instructions, tuple(outputs), self.arena,
                                tuple(self.keep), text)


def is_pinned(value: Any) -> bool:
    """A read-only ndarray owning (through its bases) its memory: a constant a body's program may
    compile in (checked by identity on every call)."""
    return value.__class__ is np.ndarray and not value.flags.writeable


_capsule = None


def _kernel_capsule():
    global _capsule
    if _capsule is None:
        from ._native import _rnn_kernels

        _capsule = _rnn_kernels.CALL_KERNEL
    return _capsule
