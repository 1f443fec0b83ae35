"""Stream and StreamPool: chunked runs equal whole-sequence runs; pools isolate streams."""
import threading

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

import lstminfer
import lstminfer.models
from lstminfer import InvalidArgumentError, InvalidInputError, NotStreamableError
from lstminfer.reference import GATES

I, H, HEAD = 3, 5, 2
TOL = 1e-6


def recurrent_model(op="LSTM", layout=0, direction="forward", head=True, state_outputs=True, seed=0):
    """x -> op -> (Squeeze, Transpose) -> MatMul+Add head; also Y_h (a state output)."""
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    inits = [nh.from_array(rng.standard_normal((D, G * H, I)).astype(np.float32) * 0.5, "W"),
             nh.from_array(rng.standard_normal((D, G * H, H)).astype(np.float32) * 0.5, "R"),
             nh.from_array(rng.standard_normal((D, 2 * G * H)).astype(np.float32) * 0.1, "B")]
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    nodes = [oh.make_node(op, ["x", "W", "R", "B"], outs, hidden_size=H, direction=direction,
                          layout=layout, name="rec")]
    x_shape = ["T", "N", I] if layout == 0 else ["N", "T", I]
    outputs = []
    if head:
        # Y [T, D, N, H] -> [T, N, D*H] (layout 0); Y [N, T, D, H] -> [N, T, D*H] (layout 1)
        if layout == 0:
            nodes.append(oh.make_node("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]))
        else:
            nodes.append(oh.make_node("Identity", ["Y"], ["Yt"]))
        inits.append(nh.from_array(np.array([0, 0, D * H], np.int64), "flat"))
        inits.append(nh.from_array(rng.standard_normal((D * H, HEAD)).astype(np.float32), "Wh"))
        inits.append(nh.from_array(rng.standard_normal(HEAD).astype(np.float32), "bh"))
        nodes += [oh.make_node("Reshape", ["Yt", "flat"], ["Yr"]),
                  oh.make_node("MatMul", ["Yr", "Wh"], ["Ym"]),
                  oh.make_node("Add", ["Ym", "bh"], ["Ya"]),
                  oh.make_node("Tanh", ["Ya"], ["out"])]
        outputs.append(oh.make_tensor_value_info("out", TP.FLOAT, None))
    else:
        outputs.append(oh.make_tensor_value_info("Y", TP.FLOAT, None))
    if state_outputs:
        outputs.append(oh.make_tensor_value_info("Y_h", TP.FLOAT, None))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, x_shape)], outputs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


MODELS = {(op, layout): lstminfer.load(recurrent_model(op, layout)) for op in GATES for layout in (0, 1)}


def whole_output(model, x, name="out"):
    return model.run([name], {"x": x})[0]


def time_chunks(x, axis, cuts):
    bounds = [0] + sorted(set(cuts)) + [x.shape[axis]]
    return [np.take(x, range(a, b), axis=axis) for a, b in zip(bounds, bounds[1:]) if b > a]


@st.composite
def chunkings(draw):
    T = draw(st.integers(1, 12))
    cuts = draw(st.lists(st.integers(1, max(T - 1, 1)), max_size=5)) if T > 1 else []
    return T, cuts


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(sorted(MODELS)), chunking=chunkings(), seed=st.integers(0, 2**16))
def test_chunked_steps_equal_whole_sequence(key, chunking, seed):
    model, (T, cuts) = MODELS[key], chunking
    layout = key[1]
    x = np.random.default_rng(seed).standard_normal((T, 1, I) if layout == 0 else (1, T, I)).astype(np.float32)
    s = model.stream()
    got = np.concatenate([s.step(c) for c in time_chunks(x, layout, cuts)], axis=layout)
    np.testing.assert_allclose(got, whole_output(model, x), atol=TOL, rtol=0)
    # The carried state is the whole run's final state.
    np.testing.assert_allclose(s.state["Y_h"], whole_output(model, x, "Y_h"), atol=TOL, rtol=0)


def test_state_outputs_are_not_returned_and_reset_restarts():
    model = MODELS[("GRU", 0)]
    x = np.random.default_rng(0).standard_normal((4, 1, I)).astype(np.float32)
    s = model.stream()
    first = s.step(x)
    assert isinstance(first, np.ndarray)  # "out" only: Y_h is a state output
    assert not np.allclose(s.step(x), first)
    s.reset()
    np.testing.assert_array_equal(s.step(x), first)


def test_bundled_adding_lstm_streams_with_its_h0_c0_paired():
    model = lstminfer.load(lstminfer.models.path("adding_lstm"))
    rng = np.random.default_rng(1)
    x = rng.random((1, 30, 2), dtype=np.float32)
    h0 = rng.standard_normal((1, 1, 32)).astype(np.float32)
    c0 = rng.standard_normal((1, 1, 32)).astype(np.float32)
    y, h_n, c_n = model.run(None, {"x": x, "h0": h0, "c0": c0})
    s = model.stream()
    s.set_state({"h0": h0, "c0": c0})
    got = np.concatenate([s.step(c) for c in time_chunks(x, 1, [1, 2, 17])], axis=1)
    np.testing.assert_allclose(got, y, atol=TOL, rtol=0)
    np.testing.assert_allclose(s.state["h_n"], h_n, atol=TOL, rtol=0)
    np.testing.assert_allclose(s.state["c_n"], c_n, atol=TOL, rtol=0)


def _torch_models():
    """tests/torch_models.py, or a skip: only the tests that export with torch need it (the rest run
    without torch, e.g. on aarch64 under tools/aarch64_check.sh)."""
    return pytest.importorskip("torch_models", reason="torch is not installed")


@settings(max_examples=10, deadline=None)
@pytest.mark.parametrize("hidden", [8, 16])  # 16: the batch-1 small-H step (AVX-512); 8: a padded vector
@given(chunking=chunkings(), seed=st.integers(0, 2**16))
def test_pytorch_two_layer_lstm_with_h0_c0(hidden, chunking, seed):
    spec = _torch_models().RecurrentSpec("LSTM", num_layers=2, state_io=True, hidden_size=hidden)
    model = _torch_model(spec)
    T, cuts = chunking
    feeds = spec.make_inputs(np.random.default_rng(seed), 1, T)
    y, h_n, c_n = model.run(None, feeds)
    s = model.stream(state={"h0": feeds["h0"], "c0": feeds["c0"]})
    got = np.concatenate([s.step(c) for c in time_chunks(feeds["x"], 0, cuts)], axis=0)
    np.testing.assert_allclose(got, y, atol=TOL, rtol=0)
    # h_n stacks the layers' final states, in the order the carried state keys list them.
    h_keys = [slot.key for slot in s._program.slots if slot.kind == "h"]
    np.testing.assert_allclose(np.concatenate([s.state[k] for k in h_keys]), h_n, atol=TOL, rtol=0)


def _torch_model(spec, exporter="torchscript", opset=17):
    return lstminfer.load(_torch_models().export(spec, exporter, opset))


def test_bidirectional_and_time_mixing_models_are_rejected_naming_the_node():
    with pytest.raises(NotStreamableError, match=r"node 'rec' \(LSTM\).*bidirectional"):
        lstminfer.load(recurrent_model(direction="bidirectional")).stream()
    with pytest.raises(NotStreamableError, match=r"node 'rec' \(GRU\).*reverse"):
        lstminfer.load(recurrent_model("GRU", direction="reverse")).stream_pool(4)
    # A reduction over time after the recurrent layer.
    proto = recurrent_model("RNN", head=False, state_outputs=False)
    proto.graph.node.append(oh.make_node("ReduceMean", ["Y"], ["m"], axes=[0], keepdims=1, name="pool_time"))
    proto.graph.output[0].CopyFrom(oh.make_tensor_value_info("m", TP.FLOAT, None))
    with pytest.raises(NotStreamableError, match=r"node 'pool_time' \(ReduceMean\).*time axis"):
        lstminfer.load(proto).stream()
    # Softmax over the time axis.
    proto = recurrent_model("RNN", head=False, state_outputs=False)
    proto.graph.node.append(oh.make_node("Softmax", ["Y"], ["p"], axis=0, name="over_time"))
    proto.graph.output[0].CopyFrom(oh.make_tensor_value_info("p", TP.FLOAT, None))
    with pytest.raises(NotStreamableError, match=r"node 'over_time' \(Softmax\)"):
        lstminfer.load(proto).stream()


def test_info_reports_streamability_from_the_analysis(tmp_path):
    from lstminfer.summary import format_info

    proto = recurrent_model("RNN", head=False, state_outputs=False)
    proto.graph.node.append(oh.make_node("ReduceMax", ["Y"], ["m"], axes=[0], name="pool_time"))
    proto.graph.output[0].CopyFrom(oh.make_tensor_value_info("m", TP.FLOAT, None))
    text = format_info(lstminfer.load(proto))
    assert "streamable: no" in text and "pool_time" in text
    assert "streamable: yes" in format_info(MODELS[("LSTM", 0)])


def test_save_restore_round_trip_and_wrong_model():
    model = MODELS[("LSTM", 1)]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, I)).astype(np.float32)
    s = model.stream()
    s.step(x[:, :4])
    blob = s.save()
    restored = model.stream(state=blob)
    np.testing.assert_array_equal(restored.step(x[:, 4:]), s.step(x[:, 4:]))
    other = lstminfer.load(recurrent_model("LSTM", 1, seed=1))  # same shapes, other weights
    with pytest.raises(InvalidInputError, match="different model"):
        other.stream(state=blob)
    with pytest.raises(InvalidInputError, match="magic"):
        model.stream(state=b"not a state")
    pool = model.stream_pool(2)
    sid = pool.open(state=blob)
    np.testing.assert_array_equal(pool.save(sid), blob)


def run_alone(model, chunks):
    s = model.stream()
    return [s.step(c) for c in chunks]


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["open", "step", "close"]), st.integers(0, 7),
                              st.integers(1, 3)), min_size=1, max_size=25),
       seed=st.integers(0, 2**16))
def test_pool_interleavings_equal_each_stream_alone(ops, seed):
    model = MODELS[("LSTM", 0)]
    rng = np.random.default_rng(seed)
    pool = model.stream_pool(max_streams=4)
    open_ids, fed, got = [], {}, {}
    for op, pick, T in ops:
        if op == "open" and len(open_ids) < 4:
            sid = pool.open()
            open_ids.append(sid)
            fed[sid], got[sid] = [], []
        elif op == "close" and open_ids:
            pool.close(open_ids.pop(pick % len(open_ids)))
        elif op == "step" and open_ids:
            chosen = open_ids[: 1 + pick % len(open_ids)]
            frames = {sid: rng.standard_normal((T, 1, I)).astype(np.float32) for sid in chosen}
            out = pool.step(frames)
            assert set(out) == set(chosen)
            for sid in chosen:
                fed[sid].append(frames[sid])
                got[sid].append(out[sid])
    for sid in fed:
        for a, b in zip(got[sid], run_alone(model, fed[sid])):
            np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_pool_bad_input_leaves_other_streams_intact():
    model = MODELS[("GRU", 1)]
    pool = model.stream_pool(max_streams=2)
    a, b = pool.open(), pool.open()
    x = np.random.default_rng(0).standard_normal((1, 3, I)).astype(np.float32)
    pool.step({a: x, b: x})
    before = {sid: pool.state(sid) for sid in (a, b)}
    bad = [
        ({a: x, 999: x}, InvalidArgumentError, "unknown or closed"),
        ({a: x, b: x[:, :0]}, InvalidInputError, f"stream {b}: .*at least one time step"),
        ({a: x, b: x.astype(np.complex64)}, InvalidInputError, f"stream {b}: .*dtype"),
        ({a: x, b: x[..., :2]}, InvalidInputError, f"stream {b}: .*axis 2"),
        ({a: x[:, :2], b: x[..., :2]}, InvalidInputError, f"stream {b}: .*axis 2"),  # mixed T, one bad
        ({a: x, b: np.concatenate([x, x])}, InvalidInputError, f"stream {b}: .*batch 1"),
    ]
    for frames, error, message in bad:
        with pytest.raises(error, match=message):
            pool.step(frames)
    with pytest.raises(InvalidArgumentError, match="full"):
        pool.open()
    for sid in (a, b):
        for key, value in before[sid].items():
            np.testing.assert_array_equal(pool.state(sid)[key], value)
    pool.close(b)
    with pytest.raises(InvalidArgumentError, match="unknown or closed"):
        pool.step({b: x})
    np.testing.assert_array_equal(pool.state(a)["Y_h"], before[a]["Y_h"])
    c = pool.open()  # the freed slot is reused, and starts from zero state
    np.testing.assert_array_equal(pool.step({c: x})[c], model.stream().step(x))


def test_pool_ids_are_never_reused_and_only_exact_ints_find_a_stream():
    """Ids are generation << bits | slot: a closed stream's id stays unknown after its slot is
    reopened; the C step and the Python path agree on what finds a stream (exact ints; numpy
    integers through the Python path; 1.0, True, negative or huge ints never)."""
    model = BARE[("LSTM", 1)]
    pool = model.stream_pool(max_streams=3)
    assert pool._fast is not None
    x = np.random.default_rng(13).standard_normal((1, 1, I)).astype(np.float32)
    a, b = pool.open(), pool.open()
    pool.close(a)
    c = pool.open()  # a's slot again, under a new id
    assert len({a, b, c}) == 3 and len(pool) == 2
    for bad in (a, -1, 2 ** 70, 1.0 * b, b == b):
        with pytest.raises(InvalidArgumentError, match="unknown or closed"):
            pool.step({c: x, bad: x})
    out = pool.step({c: x, np.int64(b): x})  # both fresh: one step from the initial state
    for sid in (c, b):
        np.testing.assert_allclose(out[sid], model.stream().step(x), atol=TOL, rtol=0)
    ids = set()
    for _ in range(20):  # one slot reopened many times: every id new
        pool.close(c)
        c = pool.open()
        assert c not in ids and c not in (a, b)
        ids.add(c)
    np.testing.assert_array_equal(pool.step({c: x})[c], model.stream().step(x))


def test_threaded_pool_matches_streams_alone():
    model = MODELS[("RNN", 0)]
    pool = model.stream_pool(max_streams=8)
    rng = np.random.default_rng(5)
    inputs = [[rng.standard_normal((2, 1, I)).astype(np.float32) for _ in range(6)] for _ in range(8)]
    results, errors = {}, []

    def worker(chunks):
        try:
            sid = pool.open()
            results[sid] = (chunks, [pool.step({sid: c})[sid] for c in chunks])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
    for chunks, outs in results.values():
        for a, b in zip(outs, run_alone(model, chunks)):
            np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_state_errors_are_clear():
    s = MODELS[("LSTM", 0)].stream()
    with pytest.raises(InvalidArgumentError, match="unknown state name"):
        s.set_state({"nope": np.zeros(1)})
    with pytest.raises(InvalidInputError, match="expected shape"):
        s.set_state({"Y_h": np.zeros((1, 2, H), np.float32)})
    with pytest.raises(InvalidInputError, match="at least one time step"):
        s.step(np.zeros((0, 1, I), np.float32))


# -- fast paths: a bare recurrent node runs its kernel directly; checked chunk shapes are cached --

def bare_model(op="LSTM", layout=0, hidden=H, seed=0):
    """One recurrent node, state in/out like an exporter writes it: x, h0(, c0) -> Y, Y_h(, Y_c)."""
    rng = np.random.default_rng(seed)
    G = GATES[op]
    inits = [nh.from_array(rng.standard_normal((1, G * hidden, I)).astype(np.float32) * 0.5, "W"),
             nh.from_array(rng.standard_normal((1, G * hidden, hidden)).astype(np.float32) * 0.5, "R"),
             nh.from_array(rng.standard_normal((1, 2 * G * hidden)).astype(np.float32) * 0.1, "B")]
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = oh.make_node(op, ["x", "W", "R", "B", "", *states], outs, hidden_size=hidden, layout=layout,
                        name="rec")
    x_shape, s_shape = (["T", "N", I], [1, "N", hidden]) if layout == 0 else (["N", "T", I], ["N", 1, hidden])
    inputs = [oh.make_tensor_value_info("x", TP.FLOAT, x_shape)]
    inputs += [oh.make_tensor_value_info(n, TP.FLOAT, s_shape) for n in states]
    graph = oh.make_graph([node], "bare", inputs, [oh.make_tensor_value_info(n, TP.FLOAT, None) for n in outs],
                          inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


BARE = {(op, layout): lstminfer.load(bare_model(op, layout)) for op in GATES for layout in (0, 1)}


@settings(max_examples=25, deadline=None)
@given(key=st.sampled_from(sorted(BARE)), chunking=chunkings(), seed=st.integers(0, 2**16))
def test_bare_node_direct_path_equals_whole_run(key, chunking, seed):
    model, (T, cuts) = BARE[key], chunking
    op, layout = key
    s = model.stream()
    assert s._program.direct is not None  # the kernel is called without the executor
    x = np.random.default_rng(seed).standard_normal((T, 1, I) if layout == 0 else (1, T, I)).astype(np.float32)
    # Every chunk twice over: the second of equal shapes takes the cached-shape path.
    got = np.concatenate([s.step(c) for c in time_chunks(x, layout, cuts)], axis=layout)
    zeros = {n: np.zeros((1, 1, H), np.float32) for n in (["h0", "c0"] if op == "LSTM" else ["h0"])}
    whole = model.run(None, {"x": x, **zeros})
    np.testing.assert_allclose(got, whole[0], atol=TOL, rtol=0)
    for name, value in zip(["Y_h", "Y_c"], whole[1:]):
        np.testing.assert_allclose(s.state[name], value, atol=TOL, rtol=0)


def test_fast_path_still_checks_and_casts_and_outputs_are_the_callers():
    model = BARE[("LSTM", 0)]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 1, I)).astype(np.float32)
    s, ref = model.stream(), model.stream()
    s.step(x[:1])
    ref.step(x[:1])
    y = s.step(x[1:2])  # cached shape
    np.testing.assert_array_equal(y, ref.step(x[1:2]))
    y[...] = 1e6  # writing to an output must not reach the carried state
    np.testing.assert_array_equal(s.state["Y_h"], ref.state["Y_h"])
    np.testing.assert_allclose(s.step(x[2:3].astype(np.float64)), ref.step(x[2:3]), atol=TOL, rtol=0)  # cast
    s.step(np.asfortranarray(x[2:3]))  # strided: still accepted
    with pytest.raises(InvalidInputError, match="dtype"):
        s.step(x[:1].astype(np.complex64))
    with pytest.raises(InvalidInputError, match="batch 1"):
        s.step(np.concatenate([x[:1], x[:1]], axis=1))
    with pytest.raises(InvalidInputError, match="axis 2"):
        s.step(x[:1, :, :2])
    with pytest.raises(InvalidInputError, match="at least one time step"):
        s.step(x[:0])


@pytest.mark.parametrize("key", [("LSTM", 0), ("GRU", 1)])
def test_pool_any_order_and_subset_equals_streams_alone(key):
    model = BARE[key]
    layout = key[1]
    rng = np.random.default_rng(7)
    pool = model.stream_pool(max_streams=6)
    ids = [pool.open() for _ in range(6)]
    plans = [ids, ids[::-1], [ids[4], ids[1], ids[2]], ids[2:5], ids]  # contiguous, reversed, gathered
    fed = {sid: [] for sid in ids}
    for chosen in plans:
        frames = {sid: rng.standard_normal((2, 1, I) if layout == 0 else (1, 2, I)).astype(np.float32)
                  for sid in chosen}
        out = pool.step(frames)
        assert list(out) == chosen
        for sid in chosen:
            fed[sid].append((frames[sid], out[sid]))
            assert out[sid].flags.writeable
    for sid, steps in fed.items():
        alone = run_alone(model, [f for f, _ in steps])
        for (_, got), want in zip(steps, alone):
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_open_streams_cost_their_state_plus_a_small_constant():
    import tracemalloc

    model = lstminfer.load(bare_model("LSTM", hidden=64))
    state_bytes = 2 * 64 * 4
    model.stream()  # the program is built once per model, outside the count
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    streams = [model.stream() for _ in range(2000)]
    x = np.zeros((1, 1, I), np.float32)
    for s in streams:
        s.step(x)
    per_stream = (tracemalloc.get_traced_memory()[0] - before) / len(streams)
    tracemalloc.stop()
    assert per_stream < state_bytes + 600, per_stream


def test_pool_streams_cost_their_state_plus_a_small_constant():
    """10,000 open streams in one pool, each stepped once: state + ~65 B each (the slot buffers,
    the slot's open id and generation, the ids this test keeps); a step's batch buffers are
    reused, not kept per stream."""
    import tracemalloc

    model = lstminfer.load(bare_model("LSTM", hidden=64))
    state_bytes = 2 * 64 * 4
    model.stream()
    x = np.zeros((1, 1, I), np.float32)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pool = model.stream_pool(max_streams=10_000)
    ids = [pool.open() for _ in range(10_000)]
    for start in range(0, len(ids), 500):
        pool.step({sid: x for sid in ids[start:start + 500]})
    per_stream = (tracemalloc.get_traced_memory()[0] - before) / len(ids)
    tracemalloc.stop()
    assert per_stream < state_bytes + 150, per_stream


def test_kernel_path_checks_every_chunk_like_the_checked_path():
    """Stream.step hands chunks straight to the kernel, which checks dtype, rank, size and
    batch 1 itself; a model declaring batch 1 streams the same way."""
    free = BARE[("LSTM", 0)].stream()
    assert free._program.direct_into is not None
    fixed_model = bare_model("LSTM", 0)
    fixed_model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1  # x: [T, 1, I]
    fixed = lstminfer.load(fixed_model).stream()
    assert fixed._program.direct_into is not None
    rng = np.random.default_rng(9)
    two = rng.standard_normal((2, 1, I)).astype(np.float32)
    np.testing.assert_allclose(fixed.step(two), free.step(two), atol=TOL, rtol=0)
    with pytest.raises(InvalidInputError, match="batch 1"):
        free.step(rng.standard_normal((2, 2, I)).astype(np.float32))
    with pytest.raises(InvalidInputError, match="x"):
        fixed.step(rng.standard_normal((2, 2, I)).astype(np.float32))
    with pytest.raises(InvalidInputError, match="at least one time step"):
        free.step(rng.standard_normal((0, 1, I)).astype(np.float32))
    with pytest.raises(InvalidInputError):
        free.step(rng.standard_normal((2, 1, I + 1)).astype(np.float32))
    np.testing.assert_allclose(free.step(two.astype(np.float64)), fixed.step(two), atol=TOL, rtol=0)


def test_pool_fast_path_declines_bad_chunks_without_touching_states():
    model = BARE[("LSTM", 0)]
    pool = model.stream_pool(max_streams=3)
    assert pool._fast is not None  # a bare node: the whole step runs in C
    a, b = pool.open(), pool.open()
    rng = np.random.default_rng(11)
    good = {a: rng.standard_normal((1, 1, I)).astype(np.float32), b: rng.standard_normal((1, 1, I)).astype(np.float32)}
    pool.step(good)
    before = [pool.state(a), pool.state(b)]
    for bad in ({a: good[a], b: good[b][:, :, :2]}, {a: good[a], 99: good[b]},
                {a: good[a], b: np.repeat(good[b], 2, axis=1)}):  # feature size, unknown id, batch 2
        with pytest.raises((InvalidInputError, InvalidArgumentError)):
            pool.step(bad)
        for sid, state in zip((a, b), before):
            for key, value in pool.state(sid).items():
                np.testing.assert_array_equal(value, state[key])
    out = pool.step({a: good[a], b: good[b].astype(np.float64)})  # a cast the full path accepts
    assert out[a].dtype == np.float32


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_pool_reuses_its_output_only_when_no_row_is_held(backend):
    """The pool writes a step's outputs into the last step's buffer only when the caller holds
    none of its rows any more: rows still held keep their values, whoever holds them."""
    import gc
    import weakref

    model = lstminfer.load(bare_model("LSTM", 0), backend=backend)
    pool = model.stream_pool(max_streams=4)
    sids = [pool.open() for _ in range(4)]
    rng = np.random.default_rng(12)

    def frames():
        return {sid: rng.standard_normal((1, 1, I)).astype(np.float32) for sid in sids}

    first = pool.step(frames())
    kept = {sid: row.copy() for sid, row in first.items()}
    second = pool.step(frames())
    for sid in sids:
        np.testing.assert_array_equal(first[sid], kept[sid])
        assert not np.shares_memory(first[sid], second[sid])
    buffer = weakref.ref(second[sids[0]].base)
    del first, second
    gc.collect()
    third = pool.step(frames())
    if backend == "cython":  # the Numba kernel always writes a fresh Y
        assert third[sids[0]].base is buffer()
    held = third[sids[2]]  # one row is enough to keep the buffer from being written again
    value = held.copy()
    del third
    fourth = pool.step(frames())
    np.testing.assert_array_equal(held, value)
    assert not np.shares_memory(held, fourth[sids[2]])


@pytest.mark.parametrize("shape,axis", [((1, 1, 6, 4), 2), ((3, 1, 6, 4), 2), ((6, 2, 4), 0), ((2, 6), 1)])
def test_rows_by_stream_are_the_rows_as_views(shape, axis):
    """The pool's per-stream outputs (made in C when lstminfer._native._runtime is built) equal numpy's rows."""
    from lstminfer.streaming import _rows_by_stream

    y = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    sids = [7, 3, 11, 0, 5, 2]
    rows = _rows_by_stream(sids, y, axis)
    assert list(rows) == sids
    for i, sid in enumerate(sids):
        expected = np.take(y, [i], axis=axis)
        np.testing.assert_array_equal(rows[sid], expected)
        assert rows[sid].shape == expected.shape and rows[sid].dtype == y.dtype
        assert np.shares_memory(rows[sid], y)
    rows[3][...] = -1  # a stream's output is its own row, not its neighbours'
    assert (np.take(y, [1], axis=axis) == -1).all() and (np.take(y, [0], axis=axis) >= 0).all()


def test_c_rows_by_stream_declines_what_it_cannot_view():
    runtime = pytest.importorskip("lstminfer._native._runtime")
    y = np.zeros((1, 4, 3), np.float32)
    assert runtime.rows_by_stream([1, 2, 3], y, 1) is None  # 3 ids, 4 rows
    assert runtime.rows_by_stream([1, 2, 3, 4], y, 3) is None  # no such axis
    assert runtime.rows_by_stream([1, 2, 3, 4], [[0.0]], 0) is None  # not an array
    frozen = y.copy()
    frozen.flags.writeable = False
    assert runtime.rows_by_stream([1, 2, 3, 4], frozen, 1) is None
    assert set(runtime.rows_by_stream([1, 2, 3, 4], y, 1)) == {1, 2, 3, 4}


def test_c_slot_lookup_checks_the_sizes_it_trusts():
    """lookup_slots reads the pool's id array without bounds checks: it refuses an empty one and id
    widths whose mask would not fit (and finds open ids, exact ints only)."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    sid_at = np.array([-1, 1 << 2 | 1, -1, 3], np.int64)  # slot 1 holds id 5 (generation 1), slot 3 id 3
    assert runtime.lookup_slots(sid_at, 2, [5, 3]) == ([1, 3], False)
    assert runtime.lookup_slots(sid_at, 2, [3.0]) is None and runtime.lookup_slots(sid_at, 2, [1]) is None
    for ids, bits in ((np.zeros(0, np.int64), 2), (sid_at, 0), (sid_at, 63)):
        with pytest.raises(ValueError, match="lookup_slots"):
            runtime.lookup_slots(ids, bits, [1])


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", [0, 1])
def test_two_thread_pool_matches_streams_alone(op, layout):
    """threads=2: a pool step's batch is split across both cores (LSTM H=32 at 8+ rows: the
    fused one step, its groups claimed and stolen, the rows made meanwhile), for all streams,
    runs of them and scattered subsets (the Python path), T = 1 and 2; each stream's outputs
    equal its own Stream's, and rows a caller keeps are never written again."""
    hidden = 32
    model = lstminfer.load(bare_model(op, layout, hidden=hidden, seed=3), threads=2)
    alone_model = lstminfer.load(bare_model(op, layout, hidden=hidden, seed=3))
    pool = model.stream_pool(max_streams=40)
    sids = [pool.open() for _ in range(40)]
    alone = {sid: alone_model.stream() for sid in sids}
    rng = np.random.default_rng(21)
    kept = []
    for step, subset in enumerate([sids, sids[3:35], sids[::3], sids, sids[:9], sids]):
        T = 1 if step % 3 else 2
        shape = (T, 1, I) if layout == 0 else (1, T, I)
        frames = {sid: rng.standard_normal(shape).astype(np.float32) for sid in subset}
        out = pool.step(frames)
        for sid, x in frames.items():
            expected = alone[sid].step(x)
            np.testing.assert_allclose(out[sid], expected, atol=TOL, rtol=0)
            if sid == subset[0]:
                kept.append((out[sid], expected))
    for row, expected in kept:
        np.testing.assert_allclose(row, expected, atol=TOL, rtol=0)


# -- mixed chunk lengths in one pool step: one batched run per chunk shape --

def time_major(key):
    return key[1] == 0


@settings(max_examples=25, deadline=None)
@given(key=st.sampled_from([("bare",) + k for k in sorted(BARE)] + [("head",) + k for k in sorted(MODELS)]),
       rounds=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=6), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
def test_pool_mixed_lengths_equal_each_stream_alone(key, rounds, seed):
    """Each round steps the first len(lengths) streams, stream i by lengths[i] time steps: every
    output (one array, or a dict of outputs for the head models) and every state afterwards equal
    that stream stepped alone."""
    kind, op, layout = key
    model = (BARE if kind == "bare" else MODELS)[(op, layout)]
    rng = np.random.default_rng(seed)
    pool = model.stream_pool(max_streams=6)
    sids = [pool.open() for _ in range(6)]
    alone = {sid: model.stream() for sid in sids}
    for lengths in rounds:
        frames = {sid: rng.standard_normal((T, 1, I) if layout == 0 else (1, T, I)).astype(np.float32)
                  for sid, T in zip(sids, lengths)}
        out = pool.step(frames)
        assert list(out) == list(frames)
        for sid, x in frames.items():
            expected = alone[sid].step(x)
            if isinstance(expected, dict):
                assert set(out[sid]) == set(expected)
                for name in expected:
                    np.testing.assert_allclose(out[sid][name], expected[name], atol=TOL, rtol=0)
            else:
                np.testing.assert_allclose(out[sid], expected, atol=TOL, rtol=0)
    for sid in sids:
        for name, value in alone[sid].state.items():
            np.testing.assert_allclose(pool.state(sid)[name], value, atol=TOL, rtol=0)


def test_pool_mixed_lengths_scattered_and_unordered_with_state_inputs():
    """The bundled adding_lstm (h0/c0 paired) on scattered, reversed stream ids with T 1..4 mixed:
    the groups' slots are gathered, the answer keeps the caller's order."""
    model = lstminfer.load(lstminfer.models.path("adding_lstm"))
    pool = model.stream_pool(max_streams=8)
    sids = [pool.open() for _ in range(8)]
    alone = {sid: model.stream() for sid in sids}
    rng = np.random.default_rng(31)
    for chosen in (sids[::-2], sids[1:7], sids[::-1]):  # x: [batch, time, 2]
        frames = {sid: rng.standard_normal((1, 1 + i % 4, 2)).astype(np.float32) for i, sid in enumerate(chosen)}
        out = pool.step(frames)
        assert list(out) == chosen
        for sid, x in frames.items():
            np.testing.assert_allclose(out[sid], alone[sid].step(x), atol=TOL, rtol=0)


def test_pool_one_shape_step_keeps_the_c_path_after_mixed_steps():
    """A mixed step runs in Python (the C step declines it) and leaves the C step's shape alone; a
    one-shape step of another checked shape hands that shape to the C step, which then runs it."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    model = BARE[("LSTM", 0)]
    pool = model.stream_pool(max_streams=4)
    assert pool._fast is not None and pool.step == pool._fast.step
    sids = [pool.open() for _ in range(4)]
    rng = np.random.default_rng(41)

    def frames(lengths):
        return {sid: rng.standard_normal((T, 1, I)).astype(np.float32) for sid, T in zip(sids, lengths)}

    pool.step(frames([1, 1, 1, 1]))
    assert pool._fast.shape == (1, 1, I)
    pool.step(frames([1, 3, 1, 2]))
    assert pool._fast.shape == (1, 1, I) and {(1, 1, I), (2, 1, I), (3, 1, I)} <= pool._known_shapes
    pool.step(frames([2, 2, 2, 2]))  # a checked shape: the next such step runs in C
    assert pool._fast.shape == (2, 1, I)
    checked = []
    spy = runtime.PoolStep(pool._program.direct_into, lambda f: checked.append(f) or "checked", pool.lock,
                           pool._sid_at, pool._id_bits, pool._views, pool._slot_views, 1,
                           pool._output_axes["Y"], lambda sids, y: None)
    spy.shape = pool._fast.shape
    equal, mixed = frames([2, 2, 2, 2]), frames([2, 1, 2, 2])
    alone = model.stream(state=pool.save(sids[0]))
    out = spy.step(equal)
    assert checked == [] and list(out) == sids
    np.testing.assert_allclose(out[sids[0]], alone.step(equal[sids[0]]), atol=TOL, rtol=0)
    assert spy.step(mixed) == "checked" and checked == [mixed]


@pytest.mark.parametrize("lengths,masked", [([1, 2, 2, 2], True), ([1, 1, 1, 6], False), ([3, 1, 3, 2], True)])
def test_pool_mixed_lengths_pad_or_group_both_equal_streams_alone(monkeypatch, lengths, masked):
    """A mixed step pads to the longest chunk (one run, every recurrent layer given the lengths)
    while that at most doubles the steps run, else runs each length as its own batch; either way
    each stream equals it alone. A two-layer PyTorch LSTM (time-major, h0/c0 paired)."""
    from lstminfer.streaming import StreamProgram

    calls = []
    run_masked = StreamProgram.run_masked
    monkeypatch.setattr(StreamProgram, "run_masked",
                        lambda self, *a, **k: calls.append(a[2]) or run_masked(self, *a, **k))
    spec = _torch_models().RecurrentSpec("LSTM", num_layers=2, state_io=True)
    model = _torch_model(spec)
    pool = model.stream_pool(max_streams=4)
    sids = [pool.open() for _ in range(4)]
    alone = {sid: model.stream() for sid in sids}
    rng = np.random.default_rng(51)
    kept = []  # rows the caller holds: a later step never writes into them
    for _ in range(2):
        frames = {sid: spec.make_inputs(rng, 1, T)["x"] for sid, T in zip(sids[::-1], lengths)}
        out = pool.step(frames)
        for sid, x in frames.items():
            expected = alone[sid].step(x)
            np.testing.assert_allclose(out[sid], expected, atol=TOL, rtol=0)
            kept.append((out[sid], expected))
    assert [list(c) for c in calls] == ([lengths] * 2 if masked else [])
    for row, expected in kept:
        np.testing.assert_allclose(row, expected, atol=TOL, rtol=0)
    for sid in sids:
        for name, value in alone[sid].state.items():
            np.testing.assert_allclose(pool.state(sid)[name], value, atol=TOL, rtol=0)


def two_input_model():
    """x [T, N, 2] and z [T, N, 1] concatenated per step -> LSTM -> Y, and a per-step sum of x."""
    rng = np.random.default_rng(8)
    inits = [nh.from_array(rng.standard_normal((1, 4 * H, 3)).astype(np.float32) * 0.5, "W"),
             nh.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32) * 0.5, "R"),
             nh.from_array(np.array([2], np.int64), "feat")]
    nodes = [oh.make_node("Concat", ["x", "z"], ["xz"], axis=2),
             oh.make_node("LSTM", ["xz", "W", "R"], ["Y", "Y_h", "Y_c"], hidden_size=H),
             oh.make_node("ReduceSum", ["x", "feat"], ["xsum"], keepdims=1)]
    inputs = [oh.make_tensor_value_info("x", TP.FLOAT, ["T", "N", 2]),
              oh.make_tensor_value_info("z", TP.FLOAT, ["T", "N", 1])]
    outputs = [oh.make_tensor_value_info(n, TP.FLOAT, None) for n in ("Y", "xsum")]
    return oh.make_model(oh.make_graph(nodes, "two", inputs, outputs, inits), opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize("lengths", [[2, 1, 2], [1, 1, 5]])  # padded; grouped
def test_pool_mixed_lengths_two_inputs_dict_chunks_and_outputs(lengths):
    """Chunks as dicts of two inputs, outputs as dicts of two outputs, mixed lengths: each stream
    equals it alone; a chunk with a wrong feature size names its stream and input, and moves no state."""
    model = lstminfer.load(two_input_model())
    pool = model.stream_pool(max_streams=3)
    sids = [pool.open() for _ in range(3)]
    alone = {sid: model.stream() for sid in sids}
    rng = np.random.default_rng(9)
    for _ in range(2):
        frames = {sid: {"x": rng.standard_normal((T, 1, 2)).astype(np.float32),
                        "z": rng.standard_normal((T, 1, 1)).astype(np.float32)} for sid, T in zip(sids, lengths)}
        out = pool.step(frames)
        for sid, chunk in frames.items():
            expected = alone[sid].step(chunk)
            assert set(out[sid]) == {"Y", "xsum"} and out[sid]["Y"].shape == expected["Y"].shape
            for name in expected:
                np.testing.assert_allclose(out[sid][name], expected[name], atol=TOL, rtol=0)
    bad = {sids[0]: frames[sids[0]], sids[2]: {"x": frames[sids[2]]["x"], "z": frames[sids[2]]["z"][..., :0]}}
    before = [pool.state(sid) for sid in sids]
    with pytest.raises(InvalidInputError, match=f"stream {sids[2]}: input 'z'"):
        pool.step(bad)
    for sid, state in zip(sids, before):
        for name, value in state.items():
            np.testing.assert_array_equal(pool.state(sid)[name], value)


def test_pool_steps_of_changing_sizes_share_few_programs_and_equal_each_stream_alone():
    """A server's batches change size every step: above 16 streams each runs padded to a bucket
    size (extra rows copy the first stream's and are dropped), so 30 sizes compile a handful of
    programs; every output and state equals the stream stepped alone, mixed lengths included."""
    model = lstminfer.load(lstminfer.models.path("adding_lstm"))
    pool = model.stream_pool(max_streams=80)
    sids = [pool.open() for _ in range(80)]
    alone = {sid: model.stream() for sid in sids}
    in_python = []  # one-shape steps the C step handed to Python: only those compiling a bucket's program
    run_slots = pool._run_slots
    pool._run_slots = lambda slots, contiguous, stacked, lengths=None: (
        in_python.append(lengths is None), run_slots(slots, contiguous, stacked, lengths))[1]
    rng = np.random.default_rng(53)
    sizes = rng.permutation(np.arange(17, 77, 2))
    for i, size in enumerate(sizes):
        chosen = [sids[j] for j in rng.choice(80, size, replace=False)]
        lengths = [1] * size if i % 3 else [1 + k % 3 for k in range(size)]
        frames = {sid: rng.standard_normal((1, T, 2)).astype(np.float32) for sid, T in zip(chosen, lengths)}
        out = pool.step(frames)
        assert list(out) == chosen
        for sid, x in frames.items():
            np.testing.assert_allclose(out[sid], alone[sid].step(x), atol=TOL, rtol=0)
    for sid in sids:
        for name, value in alone[sid].state.items():
            np.testing.assert_allclose(pool.state(sid)[name], value, atol=TOL, rtol=1e-6)  # c grows to ~7 in 30 rounds
    if pool._fast is not None:  # the C step gathers scattered streams and pads them itself
        assert 0 < sum(in_python) <= 9 < len(sizes) * 2 // 3
    program = model._stream_program()
    assert program.direct is None  # a whole model: its programs, not the bare kernel
    buckets = {20, 24, 28, 32, 40, 48, 56, 64, 80}  # the sizes 17..75 run at
    assert 0 < len(program.programs.compiled()) <= len(buckets) + 3  # + the streams alone: batch 1, T 1..3
    masked = program._masked[1] if program._masked is not None else None
    assert masked is None or len(masked.compiled()) <= len(buckets)


def test_unpadded_batch_is_the_largest_size_at_most_n_that_runs_without_padding():
    from lstminfer.streaming import _bucket_rows

    pool = lstminfer.load(lstminfer.models.path("adding_lstm")).stream_pool(max_streams=4)
    for n in range(1, 2049):
        size = pool.unpadded_batch(n)
        assert size <= n and _bucket_rows(size) == size
        assert all(_bucket_rows(m) != m for m in range(size + 1, n + 1)), n
    assert [pool.unpadded_batch(n) for n in (16, 17, 21, 44, 100, 127, 128)] == [16, 16, 20, 40, 96, 112, 128]
