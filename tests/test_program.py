"""The compiled program (lstminfer/program.py, native/_program.pxi) against the plan it compiles.

Every ``Model.run``, ``Stream.step`` and ``StreamPool.step`` already goes through it (the rest of
the suite checks their results); here: that whole exports really compile (views vanish, heads
fuse, kernels run in C), that each instruction kind gives the plan's numbers on fresh random
shapes, and what happens at the edges: a result whose shape depends on the data, strided
feeds, threads, outputs the caller writes to.
"""
from __future__ import annotations

import threading

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lstminfer
from lstminfer import models

TOL = 1e-5


def plan_outputs(model, feeds: dict) -> list[np.ndarray]:
    """The plan's general path (node by node), for comparison with the program."""
    return model._plan.execute([feeds[n] for n in model.input_names], model._wanted(None))


def program_text(model, feeds: dict) -> str:
    """The compiled-program part of ``describe(feeds)``."""
    text = model.describe(feeds)
    assert "compiled program for" in text, text
    return text.split("compiled program for", 1)[1]


def ort_session(model_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else model_or_path
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def bundled_feeds(model, rng, batch, time):
    feeds = {}
    for vi in model.get_inputs():
        shape = [batch if d == "batch" else time if d == "time" else d for d in vi.shape]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# ------------------------------------------------------------ whole exports


@pytest.mark.parametrize("name", models.available())
def test_bundled_model_compiles_glue_away(name):
    model = lstminfer.load(models.path(name))
    feeds = bundled_feeds(model, np.random.default_rng(0), 1, 1)
    text = program_text(model, feeds)
    assert "not compiled" not in text
    assert text.count("vanished (a view)") == 3  # Transpose, Squeeze, Transpose
    assert "C LSTM kernel" in text or "C GRU kernel" in text
    assert "fused into node '/head/MatMul'" in text
    assert "falls back" not in text  # nothing left to NumPy


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("batch,time", [(1, 1), (3, 7), (2, 200)])
def test_bundled_model_program_matches_plan_and_onnxruntime(name, batch, time):
    model = lstminfer.load(models.path(name))
    feeds = bundled_feeds(model, np.random.default_rng(batch * time), batch, time)
    got = model.run(None, feeds)
    for g, p, o in zip(got, plan_outputs(model, feeds), ort_session(models.path(name)).run(None, feeds)):
        np.testing.assert_allclose(g, p, atol=1e-6, rtol=0)
        np.testing.assert_allclose(g, o, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", models.available())
def test_state_fed_back_loop_matches_onnxruntime(name):
    """The loop every onnxruntime user writes: T=1 runs, h_n/c_n fed back as h0/c0."""
    model = lstminfer.load(models.path(name))
    sess = ort_session(models.path(name))
    rng = np.random.default_rng(1)
    ours = bundled_feeds(model, rng, 1, 1)
    theirs = dict(ours)
    states = [vi.name for vi in model.get_inputs()][1:]
    for _ in range(30):
        x = rng.standard_normal(ours["x"].shape).astype(np.float32)
        ours["x"] = theirs["x"] = x
        got, want = model.run(None, ours), sess.run(None, theirs)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=TOL, rtol=TOL)
        ours.update(zip(states, got[1:]))
        theirs.update(zip(states, want[1:]))


torch_models = pytest.importorskip("torch_models", reason="torch is not installed")


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
def test_two_layer_batch_first_state_io_loop(exporter, opset):
    """A PyTorch 2-layer batch-first LSTM with h0/c0 in and h_n/c_n out (Slice/Concat of the
    per-layer states): the state-fed-back loop compiles to two C kernels and copies."""
    spec = torch_models.RecurrentSpec("LSTM", num_layers=2, batch_first=True, state_io=True)
    onnx_bytes = torch_models.export(spec, exporter, opset, 3, 1)  # dynamo fixes T at export: 1
    model, sess = lstminfer.load(onnx_bytes), ort_session_bytes(onnx_bytes)
    rng = np.random.default_rng(2)
    feeds = spec.make_inputs(rng, 1, 1)
    text = program_text(model, feeds)
    assert text.count("C LSTM kernel") == 2, text
    assert "falls back" not in text, text
    theirs = dict(feeds)
    for _ in range(10):
        got, want = model.run(None, feeds), sess.run(None, theirs)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=TOL, rtol=TOL)
        x = rng.standard_normal(feeds["x"].shape).astype(np.float32)
        feeds = {"x": x, "h0": got[1], "c0": got[2]}
        theirs = {"x": x, "h0": want[1], "c0": want[2]}


def ort_session_bytes(data: bytes):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
def test_embedding_classifier_compiles_entirely(exporter, opset):
    """Embedding + 2-layer LSTM + fc(y[:, -1]) + Softmax: the lookup (folded into the first layer's
    input projections), the last-step select (a view), the Gemm head and the softmax all run in C."""
    spec = torch_models.ClassifierSpec()
    data = torch_models.export(spec, exporter, opset)
    model, sess = lstminfer.load(data), ort_session_bytes(data)
    feeds = spec.make_inputs(np.random.default_rng(3), 4, 9 if exporter == "torchscript" else 7)
    text = program_text(model, feeds)
    assert "(Gather): folded into node" in text and "(LSTM)'s input projections" in text, text
    assert "C softmax" in text, text
    assert "input projections looked up by id" in text, text
    assert "Gather of a constant index" in text and "falls back" not in text, text
    for g, w in zip(model.run(None, feeds), sess.run(None, feeds)):
        np.testing.assert_allclose(g, w, atol=TOL, rtol=TOL)


# ------------------------------------------------------------ instruction kinds on random shapes


def _glue_model(shape, perm, const_shape, n_out, opset=17):
    """X -> Transpose -> Mul(const, broadcast) -> Add(X') -> Tanh -> Sigmoid -> MatMul(W) -> Add(b)
    -> Softmax(-1), and a Concat of two branches: every C instruction kind."""
    F = shape[perm[-1]]
    rng = np.random.default_rng(sum(shape) + n_out)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal(const_shape).astype(np.float32), "scale"),
        onnx.numpy_helper.from_array(rng.standard_normal((F, n_out)).astype(np.float32), "W"),
        onnx.numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b"),
    ]
    nodes = [
        oh.make_node("Transpose", ["x"], ["xt"], perm=list(perm)),
        oh.make_node("Mul", ["xt", "scale"], ["scaled"]),
        oh.make_node("Add", ["scaled", "xt"], ["summed"]),
        oh.make_node("Tanh", ["summed"], ["t"]),
        oh.make_node("Sigmoid", ["t"], ["s"]),
        oh.make_node("MatMul", ["s", "W"], ["mm"]),
        oh.make_node("Add", ["mm", "b"], ["head"]),
        oh.make_node("Softmax", ["head"], ["probs"], axis=-1),
        oh.make_node("Relu", ["xt"], ["r"]),
        oh.make_node("Concat", ["t", "r"], ["both"], axis=len(shape) - 1),
    ]
    graph = oh.make_graph(nodes, "glue", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
                          [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("probs", "both")],
                          inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@st.composite
def glue_cases(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6))
    perm = draw(st.permutations(range(len(shape))))
    out_shape = tuple(shape[p] for p in perm)
    # the constant broadcasts over some axes (size 1 there) and matches the others
    const_shape = tuple(draw(st.sampled_from([1, d])) for d in out_shape)
    return shape, tuple(perm), const_shape, draw(st.integers(1, 20)), draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(glue_cases())
def test_every_instruction_kind_matches_the_plan_and_onnxruntime(case):
    shape, perm, const_shape, n_out, seed = case
    onnx_model = _glue_model(shape, perm, const_shape, n_out)
    model = lstminfer.load(onnx_model)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    text = program_text(model, {"x": x})
    assert "falls back" not in text, text
    got = model.run(None, {"x": x})
    plan = plan_outputs(model, {"x": x})
    want = ort_session(onnx_model).run(None, {"x": x})
    for g, p, w in zip(got, plan, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, p, atol=2e-6, rtol=1e-5)
        np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-5)


def test_gather_out_of_range_id_is_reported_not_read():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = oh.make_graph([oh.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")], "g",
                          [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [None])],
                          [oh.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(table, "table")])
    model = lstminfer.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    np.testing.assert_array_equal(model.run(None, {"ids": np.array([3, -1, 0])})[0], table[[3, -1, 0]])
    assert "C row lookup" in program_text(model, {"ids": np.array([3, -1, 0])})
    with pytest.raises(lstminfer.errors.ExecutionError, match="lookup"):
        model.run(None, {"ids": np.array([1, 4, 0])})  # same signature, id out of range


# ------------------------------------------------------------ edges


def test_data_dependent_shape_declines_to_the_plan():
    """NonZero's output length depends on the values: the program compiled for one call's
    values declines on another's, and the plan gives the right answer."""
    nodes = [oh.make_node("NonZero", ["x"], ["nz"]), oh.make_node("Cast", ["nz"], ["y"], to=onnx.TensorProto.FLOAT)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [6])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = lstminfer.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    for x in ([0, 1, 0, 2, 0, 3], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 2, 0, 3]):
        x = np.array(x, dtype=np.float32)
        np.testing.assert_array_equal(model.run(None, {"x": x})[0], np.nonzero(x)[0][None].astype(np.float32))


def test_strided_and_readonly_feeds_give_the_same_numbers():
    model = lstminfer.load(models.path("adding_lstm"))
    rng = np.random.default_rng(4)
    big = rng.standard_normal((3, 10, 4)).astype(np.float32)
    x = big[:, ::2, 1:3]  # not contiguous
    h = np.zeros((1, 3, 32), np.float32)
    h.flags.writeable = False
    got = model.run(None, {"x": x, "h0": h, "c0": h})
    want = model.run(None, {"x": np.ascontiguousarray(x), "h0": h.copy(), "c0": h.copy()})
    for g, w in zip(got, want):  # the plan's NumPy head for the strided call: float32 rounding apart
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)


def test_outputs_are_fresh_and_writeable():
    model = lstminfer.load(models.path("adding_lstm"))
    feeds = bundled_feeds(model, np.random.default_rng(5), 1, 1)
    first = model.run(None, feeds)
    assert model._programs.find([feeds[n] for n in model.input_names]) is not None
    kept = [a.copy() for a in first]
    for a in first:
        assert a.flags.writeable and a.flags.owndata
        assert not any(np.shares_memory(a, f) for f in feeds.values())
        a[...] = 7.0  # the caller's: a later call neither sees nor overwrites it
    second = model.run(None, feeds)
    for k, s in zip(kept, second):
        np.testing.assert_array_equal(k, s)
    assert all((a == 7.0).all() for a in first)


def test_threads_share_a_program():
    model = lstminfer.load(models.path("forecast_lstm"))
    rng = np.random.default_rng(6)
    cases = [bundled_feeds(model, rng, 2, 5) for _ in range(8)]
    expected = [model.run(None, f) for f in cases]
    assert model._programs.find([cases[0][n] for n in model.input_names]) is not None
    errors = []

    def worker(k):
        for _ in range(200):
            i = (k + _) % len(cases)
            got = model.run(None, cases[i])
            if not all(np.array_equal(g, e) for g, e in zip(got, expected[i])):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_stream_updates_its_own_states_in_place():
    model = lstminfer.load(models.path("adding_lstm"))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 12, 2)).astype(np.float32)
    a, b = model.stream(), model.stream()
    before = b.state
    ys = [a.step(x[:, t:t + 1]) for t in range(12)]
    for key, value in b.state.items():  # the other stream is untouched
        np.testing.assert_array_equal(value, before[key])
    whole_y, h_n, c_n = model.run(None, {"x": x, "h0": np.zeros((1, 1, 32), np.float32),
                                         "c0": np.zeros((1, 1, 32), np.float32)})
    np.testing.assert_allclose(np.concatenate(ys, axis=1), whole_y, atol=TOL, rtol=0)
    h_key = [s.key for s in a._program.slots if s.kind == "h"][0]
    np.testing.assert_allclose(a.state[h_key], h_n, atol=TOL, rtol=0)


def test_whole_model_pool_matches_streams_alone():
    model = lstminfer.load(models.path("forecast_gru"))
    rng = np.random.default_rng(8)
    pool = model.stream_pool(16)
    ids = [pool.open() for _ in range(16)]
    alone = {sid: model.stream() for sid in ids}
    for step in range(6):
        chosen = ids if step % 2 == 0 else ids[3:11]  # all, then a run of slots
        frames = {sid: rng.standard_normal((1, 1, 1)).astype(np.float32) for sid in chosen}
        out = pool.step(frames)
        for sid, chunk in frames.items():
            np.testing.assert_allclose(out[sid], alone[sid].step(chunk), atol=1e-6, rtol=0)


def test_describe_shows_the_program():
    model = lstminfer.load(models.path("adding_lstm"))
    text = model.describe()
    assert "compiled program" in text and "vanished (a view)" in text and "fused into" in text


# ------------------------------------------------------------ subgraph bodies and typed ops

KERAS = __import__("pathlib").Path(__file__).parent / "data" / "keras"


@pytest.mark.parametrize("batch,time", [(1, 30), (4, 9)])
def test_loop_body_runs_as_one_program(batch, time):
    """tf2onnx's Keras GRU is a Loop whose body reads the weights it carries unchanged: they are
    compiled in, the body's MatMuls become dense instructions and no node is left to NumPy; one
    program serves every iteration and every later call."""
    path = str(KERAS / "gru_reset_after_seq.onnx")
    model, sess = lstminfer.load(path), ort_session(path)
    x = np.random.default_rng(9).standard_normal((batch, time, 5)).astype(np.float32)
    for _ in range(3):
        np.testing.assert_allclose(model.run(None, {"x": x} if "x" in model.input_names else
                                             {model.input_names[0]: x})[0],
                                   sess.run(None, {sess.get_inputs()[0].name: x})[0], atol=TOL, rtol=TOL)
    (body,) = model._plan.bodies
    (program,) = body.programs.compiled()
    assert "falls back" not in program.text and program.text.count("C dense") == 2, program.text
    assert "body '" in model.describe()


TYPED_BINARY = ["Add", "Sub", "Mul", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Max", "Min"]
NUMERIC = [np.int32, np.int64, np.float64]
ONNX_TYPE = {np.dtype(np.bool_): onnx.TensorProto.BOOL, np.dtype(np.int32): onnx.TensorProto.INT32,
             np.dtype(np.int64): onnx.TensorProto.INT64, np.dtype(np.float32): onnx.TensorProto.FLOAT,
             np.dtype(np.float64): onnx.TensorProto.DOUBLE}


def _one_node(op, feeds: dict, **attrs):
    names = list(feeds)
    graph = oh.make_graph([oh.make_node(op, names, ["y"], **attrs)], "g",
                          [oh.make_tensor_value_info(n, ONNX_TYPE[np.asarray(v).dtype], list(np.shape(v)))
                           for n, v in feeds.items()],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _values(draw, shape, dtype):
    if dtype == np.bool_:
        return np.asarray(draw(hnp.arrays(np.bool_, shape)))
    return np.asarray(draw(hnp.arrays(dtype, shape, elements=st.integers(-50, 50))), dtype=dtype)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4))
def test_typed_elementwise_matches_the_plan(data, shapes):
    op = data.draw(st.sampled_from(TYPED_BINARY + ["And", "Or", "Xor", "Cast", "Not", "Neg"]))
    if op in ("And", "Or", "Xor", "Not"):
        dtype = np.bool_
    else:
        dtype = data.draw(st.sampled_from(NUMERIC + ([np.bool_, np.float32] if op == "Cast" else [])))
    a = _values(data.draw, shapes.input_shapes[0], dtype)
    feeds = {"a": a}
    attrs = {}
    if op == "Cast":
        target = data.draw(st.sampled_from(list(ONNX_TYPE)))
        attrs["to"] = ONNX_TYPE[target]
    elif op not in ("Not", "Neg"):
        feeds["b"] = _values(data.draw, shapes.input_shapes[1], dtype)
    model = lstminfer.load(_one_node(op, feeds, **attrs))
    assert "C elementwise" in program_text(model, feeds)
    got = model.run(None, feeds)[0]
    want = plan_outputs(model, feeds)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_big_arenas_are_not_kept():
    """A very long sequence's scratch memory is freed after the call; a short one's, or a large
    one's within the process budget (a batch through convolutions), is kept for the next."""
    model = lstminfer.load(models.path("adding_lstm"))
    rng = np.random.default_rng(10)
    for time, kept in ((5, 1), (150_000, 1), (600_000, 0)):  # Y alone: 19 MB, 77 MB
        feeds = bundled_feeds(model, rng, 1, time)
        model.run(None, feeds)
        program = model._programs.find([feeds[n] for n in model.input_names])
        assert program.kept_arenas() == kept, time


def test_describe_names_the_nodes_left_to_numpy():
    nodes = [oh.make_node("NonZero", ["x"], ["nz"], name="where_nonzero")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [6])],
                          [oh.make_tensor_value_info("nz", onnx.TensorProto.INT64, None)])
    model = lstminfer.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    assert "'where_nonzero' (NonZero): falls back: its numpy kernel" in program_text(model, {"x": np.ones(6, np.float32)})


def test_signatures_compile_only_while_programs_pay():
    model = lstminfer.load(models.path("forecast_gru"))
    rng = np.random.default_rng(11)
    programs = model._programs
    feeds = bundled_feeds(model, rng, 1, 3)
    model.run(None, feeds)
    assert programs.find([feeds[n] for n in model.input_names]) is not None  # on first sight
    # every call a new length: after a few compiles that are never used again, compiling stops
    # and the plan runs them (with the same numbers); used programs earn new compiles
    for time in range(4, 40):
        feeds = bundled_feeds(model, rng, 1, time)
        got = model.run(None, feeds)
        for g, p in zip(got, plan_outputs(model, feeds)):
            np.testing.assert_allclose(g, p, atol=1e-6, rtol=0)
    assert len(programs.compiled()) == 4
    for _ in range(30):
        model.run(None, feeds)  # not compiled: the plan
    assert len(programs.compiled()) == 4
    old = bundled_feeds(model, rng, 1, 3)
    for _ in range(16):
        model.run(None, old)
    model.run(None, bundled_feeds(model, rng, 1, 50))
    assert len(programs.compiled()) == 5


def test_signatures_share_the_head_weights():
    """Each signature's program reads the same laid-out head weights (a big vocabulary head is
    copied once per model, not once per sequence length)."""
    model = lstminfer.load(models.path("adding_lstm"))
    rng = np.random.default_rng(12)
    for time in (1, 5, 9):
        model.run(None, bundled_feeds(model, rng, 2, time))
    assert len(model._programs.compiled()) == 3
    assert len([k for k in model._programs._shared if k[0] == "dense"]) == 1


# ------------------------------------------------------------ the instructions' reach, checked once


F32 = np.dtype(np.float32)


def _copy_program(runtime, instructions, arena_bytes, n=4, out_from=None, direct=False):
    """A hand-built program over one float32 feed of ``n`` values, its output ``n`` floats copied
    from ``out_from`` (the arena's start by default) or written in place (``direct``)."""
    ARENA = runtime.BASE_ARENA
    src = out_from if out_from is not None else (ARENA, 0)
    copy = None if direct else runtime.OutCopy(src, (ARENA, 0), (), (), (), 4 * n)
    return runtime.Program(((F32, (n,)),), tuple(instructions), (((n,), F32, copy, None, direct),), arena_bytes, ())


def test_hand_built_program_runs_within_its_bases():
    runtime = pytest.importorskip("lstminfer._native._runtime")
    x = np.arange(4, dtype=np.float32)
    neg = runtime.Unary((1, 0), (runtime.BASE_ARENA, 0), 4, runtime.UNARY_CODES["Neg"])
    program = _copy_program(runtime, [neg], 16)
    np.testing.assert_array_equal(program.run([x])[0], -x)
    direct = _copy_program(runtime, [runtime.Copy((1, 0), (runtime.BASE_OUTPUT0, 0), (2,), (8,), (8,), 8)], 0,
                           direct=True)  # two 8-byte runs of the feed straight into the output
    np.testing.assert_array_equal(direct.run([x])[0], x)


def test_program_refuses_instructions_reaching_outside_their_base():
    runtime = pytest.importorskip("lstminfer._native._runtime")
    ARENA, OUT0, ABS = runtime.BASE_ARENA, runtime.BASE_OUTPUT0, runtime.BASE_ABSOLUTE
    neg = runtime.UNARY_CODES["Neg"]
    ids = np.zeros(3, np.int32)  # a constant (ABSOLUTE): never checked
    cases = [  # (instructions, arena bytes, the error)
        ([runtime.Unary((1, 0), (ARENA, 0), 4, neg)], 8, r"Unary writes arena bytes \[0, 16\) outside its 8 bytes"),
        ([runtime.Unary((1, 8), (ARENA, 0), 4, neg)], 16, r"Unary reads feed 0 bytes \[8, 24\) outside its 16 bytes"),
        ([runtime.Copy((1, 0), (ARENA, 60), (4,), (4,), (4,), 4)], 64, r"Copy writes arena bytes \[60, 76\)"),
        ([runtime.Copy((1, 12), (ARENA, 0), (4,), (-4,), (4,), 4)], 64, None),  # reversed, within the feed
        ([runtime.Copy((1, 8), (ARENA, 0), (4,), (-4,), (4,), 4)], 64, r"Copy reads feed 0 bytes \[-4, 12\)"),
        ([runtime.Binary((1, 0), (1, 0), (ARENA, 0), (2, 2), (8, 4), (0, 4), (8, 4), runtime.BINARY_CODES["Add"])],
         64, None),
        ([runtime.Binary((1, 0), (1, 4), (ARENA, 0), (2, 2), (8, 4), (8, 4), (8, 4), runtime.BINARY_CODES["Add"])],
         64, r"Binary reads feed 0 bytes \[4, 20\)"),
        ([runtime.Softmax((1, 0), (ARENA, 0), 2, 4)], 64, r"Softmax reads feed 0 bytes \[0, 32\)"),
        ([runtime.Dense((1, 0), 2, 2, 12, np.ones((2, 3) if 3 >= runtime.DENSE_ROWS_FROM else (3, 2), np.float32), None,
                        (ARENA, 0), 3)], 64,
         r"Dense reads feed 0 bytes \[0, 20\)"),
        ([runtime.Typed(runtime.TYPED_OPS["Cast"], (1, 0), 3, None, 3, (ARENA, 0), 4, (4,), (4,), (4,), (8,))], 16,
         r"Typed writes arena bytes \[0, 32\) outside its 16 bytes"),
        ([runtime.GatherRows((1, 0), 2, 8, (ABS, _address(ids)), 3, 4, (ARENA, 0), 8, (), (), (), 8)], 16,
         r"GatherRows writes arena bytes \[0, 24\)"),  # 3 rows of 8 bytes
        ([runtime.GatherRows((1, 0), 4, 4, (ABS, _address(ids)), 3, 4, (ARENA, 0), 8, (), (), (), 8)], 64,
         r"GatherRows reads feed 0 bytes \[0, 20\)"),  # 4 overlapping rows of 8 bytes, 4 apart
        ([runtime.Unary((1, 0), (OUT0, 0), 4, neg)], 64, r"Unary writes output 0 bytes \[0, 16\) outside its 0 bytes"),
        ([runtime.Unary((2, 0), (ARENA, 0), 4, neg)], 64, r"Unary reads feed 1 bytes .* outside its 0 bytes"),
        ([runtime.Unary((ARENA, 0), (1, 0), 4, neg)], 64, r"Unary writes feed 0, the caller's"),
        ([runtime.Unary((ABS, _address(np.zeros(4, np.float32))), (ARENA, 0), 4, neg)], 64, None),  # constants: kept
    ]
    for instructions, arena_bytes, error in cases:
        if error is None:
            _copy_program(runtime, instructions, arena_bytes)
            continue
        with pytest.raises(ValueError, match=error):
            _copy_program(runtime, instructions, arena_bytes)
    with pytest.raises(ValueError, match=r"OutCopy reads arena bytes \[0, 16\) outside its 8 bytes"):
        _copy_program(runtime, [], 8)
    with pytest.raises(ValueError, match=r"OutCopy writes output 0 bytes \[0, 32\) outside its 16 bytes"):
        runtime.Program(((F32, (4,)),), (), (((4,), F32, runtime.OutCopy((1, 0), (ARENA, 0), (2,), (0,), (16,), 16),
                                              None, False),), 0, ())
    strided = ((F32, (3, 2), None, (-8, 4)),)  # element 0 is the last row's first: rows at -16, -8, 0
    copy = runtime.OutCopy((1, -16), (ARENA, 0), (), (), (), 24)
    runtime.Program(strided, (), (((3, 2), F32, copy, None, False),), 0, ())
    with pytest.raises(ValueError, match=r"OutCopy reads feed 0 bytes \[-12, 12\) outside its 24 bytes"):
        copy = runtime.OutCopy((1, -12), (ARENA, 0), (), (), (), 24)
        runtime.Program(strided, (), (((3, 2), F32, copy, None, False),), 0, ())


def test_recurrent_instruction_is_bounded_by_its_kernel_sizes():
    runtime = pytest.importorskip("lstminfer._native._runtime")
    from lstminfer.program_compiler import _kernel_capsule

    model = lstminfer.load(models.path("adding_lstm"))
    core = next(s.kernel for s in model._plan.steps if s.node.op_type == "LSTM")
    I, D, H, lstm = core.call_sizes
    assert lstm and D == 1
    T, B, ARENA = 3, 1, runtime.BASE_ARENA

    def program(x_shape, arena_bytes):
        rec = runtime.Recurrent(core, _kernel_capsule(), T, B, (1, 0), None, None, (0, 0), None, (0, 0), (ARENA, 0),
                                (D * B * H, B * H, H), (ARENA, T * H * 4), (ARENA, (T + 1) * H * 4), (B * H, H))
        copy = runtime.OutCopy((ARENA, 0), (ARENA, 0), (), (), (), T * H * 4)
        return runtime.Program(((F32, x_shape),), (rec,), (((T, D, B, H), F32, copy, None, False),), arena_bytes, ())

    x = np.random.default_rng(13).standard_normal((T, B, I)).astype(np.float32)
    y = program((T, B, I), (T + 2) * H * 4).run([x])[0]
    assert y.shape == (T, D, B, H) and np.all(np.abs(y) < 1)
    with pytest.raises(ValueError, match=rf"Recurrent writes arena bytes \[{(T + 1) * H * 4}, {(T + 2) * H * 4}\)"):
        program((T, B, I), (T + 2) * H * 4 - 1)
    with pytest.raises(ValueError, match=rf"Recurrent reads feed 0 bytes \[0, {T * B * I * 4}\)"):
        program((T - 1, B, I), (T + 2) * H * 4)
    with pytest.raises(ValueError, match="Y_c for an LSTM"):
        runtime.Recurrent(core, _kernel_capsule(), T, B, (1, 0), None, None, (0, 0), None, (0, 0), (ARENA, 0),
                          (D * B * H, B * H, H), (ARENA, 0), None, (B * H, H))


def test_instructions_refuse_counts_and_codes_out_of_range():
    runtime = pytest.importorskip("lstminfer._native._runtime")
    ARENA = runtime.BASE_ARENA
    with pytest.raises(ValueError, match="Unary"):
        runtime.Unary((1, 0), (ARENA, 0), -1, runtime.UNARY_CODES["Neg"])
    with pytest.raises(ValueError, match="Unary"):
        runtime.Unary((1, 0), (ARENA, 0), 4, 99)
    with pytest.raises(ValueError, match="Binary"):
        runtime.Binary((1, 0), (1, 0), (ARENA, 0), (4,), (4,), (4,), (4,), 99)
    with pytest.raises(ValueError, match="Typed"):
        runtime.Typed(99, (1, 0), 3, None, 3, (ARENA, 0), 3, (4,), (4,), (4,), (4,))
    with pytest.raises(ValueError, match="Typed"):
        runtime.Typed(0, (1, 0), 7, None, 3, (ARENA, 0), 3, (4,), (4,), (4,), (4,))
    with pytest.raises(ValueError, match="a dim of -2"):
        runtime.Copy((1, 0), (ARENA, 0), (-2,), (4,), (4,), 4)
    with pytest.raises(ValueError, match="Softmax"):
        runtime.Softmax((1, 0), (ARENA, 0), 2, 0)
    with pytest.raises(ValueError, match="GatherRows"):
        runtime.GatherRows((1, 0), -1, 4, (1, 0), 1, 4, (ARENA, 0), 4, (), (), (), 4)
    with pytest.raises(ValueError, match="PyCall"):
        runtime.PyCall(None, (("view", (1, 0), (4,), (4,), F32),), 1, (), (), None, None)
    with pytest.raises(TypeError, match="PyCall"):
        runtime.PyCall(None, (("ref", (1, 0), (4,), (4,), "float32"),), 1, (), (), None, None)
    with pytest.raises(ValueError, match="aliases feed 3"):
        runtime.Program(((F32, (4,)),), (), (((4,), F32, runtime.OutCopy((1, 0), (ARENA, 0), (), (), (), 16),
                                              ("feed", 3), False),), 0, ())


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 11), depth=st.integers(1, 70), outputs=st.integers(1, 130), with_bias=st.booleans(),
       pad=st.integers(0, 3), seed=st.integers(0, 2 ** 31 - 1))
def test_the_dense_instruction_matches_float64_on_any_shape(rows, depth, outputs, with_bias, pad, seed):
    """li_dense_rows (the heads' routine): row blocks with a partial last block, output blocks with
    masked tails, few outputs (dot products); nothing written past ``out``."""
    from lstminfer._native import _runtime

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, depth + pad)).astype(np.float32)[:, :depth]
    weights = rng.standard_normal((depth, outputs)).astype(np.float32)
    bias = rng.standard_normal(outputs).astype(np.float32) if with_bias else None
    laid_out = weights if outputs >= _runtime.DENSE_ROWS_FROM else np.ascontiguousarray(weights.T)
    guarded = np.full((rows + 1, outputs), np.nan, np.float32)
    _runtime.dense(np.ascontiguousarray(a), laid_out, bias, guarded[:rows])
    expected = a.astype(np.float64) @ weights + (bias if with_bias else 0.0)
    np.testing.assert_allclose(guarded[:rows], expected, rtol=1e-5, atol=1e-5 * np.sqrt(depth))
    assert np.isnan(guarded[rows]).all()
    for r in range(rows):  # a row's bits do not depend on the rows beside it (a stream's step and a batch)
        alone = np.empty((1, outputs), np.float32)
        _runtime.dense(np.ascontiguousarray(a[r:r + 1]), laid_out, bias, alone)
        np.testing.assert_array_equal(alone[0], guarded[r])


# ------------------------------------------------------------ the cache of programs

def test_more_signatures_in_turn_than_kept_stop_compiling_and_a_new_workload_still_compiles():
    """48 batch sizes in turn (the cache keeps 32): once full, no program used a moment ago is dropped
    for the next size, so compiling stops (LRU alone would compile on every few calls, for ever) while
    every call still gives the plan's numbers; once the workload changes to other sizes, the old
    programs have gone idle and the new sizes get theirs."""
    from lstminfer.program import _MAX_PROGRAMS

    model = lstminfer.load(models.path("adding_lstm"))
    programs = model._programs
    rng = np.random.default_rng(11)
    feeds = {b: bundled_feeds(model, rng, b, 3) for b in range(1, 49)}
    for _ in range(80):  # compiling is paced by reuse (``_worth_compiling``): the cache fills over rounds
        for b in range(1, 49):
            model.run(None, feeds[b])
        if len(programs.compiled()) == _MAX_PROGRAMS:
            break
    assert len(programs.compiled()) == _MAX_PROGRAMS
    for b in range(1, 49):  # a round on the full cache
        model.run(None, feeds[b])
    compiled = programs._compiles
    for _ in range(6):
        for b in rng.permutation(np.arange(1, 49)):
            got = model.run(None, feeds[int(b)])
            for g, want in zip(got, plan_outputs(model, feeds[int(b)])):
                np.testing.assert_allclose(g, want, rtol=TOL, atol=TOL)
    assert programs._compiles == compiled, "signatures in turn kept compiling"
    new_sizes = range(60, 70)
    for _ in range(40):
        for b in new_sizes:
            model.run(None, bundled_feeds(model, rng, b, 3))
    kept = {sig[0][1][0] for sig in programs._by_signature}  # the batch size of the first feed
    assert set(new_sizes) <= kept, f"the new workload's sizes got no programs: {sorted(kept)}"
