"""Load-time graph passes over convolutions: what follows a Conv joins it.

* BatchNormalization (inference) folds into the Conv before it:
  ``y = (conv(x, W) + B - mean) * scale / sqrt(var + eps) + bias`` is ``conv(x, W') + B'`` with
  ``W' = W * f`` per output channel and ``B' = (B - mean) * f + bias``, ``f = scale / sqrt(var + eps)``:
  one node and one pass over the data fewer, the same numbers up to rounding (onnxruntime folds
  it too). Only when every weight is an initializer and it is the plain per-channel form.
* A Relu after a Conv runs inside it, on each block of output while it is in cache.
* A MaxPool after a Conv (or Conv + Relu) whose windows do not overlap (strides = kernel_shape, no
  pads, dilation 1, floor; 1-D or 2-D, the CRNN's ``MaxPool2d(2)``) runs inside it: the native
  kernel pools each few conv rows while they are in cache, so the conv's output is never
  written whole (``ops.conv``).

Either joins only a Conv whose output has no other reader and is not a graph output.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .graph import Graph, Node

# The Conv factory names what joined it in its describe() from these attributes.
FOLDED_ATTR = "lstminfer.folded_batchnorm"
ACTIVATION_ATTR = "lstminfer.fused_activation"  # (op type, node name) of the activation run inside
POOL_ATTR = "lstminfer.fused_max_pool"  # (kernel_shape, node name) of the MaxPool run inside
FUSED_ACTIVATIONS = ("Relu",)
# Set by conv_streaming on a windowed node fed by a TimeHistory: the axis of its input that is time
# (it is unpadded there, and a chunk may give it too few frames for one window: 0 output frames).
STREAMED_TIME_ATTR = "lstminfer.streamed_time_axis"
_FOLDED_SUFFIX = "__folded_batchnorm"


def fuse_into_conv(graph: Graph) -> Graph:
    """``graph`` with BatchNormalization folded, and Relu and MaxPool fused, into the Conv before them."""
    return fuse_max_pool_into_conv(fuse_activation_into_conv(fold_batchnorm_into_conv(graph)))


def fold_batchnorm_into_conv(graph: Graph) -> Graph:
    """``graph`` with each foldable Conv -> BatchNormalization pair made one Conv (new weights
    as new initializers); ``graph`` itself when there is none."""
    readers, outputs, producer = _uses(graph)
    folded: dict[int, Node] = {}  # id(BatchNormalization) -> the Conv replacing it
    dropped: set[int] = set()  # id(Conv) folded into its BatchNormalization's place
    initializers = dict(graph.initializers)
    for bn in graph.nodes:
        conv = producer.get(bn.inputs[0]) if bn.op_type == "BatchNormalization" and bn.inputs else None
        if conv is None or conv.op_type != "Conv" or not _plain(conv) or not _plain(bn):
            continue
        if not _only_read_by_next(conv, readers, outputs):
            continue
        weights = _folded_weights(conv, bn, initializers, graph.opsets.get("", graph.opsets.get("ai.onnx", 17)))
        if weights is None:
            continue
        W_name, B_name = f"{conv.inputs[1]}{_FOLDED_SUFFIX}_{bn.outputs[0]}", f"{bn.outputs[0]}{_FOLDED_SUFFIX}_B"
        initializers[W_name], initializers[B_name] = weights
        folded[id(bn)] = replace(conv, inputs=(conv.inputs[0], W_name, B_name), outputs=(bn.outputs[0],),
                                 attrs={**conv.attrs, FOLDED_ATTR: bn.name or bn.outputs[0]})
        dropped.add(id(conv))
    if not folded:
        return graph
    nodes = [folded.get(id(n), n) for n in graph.nodes if id(n) not in dropped]
    return replace(graph, nodes=nodes, initializers=initializers)


def fuse_activation_into_conv(graph: Graph) -> Graph:
    """``graph`` with each Conv -> Relu made one Conv running the Relu on its output blocks."""
    readers, outputs, producer = _uses(graph)
    fused: dict[int, Node] = {}
    dropped: set[int] = set()
    for act in graph.nodes:
        if act.op_type not in FUSED_ACTIVATIONS or not _plain(act) or not act.inputs:
            continue
        conv = producer.get(act.inputs[0])
        if conv is None or conv.op_type != "Conv" or not _plain(conv) or ACTIVATION_ATTR in conv.attrs \
                or id(conv) in dropped or not _only_read_by_next(conv, readers, outputs):
            continue
        fused[id(act)] = replace(conv, outputs=(act.outputs[0],),
                                 attrs={**conv.attrs, ACTIVATION_ATTR: (act.op_type, act.name or act.outputs[0])})
        dropped.add(id(conv))
    if not fused:
        return graph
    return replace(graph, nodes=[fused.get(id(n), n) for n in graph.nodes if id(n) not in dropped])


def fuse_max_pool_into_conv(graph: Graph) -> Graph:
    """``graph`` with each Conv -> MaxPool of non-overlapping windows made one Conv that pools."""
    readers, outputs, producer = _uses(graph)
    fused: dict[int, Node] = {}
    dropped: set[int] = set()
    for pool in graph.nodes:
        if pool.op_type != "MaxPool" or not _plain(pool) or not pool.inputs or not _tiling(pool):
            continue
        conv = producer.get(pool.inputs[0])
        if conv is None or conv.op_type != "Conv" or not _plain(conv) or POOL_ATTR in conv.attrs \
                or STREAMED_TIME_ATTR in conv.attrs or id(conv) in dropped \
                or not _only_read_by_next(conv, readers, outputs):
            continue
        W = graph.initializers.get(conv.inputs[1]) if len(conv.inputs) > 1 else None
        kernel = [int(k) for k in pool.attrs["kernel_shape"]]
        if W is None or np.ndim(W) != 2 + len(kernel):
            continue
        fused[id(pool)] = replace(conv, outputs=(pool.outputs[0],),
                                  attrs={**conv.attrs, POOL_ATTR: (tuple(kernel), pool.name or pool.outputs[0])})
        dropped.add(id(conv))
    if not fused:
        return graph
    return replace(graph, nodes=[fused.get(id(n), n) for n in graph.nodes if id(n) not in dropped])


def _tiling(pool: Node) -> bool:
    """A MaxPool whose windows tile its input: 1-D/2-D, strides = kernel, no pads, dilation 1,
    floor mode, no Indices output."""
    kernel = pool.attrs.get("kernel_shape")
    if kernel is None or len(kernel) not in (1, 2) or any(o for o in pool.outputs[1:]):
        return False
    n = len(kernel)
    auto_pad = pool.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return (list(pool.attrs.get("strides", [1] * n)) == list(kernel) and not any(pool.attrs.get("pads", []))
            and all(d == 1 for d in pool.attrs.get("dilations", [1] * n)) and not pool.attrs.get("ceil_mode", 0)
            and auto_pad in ("NOTSET", "VALID") and all(int(k) >= 1 for k in kernel))


def _uses(graph: Graph):
    """(readers per value, graph output names, producer per value)."""
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
        for sub in node.subgraphs():
            for name in sub.free_names():
                readers[name] = readers.get(name, 0) + 2  # a body read: never fuse it away
    outputs = {vi.name for vi in graph.outputs}
    producer = {o: n for n in graph.nodes for o in n.outputs if o}
    return readers, outputs, producer


def _only_read_by_next(conv: Node, readers, outputs) -> bool:
    return len(conv.outputs) == 1 and readers.get(conv.outputs[0], 0) == 1 and conv.outputs[0] not in outputs


def _plain(node: Node) -> bool:
    return node.domain in ("", "ai.onnx") and not node.subgraphs()


def _folded_weights(conv: Node, bn: Node, initializers: dict, opset: int):
    """(W', B') or None when this pair does not fold exactly."""
    if len(bn.inputs) != 5 or any(o for o in bn.outputs[1:]) or bn.attrs.get("training_mode", 0):
        return None
    if opset < 9 and bn.attrs.get("spatial", 1) != 1:
        return None
    W = initializers.get(conv.inputs[1]) if len(conv.inputs) > 1 else None
    B = initializers.get(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
    params = [initializers.get(name) for name in bn.inputs[1:]]
    if W is None or (len(conv.inputs) > 2 and conv.inputs[2] and B is None) or any(p is None for p in params):
        return None
    if W.dtype.kind != "f" or W.ndim < 3:
        return None
    M = W.shape[0]
    if any(np.shape(p) != (M,) for p in params) or (B is not None and np.shape(B) != (M,)):
        return None
    scale, bias, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
    epsilon = float(bn.attrs.get("epsilon", 1e-5))
    factor = scale / np.sqrt(var + epsilon)
    W_folded = (W.astype(np.float64) * factor.reshape((M,) + (1,) * (W.ndim - 1))).astype(W.dtype)
    B_base = np.zeros(M) if B is None else B.astype(np.float64)
    B_folded = ((B_base - mean) * factor + bias).astype(W.dtype)
    return W_folded, B_folded
