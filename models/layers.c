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
    float beta = 0.0f;
    if (b) {
        for (int i = 0; i < B; i++) memcpy(y + (size_t)i * OC, b, (size_t)OC * sizeof *b);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, OC, C, 1.0f, x, C, W, C, beta, y,
                OC);
}

void nn_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                        const float *W, int B, int C, int OC) {
    if (B <= 0 || OC <= 0 || C <= 0) return;
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, OC, 1.0f, dy, OC, W, C,
                    1.0f, dx, C);
    if (dW)
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
#define NN_VB 16

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

static inline void nn_tanh_blk_(float *y, const float *x) {
    float t[NN_VB];
    for (int k = 0; k < NN_VB; k++) t[k] = nn_tanh_(x[k]);
    memcpy(y, t, sizeof t);
}

void nn_tanh_forward(float *y, const float *x, size_t n) { NN_MAP1_(nn_tanh_blk_, y, x, n); }

void nn_tanh_backward(float *restrict dx, const float *restrict dy, const float *restrict y,
                      size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * (1.0f - y[i] * y[i]);
}

static inline void nn_sigmoid_blk_(float *y, const float *x) {
    float t[NN_VB];
    for (int k = 0; k < NN_VB; k++) t[k] = nn_sigmoid_(x[k]);
    memcpy(y, t, sizeof t);
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

static inline void nn_gelu_blk_(float *y, const float *x) {
    float t[NN_VB];
    for (int k = 0; k < NN_VB; k++) {
        float v = x[k];
        float u = NN_GELU_K * (v + NN_GELU_A * v * v * v);
        t[k] = v * nn_sigmoid_(2.0f * u);
    }
    memcpy(y, t, sizeof t);
}

void nn_gelu_forward(float *y, const float *x, size_t n) { NN_MAP1_(nn_gelu_blk_, y, x, n); }

/* d/dx [x s(2u)] = s + x * 2 s (1 - s) * u', u' = k (1 + 3 a x^2), s = sigmoid(2u). */
static inline void nn_gelu_bwd_blk_(float *dx, const float *dy, const float *x) {
    float t[NN_VB];
    for (int k = 0; k < NN_VB; k++) {
        float v = x[k];
        float v2 = v * v;
        float u = NN_GELU_K * (v + NN_GELU_A * v2 * v);
        float s = nn_sigmoid_(2.0f * u);
        float du = NN_GELU_K * (1.0f + 3.0f * NN_GELU_A * v2);
        t[k] = dx[k] + dy[k] * (s + 2.0f * v * s * (1.0f - s) * du);
    }
    memcpy(dx, t, sizeof t);
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
    size_t rows = n / (size_t)row;
    for (size_t r = 0; r < rows; r++) {
        uint64_t idx = row_index ? (uint64_t)row_index[r] : (uint64_t)r;
        nn_rng g = nn_rng_make(seed, step, idx, NN_RNG_DROPOUT);
        float *restrict m = mask + r * (size_t)row;
        for (int j = 0; j < row; j++) m[j] = nn_rng_uniform(&g) < p ? 0.0f : keep;
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

#define NN_LN_EPS 1e-5f

void nn_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                          const float *b, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        float *yr = y + (size_t)i * C;
        float s = 0.0f;
        for (int c = 0; c < C; c++) s += xr[c];
        float m = s / (float)C;
        float v = 0.0f; /* two passes: no cancellation when |mean| >> std */
        for (int c = 0; c < C; c++) {
            float d = xr[c] - m;
            v += d * d;
        }
        float rs = 1.0f / sqrtf(v / (float)C + NN_LN_EPS);
        for (int c = 0; c < C; c++) yr[c] = (xr[c] - m) * rs * g[c] + b[c];
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
        float sdn = 0.0f, sdnx = 0.0f;
        for (int c = 0; c < C; c++) {
            float xh = (xr[c] - m) * rs;
            float dn = dyr[c] * g[c];
            sdn += dn;
            sdnx += dn * xh;
        }
        sdn /= (float)C;
        sdnx /= (float)C;
        if (dx) {
            float *restrict dxr = dx + (size_t)i * C;
            for (int c = 0; c < C; c++) {
                float xh = (xr[c] - m) * rs;
                dxr[c] += rs * (dyr[c] * g[c] - sdn - xh * sdnx);
            }
        }
        if (dg)
            for (int c = 0; c < C; c++) dg[c] += dyr[c] * (xr[c] - m) * rs;
        if (db)
            for (int c = 0; c < C; c++) db[c] += dyr[c];
    }
}

/* ---- softmax ------------------------------------------------------------------------ */

void nn_softmax_forward(float *p, const float *x, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        float *pr = p + (size_t)i * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = xr[c] > mx ? xr[c] : mx;
        float s = 0.0f;
        for (int c = 0; c < C; c++) {
            float e = nn_exp_(xr[c] - mx);
            pr[c] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (int c = 0; c < C; c++) pr[c] *= inv;
    }
}
