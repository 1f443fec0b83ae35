"""The kernel object a recurrent node runs: checks, buffers, one jitted call.

``FusedKernel(spec, packed, ...)`` is built once at load. Each call checks
what the jitted driver cannot (dtypes, shapes, that W/R/B/P are still the
constants it packed), allocates the outputs, reuses a scratch buffer and
makes a single call into ``numba_rnn``. Anything unusual (a float64 X, a bad
shape, weights that differ from the packed ones) goes to the reference
implementation instead, which computes it or raises the error the reference
raises, so the two paths never disagree on errors.

Two ways in. With one thread and the ``lstminfer._native._numba_entry`` extension
built, calls (and streams' ``run_into``) go to ``EntryCore`` (C): it checks
the common case and calls the op's Numba ``cfunc`` (``numba_entry``) with the
GIL released, no Numba dispatcher in between (that costs ~5 µs a call).
Everything else, and every call without the extension or with threads > 1,
runs ``_slow`` below: the same checks in Python and a dispatcher call.
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
from .common import same_weights, thread_pool
from .packing import SEG_PEEP, PackedWeights, num_gates, with_panels

try:
    from .._native import _numba_entry
except ImportError:  # not built: every call takes the Python path
    _numba_entry = None


class _NoEntry:
    def __call__(self, *inputs):
        return self._slow(*inputs)


# The per-call fast path lives in C (EntryCore.__call__ / run_into, native/_numba_entry.pyx).
_EntryCore = _numba_entry.EntryCore if _numba_entry is not None else _NoEntry

_F32 = np.dtype(np.float32)
_NO_LENS = np.zeros(0, dtype=np.int32)
_NO_STATE = np.zeros((0, 0, 0), dtype=np.float32)
_NO_SYNC = np.zeros(1, dtype=np.int64)  # one part: the barrier is never used
_REFERENCE = {"LSTM": reference.lstm, "GRU": reference.gru, "RNN": reference.rnn}
_MIN_ROWS_PER_PART = 4  # below this, splitting the batch across threads costs more than it saves

class FusedKernel(_EntryCore):
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P]) -> (Y, Y_h[, Y_c])``.

    Calls go to ``EntryCore.__call__`` (C) when the entry is bound (one thread, the
    extension built); what it declines, and every call otherwise, comes to ``_slow``.
    """

    def __init__(self, spec: Any, packed: PackedWeights, W: np.ndarray, R: np.ndarray,
                 B: np.ndarray | None, P: np.ndarray | None, *, threads: int = 1,
                 serial_packed: PackedWeights | None = None, label: str = ""):
        self.spec = spec
        self.op = spec.op
        self.label = label
        # + W^T and R^T as panels (the batch-1 products): one more copy of the weights
        packed = with_panels(packed)
        self._packed = packed
        self._constants = (W, R, B, P)
        self.hidden_size = packed.hidden_size
        self.input_size = packed.input_size
        self.num_directions = packed.num_directions
        self._states = 2 if self.op == "LSTM" else 1
        self._nblocks = packed.blocks
        self._run = numba_rnn.driver(self.op)
        self._table, self._fparams = self._tables(spec, packed)
        # threads > 1: batches of 4+ rows per thread split the batch (no per-step barrier);
        # smaller ones split the hidden units (``packed`` has ``threads`` unit blocks).
        self._batch_parts = threads if serial_packed is not None else 1
        self._serial_packed = with_panels(serial_packed) if serial_packed is not None else packed
        self._serial_table = self._tables(spec, self._serial_packed)[0]
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
            + ("1 thread)" if threads == 1 else
               f"{threads} threads: batch split at >= {_MIN_ROWS_PER_PART * threads} rows, "
               f"else hidden units split in {self._nblocks} blocks)")
        )
        if _numba_entry is not None and self._batch_parts == 1 and self._nblocks == 1:
            self._bind()

    def _bind(self) -> None:
        """Compile (or load) the op's C entry and hand it the packed constants."""
        from . import numba_entry

        self._sync = np.zeros(1, dtype=np.int64)
        self._bind_entry(
            numba_entry.address(self.op), numba_entry.SLOT_NAMES, *self._constants, self.op == "LSTM",
            self._packed.buffer, self._table, self._fparams, self._sync, self.hidden_size, self.input_size,
            self.num_directions, self._states, num_gates(self.op), self._nblocks, self._reverse_first, self._flag,
            self._time_major, self._clip, self.spec.num_outputs, numba_rnn.scratch_size,
        )

    @staticmethod
    def _tables(spec: Any, packed: PackedWeights) -> tuple[np.ndarray, np.ndarray]:
        codes = [ACTIVATION_CODES[a.name.lower()] for a in spec.activations]
        params = [v for a in spec.activations for v in (a.alpha, a.beta)]
        # LSTM: whether each direction's peepholes are nonzero, decided here once (scanning them
        # on every call was ~3 % of a T=1, H=8 call)
        peepholes = ([bool(np.any(packed.segment(d, SEG_PEEP, (3, packed.hidden_size))))
                      for d in range(packed.num_directions)] if spec.op == "LSTM" else [])
        table = np.concatenate([packed.edges, packed.offsets.ravel(), np.asarray(codes, dtype=np.int64),
                                np.asarray(peepholes, dtype=np.int64)])
        table = table.astype(np.int64)
        fparams = np.asarray(params, dtype=np.float32)
        table.flags.writeable = False
        fparams.flags.writeable = False
        return table, fparams

    # ------------------------------------------------------------------
    def _slow(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        """Everything the C entry declines (or every call, where it is not bound)."""
        W0, R0, B0, P0 = self._constants
        if not ((W is W0 and R is R0 and B is B0 and (P is P0 or self.op != "LSTM")) or
                self._same_weights(W, R, B, P)):
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if not (type(X) is np.ndarray and X.dtype == _F32 and X.ndim == 3 and X.shape[2] == self.input_size):
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        time_major = self._time_major
        if time_major:
            T, batch = X.shape[0], X.shape[1]
            state_shape = (self.num_directions, batch, self.hidden_size)
        else:
            batch, T = X.shape[0], X.shape[1]
            state_shape = (batch, self.num_directions, self.hidden_size)

        h0, has_h0 = (_NO_STATE, False) if initial_h is None else self._initial_state(initial_h, state_shape)
        if initial_c is None or self.op != "LSTM":
            c0, has_c0 = _NO_STATE, False
        else:
            c0, has_c0 = self._initial_state(initial_c, state_shape)
        if h0 is None or c0 is None:
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if sequence_lens is None:
            lens, has_lens = _NO_LENS, False
        else:
            lens, has_lens = sequence_lens, True
            if not (type(lens) is np.ndarray and lens.dtype == np.int32 and lens.shape == (batch,)):
                if not (isinstance(lens, np.ndarray) and lens.dtype.kind in "iu" and lens.shape == (batch,)
                        and (lens.size == 0 or (lens.min() >= 0 and lens.max() <= T))):
                    return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
                lens = lens.astype(np.int32)
            elif not lens.flags.c_contiguous:
                lens = np.ascontiguousarray(lens)

        D, H = self.num_directions, self.hidden_size
        # The drivers take C-contiguous, writable X and time-major outputs (see driver_signature).
        flags = X.flags
        if not (flags.c_contiguous and flags.writeable):
            X = np.array(X, order="C")
        Y = np.empty((T, D, batch, H), dtype=_F32)
        states = np.empty((self._states, D, batch, H), dtype=_F32)  # the driver's h_out, c_out: states[0], states[-1]
        if self._batch_parts > 1 and batch >= _MIN_ROWS_PER_PART * self._batch_parts:
            status = self._run_batch_split(X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T, batch)
        else:
            args = (X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states[0], states[-1], self._packed.buffer,
                    self._table, self._fparams, self._scratch(T, batch), D, self._nblocks, self._reverse_first,
                    self._flag, time_major, self._clip)
            if self._nblocks > 1:
                status = self._run_hidden_split(args)
            else:
                status = self._run(*args, 0, 1, _NO_SYNC)
        if not time_major:  # [T, D, B, H] -> [B, T, D, H]; states [S, D, B, H] -> [S, B, D, H]
            Y = np.ascontiguousarray(Y.transpose(2, 0, 1, 3))
            states = np.ascontiguousarray(states.transpose(0, 2, 1, 3))
        if status:  # sequence_lens outside [0, T]: the reference raises the error
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if self.op == "LSTM":
            return (Y, states[0], states[1])[: self.spec.num_outputs]
        return (Y, states[0])[: self.spec.num_outputs]

    def _run_batch_split(self, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T, batch) -> int:
        """Batch rows split across threads, each running the whole sequence on its rows.

        No synchronisation per time step (each part is an independent
        recurrence), so it pays even on a busy machine; each part runs the
        serial driver in its own thread (the drivers release the GIL).
        """
        parts = self._batch_parts
        edges = [round(batch * k / parts) for k in range(parts + 1)]
        time_major = self._time_major

        def run_part(k):
            b0, b1 = edges[k], edges[k + 1]
            Xk = np.ascontiguousarray(X[:, b0:b1]) if time_major else X[b0:b1]
            Yk = np.empty((Y.shape[0], Y.shape[1], b1 - b0, Y.shape[3]), dtype=_F32)
            states_k = np.empty((states.shape[0], states.shape[1], b1 - b0, states.shape[3]), dtype=_F32)
            status = self._run(
                Xk, lens[b0:b1] if has_lens else lens, has_lens,
                np.ascontiguousarray(h0[:, b0:b1]) if has_h0 else h0, has_h0,
                np.ascontiguousarray(c0[:, b0:b1]) if has_c0 else c0, has_c0, Yk, states_k[0], states_k[-1],
                self._serial_packed.buffer, self._serial_table, self._fparams, self._scratch(T, b1 - b0),
                self.num_directions, 1, self._reverse_first, self._flag, time_major, self._clip, 0, 1, _NO_SYNC,
            )
            Y[:, :, b0:b1] = Yk
            states[:, :, b0:b1] = states_k
            return status

        futures = [thread_pool(parts - 1).submit(run_part, k) for k in range(1, parts)]
        status = run_part(0)
        return max([status] + [f.result() for f in futures])

    def _run_hidden_split(self, args) -> int:
        """One thread per unit block, meeting after each step (``numba_rnn._claim``).

        Part 0 runs in the calling thread; a part whose thread starts late
        (pool busy, core taken) finds its blocks done by the others.
        """
        parts = self._nblocks
        sync = np.zeros(numba_rnn.sync_size(parts), dtype=np.int64)
        pool = thread_pool(parts - 1)
        futures = [pool.submit(self._run, *args, k, parts, sync) for k in range(1, parts)]
        status = self._run(*args, 0, parts, sync)
        return max([status] + [f.result() for f in futures])

    def _initial_state(self, value, state_shape):
        """(array in [D, B, H] order, given?) or (None, False) when the reference must handle it."""
        if value is None:
            return _NO_STATE, False
        if type(value) is np.ndarray and value.dtype == _F32 and value.shape == state_shape:
            if not self._time_major:
                value = value.transpose(1, 0, 2)
            return (value if value.flags.c_contiguous else np.ascontiguousarray(value)), True
        return None, False

    def _same_weights(self, W, R, B, P) -> bool:
        return same_weights(self.op, self._constants, W, R, B, P)

    def _scratch(self, T: int, batch: int) -> np.ndarray:
        local = self._local
        if getattr(local, "T", -1) == T and local.batch == batch:
            return local.scratch
        need = numba_rnn.scratch_size(T, batch, num_gates(self.op), self.hidden_size, self._time_major)
        buf = getattr(local, "scratch", None)
        if buf is None or buf.size < need:
            buf = np.empty(max(need, 16), dtype=_F32)
            local.scratch = buf
        local.T, local.batch = T, batch
        return buf

    def _reference(self, *inputs):
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
