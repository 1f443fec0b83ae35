"""ONNX protobuf -> internal ``Graph``. With ``onnx_proto``, the only code that reads protobuf.

Parsing happens once, at load: the file is read (with external-data files
beside it), checked for structure, model-local functions are inlined, and
every node, attribute and initializer becomes a plain Python object (see
``graph.py``). The ``onnx`` package itself is imported only where it is
really needed (external data, local functions, shape inference), so a plain
load stays fast; shape inference (intermediate shapes, for ``describe()`` and
streaming analysis) runs on first use of ``Graph.value_info``.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import onnx_proto
from .dtypes import numpy_dtype
from .errors import InvalidModelError, ModelNotFoundError, UnsupportedModelError
from .graph import Graph, Node, ValueInfo
from .ops.registry import MAX_OPSET

NO_MODEL_VERSION = 2**63 - 1  # onnxruntime's ModelMetadata.version of a model that sets none
MIN_OPSET = 7  # the first opset of LSTM/GRU/RNN as they are specified today


@dataclass
class ImportedModel:
    """A parsed model: its main graph plus the metadata onnxruntime exposes."""

    graph: Graph
    source: str  # file path or "<bytes>" / "<ModelProto>", for messages
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    description: str = ""
    graph_name: str = ""
    version: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    ir_version: int = 0


def read_model(model: Any) -> tuple[Any, str]:
    """Accept a path, bytes or ModelProto; return the proto (onnx's ModelProto class) and a source name."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse_bytes(bytes(model), "<bytes>"), "<bytes>"
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if os.path.isdir(path):
            found = sorted(n for n in os.listdir(path) if n.endswith(".onnx"))[:5]
            raise ModelNotFoundError(f"'{path}' is a directory, not an ONNX model file; pass the .onnx file itself"
                                     + (f" (in it: {', '.join(found)})" if found else " (it holds no .onnx file)"))
        if not os.path.isfile(path):
            raise ModelNotFoundError(f"ONNX model file not found: '{path}'")
        with open(path, "rb") as f:
            proto = _parse_bytes(f.read(), path)
        _load_external_data(proto, os.path.dirname(os.path.abspath(path)), path)
        return proto, path
    proto = onnx_proto.as_model_proto(model)
    if proto is not None:
        return proto, "<ModelProto>"
    raise TypeError(
        f"model must be a file path, bytes or onnx.ModelProto, got {type(model).__name__}"
    )


def _parse_bytes(data: bytes, source: str):
    from google.protobuf.message import DecodeError

    if not data:
        raise InvalidModelError(f"{source}: the model is empty (0 bytes)")
    proto = onnx_proto.pb2().ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModelError(
            f"{source}: not an ONNX model{_what_it_looks_like(data)} (protobuf parse failed: {e}); "
            "the file may be truncated or not an ONNX file"
        ) from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise InvalidModelError(
            f"{source}: not a valid ONNX model (no graph or no ir_version){_what_it_looks_like(data)}; "
            "the file may be truncated or not an ONNX file"
        )
    _check_ir_version(proto, source)
    return proto


# File signatures of what people pass by mistake, and what each most likely is.
_OTHER_FORMATS = (
    (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth checkpoint, a .npz or a .keras file?): export the model "
                     "to ONNX first, e.g. with torch.onnx.export"),
    (b"\x80", "a Python pickle (a PyTorch or scikit-learn checkpoint?): export the model to ONNX first"),
    (b"\x89HDF", "an HDF5 file (a Keras .h5 model?): convert it to ONNX first, e.g. with tf2onnx"),
    (b"\x93NUMPY", "a NumPy .npy array, not a model"),
)


def _what_it_looks_like(data: bytes) -> str:
    """": it looks like ..." for a file of another known format, ": it is a text file" for text; else ""."""
    for magic, what in _OTHER_FORMATS:
        if data.startswith(magic):
            return f": it looks like {what}"
    head = data[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return ": it is a text file" + (" (a Git LFS pointer: run git lfs pull)" if head.startswith(b"version https://git-lfs") else "")


def _check_ir_version(proto, source: str) -> None:
    """A model saved by a newer onnx release than the installed one: say so, not a vague parse error."""
    known = getattr(onnx_proto.pb2(), "IR_VERSION", None)  # the installed onnx's newest IR version
    if known is not None and proto.ir_version > known:
        raise UnsupportedModelError(
            f"{source}: the model's ir_version {proto.ir_version} is newer than the installed onnx package "
            f"reads (up to ir_version {known}): it was saved by a newer onnx release; "
            "upgrade onnx (pip install -U onnx) or re-export with an older one")


def _load_external_data(proto, base_dir: str, source: str) -> None:
    if not any(onnx_proto.uses_external_data(t) for t in _all_tensors(proto.graph)):
        return
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, base_dir)
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise InvalidModelError(
            f"{source}: cannot read external data for initializers (looked in '{base_dir}'): {e}"
        ) from None


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def import_model(model: Any) -> ImportedModel:
    """Parse ``model`` (path, bytes or ModelProto) into an ``ImportedModel``."""
    proto, source = read_model(model)
    try:
        return _import_proto(proto, source)
    except UnicodeDecodeError as e:  # protobuf decodes string fields (names, docs) only when read
        raise InvalidModelError(f"{source}: a name or string field of the model is not valid UTF-8 ({e})") from None


def _import_proto(proto, source: str) -> ImportedModel:
    opsets = _opsets(proto, source)
    if proto.functions:
        import onnx.inliner

        proto = onnx.inliner.inline_local_functions(proto)
    value_info = LazyValueInfo(_shape_inference_input(proto))
    graph = _convert_graph(proto.graph, opsets, value_info, source)
    return ImportedModel(
        graph=graph,
        source=source,
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        description=proto.doc_string,
        graph_name=proto.graph.name,
        version=proto.model_version if proto.HasField("model_version") else NO_MODEL_VERSION,
        metadata={p.key: p.value for p in proto.metadata_props},
        ir_version=proto.ir_version,
    )


def _opsets(proto, source: str) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for imp in proto.opset_import:
        domain = "" if imp.domain in ("", "ai.onnx") else imp.domain
        opsets[domain] = int(imp.version)
    if "" not in opsets:
        if proto.ir_version >= 3:
            raise InvalidModelError(f"{source}: the model imports no opset for the default ONNX domain")
        opsets[""] = 1
    version = opsets[""]
    if version > MAX_OPSET:
        raise UnsupportedModelError(
            f"{source}: default-domain (ai.onnx) opset {version} is newer than lstminfer supports "
            f"(opsets {MIN_OPSET} to {MAX_OPSET}): the model comes from a newer onnx/exporter release; "
            f"re-export it with opset_version={MAX_OPSET} or lower"
        )
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{source}: default-domain (ai.onnx) opset {version} is not supported; "
            f"supported opsets are {MIN_OPSET} to {MAX_OPSET}"
        )
    return opsets


# Initializers with more elements than this are handed to shape inference as typed
# inputs without their values: it needs their shapes only (data propagation reads
# small integer shape tensors), and the lazy copy should not hold every weight.
_SHAPE_DATA_MAX_ELEMENTS = 1024


def _shape_inference_input(proto):
    """What shape inference needs of ``proto``: the proto, minus the values of large initializers."""
    pb = onnx_proto.pb2()
    light = pb.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, name, getattr(proto, name))
    light.opset_import.extend(proto.opset_import)
    g, lg = proto.graph, light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    lg.sparse_initializer.extend(g.sparse_initializer)
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        count = 1
        for d in t.dims:
            count *= d
        if count <= _SHAPE_DATA_MAX_ELEMENTS:
            lg.initializer.append(t)
        elif t.name not in declared:
            vi = lg.input.add()
            vi.name = t.name
            vi.type.tensor_type.elem_type = t.data_type
            for d in t.dims:
                vi.type.tensor_type.shape.dim.add().dim_value = d
    return light


class LazyValueInfo(Mapping):
    """Shapes/dtypes of intermediate values (name -> ValueInfo), inferred on first use.

    Shape inference needs the ``onnx`` package (~50 ms to import) and runs over
    the whole graph; only ``describe()`` and the streaming analysis read it.
    """

    def __init__(self, proto) -> None:
        self._proto = proto
        self._values: dict[str, ValueInfo] | None = None
        self._lock = threading.Lock()  # Models are shared between threads

    def _infer(self) -> dict[str, ValueInfo]:
        if self._values is None:
            with self._lock:
                if self._values is None:
                    self._values = _infer_value_info(self._proto)
                    self._proto = None  # no longer needed
        return self._values

    def __getitem__(self, name: str) -> ValueInfo:
        return self._infer()[name]

    def __iter__(self):
        return iter(self._infer())

    def __len__(self) -> int:
        return len(self._infer())

    def __repr__(self) -> str:
        return f"LazyValueInfo({'not inferred yet' if self._values is None else self._values!r})"


def _infer_value_info(proto) -> dict[str, ValueInfo]:
    """Shapes/dtypes of intermediate values, for ``describe()``; best effort."""
    try:
        import onnx.shape_inference

        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # inference is informative only; the executor never needs it
        inferred = proto
    out: dict[str, ValueInfo] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        try:
            out[vi.name] = _value_info(vi, "")
        except UnsupportedModelError:
            continue
    return out


def _convert_graph(
    g, opsets: dict[str, int], value_info: dict[str, ValueInfo], source: str
) -> Graph:
    where = f"{source}, graph '{g.name}'"
    initializers: dict[str, np.ndarray] = {}
    for t in g.initializer:
        initializers[t.name] = _tensor(t, f"{where}, initializer '{t.name}'")
    for st in g.sparse_initializer:
        name = st.values.name
        initializers[name] = _sparse_tensor(st, f"{where}, sparse initializer '{name}'")
    # Old exporters list initializers among the inputs too: those are constants here.
    inputs = [_value_info(vi, where) for vi in g.input if vi.name not in initializers]
    outputs = [_value_info(vi, where) for vi in g.output]
    nodes = [_node(n, i, opsets, value_info, source) for i, n in enumerate(g.node)]
    return Graph(
        nodes=nodes,
        inputs=inputs,
        outputs=outputs,
        initializers=initializers,
        value_info=value_info,
        opsets=dict(opsets),
        name=g.name or "graph",
    )


def _node(
    n, index: int, opsets: dict[str, int], value_info: dict[str, ValueInfo], source: str
) -> Node:
    name = n.name or f"{n.op_type}_{index}"
    node = Node(
        op_type=n.op_type,
        inputs=tuple(n.input),
        outputs=tuple(n.output),
        name=name,
        domain="" if n.domain in ("", "ai.onnx") else n.domain,
    )
    for attr in n.attribute:
        where = f"{source}: {node.label()}, attribute '{attr.name}'"
        if attr.ref_attr_name:
            raise InvalidModelError(f"{where}: refers to a function attribute outside a function")
        node.attrs[attr.name] = _attribute(attr, opsets, value_info, source, where)
    if node.domain and node.domain not in opsets:
        raise InvalidModelError(
            f"{source}: {node.label()} uses domain '{node.domain}' that the model does not import"
        )
    return node


def _attribute(attr, opsets, value_info, source: str, where: str) -> Any:
    A = onnx_proto.pb2().AttributeProto
    kind = attr.type
    if kind == A.FLOAT:
        return float(attr.f)
    if kind == A.INT:
        return int(attr.i)
    if kind == A.STRING:
        return _decode(attr.s)
    if kind == A.TENSOR:
        return _tensor(attr.t, where)
    if kind == A.SPARSE_TENSOR:
        return _sparse_tensor(attr.sparse_tensor, where)
    if kind == A.GRAPH:
        return _convert_graph(attr.g, opsets, value_info, source)
    if kind == A.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == A.INTS:
        return [int(v) for v in attr.ints]
    if kind == A.STRINGS:
        return [_decode(v) for v in attr.strings]
    if kind == A.TENSORS:
        return [_tensor(t, where) for t in attr.tensors]
    if kind == A.TYPE_PROTO:
        return _type_info("", attr.tp, where)
    if kind == A.TYPE_PROTOS:
        return [_type_info("", tp, where) for tp in attr.type_protos]
    if kind == A.GRAPHS:
        return [_convert_graph(sub, opsets, value_info, source) for sub in attr.graphs]
    raise UnsupportedModelError(f"{where}: attribute type {A.AttributeType.Name(kind)} is not supported")


def _decode(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _tensor(t, where: str) -> np.ndarray:
    return onnx_proto.to_array(t, where)


# A sparse initializer is made dense at load: refuse one whose dense form is absurdly large.
MAX_SPARSE_DENSE_BYTES = 1 << 30


def _sparse_tensor(st, where: str) -> np.ndarray:
    values = _tensor(st.values, where)
    indices = _tensor(st.indices, where).astype(np.int64)
    dims, size = onnx_proto.checked_dims(st.dims, where)
    if size * values.dtype.itemsize > MAX_SPARSE_DENSE_BYTES:
        raise InvalidModelError(f"{where}: dims {list(dims)} make a dense tensor of {size} elements, "
                                f"over the {MAX_SPARSE_DENSE_BYTES >> 20} MiB lstminfer builds from a sparse one")
    if values.ndim != 1:
        raise InvalidModelError(f"{where}: values must be 1-D, got shape {list(values.shape)}")
    flat_ok = indices.ndim == 1 and indices.shape[0] == values.shape[0]
    coords_ok = indices.ndim == 2 and indices.shape == (values.shape[0], len(dims))
    if not (flat_ok or coords_ok):
        raise InvalidModelError(f"{where}: indices of shape {list(indices.shape)} do not fit {values.shape[0]} "
                                f"values of a rank-{len(dims)} tensor ([NNZ] or [NNZ, rank])")
    bounds = size if indices.ndim == 1 else np.asarray(dims, dtype=np.int64)
    if indices.size and (np.any(indices < 0) or np.any(indices >= bounds)):
        raise InvalidModelError(f"{where}: an index is out of range for dims {list(dims)}")
    try:
        dense = np.zeros(dims, dtype=values.dtype)
    except ValueError as e:  # an empty tensor's dims can still be more than NumPy holds
        raise InvalidModelError(f"{where}: dims {list(dims)} cannot be a NumPy array ({e})") from None
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    dense.setflags(write=False)
    return dense


def _value_info(vi, where: str) -> ValueInfo:
    return _type_info(vi.name, vi.type, where)


def _type_info(name: str, t, where: str) -> ValueInfo:
    """ValueInfo of a TypeProto: tensor, seq(tensor), optional(tensor | seq(tensor))."""
    kind = "tensor"
    which = t.WhichOneof("value")
    if which == "optional_type":
        kind, t = "optional", t.optional_type.elem_type
        which = t.WhichOneof("value")
    if which == "sequence_type":
        kind, t = ("optional_sequence" if kind == "optional" else "sequence"), t.sequence_type.elem_type
    elif which not in ("tensor_type", None):
        raise UnsupportedModelError(f"{where}, value '{name}': type '{which}' is not supported")
    if t.WhichOneof("value") != "tensor_type":
        return ValueInfo(name, None, None, kind)
    tt = t.tensor_type
    dtype = numpy_dtype(tt.elem_type, f"{where}, value '{name}'") if tt.elem_type else None
    shape = None
    if tt.HasField("shape"):
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return ValueInfo(name, dtype, shape, kind)
