"""The onnxruntime API lstminfer offers beyond ``run``: options, providers, exceptions, io_binding,
OrtValue, run_async, profiling, list feeds; each checked against the installed onnxruntime where it
has a behaviour to match."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import tracemalloc
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

import lstminfer
import lstminfer.models
from lstminfer import errors
from lstminfer.capi import onnxruntime_pybind11_state as state_module

ort = pytest.importorskip("onnxruntime")
MODEL = lstminfer.models.path("adding_lstm")  # x (batch, time, 2), h0/c0 (1, batch, 32) -> y, h_n, c_n


def feeds(batch=1, time=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.random((batch, time, 2), dtype=np.float32),
            "h0": rng.standard_normal((1, batch, 32), dtype=np.float32),
            "c0": rng.standard_normal((1, batch, 32), dtype=np.float32)}


@pytest.fixture(scope="module")
def session():
    return lstminfer.InferenceSession(MODEL)


# -- exceptions ----------------------------------------------------------------------------

def test_every_onnxruntime_exception_is_at_onnxruntime_path():
    from onnxruntime.capi import onnxruntime_pybind11_state as theirs

    names = [n for n in dir(theirs) if isinstance(getattr(theirs, n), type)
             and issubclass(getattr(theirs, n), Exception) and getattr(theirs, n).__module__ == theirs.__name__]
    assert len(names) >= 11
    for name in names:
        ours = getattr(state_module, name)
        assert ours.__name__ == name and issubclass(ours, Exception)
        assert ours.__module__ == "lstminfer.capi.onnxruntime_pybind11_state"
    assert lstminfer.capi.onnxruntime_pybind11_state is state_module


@pytest.mark.parametrize("ours, theirs, builtin", [
    (errors.InvalidInputError, "InvalidArgument", ValueError),
    (errors.InvalidArgumentError, "InvalidArgument", ValueError),
    (errors.InvalidModelError, "InvalidGraph", ValueError),
    (errors.InvalidModelError, "InvalidProtobuf", ValueError),
    (errors.UnsupportedModelError, "NotImplemented", Exception),
    (errors.ModelNotFoundError, "NoSuchFile", FileNotFoundError),
    (errors.ExecutionError, "RuntimeException", RuntimeError),
    (errors.BackendUnavailableError, "EPFail", RuntimeError),
])
def test_lstminfer_errors_subclass_the_fitting_onnxruntime_one(ours, theirs, builtin):
    assert issubclass(ours, getattr(state_module, theirs))
    assert issubclass(ours, builtin) and issubclass(ours, errors.LstminferError)
    error = ours("message")
    assert pickle.loads(pickle.dumps(error)).args == error.args  # onnxruntime's names resolve at their path


def test_a_bad_feed_is_caught_as_onnxruntimes_invalid_argument(session):
    bad = dict(feeds(), x=feeds()["x"].astype(np.float64))
    with pytest.raises(lstminfer.capi.onnxruntime_pybind11_state.InvalidArgument, match="wrong dtype"):
        session.run(None, bad)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):  # the same feed on onnxruntime
        ort.InferenceSession(MODEL).run(None, bad)


# -- options, enums, providers ---------------------------------------------------------

def test_session_and_run_options_have_onnxruntimes_fields_and_defaults():
    for ours, theirs in ((lstminfer.SessionOptions(), ort.SessionOptions()), (lstminfer.RunOptions(), ort.RunOptions())):
        fields = [f for f in type(ours).__slots__ if not f.startswith("_")]
        assert len(fields) >= 5
        for field in fields:
            want = getattr(theirs, field)
            got = getattr(ours, field)
            assert (int(got) if isinstance(got, int) else got) == (int(want) if hasattr(want, "__int__") and not isinstance(want, bool) else want), field


def test_enums_have_onnxruntimes_members_and_values():
    for ours, theirs in ((lstminfer.GraphOptimizationLevel, ort.GraphOptimizationLevel),
                         (lstminfer.ExecutionMode, ort.ExecutionMode)):
        assert {k: int(v) for k, v in ours.__members__.items()} == {k: int(v) for k, v in theirs.__members__.items()}


def test_intra_op_num_threads_is_threads_and_a_keyword_wins():
    so = lstminfer.SessionOptions()
    assert lstminfer.InferenceSession(MODEL, so).threads == 1  # 0: lstminfer's default
    so.intra_op_num_threads = 2
    assert lstminfer.InferenceSession(MODEL, so).threads == 2
    assert lstminfer.InferenceSession(MODEL, so, threads=1).threads == 1
    assert lstminfer.InferenceSession(MODEL, so).get_session_options() is so
    so.intra_op_num_threads = -1
    with pytest.raises(lstminfer.InvalidArgumentError, match="intra_op_num_threads"):
        lstminfer.InferenceSession(MODEL, so)


def test_config_entries_are_stored_and_a_missing_one_fails_as_onnxruntimes():
    so, ro = lstminfer.SessionOptions(), lstminfer.RunOptions()
    so.add_session_config_entry("session.a", "1")
    ro.add_run_config_entry("run.b", "2")
    assert so.get_session_config_entry("session.a") == "1" and ro.get_run_config_entry("run.b") == "2"
    for get, theirs in ((so.get_session_config_entry, ort.SessionOptions().get_session_config_entry),
                        (ro.get_run_config_entry, ort.RunOptions().get_run_config_entry)):
        with pytest.raises(RuntimeError) as want:
            theirs("missing")
        with pytest.raises(RuntimeError) as got:
            get("missing")
        assert str(got.value) == str(want.value)


def test_optimized_model_filepath_warns_and_writes_nothing(tmp_path):
    so = lstminfer.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    with pytest.warns(UserWarning, match="optimized_model_filepath"):
        lstminfer.InferenceSession(MODEL, so)
    assert not (tmp_path / "optimized.onnx").exists()


def test_a_provider_but_the_cpu_warns_as_onnxruntime_does_and_runs_on_the_cpu():
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.warns(UserWarning) as theirs:
        ort.InferenceSession(MODEL, providers=providers)
    with pytest.warns(UserWarning) as ours:
        session = lstminfer.InferenceSession(MODEL, providers=providers)
    want = next(str(w.message) for w in theirs if "CUDAExecutionProvider" in str(w.message))
    got = next(str(w.message) for w in ours if "CUDAExecutionProvider" in str(w.message))
    assert got.startswith(want.split("Available providers")[0])
    assert ours[0].filename == __file__  # points at the caller's line
    assert session.get_providers() == ["CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstminfer.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
        lstminfer.InferenceSession(MODEL, providers=[("CPUExecutionProvider", {"arena_extend_strategy": "x"})])


def test_provider_options_and_set_providers():
    session = lstminfer.InferenceSession(MODEL, None, ["CPUExecutionProvider"], [{"opt": 1}])
    assert session.get_provider_options() == {"CPUExecutionProvider": {"opt": "1"}}
    with pytest.raises(lstminfer.InvalidArgumentError, match="same length"):
        lstminfer.InferenceSession(MODEL, providers=["CPUExecutionProvider"], provider_options=[{}, {}])
    with pytest.warns(UserWarning, match="TensorrtExecutionProvider"):
        session.set_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert session.get_provider_options() == {"CPUExecutionProvider": {}}
    assert lstminfer.get_available_providers() == ["CPUExecutionProvider"]
    assert lstminfer.get_device() == "CPU"
    assert set(lstminfer.get_all_providers()) >= {"CUDAExecutionProvider", "CPUExecutionProvider"}


def test_profiling_writes_one_event_per_run(tmp_path):
    so = lstminfer.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    session = lstminfer.InferenceSession(MODEL, so)
    for seed in range(3):
        session.run(None, feeds(seed=seed))
    path = session.end_profiling()
    events = json.loads(open(path).read())
    assert path.startswith(str(tmp_path / "prof")) and len(events) == 3
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    assert lstminfer.InferenceSession(MODEL).end_profiling() == ""


# -- io binding --------------------------------------------------------------------------

def bound_step_loop(session, frames, in_place: bool):
    """Step ``frames`` one at a time through io_binding, the state fed back (in place, or copied)."""
    x = np.empty((1, 1, 2), np.float32)
    h, c = np.zeros((1, 1, 32), np.float32), np.zeros((1, 1, 32), np.float32)
    y = np.empty((1, 1, 1), np.float32)
    h_out, c_out = (h, c) if in_place else (np.empty_like(h), np.empty_like(c))
    binding = session.io_binding()
    for name, buf in (("x", x), ("h0", h), ("c0", c)):
        binding.bind_cpu_input(name, buf)
    for name, buf in (("y", y), ("h_n", h_out), ("c_n", c_out)):
        binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
    ys = []
    for frame in frames:
        x[...] = frame
        session.run_with_iobinding(binding)
        ys.append(y.copy())
        if not in_place:
            h[...], c[...] = h_out, c_out
    return np.concatenate(ys, axis=1), h, c, binding


@pytest.mark.parametrize("backend", ["cython", "reference"])
@pytest.mark.parametrize("in_place", [False, True], ids=["copied", "in_place"])
def test_io_binding_loop_matches_the_whole_sequence(backend, in_place):
    session = lstminfer.InferenceSession(MODEL, backend=backend)
    frames = np.random.default_rng(4).random((20, 1, 1, 2), dtype=np.float32)
    ys, h, c, binding = bound_step_loop(session, frames, in_place)
    zeros = np.zeros((1, 1, 32), np.float32)
    whole = ort.InferenceSession(MODEL).run(None, {"x": frames.reshape(1, 20, 2), "h0": zeros, "c0": zeros})
    for got, want in zip((ys, h, c), whole):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    outputs = binding.get_outputs()
    assert [v.numpy() is buf for v, buf in zip(outputs, binding.outputs.values())] == [True] * 3


def test_io_binding_writes_outputs_into_the_callers_buffers_without_allocating(session):
    time = 512  # y: 512 floats, h_n/c_n 32 each: a fresh array per call would show in the peak
    values = feeds(time=time)
    binding = session.io_binding()
    for name, value in values.items():
        binding.bind_cpu_input(name, value)
    buffers = {"y": np.empty((1, time, 1), np.float32), "h_n": np.empty((1, 1, 32), np.float32),
               "c_n": np.empty((1, 1, 32), np.float32)}
    for name, buf in buffers.items():
        binding.bind_ortvalue_output(name, lstminfer.OrtValue.ortvalue_from_numpy(buf))
    session.run_with_iobinding(binding)  # compiles this signature
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            session.run_with_iobinding(binding)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak < time * 4  # less than one y's worth of fresh memory
    for got, want in zip(buffers.values(), ort.InferenceSession(MODEL).run(None, values)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_io_binding_by_name_rebinding_and_clear(session):
    values = feeds()
    binding = session.io_binding()
    for name, value in values.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output("c_n")
    binding.bind_output("y")
    session.run_with_iobinding(binding)
    c_n, y = binding.copy_outputs_to_cpu()
    want = session.run(None, values)
    np.testing.assert_array_equal(y, want[0])
    np.testing.assert_array_equal(c_n, want[2])
    values["x"][...] = 0.25  # the bound array itself: the next run sees the change
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(binding.copy_outputs_to_cpu()[1], session.run(["y"], values)[0])
    binding.clear_binding_inputs()
    with pytest.raises(lstminfer.InvalidInputError, match="missing input 'x'"):
        session.run_with_iobinding(binding)


def test_io_binding_bind_input_reads_the_memory_at_a_pointer(session):
    values = feeds()
    binding = session.io_binding()
    for name, value in values.items():
        binding.bind_input(name, "cpu", 0, np.float32, list(value.shape), value.ctypes.data)
    binding.bind_output("y", "cpu", 0, TensorProto.FLOAT)
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(binding.get_outputs()[0].numpy(), session.run(["y"], values)[0])


def test_io_binding_errors_name_the_problem(session):
    binding = session.io_binding()
    with pytest.raises(lstminfer.InvalidArgumentError, match=r"unknown input name 'h_0'; did you mean 'h0'"):
        binding.bind_cpu_input("h_0", np.zeros(1))
    with pytest.raises(lstminfer.InvalidArgumentError, match="device_type 'cuda'"):
        binding.bind_output("y", "cuda")
    for name, value in feeds().items():
        binding.bind_cpu_input(name, value)
    wrong = np.empty((1, 5, 1), np.float32)  # y is (1, 6, 1)
    binding.bind_ortvalue_output("y", lstminfer.OrtValue.ortvalue_from_numpy(wrong))
    with pytest.raises(lstminfer.InvalidArgumentError, match=r"output 'y' is bound to a buffer of float32 \(1, 5, 1\)"):
        session.run_with_iobinding(binding)
    other = lstminfer.InferenceSession(MODEL)
    with pytest.raises(lstminfer.InvalidArgumentError, match="another session"):
        other.run_with_iobinding(binding)


# -- OrtValue, run_with_ort_values, run_async --------------------------------------------

def test_ort_value_reports_as_onnxruntimes_and_shares_memory():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    ours, theirs = lstminfer.OrtValue.ortvalue_from_numpy(a), ort.OrtValue.ortvalue_from_numpy(a)
    for method in ("shape", "data_type", "element_type", "device_name", "is_tensor", "has_value"):
        assert getattr(ours, method)() == getattr(theirs, method)(), method
    assert ours.numpy() is a and ours.data_ptr() == a.ctypes.data
    empty = lstminfer.OrtValue.ortvalue_from_shape_and_type([4, 2], np.int64)
    assert empty.shape() == [4, 2] and empty.data_type() == "tensor(int64)"
    assert lstminfer.OrtValue.ortvalue_from_shape_and_type((3,), TensorProto.DOUBLE).numpy().dtype == np.float64
    with pytest.raises(lstminfer.InvalidArgumentError, match="device_type 'cuda'"):
        lstminfer.OrtValue.ortvalue_from_numpy(a, "cuda", 0)


def test_run_with_ort_values_returns_ort_values(session):
    values = feeds()
    out = session.run_with_ort_values(["h_n"], {k: lstminfer.OrtValue.ortvalue_from_numpy(v) for k, v in values.items()})
    assert isinstance(out[0], lstminfer.OrtValue)
    np.testing.assert_array_equal(out[0].numpy(), session.run(["h_n"], values)[0])
    with pytest.raises(lstminfer.InvalidArgumentError, match="input 'x' is a ndarray, not an OrtValue"):
        session.run_with_ort_values(None, values)


def test_run_async_calls_back_with_results_or_the_error(session):
    done, got = threading.Event(), []

    def callback(results, user_data, err):
        got.append((results, user_data, err))
        if len(got) == 2:
            done.set()

    values = feeds()
    session.run_async(None, values, callback, "good")
    session.run_async(None, dict(values, x=values["x"].astype(np.float64)), callback, "bad")
    assert done.wait(30)
    by_data = {user_data: (results, err) for results, user_data, err in got}
    results, err = by_data["good"]
    assert err == "" and len(results) == 3
    np.testing.assert_array_equal(results[0], session.run(None, values)[0])
    results, err = by_data["bad"]
    assert results == [] and "wrong dtype" in err
    with pytest.raises(lstminfer.InvalidArgumentError, match="unknown output name 'z'"):
        session.run_async(["z"], values, callback, None)


# -- feeds as Python lists -----------------------------------------------------------------

def typed_identity_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["ya"]), helper.make_node("Identity", ["b"], ["yb"])], "ids",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("b", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("ya", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("yb", TensorProto.INT64, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("a, b", [([1, 2], [1, 2]), ([1.5, 2.5], [1.7, -2.2]), ([True, False], [2**40, 3]),
                                  (["1", "2.5"], [1, 2]), ([], [])])
def test_list_feeds_convert_to_the_inputs_dtype_as_onnxruntime_does(a, b):
    model = typed_identity_model()
    want = ort.InferenceSession(model).run(None, {"a": a, "b": b})
    got = lstminfer.InferenceSession(model).run(None, {"a": a, "b": b})
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def test_a_list_that_does_not_convert_names_the_input():
    with pytest.raises(lstminfer.InvalidInputError, match=r"input 'a': cannot convert the list given to tensor\(float\)"):
        lstminfer.InferenceSession(typed_identity_model()).run(None, {"a": ["x"], "b": [1]})


# -- the module itself ---------------------------------------------------------------------

def test_models_is_usable_right_after_import_lstminfer():
    code = ("import sys, lstminfer; assert 'lstminfer.models' not in sys.modules; "
            "print(lstminfer.models.available())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert done.returncode == 0, done.stderr
    assert "adding_lstm" in done.stdout


def test_dir_shows_only_the_public_api():
    names = dir(lstminfer)
    assert sorted(n for n in names if not n.startswith("__")) == sorted(lstminfer.__all__)
    assert not {"model", "errors", "feeds", "plan", "arguments", "annotations", "Any"} & set(names)
    for name in lstminfer.__all__:
        assert getattr(lstminfer, name) is not None


def test_docstrings_name_every_backend():
    backends = [b for b in lstminfer.backends.known_backends()]
    for documented in (lstminfer, lstminfer.load, lstminfer.Model, lstminfer.InferenceSession):
        for backend in backends:
            assert f'"{backend}"' in documented.__doc__, (documented, backend)


def test_the_readme_table_names_every_onnxruntime_api_name():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    table = text[text.index("## onnxruntime compatibility"):text.index("## Architecture")]
    public = lambda obj: [n for n in dir(obj) if not n.startswith("_")]  # noqa: E731
    names = {"InferenceSession": public(ort.InferenceSession), "SessionOptions": public(ort.SessionOptions),
             "RunOptions": public(ort.RunOptions), "IOBinding": public(ort.IOBinding),
             "OrtValue": public(ort.OrtValue), "onnxruntime": [n for n in public(ort) if callable(getattr(ort, n))]}
    missing = {where: [n for n in found if not re.search(rf"[`.]{re.escape(n)}\b", table)] for where, found in names.items()}
    assert not any(missing.values()), missing
