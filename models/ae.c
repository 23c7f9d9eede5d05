/* ae.c - representation learning by reconstruction: the autoencoder family, the
 * variational autoencoder and PCA (issue 8), all on dense rows x (B,D) in [0,1].
 *
 * Does: forward/backward of dense encoders and decoders with explicit caches; denoising
 * (Gaussian or masking noise keyed by (seed, step, example, NN_RNG_NOISE)), sparsity
 * penalties (Bernoulli KL on the mean code activation, or L1), greedy layer-wise
 * pretraining keyed on the optimizer step, a softmax head for supervised fine-tuning,
 * the VAE (reparameterisation, analytic KL, sampling, interpolation), PCA through
 * LAPACK dsyevd, and grey picture grids of all of these.
 * Does not: read files, write PNGs (io/png.c does), know about ranks, or allocate in the
 * training step (scratch is sized once from dims.max_batch in build). */
#include "models/nn.h"

#include <math.h>
#include <string.h>

#include <cblas.h>

/* LAPACK (shipped inside OpenBLAS; no lapacke.h on this system): symmetric eigensolver,
 * divide and conquer. Column-major; eigenvalues ascending. */
extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a,
                    const int *lda, double *w, double *work, const int *lwork, int *iwork,
                    const int *liwork, int *info);

/* ---- small shared pieces ---------------------------------------------------------- */

enum { ACT_RELU = 0, ACT_SIGMOID = 1, ACT_TANH = 2 };

typedef struct ae_linear {
    float *W, *b, *dW, *db; /* views: W (out,in), b (out) */
    int in, out;
} ae_linear;

static int register_linear_(nn_params *ps, ae_linear *L, const char *prefix, int in, int out,
                            int act) {
    char name[NN_NAME_MAX];
    int wshape[2] = {out, in}, bshape[1] = {out};
    /* Glorot-uniform bound for sigmoid/tanh, He-uniform for relu. */
    float bound = act == ACT_RELU ? sqrtf(6.0f / (float)in) : sqrtf(6.0f / (float)(in + out));
    L->in = in;
    L->out = out;
    snprintf(name, sizeof name, "%s/w", prefix);
    int rc = nn_params_add(ps, name, 2, wshape, NN_INIT_UNIFORM, bound, &L->W, &L->dW);
    if (rc < 0) return rc;
    snprintf(name, sizeof name, "%s/b", prefix);
    rc = nn_params_add(ps, name, 1, bshape, NN_INIT_ZERO, 0.0f, &L->b, &L->db);
    return rc < 0 ? rc : 0;
}

static void act_forward_(int act, float *y, const float *x, size_t n) {
    if (act == ACT_RELU) nn_relu_forward(y, x, n);
    else if (act == ACT_SIGMOID) nn_sigmoid_forward(y, x, n);
    else nn_tanh_forward(y, x, n);
}

/* dpre (n) := dy * f'(.) (overwrites: zeroes, then the core backward accumulates). */
static void act_backward_(int act, float *dpre, const float *dy, const float *pre,
                          const float *post, size_t n) {
    memset(dpre, 0, n * sizeof *dpre);
    if (act == ACT_RELU) nn_relu_backward(dpre, dy, pre, n);
    else if (act == ACT_SIGMOID) nn_sigmoid_backward(dpre, dy, post, n);
    else nn_tanh_backward(dpre, dy, post, n);
}

/* Parses "256,64" into w[0..*n). NN_ERR_CONFIG on anything else. */
static int parse_widths_(const nn_config *cfg, const char *key, const char *def, int *w, int *n,
                         int allow_empty) {
    const char *s = nn_config_get(cfg, key);
    if (!s) s = def;
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || v > (1 << 20) || *n >= NN_AE_MAX_LAYERS) {
            nn_set_error("config key %s: expected up to %d positive widths like \"256,64\", "
                         "got \"%s\"", key, NN_AE_MAX_LAYERS, s);
            return NN_ERR_CONFIG;
        }
        w[(*n)++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) {
            nn_set_error("config key %s: unexpected '%c' in \"%s\"", key, *p, s);
            return NN_ERR_CONFIG;
        }
    }
    if (*n == 0 && !allow_empty) {
        nn_set_error("config key %s: needs at least one width", key);
        return NN_ERR_CONFIG;
    }
    return 0;
}

static int parse_act_(const nn_config *cfg, int *act) {
    const char *s;
    int rc = nn_config_choice(cfg, "activation", "relu", "relu|sigmoid|tanh", &s);
    if (rc < 0) return rc;
    *act = !strcmp(s, "relu") ? ACT_RELU : !strcmp(s, "sigmoid") ? ACT_SIGMOID : ACT_TANH;
    return 0;
}

static void *zalloc_(size_t nfloats, int *fail) {
    void *p = calloc(nfloats ? nfloats : 1, sizeof(float));
    if (!p) *fail = 1;
    return p;
}

static double sse_(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return s;
}

/* ---- losses and noise (public, see nn_ae.h) ----------------------------------------- */

void nn_ae_corrupt(float *out, const float *x, int B, int D, int kind, float level,
                   uint64_t seed, uint64_t step, const int64_t *index) {
    for (int i = 0; i < B; i++) {
        const float *xi = x + (size_t)i * D;
        float *oi = out + (size_t)i * D;
        if (kind == NN_NOISE_NONE || level <= 0.0f) {
            if (oi != xi) memcpy(oi, xi, (size_t)D * sizeof *oi);
            continue;
        }
        nn_rng r = nn_rng_make(seed, step, index ? (uint64_t)index[i] : (uint64_t)i,
                               NN_RNG_NOISE);
        if (kind == NN_NOISE_GAUSSIAN)
            for (int j = 0; j < D; j++) oi[j] = xi[j] + level * nn_rng_normal(&r);
        else
            for (int j = 0; j < D; j++) oi[j] = nn_rng_uniform(&r) < level ? 0.0f : xi[j];
    }
}

double nn_mse_forward_backward(float *dy, const float *y, const float *t, size_t n,
                               float grad_scale) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        float d = y[i] - t[i];
        s += (double)d * d;
        if (dy) dy[i] = grad_scale * 2.0f * d;
    }
    return s;
}

double nn_kl_gauss_forward_backward(float *dmu, float *dlogvar, const float *mu,
                                    const float *logvar, int B, int Z, float grad_scale) {
    double s = 0.0;
    size_t n = (size_t)B * Z;
    for (size_t i = 0; i < n; i++) {
        double e = exp((double)logvar[i]);
        /* each term mu^2 + e - 1 - logvar >= 0 since e^v >= 1 + v */
        s += 0.5 * ((double)mu[i] * mu[i] + e - 1.0 - logvar[i]);
        if (dmu) dmu[i] += grad_scale * mu[i];
        if (dlogvar) dlogvar[i] += grad_scale * 0.5f * (float)(e - 1.0);
    }
    return s;
}

double nn_kl_sparse_forward_backward(float *da, const float *a, int B, int H, float rho,
                                     float grad_scale) {
    if (B <= 0) return 0.0;
    double s = 0.0;
    for (int j = 0; j < H; j++) {
        double m = 0.0;
        for (int i = 0; i < B; i++) m += a[(size_t)i * H + j];
        m /= B;
        if (m < 1e-6) m = 1e-6;
        if (m > 1.0 - 1e-6) m = 1.0 - 1e-6;
        s += rho * log(rho / m) + (1.0 - rho) * log((1.0 - rho) / (1.0 - m));
        if (da) {
            /* d/da_ij of B * KL(rho || mean_i a_ij) = -rho/m + (1-rho)/(1-m) */
            float g = grad_scale * (float)(-rho / m + (1.0 - rho) / (1.0 - m));
            for (int i = 0; i < B; i++) da[(size_t)i * H + j] += g;
        }
    }
    return s * B;
}

double nn_l1_forward_backward(float *da, const float *a, size_t n, float grad_scale) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += fabsf(a[i]);
        if (da) da[i] += a[i] > 0.0f ? grad_scale : a[i] < 0.0f ? -grad_scale : 0.0f;
    }
    return s;
}

/* ---- picture grids ------------------------------------------------------------------ */

/* Tile side from D: a square image when D is a perfect square, else a 1 x D strip. */
static void tile_shape_(int D, int *th, int *tw) {
    int s = (int)lround(sqrt((double)D));
    if (s * s == D) *th = *tw = s;
    else { *th = 1; *tw = D; }
}

#define GRID_PAD 1
#define GRID_MAX (1 << 22)

/* Sets up an (rows x cols) grid of tiles with a 1-pixel grey frame. */
static int grid_init_(float *img, int *h, int *w, int rows, int cols, int D) {
    int th, tw;
    tile_shape_(D, &th, &tw);
    *h = rows * (th + GRID_PAD) + GRID_PAD;
    *w = cols * (tw + GRID_PAD) + GRID_PAD;
    if ((size_t)*h * (size_t)*w > GRID_MAX) {
        nn_set_error("picture of %d x %d pixels exceeds the %d-float buffer", *h, *w, GRID_MAX);
        return NN_ERR_SHAPE;
    }
    for (size_t i = 0; i < (size_t)*h * *w; i++) img[i] = 0.5f;
    return 0;
}

static void grid_put_(float *img, int w, int r, int c, const float *x, int D) {
    int th, tw;
    tile_shape_(D, &th, &tw);
    float *o = img + (size_t)(GRID_PAD + r * (th + GRID_PAD)) * w + GRID_PAD + c * (tw + GRID_PAD);
    for (int y = 0; y < th; y++)
        for (int xx = 0; xx < tw; xx++) {
            float v = x[y * tw + xx];
            o[(size_t)y * w + xx] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        }
}

/* =====================================================================================
 * autoencoder
 * =================================================================================== */

typedef struct nn_ae {
    int L;                        /* encoder layers */
    int n[NN_AE_MAX_LAYERS + 1];  /* widths: n[0] = D, n[l+1] = hidden[l] */
    int maxn, maxB, D;
    int act, bce;
    int noise;
    float noise_level;
    int sparse;                   /* 0 none, 1 kl, 2 l1 */
    float sparse_w, sparse_rho;
    long pretrain;
    int supervised, classes;
    long labelled;
    ae_linear enc[NN_AE_MAX_LAYERS], dec[NN_AE_MAX_LAYERS], head;
    /* scratch, sized for maxB rows */
    float *xin;                             /* (B,maxn) corrupted input of the stage */
    float *epre[NN_AE_MAX_LAYERS], *eout[NN_AE_MAX_LAYERS]; /* (B,n[l+1]) */
    float *dpre[NN_AE_MAX_LAYERS], *dout[NN_AE_MAX_LAYERS]; /* (B,n[l]); dout[0] sigmoid */
    float *g1, *g2;                         /* (B,maxn) gradient ping-pong */
    float *logits, *dlogits;                /* (B,classes) */
    int32_t *tgt;                           /* (B) */
} nn_ae;

static const nn_key ae_keys[] = {
    {"hidden", "256,64", "encoder widths; the last is the code size (decoder mirrors)"},
    {"activation", "relu", "hidden activation: relu|sigmoid|tanh"},
    {"loss", "bce", "reconstruction loss on the sigmoid output: bce|mse"},
    {"noise", "none", "input corruption (denoising): none|gaussian|mask"},
    {"noise-level", "0.3", "gaussian std, or masking probability"},
    {"sparse", "none", "sparsity penalty on the code: none|kl|l1 (kl needs sigmoid)"},
    {"sparse-weight", "0.1", "weight of the sparsity penalty"},
    {"sparse-target", "0.05", "target mean activation for the kl penalty"},
    {"pretrain-steps", "0", "steps of greedy pretraining per layer (0: none)"},
    {"supervised", "0", "1: after pretraining, train encoder + softmax head on labels"},
    {"labelled", "0", "supervised loss only on examples with index < N (0: all)"},
    {NULL, NULL, NULL}};

static const char *const ae_stat_names[] = {"recon_sse", "recon_n", "noisy_sse", NULL};

static void ae_free_(nn_model *m) {
    nn_ae *a = m->impl;
    if (!a) return;
    free(a->xin);
    for (int l = 0; l < NN_AE_MAX_LAYERS; l++) {
        free(a->epre[l]); free(a->eout[l]); free(a->dpre[l]); free(a->dout[l]);
    }
    free(a->g1); free(a->g2); free(a->logits); free(a->dlogits); free(a->tgt);
    free(a);
    m->impl = NULL;
}

static int ae_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    int hid[NN_AE_MAX_LAYERS], nh, rc;
    long lv;
    double fv;
    const char *s;
    if (d->features <= 0 || d->max_batch <= 0) {
        nn_set_error("autoencoder needs dense data: features=%d max_batch=%d", d->features,
                     d->max_batch);
        return NN_ERR_SHAPE;
    }
    nn_ae *a = calloc(1, sizeof *a);
    if (!a) return NN_ERR_NOMEM;
    m->impl = a;
    if ((rc = parse_widths_(cfg, "hidden", "256,64", hid, &nh, 0)) < 0) return rc;
    if ((rc = parse_act_(cfg, &a->act)) < 0) return rc;
    if ((rc = nn_config_choice(cfg, "loss", "bce", "bce|mse", &s)) < 0) return rc;
    a->bce = !strcmp(s, "bce");
    if ((rc = nn_config_choice(cfg, "noise", "none", "none|gaussian|mask", &s)) < 0) return rc;
    a->noise = !strcmp(s, "none") ? NN_NOISE_NONE
             : !strcmp(s, "gaussian") ? NN_NOISE_GAUSSIAN : NN_NOISE_MASK;
    if ((rc = nn_config_float(cfg, "noise-level", 0.3, &fv)) < 0) return rc;
    a->noise_level = (float)fv;
    if (fv < 0.0 || (a->noise == NN_NOISE_MASK && fv >= 1.0)) {
        nn_set_error("config key noise-level: %g out of range", fv);
        return NN_ERR_CONFIG;
    }
    if ((rc = nn_config_choice(cfg, "sparse", "none", "none|kl|l1", &s)) < 0) return rc;
    a->sparse = !strcmp(s, "none") ? 0 : !strcmp(s, "kl") ? 1 : 2;
    if ((rc = nn_config_float(cfg, "sparse-weight", 0.1, &fv)) < 0) return rc;
    a->sparse_w = (float)fv;
    if ((rc = nn_config_float(cfg, "sparse-target", 0.05, &fv)) < 0) return rc;
    a->sparse_rho = (float)fv;
    if (a->sparse == 1 && (a->act != ACT_SIGMOID || !(fv > 0.0 && fv < 1.0))) {
        nn_set_error("sparse=kl needs activation=sigmoid and 0 < sparse-target < 1");
        return NN_ERR_CONFIG;
    }
    if ((rc = nn_config_int(cfg, "pretrain-steps", 0, &lv)) < 0) return rc;
    if (lv < 0) { nn_set_error("config key pretrain-steps: negative"); return NN_ERR_CONFIG; }
    a->pretrain = lv;
    if ((rc = nn_config_bool(cfg, "supervised", 0, &a->supervised)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "labelled", 0, &lv)) < 0) return rc;
    a->labelled = lv;
    if (a->supervised && d->classes <= 1) {
        nn_set_error("supervised=1 needs labelled data (classes=%d)", d->classes);
        return NN_ERR_CONFIG;
    }
    a->classes = a->supervised ? d->classes : 0;

    a->L = nh;
    a->D = d->features;
    a->maxB = d->max_batch;
    a->n[0] = d->features;
    a->maxn = d->features;
    for (int l = 0; l < nh; l++) {
        a->n[l + 1] = hid[l];
        if (hid[l] > a->maxn) a->maxn = hid[l];
    }
    char prefix[64];
    for (int l = 0; l < nh; l++) {
        snprintf(prefix, sizeof prefix, "encoder/layer_%d", l);
        if ((rc = register_linear_(&m->params, &a->enc[l], prefix, a->n[l], a->n[l + 1],
                                   a->act)) < 0) return rc;
    }
    for (int l = nh - 1; l >= 0; l--) {
        snprintf(prefix, sizeof prefix, "decoder/layer_%d", l);
        if ((rc = register_linear_(&m->params, &a->dec[l], prefix, a->n[l + 1], a->n[l],
                                   l == 0 ? ACT_SIGMOID : a->act)) < 0) return rc;
    }
    if (a->supervised &&
        (rc = register_linear_(&m->params, &a->head, "head", a->n[nh], a->classes,
                               ACT_SIGMOID)) < 0) return rc;

    int fail = 0;
    size_t B = (size_t)a->maxB;
    a->xin = zalloc_(B * a->maxn, &fail);
    for (int l = 0; l < nh; l++) {
        a->epre[l] = zalloc_(B * a->n[l + 1], &fail);
        a->eout[l] = zalloc_(B * a->n[l + 1], &fail);
        a->dpre[l] = zalloc_(B * a->n[l], &fail);
        a->dout[l] = zalloc_(B * a->n[l], &fail);
    }
    a->g1 = zalloc_(B * a->maxn, &fail);
    a->g2 = zalloc_(B * a->maxn, &fail);
    if (a->supervised) {
        a->logits = zalloc_(B * a->classes, &fail);
        a->dlogits = zalloc_(B * a->classes, &fail);
        a->tgt = calloc(B, sizeof *a->tgt);
        if (!a->tgt) fail = 1;
    }
    return fail ? NN_ERR_NOMEM : 0;
}

/* Clean encoder forward of layers [0, upto) on x: eout[l] for l < upto. */
static void ae_encode_clean_(nn_ae *a, const float *x, int B, int upto) {
    for (int l = 0; l < upto; l++) {
        const float *in = l == 0 ? x : a->eout[l - 1];
        nn_linear_forward(a->epre[l], in, a->enc[l].W, a->enc[l].b, B, a->n[l], a->n[l + 1]);
        act_forward_(a->act, a->eout[l], a->epre[l], (size_t)B * a->n[l + 1]);
    }
}

/* Forward of the stage that encodes layers [lo,hi) from `in` (B,n[lo]) and decodes back to
 * level lo. Decoder output at level 0 is sigmoid (dpre[0] holds the logits); at other
 * levels the hidden activation. */
static void ae_stage_forward_(nn_ae *a, const float *in, int B, int lo, int hi) {
    for (int l = lo; l < hi; l++) {
        const float *x = l == lo ? in : a->eout[l - 1];
        nn_linear_forward(a->epre[l], x, a->enc[l].W, a->enc[l].b, B, a->n[l], a->n[l + 1]);
        act_forward_(a->act, a->eout[l], a->epre[l], (size_t)B * a->n[l + 1]);
    }
    for (int l = hi - 1; l >= lo; l--) {
        const float *x = l == hi - 1 ? a->eout[hi - 1] : a->dout[l + 1];
        nn_linear_forward(a->dpre[l], x, a->dec[l].W, a->dec[l].b, B, a->n[l + 1], a->n[l]);
        size_t n = (size_t)B * a->n[l];
        if (l == 0) nn_sigmoid_forward(a->dout[l], a->dpre[l], n);
        else act_forward_(a->act, a->dout[l], a->dpre[l], n);
    }
}

/* Reconstruction loss of the stage against `target` (B,n[lo]) (clean). If grad_scale != 0,
 * g1 receives d(loss)/d(dpre[lo]) * grad_scale. */
static double ae_stage_loss_(nn_ae *a, const float *target, int B, int lo, float grad_scale,
                             int want_grad) {
    size_t n = (size_t)B * a->n[lo];
    if (lo == 0 && a->bce)
        return nn_bce_forward_backward(want_grad ? a->g1 : NULL, a->dpre[0], target, (int)n,
                                       grad_scale, NULL);
    double loss = nn_mse_forward_backward(want_grad ? a->g2 : NULL, a->dout[lo], target, n,
                                          grad_scale);
    if (want_grad) {
        if (lo == 0) {
            memset(a->g1, 0, n * sizeof *a->g1);
            nn_sigmoid_backward(a->g1, a->g2, a->dout[0], n);
        } else {
            act_backward_(a->act, a->g1, a->g2, a->dpre[lo], a->dout[lo], n);
        }
    }
    return loss;
}

/* Sparsity penalty on the code eout[hi-1]; accumulates its gradient into dcode if given. */
static double ae_sparse_(nn_ae *a, float *dcode, int B, int hi, float grad_scale) {
    size_t H = (size_t)a->n[hi];
    if (a->sparse == 1)
        return a->sparse_w * nn_kl_sparse_forward_backward(dcode, a->eout[hi - 1], B, (int)H,
                                                           a->sparse_rho,
                                                           grad_scale * a->sparse_w);
    if (a->sparse == 2)
        return a->sparse_w * nn_l1_forward_backward(dcode, a->eout[hi - 1], (size_t)B * H,
                                                    grad_scale * a->sparse_w);
    return 0.0;
}

/* Backward through encoder layers hi-1 .. lo, starting from d(eout[hi-1]) in *gcur;
 * the input of layer lo is `in`. Uses g1/g2 as ping-pong; *gcur must be one of them. */
static void ae_encoder_backward_(nn_ae *a, const float *in, int B, int lo, int hi, float *gcur) {
    float *gother = gcur == a->g1 ? a->g2 : a->g1;
    for (int l = hi - 1; l >= lo; l--) {
        size_t n = (size_t)B * a->n[l + 1];
        act_backward_(a->act, gother, gcur, a->epre[l], a->eout[l], n);
        const float *x = l == lo ? in : a->eout[l - 1];
        float *dx = NULL;
        if (l > lo) {
            dx = gcur;
            memset(dx, 0, (size_t)B * a->n[l] * sizeof *dx);
        }
        nn_linear_backward(dx, a->enc[l].dW, a->enc[l].db, gother, x, a->enc[l].W, B, a->n[l],
                           a->n[l + 1]);
    }
}

/* Backward of a stage: g1 holds d/d(dpre[lo]). Decoder, then code penalty, then encoder. */
static void ae_stage_backward_(nn_ae *a, const float *in, int B, int lo, int hi,
                               float grad_scale) {
    float *g = a->g1, *gx = a->g2; /* g: d dpre[l]; gx: d input of dec layer l */
    for (int l = lo; l < hi; l++) {
        const float *x = l == hi - 1 ? a->eout[hi - 1] : a->dout[l + 1];
        memset(gx, 0, (size_t)B * a->n[l + 1] * sizeof *gx);
        nn_linear_backward(gx, a->dec[l].dW, a->dec[l].db, g, x, a->dec[l].W, B, a->n[l + 1],
                           a->n[l]);
        if (l < hi - 1) {
            act_backward_(a->act, g, gx, a->dpre[l + 1], a->dout[l + 1],
                          (size_t)B * a->n[l + 1]);
        }
    }
    /* gx = d eout[hi-1] from the decoder */
    ae_sparse_(a, gx, B, hi, grad_scale);
    ae_encoder_backward_(a, in, B, lo, hi, gx);
}

/* Which stage a training step belongs to: layer index in [0,L) while pretraining, L after. */
static int ae_stage_of_(const nn_ae *a, uint64_t step) {
    if (a->pretrain <= 0) return a->L;
    uint64_t s = step / (uint64_t)a->pretrain;
    return s < (uint64_t)a->L ? (int)s : a->L;
}

static int ae_check_batch_(const nn_ae *a, const nn_batch *b) {
    if (b->B < 0 || b->B > a->maxB || (b->B > 0 && (b->D != a->D || !b->xf))) {
        nn_set_error("autoencoder batch: B=%d (max %d), D=%d (model %d)", b->B, a->maxB, b->D,
                     a->D);
        return NN_ERR_DATA;
    }
    return 0;
}

/* Supervised head: logits from eout[L-1]; fills tgt (ignored rows: -1). Returns xent sum. */
static double ae_head_(nn_ae *a, const nn_batch *b, float grad_scale, int train, double *count,
                       double *correct) {
    int B = b->B, C = a->classes, H = a->n[a->L];
    if (!b->y) {
        nn_set_error("supervised autoencoder: batch has no labels");
        return NAN;
    }
    for (int i = 0; i < B; i++) {
        int y = b->y[i];
        if (y < 0 || y >= C) {
            nn_set_error("label %d out of range [0,%d)", y, C);
            return NAN;
        }
        int64_t idx = b->index ? b->index[i] : i;
        a->tgt[i] = (train && a->labelled > 0 && idx >= a->labelled) ? -1 : y;
    }
    nn_linear_forward(a->logits, a->eout[a->L - 1], a->head.W, a->head.b, B, H, C);
    return nn_xent_forward_backward(train ? a->dlogits : NULL, a->logits, a->tgt, B, C, -1,
                                    0.0f, grad_scale, count, correct);
}

static int ae_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                nn_stats *st) {
    nn_ae *a = m->impl;
    int rc = ae_check_batch_(a, b);
    if (rc < 0 || b->B == 0) return rc;
    int B = b->B, stage = ae_stage_of_(a, b->step);

    if (stage == a->L && a->supervised) {
        double cnt = 0.0, cor = 0.0;
        ae_encode_clean_(a, b->xf, B, a->L);
        double loss = ae_head_(a, b, grad_scale, 1, &cnt, &cor);
        if (isnan(loss)) return NN_ERR_DATA;
        float *gc = a->g1;
        memset(gc, 0, (size_t)B * a->n[a->L] * sizeof *gc);
        nn_linear_backward(gc, a->head.dW, a->head.db, a->dlogits, a->eout[a->L - 1],
                           a->head.W, B, a->n[a->L], a->classes);
        ae_encoder_backward_(a, b->xf, B, 0, a->L, gc);
        st->loss += loss;
        st->count += cnt;
        st->correct += cor;
        return isfinite(loss) ? 0 : NN_ERR_NUMERIC;
    }

    int lo = stage == a->L ? 0 : stage, hi = stage == a->L ? a->L : stage + 1;
    ae_encode_clean_(a, b->xf, B, lo);
    const float *target = lo == 0 ? b->xf : a->eout[lo - 1];
    const float *in = target;
    if (a->noise != NN_NOISE_NONE) {
        nn_ae_corrupt(a->xin, target, B, a->n[lo], a->noise, a->noise_level, m->seed, b->step,
                      b->index);
        in = a->xin;
    }
    ae_stage_forward_(a, in, B, lo, hi);
    double loss = ae_stage_loss_(a, target, B, lo, grad_scale, 1);
    /* the penalty's value; its gradient is added inside ae_stage_backward_ */
    loss += ae_sparse_(a, NULL, B, hi, 0.0f);
    ae_stage_backward_(a, in, B, lo, hi, grad_scale);
    size_t n = (size_t)B * a->n[lo];
    st->loss += loss;
    st->count += B;
    st->extra[NN_AE_SSE] += sse_(a->dout[lo], target, n);
    st->extra[NN_AE_SSE_N] += (double)n;
    if (in != target) st->extra[NN_AE_NOISY_SSE] += sse_(in, target, n);
    if (!isfinite(loss)) {
        nn_set_error("autoencoder loss is not finite at step %llu", (unsigned long long)b->step);
        return NN_ERR_NUMERIC;
    }
    return 0;
}

static int ae_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    nn_ae *a = m->impl;
    int rc = ae_check_batch_(a, b);
    if (rc < 0 || b->B == 0) return rc;
    int B = b->B;
    const float *in = b->xf;
    if (a->noise != NN_NOISE_NONE) {
        nn_ae_corrupt(a->xin, b->xf, B, a->D, a->noise, a->noise_level, m->seed,
                      NN_AE_EVAL_STEP, b->index);
        in = a->xin;
    }
    ae_stage_forward_(a, in, B, 0, a->L);
    double loss = ae_stage_loss_(a, b->xf, B, 0, 0.0f, 0) + ae_sparse_(a, NULL, B, a->L, 0.0f);
    size_t n = (size_t)B * a->D;
    st->extra[NN_AE_SSE] += sse_(a->dout[0], b->xf, n);
    st->extra[NN_AE_SSE_N] += (double)n;
    if (in != b->xf) st->extra[NN_AE_NOISY_SSE] += sse_(in, b->xf, n);
    if (a->supervised) {
        double cnt = 0.0, cor = 0.0;
        ae_encode_clean_(a, b->xf, B, a->L);
        loss = ae_head_(a, b, 0.0f, 0, &cnt, &cor);
        if (isnan(loss)) return NN_ERR_DATA;
        st->correct += cor;
    }
    st->loss += loss;
    st->count += B;
    return isfinite(loss) ? 0 : NN_ERR_NUMERIC;
}

/* Panel 0: inputs, (noisy inputs,) reconstructions, up to 16 columns. */
static int ae_visualize_(nn_model *m, const nn_batch *b, int panel, float *img, int *h, int *w,
                         const char **name) {
    nn_ae *a = m->impl;
    if (panel != 0) return NN_ERR_UNSUPPORTED;
    int rc = ae_check_batch_(a, b);
    if (rc < 0) return rc;
    if (b->B == 0) { nn_set_error("visualize: empty batch"); return NN_ERR_DATA; }
    int cols = b->B < 16 ? b->B : 16, noisy = a->noise != NN_NOISE_NONE;
    const float *in = b->xf;
    if (noisy) {
        nn_ae_corrupt(a->xin, b->xf, cols, a->D, a->noise, a->noise_level, m->seed,
                      NN_AE_EVAL_STEP, b->index);
        in = a->xin;
    }
    ae_stage_forward_(a, in, cols, 0, a->L);
    if ((rc = grid_init_(img, h, w, 2 + noisy, cols, a->D)) < 0) return rc;
    for (int c = 0; c < cols; c++) {
        grid_put_(img, *w, 0, c, b->xf + (size_t)c * a->D, a->D);
        if (noisy) grid_put_(img, *w, 1, c, a->xin + (size_t)c * a->D, a->D);
        grid_put_(img, *w, 1 + noisy, c, a->dout[0] + (size_t)c * a->D, a->D);
    }
    *name = "reconstructions";
    return 0;
}

const nn_model_ops nn_autoencoder_ops = {
    .name = "autoencoder",
    .summary = "dense autoencoder: denoising, sparse, stacked pretraining, supervised head",
    .data_kind = "dense",
    .keys = ae_keys,
    .stat_names = ae_stat_names,
    .build = ae_build_,
    .free = ae_free_,
    .forward_backward = ae_forward_backward_,
    .evaluate = ae_evaluate_,
    .visualize = ae_visualize_,
};

/* =====================================================================================
 * variational autoencoder
 * =================================================================================== */

typedef struct nn_vae {
    int H;                        /* hidden encoder layers (decoder mirrors) */
    int n[NN_AE_MAX_LAYERS + 1];  /* n[0] = D, n[l+1] = hidden[l] */
    int Z, D, maxB, maxn, act;
    float kl_weight;
    ae_linear enc[NN_AE_MAX_LAYERS], mu, lv, dec[NN_AE_MAX_LAYERS + 1];
    float *epre[NN_AE_MAX_LAYERS], *eout[NN_AE_MAX_LAYERS]; /* (B,n[l+1]) */
    float *zmu, *zlv, *eps, *z;                             /* (B,Z) */
    float *dpre[NN_AE_MAX_LAYERS + 1], *dout[NN_AE_MAX_LAYERS + 1]; /* (B,n[l]) */
    float *g1, *g2, *gmu, *glv;                             /* (B,maxn), (B,Z) */
} nn_vae;

static const nn_key vae_keys[] = {
    {"hidden", "256", "encoder hidden widths (decoder mirrors); may be empty"},
    {"latent", "16", "latent dimension Z"},
    {"activation", "relu", "hidden activation: relu|sigmoid|tanh"},
    {"kl-weight", "1", "weight of the KL term (1: the ELBO)"},
    {NULL, NULL, NULL}};

static const char *const vae_stat_names[] = {"recon", "kl", "recon_sse", "recon_n", NULL};

static void vae_free_(nn_model *m) {
    nn_vae *v = m->impl;
    if (!v) return;
    for (int l = 0; l <= NN_AE_MAX_LAYERS; l++) {
        if (l < NN_AE_MAX_LAYERS) { free(v->epre[l]); free(v->eout[l]); }
        free(v->dpre[l]); free(v->dout[l]);
    }
    free(v->zmu); free(v->zlv); free(v->eps); free(v->z);
    free(v->g1); free(v->g2); free(v->gmu); free(v->glv);
    free(v);
    m->impl = NULL;
}

/* width of the input of decoder layer l (l == H: the latent) */
static int vae_dec_in_(const nn_vae *v, int l) { return l == v->H ? v->Z : v->n[l + 1]; }

static int vae_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    int hid[NN_AE_MAX_LAYERS], nh, rc;
    long lz;
    double fv;
    if (d->features <= 0 || d->max_batch <= 0) {
        nn_set_error("vae needs dense data: features=%d max_batch=%d", d->features,
                     d->max_batch);
        return NN_ERR_SHAPE;
    }
    nn_vae *v = calloc(1, sizeof *v);
    if (!v) return NN_ERR_NOMEM;
    m->impl = v;
    if ((rc = parse_widths_(cfg, "hidden", "256", hid, &nh, 1)) < 0) return rc;
    if ((rc = parse_act_(cfg, &v->act)) < 0) return rc;
    if ((rc = nn_config_int(cfg, "latent", 16, &lz)) < 0) return rc;
    if (lz <= 0 || lz > 4096) {
        nn_set_error("config key latent: %ld out of range [1,4096]", lz);
        return NN_ERR_CONFIG;
    }
    if ((rc = nn_config_float(cfg, "kl-weight", 1.0, &fv)) < 0) return rc;
    v->kl_weight = (float)fv;
    v->H = nh;
    v->Z = (int)lz;
    v->D = d->features;
    v->maxB = d->max_batch;
    v->n[0] = v->D;
    v->maxn = v->D > v->Z ? v->D : v->Z;
    for (int l = 0; l < nh; l++) {
        v->n[l + 1] = hid[l];
        if (hid[l] > v->maxn) v->maxn = hid[l];
    }
    char prefix[64];
    for (int l = 0; l < nh; l++) {
        snprintf(prefix, sizeof prefix, "encoder/layer_%d", l);
        if ((rc = register_linear_(&m->params, &v->enc[l], prefix, v->n[l], v->n[l + 1],
                                   v->act)) < 0) return rc;
    }
    if ((rc = register_linear_(&m->params, &v->mu, "encoder/mu", v->n[nh], v->Z, ACT_SIGMOID)) < 0)
        return rc;
    if ((rc = register_linear_(&m->params, &v->lv, "encoder/logvar", v->n[nh], v->Z,
                               ACT_SIGMOID)) < 0) return rc;
    for (int l = nh; l >= 0; l--) {
        snprintf(prefix, sizeof prefix, "decoder/layer_%d", l);
        if ((rc = register_linear_(&m->params, &v->dec[l], prefix, vae_dec_in_(v, l), v->n[l],
                                   l == 0 ? ACT_SIGMOID : v->act)) < 0) return rc;
    }
    int fail = 0;
    size_t B = (size_t)v->maxB;
    for (int l = 0; l < nh; l++) {
        v->epre[l] = zalloc_(B * v->n[l + 1], &fail);
        v->eout[l] = zalloc_(B * v->n[l + 1], &fail);
    }
    for (int l = 0; l <= nh; l++) {
        v->dpre[l] = zalloc_(B * v->n[l], &fail);
        v->dout[l] = zalloc_(B * v->n[l], &fail);
    }
    v->zmu = zalloc_(B * v->Z, &fail);
    v->zlv = zalloc_(B * v->Z, &fail);
    v->eps = zalloc_(B * v->Z, &fail);
    v->z = zalloc_(B * v->Z, &fail);
    v->g1 = zalloc_(B * v->maxn, &fail);
    v->g2 = zalloc_(B * v->maxn, &fail);
    v->gmu = zalloc_(B * v->Z, &fail);
    v->glv = zalloc_(B * v->Z, &fail);
    return fail ? NN_ERR_NOMEM : 0;
}

/* x (B,D) -> zmu, zlv (B,Z). */
static void vae_encode_(nn_vae *v, const float *x, int B) {
    for (int l = 0; l < v->H; l++) {
        const float *in = l == 0 ? x : v->eout[l - 1];
        nn_linear_forward(v->epre[l], in, v->enc[l].W, v->enc[l].b, B, v->n[l], v->n[l + 1]);
        act_forward_(v->act, v->eout[l], v->epre[l], (size_t)B * v->n[l + 1]);
    }
    const float *h = v->H ? v->eout[v->H - 1] : x;
    nn_linear_forward(v->zmu, h, v->mu.W, v->mu.b, B, v->n[v->H], v->Z);
    nn_linear_forward(v->zlv, h, v->lv.W, v->lv.b, B, v->n[v->H], v->Z);
}

/* z (B,Z) -> dpre[0] logits, dout[0] sigmoid means (B,D). */
static void vae_decode_(nn_vae *v, const float *z, int B) {
    for (int l = v->H; l >= 0; l--) {
        const float *in = l == v->H ? z : v->dout[l + 1];
        nn_linear_forward(v->dpre[l], in, v->dec[l].W, v->dec[l].b, B, vae_dec_in_(v, l),
                          v->n[l]);
        size_t n = (size_t)B * v->n[l];
        if (l == 0) nn_sigmoid_forward(v->dout[0], v->dpre[0], n);
        else act_forward_(v->act, v->dout[l], v->dpre[l], n);
    }
}

/* eps ~ N(0,1) keyed per example; z = mu + exp(logvar/2) eps. */
static void vae_sample_z_(nn_vae *v, int B, uint64_t seed, uint64_t step, const int64_t *index) {
    for (int i = 0; i < B; i++) {
        nn_rng r = nn_rng_make(seed, step, index ? (uint64_t)index[i] : (uint64_t)i,
                               NN_RNG_NOISE);
        for (int k = 0; k < v->Z; k++) {
            size_t j = (size_t)i * v->Z + k;
            v->eps[j] = nn_rng_normal(&r);
            v->z[j] = v->zmu[j] + expf(0.5f * v->zlv[j]) * v->eps[j];
        }
    }
}

static int vae_check_batch_(const nn_vae *v, const nn_batch *b) {
    if (b->B < 0 || b->B > v->maxB || (b->B > 0 && (b->D != v->D || !b->xf))) {
        nn_set_error("vae batch: B=%d (max %d), D=%d (model %d)", b->B, v->maxB, b->D, v->D);
        return NN_ERR_DATA;
    }
    return 0;
}

/* One forward (and backward when train) pass with noise keyed by step. */
static int vae_pass_(nn_model *m, const nn_batch *b, uint64_t step, float grad_scale, int train,
                     nn_stats *st) {
    nn_vae *v = m->impl;
    int rc = vae_check_batch_(v, b);
    if (rc < 0 || b->B == 0) return rc;
    int B = b->B;
    size_t nD = (size_t)B * v->D, nZ = (size_t)B * v->Z;
    vae_encode_(v, b->xf, B);
    vae_sample_z_(v, B, m->seed, step, b->index);
    vae_decode_(v, v->z, B);
    double recon = nn_bce_forward_backward(train ? v->g1 : NULL, v->dpre[0], b->xf, (int)nD,
                                           grad_scale, NULL);
    if (train) {
        memset(v->gmu, 0, nZ * sizeof *v->gmu);
        memset(v->glv, 0, nZ * sizeof *v->glv);
    }
    double kl = nn_kl_gauss_forward_backward(train ? v->gmu : NULL, train ? v->glv : NULL,
                                             v->zmu, v->zlv, B, v->Z,
                                             grad_scale * v->kl_weight);
    double loss = recon + v->kl_weight * kl;
    st->loss += loss;
    st->count += B;
    st->extra[NN_VAE_RECON] += recon;
    st->extra[NN_VAE_KL] += kl;
    st->extra[NN_VAE_SSE] += sse_(v->dout[0], b->xf, nD);
    st->extra[NN_VAE_SSE_N] += (double)nD;
    if (!isfinite(loss)) {
        nn_set_error("vae loss is not finite at step %llu", (unsigned long long)step);
        return NN_ERR_NUMERIC;
    }
    if (!train) return 0;

    /* decoder: g1 = d dpre[l]; g2 = d input of dec layer l */
    float *g = v->g1, *gx = v->g2;
    for (int l = 0; l <= v->H; l++) {
        const float *in = l == v->H ? v->z : v->dout[l + 1];
        int C = vae_dec_in_(v, l);
        memset(gx, 0, (size_t)B * C * sizeof *gx);
        nn_linear_backward(gx, v->dec[l].dW, v->dec[l].db, g, in, v->dec[l].W, B, C, v->n[l]);
        if (l < v->H) act_backward_(v->act, g, gx, v->dpre[l + 1], v->dout[l + 1], (size_t)B * C);
    }
    /* reparameterisation: dz -> dmu += dz, dlogvar += dz * eps * exp(logvar/2) / 2 */
    for (size_t j = 0; j < nZ; j++) {
        v->gmu[j] += gx[j];
        v->glv[j] += gx[j] * v->eps[j] * 0.5f * expf(0.5f * v->zlv[j]);
    }
    const float *h = v->H ? v->eout[v->H - 1] : b->xf;
    int Hn = v->n[v->H];
    float *dh = NULL;
    if (v->H) {
        dh = v->g1;
        memset(dh, 0, (size_t)B * Hn * sizeof *dh);
    }
    nn_linear_backward(dh, v->mu.dW, v->mu.db, v->gmu, h, v->mu.W, B, Hn, v->Z);
    nn_linear_backward(dh, v->lv.dW, v->lv.db, v->glv, h, v->lv.W, B, Hn, v->Z);
    float *gcur = v->g1, *gother = v->g2;
    for (int l = v->H - 1; l >= 0; l--) {
        size_t n = (size_t)B * v->n[l + 1];
        act_backward_(v->act, gother, gcur, v->epre[l], v->eout[l], n);
        const float *x = l == 0 ? b->xf : v->eout[l - 1];
        float *dx = NULL;
        if (l > 0) {
            dx = gcur;
            memset(dx, 0, (size_t)B * v->n[l] * sizeof *dx);
        }
        nn_linear_backward(dx, v->enc[l].dW, v->enc[l].db, gother, x, v->enc[l].W, B, v->n[l],
                           v->n[l + 1]);
    }
    return 0;
}

static int vae_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale,
                                 nn_stats *st) {
    return vae_pass_(m, b, b->step, grad_scale, 1, st);
}

/* A one-sample estimate of the negative ELBO, with eval-keyed noise. */
static int vae_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    return vae_pass_(m, b, NN_AE_EVAL_STEP, 0.0f, 0, st);
}

int nn_vae_latent(const nn_model *m) {
    return m && m->ops == &nn_vae_ops && m->impl ? ((const nn_vae *)m->impl)->Z : 0;
}

int nn_vae_decode(nn_model *m, const float *z, int n, float *out) {
    if (!nn_vae_latent(m)) { nn_set_error("nn_vae_decode: not a vae"); return NN_ERR_SHAPE; }
    nn_vae *v = m->impl;
    for (int i0 = 0; i0 < n; i0 += v->maxB) {
        int B = n - i0 < v->maxB ? n - i0 : v->maxB;
        vae_decode_(v, z + (size_t)i0 * v->Z, B);
        memcpy(out + (size_t)i0 * v->D, v->dout[0], (size_t)B * v->D * sizeof *out);
    }
    return 0;
}

int nn_vae_encode(nn_model *m, const float *x, int n, float *mu) {
    if (!nn_vae_latent(m)) { nn_set_error("nn_vae_encode: not a vae"); return NN_ERR_SHAPE; }
    nn_vae *v = m->impl;
    for (int i0 = 0; i0 < n; i0 += v->maxB) {
        int B = n - i0 < v->maxB ? n - i0 : v->maxB;
        vae_encode_(v, x + (size_t)i0 * v->D, B);
        memcpy(mu + (size_t)i0 * v->Z, v->zmu, (size_t)B * v->Z * sizeof *mu);
    }
    return 0;
}

#define VAE_GRID 8    /* samples: 8 x 8 */
#define VAE_INTERP 10 /* decoded points per interpolation row */

/* Panels: 0 reconstructions (inputs above posterior-mean reconstructions), 1 samples from
 * the prior, 2 interpolation between the codes of input pairs (0,1), (2,3), ... Each row
 * starts and ends with the two inputs. Decoding goes through the dout[0] scratch one
 * code at a time, so no extra memory is needed. */
static int vae_visualize_(nn_model *m, const nn_batch *b, int panel, float *img, int *h, int *w,
                          const char **name) {
    nn_vae *v = m->impl;
    int rc = vae_check_batch_(v, b);
    if (rc < 0) return rc;
    int D = v->D, Z = v->Z;
    if (panel == 0 || panel == 2) {
        if (b->B < (panel == 0 ? 1 : 2)) {
            nn_set_error("vae visualize panel %d: batch of %d is too small", panel, b->B);
            return NN_ERR_DATA;
        }
    }
    if (panel == 0) {
        int cols = b->B < 16 ? b->B : 16;
        vae_encode_(v, b->xf, cols);
        vae_decode_(v, v->zmu, cols);
        if ((rc = grid_init_(img, h, w, 2, cols, D)) < 0) return rc;
        for (int c = 0; c < cols; c++) {
            grid_put_(img, *w, 0, c, b->xf + (size_t)c * D, D);
            grid_put_(img, *w, 1, c, v->dout[0] + (size_t)c * D, D);
        }
        *name = "reconstructions";
        return 0;
    }
    if (panel == 1) {
        if ((rc = grid_init_(img, h, w, VAE_GRID, VAE_GRID, D)) < 0) return rc;
        for (int s = 0; s < VAE_GRID * VAE_GRID; s++) {
            nn_rng r = nn_rng_make(m->seed, 0, (uint64_t)s, NN_RNG_SAMPLE);
            for (int k = 0; k < Z; k++) v->z[k] = nn_rng_normal(&r);
            vae_decode_(v, v->z, 1);
            grid_put_(img, *w, s / VAE_GRID, s % VAE_GRID, v->dout[0], D);
        }
        *name = "samples";
        return 0;
    }
    if (panel == 2) {
        int rows = b->B / 2 < 8 ? b->B / 2 : 8;
        vae_encode_(v, b->xf, 2 * rows);
        /* keep the codes: zmu is overwritten by nothing below, decode uses z only */
        if ((rc = grid_init_(img, h, w, rows, VAE_INTERP + 2, D)) < 0) return rc;
        for (int r = 0; r < rows; r++) {
            const float *za = v->zmu + (size_t)(2 * r) * Z, *zb = za + Z;
            grid_put_(img, *w, r, 0, b->xf + (size_t)(2 * r) * D, D);
            grid_put_(img, *w, r, VAE_INTERP + 1, b->xf + (size_t)(2 * r + 1) * D, D);
            for (int t = 0; t < VAE_INTERP; t++) {
                float u = (float)t / (VAE_INTERP - 1);
                for (int k = 0; k < Z; k++) v->z[k] = (1.0f - u) * za[k] + u * zb[k];
                vae_decode_(v, v->z, 1);
                grid_put_(img, *w, r, 1 + t, v->dout[0], D);
            }
        }
        *name = "interpolation";
        return 0;
    }
    return NN_ERR_UNSUPPORTED;
}

const nn_model_ops nn_vae_ops = {
    .name = "vae",
    .summary = "variational autoencoder: Gaussian encoder, Bernoulli decoder, ELBO",
    .data_kind = "dense",
    .keys = vae_keys,
    .stat_names = vae_stat_names,
    .build = vae_build_,
    .free = vae_free_,
    .forward_backward = vae_forward_backward_,
    .evaluate = vae_evaluate_,
    .visualize = vae_visualize_,
};

/* =====================================================================================
 * pca
 * =================================================================================== */

typedef struct nn_pca {
    int D, K, maxB;
    float *mean, *comp;       /* views: (D), (K,D) */
    float *dmean, *dcomp;     /* unused gradient views */
    double *xd;               /* (maxB,D) batch in double */
    double *proj;             /* (maxB,K) projections */
    float *recon;             /* (maxB,D) reconstructions (pictures) */
} nn_pca;

static const nn_key pca_keys[] = {
    {"components", "32", "number of principal components K kept (<= features)"},
    {NULL, NULL, NULL}};

static const int pca_extra_k[NN_STATS_EXTRA - NN_PCA_SSE_K0] = {1, 2, 5, 10, 20, 50};

static const char *const pca_stat_names[] = {"recon_sse", "recon_n", "sse_k1", "sse_k2",
                                             "sse_k5", "sse_k10", "sse_k20", "sse_k50", NULL};

static void pca_free_(nn_model *m) {
    nn_pca *p = m->impl;
    if (!p) return;
    free(p->xd); free(p->proj); free(p->recon);
    free(p);
    m->impl = NULL;
}

static int pca_build_(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    long k;
    int rc;
    if (d->features <= 0 || d->max_batch <= 0) {
        nn_set_error("pca needs dense data: features=%d max_batch=%d", d->features,
                     d->max_batch);
        return NN_ERR_SHAPE;
    }
    nn_pca *p = calloc(1, sizeof *p);
    if (!p) return NN_ERR_NOMEM;
    m->impl = p;
    if ((rc = nn_config_int(cfg, "components", 32, &k)) < 0) return rc;
    if (k <= 0 || k > d->features) {
        nn_set_error("config key components: %ld not in [1, features=%d]", k, d->features);
        return NN_ERR_CONFIG;
    }
    p->D = d->features;
    p->K = (int)k;
    p->maxB = d->max_batch;
    int s1[1] = {p->D}, s2[2] = {p->K, p->D};
    rc = nn_params_add(&m->params, "pca/mean", 1, s1, NN_INIT_ZERO, 0.0f, &p->mean, &p->dmean);
    if (rc < 0) return rc;
    m->params.p[rc].frozen = 1;
    rc = nn_params_add(&m->params, "pca/components", 2, s2, NN_INIT_ZERO, 0.0f, &p->comp,
                       &p->dcomp);
    if (rc < 0) return rc;
    m->params.p[rc].frozen = 1;
    p->xd = malloc((size_t)p->maxB * p->D * sizeof *p->xd);
    p->proj = malloc((size_t)p->maxB * p->K * sizeof *p->proj);
    p->recon = malloc((size_t)p->maxB * p->D * sizeof *p->recon);
    return p->xd && p->proj && p->recon ? 0 : NN_ERR_NOMEM;
}

static size_t pca_fit_size_(nn_model *m) {
    nn_pca *p = m->impl;
    return (size_t)p->D + (size_t)p->D * p->D;
}

/* acc[0..D) += sum_i x_i; acc[D..D+D*D) += sum_i x_i x_i^T (upper and lower, row-major).
 * Any B: processed in chunks of max_batch. */
static int pca_fit_accumulate_(nn_model *m, const nn_batch *b, double *acc) {
    nn_pca *p = m->impl;
    int D = p->D;
    if (b->B < 0 || (b->B > 0 && (b->D != D || !b->xf))) {
        nn_set_error("pca batch: B=%d D=%d (model %d)", b->B, b->D, D);
        return NN_ERR_DATA;
    }
    for (int i0 = 0; i0 < b->B; i0 += p->maxB) {
        int B = b->B - i0 < p->maxB ? b->B - i0 : p->maxB;
        const float *x = b->xf + (size_t)i0 * D;
        for (size_t j = 0; j < (size_t)B * D; j++) {
            p->xd[j] = x[j];
            acc[j % D] += x[j];
        }
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, D, B, 1.0, p->xd, D, p->xd, D,
                    1.0, acc + D, D);
    }
    return 0;
}

static int pca_fit_finish_(nn_model *m, const double *acc, double n) {
    nn_pca *p = m->impl;
    int D = p->D, K = p->K, info = 0, lwork = -1, liwork = -1, iwq = 0;
    if (!(n > 1.0)) {
        nn_set_error("pca: needs at least 2 examples to fit (got %g)", n);
        return NN_ERR_DATA;
    }
    double *cov = malloc((size_t)D * D * sizeof *cov), *ev = malloc((size_t)D * sizeof *ev);
    double wq = 0.0, *work = NULL;
    int *iwork = NULL, rc = 0;
    if (!cov || !ev) { rc = NN_ERR_NOMEM; goto done; }
    for (int i = 0; i < D; i++) p->mean[i] = (float)(acc[i] / n);
    /* covariance (dividing by n): E[x x^T] - mean mean^T, in double */
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++)
            cov[(size_t)i * D + j] = acc[D + (size_t)i * D + j] / n - (acc[i] / n) * (acc[j] / n);
    dsyevd_("V", "U", &D, cov, &D, ev, &wq, &lwork, &iwq, &liwork, &info);
    if (info != 0) { nn_set_error("dsyevd workspace query failed: info=%d", info); rc = NN_ERR_NUMERIC; goto done; }
    lwork = (int)wq + 1;
    liwork = iwq;
    work = malloc((size_t)lwork * sizeof *work);
    iwork = malloc((size_t)liwork * sizeof *iwork);
    if (!work || !iwork) { rc = NN_ERR_NOMEM; goto done; }
    dsyevd_("V", "U", &D, cov, &D, ev, work, &lwork, iwork, &liwork, &info);
    if (info != 0) { nn_set_error("dsyevd failed: info=%d", info); rc = NN_ERR_NUMERIC; goto done; }
    /* column j of the column-major result is eigenvector j, eigenvalues ascending:
     * component k is column D-1-k, stored with a sign fixed so its largest entry is > 0 */
    for (int k = 0; k < K; k++) {
        const double *col = cov + (size_t)(D - 1 - k) * D;
        int imax = 0;
        for (int i = 1; i < D; i++)
            if (fabs(col[i]) > fabs(col[imax])) imax = i;
        double sgn = col[imax] < 0.0 ? -1.0 : 1.0;
        for (int i = 0; i < D; i++) p->comp[(size_t)k * D + i] = (float)(sgn * col[i]);
    }
done:
    free(cov); free(ev); free(work); free(iwork);
    return rc;
}

int nn_pca_fit(nn_model *m, const float *x, int N) {
    if (!m || m->ops != &nn_pca_ops) { nn_set_error("nn_pca_fit: not a pca model"); return NN_ERR_SHAPE; }
    size_t n = pca_fit_size_(m);
    double *acc = calloc(n, sizeof *acc);
    if (!acc) return NN_ERR_NOMEM;
    nn_batch b = {0};
    b.B = N;
    b.D = ((nn_pca *)m->impl)->D;
    b.xf = x;
    int rc = pca_fit_accumulate_(m, &b, acc);
    if (rc == 0) rc = pca_fit_finish_(m, acc, (double)N);
    free(acc);
    return rc;
}

/* proj (B,K) = (x - mean) comp^T in double; returns per-row centred norms in xd[i*D]. */
static void pca_project_(nn_pca *p, const float *x, int B) {
    int D = p->D, K = p->K;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < D; j++)
            p->xd[(size_t)i * D + j] = (double)x[(size_t)i * D + j] - p->mean[j];
    for (int i = 0; i < B; i++)
        for (int k = 0; k < K; k++) {
            const float *c = p->comp + (size_t)k * D;
            const double *xi = p->xd + (size_t)i * D;
            double s = 0.0;
            for (int j = 0; j < D; j++) s += xi[j] * c[j];
            p->proj[(size_t)i * K + k] = s;
        }
}

/* Reconstruction error of each row with k components: |x - mean|^2 - sum_{j<k} proj_j^2
 * (exact for orthonormal components). Also fills recon (B,D) with the K-term reconstruction. */
static int pca_evaluate_(nn_model *m, const nn_batch *b, nn_stats *st) {
    nn_pca *p = m->impl;
    int D = p->D, K = p->K;
    if (b->B < 0 || (b->B > 0 && (b->D != D || !b->xf))) {
        nn_set_error("pca batch: B=%d D=%d (model %d)", b->B, b->D, D);
        return NN_ERR_DATA;
    }
    for (int i0 = 0; i0 < b->B; i0 += p->maxB) {
        int B = b->B - i0 < p->maxB ? b->B - i0 : p->maxB;
        const float *x = b->xf + (size_t)i0 * D;
        pca_project_(p, x, B);
        for (int i = 0; i < B; i++) {
            const double *pr = p->proj + (size_t)i * K;
            float *r = p->recon + (size_t)i * D;
            for (int j = 0; j < D; j++) r[j] = p->mean[j];
            for (int k = 0; k < K; k++) {
                const float *c = p->comp + (size_t)k * D;
                for (int j = 0; j < D; j++) r[j] += (float)pr[k] * c[j];
            }
            double tot = 0.0, cum = 0.0;
            for (int j = 0; j < D; j++) tot += p->xd[(size_t)i * D + j] * p->xd[(size_t)i * D + j];
            int e = 0;
            for (int k = 0; k <= K; k++) {
                for (; e < NN_STATS_EXTRA - NN_PCA_SSE_K0; e++) {
                    int ke = pca_extra_k[e] < K ? pca_extra_k[e] : K;
                    if (ke != k) break;
                    st->extra[NN_PCA_SSE_K0 + e] += fmax(tot - cum, 0.0);
                }
                if (k < K) cum += pr[k] * pr[k];
            }
            double e2 = sse_(r, x + (size_t)i * D, (size_t)D);
            st->extra[NN_PCA_SSE] += e2;
            st->loss += e2; /* the loss of pca is its squared reconstruction error */
        }
        st->extra[NN_PCA_SSE_N] += (double)B * D;
    }
    st->count += b->B;
    return 0;
}

static int pca_forward_backward_(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st) {
    (void)m; (void)b; (void)grad_scale; (void)st;
    nn_set_error("pca is fitted from statistics (fit_accumulate/fit_finish), not trained");
    return NN_ERR_UNSUPPORTED;
}

/* Panels: 0 reconstructions (inputs above K-term reconstructions), 1 "components": the
 * mean then the first components, each rescaled to [0,1]. */
static int pca_visualize_(nn_model *m, const nn_batch *b, int panel, float *img, int *h, int *w,
                          const char **name) {
    nn_pca *p = m->impl;
    int D = p->D, rc;
    if (panel == 0) {
        if (b->B <= 0 || b->D != D || !b->xf) {
            nn_set_error("pca visualize: need a non-empty batch of width %d", D);
            return NN_ERR_DATA;
        }
        int cols = b->B < 16 ? b->B : 16;
        if (cols > p->maxB) cols = p->maxB;
        nn_stats st = {0};
        nn_batch bb = *b;
        bb.B = cols;
        if ((rc = pca_evaluate_(m, &bb, &st)) < 0) return rc;
        if ((rc = grid_init_(img, h, w, 2, cols, D)) < 0) return rc;
        for (int c = 0; c < cols; c++) {
            grid_put_(img, *w, 0, c, b->xf + (size_t)c * D, D);
            grid_put_(img, *w, 1, c, p->recon + (size_t)c * D, D);
        }
        *name = "reconstructions";
        return 0;
    }
    if (panel == 1) {
        int n = p->K < 15 ? p->K : 15;
        if ((rc = grid_init_(img, h, w, 1, n + 1, D)) < 0) return rc;
        grid_put_(img, *w, 0, 0, p->mean, D);
        for (int k = 0; k < n; k++) {
            const float *c = p->comp + (size_t)k * D;
            float lo = c[0], hi = c[0];
            for (int j = 1; j < D; j++) { lo = fminf(lo, c[j]); hi = fmaxf(hi, c[j]); }
            float sc = hi > lo ? 1.0f / (hi - lo) : 0.0f;
            for (int j = 0; j < D; j++) p->recon[j] = (c[j] - lo) * sc;
            grid_put_(img, *w, 0, k + 1, p->recon, D);
        }
        *name = "components";
        return 0;
    }
    return NN_ERR_UNSUPPORTED;
}

const nn_model_ops nn_pca_ops = {
    .name = "pca",
    .summary = "principal component analysis (LAPACK dsyevd), fitted not trained",
    .data_kind = "dense",
    .keys = pca_keys,
    .stat_names = pca_stat_names,
    .build = pca_build_,
    .free = pca_free_,
    .forward_backward = pca_forward_backward_,
    .evaluate = pca_evaluate_,
    .fit_size = pca_fit_size_,
    .fit_accumulate = pca_fit_accumulate_,
    .fit_finish = pca_fit_finish_,
    .visualize = pca_visualize_,
};
