/* test_seq.c - sequence layers and models of models/: finite-difference gradients of
 * Conv1D, pooling, RNN/LSTM/GRU stacks (stacked, bidirectional, masked, truncated BPTT),
 * truncated BPTT against chunked runs with carried state, masking invariance, and the
 * whole cnn-classifier, rnn-classifier and rnn-lm models.
 *
 * `test_seq --dump DIR` instead writes a batch, weights, outputs and gradients of each
 * layer kind as raw float32 files for tests/torch_seq.py (the PyTorch cross-check). */
#include "models/nn.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

/* ---- helpers ---------------------------------------------------------------------- */

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    nn_rng g = nn_rng_make(seed, 0, 0, NN_RNG_USER);
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * nn_rng_uniform(&g) - 1.0f);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static float *zalloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    NN_ASSERT(p);
    return p;
}

/* Checks every registered tensor of ps (up to `per` entries each) and x (if given). */
static double check_params(double (*f)(void *), void *ctx, nn_params *ps, float h, int per) {
    double worst = 0.0;
    for (int i = 0; i < ps->n; i++) {
        nn_param *p = &ps->p[i];
        double e = nn_gradcheck(f, ctx, ps->data + p->offset, ps->grad + p->offset, p->size, h,
                                per);
        if (e > 2e-2) fprintf(stderr, "  %s: gradcheck error %g\n", p->name, e);
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

/* ---- Conv1D and pooling ------------------------------------------------------------- */

typedef struct conv_ctx {
    int B, T, C, F, k, same, To;
    int32_t len[4];
    float *x, *W, *b, *y, *cols, *R, *dx, *dW, *db, *dcols;
} conv_ctx;

static double conv_loss(void *p) {
    conv_ctx *c = p;
    nn_conv1d_forward(c->y, c->cols, c->x, c->len, c->W, c->b, c->B, c->T, c->C, c->F, c->k,
                      c->same);
    return dot(c->y, c->R, (size_t)c->B * c->To * c->F);
}

static void conv_setup(conv_ctx *c, int k, int same) {
    memset(c, 0, sizeof *c);
    c->B = 3; c->T = 7; c->C = 3; c->F = 4; c->k = k; c->same = same;
    c->len[0] = 7; c->len[1] = 4; c->len[2] = 2;
    c->To = nn_conv1d_out_len(c->T, k, same);
    size_t nx = (size_t)c->B * c->T * c->C, nw = (size_t)c->F * c->C * k;
    size_t ny = (size_t)c->B * c->To * c->F, nc = (size_t)c->B * c->To * c->C * k;
    c->x = zalloc(nx); c->dx = zalloc(nx);
    c->W = zalloc(nw); c->dW = zalloc(nw);
    c->b = zalloc(c->F); c->db = zalloc(c->F);
    c->y = zalloc(ny); c->R = zalloc(ny);
    c->cols = zalloc(nc); c->dcols = zalloc(nc);
    fill(c->x, nx, 1, 1.0f);
    fill(c->W, nw, 2, 0.5f);
    fill(c->b, c->F, 3, 0.5f);
    fill(c->R, ny, 4, 1.0f);
}

static void conv_teardown(conv_ctx *c) {
    free(c->x); free(c->dx); free(c->W); free(c->dW); free(c->b); free(c->db);
    free(c->y); free(c->R); free(c->cols); free(c->dcols);
}

static void conv_check(int k, int same) {
    conv_ctx c;
    conv_setup(&c, k, same);
    conv_loss(&c);
    nn_conv1d_backward(c.dx, c.dW, c.db, c.dcols, c.R, c.cols, c.W, c.len, c.B, c.T, c.C, c.F,
                       c.k, c.same);
    double ew = nn_gradcheck(conv_loss, &c, c.W, c.dW, (size_t)c.F * c.C * k, 1e-2f, 100);
    double eb = nn_gradcheck(conv_loss, &c, c.b, c.db, c.F, 1e-2f, 100);
    double ex = nn_gradcheck(conv_loss, &c, c.x, c.dx, (size_t)c.B * c.T * c.C, 1e-2f, 100);
    ck_assert_msg(ew < 1e-3 && eb < 1e-3 && ex < 1e-3, "conv k=%d same=%d: W %g b %g x %g", k,
                  same, ew, eb, ex);
    /* Padding positions of x never influence y, so their gradient is exactly zero. */
    for (int t = c.len[1]; t < c.T; t++)
        for (int ch = 0; ch < c.C; ch++) ck_assert_float_eq(c.dx[(c.T + t) * c.C + ch], 0.0f);
    conv_teardown(&c);
}

START_TEST(test_conv1d_same_gradients_match_finite_differences) {
    conv_check(3, 1);
    conv_check(4, 1); /* even width: asymmetric padding */
}
END_TEST

START_TEST(test_conv1d_valid_gradients_match_finite_differences) {
    conv_check(3, 0);
    conv_check(1, 0);
}
END_TEST

START_TEST(test_conv1d_matches_direct_sum) {
    /* The im2col + GEMM result equals the textbook definition, computed here directly. */
    for (int same = 0; same < 2; same++) {
        conv_ctx c;
        conv_setup(&c, 3, same);
        conv_loss(&c);
        int padl = same ? 1 : 0;
        for (int b = 0; b < c.B; b++)
            for (int t = 0; t < c.To; t++)
                for (int f = 0; f < c.F; f++) {
                    double s = c.b[f];
                    for (int ch = 0; ch < c.C; ch++)
                        for (int j = 0; j < 3; j++) {
                            int u = t + j - padl;
                            if (u < 0 || u >= c.len[b]) continue;
                            s +=
                                (double)c.W[(f * c.C + ch) * 3 + j] * c.x[(b * c.T + u) * c.C + ch];
                        }
                    ck_assert_double_eq_tol(c.y[(b * c.To + t) * c.F + f], s, 1e-5);
                }
        conv_teardown(&c);
    }
}
END_TEST

START_TEST(test_conv1d_output_ignores_padding) {
    conv_ctx c;
    conv_setup(&c, 3, 1);
    size_t ny = (size_t)c.B * c.To * c.F;
    float *y1 = zalloc(ny);
    conv_loss(&c);
    memcpy(y1, c.y, ny * sizeof *y1);
    for (int b = 0; b < c.B; b++)
        for (int t = c.len[b]; t < c.T; t++)
            for (int ch = 0; ch < c.C; ch++) c.x[(b * c.T + t) * c.C + ch] = 100.0f + t;
    conv_loss(&c);
    ck_assert_mem_eq(y1, c.y, ny * sizeof *y1);
    free(y1);
    conv_teardown(&c);
}
END_TEST

typedef struct pool_ctx {
    int B, T, F, max;
    int32_t n[3];
    int32_t am[3 * 5];
    float x[3 * 6 * 5], y[3 * 5], R[3 * 5], dx[3 * 6 * 5];
} pool_ctx;

static double pool_loss(void *p) {
    pool_ctx *c = p;
    if (c->max) nn_maxpool_time_forward(c->y, c->am, c->x, c->n, c->B, c->T, c->F);
    else nn_meanpool_time_forward(c->y, c->x, c->n, c->B, c->T, c->F);
    return dot(c->y, c->R, (size_t)c->B * c->F);
}

static void pool_check(int max) {
    pool_ctx c;
    memset(&c, 0, sizeof c);
    c.B = 3; c.T = 6; c.F = 5; c.max = max;
    c.n[0] = 6; c.n[1] = 3; c.n[2] = 1;
    fill(c.x, sizeof c.x / sizeof *c.x, 7, 1.0f);
    fill(c.R, sizeof c.R / sizeof *c.R, 8, 1.0f);
    pool_loss(&c);
    if (max) nn_maxpool_time_backward(c.dx, c.R, c.am, c.B, c.T, c.F);
    else nn_meanpool_time_backward(c.dx, c.R, c.n, c.B, c.T, c.F);
    double e = nn_gradcheck(pool_loss, &c, c.x, c.dx, sizeof c.x / sizeof *c.x, 1e-3f, 200);
    ck_assert_msg(e < 1e-3, "pool max=%d: %g", max, e);
    for (int b = 0; b < c.B; b++) /* nothing flows to positions past n[b] */
        for (int t = c.n[b]; t < c.T; t++)
            for (int f = 0; f < c.F; f++) ck_assert_float_eq(c.dx[(b * c.T + t) * c.F + f], 0.0f);
}

START_TEST(test_max_pool_gradient_matches_finite_differences) { pool_check(1); }
END_TEST
START_TEST(test_mean_pool_gradient_matches_finite_differences) { pool_check(0); }
END_TEST

/* ---- recurrent stacks -------------------------------------------------------------- */

typedef struct rnn_case {
    int cell, layers, bidir, merge, bptt, lanes;
    int use_y, use_last;
    int B, T, C, H;
    int32_t len[4]; /* 0: all full */
} rnn_case;

typedef struct rnn_ctx {
    rnn_case k;
    nn_rnn r;
    nn_params ps;
    float *x, *dx, *y, *last, *Ry, *Rl;
    const int64_t *lanes;
} rnn_ctx;

static const int32_t *case_len(const rnn_ctx *c) { return c->k.len[0] ? c->k.len : NULL; }

static double rnn_loss(void *p) {
    rnn_ctx *c = p;
    nn_rnn_forward(&c->r, c->k.use_y ? c->y : NULL, c->k.use_last ? c->last : NULL, c->x,
                   case_len(c), c->lanes, c->k.B, c->k.T);
    double s = 0.0;
    if (c->k.use_y) s += dot(c->y, c->Ry, (size_t)c->k.B * c->k.T * c->r.Hout);
    if (c->k.use_last) s += dot(c->last, c->Rl, (size_t)c->k.B * c->r.Hout);
    return s;
}

static void rnn_setup(rnn_ctx *c, const rnn_case *k, uint64_t seed) {
    memset(c, 0, sizeof *c);
    c->k = *k;
    int rc = nn_rnn_init(&c->r, &c->ps, "encoder", k->cell, k->C, k->H, k->layers, k->bidir,
                         k->merge, k->bptt, k->lanes, k->B, k->T);
    NN_ASSERT(rc == NN_OK); /* not ck_assert: --dump runs this outside Check */
    NN_ASSERT(nn_params_alloc(&c->ps, seed) == NN_OK);
    /* Larger weights than the default init so that gates saturate somewhat and the
     * recurrence matters. */
    float ws = 1.4f / sqrtf((float)k->H); /* 0.8 at H = 3; keeps wide layers unsaturated */
    fill(c->ps.data, c->ps.total, seed + 1, ws < 0.8f ? ws : 0.8f);
    size_t nx = (size_t)k->B * k->T * k->C, ny = (size_t)k->B * k->T * c->r.Hout;
    c->x = zalloc(nx); c->dx = zalloc(nx);
    c->y = zalloc(ny); c->Ry = zalloc(ny);
    c->last = zalloc((size_t)k->B * c->r.Hout); c->Rl = zalloc((size_t)k->B * c->r.Hout);
    fill(c->x, nx, seed + 2, 1.0f);
    fill(c->Ry, ny, seed + 3, 1.0f);
    fill(c->Rl, (size_t)k->B * c->r.Hout, seed + 4, 1.0f);
}

static void rnn_teardown(rnn_ctx *c) {
    nn_rnn_free(&c->r);
    nn_params_free(&c->ps);
    free(c->x); free(c->dx); free(c->y); free(c->Ry); free(c->last); free(c->Rl);
}

static void rnn_grads(rnn_ctx *c) {
    nn_params_zero_grad(&c->ps);
    memset(c->dx, 0, (size_t)c->k.B * c->k.T * c->k.C * sizeof(float));
    rnn_loss(c);
    nn_rnn_backward(&c->r, c->dx, c->k.use_y ? c->Ry : NULL, c->k.use_last ? c->Rl : NULL);
}

static const char *cell_name[3] = {"rnn", "lstm", "gru"};

static void rnn_check_h(const rnn_case *k, float h) {
    rnn_ctx c;
    rnn_setup(&c, k, 11 + k->cell);
    rnn_grads(&c);
    double ep = check_params(rnn_loss, &c, &c.ps, h, 12);
    double ex = nn_gradcheck(rnn_loss, &c, c.x, c.dx, (size_t)k->B * k->T * k->C, 1e-2f, 60);
    /* float32 forward: central differences carry ~1e-4 absolute noise at h = 1e-2, so
     * small entries of deep stacks reach ~2e-2 relative error; real bugs give O(1). */
    ck_assert_msg(ep < 3e-2 && ex < 3e-2,
                  "%s layers %d bidir %d merge %d: params %g x %g", cell_name[k->cell],
                  k->layers, k->bidir, k->merge, ep, ex);
    rnn_teardown(&c);
}

static void rnn_check(const rnn_case *k) { rnn_check_h(k, 1e-2f); }

static rnn_case base_case(int cell) {
    rnn_case k = {0};
    k.cell = cell; k.layers = 1; k.use_y = 1; k.use_last = 1;
    k.B = 3; k.T = 5; k.C = 4; k.H = 3;
    return k;
}

START_TEST(test_rnn_single_layer_gradients) {
    rnn_case k = base_case(_i);
    rnn_check(&k);
}
END_TEST

START_TEST(test_rnn_stacked_gradients_with_padding) {
    rnn_case k = base_case(_i);
    k.layers = 2;
    k.len[0] = 5; k.len[1] = 3; k.len[2] = 1;
    rnn_check(&k);
}
END_TEST

START_TEST(test_rnn_bidirectional_concat_gradients_with_padding) {
    rnn_case k = base_case(_i);
    k.layers = 2; k.bidir = 1; k.merge = NN_MERGE_CONCAT;
    k.len[0] = 2; k.len[1] = 5; k.len[2] = 4;
    rnn_check(&k);
}
END_TEST

/* H = 17 runs the vectorised gate code (16 lanes with AVX-512, 8 with AVX) and its tail. */
START_TEST(test_rnn_wide_hidden_gradients) {
    rnn_case k = base_case(_i);
    k.H = 17; k.bidir = 1; k.merge = NN_MERGE_CONCAT;
    k.len[0] = 5; k.len[1] = 2; k.len[2] = 4;
    rnn_check(&k);
}
END_TEST

START_TEST(test_rnn_bidirectional_sum_gradients_last_state_only) {
    rnn_case k = base_case(_i);
    k.bidir = 1; k.merge = NN_MERGE_SUM; k.use_y = 0;
    k.len[0] = 3; k.len[1] = 5; k.len[2] = 1;
    rnn_check(&k);
    k.use_y = 1; k.use_last = 0; k.layers = 2;
    rnn_check(&k);
}
END_TEST

/* Truncated BPTT with chunk k over T = 2k equals two separate chunk runs where the second
 * starts from the first's final state (carried, not differentiated), each with full BPTT
 * (itself checked against finite differences above): that is what "gradient cut every k
 * steps" means. */
START_TEST(test_rnn_truncated_bptt_equals_chunked_runs_with_carried_state) {
    int kk = 3;
    rnn_case k = base_case(_i);
    k.layers = 2; k.T = 2 * kk; k.use_last = 0; k.bptt = kk;
    k.len[0] = 6; k.len[1] = 4; k.len[2] = 2;
    rnn_ctx a;
    rnn_setup(&a, &k, 21);
    rnn_grads(&a);
    float *ga = zalloc(a.ps.total);
    memcpy(ga, a.ps.grad, a.ps.total * sizeof *ga);
    float *dxa = zalloc((size_t)k.B * k.T * k.C);
    memcpy(dxa, a.dx, (size_t)k.B * k.T * k.C * sizeof *dxa);
    /* the cut matters: full BPTT gives a different gradient */
    a.r.bptt = 0;
    rnn_grads(&a);
    double diff = 0.0;
    for (size_t i = 0; i < a.ps.total; i++) diff = fmax(diff, fabs(ga[i] - a.ps.grad[i]));
    ck_assert_msg(diff > 1e-3, "truncation changed nothing (%g)", diff);

    rnn_case kc = k;
    kc.T = kk; kc.bptt = 0; kc.lanes = k.B;
    rnn_ctx c;
    rnn_setup(&c, &kc, 21);
    memcpy(c.ps.data, a.ps.data, a.ps.total * sizeof(float));
    int64_t lane[3] = {0, 1, 2};
    c.lanes = lane;
    nn_rnn_reset_carry(&c.r);
    nn_params_zero_grad(&c.ps);
    for (int chunk = 0; chunk < 2; chunk++) {
        for (int b = 0; b < k.B; b++) {
            int L = k.len[b] - chunk * kk;
            c.k.len[b] = L < 0 ? 0 : (L > kk ? kk : L);
            for (int t = 0; t < kk; t++) {
                memcpy(c.x + ((size_t)b * kk + t) * k.C,
                       a.x + ((size_t)b * k.T + chunk * kk + t) * k.C, k.C * sizeof(float));
                memcpy(c.Ry + ((size_t)b * kk + t) * c.r.Hout,
                       a.Ry + ((size_t)b * k.T + chunk * kk + t) * c.r.Hout,
                       c.r.Hout * sizeof(float));
            }
        }
        memset(c.dx, 0, (size_t)k.B * kk * k.C * sizeof(float));
        rnn_loss(&c);
        nn_rnn_backward(&c.r, c.dx, c.Ry, NULL);
        for (int b = 0; b < k.B; b++)
            for (int t = 0; t < kk; t++)
                for (int ch = 0; ch < k.C; ch++)
                    ck_assert_double_eq_tol(c.dx[((size_t)b * kk + t) * k.C + ch],
                                            dxa[((size_t)b * k.T + chunk * kk + t) * k.C + ch],
                                            1e-5);
    }
    for (size_t i = 0; i < a.ps.total; i++) ck_assert_double_eq_tol(c.ps.grad[i], ga[i], 1e-4);

    rnn_teardown(&a);
    free(ga); free(dxa);
    rnn_teardown(&c);
}
END_TEST

/* The reverse direction with truncation equals a forward-only stack run on the time-
 * reversed sequence (for full-length rows, T a multiple of the chunk). */
START_TEST(test_rnn_reverse_direction_truncation_mirrors_forward) {
    int kk = 2;
    rnn_case k = base_case(_i);
    k.T = 3 * kk; k.bptt = kk; k.bidir = 1; k.merge = NN_MERGE_CONCAT; k.use_last = 0;
    rnn_ctx a;
    rnn_setup(&a, &k, 31);
    int H = k.H, Ho = a.r.Hout;
    for (size_t i = 0; i < (size_t)k.B * k.T; i++) /* loss only on the reverse half */
        for (int j = 0; j < H; j++) a.Ry[i * Ho + j] = 0.0f;
    rnn_grads(&a);
    rnn_case kf = k;
    kf.bidir = 0;
    rnn_ctx f;
    rnn_setup(&f, &kf, 31);
    nn_rnn_dir *src = &a.r.L[0].dir[1], *dst = &f.r.L[0].dir[0];
    size_t GH = (size_t)a.r.G * H;
    memcpy(dst->w_ih, src->w_ih, GH * k.C * sizeof(float));
    memcpy(dst->w_hh, src->w_hh, GH * H * sizeof(float));
    memcpy(dst->b_ih, src->b_ih, GH * sizeof(float));
    memcpy(dst->b_hh, src->b_hh, GH * sizeof(float));
    for (int b = 0; b < k.B; b++)
        for (int t = 0; t < k.T; t++) {
            memcpy(f.x + ((size_t)b * k.T + t) * k.C, a.x + ((size_t)b * k.T + k.T - 1 - t) * k.C,
                   k.C * sizeof(float));
            memcpy(f.Ry + ((size_t)b * k.T + t) * H,
                   a.Ry + ((size_t)b * k.T + k.T - 1 - t) * Ho + H, H * sizeof(float));
        }
    rnn_grads(&f);
    for (size_t i = 0; i < GH * k.C; i++)
        ck_assert_double_eq_tol(dst->dw_ih[i], src->dw_ih[i], 1e-4);
    for (size_t i = 0; i < GH * H; i++) ck_assert_double_eq_tol(dst->dw_hh[i], src->dw_hh[i], 1e-4);
    for (size_t i = 0; i < GH; i++) ck_assert_double_eq_tol(dst->db_hh[i], src->db_hh[i], 1e-4);
    rnn_teardown(&a);
    rnn_teardown(&f);
}
END_TEST

/* Outputs of a row depend neither on its padding contents nor on other rows: compare
 * against the row run alone with T = its length. */
START_TEST(test_rnn_outputs_ignore_padding) {
    rnn_case k = base_case(_i);
    k.layers = 2; k.bidir = 1;
    k.len[0] = 5; k.len[1] = 2; k.len[2] = 4;
    rnn_ctx a;
    rnn_setup(&a, &k, 41);
    rnn_loss(&a);
    size_t ny = (size_t)k.B * k.T * a.r.Hout, nl = (size_t)k.B * a.r.Hout;
    float *y1 = zalloc(ny), *l1 = zalloc(nl);
    memcpy(y1, a.y, ny * sizeof *y1);
    memcpy(l1, a.last, nl * sizeof *l1);
    for (int b = 0; b < k.B; b++)
        for (int t = k.len[b]; t < k.T; t++)
            for (int ch = 0; ch < k.C; ch++) a.x[((size_t)b * k.T + t) * k.C + ch] = 50.0f - t;
    rnn_loss(&a);
    ck_assert_mem_eq(y1, a.y, ny * sizeof *y1);
    ck_assert_mem_eq(l1, a.last, nl * sizeof *l1);
    for (int b = 0; b < k.B; b++) /* padded outputs are zero */
        for (int t = k.len[b]; t < k.T; t++)
            for (int j = 0; j < a.r.Hout; j++)
                ck_assert_float_eq(y1[((size_t)b * k.T + t) * a.r.Hout + j], 0.0f);
    /* row 1 alone, unpadded */
    int L = k.len[1], Ho = a.r.Hout;
    float *y2 = zalloc((size_t)L * Ho), *l2 = zalloc(Ho);
    nn_rnn_forward(&a.r, y2, l2, a.x + (size_t)1 * k.T * k.C, NULL, NULL, 1, L);
    for (int i = 0; i < L * Ho; i++)
        ck_assert_double_eq_tol(y2[i], y1[(size_t)1 * k.T * Ho + i], 1e-5);
    for (int j = 0; j < Ho; j++) ck_assert_double_eq_tol(l2[j], l1[Ho + j], 1e-5);
    free(y1); free(l1); free(y2); free(l2);
    rnn_teardown(&a);
}
END_TEST

/* nn_rnn_step (generation) reproduces nn_rnn_forward step by step. */
START_TEST(test_rnn_step_matches_forward) {
    rnn_case k = base_case(_i);
    k.layers = 2;
    rnn_ctx a;
    rnn_setup(&a, &k, 51);
    rnn_loss(&a);
    int B = k.B, H = k.H;
    float *h = zalloc((size_t)k.layers * B * H), *cc = zalloc((size_t)k.layers * B * H);
    float *xt = zalloc((size_t)B * k.C), *yt = zalloc((size_t)B * H);
    float *scr = zalloc(nn_rnn_step_scratch(&a.r, B));
    for (int t = 0; t < k.T; t++) {
        for (int b = 0; b < B; b++)
            memcpy(xt + (size_t)b * k.C, a.x + ((size_t)b * k.T + t) * k.C, k.C * sizeof(float));
        nn_rnn_step(&a.r, yt, h, cc, xt, B, scr);
        for (int b = 0; b < B; b++)
            for (int j = 0; j < H; j++)
                ck_assert_double_eq_tol(yt[b * H + j], a.y[((size_t)b * k.T + t) * H + j], 1e-5);
    }
    free(h); free(cc); free(xt); free(yt); free(scr);
    rnn_teardown(&a);
}
END_TEST

START_TEST(test_rnn_init_rejects_bad_configuration) {
    nn_rnn r;
    nn_params ps = {0};
    ck_assert_int_eq(nn_rnn_init(&r, &ps, "e", 7, 4, 3, 1, 0, 0, 0, 0, 2, 2), NN_ERR_CONFIG);
    ck_assert_int_eq(nn_rnn_init(&r, &ps, "e", NN_CELL_LSTM, 4, 3, 0, 0, 0, 0, 0, 2, 2),
                     NN_ERR_CONFIG);
    ck_assert_int_eq(nn_rnn_init(&r, &ps, "e", NN_CELL_LSTM, 4, 3, 1, 1, 0, 0, 4, 2, 2),
                     NN_ERR_CONFIG);
    ck_assert(strstr(nn_error(), "forward-only") != NULL);
    ck_assert_int_eq(nn_cell_parse("lstm"), NN_CELL_LSTM);
    ck_assert_int_eq(nn_cell_parse("transformer"), -1);
    nn_params_free(&ps);
}
END_TEST


/* ---- whole models ----------------------------------------------------------------- */

typedef struct model_ctx {
    nn_model m;
    nn_batch b;
    int32_t x[3 * 6], y[3 * 6], len[3];
    int64_t index[3];
} model_ctx;

static double model_loss(void *p) {
    model_ctx *c = p;
    nn_stats st = {0};
    int rc = c->m.ops->evaluate(&c->m, &c->b, &st);
    NN_ASSERT(rc == NN_OK);
    return st.loss;
}

/* Builds a model from "key=value" pairs on a tiny batch: B 3, T 6, vocab 12, 3 classes. */
static void model_setup(model_ctx *c, const char *name, const char *const *kv, int lm) {
    memset(c, 0, sizeof *c);
    nn_config cfg = {0};
    for (int i = 0; kv[i]; i += 2) ck_assert_int_eq(nn_config_set(&cfg, kv[i], kv[i + 1]), NN_OK);
    nn_dims d = {0};
    d.vocab = 12; d.classes = 3; d.max_len = 6; d.max_batch = 3;
    const nn_model_ops *ops = nn_model_find(name);
    ck_assert_ptr_nonnull(ops);
    int rc = nn_model_init(&c->m, ops, &cfg, &d, 99);
    ck_assert_msg(rc == NN_OK, "%s: %s", name, nn_error());
    nn_config_free(&cfg);
    nn_rng g = nn_rng_make(5, 0, 0, NN_RNG_USER);
    c->len[0] = 6; c->len[1] = 4; c->len[2] = 2;
    for (int b = 0; b < 3; b++) {
        c->index[b] = 10 + b;
        for (int t = 0; t < 6; t++) {
            int in = t < c->len[b];
            c->x[b * 6 + t] = in ? 4 + (int)nn_rng_below(&g, 8) : NN_PAD;
            c->y[b * 6 + t] = in ? 4 + (int)nn_rng_below(&g, 8) : NN_PAD;
        }
    }
    c->b.B = 3; c->b.T = 6; c->b.x = c->x; c->b.x_len = c->len; c->b.index = c->index;
    if (lm) {
        c->b.U = 6;
        c->b.y = c->y;
    } else {
        for (int b = 0; b < 3; b++) c->y[b] = b % 3;
        c->b.y = c->y;
    }
}

static void model_check(const char *name, const char *const *kv, int lm, float h, double tol) {
    model_ctx c;
    model_setup(&c, name, kv, lm);
    nn_params_zero_grad(&c.m.params);
    nn_stats st = {0};
    ck_assert_int_eq(c.m.ops->forward_backward(&c.m, &c.b, 1.0f, &st), NN_OK);
    ck_assert_double_eq_tol(st.loss, model_loss(&c), 1e-4 * fabs(st.loss));
    ck_assert_double_eq(st.count, lm ? 12.0 : 3.0);
    double e = check_params(model_loss, &c, &c.m.params, h, 16);
    ck_assert_msg(e < tol, "%s: gradcheck %g", name, e);
    /* padding contents do not change the loss */
    double l0 = model_loss(&c);
    for (int b = 1; b < 3; b++)
        for (int t = c.len[b]; t < 6; t++) c.x[b * 6 + t] = 5 + t;
    ck_assert_double_eq_tol(model_loss(&c), l0, 1e-6 * fabs(l0));
    nn_model_free(&c.m);
}

START_TEST(test_cnn_classifier_gradients) {
    const char *mx[] = {"dim", "5", "filters", "4", "width", "2,3", "pool", "max", NULL};
    model_check("cnn-classifier", mx, 0, 3e-3f, 3e-2);
    const char *mean[] = {"dim", "5", "filters", "4", "width", "3", "pool", "mean", "padding",
                          "valid", NULL};
    model_check("cnn-classifier", mean, 0, 1e-2f, 3e-2);
}
END_TEST

START_TEST(test_rnn_classifier_gradients) {
    const char *uni[] = {"cell", "gru", "dim", "4", "hidden", "3", "layers", "2", NULL};
    model_check("rnn-classifier", uni, 0, 3e-2f, 3e-2);
    const char *bi[] = {"cell", "lstm", "dim", "4", "hidden", "3", "bidirectional", "1", NULL};
    model_check("rnn-classifier", bi, 0, 3e-2f, 3e-2);
}
END_TEST

START_TEST(test_rnn_lm_gradients) {
    const char *untied[] = {"cell", "lstm", "dim", "4", "hidden", "3", "layers", "2", NULL};
    model_check("rnn-lm", untied, 1, 3e-2f, 3e-2);
    const char *tied[] = {"cell", "rnn", "dim", "3", "hidden", "3", "layers", "1", "tie", "1",
                          NULL};
    model_check("rnn-lm", tied, 1, 3e-2f, 3e-2);
}
END_TEST

START_TEST(test_models_reject_bad_configuration_and_data) {
    model_ctx c;
    const char *kv[] = {"cell", "gru", "dim", "4", "hidden", "3", NULL};
    model_setup(&c, "rnn-lm", kv, 1);
    nn_stats st = {0};
    c.x[3] = 12; /* outside the vocabulary */
    ck_assert_int_eq(c.m.ops->evaluate(&c.m, &c.b, &st), NN_ERR_DATA);
    nn_model_free(&c.m);
    nn_config cfg = {0};
    nn_dims d = {0};
    d.vocab = 12; d.classes = 3; d.max_len = 6; d.max_batch = 3;
    nn_model m = {0};
    nn_config_set(&cfg, "tie", "1");
    nn_config_set(&cfg, "dim", "4");
    nn_config_set(&cfg, "hidden", "3");
    ck_assert_int_eq(nn_model_init(&m, &nn_rnn_lm_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "width", "3,x");
    ck_assert_int_eq(nn_model_init(&m, &nn_cnn_classifier_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "width", "3");
    nn_config_set(&cfg, "pool", "min");
    ck_assert_int_eq(nn_model_init(&m, &nn_cnn_classifier_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_free(&cfg);
}
END_TEST

/* Greedy generation follows the same network as training: feeding prompt + generated ids
 * back through evaluate, every generated id is the argmax at its position. */
START_TEST(test_rnn_lm_greedy_generation_matches_forward_argmax) {
    model_ctx c;
    const char *kv[] = {"cell", "lstm", "dim", "4", "hidden", "5", "layers", "2", NULL};
    model_setup(&c, "rnn-lm", kv, 1);
    int pi = nn_params_find(&c.m.params, "output/bias");
    ck_assert_int_ge(pi, 0);
    c.m.params.data[c.m.params.p[pi].offset + NN_PAD] = -100.0f; /* argmax never PAD */
    c.m.params.data[c.m.params.p[pi].offset + NN_EOS] = -100.0f; /* nor EOS: no early stop */
    int32_t prompt[2] = {5, 7}, out[4];
    int n = c.m.ops->generate(&c.m, prompt, 2, 4, 0.0f, 0, 1, out);
    ck_assert_int_eq(n, 4);
    int32_t seq[6] = {5, 7, out[0], out[1], out[2], out[3]};
    nn_batch b = {0};
    int32_t y[6] = {NN_PAD, out[0], out[1], out[2], out[3], NN_PAD}, len[1] = {6};
    int64_t idx[1] = {0};
    b.B = 1; b.T = 6; b.U = 6; b.x = seq; b.y = y; b.x_len = len; b.index = idx;
    nn_stats st = {0};
    ck_assert_int_eq(c.m.ops->evaluate(&c.m, &b, &st), NN_OK);
    ck_assert_double_eq(st.count, 4.0);
    ck_assert_double_eq(st.correct, 4.0);
    /* sampling: deterministic per seed, ids in range, top_k = 1 is greedy */
    int32_t s1[8], s2[8], g1[8];
    int n1 = c.m.ops->generate(&c.m, prompt, 2, 8, 1.0f, 0, 42, s1);
    int n2 = c.m.ops->generate(&c.m, prompt, 2, 8, 1.0f, 0, 42, s2);
    ck_assert_int_eq(n1, n2);
    ck_assert_mem_eq(s1, s2, (size_t)n1 * sizeof *s1);
    for (int i = 0; i < n1; i++) ck_assert(s1[i] > NN_PAD && s1[i] < 12);
    int k1 = c.m.ops->generate(&c.m, prompt, 2, 4, 0.7f, 1, 42, g1);
    ck_assert_int_eq(k1, 4);
    ck_assert_mem_eq(g1, out, 4 * sizeof *g1);
    nn_model_free(&c.m);
}
END_TEST

/* A tiny LM learns a deterministic cycle with plain SGD: the loss must fall a lot. */
START_TEST(test_rnn_lm_learns_a_cycle) {
    for (int cell = 0; cell < 3; cell++) {
        model_ctx c;
        const char *kv[] = {"cell", cell_name[cell], "dim", "8", "hidden", "16", "layers", "1",
                            NULL};
        model_setup(&c, "rnn-lm", kv, 1);
        for (int b = 0; b < 3; b++) {
            c.len[b] = 6;
            for (int t = 0; t < 6; t++) {
                c.x[b * 6 + t] = 4 + (b + t) % 5;
                c.y[b * 6 + t] = 4 + (b + t + 1) % 5;
            }
        }
        double first = 0.0, final = 0.0;
        for (int step = 0; step < 150; step++) {
            nn_params_zero_grad(&c.m.params);
            nn_stats st = {0};
            ck_assert_int_eq(c.m.ops->forward_backward(&c.m, &c.b, 1.0f / 18.0f, &st), NN_OK);
            if (step == 0) first = st.loss / st.count;
            final = st.loss / st.count;
            for (size_t i = 0; i < c.m.params.total; i++)
                c.m.params.data[i] -= 1.0f * c.m.params.grad[i];
        }
        ck_assert_msg(final < 0.2 * first && final < 0.3, "%s: loss %g -> %g", cell_name[cell],
                      first, final);
        nn_model_free(&c.m);
    }
}
END_TEST


/* The fused output layer splits rows over threads in fixed chunks: 1 and 3 threads give
 * the same loss and gradients (and exercise the threaded path under the sanitizers). */
START_TEST(test_rnn_lm_same_result_on_one_and_three_threads) {
    nn_config cfg = {0};
    nn_config_set(&cfg, "dim", "8");
    nn_config_set(&cfg, "hidden", "8");
    nn_dims d = {0};
    d.vocab = 50; d.max_len = 40; d.max_batch = 5;
    nn_model m = {0};
    ck_assert_int_eq(nn_model_init(&m, &nn_rnn_lm_ops, &cfg, &d, 3), NN_OK);
    nn_config_free(&cfg);
    int32_t x[5 * 40], y[5 * 40], len[5];
    int64_t idx[5];
    nn_rng g = nn_rng_make(9, 0, 0, NN_RNG_USER);
    for (int b = 0; b < 5; b++) {
        len[b] = 40 - 7 * b;
        idx[b] = b;
        for (int t = 0; t < 40; t++) {
            x[b * 40 + t] = t < len[b] ? 4 + (int)nn_rng_below(&g, 46) : NN_PAD;
            y[b * 40 + t] = t < len[b] ? 4 + (int)nn_rng_below(&g, 46) : NN_PAD;
        }
    }
    nn_batch bt = {0};
    bt.B = 5; bt.T = 40; bt.U = 40; bt.x = x; bt.y = y; bt.x_len = len; bt.index = idx;
    int saved = nn_get_threads();
    float *g1 = zalloc(m.params.total);
    nn_stats s1 = {0}, s3 = {0};
    nn_set_threads(1);
    nn_params_zero_grad(&m.params);
    ck_assert_int_eq(m.ops->forward_backward(&m, &bt, 0.01f, &s1), NN_OK);
    memcpy(g1, m.params.grad, m.params.total * sizeof *g1);
    nn_set_threads(3);
    nn_params_zero_grad(&m.params);
    ck_assert_int_eq(m.ops->forward_backward(&m, &bt, 0.01f, &s3), NN_OK);
    nn_set_threads(saved);
    ck_assert_double_eq(s1.count, 5 * 40 - 7 * (0 + 1 + 2 + 3 + 4));
    ck_assert_double_eq(s1.count, s3.count);
    ck_assert_double_eq_tol(s1.loss, s3.loss, 1e-6 * s1.loss);
    for (size_t i = 0; i < m.params.total; i++)
        ck_assert_double_eq_tol(g1[i], m.params.grad[i], 1e-6);
    free(g1);
    nn_model_free(&m);
}
END_TEST

/* ---- --dump DIR: inputs, weights, outputs and gradients for tests/torch_seq.py ---------- */
/* Each tensor is DIR/<case>.<name>.bin: int32 magic 0x51534B4C ("LKSQ"), int32 ndim,
 * int32 dims[ndim], then float32 data (little-endian, row-major). DIR/cases.txt lists one
 * case per line: "conv NAME k same" or "rnn NAME cell layers bidir". Parameter tensors
 * use the registry names with '/' replaced by '.'. */

static int dump_tensor(const char *dir, const char *cas, const char *name, const float *x,
                       int ndim, const int *dims) {
    char path[1024], nm[NN_NAME_MAX];
    snprintf(nm, sizeof nm, "%s", name);
    for (char *q = nm; *q; q++)
        if (*q == '/') *q = '.';
    snprintf(path, sizeof path, "%s/%s.%s.bin", dir, cas, nm);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    int32_t hdr[2 + NN_MAX_DIMS] = {0x51534B4C, ndim};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        hdr[2 + i] = dims[i];
        n *= (size_t)dims[i];
    }
    int ok = fwrite(hdr, sizeof(int32_t), 2 + ndim, f) == (size_t)(2 + ndim) &&
             fwrite(x, sizeof(float), n, f) == n;
    ok &= fclose(f) == 0;
    return ok ? 0 : -1;
}

static int dump_conv(const char *dir, FILE *man, const char *cas, int k, int same) {
    conv_ctx c;
    conv_setup(&c, k, same);
    conv_loss(&c);
    nn_conv1d_backward(c.dx, c.dW, c.db, c.dcols, c.R, c.cols, c.W, c.len, c.B, c.T, c.C, c.F,
                       c.k, c.same);
    float lenf[3];
    for (int b = 0; b < c.B; b++) lenf[b] = (float)c.len[b];
    int dx_[3] = {c.B, c.T, c.C}, dw_[3] = {c.F, c.C, k}, db_[1] = {c.F}, dy_[3] = {c.B, c.To, c.F},
        dl_[1] = {c.B};
    int rc = dump_tensor(dir, cas, "x", c.x, 3, dx_) | dump_tensor(dir, cas, "len", lenf, 1, dl_) |
             dump_tensor(dir, cas, "weight", c.W, 3, dw_) |
             dump_tensor(dir, cas, "bias", c.b, 1, db_) | dump_tensor(dir, cas, "y", c.y, 3, dy_) |
             dump_tensor(dir, cas, "dy", c.R, 3, dy_) | dump_tensor(dir, cas, "dx", c.dx, 3, dx_) |
             dump_tensor(dir, cas, "dweight", c.dW, 3, dw_) |
             dump_tensor(dir, cas, "dbias", c.db, 1, db_);
    fprintf(man, "conv %s %d %d\n", cas, k, same);
    conv_teardown(&c);
    return rc;
}

static int dump_rnn(const char *dir, FILE *man, const char *cas, int cell, int layers, int bidir,
                    int padded) {
    rnn_case k = {0};
    k.cell = cell; k.layers = layers; k.bidir = bidir; k.merge = NN_MERGE_CONCAT;
    k.use_y = 1; k.use_last = 1;
    k.B = 4; k.T = 7; k.C = 5; k.H = padded ? 19 : 6; /* 19: vector lanes plus a tail */
    if (padded) { k.len[0] = 7; k.len[1] = 3; k.len[2] = 5; k.len[3] = 1; }
    rnn_ctx c;
    rnn_setup(&c, &k, 70 + cell);
    rnn_grads(&c);
    int Ho = c.r.Hout;
    float lenf[4];
    for (int b = 0; b < k.B; b++) lenf[b] = padded ? (float)k.len[b] : (float)k.T;
    int dx_[3] = {k.B, k.T, k.C}, dy_[3] = {k.B, k.T, Ho}, dl_[2] = {k.B, Ho}, dn_[1] = {k.B};
    int rc = dump_tensor(dir, cas, "x", c.x, 3, dx_) | dump_tensor(dir, cas, "len", lenf, 1, dn_) |
             dump_tensor(dir, cas, "y", c.y, 3, dy_) | dump_tensor(dir, cas, "dy", c.Ry, 3, dy_) |
             dump_tensor(dir, cas, "last", c.last, 2, dl_) |
             dump_tensor(dir, cas, "dlast", c.Rl, 2, dl_) |
             dump_tensor(dir, cas, "dx", c.dx, 3, dx_);
    for (int i = 0; i < c.ps.n; i++) {
        nn_param *p = &c.ps.p[i];
        char gname[NN_NAME_MAX + 8];
        snprintf(gname, sizeof gname, "grad.%s", p->name);
        rc |= dump_tensor(dir, cas, p->name, c.ps.data + p->offset, p->ndim, p->shape);
        rc |= dump_tensor(dir, cas, gname, c.ps.grad + p->offset, p->ndim, p->shape);
    }
    fprintf(man, "rnn %s %s %d %d\n", cas, cell_name[cell], layers, bidir);
    rnn_teardown(&c);
    return rc;
}

static int dump_all(const char *dir) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    FILE *man = fopen(path, "w");
    if (!man) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    int rc = dump_conv(dir, man, "conv_same3", 3, 1) | dump_conv(dir, man, "conv_same4", 4, 1) |
             dump_conv(dir, man, "conv_valid3", 3, 0);
    static const char *cn[3] = {"rnn", "lstm", "gru"};
    for (int cell = 0; cell < 3; cell++) {
        char cas[64];
        snprintf(cas, sizeof cas, "%s_bidir2_padded", cn[cell]);
        rc |= dump_rnn(dir, man, cas, cell, 2, 1, 1);
        snprintf(cas, sizeof cas, "%s_uni2", cn[cell]);
        rc |= dump_rnn(dir, man, cas, cell, 2, 0, 0);
    }
    rc |= fclose(man) != 0;
    return rc ? 1 : 0;
}

/* ---- main ----------------------------------------------------------------------- */

static Suite *seq_suite(void) {
    Suite *s = suite_create("seq");
    TCase *tc = tcase_create("conv");
    tcase_add_test(tc, test_conv1d_same_gradients_match_finite_differences);
    tcase_add_test(tc, test_conv1d_valid_gradients_match_finite_differences);
    tcase_add_test(tc, test_conv1d_matches_direct_sum);
    tcase_add_test(tc, test_conv1d_output_ignores_padding);
    tcase_add_test(tc, test_max_pool_gradient_matches_finite_differences);
    tcase_add_test(tc, test_mean_pool_gradient_matches_finite_differences);
    suite_add_tcase(s, tc);
    tc = tcase_create("rnn");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_rnn_single_layer_gradients, 0, 3);
    tcase_add_loop_test(tc, test_rnn_stacked_gradients_with_padding, 0, 3);
    tcase_add_loop_test(tc, test_rnn_bidirectional_concat_gradients_with_padding, 0, 3);
    tcase_add_loop_test(tc, test_rnn_bidirectional_sum_gradients_last_state_only, 0, 3);
    tcase_add_loop_test(tc, test_rnn_wide_hidden_gradients, 0, 3);
    tcase_add_loop_test(tc, test_rnn_truncated_bptt_equals_chunked_runs_with_carried_state, 0, 3);
    tcase_add_loop_test(tc, test_rnn_reverse_direction_truncation_mirrors_forward, 0, 3);
    tcase_add_loop_test(tc, test_rnn_outputs_ignore_padding, 0, 3);
    tcase_add_loop_test(tc, test_rnn_step_matches_forward, 0, 3);
    tcase_add_test(tc, test_rnn_init_rejects_bad_configuration);
    suite_add_tcase(s, tc);
    tc = tcase_create("models");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_cnn_classifier_gradients);
    tcase_add_test(tc, test_rnn_classifier_gradients);
    tcase_add_test(tc, test_rnn_lm_gradients);
    tcase_add_test(tc, test_models_reject_bad_configuration_and_data);
    tcase_add_test(tc, test_rnn_lm_greedy_generation_matches_forward_argmax);
    tcase_add_test(tc, test_rnn_lm_learns_a_cycle);
    tcase_add_test(tc, test_rnn_lm_same_result_on_one_and_three_threads);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--dump")) return dump_all(argv[2]);
    SRunner *sr = srunner_create(seq_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
