"""Streaming, stateful inference: ``Stream`` (one sequence) and ``StreamPool`` (many).

    s = model.stream()                  # raises NotStreamableError if it cannot stream
    y1 = s.step(x[:, :10]); y2 = s.step(x[:, 10:])   # == model.predict(x), split in time
    blob = s.save(); s2 = model.stream(state=blob)

    pool = model.stream_pool(max_streams=1000)
    a, b = pool.open(), pool.open()
    out = pool.step({a: xa, b: xb})     # one batched run of the model for both streams
    out = pool.step({a: x3, b: x1})     # chunks of 3 and 1 steps: padded and masked, or one run each

A last-step head (``fc(y[:, -1])``, ``fc(h_n[-1])``) streams too: each chunk's output is the
head at that chunk's last step, so after the final chunk it equals the whole-sequence output.

State lives at the recurrent nodes (see ``state_pairing``): each chunk runs
the *streaming plan*, where every LSTM/GRU/RNN node reads its carried state
as initial_h/initial_c and hands back Y_h/Y_c. The model's own state inputs
(h0/c0) and state outputs (h_n/c_n) are not part of ``step``: set a state
with ``set_state({"h0": ..., "c0": ...})`` or by carried-state key.

A ``StreamProgram`` (analysis + plan) is built once per model and shared.
``Stream`` is single-owner: use one from one thread at a time.
``StreamPool`` is thread-safe: every public method holds the pool's lock for
its whole duration, so concurrent ``step`` calls run one after the other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Mapping

import numpy as np

from . import state_blob
from .arguments import strict_keywords
from .c_runtime import _runtime
from .conv_streaming import HistorySlot, PhaseSlot, frames_to_fill, with_time_history
from .errors import ExecutionError, InvalidArgumentError, InvalidInputError, LstminferError, NotStreamableError
from .feeds import cast_same_kind, check_input
from .graph import Graph, ValueInfo
from .ops.registry import BuildContext
from .plan import Plan
from .program import Programs
from .state_pairing import Pairing, StateSlot, find_pairing, is_recurrent
from .time_locality import analyse

FORMAT_MAGIC, FORMAT_VERSION = state_blob.MAGIC, state_blob.VERSION  # the saved-state format: state_blob.py
_CHECK_CHUNKS = (2, 3)  # the load-time check runs T=5 whole and as 2+3
_CHECK_ATOL, _CHECK_RTOL = 1e-5, 1e-4
_KNOWN_SHAPES = 64  # chunk shapes a pool remembers as checked (bounds the set under arbitrary T)
_LENGTHS_INPUT = "__lstminfer_stream_lengths__"  # the masked plan's per-stream lengths (int32 [batch])
_MASK_MAX_PADDING = 2.0  # pad to the longest chunk only while that at most doubles the time steps run
_EXACT_BATCH_ROWS = 16  # pool steps of up to this many streams run at their own size (see _bucket_rows)
_STEADY_BATCH = 8  # a batch size repeated this often in a row runs unpadded (one more program)
_PHASE_PROGRAMS = 64  # phase combinations of a model with strided/unpadded windows kept compiled


def streamability(model) -> tuple[bool, str]:
    """(True, how) or (False, why not): what ``lstminfer info`` reports."""
    try:
        keys = list(model.stream().state)
    except NotStreamableError as e:
        return False, str(e)
    return True, f"{len(keys)} carried state tensor(s): " + ", ".join(keys)


class StreamProgram:
    """What every stream of one model shares: the streaming plan and its axes. Immutable.

    ``graph`` is the model's graph, ``plan`` its plan (which computes initial states from the
    model's own state inputs) and ``ctx`` what that plan was built with.
    """

    def __init__(self, graph: Graph, plan: Plan, ctx: BuildContext):
        self.graph_inputs: tuple[ValueInfo, ...] = tuple(graph.inputs)
        self.model_plan = plan
        keeping = lambda names: Plan(dataclasses.replace(  # noqa: E731 (the values a fusion would join)
            graph, outputs=list(graph.outputs) + [ValueInfo(n) for n in names]), ctx)
        pairing: Pairing = with_time_history(find_pairing(graph), plan, keeping)
        self.pairing = pairing
        self.slots: tuple[StateSlot, ...] = pairing.slots
        self.data_inputs: tuple[ValueInfo, ...] = pairing.data_inputs
        self.output_names = [vi.name for vi in pairing.data_outputs]
        self.plan = Plan(pairing.graph, ctx)
        self.wanted = tuple(self.plan.output_slot(n) for n in self.output_names + [s.stream_output for s in self.slots])
        self.programs = Programs(self.plan, self.wanted)
        unfed = {self.plan.output_slot(n): n for n in pairing.state_inputs}
        read = self.plan.reads(self.wanted)
        for slot, name in unfed.items():
            if slot in read:
                raise NotStreamableError(
                    f"state input '{name}' is read by nodes other than the initial-state glue"
                )
        live = [step.node for step, _ in self.plan.schedule(self.wanted)]
        axes = analyse(live, self.data_inputs, pairing.data_outputs, self.plan.constant,
                       graph.value_info, ctx.opset())
        self.time_axes: dict[str, int | None] = axes.input_axes
        self.output_time_axes: dict[str, int | None] = axes.output_axes  # None: a last-step head
        self.last_step_picks = axes.last_step_picks
        self.batch_axes = {vi.name: _batch_axis(vi, self.time_axes[vi.name]) for vi in self.data_inputs}
        # a window of a phase (stride or short start padding over time): chunks yield other numbers of frames
        self.phased = any(isinstance(s, HistorySlot) and s.phased for s in self.slots)
        self._phase_at = [i for i, s in enumerate(self.slots) if isinstance(s, PhaseSlot)]
        self._by_phase: dict[tuple[int, ...], Programs] = {}  # _programs_at
        self.initial_state = self.state_from_inputs({})
        self.state_shapes = {k: v.shape for k, v in self.initial_state.items()}
        self.state_dtypes = {k: v.dtype for k, v in self.initial_state.items()}
        self._check_chunking()
        self.fingerprint = _fingerprint(graph)
        self._output_batch_axes: dict[str, int | None] | None = None
        # Fast path of step (see ``Stream.step``): one tensor data input, checked
        # by identity of dtype and by a shape already accepted; and ``direct``,
        # the recurrent kernel itself when the plan is that one node.
        vi = self.data_inputs[0] if len(self.data_inputs) == 1 else None
        self.chunk_dtype = vi.dtype if vi is not None and vi.kind == "tensor" else None
        self.chunk_batch_axis = self.batch_axes[vi.name] if vi is not None else None
        self.direct = self._direct_call()
        self.direct_into = self._direct_into()
        self._ctx = ctx
        self._masked: tuple[Plan, Programs, tuple[int, ...]] | None | bool = False  # built on first use

    # -- running ------------------------------------------------------------
    def run(self, data: list[np.ndarray], states: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """One run of the streaming plan: (outputs, new states), states in slot order."""
        values = self.plan.execute(data + states, self.wanted)
        n = len(self.output_names)
        return values[:n], values[n:]

    def run_fast(self, data: list[np.ndarray], states: list[np.ndarray],
                 in_place: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``run`` for feeds already checked: the direct kernel call when there is one, else the
        compiled program of their signature (``in_place``: writing the new states over ``states``'
        arrays, which are then the states returned), else the plan."""
        direct = self.direct
        if direct is None:
            n = len(self.output_names)
            programs = self._programs_at(states) if self.phased else self.programs
            values = programs.run(data + states, [None] * n + states if in_place else None)
            if values is None:
                return self.run(data, states)
            return values[:n], values[n:]
        out = direct(data[0], states)
        return [out[0]], list(out[1:])

    def _programs_at(self, states: list[np.ndarray]) -> Programs:
        """The programs of the streams' phases (``PhaseSlot``s; one value per run: the pool groups
        by phase): a phase decides how many frames each window hands on, so the shapes a program
        is compiled for hold for one phase only (another would decline it, every call)."""
        key = tuple(int(states[i].reshape(-1)[0]) for i in self._phase_at)
        programs = self._by_phase.get(key)
        if programs is None:
            if len(self._by_phase) >= _PHASE_PROGRAMS:
                self._by_phase.clear()
            programs = self._by_phase[key] = Programs(self.plan, self.wanted)
        return programs

    def masked(self) -> tuple[Plan, Programs, tuple[int, ...]] | None:
        """(plan, programs, wanted) of the streaming graph with every recurrent node reading
        per-stream lengths (int32 [batch], fed after the carried states), or None where padding
        chunks to one length is not exact: an input without a time or batch axis, a node picking
        the last step of a per-step value (y[:, -1] would read a padded step). Exact otherwise: every node but the recurrent ones is time-local (the
        streamability analysis), and a recurrent node given lengths leaves a row's state at its
        last valid step, so padded steps reach no valid output. Built on first use."""
        if self._masked is False:
            masked = None
            # Not with a convolution's carried frames (HistorySlot): padded steps would enter them.
            axes_known = not any(isinstance(s, HistorySlot) for s in self.slots) and all(
                self.time_axes[vi.name] is not None and self.batch_axes[vi.name] is not None
                and vi.kind == "tensor" for vi in self.data_inputs) \
                and not self.last_step_picks  # heads on Y_h/Y_c only: those hold each row's last valid step
            if axes_known:
                graph = self.pairing.graph
                nodes = [dataclasses.replace(n, inputs=_with_lengths(n.inputs)) if is_recurrent(n)
                         else n for n in graph.nodes]
                at = len(self.data_inputs) + len(self.slots)  # after the carried states: fed in that order
                inputs = list(graph.inputs[:at]) + [ValueInfo(_LENGTHS_INPUT, np.dtype(np.int32), ("N",))] \
                    + list(graph.inputs[at:])
                try:
                    plan = Plan(dataclasses.replace(graph, nodes=nodes, inputs=inputs), self._ctx)
                    wanted = tuple(plan.output_slot(n)
                                   for n in self.output_names + [s.stream_output for s in self.slots])
                    masked = (plan, Programs(plan, wanted), wanted)
                except LstminferError:  # a kernel that cannot take lengths: pools run one batch per length
                    masked = None
            self._masked = masked  # one assignment: pools of this model on other threads see all or nothing
        return self._masked

    def run_masked(self, data: list[np.ndarray], states: list[np.ndarray], lengths: np.ndarray,
                   in_place: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``run_fast`` of the masked plan (``masked()`` not None): row i's inputs are valid for
        ``lengths[i]`` time steps; its states come back as of that step."""
        plan, programs, wanted = self._masked
        n = len(self.output_names)
        feeds = data + states + [lengths]
        values = programs.run(feeds, [None] * n + states if in_place else None)
        if values is None:
            values = plan.execute(feeds, wanted)
        return values[:n], values[n:]

    def data_feeds(self, x: Any, batch: int | None = 1) -> list[np.ndarray]:
        """``x`` (array or dict) checked against the data inputs: dtype, rank, fixed dims, batch."""
        if isinstance(x, Mapping):
            unknown = [k for k in x if k not in {vi.name for vi in self.data_inputs}]
            missing = [vi.name for vi in self.data_inputs if vi.name not in x]
            if unknown or missing:
                raise InvalidInputError(
                    f"step expects the data input(s) {[vi.name for vi in self.data_inputs]}"
                    + (f"; unknown: {unknown}" if unknown else "") + (f"; missing: {missing}" if missing else "")
                )
            named = dict(x)
        elif len(self.data_inputs) == 1:
            named = {self.data_inputs[0].name: x}
        else:
            raise InvalidInputError(
                f"this model has several data inputs {[vi.name for vi in self.data_inputs]}: pass a dict"
            )
        feeds = []
        for vi in self.data_inputs:
            value = check_input(vi, cast_same_kind(named[vi.name], vi))
            time, b = self.time_axes[vi.name], self.batch_axes[vi.name]
            if time is not None and value.shape[time] < 1:
                raise InvalidInputError(f"input '{vi.name}': a chunk needs at least one time step (axis {time}), "
                                        f"got shape {tuple(value.shape)}")
            if batch is not None and b is not None and value.shape[b] != batch:
                raise InvalidInputError(f"input '{vi.name}': a stream takes batch {batch} (axis {b}), "
                                        f"got shape {tuple(value.shape)}")
            feeds.append(value)
        return feeds

    def outputs(self, values: list[np.ndarray]) -> Any:
        """Like ``predict``: the only output, or a dict name -> array."""
        values = [v.copy() if isinstance(v, np.ndarray) and not v.flags.writeable else v for v in values]
        if len(values) == 1:
            return values[0]
        return dict(zip(self.output_names, values))

    # -- states ---------------------------------------------------------------
    def state_from_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Carried states for the model's own state inputs (zeros where not given), via its glue."""
        original = self.model_plan
        slots_with_input = [s for s in self.slots if s.original_input]
        wanted = tuple(original.output_slot(s.original_input) for s in slots_with_input)
        values = {}
        if wanted:
            run_feeds = []
            for vi in self.graph_inputs:
                if vi.name in feeds:
                    run_feeds.append(feeds[vi.name])
                else:  # one step (enough steps for the convolutions' windows: frames_to_fill)
                    time = self.time_axes.get(vi.name)
                    shape = tuple(d if isinstance(d, int) else 1 + frames_to_fill(self.slots) * (i == time)
                                  for i, d in enumerate(vi.shape or ()))
                    run_feeds.append(np.zeros(shape, dtype=vi.dtype or np.float32))
            try:
                computed = original.execute(run_feeds, wanted)
            except LstminferError as e:
                raise InvalidInputError(f"could not compute the initial states from the state inputs: {e}") from e
            values = {s.key: np.array(v) for s, v in zip(slots_with_input, computed)}
        for s in self.slots:
            if isinstance(s, HistorySlot):  # a convolution's carried input frames (conv_streaming)
                values[s.key] = s.initial.copy()
            elif s.key not in values:
                values[s.key] = np.zeros((1, 1, self._hidden_size(s)), dtype=self._state_dtype(s))
        for s in self.slots:
            v = values[s.key]
            if isinstance(s, HistorySlot):
                continue
            if v.ndim != 3 or v.shape[s.batch_axis] != 1 or v.shape[1 - s.batch_axis] != 1:
                raise InvalidInputError(
                    f"{s.node.label()}: initial_{s.kind} has shape {tuple(v.shape)}; a stream needs "
                    "one direction and batch 1"
                )
        return values

    def checked_state(self, state: Mapping[str, Any], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A full state from ``state`` (carried-state keys, or the model's state inputs) over ``base``."""
        if not isinstance(state, Mapping):
            raise InvalidArgumentError(f"a state is a dict name -> array (or bytes from save()), got {type(state).__name__}")
        keys = [s.key for s in self.slots]
        if state and all(k in self.pairing.state_inputs for k in state):
            return self.state_from_inputs({k: np.asarray(v) for k, v in state.items()})
        unknown = [k for k in state if k not in keys]
        if unknown:
            raise InvalidArgumentError(
                f"unknown state name(s) {unknown}; expected carried-state keys {keys}"
                + (f" or the model's state inputs {list(self.pairing.state_inputs)}" if self.pairing.state_inputs else "")
            )
        out = dict(base)
        for key, value in state.items():
            value = np.asarray(value)
            want_shape, want_dtype = self.state_shapes[key], self.state_dtypes[key]
            if value.shape != want_shape:
                raise InvalidInputError(f"state '{key}': expected shape {want_shape}, got {tuple(value.shape)}")
            if value.dtype != want_dtype:
                if not np.can_cast(value.dtype, want_dtype, casting="same_kind"):
                    raise InvalidInputError(f"state '{key}': expected dtype {want_dtype}, got {value.dtype}")
                value = value.astype(want_dtype)
            out[key] = np.array(value)
        return out

    def save(self, state: Mapping[str, np.ndarray]) -> bytes:
        return state_blob.encode(self.fingerprint, {s.key: state[s.key] for s in self.slots})

    def load(self, blob: bytes) -> dict[str, np.ndarray]:
        """The full state in ``blob`` (bytes from ``save``); ``InvalidInputError`` for anything else."""
        return state_blob.decode(blob, self.fingerprint, self.state_shapes, self.state_dtypes)

    # -- pool support -----------------------------------------------------------
    def output_batch_axes(self) -> dict[str, int | None]:
        """Batch axis of each output, found by running batch 2 and 3 (None: batch-independent)."""
        if self._output_batch_axes is None:
            shapes = []
            for batch in (2, 3):
                data = [self._dummy(vi, batch, 1) for vi in self.data_inputs]
                states = [np.repeat(self.initial_state[s.key], batch, axis=s.batch_axis) for s in self.slots]
                outputs, _ = self.run(data, states)
                shapes.append([np.shape(v) for v in outputs])
            axes = {}
            for name, a, b in zip(self.output_names, *shapes):
                changed = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
                if len(changed) > 1 or len(a) != len(b):
                    raise NotStreamableError(f"output '{name}': cannot tell its batch axis ({a} vs {b})")
                axes[name] = changed[0] if changed else None
            self._output_batch_axes = axes
        return self._output_batch_axes

    # -- helpers ------------------------------------------------------------------
    def _direct_call(self):
        """``call(x, states) -> (outputs, new states)`` running the recurrent kernel alone, or None.

        Applies when the live plan is one LSTM/GRU/RNN node whose X is the only
        data input, whose initial_h/initial_c are the carried states and whose
        other inputs are constants: no executor, no per-call slot bookkeeping.
        """
        schedule = self.plan.schedule(self.wanted)
        if len(schedule) != 1 or self.chunk_dtype is None:
            return None
        step = schedule[0][0]
        node = step.node
        if step.outer_names or not is_recurrent(node):
            return None
        slot = self.plan.output_slot
        x_slot = slot(self.data_inputs[0].name)
        state_slots = [slot(s.stream_input) for s in self.slots]
        template: list[Any] = []
        x_at, state_at = None, [None] * len(state_slots)
        for position, (name, s) in enumerate(zip(node.inputs, step.inputs)):
            if not name:
                template.append(None)
            elif s == x_slot and x_at is None:
                x_at = position
                template.append(None)
            elif s in state_slots and state_at[state_slots.index(s)] is None:
                state_at[state_slots.index(s)] = position
                template.append(None)
            elif self.plan.constant(name) is not None:
                template.append(self.plan.constant(name))
            else:
                return None
        if x_at != 0 or None in state_at:
            return None
        picks = [step.outputs.index(w) if w in step.outputs else None for w in self.wanted]
        # Y first, then Y_h[, Y_c] in slot order: then ``out[0]`` and ``out[1:]`` need no picking.
        if picks != list(range(len(picks))) or len(self.output_names) != 1:
            return None
        return _kernel_call(step.kernel, template, state_at, node.label())

    def _direct_into(self):
        """``into(x, *states) -> Y or None``: the direct kernel updating the states in place
        (``KernelCore.run_into``), when ``direct`` applies with no sequence_lens; else None."""
        if self.direct is None:
            return None
        step = self.plan.schedule(self.wanted)[0][0]
        lens = step.node.inputs[4] if len(step.node.inputs) > 4 else ""
        return getattr(step.kernel, "run_into", None) if not lens else None

    def _dummy(self, vi: ValueInfo, batch: int, time: int, rng=None) -> np.ndarray:
        shape = [d if isinstance(d, int) else 1 for d in vi.shape]
        if self.batch_axes[vi.name] is not None:
            shape[self.batch_axes[vi.name]] = batch
        if self.time_axes[vi.name] is not None:
            shape[self.time_axes[vi.name]] = time
        dtype = vi.dtype or np.dtype(np.float32)
        if rng is not None and dtype.kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        return np.zeros(shape, dtype=dtype)

    def _check_chunking(self) -> None:
        """Safety net for the static rule: T=5 whole must equal 2+3 chunks."""
        rng = np.random.default_rng(0)
        chunks = _CHECK_CHUNKS[:-1] + (_CHECK_CHUNKS[-1] + frames_to_fill(self.slots),)  # long enough for windows
        total = sum(chunks)
        whole = [self._dummy(vi, 1, total, rng) for vi in self.data_inputs]
        states = [self.initial_state[s.key] for s in self.slots]
        try:
            expected, _ = self.run(whole, states)
            pieces, start = [], 0
            for length in chunks:
                chunk = [_time_slice(x, self.time_axes[vi.name], start, start + length)
                         for x, vi in zip(whole, self.data_inputs)]
                outputs, states = self.run(chunk, states)
                pieces.append(outputs)
                start += length
        except LstminferError as e:
            raise NotStreamableError(f"running the model on chunks of {list(chunks)} steps failed: {e}") from e
        for i, name in enumerate(self.output_names):
            axis = self.output_time_axes[name]
            # a last-step head: the last chunk's output is the whole sequence's
            got = pieces[-1][i] if axis is None else np.concatenate([p[i] for p in pieces], axis=axis)
            if got.shape != expected[i].shape or not np.allclose(got, expected[i], atol=_CHECK_ATOL, rtol=_CHECK_RTOL):
                raise NotStreamableError(
                    f"output '{name}' differs between a whole sequence and the same sequence in chunks: "
                    "some node mixes time steps"
                )

    def _hidden_size(self, s: StateSlot) -> int:
        H = s.node.attr("hidden_size", None)
        if H is None:
            R = self.model_plan.constant(s.node.inputs[2])
            if R is None:
                raise NotStreamableError(f"{s.node.label()}: hidden_size unknown (no attribute, R not constant)")
            H = int(np.shape(R)[2])
        return int(H)

    def _state_dtype(self, s: StateSlot) -> np.dtype:
        W = self.model_plan.constant(s.node.inputs[1])
        dtype = np.asarray(W).dtype if W is not None else np.dtype(np.float32)
        return dtype if dtype.kind == "f" else np.dtype(np.float32)  # int8 W (DynamicQuantizeLSTM): float state


class Stream:
    """One sequence run chunk by chunk; see the module doc. Single-owner: not thread-safe.

    The carried states are a list in slot order, updated in place. ``step`` first hands the
    chunk to the stream's ``StreamStep`` (C: the kernel's ``run_into`` when the model is one
    recurrent node, which checks it and updates the states in place); otherwise
    ``_step_checked`` accepts a chunk without the full check when it is an ndarray of the
    input's exact dtype and of the shape of the last chunk that passed the full check.
    """

    __slots__ = ("_program", "_states", "_shape", "_fast")

    def __init__(self, program: StreamProgram, state: Any = None):
        self._program = program
        # Always this stream's own arrays: the direct kernel updates them in place.
        self._states = [program.initial_state[s.key].copy() for s in program.slots]
        self._shape: tuple[int, ...] | None = None  # last chunk shape that passed the full check
        if isinstance(state, (bytes, bytearray, memoryview)):
            self._set(program.load(state))
        elif state is not None:
            self.set_state(state)
        # not with phases: a program per phase (StreamProgram.run_fast), which the C step does not pick
        programs = program.programs.fast if program.direct_into is None and not program.phased else None
        self._fast = None  # the C step (_runtime.StreamStep), sharing self._states
        if _runtime is not None and (program.direct_into is not None or programs is not None):
            self._fast = _runtime.StreamStep(self._states, program.direct_into, programs, tuple(program.output_names))

    def step(self, x: Any) -> Any:
        """Run one chunk (any number of time steps >= 1, batch 1); returns the outputs like ``predict``."""
        into = self._program.direct_into
        if into is not None:
            y = into(x, *self._states)
            if y is not None:
                return y
        return self._step_checked(x)

    if _runtime is not None:  # the same in C through self._fast; a class function: no bound method per stream
        step = _runtime.stream_step

    def _step_checked(self, x: Any) -> Any:
        """``step`` for what the kernel's fast path declined (the kernel checks dtype, rank, the
        input size, at least one step and batch 1; a streamable input has no fixed time size):
        the checks that report the problem, and models with glue around the recurrent nodes."""
        program = self._program
        if x.__class__ is np.ndarray and x.dtype is program.chunk_dtype and x.shape == self._shape:
            direct = program.direct
            if direct is not None:
                out = direct(x, self._states)
                self._states[:] = _owned(out[1:])
                return out[0]  # a kernel's Y: computed by this call, so fresh and writeable
            outputs, states = program.run_fast([x], self._states, in_place=True)
        else:
            data = program.data_feeds(x, batch=1)
            outputs, states = program.run_fast(data, self._states, in_place=True)
            if len(data) == 1:
                self._shape = data[0].shape
        self._states[:] = _owned(states)
        if len(outputs) == 1:
            y = outputs[0]
            return y.copy() if y.__class__ is np.ndarray and not y.flags.writeable else y
        return program.outputs(outputs)

    def reset(self) -> None:
        program = self._program
        self._states[:] = [program.initial_state[s.key].copy() for s in program.slots]

    @property
    def output_names(self) -> list[str]:
        """The outputs ``step`` returns (the model's outputs that are not carried states), in order."""
        return list(self._program.output_names)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Copies of the carried states, by key (the recurrent nodes' Y_h/Y_c names)."""
        return {s.key: np.array(v) for s, v in zip(self._program.slots, self._states)}

    def set_state(self, state: Mapping[str, Any] | bytes) -> None:
        """Set some carried states by key, or all of them from the model's state inputs (h0/c0) or
        from bytes of ``save()``; a refused state leaves the stream as it was."""
        if isinstance(state, (bytes, bytearray, memoryview)):
            self._set(self._program.load(state))
            return
        current = dict(zip((s.key for s in self._program.slots), self._states))
        self._set(self._program.checked_state(state, current))

    def save(self) -> bytes:
        return self._program.save(dict(zip((s.key for s in self._program.slots), self._states)))

    def _set(self, state: Mapping[str, np.ndarray]) -> None:
        self._states[:] = [np.array(state[s.key]) for s in self._program.slots]  # own copies


class StreamPool:
    """Up to ``max_streams`` streams stepped together: one batched run of the model per ``step``.

    States live in preallocated per-state buffers of ``max_streams`` slots;
    open/close only move slot indices. Thread-safe: every public method holds
    ``self.lock`` (a ``threading.Lock``) while it runs.
    """

    def __init__(self, program: StreamProgram, max_streams: int):
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise InvalidArgumentError(f"max_streams must be a positive integer, got {max_streams!r}")
        missing = [vi.name for vi in program.data_inputs if program.batch_axes[vi.name] is None]
        if missing:
            raise NotStreamableError(f"input(s) {missing} have no dynamic batch axis: a pool cannot stack streams")
        self._program = program
        self._output_axes = program.output_batch_axes()
        self.max_streams = max_streams
        # Each state's own layout with its batch axis max_streams long: a run of
        # slots lo..hi is a view the kernel reads as is, and takes one copy back.
        self._buffers = [np.zeros(_with(program.state_shapes[s.key], s.batch_axis, max_streams),
                                  dtype=program.state_dtypes[s.key]) for s in program.slots]
        self._shape: tuple[int, ...] | None = None  # the checked shape of the last one-shape step (the C step's)
        self._known_shapes: set[tuple[int, ...]] = set()  # chunk shapes that passed the full check
        self._last_batch = self._streak = 0  # streams in the last program run (_rows_for), runs of that size before
        # Stream ids are never reused: generation << _id_bits | slot, where generation counts the
        # streams that slot held before; _sid_at[slot] is the id open there (-1: none).
        self._id_bits = max(1, (max_streams - 1).bit_length())
        self._sid_at = np.full(max_streams, -1, np.int64)
        self._generation = [0] * max_streams
        self._free = list(range(max_streams - 1, -1, -1))  # pop() hands out slot 0 first
        self._views: dict[tuple[int, int], list[np.ndarray]] = {}
        self.lock = threading.Lock()
        # the whole step in C for a model of one recurrent node or one output (_runtime.PoolStep)
        self._fast = None
        self._express = None  # the serve WebSocket path's lane over self._fast (express_lane)
        out_axis = self._output_axes[program.output_names[0]]
        one_output = program.direct_into is not None or len(program.output_names) == 1
        programs = program.programs.fast if program.direct_into is None else None
        if _runtime is not None and one_output and program.chunk_batch_axis in (0, 1) and out_axis is not None \
                and not program.phased \
                and (program.direct_into is not None or programs is not None):
            self._fast = _runtime.PoolStep(program.direct_into, self._step_checked, self.lock, self._sid_at,
                                           self._id_bits, self._views, self._slot_views, program.chunk_batch_axis,
                                           out_axis, lambda sids, y: _rows_by_stream(sids, y, out_axis), programs,
                                           self._buffers, tuple(s.batch_axis for s in program.slots), self._rows_for)
            self.step = self._fast.step

    @property
    def output_names(self) -> list[str]:
        """The outputs ``step`` returns per stream (the model's outputs that are not carried states)."""
        return list(self._program.output_names)

    @property
    def state_input_names(self) -> list[str]:
        """The model's inputs that set a stream's initial state (h0/c0 ...): a state dict may be keyed by them."""
        return list(self._program.pairing.state_inputs)

    def __len__(self) -> int:
        return self.max_streams - len(self._free)

    @strict_keywords
    def open(self, state: Any = None) -> int:
        """A new stream id, starting from the initial state, ``state`` bytes or a state dict.

        Ids are ints never handed out twice by this pool (a closed stream's id stays unknown)."""
        program = self._program
        if isinstance(state, (bytes, bytearray, memoryview)):
            values = program.load(state)
        elif state is not None:
            values = program.checked_state(state, program.initial_state)
        else:
            values = program.initial_state
        with self.lock:
            if not self._free:
                raise InvalidArgumentError(f"stream pool is full ({self.max_streams} open streams); close one first")
            slot = self._free.pop()
            self._write(slot, values)
            sid = self._generation[slot] << self._id_bits | slot
            self._generation[slot] += 1
            self._sid_at[slot] = sid
            return sid

    def close(self, sid: int) -> None:
        with self.lock:
            slot = self._slot(sid)
            self._free.append(slot)
            self._sid_at[slot] = -1

    def reset(self, sid: int) -> None:
        with self.lock:
            self._write(self._slot(sid), self._program.initial_state)

    def state(self, sid: int) -> dict[str, np.ndarray]:
        with self.lock:
            return self._read(self._slot(sid))

    def set_state(self, sid: int, state: Mapping[str, Any] | bytes) -> None:
        """As ``Stream.set_state`` (bytes of ``save`` too); a refused state changes no stream."""
        with self.lock:
            slot = self._slot(sid)
            if isinstance(state, (bytes, bytearray, memoryview)):
                self._write(slot, self._program.load(state))
            else:
                self._write(slot, self._program.checked_state(state, self._read(slot)))

    def save(self, sid: int) -> bytes:
        with self.lock:
            return self._program.save(self._read(self._slot(sid)))

    def express_lane(self, features: int, monotonic: Any):
        """The pool's ``_runtime.ExpressLane`` (made once): raw float32 chunks of ``features`` values per
        frame stepped from their own buffers, for ``lstminfer serve``'s WebSocket streams; None where
        this pool has no C step or its chunks are not [T, features] frames of float32."""
        with self.lock:
            if self._express is None and self._fast is not None:
                data = self._program.data_inputs
                if len(data) == 1 and data[0].dtype == np.float32 and data[0].shape is not None \
                        and len(data[0].shape) == 3 and data[0].shape[2] == features:
                    self._express = _runtime.ExpressLane(self._fast, features, monotonic)
            return self._express

    def unpadded_batch(self, n: int) -> int:
        """The most streams, at most ``n``, whose step runs at its own size: ``n`` up to 16, else the
        largest bucket size not above ``n`` (a step of another size runs padded up to the next bucket)."""
        return n if n <= _EXACT_BATCH_ROWS else n // _bucket_step(n) * _bucket_step(n)

    def step(self, frames: Mapping[int, Any]) -> dict[int, Any]:
        """Step the given streams by one chunk each; streams not given are untouched.

        Returns {stream id: output} (a dict name -> array for a model of several outputs), in
        the order of ``frames``, each equal to what that stream stepped alone would return.
        Chunks may have different numbers of time steps (each >= 1): all in one run padded to the
        longest, every recurrent layer given each stream's length, while padding at most doubles
        the steps run; else one batched run per chunk shape. Equal shapes, the usual case, are one
        run as always. Every chunk is checked before
        any stream moves; a bad chunk (wrong dtype or feature size, batch other than 1, no time
        step at all) raises ``InvalidInputError`` naming its stream and leaves every state as it was.
        """
        return self._step_checked(frames)

    def _step_checked(self, frames: Mapping[int, Any]) -> dict[int, Any]:
        """``step`` for what the C step (``self._fast``) declined or where it is not built:
        the checks that report the problem, any model, ids in any order, mixed chunk shapes."""
        if frames.__class__ is not dict and not isinstance(frames, Mapping):
            raise InvalidArgumentError(f"step takes a dict stream id -> chunk, got {type(frames).__name__}")
        if not frames:
            return {}
        with self.lock:
            sids = list(frames)
            found = _runtime.lookup_slots(self._sid_at, self._id_bits, sids) if _runtime is not None else None
            if found is not None:
                slots, contiguous = found
            else:
                slots = self._slots_of(sids)
                contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
            chunks = list(frames.values())
            stacked = self._stack_fast(chunks, self._shape) if not self._program.phased else None
            if stacked is not None:  # all of one shape already checked: the usual step
                ran = [(sids, self._run_slots(slots, contiguous, stacked))]
            else:
                groups = self._groups_fast(chunks)
                if groups is None:
                    groups = self._groups_checked(sids, chunks)
                if self._program.phased:
                    groups = self._by_phase(groups, slots)
                padded = self._padded(groups, len(sids)) if len(groups) > 1 else None
                if padded is not None:  # one run of every stream, masked to its own length
                    stacked, lengths = padded
                    outputs = self._run_slots(slots, contiguous, stacked, lengths)
                    return self._by_stream_masked(sids, outputs, lengths)
                ran = []
                for positions, group_stacked in groups:
                    if len(groups) == 1:
                        group_sids, group_slots, group_contiguous = sids, slots, contiguous
                    else:
                        group_sids = [sids[i] for i in positions]
                        group_slots = [slots[i] for i in positions]
                        group_contiguous = group_slots == list(range(group_slots[0], group_slots[0] + len(positions)))
                    ran.append((group_sids, self._run_slots(group_slots, group_contiguous, group_stacked)))
        if len(ran) == 1:
            return self._by_stream(*ran[0])
        by_stream = {}
        for group_sids, outputs in ran:
            by_stream.update(self._by_stream(group_sids, outputs))
        return {sid: by_stream[sid] for sid in sids}

    def _by_phase(self, groups: list[tuple[list[int], list[np.ndarray]]], slots: list[int]
                  ) -> list[tuple[list[int], list[np.ndarray]]]:
        """``groups`` split further by the streams' phases (``conv_streaming.PhaseSlot``): streams at
        another phase yield another number of frames from a chunk of the same length."""
        program = self._program
        phase_buffers = [buf for buf, s in zip(self._buffers, program.slots) if isinstance(s, PhaseSlot)]
        split = []
        for positions, stacked in groups:
            by_phase: dict[tuple[int, ...], list[int]] = {}
            for j, i in enumerate(positions):
                by_phase.setdefault(tuple(int(buf[slots[i]]) for buf in phase_buffers), []).append(j)
            if len(by_phase) == 1:
                split.append((positions, stacked))
                continue
            for rows in by_phase.values():
                split.append(([positions[j] for j in rows],
                              [np.take(v, rows, axis=program.batch_axes[vi.name])
                               for v, vi in zip(stacked, program.data_inputs)]))
        return split

    def _run_slots(self, slots: list[int], contiguous: bool, stacked: list[np.ndarray],
                   lengths: np.ndarray | None = None) -> list[np.ndarray]:
        """One batched run of the streams in ``slots`` (in that order) on ``stacked`` (with
        ``lengths``: the masked plan, row i valid for lengths[i] steps); their states written
        back; the outputs. Call with the lock held."""
        program = self._program
        rows = len(slots) if program.direct is not None else self._rows_for(len(slots))
        if rows != len(slots):
            return self._run_padded(slots, stacked, lengths, rows)
        lo = slots[0]
        if contiguous:
            states = self._slot_views(lo, len(slots))
        else:
            states = [np.take(buf, slots, axis=s.batch_axis) for buf, s in zip(self._buffers, program.slots)]
        if lengths is None:
            outputs, new_states = program.run_fast(stacked, states, in_place=contiguous)
        else:
            outputs, new_states = program.run_masked(stacked, states, lengths, in_place=contiguous)
        for buf, s, value, old in zip(self._buffers, program.slots, new_states, states):
            if value is old:  # the program wrote it in place
                continue
            if contiguous:
                _axis_slice(buf, s.batch_axis, lo, lo + len(slots))[...] = value
            else:
                _put_rows(buf, s.batch_axis, slots, value)
        return outputs

    def _rows_for(self, n: int) -> int:
        """The rows a compiled program's step of ``n`` streams runs. A size seen _STEADY_BATCH times
        running (a caller's fixed batch) gets its own program; sizes that keep changing (a server's)
        share a few: the step padded to a bucket size. Call with the lock held."""
        self._streak = self._streak + 1 if n == self._last_batch else 0
        self._last_batch = n
        return n if self._streak >= _STEADY_BATCH else _bucket_rows(n)

    def _run_padded(self, slots: list[int], stacked: list[np.ndarray], lengths: np.ndarray | None,
                    rows: int) -> list[np.ndarray]:
        """``_run_slots`` as one run of ``rows`` rows: the streams, then copies of the first one's
        row (inputs, states, length) whose results are dropped. A batch of any size then runs one of
        the few programs compiled for bucket sizes, not the plan (each size its own signature)."""
        program = self._program
        n = len(slots)
        take = np.concatenate([np.arange(n), np.zeros(rows - n, np.intp)])
        data = [np.take(v, take, axis=program.batch_axes[vi.name]) for v, vi in zip(stacked, program.data_inputs)]
        states = [np.take(buf, [slots[i] for i in take], axis=s.batch_axis)
                  for buf, s in zip(self._buffers, program.slots)]
        if lengths is None:
            outputs, new_states = program.run_fast(data, states)
        else:
            outputs, new_states = program.run_masked(data, states, lengths[take])
        for buf, s, value in zip(self._buffers, program.slots, new_states):
            _put_rows(buf, s.batch_axis, slots, _axis_slice(value, s.batch_axis, 0, n))
        axes = (self._output_axes[name] for name in program.output_names)
        return [value if axis is None else _axis_slice(value, axis, 0, n) for value, axis in zip(outputs, axes)]

    def _by_stream(self, sids: list, outputs: list[np.ndarray]) -> dict[int, Any]:
        """{sid: its rows of the outputs} (a dict name -> row for several outputs)."""
        program = self._program
        if len(outputs) == 1:
            return _rows_by_stream(sids, outputs[0], self._output_axes[program.output_names[0]])
        per_output = [_split(v, self._output_axes[name], len(sids)) for v, name in zip(outputs, program.output_names)]
        names = program.output_names
        return {sid: dict(zip(names, values)) for sid, values in zip(sids, zip(*per_output))}

    def _padded(self, groups: list[tuple[list[int], list[np.ndarray]]], n: int
                ) -> tuple[list[np.ndarray], np.ndarray] | None:
        """The groups' chunks as one batch padded to the longest (each row's last step repeated,
        so padded steps hold values its chunk already has), and each row's length; None where the
        masked plan does not apply or padding would run more than _MASK_MAX_PADDING times the steps."""
        program = self._program
        axes = [(program.time_axes[vi.name], program.batch_axes[vi.name]) for vi in program.data_inputs]
        if any(t is None or b is None for t, b in axes):
            return None
        group_lengths = []
        for _, stacked in groups:
            steps = {value.shape[t] for value, (t, _) in zip(stacked, axes)}
            if len(steps) != 1:  # inputs of different lengths in one chunk: run as given
                return None
            group_lengths.append(steps.pop())
        lengths = np.empty(n, np.int32)
        for (positions, _), length in zip(groups, group_lengths):
            lengths[positions] = length
        longest = max(group_lengths)
        if n * longest > _MASK_MAX_PADDING * int(lengths.sum()) or program.masked() is None:
            return None
        padded = []
        for k, (t, b) in enumerate(axes):
            first = groups[0][1][k]
            value = np.empty(_with(_with(first.shape, b, n), t, longest), first.dtype)
            for (positions, stacked), length in zip(groups, group_lengths):
                index = [slice(None)] * value.ndim
                index[b], index[t] = positions, slice(0, length)
                value[tuple(index)] = stacked[k]
                if length < longest:
                    index[t] = slice(length, longest)
                    value[tuple(index)] = _time_slice(stacked[k], t, length - 1, length)
            padded.append(value)
        return padded, lengths

    def _by_stream_masked(self, sids: list, outputs: list[np.ndarray], lengths: np.ndarray) -> dict[int, Any]:
        """``_by_stream`` of a masked run: each stream's rows cut to its own time steps."""
        program = self._program
        per_output = []
        for value, name in zip(outputs, program.output_names):
            index = [slice(None)] * value.ndim
            t, cut = program.output_time_axes[name], []
            for row, length in zip(_split(value, self._output_axes[name], len(sids)), lengths.tolist()):
                if t is not None:  # a last-step head (on Y_h/Y_c) is already at the row's last valid step
                    index[t] = slice(0, length)
                cut.append(row[tuple(index)])
            per_output.append(cut)
        if len(outputs) == 1:
            return dict(zip(sids, per_output[0]))
        names = program.output_names
        return {sid: dict(zip(names, values)) for sid, values in zip(sids, zip(*per_output))}

    def _slot_views(self, lo: int, n: int) -> list[np.ndarray]:
        """Views of slots lo .. lo+n-1 of every state buffer (kept: the buffers never move)."""
        views = self._views.get((lo, n))
        if views is None:
            views = [_axis_slice(buf, s.batch_axis, lo, lo + n) for buf, s in zip(self._buffers, self._program.slots)]
            if len(self._views) < 256:
                self._views[(lo, n)] = views
        return views

    def _slots_of(self, sids: list) -> list[int]:
        return [self._slot(sid) for sid in sids]  # raises, naming the bad id

    def _stack_fast(self, chunks: list, shape: tuple[int, ...] | None) -> list[np.ndarray] | None:
        """The chunks stacked along the batch axis when they all have ``shape``, one that passed
        the full check before, and together make an array of the input's dtype (any other dtype
        would need the full check's cast or error); else None. ``np.array`` checks the shapes in C."""
        program = self._program
        if shape is None:
            return None
        if _runtime is not None:  # one memcpy per chunk, in C
            stacked = np.empty((len(chunks),) + shape, program.chunk_dtype)
            if not _runtime.gather_chunks(chunks, stacked, shape):
                return None
        else:
            try:
                stacked = np.array(chunks)
            except (ValueError, TypeError):  # ragged shapes, odd objects
                return None
            if stacked.dtype is not program.chunk_dtype or stacked.shape[1:] != shape:
                return None
        # [n, ..., 1 (batch), ...] -> the batch axis n long, the rest in place.
        b = program.chunk_batch_axis
        if b:
            stacked = stacked.transpose(tuple(range(1, b + 1)) + (0,) + tuple(range(b + 1, len(shape) + 1)))
        return [stacked.reshape(_with(shape, b, len(chunks)))]

    def _groups_fast(self, chunks: list) -> list[tuple[list[int], list[np.ndarray]]] | None:
        """(positions, stacked) per chunk shape when every chunk is an ndarray of the input's dtype
        with a shape that passed the full check before (then it passes again); else None."""
        known, dtype = self._known_shapes, self._program.chunk_dtype
        if not known:
            return None
        positions: dict[tuple[int, ...], list[int]] = {}
        for i, chunk in enumerate(chunks):
            if chunk.__class__ is not np.ndarray or chunk.dtype is not dtype or chunk.shape not in known:
                return None
            positions.setdefault(chunk.shape, []).append(i)
        if len(positions) == 1:  # one shape again, after another: the C step takes it from now on
            self._shape = chunks[0].shape
            if self._fast is not None:
                self._fast.shape = self._shape
        groups = []
        for shape, where in positions.items():
            stacked = self._stack_fast([chunks[i] for i in where], shape)
            if stacked is None:
                return None
            groups.append((where, stacked))
        return groups

    def _groups_checked(self, sids: list, chunks: list) -> list[tuple[list[int], list[np.ndarray]]]:
        """The full check of every chunk (dtype, rank, fixed dims, batch 1, a time step), then
        (positions, stacked) per chunk shape(s), in order of first appearance."""
        program = self._program
        data = []
        for sid, chunk in zip(sids, chunks):
            try:
                data.append(program.data_feeds(chunk, batch=1))
            except InvalidInputError as e:
                raise InvalidInputError(f"stream {sid}: {e}") from None
        positions: dict[tuple, list[int]] = {}
        for i, feeds in enumerate(data):
            positions.setdefault(tuple(np.shape(v) for v in feeds), []).append(i)
        if len(program.data_inputs) == 1:  # chunks of these shapes take the fast checks from now on
            if len(positions) == 1:
                self._shape = next(iter(positions))[0]
                if self._fast is not None:  # the C step takes chunks of this shape without the full check
                    self._fast.shape = self._shape
            if program.chunk_dtype is not None and len(self._known_shapes) < _KNOWN_SHAPES:
                self._known_shapes.update(shapes[0] for shapes in positions)
        return [(where, [np.concatenate([data[i][k] for i in where], axis=program.batch_axes[vi.name])
                         for k, vi in enumerate(program.data_inputs)])
                for where in positions.values()]

    # -- slots (call with the lock held) ----------------------------------------
    def _slot(self, sid: Any) -> int:
        # integers only (numpy's too), not bools: True must not find stream 1 (as 1.0 does not)
        if isinstance(sid, (int, np.integer)) and not isinstance(sid, bool) and sid >= 0:
            value = int(sid)  # exact, whatever numpy integer type it came as
            slot = value & ((1 << self._id_bits) - 1)
            if slot < self.max_streams and int(self._sid_at[slot]) == value:
                return slot
        raise InvalidArgumentError(f"unknown or closed stream id {sid!r} ({len(self)} open)")

    def _write(self, slot: int, values: Mapping[str, np.ndarray]) -> None:
        for buf, s in zip(self._buffers, self._program.slots):
            _axis_slice(buf, s.batch_axis, slot, slot + 1)[...] = values[s.key]

    def _read(self, slot: int) -> dict[str, np.ndarray]:
        return {s.key: _axis_slice(buf, s.batch_axis, slot, slot + 1).copy()
                for buf, s in zip(self._buffers, self._program.slots)}


def _owned(states):
    """The states, with any view (Y_h into Y, ...) copied: the caller may write to the outputs."""
    for v in states:
        if v.base is not None:
            return [v if v.base is None else v.copy() for v in states]
    return states


def _kernel_call(kernel, template: list[Any], state_at: list[int], label: str):
    """``call(x, states) -> kernel outputs`` with the constants bound; the usual arities spelled out
    (a generic argument list is a large part of a small step)."""
    def failed(e: Exception) -> ExecutionError:  # worded like the executor's errors
        return ExecutionError(f"{label} failed: {type(e).__name__}: {e}")

    if len(template) == 8 and state_at == [5, 6]:  # LSTM: X, W, R, B, lens, h, c, P
        _, W, R, B, lens, _, _, P = template

        def call(x, states):
            try:
                return kernel(x, W, R, B, lens, states[0], states[1], P)
            except LstminferError:
                raise
            except Exception as e:
                raise failed(e) from e
    elif len(template) == 6 and state_at == [5]:  # GRU/RNN: X, W, R, B, lens, h
        _, W, R, B, lens, _ = template

        def call(x, states):
            try:
                return kernel(x, W, R, B, lens, states[0])
            except LstminferError:
                raise
            except Exception as e:
                raise failed(e) from e
    else:
        def call(x, states):
            args = template.copy()
            args[0] = x
            for position, value in zip(state_at, states):
                args[position] = value
            try:
                return kernel(*args)
            except LstminferError:
                raise
            except Exception as e:
                raise failed(e) from e

    return call


def _with_lengths(inputs: tuple[str, ...]) -> tuple[str, ...]:
    """A recurrent node's inputs with sequence_lens (input 4) the pool's per-stream lengths."""
    padded = tuple(inputs) + ("",) * max(0, 5 - len(inputs))
    return padded[:4] + (_LENGTHS_INPUT,) + padded[5:]


def _bucket_rows(n: int) -> int:
    """The rows a pool step of ``n`` streams runs: ``n`` up to 16, else ``n`` rounded up to a
    quarter of its octave (20, 24, 28, 32, 40, ...), so that varied batch sizes share ~4 compiled
    programs per doubling (at most a quarter more rows run)."""
    return n if n <= _EXACT_BATCH_ROWS else -(-n // _bucket_step(n)) * _bucket_step(n)


def _bucket_step(n: int) -> int:
    """A quarter of the power of two at or below ``n``: the spacing of the bucket sizes around n."""
    return 1 << (n.bit_length() - 3)


def _with(shape: tuple[int, ...], axis: int, size: int) -> tuple[int, ...]:
    return shape[:axis] + (size,) + shape[axis + 1:]


def _axis_slice(value: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, stop)
    return value[tuple(index)]


def _put_rows(buf: np.ndarray, axis: int, rows: list[int], value: np.ndarray) -> None:
    """``buf``'s entries ``rows`` along ``axis`` set to ``value`` (a scatter of slots' states)."""
    index = [slice(None)] * buf.ndim
    index[axis] = rows
    buf[tuple(index)] = value


def _rows_by_stream(sids: list, value: np.ndarray, axis: int | None) -> dict:
    """{sid: its row of ``value`` along the batch axis} (views, made in C when it can)."""
    if _runtime is not None and axis is not None:
        rows = _runtime.rows_by_stream(sids, value, axis)
        if rows is not None:
            return rows
    return dict(zip(sids, _split(value, axis, len(sids))))


def _split(value: np.ndarray, axis: int | None, n: int) -> list[np.ndarray]:
    """``n`` views of ``value``, one per batch row, each keeping the batch axis (size 1)."""
    if axis is None:  # batch-independent: every stream gets its own copy
        return [np.array(value) for _ in range(n)]
    if not value.flags.writeable:
        value = value.copy()
    shape = value.shape
    if value.flags.c_contiguous and all(d == 1 for d in shape[:axis]):
        # rows already lie one after another (e.g. Y [1, 1, n, H]): a reshape is a view
        return list(value.reshape((n,) + shape[:axis] + (1,) + shape[axis + 1:]))
    # A size-1 axis after the batch axis, then the batch axis first: iterating makes the views in C.
    rows = value[(slice(None),) * (axis + 1) + (None,)]
    return list(rows.transpose((axis,) + tuple(i for i in range(value.ndim + 1) if i != axis)))


def _time_slice(x: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    if axis is None:
        return x
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _batch_axis(vi: ValueInfo, time_axis: int | None) -> int | None:
    """The input's batch axis: its one non-fixed axis besides time (prefer one named like 'batch')."""
    free = [i for i, d in enumerate(vi.shape) if not isinstance(d, int) and i != time_axis]
    if len(free) == 1:
        return free[0]
    named = [i for i in free if isinstance(vi.shape[i], str) and "batch" in vi.shape[i].lower()]
    if len(named) == 1:
        return named[0]
    if free:
        raise NotStreamableError(f"input '{vi.name}' {list(vi.shape)}: cannot tell its batch axis")
    return None


def _fingerprint(graph: Graph) -> str:
    """A hash of the graph's structure and weights: states only restore into the same model."""
    h = hashlib.sha256()

    def feed(g: Graph) -> None:
        h.update(repr([(vi.name, str(vi.dtype), vi.shape) for vi in g.inputs + g.outputs]).encode())
        for name in sorted(g.initializers):
            value = np.ascontiguousarray(g.initializers[name])
            h.update(f"{name}{value.dtype}{value.shape}".encode())
            h.update(value.tobytes())
        for node in g.nodes:
            h.update(repr((node.op_type, node.domain, node.inputs, node.outputs)).encode())
            for key in sorted(node.attrs):
                value = node.attrs[key]
                if isinstance(value, Graph):
                    feed(value)
                elif isinstance(value, np.ndarray):
                    h.update(key.encode() + value.tobytes())
                else:
                    h.update(repr((key, value)).encode())

    feed(graph)
    return h.hexdigest()
