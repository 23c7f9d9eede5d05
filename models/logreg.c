/* logreg.c - the sparse-feature baselines of the embeddings lesson: multinomial logistic
 * regression over one-hot (presence) or bag-of-words (count) features of the vocabulary:
 *   logits (K) = b + sum over words w of the example of x_w W[w],  W (V, K), b (K)
 *   loss = softmax cross-entropy over the K labels.
 * The V-wide feature vector is never materialised: an example's logits are a sum of the
 * rows of W for its tokens (each distinct token once for presence, once per occurrence
 * for counts), and the backward touches only those rows.
 *
 * It does not read data or normalise: the trainer passes grad_scale. Scratch is sized
 * from dims.max_batch at build time; the step allocates nothing. */
#include "models/nn.h"

#include <string.h>

typedef struct logreg {
    int V, K, max_batch, presence;
    float *W, *dW;       /* (V, K) */
    float *bias, *dbias; /* (K) */
    float *logits;       /* (max_batch, K), overwritten by dlogits in training */
    int64_t *seen;       /* (V) last example stamp that used the word (presence) */
    int64_t stamp;
} logreg;

static const nn_key logreg_keys_[] = {{NULL, NULL, NULL}};

static void logreg_free_(nn_model *m) {
    logreg *w = m->impl;
    if (!w) return;
    free(w->logits);
    free(w->seen);
    free(w);
    m->impl = NULL;
}

static int logreg_build_(nn_model *m, const nn_dims *d, int presence) {
    if (d->vocab < 1 || d->classes < 2 || d->max_batch < 1) {
        nn_set_error("%s: needs vocab >= 1, classes >= 2 and max_batch >= 1 (got vocab %d, "
                     "classes %d, max_batch %d)",
                     m->ops->name, d->vocab, d->classes, d->max_batch);
        return NN_ERR_SHAPE;
    }
    logreg *w = calloc(1, sizeof *w);
    if (!w) {
        nn_set_error("%s: out of memory", m->ops->name);
        return NN_ERR_NOMEM;
    }
    m->impl = w;
    w->V = d->vocab;
    w->K = d->classes;
    w->max_batch = d->max_batch;
    w->presence = presence;
    w->logits = malloc((size_t)w->max_batch * w->K * sizeof *w->logits);
    w->seen = malloc((size_t)w->V * sizeof *w->seen);
    if (!w->logits || !w->seen) {
        nn_set_error("%s: out of memory for scratch", m->ops->name);
        return NN_ERR_NOMEM;
    }
    for (int i = 0; i < w->V; i++) w->seen[i] = -1;
    int sw[2] = {w->V, w->K}, sb[1] = {w->K};
    int rc;
    if ((rc = nn_params_add(&m->params, "weight", 2, sw, NN_INIT_ZERO, 0.0f, &w->W, &w->dW)) < 0 ||
        (rc = nn_params_add(&m->params, "bias", 1, sb, NN_INIT_ZERO, 0.0f, &w->bias, &w->dbias)) < 0)
        return rc;
    return NN_OK;
}

static int onehot_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    (void)cfg;
    return logreg_build_(m, d, 1);
}
static int bowlr_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    (void)cfg;
    return logreg_build_(m, d, 0);
}

/* Does token t of example i count? (pad never; presence: first occurrence only) */
static inline int logreg_counts_(logreg *w, int32_t id) {
    if (id == NN_PAD) return 0;
    if (!w->presence) return 1;
    if (w->seen[id] == w->stamp) return 0;
    w->seen[id] = w->stamp;
    return 1;
}

static int logreg_forward_(nn_model *m, const nn_batch *b) {
    logreg *w = m->impl;
    int B = b->B, T = b->T, K = w->K;
    if (B < 0 || B > w->max_batch || (B > 0 && (T < 0 || !b->x || !b->y))) {
        nn_set_error("%s: batch of %d examples does not fit max_batch %d", m->ops->name, B,
                     w->max_batch);
        return NN_ERR_SHAPE;
    }
    for (int i = 0; i < B; i++) {
        if (b->y[i] < 0 || b->y[i] >= K) {
            nn_set_error("%s: label %d of example %d is outside [0, %d)", m->ops->name,
                         (int)b->y[i], i, K);
            return NN_ERR_DATA;
        }
        for (int t = 0; t < T; t++) {
            int32_t id = b->x[(size_t)i * T + t];
            if (id < 0 || id >= w->V) {
                nn_set_error("%s: token id %d outside the vocabulary [0, %d)", m->ops->name,
                             (int)id, w->V);
                return NN_ERR_DATA;
            }
        }
    }
    for (int i = 0; i < B; i++) {
        float *z = w->logits + (size_t)i * K;
        memcpy(z, w->bias, (size_t)K * sizeof *z);
        w->stamp++;
        for (int t = 0; t < T; t++) {
            int32_t id = b->x[(size_t)i * T + t];
            if (!logreg_counts_(w, id)) continue;
            const float *row = w->W + (size_t)id * K;
            for (int k = 0; k < K; k++) z[k] += row[k];
        }
    }
    return NN_OK;
}

static int logreg_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                    nn_stats *st) {
    logreg *w = m->impl;
    int rc = logreg_forward_(m, b);
    if (rc < 0 || b->B == 0) return rc;
    int B = b->B, T = b->T, K = w->K;
    double correct = 0.0;
    st->loss += nn_xent_forward_backward(w->logits, w->logits, b->y, B, K, -1, 0.0f, grad_scale,
                                         NULL, &correct);
    st->count += B;
    st->correct += correct;
    for (int i = 0; i < B; i++) {
        const float *g = w->logits + (size_t)i * K;
        for (int k = 0; k < K; k++) w->dbias[k] += g[k];
        w->stamp++;
        for (int t = 0; t < T; t++) {
            int32_t id = b->x[(size_t)i * T + t];
            if (!logreg_counts_(w, id)) continue;
            float *row = w->dW + (size_t)id * K;
            for (int k = 0; k < K; k++) row[k] += g[k];
        }
    }
    return NN_OK;
}

static int logreg_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    logreg *w = m->impl;
    int rc = logreg_forward_(m, b);
    if (rc < 0 || b->B == 0) return rc;
    double correct = 0.0;
    st->loss += nn_xent_forward_backward(NULL, w->logits, b->y, b->B, w->K, -1, 0.0f, 0.0f, NULL,
                                         &correct);
    st->count += b->B;
    st->correct += correct;
    return NN_OK;
}

const nn_model_ops nn_onehot_logreg_ops = {
    .name = "onehot-logreg",
    .summary = "logistic regression on word presence (one-hot) features, sparse",
    .data_kind = "classify",
    .keys = logreg_keys_,
    .build = onehot_build_,
    .free = logreg_free_,
    .forward_backward = logreg_forward_backward_,
    .evaluate = logreg_evaluate_,
};

const nn_model_ops nn_bow_logreg_ops = {
    .name = "bow-logreg",
    .summary = "logistic regression on bag-of-words count features, sparse",
    .data_kind = "classify",
    .keys = logreg_keys_,
    .build = bowlr_build_,
    .free = logreg_free_,
    .forward_backward = logreg_forward_backward_,
    .evaluate = logreg_evaluate_,
};
