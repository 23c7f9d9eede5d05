/* test_captioner.c - issue 11: image captioning with attention.
 *   layers: Conv2D forward against a direct loop and its finite-difference gradients
 *           (stride 1 and 2, with and without padding); 2-D max pooling likewise;
 *   model:  finite-difference gradients of the whole captioner (lstm and gru, with and
 *           without attention, padded captions), bad configurations and batches rejected,
 *           beam 1 equals greedy, beam search never scores below greedy, attention rows
 *           are distributions, the attention picture has its promised size;
 *   data:   the io readers of io/dense.c on tests/data/captions_small.h5
 *           (scripts/prepare-captions fixture), and a short Adam run on that fixture that
 *           drives the loss clearly down, below what an image-blind model can reach.
 * Every gradient check also requires the negated gradient to fail. */
#include <check.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"
#include "models/nn.h"

#define FIXTURE "data/captions_small.h5"

/* ---- helpers ------------------------------------------------------------------------ */

static void fill_uniform(float *x, size_t n, float lo, float hi, uint64_t key) {
    nn_rng r = nn_rng_make(991, key, 0, NN_RNG_USER);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * nn_rng_uniform(&r);
}

/* Asserts the gradient passes at tol and that the negated gradient fails. */
static void check_grad(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                       float h, double tol, int checks, const char *what) {
    double err = nn_gradcheck(f, ctx, x, g, n, h, checks);
    if (getenv("NN_TEST_VERBOSE")) fprintf(stderr, "%-48s error %.2e (tol %.0e)\n", what, err, tol);
    ck_assert_msg(err < tol, "%s: gradient check error %g >= %g", what, err, tol);
    float *neg = malloc(n * sizeof *neg);
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        neg[i] = -g[i];
        if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
    }
    ck_assert_msg(gmax > 1e-3, "%s: gradient is all zero", what);
    double bad = nn_gradcheck(f, ctx, x, neg, n, h, checks);
    ck_assert_msg(bad > 0.5, "%s: flipped gradient passed (error %g)", what, bad);
    free(neg);
}

/* Worst over `checks` entries spread over x of the best error among the steps 1e-2, 3e-3,
 * 1e-3 and 3e-4. A whole model has kinks (ReLU, max pooling): a large step on an encoder weight
 * can move a pre-activation across zero or swap a window's maximum, while a small step on
 * a decoder weight with a ~1e-4 gradient measures float32 noise. A wrong gradient fails
 * at every step. Even so, float32 noise and kinks leave errors up to ~3e-2 on a few
 * entries (NN_TEST_DEBUG=1 prints the differences over a range of steps), so the model
 * checks use 5e-2; a wrong gradient gives errors of order 1. */
static double grad_err_steps(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                             int checks) {
    static const float hs[4] = {1e-2f, 3e-3f, 1e-3f, 3e-4f};
    size_t k = n < (size_t)checks ? n : (size_t)checks;
    double worst = 0;
    for (size_t j = 0; j < k; j++) {
        size_t i = k == n ? j : (size_t)(((double)j + 0.5) * (double)n / (double)k);
        double best = INFINITY;
        for (int s = 0; s < 4; s++) {
            double e = nn_gradcheck(f, ctx, x + i, g + i, 1, hs[s], 1);
            if (!(e >= best)) best = e;
        }
        if (getenv("NN_TEST_DEBUG") && best > 1e-2) {
            fprintf(stderr, "   entry %zu g %g err %g:", i, g[i], best);
            for (float h = 1e-1f; h > 1e-5f; h /= 3.0f) {
                float o = x[i];
                x[i] = o + h; double a = f(ctx); x[i] = o - h; double b2 = f(ctx); x[i] = o;
                fprintf(stderr, " %.5f", (a - b2) / (2 * h));
            }
            fprintf(stderr, "\n");
        }
        if (!(best <= worst)) worst = best;
    }
    return worst;
}

static void check_grad_steps(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                             double tol, int checks, const char *what) {
    double err = grad_err_steps(f, ctx, x, g, n, checks);
    if (getenv("NN_TEST_VERBOSE")) fprintf(stderr, "%-48s error %.2e (tol %.0e)\n", what, err, tol);
    ck_assert_msg(err < tol, "%s: gradient check error %g >= %g", what, err, tol);
    float *neg = malloc(n * sizeof *neg);
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        neg[i] = -g[i];
        if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
    }
    double bad = grad_err_steps(f, ctx, x, neg, n, checks);
    ck_assert_msg(gmax < 1e-3 || bad > 0.5, "%s: flipped gradient passed (error %g)", what, bad);
    free(neg);
}

/* ---- Conv2D --------------------------------------------------------------------------- */

typedef struct conv_ctx {
    int B, H, W, C, OC, k, s, pad, Ho, Wo;
    float *x, *Wt, *b, *y, *cols, *R;
} conv_ctx;

/* sum(y * R) in double: linear in every input, so central differences are exact. */
static double conv_loss(void *p) {
    conv_ctx *c = p;
    nn_conv2d_forward(c->y, c->cols, c->x, c->Wt, c->b, c->B, c->H, c->W, c->C, c->OC, c->k,
                      c->s, c->pad);
    double L = 0;
    for (size_t i = 0; i < (size_t)c->B * c->Ho * c->Wo * c->OC; i++) L += (double)c->y[i] * c->R[i];
    return L;
}

static void conv_case(int H, int W, int C, int OC, int k, int s, int pad) {
    conv_ctx c = {2, H, W, C, OC, k, s, pad, nn_conv2d_out(H, k, s, pad),
                  nn_conv2d_out(W, k, s, pad), NULL, NULL, NULL, NULL, NULL, NULL};
    size_t nx = (size_t)c.B * H * W * C, nw = (size_t)OC * C * k * k;
    size_t ny = (size_t)c.B * c.Ho * c.Wo * OC, nc = (size_t)c.B * c.Ho * c.Wo * C * k * k;
    ck_assert_int_gt(c.Ho, 0);
    c.x = malloc(nx * sizeof(float));
    c.Wt = malloc(nw * sizeof(float));
    c.b = malloc(OC * sizeof(float));
    c.y = malloc(ny * sizeof(float));
    c.R = malloc(ny * sizeof(float));
    c.cols = malloc(nc * sizeof(float));
    float *dcols = malloc(nc * sizeof(float));
    fill_uniform(c.x, nx, -1, 1, 1);
    fill_uniform(c.Wt, nw, -1, 1, 2);
    fill_uniform(c.b, OC, -1, 1, 3);
    fill_uniform(c.R, ny, -1, 1, 4);
    /* forward against the definition */
    conv_loss(&c);
    double worst = 0;
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < c.Ho; i++)
            for (int j = 0; j < c.Wo; j++)
                for (int o = 0; o < OC; o++) {
                    double acc = c.b[o];
                    for (int ch = 0; ch < C; ch++)
                        for (int u = 0; u < k; u++)
                            for (int v = 0; v < k; v++) {
                                int hi = i * s + u - pad, wi = j * s + v - pad;
                                if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
                                acc += (double)c.Wt[((o * C + ch) * k + u) * k + v] *
                                       c.x[(((size_t)b * H + hi) * W + wi) * C + ch];
                            }
                    double got = c.y[(((size_t)b * c.Ho + i) * c.Wo + j) * OC + o];
                    if (fabs(got - acc) > worst) worst = fabs(got - acc);
                }
    ck_assert_msg(worst < 1e-5, "conv2d forward differs from the definition by %g", worst);
    /* backward accumulates: start from a known offset and subtract it. The loss is linear
     * in each input, so a large step (0.1) keeps float32 noise out of the differences. */
    float *dx = malloc(nx * sizeof(float)), *dW = malloc(nw * sizeof(float));
    float *db = malloc(OC * sizeof(float));
    for (size_t i = 0; i < nx; i++) dx[i] = 0.5f;
    for (size_t i = 0; i < nw; i++) dW[i] = 0.5f;
    for (int i = 0; i < OC; i++) db[i] = 0.5f;
    nn_conv2d_backward(dx, dW, db, dcols, c.R, c.cols, c.Wt, c.B, H, W, C, OC, k, s, pad);
    for (size_t i = 0; i < nx; i++) dx[i] -= 0.5f;
    for (size_t i = 0; i < nw; i++) dW[i] -= 0.5f;
    for (int i = 0; i < OC; i++) db[i] -= 0.5f;
    char what[96];
    snprintf(what, sizeof what, "conv2d %dx%dx%d k%d s%d p%d dx", H, W, C, k, s, pad);
    check_grad(conv_loss, &c, c.x, dx, nx, 0.1f, 1e-3, 400, what);
    snprintf(what, sizeof what, "conv2d %dx%dx%d k%d s%d p%d dW", H, W, C, k, s, pad);
    check_grad(conv_loss, &c, c.Wt, dW, nw, 0.1f, 1e-3, 400, what);
    snprintf(what, sizeof what, "conv2d %dx%dx%d k%d s%d p%d db", H, W, C, k, s, pad);
    check_grad(conv_loss, &c, c.b, db, OC, 0.1f, 1e-3, 400, what);
    /* without dx the weights still get their gradient */
    float *dW2 = calloc(nw, sizeof(float));
    nn_conv2d_backward(NULL, dW2, NULL, NULL, c.R, c.cols, c.Wt, c.B, H, W, C, OC, k, s, pad);
    for (size_t i = 0; i < nw; i++) ck_assert_float_eq_tol(dW2[i], dW[i], 1e-4);
    free(dW2);
    free(dx), free(dW), free(db), free(dcols);
    free(c.x), free(c.Wt), free(c.b), free(c.y), free(c.R), free(c.cols);
}

START_TEST(test_conv2d_matches_definition_and_gradients) {
    ck_assert_int_eq(nn_conv2d_out(7, 3, 1, 1), 7);
    ck_assert_int_eq(nn_conv2d_out(7, 3, 2, 1), 4);
    ck_assert_int_eq(nn_conv2d_out(8, 3, 2, 0), 3);
    ck_assert_int_eq(nn_conv2d_out(2, 5, 1, 1), 0);
    conv_case(6, 5, 3, 4, 3, 1, 1); /* stride 1, same padding */
    conv_case(7, 6, 2, 3, 3, 2, 1); /* stride 2, padding, odd height */
    conv_case(8, 7, 2, 5, 2, 2, 0); /* stride 2, no padding, even kernel */
    conv_case(5, 5, 1, 2, 5, 1, 2); /* one input channel, wide kernel */
}
END_TEST

/* ---- max pooling ------------------------------------------------------------------------- */

typedef struct pool_ctx {
    int B, H, W, C, p;
    float *x, *y, *R;
    int32_t *am;
} pool_ctx;

static double pool_loss(void *v) {
    pool_ctx *c = v;
    nn_maxpool2d_forward(c->y, c->am, c->x, c->B, c->H, c->W, c->C, c->p);
    double L = 0;
    for (size_t i = 0; i < (size_t)c->B * (c->H / c->p) * (c->W / c->p) * c->C; i++)
        L += (double)c->y[i] * c->R[i];
    return L;
}

static void pool_case(int H, int W, int C, int p) {
    pool_ctx c = {2, H, W, C, p, NULL, NULL, NULL, NULL};
    size_t nx = (size_t)c.B * H * W * C, ny = (size_t)c.B * (H / p) * (W / p) * C;
    c.x = malloc(nx * sizeof(float));
    c.y = malloc(ny * sizeof(float));
    c.R = malloc(ny * sizeof(float));
    c.am = malloc(ny * sizeof(int32_t));
    /* distinct values 0.1 apart in a scrambled order: no ties within h */
    for (size_t i = 0; i < nx; i++) c.x[i] = 0.1f * (float)((i * 7919) % nx) - 3.0f;
    fill_uniform(c.R, ny, -1, 1, 5);
    pool_loss(&c);
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < H / p; i++)
            for (int j = 0; j < W / p; j++)
                for (int ch = 0; ch < C; ch++) {
                    float mx = -INFINITY;
                    for (int u = 0; u < p; u++)
                        for (int v = 0; v < p; v++) {
                            float e = c.x[(((size_t)b * H + i * p + u) * W + j * p + v) * C + ch];
                            mx = e > mx ? e : mx;
                        }
                    size_t o = (((size_t)b * (H / p) + i) * (W / p) + j) * C + ch;
                    ck_assert_float_eq(c.y[o], mx);
                }
    float *dx = calloc(nx, sizeof(float));
    nn_maxpool2d_backward(dx, c.R, c.am, c.B, H, W, C, p);
    char what[64];
    snprintf(what, sizeof what, "maxpool2d %dx%dx%d p%d", H, W, C, p);
    check_grad(pool_loss, &c, c.x, dx, nx, 1e-3f, 1e-3, 400, what);
    /* accumulation: a second backward doubles the gradient */
    float *dx2 = malloc(nx * sizeof(float));
    memcpy(dx2, dx, nx * sizeof(float));
    nn_maxpool2d_backward(dx2, c.R, c.am, c.B, H, W, C, p);
    for (size_t i = 0; i < nx; i++) ck_assert_float_eq_tol(dx2[i], 2 * dx[i], 1e-6);
    free(dx), free(dx2), free(c.x), free(c.y), free(c.R), free(c.am);
}

START_TEST(test_maxpool2d_matches_definition_and_gradients) {
    pool_case(6, 4, 3, 2);
    pool_case(7, 5, 2, 2); /* ragged edge dropped */
    pool_case(6, 6, 1, 3);
}
END_TEST

/* ---- the captioner --------------------------------------------------------------------- */

/* Builds a captioner for images 1 x IH x IW with "key", "value" pairs (NULL-terminated). */
static int cap_make(nn_model *m, const char *const *kv, int V, int B, int U, int IH, int IW) {
    nn_config cfg = {0};
    for (int i = 0; kv && kv[i]; i += 2) ck_assert_int_eq(nn_config_set(&cfg, kv[i], kv[i + 1]), 0);
    nn_dims d = {0};
    d.vocab_tgt = V;
    d.max_batch = B;
    d.max_len_tgt = U;
    d.image_c = 1;
    d.image_h = IH;
    d.image_w = IW;
    d.features = IH * IW;
    int rc = nn_model_init(m, &nn_captioner_ops, &cfg, &d, 5);
    nn_config_free(&cfg);
    return rc;
}

typedef struct tcap {
    nn_batch b;
    float *xf;
    int32_t *y, *yl;
    int64_t *idx;
} tcap;

/* Random images and captions: example i has yl[i] targets, the last one NN_EOS, then pad. */
static void tcap_make(tcap *t, int B, int U, const int *yl, int D, int V, uint64_t key) {
    memset(t, 0, sizeof *t);
    t->xf = malloc((size_t)B * D * sizeof(float));
    t->y = calloc((size_t)B * U, sizeof(int32_t));
    t->yl = malloc((size_t)B * sizeof(int32_t));
    t->idx = malloc((size_t)B * sizeof(int64_t));
    fill_uniform(t->xf, (size_t)B * D, 0, 1, key);
    nn_rng r = nn_rng_make(17, key, 0, NN_RNG_USER);
    for (int i = 0; i < B; i++) {
        t->yl[i] = yl[i];
        t->idx[i] = i;
        for (int u = 0; u < yl[i]; u++)
            t->y[(size_t)i * U + u] = u == yl[i] - 1 ? NN_EOS : 4 + (int)nn_rng_below(&r, V - 4);
    }
    t->b.B = B;
    t->b.U = U;
    t->b.y = t->y;
    t->b.y_len = t->yl;
    t->b.D = D;
    t->b.xf = t->xf;
    t->b.index = t->idx;
}

static void tcap_free(tcap *t) {
    free(t->xf), free(t->y), free(t->yl), free(t->idx);
}

typedef struct gc_ctx { nn_model *m; const nn_batch *b; } gc_ctx;

static double gc_loss(void *p) {
    gc_ctx *c = p;
    nn_stats st = {0};
    ck_assert_int_eq(c->m->ops->evaluate(c->m, c->b, &st), 0);
    return st.loss;
}

/* Gradient check of every parameter tensor of a tiny captioner. */
static void cap_gradcheck(const char *cell, const char *attn) {
    /* a small encoder (two channels, then three; a 2x2 grid): every unit is a kink, and a
     * weight of conv_0 moves all of them at once */
    enum { V = 9, B = 3, U = 4, IH = 8, IW = 6 };
    const int yl[B] = {4, 2, 3};
    const char *kv[] = {"cell", cell, "attention", attn, "channels", "2,3", "kernel", "3",
                        "pool", "2", "dim", "4", "hidden", "5", NULL};
    nn_model m;
    ck_assert_int_eq(cap_make(&m, kv, V, B, U, IH, IW), 0);
    /* sharpen the attention so its paths carry gradients well above float32 noise */
    for (int i = 0; i < m.params.n; i++)
        if (strncmp(m.params.p[i].name, "attention/", 10) == 0)
            for (size_t k = 0; k < m.params.p[i].size; k++)
                m.params.data[m.params.p[i].offset + k] *= 4.0f;
    tcap t;
    tcap_make(&t, B, U, yl, IH * IW, V, 21);
    nn_params_zero_grad(&m.params);
    nn_stats st = {0};
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &st), 0);
    ck_assert_double_eq(st.count, 4 + 2 + 3);
    nn_stats ev = {0};
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &ev), 0);
    ck_assert_double_eq_tol(ev.loss, st.loss, 1e-6 * st.loss);
    size_t n = m.params.total;
    float *g = malloc(n * sizeof *g);
    memcpy(g, m.params.grad, n * sizeof *g);
    gc_ctx c = {&m, &t.b};
    for (int i = 0; i < m.params.n; i++) {
        nn_param *p = &m.params.p[i];
        char what[160];
        snprintf(what, sizeof what, "captioner %s %s %s", cell, attn, p->name);
        check_grad_steps(gc_loss, &c, m.params.data + p->offset, g + p->offset, p->size, 5e-2,
                         16, what);
    }
    free(g);
    tcap_free(&t);
    nn_model_free(&m);
}

START_TEST(test_captioner_gradients_lstm_attention) { cap_gradcheck("lstm", "bahdanau"); }
END_TEST
START_TEST(test_captioner_gradients_gru_attention) { cap_gradcheck("gru", "bahdanau"); }
END_TEST
START_TEST(test_captioner_gradients_lstm_no_attention) { cap_gradcheck("lstm", "none"); }
END_TEST
START_TEST(test_captioner_gradients_gru_no_attention) { cap_gradcheck("gru", "none"); }
END_TEST


/* ---- io readers --------------------------------------------------------------------- */

START_TEST(test_io_reads_tokens_vocab_and_image_shape) {
    int64_t rows = 0, cols = 0, xr = 0, xc = 0;
    ck_assert_int_eq(io_dense_cols(FIXTURE, "train/tokens", &rows, &cols), IO_OK);
    ck_assert_int_eq(io_dense_cols(FIXTURE, "train/x", &xr, &xc), IO_OK);
    ck_assert_int_eq(rows, 300);
    ck_assert_int_eq(xr, rows);
    ck_assert_int_eq(cols, 5);
    int64_t shape[3] = {0, 0, 0};
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "image_shape", shape, 3), IO_OK);
    ck_assert_int_eq(shape[0], 1);
    ck_assert_int_eq(shape[0] * shape[1] * shape[2], xc);
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "image_shape", shape, 2), IO_ERR_SHAPE);
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "no_such_attr", shape, 3), IO_ERR_NOTFOUND);

    io_vocab v;
    ck_assert_int_eq(io_dense_vocab(FIXTURE, "vocab", &v), IO_OK);
    ck_assert_int_eq(v.n, 14);
    ck_assert_str_eq(v.word[IO_PAD], "<pad>");
    ck_assert_str_eq(v.word[IO_EOS], "</s>");
    ck_assert_int_eq(io_vocab_lookup(&v, "sneaker", 7), 11);
    /* a float dataset is not a vocabulary, nor token ids */
    io_vocab bad;
    ck_assert_int_eq(io_dense_vocab(FIXTURE, "train/x", &bad), IO_ERR_FORMAT);

    int32_t tok[3 * 5], one[5];
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/tokens", 7, 3, tok), IO_OK);
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/tokens", 8, 1, one), IO_OK);
    ck_assert_mem_eq(one, tok + 5, sizeof one);
    for (int r = 0; r < 3; r++) {
        for (int j = 0; j < 4; j++) {
            ck_assert_int_ge(tok[r * 5 + j], IO_N_SPECIAL);
            ck_assert_int_lt(tok[r * 5 + j], v.n);
        }
        ck_assert_int_eq(tok[r * 5 + 4], IO_EOS);
    }
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/tokens", 298, 3, tok), IO_ERR_SHAPE);
    float xf[8];
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/x", 0, 1, (int32_t *)xf),
                     IO_ERR_FORMAT);
    ck_assert_int_eq(io_dense_read_tokens("no/such.h5", "train/tokens", 0, 1, tok),
                     IO_ERR_NOTFOUND);
    io_vocab_free(&v);
}
END_TEST

static Suite *captioner_suite(void) {
    Suite *s = suite_create("captioner");
    TCase *tc = tcase_create("layers");
    tcase_add_test(tc, test_conv2d_matches_definition_and_gradients);
    tcase_add_test(tc, test_maxpool2d_matches_definition_and_gradients);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_captioner_gradients_lstm_attention);
    tcase_add_test(tc, test_captioner_gradients_gru_attention);
    tcase_add_test(tc, test_captioner_gradients_lstm_no_attention);
    tcase_add_test(tc, test_captioner_gradients_gru_no_attention);
    suite_add_tcase(s, tc);
    tc = tcase_create("io");
    tcase_add_test(tc, test_io_reads_tokens_vocab_and_image_shape);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(captioner_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
