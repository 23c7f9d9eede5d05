/* seqmodels.c - the sequence models of the course, built from the layers of seq.c:
 *   cnn-classifier  embedding -> Conv1D (one or several widths) -> ReLU -> global max or
 *                   mean pool over valid positions -> concat -> dropout -> linear -> xent
 *   rnn-classifier  embedding -> RNN/LSTM/GRU stack (optionally bidirectional) -> final
 *                   valid state (both directions) -> dropout -> linear -> xent
 *   rnn-lm          embedding -> dropout -> stacked cell -> dropout -> linear to V -> xent
 *                   over every non-pad target; truncated BPTT, state carried across
 *                   batches, tied embeddings, sampling (generate).
 *
 * Models return loss sums; the trainer normalises through grad_scale. Scratch is sized
 * from nn_dims in build, so forward_backward and evaluate allocate nothing. They do not
 * read data or know about ranks. */
#include "models/nn.h"
#include "models/nn_math.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* ---- shared pieces ------------------------------------------------------------------ */

#define SEQ_MAX_WIDTHS 8

/* Dropout masks of different sites must differ: each site gets its own seed. */
static uint64_t site_seed(uint64_t seed, int site) { return nn_hash64(seed + 0x5EC0000ull + site); }

/* Carves a scratch arena: with base NULL it only counts floats. */
static float *take(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

static int check_ids(const char *model, const nn_batch *b, int V, int max_B, int max_T) {
    if (b->B < 0 || b->B > max_B || (b->B > 0 && (b->T < 1 || b->T > max_T || !b->x || !b->y))) {
        nn_set_error("%s: batch of %d examples of length %d does not fit max_batch %d, "
                     "max_len %d", model, b->B, b->T, max_B, max_T);
        return NN_ERR_SHAPE;
    }
    for (int i = 0; i < b->B; i++) {
        if (b->x_len && (b->x_len[i] < 0 || b->x_len[i] > b->T)) {
            nn_set_error("%s: length %d of example %d is outside [0, %d]", model,
                         (int)b->x_len[i], i, b->T);
            return NN_ERR_DATA;
        }
        for (int t = 0; t < b->T; t++) {
            int32_t id = b->x[(size_t)i * b->T + t];
            if (id < 0 || id >= V) {
                nn_set_error("%s: token id %d at example %d position %d is outside the "
                             "vocabulary [0, %d)", model, (int)id, i, t, V);
                return NN_ERR_DATA;
            }
        }
    }
    return NN_OK;
}

static int check_labels(const char *model, const nn_batch *b, int K) {
    for (int i = 0; i < b->B; i++)
        if (b->y[i] < 0 || b->y[i] >= K) {
            nn_set_error("%s: label %d of example %d is outside [0, %d)", model, (int)b->y[i], i,
                         K);
            return NN_ERR_DATA;
        }
    return NN_OK;
}

/* Row lengths: x_len when given, else T for every row. */
static void batch_len(int32_t *len, const nn_batch *b) {
    for (int i = 0; i < b->B; i++) len[i] = b->x_len ? b->x_len[i] : b->T;
}

static int get_dropout(const nn_config *cfg, float *p) {
    double v;
    int rc = nn_config_float(cfg, "dropout", 0.0, &v);
    if (rc < 0) return rc;
    if (v < 0.0 || v >= 1.0) {
        nn_set_error("--dropout: expected a probability in [0, 1), got %g", v);
        return NN_ERR_CONFIG;
    }
    *p = (float)v;
    return NN_OK;
}

static int get_pos(const nn_config *cfg, const char *key, long def, long max, int *out) {
    long v;
    int rc = nn_config_int(cfg, key, def, &v);
    if (rc < 0) return rc;
    if (v < 1 || v > max) {
        nn_set_error("--%s: expected an integer in [1, %ld], got %ld", key, max, v);
        return NN_ERR_CONFIG;
    }
    *out = (int)v;
    return NN_OK;
}

/* Classifier head: h (B,D) -> dropout -> linear (K) -> xent. Shared by both classifiers. */
typedef struct head {
    int D, K;
    float p;
    float *W, *dW, *b, *db;          /* (K,D), (K) */
    float *hd, *mask, *dhd, *logits; /* (B,D), (B,D), (B,D), (B,K) */
} head;

static int head_add(head *h, nn_params *ps, int D, int K, float p) {
    h->D = D;
    h->K = K;
    h->p = p;
    int sw[2] = {K, D}, sb[1] = {K};
    int rc = nn_params_add(ps, "output/weight", 2, sw, NN_INIT_UNIFORM, 1.0f / sqrtf((float)D),
                           &h->W, &h->dW);
    if (rc >= 0) rc = nn_params_add(ps, "output/bias", 1, sb, NN_INIT_ZERO, 0.0f, &h->b, &h->db);
    return rc < 0 ? rc : NN_OK;
}

static void head_carve(head *h, float *base, size_t *off, size_t B) {
    h->hd = take(base, off, B * h->D);
    h->mask = take(base, off, B * h->D);
    h->dhd = take(base, off, B * h->D);
    h->logits = take(base, off, B * h->K);
}

/* Forward (and, when dh != NULL, backward: dh (B,D) is OVERWRITTEN with the gradient of
 * grad_scale * loss w.r.t. h). Adds loss sums to st. */
static void head_run(head *h, const float *x, float *dh, const nn_batch *b, uint64_t seed,
                     int train, float grad_scale, nn_stats *st) {
    int B = b->B, D = h->D;
    const float *in = x;
    if (train && h->p > 0.0f) {
        nn_dropout_forward(h->hd, h->mask, x, (size_t)B * D, D, h->p, site_seed(seed, 9),
                           b->step, b->index);
        in = h->hd;
    }
    nn_linear_forward(h->logits, in, h->W, h->b, B, D, h->K);
    double correct = 0.0;
    st->loss += nn_xent_forward_backward(dh ? h->logits : NULL, h->logits, b->y, B, h->K, -1,
                                         0.0f, grad_scale, NULL, &correct);
    st->count += B;
    st->correct += correct;
    if (!dh) return;
    float *d = train && h->p > 0.0f ? h->dhd : dh;
    memset(d, 0, (size_t)B * D * sizeof *d);
    nn_linear_backward(d, h->dW, h->db, h->logits, in, h->W, B, D, h->K);
    if (d != dh) {
        memset(dh, 0, (size_t)B * D * sizeof *dh);
        nn_dropout_backward(dh, d, h->mask, (size_t)B * D);
    }
}

/* ---- cnn-classifier -------------------------------------------------------------- */

typedef struct cnn {
    int V, E, F, nw, width[SEQ_MAX_WIDTHS], same, maxpool, max_B, max_T;
    float *emb, *demb;                          /* (V,E) views */
    float *W[SEQ_MAX_WIDTHS], *dW[SEQ_MAX_WIDTHS]; /* (F,E,k) */
    float *bias[SEQ_MAX_WIDTHS], *dbias[SEQ_MAX_WIDTHS];
    head hd;
    float *mem;
    float *x, *dx;                               /* (B,T,E) */
    float *cols, *dcols;                         /* (B*To, E*k) for the widest k */
    float *y[SEQ_MAX_WIDTHS];                    /* (B,To,F) conv pre-activations */
    float *a, *da, *dy;                          /* (B,To,F) relu output and grads */
    float *cols_w[SEQ_MAX_WIDTHS];               /* per-width im2col caches */
    int32_t *am[SEQ_MAX_WIDTHS];                 /* (B,F) argmax */
    int32_t *len, *nvalid[SEQ_MAX_WIDTHS];       /* (B) */
    float *pool, *dpool;                         /* (B,F) */
    float *h, *dh;                               /* (B, F*nw) */
    int32_t *imem;
} cnn;

static const nn_key cnn_keys_[] = {
    {"dim", "64", "embedding width"},
    {"filters", "64", "filters per width"},
    {"width", "3", "filter width, or a comma list of widths (3,4,5): one conv each"},
    {"pool", "max", "global pooling over valid positions: max|mean"},
    {"padding", "same", "convolution padding: same|valid"},
    {"dropout", "0", "dropout probability on the pooled features (training only)"},
    {NULL, NULL, NULL},
};

static void cnn_free_(nn_model *m) {
    cnn *c = m->impl;
    if (!c) return;
    free(c->mem);
    free(c->imem);
    free(c);
    m->impl = NULL;
}

static int parse_widths(const char *s, int *w, int *n) {
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 64 || *n == SEQ_MAX_WIDTHS) {
            nn_set_error("--width: expected up to %d comma-separated widths in [1, 64], got '%s'",
                         SEQ_MAX_WIDTHS, s);
            return NN_ERR_CONFIG;
        }
        w[(*n)++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) {
            nn_set_error("--width: expected comma-separated integers, got '%s'", s);
            return NN_ERR_CONFIG;
        }
    }
    if (*n == 0) {
        nn_set_error("--width: empty");
        return NN_ERR_CONFIG;
    }
    return NN_OK;
}

static size_t cnn_layout(cnn *c, float *base) {
    size_t off = 0, B = (size_t)c->max_B, T = (size_t)c->max_T, E = (size_t)c->E;
    size_t F = (size_t)c->F;
    c->x = take(base, &off, B * T * E);
    c->dx = take(base, &off, B * T * E);
    size_t kmax = 0;
    for (int i = 0; i < c->nw; i++) kmax = (size_t)c->width[i] > kmax ? (size_t)c->width[i] : kmax;
    c->dcols = take(base, &off, B * T * E * kmax);
    for (int i = 0; i < c->nw; i++) {
        c->cols_w[i] = take(base, &off, B * T * E * c->width[i]);
        c->y[i] = take(base, &off, B * T * F);
    }
    c->a = take(base, &off, B * T * F);
    c->da = take(base, &off, B * T * F);
    c->dy = take(base, &off, B * T * F);
    c->pool = take(base, &off, B * F);
    c->dpool = take(base, &off, B * F);
    c->h = take(base, &off, B * F * c->nw);
    c->dh = take(base, &off, B * F * c->nw);
    head_carve(&c->hd, base, &off, B);
    return off;
}

static int cnn_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    int rc, E, F;
    float p;
    const char *pool, *pad;
    if ((rc = get_pos(cfg, "dim", 64, 1 << 16, &E)) < 0 ||
        (rc = get_pos(cfg, "filters", 64, 1 << 16, &F)) < 0 || (rc = get_dropout(cfg, &p)) < 0 ||
        (rc = nn_config_choice(cfg, "pool", "max", "max|mean", &pool)) < 0 ||
        (rc = nn_config_choice(cfg, "padding", "same", "same|valid", &pad)) < 0)
        return rc;
    if (d->vocab < 1 || d->classes < 2 || d->max_batch < 1 || d->max_len < 1) {
        nn_set_error("cnn-classifier: needs vocab >= 1, classes >= 2, max_batch >= 1, "
                     "max_len >= 1 (got %d, %d, %d, %d)", d->vocab, d->classes, d->max_batch,
                     d->max_len);
        return NN_ERR_SHAPE;
    }
    cnn *c = calloc(1, sizeof *c);
    if (!c) {
        nn_set_error("cnn-classifier: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = c;
    const char *ws = nn_config_get(cfg, "width");
    if ((rc = parse_widths(ws ? ws : "3", c->width, &c->nw)) < 0) return rc;
    c->V = d->vocab;
    c->E = E;
    c->F = F;
    c->same = !strcmp(pad, "same");
    c->maxpool = !strcmp(pool, "max");
    c->max_B = d->max_batch;
    c->max_T = d->max_len;
    int se[2] = {c->V, E};
    if ((rc = nn_params_add(&m->params, "embedding/weight", 2, se, NN_INIT_NORMAL, 1.0f, &c->emb,
                            &c->demb)) < 0)
        return rc;
    for (int i = 0; i < c->nw; i++) {
        char name[NN_NAME_MAX];
        int k = c->width[i], sw[3] = {F, E, k}, sb[1] = {F};
        float bound = 1.0f / sqrtf((float)(E * k)); /* PyTorch's Conv1d default */
        snprintf(name, sizeof name, "conv_%d/weight", i);
        if ((rc = nn_params_add(&m->params, name, 3, sw, NN_INIT_UNIFORM, bound, &c->W[i],
                                &c->dW[i])) < 0)
            return rc;
        snprintf(name, sizeof name, "conv_%d/bias", i);
        if ((rc = nn_params_add(&m->params, name, 1, sb, NN_INIT_UNIFORM, bound, &c->bias[i],
                                &c->dbias[i])) < 0)
            return rc;
    }
    if ((rc = head_add(&c->hd, &m->params, F * c->nw, d->classes, p)) < 0) return rc;
    size_t n = cnn_layout(c, NULL);
    size_t ni = (size_t)c->max_B * (1 + c->nw) + (size_t)c->max_B * F * c->nw;
    c->mem = malloc(n * sizeof(float));
    c->imem = malloc(ni * sizeof(int32_t));
    if (!c->mem || !c->imem) {
        nn_set_error("cnn-classifier: cannot allocate %zu floats of scratch", n);
        return NN_ERR_NOMEM;
    }
    cnn_layout(c, c->mem);
    int32_t *ip = c->imem;
    c->len = ip, ip += c->max_B;
    for (int i = 0; i < c->nw; i++) {
        c->nvalid[i] = ip, ip += c->max_B;
        c->am[i] = ip, ip += (size_t)c->max_B * F;
    }
    return NN_OK;
}

static int cnn_bind_(nn_model *m) {
    cnn *c = m->impl;
    if (NN_PAD < c->V) memset(c->emb + (size_t)NN_PAD * c->E, 0, (size_t)c->E * sizeof(float));
    return NN_OK;
}

static int cnn_run_(nn_model *m, const nn_batch *b, int train, float grad_scale, nn_stats *st) {
    cnn *c = m->impl;
    int rc;
    if ((rc = check_ids("cnn-classifier", b, c->V, c->max_B, c->max_T)) < 0) return rc;
    if (b->B == 0) return NN_OK;
    if ((rc = check_labels("cnn-classifier", b, c->hd.K)) < 0) return rc;
    int B = b->B, T = b->T, E = c->E, F = c->F, FW = F * c->nw;
    batch_len(c->len, b);
    nn_embedding_forward(c->x, b->x, c->emb, B * T, E);
    for (int i = 0; i < c->nw; i++) {
        int k = c->width[i], To = nn_conv1d_out_len(T, k, c->same);
        size_t n = (size_t)B * To * F;
        nn_conv1d_forward(c->y[i], c->cols_w[i], c->x, c->len, c->W[i], c->bias[i], B, T, E, F, k,
                          c->same);
        nn_relu_forward(c->a, c->y[i], n);
        nn_conv1d_valid_len(c->nvalid[i], c->len, B, T, k, c->same);
        if (c->maxpool) nn_maxpool_time_forward(c->pool, c->am[i], c->a, c->nvalid[i], B, To, F);
        else nn_meanpool_time_forward(c->pool, c->a, c->nvalid[i], B, To, F);
        for (int r = 0; r < B; r++)
            memcpy(c->h + (size_t)r * FW + (size_t)i * F, c->pool + (size_t)r * F,
                   (size_t)F * sizeof(float));
    }
    head_run(&c->hd, c->h, train ? c->dh : NULL, b, m->seed, train, grad_scale, st);
    if (!train) return NN_OK;
    memset(c->dx, 0, (size_t)B * T * E * sizeof(float));
    for (int i = 0; i < c->nw; i++) {
        int k = c->width[i], To = nn_conv1d_out_len(T, k, c->same);
        size_t n = (size_t)B * To * F;
        for (int r = 0; r < B; r++)
            memcpy(c->dpool + (size_t)r * F, c->dh + (size_t)r * FW + (size_t)i * F,
                   (size_t)F * sizeof(float));
        memset(c->da, 0, n * sizeof(float));
        if (c->maxpool) nn_maxpool_time_backward(c->da, c->dpool, c->am[i], B, To, F);
        else nn_meanpool_time_backward(c->da, c->dpool, c->nvalid[i], B, To, F);
        memset(c->dy, 0, n * sizeof(float));
        nn_relu_backward(c->dy, c->da, c->y[i], n);
        nn_conv1d_backward(c->dx, c->dW[i], c->dbias[i], c->dcols, c->dy, c->cols_w[i], c->W[i],
                           c->len, B, T, E, F, k, c->same);
    }
    nn_embedding_backward(c->demb, c->dx, b->x, B * T, E);
    return NN_OK;
}

static int cnn_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st) {
    return cnn_run_(m, b, 1, grad_scale, st);
}

static int cnn_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    return cnn_run_(m, b, 0, 0.0f, st);
}

const nn_model_ops nn_cnn_classifier_ops = {
    .name = "cnn-classifier",
    .summary = "embedding -> Conv1D (widths) -> ReLU -> global max/mean pool -> dropout -> "
               "linear -> softmax",
    .data_kind = "classify",
    .keys = cnn_keys_,
    .build = cnn_build_,
    .bind = cnn_bind_,
    .free = cnn_free_,
    .forward_backward = cnn_forward_backward_,
    .evaluate = cnn_evaluate_,
};

/* ---- rnn-classifier ------------------------------------------------------------- */

typedef struct rnnc {
    int V, E, max_B, max_T;
    float *emb, *demb;
    nn_rnn rnn;
    head hd;
    float *mem;
    float *x, *dx, *last, *dlast;
    int32_t *len;
} rnnc;

static const nn_key rnnc_keys_[] = {
    {"cell", "lstm", "recurrent cell: rnn|lstm|gru"},
    {"bidirectional", "0", "also run a reverse direction"},
    {"merge", "concat", "how the two directions combine: concat|sum"},
    {"layers", "1", "stacked recurrent layers"},
    {"hidden", "64", "hidden width per direction"},
    {"dim", "64", "embedding width"},
    {"dropout", "0", "dropout probability on the final state (training only)"},
    {NULL, NULL, NULL},
};

static void rnnc_free_(nn_model *m) {
    rnnc *c = m->impl;
    if (!c) return;
    nn_rnn_free(&c->rnn);
    free(c->mem);
    free(c->len);
    free(c);
    m->impl = NULL;
}

static int rnnc_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    int rc, E, H, layers, bidir;
    float p;
    const char *cell, *merge;
    if ((rc = get_pos(cfg, "dim", 64, 1 << 16, &E)) < 0 ||
        (rc = get_pos(cfg, "hidden", 64, 1 << 16, &H)) < 0 ||
        (rc = get_pos(cfg, "layers", 1, NN_RNN_MAX_LAYERS, &layers)) < 0 ||
        (rc = get_dropout(cfg, &p)) < 0 ||
        (rc = nn_config_bool(cfg, "bidirectional", 0, &bidir)) < 0 ||
        (rc = nn_config_choice(cfg, "cell", "lstm", "rnn|lstm|gru", &cell)) < 0 ||
        (rc = nn_config_choice(cfg, "merge", "concat", "concat|sum", &merge)) < 0)
        return rc;
    if (d->vocab < 1 || d->classes < 2 || d->max_batch < 1 || d->max_len < 1) {
        nn_set_error("rnn-classifier: needs vocab >= 1, classes >= 2, max_batch >= 1, "
                     "max_len >= 1 (got %d, %d, %d, %d)", d->vocab, d->classes, d->max_batch,
                     d->max_len);
        return NN_ERR_SHAPE;
    }
    rnnc *c = calloc(1, sizeof *c);
    if (!c) {
        nn_set_error("rnn-classifier: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = c;
    c->V = d->vocab;
    c->E = E;
    c->max_B = d->max_batch;
    c->max_T = d->max_len;
    int se[2] = {c->V, E};
    if ((rc = nn_params_add(&m->params, "embedding/weight", 2, se, NN_INIT_NORMAL, 1.0f, &c->emb,
                            &c->demb)) < 0)
        return rc;
    if ((rc = nn_rnn_init(&c->rnn, &m->params, "encoder", nn_cell_parse(cell), E, H, layers,
                          bidir, nn_merge_parse(merge), 0, 0, c->max_B, c->max_T)) < 0)
        return rc;
    int Ho = c->rnn.Hout;
    if ((rc = head_add(&c->hd, &m->params, Ho, d->classes, p)) < 0) return rc;
    size_t off = 0, B = (size_t)c->max_B, TE = (size_t)c->max_T * E;
    for (int pass = 0; pass < 2; pass++) {
        float *base = c->mem;
        off = 0;
        c->x = take(base, &off, B * TE);
        c->dx = take(base, &off, B * TE);
        c->last = take(base, &off, B * Ho);
        c->dlast = take(base, &off, B * Ho);
        head_carve(&c->hd, base, &off, B);
        if (pass == 0 && !(c->mem = malloc(off * sizeof(float)))) break;
    }
    c->len = malloc(B * sizeof *c->len);
    if (!c->mem || !c->len) {
        nn_set_error("rnn-classifier: cannot allocate %zu floats of scratch", off);
        return NN_ERR_NOMEM;
    }
    return NN_OK;
}

static int rnnc_bind_(nn_model *m) {
    rnnc *c = m->impl;
    if (NN_PAD < c->V) memset(c->emb + (size_t)NN_PAD * c->E, 0, (size_t)c->E * sizeof(float));
    return NN_OK;
}

static int rnnc_run_(nn_model *m, const nn_batch *b, int train, float grad_scale, nn_stats *st) {
    rnnc *c = m->impl;
    int rc;
    if ((rc = check_ids("rnn-classifier", b, c->V, c->max_B, c->max_T)) < 0) return rc;
    if (b->B == 0) return NN_OK;
    if ((rc = check_labels("rnn-classifier", b, c->hd.K)) < 0) return rc;
    int B = b->B, T = b->T, E = c->E;
    batch_len(c->len, b);
    nn_embedding_forward(c->x, b->x, c->emb, B * T, E);
    nn_rnn_forward(&c->rnn, NULL, c->last, c->x, c->len, NULL, B, T);
    head_run(&c->hd, c->last, train ? c->dlast : NULL, b, m->seed, train, grad_scale, st);
    if (!train) return NN_OK;
    memset(c->dx, 0, (size_t)B * T * E * sizeof(float));
    nn_rnn_backward(&c->rnn, c->dx, NULL, c->dlast);
    nn_embedding_backward(c->demb, c->dx, b->x, B * T, E);
    return NN_OK;
}

static int rnnc_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                  nn_stats *st) {
    return rnnc_run_(m, b, 1, grad_scale, st);
}

static int rnnc_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    return rnnc_run_(m, b, 0, 0.0f, st);
}

const nn_model_ops nn_rnn_classifier_ops = {
    .name = "rnn-classifier",
    .summary = "embedding -> RNN/LSTM/GRU stack (bidirectional optional) -> final state -> "
               "dropout -> linear -> softmax",
    .data_kind = "classify",
    .keys = rnnc_keys_,
    .build = rnnc_build_,
    .bind = rnnc_bind_,
    .free = rnnc_free_,
    .forward_backward = rnnc_forward_backward_,
    .evaluate = rnnc_evaluate_,
};

/* ---- rnn-lm output: fused bias + softmax cross-entropy + bias gradient ---------------- */
/* The output layer over the vocabulary dominates an LM step. logits (N,V) arrive from one
 * GEMM without bias; one pass per row adds the bias and finds the max, a second writes
 * exp(z - max) in place while summing it, a third scales that into the gradient and adds
 * it into this chunk's share of dbias. Rows are processed in fixed chunks of LM_CHUNK, so
 * the sums (loss, dbias) do not depend on how many threads run them; threads take chunks
 * round-robin and the partial sums are added in chunk order. */
#define LM_CHUNK 64
#define LM_MAX_THREADS 16

typedef struct lm_xent_job {
    float *logits;          /* (N,V) in: x W^T; out: grad_scale * dloss/dz (train) */
    const float *bias;      /* (V) */
    const int32_t *y;       /* (N) targets; NN_PAD ignored */
    int N, V, train, nthreads;
    float gs;               /* grad_scale */
    double *acc;            /* (nchunks, 3): loss, count, correct per chunk */
    float *dbias_part;      /* (nchunks, V) */
} lm_xent_job;

typedef struct lm_xent_arg {
    const lm_xent_job *job;
    int tid;
} lm_xent_arg;

static void lm_xent_rows(const lm_xent_job *J, int c) {
    const int V = J->V;
    int lo = c * LM_CHUNK, hi = lo + LM_CHUNK < J->N ? lo + LM_CHUNK : J->N;
    double loss = 0.0, cnt = 0.0, hit = 0.0;
    float *db = J->train ? J->dbias_part + (size_t)c * V : NULL;
    if (db) memset(db, 0, (size_t)V * sizeof *db);
    for (int i = lo; i < hi; i++) {
        float *restrict x = J->logits + (size_t)i * V;
        int32_t t = J->y[i];
        if (t == NN_PAD) {
            if (J->train) memset(x, 0, (size_t)V * sizeof *x);
            continue;
        }
        const float *restrict b = J->bias;
        for (int j = 0; j < V; j++) x[j] += b[j];
        float mx = nn_vrow_max_(x, V), zt = x[t];
        float s = nn_vrow_expsum_(x, x, mx, V); /* x := exp(z - max) */
        loss += (double)mx + log((double)s) - (double)zt;
        cnt += 1.0;
        hit += zt >= mx; /* the target attains the max (ties count as hits) */
        if (J->train) {
            float a = J->gs / s;
            for (int k = 0; k < V; k++) {
                float g = x[k] * a;
                x[k] = g;
                db[k] += g;
            }
            x[t] -= J->gs;
            db[t] -= J->gs;
        }
    }
    J->acc[3 * c] = loss;
    J->acc[3 * c + 1] = cnt;
    J->acc[3 * c + 2] = hit;
}

static void *lm_xent_thread(void *p) {
    lm_xent_arg *a = p;
    int nch = (a->job->N + LM_CHUNK - 1) / LM_CHUNK;
    for (int c = a->tid; c < nch; c += a->job->nthreads) lm_xent_rows(a->job, c);
    return NULL;
}

/* Runs J over all chunks on up to J->nthreads threads (the caller's included), then adds
 * the chunk sums into st and, when training, dbias. Falls back to fewer threads if
 * pthread_create fails. */
static void lm_xent_run(lm_xent_job *J, float *dbias, nn_stats *st) {
    int nch = (J->N + LM_CHUNK - 1) / LM_CHUNK;
    int nt = J->nthreads < nch ? J->nthreads : nch;
    if (nt < 1) nt = 1;
    if (nt > LM_MAX_THREADS) nt = LM_MAX_THREADS;
    J->nthreads = nt;
    pthread_t th[LM_MAX_THREADS];
    lm_xent_arg args[LM_MAX_THREADS];
    int started[LM_MAX_THREADS] = {0};
    for (int i = 0; i < nt; i++) args[i] = (lm_xent_arg){J, i};
    for (int i = 1; i < nt; i++)
        started[i] = pthread_create(&th[i], NULL, lm_xent_thread, &args[i]) == 0;
    lm_xent_thread(&args[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else lm_xent_thread(&args[i]); /* could not start: do its share here */
    }
    for (int c = 0; c < nch; c++) {
        st->loss += J->acc[3 * c];
        st->count += J->acc[3 * c + 1];
        st->correct += J->acc[3 * c + 2];
        if (J->train) {
            const float *p = J->dbias_part + (size_t)c * J->V;
            for (int v = 0; v < J->V; v++) dbias[v] += p[v];
        }
    }
}

/* ---- rnn-lm ---------------------------------------------------------------------- */

typedef struct rnnlm {
    int V, E, H, max_B, max_T, tie;
    int first_out;         /* index of the first output-layer parameter (nn_grad_ready) */
    float p;
    float *emb, *demb;     /* (V,E) */
    float *W, *dW;         /* (V,H): the output projection, == emb when tied */
    float *bias, *dbias;   /* (V) */
    nn_rnn rnn;
    float *mem;
    float *x, *xd, *xmask, *dxd, *dx;  /* (B,T,E) embeddings, after dropout, grads */
    float *h, *hd, *hmask, *dhd, *dh;  /* (B,T,H) stack output, after dropout, grads */
    float *logits;                     /* (B*T, V), overwritten by its gradient */
    float *tdW;                        /* (H,V) dW^T before it is added into dW */
    float *tdh;                        /* (H,B*T) dh^T */
    double *acc;                       /* (chunks, 3) fused xent sums */
    float *dbias_part;                 /* (chunks, V) */
    int32_t *len;
    /* generation state (B = 1) */
    float *gh, *gc, *gx, *gy, *gscratch, *gsel; /* (L,H), (L,H), (E), (H), step, (V) */
} rnnlm;

static const nn_key rnnlm_keys_[] = {
    {"cell", "lstm", "recurrent cell: rnn|lstm|gru"},
    {"layers", "2", "stacked recurrent layers"},
    {"hidden", "256", "hidden width"},
    {"dim", "256", "embedding width"},
    {"dropout", "0", "dropout probability on embeddings and on the stack output (training)"},
    {"bptt", "0", "truncated BPTT: cut the gradient every k steps (0: full sequence)"},
    {"carry", "0", "carry final states across batches in this many lanes (row i uses lane "
                   "index[i] mod lanes); 0: every batch starts from zero"},
    {"tie", "0", "tie the output projection to the embedding table (needs dim == hidden)"},
    {NULL, NULL, NULL},
};

static void rnnlm_free_(nn_model *m) {
    rnnlm *l = m->impl;
    if (!l) return;
    nn_rnn_free(&l->rnn);
    free(l->mem);
    free(l->len);
    free(l);
    m->impl = NULL;
}

static size_t rnnlm_layout(rnnlm *l, float *base) {
    size_t off = 0, BT = (size_t)l->max_B * l->max_T, E = (size_t)l->E, H = (size_t)l->H;
    size_t V = (size_t)l->V, L = (size_t)l->rnn.layers;
    l->x = take(base, &off, BT * E);
    l->xd = take(base, &off, BT * E);
    l->xmask = take(base, &off, BT * E);
    l->dxd = take(base, &off, BT * E);
    l->dx = take(base, &off, BT * E);
    l->h = take(base, &off, BT * H);
    l->hd = take(base, &off, BT * H);
    l->hmask = take(base, &off, BT * H);
    l->dhd = take(base, &off, BT * H);
    l->dh = take(base, &off, BT * H);
    l->logits = take(base, &off, BT * V);
    l->tdW = take(base, &off, H * V);
    l->tdh = take(base, &off, H * BT);
    size_t nch = (BT + LM_CHUNK - 1) / LM_CHUNK;
    l->dbias_part = take(base, &off, nch * V);
    l->acc = (double *)take(base, &off, 2 * 3 * nch);
    l->gh = take(base, &off, L * H);
    l->gc = take(base, &off, L * H);
    l->gx = take(base, &off, E);
    l->gy = take(base, &off, H);
    l->gscratch = take(base, &off, nn_rnn_step_scratch(&l->rnn, 1));
    l->gsel = take(base, &off, 2 * V);
    return off;
}

static int rnnlm_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    int rc, E, H, layers, tie, lanes = 0, bptt = 0;
    long v;
    float p;
    const char *cell;
    if ((rc = get_pos(cfg, "dim", 256, 1 << 16, &E)) < 0 ||
        (rc = get_pos(cfg, "hidden", 256, 1 << 16, &H)) < 0 ||
        (rc = get_pos(cfg, "layers", 2, NN_RNN_MAX_LAYERS, &layers)) < 0 ||
        (rc = get_dropout(cfg, &p)) < 0 || (rc = nn_config_bool(cfg, "tie", 0, &tie)) < 0 ||
        (rc = nn_config_choice(cfg, "cell", "lstm", "rnn|lstm|gru", &cell)) < 0)
        return rc;
    if ((rc = nn_config_int(cfg, "bptt", 0, &v)) < 0) return rc;
    if (v < 0 || v > (1 << 20)) {
        nn_set_error("--bptt: expected an integer >= 0, got %ld", v);
        return NN_ERR_CONFIG;
    }
    bptt = (int)v;
    if ((rc = nn_config_int(cfg, "carry", 0, &v)) < 0) return rc;
    if (v < 0 || v > (1 << 24)) {
        nn_set_error("--carry: expected a lane count >= 0, got %ld", v);
        return NN_ERR_CONFIG;
    }
    lanes = (int)v;
    if (tie && E != H) {
        nn_set_error("--tie: tied embeddings need dim == hidden (got dim %d, hidden %d)", E, H);
        return NN_ERR_CONFIG;
    }
    if (d->vocab < 4 || d->max_batch < 1 || d->max_len < 1) {
        nn_set_error("rnn-lm: needs vocab >= 4, max_batch >= 1, max_len >= 1 (got %d, %d, %d)",
                     d->vocab, d->max_batch, d->max_len);
        return NN_ERR_SHAPE;
    }
    rnnlm *l = calloc(1, sizeof *l);
    if (!l) {
        nn_set_error("rnn-lm: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = l;
    l->V = d->vocab;
    l->E = E;
    l->H = H;
    l->tie = tie;
    l->p = p;
    l->max_B = d->max_batch;
    l->max_T = d->max_len;
    int se[2] = {l->V, E}, sw[2] = {l->V, H}, sb[1] = {l->V};
    /* U(-0.1, 0.1) embeddings (the usual LM init; N(0,1) rows make tied logits huge). */
    if ((rc = nn_params_add(&m->params, "embedding/weight", 2, se, NN_INIT_UNIFORM, 0.1f, &l->emb,
                            &l->demb)) < 0)
        return rc;
    if ((rc = nn_rnn_init(&l->rnn, &m->params, "encoder", nn_cell_parse(cell), E, H, layers, 0,
                          NN_MERGE_CONCAT, bptt, lanes, l->max_B, l->max_T)) < 0)
        return rc;
    l->first_out = m->params.n;
    if (!tie && (rc = nn_params_add(&m->params, "output/weight", 2, sw, NN_INIT_UNIFORM,
                                    1.0f / sqrtf((float)H), &l->W, &l->dW)) < 0)
        return rc;
    if ((rc = nn_params_add(&m->params, "output/bias", 1, sb, NN_INIT_ZERO, 0.0f, &l->bias,
                            &l->dbias)) < 0)
        return rc;
    size_t n = rnnlm_layout(l, NULL);
    l->mem = nn_alloc_big(n * sizeof(float));
    l->len = malloc((size_t)l->max_B * sizeof *l->len);
    if (!l->mem || !l->len) {
        nn_set_error("rnn-lm: cannot allocate %zu floats of scratch", n);
        return NN_ERR_NOMEM;
    }
    rnnlm_layout(l, l->mem);
    return NN_OK;
}

static int rnnlm_bind_(nn_model *m) {
    rnnlm *l = m->impl;
    if (l->tie) {
        l->W = l->emb;
        l->dW = l->demb;
    } else {
        memset(l->emb + (size_t)NN_PAD * l->E, 0, (size_t)l->E * sizeof(float));
    }
    nn_rnn_reset_carry(&l->rnn);
    return NN_OK;
}

static int rnnlm_run_(nn_model *m, const nn_batch *b, int train, float grad_scale, nn_stats *st) {
    rnnlm *l = m->impl;
    int rc;
    if ((rc = check_ids("rnn-lm", b, l->V, l->max_B, l->max_T)) < 0) return rc;
    if (b->B == 0) return NN_OK;
    if (b->U != b->T) {
        nn_set_error("rnn-lm: targets of length %d for inputs of length %d", b->U, b->T);
        return NN_ERR_SHAPE;
    }
    int B = b->B, T = b->T, E = l->E, H = l->H, V = l->V, N = B * T;
    for (int i = 0; i < N; i++)
        if (b->y[i] < 0 || b->y[i] >= V) {
            nn_set_error("rnn-lm: target id %d at position %d is outside [0, %d)", (int)b->y[i], i,
                         V);
            return NN_ERR_DATA;
        }
    batch_len(l->len, b);
    int drop = train && l->p > 0.0f;
    nn_embedding_forward(l->x, b->x, l->emb, N, E);
    const float *xin = l->x;
    if (drop) {
        nn_dropout_forward(l->xd, l->xmask, l->x, (size_t)N * E, T * E, l->p, site_seed(m->seed, 1),
                           b->step, b->index);
        xin = l->xd;
    }
    const int64_t *lanes = train && l->rnn.lanes > 0 ? b->index : NULL;
    nn_rnn_forward(&l->rnn, l->h, NULL, xin, l->len, lanes, B, T);
    const float *hin = l->h;
    if (drop) {
        nn_dropout_forward(l->hd, l->hmask, l->h, (size_t)N * H, T * H, l->p, site_seed(m->seed, 2),
                           b->step, b->index);
        hin = l->hd;
    }
    nn_gemm(0, 1, N, V, H, 1.0f, hin, H, l->W, H, 0.0f, l->logits, V);
    lm_xent_job J = {l->logits, l->bias, b->y, N, V, train, nn_get_threads(), grad_scale, l->acc,
                     l->dbias_part};
    lm_xent_run(&J, l->dbias, st);
    if (!train) return NN_OK;
    /* dh = dz W and dW += dz^T h, each computed transposed: OpenBLAS runs these shapes
     * (few rows, long rows) markedly faster than the direct ones (see scripts/bench-lstm). */
    float *dh = drop ? l->dhd : l->dh;
    nn_gemm(1, 1, H, N, V, 1.0f, l->W, H, l->logits, V, 0.0f, l->tdh, N);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < H; j++) dh[(size_t)i * H + j] = l->tdh[(size_t)j * N + i];
    nn_gemm(1, 0, H, V, N, 1.0f, hin, H, l->logits, V, 0.0f, l->tdW, V);
    for (int v = 0; v < V; v++)
        for (int j = 0; j < H; j++) l->dW[(size_t)v * H + j] += l->tdW[(size_t)j * V + v];
    /* the output layer (registered last) is final: it can be reduced during the recurrent
     * backward; a tied weight is also the embedding and only finishes at the very end */
    nn_grad_ready(m, l->first_out);
    if (drop) {
        memset(l->dh, 0, (size_t)N * H * sizeof(float));
        nn_dropout_backward(l->dh, l->dhd, l->hmask, (size_t)N * H);
    }
    float *dx = drop ? l->dxd : l->dx;
    memset(dx, 0, (size_t)N * E * sizeof(float));
    nn_rnn_backward(&l->rnn, dx, l->dh, NULL);
    if (drop) {
        memset(l->dx, 0, (size_t)N * E * sizeof(float));
        nn_dropout_backward(l->dx, l->dxd, l->xmask, (size_t)N * E);
    }
    nn_embedding_backward(l->demb, l->dx, b->x, N, E);
    return NN_OK;
}

static int rnnlm_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                   nn_stats *st) {
    return rnnlm_run_(m, b, 1, grad_scale, st);
}

static int rnnlm_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    return rnnlm_run_(m, b, 0, 0.0f, st);
}

/* Value of rank k (0-based, descending) among a[0..n), by quickselect; a is permuted. */
static float kth_largest(float *a, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break;
    }
    return a[k];
}

/* Feeds the prompt (BOS when empty), then samples up to max_out ids: greedy when
 * temperature <= 0, else from softmax(logits / temperature) restricted to the top_k
 * logits (top_k <= 0: all), never NN_PAD. Randomness: nn_rng_make(seed, i, 0,
 * NN_RNG_SAMPLE) for the i-th sampled id. Stops after NN_EOS. */
static int rnnlm_generate_(nn_model *m, const int32_t *prompt, int n, int max_out,
                           float temperature, int top_k, uint64_t seed, int32_t *out) {
    rnnlm *l = m->impl;
    int V = l->V, H = l->H, E = l->E;
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= V) {
            nn_set_error("rnn-lm: prompt id %d at %d is outside [0, %d)", (int)prompt[i], i, V);
            return NN_ERR_DATA;
        }
    size_t LH = (size_t)l->rnn.layers * H;
    memset(l->gh, 0, LH * sizeof(float));
    memset(l->gc, 0, LH * sizeof(float));
    float *logits = l->gsel, *tmp = l->gsel + V;
    int32_t tok = n > 0 ? prompt[0] : NN_BOS;
    int produced = 0;
    for (int i = 0; produced < max_out; i++) {
        nn_embedding_forward(l->gx, &tok, l->emb, 1, E);
        nn_rnn_step(&l->rnn, l->gy, l->gh, l->gc, l->gx, 1, l->gscratch);
        if (i + 1 < n) { /* still reading the prompt */
            tok = prompt[i + 1];
            continue;
        }
        nn_linear_forward(logits, l->gy, l->W, l->bias, 1, H, V);
        logits[NN_PAD] = -INFINITY;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        int pick = best;
        if (temperature > 0.0f) {
            float thresh = -INFINITY;
            if (top_k > 0 && top_k < V) {
                memcpy(tmp, logits, (size_t)V * sizeof *tmp);
                thresh = kth_largest(tmp, V, top_k - 1);
            }
            double sum = 0.0;
            for (int v = 0; v < V; v++) {
                float e = logits[v] >= thresh && v != NN_PAD
                              ? nn_exp_((logits[v] - logits[best]) / temperature) : 0.0f;
                tmp[v] = e;
                sum += e;
            }
            nn_rng g = nn_rng_make(seed, (uint64_t)produced, 0, NN_RNG_SAMPLE);
            double u = nn_rng_uniform(&g) * sum, acc = 0.0;
            pick = best;
            for (int v = 0; v < V; v++) {
                if (tmp[v] == 0.0f) continue;
                acc += tmp[v];
                pick = v;
                if (acc > u) break;
            }
        }
        out[produced++] = pick;
        if (pick == NN_EOS) break;
        tok = pick;
    }
    return produced;
}

const nn_model_ops nn_rnn_lm_ops = {
    .name = "rnn-lm",
    .summary = "embedding -> stacked RNN/LSTM/GRU -> linear to vocabulary (next-token LM)",
    .data_kind = "lm",
    .keys = rnnlm_keys_,
    .build = rnnlm_build_,
    .bind = rnnlm_bind_,
    .free = rnnlm_free_,
    .forward_backward = rnnlm_forward_backward_,
    .evaluate = rnnlm_evaluate_,
    .generate = rnnlm_generate_,
};
