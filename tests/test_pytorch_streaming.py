"""Streaming real PyTorch exports: last-step heads and PyTorch's default (dynamo) exporter.

A last-step head (``fc(y[:, -1])``, ``fc(y[-1])``, ``fc(h_n[-1])``) streams with one value per
chunk: the head at that chunk's last step, so after every chunk it equals the whole-sequence
output of the prefix seen so far. Dynamo exports with a dynamic time axis (batch_first models:
torch.export keeps time dynamic there) compute their Reshape targets from Shape/Slice/Concat;
they stream like TorchScript exports. Each model is checked against onnxruntime and torch.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch export tests need torch")
ort = pytest.importorskip("onnxruntime", reason="PyTorch export tests compare against onnxruntime")

import lstminfer  # noqa: E402
import torch_models as zoo  # noqa: E402

ATOL = 1e-5
L, R = zoo.LastStepSpec, zoo.RecurrentSpec

# (spec, exporter, opset, dynamic_time): every streamable family, both exporters.
HEADS = [
    pytest.param(L("LSTM", "y", True), "torchscript", 17, False, id="lstm-y[:,-1]-torchscript"),
    pytest.param(L("GRU", "y", False, num_layers=1), "torchscript", 14, False, id="gru-y[-1]-torchscript"),
    pytest.param(L("LSTM", "h_n", False), "torchscript", 17, False, id="lstm-h_n[-1]-torchscript"),
    pytest.param(L("GRU", "h_n", True), "torchscript", 17, False, id="gru-h_n[-1]-batch_first-torchscript"),
    pytest.param(L("GRU", "y", True, num_layers=1), "dynamo", 18, True, id="gru-y[:,-1]-dynamo"),
    pytest.param(L("LSTM", "y", True), "dynamo", 18, True, id="lstm-y[:,-1]-dynamo"),
    pytest.param(zoo.ClassifierSpec(), "dynamo", 18, True, id="classifier-dynamo"),
    pytest.param(zoo.ClassifierSpec(), "torchscript", 17, False, id="classifier-torchscript"),
]
SEQUENCES = [
    pytest.param(R("LSTM", 2, False, True, True, True), id="lstm-L2-batch_first-state_io-dynamo"),
    pytest.param(R("GRU", 1, False, True, True, False), id="gru-L1-batch_first-dynamo"),
]


def time_axis(spec) -> int:
    return next(ax for ax, role in spec.axes()[spec.input_names[0]].items() if role == zoo.TIME)


def take(x, axis, start, stop):
    return np.take(x, range(start, stop), axis=axis)


@pytest.fixture(scope="module")
def exported():
    """Exports cached for the module (torch_models caches them per process too)."""
    cache = {}

    def get(spec, exporter, opset, dynamic_time):
        key = (spec, exporter, opset, dynamic_time)
        if key not in cache:
            data = zoo.export(spec, exporter, opset, 3, 7, dynamic_time)
            cache[key] = (data, ort.InferenceSession(data, providers=["CPUExecutionProvider"]),
                          lstminfer.load(data))
        return cache[key]
    return get


def assert_close(got, expected, what):
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3g} > {ATOL}"


@pytest.mark.parametrize("spec, exporter, opset, dynamic_time", HEADS)
def test_last_step_head_matches_onnxruntime_and_torch(spec, exporter, opset, dynamic_time, exported, rng):
    _, ort_sess, model = exported(spec, exporter, opset, dynamic_time)
    for time, batch in ((1, 1), (9, 4)):
        feeds = spec.make_inputs(rng, batch, time)
        got = model.run(None, feeds)[0]
        assert_close(got, ort_sess.run(None, feeds)[0], f"vs onnxruntime T={time} B={batch}")
        assert_close(got, zoo.torch_outputs(spec, feeds)[0], f"vs torch T={time} B={batch}")


@pytest.mark.parametrize("spec, exporter, opset, dynamic_time", HEADS)
def test_last_step_head_streams_the_prefix_output_after_every_chunk(spec, exporter, opset, dynamic_time,
                                                                     exported, rng):
    _, ort_sess, model = exported(spec, exporter, opset, dynamic_time)
    axis = time_axis(spec)
    x = spec.make_inputs(rng, 1, 11)[spec.input_names[0]]
    stream = model.stream()
    assert stream.output_names == list(spec.output_names)
    seen = 0
    for length in (4, 1, 6):
        out = stream.step(take(x, axis, seen, seen + length))
        seen += length
        whole = ort_sess.run(None, {spec.input_names[0]: take(x, axis, 0, seen)})[0]
        assert_close(out, whole, f"after {seen} steps")


@pytest.mark.parametrize("spec, exporter, opset, dynamic_time", HEADS)
def test_last_step_head_pool_with_mixed_chunk_lengths_equals_streams_alone(spec, exporter, opset, dynamic_time,
                                                                            exported, rng):
    """Each stream's output is its own last valid step, padded (h_n heads) or grouped (y[-1] heads)."""
    _, _, model = exported(spec, exporter, opset, dynamic_time)
    axis, name = time_axis(spec), spec.input_names[0]
    pool = model.stream_pool(max_streams=4)
    ids = [pool.open() for _ in range(3)]
    alone = [model.stream() for _ in ids]
    for lengths in ([2, 2, 2], [1, 3, 2], [3, 1, 1], [2, 2, 2]):
        chunks = [spec.make_inputs(rng, 1, n)[name] for n in lengths]
        out = pool.step(dict(zip(ids, chunks)))
        for sid, stream, chunk in zip(ids, alone, chunks):
            assert_close(out[sid], stream.step(chunk), f"stream {sid}, chunk lengths {lengths}")


@pytest.mark.parametrize("spec", SEQUENCES)
def test_dynamo_sequence_model_matches_and_streams(spec, exported, rng):
    """Dynamo's Shape -> Slice -> Concat -> Reshape glue keeps the time axis: chunks equal the whole run."""
    _, ort_sess, model = exported(spec, "dynamo", 18, True)
    for time, batch in ((1, 2), (10, 3)):
        feeds = spec.make_inputs(rng, batch, time)
        for got, want in zip(model.run(None, feeds), ort_sess.run(None, feeds)):
            assert_close(got, want, f"vs onnxruntime T={time} B={batch}")
    x = spec.make_inputs(rng, 1, 9)["x"]
    feeds = {"x": x}
    if spec.state_io:  # zero initial states: the stream's default
        feeds.update({k: np.zeros_like(v) for k, v in spec.make_inputs(rng, 1, 1).items() if k != "x"})
    whole = ort_sess.run(["y"], feeds)[0]
    stream = model.stream()
    ys = [stream.step(x[:, a:b]) for a, b in ((0, 2), (2, 3), (3, 9))]
    assert_close(np.concatenate(ys, axis=1), whole, "streamed y")


def test_fixed_time_axis_refusal_says_how_to_export(exported):
    """Dynamo fixes a time-first model's time axis: streaming says which axis to make dynamic, and how."""
    spec = R("LSTM", 1, False, False, True, False)
    _, _, model = exported(spec, "dynamo", 18, False)
    with pytest.raises(lstminfer.NotStreamableError, match=r"'x' \[7, 'batch', 5\].*dynamic_axes=\{'x': \{0: "
                                                           r"'time'\}\}.*dynamic_shapes"):
        model.stream()


def test_a_pick_other_than_the_last_step_is_refused_naming_the_node():
    class First(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = torch.nn.GRU(5, 8, batch_first=True), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, 0])

    import io
    buf = io.BytesIO()
    torch.onnx.export(First().eval(), (torch.zeros(2, 4, 5),), buf, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}})
    with pytest.raises(lstminfer.NotStreamableError, match=r"Gather.*only the last step, index -1"):
        lstminfer.load(buf.getvalue()).stream()


def _shape_reshape_model(merge_time: bool):
    """LSTM Y [T, 1, N, H] reshaped to a target computed from its own Shape, as dynamo writes it:
    [T, N, 1*H] keeps the time axis; [T*N, H] merges time into the batch."""
    from onnx import TensorProto as TP
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    H = 4
    inits = [nh.from_array(rng.standard_normal((1, 4 * H, 3)).astype(np.float32), "W"),
             nh.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R")]
    inits += [nh.from_array(np.array([v], np.int64), f"i{v}") for v in (0, 1, 2, 3, 4)]
    nodes = [oh.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=H, name="lstm"),
             oh.make_node("Shape", ["Y"], ["s"]),
             oh.make_node("Slice", ["s", "i0", "i1"], ["t"]),
             oh.make_node("Slice", ["s", "i2", "i3"], ["n"]),
             oh.make_node("Slice", ["s", "i1", "i2"], ["d"]),
             oh.make_node("Slice", ["s", "i3", "i4"], ["h"]),
             oh.make_node("Mul", ["d", "h"], ["dh"])]
    if merge_time:
        nodes += [oh.make_node("Mul", ["t", "n"], ["tn"]), oh.make_node("Concat", ["tn", "dh"], ["target"], axis=0)]
    else:
        nodes += [oh.make_node("Concat", ["t", "n", "dh"], ["target"], axis=0)]
    nodes += [oh.make_node("Reshape", ["Y", "target"], ["out"], name="reshape")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, ["T", "N", 3])],
                          [oh.make_tensor_value_info("out", TP.FLOAT, None)], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_shape_computed_reshape_keeps_time_only_when_the_target_does(rng):
    model = lstminfer.load(_shape_reshape_model(merge_time=False))
    x = rng.standard_normal((7, 1, 3), dtype=np.float32)
    stream = model.stream()
    got = np.concatenate([stream.step(x[a:b]) for a, b in ((0, 3), (3, 4), (4, 7))], axis=0)
    assert_close(got, model.run(None, {"x": x})[0], "streamed [T, N, H] reshape")
    with pytest.raises(lstminfer.NotStreamableError, match=r"'reshape' \(Reshape\).*merge the time axis"):
        lstminfer.load(_shape_reshape_model(merge_time=True)).stream()
