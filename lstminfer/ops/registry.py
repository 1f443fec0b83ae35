"""The op table: (domain, op_type) -> factory that builds a kernel at load.

A factory runs once per node at load time. It reads and validates the node's
attributes (unsupported values raise ``UnsupportedModelError`` there, never at
run time) and returns a kernel: ``kernel(*inputs) -> tuple of outputs``.
Omitted optional inputs arrive as ``None``; a kernel returns one value per
node output (``None`` allowed for an optional output nobody reads).

Nodes with subgraph attributes (Loop, If, Scan) get the values their body
reads from enclosing scopes as a keyword argument ``outer: dict[str, value]``.

The op modules register their ops when imported, and a load imports only the
modules its model's ops live in (``OP_MODULES``): most models need a few of
them, and importing all of them costs cold start.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import UnsupportedModelError
from ..graph import Graph, Node

Kernel = Callable[..., Sequence[Any]]
OpFactory = Callable[[Node, "BuildContext"], Kernel]

# Domains we accept, with the names exporters use for them.
DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_OPSET = 23


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    domain: str
    factory: OpFactory
    since: int  # first opset version this factory implements
    until: int | None  # last opset version (inclusive); None = still current


@dataclass
class BuildContext:
    """What a factory may ask about the model it is building for."""

    opsets: dict[str, int]
    backend: str = "reference"
    # compile_subgraph(graph) -> runner with .outer_names and .run(inputs, outer)
    compile_subgraph: Callable[[Graph], Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # constant(name) -> the value if ``name`` is an initializer or was folded at
    # load, else None: lets factories repack weights once, at load.
    constant: Callable[[str], Any] = lambda name: None

    def opset(self, domain: str = "") -> int:
        if domain in DEFAULT_DOMAINS:
            return self.opsets.get("", self.opsets.get("ai.onnx", MAX_OPSET))
        return self.opsets.get(domain, 1)


_REGISTRY: dict[tuple[str, str], list[OpSpec]] = {}

# Built-in op module -> the ops it registers ("domain:Op" outside the default domain).
# tests/test_cold_start_imports.py checks this against what the modules register.
OP_MODULES: dict[str, str] = {
    "control": "If Loop Scan",
    "conv": "AveragePool Conv GlobalAveragePool GlobalMaxPool MaxPool lstminfer:TimeHistory",
    "elementwise": (
        "Abs Acos Acosh Add And Asin Asinh Atan Atanh BitShift BitwiseAnd BitwiseNot BitwiseOr "
        "BitwiseXor Cast CastLike Ceil Celu Clip Cos Cosh Div Dropout Elu Equal Erf Exp Floor Gelu "
        "Greater GreaterOrEqual HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Less LessOrEqual "
        "Log Max Mean Min Mish Mod Mul Neg Not Or PRelu Pow Reciprocal Relu Round Selu Shrink Sigmoid "
        "Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh ThresholdedRelu Where Xor"
    ),
    "nn": "BatchNormalization Einsum Gemm Hardmax LayerNormalization LogSoftmax MatMul Softmax",
    "quantized": (
        "DequantizeLinear DynamicQuantizeLinear MatMulInteger QuantizeLinear "
        "com.microsoft:DynamicQuantizeLSTM com.microsoft:DynamicQuantizeMatMul "
        "com.microsoft:MatMulIntegerToFloat"
    ),
    "recurrent": "GRU LSTM RNN",
    "reduce": (
        "ArgMax ArgMin ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
        "ReduceProd ReduceSum ReduceSumSquare"
    ),
    "sequence": (
        "ConcatFromSequence Optional OptionalGetElement OptionalHasElement SequenceAt SequenceConstruct "
        "SequenceEmpty SequenceErase SequenceInsert SequenceLength SplitToSequence"
    ),
    "tensor": (
        "Compress Concat Constant ConstantOfShape CumSum Expand EyeLike Flatten Gather GatherElements "
        "GatherND NonZero OneHot Pad Range Reshape ReverseSequence Scatter ScatterElements ScatterND "
        "Shape Size Slice Split Squeeze Tile TopK Transpose Trilu Unsqueeze"
    ),
}


def _module_index() -> dict[tuple[str, str], str]:
    index = {}
    for module, names in OP_MODULES.items():
        for name in names.split():
            domain, _, op_type = name.rpartition(":")
            index[(domain, op_type)] = module
    return index


_MODULE_OF = _module_index()


def load_op_module(module: str) -> None:
    """Import built-in op module ``module`` (registering its ops) if not done yet."""
    importlib.import_module(f"{__package__}.{module}")


def load_all() -> None:
    """Import every built-in op module (to list or inspect the whole op table)."""
    for module in OP_MODULES:
        load_op_module(module)


def _norm_domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


def register(op_type: str, domain: str = "", *, since: int = 1, until: int | None = None):
    """Decorator: register ``factory`` for ``op_type`` at opsets [since, until]."""

    def wrap(factory: OpFactory) -> OpFactory:
        spec = OpSpec(op_type, _norm_domain(domain), factory, since, until)
        _REGISTRY.setdefault((spec.domain, op_type), []).append(spec)
        return factory

    return wrap


SUPPORTED_OPS_DOC = "the 'Supported ops' section of README.md (or lstminfer.ops.registry.supported_ops())"


def lookup(node: Node, opset: int) -> OpSpec:
    """The spec that runs ``node`` at ``opset``; raise a clear one-line error if none."""
    spec, why = find(node, opset)
    if spec is None:
        raise UnsupportedModelError(why)
    return spec


def find(node: Node, opset: int) -> tuple[OpSpec | None, str]:
    """(the spec that runs ``node`` at ``opset``, "") or (None, why not: one line)."""
    domain = _norm_domain(node.domain)
    module = _MODULE_OF.get((domain, node.op_type))
    if module is not None:
        load_op_module(module)
    specs = _REGISTRY.get((domain, node.op_type))
    where = f"{node.label()}, domain '{node.domain or 'ai.onnx'}', opset {opset}"
    if not specs:
        return None, (f"{where}: op type '{node.op_type}' is not supported by lstminfer (supported ops: "
                      f"{SUPPORTED_OPS_DOC}; load(..., fallback='onnxruntime') runs such nodes through onnxruntime)")
    for spec in specs:
        if spec.since <= opset and (spec.until is None or opset <= spec.until):
            return spec, ""
    ranges = ", ".join(f"{s.since}-{s.until or 'current'}" for s in specs)
    return None, f"{where}: opset {opset} of '{node.op_type}' is not supported (supported opsets: {ranges})"


def unsupported_nodes(graph: Graph) -> list[tuple[Node, str]]:
    """Every node of ``graph`` (subgraph bodies included) that no factory runs, with why."""
    ctx = BuildContext(opsets=graph.opsets)
    found = []

    def walk(g: Graph) -> None:
        for node in g.nodes:
            spec, why = find(node, ctx.opset(node.domain))
            if spec is None:
                found.append((node, why))
            for sub in node.subgraphs():
                walk(sub)

    walk(graph)
    return found


INTERNAL_DOMAIN = "lstminfer"  # ops the loader inserts itself (a causal conv's carried frames): not a model's


def supported_ops() -> list[str]:
    """Sorted 'domain:Op' names (default domain without prefix) a model may use."""
    load_all()
    return sorted(f"{d + ':' if d else ''}{op}" for d, op in _REGISTRY if d != INTERNAL_DOMAIN)
