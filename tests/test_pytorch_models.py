"""Conformance with models exported by PyTorch (see ``torch_models.py``).

Each model is exported by the TorchScript exporter (opsets 14, 17) and the
dynamo exporter (opset 18), then run by onnxruntime and lstminfer on fresh
random feeds of several shapes.  lstminfer must match onnxruntime's output
names, order, dtypes and shapes, and its values within 1e-5; it must also
match the PyTorch module itself within the same 1e-5.
"""
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch export tests need torch (CI installs torch==2.13.0)")
ort = pytest.importorskip("onnxruntime", reason="PyTorch export tests compare against onnxruntime")

import lstminfer  # noqa: E402
import torch_models as zoo  # noqa: E402
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument  # noqa: E402

ATOL = 1e-5  # float32, vs onnxruntime and vs torch alike
R = zoo.RecurrentSpec

# A pairwise covering array over kind x num_layers x bidirectional x batch_first
# x bias x state_io: every pair of values of any two factors occurs in some row.
# Columns: kind, num_layers, bidirectional, batch_first, bias, state_io.
RECURRENT = [
    R("LSTM", 1, True, False, False, True),
    R("LSTM", 2, True, False, True, False),
    R("LSTM", 3, False, True, False, False),
    R("GRU", 1, False, True, True, True),
    R("GRU", 2, True, True, True, True),
    R("GRU", 3, True, False, False, False),
    R("RNN_TANH", 1, True, False, True, False),
    R("RNN_TANH", 2, False, True, False, True),
    R("RNN_TANH", 3, True, False, False, False),
    R("RNN_RELU", 1, True, True, False, False),
    R("RNN_RELU", 2, False, False, True, True),
    R("RNN_RELU", 3, False, False, True, True),
    # The streaming form most users export: unidirectional LSTM with states.
    R("LSTM", 2, False, True, True, True, input_size=16, hidden_size=32),
]
CLASSIFIERS = [zoo.ClassifierSpec(), zoo.ClassifierSpec(num_layers=1, bidirectional=True)]

# Dynamo exports cost seconds each: a subset that still covers every kind,
# bidirectional, batch_first, bias and state_io value and 1-3 layers.
DYNAMO = {RECURRENT[i] for i in (0, 2, 4, 7, 9, 12)} | {CLASSIFIERS[0]}

CASES = [
    pytest.param(spec, exporter, opset, id=f"{spec.name}-{exporter}{opset}")
    for spec in RECURRENT + CLASSIFIERS
    for exporter, opset in zoo.EXPORTERS
    if exporter != "dynamo" or spec in DYNAMO
]

# (time, batch) feeds: T=1 and B=1 edge cases, a wide batch, a longer sequence.
TORCHSCRIPT_SHAPES = [(1, 1), (6, 32), (13, 2)]
DYNAMO_TIME = 7  # torch.export fixes the time axis at export (torch_models doc)
DYNAMO_SHAPES = [(DYNAMO_TIME, 1), (DYNAMO_TIME, 32), (DYNAMO_TIME, 2)]


def sessions(model_bytes):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]), lstminfer.load(model_bytes)


def assert_same_outputs(got, expected, names, what):
    assert len(got) == len(expected), f"{what}: {len(got)} outputs, expected {len(expected)}"
    for name, g, e in zip(names, got, expected):
        assert isinstance(g, np.ndarray), f"{what} '{name}': got {type(g).__name__}, expected ndarray"
        assert g.dtype == e.dtype, f"{what} '{name}': dtype {g.dtype}, expected {e.dtype}"
        assert g.shape == e.shape, f"{what} '{name}': shape {g.shape}, expected {e.shape}"
        diff = float(np.max(np.abs(g.astype(np.float64) - e))) if g.size else 0.0
        assert diff <= ATOL, f"{what} '{name}': max abs diff {diff:.3g} > {ATOL}"


def check_feeds(spec, model_bytes, ort_sess, feeds):
    """Every available lstminfer backend against onnxruntime and torch."""
    names = [o.name for o in ort_sess.get_outputs()]
    expected = ort_sess.run(None, feeds)
    from_torch = zoo.torch_outputs(spec, feeds)
    shape = {k: v.shape for k, v in feeds.items()}
    for backend in lstminfer.available_backends():
        model = loaded(model_bytes, backend)
        got = model.run(None, feeds)
        assert_same_outputs(got, expected, names, f"[{backend}] vs onnxruntime {shape}")
        assert_same_outputs(got, from_torch, names, f"[{backend}] vs torch {shape}")


@functools.lru_cache(maxsize=8)
def loaded(model_bytes, backend):
    return lstminfer.load(model_bytes, backend=backend)


def assert_same_signature(ort_sess, model):
    for kind in ("get_inputs", "get_outputs"):
        want = [(a.name, a.type, list(a.shape)) for a in getattr(ort_sess, kind)()]
        have = [(a.name, a.type, list(a.shape)) for a in getattr(model, kind)()]
        assert have == want, f"{kind}(): lstminfer {have} != onnxruntime {want}"


@pytest.mark.parametrize("spec, exporter, opset", CASES)
def test_matches_onnxruntime_and_torch(spec, exporter, opset, rng):
    model_bytes = zoo.export(spec, exporter, opset)
    ort_sess, model = sessions(model_bytes)
    assert_same_signature(ort_sess, model)
    shapes = DYNAMO_SHAPES if exporter == "dynamo" else TORCHSCRIPT_SHAPES
    for time, batch in shapes:
        check_feeds(spec, model_bytes, ort_sess, spec.make_inputs(rng, batch, time))


@pytest.mark.parametrize("exporter, opset", zoo.EXPORTERS)
def test_requested_outputs_come_in_requested_order(exporter, opset, rng):
    spec = RECURRENT[0]
    ort_sess, model = sessions(zoo.export(spec, exporter, opset))
    feeds = spec.make_inputs(rng, 3, DYNAMO_TIME)
    for wanted in (["c_n", "y"], ["h_n"], ["c_n", "h_n", "y"]):
        assert_same_outputs(model.run(wanted, feeds), ort_sess.run(wanted, feeds), wanted, f"run({wanted})")


@pytest.mark.parametrize("spec, exporter, opset, time, batch", [
    pytest.param(R("LSTM", 2, True, False, True, True), "torchscript", 17, 1000, 2, id="lstm-bi-torchscript17"),
    # Not dynamo at T=1000: torch.export traces nn.GRU step by step (minutes).
    pytest.param(R("GRU", 1, False, True, True, True), "torchscript", 14, 1000, 1, id="gru-batch_first-torchscript14"),
    pytest.param(R("LSTM", 1, True, False, False, True), "dynamo", 18, 1, 40, id="lstm-bi-dynamo18-T1"),
])
def test_long_and_single_step_sequences(spec, exporter, opset, time, batch, rng):
    """T=1000 and, for dynamo (which fixes T at export), T=1 exported at that length."""
    model_bytes = zoo.export(spec, exporter, opset, example_time=time)
    ort_sess, _ = sessions(model_bytes)
    check_feeds(spec, model_bytes, ort_sess, spec.make_inputs(rng, batch, time))


@pytest.mark.parametrize("exporter, opset", zoo.EXPORTERS)
def test_streaming_in_chunks_equals_whole_sequence(exporter, opset, rng):
    """Feeding (h_n, c_n) back in, chunk by chunk, gives onnxruntime's one-shot result."""
    spec = RECURRENT[-1]
    chunk = DYNAMO_TIME
    ort_sess, _ = sessions(zoo.export(spec, "torchscript", 17))
    model = lstminfer.load(zoo.export(spec, exporter, opset, example_time=chunk))
    feeds = spec.make_inputs(rng, 4, 3 * chunk)
    y_all, h_all, c_all = ort_sess.run(None, feeds)
    h, c, ys = feeds["h0"], feeds["c0"], []
    for start in range(0, 3 * chunk, chunk):
        y, h, c = model.run(None, {"x": feeds["x"][:, start:start + chunk], "h0": h, "c0": c})
        ys.append(y)
    assert_same_outputs([np.concatenate(ys, axis=1), h, c], [y_all, h_all, c_all], ["y", "h_n", "c_n"], "streamed")


def test_dynamo_fixed_time_axis_rejects_other_lengths(rng):
    """Like onnxruntime, a feed whose time length differs from the exported one is refused."""
    spec = RECURRENT[0]
    ort_sess, model = sessions(zoo.export(spec, "dynamo", 18))
    assert ort_sess.get_inputs()[0].shape[0] == DYNAMO_TIME, "premise: dynamo fixed the time axis"
    feeds = spec.make_inputs(rng, 2, DYNAMO_TIME + 1)
    with pytest.raises(OrtInvalidArgument):
        ort_sess.run(None, feeds)
    with pytest.raises(lstminfer.InvalidInputError, match=r"'x'.*axis 0.*expected 7.*got 8"):
        model.run(None, feeds)


@pytest.mark.parametrize("exporter, opset", zoo.EXPORTERS)
def test_exported_ops_are_the_documented_ones(exporter, opset):
    """The op table in torch_models' docstring stays true (it guides what lstminfer must support)."""
    recurrent_ops = {"LSTM", "GRU", "RNN"}
    for spec in RECURRENT:
        if exporter == "dynamo" and spec not in DYNAMO:
            continue
        ops = set(zoo.onnx_op_types(zoo.export(spec, exporter, opset)))
        assert not ops & {"Loop", "Scan", "If"}, f"{spec.name}: subgraph ops {ops}"
        if exporter == "dynamo" and spec.kind.startswith("RNN"):
            activation = "Tanh" if spec.kind == "RNN_TANH" else "Relu"
            assert not ops & recurrent_ops and {"MatMul", activation} <= ops, f"{spec.name}: {sorted(ops)}"
        else:
            kind = spec.kind.split("_")[0]
            assert ops & recurrent_ops == {kind}, f"{spec.name}: {sorted(ops)}"
