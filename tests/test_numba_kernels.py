"""The Numba kernels (lstminfer.kernels) against the NumPy reference.

Float32 parity: max |numba - reference| <= 1e-5 for outputs of order 1; the
hypothesis cases with unbounded activations (Relu, Affine, ...) can grow
large, so there the bound is relative to the output's magnitude.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

numba = pytest.importorskip("numba")

from lstminfer import kernels, reference  # noqa: E402
from lstminfer.errors import InvalidInputError  # noqa: E402
from lstminfer.kernels import fused, numba_config, numba_math, numba_rnn, packing  # noqa: E402
from lstminfer.reference import SUPPORTED_ACTIVATIONS  # noqa: E402
from lstminfer.reference.activations import Activation  # noqa: E402

from kernel_cases import REFERENCE, make_inputs, make_spec, make_weights  # noqa: E402

TOL = 1e-5
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------ helpers --

def run_both(op, spec, inputs, threads=1):
    W, R, B = inputs[1:4]
    P = inputs[7] if op == "LSTM" else None
    kernel = kernels.numba_kernel(spec, W, R, B, P, threads=threads)
    assert kernel is not None, kernels.why_not_fused(spec, W, R, B, P)
    got = kernel(*inputs)
    expected = REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]
    return got, expected


def assert_close(got, expected, relative=False):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32 and g.shape == e.shape
        bound = TOL * max(1.0, float(np.abs(e).max(initial=0))) if relative else TOL
        assert np.abs(g - e).max(initial=0) <= bound, (np.abs(g - e).max(), bound)


# ------------------------------------------------------- building blocks --

def test_fast_tanh_and_sigmoid_accuracy():
    x = np.concatenate([np.linspace(-30, 30, 600_001, dtype=np.float32),
                        np.float32(10) ** np.linspace(-30, 1.5, 3001, dtype=np.float32)])
    x = np.concatenate([x, -x])
    tanh = np.empty_like(x)
    tanh[:] = x
    numba_math.activate_inplace(tanh, numba_math.TANH, np.float32(0), np.float32(0))
    sig = x.copy()
    numba_math.activate_inplace(sig, numba_math.SIGMOID, np.float32(0), np.float32(0))
    x64 = x.astype(np.float64)
    # a few float32 ulps: long sequences accumulate these errors in the cell state
    assert np.abs(tanh - np.tanh(x64)).max() < 1.5e-7
    assert np.abs(sig - 1 / (1 + np.exp(-x64))).max() < 1.5e-7
    assert np.abs(tanh).max() <= 1 and sig.min() >= 0 and sig.max() <= 1


def test_fast_exp_relative_error():
    x = np.linspace(-87, 88, 20001, dtype=np.float32)
    got = np.array([numba_math.fast_exp(v) for v in x])
    exact = np.exp(x.astype(np.float64))
    assert (np.abs(got - exact) / exact).max() < 4e-7


def test_nan_and_infinities_through_activations():
    f32 = np.float32
    for code in (numba_math.TANH, numba_math.SIGMOID):
        assert np.isnan(numba_math.activate(f32(np.nan), code, f32(0), f32(0)))
    assert numba_math.fast_tanh(f32(np.inf)) == 1 and numba_math.fast_tanh(f32(-np.inf)) == -1
    assert numba_math.fast_sigmoid(f32(np.inf)) == 1 and 0 <= numba_math.fast_sigmoid(f32(-np.inf)) < 1e-37


@pytest.mark.parametrize("name", SUPPORTED_ACTIVATIONS)
def test_every_activation_matches_reference(name):
    x = np.linspace(-12, 12, 2401, dtype=np.float32)
    act = Activation(name, alpha=0.37, beta=1.3)
    code = numba_math.ACTIVATION_CODES[name.lower()]
    vector = x.copy()
    numba_math.activate_inplace(vector, code, np.float32(0.37), np.float32(1.3))
    scalar = np.array([numba_math.activate(v, code, np.float32(0.37), np.float32(1.3)) for v in x[::40]])
    expected = act(x)
    assert np.abs(vector - expected).max() <= TOL * max(1, np.abs(expected).max())
    assert np.abs(scalar - expected[::40]).max() <= TOL * max(1, np.abs(expected).max())


def test_every_reference_activation_has_a_code():
    assert {n.lower() for n in SUPPORTED_ACTIVATIONS} == set(numba_math.ACTIVATION_CODES)


@pytest.mark.parametrize("M,K,N,n0,n1", [(1, 7, 5, 0, 5), (3, 17, 37, 2, 37), (4, 1, 16, 0, 16),
                                         (5, 64, 19, 3, 11), (9, 3, 33, 0, 33), (70, 20, 40, 1, 39)])
def test_product_matches_numpy_and_writes_only_its_columns(M, K, N, n0, n1):
    rng = np.random.default_rng(M * 100 + K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm = rng.standard_normal((N, K)).astype(np.float32)
    out = np.full((M, N + 6), 7.0, dtype=np.float32)
    numba_math.product(A, Bm, np.ascontiguousarray(Bm.T), n0, n1, out, 3)
    width = n1 - n0
    expected = A.astype(np.float64) @ Bm[n0:n1].T.astype(np.float64)
    assert np.abs(out[:, 3: 3 + width] - expected).max() <= 1e-5 * max(1, np.abs(expected).max())
    assert (out[:, :3] == 7).all() and (out[:, 3 + width:] == 7).all()


@pytest.mark.parametrize("M,K,N,n0,n1", [
    (135, 300, 200, 3, 197),  # several M and K blocks, a column tail and a row tail
    (64, 128, 64, 0, 64),  # exactly one K block, no tail
    (8, 1, 40, 8, 40),  # K = 1
    (4, 257, 8 * 48, 0, 8 * 48),  # K one past a block
])
def test_tiled_product_blocks_and_tails(M, K, N, n0, n1):
    rng = np.random.default_rng(M + K + N)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm = rng.standard_normal((N, K)).astype(np.float32)
    out = np.full((M, N + 6), 7.0, dtype=np.float32)
    numba_math.product(A, Bm, np.ascontiguousarray(Bm.T), n0, n1, out, 3)
    width = n1 - n0
    expected = A.astype(np.float64) @ Bm[n0:n1].T.astype(np.float64)
    assert np.abs(out[:, 3: 3 + width] - expected).max() <= 1e-5 * np.sqrt(K) * max(1, np.abs(expected).max())
    assert (out[:, :3] == 7).all() and (out[:, 3 + width:] == 7).all()


def test_tiled_product_reads_strided_rows():
    """A and out as row slices of wider arrays (the drivers pass views of the scratch buffer)."""
    rng = np.random.default_rng(2)
    A = rng.standard_normal((12, 40)).astype(np.float32)[:, 3:35]
    BmT = rng.standard_normal((32, 80)).astype(np.float32)
    Bm = np.ascontiguousarray(BmT.T)
    out = np.zeros((12, 100), dtype=np.float32)
    numba_math.product(A, Bm, BmT, 16, 80, out, 20)
    np.testing.assert_allclose(out[:, 20:84], A @ BmT[:, 16:80], atol=1e-4)
    assert not out[:, :20].any() and not out[:, 84:].any()


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction,layout", [("forward", 0), ("reverse", 0), ("bidirectional", 0),
                                              ("bidirectional", 1)])
def test_projection_in_chunks_of_steps(op, direction, layout):
    """T * B over the chunk size: several projected chunks, the last one partial."""
    rng = np.random.default_rng(13)
    batch, T = 3, 100
    assert numba_rnn.scratch_size(T, batch, 4, 8, True) < numba_rnn.scratch_size(T, batch, 4, 8, False)
    D = 2 if direction == "bidirectional" else 1
    W, R, B, P = make_weights(rng, op, D, 24, 9, scale=0.5)
    spec = make_spec(op, hidden_size=24, direction=direction, layout=layout)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=T, batch=batch,
                         lens=np.array([T, 57, 1], dtype=np.int32))
    assert_close(*run_both(op, spec, inputs), relative=True)  # the LSTM cell state reaches |c| ~ 40


def test_lstm_without_peepholes_takes_the_short_path_and_matches():
    rng = np.random.default_rng(14)
    W, R, B, _ = make_weights(rng, "LSTM", 1, 48, 16)
    spec = make_spec("LSTM", hidden_size=48, input_forget=True)
    zeros = np.zeros((1, 3 * 48), dtype=np.float32)
    for P in (None, zeros):
        inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=30, batch=2, lens=None)
        assert_close(*run_both("LSTM", spec, inputs))


# ------------------------------------------------------------- packing --

def test_gate_orders_are_permutations_of_the_spec_order():
    for op, onnx_order in packing.ONNX_GATES.items():
        assert sorted(packing.KERNEL_GATES[op]) == sorted(onnx_order)
        assert len(onnx_order) == reference.GATES[op]
    assert sorted(packing.PEEPHOLE_KERNEL) == sorted(packing.PEEPHOLE_ONNX)


def test_row_stride_is_aligned_and_avoids_512_byte_multiples():
    for n in (1, 16, 17, 64, 128, 256, 1000, 1024, 2048):
        stride = packing.row_stride(n)
        assert stride >= n and stride % packing.ALIGN_FLOATS == 0 and (stride * 4) % 512 != 0


@pytest.mark.parametrize("H,blocks,expected", [(64, 1, [0, 64]), (64, 2, [0, 32, 64]), (17, 2, [0, 8, 17]),
                                               (100, 2, [0, 48, 100]), (1, 2, [0, 1])])
def test_unit_blocks(H, blocks, expected):
    assert packing.unit_blocks(H, blocks).tolist() == expected


def test_pack_places_gates_biases_and_peepholes():
    rng = np.random.default_rng(3)
    H, I = 5, 3
    W, R, B, P = make_weights(rng, "LSTM", 1, H, I)
    packed = packing.pack("LSTM", W, R, B, P, blocks=2)
    order = packing.kernel_row_order("LSTM", H, packed.edges)
    assert sorted(order.tolist()) == list(range(4 * H))
    np.testing.assert_array_equal(packed.segment(0, packing.SEG_W, (4 * H, I)), W[0][order])
    RT = packed.segment(0, packing.SEG_RT, (H, packing.row_stride(4 * H)))
    np.testing.assert_array_equal(RT[:, :4 * H], R[0][order].T)
    assert not RT[:, 4 * H:].any()
    np.testing.assert_allclose(packed.segment(0, packing.SEG_BIAS_X, (4 * H,)), (B[0, :4 * H] + B[0, 4 * H:])[order])
    peep = packed.segment(0, packing.SEG_PEEP, (3, H))
    np.testing.assert_array_equal(peep, P[0].reshape(3, H)[[0, 2, 1]])  # i, o, f -> i, f, o
    assert packed.buffer.ctypes.data % 64 == 0 and not packed.buffer.flags.writeable
    assert (packed.offsets % packing.ALIGN_FLOATS == 0).all()


def test_gru_linear_before_reset_keeps_rbh_apart():
    rng = np.random.default_rng(4)
    H = 4
    W, R, B, _ = make_weights(rng, "GRU", 1, H, 2)
    packed = packing.pack("GRU", W, R, B, None, linear_before_reset=True)
    np.testing.assert_array_equal(packed.segment(0, packing.SEG_BIAS_RH, (H,)), B[0, 3 * H + 2 * H:])
    np.testing.assert_array_equal(packed.segment(0, packing.SEG_BIAS_X, (3 * H,))[2 * H:], B[0, 2 * H: 3 * H])


# -------------------------------------------------------------- parity --

@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", reference.DIRECTIONS)
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("with_lens", [False, True])
@pytest.mark.parametrize("clip", [None, 0.8])
@pytest.mark.parametrize("flag", [False, True])
def test_every_op_through_the_one_sequence_shell(op, direction, layout, with_lens, clip, flag):
    """Every op x direction x layout x sequence_lens x clip x (input_forget | linear_before_reset) through
    ``numba_rnn._sequence``: several steps, batch 5 (four rows on the register tiles, one on the panels)."""
    rng = np.random.default_rng([ord(op[0]), len(direction), layout, with_lens, clip is None, flag])
    D = 2 if direction == "bidirectional" else 1
    T, batch = 7, 5
    W, R, B, P = make_weights(rng, op, D, 19, 6)
    spec = make_spec(op, hidden_size=19, direction=direction, layout=layout, clip=clip,
                     input_forget=flag and op == "LSTM", linear_before_reset=flag and op == "GRU")
    lens = np.array([7, 0, 3, 1, 6], np.int32) if with_lens else None
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=T, batch=batch, lens=lens)
    kernel = kernels.numba_kernel(spec, W, R, B, P)
    expected = REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]
    assert_close(kernel(*inputs), expected)
    assert getattr(kernel, "last_route", 0) == 0  # the sequence shell, not the one-step path


def test_one_driver_source_bound_per_op():
    """The three drivers are one function (``_sequence``) compiled per op around its cell, and their gate
    counts are the reference's."""
    for op in ("LSTM", "GRU", "RNN"):
        dispatcher = numba_rnn.driver(op)
        assert dispatcher.py_func.__code__ is numba_rnn._sequence.__code__
        assert dispatcher.py_func.__globals__["G"] == reference.GATES[op]
        assert dispatcher.py_func.__name__ == f"{op.lower()}_sequence_{numba_rnn._DIGEST}"
    assert numba_rnn.ACTS_PER_DIRECTION == {op: len(a) for op, a in reference.DEFAULT_ACTIVATIONS.items()}


@st.composite
def cases(draw):
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    direction = draw(st.sampled_from(reference.DIRECTIONS))
    D = 2 if direction == "bidirectional" else 1
    H = draw(st.sampled_from([1, 2, 5, 17, 32]))
    I = draw(st.sampled_from([1, 3, 17]))
    T = draw(st.integers(0, 6))
    batch = draw(st.integers(1, 6))
    activations = None
    if draw(st.booleans()):
        activations = draw(st.lists(st.sampled_from(SUPPORTED_ACTIVATIONS),
                                    min_size=len(reference.DEFAULT_ACTIVATIONS[op]) * D,
                                    max_size=len(reference.DEFAULT_ACTIVATIONS[op]) * D))
    alphas = draw(st.lists(st.floats(0.05, 1.5), max_size=6))
    betas = draw(st.lists(st.floats(0.05, 1.5), max_size=6))
    lens = None
    if draw(st.booleans()):
        lens = np.array(draw(st.lists(st.integers(0, T), min_size=batch, max_size=batch)), dtype=np.int32)
    return dict(
        op=op, direction=direction, H=H, I=I, T=T, batch=batch, lens=lens,
        spec=make_spec(op, hidden_size=draw(st.sampled_from([None, H])), direction=direction,
                       layout=draw(st.sampled_from([0, 1])), activations=activations, alphas=alphas, betas=betas,
                       clip=draw(st.sampled_from([None, 0.5, 3.0])), input_forget=draw(st.booleans()),
                       linear_before_reset=draw(st.booleans()),
                       num_outputs=draw(st.integers(1, 3 if op == "LSTM" else 2))),
        with_bias=draw(st.booleans()), with_peepholes=draw(st.booleans()),
        with_h0=draw(st.booleans()), with_c0=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("batch,H", [(2, 260), (9, 40), (2, 40)])  # hidden split per step; batch split; one core
def test_two_threads_match_one(batch, H):
    rng = np.random.default_rng(5)
    op = "LSTM"
    W, R, B, P = make_weights(rng, op, 2, H, 7)
    spec = make_spec(op, hidden_size=H, direction="bidirectional", layout=1, clip=2.0)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=9, batch=batch,
                         lens=rng.integers(0, 10, batch).astype(np.int32))
    got, expected = run_both(op, spec, inputs, threads=2)
    assert_close(got, expected)
    one = kernels.numba_kernel(spec, W, R, B, P)(*inputs)
    for a, b in zip(got, one):
        np.testing.assert_allclose(a, b, atol=1e-6)
    blocks = 2 if H >= kernels.HIDDEN_SPLIT_MIN_UNITS else 1
    assert f"split in {blocks} blocks" in kernels.numba_kernel(spec, W, R, B, P, threads=2).describe


@pytest.mark.parametrize("op,lbr", [("GRU", False), ("GRU", True), ("RNN", False), ("LSTM", False)])
def test_hidden_split_threads_meet_at_each_step(op, lbr):
    """Batch 1 at H >= 256 with two threads: each runs its unit block, a spin barrier per step."""
    rng = np.random.default_rng(15)
    H = kernels.HIDDEN_SPLIT_MIN_UNITS + 8
    W, R, B, P = make_weights(rng, op, 2, H, 5)
    spec = make_spec(op, hidden_size=H, direction="bidirectional", linear_before_reset=lbr)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=11, batch=1, lens=np.array([9], np.int32))
    kernel = kernels.numba_kernel(spec, W, R, B, P, threads=2)
    assert "split in 2 blocks" in kernel.describe
    expected = REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]
    assert_close(kernel(*inputs), expected)
    # Several calls at once from other threads (each call's second part queues on the shared pool).
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(3) as callers:
        results = [f.result(timeout=60) for f in [callers.submit(kernel, *inputs) for _ in range(6)]]
    for got in results:
        assert_close(got, expected)
    bad = list(inputs)
    bad[4] = np.array([12], np.int32)  # beyond T: both parts stop before any barrier, the reference raises
    with pytest.raises(InvalidInputError, match="sequence_lens"):
        kernel(*bad)


# ------------------------------------------------------ contract edges --

@pytest.mark.parametrize("change,reason", [
    (dict(W=None), "not constants"),
    (dict(dtype=np.float64), "float32 only"),
    (dict(hidden_size=5), "hidden_size 5"),
    (dict(B_shape=(1, 7)), "B has shape"),
])
def test_why_not_fused(change, reason):
    rng = np.random.default_rng(10)
    W, R, B, _ = make_weights(rng, "RNN", 1, 4, 2)
    dtype = change.get("dtype", np.float32)
    W, R, B = W.astype(dtype), R.astype(dtype), B.astype(dtype)
    if "B_shape" in change:
        B = np.zeros(change["B_shape"], dtype)
    spec = make_spec("RNN", hidden_size=change.get("hidden_size", 4))
    W = None if "W" in change else W
    assert reason in kernels.why_not_fused(spec, W, R, B, None)
    assert kernels.numba_kernel(spec, W, R, B, None) is None


def test_compiled_at_load_and_never_on_a_request():
    rng = np.random.default_rng(12)
    W, R, B, _ = make_weights(rng, "RNN", 1, 4, 2)
    kernel = kernels.numba_kernel(make_spec("RNN", hidden_size=4), W, R, B, None)
    dispatcher = numba_rnn.driver("RNN", False)
    assert len(dispatcher.signatures) == 1 and not dispatcher._can_compile
    X = np.asfortranarray(rng.standard_normal((3, 2, 2)).astype(np.float32))  # other layouts convert
    kernel(X, W, R, B)
    assert len(dispatcher.signatures) == 1
    assert kernel.describe.startswith("numba rnn_seq fused (H=4")


def test_cache_location_that_cannot_be_written_falls_back_to_memory(monkeypatch):
    calls = []

    def fake_njit(**flags):
        calls.append(flags["cache"])
        if flags["cache"]:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return lambda fn: fn

    monkeypatch.setattr(numba_config.numba, "njit", fake_njit)
    monkeypatch.setattr(numba_config, "caching_enabled", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        numba_config.jit_entry(lambda x: x)
    assert calls == [True, False] and not numba_config.caching_enabled
    assert any("NUMBA_CACHE_DIR" in str(w.message) for w in caught)


# --------------------------------------------- C entry (no dispatcher) --

entry_built = pytest.mark.skipif(fused._numba_entry is None, reason="lstminfer._native._numba_entry not built")


def entry_kernel(op, spec, W, R, B, P):
    """A one-thread kernel whose calls must all take the C entry (``_slow`` fails the test)."""
    kernel = kernels.numba_kernel(spec, W, R, B, P)
    assert kernel.entry_bound

    def no_slow(*args):
        raise AssertionError("the C entry declined a call it should take")

    kernel._slow = no_slow
    return kernel


@entry_built
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction,layout", [("forward", 0), ("reverse", 1), ("bidirectional", 0),
                                              ("bidirectional", 1)])
@pytest.mark.parametrize("T,batch", [(1, 1), (1, 3), (6, 1), (5, 4)])
def test_c_entry_matches_reference(op, direction, layout, T, batch):
    rng = np.random.default_rng(T * 10 + batch)
    D = 2 if direction == "bidirectional" else 1
    W, R, B, P = make_weights(rng, op, D, 17, 5)
    spec = make_spec(op, hidden_size=17, direction=direction, layout=layout, clip=2.5,
                     linear_before_reset=batch % 2 == 1, input_forget=T == 1)
    kernel = entry_kernel(op, spec, W, R, B, P)
    for lens, with_states in ((None, True), (np.arange(T, T - batch, -1).clip(0).astype(np.int32), False)):
        inputs = make_inputs(rng, op, spec, W, R, B, P, T=T, batch=batch, lens=lens, with_h0=with_states,
                             with_c0=with_states)
        expected = REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]
        got = kernel(*inputs)
        assert_close(got, expected)
        assert all(g.flags.c_contiguous for g in got)


@entry_built
@pytest.mark.parametrize("op,num_outputs", [("LSTM", 1), ("LSTM", 2), ("GRU", 1)])
def test_c_entry_trailing_outputs(op, num_outputs):
    rng = np.random.default_rng(3)
    W, R, B, P = make_weights(rng, op, 1, 8, 3)
    spec = make_spec(op, hidden_size=8, num_outputs=num_outputs, layout=1)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=3, batch=2)
    got = entry_kernel(op, spec, W, R, B, P)(*inputs)
    assert len(got) == num_outputs
    assert_close(got, REFERENCE[op](*inputs, **spec.reference_kwargs())[:num_outputs])


@entry_built
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", [0, 1])
def test_c_entry_writes_into_the_arrays_it_is_handed(op, layout):
    """``out=``: a compiled program's own memory. Each array of the output's exact shape is
    written and returned as it is; one it cannot take (shape, dtype, read-only) is replaced by
    a new array, and the others are still written in place."""
    rng = np.random.default_rng(5)
    W, R, B, P = make_weights(rng, op, 1, 16, 4)
    spec = make_spec(op, hidden_size=16, layout=layout)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=5, batch=3)
    expected = REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]
    kernel = entry_kernel(op, spec, W, R, B, P)
    assert kernel.writes_into
    out = [np.full(e.shape, np.nan, dtype=np.float32) for e in expected]
    got = kernel(*inputs, out=out)
    assert all(g is o for g, o in zip(got, out))
    assert_close(out, expected)
    read_only = np.zeros(expected[1].shape, dtype=np.float32)
    read_only.flags.writeable = False
    for bad in (np.zeros(expected[1].shape, dtype=np.float64), np.zeros(expected[1].shape[:-1] + (17,), np.float32),
                read_only, np.zeros(expected[1].shape, dtype=np.float32)[..., ::1].T.copy().T):
        out = [np.full(e.shape, np.nan, dtype=np.float32) for e in expected]
        out[1] = bad
        got = kernel(*inputs, out=out)
        assert got[0] is out[0] and got[1] is not bad
        assert_close(got, expected)
        assert not np.any(read_only) and not np.any(bad)  # the refused array is left alone
    assert_close(kernel(*inputs, out=None), expected)


@entry_built
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", [0, 1])
def test_run_into_updates_the_states_in_place_like_chunks_of_one_sequence(op, layout):
    rng = np.random.default_rng(4)
    W, R, B, P = make_weights(rng, op, 1, 16, 4)
    spec = make_spec(op, hidden_size=16, layout=layout)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=7, batch=2)
    X = inputs[0]
    expected = REFERENCE[op](*inputs, **spec.reference_kwargs())
    kernel = entry_kernel(op, spec, W, R, B, P)
    h = inputs[5].copy()
    states = (h, inputs[6].copy()) if op == "LSTM" else (h,)
    ys = []
    for t0, t1 in ((0, 1), (1, 4), (4, 7)):
        chunk = np.ascontiguousarray(X[t0:t1] if layout == 0 else X[:, t0:t1])
        ys.append(kernel.run_into(chunk, *states))
    assert_close([np.concatenate(ys, axis=layout)] + list(states), expected)
    # What it declines (the stream's checked path takes it): read-only states, float64, wrong shapes.
    read_only = h.copy()
    read_only.flags.writeable = False
    rest = states[1:]
    assert kernel.run_into(X, read_only, *rest) is None
    assert kernel.run_into(X.astype(np.float64), h, *rest) is None
    assert kernel.run_into(X[:, :1] if layout == 0 else X[:1], h, *rest) is None  # batch 1, states batch 2
    assert kernel.run_into(X, h) is None if op == "LSTM" else kernel.run_into(X, h, h.copy()) is None


@entry_built
def test_c_entry_declines_to_the_python_path_which_gives_the_reference():
    rng = np.random.default_rng(13)
    op = "LSTM"
    W, R, B, P = make_weights(rng, op, 1, 6, 3)
    spec = make_spec(op, hidden_size=6)
    kernel = kernels.numba_kernel(spec, W, R, B, P)
    slow_calls = []
    original = kernel._slow
    kernel._slow = lambda *args: slow_calls.append(1) or original(*args)
    X, _, _, _, _, h0, c0, _ = make_inputs(rng, op, spec, W, R, B, P, T=4, batch=3)
    cases = [
        (X[:, ::2], W, R, B, None, h0[:, ::2], c0[:, ::2], P),  # strided X and states
        (X, W, (R * 2).astype(np.float32), B, None, h0, c0, P),  # other weights
        (X, W, R, B, np.array([4, 0, 2], np.int64), h0, c0, P),  # lens not int32
        (X, W, R, B, None, np.asfortranarray(h0), c0, P),
    ]
    for inputs in cases:
        expected = reference.lstm(*inputs, **spec.reference_kwargs())
        assert_close([g.astype(np.float32) for g in kernel(*inputs)], [e.astype(np.float32) for e in expected])
    assert len(slow_calls) == len(cases)
    with pytest.raises(InvalidInputError, match=r"sequence_lens"):  # out of range: the reference's error
        kernel(X, W, R, B, np.array([5, 1, 1], np.int32), h0, c0, P)
    with pytest.raises(InvalidInputError, match=r"initial_h"):
        kernel(X, W, R, B, None, h0[:, :2].copy(), c0, P)
    with pytest.raises(InvalidInputError, match=r"element type float64"):  # float64 X, float32 weights
        kernel(X.astype(np.float64), W, R, B, None, h0, c0, P)


@entry_built
def test_two_threads_kernels_and_a_busy_scratch_buffer_use_the_entry():
    """threads=2 keeps the Python path; one kernel called from several threads at once stays right."""
    rng = np.random.default_rng(14)
    op = "GRU"
    W, R, B, _ = make_weights(rng, op, 1, 48, 8)
    spec = make_spec(op, hidden_size=48)
    assert not kernels.numba_kernel(spec, W, R, B, None, threads=2).entry_bound
    kernel = entry_kernel(op, spec, W, R, B, None)
    feeds = [make_inputs(rng, op, spec, W, R, B, None, T=int(rng.integers(1, 40)), batch=int(rng.integers(1, 5)))
             for _ in range(12)]
    expected = [REFERENCE[op](*f, **spec.reference_kwargs()) for f in feeds]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            results = list(pool.map(lambda f: kernel(*f), feeds))
            for got, exp in zip(results, expected):
                assert_close(got, exp)


@entry_built
@SETTINGS
@given(cases(), st.integers(1, 3))
def test_one_step_path_matches_reference(case, batch):
    """T = 1, batch 1..3 (a stream's step) takes numba_rnn.step, not the sequence driver, with every
    attribute: activations, clip, input_forget, peepholes, linear_before_reset, sequence_lens 0 or 1,
    initial states absent or present, both layouts and directions, odd sizes."""
    rng = np.random.default_rng(case["seed"])
    op, spec = case["op"], case["spec"]
    W, R, B, P = make_weights(rng, op, spec.num_directions, case["H"], case["I"], case["with_bias"],
                              case["with_peepholes"], scale=0.5)
    lens = None if case["lens"] is None else rng.integers(0, 2, batch).astype(np.int32)
    inputs = make_inputs(rng, op, spec, W, R, B, P, 1, batch, lens, case["with_h0"], case["with_c0"])
    kernel = entry_kernel(op, spec, W, R, B, P)
    got = kernel(*inputs)
    assert kernel.last_route == 1
    assert_close(got, REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs], relative=True)


@entry_built
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layout", [0, 1])
def test_one_step_path_updates_states_in_place_and_longer_calls_take_the_driver(op, layout):
    """run_into at T = 1 reads and writes the states in the same memory; T = 2 or batch 4 take the driver."""
    rng = np.random.default_rng(21)
    W, R, B, P = make_weights(rng, op, 1, 17, 3)
    spec = make_spec(op, hidden_size=17, layout=layout, linear_before_reset=op == "GRU", clip=1.5)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=5, batch=1)
    expected = REFERENCE[op](*inputs, **spec.reference_kwargs())
    kernel = entry_kernel(op, spec, W, R, B, P)
    X = inputs[0]
    states = (inputs[5].copy(), inputs[6].copy()) if op == "LSTM" else (inputs[5].copy(),)
    ys = []
    for t in range(5):
        ys.append(kernel.run_into(np.ascontiguousarray(X[t:t + 1] if layout == 0 else X[:, t:t + 1]), *states))
        assert kernel.last_route == 1
    assert_close([np.concatenate(ys, axis=layout)] + list(states), expected)
    for T, batch in ((2, 1), (1, 4)):
        kernel(*make_inputs(rng, op, spec, W, R, B, P, T=T, batch=batch))
        assert kernel.last_route == 0
    assert numba_rnn.one_step(1, 3, 1) and not numba_rnn.one_step(1, 3, 2)


@entry_built
def test_entry_compiled_at_load_and_cached_under_the_kernel_digest():
    from lstminfer.kernels import numba_entry

    rng = np.random.default_rng(16)
    W, R, B, _ = make_weights(rng, "RNN", 1, 4, 2)
    kernels.numba_kernel(make_spec("RNN", hidden_size=4), W, R, B, None)
    compiled = numba_entry._ENTRIES["RNN"]
    assert compiled.__name__ == f"rnn_entry_{numba_rnn._DIGEST}" and compiled.address
    assert numba_entry.entry("RNN") is compiled
    assert fused._numba_entry.SLOT_NAMES == numba_entry.SLOT_NAMES
    # `lstminfer compile` warms the entries with the drivers, so a deployment image has both cached
    assert {"lstm_entry", "gru_entry", "rnn_entry"} <= set(kernels.compile_all())
    assert numba_entry._ENTRIES["RNN"] is compiled


def test_everything_runs_without_the_numba_entry_extension(tmp_path):
    """lstminfer._native._numba_entry is optional: without it the Python path gives the same numbers."""
    import subprocess
    import sys

    script = tmp_path / "no_entry.py"
    script.write_text(
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'lstminfer._native._numba_entry':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "sys.path.insert(0, 'tests')\n"
        "from lstminfer import kernels\n"
        "from lstminfer.kernels import fused\n"
        "from kernel_cases import make_inputs, make_spec, make_weights\n"
        "assert fused._numba_entry is None\n"
        "rng = np.random.default_rng(1)\n"
        "W, R, B, P = make_weights(rng, 'LSTM', 2, 9, 4)\n"
        "spec = make_spec('LSTM', hidden_size=9, direction='bidirectional', layout=1)\n"
        "k = kernels.numba_kernel(spec, W, R, B, P)\n"
        "assert not hasattr(k, 'run_into')\n"
        "inputs = make_inputs(rng, 'LSTM', spec, W, R, B, P, T=5, batch=3, lens=np.array([5, 2, 0], np.int32))\n"
        "np.savez(sys.argv[1], *k(*inputs))\n"
    )
    out = tmp_path / "out.npz"
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, str(script), str(out)], cwd=root, env=env, check=True, timeout=120)
    rng = np.random.default_rng(1)
    W, R, B, P = make_weights(rng, "LSTM", 2, 9, 4)
    spec = make_spec("LSTM", hidden_size=9, direction="bidirectional", layout=1)
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=5, batch=3, lens=np.array([5, 2, 0], np.int32))
    with np.load(out) as slow:
        got = [slow[f"arr_{k}"] for k in range(3)]
    assert_close(got, reference.lstm(*inputs, **spec.reference_kwargs()))
    for a, b in zip(got, kernels.numba_kernel(spec, W, R, B, P)(*inputs)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("op,lbr", [("LSTM", False), ("GRU", False), ("GRU", True), ("RNN", False)])
@pytest.mark.parametrize("H", [1, 17, 45])
@pytest.mark.parametrize("T,batch", [(1, 1), (1, 3), (5, 2), (3, 5)])
def test_small_batches_over_packed_panels(op, lbr, H, T, batch):
    """Batch 1..3 (every row over the panels) and 5 (one row left by the tiles): odd H, both directions,
    both layouts, sequence_lens."""
    rng = np.random.default_rng(H * 10 + T + batch)
    W, R, B, P = make_weights(rng, op, 2, H, 3)
    for layout in (0, 1):
        spec = make_spec(op, hidden_size=H, direction="bidirectional", layout=layout, linear_before_reset=lbr)
        lens = rng.integers(0, T + 1, batch).astype(np.int32)
        inputs = make_inputs(rng, op, spec, W, R, B, P, T=T, batch=batch, lens=lens)
        assert_close(*run_both(op, spec, inputs))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("H,I", [(1, 1), (17, 3), (40, 17)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_one_step_single_panel_pass_matches_the_reference(op, H, I, direction, layout):
    """T=1, batch < 4: x . W^T, h . R^T and the bias in one panel pass (numba_rnn._fused_step), through the
    call and through ``run_into``; default and other activations, peepholes, clip, flags, lengths 0/1."""
    rng = np.random.default_rng(H * 7 + I)
    for batch in (1, 3):
        for variant in range(3):
            acts = {"LSTM": ["HardSigmoid", "Tanh", "Relu"], "GRU": ["HardSigmoid", "Relu"], "RNN": ["Relu"]}[op]
            D = 2 if direction == "bidirectional" else 1
            spec = make_spec(op, hidden_size=H, direction=direction, layout=layout,
                             activations=acts * D if variant == 2 else None, clip=2.5 if variant == 1 else None,
                             input_forget=op == "LSTM" and variant == 1,
                             linear_before_reset=op == "GRU" and variant != 1)
            W, R, B, P = make_weights(rng, op, D, H, I, with_peepholes=variant != 0)
            lens = np.array([1, 0, 1][:batch], np.int32) if variant == 1 else None
            inputs = make_inputs(rng, op, spec, W, R, B, P, T=1, batch=batch, lens=lens)
            got, expected = run_both(op, spec, inputs)
            assert_close(got, expected)
            if lens is not None:  # run_into takes no lengths
                continue
            kernel = kernels.numba_kernel(spec, W, R, B, P)
            states = [inputs[5].copy()] + ([inputs[6].copy()] if op == "LSTM" else [])
            Y = kernel.run_into(inputs[0], *states)
            if Y is not None:  # the C entry took it
                assert_close([Y] + states, expected)
