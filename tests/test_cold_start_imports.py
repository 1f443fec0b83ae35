"""Cold start: what a load imports, and the onnx-free tensor decoder it relies on.

A fresh process that imports lstminfer, loads the bundled model with the Cython
backend and runs it must not import ``onnx``, ``numba`` or ``scipy`` (each costs
tens of milliseconds); the decoder that replaces ``onnx.numpy_helper`` must
agree with it exactly; the op-module index must match what the modules register.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from onnx import TensorProto, helper, numpy_helper

import lstminfer
import lstminfer.models
from lstminfer import onnx_proto
from lstminfer.errors import InvalidModelError, UnsupportedModelError
from lstminfer.ops import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("onnx", "numba", "scipy", "concurrent.futures")

_COLD_SCRIPT = """
import json, sys
import numpy as np
import lstminfer, lstminfer.models
m = lstminfer.load(lstminfer.models.path("adding_lstm"), backend=sys.argv[1])
rng = np.random.default_rng(0)
feeds = {"x": rng.random((2, 50, 2), dtype=np.float32), "h0": np.zeros((1, 2, 32), np.float32),
         "c0": np.zeros((1, 2, 32), np.float32)}
outputs = m.run(None, feeds)
np.savez(sys.argv[2], *outputs)
print(json.dumps(sorted(sys.modules)))
# onnx imported after a load: its ModelProto is the class lstminfer already parsed with.
import onnx
from lstminfer import onnx_proto
proto = onnx.load(lstminfer.models.path("adding_lstm"))
assert onnx_proto.as_model_proto(proto) is proto, (type(proto), onnx_proto.pb2().ModelProto)
lstminfer.load(proto, backend=sys.argv[1])
"""


def _fresh_process_modules(backend: str, out_file: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("LSTMINFER_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", _COLD_SCRIPT, backend, out_file], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _top_level_heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("backend", ["cython", "reference"])
def test_load_and_run_import_no_heavy_package(tmp_path, backend):
    if backend == "cython" and "cython" not in lstminfer.available_backends():
        pytest.fail("the Cython extension is not built: run setup.py build_ext --inplace")
    out = tmp_path / "out.npz"
    modules = _fresh_process_modules(backend, str(out))
    assert _top_level_heavy(modules) == []
    # The op modules load on demand: those of the model's ops (Transpose/Constant/Squeeze, LSTM,
    # MatMul, Add), not the ones it does not use.
    loaded_ops = {m.rsplit(".", 1)[1] for m in modules if m.startswith("lstminfer.ops.")}
    assert {"tensor", "recurrent", "nn", "elementwise"} <= loaded_ops
    assert not loaded_ops & {"control", "sequence", "reduce"}

    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((2, 50, 2), dtype=np.float32), "h0": np.zeros((1, 2, 32), np.float32),
             "c0": np.zeros((1, 2, 32), np.float32)}
    expected = ort.InferenceSession(lstminfer.models.path("adding_lstm"),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    with np.load(out) as got:
        assert len(got.files) == len(expected)
        for i, want in enumerate(expected):
            np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-5, atol=1e-5)


def test_onnx_model_proto_is_accepted():
    proto = onnx.load(lstminfer.models.path("adding_lstm"))
    assert isinstance(proto, onnx.ModelProto)
    m = lstminfer.load(proto, backend="reference")
    x = np.ones((1, 5, 2), np.float32)
    h = np.zeros((1, 1, 32), np.float32)
    from_proto = m.run(None, {"x": x, "h0": h, "c0": h})
    from_path = lstminfer.load(lstminfer.models.path("adding_lstm"), backend="reference").run(
        None, {"x": x, "h0": h, "c0": h})
    for a, b in zip(from_proto, from_path):
        np.testing.assert_array_equal(a, b)
    assert onnx_proto.as_model_proto(proto) is proto  # the same message class: no copy
    assert onnx_proto.as_model_proto(onnx.GraphProto()) is None


def test_lazy_value_info_still_gives_describe_its_shapes():
    m = lstminfer.load(lstminfer.models.path("adding_lstm"), backend="reference")
    # Y's shape is only known from shape inference, which reads W's shape (a weight the lazy
    # copy keeps without its values).
    assert "LSTM: LSTM -> [(time, 1, batch, 32), (1, batch, 32), (1, batch, 32)]" in m.describe()


@pytest.mark.parametrize("name", lstminfer.models.available())
def test_shape_inference_without_weight_values_infers_the_same(name):
    # The lazy value_info keeps large initializers as typed inputs (shapes, no values).
    from lstminfer import onnx_import

    proto = onnx.load(lstminfer.models.path(name))
    light = onnx_import._shape_inference_input(proto)
    assert len(light.graph.initializer) < len(proto.graph.initializer)  # the weights were left out
    full = onnx_import._infer_value_info(proto)
    assert full and dict(onnx_import.LazyValueInfo(light)) == full


# ------------------------------------------------------- tensor decoding --

_VALUES = {
    TensorProto.FLOAT: np.array([[1.5, -2.25, 3e-8], [np.inf, -0.0, 7.0]], np.float32),
    TensorProto.DOUBLE: np.array([[1.5, -2.25, 1e-300], [np.nan, -0.0, 7.0]], np.float64),
    TensorProto.FLOAT16: np.array([[1.5, -2.25, 6e-5], [np.inf, -0.0, 65504]], np.float16),
    TensorProto.INT8: np.array([[-128, 127, 0], [1, -1, 5]], np.int8),
    TensorProto.UINT8: np.array([[0, 255, 1], [2, 3, 128]], np.uint8),
    TensorProto.INT16: np.array([[-32768, 32767, 0], [1, -1, 5]], np.int16),
    TensorProto.UINT16: np.array([[0, 65535, 1], [2, 3, 40000]], np.uint16),
    TensorProto.INT32: np.array([[-2**31, 2**31 - 1, 0], [1, -1, 5]], np.int32),
    TensorProto.UINT32: np.array([[0, 2**32 - 1, 1], [2, 3, 2**31]], np.uint32),
    TensorProto.INT64: np.array([[-2**63, 2**63 - 1, 0], [1, -1, 5]], np.int64),
    TensorProto.UINT64: np.array([[0, 2**64 - 1, 1], [2, 3, 2**63]], np.uint64),
    TensorProto.BOOL: np.array([[True, False, True], [False, False, True]]),
}


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
@pytest.mark.parametrize("code", sorted(_VALUES), ids=lambda c: TensorProto.DataType.Name(c))
def test_tensor_decodes_like_numpy_helper(code, raw):
    values = _VALUES[code]
    vals = values.tobytes() if raw else values.reshape(-1).tolist()
    if code == TensorProto.FLOAT16 and not raw:
        vals = values.reshape(-1)  # make_tensor stores float16 as bit patterns from an array
    t = helper.make_tensor("t", code, values.shape, vals, raw=raw)
    got = onnx_proto.to_array(t, "initializer 't'")
    want = numpy_helper.to_array(t)
    assert got.dtype == want.dtype == values.dtype
    assert got.shape == want.shape == values.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))  # bit for bit
    assert not got.flags.writeable


_NUMPY_TO_ONNX = {np.dtype(v.dtype): code for code, v in _VALUES.items()}


@settings(max_examples=40, deadline=None)
@given(data=st.data(), raw=st.booleans())
def test_random_tensors_decode_like_numpy_helper(data, raw):
    dtype = data.draw(st.sampled_from(sorted(_NUMPY_TO_ONNX, key=str)))
    values = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
    code = _NUMPY_TO_ONNX[dtype]
    if raw:
        vals = values.tobytes()
    elif dtype == np.float16:
        vals = values.reshape(-1)
    else:
        vals = values.reshape(-1).tolist()
    t = helper.make_tensor("t", code, values.shape, vals, raw=raw)
    got, want = onnx_proto.to_array(t, "t"), numpy_helper.to_array(t)
    assert got.dtype == want.dtype and got.shape == want.shape == values.shape
    assert got.tobytes() == want.tobytes()  # bit for bit (NaN payloads, -0.0)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,)])
def test_scalar_and_empty_tensors(shape):
    values = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    for raw in (False, True):
        t = helper.make_tensor("t", TensorProto.FLOAT, shape, values.tobytes() if raw else values.reshape(-1).tolist(),
                               raw=raw)
        got = onnx_proto.to_array(t, "t")
        assert got.shape == numpy_helper.to_array(t).shape == shape


def test_string_tensor_decodes_to_objects():
    t = helper.make_tensor("s", TensorProto.STRING, [2], [b"abc", "d\u00e9".encode()])
    got = onnx_proto.to_array(t, "s")
    assert got.dtype == object and list(got) == list(numpy_helper.to_array(t)) == ["abc", "d\u00e9"]


def test_wrong_raw_size_names_the_tensor():
    t = helper.make_tensor("W_bad", TensorProto.FLOAT, [2, 3], np.zeros(6, np.float32).tobytes(), raw=True)
    t.raw_data = t.raw_data[:20]
    with pytest.raises(InvalidModelError, match=r"initializer 'W_bad'.*20 bytes, expected 24"):
        onnx_proto.to_array(t, "model.onnx, initializer 'W_bad'")


def test_wrong_typed_count_names_the_tensor():
    t = helper.make_tensor("B_bad", TensorProto.INT64, [4], [1, 2, 3, 4])
    del t.dims[:]
    t.dims.extend([5])
    with pytest.raises(InvalidModelError, match=r"'B_bad'.*int64_data holds 4 values, expected 5"):
        onnx_proto.to_array(t, "initializer 'B_bad'")


def test_unsupported_element_type_names_the_tensor():
    t = helper.make_tensor("c", TensorProto.COMPLEX64, [1], [1 + 2j])
    with pytest.raises(UnsupportedModelError, match=r"'c'.*complex64"):
        onnx_proto.to_array(t, "initializer 'c'")


def test_corrupt_initializer_in_a_model_file_is_invalid_model_error(tmp_path):
    proto = onnx.load(lstminfer.models.path("adding_lstm"))
    init = proto.graph.initializer[0]
    init.raw_data = init.raw_data[:-4]
    path = tmp_path / "corrupt.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(InvalidModelError, match=rf"initializer '{init.name}'"):
        lstminfer.load(str(path), backend="reference")


# ------------------------------------------------------ op-module index --

def test_op_module_index_matches_what_modules_register():
    registry.load_all()
    registered: dict[str, set[str]] = {}
    for (domain, op_type), specs in registry._REGISTRY.items():
        for spec in specs:
            module = spec.factory.__module__
            if module.startswith("lstminfer.ops."):
                name = f"{domain}:{op_type}" if domain else op_type
                registered.setdefault(module.rsplit(".", 1)[1], set()).add(name)
    indexed = {module: set(names.split()) for module, names in registry.OP_MODULES.items()}
    assert registered == indexed
