/* exp, tanh and sigmoid within a few float32 ulps, as in lstminfer/kernels/numba_math.py (the
   backends share the maths), shared by the recurrent kernels (_rnn_core.pxi) and the compiled
   program's elementwise instructions (_program.pxi). */
#ifndef LI_MATH_H
#define LI_MATH_H
/* exp, tanh, sigmoid within a few float32 ulps, as in
   lstminfer/kernels/numba_math.py (the two backends share the maths):
   exp by Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for
   e^r and 2^n built from exponent bits; tanh by an odd polynomial for
   |x| < 0.625, else 1 - 2/(e^(2|x|) + 1). Multiplies, adds, one division
   and bit tricks only, so loops using them vectorize. A cruder rational
   tanh (3.5e-7) broke 1e-5 parity on a 200-step cell state. */
#include <stdint.h>
#include <string.h>
static inline float li_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_floorf(x * 1.4426950408889634f + 0.5f);
    float r = (x - n * 0.693359375f) - n * -2.1219444005469057e-04f;
    float p = (((((0.001394460077755586f * r + 0.00837191219414511f) * r + 0.041666280339128475f) * r
               + 0.16666455876315142f) * r + 0.500000008440243f) * r + 1.0000000281441013f) * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
static inline float li_tanh(float x) {
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float small = x * ((((((0.002170434489101387f * z - 0.008205207588960822f) * z + 0.021710702834346958f) * z
                   - 0.053948235080212965f) * z + 0.13333212457152305f) * z - 0.33333330596960725f) * z
                   + 0.999999999899251f);
    float big = 1.0f - 2.0f / (li_exp(2.0f * ax) + 1.0f);
    big = x >= 0.0f ? big : -big;
    return ax < 0.625f ? small : big;
}
static inline float li_sigmoid(float x) { return 1.0f / (1.0f + li_exp(-x)); }
#define LI_ZERO 0.0f
#define LI_HALF 0.5f
#define LI_ONE 1.0f

#endif
