"""lstminfer.quantize(src, dst): the quantized model saved as standard ONNX, run by onnxruntime, loaded back.

Bounds (README, quantization section):
* onnxruntime on dst vs ``lstminfer.load(src, quantize=mode)``: <= 1e-5 abs (same
  weights; only float32 summation order differs).
* ``lstminfer.load(dst)`` vs ``lstminfer.load(src, quantize="int8")``: <= 1e-6 (the
  same int8 values and scales on the same kernel: equal in practice).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstminfer
import lstminfer.models
from lstminfer.errors import InvalidArgumentError, UnsupportedModelError
from lstminfer.kernels import cython_backend
from lstminfer.quantize_export import DENSE_MIN_WEIGHTS, quantize
from lstminfer.reference import GATES

ORT_TOL = 1e-5


@pytest.fixture(autouse=True)
def _weight_only_int8(monkeypatch):
    """These tests check the file format against onnxruntime's float arithmetic on the
    dequantized weights: the weight-only int8 kernel matches that to float32 rounding
    (the VNNI scheme's own error bound is tested in test_int8_kernels.py)."""
    monkeypatch.setenv(cython_backend.INT8_SCHEME_ENV, "weight-only")

RELOAD_TOL = 1e-6

# bf16 files hold bfloat16 initializers; lstminfer's importer reads them once it widens
# bfloat16 to float32 (onnx_import._tensor), which the lead adds with this change.


def _ort_run(path, feeds, fuse=True):
    """``fuse=False``: no ORT_ENABLE_ALL fusions, which turn DequantizeLinear -> MatMul into a
    dynamically quantized int8 MatMul (activations rounded to uint8: not the file's float semantics)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _recurrent_model(op, direction="forward", H=24, I=10, dense_out=0, seed=0, opset=17):
    """op with W, R, B (LSTM: and P) initializers, h0 fed; optionally a MatMul head [D*H, dense_out]."""
    rng = np.random.default_rng(seed)
    D, G = (2 if direction == "bidirectional" else 1), GATES[op]
    inits = {"W": rng.standard_normal((D, G * H, I)) * 0.3, "R": rng.standard_normal((D, G * H, H)) * 0.3,
             "B": rng.standard_normal((D, 2 * G * H)) * 0.1}
    inputs = ["X", "W", "R", "B", "", "h0"]
    if op == "LSTM":
        inits["P"] = rng.standard_normal((D, 3 * H)) * 0.1
        inputs += ["", "P"]
    outputs = ["Y", "Y_h"]
    nodes = [helper.make_node(op, inputs, outputs, hidden_size=H, direction=direction, name="rec")]
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    if dense_out:
        inits["Wd"] = rng.standard_normal((D * H, dense_out)) * 0.2
        inits["shape"] = np.array([0, D * H])
        nodes += [helper.make_node("Transpose", ["Y_h"], ["Yh_t"], perm=[1, 0, 2]),
                  helper.make_node("Reshape", ["Yh_t", "shape"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "Wd"], ["head"], name="head")]
        graph_outputs.append(helper.make_tensor_value_info("head", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "rec_model",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [D, "N", H])],
        graph_outputs,
        [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(model: onnx.ModelProto, T=9, N=3, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value or {"T": T, "N": N}[d.dim_param] for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = (rng.standard_normal(dims) * 0.7).astype(np.float32)
    return feeds


def _assert_close(ours, theirs, tol):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.abs(a.astype(np.float64) - b).max() <= tol


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_int8_file_runs_in_onnxruntime_and_loads_back_on_the_int8_kernel(tmp_path, op, direction):
    model = _recurrent_model(op, direction, seed=len(op) + len(direction))
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, src)
    summary = quantize(src, dst, "int8")
    assert [name for name, _, _ in summary.quantized] == ["W", "R"]
    saved = onnx.load(dst)
    assert {t.name for t in saved.graph.initializer} >= {"W_int8", "W_scale", "R_int8", "R_scale"}
    assert numpy_helper.to_array(next(t for t in saved.graph.initializer if t.name == "R_int8")).dtype == np.int8
    assert ("Reshape" in [n.op_type for n in saved.graph.node]) == (direction == "bidirectional")
    feeds = _feeds(model)
    at_load = lstminfer.load(src, quantize="int8").run(None, feeds)
    _assert_close(_ort_run(dst, feeds), at_load, ORT_TOL)
    reloaded = lstminfer.load(dst)
    _assert_close(reloaded.run(None, feeds), at_load, RELOAD_TOL)
    step = next(s for s in reloaded._plan.steps if s.node.op_type == op)
    if cython_backend.available():
        assert step.kernel.precision.startswith("int8 (int8 kernel") and "stored in the file" in step.describe
    else:
        assert step.kernel.precision.startswith("int8")
    # the reference backend runs the dequantized weights: the same numbers
    _assert_close(lstminfer.load(dst, backend="reference").run(None, feeds),
                  lstminfer.load(src, backend="reference", quantize="int8").run(None, feeds), RELOAD_TOL)


@pytest.mark.parametrize("name", ["adding_lstm", "forecast_lstm", "forecast_gru"])
@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_bundled_models_quantized_files_match_load_time_quantization_in_onnxruntime(tmp_path, name, mode):
    src = lstminfer.models.path(name)
    dst = tmp_path / f"{name}_{mode}.onnx"
    quantize(src, dst, mode)
    model = lstminfer.load(src, quantize=mode)
    x = np.random.default_rng(3).random((4, 50, model.get_inputs()[0].shape[-1])).astype(np.float32)
    feeds = {a.name: np.zeros((1, 4, a.shape[-1]), np.float32) for a in model.get_inputs()[1:]}
    feeds[model.input_names[0]] = x
    _assert_close(_ort_run(dst, feeds), model.run(None, feeds), ORT_TOL)


def test_int8_file_stores_about_a_quarter_of_the_weight_bytes(tmp_path):
    model = _recurrent_model("LSTM", H=128, I=64)
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, src)
    summary = quantize(src, dst, "int8")
    assert summary.float_bytes == 4 * (4 * 128 * 64 + 4 * 128 * 128)
    assert summary.stored_bytes <= 0.27 * summary.float_bytes  # int8 values + one float32 scale per row
    assert os.path.getsize(dst) <= 0.3 * os.path.getsize(src)
    assert "int8: W [1, 512, 64]" in summary.text() and "KiB float32 ->" in summary.text()


def test_dense_weights_are_quantized_per_output_column_when_large_enough(tmp_path):
    model = _recurrent_model("GRU", H=64, dense_out=DENSE_MIN_WEIGHTS // 64)  # Wd: [64, 64], 4096 weights
    src, dst, kept = tmp_path / "float.onnx", tmp_path / "int8.onnx", tmp_path / "kept.onnx"
    onnx.save(model, src)
    summary = quantize(src, dst, "int8")
    assert [name for name, _, _ in summary.quantized] == ["W", "R", "Wd"]
    dequantize = next(n for n in onnx.load(dst).graph.node if n.output[0] == "Wd")
    assert dequantize.op_type == "DequantizeLinear" and helper.get_attribute_value(dequantize.attribute[0]) == 1
    feeds = _feeds(model)
    theirs = _ort_run(dst, feeds, fuse=False)
    ours = lstminfer.load(dst).run(None, feeds)
    _assert_close(ours, theirs, ORT_TOL)
    float_head = lstminfer.load(src).run(None, feeds)[2]
    assert 0 < np.abs(theirs[2] - float_head).max() < 0.05  # rounding of W, R and Wd
    fused = _ort_run(dst, feeds)  # onnxruntime's int8 MatMul: dynamic activation rounding on top
    assert np.abs(fused[2] - ours[2]).max() < 0.02
    kept_summary = quantize(src, kept, "int8", dense=False)
    assert [name for name, _, _ in kept_summary.quantized] == ["W", "R"]
    assert any("dense=False" in why for _, why in kept_summary.left_float)
    _assert_close(_ort_run(kept, feeds), lstminfer.load(kept).run(None, feeds), ORT_TOL)
    # load-time quantization follows the same rule: the dense head too
    _assert_close(lstminfer.load(src, quantize="int8").run(None, feeds), theirs, ORT_TOL)


def test_gemm_transposed_and_gather_tables_are_quantized_per_row(tmp_path):
    rng = np.random.default_rng(5)
    table = (rng.standard_normal((128, 40)) * 0.5).astype(np.float32)
    gemm_b = (rng.standard_normal((128, 40)) * 0.2).astype(np.float32)  # transB=1: [N, K]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
             helper.make_node("Gemm", ["emb", "B"], ["out"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(gemm_b, "B")])
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    summary = quantize(src, dst, "int8")
    assert sorted(name for name, _, _ in summary.quantized) == ["B", "table"]
    axes = {n.output[0]: helper.get_attribute_value(n.attribute[0]) for n in onnx.load(dst).graph.node
            if n.op_type == "DequantizeLinear"}
    assert axes == {"table": 0, "B": 0}
    feeds = {"ids": np.array([0, 5, 127], np.int64)}
    theirs = _ort_run(dst, feeds, fuse=False)
    _assert_close(lstminfer.load(dst).run(None, feeds), theirs, ORT_TOL)
    assert np.abs(theirs[0] - lstminfer.load(src).run(None, feeds)[0]).max() < 0.05
    loaded = lstminfer.load(src, quantize="int8")  # the same rule at load time
    assert sorted(loaded.quantized_dense) == ["B", "table"]
    _assert_close(loaded.run(None, feeds), theirs, ORT_TOL)
    bf16 = tmp_path / "bf16.onnx"
    quantize(src, bf16, "bf16")
    _assert_close(lstminfer.load(src, quantize="bf16").run(None, feeds), _ort_run(bf16, feeds), ORT_TOL)


def test_onnxruntime_runs_the_bf16_file(tmp_path):
    model = _recurrent_model("LSTM", "bidirectional")
    src, dst = tmp_path / "float.onnx", tmp_path / "bf16.onnx"
    onnx.save(model, src)
    summary = quantize(src, dst, "bf16")
    stored = {t.name: t.data_type for t in onnx.load(dst).graph.initializer}
    assert stored["W_bf16"] == TensorProto.BFLOAT16 and stored["R_bf16"] == TensorProto.BFLOAT16
    assert summary.stored_bytes == summary.float_bytes // 2
    feeds = _feeds(model)
    _assert_close(_ort_run(dst, feeds), lstminfer.load(src, quantize="bf16").run(None, feeds), ORT_TOL)


def test_bf16_file_loads_back(tmp_path):
    model = _recurrent_model("GRU")
    src, dst = tmp_path / "float.onnx", tmp_path / "bf16.onnx"
    onnx.save(model, src)
    quantize(src, dst, "bf16")
    feeds = _feeds(model)
    reloaded = lstminfer.load(dst)
    _assert_close(reloaded.run(None, feeds), lstminfer.load(src, quantize="bf16").run(None, feeds), RELOAD_TOL)
    assert "bf16" in next(s for s in reloaded._plan.steps if s.node.op_type == "GRU").kernel.precision


def test_refusals_are_clear(tmp_path):
    src = tmp_path / "float.onnx"
    onnx.save(_recurrent_model("RNN"), src)
    with pytest.raises(InvalidArgumentError, match="is the source file"):
        quantize(src, src)
    with pytest.raises(InvalidArgumentError, match="mode must be one of int8, bf16, got 'int4'"):
        quantize(src, tmp_path / "out.onnx", "int4")
    old = tmp_path / "opset11.onnx"
    onnx.save(_recurrent_model("RNN", opset=11), old)
    with pytest.raises(UnsupportedModelError, match="opset >= 13.*opset 11"):
        quantize(old, tmp_path / "out.onnx")
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), plain)
    with pytest.raises(UnsupportedModelError, match="no quantizable weight"):
        quantize(plain, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_weights_that_are_not_constants_stay_float_and_are_listed(tmp_path):
    model = _recurrent_model("LSTM")
    w = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.initializer.remove(w)
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.dims)))
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, src)
    summary = quantize(src, dst, "int8")
    assert [name for name, _, _ in summary.quantized] == ["R"]
    assert summary.left_float == [("node 'rec' (LSTM) input W 'W'",
                                   "not a constant initializer (computed at run time or a graph input)")]
    assert "left float32: node 'rec' (LSTM) input W 'W'" in summary.text()
    feeds = _feeds(model)
    feeds["W"] = numpy_helper.to_array(w)
    _assert_close(lstminfer.load(dst).run(None, feeds), _ort_run(dst, feeds), ORT_TOL)


def test_dequantize_linear_with_a_nonzero_zero_point_is_not_taken_for_int8_weights(tmp_path):
    model = _recurrent_model("GRU", H=8, I=4)
    dst = tmp_path / "int8.onnx"
    quantize(model, dst, "int8")
    saved = onnx.load(dst)
    node = next(n for n in saved.graph.node if n.output[0] == "R")
    saved.graph.initializer.append(numpy_helper.from_array(np.full(24, 3, np.int8), "R_zp"))
    node.input.append("R_zp")
    step = next(s for s in lstminfer.load(saved)._plan.steps if s.node.op_type == "GRU")
    assert step.kernel.precision == "float32"
    onnx.save(saved, dst)
    feeds = _feeds(model)
    _assert_close(lstminfer.load(dst).run(None, feeds), _ort_run(dst, feeds), ORT_TOL)


def test_bf16_exact_float_weights_report_bf16_and_equal_load_time_bf16(tmp_path):
    """What a bf16 file becomes once imported (bfloat16 widened exactly to float32, then Cast)."""
    from lstminfer.quantization import round_to_bf16

    model = _recurrent_model("LSTM", "bidirectional")
    for init in model.graph.initializer:
        if init.name in ("W", "R"):
            init.CopyFrom(numpy_helper.from_array(round_to_bf16(numpy_helper.to_array(init)), init.name))
    feeds = _feeds(model)
    loaded = lstminfer.load(model)
    step = next(s for s in loaded._plan.steps if s.node.op_type == "LSTM")
    assert step.kernel.precision.startswith("bf16") and "bf16 weights" in step.describe
    _assert_close(loaded.run(None, feeds), lstminfer.load(model, quantize="bf16").run(None, feeds), RELOAD_TOL)


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba", "reference") if b in lstminfer.available_backends()])
def test_a_loaded_int8_file_streams_on_its_int8_weights(tmp_path, backend):
    dst = tmp_path / "int8.onnx"
    quantize(lstminfer.models.path("forecast_lstm"), dst, "int8")
    model = lstminfer.load(dst, backend=backend)
    x = np.random.default_rng(7).standard_normal((1, 30, 1)).astype(np.float32)
    zeros = np.zeros((1, 1, 32), np.float32)
    whole = model.run(["y"], {"x": x, "h0": zeros, "c0": zeros})[0]
    stream = model.stream()
    chunks = [stream.step(x[:, a:b]) for a, b in ((0, 1), (1, 8), (8, 30))]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=1e-5, atol=1e-5)
    float_whole = lstminfer.load(lstminfer.models.path("forecast_lstm"), backend=backend).run(
        ["y"], {"x": x, "h0": zeros, "c0": zeros})[0]
    assert np.abs(whole - float_whole).max() > 1e-5  # the int8 weights, not the float ones


def test_float_weights_that_happen_to_be_int8_exact_keep_float_results():
    """Values in {-1, 0, 1} are exactly q * scale per row: such a float model may run on the
    int8 kernel, but only weight-only (float results), never with int8 activations."""
    rng = np.random.default_rng(8)
    H, I = 32, 8
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H)]
    inits = [numpy_helper.from_array(rng.integers(-1, 2, (1, 4 * H, n)).astype(np.float32), name)
             for name, n in (("W", I), ("R", H))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"X": (rng.standard_normal((5, 2, I)) * 0.3).astype(np.float32)}
    fast = lstminfer.load(model, backend="cython")
    assert "vnni" not in fast.describe()
    _assert_close(fast.run(None, x), lstminfer.load(model, backend="reference").run(None, x), 1e-5)
