/* skipgram.c - word2vec: skip-gram and CBOW with a full-softmax or a negative-sampling
 * output layer, trained from windows of token ids ("lm" data). See nn_emb.h for the
 * exact losses and the random keys.
 *
 * Per window: subsample (word2vec's keep probability (sqrt(c/(s N)) + 1) s N / c), then
 * for each kept position draw a radius r in 1..window and take the kept words within r,
 * other than the centre word itself, as contexts. With negative sampling one centre costs one small dense product: the K
 * context rows of In against the 1 + neg output rows (centre + negatives shared by all
 * K contexts, Ji et al. 2016), written as register-blocked dot products and axpys
 * straight on the parameter rows (no gather: the rows stay in cache). Gradients go only
 * to the touched rows of the gradient buffer; the trainer applies them.
 *
 * It does not apply updates itself (no Hogwild), read files or build vocabularies; the
 * unigram table and keep probabilities come from dims.vocab_counts at build time.
 * forward_backward and evaluate allocate nothing. It lists the rows it gave gradient
 * (nn_model_ops.touched_rows) so the trainer can zero, reduce and update only those. */
#include "models/nn.h"
#include "models/nn_math.h"

#include <math.h>
#include <string.h>

#define SG_MAX_WINDOW 64
#define SG_MAX_NEG 64
#define SG_N_SPECIAL 4 /* <pad> <unk> <s> </s>: never trained on */

typedef struct sg {
    int V, dim, window, neg, cbow, softmax, share;
    double sample;
    int max_batch, max_T;
    float *In, *dIn;    /* (V, dim) input vectors: the embeddings */
    float *Out, *dOut;  /* (V, dim) output vectors */
    float *keep;        /* (V) keep probability */
    int32_t *table;     /* (table_n) unigram^0.75 table */
    int table_n;
    /* scratch */
    int32_t *kept;      /* (max_T) ids after subsampling */
    int32_t *ctx;       /* (2 window) */
    int32_t *outs;      /* (1 + neg) */
    int32_t *tgt;       /* (2 window) softmax targets */
    float *fbuf;        /* softmax scratch or 2 dim for CBOW */
    /* rows with gradient since the last nn_skipgram_touched_clear: [0] input, [1] output */
    uint32_t *mark[2];  /* (V) == epoch when listed */
    int32_t *list[2];   /* (V) */
    int n_touched[2];
    uint32_t epoch;
} sg;

static const nn_key sg_keys_[] = {
    {"dim", "100", "embedding width"},
    {"window", "5", "largest context radius (the radius is uniform in 1..window per centre)"},
    {"negative", "5", "negative samples per centre (loss neg)"},
    {"sample", "1e-4", "frequent-word subsampling threshold (0: off)"},
    {"loss", "neg", "output layer: neg (negative sampling) or softmax (full, small vocabularies)"},
    {"cbow", "0", "1: the mean of the context vectors predicts the centre (CBOW)"},
    {"share-negatives", "1", "1: one set of negatives per centre, shared by its contexts "
                             "(Ji et al.); 0: fresh negatives per (centre, context) pair"},
    {NULL, NULL, NULL},
};

/* ---- scalar helpers ------------------------------------------------------------------ */

/* log(1 + e) for e in [0, 1]: 2 atanh(z), z = e / (2 + e) <= 1/3, series to z^15
 * (relative error < 1e-8), so losses are float-accurate without libm's log1p. */
static inline float sg_log1p01_(float e) {
    float z = e / (2.0f + e), z2 = z * z;
    float p = 1.0f / 15.0f;
    p = p * z2 + 1.0f / 13.0f;
    p = p * z2 + 1.0f / 11.0f;
    p = p * z2 + 1.0f / 9.0f;
    p = p * z2 + 1.0f / 7.0f;
    p = p * z2 + 1.0f / 5.0f;
    p = p * z2 + 1.0f / 3.0f;
    p = p * z2 + 1.0f;
    return 2.0f * z * p;
}

/* For a logit s and label y in {0,1}: *loss = -log sigma(s) (y 1) or -log sigma(-s)
 * (y 0), returns sigma(s) - y (the derivative of the loss). One exp. */
static inline float sg_logistic_(float s, int y, float *loss) {
    float a = s < 0.0f ? -s : s;
    float e = nn_exp_(-a);
    float l1p = sg_log1p01_(e);
    float sig = s >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    /* softplus(-s) = max(-s, 0) + log1p(e); softplus(s) = max(s, 0) + log1p(e) */
    if (y) {
        *loss = (s < 0.0f ? -s : 0.0f) + l1p;
        return sig - 1.0f;
    }
    *loss = (s > 0.0f ? s : 0.0f) + l1p;
    return sig;
}

static inline float sg_dot_(const float *restrict a, const float *restrict b, int n) {
    nn_vf acc0 = {0}, acc1 = {0};
    int c = 0;
    for (; c + 2 * NN_VW <= n; c += 2 * NN_VW) {
        acc0 += nn_vload_(a + c) * nn_vload_(b + c);
        acc1 += nn_vload_(a + c + NN_VW) * nn_vload_(b + c + NN_VW);
    }
    for (; c + NN_VW <= n; c += NN_VW) acc0 += nn_vload_(a + c) * nn_vload_(b + c);
    float s = nn_vsum_(acc0 + acc1);
    for (; c < n; c++) s += a[c] * b[c];
    return s;
}

/* y += alpha x */
static inline void sg_axpy_(float *restrict y, float alpha, const float *restrict x, int n) {
    int c = 0;
    nn_vf va = nn_vsplat_(alpha);
    for (; c + NN_VW <= n; c += NN_VW) nn_vstore_(y + c, nn_vload_(y + c) + va * nn_vload_(x + c));
    for (; c < n; c++) y[c] += alpha * x[c];
}

/* ---- kernels ------------------------------------------------------------------------- */

double nn_sg_neg_loss(float *dIn, float *dOut, const float *In, const float *Out, int dim,
                      const int32_t *ctx, int K, int cbow, const int32_t *out, int n_out,
                      float scale, float *hbuf) {
    NN_ASSERT(K >= 0 && K <= 256 && n_out >= 1 && n_out <= 256);
    if (K == 0) return 0.0;
    const int grad = dIn && dOut;
    double loss = 0.0;
    float G[256];
    if (cbow) {
        NN_ASSERT(hbuf);
        float *h = hbuf, *dh = hbuf + dim;
        memset(h, 0, (size_t)dim * sizeof *h);
        for (int k = 0; k < K; k++) sg_axpy_(h, 1.0f, In + (size_t)ctx[k] * dim, dim);
        float invK = 1.0f / (float)K;
        for (int c = 0; c < dim; c++) h[c] *= invK;
        for (int j = 0; j < n_out; j++) {
            float l, s = sg_dot_(h, Out + (size_t)out[j] * dim, dim);
            G[j] = scale * sg_logistic_(s, j == 0, &l);
            loss += l;
        }
        if (!grad) return loss;
        memset(dh, 0, (size_t)dim * sizeof *dh);
        for (int j = 0; j < n_out; j++) {
            sg_axpy_(dh, G[j], Out + (size_t)out[j] * dim, dim);
            sg_axpy_(dOut + (size_t)out[j] * dim, G[j], h, dim);
        }
        for (int k = 0; k < K; k++) sg_axpy_(dIn + (size_t)ctx[k] * dim, invK, dh, dim);
        return loss;
    }
    /* S (K, n_out) = In[ctx] Out[out]^T; G = scale * dloss/dS */
    for (int k = 0; k < K; k++) {
        const float *a = In + (size_t)ctx[k] * dim;
        for (int j = 0; j < n_out; j++) {
            float l, s = sg_dot_(a, Out + (size_t)out[j] * dim, dim);
            G[(size_t)k * n_out + j] = scale * sg_logistic_(s, j == 0, &l);
            loss += l;
        }
    }
    if (!grad) return loss;
    /* dIn[ctx_k] += G[k,:] Out[out];  dOut[out_j] += G[:,j]^T In[ctx] */
    for (int k = 0; k < K; k++) {
        float *da = dIn + (size_t)ctx[k] * dim;
        for (int j = 0; j < n_out; j++) sg_axpy_(da, G[k * n_out + j], Out + (size_t)out[j] * dim, dim);
    }
    for (int j = 0; j < n_out; j++) {
        float *db = dOut + (size_t)out[j] * dim;
        for (int k = 0; k < K; k++) sg_axpy_(db, G[k * n_out + j], In + (size_t)ctx[k] * dim, dim);
    }
    return loss;
}

size_t nn_sg_softmax_scratch(int K, int V, int dim) {
    return (size_t)K * (2 * (size_t)dim + (size_t)V);
}

double nn_sg_softmax_loss(float *dIn, float *dOut, const float *In, const float *Out, int dim,
                          int V, const int32_t *ctx, int K, int cbow, int32_t centre,
                          float scale, float *scratch, int32_t *tgt) {
    if (K == 0) return 0.0;
    const int grad = dIn && dOut;
    const int R = cbow ? 1 : K; /* rows of h */
    float *A = scratch, *dA = A + (size_t)K * dim, *L = dA + (size_t)K * dim;
    if (cbow) {
        memset(A, 0, (size_t)dim * sizeof *A);
        for (int k = 0; k < K; k++) sg_axpy_(A, 1.0f / (float)K, In + (size_t)ctx[k] * dim, dim);
    } else {
        for (int k = 0; k < K; k++)
            memcpy(A + (size_t)k * dim, In + (size_t)ctx[k] * dim, (size_t)dim * sizeof *A);
    }
    for (int r = 0; r < R; r++) tgt[r] = centre;
    nn_gemm(0, 1, R, V, dim, 1.0f, A, dim, Out, dim, 0.0f, L, V);
    double loss = nn_xent_forward_backward(grad ? L : NULL, L, tgt, R, V, -1, 0.0f, scale, NULL,
                                           NULL);
    if (!grad) return loss;
    nn_gemm(0, 0, R, dim, V, 1.0f, L, V, Out, dim, 0.0f, dA, dim);
    nn_gemm(1, 0, V, dim, R, 1.0f, L, V, A, dim, 1.0f, dOut, dim);
    if (cbow) {
        for (int k = 0; k < K; k++) sg_axpy_(dIn + (size_t)ctx[k] * dim, 1.0f / (float)K, dA, dim);
    } else {
        for (int k = 0; k < K; k++) sg_axpy_(dIn + (size_t)ctx[k] * dim, 1.0f, dA + (size_t)k * dim, dim);
    }
    return loss;
}

/* ---- build --------------------------------------------------------------------------- */

static void sg_free_(nn_model *m) {
    sg *w = m->impl;
    if (!w) return;
    free(w->keep);
    free(w->table);
    free(w->kept);
    free(w->ctx);
    free(w->outs);
    free(w->tgt);
    free(w->fbuf);
    for (int k = 0; k < 2; k++) {
        free(w->mark[k]);
        free(w->list[k]);
    }
    free(w);
    m->impl = NULL;
}

/* Keep probabilities and the unigram^0.75 table from the training counts. Word i gets
 * the table slots [floor(n F_{i-1}), floor(n F_i)) where F is the cumulative share. */
static int sg_tables_(sg *w, const int64_t *counts) {
    double total = 0.0, z = 0.0;
    for (int i = SG_N_SPECIAL; i < w->V; i++) {
        if (counts[i] < 0) {
            nn_set_error("skipgram: negative count %lld for word %d", (long long)counts[i], i);
            return NN_ERR_DATA;
        }
        total += (double)counts[i];
        z += pow((double)counts[i], 0.75);
    }
    if (!(total > 0)) {
        nn_set_error("skipgram: the vocabulary has no counted words (vocab %d)", w->V);
        return NN_ERR_DATA;
    }
    for (int i = 0; i < w->V; i++) {
        double c = (double)counts[i];
        if (i < SG_N_SPECIAL || c <= 0) {
            w->keep[i] = 0.0f;
        } else if (w->sample > 0) {
            double t = w->sample * total;
            double k = (sqrt(c / t) + 1.0) * t / c;
            w->keep[i] = k >= 1.0 ? 1.0f : (float)k;
        } else {
            w->keep[i] = 1.0f;
        }
    }
    if (!w->softmax) {
        long long n = 1000LL * w->V + 1000;
        w->table_n = (int)(n < 10000000 ? n : 10000000);
        w->table = malloc((size_t)w->table_n * sizeof *w->table);
        if (!w->table) {
            nn_set_error("skipgram: cannot allocate the negative table (%d ids)", w->table_n);
            return NN_ERR_NOMEM;
        }
        double cum = 0.0;
        long long lo = 0;
        int last = SG_N_SPECIAL;
        for (int i = SG_N_SPECIAL; i < w->V; i++) {
            if (counts[i] <= 0) continue;
            cum += pow((double)counts[i], 0.75);
            long long hi = (long long)floor(cum / z * w->table_n);
            if (hi > w->table_n) hi = w->table_n;
            for (long long s = lo; s < hi; s++) w->table[s] = i;
            lo = hi > lo ? hi : lo;
            last = i;
        }
        for (long long s = lo; s < w->table_n; s++) w->table[s] = last; /* rounding tail */
    }
    return NN_OK;
}

static int sg_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    long dim, window, neg;
    double sample;
    int cbow, share, rc;
    const char *loss;
    if ((rc = nn_config_int(cfg, "dim", 100, &dim)) < 0 ||
        (rc = nn_config_int(cfg, "window", 5, &window)) < 0 ||
        (rc = nn_config_int(cfg, "negative", 5, &neg)) < 0 ||
        (rc = nn_config_float(cfg, "sample", 1e-4, &sample)) < 0 ||
        (rc = nn_config_choice(cfg, "loss", "neg", "neg|softmax", &loss)) < 0 ||
        (rc = nn_config_bool(cfg, "cbow", 0, &cbow)) < 0 ||
        (rc = nn_config_bool(cfg, "share-negatives", 1, &share)) < 0)
        return rc;
    if (dim < 1 || dim > 4096 || window < 1 || window > SG_MAX_WINDOW || neg < 1 ||
        neg > SG_MAX_NEG || sample < 0) {
        nn_set_error("skipgram: need 1 <= dim <= 4096, 1 <= window <= %d, 1 <= negative <= %d "
                     "and sample >= 0 (got dim %ld, window %ld, negative %ld, sample %g)",
                     SG_MAX_WINDOW, SG_MAX_NEG, dim, window, neg, sample);
        return NN_ERR_CONFIG;
    }
    if (d->vocab <= SG_N_SPECIAL || d->max_batch < 1 || d->max_len < 1) {
        nn_set_error("skipgram: needs a vocabulary with words, max_batch >= 1 and max_len >= 1 "
                     "(got vocab %d, max_batch %d, max_len %d)",
                     d->vocab, d->max_batch, d->max_len);
        return NN_ERR_SHAPE;
    }
    if (!d->vocab_counts) {
        nn_set_error("skipgram: needs the training-set word counts (dims.vocab_counts)");
        return NN_ERR_CONFIG;
    }
    sg *w = calloc(1, sizeof *w);
    if (!w) {
        nn_set_error("skipgram: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = w;
    w->V = d->vocab;
    w->dim = (int)dim;
    w->window = (int)window;
    w->neg = (int)neg;
    w->cbow = cbow;
    w->share = share || cbow; /* CBOW has one prediction per centre anyway */
    w->softmax = strcmp(loss, "softmax") == 0;
    w->sample = sample;
    w->max_batch = d->max_batch;
    w->max_T = d->max_len;
    size_t K = 2 * (size_t)window;
    size_t nf = w->softmax ? nn_sg_softmax_scratch((int)K, w->V, w->dim) : 2 * (size_t)dim;
    w->keep = malloc((size_t)w->V * sizeof *w->keep);
    w->kept = malloc((size_t)w->max_T * sizeof *w->kept);
    w->ctx = malloc(K * sizeof *w->ctx);
    w->tgt = malloc(K * sizeof *w->tgt);
    w->outs = malloc((1 + (size_t)neg) * sizeof *w->outs);
    w->fbuf = malloc(nf * sizeof *w->fbuf);
    for (int k = 0; k < 2; k++) {
        w->mark[k] = calloc((size_t)w->V, sizeof *w->mark[k]);
        w->list[k] = malloc((size_t)w->V * sizeof *w->list[k]);
    }
    w->epoch = 1;
    if (!w->keep || !w->kept || !w->ctx || !w->tgt || !w->outs || !w->fbuf || !w->mark[0] ||
        !w->mark[1] || !w->list[0] || !w->list[1]) {
        nn_set_error("skipgram: out of memory for scratch");
        return NN_ERR_NOMEM;
    }
    if ((rc = sg_tables_(w, d->vocab_counts)) < 0) return rc;

    /* neg: word2vec's initialisation, inputs U(-0.5/dim, 0.5/dim), outputs zero.
     * softmax (the course version): PyTorch's defaults for an embedding followed by a
     * linear layer, N(0, 1) and U(-1/sqrt(dim), 1/sqrt(dim)), so learning starts at once. */
    int shape[2] = {w->V, w->dim};
    float bound = 1.0f / sqrtf((float)w->dim);
    if ((rc = nn_params_add(&m->params, "input/weight", 2, shape,
                            w->softmax ? NN_INIT_NORMAL : NN_INIT_UNIFORM,
                            w->softmax ? 1.0f : 0.5f / (float)w->dim, &w->In, &w->dIn)) < 0 ||
        (rc = nn_params_add(&m->params, "output/weight", 2, shape,
                            w->softmax ? NN_INIT_UNIFORM : NN_INIT_ZERO, w->softmax ? bound : 0.0f,
                            &w->Out, &w->dOut)) < 0)
        return rc;
    return NN_OK;
}

/* ---- windows ------------------------------------------------------------------------- */

/* Subsamples window x into w->kept; returns the count. */
static int sg_subsample_(const sg *w, int32_t *kept, const int32_t *x, int T, uint64_t seed,
                         uint64_t step, int64_t index) {
    nn_rng r = nn_rng_make(seed, step, (uint64_t)index, NN_RNG_SUBSAMPLE);
    int n = 0;
    for (int t = 0; t < T; t++) {
        int32_t id = x[t];
        float u = nn_rng_uniform(&r); /* one draw per token, kept or not */
        if (id < SG_N_SPECIAL) continue;
        if (w->keep[id] >= 1.0f || u < w->keep[id]) kept[n++] = id;
    }
    return n;
}

/* Contexts of kept position p (radius from rw) into ctx; returns K. Occurrences of the
 * centre word itself are not contexts: a pair (w, w) only rewards in[w].out[w], and with
 * gradients summed over a step, a rare word repeated through a window ("- - -", table
 * cells) gets that reward many times at once, a positive feedback that made single rows
 * diverge (norms > 100 within a few hundred steps at word2vec's learning rate). */
static inline int sg_contexts_(const sg *w, int32_t *ctx, const int32_t *kept, int n, int p,
                               nn_rng *rw) {
    int r = 1 + (int)nn_rng_below(rw, (uint32_t)w->window);
    int lo = p - r < 0 ? 0 : p - r, hi = p + r >= n ? n - 1 : p + r, K = 0;
    for (int q = lo; q <= hi; q++)
        if (kept[q] != kept[p]) ctx[K++] = kept[q];
    return K;
}

/* outs[0] = centre, outs[1..neg] = draws from the table, redrawn (up to 8 times) when
 * equal to the centre. */
static inline void sg_negatives_(const sg *w, int32_t *outs, int32_t centre, nn_rng *rn) {
    outs[0] = centre;
    for (int j = 1; j <= w->neg; j++) {
        int32_t id = centre;
        for (int tries = 0; tries < 8 && id == centre; tries++)
            id = w->table[nn_rng_below(rn, (uint32_t)w->table_n)];
        outs[j] = id;
    }
}

static int sg_check_batch_(const sg *w, const nn_batch *b) {
    if (b->B < 0 || b->B > w->max_batch || (b->B > 0 && (b->T < 0 || b->T > w->max_T || !b->x ||
                                                          !b->index))) {
        nn_set_error("skipgram: batch of %d windows of %d tokens does not fit (max %d x %d)", b->B,
                     b->T, w->max_batch, w->max_T);
        return NN_ERR_SHAPE;
    }
    for (size_t i = 0; i < (size_t)b->B * (size_t)b->T; i++)
        if (b->x[i] < 0 || b->x[i] >= w->V) {
            nn_set_error("skipgram: token id %d outside the vocabulary [0, %d)", (int)b->x[i], w->V);
            return NN_ERR_DATA;
        }
    return NN_OK;
}

static inline void sg_touch_(sg *w, int k, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++)
        if (w->mark[k][ids[i]] != w->epoch) {
            w->mark[k][ids[i]] = w->epoch;
            w->list[k][w->n_touched[k]++] = ids[i];
        }
}

/* One pass over the batch; gradients when train. */
static int sg_run_(nn_model *m, const nn_batch *b, int train, float grad_scale, nn_stats *st) {
    sg *w = m->impl;
    int rc = sg_check_batch_(w, b);
    if (rc < 0) return rc;
    float *dIn = train ? w->dIn : NULL, *dOut = train ? w->dOut : NULL;
    double loss = 0.0, count = 0.0;
    for (int i = 0; i < b->B; i++) {
        int n = sg_subsample_(w, w->kept, b->x + (size_t)i * b->T, b->T, m->seed, b->step,
                              b->index[i]);
        nn_rng rw = nn_rng_make(m->seed, b->step, (uint64_t)b->index[i], NN_RNG_SAMPLE);
        nn_rng rn = nn_rng_make(m->seed, b->step, (uint64_t)b->index[i], NN_RNG_NEGATIVE);
        for (int p = 0; p < n; p++) {
            int K = sg_contexts_(w, w->ctx, w->kept, n, p, &rw);
            if (K == 0) continue;
            int32_t centre = w->kept[p];
            if (train) {
                sg_touch_(w, 0, w->ctx, K);
                sg_touch_(w, 1, &centre, 1);
            }
            if (w->softmax) {
                loss += nn_sg_softmax_loss(dIn, dOut, w->In, w->Out, w->dim, w->V, w->ctx, K,
                                           w->cbow, centre, grad_scale, w->fbuf, w->tgt);
            } else if (w->share) {
                sg_negatives_(w, w->outs, centre, &rn);
                if (train) sg_touch_(w, 1, w->outs + 1, w->neg);
                loss += nn_sg_neg_loss(dIn, dOut, w->In, w->Out, w->dim, w->ctx, K, w->cbow,
                                       w->outs, 1 + w->neg, grad_scale, w->fbuf);
            } else {
                for (int k = 0; k < K; k++) {
                    sg_negatives_(w, w->outs, centre, &rn);
                    if (train) sg_touch_(w, 1, w->outs + 1, w->neg);
                    loss += nn_sg_neg_loss(dIn, dOut, w->In, w->Out, w->dim, w->ctx + k, 1, 0,
                                           w->outs, 1 + w->neg, grad_scale, w->fbuf);
                }
            }
            count += w->cbow ? 1 : K;
        }
    }
    st->loss += loss;
    st->count += count;
    return NN_OK;
}

static int sg_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st) {
    return sg_run_(m, b, 1, grad_scale, st);
}

static int sg_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    return sg_run_(m, b, 0, 0.0f, st);
}

int nn_skipgram_pairs(const nn_model *m, const int32_t *x, int T, uint64_t step, int64_t index,
                      int32_t *centre, int32_t *context, int cap) {
    NN_ASSERT(m->ops == &nn_skipgram_ops);
    const sg *w = m->impl;
    NN_ASSERT(T <= w->max_T);
    int n = sg_subsample_(w, w->kept, x, T, m->seed, step, index), total = 0;
    nn_rng rw = nn_rng_make(m->seed, step, (uint64_t)index, NN_RNG_SAMPLE);
    for (int p = 0; p < n; p++) {
        int K = sg_contexts_(w, w->ctx, w->kept, n, p, &rw);
        for (int k = 0; k < K; k++, total++)
            if (total < cap) {
                centre[total] = w->kept[p];
                context[total] = w->ctx[k];
            }
    }
    return total;
}

int nn_skipgram_touched(const nn_model *m, int which, const int32_t **rows) {
    NN_ASSERT(m->ops == &nn_skipgram_ops && (which == 0 || which == 1));
    const sg *w = m->impl;
    if (which == 1 && w->softmax) {
        *rows = NULL;
        return -1;
    }
    *rows = w->list[which];
    return w->n_touched[which];
}

void nn_skipgram_touched_clear(nn_model *m) {
    NN_ASSERT(m->ops == &nn_skipgram_ops);
    sg *w = m->impl;
    w->n_touched[0] = w->n_touched[1] = 0;
    if (++w->epoch == 0) { /* wrapped: forget every old mark */
        for (int k = 0; k < 2; k++) memset(w->mark[k], 0, (size_t)w->V * sizeof *w->mark[k]);
        w->epoch = 1;
    }
}

/* nn_model_ops.touched_rows: parameter 0 is input/weight, 1 output/weight (the order of
 * registration in sg_build_). */
static int sg_touched_rows_(nn_model *m, int param_index, const int32_t **rows) {
    NN_ASSERT(param_index >= 0 && param_index < m->params.n);
    return nn_skipgram_touched(m, param_index, rows);
}

const int32_t *nn_skipgram_table(const nn_model *m, int *n) {
    NN_ASSERT(m->ops == &nn_skipgram_ops);
    const sg *w = m->impl;
    *n = w->table_n;
    return w->table;
}

float nn_skipgram_keep(const nn_model *m, int id) {
    NN_ASSERT(m->ops == &nn_skipgram_ops);
    const sg *w = m->impl;
    NN_ASSERT(id >= 0 && id < w->V);
    return w->keep[id];
}

const nn_model_ops nn_skipgram_ops = {
    .name = "skipgram",
    .summary = "word2vec skip-gram/CBOW embeddings, negative sampling or full softmax",
    .data_kind = "lm",
    .keys = sg_keys_,
    .stat_names = NULL,
    .build = sg_build_,
    .bind = NULL,
    .free = sg_free_,
    .forward_backward = sg_forward_backward_,
    .evaluate = sg_evaluate_,
    .touched_rows = sg_touched_rows_,
    .touched_clear = nn_skipgram_touched_clear,
};
