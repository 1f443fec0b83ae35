"""The Cython kernels (``lstminfer._native._rnn_kernels*``): compiled ahead of time, no JIT, no GIL.

``build(spec, weights, precision, ctx)`` is the backend's builder (registered
in ``lstminfer.backends``); ``cython_kernel``, ``cython_int8_kernel`` and
``cython_bf16_kernel`` make one precision's kernel, or return None where
``why_not_fused`` has a reason (extension not built, W/R not constants,
dtypes other than float32, weight shapes that don't match). A kernel is a
``CythonKernel``: its C core (``KernelCore``, native/_rnn_core.pxi) runs the
common call with the GIL released; the rest goes to the recurrent shell
(``kernels.shell``), whose reference fallback computes it or raises.

Instruction set: the extension is built once per instruction set of its
architecture from one source (x86-64: portable baseline, AVX2+FMA, AVX-512;
aarch64: armv8-a NEON baseline, armv8.2-a+fp16+dotprod, and that plus i8mm); ``isa()`` picks the best one this
CPU has (``lstminfer._native._cpu.features()``) unless ``LSTMINFER_PORTABLE=1``,
which forces the baseline build. It is read when a kernel is built.

threads > 1: a batch of at least 4 rows per thread is split across threads;
smaller batches run on one (or split the hidden units, in C).

Low precision (weight-only: state, gates, activations and accumulation stay
float32); every such kernel answers for the original float W/R (by identity),
and its fallbacks run the reference on the weights it computes with:

* int8 (``cython_int8_kernel``): W/R per output row (``quantization.int8_per_row``).
  "weight-only": int8 panels widened inside the products, equal to the
  reference on the dequantized weights to float32 rounding. "vnni": dynamic
  int8 (native/li_vnni.h), activation rows quantized per row and call,
  ``vpdpbusd`` with int32 accumulation; its error bound is in
  tests/test_int8_kernels.py. "auto" (``int8_scheme``) takes VNNI wherever the
  CPU has it; ``LSTMINFER_INT8_SCHEME=weight-only|vnni`` overrides it.
* bf16 (``cython_bf16_kernel``): W/R rounded to bf16, widened exactly inside
  the products: equal to the float kernel on the rounded weights.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import replace
from typing import Any

import numpy as np

from ..reference import GATES
from .common import weights_problem
from .packing import (ALIGN_FLOATS, NUM_SEGMENTS, SEG_BIAS_RH, SEG_BIAS_X, SEG_PEEP, SEG_RT, SEG_WT,
                      PackedWeights, column_panels, concatenate_aligned, pack, pack_bf16_panels, pack_int8_panels,
                      pack_vnni_panels, row_stride)
from .shell import (FLOAT32, MIN_ROWS_PER_PART, KernelContext, Precision, RecurrentShell, RecurrentWeights,
                    activations_text, check_threads)

OPS = ("LSTM", "GRU", "RNN")
PORTABLE_ENV = "LSTMINFER_PORTABLE"
_ISA_MODULES = {"avx512": "lstminfer._native._rnn_kernels_avx512", "avx2": "lstminfer._native._rnn_kernels_avx2",
                "armv86": "lstminfer._native._rnn_kernels_armv86", "armv82": "lstminfer._native._rnn_kernels_armv82",
                "portable": "lstminfer._native._rnn_kernels"}
# The CPU features each build needs, best build first; a build of another architecture is never
# asked for, as _cpu.features() names only this architecture's features.
_ISA_NEEDS = {"avx512": ("avx512f", "avx2", "fma"), "avx2": ("avx2", "fma"),
              "armv86": ("asimd", "fp16", "dotprod", "i8mm"), "armv82": ("asimd", "fp16", "dotprod"), "portable": ()}
# The dynamic int8 products (native/li_vnni.h): AVX-512 VNNI on x86-64, sdot (dotprod) on aarch64,
# smmla in the armv86 build (its isa() choice already needs i8mm).
_VNNI = ("avx512f", "avx512bw", "avx512vl", "avx512vnni")
_INT8_DOT_NEEDS = {"avx512": _VNNI, "avx2": _VNNI, "armv82": ("dotprod",), "armv86": ("dotprod", "i8mm")}

_F32 = np.dtype(np.float32)
_NO_PANELS = np.zeros(ALIGN_FLOATS, dtype=np.float32)  # pbuf of an int8 kernel (never read)
_NO_PANELS.flags.writeable = False

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
    """The instruction-set build kernels use now: "avx512", "avx2", "armv86", "armv82" or "portable"."""
    if os.environ.get(PORTABLE_ENV, "") not in ("", "0"):
        return "portable"
    try:
        from .._native import _cpu
        have = _cpu.features()
    except ImportError:
        return "portable"
    return next(name for name, needs in _ISA_NEEDS.items() if all(have.get(f) for f in needs))  # portable needs none


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
    check_threads(threads)
    return CythonKernel(spec, W, R, B, P if spec.op == "LSTM" else None, threads=threads, label=label)


def build(spec: Any, weights: RecurrentWeights, precision: Precision = FLOAT32, ctx: KernelContext = KernelContext()):
    """The backend's builder: (kernel, "") or (None, why not) for this node in ``precision``."""
    W, R, B, P = weights.W, weights.R, weights.B, weights.P
    options = dict(threads=ctx.threads, label=ctx.label)
    if precision.name == "float32":
        kernel = cython_kernel(spec, W, R, B, P, **options)
    elif precision.name == "int8":
        kernel = None if np.ndim(W) != 3 or np.ndim(R) != 3 else cython_int8_kernel(
            spec, W, R, B, P, weights.int8, scheme=precision.int8_scheme, **options)
    elif precision.name == "bf16":
        kernel = cython_bf16_kernel(spec, W, R, B, P, **options)
    else:
        return None, f"no {precision.name} Cython kernel"
    return (kernel, "") if kernel is not None else (None, why_not_fused(spec, W, R, B, P) or "")


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
    """Can int8 kernels use the dynamic int8 products here (AVX-512 VNNI, or sdot / i8mm smmla on aarch64; and now:
    not LSTMINFER_PORTABLE)?"""
    build = isa()
    if _IMPORT_ERROR or build == "portable":
        return False
    try:
        from .._native import _cpu
        have = _cpu.features()
    except ImportError:
        return False
    return (all(have.get(f) for f in _INT8_DOT_NEEDS[build])
            and bool(getattr(_module(build), "VNNI_COMPILED", False)))


def int8_scheme(scheme: str, input_size: int, hidden_size: int) -> str:
    """"vnni" or "weight-only" for an int8 kernel asked for ``scheme``.

    "auto": dynamic VNNI wherever the CPU has it (faster than weight-only at every
    shape benchmarked), else weight-only; ``LSTMINFER_INT8_SCHEME`` overrides it.
    """
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8 scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    if scheme == "auto":
        scheme = os.environ.get(INT8_SCHEME_ENV, "") or "auto"
        if scheme not in INT8_SCHEMES:
            raise ValueError(f"{INT8_SCHEME_ENV} must be one of {INT8_SCHEMES[1:]}, got {scheme!r}")
    fits = max(input_size, hidden_size) <= VNNI_MAX_K
    if scheme == "vnni" and not (vnni_available() and fits):
        raise ValueError("int8 scheme 'vnni' needs AVX-512 VNNI or Arm dotprod (lstminfer._native._cpu), "
                         "LSTMINFER_PORTABLE unset "
                         f"and input/hidden size <= {VNNI_MAX_K}")
    if scheme == "auto":
        return "vnni" if vnni_available() and fits else "weight-only"
    return scheme


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
    check_threads(threads)
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
    check_threads(threads)
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


class CythonKernel(_KernelCore, RecurrentShell):
    """``kernel(X, W, R, B, sequence_lens, initial_h[, initial_c, P]) -> (Y, Y_h[, Y_c])``.

    Calls go to ``KernelCore.__call__`` (C): the packed constants (by identity),
    float32 arrays of the exact shapes and int32 lens run there with no Python
    in between; anything else comes to the shell's ``_slow``.
    """

    NO_LENS = np.zeros(1, dtype=np.int32)
    NO_STATE = np.zeros((1, 1, 1), dtype=np.float32)

    def __init__(self, spec: Any, W: np.ndarray, R: np.ndarray, B: np.ndarray | None, P: np.ndarray | None,
                 *, threads: int = 1, label: str = "", int8: tuple | None = None, precision: str = "float32"):
        self.isa = isa()
        self._ext = _module(self.isa)
        self._opcode = self._ext.OPS[spec.op]
        lbr = bool(spec.linear_before_reset) if spec.op == "GRU" else False
        if (int8 is not None) != (precision in ("int8", "int8-vnni")) or precision not in self._ext.QKINDS:
            raise ValueError(f"CythonKernel: precision {precision!r} with int8 weights {int8 is not None}")
        self.precision = precision
        self._packed = pack(spec.op, W, R, B, P, linear_before_reset=lbr, blocks=1)
        if precision != "float32":
            self._packed = _small_segments_only(self._packed)
        self._init_shell(spec, (W, R, B, P), self._packed, label=label, batch_parts=threads, lowp=precision,
                         int8=int8)
        self._gates = GATES[self.op]
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
        acts = activations_text(spec)
        self.describe = (
            f"cython {self.op.lower()}_seq {self.isa}{'' if precision == 'float32' else ' ' + precision} "
            f"(H={self.hidden_size}, {spec.direction}, {acts}, "
            + ("1 thread)" if threads == 1 else
               f"{threads} threads: batch split at >= {MIN_ROWS_PER_PART * threads} rows)")
        )
        if _portable is not None:
            self._bind_core(
                self._ext.RUN_SEQUENCE, self._opcode, W, R, B, P, self.op == "LSTM",
                self._packed.buffer, self._offsets, self._panels, self._panel_offsets, self._codes, self._fparams,
                self.hidden_size, self.input_size, self.num_directions, self._gates, spec.num_outputs,
                self._reverse_first, self._flag, self._time_major, self._clip,
                MIN_ROWS_PER_PART * threads if threads > 1 else 0,
                self._qpanels, self._qscales, self._qscale_offsets, self._qkind, threads, self._ext.PANEL_WIDTH,
            )
            if self.splits_units:
                self.describe = self.describe[:-1] + ", hidden units split below)"

    def _run_rows(self, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states, T, rows, part) -> int:
        return self._ext.sequence(
            self._opcode, X, lens, has_lens, h0, has_h0, c0, has_c0, Y, states,
            self._packed.buffer, self._offsets, self._panels, self._panel_offsets, self._codes, self._fparams,
            self._scratch(T, rows), self._reverse_first, self._flag, self._time_major, self._clip,
            self._qpanels, self._qscales, self._qscale_offsets, self._qkind,
        )

    def _scratch_floats(self, T: int, batch: int) -> int:
        return self._ext.scratch_floats(T, batch, self._gates, self.hidden_size)


__all__ = ["CythonKernel", "available", "build", "cython_bf16_kernel", "cython_int8_kernel", "cython_kernel",
           "int8_scheme", "isa", "pack_bf16_panels", "pack_int8_panels", "pack_panels", "pack_vnni_panels",
           "unavailable_reason", "vnni_available", "why_not_fused"]
