"""The kernel object a recurrent node runs: checks, buffers, one jitted call.

``FusedKernel(spec, packed, ...)`` is built once at load. Each call checks
what the jitted driver cannot (dtypes, shapes, that W/R/B/P are still the
constants it packed), allocates the outputs, reuses a per-thread scratch
buffer and makes a single call into ``numba_rnn``. Anything unusual (a
float64 X, a bad shape, weights that differ from the packed ones) goes to the
reference implementation instead, which computes it or raises the error the
reference raises, so the two paths never disagree on errors.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np

from .. import reference
from ..errors import InvalidInputError, UnsupportedModelError
from . import numba_rnn
from .numba_math import ACTIVATION_CODES
from .packing import PackedWeights, num_gates

_F32 = np.dtype(np.float32)
_NO_LENS = np.zeros(0, dtype=np.int32)
_NO_STATE = np.zeros((0, 0, 0), dtype=np.float32)
_REFERENCE = {"LSTM": reference.lstm, "GRU": reference.gru, "RNN": reference.rnn}


def _same_constant(given: Any, packed: np.ndarray | None) -> bool:
    """Is the run-time value the constant that was packed? (identity first: it is cheap)"""
    if given is packed:
        return True
    if given is None or packed is None:
        return False
    return (isinstance(given, np.ndarray) and given.shape == packed.shape and given.dtype == packed.dtype
            and np.array_equal(given, packed))


class FusedKernel:
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P]) -> (Y, Y_h[, Y_c])``."""

    def __init__(self, spec: Any, packed: PackedWeights, W: np.ndarray, R: np.ndarray,
                 B: np.ndarray | None, P: np.ndarray | None, *, threads: int, label: str = ""):
        self.spec = spec
        self.op = spec.op
        self.label = label
        self._packed = packed
        self._constants = (W, R, B, P)
        self.hidden_size = packed.hidden_size
        self.input_size = packed.input_size
        self.num_directions = packed.num_directions
        self._states = 2 if self.op == "LSTM" else 1
        self._nblocks = packed.blocks
        self._parallel = packed.blocks > 1
        self._run = numba_rnn.driver(self.op, self._parallel)
        self._table, self._fparams = self._tables(spec, packed)
        self._flag = bool(spec.input_forget if self.op == "LSTM" else
                          spec.linear_before_reset if self.op == "GRU" else False)
        self._clip = math.inf if spec.clip is None else float(spec.clip)
        self._reverse_first = spec.direction == "reverse"
        self._time_major = spec.layout == 0
        self._local = threading.local()
        self._reference_kwargs = spec.reference_kwargs()
        acts = "+".join(a.name for a in spec.activations[: numba_rnn.ACTS_PER_DIRECTION[self.op]])
        self.describe = (
            f"numba {self.op.lower()}_seq fused (H={self.hidden_size}, {spec.direction}, {acts}, "
            f"{self._nblocks} thread{'s' if self._nblocks > 1 else ''})"
        )

    @staticmethod
    def _tables(spec: Any, packed: PackedWeights) -> tuple[np.ndarray, np.ndarray]:
        codes = [ACTIVATION_CODES[a.name.lower()] for a in spec.activations]
        params = [v for a in spec.activations for v in (a.alpha, a.beta)]
        table = np.concatenate([packed.edges, packed.offsets.ravel(), np.asarray(codes, dtype=np.int64)])
        table = table.astype(np.int64)
        fparams = np.asarray(params, dtype=np.float32)
        table.flags.writeable = False
        fparams.flags.writeable = False
        return table, fparams

    # ------------------------------------------------------------------
    def __call__(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        inputs = (X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if not self._fast_path_applies(X, W, R, B, P):
            return self._reference(inputs)
        layout0 = self._time_major
        T, batch = (X.shape[0], X.shape[1]) if layout0 else (X.shape[1], X.shape[0])
        D, H = self.num_directions, self.hidden_size

        state_shape = (D, batch, H) if layout0 else (batch, D, H)
        starts = []
        for value in (initial_h, initial_c)[: self._states]:
            if value is None:
                starts.append((_NO_STATE, False))
            elif isinstance(value, np.ndarray) and value.dtype == _F32 and value.shape == state_shape:
                starts.append((value if layout0 else value.transpose(1, 0, 2), True))
            else:
                return self._reference(inputs)
        if self.op != "LSTM":
            starts.append((_NO_STATE, False))

        if sequence_lens is None:
            lens, has_lens = _NO_LENS, False
        else:
            lens = sequence_lens
            if not (isinstance(lens, np.ndarray) and lens.dtype.kind in "iu" and lens.shape == (batch,)):
                return self._reference(inputs)
            if lens.dtype != np.int32:
                if lens.size and (lens.min() < 0 or lens.max() > T):
                    return self._reference(inputs)  # raises the range error
                lens = lens.astype(np.int32)
            lens = np.ascontiguousarray(lens)
            has_lens = True

        if layout0:
            Y = np.empty((T, D, batch, H), dtype=_F32)
            states = np.empty((self._states, D, batch, H), dtype=_F32)
            Y_view, states_view = Y, states
        else:
            Y = np.empty((batch, T, D, H), dtype=_F32)
            states = np.empty((self._states, batch, D, H), dtype=_F32)
            Y_view, states_view = Y.transpose(1, 2, 0, 3), states.transpose(0, 2, 1, 3)

        status = self._run(
            np.ascontiguousarray(X), lens, has_lens, starts[0][0], starts[0][1], starts[1][0], starts[1][1],
            Y_view, states_view, self._packed.buffer, self._table, self._fparams,
            self._scratch(T, batch), D, self._nblocks, self._reverse_first, self._flag, layout0, self._clip,
        )
        if status:
            return self._reference(inputs)  # raises: sequence_lens out of range
        outputs = (Y, *states)
        return outputs[: self.spec.num_outputs]

    def _fast_path_applies(self, X, W, R, B, P) -> bool:
        W0, R0, B0, P0 = self._constants
        if not (isinstance(X, np.ndarray) and X.dtype == _F32 and X.ndim == 3 and X.shape[2] == self.input_size):
            return False
        if W is not W0 or R is not R0:
            if not (_same_constant(W, W0) and _same_constant(R, R0)):
                return False
        if B is not B0 and not _same_constant(B, B0):
            return False
        if self.op == "LSTM" and P is not P0 and not _same_constant(P, P0):
            return False
        return True

    def _scratch(self, T: int, batch: int) -> np.ndarray:
        need = numba_rnn.scratch_size(T, batch, num_gates(self.op), self.hidden_size)
        buf = getattr(self._local, "scratch", None)
        if buf is None or buf.size < need:
            buf = np.empty(max(need, 16), dtype=_F32)
            self._local.scratch = buf
        return buf

    def _reference(self, inputs):
        run: Callable = _REFERENCE[self.op]
        args = inputs if self.op == "LSTM" else inputs[:6]
        prefix = f"{self.label}: " if self.label else ""
        try:
            outputs = run(*args, **self._reference_kwargs)
        except InvalidInputError as err:
            raise InvalidInputError(f"{prefix}{err}") from None
        except UnsupportedModelError as err:
            raise UnsupportedModelError(f"{prefix}{err}") from None
        return outputs[: self.spec.num_outputs]
