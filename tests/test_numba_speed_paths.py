"""The fast product paths of lstminfer.kernels.numba_math, each against float64 NumPy.

``product`` picks among: wide (8-row) and narrow (4-row) register tiles with a
prefetching first tile per panel, the 4-row axpy / dot tiles for columns left
over, ``matvec_panels`` for the rows left over when the weights fit in L2, and
``matvec_kn`` above that. The shapes here put a case on each path and on each
edge between them (row counts around 4 and 8, widths around a panel, K
around the 4-row unroll and the K block, both walking directions).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from lstminfer.kernels import numba_math  # noqa: E402

NR = numba_math._NR
KC = numba_math._KC


def _weights(rng, N, K, pad=16):
    """Bm [N, K] and its k-major copy with padded rows (as packing lays out R^T)."""
    Bm = rng.standard_normal((N, K)).astype(np.float32)
    BmT = np.zeros((K, N + pad), dtype=np.float32)
    BmT[:, :N] = Bm.T
    return Bm, BmT


def _check(A, Bm, BmT, n0, n1, c0=3, backward=False):
    M, K = A.shape
    width = n1 - n0
    out = np.full((M, c0 + width + 5), 7.0, dtype=np.float32)
    numba_math.product(A, Bm, BmT, n0, n1, out, c0, backward)
    expected = A.astype(np.float64) @ Bm[n0:n1].T.astype(np.float64)
    bound = 1e-6 * np.sqrt(K) * max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(out[:, c0:c0 + width] - expected).max(initial=0))
    assert err <= bound, f"M={M} K={K} columns [{n0}, {n1}) backward={backward}: error {err} > {bound}"
    assert (out[:, :c0] == 7).all(), "product wrote left of its columns"
    assert (out[:, c0 + width:] == 7).all(), "product wrote right of its columns"


@pytest.mark.parametrize("M", [4, 8, 12, 20, 64, 68])
def test_wide_and_narrow_row_tiles(M):
    """Multiples of 4 rows: wide tiles where 8 rows fit, a narrow one for the rest."""
    rng = np.random.default_rng(M)
    K, N = 70, 3 * NR
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm, BmT = _weights(rng, N, K)
    _check(A, Bm, BmT, 0, N)


def test_k_blocks_accumulate():
    """K over the K block: tiles load and add to what the first block stored."""
    rng = np.random.default_rng(1)
    K = KC + 37
    A = rng.standard_normal((16, K)).astype(np.float32)
    Bm, BmT = _weights(rng, 2 * NR, K)
    _check(A, Bm, BmT, 0, 2 * NR)


def test_prefetching_first_tile_in_every_row_block():
    """Enough rows for several M blocks (each starts with the prefetching tile)."""
    rng = np.random.default_rng(2)
    K = 600  # M block of 32768 // 600 -> 48 rows
    A = rng.standard_normal((100, K)).astype(np.float32)
    Bm, BmT = _weights(rng, NR + 5, K)
    _check(A, Bm, BmT, 0, NR + 5)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("K", [1, 3, 4, 5, 64, 67])
@pytest.mark.parametrize("n0,n1", [(0, NR), (0, 3 * NR + 7), (5, 5 + 2 * NR), (0, 9)])
def test_batch_one_panels(K, n0, n1, backward):
    """One row, weights in cache: register panels, the K % 4 tail, the column tail, both directions."""
    rng = np.random.default_rng(K * 31 + n1)
    A = rng.standard_normal((1, K)).astype(np.float32)
    Bm, BmT = _weights(rng, n1 + 3, K)
    _check(A, Bm, BmT, n0, n1, backward=backward)


@pytest.mark.parametrize("backward", [False, True])
def test_batch_one_large_weights_take_the_row_stream(backward):
    """Weights over the panel threshold go through ``matvec_kn``: same result."""
    K = 256
    N = numba_math._PANEL_MATVEC_BYTES // (4 * K) + 2 * NR
    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, K)).astype(np.float32)  # 3 rows: all left over by the tiles
    Bm, BmT = _weights(rng, N, K)
    _check(A, Bm, BmT, 0, N, backward=backward)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(M=st.integers(1, 19), K=st.integers(1, 90), n0=st.integers(0, 40), width=st.integers(1, 3 * NR + 9),
       backward=st.booleans())
def test_product_random_shapes(M, K, n0, width, backward):
    rng = np.random.default_rng(M * 1000 + K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm, BmT = _weights(rng, n0 + width, K)
    _check(A, Bm, BmT, n0, n0 + width, backward=backward)


def test_panel_matvec_walks_agree():
    """``matvec_panels`` walked forwards and backwards: the same sums in each panel (same order per column)."""
    rng = np.random.default_rng(4)
    K, N = 48, 4 * NR + 3
    h = rng.standard_normal(K).astype(np.float32)
    _, BmT = _weights(rng, N, K)
    forward = np.zeros(N, dtype=np.float32)
    backward = np.zeros(N, dtype=np.float32)
    numba_math.matvec_panels(h, BmT, 0, N, forward, False)
    numba_math.matvec_panels(h, BmT, 0, N, backward, True)
    panels = N // NR * NR
    np.testing.assert_array_equal(forward[:panels], backward[:panels])
    np.testing.assert_allclose(forward[panels:], backward[panels:], atol=1e-5)
    np.testing.assert_allclose(forward, h.astype(np.float64) @ BmT[:, :N].astype(np.float64), atol=1e-4)


# ----------------------------------------------- batch 1 over packed panels --
PW = numba_math.PANEL_WIDTH


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("K", [1, 3, 7, 8, 9, 17, 64, 67])
@pytest.mark.parametrize("width", [1, 17, PW, PW + 1, 3 * PW + 5])
def test_matvec_over_packed_panels(K, width, backward):
    """Every K tail (8-row steps, then single rows), a partial last panel, both walks; nothing written past."""
    from lstminfer.kernels.packing import column_panels

    rng = np.random.default_rng(K * 100 + width)
    M = rng.standard_normal((K, width)).astype(np.float32)
    h = rng.standard_normal(K).astype(np.float32)
    panels = column_panels(M, PW)
    out = np.full(width + 9, 7.0, dtype=np.float32)
    numba_math.matvec_packed(h, panels, width, out, backward)
    expected = h.astype(np.float64) @ M.astype(np.float64)
    np.testing.assert_allclose(out[:width], expected, atol=1e-5 * max(1.0, np.sqrt(K)))
    assert (out[width:] == 7).all(), "matvec_packed wrote past its columns"


@pytest.mark.parametrize("KX,KH", [(1, 1), (3, 17), (8, 9), (64, 67)])
@pytest.mark.parametrize("width", [1, 17, PW, PW + 1, 3 * PW + 5])
def test_two_products_and_bias_over_packed_panels(KX, KH, width):
    """``matvec2_packed``: x . MX + h . MH + bias in one pass (the streaming step); nothing written past."""
    from lstminfer.kernels.packing import column_panels

    rng = np.random.default_rng(KX * 1000 + KH * 10 + width)
    MX = rng.standard_normal((KX, width)).astype(np.float32)
    MH = rng.standard_normal((KH, width)).astype(np.float32)
    x = rng.standard_normal(KX).astype(np.float32)
    h = rng.standard_normal(KH).astype(np.float32)
    bias = rng.standard_normal(width).astype(np.float32)
    out = np.full(width + 9, 7.0, dtype=np.float32)
    numba_math.matvec2_packed(x, column_panels(MX, PW), h, column_panels(MH, PW), bias, width, out)
    expected = x.astype(np.float64) @ MX + h.astype(np.float64) @ MH + bias
    np.testing.assert_allclose(out[:width], expected, atol=1e-5 * max(1.0, np.sqrt(KX + KH)))
    assert (out[width:] == 7).all(), "matvec2_packed wrote past its columns"


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("H,blocks", [(1, 1), (17, 1), (40, 2), (264, 2)])
def test_with_panels_lays_out_every_range(op, H, blocks):
    """Each unit block's column ranges (GRU: z,r | h) as panels of W^T and R^T; the rest unchanged."""
    from lstminfer import reference
    from lstminfer.kernels import packing

    rng = np.random.default_rng(H)
    G, I, D = reference.GATES[op], 5, 2
    W = rng.standard_normal((D, G * H, I)).astype(np.float32)
    R = rng.standard_normal((D, G * H, H)).astype(np.float32)
    packed = packing.pack(op, W, R, None, None, blocks=blocks)
    extended = packing.with_panels(packed)
    assert extended.offsets.shape == (D, packing.PANEL_SEGMENTS)
    assert (extended.offsets % packing.ALIGN_FLOATS == 0).all()
    assert extended.buffer.ctypes.data % 64 == 0
    np.testing.assert_array_equal(extended.buffer[:packed.buffer.size], packed.buffer)
    ranges = packing.panel_ranges(op, packed.edges)
    GHs = packing.row_stride(G * H)
    for d in range(D):
        for which, source, K in ((packing.SEG_WP, packing.SEG_WT, I), (packing.SEG_RP, packing.SEG_RT, H)):
            matrix = packed.segment(d, source, (K, GHs))
            start = int(extended.offsets[d, which])
            for c0, c1 in ranges:
                columns = packing.panel_columns(c1 - c0)
                got = extended.buffer[start: start + K * columns].reshape(columns // PW, K, PW)
                got = got.transpose(1, 0, 2).reshape(K, columns)
                np.testing.assert_array_equal(got[:, :c1 - c0], matrix[:, c0:c1])
                assert (got[:, c1 - c0:] == 0).all()
                start += K * columns
