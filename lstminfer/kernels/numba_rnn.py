"""Numba kernels for whole LSTM, GRU and RNN sequences, gates fused.

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
from .packing import (PANEL_SEGMENTS, PANEL_WIDTH, SEG_BIAS_RH, SEG_BIAS_X, SEG_PEEP, SEG_R, SEG_RP, SEG_RT, SEG_W,
                      SEG_WP, SEG_WT)

ACTS_PER_DIRECTION = {"LSTM": 3, "GRU": 2, "RNN": 1}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_ALIGN = 16


# ------------------------------------------------------------ threads --
# Hidden-unit split: ``nparts`` threads run the same driver. The work between
# two sync points (a "phase": one step, say) is one item per unit block; each
# thread claims its home block first (its rows of W and R stay in its core's
# cache), then takes any block still unclaimed: at once if the block's owner
# did not show up in the previous phase, else after a grace period. So a
# thread that the OS has descheduled (a busy machine) costs its partner one
# grace period, then the partner runs on alone instead of spinning until it
# comes back (measured: a plain barrier took 250x longer on a loaded machine).
# A phase ends when all its blocks are done (a counter bumped atomically:
# ~0.1 us when both cores are free, against ~10 us for a ``prange`` launch per
# step). ``sync``: int64, zeroed before the parts start: [0] the blocks done;
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


# Time-major inputs are projected a chunk of steps at a time, about this many
# rows (steps x batch) per chunk: enough rows for the GEMM tiles, and the chunk
# of projections is still in cache when its steps read it (projecting all
# steps up front wrote 34 MB at H=256, batch 64, and read it back from DRAM).
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
# a C helper (numba_attempt_nocopy_reshape) each time: ~6 % of a T=1, H=8 call had gone there.
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


@jit
def _segment_matrix(wbuf, table, nblocks, d, which, rows, cols):
    return _matrix(wbuf, table[nblocks + 1 + d * PANEL_SEGMENTS + which], rows, cols)


@jit
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


# Row slices indexed from 0 (see below): indexing the 3-D arrays in the loop made LLVM
# gather and scatter (~4 % of a T=1, H=64 call).
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


@jit
def _all_panel_columns(table, nblocks, G):
    """Columns of the panels of unit blocks 0 .. nblocks-1 (``packing.with_panels``)."""
    total = 0
    for j in range(nblocks):
        bs = table[j + 1] - table[j]
        total += _panel_columns(2 * bs) + _panel_columns(bs) if G == 3 else _panel_columns(G * bs)
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


# inlined: LSTM T=1 call 0.95 -> 0.89 us at H=8, 2.26 -> 2.20 at H=64 (best of 3 runs each)
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


@jit
def _lstm_block(xp, r0, rb, gates, hp, hn, c, wR, wRT, wRP, peep, peepholes, table, k, t, lens, has_lens, Y, d,
                clip, input_forget, default, cf, af, bf, cg, ag, bg, ch, ah, bh, fused):
    """fused: ``gates`` already holds the whole pre-activation (``_fused_block_product``)."""
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


def _lstm_sequence(X, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch,
                   D, nblocks, reverse_first, input_forget, time_major, clip, part, nparts, sync):
    T = X.shape[0] if time_major else X.shape[1]
    B = X.shape[1] if time_major else X.shape[0]
    I = X.shape[2]
    H = h_out.shape[2]
    G = 4
    if _check_lens(lens, has_lens, T):
        return 1
    fused = _fused_step(T, B)
    epoch = 1
    X2 = _matrix(X, 0, X.shape[0] * X.shape[1], I)
    TC = _chunk_steps_nb(T, B, time_major)
    clip32 = F32(clip)
    xp, gates, hbuf, c, _ = _carve(scratch, TC, B, G, H)
    codes_at = nblocks + 1 + D * PANEL_SEGMENTS
    for d in range(D):
        reverse = reverse_first or d == 1
        wW = _segment_matrix(wbuf, table, nblocks, d, SEG_W, G * H, I)
        wR = _segment_matrix(wbuf, table, nblocks, d, SEG_R, G * H, H)
        GHs = _row_stride_nb(G * H)
        wWT = _segment_matrix(wbuf, table, nblocks, d, SEG_WT, I, GHs)
        wRT = _segment_matrix(wbuf, table, nblocks, d, SEG_RT, H, GHs)
        panel_columns = _all_panel_columns(table, nblocks, G)
        wWP = _segment(wbuf, table, nblocks, d, SEG_WP, I * panel_columns)
        wRP = _segment(wbuf, table, nblocks, d, SEG_RP, H * panel_columns)
        bias_x = _segment(wbuf, table, nblocks, d, SEG_BIAS_X, G * H)
        peep = _segment_matrix(wbuf, table, nblocks, d, SEG_PEEP, 3, H)
        peepholes = table[codes_at + 3 * D + d] != 0  # decided at load (peephole_flags)
        a = codes_at + 3 * d
        cf, cg, ch = table[a], table[a + 1], table[a + 2]
        p = 6 * d
        af, bf, ag, bg, ah, bh = fparams[p], fparams[p + 1], fparams[p + 2], fparams[p + 3], fparams[p + 4], fparams[p + 5]
        default = cf == SIGMOID and cg == TANH and ch == TANH
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _init_state(hbuf[0], h0, has_h0, d, table[k], table[k + 1])
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
            k = _claim(sync, epoch, part, nblocks, nparts, -1)
            while k >= 0:
                if fused:
                    _fused_block_product(rows, hp, wWP, wRP, bias_x, xp, gates, table, k, G)
                elif new_chunk:  # block k's projections are read by block k's steps only
                    _project(rows, wW, wWT, wWP, bias_x, xp, table, nblocks, k, G)
                _lstm_block(xp, r0, rb, gates, hp, hn, c, wR, wRT, wRP, peep, peepholes, table, k, t,
                            lens, has_lens, Y, d, clip32, input_forget, default, cf, af, bf, cg, ag, bg, ch, ah, bh,
                            fused)
                k = _claim(sync, epoch, part, nblocks, nparts, k)
            epoch = _phase_end(sync, epoch, nblocks, nparts)
            cur = 1 - cur
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _store_state(h_out, d, hbuf[cur], table[k], table[k + 1])
            _store_state(c_out, d, c, table[k], table[k + 1])
            k = _claim(sync, epoch, part, nblocks, nparts, k)
        epoch = _phase_end(sync, epoch, nblocks, nparts)
    return 0


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


@jit
def _gru_phase1(xp, r0, rb, gates, hp, hn, rh, wR, wRT, wRP, bias_rh, table, k, t, lens, has_lens, Y, d, clip, lbr,
                default, cf, af, bf, cg, ag, bg):
    """lbr: the whole step. Otherwise z and r * h_prev only (phase 2 needs all of r * h_prev)."""
    u0 = table[k]
    u1 = table[k + 1]
    bs = u1 - u0
    cb = 3 * u0
    ce = 3 * u1
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


@jit
def _gru_phase2(xp, r0, rb, gates, hp, hn, rh, wR, wRT, wRP, table, k, t, lens, has_lens, Y, d, clip, default,
                cg, ag, bg):
    u0 = table[k]
    u1 = table[k + 1]
    bs = u1 - u0
    cb = 3 * u0
    hb = cb + 2 * bs
    _block_product(rh, wR, wRT, wRP, table, k, 3, 2, 3, gates, t % 2 == 1)
    for b in range(hp.shape[0]):
        active = (not has_lens) or t < lens[b]
        if active:
            _gru_output(xp[r0 + b * rb, hb: hb + bs], gates[b, cb: cb + bs], gates[b, hb: hb + bs],
                        hp[b, u0:u1], hn[b, u0:u1], bs, clip, default, cg, ag, bg)
        _finish_row(hn[b], hp[b], active, Y, t, d, b, u0, u1)


def _gru_sequence(X, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch,
                  D, nblocks, reverse_first, linear_before_reset, time_major, clip, part, nparts, sync):
    T = X.shape[0] if time_major else X.shape[1]
    B = X.shape[1] if time_major else X.shape[0]
    I = X.shape[2]
    H = h_out.shape[2]
    G = 3
    if _check_lens(lens, has_lens, T):
        return 1
    epoch = 1
    X2 = _matrix(X, 0, X.shape[0] * X.shape[1], I)
    TC = _chunk_steps_nb(T, B, time_major)
    clip32 = F32(clip)
    xp, gates, hbuf, _, rh = _carve(scratch, TC, B, G, H)
    codes_at = nblocks + 1 + D * PANEL_SEGMENTS
    lbr = linear_before_reset
    for d in range(D):
        reverse = reverse_first or d == 1
        wW = _segment_matrix(wbuf, table, nblocks, d, SEG_W, G * H, I)
        wR = _segment_matrix(wbuf, table, nblocks, d, SEG_R, G * H, H)
        GHs = _row_stride_nb(G * H)
        wWT = _segment_matrix(wbuf, table, nblocks, d, SEG_WT, I, GHs)
        wRT = _segment_matrix(wbuf, table, nblocks, d, SEG_RT, H, GHs)
        panel_columns = _all_panel_columns(table, nblocks, G)
        wWP = _segment(wbuf, table, nblocks, d, SEG_WP, I * panel_columns)
        wRP = _segment(wbuf, table, nblocks, d, SEG_RP, H * panel_columns)
        bias_x = _segment(wbuf, table, nblocks, d, SEG_BIAS_X, G * H)
        bias_rh = _segment(wbuf, table, nblocks, d, SEG_BIAS_RH, H)
        a = codes_at + 2 * d
        cf, cg = table[a], table[a + 1]
        p = 4 * d
        af, bf, ag, bg = fparams[p], fparams[p + 1], fparams[p + 2], fparams[p + 3]
        default = cf == SIGMOID and cg == TANH
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _init_state(hbuf[0], h0, has_h0, d, table[k], table[k + 1])
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
            k = _claim(sync, epoch, part, nblocks, nparts, -1)
            while k >= 0:
                if new_chunk:  # block k's projections are read by block k's steps only (GRU: no one-pass
                    # step, whose z/r pass plus a separate h projection measured 0.08 us slower at H=64)
                    _project(rows, wW, wWT, wWP, bias_x, xp, table, nblocks, k, G)
                _gru_phase1(xp, r0, rb, gates, hp, hn, rh, wR, wRT, wRP, bias_rh, table, k, t, lens, has_lens,
                            Y, d, clip32, lbr, default, cf, af, bf, cg, ag, bg)
                k = _claim(sync, epoch, part, nblocks, nparts, k)
            epoch = _phase_end(sync, epoch, nblocks, nparts)
            if not lbr:  # phase 2 reads all of r * h_prev
                k = _claim(sync, epoch, part, nblocks, nparts, -1)
                while k >= 0:
                    _gru_phase2(xp, r0, rb, gates, hp, hn, rh, wR, wRT, wRP, table, k, t, lens, has_lens,
                                Y, d, clip32, default, cg, ag, bg)
                    k = _claim(sync, epoch, part, nblocks, nparts, k)
                epoch = _phase_end(sync, epoch, nblocks, nparts)
            cur = 1 - cur
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _store_state(h_out, d, hbuf[cur], table[k], table[k + 1])
            k = _claim(sync, epoch, part, nblocks, nparts, k)
        epoch = _phase_end(sync, epoch, nblocks, nparts)
    return 0


# ---------------------------------------------------------------- RNN --

@jit
def _rnn_block(xp, r0, rb, gates, hp, hn, wR, wRT, wRP, table, k, t, lens, has_lens, Y, d, clip, cf, af, bf, fused):
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


def _rnn_sequence(X, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch,
                  D, nblocks, reverse_first, unused_flag, time_major, clip, part, nparts, sync):
    T = X.shape[0] if time_major else X.shape[1]
    B = X.shape[1] if time_major else X.shape[0]
    I = X.shape[2]
    H = h_out.shape[2]
    G = 1
    if _check_lens(lens, has_lens, T):
        return 1
    fused = _fused_step(T, B)
    epoch = 1
    X2 = _matrix(X, 0, X.shape[0] * X.shape[1], I)
    TC = _chunk_steps_nb(T, B, time_major)
    clip32 = F32(clip)
    xp, gates, hbuf, _, _ = _carve(scratch, TC, B, G, H)
    codes_at = nblocks + 1 + D * PANEL_SEGMENTS
    for d in range(D):
        reverse = reverse_first or d == 1
        wW = _segment_matrix(wbuf, table, nblocks, d, SEG_W, H, I)
        wR = _segment_matrix(wbuf, table, nblocks, d, SEG_R, H, H)
        Hs = _row_stride_nb(H)
        wWT = _segment_matrix(wbuf, table, nblocks, d, SEG_WT, I, Hs)
        wRT = _segment_matrix(wbuf, table, nblocks, d, SEG_RT, H, Hs)
        panel_columns = _all_panel_columns(table, nblocks, G)
        wWP = _segment(wbuf, table, nblocks, d, SEG_WP, I * panel_columns)
        wRP = _segment(wbuf, table, nblocks, d, SEG_RP, H * panel_columns)
        bias_x = _segment(wbuf, table, nblocks, d, SEG_BIAS_X, H)
        cf = table[codes_at + d]
        af, bf = fparams[2 * d], fparams[2 * d + 1]
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _init_state(hbuf[0], h0, has_h0, d, table[k], table[k + 1])
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
            k = _claim(sync, epoch, part, nblocks, nparts, -1)
            while k >= 0:
                if fused:
                    _fused_block_product(rows, hp, wWP, wRP, bias_x, xp, gates, table, k, G)
                elif new_chunk:  # block k's projections are read by block k's steps only
                    _project(rows, wW, wWT, wWP, bias_x, xp, table, nblocks, k, G)
                _rnn_block(xp, r0, rb, gates, hp, hn, wR, wRT, wRP, table, k, t, lens, has_lens,
                           Y, d, clip32, cf, af, bf, fused)
                k = _claim(sync, epoch, part, nblocks, nparts, k)
            epoch = _phase_end(sync, epoch, nblocks, nparts)
            cur = 1 - cur
        k = _claim(sync, epoch, part, nblocks, nparts, -1)
        while k >= 0:
            _store_state(h_out, d, hbuf[cur], table[k], table[k + 1])
            k = _claim(sync, epoch, part, nblocks, nparts, k)
        epoch = _phase_end(sync, epoch, nblocks, nparts)
    return 0


# ------------------------------------------------------- one step --
# A stream feeds one step at a time (T = 1, batch 1..3). The sequence drivers
# spend more on their shell (segments, unit blocks, claims, chunks, the state
# double buffer) than on such a step (measured, LSTM H=8: 0.75 us of which
# ~0.25 before any step). ``one_step`` calls take these instead: per
# direction and row, the gate pre-activations x . W^T + h . R^T + bias in one
# panel pass (GRU: z, r; then the candidate's), then the cells, reading the
# initial states where they lie and writing Y and the final states directly.
# The cells are the drivers' own, handed a zero projection row (the bias and
# x . W^T are already in ``gates``), so every attribute means the same here.

def one_step(T, B, nblocks):
    """Whether a call takes ``step(op)`` instead of the sequence driver: one step of 1..3 rows, one unit block
    (one thread)."""
    return T == 1 and B < 4 and nblocks == 1


one_step_nb = jit_inline(one_step)


def _inlined(helper):
    """A copy of a jitted helper inlined (Numba IR) into the one-step functions, themselves inlined into
    the C entry: each out-of-line call increfs and decrefs every array argument, and a step makes a
    dozen (with the step inlined too, kernel calls: LSTM H=8 0.67 -> 0.59 us, H=64 2.03 -> 1.84, GRU H=8
    0.62 -> 0.49, H=64 1.60 -> 1.45; best of 7, 3 runs). The panel passes stay out of line on addresses
    (``matvec2_at``) and the rare activations' cells too: inlined, they made an empty-cache ``lstminfer
    compile`` ~19 % slower for ~0.03 us."""
    return jit_inline(helper.py_func)


_check_lens_inline = _inlined(_check_lens)
_carve_inline = _inlined(_carve)
_segment_inline = _inlined(_segment)
_segment_matrix_inline = _inlined(_segment_matrix)
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
    """A one-step function's scratch: projection rows (zeroed: the bias and x . W^T go into the gates),
    gate rows, GRU's r * h_prev rows, a zero row standing for an absent initial state, and how many rows
    of R^T a step reads (none without an initial state)."""
    xp, gates, hbuf, _, rh = _carve_inline(scratch, 1, B, G, H)
    _fill(xp[0, :G * H], ZERO)
    no_h = hbuf[0, 0]
    _fill(no_h, ZERO)
    return xp[0, :G * H], gates, rh, no_h, (H if has_h0 else 0)


@jit_inline
def _lstm_step(X2, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch, D,
               input_forget, clip):
    B, I = X2.shape
    H = h_out.shape[2]
    GH = 4 * H
    if _check_lens_inline(lens, has_lens, 1):
        return 1
    clip32 = F32(clip)
    no_x, gates, _, no_h, hk = _step_buffers(scratch, B, 4, H, has_h0)
    columns = _panel_columns(GH)
    codes_at = 2 + D * PANEL_SEGMENTS
    ff = ONE if input_forget else ZERO
    for d in range(D):
        wWP = _segment_inline(wbuf, table, 1, d, SEG_WP, I * columns)
        wRP = _segment_inline(wbuf, table, 1, d, SEG_RP, H * columns)
        bias_x = _segment_inline(wbuf, table, 1, d, SEG_BIAS_X, GH)
        peep = _segment_matrix_inline(wbuf, table, 1, d, SEG_PEEP, 3, H)
        pi, pf, po = peep[0], peep[1], peep[2]
        peepholes = table[codes_at + 3 * D + d] != 0
        a = codes_at + 3 * d
        cf, cg, ch = table[a], table[a + 1], table[a + 2]
        p = 6 * d
        af, bf, ag, bg, ah, bh = fparams[p], fparams[p + 1], fparams[p + 2], fparams[p + 3], fparams[p + 4], fparams[p + 5]
        default = cf == SIGMOID and cg == TANH and ch == TANH
        for b in range(B):
            hp = _state_row(h0, has_h0, d, b, no_h)
            c = c_out[d, b]
            _copy(c, _state_row(c0, has_c0, d, b, no_h))  # the cells update c in place
            y = Y[0, d, b]
            if _past_end(lens, has_lens, b, y, h_out[d, b], hp):
                continue
            g = gates[b]
            _matvec2_inline(X2[b], wWP, hp[:hk], wRP, bias_x, GH, g)
            if default and not peepholes:
                _lstm_cells_no_peepholes_inline(no_x, g, y, c, H, clip32, ff)
            elif default:
                _lstm_cells_default_inline(no_x, g, y, c, pi, pf, po, H, clip32, ff)
            else:
                _lstm_cells_generic(no_x, g, y, c, pi, pf, po, H, clip32, input_forget,  # (rare: not inlined)
                                    cf, af, bf, cg, ag, bg, ch, ah, bh)
            _copy(h_out[d, b], y)
    return 0


@jit_inline
def _gru_step(X2, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch, D,
              linear_before_reset, clip):
    """Without linear_before_reset the candidate's pass reads x and r * h_prev together (Wbh + Rbh are in its
    bias); with it, x . Wh^T + Wbh and h_prev . Rh^T are two passes (r multiplies only the second)."""
    B, I = X2.shape
    H = h_out.shape[2]
    if _check_lens_inline(lens, has_lens, 1):
        return 1
    clip32 = F32(clip)
    xrow, gates, rh, no_h, hk = _step_buffers(scratch, B, 3, H, has_h0)  # xrow: zeros, but for
    xh = xrow[2 * H:]  # x . Wh^T + Wbh with linear_before_reset
    zr_columns = _panel_columns(2 * H)
    columns = zr_columns + _panel_columns(H)
    codes_at = 2 + D * PANEL_SEGMENTS
    for d in range(D):
        wWP = _segment_inline(wbuf, table, 1, d, SEG_WP, I * columns)
        wRP = _segment_inline(wbuf, table, 1, d, SEG_RP, H * columns)
        wWP_h = wWP[I * zr_columns:]
        wRP_h = wRP[H * zr_columns:]
        bias_x = _segment_inline(wbuf, table, 1, d, SEG_BIAS_X, 3 * H)
        bias_rh = _segment_inline(wbuf, table, 1, d, SEG_BIAS_RH, H)
        a = codes_at + 2 * d
        cf, cg = table[a], table[a + 1]
        p = 4 * d
        af, bf, ag, bg = fparams[p], fparams[p + 1], fparams[p + 2], fparams[p + 3]
        default = cf == SIGMOID and cg == TANH
        for b in range(B):
            hp = _state_row(h0, has_h0, d, b, no_h)
            y = Y[0, d, b]
            if _past_end(lens, has_lens, b, y, h_out[d, b], hp):
                continue
            g = gates[b]
            x = X2[b]
            _matvec2_inline(x, wWP, hp[:hk], wRP, bias_x, 2 * H, g)  # z, r
            gh = g[2 * H:]
            if linear_before_reset:
                _matvec2_inline(x, wWP_h, hp[:0], wRP_h, bias_x[2 * H:], H, xh)
                _matvec2_inline(hp[:hk], wRP_h, hp[:0], wRP_h, no_h, H, gh)  # (no_h: a zero bias)
                _gru_lbr_cells_inline(xrow, g, hp, y, bias_rh, H, clip32, default, cf, af, bf, cg, ag, bg)
            else:
                r_h = rh[b]
                _gru_gates_zr_inline(xrow, g, hp, r_h, H, clip32, default, cf, af, bf)
                _matvec2_inline(x, wWP_h, r_h[:hk], wRP_h, bias_x[2 * H:], H, gh)
                _gru_output_inline(xh, g, gh, hp, y, H, clip32, default, cg, ag, bg)
            _copy(h_out[d, b], y)
    return 0


@jit_inline
def _rnn_step(X2, lens, has_lens, h0, has_h0, c0, has_c0, Y, h_out, c_out, wbuf, table, fparams, scratch, D,
              unused_flag, clip):
    B, I = X2.shape
    H = h_out.shape[2]
    if _check_lens_inline(lens, has_lens, 1):
        return 1
    clip32 = F32(clip)
    _, gates, _, no_h, hk = _step_buffers(scratch, B, 1, H, has_h0)
    columns = _panel_columns(H)
    codes_at = 2 + D * PANEL_SEGMENTS
    for d in range(D):
        wWP = _segment_inline(wbuf, table, 1, d, SEG_WP, I * columns)
        wRP = _segment_inline(wbuf, table, 1, d, SEG_RP, H * columns)
        bias_x = _segment_inline(wbuf, table, 1, d, SEG_BIAS_X, H)
        cf = table[codes_at + d]
        af, bf = fparams[2 * d], fparams[2 * d + 1]
        for b in range(B):
            hp = _state_row(h0, has_h0, d, b, no_h)
            y = Y[0, d, b]
            if _past_end(lens, has_lens, b, y, h_out[d, b], hp):
                continue
            g = gates[b]
            _matvec2_inline(X2[b], wWP, hp[:hk], wRP, bias_x, H, g)
            if cf == TANH:
                for j in range(H):
                    y[j] = fast_tanh(_clamp(g[j], clip32))
            else:
                for j in range(H):
                    y[j] = _clamp(g[j], clip32)
                activate_inplace(y, cf, af, bf)
            _copy(h_out[d, b], y)
    return 0


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}


def step(op: str):
    """The jitted one-step function of ``op`` (``one_step``): the sequence driver's arguments, but X as its
    [B, I] rows and no threads (nblocks 1, part 0 of 1). Compiled into the C entry, not on its own."""
    return _STEPS[op]


# ------------------------------------------------------------ drivers --

def _renamed(fn, name):
    """A copy of ``fn`` under another name: its own Numba cache entry (per source digest)."""
    copy = pytypes.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return copy


_SOURCES = {"LSTM": _lstm_sequence, "GRU": _gru_sequence, "RNN": _rnn_sequence}


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

    All arrays C-contiguous: with a read-only X or strided (layout=1) Y the
    same code measured ~35 % slower at batch 64, so the caller copies those
    cases instead (cheap next to the recurrence).
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


def driver(op: str, parallel: bool = False):
    """The compiled driver for ``op`` (compiled, or loaded from the cache, on first use here).

    ``parallel`` is accepted for older callers: the same driver runs one part
    per thread (``nparts``), so there is no separate parallel build.
    """
    dispatcher = _DRIVERS.get(op)
    if dispatcher is None:
        name = f"{op.lower()}_sequence_{_DIGEST}"
        dispatcher = jit_entry(_renamed(_SOURCES[op], name))
        dispatcher.compile(driver_signature())
        dispatcher.disable_compile()  # arguments convert to this signature; never compile on a request
        _DRIVERS[op] = dispatcher
    return dispatcher
