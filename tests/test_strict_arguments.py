"""Strict arguments: an unknown keyword is a TypeError naming it and the closest valid one, too many
threads warn, and each way a model path can be wrong gets its own message."""
from __future__ import annotations

import warnings
import zipfile

import numpy as np
import onnx
import pytest

import lstminfer
import lstminfer.models
from lstminfer import client, session_options
from lstminfer.capi.onnxruntime_pybind11_state import InvalidProtobuf, NoSuchFile, NotImplemented as OrtNotImplemented

MODEL = lstminfer.models.path("adding_lstm")


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(MODEL)


def _callables(model):
    """Every public function and constructor (and the methods taking options), with a valid call's
    positional arguments."""
    session = lstminfer.InferenceSession(MODEL)
    binding = session.io_binding()
    return {
        "load": (lstminfer.load, (MODEL,)),
        "Model": (lstminfer.Model, (MODEL,)),
        "InferenceSession": (lstminfer.InferenceSession, (MODEL,)),
        "quantize": (lstminfer.quantize, (MODEL, "unused.onnx")),
        "Model.stream": (model.stream, ()),
        "Model.stream_pool": (model.stream_pool, ()),
        "Model.describe": (model.describe, ()),
        "set_providers": (session.set_providers, ()),
        "run_with_iobinding": (session.run_with_iobinding, (binding,)),
        "run_with_ort_values": (session.run_with_ort_values, (None, {})),
        "run_async": (session.run_async, (None, {}, print, None)),
        "ortvalue_from_numpy": (lstminfer.OrtValue.ortvalue_from_numpy, (np.zeros(2),)),
        "ortvalue_from_shape_and_type": (lstminfer.OrtValue.ortvalue_from_shape_and_type, ((2,), np.float32)),
        "bind_output": (binding.bind_output, ("y",)),
        "bind_input": (binding.bind_input, ("x", "cpu", 0, np.float32, (1,), 1)),
        "SessionOptions": (lstminfer.SessionOptions, ()),
        "RunOptions": (lstminfer.RunOptions, ()),
        "get_available_providers": (lstminfer.get_available_providers, ()),
        "available_backends": (lstminfer.available_backends, ()),
        "client.Client": (client.Client, ("http://127.0.0.1:9",)),
        "client.AsyncClient": (client.AsyncClient, ("http://127.0.0.1:9",)),
    }


def test_every_public_callable_rejects_an_unknown_keyword_by_name(model):
    for name, (fn, args) in _callables(model).items():
        with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
            fn(*args, no_such_option=1)


@pytest.mark.parametrize("call, wrong, right", [
    (lambda: lstminfer.load(MODEL, quantise="int8"), "quantise", "quantize"),
    (lambda: lstminfer.load(MODEL, thread=2), "thread", "threads"),
    (lambda: lstminfer.Model(MODEL, backnd="reference"), "backnd", "backend"),
    (lambda: lstminfer.InferenceSession(MODEL, sess_option=None), "sess_option", "sess_options"),
    (lambda: lstminfer.InferenceSession(MODEL, provider=["CPUExecutionProvider"]), "provider", "providers"),
    (lambda: lstminfer.quantize(MODEL, "out.onnx", mod="int8"), "mod", "mode"),
    (lambda: lstminfer.load(MODEL).stream(stat=None), "stat", "state"),
    (lambda: lstminfer.load(MODEL).stream_pool(4).open(stat=None), "stat", "state"),
    (lambda: client.Client("http://127.0.0.1:9", timout=1), "timout", "timeout"),
    (lambda: lstminfer.OrtValue.ortvalue_from_numpy(np.zeros(1), devce_type="cpu"), "devce_type", "device_type"),
])
def test_an_unknown_keyword_suggests_the_closest_valid_one(call, wrong, right):
    with pytest.raises(TypeError, match=rf"'{wrong}'; did you mean '{right}'\?"):
        call()


def test_a_keyword_close_to_nothing_lists_the_valid_ones():
    with pytest.raises(TypeError) as info:
        lstminfer.load(MODEL, bogus=1)
    message = str(info.value)
    assert "'bogus'" in message and "did you mean" not in message
    for valid in ("threads", "quantize", "backend", "sess_options"):
        assert valid in message


def test_model_no_longer_swallows_keywords():
    with pytest.raises(TypeError, match="'bogus'"):
        lstminfer.Model(MODEL, bogus=1)


def test_a_misspelled_session_option_field_is_an_attribute_error_with_the_closest_one():
    so = lstminfer.SessionOptions()
    with pytest.raises(AttributeError, match=r"'intra_op_num_thread'; did you mean 'intra_op_num_threads'\?"):
        so.intra_op_num_thread = 2
    with pytest.raises(AttributeError, match="'terminated'; did you mean 'terminate'"):
        lstminfer.RunOptions().terminated = True


def test_session_options_in_models_positional_place_point_to_inference_session():
    so = lstminfer.SessionOptions()
    with pytest.raises(lstminfer.InvalidArgumentError, match="lstminfer.InferenceSession"):
        lstminfer.Model(MODEL, so)
    assert lstminfer.InferenceSession(MODEL, so).run(None, {
        "x": np.zeros((1, 3, 2), np.float32), "h0": np.zeros((1, 1, 32), np.float32),
        "c0": np.zeros((1, 1, 32), np.float32)})[0].shape == (1, 3, 1)


def test_threads_above_the_cores_warn(monkeypatch):
    monkeypatch.setattr(session_options, "machine_cores", lambda: 2)
    import lstminfer.model as model_module

    monkeypatch.setattr(model_module, "machine_cores", lambda: 2)
    with pytest.warns(UserWarning, match="threads=3 is more than the 2 cores"):
        lstminfer.load(MODEL, threads=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstminfer.load(MODEL, threads=2)
    so = lstminfer.SessionOptions()
    so.intra_op_num_threads = 8
    with pytest.warns(UserWarning, match="threads=8"):
        lstminfer.InferenceSession(MODEL, so)


def test_a_missing_file_is_no_such_file(tmp_path):
    with pytest.raises(NoSuchFile, match="ONNX model file not found") as info:
        lstminfer.load(tmp_path / "nothing.onnx")
    assert isinstance(info.value, FileNotFoundError)


def test_a_directory_says_so_and_names_the_models_in_it(tmp_path):
    with pytest.raises(NoSuchFile, match=r"is a directory, not an ONNX model file.*holds no \.onnx file"):
        lstminfer.load(tmp_path)
    (tmp_path / "a.onnx").write_bytes(open(MODEL, "rb").read())
    with pytest.raises(lstminfer.ModelNotFoundError, match=r"is a directory.*\(in it: a\.onnx\)"):
        lstminfer.load(tmp_path)


@pytest.mark.parametrize("content, looks_like", [
    (b"hello, this is text\n", "it is a text file"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n", "Git LFS pointer"),
    (b"\x93NUMPY\x01\x00" + bytes(40), "NumPy .npy array"),
])
def test_a_file_that_is_not_onnx_says_what_it_looks_like(tmp_path, content, looks_like):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidProtobuf, match=rf"not an ONNX model.*{looks_like}") as info:
        lstminfer.load(path)
    assert isinstance(info.value, lstminfer.InvalidModelError) and str(path) in str(info.value)


def test_a_pytorch_checkpoint_is_told_to_export_first(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(lstminfer.InvalidModelError, match=r"zip archive \(a PyTorch .pt/.pth.*torch.onnx.export"):
        lstminfer.load(path)


def test_a_model_from_a_newer_onnx_release_says_so(tmp_path):
    proto = onnx.load(MODEL)
    proto.ir_version = onnx.IR_VERSION + 1
    with pytest.raises(OrtNotImplemented, match=rf"ir_version {onnx.IR_VERSION + 1} is newer than the installed onnx"
                                                r".*newer onnx release"):
        lstminfer.load(proto.SerializeToString())
    proto = onnx.load(MODEL)
    proto.opset_import[0].version = 99
    with pytest.raises(lstminfer.UnsupportedModelError, match="opset 99 is newer than lstminfer supports"):
        lstminfer.load(proto)
