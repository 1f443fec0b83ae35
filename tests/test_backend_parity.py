"""Every registered fast backend against the reference: one grid, run unchanged against each.

Kernels are made as the loader makes them, through the backend's registered
builder (``lstminfer.backends.builder``), so a new backend is tested here by
its registration line alone. Float32 parity: max |kernel - reference| <= 1e-5
for outputs of order 1; with unbounded activations (Relu, Affine, ...) values
can grow, so there the bound is relative to the output's magnitude.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstminfer import backends, reference
from lstminfer.errors import InvalidInputError
from lstminfer.kernels import cython_backend
from lstminfer.kernels.shell import FLOAT32, KernelContext, RecurrentWeights
from lstminfer.reference import SUPPORTED_ACTIVATIONS

from kernel_cases import REFERENCE, make_inputs, make_spec, make_weights

TOL = 1e-5
REFERENCE_ERROR_FACTOR = 4  # a fused kernel rounds in another order than the reference, not worse
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABEL = "node 'rnn0'"


def _variants() -> list[tuple[str, str | None]]:
    """(backend, Cython instruction-set build or None): every fast backend and build this machine runs."""
    variants = []
    for name in backends.available_backends():
        if name == "cython":
            from lstminfer._native._cpu import features

            have = features()
            variants += [(name, isa) for isa, needs in cython_backend._ISA_NEEDS.items()
                         if all(have.get(f) for f in needs)]
        elif name != "reference":
            variants.append((name, None))
    return variants


VARIANTS = _variants()


@pytest.fixture(params=VARIANTS, ids=lambda v: "-".join(p for p in v if p))
def backend(request, monkeypatch):
    name, isa = request.param
    if isa is not None:
        monkeypatch.setattr(cython_backend, "isa", lambda: isa)
    return name


def build(backend, op, spec, inputs, threads=1):
    W, R, B = inputs[1:4]
    P = inputs[7] if op == "LSTM" else None
    kernel, why_not = backends.builder(backend)(spec, RecurrentWeights(W, R, B, P), FLOAT32,
                                                KernelContext(threads, LABEL))
    assert kernel is not None, why_not
    return kernel


def expected_of(op, spec, inputs):
    return REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]


def assert_close(got, expected, relative=False, truth=None):
    """Within TOL (relative to the largest finite value when ``relative``); where unbounded
    activations overflowed float32 in the reference, the kernel must have overflowed too
    (inf or nan: the order of a fused computation decides which).

    ``truth``: the same computation in float64. Where unbounded activations make the recurrence
    explode, float32 rounding is amplified at every step, and the float32 reference itself is
    that far from the truth; the kernel may then differ from it by a few times its own error.
    """
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == np.float32 and g.shape == e.shape
        finite = np.isfinite(e)
        assert not np.isfinite(g[~finite]).any(), "the reference overflowed where the kernel did not"
        bound = TOL * max(1.0, float(np.abs(e[finite]).max(initial=0))) if relative else TOL
        if truth is not None:
            both = finite & np.isfinite(truth[i])
            reference_error = np.abs(e[both].astype(np.float64) - truth[i][both]).max(initial=0)
            bound = max(bound, REFERENCE_ERROR_FACTOR * float(reference_error))
        error = np.abs(g[finite] - e[finite]).max(initial=0)
        assert error <= bound, (error, bound)


def as_float64(inputs):
    """The inputs with every float array as float64 (sequence_lens and absent inputs as they are)."""
    return [v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v for v in inputs]


def truth_of(op, spec, inputs):
    """The reference in float64 on the same (float32) values: the computation without float32 rounding."""
    return expected_of(op, spec, as_float64(inputs))


# ------------------------------------------------------------- parity --

@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_default_activations_float32_parity(backend, op, direction, layout):
    rng = np.random.default_rng(11)
    D = 2 if direction == "bidirectional" else 1
    W, R, B, P = make_weights(rng, op, D, 17, 33)
    spec = make_spec(op, hidden_size=17, direction=direction, layout=layout)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=20, batch=5,
                         lens=np.array([20, 0, 7, 1, 19], dtype=np.int32))
    kernel = build(backend, op, spec, inputs)
    assert kernel.describe.startswith(backend)
    if backend == "cython":
        assert cython_backend.isa() in kernel.describe
    assert_close(kernel(*inputs), expected_of(op, spec, inputs))


@st.composite
def cases(draw):
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    direction = draw(st.sampled_from(reference.DIRECTIONS))
    D = 2 if direction == "bidirectional" else 1
    H = draw(st.sampled_from([1, 2, 5, 17, 33]))
    I = draw(st.sampled_from([1, 3, 17]))
    T = draw(st.integers(0, 6))
    batch = draw(st.integers(1, 6))
    activations = alphas = betas = None
    if draw(st.booleans()):
        per = len(reference.DEFAULT_ACTIVATIONS[op])
        activations = draw(st.lists(st.sampled_from(SUPPORTED_ACTIVATIONS), min_size=per * D, max_size=per * D))
        alphas = draw(st.lists(st.floats(0.05, 1.5), max_size=per * D))
        betas = draw(st.lists(st.floats(0.05, 1.5), max_size=per * D))
    clip = draw(st.one_of(st.none(), st.floats(0.1, 5.0)))
    layout = draw(st.sampled_from([0, 1]))
    input_forget = op == "LSTM" and draw(st.booleans())
    lbr = op == "GRU" and draw(st.booleans())
    num_outputs = draw(st.integers(1, 3 if op == "LSTM" else 2))
    spec = make_spec(op, hidden_size=draw(st.sampled_from([None, H])), direction=direction, layout=layout,
                     activations=activations, alphas=alphas, betas=betas, clip=clip, input_forget=input_forget,
                     linear_before_reset=lbr, num_outputs=num_outputs)
    flags = draw(st.lists(st.booleans(), min_size=5, max_size=5))
    lens = None
    if flags[0]:
        lens = np.asarray(draw(st.lists(st.integers(0, T), min_size=batch, max_size=batch)), dtype=np.int32)
    seed = draw(st.integers(0, 2**31 - 1))
    return op, spec, D, H, I, T, batch, lens, flags, seed


@pytest.mark.parametrize("name", sorted({name for name, _ in VARIANTS}))  # each backend's default build
@SETTINGS
@given(case=cases())
def test_random_attributes_match_reference(name, case):
    op, spec, D, H, I, T, batch, lens, flags, seed = case
    rng = np.random.default_rng(seed)
    W, R, B, P = make_weights(rng, op, D, H, I, with_bias=flags[1], with_peepholes=flags[2], scale=0.7)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T, batch, lens=lens, with_h0=flags[3], with_c0=flags[4])
    got = build(name, op, spec, inputs)(*inputs)
    bounded = all(a.name in ("Sigmoid", "Tanh", "HardSigmoid", "Softsign") for a in spec.activations)
    expected = expected_of(op, spec, inputs)
    assert_close(got, expected, relative=not bounded, truth=None if bounded else truth_of(op, spec, inputs))


def test_an_exploding_recurrence_is_judged_against_the_references_own_error():
    # Found by the test above in CI: an all-Relu LSTM grows to ~5e33 in 6 steps, and its float32
    # rounding, amplified every step, moves both the reference and the kernel ~2e-4 (of the max) off
    # the float64 result: they differ from each other by 3.5e-5, more than TOL of the max.
    op, D, H, I = "LSTM", 2, 17, 17
    spec = make_spec(op, hidden_size=H, direction="bidirectional", activations=["Relu"] * 6, num_outputs=3)
    rng = np.random.default_rng(9769496)
    W, R, B, P = make_weights(rng, op, D, H, I, with_bias=False, with_peepholes=True, scale=0.7)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=6, batch=3, with_h0=False, with_c0=True)
    got = build("cython", op, spec, inputs)(*inputs)
    expected, truth = expected_of(op, spec, inputs), truth_of(op, spec, inputs)
    finite = [np.isfinite(e) for e in expected]
    largest = max(float(np.abs(e[f]).max()) for e, f in zip(expected, finite))
    differ = max(float(np.abs(g[f] - e[f]).max()) for g, e, f in zip(got, expected, finite))
    assert largest > 1e30 and differ > TOL * largest  # the old bound fails here
    assert_close(got, expected, relative=True, truth=truth)
    off = [g * np.float32(1 + 20 * TOL) for g in got]  # an error past the reference's own still fails
    with pytest.raises(AssertionError):
        assert_close(off, expected, relative=True, truth=truth)


# ---------------------------------------------------- fallbacks, errors --

def test_unusual_inputs_go_to_the_reference(backend):
    rng = np.random.default_rng(1)
    W, R, B, P = make_weights(rng, "GRU", 1, 6, 4)
    spec = make_spec("GRU")
    inputs = make_inputs(rng, "GRU", spec, W, R, B, P, T=5, batch=3)
    kernel = build(backend, "GRU", spec, inputs)
    got = kernel(*as_float64(inputs))  # float64 runs on the reference, in float64
    assert got[0].dtype == np.float64
    other = inputs.copy()
    other[2] = R * np.float32(0.5)  # weights other than the packed constants
    assert_close(kernel(*other), expected_of("GRU", spec, other))
    other[2] = R.copy()  # equal values, another array: still the fast path's result
    assert_close(kernel(*other), expected_of("GRU", spec, inputs))
    strided = inputs.copy()
    strided[0] = np.asarray(inputs[0][:, :, ::-1]).copy()[:, :, ::-1]  # non-contiguous X
    assert not strided[0].flags.c_contiguous
    assert_close(kernel(*strided), expected_of("GRU", spec, strided))
    lens64 = inputs.copy()
    lens64[4] = np.array([5, 2, 0], dtype=np.int64)
    assert_close(kernel(*lens64), expected_of("GRU", spec, lens64))


def test_inputs_are_not_modified_and_may_be_read_only(backend):
    rng = np.random.default_rng(6)
    W, R, B, _ = make_weights(rng, "GRU", 1, 8, 4)
    spec = make_spec("GRU", hidden_size=8, linear_before_reset=True, layout=1)
    inputs = make_inputs(rng, "GRU", spec, W, R, B, None, T=3, batch=2, lens=np.array([3, 2], np.int32))
    copies = [None if v is None else v.copy() for v in inputs]
    for v in inputs:
        if v is not None:
            v.flags.writeable = False
    assert_close(build(backend, "GRU", spec, inputs)(*inputs), expected_of("GRU", spec, inputs))
    for v, c in zip(inputs, copies):
        if v is not None:
            np.testing.assert_array_equal(v, c)


def test_int64_sequence_lens_and_trailing_outputs(backend):
    rng = np.random.default_rng(9)
    W, R, B, _ = make_weights(rng, "GRU", 1, 3, 2)
    spec = make_spec("GRU", hidden_size=3, num_outputs=1)
    inputs = make_inputs(rng, "GRU", spec, W, R, B, None, T=4, batch=3, lens=np.array([4, 0, 2], np.int64))
    got = build(backend, "GRU", spec, inputs)(*inputs)
    assert len(got) == 1
    assert_close(got, expected_of("GRU", spec, inputs))


@pytest.mark.parametrize("threads", [1, 2])
def test_errors_name_the_node(backend, threads):
    rng = np.random.default_rng(2)
    W, R, B, P = make_weights(rng, "LSTM", 1, 6, 4)
    spec = make_spec("LSTM")
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=5, batch=2)
    kernel = build(backend, "LSTM", spec, inputs, threads=threads)
    bad_lens = inputs.copy()
    bad_lens[4] = np.array([6, 1], dtype=np.int32)
    with pytest.raises(InvalidInputError, match=r"node 'rnn0'.*sequence_lens.*\[0, seq_length=5\]"):
        kernel(*bad_lens)
    bad_lens[4] = np.array([2**40, 1], dtype=np.int64)  # no int32 wrap-around into a valid length
    with pytest.raises(InvalidInputError, match=r"node 'rnn0'.*sequence_lens"):
        kernel(*bad_lens)
    bad_h0 = inputs.copy()
    bad_h0[5] = np.zeros((1, 3, 6), dtype=np.float32)
    with pytest.raises(InvalidInputError, match=r"node 'rnn0'.*initial_h.*expected shape \[1, 2, 6\]"):
        kernel(*bad_h0)
    with pytest.raises(InvalidInputError, match=r"node 'rnn0'.*input_size=2"):  # X's I disagrees with W
        kernel(inputs[0][:, :, :2].copy(), *inputs[1:])


def test_declines_name_the_reason(backend):
    rng = np.random.default_rng(0)
    W, R, B, P = make_weights(rng, "LSTM", 1, 4, 3)
    spec = make_spec("LSTM")
    make = backends.builder(backend)
    for weights, reason in ((RecurrentWeights(None, R, B, P), "constants"),
                            (RecurrentWeights(W.astype(np.float64), R, B, P), "float32"),
                            (RecurrentWeights(W, R, B[:, :5], P), "shape")):
        kernel, why_not = make(spec, weights, FLOAT32, KernelContext())
        assert kernel is None and reason in why_not
    with pytest.raises(ValueError, match="threads"):
        make(spec, RecurrentWeights(W, R, B, P), FLOAT32, KernelContext(threads=0))


# ------------------------------------------------------------- threads --

@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layout", [0, 1])
def test_threads_split_the_batch(backend, op, layout):
    rng = np.random.default_rng(3)
    W, R, B, P = make_weights(rng, op, 2, 16, 5)
    spec = make_spec(op, direction="bidirectional", layout=layout)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=7, batch=11, lens=rng.integers(0, 8, 11).astype(np.int32))
    kernel = build(backend, op, spec, inputs, threads=2)
    assert "2 threads" in kernel.describe
    assert_close(kernel(*inputs), expected_of(op, spec, inputs))
