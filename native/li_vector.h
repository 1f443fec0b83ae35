/* The float32 elementwise loops of a compiled program (_program.pxi), written so that they
   vectorize: sigmoid and tanh on li_math.h's polynomials (within a few ulps of libm, as the
   recurrent kernels compute their gates), contiguous and broadcast operands in loops of their
   own. Built for AVX-512, AVX2 and the baseline, picked by the CPU at load (GCC on x86-64). */
#ifndef LI_VECTOR_H
#define LI_VECTOR_H
#include <Python.h>
#include <math.h>
#include <string.h>
#include "li_math.h"
#include "li_dense.h"  /* LI_DENSE_CLONES */

/* n bytes copied: a pool step's small rows inline in 16-byte moves (a fixed-size memcpy is one
   unaligned vector move on any ISA), larger blocks by memcpy. */
static inline void li_copy_bytes(char *restrict dst, const char *restrict src, Py_ssize_t n) {
    if (n <= 1024) {
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16)
            memcpy(dst + i, src + i, 16);
        for (; i < n; i++)
            dst[i] = src[i];
        return;
    }
    memcpy(dst, src, (size_t)n);
}

enum { LI_U_SIGMOID = 0, LI_U_TANH, LI_U_RELU, LI_U_EXP, LI_U_NEG, LI_U_ABS, LI_U_SQRT };
enum { LI_B_ADD = 0, LI_B_SUB, LI_B_MUL, LI_B_DIV };

LI_DENSE_CLONES
static void li_unary(int code, const float *restrict x, float *restrict y, Py_ssize_t n) {
    Py_ssize_t i;
    switch (code) {
    case LI_U_SIGMOID:
        for (i = 0; i < n; i++) { float v = x[i]; float s = li_sigmoid(v); y[i] = v == v ? s : v; }
        break;
    case LI_U_TANH:
        for (i = 0; i < n; i++) { float v = x[i]; float t = li_tanh(v); y[i] = v == v ? t : v; }
        break;
    case LI_U_RELU:
        for (i = 0; i < n; i++) { float v = x[i]; y[i] = v > 0.0f ? v : (v == v ? 0.0f : v); }
        break;
    case LI_U_EXP:
        for (i = 0; i < n; i++) y[i] = expf(x[i]);
        break;
    case LI_U_NEG:
        for (i = 0; i < n; i++) y[i] = -x[i];
        break;
    case LI_U_ABS:
        for (i = 0; i < n; i++) y[i] = fabsf(x[i]);
        break;
    default:
        for (i = 0; i < n; i++) y[i] = sqrtf(x[i]);
        break;
    }
}

#define LI_BINARY_LOOP(EXPR)                                                              \
    if (sa == 1 && sb == 1) { for (i = 0; i < n; i++) { float a = x[i], b = y[i]; o[i] = EXPR; } } \
    else if (sa == 1 && sb == 0) { float b = y[0]; for (i = 0; i < n; i++) { float a = x[i]; o[i] = EXPR; } } \
    else if (sa == 0 && sb == 1) { float a = x[0]; for (i = 0; i < n; i++) { float b = y[i]; o[i] = EXPR; } } \
    else { for (i = 0; i < n; i++) { float a = x[i * sa], b = y[i * sb]; o[i] = EXPR; } }

/* o[i] = x[i*sa] op y[i*sb] (strides in floats; 0 broadcasts) */
LI_DENSE_CLONES
static void li_binary(int code, float *restrict o, const float *restrict x, Py_ssize_t sa,
                      const float *restrict y, Py_ssize_t sb, Py_ssize_t n) {
    Py_ssize_t i;
    switch (code) {
    case LI_B_ADD: LI_BINARY_LOOP(a + b) break;
    case LI_B_SUB: LI_BINARY_LOOP(a - b) break;
    case LI_B_MUL: LI_BINARY_LOOP(a * b) break;
    default: LI_BINARY_LOOP(a / b) break;
    }
}

#endif
