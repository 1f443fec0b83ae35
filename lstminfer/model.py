"""``Model``: the public object, a drop-in for ``onnxruntime.InferenceSession``.

It validates feeds at the boundary (names, dtypes, ranks, fixed dims) and
then hands them to the plan, which trusts them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .backends import resolve_backend
from .errors import InvalidArgumentError, InvalidInputError
from .graph import ValueInfo
from .onnx_import import ImportedModel, import_model
from .ops.registry import BuildContext
from .plan import Plan, _runtime
from .program import Programs


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: name, shape, type string."""

    name: str
    shape: list[int | str | None]
    type: str

    @classmethod
    def from_value_info(cls, vi: ValueInfo) -> "NodeArg":
        return cls(vi.name, list(vi.shape) if vi.shape is not None else [], vi.type_string())


@dataclass(frozen=True)
class ModelMetadata:
    """Mirrors onnxruntime's ``ModelMetadata``."""

    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict[str, str]


class _PyRunCore:
    """``_runtime.RunCore`` in Python, where the extension is not built."""

    _run_all = None

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[Any]:
        """Run the model; returns the requested outputs in order, like onnxruntime."""
        whole = self._run_all
        if output_names is None and input_feed.__class__ is dict and whole is not None:
            outputs = whole(input_feed)
            if outputs is not None:
                return outputs
        return self._run_checked(output_names, input_feed)


# Model.run's usual call (no output names, a dict of feeds) is a C method; the rest is _run_checked.
_RunCore = _runtime.RunCore if _runtime is not None else _PyRunCore


class Model(_RunCore):
    """A loaded ONNX model, ready to run.

    ``model`` is a file path, the model's bytes or an ``onnx.ModelProto``.
    ``backend`` is "auto", "numba" or "reference" (see ``lstminfer.backends``);
    ``threads`` is how many cores a fast recurrent kernel may use (default 1).
    ``quantize`` ("int8" or "bf16") quantizes the LSTM/GRU/RNN weights at load
    (see ``lstminfer.quantization``).
    ``sess_options``/``providers`` are accepted (and ignored) so that code
    written for onnxruntime runs unchanged.
    """

    def __init__(self, model: Any, backend: str = "auto", *, threads: int = 1, quantize: str | None = None,
                 sess_options: Any = None, providers: Any = None, provider_options: Any = None, **_ignored: Any):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
        from .quantization import check_mode

        self.quantize = check_mode(quantize)
        self.backend = resolve_backend(backend)
        self.threads = threads
        self._imported: ImportedModel = import_model(model)
        graph = self._imported.graph
        self.quantized_dense: list[str] = []  # MatMul/Gemm/Gather weights quantized at load
        if self.quantize:  # dense weights here; the recurrent ones where their kernels are built
            from .quantization import quantize_dense_initializers

            self.quantized_dense = quantize_dense_initializers(graph, self.quantize)
        ctx = BuildContext(opsets=graph.opsets, backend=self.backend,
                           options={"threads": threads, "quantize": self.quantize,
                                    "initializers": frozenset(graph.initializers)})
        try:
            self._plan = Plan(graph, ctx)
        except Exception as e:
            _prefix_source(e, self._imported.source)
            raise
        self._inputs = list(graph.inputs)
        self._outputs = list(graph.outputs)
        self._input_by_name = {vi.name: vi for vi in self._inputs}
        self._wanted_cache: dict[Any, tuple[int, ...]] = {}
        # Fast acceptance test per input: (name, dtype, rank, fixed dims); anything
        # that fails it goes through the full check, which explains the problem.
        self._fast_checks = [
            (vi.name, vi.dtype, len(vi.shape), tuple((i, d) for i, d in enumerate(vi.shape) if isinstance(d, int)))
            for vi in self._inputs
            if vi.kind == "tensor" and vi.dtype is not None and vi.dtype != np.dtype(object) and vi.shape is not None
        ]
        self._all_fast = len(self._fast_checks) == len(self._inputs)
        # The same test and the executor loop in C (lstminfer._native._runtime), when built.
        self._c_checks = _runtime.FeedChecks(tuple(self._fast_checks)) if self._all_fast and _runtime is not None else None
        self._programs = Programs(self._plan, self._wanted(None))
        self._programs_by_wanted: dict[tuple[int, ...], Programs] = {}  # run(["y"], ...) and the like
        self._run_all = self._checked_run()

    # -- onnxruntime-compatible surface -----------------------------------
    @property
    def input_names(self) -> list[str]:
        return [vi.name for vi in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [vi.name for vi in self._outputs]

    @property
    def source(self) -> str:
        return self._imported.source

    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg.from_value_info(vi) for vi in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg.from_value_info(vi) for vi in self._outputs]

    def get_overridable_initializers(self) -> list[NodeArg]:
        return []

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_modelmeta(self) -> ModelMetadata:
        m = self._imported
        return ModelMetadata(
            producer_name=m.producer_name, graph_name=m.graph_name, domain=m.domain,
            description=m.description, graph_description="", version=m.version,
            custom_metadata_map=dict(m.metadata),
        )

    # run(output_names, input_feed, run_options=None): _RunCore's (C), then _run_checked below.

    def _run_checked(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]:
        """``run`` for every call the C path (``self._run_all``) does not take: checks everything."""
        wanted = self._wanted(output_names)
        programs = self._programs_for(wanted)
        if self._c_checks is not None and input_feed.__class__ is dict:
            feeds = self._c_checks.feeds(input_feed)
            if feeds is not None:
                outputs = programs.run(feeds)  # fresh arrays
                if outputs is not None:
                    return outputs
                outputs = _runtime.detach(self._plan.execute(feeds, wanted), feeds)
                if outputs is not None:
                    return outputs
        feeds = self._validated_feeds(input_feed)
        outputs = programs.run(feeds)  # None for feeds no program takes (sequences, optionals)
        if outputs is not None:
            return outputs
        outputs = self._plan.execute(feeds, wanted)
        feed_roots = {id(f if f.base is None else _root(f)) for f in feeds if f.__class__ is np.ndarray}
        return [_detach(v, feeds, feed_roots) for v in outputs]

    def _programs_for(self, wanted: tuple[int, ...]) -> Programs:
        """The compiled programs of the outputs ``wanted`` (all of them: ``self._programs``)."""
        if wanted == self._programs.wanted:
            return self._programs
        programs = self._programs_by_wanted.get(wanted)
        if programs is None:
            programs = Programs(self._plan, wanted)
            if len(self._programs_by_wanted) < 64:  # as many as _wanted caches
                self._programs_by_wanted[wanted] = programs
        return programs

    def _checked_run(self):
        """``Model.run(None, feed)`` in C for this plan (``_runtime.CheckedRun``), or None: the
        compiled program of the feeds' signature, else the plan's schedule."""
        wanted = self._wanted(None)
        compiled = self._plan.compiled(wanted) if self._c_checks is not None else None
        if compiled is None:
            return None
        run = _runtime.CheckedRun(self._c_checks, compiled, _detach_all)
        run.programs = self._programs.fast
        return run

    # -- friendlier surface ----------------------------------------------
    def predict(self, x: Any = None, /, **named: Any) -> Any:
        """Run on one array (single-input models) or named arrays.

        Arrays are cast to the input's dtype when that is a same-kind cast
        (e.g. float64 -> float32). Returns the only output, or a dict
        name -> array when the model has several.
        """
        if x is not None:
            if named:
                raise InvalidArgumentError("predict() takes one positional array or named arrays, not both")
            data = [vi.name for vi in self._inputs if vi.name not in self._state_inputs()]
            if len(data) != 1:
                raise InvalidArgumentError(
                    f"predict(x) needs a model with one data input; this one has inputs {self.input_names}: "
                    "pass them by name, e.g. predict(" + ", ".join(f"{n}=..." for n in self.input_names) + ")"
                )
            named = {data[0]: x}
        feeds = {}
        for name, value in named.items():
            vi = self._input_by_name.get(name)
            if vi is not None and vi.dtype is not None and vi.kind == "tensor":
                value = _cast_same_kind(value, vi)
            feeds[name] = value
        for vi in self._inputs:
            if vi.name not in feeds and vi.name in self._state_inputs():
                feeds[vi.name] = self._zero_state(vi, feeds)
        outputs = self.run(None, feeds)
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(self.output_names, outputs))

    def _state_inputs(self) -> frozenset[str]:
        """Inputs that only carry an initial recurrent state: ``predict`` fills them with zeros."""
        names = self.__dict__.get("_state_input_names")
        if names is None:
            from .state_pairing import state_input_names

            names = self.__dict__["_state_input_names"] = frozenset(state_input_names(self._imported.graph))
        return names

    def _zero_state(self, vi: ValueInfo, feeds: Mapping[str, Any]) -> np.ndarray:
        """Zeros for state input ``vi``; a named dim takes its size from a given input with that dim."""
        shape = []
        for axis, dim in enumerate(vi.shape or ()):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            size = next((np.shape(feeds[other.name])[k] for other in self._inputs if other.name in feeds
                         for k, d in enumerate(other.shape or ()) if d == dim and dim is not None
                         and np.ndim(feeds[other.name]) > k), None)
            if size is None:
                raise InvalidArgumentError(
                    f"predict: cannot size the zero initial state '{vi.name}' {_shape_text(vi.shape)}: "
                    f"axis {axis} matches no dim of the given inputs; pass {vi.name}=... explicitly"
                )
            shape.append(size)
        return np.zeros(shape, dtype=vi.dtype or np.float32)

    def stream(self, state: Any = None):
        """A ``Stream`` stepping this model chunk by chunk (see ``lstminfer.streaming``).

        ``state``: bytes from ``Stream.save()``, or a state dict. Raises
        ``NotStreamableError`` naming the node that prevents streaming.
        """
        from .streaming import Stream, program_for

        return Stream(program_for(self), state)

    def stream_pool(self, max_streams: int = 64):
        """A thread-safe ``StreamPool`` stepping up to ``max_streams`` streams in one batched run."""
        from .streaming import StreamPool, program_for

        return StreamPool(program_for(self), max_streams)

    def describe(self, feeds: Mapping[str, Any] | None = None) -> str:
        """The plan as text (each node, its op, output shapes and what runs it), then the
        compiled program of ``feeds``' signature (default: zeros with every free dim 1): which
        nodes vanished into views, fused into another's instruction, were folded, run as C
        instructions, or fall back to NumPy."""
        head = [
            f"model: {self.source}  backend: {self.backend}  opsets: {self._imported.graph.opsets}",
            "inputs:  " + ", ".join(f"{a.name} {a.type} {a.shape}" for a in self.get_inputs()),
            "outputs: " + ", ".join(f"{a.name} {a.type} {a.shape}" for a in self.get_outputs()),
            f"{len(self._plan.steps)} steps (after constant folding):",
        ]
        if self.quantize:
            head.insert(3, f"quantize={self.quantize}: dense weights quantized at load: "
                           + (", ".join(self.quantized_dense) or "none (none float32 with >= 4096 values)"))
        lines = head + ["  " + line for line in self._plan.describe_lines()]
        try:
            values = self._validated_feeds(feeds if feeds is not None else self._example_feeds())
        except (InvalidInputError, InvalidArgumentError) as e:
            return "\n".join(lines + [f"compiled program: none for these inputs ({e})"])
        shapes = ", ".join(f"{vi.name} {list(np.shape(v))}" for vi, v in zip(self._inputs, values))
        lines += [f"compiled program for {shapes}:"] + ["  " + line for line in self._programs.describe(values).splitlines()]
        return "\n".join(lines + _body_lines(self._plan, "  "))

    def _example_feeds(self) -> dict[str, np.ndarray]:
        """Zeros of each input's dtype, every dim that is not fixed 1: describe()'s default signature."""
        return {vi.name: np.zeros([d if isinstance(d, int) else 1 for d in (vi.shape or ())], dtype=vi.dtype or np.float32)
                for vi in self._inputs}

    def __repr__(self) -> str:
        return f"<lstminfer.Model {self.source!r} inputs={self.input_names} outputs={self.output_names}>"

    # -- validation ------------------------------------------------------
    def _wanted(self, output_names: Sequence[str] | None) -> tuple[int, ...]:
        key = None if output_names is None else tuple(output_names) if isinstance(output_names, (list, tuple)) else 0
        cached = self._wanted_cache.get(key)
        if cached is not None:
            return cached
        wanted = self._resolve_wanted(output_names)
        if key != 0 and len(self._wanted_cache) < 64:
            self._wanted_cache[key] = wanted
        return wanted

    def _resolve_wanted(self, output_names: Sequence[str] | None) -> tuple[int, ...]:
        if output_names is None or len(output_names) == 0:
            output_names = self.output_names
        elif isinstance(output_names, str):
            raise InvalidArgumentError("output_names must be a list of names or None, not a string")
        known = set(self.output_names)
        for name in output_names:
            if name not in known:
                raise InvalidArgumentError(
                    f"unknown output name '{name}'; the model's outputs are {self.output_names}"
                )
        return tuple(self._plan.output_slot(n) for n in output_names)

    def _validated_feeds(self, input_feed: Mapping[str, Any]) -> list[Any]:
        if not isinstance(input_feed, Mapping):
            raise InvalidInputError(
                f"input feed must be a dict name -> array, got {type(input_feed).__name__}"
            )
        unknown = [n for n in input_feed if n not in self._input_by_name]
        if unknown:
            raise InvalidInputError(
                f"unknown input name(s) {unknown}; the model's inputs are {self.input_names}"
            )
        if self._all_fast and len(input_feed) == len(self._fast_checks):
            feeds = []
            for name, dtype, rank, fixed in self._fast_checks:
                value = input_feed.get(name)
                if value.__class__ is not np.ndarray or value.ndim != rank or (
                        value.dtype is not dtype and value.dtype != dtype):  # `is`: the usual, cheap case
                    break
                shape = value.shape
                for axis, size in fixed:
                    if shape[axis] != size:
                        break
                else:
                    feeds.append(value)
                    continue
                break
            else:
                return feeds
        feeds = []
        for vi in self._inputs:
            if vi.name not in input_feed:
                raise InvalidInputError(
                    f"missing input '{vi.name}' (expected {vi.type_string()} with shape "
                    f"{_shape_text(vi.shape)}); the model's inputs are {self.input_names}"
                )
            feeds.append(_check_input(vi, input_feed[vi.name]))
        return feeds


def _body_lines(plan, indent: str) -> list[str]:
    """The programs Loop/Scan/If bodies compiled (per iteration signature) on the runs so far."""
    lines = []
    for body in plan.bodies:
        compiled = body._programs.compiled() if body._programs is not None else []
        head = f"{indent}body '{body.graph.name}': "
        if not compiled:
            lines.append(head + "no compiled program yet (compiled on its first run)")
            continue
        lines.append(head + "compiled program of its latest signature:")
        lines += [indent + "  " + line for line in compiled[-1].text.splitlines()]
        lines += _body_lines(body, indent + "  ")
    return lines


def _check_input(vi: ValueInfo, value: Any) -> Any:
    if vi.kind in ("optional", "optional_sequence") and value is None:
        return None
    if vi.kind in ("sequence", "optional_sequence"):
        if not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"input '{vi.name}': expected a sequence (list of arrays), got {type(value).__name__}")
        return [_check_tensor(vi, np.asarray(v), f"input '{vi.name}' element {i}", check_shape=False)
                for i, v in enumerate(value)]
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    return _check_tensor(vi, value, f"input '{vi.name}'", check_shape=True)


def _check_tensor(vi: ValueInfo, value: np.ndarray, where: str, check_shape: bool) -> np.ndarray:
    from .dtypes import onnx_type_name

    if vi.dtype is not None:
        ok = value.dtype == vi.dtype or (vi.dtype == np.dtype(object) and value.dtype.kind in "OUS")
        if not ok:
            got = onnx_type_name(value.dtype) if _known_dtype(value.dtype) else str(value.dtype)
            raise InvalidInputError(
                f"{where}: wrong dtype: expected tensor({onnx_type_name(vi.dtype)}), got tensor({got})"
            )
    if check_shape and vi.shape is not None:
        if value.ndim != len(vi.shape):
            raise InvalidInputError(
                f"{where}: wrong rank: expected {len(vi.shape)} dimensions {_shape_text(vi.shape)}, "
                f"got {value.ndim} with shape {tuple(value.shape)}"
            )
        for axis, (want, got) in enumerate(zip(vi.shape, value.shape)):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(
                    f"{where}: wrong size on axis {axis}: expected {want} (shape {_shape_text(vi.shape)}), "
                    f"got {got} (shape {tuple(value.shape)})"
                )
    return value


def _known_dtype(dtype: np.dtype) -> bool:
    from .dtypes import onnx_code

    try:
        onnx_code(dtype)
        return True
    except KeyError:
        return False


def _cast_same_kind(value: Any, vi: ValueInfo) -> Any:
    arr = np.asarray(value)
    if arr.dtype != vi.dtype and np.can_cast(arr.dtype, vi.dtype, casting="same_kind"):
        return arr.astype(vi.dtype)
    return arr


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _detach_all(outputs: list[Any], feeds: list[Any]) -> list[Any]:
    feed_roots = {id(f if f.base is None else _root(f)) for f in feeds if f.__class__ is np.ndarray}
    return [_detach(v, feeds, feed_roots) for v in outputs]


def _detach(value: Any, feeds: list[Any], feed_roots: set[int]) -> Any:
    """Outputs never alias constants or the caller's inputs (onnxruntime returns fresh arrays).

    ``feed_roots``: ids of the arrays that own the feeds' memory.
    """
    if value.__class__ is np.ndarray:
        root = _root(value)
        if root.base is None:
            # The memory belongs to ``root``: the output aliases a feed only if
            # they share that root; constants are frozen, so never writeable.
            if id(root) in feed_roots or not value.flags.writeable:
                return value.copy()
            return value
    if isinstance(value, list):
        return [_detach(v, feeds, feed_roots) for v in value]
    if not isinstance(value, np.ndarray):
        return value
    if not value.flags.writeable or any(
        isinstance(f, np.ndarray) and np.may_share_memory(value, f) for f in feeds
    ):
        return value.copy()
    return value


def _shape_text(shape) -> str:
    if shape is None:
        return "(any)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _prefix_source(error: Exception, source: str) -> None:
    """Name the file in load errors raised deep in the planner."""
    if error.args and isinstance(error.args[0], str) and source not in error.args[0]:
        error.args = (f"{source}: {error.args[0]}",) + error.args[1:]
