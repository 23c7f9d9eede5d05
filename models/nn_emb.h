/* nn_emb.h - word embeddings (skipgram.c) and the sparse logistic-regression baselines
 * (logreg.c). Included by nn.h; models/ only.
 *
 * skipgram ("lm" data): every position of a window of token ids is a centre; after
 * frequent-word subsampling, the kept words within a dynamic window (uniform 1..window)
 * around it are its contexts, except occurrences of the centre word itself. word2vec's orientation: the INPUT vector of a context word
 * predicts the OUTPUT vector of the centre (skip-gram), or the mean of the contexts' input
 * vectors predicts the centre (CBOW). Output layers: full softmax over the vocabulary, or
 * negative sampling with `negative` draws from a unigram^0.75 table, shared by all the
 * contexts of one centre (Ji et al. 2016), so one centre costs a (K x dim) by
 * (dim x (1 + neg)) product. Parameters "input/weight" (V, dim) = the embeddings, and
 * "output/weight" (V, dim). Gradients are accumulated only into touched rows.
 * Randomness: nn_rng_make(seed, step, index, purpose) per window, purposes
 * NN_RNG_SUBSAMPLE (one draw per token), NN_RNG_SAMPLE (window radius, one per kept
 * position) and NN_RNG_NEGATIVE (negatives, in centre order). Special ids (< 4) are dropped.
 * Stats: loss sum and count = (centre, context) pairs (skip-gram) or centres (CBOW). */
#ifndef MODELS_NN_EMB_H
#define MODELS_NN_EMB_H

#include <stddef.h>
#include <stdint.h>

/* skipgram keys: dim (100), window (5), negative (5), sample (1e-4), loss (neg|softmax),
 * cbow (0). Needs dims.vocab_counts (subsampling, the negative table). */
extern const nn_model_ops nn_skipgram_ops;
/* onehot-logreg / bow-logreg (logreg.c, "classify" data): logits = b + sum over the
 * words w of the example of x_w W[w], W (V, K) stored "weight", b (K) "bias"; x_w is 1
 * for a present word (one-hot / presence) or its count (bag of words). Softmax
 * cross-entropy over the K labels. Pad ids are ignored. No keys. */
extern const nn_model_ops nn_onehot_logreg_ops;
extern const nn_model_ops nn_bow_logreg_ops;

/* ---- skip-gram kernels (exposed for tests) ------------------------------------------ */
/* Negative-sampling loss of one centre. ctx (K) context ids (rows of In), out (n_out)
 * output ids: out[0] is the positive (the centre), out[1..] the negatives (repeats and
 * collisions are counted as drawn). Skip-gram (cbow 0): sum over k of
 *   softplus(-In[ctx_k].Out[out_0]) + sum_{j>0} softplus(In[ctx_k].Out[out_j]);
 * CBOW (cbow 1): the same with one row h = mean_k In[ctx_k]. Returns the loss sum.
 * When dIn and dOut are non-NULL, ACCUMULATES scale * gradients into their rows (only
 * rows named in ctx and out are touched). hbuf: scratch of 2 * dim floats (CBOW only;
 * may be NULL for skip-gram). K <= 256, n_out <= 256. */
double nn_sg_neg_loss(float *dIn, float *dOut, const float *In, const float *Out, int dim,
                      const int32_t *ctx, int K, int cbow, const int32_t *out, int n_out,
                      float scale, float *hbuf);
/* Full-softmax loss of one centre over all V output rows: sum over the K contexts (or of
 * the one mean row for CBOW) of -log softmax(h Out^T)[centre]. Gradients as above, but
 * dOut receives a dense (V, dim) update. scratch: nn_sg_softmax_scratch(K, V, dim) floats;
 * tgt: K ints of scratch. */
double nn_sg_softmax_loss(float *dIn, float *dOut, const float *In, const float *Out, int dim,
                          int V, const int32_t *ctx, int K, int cbow, int32_t centre,
                          float scale, float *scratch, int32_t *tgt);
size_t nn_sg_softmax_scratch(int K, int V, int dim);

/* The (centre, context) pairs the model trains on for window x (T ids) with key
 * (step, index), in training order; at most cap are written, the total is returned.
 * For CBOW too (pairs grouped by centre). m must be a built skipgram model. */
int nn_skipgram_pairs(const nn_model *m, const int32_t *x, int T, uint64_t step, int64_t index,
                      int32_t *centre, int32_t *context, int cap);
/* Rows of "input/weight" (which 0) or "output/weight" (which 1) that received gradient
 * in forward_backward since the last nn_skipgram_touched_clear, each once, in first-touch
 * order; returns the count and points *rows into the model (valid until the next call of
 * forward_backward or clear). Returns -1 (*rows NULL) for the output of the full softmax,
 * whose gradient is dense. The skipgram model's nn_model_ops.touched_rows (parameter
 * index = which) and touched_clear, through which the trainer zeroes, reduces and
 * updates only these rows. */
int nn_skipgram_touched(const nn_model *m, int which, const int32_t **rows);
void nn_skipgram_touched_clear(nn_model *m);
/* The unigram^0.75 table (n entries of ids) and the keep probability of id. */
const int32_t *nn_skipgram_table(const nn_model *m, int *n);
float nn_skipgram_keep(const nn_model *m, int id);

#endif
