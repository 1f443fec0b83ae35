"""The recurrent shell: what every fast LSTM/GRU/RNN kernel shares around its compiled call.

A backend supplies one builder, ``build(spec, weights, precision, ctx)``
returning ``(kernel, "")`` or ``(None, why not)`` (``lstminfer.backends``
registers it). Its kernel class derives from ``RecurrentShell`` and supplies
only ``_run_rows`` (one compiled call over some batch rows) and
``_scratch_floats``; the shell owns the rest of a call that the backend's C
fast path declines: the check that W/R/B/P are the packed constants, the
layout of X, the outputs and the initial states, ``sequence_lens``, the batch
split across threads, per-thread scratch, and the reference fallback (which
computes, or raises the reference's error, so the paths never disagree).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .. import reference
from ..errors import InvalidInputError, UnsupportedModelError
from ..quantization import dequantize_per_row, int8_per_row, round_to_bf16, stored_int8
from .common import same_constant, same_weights, thread_pool

_F32 = np.dtype(np.float32)
_REFERENCE = {"LSTM": reference.lstm, "GRU": reference.gru, "RNN": reference.rnn}
MIN_ROWS_PER_PART = 4  # below this, splitting the batch across threads costs more than it saves


@dataclass(frozen=True)
class RecurrentWeights:
    """A node's constant W, R, B, P (None: not a constant, or omitted), as the model passes them."""

    W: Any = None
    R: Any = None
    B: Any = None
    P: Any = None
    stored: tuple | None = None  # (qW, sW, qR, sR) that W/R expand, when a file stores them (DynamicQuantizeLSTM)

    @cached_property
    def int8(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(qW, sW, qR, sR): per-row int8 values and scales; those the file stores, where it does
        (a re-derived scale can differ by 1 ulp)."""
        if self.stored is not None:
            return self.stored
        (qW, sW), (qR, sR) = (stored_int8(w) or int8_per_row(w) for w in (self.W, self.R))
        return qW, sW, qR, sR


@dataclass(frozen=True)
class Precision:
    """The number format a builder is asked to compute W and R in (state and accumulation stay float32)."""

    name: str = "float32"  # "float32" | "int8" | "bf16"
    int8_scheme: str = "auto"  # int8: "auto" | "weight-only" | "vnni" (see cython_backend.int8_scheme)


FLOAT32 = Precision()


@dataclass(frozen=True)
class KernelContext:
    """What a builder needs besides the node: its thread count and the label errors carry."""

    threads: int = 1
    label: str = ""


def activations_text(spec: Any) -> str:
    """The first direction's activations, as describe() shows them ("Sigmoid+Tanh+Tanh")."""
    return "+".join(a.name for a in spec.activations[: len(reference.DEFAULT_ACTIVATIONS[spec.op])])


def check_threads(threads: Any) -> None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")


def run_reference(spec: Any, kwargs: dict, label: str, inputs: tuple) -> tuple:
    """The reference on ``inputs`` (``kwargs``: ``spec.reference_kwargs()``), its errors prefixed
    with the node's label, cut to the node's outputs."""
    args = inputs if spec.op == "LSTM" else inputs[:6]
    prefix = f"{label}: " if label else ""
    try:
        outputs = _REFERENCE[spec.op](*args, **kwargs)
    except InvalidInputError as err:
        raise InvalidInputError(f"{prefix}{err}") from None
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"{prefix}{err}") from None
    return outputs[: spec.num_outputs]


def reference_kernel(spec: Any, label: str = ""):
    """The pure-NumPy kernel: ``lstminfer.reference`` with the parsed spec."""
    kwargs = spec.reference_kwargs()

    def kernel(*inputs):
        return run_reference(spec, kwargs, label, inputs)

    kernel.describe = "reference"
    return kernel


class RecurrentShell:
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P]) -> (Y, Y_h[, Y_c])``: the Python side.

    A backend's kernel class lists its C core first and this class second; the
    core calls ``self._slow`` with whatever it declines. Subclasses call
    ``_init_shell`` and define ``NO_LENS``/``NO_STATE`` (the placeholders their
    compiled call takes for an omitted input), ``_run_rows`` and ``_scratch_floats``.
    """

    NO_LENS: np.ndarray
    NO_STATE: np.ndarray
    STRIDED_OUTPUTS = True  # the compiled call writes [T, D, B, H] views of batch-major outputs
    WRITABLE_X = False  # the compiled call is typed for a writable X

    def _init_shell(self, spec: Any, constants: tuple, packed: Any, *, label: str, batch_parts: int,
                    lowp: str = "float32", int8: tuple | None = None) -> None:
        self.spec = spec
        self.op = spec.op
        self.label = label
        self._constants = constants  # (W, R, B, P) as packed: the fast paths check identity first
        self.hidden_size = packed.hidden_size
        self.input_size = packed.input_size
        self.num_directions = packed.num_directions
        self._states = 2 if self.op == "LSTM" else 1
        self._flag = bool(spec.input_forget if self.op == "LSTM" else
                          spec.linear_before_reset if self.op == "GRU" else False)
        self._clip = math.inf if spec.clip is None else float(spec.clip)
        self._reverse_first = spec.direction == "reverse"
        self._time_major = spec.layout == 0
        self._batch_parts = batch_parts  # > 1: batches of MIN_ROWS_PER_PART rows per part run split
        self._local = threading.local()
        self._reference_kwargs = spec.reference_kwargs()
        self._lowp = lowp  # "float32", or the low precision the products use ("int8", "int8-vnni", "bf16")
        self._int8 = int8  # int8: (qW, sW, qR, sR)
        self._dequantized: tuple | None = None  # low precision: the float W/R the fallbacks use, made on first need

    # ------------------------------------------------------------ hooks
    def _run_rows(self, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T: int, rows: int,
                  part: bool) -> int:
        """One compiled call over ``rows`` batch rows (``part``: one of a batch split); status 0 or the
        lens error. ``Y`` [T, D, rows, H] and ``states`` [S, D, rows, H] are time-major (views)."""
        raise NotImplementedError

    def _scratch_floats(self, T: int, batch: int) -> int:
        raise NotImplementedError

    def _lowp_weights(self, W, R) -> tuple:
        """The float32 W/R a low-precision kernel computes with (its products' oracle)."""
        if self._lowp == "bf16":
            return round_to_bf16(W), round_to_bf16(R)
        qW, sW, qR, sR = self._int8
        return dequantize_per_row(qW, sW), dequantize_per_row(qR, sR)

    # ------------------------------------------------------------ one call
    def _slow(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        """Everything the C fast path declines: equal (not identical) weights, other dtypes,
        strided or converted inputs, thread splits, bad sequence_lens (to the reference)."""
        inputs = (X, W, R, B, sequence_lens, initial_h, initial_c, P)
        W0, R0, B0, P0 = self._constants
        if not ((W is W0 and R is R0 and B is B0 and (P is P0 or self.op != "LSTM")) or
                same_weights(self.op, self._constants, W, R, B, P)):
            return self._reference(*inputs)
        if not (type(X) is np.ndarray and X.dtype == _F32 and X.ndim == 3 and X.shape[2] == self.input_size):
            return self._reference(*inputs)
        time_major = self._time_major
        D, H = self.num_directions, self.hidden_size
        if time_major:
            T, batch = X.shape[0], X.shape[1]
            state_shape = (D, batch, H)
        else:
            batch, T = X.shape[0], X.shape[1]
            state_shape = (batch, D, H)
        h0, has_h0 = self._initial_state(initial_h, state_shape)
        c0, has_c0 = self._initial_state(initial_c, state_shape) if self.op == "LSTM" else (self.NO_STATE, False)
        lens, has_lens = self._lens(sequence_lens, batch, T)
        if h0 is None or c0 is None or lens is None:
            return self._reference(*inputs)
        if not (X.flags.c_contiguous and (X.flags.writeable or not self.WRITABLE_X)):
            X = np.array(X, order="C")

        S = self._states
        if time_major or not self.STRIDED_OUTPUTS:
            Y = Y_tm = np.empty((T, D, batch, H), dtype=_F32)
            states = states_tm = np.empty((S, D, batch, H), dtype=_F32)
        else:
            Y = np.empty((batch, T, D, H), dtype=_F32)
            states = np.empty((S, batch, D, H), dtype=_F32)
            Y_tm, states_tm = Y.transpose(1, 2, 0, 3), states.transpose(0, 2, 1, 3)
        if batch == 0:  # empty outputs; no steps to run (T may be huge)
            status = 0
        elif self._batch_parts > 1 and batch >= MIN_ROWS_PER_PART * self._batch_parts:
            status = self._split_batch(X, lens, has_lens, h0, has_h0, c0, has_c0, Y_tm, states_tm, T, batch)
        else:
            status = self._run_rows(X, lens, has_lens, h0, has_h0, c0, has_c0, Y_tm, states_tm, T, batch, False)
        if status:  # sequence_lens outside [0, T]: the reference raises the error
            return self._reference(*inputs)
        if not (time_major or self.STRIDED_OUTPUTS):  # [T, D, B, H] -> [B, T, D, H]; [S, D, B, H] -> [S, B, D, H]
            Y = np.ascontiguousarray(Y.transpose(2, 0, 1, 3))
            states = np.ascontiguousarray(states.transpose(0, 2, 1, 3))
        if self.op == "LSTM":
            return (Y, states[0], states[1])[: self.spec.num_outputs]
        return (Y, states[0])[: self.spec.num_outputs]

    def _split_batch(self, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T: int, batch: int) -> int:
        """Batch rows split across threads, each part running the whole sequence on its rows: an
        independent recurrence, so no synchronisation per step (the compiled calls release the GIL)."""
        parts = self._batch_parts
        edges = [round(batch * k / parts) for k in range(parts + 1)]
        time_major = self._time_major

        def run_part(k):
            b0, b1 = edges[k], edges[k + 1]
            Xk = np.ascontiguousarray(X[:, b0:b1]) if time_major else X[b0:b1]
            return self._run_rows(
                Xk, lens[b0:b1] if has_lens else lens, has_lens, h0[:, b0:b1] if has_h0 else h0, has_h0,
                c0[:, b0:b1] if has_c0 else c0, has_c0, Y[:, :, b0:b1], states[:, :, b0:b1], T, b1 - b0, True,
            )

        futures = [thread_pool(parts - 1).submit(run_part, k) for k in range(1, parts)]
        status = run_part(0)
        return max([status] + [f.result() for f in futures])

    def _initial_state(self, value, state_shape):
        """(array in [D, B, H] order with unit inner stride, given?) or (None, False) for the reference."""
        if value is None:
            return self.NO_STATE, False
        if type(value) is np.ndarray and value.dtype == _F32 and value.shape == state_shape:
            if value.strides[-1] != 4 and value.shape[-1] > 1:
                value = np.ascontiguousarray(value)
            return (value if self._time_major else value.transpose(1, 0, 2)), True
        return None, False

    def _lens(self, sequence_lens, batch: int, T: int):
        """(int32 [batch] lengths, given?) or (None, False) for the reference; values outside [0, T]
        stay outside (clipped so int32 cannot wrap) for the compiled call to report."""
        if sequence_lens is None:
            return self.NO_LENS, False
        lens = sequence_lens
        if type(lens) is np.ndarray and lens.dtype == np.int32 and lens.shape == (batch,) and lens.flags.c_contiguous:
            return lens, True
        if isinstance(lens, np.ndarray) and lens.dtype.kind in "iu" and lens.shape == (batch,):
            return np.ascontiguousarray(lens.clip(-1, T + 1), dtype=np.int32), True
        return None, False

    def _scratch(self, T: int, batch: int) -> np.ndarray:
        """This thread's scratch buffer, grown as needed (threads never share one)."""
        local = self._local
        if getattr(local, "key", None) == (T, batch):
            return local.scratch
        need = max(self._scratch_floats(T, batch), 16)
        buf = getattr(local, "scratch", None)
        if buf is None or buf.size < need:
            buf = np.empty(need, dtype=_F32)
            local.scratch = buf
        local.key = (T, batch)
        return buf

    # ------------------------------------------------------------ fallback
    def _reference(self, *inputs):
        if self._lowp != "float32":
            inputs = self._as_dequantized(inputs)
        return run_reference(self.spec, self._reference_kwargs, self.label, inputs)

    def _as_dequantized(self, inputs: tuple) -> tuple:
        """Low precision: the packed W/R replaced by the float32 weights the kernel computes with."""
        X, W, R, *rest = inputs
        W0, R0 = self._constants[:2]
        if not (same_constant(W, W0) and same_constant(R, R0)):
            return inputs  # other weights than those quantized: run as given
        if self._dequantized is None:
            self._dequantized = self._lowp_weights(W0, R0)
        return (X, *self._dequantized, *rest)
