"""LSTM, GRU and RNN nodes: lstminfer against onnxruntime, and load/run errors.

Single-node models are built with onnx.helper and run by onnxruntime and by
``lstminfer.load(...).run``; every output must agree in dtype, shape and value
(max abs diff <= 1e-5, float32). onnxruntime refuses layout=1, so layout=1 is
checked against onnxruntime on the transposed layout-0 model.

Each case runs on lstminfer twice over: as built (W, R, B, P fed at run time:
the reference kernel, since the fast ones pack constant weights at load) and
with those weights as initializers, as exporters write them, under every
available backend (Cython, Numba, reference), each checked to really run its
own kernel. So this whole suite is the conformance suite of every backend.

Where onnxruntime departs from the spec we pass explicit values instead of
relying on defaults (see lstminfer/reference/activations.py): it defaults
alpha/beta of Affine, ThresholdedRelu, ScaledTanh (and all RNN functions) to
0, and returns zeros in Y_h/Y_c for sequence length 0, so lengths here are >= 1.
"""
from __future__ import annotations

import itertools
import types

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

import lstminfer
from lstminfer import backends
from lstminfer.errors import InvalidInputError, InvalidModelError, UnsupportedModelError
from lstminfer.graph import Node
from lstminfer import reference
from lstminfer.ops import recurrent
from lstminfer.ops.registry import BuildContext

from kernel_cases import with_initializers

INPUTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
GATES = reference.GATES
PER_DIRECTION = {op: len(names) for op, names in reference.DEFAULT_ACTIVATIONS.items()}
OPS = list(INPUTS)
DIRECTIONS = ["forward", "reverse", "bidirectional"]
TOLERANCE = 1e-5


# ---------------------------------------------------------------- helpers --


def make_feeds(op, T=5, B=3, I=4, H=6, direction="forward", seed=0, lens=None, scale=0.4):
    """Random float32 inputs for every input of ``op`` (sequence_lens ragged, >= 1)."""
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    feeds = {
        "X": rng.standard_normal((T, B, I)),
        "W": rng.standard_normal((D, G * H, I)) * scale,
        "R": rng.standard_normal((D, G * H, H)) * scale,
        "B": rng.standard_normal((D, 2 * G * H)) * scale,
        "initial_h": rng.standard_normal((D, B, H)) * 0.5,
        "initial_c": rng.standard_normal((D, B, H)) * 0.5,
        "P": rng.standard_normal((D, 3 * H)) * scale,
    }
    feeds = {k: v.astype(np.float32) for k, v in feeds.items() if k in INPUTS[op]}
    if lens is None:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T  # at least one full-length sequence
    feeds["sequence_lens"] = np.asarray(lens, dtype=np.int32)
    return feeds


def make_model(op, attrs, feeds, outputs=None, opset=14, initializers=(), dynamic=False):
    """A one-node model; inputs absent from ``feeds`` and ``initializers`` are omitted ("").

    Graph inputs declare the feeds' shapes, or no shape at all if ``dynamic``.
    """
    known = set(feeds) | set(initializers)
    names = [n if n in known else "" for n in INPUTS[op]]
    while names and not names[-1]:
        names.pop()
    outputs = list(OUTPUTS[op]) if outputs is None else list(outputs)
    node = oh.make_node(op, names, outputs, name=f"my_{op.lower()}", **attrs)
    graph_inputs = [
        oh.make_tensor_value_info(n, TP.INT32 if n == "sequence_lens" else TP.FLOAT,
                                  None if dynamic else feeds[n].shape)
        for n in names if n in feeds
    ]
    graph_outputs = [oh.make_tensor_value_info(n, TP.FLOAT, None) for n in outputs if n]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in dict(initializers).items()]
    graph = oh.make_graph([node], "g", graph_inputs, graph_outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 10
    return model


WEIGHTS = ("W", "R", "B", "P")


def with_constant_weights(model, feeds):
    """``model`` with the fed W, R, B, P as initializers, and the feeds left to give."""
    constant = with_initializers(model, {k: v for k, v in feeds.items() if k in WEIGHTS})
    return constant, {k: v for k, v in feeds.items() if k not in WEIGHTS}


def lstminfer_runs(model, feeds):
    """[(label, outputs)]: the model as built, then with constant weights under every available backend."""
    runs = [("weights fed", lstminfer.load(model).run(None, feeds))]
    constant, rest = with_constant_weights(model, feeds)
    for backend in lstminfer.available_backends():
        loaded = lstminfer.load(constant, backend=backend)
        assert f"via {backend}" in loaded.describe(), loaded.describe()  # its own kernel, not a fallback
        runs.append((backend, loaded.run(None, rest)))
    return runs


def run_both(model, feeds):
    """onnxruntime's outputs, and lstminfer's [(label, outputs)] (``lstminfer_runs``)."""
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return expected, lstminfer_runs(model, feeds)


def assert_close(expected, got, tolerance=TOLERANCE, where=""):
    """Max abs diff <= tolerance, scaled by the largest |value| when that is above 1.

    Unbounded activations (Softplus, Relu, Affine in every slot) reach values
    of ~20, where one float32 rounding step alone is ~2e-6.
    """
    assert len(got) == len(expected), where
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape, where
        finite = np.isfinite(e)
        np.testing.assert_array_equal(np.isfinite(g), finite)  # overflow in the same places
        e, g = e[finite], g[finite]
        if not e.size:
            continue
        diff = float(np.max(np.abs(g.astype(np.float64) - e)))
        scale = max(1.0, float(np.max(np.abs(e))))
        assert diff <= tolerance * scale, f"{where}: max abs diff {diff} (largest |value| {scale})"


def check(op, attrs, feeds, outputs=None, opset=14, tolerance=TOLERANCE):
    """lstminfer (every run of ``lstminfer_runs``) against onnxruntime; returns the first run's outputs."""
    model = make_model(op, attrs, feeds, outputs, opset)
    expected, runs = run_both(model, feeds)
    for label, got in runs:
        assert_close(expected, got, tolerance, label)
    return runs[0][1]


# ------------------------------------------------ directions and opsets --


@pytest.mark.parametrize("opset", [7, 14, 22])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_all_inputs_ragged_lengths(op, direction, opset):
    feeds = make_feeds(op, direction=direction, seed=opset)
    assert len(set(feeds["sequence_lens"].tolist())) > 1  # really ragged
    check(op, {"hidden_size": 6, "direction": direction}, feeds, opset=opset)


@pytest.mark.parametrize("op", OPS)
def test_optional_inputs_every_subset(op):
    optional = [n for n in INPUTS[op][3:]]
    full = make_feeds(op, direction="bidirectional", seed=1)
    for keep in itertools.product([False, True], repeat=len(optional)):
        feeds = {k: full[k] for k in ("X", "W", "R")}
        feeds.update({n: full[n] for n, k in zip(optional, keep) if k})
        check(op, {"hidden_size": 6, "direction": "bidirectional"}, feeds)


@pytest.mark.parametrize("op", OPS)
def test_optional_outputs_every_subset(op):
    feeds = make_feeds(op, direction="reverse", seed=2)
    names = OUTPUTS[op]
    for keep in itertools.product([False, True], repeat=len(names)):
        if not any(keep):
            continue
        outputs = [n if k else "" for n, k in zip(names, keep)]
        while not outputs[-1]:
            outputs.pop()
        got = check(op, {"hidden_size": 6, "direction": "reverse"}, feeds, outputs=outputs)
        assert len(got) == sum(keep)


# ------------------------------------------------------------ activations --

# name -> (alpha values, beta values) for one occurrence; explicit, so that
# onnxruntime's 0 defaults for Affine/ThresholdedRelu/ScaledTanh never matter.
ACTIVATION_ARGS = {
    "Relu": ([], []), "Tanh": ([], []), "Sigmoid": ([], []), "Softsign": ([], []), "Softplus": ([], []),
    "Affine": ([0.7], [0.1]), "LeakyRelu": ([0.2], []), "ThresholdedRelu": ([0.3], []),
    "ScaledTanh": ([1.3], [0.6]), "HardSigmoid": ([0.25], [0.45]), "Elu": ([0.8], []),
}


def activation_attrs(names, jitter=0.0):
    """activations + alpha/beta lists consumed in order, each value shifted by ``jitter * k``."""
    alphas, betas = [], []
    for k, name in enumerate(names):
        a, b = ACTIVATION_ARGS[name]
        alphas += [v + jitter * k for v in a]
        betas += [v + jitter * k for v in b]
    attrs = {"activations": list(names)}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


@pytest.mark.parametrize("name", list(ACTIVATION_ARGS))
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_activation_in_every_position_with_alpha_beta(op, name):
    # The same function in every slot with different alpha/beta per slot and
    # direction checks both the function and the order the values are consumed in.
    names = [name] * PER_DIRECTION[op] * 2
    attrs = dict(activation_attrs(names, jitter=0.05), hidden_size=6, direction="bidirectional")
    check(op, attrs, make_feeds(op, T=4, direction="bidirectional", seed=3, scale=0.3))


@pytest.mark.parametrize("name", list(ACTIVATION_ARGS))
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_rnn_activation_with_alpha_beta(name, direction):
    # onnxruntime's RNN reads alpha/beta by direction index, so each direction
    # uses the same function with one value each: both readings then agree.
    D = 2 if direction == "bidirectional" else 1
    attrs = dict(activation_attrs([name] * D, jitter=0.05), hidden_size=6, direction=direction)
    check("RNN", attrs, make_feeds("RNN", T=4, direction=direction, seed=4, scale=0.3))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_mixed_activations_and_spec_defaults(op):
    # LeakyRelu, HardSigmoid and Elu defaults (0.01; 0.2/0.5; 1.0) agree with onnxruntime.
    names = {"LSTM": ["HardSigmoid", "LeakyRelu", "Elu", "Sigmoid", "Softsign", "Tanh"],
             "GRU": ["HardSigmoid", "Elu", "Sigmoid", "LeakyRelu"]}[op]
    attrs = dict(hidden_size=6, direction="bidirectional", activations=names)
    check(op, attrs, make_feeds(op, direction="bidirectional", seed=5))


def test_rnn_mixed_activations_across_directions():
    attrs = dict(hidden_size=6, direction="bidirectional", activations=["Relu", "Softsign"])
    check("RNN", attrs, make_feeds("RNN", direction="bidirectional", seed=6))


# ------------------------------------------------------ other attributes --


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_clip(op, direction):
    feeds = make_feeds(op, direction=direction, seed=7, scale=1.5)  # big gate inputs
    got = check(op, {"hidden_size": 6, "direction": direction, "clip": 0.4}, feeds)
    unclipped = lstminfer.load(make_model(op, {"hidden_size": 6, "direction": direction}, feeds)).run(None, feeds)
    assert not np.allclose(got[0], unclipped[0], atol=1e-3)  # clip really changed the result


@pytest.mark.parametrize("input_forget", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_input_forget_with_peepholes(direction, input_forget):
    feeds = make_feeds("LSTM", direction=direction, seed=8)
    check("LSTM", {"hidden_size": 6, "direction": direction, "input_forget": input_forget}, feeds)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_linear_before_reset(direction, lbr):
    feeds = make_feeds("GRU", direction=direction, seed=9)
    check("GRU", {"hidden_size": 6, "direction": direction, "linear_before_reset": lbr}, feeds)


@pytest.mark.parametrize("op", OPS)
def test_layout1_matches_onnxruntime_on_transposed_model(op):
    feeds = make_feeds(op, direction="bidirectional", seed=10)
    attrs = {"hidden_size": 6, "direction": "bidirectional"}
    expected = ort.InferenceSession(make_model(op, attrs, feeds).SerializeToString()).run(None, feeds)
    batchwise = {k: (v.transpose(1, 0, 2) if k in ("X", "initial_h", "initial_c") else v) for k, v in feeds.items()}
    expected = [expected[0].transpose(2, 0, 1, 3)] + [e.transpose(1, 0, 2) for e in expected[1:]]
    for label, got in lstminfer_runs(make_model(op, dict(attrs, layout=1), batchwise), batchwise):
        assert_close(expected, got, where=label)


def test_hidden_size_attribute_may_be_omitted():
    feeds = make_feeds("GRU", seed=11)
    expected = ort.InferenceSession(make_model("GRU", {"hidden_size": 6}, feeds).SerializeToString()).run(None, feeds)
    for label, got in lstminfer_runs(make_model("GRU", {}, feeds), feeds):
        assert_close(expected, got, where=label)


# --------------------------------------------------------- sizes, lengths --


@pytest.mark.parametrize("op", OPS)
def test_single_step_single_batch(op):
    check(op, {"hidden_size": 3, "direction": "bidirectional"},
          make_feeds(op, T=1, B=1, I=1, H=3, direction="bidirectional", seed=12))


@pytest.mark.parametrize("op", OPS)
def test_batch_32(op):
    check(op, {"hidden_size": 8, "direction": "bidirectional"},
          make_feeds(op, T=6, B=33, I=5, H=8, direction="bidirectional", seed=13))


def test_long_sequence_1000_steps():
    feeds = make_feeds("LSTM", T=1000, B=2, I=3, H=4, direction="bidirectional", seed=14, lens=[1000, 731])
    check("LSTM", {"hidden_size": 4, "direction": "bidirectional"}, feeds)


# ------------------------------------------------------ property tests --


@st.composite
def recurrent_cases(draw, op):
    sizes = st.one_of(st.integers(1, 5), st.just(17))
    T, B, I, H = draw(st.integers(1, 6) | st.just(17)), draw(sizes), draw(sizes), draw(sizes)
    direction = draw(st.sampled_from(DIRECTIONS))
    D = 2 if direction == "bidirectional" else 1
    attrs = {"hidden_size": H, "direction": direction}
    if draw(st.booleans()):
        any_function = st.sampled_from(list(ACTIVATION_ARGS))
        if op == "RNN":  # one function for both directions (see test_rnn_activation_with_alpha_beta)
            names = [draw(any_function)] * D
        else:
            # Gates (slot f) get bounded functions: an unbounded forget gate makes
            # the state grow geometrically and overflow over 17 steps.
            bounded = st.sampled_from(["Sigmoid", "HardSigmoid", "Tanh", "Softsign", "ScaledTanh"])
            names = [draw(bounded if k % PER_DIRECTION[op] == 0 else any_function)
                     for k in range(PER_DIRECTION[op] * D)]
        attrs.update(activation_attrs(names, jitter=0.1))
    if draw(st.booleans()):
        attrs["clip"] = draw(st.floats(0.1, 3.0))
    if op == "LSTM":
        attrs["input_forget"] = draw(st.integers(0, 1))
    if op == "GRU":
        attrs["linear_before_reset"] = draw(st.integers(0, 1))
    optional = INPUTS[op][3:]
    absent = [n for n in optional if not draw(st.booleans())]
    sizes = dict(T=T, B=B, I=I, H=H, direction=direction, seed=draw(st.integers(0, 2**31)))
    wanted = [draw(st.booleans()) for _ in OUTPUTS[op]]
    if not any(wanted):
        wanted[draw(st.integers(0, len(wanted) - 1))] = True
    outputs = [n if w else "" for n, w in zip(OUTPUTS[op], wanted)]
    while not outputs[-1]:
        outputs.pop()
    opset = draw(st.sampled_from([7, 14, 22]))
    return attrs, sizes, absent, outputs, opset


@pytest.mark.parametrize("op", OPS)
def test_property_matches_onnxruntime(op):
    @settings(max_examples=30, deadline=None)
    @given(recurrent_cases(op))
    def run(case):
        attrs, sizes, absent, outputs, opset = case
        scale = 0.8 / np.sqrt(max(sizes["I"], sizes["H"]))  # keeps gate inputs O(1) at every size
        feeds = make_feeds(op, scale=scale, **sizes)
        feeds = {k: v for k, v in feeds.items() if k not in absent}
        try:
            check(op, attrs, feeds, outputs, opset)
        except AssertionError:
            # Unbounded activations compound float32 rounding over time steps; then
            # the float64 reference decides: onnxruntime's own distance from it
            # measures that rounding, and we must stay within twice it (a real bug
            # is off by O(1), orders of magnitude beyond).
            check_against_float64(op, attrs, feeds, outputs, opset)

    run()


EXPLODED = 1e3


def check_against_float64(op, attrs, feeds, outputs, opset):
    model = make_model(op, attrs, feeds, outputs, opset)
    ort_out, runs = run_both(model, feeds)
    args = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in feeds.items()}
    truth = getattr(reference, op.lower())(**args, **attrs)
    # The spec's equations evaluated plainly in float32: how far honest float32 rounding
    # drifts on this case. onnxruntime alone can be luckier than that (a different summation
    # order happens to cancel), which made the bound tighter than float32 itself allows.
    plain32 = getattr(reference, op.lower())(**feeds, **attrs)
    by_name = dict(zip(OUTPUTS[op], truth))
    plain_by_name = dict(zip(OUTPUTS[op], plain32))
    names = [n for n in (OUTPUTS[op] if outputs is None else outputs) if n]  # "" = output skipped
    for label, name, e, g in ((label, *values) for label, ours in runs for values in zip(names, ort_out, ours)):
        t = by_name[name]
        p = np.asarray(plain_by_name[name])
        finite = np.isfinite(t) & np.isfinite(e) & np.isfinite(p)
        # An exploding recurrence (|h| in the thousands) amplifies each rounding
        # exponentially: no float32 parity bound is meaningful there.
        assume(float(np.max(np.abs(t[finite]), initial=0.0)) < EXPLODED)
        ours_err = float(np.max(np.abs(g[finite] - t[finite]), initial=0.0))
        ort_err = float(np.max(np.abs(e[finite] - t[finite]), initial=0.0))
        plain_err = float(np.max(np.abs(p[finite] - t[finite]), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(t[finite]), initial=0.0)))
        assert ours_err <= 2 * max(ort_err, plain_err) + TOLERANCE * scale, (
            f"{name} [{label}]: lstminfer is {ours_err:.3g} from the float64 reference, onnxruntime {ort_err:.3g}, "
            f"the plain float32 reference {plain_err:.3g}"
        )


# ---------------------------------------------------- factory contract --


def node_of(op, inputs=("X", "W", "R"), outputs=("Y",), **attrs):
    return Node(op, tuple(inputs), tuple(outputs), attrs, name=f"my_{op.lower()}")


def test_factory_kernel_runs_reference_and_says_so():
    feeds = make_feeds("LSTM", seed=15)
    node = node_of("LSTM", INPUTS["LSTM"], ("Y", "Y_h"), hidden_size=6, direction="reverse")
    kernel = recurrent.lstm_factory(node, BuildContext(opsets={"": 17}))
    assert kernel.describe == "reference"
    outputs = kernel(*(feeds[n] for n in INPUTS["LSTM"]))
    assert len(outputs) == 2 and outputs[1].shape == (1, 3, 6)
    model = make_model("LSTM", {"hidden_size": 6, "direction": "reverse"}, feeds, outputs=["Y", "Y_h"])
    assert_close(ort.InferenceSession(model.SerializeToString()).run(None, feeds), list(outputs))


def test_spec_is_parsed_with_defaults():
    spec = recurrent.parse_spec(node_of("GRU", activations=["relu", "LeakyRelu"], activation_alpha=[0.3]),
                                BuildContext(opsets={"": 14}))
    assert spec.direction == "forward" and spec.layout == 0 and spec.clip is None
    assert [(a.name, a.alpha) for a in spec.activations] == [("Relu", 0.0), ("LeakyRelu", 0.3)]
    assert spec.hidden_size is None and spec.num_directions == 1 and not spec.linear_before_reset


def test_a_registered_backend_is_asked_first_and_may_decline(monkeypatch):
    seen = []

    def build(spec, weights, precision, ctx):
        seen.append((spec.direction, precision.name, ctx.label))
        if spec.direction == "reverse":
            return None, "no reverse kernel"
        return (lambda *inputs: ("fast",)), ""

    monkeypatch.setattr(backends, "_MODULES", dict(backends._MODULES))
    backends.register_backend("test-backend", types.SimpleNamespace(unavailable_reason=lambda: None, build=build))
    assert backends.resolve_backend("test-backend") == "test-backend"
    assert "test-backend" in backends.available_backends()
    ctx = BuildContext(opsets={"": 14}, backend="test-backend")
    assert recurrent.rnn_factory(node_of("RNN"), ctx)() == ("fast",)
    declined = recurrent.rnn_factory(node_of("RNN", direction="reverse"), ctx)
    assert declined.describe == "reference (test-backend declined: no reverse kernel)"
    assert seen == [("forward", "float32", "node 'my_rnn' (RNN)"), ("reverse", "float32", "node 'my_rnn' (RNN)")]


# ----------------------------------------------------------- bad input --


@pytest.mark.parametrize(
    "op,attrs,error,match",
    [
        ("LSTM", {"activations": ["Sigmoid", "Tanh", "Swish"]}, UnsupportedModelError,
         r"node 'my_lstm' \(LSTM\).*unknown activation 'Swish'.*supported: Relu, Tanh"),
        ("GRU", {"activations": ["Sigmoid", "Tanh", "Tanh"]}, InvalidModelError,
         r"node 'my_gru' \(GRU\).*expected 2 activations for direction 'forward'.*got 3"),
        ("LSTM", {"direction": "bidirectional", "activations": ["Sigmoid", "Tanh", "Tanh"]},
         InvalidModelError, r"my_lstm.*expected 6 activations for direction 'bidirectional'"),
        ("RNN", {"direction": "backward"}, InvalidModelError,
         r"my_rnn.*'direction' must be one of forward, reverse, bidirectional, got 'backward'"),
        ("GRU", {"layout": 2}, InvalidModelError, r"my_gru.*'layout' must be 0 or 1, got 2"),
        ("LSTM", {"clip": -1.0}, InvalidModelError, r"my_lstm.*'clip' must be a positive"),
        ("LSTM", {"input_forget": 3}, InvalidModelError, r"my_lstm.*'input_forget' must be 0 or 1"),
        ("RNN", {"hidden_size": 0}, InvalidModelError, r"my_rnn.*'hidden_size' must be > 0"),
        ("RNN", {"linear_before_reset": 1}, InvalidModelError, r"my_rnn.*unknown attribute.*linear_before_reset"),
    ],
)
def test_bad_attributes_fail_at_load(op, attrs, error, match):
    feeds = make_feeds(op, seed=16)
    with pytest.raises(error, match=match):
        lstminfer.load(make_model(op, dict({"hidden_size": 6}, **attrs), feeds))


def test_layout_before_opset_14_fails_at_load():
    node = node_of("LSTM", layout=1)
    with pytest.raises(InvalidModelError, match=r"my_lstm.*unknown attribute.*'layout'.*opset 7"):
        recurrent.lstm_factory(node, BuildContext(opsets={"": 7}))


def test_missing_required_input_fails_at_load():
    with pytest.raises(InvalidModelError, match=r"my_gru.*X, W and R are required"):
        recurrent.gru_factory(node_of("GRU", inputs=("X", "", "R")), BuildContext(opsets={"": 14}))


def test_hidden_size_inconsistent_with_initializer_fails_at_load():
    feeds = make_feeds("LSTM", H=6, seed=17)
    weights = {"W": feeds.pop("W"), "R": feeds.pop("R")}
    model = make_model("LSTM", {"hidden_size": 5}, feeds, initializers=weights)
    with pytest.raises(InvalidModelError, match=r"my_lstm.*input 'W'.*\[1, 24, 4\].*\[1, 20, 'input_size'\]"):
        lstminfer.load(model)


def test_wrong_shape_W_at_run_time():
    feeds = make_feeds("GRU", H=6, seed=18)
    model = lstminfer.load(make_model("GRU", {"hidden_size": 6}, feeds, dynamic=True))
    feeds["W"] = feeds["W"][:, :, :3]  # input_size 3, X has 4
    match = r"node 'my_gru' \(GRU\).*input 'W': expected shape \[1, 18, 4\].*got \[1, 18, 3\]"
    with pytest.raises(InvalidInputError, match=match):
        model.run(None, feeds)


def test_sequence_length_out_of_range_at_run_time():
    feeds = make_feeds("RNN", T=5, seed=19)
    model = lstminfer.load(make_model("RNN", {"hidden_size": 6}, feeds, dynamic=True))
    feeds["sequence_lens"] = np.array([5, 6, 1], dtype=np.int32)
    with pytest.raises(InvalidInputError, match=r"my_rnn.*sequence_lens.*\[0, seq_length=5\]"):
        model.run(None, feeds)


@pytest.mark.parametrize("op", OPS)
def test_float64_model_runs_in_float64(op):
    # onnxruntime has no double kernels for these ops: compare with its float32 result.
    feeds = make_feeds(op, direction="bidirectional", seed=20)
    model = make_model(op, {"hidden_size": 6, "direction": "bidirectional"}, feeds)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name != "sequence_lens":
            value.type.tensor_type.elem_type = TP.DOUBLE
    doubles = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in feeds.items()}
    got = lstminfer.load(model).run(None, doubles)
    assert all(g.dtype == np.float64 for g in got)
    assert_close(expected, [g.astype(np.float32) for g in got])
