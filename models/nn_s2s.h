/* nn_s2s.h - sequence-to-sequence translation: the seq2seq model (s2s.c) and its additive
 * (Bahdanau) attention layer (attdec.c, the attention decoder seq2seq shares with the
 * captioner). Included by nn.h; do not include directly. */
#ifndef MODELS_NN_S2S_H
#define MODELS_NN_S2S_H

#include <stddef.h>
#include <stdint.h>

/* seq2seq (s2s.c): embeddings -> recurrent encoder (lstm|gru, layers, optionally
 * bidirectional) -> decoder cell with Bahdanau attention (or none: only the initial state
 * carries the source) -> linear on [s_t; c_t] -> softmax cross-entropy over the target
 * vocabulary, teacher forcing. data_kind "parallel". Keys: cell, dim, hidden, layers,
 * bidirectional, attention, dropout. Parameters follow PyTorch's layouts (nn.LSTM/nn.GRU
 * gate order, packed-sequence final states), so a PyTorch model with the same weights gives
 * the same loss and gradients.
 * decode: greedy (beam 1) or beam search with length normalisation
 * score / ((5 + len) / 6)^len_alpha (len counts the NN_EOS); never emits NN_PAD or NN_BOS
 * (NN_UNK may appear). Output rows (max_out ids) end with NN_EOS and are NN_PAD-padded, or
 * hold max_out tokens without NN_EOS when the limit was reached. The first decode allocates
 * scratch for B * beam rows and max_out steps; later calls reuse it or grow it. */
extern const nn_model_ops nn_seq2seq_ops;

/* Attention weights of the last greedy decode (beam = 1) of a seq2seq model with
 * attention: (B, steps, T) row-major; row (b, t) holds the weights over the T source
 * positions used to emit output token t of example b (zero past x_len[b] and after the
 * example's NN_EOS). Returns NULL (and zero dims) when m is not a seq2seq model, has no
 * attention, or has not decoded greedily yet. Owned by the model; valid until the next
 * decode or nn_model_free. */
const float *nn_s2s_attention(const nn_model *m, int *B, int *steps, int *T);

/* Beam search even for beam = 1 (ops->decode routes beam 1 to the separate greedy loop);
 * same contract as ops->decode. Exposed so tests can compare the two. */
int nn_s2s_beam_search(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out);

/* ---- additive attention (Bahdanau; attdec.c) ----------------------------------------- */
/* For R query rows over the T positions of source row src[r] (src NULL: row r):
 *   e_j = v . tanh(q_r + kh[src, j]),  a = softmax over j < len[src] (0 elsewhere),
 *   ctx_r = sum_j a_j h[src, j].
 * q (R,A) is the projected query W_s s + b_s, kh (Bs,T,A) the projected keys W_h h_j
 * (one GEMM for all j, done by the caller), h (Bs,T,Hv) the values, v (A), len (Bs).
 * Outputs a (R,T) and ctx (R,Hv). A row with len 0 gets a = 0 and ctx = 0. scratch holds
 * A floats. Cannot fail. */
void nn_attn_forward(float *ctx, float *a, const float *q, const float *kh, const float *h,
                     const float *v, const int32_t *len, const int32_t *src, int R, int T, int A,
                     int Hv, float *scratch);
/* Backward of nn_attn_forward given dctx (R,Hv): ACCUMULATES dq (R,A), dkh (Bs,T,A),
 * dh (Bs,T,Hv) and dv (A); each of the four may be NULL.
 * a is the forward output; tanh(q + kh) is recomputed rather than cached. scratch holds
 * T + 2 A floats. Cannot fail. */
void nn_attn_backward(float *dq, float *dkh, float *dh, float *dv, const float *dctx,
                      const float *a, const float *q, const float *kh, const float *h,
                      const float *v, const int32_t *len, const int32_t *src, int R, int T,
                      int A, int Hv, float *scratch);

#endif
