/* s2s.c - the seq2seq translation model: source embeddings, the recurrent encoder, and the
 * glue to the attention decoder it shares with the captioner (attdec.c, nn_attdec.h).
 *
 *   source ids (B,T) -> embedding (V,dim) -> dropout -> recurrent encoder (nn_rnn: lstm|gru,
 *   `layers`, optionally bidirectional)              -> h_j (B,T,Hout), final state (B,Hout)
 *   s_0 = tanh(W_b final + b_b), c_0 = 0 (LSTM)
 *   for t = 0..U-1 (teacher forcing; decoder input NN_BOS, y_0, ..., y_{U-2}):
 *     attention:  e_tj = v . tanh(W_s s_{t-1} + b_s + W_h h_j), a_t = masked softmax_j,
 *                 c_t = sum_j a_tj h_j                       (W_h h_j: one GEMM for all j)
 *     cell:       s_t = cell([emb(y_{t-1}); c_t], s_{t-1})   (one decoder layer, PyTorch
 *                 gate layout: LSTM i,f,g,o; GRU r,z,n)
 *     output:     logits_t = W_o dropout([s_t; c_t]) + b_o   -> cross-entropy, NN_PAD ignored
 * With attention = none the decoder input is the embedding alone and the output layer sees
 * s_t alone: the source reaches the decoder only through s_0 (the no-attention baseline).
 *
 * The encoder is seq's nn_rnn stack (nn_seq.h); everything from s_0 on (attention, cell,
 * output layer, backward through time, greedy and beam decoding) is nn_attdec. This file
 * adds what is seq2seq's own: the source side, dropout on the embeddings and on the
 * output layer's input, and the chunking of the output layer.
 *
 * Does not: read data, build vocabularies, normalise the loss (the trainer passes the
 * global token count through grad_scale), or detokenise decoded ids. Training scratch is
 * sized in build from dims; forward_backward and evaluate allocate nothing. decode sizes
 * its own scratch on first use (and grows it when a call needs more rows or steps). */
#include "models/nn.h"
#include "models/nn_attdec.h"

#include <math.h>
#include <string.h>

/* ---- the model -------------------------------------------------------------------------- */

#define S2S_ROWKEY 65536 /* dropout row keys: (example * 4 + site) * S2S_ROWKEY + position */

typedef struct s2s {
    int V, D, H, L, bidir, attn, Hout;
    float p;
    int max_B, max_T, max_U;
    int first_out; /* index of output/weight: the last parameters registered */
    nn_rnn enc;
    nn_attdec dec;                     /* bridge (as the initial state), attention, decoder */
    float *Es, *dEs;                   /* (V,D) source embedding view */
    /* training scratch: one allocation, sized in build (the decoder's carved into it) */
    char *mem;
    int32_t *xl;                       /* (B) clamped source lengths */
    int64_t *ridx;                     /* (max(B*T, U*B)) dropout row keys */
    float *xe, *xd, *xmask, *dxd;      /* (B,T,D) */
    float *henc, *dhenc;               /* (B,T,Hout) */
    float *last, *dlast;               /* (B,Hout) */
    float *yd, *ymask;                 /* (U,B,D) target embeddings after dropout, mask */
    float *Od, *Omask;                 /* (U,B,Hc) output-layer inputs after dropout, mask */
} s2s;

static const nn_key s2s_keys_[] = {
    {"cell", "lstm", "recurrent cell of encoder and decoder: lstm|gru"},
    {"dim", "128", "embedding width (source and target)"},
    {"hidden", "256", "hidden width of encoder (per direction) and decoder"},
    {"layers", "1", "encoder layers"},
    {"bidirectional", "true", "bidirectional encoder"},
    {"attention", "bahdanau", "bahdanau|none (none: the decoder sees only the final state)"},
    {"dropout", "0.2", "dropout on embeddings and on the output layer's input (training)"},
    {NULL, NULL, NULL},
};

static void s2s_free_(nn_model *m) {
    s2s *w = m->impl;
    if (!w) return;
    nn_rnn_free(&w->enc);
    nn_attdec_free(&w->dec);
    free(w->mem);
    free(w);
    m->impl = NULL;
}

/* Carves (or measures, when a->base is NULL) the training scratch. */
static void s2s_carve_train_(s2s *w, nn_attdec_arena *a) {
    size_t B = w->max_B, T = w->max_T, U = w->max_U;
    size_t BT = B * T, UB = U * B;
    w->xl = NN_ATTDEC_I(a, B);
    w->ridx = (int64_t *)nn_attdec_carve(a, (BT > UB ? BT : UB) * sizeof(int64_t));
    w->xe = NN_ATTDEC_F(a, BT * w->D);
    w->xd = NN_ATTDEC_F(a, BT * w->D);
    w->xmask = NN_ATTDEC_F(a, BT * w->D);
    w->dxd = NN_ATTDEC_F(a, BT * w->D);
    w->henc = NN_ATTDEC_F(a, w->attn ? BT * w->Hout : 0);
    w->dhenc = NN_ATTDEC_F(a, w->attn ? BT * w->Hout : 0);
    w->last = NN_ATTDEC_F(a, B * w->Hout);
    w->dlast = NN_ATTDEC_F(a, B * w->Hout);
    w->yd = NN_ATTDEC_F(a, UB * w->D);
    w->ymask = NN_ATTDEC_F(a, UB * w->D);
    w->Od = NN_ATTDEC_F(a, UB * w->dec.Hc);
    w->Omask = NN_ATTDEC_F(a, UB * w->dec.Hc);
    nn_attdec_carve_train(&w->dec, a);
}

static int s2s_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    const char *cell, *attn;
    long dim, hidden, layers;
    int bidir, rc;
    double p;
    if ((rc = nn_config_choice(cfg, "cell", "lstm", "lstm|gru", &cell)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "dim", 128, &dim)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "hidden", 256, &hidden)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "layers", 1, &layers)) < 0) return rc;
    if ((rc = nn_config_bool(cfg, "bidirectional", 1, &bidir)) < 0) return rc;
    if ((rc = nn_config_choice(cfg, "attention", "bahdanau", "bahdanau|none", &attn)) < 0)
        return rc;
    if ((rc = nn_config_float(cfg, "dropout", 0.2, &p)) < 0) return rc;
    if (dim < 1 || dim > (1 << 16) || hidden < 1 || hidden > (1 << 16)) {
        nn_set_error("seq2seq: --dim and --hidden must be in [1, 65536] (got %ld, %ld)", dim,
                     hidden);
        return NN_ERR_CONFIG;
    }
    if (layers < 1 || layers > NN_RNN_MAX_LAYERS) {
        nn_set_error("seq2seq: --layers must be in [1, %d], got %ld", NN_RNN_MAX_LAYERS, layers);
        return NN_ERR_CONFIG;
    }
    if (p < 0.0 || p >= 1.0) {
        nn_set_error("seq2seq: --dropout: expected a probability in [0, 1), got %g", p);
        return NN_ERR_CONFIG;
    }
    if (d->vocab < 1 || d->vocab_tgt <= NN_EOS || d->max_batch < 1 || d->max_len < 1 ||
        d->max_len_tgt < 1 || d->max_len_tgt >= S2S_ROWKEY || d->max_len >= S2S_ROWKEY) {
        nn_set_error("seq2seq: needs vocab >= 1, vocab_tgt > %d, max_batch, max_len and "
                     "max_len_tgt in [1, %d) (got vocab %d, vocab_tgt %d, max_batch %d, "
                     "max_len %d, max_len_tgt %d)",
                     NN_EOS, S2S_ROWKEY, d->vocab, d->vocab_tgt, d->max_batch, d->max_len,
                     d->max_len_tgt);
        return NN_ERR_SHAPE;
    }
    s2s *w = calloc(1, sizeof *w);
    if (!w) {
        nn_set_error("seq2seq: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = w;
    w->V = d->vocab;
    w->D = (int)dim;
    w->H = (int)hidden;
    w->L = (int)layers;
    w->bidir = bidir;
    w->attn = strcmp(attn, "bahdanau") == 0;
    w->p = (float)p;
    w->max_B = d->max_batch;
    w->max_T = d->max_len;
    w->max_U = d->max_len_tgt;

    /* Parameters in forward order: comm reduces them in reverse as backward finishes. */
    int se[2] = {w->V, w->D};
    if ((rc = nn_params_add(&m->params, "src_embedding/weight", 2, se, NN_INIT_NORMAL, 1.0f,
                            &w->Es, &w->dEs)) < 0)
        return rc;
    if ((rc = nn_rnn_init(&w->enc, &m->params, "encoder", nn_cell_parse(cell), w->D, w->H, w->L,
                          w->bidir, NN_MERGE_CONCAT, 0, 0, w->max_B, w->max_T)) < 0)
        return rc;
    w->Hout = w->enc.Hout;
    /* Output layer in row chunks: logits of at most ~4M floats at a time. */
    long chunk = (1L << 22) / d->vocab_tgt;
    nn_attdec_config dc = {
        .name = "seq2seq",
        .cell = nn_cell_parse(cell),
        .kind = w->attn ? NN_ATTDEC_BAHDANAU : NN_ATTDEC_NONE,
        .positions = 0,
        .V = d->vocab_tgt, .D = w->D, .H = w->H, .Dv = w->Hout,
        .max_B = w->max_B, .max_T = w->max_T, .max_U = w->max_U,
        .chunk = chunk < 1 ? 1 : (int)chunk,
    };
    nn_attdec_init(&w->dec, &dc);
    if ((rc = nn_attdec_add_params(&w->dec, &m->params, "bridge", "tgt_embedding/weight")) < 0)
        return rc;
    w->first_out = rc;

    nn_attdec_arena a = {NULL, 0};
    s2s_carve_train_(w, &a);
    w->mem = nn_alloc_big(a.off);
    if (!w->mem) {
        nn_set_error("seq2seq: cannot allocate %zu bytes of scratch", a.off);
        return NN_ERR_NOMEM;
    }
    a.base = w->mem;
    a.off = 0;
    s2s_carve_train_(w, &a);
    return NN_OK;
}

/* The padding rows are never read; keep them zero in checkpoints. */
static int s2s_bind_(nn_model *m) {
    s2s *w = m->impl;
    memset(w->Es + (size_t)NN_PAD * w->D, 0, (size_t)w->D * sizeof(float));
    memset(w->dec.E + (size_t)NN_PAD * w->D, 0, (size_t)w->D * sizeof(float));
    return NN_OK;
}

/* ---- forward, loss, backward -------------------------------------------------------------- */

/* Validates the source side of the batch and fills xl (clamped lengths). */
static int s2s_check_src_(s2s *w, const nn_batch *b) {
    int B = b->B, T = b->T;
    if (B < 0 || B > w->max_B || (B > 0 && (T < 1 || T > w->max_T || !b->x))) {
        nn_set_error("seq2seq: batch of %d examples with source length %d does not fit "
                     "max_batch %d, max_len %d",
                     B, T, w->max_B, w->max_T);
        return NN_ERR_SHAPE;
    }
    return nn_attdec_check_ids("seq2seq", "source", "source", w->xl, b->x, b->x_len, B, T,
                               w->V);
}

/* Validates the batch: the source side, and the targets when need_y. */
static int s2s_check_(s2s *w, const nn_batch *b, int need_y) {
    int rc = s2s_check_src_(w, b);
    if (rc < 0 || !need_y) return rc;
    return nn_attdec_check_targets(&w->dec, b, "target");
}

/* Training dropout of x (B*T rows of C) into y, mask: row r is example i at position t,
 * keyed (example * 4 + site) * S2S_ROWKEY + t so that the mask depends on neither the rank
 * nor the batch composition. Rows are batch-major (r = i*T + t) for site 0 (source) and
 * time-major (r = t*B + i) otherwise (the decoder's layout). Returns y. */
static const float *s2s_dropout_(nn_model *m, const nn_batch *b, int site, float *y,
                                 float *mask, const float *x, int T, int C) {
    s2s *w = m->impl;
    int B = b->B;
    for (int i = 0; i < B; i++) {
        int64_t ex = b->index ? b->index[i] : i;
        for (int t = 0; t < T; t++)
            w->ridx[site == 0 ? (size_t)i * T + t : (size_t)t * B + i] =
                (ex * 4 + site) * S2S_ROWKEY + t;
    }
    nn_dropout_forward(y, mask, x, (size_t)B * T * C, C, w->p, m->seed, b->step, w->ridx);
    return y;
}

/* Source side: embeddings, encoder, then the decoder's s_0 and attention keys. train:
 * dropout. */
static void s2s_encode_(nn_model *m, const nn_batch *b, int train) {
    s2s *w = m->impl;
    int B = b->B, T = b->T, D = w->D;
    size_t BT = (size_t)B * T;
    nn_embedding_forward(w->xe, b->x, w->Es, (int)BT, D);
    const float *xin = w->xe;
    if (train && w->p > 0.0f) xin = s2s_dropout_(m, b, 0, w->xd, w->xmask, w->xe, T, D);
    nn_rnn_forward(&w->enc, w->attn ? w->henc : NULL, w->last, xin, w->xl, NULL, B, T);
    nn_attdec_begin(&w->dec, w->last, w->attn ? w->henc : NULL, w->xl, B, T);
}

/* Teacher-forced forward over the whole target, the loss (chunks of the output layer)
 * and, when train, the gradient of the output layer into dec.dO. */
static void s2s_forward_loss_(nn_model *m, const nn_batch *b, int train, float grad_scale,
                              nn_stats *st) {
    s2s *w = m->impl;
    nn_attdec *dec = &w->dec;
    int B = b->B, U = b->U, D = w->D;
    s2s_encode_(m, b, train);
    nn_attdec_embed_targets(dec, b);
    const float *emb = dec->ye;
    if (train && w->p > 0.0f) emb = s2s_dropout_(m, b, 1, w->yd, w->ymask, dec->ye, U, D);
    nn_attdec_forward(dec, emb, B, U);
    const float *O = dec->O;
    if (train && w->p > 0.0f) O = s2s_dropout_(m, b, 2, w->Od, w->Omask, dec->O, U, dec->Hc);
    nn_attdec_output_loss(dec, st, O, U * B, train, grad_scale);
    /* the output layer is final: the trainer may reduce it during the recurrent backward */
    if (train) nn_grad_ready(m, w->first_out);
}

static void s2s_backward_(nn_model *m, const nn_batch *b) {
    s2s *w = m->impl;
    nn_attdec *dec = &w->dec;
    int B = b->B, T = b->T, U = b->U, D = w->D, Hc = dec->Hc, Ho = w->Hout;
    size_t UB = (size_t)U * B, BT = (size_t)B * T;
    if (w->p > 0.0f)
        for (size_t i = 0; i < UB * Hc; i++) dec->dO[i] *= w->Omask[i];
    if (w->attn) memset(w->dhenc, 0, BT * Ho * sizeof(float));
    memset(w->dlast, 0, (size_t)B * Ho * sizeof(float));
    nn_attdec_backward(dec, w->dlast, w->attn ? w->dhenc : NULL, B, U);
    memset(w->dxd, 0, BT * D * sizeof(float));
    nn_rnn_backward(&w->enc, w->dxd, w->attn ? w->dhenc : NULL, w->dlast);
    if (w->p > 0.0f) {
        for (size_t i = 0; i < BT * D; i++) w->dxd[i] *= w->xmask[i];
        for (size_t i = 0; i < UB * D; i++) dec->dye[i] *= w->ymask[i];
    }
    nn_embedding_backward(w->dEs, w->dxd, b->x, (int)BT, D);
    nn_embedding_backward(dec->dE, dec->dye, dec->yin, (int)UB, D);
}

static int s2s_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                 nn_stats *st) {
    s2s *w = m->impl;
    int rc = s2s_check_(w, b, 1);
    if (rc < 0 || b->B == 0) return rc;
    s2s_forward_loss_(m, b, 1, grad_scale, st);
    s2s_backward_(m, b);
    return NN_OK;
}

static int s2s_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    s2s *w = m->impl;
    int rc = s2s_check_(w, b, 1);
    if (rc < 0 || b->B == 0) return rc;
    s2s_forward_loss_(m, b, 0, 0.0f, st);
    return NN_OK;
}

/* ---- decoding --------------------------------------------------------------------------- */

static int s2s_dec_check_(nn_model *m, const nn_batch *b) { return s2s_check_(m->impl, b, 0); }
static void s2s_dec_encode_(nn_model *m, const nn_batch *b) { s2s_encode_(m, b, 0); }
static const nn_attdec_source s2s_source_ = {s2s_dec_check_, s2s_dec_encode_};

static int s2s_decode_(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out) {
    s2s *w = m->impl;
    return nn_attdec_decode(&w->dec, m, &s2s_source_, b, beam, len_alpha, max_out, out, 0);
}

int nn_s2s_beam_search(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out) {
    NN_ASSERT(m && m->ops == &nn_seq2seq_ops);
    s2s *w = m->impl;
    return nn_attdec_decode(&w->dec, m, &s2s_source_, b, beam, len_alpha, max_out, out, 1);
}

const float *nn_s2s_attention(const nn_model *m, int *B, int *steps, int *T) {
    const s2s *w = m && m->ops == &nn_seq2seq_ops ? m->impl : NULL;
    return nn_attdec_attention(w ? &w->dec : NULL, B, steps, T);
}

const nn_model_ops nn_seq2seq_ops = {
    .name = "seq2seq",
    .summary = "recurrent encoder-decoder (lstm|gru) with Bahdanau attention; greedy and beam "
               "decoding",
    .data_kind = "parallel",
    .keys = s2s_keys_,
    .stat_names = NULL,
    .build = s2s_build_,
    .bind = s2s_bind_,
    .free = s2s_free_,
    .forward_backward = s2s_forward_backward_,
    .evaluate = s2s_evaluate_,
    .decode = s2s_decode_,
    .generate = NULL,
};
