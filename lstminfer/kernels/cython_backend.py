"""The Cython kernels (``lstminfer._native._rnn_kernels*``): compiled ahead of time, no JIT, no GIL.

Same contract as the Numba path (``lstminfer.kernels.numba_kernel``)::

    kernel = cython_kernel(spec, W, R, B, P, threads=1, label=node.label())
    if kernel is None:
        reason = why_not_fused(spec, W, R, B, P)    # a short sentence for describe()/info
        ...fall back to the reference kernel...

``kernel(X, W, R, B, sequence_lens, initial_h, initial_c, P)`` (GRU/RNN: the
first six) returns ``(Y, Y_h[, Y_c])`` cut to ``spec.num_outputs``, float32,
with the reference's semantics; ``kernel.describe`` names what runs it. The
GIL is released for the whole sequence, so one kernel serves several threads
at once (scratch buffers are per thread, weights read-only).

Instruction set: the extension is built three times from one source
(portable baseline, AVX2+FMA, AVX-512); ``isa()`` picks the best one this
CPU has (``lstminfer._native._cpu.features()``) unless ``LSTMINFER_PORTABLE=1``,
which forces the baseline build. It is read when a kernel is built.

Falls back (``cython_kernel`` returns None): extension not built, W/R not
constants, dtypes other than float32 (float64 runs on the reference), weight
shapes that don't match (the reference reports them at run time). At run
time, anything unusual (float64 X, bad shapes, weights other than the packed
constants, sequence_lens out of range) goes to the reference, which computes
it or raises its error, so the two paths never disagree on errors.

threads > 1: a batch of at least 4 rows per thread is split across threads
(each runs the whole sequence on its rows); smaller batches run on one.

One-step LSTM calls (T = 1, ``StreamPool.step``) of 4+ rows (per thread) run as
one fused pass on the AVX-512 build (``lstm_step_fused`` in native/_rnn_core.pxi:
products, bias and cells in register tiles; its ``fused_steps_run()`` counts them).

Low-precision weights (``lstminfer.load(..., quantize="int8"/"bf16")``); every such
kernel answers for the original float W/R (by identity, as the model passes them),
reads only its biases/peepholes as float32 (state, gates and activations stay
float32), and its fallbacks run the reference on the weights it computes with:

* ``cython_int8_kernel(..., scheme=)``: W/R quantized per output row
  (``lstminfer.quantization.int8_per_row``). "weight-only": int8 panels with
  float32 scales, widened inside the products (float32 accumulation): equals
  the reference on the dequantized weights to float32 rounding. "vnni":
  dynamic int8 (native/li_vnni.h): each product's activation rows (x_t for the
  input projection of all steps at once, h_{t-1} per step) quantized per row
  and call, symmetric 8-bit, u8 x s8 ``vpdpbusd`` with int32 accumulation,
  scaled back per output. It adds error of the same order as the weights'
  quantization: vs the dequantized-weight reference, max |diff| <= 0.05 and
  mean <= 0.01 (times max(1, |output|)); measured max 2.1e-2 / mean 4.8e-3 on
  random H=256 models, 1.7e-2 / 2e-3 on the bundled ones (adding model's accuracy:
  99.45% float, 99.6% vnni). "auto" (``int8_scheme``): VNNI wherever the CPU
  has it (AVX-512 VNNI+BW+VL, LSTMINFER_PORTABLE unset, I and H <= 4096),
  since it measured 3-4x the weight-only product at every shape tried
  (M = 1..8192 rows, K = 64..512; step, sequence and batch runs alike);
  ``LSTMINFER_INT8_SCHEME=weight-only|vnni`` overrides "auto".
* ``cython_bf16_kernel``: W/R rounded to bf16 (``quantization.round_to_bf16``),
  stored as bf16 and widened exactly (a 16-bit shift) inside the products:
  equals the float kernel on the rounded weights. (``vdpbf16ps`` would need the
  activations in bf16 too, losing that equality.)
"""
from __future__ import annotations

import importlib
import math
import os
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from .. import reference
from ..errors import InvalidInputError, UnsupportedModelError
from .common import same_constant, same_weights, thread_pool, weights_problem
from .packing import (ALIGN_FLOATS, GATES, NUM_SEGMENTS, SEG_BIAS_RH, SEG_BIAS_X, SEG_PEEP, SEG_RT, SEG_WT,
                      PackedWeights, column_panels, concatenate_aligned, pack, pack_bf16_panels, pack_int8_panels,
                      pack_vnni_panels, row_stride)

OPS = ("LSTM", "GRU", "RNN")
ACTS_PER_DIRECTION = {"LSTM": 3, "GRU": 2, "RNN": 1}
PORTABLE_ENV = "LSTMINFER_PORTABLE"
_ISA_MODULES = {"avx512": "lstminfer._native._rnn_kernels_avx512", "avx2": "lstminfer._native._rnn_kernels_avx2",
                "portable": "lstminfer._native._rnn_kernels"}
_ISA_NEEDS = {"avx512": ("avx512f", "avx2", "fma"), "avx2": ("avx2", "fma"), "portable": ()}

_F32 = np.dtype(np.float32)
_NO_PANELS = np.zeros(ALIGN_FLOATS, dtype=np.float32)  # pbuf of an int8 kernel (never read)
_NO_PANELS.flags.writeable = False
_NO_LENS = np.zeros(1, dtype=np.int32)
_NO_STATE = np.zeros((1, 1, 1), dtype=np.float32)
_REFERENCE = {"LSTM": reference.lstm, "GRU": reference.gru, "RNN": reference.rnn}
_MIN_ROWS_PER_PART = 4  # below this, splitting the batch across threads costs more than it saves

_IMPORT_ERROR: str | None = None
try:
    from .._native import _rnn_kernels as _portable
except ImportError as err:  # pragma: no cover - only when the extension was not built
    _portable = None
    _IMPORT_ERROR = (f"the Cython extension lstminfer._native._rnn_kernels is not built ({err}); "
                     "run `pip install -e .` (needs Cython and a C compiler)")


class _NoCore:  # pragma: no cover - only when the extension was not built (no kernel is made then)
    def __call__(self, *inputs):
        return self._slow(*inputs)


# The per-call fast path lives in C (KernelCore.__call__, native/_rnn_core.pxi); the
# portable build's class serves every build, bound to the chosen build's run_sequence.
_KernelCore = _portable.KernelCore if _portable is not None else _NoCore



def available() -> bool:
    return _IMPORT_ERROR is None


def unavailable_reason() -> str | None:
    return _IMPORT_ERROR


def isa() -> str:
    """The instruction-set build kernels use now: "avx512", "avx2" or "portable"."""
    if os.environ.get(PORTABLE_ENV, "") not in ("", "0"):
        return "portable"
    try:
        from .._native._cpu import features
        have = features()
    except ImportError:
        return "portable"
    for name in ("avx512", "avx2"):
        if all(have.get(f) for f in _ISA_NEEDS[name]):
            return name
    return "portable"


def _module(name: str):
    try:
        return importlib.import_module(_ISA_MODULES[name])
    except ImportError:  # a partial build: the baseline always works
        return _portable


def why_not_fused(spec: Any, W: Any, R: Any, B: Any = None, P: Any = None) -> str | None:
    """Why ``cython_kernel`` would fall back for this node, or None if it runs it."""
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    return weights_problem(spec, W, R, B, P, "Cython kernel", _portable.ACTIVATION_CODES)


def cython_kernel(spec: Any, W: Any, R: Any, B: Any = None, P: Any = None, *, threads: int = 1,
                  label: str = ""):
    """A Cython kernel for this node (weights packed at load), or None (see ``why_not_fused``)."""
    if why_not_fused(spec, W, R, B, P) is not None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return CythonKernel(spec, W, R, B, P if spec.op == "LSTM" else None, threads=threads, label=label)


def pack_panels(packed: PackedWeights, panel_width: int) -> tuple[np.ndarray, np.ndarray]:
    """The weights again, in the panel layout of the micro-kernel (``gemm`` in native/_rnn_core.pxi).

    Per direction, three column ranges of the k-major matrices: W^T [I, G*H],
    then R^T's columns [0, n_a) and [n_a, G*H), where GRU splits before the
    candidate gate (its product needs r first) and the others put all in
    the first range. Each range becomes panels of ``panel_width`` columns,
    each panel K rows of contiguous floats (the last one zero-padded), so
    the micro-kernel reads its weights as one sequential stream.
    Returns (buffer, offsets [D, 3]).
    """
    op, H, I, D = packed.op, packed.hidden_size, packed.input_size, packed.num_directions
    GH = GATES[op] * H
    split = 2 * H if op == "GRU" else GH
    pieces: list[np.ndarray] = []
    offsets = np.zeros((D, 3), dtype=np.int64)
    position = 0
    for d in range(D):
        # rows of WT/RT are row_stride(GH) floats apart (padding after the first GH)
        WT = packed.segment(d, SEG_WT, (I, row_stride(GH)))[:, :GH]
        RT = packed.segment(d, SEG_RT, (H, row_stride(GH)))[:, :GH]
        for which, matrix in enumerate((WT, RT[:, :split], RT[:, split:])):
            panels = column_panels(matrix, panel_width)
            panels = np.concatenate([panels, np.zeros(-panels.size % ALIGN_FLOATS, dtype=np.float32)])
            offsets[d, which] = position
            position += panels.size
            pieces.append(panels)
    buffer = concatenate_aligned(pieces + [np.zeros(ALIGN_FLOATS, dtype=np.float32)])
    buffer.flags.writeable = False
    offsets.flags.writeable = False
    return buffer, offsets


INT8_SCHEMES = ("auto", "vnni", "weight-only")
INT8_SCHEME_ENV = "LSTMINFER_INT8_SCHEME"  # forces "vnni" or "weight-only" where a kernel asks for "auto"
VNNI_MAX_K = 4096  # VNNI keeps 4 quantized rows of K bytes on the stack (larger K: weight-only)


def vnni_available() -> bool:
    """Can int8 kernels use the dynamic AVX-512 VNNI products here (and now: not LSTMINFER_PORTABLE)?"""
    if _IMPORT_ERROR or isa() == "portable":
        return False
    try:
        from .._native._cpu import features
        have = features()
    except ImportError:
        return False
    return (all(have.get(f) for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni"))
            and bool(getattr(_module(isa()), "VNNI_COMPILED", False)))


def int8_scheme(scheme: str, input_size: int, hidden_size: int) -> str:
    """"vnni" or "weight-only" for an int8 kernel asked for ``scheme``.

    The rule for "auto" (measured, benchmarks/test_bench_quantized.py and README
    "int8 kernels"): dynamic VNNI for every product wherever the CPU has it
    (3-4x the weight-only product at every shape tried, M = 1..8192 rows,
    K = 64..512), else weight-only; ``LSTMINFER_INT8_SCHEME`` overrides it.
    """
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8 scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    if scheme == "auto":
        scheme = os.environ.get(INT8_SCHEME_ENV, "") or "auto"
        if scheme not in INT8_SCHEMES:
            raise ValueError(f"{INT8_SCHEME_ENV} must be one of {INT8_SCHEMES[1:]}, got {scheme!r}")
    fits = max(input_size, hidden_size) <= VNNI_MAX_K
    if scheme == "vnni" and not (vnni_available() and fits):
        raise ValueError("int8 scheme 'vnni' needs AVX-512 VNNI (lstminfer._native._cpu), LSTMINFER_PORTABLE unset "
                         f"and input/hidden size <= {VNNI_MAX_K}")
    if scheme == "auto":
        return "vnni" if vnni_available() and fits else "weight-only"
    return scheme


def _check_threads(threads: Any) -> None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")


def cython_int8_kernel(spec: Any, W: Any, R: Any, B: Any, P: Any, quantized: tuple, *, threads: int = 1,
                       label: str = "", scheme: str = "weight-only"):
    """An int8-weight Cython kernel, or None (see ``why_not_fused``).

    ``W``/``R``: the float32 constants of the model (what the kernel is called
    with); ``quantized``: (qW, sW, qR, sR), their per-row int8 values [D, G*H, K]
    and float32 scales [D, G*H] (``lstminfer.quantization.int8_per_row``).
    ``scheme``: "weight-only" (the products equal float32 ones on the dequantized
    weights), "vnni" (activations quantized per row and call as well: int32
    accumulation, error bounded in tests/test_int8_kernels.py) or "auto"
    (``int8_scheme``: VNNI where the CPU has it).
    """
    if why_not_fused(spec, W, R, B, P) is not None:
        return None
    _check_threads(threads)
    qW, sW, qR, sR = quantized
    for q, scale, w in ((qW, sW, W), (qR, sR, R)):
        if q.dtype != np.int8 or q.shape != w.shape or scale.dtype != _F32 or scale.shape != w.shape[:2]:
            raise ValueError(f"quantized weights do not match: {q.dtype}{list(q.shape)} scales "
                             f"{scale.dtype}{list(scale.shape)} for weights {list(w.shape)}")
    chosen = int8_scheme(scheme, W.shape[2], R.shape[2])
    kernel = CythonKernel(spec, W, R, B, P if spec.op == "LSTM" else None, threads=threads, label=label,
                          int8=(qW, sW, qR, sR), precision="int8-vnni" if chosen == "vnni" else "int8")
    kernel.scheme = chosen  # "vnni" (dynamic int8 activations) or "weight-only": describe() says which
    return kernel


def cython_bf16_kernel(spec: Any, W: Any, R: Any, B: Any, P: Any, *, threads: int = 1, label: str = ""):
    """A bf16-weight Cython kernel, or None (see ``why_not_fused``).

    ``W``/``R``: the float32 constants of the model (the kernel answers for them
    by identity); it computes with them rounded to bf16
    (``lstminfer.quantization.round_to_bf16``), stored as bf16 and widened
    exactly inside the products (float32 accumulation): results equal the float
    kernel on the rounded weights. Biases and peepholes stay float32.
    """
    if why_not_fused(spec, W, R, B, P) is not None:
        return None
    _check_threads(threads)
    return CythonKernel(spec, W, R, B, P if spec.op == "LSTM" else None, threads=threads, label=label,
                        precision="bf16")


def _small_segments_only(packed: PackedWeights) -> PackedWeights:
    """``packed`` without its float W/R copies (an int8 kernel reads only the biases and peepholes)."""
    D, H = packed.num_directions, packed.hidden_size
    GH = GATES[packed.op] * H
    kept = {SEG_BIAS_X: GH, SEG_BIAS_RH: H, SEG_PEEP: 3 * H}
    offsets = np.zeros((D, NUM_SEGMENTS), dtype=np.int64)
    pieces, position = [], 0
    for d in range(D):
        for which, size in kept.items():
            padded = -(-size // ALIGN_FLOATS) * ALIGN_FLOATS
            piece = np.zeros(padded, dtype=np.float32)
            piece[:size] = packed.segment(d, which, (size,))
            offsets[d, which] = position
            position += padded
            pieces.append(piece)
    buffer = concatenate_aligned(pieces + [np.zeros(ALIGN_FLOATS, dtype=np.float32)])
    buffer.flags.writeable = offsets.flags.writeable = False
    return replace(packed, buffer=buffer, offsets=offsets)


class CythonKernel(_KernelCore):
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P]) -> (Y, Y_h[, Y_c])``.

    Calls go to ``KernelCore.__call__`` (C): the packed constants (by identity),
    float32 arrays of the exact shapes and int32 lens run there with no Python
    in between; anything else comes to ``_slow`` below, which normalizes what it
    can and sends the rest (with its errors) to the reference.
    """

    def __init__(self, spec: Any, W: np.ndarray, R: np.ndarray, B: np.ndarray | None, P: np.ndarray | None,
                 *, threads: int = 1, label: str = "", int8: tuple | None = None, precision: str = "float32"):
        self.spec = spec
        self.op = spec.op
        self.label = label
        self.isa = isa()
        self._ext = _module(self.isa)
        self._opcode = self._ext.OPS[self.op]
        lbr = bool(spec.linear_before_reset) if self.op == "GRU" else False
        if (int8 is not None) != (precision in ("int8", "int8-vnni")) or precision not in self._ext.QKINDS:
            raise ValueError(f"CythonKernel: precision {precision!r} with int8 weights {int8 is not None}")
        self.precision = precision
        self._int8 = int8
        self._dequantized: tuple | None = None  # low precision: the float W/R the fallbacks use, made on first need
        self._packed = pack(self.op, W, R, B, P, linear_before_reset=lbr, blocks=1)
        if precision != "float32":
            self._packed = _small_segments_only(self._packed)
        self._constants = (W, R, B, P)
        self.hidden_size = self._packed.hidden_size
        self.input_size = self._packed.input_size
        self.num_directions = self._packed.num_directions
        self._gates = GATES[self.op]
        self._states = 2 if self.op == "LSTM" else 1
        self._offsets = np.ascontiguousarray(self._packed.offsets, dtype=np.int64)
        self._offsets.flags.writeable = False
        self._qkind = self._ext.QKINDS[precision]
        if precision == "float32":
            self._panels, self._panel_offsets = pack_panels(self._packed, self._ext.PANEL_WIDTH)
            self._qpanels = self._qscales = self._qscale_offsets = None
        else:
            self._panels = _NO_PANELS
            if precision == "int8":
                lowp = pack_int8_panels(self.op, *int8, self._ext.PANEL_WIDTH)
            elif precision == "int8-vnni":
                lowp = pack_vnni_panels(self.op, *int8, self._ext.VNNI_PANEL_WIDTH)
            else:
                lowp = pack_bf16_panels(self.op, *self._lowp_weights(W, R), self._ext.PANEL_WIDTH)
            self._qpanels, self._panel_offsets, self._qscales, self._qscale_offsets = lowp
        codes = [self._ext.ACTIVATION_CODES[a.name.lower()] for a in spec.activations]
        self._codes = np.asarray(codes, dtype=np.int32)
        self._fparams = np.asarray([v for a in spec.activations for v in (a.alpha, a.beta)], dtype=np.float32)
        self._codes.flags.writeable = self._fparams.flags.writeable = False
        self._flag = bool(spec.input_forget if self.op == "LSTM" else lbr)
        self._clip = math.inf if spec.clip is None else float(spec.clip)
        self._reverse_first = spec.direction == "reverse"
        self._time_major = spec.layout == 0
        self._threads = threads
        self._local = threading.local()
        self._reference_kwargs = spec.reference_kwargs()
        acts = "+".join(a.name for a in spec.activations[: ACTS_PER_DIRECTION[self.op]])
        self.describe = (
            f"cython {self.op.lower()}_seq {self.isa}{'' if precision == 'float32' else ' ' + precision} "
            f"(H={self.hidden_size}, {spec.direction}, {acts}, "
            + ("1 thread)" if threads == 1 else
               f"{threads} threads: batch split at >= {_MIN_ROWS_PER_PART * threads} rows)")
        )
        if _portable is not None:
            self._bind_core(
                self._ext.RUN_SEQUENCE, self._opcode, W, R, B, P, self.op == "LSTM",
                self._packed.buffer, self._offsets, self._panels, self._panel_offsets, self._codes, self._fparams,
                self.hidden_size, self.input_size, self.num_directions, self._gates, spec.num_outputs,
                self._reverse_first, self._flag, self._time_major, self._clip,
                _MIN_ROWS_PER_PART * threads if threads > 1 else 0,
                self._qpanels, self._qscales, self._qscale_offsets, self._qkind, threads, self._ext.PANEL_WIDTH,
            )
            if self.splits_units:
                self.describe = self.describe[:-1] + ", hidden units split below)"

    # ------------------------------------------------------------------
    def _slow(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        """Everything the C fast path declines: equal (not identical) weights, other dtypes,
        strided or converted inputs, thread splits, bad sequence_lens (to the reference)."""
        W0, R0, B0, P0 = self._constants
        if not ((W is W0 and R is R0 and B is B0 and (P is P0 or self.op != "LSTM")) or
                self._same_weights(W, R, B, P)):
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if not (type(X) is np.ndarray and X.dtype == _F32 and X.ndim == 3 and X.shape[2] == self.input_size):
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        time_major = self._time_major
        D, H = self.num_directions, self.hidden_size
        if time_major:
            T, batch = X.shape[0], X.shape[1]
            state_shape = (D, batch, H)
        else:
            batch, T = X.shape[0], X.shape[1]
            state_shape = (batch, D, H)
        h0, has_h0 = self._initial_state(initial_h, state_shape)
        c0, has_c0 = self._initial_state(initial_c, state_shape) if self.op == "LSTM" else (_NO_STATE, False)
        if h0 is None or c0 is None:
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if sequence_lens is None:
            lens, has_lens = _NO_LENS, False
        else:
            lens, has_lens = sequence_lens, True
            if not (type(lens) is np.ndarray and lens.dtype == np.int32 and lens.shape == (batch,)
                    and lens.flags.c_contiguous):
                if not (isinstance(lens, np.ndarray) and lens.dtype.kind in "iu" and lens.shape == (batch,)):
                    return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
                lens = np.ascontiguousarray(lens.clip(-1, T + 1), dtype=np.int32)  # clip: no int32 wrap-around

        if time_major:
            Y = np.empty((T, D, batch, H), dtype=_F32)
            states = np.empty((self._states, D, batch, H), dtype=_F32)
            Y_view, states_view = Y, states
        else:
            Y = np.empty((batch, T, D, H), dtype=_F32)
            states = np.empty((self._states, batch, D, H), dtype=_F32)
            Y_view, states_view = Y.transpose(1, 2, 0, 3), states.transpose(0, 2, 1, 3)
        if not X.flags.c_contiguous:
            X = np.ascontiguousarray(X)

        if self._threads > 1 and batch >= _MIN_ROWS_PER_PART * self._threads:
            status = self._run_batch_split(X, lens, has_lens, h0, has_h0, c0, has_c0, Y_view, states_view, T, batch)
        else:
            status = self._ext.sequence(
                self._opcode, X, lens, has_lens, h0, has_h0, c0, has_c0, Y_view, states_view,
                self._packed.buffer, self._offsets, self._panels, self._panel_offsets, self._codes, self._fparams,
                self._scratch(T, batch),
                self._reverse_first, self._flag, time_major, self._clip,
                self._qpanels, self._qscales, self._qscale_offsets, self._qkind,
            )
        if status:  # sequence_lens outside [0, T]: the reference raises the error
            return self._reference(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        if self.op == "LSTM":
            return (Y, states[0], states[1])[: self.spec.num_outputs]
        return (Y, states[0])[: self.spec.num_outputs]

    def _run_batch_split(self, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T, batch) -> int:
        """Batch rows split across threads, each running the whole sequence on its rows (no barrier)."""
        parts = self._threads
        edges = [round(batch * k / parts) for k in range(parts + 1)]
        time_major = self._time_major

        def run_part(k):
            b0, b1 = edges[k], edges[k + 1]
            Xk = np.ascontiguousarray(X[:, b0:b1]) if time_major else X[b0:b1]
            return self._ext.sequence(
                self._opcode, Xk, lens[b0:b1] if has_lens else lens, has_lens,
                h0[:, b0:b1] if has_h0 else h0, has_h0, c0[:, b0:b1] if has_c0 else c0, has_c0,
                Y[:, :, b0:b1], states[:, :, b0:b1], self._packed.buffer, self._offsets, self._panels,
                self._panel_offsets, self._codes,
                self._fparams, self._scratch(T, b1 - b0), self._reverse_first, self._flag, time_major, self._clip,
                self._qpanels, self._qscales, self._qscale_offsets, self._qkind,
            )

        futures = [thread_pool(parts - 1).submit(run_part, k) for k in range(1, parts)]
        status = run_part(0)
        return max([status] + [f.result() for f in futures])

    def _initial_state(self, value, state_shape):
        """(array in [D, B, H] order, given?) or (None, False) when the reference must handle it."""
        if value is None:
            return _NO_STATE, False
        if type(value) is np.ndarray and value.dtype == _F32 and value.shape == state_shape:
            if value.strides[-1] != 4 and value.shape[-1] > 1:
                value = np.ascontiguousarray(value)
            return (value if self._time_major else value.transpose(1, 0, 2)), True
        return None, False

    def _same_weights(self, W, R, B, P) -> bool:
        return same_weights(self.op, self._constants, W, R, B, P)

    def _scratch(self, T: int, batch: int) -> np.ndarray:
        """This thread's scratch buffer, grown as needed (threads never share one)."""
        local = self._local
        if getattr(local, "key", None) == (T, batch):
            return local.scratch
        need = self._ext.scratch_floats(T, batch, self._gates, self.hidden_size)
        buf = getattr(local, "scratch", None)
        if buf is None or buf.size < need:
            buf = np.empty(need, dtype=_F32)
            local.scratch = buf
        local.key = (T, batch)
        return buf

    def _reference(self, *inputs):
        run = _REFERENCE[self.op]
        if self.precision != "float32":
            inputs = self._as_dequantized(inputs)
        args = inputs if self.op == "LSTM" else inputs[:6]
        prefix = f"{self.label}: " if self.label else ""
        try:
            outputs = run(*args, **self._reference_kwargs)
        except InvalidInputError as err:
            raise InvalidInputError(f"{prefix}{err}") from None
        except UnsupportedModelError as err:
            raise UnsupportedModelError(f"{prefix}{err}") from None
        return outputs[: self.spec.num_outputs]


    def _as_dequantized(self, inputs: tuple) -> tuple:
        """int8 kernel: the packed W/R replaced by the dequantized weights the kernel computes with."""
        X, W, R, *rest = inputs
        W0, R0 = self._constants[:2]
        if not (same_constant(W, W0) and same_constant(R, R0)):
            return inputs  # other weights than those quantized: run as given
        if self._dequantized is None:
            self._dequantized = self._lowp_weights(W0, R0)
        return (X, *self._dequantized, *rest)

    def _lowp_weights(self, W, R) -> tuple:
        """The float32 W/R this low-precision kernel computes with (its products' oracle)."""
        if self.precision == "bf16":
            from ..quantization import round_to_bf16
            return round_to_bf16(W), round_to_bf16(R)
        qW, sW, qR, sR = self._int8
        return tuple((q.astype(np.float32) * s[..., None]).astype(np.float32) for q, s in ((qW, sW), (qR, sR)))


__all__ = ["CythonKernel", "available", "cython_bf16_kernel", "cython_int8_kernel", "cython_kernel", "int8_scheme",
           "isa", "pack_bf16_panels", "pack_int8_panels", "pack_panels", "pack_vnni_panels", "unavailable_reason",
           "vnni_available", "why_not_fused"]
