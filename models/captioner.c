/* captioner.c - image captioning with attention over CNN feature maps ("Show, Attend and
 * Tell"): the CNN encoder, the glue to the attention decoder it shares with seq2seq
 * (attdec.c, nn_attdec.h), and the attention picture.
 *
 *   image xf (B, C*H*W) -> channels-last copy (B,H,W,C)
 *   per entry of `channels`: conv k x k (stride 1, same padding) -> ReLU -> max pool p
 *                                                -> grid F (B,P,Dv), P = gh*gw
 *   m = mean_j F_j;  s_0 = tanh(W_init m + b_init), c_0 = 0 (LSTM)
 *   for t = 0..U-1 (teacher forcing; inputs NN_BOS, y_0, ..., y_{U-2}):
 *     attention:  e_tj = v . tanh(W_s s_{t-1} + b_s + W_k F_j + p_j), a_t = softmax_j,
 *                 ctx_t = sum_j a_tj F_j   (W_k F_j: one GEMM for all j; nn_attn_forward)
 *                 p_j (positions = true): a learned vector per grid cell. Convolutions are
 *                 translation-equivariant, so without it a cell's key says what is there
 *                 but not where, and captions in reading order need the where.
 *                 none: ctx_t = m (the mean-pooled baseline)
 *     cell:       s_t = cell([emb(y_{t-1}); ctx_t], s_{t-1})   (lstm i,f,g,o | gru r,z,n)
 *     output:     logits_t = W_o [s_t; ctx_t] + b_o  -> cross-entropy, NN_PAD ignored
 *
 * Everything from s_0 on (attention with every grid position valid, cell, output layer,
 * backward through time, greedy and beam decoding) is nn_attdec, with the grid F as its
 * memory and m as its initial-state input (and, without attention, its fixed context).
 *
 * Does not: read files, normalise the loss (the trainer passes it via grad_scale), use
 * dropout, or know the words of its vocabulary (the figure takes them from the caller).
 * Training scratch is sized in build from dims; forward_backward and evaluate allocate
 * nothing. decode sizes its own scratch on first use and grows it when needed. */
#include "models/nn.h"
#include "models/nn_attdec.h"

#include <math.h>
#include <string.h>

#define CAP_MAX_BLOCKS 6

/* ---- the model -------------------------------------------------------------------------- */

typedef struct cap_block {
    int H, W, C;              /* input map */
    int OC, Hp, Wp;           /* output channels; map after pooling */
    float *Wc, *dWc, *bc, *dbc;
    float *in;                /* (B,H,W,C) block input (the previous block's out, or xin) */
    float *cols;              /* (B*H*W, C*k*k) im2col cache */
    float *z, *r;             /* (B,H,W,OC) conv output, after ReLU */
    float *out;               /* (B,Hp,Wp,OC) after pooling */
    int32_t *am;              /* (B,Hp,Wp,OC) pooling argmax */
    float *dz, *dr, *dout;    /* gradients of z, r, out */
} cap_block;

typedef struct cap {
    int V, D, H, attn, k, pool, nb;
    int ic, ih, iw, P, gh, gw, Dv;
    int max_B, max_U;
    cap_block blk[CAP_MAX_BLOCKS];
    nn_attdec dec;                     /* init, attention (keys over the grid), decoder */
    /* training scratch, one allocation (the decoder's carved into it) */
    char *mem;
    float *xin;                        /* (B,H,W,C) channels-last image */
    float *dcols;                      /* (max over blocks of B*H*W*C*k*k) */
    int32_t *lenP;                     /* (B) all P */
    float *mean, *dmean;               /* (B,Dv) */
} cap;

static const nn_key cap_keys_[] = {
    {"channels", "16,32", "output channels of the CNN blocks (conv k x k + ReLU + max pool)"},
    {"kernel", "3", "odd convolution kernel size (same padding, stride 1)"},
    {"pool", "2", "max-pool window and stride after each convolution (1: none)"},
    {"cell", "lstm", "decoder cell: lstm|gru"},
    {"dim", "32", "word embedding width"},
    {"hidden", "128", "decoder hidden width (also the attention width)"},
    {"attention", "bahdanau", "bahdanau|none (none: the mean-pooled grid is the only context)"},
    {"positions", "true", "learned position vectors of the grid cells added to the attention keys"},
    {NULL, NULL, NULL},
};

static void cap_free_(nn_model *m) {
    cap *w = m->impl;
    if (!w) return;
    nn_attdec_free(&w->dec);
    free(w->mem);
    free(w);
    m->impl = NULL;
}

static void cap_carve_train_(cap *w, nn_attdec_arena *a) {
    size_t B = w->max_B;
    size_t dcols = 0;
    w->xin = NN_ATTDEC_F(a, B * w->ih * w->iw * w->ic);
    for (int l = 0; l < w->nb; l++) {
        cap_block *c = &w->blk[l];
        size_t px = B * c->H * c->W, op = B * c->Hp * c->Wp * c->OC;
        size_t K = (size_t)c->C * w->k * w->k;
        c->cols = NN_ATTDEC_F(a, px * K);
        c->z = NN_ATTDEC_F(a, px * c->OC);
        c->r = NN_ATTDEC_F(a, px * c->OC);
        c->out = NN_ATTDEC_F(a, op);
        c->am = NN_ATTDEC_I(a, op);
        c->dz = NN_ATTDEC_F(a, px * c->OC);
        c->dr = NN_ATTDEC_F(a, px * c->OC);
        c->dout = NN_ATTDEC_F(a, op);
        if (l > 0 && px * K > dcols) dcols = px * K;
    }
    w->dcols = NN_ATTDEC_F(a, dcols);
    w->lenP = NN_ATTDEC_I(a, B);
    w->mean = NN_ATTDEC_F(a, B * w->Dv);
    w->dmean = NN_ATTDEC_F(a, B * w->Dv);
    nn_attdec_carve_train(&w->dec, a);
}

/* Parses "16,32" into out (at most CAP_MAX_BLOCKS); returns the count or NN_ERR_CONFIG. */
static int cap_parse_channels_(const char *s, int *out) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096 || n == CAP_MAX_BLOCKS) {
            nn_set_error("captioner: --channels: expected 1 to %d comma-separated counts in "
                         "[1, 4096], got \"%s\"", CAP_MAX_BLOCKS, s);
            return NN_ERR_CONFIG;
        }
        out[n++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) {
            nn_set_error("captioner: --channels: unexpected '%c' in \"%s\"", *p, s);
            return NN_ERR_CONFIG;
        }
    }
    if (n == 0) {
        nn_set_error("captioner: --channels is empty");
        return NN_ERR_CONFIG;
    }
    return n;
}

static int cap_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    const char *cell, *attn, *chs = nn_config_get(cfg, "channels");
    long kernel, pool, dim, hidden;
    int rc, positions, ch[CAP_MAX_BLOCKS];
    if ((rc = nn_config_choice(cfg, "cell", "lstm", "lstm|gru", &cell)) < 0) return rc;
    if ((rc = nn_config_choice(cfg, "attention", "bahdanau", "bahdanau|none", &attn)) < 0)
        return rc;
    if ((rc = nn_config_bool(cfg, "positions", 1, &positions)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "kernel", 3, &kernel)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "pool", 2, &pool)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "dim", 32, &dim)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "hidden", 128, &hidden)) < 0) return rc;
    int nb = cap_parse_channels_(chs ? chs : "16,32", ch);
    if (nb < 0) return nb;
    if (kernel < 1 || kernel > 15 || kernel % 2 == 0 || pool < 1 || pool > 8) {
        nn_set_error("captioner: --kernel must be odd in [1, 15] and --pool in [1, 8] (got "
                     "%ld, %ld)", kernel, pool);
        return NN_ERR_CONFIG;
    }
    if (dim < 1 || dim > (1 << 16) || hidden < 1 || hidden > (1 << 16)) {
        nn_set_error("captioner: --dim and --hidden must be in [1, 65536] (got %ld, %ld)", dim,
                     hidden);
        return NN_ERR_CONFIG;
    }
    if (d->vocab_tgt <= NN_EOS || d->max_batch < 1 || d->max_len_tgt < 1 || d->image_c < 1 ||
        d->image_h < 1 || d->image_w < 1 ||
        (d->features && d->features != d->image_c * d->image_h * d->image_w)) {
        nn_set_error("captioner: needs vocab_tgt > %d, max_batch, max_len_tgt >= 1 and an "
                     "image shape matching the features (got vocab_tgt %d, max_batch %d, "
                     "max_len_tgt %d, image %dx%dx%d, features %d)",
                     NN_EOS, d->vocab_tgt, d->max_batch, d->max_len_tgt, d->image_c,
                     d->image_h, d->image_w, d->features);
        return NN_ERR_SHAPE;
    }
    cap *w = calloc(1, sizeof *w);
    if (!w) {
        nn_set_error("captioner: out of memory");
        return NN_ERR_NOMEM;
    }
    m->impl = w;
    w->attn = strcmp(attn, "bahdanau") == 0;
    w->V = d->vocab_tgt;
    w->D = (int)dim;
    w->H = (int)hidden;
    w->k = (int)kernel;
    w->pool = (int)pool;
    w->nb = nb;
    w->ic = d->image_c, w->ih = d->image_h, w->iw = d->image_w;
    w->max_B = d->max_batch;
    w->max_U = d->max_len_tgt;

    int H = w->ih, W = w->iw, C = w->ic;
    for (int l = 0; l < nb; l++) {
        cap_block *c = &w->blk[l];
        c->H = H, c->W = W, c->C = C, c->OC = ch[l];
        c->Hp = H / w->pool, c->Wp = W / w->pool;
        if (c->Hp < 1 || c->Wp < 1) {
            nn_set_error("captioner: block %d pools a %dx%d map to nothing (image %dx%d, "
                         "%d blocks, pool %d)", l, H, W, w->ih, w->iw, nb, w->pool);
            return NN_ERR_SHAPE;
        }
        int sw[4] = {c->OC, C, w->k, w->k}, sb[1] = {c->OC};
        float kb = 1.0f / sqrtf((float)(C * w->k * w->k));
        char name[NN_NAME_MAX];
        snprintf(name, sizeof name, "encoder/conv_%d/weight", l);
        if ((rc = nn_params_add(&m->params, name, 4, sw, NN_INIT_UNIFORM, kb, &c->Wc,
                                &c->dWc)) < 0)
            return rc;
        snprintf(name, sizeof name, "encoder/conv_%d/bias", l);
        if ((rc = nn_params_add(&m->params, name, 1, sb, NN_INIT_UNIFORM, kb, &c->bc,
                                &c->dbc)) < 0)
            return rc;
        H = c->Hp, W = c->Wp, C = c->OC;
    }
    w->gh = H, w->gw = W, w->P = H * W, w->Dv = C;
    nn_attdec_config dc = {
        .name = "captioner",
        .cell = nn_cell_parse(cell),
        .kind = w->attn ? NN_ATTDEC_BAHDANAU : NN_ATTDEC_FIXED,
        .positions = positions,
        .V = w->V, .D = w->D, .H = w->H, .Dv = w->Dv,
        .max_B = w->max_B, .max_T = w->P, .max_U = w->max_U,
        .chunk = 0,
    };
    nn_attdec_init(&w->dec, &dc);
    if ((rc = nn_attdec_add_params(&w->dec, &m->params, "init", "embedding/weight")) < 0)
        return rc;

    nn_attdec_arena a = {NULL, 0};
    cap_carve_train_(w, &a);
    w->mem = nn_alloc_big(a.off);
    if (!w->mem) {
        nn_set_error("captioner: cannot allocate %zu bytes of scratch", a.off);
        return NN_ERR_NOMEM;
    }
    a.base = w->mem;
    a.off = 0;
    cap_carve_train_(w, &a);
    return NN_OK;
}

/* The padding row of the embedding is never read; keep it zero in checkpoints. */
static int cap_bind_(nn_model *m) {
    cap *w = m->impl;
    memset(w->dec.E + (size_t)NN_PAD * w->D, 0, (size_t)w->D * sizeof(float));
    return NN_OK;
}

/* ---- the encoder ------------------------------------------------------------------------ */

/* xf (B, C*H*W) channel-major -> the feature grid (last block's out) and its mean, then
 * the decoder's s_0, c_0 and (attention) keys. */
static void cap_encode_(cap *w, const float *xf, int B) {
    int C = w->ic, HW = w->ih * w->iw;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++)
                w->xin[((size_t)b * HW + p) * C + c] = xf[((size_t)b * C + c) * HW + p];
    const float *in = w->xin;
    for (int l = 0; l < w->nb; l++) {
        cap_block *c = &w->blk[l];
        size_t n = (size_t)B * c->H * c->W * c->OC;
        c->in = (float *)in;
        nn_conv2d_forward(c->z, c->cols, in, c->Wc, c->bc, B, c->H, c->W, c->C, c->OC, w->k, 1,
                          w->k / 2);
        nn_relu_forward(c->r, c->z, n);
        nn_maxpool2d_forward(c->out, c->am, c->r, B, c->H, c->W, c->OC, w->pool);
        in = c->out;
    }
    const float *F = in;
    int P = w->P, Dv = w->Dv;
    for (int b = 0; b < B; b++) {
        float *mb = w->mean + (size_t)b * Dv;
        memset(mb, 0, (size_t)Dv * sizeof *mb);
        for (int j = 0; j < P; j++)
            for (int k = 0; k < Dv; k++) mb[k] += F[((size_t)b * P + j) * Dv + k];
        for (int k = 0; k < Dv; k++) mb[k] /= (float)P;
        w->lenP[b] = P;
    }
    nn_attdec_begin(&w->dec, w->mean, F, w->lenP, B, P);
}

/* ---- forward, loss, backward -------------------------------------------------------------- */

static int cap_check_(cap *w, const nn_batch *b, int need_y) {
    int B = b->B, D = w->ic * w->ih * w->iw;
    if (B < 0 || B > w->max_B || (B > 0 && (!b->xf || (b->D && b->D != D)))) {
        nn_set_error("captioner: batch of %d images of width %d does not fit max_batch %d, "
                     "image %dx%dx%d", B, b->D, w->max_B, w->ic, w->ih, w->iw);
        return NN_ERR_SHAPE;
    }
    if (!need_y) return NN_OK;
    return nn_attdec_check_targets(&w->dec, b, "caption");
}

/* Teacher-forced forward, the loss and, when train, the output layer's gradient into dO. */
static void cap_forward_loss_(cap *w, const nn_batch *b, int train, float grad_scale,
                              nn_stats *st) {
    cap_encode_(w, b->xf, b->B);
    nn_attdec_embed_targets(&w->dec, b);
    nn_attdec_forward(&w->dec, w->dec.ye, b->B, b->U);
    nn_attdec_output_loss(&w->dec, st, w->dec.O, b->U * b->B, train, grad_scale);
}

static void cap_backward_(cap *w, const nn_batch *b) {
    int B = b->B, U = b->U, Dv = w->Dv, P = w->P;
    cap_block *last = &w->blk[w->nb - 1];
    float *dF = last->dout;
    memset(dF, 0, (size_t)B * P * Dv * sizeof(float));
    memset(w->dmean, 0, (size_t)B * Dv * sizeof(float));
    nn_attdec_backward(&w->dec, w->dmean, w->attn ? dF : NULL, B, U);
    for (int i = 0; i < B; i++)
        for (int j = 0; j < P; j++)
            for (int k = 0; k < Dv; k++)
                dF[((size_t)i * P + j) * Dv + k] += w->dmean[(size_t)i * Dv + k] / (float)P;
    for (int l = w->nb - 1; l >= 0; l--) {
        cap_block *c = &w->blk[l];
        size_t n = (size_t)B * c->H * c->W * c->OC;
        memset(c->dr, 0, n * sizeof(float));
        nn_maxpool2d_backward(c->dr, c->dout, c->am, B, c->H, c->W, c->OC, w->pool);
        memset(c->dz, 0, n * sizeof(float));
        nn_relu_backward(c->dz, c->dr, c->z, n);
        float *dx = NULL;
        if (l > 0) {
            dx = w->blk[l - 1].dout;
            memset(dx, 0, (size_t)B * c->H * c->W * c->C * sizeof(float));
        }
        nn_conv2d_backward(dx, c->dWc, c->dbc, w->dcols, c->dz, c->cols, c->Wc, B, c->H, c->W,
                           c->C, c->OC, w->k, 1, w->k / 2);
    }
    nn_embedding_backward(w->dec.dE, w->dec.dye, w->dec.yin, U * B, w->D);
}

static int cap_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                 nn_stats *st) {
    cap *w = m->impl;
    int rc = cap_check_(w, b, 1);
    if (rc < 0 || b->B == 0) return rc;
    cap_forward_loss_(w, b, 1, grad_scale, st);
    cap_backward_(w, b);
    return NN_OK;
}

static int cap_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    cap *w = m->impl;
    int rc = cap_check_(w, b, 1);
    if (rc < 0 || b->B == 0) return rc;
    cap_forward_loss_(w, b, 0, 0.0f, st);
    return NN_OK;
}

/* ---- decoding ----------------------------------------------------------------------------- */

static int cap_dec_check_(nn_model *m, const nn_batch *b) { return cap_check_(m->impl, b, 0); }
static void cap_dec_encode_(nn_model *m, const nn_batch *b) {
    cap_encode_(m->impl, b->xf, b->B);
}
static const nn_attdec_source cap_source_ = {cap_dec_check_, cap_dec_encode_};

static int cap_decode_(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out) {
    cap *w = m->impl;
    return nn_attdec_decode(&w->dec, m, &cap_source_, b, beam, len_alpha, max_out, out, 0);
}

int nn_captioner_beam_search(nn_model *m, const nn_batch *b, int beam, float len_alpha,
                             int max_out, int32_t *out) {
    NN_ASSERT(m && m->ops == &nn_captioner_ops);
    cap *w = m->impl;
    return nn_attdec_decode(&w->dec, m, &cap_source_, b, beam, len_alpha, max_out, out, 1);
}

const float *nn_captioner_attention(const nn_model *m, int *B, int *steps, int *gh, int *gw) {
    const cap *w = m && m->ops == &nn_captioner_ops ? m->impl : NULL;
    const float *a = nn_attdec_attention(w ? &w->dec : NULL, B, steps, NULL);
    if (gh) *gh = a ? w->gh : 0;
    if (gw) *gw = a ? w->gw : 0;
    return a;
}

/* ---- the attention picture ---------------------------------------------------------------- */

/* A 5x7 font: capitals (words are drawn in capitals), digits and a few signs. */
static const struct { char c; const char *rows; } cap_font_[] = {
    {'A', "01110100011000111111100011000110001"}, {'B', "11110100011000111110100011000111110"},
    {'C', "01110100011000010000100001000101110"}, {'D', "11110100011000110001100011000111110"},
    {'E', "11111100001000011110100001000011111"}, {'F', "11111100001000011110100001000010000"},
    {'G', "01110100011000010111100011000101111"}, {'H', "10001100011000111111100011000110001"},
    {'I', "01110001000010000100001000010001110"}, {'J', "00111000100001000010000101001001100"},
    {'K', "10001100101010011000101001001010001"}, {'L', "10000100001000010000100001000011111"},
    {'M', "10001110111010110101100011000110001"}, {'N', "10001100011100110101100111000110001"},
    {'O', "01110100011000110001100011000101110"}, {'P', "11110100011000111110100001000010000"},
    {'Q', "01110100011000110001101011001001101"}, {'R', "11110100011000111110101001001010001"},
    {'S', "01111100001000001110000010000111110"}, {'T', "11111001000010000100001000010000100"},
    {'U', "10001100011000110001100011000101110"}, {'V', "10001100011000110001100010101000100"},
    {'W', "10001100011000110101101011010101010"}, {'X', "10001100010101000100010101000110001"},
    {'Y', "10001100010101000100001000010000100"}, {'Z', "11111000010001000100010001000011111"},
    {'0', "01110100011001110101110011000101110"}, {'1', "00100011000010000100001000010001110"},
    {'2', "01110100010000100010001000100011111"}, {'3', "11111000100010000010000011000101110"},
    {'4', "00010001100101010010111110001000010"}, {'5', "11111100001111000001000011000101110"},
    {'6', "00110010001000011110100011000101110"}, {'7', "11111000010001000100010000100001000"},
    {'8', "01110100011000101110100011000101110"}, {'9', "01110100011000101111000010001001100"},
    {'<', "00010001000100010000010000010000010"}, {'>', "01000001000001000001000100010001000"},
    {'/', "00000000010001000100010001000000000"}, {'?', "01110100010000100010001000000000100"},
    {'-', "00000000000000011111000000000000000"},
};

/* Draws text at (x, y) of img (h,w) with scale s and grey level val; clipped. */
static void cap_text_(float *img, int h, int w, int x, int y, int s, float val, const char *text) {
    for (const char *p = text; *p; p++, x += 6 * s) {
        char c = *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
        const char *rows = NULL;
        for (size_t g = 0; g < sizeof cap_font_ / sizeof cap_font_[0]; g++)
            if (cap_font_[g].c == c) rows = cap_font_[g].rows;
        if (!rows) continue;
        for (int r = 0; r < 7; r++)
            for (int q = 0; q < 5; q++) {
                if (rows[r * 5 + q] != '1') continue;
                for (int dy = 0; dy < s; dy++)
                    for (int dx = 0; dx < s; dx++) {
                        int yy = y + r * s + dy, xx = x + q * s + dx;
                        if (yy >= 0 && yy < h && xx >= 0 && xx < w) img[(size_t)yy * w + xx] = val;
                    }
            }
    }
}

/* Bilinear interpolation of a (gh,gw) at relative position (fy, fx) in [0,1), cell
 * centres at (i + 0.5) / gh; clamped at the borders. */
static float cap_bilinear_(const float *a, int gh, int gw, float fy, float fx) {
    float y = fy * gh - 0.5f, x = fx * gw - 0.5f;
    y = y < 0.0f ? 0.0f : (y > gh - 1 ? (float)(gh - 1) : y);
    x = x < 0.0f ? 0.0f : (x > gw - 1 ? (float)(gw - 1) : x);
    int y0 = (int)y, x0 = (int)x;
    int y1 = y0 + 1 < gh ? y0 + 1 : y0, x1 = x0 + 1 < gw ? x0 + 1 : x0;
    float ty = y - y0, tx = x - x0;
    float top = a[y0 * gw + x0] * (1 - tx) + a[y0 * gw + x1] * tx;
    float bot = a[y1 * gw + x0] * (1 - tx) + a[y1 * gw + x1] * tx;
    return top * (1 - ty) + bot * ty;
}

int nn_captioner_figure(nn_model *m, const nn_batch *b, int n, const char *const *words,
                        int nwords, float *img, int *h, int *w) {
    NN_ASSERT(m && m->ops == &nn_captioner_ops);
    cap *c = m->impl;
    if (n > b->B) n = b->B;
    if (n > c->max_B) n = c->max_B;
    if (n > 8) n = 8;
    if (n < 1) {
        nn_set_error("captioner: the attention picture needs at least one example");
        return NN_ERR_SHAPE;
    }
    nn_batch sub = *b;
    sub.B = n;
    int steps = c->max_U;
    int32_t out[8 * 256];
    if (steps > 256) steps = 256;
    int rc = cap_decode_(m, &sub, 1, 0.0f, steps, out);
    if (rc < 0) return rc;
    int IH = c->ih, IW = c->iw, C = c->ic, HW = IH * IW;
    int zoom = IH < 112 ? (112 + IH - 1) / IH : 1;
    int TH = IH * zoom, TW = IW * zoom;
    int fs = TW >= 100 ? 2 : 1, gap = 4, text = 7 * fs + 6;
    int cols = 1;
    for (int i = 0; i < n; i++) {
        int len = 0;
        while (len < steps && out[(size_t)i * steps + len] != NN_PAD) len++;
        if (1 + len > cols) cols = 1 + len;
    }
    int W = gap + cols * (TW + gap), Hh = gap + n * (TH + text + gap);
    if ((size_t)W * Hh > ((size_t)1 << 22)) {
        nn_set_error("captioner: attention picture of %dx%d does not fit", Hh, W);
        return NN_ERR_SHAPE;
    }
    for (size_t i = 0; i < (size_t)W * Hh; i++) img[i] = 1.0f;
    const float *att = nn_attdec_attention(&c->dec, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        const float *x = b->xf + (size_t)i * C * HW;
        int y0 = gap + i * (TH + text + gap);
        for (int col = 0; col < cols; col++) {
            int t = col - 1, id = t >= 0 ? out[(size_t)i * steps + t] : NN_PAD;
            if (t >= 0 && id == NN_PAD) break;
            int x0 = gap + col * (TW + gap);
            const float *a = att && t >= 0 ? att + ((size_t)i * steps + t) * c->P : NULL;
            float amax = 0.0f;
            for (int j = 0; a && j < c->P; j++) amax = a[j] > amax ? a[j] : amax;
            for (int yy = 0; yy < TH; yy++)
                for (int xx = 0; xx < TW; xx++) {
                    int py = yy / zoom, px = xx / zoom;
                    float v = 0.0f;
                    for (int ch = 0; ch < C; ch++) v += x[(size_t)ch * HW + py * IW + px];
                    v /= (float)C;
                    if (a && amax > 0.0f) {
                        float s = cap_bilinear_(a, c->gh, c->gw, (yy + 0.5f) / TH,
                                                (xx + 0.5f) / TW) / amax;
                        s = sqrtf(s > 0.0f ? s : 0.0f);
                        v = 0.3f * v + 0.7f * s;
                        v = v > 1.0f ? 1.0f : v;
                    }
                    img[(size_t)(y0 + yy) * W + x0 + xx] = v;
                }
            char label[64];
            if (t < 0) snprintf(label, sizeof label, "image");
            else if (words && id < nwords) snprintf(label, sizeof label, "%s", words[id]);
            else snprintf(label, sizeof label, "%d", id);
            cap_text_(img, Hh, W, x0, y0 + TH + 3, fs, 0.0f, label);
        }
    }
    *h = Hh;
    *w = W;
    return NN_OK;
}

static int cap_visualize_(nn_model *m, const nn_batch *b, int panel, float *img, int *h, int *w,
                          const char **name) {
    if (panel != 0) return NN_ERR_UNSUPPORTED;
    *name = "attention";
    return nn_captioner_figure(m, b, b->B < 6 ? b->B : 6, m->words, m->n_words, img, h, w);
}

const nn_model_ops nn_captioner_ops = {
    .name = "captioner",
    .summary = "CNN encoder + lstm|gru decoder with attention over the feature grid; greedy "
               "and beam decoding (image captioning)",
    .data_kind = "caption",
    .keys = cap_keys_,
    .stat_names = NULL,
    .build = cap_build_,
    .bind = cap_bind_,
    .free = cap_free_,
    .forward_backward = cap_forward_backward_,
    .evaluate = cap_evaluate_,
    .decode = cap_decode_,
    .generate = NULL,
    .visualize = cap_visualize_,
};
