"""Low-precision Cython kernels: dynamic int8 on AVX-512 VNNI, weight-only int8, bf16 weights.

Oracles and bounds (the kernels: lstminfer/kernels/cython_backend.py):

* weight-only int8 and bf16: the reference run on the dequantized / bf16-rounded
  weights, to float32 accumulation order (1e-5, relative to max(1, |output|)).
* dynamic int8 (VNNI): the activations are quantized too (per row and call,
  symmetric, 8 bits), which adds error of the same order as the weights'
  quantization. Against the dequantized-weight oracle, with the default
  activations: max |diff| <= VNNI_MAX * max(1, max |output|) and
  mean |diff| <= VNNI_MEAN * max(1, max |output|) (with margin over random H=256
  and the bundled models).
  Its integer products themselves equal an exact emulation to 1e-5.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import lstminfer
import lstminfer.models
from lstminfer import quantization as lq
from lstminfer.kernels import cython_backend as cb
from lstminfer.kernels.packing import bf16_bits, column_panels, vnni_panels
from lstminfer.tasks import get as get_task

from kernel_cases import REFERENCE, make_inputs, make_spec, make_weights

pytestmark = pytest.mark.skipif(not cb.available(), reason=str(cb.unavailable_reason()))
needs_vnni = pytest.mark.skipif(not (cb.available() and cb.vnni_available()), reason="no AVX-512 VNNI here")

TOL = 1e-5
VNNI_MAX = 0.05
VNNI_MEAN = 0.01


def _runnable_isas() -> list[str]:
    from lstminfer._native._cpu import features

    have = features()
    return [name for name, needs in cb._ISA_NEEDS.items() if all(have.get(f) for f in needs)]


def _case(seed, op, direction="forward", layout=0, H=8, I=5, T=4, batch=2, with_lens=False,
          linear_before_reset=False):
    rng = np.random.default_rng(seed)
    spec = make_spec(op, hidden_size=H, direction=direction, layout=layout, linear_before_reset=linear_before_reset)
    W, R, B, P = make_weights(rng, op, spec.num_directions, H, I)
    lens = rng.integers(0, T + 1, batch).astype(np.int32) if with_lens else None
    return spec, W, R, B, P, make_inputs(rng, op, spec, W, R, B, P, T, batch, lens=lens)


def _oracle(spec, inputs, W, R):
    args = list(inputs)
    args[1], args[2] = W, R
    return REFERENCE[spec.op](*(args if spec.op == "LSTM" else args[:6]), **spec.reference_kwargs())[: spec.num_outputs]


def _quantized(W, R):
    return (*lq.int8_per_row(W), *lq.int8_per_row(R))


def _dequantized(quantized):
    qW, sW, qR, sR = quantized
    return lq.dequantize_per_row(qW, sW), lq.dequantize_per_row(qR, sR)


def _assert_within(got, expected, max_rel, mean_rel=None):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32 and g.shape == e.shape
        scale = max(1.0, float(np.abs(e).max(initial=0)))
        diff = np.abs(g.astype(np.float64) - e)
        assert diff.max(initial=0) <= max_rel * scale, (diff.max(), max_rel * scale)
        if mean_rel is not None and diff.size:
            assert diff.mean() <= mean_rel * scale, (diff.mean(), mean_rel * scale)


# Shapes: H = 1 and 17 (partial panels), 64, 256; I != H; batch 1 (one-row tiles), 5 (a 4-row
# tile + 1), 9; with and without sequence_lens.
SHAPES = [(1, 3, 4, 1, False), (17, 5, 6, 5, True), (64, 40, 3, 9, True), (256, 128, 3, 2, False)]
KERNEL_CASES = [(op, direction, lbr) for op in ("LSTM", "GRU", "RNN") for direction in ("forward", "bidirectional")
                for lbr in ((False, True) if op == "GRU" else (False,))] + [("LSTM", "reverse", False)]


# ------------------------------------------------------------ VNNI product --

@needs_vnni
@pytest.mark.parametrize("M, K, N", [(1, 256, 1024), (1, 1, 1), (3, 5, 70), (4, 17, 64), (9, 130, 200),
                                     (70, 64, 33), (2, 0, 5)])
def test_vnni_matmul_equals_an_exact_integer_emulation(M, K, N):
    ext = cb._module(cb.isa())
    rng = np.random.default_rng(M * 1000 + K)
    q, s = lq.int8_per_row(rng.standard_normal((N, K)).astype(np.float32))
    A = rng.standard_normal((M, K)).astype(np.float32)
    A[0, :] *= 100  # rows get their own scale
    bias = rng.standard_normal(N).astype(np.float32)
    scales = np.zeros(-(-N // 64) * 64, np.float32)
    scales[:N] = s
    C = np.full((M, N + 3), 7.0, np.float32)
    ext.matmul_vnni(A, vnni_panels(q.T.copy()), scales, N, C, bias)
    peak = np.abs(A).max(axis=1, keepdims=True, initial=0)
    a_scale = (peak / np.float32(127)).astype(np.float32)
    qa = np.rint(A * np.where(peak > 0, np.float32(127) / np.maximum(peak, 1e-30), 0).astype(np.float32))
    expected = (qa.astype(np.float64) @ q.T.astype(np.float64)) * a_scale * s + bias
    np.testing.assert_allclose(C[:, :N], expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert np.all(C[:, N:] == 7.0)  # writes only its columns


@needs_vnni
def test_vnni_matmul_non_finite_row_gives_nan_and_zero_row_gives_bias():
    ext = cb._module(cb.isa())
    q, s = lq.int8_per_row(np.random.default_rng(0).standard_normal((20, 9)).astype(np.float32))
    A = np.ones((3, 9), np.float32)
    A[0, 4], A[1] = np.nan, 0.0
    A[2, 2] = np.inf
    bias = np.arange(20, dtype=np.float32)
    scales = np.zeros(64, np.float32)
    scales[:20] = s
    C = np.zeros((3, 20), np.float32)
    ext.matmul_vnni(A, vnni_panels(q.T.copy()), scales, 20, C, bias)
    assert np.isnan(C[0]).all() and np.isnan(C[2]).all()
    np.testing.assert_array_equal(C[1], bias)


def test_vnni_panels_layout_and_column_sums():
    q = np.arange(-30, 30, dtype=np.int8).reshape(6, 10)  # K=6 (padded to 8), N=10 (padded to 64)
    panels = vnni_panels(q)
    assert panels.dtype == np.int8 and panels.size == 8 * 64 + 4 * 64
    groups = panels[:8 * 64].reshape(2, 64, 4)  # [k/4, column, k%4]
    np.testing.assert_array_equal(groups[0, :10, :], q[:4].T)
    np.testing.assert_array_equal(groups[1, :10, :2], q[4:].T)
    assert not groups[1, :, 2:].any() and not groups[:, 10:].any()
    corrections = panels[8 * 64:].view("<i4")
    np.testing.assert_array_equal(corrections[:10], 128 * q.astype(np.int32).sum(axis=0))
    assert not corrections[10:].any()


# ---------------------------------------------------------- int8 kernels --

@pytest.mark.parametrize("scheme", [pytest.param("vnni", marks=needs_vnni), "weight-only", "portable"])
@pytest.mark.parametrize("op, direction, lbr", KERNEL_CASES)
def test_int8_kernels_match_the_dequantized_reference(monkeypatch, scheme, op, direction, lbr):
    if scheme == "portable":
        monkeypatch.setenv(cb.PORTABLE_ENV, "1")
    else:
        monkeypatch.delenv(cb.PORTABLE_ENV, raising=False)
    rng = np.random.default_rng(zlib.crc32(f"{op}{direction}{lbr}{scheme}".encode()))
    for H, I, T, batch, with_lens in SHAPES:
        layout = int(rng.integers(0, 2))
        spec, W, R, B, P, inputs = _case(int(rng.integers(2**31)), op, direction, layout, H, I, T, batch,
                                         with_lens, lbr)
        quantized = _quantized(W, R)
        kernel = cb.cython_int8_kernel(spec, W, R, B, P, quantized, scheme="auto" if scheme == "portable" else scheme)
        assert kernel.precision == ("int8-vnni" if scheme == "vnni" else "int8"), kernel.describe
        assert kernel.precision in kernel.describe
        expected = _oracle(spec, inputs, *_dequantized(quantized))
        if scheme == "vnni":
            _assert_within(kernel(*inputs), expected, VNNI_MAX, VNNI_MEAN)
        else:
            _assert_within(kernel(*inputs), expected, TOL)


@needs_vnni
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_vnni_error_bound_on_random_h256_models(op):
    errors = []
    for seed in range(2):
        spec, W, R, B, P, inputs = _case(seed, op, H=256, I=256, T=30, batch=3)
        quantized = _quantized(W, R)
        kernel = cb.cython_int8_kernel(spec, W, R, B, P, quantized, scheme="vnni")
        got, expected = kernel(*inputs), _oracle(spec, inputs, *_dequantized(quantized))
        _assert_within(got, expected, VNNI_MAX, VNNI_MEAN)
        errors.append(np.abs(got[0] - expected[0]).max())
    assert max(errors) > 0  # the activations really are quantized


@needs_vnni
def test_vnni_fast_path_python_path_and_thread_split_agree():
    spec, W, R, B, P, inputs = _case(5, "LSTM", H=33, I=20, T=5, batch=8)
    quantized = _quantized(W, R)
    fast = cb.cython_int8_kernel(spec, W, R, B, P, quantized, scheme="vnni")(*inputs)
    kernel = cb.cython_int8_kernel(spec, W, R, B, P, quantized, scheme="vnni", threads=2)
    split = kernel(*inputs)  # batch 8 >= 4 rows x 2 threads: the Python path splits it
    strided = list(inputs)
    strided[0] = np.asfortranarray(inputs[0])  # not C-contiguous: the Python path
    slow = kernel(*strided)
    for a, b, c in zip(fast, split, slow):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


# Batch 1, H a multiple of 64: the one-pass step (li_vnni_lstm_step1: each block's gate panels, then its
# cells with the fast maths; every other step backwards). Row 0 of a batch of 2 holding the same row twice
# runs the general path on the same quantized rows, so the two differ only by the cells' maths.
ONE_PASS_CASES = [(64, 24, 5, "forward", 0, None, True, None), (128, 40, 4, "reverse", 1, 3.0, False, None),
                  (192, 24, 3, "bidirectional", 0, None, True, 2)]


@needs_vnni
@pytest.mark.parametrize("H, I, T, direction, layout, clip, peepholes, length", ONE_PASS_CASES)
def test_vnni_one_pass_step_at_batch_1(H, I, T, direction, layout, clip, peepholes, length):
    rng = np.random.default_rng(H + T)
    spec = make_spec("LSTM", hidden_size=H, direction=direction, layout=layout, clip=clip)
    W, R, B, P = make_weights(rng, "LSTM", spec.num_directions, H, I, with_peepholes=peepholes, scale=2.0)
    lens = None if length is None else np.array([length], np.int32)
    one = make_inputs(rng, "LSTM", spec, W, R, B, P, T, 1, lens=lens)
    quantized = _quantized(W, R)
    kernel = cb.cython_int8_kernel(spec, W, R, B, P, quantized, scheme="vnni")
    ext = cb._module(cb.isa())
    before = ext.vnni_steps_run()
    got = kernel(*one)
    assert ext.vnni_steps_run() > before  # the one-pass step ran
    _assert_within(got, _oracle(spec, one, *_dequantized(quantized)), VNNI_MAX, VNNI_MEAN)
    axis = 1 if layout == 0 else 0  # batch axis of X; states are [D, B, H] (layout 0) or [B, D, H]
    two = list(one)
    two[0] = np.concatenate([one[0]] * 2, axis=axis)
    two[4] = None if lens is None else np.concatenate([lens] * 2)
    for i in (5, 6):
        two[i] = np.concatenate([one[i]] * 2, axis=1 if layout == 0 else 0)
    general = kernel(*two)
    for g, w in zip(got, general):
        row = np.take(w, [0], axis=(2 if g.ndim == 4 else 1) if layout == 0 else 0)
        np.testing.assert_allclose(g, row, rtol=0, atol=2e-4 * max(1.0, float(np.abs(row).max())))


def test_int8_scheme_rule_and_overrides(monkeypatch):
    monkeypatch.delenv(cb.INT8_SCHEME_ENV, raising=False)
    monkeypatch.delenv(cb.PORTABLE_ENV, raising=False)
    assert cb.int8_scheme("auto", 64, 64) == ("vnni" if cb.vnni_available() else "weight-only")
    assert cb.int8_scheme("weight-only", 64, 64) == "weight-only"
    assert cb.int8_scheme("auto", cb.VNNI_MAX_K + 1, 64) == "weight-only"
    monkeypatch.setenv(cb.INT8_SCHEME_ENV, "weight-only")
    assert cb.int8_scheme("auto", 64, 64) == "weight-only"
    monkeypatch.setenv(cb.INT8_SCHEME_ENV, "int4")
    with pytest.raises(ValueError, match="LSTMINFER_INT8_SCHEME"):
        cb.int8_scheme("auto", 64, 64)
    monkeypatch.delenv(cb.INT8_SCHEME_ENV)
    with pytest.raises(ValueError, match="int8 scheme must be"):
        cb.int8_scheme("fast", 64, 64)
    monkeypatch.setenv(cb.PORTABLE_ENV, "1")  # the portable build: never VNNI
    assert not cb.vnni_available()
    assert cb.int8_scheme("auto", 64, 64) == "weight-only"
    with pytest.raises(ValueError, match="needs AVX-512 VNNI"):
        cb.int8_scheme("vnni", 64, 64)


@needs_vnni
def test_vnni_kernel_stores_one_byte_per_weight():
    spec, W, R, B, P, inputs = _case(13, "LSTM", H=64, I=32, T=2, batch=1)
    kernel = cb.cython_int8_kernel(spec, W, R, B, P, _quantized(W, R), scheme="vnni")
    assert kernel._qpanels.dtype == np.int8
    assert kernel._qpanels.nbytes < 1.2 * (W.size + R.size)
    assert kernel._packed.buffer.size < (W.size + R.size) / 10


# --------------------------------------------------- bundled models, task --

def _with_scheme(monkeypatch, scheme):
    """load(quantize="int8") (scheme "auto") builds its Cython kernels with this scheme."""
    monkeypatch.setenv(cb.INT8_SCHEME_ENV, scheme)


@needs_vnni
@pytest.mark.parametrize("name", ["forecast_lstm", "forecast_gru", "adding_lstm"])
def test_vnni_error_on_the_bundled_models(monkeypatch, name):
    task = get_task("adding" if name.startswith("adding") else "forecast")
    x = task.sample(64, 120, np.random.default_rng(3))[0]
    path = lstminfer.models.path(name)
    outputs = {}
    for scheme in ("weight-only", "vnni"):
        _with_scheme(monkeypatch, scheme)
        model = lstminfer.load(path, backend="cython", quantize="int8")
        assert ("int8-vnni" in model.describe()) == (scheme == "vnni")
        feeds = {i.name: np.zeros((1, 64, i.shape[-1]), np.float32) for i in model.get_inputs() if i.name != "x"}
        feeds["x"] = x
        outputs[scheme] = model.run(None, feeds)
    _assert_within(outputs["vnni"], outputs["weight-only"], VNNI_MAX, VNNI_MEAN / 2)


@needs_vnni
def test_vnni_adding_model_accuracy_drops_at_most_half_a_point(monkeypatch):
    task = get_task("adding")
    x, target = task.sample(2000, 200, np.random.default_rng(11))
    zeros = np.zeros((1, 2000, 32), np.float32)
    feeds = {"x": x, "h0": zeros, "c0": zeros}
    path = lstminfer.models.path("adding_lstm")
    float_score = task.score(task.answer(lstminfer.load(path, backend="cython").run(None, feeds)[0]), target, x)
    _with_scheme(monkeypatch, "vnni")
    y = lstminfer.load(path, backend="cython", quantize="int8").run(None, feeds)[0]
    int8_score = task.score(task.answer(y), target, x)
    assert float_score["accuracy"] >= 0.98
    assert int8_score["accuracy"] >= float_score["accuracy"] - 0.005, (int8_score, float_score)


# -------------------------------------------------------------------- bf16 --

@pytest.mark.parametrize("isa", _runnable_isas())
@pytest.mark.parametrize("op, direction, lbr", KERNEL_CASES)
def test_bf16_kernel_matches_the_reference_on_rounded_weights(monkeypatch, isa, op, direction, lbr):
    monkeypatch.setattr(cb, "isa", lambda: isa)
    rng = np.random.default_rng(zlib.crc32(f"bf16{op}{direction}{lbr}{isa}".encode()))
    for H, I, T, batch, with_lens in SHAPES:
        spec, W, R, B, P, inputs = _case(int(rng.integers(2**31)), op, direction, int(rng.integers(0, 2)), H, I, T,
                                         batch, with_lens, lbr)
        kernel = cb.cython_bf16_kernel(spec, W, R, B, P, threads=1, label="node 'rnn0'")
        assert kernel.isa == isa and "bf16" in kernel.describe
        _assert_within(kernel(*inputs), _oracle(spec, inputs, lq.round_to_bf16(W), lq.round_to_bf16(R)), TOL)


@pytest.mark.parametrize("isa", _runnable_isas())
def test_bf16_matmul_is_the_float_product_of_the_rounded_weights(isa):
    ext = cb._module(isa)
    rng = np.random.default_rng(21)
    for M, K, N in ((1, 7, 5), (5, 33, 70), (8, 1, 1), (3, 64, 2 * ext.PANEL_WIDTH)):
        w = lq.round_to_bf16(rng.standard_normal((K, N)).astype(np.float32))
        A = rng.standard_normal((M, K)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        C = np.zeros((M, N), np.float32)
        ext.matmul_bf16(A, column_panels(bf16_bits(w), ext.PANEL_WIDTH), 0, N, C, bias)
        np.testing.assert_allclose(C, A.astype(np.float64) @ w + bias, rtol=1e-5, atol=1e-5)


def test_bf16_kernel_stores_two_bytes_per_weight_and_falls_back_on_rounded_weights():
    spec, W, R, B, P, inputs = _case(31, "GRU", H=64, I=32, T=3, batch=2)
    kernel = cb.cython_bf16_kernel(spec, W, R, B, P)
    assert kernel._qpanels.nbytes < 2.4 * (W.size + R.size)
    assert kernel._packed.buffer.size < (W.size + R.size) / 10
    expected = kernel(*inputs)
    reference = kernel(inputs[0].astype(np.float64).astype(np.float32).view(type("Sub", (np.ndarray,), {})),
                       *inputs[1:])  # an ndarray subclass: the reference, on the rounded weights
    _assert_within(reference, expected, TOL)
    with pytest.raises(ValueError, match="not rounded to bf16"):
        bf16_bits(np.float32([1.0 + 2**-10]))


def test_bf16_kernel_declines_what_the_float_kernel_declines():
    spec, W, R, B, P, _ = _case(32, "RNN")
    assert cb.cython_bf16_kernel(spec, W.astype(np.float64), R, B, P) is None
    with pytest.raises(ValueError, match="threads"):
        cb.cython_bf16_kernel(spec, W, R, B, P, threads=0)
