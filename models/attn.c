/* attn.c - attention and transformer building blocks: scaled dot-product attention with
 * causal and key-padding masks, multi-head projections, positional encodings, and the
 * fused memory-bound kernels a transformer step spends its non-GEMM time in (GELU with a
 * fast tanh, one-pass layer norm, softmax cross-entropy over the vocabulary).
 *
 * Does not: own parameters (layers hold views into the registry), allocate (callers pass
 * caches and scratch), or own threads (the two-way split is par.c; GEMMs go through nn_gemm).
 * The elementwise kernels use GCC vector extensions so they vectorise at any -O level
 * and on any target (a 16-lane vector is split to what the machine has).
 *
 * Threads: with nn_get_threads() >= 2 the memory-bound kernels and the per-head attention
 * loops run as two halves, the second on one helper thread (OpenBLAS is set to one thread
 * while both halves call it). Work is always cut into the same two halves and partial sums
 * are combined in the same order, so results do not depend on the thread count. One split
 * runs at a time per process: a nested or concurrent one runs both halves in its caller. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/nn.h"
#include "models/nn_par.h"

/* ---- vector helpers ------------------------------------------------------------------ */

#define VL 16
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
/* Unaligned, aliasing-safe access type (as the compiler's own intrinsic headers do). */
typedef float vfu __attribute__((vector_size(64), aligned(4), may_alias));

static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline void vstore(float *p, vf a) { *(vfu *)p = a; }
static inline vf vset1(float x) { return (vf){0} + x; }
static inline vf vselect(vi m, vf a, vf b) { /* m ? a : b, m lanes all-ones or zero */
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
static inline float vhsum(vf a) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += a[i];
    return s;
}
static inline float vhmax(vf a) {
    float m = a[0];
    for (int i = 1; i < VL; i++) m = a[i] > m ? a[i] : m;
    return m;
}

/* exp(x) for x in float range: 2^n * e^r with |r| <= ln2/2 and a degree-6 Taylor
 * polynomial (relative error ~2e-7). Inputs are clamped to [-87, 88]. */
static inline vf vexp(vf x) {
    const vf lo = vset1(-87.0f), hi = vset1(88.0f);
    x = vmin(vmax(x, lo), hi);
    const vf shifter = vset1(12582912.0f); /* 1.5 * 2^23: rounds to nearest integer */
    vf t = x * 1.44269504088896341f + shifter;
    vf n = t - shifter;
    vi ni = (vi)t - 0x4B400000;
    vf r = x - n * 0.693145751953125f;     /* ln2 split in hi + lo for exactness */
    r = r - n * 1.428606765330187e-06f;
    vf p = vset1(1.0f / 720.0f);
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi scale = (ni + 127) << 23;
    return p * (vf)scale;
}
static inline float sexp(float x) { /* scalar through the same code path */
    vf v = vexp(vset1(x));
    return v[0];
}

/* tanh(u) = 1 - 2 / (exp(2u) + 1); exact limits at +-inf thanks to the clamp in vexp. */
static inline vf vtanh(vf u) { return 1.0f - 2.0f / (vexp(u + u) + 1.0f); }

#define PAR_MIN 32768 /* elementwise work worth a thread handoff (a few microseconds) */

/* ---- GELU (tanh approximation) ------------------------------------------------------------ */

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

static inline vf vgelu(vf x) {
    vf t = vtanh(GELU_K * (x + GELU_A * x * x * x));
    return 0.5f * x * (1.0f + t);
}
static inline vf vgelu_grad(vf x) {
    vf x2 = x * x;
    vf t = vtanh(GELU_K * (x + GELU_A * x2 * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_A * x2);
}

static void gelu_fwd_span(float *y, const float *x, size_t i, size_t n) {
    for (; i + VL <= n; i += VL) vstore(y + i, vgelu(vload(x + i)));
    for (; i < n; i++) y[i] = vgelu(vset1(x[i]))[0];
}

static void gelu_bwd_span(float *dx, const float *dy, const float *x, size_t i, size_t n) {
    for (; i + VL <= n; i += VL)
        vstore(dx + i, vload(dx + i) + vload(dy + i) * vgelu_grad(vload(x + i)));
    for (; i < n; i++) dx[i] += dy[i] * vgelu_grad(vset1(x[i]))[0];
}

static void gelu_bwd_inplace_span(float *d, const float *x, size_t i, size_t n) {
    for (; i + VL <= n; i += VL) vstore(d + i, vload(d + i) * vgelu_grad(vload(x + i)));
    for (; i < n; i++) d[i] *= vgelu_grad(vset1(x[i]))[0];
}

/* Forward that also keeps t = tanh(k (x + a x^3)) for a backward without exp. */
static void gelu_fwd_cache_span(float *y, float *t, const float *x, size_t i, size_t n) {
    for (; i + VL <= n; i += VL) {
        vf v = vload(x + i), th = vtanh(GELU_K * (v + GELU_A * v * v * v));
        vstore(t + i, th);
        vstore(y + i, 0.5f * v * (1.0f + th));
    }
    for (; i < n; i++) { /* the same vector arithmetic as above, one lane used */
        vf v = vset1(x[i]), th = vtanh(GELU_K * (v + GELU_A * v * v * v));
        t[i] = th[0];
        y[i] = (0.5f * v * (1.0f + th))[0];
    }
}

static inline vf vgelu_grad_t(vf x, vf t) {
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_A * x * x);
}

static void gelu_bwd_cached_span(float *d, const float *x, const float *t, size_t i, size_t n) {
    for (; i + VL <= n; i += VL)
        vstore(d + i, vload(d + i) * vgelu_grad_t(vload(x + i), vload(t + i)));
    for (; i < n; i++) d[i] *= vgelu_grad_t(vset1(x[i]), vset1(t[i]))[0];
}

static void add_span(float *y, const float *a, const float *b, size_t i, size_t n) {
    for (; i + VL <= n; i += VL) vstore(y + i, vload(a + i) + vload(b + i));
    for (; i < n; i++) y[i] = a[i] + b[i];
}

/* One elementwise job over n floats, cut in halves at multiples of VL. */
typedef struct ew_job {
    int kind; /* 0 gelu forward, 1 gelu backward, 2 gelu backward in place, 3 add,
                 4 gelu forward keeping tanh in z, 5 gelu backward in place from tanh b */
    float *y;
    const float *a, *b;
    size_t n;
    float *z;
} ew_job;

static void ew_part(void *ctx, int part) {
    ew_job *j = ctx;
    size_t i0, i1;
    nn_par_half(j->n, part, VL, &i0, &i1);
    switch (j->kind) {
    case 0: gelu_fwd_span(j->y, j->a, i0, i1); break;
    case 1: gelu_bwd_span(j->y, j->a, j->b, i0, i1); break;
    case 2: gelu_bwd_inplace_span(j->y, j->a, i0, i1); break;
    case 4: gelu_fwd_cache_span(j->y, j->z, j->a, i0, i1); break;
    case 5: gelu_bwd_cached_span(j->y, j->a, j->b, i0, i1); break;
    default: add_span(j->y, j->a, j->b, i0, i1); break;
    }
}

static void ew_run(int kind, float *y, const float *a, const float *b, size_t n, size_t work) {
    ew_job j = {kind, y, a, b, n, NULL};
    nn_par_run(ew_part, &j, work >= PAR_MIN);
}

void nn_fgelu_forward(float *y, const float *x, size_t n) { ew_run(0, y, x, NULL, n, 4 * n); }

void nn_fgelu_backward(float *dx, const float *dy, const float *x, size_t n) {
    ew_run(1, dx, dy, x, n, 4 * n);
}

void nn_fgelu_backward_inplace(float *d, const float *x, size_t n) {
    ew_run(2, d, x, NULL, n, 4 * n);
}

void nn_fgelu_forward_cache(float *y, float *t, const float *x, size_t n) {
    ew_job j = {4, y, x, NULL, n, t};
    nn_par_run(ew_part, &j, 4 * n >= PAR_MIN);
}

void nn_fgelu_backward_cached(float *d, const float *x, const float *t, size_t n) {
    ew_run(5, d, x, t, n, 2 * n);
}

void nn_frelu_backward_inplace(float *d, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = x[i] > 0.0f ? d[i] : 0.0f;
}

void nn_frelu_forward(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void nn_add_inplace(float *y, const float *x, size_t n) { ew_run(3, y, y, x, n, n); }

void nn_add3(float *y, const float *a, const float *b, size_t n) { ew_run(3, y, a, b, n, n); }

/* ---- layer norm ------------------------------------------------------------------------------ */

static float row_sum(const float *x, int C) {
    vf s0 = {0}, s1 = {0};
    int j = 0;
    for (; j + 2 * VL <= C; j += 2 * VL) {
        s0 += vload(x + j);
        s1 += vload(x + j + VL);
    }
    for (; j + VL <= C; j += VL) s0 += vload(x + j);
    float s = vhsum(s0 + s1);
    for (; j < C; j++) s += x[j];
    return s;
}

static void ln_fwd_rows(float *y, float *mean, float *rstd, const float *x, const float *g,
                        const float *b, int i0, int i1, int C) {
    for (int i = i0; i < i1; i++) {
        const float *xr = x + (size_t)i * C;
        float *yr = y + (size_t)i * C;
        float m = row_sum(xr, C) / (float)C;
        vf vm = vset1(m), acc = {0};
        int j = 0;
        for (; j + VL <= C; j += VL) {
            vf d = vload(xr + j) - vm;
            acc += d * d;
        }
        float var = vhsum(acc);
        for (; j < C; j++) var += (xr[j] - m) * (xr[j] - m);
        float rs = 1.0f / sqrtf(var / (float)C + 1e-5f);
        vf vr = vset1(rs);
        for (j = 0; j + VL <= C; j += VL)
            vstore(yr + j, (vload(xr + j) - vm) * vr * vload(g + j) + vload(b + j));
        for (; j < C; j++) yr[j] = (xr[j] - m) * rs * g[j] + b[j];
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = rs;
    }
}

static void ln_bwd_rows(float *dx, float *dg, float *db, const float *dy, const float *x,
                        const float *mean, const float *rstd, const float *g, int i0, int i1,
                        int C) {
    for (int i = i0; i < i1; i++) {
        const float *xr = x + (size_t)i * C, *dyr = dy + (size_t)i * C;
        float *dxr = dx + (size_t)i * C;
        float m = mean[i], rs = rstd[i];
        vf vm = vset1(m), vr = vset1(rs), a1 = {0}, a2 = {0};
        int j = 0;
        for (; j + VL <= C; j += VL) {
            vf xh = (vload(xr + j) - vm) * vr;
            vf d = vload(dyr + j);
            vf dn = d * vload(g + j);
            a1 += dn;
            a2 += dn * xh;
            vstore(dg + j, vload(dg + j) + d * xh);
            vstore(db + j, vload(db + j) + d);
        }
        float s1 = vhsum(a1), s2 = vhsum(a2);
        for (; j < C; j++) {
            float xh = (xr[j] - m) * rs, dn = dyr[j] * g[j];
            s1 += dn;
            s2 += dn * xh;
            dg[j] += dyr[j] * xh;
            db[j] += dyr[j];
        }
        s1 /= (float)C;
        s2 /= (float)C;
        vf v1 = vset1(s1), v2 = vset1(s2);
        for (j = 0; j + VL <= C; j += VL) {
            vf xh = (vload(xr + j) - vm) * vr;
            vf dn = vload(dyr + j) * vload(g + j);
            vstore(dxr + j, vload(dxr + j) + vr * (dn - v1 - xh * v2));
        }
        for (; j < C; j++) {
            float xh = (xr[j] - m) * rs, dn = dyr[j] * g[j];
            dxr[j] += rs * (dn - s1 - xh * s2);
        }
    }
}

typedef struct ln_job {
    float *y, *mean, *rstd, *dg2, *db2; /* dg2, db2: (2,C) partial sums, one row per half */
    const float *x, *g, *b, *dy;
    int N, C;
} ln_job;

static void ln_fwd_part(void *ctx, int part) {
    ln_job *j = ctx;
    size_t i0, i1;
    nn_par_half((size_t)j->N, part, 1, &i0, &i1);
    ln_fwd_rows(j->y, j->mean, j->rstd, j->x, j->g, j->b, (int)i0, (int)i1, j->C);
}

static void ln_bwd_part(void *ctx, int part) {
    ln_job *j = ctx;
    size_t i0, i1;
    nn_par_half((size_t)j->N, part, 1, &i0, &i1);
    ln_bwd_rows(j->y, j->dg2 + (size_t)part * j->C, j->db2 + (size_t)part * j->C, j->dy, j->x,
                j->mean, j->rstd, j->g, (int)i0, (int)i1, j->C);
}

void nn_flayernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                           const float *b, int N, int C) {
    ln_job j = {y, mean, rstd, NULL, NULL, x, g, b, NULL, N, C};
    nn_par_run(ln_fwd_part, &j, (size_t)N * C >= PAR_MIN);
}

/* The parameter gradients of the two halves are summed separately, then added (in the
 * same order whatever the thread count). Widths above 4096 run in one piece. */
void nn_flayernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *g, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (C > 4096) {
        ln_bwd_rows(dx, dg, db, dy, x, mean, rstd, g, 0, N, C);
        return;
    }
    float part[4 * C];
    memset(part, 0, sizeof part);
    ln_job j = {dx, (float *)mean, (float *)rstd, part, part + 2 * C, x, g, NULL, dy, N, C};
    nn_par_run(ln_bwd_part, &j, (size_t)N * C >= PAR_MIN);
    for (int c = 0; c < C; c++) {
        dg[c] += part[c] + part[C + c];
        db[c] += part[2 * C + c] + part[3 * C + c];
    }
}

/* ---- softmax cross-entropy over the vocabulary --------------------------------------------- */

typedef struct xent_job {
    nn_bf16_pair *pack; /* or NULL: the gradient rows go here in bf16, not to dlogits */
    float *dlogits;
    const float *logits;
    const int32_t *targets;
    int N, V, ignore, want_hits;
    float eps, scale;
    double loss[2], cnt[2], hits[2];
} xent_job;

static void xent_part(void *ctx, int part) {
    xent_job *jb = ctx;
    size_t i0, i1;
    /* packed pairs of rows must not be split between threads (halves of the same words) */
    nn_par_half((size_t)jb->N, part, jb->pack ? 32 : 1, &i0, &i1);
    float *dlogits = jb->dlogits;
    static _Thread_local float *scratch; /* 32 gradient rows (in L2) before they are packed */
    static _Thread_local int scratch_v;
    if (jb->pack && scratch_v < jb->V) {
        free(scratch);
        scratch = aligned_alloc(64, (32 * (size_t)jb->V * sizeof *scratch + 63) / 64 * 64);
        NN_ASSERT(scratch); /* 128 bytes per vocabulary entry */
        scratch_v = jb->V;
    }
    const float *logits = jb->logits;
    const int32_t *targets = jb->targets;
    const int V = jb->V, ignore_index = jb->ignore;
    const float eps = jb->eps, grad_scale = jb->scale;
    double loss = 0.0, cnt = 0.0, hits = 0.0;
    for (int i = (int)i0; i < (int)i1; i++) {
        const float *row = logits + (size_t)i * V;
        float *drow = jb->pack ? scratch + (size_t)(i % 32) * V
                      : dlogits ? dlogits + (size_t)i * V : NULL;
        int tgt = targets[i];
        /* packing: after each group of 32 rows, and after the last */
        int flush = jb->pack && (i % 32 == 31 || i + 1 == (int)i1);
        if (tgt == ignore_index) {
            if (drow) memset(drow, 0, (size_t)V * sizeof *drow);
            if (flush) nn_bf16_pair_put_rows(jb->pack, i / 32 * 32, i % 32 + 1, scratch, (size_t)V);
            continue;
        }
        NN_ASSERT(tgt >= 0 && tgt < V);
        /* pass 1: max and sum (the sum feeds label smoothing) */
        vf vm = vset1(-INFINITY), vs = {0};
        int j = 0;
        for (; j + VL <= V; j += VL) {
            vf a = vload(row + j);
            vm = vmax(vm, a);
            vs += a;
        }
        float mx = vhmax(vm), sx = vhsum(vs);
        for (; j < V; j++) {
            mx = row[j] > mx ? row[j] : mx;
            sx += row[j];
        }
        float xt = row[tgt];
        if (jb->want_hits) { /* first index holding the maximum */
            int am = 0;
            while (row[am] != mx) am++;
            hits += am == tgt;
        }
        /* pass 2: exp and its sum; the row is still in cache */
        vf vmx = vset1(mx), ve = {0};
        float se = 0.0f;
        if (drow) {
            for (j = 0; j + VL <= V; j += VL) {
                vf e = vexp(vload(row + j) - vmx);
                ve += e;
                vstore(drow + j, e);
            }
            for (; j < V; j++) {
                float e = sexp(row[j] - mx);
                se += e;
                drow[j] = e;
            }
        } else {
            for (j = 0; j + VL <= V; j += VL) ve += vexp(vload(row + j) - vmx);
            for (; j < V; j++) se += sexp(row[j] - mx);
        }
        se += vhsum(ve);
        float logz = mx + logf(se);
        loss += (double)(1.0f - eps) * (logz - xt) + (double)eps * (logz - sx / (float)V);
        cnt += 1.0;
        /* pass 3: gradient scale * (p - (1-eps) onehot - eps/V) */
        if (drow) {
            float a = grad_scale / se, c = grad_scale * eps / (float)V;
            vf va = vset1(a), vc = vset1(c);
            for (j = 0; j + VL <= V; j += VL) vstore(drow + j, vload(drow + j) * va - vc);
            for (; j < V; j++) drow[j] = drow[j] * a - c;
            drow[tgt] -= grad_scale * (1.0f - eps);
            if (flush) nn_bf16_pair_put_rows(jb->pack, i / 32 * 32, i % 32 + 1, scratch, (size_t)V);
        }
    }
    jb->loss[part] = loss, jb->cnt[part] = cnt, jb->hits[part] = hits;
}

double nn_fxent_forward_backward(float *dlogits, const float *logits, const int32_t *targets,
                                 int N, int V, int ignore_index, float label_smoothing,
                                 float grad_scale, double *count, double *correct) {
    xent_job j = {NULL, dlogits, logits, targets, N, V, ignore_index, correct != NULL,
                  label_smoothing, grad_scale, {0, 0}, {0, 0}, {0, 0}};
    nn_par_run(xent_part, &j, (size_t)N * V >= PAR_MIN);
    if (count) *count += j.cnt[0] + j.cnt[1];
    if (correct) *correct += j.hits[0] + j.hits[1];
    return j.loss[0] + j.loss[1];
}

double nn_fxent_forward_backward_packed(nn_bf16_pair *dlogits, const float *logits,
                                        const int32_t *targets, int N, int V, int ignore_index,
                                        float label_smoothing, float grad_scale, double *count,
                                        double *correct) {
    xent_job j = {dlogits, NULL, logits, targets, N, V, ignore_index, correct != NULL,
                  label_smoothing, grad_scale, {0, 0}, {0, 0}, {0, 0}};
    nn_par_run(xent_part, &j, (size_t)N * V >= PAR_MIN);
    if (count) *count += j.cnt[0] + j.cnt[1];
    if (correct) *correct += j.hits[0] + j.hits[1];
    return j.loss[0] + j.loss[1];
}

/* ---- scaled dot-product attention ---------------------------------------------------------- */

/* Softmax of row[0..lim) in place, zeros in row[lim..S). lim <= 0 gives a zero row. */
static void masked_softmax_row(float *row, int lim, int S) {
    if (lim <= 0) {
        memset(row, 0, (size_t)S * sizeof *row);
        return;
    }
    vf vm = vset1(-INFINITY);
    int j = 0;
    for (; j + VL <= lim; j += VL) vm = vmax(vm, vload(row + j));
    float mx = vhmax(vm);
    for (; j < lim; j++) mx = row[j] > mx ? row[j] : mx;
    vf vmx = vset1(mx), vs = {0};
    float s = 0.0f;
    for (j = 0; j + VL <= lim; j += VL) {
        vf e = vexp(vload(row + j) - vmx);
        vs += e;
        vstore(row + j, e);
    }
    for (; j < lim; j++) {
        row[j] = sexp(row[j] - mx);
        s += row[j];
    }
    s += vhsum(vs);
    float inv = 1.0f / s;
    vf vinv = vset1(inv);
    for (j = 0; j + VL <= lim; j += VL) vstore(row + j, vload(row + j) * vinv);
    for (; j < lim; j++) row[j] *= inv;
    if (lim < S) memset(row + lim, 0, (size_t)(S - lim) * sizeof *row);
}

typedef struct sdpa_job {
    float *out, *att, *dq, *dk, *dv, *scratch;
    const float *q, *k, *v, *dout, *patt;
    const int32_t *key_len;
    int ldo, ldq, ldk, ldv, causal, B, T, S, NH, HS;
} sdpa_job;

/* Causal attention runs in blocks of SDPA_QB query rows: a block only multiplies the keys
 * its last row can see, which skips most of the masked upper triangle. */
#define SDPA_QB 32

/* Keys visible to the query rows [r0, r1): all klim, or with the causal mask up to the
 * last row's own position (queries are the last T of S positions). */
static int block_keys(const sdpa_job *j, int klim, int r1) {
    int kn = klim;
    if (j->causal && r1 + (j->S - j->T) < kn) kn = r1 + (j->S - j->T);
    return kn;
}

static void sdpa_fwd_part(void *ctx, int part) {
    const sdpa_job *j = ctx;
    const int T = j->T, S = j->S, NH = j->NH, HS = j->HS;
    const int ldq = j->ldq, ldk = j->ldk, ldv = j->ldv, ldo = j->ldo;
    const float scale = 1.0f / sqrtf((float)HS);
    const int qb_rows = j->causal ? SDPA_QB : T;
    size_t p0, p1;
    nn_par_half((size_t)j->B * NH, part, 1, &p0, &p1);
    for (size_t p = p0; p < p1; p++) {
        int b = (int)(p / NH), h = (int)(p % NH);
        int klim = j->key_len ? j->key_len[b] : S;
        if (klim > S) klim = S;
        if (klim < 0) klim = 0;
        float *P = j->att + p * T * S;
        const float *qb = j->q + (size_t)b * T * ldq + h * HS;
        const float *kb = j->k + (size_t)b * S * ldk + h * HS;
        const float *vb = j->v + (size_t)b * S * ldv + h * HS;
        float *ob = j->out + (size_t)b * T * ldo + h * HS;
        for (int r0 = 0; r0 < T; r0 += qb_rows) {
            int r1 = r0 + qb_rows < T ? r0 + qb_rows : T, kn = block_keys(j, klim, r1);
            float *Pr = P + (size_t)r0 * S;
            if (kn > 0)
                nn_gemm(0, 1, r1 - r0, kn, HS, scale, qb + (size_t)r0 * ldq, ldq, kb, ldk, 0.0f,
                        Pr, S);
            for (int i = r0; i < r1; i++) {
                int lim = klim;
                if (j->causal && i + (S - T) + 1 < lim) lim = i + (S - T) + 1;
                masked_softmax_row(P + (size_t)i * S, lim, S);
            }
            if (kn > 0) {
                nn_gemm(0, 0, r1 - r0, HS, kn, 1.0f, Pr, S, vb, ldv, 0.0f, ob + (size_t)r0 * ldo,
                        ldo);
            } else {
                for (int i = r0; i < r1; i++)
                    memset(ob + (size_t)i * ldo, 0, (size_t)HS * sizeof *ob);
            }
        }
    }
}

void nn_sdpa_forward(float *out, int ldo, float *att, const float *q, int ldq, const float *k,
                     int ldk, const float *v, int ldv, const int32_t *key_len, int causal, int B,
                     int T, int S, int NH, int HS) {
    sdpa_job j = {out, att, NULL, NULL, NULL, NULL, q, k, v, NULL, NULL, key_len,
                  ldo, ldq, ldk, ldv, causal, B, T, S, NH, HS};
    nn_par_run_blas(sdpa_fwd_part, &j, B * NH >= 2 && (size_t)B * NH * T * S * HS >= 65536);
}

static void sdpa_bwd_part(void *ctx, int part) {
    const sdpa_job *j = ctx;
    const int T = j->T, S = j->S, NH = j->NH, HS = j->HS;
    const int ldq = j->ldq, ldk = j->ldk, ldv = j->ldv, ldo = j->ldo;
    const float scale = 1.0f / sqrtf((float)HS);
    const int qb_rows = j->causal ? SDPA_QB : T;
    float *scratch = j->scratch + (size_t)part * T * S;
    size_t p0, p1;
    nn_par_half((size_t)j->B * NH, part, 1, &p0, &p1);
    for (size_t p = p0; p < p1; p++) {
        int b = (int)(p / NH), h = (int)(p % NH);
        int klim = j->key_len ? j->key_len[b] : S;
        if (klim > S) klim = S;
        if (klim < 0) klim = 0;
        const float *P = j->patt + p * T * S;
        const float *qb = j->q + (size_t)b * T * ldq + h * HS;
        const float *kb = j->k + (size_t)b * S * ldk + h * HS;
        const float *vb = j->v + (size_t)b * S * ldv + h * HS;
        const float *dob = j->dout + (size_t)b * T * ldo + h * HS;
        float *dqb = j->dq + (size_t)b * T * ldq + h * HS;
        float *dkb = j->dk + (size_t)b * S * ldk + h * HS;
        float *dvb = j->dv + (size_t)b * S * ldv + h * HS;
        for (int r0 = 0; r0 < T; r0 += qb_rows) {
            int r1 = r0 + qb_rows < T ? r0 + qb_rows : T, kn = block_keys(j, klim, r1);
            int rb = r1 - r0;
            if (kn <= 0) continue; /* no visible key: no gradient */
            const float *Pr = P + (size_t)r0 * S;
            float *sr = scratch + (size_t)r0 * S;
            /* dP = dO V^T; dS = P * (dP - rowsum(P * dP)), over the kn visible keys */
            nn_gemm(0, 1, rb, kn, HS, 1.0f, dob + (size_t)r0 * ldo, ldo, vb, ldv, 0.0f, sr, S);
            for (int i = 0; i < rb; i++) {
                const float *pr = Pr + (size_t)i * S;
                float *dr = sr + (size_t)i * S;
                vf acc = {0};
                int c = 0;
                for (; c + VL <= kn; c += VL) acc += vload(pr + c) * vload(dr + c);
                float d = vhsum(acc);
                for (; c < kn; c++) d += pr[c] * dr[c];
                vf vd = vset1(d);
                for (c = 0; c + VL <= kn; c += VL)
                    vstore(dr + c, vload(pr + c) * (vload(dr + c) - vd));
                for (; c < kn; c++) dr[c] = pr[c] * (dr[c] - d);
            }
            nn_gemm(0, 0, rb, HS, kn, scale, sr, S, kb, ldk, 1.0f, dqb + (size_t)r0 * ldq, ldq);
            nn_gemm(1, 0, kn, HS, rb, scale, sr, S, qb + (size_t)r0 * ldq, ldq, 1.0f, dkb, ldk);
            nn_gemm(1, 0, kn, HS, rb, 1.0f, Pr, S, dob + (size_t)r0 * ldo, ldo, 1.0f, dvb, ldv);
        }
    }
}

void nn_sdpa_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, int ldo,
                      const float *att, const float *q, int ldq, const float *k, int ldk,
                      const float *v, int ldv, const int32_t *key_len, int causal, int B, int T,
                      int S, int NH, int HS) {
    sdpa_job j = {NULL, NULL, dq, dk, dv, scratch, q, k, v, dout, att, key_len,
                  ldo, ldq, ldk, ldv, causal, B, T, S, NH, HS};
    nn_par_run_blas(sdpa_bwd_part, &j, B * NH >= 2 && (size_t)B * NH * T * S * HS >= 65536);
}

/* ---- transpose-add ------------------------------------------------------------------------ */

typedef struct tadd_job {
    float *dst;
    const float *src;
    int R, K;
} tadd_job;

/* Half of dst's rows, in 32 x 32 tiles so both sides stay in cache. */
static void tadd_part(void *ctx, int part) {
    const tadd_job *j = ctx;
    size_t r0, r1;
    nn_par_half((size_t)j->R, part, 32, &r0, &r1);
    for (size_t rb = r0; rb < r1; rb += 32)
        for (int kb = 0; kb < j->K; kb += 32) {
            size_t re = rb + 32 < r1 ? rb + 32 : r1;
            int ke = kb + 32 < j->K ? kb + 32 : j->K;
            for (size_t r = rb; r < re; r++) {
                float *d = j->dst + r * j->K;
                for (int k = kb; k < ke; k++) d[k] += j->src[(size_t)k * j->R + r];
            }
        }
}

void nn_transpose_add(float *dst, const float *src, int R, int K) {
    tadd_job j = {dst, src, R, K};
    nn_par_run(tadd_part, &j, (size_t)R * K >= PAR_MIN);
}

/* ---- projections and multi-head attention ------------------------------------------------------ */

void nn_proj_forward(float *y, int ldy, const float *x, const float *w, const float *b, int N,
                     int C, int OC) {
    if (b) nn_gemm_bias(0, 1, N, OC, C, x, C, w, C, b, y, ldy);
    else nn_gemm(0, 1, N, OC, C, 1.0f, x, C, w, C, 0.0f, y, ldy);
}

typedef struct colsum_job {
    float *db;
    const float *dy;
    int ldy, N, OC;
} colsum_job;

/* Half of the columns: each column is summed over all rows in row order either way. */
static void colsum_part(void *ctx, int part) {
    const colsum_job *c = ctx;
    size_t j0, j1;
    nn_par_half((size_t)c->OC, part, VL, &j0, &j1);
    for (int i = 0; i < c->N; i++) {
        const float *r = c->dy + (size_t)i * c->ldy;
        float *db = c->db;
        size_t j = j0;
        for (; j + VL <= j1; j += VL) vstore(db + j, vload(db + j) + vload(r + j));
        for (; j < j1; j++) db[j] += r[j];
    }
}

static void colsum_add(float *db, const float *dy, int ldy, int N, int OC) {
    colsum_job c = {db, dy, ldy, N, OC};
    nn_par_run(colsum_part, &c, (size_t)N * OC >= PAR_MIN);
}

void nn_proj_backward(float *dx, float *dw, float *db, const float *dy, int ldy, const float *x,
                      const float *w, int N, int C, int OC) {
    if (dx) nn_gemm(0, 0, N, C, OC, 1.0f, dy, ldy, w, C, 1.0f, dx, C);
    nn_gemm(1, 0, OC, C, N, 1.0f, dy, ldy, x, C, 1.0f, dw, C);
    if (db) colsum_add(db, dy, ldy, N, OC);
}

void nn_proj_backward_to(float *dx, float *dw, float *db, const float *dy, int ldy,
                         const float *x, const float *w, int N, int C, int OC) {
    nn_gemm(0, 0, N, C, OC, 1.0f, dy, ldy, w, C, 0.0f, dx, C);
    nn_proj_backward(NULL, dw, db, dy, ldy, x, w, N, C, OC);
}

int nn_mha_register(nn_mha *a, nn_params *ps, const char *prefix, int C, int NH, float std,
                    float out_std) {
    static const char *wn[4] = {"w_q", "w_k", "w_v", "w_o"};
    static const char *bn[4] = {"b_q", "b_k", "b_v", "b_o"};
    float **wd[4] = {&a->w_q, &a->w_k, &a->w_v, &a->w_o};
    float **wg[4] = {&a->dw_q, &a->dw_k, &a->dw_v, &a->dw_o};
    float **bd[4] = {&a->b_q, &a->b_k, &a->b_v, &a->b_o};
    float **bg[4] = {&a->db_q, &a->db_k, &a->db_v, &a->db_o};
    int wshape[2] = {C, C}, bshape[1] = {C};
    char name[NN_NAME_MAX];
    a->C = C;
    a->NH = NH;
    /* q, k, v weights first and adjacent, then their biases, so one GEMM can cover them */
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s/%s", prefix, wn[i]);
        if (nn_params_add(ps, name, 2, wshape, NN_INIT_NORMAL, std, wd[i], wg[i]) < 0)
            return NN_ERR_NOMEM;
    }
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s/%s", prefix, bn[i]);
        if (nn_params_add(ps, name, 1, bshape, NN_INIT_ZERO, 0.0f, bd[i], bg[i]) < 0)
            return NN_ERR_NOMEM;
    }
    snprintf(name, sizeof name, "%s/%s", prefix, wn[3]);
    if (nn_params_add(ps, name, 2, wshape, NN_INIT_NORMAL, out_std, wd[3], wg[3]) < 0)
        return NN_ERR_NOMEM;
    snprintf(name, sizeof name, "%s/%s", prefix, bn[3]);
    if (nn_params_add(ps, name, 1, bshape, NN_INIT_ZERO, 0.0f, bd[3], bg[3]) < 0)
        return NN_ERR_NOMEM;
    return NN_OK;
}

static int mha_fused(const nn_mha *a) {
    size_t cc = (size_t)a->C * a->C;
    return a->w_k == a->w_q + cc && a->w_v == a->w_k + cc && a->dw_k == a->dw_q + cc &&
           a->dw_v == a->dw_k + cc && a->b_k == a->b_q + a->C && a->b_v == a->b_k + a->C &&
           a->db_k == a->db_q + a->C && a->db_v == a->db_k + a->C;
}

void nn_mha_qkv_forward(const nn_mha *a, float *qkv, const float *x, int N) {
    int C = a->C;
    if (mha_fused(a)) {
        nn_proj_forward(qkv, 3 * C, x, a->w_q, a->b_q, N, C, 3 * C);
        return;
    }
    nn_proj_forward(qkv, 3 * C, x, a->w_q, a->b_q, N, C, C);
    nn_proj_forward(qkv + C, 3 * C, x, a->w_k, a->b_k, N, C, C);
    nn_proj_forward(qkv + 2 * C, 3 * C, x, a->w_v, a->b_v, N, C, C);
}

void nn_mha_qkv_backward(const nn_mha *a, float *dx, const float *dqkv, const float *x, int N) {
    int C = a->C;
    if (mha_fused(a)) {
        nn_proj_backward(dx, a->dw_q, a->db_q, dqkv, 3 * C, x, a->w_q, N, C, 3 * C);
        return;
    }
    nn_proj_backward(dx, a->dw_q, a->db_q, dqkv, 3 * C, x, a->w_q, N, C, C);
    nn_proj_backward(dx, a->dw_k, a->db_k, dqkv + C, 3 * C, x, a->w_k, N, C, C);
    nn_proj_backward(dx, a->dw_v, a->db_v, dqkv + 2 * C, 3 * C, x, a->w_v, N, C, C);
}

/* ---- positional encodings and embeddings --------------------------------------------------- */

void nn_sinusoid_table(float *table, int T, int C) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++) {
            double freq = pow(10000.0, -(double)(i - (i & 1)) / (double)C);
            double a = (double)t * freq;
            table[(size_t)t * C + i] = (float)((i & 1) ? cos(a) : sin(a));
        }
}

void nn_embed_pos_forward(float *x, const int32_t *ids, const float *wte, const float *pos,
                          int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *xr = x + ((size_t)b * T + t) * C;
            int id = ids[(size_t)b * T + t];
            if (id == NN_PAD) {
                if (pos) memcpy(xr, pos + (size_t)t * C, (size_t)C * sizeof *xr);
                else memset(xr, 0, (size_t)C * sizeof *xr);
            } else if (pos) {
                nn_add3(xr, wte + (size_t)id * C, pos + (size_t)t * C, (size_t)C);
            } else {
                memcpy(xr, wte + (size_t)id * C, (size_t)C * sizeof *xr);
            }
        }
}

void nn_embed_pos_backward(float *dwte, float *dpos, const float *dx, const int32_t *ids, int B,
                           int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *dr = dx + ((size_t)b * T + t) * C;
            int id = ids[(size_t)b * T + t];
            if (id != NN_PAD) nn_add_inplace(dwte + (size_t)id * C, dr, (size_t)C);
            if (dpos) nn_add_inplace(dpos + (size_t)t * C, dr, (size_t)C);
        }
}
