/* attdec.c - the attention decoder of seq2seq and the captioner (nn_attdec.h): additive
 * (Bahdanau) attention (nn_attn_forward/backward, declared in nn_s2s.h), the LSTM/GRU
 * decoder cell over [emb; ctx], the per-step attention + cell, the teacher-forced forward,
 * the output layer's loss, the backward through time, and greedy and beam-search decoding.
 *
 * The decoder cell is written here rather than taken from nn_rnn because its input at step
 * t depends on s_{t-1} through the attention, which nn_rnn's whole-sequence forward cannot
 * express; nn_rnn_step has no training caches.
 *
 * Does not: encode (each model runs its own encoder and calls nn_attdec_begin), apply
 * dropout, normalise the loss, or allocate outside nn_attdec_decode's first use (and growth)
 * of the decode scratch. */
#include "models/nn.h"
#include "models/nn_attdec.h"
#include "models/nn_math.h"

#include <math.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------------------ */

void *nn_attdec_carve(nn_attdec_arena *a, size_t bytes) {
    size_t o = (a->off + 63) & ~(size_t)63;
    a->off = o + bytes;
    return a->base ? a->base + o : NULL;
}

/* y (R,N) = x (R,K) W^T with W (N,K); beta 0 or 1. */
static void ad_mm_xwt_(float *y, const float *x, const float *W, int R, int N, int K, float beta) {
    nn_gemm(0, 1, R, N, K, 1.0f, x, K, W, K, beta, y, N);
}
/* dW (N,K) += dy^T (R,N) x (R,K) */
static void ad_mm_dw_(float *dW, const float *dy, const float *x, int R, int N, int K) {
    nn_gemm(1, 0, N, K, R, 1.0f, dy, N, x, K, 1.0f, dW, K);
}
/* dx (R,K) = beta dx + dy (R,N) W (N,K) */
static void ad_mm_dx_(float *dx, const float *dy, const float *W, int R, int N, int K, float beta) {
    nn_gemm(0, 0, R, K, N, 1.0f, dy, N, W, K, beta, dx, K);
}
/* db (N) += column sums of dy (R,N) */
static void ad_colsum_(float *db, const float *dy, int R, int N) {
    for (int r = 0; r < R; r++) {
        const float *g = dy + (size_t)r * N;
        for (int n = 0; n < N; n++) db[n] += g[n];
    }
}
/* every row of y (R,N) := b1 + b2 (b2 may be NULL) */
static void ad_bias_rows_(float *y, const float *b1, const float *b2, int R, int N) {
    for (int r = 0; r < R; r++) {
        float *o = y + (size_t)r * N;
        for (int n = 0; n < N; n++) o[n] = b1[n] + (b2 ? b2[n] : 0.0f);
    }
}

/* ---- additive attention ------------------------------------------------------------- */

/* Scratch-free helpers written as plain elementwise loops so that GCC vectorises them
 * (nn_math.h asks for the dynamic cost model); the dot product keeps 8 partial sums. */
static void ad_tanh_sum_(float *restrict p, const float *restrict a, const float *restrict b,
                         int n) {
    for (int i = 0; i < n; i++) p[i] = nn_tanh_(a[i] + b[i]);
}
static float ad_dot_(const float *restrict a, const float *restrict b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}
static void ad_axpy_(float *restrict y, float a, const float *restrict x, int n) {
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
            ad_tanh_sum_(p, qr, kh + ((size_t)b * T + j) * A, A);
            float e = ad_dot_(v, p, A);
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
        for (int j = 0; j < L; j++) ad_axpy_(cr, ar[j], h + ((size_t)b * T + j) * Hv, Hv);
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
            da[j] = ad_dot_(gr, hj, Hv);
            dot += ar[j] * da[j];
            if (dh) ad_axpy_(dh + ((size_t)b * T + j) * Hv, ar[j], gr, Hv);
        }
        /* softmax: de_j = a_j (da_j - sum_k a_k da_k); then e_j = v . tanh(q + kh_j) */
        for (int j = 0; j < L; j++) {
            float de = ar[j] * (da[j] - dot);
            if (de == 0.0f) continue;
            ad_tanh_sum_(p, qr, kh + ((size_t)b * T + j) * A, A);
            if (dv) ad_axpy_(dv, de, p, A);
            for (int i = 0; i < A; i++) g[i] = de * v[i] * (1.0f - p[i] * p[i]);
            if (dkh) ad_axpy_(dkh + ((size_t)b * T + j) * A, 1.0f, g, A);
            if (dq) ad_axpy_(dq + (size_t)r * A, 1.0f, g, A);
        }
    }
}

/* ---- set-up --------------------------------------------------------------------------- */

void nn_attdec_init(nn_attdec *d, const nn_attdec_config *c) {
    NN_ASSERT(c->cell == NN_CELL_LSTM || c->cell == NN_CELL_GRU);
    NN_ASSERT(c->kind >= NN_ATTDEC_NONE && c->kind <= NN_ATTDEC_BAHDANAU);
    d->name = c->name;
    d->cell = c->cell;
    d->kind = c->kind;
    d->positions = c->kind == NN_ATTDEC_BAHDANAU && c->positions;
    d->V = c->V, d->D = c->D, d->H = c->H, d->A = c->H, d->Dv = c->Dv;
    d->G = c->cell == NN_CELL_LSTM ? 4 : 3;
    d->GH = d->G * d->H;
    int cw = c->kind == NN_ATTDEC_NONE ? 0 : c->Dv;
    d->In = d->D + cw;
    d->Hc = d->H + cw;
    d->max_B = c->max_B, d->max_T = c->max_T, d->max_U = c->max_U;
    long rows = (long)c->max_U * c->max_B;
    d->chunk = c->chunk > 0 && c->chunk < rows ? c->chunk : (int)rows;
}

int nn_attdec_add_params(nn_attdec *d, nn_params *ps, const char *init_name,
                         const char *emb_name) {
    char wn[NN_NAME_MAX], bn[NN_NAME_MAX];
    snprintf(wn, sizeof wn, "%s/weight", init_name);
    snprintf(bn, sizeof bn, "%s/bias", init_name);
    int att = d->kind == NN_ATTDEC_BAHDANAU;
    float kv = 1.0f / sqrtf((float)d->Dv), kh = 1.0f / sqrtf((float)d->H);
    float ka = 1.0f / sqrtf((float)d->A), ko = 1.0f / sqrtf((float)d->Hc);
    /* in registration order (the random initialisation follows it); PyTorch-style bounds:
     * uniform +-1/sqrt(fan_in), the embedding N(0,1). cols 0: a vector of rows entries. */
    const struct {
        int on;
        const char *name;
        int rows, cols, init;
        float scale;
        float **data, **grad;
    } t[] = {
        {1, wn, d->H, d->Dv, NN_INIT_UNIFORM, kv, &d->Wi, &d->dWi},
        {1, bn, d->H, 0, NN_INIT_UNIFORM, kv, &d->bi, &d->dbi},
        {att, "attention/w_key", d->A, d->Dv, NN_INIT_UNIFORM, kv, &d->Wk, &d->dWk},
        {att, "attention/w_query", d->A, d->H, NN_INIT_UNIFORM, kh, &d->Ws, &d->dWs},
        {att, "attention/b_query", d->A, 0, NN_INIT_UNIFORM, kh, &d->bs, &d->dbs},
        {att, "attention/v", d->A, 0, NN_INIT_UNIFORM, ka, &d->va, &d->dva},
        {d->positions, "attention/position", d->max_T, d->A, NN_INIT_UNIFORM, kv, &d->pos,
         &d->dpos},
        {1, emb_name, d->V, d->D, NN_INIT_NORMAL, 1.0f, &d->E, &d->dE},
        {1, "decoder/w_ih", d->GH, d->In, NN_INIT_UNIFORM, kh, &d->Wih, &d->dWih},
        {1, "decoder/w_hh", d->GH, d->H, NN_INIT_UNIFORM, kh, &d->Whh, &d->dWhh},
        {1, "decoder/b_ih", d->GH, 0, NN_INIT_UNIFORM, kh, &d->bih, &d->dbih},
        {1, "decoder/b_hh", d->GH, 0, NN_INIT_UNIFORM, kh, &d->bhh, &d->dbhh},
        {1, "output/weight", d->V, d->Hc, NN_INIT_UNIFORM, ko, &d->Wo, &d->dWo},
        {1, "output/bias", d->V, 0, NN_INIT_UNIFORM, ko, &d->bo, &d->dbo},
    };
    int first_out = -1;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (!t[i].on) continue;
        int shape[2] = {t[i].rows, t[i].cols};
        int rc = nn_params_add(ps, t[i].name, t[i].cols ? 2 : 1, shape, t[i].init, t[i].scale,
                               t[i].data, t[i].grad);
        if (rc < 0) return rc;
        if (t[i].data == &d->Wo) first_out = rc;
    }
    return first_out;
}

void nn_attdec_carve_train(nn_attdec *d, nn_attdec_arena *a) {
    size_t B = d->max_B, T = d->max_T, U = d->max_U, UB = U * B;
    size_t BTA = d->kind == NN_ATTDEC_BAHDANAU ? B * T * d->A : 0;
    d->yl = NN_ATTDEC_I(a, B);
    d->yin = NN_ATTDEC_I(a, UB);
    d->ytgt = NN_ATTDEC_I(a, UB);
    d->ye = NN_ATTDEC_F(a, UB * d->D);
    d->dye = NN_ATTDEC_F(a, UB * d->D);
    d->S = NN_ATTDEC_F(a, (U + 1) * B * d->H);
    d->C = NN_ATTDEC_F(a, (U + 1) * B * d->H);
    d->gates = NN_ATTDEC_F(a, UB * d->GH);
    d->aux = NN_ATTDEC_F(a, UB * d->H);
    d->xin = NN_ATTDEC_F(a, UB * d->In);
    d->q = NN_ATTDEC_F(a, UB * d->A);
    d->att = NN_ATTDEC_F(a, UB * T);
    d->ctx = NN_ATTDEC_F(a, UB * d->Dv);
    d->O = NN_ATTDEC_F(a, UB * d->Hc);
    d->dO = NN_ATTDEC_F(a, UB * d->Hc);
    d->logits = NN_ATTDEC_F(a, (size_t)d->chunk * d->V);
    d->kh = NN_ATTDEC_F(a, BTA);
    d->dkh = NN_ATTDEC_F(a, BTA);
    d->ds = NN_ATTDEC_F(a, B * d->H);
    d->dsn = NN_ATTDEC_F(a, B * d->H);
    d->dc = NN_ATTDEC_F(a, B * d->H);
    d->dcn = NN_ATTDEC_F(a, B * d->H);
    d->dxin = NN_ATTDEC_F(a, B * d->In);
    d->dq = NN_ATTDEC_F(a, B * d->A);
    d->dctx = NN_ATTDEC_F(a, B * d->Dv);
    d->dg = NN_ATTDEC_F(a, B * d->GH);
    d->dg2 = NN_ATTDEC_F(a, B * d->GH);
    d->tmp = NN_ATTDEC_F(a, B * d->GH);
    d->ascr = NN_ATTDEC_F(a, T + 2 * (size_t)d->A);
}

void nn_attdec_free(nn_attdec *d) {
    free(d->dec.mem);
    memset(&d->dec, 0, sizeof d->dec);
}

/* ---- targets -------------------------------------------------------------------------- */

int nn_attdec_check_ids(const char *model, const char *len_noun, const char *id_noun,
                        int32_t *len_out, const int32_t *ids, const int32_t *len, int B, int T,
                        int V) {
    for (int i = 0; i < B; i++) {
        int n = len ? len[i] : T;
        if (n < 0 || n > T) {
            nn_set_error("%s: %s length %d of example %d is outside [0, %d]", model, len_noun, n,
                         i, T);
            return NN_ERR_DATA;
        }
        len_out[i] = n;
        for (int t = 0; t < T; t++) {
            int32_t id = ids[(size_t)i * T + t];
            if (id < 0 || id >= V) {
                nn_set_error("%s: %s id %d at example %d position %d is outside the "
                             "vocabulary [0, %d)", model, id_noun, (int)id, i, t, V);
                return NN_ERR_DATA;
            }
        }
    }
    return NN_OK;
}

int nn_attdec_check_targets(nn_attdec *d, const nn_batch *b, const char *noun) {
    if (b->B == 0) return NN_OK;
    if (b->U < 1 || b->U > d->max_U || !b->y) {
        nn_set_error("%s: %s length %d does not fit max_len_tgt %d", d->name, noun, b->U,
                     d->max_U);
        return NN_ERR_SHAPE;
    }
    return nn_attdec_check_ids(d->name, noun, "target", d->yl, b->y, b->y_len, b->B, b->U,
                               d->V);
}

void nn_attdec_embed_targets(nn_attdec *d, const nn_batch *b) {
    int B = b->B, U = b->U;
    for (int u = 0; u < U; u++)
        for (int i = 0; i < B; i++) {
            int live = u < d->yl[i];
            d->yin[(size_t)u * B + i] =
                live ? (u == 0 ? NN_BOS : b->y[(size_t)i * U + u - 1]) : NN_PAD;
            d->ytgt[(size_t)u * B + i] = live ? b->y[(size_t)i * U + u] : NN_PAD;
        }
    nn_embedding_forward(d->ye, d->yin, d->E, U * B, d->D);
}

/* ---- the decoder cell ------------------------------------------------------------------ */

/* One cell step for R rows: xin (R,In), sp/cp (R,H) previous state -> gates (R,GH)
 * activated, aux (R,H) (LSTM tanh(c_t), GRU W_hn s + b_hn), s (R,H), c (R,H) (LSTM only).
 * tmp (R,GH) scratch (GRU). */
static void ad_cell_forward_(const nn_attdec *d, float *gates, float *aux, float *s, float *c,
                             float *tmp, const float *xin, const float *sp, const float *cp,
                             int R) {
    int H = d->H, GH = d->GH;
    if (d->cell == NN_CELL_LSTM) {
        ad_bias_rows_(gates, d->bih, d->bhh, R, GH);
        ad_mm_xwt_(gates, xin, d->Wih, R, GH, d->In, 1.0f);
        ad_mm_xwt_(gates, sp, d->Whh, R, GH, H, 1.0f);
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
        ad_bias_rows_(gates, d->bih, NULL, R, GH);
        ad_mm_xwt_(gates, xin, d->Wih, R, GH, d->In, 1.0f);
        ad_bias_rows_(tmp, d->bhh, NULL, R, GH);
        ad_mm_xwt_(tmp, sp, d->Whh, R, GH, H, 1.0f);
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
static void ad_cell_backward_(nn_attdec *d, float *dxin, float *dsp, float *dcp, float *dg,
                              float *dg2, const float *ds, const float *dc, const float *gates,
                              const float *aux, const float *xin, const float *sp,
                              const float *cp, int R) {
    int H = d->H, GH = d->GH;
    if (d->cell == NN_CELL_LSTM) {
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            const float *tc = aux + (size_t)r * H, *cpr = cp + (size_t)r * H;
            const float *dsr = ds + (size_t)r * H, *dcr = dc + (size_t)r * H;
            float *dd = dg + (size_t)r * GH, *dcpr = dcp + (size_t)r * H;
            for (int k = 0; k < H; k++) {
                float i = g[k], f = g[H + k], gg = g[2 * H + k], o = g[3 * H + k];
                float dcc = dcr[k] + dsr[k] * o * (1.0f - tc[k] * tc[k]);
                dd[3 * H + k] = dsr[k] * tc[k] * o * (1.0f - o);
                dd[k] = dcc * gg * i * (1.0f - i);
                dd[2 * H + k] = dcc * i * (1.0f - gg * gg);
                dd[H + k] = dcc * cpr[k] * f * (1.0f - f);
                dcpr[k] = dcc * f;
            }
        }
        ad_mm_dw_(d->dWih, dg, xin, R, GH, d->In);
        ad_mm_dw_(d->dWhh, dg, sp, R, GH, H);
        ad_colsum_(d->dbih, dg, R, GH);
        ad_colsum_(d->dbhh, dg, R, GH);
        ad_mm_dx_(dxin, dg, d->Wih, R, GH, d->In, 1.0f);
        ad_mm_dx_(dsp, dg, d->Whh, R, GH, H, 0.0f);
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
        ad_mm_dw_(d->dWih, dg, xin, R, GH, d->In);
        ad_mm_dw_(d->dWhh, dg2, sp, R, GH, H);
        ad_colsum_(d->dbih, dg, R, GH);
        ad_colsum_(d->dbhh, dg2, R, GH);
        ad_mm_dx_(dxin, dg, d->Wih, R, GH, d->In, 1.0f);
        /* dsp = z * ds (direct path) + dg2 W_hh */
        for (int r = 0; r < R; r++) {
            const float *g = gates + (size_t)r * GH;
            const float *dsr = ds + (size_t)r * H;
            float *o = dsp + (size_t)r * H;
            for (int k = 0; k < H; k++) o[k] = g[H + k] * dsr[k];
        }
        ad_mm_dx_(dsp, dg2, d->Whh, R, GH, H, 1.0f);
    }
}

/* One decoder step for R rows (training and decoding share it). emb (R,D), sp/cp (R,H);
 * src (R) maps rows to examples of the last nn_attdec_begin (NULL: identity). Writes q,
 * att (BAHDANAU), ctx (unless NONE), xin (R,In), gates, aux, s, c, O (R,Hc). */
static void ad_step_(nn_attdec *d, float *q, float *att, float *ctx, float *xin, float *gates,
                     float *aux, float *s, float *c, float *O, float *tmp, const float *emb,
                     const float *sp, const float *cp, const int32_t *src, int R) {
    int D = d->D, H = d->H, Dv = d->Dv, In = d->In, Hc = d->Hc;
    int has_ctx = d->kind != NN_ATTDEC_NONE;
    if (d->kind == NN_ATTDEC_BAHDANAU) {
        ad_bias_rows_(q, d->bs, NULL, R, d->A);
        ad_mm_xwt_(q, sp, d->Ws, R, d->A, H, 1.0f);
        nn_attn_forward(ctx, att, q, d->kh, d->mem, d->va, d->len, src, R, d->T, d->A, Dv,
                        d->ascr);
    } else if (d->kind == NN_ATTDEC_FIXED) {
        for (int r = 0; r < R; r++)
            memcpy(ctx + (size_t)r * Dv, d->init_in + (size_t)(src ? src[r] : r) * Dv,
                   (size_t)Dv * sizeof(float));
    }
    for (int r = 0; r < R; r++) {
        memcpy(xin + (size_t)r * In, emb + (size_t)r * D, (size_t)D * sizeof(float));
        if (has_ctx)
            memcpy(xin + (size_t)r * In + D, ctx + (size_t)r * Dv, (size_t)Dv * sizeof(float));
    }
    ad_cell_forward_(d, gates, aux, s, c, tmp, xin, sp, cp, R);
    for (int r = 0; r < R; r++) {
        memcpy(O + (size_t)r * Hc, s + (size_t)r * H, (size_t)H * sizeof(float));
        if (has_ctx)
            memcpy(O + (size_t)r * Hc + H, ctx + (size_t)r * Dv, (size_t)Dv * sizeof(float));
    }
}

/* ---- training ------------------------------------------------------------------------- */

void nn_attdec_begin(nn_attdec *d, const float *init_in, const float *mem,
                     const int32_t *len, int B, int T) {
    NN_ASSERT(B <= d->max_B && T <= d->max_T);
    int H = d->H, A = d->A;
    d->init_in = init_in;
    d->mem = mem;
    d->len = len;
    d->T = T;
    /* s_0 = tanh(W_init init_in + b_init), c_0 = 0 */
    ad_bias_rows_(d->S, d->bi, NULL, B, H);
    ad_mm_xwt_(d->S, init_in, d->Wi, B, H, d->Dv, 1.0f);
    nn_tanh_forward(d->S, d->S, (size_t)B * H);
    memset(d->C, 0, (size_t)B * H * sizeof(float));
    if (d->kind != NN_ATTDEC_BAHDANAU) return;
    /* keys: W_k h_j for all j in one GEMM, plus the position's vector */
    ad_mm_xwt_(d->kh, mem, d->Wk, B * T, A, d->Dv, 0.0f);
    if (d->positions)
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < (size_t)T * A; i++) d->kh[(size_t)b * T * A + i] += d->pos[i];
}

void nn_attdec_forward(nn_attdec *d, const float *emb, int B, int U) {
    int H = d->H;
    for (int u = 0; u < U; u++) {
        size_t o = (size_t)u * B;
        ad_step_(d, d->q + o * d->A, d->att + o * d->T, d->ctx + o * d->Dv, d->xin + o * d->In,
                 d->gates + o * d->GH, d->aux + o * H, d->S + (o + B) * H, d->C + (o + B) * H,
                 d->O + o * d->Hc, d->tmp, emb + o * d->D, d->S + o * H, d->C + o * H, NULL, B);
    }
}

void nn_attdec_output_loss(nn_attdec *d, nn_stats *st, const float *O, int R, int train,
                           float grad_scale) {
    int Hc = d->Hc, V = d->V;
    for (size_t r0 = 0; r0 < (size_t)R; r0 += (size_t)d->chunk) {
        int n = (int)((size_t)R - r0 < (size_t)d->chunk ? (size_t)R - r0 : (size_t)d->chunk);
        nn_linear_forward(d->logits, O + r0 * Hc, d->Wo, d->bo, n, Hc, V);
        double cnt = 0.0, cor = 0.0;
        st->loss += nn_xent_forward_backward(train ? d->logits : NULL, d->logits, d->ytgt + r0,
                                             n, V, NN_PAD, 0.0f, grad_scale, &cnt, &cor);
        st->count += cnt;
        st->correct += cor;
        if (!train) continue;
        ad_mm_dx_(d->dO + r0 * Hc, d->logits, d->Wo, n, V, Hc, 0.0f);
        ad_mm_dw_(d->dWo, d->logits, O + r0 * Hc, n, V, Hc);
        ad_colsum_(d->dbo, d->logits, n, V);
    }
}

void nn_attdec_backward(nn_attdec *d, float *dinit, float *dmem, int B, int U) {
    int T = d->T, D = d->D, H = d->H, Hc = d->Hc, Dv = d->Dv, A = d->A, In = d->In;
    int attn = d->kind == NN_ATTDEC_BAHDANAU;
    memset(d->ds, 0, (size_t)B * H * sizeof(float));
    memset(d->dc, 0, (size_t)B * H * sizeof(float));
    if (attn) memset(d->dkh, 0, (size_t)B * T * A * sizeof(float));
    for (int u = U - 1; u >= 0; u--) {
        size_t o = (size_t)u * B;
        const float *dO = d->dO + o * Hc;
        /* ds += dO[:, :H] (ds holds what flows back from step u+1) */
        for (int i = 0; i < B; i++)
            for (int k = 0; k < H; k++) d->ds[(size_t)i * H + k] += dO[(size_t)i * Hc + k];
        memset(d->dxin, 0, (size_t)B * In * sizeof(float));
        ad_cell_backward_(d, d->dxin, d->dsn, d->dcn, d->dg, d->dg2, d->ds, d->dc,
                          d->gates + o * d->GH, d->aux + o * H, d->xin + o * In, d->S + o * H,
                          d->C + o * H, B);
        float *dy = d->dye + o * D;
        for (int i = 0; i < B; i++)
            memcpy(dy + (size_t)i * D, d->dxin + (size_t)i * In, (size_t)D * sizeof(float));
        if (d->kind != NN_ATTDEC_NONE) {
            /* ctx reaches both the output layer and the cell input */
            for (int i = 0; i < B; i++)
                for (int k = 0; k < Dv; k++)
                    d->dctx[(size_t)i * Dv + k] =
                        dO[(size_t)i * Hc + H + k] + d->dxin[(size_t)i * In + D + k];
        }
        if (attn) {
            memset(d->dq, 0, (size_t)B * A * sizeof(float));
            nn_attn_backward(d->dq, d->dkh, dmem, d->dva, d->dctx, d->att + o * T, d->q + o * A,
                             d->kh, d->mem, d->va, d->len, NULL, B, T, A, Dv, d->ascr);
            ad_mm_dw_(d->dWs, d->dq, d->S + o * H, B, A, H);
            ad_colsum_(d->dbs, d->dq, B, A);
            ad_mm_dx_(d->dsn, d->dq, d->Ws, B, A, H, 1.0f);
        } else if (d->kind == NN_ATTDEC_FIXED) {
            for (size_t i = 0; i < (size_t)B * Dv; i++) dinit[i] += d->dctx[i];
        }
        float *t1 = d->ds; d->ds = d->dsn; d->dsn = t1;
        float *t2 = d->dc; d->dc = d->dcn; d->dcn = t2;
    }
    /* s_0 = tanh(z): dz = ds (1 - s_0^2); dinit += dz W_init */
    for (size_t i = 0; i < (size_t)B * H; i++) d->ds[i] *= 1.0f - d->S[i] * d->S[i];
    ad_mm_dw_(d->dWi, d->ds, d->init_in, B, H, Dv);
    ad_colsum_(d->dbi, d->ds, B, H);
    ad_mm_dx_(dinit, d->ds, d->Wi, B, H, Dv, 1.0f);
    if (!attn) return;
    ad_mm_dw_(d->dWk, d->dkh, d->mem, B * T, A, Dv);
    if (d->positions)
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < (size_t)T * A; i++) d->dpos[i] += d->dkh[(size_t)b * T * A + i];
    ad_mm_dx_(dmem, d->dkh, d->Wk, B * T, A, Dv, 1.0f);
}

/* ---- decoding ------------------------------------------------------------------------- */

static void ad_carve_dec_(nn_attdec *d, nn_attdec_arena *a, int R, int steps, int B) {
    nn_attdec_scratch *s = &d->dec;
    size_t r = (size_t)R, K2 = 2 * r;
    s->Sa = NN_ATTDEC_F(a, r * d->H);
    s->Sb = NN_ATTDEC_F(a, r * d->H);
    s->Ca = NN_ATTDEC_F(a, r * d->H);
    s->Cb = NN_ATTDEC_F(a, r * d->H);
    s->emb = NN_ATTDEC_F(a, r * d->D);
    s->q = NN_ATTDEC_F(a, r * d->A);
    s->att = NN_ATTDEC_F(a, r * d->max_T);
    s->ctx = NN_ATTDEC_F(a, r * d->Dv);
    s->xin = NN_ATTDEC_F(a, r * d->In);
    s->gates = NN_ATTDEC_F(a, r * d->GH);
    s->aux = NN_ATTDEC_F(a, r * d->H);
    s->tmp = NN_ATTDEC_F(a, r * d->GH);
    s->O = NN_ATTDEC_F(a, r * d->Hc);
    s->logits = NN_ATTDEC_F(a, r * d->V);
    s->tok = NN_ATTDEC_I(a, r);
    s->hist = NN_ATTDEC_I(a, r * steps);
    s->hist2 = NN_ATTDEC_I(a, r * steps);
    s->parent = NN_ATTDEC_I(a, r);
    s->src = NN_ATTDEC_I(a, r);
    s->fin = NN_ATTDEC_I(a, (size_t)B * steps);
    s->fin_len = NN_ATTDEC_I(a, B);
    s->fin_n = NN_ATTDEC_I(a, B);
    s->done = NN_ATTDEC_I(a, B);
    s->cand_k = NN_ATTDEC_I(a, K2);
    s->cand_v = NN_ATTDEC_I(a, K2);
    s->score = NN_ATTDEC_D(a, r);
    s->score2 = NN_ATTDEC_D(a, r);
    s->fin_best = NN_ATTDEC_D(a, B);
    s->cand_s = NN_ATTDEC_D(a, K2);
    s->attn_store = NN_ATTDEC_F(a, (size_t)B * steps * d->max_T);
}

/* Makes the decode scratch hold B*K rows, B examples and `steps` outputs. */
static int ad_dec_reserve_(nn_attdec *d, int B, int K, int steps) {
    nn_attdec_scratch *s = &d->dec;
    int R = B * K;
    if (s->mem && R <= s->R && steps <= s->steps && B <= s->B) return NN_OK;
    int nR = R > s->R ? R : s->R, nS = steps > s->steps ? steps : s->steps;
    int nB = B > s->B ? B : s->B;
    nn_attdec_arena a = {NULL, 0};
    ad_carve_dec_(d, &a, nR, nS, nB);
    char *mem = aligned_alloc(64, (a.off + 63) & ~(size_t)63);
    if (!mem) {
        nn_set_error("%s: cannot allocate %zu bytes of decode scratch", d->name, a.off);
        return NN_ERR_NOMEM;
    }
    free(s->mem);
    s->mem = mem;
    s->R = nR, s->steps = nS, s->B = nB;
    s->attn_valid = 0;
    a.base = mem;
    a.off = 0;
    ad_carve_dec_(d, &a, nR, nS, nB);
    return NN_OK;
}

/* Row-wise log-softmax in place over V logits, with NN_PAD and NN_BOS excluded (-inf):
 * neither is ever a valid output token. */
static void ad_log_softmax_(float *x, int R, int V) {
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

/* Embeds the rows' current tokens, runs one step from (Sa, Ca) into (Sb, Cb) and the
 * output layer into logits (R,V). */
static void ad_dec_step_(nn_attdec *d, const int32_t *src, int R) {
    nn_attdec_scratch *s = &d->dec;
    nn_embedding_forward(s->emb, s->tok, d->E, R, d->D);
    ad_step_(d, s->q, s->att, s->ctx, s->xin, s->gates, s->aux, s->Sb, s->Cb, s->O, s->tmp,
             s->emb, s->Sa, s->Ca, src, R);
    nn_linear_forward(s->logits, s->O, d->Wo, d->bo, R, d->Hc, d->V);
}

static int ad_greedy_(nn_attdec *d, int B, int max_out, int32_t *out) {
    nn_attdec_scratch *s = &d->dec;
    int T = d->T, H = d->H, V = d->V;
    int attn = d->kind == NN_ATTDEC_BAHDANAU;
    memcpy(s->Sa, d->S, (size_t)B * H * sizeof(float));
    memset(s->Ca, 0, (size_t)B * H * sizeof(float));
    memset(s->attn_store, 0, (size_t)B * max_out * T * sizeof(float));
    for (int i = 0; i < B; i++) {
        s->tok[i] = NN_BOS;
        s->done[i] = 0;
        for (int t = 0; t < max_out; t++) out[(size_t)i * max_out + t] = NN_PAD;
    }
    for (int t = 0; t < max_out; t++) {
        ad_dec_step_(d, NULL, B);
        int live = 0;
        for (int i = 0; i < B; i++) {
            if (s->done[i]) {
                s->tok[i] = NN_PAD;
                continue;
            }
            const float *l = s->logits + (size_t)i * V;
            int best = -1;
            for (int v = 0; v < V; v++) {
                if (v == NN_PAD || v == NN_BOS) continue;
                if (best < 0 || l[v] > l[best]) best = v;
            }
            out[(size_t)i * max_out + t] = best;
            s->tok[i] = best;
            if (attn)
                memcpy(s->attn_store + ((size_t)i * max_out + t) * T, s->att + (size_t)i * T,
                       (size_t)T * sizeof(float));
            if (best == NN_EOS) s->done[i] = 1;
            else live++;
        }
        float *t1 = s->Sa; s->Sa = s->Sb; s->Sb = t1;
        float *t2 = s->Ca; s->Ca = s->Cb; s->Cb = t2;
        if (!live) break;
    }
    s->attn_B = B;
    s->attn_steps = max_out;
    s->attn_T = T;
    s->attn_valid = attn;
    return NN_OK;
}

static double ad_lp_(int len, float alpha) {
    return alpha == 0.0f ? 1.0 : pow((5.0 + len) / 6.0, (double)alpha);
}

/* Beam search, K hypotheses per example. At each step the 2K best extensions of the live
 * hypotheses are ranked by summed log-probability; an NN_EOS among the first K finishes a
 * hypothesis (scored by log p / ((5 + len) / 6)^alpha, len counting the NN_EOS), the others
 * fill the K live slots. An example stops when K hypotheses finished, or when no live
 * hypothesis can still beat the best finished one (its log-probability only falls; for
 * alpha >= 0 its best possible normalised score is logp / lp(max_out)), or at max_out, where
 * the live hypotheses compete unfinished. */
static int ad_beam_(nn_attdec *d, int B, int K, float alpha, int max_out, int32_t *out) {
    nn_attdec_scratch *s = &d->dec;
    int H = d->H, V = d->V, R = B * K;
    for (int r = 0; r < R; r++) {
        int i = r / K;
        s->src[r] = i;
        memcpy(s->Sa + (size_t)r * H, d->S + (size_t)i * H, (size_t)H * sizeof(float));
        s->score[r] = r % K == 0 ? 0.0 : -INFINITY;
        s->tok[r] = NN_BOS;
    }
    memset(s->Ca, 0, (size_t)R * H * sizeof(float));
    for (int i = 0; i < B; i++) {
        s->done[i] = 0;
        s->fin_best[i] = -INFINITY;
        s->fin_len[i] = -1;
        s->fin_n[i] = 0;
    }
    int t;
    for (t = 0; t < max_out; t++) {
        ad_dec_step_(d, s->src, R);
        ad_log_softmax_(s->logits, R, V);
        int live_examples = 0;
        for (int i = 0; i < B; i++) {
            int base = i * K;
            for (int k = 0; k < K; k++) {
                s->parent[base + k] = base + k;
                s->score2[base + k] = -INFINITY;
            }
            if (s->done[i]) continue;
            /* the 2K best (score, k, v), sorted descending, by insertion */
            int nc = 0;
            for (int k = 0; k < K; k++) {
                double sk = s->score[base + k];
                if (sk == -INFINITY) continue;
                const float *l = s->logits + (size_t)(base + k) * V;
                for (int v = 0; v < V; v++) {
                    if (l[v] == -INFINITY) continue;
                    double sc = sk + l[v];
                    if (nc == 2 * K && sc <= s->cand_s[nc - 1]) continue;
                    int pos = nc < 2 * K ? nc++ : nc - 1;
                    for (; pos > 0 && s->cand_s[pos - 1] < sc; pos--) {
                        s->cand_s[pos] = s->cand_s[pos - 1];
                        s->cand_k[pos] = s->cand_k[pos - 1];
                        s->cand_v[pos] = s->cand_v[pos - 1];
                    }
                    s->cand_s[pos] = sc;
                    s->cand_k[pos] = k;
                    s->cand_v[pos] = v;
                }
            }
            int nl = 0;
            for (int c = 0; c < nc; c++) {
                int pr = base + s->cand_k[c], v = s->cand_v[c];
                if (v == NN_EOS) {
                    if (c >= K) continue;
                    s->fin_n[i]++;
                    double norm = s->cand_s[c] / ad_lp_(t + 1, alpha);
                    if (norm > s->fin_best[i]) {
                        int32_t *f = s->fin + (size_t)i * max_out;
                        s->fin_best[i] = norm;
                        s->fin_len[i] = t + 1;
                        memcpy(f, s->hist + (size_t)pr * max_out, (size_t)t * sizeof(int32_t));
                        f[t] = NN_EOS;
                    }
                } else if (nl < K) {
                    int nr = base + nl++;
                    s->parent[nr] = pr;
                    s->score2[nr] = s->cand_s[c];
                    memcpy(s->hist2 + (size_t)nr * max_out, s->hist + (size_t)pr * max_out,
                           (size_t)t * sizeof(int32_t));
                    s->hist2[(size_t)nr * max_out + t] = v;
                }
            }
            double bound = -INFINITY;
            for (int k = 0; k < nl; k++) {
                double sc = s->score2[base + k] / (alpha >= 0.0f ? ad_lp_(max_out, alpha) : 1.0);
                bound = sc > bound ? sc : bound;
            }
            if (nl == 0 || s->fin_n[i] >= K || (alpha >= 0.0f && s->fin_best[i] >= bound))
                s->done[i] = 1;
            else
                live_examples++;
        }
        /* reorder states and histories by parent; next input tokens */
        for (int r = 0; r < R; r++) {
            int pr = s->parent[r];
            memcpy(s->Sa + (size_t)r * H, s->Sb + (size_t)pr * H, (size_t)H * sizeof(float));
            memcpy(s->Ca + (size_t)r * H, s->Cb + (size_t)pr * H, (size_t)H * sizeof(float));
            s->score[r] = s->score2[r];
            s->tok[r] = s->done[r / K] || s->score[r] == -INFINITY
                            ? NN_PAD
                            : s->hist2[(size_t)r * max_out + t];
        }
        int32_t *th = s->hist; s->hist = s->hist2; s->hist2 = th;
        if (!live_examples) {
            t++;
            break;
        }
    }
    /* Examples still open at max_out: the live hypotheses compete unfinished. */
    for (int i = 0; i < B; i++) {
        if (!s->done[i])
            for (int k = 0; k < K; k++) {
                int r = i * K + k;
                if (s->score[r] == -INFINITY) continue;
                double norm = s->score[r] / ad_lp_(t, alpha);
                if (norm > s->fin_best[i]) {
                    s->fin_best[i] = norm;
                    s->fin_len[i] = t;
                    memcpy(s->fin + (size_t)i * max_out, s->hist + (size_t)r * max_out,
                           (size_t)t * sizeof(int32_t));
                }
            }
        int32_t *o = out + (size_t)i * max_out;
        int n = s->fin_len[i] < 0 ? 0 : s->fin_len[i];
        memcpy(o, s->fin + (size_t)i * max_out, (size_t)n * sizeof(int32_t));
        for (int j = n; j < max_out; j++) o[j] = NN_PAD;
    }
    return NN_OK;
}

int nn_attdec_decode(nn_attdec *d, nn_model *m, const nn_attdec_source *src,
                     const nn_batch *b, int beam, float len_alpha, int max_out, int32_t *out,
                     int force_beam) {
    if (beam < 1 || max_out < 1 || !out) {
        nn_set_error("%s: decode needs beam >= 1 and max_out >= 1 (got %d, %d)", d->name, beam,
                     max_out);
        return NN_ERR_CONFIG;
    }
    int rc = src->check(m, b);
    if (rc < 0 || b->B == 0) return rc;
    if ((rc = ad_dec_reserve_(d, b->B, beam, max_out)) < 0) return rc;
    src->encode(m, b);
    d->dec.attn_valid = 0;
    if (beam == 1 && !force_beam) return ad_greedy_(d, b->B, max_out, out);
    return ad_beam_(d, b->B, beam, len_alpha, max_out, out);
}

const float *nn_attdec_attention(const nn_attdec *d, int *B, int *steps, int *T) {
    int ok = d && d->dec.attn_valid;
    if (B) *B = ok ? d->dec.attn_B : 0;
    if (steps) *steps = ok ? d->dec.attn_steps : 0;
    if (T) *T = ok ? d->dec.attn_T : 0;
    return ok ? d->dec.attn_store : NULL;
}
