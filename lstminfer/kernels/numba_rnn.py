"""Numba kernels for whole LSTM, GRU and RNN sequences, gates fused.

One shell, ``_sequence``, runs every op; the op supplies only its cell
(``_lstm_cell``, ``_gru_cell``, ``_rnn_cell`` with their ``*_constants``, in
``_CELLS``), and ``driver(op)`` compiles a copy of the shell bound to it, as
``run_sequence`` does with ``lstm_task``/``gru_task``/``rnn_task`` in
``native/_rnn_core.pxi`` and ``reference.rnn`` with its step bodies. A
stream's single step has its own small shell, ``_step`` (``step(op)``), over
each op's row (``_ROWS``).

One call runs a whole node: for each direction, the input projection
(``xp = X . W^T + bias``) as one matrix product per chunk of steps (of about
``_CHUNK_ROWS`` rows: big enough for the GEMM, small enough to stay in cache
until its steps read it), and the time loop
with, per step, one product ``gates = h . R^T`` and one fused pass over the
hidden units (gate activations, cell update, peepholes, clip, input_forget,
sequence_lens masking, linear_before_reset). No Python per step and no
allocation: the state and gate buffers are carved out of ``scratch``.

Hidden units are split into ``nblocks`` blocks (``packing.unit_blocks``).
One thread may run them all (``nparts`` = 1), or ``nparts`` threads run the
same driver at once, each on its home block (its rows of W and R stay in its
core's cache), meeting after each step (``_claim``/``_phase_end``). The
hidden state is double-buffered (``hbuf[cur]`` -> ``hbuf[1 - cur]``) because
every block reads all of h_prev while the others write h_next. (Splitting a
batch across threads needs no barrier: see ``fused.FusedKernel``.)

Default activations take a fully fused, vectorized loop; any other
combination runs the same steps as a few vectorized passes per row.

Arguments shared by the drivers (types in ``driver_signature``):
  X [T, B, I] (time_major) or [B, T, I]; lens int32 [B] (used if has_lens);
  h0 (c0) [D, B, H] (used if has_h0/has_c0); Y [T, D, B, H]; h_out, c_out
  [D, B, H] (the final states; c_out unused but for LSTM), all C-contiguous
  (h_out may be h0's own memory: h0 is read before it is written); wbuf = the
  packed buffer; table (int64) = unit block edges [nblocks + 1], then segment
  offsets [D, PANEL_SEGMENTS] (``packing.with_panels``), then activation codes
  [D, acts per direction], then (LSTM) whether each direction has nonzero
  peepholes [D] (``peephole_flags``: decided at load); fparams
  (float32) = alpha, beta of each activation; scratch of
  ``scratch_size(T, B, G, H, time_major)`` floats; part, nparts: this
  thread and how many run the node (``_claim``); sync: int64
  [``sync_size(nblocks)``] zeroed, shared by the parts (unused for one).
Return 0, or 1 when sequence_lens holds a value outside [0, T] (nothing
written then: the caller reports the error).
"""
from __future__ import annotations

import hashlib
import os
import platform
import types as pytypes

import numba

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_config import jit, jit_entry, jit_inline
from .numba_math import (
    ONE, SIGMOID, TANH, ZERO, F32, activate_inplace, add_bias_rows, fast_sigmoid, fast_tanh, matvec2_packed,
    matvec_packed,
    product,
)
from ..reference import DEFAULT_ACTIVATIONS, GATES
from .packing import (PANEL_SEGMENTS, PANEL_WIDTH, SEG_BIAS_RH, SEG_BIAS_X, SEG_PEEP, SEG_R, SEG_RP, SEG_RT, SEG_W,
                      SEG_WP, SEG_WT)

ACTS_PER_DIRECTION = {op: len(acts) for op, acts in DEFAULT_ACTIVATIONS.items()}
_ALIGN = 16


# ------------------------------------------------------------ threads --
# Hidden-unit split: ``nparts`` threads run the same driver. The work between
# two sync points (a "phase": one step, say) is one item per unit block; each
# thread claims its home block first (its rows of W and R stay in its core's
# cache), then takes any block still unclaimed: at once if the block's owner
# did not show up in the previous phase, else after a grace period, so a
# descheduled partner (a busy machine) costs one grace period, not a stall.
# A phase ends when all its blocks are done (a counter bumped atomically: far
# cheaper than a ``prange`` launch per step). ``sync``: int64, zeroed before the parts start: [0] the blocks done;
# [_SLOT * (1 + k)] the epoch in which block k was last claimed; [_SLOT * (1 +
# nblocks + p)] the last epoch part p started (own cache lines). Epochs count
# phases from 1.

_SLOT = 16  # int64 per cache line (and then some)
_GRACE_SPINS = 8000  # ~25 ns each: 0.2 ms, past the short preemptions a partner suffers on a shared machine


def sync_size(nblocks):
    """int64 slots of ``sync`` for ``nblocks`` blocks run by as many threads."""
    return _SLOT * (1 + 2 * nblocks)


def _atomic_pointer(context, builder, signature, args):
    data = context.make_array(signature.args[0])(context, builder, args[0]).data
    return builder.gep(data, [args[1]])


@intrinsic
def _atomic_add(typingctx, sync, index, value):
    """``sync[index] += value``, atomically (sequentially consistent: a full fence)."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", _atomic_pointer(context, builder, signature, args), args[2], "seq_cst")

    return types.int64(sync, types.intp, types.int64), codegen


@intrinsic
def _atomic_read(typingctx, sync, index):
    """``sync[index]`` with acquire ordering: a fresh read each time, never hoisted out of a loop."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_atomic_pointer(context, builder, signature, args), "acquire", 8)

    return types.int64(sync, types.intp), codegen


@intrinsic
def _atomic_write(typingctx, sync, index, value):
    """``sync[index] = value`` with release ordering."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _atomic_pointer(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()

    return types.void(sync, types.intp, types.int64), codegen


@intrinsic
def _compare_and_swap(typingctx, sync, index, expected, new):
    """``sync[index] = new`` if it holds ``expected`` (atomically); whether it did."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_atomic_pointer(context, builder, signature, args), args[2], args[3],
                               "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(sync, types.intp, types.int64, types.int64), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _spin_pause(typingctx):
    """The x86 ``pause`` hint inside a spin loop (nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.void(), codegen


@jit_inline
def _claim(sync, epoch, part, nblocks, nparts, finished):
    """The next block this thread runs in this phase, or -1 when none is left.

    ``finished``: the block it just ran (-1 at the start of the phase). One
    thread: simply every block in turn.
    """
    if nparts == 1:
        return finished + 1 if finished + 1 < nblocks else -1
    if finished >= 0:
        _atomic_add(sync, 0, 1)
    home = part * nblocks // nparts
    if finished < 0:
        _atomic_write(sync, _SLOT * (1 + nblocks + part), epoch)
        if _compare_and_swap(sync, _SLOT * (home + 1), epoch - 1, epoch):
            return home
    for k in range(nblocks):
        if k == home:
            continue
        slot = _SLOT * (k + 1)
        owner = k * nparts // nblocks
        grace = _GRACE_SPINS if _atomic_read(sync, _SLOT * (1 + nblocks + owner)) >= epoch - 1 else 0
        spins = 0
        while _atomic_read(sync, slot) < epoch:  # not claimed yet in this phase
            if spins >= grace:
                if _compare_and_swap(sync, slot, epoch - 1, epoch):
                    return k
                break
            spins += 1
            _spin_pause()
    return -1


@jit_inline
def _phase_end(sync, epoch, nblocks, nparts):
    """Wait until every block of this phase is done; returns the next epoch."""
    if nparts > 1:
        target = epoch * nblocks
        while _atomic_read(sync, 0) < target:
            _spin_pause()
    return epoch + 1


# ------------------------------------------------------------ buffers --

def _padded(n):
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _row_stride(n):  # same as packing.row_stride
    stride = (n + _ALIGN - 1) // _ALIGN * _ALIGN
    return stride + _ALIGN if stride % 128 == 0 else stride


# Time-major inputs are projected a chunk of steps at a time, about this many rows (steps x batch) per
# chunk: enough rows for the GEMM tiles, and still in cache when its steps read them.
_CHUNK_ROWS = 128


def _chunk_steps(T, B, time_major):
    """Steps projected at once (batch-major rows of one step are not contiguous: all of them)."""
    return min(T, max(1, _CHUNK_ROWS // max(B, 1))) if time_major else T


def _scratch_size(T, B, G, H, time_major):
    # xp [TC*B, GHs] (TC = _chunk_steps), gates [B, GHs] (GHs = row stride of G*H), hbuf [2, B, H],
    # c [B, H], rh [B, H]
    GHs = _row_stride(G * H)
    TC = _chunk_steps(T, B, time_major)
    return _padded(TC * B * GHs) + _padded(B * GHs) + _padded(2 * B * H) + 2 * _padded(B * H)


scratch_size = _scratch_size  # plain Python for the callers (the jitted copies are below)
_padded_nb = jit(_padded)
_row_stride_nb = jit(_row_stride)
_chunk_steps_nb = jit(_chunk_steps)


@jit
def _carve(scratch, TC, B, G, H):
    o = 0
    GHs = _row_stride_nb(G * H)
    xp = _matrix(scratch, o, TC * B, GHs)
    o += _padded_nb(TC * B * GHs)
    gates = _matrix(scratch, o, B, GHs)
    o += _padded_nb(B * GHs)
    hbuf = _cube(scratch, o, 2, B, H)
    o += _padded_nb(2 * B * H)
    c = _matrix(scratch, o, B, H)
    o += _padded_nb(B * H)
    rh = _matrix(scratch, o, B, H)
    return xp, gates, hbuf, c, rh


# Views of the buffers as matrices: numba.carray over the address, not ``reshape``, which calls
# a C helper (numba_attempt_nocopy_reshape) each time.
@intrinsic
def _f32_pointer(typingctx, address):
    """The integer ``address`` as a float32 pointer (for ``numba.carray``)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(types.float32)(types.intp), codegen


@jit
def _matrix(buf, start, rows, cols):
    """``buf``'s floats from ``start`` (C-contiguous buffer) as a [rows, cols] array."""
    return numba.carray(_f32_pointer(buf.ctypes.data + 4 * start), (rows, cols))


@jit
def _cube(buf, start, n0, n1, n2):
    return numba.carray(_f32_pointer(buf.ctypes.data + 4 * start), (n0, n1, n2))


@jit_inline
def _segment_matrix(wbuf, table, nblocks, d, which, rows, cols):
    return _matrix(wbuf, table[nblocks + 1 + d * PANEL_SEGMENTS + which], rows, cols)


@jit_inline
def _segment(wbuf, table, nblocks, d, which, n):
    start = table[nblocks + 1 + d * PANEL_SEGMENTS + which]
    return wbuf[start: start + n]


@jit
def _clamp(x, clip):
    return min(max(x, -clip), clip)


@jit
def _check_lens(lens, has_lens, T):
    if has_lens:
        for b in range(lens.shape[0]):
            if lens[b] < 0 or lens[b] > T:
                return 1
    return 0


# Row slices indexed from 0 (see below): indexing the 3-D arrays in the loop makes LLVM gather and scatter.
@jit
def _init_state(dst, src, has_src, d, u0, u1):
    for b in range(dst.shape[0]):
        row = dst[b, u0:u1]
        if has_src:
            given = src[d, b, u0:u1]
            for j in range(u1 - u0):
                row[j] = given[j]
        else:
            for j in range(u1 - u0):
                row[j] = ZERO


@jit
def _store_state(dst, d, src, u0, u1):
    for b in range(src.shape[0]):
        row = dst[d, b, u0:u1]
        given = src[b, u0:u1]
        for j in range(u1 - u0):
            row[j] = given[j]


@jit_inline
def _panel_columns(width):  # packing.panel_columns
    return (width + PANEL_WIDTH - 1) // PANEL_WIDTH * PANEL_WIDTH


@jit_inline
def _block_panel_columns(bs, G):
    """Columns of the panels of a unit block of ``bs`` units (``packing.with_panels``; GRU: z, r apart from h)."""
    return _panel_columns(2 * bs) + _panel_columns(bs) if G == 3 else _panel_columns(G * bs)


@jit
def _all_panel_columns(table, nblocks, G):
    """Columns of the panels of unit blocks 0 .. nblocks-1."""
    total = 0
    for j in range(nblocks):
        total += _block_panel_columns(table[j + 1] - table[j], G)
    return total


@jit_inline
def _range_panels(panels, K, table, k, split, G):
    """Unit block k's panels (``packing.panel_ranges``) of a K-row matrix: the columns before
    ``split`` (GRU: z, r; the others: all), or from it (GRU: h) when ``split`` is False."""
    before = _all_panel_columns(table, k, G)
    bs = table[k + 1] - table[k]
    if G != 3:
        width = G * bs
    elif split:
        width = 2 * bs
    else:
        before += _panel_columns(2 * bs)
        width = bs
    return panels[K * before: K * (before + _panel_columns(width))]


@jit_inline
def _product(A, Bm, BmT, panels, n0, n1, out, c0, backward):
    """``product``, with the rows the register tiles leave (all of them below 4) over ``panels``
    (columns [n0, n1) as panels, from the first)."""
    M = A.shape[0]
    full = M - M % 4
    if full:
        product(A[:full], Bm, BmT, n0, n1, out[:full], c0, backward)
    for m in range(full, M):
        matvec_packed(A[m], panels, n1 - n0, out[m, c0:], backward)


@jit_inline
def _block_product(A, Bm, BmT, panels, table, k, G, first, last, out, backward):
    """``_product`` over unit block k's gate columns [G*u0 + first*bs, G*u0 + last*bs) (gates first..last-1),
    a range that covers whole ``packing.panel_ranges``."""
    u0 = table[k]
    bs = table[k + 1] - u0
    K = A.shape[1]
    c0 = G * u0 + first * bs
    if G == 3 and first < 2:
        split = G * u0 + 2 * bs
        _product(A, Bm, BmT, _range_panels(panels, K, table, k, True, G), c0, split, out, c0, backward)
        if last == 3:
            _product(A, Bm, BmT, _range_panels(panels, K, table, k, False, G), split, G * u0 + 3 * bs, out, split,
                     backward)
    else:
        _product(A, Bm, BmT, _range_panels(panels, K, table, k, G == 3 and first < 2, G), c0, G * u0 + last * bs,
                 out, c0, backward)


@jit
def _project(X2, wW, wWT, wWP, bias_x, xp, table, nblocks, k, G):
    """Rows of ``xp`` = rows of X2 . W^T + bias, this unit block's columns."""
    u0 = table[k]
    u1 = table[k + 1]
    out = xp[: X2.shape[0]]
    _block_product(X2, wW, wWT, wWP, table, k, G, 0, G, out, False)
    add_bias_rows(out, bias_x, G * u0, G * u1)


@jit
def _fused_step(T, B):
    """Whether a step (LSTM, RNN) computes x . W^T + h . R^T + bias in one panel pass per row
    (``_fused_block_product``):
    one step (a stream), rows all on the panel path (``_product``: below 4)."""
    return T == 1 and B < 4


@jit_inline
def _fused_block_product(X2, hp, wWP, wRP, bias_x, xp, gates, table, k, G):
    """Unit block k's gates of a single step (LSTM, RNN): x . W^T + h . R^T + bias into ``gates``, zeros into
    ``xp`` (what the cells add to them). Against a projection then a product: one store, no reload, no
    bias pass."""
    u0 = table[k]
    c0 = G * u0
    c1 = G * table[k + 1]
    I = X2.shape[1]
    H = hp.shape[1]
    px = _range_panels(wWP, I, table, k, True, G)
    ph = _range_panels(wRP, H, table, k, True, G)
    bias = bias_x[c0:]
    for b in range(hp.shape[0]):
        matvec2_packed(X2[b], px, hp[b], ph, bias, c1 - c0, gates[b, c0:])
        zeros = xp[b, c0:c1]
        for j in range(c1 - c0):
            zeros[j] = ZERO


@jit
def _chunk_rows(X2, step, TC, T, B, reverse, time_major):
    """(first time index, rows of X2) of the chunk of steps starting at ``step``."""
    if not time_major:
        return 0, X2
    n = min(TC, T - step)
    first = T - step - n if reverse else step
    return first, X2[first * B: (first + n) * B]


@jit_inline
def _finish_row(hn_row, hp_row, active, Y, t, d, b, u0, u1):
    """Y for this step; an inactive row keeps its state and writes zeros."""
    y = Y[t, d, b, u0:u1]
    h = hn_row[u0:u1]
    if active:
        for j in range(u1 - u0):
            y[j] = h[j]
    else:
        hp = hp_row[u0:u1]
        for j in range(u1 - u0):
            h[j] = hp[j]
            y[j] = ZERO


# Element-wise loops index slices from 0: with ``row[offset + j]`` Numba keeps
# a negative-index check per access and LLVM no longer vectorizes the loop.

# ------------------------------------------------------------- cells --
# Each op supplies what the shell (``_sequence``) leaves to it:
#   cell_constants(wbuf, table, fparams, nblocks, D, d, H): its settings of direction d
#     (activation codes and parameters, peepholes, GRU's Rbh), a tuple;
#   cell(phase, consts, xp, r0, rb, gates, hp, hn, c, rh, wR, wRT, wRP, table, k, t, lens, has_lens, Y, d,
#        clip, flag, fused): unit block k of step t: the recurrent product (unless ``fused``: ``gates``
#     already holds the whole pre-activation), the gates, and h (and c) into ``hn`` (``c``) and Y.
#     ``xp`` row r0 + b * rb is row b's input projection; ``rh`` is GRU's r * h_prev; ``flag`` is
#     LSTM's input_forget or GRU's linear_before_reset.
# and, in ``_CELLS``, whether it keeps a cell state, fuses a single step's two products
# (``_fused_block_product``), and runs a second phase per step (GRU: all of r * h_prev first).


@jit_inline
def _codes_at(nblocks, D):
    """Where ``table`` holds the activation codes (after the block edges and segment offsets)."""
    return nblocks + 1 + D * PANEL_SEGMENTS


# --------------------------------------------------------------- LSTM --

@jit
def _lstm_cells_default(xr, gr, h, c, pi, pf, po, bs, clip, ff):
    """Sigmoid/Tanh/Tanh: every gate, the cell and h in one vectorized loop.

    xr/gr: this block's input projection / recurrent gate rows (i, f, c, o
    blocks of ``bs``); h, c, pi, pf, po: this block's units.
    """
    xi, xf, xg, xo = xr[:bs], xr[bs: 2 * bs], xr[2 * bs: 3 * bs], xr[3 * bs: 4 * bs]
    gi, gf, gg, go = gr[:bs], gr[bs: 2 * bs], gr[2 * bs: 3 * bs], gr[3 * bs: 4 * bs]
    for j in range(bs):
        cp = c[j]
        it = fast_sigmoid(_clamp(xi[j] + gi[j] + pi[j] * cp, clip))
        ft = fast_sigmoid(_clamp(xf[j] + gf[j] + pf[j] * cp, clip))
        ft = ff * (ONE - it) + (ONE - ff) * ft  # ff = 1: input_forget couples f to i
        gt = fast_tanh(_clamp(xg[j] + gg[j], clip))
        ct = ft * cp + it * gt
        ot = fast_sigmoid(_clamp(xo[j] + go[j] + po[j] * ct, clip))  # peephole on the new C
        c[j] = ct
        h[j] = ot * fast_tanh(ct)


@jit
def _lstm_cells_no_peepholes(xr, gr, h, c, bs, clip, ff):
    """``_lstm_cells_default`` without peepholes: o no longer waits for the new C (shorter chain)."""
    xi, xf, xg, xo = xr[:bs], xr[bs: 2 * bs], xr[2 * bs: 3 * bs], xr[3 * bs: 4 * bs]
    gi, gf, gg, go = gr[:bs], gr[bs: 2 * bs], gr[2 * bs: 3 * bs], gr[3 * bs: 4 * bs]
    for j in range(bs):
        it = fast_sigmoid(_clamp(xi[j] + gi[j], clip))
        ft = fast_sigmoid(_clamp(xf[j] + gf[j], clip))
        ft = ff * (ONE - it) + (ONE - ff) * ft
        gt = fast_tanh(_clamp(xg[j] + gg[j], clip))
        ot = fast_sigmoid(_clamp(xo[j] + go[j], clip))
        ct = ft * c[j] + it * gt
        c[j] = ct
        h[j] = ot * fast_tanh(ct)


@jit
def _lstm_cells_generic(xr, gr, h, c, pi, pf, po, bs, clip, input_forget,
                        cf, af, bf, cg, ag, bg, ch, ah, bh):
    """Any activations: the same equations as vectorized passes over the row."""
    xi, xf, xg, xo = xr[:bs], xr[bs: 2 * bs], xr[2 * bs: 3 * bs], xr[3 * bs: 4 * bs]
    gi, gf, gg, go = gr[:bs], gr[bs: 2 * bs], gr[2 * bs: 3 * bs], gr[3 * bs: 4 * bs]
    for j in range(bs):
        cp = c[j]
        gi[j] = _clamp(xi[j] + gi[j] + pi[j] * cp, clip)
        gf[j] = _clamp(xf[j] + gf[j] + pf[j] * cp, clip)
        gg[j] = _clamp(xg[j] + gg[j], clip)
    activate_inplace(gi, cf, af, bf)
    if not input_forget:
        activate_inplace(gf, cf, af, bf)
    activate_inplace(gg, cg, ag, bg)
    for j in range(bs):
        it = gi[j]
        ft = ONE - it if input_forget else gf[j]
        ct = ft * c[j] + it * gg[j]
        c[j] = ct
        go[j] = _clamp(xo[j] + go[j] + po[j] * ct, clip)
        h[j] = ct
    activate_inplace(go, cf, af, bf)
    activate_inplace(h, ch, ah, bh)
    for j in range(bs):
        h[j] *= go[j]


@jit_inline
def _lstm_constants(wbuf, table, fparams, nblocks, D, d, H):
    """(peepholes [3, H] in i, f, o order, whether they are nonzero (decided at load), whether the activations are
    the defaults, then the codes and alpha, beta of f, g, h)."""
    codes_at = _codes_at(nblocks, D)
    peep = _segment_matrix(wbuf, table, nblocks, d, SEG_PEEP, 3, H)
    peepholes = table[codes_at + 3 * D + d] != 0
    a = codes_at + 3 * d
    cf, cg, ch = table[a], table[a + 1], table[a + 2]
    p = 6 * d
    af, bf, ag, bg, ah, bh = fparams[p], fparams[p + 1], fparams[p + 2], fparams[p + 3], fparams[p + 4], fparams[p + 5]
    default = cf == SIGMOID and cg == TANH and ch == TANH
    return peep, peepholes, default, cf, af, bf, cg, ag, bg, ch, ah, bh


@jit
def _lstm_cell(phase, consts, xp, r0, rb, gates, hp, hn, c, rh, wR, wRT, wRP, table, k, t, lens, has_lens, Y, d,
               clip, input_forget, fused):
    peep, peepholes, default, cf, af, bf, cg, ag, bg, ch, ah, bh = consts
    u0 = table[k]
    u1 = table[k + 1]
    bs = u1 - u0
    cb = 4 * u0
    ce = 4 * u1
    if not fused:
        _block_product(hp, wR, wRT, wRP, table, k, 4, 0, 4, gates, t % 2 == 1)
    ff = ONE if input_forget else ZERO
    pi, pf, po = peep[0, u0:u1], peep[1, u0:u1], peep[2, u0:u1]
    for b in range(hp.shape[0]):
        active = (not has_lens) or t < lens[b]
        if active:
            xr = xp[r0 + b * rb, cb:ce]
            gr = gates[b, cb:ce]
            h = hn[b, u0:u1]
            cr = c[b, u0:u1]
            if default and not peepholes:
                _lstm_cells_no_peepholes(xr, gr, h, cr, bs, clip, ff)
            elif default:
                _lstm_cells_default(xr, gr, h, cr, pi, pf, po, bs, clip, ff)
            else:
                _lstm_cells_generic(xr, gr, h, cr, pi, pf, po, bs, clip,
                                    input_forget, cf, af, bf, cg, ag, bg, ch, ah, bh)
        _finish_row(hn[b], hp[b], active, Y, t, d, b, u0, u1)


# ---------------------------------------------------------------- GRU --

@jit
def _gru_gates_zr(xr, gr, hp, rh, bs, clip, default, cf, af, bf):
    """z (kept in gr) and r * h_prev (into rh) for linear_before_reset = 0."""
    xz, xr_ = xr[:bs], xr[bs: 2 * bs]
    gz, gr_ = gr[:bs], gr[bs: 2 * bs]
    if default:
        for j in range(bs):
            gz[j] = fast_sigmoid(_clamp(xz[j] + gz[j], clip))
            rh[j] = fast_sigmoid(_clamp(xr_[j] + gr_[j], clip)) * hp[j]
    else:
        zr = gr[: 2 * bs]
        xzr = xr[: 2 * bs]
        for j in range(2 * bs):
            zr[j] = _clamp(xzr[j] + zr[j], clip)
        activate_inplace(zr, cf, af, bf)
        for j in range(bs):
            rh[j] = gr_[j] * hp[j]


@jit
def _gru_output(xh, gz, gh, hp, h, bs, clip, default, cg, ag, bg):
    """h~ = g(xh + gh) and H = (1 - z) h~ + z h_prev; gh holds the recurrent part, gz the z gate."""
    if default:
        for j in range(bs):
            ht = fast_tanh(_clamp(xh[j] + gh[j], clip))
            zt = gz[j]
            h[j] = (ONE - zt) * ht + zt * hp[j]
    else:
        for j in range(bs):
            gh[j] = _clamp(xh[j] + gh[j], clip)
        activate_inplace(gh, cg, ag, bg)
        for j in range(bs):
            zt = gz[j]
            h[j] = (ONE - zt) * gh[j] + zt * hp[j]


@jit
def _gru_lbr_cells(xr, gr, hp, h, rbh, bs, clip, default, cf, af, bf, cg, ag, bg):
    """linear_before_reset: h~ = g(xh + r * (h_prev . Rh^T + Rbh)); the whole step."""
    xz, xr_, xh = xr[:bs], xr[bs: 2 * bs], xr[2 * bs: 3 * bs]
    gz, gr_, gh = gr[:bs], gr[bs: 2 * bs], gr[2 * bs: 3 * bs]
    if default:
        for j in range(bs):
            zt = fast_sigmoid(_clamp(xz[j] + gz[j], clip))
            rt = fast_sigmoid(_clamp(xr_[j] + gr_[j], clip))
            ht = fast_tanh(_clamp(xh[j] + rt * (gh[j] + rbh[j]), clip))
            h[j] = (ONE - zt) * ht + zt * hp[j]
    else:
        zr = gr[: 2 * bs]
        xzr = xr[: 2 * bs]
        for j in range(2 * bs):
            zr[j] = _clamp(xzr[j] + zr[j], clip)
        activate_inplace(zr, cf, af, bf)
        for j in range(bs):  # fold r into the recurrent part, then the common output
            gh[j] = gr_[j] * (gh[j] + rbh[j])
        _gru_output(xh, gz, gh, hp, h, bs, clip, False, cg, ag, bg)


@jit_inline
def _gru_constants(wbuf, table, fparams, nblocks, D, d, H):
    """(Rbh [H] (linear_before_reset's own bias), whether the activations are the defaults, then the codes and
    alpha, beta of f, g)."""
    bias_rh = _segment(wbuf, table, nblocks, d, SEG_BIAS_RH, H)
    a = _codes_at(nblocks, D) + 2 * d
    cf, cg = table[a], table[a + 1]
    p = 4 * d
    af, bf, ag, bg = fparams[p], fparams[p + 1], fparams[p + 2], fparams[p + 3]
    return bias_rh, cf == SIGMOID and cg == TANH, cf, af, bf, cg, ag, bg


@jit
def _gru_cell(phase, consts, xp, r0, rb, gates, hp, hn, c, rh, wR, wRT, wRP, table, k, t, lens, has_lens, Y, d,
              clip, lbr, fused):
    """Phase 0 with linear_before_reset: the whole step. Without: z and r * h_prev only, then phase 1 (which
    needs all of r * h_prev) the candidate and h."""
    bias_rh, default, cf, af, bf, cg, ag, bg = consts
    u0 = table[k]
    u1 = table[k + 1]
    bs = u1 - u0
    cb = 3 * u0
    ce = 3 * u1
    if phase == 0:
        _block_product(hp, wR, wRT, wRP, table, k, 3, 0, 3 if lbr else 2, gates, t % 2 == 1)
        for b in range(hp.shape[0]):
            active = (not has_lens) or t < lens[b]
            if active:
                xr = xp[r0 + b * rb, cb:ce]
                gr = gates[b, cb:ce]
                if lbr:
                    _gru_lbr_cells(xr, gr, hp[b, u0:u1], hn[b, u0:u1], bias_rh[u0:u1], bs, clip, default,
                                   cf, af, bf, cg, ag, bg)
                else:
                    _gru_gates_zr(xr, gr, hp[b, u0:u1], rh[b, u0:u1], bs, clip, default, cf, af, bf)
            else:
                rhb = rh[b, u0:u1]
                for j in range(bs):
                    rhb[j] = ZERO
            if lbr:
                _finish_row(hn[b], hp[b], active, Y, t, d, b, u0, u1)
    else:
        hb = cb + 2 * bs
        _block_product(rh, wR, wRT, wRP, table, k, 3, 2, 3, gates, t % 2 == 1)
        for b in range(hp.shape[0]):
            active = (not has_lens) or t < lens[b]
            if active:
                _gru_output(xp[r0 + b * rb, hb: hb + bs], gates[b, cb: cb + bs], gates[b, hb: hb + bs],
                            hp[b, u0:u1], hn[b, u0:u1], bs, clip, default, cg, ag, bg)
            _finish_row(hn[b], hp[b], active, Y, t, d, b, u0, u1)


# ---------------------------------------------------------------- RNN --

@jit_inline
def _rnn_constants(wbuf, table, fparams, nblocks, D, d, H):
    """(code, alpha, beta of f)."""
    return table[_codes_at(nblocks, D) + d], fparams[2 * d], fparams[2 * d + 1]


@jit
def _rnn_cell(phase, consts, xp, r0, rb, gates, hp, hn, c, rh, wR, wRT, wRP, table, k, t, lens, has_lens, Y, d,
              clip, unused_flag, fused):
    cf, af, bf = consts
    u0 = table[k]
    u1 = table[k + 1]
    if not fused:
        _block_product(hp, wR, wRT, wRP, table, k, 1, 0, 1, gates, t % 2 == 1)
    bs = u1 - u0
    for b in range(hp.shape[0]):
        active = (not has_lens) or t < lens[b]
        if active:
            xr = xp[r0 + b * rb, u0:u1]
            gr = gates[b, u0:u1]
            h = hn[b, u0:u1]
            if cf == TANH:
                for j in range(bs):
                    h[j] = fast_tanh(_clamp(xr[j] + gr[j], clip))
            else:
                for j in range(bs):
                    h[j] = _clamp(xr[j] + gr[j], clip)
                activate_inplace(h, cf, af, bf)
        _finish_row(hn[b], hp[b], active, Y, t, d, b, u0, u1)


# What ``driver`` binds into the shell per op: globals of its copy of ``_sequence``, so constants
# when it compiles (the branches on them fold). G, the gate count, comes from ``reference.GATES``.
# GRU fuses no step: its z/r pass plus a separate candidate projection was slower.
_CELLS = {
    "LSTM": dict(cell_constants=_lstm_constants, cell=_lstm_cell, CELL_STATE=True, FUSES=True, TWO_PHASES=False),
    "GRU": dict(cell_constants=_gru_constants, cell=_gru_cell, CELL_STATE=False, FUSES=False, TWO_PHASES=True),
    "RNN": dict(cell_constants=_rnn_constants, cell=_rnn_cell, CELL_STATE=False, FUSES=True, TWO_PHASES=False),
}


# ------------------------------------------------------------ the shell --

def _sequence(X, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch,
              D, nblocks, reverse_first, flag, time_major, clip, part, nparts, sync):
    """The sequence driver of every op: ``driver(op)`` compiles a copy whose globals G (gates per unit),
    ``cell_constants``, ``cell``, CELL_STATE, FUSES and TWO_PHASES are the op's (``_CELLS``).

    Per direction: its weights and the cell's constants, the initial state, then per step (blocks claimed by
    the parts, a phase end after each phase) the chunk's input projection when a chunk starts, the cell, and
    at the end the final state.
    """
    T = X.shape[0] if time_major else X.shape[1]
    B = X.shape[1] if time_major else X.shape[0]
    I = X.shape[2]
    H = h_out.shape[2]
    if _check_lens(lens, has_lens, T):
        return 1
    fused = FUSES and _fused_step(T, B)
    phases = 2 if TWO_PHASES and not flag else 1
    epoch = 1
    X2 = _matrix(X, 0, X.shape[0] * X.shape[1], I)
    TC = _chunk_steps_nb(T, B, time_major)
    clip32 = F32(clip)
    xp, gates, hbuf, c, rh = _carve(scratch, TC, B, G, H)
    GHs = _row_stride_nb(G * H)
    panel_columns = _all_panel_columns(table, nblocks, G)
    for d in range(D):
        reverse = reverse_first or d == 1
        wW = _segment_matrix(wbuf, table, nblocks, d, SEG_W, G * H, I)
        wR = _segment_matrix(wbuf, table, nblocks, d, SEG_R, G * H, H)
        wWT = _segment_matrix(wbuf, table, nblocks, d, SEG_WT, I, GHs)
        wRT = _segment_matrix(wbuf, table, nblocks, d, SEG_RT, H, GHs)
        wWP = _segment(wbuf, table, nblocks, d, SEG_WP, I * panel_columns)
        wRP = _segment(wbuf, table, nblocks, d, SEG_RP, H * panel_columns)
        bias_x = _segment(wbuf, table, nblocks, d, SEG_BIAS_X, G * H)
        consts = cell_constants(wbuf, table, fparams, nblocks, D, d, H)
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _init_state(hbuf[0], h0, has_h0, d, table[k], table[k + 1])
            if CELL_STATE:
                _init_state(c, c0, has_c0, d, table[k], table[k + 1])
            k = _claim(sync, epoch, part, nblocks, nparts, k)
        epoch = _phase_end(sync, epoch, nblocks, nparts)  # every block reads all of h_prev
        cur = 0
        first = 0
        rows = X2[:0]
        for step in range(T):
            new_chunk = step % TC == 0
            if new_chunk:
                first, rows = _chunk_rows(X2, step, TC, T, B, reverse, time_major)
            t = T - 1 - step if reverse else step
            r0 = (t - first) * B if time_major else t
            rb = 1 if time_major else T
            hp = hbuf[cur]
            hn = hbuf[1 - cur]
            for phase in range(phases):
                k = _claim(sync, epoch, part, nblocks, nparts, -1)
                while k >= 0:
                    if phase == 0 and fused:
                        _fused_block_product(rows, hp, wWP, wRP, bias_x, xp, gates, table, k, G)
                    elif phase == 0 and new_chunk:  # block k's projections are read by block k's steps only
                        _project(rows, wW, wWT, wWP, bias_x, xp, table, nblocks, k, G)
                    cell(phase, consts, xp, r0, rb, gates, hp, hn, c, rh, wR, wRT, wRP, table, k, t, lens,
                         has_lens, Y, d, clip32, flag, fused)
                    k = _claim(sync, epoch, part, nblocks, nparts, k)
                epoch = _phase_end(sync, epoch, nblocks, nparts)
            cur = 1 - cur
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _store_state(h_out, d, hbuf[cur], table[k], table[k + 1])
            if CELL_STATE:  # (GRU, RNN: c_out may be h_out's memory)
                _store_state(c_out, d, c, table[k], table[k + 1])
            k = _claim(sync, epoch, part, nblocks, nparts, k)
        epoch = _phase_end(sync, epoch, nblocks, nparts)
    return 0


# ------------------------------------------------------- one step --
# A stream feeds one step at a time (T = 1, batch 1..3): too short to pay for the sequence shell (segments,
# unit blocks, claims, chunks, the state double buffer). ``one_step`` calls take ``step(op)`` instead: per
# direction and row, x . W^T + h . R^T + bias in one panel pass, then the op's row (``_ROWS``: the cells of
# the sequence, handed a zero projection row), reading the initial states where they lie and writing Y and
# the final states directly.

def one_step(T, B, nblocks):
    """Whether a call takes ``step(op)`` instead of the sequence driver: one step of 1..3 rows, one unit block
    (one thread)."""
    return T == 1 and B < 4 and nblocks == 1


one_step_nb = jit_inline(one_step)


def _inlined(helper):
    """A copy of a jitted helper inlined (Numba IR) into the step, itself inlined into the C entry: an
    out-of-line call increfs and decrefs every array argument. The panel passes (``matvec2_at``, on
    addresses) and the rare activations' cells stay out of line: cold compile time."""
    return jit_inline(helper.py_func)


_check_lens_inline = _inlined(_check_lens)
_carve_inline = _inlined(_carve)
_matvec2_inline = _inlined(matvec2_packed)
_lstm_cells_no_peepholes_inline = _inlined(_lstm_cells_no_peepholes)
_lstm_cells_default_inline = _inlined(_lstm_cells_default)
_gru_gates_zr_inline = _inlined(_gru_gates_zr)
_gru_output_inline = _inlined(_gru_output)
_gru_lbr_cells_inline = _inlined(_gru_lbr_cells)


@jit_inline
def _vector(address, n):
    return numba.carray(_f32_pointer(address), (n,))


@jit_inline
def _state_row(state, has_state, d, b, zeros):
    """Row b of direction d of an initial state [D, B, H], or ``zeros`` (H floats) when it is absent."""
    if has_state:
        return _vector(state.ctypes.data + 4 * (d * state.shape[1] + b) * state.shape[2], state.shape[2])
    return _vector(zeros.ctypes.data, zeros.shape[0])


@jit_inline
def _fill(dst, value):
    for j in range(dst.shape[0]):
        dst[j] = value


@jit_inline
def _copy(dst, src):
    """``dst[:] = src`` (the same memory is fine: the states may be written where they were read)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@jit_inline
def _past_end(lens, has_lens, b, y, h_out, hp):
    """A row whose sequence is empty (sequence_lens 0): Y zeros, its state kept; whether it is one."""
    if has_lens and lens[b] == 0:
        _fill(y, ZERO)
        _copy(h_out, hp)
        return True
    return False


@jit_inline
def _step_buffers(scratch, B, G, H, has_h0):
    """The step's scratch: a zero projection row (the bias and x . W^T go into the gates; GRU with
    linear_before_reset writes its candidate's past the first 2H), gate rows, GRU's r * h_prev rows, a zero
    row standing for an absent initial state, and how many rows of R^T a step reads (none without one)."""
    xp, gates, hbuf, _, rh = _carve_inline(scratch, 1, B, G, H)
    _fill(xp[0, :G * H], ZERO)
    no_h = hbuf[0, 0]
    _fill(no_h, ZERO)
    return xp[0, :G * H], gates, rh, no_h, (H if has_h0 else 0)


# One row of one direction, for every op: ``row(consts, x, hp, hk, wWP, wRP, bias_x, no_x, no_h, g, r_h, y, c,
# H, I, clip, flag)``: consts from the op's ``cell_constants``; x the input row, hp h_prev (its first hk floats
# multiply R^T); panels wWP, wRP; no_x the zero projection row, no_h H zeros; g the gate row, r_h GRU's
# r * h_prev row; y the output row (h); c the cell state row, updated in place (LSTM).

@jit_inline
def _lstm_row(consts, x, hp, hk, wWP, wRP, bias_x, no_x, no_h, g, r_h, y, c, H, I, clip, input_forget):
    peep, peepholes, default, cf, af, bf, cg, ag, bg, ch, ah, bh = consts
    _matvec2_inline(x, wWP, hp[:hk], wRP, bias_x, 4 * H, g)
    ff = ONE if input_forget else ZERO
    if default and not peepholes:
        _lstm_cells_no_peepholes_inline(no_x, g, y, c, H, clip, ff)
    elif default:
        _lstm_cells_default_inline(no_x, g, y, c, peep[0], peep[1], peep[2], H, clip, ff)
    else:
        _lstm_cells_generic(no_x, g, y, c, peep[0], peep[1], peep[2], H, clip, input_forget,  # (rare: not inlined)
                            cf, af, bf, cg, ag, bg, ch, ah, bh)


@jit_inline
def _gru_row(consts, x, hp, hk, wWP, wRP, bias_x, xrow, no_h, g, r_h, y, c, H, I, clip, linear_before_reset):
    """Without linear_before_reset the candidate's pass reads x and r * h_prev together (Wbh + Rbh are in its
    bias); with it, x . Wh^T + Wbh and h_prev . Rh^T are two passes (r multiplies only the second)."""
    bias_rh, default, cf, af, bf, cg, ag, bg = consts
    zr_columns = _panel_columns(2 * H)
    wWP_h = wWP[I * zr_columns:]
    wRP_h = wRP[H * zr_columns:]
    _matvec2_inline(x, wWP, hp[:hk], wRP, bias_x, 2 * H, g)  # z, r
    gh = g[2 * H:]
    xh = xrow[2 * H:]
    if linear_before_reset:
        _matvec2_inline(x, wWP_h, hp[:0], wRP_h, bias_x[2 * H:], H, xh)
        _matvec2_inline(hp[:hk], wRP_h, hp[:0], wRP_h, no_h, H, gh)  # (no_h: a zero bias)
        _gru_lbr_cells_inline(xrow, g, hp, y, bias_rh, H, clip, default, cf, af, bf, cg, ag, bg)
    else:
        _gru_gates_zr_inline(xrow, g, hp, r_h, H, clip, default, cf, af, bf)
        _matvec2_inline(x, wWP_h, r_h[:hk], wRP_h, bias_x[2 * H:], H, gh)
        _gru_output_inline(xh, g, gh, hp, y, H, clip, default, cg, ag, bg)


@jit_inline
def _rnn_row(consts, x, hp, hk, wWP, wRP, bias_x, no_x, no_h, g, r_h, y, c, H, I, clip, unused_flag):
    cf, af, bf = consts
    _matvec2_inline(x, wWP, hp[:hk], wRP, bias_x, H, g)
    if cf == TANH:
        for j in range(H):
            y[j] = fast_tanh(_clamp(g[j], clip))
    else:
        for j in range(H):
            y[j] = _clamp(g[j], clip)
        activate_inplace(y, cf, af, bf)


def _step(X2, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch, D, flag,
          clip):
    """The one-step shell of every op: ``step(op)`` compiles a copy whose globals G, CELL_STATE,
    ``cell_constants`` and ``row`` are the op's (``_CELLS``, ``_ROWS``)."""
    B, I = X2.shape
    H = h_out.shape[2]
    if _check_lens_inline(lens, has_lens, 1):
        return 1
    clip32 = F32(clip)
    no_x, gates, rh, no_h, hk = _step_buffers(scratch, B, G, H, has_h0)
    columns = _block_panel_columns(H, G)
    for d in range(D):
        wWP = _segment(wbuf, table, 1, d, SEG_WP, I * columns)
        wRP = _segment(wbuf, table, 1, d, SEG_RP, H * columns)
        bias_x = _segment(wbuf, table, 1, d, SEG_BIAS_X, G * H)
        consts = cell_constants(wbuf, table, fparams, 1, D, d, H)
        for b in range(B):
            hp = _state_row(h0, has_h0, d, b, no_h)
            c = c_out[d, b]
            if CELL_STATE:
                _copy(c, _state_row(c0, has_c0, d, b, no_h))  # the cells update c in place
            y = Y[0, d, b]
            if _past_end(lens, has_lens, b, y, h_out[d, b], hp):
                continue
            row(consts, X2[b], hp, hk, wWP, wRP, bias_x, no_x, no_h, gates[b], rh[b], y, c, H, I, clip32, flag)
            _copy(h_out[d, b], y)
    return 0


_ROWS = {"LSTM": _lstm_row, "GRU": _gru_row, "RNN": _rnn_row}
_STEPS: dict[str, object] = {}


def step(op: str):
    """The jitted one-step function of ``op`` (``one_step``): the sequence driver's arguments, but X as its
    [B, I] rows and no threads (nblocks 1, part 0 of 1). Compiled into the C entry, not on its own."""
    compiled = _STEPS.get(op)
    if compiled is None:
        cell = _CELLS[op]
        source = bound(_step, f"{op.lower()}_step", G=GATES[op], CELL_STATE=cell["CELL_STATE"], row=_ROWS[op],
                       cell_constants=cell["cell_constants"])
        compiled = _STEPS[op] = jit_inline(source)
    return compiled


# ------------------------------------------------------------ drivers --

def bound(fn, name, **names):
    """A copy of ``fn`` named ``name`` (its own Numba cache entry: Numba keys the cache on the name and
    bytecode, not on globals) whose module globals also hold ``names`` (frozen as constants when it compiles)."""
    namespace = dict(fn.__globals__, **names) if names else fn.__globals__
    copy = pytypes.FunctionType(fn.__code__, namespace, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return copy


def _kernel_sources_digest() -> str:
    """Short hash of the kernel sources, part of each driver's name.

    Numba's cache checks only the timestamp of the file that defines a
    function, not of the helpers it compiled in (numba_math.py): without this
    an edited helper would keep running from a stale cached driver.
    """
    folder = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha1()
    for name in ("numba_config.py", "numba_math.py", "numba_rnn.py", "packing.py"):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:10]


_DIGEST = _kernel_sources_digest()
_DRIVERS: dict[str, object] = {}


def driver_signature():
    """The one signature every driver is compiled for.

    All arrays C-contiguous: a read-only X or a strided (layout=1) Y makes
    the same code much slower, so the caller copies those (cheap next to the
    recurrence).
    """
    f32, i32 = types.float32, types.int32

    def array(dtype, ndim, readonly=False):
        return types.Array(dtype, ndim, "C", readonly=readonly)

    return (
        array(f32, 3),  # X
        array(i32, 1, True), types.boolean,  # lens, has_lens
        array(f32, 3, True), types.boolean,  # h0, has_h0
        array(f32, 3, True), types.boolean,  # c0, has_c0
        array(f32, 4),  # Y
        array(f32, 3), array(f32, 3),  # h_out, c_out
        array(f32, 1, True),  # wbuf
        array(types.int64, 1, True),  # table
        array(f32, 1, True),  # fparams
        array(f32, 1),  # scratch
        types.int64, types.int64, types.boolean, types.boolean, types.boolean,  # D, nblocks, reverse_first, flag, time_major
        types.float64,  # clip (inf: none)
        types.int64, types.int64, array(types.int64, 1),  # part, nparts, sync
    )


def driver_loaded(op: str) -> bool:
    """Whether ``driver(op)`` was already compiled or loaded in this process."""
    return op in _DRIVERS


def driver(op: str, parallel: bool = False):
    """The compiled driver for ``op`` (compiled, or loaded from the cache, on first use here).

    ``parallel`` is accepted for older callers: the same driver runs one part
    per thread (``nparts``), so there is no separate parallel build.
    """
    dispatcher = _DRIVERS.get(op)
    if dispatcher is None:
        name = f"{op.lower()}_sequence_{_DIGEST}"
        dispatcher = jit_entry(bound(_sequence, name, G=GATES[op], **_CELLS[op]))
        dispatcher.compile(driver_signature())
        dispatcher.disable_compile()  # arguments convert to this signature; never compile on a request
        _DRIVERS[op] = dispatcher
    return dispatcher
