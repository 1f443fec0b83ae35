"""C entry points to the Numba drivers: one ``cfunc`` per op, called from C without Numba's dispatcher.

Calling a jitted driver from Python types and unboxes its 22 arguments
at every call, which costs more than a whole small step. ``entry(op)``
returns the address of ``int64 entry(int64* block, float64 clip)``: a
``numba.cfunc`` that turns the flat block of addresses and sizes below into
arrays (``numba.carray``) and calls the driver as a numba-to-numba call. The
Cython front end (``native/_numba_entry.pyx``, ``lstminfer._native._numba_entry``)
fills the block and calls the address with the GIL released.

The entry also does what the driver leaves to its caller: layout=1 Y and
states are transposed from/to the driver's time-major order when their
memory order differs (a copy into ``Y_TMP``, or through the ``STATES``
scratch area). Otherwise the driver writes the final states straight into
Y_h and Y_c (for ``run_into`` the initial states too: the driver reads them
before it writes); an output not wanted goes to ``STATES``.

Block slots (int64; addresses as integers, 0 = absent):
  X, X_D0, X_D1: X [X_D0, X_D1, I] (time-major: [T, B, I], else [B, T, I]),
  LENS (int32 [B], used if HAS_LENS), H0/C0 ([D, B, H] time-major, else
  [B, D, H]; used if HAS_H0/HAS_C0), H0_TMP/C0_TMP (where to transpose them
  to [D, B, H] first; 0: use as they are), Y (the output in the node's
  layout), Y_TMP (0: the driver writes Y directly; else [T, D, B, H] to
  transpose from), YH/YC (0: not wanted), STATES (S*D*B*H floats: states not wanted or transposed), SCRATCH +
  SCRATCH_SIZE (``numba_rnn.scratch_size`` floats), the packed constants
  WBUF/TABLE/FPARAMS + sizes, SYNC (int64 [1]), and the sizes H, I, D,
  S (states: 2 for LSTM), NBLOCKS and the flags REVERSE_FIRST, FLAG, TIME_MAJOR; ROUTE (written
  here: 1 when the call took ``numba_rnn.step`` (``one_step``), else left 0).
Returns the driver's status (0, or 1: sequence_lens outside [0, T]).

Compiled (or loaded from Numba's cache) when a kernel is built, never on a
request; cached under a name that carries ``numba_rnn``'s source digest, so
an edited driver is never run from a stale entry.
"""
from __future__ import annotations

import warnings

import numba
from numba import types
from numba.extending import intrinsic

from . import numba_config, numba_rnn

(X, X_D0, X_D1, LENS, HAS_LENS, H0, HAS_H0, C0, HAS_C0, H0_TMP, C0_TMP, Y, Y_TMP, YH, YC, STATES,
 SCRATCH, SCRATCH_SIZE, WBUF, WBUF_SIZE, TABLE, TABLE_SIZE, FPARAMS, FPARAMS_SIZE, SYNC,
 HIDDEN, INPUT, DIRECTIONS, NUM_STATES, NBLOCKS, REVERSE_FIRST, FLAG, TIME_MAJOR, ROUTE) = range(34)
SLOT_NAMES = ("X", "X_D0", "X_D1", "LENS", "HAS_LENS", "H0", "HAS_H0", "C0", "HAS_C0", "H0_TMP", "C0_TMP", "Y",
              "Y_TMP", "YH", "YC", "STATES", "SCRATCH", "SCRATCH_SIZE", "WBUF", "WBUF_SIZE", "TABLE", "TABLE_SIZE",
              "FPARAMS", "FPARAMS_SIZE", "SYNC", "HIDDEN", "INPUT", "DIRECTIONS", "NUM_STATES", "NBLOCKS",
              "REVERSE_FIRST", "FLAG", "TIME_MAJOR", "ROUTE")  # the C side checks its copy against this at bind
assert all(globals()[name] == k for k, name in enumerate(SLOT_NAMES))
BLOCK_SLOTS = len(SLOT_NAMES)
SIGNATURE = types.int64(types.CPointer(types.int64), types.float64)


def _pointer_intrinsic(dtype):
    @intrinsic
    def as_pointer(typingctx, address):
        """The int64 ``address`` as a typed pointer (for ``numba.carray``)."""
        sig = types.CPointer(dtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return as_pointer


_f32_at = _pointer_intrinsic(types.float32)
_i32_at = _pointer_intrinsic(types.int32)
_i64_at = _pointer_intrinsic(types.int64)


@numba_config.jit
def _f32_array(address, n):
    return numba.carray(_f32_at(address), (n,))


@numba_config.jit
def _state_in(block, slot, tmp_slot, used, D, B, H):
    """The initial state as [D, B, H] (transposed into its tmp area from [B, D, H] when set)."""
    if not used:
        return numba.carray(_f32_at(block[slot]), (0, 0, 0))
    if block[tmp_slot] == 0:
        return numba.carray(_f32_at(block[slot]), (D, B, H))
    src = numba.carray(_f32_at(block[slot]), (B, D, H))
    dst = numba.carray(_f32_at(block[tmp_slot]), (D, B, H))
    for d in range(D):
        for b in range(B):
            dst[d, b, :] = src[b, d, :]
    return dst


@numba_config.jit
def _driver_order(address, time_major, B, D):
    """Whether the output at ``address`` has the driver's [D, B, H] memory order (it writes there directly)."""
    return address != 0 and (time_major or B == 1 or D == 1)


@numba_config.jit
def _state_target(block, slot, which, time_major, D, B, H):
    """Where the driver writes a final state: the output itself, or its place in ``STATES``."""
    if _driver_order(block[slot], time_major, B, D):
        return numba.carray(_f32_at(block[slot]), (D, B, H))
    return numba.carray(_f32_at(block[STATES] + 4 * which * D * B * H), (D, B, H))


@numba_config.jit
def _state_out(state, address, time_major, D, B, H):
    """A final state the driver left in ``STATES`` into the [B, D, H] output (nothing when wanted in place)."""
    if address == 0 or _driver_order(address, time_major, B, D):
        return
    dst_b = numba.carray(_f32_at(address), (B, D, H))
    for d in range(D):
        for b in range(B):
            row = dst_b[b, d]
            src = state[d, b]
            for j in range(H):
                row[j] = src[j]


def _entry_source(block, clip):
    time_major = block[TIME_MAJOR] != 0
    d0, d1 = block[X_D0], block[X_D1]
    T = d0 if time_major else d1
    B = d1 if time_major else d0
    I, H, D, S = block[INPUT], block[HIDDEN], block[DIRECTIONS], block[NUM_STATES]
    x = numba.carray(_f32_at(block[X]), (d0, d1, I))
    has_lens, has_h0, has_c0 = block[HAS_LENS] != 0, block[HAS_H0] != 0, block[HAS_C0] != 0
    lens = numba.carray(_i32_at(block[LENS]), (B if has_lens else 0,))
    h0 = _state_in(block, H0, H0_TMP, has_h0, D, B, H)
    c0 = _state_in(block, C0, C0_TMP, has_c0, D, B, H)
    y_direct = block[Y_TMP] == 0
    y = numba.carray(_f32_at(block[Y] if y_direct else block[Y_TMP]), (T, D, B, H))
    h_out = _state_target(block, YH, 0, time_major, D, B, H)
    c_out = _state_target(block, YC, 1, time_major, D, B, H) if S > 1 else h_out
    wbuf = _f32_array(block[WBUF], block[WBUF_SIZE])
    table = numba.carray(_i64_at(block[TABLE]), (block[TABLE_SIZE],))
    fparams = _f32_array(block[FPARAMS], block[FPARAMS_SIZE])
    scratch = _f32_array(block[SCRATCH], block[SCRATCH_SIZE])
    sync = numba.carray(_i64_at(block[SYNC]), (1,))
    if numba_rnn.one_step_nb(T, B, block[NBLOCKS]):  # a stream's step: no sequence shell around it
        rows = numba.carray(_f32_at(block[X]), (B, I))  # X's one step: B rows either layout
        status = _step(rows, lens, has_lens, h0, has_h0, c0, has_c0, y, h_out, c_out, wbuf, table, fparams,
                       scratch, D, block[FLAG] != 0, clip)
        block[ROUTE] = 1
    else:
        status = _driver(x, lens, has_lens, h0, has_h0, c0, has_c0, y, h_out, c_out, wbuf, table, fparams,
                         scratch, D, block[NBLOCKS], block[REVERSE_FIRST] != 0, block[FLAG] != 0, time_major,
                         clip, 0, 1, sync)
    if status:
        return status
    if not y_direct:  # [T, D, B, H] -> the node's [B, T, D, H]
        out = numba.carray(_f32_at(block[Y]), (B, T, D, H))
        for t in range(T):
            for d in range(D):
                for b in range(B):
                    out[b, t, d, :] = y[t, d, b, :]
    _state_out(h_out, block[YH], time_major, D, B, H)
    if S > 1:
        _state_out(c_out, block[YC], time_major, D, B, H)
    return 0


_ENTRIES: dict[str, object] = {}


def _compile(fn):
    options = dict(nopython=True, error_model="numpy")
    if numba_config.caching_enabled:
        try:
            return numba.cfunc(SIGNATURE, cache=True, **options)(fn)
        except RuntimeError as err:  # no writable cache location: as numba_config does for the drivers
            numba_config.caching_enabled = False
            warnings.warn(f"lstminfer: Numba cannot write its cache ({err}); the kernel entries are compiled "
                          "in memory at every start. Point NUMBA_CACHE_DIR at a writable directory.",
                          RuntimeWarning, stacklevel=3)
    return numba.cfunc(SIGNATURE, cache=False, **options)(fn)


def entry_loaded(op: str) -> bool:
    """Whether ``entry(op)`` was already compiled or loaded in this process."""
    return op in _ENTRIES


def entry(op: str):
    """The compiled ``cfunc`` for ``op`` (its ``.address`` is the C entry); compiled or loaded once."""
    compiled = _ENTRIES.get(op)
    if compiled is None:
        # Named after the kernel sources: the cache entry of each op and kernel-source version is its own.
        fn = numba_rnn.bound(_entry_source, f"{op.lower()}_entry_{numba_rnn._DIGEST}",
                             _driver=numba_rnn.driver(op), _step=numba_rnn.step(op))
        compiled = _ENTRIES[op] = _compile(fn)
    return compiled


def address(op: str) -> int:
    return entry(op).address
