/* layers.c - the layer kernels of models/: embedding, linear, elementwise activations,
 * dropout, layer norm and row softmax, each as an explicit forward/backward pair.
 *
 * Forward functions take outputs, caches, inputs, dims; backward functions ACCUMULATE
 * into dx and parameter gradients (beta = 1). Nothing here allocates: callers own every
 * buffer. Matrix products go through OpenBLAS; elementwise loops are written so that
 * GCC vectorises them (see nn_math.h for the inline exp). Losses are in loss.c. */
#include "models/nn.h"
#include "models/nn_math.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* ---- embedding ---------------------------------------------------------------------- */

void nn_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    for (int i = 0; i < N; i++) {
        float *o = out + (size_t)i * C;
        int32_t id = ids[i];
        NN_ASSERT(id >= 0);
        if (id == NN_PAD) memset(o, 0, (size_t)C * sizeof *o);
        else memcpy(o, table + (size_t)id * C, (size_t)C * sizeof *o);
    }
}

void nn_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    for (int i = 0; i < N; i++) {
        int32_t id = ids[i];
        NN_ASSERT(id >= 0);
        if (id == NN_PAD) continue;
        float *restrict d = dtable + (size_t)id * C;
        const float *restrict g = dout + (size_t)i * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

/* ---- linear ------------------------------------------------------------------------- */

void nn_linear_forward(float *y, const float *x, const float *W, const float *b, int B, int C,
                       int OC) {
    if (B <= 0 || OC <= 0) return;
    if (b) {
        for (int i = 0; i < B; i++) memcpy(y + (size_t)i * OC, b, (size_t)OC * sizeof *b);
    } else if (C <= 0) {
        memset(y, 0, (size_t)B * OC * sizeof *y);
    }
    if (C > 0) /* BLAS rejects lda = 0 */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, OC, C, 1.0f, x, C, W, C,
                    b ? 1.0f : 0.0f, y, OC);
}

void nn_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                        const float *W, int B, int C, int OC) {
    if (B <= 0 || OC <= 0) return;
    if (dx && C > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, OC, 1.0f, dy, OC, W, C,
                    1.0f, dx, C);
    if (dW && C > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, B, 1.0f, dy, OC, x, C, 1.0f,
                    dW, C);
    if (db)
        for (int i = 0; i < B; i++) {
            const float *restrict g = dy + (size_t)i * OC;
            for (int o = 0; o < OC; o++) db[o] += g[o];
        }
}

/* ---- elementwise activations -------------------------------------------------------- */
/* The exp-based kernels run in blocks of NN_VB elements: a fixed-length loop GCC turns
 * into a few vector instructions. The tail goes through the same block function via a
 * zero-padded local copy, so every element is computed by identical instructions
 * whatever its position in the array or the array's length: results do not change bit
 * for bit when a batch is cut differently across ranks. Forward may run in place: a
 * block is read completely before it is written. */
#define NN_VB (2 * NN_VW)

#define NN_MAP1_(blk, y, x, n)                                                          \
    do {                                                                                \
        size_t i_ = 0;                                                                  \
        for (; i_ + NN_VB <= (n); i_ += NN_VB) blk((y) + i_, (x) + i_);                 \
        if (i_ < (n)) {                                                                 \
            float a_[NN_VB] = {0}, o_[NN_VB];                                           \
            memcpy(a_, (x) + i_, ((n) - i_) * sizeof(float));                           \
            blk(o_, a_);                                                                \
            memcpy((y) + i_, o_, ((n) - i_) * sizeof(float));                           \
        }                                                                               \
    } while (0)

/* dx += dy * f'(c) over blocks; same tail treatment. */
#define NN_MAP2_(blk, dx, dy, c, n)                                                     \
    do {                                                                                \
        size_t i_ = 0;                                                                  \
        for (; i_ + NN_VB <= (n); i_ += NN_VB) blk((dx) + i_, (dy) + i_, (c) + i_);     \
        if (i_ < (n)) {                                                                 \
            float d_[NN_VB] = {0}, g_[NN_VB] = {0}, c_[NN_VB] = {0};                    \
            size_t r_ = ((n) - i_) * sizeof(float);                                     \
            memcpy(d_, (dx) + i_, r_);                                                  \
            memcpy(g_, (dy) + i_, r_);                                                  \
            memcpy(c_, (c) + i_, r_);                                                   \
            blk(d_, g_, c_);                                                            \
            memcpy((dx) + i_, d_, r_);                                                  \
        }                                                                               \
    } while (0)

void nn_relu_forward(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void nn_relu_backward(float *restrict dx, const float *restrict dy, const float *restrict x,
                      size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += x[i] > 0.0f ? dy[i] : 0.0f;
}

/* tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|): the sign bit is moved by masks. */
static inline nn_vf nn_vtanh_(nn_vf u) {
    const nn_vi sign = (nn_vi){0} + (int32_t)0x80000000u;
    nn_vi ui = (nn_vi)u;
    nn_vf a = (nn_vf)(ui & ~sign);
    nn_vf e = nn_vexp_(-2.0f * a);
    nn_vf t = (1.0f - e) / (1.0f + e);
    return (nn_vf)((nn_vi)t | (ui & sign));
}

static inline void nn_tanh_blk_(float *y, const float *x) {
    nn_vf a = nn_vtanh_(nn_vload_(x)), b = nn_vtanh_(nn_vload_(x + NN_VW));
    nn_vstore_(y, a);
    nn_vstore_(y + NN_VW, b);
}

void nn_tanh_forward(float *y, const float *x, size_t n) { NN_MAP1_(nn_tanh_blk_, y, x, n); }

void nn_tanh_backward(float *restrict dx, const float *restrict dy, const float *restrict y,
                      size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * (1.0f - y[i] * y[i]);
}

static inline void nn_sigmoid_blk_(float *y, const float *x) {
    nn_vf a = 1.0f / (1.0f + nn_vexp_(-nn_vload_(x)));
    nn_vf b = 1.0f / (1.0f + nn_vexp_(-nn_vload_(x + NN_VW)));
    nn_vstore_(y, a);
    nn_vstore_(y + NN_VW, b);
}

void nn_sigmoid_forward(float *y, const float *x, size_t n) {
    NN_MAP1_(nn_sigmoid_blk_, y, x, n);
}

void nn_sigmoid_backward(float *restrict dx, const float *restrict dy, const float *restrict y,
                         size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * y[i] * (1.0f - y[i]);
}

/* GELU(x) = 0.5 x (1 + tanh(u)), u = k (x + 0.044715 x^3), k = sqrt(2/pi).
 * 1 + tanh(u) = 2 / (1 + exp(-2u)) = 2 sigmoid(2u), which needs one exp and no sign
 * handling: y = x sigmoid(2u). */
#define NN_GELU_K 0.7978845608028654f
#define NN_GELU_A 0.044715f

/* -2u = x (c1 + c2 x^2); y = x / (1 + exp(-2u)). Vector types keep the block in registers. */
#define NN_GELU_C1 (-2.0f * NN_GELU_K)
#define NN_GELU_C2 (-2.0f * NN_GELU_K * NN_GELU_A)

static inline nn_vf nn_vgelu_(nn_vf v) {
    nn_vf e = nn_vexp_(v * (NN_GELU_C1 + NN_GELU_C2 * (v * v)));
    return v / (1.0f + e);
}

static inline void nn_gelu_blk_(float *y, const float *x) {
    nn_vf a = nn_vgelu_(nn_vload_(x)), b = nn_vgelu_(nn_vload_(x + NN_VW));
    nn_vstore_(y, a);
    nn_vstore_(y + NN_VW, b);
}

void nn_gelu_forward(float *y, const float *x, size_t n) { NN_MAP1_(nn_gelu_blk_, y, x, n); }

/* With s = sigmoid(2u) = 1 / (1 + exp(-2u)):
 * d/dx [x s] = s + x * 2 s (1 - s) * u',  u' = k (1 + 3 a x^2). */
static inline nn_vf nn_vgelu_grad_(nn_vf v) {
    nn_vf v2 = v * v;
    nn_vf s = 1.0f / (1.0f + nn_vexp_(v * (NN_GELU_C1 + NN_GELU_C2 * v2)));
    nn_vf du2 = (2.0f * NN_GELU_K) + (6.0f * NN_GELU_K * NN_GELU_A) * v2; /* 2 u' */
    return s + v * s * (1.0f - s) * du2;
}

static inline void nn_gelu_bwd_blk_(float *dx, const float *dy, const float *x) {
    nn_vf a = nn_vload_(dx) + nn_vload_(dy) * nn_vgelu_grad_(nn_vload_(x));
    nn_vf b = nn_vload_(dx + NN_VW) + nn_vload_(dy + NN_VW) * nn_vgelu_grad_(nn_vload_(x + NN_VW));
    nn_vstore_(dx, a);
    nn_vstore_(dx + NN_VW, b);
}

void nn_gelu_backward(float *restrict dx, const float *restrict dy, const float *restrict x,
                      size_t n) {
    NN_MAP2_(nn_gelu_bwd_blk_, dx, dy, x, n);
}

/* ---- dropout ------------------------------------------------------------------------ */

void nn_dropout_forward(float *y, float *mask, const float *x, size_t n, int row, float p,
                        uint64_t seed, uint64_t step, const int64_t *row_index) {
    NN_ASSERT(row > 0 && n % (size_t)row == 0);
    NN_ASSERT(p >= 0.0f && p < 1.0f);
    if (p == 0.0f) {
        for (size_t i = 0; i < n; i++) {
            mask[i] = 1.0f;
            y[i] = x[i];
        }
        return;
    }
    float keep = 1.0f / (1.0f - p);
    /* Element j of a row is dropped when nn_rng_uniform of its row's generator, draw
     * j + 1, is below p: (hash >> 40) * 2^-24 < p, i.e. (hash >> 40) < p * 2^24 (exact,
     * 2^24 scales a float exactly). Written as a plain loop over j (what nn_rng_u64
     * computes for counter j + 1) so GCC vectorises the hash. */
    const uint64_t thresh = (uint64_t)ceilf(p * 16777216.0f);
    size_t rows = n / (size_t)row;
    for (size_t r = 0; r < rows; r++) {
        uint64_t idx = row_index ? (uint64_t)row_index[r] : (uint64_t)r;
        uint64_t key = nn_rng_make(seed, step, idx, NN_RNG_DROPOUT).key;
        float *restrict m = mask + r * (size_t)row;
        for (int j = 0; j < row; j++) {
            uint64_t z = key + (uint64_t)(j + 1) * UINT64_C(0x9E3779B97F4A7C15);
            z ^= z >> 30;
            z *= UINT64_C(0xBF58476D1CE4E5B9);
            z ^= z >> 27;
            z *= UINT64_C(0x94D049BB133111EB);
            z ^= z >> 31;
            m[j] = (z >> 40) < thresh ? 0.0f : keep;
        }
        const float *xr = x + r * (size_t)row;
        float *yr = y + r * (size_t)row;
        for (int j = 0; j < row; j++) yr[j] = xr[j] * m[j];
    }
}

void nn_dropout_backward(float *restrict dx, const float *restrict dy, const float *restrict mask,
                         size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * mask[i];
}

/* ---- layer norm --------------------------------------------------------------------- */
/* Row reductions run in vector lanes (nn_vf) in a fixed order: a plain float loop would
 * be one serial chain of dependent adds, ~4x slower at C = 256. */

#define NN_LN_EPS 1e-5f

void nn_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                          const float *b, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        float *yr = y + (size_t)i * C;
        float m = nn_vrow_sum_(xr, C) / (float)C;
        /* two passes: no cancellation when |mean| >> std */
        nn_vf v0 = nn_vsplat_(0.0f), v1 = v0;
        int c = 0;
        for (; c + 2 * NN_VW <= C; c += 2 * NN_VW) {
            nn_vf d0 = nn_vload_(xr + c) - m, d1 = nn_vload_(xr + c + NN_VW) - m;
            v0 += d0 * d0;
            v1 += d1 * d1;
        }
        float v = nn_vsum_(v0 + v1);
        for (; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
        float rs = 1.0f / sqrtf(v / (float)C + NN_LN_EPS);
        for (c = 0; c < C; c++) yr[c] = (xr[c] - m) * rs * g[c] + b[c];
        mean[i] = m;
        rstd[i] = rs;
    }
}

/* With xhat = (x - mean) rstd and dn = dy g:
 *   dx = rstd (dn - mean(dn) - xhat mean(dn xhat)),  dg += dy xhat,  db += dy. */
void nn_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                           const float *mean, const float *rstd, const float *g, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *restrict dyr = dy + (size_t)i * C;
        const float *restrict xr = x + (size_t)i * C;
        float m = mean[i], rs = rstd[i];
        nn_vf a0 = nn_vsplat_(0.0f), a1 = a0, b0 = a0, b1 = a0;
        int c = 0;
        for (; c + 2 * NN_VW <= C; c += 2 * NN_VW) {
            nn_vf dn0 = nn_vload_(dyr + c) * nn_vload_(g + c);
            nn_vf dn1 = nn_vload_(dyr + c + NN_VW) * nn_vload_(g + c + NN_VW);
            a0 += dn0;
            a1 += dn1;
            b0 += dn0 * ((nn_vload_(xr + c) - m) * rs);
            b1 += dn1 * ((nn_vload_(xr + c + NN_VW) - m) * rs);
        }
        float sdn = nn_vsum_(a0 + a1), sdnx = nn_vsum_(b0 + b1);
        for (; c < C; c++) {
            float dn = dyr[c] * g[c];
            sdn += dn;
            sdnx += dn * ((xr[c] - m) * rs);
        }
        sdn /= (float)C;
        sdnx /= (float)C;
        if (dx) {
            float *restrict dxr = dx + (size_t)i * C;
            for (c = 0; c < C; c++) {
                float xh = (xr[c] - m) * rs;
                dxr[c] += rs * (dyr[c] * g[c] - sdn - xh * sdnx);
            }
        }
        if (dg)
            for (c = 0; c < C; c++) dg[c] += dyr[c] * ((xr[c] - m) * rs);
        if (db)
            for (c = 0; c < C; c++) db[c] += dyr[c];
    }
}

/* ---- softmax ------------------------------------------------------------------------ */

void nn_softmax_forward(float *p, const float *x, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        float *pr = p + (size_t)i * C;
        float mx = nn_vrow_max_(xr, C);
        float inv = 1.0f / nn_vrow_expsum_(pr, xr, mx, C);
        for (int c = 0; c < C; c++) pr[c] *= inv;
    }
}
