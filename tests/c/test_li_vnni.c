/* The dynamic int8 product (native/li_vnni.h: AVX-512 VNNI, Arm sdot or i8mm smmla) against a naive one on
   random shapes, in the panel layout cython_backend.pack_vnni_panels writes. Driven by
   tests/test_native_layout.py where the CPU runs that path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "li_vnni.h"
int main(void) {
    int fails = 0;
    for (int trial = 0; trial < 30; trial++) {
        int M = 1 + rand() % 9, K = 1 + rand() % 70, W = 1 + rand() % 150;
        int Kp = (K + 3) / 4 * 4, npan = (W + 63) / 64, pb = Kp * 64 + 256;
        float *A = malloc(sizeof(float) * M * K), *C = calloc(M * W, 4), *ws = malloc(4 * W), *bias = malloc(4 * W);
        signed char *Q = malloc(K * W), *P = calloc(npan, pb);
        for (int i = 0; i < M * K; i++) A[i] = (rand() / (float)RAND_MAX - 0.5f) * 4;
        for (int i = 0; i < K * W; i++) Q[i] = (signed char)(rand() % 255 - 127);
        for (int j = 0; j < W; j++) { ws[j] = rand() / (float)RAND_MAX * 0.1f; bias[j] = rand() / (float)RAND_MAX; }
        for (int j = 0; j < W; j++) {
            int p = j / 64, c = j % 64; int colsum = 0;
            for (int k = 0; k < K; k++) { P[p * pb + (k / 4) * 256 + c * 4 + k % 4] = Q[k * W + j]; colsum += Q[k * W + j]; }
            int *corr = (int *)(P + p * pb + Kp * 64); corr[c] = 128 * colsum;
        }
        li_vnni_gemm(A, M, K, K, P, ws, W, C, W, bias);
        for (int m = 0; m < M; m++) {
            float amax = 0; for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(A[m * K + k]));
            float as = amax / 127, inv = amax > 0 ? 127 / amax : 0;
            for (int j = 0; j < W; j++) {
                long acc = 0; for (int k = 0; k < K; k++) acc += (long)rintf(A[m * K + k] * inv) * Q[k * W + j];
                float want = acc * (as * ws[j]) + bias[j];
                if (fabsf(C[m * W + j] - want) > 1e-4f * (1 + fabsf(want))) { if (fails < 5) printf("M%d K%d W%d m%d j%d got %g want %g\n", M, K, W, m, j, C[m*W+j], want); fails++; }
            }
        }
        free(A); free(C); free(ws); free(bias); free(Q); free(P);
    }
#if defined(LI_VNNI_SMMLA) && LI_VNNI_SMMLA
    printf("product=smmla ");
#endif
    printf("compiled=%d fails=%d\n", LI_VNNI_COMPILED, fails);
    return fails != 0;
}
