/* exp, tanh and sigmoid on vectors (li_simd.h's li_vf): the same maths as li_math.h's scalar
   li_exp/li_tanh/li_sigmoid, written on vector types because GCC does not auto-vectorize the
   scalar ones (their float selects and floorf count as control flow) and every gate of every
   step goes through them. */
#ifndef LI_VMATH_H
#define LI_VMATH_H

#include "li_simd.h"

static inline li_vf li_vexp(li_vf x) {
    x = li_clamp_exp_arg(x);
    li_vf v = x * 1.4426950408889634f + 0.5f;
#if LI_FLOAT_FLOOR
    li_vf nf = li_vfloor(v);
#else
    li_vi n = __builtin_convertvector(v, li_vi);            /* floor(v): truncate, */
    n += (li_vi)(__builtin_convertvector(n, li_vf) > v);    /* then -1 where that rounded up */
    li_vf nf = __builtin_convertvector(n, li_vf);
#endif
    li_vf r = (x - nf * 0.693359375f) - nf * -2.1219444005469057e-04f;
    li_vf p = (((((0.001394460077755586f * r + 0.00837191219414511f) * r + 0.041666280339128475f) * r
               + 0.16666455876315142f) * r + 0.500000008440243f) * r + 1.0000000281441013f) * r + 1.0f;
#if LI_FLOAT_FLOOR
    return li_vscale2n(p, nf);
#else
    return p * (li_vf)((n + 127) << 23);
#endif
}
static inline li_vf li_vtanh(li_vf x) {
    li_vf ax = li_vabs(x);
    li_vf z = x * x;
    li_vf small = x * ((((((0.002170434489101387f * z - 0.008205207588960822f) * z + 0.021710702834346958f) * z
                   - 0.053948235080212965f) * z + 0.13333212457152305f) * z - 0.33333330596960725f) * z
                   + 0.999999999899251f);
    li_vf big = li_vsign_of(1.0f - 2.0f / (li_vexp(2.0f * ax) + 1.0f), x);
    return li_vsel(ax < li_splat(0.625f), small, big);
}
static inline li_vf li_vsigmoid(li_vf x) { return 1.0f / (1.0f + li_vexp(-x)); }

/* The same maths on k <= LI_U vectors at once (k a constant where inlined), each step written for
   all of them in a row, so that their long dependency chains overlap; bit-identical to the
   single-vector versions. The _u forms take LI_U vectors. */
#define LI_U 4
#define LI_EACH for (int u = 0; u < LI_U; u++)
#define LI_EACH_OF(k) for (int u = 0; u < (k); u++)
static inline __attribute__((always_inline)) void li_vexp_k(li_vf *x, const int k) {
    li_vf v[LI_U], nf[LI_U], r[LI_U], p[LI_U];
    LI_EACH_OF(k) x[u] = li_clamp_exp_arg(x[u]);
    LI_EACH_OF(k) v[u] = x[u] * 1.4426950408889634f + 0.5f;
#if LI_FLOAT_FLOOR
    LI_EACH_OF(k) nf[u] = li_vfloor(v[u]);
#else
    li_vi n[LI_U];
    LI_EACH_OF(k) n[u] = __builtin_convertvector(v[u], li_vi);
    LI_EACH_OF(k) n[u] += (li_vi)(__builtin_convertvector(n[u], li_vf) > v[u]);
    LI_EACH_OF(k) nf[u] = __builtin_convertvector(n[u], li_vf);
#endif
    LI_EACH_OF(k) r[u] = (x[u] - nf[u] * 0.693359375f) - nf[u] * -2.1219444005469057e-04f;
    LI_EACH_OF(k) p[u] = 0.001394460077755586f * r[u] + 0.00837191219414511f;
    LI_EACH_OF(k) p[u] = p[u] * r[u] + 0.041666280339128475f;
    LI_EACH_OF(k) p[u] = p[u] * r[u] + 0.16666455876315142f;
    LI_EACH_OF(k) p[u] = p[u] * r[u] + 0.500000008440243f;
    LI_EACH_OF(k) p[u] = p[u] * r[u] + 1.0000000281441013f;
    LI_EACH_OF(k) p[u] = p[u] * r[u] + 1.0f;
#if LI_FLOAT_FLOOR
    LI_EACH_OF(k) x[u] = li_vscale2n(p[u], nf[u]);
#else
    LI_EACH_OF(k) x[u] = p[u] * (li_vf)((n[u] + 127) << 23);
#endif
}
static inline __attribute__((always_inline)) void li_vsigmoid_k(li_vf *x, const int k) {
    LI_EACH_OF(k) x[u] = -x[u];
    li_vexp_k(x, k);
    LI_EACH_OF(k) x[u] = 1.0f / (1.0f + x[u]);
}
static inline __attribute__((always_inline)) void li_vtanh_k(li_vf *x, const int k) {
    li_vf ax[LI_U], z[LI_U], small[LI_U], e[LI_U];
    LI_EACH_OF(k) ax[u] = li_vabs(x[u]);
    LI_EACH_OF(k) z[u] = x[u] * x[u];
    LI_EACH_OF(k) small[u] = 0.002170434489101387f * z[u] - 0.008205207588960822f;
    LI_EACH_OF(k) small[u] = small[u] * z[u] + 0.021710702834346958f;
    LI_EACH_OF(k) small[u] = small[u] * z[u] - 0.053948235080212965f;
    LI_EACH_OF(k) small[u] = small[u] * z[u] + 0.13333212457152305f;
    LI_EACH_OF(k) small[u] = small[u] * z[u] - 0.33333330596960725f;
    LI_EACH_OF(k) small[u] = x[u] * (small[u] * z[u] + 0.999999999899251f);
    LI_EACH_OF(k) e[u] = 2.0f * ax[u];
    li_vexp_k(e, k);
    LI_EACH_OF(k) e[u] = li_vsign_of(1.0f - 2.0f / (e[u] + 1.0f), x[u]);
    LI_EACH_OF(k) x[u] = li_vsel(ax[u] < li_splat(0.625f), small[u], e[u]);
}
static inline __attribute__((always_inline)) void li_vsigmoid_u(li_vf *x) { li_vsigmoid_k(x, LI_U); }
static inline __attribute__((always_inline)) void li_vtanh_u(li_vf *x) { li_vtanh_k(x, LI_U); }
#define LI_AT(p, j) li_load((p) + (j) + u * LI_VEC)

/* v[:n] = f(v) in place; the last n % LI_VEC through a zero-padded vector, so that
   every element gets the same maths (LI_U vectors at a time first). */
#define LI_MAP_N(name, f, f_u)                                              \
    static inline void name(float *v, ptrdiff_t n) {                        \
        ptrdiff_t j = 0;                                                    \
        for (; j + LI_U * LI_VEC <= n; j += LI_U * LI_VEC) {                \
            li_vf x[LI_U];                                                  \
            LI_EACH x[u] = LI_AT(v, j);                                     \
            f_u(x);                                                         \
            LI_EACH li_store(v + j + u * LI_VEC, x[u]);                     \
        }                                                                   \
        for (; j + LI_VEC <= n; j += LI_VEC) li_store(v + j, f(li_load(v + j))); \
        if (j < n) {                                                        \
            float tail[LI_VEC] = {0};                                       \
            memcpy(tail, v + j, (size_t)(n - j) * sizeof(float));           \
            li_store(tail, f(li_load(tail)));                               \
            memcpy(v + j, tail, (size_t)(n - j) * sizeof(float));           \
        }                                                                   \
    }
LI_MAP_N(li_sigmoid_n, li_vsigmoid, li_vsigmoid_u)
LI_MAP_N(li_tanh_n, li_vtanh, li_vtanh_u)

/* The fused step's faster, slightly less exact maths (li_cells.h's li_lstm_step4) */
#if LI_FLOAT_FLOOR
/* e^x for the fused one-step cells in fewer multiply-adds (the products already fill the FMA
   pipes): r = x - n ln2 in one step and a degree-5 polynomial, ~2e-7 relative where gates need it. */
static inline __attribute__((always_inline)) void li_vexp_fast_u(li_vf *x) {
    li_vf nf[LI_U], r[LI_U], p[LI_U];
    LI_EACH x[u] = li_clamp_exp_arg(x[u]);
    LI_EACH nf[u] = li_vfloor(x[u] * 1.4426950408889634f + 0.5f);
    LI_EACH r[u] = x[u] - nf[u] * 0.6931471805599453f;
    LI_EACH p[u] = 0.008290309458971024f * r[u] + 0.041897933930158615f;
    LI_EACH p[u] = p[u] * r[u] + 0.1666763573884964f;
    LI_EACH p[u] = p[u] * r[u] + 0.4999915063381195f;
    LI_EACH p[u] = p[u] * r[u] + 0.9999997019767761f;
    LI_EACH p[u] = p[u] * r[u] + 1.0f;
    LI_EACH x[u] = li_vscale2n(p[u], nf[u]);
}
static inline __attribute__((always_inline)) void li_vsigmoid_fast_u(li_vf *x) {
    LI_EACH x[u] = -x[u];
    li_vexp_fast_u(x);
    LI_EACH x[u] = li_vrecip(1.0f + x[u]);
}
/* tanh x = sign(x) (1 - 2 / (e^(2|x|) + 1)) for every x: absolute (not relative) accuracy near 0,
   which a gate added to O(1) terms does not need. */
static inline __attribute__((always_inline)) void li_vtanh_fast_u(li_vf *x) {
    li_vf e[LI_U];
    LI_EACH e[u] = 2.0f * li_vabs(x[u]);
    li_vexp_fast_u(e);
    LI_EACH x[u] = li_vsign_of(1.0f - 2.0f * li_vrecip(e[u] + 1.0f), x[u]);
}
#endif

#endif
