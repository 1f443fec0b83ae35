"""Save a quantized copy of a model as a standard ONNX file: ``lstminfer.quantize(src, dst, mode="int8")``.

Each quantized weight initializer ``w`` is replaced by a small subgraph whose
output keeps the name ``w``, so every consumer is unchanged:

* int8: ``DequantizeLinear(w_int8, w_scale)`` (per-axis, zero point absent = 0)
  with the values and scales of ``lstminfer.load(src, quantize="int8")``
  (``quantization.int8_per_row``: one scale per output row). LSTM/GRU/RNN
  W/R [D, G*H, K] are stored [G*H, K]-per-row (axis 1 of [1, G*H, K]) or, for
  D > 1, as [D*G*H, K] per axis 0 followed by a ``Reshape``. MatMul/Gemm
  weights get one scale per output column, Gather tables one per row.
* bf16: a bfloat16 initializer and ``Cast(to=FLOAT)``.

onnxruntime runs the file; ``lstminfer.load(dst)`` recognises the int8
pattern (``quantization.stored_int8``) and runs the recurrent layers on the
int8 kernel with the very same values and scales. Dense (MatMul/Gemm/Gather)
weights are quantized only from ``DENSE_MIN_WEIGHTS`` elements on (smaller
ones save nothing), by the same rule as ``load(src, quantize=...)``
(``quantization.weight_roles``), so the two run the same weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, UnsupportedModelError
from .quantization import DENSE_MIN_WEIGHTS, MODES, int8_per_row, round_to_bf16, weight_roles

MIN_OPSET = 13  # per-axis DequantizeLinear and Cast from bfloat16


@dataclass(frozen=True)
class Candidate:
    name: str  # the initializer
    where: str  # "node 'enc' (LSTM) input R"
    layout: str  # "recurrent" [D, N, K] per row | "rows" [N, K] per row | "columns" [K, N] per column
    dense: bool


@dataclass
class QuantizeSummary:
    """What ``quantize`` did: the weights it stored quantized and those it left float32, with why."""

    source: str
    destination: str
    mode: str
    quantized: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)  # (name, where, shape)
    left_float: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    float_bytes: int = 0  # the quantized weights as float32
    stored_bytes: int = 0  # the same weights as stored (values + scales)

    def text(self) -> str:
        lines = [f"{self.source} -> {self.destination} ({self.mode}): {len(self.quantized)} weight(s) quantized, "
                 f"{self.float_bytes / 1024:.1f} KiB float32 -> {self.stored_bytes / 1024:.1f} KiB"]
        lines += [f"  {self.mode}: {name} {list(shape)} ({where})" for name, where, shape in self.quantized]
        lines += [f"  left float32: {where}: {why}" for where, why in self.left_float]
        return "\n".join(lines)

    __str__ = text


def quantize(src: Any, dst: str | os.PathLike, mode: str = "int8", *, dense: bool = True) -> QuantizeSummary:
    """Write ``src`` (path, bytes or ModelProto) to ``dst`` with its weights stored in ``mode``.

    ``dense=False`` keeps MatMul/Gemm/Gather weights float32. Raises
    ``InvalidArgumentError`` for an unknown mode or ``dst`` == ``src`` and
    ``UnsupportedModelError`` when nothing can be quantized (the message says why).
    """
    import onnx

    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    dst = os.fspath(dst)
    if isinstance(src, (str, os.PathLike)) and _same_file(os.fspath(src), dst):
        raise InvalidArgumentError(f"destination '{dst}' is the source file; choose another path")
    model, source = _read(src)
    _check_runnable(model, source)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    summary = QuantizeSummary(source, dst, mode)
    candidates = _candidates(graph, dense, summary)
    if candidates and opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{source}: quantize needs opset >= {MIN_OPSET} (per-axis DequantizeLinear, Cast from bfloat16); "
            f"the model has opset {opset}")
    initializers = {t.name: t for t in graph.initializer}
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    new_nodes = []
    for cand in candidates:
        tensor = initializers[cand.name]
        w = onnx.numpy_helper.to_array(tensor)
        nodes, tensors, stored = _replacement(cand, w, mode, taken)
        new_nodes += nodes
        graph.initializer.remove(tensor)
        graph.initializer.extend(tensors)
        summary.quantized.append((cand.name, cand.where, tuple(w.shape)))
        summary.float_bytes += w.size * 4
        summary.stored_bytes += stored
    if not summary.quantized:
        reasons = "; ".join(f"{where}: {why}" for where, why in summary.left_float) or "no LSTM/GRU/RNN, MatMul, " \
            "Gemm or Gather weights"
        raise UnsupportedModelError(f"{source}: no quantizable weight ({reasons})")
    nodes = new_nodes + list(graph.node)  # the dequantizing nodes first: they read only initializers
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, dst)
    return summary


def _check_runnable(model, source: str) -> None:
    """Refuse a model lstminfer cannot run: its quantized copy would not run either."""
    from .onnx_import import import_model
    from .ops.registry import unsupported_nodes

    unsupported = unsupported_nodes(import_model(model).graph)
    if unsupported:
        more = f" (and {len(unsupported) - 1} more unsupported node(s))" if len(unsupported) > 1 else ""
        raise UnsupportedModelError(f"{source}: lstminfer cannot run this model, so it does not quantize it: "
                                    f"{unsupported[0][1]}{more}")


def _read(src: Any):
    """A fresh ModelProto (never the caller's) and a name for messages."""
    import onnx

    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
        return model, "<ModelProto>"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return onnx.load_from_string(bytes(src)), "<bytes>"
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model file not found: '{path}'")
        return onnx.load(path), path
    raise TypeError(f"src must be a file path, bytes or onnx.ModelProto, got {type(src).__name__}")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def _candidates(graph, dense: bool, summary: QuantizeSummary) -> list[Candidate]:
    """The weights to quantize, each once; the rejected ones go to ``summary.left_float``."""
    from onnx import TensorProto

    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    chosen: dict[str, Candidate] = {}
    for node in graph.node:
        label = f"node '{node.name or node.output[0]}' ({node.op_type})"
        for index, role, layout, is_dense in _roles(node):
            name = node.input[index] if index < len(node.input) else ""
            if not name or name in chosen:
                continue
            where = f"{label} input {role} '{name}'"
            tensor = initializers.get(name)
            if tensor is None:
                why = "not a constant initializer (computed at run time or a graph input)"
            elif name in graph_inputs:
                why = "an overridable initializer (also listed as a graph input)"
            elif tensor.data_type != TensorProto.FLOAT:
                why = f"element type {TensorProto.DataType.Name(tensor.data_type)}, not FLOAT"
            elif len(tensor.dims) != (3 if layout == "recurrent" else 2):
                why = f"shape {list(tensor.dims)} is not {'3' if layout == 'recurrent' else '2'}-D"
            elif is_dense and not dense:
                why = "dense weights kept float (dense=False)"
            elif is_dense and int(np.prod(tensor.dims)) < DENSE_MIN_WEIGHTS:
                why = f"{int(np.prod(tensor.dims))} weights < {DENSE_MIN_WEIGHTS}: too small to pay"
            else:
                chosen[name] = Candidate(name, where, layout, is_dense)
                continue
            summary.left_float.append((where, why))
    for node in graph.node:  # weights inside Loop/If/Scan bodies are not rewritten
        for attr in node.attribute:
            if attr.g.node or attr.graphs:
                summary.left_float.append((f"node '{node.name}' ({node.op_type})",
                                           "subgraph weights are not quantized"))
                break
    return list(chosen.values())


def _roles(node) -> list[tuple[int, str, str, bool]]:
    """(input index, role, layout, dense) of the weights ``node`` may have quantized."""
    ints = {a.name: a.i for a in node.attribute}
    return weight_roles(node.op_type, node.domain, lambda name, default: ints.get(name, default))


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _replacement(cand: Candidate, w: np.ndarray, mode: str, taken: set[str]):
    """(nodes, initializers, stored bytes) that compute ``cand.name`` from its stored form."""
    from onnx import TensorProto, helper, numpy_helper

    if mode == "bf16":
        bits = (round_to_bf16(w).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
        stored_name = _fresh(f"{cand.name}_bf16", taken)
        tensor = helper.make_tensor(stored_name, TensorProto.BFLOAT16, w.shape, bits.tobytes(), raw=True)
        node = helper.make_node("Cast", [stored_name], [cand.name], to=TensorProto.FLOAT,
                                name=_fresh(f"{cand.name}_cast", taken))
        return [node], [tensor], bits.nbytes

    if cand.layout == "columns":  # [K, N]: one scale per output column
        q, scale = int8_per_row(w.T)
        q, axis = np.ascontiguousarray(q.T), 1
    else:
        q, scale = int8_per_row(w)
        axis = 1 if cand.layout == "recurrent" else 0
    reshape_to = None
    if cand.layout == "recurrent" and w.shape[0] > 1:  # per-axis scales are 1-D: [D*N, K] per row, then Reshape
        reshape_to = np.array(w.shape, np.int64)
        q, scale, axis = q.reshape(-1, w.shape[2]), scale.reshape(-1), 0
    elif cand.layout == "recurrent":
        scale = scale[0]
    q_name, s_name = _fresh(f"{cand.name}_int8", taken), _fresh(f"{cand.name}_scale", taken)
    tensors = [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale.astype(np.float32), s_name)]
    out = cand.name if reshape_to is None else _fresh(f"{cand.name}_rows", taken)
    nodes = [helper.make_node("DequantizeLinear", [q_name, s_name], [out], axis=axis,
                              name=_fresh(f"{cand.name}_dequantize", taken))]
    if reshape_to is not None:
        shape_name = _fresh(f"{cand.name}_shape", taken)
        tensors.append(numpy_helper.from_array(reshape_to, shape_name))
        nodes.append(helper.make_node("Reshape", [out, shape_name], [cand.name],
                                      name=_fresh(f"{cand.name}_reshape", taken)))
    return nodes, tensors, q.nbytes + scale.nbytes


# ------------------------------------------------------------ accuracy report

REPORT_MODELS = ("adding_lstm", "forecast_lstm", "forecast_gru")
PRECISIONS = ("float32", "int8", "bf16")


@dataclass(frozen=True)
class AccuracyRow:
    model: str
    precision: str  # "float32" | "int8" | "bf16" (``load(path, quantize=...)``)
    metric: str  # the task metric (accuracy: higher is better; rmse: lower)
    value: float
    max_abs_error: float  # of the per-step output y vs float32
    mean_abs_error: float


def accuracy_report(models=REPORT_MODELS, *, sequences: int = 2000, seed: int = 0,
                    backend: str = "auto") -> list[AccuracyRow]:
    """Score each bundled model in float32, int8 and bf16 on the same fresh task data."""
    from . import models as bundled
    from .model import Model
    from .tasks import get as get_task

    rows = []
    for name in models:
        meta = bundled.metadata(name)
        task = get_task(meta["task"])
        x, target = task.sample(sequences, int(meta.get("seq_len", task.default_seq_len)),
                                np.random.default_rng(seed))
        outputs = {}
        for precision in PRECISIONS:
            model = Model(bundled.path(name), backend=backend,
                          quantize=None if precision == "float32" else precision)
            feeds = {a.name: np.zeros([sequences if isinstance(d, str) else d for d in a.shape], np.float32)
                     for a in model.get_inputs()}  # zero initial states
            feeds[model.input_names[0]] = x
            outputs[precision] = model.run(None, feeds)[0]
        for precision, y in outputs.items():
            error = np.abs(y.astype(np.float64) - outputs["float32"])
            rows.append(AccuracyRow(name, precision, task.metric,
                                    task.score(task.answer(y), target, x)[task.metric],
                                    float(error.max()), float(error.mean())))
    return rows


def format_report(rows: list[AccuracyRow]) -> str:
    lines = [f"{'model':<14} {'precision':<9} {'metric':<9} {'value':>8} {'max|err|':>10} {'mean|err|':>10}"]
    lines += [f"{r.model:<14} {r.precision:<9} {r.metric:<9} {r.value:>8.4f} {r.max_abs_error:>10.2e} "
              f"{r.mean_abs_error:>10.2e}" for r in rows]
    return "\n".join(lines)
