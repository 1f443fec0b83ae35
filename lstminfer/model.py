"""``Model``: the public object, a drop-in for ``onnxruntime.InferenceSession``.

It validates feeds at the boundary (names, dtypes, ranks, fixed dims) and
then hands them to the plan, which trusts them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .arguments import strict_keywords, warn_caller
from .backends import known_backends, resolve_backend
from .c_runtime import _runtime
from .errors import InvalidArgumentError, InvalidInputError, NotStreamableError
from .feeds import Inputs, cast_same_kind, shape_text
from .graph import ValueInfo
from .onnx_import import ImportedModel, import_model
from .ops.registry import BuildContext
from .plan import Plan
from .program import Programs
from .quantized_heads import rewrite_quantized_products
from .session_options import SessionOptions, machine_cores, provider_settings, threads_of
from .state_pairing import state_input_names

if TYPE_CHECKING:
    from .streaming import Stream, StreamPool, StreamProgram


class NodeArg:
    """An input or output as onnxruntime describes it: name, shape, type string. Immutable, so a
    model builds its own once at load; ``shape`` is a new list at each read, as onnxruntime's is."""

    __slots__ = ("_name", "_dims", "_type")

    def __init__(self, name: str, shape: Sequence[int | str | None], type: str):
        self._name, self._dims, self._type = name, tuple(shape), type

    @classmethod
    def from_value_info(cls, vi: ValueInfo) -> "NodeArg":
        return cls(vi.name, vi.shape if vi.shape is not None else (), vi.type_string())

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> list[int | str | None]:
        return list(self._dims)

    @property
    def type(self) -> str:
        return self._type

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeArg):
            return NotImplemented
        return (self._name, self._dims, self._type) == (other._name, other._dims, other._type)

    def __hash__(self) -> int:
        return hash((self._name, self._dims, self._type))

    def __repr__(self) -> str:
        return f"NodeArg(name={self._name!r}, type={self._type!r}, shape={list(self._dims)!r})"


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


class Model:
    """A loaded ONNX model, ready to run.

    ``model`` is a file path, the model's bytes or an ``onnx.ModelProto``.
    ``backend`` is "auto", "cython", "numba" or "reference" (see ``lstminfer.backends``);
    ``threads`` is how many cores a fast recurrent kernel may use (default 1, or
    ``sess_options.intra_op_num_threads``; more than the machine's cores warns).
    ``quantize`` ("int8" or "bf16") quantizes the LSTM/GRU/RNN weights at load
    (see ``lstminfer.quantization``).
    ``sess_options`` (an onnxruntime-style ``lstminfer.SessionOptions``), ``providers`` and
    ``provider_options`` are taken as onnxruntime takes them (``lstminfer.session_options`` says
    what each field does here); ``lstminfer.InferenceSession`` takes them positionally.
    ``fallback="onnxruntime"`` runs the nodes lstminfer does not support through onnxruntime
    (one InferenceSession per node, built at load; see ``lstminfer.ort_fallback``); off by default.
    An unknown keyword is a ``TypeError`` naming the closest valid one.
    """

    @strict_keywords
    def __init__(self, model: Any, backend: str = "auto", *, threads: int | None = None, quantize: str | None = None,
                 fallback: str | None = None, sess_options: SessionOptions | None = None, providers: Any = None, provider_options: Any = None):
        self.session_options = _session_options(sess_options)
        self.cpu_provider_options = provider_settings(providers, provider_options)
        threads = _threads(threads, self.session_options)
        if not isinstance(backend, str) and backend is not None:
            raise InvalidArgumentError(
                f"backend must be a name ({', '.join(known_backends())}), got {type(backend).__name__}"
                + ("; onnxruntime's order InferenceSession(path, sess_options, providers) is "
                   "lstminfer.InferenceSession's, not Model's or load's" if isinstance(backend, (SessionOptions, list)) else ""))
        if self.session_options.optimized_model_filepath:
            warn_caller(f"SessionOptions.optimized_model_filepath={self.session_options.optimized_model_filepath!r}: "
                        "nothing is written there (lstminfer's optimised form is a compiled program, not an ONNX file)")
        from .quantization import check_mode

        self.quantize = check_mode(quantize)
        self.backend = resolve_backend(backend)
        self.threads = threads
        self._imported: ImportedModel = import_model(model)
        graph = self._imported.graph
        # onnxruntime's quantized MatMuls with a constant weight: MatMul on that weight (lstminfer.quantized_heads)
        # (not on the reference backend: its ops emulate onnxruntime exactly, the oracle)
        self.rewritten_products: list[str] = [] if self.backend == "reference" else rewrite_quantized_products(graph)
        self.quantized_dense: list[str] = []  # MatMul/Gemm/Gather weights quantized at load
        if self.quantize:  # dense weights here; the recurrent ones where their kernels are built
            from .quantization import quantize_dense_initializers

            self.quantized_dense = quantize_dense_initializers(graph, self.quantize)
        options = {"threads": threads, "quantize": self.quantize, "initializers": frozenset(graph.initializers)}
        self.fallback = fallback
        self.fallback_nodes: list[str] = []  # labels of the nodes onnxruntime runs (fallback="onnxruntime")
        if fallback is not None:
            from .ort_fallback import fallback_kernels

            options["node_kernels"] = kernels = fallback_kernels(graph, fallback, self._imported.source)
            self.fallback_nodes = [k.label for k in kernels.values()]
        self._ctx = BuildContext(opsets=graph.opsets, backend=self.backend, options=options)
        try:
            self._plan = Plan(graph, self._ctx)
        except Exception as e:
            _prefix_source(e, self._imported.source)
            raise
        self._inputs = list(graph.inputs)
        self._outputs = list(graph.outputs)
        # built once: code written for onnxruntime asks for them on every run
        self._input_args = tuple(NodeArg.from_value_info(vi) for vi in self._inputs)
        self._output_args = tuple(NodeArg.from_value_info(vi) for vi in self._outputs)
        self._feeds = Inputs(self._inputs)
        self._wanted_cache: dict[Any, tuple[int, ...]] = {}
        self._programs = Programs(self._plan, self._wanted(None))
        self._programs_by_wanted: dict[tuple[int, ...], Programs] = {}  # run(["y"], ...) and the like
        self._streaming: StreamProgram | NotStreamableError | None = None  # built by the first stream()
        self._lock = threading.Lock()
        self._fast = self._run_path()
        if self._fast is not None:  # run(None, dict) in C; every other call comes back to _run_checked
            self.run = self._fast.run

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
        return list(self._input_args)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._output_args)

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

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[Any]:
        """Run the model; returns the requested outputs in order, like onnxruntime."""
        return self._run_checked(output_names, input_feed)

    def _run_checked(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]:
        """``run`` for every call the C path (``self._fast``) does not take: checks everything."""
        wanted = self._wanted(output_names)
        programs = self._programs_for(wanted)
        feeds = self._feeds.exact(input_feed)
        if feeds is None:
            feeds = self._feeds.checked(input_feed)
        outputs = programs.run(feeds)  # fresh arrays; None for feeds no program takes (sequences, optionals)
        if outputs is not None:
            return outputs
        outputs = self._plan.execute(feeds, wanted)
        detached = _runtime.detach(outputs, feeds) if _runtime is not None else None
        return detached if detached is not None else _detach_all(outputs, feeds)

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

    def _run_path(self):
        """``Model.run``'s usual call in C (``_runtime.ModelRun``): the feeds' exact check, the compiled
        program of their signature, else the plan's schedule; None without the extension."""
        checks = self._feeds.c_checks
        if checks is None:
            return None
        return _runtime.ModelRun(self._run_checked, checks, self._plan.compiled(self._wanted(None)),
                                self._programs.fast, _detach_all, self.output_names)

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
            vi = self._feeds.by_name.get(name)
            if vi is not None and vi.dtype is not None and vi.kind == "tensor":
                value = cast_same_kind(value, vi)
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
                    f"predict: cannot size the zero initial state '{vi.name}' {shape_text(vi.shape)}: "
                    f"axis {axis} matches no dim of the given inputs; pass {vi.name}=... explicitly"
                )
            shape.append(size)
        return np.zeros(shape, dtype=vi.dtype or np.float32)

    @strict_keywords
    def stream(self, state: Any = None) -> Stream:
        """A ``Stream`` stepping this model chunk by chunk (see ``lstminfer.streaming``).

        ``state``: bytes from ``Stream.save()``, or a state dict. Raises
        ``NotStreamableError`` naming the node that prevents streaming.
        """
        from .streaming import Stream  # on first use: a model that never streams does not import it

        return Stream(self._stream_program(), state)

    @strict_keywords
    def stream_pool(self, max_streams: int = 64) -> StreamPool:
        """A thread-safe ``StreamPool`` stepping up to ``max_streams`` streams in one batched run."""
        from .streaming import StreamPool

        return StreamPool(self._stream_program(), max_streams)

    def _stream_program(self) -> StreamProgram:
        """What this model's streams share, built on first use and kept (a NotStreamableError too)."""
        program = self._streaming
        if program is None:
            with self._lock:
                if self._streaming is None:
                    from .streaming import StreamProgram

                    try:
                        self._streaming = StreamProgram(self._imported.graph, self._plan, self._ctx)
                    except NotStreamableError as e:
                        self._streaming = e
                program = self._streaming
        if isinstance(program, NotStreamableError):
            raise NotStreamableError(f"{self.source}: {program}")
        return program

    @strict_keywords
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
        if self.rewritten_products:
            head.insert(3, "int8 products run as MatMul on their dequantized weights (weight-only int8): "
                           + ", ".join(self.rewritten_products))
        if self.fallback is not None:
            head.insert(3, f"fallback={self.fallback}: {len(self.fallback_nodes)} node(s) run by {self.fallback}"
                           + (": " + ", ".join(self.fallback_nodes) if self.fallback_nodes else "")
                           + "; every other node by lstminfer")
        if self.quantize:
            head.insert(3, f"quantize={self.quantize}: dense weights quantized at load: "
                           + (", ".join(self.quantized_dense) or "none (none float32 with >= 4096 values)"))
        lines = head + ["  " + line for line in self._plan.describe_lines()]
        try:
            values = self._feeds.checked(feeds if feeds is not None else self._example_feeds())
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


def _session_options(sess_options: Any) -> SessionOptions:
    if sess_options is None:
        return SessionOptions()
    if not isinstance(sess_options, SessionOptions):
        raise InvalidArgumentError(f"sess_options must be a lstminfer.SessionOptions, got {type(sess_options).__name__}")
    return sess_options


def _threads(threads: Any, sess_options: SessionOptions) -> int:
    """``threads`` given, else the session options' intra_op_num_threads, else 1; more than the cores warns."""
    if threads is None:
        threads = threads_of(sess_options) or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
    cores = machine_cores()
    if threads > cores:
        warn_caller(f"threads={threads} is more than the {cores} cores this process may use: the extra threads "
                    "only compete for them (threads <= cores is faster)")
    return threads


def _body_lines(plan, indent: str) -> list[str]:
    """The programs Loop/Scan/If bodies compiled (per iteration signature) on the runs so far."""
    lines = []
    for body in plan.bodies:
        compiled = body.programs.compiled() if body.programs is not None else []
        head = f"{indent}body '{body.graph.name}': "
        if not compiled:
            lines.append(head + "no compiled program yet (compiled on its first run)")
            continue
        lines.append(head + "compiled program of its latest signature:")
        lines += [indent + "  " + line for line in compiled[-1].text.splitlines()]
        lines += _body_lines(body, indent + "  ")
    return lines


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


def _prefix_source(error: Exception, source: str) -> None:
    """Name the file in load errors raised deep in the planner."""
    if error.args and isinstance(error.args[0], str) and source not in error.args[0]:
        error.args = (f"{source}: {error.args[0]}",) + error.args[1:]
