/* nn_attn.h - attention, transformer layers and the fused memory-bound kernels they use.
 * Included at the end of nn.h; never include it directly.
 *
 * Shapes use B batch, T (query) time, S key time, C model width, NH heads, HS = C/NH
 * head size, FF feed-forward width, V vocabulary, N = B*T rows. Buffers are row-major
 * float32. Backward functions ACCUMULATE into dx and parameter gradients.
 *
 * Threads: when nn_get_threads() >= 2, the kernels below (and the per-head loops of
 * attention) run their work as two fixed halves, the second on one helper thread owned by
 * attn.c; results are bit-identical to one thread. One model step at a time per process. */
#ifndef MODELS_NN_ATTN_H
#define MODELS_NN_ATTN_H

/* ---- fused elementwise kernels (models/attn.c) ----------------------------------------- */
/* Same contracts as nn_gelu_forward/backward (tanh approximation), with a vectorised
 * exp-based tanh (relative error < 1e-6). y == x allowed in forward. Cannot fail. */
void nn_fgelu_forward(float *y, const float *x, size_t n);
void nn_fgelu_backward(float *dx, const float *dy, const float *x, size_t n);

/* d (n) *= gelu'(x) / relu'(x), in place (OVERWRITES: the caller's dy buffer becomes dx). */
void nn_fgelu_backward_inplace(float *d, const float *x, size_t n);
void nn_frelu_backward_inplace(float *d, const float *x, size_t n);
void nn_frelu_forward(float *y, const float *x, size_t n); /* y = max(x, 0); y == x allowed */
/* Training pair: forward also stores t (n) = tanh(sqrt(2/pi)(x + 0.044715 x^3)), so the
 * backward (d *= gelu'(x), in place) needs no exp. */
void nn_fgelu_forward_cache(float *y, float *t, const float *x, size_t n);
void nn_fgelu_backward_cached(float *d, const float *x, const float *t, size_t n);

/* Same contracts as nn_layernorm_forward/backward (eps 1e-5, biased variance), in one
 * pass per row each. Backward accumulates into dx, dg, db. Cannot fail. */
void nn_flayernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                           const float *b, int N, int C);
void nn_flayernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *g, int N, int C);

/* Softmax cross-entropy fused over the vocabulary, one pass per row (the row stays in
 * cache): same contract as nn_xent_forward_backward. logits (N,V) may equal dlogits, in
 * which case the logits are overwritten by the gradient. With label smoothing eps the loss
 * of a row is (1-eps)(-log p_y) + eps * mean_j(-log p_j). */
double nn_fxent_forward_backward(float *dlogits, const float *logits, const int32_t *targets,
                                 int N, int V, int ignore_index, float label_smoothing,
                                 float grad_scale, double *count, double *correct);

/* The same, with the gradient rows written in bf16 into dlogits (nn_bf16_pair_begin'd for
 * (N,V)) instead of fp32: for the two bf16 GEMMs of the output projection's backward.
 * Rows are cut between threads at multiples of 32. */
double nn_fxent_forward_backward_packed(nn_bf16_pair *dlogits, const float *logits,
                                        const int32_t *targets, int N, int V, int ignore_index,
                                        float label_smoothing, float grad_scale, double *count,
                                        double *correct);

/* ---- scaled dot-product attention -------------------------------------------------------- */
/* Multi-head attention core over already projected q, k, v.
 * q (B,T,*) row stride ldq, k and v (B,S,*) strides ldk, ldv: head h of each is the
 * column block [h*HS, (h+1)*HS). out (B,T,*) stride ldo gets softmax(q k^T/sqrt(HS) + mask) v
 * in the same column blocks. att (B,NH,T,S) caches the probabilities for backward.
 * Masks (-inf before the softmax): causal != 0 lets query i see keys j <= i + (S - T)
 * (queries are the last T of S positions, as with a key/value cache); key_len (B) or NULL
 * masks keys j >= key_len[b]. A fully masked row yields probabilities 0 and output 0.
 * Cannot fail. */
void nn_sdpa_forward(float *out, int ldo, float *att, const float *q, int ldq, const float *k,
                     int ldk, const float *v, int ldv, const int32_t *key_len, int causal, int B,
                     int T, int S, int NH, int HS);
/* Accumulates dq, dk, dv (same strides as q, k, v) from dout (stride ldo), given the
 * forward's att and the same masks (key_len, causal: they bound the keys each block of
 * queries multiplies; masked probabilities are 0 either way). scratch holds 2*T*S floats
 * (one T*S block per half of the heads). Cannot fail. */
void nn_sdpa_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, int ldo,
                      const float *att, const float *q, int ldq, const float *k, int ldk,
                      const float *v, int ldv, const int32_t *key_len, int causal, int B, int T,
                      int S, int NH, int HS);

/* ---- multi-head attention layer ------------------------------------------------------------ */
/* Parameters of one attention block; views into the registry (own nothing).
 * PyTorch mapping: w_q, w_k, w_v, w_o are (C,C) in nn.Linear layout (out, in), so
 * nn.MultiheadAttention.in_proj_weight = cat(w_q, w_k, w_v) and in_proj_bias =
 * cat(b_q, b_k, b_v); out_proj = (w_o, b_o). When the registry places w_q, w_k, w_v
 * adjacently (and b_q, b_k, b_v), the projection runs as one (3C,C) GEMM. */
typedef struct nn_mha {
    float *w_q, *w_k, *w_v, *w_o, *b_q, *b_k, *b_v, *b_o;
    float *dw_q, *dw_k, *dw_v, *dw_o, *db_q, *db_k, *db_v, *db_o;
    int C, NH;
} nn_mha;

/* Registers prefix/w_q, w_k, w_v, w_o (C,C; normal std, w_o std out_std) and b_q, b_k, b_v,
 * b_o (C; zero) into ps with views into a. Returns 0 or NN_ERR_NOMEM. */
int nn_mha_register(nn_mha *a, nn_params *ps, const char *prefix, int C, int NH, float std,
                    float out_std);

/* Self-attention projection: qkv (N,3C) = [x w_q^T + b_q | x w_k^T + b_k | x w_v^T + b_v].
 * x (N,C). Cannot fail. */
void nn_mha_qkv_forward(const nn_mha *a, float *qkv, const float *x, int N);
/* Accumulates dx (N,C) (may be NULL) and the projection gradients from dqkv (N,3C). */
void nn_mha_qkv_backward(const nn_mha *a, float *dx, const float *dqkv, const float *x, int N);

/* Projections of rows to a column block of a wider buffer: y (N, ldy) columns [0,C) =
 * x (N,C) w^T + b, for w one of a's matrices. Used for cross-attention (q from the
 * decoder, k and v from the encoder) and for the output projection. */
void nn_proj_forward(float *y, int ldy, const float *x, const float *w, const float *b, int N,
                     int C, int OC);
/* dx (N,C) += dy w (dx may be NULL); dw += dy^T x; db += colsum(dy); dy (N,OC) stride ldy. */
void nn_proj_backward(float *dx, float *dw, float *db, const float *dy, int ldy, const float *x,
                      const float *w, int N, int C, int OC);

/* As nn_proj_backward but dx (N,C) is OVERWRITTEN (beta = 0), saving a memset. */
void nn_proj_backward_to(float *dx, float *dw, float *db, const float *dy, int ldy,
                         const float *x, const float *w, int N, int C, int OC);

/* dst (R,K) += src^T, src (K,R). Cannot fail. */
void nn_transpose_add(float *dst, const float *src, int R, int K);

/* ---- positional encodings -------------------------------------------------------------------- */
/* table (T,C): sin(t / 10000^(2i/C)) in column 2i, cos in column 2i+1 (Vaswani et al.). */
void nn_sinusoid_table(float *table, int T, int C);
/* x (B,T,C) = wte[ids] + pos[t] (pos (T,C), may be NULL); NN_PAD ids get only pos. */
void nn_embed_pos_forward(float *x, const int32_t *ids, const float *wte, const float *pos,
                          int B, int T, int C);
/* dwte[ids] += dx; dpos[t] += sum over batch (dpos may be NULL: fixed encodings). */
void nn_embed_pos_backward(float *dwte, float *dpos, const float *dx, const int32_t *ids, int B,
                           int T, int C);

/* y (n) += x (n); nn_add3: y = a + b. Cannot fail. */
void nn_add_inplace(float *y, const float *x, size_t n);
void nn_add3(float *y, const float *a, const float *b, size_t n);

/* ---- models (models/gpt.c) ------------------------------------------------------------------ */
/* --model gpt: decoder-only transformer LM, data_kind "lm". Keys layers, heads, dim, ff,
 * context, activation, norm, pos, tie, dropout, label-smoothing. */
extern const nn_model_ops nn_gpt_ops;
/* For tests and the PyTorch cross-check: logits (B*T,V) of a gpt model m on x (B,T) in
 * evaluation mode (no dropout), by the full forward. NN_ERR_SHAPE/NN_ERR_DATA on a batch
 * the model cannot take. */
int nn_gpt_logits(nn_model *m, const int32_t *x, int B, int T, float *logits);
/* The same for one sequence x (T) through the key/value cache: the first `first` tokens
 * as one chunk, then one token at a time; logits (T,V) of every position. */
int nn_gpt_cached_logits(nn_model *m, const int32_t *x, int T, int first, float *logits);

/* --model transformer: encoder-decoder with cross-attention, data_kind "parallel": x (B,T)
 * source ids, y (B,U) target ids ending in NN_EOS, NN_PAD-padded; the decoder reads NN_BOS
 * then y shifted right. decode: greedy (beam 1) or beam search scored by the sum of log
 * probabilities over ((5+len)/6)^len_alpha, with key/value caches. Same keys as gpt
 * (defaults layers 3, relu, sinusoidal, dropout 0.1, label-smoothing 0.1). */
extern const nn_model_ops nn_transformer_ops;
/* For tests: teacher-forced logits (B,U,Vt) of batch b in evaluation mode. */
int nn_transformer_logits(nn_model *m, const nn_batch *b, float *logits);

#endif
