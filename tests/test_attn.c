/* test_attn.c - models/attn.c and models/gpt.c: attention masks against a naive reference,
 * finite-difference gradients of every layer and of whole GPT models (pre/post-LN,
 * GELU/ReLU, learned/sinusoidal positions, tied/untied, dropout, label smoothing), the
 * key/value cache against the full forward, generation, and errors on bad input.
 *
 * `test_attn --dump DIR` instead writes tiny GPT models, their tokens, logits, loss and
 * gradients as raw files for tests/torch_gpt.py (see dump_model for the format). */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "models/nn.h"

/* ---- helpers --------------------------------------------------------------------------- */

static void fill_normal(float *x, size_t n, float std, uint64_t seed) {
    nn_rng r = nn_rng_make(seed, 0, 0, NN_RNG_USER);
    for (size_t i = 0; i < n; i++) x[i] = std * nn_rng_normal(&r);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Central differences at up to max_checks indices spread over x; counts indices where
 * |g - fd| > atol + rtol * max(|g|, |fd|), printing the first few. The absolute part
 * absorbs float rounding of the loss (a gradient that is exactly 0, like that of the key
 * bias, has pure-noise differences). Where the differences with steps h and h/2 disagree
 * the loss has a kink there (ReLU) and the index is skipped; at most a quarter may be. */
static double fd_at(double (*f)(void *), void *ctx, float *x, size_t i, float h) {
    float keep = x[i];
    x[i] = keep + h;
    double lp = f(ctx);
    x[i] = keep - h;
    double lm = f(ctx);
    x[i] = keep;
    return (lp - lm) / ((double)(keep + h) - (double)(keep - h));
}

static int fd_check(double (*f)(void *), void *ctx, float *x, const float *g, size_t n, float h,
                    int max_checks, double rtol, double atol, const char *what) {
    size_t stride = n > (size_t)max_checks ? n / (size_t)max_checks : 1;
    int bad = 0, kinks = 0, checked = 0;
    for (size_t i = 0; i < n; i += stride) {
        double fd = fd_at(f, ctx, x, i, h), fd2 = fd_at(f, ctx, x, i, h / 2);
        checked++;
        if (fabs(fd - fd2) > atol + rtol * fabs(fd)) {
            kinks++;
            continue;
        }
        double err = fabs(g[i] - fd);
        if (!(err <= atol + rtol * fmax(fabs(g[i]), fabs(fd)))) {
            if (bad++ < 3) fprintf(stderr, "%s[%zu]: analytic %g, numeric %g\n", what, i, g[i], fd);
        }
    }
    if (kinks * 4 > checked) {
        fprintf(stderr, "%s: %d of %d differences unstable\n", what, kinks, checked);
        bad++;
    }
    return bad;
}

/* ---- scaled dot-product attention ------------------------------------------------------------- */

enum { AB = 2, AT = 3, AS = 5, ANH = 2, AHS = 3, ALD = ANH * AHS + 1 };

typedef struct sdpa_case {
    float q[AB * AT * ALD], k[AB * AS * ALD], v[AB * AS * ALD];
    float out[AB * AT * ALD], att[AB * ANH * AT * AS], r[AB * AT * ALD];
    int32_t key_len[AB];
    int causal, T, S;
} sdpa_case;

static double sdpa_loss(void *ctx) {
    sdpa_case *c = ctx;
    memset(c->out, 0, sizeof c->out);
    nn_sdpa_forward(c->out, ALD, c->att, c->q, ALD, c->k, ALD, c->v, ALD, c->key_len, c->causal,
                    AB, c->T, c->S, ANH, AHS);
    return dot(c->out, c->r, sizeof c->out / sizeof(float));
}

/* Straightforward double-precision attention with the documented masks. */
static void naive_sdpa(double *out, const sdpa_case *c) {
    for (int b = 0; b < AB; b++)
        for (int h = 0; h < ANH; h++)
            for (int i = 0; i < c->T; i++) {
                double s[AS], mx = -INFINITY, z = 0.0;
                for (int j = 0; j < c->S; j++) {
                    int ok = j < c->key_len[b] && (!c->causal || j <= i + c->S - c->T);
                    double d = 0.0;
                    for (int e = 0; e < AHS; e++)
                        d += (double)c->q[(b * c->T + i) * ALD + h * AHS + e] *
                             c->k[(b * c->S + j) * ALD + h * AHS + e];
                    s[j] = ok ? d / sqrt((double)AHS) : -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < c->S; j++) {
                    s[j] = isinf(mx) ? 0.0 : exp(s[j] - mx);
                    z += s[j];
                }
                for (int e = 0; e < AHS; e++) {
                    double o = 0.0;
                    for (int j = 0; j < c->S; j++)
                        o += (z > 0 ? s[j] / z : 0.0) * c->v[(b * c->S + j) * ALD + h * AHS + e];
                    out[(b * c->T + i) * ALD + h * AHS + e] = o;
                }
            }
}

static void sdpa_setup(sdpa_case *c, int causal, int T, int S, int len0, int len1) {
    memset(c, 0, sizeof *c);
    fill_normal(c->q, sizeof c->q / 4, 1.0f, 1);
    fill_normal(c->k, sizeof c->k / 4, 1.0f, 2);
    fill_normal(c->v, sizeof c->v / 4, 1.0f, 3);
    fill_normal(c->r, sizeof c->r / 4, 1.0f, 4);
    c->causal = causal, c->T = T, c->S = S;
    c->key_len[0] = len0, c->key_len[1] = len1;
}

START_TEST(test_sdpa_matches_naive_attention_with_causal_and_padding_masks) {
    static sdpa_case c;
    int shapes[4][5] = {{1, 3, 3, 3, 2}, {1, 3, 5, 5, 4}, {0, 3, 5, 2, 5}, {1, 1, 5, 5, 3}};
    for (int s = 0; s < 4; s++) {
        sdpa_setup(&c, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
        sdpa_loss(&c);
        double ref[AB * AT * ALD] = {0};
        naive_sdpa(ref, &c);
        for (int b = 0; b < AB; b++)
            for (int i = 0; i < c.T; i++)
                for (int e = 0; e < ANH * AHS; e++)
                    ck_assert_double_eq_tol(c.out[(b * c.T + i) * ALD + e],
                                            ref[(b * c.T + i) * ALD + e], 1e-5);
    }
}
END_TEST

START_TEST(test_sdpa_gradients_match_finite_differences) {
    static sdpa_case c;
    int shapes[3][5] = {{1, 3, 3, 3, 2}, {1, 2, 5, 4, 5}, {0, 3, 5, 5, 3}};
    for (int s = 0; s < 3; s++) {
        sdpa_setup(&c, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
        static float dq[AB * AT * ALD], dk[AB * AS * ALD], dv[AB * AS * ALD], scratch[2 * AT * AS];
        memset(dq, 0, sizeof dq), memset(dk, 0, sizeof dk), memset(dv, 0, sizeof dv);
        sdpa_loss(&c);
        nn_sdpa_backward(dq, dk, dv, scratch, c.r, ALD, c.att, c.q, ALD, c.k, ALD, c.v, ALD,
                         c.key_len, c.causal, AB,
                         c.T, c.S, ANH, AHS);
        size_t nq = (size_t)AB * c.T * ALD, nk = (size_t)AB * c.S * ALD;
        ck_assert_int_eq(fd_check(sdpa_loss, &c, c.q, dq, nq, 1e-2f, 200, 1e-2, 1e-4, "grad"), 0);
        ck_assert_int_eq(fd_check(sdpa_loss, &c, c.k, dk, nk, 1e-2f, 200, 1e-2, 1e-4, "dk"), 0);
        ck_assert_int_eq(fd_check(sdpa_loss, &c, c.v, dv, nk, 1e-2f, 200, 1e-2, 1e-4, "grad"), 0);
    }
}
END_TEST

START_TEST(test_sdpa_fully_masked_rows_give_zeros_not_nan) {
    static sdpa_case c;
    sdpa_setup(&c, 1, 3, 5, 0, 1); /* example 0: no key at all; example 1: one key */
    for (size_t i = 0; i < sizeof c.out / 4; i++) c.out[i] = NAN;
    nn_sdpa_forward(c.out, ALD, c.att, c.q, ALD, c.k, ALD, c.v, ALD, c.key_len, 1, AB, 3, 5, ANH,
                    AHS);
    for (int i = 0; i < 3; i++)
        for (int e = 0; e < ANH * AHS; e++) ck_assert_float_eq(c.out[i * ALD + e], 0.0f);
    for (int i = 0; i < 3; i++) /* one visible key: the output is its value */
        for (int e = 0; e < ANH * AHS; e++)
            ck_assert_float_eq_tol(c.out[(3 + i) * ALD + e], c.v[5 * ALD + e], 1e-6);
    static float dq[AB * AT * ALD], dk[AB * AS * ALD], dv[AB * AS * ALD], scratch[2 * AT * AS];
    nn_sdpa_backward(dq, dk, dv, scratch, c.r, ALD, c.att, c.q, ALD, c.k, ALD, c.v, ALD, c.key_len,
                     1, AB, 3, 5,
                     ANH, AHS);
    for (size_t i = 0; i < sizeof dq / 4; i++) ck_assert(isfinite(dq[i]));
    for (size_t i = 0; i < 5 * ALD; i++) ck_assert_float_eq(dk[i], 0.0f);
    for (size_t i = 0; i < 5 * ALD; i++) ck_assert_float_eq(dv[i], 0.0f);
}
END_TEST

/* ---- layer norm, GELU, cross-entropy ---------------------------------------------------------- */

enum { LN = 3, LC = 37 };
typedef struct ln_case {
    float x[LN * LC], g[LC], b[LC], y[LN * LC], mean[LN], rstd[LN], r[LN * LC];
} ln_case;

static double ln_loss(void *ctx) {
    ln_case *c = ctx;
    nn_flayernorm_forward(c->y, c->mean, c->rstd, c->x, c->g, c->b, LN, LC);
    return dot(c->y, c->r, LN * LC);
}

START_TEST(test_layernorm_matches_definition_and_finite_differences) {
    static ln_case c;
    fill_normal(c.x, LN * LC, 2.0f, 5);
    fill_normal(c.g, LC, 1.0f, 6);
    fill_normal(c.b, LC, 1.0f, 7);
    fill_normal(c.r, LN * LC, 1.0f, 8);
    ln_loss(&c);
    for (int i = 0; i < LN; i++) {
        double m = 0, v = 0;
        for (int j = 0; j < LC; j++) m += c.x[i * LC + j] / (double)LC;
        for (int j = 0; j < LC; j++) v += pow(c.x[i * LC + j] - m, 2) / LC;
        for (int j = 0; j < LC; j++)
            ck_assert_double_eq_tol(c.y[i * LC + j],
                                    (c.x[i * LC + j] - m) / sqrt(v + 1e-5) * c.g[j] + c.b[j],
                                    1e-5);
    }
    static float dx[LN * LC], dg[LC], db[LC];
    nn_flayernorm_backward(dx, dg, db, c.r, c.x, c.mean, c.rstd, c.g, LN, LC);
    ck_assert_int_eq(fd_check(ln_loss, &c, c.x, dx, LN * LC, 1e-2f, 111, 1e-2, 1e-4, "grad"), 0);
    ck_assert_int_eq(fd_check(ln_loss, &c, c.g, dg, LC, 1e-2f, 37, 1e-2, 1e-4, "grad"), 0);
    ck_assert_int_eq(fd_check(ln_loss, &c, c.b, db, LC, 1e-2f, 37, 1e-2, 1e-4, "grad"), 0);
}
END_TEST

enum { GN = 53 };
typedef struct gelu_case { float x[GN], y[GN], r[GN]; } gelu_case;
static double gelu_loss(void *ctx) {
    gelu_case *c = ctx;
    nn_fgelu_forward(c->y, c->x, GN);
    return dot(c->y, c->r, GN);
}

START_TEST(test_gelu_matches_tanh_formula_finite_differences_and_cached_pair) {
    static gelu_case c;
    fill_normal(c.x, GN, 3.0f, 9);
    c.x[0] = 40.0f, c.x[1] = -40.0f, c.x[2] = 0.0f;
    fill_normal(c.r, GN, 1.0f, 10);
    gelu_loss(&c);
    for (int i = 0; i < GN; i++) {
        double x = c.x[i];
        double ref = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        ck_assert_double_eq_tol(c.y[i], ref, 1e-6 * (1 + fabs(ref)));
    }
    float dx[GN] = {0}, dx2[GN];
    nn_fgelu_backward(dx, c.r, c.x, GN);
    ck_assert_int_eq(fd_check(gelu_loss, &c, c.x, dx, GN, 1e-2f, GN, 1e-2, 1e-4, "dgelu"), 0);
    memcpy(dx2, c.r, sizeof dx2);
    nn_fgelu_backward_inplace(dx2, c.x, GN);
    for (int i = 0; i < GN; i++) ck_assert_float_eq_tol(dx2[i], dx[i], 1e-6);
    /* the training pair (tanh kept from forward) agrees with the plain kernels */
    float y3[GN], t3[GN], dx3[GN];
    nn_fgelu_forward_cache(y3, t3, c.x, GN);
    memcpy(dx3, c.r, sizeof dx3);
    nn_fgelu_backward_cached(dx3, c.x, t3, GN);
    for (int i = 0; i < GN; i++) {
        ck_assert_float_eq_tol(y3[i], c.y[i], 1e-6);
        ck_assert_float_eq_tol(dx3[i], dx[i], 1e-6);
    }
}
END_TEST

enum { XN = 4, XV = 29 };
typedef struct xent_case {
    float z[XN * XV], d[XN * XV];
    int32_t t[XN];
    float ls;
} xent_case;
static double xent_loss(void *ctx) {
    xent_case *c = ctx;
    return nn_fxent_forward_backward(NULL, c->z, c->t, XN, XV, NN_PAD, c->ls, 0.0f, NULL, NULL);
}

START_TEST(test_xent_label_smoothing_value_gradient_and_ignored_rows) {
    static xent_case c;
    fill_normal(c.z, XN * XV, 3.0f, 11);
    c.z[2 * XV + 7] = 60.0f; /* a dominant logit */
    int32_t t[XN] = {5, NN_PAD, 7, 28};
    memcpy(c.t, t, sizeof t);
    for (int s = 0; s < 2; s++) {
        c.ls = s ? 0.1f : 0.0f;
        double cnt = 0, hits = 0;
        double loss = nn_fxent_forward_backward(c.d, c.z, c.t, XN, XV, NN_PAD, c.ls, 1.0f, &cnt,
                                                &hits);
        double ref = 0.0, ref_hits = 0;
        for (int i = 0; i < XN; i++) {
            if (t[i] == NN_PAD) continue;
            double mx = -INFINITY, z = 0, mean = 0;
            int am = 0;
            for (int j = 0; j < XV; j++)
                if (c.z[i * XV + j] > mx) mx = c.z[i * XV + j], am = j;
            for (int j = 0; j < XV; j++) z += exp(c.z[i * XV + j] - mx), mean += c.z[i * XV + j];
            double lz = mx + log(z);
            ref += (1 - c.ls) * (lz - c.z[i * XV + t[i]]) + c.ls * (lz - mean / XV);
            ref_hits += am == t[i];
        }
        ck_assert_double_eq_tol(loss, ref, 1e-4);
        ck_assert_double_eq(cnt, 3.0);
        ck_assert_double_eq(hits, ref_hits);
        for (int j = 0; j < XV; j++) ck_assert_float_eq(c.d[XV + j], 0.0f);
        ck_assert_int_eq(
            fd_check(xent_loss, &c, c.z, c.d, XN * XV, 1e-2f, XN * XV, 1e-2, 1e-3, "dxent"), 0);
        /* in place gives the same gradient */
        float z2[XN * XV];
        memcpy(z2, c.z, sizeof z2);
        nn_fxent_forward_backward(z2, z2, c.t, XN, XV, NN_PAD, c.ls, 1.0f, NULL, NULL);
        for (int i = 0; i < XN * XV; i++) ck_assert_float_eq_tol(z2[i], c.d[i], 1e-7);
    }
}
END_TEST

/* ---- positional encodings and embeddings -------------------------------------------------------- */

START_TEST(test_sinusoid_table_follows_vaswani) {
    enum { T = 7, C = 10 };
    float tab[T * C];
    nn_sinusoid_table(tab, T, C);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C / 2; i++) {
            double a = t / pow(10000.0, 2.0 * i / C);
            ck_assert_double_eq_tol(tab[t * C + 2 * i], sin(a), 1e-6);
            ck_assert_double_eq_tol(tab[t * C + 2 * i + 1], cos(a), 1e-6);
        }
}
END_TEST

enum { EB = 2, ET = 3, EC = 4, EV = 6 };
typedef struct emb_case {
    float wte[EV * EC], pos[ET * EC], x[EB * ET * EC], r[EB * ET * EC];
    int32_t ids[EB * ET];
} emb_case;
static double emb_loss(void *ctx) {
    emb_case *c = ctx;
    nn_embed_pos_forward(c->x, c->ids, c->wte, c->pos, EB, ET, EC);
    return dot(c->x, c->r, EB * ET * EC);
}

START_TEST(test_embedding_with_positions_gradient_skips_padding) {
    static emb_case c;
    fill_normal(c.wte, EV * EC, 1.0f, 12);
    fill_normal(c.pos, ET * EC, 1.0f, 13);
    fill_normal(c.r, EB * ET * EC, 1.0f, 14);
    int32_t ids[EB * ET] = {4, 5, 4, NN_PAD, 1, 5};
    memcpy(c.ids, ids, sizeof ids);
    emb_loss(&c);
    for (int e = 0; e < EC; e++) ck_assert_float_eq(c.x[3 * EC + e], c.pos[e]);
    float dwte[EV * EC] = {0}, dpos[ET * EC] = {0};
    nn_embed_pos_backward(dwte, dpos, c.r, c.ids, EB, ET, EC);
    for (int e = 0; e < EC; e++) ck_assert_float_eq(dwte[NN_PAD * EC + e], 0.0f);
    ck_assert_int_eq(fd_check(emb_loss, &c, c.wte + EC, dwte + EC, (EV - 1) * EC, 1e-2f,
                                     40, 1e-2, 1e-4, "grad"), 0);
    ck_assert_int_eq(fd_check(emb_loss, &c, c.pos, dpos, ET * EC, 1e-2f, 12, 1e-2, 1e-4, "grad"), 0);
}
END_TEST

/* ---- whole GPT models -------------------------------------------------------------------------- */

/* Builds model m of ops from the key/value list kv (NULL-terminated) and dims d, then
 * redraws every parameter from wseed: norm gains 1 + 0.3 N(0,1), everything else
 * std N(0,1) — larger than the init, so every path carries a visible gradient. */
static void model_case_init(nn_model *m, const nn_model_ops *ops, const char *const *kv,
                            const nn_dims *d, uint64_t seed, uint64_t wseed, float std) {
    nn_config cfg = {0};
    for (int i = 0; kv[i]; i += 2) nn_config_set(&cfg, kv[i], kv[i + 1]);
    memset(m, 0, sizeof *m);
    int rc = nn_model_init(m, ops, &cfg, d, seed);
    ck_assert_msg(rc == 0, "init: %s", nn_error());
    nn_config_free(&cfg);
    nn_params *ps = &m->params;
    for (int i = 0; i < ps->n; i++) {
        nn_param *p = &ps->p[i];
        nn_rng r = nn_rng_make(wseed, (uint64_t)i, 0, NN_RNG_USER);
        for (size_t j = 0; j < p->size; j++) {
            float *w = ps->data + p->offset + j;
            if (strstr(p->name, "/g")) *w = 1.0f + 0.3f * nn_rng_normal(&r);
            else *w = std * nn_rng_normal(&r);
        }
    }
}

typedef struct gpt_case {
    nn_model m;
    int32_t x[128], y[128];
    int64_t index[8];
    nn_batch b;
} gpt_case;

static void gpt_case_init(gpt_case *c, const char *const *kv, int V, int B, int T, float std) {
    nn_dims d = {0};
    d.vocab = V, d.max_len = T, d.max_batch = B;
    model_case_init(&c->m, &nn_gpt_ops, kv, &d, 42, 7, std);
    nn_rng r = nn_rng_make(3, 0, 0, NN_RNG_USER);
    for (int i = 0; i < B * T; i++) {
        c->x[i] = 1 + (int32_t)nn_rng_below(&r, (uint32_t)V - 1);
        c->y[i] = 1 + (int32_t)nn_rng_below(&r, (uint32_t)V - 1);
    }
    c->y[1] = NN_PAD; /* ignored target */
    c->x[B * T - 1] = NN_PAD; /* padded input at the end */
    c->y[B * T - 1] = NN_PAD;
    for (int i = 0; i < B; i++) c->index[i] = 100 + i;
    memset(&c->b, 0, sizeof c->b);
    c->b.B = B, c->b.T = T, c->b.U = T, c->b.x = c->x, c->b.y = c->y, c->b.index = c->index;
    c->b.step = 5;
}

static double gpt_loss(void *ctx) {
    gpt_case *c = ctx;
    nn_stats st = {0};
    int rc = c->m.ops->forward_backward(&c->m, &c->b, 1.0f, &st);
    ck_assert_int_eq(rc, 0);
    return st.loss;
}

static void check_gpt_gradients(const char *const *kv) {
    static gpt_case c;
    gpt_case_init(&c, kv, 13, 2, 5, 0.3f);
    nn_params *ps = &c.m.params;
    nn_params_zero_grad(ps);
    gpt_loss(&c);
    float *g = malloc(ps->total * sizeof *g);
    memcpy(g, ps->grad, ps->total * sizeof *g);
    for (int i = 0; i < ps->n; i++) {
        nn_param *p = &ps->p[i];
        int bad = fd_check(gpt_loss, &c, ps->data + p->offset, g + p->offset, p->size, 1e-2f,
                           12, 2e-2, 2e-3, p->name);
        ck_assert_msg(bad == 0, "%s: %s has %d gradient mismatches", kv[1], p->name, bad);
    }
    free(g);
    nn_model_free(&c.m);
}

START_TEST(test_gpt_pre_ln_gelu_learned_tied_gradients) {
    const char *kv[] = {"norm", "pre", "layers", "2", "heads", "2", "dim", "8", "ff", "12",
                        "context", "6", NULL};
    check_gpt_gradients(kv);
}
END_TEST

START_TEST(test_gpt_post_ln_relu_sinusoidal_untied_smoothed_gradients) {
    const char *kv[] = {"norm", "post", "layers", "2", "heads", "2", "dim", "8", "ff", "12",
                        "context", "5", "activation", "relu", "pos", "sinusoidal", "tie", "0",
                        "label-smoothing", "0.1", NULL};
    check_gpt_gradients(kv);
}
END_TEST

/* bf16 matmuls: the loss and gradient of a gpt stay close to fp32 (the rounding of GEMM
 * inputs only), and the same call gives the same bits. */
START_TEST(test_gpt_bf16_matmul_tracks_fp32) {
    const char *kv[] = {"norm", "pre", "layers", "2", "heads", "4", "dim", "64", "ff", "128",
                        "context", "32", NULL};
    static gpt_case c;
    gpt_case_init(&c, kv, 97, 4, 32, 0.05f);
    nn_params *ps = &c.m.params;
    size_t P = ps->total;
    float *g32 = malloc(P * sizeof *g32), *g16 = malloc(P * sizeof *g16);
    nn_params_zero_grad(ps);
    double l32 = gpt_loss(&c);
    memcpy(g32, ps->grad, P * sizeof *g32);
    nn_set_matmul(NN_MATMUL_BF16);
    nn_params_zero_grad(ps);
    double l16 = gpt_loss(&c);
    memcpy(g16, ps->grad, P * sizeof *g16);
    nn_params_zero_grad(ps);
    double again = gpt_loss(&c);
    nn_set_matmul(NN_MATMUL_FP32);
    ck_assert_msg(l16 == again && memcmp(g16, ps->grad, P * sizeof *g16) == 0,
                  "bf16 run repeated: different bits");
    ck_assert_msg(l16 != l32 && fabs(l16 - l32) < 5e-3 * fabs(l32), "loss fp32 %.6f, bf16 %.6f",
                  l32, l16);
    for (int i = 0; i < ps->n; i++) {
        const nn_param *p = &ps->p[i];
        double dot = 0, n32 = 0, n16 = 0;
        for (size_t j = p->offset; j < p->offset + p->size; j++)
            dot += (double)g32[j] * g16[j], n32 += (double)g32[j] * g32[j], n16 += (double)g16[j] * g16[j];
        /* the key bias has a zero gradient in exact arithmetic (softmax ignores a constant
         * added to every score): both are rounding noise */
        if (n32 == 0 || strstr(p->name, "attn/b_k")) continue;
        double cosine = dot / sqrt(n32 * n16);
        ck_assert_msg(cosine > 0.99, "%s: gradient cosine %.4f between fp32 and bf16", p->name,
                      cosine);
    }
    free(g32), free(g16);
    nn_model_free(&c.m);
}
END_TEST

START_TEST(test_gpt_dropout_gradients_and_keyed_masks) {
    const char *kv[] = {"norm", "pre", "layers", "1", "heads", "2", "dim", "8", "ff", "12",
                        "context", "5", "dropout", "0.3", NULL};
    check_gpt_gradients(kv);
    /* the same step and examples give the same loss; another step another one */
    static gpt_case c;
    gpt_case_init(&c, kv, 13, 2, 5, 0.3f);
    double a = gpt_loss(&c), b = gpt_loss(&c);
    c.b.step = 6;
    double d = gpt_loss(&c);
    ck_assert_double_eq(a, b);
    ck_assert_double_ne(a, d);
    nn_model_free(&c.m);
}
END_TEST

static void check_cache(const char *const *kv) {
    static gpt_case c;
    enum { V = 17, T = 7 };
    gpt_case_init(&c, kv, V, 1, T, 0.3f);
    static float full[T * V], inc[T * V];
    ck_assert_int_eq(nn_gpt_logits(&c.m, c.x, 1, T, full), 0);
    for (int first = 1; first <= 3; first++) {
        ck_assert_int_eq(nn_gpt_cached_logits(&c.m, c.x, T, first, inc), 0);
        for (int i = (first - 1) * V; i < T * V; i++)
            ck_assert_float_eq_tol(inc[i], full[i], 1e-4);
    }
    /* greedy generation equals argmax of a full recompute at every step */
    int32_t seq[T], out[T];
    seq[0] = c.x[0], seq[1] = c.x[1];
    int n = c.m.ops->generate(&c.m, seq, 2, T - 2, 0.0f, 0, 1, out);
    ck_assert_int_ge(n, 1);
    for (int s = 0; s < n; s++) {
        ck_assert_int_eq(nn_gpt_logits(&c.m, seq, 1, 2 + s, full), 0);
        const float *lg = full + (size_t)(1 + s) * V;
        int best = 0;
        for (int j = 1; j < V; j++)
            if (lg[j] > lg[best]) best = j;
        ck_assert_int_eq(out[s], best);
        seq[2 + s] = out[s];
    }
    nn_model_free(&c.m);
}

START_TEST(test_gpt_kv_cache_matches_full_forward) {
    const char *pre[] = {"norm", "pre", "layers", "2", "heads", "2", "dim", "8", "ff", "12",
                         "context", "7", NULL};
    const char *post[] = {"norm", "post", "layers", "2", "heads", "4", "dim", "8", "ff", "12",
                          "context", "7", "pos", "sinusoidal", "tie", "0", NULL};
    check_cache(pre);
    check_cache(post);
}
END_TEST

START_TEST(test_gpt_generate_top_k_sampling_is_keyed_and_bounded) {
    const char *kv[] = {"layers", "1", "heads", "2", "dim", "8", "ff", "12", "context", "16",
                        NULL};
    static gpt_case c;
    enum { V = 40 };
    gpt_case_init(&c, kv, V, 1, 16, 0.5f);
    int32_t prompt[2] = {5, 6}, a[14], b[14], d[14];
    int na = c.m.ops->generate(&c.m, prompt, 2, 14, 1.0f, 3, 99, a);
    int nb = c.m.ops->generate(&c.m, prompt, 2, 14, 1.0f, 3, 99, b);
    int nd = c.m.ops->generate(&c.m, prompt, 2, 14, 5.0f, 0, 100, d);
    ck_assert_int_eq(na, nb);
    ck_assert_int_ge(na, 1);
    ck_assert_int_le(na, 14);
    ck_assert_int_le(nd, 14);
    for (int i = 0; i < na; i++) ck_assert_int_eq(a[i], b[i]);
    /* every sampled token is among the 3 most likely at its position */
    int32_t seq[16];
    memcpy(seq, prompt, sizeof prompt);
    static float lg[16 * V];
    for (int s = 0; s < na; s++) {
        ck_assert_int_eq(nn_gpt_logits(&c.m, seq, 1, 2 + s, lg), 0);
        const float *row = lg + (size_t)(1 + s) * V;
        int above = 0;
        for (int j = 0; j < V; j++) above += row[j] > row[a[s]];
        ck_assert_int_lt(above, 3);
        seq[2 + s] = a[s];
    }
    nn_model_free(&c.m);
}
END_TEST


START_TEST(test_two_threads_give_bit_identical_gradients_and_survive_fork) {
    /* big enough that every kernel takes its two-thread path */
    const char *kv[] = {"layers", "2", "heads", "4", "dim", "256", "ff", "512", "context", "32",
                        "dropout", "0.1", NULL};
    static gpt_case c;
    gpt_case_init(&c, kv, 300, 4, 32, 0.1f);
    nn_params *ps = &c.m.params;
    float *g1 = malloc(ps->total * sizeof *g1);
    int saved = nn_get_threads();
    double loss[2];
    for (int t = 0; t < 2; t++) {
        nn_set_threads(t + 1);
        nn_params_zero_grad(ps);
        loss[t] = gpt_loss(&c);
        if (t == 0) memcpy(g1, ps->grad, ps->total * sizeof *g1);
    }
    ck_assert(loss[0] == loss[1]);
    ck_assert_int_eq(memcmp(g1, ps->grad, ps->total * sizeof *g1), 0);
    /* a forked child (the helper thread is not inherited) still completes a step */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        alarm(20);
        nn_params_zero_grad(ps);
        _exit(gpt_loss(&c) == loss[1] ? 0 : 1);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    nn_set_threads(saved);
    free(g1);
    nn_model_free(&c.m);
}
END_TEST

START_TEST(test_gpt_rejects_bad_configs_and_batches) {
    nn_config cfg = {0};
    nn_dims d = {0};
    d.vocab = 10, d.max_len = 4, d.max_batch = 2;
    nn_model m = {0};
    nn_config_set(&cfg, "dim", "10");
    nn_config_set(&cfg, "heads", "3");
    ck_assert_int_eq(nn_model_init(&m, &nn_gpt_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "heads", "2");
    nn_config_set(&cfg, "context", "3");
    ck_assert_int_eq(nn_model_init(&m, &nn_gpt_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "context", "4");
    nn_config_set(&cfg, "dropout", "1.5");
    ck_assert_int_eq(nn_model_init(&m, &nn_gpt_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "dropout", "0");
    ck_assert_int_eq(nn_model_init(&m, &nn_gpt_ops, &cfg, &d, 1), 0);
    int32_t x[8] = {4, 5, 6, 7, 4, 5, 6, 10}, y[8] = {5, 6, 7, 4, 5, 6, 7, 8};
    nn_batch b = {0};
    b.B = 2, b.T = 4, b.U = 4, b.x = x, b.y = y;
    nn_stats st = {0};
    ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), NN_ERR_DATA);
    x[7] = 9;
    ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), 0);
    ck_assert(isfinite(st.loss) && st.count == 8);
    b.T = 5;
    ck_assert_int_eq(m.ops->evaluate(&m, &b, &st), NN_ERR_SHAPE);
    b.T = 4, b.B = 3;
    ck_assert_int_eq(m.ops->evaluate(&m, &b, &st), NN_ERR_SHAPE);
    nn_model_free(&m);
    nn_config_free(&cfg);
}
END_TEST


/* ---- transformer (encoder-decoder) --------------------------------------------------------------- */

typedef struct xfm_case {
    nn_model m;
    int32_t x[32], y[32];
    int64_t index[4];
    nn_batch b;
} xfm_case;

static void xfm_case_init(xfm_case *c, const char *const *kv, int Vs, int Vt, int B, int T, int U,
                          float std) {
    nn_dims d = {0};
    d.vocab = Vs, d.vocab_tgt = Vt, d.max_len = T, d.max_len_tgt = U, d.max_batch = B;
    model_case_init(&c->m, &nn_transformer_ops, kv, &d, 43, 8, std);
    nn_rng r = nn_rng_make(4, 0, 0, NN_RNG_USER);
    for (int i = 0; i < B * T; i++) c->x[i] = 4 + (int32_t)nn_rng_below(&r, (uint32_t)Vs - 4);
    for (int i = 0; i < B * U; i++) c->y[i] = 4 + (int32_t)nn_rng_below(&r, (uint32_t)Vt - 4);
    /* example 1: a short source (padded) and a short target ending in EOS */
    for (int t = T / 2; t < T; t++) c->x[T + t] = NN_PAD;
    c->y[U - 1] = NN_EOS;
    c->y[U + 1] = NN_EOS;
    for (int u = 2; u < U; u++) c->y[U + u] = NN_PAD;
    for (int i = 0; i < B; i++) c->index[i] = 7 + i;
    memset(&c->b, 0, sizeof c->b);
    c->b.B = B, c->b.T = T, c->b.U = U, c->b.x = c->x, c->b.y = c->y, c->b.index = c->index;
    c->b.step = 3;
}

static double xfm_loss(void *ctx) {
    xfm_case *c = ctx;
    nn_stats st = {0};
    ck_assert_int_eq(c->m.ops->forward_backward(&c->m, &c->b, 1.0f, &st), 0);
    return st.loss;
}

static void check_xfm_gradients(const char *const *kv) {
    static xfm_case c;
    xfm_case_init(&c, kv, 11, 13, 2, 4, 4, 0.3f);
    nn_params *ps = &c.m.params;
    nn_params_zero_grad(ps);
    xfm_loss(&c);
    float *g = malloc(ps->total * sizeof *g);
    memcpy(g, ps->grad, ps->total * sizeof *g);
    for (int i = 0; i < ps->n; i++) {
        nn_param *p = &ps->p[i];
        int bad = fd_check(xfm_loss, &c, ps->data + p->offset, g + p->offset, p->size, 1e-2f, 10,
                           2e-2, 2e-3, p->name);
        ck_assert_msg(bad == 0, "%s: %s has %d gradient mismatches", kv[1], p->name, bad);
    }
    free(g);
    nn_model_free(&c.m);
}

START_TEST(test_transformer_pre_ln_cross_attention_gradients) {
    const char *kv[] = {"norm", "pre", "layers", "2", "heads", "2", "dim", "8", "ff", "12",
                        "context", "4", "activation", "gelu", "dropout", "0.2", NULL};
    check_xfm_gradients(kv);
}
END_TEST

START_TEST(test_transformer_post_ln_learned_untied_gradients) {
    const char *kv[] = {"norm", "post", "layers", "1", "heads", "2", "dim", "8", "ff", "12",
                        "context", "4", "pos", "learned", "tie", "0", "dropout", "0", "activation", "gelu", NULL};
    check_xfm_gradients(kv);
}
END_TEST

/* Sum of target log-probabilities of y (1,U) under teacher forcing, and its length
 * normalised score. */
static double seq_score(nn_model *m, const int32_t *x, int T, const int32_t *y, int U, int V,
                        float alpha) {
    nn_batch b = {0};
    b.B = 1, b.T = T, b.U = U, b.x = x, b.y = y;
    static float lg[16 * 64];
    ck_assert_int_eq(nn_transformer_logits(m, &b, lg), 0);
    double s = 0;
    for (int u = 0; u < U; u++) {
        double mx = -INFINITY, z = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, lg[u * V + j]);
        for (int j = 0; j < V; j++) z += exp(lg[u * V + j] - mx);
        s += lg[u * V + y[u]] - mx - log(z);
    }
    return s / (alpha == 0.0f ? 1.0 : pow((5.0 + U) / 6.0, alpha));
}

START_TEST(test_transformer_greedy_decode_matches_teacher_forced_argmax) {
    const char *kv[] = {"layers", "2", "heads", "2", "dim", "8", "ff", "12", "context", "8",
                        "dropout", "0", NULL};
    static xfm_case c;
    enum { V = 9, T = 5, MAXO = 8 };
    xfm_case_init(&c, kv, 10, V, 2, T, MAXO, 0.6f);
    nn_batch b = c.b;
    int32_t out[2 * MAXO];
    ck_assert_int_eq(c.m.ops->decode(&c.m, &b, 1, 0.0f, MAXO, out), 0);
    for (int e = 0; e < 2; e++) {
        const int32_t *o = out + e * MAXO;
        int n = 0;
        while (n < MAXO && o[n] != NN_PAD && o[n] != NN_EOS) n++;
        int len = n < MAXO && o[n] == NN_EOS ? n + 1 : n;
        for (int u = len; u < MAXO; u++) ck_assert_int_eq(o[u], NN_PAD);
        /* each token is the argmax (over ids other than PAD and BOS) given its prefix */
        static float lg[MAXO * V];
        nn_batch tb = {0};
        tb.B = 1, tb.T = T, tb.U = len, tb.x = c.x + e * T, tb.y = o;
        ck_assert_int_ge(len, 1);
        ck_assert_int_eq(nn_transformer_logits(&c.m, &tb, lg), 0);
        for (int u = 0; u < len; u++) {
            int best = -1;
            for (int j = 0; j < V; j++)
                if (j != NN_PAD && j != NN_BOS && (best < 0 || lg[u * V + j] > lg[u * V + best]))
                    best = j;
            ck_assert_int_eq(o[u], best);
        }
    }
    nn_model_free(&c.m);
}
END_TEST

START_TEST(test_transformer_wide_beam_finds_the_exhaustive_best) {
    const char *kv[] = {"layers", "1", "heads", "2", "dim", "8", "ff", "12", "context", "6",
                        "dropout", "0", NULL};
    static xfm_case c;
    enum { V = 6, T = 4, MAXO = 3 };
    xfm_case_init(&c, kv, 9, V, 1, T, MAXO, 0.8f);
    for (int a = 0; a < 3; a++) { /* several length penalties */
        float alpha = 0.6f * a;
        int32_t out[MAXO];
        ck_assert_int_eq(c.m.ops->decode(&c.m, &c.b, 36, alpha, MAXO, out), 0);
        int len = 0;
        while (len < MAXO && out[len] != NN_PAD) len++;
        double got = seq_score(&c.m, c.x, T, out, len, V, alpha);
        /* every sequence of up to MAXO tokens from {UNK, EOS, 4, 5} that ends at EOS or at
         * MAXO tokens */
        const int32_t toks[4] = {NN_UNK, NN_EOS, 4, 5};
        double best = -INFINITY;
        for (int code = 0; code < 4 * 4 * 4; code++) {
            int32_t s[MAXO];
            int n = 0, c2 = code;
            for (; n < MAXO; n++) {
                s[n] = toks[c2 % 4];
                c2 /= 4;
                if (s[n] == NN_EOS) {
                    n++;
                    break;
                }
            }
            if (n < MAXO && c2 % 4 != 0) continue; /* count each short sequence once */
            best = fmax(best, seq_score(&c.m, c.x, T, s, n, V, alpha));
        }
        ck_assert_double_eq_tol(got, best, 1e-4);
    }
    nn_model_free(&c.m);
}
END_TEST

START_TEST(test_transformer_beam_is_at_least_as_good_as_greedy) {
    const char *kv[] = {"layers", "2", "heads", "2", "dim", "8", "ff", "12", "context", "8",
                        "dropout", "0", NULL};
    static xfm_case c;
    enum { V = 12, T = 5, MAXO = 6 };
    xfm_case_init(&c, kv, 10, V, 2, T, MAXO, 0.7f);
    int32_t g[2 * MAXO], bm[2 * MAXO];
    ck_assert_int_eq(c.m.ops->decode(&c.m, &c.b, 1, 1.0f, MAXO, g), 0);
    ck_assert_int_eq(c.m.ops->decode(&c.m, &c.b, 4, 1.0f, MAXO, bm), 0);
    for (int e = 0; e < 2; e++) {
        int lg = 0, lb = 0;
        while (lg < MAXO && g[e * MAXO + lg] != NN_PAD) lg++;
        while (lb < MAXO && bm[e * MAXO + lb] != NN_PAD) lb++;
        double sg = seq_score(&c.m, c.x + e * T, T, g + e * MAXO, lg, V, 1.0f);
        double sb = seq_score(&c.m, c.x + e * T, T, bm + e * MAXO, lb, V, 1.0f);
        ck_assert_double_ge(sb, sg - 1e-5);
    }
    nn_model_free(&c.m);
}
END_TEST

START_TEST(test_transformer_rejects_bad_batches) {
    const char *kv[] = {"layers", "1", "heads", "2", "dim", "8", "ff", "12", "context", "4", NULL};
    static xfm_case c;
    xfm_case_init(&c, kv, 10, 9, 2, 4, 4, 0.3f);
    nn_stats st = {0};
    c.y[0] = 9; /* outside the target vocabulary */
    ck_assert_int_eq(c.m.ops->forward_backward(&c.m, &c.b, 1.0f, &st), NN_ERR_DATA);
    c.y[0] = 5;
    c.b.U = 5;
    ck_assert_int_eq(c.m.ops->evaluate(&c.m, &c.b, &st), NN_ERR_SHAPE);
    c.b.U = 4;
    ck_assert_int_eq(c.m.ops->evaluate(&c.m, &c.b, &st), 0);
    ck_assert(isfinite(st.loss) && st.count == 4 + 2);
    int32_t out[8];
    ck_assert_int_eq(c.m.ops->decode(&c.m, &c.b, 0, 0.0f, 4, out), NN_ERR_SHAPE);
    nn_model_free(&c.m);
}
END_TEST

/* ---- dump for the PyTorch cross-check ------------------------------------------------------------ */

/* A raw tensor file: int32 kind (0 float32, 1 int32), int32 ndim, int32 dims[ndim], then
 * the values in row-major order, little-endian as on the machine. */
static int write_raw(const char *dir, const char *name, int kind, int ndim, const int *dims,
                     const void *data) {
    char path[1024], flat[NN_NAME_MAX];
    snprintf(flat, sizeof flat, "%s", name);
    for (char *p = flat; *p; p++)
        if (*p == '/') *p = '.';
    snprintf(path, sizeof path, "%s/%s.bin", dir, flat);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)dims[i];
    int32_t hdr[2] = {kind, ndim};
    int ok = fwrite(hdr, 4, 2, f) == 2 && fwrite(dims, 4, (size_t)ndim, f) == (size_t)ndim &&
             fwrite(data, 4, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int dump_model(const char *root, const char *tag, const char *const *kv) {
    enum { V = 53, B = 3, T = 9 };
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, tag);
    if (mkdir(dir, 0777) && errno != EEXIST) return -1;
    nn_config cfg = {0};
    for (int i = 0; kv[i]; i += 2) nn_config_set(&cfg, kv[i], kv[i + 1]);
    nn_dims d = {0};
    d.vocab = V, d.max_len = T, d.max_batch = B;
    nn_model m = {0};
    if (nn_model_init(&m, &nn_gpt_ops, &cfg, &d, 2024)) {
        fprintf(stderr, "dump: %s\n", nn_error());
        return -1;
    }
    /* the configuration as key=value lines */
    char path[1100];
    snprintf(path, sizeof path, "%s/config.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (int i = 0; i < cfg.n; i++) fprintf(f, "%s=%s\n", cfg.key[i], cfg.val[i]);
    fprintf(f, "vocab=%d\n", V);
    fclose(f);
    /* weights a bit larger than the init, so that the logits are not all alike */
    nn_params *ps = &m.params;
    for (int i = 0; i < ps->n; i++) {
        nn_param *p = &ps->p[i];
        nn_rng r = nn_rng_make(11, (uint64_t)i, 0, NN_RNG_USER);
        for (size_t j = 0; j < p->size; j++) {
            float *w = ps->data + p->offset + j;
            *w = strstr(p->name, "/g") ? 1.0f + 0.2f * nn_rng_normal(&r)
                                       : 0.2f * nn_rng_normal(&r);
        }
    }
    int32_t x[B * T], y[B * T];
    nn_rng r = nn_rng_make(5, 0, 0, NN_RNG_USER);
    for (int i = 0; i < B * T; i++) {
        x[i] = 4 + (int32_t)nn_rng_below(&r, V - 4);
        y[i] = 4 + (int32_t)nn_rng_below(&r, V - 4);
    }
    x[B * T - 1] = NN_PAD, y[B * T - 1] = NN_PAD, y[T + 2] = NN_PAD;
    float *logits = malloc((size_t)B * T * V * sizeof *logits);
    int rc = nn_gpt_logits(&m, x, B, T, logits);
    nn_batch b = {0};
    b.B = B, b.T = T, b.U = T, b.x = x, b.y = y;
    nn_stats st = {0};
    nn_params_zero_grad(ps);
    float scale = 1.0f / 24.0f; /* any scale; the script applies the same */
    if (!rc) rc = m.ops->forward_backward(&m, &b, scale, &st);
    int dims[2] = {B, T};
    float loss[2] = {(float)st.loss, scale};
    int one = 2;
    rc = rc || write_raw(dir, "tokens_x", 1, 2, dims, x) || write_raw(dir, "tokens_y", 1, 2, dims, y);
    int ldims[3] = {B, T, V};
    rc = rc || write_raw(dir, "logits", 0, 3, ldims, logits) ||
         write_raw(dir, "loss", 0, 1, &one, loss);
    for (int i = 0; i < ps->n && !rc; i++) {
        nn_param *p = &ps->p[i];
        char name[NN_NAME_MAX + 8];
        snprintf(name, sizeof name, "w.%s", p->name);
        rc = write_raw(dir, name, 0, p->ndim, p->shape, ps->data + p->offset);
        snprintf(name, sizeof name, "g.%s", p->name);
        rc = rc || write_raw(dir, name, 0, p->ndim, p->shape, ps->grad + p->offset);
    }
    free(logits);
    nn_model_free(&m);
    nn_config_free(&cfg);
    return rc ? -1 : 0;
}

/* The transformer: source x (B,T) with a padded example, targets y (B,U) ending in EOS. */
static int dump_transformer(const char *root, const char *tag, const char *const *kv) {
    enum { Vs = 31, Vt = 37, B = 3, T = 7, U = 6 };
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/%s", root, tag);
    if (mkdir(dir, 0777) && errno != EEXIST) return -1;
    nn_config cfg = {0};
    for (int i = 0; kv[i]; i += 2) nn_config_set(&cfg, kv[i], kv[i + 1]);
    nn_dims d = {0};
    d.vocab = Vs, d.vocab_tgt = Vt, d.max_len = T, d.max_len_tgt = U, d.max_batch = B;
    nn_model m = {0};
    if (nn_model_init(&m, &nn_transformer_ops, &cfg, &d, 77)) {
        fprintf(stderr, "dump: %s\n", nn_error());
        return -1;
    }
    snprintf(path, sizeof path, "%s/config.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (int i = 0; i < cfg.n; i++) fprintf(f, "%s=%s\n", cfg.key[i], cfg.val[i]);
    fprintf(f, "model=transformer\nvocab=%d\nvocab_tgt=%d\n", Vs, Vt);
    fclose(f);
    nn_params *ps = &m.params;
    for (int i = 0; i < ps->n; i++) {
        nn_param *p = &ps->p[i];
        nn_rng r = nn_rng_make(12, (uint64_t)i, 0, NN_RNG_USER);
        for (size_t j = 0; j < p->size; j++) {
            float *w = ps->data + p->offset + j;
            *w = strstr(p->name, "/g") ? 1.0f + 0.2f * nn_rng_normal(&r)
                                       : 0.2f * nn_rng_normal(&r);
        }
    }
    int32_t x[B * T], y[B * U];
    nn_rng r = nn_rng_make(6, 0, 0, NN_RNG_USER);
    for (int i = 0; i < B * T; i++) x[i] = 4 + (int32_t)nn_rng_below(&r, Vs - 4);
    for (int i = 0; i < B * U; i++) y[i] = 4 + (int32_t)nn_rng_below(&r, Vt - 4);
    for (int t = 3; t < T; t++) x[T + t] = NN_PAD; /* example 1: source of 3 */
    for (int e = 0; e < B; e++) y[e * U + U - 1] = NN_EOS;
    y[2 * U + 2] = NN_EOS, y[2 * U + 3] = y[2 * U + 4] = y[2 * U + 5] = NN_PAD;
    nn_batch b = {0};
    b.B = B, b.T = T, b.U = U, b.x = x, b.y = y;
    float *logits = malloc((size_t)B * U * Vt * sizeof *logits);
    int rc = nn_transformer_logits(&m, &b, logits);
    nn_stats st = {0};
    nn_params_zero_grad(ps);
    float scale = 1.0f / 16.0f;
    if (!rc) rc = m.ops->forward_backward(&m, &b, scale, &st);
    int xd[2] = {B, T}, yd[2] = {B, U}, ld[3] = {B, U, Vt}, two = 2;
    float loss[2] = {(float)st.loss, scale};
    rc = rc || write_raw(dir, "tokens_x", 1, 2, xd, x) || write_raw(dir, "tokens_y", 1, 2, yd, y) ||
         write_raw(dir, "logits", 0, 3, ld, logits) || write_raw(dir, "loss", 0, 1, &two, loss);
    for (int i = 0; i < ps->n && !rc; i++) {
        nn_param *p = &ps->p[i];
        char name[NN_NAME_MAX + 8];
        snprintf(name, sizeof name, "w.%s", p->name);
        rc = write_raw(dir, name, 0, p->ndim, p->shape, ps->data + p->offset);
        snprintf(name, sizeof name, "g.%s", p->name);
        rc = rc || write_raw(dir, name, 0, p->ndim, p->shape, ps->grad + p->offset);
    }
    free(logits);
    nn_model_free(&m);
    nn_config_free(&cfg);
    return rc ? -1 : 0;
}

static int dump_all(const char *root) {
    if (mkdir(root, 0777) && errno != EEXIST) return -1;
    const char *a[] = {"layers", "2", "heads", "4", "dim", "16", "ff", "40", "context", "9", NULL};
    const char *b[] = {"layers", "2", "heads", "2", "dim", "16", "ff", "24", "context", "12",
                       "norm", "post", "activation", "relu", "pos", "sinusoidal", "tie", "0",
                       "label-smoothing", "0.1", NULL};
    const char *c[] = {"layers", "2", "heads", "2", "dim", "16", "ff", "24", "context", "7",
                       "dropout", "0", "label-smoothing", "0.1", NULL};
    const char *e[] = {"layers", "1", "heads", "4", "dim", "16", "ff", "24", "context", "7",
                       "dropout", "0", "norm", "post", "pos", "learned", "tie", "0",
                       "activation", "gelu", "label-smoothing", "0", NULL};
    if (dump_model(root, "pre_gelu_learned_tied", a)) return -1;
    /* the same model with bf16 matmuls (AMX where present, and the fused output layer) */
    nn_set_matmul(NN_MATMUL_BF16);
    int rc = dump_model(root, "bf16_pre_gelu_learned_tied", a);
    nn_set_matmul(NN_MATMUL_FP32);
    char path[1100];
    snprintf(path, sizeof path, "%s/bf16_pre_gelu_learned_tied/config.txt", root);
    FILE *f = rc ? NULL : fopen(path, "a");
    if (!f || fprintf(f, "matmul=bf16\nengine=%s\n", nn_matmul_engine()) < 0 || fclose(f)) return -1;
    return dump_model(root, "post_relu_sinusoidal_untied", b) ||
           dump_transformer(root, "transformer_pre_relu_sinusoidal_tied", c) ||
           dump_transformer(root, "transformer_post_gelu_learned_untied", e);
}

/* ---- runner -------------------------------------------------------------------------------------- */

static Suite *attn_suite(void) {
    Suite *s = suite_create("attn");
    TCase *t = tcase_create("layers");
    tcase_add_test(t, test_sdpa_matches_naive_attention_with_causal_and_padding_masks);
    tcase_add_test(t, test_sdpa_gradients_match_finite_differences);
    tcase_add_test(t, test_sdpa_fully_masked_rows_give_zeros_not_nan);
    tcase_add_test(t, test_layernorm_matches_definition_and_finite_differences);
    tcase_add_test(t, test_gelu_matches_tanh_formula_finite_differences_and_cached_pair);
    tcase_add_test(t, test_xent_label_smoothing_value_gradient_and_ignored_rows);
    tcase_add_test(t, test_sinusoid_table_follows_vaswani);
    tcase_add_test(t, test_embedding_with_positions_gradient_skips_padding);
    suite_add_tcase(s, t);
    TCase *g = tcase_create("gpt");
    tcase_set_timeout(g, 60);
    tcase_add_test(g, test_gpt_pre_ln_gelu_learned_tied_gradients);
    tcase_add_test(g, test_gpt_post_ln_relu_sinusoidal_untied_smoothed_gradients);
    tcase_add_test(g, test_gpt_bf16_matmul_tracks_fp32);
    tcase_add_test(g, test_gpt_dropout_gradients_and_keyed_masks);
    tcase_add_test(g, test_gpt_kv_cache_matches_full_forward);
    tcase_add_test(g, test_gpt_generate_top_k_sampling_is_keyed_and_bounded);
    tcase_add_test(g, test_gpt_rejects_bad_configs_and_batches);
    tcase_add_test(g, test_two_threads_give_bit_identical_gradients_and_survive_fork);
    suite_add_tcase(s, g);
    TCase *x = tcase_create("transformer");
    tcase_set_timeout(x, 60);
    tcase_add_test(x, test_transformer_pre_ln_cross_attention_gradients);
    tcase_add_test(x, test_transformer_post_ln_learned_untied_gradients);
    tcase_add_test(x, test_transformer_greedy_decode_matches_teacher_forced_argmax);
    tcase_add_test(x, test_transformer_wide_beam_finds_the_exhaustive_best);
    tcase_add_test(x, test_transformer_beam_is_at_least_as_good_as_greedy);
    tcase_add_test(x, test_transformer_rejects_bad_batches);
    suite_add_tcase(s, x);
    return s;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--dump")) {
        if (dump_all(argv[2])) {
            fprintf(stderr, "test_attn: dump to %s failed\n", argv[2]);
            return EXIT_FAILURE;
        }
        return EXIT_SUCCESS;
    }
    SRunner *sr = srunner_create(attn_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
