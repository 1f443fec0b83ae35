"""The Numba backend's kernel object: packed constants, one jitted call per sequence.

``FusedKernel(spec, packed, ...)`` is built once at load. With one thread and
the ``lstminfer._native._numba_entry`` extension built, calls (and streams'
``run_into``) go to ``EntryCore`` (C): it checks the common case and calls the
op's Numba ``cfunc`` (``numba_entry``) with the GIL released, with no Numba
dispatcher in between. Everything else goes to the recurrent shell
(``kernels.shell``), which calls ``_run_rows`` below through the dispatcher.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import numba_rnn
from .common import thread_pool
from .numba_math import ACTIVATION_CODES
from .packing import SEG_PEEP, PackedWeights, num_gates, with_panels
from .shell import MIN_ROWS_PER_PART, RecurrentShell, activations_text

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
_NO_SYNC = np.zeros(1, dtype=np.int64)  # one part: the barrier is never used


class FusedKernel(_EntryCore, RecurrentShell):
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P]) -> (Y, Y_h[, Y_c])``.

    Calls go to ``EntryCore.__call__`` (C) when the entry is bound (one thread, the
    extension built); what it declines, and every call otherwise, comes to the shell's ``_slow``.
    """

    NO_LENS = np.zeros(0, dtype=np.int32)
    NO_STATE = np.zeros((0, 0, 0), dtype=np.float32)
    STRIDED_OUTPUTS = False  # the drivers are typed for C-contiguous, writable arrays (driver_signature)
    WRITABLE_X = True
    writes_into = True  # a compiled program's PyCall hands out= its own memory (EntryCore.__call__)

    def __init__(self, spec: Any, packed: PackedWeights, W: np.ndarray, R: np.ndarray,
                 B: np.ndarray | None, P: np.ndarray | None, *, threads: int = 1,
                 serial_packed: PackedWeights | None = None, label: str = ""):
        # + W^T and R^T as panels (the batch-1 products): one more copy of the weights
        packed = with_panels(packed)
        self._packed = packed
        # threads > 1: batches of 4+ rows per thread split the batch (no per-step barrier);
        # smaller ones split the hidden units (``packed`` has ``threads`` unit blocks).
        self._init_shell(spec, (W, R, B, P), packed, label=label,
                         batch_parts=threads if serial_packed is not None else 1)
        self._nblocks = packed.blocks
        self._run = numba_rnn.driver(self.op)
        self._table, self._fparams = self._tables(spec, packed)
        self._serial_packed = with_panels(serial_packed) if serial_packed is not None else packed
        self._serial_table = self._tables(spec, self._serial_packed)[0]
        acts = activations_text(spec)
        self.describe = (
            f"numba {self.op.lower()}_seq fused (H={self.hidden_size}, {spec.direction}, {acts}, "
            + ("1 thread)" if threads == 1 else
               f"{threads} threads: batch split at >= {MIN_ROWS_PER_PART * threads} rows, "
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
        # LSTM: whether each direction's peepholes are nonzero, decided once here, not per call
        peepholes = ([bool(np.any(packed.segment(d, SEG_PEEP, (3, packed.hidden_size))))
                      for d in range(packed.num_directions)] if spec.op == "LSTM" else [])
        table = np.concatenate([packed.edges, packed.offsets.ravel(), np.asarray(codes, dtype=np.int64),
                                np.asarray(peepholes, dtype=np.int64)])
        table = table.astype(np.int64)
        fparams = np.asarray(params, dtype=np.float32)
        table.flags.writeable = False
        fparams.flags.writeable = False
        return table, fparams

    def _run_rows(self, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T, rows, part) -> int:
        if has_h0 and not h0.flags.c_contiguous:
            h0 = np.ascontiguousarray(h0)
        if has_c0 and not c0.flags.c_contiguous:
            c0 = np.ascontiguousarray(c0)
        if part:  # one of a batch split: the serial weights, into contiguous outputs copied back
            Yk = np.empty(Y.shape, dtype=_F32)
            states_k = np.empty(states.shape, dtype=_F32)
            status = self._run(
                X, lens, has_lens, h0, has_h0, c0, has_c0, Yk, states_k[0], states_k[-1],
                self._serial_packed.buffer, self._serial_table, self._fparams, self._scratch(T, rows),
                self.num_directions, 1, self._reverse_first, self._flag, self._time_major, self._clip, 0, 1, _NO_SYNC,
            )
            Y[...] = Yk
            states[...] = states_k
            return status
        args = (X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states[0], states[-1], self._packed.buffer,
                self._table, self._fparams, self._scratch(T, rows), self.num_directions, self._nblocks,
                self._reverse_first, self._flag, self._time_major, self._clip)
        if self._nblocks > 1:
            return self._run_hidden_split(args)
        return self._run(*args, 0, 1, _NO_SYNC)

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

    def _scratch_floats(self, T: int, batch: int) -> int:
        return numba_rnn.scratch_size(T, batch, num_gates(self.op), self.hidden_size, self._time_major)
