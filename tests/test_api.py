"""Public API: load, InferenceSession, run/predict/describe, feed validation, errors.

Uses ops of a private test domain, so it checks the importer and executor
independently of the op library.
"""
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

import lstminfer
from lstminfer.ops import register

DOMAIN = "test.lstminfer"
calls = {"Twice": 0}


@register("AddT", domain=DOMAIN)
def _add(node, ctx):
    return lambda a, b: (a + b,)


@register("Twice", domain=DOMAIN)
def _twice(node, ctx):
    def kernel(a):
        calls["Twice"] += 1
        return (a * 2, a * 3)

    return kernel


@register("PassThrough", domain=DOMAIN)
def _passthrough(node, ctx):
    return lambda a: (a,)


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset), oh.make_opsetid(DOMAIN, 1)])


def sample_model():
    """z = x + 3c + 2c ; y = x + 2c, where c is a constant (folded at load)."""
    return make_model(
        [
            oh.make_node("AddT", ["y", "t3"], ["z"], domain=DOMAIN),  # out of order on purpose
            oh.make_node("Twice", ["c"], ["t2", "t3"], domain=DOMAIN),
            oh.make_node("AddT", ["x", "t2"], ["y"], domain=DOMAIN),
        ],
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3])],
        [oh.make_tensor_value_info("z", TP.FLOAT, ["N", 3]), oh.make_tensor_value_info("y", TP.FLOAT, ["N", 3])],
        [oh.make_tensor("c", TP.FLOAT, [3], [1, 2, 3])],
    )


def test_load_accepts_path_bytes_and_proto(tmp_path, rng):
    proto = sample_model()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    c = np.array([1, 2, 3], np.float32)
    for source in (str(path), path, proto.SerializeToString(), proto):
        z, y = lstminfer.load(source).run(None, {"x": x})
        np.testing.assert_allclose(z, x + 5 * c, rtol=1e-6)
        np.testing.assert_allclose(y, x + 2 * c, rtol=1e-6)
    assert issubclass(lstminfer.InferenceSession, lstminfer.Model)  # onnxruntime's constructor order on top


def test_io_description_matches_onnxruntime_style():
    m = lstminfer.InferenceSession(sample_model().SerializeToString())
    (inp,) = m.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("x", ["N", 3], "tensor(float)")
    assert [o.name for o in m.get_outputs()] == ["z", "y"] == m.output_names
    assert m.input_names == ["x"]


def test_node_args_are_built_once_and_cannot_be_changed_through_what_they_return():
    """get_inputs()/get_outputs() hand out the NodeArgs built at load (a loop that calls them per run
    must not rebuild them): a new list each call, and a new shape list at each read, as onnxruntime's."""
    m = lstminfer.load(sample_model())
    first, second = m.get_inputs(), m.get_inputs()
    assert first == second and first is not second and first[0] is second[0]
    first.clear()
    first_shape = second[0].shape
    first_shape.append(99)
    assert second[0].shape == ["N", 3] and m.get_inputs()[0].shape == ["N", 3]
    with pytest.raises(AttributeError):
        second[0].name = "other"
    assert [o.name for o in m.get_outputs()] == ["z", "y"] and m.get_outputs()[0] is m.get_outputs()[0]
    assert lstminfer.NodeArg("x", ["N", 3], "tensor(float)") == second[0]
    assert hash(lstminfer.NodeArg("x", ("N", 3), "tensor(float)")) == hash(second[0])
    assert lstminfer.NodeArg("x", ["N", 4], "tensor(float)") != second[0]
    assert "shape=['N', 3]" in repr(second[0])


def test_run_output_selection_and_order(rng):
    m = lstminfer.load(sample_model())
    x = rng.standard_normal((2, 3)).astype(np.float32)
    z, y = m.run(None, {"x": x})
    y2, z2 = m.run(["y", "z"], {"x": x})
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(z, z2)
    with pytest.raises(lstminfer.InvalidArgumentError, match="unknown output name 'nope'"):
        m.run(["nope"], {"x": x})


def test_constants_are_folded_at_load():
    calls["Twice"] = 0
    m = lstminfer.load(sample_model())
    assert calls["Twice"] == 1
    m.run(None, {"x": np.zeros((1, 3), np.float32)})
    m.run(None, {"x": np.zeros((1, 3), np.float32)})
    assert calls["Twice"] == 1
    assert "Twice" not in m.describe()
    assert "AddT" in m.describe()


@pytest.mark.parametrize(
    "feeds, match",
    [
        ({"x": np.zeros((2, 3), np.float64)}, r"input 'x': wrong dtype: expected tensor\(float\), got tensor\(double\)"),
        ({"x": np.zeros(3, np.float32)}, r"input 'x': wrong rank: expected 2 .* got 1"),
        ({"x": np.zeros((2, 4), np.float32)}, r"input 'x': wrong size on axis 1: expected 3 .* got 4"),
        ({}, r"missing input 'x'"),
        ({"x": np.zeros((2, 3), np.float32), "q": 1}, r"unknown input name\(s\) \['q'\]"),
    ],
)
def test_bad_feeds_raise_clear_value_errors(feeds, match):
    m = lstminfer.load(sample_model())
    with pytest.raises(lstminfer.InvalidInputError, match=match) as info:
        m.run(None, feeds)
    assert isinstance(info.value, ValueError)


def test_predict_single_input_casts_same_kind(rng):
    m = lstminfer.load(sample_model())
    x = rng.standard_normal((2, 3))  # float64 on purpose: predict casts
    out = m.predict(x)
    assert set(out) == {"z", "y"}
    np.testing.assert_allclose(out["y"], x.astype(np.float32) + [2, 4, 6], rtol=1e-6)
    np.testing.assert_allclose(m.predict(x=x)["z"], out["z"])
    with pytest.raises(lstminfer.InvalidArgumentError):
        m.predict(x, x=x)


def test_predict_returns_single_output_array():
    m = lstminfer.load(
        make_model(
            [oh.make_node("PassThrough", ["a"], ["b"], domain=DOMAIN)],
            [oh.make_tensor_value_info("a", TP.INT64, [None])],
            [oh.make_tensor_value_info("b", TP.INT64, [None])],
        )
    )
    out = m.predict([1, 2, 3])
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, 2, 3])


def test_outputs_never_alias_inputs_or_constants():
    m = lstminfer.load(
        make_model(
            [oh.make_node("PassThrough", ["a"], ["b"], domain=DOMAIN),
             oh.make_node("PassThrough", ["k"], ["kk"], domain=DOMAIN)],
            [oh.make_tensor_value_info("a", TP.FLOAT, [2])],
            [oh.make_tensor_value_info("b", TP.FLOAT, [2]), oh.make_tensor_value_info("kk", TP.FLOAT, [1])],
            [oh.make_tensor("k", TP.FLOAT, [1], [7.0])],
        )
    )
    a = np.array([1.0, 2.0], np.float32)
    b, kk = m.run(None, {"a": a})
    b[0] = 99
    kk[0] = 99  # would corrupt the initializer if it aliased it
    assert a[0] == 1.0
    assert m.run(None, {"a": a})[1][0] == 7.0


def test_unsupported_op_names_node_domain_opset_and_where_the_supported_list_is():
    model = make_model(
        [oh.make_node("FancyOp", ["x"], ["y"], name="my_fancy")],
        [oh.make_tensor_value_info("x", TP.FLOAT, [1])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [1])],
    )
    with pytest.raises(lstminfer.UnsupportedModelError) as info:
        lstminfer.load(model)
    text = str(info.value)
    for part in ("my_fancy", "FancyOp", "ai.onnx", "opset 17", "'Supported ops' section of README.md"):
        assert part in text
    assert "\n" not in text and "Softplus" not in text  # one line; the list itself is in the docs


def test_unsupported_domain_and_opset():
    model = make_model(
        [oh.make_node("AddT", ["x", "x"], ["y"], domain="com.example")],
        [oh.make_tensor_value_info("x", TP.FLOAT, [1])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [1])],
    )
    model.opset_import.append(oh.make_opsetid("com.example", 1))
    with pytest.raises(lstminfer.UnsupportedModelError, match="com.example"):
        lstminfer.load(model)
    old = sample_model()
    old.opset_import[0].version = 5
    with pytest.raises(lstminfer.UnsupportedModelError, match="opset 5 is not supported"):
        lstminfer.load(old)


def test_unsupported_dtype_names_the_value():
    model = make_model(
        [oh.make_node("PassThrough", ["x"], ["y"], domain=DOMAIN)],
        [oh.make_tensor_value_info("x", TP.BFLOAT16, [1])],
        [oh.make_tensor_value_info("y", TP.BFLOAT16, [1])],
    )
    with pytest.raises(lstminfer.UnsupportedModelError, match="value 'x'.*bfloat16"):
        lstminfer.load(model)


@pytest.mark.parametrize("cut", [1, 10, 40, -7])
def test_truncated_or_garbage_files_raise_invalid_model(tmp_path, cut):
    data = sample_model().SerializeToString()
    path = tmp_path / "broken.onnx"
    path.write_bytes(data[:cut])
    with pytest.raises(lstminfer.InvalidModelError) as info:
        lstminfer.load(path)
    assert "broken.onnx" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_and_bad_type():
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        lstminfer.load("nope.onnx")
    with pytest.raises(TypeError, match="file path, bytes or onnx.ModelProto"):
        lstminfer.load(3.5)


def test_structural_errors_name_the_problem():
    undefined = make_model(
        [oh.make_node("AddT", ["x", "ghost"], ["y"], domain=DOMAIN, name="adder")],
        [oh.make_tensor_value_info("x", TP.FLOAT, [1])],
        [oh.make_tensor_value_info("y", TP.FLOAT, [1])],
    )
    with pytest.raises(lstminfer.InvalidModelError, match="adder.*reads 'ghost'"):
        lstminfer.load(undefined)
    cycle = make_model(
        [oh.make_node("AddT", ["x", "b"], ["a"], domain=DOMAIN), oh.make_node("AddT", ["x", "a"], ["b"], domain=DOMAIN)],
        [oh.make_tensor_value_info("x", TP.FLOAT, [1])],
        [oh.make_tensor_value_info("b", TP.FLOAT, [1])],
    )
    with pytest.raises(lstminfer.InvalidModelError, match="cycle"):
        lstminfer.load(cycle)
    dangling = make_model(
        [oh.make_node("PassThrough", ["x"], ["y"], domain=DOMAIN)],
        [oh.make_tensor_value_info("x", TP.FLOAT, [1])],
        [oh.make_tensor_value_info("nowhere", TP.FLOAT, [1])],
    )
    with pytest.raises(lstminfer.InvalidModelError, match="nowhere"):
        lstminfer.load(dangling)


def test_kernel_failure_names_node_and_inputs():
    model = make_model(
        [oh.make_node("AddT", ["x", "w"], ["y"], domain=DOMAIN, name="bad_add")],
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N"])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["N"])],
        [oh.make_tensor("w", TP.FLOAT, [3], [1, 2, 3])],
    )
    m = lstminfer.load(model)
    with pytest.raises(lstminfer.ExecutionError, match=r"bad_add.*float32\[4\], float32\[3\]"):
        m.run(None, {"x": np.zeros(4, np.float32)})


def test_external_data_beside_the_model(tmp_path, rng):
    from onnx.external_data_helper import convert_model_to_external_data

    proto = sample_model()
    big = rng.standard_normal(3).astype(np.float32)
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(big, "c"))
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(proto, tmp_path / "m.onnx")
    assert (tmp_path / "weights.bin").exists()
    x = np.zeros((1, 3), np.float32)
    z, _ = lstminfer.load(tmp_path / "m.onnx").run(None, {"x": x})
    np.testing.assert_allclose(z[0], 5 * big, rtol=1e-6)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(lstminfer.InvalidModelError, match="external data"):
        lstminfer.load(tmp_path / "m.onnx")


def test_unknown_backend_and_unavailable_backend(monkeypatch):
    with pytest.raises(lstminfer.InvalidArgumentError, match="unknown backend 'gpu'"):
        lstminfer.load(sample_model(), backend="gpu")
    monkeypatch.setenv("LSTMINFER_BACKEND", "reference")
    assert lstminfer.load(sample_model()).backend == "reference"


def test_concurrent_runs_from_threads_agree(rng):
    m = lstminfer.load(sample_model())
    xs = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(8)]
    expected = [m.run(None, {"x": x}) for x in xs]
    errors = []

    def worker(i):
        for _ in range(50):
            got = m.run(None, {"x": xs[i]})
            if not all(np.array_equal(a, b) for a, b in zip(got, expected[i])):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_onnx_backend_interface_runs_models_and_single_nodes(rng):
    import lstminfer.onnx_backend as backend

    x = rng.standard_normal((2, 3)).astype(np.float32)
    z, y = backend.run_model(sample_model(), [x])
    np.testing.assert_allclose(y, x + [2, 4, 6], rtol=1e-6)
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
    (out,) = backend.run_node(oh.make_node("AddT", ["a", "b"], ["c"], domain=DOMAIN), [x, x])
    np.testing.assert_array_equal(out, x + x)
    with pytest.raises(ValueError, match="CPU only"):
        backend.prepare(sample_model(), "CUDA")


def _lstm_with_state_inputs(state_dim="batch"):
    rng = np.random.default_rng(3)
    H, I = 5, 3
    W = oh.make_tensor("W", TP.FLOAT, [1, 4 * H, I], rng.standard_normal(4 * H * I).tolist())
    R = oh.make_tensor("R", TP.FLOAT, [1, 4 * H, H], rng.standard_normal(4 * H * H).tolist())
    return make_model(
        [oh.make_node("LSTM", ["x", "W", "R", "", "", "h0", "c0"], ["y", "h_n", "c_n"], hidden_size=H)],
        [oh.make_tensor_value_info("x", TP.FLOAT, ["time", "batch", I]),
         oh.make_tensor_value_info("h0", TP.FLOAT, [1, state_dim, H]),
         oh.make_tensor_value_info("c0", TP.FLOAT, [1, state_dim, H])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["time", 1, "batch", H]),
         oh.make_tensor_value_info("h_n", TP.FLOAT, [1, "batch", H]),
         oh.make_tensor_value_info("c_n", TP.FLOAT, [1, "batch", H])],
        [W, R],
    )


def test_predict_fills_missing_state_inputs_with_zeros(rng):
    m = lstminfer.load(_lstm_with_state_inputs())
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    out = m.predict(x)
    zeros = np.zeros((1, 2, 5), np.float32)
    expected = m.run(None, {"x": x, "h0": zeros, "c0": zeros})
    for name, value in zip(m.output_names, expected):
        np.testing.assert_array_equal(out[name], value)
    h0 = rng.standard_normal((1, 2, 5)).astype(np.float32)  # a given state is used, the other zeroed
    np.testing.assert_array_equal(m.predict(x=x, h0=h0)["y"], m.run(["y"], {"x": x, "h0": h0, "c0": zeros})[0])


def test_predict_zero_state_needs_a_sizable_shape(rng):
    m = lstminfer.load(_lstm_with_state_inputs(state_dim="other"))
    with pytest.raises(lstminfer.InvalidArgumentError, match="'h0'.*pass h0=... explicitly"):
        m.predict(rng.standard_normal((4, 2, 3)).astype(np.float32))


def test_run_fast_path_detaches_views_and_reports_kernel_errors():
    # Identity returns the feed itself; Reshape a view of it: both must come back as copies.
    m = lstminfer.load(make_model(
        [oh.make_node("Identity", ["a"], ["b"]), oh.make_node("Reshape", ["a", "s"], ["r"])],
        [oh.make_tensor_value_info("a", TP.FLOAT, [2, 2])],
        [oh.make_tensor_value_info("b", TP.FLOAT, [2, 2]), oh.make_tensor_value_info("r", TP.FLOAT, [4])],
        [oh.make_tensor("s", TP.INT64, [1], [4])]))
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    b, r = m.run(None, {"a": a})
    b[0, 0] = r[1] = 99
    assert a[0, 0] == 0 and a[0, 1] == 1
    bad = lstminfer.load(make_model(
        [oh.make_node("Reshape", ["a", "s"], ["r"])],
        [oh.make_tensor_value_info("a", TP.FLOAT, [2, 2])], [oh.make_tensor_value_info("r", TP.FLOAT, None)],
        [oh.make_tensor("s", TP.INT64, [1], [3])]))
    with pytest.raises(lstminfer.ExecutionError, match="Reshape"):
        bad.run(None, {"a": a})


def test_everything_runs_without_the_runtime_extension(monkeypatch, rng):
    """lstminfer._native._runtime (the per-call paths in C) is optional: the Python paths give the same."""
    import lstminfer.feeds
    import lstminfer.model
    import lstminfer.plan
    import lstminfer.program
    import lstminfer.program_compiler
    import lstminfer.streaming

    model = _lstm_with_state_inputs()
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    zeros = np.zeros((1, 2, 5), np.float32)
    expected = lstminfer.load(model).run(None, {"x": x, "h0": zeros, "c0": zeros})
    for module in (lstminfer.feeds, lstminfer.plan, lstminfer.program, lstminfer.program_compiler,
                   lstminfer.model, lstminfer.streaming):
        monkeypatch.setattr(module, "_runtime", None)
    slow = lstminfer.load(model)
    assert slow._fast is None and slow._plan.compiled(slow._wanted(None)) is None
    assert "run" not in vars(slow) and slow._programs.fast is None
    for a, b in zip(slow.run(None, {"x": x, "h0": zeros, "c0": zeros}), expected):
        np.testing.assert_array_equal(a, b)
    stream = slow.stream()
    assert stream._fast is None
    np.testing.assert_allclose(stream.step(x[:, :1]), expected[0][:, :, :1], atol=1e-6)
    pool = slow.stream_pool(4)
    assert pool._fast is None and "step" not in vars(pool)
    ids = [pool.open(), pool.open()]
    out = pool.step({i: x[:, k:k + 1] for k, i in enumerate(ids)})
    for k, i in enumerate(ids):
        np.testing.assert_allclose(out[i], expected[0][:, :, k:k + 1], atol=1e-6)


def test_run_takes_the_c_path_only_for_the_usual_call(rng):
    """Model.run is its ModelRun's (C): run(None, dict) goes through the feed checks and the plan;
    other calls, and feeds it declines, to ``checked`` (Model._run_checked), which checks everything."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    f32 = np.dtype(np.float32)
    checked = []

    def full(names, feed):
        checked.append(names)
        return "checked"

    schedule = runtime.Schedule([None, None], (0,), (), (0,), None)  # returns its feed
    fast = runtime.ModelRun(full, runtime.FeedChecks((("x", f32, 1, ()),)), schedule, None, None)
    x = np.zeros(3, np.float32)
    (y,) = fast.run(None, {"x": x})
    assert checked == [] and y is not x and np.array_equal(y, x)  # a feed handed back is copied
    assert fast.run(["y"], {"x": x}) == "checked" and fast.run(None, [("x", x)]) == "checked"
    assert fast.run(None, {"x": x.astype(np.float64)}) == "checked"  # declined by the C check
    checked.clear()
    named = runtime.ModelRun(full, runtime.FeedChecks((("x", f32, 1, ()),)), schedule, None, None, ("y",))
    (y,) = named.run(["y"], {"x": x})  # every output, named in order: the C path
    assert checked == [] and np.array_equal(y, x)
    assert named.run(["y", "y"], {"x": x}) == "checked" and named.run(("y",), {"x": x}) == "checked"
    assert checked == [["y", "y"], ("y",)]
    checked.clear()
    unscheduled = runtime.ModelRun(full, runtime.FeedChecks((("x", f32, 1, ()),)), None, None, None)
    assert unscheduled.run(None, {"x": x}) == "checked"
    with pytest.raises(TypeError):
        runtime.ModelRun(full, None, schedule, None, None)

    model = _lstm_with_state_inputs()
    m = lstminfer.load(model)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    feeds = {"x": x, "h0": np.zeros((1, 2, 5), np.float32), "c0": np.zeros((1, 2, 5), np.float32)}
    assert m.run == m._fast.run and lstminfer.Model.run.__doc__ == m.run.__doc__
    for a, b, c in zip(m.run(None, feeds), m._run_checked(None, feeds), m.run(m.output_names, feeds)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(lstminfer.InvalidInputError, match="x"):
        m.run(None, dict(feeds, x=x[:, :, :2]))  # declined by the C check, reported by the full one
    with pytest.raises(lstminfer.InvalidInputError, match="x"):
        m.run(m.output_names, dict(feeds, x=x[:, :, :2]))


def test_stream_step_takes_the_kernel_first(rng):
    """Stream.step (C) hands the chunk to the stream's StreamStep, which calls the kernel's run_into
    with the stream's own states list, and anything it declines to Stream._step_checked."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    states = [1, 2]
    step = runtime.StreamStep(states, lambda x, h, c: None if x is None else (x, h, c), None, ("y",))
    assert step.run("x") == ("x", 1, 2)
    states[:] = [3, 4]  # the stream updates its states in place: the C step sees them
    assert step.run("x") == ("x", 3, 4) and step.run(None) is None
    with pytest.raises(ValueError, match="one of into and programs"):
        runtime.StreamStep(states, None, None, ("y",))

    class Owner:
        _fast = step

        def _step_checked(self, x):
            return "checked"

    owner = Owner()
    assert runtime.stream_step(owner, "x") == ("x", 3, 4) and runtime.stream_step(owner, None) == "checked"
    Owner._fast = None
    assert runtime.stream_step(owner, "x") == "checked"
    s = lstminfer.load(_lstm_with_state_inputs()).stream()
    assert lstminfer.streaming.Stream.step is runtime.stream_step and s._fast is not None


def test_pool_step_takes_the_c_path_only_for_a_non_empty_dict(rng):
    """PoolStep.step (C) steps a non-empty dict under the pool's lock and hands everything else,
    or frames it declines, to ``checked`` (StreamPool._step_checked)."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    model = lstminfer.load(_lstm_with_state_inputs())
    real = model.stream_pool(2)
    assert real._fast is not None and real.step == real._fast.step
    sid = real.open()
    x = rng.standard_normal((1, 1, 3)).astype(np.float32)
    expected = model.stream().step(x)
    assert real._fast.shape is None
    np.testing.assert_array_equal(real.step({sid: x})[sid], expected)  # the full check, which sets the shape
    assert real._fast.shape == (1, 1, 3)
    real.reset(sid)
    checked = []
    real._step_checked = lambda frames: checked.append(frames) or ("checked", frames)
    pool = runtime.PoolStep(real._program.direct_into, real._step_checked, real.lock, real._sid_at, real._id_bits,
                            real._views, real._slot_views, 1, 1, lambda sids, y: None)
    pool.shape = (1, 1, 3)
    out = pool.step({sid: x})  # runs in C on real's kernel and slots
    np.testing.assert_array_equal(out[sid], expected)
    assert not real.lock.locked() and checked == []
    for frames in ({}, [(sid, x)], {sid: x.astype(np.float64)}, {sid + 1: x}):
        assert pool.step(frames) == ("checked", frames)
    for sid_at, bits in ((np.zeros(0, np.int64), 1), (real._sid_at, 0), (real._sid_at, 64)):
        with pytest.raises(ValueError, match="PoolStep"):
            runtime.PoolStep(real._program.direct_into, None, real.lock, sid_at, bits, {}, None, 1, 1, None)


def test_compiled_schedule_runs_steps_and_reports_failures():
    """_runtime.Schedule (the C step loop): slots in and out, absent outputs, frees, and the
    on_error hook for a kernel that raises or returns too few outputs."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    calls = []

    def add(a, b):
        calls.append((a, b))
        return (a + b, a - b)

    def broken(a):
        raise ValueError("no")

    def short(a):
        return ()

    def on_error(step, args, error, outputs):
        return RuntimeError(f"{step}: {args} {error!r} {outputs!r}")

    # slots: 0, 1 feeds; 2 constant 10; 3, 4 results; 5 the absent slot (None)
    template = [None, None, 10, None, None, None]
    steps = ((add, (0, 2), (3, -1), (), "add"), (add, (3, 1), (4, 3), (0,), "add2"))
    schedule = runtime.Schedule(template, (0, 1), steps, (4, 3, 0), on_error)
    assert schedule.run([1, 2]) == [13, 9, None]  # 1+10=11; 11+2, 11-2; slot 0 freed
    assert calls == [(1, 10), (11, 2)] and template == [None, None, 10, None, None, None]
    with pytest.raises(RuntimeError, match=r"bad: \[1\] ValueError\('no'\) None") as info:
        runtime.Schedule(template, (0,), ((broken, (0,), (), (), "bad"),), (0,), on_error).run([1])
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match=r"few: \[1\] None \(\)"):
        runtime.Schedule(template, (0,), ((short, (0,), (3,), (), "few"),), (3,), on_error).run([1])
    with pytest.raises(ValueError, match="outside the template"):
        runtime.Schedule(template, (0,), ((add, (0, 9), (3,), (), "x"),), (3,), on_error)
    with pytest.raises(ValueError, match="outputs .* outside the template"):
        runtime.Schedule(template, (0,), ((add, (0, 2), (6,), (), "x"),), (0,), on_error)
    with pytest.raises(ValueError, match="frees .* outside the template"):
        runtime.Schedule(template, (0,), ((add, (0, 2), (3,), (-1,), "x"),), (3,), on_error)


def test_feed_checks_accept_only_exact_feeds():
    """_runtime.FeedChecks (Model.run's fast acceptance test): exact ndarrays of each input's dtype,
    rank and fixed dims, no other names, in input order; anything else None (the full check)."""
    runtime = pytest.importorskip("lstminfer._native._runtime")
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    checks = runtime.FeedChecks((("x", f32, 3, ((2, 4),)), ("n", i64, 1, ())))
    x, n = np.zeros((5, 1, 4), np.float32), np.zeros(2, np.int64)
    assert [id(v) for v in checks.feeds({"n": n, "x": x})] == [id(x), id(n)]
    declined = [{"x": x}, {"x": x, "n": n, "extra": n}, {"x": x.astype(np.float64), "n": n},
                {"x": x[0], "n": n}, {"x": np.zeros((5, 1, 3), np.float32), "n": n},
                {"x": x.tolist(), "n": n}, {"x": np.ma.masked_array(x), "n": n}, {"y": x, "n": n}]
    for feed in declined:
        assert checks.feeds(feed) is None, feed
    with pytest.raises(ValueError, match="axis 3 outside"):
        runtime.FeedChecks((("x", f32, 3, ((3, 4),)),))
