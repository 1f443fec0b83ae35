/* The products of the recurrent kernels: register-tiled micro-kernels over weights packed in
   panels of 2 * LI_VEC columns (lstminfer/kernels/cython_backend.pack_panels: each panel K rows of
   contiguous floats, the last one zero-padded), so that each reads its weights as one sequential
   stream. Float32, int8 (per-column scales) and bf16 panels; _rnn_core.pxi's gemm and gemm_q
   walk the panels and the row blocks. */
#ifndef LI_GEMM_H
#define LI_GEMM_H

#include "li_simd.h"

/* C[r, 0:2*LI_VEC] = bias[0:2*LI_VEC] (or 0) + sum_k A[r, k] B[k, 0:2*LI_VEC], r < 4 */
static inline void li_tile4(const float *A, ptrdiff_t lda, ptrdiff_t K, const float *B, ptrdiff_t ldb,
                            float *C, ptrdiff_t ldc, const float *bias) {
    li_vf z = {0};
    li_vf b0 = bias ? li_load(bias) : z, b1 = bias ? li_load(bias + LI_VEC) : z;
    li_vf c00 = b0, c01 = b1, c10 = b0, c11 = b1, c20 = b0, c21 = b1, c30 = b0, c31 = b1;
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda;
    for (ptrdiff_t k = 0; k < K; k++) {
        const float *w = B + k * ldb;
        li_vf w0 = li_load(w), w1 = li_load(w + LI_VEC);
        float s0 = a0[k], s1 = a1[k], s2 = a2[k], s3 = a3[k];
        c00 += s0 * w0; c01 += s0 * w1;
        c10 += s1 * w0; c11 += s1 * w1;
        c20 += s2 * w0; c21 += s2 * w1;
        c30 += s3 * w0; c31 += s3 * w1;
    }
    li_store(C, c00); li_store(C + LI_VEC, c01);
    li_store(C + ldc, c10); li_store(C + ldc + LI_VEC, c11);
    li_store(C + 2 * ldc, c20); li_store(C + 2 * ldc + LI_VEC, c21);
    li_store(C + 3 * ldc, c30); li_store(C + 3 * ldc + LI_VEC, c31);
}

/* One row: C[0:2*LI_VEC] = bias (or 0) + sum_k a[k] B[k, 0:2*LI_VEC]. Four k per pass into
   separate accumulators (8 independent chains), the panel read as one sequential stream. */
static inline void li_tile1(const float *a, ptrdiff_t K, const float *B, float *C, const float *bias) {
    li_vf z = {0};
    li_vf p0 = z, p1 = z, q0 = z, q1 = z, r0 = z, r1 = z, t0 = z, t1 = z;
    ptrdiff_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float *w = B + k * 2 * LI_VEC;
        p0 += a[k] * li_load(w);                  p1 += a[k] * li_load(w + LI_VEC);
        q0 += a[k + 1] * li_load(w + 2 * LI_VEC); q1 += a[k + 1] * li_load(w + 3 * LI_VEC);
        r0 += a[k + 2] * li_load(w + 4 * LI_VEC); r1 += a[k + 2] * li_load(w + 5 * LI_VEC);
        t0 += a[k + 3] * li_load(w + 6 * LI_VEC); t1 += a[k + 3] * li_load(w + 7 * LI_VEC);
    }
    for (; k < K; k++) {
        const float *w = B + k * 2 * LI_VEC;
        p0 += a[k] * li_load(w); p1 += a[k] * li_load(w + LI_VEC);
    }
    p0 = (p0 + q0) + (r0 + t0);
    p1 = (p1 + q1) + (r1 + t1);
    if (bias) { p0 += li_load(bias); p1 += li_load(bias + LI_VEC); }
    li_store(C, p0); li_store(C + LI_VEC, p1);
}

/* Three rows: C[r, 0:2*LI_VEC] = bias (or 0) + sum_k A[r, k] B[k, :], two k per pass into
   separate accumulators (12 chains). Each panel is read once for all the rows, where one
   row at a time read it once per row. */
static inline void li_tile3(const float *A, ptrdiff_t lda, ptrdiff_t K, const float *B,
                            float *C, ptrdiff_t ldc, const float *bias) {
    li_vf z = {0};
    li_vf c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z;  /* even k */
    li_vf d00 = z, d01 = z, d10 = z, d11 = z, d20 = z, d21 = z;  /* odd k */
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda;
    ptrdiff_t k = 0;
    for (; k + 2 <= K; k += 2) {
        const float *w = B + k * 2 * LI_VEC;
        li_vf w0 = li_load(w), w1 = li_load(w + LI_VEC), v0 = li_load(w + 2 * LI_VEC), v1 = li_load(w + 3 * LI_VEC);
        LI_IN_REGISTER(w0); LI_IN_REGISTER(w1); LI_IN_REGISTER(v0); LI_IN_REGISTER(v1);
        c00 += a0[k] * w0; c01 += a0[k] * w1; d00 += a0[k + 1] * v0; d01 += a0[k + 1] * v1;
        c10 += a1[k] * w0; c11 += a1[k] * w1; d10 += a1[k + 1] * v0; d11 += a1[k + 1] * v1;
        c20 += a2[k] * w0; c21 += a2[k] * w1; d20 += a2[k + 1] * v0; d21 += a2[k + 1] * v1;
    }
    if (k < K) {
        const float *w = B + k * 2 * LI_VEC;
        li_vf w0 = li_load(w), w1 = li_load(w + LI_VEC);
        c00 += a0[k] * w0; c01 += a0[k] * w1;
        c10 += a1[k] * w0; c11 += a1[k] * w1;
        c20 += a2[k] * w0; c21 += a2[k] * w1;
    }
    li_vf b0 = bias ? li_load(bias) : z, b1 = bias ? li_load(bias + LI_VEC) : z;
    li_store(C, (c00 + d00) + b0); li_store(C + LI_VEC, (c01 + d01) + b1);
    li_store(C + ldc, (c10 + d10) + b0); li_store(C + ldc + LI_VEC, (c11 + d11) + b1);
    li_store(C + 2 * ldc, (c20 + d20) + b0); li_store(C + 2 * ldc + LI_VEC, (c21 + d21) + b1);
}

/* li_tile3 for two rows (its own kernel: three rows with one repeated would waste a third of
   the multiply-adds) */
static inline void li_tile2(const float *A, ptrdiff_t lda, ptrdiff_t K, const float *B,
                            float *C, ptrdiff_t ldc, const float *bias) {
    li_vf z = {0};
    li_vf c00 = z, c01 = z, c10 = z, c11 = z, d00 = z, d01 = z, d10 = z, d11 = z;
    const float *a0 = A, *a1 = A + lda;
    ptrdiff_t k = 0;
    for (; k + 2 <= K; k += 2) {
        const float *w = B + k * 2 * LI_VEC;
        li_vf w0 = li_load(w), w1 = li_load(w + LI_VEC), v0 = li_load(w + 2 * LI_VEC), v1 = li_load(w + 3 * LI_VEC);
        LI_IN_REGISTER(w0); LI_IN_REGISTER(w1); LI_IN_REGISTER(v0); LI_IN_REGISTER(v1);
        c00 += a0[k] * w0; c01 += a0[k] * w1; d00 += a0[k + 1] * v0; d01 += a0[k + 1] * v1;
        c10 += a1[k] * w0; c11 += a1[k] * w1; d10 += a1[k + 1] * v0; d11 += a1[k + 1] * v1;
    }
    if (k < K) {
        const float *w = B + k * 2 * LI_VEC;
        li_vf w0 = li_load(w), w1 = li_load(w + LI_VEC);
        c00 += a0[k] * w0; c01 += a0[k] * w1;
        c10 += a1[k] * w0; c11 += a1[k] * w1;
    }
    li_vf b0 = bias ? li_load(bias) : z, b1 = bias ? li_load(bias + LI_VEC) : z;
    li_store(C, (c00 + d00) + b0); li_store(C + LI_VEC, (c01 + d01) + b1);
    li_store(C + ldc, (c10 + d10) + b0); li_store(C + ldc + LI_VEC, (c11 + d11) + b1);
}

/* 1..3 rows of A times one panel, read once for them all (not once per row). Always inlined,
   so that batch 1 keeps li_tile1 inside gemm's panel loop. */
static inline __attribute__((always_inline)) void li_tile_rows(const float *A, ptrdiff_t lda, int rows,
                                                              ptrdiff_t K, const float *B, float *C,
                                                              ptrdiff_t ldc, const float *bias) {
    if (rows == 1) li_tile1(A, K, B, C, bias);
    else if (rows == 2) li_tile2(A, lda, K, B, C, ldc, bias);
    else li_tile3(A, lda, K, B, C, ldc, bias);
}

/* ---- int8 panels: weights converted in the kernel, the scale applied once per output ---- */

/* li_tile1 on an int8 panel: C[0:2*LI_VEC] = scale * (sum_k a[k] Q[k, :]) (+ bias) */
static inline void li_tile1_q(const float *a, ptrdiff_t K, const signed char *Q, float *C,
                              const float *scale, const float *bias) {
    li_vf z = {0};
    li_vf p0 = z, p1 = z, q0 = z, q1 = z, r0 = z, r1 = z, t0 = z, t1 = z;
    ptrdiff_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const signed char *w = Q + k * 2 * LI_VEC;
        p0 += a[k] * li_loadq(w);                  p1 += a[k] * li_loadq(w + LI_VEC);
        q0 += a[k + 1] * li_loadq(w + 2 * LI_VEC); q1 += a[k + 1] * li_loadq(w + 3 * LI_VEC);
        r0 += a[k + 2] * li_loadq(w + 4 * LI_VEC); r1 += a[k + 2] * li_loadq(w + 5 * LI_VEC);
        t0 += a[k + 3] * li_loadq(w + 6 * LI_VEC); t1 += a[k + 3] * li_loadq(w + 7 * LI_VEC);
    }
    for (; k < K; k++) {
        const signed char *w = Q + k * 2 * LI_VEC;
        p0 += a[k] * li_loadq(w); p1 += a[k] * li_loadq(w + LI_VEC);
    }
    p0 = ((p0 + q0) + (r0 + t0)) * li_load(scale);
    p1 = ((p1 + q1) + (r1 + t1)) * li_load(scale + LI_VEC);
    if (bias) { p0 += li_load(bias); p1 += li_load(bias + LI_VEC); }
    li_store(C, p0); li_store(C + LI_VEC, p1);
}

/* One int8 panel (K rows of 2*LI_VEC) as floats q * scale: the dequantized weights exactly */
static inline void li_dequantize_panel(const signed char *Q, ptrdiff_t K, const float *scale, float *out) {
    li_vf s0 = li_load(scale), s1 = li_load(scale + LI_VEC);
    for (ptrdiff_t k = 0; k < K; k++) {
        li_store(out + k * 2 * LI_VEC, li_loadq(Q + k * 2 * LI_VEC) * s0);
        li_store(out + k * 2 * LI_VEC + LI_VEC, li_loadq(Q + k * 2 * LI_VEC + LI_VEC) * s1);
    }
}

/* ---- bf16 panels: exact widening, so the products equal the float ones on the rounded weights ---- */

/* li_tile1 on a bf16 panel */
static inline void li_tile1_bf(const float *a, ptrdiff_t K, const uint16_t *Q, float *C, const float *bias) {
    li_vf z = {0};
    li_vf p0 = z, p1 = z, q0 = z, q1 = z, r0 = z, r1 = z, t0 = z, t1 = z;
    ptrdiff_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const uint16_t *w = Q + k * 2 * LI_VEC;
        p0 += a[k] * li_loadbf(w);                  p1 += a[k] * li_loadbf(w + LI_VEC);
        q0 += a[k + 1] * li_loadbf(w + 2 * LI_VEC); q1 += a[k + 1] * li_loadbf(w + 3 * LI_VEC);
        r0 += a[k + 2] * li_loadbf(w + 4 * LI_VEC); r1 += a[k + 2] * li_loadbf(w + 5 * LI_VEC);
        t0 += a[k + 3] * li_loadbf(w + 6 * LI_VEC); t1 += a[k + 3] * li_loadbf(w + 7 * LI_VEC);
    }
    for (; k < K; k++) {
        const uint16_t *w = Q + k * 2 * LI_VEC;
        p0 += a[k] * li_loadbf(w); p1 += a[k] * li_loadbf(w + LI_VEC);
    }
    p0 = (p0 + q0) + (r0 + t0);
    p1 = (p1 + q1) + (r1 + t1);
    if (bias) { p0 += li_load(bias); p1 += li_load(bias + LI_VEC); }
    li_store(C, p0); li_store(C + LI_VEC, p1);
}

static inline void li_expand_panel_bf(const uint16_t *Q, ptrdiff_t K, float *out) {
    for (ptrdiff_t k = 0; k < K; k++) {
        li_store(out + k * 2 * LI_VEC, li_loadbf(Q + k * 2 * LI_VEC));
        li_store(out + k * 2 * LI_VEC + LI_VEC, li_loadbf(Q + k * 2 * LI_VEC + LI_VEC));
    }
}

#endif
