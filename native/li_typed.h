/* Elementwise ops on the small non-float32 values of exported graphs (loop counters and
   conditions, casts of shapes and ids): bool, int32, int64, float32, float64 operands, any
   strides (0 to broadcast), NumPy's results. Integers are computed in int64, anything with a
   float operand in double (exact for float32 +, -, *, / once rounded back). */
#ifndef LI_TYPED_H
#define LI_TYPED_H
#include <Python.h>
#include <stdint.h>

enum { LI_BOOL = 0, LI_I32 = 1, LI_I64 = 2, LI_F32 = 3, LI_F64 = 4 };
enum {
    LI_CAST = 0, LI_ADD, LI_SUB, LI_MUL, LI_DIV, LI_LESS, LI_LESS_EQ, LI_GREATER, LI_GREATER_EQ,
    LI_EQUAL, LI_AND, LI_OR, LI_XOR, LI_NOT, LI_NEG, LI_MAX, LI_MIN
};

typedef struct {
    double f;
    long long i;
} li_num;

static inline li_num li_load(const char *p, int t) {
    li_num v;
    switch (t) {
    case LI_BOOL: v.i = *(const unsigned char *)p != 0; v.f = (double)v.i; break;
    case LI_I32: v.i = *(const int32_t *)p; v.f = (double)v.i; break;
    case LI_I64: v.i = *(const int64_t *)p; v.f = (double)v.i; break;
    case LI_F32: v.f = *(const float *)p; v.i = 0; break;
    default: v.f = *(const double *)p; v.i = 0; break;
    }
    return v;
}

/* The result of ``op`` on a (and b), in the domain ``in_float`` (1: double, 0: int64). */
static inline li_num li_apply(int op, li_num a, li_num b, int in_float) {
    li_num r = {0.0, 0};
    if (in_float) {
        switch (op) {
        case LI_CAST: r.f = a.f; break;
        case LI_ADD: r.f = a.f + b.f; break;
        case LI_SUB: r.f = a.f - b.f; break;
        case LI_MUL: r.f = a.f * b.f; break;
        case LI_DIV: r.f = a.f / b.f; break;
        case LI_NEG: r.f = -a.f; break;
        case LI_MAX: r.f = (a.f >= b.f || a.f != a.f) ? a.f : b.f; break;
        case LI_MIN: r.f = (a.f <= b.f || a.f != a.f) ? a.f : b.f; break;
        case LI_LESS: r.i = a.f < b.f; break;
        case LI_LESS_EQ: r.i = a.f <= b.f; break;
        case LI_GREATER: r.i = a.f > b.f; break;
        case LI_GREATER_EQ: r.i = a.f >= b.f; break;
        case LI_EQUAL: r.i = a.f == b.f; break;
        default: r.i = 0; break;
        }
        if (op >= LI_LESS && op <= LI_EQUAL)
            r.f = (double)r.i;
        else
            r.i = (long long)r.f;  /* only read when storing to an integer type (Cast) */
        return r;
    }
    switch (op) {
    case LI_CAST: r.i = a.i; break;
    case LI_ADD: r.i = (long long)((unsigned long long)a.i + (unsigned long long)b.i); break;
    case LI_SUB: r.i = (long long)((unsigned long long)a.i - (unsigned long long)b.i); break;
    case LI_MUL: r.i = (long long)((unsigned long long)a.i * (unsigned long long)b.i); break;
    case LI_NEG: r.i = (long long)(0ULL - (unsigned long long)a.i); break;
    case LI_MAX: r.i = a.i >= b.i ? a.i : b.i; break;
    case LI_MIN: r.i = a.i <= b.i ? a.i : b.i; break;
    case LI_LESS: r.i = a.i < b.i; break;
    case LI_LESS_EQ: r.i = a.i <= b.i; break;
    case LI_GREATER: r.i = a.i > b.i; break;
    case LI_GREATER_EQ: r.i = a.i >= b.i; break;
    case LI_EQUAL: r.i = a.i == b.i; break;
    case LI_AND: r.i = (a.i != 0) & (b.i != 0); break;
    case LI_OR: r.i = (a.i != 0) | (b.i != 0); break;
    case LI_XOR: r.i = (a.i != 0) ^ (b.i != 0); break;
    case LI_NOT: r.i = a.i == 0; break;
    default: r.i = 0; break;
    }
    r.f = (double)r.i;
    return r;
}

static inline void li_store(char *p, int t, li_num v, int from_float) {
    switch (t) {
    case LI_BOOL: *(unsigned char *)p = from_float ? v.f != 0.0 : v.i != 0; break;
    case LI_I32: *(int32_t *)p = from_float ? (int32_t)v.f : (int32_t)v.i; break;  /* as NumPy's cast */
    case LI_I64: *(int64_t *)p = from_float ? (int64_t)v.f : (int64_t)v.i; break;
    case LI_F32: *(float *)p = (float)(from_float ? v.f : (double)v.i); break;
    default: *(double *)p = from_float ? v.f : (double)v.i; break;
    }
}

/* out = op(a, b) over an nd block (byte strides; b unused by unary ops). */
static void li_typed_block(char *out, const char *a, const char *b, int nd, const Py_ssize_t *shape,
                           const Py_ssize_t *so, const Py_ssize_t *sa, const Py_ssize_t *sb,
                           int op, int ta, int tb, int to, int in_float) {
    if (nd == 0) {
        li_num x = li_load(a, ta), y = b ? li_load(b, tb) : x;
        li_num r = li_apply(op, x, y, in_float);
        int result_float = in_float && !(op >= LI_LESS && op <= LI_EQUAL);
        li_store(out, to, r, result_float);
        return;
    }
    for (Py_ssize_t i = 0; i < shape[0]; i++)
        li_typed_block(out + i * so[0], a + i * sa[0], b ? b + i * sb[0] : NULL, nd - 1, shape + 1,
                       so + 1, sa + 1, sb + 1, op, ta, tb, to, in_float);
}

#endif
