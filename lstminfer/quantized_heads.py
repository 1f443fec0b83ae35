"""onnxruntime's dynamically quantized products with a constant weight, as MatMul on that weight.

``onnxruntime.quantization.quantize_dynamic`` turns ``MatMul(x, W)`` into one of::

    DynamicQuantizeLinear(x) -> (x_q, x_scale, x_zp)
      MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast(float) -> Mul(., Mul(x_scale, W_scale))
      MatMulIntegerToFloat(x_q, W_q, x_scale, W_scale, x_zp, W_zp[, bias])   (com.microsoft)
    DynamicQuantizeMatMul(x, W_q, W_scale, W_zp[, bias])                    (com.microsoft)

Each is rewritten at load into ``MatMul(x, (W_q - W_zp) * W_scale)`` (then ``Add(bias)``): the
weight-only int8 head that ``load(quantize="int8")`` runs too, a dense instruction of the compiled
program instead of five NumPy calls. It differs from onnxruntime by the rounding of x to uint8
(onnxruntime's x_scale is one per tensor, over every time step, which no stream could
reproduce chunk by chunk); see README's Quantization for the bound. Products whose weight is
not a 2-D constant are left as they are (their ops emulate onnxruntime exactly).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph, Node

MS_DOMAIN = "com.microsoft"
_DEFAULT = ("", "ai.onnx")
_FLOAT = 1  # TensorProto.FLOAT


@dataclass(frozen=True)
class _Match:
    """One product to rewrite: the nodes it replaces, x, the weight, the bias, the output."""

    nodes: tuple[Node, ...]
    x: str
    weight: np.ndarray  # float32 [K, N]
    bias: np.ndarray | None
    output: str


def _dequantized(q, scale, zero_point) -> np.ndarray | None:
    """(q - zero_point) * scale for a 2-D int8/uint8 q with a scale per tensor or per column, else None."""
    if not (isinstance(q, np.ndarray) and q.ndim == 2 and q.dtype in (np.int8, np.uint8)):
        return None
    N = q.shape[1]
    if not (isinstance(scale, np.ndarray) and scale.dtype == np.float32 and scale.size in (1, N) and scale.ndim <= 1):
        return None
    zp = np.zeros((), np.int32)
    if zero_point is not None:
        if not (isinstance(zero_point, np.ndarray) and zero_point.dtype == q.dtype
                and zero_point.size in (1, N) and zero_point.ndim <= 1):
            return None
        zp = zero_point.astype(np.int32).reshape(-1)
    values = (q.astype(np.int32) - zp).astype(np.float32) * scale.reshape(-1)
    return np.ascontiguousarray(values, dtype=np.float32)


class _Graph:
    """Producers, consumers and constants of one graph, for matching."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = {o: n for n in graph.nodes for o in n.outputs if o}
        self.readers: dict[str, list[Node]] = {}
        for node in graph.nodes:
            for name in node.inputs:
                if name:
                    self.readers.setdefault(name, []).append(node)
            for sub in node.subgraphs():
                for name in sub.free_names():
                    self.readers.setdefault(name, []).append(node)
        self.outputs = {vi.name for vi in graph.outputs}

    def constant(self, node: Node, index: int):
        name = node.inputs[index] if index < len(node.inputs) else ""
        return self.graph.initializers.get(name) if name else None

    def only_reader(self, name: str) -> Node | None:
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def quantizer(self, name: str) -> Node | None:
        """The DynamicQuantizeLinear whose first output is ``name``."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DynamicQuantizeLinear" or node.domain not in _DEFAULT:
            return None
        return node if len(node.outputs) == 3 and node.outputs[0] == name else None


def _match_integer(g: _Graph, node: Node) -> _Match | None:
    """MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast(float) -> Mul(., Mul(x_scale, W_scale))."""
    quantizer = g.quantizer(node.inputs[0])
    if quantizer is None or len(node.inputs) < 3 or node.inputs[2] != quantizer.outputs[2]:
        return None
    cast = g.only_reader(node.outputs[0])
    if cast is None or cast.op_type != "Cast" or cast.domain not in _DEFAULT or cast.attr("to", 0) != _FLOAT:
        return None
    mul = g.only_reader(cast.outputs[0])
    if mul is None or mul.op_type != "Mul" or mul.domain not in _DEFAULT or len(mul.inputs) != 2:
        return None
    scales = g.producer.get(mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0])
    if scales is None or scales.op_type != "Mul" or scales.domain not in _DEFAULT or len(scales.inputs) != 2 \
            or quantizer.outputs[1] not in scales.inputs:
        return None
    w_scale = g.graph.initializers.get(scales.inputs[1] if scales.inputs[0] == quantizer.outputs[1] else scales.inputs[0])
    weight = _dequantized(g.constant(node, 1), w_scale, g.constant(node, 3))
    if weight is None or (len(node.inputs) > 3 and node.inputs[3] and g.constant(node, 3) is None):
        return None
    return _Match((node, cast, mul), quantizer.inputs[0], weight, None, mul.outputs[0])


def _bias(g: _Graph, node: Node, index: int) -> tuple[bool, np.ndarray | None]:
    """(usable, bias): an absent bias is usable; a present one must be a float32 constant."""
    if index >= len(node.inputs) or not node.inputs[index]:
        return True, None
    bias = g.constant(node, index)
    return (isinstance(bias, np.ndarray) and bias.dtype == np.float32), bias


def _match_to_float(g: _Graph, node: Node) -> _Match | None:
    """MatMulIntegerToFloat(x_q, W_q, x_scale, W_scale, x_zp, W_zp, bias) after a DynamicQuantizeLinear."""
    quantizer = g.quantizer(node.inputs[0])
    if quantizer is None or len(node.inputs) < 5 or node.inputs[2] != quantizer.outputs[1] \
            or node.inputs[4] != quantizer.outputs[2]:
        return None
    usable, bias = _bias(g, node, 6)
    weight = _dequantized(g.constant(node, 1), g.constant(node, 3), g.constant(node, 5))
    if weight is None or not usable or (len(node.inputs) > 5 and node.inputs[5] and g.constant(node, 5) is None):
        return None
    return _Match((node,), quantizer.inputs[0], weight, bias, node.outputs[0])


def _match_dynamic(g: _Graph, node: Node) -> _Match | None:
    """DynamicQuantizeMatMul(x, W_q, W_scale, W_zp, bias)."""
    usable, bias = _bias(g, node, 4)
    weight = _dequantized(g.constant(node, 1), g.constant(node, 2), g.constant(node, 3))
    if weight is None or not usable or (len(node.inputs) > 3 and node.inputs[3] and g.constant(node, 3) is None):
        return None
    return _Match((node,), node.inputs[0], weight, bias, node.outputs[0])


_MATCHERS = {("MatMulInteger", ""): _match_integer, ("MatMulInteger", "ai.onnx"): _match_integer,
             ("MatMulIntegerToFloat", MS_DOMAIN): _match_to_float,
             ("DynamicQuantizeMatMul", MS_DOMAIN): _match_dynamic}


def rewrite_quantized_products(graph: Graph) -> list[str]:
    """Rewrite, in ``graph`` (its top level), every product of the forms above into MatMul (+ Add)
    on the dequantized constant weight; drop the quantizers left unread. Returns the labels of the
    nodes rewritten."""
    g = _Graph(graph)
    matches = [m for m in (_MATCHERS[(n.op_type, n.domain)](g, n) for n in graph.nodes
                           if (n.op_type, n.domain) in _MATCHERS) if m is not None]
    if not matches:
        return []
    replaced: dict[int, list[Node]] = {}  # id of a match's last node -> the nodes that take its place
    removed = set()
    for k, m in enumerate(matches):
        weight_name = _fresh(graph, f"{m.nodes[0].inputs[1]}_dequantized")
        graph.initializers[weight_name] = m.weight
        label = m.nodes[0].name or m.output
        new = [Node("MatMul", (m.x, weight_name), (m.output,), {}, f"{label}_as_matmul", "")]
        if m.bias is not None:
            product = _fresh(graph, f"{m.output}_before_bias")
            bias_name = _fresh(graph, f"{label}_bias")
            graph.initializers[bias_name] = m.bias
            new = [Node("MatMul", (m.x, weight_name), (product,), {}, f"{label}_as_matmul", ""),
                   Node("Add", (product, bias_name), (m.output,), {}, f"{label}_bias", "")]
        replaced[id(m.nodes[-1])] = new
        removed.update(id(n) for n in m.nodes)
    nodes: list[Node] = []
    for node in graph.nodes:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    graph.nodes[:] = _without_dead_quantizers(nodes, {vi.name for vi in graph.outputs})
    return [m.nodes[0].label() for m in matches]


def _without_dead_quantizers(nodes: list[Node], outputs: set[str]) -> list[Node]:
    """``nodes`` less the DynamicQuantizeLinear (and the Mul of its scale) no node reads any more."""
    kept = list(nodes)
    while True:
        read = {name for n in kept for name in n.inputs if name} | outputs
        read |= {name for n in kept for sub in n.subgraphs() for name in sub.free_names()}
        dead = [n for n in kept if n.op_type in ("DynamicQuantizeLinear", "Mul") and n.domain in _DEFAULT
                and not any(o in read for o in n.outputs if o)]
        if not dead:
            return kept
        gone = {id(n) for n in dead}
        kept = [n for n in kept if id(n) not in gone]


def _fresh(graph: Graph, name: str) -> str:
    taken = set(graph.initializers) | {o for n in graph.nodes for o in n.outputs} | {vi.name for vi in graph.inputs}
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate
