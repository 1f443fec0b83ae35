/* Convolution and max pooling over float32 NC(D)HW tensors, for lstminfer/kernels/conv_native.py.

   A conv is, per item and group, Y[Mg, L] = W[Mg, K] . cols[K, L] (+ bias, Relu), K = C/G * taps:
   the item is copied once into a zero-padded scratch (so no tap needs a bounds check), then for each
   block of LI_CONV_NR output positions every LI_CONV_MR rows of W run a register-tiled
   micro-kernel over the block's columns: read in place where its positions are consecutive in the
   input (the common stride-1 case), else gathered into a small panel [LI_CONV_KC, LI_CONV_NR].
   W comes packed at load as [G][Mg/MR blocks][K][MR] (zero-padded rows), so the micro-kernel reads
   both operands as sequential streams. The epilogue adds the bias, applies Relu and stores the
   block straight into Y. Written on li_vf only: every ISA build of li_simd.h compiles it. */
#ifndef LI_CONV_H
#define LI_CONV_H

#include "li_simd.h"

#define LI_CONV_NR (2 * LI_VEC)
#if LI_VREGS >= 32
#define LI_CONV_MR 8 /* 16 accumulators + 2 panel vectors + broadcasts in 32 registers */
#else
#define LI_CONV_MR 4 /* 8 accumulators in 16 registers */
#endif

/* A block of panel rows at a time: a panel of LI_CONV_KC rows (16 KiB) stays in L1 while every
   row block of W runs over it. */
#define LI_CONV_KC (12288 / LI_CONV_NR)

/* m = fmax(m, v) as numpy's np.fmax: a NaN loses to a number (selects, no branches) */
static inline float li_fmax(float m, float v) { float t = v > m ? v : m; return m != m ? v : t; }
static inline li_vf li_vfmax(li_vf m, li_vf v) { return li_vsel((v > m) | (m != m), v, m); }

/* acc[r] (+)= sum_k a[k*MR + r] * panel[k, :], r < MR, over K panel rows. ``part``: the block's
   running sums [MR][NR], loaded unless ``first`` (the same additions in the same order as one pass
   over all of K), stored unless ``last``; when last, bias and Relu are applied and rows < rows,
   cols < cols stored into y. A fused MaxPool's work on the way out: ``pool2``, the max of each
   pair of columns (cols / 2 stored); ``combine``, the max with what y holds (np.fmax: NaN loses). */
static inline void li_conv_tile(const float *a, ptrdiff_t K, const float *panel, const float *base,
                                const ptrdiff_t *koff, float *part, int first, int last,
                                float *y, ptrdiff_t ldy, int rows, int cols, const float *bias, int relu,
                                int pool2, int combine) {
    li_vf c0[LI_CONV_MR], c1[LI_CONV_MR];
    li_vf z = {0};
#pragma GCC unroll 8
    for (int r = 0; r < LI_CONV_MR; r++) {
        c0[r] = first ? z : li_load(part + r * LI_CONV_NR);
        c1[r] = first ? z : li_load(part + r * LI_CONV_NR + LI_VEC);
    }
    if (base) {  /* the panel's rows read where they lie: base + koff[k] (consecutive positions) */
        for (ptrdiff_t k = 0; k < K; k++) {
            const float *row = base + koff[k];
            li_vf b0 = li_load(row), b1 = li_load(row + LI_VEC);
            const float *ak = a + k * LI_CONV_MR;
#pragma GCC unroll 8
            for (int r = 0; r < LI_CONV_MR; r++) {
                float s = ak[r];
                c0[r] += s * b0;
                c1[r] += s * b1;
            }
        }
    } else {
        for (ptrdiff_t k = 0; k < K; k++) {
            li_vf b0 = li_load(panel + k * LI_CONV_NR), b1 = li_load(panel + k * LI_CONV_NR + LI_VEC);
            const float *ak = a + k * LI_CONV_MR;
#pragma GCC unroll 8
            for (int r = 0; r < LI_CONV_MR; r++) {
                float s = ak[r];
                c0[r] += s * b0;
                c1[r] += s * b1;
            }
        }
    }
    if (!last) {
#pragma GCC unroll 8
        for (int r = 0; r < LI_CONV_MR; r++) {
            li_store(part + r * LI_CONV_NR, c0[r]);
            li_store(part + r * LI_CONV_NR + LI_VEC, c1[r]);
        }
        return;
    }
    li_vi even, odd;  /* lanes of v0 || v1 */
    for (int i = 0; i < LI_VEC; i++) { even[i] = 2 * i; odd[i] = 2 * i + 1; }
#pragma GCC unroll 8
    for (int r = 0; r < LI_CONV_MR; r++) {
        if (r >= rows) break;
        li_vf v0 = c0[r], v1 = c1[r];
        if (bias) { v0 += bias[r]; v1 += bias[r]; }
        if (relu) { v0 = li_vsel(v0 < z, z, v0); v1 = li_vsel(v1 < z, z, v1); }  /* NaN stays NaN */
        float *out = y + r * ldy;
        if (pool2) {  /* one vector of pair maxima */
            li_vf p = li_vfmax(__builtin_shuffle(v0, v1, even), __builtin_shuffle(v0, v1, odd));
            if (cols == LI_CONV_NR) {
                li_store(out, combine ? li_vfmax(li_load(out), p) : p);
            } else {
                float tmp[LI_VEC];
                int n = cols / 2;
                if (combine) { memcpy(tmp, out, (size_t)n * sizeof(float)); p = li_vfmax(li_load(tmp), p); }
                li_store(tmp, p);
                memcpy(out, tmp, (size_t)n * sizeof(float));
            }
        } else if (cols == LI_CONV_NR) {
            if (combine) { v0 = li_vfmax(li_load(out), v0); v1 = li_vfmax(li_load(out + LI_VEC), v1); }
            li_store(out, v0);
            li_store(out + LI_VEC, v1);
        } else {
            float tmp[LI_CONV_NR];
            if (combine) {
                memcpy(tmp, out, (size_t)cols * sizeof(float));
                v0 = li_vfmax(li_load(tmp), v0);
                v1 = li_vfmax(li_load(tmp + LI_VEC), v1);
            }
            li_store(tmp, v0);
            li_store(tmp + LI_VEC, v1);
            memcpy(out, tmp, (size_t)cols * sizeof(float));
        }
    }
}

/* Copy one item [C, *in] into its padded scratch [C, *padded] (zeros around), spatial axes as
   3 (leading ones of size 1 for 1-D and 2-D). Only the padding is zeroed, row by row: the scratch
   is written once. */
static inline void li_conv_pad_item(const float *x, ptrdiff_t C, const ptrdiff_t *in, const ptrdiff_t *padded,
                                    const ptrdiff_t *begin, float *out) {
    ptrdiff_t in_size = in[0] * in[1] * in[2], out_size = padded[0] * padded[1] * padded[2];
    if (in_size == out_size) { memcpy(out, x, (size_t)(C * in_size) * sizeof(float)); return; }
    ptrdiff_t left = begin[2], right = padded[2] - begin[2] - in[2];
    for (ptrdiff_t c = 0; c < C; c++)
        for (ptrdiff_t d = 0; d < padded[0]; d++) {
            float *plane = out + (c * padded[0] + d) * padded[1] * padded[2];
            ptrdiff_t di = d - begin[0];
            if (di < 0 || di >= in[0]) { memset(plane, 0, (size_t)(padded[1] * padded[2]) * sizeof(float)); continue; }
            for (ptrdiff_t h = 0; h < padded[1]; h++) {
                float *row = plane + h * padded[2];
                ptrdiff_t hi = h - begin[1];
                if (hi < 0 || hi >= in[1]) { memset(row, 0, (size_t)padded[2] * sizeof(float)); continue; }
                if (left) memset(row, 0, (size_t)left * sizeof(float));
                memcpy(row + left, x + c * in_size + (di * in[1] + hi) * in[2], (size_t)in[2] * sizeof(float));
                if (right) memset(row + left + in[2], 0, (size_t)right * sizeof(float));
            }
        }
}

/* Output positions [l_begin, l_end) of one item and group: yout[m, l - l_begin] (row stride ldy) =
   W[m] . cols[:, l] (+ bias, Relu), xg: the group's padded channels; with ``pool2`` the max of each
   pair of positions at yout[m, (l - l_begin) / 2] (an even count), with ``combine`` maxed into yout. */
static inline void li_conv_range(const float *xg, const float *wg, ptrdiff_t Mg, ptrdiff_t K, const ptrdiff_t *koff,
                                 const ptrdiff_t *pos, ptrdiff_t l_begin, ptrdiff_t l_end, const float *bias, int relu,
                                 float *yout, ptrdiff_t ldy, float *panel, float *part, int pool2, int combine) {
    ptrdiff_t blocks = (Mg + LI_CONV_MR - 1) / LI_CONV_MR;
    for (ptrdiff_t l0 = l_begin; l0 < l_end; l0 += LI_CONV_NR) {
        int cols = (int)(l_end - l0 < LI_CONV_NR ? l_end - l0 : LI_CONV_NR);
        const ptrdiff_t *p = pos + l0;
        int run = p[cols - 1] - p[0] == cols - 1;  /* consecutive positions: one copy per row */
        int direct = run && cols == LI_CONV_NR;  /* rows read in place, no panel copy */
        for (ptrdiff_t k0 = 0; k0 < K; k0 += LI_CONV_KC) {
            ptrdiff_t kc = K - k0 < LI_CONV_KC ? K - k0 : LI_CONV_KC;
            for (ptrdiff_t k = 0; k < kc && !direct; k++) {
                const float *src = xg + koff[k0 + k];
                float *dst = panel + k * LI_CONV_NR;
                int j = 0;
                if (run) { memcpy(dst, src + p[0], (size_t)cols * sizeof(float)); j = cols; }
                for (; j < cols; j++) dst[j] = src[p[j]];
                for (; j < LI_CONV_NR; j++) dst[j] = 0.0f;
            }
            for (ptrdiff_t b = 0; b < blocks; b++) {
                ptrdiff_t m0 = b * LI_CONV_MR;
                int rows = (int)(Mg - m0 < LI_CONV_MR ? Mg - m0 : LI_CONV_MR);
                li_conv_tile(wg + b * K * LI_CONV_MR + k0 * LI_CONV_MR, kc, panel,
                             direct ? xg + p[0] : NULL, koff + k0, part + b * LI_CONV_MR * LI_CONV_NR, k0 == 0,
                             k0 + kc == K, yout + m0 * ldy + ((l0 - l_begin) >> pool2), ldy, rows, cols,
                             bias ? bias + m0 : NULL, relu, pool2, combine);
            }
        }
    }
}

/* Y [N, G*Mg, L] = conv(X [N, G*Cg, *in]).
   wpack: [G][ceil(Mg/MR)][K][MR]; koff[K]: each column row's offset in a group's padded channels
   (channel * padded size + tap offset); pos[L]: each output position's offset in a padded channel;
   scratch: C * padded floats; panel: LI_CONV_KC * LI_CONV_NR floats; part: ceil(Mg/MR) * MR * NR floats. */
static inline void li_conv(const float *x, ptrdiff_t N, ptrdiff_t G, ptrdiff_t Cg, const ptrdiff_t *in,
                           const ptrdiff_t *padded, const ptrdiff_t *begin, const float *wpack, ptrdiff_t Mg,
                           ptrdiff_t K, const ptrdiff_t *koff, const ptrdiff_t *pos, ptrdiff_t L,
                           const float *bias, int relu, float *y, float *scratch, float *panel, float *part) {
    ptrdiff_t in_size = in[0] * in[1] * in[2], pad_size = padded[0] * padded[1] * padded[2];
    ptrdiff_t blocks = (Mg + LI_CONV_MR - 1) / LI_CONV_MR;
    for (ptrdiff_t n = 0; n < N; n++) {
        li_conv_pad_item(x + n * G * Cg * in_size, G * Cg, in, padded, begin, scratch);
        for (ptrdiff_t g = 0; g < G; g++)
            li_conv_range(scratch + g * Cg * pad_size, wpack + g * blocks * K * LI_CONV_MR, Mg, K, koff, pos, 0, L,
                          bias ? bias + g * Mg : NULL, relu, y + (n * G + g) * Mg * L, L, panel, part, 0, 0);
    }
}

/* MaxPool over planes [P, H, W] -> [P, OH, OW] (1-D: H = OH = 1), taps outside the input count
   as -inf (pads and ceil_mode's overhang), NaN losing as in np.fmax. One axis at a time: each
   output row first takes the max of its kh input rows (whole rows, vectorized) into ``row``
   [(OW-1)*sw + (kw-1)*dw + 1] (its padding columns -inf), then of kw taps along that row. */
static inline void li_max_pool2d(const float *x, ptrdiff_t P, ptrdiff_t H, ptrdiff_t W, float *y, ptrdiff_t OH,
                                 ptrdiff_t OW, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                 ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t ph, ptrdiff_t pw, float *row) {
    ptrdiff_t width = (OW - 1) * sw + (kw - 1) * dw + 1;
    ptrdiff_t inside = W < width - pw ? W : width - pw;  /* input columns the windows reach */
    if (inside < 0) inside = 0;
    float nan = __builtin_nanf(""), ninf = -__builtin_inff();
    for (ptrdiff_t p = 0; p < P; p++) {
        const float *xp = x + p * H * W;
        float *yp = y + p * OH * OW;
        for (ptrdiff_t oh = 0; oh < OH; oh++) {
            ptrdiff_t h0 = oh * sh - ph;
            int outside = 0;
            for (ptrdiff_t w = 0; w < width; w++) row[w] = (w < pw || w >= pw + inside) ? ninf : nan;
            for (ptrdiff_t i = 0; i < kh; i++) {
                ptrdiff_t h = h0 + i * dh;
                if (h < 0 || h >= H) { outside = 1; continue; }
                const float *src = xp + h * W;
                float *dst = row + pw;
                ptrdiff_t w = 0;
                for (; w + LI_VEC <= inside; w += LI_VEC) li_store(dst + w, li_vfmax(li_load(dst + w), li_load(src + w)));
                for (; w < inside; w++) dst[w] = li_fmax(dst[w], src[w]);
            }
            if (outside)
                for (ptrdiff_t w = 0; w < width; w++) row[w] = li_fmax(row[w], ninf);
            float *out = yp + oh * OW;
            if (kw == 2 && sw == 2 && dw == 1) {  /* the common 2x2/2 window: pairs along the row */
                for (ptrdiff_t o = 0; o < OW; o++) out[o] = li_fmax(row[2 * o], row[2 * o + 1]);
                continue;
            }
            for (ptrdiff_t o = 0; o < OW; o++) out[o] = row[o * sw];
            for (ptrdiff_t j = 1; j < kw; j++) {
                const float *tap = row + j * dw;
                for (ptrdiff_t o = 0; o < OW; o++) out[o] = li_fmax(out[o], tap[o * sw]);
            }
        }
    }
}

/* Y [N, G*Mg, OH, OW] = MaxPool(conv(X)) with windows ph x pw that do not overlap (strides = kernel,
   no pads, floor): OH = CH / ph, OW = CW / pw of the conv's CH x CW output (1-D: CH = ph = 1). The
   conv's output is never written whole. Windows 1 or 2 wide (the CRNN's): each tile pools its pairs
   of columns in registers and maxes each of the window's ph rows straight into y. Wider ones: for
   each pooled row, the ph conv rows under it are computed, segp pooled columns (segp * pw conv
   columns) at a time, into ``rows`` [Mg][ph][segp * pw] (in cache), then pooled into y. Either way
   np.fmax's rule (a NaN loses), and conv rows and columns no window covers are not computed.
   Buffers as li_conv's, and rows: Mg * ph * segp * pw floats (unused by windows 1-2 wide). */
static inline void li_conv_max_pool(const float *x, ptrdiff_t N, ptrdiff_t G, ptrdiff_t Cg, const ptrdiff_t *in,
                                    const ptrdiff_t *padded, const ptrdiff_t *begin, const float *wpack, ptrdiff_t Mg,
                                    ptrdiff_t K, const ptrdiff_t *koff, const ptrdiff_t *pos, ptrdiff_t CH,
                                    ptrdiff_t CW, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t segp, const float *bias,
                                    int relu, float *y, float *scratch, float *panel, float *part, float *rows) {
    ptrdiff_t in_size = in[0] * in[1] * in[2], pad_size = padded[0] * padded[1] * padded[2];
    ptrdiff_t blocks = (Mg + LI_CONV_MR - 1) / LI_CONV_MR;
    ptrdiff_t OH = CH / ph, OW = CW / pw;
    li_vi even, odd;  /* lanes of a || b */
    for (int i = 0; i < LI_VEC; i++) { even[i] = 2 * i; odd[i] = 2 * i + 1; }
    for (ptrdiff_t n = 0; n < N; n++) {
        li_conv_pad_item(x + n * G * Cg * in_size, G * Cg, in, padded, begin, scratch);
        for (ptrdiff_t g = 0; g < G; g++) {
            const float *xg = scratch + g * Cg * pad_size;
            const float *wg = wpack + g * blocks * K * LI_CONV_MR;
            const float *bg = bias ? bias + g * Mg : NULL;
            float *yg = y + (n * G + g) * Mg * OH * OW;
            if (pw <= 2) {  /* pooled in the tiles' epilogue: rows maxed straight into y, pairs in registers */
                for (ptrdiff_t oh = 0; oh < OH; oh++)
                    for (ptrdiff_t i = 0; i < ph; i++) {
                        ptrdiff_t l = (oh * ph + i) * CW;
                        li_conv_range(xg, wg, Mg, K, koff, pos, l, l + OW * pw, bg, relu, yg + oh * OW, OH * OW,
                                      panel, part, pw == 2, i > 0);
                    }
                continue;
            }
            for (ptrdiff_t oh = 0; oh < OH; oh++) {
                for (ptrdiff_t o0 = 0; o0 < OW; o0 += segp) {
                    ptrdiff_t np_ = OW - o0 < segp ? OW - o0 : segp, width = np_ * pw, ld = ph * width;
                    for (ptrdiff_t i = 0; i < ph; i++) {
                        ptrdiff_t l = (oh * ph + i) * CW + o0 * pw;
                        li_conv_range(xg, wg, Mg, K, koff, pos, l, l + width, bg, relu, rows + i * width, ld,
                                      panel, part, 0, 0);
                    }
                    for (ptrdiff_t m = 0; m < Mg; m++) {
                        float *r0 = rows + m * ld;
                        for (ptrdiff_t i = 1; i < ph; i++) {  /* the rows' max into the first, vectorized */
                            const float *ri = r0 + i * width;
                            ptrdiff_t w = 0;
                            for (; w + LI_VEC <= width; w += LI_VEC)
                                li_store(r0 + w, li_vfmax(li_load(r0 + w), li_load(ri + w)));
                            for (; w < width; w++) r0[w] = li_fmax(r0[w], ri[w]);
                        }
                        float *out = yg + (m * OH + oh) * OW + o0;
                        if (pw == 2) {  /* pairs: the even and the odd columns of two vectors, then their max */
                            ptrdiff_t o = 0;
                            for (; o + LI_VEC <= np_; o += LI_VEC) {
                                li_vf a = li_load(r0 + 2 * o), b = li_load(r0 + 2 * o + LI_VEC);
                                li_store(out + o, li_vfmax(__builtin_shuffle(a, b, even), __builtin_shuffle(a, b, odd)));
                            }
                            for (; o < np_; o++) out[o] = li_fmax(r0[2 * o], r0[2 * o + 1]);
                        } else {
                            for (ptrdiff_t o = 0; o < np_; o++) {
                                float v = r0[o * pw];
                                for (ptrdiff_t j = 1; j < pw; j++) v = li_fmax(v, r0[o * pw + j]);
                                out[o] = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

#endif
