/* Whole recurrent cells (LSTM, GRU) on vectors of hidden units, for the default activations,
   the fused one-step LSTM of 4 batch rows and the int8 LSTM step at batch 1: _rnn_core.pxi runs
   anything else through per-activation passes. */
#ifndef LI_CELLS_H
#define LI_CELLS_H

#include "li_simd.h"
#include "li_vmath.h"

/* Whole cells in one pass for the default activations, LI_U vectors of units at a time and then
   the 1..3 vectors left together (their dependency chains overlap: at H = 32 a step's cells are
   its critical path), so that the gates are never stored and reloaded. The same maths, term for
   term, as the passes (bit-identical results); each returns the units it did (a multiple of
   LI_VEC, all of them for the LSTM), the caller runs the rest through the passes. */

/* Runs block(j, k) over n units: LI_U vectors at a time, then the k < LI_U whole vectors left
   in one call (block is always inlined: k is a constant in each call) */
#define LI_BLOCKS(n, block)                                                        \
    ptrdiff_t j = 0;                                                               \
    for (; j + LI_U * LI_VEC <= (n); j += LI_U * LI_VEC) block(j, LI_U);           \
    switch (((n) - j) / LI_VEC) {                                                  \
    case 3: block(j, 3); j += 3 * LI_VEC; break;                                   \
    case 2: block(j, 2); j += 2 * LI_VEC; break;                                   \
    case 1: block(j, 1); j += LI_VEC; break;                                       \
    }

/* LSTM cells (sigmoid/tanh/tanh) of the k vectors of units at j, gates S apart in x and g */
static inline __attribute__((always_inline)) void li_lstm_cells_k(const float *x, const float *g, float *h, float *c,
                                                                 const float *pi, const float *pf, const float *po,
                                                                 ptrdiff_t j, ptrdiff_t S, float clip, const int k) {
    li_vf cv[LI_U], gi[LI_U], gf[LI_U], gc[LI_U], go[LI_U];
    LI_EACH_OF(k) cv[u] = LI_AT(c, j);
    LI_EACH_OF(k) gi[u] = li_vclamp(LI_AT(x, j) + LI_AT(g, j) + LI_AT(pi, j) * cv[u], clip);
    LI_EACH_OF(k) gf[u] = li_vclamp(LI_AT(x, S + j) + LI_AT(g, S + j) + LI_AT(pf, j) * cv[u], clip);
    LI_EACH_OF(k) gc[u] = li_vclamp(LI_AT(x, 2 * S + j) + LI_AT(g, 2 * S + j), clip);
    li_vsigmoid_k(gi, k);
    li_vsigmoid_k(gf, k);
    li_vtanh_k(gc, k);
    LI_EACH_OF(k) cv[u] = gf[u] * cv[u] + gi[u] * gc[u];
    LI_EACH_OF(k) go[u] = li_vclamp(LI_AT(x, 3 * S + j) + LI_AT(g, 3 * S + j) + LI_AT(po, j) * cv[u], clip);
    LI_EACH_OF(k) li_store(c + j + u * LI_VEC, cv[u]);
    li_vsigmoid_k(go, k);
    li_vtanh_k(cv, k);
    LI_EACH_OF(k) li_store(h + j + u * LI_VEC, cv[u] * go[u]);
}

/* LSTM, sigmoid/tanh/tanh, no input_forget: gates S apart in x and g; all n units */
static inline ptrdiff_t li_lstm_cells_std(const float *x, const float *g, float *h, float *c,
                                          const float *pi, const float *pf, const float *po,
                                          ptrdiff_t n, ptrdiff_t S, float clip) {
#define LI_LSTM_BLOCK(j, k) li_lstm_cells_k(x, g, h, c, pi, pf, po, j, S, clip, k)
    LI_BLOCKS(n, LI_LSTM_BLOCK)
#undef LI_LSTM_BLOCK
    if (j < n) {  /* fewer units than a vector (H = 8 on AVX-512): one vector of zero-padded copies */
        ptrdiff_t m = n - j, q;
        float tx[4 * LI_VEC] = {0}, tg[4 * LI_VEC] = {0}, tp[3 * LI_VEC] = {0}, tc[LI_VEC] = {0}, th[LI_VEC];
        for (q = 0; q < 4; q++) {
            memcpy(tx + q * LI_VEC, x + q * S + j, m * sizeof(float));
            memcpy(tg + q * LI_VEC, g + q * S + j, m * sizeof(float));
        }
        memcpy(tp, pi + j, m * sizeof(float));
        memcpy(tp + LI_VEC, pf + j, m * sizeof(float));
        memcpy(tp + 2 * LI_VEC, po + j, m * sizeof(float));
        memcpy(tc, c + j, m * sizeof(float));
        li_lstm_cells_k(tx, tg, th, tc, tp, tp + LI_VEC, tp + 2 * LI_VEC, 0, LI_VEC, clip, 1);
        memcpy(c + j, tc, m * sizeof(float));
        memcpy(h + j, th, m * sizeof(float));
        j = n;
    }
    return j;
}

/* One LSTM step of one batch row (sigmoid/tanh/tanh, no input_forget) for a small H, a multiple
   of LI_VEC: h R^T accumulated in 4H / LI_VEC registers over k < H, straight from the product
   panels, then the cells on those registers. At batch 1 a step of a small H is one chain of
   product and cells; the panel-by-panel product (a pass per panel, each reducing its own
   partial sums) and the gates stored and read back lengthen it. x: the step's input projections
   (bias included), gates H apart; peep: pi, pf, po H apart; h_t into hn and y (the output row).
   The cells are li_lstm_cells_k's maths on registers: handing it the sums through memory made the
   step slower (benchmarks/RESULTS.md, session 13). */
#if LI_VREGS >= 32
#define LI_SMALL_STEP 1
#define LI_SMALL_NA 12  /* most accumulators: H <= 3 LI_VEC (at 16 the cells spill beside them, and R leaves L1) */
static inline __attribute__((always_inline)) void li_lstm_small_k(const float *x, const float *hp, float *hn,
                                                                 float *c, float *y, const float *rpanels,
                                                                 ptrdiff_t H, const float *peep, float clip,
                                                                 const int na) {
    const ptrdiff_t nr = 2 * LI_VEC;
    const int nu = na / 4;  /* vectors of units per gate */
    li_vf acc[LI_SMALL_NA], cv[LI_U], gi[LI_U], gf[LI_U], gc[LI_U], go[LI_U];
    for (int a = 0; a < na; a++)
        acc[a] = li_splat(0.0f);
    for (ptrdiff_t k = 0; k < H; k++) {  /* accumulator a: columns a*LI_VEC.., in panel a/2 */
        li_vf hk = li_splat(hp[k]);
        for (int a = 0; a < na; a++)
            acc[a] += hk * li_load(rpanels + (a / 2) * H * nr + k * nr + (a % 2) * LI_VEC);
    }
    LI_EACH_OF(nu) cv[u] = LI_AT(c, 0);
    LI_EACH_OF(nu) gi[u] = li_vclamp(LI_AT(x, 0) + acc[u] + LI_AT(peep, 0) * cv[u], clip);
    LI_EACH_OF(nu) gf[u] = li_vclamp(LI_AT(x, H) + acc[nu + u] + LI_AT(peep, H) * cv[u], clip);
    LI_EACH_OF(nu) gc[u] = li_vclamp(LI_AT(x, 2 * H) + acc[2 * nu + u], clip);
    li_vsigmoid_k(gi, nu);
    li_vsigmoid_k(gf, nu);
    li_vtanh_k(gc, nu);
    LI_EACH_OF(nu) cv[u] = gf[u] * cv[u] + gi[u] * gc[u];
    LI_EACH_OF(nu) go[u] = li_vclamp(LI_AT(x, 3 * H) + acc[3 * nu + u] + LI_AT(peep, 2 * H) * cv[u], clip);
    LI_EACH_OF(nu) li_store(c + u * LI_VEC, cv[u]);
    li_vsigmoid_k(go, nu);
    li_vtanh_k(cv, nu);
    LI_EACH_OF(nu) cv[u] *= go[u];
    LI_EACH_OF(nu) li_store(hn + u * LI_VEC, cv[u]);
    LI_EACH_OF(nu) li_store(y + u * LI_VEC, cv[u]);
}
static inline int li_small_step_fits(ptrdiff_t H) {
    return H > 0 && H % LI_VEC == 0 && 4 * H <= LI_SMALL_NA * LI_VEC;
}
/* The same for a GRU step with linear_before_reset (sigmoid, tanh): z and r from the panels of R^T's
   columns [0, 2H) (pzr), the candidate's h R_n^T from those of [2H, 3H) (pn); rbh: R's candidate
   bias; nu = H / LI_VEC */
static inline __attribute__((always_inline)) void li_gru_lbr_small_k(const float *x, const float *hp, float *hn,
                                                                    float *y, const float *pzr, const float *pn,
                                                                    ptrdiff_t H, const float *rbh, float clip,
                                                                    const int nu) {
    const ptrdiff_t nr = 2 * LI_VEC;
    li_vf azr[2 * LI_U], an[LI_U], z[LI_U], r[LI_U], cand[LI_U];
    for (int a = 0; a < 2 * nu; a++)
        azr[a] = li_splat(0.0f);
    for (int a = 0; a < nu; a++)
        an[a] = li_splat(0.0f);
    for (ptrdiff_t k = 0; k < H; k++) {
        li_vf hk = li_splat(hp[k]);
        for (int a = 0; a < 2 * nu; a++)
            azr[a] += hk * li_load(pzr + (a / 2) * H * nr + k * nr + (a % 2) * LI_VEC);
        for (int a = 0; a < nu; a++)
            an[a] += hk * li_load(pn + (a / 2) * H * nr + k * nr + (a % 2) * LI_VEC);
    }
    LI_EACH_OF(nu) z[u] = li_vclamp(LI_AT(x, 0) + azr[u], clip);
    LI_EACH_OF(nu) r[u] = li_vclamp(LI_AT(x, H) + azr[nu + u], clip);
    li_vsigmoid_k(z, nu);
    li_vsigmoid_k(r, nu);
    LI_EACH_OF(nu) cand[u] = li_vclamp(LI_AT(x, 2 * H) + r[u] * (an[u] + LI_AT(rbh, 0)), clip);
    li_vtanh_k(cand, nu);
    LI_EACH_OF(nu) cand[u] = (1.0f - z[u]) * cand[u] + z[u] * LI_AT(hp, 0);
    LI_EACH_OF(nu) li_store(hn + u * LI_VEC, cand[u]);
    LI_EACH_OF(nu) li_store(y + u * LI_VEC, cand[u]);
}
static void li_gru_lbr_step1_small(const float *x, const float *hp, float *hn, float *y, const float *pzr,
                                   const float *pn, ptrdiff_t H, const float *rbh, float clip) {
    switch (H / LI_VEC) {
    case 1: li_gru_lbr_small_k(x, hp, hn, y, pzr, pn, H, rbh, clip, 1); break;
    case 2: li_gru_lbr_small_k(x, hp, hn, y, pzr, pn, H, rbh, clip, 2); break;
    default: li_gru_lbr_small_k(x, hp, hn, y, pzr, pn, H, rbh, clip, 3); break;
    }
}
static void li_lstm_step1_small(const float *x, const float *hp, float *hn, float *c, float *y,
                                const float *rpanels, ptrdiff_t H, const float *peep, float clip) {
    switch (4 * H / LI_VEC) {
    case 4: li_lstm_small_k(x, hp, hn, c, y, rpanels, H, peep, clip, 4); break;
    case 8: li_lstm_small_k(x, hp, hn, c, y, rpanels, H, peep, clip, 8); break;
    default: li_lstm_small_k(x, hp, hn, c, y, rpanels, H, peep, clip, 12); break;
    }
}
#else
#define LI_SMALL_STEP 0
static inline int li_small_step_fits(ptrdiff_t H) { return 0; }
static inline void li_lstm_step1_small(const float *x, const float *hp, float *hn, float *c, float *y,
                                       const float *rpanels, ptrdiff_t H, const float *peep, float clip) {}
static inline void li_gru_lbr_step1_small(const float *x, const float *hp, float *hn, float *y, const float *pzr,
                                          const float *pn, ptrdiff_t H, const float *rbh, float clip) {}
#endif
/* Directions of sequence calls whose active steps took li_lstm_step1_small or li_gru_lbr_step1_small,
   counted so that tests can prove the path ran */
static unsigned long long li_small_steps_run = 0;
static inline void li_count_small_steps(void) { __atomic_fetch_add(&li_small_steps_run, 1, __ATOMIC_RELAXED); }

/* A whole LSTM step (T = 1) of 4 batch rows for the LI_VEC units at j of every gate, where 32
   vector registers hold 4 rows x 4 gates of accumulators and 4 weight vectors: bias + x W^T +
   h R^T accumulated in registers over k < I then k < H, straight from the product panels (gate
   g's units at column g*H + j, H a multiple of LI_VEC), then the cells on the 4 rows at once.
   Rows whose bit in ``store`` is clear compute but store nothing (a 4-row tile's padding, or a
   row that sequence_lens ends before the step). ``peep`` NULL: no peepholes. */
#if LI_VREGS >= 32 && LI_FLOAT_FLOOR
#define LI_STEP_FUSED 1
static inline void li_lstm_step4(const float *const *x, const float *const *h, const float *const *c,
                                 ptrdiff_t I, ptrdiff_t H, ptrdiff_t j, const float *wpanels,
                                 const float *rpanels, const float *bias, const float *peep, float clip,
                                 int clipped, int store, float *const *y, float *const *cn) {
    const ptrdiff_t nr = 2 * LI_VEC;
    const float *wg[4], *rg[4];
    li_vf acc[4][4];
    for (int g = 0; g < 4; g++) {
        ptrdiff_t n = g * H + j;  /* column of W^T / R^T: panel n / nr, offset n % nr */
        wg[g] = wpanels + (n / nr) * I * nr + n % nr;
        rg[g] = rpanels + (n / nr) * H * nr + n % nr;
        li_vf b = li_load(bias + n);
        for (int r = 0; r < 4; r++) acc[r][g] = b;
    }
    const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    for (ptrdiff_t k = 0; k < I; k++) {
        li_vf w0 = li_load(wg[0] + k * nr), w1 = li_load(wg[1] + k * nr);
        li_vf w2 = li_load(wg[2] + k * nr), w3 = li_load(wg[3] + k * nr);
        float s0 = x0[k], s1 = x1[k], s2 = x2[k], s3 = x3[k];
        acc[0][0] += s0 * w0; acc[0][1] += s0 * w1; acc[0][2] += s0 * w2; acc[0][3] += s0 * w3;
        acc[1][0] += s1 * w0; acc[1][1] += s1 * w1; acc[1][2] += s1 * w2; acc[1][3] += s1 * w3;
        acc[2][0] += s2 * w0; acc[2][1] += s2 * w1; acc[2][2] += s2 * w2; acc[2][3] += s2 * w3;
        acc[3][0] += s3 * w0; acc[3][1] += s3 * w1; acc[3][2] += s3 * w2; acc[3][3] += s3 * w3;
    }
    const float *h0 = h[0], *h1 = h[1], *h2 = h[2], *h3 = h[3];
    for (ptrdiff_t k = 0; k < H; k++) {
        li_vf w0 = li_load(rg[0] + k * nr), w1 = li_load(rg[1] + k * nr);
        li_vf w2 = li_load(rg[2] + k * nr), w3 = li_load(rg[3] + k * nr);
        float s0 = h0[k], s1 = h1[k], s2 = h2[k], s3 = h3[k];
        acc[0][0] += s0 * w0; acc[0][1] += s0 * w1; acc[0][2] += s0 * w2; acc[0][3] += s0 * w3;
        acc[1][0] += s1 * w0; acc[1][1] += s1 * w1; acc[1][2] += s1 * w2; acc[1][3] += s1 * w3;
        acc[2][0] += s2 * w0; acc[2][1] += s2 * w1; acc[2][2] += s2 * w2; acc[2][3] += s2 * w3;
        acc[3][0] += s3 * w0; acc[3][1] += s3 * w1; acc[3][2] += s3 * w2; acc[3][3] += s3 * w3;
    }
    li_vf cv[LI_U], gi[LI_U], gf[LI_U], gc[LI_U], go[LI_U];
    LI_EACH cv[u] = li_load(c[u] + j);
    LI_EACH gi[u] = acc[u][0];
    LI_EACH gf[u] = acc[u][1];
    LI_EACH gc[u] = acc[u][2];
    if (peep) {
        li_vf pi = li_load(peep + j), pf = li_load(peep + H + j);
        LI_EACH gi[u] += pi * cv[u];
        LI_EACH gf[u] += pf * cv[u];
    }
    if (clipped) {
        LI_EACH gi[u] = li_vclamp(gi[u], clip);
        LI_EACH gf[u] = li_vclamp(gf[u], clip);
        LI_EACH gc[u] = li_vclamp(gc[u], clip);
    }
    li_vsigmoid_fast_u(gi);
    li_vsigmoid_fast_u(gf);
    li_vtanh_fast_u(gc);
    LI_EACH cv[u] = gf[u] * cv[u] + gi[u] * gc[u];
    LI_EACH go[u] = acc[u][3];
    if (peep) {
        li_vf po = li_load(peep + 2 * H + j);
        LI_EACH go[u] += po * cv[u];
    }
    if (clipped) {
        LI_EACH go[u] = li_vclamp(go[u], clip);
    }
    LI_EACH if (store >> u & 1) li_store(cn[u] + j, cv[u]);
    li_vsigmoid_fast_u(go);
    li_vtanh_fast_u(cv);
    LI_EACH if (store >> u & 1) li_store(y[u] + j, cv[u] * go[u]);
}
#else
#define LI_STEP_FUSED 0
static inline void li_lstm_step4(const float *const *x, const float *const *h, const float *const *c,
                                 ptrdiff_t I, ptrdiff_t H, ptrdiff_t j, const float *wpanels,
                                 const float *rpanels, const float *bias, const float *peep, float clip,
                                 int clipped, int store, float *const *y, float *const *cn) {}
#endif

/* One-step calls that took li_lstm_step4, counted so that tests can prove the path ran */
static unsigned long long li_fused_steps_run = 0;
static inline void li_count_fused_step(void) { __atomic_fetch_add(&li_fused_steps_run, 1, __ATOMIC_RELAXED); }

/* The int8 LSTM step at batch 1 (li_vnni_lstm_step1, below): AVX-512 builds on x86-64 only */
#if LI_ISA_AVX512 && LI_FLOAT_FLOOR && defined(__x86_64__)
#include "li_vnni.h"
#endif
#if LI_ISA_AVX512 && LI_FLOAT_FLOOR && defined(__x86_64__) && LI_VNNI_COMPILED
#define LI_VNNI_STEP 1
/* The int8 step's sigmoid and tanh, cheaper than li_vmath.h's fast ones (the cells are bound by
   vector arithmetic): e^r on |r| <= ln2/2 of degree 4 (2.9e-6 relative; the int8 path's error
   is ~1e-3), sigmoid's negation folded into the reduction, one-sided clamps (the other side
   underflows to 0 as it should; NaN stays NaN). With finite weights and biases a gate is finite
   or NaN (the quantized products turn an inf input into NaN); an inf bias would give NaN where
   the float cells give 0 or 1. */
static inline __attribute__((always_inline)) li_vf li_vnni_exp_poly(li_vf r) {
    li_vf p = 0.041513849049806595f * r + 0.16787473857402802f;
    p = p * r + 0.5000301599502563f;
    p = p * r + 0.9999668598175049f;
    return p * r + 1.0f;
}
static inline __attribute__((always_inline)) void li_vnni_sigmoid_u(li_vf *x) {
    li_vf nf[LI_U], r[LI_U], p[LI_U];
    LI_EACH x[u] = (li_vf)_mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)x[u]);
    LI_EACH nf[u] = li_vfloor(x[u] * -1.4426950408889634f + 0.5f); /* e^-x = 2^nf e^-r */
    LI_EACH r[u] = x[u] + nf[u] * 0.6931471805599453f;              /* r = x + nf ln2 */
    LI_EACH {                                                         /* e^-r: odd terms negated */
        p[u] = 0.041513849049806595f * r[u] - 0.16787473857402802f;
        p[u] = p[u] * r[u] + 0.5000301599502563f;
        p[u] = p[u] * r[u] - 0.9999668598175049f;
        p[u] = p[u] * r[u] + 1.0f;
    }
    LI_EACH x[u] = li_vrecip(1.0f + li_vscale2n(p[u], nf[u]));
}
static inline __attribute__((always_inline)) void li_vnni_tanh_u(li_vf *x) {
    li_vf a[LI_U], nf[LI_U], r[LI_U];
    LI_EACH a[u] = (li_vf)_mm512_min_ps(_mm512_set1_ps(44.0f), (__m512)li_vabs(x[u]));
    LI_EACH nf[u] = li_vfloor(a[u] * 2.8853900817779268f + 0.5f); /* e^2a = 2^nf e^r */
    LI_EACH r[u] = (a[u] + a[u]) - nf[u] * 0.6931471805599453f;
    LI_EACH x[u] = li_vsign_of(1.0f - 2.0f * li_vrecip(li_vscale2n(li_vnni_exp_poly(r[u]), nf[u]) + 1.0f), x[u]);
}
/* cells of the LI_U vectors of units at j (peepholes pi/pf/po, zeros where the node has none) */
static inline __attribute__((always_inline)) void li_lstm_cells_fast_u(const float *x, const float *g, float *h,
                                                                      float *c, const float *pi, const float *pf,
                                                                      const float *po, float *y, ptrdiff_t j,
                                                                      ptrdiff_t S, float clip, int clipped) {
    li_vf cv[LI_U], gi[LI_U], gf[LI_U], gc[LI_U], go[LI_U];
    LI_EACH cv[u] = LI_AT(c, j);
    LI_EACH gi[u] = LI_AT(x, j) + LI_AT(g, j) + LI_AT(pi, j) * cv[u];
    LI_EACH gf[u] = LI_AT(x, S + j) + LI_AT(g, S + j) + LI_AT(pf, j) * cv[u];
    LI_EACH gc[u] = LI_AT(x, 2 * S + j) + LI_AT(g, 2 * S + j);
    if (clipped) {
        LI_EACH gi[u] = li_vclamp(gi[u], clip);
        LI_EACH gf[u] = li_vclamp(gf[u], clip);
        LI_EACH gc[u] = li_vclamp(gc[u], clip);
    }
    li_vnni_sigmoid_u(gi);
    li_vnni_sigmoid_u(gf);
    li_vnni_tanh_u(gc);
    LI_EACH cv[u] = gf[u] * cv[u] + gi[u] * gc[u];
    LI_EACH go[u] = LI_AT(x, 3 * S + j) + LI_AT(g, 3 * S + j) + LI_AT(po, j) * cv[u];
    if (clipped) {
        LI_EACH go[u] = li_vclamp(go[u], clip);
    }
    LI_EACH li_store(c + j + u * LI_VEC, cv[u]);
    li_vnni_sigmoid_u(go);
    li_vnni_tanh_u(cv);
    LI_EACH cv[u] *= go[u];
    LI_EACH li_store(h + j + u * LI_VEC, cv[u]);
    LI_EACH li_store(y + j + u * LI_VEC, cv[u]);  /* the step's output row too: no copy after */
}
/* One LSTM step of one batch row on int8 R (li_vnni.h), for int8 sequences at batch 1: h quantized
   once, then per block of 64 units (one column block of each gate's panels) its four gate panels
   (one-row tiles) and at once that block's cells, on the sigmoid/tanh above, while its gates are
   in L1. The product streams R's panels from L2 (its time is about the read's); what this pass
   saves is the cells' arithmetic and a pass over the gates. ``backwards`` (every other step):
   blocks, gates and each panel's k last to first, so that the lines the previous step read last,
   still in L1, come first (exact int32 sums: the same results either way). Sigmoid/tanh/tanh, no
   input_forget; H a multiple of LI_VNNI_NR and at most LI_VNNI_STACK; gates S = H apart in x (the
   projections, bias included) and in the scratch g [4H]; h_t into hn and y (the output row). */
LI_VNNI_TARGET static void li_vnni_lstm_step1(const float *h, ptrdiff_t H, const int8_t *panels, const float *scales,
                                              const float *x, float *g, float *hn, float *c, const float *pi,
                                              const float *pf, const float *po, float *y, float clip,
                                              int backwards) {
    uint8_t qh[LI_VNNI_STACK] __attribute__((aligned(64)));
    float as;
    const ptrdiff_t panel_bytes = H * LI_VNNI_NR + 4 * LI_VNNI_NR, blocks = H / LI_VNNI_NR;
    const int clipped = clip < __builtin_inff();
    li_vnni_quantize_rows(h, 1, H, H, qh, H, &as);
    for (ptrdiff_t i = 0; i < blocks; i++) {
        ptrdiff_t b = backwards ? blocks - 1 - i : i;
        for (ptrdiff_t q = 0; q < 4; q++) {
            ptrdiff_t p = (backwards ? 3 - q : q) * blocks + b;  /* columns gate * H + 64 b .. */
            if (backwards)
                li_vnni_tile1_back(qh, H, panels + p * panel_bytes, as, scales + p * LI_VNNI_NR, g + p * LI_VNNI_NR);
            else
                li_vnni_tile1(qh, H, panels + p * panel_bytes, as, scales + p * LI_VNNI_NR, NULL,
                              g + p * LI_VNNI_NR, LI_VNNI_NR);
        }
        for (ptrdiff_t j = b * LI_VNNI_NR; j < (b + 1) * LI_VNNI_NR; j += LI_U * LI_VEC)
            li_lstm_cells_fast_u(x, g, hn, c, pi, pf, po, y, j, H, clip, clipped);
    }
}
#else
#define LI_VNNI_STEP 0
static inline void li_vnni_lstm_step1(const float *h, ptrdiff_t H, const int8_t *panels, const float *scales,
                                      const float *x, float *g, float *hn, float *c, const float *pi,
                                      const float *pf, const float *po, float *y, float clip,
                                      int backwards) {}
#endif
/* Steps that took li_vnni_lstm_step1, counted so that tests can prove the path ran */
static unsigned long long li_vnni_steps_run = 0;
static inline void li_count_vnni_steps(void) { __atomic_fetch_add(&li_vnni_steps_run, 1, __ATOMIC_RELAXED); }

/* GRU z and r * h_prev (sigmoid), linear_before_reset = 0: z into g[:n], r * h_prev into rh */
static inline __attribute__((always_inline)) void li_gru_zr_k(const float *x, float *g, const float *hp, float *rh,
                                                             ptrdiff_t j, ptrdiff_t S, float clip, const int k) {
    li_vf z[LI_U], r[LI_U];
    LI_EACH_OF(k) z[u] = li_vclamp(LI_AT(x, j) + LI_AT(g, j), clip);
    LI_EACH_OF(k) r[u] = li_vclamp(LI_AT(x, S + j) + LI_AT(g, S + j), clip);
    li_vsigmoid_k(z, k);
    li_vsigmoid_k(r, k);
    LI_EACH_OF(k) li_store(g + j + u * LI_VEC, z[u]);
    LI_EACH_OF(k) li_store(rh + j + u * LI_VEC, r[u] * LI_AT(hp, j));
}
static inline ptrdiff_t li_gru_zr_std(const float *x, float *g, const float *hp, float *rh, ptrdiff_t n,
                                      ptrdiff_t S, float clip) {
#define LI_GRU_ZR_BLOCK(j, k) li_gru_zr_k(x, g, hp, rh, j, S, clip, k)
    LI_BLOCKS(n, LI_GRU_ZR_BLOCK)
#undef LI_GRU_ZR_BLOCK
    return j;
}

/* GRU output (tanh): h = (1 - z) tanh(xh + gh) + z h_prev */
static inline __attribute__((always_inline)) void li_gru_output_k(const float *xh, const float *z, const float *gh,
                                                                 const float *hp, float *h, ptrdiff_t j, float clip,
                                                                 const int k) {
    li_vf cand[LI_U];
    LI_EACH_OF(k) cand[u] = li_vclamp(LI_AT(xh, j) + LI_AT(gh, j), clip);
    li_vtanh_k(cand, k);
    LI_EACH_OF(k) li_store(h + j + u * LI_VEC, (1.0f - LI_AT(z, j)) * cand[u] + LI_AT(z, j) * LI_AT(hp, j));
}
static inline ptrdiff_t li_gru_output_std(const float *xh, const float *z, const float *gh, const float *hp,
                                          float *h, ptrdiff_t n, float clip) {
#define LI_GRU_OUTPUT_BLOCK(j, k) li_gru_output_k(xh, z, gh, hp, h, j, clip, k)
    LI_BLOCKS(n, LI_GRU_OUTPUT_BLOCK)
#undef LI_GRU_OUTPUT_BLOCK
    return j;
}

/* GRU linear_before_reset (sigmoid, tanh): the whole step */
static inline __attribute__((always_inline)) void li_gru_lbr_cells_k(const float *x, const float *g, const float *hp,
                                                                    float *h, const float *rbh, ptrdiff_t j,
                                                                    ptrdiff_t S, float clip, const int k) {
    li_vf z[LI_U], r[LI_U], cand[LI_U];
    LI_EACH_OF(k) z[u] = li_vclamp(LI_AT(x, j) + LI_AT(g, j), clip);
    LI_EACH_OF(k) r[u] = li_vclamp(LI_AT(x, S + j) + LI_AT(g, S + j), clip);
    li_vsigmoid_k(z, k);
    li_vsigmoid_k(r, k);
    LI_EACH_OF(k) cand[u] = li_vclamp(LI_AT(x, 2 * S + j) + r[u] * (LI_AT(g, 2 * S + j) + LI_AT(rbh, j)), clip);
    li_vtanh_k(cand, k);
    LI_EACH_OF(k) li_store(h + j + u * LI_VEC, (1.0f - z[u]) * cand[u] + z[u] * LI_AT(hp, j));
}
static inline ptrdiff_t li_gru_lbr_cells_std(const float *x, const float *g, const float *hp, float *h,
                                             const float *rbh, ptrdiff_t n, ptrdiff_t S, float clip) {
#define LI_GRU_LBR_BLOCK(j, k) li_gru_lbr_cells_k(x, g, hp, h, rbh, j, S, clip, k)
    LI_BLOCKS(n, LI_GRU_LBR_BLOCK)
#undef LI_GRU_LBR_BLOCK
    return j;
}

#endif
