"""``load(path, fallback="onnxruntime")``: the nodes lstminfer does not support, run by onnxruntime.

Each unsupported top-level node becomes a one-node ONNX model (its inputs typed from the graph's
inputs, initializers and inferred value_info; its initializer inputs embedded as initializers) run
by an ``onnxruntime.InferenceSession`` built at load. The plan runs it as an ordinary kernel, so
the rest of the model, streaming included, stays lstminfer's. Off by default: onnxruntime is
imported only when asked for.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import InvalidArgumentError, UnsupportedModelError
from .graph import Graph, Node
from .ops.registry import BuildContext, unsupported_nodes

FALLBACKS = ("onnxruntime",)
_IR_VERSION = 10  # what onnxruntime >= 1.20 reads; enough for opsets up to 23


class OrtNodeKernel:
    """One node run by onnxruntime: ``kernel(*inputs) -> tuple of outputs`` like any lstminfer kernel."""

    describe = "onnxruntime (fallback)"

    def __init__(self, session: Any, fed: tuple[int, ...], names: tuple[str, ...], outputs: tuple[str, ...],
                 label: str):
        self._session, self._fed, self._names, self.label = session, fed, names, label
        self._outputs = outputs  # the node's outputs, "" where omitted (returned as None)
        self._wanted = [o for o in outputs if o]

    def __call__(self, *inputs: Any) -> tuple:
        feeds = {name: np.asarray(inputs[i]) for i, name in zip(self._fed, self._names)}
        values = iter(self._session.run(self._wanted, feeds))
        return tuple(next(values) if o else None for o in self._outputs)


def fallback_kernels(graph: Graph, fallback: str, source: str) -> dict[tuple[str, ...], Callable]:
    """{node outputs: kernel} for every unsupported top-level node of ``graph``, run by ``fallback``."""
    if fallback not in FALLBACKS:
        raise InvalidArgumentError(f"fallback must be None or one of {list(FALLBACKS)}, got {fallback!r}")
    unsupported = unsupported_nodes(graph)
    if not unsupported:
        return {}
    top = {id(n) for n in graph.nodes}
    nested = [why for node, why in unsupported if id(node) not in top]
    if nested:
        raise UnsupportedModelError(f"{source}: {nested[0]} (inside a Loop/If/Scan body: the onnxruntime "
                                    "fallback runs top-level nodes only)")
    try:
        import onnxruntime
    except ImportError:
        raise UnsupportedModelError(
            f"{source}: fallback='onnxruntime' needs the onnxruntime package (pip install onnxruntime) "
            f"for {len(unsupported)} node(s), e.g. {unsupported[0][1]}") from None
    ctx = BuildContext(opsets=graph.opsets)
    return {node.outputs: _kernel(onnxruntime, graph, node, ctx, source) for node, _ in unsupported}


def _kernel(onnxruntime, graph: Graph, node: Node, ctx: BuildContext, source: str) -> OrtNodeKernel:
    import onnx
    from onnx import helper, numpy_helper

    declared = {vi.name: vi for vi in graph.inputs}
    inputs, initializers, fed, names = [], [], [], []
    for i, name in enumerate(node.inputs):
        if not name or name in names or any(t.name == name for t in initializers):
            continue  # omitted, or read twice: fed once
        if name in graph.initializers:
            initializers.append(numpy_helper.from_array(np.asarray(graph.initializers[name]), name))
            continue
        vi = declared.get(name) or graph.value_info.get(name)
        if vi is None or vi.dtype is None:
            raise UnsupportedModelError(f"{source}: {node.label()}: the type of its input '{name}' is unknown, "
                                        "so onnxruntime cannot run it alone (fallback)")
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(vi.dtype))
        rank = [None] * len(vi.shape) if vi.shape is not None else None
        inputs.append(helper.make_tensor_value_info(name, elem, rank))
        fed.append(i)
        names.append(name)
    attrs = {k: (numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v) for k, v in node.attrs.items()}
    if any(isinstance(v, Graph) for v in attrs.values()):
        raise UnsupportedModelError(f"{source}: {node.label()}: the onnxruntime fallback does not run nodes "
                                    "with subgraphs")
    proto_node = helper.make_node(node.op_type, list(node.inputs), list(node.outputs), name=node.name or None,
                                  domain=node.domain or None, **attrs)
    opsets = [helper.make_opsetid(d, v) for d, v in graph.opsets.items()]
    if node.domain and node.domain not in graph.opsets and node.domain != "ai.onnx":
        opsets.append(helper.make_opsetid(node.domain, ctx.opset(node.domain)))
    outputs = [o for o in node.outputs if o]
    probe = helper.make_model(helper.make_graph([proto_node], "fallback", inputs,
                                                [helper.make_empty_tensor_value_info(o) for o in outputs],
                                                initializers), opset_imports=opsets, ir_version=_IR_VERSION)
    done = onnx.shape_inference.infer_shapes(probe).graph
    inferred = {vi.name: vi for vi in list(done.value_info) + list(done.output) if vi.type.HasField("tensor_type")
                and vi.type.tensor_type.elem_type}
    typed = []
    for o in outputs:
        known = graph.value_info.get(o)
        if o in inferred:
            typed.append(inferred[o])
        elif known is not None and known.dtype is not None:
            typed.append(helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(known.dtype)), None))
        else:
            raise UnsupportedModelError(f"{source}: {node.label()}: the type of its output '{o}' cannot be "
                                        "inferred, so onnxruntime cannot run it alone (fallback)")
    del probe.graph.output[:]
    probe.graph.output.extend(typed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors: no shared base class
        raise UnsupportedModelError(f"{source}: {node.label()}: onnxruntime cannot run it either: "
                                    f"{type(e).__name__}: {e}") from None
    return OrtNodeKernel(session, tuple(fed), tuple(names), tuple(node.outputs), node.label())
