"""PyTorch exports quantized by onnxruntime's quantize_dynamic: the int8 kernel, the rewritten heads,
streaming, against onnxruntime on the same file.

lstminfer runs DynamicQuantizeLSTM on its int8 kernel (activations quantized per row and step)
and the quantized MatMul heads as MatMul on the dequantized weight; onnxruntime quantizes
activations per tensor. The bound (README, Quantization): |ours - onnxruntime| / max(1, |y|)
at most INT8_MAX_ERR, its mean at most INT8_MEAN_ERR (tests/test_quantized.py), the int8
kernel's own bound.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import lstminfer
from lstminfer.kernels import cython_backend

from test_quantized import _assert_within_int8_bound

torch = pytest.importorskip("torch")

needs_cython = pytest.mark.skipif(not cython_backend.available(), reason="the Cython extension is not built")
I, H, O, T = 8, 16, 4, 7


def _ort(path: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class _Recurrent(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.rnn = getattr(torch.nn, kind)(I, H, batch_first=True)
        self.fc = torch.nn.Linear(H, O)

    def forward(self, x, h0, c0=None):
        if self.kind == "LSTM":
            y, (h, c) = self.rnn(x, (h0, c0))
            return self.fc(y), h, c
        y, h = self.rnn(x, h0)
        return self.fc(y), h


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """_export, once per (kind, exporter) in this module (a dynamo export takes seconds)."""
    made: dict[tuple[str, str], str] = {}

    def get(kind: str, exporter: str) -> str:
        if (kind, exporter) not in made:
            made[kind, exporter] = _export(kind, exporter, tmp_path_factory.mktemp("exports"))
        return made[kind, exporter]

    return get


def _export(kind: str, exporter: str, directory) -> str:
    """A seeded nn.LSTM/GRU + Linear, x [B, T, I] (+ h0[, c0]) -> (y, h_n[, c_n]), as an ONNX file."""
    torch.manual_seed(0)
    model = _Recurrent(kind).eval()
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    example = (torch.randn(1, T, I),) + tuple(torch.zeros(1, 1, H) for _ in states)
    outputs = ["y", "hn", "cn"][: 1 + len(states)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":  # torch.export fixes T (see tests/torch_models.py)
            torch.onnx.export(model, example, buffer, input_names=["x"] + states, output_names=outputs, dynamo=True)
        else:
            axes = {"x": {0: "b", 1: "t"}, "y": {0: "b", 1: "t"}, **{n: {1: "b"} for n in states + outputs[1:]}}
            torch.onnx.export(model, example, buffer, input_names=["x"] + states, output_names=outputs,
                              dynamo=False, opset_version=17, dynamic_axes=axes)
    path = directory / f"{kind}_{exporter}.onnx"
    path.write_bytes(buffer.getvalue())
    return str(path)


def _quantized(src: str, directory, **options) -> str:
    dst = directory / "quantized.onnx"
    quantize_dynamic(src, str(dst), **options)
    return str(dst)


def _feeds(kind: str, batch: int = 1, steps: int = T, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((batch, steps, I)).astype(np.float32),
             "h0": (rng.standard_normal((1, batch, H)) * 0.5).astype(np.float32)}
    if kind == "LSTM":
        feeds["c0"] = (rng.standard_normal((1, batch, H)) * 0.5).astype(np.float32)
    return feeds


def _runs_on(model, op: str) -> str:
    """What describe() says runs the node of ``op``."""
    return next(line for line in model.describe().splitlines() if f": {op} ->" in line).split(" via ", 1)[1]


@needs_cython
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_torchscript_lstm_runs_on_the_int8_kernel_within_the_bound(tmp_path, exports, per_channel, reduce_range):
    path = _quantized(exports("LSTM", "torchscript"), tmp_path, per_channel=per_channel,
                      reduce_range=reduce_range)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeLinear"} <= ops
    model = lstminfer.load(path, backend="cython")
    runs = _runs_on(model, "DynamicQuantizeLSTM")
    assert runs.startswith("cython lstm_seq") and "int8" in runs and "stored in the file" in runs
    assert "per channel" in runs if per_channel else "per tensor" in runs
    assert model.rewritten_products and "MatMulInteger" in model.rewritten_products[0]
    program = model.describe(_feeds("LSTM"))
    assert "C DynamicQuantizeLSTM kernel on the program's memory" in program and "C dense (MatMul" in program
    for batch, steps in ((1, T), (3, 11), (1, 1)):
        feeds = _feeds("LSTM", batch, steps)
        _assert_within_int8_bound(model.run(None, feeds), _ort(path).run(None, feeds))


@needs_cython
def test_uint8_weights_are_re_rounded_to_int8_within_the_bound(tmp_path, exports):
    path = _quantized(exports("LSTM", "torchscript"), tmp_path, weight_type=QuantType.QUInt8)
    model = lstminfer.load(path, backend="cython")
    assert "int8" in _runs_on(model, "DynamicQuantizeLSTM")
    feeds = _feeds("LSTM", 2)
    _assert_within_int8_bound(model.run(None, feeds), _ort(path).run(None, feeds))


def test_reference_backend_emulates_onnxruntime(tmp_path, exports):
    # the oracle: onnxruntime's own per-tensor uint8 activations (one rounding step apart at most)
    path = _quantized(exports("LSTM", "torchscript"), tmp_path, per_channel=True)
    model = lstminfer.load(path, backend="reference")
    assert "emulated" in _runs_on(model, "DynamicQuantizeLSTM") and not model.rewritten_products
    feeds = _feeds("LSTM", 3)
    for a, b in zip(model.run(None, feeds), _ort(path).run(None, feeds)):
        assert np.abs(a - b).max() <= 5e-3 and np.mean(np.abs(a - b) > 1e-5) <= 0.01


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamo_lstm_export_quantized_matches_onnxruntime(tmp_path, exports, per_channel):
    # the dynamo export computes W/R with Unsqueeze: quantize_dynamic leaves that LSTM float
    # and quantizes the head
    path = _quantized(exports("LSTM", "dynamo"), tmp_path, per_channel=per_channel)
    model = lstminfer.load(path)
    assert model.rewritten_products
    feeds = _feeds("LSTM")
    _assert_within_int8_bound(model.run(None, feeds), _ort(path).run(None, feeds))


def test_gru_stays_float_and_runs(tmp_path, exports):
    path = _quantized(exports("GRU", "torchscript"), tmp_path)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "GRU" in ops and "MatMulInteger" in ops  # quantize_dynamic has no quantized GRU
    model = lstminfer.load(path)
    assert _runs_on(model, "GRU").startswith(("cython", "numba"))
    feeds = _feeds("GRU", 2)
    _assert_within_int8_bound(model.run(None, feeds), _ort(path).run(None, feeds))


@pytest.mark.parametrize("backend", [pytest.param("cython", marks=needs_cython), "numba"])
def test_quantized_file_streams_like_the_whole_sequence(tmp_path, exports, backend):
    path = _quantized(exports("LSTM", "torchscript"), tmp_path, per_channel=True)
    model = lstminfer.load(path, backend=backend)
    feeds = _feeds("LSTM", 1, 20)
    feeds["h0"][:] = 0
    feeds["c0"][:] = 0
    whole = model.run(None, feeds)[0]
    stream = model.stream()
    x = feeds["x"]
    chunks = [stream.step(x[:, a:b]) for a, b in ((0, 1), (1, 7), (7, 8), (8, 20))]
    tolerance = 0 if backend == "cython" else 1e-6  # Numba's float kernel sums in a T-dependent order
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=0, atol=tolerance)
    pool = model.stream_pool(max_streams=4)
    a, b = pool.open(), pool.open()
    first = pool.step({a: x[:, :3], b: x[:, :5]})
    second = pool.step({a: x[:, 3:], b: x[:, 5:]})
    for s in (a, b):
        np.testing.assert_allclose(np.concatenate([first[s], second[s]], axis=1), whole, rtol=0, atol=1e-6)


# ------------------------------------------------ the com.microsoft products with a constant weight


def _product_model(node, inputs, initializers):
    graph = helper.make_graph(
        node if isinstance(node, list) else [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("op", ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"])
@pytest.mark.parametrize("per_column", [False, True])
def test_microsoft_products_become_matmul_within_the_bound(tmp_path, op, per_column):
    rng = np.random.default_rng(2)
    K, N = 32, 6
    b = rng.integers(-127, 128, (K, N)).astype(np.int8)
    scale = (rng.random(N if per_column else ()) * 0.01 + 0.005).astype(np.float32)
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.asarray(scale), "b_s"),
             numpy_helper.from_array(np.zeros(N if per_column else (), np.int8), "b_zp"),
             numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias")]
    if op == "DynamicQuantizeMatMul":
        nodes = helper.make_node(op, ["x", "b", "b_s", "b_zp", "bias"], ["y"], domain="com.microsoft")
    else:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node(op, ["xq", "b", "xs", "b_s", "xz", "b_zp", "bias"], ["y"], domain="com.microsoft")]
    path = tmp_path / "product.onnx"
    onnx.save(_product_model(nodes, ["x"], inits), path)
    model = lstminfer.load(str(path))
    assert model.rewritten_products and op in model.rewritten_products[0]
    assert "C dense (MatMul + " in model.describe({"x": np.zeros((2, K), np.float32)})
    x = {"x": rng.standard_normal((5, K)).astype(np.float32)}
    _assert_within_int8_bound(model.run(None, x), _ort(str(path)).run(None, x))
    exact = lstminfer.load(str(path), backend="reference").run(None, x)[0]  # the emulation, unrewritten
    np.testing.assert_allclose(exact, _ort(str(path)).run(None, x)[0], rtol=1e-5, atol=1e-5)


def test_quantized_lstm_without_initial_states_streams(tmp_path):
    from test_quantized import _lstm_model, _quantize_dynamic

    path = _quantize_dynamic(_lstm_model("forward", with_states=False), tmp_path, True, QuantType.QInt8)
    model = lstminfer.load(path)
    x = np.random.default_rng(4).standard_normal((9, 1, 8)).astype(np.float32)
    whole_y, whole_out = model.run(["Y", "out"], {"X": x})  # "out" is a head on Y_h: a last-step head
    stream = model.stream()
    assert all(v.dtype == np.float32 for v in stream.state.values())
    parts = [stream.step(x[a:b]) for a, b in ((0, 4), (4, 5), (5, 9))]
    np.testing.assert_allclose(np.concatenate([p["Y"] for p in parts]), whole_y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(parts[-1]["out"], whole_out, rtol=0, atol=1e-6)


def test_int8_rows_keep_stored_values_and_re_round_the_rest():
    from lstminfer.ops.quantized import int8_rows

    rng = np.random.default_rng(5)
    q = rng.integers(-127, 128, (2, 3, 8)).astype(np.int8)  # [D, K, 4H]
    scale = (rng.random((2, 8)) * 0.01 + 0.01).astype(np.float32)
    rows, row_scale, how = int8_rows(q, scale, np.zeros((2, 8), np.int8))
    assert how == "stored values" and rows.shape == (2, 8, 3)
    np.testing.assert_array_equal(rows, q.transpose(0, 2, 1))
    np.testing.assert_array_equal(row_scale, scale)
    u = rng.integers(0, 256, (2, 3, 8)).astype(np.uint8)  # zero point 10: values up to 245, beyond int8
    zp = np.full(2, 10, np.uint8)
    rows, row_scale, how = int8_rows(u, scale[:, 0], zp)
    assert how == "re-rounded per row" and rows.dtype == np.int8
    expected = (u.astype(np.float32) - 10) * scale[:, 0, None, None]
    got = rows.astype(np.float32) * row_scale[..., None]
    assert np.all(np.abs(got - expected.transpose(0, 2, 1)) <= row_scale[..., None] / 2 + 1e-6)
