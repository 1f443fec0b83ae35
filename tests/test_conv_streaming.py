"""Streaming through convolutions: a causal Conv1d (or pool) over time carries its last
(kernel-1)*dilation input frames between chunks, so any chunking equals the whole sequence;
anything that looks ahead or strides over time is refused, naming the node and why."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstminfer
from lstminfer.errors import NotStreamableError

import conv_models

ATOL, RTOL = 1e-5, 1e-5
T = 23
CHUNKINGS = {"ones": [1] * T, "threes": [3] * 7 + [2], "sevens": [7, 7, 7, 2], "mixed": [5, 1, 9, 2, 6]}


def _streamed(stream, x: np.ndarray, chunks: list[int], time_axis: int = 1) -> np.ndarray:
    outputs, start = [], 0
    for length in chunks:
        index = [slice(None)] * x.ndim
        index[time_axis] = slice(start, start + length)
        outputs.append(stream.step(x[tuple(index)]))
        start += length
    assert start == x.shape[time_axis]
    return np.concatenate(outputs, axis=time_axis)


@pytest.fixture(scope="module", params=[True, False], ids=["exporter-folds-bn", "bn-folded-at-load"])
def causal_model(request):
    return lstminfer.load(conv_models.export("causal", fold=request.param))


def test_causal_crnn_streams_in_any_chunking(causal_model, rng):
    x = conv_models.example("causal", rng, 1, T)
    whole = causal_model.run(None, {"x": x})[0]
    stream = causal_model.stream()
    assert {k for k in stream.state if k.endswith(":history")} == {"/conv/Conv:history", "/depthwise/Conv:history"}
    assert stream.state["/conv/Conv:history"].shape == (1, conv_models.FEATURES, 4)  # (kernel 3 - 1) * dilation 2
    for name, chunks in CHUNKINGS.items():
        stream.reset()
        np.testing.assert_allclose(_streamed(stream, x, chunks), whole, atol=ATOL, rtol=RTOL, err_msg=name)


def test_causal_crnn_stream_state_saves_and_restores(causal_model, rng):
    x = conv_models.example("causal", rng, 1, T)
    whole = causal_model.run(None, {"x": x})[0]
    first = causal_model.stream()
    first.step(x[:, :6])
    resumed = causal_model.stream(state=first.save())
    np.testing.assert_allclose(resumed.step(x[:, 6:]), whole[:, 6:], atol=ATOL, rtol=RTOL)


def test_causal_crnn_stream_pool_with_mixed_chunks(causal_model, rng):
    xs = [conv_models.example("causal", rng, 1, T) for _ in range(3)]
    wholes = [causal_model.run(None, {"x": x})[0] for x in xs]
    plans = [[3, 7, 10, 3], [1, 1, 18, 3], [3, 7, 10, 3]]  # equal shapes together, others alone
    pool = causal_model.stream_pool(max_streams=4)
    sids = [pool.open() for _ in xs]
    pieces: list[list[np.ndarray]] = [[] for _ in xs]
    starts = [0] * len(xs)
    for r in range(len(plans[0])):
        feed = {}
        for i, sid in enumerate(sids):
            feed[sid] = xs[i][:, starts[i]:starts[i] + plans[i][r]]
            starts[i] += plans[i][r]
        out = pool.step(feed)
        for i, sid in enumerate(sids):
            pieces[i].append(out[sid])
    for i in range(len(xs)):
        np.testing.assert_allclose(np.concatenate(pieces[i], axis=1), wholes[i], atol=ATOL, rtol=RTOL,
                                   err_msg=f"stream {i}")


@pytest.mark.parametrize("name, node, why", [
    ("lookahead", "/conv/Conv", r"look-ahead of 2 frame\(s\)"),
    ("kws", "/conv/Conv", r"look-ahead of 1 frame\(s\)"),
])
def test_conv_padded_on_both_sides_cannot_stream(name, node, why):
    model = lstminfer.load(conv_models.export(name))
    with pytest.raises(NotStreamableError, match=f"node '{node}' \\(Conv\\) prevents streaming.*{why}.*causal") as e:
        model.stream()
    assert "F.pad(x, ((kernel-1)*dilation, 0))" in str(e.value)


# ---------------------------------------------------------------- hand-built graphs


def _conv_lstm_graph(rng, op: str, attrs: dict, pad: list[int] | None = None, C: int = 3, H: int = 4,
                     indices: bool = False) -> bytes:
    """x [T, N, C] -> Transpose -> [Pad ->] op over time -> Transpose -> LSTM -> y [T, N, H]
    (``indices``: the MaxPool's Indices are an output too)."""
    init = {"W_lstm": rng.standard_normal((1, 4 * H, C)).astype(np.float32) * 0.5,
            "R_lstm": rng.standard_normal((1, 4 * H, H)).astype(np.float32) * 0.5}
    inputs = ["nct"]
    if op == "Conv":
        init["W"] = rng.standard_normal((C, 1, attrs.pop("kernel", 3))).astype(np.float32)
        inputs.append("W")
        attrs.setdefault("group", C)
    nodes = [helper.make_node("Transpose", ["x"], ["nct"], perm=[1, 2, 0], name="to_nct")]
    if pad is not None:
        init["pads"] = np.array(pad, np.int64)
        nodes.append(helper.make_node("Pad", ["nct", "pads"], ["padded"], name="pad"))
        inputs[0] = "padded"
    if op == "BatchNormalization":
        for name in ("scale", "bias", "mean", "var"):
            init[name] = (rng.random(C) + 0.5).astype(np.float32)
        inputs += ["scale", "bias", "mean", "var"]
    nodes += [helper.make_node(op, inputs, ["z", "idx"] if indices else ["z"], name="window", **attrs),
              helper.make_node("Transpose", ["z"], ["tnc"], perm=[2, 0, 1], name="to_tnc"),
              helper.make_node("LSTM", ["tnc", "W_lstm", "R_lstm"], ["Y"], hidden_size=H, name="lstm"),
              helper.make_node("Squeeze", ["Y", "one"], ["y"], name="squeeze")]
    init["one"] = np.array([1], np.int64)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if indices:
        outputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", C])],
                              outputs,
                              [numpy_helper.from_array(v, k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


STREAMABLE = {
    "conv-own-causal-pads": ("Conv", {"kernel": 3, "dilations": [2], "pads": [4, 0]}, None),
    "conv-pad-node": ("Conv", {"kernel": 2}, [0, 0, 1, 0, 0, 0]),
    "conv-pad-node-and-own-pads": ("Conv", {"kernel": 4, "pads": [1, 0]}, [0, 0, 2, 0, 0, 0]),
    "conv-same-lower-k2": ("Conv", {"kernel": 2, "auto_pad": "SAME_LOWER"}, None),
    "maxpool-own-causal-pads": ("MaxPool", {"kernel_shape": [3], "pads": [2, 0]}, None),
    "avgpool-counting-pads": ("AveragePool", {"kernel_shape": [3], "pads": [2, 0], "count_include_pad": 1}, None),
    "one-frame-conv": ("Conv", {"kernel": 1}, None),
    "conv-unpadded": ("Conv", {"kernel": 3}, None),
    "conv-unpadded-dilated": ("Conv", {"kernel": 3, "dilations": [3]}, None),
    "conv-short-start-pad": ("Conv", {"kernel": 4, "pads": [1, 0]}, None),
    "conv-pad-node-short": ("Conv", {"kernel": 3, "strides": [2]}, [0, 0, 1, 0, 0, 0]),
    "conv-stride-3": ("Conv", {"kernel": 2, "strides": [3]}, None),  # skips a frame between windows
    "conv-stride-2-dilated": ("Conv", {"kernel": 3, "strides": [2], "dilations": [2], "pads": [2, 0]}, None),
    "maxpool-stride-2": ("MaxPool", {"kernel_shape": [2], "strides": [2]}, None),
    "maxpool-3-stride-2-padded": ("MaxPool", {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}, None),
    "avgpool-stride-2": ("AveragePool", {"kernel_shape": [2], "strides": [2]}, None),
    "avgpool-k1-stride-2": ("AveragePool", {"kernel_shape": [1], "strides": [2]}, None),
    "batchnorm-over-time": ("BatchNormalization", {}, None),  # not after a Conv: runs as is, per step
}


@pytest.mark.parametrize("case", list(STREAMABLE))
def test_causal_windows_stream(case, rng):
    op, attrs, pad = STREAMABLE[case]
    model = lstminfer.load(_conv_lstm_graph(rng, op, dict(attrs), pad))
    x = rng.standard_normal((T, 1, 3)).astype(np.float32)
    whole = model.run(None, {"x": x})[0]
    stream = model.stream()
    carried = [k for k in stream.state if k.endswith((":history", ":phase"))]
    causal = "causal" in case or case in ("conv-pad-node", "conv-pad-node-and-own-pads", "conv-same-lower-k2",
                                          "avgpool-counting-pads")
    expected = [] if case in ("one-frame-conv", "batchnorm-over-time") else \
        ["window:history"] if causal else ["window:history", "window:phase"]
    assert carried == expected, list(stream.state)
    for name, chunks in CHUNKINGS.items():
        stream.reset()
        np.testing.assert_allclose(_streamed(stream, x, chunks, time_axis=0), whole, atol=ATOL, rtol=RTOL,
                                   err_msg=name)


REFUSED = {
    "look-ahead": ("Conv", {"kernel": 3, "pads": [1, 1]}, None, r"look-ahead of 1 frame\(s\)"),
    "pad-node-look-ahead": ("Conv", {"kernel": 3}, [0, 0, 1, 0, 0, 1], r"look-ahead of 1 frame\(s\)"),
    "same-upper": ("Conv", {"kernel": 3, "auto_pad": "SAME_UPPER"}, None, r"look-ahead of 1 frame\(s\)"),
    "start-pad-too-long": ("Conv", {"kernel": 3, "pads": [3, 0]}, None,
                           r"pads the start .* by 3 frame\(s\) where .* needs at most 2.* padding alone"),
    "ceil-mode-stride": ("MaxPool", {"kernel_shape": [2], "strides": [2], "ceil_mode": 1}, None, "ceil_mode=1"),
    "avg-without-pads": ("AveragePool", {"kernel_shape": [3], "pads": [2, 0]}, None, "left out of the average"),
    "pad-other-axes": ("Conv", {"kernel": 2}, [0, 1, 1, 0, 0, 0], "pads axes other than time"),
    "maxpool-indices": ("MaxPool", {"kernel_shape": [3], "pads": [2, 0]}, None, "Indices output counts positions"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_non_causal_windows_are_refused_naming_the_node(case, rng):
    op, attrs, pad, why = REFUSED[case]
    model = lstminfer.load(_conv_lstm_graph(rng, op, dict(attrs), pad, indices=case == "maxpool-indices"))
    with pytest.raises(NotStreamableError, match=why) as e:
        model.stream()
    assert "'window'" in str(e.value) or "'pad'" in str(e.value)


# ---------------------------------------------------------------- unpadded and strided windows

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXACT = 1e-6  # float32: a chunked run does the same arithmetic per frame as the whole one
VALID_T = 29


def _chunking(lengths: list[int], total: int) -> list[int]:
    """``lengths`` cut or extended (by ones) to sum to ``total``."""
    chunks, left = [], total
    for n in lengths:
        if left == 0:
            break
        chunks.append(min(n, left))
        left -= chunks[-1]
    return chunks + [1] * left


CHUNK_LENGTHS = st.lists(st.integers(1, 9), min_size=1, max_size=VALID_T)


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def valid_models(request):
    """ValidCRNN and ValidHeadCRNN (unpadded dilated Conv1d, MaxPool1d(2), strided Conv1d) loaded."""
    export = (lambda name: conv_models.export(name, time=VALID_T)) if request.param == "torchscript" \
        else conv_models.export_dynamic_dynamo
    return {name: lstminfer.load(export(name)) for name in ("valid", "valid-head")}


def test_unpadded_strided_crnn_matches_pytorch(valid_models):
    rng = np.random.default_rng(3)
    for time in (VALID_T, 10, 40):
        x = conv_models.example("valid", rng, 2, time)
        got = valid_models["valid"].run(None, {"x": x})[0]
        assert got.shape[1] == conv_models.valid_frames(time)
        np.testing.assert_allclose(got, conv_models.torch_output("valid", x), atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(valid_models["valid-head"].run(None, {"x": x})[0],
                                   conv_models.torch_output("valid-head", x), atol=ATOL, rtol=RTOL)


@settings(max_examples=15)
@given(lengths=CHUNK_LENGTHS, seed=st.integers(0, 2**16))
def test_unpadded_strided_crnn_streams_in_any_chunking(valid_models, lengths, seed):
    """Chunks of any lengths (1 frame included) give the whole sequence's T-(k-1)d, pooled, strided
    frames: each chunk the frames whose windows it completes, often none."""
    model = valid_models["valid"]
    x = conv_models.example("valid", np.random.default_rng(seed), 1, VALID_T)
    whole = model.run(None, {"x": x})[0]
    stream = model.stream()
    chunks = _chunking(lengths, VALID_T)
    pieces, start = [], 0
    for n in chunks:
        piece = stream.step(x[:, start:start + n])
        start += n
        assert piece.shape == (1, conv_models.valid_frames(start) - sum(p.shape[1] for p in pieces),
                               conv_models.CLASSES), chunks
        pieces.append(piece)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, atol=EXACT, rtol=0, err_msg=str(chunks))


def test_a_chunk_yielding_no_frame_leaves_the_recurrent_state(valid_models, rng):
    model = valid_models["valid"]
    x = conv_models.example("valid", rng, 1, VALID_T)
    stream = model.stream()
    stream.step(x[:, :12])  # 12 frames: 8 after the conv, 4 pooled, 1 strided; the pool's phase is 0
    before = stream.state
    y = stream.step(x[:, 12:13])  # the conv's 9th frame only: the pool waits for its 10th
    assert y.shape == (1, 0, conv_models.CLASSES)
    after = stream.state
    recurrent = [k for k in before if not k.endswith((":history", ":phase"))]
    assert recurrent and all(np.array_equal(before[k], after[k]) for k in recurrent)
    history = [k for k in before if k.endswith(":history")]
    assert any(not np.array_equal(before[k], after[k]) for k in history)  # the frame was taken in


@settings(max_examples=10)
@given(lengths=CHUNK_LENGTHS, seed=st.integers(0, 2**16))
def test_last_step_head_reports_the_last_frame_produced(valid_models, lengths, seed):
    """fc(y[:, -1]): each chunk gives the head at the last frame produced so far, which is the
    whole run on the frames received; a chunk producing no frame repeats it; before any frame,
    the head of a zero frame (the Linear's bias)."""
    model = valid_models["valid-head"]
    x = conv_models.example("valid-head", np.random.default_rng(seed), 1, VALID_T)
    stream = model.stream()
    bias = conv_models.build("valid-head").fc.bias.detach().numpy()[None]
    start = 0
    for n in _chunking(lengths, VALID_T):
        got = stream.step(x[:, start:start + n])
        start += n
        want = model.run(None, {"x": x[:, :start]})[0] if conv_models.valid_frames(start) else bias
        np.testing.assert_allclose(got, want, atol=EXACT, rtol=0, err_msg=f"after {start} frames")


def test_stream_pool_steps_streams_at_different_phases(valid_models, rng):
    """Pool streams whose chunks of one length yield different numbers of frames: each stream's
    outputs equal its own whole run."""
    model = valid_models["valid"]
    xs = [conv_models.example("valid", rng, 1, VALID_T) for _ in range(4)]
    plans = [[1] * VALID_T, [2] * 14 + [1], [3, 1] * 7 + [1], [5, 5, 5, 5, 5, 4]]
    pool = model.stream_pool(max_streams=5)
    sids = [pool.open() for _ in xs]
    pieces: list[list[np.ndarray]] = [[] for _ in xs]
    starts = [0] * len(xs)
    for r in range(max(len(p) for p in plans)):
        feed = {}
        for i, sid in enumerate(sids):
            if r < len(plans[i]):
                feed[sid] = xs[i][:, starts[i]:starts[i] + plans[i][r]]
                starts[i] += plans[i][r]
        for sid, y in pool.step(feed).items():
            pieces[sids.index(sid)].append(y)
    for i, x in enumerate(xs):
        np.testing.assert_allclose(np.concatenate(pieces[i], axis=1), model.run(None, {"x": x})[0],
                                   atol=EXACT, rtol=0, err_msg=f"stream {i}")
    saved = pool.save(sids[1])
    alone = model.stream(state=saved)
    assert {k: v.tolist() for k, v in alone.state.items() if k.endswith(":phase")} == \
        {k: v.tolist() for k, v in pool.state(sids[1]).items() if k.endswith(":phase")}
