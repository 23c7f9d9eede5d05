/* conv2d.c - image layers on channels-last batches (B,H,W,C): 2-D convolution by im2col and
 * one GEMM for the whole batch, and non-overlapping 2-D max pooling with a cached argmax.
 *
 * Does not: allocate (the caller passes the im2col buffers), support dilation, groups or
 * non-square kernels, or hold any state. Backward functions ACCUMULATE. */
#include "models/nn.h"

#include <string.h>

int nn_conv2d_out(int n, int k, int stride, int pad) {
    NN_ASSERT(k >= 1 && stride >= 1 && pad >= 0);
    int span = n + 2 * pad - k;
    return span < 0 ? 0 : span / stride + 1;
}

/* cols (B*Ho*Wo, C*k*k) := patches of x (B,H,W,C), zero outside the image. */
static void conv2d_im2col_(float *cols, const float *x, int B, int H, int Wd, int C, int k,
                           int s, int pad, int Ho, int Wo) {
    const int K = C * k * k, kk = k * k;
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * H * Wd * C;
        for (int i = 0; i < Ho; i++) {
            for (int j = 0; j < Wo; j++) {
                float *row = cols + (((size_t)b * Ho + i) * Wo + j) * K;
                for (int u = 0; u < k; u++) {
                    int hi = i * s + u - pad;
                    for (int v = 0; v < k; v++) {
                        int wi = j * s + v - pad;
                        float *dst = row + u * k + v;
                        if (hi < 0 || hi >= H || wi < 0 || wi >= Wd) {
                            for (int c = 0; c < C; c++) dst[(size_t)c * kk] = 0.0f;
                        } else {
                            const float *src = xb + ((size_t)hi * Wd + wi) * C;
                            for (int c = 0; c < C; c++) dst[(size_t)c * kk] = src[c];
                        }
                    }
                }
            }
        }
    }
}

/* dx (B,H,W,C) += col2im(dcols), the adjoint of conv2d_im2col_. */
static void conv2d_col2im_(float *dx, const float *dcols, int B, int H, int Wd, int C, int k,
                           int s, int pad, int Ho, int Wo) {
    const int K = C * k * k, kk = k * k;
    for (int b = 0; b < B; b++) {
        float *xb = dx + (size_t)b * H * Wd * C;
        for (int i = 0; i < Ho; i++) {
            for (int j = 0; j < Wo; j++) {
                const float *row = dcols + (((size_t)b * Ho + i) * Wo + j) * K;
                for (int u = 0; u < k; u++) {
                    int hi = i * s + u - pad;
                    if (hi < 0 || hi >= H) continue;
                    for (int v = 0; v < k; v++) {
                        int wi = j * s + v - pad;
                        if (wi < 0 || wi >= Wd) continue;
                        const float *src = row + u * k + v;
                        float *dst = xb + ((size_t)hi * Wd + wi) * C;
                        for (int c = 0; c < C; c++) dst[c] += src[(size_t)c * kk];
                    }
                }
            }
        }
    }
}

void nn_conv2d_forward(float *y, float *cols, const float *x, const float *W, const float *b,
                       int B, int H, int Wd, int C, int OC, int k, int stride, int pad) {
    int Ho = nn_conv2d_out(H, k, stride, pad), Wo = nn_conv2d_out(Wd, k, stride, pad);
    int N = B * Ho * Wo, K = C * k * k;
    if (N == 0) return;
    conv2d_im2col_(cols, x, B, H, Wd, C, k, stride, pad, Ho, Wo);
    if (b)
        for (int r = 0; r < N; r++) memcpy(y + (size_t)r * OC, b, (size_t)OC * sizeof(float));
    /* y (N,OC) = cols (N,K) W^T + y */
    nn_gemm(0, 1, N, OC, K, 1.0f, cols, K, W, K, b ? 1.0f : 0.0f, y, OC);
}

void nn_conv2d_backward(float *dx, float *dW, float *db, float *dcols, const float *dy,
                        const float *cols, const float *W, int B, int H, int Wd, int C, int OC,
                        int k, int stride, int pad) {
    int Ho = nn_conv2d_out(H, k, stride, pad), Wo = nn_conv2d_out(Wd, k, stride, pad);
    int N = B * Ho * Wo, K = C * k * k;
    if (N == 0) return;
    /* dW (OC,K) += dy^T cols */
    nn_gemm(1, 0, OC, K, N, 1.0f, dy, OC, cols, K, 1.0f, dW, K);
    if (db)
        for (int r = 0; r < N; r++) {
            const float *g = dy + (size_t)r * OC;
            for (int o = 0; o < OC; o++) db[o] += g[o];
        }
    if (!dx) return;
    /* dcols (N,K) = dy W, then scattered back onto the image */
    nn_gemm(0, 0, N, K, OC, 1.0f, dy, OC, W, K, 0.0f, dcols, K);
    conv2d_col2im_(dx, dcols, B, H, Wd, C, k, stride, pad, Ho, Wo);
}

void nn_maxpool2d_forward(float *y, int32_t *argmax, const float *x, int B, int H, int Wd,
                          int C, int p) {
    NN_ASSERT(p >= 1);
    int Ho = H / p, Wo = Wd / p;
    for (int b = 0; b < B; b++) {
        size_t xb = (size_t)b * H * Wd * C;
        for (int i = 0; i < Ho; i++)
            for (int j = 0; j < Wo; j++) {
                size_t o = (((size_t)b * Ho + i) * Wo + j) * C;
                for (int c = 0; c < C; c++) {
                    size_t best = xb + ((size_t)(i * p) * Wd + j * p) * C + c;
                    for (int u = 0; u < p; u++)
                        for (int v = 0; v < p; v++) {
                            size_t at = xb + ((size_t)(i * p + u) * Wd + j * p + v) * C + c;
                            if (x[at] > x[best]) best = at;
                        }
                    y[o + c] = x[best];
                    argmax[o + c] = (int32_t)(best - xb);
                }
            }
    }
}

void nn_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, int B, int H,
                           int Wd, int C, int p) {
    NN_ASSERT(p >= 1);
    size_t per_out = (size_t)(H / p) * (Wd / p) * C, per_in = (size_t)H * Wd * C;
    for (int b = 0; b < B; b++) {
        float *xb = dx + (size_t)b * per_in;
        const float *g = dy + (size_t)b * per_out;
        const int32_t *am = argmax + (size_t)b * per_out;
        for (size_t o = 0; o < per_out; o++) xb[am[o]] += g[o];
    }
}
