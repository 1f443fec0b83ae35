"""The plan (node by node) and a signature's compiled program give the same float32 bits: a
signature's first calls may run the plan before its program exists, so a call's result must not
depend on which of the two ran it. The dense heads matter most: both run li_dense_rows."""
from __future__ import annotations

import numpy as np
import pytest

import lstminfer
import lstminfer.models

SHAPES = [(1, 1), (3, 7), (8, 20), (17, 5)]  # (batch, time)


def _plan_outputs(model, feeds: dict) -> list[np.ndarray]:
    checked = model._feeds.checked(feeds)
    return [np.array(v) for v in model._plan.execute(checked, model._wanted(None))]


def _program_outputs(model, feeds: dict) -> list[np.ndarray]:
    text = model._programs.describe(model._feeds.checked(feeds))  # compiles this signature's program
    assert "not compiled" not in text, text
    before = model._programs._uses
    out = model.run(None, feeds)
    fast = model._programs.fast
    assert model._programs._uses > before or (fast is not None and fast.hits > 0), "the program did not run"
    return out


def _assert_same_bits(model, make_feeds) -> None:
    for batch, time in SHAPES:
        feeds = make_feeds(batch, time)
        plan, program = _plan_outputs(model, feeds), _program_outputs(model, feeds)
        for p, q in zip(plan, program):
            assert p.dtype == q.dtype and p.shape == q.shape
            assert np.array_equal(p, q), f"batch {batch}, time {time}: max diff {np.max(np.abs(p - q))}"


def _bundled_feeds(model, rng):
    def make(batch: int, time: int) -> dict:
        feeds = {}
        for inp in model.get_inputs():
            dims = [d if isinstance(d, int) else None for d in inp.shape]
            free = iter([batch, time])
            shape = [d if d is not None else next(free, 1) for d in dims]
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
        return feeds

    return make


@pytest.mark.parametrize("name", ["adding_lstm", "forecast_lstm", "forecast_gru"])
def test_bundled_models_plan_and_program_agree_bit_for_bit(name):
    model = lstminfer.load(lstminfer.models.path(name))
    _assert_same_bits(model, _bundled_feeds(model, np.random.default_rng(0)))


@pytest.mark.parametrize("name", ["adding_lstm", "forecast_gru"])
def test_numba_kernels_write_into_the_program_memory_with_the_plan_bits(name):
    """On the Numba backend the recurrent node is a call in the program that writes its outputs
    straight into the program's memory (``out=``): the same bits as the plan's fresh arrays."""
    pytest.importorskip("numba")
    model = lstminfer.load(lstminfer.models.path(name), backend="numba")
    kernels = [s.kernel for s, _ in model._plan.schedule(model._wanted(None)) if s.node.op_type in ("LSTM", "GRU")]
    assert kernels and all(getattr(k, "writes_into", False) for k in kernels)
    _assert_same_bits(model, _bundled_feeds(model, np.random.default_rng(1)))


def _glue_heads_model() -> bytes:
    """x [B, 12] -> Tanh -> Sigmoid -> Exp -> Gemm(alpha, beta, transB) -> LogSoftmax, and
    -> MatMul + Add -> Softmax: the elementwise, dense and softmax instructions."""
    onnx = pytest.importorskip("onnx")
    oh, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(5)
    inits = [nh.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in [("B", (20, 12)), ("C", (20,)), ("W", (12, 3)), ("b", (3,))]]
    nodes = [
        oh.make_node("Tanh", ["x"], ["t"]),
        oh.make_node("Sigmoid", ["t"], ["s"]),
        oh.make_node("Exp", ["s"], ["e"]),
        oh.make_node("Gemm", ["e", "B", "C"], ["g"], alpha=0.37, beta=1.9, transB=1),
        oh.make_node("LogSoftmax", ["g"], ["logp"], axis=1),
        oh.make_node("MatMul", ["t", "W"], ["mm"]),
        oh.make_node("Add", ["mm", "b"], ["head"]),
        oh.make_node("Softmax", ["head"], ["probs"], axis=-1),
    ]
    graph = oh.make_graph(nodes, "heads", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 12])],
                          [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("logp", "probs")],
                          inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def test_elementwise_dense_and_softmax_plan_and_program_agree_bit_for_bit():
    model = lstminfer.load(_glue_heads_model())
    rng = np.random.default_rng(6)
    text = model._programs.describe(model._feeds.checked({"x": np.zeros((2, 12), np.float32)}))
    assert "C dense (Gemm)" in text and "C softmax" in text and "C elementwise" in text, text
    _assert_same_bits(model, lambda batch, time: {"x": 3 * rng.standard_normal((batch * time, 12)).astype(np.float32)})


torch_models = pytest.importorskip("torch_models", reason="torch is not installed")


@pytest.mark.parametrize("spec", [
    torch_models.RecurrentSpec("LSTM", num_layers=2, batch_first=True, state_io=True),
    torch_models.LastStepSpec("LSTM", num_layers=2, hidden_size=24, classes=20),  # N >= 16: the W layout
    torch_models.LastStepSpec("LSTM", num_layers=2),  # N < 16: the W^T (dot product) layout
    torch_models.ClassifierSpec(),  # Gather, LSTM, Gemm, Softmax
], ids=lambda spec: spec.name)
def test_pytorch_exports_plan_and_program_agree_bit_for_bit(spec):
    model = lstminfer.load(torch_models.export(spec, "torchscript", 17))
    rng = np.random.default_rng(1)
    _assert_same_bits(model, lambda batch, time: spec.make_inputs(rng, batch, time))
