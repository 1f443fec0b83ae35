/* Dense rows for a compiled program's heads: out[m, :] = A[m, :] @ W + bias.
   The bias is added to the finished sum (not its start), so the plan's MatMul kernel (which calls
   li_dense_rows too) followed by its Add gives the same bits as a program's fused instruction.
   Few outputs (N < LI_DENSE_ROWS_FROM) take dot products with W^T (the weights given as W^T,
   [N, K]), in 16 independent partial sums that the compiler turns into vector lanes (a single
   running sum is one latency-bound chain); more outputs update the output row with each
   A[m, k] * W[k, :] (the weights given as W, [K, N]; vectorized over N).
   Built for AVX-512, AVX2 and the baseline, picked by the CPU at load (GCC/Clang on x86-64). */
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
static void li_dense_rows(const float *A, Py_ssize_t M, Py_ssize_t K, Py_ssize_t lda_bytes,
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

#endif
