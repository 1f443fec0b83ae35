"""The native convolution and MaxPool (native/li_conv.h via lstminfer.kernels.conv_native) against
the NumPy kernels of lstminfer.ops.conv (im2col + BLAS, pools one axis at a time) on fresh random
geometries, and the memory they write: a compiled program's own (no copy), or a reused buffer that
no caller still holds. onnxruntime comparisons of whole models are in test_conv.py."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstminfer
from lstminfer.kernels import conv_native
from lstminfer.ops import conv as conv_ops

pytestmark = pytest.mark.skipif(not conv_native.available(), reason="native kernels not built")


def _random_conv(rng, spatial: int):
    """(x, W, bias, groups, Window, relu) of a random geometry: groups, strides, dilations, pads."""
    groups = int(rng.choice([1, 1, 2, 3]))
    Cg, Mg = int(rng.integers(1, 6)), int(rng.integers(1, 12))
    kernel = tuple(int(k) for k in rng.integers(1, 4, spatial))
    strides = tuple(int(s) for s in rng.integers(1, 3, spatial))
    dilations = tuple(int(d) for d in rng.integers(1, 3, spatial))
    pads = tuple(int(p) for p in rng.integers(0, 3, 2 * spatial))
    size = [int(n) for n in rng.integers(5, 40 if spatial == 1 else 12, spatial)]
    size = [max(n, (k - 1) * d + 1) for n, k, d in zip(size, kernel, dilations)]
    x = rng.standard_normal([int(rng.integers(1, 4)), groups * Cg] + size).astype(np.float32)
    W = rng.standard_normal((groups * Mg, Cg) + kernel).astype(np.float32)
    bias = rng.standard_normal(groups * Mg).astype(np.float32) if rng.random() < 0.7 else None
    window = conv_ops.Window(kernel, strides, dilations, pads, "NOTSET")
    return x, W, bias, groups, window, bool(rng.random() < 0.5)


def _both(x, W, bias, groups, window, relu):
    geometry = window.geometry(None, x.shape[2:])
    native = conv_native.NativeConv(W, bias, groups, window.dilations, window.strides, relu)
    got = native.run(x, *geometry)
    expected = conv_ops.conv_into(x, conv_ops.pack_conv_weights(W, groups, np.dtype(np.float32)), bias, window,
                                  None, groups, relu)
    return got, expected


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_native_conv_equals_numpy_on_random_geometries(spatial):
    rng = np.random.default_rng()
    for _ in range(40):
        case = _random_conv(rng, spatial)
        got, expected = _both(*case)
        x, W, _, groups, window, relu = case
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5,
                                   err_msg=f"x {x.shape} W {W.shape} groups {groups} {window} relu {relu}")


@pytest.mark.parametrize("x_shape, w_shape, pads", [
    ((2, 40, 37), (64, 40, 3), (1, 1)),            # KWS-like: many rows of W, L not a multiple of a tile
    ((1, 70, 9, 11), (13, 70, 3, 3), (1, 1, 1, 1)),  # K = 630: several blocks of panel rows
    ((3, 1, 8, 70), (32, 1, 3, 3), (1, 1, 1, 1)),   # K = 9, rows of 70 outputs: panels across rows
])
def test_native_conv_equals_numpy_on_model_sized_geometries(x_shape, w_shape, pads):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    W = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    ones = (1,) * (len(w_shape) - 2)
    window = conv_ops.Window(w_shape[2:], ones, ones, pads, "NOTSET")
    got, expected = _both(x, W, bias, 1, window, True)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_native_conv_keeps_nan_and_inf():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 9)).astype(np.float32)
    x[0, 0, 4], x[0, 1, 7] = np.nan, np.inf
    W = rng.standard_normal((3, 2, 3)).astype(np.float32)
    got, expected = _both(x, W, None, 1, conv_ops.Window((3,), (1,), (1,), (1, 1), "NOTSET"), True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial", [1, 2])
def test_native_max_pool_equals_numpy_on_random_geometries(spatial):
    rng = np.random.default_rng()
    for _ in range(60):
        kernel = tuple(int(k) for k in rng.integers(1, 4, spatial))
        strides = tuple(int(s) for s in rng.integers(1, 4, spatial))
        dilations = tuple(int(d) for d in rng.integers(1, 3, spatial))
        pads = tuple(min(int(p), k - 1) for p, k in zip(rng.integers(0, 3, 2 * spatial), kernel * 2))
        window = conv_ops.Window(kernel, strides, dilations, pads, "NOTSET", bool(rng.integers(0, 2)))
        size = [int(n) for n in rng.integers(6, 20, spatial)]
        x = rng.standard_normal([2, 3] + size).astype(np.float32)
        x[x > 2.0] = np.nan  # a NaN loses to a number, as np.fmax
        begins, ends, outs = window.geometry(None, x.shape[2:])
        extra = conv_ops._ceil_extra(x.shape[2:], begins, ends, outs, window)
        expected = conv_ops._pool_by_axis(x, window, begins, ends, extra, outs, -np.inf, np.fmax)
        got = conv_native.max_pool(x, kernel, strides, dilations, begins, outs)
        np.testing.assert_array_equal(got, expected, err_msg=f"{window} on {x.shape}")


def _fused_case(rng, spatial: int):
    """A random conv (``_random_conv``) and a MaxPool of windows that tile its output (1..3 per axis)."""
    x, W, bias, groups, window, relu = _random_conv(rng, spatial)
    if rng.random() < 0.3:  # wide rows and many output channels: several segments of pooled columns
        W = rng.standard_normal((groups * 64,) + W.shape[1:]).astype(np.float32)
        bias = None if bias is None else rng.standard_normal(groups * 64).astype(np.float32)
        x = np.concatenate([x] * 12, axis=-1)
    outs = window.geometry(None, x.shape[2:])[2]
    pool = tuple(int(rng.integers(1, min(3, o) + 1)) for o in outs)
    return x, W, bias, groups, window, relu, pool


@pytest.mark.parametrize("spatial", [1, 2])
def test_native_conv_max_pool_equals_numpy_on_random_geometries(spatial):
    """The fused Conv + MaxPool (li_conv_max_pool) against the NumPy conv then the NumPy pool of
    the same tiles, NaN included (a NaN loses to a number in the pool, as np.fmax)."""
    rng = np.random.default_rng()
    for _ in range(40):
        x, W, bias, groups, window, relu, pool = _fused_case(rng, spatial)
        if rng.random() < 0.2:
            x[x > 2.5] = np.nan
        begins, ends, outs = window.geometry(None, x.shape[2:])
        native = conv_native.NativeConv(W, bias, groups, window.dilations, window.strides, relu)
        got = native.run_max_pool(x, begins, ends, outs, pool)
        conv = conv_ops.conv_into(x, conv_ops.pack_conv_weights(W, groups, np.dtype(np.float32)), bias, window,
                                  None, groups, relu)
        expected = conv_ops._max_pool_tiles(conv, tuple(o // k for o, k in zip(outs, pool)), pool)
        where = f"x {x.shape} W {W.shape} groups {groups} {window} relu {relu} pool {pool}"
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=where)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=where)


def _conv_pool_model() -> bytes:
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((8, 3, 3)).astype(np.float32), "W")
    B = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2], strides=[2]),
             helper.make_node("Conv", ["p", "W2"], ["y"], name="conv2")]
    W2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1)).astype(np.float32), "W2")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "t"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [W, B, W2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def test_results_held_by_the_caller_are_never_written_again(monkeypatch):
    """Reused output buffers and a compiled program's memory: an earlier result stays as it was."""
    model = lstminfer.load(_conv_pool_model())
    monkeypatch.setattr(conv_ops, "_NATIVE", False)
    oracle = lstminfer.load(_conv_pool_model())
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 3, 20)).astype(np.float32) for _ in range(4)]
    held = [model.run(None, {"x": x})[0] for x in xs]  # plan, then the compiled program
    held.append(model.run(None, {"x": xs[0]})[0])
    for x, y in zip(xs + xs[:1], held):
        np.testing.assert_allclose(y, oracle.run(None, {"x": x})[0], atol=1e-5, rtol=1e-5)
    assert "native conv" in model.describe()


def test_a_compiled_program_has_the_conv_write_its_memory(monkeypatch):
    given = []
    run, run_max_pool = conv_native.NativeConv.run, conv_native.NativeConv.run_max_pool

    def recording(self, x, begins, ends, outs, out=None):
        y = run(self, x, begins, ends, outs, out)
        given.append(out is not None and y is out)
        return y

    def recording_pool(self, x, begins, ends, outs, pool, out=None):  # the first conv, its MaxPool fused
        y = run_max_pool(self, x, begins, ends, outs, pool, out)
        given.append(out is not None and y is out)
        return y

    monkeypatch.setattr(conv_native.NativeConv, "run", recording)
    monkeypatch.setattr(conv_native.NativeConv, "run_max_pool", recording_pool)
    model = lstminfer.load(_conv_pool_model())
    x = np.random.default_rng(2).standard_normal((1, 3, 16)).astype(np.float32)
    first = model.run(None, {"x": x})[0].copy()
    for _ in range(3):
        np.testing.assert_array_equal(model.run(None, {"x": x})[0], first)
    assert given[-2:] == [True, True]  # both convs wrote straight into the program's memory


def test_threads_running_one_model_at_once_get_their_own_results():
    model = lstminfer.load(_conv_pool_model())
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((3, 3, 64)).astype(np.float32) for _ in range(4)]
    expected = [model.run(None, {"x": x})[0].copy() for x in xs]
    failures = []

    def work(i):
        for _ in range(30):
            got = model.run(None, {"x": xs[i]})[0]
            if not np.array_equal(got, expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
