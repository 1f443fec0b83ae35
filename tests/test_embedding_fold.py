"""An Embedding (Gather of a constant table) folded into the input projections of the recurrent
node it feeds (lstminfer/embedding_fold.py): the compiled program looks each token's projection up
in E W^T + b instead of gathering its row and multiplying it by W. Checked against onnxruntime and
the plan's node-by-node path on every op, direction, layout and id type; the cases that must not
fold; ids out of range; streams, pools and threads."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper

import lstminfer
from lstminfer import embedding_fold

from test_program import ort_session, plan_outputs, program_text

TOL = 1e-5
FOLDED = "input projections looked up by id"
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


LAYOUTS = ("time-first", "transposed", "node-layout-1")


def text_model(op="LSTM", *, vocab=40, features=6, hidden=8, direction="forward", layout="time-first",
               id_type=TensorProto.INT64, bias=True, with_state=True, embedding_output=False, extra_attrs=None, seed=0):
    """tokens -> Gather(E) -> op -> Y, Y_h (+ the embedding itself). ``layout``: tokens [T, B] into a
    time-first node; tokens [B, T] whose rows a Transpose hands to a time-first node (PyTorch's
    batch_first export); or tokens [B, T] into a node of layout 1 (onnxruntime has no such node)."""
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, features)).astype(np.float32), "E"),
             numpy_helper.from_array((rng.standard_normal((D, G * hidden, features)) * 0.4).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((D, G * hidden, hidden)) * 0.4).astype(np.float32), "R")]
    if bias:
        inits.append(numpy_helper.from_array((rng.standard_normal((D, 2 * G * hidden)) * 0.3).astype(np.float32), "B"))
    node_layout = int(layout == "node-layout-1")
    ids_shape = ["time", "batch"] if layout == "time-first" else ["batch", "time"]
    inputs = [oh.make_tensor_value_info("tokens", id_type, ids_shape)]
    state_shape = ["batch", D, hidden] if node_layout else [D, "batch", hidden]
    rnn_inputs = ["x_t" if layout == "transposed" else "x", "W", "R", "B" if bias else "", ""]
    if with_state:
        inputs.append(oh.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        rnn_inputs.append("h0")
    attrs = dict(hidden_size=hidden, direction=direction, layout=node_layout, **(extra_attrs or {}))
    outputs = ["y", "y_h"]
    nodes = [oh.make_node("Gather", ["E", "tokens"], ["x"], name="embed")]
    if layout == "transposed":
        nodes.append(oh.make_node("Transpose", ["x"], ["x_t"], name="to_time_first", perm=[1, 0, 2]))
    nodes.append(oh.make_node(op, rnn_inputs, outputs, name="rnn", **attrs))
    graph_outputs = [oh.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    if embedding_output:
        graph_outputs.append(oh.make_tensor_value_info("x", TensorProto.FLOAT, None))
    graph = oh.make_graph(nodes, "text", inputs, graph_outputs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14)])


def feeds_for(model, rng, batch, time, vocab=40, negative=True):
    batch_first = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    id_type = model.graph.input[0].type.tensor_type.elem_type
    shape = (batch, time) if batch_first else (time, batch)
    low = -vocab if negative else 0
    feeds = {"tokens": rng.integers(low, vocab, shape).astype(np.int64 if id_type == TensorProto.INT64 else np.int32)}
    if len(model.graph.input) > 1:
        dims = [d.dim_param or d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
        feeds["h0"] = rng.standard_normal([batch if d == "batch" else d for d in dims]).astype(np.float32)
    return feeds


def assert_matches(model_proto, feeds, **options):
    """lstminfer's program (twice: the compile, then the cached program) against the plan's general
    path and onnxruntime (where it runs the node); returns the model and the program's outputs."""
    model = lstminfer.load(model_proto, **options)
    plan = plan_outputs(model, feeds)
    model.run(None, feeds)
    got = model.run(None, feeds)
    layout_1 = any(a.name == "layout" and a.i == 1 for n in model_proto.graph.node for a in n.attribute)
    want = plan if layout_1 else ort_session(model_proto).run(None, feeds)
    for g, p, w in zip(got, plan, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=TOL, rtol=TOL)
        np.testing.assert_allclose(g, p, atol=TOL, rtol=TOL)
    return model, got


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_folded_embedding_matches_onnxruntime_and_the_plan(op, direction, layout):
    rng = np.random.default_rng(GATES[op] * 10 + LAYOUTS.index(layout))
    proto = text_model(op, direction=direction, layout=layout)
    for batch, time in ((1, 1), (1, 9), (3, 5), (5, 1)):
        model, _ = assert_matches(proto, feeds_for(proto, rng, batch, time))
        assert FOLDED in program_text(model, feeds_for(proto, rng, batch, time)), (batch, time)


@pytest.mark.parametrize("extra", [{"linear_before_reset": 1}, {"clip": 0.5}, {"activations": ["Relu"]}],
                         ids=["gru-lbr", "clip", "relu"])
def test_folded_embedding_keeps_each_attribute(extra):
    op = "GRU" if "linear_before_reset" in extra else "RNN" if "activations" in extra else "LSTM"
    proto = text_model(op, extra_attrs=extra, hidden=16, bias=True)
    rng = np.random.default_rng(5)
    model, _ = assert_matches(proto, feeds_for(proto, rng, 2, 7))
    assert FOLDED in program_text(model, feeds_for(proto, rng, 2, 7))


def test_int32_ids_no_bias_no_state():
    proto = text_model("LSTM", id_type=TensorProto.INT32, bias=False, with_state=False, layout="transposed")
    model, _ = assert_matches(proto, feeds_for(proto, np.random.default_rng(1), 4, 6))
    assert FOLDED in program_text(model, feeds_for(proto, np.random.default_rng(1), 4, 6))


def test_the_table_is_the_kernels_own_projection():
    """Each row of the folded table is the token's row of E through W plus the input bias, as the
    kernel projects it (in the kernel's gate order): zero rows give the bias, unit rows W's columns
    on top of it."""
    proto = text_model("GRU", features=5, hidden=16, direction="bidirectional")
    model = lstminfer.load(proto)
    kernel = next(s.kernel for s in model._plan.steps if s.node.op_type == "GRU")
    rows = np.vstack([np.zeros((1, 5), np.float32), np.eye(5, dtype=np.float32)])
    table = kernel.input_projections(rows)
    assert table.shape == (6, 2, 3 * 16) and table.dtype == np.float32
    W = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "W"))
    for d in range(2):  # unit row k minus the zero row: W[d][:, k], up to the gates' order
        columns = table[1:, d] - table[0, d]
        for k in range(5):
            assert sorted(np.round(columns[k], 5)) == sorted(np.round(W[d][:, k], 5))
    with pytest.raises(ValueError, match="row length"):
        kernel.input_projections(np.zeros((2, 4), np.float32))


def test_an_embedding_read_elsewhere_is_not_folded():
    proto = text_model("LSTM", embedding_output=True)
    feeds = feeds_for(proto, np.random.default_rng(2), 2, 4)
    model, got = assert_matches(proto, feeds)
    text = program_text(model, feeds)
    assert FOLDED not in text and "C row lookup (Gather)" in text, text


def test_a_table_past_the_limit_is_not_folded(monkeypatch):
    proto = text_model("LSTM", vocab=40, hidden=8)
    monkeypatch.setattr(embedding_fold, "MAX_TABLE_BYTES", 40 * 4 * 8 * 4 - 1)  # one float short
    feeds = feeds_for(proto, np.random.default_rng(3), 1, 5)
    model, _ = assert_matches(proto, feeds)
    assert FOLDED not in program_text(model, feeds)
    monkeypatch.setattr(embedding_fold, "MAX_TABLE_BYTES", 40 * 4 * 8 * 4)
    model, _ = assert_matches(proto, feeds)
    assert FOLDED in program_text(model, feeds)


def test_an_id_out_of_range_is_reported_naming_the_gather():
    proto = text_model("LSTM", layout="transposed")
    model = lstminfer.load(proto)
    feeds = feeds_for(proto, np.random.default_rng(4), 2, 3)
    model.run(None, feeds)
    assert FOLDED in program_text(model, feeds)
    for bad in (40, -41):
        tokens = feeds["tokens"].copy()
        tokens[1, 2] = bad
        with pytest.raises(lstminfer.errors.ExecutionError, match="embed"):
            model.run(None, {**feeds, "tokens": tokens})
    model.run(None, feeds)  # and the program still runs


def test_a_stream_fed_token_by_token_has_the_bits_of_the_whole_sequence():
    """Both look the same rows up: the products and cells are the same at batch 1, so the bits are."""
    proto = text_model("LSTM", hidden=32, layout="node-layout-1")
    model = lstminfer.load(proto)
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, 40, (1, 30)).astype(np.int64)
    h0 = np.zeros((1, 1, 32), np.float32)
    whole = model.run(None, {"tokens": tokens, "h0": h0})
    stream = model.stream()
    steps = [stream.step(tokens[:, t:t + 1]) for t in range(30)]
    np.testing.assert_array_equal(np.concatenate(steps, axis=1), whole[0])
    chunked = model.stream()
    parts = [chunked.step(tokens[:, a:b]) for a, b in ((0, 7), (7, 8), (8, 30))]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole[0])


def test_a_pool_of_streams_matches_each_stream_alone():
    proto = text_model("GRU", hidden=16, layout="node-layout-1")
    model = lstminfer.load(proto)
    rng = np.random.default_rng(10)
    pool = model.stream_pool(12)
    ids = [pool.open() for _ in range(12)]
    alone = {sid: model.stream() for sid in ids}
    for step in range(4):
        chosen = ids if step % 2 == 0 else ids[2:9]
        frames = {sid: rng.integers(-40, 40, (1, 1)).astype(np.int64) for sid in chosen}
        out = pool.step(frames)
        for sid, chunk in frames.items():
            np.testing.assert_allclose(out[sid], alone[sid].step(chunk), atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch,hidden", [(12, 16), (2, 128)], ids=["batch-split", "unit-split"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_threads_split_a_folded_call_and_keep_its_numbers(batch, hidden, layout):
    """threads=2 cuts the batch (the ids of each part, in either layout) or the hidden units (each
    part looks up its own units of the rows)."""
    proto = text_model("LSTM", hidden=hidden, layout=layout, direction="bidirectional")
    feeds = feeds_for(proto, np.random.default_rng(11), batch, 6)
    model, got = assert_matches(proto, feeds, threads=2)
    assert FOLDED in program_text(model, feeds)
    one = lstminfer.load(proto, threads=1).run(None, feeds)
    for g, o in zip(got, one):
        np.testing.assert_allclose(g, o, atol=1e-6, rtol=1e-6)


def test_a_hand_built_lookup_checks_its_ids():
    """The Recurrent instruction's ids lie inside their feed (checked when the program is made), and
    a call with an id outside the table declines (the general path then reports it)."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    from lstminfer.program_compiler import _kernel_capsule

    proto = text_model("LSTM", hidden=16, with_state=False)
    model = lstminfer.load(proto)
    core = next(s.kernel for s in model._plan.steps if s.node.op_type == "LSTM")
    _, D, H, _ = core.call_sizes
    row = D * 4 * H
    table = np.random.default_rng(12).standard_normal((10, row)).astype(np.float32)
    T, B, ARENA, ABS = 3, 1, runtime.BASE_ARENA, runtime.BASE_ABSOLUTE
    address = table.__array_interface__["data"][0]
    I64, F32 = np.dtype(np.int64), np.dtype(np.float32)

    def instruction(rows=10, row_floats=row):
        return runtime.Recurrent(core, _kernel_capsule(), T, B, (1, 0), None, None, (0, 0), None, (0, 0),
                                 (ARENA, 0), (D * B * H, B * H, H), (ARENA, T * H * 4), (ARENA, (T + 1) * H * 4),
                                 (B * H, H), ((ABS, address), rows, row_floats, 8, (1, 0)))

    def program(ids_shape):
        copy = runtime.OutCopy((ARENA, 0), (ARENA, 0), (), (), (), T * H * 4)
        return runtime.Program(((I64, ids_shape),), (instruction(),), (((T, D, B, H), F32, copy, None, False),),
                               (T + 2) * H * 4, (table,))

    run = program((T, B)).run
    y = run([np.array([[0], [9], [-10]], np.int64)])[0]
    assert y.shape == (T, D, B, H) and np.all(np.abs(y) < 1) and np.any(y != 0)
    np.testing.assert_array_equal(y, run([np.array([[0], [9], [0]], np.int64)])[0])  # -10 is row 0
    assert run([np.array([[0], [10], [1]], np.int64)]) is None
    assert run([np.array([[0], [1], [-11]], np.int64)]) is None
    with pytest.raises(ValueError, match=rf"Recurrent reads feed 0 bytes \[0, {T * B * 8}\)"):
        program((T - 1, B))
    with pytest.raises(ValueError, match="rows >= 1"):
        instruction(rows=0)
    with pytest.raises(ValueError, match="floats per row"):
        instruction(row_floats=row - 1)
