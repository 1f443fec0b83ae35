/* The one place that decides the vector instruction set of a build and wraps the intrinsics
   the kernels use. setup.py compiles the recurrent kernels once per ISA of the target (x86-64:
   portable, AVX2+FMA, AVX-512; aarch64: portable armv8-a NEON, armv8.2-a+fp16+dotprod); everything else is written on li_vf (GCC vector extensions, LI_VEC floats) and the
   helpers below, never on __AVX*__ or _mm* directly.

   LI_VEC    floats per vector: 16 (AVX-512), 8 (AVX2), 4 (otherwise)
   LI_VREGS  vector registers: 32 on AVX-512, where 4 rows x 4 gates of accumulators fit
   LI_ISA    the build's name, as lstminfer/kernels/cython_backend.py spells it */
#ifndef LI_SIMD_H
#define LI_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define LI_ISA_AVX512 1
#define LI_ISA_AVX2 1
#define LI_VEC 16
#define LI_VREGS 32
#define LI_ISA "avx512"
#elif defined(__AVX2__)
#define LI_ISA_AVX512 0
#define LI_ISA_AVX2 1
#define LI_VEC 8
#define LI_VREGS 16
#define LI_ISA "avx2"
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD) && defined(__ARM_FEATURE_MATMUL_INT8)
#define LI_ISA_AVX512 0
#define LI_ISA_AVX2 0
#define LI_VEC 4
#define LI_VREGS 16
#define LI_ISA "armv86" /* armv8.2-a+fp16+dotprod+i8mm: the armv82 build, smmla for int8 (li_vnni.h) */
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define LI_ISA_AVX512 0
#define LI_ISA_AVX2 0
#define LI_VEC 4
#define LI_VREGS 16
#define LI_ISA "armv82" /* armv8.2-a+fp16+dotprod: 128-bit NEON, sdot for int8 (li_vnni.h) */
#else
#define LI_ISA_AVX512 0
#define LI_ISA_AVX2 0
#define LI_VEC 4
#define LI_VREGS 16
#define LI_ISA "portable" /* SSE2 on x86-64, NEON (armv8-a) on aarch64: GCC vector extensions */
#endif

#if LI_ISA_AVX2 || defined(__SSE2__)
#include <immintrin.h>
#endif

typedef float li_vf __attribute__((vector_size(LI_VEC * 4)));
typedef int32_t li_vi __attribute__((vector_size(LI_VEC * 4)));

/* unaligned loads and stores (memcpy: GCC emits one vector move) */
static inline li_vf li_load(const float *p) { li_vf v; memcpy(&v, p, sizeof v); return v; }
static inline void li_store(float *p, li_vf v) { memcpy(p, &v, sizeof v); }
static inline li_vf li_splat(float a) { li_vf v = {0}; return v + a; }

/* m ? a : b, lane by lane (m from a comparison: all ones or zero) */
static inline li_vf li_vsel(li_vi m, li_vf a, li_vf b) { return (li_vf)((m & (li_vi)a) | (~m & (li_vi)b)); }

/* |x| and copysign(b, x) (b >= 0) as bit operations: one instruction each where selects take two or three */
static inline li_vf li_vabs(li_vf x) { return (li_vf)((li_vi)x & 0x7fffffff); }
static inline li_vf li_vsign_of(li_vf b, li_vf x) { return (li_vf)((li_vi)b | ((li_vi)x & INT32_MIN)); }

/* x clamped to [-clip, clip], and exp's argument to [-87, 88] (e^88 still finite, e^-87 still
   normal), NaN passing through: min/max where the ISA has them (the second operand is returned on
   NaN), else two selects (a comparison with NaN is false). */
#if LI_ISA_AVX512
static inline li_vf li_vclamp_to(li_vf x, float lo, float hi) {
    __m512 m = _mm512_min_ps(_mm512_set1_ps(hi), (__m512)x);
    return (li_vf)_mm512_max_ps(_mm512_set1_ps(lo), m);
}
#elif LI_ISA_AVX2
static inline li_vf li_vclamp_to(li_vf x, float lo, float hi) {
    __m256 m = _mm256_min_ps(_mm256_set1_ps(hi), (__m256)x);
    return (li_vf)_mm256_max_ps(_mm256_set1_ps(lo), m);
}
#else
static inline li_vf li_vclamp_to(li_vf x, float lo, float hi) {
    x = li_vsel(x > li_splat(hi), li_splat(hi), x);
    return li_vsel(x < li_splat(lo), li_splat(lo), x);
}
#endif
static inline li_vf li_vclamp(li_vf x, float clip) { return li_vclamp_to(x, -clip, clip); }
static inline li_vf li_clamp_exp_arg(li_vf x) { return li_vclamp_to(x, -87.0f, 88.0f); }

/* LI_FLOAT_FLOOR: floor in one instruction (li_vfloor) and p * 2^n from a float n (li_vscale2n);
   otherwise callers floor through int conversions and build 2^n from exponent bits. */
#if LI_ISA_AVX512
#define LI_FLOAT_FLOOR 1
static inline li_vf li_vfloor(li_vf v) { return (li_vf)_mm512_roundscale_ps((__m512)v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
static inline li_vf li_vscale2n(li_vf p, li_vf nf) { return (li_vf)_mm512_scalef_ps((__m512)p, (__m512)nf); }
#elif LI_ISA_AVX2
#define LI_FLOAT_FLOOR 1
static inline li_vf li_vfloor(li_vf v) { return (li_vf)_mm256_floor_ps((__m256)v); }
static inline li_vf li_vscale2n(li_vf p, li_vf nf) {
    li_vi n = __builtin_convertvector(nf, li_vi);  /* exact: nf is a whole number in [-126, 127] */
    return p * (li_vf)((n + 127) << 23);
}
#else
#define LI_FLOAT_FLOOR 0
#endif

/* 1 / d by vrcp14ps and one Newton step (within an ulp of the division), on the FMA pipes where
   vdivps waits on the divider; elsewhere the division. */
static inline li_vf li_vrecip(li_vf d) {
#if LI_ISA_AVX512
    li_vf r = (li_vf)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

/* LI_VEC int8 weights -> floats (intrinsics: GCC turns __builtin_convertvector from a char
   vector into one scalar conversion per lane) */
static inline li_vf li_loadq(const signed char *p) {
    li_vf v;
#if LI_ISA_AVX512
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif LI_ISA_AVX2
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#elif defined(__SSE2__)
    int32_t word; memcpy(&word, p, 4);
    __m128i b = _mm_cvtsi32_si128(word);
    b = _mm_unpacklo_epi16(_mm_unpacklo_epi8(b, b), _mm_unpacklo_epi8(b, b));  /* each byte in a lane's top */
    __m128 f = _mm_cvtepi32_ps(_mm_srai_epi32(b, 24));
#else
    float f[LI_VEC];
    for (int i = 0; i < LI_VEC; i++) f[i] = (float)p[i];
#endif
    memcpy(&v, &f, sizeof v);
    return v;
}

/* LI_VEC bf16 bit patterns -> floats, exactly (the 16 bits shifted into the top half) */
static inline li_vf li_loadbf(const uint16_t *p) {
    li_vf v;
#if LI_ISA_AVX512
    __m512i f = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif LI_ISA_AVX2
    __m256i f = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#elif defined(__SSE2__)
    __m128i f = _mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p));
#else
    uint32_t f[LI_VEC];
    for (int i = 0; i < LI_VEC; i++) f[i] = (uint32_t)p[i] << 16;
#endif
    memcpy(&v, &f, sizeof v);
    return v;
}

/* Keeps v in a register: otherwise GCC folds each use of a weight vector into its multiply-add
   as a memory operand, loading it again per row. */
#if defined(__x86_64__) || defined(__i386__)
#define LI_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define LI_IN_REGISTER(v) ((void)0)
#endif

#endif
