/* nn_math.h - private to models/: a vectorisable single-precision exp and friends.
 *
 * libm's expf is a call the compiler cannot vectorise without -ffast-math, and the
 * elementwise kernels (softmax, cross-entropy, GELU, sigmoid, tanh) are exp-bound, so
 * this header supplies an inline exp written with plain arithmetic: Cody-Waite range
 * reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 polynomial (Cephes coefficients)
 * for e^r, and 2^n assembled from exponent bits. Max relative error ~1.2e-7 (1 ulp)
 * on [-87, 88]; below -87 the result is exactly 0 (so masked -inf logits vanish),
 * above 88 it saturates at e^88 (no inf); NaN in gives NaN out.
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
    float x0 = x;
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
    return x0 < -87.0f ? 0.0f : p * s.f; /* exact 0 for masked (-inf) entries */
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

/* ---- native-width vectors (GCC/clang vector extensions) ----------------------------- */
/* For reductions GCC will not keep in registers on its own (running max, argmax, sums):
 * with explicit vector types the accumulators stay in registers. NN_VW lanes fill one
 * register of the target (-march=native: AVX-512 16, AVX 8, else SSE 4). Results are
 * reproducible for a given build; a build for another ISA may differ in the last bits. */
#if defined(__AVX512F__)
#define NN_VW 16 /* lanes: one native register (wider ones change the ABI, -Wpsabi) */
#elif defined(__AVX__)
#define NN_VW 8
#else
#define NN_VW 4
#endif
typedef float nn_vf __attribute__((vector_size(NN_VW * 4)));
typedef int32_t nn_vi __attribute__((vector_size(NN_VW * 4)));

static inline nn_vf nn_vload_(const float *p) {
    nn_vf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
static inline void nn_vstore_(float *p, nn_vf v) { __builtin_memcpy(p, &v, sizeof v); }
static inline nn_vf nn_vsplat_(float a) { return (nn_vf){0} + a; }
/* m ? a : b lane by lane; m is a comparison result (all ones or all zeros). */
static inline nn_vf nn_vsel_(nn_vi m, nn_vf a, nn_vf b) {
    return (nn_vf)((m & (nn_vi)a) | (~m & (nn_vi)b));
}
static inline nn_vi nn_vseli_(nn_vi m, nn_vi a, nn_vi b) { return (m & a) | (~m & b); }
static inline float nn_vsum_(nn_vf v) {
    float s = 0.0f;
    for (int k = 0; k < NN_VW; k++) s += v[k];
    return s;
}

/* nn_exp_ on NN_VW lanes, the same algorithm and constants. */
static inline nn_vf nn_vexp_(nn_vf x) {
    nn_vi under = x < -87.0f;
    x = nn_vsel_(under, nn_vsplat_(-87.0f), x);
    x = nn_vsel_(x > 88.0f, nn_vsplat_(88.0f), x);
    nn_vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    nn_vf r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    nn_vf p = nn_vsplat_(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    nn_vi e = (__builtin_convertvector(n, nn_vi) + 127) << 23;
    return nn_vsel_(under, nn_vsplat_(0.0f), p * (nn_vf)e);
}

/* Row reductions in 2 * NN_VW lanes plus a scalar tail; fixed order for a given n. */
static inline float nn_vrow_max_(const float *x, int n) {
    nn_vf m0 = nn_vsplat_(-__builtin_inff()), m1 = m0;
    int j = 0;
    for (; j + 2 * NN_VW <= n; j += 2 * NN_VW) {
        nn_vf a = nn_vload_(x + j), b = nn_vload_(x + j + NN_VW);
        m0 = nn_vsel_(a > m0, a, m0);
        m1 = nn_vsel_(b > m1, b, m1);
    }
    m0 = nn_vsel_(m1 > m0, m1, m0);
    float m = m0[0];
    for (int k = 1; k < NN_VW; k++) m = m0[k] > m ? m0[k] : m;
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

static inline float nn_vrow_sum_(const float *x, int n) {
    nn_vf s0 = nn_vsplat_(0.0f), s1 = s0;
    int j = 0;
    for (; j + 2 * NN_VW <= n; j += 2 * NN_VW) {
        s0 += nn_vload_(x + j);
        s1 += nn_vload_(x + j + NN_VW);
    }
    float s = nn_vsum_(s0 + s1);
    for (; j < n; j++) s += x[j];
    return s;
}

/* sum_j exp(x_j - mx); when e != NULL also e[j] = exp(x_j - mx). e may equal x: each
 * vector is loaded before the store to the same addresses. */
static inline float nn_vrow_expsum_(float *e, const float *x, float mx, int n) {
    nn_vf s0 = nn_vsplat_(0.0f), s1 = s0;
    int j = 0;
    for (; j + 2 * NN_VW <= n; j += 2 * NN_VW) {
        nn_vf e0 = nn_vexp_(nn_vload_(x + j) - mx);
        nn_vf e1 = nn_vexp_(nn_vload_(x + j + NN_VW) - mx);
        s0 += e0;
        s1 += e1;
        if (e) {
            nn_vstore_(e + j, e0);
            nn_vstore_(e + j + NN_VW, e1);
        }
    }
    float s = nn_vsum_(s0 + s1);
    for (; j < n; j++) {
        float t = nn_exp_(x[j] - mx);
        s += t;
        if (e) e[j] = t;
    }
    return s;
}

#endif
