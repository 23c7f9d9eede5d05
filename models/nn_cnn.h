/* nn_cnn.h - image layers (2-D convolution, 2-D max pooling) and the image captioner.
 * Included by nn.h; do not include directly.
 *
 * Layout: images are batch-major and channels-last, (B,H,W,C) row-major ("NHWC"), so the
 * output of a convolution over a batch is one GEMM result and the last feature map is
 * directly a grid of P = H*W feature vectors (B,P,C) for attention. Convolution weights
 * follow PyTorch's nn.Conv2d layout (OC,C,k,k). ReLU is core's nn_relu_forward/backward. */
#ifndef MODELS_NN_CNN_H
#define MODELS_NN_CNN_H

#include <stddef.h>
#include <stdint.h>

/* ---- Conv2D ------------------------------------------------------------------------- */
/* Output size along one axis: (n + 2 pad - k) / stride + 1 (floor), or 0 when the padded
 * input is shorter than k. k, stride >= 1, pad >= 0. Cannot fail. */
int nn_conv2d_out(int n, int k, int stride, int pad);

/* y (B,Ho,Wo,OC) = conv(x (B,H,W,C), W (OC,C,k,k)) + b (OC), cross-correlation as
 * nn.Conv2d: y[b,i,j,o] = b[o] + sum_{c,u,v} W[o,c,u,v] x[b, i*s+u-pad, j*s+v-pad, c],
 * positions outside the image reading as zero. Ho, Wo = nn_conv2d_out(H|W, k, s, pad).
 * im2col into cols (B*Ho*Wo, C*k*k) (column index c*k*k + u*k + v; the cache backward
 * needs), then ONE GEMM for the whole batch. b may be NULL. Cannot fail. */
void nn_conv2d_forward(float *y, float *cols, const float *x, const float *W, const float *b,
                       int B, int H, int Wd, int C, int OC, int k, int stride, int pad);
/* Backward of nn_conv2d_forward for dy (B,Ho,Wo,OC): ACCUMULATES dW (OC,C,k,k) += dy^T cols,
 * db (OC) += colsum(dy) (db may be NULL) and, when dx (B,H,W,C) != NULL, dx += col2im(dy W)
 * using the scratch dcols (B*Ho*Wo, C*k*k) (unused when dx is NULL). Cannot fail. */
void nn_conv2d_backward(float *dx, float *dW, float *db, float *dcols, const float *dy,
                        const float *cols, const float *W, int B, int H, int Wd, int C, int OC,
                        int k, int stride, int pad);

/* ---- 2-D max pooling ----------------------------------------------------------------- */
/* Non-overlapping p x p windows (stride p, no padding, a ragged edge dropped, as
 * nn.MaxPool2d(p)): y (B,H/p,W/p,C) = window max of x (B,H,W,C); argmax (B,H/p,W/p,C) caches
 * the flat index into x of each maximum (the first one on ties). p >= 1. Cannot fail. */
void nn_maxpool2d_forward(float *y, int32_t *argmax, const float *x, int B, int H, int Wd,
                          int C, int p);
/* dx (B,H,W,C) += scatter of dy (B,H/p,W/p,C) to the cached argmax positions. */
void nn_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, int B, int H,
                           int Wd, int C, int p);

/* ---- the captioner (captioner.c; listed in nn_models) ------------------------------- */
/* captioner: image (B, C*H*W, channel-major as stored) -> CNN encoder (per entry of
 * `channels`: conv k x k, stride 1, same padding -> ReLU -> max pool `pool`) -> feature grid
 * F (B,P,Dv), P = h*w of the last map, Dv = last channel count ->
 *   s_0 = tanh(W_init mean_j F_j + b_init), c_0 = 0 (LSTM)
 *   step t (teacher forcing; input NN_BOS, y_0, ..., y_{U-2}):
 *     attention bahdanau: e_tj = v . tanh(W_s s_{t-1} + b_s + W_k F_j + p_j), a_t = softmax_j,
 *                         ctx_t = sum_j a_tj F_j        (none: ctx_t = mean_j F_j)
 *                         p_j (P,A): learned cell positions (key positions, default true)
 *     s_t = cell([emb(y_{t-1}); ctx_t], s_{t-1})   (lstm|gru, PyTorch gate layout)
 *     logits_t = W_o [s_t; ctx_t] + b_o  -> softmax cross-entropy over vocab_tgt, NN_PAD
 *                                           targets ignored
 * data_kind "caption": dense images xf (B,D), D = image_c*image_h*image_w, and target ids
 * y (B,U) (caption words, NN_EOS, NN_PAD padding), y_len optional. Stats: loss sum,
 * count = target tokens, correct = argmax hits. Keys: channels, kernel, pool, cell, dim,
 * hidden, attention, positions.
 * decode: greedy (beam 1) or beam search with length normalisation
 * score / ((5 + len) / 6)^len_alpha (len counts the NN_EOS); never emits NN_PAD or NN_BOS;
 * rows end with NN_EOS and are NN_PAD-padded (or hold max_out ids when the limit was hit).
 * visualize: panel 0 "attention" (see nn_captioner_figure, without words). */
extern const nn_model_ops nn_captioner_ops;

/* Attention weights of the last greedy decode (beam = 1) of a captioner with attention:
 * (B, steps, gh*gw) row-major; row (b, t) holds the weights over the gh x gw feature grid
 * (row-major) used to emit output token t of example b (zero after its NN_EOS). Returns
 * NULL (and zero dims) when m is not a captioner, has no attention or has not decoded
 * greedily yet. Owned by the model; valid until the next decode or nn_model_free. */
const float *nn_captioner_attention(const nn_model *m, int *B, int *steps, int *gh, int *gw);

/* Beam search even for beam = 1 (ops->decode routes beam 1 to the greedy loop); same
 * contract as ops->decode. Exposed so tests can compare the two. */
int nn_captioner_beam_search(nn_model *m, const nn_batch *b, int beam, float len_alpha,
                             int max_out, int32_t *out);

/* The attention picture: greedy-decodes the first n (clamped to b->B, max_batch and 8)
 * examples of b and draws one row per example: the image, then one copy per generated
 * word (up to and including NN_EOS) with that step's attention weights upsampled
 * (bilinear) to the image and laid over it as brightness = min(1, 0.3 pixel + 0.7 sqrt(a /
 * max a)) (the scene faint, the attended cells bright), the word written underneath in a built-in 5x7 font: words[id] when words is
 * non-NULL and id < nwords, else the id in digits. Without attention every copy is the
 * plain image. Tiles are upsampled to at least 112 pixels. img: caller buffer of at least
 * 1<<22 floats, values in [0,1], background 1; *h, *w its size. NN_ERR_SHAPE when the
 * picture would not fit or b->B < 1; decode errors as ops->decode. */
int nn_captioner_figure(nn_model *m, const nn_batch *b, int n, const char *const *words,
                        int nwords, float *img, int *h, int *w);

#endif
