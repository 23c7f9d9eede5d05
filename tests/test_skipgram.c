/* test_skipgram.c - models/skipgram.c and models/logreg.c: finite-difference gradients of
 * the negative-sampling and full-softmax losses (skip-gram and CBOW, fixed negatives,
 * repeated ids) and of the whole model step; losses against a double-precision direct
 * computation; sparse gradients; keyed determinism of subsampling, dynamic windows and
 * negatives; the unigram^0.75 table; word2vec's keep probability; a synthetic corpus on
 * which words sharing contexts end up closer; logistic-regression gradients and losses
 * against a dense (materialised feature vector) reference; configuration errors; the
 * touched_rows op over several micro-batches, and the row-restricted optimizer step the
 * trainer drives with it (exact for SGD, lazy for Adam).
 * Every gradient check also verifies that a sign-flipped gradient FAILS it. */
#include <check.h>
#include <math.h>
#include <string.h>

#include "models/nn.h"
#include "tests/testutil.h"
#include "trainer/trainer.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void fill_normal(float *x, size_t n, float scale, uint64_t key) {
    tu_fill_normal(x, n, scale, 999, key);
}

static void check_grad(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                       float h, double tol, const char *what) {
    tu_check_grad(f, ctx, x, g, n, h, tol, 300, 1e-2, 0, what);
}

static double softplus_d(double s) { return s > 0 ? s + log1p(exp(-s)) : log1p(exp(s)); }

/* ---- kernels ------------------------------------------------------------------------ */

enum { KV = 12, KD = 9 };
typedef struct kctx {
    float In[KV * KD], Out[KV * KD], dIn[KV * KD], dOut[KV * KD];
    float scratch[4096];
    int32_t tgt[16];
    int32_t ctx[8], out[8];
    int K, n_out, cbow, softmax;
    int32_t centre;
} kctx;

static double kernel_loss(void *p) {
    kctx *c = p;
    if (c->softmax)
        return nn_sg_softmax_loss(NULL, NULL, c->In, c->Out, KD, KV, c->ctx, c->K, c->cbow,
                                  c->centre, 1.0f, c->scratch, c->tgt);
    return nn_sg_neg_loss(NULL, NULL, c->In, c->Out, KD, c->ctx, c->K, c->cbow, c->out, c->n_out,
                          1.0f, c->scratch);
}

/* Direct double-precision loss from the definition in nn_emb.h. */
static double kernel_ref(const kctx *c) {
    int R = c->cbow ? 1 : c->K;
    double loss = 0.0;
    for (int r = 0; r < R; r++) {
        double h[KD] = {0};
        for (int k = 0; k < c->K; k++) {
            if (!c->cbow && k != r) continue;
            for (int d = 0; d < KD; d++)
                h[d] += c->In[c->ctx[k] * KD + d] / (c->cbow ? (double)c->K : 1.0);
        }
        if (c->softmax) {
            double z[KV], mx = -1e300, s = 0.0;
            for (int v = 0; v < KV; v++) {
                z[v] = 0;
                for (int d = 0; d < KD; d++) z[v] += h[d] * c->Out[v * KD + d];
                mx = z[v] > mx ? z[v] : mx;
            }
            for (int v = 0; v < KV; v++) s += exp(z[v] - mx);
            loss += mx + log(s) - z[c->centre];
        } else {
            for (int j = 0; j < c->n_out; j++) {
                double s = 0;
                for (int d = 0; d < KD; d++) s += h[d] * c->Out[c->out[j] * KD + d];
                loss += j == 0 ? softplus_d(-s) : softplus_d(s);
            }
        }
    }
    return loss;
}

static void check_kernel(int softmax, int cbow) {
    kctx *c = calloc(1, sizeof *c);
    fill_normal(c->In, KV * KD, 0.7f, 1 + softmax * 2 + cbow);
    fill_normal(c->Out, KV * KD, 0.7f, 11 + softmax * 2 + cbow);
    /* a repeated context (5) and a repeated negative (7), and rows 0..3, 10, 11 unused */
    int32_t ctx[5] = {4, 5, 8, 5, 9}, out[6] = {6, 7, 9, 7, 4, 8};
    memcpy(c->ctx, ctx, sizeof ctx);
    memcpy(c->out, out, sizeof out);
    c->K = 5;
    c->n_out = 6;
    c->cbow = cbow;
    c->softmax = softmax;
    c->centre = 6;
    double ref = kernel_ref(c), got = kernel_loss(c);
    ck_assert_msg(fabs(ref - got) <= 1e-5 * fabs(ref), "loss %.9g vs direct %.9g", got, ref);
    const float scale = 0.75f;
    double l2 = softmax ? nn_sg_softmax_loss(c->dIn, c->dOut, c->In, c->Out, KD, KV, c->ctx, c->K,
                                             cbow, c->centre, scale, c->scratch, c->tgt)
                        : nn_sg_neg_loss(c->dIn, c->dOut, c->In, c->Out, KD, c->ctx, c->K, cbow,
                                         c->out, c->n_out, scale, c->scratch);
    ck_assert_double_eq_tol(l2, got, 1e-9 * fabs(got));
    for (size_t i = 0; i < KV * KD; i++) {
        c->dIn[i] /= scale;
        c->dOut[i] /= scale;
    }
    /* sparsity: only named rows of dIn (and, for negatives, of dOut) are touched */
    for (int v = 0; v < KV; v++) {
        int in_used = v == 4 || v == 5 || v == 8 || v == 9;
        int out_used = softmax || v == 6 || v == 7 || v == 9 || v == 4 || v == 8;
        for (int d = 0; d < KD; d++) {
            if (!in_used) ck_assert_float_eq(c->dIn[v * KD + d], 0.0f);
            if (!out_used) ck_assert_float_eq(c->dOut[v * KD + d], 0.0f);
        }
    }
    char what[64];
    snprintf(what, sizeof what, "%s%s dIn", softmax ? "softmax" : "neg", cbow ? " cbow" : "");
    check_grad(kernel_loss, c, c->In, c->dIn, KV * KD, 1e-2f, 5e-3, what);
    snprintf(what, sizeof what, "%s%s dOut", softmax ? "softmax" : "neg", cbow ? " cbow" : "");
    check_grad(kernel_loss, c, c->Out, c->dOut, KV * KD, 1e-2f, 5e-3, what);
    free(c);
}

START_TEST(test_neg_sampling_gradients_match_finite_differences) {
    check_kernel(0, 0);
    check_kernel(0, 1);
}
END_TEST

START_TEST(test_softmax_gradients_match_finite_differences) {
    check_kernel(1, 0);
    check_kernel(1, 1);
}
END_TEST

START_TEST(test_neg_loss_is_stable_for_large_logits) {
    float In[2 * 4] = {30, 30, 30, 30, -30, 30, -30, 30};
    float Out[2 * 4] = {30, 30, 30, 30, 30, -30, 30, -30};
    float dIn[8] = {0}, dOut[8] = {0};
    int32_t ctx[2] = {0, 1}, out[2] = {0, 1};
    double l = nn_sg_neg_loss(dIn, dOut, In, Out, 4, ctx, 2, 0, out, 2, 1.0f, NULL);
    ck_assert(isfinite(l));
    /* In0.Out0 = 3600 (positive, loss ~0); In0.Out1 = 0 (negative: log 2);
     * In1.Out0 = 0 (log 2); In1.Out1 = -3600 (negative, loss ~0) */
    ck_assert_double_eq_tol(l, 2 * log(2.0), 1e-5);
    for (int i = 0; i < 8; i++) ck_assert(isfinite(dIn[i]) && isfinite(dOut[i]));
}
END_TEST

/* ---- the model ---------------------------------------------------------------------- */

static void sg_make(nn_model *m, int V, const int64_t *counts, int B, int T, const char *loss,
                    int cbow, int dim, int window, const char *sample, int neg, uint64_t seed) {
    nn_config cfg = {0};
    char s[32];
    snprintf(s, sizeof s, "%d", dim);
    nn_config_set(&cfg, "dim", s);
    snprintf(s, sizeof s, "%d", window);
    nn_config_set(&cfg, "window", s);
    snprintf(s, sizeof s, "%d", neg);
    nn_config_set(&cfg, "negative", s);
    nn_config_set(&cfg, "sample", sample);
    nn_config_set(&cfg, "loss", loss);
    nn_config_set(&cfg, "cbow", cbow ? "1" : "0");
    nn_dims d = {.vocab = V, .max_len = T, .max_batch = B, .vocab_counts = counts};
    int rc = nn_model_init(m, &nn_skipgram_ops, &cfg, &d, seed);
    ck_assert_msg(rc == NN_OK, "init: %s", nn_error());
    nn_config_free(&cfg);
}

typedef struct mctx {
    nn_model m;
    nn_batch b;
} mctx;

static double model_loss(void *p) {
    mctx *c = p;
    nn_stats st = {0};
    ck_assert_int_eq(c->m.ops->evaluate(&c->m, &c->b, &st), NN_OK);
    return st.loss;
}

static void check_model_grad(const char *loss, int cbow) {
    enum { V = 14, T = 10, B = 3 };
    int64_t counts[V] = {0, 0, 0, 0, 50, 40, 30, 20, 10, 9, 8, 7, 6, 5};
    mctx *c = calloc(1, sizeof *c);
    sg_make(&c->m, V, counts, B, T, loss, cbow, 6, 3, "0", 4, 5);
    nn_params *ps = &c->m.params;
    fill_normal(ps->data, ps->total, 0.5f, 42); /* output starts at zero: make it non-trivial */
    static const int32_t x[B * T] = {4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 4, 4, 5, 1, 6, 3,
                                     7, 8, 13, 12, 9, 10, 0, 11, 5, 4, 6, 2, 13, 7};
    static const int64_t idx[B] = {17, 18, 19};
    c->b = (nn_batch){.B = B, .T = T, .x = x, .index = idx, .step = 3};
    nn_params_zero_grad(ps);
    nn_stats st = {0}, st2 = {0};
    ck_assert_int_eq(c->m.ops->forward_backward(&c->m, &c->b, 1.0f, &st), NN_OK);
    ck_assert_int_eq(c->m.ops->evaluate(&c->m, &c->b, &st2), NN_OK);
    ck_assert_double_eq_tol(st.loss, st2.loss, 1e-9 * st.loss);
    ck_assert_double_eq(st.count, st2.count);
    ck_assert(st.count > 0);
    /* specials 0..3 get no gradient */
    for (size_t i = 0; i < 4 * 6; i++) ck_assert_float_eq(ps->grad[i], 0.0f);
    /* every row with a gradient is listed as touched, and each listed row has one */
    for (int which = 0; which < 2; which++) {
        const int32_t *rows;
        int n = nn_skipgram_touched(&c->m, which, &rows);
        if (which == 1 && strcmp(loss, "softmax") == 0) {
            ck_assert_int_eq(n, -1);
            continue;
        }
        ck_assert_int_gt(n, 0);
        const float *g = ps->grad + ps->p[which].offset;
        for (int v = 0; v < V; v++) {
            int listed = 0, nz = 0;
            for (int i = 0; i < n; i++) listed += rows[i] == v;
            for (int d = 0; d < 6; d++) nz |= g[v * 6 + d] != 0.0f;
            ck_assert_int_le(listed, 1);
            ck_assert_msg(listed == nz, "%s row %d: listed %d, gradient %s", which ? "output" : "input",
                          v, listed, nz ? "nonzero" : "zero");
        }
    }
    nn_skipgram_touched_clear(&c->m);
    const int32_t *rows0;
    ck_assert_int_eq(nn_skipgram_touched(&c->m, 0, &rows0), 0);
    char what[64];
    snprintf(what, sizeof what, "model %s%s", loss, cbow ? " cbow" : "");
    /* h 3e-2: the loss sums float softmaxes over the vocabulary, whose rounding (it depends
     * on the build: vectorised or not) is ~1e-6 of the loss; at h 1e-2 that noise reaches
     * the 1e-2 tolerance on entries with gradients near 1e-3 in an -O0 build */
    check_grad(model_loss, c, ps->data, ps->grad, ps->total, 3e-2f, 1e-2, what);
    nn_model_free(&c->m);
    free(c);
}

START_TEST(test_model_step_gradients_match_finite_differences) {
    check_model_grad("neg", 0);
    check_model_grad("neg", 1);
    check_model_grad("softmax", 0);
    check_model_grad("softmax", 1);
}
END_TEST

START_TEST(test_pairs_are_keyed_and_respect_the_dynamic_window) {
    enum { V = 40, T = 30, W = 4 };
    int64_t counts[V];
    for (int i = 0; i < V; i++) counts[i] = i < 4 ? 0 : 100;
    nn_model m, m2;
    sg_make(&m, V, counts, 1, T, "neg", 0, 4, W, "0", 5, 7);
    sg_make(&m2, V, counts, 1, T, "neg", 0, 4, W, "0", 5, 7);
    int32_t x[T];
    for (int t = 0; t < T; t++) x[t] = 4 + t; /* distinct ids: id distance = position distance */
    int32_t c1[4096], o1[4096], c2[4096], o2[4096];
    int n1 = nn_skipgram_pairs(&m, x, T, 5, 100, c1, o1, 4096);
    int n2 = nn_skipgram_pairs(&m2, x, T, 5, 100, c2, o2, 4096);
    ck_assert_int_eq(n1, n2);
    ck_assert_mem_eq(c1, c2, (size_t)n1 * sizeof *c1);
    ck_assert_mem_eq(o1, o2, (size_t)n1 * sizeof *o1);
    int n3 = nn_skipgram_pairs(&m, x, T, 6, 100, c2, o2, 4096);
    int n4 = nn_skipgram_pairs(&m, x, T, 5, 101, c2 + 2048, o2 + 2048, 2048);
    ck_assert_msg(n3 != n1 || memcmp(o1, o2, (size_t)n1 * 4) != 0, "step does not change pairs");
    ck_assert_msg(n4 != n1 || memcmp(o1, o2 + 2048, (size_t)n1 * 4) != 0,
                  "index does not change pairs");
    /* a word is never its own context, even when repeated through the window */
    int32_t rep[T];
    for (int t = 0; t < T; t++) rep[t] = 4 + (t % 3 == 0 ? 0 : t % 5);
    int nr = nn_skipgram_pairs(&m, rep, T, 9, 1, c1, o1, 4096);
    ck_assert_int_gt(nr, 0);
    for (int i = 0; i < nr; i++) ck_assert_int_ne(c1[i], o1[i]);
    /* radius histogram over many keys: uniform in 1..W for interior centres */
    long hist[W + 1] = {0};
    int total = 0;
    for (int key = 0; key < 400; key++) {
        int n = nn_skipgram_pairs(&m, x, T, (uint64_t)key, 7, c1, o1, 4096);
        ck_assert_int_le(n, 4096);
        int start = 0;
        while (start < n) {
            int end = start, rmax = 0;
            while (end < n && c1[end] == c1[start]) end++;
            for (int k = start; k < end; k++) {
                int dd = abs(o1[k] - c1[k]);
                ck_assert_int_ge(dd, 1);
                ck_assert_int_le(dd, W);
                rmax = dd > rmax ? dd : rmax;
            }
            int pos = c1[start] - 4;
            if (pos >= W && pos < T - W) {
                ck_assert_int_eq(end - start, 2 * rmax); /* both sides, every distance */
                hist[rmax]++;
                total++;
            }
            start = end;
        }
    }
    for (int r = 1; r <= W; r++)
        ck_assert_msg(fabs((double)hist[r] / total - 1.0 / W) < 0.02, "radius %d share %g", r,
                      (double)hist[r] / total);
    nn_model_free(&m);
    nn_model_free(&m2);
}
END_TEST

START_TEST(test_subsampling_follows_word2vec_keep_probability) {
    enum { V = 8, T = 64 };
    int64_t counts[V] = {0, 0, 0, 0, 1000000, 10000, 100, 1};
    double total = 1000000 + 10000 + 100 + 1, s = 1e-3;
    nn_model m;
    sg_make(&m, V, counts, 1, T, "neg", 0, 4, 2, "1e-3", 2, 3);
    for (int id = 4; id < V; id++) {
        double c = (double)counts[id];
        double k = (sqrt(c / (s * total)) + 1) * s * total / c;
        if (k > 1) k = 1;
        ck_assert_double_eq_tol(nn_skipgram_keep(&m, id), k, 1e-6);
    }
    ck_assert_float_eq(nn_skipgram_keep(&m, 3), 0.0f);
    /* empirical keep rate of word 4 in windows 7 4 7 4 ...: 7 (count 1) is always kept,
     * so every kept 4 is a centre with contexts, its pairs one run between 7's runs */
    int32_t x[T], c[4096], o[4096];
    for (int t = 0; t < T; t++) x[t] = t % 2 ? 4 : 7;
    long kept = 0, seen = 0;
    for (int key = 0; key < 300; key++) {
        int n = nn_skipgram_pairs(&m, x, T, (uint64_t)key, 0, c, o, 4096);
        for (int i = 0; i < n; i++)
            if (c[i] == 4 && (i == 0 || c[i - 1] != 4)) kept++;
        seen += T / 2;
    }
    double k4 = nn_skipgram_keep(&m, 4);
    ck_assert_msg(fabs((double)kept / seen - k4) < 0.01, "kept %g of word 4, want %g",
                  (double)kept / seen, k4);
    nn_model_free(&m);
}
END_TEST

START_TEST(test_unigram_table_follows_count_to_the_three_quarters) {
    enum { V = 9 };
    int64_t counts[V] = {0, 0, 0, 0, 1000, 100, 10, 1, 5000};
    nn_model m;
    sg_make(&m, V, counts, 1, 8, "neg", 0, 4, 2, "0", 5, 1);
    int n;
    const int32_t *tab = nn_skipgram_table(&m, &n);
    ck_assert_int_ge(n, 1000);
    long hist[V] = {0};
    for (int i = 0; i < n; i++) {
        ck_assert_int_ge(tab[i], 4);
        ck_assert_int_lt(tab[i], V);
        hist[tab[i]]++;
    }
    double z = 0;
    for (int i = 4; i < V; i++) z += pow((double)counts[i], 0.75);
    for (int i = 4; i < V; i++) {
        double want = pow((double)counts[i], 0.75) / z;
        ck_assert_msg(fabs((double)hist[i] / n - want) < 2.0 / n + 1e-9, "id %d share %g want %g",
                      i, (double)hist[i] / n, want);
    }
    nn_model_free(&m);
}
END_TEST

/* Sentences "x_i A x_j" and "y_i B y_j" with A in {a1, a2}, B in {b1, b2}: a1 and a2
 * share every context, a1 and b1 none. After SGD, cos(a1, a2) > cos(a1, b1) + margin. */
static double cosine(const float *a, const float *b, int d) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < d; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / sqrt(aa * bb + 1e-30);
}

static void check_synthetic(const char *loss, int cbow, float lr) {
    /* ids: 4 a1, 5 a2, 6 b1, 7 b2, 8..11 x, 12..15 y */
    enum { V = 16, T = 30, B = 8, D = 16 };
    int64_t counts[V];
    for (int i = 0; i < V; i++) counts[i] = i < 4 ? 0 : 100;
    nn_model m;
    sg_make(&m, V, counts, B, T, loss, cbow, D, 1, "0", 4, 11);
    int32_t x[B * T];
    int64_t idx[B];
    nn_params *ps = &m.params;
    for (int step = 0; step < 150; step++) {
        nn_rng r = nn_rng_make(5, (uint64_t)step, 0, NN_RNG_USER);
        /* triples separated by </s> (dropped), so windows of 1 stay inside a triple */
        for (int i = 0; i < B; i++) {
            idx[i] = (int64_t)step * B + i;
            for (int t = 0; t < T; t += 3) {
                int g = (int)nn_rng_below(&r, 2);
                int32_t *w = x + (size_t)i * T + t;
                w[0] = (g ? 12 : 8) + (int32_t)nn_rng_below(&r, 4);
                w[1] = (g ? 6 : 4) + (int32_t)nn_rng_below(&r, 2);
                w[2] = (g ? 12 : 8) + (int32_t)nn_rng_below(&r, 4);
            }
        }
        nn_batch b = {.B = B, .T = T, .x = x, .index = idx, .step = (uint64_t)step};
        nn_params_zero_grad(ps);
        nn_stats st = {0};
        ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f / (B * T), &st), NN_OK);
        for (size_t i = 0; i < ps->total; i++) ps->data[i] -= lr * ps->grad[i];
    }
    const float *E = ps->data; /* input/weight is registered first */
    double same = cosine(E + 4 * D, E + 5 * D, D), other = cosine(E + 4 * D, E + 6 * D, D);
    double same2 = cosine(E + 6 * D, E + 7 * D, D);
    if (getenv("NN_TEST_VERBOSE"))
        fprintf(stderr, "%s cbow %d: cos(a1,a2) %.3f cos(b1,b2) %.3f cos(a1,b1) %.3f\n", loss,
                cbow, same, same2, other);
    ck_assert_msg(same > other + 0.3 && same2 > other + 0.3,
                  "%s cbow %d: cos(a1,a2) %g cos(b1,b2) %g cos(a1,b1) %g", loss, cbow, same, same2,
                  other);
    nn_model_free(&m);
}

START_TEST(test_words_sharing_contexts_end_up_closer) {
    check_synthetic("neg", 0, 1.0f);
    check_synthetic("softmax", 0, 4.0f); /* N(0, 1) inputs: larger moves needed */
    check_synthetic("neg", 1, 1.0f);
}
END_TEST

START_TEST(test_skipgram_errors) {
    int64_t counts[8] = {0, 0, 0, 0, 5, 5, 5, 5};
    nn_config cfg = {0};
    nn_dims d = {.vocab = 8, .max_len = 8, .max_batch = 2, .vocab_counts = counts};
    nn_model m;
    nn_config_set(&cfg, "window", "0");
    ck_assert_int_eq(nn_model_init(&m, &nn_skipgram_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "window", "2");
    nn_config_set(&cfg, "loss", "hierarchical");
    ck_assert_int_eq(nn_model_init(&m, &nn_skipgram_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(nn_error(), "loss"));
    nn_config_set(&cfg, "loss", "neg");
    d.vocab_counts = NULL;
    ck_assert_int_eq(nn_model_init(&m, &nn_skipgram_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    d.vocab_counts = counts;
    ck_assert_int_eq(nn_model_init(&m, &nn_skipgram_ops, &cfg, &d, 1), NN_OK);
    int32_t x[8] = {4, 5, 6, 9, 4, 5, 6, 7};
    int64_t idx[1] = {0};
    nn_batch b = {.B = 1, .T = 8, .x = x, .index = idx};
    nn_stats st = {0};
    ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), NN_ERR_DATA);
    b.B = 3;
    ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), NN_ERR_SHAPE);
    nn_model_free(&m);
    nn_config_free(&cfg);
}
END_TEST

/* ---- logistic regression ------------------------------------------------------------ */

enum { LV = 10, LK = 3, LB = 4, LT = 6 };
static const int32_t lr_x[LB * LT] = {
    4, 5, 5, 5, 0, 0,  /* repeats */
    6, 7, 8, 9, 4, 1,  /* full */
    0, 0, 0, 0, 0, 0,  /* all padding */
    9, 0, 9, 0, 2, 0,  /* pads in the middle */
};
static const int32_t lr_y[LB] = {2, 0, 1, 2};

typedef struct lctx {
    nn_model m;
    nn_batch b;
} lctx;

static double logreg_loss(void *p) {
    lctx *c = p;
    nn_stats st = {0};
    ck_assert_int_eq(c->m.ops->evaluate(&c->m, &c->b, &st), NN_OK);
    return st.loss;
}

/* Dense reference: materialise the V-wide feature vector. */
static double logreg_ref(const nn_model *m, int presence) {
    const float *W = m->params.data, *bias = W + LV * LK;
    double loss = 0;
    for (int i = 0; i < LB; i++) {
        double f[LV] = {0}, z[LK], mx = -1e300, s = 0;
        for (int t = 0; t < LT; t++) {
            int id = lr_x[i * LT + t];
            if (id == 0) continue;
            f[id] = presence ? 1.0 : f[id] + 1.0;
        }
        for (int k = 0; k < LK; k++) {
            z[k] = bias[k];
            for (int v = 0; v < LV; v++) z[k] += f[v] * W[v * LK + k];
            mx = z[k] > mx ? z[k] : mx;
        }
        for (int k = 0; k < LK; k++) s += exp(z[k] - mx);
        loss += mx + log(s) - z[lr_y[i]];
    }
    return loss;
}

START_TEST(test_logreg_gradients_and_losses) {
    const char *names[2] = {"onehot-logreg", "bow-logreg"};
    double losses[2];
    for (int which = 0; which < 2; which++) {
        lctx *c = calloc(1, sizeof *c);
        nn_config cfg = {0};
        nn_dims d = {.vocab = LV, .classes = LK, .max_len = LT, .max_batch = LB};
        const nn_model_ops *ops = nn_model_find(names[which]);
        ck_assert_ptr_nonnull(ops);
        ck_assert_int_eq(nn_model_init(&c->m, ops, &cfg, &d, 3), NN_OK);
        nn_params *ps = &c->m.params;
        ck_assert_int_eq(ps->total, (size_t)(LV * LK + LK));
        fill_normal(ps->data, ps->total, 0.8f, 77);
        c->b = (nn_batch){.B = LB, .T = LT, .x = lr_x, .y = lr_y};
        double ref = logreg_ref(&c->m, which == 0);
        double got = logreg_loss(c);
        losses[which] = got;
        ck_assert_msg(fabs(ref - got) < 1e-5 * fabs(ref), "%s: %g vs dense %g", names[which], got,
                      ref);
        nn_params_zero_grad(ps);
        nn_stats st = {0};
        ck_assert_int_eq(ops->forward_backward(&c->m, &c->b, 1.0f, &st), NN_OK);
        ck_assert_double_eq(st.count, LB);
        /* untouched rows (3) and the pad row get nothing */
        for (int k = 0; k < LK; k++) {
            ck_assert_float_eq(ps->grad[3 * LK + k], 0.0f);
            ck_assert_float_eq(ps->grad[0 * LK + k], 0.0f);
        }
        check_grad(logreg_loss, c, ps->data, ps->grad, ps->total, 1e-2f, 2e-3, names[which]);
        nn_model_free(&c->m);
        nn_config_free(&cfg);
        free(c);
    }
    ck_assert_msg(fabs(losses[0] - losses[1]) > 1e-3, "presence and counts gave the same loss");
}
END_TEST

START_TEST(test_logreg_errors) {
    nn_config cfg = {0};
    nn_dims d = {.vocab = LV, .classes = 1, .max_len = LT, .max_batch = LB};
    nn_model m;
    ck_assert_int_eq(nn_model_init(&m, &nn_bow_logreg_ops, &cfg, &d, 1), NN_ERR_SHAPE);
    d.classes = LK;
    ck_assert_int_eq(nn_model_init(&m, &nn_bow_logreg_ops, &cfg, &d, 1), NN_OK);
    int32_t y[LB] = {0, 1, 2, 3};
    nn_batch b = {.B = LB, .T = LT, .x = lr_x, .y = y};
    nn_stats st = {0};
    ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), NN_ERR_DATA);
    nn_model_free(&m);
}
END_TEST

/* Two micro-batches without a clear: ops->touched_rows lists, each once, exactly the rows
 * with gradient after both; the full softmax's output is dense (-1); touched_clear
 * empties the lists. */
static void check_touched_op(const char *loss) {
    enum { V = 14, T = 10, B = 3 };
    int64_t counts[V] = {0, 0, 0, 0, 50, 40, 30, 20, 10, 9, 8, 7, 6, 5};
    nn_model m;
    sg_make(&m, V, counts, B, T, loss, 0, 6, 3, "0", 4, 5);
    nn_params *ps = &m.params;
    fill_normal(ps->data, ps->total, 0.5f, 43);
    ck_assert_ptr_nonnull(m.ops->touched_rows);
    ck_assert_ptr_nonnull(m.ops->touched_clear);
    nn_params_zero_grad(ps);
    static const int32_t x1[B * T] = {4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 0, 0, 0, 0, 0,
                                      0, 0, 0, 0, 0, 8, 9, 8, 9, 8, 9, 0, 0, 0, 0};
    static const int32_t x2[B * T] = {10, 11, 12, 10, 11, 12, 4, 0, 0, 0, 13, 4, 13, 4, 13,
                                      4, 13, 4, 0, 0, 1, 2, 3, 1, 2, 3, 0, 0, 0, 0};
    static const int64_t idx[B] = {5, 6, 7};
    nn_stats st = {0};
    nn_batch b1 = {.B = B, .T = T, .x = x1, .index = idx, .step = 1};
    nn_batch b2 = {.B = B, .T = T, .x = x2, .index = idx, .step = 2};
    ck_assert_int_eq(m.ops->forward_backward(&m, &b1, 1.0f, &st), NN_OK);
    ck_assert_int_eq(m.ops->forward_backward(&m, &b2, 1.0f, &st), NN_OK);
    int seen_second = 0;
    for (int t = 0; t < 2; t++) {
        const int32_t *rows = NULL;
        int n = m.ops->touched_rows(&m, t, &rows);
        if (t == 1 && strcmp(loss, "softmax") == 0) {
            ck_assert_int_eq(n, -1);
            ck_assert_ptr_null(rows);
            continue;
        }
        ck_assert_int_gt(n, 0);
        const float *g = ps->grad + ps->p[t].offset;
        for (int v = 0; v < V; v++) {
            int listed = 0, nz = 0;
            for (int i = 0; i < n; i++) listed += rows[i] == v;
            for (int d = 0; d < 6; d++) nz |= g[v * 6 + d] != 0.0f;
            ck_assert_int_le(listed, 1);
            ck_assert_msg(listed == nz, "%s %s row %d: listed %d, gradient %s", loss,
                          ps->p[t].name, v, listed, nz ? "nonzero" : "zero");
            if (t == 0 && v >= 10 && listed) seen_second = 1; /* rows only batch 2 has */
        }
    }
    ck_assert_msg(seen_second, "rows of the second micro-batch are listed too");
    m.ops->touched_clear(&m);
    const int32_t *rows;
    ck_assert_int_eq(m.ops->touched_rows(&m, 0, &rows), 0);
    if (strcmp(loss, "softmax") != 0) ck_assert_int_eq(m.ops->touched_rows(&m, 1, &rows), 0);
    nn_model_free(&m);
}

START_TEST(test_touched_rows_op_lists_rows_with_gradient) {
    check_touched_op("neg");
    check_touched_op("softmax");
}
END_TEST

/* trainer_optim_step_sparse on a (6, 3) table (rows 1 and 4 have gradient) and a dense
 * bias: SGD equals the dense step bit for bit; lazy Adam equals dense Adam on rows with
 * gradient at every step, leaves a row without gradient (and its state) alone where
 * dense Adam still moves it, and never touches rows that never had gradient. */
static void opt_make(nn_params *ps, float **W, float **dW, float **b, float **db) {
    memset(ps, 0, sizeof *ps);
    int sw[2] = {6, 3}, sb[1] = {3};
    ck_assert_int_ge(nn_params_add(ps, "emb", 2, sw, NN_INIT_NORMAL, 1.0f, W, dW), 0);
    ck_assert_int_ge(nn_params_add(ps, "bias", 1, sb, NN_INIT_NORMAL, 1.0f, b, db), 0);
    ck_assert_int_eq(nn_params_alloc(ps, 5), NN_OK);
}

START_TEST(test_sparse_optimizer_step) {
    const char *kinds[2] = {"sgd", "adam"};
    for (int k = 0; k < 2; k++) {
        nn_config cfg = {0};
        nn_config_set(&cfg, "optimizer", kinds[k]);
        nn_config_set(&cfg, "lr", "0.1");
        nn_params dense, sparse;
        float *W[2], *dW[2], *b[2], *db[2];
        opt_make(&dense, &W[0], &dW[0], &b[0], &db[0]);
        opt_make(&sparse, &W[1], &dW[1], &b[1], &db[1]);
        trainer_optim od, os;
        ck_assert_int_eq(trainer_optim_init(&od, &cfg, dense.total, 10), NN_OK);
        ck_assert_int_eq(trainer_optim_init(&os, &cfg, sparse.total, 10), NN_OK);
        float before[18], after0[18];
        memcpy(before, W[0], sizeof before);
        static const int32_t rows0[2] = {1, 4}, rows1[1] = {1};
        for (int step = 0; step < 3; step++) {
            /* step 0: rows 1 and 4; later steps: row 1 only */
            const int32_t *rows = step == 0 ? rows0 : rows1;
            int nr = step == 0 ? 2 : 1;
            for (int i = 0; i < 2; i++) {
                nn_params_zero_grad(i ? &sparse : &dense);
                for (int r = 0; r < nr; r++)
                    for (int c = 0; c < 3; c++)
                        dW[i][rows[r] * 3 + c] = 0.5f * (float)(1 + step + r) - 0.3f * (float)c;
                for (int c = 0; c < 3; c++) db[i][c] = 0.2f * (float)(c - step);
            }
            trainer_optim_step(&od, &dense, step, 0.1);
            const int32_t *lists[2] = {rows, NULL};
            int counts[2] = {nr, -1};
            trainer_optim_step_sparse(&os, &sparse, step, 0.1, lists, counts);
            /* the dense bias and the rows with gradient: the same bits */
            ck_assert(memcmp(b[0], b[1], 3 * sizeof(float)) == 0);
            for (int r = 0; r < nr; r++)
                ck_assert(memcmp(W[0] + rows[r] * 3, W[1] + rows[r] * 3, 3 * sizeof(float)) == 0);
            if (step == 0) memcpy(after0, W[1], sizeof after0);
        }
        for (int r = 0; r < 6; r++) {
            int dense_moves = memcmp(W[0] + r * 3, before + r * 3, 3 * sizeof(float)) != 0;
            int sparse_moves = memcmp(W[1] + r * 3, before + r * 3, 3 * sizeof(float)) != 0;
            if (r == 1) {
                ck_assert(dense_moves && sparse_moves);
            } else if (r == 4) {
                /* gradient at step 0 only: SGD is exact; dense Adam keeps moving it on its
                 * momentum, lazy Adam does not (its state stays as step 0 left it) */
                if (k == 0) {
                    ck_assert(memcmp(W[0] + 12, W[1] + 12, 3 * sizeof(float)) == 0);
                } else {
                    ck_assert(memcmp(W[1] + 12, after0 + 12, 3 * sizeof(float)) == 0);
                    ck_assert(memcmp(W[0] + 12, W[1] + 12, 3 * sizeof(float)) != 0);
                    ck_assert(memcmp(os.m + 12, od.m + 12, 3 * sizeof(float)) != 0);
                }
            } else {
                ck_assert_msg(!dense_moves && !sparse_moves, "%s: row %d never had gradient",
                              kinds[k], r);
            }
        }
        trainer_optim_free(&od);
        trainer_optim_free(&os);
        nn_params_free(&dense);
        nn_params_free(&sparse);
        nn_config_free(&cfg);
    }
}
END_TEST

int main(void) {
    const tu_case cases[] = {
        {"kernels", test_neg_sampling_gradients_match_finite_differences},
        {"kernels", test_softmax_gradients_match_finite_differences},
        {"kernels", test_neg_loss_is_stable_for_large_logits},
        {"model", test_model_step_gradients_match_finite_differences},
        {"model", test_pairs_are_keyed_and_respect_the_dynamic_window},
        {"model", test_subsampling_follows_word2vec_keep_probability},
        {"model", test_unigram_table_follows_count_to_the_three_quarters},
        {"model", test_words_sharing_contexts_end_up_closer},
        {"model", test_skipgram_errors},
        {"model", test_touched_rows_op_lists_rows_with_gradient},
        {"sparse", test_sparse_optimizer_step},
        {"logreg", test_logreg_gradients_and_losses},
        {"logreg", test_logreg_errors},
    };
    return tu_run("skipgram", cases, sizeof cases / sizeof cases[0]);
}
