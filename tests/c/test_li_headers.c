/* The recurrent kernels' C headers alone, without Python: built once per instruction set by
   tests/test_native_layout.py (cc -Inative, plus -mavx2 -mfma or -mavx512f where the CPU has them)
   and run; prints one line per failed check and exits non-zero on any. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "li_math.h"
#include "li_simd.h"
#include "li_vmath.h"
#include "li_gemm.h"
#include "li_cells.h"
#include "li_vnni.h"
#include "li_workers.h"

static int failures = 0;

static void check(int ok, const char *what, double got, double want) {
    if (!ok) {
        printf("FAIL %s: got %.9g, want %.9g\n", what, got, want);
        failures++;
    }
}

static int close_to(double got, double want, double rel, double abs_tol) {
    return fabs(got - want) <= abs_tol + rel * fabs(want);
}

/* scalar li_exp/li_tanh/li_sigmoid within a few float32 ulps of libm */
static void test_scalar_maths(void) {
    for (float x = -20.0f; x <= 20.0f; x += 0.0137f) {
        check(close_to(li_exp(x), exp((double)x), 4e-7, 0), "li_exp", li_exp(x), exp((double)x));
        check(close_to(li_tanh(x), tanh((double)x), 4e-7, 1e-9), "li_tanh", li_tanh(x), tanh((double)x));
        double s = 1.0 / (1.0 + exp(-(double)x));
        check(close_to(li_sigmoid(x), s, 4e-7, 1e-9), "li_sigmoid", li_sigmoid(x), s);
    }
    check(li_exp(1000.0f) < INFINITY && li_exp(-1000.0f) >= 0.0f, "li_exp clamps", li_exp(1000.0f), 0);
    check(isnan(li_tanh(NAN)), "li_tanh(nan)", li_tanh(NAN), NAN);
}

/* the vector maths (whole vectors, the 4-vector form and a tail) against the scalar one */
static void test_vector_maths(void) {
    enum { N = 4 * LI_VEC * 2 + 3 };
    float v[N], t[N], s[N];
    for (int i = 0; i < N; i++) v[i] = t[i] = s[i] = -9.0f + 18.0f * (float)i / N;
    li_tanh_n(t, N);
    li_sigmoid_n(s, N);
    for (int i = 0; i < N; i++) {
        check(close_to(t[i], li_tanh(v[i]), 2e-7, 1e-9), "li_tanh_n", t[i], li_tanh(v[i]));
        check(close_to(s[i], li_sigmoid(v[i]), 2e-7, 1e-9), "li_sigmoid_n", s[i], li_sigmoid(v[i]));
    }
    li_vf x = li_splat(0.5f), e = li_vexp(x), clamped = li_vclamp(li_splat(7.0f), 3.0f);
    float lanes[LI_VEC], c[LI_VEC];
    li_store(lanes, e);
    li_store(c, clamped);
    for (int i = 0; i < LI_VEC; i++) {
        check(close_to(lanes[i], exp(0.5), 4e-7, 0), "li_vexp", lanes[i], exp(0.5));
        check(c[i] == 3.0f, "li_vclamp", c[i], 3.0f);
    }
}

/* a tiny product through every micro-kernel: 1..4 rows, float, int8 and bf16 panels */
static void test_products(void) {
    enum { K = 7, NR = 2 * LI_VEC };
    float A[4 * K], B[K * NR], bias[NR], C[4 * NR], want[4 * NR], scale[NR];
    signed char Q[K * NR];
    uint16_t Qbf[K * NR];
    for (int i = 0; i < 4 * K; i++) A[i] = (float)((i * 7) % 11) - 5.0f;
    for (int i = 0; i < K * NR; i++) {
        Q[i] = (signed char)((i * 13) % 255 - 127);
        B[i] = (float)Q[i] * 0.25f;  /* exact in bf16 and as int8 * scale */
        uint32_t bits;
        memcpy(&bits, &B[i], 4);
        Qbf[i] = (uint16_t)(bits >> 16);
    }
    for (int j = 0; j < NR; j++) {
        bias[j] = (float)j;
        scale[j] = 0.25f;
    }
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < NR; j++) {
            double acc = bias[j];
            for (int k = 0; k < K; k++) acc += (double)A[r * K + k] * B[k * NR + j];
            want[r * NR + j] = (float)acc;
        }
    li_tile4(A, K, K, B, NR, C, NR, bias);
    for (int i = 0; i < 4 * NR; i++) check(close_to(C[i], want[i], 1e-6, 1e-5), "li_tile4", C[i], want[i]);
    for (int rows = 1; rows <= 3; rows++) {
        li_tile_rows(A, K, rows, K, B, C, NR, bias);
        for (int i = 0; i < rows * NR; i++) check(close_to(C[i], want[i], 1e-6, 1e-5), "li_tile_rows", C[i], want[i]);
    }
    li_tile1_q(A, K, Q, C, scale, bias);
    for (int j = 0; j < NR; j++) check(close_to(C[j], want[j], 1e-6, 1e-5), "li_tile1_q", C[j], want[j]);
    li_tile1_bf(A, K, Qbf, C, bias);
    for (int j = 0; j < NR; j++) check(close_to(C[j], want[j], 1e-6, 1e-5), "li_tile1_bf", C[j], want[j]);
}

/* li_lstm_cells_std against the cell written out with the scalar maths (no clip, no peepholes) */
static void test_lstm_cells(void) {
    enum { H = 2 * LI_VEC + 3 };
    float x[4 * H], g[4 * H], h[H], c[H], c0[H], zeros[H] = {0};
    for (int i = 0; i < 4 * H; i++) {
        x[i] = 0.1f * (float)(i % 17) - 0.8f;
        g[i] = 0.05f * (float)(i % 13) - 0.3f;
    }
    for (int j = 0; j < H; j++) c[j] = c0[j] = 0.2f * (float)(j % 5) - 0.4f;
    ptrdiff_t done = li_lstm_cells_std(x, g, h, c, zeros, zeros, zeros, H, H, INFINITY);
    check(done == H, "li_lstm_cells_std units", (double)done, H);
    for (int j = 0; j < H; j++) {
        float i_ = li_sigmoid(x[j] + g[j]), f = li_sigmoid(x[H + j] + g[H + j]);
        float cand = li_tanh(x[2 * H + j] + g[2 * H + j]), o = li_sigmoid(x[3 * H + j] + g[3 * H + j]);
        float cn = f * c0[j] + i_ * cand, hn = li_tanh(cn) * o;
        check(close_to(c[j], cn, 1e-6, 1e-6), "li_lstm_cells_std c", c[j], cn);
        check(close_to(h[j], hn, 1e-6, 1e-6), "li_lstm_cells_std h", h[j], hn);
    }
}

static int add_one(void *arg) {
    *(int *)arg += 1;
    return 7;
}

/* the pool's worker thread runs posted jobs, one after another, and returns their status; one
   call holds the pool at a time */
static void test_worker(void) {
    li_worker *w = li_pool_take(1);
    int count = 0;
    check(w != NULL, "li_pool_take", 0, 0);
    check(li_pool_take(1) == NULL, "li_pool_take while held", 0, 0);
    for (int i = 0; i < 100; i++) {
        li_worker_post(w, add_one, &count);
        check(li_worker_wait(w) == 7, "li_worker_wait status", 0, 7);
    }
    check(count == 100, "li_worker jobs run", count, 100);
    li_pool_give();
    check(li_pool_take(2) == w, "li_pool_take after li_pool_give", 0, 0);
    li_pool_give();
    check(li_pool_take(LI_POOL_MAX + 1) == NULL, "li_pool_take past LI_POOL_MAX", 0, 0);
}

int main(void) {
    test_scalar_maths();
    test_vector_maths();
    test_products();
    test_lstm_cells();
    test_worker();
    printf("%s %s: %d failures\n", LI_ISA, failures ? "FAILED" : "ok", failures);
    return failures != 0;
}
