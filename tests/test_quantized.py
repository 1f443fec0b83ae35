"""Quantization: onnxruntime's quantize_dynamic models, the ONNX quantization ops, load(quantize=...).

Tolerance vs onnxruntime's int8 outputs, on the reference backend (which emulates its
DynamicQuantizeLSTM and quantized MatMuls): a value on a uint8 rounding boundary may flip to
the neighbouring bucket (a 1-ulp difference), moving a product by a_scale * |w|; so
max |diff| <= 5e-3 and at most 1% of the values differ by > 1e-5. The fast backends run the
int8 kernel and MatMul heads: the int8 bound of tests/test_ort_quantized.py.
"""
from __future__ import annotations

import types
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import lstminfer
import lstminfer.models
from lstminfer import quantization as lq
from lstminfer.errors import InvalidArgumentError, InvalidInputError, InvalidModelError
from lstminfer.kernels import cython_backend
from lstminfer.quantize_export import REPORT_MODELS, accuracy_report, format_report
from lstminfer.summary import format_info
from lstminfer.tasks import get as get_task

from kernel_cases import REFERENCE, make_inputs, make_spec, make_weights

MAX_DIFF = 5e-3
FLIP_FRACTION = 0.01
INT8_MAX_ERR = 0.05  # the int8 kernel's bound (README, Quantization), relative to max(1, |y|)
INT8_MEAN_ERR = 0.01


def _ort(model: onnx.ModelProto | str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _assert_within_int8_bound(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        err = np.abs(a.astype(np.float64) - b) / np.maximum(1.0, np.abs(b.astype(np.float64)))
        assert err.max() <= INT8_MAX_ERR and err.mean() <= INT8_MEAN_ERR, (err.max(), err.mean())


def _assert_close_to_ort(ours, theirs, backend: str = "reference"):
    if backend != "reference":
        return _assert_within_int8_bound(ours, theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        assert diff.max() <= MAX_DIFF, diff.max()
        assert np.mean(diff > 1e-5) <= FLIP_FRACTION


def _lstm_model(direction: str, H=16, I=8, O=4, with_states=True, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    inits = {
        "W": rng.standard_normal((D, 4 * H, I)) * 0.3, "R": rng.standard_normal((D, 4 * H, H)) * 0.3,
        "B": rng.standard_normal((D, 8 * H)) * 0.1, "Wd": rng.standard_normal((D * H, O)),
        "shape": np.array([0, D * H]),
    }
    inputs = ["X", "W", "R", "B", "", "h0" if with_states else "", "c0" if with_states else ""]
    nodes = [
        helper.make_node("LSTM", inputs, ["Y", "Yh", "Yc"], hidden_size=H, direction=direction),
        helper.make_node("Transpose", ["Yh"], ["Yh_t"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["Yh_t", "shape"], ["h"]),
        helper.make_node("MatMul", ["h", "Wd"], ["out"]),
    ]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])]
    if with_states:
        graph_inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [D, "N", H]) for n in ("h0", "c0")]
    graph = helper.make_graph(
        nodes, "lstm_head", graph_inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Yc", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantize_dynamic(model: onnx.ModelProto | str, tmp_path, per_channel: bool, weight_type) -> str:
    src = tmp_path / "float.onnx"
    if isinstance(model, str):
        src = model
    else:
        onnx.save(model, src)
    dst = tmp_path / "int8.onnx"
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=weight_type)
    return str(dst)


# ------------------------------------------------ quantize_dynamic models vs onnxruntime


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("weight_type", [QuantType.QInt8, QuantType.QUInt8])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_quantize_dynamic_lstm_matches_onnxruntime(tmp_path, direction, per_channel, weight_type, backend):
    path = _quantize_dynamic(_lstm_model(direction), tmp_path, per_channel, weight_type)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "DynamicQuantizeLSTM" in ops and "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    D = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(1)
    feeds = {"X": rng.standard_normal((7, 3, 8)).astype(np.float32),
             "h0": rng.standard_normal((D, 3, 16)).astype(np.float32) * 0.5,
             "c0": rng.standard_normal((D, 3, 16)).astype(np.float32) * 0.5}
    ours = lstminfer.load(path, backend=backend).run(None, feeds)
    _assert_close_to_ort(ours, _ort(path).run(None, feeds), backend)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_quantize_dynamic_bundled_adding_model_matches_onnxruntime(tmp_path, backend):
    path = _quantize_dynamic(lstminfer.models.path("adding_lstm"), tmp_path, True, QuantType.QInt8)
    x, _ = get_task("adding").sample(8, 60, np.random.default_rng(2))
    zeros = np.zeros((1, 8, 32), np.float32)
    feeds = {"x": x, "h0": zeros, "c0": zeros}
    model = lstminfer.load(path, backend=backend)
    assert "int8" in model.describe()
    _assert_close_to_ort(model.run(None, feeds), _ort(path).run(None, feeds), backend)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_dynamic_quantize_lstm_without_initial_states(tmp_path, backend):
    path = _quantize_dynamic(_lstm_model("forward", with_states=False), tmp_path, True, QuantType.QInt8)
    feeds = {"X": np.random.default_rng(3).standard_normal((5, 2, 8)).astype(np.float32)}
    _assert_close_to_ort(lstminfer.load(path, backend=backend).run(None, feeds), _ort(path).run(None, feeds), backend)


def test_dynamic_quantize_lstm_bad_structure_fails_at_load(tmp_path):
    path = _quantize_dynamic(_lstm_model("forward"), tmp_path, True, QuantType.QInt8)
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    del node.input[11]
    with pytest.raises(InvalidModelError, match="DynamicQuantizeLSTM.*12 inputs"):
        lstminfer.load(model)


# ------------------------------------------------ default-domain quantization ops


def _single_op_model(node, inputs, outputs, opset=17, initializers=()):
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "zeros", "ties"])
def test_dynamic_quantize_linear_is_exact(kind):
    rng = np.random.default_rng(4)
    x = {"normal": rng.standard_normal((3, 50)), "positive": rng.random((3, 50)) + 1,
         "negative": -rng.random((3, 50)), "zeros": np.zeros((3, 50)),
         "ties": np.linspace(-2.55, 2.55, 150).reshape(3, 50)}[kind].astype(np.float32)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    model = _single_op_model(node, [("x", TensorProto.FLOAT)],
                             [("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8)])
    ours, theirs = lstminfer.load(model).run(None, {"x": x}), _ort(model).run(None, {"x": x})
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("qtype", [TensorProto.INT8, TensorProto.UINT8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_and_dequantize_linear_are_exact(qtype, per_axis):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    shape = (6,) if per_axis else ()
    scale = (rng.random(shape) * 0.05 + 0.01).astype(np.float32)
    dtype = np.int8 if qtype == TensorProto.INT8 else np.uint8
    zp = rng.integers(-10, 10, shape).astype(dtype) if dtype == np.int8 else rng.integers(100, 150, shape).astype(dtype)
    inits = [numpy_helper.from_array(np.asarray(scale), "s"), numpy_helper.from_array(np.asarray(zp), "z")]
    q = _single_op_model(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1),
                         [("x", TensorProto.FLOAT)], [("y", qtype)], opset=13, initializers=inits)
    ours, theirs = lstminfer.load(q).run(None, {"x": x})[0], _ort(q).run(None, {"x": x})[0]
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
    dq = _single_op_model(helper.make_node("DequantizeLinear", ["y", "s", "z"], ["x"], axis=1),
                          [("y", qtype)], [("x", TensorProto.FLOAT)], opset=13, initializers=inits)
    ours, theirs = lstminfer.load(dq).run(None, {"y": theirs})[0], _ort(dq).run(None, {"y": theirs})[0]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_blocked_dequantize_linear_matches_onnxruntime():
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 127, (4, 10)).astype(np.int8)
    scale = (rng.random((4, 3)) * 0.1 + 0.01).astype(np.float32)  # blocks of 4 on axis 1: ceil(10/4) = 3
    model = _single_op_model(helper.make_node("DequantizeLinear", ["x", "s"], ["y"], axis=1, block_size=4),
                             [("x", TensorProto.INT8)], [("y", TensorProto.FLOAT)], opset=21,
                             initializers=[numpy_helper.from_array(scale, "s")])
    np.testing.assert_array_equal(lstminfer.load(model).run(None, {"x": x})[0], _ort(model).run(None, {"x": x})[0])


@pytest.mark.parametrize("b_type", [TensorProto.INT8, TensorProto.UINT8])
@pytest.mark.parametrize("per_column", [False, True])
def test_matmul_integer_is_exact(b_type, per_column):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 255, (2, 3, 5)).astype(np.uint8)
    b_dtype = np.int8 if b_type == TensorProto.INT8 else np.uint8
    b = rng.integers(-100 if b_dtype == np.int8 else 0, 100, (5, 4)).astype(b_dtype)
    b_zp = rng.integers(0, 9, (4,) if per_column else ()).astype(b_dtype)
    inits = [numpy_helper.from_array(np.asarray(np.uint8(7)), "a_zp"), numpy_helper.from_array(np.asarray(b_zp), "b_zp")]
    model = _single_op_model(helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"]),
                             [("a", TensorProto.UINT8), ("b", b_type)], [("y", TensorProto.INT32)],
                             initializers=inits)
    ours, theirs = lstminfer.load(model).run(None, {"a": a, "b": b})[0], _ort(model).run(None, {"a": a, "b": b})[0]
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, theirs)


def test_microsoft_integer_matmuls_match_onnxruntime():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((3, 6)).astype(np.float32)
    b = rng.integers(-127, 127, (6, 4)).astype(np.int8)
    inits = [numpy_helper.from_array(np.float32(0.02), "b_s"), numpy_helper.from_array(np.int8(0), "b_zp"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
             numpy_helper.from_array(b, "b")]
    dqmm = helper.make_node("DynamicQuantizeMatMul", ["a", "b", "b_s", "b_zp", "bias"], ["y"], domain="com.microsoft")
    model = _single_op_model(dqmm, [("a", TensorProto.FLOAT)], [("y", TensorProto.FLOAT)], initializers=inits)
    # the reference backend runs the op itself (the others rewrite it to MatMul: test_ort_quantized.py)
    np.testing.assert_allclose(lstminfer.load(model, backend="reference").run(None, {"a": a})[0], _ort(model).run(None, {"a": a})[0],
                               rtol=1e-5, atol=1e-5)
    aq = rng.integers(0, 255, (3, 6)).astype(np.uint8)
    inits += [numpy_helper.from_array(np.float32(0.03), "a_s"), numpy_helper.from_array(np.uint8(120), "a_zp")]
    mm = helper.make_node("MatMulIntegerToFloat", ["a", "b", "a_s", "b_s", "a_zp", "b_zp", "bias"], ["y"],
                          domain="com.microsoft")
    model = _single_op_model(mm, [("a", TensorProto.UINT8)], [("y", TensorProto.FLOAT)], initializers=inits)
    np.testing.assert_allclose(lstminfer.load(model).run(None, {"a": aq})[0], _ort(model).run(None, {"a": aq})[0],
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------ load(quantize=...)


def test_int8_per_row_is_symmetric_and_within_half_a_step():
    w = np.random.default_rng(9).standard_normal((2, 12, 5)).astype(np.float32)
    w[0, 3] = 0  # an all-zero row keeps a valid scale
    q, scale = lq.int8_per_row(w)
    assert q.dtype == np.int8 and scale.shape == (2, 12) and np.all(np.abs(q) <= 127)
    assert np.all(np.abs(lq.dequantize_per_row(q, scale) - w) <= scale[..., None] / 2 + 1e-7)
    peak_rows = np.abs(q).max(axis=-1)
    assert np.all((peak_rows == 127) | (scale == 1))


def test_bf16_rounding_keeps_8_bits_of_mantissa():
    w = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-9, -3.14159, 1e-30, np.inf], np.float32)
    r = lq.round_to_bf16(w)
    assert np.all(r.view(np.uint32) & 0xFFFF == 0)
    assert r[1] == 1.0 and r[2] == 1 + 2**-7  # ties to even, then up
    assert np.all(np.abs(r[:5] - w[:5]) <= np.abs(w[:5]) * 2**-8)


def _with_weights_quantized(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    """The float model with its recurrent W/R replaced by their quantized values: the oracle."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    names = {n.input[i] for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN") for i in (1, 2)}
    for init in model.graph.initializer:
        if init.name in names:
            init.CopyFrom(numpy_helper.from_array(lq.fake_quantize(numpy_helper.to_array(init), mode), init.name))
    return model


@pytest.mark.parametrize("mode", ["int8", "bf16"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_quantized_load_equals_the_dequantized_weight_oracle(mode, backend, monkeypatch):
    # weight-only int8 equals the oracle to float32 rounding; the VNNI scheme's own bound
    # (dynamic activation quantization) is tested in test_int8_kernels.py
    monkeypatch.setenv(cython_backend.INT8_SCHEME_ENV, "weight-only")
    model = onnx.load(lstminfer.models.path("forecast_gru"))
    x = get_task("forecast").sample(3, 40, np.random.default_rng(10))[0]
    oracle = lstminfer.load(_with_weights_quantized(model, mode), backend="reference")
    quantized = lstminfer.load(model, backend=backend, quantize=mode)
    assert mode in quantized.describe()
    feeds = {i: np.zeros((1, 3, a.shape[-1]), np.float32) for i, a in
             ((a.name, a) for a in quantized.get_inputs()) if i != "x"}
    feeds["x"] = x
    for a, b in zip(quantized.run(None, feeds), oracle.run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    float_out = lstminfer.load(model, backend=backend).run(None, feeds)[0]
    assert 0 < np.abs(quantized.run(None, feeds)[0] - float_out).max() < 0.05


# The documented accuracy bounds (README, quantization section) on 2000 fresh sequences per model.
ACCURACY_BOUNDS = {  # precision -> (max |err| of y vs float32, mean |err|)
    "int8": (0.05, 5e-3), "bf16": (0.01, 1e-3),
}
METRIC_SLACK = {"accuracy": 0.005, "rmse": 0.002}  # adding: at most 0.5 points lost; forecast: RMSE + 0.002


def test_accuracy_report_stays_within_the_documented_bounds():
    rows = accuracy_report()
    assert {(r.model, r.precision) for r in rows} == {(m, p) for m in REPORT_MODELS for p in ("float32", "int8", "bf16")}
    float_value = {r.model: r.value for r in rows if r.precision == "float32"}
    assert float_value["adding_lstm"] >= 0.98
    for r in rows:
        if r.precision == "float32":
            assert r.max_abs_error == 0
            continue
        max_bound, mean_bound = ACCURACY_BOUNDS[r.precision]
        assert 0 < r.max_abs_error <= max_bound and r.mean_abs_error <= mean_bound, r
        slack = METRIC_SLACK[r.metric]
        if r.metric == "accuracy":
            assert r.value >= float_value[r.model] - slack, r
        else:
            assert r.value <= float_value[r.model] + slack, r
    table = format_report(rows)
    assert "adding_lstm    int8      accuracy" in table and "max|err|" in table


def test_quantize_option_is_checked():
    with pytest.raises(InvalidArgumentError, match="quantize must be"):
        lstminfer.load(lstminfer.models.path("adding_lstm"), quantize="int4")


# ------------------------------------------------ the int8 Cython kernel

needs_cython = pytest.mark.skipif(not cython_backend.available(), reason="Cython extension not built")


def _dequantized(q, scale):
    return lq.dequantize_per_row(q, scale)


def _int8_case(seed, op, direction, layout, H, I, T, batch, with_lens, linear_before_reset=False, clip=None):
    rng = np.random.default_rng(seed)
    spec = make_spec(op, hidden_size=H, direction=direction, layout=layout, clip=clip,
                     linear_before_reset=linear_before_reset)
    W, R, B, P = make_weights(rng, op, spec.num_directions, H, I)
    lens = rng.integers(0, T + 1, batch).astype(np.int32) if with_lens else None
    inputs = make_inputs(rng, op, spec, W, R, B, P, T, batch, lens=lens)
    return spec, W, R, B, P, inputs


def _check_int8_kernel_against_oracle(spec, W, R, B, P, inputs):
    qW, sW = lq.int8_per_row(W)
    qR, sR = lq.int8_per_row(R)
    kernel = cython_backend.cython_int8_kernel(spec, W, R, B, P, (qW, sW, qR, sR), scheme="weight-only")
    assert kernel is not None and "int8" in kernel.describe
    ours = kernel(*inputs)
    oracle_inputs = list(inputs)
    oracle_inputs[1], oracle_inputs[2] = _dequantized(qW, sW), _dequantized(qR, sR)
    args = oracle_inputs if spec.op == "LSTM" else oracle_inputs[:6]
    expected = REFERENCE[spec.op](*args, **spec.reference_kwargs())[: spec.num_outputs]
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return kernel


_ISAS = ["native", "portable"]


@needs_cython
@pytest.mark.parametrize("isa", _ISAS)
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_int8_kernel_matches_the_dequantized_reference(monkeypatch, isa, op, direction):
    if isa == "portable":
        monkeypatch.setenv(cython_backend.PORTABLE_ENV, "1")
    else:
        monkeypatch.delenv(cython_backend.PORTABLE_ENV, raising=False)
    rng = np.random.default_rng(zlib.crc32(f"{op}{direction}".encode()))
    # H = 1 and 17 (partial panels), batch 1 (one-row kernel) and 5 (a dequantized 4-row group + 1)
    for H, I, T, batch, with_lens in ((1, 3, 4, 1, False), (17, 5, 6, 5, True), (int(rng.integers(2, 40)),
                                      int(rng.integers(1, 40)), int(rng.integers(1, 8)), int(rng.integers(1, 9)),
                                      bool(rng.integers(0, 2)))):
        for layout in (0, 1):
            case = _int8_case(int(rng.integers(2**31)), op, direction, layout, H, I, T, batch, with_lens)
            kernel = _check_int8_kernel_against_oracle(*case)
            assert kernel.isa == (cython_backend.isa() if isa == "native" else "portable")


@needs_cython
@pytest.mark.parametrize("isa", _ISAS)
def test_int8_kernel_gru_linear_before_reset_and_clip(monkeypatch, isa):
    if isa == "portable":
        monkeypatch.setenv(cython_backend.PORTABLE_ENV, "1")
    case = _int8_case(12, "GRU", "bidirectional", 0, 17, 9, 5, 3, True, linear_before_reset=True, clip=0.7)
    _check_int8_kernel_against_oracle(*case)


@needs_cython
def test_int8_kernel_stores_int8_panels_not_float_weights():
    spec, W, R, B, P, inputs = _int8_case(13, "LSTM", "forward", 0, 64, 32, 2, 1, False)
    kernel = _check_int8_kernel_against_oracle(spec, W, R, B, P, inputs)
    assert kernel._qpanels.dtype == np.int8
    weight_floats = W.size + R.size
    assert kernel._qpanels.nbytes < 1.2 * weight_floats  # ~1 byte per weight (+ panel padding)
    assert kernel._packed.buffer.size < weight_floats / 10  # only biases and peepholes stay float


@needs_cython
def test_int8_matmul_equals_float_product_of_dequantized_weights():
    ext = cython_backend._module(cython_backend.isa())
    rng = np.random.default_rng(14)
    for M, K, N in ((1, 7, 5), (5, 33, 70), (8, 1, 1)):
        w = rng.standard_normal((1, N, K)).astype(np.float32)
        q, s = lq.int8_per_row(w)
        panels, offsets, scales, scale_offsets = cython_backend.pack_int8_panels(
            "RNN", q, s, np.zeros((1, N, N), np.int8), np.ones((1, N), np.float32), ext.PANEL_WIDTH)
        A = rng.standard_normal((M, K)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        C = np.zeros((M, N), np.float32)
        ext.matmul_int8(A, panels[offsets[0, 0]:], scales[scale_offsets[0, 0]:], 0, N, C, bias)
        expected = A.astype(np.float64) @ _dequantized(q, s)[0].T.astype(np.float64) + bias
        np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-5)


@needs_cython
def test_int8_kernel_fallbacks_use_the_dequantized_weights():
    """An ndarray subclass X and out-of-range sequence_lens leave the C path: the reference then
    runs on the dequantized weights (same answers) and reports the errors."""
    spec, W, R, B, P, inputs = _int8_case(15, "LSTM", "forward", 0, 8, 4, 3, 2, False)
    kernel = _check_int8_kernel_against_oracle(spec, W, R, B, P, inputs)
    expected = kernel(*inputs)

    class Subclass(np.ndarray):
        pass

    ours = kernel(inputs[0].view(Subclass), *inputs[1:])
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="sequence_lens"):
        kernel(inputs[0], W, R, B, np.array([1, 9], np.int32), *inputs[5:])


@needs_cython
@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_loaded_low_precision_kernels_fall_back_on_their_own_weights(mode, monkeypatch):
    """Through ``load`` (whose kernel.precision is the text info prints), the fallbacks still
    run the reference on the weights the kernel computes with."""
    monkeypatch.setenv(cython_backend.INT8_SCHEME_ENV, "weight-only")
    model = lstminfer.load(lstminfer.models.path("forecast_gru"), backend="cython", quantize=mode)
    kernel = next(s.kernel for s in model._plan.steps if s.node.op_type == "GRU")
    assert isinstance(kernel, cython_backend.CythonKernel) and kernel.precision.startswith(mode)
    W, R, B, _ = kernel._constants
    X = np.random.default_rng(3).standard_normal((5, 2, W.shape[2])).astype(np.float32)

    class Subclass(np.ndarray):
        pass

    for a, b in zip(kernel(X.view(Subclass), W, R, B), kernel(X, W, R, B)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_cython
@pytest.mark.parametrize("isa", _ISAS)
def test_int8_load_runs_the_int8_kernel_and_matches_the_oracle_model(monkeypatch, isa):
    monkeypatch.setenv(cython_backend.INT8_SCHEME_ENV, "weight-only")  # VNNI's bound: test_int8_kernels.py
    if isa == "portable":
        monkeypatch.setenv(cython_backend.PORTABLE_ENV, "1")
    model = _lstm_model("bidirectional", H=17, I=5)
    quantized = lstminfer.load(model, backend="cython", quantize="int8")
    assert "int8" in quantized.describe() and "int8 in the kernel" in quantized.describe()
    oracle = lstminfer.load(_with_weights_quantized(model, "int8"), backend="reference")
    rng = np.random.default_rng(16)
    feeds = {"X": rng.standard_normal((6, 1, 5)).astype(np.float32),
             "h0": rng.standard_normal((2, 1, 17)).astype(np.float32),
             "c0": rng.standard_normal((2, 1, 17)).astype(np.float32)}
    for _ in range(2):  # the second call takes the C fast path with warm buffers
        for a, b in zip(quantized.run(None, feeds), oracle.run(None, feeds)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------ streaming and precision reporting

_BACKENDS = [b for b in ("cython", "numba", "reference") if b in lstminfer.available_backends()]


def _gru_forecast_feeds(batch, T, seed):
    x = get_task("forecast").sample(batch, T, np.random.default_rng(seed))[0]
    return x, np.zeros((1, batch, 32), np.float32)


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_quantized_stream_in_chunks_equals_the_quantized_whole_sequence(backend, mode):
    model = lstminfer.load(lstminfer.models.path("forecast_gru"), backend=backend, quantize=mode)
    x, h0 = _gru_forecast_feeds(1, 40, 17)
    whole = model.run(["y"], {"x": x, "h0": h0})[0]
    stream = model.stream()
    chunks = [stream.step(x[:, a:b]) for a, b in ((0, 1), (1, 5), (5, 12), (12, 40))]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_quantized_stream_pool_equals_streams_one_by_one(backend, mode):
    model = lstminfer.load(lstminfer.models.path("adding_lstm"), backend=backend, quantize=mode)
    xs = [get_task("adding").sample(1, 24, np.random.default_rng(20 + i))[0] for i in range(3)]
    alone = []
    for x in xs:
        stream = model.stream()
        alone.append(np.concatenate([stream.step(x[:, a:a + 6]) for a in range(0, 24, 6)], axis=1))
        whole = model.stream().step(x)  # one chunk: the same numbers as four
        np.testing.assert_allclose(alone[-1], whole, rtol=1e-5, atol=1e-5)
    pool = model.stream_pool(max_streams=4)
    ids = [pool.open() for _ in xs]
    pooled = [[] for _ in xs]
    for a in range(0, 24, 6):
        out = pool.step({i: x[:, a:a + 6] for i, x in zip(ids, xs)})
        for k, i in enumerate(ids):
            pooled[k].append(out[i])
    for k in range(len(xs)):
        np.testing.assert_allclose(np.concatenate(pooled[k], axis=1), alone[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [None, "int8", "bf16"])
def test_describe_and_info_show_each_layers_precision(mode):
    model = lstminfer.load(lstminfer.models.path("forecast_lstm"), quantize=mode)
    info = format_info(model)
    expected = {None: "precision: float32", "int8": "precision: int8 (", "bf16": "precision: bf16 ("}[mode]
    assert expected in info
    line = next(l for l in model.describe().splitlines() if ": LSTM ->" in l)
    assert {None: "float32 weights", "int8": "int8 weights", "bf16": "bf16 weights"}[mode] in line
    if mode == "int8" and model.backend == "cython":
        assert "precision: int8 (int8 kernel" in info


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_a_registered_backend_is_asked_for_the_precision_and_may_decline_it(mode, monkeypatch):
    """Precision is an argument of the builder: a backend with a bf16 kernel runs bf16 weights
    itself; for int8 it declines and its float32 kernel runs the weights expanded at load."""
    from lstminfer import backends
    from lstminfer.kernels import shell

    asked = []

    def build(spec, weights, precision, ctx):
        asked.append(precision.name)
        if precision.name not in ("float32", "bf16"):
            return None, f"no {precision.name} kernel"
        reference = shell.reference_kernel(spec, ctx.label)
        kernel = lambda X, W, R, *rest: reference(X, lq.round_to_bf16(W), lq.round_to_bf16(R), *rest)  # noqa: E731
        kernel.describe = f"toy {precision.name}"
        return kernel, ""

    monkeypatch.setattr(backends, "_MODULES", dict(backends._MODULES))
    backends.register_backend("toy", types.SimpleNamespace(unavailable_reason=lambda: None, build=build))
    model = lstminfer.load(_lstm_model("forward"), backend="toy", quantize=mode)
    line = next(l for l in model.describe().splitlines() if ": LSTM ->" in l)
    if mode == "bf16":
        assert asked == ["bf16"] and "toy bf16; bf16 weights (weight-only: bf16 in the kernel" in line
    else:
        assert asked == ["int8", "float32"] and "toy float32; int8 weights" in line and "expanded" in line


def test_info_shows_onnxruntime_quantized_lstm_as_int8(tmp_path):
    path = _quantize_dynamic(_lstm_model("forward"), tmp_path, True, QuantType.QInt8)
    info = format_info(lstminfer.load(path, backend="reference"))
    assert "DynamicQuantizeLSTM forward input=8 hidden=16" in info
    assert "precision: int8 (dynamic: uint8 activations" in info
    if cython_backend.available():
        assert "precision: int8 (int8 kernel" in format_info(lstminfer.load(path, backend="cython"))
