"""Convolution front-ends: the Conv/pool kernels against onnxruntime on random geometries, the
BatchNormalization folding pass, and real PyTorch CRNN exports (both exporters) end to end.

The ONNX backend node tests of Conv, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool and
BatchNormalization run in ``test_onnx_node_conformance.py`` (picked up as registered ops).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import lstminfer
from lstminfer.errors import ExecutionError, InvalidModelError, UnsupportedModelError

import conv_models

ATOL, RTOL = 1e-5, 1e-5


def _ort(model_bytes: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _single_node_model(op: str, x_shape, attrs: dict, weights: dict[str, np.ndarray] = (), outputs=("y",),
                       dtype=TensorProto.FLOAT, opset: int = 19) -> bytes:
    weights = dict(weights)
    node = helper.make_node(op, ["x", *weights], list(outputs), name=f"the_{op.lower()}", **attrs)
    inputs = [helper.make_tensor_value_info("x", dtype, [None] * len(x_shape))]
    outs = [helper.make_tensor_value_info(outputs[0], dtype, None)]
    if len(outputs) > 1:
        outs.append(helper.make_tensor_value_info(outputs[1], TensorProto.INT64, None))
    graph = helper.make_graph([node], "g", inputs, outs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model.SerializeToString()


# ---------------------------------------------------------------- kernels vs onnxruntime

CONV_CASES = [
    # x shape, W shape, group, attrs
    ((2, 6, 17), (4, 6, 3), 1, {}),
    ((1, 6, 17), (4, 6, 3), 1, {"pads": [2, 0], "dilations": [2]}),
    ((2, 6, 19), (6, 2, 5), 3, {"strides": [2], "pads": [1, 3]}),
    ((2, 4, 11), (8, 1, 3), 4, {"auto_pad": "SAME_UPPER", "strides": [2]}),
    ((2, 4, 11), (8, 4, 4), 1, {"auto_pad": "SAME_LOWER"}),
    ((2, 4, 11), (8, 4, 4), 1, {"auto_pad": "VALID", "dilations": [2]}),
    ((2, 4, 9), (5, 4, 1), 1, {}),  # 1x1: no im2col copy
    ((2, 3, 9, 13), (4, 3, 3, 3), 1, {"pads": [1, 1, 1, 1]}),
    ((1, 4, 9, 13), (6, 2, 3, 2), 2, {"strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]}),
    ((2, 2, 5, 6, 7), (3, 2, 2, 3, 2), 1, {"pads": [1, 0, 1, 0, 1, 1]}),
]


@pytest.mark.parametrize("x_shape, w_shape, group, attrs", CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_matches_onnxruntime(x_shape, w_shape, group, attrs, with_bias, rng):
    weights = {"W": rng.standard_normal(w_shape).astype(np.float32)}
    if with_bias:
        weights["B"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    model = _single_node_model("Conv", x_shape, {"group": group, **attrs}, weights)
    x = rng.standard_normal(x_shape).astype(np.float32)
    expected = _ort(model).run(None, {"x": x})[0]
    loaded = lstminfer.load(model)
    for _ in range(2):  # the plan, then the compiled program
        np.testing.assert_allclose(loaded.run(None, {"x": x})[0], expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("budget", [40, 400, 4000])
@pytest.mark.parametrize("x_shape, w_shape, group, attrs", CONV_CASES)
def test_conv_in_many_column_blocks_matches_onnxruntime(x_shape, w_shape, group, attrs, budget, rng, monkeypatch):
    """Small column buffers: items split into blocks of output rows (each its own im2col + GEMM +
    bias + copy) or a batch split into blocks of items, as large inputs and batches are."""
    from lstminfer.ops import conv as conv_ops

    monkeypatch.setattr(conv_ops, "_COLS_FLOATS", budget)
    monkeypatch.setattr(conv_ops, "_NATIVE", False)  # the NumPy path (the native one: test_conv_native.py)
    weights = {"W": rng.standard_normal(w_shape).astype(np.float32),
               "B": rng.standard_normal(w_shape[0]).astype(np.float32)}
    model = _single_node_model("Conv", x_shape, {"group": group, **attrs}, weights)
    x = rng.standard_normal(x_shape).astype(np.float32)
    expected = _ort(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(lstminfer.load(model).run(None, {"x": x})[0], expected, atol=ATOL, rtol=RTOL)


def test_random_geometries_match_onnxruntime(rng):
    """Conv, MaxPool and AveragePool on random 1-D/2-D geometries (seed printed on failure)."""
    for _ in range(25):
        spatial = int(rng.integers(1, 3))
        kernel = [int(k) for k in rng.integers(1, 4, spatial)]
        strides = [int(s) for s in rng.integers(1, 3, spatial)]
        dilations = [int(d) for d in rng.integers(1, 3, spatial)]
        pads = [int(p) for p in rng.integers(0, 3, 2 * spatial)]
        pads = [min(p, k - 1) for p, k in zip(pads, kernel * 2)]  # onnxruntime's pools want pads < kernel
        size = [int(n) for n in rng.integers(6, 12, spatial)]
        op = str(rng.choice(["Conv", "MaxPool", "AveragePool"]))
        attrs = {"strides": strides, "pads": pads, "dilations": dilations}
        weights = {}
        if op == "Conv":
            group = int(rng.choice([1, 2]))
            weights = {"W": rng.standard_normal([4, 4 // group] + kernel).astype(np.float32),
                       "B": rng.standard_normal(4).astype(np.float32)}
            attrs["group"] = group
        else:
            attrs.update(kernel_shape=kernel, ceil_mode=int(rng.integers(0, 2)))
            if op == "AveragePool":
                attrs["count_include_pad"] = int(rng.integers(0, 2))
        x_shape = [2, 4] + size
        model = _single_node_model(op, x_shape, attrs, weights)
        x = rng.standard_normal(x_shape).astype(np.float32)
        expected = _ort(model).run(None, {"x": x})[0]
        got = lstminfer.load(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL, err_msg=f"{op} {attrs} on {x_shape}")


def _conv_relu_pool_model(x_shape, W, B, conv_attrs: dict, pool_attrs: dict, relu: bool) -> bytes:
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **conv_attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    nodes.append(helper.make_node("MaxPool", ["r" if relu else "c"], ["y"], name="pool", **pool_attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [None] * len(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("native", [True, False], ids=["native", "numpy"])
def test_conv_max_pool_fused_matches_onnxruntime(native, rng, monkeypatch):
    """Conv (+ Relu) + MaxPool of tiling windows runs as one fused Conv: random 1-D/2-D geometries
    (groups, strides, dilations, pads, pool windows) against onnxruntime running the three nodes."""
    from lstminfer.ops import conv as conv_ops

    monkeypatch.setattr(conv_ops, "_NATIVE", native)
    for _ in range(15):
        spatial = int(rng.integers(1, 3))
        kernel = [int(k) for k in rng.integers(1, 4, spatial)]
        strides = [int(s) for s in rng.integers(1, 3, spatial)]
        dilations = [int(d) for d in rng.integers(1, 3, spatial)]
        pads = [int(p) for p in rng.integers(0, 3, 2 * spatial)]
        group = int(rng.choice([1, 2]))
        M = int(rng.choice([4, 8, 24]))
        size = [int(n) for n in rng.integers(9, 40 if spatial == 1 else 20, spatial)]
        pool = [int(p) for p in rng.integers(1, 4, spatial)]
        W = rng.standard_normal([M, 4 // group] + kernel).astype(np.float32)
        B = rng.standard_normal(M).astype(np.float32)
        x_shape = [int(rng.integers(1, 4)), 4] + size
        model = _conv_relu_pool_model(x_shape, W, B, {"strides": strides, "pads": pads, "dilations": dilations,
                                                      "group": group},
                                      {"kernel_shape": pool, "strides": pool}, bool(rng.integers(0, 2)))
        x = rng.standard_normal(x_shape).astype(np.float32)
        expected = _ort(model).run(None, {"x": x})[0]
        loaded = lstminfer.load(model)
        assert "MaxPool 'pool' fused" in loaded.describe()
        for _ in range(2):  # the plan, then the compiled program
            np.testing.assert_allclose(loaded.run(None, {"x": x})[0], expected, atol=ATOL, rtol=RTOL,
                                       err_msg=f"{x_shape} W {W.shape} pool {pool}")


def test_overlapping_or_padded_max_pools_stay_nodes_of_their_own():
    rng = np.random.default_rng(0)
    W, B = rng.standard_normal((4, 2, 3)).astype(np.float32), np.zeros(4, np.float32)
    for attrs in ({"kernel_shape": [3], "strides": [2]}, {"kernel_shape": [2], "strides": [2], "pads": [1, 1]},
                  {"kernel_shape": [2], "strides": [2], "ceil_mode": 1}):
        model = lstminfer.load(_conv_relu_pool_model((1, 2, 9), W, B, {}, attrs, True))
        assert "fused (the conv's output" not in model.describe(), attrs


def test_conv_on_a_strided_view_and_in_float64(rng):
    W = rng.standard_normal((4, 6, 3))
    model = _single_node_model("Conv", (2, 6, 17), {"pads": [1, 1]}, {"W": W}, dtype=TensorProto.DOUBLE)
    base = rng.standard_normal((2, 6, 40))
    x = base[:, :, ::2][:, :, 1:18]  # not contiguous
    expected = ReferenceEvaluator(onnx.load_from_string(model)).run(None, {"x": np.ascontiguousarray(x)})[0]
    loaded = lstminfer.load(model)  # onnxruntime has no float64 Conv: onnx's reference evaluator is the peer
    for _ in range(3):
        got = loaded.run(None, {"x": x})[0]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, atol=1e-12, rtol=1e-12)


POOL_CASES = [
    ("MaxPool", (2, 3, 17), {"kernel_shape": [3], "strides": [2]}),
    ("MaxPool", (2, 3, 17), {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1}),
    # onnxruntime's pools size SAME pads without the dilation (the spec includes it): not compared dilated
    ("MaxPool", (2, 3, 9, 10), {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "SAME_UPPER"}),
    ("MaxPool", (2, 3, 9, 10), {"kernel_shape": [3, 2], "dilations": [2, 1], "pads": [2, 0, 1, 1]}),
    ("AveragePool", (2, 3, 17), {"kernel_shape": [4], "strides": [3], "pads": [2, 1]}),
    ("AveragePool", (2, 3, 17), {"kernel_shape": [4], "strides": [3], "pads": [2, 1], "count_include_pad": 1}),
    ("AveragePool", (2, 3, 9, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                     "pads": [1, 0, 1, 1]}),
    ("AveragePool", (1, 2, 9, 10), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ("AveragePool", (1, 2, 9, 10), {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ("GlobalAveragePool", (2, 3, 5, 7), {}),
    ("GlobalMaxPool", (2, 3, 11), {}),
]


@pytest.mark.parametrize("op, x_shape, attrs", POOL_CASES)
def test_pool_matches_onnxruntime(op, x_shape, attrs, rng):
    model = _single_node_model(op, x_shape, attrs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    expected = _ort(model).run(None, {"x": x})[0]
    loaded = lstminfer.load(model)
    for _ in range(2):
        np.testing.assert_allclose(loaded.run(None, {"x": x})[0], expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices_match_onnxruntime(storage_order, rng):
    attrs = {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 1, 0, 1], "storage_order": storage_order}
    model = _single_node_model("MaxPool", (2, 3, 7, 8), attrs, outputs=("y", "indices"), opset=12)
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    expected = _ort(model).run(None, {"x": x})
    got = lstminfer.load(model).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_conv_errors_name_the_node(rng):
    W = rng.standard_normal((4, 6, 3)).astype(np.float32)
    loaded = lstminfer.load(_single_node_model("Conv", (1, 6, 9), {}, {"W": W}))
    with pytest.raises(ExecutionError, match=r"the_conv.*5 channels; W expects 6"):
        loaded.run(None, {"x": np.zeros((1, 5, 9), np.float32)})
    with pytest.raises(ExecutionError, match=r"the_conv.*smaller than the kernel's span 3"):
        loaded.run(None, {"x": np.zeros((1, 6, 2), np.float32)})
    with pytest.raises(InvalidModelError, match=r"the_conv.*'pads' = \[1\]"):
        lstminfer.load(_single_node_model("Conv", (1, 6, 9), {"pads": [1]}, {"W": W}))
    with pytest.raises(UnsupportedModelError, match=r"the_conv.*auto_pad"):
        lstminfer.load(_single_node_model("Conv", (1, 6, 9), {"auto_pad": "SAME"}, {"W": W}))


# ---------------------------------------------------------------- BatchNormalization folding


def _conv_bn_model(rng, conv_output_also_read: bool) -> bytes:
    C, M = 3, 4
    init = {
        "W": rng.standard_normal((M, C, 3)).astype(np.float32),
        "B": rng.standard_normal(M).astype(np.float32),
        "scale": (rng.random(M) + 0.5).astype(np.float32), "bias": rng.standard_normal(M).astype(np.float32),
        "mean": rng.standard_normal(M).astype(np.float32), "var": (rng.random(M) + 0.5).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn",
                              epsilon=1e-3)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if conv_output_also_read:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, None])],
                              outputs, [numpy_helper.from_array(v, k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("shared", [False, True], ids=["folded", "conv-output-shared"])
def test_batchnorm_folds_into_the_conv_before_it(shared, rng):
    model = _conv_bn_model(rng, conv_output_also_read=shared)
    x = rng.standard_normal((1, 3, 10)).astype(np.float32)
    expected = _ort(model).run(None, {"x": x})
    loaded = lstminfer.load(model)
    got = loaded.run(None, {"x": x})
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=ATOL, rtol=RTOL)
    text = loaded.describe()
    steps = [line for line in text.splitlines() if " via " in line]
    if shared:  # its output has another reader: both nodes stay
        assert any("BatchNormalization ->" in line for line in steps), text
        assert "folded in" not in text and "fused" not in text
    else:
        assert not any("BatchNormalization ->" in line for line in steps), text
        assert "BatchNormalization 'bn' folded in" in text


# ---------------------------------------------------------------- PyTorch CRNN exports


def _check_export(model_bytes: bytes, name: str, shapes, rng) -> lstminfer.Model:
    sess = _ort(model_bytes)
    loaded = lstminfer.load(model_bytes)
    for batch, time in shapes:
        x = conv_models.example(name, rng, batch, time)
        expected = sess.run(None, {"x": x})[0]
        for _ in range(2):  # the plan, then the compiled program
            got = loaded.run(None, {"x": x})[0]
            np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL, err_msg=f"{name} B={batch} T={time}")
    return loaded


@pytest.mark.parametrize("name", ["kws", "ocr", "causal", "lookahead"])
@pytest.mark.parametrize("fold", [True, False], ids=["exporter-folds-bn", "bn-kept"])
def test_torchscript_crnn_matches_onnxruntime(name, fold, rng):
    model = conv_models.export(name, "torchscript", fold=fold)
    loaded = _check_export(model, name, [(2, 16), (1, 40), (3, 12)], rng)
    text = loaded.describe()
    assert "Relu '" in text and "fused" in text, text  # every model has a Conv -> [BN ->] Relu
    if not fold and name != "lookahead":  # the BatchNormalization nodes are gone: folded at load
        assert "folded in" in text and "BatchNormalization ->" not in text, text


@pytest.mark.parametrize("name", ["kws", "ocr", "causal"])
def test_dynamo_crnn_matches_onnxruntime(name, rng):
    model = conv_models.export(name, "dynamo", batch=2, time=16)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert "Conv" in ops and "LSTM" in ops, ops
    _check_export(model, name, [(2, 16)], rng)


def test_crnn_matches_torch(rng):
    x = conv_models.example("ocr", rng, 2, 20)
    got = lstminfer.load(conv_models.export("ocr")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, conv_models.torch_output("ocr", x), atol=ATOL, rtol=RTOL)
