/* test_s2s.c - models/s2s.c: the attention layer's gradients, the whole seq2seq model's
 * gradients (lstm/gru, with and without attention, padded batches, dropout), masking,
 * decoding (greedy, beam 1 = greedy, beam at least as probable as greedy, output format,
 * attention weights), errors on bad input, and a copy task the model must learn. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/nn.h"

/* ---- the attention layer alone ---------------------------------------------------------- */

enum { AR = 3, ABS = 2, AT = 4, AA = 5, AHV = 3 };
typedef struct attn_ctx {
    float q[AR * AA], kh[ABS * AT * AA], h[ABS * AT * AHV], v[AA], G[AR * AHV];
    float dq[AR * AA], dkh[ABS * AT * AA], dh[ABS * AT * AHV], dv[AA];
    float a[AR * AT], ctx[AR * AHV], scr[AT + 2 * AA];
    int32_t len[ABS], src[AR];
} attn_ctx;

/* loss = sum_r,i G[r,i] ctx[r,i] */
static double attn_loss(void *p) {
    attn_ctx *c = p;
    nn_attn_forward(c->ctx, c->a, c->q, c->kh, c->h, c->v, c->len, c->src, AR, AT, AA, AHV,
                    c->scr);
    double s = 0;
    for (int i = 0; i < AR * AHV; i++) s += (double)c->G[i] * c->ctx[i];
    return s;
}

static void fill(float *x, int n, nn_rng *r, float scale) {
    for (int i = 0; i < n; i++) x[i] = scale * nn_rng_normal(r);
}

START_TEST(test_attention_gradients_match_finite_differences) {
    attn_ctx c;
    memset(&c, 0, sizeof c);
    nn_rng r = nn_rng_make(5, 0, 0, NN_RNG_USER);
    fill(c.q, AR * AA, &r, 1.0f);
    fill(c.kh, ABS * AT * AA, &r, 1.0f);
    fill(c.h, ABS * AT * AHV, &r, 1.0f);
    fill(c.v, AA, &r, 1.0f);
    fill(c.G, AR * AHV, &r, 1.0f);
    /* source 0 has all 4 positions, source 1 only 2; rows 0 and 2 read source 1. */
    c.len[0] = 4, c.len[1] = 2;
    c.src[0] = 1, c.src[1] = 0, c.src[2] = 1;
    attn_loss(&c);
    nn_attn_backward(c.dq, c.dkh, c.dh, c.dv, c.G, c.a, c.q, c.kh, c.h, c.v, c.len, c.src, AR,
                     AT, AA, AHV, c.scr);
    double eq = nn_gradcheck(attn_loss, &c, c.q, c.dq, AR * AA, 1e-2f, 100);
    double ek = nn_gradcheck(attn_loss, &c, c.kh, c.dkh, ABS * AT * AA, 1e-2f, 100);
    double eh = nn_gradcheck(attn_loss, &c, c.h, c.dh, ABS * AT * AHV, 1e-2f, 100);
    double ev = nn_gradcheck(attn_loss, &c, c.v, c.dv, AA, 1e-2f, 100);
    ck_assert_msg(eq < 1e-2 && ek < 1e-2 && eh < 1e-2 && ev < 1e-2, "q %g kh %g h %g v %g", eq,
                  ek, eh, ev);
    attn_loss(&c);
    for (int i = 0; i < AR; i++) {
        int L = c.len[c.src[i]];
        double s = 0;
        for (int j = 0; j < AT; j++) {
            if (j >= L) ck_assert_float_eq(c.a[i * AT + j], 0.0f); /* masked */
            s += c.a[i * AT + j];
        }
        ck_assert_double_eq_tol(s, 1.0, 1e-5);
    }
    /* Padding positions of source 1 get no gradient. */
    for (int j = 2; j < AT; j++) {
        for (int k = 0; k < AA; k++) ck_assert_float_eq(c.dkh[(AT + j) * AA + k], 0.0f);
        for (int k = 0; k < AHV; k++) ck_assert_float_eq(c.dh[(AT + j) * AHV + k], 0.0f);
    }
}
END_TEST

START_TEST(test_attention_with_empty_source_gives_zero_context) {
    float q[2] = {1, 2}, kh[2] = {0.5f, -1}, h[3] = {1, 2, 3}, v[2] = {1, 1}, a[1] = {7},
          ctx[3] = {7, 7, 7}, scr[2];
    int32_t len[1] = {0};
    nn_attn_forward(ctx, a, q, kh, h, v, len, NULL, 1, 1, 2, 3, scr);
    ck_assert_float_eq(a[0], 0.0f);
    for (int i = 0; i < 3; i++) ck_assert_float_eq(ctx[i], 0.0f);
}
END_TEST

/* ---- whole-model helpers ------------------------------------------------------------------ */

typedef struct tbatch {
    nn_batch b;
    int32_t *x, *xl, *y, *yl;
    int64_t *idx;
} tbatch;

/* Random batch: source ids in [4, V), targets in [4, Vt) ending with NN_EOS, padded. */
static void tbatch_make(tbatch *t, int B, int T, int U, const int *xl, const int *yl, int V,
                        int Vt, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->x = calloc((size_t)B * T, sizeof *t->x);
    t->y = calloc((size_t)B * U, sizeof *t->y);
    t->xl = calloc(B, sizeof *t->xl);
    t->yl = calloc(B, sizeof *t->yl);
    t->idx = calloc(B, sizeof *t->idx);
    nn_rng r = nn_rng_make(seed, 1, 2, NN_RNG_USER);
    for (int i = 0; i < B; i++) {
        t->xl[i] = xl[i];
        t->yl[i] = yl[i];
        t->idx[i] = 100 + i;
        for (int j = 0; j < xl[i]; j++) t->x[i * T + j] = 4 + (int32_t)nn_rng_below(&r, V - 4);
        for (int j = 0; j < yl[i]; j++)
            t->y[i * U + j] = j == yl[i] - 1 ? NN_EOS : 4 + (int32_t)nn_rng_below(&r, Vt - 4);
    }
    t->b.B = B, t->b.T = T, t->b.U = U;
    t->b.x = t->x, t->b.x_len = t->xl, t->b.y = t->y, t->b.y_len = t->yl, t->b.index = t->idx;
    t->b.step = 7;
}

static void tbatch_free(tbatch *t) {
    free(t->x), free(t->y), free(t->xl), free(t->yl), free(t->idx);
}

static int model_make(nn_model *m, const char *const *kv, int V, int Vt, int B, int T, int U,
                      uint64_t seed) {
    nn_config cfg = {0};
    for (int i = 0; kv && kv[i]; i += 2) ck_assert_int_eq(nn_config_set(&cfg, kv[i], kv[i + 1]), 0);
    nn_dims d = {0};
    d.vocab = V, d.vocab_tgt = Vt, d.max_batch = B, d.max_len = T, d.max_len_tgt = U;
    int rc = nn_model_init(m, &nn_seq2seq_ops, &cfg, &d, seed);
    nn_config_free(&cfg);
    return rc;
}

typedef struct gc_ctx {
    nn_model *m;
    nn_batch *b;
    int train; /* 1: loss from forward_backward (dropout on), 0: evaluate */
} gc_ctx;

static double gc_loss(void *p) {
    gc_ctx *c = p;
    nn_stats st = {0};
    if (c->train) {
        /* forward_backward accumulates gradients: keep the analytic ones aside */
        ck_assert_int_eq(c->m->ops->forward_backward(c->m, c->b, 1.0f, &st), 0);
    } else {
        ck_assert_int_eq(c->m->ops->evaluate(c->m, c->b, &st), 0);
    }
    return st.loss;
}

/* Worst gradcheck error over every parameter tensor (per entries each). */
static double model_gradcheck(const char *const *kv, int train, int per) {
    enum { V = 11, Vt = 9, B = 3, T = 5, U = 4 };
    const int xl[B] = {5, 3, 1}, yl[B] = {4, 2, 1};
    nn_model m;
    ck_assert_int_eq(model_make(&m, kv, V, Vt, B, T, U, 3), 0);
    /* Sharpen the attention (x4 on its weights) so that its paths carry gradients well
     * above float32 noise; at PyTorch's init they are ~1e-4 here. */
    for (int i = 0; i < m.params.n; i++)
        if (strncmp(m.params.p[i].name, "attention/", 10) == 0)
            for (size_t k = 0; k < m.params.p[i].size; k++)
                m.params.data[m.params.p[i].offset + k] *= 4.0f;
    tbatch t;
    tbatch_make(&t, B, T, U, xl, yl, V, Vt, 11);
    nn_params_zero_grad(&m.params);
    nn_stats st = {0};
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &st), 0);
    ck_assert_double_eq(st.count, 4 + 2 + 1);
    size_t n = m.params.total;
    float *g = malloc(n * sizeof *g);
    memcpy(g, m.params.grad, n * sizeof *g);
    gc_ctx c = {&m, &t.b, train};
    double worst = 0;
    for (int i = 0; i < m.params.n; i++) {
        nn_param *p = &m.params.p[i];
        /* h = 3e-2: the float32 loss carries ~1e-6 relative noise and the attention
         * gradients are ~1e-4, so smaller steps measure noise (errors scale as 1/h) */
        double e = nn_gradcheck(gc_loss, &c, m.params.data + p->offset, g + p->offset, p->size,
                                3e-2f, per);
        if (e > 1e-2) fprintf(stderr, "  %s: gradcheck error %g\n", p->name, e);
        if (!(e <= worst)) worst = e;
    }
    free(g);
    tbatch_free(&t);
    nn_model_free(&m);
    return worst;
}

START_TEST(test_model_gradients_lstm_attention_bidirectional) {
    const char *kv[] = {"cell", "lstm", "dim", "4", "hidden", "5", "bidirectional", "true",
                        "attention", "bahdanau", "dropout", "0", NULL};
    double e = model_gradcheck(kv, 0, 12);
    ck_assert_msg(e < 2e-2, "worst %g", e);
}
END_TEST

START_TEST(test_model_gradients_gru_attention_two_layers) {
    const char *kv[] = {"cell", "gru", "dim", "4", "hidden", "5", "layers", "2",
                        "bidirectional", "false", "attention", "bahdanau", "dropout", "0", NULL};
    double e = model_gradcheck(kv, 0, 12);
    ck_assert_msg(e < 2e-2, "worst %g", e);
}
END_TEST

START_TEST(test_model_gradients_without_attention) {
    const char *kl[] = {"cell", "lstm", "dim", "4", "hidden", "5", "bidirectional", "false",
                        "attention", "none", "dropout", "0", NULL};
    const char *kg[] = {"cell", "gru", "dim", "4", "hidden", "5", "bidirectional", "true",
                        "attention", "none", "dropout", "0", NULL};
    double el = model_gradcheck(kl, 0, 12), eg = model_gradcheck(kg, 0, 12);
    ck_assert_msg(el < 2e-2 && eg < 2e-2, "lstm %g gru %g", el, eg);
}
END_TEST

START_TEST(test_model_gradients_with_dropout) {
    /* The masks are keyed by (seed, step, example index), so the training loss is a
     * deterministic function of the parameters and can be differenced. */
    const char *kv[] = {"cell", "gru", "dim", "4", "hidden", "5", "bidirectional", "true",
                        "attention", "bahdanau", "dropout", "0.3", NULL};
    double e = model_gradcheck(kv, 1, 8);
    ck_assert_msg(e < 2e-2, "worst %g", e);
}
END_TEST

/* ---- against PyTorch ------------------------------------------------------------------------ */

/* Golden values from a float64 PyTorch re-implementation of the same model (nn.LSTM / nn.GRU
 * encoder over pack_padded_sequence, the decoder written out step by step, cross_entropy
 * with ignore_index=0, reduction='sum'), loaded with exactly these weights: tensor i of the
 * registry, entry k = (float)(0.4 sin(0.7 k + 1.3 i + 0.2)), embedding PAD rows zero. proj
 * is sum_k sin(1.3 k) grad[k] over the flat gradient buffer (registration order), so it
 * covers every gradient entry. PyTorch's per-tensor gradients agreed with ours to <= 2e-5
 * relative. */
typedef struct torch_case {
    const char *cell, *attn, *bidir, *layers;
    double loss, proj;
} torch_case;

START_TEST(test_loss_and_gradients_match_pytorch) {
    static const torch_case cases[] = {
        {"lstm", "bahdanau", "true", "1", 18.6036905, 1.01009824},
        {"gru", "bahdanau", "false", "2", 19.8376026, 1.57009175},
        {"lstm", "none", "false", "1", 13.9226729, 0.906759868},
        {"gru", "none", "true", "1", 15.4669716, 1.99909809},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const torch_case *k = &cases[c];
        const char *kv[] = {"cell", k->cell, "attention", k->attn, "bidirectional", k->bidir,
                            "layers", k->layers, "dim", "6", "hidden", "7", "dropout", "0", NULL};
        nn_model m;
        ck_assert_int_eq(model_make(&m, kv, 11, 9, 3, 5, 4, 7), 0);
        nn_params *ps = &m.params;
        for (int i = 0; i < ps->n; i++) {
            nn_param *p = &ps->p[i];
            for (size_t j = 0; j < p->size; j++)
                ps->data[p->offset + j] = (float)(0.4 * sin(0.7 * (double)j + 1.3 * i + 0.2));
            if (strstr(p->name, "embedding"))
                memset(ps->data + p->offset + (size_t)NN_PAD * p->shape[1], 0,
                       (size_t)p->shape[1] * sizeof(float));
        }
        int32_t x[15] = {4, 5, 6, 7, 8, 9, 10, 4, 0, 0, 5, 0, 0, 0, 0}, xl[3] = {5, 3, 1};
        int32_t y[12] = {4, 5, 6, 3, 7, 3, 0, 0, 3, 0, 0, 0}, yl[3] = {4, 2, 1};
        nn_batch b = {0};
        b.B = 3, b.T = 5, b.U = 4, b.x = x, b.x_len = xl, b.y = y, b.y_len = yl;
        nn_params_zero_grad(ps);
        nn_stats st = {0};
        ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), 0);
        double proj = 0;
        for (size_t j = 0; j < ps->total; j++) proj += sin(1.3 * (double)j) * ps->grad[j];
        ck_assert_msg(fabs(st.loss - k->loss) < 1e-5 * k->loss && fabs(proj - k->proj) < 1e-4,
                      "%s/%s: loss %.7f (torch %.7f), proj %.7f (torch %.7f)", k->cell, k->attn,
                      st.loss, k->loss, proj, k->proj);
        nn_model_free(&m);
    }
}
END_TEST

/* ---- masking ------------------------------------------------------------------------------ */

START_TEST(test_padding_content_does_not_change_loss_or_gradients) {
    enum { V = 11, Vt = 9, B = 3, T = 6, U = 5 };
    const int xl[B] = {6, 2, 0}, yl[B] = {5, 3, 1};
    const char *kv[] = {"cell", "lstm", "dim", "4", "hidden", "5", "dropout", "0", NULL};
    nn_model m;
    ck_assert_int_eq(model_make(&m, kv, V, Vt, B, T, U, 4), 0);
    tbatch t;
    tbatch_make(&t, B, T, U, xl, yl, V, Vt, 12);
    size_t n = m.params.total;
    float *g1 = malloc(n * sizeof *g1);
    nn_stats s1 = {0}, s2 = {0};
    nn_params_zero_grad(&m.params);
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &s1), 0);
    memcpy(g1, m.params.grad, n * sizeof *g1);
    /* Garbage (valid ids) in every padded slot. */
    for (int i = 0; i < B; i++) {
        for (int j = xl[i]; j < T; j++) t.x[i * T + j] = 5 + (i + j) % 6;
        for (int j = yl[i]; j < U; j++) t.y[i * U + j] = 4 + (i * j) % 5;
    }
    nn_params_zero_grad(&m.params);
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &s2), 0);
    ck_assert_double_eq_tol(s1.loss, s2.loss, 1e-6 * fabs(s1.loss));
    ck_assert_double_eq(s1.count, s2.count);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(g1[i] - m.params.grad[i]);
        worst = d > worst ? d : worst;
    }
    ck_assert_msg(worst < 1e-5, "gradient changed by %g", worst);

    /* Example 1 alone in a batch with T = 2, U = 3 has the same loss as inside the padded
     * batch: the loss of a batch is the sum of its examples'. */
    nn_stats all = {0}, sum = {0};
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &all), 0);
    for (int i = 0; i < B; i++) {
        tbatch one;
        int oxl[1] = {xl[i]}, oyl[1] = {yl[i]};
        int To = xl[i] > 0 ? xl[i] : 1;
        tbatch_make(&one, 1, To, yl[i], oxl, oyl, V, Vt, 1);
        memcpy(one.x, t.x + i * T, (size_t)xl[i] * sizeof *one.x);
        memcpy(one.y, t.y + i * U, (size_t)yl[i] * sizeof *one.y);
        ck_assert_int_eq(m.ops->evaluate(&m, &one.b, &sum), 0);
        tbatch_free(&one);
    }
    ck_assert_double_eq_tol(sum.loss, all.loss, 1e-5 * fabs(all.loss));
    ck_assert_double_eq(sum.count, all.count);
    free(g1);
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

/* ---- errors ------------------------------------------------------------------------------- */

START_TEST(test_bad_configuration_and_batches_are_rejected) {
    nn_model m;
    const char *bad_cell[] = {"cell", "rnn-ish", NULL};
    ck_assert_int_eq(model_make(&m, bad_cell, 10, 10, 2, 4, 4, 1), NN_ERR_CONFIG);
    const char *bad_attn[] = {"attention", "luong", NULL};
    ck_assert_int_eq(model_make(&m, bad_attn, 10, 10, 2, 4, 4, 1), NN_ERR_CONFIG);
    const char *bad_drop[] = {"dropout", "1.5", NULL};
    ck_assert_int_eq(model_make(&m, bad_drop, 10, 10, 2, 4, 4, 1), NN_ERR_CONFIG);
    ck_assert_int_eq(model_make(&m, NULL, 10, 3, 2, 4, 4, 1), NN_ERR_SHAPE); /* vocab_tgt 3 */
    const char *kv[] = {"dim", "4", "hidden", "4", NULL};
    ck_assert_int_eq(model_make(&m, kv, 10, 10, 2, 4, 4, 1), 0);
    const int xl[2] = {4, 2}, yl[2] = {3, 3};
    tbatch t;
    tbatch_make(&t, 2, 4, 4, xl, yl, 10, 10, 1);
    nn_stats st = {0};
    t.x[1] = 10; /* outside the source vocabulary */
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), NN_ERR_DATA);
    ck_assert_ptr_nonnull(strstr(nn_error(), "source id 10"));
    t.x[1] = 5;
    t.y[0] = 12;
    ck_assert_int_eq(m.ops->forward_backward(&m, &t.b, 1.0f, &st), NN_ERR_DATA);
    t.y[0] = 5;
    t.b.T = 5; /* longer than max_len */
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), NN_ERR_SHAPE);
    t.b.T = 4;
    int32_t out[8];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 0, 0.0f, 4, out), NN_ERR_CONFIG);
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), 0);
    ck_assert(isfinite(st.loss) && st.count == 6);
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

/* ---- decoding ----------------------------------------------------------------------------- */

/* Length of a decoded row: through its NN_EOS, else up to the first NN_PAD or max_out. */
static int out_len(const int32_t *o, int max_out) {
    for (int j = 0; j < max_out; j++) {
        if (o[j] == NN_EOS) return j + 1;
        if (o[j] == NN_PAD) return j;
    }
    return max_out;
}

/* Checks the output format: no PAD/BOS inside, PAD only after the end. */
static void check_format(const int32_t *out, int B, int max_out, int Vt) {
    for (int i = 0; i < B; i++) {
        const int32_t *o = out + i * max_out;
        int n = out_len(o, max_out);
        for (int j = 0; j < n; j++) {
            ck_assert(o[j] != NN_PAD && o[j] != NN_BOS && o[j] >= 0 && o[j] < Vt);
            if (j < n - 1) ck_assert_int_ne(o[j], NN_EOS);
        }
        for (int j = n; j < max_out; j++) ck_assert_int_eq(o[j], NN_PAD);
    }
}

/* Log-probability of the decoded row i under the model (evaluate on a batch of one). */
static double seq_logprob(nn_model *m, const nn_batch *b, int i, const int32_t *o, int n) {
    tbatch one;
    int xl[1] = {b->x_len[i]}, yl[1] = {n};
    tbatch_make(&one, 1, b->T, n, xl, yl, 5, 5, 1);
    memcpy(one.x, b->x + (size_t)i * b->T, (size_t)b->T * sizeof *one.x);
    memcpy(one.y, o, (size_t)n * sizeof *one.y);
    nn_stats st = {0};
    ck_assert_int_eq(m->ops->evaluate(m, &one.b, &st), 0);
    tbatch_free(&one);
    return -st.loss;
}

/* A random model whose PAD and BOS outputs have ~0 probability (so the decoder's masked
 * distribution and evaluate's full one agree) and whose EOS is likely enough that most
 * hypotheses end before max_out. */
static void decode_model(nn_model *m, const char *cell, const char *attn, uint64_t seed) {
    const char *kv[] = {"cell", cell, "attention", attn, "dim", "6", "hidden", "8", "dropout", "0",
                        NULL};
    ck_assert_int_eq(model_make(m, kv, 12, 10, 6, 7, 10, seed), 0);
    int ib = nn_params_find(&m->params, "output/bias");
    int iw = nn_params_find(&m->params, "output/weight");
    ck_assert(ib >= 0 && iw >= 0);
    float *bias = m->params.data + m->params.p[ib].offset;
    float *W = m->params.data + m->params.p[iw].offset;
    for (size_t i = 0; i < m->params.p[iw].size; i++) W[i] *= 6.0f; /* peaky distributions */
    bias[NN_PAD] = -1e4f;
    bias[NN_BOS] = -1e4f;
    bias[NN_EOS] += 1.0f;
}

START_TEST(test_beam_one_equals_greedy) {
    const char *cells[2] = {"lstm", "gru"}, *attns[2] = {"bahdanau", "none"};
    for (int c = 0; c < 4; c++) {
        nn_model m;
        decode_model(&m, cells[c % 2], attns[c / 2], 20 + c);
        const int xl[6] = {7, 5, 3, 1, 6, 2}, yl[6] = {1, 1, 1, 1, 1, 1};
        tbatch t;
        tbatch_make(&t, 6, 7, 1, xl, yl, 12, 10, 30 + c);
        int32_t g[6 * 9], bm[6 * 9];
        ck_assert_int_eq(m.ops->decode(&m, &t.b, 1, 0.0f, 9, g), 0);
        ck_assert_int_eq(nn_s2s_beam_search(&m, &t.b, 1, 0.0f, 9, bm), 0);
        check_format(g, 6, 9, 10);
        for (int i = 0; i < 6 * 9; i++) ck_assert_int_eq(g[i], bm[i]);
        tbatch_free(&t);
        nn_model_free(&m);
    }
}
END_TEST

START_TEST(test_beam_finds_sequences_at_least_as_probable_as_greedy) {
    int better = 0, total = 0;
    for (int c = 0; c < 4; c++) {
        nn_model m;
        decode_model(&m, c % 2 ? "gru" : "lstm", c < 2 ? "bahdanau" : "none", 40 + c);
        const int xl[6] = {7, 5, 3, 1, 6, 2}, yl[6] = {1, 1, 1, 1, 1, 1};
        tbatch t;
        tbatch_make(&t, 6, 7, 1, xl, yl, 12, 10, 50 + c);
        enum { MO = 8 };
        int32_t g[6 * MO], bm[6 * MO];
        ck_assert_int_eq(m.ops->decode(&m, &t.b, 1, 0.0f, MO, g), 0);
        ck_assert_int_eq(m.ops->decode(&m, &t.b, 4, 0.0f, MO, bm), 0);
        check_format(bm, 6, MO, 10);
        for (int i = 0; i < 6; i++) {
            int ng = out_len(g + i * MO, MO), nb = out_len(bm + i * MO, MO);
            double lg = seq_logprob(&m, &t.b, i, g + i * MO, ng);
            double lb = seq_logprob(&m, &t.b, i, bm + i * MO, nb);
            ck_assert_msg(lb >= lg - 1e-4, "model %d example %d: beam %g < greedy %g", c, i,
                          lb, lg);
            better += lb > lg + 1e-4;
            total++;
        }
        tbatch_free(&t);
        nn_model_free(&m);
    }
    fprintf(stderr, "beam 4 beat greedy on %d of %d examples\n", better, total);
}
END_TEST

START_TEST(test_length_normalisation_and_max_length) {
    nn_model m;
    decode_model(&m, "lstm", "bahdanau", 61);
    const int xl[6] = {7, 5, 3, 1, 6, 2}, yl[6] = {1, 1, 1, 1, 1, 1};
    tbatch t;
    tbatch_make(&t, 6, 7, 1, xl, yl, 12, 10, 62);
    /* max_out 2: every row is complete (ends in EOS) or exactly 2 tokens, never longer. */
    int32_t o[6 * 2], o2[6 * 12];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 3, 1.0f, 2, o), 0);
    check_format(o, 6, 2, 10);
    /* alpha > 0 favours longer outputs: mean length with alpha 2 >= with alpha 0. */
    int32_t a0[6 * 12];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 5, 0.0f, 12, a0), 0);
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 5, 2.0f, 12, o2), 0);
    check_format(o2, 6, 12, 10);
    int l0 = 0, l2 = 0;
    for (int i = 0; i < 6; i++) l0 += out_len(a0 + i * 12, 12), l2 += out_len(o2 + i * 12, 12);
    ck_assert_int_ge(l2, l0);
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

START_TEST(test_greedy_decode_exposes_attention_weights) {
    nn_model m;
    decode_model(&m, "gru", "bahdanau", 71);
    int Bq, S, T;
    ck_assert_ptr_null(nn_s2s_attention(&m, &Bq, &S, &T));
    const int xl[6] = {7, 5, 3, 1, 6, 2}, yl[6] = {1, 1, 1, 1, 1, 1};
    tbatch t;
    tbatch_make(&t, 6, 7, 1, xl, yl, 12, 10, 72);
    int32_t o[6 * 5];
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 1, 0.0f, 5, o), 0);
    const float *a = nn_s2s_attention(&m, &Bq, &S, &T);
    ck_assert_ptr_nonnull(a);
    ck_assert(Bq == 6 && S == 5 && T == 7);
    for (int i = 0; i < 6; i++) {
        int n = out_len(o + i * 5, 5);
        for (int s = 0; s < S; s++) {
            double sum = 0;
            for (int j = 0; j < T; j++) {
                float v = a[(i * S + s) * T + j];
                if (j >= xl[i] || s >= n) ck_assert_float_eq(v, 0.0f);
                sum += v;
            }
            if (s < n) ck_assert_double_eq_tol(sum, 1.0, 1e-5);
        }
    }
    /* a beam decode invalidates them */
    ck_assert_int_eq(m.ops->decode(&m, &t.b, 2, 0.0f, 5, o), 0);
    ck_assert_ptr_null(nn_s2s_attention(&m, &Bq, &S, &T));
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

/* ---- learning ----------------------------------------------------------------------------- */

/* Reverse 5 tokens drawn from 6 symbols. Adam on the flat buffer, 2 x 32 examples a step. */
START_TEST(test_learns_to_reverse_five_tokens) {
    enum { V = 10, B = 32, N = 5, U = N + 1, STEPS = 300 };
    const char *kv[] = {"cell", "lstm", "dim", "16", "hidden", "32", "bidirectional", "true",
                        "attention", "bahdanau", "dropout", "0", NULL};
    nn_model m;
    ck_assert_int_eq(model_make(&m, kv, V, V, B, N, U, 5), 0);
    size_t n = m.params.total;
    float *mo = calloc(n, sizeof *mo), *ve = calloc(n, sizeof *ve);
    int32_t x[B * N], y[B * U], xl[B], yl[B];
    nn_batch b = {0};
    b.B = B, b.T = N, b.U = U, b.x = x, b.x_len = xl, b.y = y, b.y_len = yl;
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.999f;
    double first = 0, last = 0;
    for (int step = 1; step <= STEPS; step++) {
        nn_rng r = nn_rng_make(9, step, 0, NN_RNG_USER);
        for (int i = 0; i < B; i++) {
            xl[i] = N, yl[i] = U;
            for (int j = 0; j < N; j++) x[i * N + j] = 4 + (int32_t)nn_rng_below(&r, V - 4);
            for (int j = 0; j < N; j++) y[i * U + j] = x[i * N + N - 1 - j];
            y[i * U + N] = NN_EOS;
        }
        nn_params_zero_grad(&m.params);
        nn_stats st = {0};
        ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f / (B * U), &st), 0);
        if (step == 1) first = st.loss / st.count;
        last = st.loss / st.count;
        float c1 = 1.0f - powf(b1, step), c2 = 1.0f - powf(b2, step);
        for (size_t i = 0; i < n; i++) {
            float g = m.params.grad[i];
            mo[i] = b1 * mo[i] + (1 - b1) * g;
            ve[i] = b2 * ve[i] + (1 - b2) * g * g;
            m.params.data[i] -= lr * (mo[i] / c1) / (sqrtf(ve[i] / c2) + 1e-8f);
        }
    }
    /* Fresh examples, greedy decoding. */
    nn_rng r = nn_rng_make(1234, 0, 0, NN_RNG_USER);
    for (int i = 0; i < B; i++) {
        xl[i] = N;
        for (int j = 0; j < N; j++) x[i * N + j] = 4 + (int32_t)nn_rng_below(&r, V - 4);
    }
    int32_t out[B * (U + 2)];
    ck_assert_int_eq(m.ops->decode(&m, &b, 1, 0.0f, U + 2, out), 0);
    int exact = 0;
    for (int i = 0; i < B; i++) {
        int ok = out[i * (U + 2) + N] == NN_EOS;
        for (int j = 0; j < N; j++) ok &= out[i * (U + 2) + j] == x[i * N + N - 1 - j];
        exact += ok;
    }
    int32_t outb[B * (U + 2)];
    ck_assert_int_eq(m.ops->decode(&m, &b, 3, 0.6f, U + 2, outb), 0);
    int exactb = 0;
    for (int i = 0; i < B; i++) {
        int ok = outb[i * (U + 2) + N] == NN_EOS;
        for (int j = 0; j < N; j++) ok &= outb[i * (U + 2) + j] == x[i * N + N - 1 - j];
        exactb += ok;
    }
    fprintf(stderr, "reverse-5: loss/token %.3f -> %.3f, greedy exact %d/%d, beam-3 exact %d/%d\n",
            first, last, exact, B, exactb, B);
    ck_assert_msg(exact >= B * 3 / 4, "greedy exact %d of %d", exact, B);
    ck_assert_msg(exactb >= B * 3 / 4, "beam exact %d of %d", exactb, B);
    free(mo);
    free(ve);
    nn_model_free(&m);
}
END_TEST

static Suite *s2s_suite(void) {
    Suite *s = suite_create("s2s");
    TCase *t = tcase_create("attention");
    tcase_add_test(t, test_attention_gradients_match_finite_differences);
    tcase_add_test(t, test_attention_with_empty_source_gives_zero_context);
    suite_add_tcase(s, t);
    t = tcase_create("model");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_model_gradients_lstm_attention_bidirectional);
    tcase_add_test(t, test_model_gradients_gru_attention_two_layers);
    tcase_add_test(t, test_model_gradients_without_attention);
    tcase_add_test(t, test_model_gradients_with_dropout);
    tcase_add_test(t, test_loss_and_gradients_match_pytorch);
    tcase_add_test(t, test_padding_content_does_not_change_loss_or_gradients);
    tcase_add_test(t, test_bad_configuration_and_batches_are_rejected);
    suite_add_tcase(s, t);
    t = tcase_create("decode");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_beam_one_equals_greedy);
    tcase_add_test(t, test_beam_finds_sequences_at_least_as_probable_as_greedy);
    tcase_add_test(t, test_length_normalisation_and_max_length);
    tcase_add_test(t, test_greedy_decode_exposes_attention_weights);
    suite_add_tcase(s, t);
    t = tcase_create("learn");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_learns_to_reverse_five_tokens);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(s2s_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
