"""The NumPy reference of ONNX LSTM/GRU/RNN against hand-derived values.

Neither onnxruntime (refuses layout=1, differs on some defaults) nor the ONNX
reference evaluator (ignores activations, clip, input_forget) is a complete
oracle, so each attribute is pinned here by scalar math written from the
spec equations, by literal hand-computed numbers, and by identities
(layout 1 = transposed layout 0, bidirectional = forward + reverse, ...).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lstminfer.errors import InvalidInputError, UnsupportedModelError
from lstminfer.reference import GATES, gru, lstm, resolve_activations, rnn
from lstminfer.reference.activations import Activation

OPS = {"LSTM": lstm, "GRU": gru, "RNN": rnn}


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def scalars(a) -> np.ndarray:
    """A float64 array shaped for H=1, I=1, one direction."""
    return np.asarray(a, dtype=np.float64)


def random_inputs(op, T=4, B=3, I=5, H=6, D=1, seed=0, dtype=np.float64, layout=0):
    rng = np.random.default_rng(seed)
    G = GATES[op]
    X = rng.standard_normal((T, B, I) if layout == 0 else (B, T, I))
    state = (D, B, H) if layout == 0 else (B, D, H)
    ins = dict(
        X=X, W=rng.standard_normal((D, G * H, I)) * 0.5, R=rng.standard_normal((D, G * H, H)) * 0.5,
        B=rng.standard_normal((D, 2 * G * H)) * 0.5, initial_h=rng.standard_normal(state),
    )
    if op == "LSTM":
        ins["initial_c"] = rng.standard_normal(state)
        ins["P"] = rng.standard_normal((D, 3 * H)) * 0.5
    return {k: v.astype(dtype) for k, v in ins.items()}


# ------------------------------------------------- ONNX's own node tests --


def _onnx_cases():
    """ONNX's node test cases for LSTM/GRU/RNN.

    Importing a case module runs its exports into the module-level case list;
    importing only these three is much faster than ``collect_testcases()``.
    """
    import importlib

    import onnx.backend.test.case.node as node_cases

    for module in ("lstm", "gru", "rnn"):
        importlib.import_module(f"{node_cases.__name__}.{module}")
    cases = getattr(node_cases, "_NodeTestCases", None)
    if cases is None:  # private list gone in a future onnx: take the slow public route
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = node_cases.collect_testcases()
    return [c for c in cases if c.model.graph.node and c.model.graph.node[0].op_type in OPS]


ONNX_CASES = _onnx_cases()


def test_onnx_node_cases_were_found():
    ops = {c.model.graph.node[0].op_type for c in ONNX_CASES}
    assert ops == set(OPS) and len(ONNX_CASES) >= 15


@pytest.mark.parametrize("case", ONNX_CASES, ids=lambda c: c.name)
def test_onnx_node_case(case):
    import onnx.helper

    node = case.model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    for inputs, expected in case.data_sets:
        got = OPS[node.op_type](*inputs, **attrs)
        present = [i for i, name in enumerate(node.output) if name]
        assert len(present) == len(expected)
        for index, want in zip(present, expected):
            assert got[index].dtype == want.dtype
            np.testing.assert_allclose(got[index], want, rtol=case.rtol, atol=case.atol)


# ------------------------------------------ literal hand-computed values --


def test_rnn_relu_literal():
    # H_t = relu(2 x_t + 0.5 H_{t-1}): x = 1, -1, 3 -> 2, relu(-2 + 1) = 0, relu(6 + 0) = 6
    X = scalars([1, -1, 3]).reshape(3, 1, 1)
    Y, Y_h = rnn(X, scalars([[[2]]]), scalars([[[0.5]]]), activations=["Relu"])
    np.testing.assert_array_equal(Y.ravel(), [2, 0, 6])
    np.testing.assert_array_equal(Y_h.ravel(), [6])


def test_lstm_zero_weights_literal():
    # All gate inputs 0: i = f = o = 1/2, g = tanh(0) = 0, so C = c0 / 2 and H = tanh(C) / 2.
    X = scalars([[[0.3]]])
    zeros = scalars(np.zeros((1, 4, 1)))
    Y, Y_h, Y_c = lstm(X, zeros, zeros, initial_c=scalars([[[2.0]]]))
    assert Y_c.item() == pytest.approx(1.0)
    assert Y_h.item() == pytest.approx(0.5 * math.tanh(1.0))
    assert Y.item() == Y_h.item()


def test_zero_sequence_length_returns_initial_state():
    # Documented choice (onnxruntime returns zeros in Y_h/Y_c for this case).
    X = scalars(np.ones((2, 2, 1)))
    w, r = scalars(np.ones((1, 4, 1))), scalars(np.ones((1, 4, 1)))
    h0, c0 = scalars([[[0.25], [0.5]]]), scalars([[[-1.0], [3.0]]])
    lens = np.array([0, 2], dtype=np.int32)
    Y, Y_h, Y_c = lstm(X, w, r, sequence_lens=lens, initial_h=h0, initial_c=c0)
    assert Y_h[0, 0, 0] == 0.25 and Y_c[0, 0, 0] == -1.0
    np.testing.assert_array_equal(Y[:, 0, 0, 0], [0, 0])
    assert Y_h[0, 1, 0] != 0.5 and np.all(Y[:, 0, 1, 0] != 0)


# ---------------------------------- scalar math for every attribute, H=I=1 --

LSTM_W = [0.3, -0.6, 0.9, 0.45]  # i, o, f, c: all different so gate order matters
LSTM_R = [-0.2, 0.7, 0.35, -0.8]
LSTM_B = [0.1, -0.3, 0.5, 0.2, -0.15, 0.25, 0.05, -0.4]
LSTM_P = [0.6, -0.5, 0.8]  # i, o, f
XS = [0.9, -1.3, 0.4]


def lstm_by_hand(xs, h, c, f=sig, g=math.tanh, hh=math.tanh, P=(0, 0, 0), clip=None, input_forget=False):
    wi, wo, wf, wc = LSTM_W
    ri, ro, rf, rc = LSTM_R
    bi, bo, bf, bc = (LSTM_B[k] + LSTM_B[k + 4] for k in range(4))
    pi, po, pf = P
    cl = (lambda v: max(-clip, min(clip, v))) if clip else (lambda v: v)
    hs = []
    for x in xs:
        i = f(cl(wi * x + ri * h + pi * c + bi))
        fg = 1 - i if input_forget else f(cl(wf * x + rf * h + pf * c + bf))
        gc = g(cl(wc * x + rc * h + bc))
        c = fg * c + i * gc
        o = f(cl(wo * x + ro * h + po * c + bo))
        h = o * hh(c)
        hs.append(h)
    return hs, h, c


def run_lstm_scalar(**kwargs):
    X = scalars(XS).reshape(len(XS), 1, 1)
    W, R = scalars(LSTM_W).reshape(1, 4, 1), scalars(LSTM_R).reshape(1, 4, 1)
    B = scalars(LSTM_B).reshape(1, 8)
    return lstm(X, W, R, B, initial_h=scalars([[[0.4]]]), initial_c=scalars([[[-0.7]]]), **kwargs)


def assert_lstm_matches(result, expected):
    Y, Y_h, Y_c = result
    hs, h, c = expected
    np.testing.assert_allclose(Y.ravel(), hs, rtol=1e-12)
    assert Y_h.item() == pytest.approx(h, rel=1e-12)
    assert Y_c.item() == pytest.approx(c, rel=1e-12)


def test_lstm_scalar_defaults_and_gate_order():
    assert_lstm_matches(run_lstm_scalar(), lstm_by_hand(XS, 0.4, -0.7))


def test_lstm_scalar_peepholes_order_iof():
    result = run_lstm_scalar(P=scalars(LSTM_P).reshape(1, 3))
    assert_lstm_matches(result, lstm_by_hand(XS, 0.4, -0.7, P=LSTM_P))
    assert result[1].item() != pytest.approx(lstm_by_hand(XS, 0.4, -0.7)[1])


def test_lstm_scalar_input_forget_ignores_forget_peephole():
    result = run_lstm_scalar(P=scalars(LSTM_P).reshape(1, 3), input_forget=1)
    assert_lstm_matches(result, lstm_by_hand(XS, 0.4, -0.7, P=LSTM_P, input_forget=True))
    assert result[2].item() != pytest.approx(lstm_by_hand(XS, 0.4, -0.7, P=LSTM_P)[2])


def test_lstm_scalar_clip_bounds_gate_inputs_not_cell():
    X = scalars(XS).reshape(len(XS), 1, 1) * 10  # large inputs so clipping matters
    W, R = scalars(LSTM_W).reshape(1, 4, 1), scalars(LSTM_R).reshape(1, 4, 1)
    B = scalars(LSTM_B).reshape(1, 8)
    result = lstm(X, W, R, B, initial_h=scalars([[[0.4]]]), initial_c=scalars([[[5.0]]]), clip=0.3)
    assert_lstm_matches(result, lstm_by_hand([x * 10 for x in XS], 0.4, 5.0, clip=0.3))
    assert abs(result[2].item()) > 0.3  # the cell state itself is not clipped


def test_lstm_scalar_custom_activations_with_alpha_beta():
    # f = HardSigmoid(0.3, 0.4), g = Affine(1.5, -0.2), h = LeakyRelu(0.2)
    acts = ["HardSigmoid", "Affine", "LeakyRelu"]
    result = run_lstm_scalar(activations=acts, activation_alpha=[0.3, 1.5, 0.2], activation_beta=[0.4, -0.2])

    def f(v):
        return min(max(0.3 * v + 0.4, 0), 1)

    expected = lstm_by_hand(
        XS, 0.4, -0.7, f=f, g=lambda v: 1.5 * v - 0.2, hh=lambda v: v if v >= 0 else 0.2 * v
    )
    assert_lstm_matches(result, expected)


def gru_by_hand(xs, h, lbr, f=sig, g=math.tanh, clip=None):
    wz, wr, wh = 0.4, -0.9, 0.7
    rz, rr, rh = 0.6, 0.3, -1.1
    wbz, wbr, wbh, rbz, rbr, rbh = 0.1, 0.2, -0.3, 0.05, -0.25, 0.8
    cl = (lambda v: max(-clip, min(clip, v))) if clip else (lambda v: v)
    hs = []
    for x in xs:
        z = f(cl(wz * x + rz * h + wbz + rbz))
        r = f(cl(wr * x + rr * h + wbr + rbr))
        if lbr:
            hc = g(cl(wh * x + r * (rh * h + rbh) + wbh))
        else:
            hc = g(cl(wh * x + (r * h) * rh + rbh + wbh))
        h = (1 - z) * hc + z * h
        hs.append(h)
    return hs, h


def run_gru_scalar(**kwargs):
    X = scalars(XS).reshape(len(XS), 1, 1)
    W, R = scalars([0.4, -0.9, 0.7]).reshape(1, 3, 1), scalars([0.6, 0.3, -1.1]).reshape(1, 3, 1)
    B = scalars([0.1, 0.2, -0.3, 0.05, -0.25, 0.8]).reshape(1, 6)
    return gru(X, W, R, B, initial_h=scalars([[[0.5]]]), **kwargs)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_scalar_linear_before_reset(lbr):
    Y, Y_h = run_gru_scalar(linear_before_reset=lbr)
    hs, h = gru_by_hand(XS, 0.5, lbr)
    np.testing.assert_allclose(Y.ravel(), hs, rtol=1e-12)
    assert Y_h.item() == pytest.approx(h, rel=1e-12)
    other, _ = gru_by_hand(XS, 0.5, 1 - lbr)
    assert not np.allclose(Y.ravel(), other)  # the two formulas differ on this data


def test_gru_scalar_clip_and_activations():
    Y, _ = run_gru_scalar(clip=0.2, activations=["Softsign", "ScaledTanh"], activation_alpha=[2.0],
                          activation_beta=[0.5])
    hs, _ = gru_by_hand(XS, 0.5, 0, f=lambda v: v / (1 + abs(v)), g=lambda v: 2.0 * math.tanh(0.5 * v),
                        clip=0.2)
    np.testing.assert_allclose(Y.ravel(), hs, rtol=1e-12)


def test_rnn_scalar_bias_initial_h_clip():
    X = scalars(XS).reshape(len(XS), 1, 1)
    Y, Y_h = rnn(X, scalars([[[1.2]]]), scalars([[[-0.7]]]), scalars([[0.3, -0.1]]),
                 initial_h=scalars([[[0.6]]]), clip=0.5)
    h, hs = 0.6, []
    for x in XS:
        h = math.tanh(max(-0.5, min(0.5, 1.2 * x - 0.7 * h + 0.3 - 0.1)))
        hs.append(h)
    np.testing.assert_allclose(Y.ravel(), hs, rtol=1e-12)
    assert Y_h.item() == pytest.approx(h, rel=1e-12)


# ------------------------------------------------------------ activations --

GRID = [-3.0, -0.5, 0.0, 0.2, 0.7, 1.0, 2.5]
# name, alpha list, beta list, scalar formula with the values the lists imply
ACTIVATION_CASES = [
    ("Relu", [], [], lambda x: max(0.0, x)),
    ("Tanh", [], [], math.tanh),
    ("Sigmoid", [], [], sig),
    ("Affine", [0.5], [0.25], lambda x: 0.5 * x + 0.25),
    ("Affine", [], [], lambda x: x),  # Affine op defaults alpha=1, beta=0
    ("LeakyRelu", [0.3], [], lambda x: x if x >= 0 else 0.3 * x),
    ("LeakyRelu", [], [], lambda x: x if x >= 0 else 0.01 * x),
    ("ThresholdedRelu", [0.5], [], lambda x: x if x > 0.5 else 0.0),
    ("ThresholdedRelu", [], [], lambda x: x if x > 1.0 else 0.0),
    ("ScaledTanh", [2.0], [0.5], lambda x: 2.0 * math.tanh(0.5 * x)),
    ("ScaledTanh", [], [], math.tanh),
    ("HardSigmoid", [0.4], [0.1], lambda x: min(max(0.4 * x + 0.1, 0), 1)),
    ("HardSigmoid", [], [], lambda x: min(max(0.2 * x + 0.5, 0), 1)),
    ("Elu", [0.7], [], lambda x: x if x >= 0 else 0.7 * (math.exp(x) - 1)),
    ("Elu", [], [], lambda x: x if x >= 0 else math.exp(x) - 1),
    ("Softsign", [], [], lambda x: x / (1 + abs(x))),
    ("Softplus", [], [], lambda x: math.log(1 + math.exp(x))),
]


@pytest.mark.parametrize("name,alpha,beta,formula", ACTIVATION_CASES,
                         ids=[f"{c[0]}{'-' + str(c[1]) if c[1] else '-default'}" for c in ACTIVATION_CASES])
def test_rnn_activation_table(name, alpha, beta, formula):
    # W = 1, R = 0: each output step is f(x_t) exactly.
    X = scalars(GRID).reshape(len(GRID), 1, 1)
    Y, _ = rnn(X, scalars([[[1.0]]]), scalars([[[0.0]]]), activations=[name],
               activation_alpha=alpha or None, activation_beta=beta or None)
    np.testing.assert_allclose(Y.ravel(), [formula(x) for x in GRID], rtol=1e-12, atol=1e-15)


def test_activation_names_are_case_insensitive():
    X = scalars(GRID).reshape(len(GRID), 1, 1)
    a = rnn(X, scalars([[[1.0]]]), scalars([[[0.0]]]), activations=["leakyrelu"])[0]
    b = rnn(X, scalars([[[1.0]]]), scalars([[[0.0]]]), activations=["LEAKYRELU"])[0]
    np.testing.assert_array_equal(a, b)
    assert a[0].item() == pytest.approx(-0.03)


def test_alpha_beta_consumed_in_order_by_the_functions_that_use_them():
    acts = resolve_activations(
        ["LeakyRelu", "Tanh", "HardSigmoid", "Affine", "Elu", "ScaledTanh"],
        [0.1, 0.2, 0.3], [0.4, 0.5],
    )
    assert acts == (
        Activation("LeakyRelu", 0.1), Activation("Tanh"), Activation("HardSigmoid", 0.2, 0.4),
        Activation("Affine", 0.3, 0.5), Activation("Elu", 1.0), Activation("ScaledTanh", 1.0, 1.0),
    )


def test_activations_keep_float32():
    x = np.linspace(-100, 100, 11, dtype=np.float32)
    for name in ("Sigmoid", "Softplus", "Elu", "HardSigmoid", "Affine", "ThresholdedRelu"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow warnings for large |x|
            y = resolve_activations([name])[0](x)
        assert y.dtype == np.float32 and np.all(np.isfinite(y)), name


# ------------------------------------------------------------- identities --


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_layout1_is_transposed_layout0(op, direction):
    D = 2 if direction == "bidirectional" else 1
    ins = random_inputs(op, D=D, seed=1)
    lens = np.array([4, 2, 3], dtype=np.int32)
    base = OPS[op](sequence_lens=lens, direction=direction, **ins)
    batchwise = dict(ins, X=ins["X"].transpose(1, 0, 2), initial_h=ins["initial_h"].transpose(1, 0, 2))
    if op == "LSTM":
        batchwise["initial_c"] = ins["initial_c"].transpose(1, 0, 2)
    got = OPS[op](sequence_lens=lens, direction=direction, layout=1, **batchwise)
    np.testing.assert_allclose(got[0], base[0].transpose(2, 0, 1, 3), rtol=1e-10, atol=1e-13)
    for g, b in zip(got[1:], base[1:]):
        np.testing.assert_allclose(g, b.transpose(1, 0, 2), rtol=1e-10, atol=1e-13)


def _direction_slice(ins, d):
    return {k: v[d: d + 1] for k, v in ins.items() if k != "X"} | {"X": ins["X"]}


@pytest.mark.parametrize("op", list(OPS))
def test_bidirectional_is_forward_plus_reverse(op):
    ins = random_inputs(op, D=2, seed=2)
    acts = {"LSTM": ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Softsign", "Elu"],
            "GRU": ["Sigmoid", "Tanh", "HardSigmoid", "Softsign"], "RNN": ["Tanh", "LeakyRelu"]}[op]
    lens = np.array([4, 1, 3], dtype=np.int32)
    both = OPS[op](sequence_lens=lens, direction="bidirectional", activations=acts, **ins)
    per_dir = len(acts) // 2
    fwd = OPS[op](sequence_lens=lens, activations=acts[:per_dir], **_direction_slice(ins, 0))
    rev = OPS[op](sequence_lens=lens, direction="reverse", activations=acts[per_dir:],
                  **_direction_slice(ins, 1))
    np.testing.assert_allclose(both[0], np.concatenate([fwd[0], rev[0]], axis=1), rtol=1e-10, atol=1e-13)
    for b, f, r in zip(both[1:], fwd[1:], rev[1:]):
        np.testing.assert_allclose(b, np.concatenate([f, r], axis=0), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("op", list(OPS))
def test_reverse_is_forward_on_flipped_time(op):
    ins = random_inputs(op, seed=3)
    rev = OPS[op](direction="reverse", **ins)
    fwd = OPS[op](**dict(ins, X=ins["X"][::-1]))
    np.testing.assert_allclose(rev[0], fwd[0][::-1], rtol=1e-10, atol=1e-13)
    for r, f in zip(rev[1:], fwd[1:]):
        np.testing.assert_allclose(r, f, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_ragged_batch_equals_each_sequence_alone(op, direction):
    D = 2 if direction == "bidirectional" else 1
    ins = random_inputs(op, T=5, B=4, D=D, seed=4)
    lens = np.array([5, 2, 0, 3], dtype=np.int32)
    Y, *finals = OPS[op](sequence_lens=lens, direction=direction, **ins)
    for b, L in enumerate(lens):
        alone = {k: (v[:L, b: b + 1] if k == "X" else v[:, b: b + 1] if k.startswith("initial") else v)
                 for k, v in ins.items()}
        Y_b, *finals_b = OPS[op](direction=direction, **alone)
        np.testing.assert_allclose(Y[:L, :, b: b + 1], Y_b, rtol=1e-10, atol=1e-13)
        assert not Y[L:, :, b].any()  # zeros past the sequence's end
        for got, want in zip(finals, finals_b):
            np.testing.assert_allclose(got[:, b: b + 1], want, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------- optional inputs, dtypes --


@pytest.mark.parametrize("op", list(OPS))
def test_absent_optional_inputs_mean_zeros_and_full_length(op):
    ins = random_inputs(op, seed=5)
    required = {k: ins[k] for k in ("X", "W", "R")}
    T, B = ins["X"].shape[:2]
    zeros = {k: np.zeros_like(v) for k, v in ins.items() if k not in required}
    full = np.full(B, T, dtype=np.int32)
    a = OPS[op](**required)
    b = OPS[op](sequence_lens=full, **required, **zeros)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_and_shapes(op, dtype):
    ins = random_inputs(op, T=4, B=3, I=5, H=6, D=2, dtype=dtype)
    outs = OPS[op](direction="bidirectional", **ins)
    assert [o.dtype for o in outs] == [np.dtype(dtype)] * len(outs)
    assert outs[0].shape == (4, 2, 3, 6)
    assert all(o.shape == (2, 3, 6) for o in outs[1:])
    assert all(o.flags.c_contiguous for o in outs)


def test_float32_close_to_float64():
    ins = random_inputs("LSTM", seed=6)
    a = lstm(**ins)
    b = lstm(**{k: v.astype(np.float32) for k, v in ins.items()})
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, atol=1e-5)


def test_inputs_are_not_mutated_and_may_be_read_only():
    ins = random_inputs("LSTM", seed=7)
    copies = {k: v.copy() for k, v in ins.items()}
    for v in ins.values():
        v.flags.writeable = False
    lstm(sequence_lens=np.array([4, 1, 2], dtype=np.int32), direction="reverse", **ins)
    for k in ins:
        np.testing.assert_array_equal(ins[k], copies[k])


def test_hidden_size_defaults_to_R():
    ins = random_inputs("GRU", H=7, seed=8)
    np.testing.assert_array_equal(gru(**ins)[1], gru(hidden_size=7, **ins)[1])


def test_empty_sequence_and_empty_batch():
    ins = random_inputs("LSTM", T=3, B=2, seed=9)
    Y, Y_h, Y_c = lstm(**dict(ins, X=ins["X"][:0]))
    assert Y.shape == (0, 1, 2, 6)
    np.testing.assert_array_equal(Y_h, ins["initial_h"])
    np.testing.assert_array_equal(Y_c, ins["initial_c"])
    Y, Y_h = rnn(ins["X"][:, :0], ins["W"][:, :6], ins["R"][:, :6])
    assert Y.shape == (3, 1, 0, 6) and Y_h.shape == (1, 0, 6)


# ------------------------------------------------------------------ errors --


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(W=np.zeros((1, 24, 4))), r"input 'W': expected shape \[1, 24, 5\]"),
        (dict(R=np.zeros((1, 24, 5))), r"input 'R'"),
        (dict(B=np.zeros((1, 24))), r"input 'B': expected shape \[1, 48\]"),
        (dict(P=np.zeros((1, 6))), r"input 'P': expected shape \[1, 18\]"),
        (dict(initial_h=np.zeros((1, 2, 6))), r"input 'initial_h': expected shape \[1, 3, 6\]"),
        (dict(initial_c=np.zeros((2, 3, 6))), r"input 'initial_c'"),
        (dict(sequence_lens=np.array([1, 2], np.int32)), r"'sequence_lens': expected shape \[3\]"),
        (dict(sequence_lens=np.array([1, 2, 5], np.int32)), r"values must be in \[0, seq_length=4\]"),
        (dict(sequence_lens=np.array([1, -1, 2], np.int32)), r"values must be in"),
        (dict(sequence_lens=np.array([1.0, 2, 3])), r"integer type"),
        (dict(W=np.zeros((1, 24, 5), np.float32)), r"input 'W': expected element type float64"),
        (dict(X=np.zeros((4, 3))), r"input 'X': expected rank 3"),
    ],
)
def test_bad_inputs_raise_invalid_input(change, match):
    ins = dict(random_inputs("LSTM", seed=10), **change)
    with pytest.raises(InvalidInputError, match=match):
        lstm(**ins)


def test_hidden_size_attribute_mismatch_is_reported():
    with pytest.raises(InvalidInputError, match=r"LSTM input 'R': expected shape \[1, 20, 5\].*hidden_size=5"):
        lstm(hidden_size=5, **random_inputs("LSTM", seed=11))


def test_unsupported_dtype():
    ins = {k: v.astype(np.float16) for k, v in random_inputs("RNN").items()}
    with pytest.raises(UnsupportedModelError, match="float16"):
        rnn(**ins)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(activations=["Sigmoid", "Tanh"]), r"expected 3 activations for direction 'forward'"),
        (dict(activations=["Sigmoid", "Tanh", "Swish"]), r"unknown activation 'Swish'.*Softplus"),
        (dict(direction="backward"), r"direction must be one of"),
        (dict(layout=2), r"layout must be 0 or 1"),
        (dict(clip=0.0), r"clip must be a positive"),
        (dict(input_forget=2), r"input_forget must be 0 or 1"),
    ],
)
def test_bad_attributes_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lstm(**random_inputs("LSTM", seed=12), **kwargs)


def test_rnn_accepts_schema_default_pair_for_one_direction():
    ins = random_inputs("RNN", seed=13)
    a = rnn(activations=["Relu", "Tanh"], **ins)
    b = rnn(activations=["Relu"], **ins)
    np.testing.assert_array_equal(a[0], b[0])
