/* nn_math.h - private to models/: a vectorisable single-precision exp and friends.
 *
 * libm's expf is a call the compiler cannot vectorise without -ffast-math, and the
 * elementwise kernels (softmax, cross-entropy, GELU, sigmoid, tanh) are exp-bound, so
 * this header supplies an inline exp written with plain arithmetic: Cody-Waite range
 * reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 polynomial (Cephes coefficients)
 * for e^r, and 2^n assembled from exponent bits. Max relative error ~1.2e-7 (1 ulp)
 * on [-87, 88]; inputs are clamped to that range, so exp(-inf) gives ~1e-38, not 0,
 * and NaN inputs give an unspecified finite value (callers that care check for NaN).
 * Not a public API: nn.h does not declare these. */
#ifndef MODELS_NN_MATH_H
#define MODELS_NN_MATH_H

#include <stdint.h>

/* GCC at -O2 only vectorises loops that need no cost estimate; ask for the dynamic
 * cost model in the files that include this header. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

static inline float nn_exp_(float x) {
    x = x < -87.0f ? -87.0f : x; /* ternaries, not fminf: they vectorise */
    x = x > 88.0f ? 88.0f : x;
    /* round(x / ln2) by the 1.5 * 2^23 trick (exact for |t| < 2^22) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f; /* ln2 split in two: the high part is exact */
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) * (1 << 23);
    return p * s.f;
}

/* tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|): never overflows. */
static inline float nn_tanh_(float u) {
    float a = u < 0.0f ? -u : u;
    float e = nn_exp_(-2.0f * a);
    float t = (1.0f - e) / (1.0f + e);
    return u < 0.0f ? -t : t;
}

/* 1 / (1 + exp(-x)); exp(-x) is clamped, so no overflow and no 0/0. */
static inline float nn_sigmoid_(float x) { return 1.0f / (1.0f + nn_exp_(-x)); }

#endif
