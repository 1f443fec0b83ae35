"""Pure-NumPy reference of ONNX LSTM, GRU and RNN (opsets 7, 14, 22).

Written equation by equation from the operator spec; readable, never
optimised. Every fast kernel is tested against these functions.

Shapes use the spec's letters: T = seq_length, B = batch_size,
I = input_size, H = hidden_size, D = num_directions (2 if bidirectional).
With layout=0: X [T, B, I], Y [T, D, B, H], initial_h/c and Y_h/Y_c [D, B, H].
With layout=1: X [B, T, I], Y [B, T, D, H], initial_h/c and Y_h/Y_c [B, D, H].
W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] (Wb then Rb), with G gates per
cell in spec order: LSTM i,o,f,c (G=4), GRU z,r,h (G=3), RNN i (G=1).
LSTM peepholes P [D, 3*H] in i,o,f order.

``sequence_lens`` [B]: batch entry b only runs its first ``sequence_lens[b]``
steps (in reverse order for the reverse direction); Y is zero past that
length and Y_h/Y_c hold the state after its last valid step. For length 0
we return the initial state in Y_h/Y_c (the spec's "last value of the
hidden" before any step). NOTE: onnxruntime returns zeros there instead.

Errors: bad shapes or values raise ``InvalidInputError``, unknown attribute
values ``ValueError``, unsupported dtypes ``UnsupportedModelError``; the op
factory prefixes them with the node's name.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, UnsupportedModelError
from .activations import Activation, resolve_activations

DIRECTIONS = ("forward", "reverse", "bidirectional")
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Per cell: gates G, activations per direction, default activations, state count.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),  # f, g, h
    "GRU": ("Sigmoid", "Tanh"),  # f, g
    "RNN": ("Tanh",),  # f
}

# A step body: (x_t [B, I], states [B, H] each) -> new states; states[0] is H.
StepFn = Callable[[np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, ...]]


# ---------------------------------------------------------------- cells --


def _clipper(clip: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """``clip`` bounds the input of every gate activation to [-clip, clip]."""
    if clip is None:
        return lambda v: v
    return lambda v: np.clip(v, -clip, clip).astype(v.dtype, copy=False)


def lstm_step(W, R, Wb, Rb, P, acts, clip, input_forget) -> StepFn:
    """One LSTM direction. W [4H, I], R [4H, H], Wb/Rb [4H], P [3H]; acts (f, g, h)."""
    f, g, h = acts
    Wi, Wo, Wf, Wc = np.split(W, 4)
    Ri, Ro, Rf, Rc = np.split(R, 4)
    Wbi, Wbo, Wbf, Wbc = np.split(Wb, 4)
    Rbi, Rbo, Rbf, Rbc = np.split(Rb, 4)
    Pi, Po, Pf = np.split(P, 3)
    c = _clipper(clip)

    def step(Xt, states):
        H_prev, C_prev = states
        it = f(c(Xt @ Wi.T + H_prev @ Ri.T + Pi * C_prev + Wbi + Rbi))
        if input_forget:  # coupled gates: the forget gate is 1 - input gate
            ft = 1 - it
        else:
            ft = f(c(Xt @ Wf.T + H_prev @ Rf.T + Pf * C_prev + Wbf + Rbf))
        ct = g(c(Xt @ Wc.T + H_prev @ Rc.T + Wbc + Rbc))
        Ct = ft * C_prev + it * ct
        ot = f(c(Xt @ Wo.T + H_prev @ Ro.T + Po * Ct + Wbo + Rbo))  # peephole on the new Ct
        Ht = ot * h(Ct)  # no clip on Ct: clip is for gate inputs (as onnxruntime)
        return Ht, Ct

    return step


def _gru_step(W, R, Wb, Rb, acts, clip, linear_before_reset) -> StepFn:
    """One GRU direction. W [3H, I], R [3H, H], Wb/Rb [3H]; acts (f, g)."""
    f, g = acts
    Wz, Wr, Wh = np.split(W, 3)
    Rz, Rr, Rh = np.split(R, 3)
    Wbz, Wbr, Wbh = np.split(Wb, 3)
    Rbz, Rbr, Rbh = np.split(Rb, 3)
    c = _clipper(clip)

    def step(Xt, states):
        (H_prev,) = states
        zt = f(c(Xt @ Wz.T + H_prev @ Rz.T + Wbz + Rbz))
        rt = f(c(Xt @ Wr.T + H_prev @ Rr.T + Wbr + Rbr))
        if linear_before_reset:
            ht = g(c(Xt @ Wh.T + rt * (H_prev @ Rh.T + Rbh) + Wbh))
        else:
            ht = g(c(Xt @ Wh.T + (rt * H_prev) @ Rh.T + Rbh + Wbh))
        Ht = (1 - zt) * ht + zt * H_prev
        return (Ht,)

    return step


def _rnn_step(W, R, Wb, Rb, acts, clip) -> StepFn:
    """One RNN direction. W [H, I], R [H, H], Wb/Rb [H]; acts (f,)."""
    (f,) = acts
    c = _clipper(clip)

    def step(Xt, states):
        (H_prev,) = states
        Ht = f(c(Xt @ W.T + H_prev @ R.T + Wb + Rb))
        return (Ht,)

    return step


# ---------------------------------------------------------------- shell --


def _check_shape(op: str, name: str, value: np.ndarray, expected: Sequence[int], meaning: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise InvalidInputError(
            f"{op} input '{name}': expected shape {list(expected)} ({meaning}), got {list(value.shape)}"
        )


def _as_array(op: str, name: str, value, dtype: np.dtype | None = None) -> np.ndarray:
    array = np.asarray(value)
    if dtype is not None and array.dtype != dtype:
        raise InvalidInputError(
            f"{op} input '{name}': expected element type {dtype} (same as X), got {array.dtype}"
        )
    return array


def _scan(step: StepFn, X: np.ndarray, lens: np.ndarray, states: tuple[np.ndarray, ...], reverse: bool):
    """Run one direction over X [T, B, I]. Returns Y [T, B, H] and the final states.

    Entry b is active at step t when t < lens[b]; an inactive entry keeps its
    state and writes zeros to Y. The reverse direction visits t = T-1 .. 0, so
    each entry starts at its own last valid step.
    """
    T = X.shape[0]
    Y = np.zeros((T,) + states[0].shape, dtype=X.dtype)
    if X.shape[1] == 0:  # no batch entries: nothing to step through (T may be huge)
        return Y, states
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        active = (t < lens)[:, None]  # [B, 1]
        with np.errstate(all="ignore"):  # inactive rows may overflow; they are discarded
            new = step(X[t], states)
        states = tuple(np.where(active, n, s) for n, s in zip(new, states))
        Y[t] = np.where(active, states[0], 0)
    return Y, states


def recurrence(
    op: str, X, W, R, B, sequence_lens, initial_states, hidden_size, direction, layout,
    make_step: Callable[[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], StepFn],
):
    """What LSTM, GRU and RNN share: checks, layouts, optional inputs, directions.

    ``initial_states`` lists the optional initial state inputs by name
    (initial_h, and initial_c for LSTM). ``make_step(d, W[d], R[d], Wb[d],
    Rb[d])`` builds direction d's step body. Returns (Y, *final states) in the
    requested layout.
    """
    G = GATES[op]
    if direction not in DIRECTIONS:
        raise ValueError(f"{op}: direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
    if layout not in (0, 1):
        raise ValueError(f"{op}: layout must be 0 or 1, got {layout}")
    D = 2 if direction == "bidirectional" else 1

    X = np.asarray(X)
    if X.dtype not in SUPPORTED_DTYPES:
        raise UnsupportedModelError(
            f"{op} input 'X': element type {X.dtype} is not supported (supported: float32, float64)"
        )
    if X.ndim != 3:
        raise InvalidInputError(f"{op} input 'X': expected rank 3, got shape {list(X.shape)}")
    if layout == 1:  # [B, T, I] -> [T, B, I]; states [B, D, H] -> [D, B, H]
        X = X.transpose(1, 0, 2)
    T, batch, I = X.shape
    dtype = X.dtype

    R = _as_array(op, "R", R, dtype)
    if hidden_size is None:  # optional attribute: take it from R
        if R.ndim != 3:
            raise InvalidInputError(f"{op} input 'R': expected rank 3, got shape {list(R.shape)}")
        hidden_size = R.shape[2]
    H = int(hidden_size)
    W = _as_array(op, "W", W, dtype)
    sizes = f"num_directions={D}, hidden_size={H}, input_size={I}"
    _check_shape(op, "R", R, (D, G * H, H), f"[num_directions, {G}*hidden_size, hidden_size] with {sizes}")
    _check_shape(op, "W", W, (D, G * H, I), f"[num_directions, {G}*hidden_size, input_size] with {sizes}")

    if B is None:
        B = np.zeros((D, 2 * G * H), dtype=dtype)
    B = _as_array(op, "B", B, dtype)
    _check_shape(op, "B", B, (D, 2 * G * H), f"[num_directions, {2 * G}*hidden_size] with {sizes}")

    if sequence_lens is None:
        lens = np.full(batch, T, dtype=np.int64)
    else:
        lens = np.asarray(sequence_lens)
        if lens.dtype.kind not in "iu":
            raise InvalidInputError(
                f"{op} input 'sequence_lens': expected an integer type (int32), got {lens.dtype}"
            )
        _check_shape(op, "sequence_lens", lens, (batch,), "[batch_size]")
        if lens.size and (lens.min() < 0 or lens.max() > T):
            raise InvalidInputError(
                f"{op} input 'sequence_lens': values must be in [0, seq_length={T}], got {lens.tolist()}"
            )
        lens = lens.astype(np.int64)

    state_shape = (D, batch, H) if layout == 0 else (batch, D, H)
    state_meaning = "[num_directions, batch_size, hidden_size]" if layout == 0 else \
        "[batch_size, num_directions, hidden_size]"
    starts = []
    for name, value in initial_states.items():
        if value is None:
            value = np.zeros(state_shape, dtype=dtype)
        value = _as_array(op, name, value, dtype)
        _check_shape(op, name, value, state_shape, state_meaning)
        starts.append(value if layout == 0 else value.transpose(1, 0, 2))

    Y = np.zeros((T, D, batch, H), dtype=dtype)
    finals = [np.zeros((D, batch, H), dtype=dtype) for _ in starts]
    for d in range(D):
        reverse = direction == "reverse" or d == 1
        step = make_step(d, W[d], R[d], B[d, : G * H], B[d, G * H:])
        Y[:, d], states = _scan(step, X, lens, tuple(s[d] for s in starts), reverse)
        for final, state in zip(finals, states):
            final[d] = state

    if layout == 1:
        Y = Y.transpose(2, 0, 1, 3)
        finals = [f.transpose(1, 0, 2) for f in finals]
    return tuple(np.ascontiguousarray(v) for v in (Y, *finals))


def cell_activations(op: str, direction: str, names, alphas, betas) -> tuple[Activation, ...]:
    """Resolve the activation list; the default is the spec's, once per direction.

    ``names`` may also be already-resolved ``Activation`` objects (alphas/betas unused).
    """
    D = 2 if direction == "bidirectional" else 1
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    if names is not None and all(isinstance(a, Activation) for a in names):
        if len(names) != per_direction * D:  # already resolved (e.g. by the op factory)
            raise ValueError(f"{op}: expected {per_direction * D} activations, got {len(names)}")
        return tuple(names)
    if names is None:
        names = DEFAULT_ACTIVATIONS[op] * D
    names = list(names)
    if op == "RNN" and D == 1 and len(names) == 2:
        # The RNN schema's own default is ["Tanh", "Tanh"] whatever the direction;
        # onnxruntime takes the first entry for one direction, and so do we.
        names = names[:1]
    if len(names) != per_direction * D:
        raise ValueError(
            f"{op}: expected {per_direction * D} activations for direction '{direction}' "
            f"({per_direction} per direction), got {len(names)}: {names}"
        )
    return resolve_activations(names, alphas, betas)


def _check_positive_clip(op: str, clip: float | None) -> float | None:
    if clip is None:
        return None
    if not clip > 0:
        raise ValueError(f"{op}: clip must be a positive threshold, got {clip}")
    return float(clip)


def lstm(
    X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *,
    hidden_size=None, direction="forward", activations=None, activation_alpha=None,
    activation_beta=None, clip=None, input_forget=0, layout=0,
):
    """ONNX LSTM. Returns (Y, Y_h, Y_c); shapes in the module docstring.

    Equations (per direction; f, g, h default Sigmoid, Tanh, Tanh):
      it = f(Xt*Wi^T + Ht-1*Ri^T + Pi (.) Ct-1 + Wbi + Rbi)
      ft = f(Xt*Wf^T + Ht-1*Rf^T + Pf (.) Ct-1 + Wbf + Rbf)   (1 - it if input_forget)
      ct = g(Xt*Wc^T + Ht-1*Rc^T + Wbc + Rbc)
      Ct = ft (.) Ct-1 + it (.) ct
      ot = f(Xt*Wo^T + Ht-1*Ro^T + Po (.) Ct + Wbo + Rbo)
      Ht = ot (.) h(Ct)
    """
    acts = cell_activations("LSTM", direction, activations, activation_alpha, activation_beta)
    clip = _check_positive_clip("LSTM", clip)
    if input_forget not in (0, 1):
        raise ValueError(f"LSTM: input_forget must be 0 or 1, got {input_forget}")
    D = 2 if direction == "bidirectional" else 1
    dtype = np.asarray(X).dtype

    def make_step(d, Wd, Rd, Wbd, Rbd):
        H = Rd.shape[1]
        if P is None:
            Pd = np.zeros(3 * H, dtype=dtype)
        else:
            P_all = _as_array("LSTM", "P", P, dtype)
            _check_shape("LSTM", "P", P_all, (D, 3 * H), "[num_directions, 3*hidden_size]")
            Pd = P_all[d]
        return lstm_step(Wd, Rd, Wbd, Rbd, Pd, acts[3 * d: 3 * d + 3], clip, input_forget)

    return recurrence(
        "LSTM", X, W, R, B, sequence_lens, {"initial_h": initial_h, "initial_c": initial_c},
        hidden_size, direction, layout, make_step,
    )


def gru(
    X, W, R, B=None, sequence_lens=None, initial_h=None, *,
    hidden_size=None, direction="forward", activations=None, activation_alpha=None,
    activation_beta=None, clip=None, linear_before_reset=0, layout=0,
):
    """ONNX GRU. Returns (Y, Y_h); shapes in the module docstring.

    Equations (per direction; f, g default Sigmoid, Tanh):
      zt = f(Xt*Wz^T + Ht-1*Rz^T + Wbz + Rbz)
      rt = f(Xt*Wr^T + Ht-1*Rr^T + Wbr + Rbr)
      ht = g(Xt*Wh^T + (rt (.) Ht-1)*Rh^T + Rbh + Wbh)      linear_before_reset = 0
      ht = g(Xt*Wh^T + (rt (.) (Ht-1*Rh^T + Rbh)) + Wbh)    linear_before_reset != 0
      Ht = (1 - zt) (.) ht + zt (.) Ht-1
    """
    acts = cell_activations("GRU", direction, activations, activation_alpha, activation_beta)
    clip = _check_positive_clip("GRU", clip)

    def make_step(d, Wd, Rd, Wbd, Rbd):
        return _gru_step(Wd, Rd, Wbd, Rbd, acts[2 * d: 2 * d + 2], clip, linear_before_reset != 0)

    return recurrence(
        "GRU", X, W, R, B, sequence_lens, {"initial_h": initial_h},
        hidden_size, direction, layout, make_step,
    )


def rnn(
    X, W, R, B=None, sequence_lens=None, initial_h=None, *,
    hidden_size=None, direction="forward", activations=None, activation_alpha=None,
    activation_beta=None, clip=None, layout=0,
):
    """ONNX RNN. Returns (Y, Y_h); shapes in the module docstring.

    Equation (per direction; f defaults to Tanh):
      Ht = f(Xt*Wi^T + Ht-1*Ri^T + Wbi + Rbi)
    """
    acts = cell_activations("RNN", direction, activations, activation_alpha, activation_beta)
    clip = _check_positive_clip("RNN", clip)

    def make_step(d, Wd, Rd, Wbd, Rbd):
        return _rnn_step(Wd, Rd, Wbd, Rbd, acts[d: d + 1], clip)

    return recurrence(
        "RNN", X, W, R, B, sequence_lens, {"initial_h": initial_h},
        hidden_size, direction, layout, make_step,
    )
