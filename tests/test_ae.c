/* test_ae.c - models/ae.c and io/png.c: finite-difference gradients of the new losses
 * (MSE, Gaussian KL, sparsity KL, L1) and of every autoencoder variant and the VAE; the KL
 * terms are never negative; PCA recovers known principal directions and its error falls
 * with K to ~0 at K = D; a denoising autoencoder trained briefly on the digits fixture
 * beats the identity of its noisy input on held-out rows; pictures and PNG files have
 * the promised shapes. Every gradient check also requires the negated gradient to fail. */
#include <check.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "io/io.h"
#include "models/nn.h"
#include "tests/testutil.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void fill_uniform(float *x, size_t n, float lo, float hi, uint64_t key) {
    tu_fill_uniform(x, n, lo, hi, 777, key);
}

static void fill_normal(float *x, size_t n, float scale, uint64_t key) {
    tu_fill_normal(x, n, scale, 778, key);
}

static void check_grad(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                       float h, double tol, const char *what) {
    tu_check_grad(f, ctx, x, g, n, h, tol, 300, 1e-3, 0, what);
}

/* Builds ops with "key=value" pairs (NULL-terminated). */
static int build_model(nn_model *m, const nn_model_ops *ops, int D, int B, int classes,
                       const char *const *kv) {
    nn_config cfg = {0};
    for (int i = 0; kv && kv[i]; i++) {
        char k[64];
        const char *eq = strchr(kv[i], '=');
        ck_assert_ptr_nonnull(eq);
        snprintf(k, sizeof k, "%.*s", (int)(eq - kv[i]), kv[i]);
        ck_assert_int_eq(nn_config_set(&cfg, k, eq + 1), 0);
    }
    nn_dims d = {0};
    d.features = D;
    d.max_batch = B;
    d.classes = classes;
    int rc = nn_model_init(m, ops, &cfg, &d, 4242);
    nn_config_free(&cfg);
    return rc;
}

/* A batch of B random rows in [0,1] of width D, labels i % classes, indices 100 + i. */
typedef struct tbatch {
    nn_batch b;
    float *x;
    int32_t *y;
    int64_t *idx;
} tbatch;

static void tbatch_make(tbatch *t, int B, int D, int classes, uint64_t key) {
    t->x = malloc((size_t)B * D * sizeof *t->x);
    t->y = malloc((size_t)B * sizeof *t->y);
    t->idx = malloc((size_t)B * sizeof *t->idx);
    fill_uniform(t->x, (size_t)B * D, 0.02f, 0.98f, key);
    for (int i = 0; i < B; i++) {
        t->y[i] = classes ? i % classes : 0;
        t->idx[i] = 100 + i;
    }
    memset(&t->b, 0, sizeof t->b);
    t->b.B = B;
    t->b.D = D;
    t->b.xf = t->x;
    t->b.y = t->y;
    t->b.index = t->idx;
    t->b.step = 3;
}

static void tbatch_free(tbatch *t) {
    free(t->x);
    free(t->y);
    free(t->idx);
}

/* The loss of the model on a fixed batch: the same step, so the same noise. */
typedef struct mctx {
    nn_model *m;
    const nn_batch *b;
} mctx;

static double model_loss(void *vc) {
    mctx *c = vc;
    nn_stats st = {0};
    int rc = c->m->ops->forward_backward(c->m, c->b, 1.0f, &st);
    ck_assert_int_eq(rc, 0);
    return st.loss;
}

/* Runs forward_backward once and returns a copy of the gradients (caller frees). */
static float *model_grads(nn_model *m, const nn_batch *b, nn_stats *st) {
    nn_params_zero_grad(&m->params);
    ck_assert_int_eq(m->ops->forward_backward(m, b, 1.0f, st), 0);
    float *g = malloc(m->params.total * sizeof *g);
    memcpy(g, m->params.grad, m->params.total * sizeof *g);
    return g;
}

static void check_model_grad(const nn_model_ops *ops, int D, int B, int classes,
                             const char *const *kv, uint64_t step, float h, double tol,
                             const char *what) {
    nn_model m;
    ck_assert_msg(build_model(&m, ops, D, B, classes, kv) == 0, "%s: %s", what, nn_error());
    tbatch t;
    tbatch_make(&t, B, D, classes, 11);
    t.b.step = step;
    nn_stats st = {0};
    float *g = model_grads(&m, &t.b, &st);
    ck_assert(isfinite(st.loss) && st.loss > 0.0);
    mctx c = {&m, &t.b};
    check_grad(model_loss, &c, m.params.data, g, m.params.total, h, tol, what);
    free(g);
    tbatch_free(&t);
    nn_model_free(&m);
}

/* ---- losses ------------------------------------------------------------------------- */

typedef struct lctx {
    int kind;
    float *a, *b, *t;
    int B, Z;
    float rho;
} lctx;
enum { L_MSE, L_KLG_MU, L_KLG_LV, L_KLS, L_L1 };

static double loss_f(void *vc) {
    lctx *c = vc;
    size_t n = (size_t)c->B * c->Z;
    switch (c->kind) {
    case L_MSE: return nn_mse_forward_backward(NULL, c->a, c->t, n, 1.0f);
    case L_KLG_MU:
    case L_KLG_LV: return nn_kl_gauss_forward_backward(NULL, NULL, c->a, c->b, c->B, c->Z, 1.0f);
    case L_KLS: return nn_kl_sparse_forward_backward(NULL, c->a, c->B, c->Z, c->rho, 1.0f);
    default: return nn_l1_forward_backward(NULL, c->a, n, 1.0f);
    }
}

START_TEST(test_mse_gradient_matches_finite_difference) {
    enum { B = 5, Z = 7 };
    float y[B * Z], t[B * Z], g[B * Z];
    fill_uniform(y, B * Z, 0, 1, 1);
    fill_uniform(t, B * Z, 0, 1, 2);
    lctx c = {L_MSE, y, NULL, t, B, Z, 0};
    double s = nn_mse_forward_backward(g, y, t, B * Z, 1.0f);
    double want = 0.0;
    for (int i = 0; i < B * Z; i++) want += (double)(y[i] - t[i]) * (y[i] - t[i]);
    ck_assert_double_eq_tol(s, want, 1e-9);
    check_grad(loss_f, &c, y, g, B * Z, 1e-3f, 1e-2, "mse");
    /* grad_scale scales the gradient only */
    float g2[B * Z];
    ck_assert_double_eq_tol(nn_mse_forward_backward(g2, y, t, B * Z, 0.5f), s, 1e-9);
    for (int i = 0; i < B * Z; i++) ck_assert_float_eq_tol(g2[i], 0.5f * g[i], 1e-6f);
}
END_TEST

START_TEST(test_gaussian_kl_gradients_match_finite_difference) {
    enum { B = 4, Z = 5 };
    float mu[B * Z], lv[B * Z], gmu[B * Z], glv[B * Z];
    fill_normal(mu, B * Z, 1.0f, 3);
    fill_normal(lv, B * Z, 1.0f, 4);
    for (int i = 0; i < B * Z; i++) gmu[i] = glv[i] = 0.25f; /* accumulates on top */
    nn_kl_gauss_forward_backward(gmu, glv, mu, lv, B, Z, 1.0f);
    for (int i = 0; i < B * Z; i++) { gmu[i] -= 0.25f; glv[i] -= 0.25f; }
    lctx c = {L_KLG_MU, mu, lv, NULL, B, Z, 0};
    check_grad(loss_f, &c, mu, gmu, B * Z, 1e-3f, 1e-2, "gaussian kl d/dmu");
    c.kind = L_KLG_LV;
    check_grad(loss_f, &c, lv, glv, B * Z, 1e-3f, 1e-2, "gaussian kl d/dlogvar");
}
END_TEST

START_TEST(test_gaussian_kl_is_never_negative_and_zero_at_the_prior) {
    enum { B = 50, Z = 8 };
    float mu[B * Z], lv[B * Z];
    for (int rep = 0; rep < 40; rep++) {
        fill_normal(mu, B * Z, 0.1f * rep, 100 + rep);
        fill_normal(lv, B * Z, 0.2f * rep, 200 + rep);
        for (int i = 0; i < B; i++) {
            double kl = nn_kl_gauss_forward_backward(NULL, NULL, mu + i * Z, lv + i * Z, 1, Z, 1.0f);
            ck_assert_msg(kl >= 0.0 && isfinite(kl), "KL %g for row %d rep %d", kl, i, rep);
        }
    }
    memset(mu, 0, sizeof mu);
    memset(lv, 0, sizeof lv);
    ck_assert_double_eq_tol(nn_kl_gauss_forward_backward(NULL, NULL, mu, lv, B, Z, 1.0f), 0.0, 1e-12);
}
END_TEST

START_TEST(test_sparsity_kl_gradient_and_sign) {
    enum { B = 6, H = 5 };
    float a[B * H], g[B * H] = {0};
    fill_uniform(a, B * H, 0.05f, 0.95f, 5);
    lctx c = {L_KLS, a, NULL, NULL, B, H, 0.1f};
    nn_kl_sparse_forward_backward(g, a, B, H, 0.1f, 1.0f);
    check_grad(loss_f, &c, a, g, B * H, 1e-3f, 1e-2, "sparsity kl");
    for (int rep = 0; rep < 30; rep++) {
        fill_uniform(a, B * H, 0.0f, 1.0f, 50 + rep);
        ck_assert(nn_kl_sparse_forward_backward(NULL, a, B, H, 0.05f * (1 + rep % 10), 1.0f) >= 0.0);
    }
    for (int i = 0; i < B * H; i++) a[i] = 0.3f; /* mean equal to the target: no penalty */
    ck_assert_double_eq_tol(nn_kl_sparse_forward_backward(NULL, a, B, H, 0.3f, 1.0f), 0.0, 1e-6);
}
END_TEST

START_TEST(test_l1_gradient_matches_finite_difference) {
    enum { B = 4, H = 6 };
    float a[B * H], g[B * H] = {0};
    fill_normal(a, B * H, 1.0f, 6);
    for (int i = 0; i < B * H; i++)
        if (fabsf(a[i]) < 0.05f) a[i] = 0.5f; /* keep away from the kink */
    lctx c = {L_L1, a, NULL, NULL, B, H, 0};
    nn_l1_forward_backward(g, a, B * H, 1.0f);
    check_grad(loss_f, &c, a, g, B * H, 1e-3f, 1e-2, "l1");
}
END_TEST

/* ---- autoencoder gradients ---------------------------------------------------------- */

START_TEST(test_autoencoder_plain_gradients) {
    const char *bce[] = {"hidden=10,4", "activation=tanh", "loss=bce", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 5, 0, bce, 0, 1e-2f, 2e-2, "ae tanh bce");
    const char *mse[] = {"hidden=7", "activation=sigmoid", "loss=mse", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 3, 0, mse, 0, 1e-2f, 2e-2, "ae sigmoid mse");
    const char *relu[] = {"hidden=12,5", "activation=relu", NULL};
    /* h = 1e-3: a larger step crosses relu kinks of near-zero pre-activations */
    check_model_grad(&nn_autoencoder_ops, 9, 4, 0, relu, 0, 1e-3f, 2e-2, "ae relu bce");
}
END_TEST

START_TEST(test_autoencoder_denoising_gradients_with_fixed_noise) {
    const char *g[] = {"hidden=8,4", "activation=tanh", "noise=gaussian", "noise-level=0.4", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 4, 0, g, 7, 1e-2f, 2e-2, "ae denoising gaussian");
    const char *mk[] = {"hidden=8", "activation=sigmoid", "noise=mask", "noise-level=0.5",
                        "loss=mse", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 4, 0, mk, 7, 1e-2f, 2e-2, "ae denoising mask");
}
END_TEST

START_TEST(test_autoencoder_sparse_gradients) {
    const char *kl[] = {"hidden=8,5", "activation=sigmoid", "sparse=kl", "sparse-weight=0.7",
                        "sparse-target=0.1", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 6, 0, kl, 0, 1e-2f, 2e-2, "ae sparse kl");
    const char *l1[] = {"hidden=8,5", "activation=tanh", "sparse=l1", "sparse-weight=0.3", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 6, 0, l1, 0, 1e-2f, 2e-2, "ae sparse l1");
}
END_TEST

START_TEST(test_autoencoder_supervised_head_gradients) {
    const char *kv[] = {"hidden=8,5", "activation=tanh", "supervised=1", "labelled=104", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 7, 3, kv, 0, 1e-2f, 2e-2, "ae supervised head");
    /* only indices < 104 count: the batch holds indices 100..106 */
    nn_model m;
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, 9, 7, 3, kv), 0);
    tbatch t;
    tbatch_make(&t, 7, 9, 3, 12);
    nn_stats st = {0};
    float *g = model_grads(&m, &t.b, &st);
    ck_assert_double_eq(st.count, 4.0);
    nn_stats ev = {0};
    ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &ev), 0);
    ck_assert_double_eq(ev.count, 7.0); /* evaluation uses every label */
    free(g);
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

/* Stacked: steps [0,P) train layer 0, [P,2P) layer 1 on layer-0 codes, then fine-tune. */
START_TEST(test_autoencoder_greedy_pretraining_trains_one_layer_at_a_time) {
    const char *kv[] = {"hidden=8,5,3", "activation=tanh", "pretrain-steps=10", NULL};
    nn_model m;
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, 9, 4, 0, kv), 0);
    tbatch t;
    tbatch_make(&t, 4, 9, 0, 13);
    for (int stage = 0; stage <= 3; stage++) {
        t.b.step = (uint64_t)stage * 10 + 4;
        nn_stats st = {0};
        float *g = model_grads(&m, &t.b, &st);
        for (int i = 0; i < m.params.n; i++) {
            const nn_param *p = &m.params.p[i];
            int layer = -1;
            ck_assert(sscanf(p->name, "%*[a-z]/layer_%d", &layer) == 1);
            double norm = 0.0;
            for (size_t j = 0; j < p->size; j++) norm += fabs(g[p->offset + j]);
            int trained = stage == 3 || layer == stage;
            if (trained && p->ndim == 2)
                ck_assert_msg(norm > 0.0, "stage %d: %s has no gradient", stage, p->name);
            if (!trained) ck_assert_msg(norm == 0.0, "stage %d: %s moved", stage, p->name);
            if (trained) {
                /* finite differences over this tensor only (lower layers are frozen) */
                mctx c = {&m, &t.b};
                char what[160];
                snprintf(what, sizeof what, "stage %d %s", stage, p->name);
                double err = nn_gradcheck(model_loss, &c, m.params.data + p->offset,
                                          g + p->offset, p->size, 1e-2f, 40);
                ck_assert_msg(err < 3e-2, "%s: error %g", what, err);
            }
        }
        free(g);
    }
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

START_TEST(test_autoencoder_rejects_bad_configuration) {
    nn_model m;
    const char *a[] = {"hidden=8", "activation=relu", "sparse=kl", NULL};
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, 9, 4, 0, a), NN_ERR_CONFIG);
    const char *b[] = {"hidden=8,,x", NULL};
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, 9, 4, 0, b), NN_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(nn_error(), "hidden"));
    const char *c[] = {"supervised=1", NULL};
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, 9, 4, 0, c), NN_ERR_CONFIG);
    const char *d[] = {"components=10", NULL};
    ck_assert_int_eq(build_model(&m, &nn_pca_ops, 9, 4, 0, d), NN_ERR_CONFIG);
    const char *e[] = {"noise=salt", NULL};
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, 9, 4, 0, e), NN_ERR_CONFIG);
}
END_TEST

START_TEST(test_models_take_empty_and_single_example_batches) {
    /* B = 1: the sparsity mean is over one row; B = 0 adds nothing and succeeds */
    const char *kl[] = {"hidden=6", "activation=sigmoid", "sparse=kl", "sparse-weight=0.5", NULL};
    check_model_grad(&nn_autoencoder_ops, 9, 1, 0, kl, 0, 1e-2f, 2e-2, "ae sparse kl B=1");
    const char *v[] = {"hidden=5", "latent=2", "activation=tanh", NULL};
    check_model_grad(&nn_vae_ops, 9, 1, 0, v, 0, 1e-2f, 2e-2, "vae B=1");
    const nn_model_ops *ops[] = {&nn_autoencoder_ops, &nn_vae_ops, &nn_pca_ops};
    for (int k = 0; k < 3; k++) {
        const char *kv[] = {"hidden=4", "components=2", NULL};
        nn_model m;
        ck_assert_int_eq(build_model(&m, ops[k], 9, 3, 0, k == 2 ? kv + 1 : kv), 0);
        nn_batch b = {0};
        b.D = 9;
        nn_stats st = {0};
        if (ops[k]->fit_size == NULL)
            ck_assert_int_eq(ops[k]->forward_backward(&m, &b, 1.0f, &st), 0);
        ck_assert_int_eq(ops[k]->evaluate(&m, &b, &st), 0);
        ck_assert(st.loss == 0.0 && st.count == 0.0 && st.extra[0] == 0.0);
        /* too many rows for max_batch, or the wrong width, is the caller's data error */
        float x[4 * 9] = {0};
        b.B = 4;
        b.xf = x;
        if (ops[k]->fit_size == NULL) {
            ck_assert_int_eq(ops[k]->evaluate(&m, &b, &st), NN_ERR_DATA);
            b.B = 2;
            b.D = 8;
            ck_assert_int_eq(ops[k]->forward_backward(&m, &b, 1.0f, &st), NN_ERR_DATA);
        }
        nn_model_free(&m);
    }
}
END_TEST

/* ---- vae ---------------------------------------------------------------------------- */

START_TEST(test_vae_gradients_with_fixed_noise) {
    const char *kv[] = {"hidden=10", "latent=3", "activation=tanh", NULL};
    check_model_grad(&nn_vae_ops, 9, 5, 0, kv, 2, 1e-2f, 2e-2, "vae tanh 10 z3");
    const char *deep[] = {"hidden=10,6", "latent=2", "activation=sigmoid", "kl-weight=0.5", NULL};
    check_model_grad(&nn_vae_ops, 9, 4, 0, deep, 5, 1e-2f, 2e-2, "vae sigmoid 10,6 z2 beta .5");
    const char *none[] = {"hidden=", "latent=4", NULL};
    check_model_grad(&nn_vae_ops, 9, 4, 0, none, 5, 1e-2f, 2e-2, "vae linear encoder");
}
END_TEST

START_TEST(test_vae_loss_is_reconstruction_plus_nonnegative_kl) {
    const char *kv[] = {"hidden=10", "latent=3", NULL};
    nn_model m;
    ck_assert_int_eq(build_model(&m, &nn_vae_ops, 9, 6, 0, kv), 0);
    tbatch t;
    tbatch_make(&t, 6, 9, 0, 14);
    for (int s = 0; s < 5; s++) {
        fill_normal(m.params.data, m.params.total, 0.5f * (s + 1), 300 + s); /* any weights */
        nn_stats st = {0};
        ck_assert_int_eq(m.ops->evaluate(&m, &t.b, &st), 0);
        ck_assert(st.extra[NN_VAE_KL] >= 0.0 && st.extra[NN_VAE_RECON] > 0.0);
        ck_assert_double_eq_tol(st.loss, st.extra[NN_VAE_RECON] + st.extra[NN_VAE_KL], 1e-6 * st.loss);
        ck_assert_double_eq(st.count, 6.0);
    }
    /* evaluation noise does not depend on the batch step; training noise does */
    nn_stats e1 = {0}, e2 = {0}, f1 = {0}, f2 = {0};
    m.ops->evaluate(&m, &t.b, &e1);
    t.b.step = 99;
    m.ops->evaluate(&m, &t.b, &e2);
    ck_assert_double_eq(e1.loss, e2.loss);
    m.ops->forward_backward(&m, &t.b, 1.0f, &f1);
    t.b.step = 100;
    m.ops->forward_backward(&m, &t.b, 1.0f, &f2);
    ck_assert(f1.loss != f2.loss);
    tbatch_free(&t);
    nn_model_free(&m);
}
END_TEST

/* ---- pca ---------------------------------------------------------------------------- */

/* Orthonormal basis Q (D,D) rows by Gram-Schmidt on random vectors. */
static void random_basis(double *Q, int D, uint64_t key) {
    nn_rng r = nn_rng_make(9, key, 0, NN_RNG_USER);
    for (int k = 0; k < D; k++) {
        double *q = Q + (size_t)k * D;
        for (int j = 0; j < D; j++) q[j] = nn_rng_normal(&r);
        for (int p = 0; p < k; p++) {
            double d = 0.0;
            for (int j = 0; j < D; j++) d += q[j] * Q[(size_t)p * D + j];
            for (int j = 0; j < D; j++) q[j] -= d * Q[(size_t)p * D + j];
        }
        double nrm = 0.0;
        for (int j = 0; j < D; j++) nrm += q[j] * q[j];
        for (int j = 0; j < D; j++) q[j] /= sqrt(nrm);
    }
}

START_TEST(test_pca_recovers_known_directions_and_error_falls_with_k) {
    enum { D = 12, N = 600 };
    double Q[D * D], sd[D];
    random_basis(Q, D, 1);
    for (int k = 0; k < D; k++) sd[k] = k == 0 ? 5.0 : k == 1 ? 3.0 : k == 2 ? 2.0 : 0.3 / k;
    float *x = malloc((size_t)N * D * sizeof *x), mean[D];
    fill_uniform(mean, D, -1, 1, 20);
    nn_rng r = nn_rng_make(10, 0, 0, NN_RNG_USER);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) x[(size_t)i * D + j] = mean[j];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < D; k++) {
            double z = sd[k] * nn_rng_normal(&r);
            for (int j = 0; j < D; j++) x[(size_t)i * D + j] += (float)(z * Q[(size_t)k * D + j]);
        }
    nn_batch b = {0};
    b.B = N;
    b.D = D;
    b.xf = x;
    double prev = INFINITY;
    for (int K = 1; K <= D; K++) {
        char kv0[32];
        snprintf(kv0, sizeof kv0, "components=%d", K);
        const char *kv[] = {kv0, NULL};
        nn_model m;
        ck_assert_int_eq(build_model(&m, &nn_pca_ops, D, 64, 0, kv), 0);
        ck_assert_int_eq(nn_pca_fit(&m, x, N), 0);
        int ic = nn_params_find(&m.params, "pca/components");
        ck_assert_int_ge(ic, 0);
        const float *C = m.params.data + m.params.p[ic].offset;
        for (int k = 0; k < K && k < 3; k++) {
            double c = 0.0;
            for (int j = 0; j < D; j++) c += C[(size_t)k * D + j] * Q[(size_t)k * D + j];
            ck_assert_msg(fabs(c) > 0.99, "K=%d component %d: |cos| = %g", K, k, fabs(c));
        }
        nn_stats st = {0};
        ck_assert_int_eq(m.ops->evaluate(&m, &b, &st), 0);
        double err = st.extra[NN_PCA_SSE] / st.extra[NN_PCA_SSE_N];
        ck_assert_msg(err < prev, "K=%d: error %g not below %g", K, err, prev);
        /* the cheap per-k errors agree with the explicit reconstruction at k = min(k,K) */
        if (K <= 2) ck_assert_double_eq_tol(st.extra[NN_PCA_SSE_K0 + K - 1], st.extra[NN_PCA_SSE],
                                            1e-3 * st.extra[NN_PCA_SSE] + 1e-6);
        prev = err;
        if (K == D) ck_assert_msg(err < 1e-8, "K=D: error %g", err);
        nn_model_free(&m);
    }
    free(x);
}
END_TEST

/* What the trainer does across ranks: accumulators of parts add up to the whole. */
START_TEST(test_pca_statistics_of_parts_sum_to_the_whole) {
    enum { D = 6, N = 50 };
    float x[N * D];
    fill_uniform(x, N * D, 0, 1, 30);
    const char *kv[] = {"components=3", NULL};
    nn_model a, w;
    ck_assert_int_eq(build_model(&a, &nn_pca_ops, D, 8, 0, kv), 0);
    ck_assert_int_eq(build_model(&w, &nn_pca_ops, D, 8, 0, kv), 0);
    size_t n = a.ops->fit_size(&a);
    ck_assert_uint_eq(n, D + D * D);
    double *acc = calloc(n, sizeof *acc);
    nn_batch b = {0};
    b.D = D;
    for (int i0 = 0; i0 < N; i0 += 13) { /* batches larger than max_batch too */
        b.B = N - i0 < 13 ? N - i0 : 13;
        b.xf = x + i0 * D;
        ck_assert_int_eq(a.ops->fit_accumulate(&a, &b, acc), 0);
    }
    ck_assert_int_eq(a.ops->fit_finish(&a, acc, N), 0);
    ck_assert_int_eq(nn_pca_fit(&w, x, N), 0);
    for (size_t i = 0; i < a.params.total; i++)
        ck_assert_float_eq_tol(a.params.data[i], w.params.data[i], 1e-4f);
    ck_assert_int_eq(a.ops->fit_finish(&a, acc, 1.0), NN_ERR_DATA);
    nn_stats st = {0};
    ck_assert_int_eq(a.ops->forward_backward(&a, &b, 1.0f, &st), NN_ERR_UNSUPPORTED);
    free(acc);
    nn_model_free(&a);
    nn_model_free(&w);
}
END_TEST

/* ---- denoising on the digits fixture --------------------------------------------- */

static float *read_h5_floats(hid_t f, const char *name, int *rows, int *cols) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    ck_assert_msg(d >= 0, "no dataset %s", name);
    hid_t s = H5Dget_space(d);
    hsize_t dims[2] = {0, 0};
    ck_assert_int_eq(H5Sget_simple_extent_ndims(s), 2);
    H5Sget_simple_extent_dims(s, dims, NULL);
    float *x = malloc(dims[0] * dims[1] * sizeof *x);
    ck_assert_int_ge(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x), 0);
    H5Sclose(s);
    H5Dclose(d);
    *rows = (int)dims[0];
    *cols = (int)dims[1];
    return x;
}

/* Plain Adam on the flat buffers, as the trainer's optimizer would. */
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

START_TEST(test_denoising_autoencoder_beats_its_noisy_input_on_held_out_digits) {
    hid_t f = H5Fopen("data/digits_small.h5", H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_msg(f >= 0, "tests/data/digits_small.h5 missing (scripts/prepare-images fixture)");
    int N, D, Nt, Dt;
    float *xtr = read_h5_floats(f, "train/x", &N, &D);
    float *xte = read_h5_floats(f, "test/x", &Nt, &Dt);
    H5Fclose(f);
    ck_assert_int_eq(D, 64);
    ck_assert_int_eq(Dt, D);
    enum { BS = 20 };
    const char *kv[] = {"hidden=48", "activation=relu", "noise=gaussian", "noise-level=0.3",
                        NULL};
    nn_model m;
    ck_assert_int_eq(build_model(&m, &nn_autoencoder_ops, D, Nt > BS ? Nt : BS, 0, kv), 0);
    float *mm = calloc(m.params.total, sizeof *mm), *vv = calloc(m.params.total, sizeof *vv);
    int64_t idx[BS];
    nn_batch b = {0};
    b.D = D;
    b.index = idx;
    for (int step = 0; step < 600; step++) {
        int i0 = (step * BS) % N;
        b.B = N - i0 < BS ? N - i0 : BS;
        b.xf = xtr + (size_t)i0 * D;
        b.step = (uint64_t)step;
        for (int i = 0; i < b.B; i++) idx[i] = i0 + i;
        nn_stats st = {0};
        nn_params_zero_grad(&m.params);
        ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f, &st), 0);
        adam_step(&m.params, mm, vv, step + 1, 3e-3f, 1.0f / b.B);
    }
    int64_t tidx[64];
    for (int i = 0; i < Nt; i++) tidx[i] = 100000 + i;
    nn_batch t = {0};
    t.B = Nt;
    t.D = D;
    t.xf = xte;
    t.index = tidx;
    nn_stats st = {0};
    ck_assert_int_eq(m.ops->evaluate(&m, &t, &st), 0);
    double recon = st.extra[NN_AE_SSE] / st.extra[NN_AE_SSE_N];
    double noisy = st.extra[NN_AE_NOISY_SSE] / st.extra[NN_AE_SSE_N];
    if (getenv("NN_TEST_VERBOSE"))
        fprintf(stderr, "denoising digits: held-out mse %.4f vs noisy input %.4f\n", recon, noisy);
    ck_assert_msg(recon < 0.5 * noisy, "reconstruction mse %g not below half the noisy %g",
                  recon, noisy);
    /* the pictures of the trained model: inputs, noisy inputs, reconstructions */
    float *img = malloc(((size_t)1 << 22) * sizeof *img);
    int h = 0, w = 0;
    const char *name = NULL;
    ck_assert_int_eq(m.ops->visualize(&m, &t, 0, img, &h, &w, &name), 0);
    ck_assert_str_eq(name, "reconstructions");
    ck_assert_int_eq(h, 3 * 9 + 1);
    ck_assert_int_eq(w, 16 * 9 + 1);
    ck_assert_int_eq(m.ops->visualize(&m, &t, 1, img, &h, &w, &name), NN_ERR_UNSUPPORTED);
    free(img);
    free(mm);
    free(vv);
    free(xtr);
    free(xte);
    nn_model_free(&m);
}
END_TEST

/* ---- pictures ----------------------------------------------------------------------- */

START_TEST(test_vae_and_pca_pictures_have_their_shapes) {
    float *img = malloc(((size_t)1 << 22) * sizeof *img);
    int h, w;
    const char *name;
    tbatch t;
    tbatch_make(&t, 6, 16, 0, 40);
    const char *kv[] = {"hidden=10", "latent=2", NULL};
    nn_model m;
    ck_assert_int_eq(build_model(&m, &nn_vae_ops, 16, 6, 0, kv), 0);
    const char *want[] = {"reconstructions", "samples", "interpolation"};
    int hw[3][2] = {{2 * 5 + 1, 6 * 5 + 1}, {8 * 5 + 1, 8 * 5 + 1}, {3 * 5 + 1, 12 * 5 + 1}};
    for (int p = 0; p < 3; p++) {
        ck_assert_int_eq(m.ops->visualize(&m, &t.b, p, img, &h, &w, &name), 0);
        ck_assert_str_eq(name, want[p]);
        ck_assert_int_eq(h, hw[p][0]);
        ck_assert_int_eq(w, hw[p][1]);
        for (int i = 0; i < h * w; i++) ck_assert(img[i] >= 0.0f && img[i] <= 1.0f);
    }
    ck_assert_int_eq(m.ops->visualize(&m, &t.b, 3, img, &h, &w, &name), NN_ERR_UNSUPPORTED);
    /* the interpolation rows start at the decoded mean code of the first input */
    float mu[2], dec[16];
    ck_assert_int_eq(nn_vae_encode(&m, t.x, 1, mu), 0);
    ck_assert_int_eq(nn_vae_decode(&m, mu, 1, dec), 0);
    m.ops->visualize(&m, &t.b, 2, img, &h, &w, &name);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            ck_assert_float_eq_tol(img[(1 + y) * w + 1 + 5 + x], dec[y * 4 + x], 1e-5f);
    nn_model_free(&m);

    const char *pk[] = {"components=3", NULL};
    ck_assert_int_eq(build_model(&m, &nn_pca_ops, 16, 6, 0, pk), 0);
    ck_assert_int_eq(nn_pca_fit(&m, t.x, 6), 0);
    ck_assert_int_eq(m.ops->visualize(&m, &t.b, 0, img, &h, &w, &name), 0);
    ck_assert_int_eq(w, 6 * 5 + 1);
    ck_assert_int_eq(m.ops->visualize(&m, &t.b, 1, img, &h, &w, &name), 0);
    ck_assert_str_eq(name, "components");
    ck_assert_int_eq(w, 4 * 5 + 1);
    ck_assert_int_eq(m.ops->visualize(&m, &t.b, 2, img, &h, &w, &name), NN_ERR_UNSUPPORTED);
    nn_model_free(&m);
    tbatch_free(&t);
    free(img);
}
END_TEST

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

START_TEST(test_png_has_signature_and_ihdr_size) {
    enum { H = 7, W = 13 };
    float img[H * W];
    for (int i = 0; i < H * W; i++) img[i] = (float)i / (H * W) * 1.4f - 0.2f; /* clamps */
    char path[] = "/tmp/test_ae_png_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(io_png_write_gray(path, img, H, W), IO_OK);
    unsigned char buf[64];
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    ck_assert_uint_ge(n, 33);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    ck_assert_int_eq(memcmp(buf, sig, 8), 0);
    ck_assert_int_eq(memcmp(buf + 12, "IHDR", 4), 0);
    ck_assert_uint_eq(be32(buf + 16), W);
    ck_assert_uint_eq(be32(buf + 20), H);
    ck_assert_int_eq(buf[24], 8); /* bit depth */
    ck_assert_int_eq(buf[25], 0); /* grey */
    unlink(path);
    /* failures leave nothing behind */
    ck_assert_int_lt(io_png_write_gray("/nonexistent-dir/x.png", img, H, W), 0);
    ck_assert_int_lt(io_png_write_gray(path, img, 0, W), 0);
    ck_assert_int_ne(access(path, F_OK), 0);
}
END_TEST

static Suite *ae_suite(void) {
    Suite *s = suite_create("ae");
    TCase *tc = tcase_create("losses");
    tcase_add_test(tc, test_mse_gradient_matches_finite_difference);
    tcase_add_test(tc, test_gaussian_kl_gradients_match_finite_difference);
    tcase_add_test(tc, test_gaussian_kl_is_never_negative_and_zero_at_the_prior);
    tcase_add_test(tc, test_sparsity_kl_gradient_and_sign);
    tcase_add_test(tc, test_l1_gradient_matches_finite_difference);
    suite_add_tcase(s, tc);
    tc = tcase_create("autoencoder");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_autoencoder_plain_gradients);
    tcase_add_test(tc, test_autoencoder_denoising_gradients_with_fixed_noise);
    tcase_add_test(tc, test_autoencoder_sparse_gradients);
    tcase_add_test(tc, test_autoencoder_supervised_head_gradients);
    tcase_add_test(tc, test_autoencoder_greedy_pretraining_trains_one_layer_at_a_time);
    tcase_add_test(tc, test_autoencoder_rejects_bad_configuration);
    tcase_add_test(tc, test_models_take_empty_and_single_example_batches);
    tcase_add_test(tc, test_denoising_autoencoder_beats_its_noisy_input_on_held_out_digits);
    suite_add_tcase(s, tc);
    tc = tcase_create("vae");
    tcase_add_test(tc, test_vae_gradients_with_fixed_noise);
    tcase_add_test(tc, test_vae_loss_is_reconstruction_plus_nonnegative_kl);
    suite_add_tcase(s, tc);
    tc = tcase_create("pca");
    tcase_add_test(tc, test_pca_recovers_known_directions_and_error_falls_with_k);
    tcase_add_test(tc, test_pca_statistics_of_parts_sum_to_the_whole);
    suite_add_tcase(s, tc);
    tc = tcase_create("pictures");
    tcase_add_test(tc, test_vae_and_pca_pictures_have_their_shapes);
    tcase_add_test(tc, test_png_has_signature_and_ihdr_size);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ae_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
