/* seq.c - sequence layers: Conv1D over time (im2col + one GEMM), global max/mean pooling
 * over valid positions, and recurrent stacks (SimpleRNN, LSTM, GRU) with explicit
 * forward/backward through time.
 *
 * Recurrent layers run time-major internally: the input projection of all time steps is
 * one GEMM ([T*B, In] x W_ih^T); only the recurrent product h W_hh^T ([B,H] x [H,G*H], all
 * gates at once) loops over time, and the gate nonlinearities run fused in one pass per
 * step. Weight gradients are again one GEMM each over all steps.
 *
 * Does not: allocate in forward/backward, apply dropout between stacked layers (models
 * apply dropout outside the stack), clip gradients (the trainer does), or know about
 * models or configuration. */
#include "models/nn.h"
#include "models/nn_math.h"

#include <math.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------------------ */

static inline int row_len(const int32_t *len, int b, int T) {
    if (!len) return T;
    int L = len[b];
    return L < 0 ? 0 : (L > T ? T : L);
}

/* C (n) += colsum of A (rows, n). */
static void colsum_add(float *c, const float *A, size_t rows, int n) {
    for (size_t i = 0; i < rows; i++) {
        const float *a = A + i * (size_t)n;
        for (int j = 0; j < n; j++) c[j] += a[j];
    }
}

/* ---- Conv1D ----------------------------------------------------------------------- */

int nn_conv1d_out_len(int T, int k, int same) {
    if (same) return T;
    int o = T - k + 1;
    return o < 1 ? 1 : o;
}

void nn_conv1d_valid_len(int32_t *out, const int32_t *len, int B, int T, int k, int same) {
    int To = nn_conv1d_out_len(T, k, same);
    for (int b = 0; b < B; b++) {
        int L = row_len(len, b, T);
        int n = same ? L : L - k + 1;
        out[b] = n < 1 ? 1 : (n > To ? To : n);
    }
}

void nn_conv1d_forward(float *y, float *cols, const float *x, const int32_t *len,
                       const float *W, const float *b, int B, int T, int C, int F, int k,
                       int same) {
    int To = nn_conv1d_out_len(T, k, same), padl = same ? (k - 1) / 2 : 0;
    size_t CK = (size_t)C * k;
    for (int bb = 0; bb < B; bb++) {
        int L = row_len(len, bb, T);
        for (int t = 0; t < To; t++) {
            float *row = cols + ((size_t)bb * To + t) * CK;
            for (int j = 0; j < k; j++) {
                int s = t + j - padl;
                if (s < 0 || s >= L) {
                    for (int c = 0; c < C; c++) row[(size_t)c * k + j] = 0.0f;
                } else {
                    const float *xs = x + ((size_t)bb * T + s) * C;
                    for (int c = 0; c < C; c++) row[(size_t)c * k + j] = xs[c];
                }
            }
        }
    }
    size_t rows = (size_t)B * To;
    if (b)
        for (size_t i = 0; i < rows; i++) memcpy(y + i * F, b, (size_t)F * sizeof *b);
    nn_gemm(0, 1, (int)rows, F, (int)CK, 1.0f, cols, (int)CK, W, (int)CK, b ? 1.0f : 0.0f, y,
            F);
}

void nn_conv1d_backward(float *dx, float *dW, float *db, float *dcols, const float *dy,
                        const float *cols, const float *W, const int32_t *len, int B, int T,
                        int C, int F, int k, int same) {
    int To = nn_conv1d_out_len(T, k, same), padl = same ? (k - 1) / 2 : 0;
    size_t CK = (size_t)C * k, rows = (size_t)B * To;
    nn_gemm(1, 0, F, (int)CK, (int)rows, 1.0f, dy, F, cols, (int)CK, 1.0f, dW, (int)CK);
    if (db) colsum_add(db, dy, rows, F);
    if (!dx) return;
    nn_gemm(0, 0, (int)rows, (int)CK, F, 1.0f, dy, F, W, (int)CK, 0.0f, dcols, (int)CK);
    for (int bb = 0; bb < B; bb++) {
        int L = row_len(len, bb, T);
        for (int t = 0; t < To; t++) {
            const float *row = dcols + ((size_t)bb * To + t) * CK;
            for (int j = 0; j < k; j++) {
                int s = t + j - padl;
                if (s < 0 || s >= L) continue;
                float *xs = dx + ((size_t)bb * T + s) * C;
                for (int c = 0; c < C; c++) xs[c] += row[(size_t)c * k + j];
            }
        }
    }
}

/* ---- pooling over time ------------------------------------------------------------- */

void nn_maxpool_time_forward(float *y, int32_t *argmax, const float *x, const int32_t *n,
                             int B, int T, int F) {
    for (int b = 0; b < B; b++) {
        int L = n ? n[b] : T;
        NN_ASSERT(L >= 1 && L <= T);
        float *yb = y + (size_t)b * F;
        int32_t *ab = argmax + (size_t)b * F;
        const float *x0 = x + (size_t)b * T * F;
        for (int f = 0; f < F; f++) { yb[f] = x0[f]; ab[f] = 0; }
        for (int t = 1; t < L; t++) {
            const float *xt = x0 + (size_t)t * F;
            for (int f = 0; f < F; f++)
                if (xt[f] > yb[f]) { yb[f] = xt[f]; ab[f] = t; }
        }
    }
}

void nn_maxpool_time_backward(float *dx, const float *dy, const int32_t *argmax, int B, int T,
                              int F) {
    for (int b = 0; b < B; b++)
        for (int f = 0; f < F; f++) {
            size_t i = (size_t)b * F + f;
            dx[((size_t)b * T + argmax[i]) * F + f] += dy[i];
        }
}

void nn_meanpool_time_forward(float *y, const float *x, const int32_t *n, int B, int T, int F) {
    for (int b = 0; b < B; b++) {
        int L = n ? n[b] : T;
        NN_ASSERT(L >= 1 && L <= T);
        float *yb = y + (size_t)b * F;
        memset(yb, 0, (size_t)F * sizeof *yb);
        for (int t = 0; t < L; t++) {
            const float *xt = x + ((size_t)b * T + t) * F;
            for (int f = 0; f < F; f++) yb[f] += xt[f];
        }
        float inv = 1.0f / (float)L;
        for (int f = 0; f < F; f++) yb[f] *= inv;
    }
}

void nn_meanpool_time_backward(float *dx, const float *dy, const int32_t *n, int B, int T,
                               int F) {
    for (int b = 0; b < B; b++) {
        int L = n ? n[b] : T;
        float inv = 1.0f / (float)L;
        const float *db = dy + (size_t)b * F;
        for (int t = 0; t < L; t++) {
            float *xt = dx + ((size_t)b * T + t) * F;
            for (int f = 0; f < F; f++) xt[f] += db[f] * inv;
        }
    }
}

/* ---- recurrent stacks: setup ------------------------------------------------------ */

int nn_cell_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "rnn")) return NN_CELL_RNN;
    if (!strcmp(s, "lstm")) return NN_CELL_LSTM;
    if (!strcmp(s, "gru")) return NN_CELL_GRU;
    return -1;
}

int nn_merge_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "concat")) return NN_MERGE_CONCAT;
    if (!strcmp(s, "sum")) return NN_MERGE_SUM;
    return -1;
}

static int cell_gates(int cell) { return cell == NN_CELL_LSTM ? 4 : cell == NN_CELL_GRU ? 3 : 1; }

/* Carves n floats from *p, keeping 64-byte alignment; with base == NULL only counts. */
static float *carve(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

/* Lays out every cache in r->mem (or counts the floats when r->mem is NULL). */
static size_t rnn_layout(nn_rnn *r) {
    size_t off = 0, TB = (size_t)r->max_T * r->max_B, B = (size_t)r->max_B;
    size_t H = (size_t)r->H, GH = (size_t)r->G * r->H, nd = r->bidir ? 2 : 1;
    float *m = r->mem;
    r->x_tm = carve(m, &off, TB * r->C);
    r->dx_tm = carve(m, &off, TB * r->C);
    r->dh = carve(m, &off, B * GH); /* GRU's step also needs (B,G*H) of projection scratch */
    r->dc = carve(m, &off, B * H);
    r->carry_h = r->lanes > 0 ? carve(m, &off, (size_t)r->lanes * r->layers * H) : NULL;
    r->carry_c = r->lanes > 0 ? carve(m, &off, (size_t)r->lanes * r->layers * H) : NULL;
    for (int l = 0; l < r->layers; l++) {
        nn_rnn_layer *L = &r->L[l];
        L->out = carve(m, &off, TB * r->Hout);
        L->dout = carve(m, &off, TB * r->Hout);
        for (size_t d = 0; d < nd; d++) {
            nn_rnn_dir *D = &L->dir[d];
            D->gates = carve(m, &off, TB * GH);
            D->state = carve(m, &off, TB * H + B * H);
            D->cell = r->cell == NN_CELL_LSTM ? carve(m, &off, TB * H + B * H) : NULL;
            D->aux = r->cell != NN_CELL_RNN ? carve(m, &off, TB * H) : NULL;
            D->dgh = r->cell == NN_CELL_GRU ? carve(m, &off, TB * GH) : NULL;
        }
    }
    return off;
}

int nn_rnn_init(nn_rnn *r, nn_params *ps, const char *prefix, int cell, int C, int H,
                int layers, int bidir, int merge, int bptt, int lanes, int max_B, int max_T) {
    memset(r, 0, sizeof *r);
    if (cell < NN_CELL_RNN || cell > NN_CELL_GRU) {
        nn_set_error("rnn: unknown cell %d", cell);
        return NN_ERR_CONFIG;
    }
    if (layers < 1 || layers > NN_RNN_MAX_LAYERS || C < 1 || H < 1 || max_B < 1 || max_T < 1 ||
        bptt < 0 || lanes < 0 || (merge != NN_MERGE_CONCAT && merge != NN_MERGE_SUM)) {
        nn_set_error("rnn: bad sizes (layers %d in 1..%d, C %d, H %d, bptt %d, lanes %d, "
                     "batch %d, len %d)", layers, NN_RNN_MAX_LAYERS, C, H, bptt, lanes, max_B,
                     max_T);
        return NN_ERR_CONFIG;
    }
    if (bidir && lanes > 0) {
        nn_set_error("rnn: carrying state across batches needs a forward-only stack");
        return NN_ERR_CONFIG;
    }
    r->cell = cell;
    r->G = cell_gates(cell);
    r->C = C;
    r->H = H;
    r->layers = layers;
    r->bidir = bidir ? 1 : 0;
    r->merge = merge;
    r->Hout = (bidir && merge == NN_MERGE_CONCAT) ? 2 * H : H;
    r->bptt = bptt;
    r->lanes = lanes;
    r->max_B = max_B;
    r->max_T = max_T;
    static const char *dname[2] = {"fwd", "bwd"};
    static const char *wname[4] = {"w_ih", "w_hh", "b_ih", "b_hh"};
    float scale = 1.0f / sqrtf((float)H);
    for (int l = 0; l < layers; l++) {
        r->L[l].in = l == 0 ? C : r->Hout;
        for (int d = 0; d < 1 + r->bidir; d++) {
            nn_rnn_dir *D = &r->L[l].dir[d];
            float **v[4] = {&D->w_ih, &D->w_hh, &D->b_ih, &D->b_hh};
            float **g[4] = {&D->dw_ih, &D->dw_hh, &D->db_ih, &D->db_hh};
            int shapes[4][2] = {{r->G * H, r->L[l].in}, {r->G * H, H}, {r->G * H, 0},
                                {r->G * H, 0}};
            for (int w = 0; w < 4; w++) {
                char name[NN_NAME_MAX];
                snprintf(name, sizeof name, "%s/layer_%d/%s/%s", prefix, l, dname[d], wname[w]);
                int rc = nn_params_add(ps, name, w < 2 ? 2 : 1, shapes[w], NN_INIT_UNIFORM,
                                       scale, v[w], g[w]);
                if (rc < 0) {
                    nn_rnn_free(r);
                    return rc;
                }
            }
        }
    }
    r->len = malloc((size_t)max_B * sizeof *r->len);
    size_t n = rnn_layout(r);
    void *mem = nn_alloc_big(n * sizeof(float));
    if (!r->len || !mem) {
        free(mem);
        nn_set_error("rnn: cannot allocate %zu floats of caches", n);
        nn_rnn_free(r);
        return NN_ERR_NOMEM;
    }
    r->mem = mem;
    memset(r->mem, 0, n * sizeof(float));
    rnn_layout(r);
    return NN_OK;
}

void nn_rnn_free(nn_rnn *r) {
    if (!r) return;
    free(r->mem);
    free(r->len);
    r->mem = NULL;
    r->len = NULL;
}

void nn_rnn_reset_carry(nn_rnn *r) {
    size_t n = (size_t)r->lanes * r->layers * r->H;
    if (r->carry_h) memset(r->carry_h, 0, n * sizeof(float));
    if (r->carry_c) memset(r->carry_c, 0, n * sizeof(float));
}


/* ---- gate nonlinearities, NN_VW lanes at a time ----------------------------------- */
/* The same formulas as nn_sigmoid_ / nn_tanh_ (nn_math.h) on vectors: GCC does not
 * vectorise the scalar ones (their exp builds 2^n through a union). Each row function
 * runs the vector loop, then the scalar tail for H % NN_VW. */
static inline nn_vf vsig_(nn_vf x) { return 1.0f / (1.0f + nn_vexp_(-x)); }
static inline nn_vf vtanh_(nn_vf u) {
    nn_vi neg = u < 0.0f;
    nn_vf a = nn_vsel_(neg, -u, u);
    nn_vf e = nn_vexp_(-2.0f * a);
    nn_vf t = (1.0f - e) / (1.0f + e);
    return nn_vsel_(neg, -t, t);
}

/* LSTM step for one row: g (4H) pre-activations in, activated gates out; c = f*cp + i*g,
 * tc = tanh(c), h = o*tc. */
static void lstm_row(float *g, float *cn, float *tc, float *h, const float *cp, int H) {
    float *gi = g, *gf = g + H, *gg = g + 2 * H, *go = g + 3 * H;
    int j = 0;
    for (; j + NN_VW <= H; j += NN_VW) {
        nn_vf ii = vsig_(nn_vload_(gi + j)), ff = vsig_(nn_vload_(gf + j));
        nn_vf gv = vtanh_(nn_vload_(gg + j)), oo = vsig_(nn_vload_(go + j));
        nn_vf c = ff * nn_vload_(cp + j) + ii * gv;
        nn_vf th = vtanh_(c);
        nn_vstore_(gi + j, ii);
        nn_vstore_(gf + j, ff);
        nn_vstore_(gg + j, gv);
        nn_vstore_(go + j, oo);
        nn_vstore_(cn + j, c);
        nn_vstore_(tc + j, th);
        nn_vstore_(h + j, oo * th);
    }
    for (; j < H; j++) {
        float ii = nn_sigmoid_(gi[j]), ff = nn_sigmoid_(gf[j]);
        float gv = nn_tanh_(gg[j]), oo = nn_sigmoid_(go[j]);
        float c = ff * cp[j] + ii * gv;
        float th = nn_tanh_(c);
        gi[j] = ii; gf[j] = ff; gg[j] = gv; go[j] = oo;
        cn[j] = c;
        tc[j] = th;
        h[j] = oo * th;
    }
}

/* GRU step for one row: g (3H) input projections in, r, z, n out; hp (3H) recurrent
 * projections (with b_hh); hpn := hp's n block; h = (1-z) n + z hprev. */
static void gru_row(float *g, float *hpn, float *h, const float *hp, const float *hprev, int H) {
    float *gr = g, *gz = g + H, *gn = g + 2 * H;
    int j = 0;
    for (; j + NN_VW <= H; j += NN_VW) {
        nn_vf rr = vsig_(nn_vload_(gr + j) + nn_vload_(hp + j));
        nn_vf zz = vsig_(nn_vload_(gz + j) + nn_vload_(hp + H + j));
        nn_vf hn = nn_vload_(hp + 2 * H + j);
        nn_vf nv = vtanh_(nn_vload_(gn + j) + rr * hn);
        nn_vstore_(gr + j, rr);
        nn_vstore_(gz + j, zz);
        nn_vstore_(gn + j, nv);
        nn_vstore_(hpn + j, hn);
        nn_vstore_(h + j, (1.0f - zz) * nv + zz * nn_vload_(hprev + j));
    }
    for (; j < H; j++) {
        float rr = nn_sigmoid_(gr[j] + hp[j]), zz = nn_sigmoid_(gz[j] + hp[H + j]);
        float nv = nn_tanh_(gn[j] + rr * hp[2 * H + j]);
        gr[j] = rr; gz[j] = zz; gn[j] = nv;
        hpn[j] = hp[2 * H + j];
        h[j] = (1.0f - zz) * nv + zz * hprev[j];
    }
}

static void tanh_row(float *g, float *h, int H) {
    int j = 0;
    for (; j + NN_VW <= H; j += NN_VW) {
        nn_vf v = vtanh_(nn_vload_(g + j));
        nn_vstore_(g + j, v);
        nn_vstore_(h + j, v);
    }
    for (; j < H; j++) h[j] = g[j] = nn_tanh_(g[j]);
}

/* ---- recurrent stacks: forward ------------------------------------------------------- */

static size_t lane_of(int64_t index, int lanes) {
    int64_t l = index % lanes;
    return (size_t)(l < 0 ? l + lanes : l);
}

/* One direction over xin (T,B,In). The initial state is already in slot s0 (0 forward,
 * T reverse) of state/cell. Leaves activated gates, states and aux caches. */
static void dir_forward(const nn_rnn *r, nn_rnn_dir *D, const float *xin, int In, int B, int T,
                        int rev) {
    const int H = r->H, G = r->G, GH = G * H;
    const size_t BH = (size_t)B * H, BG = (size_t)B * GH, TB = (size_t)T * B;
    /* Input projections of every step at once; both biases folded in except GRU's b_hn,
     * which sits inside r * (...) and stays with the recurrent projection. */
    float *g = D->gates;
    for (int j = 0; j < GH; j++) g[j] = D->b_ih[j] + (r->cell == NN_CELL_GRU ? 0.0f : D->b_hh[j]);
    for (size_t i = 1; i < TB; i++) memcpy(g + i * GH, g, (size_t)GH * sizeof *g);
    nn_gemm(0, 1, (int)TB, GH, In, 1.0f, xin, In, D->w_ih, In, 1.0f, g, GH);

    float *hp = r->dh; /* GRU recurrent projection scratch (B,GH) */
    for (int i = 0; i < T; i++) {
        int t = rev ? T - 1 - i : i;
        int sp = rev ? t + 1 : t, sn = rev ? t : t + 1;
        const float *hprev = D->state + sp * BH;
        float *hnext = D->state + sn * BH;
        float *gt = g + t * BG;
        if (r->cell == NN_CELL_GRU) {
            for (int b = 0; b < B; b++) memcpy(hp + (size_t)b * GH, D->b_hh, GH * sizeof *hp);
            nn_gemm(0, 1, B, GH, H, 1.0f, hprev, H, D->w_hh, H, 1.0f, hp, GH);
        } else {
            nn_gemm(0, 1, B, GH, H, 1.0f, hprev, H, D->w_hh, H, 1.0f, gt, GH);
        }
        for (int b = 0; b < B; b++) {
            const float *hp_b = hprev + (size_t)b * H;
            float *hn_b = hnext + (size_t)b * H;
            float *gb = gt + (size_t)b * GH;
            if (t >= r->len[b]) { /* padding: state frozen, caches zero */
                memcpy(hn_b, hp_b, H * sizeof *hn_b);
                if (D->cell)
                    memcpy(D->cell + sn * BH + (size_t)b * H, D->cell + sp * BH + (size_t)b * H,
                           H * sizeof(float));
                memset(gb, 0, GH * sizeof *gb);
                if (D->aux) memset(D->aux + t * BH + (size_t)b * H, 0, H * sizeof(float));
                continue;
            }
            if (r->cell == NN_CELL_LSTM)
                lstm_row(gb, D->cell + sn * BH + (size_t)b * H, D->aux + t * BH + (size_t)b * H,
                         hn_b, D->cell + sp * BH + (size_t)b * H, H);
            else if (r->cell == NN_CELL_GRU)
                gru_row(gb, D->aux + t * BH + (size_t)b * H, hn_b, hp + (size_t)b * GH, hp_b, H);
            else
                tanh_row(gb, hn_b, H);
        }
    }
}

void nn_rnn_forward(nn_rnn *r, float *y, float *last, const float *x, const int32_t *len,
                    const int64_t *lane_index, int B, int T) {
    NN_ASSERT(B >= 0 && B <= r->max_B && T >= 1 && T <= r->max_T);
    r->B = B;
    r->T = T;
    if (B == 0) return;
    const int H = r->H, C = r->C, Ho = r->Hout;
    const size_t BH = (size_t)B * H;
    for (int b = 0; b < B; b++) r->len[b] = row_len(len, b, T);
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            float *dst = r->x_tm + ((size_t)t * B + b) * C;
            if (t < r->len[b]) memcpy(dst, x + ((size_t)b * T + t) * C, C * sizeof *dst);
            else memset(dst, 0, C * sizeof *dst);
        }
    int carry = lane_index && r->lanes > 0;
    for (int l = 0; l < r->layers; l++) {
        nn_rnn_layer *L = &r->L[l];
        const float *xin = l == 0 ? r->x_tm : r->L[l - 1].out;
        for (int d = 0; d < 1 + r->bidir; d++) {
            nn_rnn_dir *D = &L->dir[d];
            size_t s0 = d ? (size_t)T * BH : 0;
            for (int b = 0; b < B; b++) {
                float *h0 = D->state + s0 + (size_t)b * H;
                float *c0 = D->cell ? D->cell + s0 + (size_t)b * H : NULL;
                if (carry) {
                    size_t o = (lane_of(lane_index[b], r->lanes) * r->layers + l) * H;
                    memcpy(h0, r->carry_h + o, H * sizeof *h0);
                    if (c0) memcpy(c0, r->carry_c + o, H * sizeof *c0);
                } else {
                    memset(h0, 0, H * sizeof *h0);
                    if (c0) memset(c0, 0, H * sizeof *c0);
                }
            }
            dir_forward(r, D, xin, L->in, B, T, d);
            if (carry) /* forward-only stacks: the final state sits in slot T */
                for (int b = 0; b < B; b++) {
                    size_t o = (lane_of(lane_index[b], r->lanes) * r->layers + l) * H;
                    memcpy(r->carry_h + o, D->state + (size_t)T * BH + (size_t)b * H,
                           H * sizeof(float));
                    if (D->cell)
                        memcpy(r->carry_c + o, D->cell + (size_t)T * BH + (size_t)b * H,
                               H * sizeof(float));
                }
        }
        /* Layer output (T,B,Hout): zero at padding; state slot of step t is t+1 forward,
         * t reverse. */
        for (int t = 0; t < T; t++)
            for (int b = 0; b < B; b++) {
                float *o = L->out + ((size_t)t * B + b) * Ho;
                if (t >= r->len[b]) {
                    memset(o, 0, Ho * sizeof *o);
                    continue;
                }
                const float *hf = L->dir[0].state + (size_t)(t + 1) * BH + (size_t)b * H;
                memcpy(o, hf, H * sizeof *o);
                if (r->bidir) {
                    const float *hb = L->dir[1].state + (size_t)t * BH + (size_t)b * H;
                    if (r->merge == NN_MERGE_CONCAT) memcpy(o + H, hb, H * sizeof *o);
                    else for (int j = 0; j < H; j++) o[j] += hb[j];
                }
            }
    }
    nn_rnn_layer *top = &r->L[r->layers - 1];
    if (y)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                memcpy(y + ((size_t)b * T + t) * Ho, top->out + ((size_t)t * B + b) * Ho,
                       Ho * sizeof *y);
    if (last)
        for (int b = 0; b < B; b++) {
            float *o = last + (size_t)b * Ho;
            memcpy(o, top->dir[0].state + (size_t)T * BH + (size_t)b * H, H * sizeof *o);
            if (r->bidir) {
                const float *hb = top->dir[1].state + (size_t)b * H;
                if (r->merge == NN_MERGE_CONCAT) memcpy(o + H, hb, H * sizeof *o);
                else for (int j = 0; j < H; j++) o[j] += hb[j];
            }
        }
}


/* ---- gate gradients, NN_VW lanes at a time ------------------------------------------- */

/* LSTM backward for one row: g (4H) activated gates in, pre-activation gradients out;
 * dh (H) total gradient of h in, zeroed (the recurrent product adds to it next); dc (H)
 * carried cell gradient in, gradient of the previous cell out. */
static void lstm_row_back(float *g, float *dh, float *dc, const float *tc, const float *cp,
                          int H) {
    float *gi = g, *gf = g + H, *gg = g + 2 * H, *go = g + 3 * H;
    int j = 0;
    for (; j + NN_VW <= H; j += NN_VW) {
        nn_vf d = nn_vload_(dh + j), ii = nn_vload_(gi + j), ff = nn_vload_(gf + j);
        nn_vf gv = nn_vload_(gg + j), oo = nn_vload_(go + j), th = nn_vload_(tc + j);
        nn_vf dct = nn_vload_(dc + j) + d * oo * (1.0f - th * th);
        nn_vstore_(go + j, d * th * oo * (1.0f - oo));
        nn_vstore_(gi + j, dct * gv * ii * (1.0f - ii));
        nn_vstore_(gf + j, dct * nn_vload_(cp + j) * ff * (1.0f - ff));
        nn_vstore_(gg + j, dct * ii * (1.0f - gv * gv));
        nn_vstore_(dc + j, dct * ff);
        nn_vstore_(dh + j, nn_vsplat_(0.0f));
    }
    for (; j < H; j++) {
        float d = dh[j], ii = gi[j], ff = gf[j], gv = gg[j], oo = go[j], th = tc[j];
        float dct = dc[j] + d * oo * (1.0f - th * th);
        go[j] = d * th * oo * (1.0f - oo);
        gi[j] = dct * gv * ii * (1.0f - ii);
        gf[j] = dct * cp[j] * ff * (1.0f - ff);
        gg[j] = dct * ii * (1.0f - gv * gv);
        dc[j] = dct * ff;
        dh[j] = 0.0f;
    }
}

/* GRU backward for one row: g (3H) r, z, n in, gradients w.r.t. the input projections
 * out; gh (3H) gradients w.r.t. the recurrent projections out; dh (H) in, the direct part
 * of the previous state's gradient (dh z) out. */
static void gru_row_back(float *g, float *gh, float *dh, const float *hpn, const float *hprev,
                         int H) {
    float *gr = g, *gz = g + H, *gn = g + 2 * H;
    int j = 0;
    for (; j + NN_VW <= H; j += NN_VW) {
        nn_vf d = nn_vload_(dh + j), rr = nn_vload_(gr + j), zz = nn_vload_(gz + j);
        nn_vf nv = nn_vload_(gn + j);
        nn_vf dN = d * (1.0f - zz) * (1.0f - nv * nv);
        nn_vf dZ = d * (nn_vload_(hprev + j) - nv) * zz * (1.0f - zz);
        nn_vf dR = dN * nn_vload_(hpn + j) * rr * (1.0f - rr);
        nn_vstore_(gr + j, dR);
        nn_vstore_(gz + j, dZ);
        nn_vstore_(gn + j, dN);
        nn_vstore_(gh + j, dR);
        nn_vstore_(gh + H + j, dZ);
        nn_vstore_(gh + 2 * H + j, dN * rr);
        nn_vstore_(dh + j, d * zz);
    }
    for (; j < H; j++) {
        float d = dh[j], rr = gr[j], zz = gz[j], nv = gn[j];
        float dN = d * (1.0f - zz) * (1.0f - nv * nv);
        float dZ = d * (hprev[j] - nv) * zz * (1.0f - zz);
        float dR = dN * hpn[j] * rr * (1.0f - rr);
        gr[j] = dR; gz[j] = dZ; gn[j] = dN;
        gh[j] = dR; gh[H + j] = dZ; gh[2 * H + j] = dN * rr;
        dh[j] = d * zz;
    }
}

static void tanh_row_back(float *g, float *dh, int H) {
    int j = 0;
    for (; j + NN_VW <= H; j += NN_VW) {
        nn_vf h = nn_vload_(g + j);
        nn_vstore_(g + j, nn_vload_(dh + j) * (1.0f - h * h));
        nn_vstore_(dh + j, nn_vsplat_(0.0f));
    }
    for (; j < H; j++) {
        g[j] = dh[j] * (1.0f - g[j] * g[j]);
        dh[j] = 0.0f;
    }
}

/* ---- recurrent stacks: backward ----------------------------------------------------- */

/* One direction. dY (T,B,ldy) gradient of this direction's outputs (NULL: none); dlast
 * (B,ldl) gradient of its final state (NULL: none), injected at t = len-1 forward, t = 0
 * reverse. Accumulates weight gradients and dxin (T,B,In) (NULL: skipped). */
static void dir_backward(nn_rnn *r, nn_rnn_dir *D, const float *xin, float *dxin, int In,
                         const float *dY, int ldy, const float *dlast, int ldl, int B, int T,
                         int rev) {
    const int H = r->H, G = r->G, GH = G * H, k = r->bptt;
    const size_t BH = (size_t)B * H, BG = (size_t)B * GH, TB = (size_t)T * B;
    float *dh = r->dh, *dc = r->dc;
    memset(dh, 0, BH * sizeof *dh);
    memset(dc, 0, BH * sizeof *dc);
    for (int i = T - 1; i >= 0; i--) {
        int t = rev ? T - 1 - i : i;
        int sp = rev ? t + 1 : t;
        const float *hprev = D->state + sp * BH;
        float *gt = D->gates + t * BG;
        float *gh = D->dgh ? D->dgh + t * BG : NULL;
        for (int b = 0; b < B; b++) {
            float *gb = gt + (size_t)b * GH;
            float *dhb = dh + (size_t)b * H;
            if (t >= r->len[b]) { /* frozen state: gradient passes through unchanged */
                memset(gb, 0, GH * sizeof *gb);
                if (gh) memset(gh + (size_t)b * GH, 0, GH * sizeof *gh);
                continue;
            }
            if (dY) { /* fold the output gradient into the carried one */
                const float *dy = dY + ((size_t)t * B + b) * ldy;
                for (int j = 0; j < H; j++) dhb[j] += dy[j];
            }
            if (dlast && t == (rev ? 0 : r->len[b] - 1)) {
                const float *dl = dlast + (size_t)b * ldl;
                for (int j = 0; j < H; j++) dhb[j] += dl[j];
            }
            if (r->cell == NN_CELL_LSTM)
                lstm_row_back(gb, dhb, dc + (size_t)b * H, D->aux + t * BH + (size_t)b * H,
                              D->cell + sp * BH + (size_t)b * H, H);
            else if (r->cell == NN_CELL_GRU)
                gru_row_back(gb, gh + (size_t)b * GH, dhb, D->aux + t * BH + (size_t)b * H,
                             hprev + (size_t)b * H, H);
            else
                tanh_row_back(gb, dhb, H);
        }
        /* dh_prev += dG W_hh, all gates at once. */
        nn_gemm(0, 0, B, H, GH, 1.0f, gh ? gh : gt, GH, D->w_hh, H, 1.0f, dh, H);
        if (k > 0 && ((rev ? t + 1 : t) % k) == 0) { /* truncated BPTT: cut this link */
            memset(dh, 0, BH * sizeof *dh);
            memset(dc, 0, BH * sizeof *dc);
        }
    }
    const float *dgh = D->dgh ? D->dgh : D->gates;
    const float *hprev_all = D->state + (rev ? BH : 0);
    nn_gemm(1, 0, GH, In, (int)TB, 1.0f, D->gates, GH, xin, In, 1.0f, D->dw_ih, In);
    nn_gemm(1, 0, GH, H, (int)TB, 1.0f, dgh, GH, hprev_all, H, 1.0f, D->dw_hh, H);
    colsum_add(D->db_ih, D->gates, TB, GH);
    colsum_add(D->db_hh, dgh, TB, GH);
    if (dxin) nn_gemm(0, 0, (int)TB, In, GH, 1.0f, D->gates, GH, D->w_ih, In, 1.0f, dxin, In);
}

void nn_rnn_backward(nn_rnn *r, float *dx, const float *dy, const float *dlast) {
    const int B = r->B, T = r->T, H = r->H, Ho = r->Hout, C = r->C;
    if (B == 0) return;
    const size_t TB = (size_t)T * B;
    nn_rnn_layer *top = &r->L[r->layers - 1];
    memset(top->dout, 0, TB * Ho * sizeof(float));
    if (dy)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < r->len[b]; t++)
                memcpy(top->dout + ((size_t)t * B + b) * Ho, dy + ((size_t)b * T + t) * Ho,
                       Ho * sizeof(float));
    for (int l = r->layers - 1; l >= 0; l--) {
        nn_rnn_layer *L = &r->L[l];
        const float *xin = l == 0 ? r->x_tm : r->L[l - 1].out;
        float *dxin = l == 0 ? (dx ? r->dx_tm : NULL) : r->L[l - 1].dout;
        if (dxin) memset(dxin, 0, TB * L->in * sizeof(float));
        const float *dl = l == r->layers - 1 ? dlast : NULL;
        dir_backward(r, &L->dir[0], xin, dxin, L->in, L->dout, Ho, dl, Ho, B, T, 0);
        if (r->bidir) {
            int off = r->merge == NN_MERGE_CONCAT ? H : 0;
            dir_backward(r, &L->dir[1], xin, dxin, L->in, L->dout + off, Ho, dl ? dl + off : NULL,
                         Ho, B, T, 1);
        }
    }
    if (dx)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < r->len[b]; t++) {
                float *d = dx + ((size_t)b * T + t) * C;
                const float *s = r->dx_tm + ((size_t)t * B + b) * C;
                for (int c = 0; c < C; c++) d[c] += s[c];
            }
}

/* ---- single-step inference ------------------------------------------------------ */

size_t nn_rnn_step_scratch(const nn_rnn *r, int B) {
    int w = r->C > r->H ? r->C : r->H;
    return (size_t)B * (2 * (size_t)r->G * r->H + w);
}

void nn_rnn_step(const nn_rnn *r, float *y, float *h, float *c, const float *x, int B,
                 float *scratch) {
    NN_ASSERT(!r->bidir);
    const int H = r->H, GH = r->G * H;
    float *g = scratch, *hp = scratch + (size_t)B * GH, *in = hp + (size_t)B * GH;
    memcpy(in, x, (size_t)B * r->C * sizeof *in);
    for (int l = 0; l < r->layers; l++) {
        const nn_rnn_dir *D = &r->L[l].dir[0];
        int In = r->L[l].in;
        float *hl = h + (size_t)l * B * H, *cl = c ? c + (size_t)l * B * H : NULL;
        for (int b = 0; b < B; b++)
            for (int j = 0; j < GH; j++)
                g[(size_t)b * GH + j] = D->b_ih[j] + (r->cell == NN_CELL_GRU ? 0.0f : D->b_hh[j]);
        nn_gemm(0, 1, B, GH, In, 1.0f, in, In, D->w_ih, In, 1.0f, g, GH);
        float *rec = r->cell == NN_CELL_GRU ? hp : g;
        if (r->cell == NN_CELL_GRU)
            for (int b = 0; b < B; b++) memcpy(hp + (size_t)b * GH, D->b_hh, GH * sizeof *hp);
        nn_gemm(0, 1, B, GH, H, 1.0f, hl, H, D->w_hh, H, 1.0f, rec, GH);
        for (int b = 0; b < B; b++) {
            float *gb = g + (size_t)b * GH, *hb = hl + (size_t)b * H;
            if (r->cell == NN_CELL_LSTM) {
                float *cb = cl + (size_t)b * H;
                for (int j = 0; j < H; j++) {
                    float ii = nn_sigmoid_(gb[j]), ff = nn_sigmoid_(gb[H + j]);
                    float gv = nn_tanh_(gb[2 * H + j]);
                    float oo = nn_sigmoid_(gb[3 * H + j]);
                    cb[j] = ff * cb[j] + ii * gv;
                    hb[j] = oo * nn_tanh_(cb[j]);
                }
            } else if (r->cell == NN_CELL_GRU) {
                const float *hpb = hp + (size_t)b * GH;
                for (int j = 0; j < H; j++) {
                    float rr = nn_sigmoid_(gb[j] + hpb[j]);
                    float zz = nn_sigmoid_(gb[H + j] + hpb[H + j]);
                    float nv = nn_tanh_(gb[2 * H + j] + rr * hpb[2 * H + j]);
                    hb[j] = (1.0f - zz) * nv + zz * hb[j];
                }
            } else {
                for (int j = 0; j < H; j++) hb[j] = nn_tanh_(gb[j]);
            }
        }
        memcpy(in, hl, (size_t)B * H * sizeof *in);
    }
    memcpy(y, in, (size_t)B * H * sizeof *y);
}
