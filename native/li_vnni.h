/* Dynamic int8 products on AVX-512 VNNI (vpdpbusd: u8 x s8 -> int32), for
   lstminfer.load(..., quantize="int8") on the Cython backend.

   C[m, j] = (sum_k u[m, k] Q[k, j] - 128 colsum_j) * a_scale[m] * w_scale[j] + bias[j]

   where each row of A is quantized on the fly, symmetric per row
   (a_scale = max|A[m, :]| / 127, q = rint(A / a_scale) in [-127, 127]) and
   shifted to u = q + 128 so that vpdpbusd (unsigned x signed) can take it;
   the shift comes back out through 128 * colsum_j, precomputed per column.
   Accumulation is exact in int32 for K < 2^16 (each product < 2^15).

   Weights: panels of LI_VNNI_NR = 64 columns (cython_backend.pack_vnni_panels):
   per panel Kp/4 groups, each 64 columns x 4 consecutive k (256 bytes, one
   vpdpbusd operand per 16 columns), then 64 int32 corrections (128 colsum).
   Kp = K rounded up to 4, the padding rows and columns zero.

   Compiled into every x86-64 build (function-level target attributes: the module's
   flags stay portable); cython_backend calls it only when lstminfer._native._cpu
   reports avx512vnni (and bw, vl). On aarch64 the armv82 build has it on sdot
   (vdotq_s32, below), called where the CPU reports dotprod. */
#ifndef LI_VNNI_H
#define LI_VNNI_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LI_VNNI_NR 64
#define LI_VNNI_STACK 16384 /* bytes of quantized rows kept on the stack */

#if defined(__GNUC__) && defined(__x86_64__) && (__GNUC__ >= 8)
#include <immintrin.h>
#define LI_VNNI_COMPILED 1
#define LI_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* rows of A -> u8 rows of qa (Kp bytes each, padding 128 = zero), and their scales.
   A non-finite value in a row makes its scale NaN, so its outputs are NaN (as in float). */
LI_VNNI_TARGET static void li_vnni_quantize_rows(const float *A, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t lda,
                                                 uint8_t *qa, ptrdiff_t Kp, float *a_scale) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512i shift = _mm512_set1_epi32(128);
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *a = A + r * lda;
        uint8_t *q = qa + r * Kp;
        __m512 peak = zero, poison = zero; /* poison: sum of 0 * a, NaN iff some a is inf/NaN */
        ptrdiff_t k = 0;
        for (; k < K; k += 16) {
            __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, a + k);
            peak = _mm512_max_ps(peak, _mm512_abs_ps(v));
            poison = _mm512_add_ps(poison, _mm512_mul_ps(v, zero));
        }
        float amax = _mm512_reduce_max_ps(peak);
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        float bad = _mm512_reduce_add_ps(poison);
        a_scale[r] = bad == 0.0f ? amax / 127.0f : __builtin_nanf("");
        if (bad != 0.0f) inv = 0.0f;
        const __m512 vinv = _mm512_set1_ps(inv);
        for (k = 0; k < K; k += 16) {
            __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + k), vinv)); /* rint */
            _mm512_mask_cvtepi32_storeu_epi8(q + k, m, _mm512_add_epi32(v, shift));
        }
        for (k = K; k < Kp; k++) q[k] = 128;
    }
}

static inline int32_t li_vnni_word(const uint8_t *p) { int32_t w; memcpy(&w, p, 4); return w; }

/* C[0:w] = (acc - corr) * (a_scale * w_scale) + bias, one row, four vectors of 16 columns */
LI_VNNI_TARGET static inline void li_vnni_finish(__m512i acc, int v, const int32_t *corr, const float *ws,
                                                 float as, const float *bias, float *c, ptrdiff_t w) {
    ptrdiff_t left = w - 16 * v;
    if (left <= 0) return;
    __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(corr + 16 * v)));
    f = _mm512_mul_ps(f, _mm512_mul_ps(_mm512_set1_ps(as), _mm512_loadu_ps(ws + 16 * v)));
    if (bias) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(m, bias + 16 * v));
    _mm512_mask_storeu_ps(c + 16 * v, m, f);
}

/* 4 rows x 64 columns: 16 accumulators, each weight vector used by 4 rows */
LI_VNNI_TARGET static void li_vnni_tile4(const uint8_t *qa, ptrdiff_t Kp, const int8_t *P, const float *as,
                                         const float *ws, const float *bias, float *C, ptrdiff_t ldc, ptrdiff_t w) {
    __m512i c[4][4];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 4; v++) c[r][v] = _mm512_setzero_si512();
    for (ptrdiff_t k = 0; k < Kp; k += 4) {
        const int8_t *p = P + k * LI_VNNI_NR;
        __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);
        __m512i w2 = _mm512_loadu_si512(p + 128), w3 = _mm512_loadu_si512(p + 192);
        for (int r = 0; r < 4; r++) {
            __m512i b = _mm512_set1_epi32(li_vnni_word(qa + r * Kp + k));
            c[r][0] = _mm512_dpbusd_epi32(c[r][0], b, w0);
            c[r][1] = _mm512_dpbusd_epi32(c[r][1], b, w1);
            c[r][2] = _mm512_dpbusd_epi32(c[r][2], b, w2);
            c[r][3] = _mm512_dpbusd_epi32(c[r][3], b, w3);
        }
    }
    const int32_t *corr = (const int32_t *)(const void *)(P + Kp * LI_VNNI_NR);
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 4; v++) li_vnni_finish(c[r][v], v, corr, ws, as[r], bias, C + r * ldc, w);
}

/* 1 row x 64 columns: two k chains of 4 accumulators (vpdpbusd latency), summed at the end */
LI_VNNI_TARGET static void li_vnni_tile1(const uint8_t *qa, ptrdiff_t Kp, const int8_t *P, float as,
                                         const float *ws, const float *bias, float *C, ptrdiff_t w) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
    ptrdiff_t k = 0;
    for (; k + 8 <= Kp; k += 8) {
        const int8_t *p = P + k * LI_VNNI_NR;
        __m512i b = _mm512_set1_epi32(li_vnni_word(qa + k)), e = _mm512_set1_epi32(li_vnni_word(qa + k + 4));
        c0 = _mm512_dpbusd_epi32(c0, b, _mm512_loadu_si512(p));
        c1 = _mm512_dpbusd_epi32(c1, b, _mm512_loadu_si512(p + 64));
        c2 = _mm512_dpbusd_epi32(c2, b, _mm512_loadu_si512(p + 128));
        c3 = _mm512_dpbusd_epi32(c3, b, _mm512_loadu_si512(p + 192));
        d0 = _mm512_dpbusd_epi32(d0, e, _mm512_loadu_si512(p + 256));
        d1 = _mm512_dpbusd_epi32(d1, e, _mm512_loadu_si512(p + 320));
        d2 = _mm512_dpbusd_epi32(d2, e, _mm512_loadu_si512(p + 384));
        d3 = _mm512_dpbusd_epi32(d3, e, _mm512_loadu_si512(p + 448));
    }
    if (k < Kp) {
        const int8_t *p = P + k * LI_VNNI_NR;
        __m512i b = _mm512_set1_epi32(li_vnni_word(qa + k));
        c0 = _mm512_dpbusd_epi32(c0, b, _mm512_loadu_si512(p));
        c1 = _mm512_dpbusd_epi32(c1, b, _mm512_loadu_si512(p + 64));
        c2 = _mm512_dpbusd_epi32(c2, b, _mm512_loadu_si512(p + 128));
        c3 = _mm512_dpbusd_epi32(c3, b, _mm512_loadu_si512(p + 192));
    }
    const int32_t *corr = (const int32_t *)(const void *)(P + Kp * LI_VNNI_NR);
    li_vnni_finish(_mm512_add_epi32(c0, d0), 0, corr, ws, as, bias, C, w);
    li_vnni_finish(_mm512_add_epi32(c1, d1), 1, corr, ws, as, bias, C, w);
    li_vnni_finish(_mm512_add_epi32(c2, d2), 2, corr, ws, as, bias, C, w);
    li_vnni_finish(_mm512_add_epi32(c3, d3), 3, corr, ws, as, bias, C, w);
}

/* li_vnni_tile1 (one row, 64 whole columns, no bias) reading the panel from its last k to its
   first, for a caller that alternates directions so that the lines it read last, still in L1, are
   read first. The same int32 sums (exact), so the same results. */
LI_VNNI_TARGET static void li_vnni_tile1_back(const uint8_t *qa, ptrdiff_t Kp, const int8_t *P, float as,
                                              const float *ws, float *C) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
    ptrdiff_t k = Kp;
    if (Kp % 8) { /* the odd group of 4 k at the end comes first */
        k -= 4;
        const int8_t *p = P + k * LI_VNNI_NR;
        __m512i b = _mm512_set1_epi32(li_vnni_word(qa + k));
        c3 = _mm512_dpbusd_epi32(c3, b, _mm512_loadu_si512(p + 192));
        c2 = _mm512_dpbusd_epi32(c2, b, _mm512_loadu_si512(p + 128));
        c1 = _mm512_dpbusd_epi32(c1, b, _mm512_loadu_si512(p + 64));
        c0 = _mm512_dpbusd_epi32(c0, b, _mm512_loadu_si512(p));
    }
    for (k -= 8; k >= 0; k -= 8) {
        const int8_t *p = P + k * LI_VNNI_NR;
        __m512i b = _mm512_set1_epi32(li_vnni_word(qa + k)), e = _mm512_set1_epi32(li_vnni_word(qa + k + 4));
        d3 = _mm512_dpbusd_epi32(d3, e, _mm512_loadu_si512(p + 448));
        d2 = _mm512_dpbusd_epi32(d2, e, _mm512_loadu_si512(p + 384));
        d1 = _mm512_dpbusd_epi32(d1, e, _mm512_loadu_si512(p + 320));
        d0 = _mm512_dpbusd_epi32(d0, e, _mm512_loadu_si512(p + 256));
        c3 = _mm512_dpbusd_epi32(c3, b, _mm512_loadu_si512(p + 192));
        c2 = _mm512_dpbusd_epi32(c2, b, _mm512_loadu_si512(p + 128));
        c1 = _mm512_dpbusd_epi32(c1, b, _mm512_loadu_si512(p + 64));
        c0 = _mm512_dpbusd_epi32(c0, b, _mm512_loadu_si512(p));
    }
    const int32_t *corr = (const int32_t *)(const void *)(P + Kp * LI_VNNI_NR);
    li_vnni_finish(_mm512_add_epi32(c0, d0), 0, corr, ws, as, NULL, C, LI_VNNI_NR);
    li_vnni_finish(_mm512_add_epi32(c1, d1), 1, corr, ws, as, NULL, C, LI_VNNI_NR);
    li_vnni_finish(_mm512_add_epi32(c2, d2), 2, corr, ws, as, NULL, C, LI_VNNI_NR);
    li_vnni_finish(_mm512_add_epi32(c3, d3), 3, corr, ws, as, NULL, C, LI_VNNI_NR);
}

/* C[r, 0:w] for r < rows, one panel of the columns (li_vnni_gemm's inner loop): 4 rows a tile, then 1. */
LI_VNNI_TARGET static inline void li_vnni_panel_rows(const uint8_t *qa, ptrdiff_t Kp, ptrdiff_t rows, const int8_t *P,
                                                     const float *as, const float *ws, const float *b, float *C,
                                                     ptrdiff_t ldc, ptrdiff_t w) {
    ptrdiff_t r = 0;
    for (; r + 4 <= rows; r += 4)
        li_vnni_tile4(qa + r * Kp, Kp, P, as + r, ws, b, C + r * ldc, ldc, w);
    for (; r < rows; r++)
        li_vnni_tile1(qa + r * Kp, Kp, P, as[r], ws, b, C + r * ldc, w);
}

#elif defined(__GNUC__) && defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
/* aarch64 with sdot (the armv82 build only): the same panels, read as int8x16 vectors of 4
   columns x 4 k; activations stay signed (sdot is s8 x s8), so no +128 shift and the panels'
   column-sum corrections are not read. Results equal the x86 path's: both products are exact. */
#include <arm_neon.h>
#define LI_VNNI_COMPILED 1

/* rows of A -> s8 rows of qa (Kp bytes each, padding 0), and their scales (NaN for a row with inf/NaN). */
static void li_vnni_quantize_rows(const float *A, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t lda,
                                  uint8_t *qa, ptrdiff_t Kp, float *a_scale) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *a = A + r * lda;
        int8_t *q = (int8_t *)(qa + r * Kp);
        float amax = 0.0f, poison = 0.0f; /* poison: sum of 0 * a, NaN iff some a is inf/NaN */
        for (ptrdiff_t k = 0; k < K; k++) {
            float v = a[k] < 0 ? -a[k] : a[k];
            amax = v > amax ? v : amax;
            poison += a[k] * 0.0f;
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        a_scale[r] = poison == 0.0f ? amax / 127.0f : __builtin_nanf("");
        if (poison != 0.0f) inv = 0.0f;
        const float32x4_t vinv = vdupq_n_f32(inv);
        ptrdiff_t k = 0;
        for (; k + 4 <= K; k += 4) { /* round to nearest even, as x86's cvtps */
            int32x4_t v = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(a + k), vinv));
            int16x4_t h = vmovn_s32(v);
            int8x8_t b = vmovn_s16(vcombine_s16(h, h));
            memcpy(q + k, &b, 4);
        }
        for (; k < K; k++) q[k] = (int8_t)vcvtns_s32_f32(a[k] * inv);
        for (k = K; k < Kp; k++) q[k] = 0;
    }
}

/* C[0:w] of one row for columns 16 * quarter + [0, 16): (acc[v] * a_scale * w_scale + bias), 4 per vector */
static inline void li_vnni_finish_neon(const int32x4_t acc[4], int quarter, const float *ws, float as,
                                       const float *bias, float *c, ptrdiff_t w) {
    for (int v = 0; v < 4; v++) {
        ptrdiff_t j = 16 * quarter + 4 * v, left = w - j;
        if (left <= 0) return;
        float out[4];
        float scale[4] = {0, 0, 0, 0}, add[4] = {0, 0, 0, 0};
        for (int i = 0; i < 4 && i < left; i++) { scale[i] = ws[j + i]; if (bias) add[i] = bias[j + i]; }
        /* acc * (a_scale * w_scale) + bias, rounded in the x86 path's order */
        float32x4_t f = vmulq_f32(vcvtq_f32_s32(acc[v]), vmulq_f32(vdupq_n_f32(as), vld1q_f32(scale)));
        vst1q_f32(out, vaddq_f32(f, vld1q_f32(add)));
        memcpy(c + j, out, (size_t)(left < 4 ? left : 4) * sizeof(float));
    }
}

/* up to 4 rows x 16 columns (one quarter of a panel): 16 accumulators, each weight vector used by every row */
static void li_vnni_tile_neon(const uint8_t *qa, ptrdiff_t Kp, int rows, const int8_t *P, int quarter,
                              const float *as, const float *ws, const float *bias, float *C, ptrdiff_t ldc,
                              ptrdiff_t w) {
    int32x4_t c[4][4];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 4; v++) c[r][v] = vdupq_n_s32(0);
    for (ptrdiff_t k = 0; k < Kp; k += 4) {
        const int8_t *p = P + k * LI_VNNI_NR + 64 * quarter;
        int8x16_t w0 = vld1q_s8(p), w1 = vld1q_s8(p + 16), w2 = vld1q_s8(p + 32), w3 = vld1q_s8(p + 48);
        for (int r = 0; r < rows; r++) {
            int32_t word;
            memcpy(&word, qa + r * Kp + k, 4);
            int8x16_t b = vreinterpretq_s8_s32(vdupq_n_s32(word));
            c[r][0] = vdotq_s32(c[r][0], b, w0);
            c[r][1] = vdotq_s32(c[r][1], b, w1);
            c[r][2] = vdotq_s32(c[r][2], b, w2);
            c[r][3] = vdotq_s32(c[r][3], b, w3);
        }
    }
    for (int r = 0; r < rows; r++) li_vnni_finish_neon(c[r], quarter, ws, as[r], bias, C + r * ldc, w);
}

#if defined(__ARM_FEATURE_MATMUL_INT8)
/* i8mm (the armv86 build only): smmla multiplies a 2x8 block of rows by an 8x2 block of columns into
   2x2 int32, twice sdot's products per instruction. The panels need no repack: zipping the 32-bit
   lanes of two consecutive 4-k groups gives 8 k of two columns; a pair of rows is read the same way. */
#define LI_VNNI_SMMLA 1

/* 8 k of two quantized rows (4 k and zeros past Kp when only one 4-k group is left) */
static inline int8x16_t li_smmla_rows(const uint8_t *r0, const uint8_t *r1, ptrdiff_t k, ptrdiff_t Kp) {
    int32_t w[4] = {0, 0, 0, 0};
    memcpy(&w[0], r0 + k, 4);
    memcpy(&w[2], r1 + k, 4);
    if (k + 8 <= Kp) { memcpy(&w[1], r0 + k + 4, 4); memcpy(&w[3], r1 + k + 4, 4); }
    return vreinterpretq_s8_s32(vld1q_s32(w));
}

/* up to 4 rows x 16 columns (one quarter of a panel): 2 row pairs x 8 column pairs of 2x2 accumulators */
static void li_vnni_tile_smmla(const uint8_t *qa, ptrdiff_t Kp, int rows, const int8_t *P, int quarter,
                               const float *as, const float *ws, const float *bias, float *C, ptrdiff_t ldc,
                               ptrdiff_t w) {
    const uint8_t *row[4];
    for (int r = 0; r < 4; r++) row[r] = qa + (r < rows ? r : 0) * Kp; /* missing rows repeat row 0, unused */
    int32x4_t c[2][8];
    for (int h = 0; h < 2; h++)
        for (int v = 0; v < 8; v++) c[h][v] = vdupq_n_s32(0);
    const int32x4_t none = vdupq_n_s32(0);
    for (ptrdiff_t k = 0; k < Kp; k += 8) {
        const int8_t *p = P + k * LI_VNNI_NR + 64 * quarter, *q = p + 4 * LI_VNNI_NR;
        int8x16_t a0 = li_smmla_rows(row[0], row[1], k, Kp), a1 = li_smmla_rows(row[2], row[3], k, Kp);
        int last = k + 8 > Kp; /* one 4-k group left: its partner is zero */
        for (int g = 0; g < 4; g++) { /* columns 4g .. 4g+3 of the quarter */
            int32x4_t lo = vreinterpretq_s32_s8(vld1q_s8(p + 16 * g));
            int32x4_t hi = last ? none : vreinterpretq_s32_s8(vld1q_s8(q + 16 * g));
            int8x16_t b01 = vreinterpretq_s8_s32(vzip1q_s32(lo, hi)), b23 = vreinterpretq_s8_s32(vzip2q_s32(lo, hi));
            c[0][2 * g] = vmmlaq_s32(c[0][2 * g], a0, b01);
            c[0][2 * g + 1] = vmmlaq_s32(c[0][2 * g + 1], a0, b23);
            c[1][2 * g] = vmmlaq_s32(c[1][2 * g], a1, b01);
            c[1][2 * g + 1] = vmmlaq_s32(c[1][2 * g + 1], a1, b23);
        }
    }
    for (int r = 0; r < rows; r++) { /* 2x2 blocks [r0c0 r0c1 r1c0 r1c1] -> 4 columns of row r */
        int32x4_t acc[4];
        for (int g = 0; g < 4; g++) {
            int64x2_t x = vreinterpretq_s64_s32(c[r / 2][2 * g]), y = vreinterpretq_s64_s32(c[r / 2][2 * g + 1]);
            acc[g] = vreinterpretq_s32_s64(r % 2 ? vzip2q_s64(x, y) : vzip1q_s64(x, y));
        }
        li_vnni_finish_neon(acc, quarter, ws, as[r], bias, C + r * ldc, w);
    }
}
#define LI_VNNI_TILE li_vnni_tile_smmla
#else
#define LI_VNNI_SMMLA 0
#define LI_VNNI_TILE li_vnni_tile_neon
#endif

#define LI_VNNI_TARGET

/* C[r, 0:w] for r < rows, one panel of the columns (li_vnni_gemm's inner loop): 4 rows a tile, each quarter. */
static inline void li_vnni_panel_rows(const uint8_t *qa, ptrdiff_t Kp, ptrdiff_t rows, const int8_t *P,
                                      const float *as, const float *ws, const float *b, float *C,
                                      ptrdiff_t ldc, ptrdiff_t w) {
    for (ptrdiff_t r = 0; r < rows; r += 4) {
        int n = rows - r < 4 ? (int)(rows - r) : 4;
        for (int quarter = 0; quarter < 4 && 16 * quarter < w; quarter++)
            LI_VNNI_TILE(qa + r * Kp, Kp, n, P, quarter, as + r, ws, b, C + r * ldc, ldc, w);
    }
}

#else /* no VNNI code here: never selected (cython_backend checks the CPU), fails loudly if it were */
#define LI_VNNI_COMPILED 0
#endif

#if LI_VNNI_COMPILED
/* C[m, 0:width] for m < M (see the top); ``scales``/``bias`` start at the first column.
   Rows go in blocks whose quantized copy stays in L1 (each panel then serves the whole
   block). Returns 0, or -1 if a large K needed memory that malloc refused. */
LI_VNNI_TARGET static int li_vnni_gemm(const float *A, ptrdiff_t M, ptrdiff_t K, ptrdiff_t lda,
                                       const int8_t *panels, const float *scales, ptrdiff_t width,
                                       float *C, ptrdiff_t ldc, const float *bias) {
    ptrdiff_t Kp = (K + 3) / 4 * 4;
    ptrdiff_t panel_bytes = Kp * LI_VNNI_NR + 4 * LI_VNNI_NR;
    ptrdiff_t mb = (LI_VNNI_STACK / (Kp > 0 ? Kp : 1)) / 4 * 4;
    mb = mb < 4 ? 4 : (mb > 256 ? 256 : mb);
    uint8_t stack[LI_VNNI_STACK] __attribute__((aligned(64)));
    float as[256];
    uint8_t *qa = stack;
    if (mb * Kp > LI_VNNI_STACK) {
        qa = (uint8_t *)malloc((size_t)(mb * Kp));
        if (!qa) { /* out of memory: NaN rather than wrong numbers */
            for (ptrdiff_t m = 0; m < M; m++)
                for (ptrdiff_t j = 0; j < width; j++) C[m * ldc + j] = __builtin_nanf("");
            return -1;
        }
    }
    for (ptrdiff_t m0 = 0; m0 < M; m0 += mb) {
        ptrdiff_t rows = M - m0 < mb ? M - m0 : mb;
        li_vnni_quantize_rows(A + m0 * lda, rows, K, lda, qa, Kp, as);
        for (ptrdiff_t j = 0; j < width; j += LI_VNNI_NR) {
            const int8_t *P = panels + (j / LI_VNNI_NR) * panel_bytes;
            ptrdiff_t w = width - j < LI_VNNI_NR ? width - j : LI_VNNI_NR;
            const float *b = bias ? bias + j : NULL;
            li_vnni_panel_rows(qa, Kp, rows, P, as, scales + j, b, C + m0 * ldc + j, ldc, w);
        }
    }
    if (qa != stack) free(qa);
    return 0;
}

#else
static int li_vnni_gemm(const float *A, ptrdiff_t M, ptrdiff_t K, ptrdiff_t lda, const int8_t *panels,
                        const float *scales, ptrdiff_t width, float *C, ptrdiff_t ldc, const float *bias) {
    (void)A; (void)M; (void)K; (void)lda; (void)panels; (void)scales; (void)width; (void)C; (void)ldc; (void)bias;
    return -1;
}
#endif

#endif /* LI_VNNI_H */
