/* s2s.c - the seq2seq translation model with Bahdanau attention, and its decoders.
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
 * The encoder is seq's nn_rnn stack (nn_seq.h). The decoder cell is written here because
 * its input at step t depends on s_{t-1} through the attention, which nn_rnn's
 * whole-sequence forward cannot express; nn_rnn_step has no training caches.
 *
 * Does not: read data, build vocabularies, normalise the loss (the trainer passes the
 * global token count through grad_scale), or detokenise decoded ids. Training scratch is
 * sized in build from dims; forward_backward and evaluate allocate nothing. decode sizes
 * its own scratch on first use (and grows it when a call needs more rows or steps). */
#include "models/nn.h"
#include "models/nn_math.h"

#include <math.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------------------ */

/* Two-pass carving of one allocation: first with base == NULL to measure, then for real. */
typedef struct s2s_arena { char *base; size_t off; } s2s_arena;
static void *s2s_carve_(s2s_arena *a, size_t bytes) {
    size_t o = (a->off + 63) & ~(size_t)63;
    a->off = o + bytes;
    return a->base ? a->base + o : NULL;
}
#define S2S_F(a, n) ((float *)s2s_carve_((a), (size_t)(n) * sizeof(float)))
#define S2S_I(a, n) ((int32_t *)s2s_carve_((a), (size_t)(n) * sizeof(int32_t)))

/* y (R,N) = x (R,K) W^T with W (N,K); beta 0 or 1. */
static void s2s_mm_xwt_(float *y, const float *x, const float *W, int R, int N, int K, float beta) {
    nn_gemm(0, 1, R, N, K, 1.0f, x, K, W, K, beta, y, N);
}
/* dW (N,K) += dy^T (R,N) x (R,K) */
static void s2s_mm_dw_(float *dW, const float *dy, const float *x, int R, int N, int K) {
    nn_gemm(1, 0, N, K, R, 1.0f, dy, N, x, K, 1.0f, dW, K);
}
/* dx (R,K) = beta dx + dy (R,N) W (N,K) */
static void s2s_mm_dx_(float *dx, const float *dy, const float *W, int R, int N, int K, float beta) {
    nn_gemm(0, 0, R, K, N, 1.0f, dy, N, W, K, beta, dx, K);
}
static void s2s_colsum_(float *db, const float *dy, int R, int N) {
    for (int r = 0; r < R; r++) {
        const float *g = dy + (size_t)r * N;
        for (int n = 0; n < N; n++) db[n] += g[n];
    }
}
static void s2s_bias_rows_(float *y, const float *b1, const float *b2, int R, int N) {
    for (int r = 0; r < R; r++) {
        float *o = y + (size_t)r * N;
        for (int n = 0; n < N; n++) o[n] = b1[n] + (b2 ? b2[n] : 0.0f);
    }
}

/* ---- attention ------------------------------------------------------------------------ */

/* Scratch-free helpers written as plain elementwise loops so that GCC vectorises them
 * (nn_math.h asks for the dynamic cost model); the dot product keeps 8 partial sums. */
static void s2s_tanh_sum_(float *restrict p, const float *restrict a, const float *restrict b,
                          int n) {
    for (int i = 0; i < n; i++) p[i] = nn_tanh_(a[i] + b[i]);
}
static float s2s_dot_(const float *restrict a, const float *restrict b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}
static void s2s_axpy_(float *restrict y, float a, const float *restrict x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void nn_attn_forward(float *ctx, float *a, const float *q, const float *kh, const float *h,
                     const float *v, const int32_t *len, const int32_t *src, int R, int T, int A,
                     int Hv, float *scratch) {
    float *p = scratch; /* (A) tanh(q + kh_j) */
    for (int r = 0; r < R; r++) {
        int b = src ? src[r] : r;
        int L = len[b] < 0 ? 0 : (len[b] > T ? T : len[b]);
        const float *qr = q + (size_t)r * A;
        float *ar = a + (size_t)r * T;
        float *cr = ctx + (size_t)r * Hv;
        float mx = -INFINITY;
        for (int j = 0; j < L; j++) {
            s2s_tanh_sum_(p, qr, kh + ((size_t)b * T + j) * A, A);
            float e = s2s_dot_(v, p, A);
            ar[j] = e;
            mx = e > mx ? e : mx;
        }
        float s = 0.0f;
        for (int j = 0; j < L; j++) {
            ar[j] = nn_exp_(ar[j] - mx);
            s += ar[j];
        }
        float inv = L > 0 ? 1.0f / s : 0.0f;
        for (int j = 0; j < L; j++) ar[j] *= inv;
        for (int j = L; j < T; j++) ar[j] = 0.0f;
        memset(cr, 0, (size_t)Hv * sizeof *cr);
        for (int j = 0; j < L; j++) s2s_axpy_(cr, ar[j], h + ((size_t)b * T + j) * Hv, Hv);
    }
}

void nn_attn_backward(float *dq, float *dkh, float *dh, float *dv, const float *dctx,
                      const float *a, const float *q, const float *kh, const float *h,
                      const float *v, const int32_t *len, const int32_t *src, int R, int T,
                      int A, int Hv, float *scratch) {
    float *da = scratch;            /* (T) */
    float *p = scratch + T;         /* (A) tanh(q + kh_j) */
    float *g = scratch + T + A;     /* (A) gradient w.r.t. q + kh_j */
    for (int r = 0; r < R; r++) {
        int b = src ? src[r] : r;
        int L = len[b] < 0 ? 0 : (len[b] > T ? T : len[b]);
        const float *ar = a + (size_t)r * T;
        const float *gr = dctx + (size_t)r * Hv;
        const float *qr = q + (size_t)r * A;
        /* ctx = sum_j a_j h_j */
        float dot = 0.0f;
        for (int j = 0; j < L; j++) {
            const float *hj = h + ((size_t)b * T + j) * Hv;
            da[j] = s2s_dot_(gr, hj, Hv);
            dot += ar[j] * da[j];
            if (dh) s2s_axpy_(dh + ((size_t)b * T + j) * Hv, ar[j], gr, Hv);
        }
        /* softmax: de_j = a_j (da_j - sum_k a_k da_k); then e_j = v . tanh(q + kh_j) */
        for (int j = 0; j < L; j++) {
            float de = ar[j] * (da[j] - dot);
            if (de == 0.0f) continue;
            s2s_tanh_sum_(p, qr, kh + ((size_t)b * T + j) * A, A);
            if (dv) s2s_axpy_(dv, de, p, A);
            for (int i = 0; i < A; i++) g[i] = de * v[i] * (1.0f - p[i] * p[i]);
            if (dkh) s2s_axpy_(dkh + ((size_t)b * T + j) * A, 1.0f, g, A);
            if (dq) s2s_axpy_(dq + (size_t)r * A, 1.0f, g, A);
        }
    }
}

/* ---- the model -------------------------------------------------------------------------- */

enum { S2S_LSTM = 0, S2S_GRU = 1 };
#define S2S_ROWKEY 65536 /* dropout row keys: (example * 4 + site) * S2S_ROWKEY + position */

typedef struct s2s_dec {
    /* decode scratch for R rows and up to `steps` outputs; grown on demand */
    int R, steps, B;
    char *mem;
    float *Sa, *Sb, *Ca, *Cb, *emb, *q, *att, *ctx, *xin, *gates, *aux, *tmp, *O, *logits;
    int32_t *tok, *hist, *hist2, *parent, *src, *fin, *fin_len, *fin_n, *done, *cand_k, *cand_v;
    double *score, *score2, *fin_best, *cand_s;
    float *attn_store;             /* (B, steps, T) of the last greedy decode */
    int attn_B, attn_steps, attn_T, attn_valid;
} s2s_dec;

typedef struct s2s {
    int cell, G, V, Vt, D, H, L, bidir, attn, Hout, A, In, Hc, GH;
    float p;
    int max_B, max_T, max_U, chunk;
    int first_out; /* index of output/weight: the last parameters registered */
    nn_rnn enc;
    /* views into the registry */
    float *Es, *dEs;                   /* (V,D) */
    float *Wb, *dWb, *bb, *dbb;        /* bridge (H,Hout), (H) */
    float *Ws, *dWs, *bs, *dbs;        /* attention query (A,H), (A) */
    float *Wh, *dWh;                   /* attention keys (A,Hout) */
    float *va, *dva;                   /* (A) */
    float *Et, *dEt;                   /* (Vt,D) */
    float *Wih, *dWih, *Whh, *dWhh;    /* decoder (GH,In), (GH,H) */
    float *bih, *dbih, *bhh, *dbhh;    /* (GH) */
    float *Wo, *dWo, *bo, *dbo;        /* output (Vt,Hc), (Vt) */
    /* training scratch: one allocation, sized in build */
    char *mem;
    int32_t *xl, *yl;                  /* (B) clamped lengths */
    int32_t *yin, *ytgt;               /* (U,B) decoder inputs and targets, time-major */
    int64_t *ridx;                     /* (max(B*T, U*B)) dropout row keys */
    float *xe, *xd, *xmask, *dxd;      /* (B,T,D) */
    float *henc, *dhenc;               /* (B,T,Hout) */
    float *last, *dlast;               /* (B,Hout) */
    float *kh, *dkh;                   /* (B,T,A) */
    float *ye, *yd, *ymask, *dyd;      /* (U,B,D) */
    float *S, *C;                      /* (U+1,B,H) decoder states (slot 0 = s_0), LSTM cells */
    float *gates;                      /* (U,B,GH) activated gates */
    float *aux;                        /* (U,B,H) LSTM tanh(c_t); GRU W_hn s + b_hn */
    float *xin;                        /* (U,B,In) decoder cell inputs */
    float *q, *att, *ctx;              /* (U,B,A), (U,B,T), (U,B,Hout) */
    float *O, *Od, *Omask, *dO;        /* (U,B,Hc) output-layer inputs, after dropout, grads */
    float *logits;                     /* (chunk,Vt) */
    float *ds, *dsn, *dc, *dcn;        /* (B,H) */
    float *dxin;                       /* (B,In) */
    float *dq;                         /* (B,A) */
    float *dctx;                       /* (B,Hout) */
    float *dg, *dg2, *tmp;             /* (B,GH) */
    float *ascr;                       /* (T + 2A) attention scratch */
    s2s_dec dec;
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
    free(w->mem);
    free(w->dec.mem);
    free(w);
    m->impl = NULL;
}

/* Carves (or measures, when a->base is NULL) the training scratch. */
static void s2s_carve_train_(s2s *w, s2s_arena *a) {
    size_t B = w->max_B, T = w->max_T, U = w->max_U;
    size_t BT = B * T, UB = U * B;
    w->xl = S2S_I(a, B);
    w->yl = S2S_I(a, B);
    w->yin = S2S_I(a, UB);
    w->ytgt = S2S_I(a, UB);
    w->ridx = (int64_t *)s2s_carve_(a, (BT > UB ? BT : UB) * sizeof(int64_t));
    w->xe = S2S_F(a, BT * w->D);
    w->xd = S2S_F(a, BT * w->D);
    w->xmask = S2S_F(a, BT * w->D);
    w->dxd = S2S_F(a, BT * w->D);
    w->henc = S2S_F(a, w->attn ? BT * w->Hout : 0);
    w->dhenc = S2S_F(a, w->attn ? BT * w->Hout : 0);
    w->last = S2S_F(a, B * w->Hout);
    w->dlast = S2S_F(a, B * w->Hout);
    size_t BTA = w->attn ? BT * w->A : 0;
    w->kh = S2S_F(a, BTA);
    w->dkh = S2S_F(a, BTA);
    w->ye = S2S_F(a, UB * w->D);
    w->yd = S2S_F(a, UB * w->D);
    w->ymask = S2S_F(a, UB * w->D);
    w->dyd = S2S_F(a, UB * w->D);
    w->S = S2S_F(a, (U + 1) * B * w->H);
    w->C = S2S_F(a, (U + 1) * B * w->H);
    w->gates = S2S_F(a, UB * w->GH);
    w->aux = S2S_F(a, UB * w->H);
    w->xin = S2S_F(a, UB * w->In);
    w->q = S2S_F(a, UB * w->A);
    w->att = S2S_F(a, UB * T);
    w->ctx = S2S_F(a, UB * w->Hout);
    w->O = S2S_F(a, UB * w->Hc);
    w->Od = S2S_F(a, UB * w->Hc);
    w->Omask = S2S_F(a, UB * w->Hc);
    w->dO = S2S_F(a, UB * w->Hc);
    w->logits = S2S_F(a, (size_t)w->chunk * w->Vt);
    w->ds = S2S_F(a, B * w->H);
    w->dsn = S2S_F(a, B * w->H);
    w->dc = S2S_F(a, B * w->H);
    w->dcn = S2S_F(a, B * w->H);
    w->dxin = S2S_F(a, B * w->In);
    w->dq = S2S_F(a, B * w->A);
    w->dctx = S2S_F(a, B * w->Hout);
    w->dg = S2S_F(a, B * w->GH);
    w->dg2 = S2S_F(a, B * w->GH);
    w->tmp = S2S_F(a, B * w->GH);
    w->ascr = S2S_F(a, T + 2 * (size_t)w->A);
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
    w->cell = strcmp(cell, "gru") == 0 ? S2S_GRU : S2S_LSTM;
    w->G = w->cell == S2S_LSTM ? 4 : 3;
    w->V = d->vocab;
    w->Vt = d->vocab_tgt;
    w->D = (int)dim;
    w->H = (int)hidden;
    w->L = (int)layers;
    w->bidir = bidir;
    w->attn = strcmp(attn, "bahdanau") == 0;
    w->p = (float)p;
    w->max_B = d->max_batch;
    w->max_T = d->max_len;
    w->max_U = d->max_len_tgt;
    w->GH = w->G * w->H;

    /* Parameters in forward order: comm reduces them in reverse as backward finishes. */
    int se[2] = {w->V, w->D};
    if ((rc = nn_params_add(&m->params, "src_embedding/weight", 2, se, NN_INIT_NORMAL, 1.0f,
                            &w->Es, &w->dEs)) < 0)
        return rc;
    if ((rc = nn_rnn_init(&w->enc, &m->params, "encoder", nn_cell_parse(cell), w->D, w->H, w->L,
                          w->bidir, NN_MERGE_CONCAT, 0, 0, w->max_B, w->max_T)) < 0)
        return rc;
    w->Hout = w->enc.Hout;
    w->A = w->H;
    w->In = w->D + (w->attn ? w->Hout : 0);
    w->Hc = w->H + (w->attn ? w->Hout : 0);
    int sb[2] = {w->H, w->Hout}, sbb[1] = {w->H};
    float kb = 1.0f / sqrtf((float)w->Hout);
    if ((rc = nn_params_add(&m->params, "bridge/weight", 2, sb, NN_INIT_UNIFORM, kb, &w->Wb,
                            &w->dWb)) < 0 ||
        (rc = nn_params_add(&m->params, "bridge/bias", 1, sbb, NN_INIT_UNIFORM, kb, &w->bb,
                            &w->dbb)) < 0)
        return rc;
    if (w->attn) {
        int sq[2] = {w->A, w->H}, sk[2] = {w->A, w->Hout}, sa[1] = {w->A};
        float kq = 1.0f / sqrtf((float)w->H), kv = 1.0f / sqrtf((float)w->A);
        if ((rc = nn_params_add(&m->params, "attention/w_key", 2, sk, NN_INIT_UNIFORM, kb,
                                &w->Wh, &w->dWh)) < 0 ||
            (rc = nn_params_add(&m->params, "attention/w_query", 2, sq, NN_INIT_UNIFORM, kq,
                                &w->Ws, &w->dWs)) < 0 ||
            (rc = nn_params_add(&m->params, "attention/b_query", 1, sa, NN_INIT_UNIFORM, kq,
                                &w->bs, &w->dbs)) < 0 ||
            (rc = nn_params_add(&m->params, "attention/v", 1, sa, NN_INIT_UNIFORM, kv, &w->va,
                                &w->dva)) < 0)
            return rc;
    }
    int st[2] = {w->Vt, w->D};
    int si[2] = {w->GH, w->In}, sh[2] = {w->GH, w->H}, sg[1] = {w->GH};
    int so[2] = {w->Vt, w->Hc}, sob[1] = {w->Vt};
    float kh = 1.0f / sqrtf((float)w->H), ko = 1.0f / sqrtf((float)w->Hc);
    if ((rc = nn_params_add(&m->params, "tgt_embedding/weight", 2, st, NN_INIT_NORMAL, 1.0f,
                            &w->Et, &w->dEt)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/w_ih", 2, si, NN_INIT_UNIFORM, kh, &w->Wih,
                            &w->dWih)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/w_hh", 2, sh, NN_INIT_UNIFORM, kh, &w->Whh,
                            &w->dWhh)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/b_ih", 1, sg, NN_INIT_UNIFORM, kh, &w->bih,
                            &w->dbih)) < 0 ||
        (rc = nn_params_add(&m->params, "decoder/b_hh", 1, sg, NN_INIT_UNIFORM, kh, &w->bhh,
                            &w->dbhh)) < 0 ||
        (w->first_out = rc = nn_params_add(&m->params, "output/weight", 2, so,
                                           NN_INIT_UNIFORM, ko, &w->Wo, &w->dWo)) < 0 ||
        (rc = nn_params_add(&m->params, "output/bias", 1, sob, NN_INIT_UNIFORM, ko, &w->bo,
                            &w->dbo)) < 0)
        return rc;

    /* Output layer in row chunks: logits of at most ~4M floats at a time. */
    long rows = (long)w->max_U * w->max_B;
    long chunk = (1L << 22) / w->Vt;
    if (chunk < 1) chunk = 1;
    if (chunk > rows) chunk = rows;
    w->chunk = (int)chunk;

    s2s_arena a = {NULL, 0};
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
    memset(w->Et + (size_t)NN_PAD * w->D, 0, (size_t)w->D * sizeof(float));
    return NN_OK;
}

/* ---- the decoder cell ------------------------------------------------------------------ */

/* One cell step for R rows: xin (R,In), sp/cp (R,H) previous state -> gates (R,GH)
 * activated, aux (R,H), s (R,H), c (R,H) (LSTM only). tmp (R,GH) scratch (GRU). */
static void s2s_cell_forward_(const s2s *w, float *gates, float *aux, float *s, float *c,
                              float *tmp, const float *xin, const float *sp, const float *cp,
                              int R) {
    int H = w->H, GH = w->GH;
    if (w->cell == S2S_LSTM) {
        s2s_bias_rows_(gates, w->bih, w->bhh, R, GH);
        s2s_mm_xwt_(gates, xin, w->Wih, R, GH, w->In, 1.0f);
        s2s_mm_xwt_(gates, sp, w->Whh, R, GH, H, 1.0f);
        for (int r = 0; r < R; r++) {
            float *g = gates + (size_t)r * GH;
            const float *cpr = cp + (size_t)r * H;
            float *cr = c + (size_t)r * H, *sr = s + (size_t)r * H, *tr = aux + (size_t)r * H;
            for (int k = 0; k < H; k++) {
                float i = nn_sigmoid_(g[k]), f = nn_sigmoid_(g[H + k]);
                float gg = nn_tanh_(g[2 * H + k]), o = nn_sigmoid_(g[3 * H + k]);
                g[k] = i, g[H + k] = f, g[2 * H + k] = gg, g[3 * H + k] = o;
                float cc = f * cpr[k] + i * gg;
                float tc = nn_tanh_(cc);
                cr[k] = cc;
                tr[k] = tc;
                sr[k] = o * tc;
            }
        }
    } else {
        s2s_bias_rows_(gates, w->bih, NULL, R, GH);
        s2s_mm_xwt_(gates, xin, w->Wih, R, GH, w->In, 1.0f);
        s2s_bias_rows_(tmp, w->bhh, NULL, R, GH);
        s2s_mm_xwt_(tmp, sp, w->Whh, R, GH, H, 1.0f);
        for (int r = 0; r < R; r++) {
            float *g = gates + (size_t)r * GH;
            const float *gh = tmp + (size_t)r * GH;
            const float *spr = sp + (size_t)r * H;
            float *sr = s + (size_t)r * H, *ar = aux + (size_t)r * H;
            for (int k = 0; k < H; k++) {
                float rr = nn_sigmoid_(g[k] + gh[k]);
                float z = nn_sigmoid_(g[H + k] + gh[H + k]);
                float n = nn_tanh_(g[2 * H + k] + rr * gh[2 * H + k]);
                g[k] = rr, g[H + k] = z, g[2 * H + k] = n;
                ar[k] = gh[2 * H + k];
                sr[k] = (1.0f - z) * n + z * spr[k];
            }
        }
    }
}

/* Backward of one step: ds (R,H) gradient w.r.t. s, dc (R,H) w.r.t. c (LSTM; from the
 * future). Writes dsp (R,H) and dcp (R,H, LSTM) for the previous state, ACCUMULATES dxin
 * (R,In) and the cell's parameter gradients. dg, dg2 (R,GH) scratch. */
static void s2s_cell_backward_(s2s *w, float *dxin, float *dsp, float *dcp, float *dg,
                               float *dg2, const float *ds, const float *dc, const float *gates,
                               const float *aux, const float *xin, const float *sp,
                               const float *cp, int R) {
    int H = w->H, GH = w->GH;
    if (w->cell == S2S_LSTM) {
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            const float *tc = aux + (size_t)r * H, *cpr = cp + (size_t)r * H;
            const float *dsr = ds + (size_t)r * H, *dcr = dc + (size_t)r * H;
            float *d = dg + (size_t)r * GH, *dcpr = dcp + (size_t)r * H;
            for (int k = 0; k < H; k++) {
                float i = g[k], f = g[H + k], gg = g[2 * H + k], o = g[3 * H + k];
                float dcc = dcr[k] + dsr[k] * o * (1.0f - tc[k] * tc[k]);
                d[3 * H + k] = dsr[k] * tc[k] * o * (1.0f - o);
                d[k] = dcc * gg * i * (1.0f - i);
                d[2 * H + k] = dcc * i * (1.0f - gg * gg);
                d[H + k] = dcc * cpr[k] * f * (1.0f - f);
                dcpr[k] = dcc * f;
            }
        }
        s2s_mm_dw_(w->dWih, dg, xin, R, GH, w->In);
        s2s_mm_dw_(w->dWhh, dg, sp, R, GH, H);
        s2s_colsum_(w->dbih, dg, R, GH);
        s2s_colsum_(w->dbhh, dg, R, GH);
        s2s_mm_dx_(dxin, dg, w->Wih, R, GH, w->In, 1.0f);
        s2s_mm_dx_(dsp, dg, w->Whh, R, GH, H, 0.0f);
    } else {
        /* dg: gradient of the input projection (r, z, n); dg2: of the recurrent one. */
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            const float *ghn = aux + (size_t)r * H, *spr = sp + (size_t)r * H;
            const float *dsr = ds + (size_t)r * H;
            float *di = dg + (size_t)r * GH, *dh = dg2 + (size_t)r * GH;
            for (int k = 0; k < H; k++) {
                float rr = g[k], z = g[H + k], n = g[2 * H + k];
                float dn = dsr[k] * (1.0f - z) * (1.0f - n * n);
                float dz = dsr[k] * (spr[k] - n) * z * (1.0f - z);
                float dr = dn * ghn[k] * rr * (1.0f - rr);
                di[k] = dr, di[H + k] = dz, di[2 * H + k] = dn;
                dh[k] = dr, dh[H + k] = dz, dh[2 * H + k] = dn * rr;
            }
        }
        s2s_mm_dw_(w->dWih, dg, xin, R, GH, w->In);
        s2s_mm_dw_(w->dWhh, dg2, sp, R, GH, H);
        s2s_colsum_(w->dbih, dg, R, GH);
        s2s_colsum_(w->dbhh, dg2, R, GH);
        s2s_mm_dx_(dxin, dg, w->Wih, R, GH, w->In, 1.0f);
        /* dsp = z * ds (direct path) + dg2 W_hh */
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            const float *dsr = ds + (size_t)r * H;
            float *o = dsp + (size_t)r * H;
            for (int k = 0; k < H; k++) o[k] = g[H + k] * dsr[k];
        }
        s2s_mm_dx_(dsp, dg2, w->Whh, R, GH, H, 1.0f);
    }
}

/* One decoder step for R rows (training and decoding share it). emb (R,D), sp/cp (R,H);
 * src (R) maps rows to encoder rows (NULL: identity). Writes q, att, ctx (attention only),
 * xin, gates, aux, s, c, O (R,Hc). Uses w->kh, w->henc, w->xl of the last encode. */
static void s2s_step_(s2s *w, float *q, float *att, float *ctx, float *xin, float *gates,
                      float *aux, float *s, float *c, float *O, float *tmp, const float *emb,
                      const float *sp, const float *cp, const int32_t *src, int R, int T) {
    int D = w->D, H = w->H, Ho = w->Hout, In = w->In, Hc = w->Hc;
    if (w->attn) {
        s2s_bias_rows_(q, w->bs, NULL, R, w->A);
        s2s_mm_xwt_(q, sp, w->Ws, R, w->A, H, 1.0f);
        nn_attn_forward(ctx, att, q, w->kh, w->henc, w->va, w->xl, src, R, T, w->A, Ho,
                        w->ascr);
    }
    for (int r = 0; r < R; r++) {
        memcpy(xin + (size_t)r * In, emb + (size_t)r * D, (size_t)D * sizeof(float));
        if (w->attn)
            memcpy(xin + (size_t)r * In + D, ctx + (size_t)r * Ho, (size_t)Ho * sizeof(float));
    }
    s2s_cell_forward_(w, gates, aux, s, c, tmp, xin, sp, cp, R);
    for (int r = 0; r < R; r++) {
        memcpy(O + (size_t)r * Hc, s + (size_t)r * H, (size_t)H * sizeof(float));
        if (w->attn)
            memcpy(O + (size_t)r * Hc + H, ctx + (size_t)r * Ho, (size_t)Ho * sizeof(float));
    }
}

/* ---- forward, loss, backward -------------------------------------------------------------- */

/* Validates the batch and fills xl, yl (clamped lengths). need_y: targets required. */
static int s2s_check_(const s2s *w, const nn_batch *b, int need_y) {
    int B = b->B, T = b->T, U = b->U;
    if (B < 0 || B > w->max_B || (B > 0 && (T < 1 || T > w->max_T || !b->x))) {
        nn_set_error("seq2seq: batch of %d examples with source length %d does not fit "
                     "max_batch %d, max_len %d",
                     B, T, w->max_B, w->max_T);
        return NN_ERR_SHAPE;
    }
    if (need_y && B > 0 && (U < 1 || U > w->max_U || !b->y)) {
        nn_set_error("seq2seq: target length %d does not fit max_len_tgt %d", U, w->max_U);
        return NN_ERR_SHAPE;
    }
    for (int i = 0; i < B; i++) {
        int xl = b->x_len ? b->x_len[i] : T;
        if (xl < 0 || xl > T) {
            nn_set_error("seq2seq: source length %d of example %d is outside [0, %d]", xl, i, T);
            return NN_ERR_DATA;
        }
        w->xl[i] = xl;
        for (int t = 0; t < T; t++) {
            int32_t id = b->x[(size_t)i * T + t];
            if (id < 0 || id >= w->V) {
                nn_set_error("seq2seq: source id %d at example %d position %d is outside the "
                             "vocabulary [0, %d)", (int)id, i, t, w->V);
                return NN_ERR_DATA;
            }
        }
        if (!need_y) continue;
        int yl = b->y_len ? b->y_len[i] : U;
        if (yl < 0 || yl > U) {
            nn_set_error("seq2seq: target length %d of example %d is outside [0, %d]", yl, i, U);
            return NN_ERR_DATA;
        }
        w->yl[i] = yl;
        for (int u = 0; u < U; u++) {
            int32_t id = b->y[(size_t)i * U + u];
            if (id < 0 || id >= w->Vt) {
                nn_set_error("seq2seq: target id %d at example %d position %d is outside the "
                             "vocabulary [0, %d)", (int)id, i, u, w->Vt);
                return NN_ERR_DATA;
            }
        }
    }
    return NN_OK;
}

static int64_t s2s_key_(const nn_batch *b, int i, int site, int pos) {
    int64_t ex = b->index ? b->index[i] : i;
    return (ex * 4 + site) * S2S_ROWKEY + pos;
}

/* Source side: embeddings, encoder, s_0, attention keys. train: dropout. */
static void s2s_encode_(nn_model *m, const nn_batch *b, int train) {
    s2s *w = m->impl;
    int B = b->B, T = b->T, D = w->D, H = w->H, Ho = w->Hout;
    size_t BT = (size_t)B * T;
    nn_embedding_forward(w->xe, b->x, w->Es, (int)BT, D);
    const float *xin = w->xe;
    if (train && w->p > 0.0f) {
        for (int i = 0; i < B; i++)
            for (int t = 0; t < T; t++) w->ridx[(size_t)i * T + t] = s2s_key_(b, i, 0, t);
        nn_dropout_forward(w->xd, w->xmask, w->xe, BT * D, D, w->p, m->seed, b->step, w->ridx);
        xin = w->xd;
    }
    nn_rnn_forward(&w->enc, w->attn ? w->henc : NULL, w->last, xin, w->xl, NULL, B, T);
    /* s_0 = tanh(W_b last + b_b), c_0 = 0 */
    s2s_bias_rows_(w->S, w->bb, NULL, B, H);
    s2s_mm_xwt_(w->S, w->last, w->Wb, B, H, Ho, 1.0f);
    nn_tanh_forward(w->S, w->S, (size_t)B * H);
    memset(w->C, 0, (size_t)B * H * sizeof(float));
    if (w->attn) s2s_mm_xwt_(w->kh, w->henc, w->Wh, (int)BT, w->A, Ho, 0.0f);
}

/* Teacher-forced forward over the whole target, the loss (chunks of the output layer)
 * and, when train, the gradient of the output layer into dO. */
static void s2s_forward_loss_(nn_model *m, const nn_batch *b, int train, float grad_scale,
                              nn_stats *st) {
    s2s *w = m->impl;
    int B = b->B, T = b->T, U = b->U, D = w->D, H = w->H, Hc = w->Hc;
    size_t UB = (size_t)U * B;
    s2s_encode_(m, b, train);
    for (int u = 0; u < U; u++)
        for (int i = 0; i < B; i++) {
            int live = u < w->yl[i];
            w->yin[(size_t)u * B + i] =
                live ? (u == 0 ? NN_BOS : b->y[(size_t)i * U + u - 1]) : NN_PAD;
            w->ytgt[(size_t)u * B + i] = live ? b->y[(size_t)i * U + u] : NN_PAD;
        }
    nn_embedding_forward(w->ye, w->yin, w->Et, (int)UB, D);
    const float *emb = w->ye;
    if (train && w->p > 0.0f) {
        for (int u = 0; u < U; u++)
            for (int i = 0; i < B; i++) w->ridx[(size_t)u * B + i] = s2s_key_(b, i, 1, u);
        nn_dropout_forward(w->yd, w->ymask, w->ye, UB * D, D, w->p, m->seed, b->step, w->ridx);
        emb = w->yd;
    }
    for (int u = 0; u < U; u++) {
        size_t o = (size_t)u * B;
        s2s_step_(w, w->q + o * w->A, w->att + o * T, w->ctx + o * w->Hout, w->xin + o * w->In,
                  w->gates + o * w->GH, w->aux + o * H, w->S + (o + B) * H, w->C + (o + B) * H,
                  w->O + o * Hc, w->tmp, emb + o * D, w->S + o * H, w->C + o * H, NULL, B, T);
    }
    const float *O = w->O;
    if (train && w->p > 0.0f) {
        for (int u = 0; u < U; u++)
            for (int i = 0; i < B; i++) w->ridx[(size_t)u * B + i] = s2s_key_(b, i, 2, u);
        nn_dropout_forward(w->Od, w->Omask, w->O, UB * Hc, Hc, w->p, m->seed, b->step, w->ridx);
        O = w->Od;
    }
    for (size_t r0 = 0; r0 < UB; r0 += (size_t)w->chunk) {
        int n = (int)(UB - r0 < (size_t)w->chunk ? UB - r0 : (size_t)w->chunk);
        nn_linear_forward(w->logits, O + r0 * Hc, w->Wo, w->bo, n, Hc, w->Vt);
        double cnt = 0.0, cor = 0.0;
        st->loss += nn_xent_forward_backward(train ? w->logits : NULL, w->logits, w->ytgt + r0,
                                             n, w->Vt, NN_PAD, 0.0f, grad_scale, &cnt, &cor);
        st->count += cnt;
        st->correct += cor;
        if (!train) continue;
        s2s_mm_dx_(w->dO + r0 * Hc, w->logits, w->Wo, n, w->Vt, Hc, 0.0f);
        s2s_mm_dw_(w->dWo, w->logits, O + r0 * Hc, n, w->Vt, Hc);
        s2s_colsum_(w->dbo, w->logits, n, w->Vt);
    }
    /* the output layer is final: the trainer may reduce it during the recurrent backward */
    if (train) nn_grad_ready(m, w->first_out);
}

static void s2s_backward_(nn_model *m, const nn_batch *b) {
    s2s *w = m->impl;
    int B = b->B, T = b->T, U = b->U, D = w->D, H = w->H, Hc = w->Hc, Ho = w->Hout, A = w->A;
    size_t UB = (size_t)U * B, BT = (size_t)B * T;
    if (w->p > 0.0f)
        for (size_t i = 0; i < UB * Hc; i++) w->dO[i] *= w->Omask[i];
    memset(w->ds, 0, (size_t)B * H * sizeof(float));
    memset(w->dc, 0, (size_t)B * H * sizeof(float));
    if (w->attn) {
        memset(w->dkh, 0, BT * A * sizeof(float));
        memset(w->dhenc, 0, BT * Ho * sizeof(float));
    }
    for (int u = U - 1; u >= 0; u--) {
        size_t o = (size_t)u * B;
        const float *dO = w->dO + o * Hc;
        /* ds += dO[:, :H] (ds holds what flows back from step u+1) */
        for (int i = 0; i < B; i++)
            for (int k = 0; k < H; k++) w->ds[(size_t)i * H + k] += dO[(size_t)i * Hc + k];
        memset(w->dxin, 0, (size_t)B * w->In * sizeof(float));
        s2s_cell_backward_(w, w->dxin, w->dsn, w->dcn, w->dg, w->dg2, w->ds, w->dc,
                           w->gates + o * w->GH, w->aux + o * H, w->xin + o * w->In,
                           w->S + o * H, w->C + o * H, B);
        float *dy = w->dyd + o * D;
        for (int i = 0; i < B; i++)
            memcpy(dy + (size_t)i * D, w->dxin + (size_t)i * w->In, (size_t)D * sizeof(float));
        if (w->attn) {
            for (int i = 0; i < B; i++)
                for (int k = 0; k < Ho; k++)
                    w->dctx[(size_t)i * Ho + k] =
                        dO[(size_t)i * Hc + H + k] + w->dxin[(size_t)i * w->In + D + k];
            memset(w->dq, 0, (size_t)B * A * sizeof(float));
            nn_attn_backward(w->dq, w->dkh, w->dhenc, w->dva, w->dctx, w->att + o * T,
                             w->q + o * A, w->kh, w->henc, w->va, w->xl, NULL, B, T, A, Ho,
                             w->ascr);
            s2s_mm_dw_(w->dWs, w->dq, w->S + o * H, B, A, H);
            s2s_colsum_(w->dbs, w->dq, B, A);
            s2s_mm_dx_(w->dsn, w->dq, w->Ws, B, A, H, 1.0f);
        }
        float *t1 = w->ds; w->ds = w->dsn; w->dsn = t1;
        float *t2 = w->dc; w->dc = w->dcn; w->dcn = t2;
    }
    /* s_0 = tanh(z): dz = ds (1 - s_0^2); dlast = dz W_b */
    for (size_t i = 0; i < (size_t)B * H; i++) w->ds[i] *= 1.0f - w->S[i] * w->S[i];
    s2s_mm_dw_(w->dWb, w->ds, w->last, B, H, Ho);
    s2s_colsum_(w->dbb, w->ds, B, H);
    s2s_mm_dx_(w->dlast, w->ds, w->Wb, B, H, Ho, 0.0f);
    if (w->attn) {
        s2s_mm_dw_(w->dWh, w->dkh, w->henc, (int)BT, A, Ho);
        s2s_mm_dx_(w->dhenc, w->dkh, w->Wh, (int)BT, A, Ho, 1.0f);
    }
    memset(w->dxd, 0, BT * D * sizeof(float));
    nn_rnn_backward(&w->enc, w->dxd, w->attn ? w->dhenc : NULL, w->dlast);
    if (w->p > 0.0f) {
        for (size_t i = 0; i < BT * D; i++) w->dxd[i] *= w->xmask[i];
        for (size_t i = 0; i < UB * D; i++) w->dyd[i] *= w->ymask[i];
    }
    nn_embedding_backward(w->dEs, w->dxd, b->x, (int)BT, D);
    nn_embedding_backward(w->dEt, w->dyd, w->yin, (int)UB, D);
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

static void s2s_carve_dec_(s2s *w, s2s_arena *a, int R, int steps, int B, int K) {
    s2s_dec *d = &w->dec;
    size_t r = (size_t)R;
    d->Sa = S2S_F(a, r * w->H);
    d->Sb = S2S_F(a, r * w->H);
    d->Ca = S2S_F(a, r * w->H);
    d->Cb = S2S_F(a, r * w->H);
    d->emb = S2S_F(a, r * w->D);
    d->q = S2S_F(a, r * w->A);
    d->att = S2S_F(a, r * w->max_T);
    d->ctx = S2S_F(a, r * w->Hout);
    d->xin = S2S_F(a, r * w->In);
    d->gates = S2S_F(a, r * w->GH);
    d->aux = S2S_F(a, r * w->H);
    d->tmp = S2S_F(a, r * w->GH);
    d->O = S2S_F(a, r * w->Hc);
    d->logits = S2S_F(a, r * w->Vt);
    d->tok = S2S_I(a, r);
    d->hist = S2S_I(a, r * steps);
    d->hist2 = S2S_I(a, r * steps);
    d->parent = S2S_I(a, r);
    d->src = S2S_I(a, r);
    d->fin = S2S_I(a, (size_t)B * steps);
    d->fin_len = S2S_I(a, B);
    d->done = S2S_I(a, B);
    d->fin_n = S2S_I(a, B);
    d->cand_k = S2S_I(a, 2 * (size_t)K);
    d->cand_v = S2S_I(a, 2 * (size_t)K);
    d->score = (double *)s2s_carve_(a, r * sizeof(double));
    d->score2 = (double *)s2s_carve_(a, r * sizeof(double));
    d->fin_best = (double *)s2s_carve_(a, (size_t)B * sizeof(double));
    d->cand_s = (double *)s2s_carve_(a, 2 * (size_t)K * sizeof(double));
    d->attn_store = S2S_F(a, (size_t)B * steps * w->max_T);
}

/* Makes sure the decode scratch holds B*K rows and `steps` outputs. */
static int s2s_dec_reserve_(s2s *w, int B, int K, int steps) {
    s2s_dec *d = &w->dec;
    int R = B * K;
    if (d->mem && R <= d->R && steps <= d->steps && B <= d->B && 2 * K <= 2 * d->R) {
        /* re-carve with the current capacity so the layout stays consistent */
        s2s_arena a = {d->mem, 0};
        s2s_carve_dec_(w, &a, d->R, d->steps, d->B, d->R);
        return NN_OK;
    }
    int nR = R > d->R ? R : d->R, nS = steps > d->steps ? steps : d->steps;
    int nB = B > d->B ? B : d->B;
    s2s_arena a = {NULL, 0};
    s2s_carve_dec_(w, &a, nR, nS, nB, nR);
    char *mem = aligned_alloc(64, (a.off + 63) & ~(size_t)63);
    if (!mem) {
        nn_set_error("seq2seq: cannot allocate %zu bytes of decode scratch", a.off);
        return NN_ERR_NOMEM;
    }
    free(d->mem);
    d->mem = mem;
    d->R = nR, d->steps = nS, d->B = nB;
    d->attn_valid = 0;
    a.base = mem;
    a.off = 0;
    s2s_carve_dec_(w, &a, nR, nS, nB, nR);
    return NN_OK;
}

/* Row-wise log-softmax in place over V logits, with NN_PAD and NN_BOS excluded (-inf):
 * neither is ever a valid output token. */
static void s2s_log_softmax_(float *x, int R, int V) {
    for (int r = 0; r < R; r++) {
        float *l = x + (size_t)r * V;
        l[NN_PAD] = -INFINITY;
        l[NN_BOS] = -INFINITY;
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        double s = 0.0;
        for (int v = 0; v < V; v++) s += nn_exp_(l[v] - mx); /* nn_exp_(-inf) = 0 */
        float lse = mx + (float)log(s);
        for (int v = 0; v < V; v++) l[v] -= lse;
    }
}

static int s2s_greedy_(s2s *w, const nn_batch *b, int max_out, int32_t *out) {
    s2s_dec *d = &w->dec;
    int B = b->B, T = b->T, H = w->H, Vt = w->Vt;
    memcpy(d->Sa, w->S, (size_t)B * H * sizeof(float));
    memset(d->Ca, 0, (size_t)B * H * sizeof(float));
    memset(d->attn_store, 0, (size_t)B * max_out * T * sizeof(float));
    for (int i = 0; i < B; i++) {
        d->tok[i] = NN_BOS;
        d->done[i] = 0;
        for (int t = 0; t < max_out; t++) out[(size_t)i * max_out + t] = NN_PAD;
    }
    for (int t = 0; t < max_out; t++) {
        nn_embedding_forward(d->emb, d->tok, w->Et, B, w->D);
        s2s_step_(w, d->q, d->att, d->ctx, d->xin, d->gates, d->aux, d->Sb, d->Cb, d->O, d->tmp,
                  d->emb, d->Sa, d->Ca, NULL, B, T);
        nn_linear_forward(d->logits, d->O, w->Wo, w->bo, B, w->Hc, Vt);
        int live = 0;
        for (int i = 0; i < B; i++) {
            if (d->done[i]) {
                d->tok[i] = NN_PAD;
                continue;
            }
            const float *l = d->logits + (size_t)i * Vt;
            int best = -1;
            for (int v = 0; v < Vt; v++) {
                if (v == NN_PAD || v == NN_BOS) continue;
                if (best < 0 || l[v] > l[best]) best = v;
            }
            out[(size_t)i * max_out + t] = best;
            d->tok[i] = best;
            if (w->attn)
                memcpy(d->attn_store + ((size_t)i * max_out + t) * T, d->att + (size_t)i * T,
                       (size_t)T * sizeof(float));
            if (best == NN_EOS) d->done[i] = 1;
            else live++;
        }
        float *t1 = d->Sa; d->Sa = d->Sb; d->Sb = t1;
        float *t2 = d->Ca; d->Ca = d->Cb; d->Cb = t2;
        if (!live) break;
    }
    d->attn_B = B;
    d->attn_steps = max_out;
    d->attn_T = T;
    d->attn_valid = w->attn;
    return NN_OK;
}

static double s2s_lp_(int len, float alpha) {
    return alpha == 0.0f ? 1.0 : pow((5.0 + len) / 6.0, (double)alpha);
}

/* Beam search, K hypotheses per sentence. At each step the 2K best extensions of the live
 * hypotheses are ranked by summed log-probability; an NN_EOS among the first K finishes a
 * hypothesis (scored by log p / ((5 + len) / 6)^alpha, len counting the NN_EOS), the others
 * fill the K live slots. A sentence stops when K hypotheses finished, or when no live
 * hypothesis can still beat the best finished one (its log-probability only falls; for
 * alpha >= 0 its best possible normalised score is logp / lp(max_out)), or at max_out, where
 * the live hypotheses compete unfinished. */
static int s2s_beam_(s2s *w, const nn_batch *b, int K, float alpha, int max_out, int32_t *out) {
    s2s_dec *d = &w->dec;
    int B = b->B, T = b->T, H = w->H, Vt = w->Vt, R = B * K;
    for (int r = 0; r < R; r++) {
        int i = r / K;
        d->src[r] = i;
        memcpy(d->Sa + (size_t)r * H, w->S + (size_t)i * H, (size_t)H * sizeof(float));
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
        nn_embedding_forward(d->emb, d->tok, w->Et, R, w->D);
        s2s_step_(w, d->q, d->att, d->ctx, d->xin, d->gates, d->aux, d->Sb, d->Cb, d->O, d->tmp,
                  d->emb, d->Sa, d->Ca, d->src, R, T);
        nn_linear_forward(d->logits, d->O, w->Wo, w->bo, R, w->Hc, Vt);
        s2s_log_softmax_(d->logits, R, Vt);
        int live_sentences = 0;
        for (int i = 0; i < B; i++) {
            int base = i * K;
            for (int k = 0; k < K; k++) d->parent[base + k] = base + k;
            if (d->done[i]) {
                for (int k = 0; k < K; k++) d->score2[base + k] = -INFINITY;
                continue;
            }
            /* the 2K best (score, k, v), sorted descending, by insertion */
            int nc = 0;
            for (int k = 0; k < K; k++) {
                double sk = d->score[base + k];
                if (sk == -INFINITY) continue;
                const float *l = d->logits + (size_t)(base + k) * Vt;
                for (int v = 0; v < Vt; v++) {
                    if (l[v] == -INFINITY) continue;
                    double s = sk + l[v];
                    if (nc == 2 * K && s <= d->cand_s[nc - 1]) continue;
                    int pos = nc < 2 * K ? nc++ : nc - 1;
                    while (pos > 0 && d->cand_s[pos - 1] < s) {
                        d->cand_s[pos] = d->cand_s[pos - 1];
                        d->cand_k[pos] = d->cand_k[pos - 1];
                        d->cand_v[pos] = d->cand_v[pos - 1];
                        pos--;
                    }
                    d->cand_s[pos] = s;
                    d->cand_k[pos] = k;
                    d->cand_v[pos] = v;
                }
            }
            int nl = 0, nfin = 0;
            for (int c = 0; c < nc; c++) {
                int k = d->cand_k[c], v = d->cand_v[c], pr = base + k;
                if (v == NN_EOS) {
                    if (c >= K) continue;
                    nfin++;
                    double norm = d->cand_s[c] / s2s_lp_(t + 1, alpha);
                    if (norm > d->fin_best[i]) {
                        d->fin_best[i] = norm;
                        d->fin_len[i] = t + 1;
                        int32_t *f = d->fin + (size_t)i * max_out;
                        memcpy(f, d->hist + (size_t)pr * max_out, (size_t)t * sizeof(int32_t));
                        f[t] = NN_EOS;
                    }
                    continue;
                }
                if (nl == K) continue;
                int nr = base + nl++;
                d->parent[nr] = pr;
                d->score2[nr] = d->cand_s[c];
                memcpy(d->hist2 + (size_t)nr * max_out, d->hist + (size_t)pr * max_out,
                       (size_t)t * sizeof(int32_t));
                d->hist2[(size_t)nr * max_out + t] = v;
            }
            for (int k = nl; k < K; k++) d->score2[base + k] = -INFINITY;
            d->fin_n[i] += nfin;
            double bound = -INFINITY;
            for (int k = 0; k < nl; k++) {
                double s = d->score2[base + k] / (alpha >= 0.0f ? s2s_lp_(max_out, alpha) : 1.0);
                bound = s > bound ? s : bound;
            }
            if (nl == 0 || d->fin_n[i] >= K || (alpha >= 0.0f && d->fin_best[i] >= bound))
                d->done[i] = 1;
            else
                live_sentences++;
        }
        /* reorder states and histories by parent; next input tokens */
        for (int r = 0; r < R; r++) {
            int pr = d->parent[r];
            memcpy(d->Sa + (size_t)r * H, d->Sb + (size_t)pr * H, (size_t)H * sizeof(float));
            memcpy(d->Ca + (size_t)r * H, d->Cb + (size_t)pr * H, (size_t)H * sizeof(float));
            d->score[r] = d->score2[r];
            int i = r / K;
            d->tok[r] = d->done[i] || d->score[r] == -INFINITY
                            ? NN_PAD
                            : d->hist2[(size_t)r * max_out + t];
        }
        int32_t *th = d->hist; d->hist = d->hist2; d->hist2 = th;
        if (!live_sentences) {
            t++;
            break;
        }
    }
    /* Sentences still open at max_out: the live hypotheses compete unfinished. */
    for (int i = 0; i < B; i++) {
        if (!d->done[i]) {
            for (int k = 0; k < K; k++) {
                int r = i * K + k;
                if (d->score[r] == -INFINITY) continue;
                double norm = d->score[r] / s2s_lp_(t, alpha);
                if (norm > d->fin_best[i]) {
                    d->fin_best[i] = norm;
                    d->fin_len[i] = t;
                    memcpy(d->fin + (size_t)i * max_out, d->hist + (size_t)r * max_out,
                           (size_t)t * sizeof(int32_t));
                }
            }
        }
        int32_t *o = out + (size_t)i * max_out;
        int n = d->fin_len[i] < 0 ? 0 : d->fin_len[i];
        memcpy(o, d->fin + (size_t)i * max_out, (size_t)n * sizeof(int32_t));
        for (int j = n; j < max_out; j++) o[j] = NN_PAD;
    }
    return NN_OK;
}

/* force_beam: run the beam search even for beam == 1. */
static int s2s_decode_any_(nn_model *m, const nn_batch *b, int beam, float len_alpha,
                           int max_out, int32_t *out, int force_beam) {
    s2s *w = m->impl;
    if (beam < 1 || max_out < 1 || !out) {
        nn_set_error("seq2seq: decode needs beam >= 1 and max_out >= 1 (got %d, %d)", beam,
                     max_out);
        return NN_ERR_CONFIG;
    }
    int rc = s2s_check_(w, b, 0);
    if (rc < 0 || b->B == 0) return rc;
    if ((rc = s2s_dec_reserve_(w, b->B, beam, max_out)) < 0) return rc;
    s2s_encode_(m, b, 0);
    w->dec.attn_valid = 0;
    if (beam == 1 && !force_beam) return s2s_greedy_(w, b, max_out, out);
    return s2s_beam_(w, b, beam, len_alpha, max_out, out);
}

static int s2s_decode_(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out) {
    return s2s_decode_any_(m, b, beam, len_alpha, max_out, out, 0);
}

int nn_s2s_beam_search(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                       int32_t *out) {
    NN_ASSERT(m && m->ops == &nn_seq2seq_ops);
    return s2s_decode_any_(m, b, beam, len_alpha, max_out, out, 1);
}

const float *nn_s2s_attention(const nn_model *m, int *B, int *steps, int *T) {
    const s2s *w = m && m->ops == &nn_seq2seq_ops ? m->impl : NULL;
    if (!w || !w->dec.attn_valid) {
        if (B) *B = 0;
        if (steps) *steps = 0;
        if (T) *T = 0;
        return NULL;
    }
    if (B) *B = w->dec.attn_B;
    if (steps) *steps = w->dec.attn_steps;
    if (T) *T = w->dec.attn_T;
    return w->dec.attn_store;
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
