"""Random specs, weights and inputs for testing a fast kernel against the reference
(shared by the Cython and Numba kernel tests), and ``with_initializers``: a model
whose weights are constants, which the fast kernels need (shared by the conformance tests)."""
from __future__ import annotations

import numpy as np

from lstminfer import reference
from lstminfer.ops.recurrent import RecurrentSpec
from lstminfer.reference import GATES, cell_activations

REFERENCE = {"LSTM": reference.lstm, "GRU": reference.gru, "RNN": reference.rnn}


def make_spec(op, *, hidden_size=None, direction="forward", layout=0, activations=None, alphas=None,
              betas=None, clip=None, input_forget=False, linear_before_reset=False, num_outputs=None):
    acts = cell_activations(op, direction, activations, alphas, betas)
    return RecurrentSpec(op=op, hidden_size=hidden_size, direction=direction, layout=layout, activations=acts,
                         clip=clip, input_forget=input_forget, linear_before_reset=linear_before_reset,
                         num_outputs=num_outputs or (3 if op == "LSTM" else 2))


def make_weights(rng, op, D, H, I, with_bias=True, with_peepholes=True, scale=1.0):
    G = GATES[op]
    s = np.float32(scale)
    W = rng.uniform(-1, 1, (D, G * H, I)).astype(np.float32) * (s / np.float32(np.sqrt(I)))
    R = rng.uniform(-1, 1, (D, G * H, H)).astype(np.float32) * (s / np.float32(np.sqrt(H)))
    B = rng.uniform(-1, 1, (D, 2 * G * H)).astype(np.float32) * s if with_bias else None
    P = rng.uniform(-1, 1, (D, 3 * H)).astype(np.float32) * s if (with_peepholes and op == "LSTM") else None
    return W, R, B, P


def make_inputs(rng, op, spec, W, R, B, P, T, batch, lens=None, with_h0=True, with_c0=True):
    D = spec.num_directions
    H, I = R.shape[2], W.shape[2]
    X = rng.standard_normal((T, batch, I) if spec.layout == 0 else (batch, T, I)).astype(np.float32)
    state_shape = (D, batch, H) if spec.layout == 0 else (batch, D, H)
    h0 = rng.standard_normal(state_shape).astype(np.float32) if with_h0 else None
    inputs = [X, W, R, B, lens, h0]
    if op == "LSTM":
        inputs += [rng.standard_normal(state_shape).astype(np.float32) if with_c0 else None, P]
    return inputs


def with_initializers(model, values):
    """A copy of the ``onnx.ModelProto`` ``model`` whose graph inputs named in ``values`` are
    initializers holding those arrays (the fast kernels pack constant weights only)."""
    from onnx import numpy_helper

    constant = type(model)()
    constant.CopyFrom(model)
    graph = constant.graph
    for vi in [vi for vi in graph.input if vi.name in values]:
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(np.asarray(values[vi.name]), vi.name))
    return constant
