/* Dense rows for a compiled program's heads: out[m, :] = A[m, :] @ W + bias.
   The bias is added to the finished sum (not its start), so the plan's MatMul kernel (which calls
   li_dense_rows too) followed by its Add gives the same bits as a program's fused instruction.
   Few outputs (N < LI_DENSE_ROWS_FROM) take dot products with W^T (the weights given as W^T,
   [N, K]), in 16 independent partial sums that the compiler turns into vector lanes (a single
   running sum is one latency-bound chain); more outputs update the output row with each
   A[m, k] * W[k, :] (the weights given as W, [K, N]; vectorized over N).
   Built for AVX-512, AVX2 and the baseline, picked by the CPU at load (GCC/Clang on x86-64); on
   AVX-512 the many-output case runs 4 rows x 48 outputs at a time with the sums in registers (the
   plain loop stores each output row back after every k), fewer rows alone at the end. */
#ifndef LI_DENSE_H
#define LI_DENSE_H
#include <Python.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LI_DENSE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LI_DENSE_CLONES
#endif

#define LI_DOT_LANES 16
#define LI_DENSE_ROWS_FROM 16

static inline float li_dot(const float *restrict a, const float *restrict b, Py_ssize_t K) {
    float acc[LI_DOT_LANES] = {0};
    Py_ssize_t k = 0;
    for (; k + LI_DOT_LANES <= K; k += LI_DOT_LANES)
        for (int j = 0; j < LI_DOT_LANES; j++)
            acc[j] += a[k + j] * b[k + j];
    float sum = 0.0f;
    for (int j = 0; j < LI_DOT_LANES; j++)
        sum += acc[j];
    for (; k < K; k++)
        sum += a[k] * b[k];
    return sum;
}

LI_DENSE_CLONES
static void li_dense_rows_any(const float *A, Py_ssize_t M, Py_ssize_t K, Py_ssize_t lda_bytes,
                              const float *restrict w, const float *restrict bias, float *restrict out, Py_ssize_t N) {
    const float *restrict wt = w;
    for (Py_ssize_t m = 0; m < M; m++) {
        const float *restrict a = (const float *)((const char *)A + m * lda_bytes);
        float *restrict o = out + m * N;
        if (N < LI_DENSE_ROWS_FROM) {
            for (Py_ssize_t n = 0; n < N; n++)
                o[n] = li_dot(a, wt + n * K, K) + (bias ? bias[n] : 0.0f);
            continue;
        }
        for (Py_ssize_t n = 0; n < N; n++)
            o[n] = 0.0f;
        for (Py_ssize_t k = 0; k < K; k++) {
            const float x = a[k];
            const float *restrict wk = w + k * N;
            for (Py_ssize_t n = 0; n < N; n++)
                o[n] += x * wk[n];
        }
        if (bias)  /* after the sum, as the plan's MatMul then Add rounds it: same bits either way */
            for (Py_ssize_t n = 0; n < N; n++)
                o[n] += bias[n];
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define LI_DENSE_BLOCK_ROWS 4
#define LI_DENSE_BLOCK_VECTORS 3

static inline __mmask16 li_dense_lanes(Py_ssize_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* One block of ROWS (<= 4) rows and 48 outputs of li_dense_rows_avx512: ROWS x 3 running sums in
   registers, one FMA per weight vector and row per k (masked loads take the last outputs), the bias
   added to the finished sum, as in the plain loop. Inlined with ROWS a constant, so that a block of
   fewer rows (batch 1: a one-frame step's head) does only its own multiply-adds; each row's sums
   take the same steps whatever the block, so the bits do not depend on the batch. */
__attribute__((target("avx512f,fma"), always_inline))
static inline void li_dense_block_avx512(const int ROWS, const float *const *a, Py_ssize_t K,
                                         const float *restrict w, const float *restrict bias,
                                         float *restrict out, Py_ssize_t N, Py_ssize_t n0) {
    __mmask16 lanes[LI_DENSE_BLOCK_VECTORS];
    for (int v = 0; v < LI_DENSE_BLOCK_VECTORS; v++)
        lanes[v] = li_dense_lanes(N - n0 - 16 * v);
    __m512 sum[LI_DENSE_BLOCK_ROWS][LI_DENSE_BLOCK_VECTORS];
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < LI_DENSE_BLOCK_VECTORS; v++)
            sum[r][v] = _mm512_setzero_ps();
    const float *restrict wk = w + n0;
    for (Py_ssize_t k = 0; k < K; k++, wk += N) {
        __m512 wv[LI_DENSE_BLOCK_VECTORS];
        for (int v = 0; v < LI_DENSE_BLOCK_VECTORS; v++)
            wv[v] = _mm512_maskz_loadu_ps(lanes[v], wk + 16 * v);
        for (int r = 0; r < ROWS; r++) {
            const __m512 x = _mm512_set1_ps(a[r][k]);
            for (int v = 0; v < LI_DENSE_BLOCK_VECTORS; v++)
                sum[r][v] = _mm512_fmadd_ps(x, wv[v], sum[r][v]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        float *restrict o = out + r * N + n0;
        for (int v = 0; v < LI_DENSE_BLOCK_VECTORS; v++) {
            __m512 value = sum[r][v];
            if (bias)
                value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(lanes[v], bias + n0 + 16 * v));
            _mm512_mask_storeu_ps(o + 16 * v, lanes[v], value);
        }
    }
}

/* out[m, :] = A[m, :] @ W (+ bias), W [K, N] with N >= LI_DENSE_ROWS_FROM: blocks of 4 rows (the last
   one 1-3) and 48 outputs (li_dense_block_avx512). */
__attribute__((target("avx512f,fma")))
static void li_dense_rows_avx512(const float *A, Py_ssize_t M, Py_ssize_t K, Py_ssize_t lda_bytes,
                                 const float *restrict w, const float *restrict bias, float *restrict out,
                                 Py_ssize_t N) {
    for (Py_ssize_t m0 = 0; m0 < M; m0 += LI_DENSE_BLOCK_ROWS) {
        const Py_ssize_t rows = M - m0 < LI_DENSE_BLOCK_ROWS ? M - m0 : LI_DENSE_BLOCK_ROWS;
        const float *a[LI_DENSE_BLOCK_ROWS];
        for (Py_ssize_t r = 0; r < rows; r++)
            a[r] = (const float *)((const char *)A + (m0 + r) * lda_bytes);
        float *restrict o = out + m0 * N;
        for (Py_ssize_t n0 = 0; n0 < N; n0 += 16 * LI_DENSE_BLOCK_VECTORS) {
            switch (rows) {
            case 1: li_dense_block_avx512(1, a, K, w, bias, o, N, n0); break;
            case 2: li_dense_block_avx512(2, a, K, w, bias, o, N, n0); break;
            case 3: li_dense_block_avx512(3, a, K, w, bias, o, N, n0); break;
            default: li_dense_block_avx512(4, a, K, w, bias, o, N, n0); break;
            }
        }
    }
}

static inline int li_dense_has_avx512(void) {
    static int known = -1;
    if (known < 0)
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    return known;
}
#endif

static inline void li_dense_rows(const float *A, Py_ssize_t M, Py_ssize_t K, Py_ssize_t lda_bytes,
                                 const float *restrict w, const float *restrict bias, float *restrict out,
                                 Py_ssize_t N) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    if (N >= LI_DENSE_ROWS_FROM && li_dense_has_avx512()) {
        li_dense_rows_avx512(A, M, K, lda_bytes, w, bias, out, N);
        return;
    }
#endif
    li_dense_rows_any(A, M, K, lda_bytes, w, bias, out, N);
}

#endif
