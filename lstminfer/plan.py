"""The execution plan: built once at load, walked as a flat list by ``run``.

Building a plan orders the nodes topologically, resolves every node to a
kernel through the op table (factories validate attributes here, so bad
models fail at load), folds the nodes whose inputs are all constants, and
numbers every value so that ``run`` works on a list of slots, not on names.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import ops
from .errors import ExecutionError, InvalidModelError, LstminferError
from .conv_fusion import fuse_into_conv
from .graph import Graph, Node
from .ops.registry import BuildContext, Kernel

from .c_runtime import _runtime  # the executor loop in C; the Python loop below is the same thing

# Ops whose outputs change from call to call even with constant inputs.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_ABSENT = -1  # slot index of an omitted optional input


@dataclass(frozen=True)
class Step:
    """One node to run: its kernel and the slots it reads and writes."""

    node: Node
    kernel: Kernel
    inputs: tuple[int, ...]  # _ABSENT for an omitted optional input
    outputs: tuple[int, ...]  # _ABSENT for an omitted optional output
    outer_names: tuple[str, ...]  # values a subgraph reads from enclosing scopes
    outer: tuple[int, ...]
    describe: str  # which kernel/backend runs it, for describe()
    opset: int = 0  # of the node's domain: what its attributes' defaults are


class Plan:
    """Runs one graph. Immutable after construction, so safe to share across threads.

    ``scope`` lists names readable from an enclosing graph (for Loop/If bodies):
    they become extra feeds of this plan.
    """

    def __init__(self, graph: Graph, ctx: BuildContext, scope: Sequence[str] = ()):
        graph = fuse_into_conv(graph)  # a load-time rewrite: one Conv where Conv -> BatchNorm -> Relu was
        self.graph = graph
        self.input_names = [vi.name for vi in graph.inputs]
        self.output_names = [vi.name for vi in graph.outputs]
        self.outer_names = [n for n in graph.free_names() if n in set(scope)]
        self._slots: dict[str, int] = {}
        feeds = self.input_names + self.outer_names
        for name in feeds:
            self._slot(name)
        constants: dict[int, Any] = {self._slot(k): v for k, v in graph.initializers.items()}
        visible = set(feeds) | set(graph.initializers)
        self._constants = constants  # grows as nodes are folded while building
        self.bodies: list[Plan] = []  # the plans of this graph's Loop/Scan/If bodies
        self.steps = self._build_steps(graph, ctx, visible, constants, set(scope))
        missing = [n for n in self.output_names if n not in self._slots]
        if missing:
            raise InvalidModelError(
                f"graph '{graph.name}': output(s) {missing} are not produced by any node, "
                "initializer or input"
            )
        # Every run starts from a copy of this: constants in place, the rest empty.
        # One extra trailing None: _ABSENT (-1) indexes it, so reading an omitted
        # optional input needs no test in the hot loop.
        self._template: list[Any] = [None] * (len(self._slots) + 1)
        for slot, value in constants.items():
            self._template[slot] = value
        self._feed_slots = tuple(self._slots[n] for n in feeds)
        self.all_outputs = tuple(self._slots[n] for n in self.output_names)
        self._schedules: dict[tuple[int, ...], tuple[tuple[Step, tuple[int, ...]], ...]] = {}
        self._compiled: dict[tuple[int, ...], tuple | None] = {}
        self._lock = threading.Lock()
        self.programs = None  # a body's compiled programs for ``run``: set by lstminfer.program.Programs

    # -- building ---------------------------------------------------------
    def _slot(self, name: str) -> int:
        if not name:
            return _ABSENT
        index = self._slots.get(name)
        if index is None:
            index = self._slots[name] = len(self._slots)
        return index

    def _build_steps(self, graph, ctx, visible, constants, scope):
        ordered = _topological_order(graph, visible, scope)
        steps: list[Step] = []
        for node in ordered:
            opset = ctx.opset(node.domain)
            given = ctx.options.get("node_kernels", {}).get(node.outputs)  # e.g. the onnxruntime fallback's
            spec = ops.lookup(node, opset) if given is None else None
            node_ctx = BuildContext(
                opsets=ctx.opsets, backend=ctx.backend, options=ctx.options,
                constant=self.constant,
            )
            if node.subgraphs():
                # A body may read anything visible here: our values and our own scope.
                node_scope = tuple(visible | scope)
                node_ctx.compile_subgraph = _subgraph_compiler(ctx, node_scope, self.bodies)
            kernel = spec.factory(node, node_ctx) if given is None else given
            outer_names = tuple(n for sub in node.subgraphs() for n in sub.free_names())
            outer_names = tuple(dict.fromkeys(outer_names))
            step = Step(
                node=node,
                kernel=kernel,
                inputs=tuple(self._slot(n) for n in node.inputs),
                outputs=tuple(self._slot(n) for n in node.outputs),
                outer_names=outer_names,
                outer=tuple(self._slot(n) for n in outer_names),
                describe=getattr(kernel, "describe", "numpy"),
                opset=opset,
            )
            if _foldable(step, constants):
                values = _run_step(step, constants)
                for slot, value in zip(step.outputs, values):
                    if slot != _ABSENT:
                        constants[slot] = _freeze(value)
            else:
                steps.append(step)
            visible.update(node.outputs)
        return steps

    # -- running ----------------------------------------------------------
    def schedule(self, wanted: tuple[int, ...]):
        """Steps needed for the output slots ``wanted``, each with slots to free after it."""
        cached = self._schedules.get(wanted)
        if cached is not None:
            return cached
        needed = set(wanted)
        chosen: list[Step] = []
        for step in reversed(self.steps):
            if needed.intersection(step.outputs):
                chosen.append(step)
                needed.update(s for s in step.inputs + step.outer if s != _ABSENT)
        chosen.reverse()
        # Free each intermediate value after its last reader to bound peak memory.
        keep = set(wanted) | set(self._feed_slots) | set(self._constants)
        last_use: dict[int, int] = {}
        for i, step in enumerate(chosen):
            for s in step.inputs + step.outer:
                last_use[s] = i
        frees: list[list[int]] = [[] for _ in chosen]
        for s, i in last_use.items():
            if s != _ABSENT and s not in keep:
                frees[i].append(s)
        result = tuple((step, tuple(f)) for step, f in zip(chosen, frees))
        with self._lock:
            self._schedules[wanted] = result
        return result

    def output_slot(self, name: str) -> int:
        return self._slots[name]

    def constant(self, name: str) -> Any:
        """The value of ``name`` if it is an initializer or was folded at load, else None."""
        return self._constants.get(self._slots.get(name, _ABSENT)) if name else None

    def reads(self, wanted: tuple[int, ...]) -> set[int]:
        """Every slot the steps scheduled for ``wanted`` read."""
        return {s for step, _ in self.schedule(wanted) for s in step.inputs + step.outer if s != _ABSENT}

    def compiled(self, wanted: tuple[int, ...]) -> tuple | None:
        """The schedule for ``wanted`` compiled for the C loop (``_runtime.Schedule``), or None (no
        extension, or a step with a subgraph reading outer-scope values: those run in Python)."""
        try:
            return self._compiled[wanted]
        except KeyError:
            pass
        absent = len(self._template) - 1  # the trailing None slot
        compiled = None
        if _runtime is not None:
            schedule = self.schedule(wanted)
            if not any(step.outer_names for step, _ in schedule):
                steps = tuple((step.kernel, tuple(absent if s == _ABSENT else s for s in step.inputs),
                               step.outputs, frees, step) for step, frees in schedule)
                compiled = _runtime.Schedule(self._template, self._feed_slots, steps, wanted, _step_error)
        with self._lock:
            self._compiled[wanted] = compiled
        return compiled

    def execute(self, feeds: Sequence[Any], wanted: tuple[int, ...]) -> list[Any]:
        """Run with ``feeds`` (inputs then outer-scope values, in order)."""
        compiled = self._compiled.get(wanted, False)
        if compiled is False:
            compiled = self.compiled(wanted)
        if compiled is not None:
            return compiled.run(feeds if feeds.__class__ is list else list(feeds))
        values = self._template.copy()
        for slot, value in zip(self._feed_slots, feeds):
            values[slot] = value
        for step, frees in self.schedule(wanted):
            if step.outer_names:
                outputs = _run_step(step, values)
            else:
                args = [values[s] for s in step.inputs]
                try:
                    outputs = step.kernel(*args)
                except LstminferError:
                    raise
                except Exception as e:
                    raise _execution_error(step, args, e) from e
                if len(outputs) < len(step.outputs):
                    raise _short_output_error(step, outputs)
            for slot, value in zip(step.outputs, outputs):
                if slot != _ABSENT:
                    values[slot] = value
            for slot in frees:
                values[slot] = None
        return [values[s] for s in wanted]

    def run(self, inputs: Sequence[Any], outer: dict[str, Any] | None = None) -> list[Any]:
        """Subgraph entry point (Loop/If/Scan bodies): all outputs, in order. A body runs once per
        iteration with feeds of one signature: its compiled program (``self.programs``) runs it
        when there is one."""
        outer = outer or {}
        feeds = list(inputs) + [outer[n] for n in self.outer_names]
        if self.programs is not None:
            outputs = self.programs.run(feeds)
            if outputs is not None:
                return outputs
        return self.execute(feeds, self.all_outputs)

    def describe_lines(self) -> list[str]:
        info = self.graph.value_info
        lines = []
        for step in self.steps:
            node = step.node
            shapes = ", ".join(_shape_text(info.get(o)) for o in node.outputs if o)
            lines.append(f"{node.name}: {node.op_type} -> [{shapes}]  via {step.describe}")
        return lines


def _subgraph_compiler(ctx: BuildContext, scope: tuple[str, ...], bodies: list):
    def compile_subgraph(graph: Graph) -> Plan:
        body = Plan(graph, ctx, scope=scope)
        bodies.append(body)
        return body

    return compile_subgraph


def _run_step(step: Step, values) -> Sequence[Any]:
    args = [values[s] if s != _ABSENT else None for s in step.inputs]
    try:
        if step.outer_names:
            outer = {n: values[s] for n, s in zip(step.outer_names, step.outer)}
            out = step.kernel(*args, outer=outer)
        else:
            out = step.kernel(*args)
    except LstminferError:
        raise
    except Exception as e:
        raise _execution_error(step, args, e) from e
    if len(out) < len(step.outputs):
        raise _short_output_error(step, out)
    return out


def _step_error(step: Step, args: list[Any], error: Exception | None, outputs: Any) -> ExecutionError:
    """The error ``_runtime.Schedule`` raises for a failing step (or one short of outputs)."""
    return _execution_error(step, args, error) if error is not None else _short_output_error(step, outputs)


def _execution_error(step: Step, args: list[Any], error: Exception) -> ExecutionError:
    shapes = ", ".join(_value_text(a) for a in args)
    return ExecutionError(f"{step.node.label()} failed with inputs ({shapes}): {type(error).__name__}: {error}")


def _short_output_error(step: Step, out: Sequence[Any]) -> ExecutionError:
    return ExecutionError(f"{step.node.label()}: kernel returned {len(out)} outputs, node has {len(step.outputs)}")


def _foldable(step: Step, constants: dict[int, Any]) -> bool:
    if step.node.op_type in _NONDETERMINISTIC:
        return False
    reads = [s for s in step.inputs + step.outer if s != _ABSENT]
    return all(s in constants for s in reads)


def _freeze(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    return value


def _topological_order(graph: Graph, visible: set[str], scope: set[str]) -> list[Node]:
    """Nodes in an order where each runs after what it reads; clear errors otherwise."""
    producers: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.outputs:
            if not name:
                continue
            if name in producers or name in visible:
                raise InvalidModelError(
                    f"graph '{graph.name}': value '{name}' is defined twice "
                    f"(by {node.label()} and earlier)"
                )
            producers[name] = i
    deps: list[set[int]] = []
    for node in graph.nodes:
        reads = list(node.inputs) + [n for sub in node.subgraphs() for n in sub.free_names()]
        d = set()
        for name in reads:
            if not name or name in visible:
                continue
            if name in producers:
                d.add(producers[name])
            elif name not in scope:
                raise InvalidModelError(
                    f"graph '{graph.name}': {node.label()} reads '{name}', which is not a graph "
                    "input, an initializer or the output of any node"
                )
        deps.append(d)
    order: list[Node] = []
    state = [0] * len(graph.nodes)  # 0 new, 1 in progress, 2 done
    for root in range(len(graph.nodes)):
        if state[root]:
            continue
        stack = [(root, iter(sorted(deps[root])))]
        state[root] = 1
        while stack:
            i, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(graph.nodes[i])
            elif state[nxt] == 1:
                raise InvalidModelError(f"graph '{graph.name}': cycle through {graph.nodes[nxt].label()}")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
    return order


def _shape_text(vi) -> str:
    if vi is None or vi.shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in vi.shape) + ")"


def _value_text(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"{v.dtype}{list(v.shape)}"
    if isinstance(v, list):
        return f"seq[{len(v)}]"
    return "None" if v is None else type(v).__name__
