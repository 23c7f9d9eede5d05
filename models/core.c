/* core.c - the foundation of models/: status strings and the per-thread error message,
 * the counter-based random number generator, the configuration table with typed
 * getters, the flat parameter registry, the GEMM wrapper and model lookup/init/free.
 *
 * It does not implement layers (layers.c), losses (loss.c) or any model (bow.c, ...),
 * and it never reads files: configuration values arrive as strings from the trainer. */
#include "models/nn.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

/* ---- errors ------------------------------------------------------------------------ */

const char *nn_status_str(int status) {
    switch (status) {
    case NN_OK: return "ok";
    case NN_ERR_NOMEM: return "out of memory";
    case NN_ERR_CONFIG: return "bad configuration";
    case NN_ERR_SHAPE: return "incompatible dimensions";
    case NN_ERR_DATA: return "bad input data";
    case NN_ERR_UNSUPPORTED: return "operation not supported by this model";
    case NN_ERR_NUMERIC: return "NaN or Inf";
    default: return "unknown status";
    }
}

/* One buffer per thread; starts as "" (zero-initialised). */
static _Thread_local char nn_err_buf_[512];

void nn_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(nn_err_buf_, sizeof nn_err_buf_, fmt, ap);
    va_end(ap);
}

const char *nn_error(void) { return nn_err_buf_; }

/* ---- counter-based random numbers --------------------------------------------------- */

#define NN_GOLDEN_ UINT64_C(0x9E3779B97F4A7C15)

uint64_t nn_hash64(uint64_t x) {
    x ^= x >> 30;
    x *= UINT64_C(0xBF58476D1CE4E5B9);
    x ^= x >> 27;
    x *= UINT64_C(0x94D049BB133111EB);
    x ^= x >> 31;
    return x;
}

/* Each input is folded in with a different odd offset before hashing, so (a, b) and
 * (b, a) give different keys and a zero input still changes the state. */
nn_rng nn_rng_make(uint64_t seed, uint64_t a, uint64_t b, uint32_t purpose) {
    uint64_t k = nn_hash64(seed + NN_GOLDEN_);
    k = nn_hash64(k ^ (a + UINT64_C(0xD1B54A32D192ED03)));
    k = nn_hash64(k ^ (b + UINT64_C(0x8CB92BA72F3D8DD7)));
    k = nn_hash64(k ^ ((uint64_t)purpose + UINT64_C(0xA0761D6478BD642F)));
    nn_rng r = {k, 0};
    return r;
}

/* splitmix64 with the key as starting point: output n is hash(key + (n+1) * golden). */
uint64_t nn_rng_u64(nn_rng *r) {
    r->ctr++;
    return nn_hash64(r->key + r->ctr * NN_GOLDEN_);
}

/* Lemire's multiply-shift with rejection: exactly uniform. */
uint32_t nn_rng_below(nn_rng *r, uint32_t n) {
    NN_ASSERT(n > 0);
    uint32_t thresh = (uint32_t)(-n) % n;
    for (;;) {
        uint64_t m = (uint64_t)(uint32_t)(nn_rng_u64(r) >> 32) * n;
        if ((uint32_t)m >= thresh) return (uint32_t)(m >> 32);
    }
}

float nn_rng_uniform(nn_rng *r) {
    return (float)(nn_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

/* Box-Muller from one 64-bit draw: 32 bits for the radius (never log(0)), 32 for the
 * angle. Only the cosine branch is used so the generator stays stateless. */
float nn_rng_normal(nn_rng *r) {
    uint64_t u = nn_rng_u64(r);
    double u1 = ((double)(u >> 32) + 1.0) * (1.0 / 4294967296.0); /* (0, 1] */
    double u2 = (double)(u & 0xFFFFFFFFu) * (1.0 / 4294967296.0);  /* [0, 1) */
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- configuration ------------------------------------------------------------------ */

void nn_config_free(nn_config *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        free(c->key[i]);
        free(c->val[i]);
    }
    memset(c, 0, sizeof *c);
}

static int nn_config_index_(const nn_config *c, const char *key) {
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->key[i], key) == 0) return i;
    return -1;
}

int nn_config_set(nn_config *c, const char *key, const char *val) {
    NN_ASSERT(c && key && val);
    char *v = strdup(val);
    if (!v) {
        nn_set_error("--%s: out of memory", key);
        return NN_ERR_NOMEM;
    }
    int i = nn_config_index_(c, key);
    if (i >= 0) {
        free(c->val[i]);
        c->val[i] = v;
        return NN_OK;
    }
    if (c->n >= NN_CONFIG_MAX) {
        free(v);
        nn_set_error("--%s: too many configuration keys (at most %d)", key, NN_CONFIG_MAX);
        return NN_ERR_CONFIG;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        nn_set_error("--%s: out of memory", key);
        return NN_ERR_NOMEM;
    }
    c->key[c->n] = k;
    c->val[c->n] = v;
    c->n++;
    return NN_OK;
}

const char *nn_config_get(const nn_config *c, const char *key) {
    if (!c) return NULL;
    int i = nn_config_index_(c, key);
    return i >= 0 ? c->val[i] : NULL;
}

int nn_config_int(const nn_config *c, const char *key, long def, long *out) {
    const char *s = nn_config_get(c, key);
    if (!s) {
        *out = def;
        return NN_OK;
    }
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    if (end == s || *s == '\0' || *end != '\0') {
        nn_set_error("--%s: expected an integer, got '%s'", key, s);
        return NN_ERR_CONFIG;
    }
    if (errno == ERANGE) {
        nn_set_error("--%s: integer out of range: '%s'", key, s);
        return NN_ERR_CONFIG;
    }
    *out = v;
    return NN_OK;
}

int nn_config_float(const nn_config *c, const char *key, double def, double *out) {
    const char *s = nn_config_get(c, key);
    if (!s) {
        *out = def;
        return NN_OK;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t') end++;
    if (end == s || *s == '\0' || *end != '\0') {
        nn_set_error("--%s: expected a number, got '%s'", key, s);
        return NN_ERR_CONFIG;
    }
    if (!isfinite(v) || errno == ERANGE) {
        nn_set_error("--%s: expected a finite number, got '%s'", key, s);
        return NN_ERR_CONFIG;
    }
    *out = v;
    return NN_OK;
}

int nn_config_bool(const nn_config *c, const char *key, int def, int *out) {
    const char *s = nn_config_get(c, key);
    if (!s) {
        *out = def;
        return NN_OK;
    }
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return NN_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return NN_OK;
        }
    }
    nn_set_error("--%s: expected true or false, got '%s'", key, s);
    return NN_ERR_CONFIG;
}

/* Is s one of the '|'-separated words of choices? */
static int nn_choice_has_(const char *choices, const char *s) {
    size_t len = strlen(s);
    const char *p = choices;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t w = bar ? (size_t)(bar - p) : strlen(p);
        if (w == len && strncmp(p, s, len) == 0) return 1;
        if (!bar) return 0;
        p = bar + 1;
    }
}

int nn_config_choice(const nn_config *c, const char *key, const char *def, const char *choices,
                     const char **out) {
    const char *s = nn_config_get(c, key);
    if (!s) s = def;
    if (!s) {
        nn_set_error("--%s: required (one of %s)", key, choices);
        return NN_ERR_CONFIG;
    }
    if (!nn_choice_has_(choices, s)) {
        nn_set_error("--%s: expected one of %s, got '%s'", key, choices, s);
        return NN_ERR_CONFIG;
    }
    *out = s;
    return NN_OK;
}

/* ---- the parameter registry -------------------------------------------------------- */

int nn_params_add(nn_params *ps, const char *name, int ndim, const int *shape, int init,
                  float scale, float **data_view, float **grad_view) {
    NN_ASSERT(ps && name && shape);
    NN_ASSERT(strlen(name) > 0 && strlen(name) < NN_NAME_MAX);
    NN_ASSERT(ndim >= 1 && ndim <= NN_MAX_DIMS);
    NN_ASSERT(init >= NN_INIT_ZERO && init <= NN_INIT_UNIFORM);
    NN_ASSERT(ps->data == NULL); /* registration happens before nn_params_alloc */
    NN_ASSERT(nn_params_find(ps, name) < 0);
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 16;
        nn_param *p = realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) {
            nn_set_error("parameter registry: out of memory at '%s'", name);
            return NN_ERR_NOMEM;
        }
        ps->p = p;
        ps->cap = cap;
    }
    nn_param *t = &ps->p[ps->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    size_t size = 1;
    for (int d = 0; d < ndim; d++) {
        NN_ASSERT(shape[d] >= 0);
        t->shape[d] = shape[d];
        size *= (size_t)shape[d];
    }
    t->offset = ps->total;
    t->size = size;
    t->init = init;
    t->scale = scale;
    t->decay = ndim >= 2;
    t->frozen = 0;
    t->data_view = data_view;
    t->grad_view = grad_view;
    ps->total += size;
    return ps->n++;
}

/* Elements per RNG key within one tensor: each block is an independent stream, so a
 * tensor's values depend only on (seed, its index, the element position). */
#define NN_INIT_BLOCK 4096

static void nn_param_init_(float *x, const nn_param *t, int index, uint64_t seed) {
    switch (t->init) {
    case NN_INIT_ZERO:
        memset(x, 0, t->size * sizeof *x);
        return;
    case NN_INIT_ONE:
        for (size_t i = 0; i < t->size; i++) x[i] = 1.0f;
        return;
    default: break;
    }
    for (size_t blk = 0; blk * NN_INIT_BLOCK < t->size; blk++) {
        nn_rng r = nn_rng_make(seed, (uint64_t)index, blk, NN_RNG_INIT);
        size_t lo = blk * NN_INIT_BLOCK;
        size_t hi = lo + NN_INIT_BLOCK < t->size ? lo + NN_INIT_BLOCK : t->size;
        if (t->init == NN_INIT_NORMAL)
            for (size_t i = lo; i < hi; i++) x[i] = t->scale * nn_rng_normal(&r);
        else
            for (size_t i = lo; i < hi; i++)
                x[i] = t->scale * (2.0f * nn_rng_uniform(&r) - 1.0f);
    }
}

int nn_params_alloc(nn_params *ps, uint64_t seed) {
    NN_ASSERT(ps && ps->data == NULL && ps->grad == NULL);
    size_t bytes = ps->total * sizeof(float);
    bytes = (bytes + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    ps->data = nn_alloc_big(bytes);
    ps->grad = nn_alloc_big(bytes);
    if (!ps->data || !ps->grad) {
        free(ps->data);
        free(ps->grad);
        ps->data = ps->grad = NULL;
        nn_set_error("parameters: cannot allocate 2 x %zu bytes", bytes);
        return NN_ERR_NOMEM;
    }
    memset(ps->grad, 0, bytes);
    memset(ps->data, 0, bytes);
    for (int i = 0; i < ps->n; i++) {
        nn_param *t = &ps->p[i];
        if (t->data_view) *t->data_view = ps->data + t->offset;
        if (t->grad_view) *t->grad_view = ps->grad + t->offset;
        nn_param_init_(ps->data + t->offset, t, i, seed);
    }
    return NN_OK;
}

static void zero_grad_part(void *ctx, int part) {
    nn_params *ps = ctx;
    size_t i0, i1;
    nn_par_half(ps->total, part, 16, &i0, &i1);
    memset(ps->grad + i0, 0, (i1 - i0) * sizeof(float));
}

void nn_params_zero_grad(nn_params *ps) {
    if (ps->grad) nn_par_run(zero_grad_part, ps, ps->total >= 65536);
}

int nn_params_find(const nn_params *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (strcmp(ps->p[i].name, name) == 0) return i;
    return -1;
}

void nn_params_free(nn_params *ps) {
    if (!ps) return;
    free(ps->p);
    free(ps->data);
    free(ps->grad);
    memset(ps, 0, sizeof *ps);
}

/* ---- kernels ------------------------------------------------------------------------ */

void *nn_alloc_big(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge) return aligned_alloc(64, bytes ? (bytes + 63) / 64 * 64 : 64);
    size_t n = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, n);
#ifdef MADV_HUGEPAGE
    if (p) (void)madvise(p, n, MADV_HUGEPAGE); /* advice only: failure changes nothing */
#endif
    return p;
}

void nn_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
             const float *Bm, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (nn_get_matmul() == NN_MATMUL_BF16) {
        nn_gemm_bf16(NN_ENGINE_BEST, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
}

void nn_gemm_bias(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *Bm,
                  int ldb, const float *bias, float *C, int ldc) {
    if (nn_get_matmul() == NN_MATMUL_BF16) {
        nn_gemm_bf16_bias(NN_ENGINE_BEST, ta, tb, M, N, K, A, lda, Bm, ldb, bias, C, ldc);
        return;
    }
    for (int i = 0; i < M; i++) memcpy(C + (size_t)i * ldc, bias, (size_t)N * sizeof *C);
    nn_gemm(ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 1.0f, C, ldc);
}

void nn_set_threads(int n) {
    if (n < 1) n = 1;
    openblas_set_num_threads(n);
}

int nn_get_threads(void) { return openblas_get_num_threads(); }

/* ---- models ------------------------------------------------------------------------- */

const nn_model_ops *nn_model_find(const char *name) {
    for (int i = 0; nn_models[i]; i++)
        if (strcmp(nn_models[i]->name, name) == 0) return nn_models[i];
    return NULL;
}

int nn_model_init(nn_model *m, const nn_model_ops *ops, const nn_config *cfg, const nn_dims *d,
                  uint64_t seed) {
    NN_ASSERT(m && ops && d);
    memset(m, 0, sizeof *m);
    m->ops = ops;
    m->dims = *d;
    m->seed = seed;
    nn_set_error("%s", "");
    int rc = ops->build(m, cfg, d);
    if (rc == NN_OK) rc = nn_params_alloc(&m->params, seed);
    if (rc == NN_OK && ops->bind) rc = ops->bind(m);
    if (rc != NN_OK) {
        if (nn_error()[0] == '\0')
            nn_set_error("model %s: %s", ops->name, nn_status_str(rc));
        nn_model_free(m);
    }
    return rc;
}

void nn_model_free(nn_model *m) {
    if (!m) return;
    if (m->ops && m->ops->free) m->ops->free(m);
    nn_params_free(&m->params);
    memset(m, 0, sizeof *m);
}

const char *nn_blas_version(void) {
    /* e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64" */
    const char *s = openblas_get_config();
    return s ? s : "OpenBLAS";
}
