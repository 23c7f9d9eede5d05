/* bow.c - the bag-of-words classifier, the course baseline:
 *   h = mean of the embeddings of the non-pad tokens of an example   (B, dim)
 *   h' = dropout(h)                                                   (training only)
 *   logits = h' W^T + b                                               (B, K) or (B, 1)
 *   loss = softmax cross-entropy over K classes, or, when K == 2, one logit with
 *          sigmoid binary cross-entropy (label 1 is the positive class).
 * An example without any non-pad token has h = 0 (its logits are the bias).
 *
 * It does not read data, tokenise or normalise the loss: it returns loss sums and the
 * trainer divides by the global example count through grad_scale. Scratch is sized
 * from dims.max_batch in build; forward_backward and evaluate allocate nothing. */
#include "models/nn.h"

#include <math.h>
#include <string.h>

typedef struct bow {
    int V, K, O, dim; /* vocabulary, classes, output logits (K, or 1 when K == 2), width */
    int max_batch;
    float p;          /* dropout probability */
    /* views into the registry */
    float *E, *dE;    /* (V, dim) */
    float *W, *dW;    /* (O, dim) */
    float *bias, *dbias; /* (O) */
    /* scratch, one allocation, sized for max_batch */
    float *scratch;
    float *h;         /* (B, dim) mean embeddings */
    float *hd;        /* (B, dim) after dropout (== h when p == 0) */
    float *mask;      /* (B, dim) dropout mask */
    float *dhd;       /* (B, dim) gradient wrt hd */
    float *dh;        /* (B, dim) gradient wrt h */
    float *logits;    /* (B, O) */
    float *dlogits;   /* (B, O) */
    float *target;    /* (B) float labels for BCE */
    float *inv;       /* (B) 1 / number of non-pad tokens, 0 when none */
} bow;

static const nn_key bow_keys_[] = {
    {"dim", "64", "embedding width"},
    {"dropout", "0", "dropout probability on the mean embedding (training only)"},
    {NULL, NULL, NULL},
};

static void bow_free_(nn_model *m) {
    bow *w = m->impl;
    if (!w) return;
    free(w->scratch);
    free(w);
    m->impl = NULL;
}

static int bow_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    long dim;
    double p;
    int rc;
    if ((rc = nn_config_int(cfg, "dim", 64, &dim)) < 0) return rc;
    if ((rc = nn_config_float(cfg, "dropout", 0.0, &p)) < 0) return rc;
    if (dim < 1 || dim > (1 << 20)) {
        nn_set_error("--dim: expected an integer in [1, 1048576], got %ld", dim);
        return NN_ERR_CONFIG;
    }
    if (p < 0.0 || p >= 1.0) {
        nn_set_error("--dropout: expected a probability in [0, 1), got %g", p);
        return NN_ERR_CONFIG;
    }
    if (d->vocab < 1 || d->classes < 2 || d->max_batch < 1) {
        nn_set_error("bow-classifier: needs vocab >= 1, classes >= 2 and max_batch >= 1 "
                     "(got vocab %d, classes %d, max_batch %d)",
                     d->vocab, d->classes, d->max_batch);
        return NN_ERR_SHAPE;
    }
    bow *w = calloc(1, sizeof *w);
    if (!w) {
        nn_set_error("bow-classifier: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = w;
    w->V = d->vocab;
    w->K = d->classes;
    w->O = d->classes == 2 ? 1 : d->classes;
    w->dim = (int)dim;
    w->p = (float)p;
    w->max_batch = d->max_batch;

    size_t B = (size_t)d->max_batch, D = (size_t)w->dim, O = (size_t)w->O;
    size_t total = 5 * B * D + 2 * B * O + 2 * B;
    w->scratch = malloc(total * sizeof(float));
    if (!w->scratch) {
        nn_set_error("bow-classifier: cannot allocate %zu floats of scratch", total);
        return NN_ERR_NOMEM;
    }
    float *s = w->scratch;
    w->h = s, s += B * D;
    w->hd = s, s += B * D;
    w->mask = s, s += B * D;
    w->dhd = s, s += B * D;
    w->dh = s, s += B * D;
    w->logits = s, s += B * O;
    w->dlogits = s, s += B * O;
    w->target = s, s += B;
    w->inv = s, s += B;
    NN_ASSERT((size_t)(s - w->scratch) == total);

    /* PyTorch's defaults: N(0, 1) embeddings, U(-1/sqrt(dim), 1/sqrt(dim)) weights. */
    int se[2] = {w->V, w->dim}, sw[2] = {w->O, w->dim}, sb[1] = {w->O};
    float bound = 1.0f / sqrtf((float)w->dim);
    if ((rc = nn_params_add(&m->params, "embedding/weight", 2, se, NN_INIT_NORMAL, 1.0f, &w->E,
                            &w->dE)) < 0 ||
        (rc = nn_params_add(&m->params, "output/weight", 2, sw, NN_INIT_UNIFORM, bound, &w->W,
                            &w->dW)) < 0 ||
        (rc = nn_params_add(&m->params, "output/bias", 1, sb, NN_INIT_ZERO, 0.0f, &w->bias,
                            &w->dbias)) < 0)
        return rc;
    return NN_OK;
}

/* The padding row is never read (nn_embedding semantics); keep it zero so checkpoints
 * show it as such. */
static int bow_bind_(nn_model *m) {
    bow *w = m->impl;
    if (NN_PAD < w->V) memset(w->E + (size_t)NN_PAD * w->dim, 0, (size_t)w->dim * sizeof(float));
    return NN_OK;
}

/* Checks the batch, then computes h, hd and logits. train: apply dropout. */
static int bow_forward_(nn_model *m, const nn_batch *b, int train) {
    bow *w = m->impl;
    int B = b->B, T = b->T, D = w->dim;
    if (B < 0 || B > w->max_batch || (B > 0 && (T < 0 || !b->x || !b->y))) {
        nn_set_error("bow-classifier: batch of %d examples (T %d) does not fit max_batch %d",
                     B, T, w->max_batch);
        return NN_ERR_SHAPE;
    }
    for (int i = 0; i < B; i++) {
        if (b->y[i] < 0 || b->y[i] >= w->K) {
            nn_set_error("bow-classifier: label %d of example %d is outside [0, %d)",
                         (int)b->y[i], i, w->K);
            return NN_ERR_DATA;
        }
        const int32_t *ids = b->x + (size_t)i * T;
        for (int t = 0; t < T; t++)
            if (ids[t] < 0 || ids[t] >= w->V) {
                nn_set_error("bow-classifier: token id %d at example %d position %d is "
                             "outside the vocabulary [0, %d)",
                             (int)ids[t], i, t, w->V);
                return NN_ERR_DATA;
            }
    }
    for (int i = 0; i < B; i++) {
        const int32_t *ids = b->x + (size_t)i * T;
        float *restrict h = w->h + (size_t)i * D;
        memset(h, 0, (size_t)D * sizeof *h);
        int n = 0;
        for (int t = 0; t < T; t++) {
            if (ids[t] == NN_PAD) continue;
            const float *restrict e = w->E + (size_t)ids[t] * D;
            for (int c = 0; c < D; c++) h[c] += e[c];
            n++;
        }
        float inv = n ? 1.0f / (float)n : 0.0f;
        for (int c = 0; c < D; c++) h[c] *= inv;
        w->inv[i] = inv;
    }
    if (train && w->p > 0.0f)
        nn_dropout_forward(w->hd, w->mask, w->h, (size_t)B * D, D, w->p, m->seed, b->step,
                           b->index);
    else
        memcpy(w->hd, w->h, (size_t)B * D * sizeof(float));
    nn_linear_forward(w->logits, w->hd, w->W, w->bias, B, D, w->O);
    return NN_OK;
}

/* Loss sums into st; dlogits (may be NULL) := grad_scale * dloss/dlogits. */
static void bow_loss_(bow *w, const nn_batch *b, float *dlogits, float grad_scale, nn_stats *st) {
    double correct = 0.0, loss;
    if (w->O == 1) {
        for (int i = 0; i < b->B; i++) w->target[i] = (float)b->y[i];
        loss = nn_bce_forward_backward(dlogits, w->logits, w->target, b->B, grad_scale, &correct);
    } else {
        loss = nn_xent_forward_backward(dlogits, w->logits, b->y, b->B, w->O, -1, 0.0f,
                                        grad_scale, NULL, &correct);
    }
    st->loss += loss;
    st->count += b->B;
    st->correct += correct;
}

static int bow_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                 nn_stats *st) {
    bow *w = m->impl;
    int rc = bow_forward_(m, b, 1);
    if (rc < 0 || b->B == 0) return rc;
    int B = b->B, D = w->dim;
    bow_loss_(w, b, w->dlogits, grad_scale, st);

    memset(w->dhd, 0, (size_t)B * D * sizeof(float));
    nn_linear_backward(w->dhd, w->dW, w->dbias, w->dlogits, w->hd, w->W, B, D, w->O);
    const float *dh = w->dhd;
    if (w->p > 0.0f) {
        memset(w->dh, 0, (size_t)B * D * sizeof(float));
        nn_dropout_backward(w->dh, w->dhd, w->mask, (size_t)B * D);
        dh = w->dh;
    }
    /* Mean backward: each non-pad token's row gets dh / n. Only used rows are touched. */
    for (int i = 0; i < B; i++) {
        const int32_t *ids = b->x + (size_t)i * b->T;
        const float *restrict g = dh + (size_t)i * D;
        float inv = w->inv[i];
        for (int t = 0; t < b->T; t++) {
            if (ids[t] == NN_PAD) continue;
            float *restrict de = w->dE + (size_t)ids[t] * D;
            for (int c = 0; c < D; c++) de[c] += inv * g[c];
        }
    }
    return NN_OK;
}

static int bow_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    int rc = bow_forward_(m, b, 0);
    if (rc < 0 || b->B == 0) return rc;
    bow_loss_(m->impl, b, NULL, 0.0f, st);
    return NN_OK;
}

const nn_model_ops nn_bow_classifier_ops = {
    .name = "bow-classifier",
    .summary = "mean of word embeddings -> dropout -> linear -> softmax (or sigmoid if 2 classes)",
    .data_kind = "classify",
    .keys = bow_keys_,
    .stat_names = NULL,
    .build = bow_build_,
    .bind = bow_bind_,
    .free = bow_free_,
    .forward_backward = bow_forward_backward_,
    .evaluate = bow_evaluate_,
    .decode = NULL,
    .generate = NULL,
};
