/* captioner.c - image captioning with attention over CNN feature maps ("Show, Attend and
 * Tell"), its greedy and beam decoders and the attention picture.
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
 * The decoder cell is written here (as in s2s.c) because its input at step t depends on
 * s_{t-1} through the attention; the attention itself is s2s's nn_attn_forward/backward
 * with every grid position valid.
 *
 * Does not: read files, normalise the loss (the trainer passes it via grad_scale), use
 * dropout, or know the words of its vocabulary (the figure takes them from the caller).
 * Training scratch is sized in build from dims; forward_backward and evaluate allocate
 * nothing. decode sizes its own scratch on first use and grows it when needed. */
#include "models/nn.h"
#include "models/nn_math.h"

#include <math.h>
#include <string.h>

#define CAP_MAX_BLOCKS 6

/* ---- small helpers ---------------------------------------------------------------------- */

typedef struct cap_arena { char *base; size_t off; } cap_arena;
static void *cap_carve_(cap_arena *a, size_t bytes) {
    size_t o = (a->off + 63) & ~(size_t)63;
    a->off = o + bytes;
    return a->base ? a->base + o : NULL;
}
#define CAP_F(a, n) ((float *)cap_carve_((a), (size_t)(n) * sizeof(float)))
#define CAP_I(a, n) ((int32_t *)cap_carve_((a), (size_t)(n) * sizeof(int32_t)))
#define CAP_D(a, n) ((double *)cap_carve_((a), (size_t)(n) * sizeof(double)))

/* y (R,N) = x (R,K) W^T (W (N,K)) + beta y */
static void cap_xwt_(float *y, const float *x, const float *W, int R, int N, int K, float beta) {
    nn_gemm(0, 1, R, N, K, 1.0f, x, K, W, K, beta, y, N);
}
/* dW (N,K) += dy^T (R,N) x (R,K) */
static void cap_dw_(float *dW, const float *dy, const float *x, int R, int N, int K) {
    nn_gemm(1, 0, N, K, R, 1.0f, dy, N, x, K, 1.0f, dW, K);
}
/* dx (R,K) = beta dx + dy (R,N) W (N,K) */
static void cap_dx_(float *dx, const float *dy, const float *W, int R, int N, int K, float beta) {
    nn_gemm(0, 0, R, K, N, 1.0f, dy, N, W, K, beta, dx, K);
}
static void cap_colsum_(float *db, const float *dy, int R, int N) {
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) db[n] += dy[(size_t)r * N + n];
}
static void cap_rows_(float *y, const float *b1, const float *b2, int R, int N) {
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) y[(size_t)r * N + n] = b1[n] + (b2 ? b2[n] : 0.0f);
}

/* ---- the model -------------------------------------------------------------------------- */

enum { CAP_LSTM = 0, CAP_GRU = 1 };

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

typedef struct cap_dec {
    int R, steps, B;          /* capacity: rows, output steps, examples */
    char *mem;
    float *Sa, *Sb, *Ca, *Cb, *emb, *q, *att, *ctx, *xin, *gates, *aux, *tmp, *O, *logits;
    int32_t *tok, *hist, *hist2, *parent, *src, *fin, *fin_len, *fin_n, *done, *cand_k, *cand_v;
    double *score, *score2, *fin_best, *cand_s;
    float *attn_store;        /* (B, steps, P) of the last greedy decode */
    int attn_B, attn_steps, attn_valid;
} cap_dec;

typedef struct cap {
    int cell, G, V, D, H, A, Dv, In, Hc, GH, attn, positions, k, pool, nb;
    int ic, ih, iw, P, gh, gw;
    int max_B, max_U;
    cap_block blk[CAP_MAX_BLOCKS];
    float *Wi, *dWi, *bi, *dbi;        /* init (H,Dv), (H) */
    float *Wk, *dWk;                   /* attention keys (A,Dv) */
    float *pos, *dpos;                 /* (P,A) learned position of each grid cell, or NULL */
    float *Ws, *dWs, *bs, *dbs;        /* attention query (A,H), (A) */
    float *va, *dva;                   /* (A) */
    float *E, *dE;                     /* (V,D) */
    float *Wih, *dWih, *Whh, *dWhh;    /* (GH,In), (GH,H) */
    float *bih, *dbih, *bhh, *dbhh;    /* (GH) */
    float *Wo, *dWo, *bo, *dbo;        /* (V,Hc), (V) */
    /* training scratch, one allocation */
    char *mem;
    float *xin;                        /* (B,H,W,C) channels-last image */
    float *dcols;                      /* (max over blocks of B*H*W*C*k*k) */
    int32_t *lenP;                     /* (B) all P */
    int32_t *yl, *yin, *ytgt;          /* (B), (U,B), (U,B) */
    float *mean, *dmean;               /* (B,Dv) */
    float *kh, *dkh;                   /* (B,P,A) */
    float *ye, *dye;                   /* (U,B,D) */
    float *S, *Cs;                     /* (U+1,B,H) */
    float *gates, *aux, *xi;           /* (U,B,GH), (U,B,H), (U,B,In) */
    float *q, *att, *ctx, *O, *dO;     /* (U,B,A), (U,B,P), (U,B,Dv), (U,B,Hc) x2 */
    float *logits;                     /* (U*B,V) */
    float *ds, *dsn, *dc, *dcn, *dxin, *dq, *dctx, *dg, *dg2, *tmp;
    float *ascr;                       /* (P + 2A) */
    cap_dec dec;
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
    free(w->mem);
    free(w->dec.mem);
    free(w);
    m->impl = NULL;
}

static void cap_carve_train_(cap *w, cap_arena *a) {
    size_t B = w->max_B, U = w->max_U, UB = U * B;
    size_t dcols = 0;
    w->xin = CAP_F(a, B * w->ih * w->iw * w->ic);
    for (int l = 0; l < w->nb; l++) {
        cap_block *c = &w->blk[l];
        size_t px = B * c->H * c->W, op = B * c->Hp * c->Wp * c->OC;
        size_t K = (size_t)c->C * w->k * w->k;
        c->cols = CAP_F(a, px * K);
        c->z = CAP_F(a, px * c->OC);
        c->r = CAP_F(a, px * c->OC);
        c->out = CAP_F(a, op);
        c->am = CAP_I(a, op);
        c->dz = CAP_F(a, px * c->OC);
        c->dr = CAP_F(a, px * c->OC);
        c->dout = CAP_F(a, op);
        if (l > 0 && px * K > dcols) dcols = px * K;
    }
    w->dcols = CAP_F(a, dcols);
    w->lenP = CAP_I(a, B);
    w->yl = CAP_I(a, B);
    w->yin = CAP_I(a, UB);
    w->ytgt = CAP_I(a, UB);
    w->mean = CAP_F(a, B * w->Dv);
    w->dmean = CAP_F(a, B * w->Dv);
    w->kh = CAP_F(a, w->attn ? B * w->P * w->A : 0);
    w->dkh = CAP_F(a, w->attn ? B * w->P * w->A : 0);
    w->ye = CAP_F(a, UB * w->D);
    w->dye = CAP_F(a, UB * w->D);
    w->S = CAP_F(a, (U + 1) * B * w->H);
    w->Cs = CAP_F(a, (U + 1) * B * w->H);
    w->gates = CAP_F(a, UB * w->GH);
    w->aux = CAP_F(a, UB * w->H);
    w->xi = CAP_F(a, UB * w->In);
    w->q = CAP_F(a, UB * w->A);
    w->att = CAP_F(a, UB * w->P);
    w->ctx = CAP_F(a, UB * w->Dv);
    w->O = CAP_F(a, UB * w->Hc);
    w->dO = CAP_F(a, UB * w->Hc);
    w->logits = CAP_F(a, UB * w->V);
    w->ds = CAP_F(a, B * w->H);
    w->dsn = CAP_F(a, B * w->H);
    w->dc = CAP_F(a, B * w->H);
    w->dcn = CAP_F(a, B * w->H);
    w->dxin = CAP_F(a, B * w->In);
    w->dq = CAP_F(a, B * w->A);
    w->dctx = CAP_F(a, B * w->Dv);
    w->dg = CAP_F(a, B * w->GH);
    w->dg2 = CAP_F(a, B * w->GH);
    w->tmp = CAP_F(a, B * w->GH);
    w->ascr = CAP_F(a, w->P + 2 * (size_t)w->A);
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
    w->cell = strcmp(cell, "gru") == 0 ? CAP_GRU : CAP_LSTM;
    w->G = w->cell == CAP_LSTM ? 4 : 3;
    w->attn = strcmp(attn, "bahdanau") == 0;
    w->positions = w->attn && positions;
    w->V = d->vocab_tgt;
    w->D = (int)dim;
    w->H = (int)hidden;
    w->A = w->H;
    w->GH = w->G * w->H;
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
    w->In = w->D + w->Dv;
    w->Hc = w->H + w->Dv;

    float kv = 1.0f / sqrtf((float)w->Dv), kh = 1.0f / sqrtf((float)w->H);
    int si[2] = {w->H, w->Dv}, sh1[1] = {w->H};
    if ((rc = nn_params_add(&m->params, "init/weight", 2, si, NN_INIT_UNIFORM, kv, &w->Wi,
                            &w->dWi)) < 0 ||
        (rc = nn_params_add(&m->params, "init/bias", 1, sh1, NN_INIT_UNIFORM, kv, &w->bi,
                            &w->dbi)) < 0)
        return rc;
    if (w->attn) {
        int sk[2] = {w->A, w->Dv}, sq[2] = {w->A, w->H}, sa[1] = {w->A};
        float ka = 1.0f / sqrtf((float)w->A);
        if ((rc = nn_params_add(&m->params, "attention/w_key", 2, sk, NN_INIT_UNIFORM, kv,
                                &w->Wk, &w->dWk)) < 0 ||
            (rc = nn_params_add(&m->params, "attention/w_query", 2, sq, NN_INIT_UNIFORM, kh,
                                &w->Ws, &w->dWs)) < 0 ||
            (rc = nn_params_add(&m->params, "attention/b_query", 1, sa, NN_INIT_UNIFORM, kh,
                                &w->bs, &w->dbs)) < 0 ||
            (rc = nn_params_add(&m->params, "attention/v", 1, sa, NN_INIT_UNIFORM, ka, &w->va,
                                &w->dva)) < 0)
            return rc;
        int sp[2] = {w->P, w->A};
        if (w->positions &&
            (rc = nn_params_add(&m->params, "attention/position", 2, sp, NN_INIT_UNIFORM, kv,
                                &w->pos, &w->dpos)) < 0)
            return rc;
    }
    int se[2] = {w->V, w->D}, sx[2] = {w->GH, w->In}, sr[2] = {w->GH, w->H}, sg[1] = {w->GH};
    int so[2] = {w->V, w->Hc}, sob[1] = {w->V};
    float ko = 1.0f / sqrtf((float)w->Hc);
    if ((rc = nn_params_add(&m->params, "embedding/weight", 2, se, NN_INIT_NORMAL, 1.0f, &w->E,
                            &w->dE)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/w_ih", 2, sx, NN_INIT_UNIFORM, kh, &w->Wih,
                            &w->dWih)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/w_hh", 2, sr, NN_INIT_UNIFORM, kh, &w->Whh,
                            &w->dWhh)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/b_ih", 1, sg, NN_INIT_UNIFORM, kh, &w->bih,
                            &w->dbih)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/b_hh", 1, sg, NN_INIT_UNIFORM, kh, &w->bhh,
                            &w->dbhh)) < 0 ||
        (rc = nn_params_add(&m->params, "output/weight", 2, so, NN_INIT_UNIFORM, ko, &w->Wo,
                            &w->dWo)) < 0 ||
        (rc = nn_params_add(&m->params, "output/bias", 1, sob, NN_INIT_UNIFORM, ko, &w->bo,
                            &w->dbo)) < 0)
        return rc;

    cap_arena a = {NULL, 0};
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
    memset(w->E + (size_t)NN_PAD * w->D, 0, (size_t)w->D * sizeof(float));
    return NN_OK;
}

/* ---- the encoder ------------------------------------------------------------------------ */

/* xf (B, C*H*W) channel-major -> the feature grid (last block's out) and its mean, s_0,
 * c_0 and (attention) the keys. */
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
    int P = w->P, Dv = w->Dv, H = w->H;
    for (int b = 0; b < B; b++) {
        float *mb = w->mean + (size_t)b * Dv;
        memset(mb, 0, (size_t)Dv * sizeof *mb);
        for (int j = 0; j < P; j++)
            for (int k = 0; k < Dv; k++) mb[k] += F[((size_t)b * P + j) * Dv + k];
        for (int k = 0; k < Dv; k++) mb[k] /= (float)P;
        w->lenP[b] = P;
    }
    cap_rows_(w->S, w->bi, NULL, B, H);
    cap_xwt_(w->S, w->mean, w->Wi, B, H, Dv, 1.0f);
    nn_tanh_forward(w->S, w->S, (size_t)B * H);
    memset(w->Cs, 0, (size_t)B * H * sizeof(float));
    if (!w->attn) return;
    /* keys: W_k F_j, plus the cell's position vector */
    cap_xwt_(w->kh, F, w->Wk, B * P, w->A, Dv, 0.0f);
    if (w->positions)
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < (size_t)P * w->A; i++) w->kh[(size_t)b * P * w->A + i] += w->pos[i];
}

static const float *cap_grid_(const cap *w) { return w->blk[w->nb - 1].out; }

/* ---- the decoder cell ------------------------------------------------------------------- */

/* One cell step for R rows: xin (R,In), sp/cp (R,H) -> gates (R,GH) activated, aux (R,H)
 * (LSTM tanh(c), GRU W_hn s + b_hn), s (R,H), c (R,H) (LSTM). tmp (R,GH) scratch. */
static void cap_cell_forward_(const cap *w, float *gates, float *aux, float *s, float *c,
                              float *tmp, const float *xin, const float *sp, const float *cp,
                              int R) {
    int H = w->H, GH = w->GH;
    if (w->cell == CAP_LSTM) {
        cap_rows_(gates, w->bih, w->bhh, R, GH);
        cap_xwt_(gates, xin, w->Wih, R, GH, w->In, 1.0f);
        cap_xwt_(gates, sp, w->Whh, R, GH, H, 1.0f);
        for (int r = 0; r < R; r++) {
            float *g = gates + (size_t)r * GH;
            for (int k = 0; k < H; k++) {
                size_t o = (size_t)r * H + k;
                float i = nn_sigmoid_(g[k]), f = nn_sigmoid_(g[H + k]);
                float gg = nn_tanh_(g[2 * H + k]), ou = nn_sigmoid_(g[3 * H + k]);
                g[k] = i, g[H + k] = f, g[2 * H + k] = gg, g[3 * H + k] = ou;
                c[o] = f * cp[o] + i * gg;
                aux[o] = nn_tanh_(c[o]);
                s[o] = ou * aux[o];
            }
        }
    } else {
        cap_rows_(gates, w->bih, NULL, R, GH);
        cap_xwt_(gates, xin, w->Wih, R, GH, w->In, 1.0f);
        cap_rows_(tmp, w->bhh, NULL, R, GH);
        cap_xwt_(tmp, sp, w->Whh, R, GH, H, 1.0f);
        for (int r = 0; r < R; r++) {
            float *g = gates + (size_t)r * GH;
            const float *gh = tmp + (size_t)r * GH;
            for (int k = 0; k < H; k++) {
                size_t o = (size_t)r * H + k;
                float rr = nn_sigmoid_(g[k] + gh[k]);
                float z = nn_sigmoid_(g[H + k] + gh[H + k]);
                float n = nn_tanh_(g[2 * H + k] + rr * gh[2 * H + k]);
                g[k] = rr, g[H + k] = z, g[2 * H + k] = n;
                aux[o] = gh[2 * H + k];
                s[o] = (1.0f - z) * n + z * sp[o];
            }
        }
    }
}

/* Backward of one cell step given ds, dc (R,H): writes dsp, dcp (R,H) for the previous
 * state, ACCUMULATES dxin (R,In) and the cell's parameter gradients. dg, dg2 (R,GH). */
static void cap_cell_backward_(cap *w, float *dxin, float *dsp, float *dcp, float *dg,
                               float *dg2, const float *ds, const float *dc, const float *gates,
                               const float *aux, const float *xin, const float *sp,
                               const float *cp, int R) {
    int H = w->H, GH = w->GH;
    if (w->cell == CAP_LSTM) {
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            float *d = dg + (size_t)r * GH;
            for (int k = 0; k < H; k++) {
                size_t o = (size_t)r * H + k;
                float i = g[k], f = g[H + k], gg = g[2 * H + k], ou = g[3 * H + k];
                float tc = aux[o];
                float dcc = dc[o] + ds[o] * ou * (1.0f - tc * tc);
                d[k] = dcc * gg * i * (1.0f - i);
                d[H + k] = dcc * cp[o] * f * (1.0f - f);
                d[2 * H + k] = dcc * i * (1.0f - gg * gg);
                d[3 * H + k] = ds[o] * tc * ou * (1.0f - ou);
                dcp[o] = dcc * f;
            }
        }
        cap_dw_(w->dWih, dg, xin, R, GH, w->In);
        cap_dw_(w->dWhh, dg, sp, R, GH, H);
        cap_colsum_(w->dbih, dg, R, GH);
        cap_colsum_(w->dbhh, dg, R, GH);
        cap_dx_(dxin, dg, w->Wih, R, GH, w->In, 1.0f);
        cap_dx_(dsp, dg, w->Whh, R, GH, H, 0.0f);
    } else {
        /* dg: gradient of the input projection; dg2: of the recurrent projection */
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            float *di = dg + (size_t)r * GH, *dh = dg2 + (size_t)r * GH;
            for (int k = 0; k < H; k++) {
                size_t o = (size_t)r * H + k;
                float rr = g[k], z = g[H + k], n = g[2 * H + k];
                float dn = ds[o] * (1.0f - z) * (1.0f - n * n);
                float dz = ds[o] * (sp[o] - n) * z * (1.0f - z);
                float dr = dn * aux[o] * rr * (1.0f - rr);
                di[k] = dr, di[H + k] = dz, di[2 * H + k] = dn;
                dh[k] = dr, dh[H + k] = dz, dh[2 * H + k] = dn * rr;
                dsp[o] = z * ds[o];
            }
        }
        cap_dw_(w->dWih, dg, xin, R, GH, w->In);
        cap_dw_(w->dWhh, dg2, sp, R, GH, H);
        cap_colsum_(w->dbih, dg, R, GH);
        cap_colsum_(w->dbhh, dg2, R, GH);
        cap_dx_(dxin, dg, w->Wih, R, GH, w->In, 1.0f);
        cap_dx_(dsp, dg2, w->Whh, R, GH, H, 1.0f);
    }
}

/* One decoder step for R rows (training and decoding): emb (R,D), sp/cp (R,H); src (R) maps
 * rows to examples of the last encode (NULL: identity). Writes q, att (attention), ctx,
 * xin, gates, aux, s, c and O (R,Hc). */
static void cap_step_(cap *w, float *q, float *att, float *ctx, float *xin, float *gates,
                      float *aux, float *s, float *c, float *O, float *tmp, const float *emb,
                      const float *sp, const float *cp, const int32_t *src, int R) {
    int D = w->D, H = w->H, Dv = w->Dv, In = w->In, Hc = w->Hc;
    if (w->attn) {
        cap_rows_(q, w->bs, NULL, R, w->A);
        cap_xwt_(q, sp, w->Ws, R, w->A, H, 1.0f);
        nn_attn_forward(ctx, att, q, w->kh, cap_grid_(w), w->va, w->lenP, src, R, w->P, w->A,
                        Dv, w->ascr);
    } else {
        for (int r = 0; r < R; r++)
            memcpy(ctx + (size_t)r * Dv, w->mean + (size_t)(src ? src[r] : r) * Dv,
                   (size_t)Dv * sizeof(float));
    }
    for (int r = 0; r < R; r++) {
        memcpy(xin + (size_t)r * In, emb + (size_t)r * D, (size_t)D * sizeof(float));
        memcpy(xin + (size_t)r * In + D, ctx + (size_t)r * Dv, (size_t)Dv * sizeof(float));
    }
    cap_cell_forward_(w, gates, aux, s, c, tmp, xin, sp, cp, R);
    for (int r = 0; r < R; r++) {
        memcpy(O + (size_t)r * Hc, s + (size_t)r * H, (size_t)H * sizeof(float));
        memcpy(O + (size_t)r * Hc + H, ctx + (size_t)r * Dv, (size_t)Dv * sizeof(float));
    }
}

/* ---- forward, loss, backward -------------------------------------------------------------- */

static int cap_check_(cap *w, const nn_batch *b, int need_y) {
    int B = b->B, U = b->U, D = w->ic * w->ih * w->iw;
    if (B < 0 || B > w->max_B || (B > 0 && (!b->xf || (b->D && b->D != D)))) {
        nn_set_error("captioner: batch of %d images of width %d does not fit max_batch %d, "
                     "image %dx%dx%d", B, b->D, w->max_B, w->ic, w->ih, w->iw);
        return NN_ERR_SHAPE;
    }
    if (!need_y || B == 0) return NN_OK;
    if (U < 1 || U > w->max_U || !b->y) {
        nn_set_error("captioner: caption length %d does not fit max_len_tgt %d", U, w->max_U);
        return NN_ERR_SHAPE;
    }
    for (int i = 0; i < B; i++) {
        int yl = b->y_len ? b->y_len[i] : U;
        if (yl < 0 || yl > U) {
            nn_set_error("captioner: caption length %d of example %d is outside [0, %d]", yl, i,
                         U);
            return NN_ERR_DATA;
        }
        w->yl[i] = yl;
        for (int u = 0; u < U; u++) {
            int32_t id = b->y[(size_t)i * U + u];
            if (id < 0 || id >= w->V) {
                nn_set_error("captioner: target id %d at example %d position %d is outside the "
                             "vocabulary [0, %d)", (int)id, i, u, w->V);
                return NN_ERR_DATA;
            }
        }
    }
    return NN_OK;
}

/* Teacher-forced forward, the loss and, when train, the output layer's gradient into dO. */
static void cap_forward_loss_(cap *w, const nn_batch *b, int train, float grad_scale,
                              nn_stats *st) {
    int B = b->B, U = b->U, H = w->H, Hc = w->Hc;
    size_t UB = (size_t)U * B;
    cap_encode_(w, b->xf, B);
    for (int u = 0; u < U; u++)
        for (int i = 0; i < B; i++) {
            int live = u < w->yl[i];
            w->yin[(size_t)u * B + i] =
                live ? (u == 0 ? NN_BOS : b->y[(size_t)i * U + u - 1]) : NN_PAD;
            w->ytgt[(size_t)u * B + i] = live ? b->y[(size_t)i * U + u] : NN_PAD;
        }
    nn_embedding_forward(w->ye, w->yin, w->E, (int)UB, w->D);
    for (int u = 0; u < U; u++) {
        size_t o = (size_t)u * B;
        cap_step_(w, w->q + o * w->A, w->att + o * w->P, w->ctx + o * w->Dv, w->xi + o * w->In,
                  w->gates + o * w->GH, w->aux + o * H, w->S + (o + B) * H, w->Cs + (o + B) * H,
                  w->O + o * Hc, w->tmp, w->ye + o * w->D, w->S + o * H, w->Cs + o * H, NULL, B);
    }
    nn_linear_forward(w->logits, w->O, w->Wo, w->bo, (int)UB, Hc, w->V);
    double cnt = 0.0, cor = 0.0;
    st->loss += nn_xent_forward_backward(train ? w->logits : NULL, w->logits, w->ytgt, (int)UB,
                                         w->V, NN_PAD, 0.0f, grad_scale, &cnt, &cor);
    st->count += cnt;
    st->correct += cor;
    if (!train) return;
    cap_dx_(w->dO, w->logits, w->Wo, (int)UB, w->V, Hc, 0.0f);
    cap_dw_(w->dWo, w->logits, w->O, (int)UB, w->V, Hc);
    cap_colsum_(w->dbo, w->logits, (int)UB, w->V);
}

static void cap_backward_(cap *w, const nn_batch *b) {
    int B = b->B, U = b->U, D = w->D, H = w->H, Hc = w->Hc, Dv = w->Dv, A = w->A, P = w->P;
    cap_block *last = &w->blk[w->nb - 1];
    float *dF = last->dout;
    memset(dF, 0, (size_t)B * P * Dv * sizeof(float));
    memset(w->dmean, 0, (size_t)B * Dv * sizeof(float));
    memset(w->ds, 0, (size_t)B * H * sizeof(float));
    memset(w->dc, 0, (size_t)B * H * sizeof(float));
    if (w->attn) memset(w->dkh, 0, (size_t)B * P * A * sizeof(float));
    for (int u = U - 1; u >= 0; u--) {
        size_t o = (size_t)u * B;
        const float *dO = w->dO + o * Hc;
        for (int i = 0; i < B; i++)
            for (int k = 0; k < H; k++) w->ds[(size_t)i * H + k] += dO[(size_t)i * Hc + k];
        memset(w->dxin, 0, (size_t)B * w->In * sizeof(float));
        cap_cell_backward_(w, w->dxin, w->dsn, w->dcn, w->dg, w->dg2, w->ds, w->dc,
                           w->gates + o * w->GH, w->aux + o * H, w->xi + o * w->In,
                           w->S + o * H, w->Cs + o * H, B);
        for (int i = 0; i < B; i++) {
            memcpy(w->dye + (o + i) * D, w->dxin + (size_t)i * w->In, (size_t)D * sizeof(float));
            for (int k = 0; k < Dv; k++)
                w->dctx[(size_t)i * Dv + k] =
                    dO[(size_t)i * Hc + H + k] + w->dxin[(size_t)i * w->In + D + k];
        }
        if (w->attn) {
            memset(w->dq, 0, (size_t)B * A * sizeof(float));
            nn_attn_backward(w->dq, w->dkh, dF, w->dva, w->dctx, w->att + o * P, w->q + o * A,
                             w->kh, cap_grid_(w), w->va, w->lenP, NULL, B, P, A, Dv, w->ascr);
            cap_dw_(w->dWs, w->dq, w->S + o * H, B, A, H);
            cap_colsum_(w->dbs, w->dq, B, A);
            cap_dx_(w->dsn, w->dq, w->Ws, B, A, H, 1.0f);
        } else {
            for (size_t i = 0; i < (size_t)B * Dv; i++) w->dmean[i] += w->dctx[i];
        }
        float *t1 = w->ds; w->ds = w->dsn; w->dsn = t1;
        float *t2 = w->dc; w->dc = w->dcn; w->dcn = t2;
    }
    /* s_0 = tanh(W_init mean + b_init) */
    for (size_t i = 0; i < (size_t)B * H; i++) w->ds[i] *= 1.0f - w->S[i] * w->S[i];
    cap_dw_(w->dWi, w->ds, w->mean, B, H, Dv);
    cap_colsum_(w->dbi, w->ds, B, H);
    cap_dx_(w->dmean, w->ds, w->Wi, B, H, Dv, 1.0f);
    if (w->attn) {
        cap_dw_(w->dWk, w->dkh, cap_grid_(w), B * P, A, Dv);
        if (w->positions)
            for (int b = 0; b < B; b++)
                for (size_t i = 0; i < (size_t)P * A; i++) w->dpos[i] += w->dkh[(size_t)b * P * A + i];
        cap_dx_(dF, w->dkh, w->Wk, B * P, A, Dv, 1.0f);
    }
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
    nn_embedding_backward(w->dE, w->dye, w->yin, U * B, D);
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

static void cap_carve_dec_(cap *w, cap_arena *a, int R, int steps, int B) {
    cap_dec *d = &w->dec;
    size_t r = (size_t)R, K2 = 2 * r;
    d->Sa = CAP_F(a, r * w->H);
    d->Sb = CAP_F(a, r * w->H);
    d->Ca = CAP_F(a, r * w->H);
    d->Cb = CAP_F(a, r * w->H);
    d->emb = CAP_F(a, r * w->D);
    d->q = CAP_F(a, r * w->A);
    d->att = CAP_F(a, r * w->P);
    d->ctx = CAP_F(a, r * w->Dv);
    d->xin = CAP_F(a, r * w->In);
    d->gates = CAP_F(a, r * w->GH);
    d->aux = CAP_F(a, r * w->H);
    d->tmp = CAP_F(a, r * w->GH);
    d->O = CAP_F(a, r * w->Hc);
    d->logits = CAP_F(a, r * w->V);
    d->tok = CAP_I(a, r);
    d->hist = CAP_I(a, r * steps);
    d->hist2 = CAP_I(a, r * steps);
    d->parent = CAP_I(a, r);
    d->src = CAP_I(a, r);
    d->fin = CAP_I(a, (size_t)B * steps);
    d->fin_len = CAP_I(a, B);
    d->fin_n = CAP_I(a, B);
    d->done = CAP_I(a, B);
    d->cand_k = CAP_I(a, K2);
    d->cand_v = CAP_I(a, K2);
    d->score = CAP_D(a, r);
    d->score2 = CAP_D(a, r);
    d->fin_best = CAP_D(a, B);
    d->cand_s = CAP_D(a, K2);
    d->attn_store = CAP_F(a, (size_t)B * steps * w->P);
}

/* Makes the decode scratch hold B*K rows, B examples and `steps` outputs. */
static int cap_dec_reserve_(cap *w, int B, int K, int steps) {
    cap_dec *d = &w->dec;
    int R = B * K;
    if (d->mem && R <= d->R && steps <= d->steps && B <= d->B) return NN_OK;
    int nR = R > d->R ? R : d->R, nS = steps > d->steps ? steps : d->steps;
    int nB = B > d->B ? B : d->B;
    cap_arena a = {NULL, 0};
    cap_carve_dec_(w, &a, nR, nS, nB);
    char *mem = aligned_alloc(64, (a.off + 63) & ~(size_t)63);
    if (!mem) {
        nn_set_error("captioner: cannot allocate %zu bytes of decode scratch", a.off);
        return NN_ERR_NOMEM;
    }
    free(d->mem);
    d->mem = mem;
    d->R = nR, d->steps = nS, d->B = nB;
    d->attn_valid = 0;
    a.base = mem;
    a.off = 0;
    cap_carve_dec_(w, &a, nR, nS, nB);
    return NN_OK;
}

/* Log-softmax of each row in place, NN_PAD and NN_BOS excluded (-inf). */
static void cap_log_softmax_(float *x, int R, int V) {
    for (int r = 0; r < R; r++) {
        float *l = x + (size_t)r * V;
        l[NN_PAD] = -INFINITY;
        l[NN_BOS] = -INFINITY;
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        double s = 0.0;
        for (int v = 0; v < V; v++) s += nn_exp_(l[v] - mx);
        float lse = mx + (float)log(s);
        for (int v = 0; v < V; v++) l[v] -= lse;
    }
}

static int cap_greedy_(cap *w, int B, int max_out, int32_t *out) {
    cap_dec *d = &w->dec;
    int H = w->H, V = w->V, P = w->P;
    memcpy(d->Sa, w->S, (size_t)B * H * sizeof(float));
    memset(d->Ca, 0, (size_t)B * H * sizeof(float));
    memset(d->attn_store, 0, (size_t)B * max_out * P * sizeof(float));
    for (int i = 0; i < B; i++) {
        d->tok[i] = NN_BOS;
        d->done[i] = 0;
        for (int t = 0; t < max_out; t++) out[(size_t)i * max_out + t] = NN_PAD;
    }
    for (int t = 0; t < max_out; t++) {
        nn_embedding_forward(d->emb, d->tok, w->E, B, w->D);
        cap_step_(w, d->q, d->att, d->ctx, d->xin, d->gates, d->aux, d->Sb, d->Cb, d->O, d->tmp,
                  d->emb, d->Sa, d->Ca, NULL, B);
        nn_linear_forward(d->logits, d->O, w->Wo, w->bo, B, w->Hc, V);
        int live = 0;
        for (int i = 0; i < B; i++) {
            if (d->done[i]) {
                d->tok[i] = NN_PAD;
                continue;
            }
            const float *l = d->logits + (size_t)i * V;
            int best = -1;
            for (int v = 0; v < V; v++) {
                if (v == NN_PAD || v == NN_BOS) continue;
                if (best < 0 || l[v] > l[best]) best = v;
            }
            out[(size_t)i * max_out + t] = best;
            d->tok[i] = best;
            if (w->attn)
                memcpy(d->attn_store + ((size_t)i * max_out + t) * P, d->att + (size_t)i * P,
                       (size_t)P * sizeof(float));
            if (best == NN_EOS) d->done[i] = 1;
            else live++;
        }
        float *t1 = d->Sa; d->Sa = d->Sb; d->Sb = t1;
        float *t2 = d->Ca; d->Ca = d->Cb; d->Cb = t2;
        if (!live) break;
    }
    d->attn_B = B;
    d->attn_steps = max_out;
    d->attn_valid = w->attn;
    return NN_OK;
}

static double cap_lp_(int len, float alpha) {
    return alpha == 0.0f ? 1.0 : pow((5.0 + len) / 6.0, (double)alpha);
}

/* Beam search with K hypotheses per image. Each step ranks the 2K best one-token
 * extensions of the live hypotheses by summed log-probability; an NN_EOS among the first K
 * finishes a hypothesis (normalised score logp / lp(len), len counting the NN_EOS), the
 * other extensions fill the K live slots in order. An image is done when K hypotheses have
 * finished, none is live, or (alpha >= 0) no live one can still beat the best finished one
 * (its log-probability only falls, so its best reachable score is logp / lp(max_out)). At
 * max_out the live hypotheses compete unfinished. */
static int cap_beam_(cap *w, int B, int K, float alpha, int max_out, int32_t *out) {
    cap_dec *d = &w->dec;
    int H = w->H, V = w->V, R = B * K;
    for (int r = 0; r < R; r++) {
        d->src[r] = r / K;
        memcpy(d->Sa + (size_t)r * H, w->S + (size_t)(r / K) * H, (size_t)H * sizeof(float));
        d->score[r] = r % K == 0 ? 0.0 : -INFINITY;
        d->tok[r] = NN_BOS;
    }
    memset(d->Ca, 0, (size_t)R * H * sizeof(float));
    for (int i = 0; i < B; i++) {
        d->done[i] = 0;
        d->fin_best[i] = -INFINITY;
        d->fin_len[i] = -1;
        d->fin_n[i] = 0;
    }
    int t;
    for (t = 0; t < max_out; t++) {
        nn_embedding_forward(d->emb, d->tok, w->E, R, w->D);
        cap_step_(w, d->q, d->att, d->ctx, d->xin, d->gates, d->aux, d->Sb, d->Cb, d->O, d->tmp,
                  d->emb, d->Sa, d->Ca, d->src, R);
        nn_linear_forward(d->logits, d->O, w->Wo, w->bo, R, w->Hc, V);
        cap_log_softmax_(d->logits, R, V);
        int open = 0;
        for (int i = 0; i < B; i++) {
            int base = i * K;
            for (int k = 0; k < K; k++) {
                d->parent[base + k] = base + k;
                d->score2[base + k] = -INFINITY;
            }
            if (d->done[i]) continue;
            int nc = 0; /* candidates sorted by descending score (insertion) */
            for (int k = 0; k < K; k++) {
                double sk = d->score[base + k];
                if (sk == -INFINITY) continue;
                const float *l = d->logits + (size_t)(base + k) * V;
                for (int v = 0; v < V; v++) {
                    if (l[v] == -INFINITY) continue;
                    double s = sk + l[v];
                    if (nc == 2 * K && s <= d->cand_s[nc - 1]) continue;
                    int pos = nc < 2 * K ? nc++ : nc - 1;
                    for (; pos > 0 && d->cand_s[pos - 1] < s; pos--) {
                        d->cand_s[pos] = d->cand_s[pos - 1];
                        d->cand_k[pos] = d->cand_k[pos - 1];
                        d->cand_v[pos] = d->cand_v[pos - 1];
                    }
                    d->cand_s[pos] = s;
                    d->cand_k[pos] = k;
                    d->cand_v[pos] = v;
                }
            }
            int nl = 0;
            for (int c = 0; c < nc; c++) {
                int pr = base + d->cand_k[c], v = d->cand_v[c];
                if (v == NN_EOS) {
                    if (c >= K) continue;
                    d->fin_n[i]++;
                    double norm = d->cand_s[c] / cap_lp_(t + 1, alpha);
                    if (norm > d->fin_best[i]) {
                        int32_t *f = d->fin + (size_t)i * max_out;
                        d->fin_best[i] = norm;
                        d->fin_len[i] = t + 1;
                        memcpy(f, d->hist + (size_t)pr * max_out, (size_t)t * sizeof(int32_t));
                        f[t] = NN_EOS;
                    }
                } else if (nl < K) {
                    int nr = base + nl++;
                    d->parent[nr] = pr;
                    d->score2[nr] = d->cand_s[c];
                    memcpy(d->hist2 + (size_t)nr * max_out, d->hist + (size_t)pr * max_out,
                           (size_t)t * sizeof(int32_t));
                    d->hist2[(size_t)nr * max_out + t] = v;
                }
            }
            double bound = -INFINITY;
            for (int k = 0; k < nl; k++) {
                double s = d->score2[base + k] / (alpha >= 0.0f ? cap_lp_(max_out, alpha) : 1.0);
                bound = s > bound ? s : bound;
            }
            if (nl == 0 || d->fin_n[i] >= K || (alpha >= 0.0f && d->fin_best[i] >= bound))
                d->done[i] = 1;
            else
                open++;
        }
        for (int r = 0; r < R; r++) {
            int pr = d->parent[r];
            memcpy(d->Sa + (size_t)r * H, d->Sb + (size_t)pr * H, (size_t)H * sizeof(float));
            memcpy(d->Ca + (size_t)r * H, d->Cb + (size_t)pr * H, (size_t)H * sizeof(float));
            d->score[r] = d->score2[r];
            d->tok[r] = d->done[r / K] || d->score[r] == -INFINITY
                            ? NN_PAD
                            : d->hist2[(size_t)r * max_out + t];
        }
        int32_t *th = d->hist; d->hist = d->hist2; d->hist2 = th;
        if (!open) {
            t++;
            break;
        }
    }
    for (int i = 0; i < B; i++) {
        if (!d->done[i])
            for (int k = 0; k < K; k++) {
                int r = i * K + k;
                if (d->score[r] == -INFINITY) continue;
                double norm = d->score[r] / cap_lp_(t, alpha);
                if (norm > d->fin_best[i]) {
                    d->fin_best[i] = norm;
                    d->fin_len[i] = t;
                    memcpy(d->fin + (size_t)i * max_out, d->hist + (size_t)r * max_out,
                           (size_t)t * sizeof(int32_t));
                }
            }
        int32_t *o = out + (size_t)i * max_out;
        int n = d->fin_len[i] < 0 ? 0 : d->fin_len[i];
        memcpy(o, d->fin + (size_t)i * max_out, (size_t)n * sizeof(int32_t));
        for (int j = n; j < max_out; j++) o[j] = NN_PAD;
    }
    return NN_OK;
}

static int cap_decode_any_(nn_model *m, const nn_batch *b, int beam, float len_alpha,
                           int max_out, int32_t *out, int force_beam) {
    cap *w = m->impl;
    if (beam < 1 || max_out < 1 || !out) {
        nn_set_error("captioner: decode needs beam >= 1 and max_out >= 1 (got %d, %d)", beam,
                     max_out);
        return NN_ERR_CONFIG;
    }
    int rc = cap_check_(w, b, 0);
    if (rc < 0 || b->B == 0) return rc;
    if ((rc = cap_dec_reserve_(w, b->B, beam, max_out)) < 0) return rc;
    cap_encode_(w, b->xf, b->B);
    w->dec.attn_valid = 0;
    if (beam == 1 && !force_beam) return cap_greedy_(w, b->B, max_out, out);
    return cap_beam_(w, b->B, beam, len_alpha, max_out, out);
}

static int cap_decode_(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out) {
    return cap_decode_any_(m, b, beam, len_alpha, max_out, out, 0);
}

int nn_captioner_beam_search(nn_model *m, const nn_batch *b, int beam, float len_alpha,
                             int max_out, int32_t *out) {
    NN_ASSERT(m && m->ops == &nn_captioner_ops);
    return cap_decode_any_(m, b, beam, len_alpha, max_out, out, 1);
}

const float *nn_captioner_attention(const nn_model *m, int *B, int *steps, int *gh, int *gw) {
    const cap *w = m && m->ops == &nn_captioner_ops ? m->impl : NULL;
    int ok = w && w->dec.attn_valid;
    if (B) *B = ok ? w->dec.attn_B : 0;
    if (steps) *steps = ok ? w->dec.attn_steps : 0;
    if (gh) *gh = ok ? w->gh : 0;
    if (gw) *gw = ok ? w->gw : 0;
    return ok ? w->dec.attn_store : NULL;
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
    int rc = cap_decode_any_(m, &sub, 1, 0.0f, steps, out, 0);
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
    const float *att = c->dec.attn_valid ? c->dec.attn_store : NULL;
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
