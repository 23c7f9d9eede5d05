/* optim.c - optimizers (SGD, momentum, Adam, AdamW), learning-rate schedules and global
 * gradient-norm clipping, as single loops over the flat parameter buffer, or over the
 * listed rows of row-sparse parameters (trainer_optim_step_sparse: exact for SGD, "lazy"
 * for the others: the state of rows without gradient is not decayed, as TF's LazyAdam).
 *
 * Every rank runs the same update on the same averaged gradients, so replicas stay
 * identical without communication. State (m, v) mirrors the parameter layout and is
 * checkpointed as /optim/m and /optim/v. Nothing here allocates after init. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/trainer.h"

int trainer_optim_init(trainer_optim *o, const nn_config *cfg, size_t n, int64_t total_steps) {
    return trainer_optim_init_slice(o, cfg, n, 0, n, total_steps);
}

int trainer_optim_init_slice(trainer_optim *o, const nn_config *cfg, size_t n, size_t lo,
                             size_t hi, int64_t total_steps) {
    memset(o, 0, sizeof *o);
    NN_ASSERT(lo <= hi && hi <= n);
    const char *kind, *sched;
    double lr, b1, b2, eps, mom, wd, min_lr;
    long warmup;
    int rc;
    if ((rc = nn_config_choice(cfg, "optimizer", "adam", "sgd|momentum|adam|adamw", &kind)) < 0 ||
        (rc = nn_config_choice(cfg, "schedule", "constant", "constant|cosine|linear|invsqrt",
                               &sched)) < 0 ||
        (rc = nn_config_float(cfg, "lr", 1e-3, &lr)) < 0 ||
        (rc = nn_config_float(cfg, "beta1", 0.9, &b1)) < 0 ||
        (rc = nn_config_float(cfg, "beta2", 0.999, &b2)) < 0 ||
        (rc = nn_config_float(cfg, "eps", 1e-8, &eps)) < 0 ||
        (rc = nn_config_float(cfg, "momentum", 0.9, &mom)) < 0 ||
        (rc = nn_config_float(cfg, "weight-decay", 0.01, &wd)) < 0 ||
        (rc = nn_config_float(cfg, "min-lr", 0.0, &min_lr)) < 0 ||
        (rc = nn_config_int(cfg, "warmup", 0, &warmup)) < 0)
        return rc;
    if (!(lr > 0) || !isfinite(lr)) {
        nn_set_error("--lr must be a positive number, got %g", lr);
        return NN_ERR_CONFIG;
    }
    if (b1 < 0 || b1 >= 1 || b2 < 0 || b2 >= 1 || eps <= 0 || mom < 0 || mom >= 1 || wd < 0 ||
        warmup < 0 || min_lr < 0) {
        nn_set_error("optimizer settings out of range (need 0 <= beta1, beta2, momentum < 1, "
                     "eps > 0, weight-decay >= 0, warmup >= 0, min-lr >= 0)");
        return NN_ERR_CONFIG;
    }
    o->kind = strcmp(kind, "sgd") == 0        ? OPT_SGD
              : strcmp(kind, "momentum") == 0 ? OPT_MOMENTUM
              : strcmp(kind, "adam") == 0     ? OPT_ADAM
                                              : OPT_ADAMW;
    o->sched = strcmp(sched, "constant") == 0 ? SCHED_CONSTANT
               : strcmp(sched, "cosine") == 0 ? SCHED_COSINE
               : strcmp(sched, "linear") == 0 ? SCHED_LINEAR
                                              : SCHED_INVSQRT;
    o->lr = lr;
    o->beta1 = b1;
    o->beta2 = b2;
    o->eps = eps;
    o->momentum = mom;
    o->weight_decay = o->kind == OPT_ADAMW ? wd : 0.0;
    o->warmup = warmup;
    o->total_steps = total_steps;
    o->min_lr = min_lr;
    o->n = n;
    o->lo = lo;
    o->hi = hi;
    size_t k = hi - lo;
    int slots = o->kind == OPT_SGD ? 0 : o->kind == OPT_MOMENTUM ? 1 : 2;
    /* state is streamed through every step like the parameters: huge-page backed */
    if (slots >= 1 && !(o->m = nn_alloc_big((k ? k : 1) * sizeof *o->m))) goto nomem;
    if (slots >= 2 && !(o->v = nn_alloc_big((k ? k : 1) * sizeof *o->v))) goto nomem;
    if (o->m) memset(o->m, 0, (k ? k : 1) * sizeof *o->m);
    if (o->v) memset(o->v, 0, (k ? k : 1) * sizeof *o->v);
    return NN_OK;
nomem:
    trainer_optim_free(o);
    nn_set_error("out of memory for optimizer state (%zu floats)", n);
    return NN_ERR_NOMEM;
}

void trainer_optim_free(trainer_optim *o) {
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

double trainer_lr(const trainer_optim *o, int64_t step) {
    double s = (double)step;
    if (o->warmup > 0 && step < o->warmup) return o->lr * (s + 1) / (double)o->warmup;
    double after = s - (double)o->warmup;
    double span = (double)(o->total_steps - o->warmup);
    double frac = span > 0 ? after / span : 1.0;
    if (frac > 1) frac = 1;
    switch (o->sched) {
    case SCHED_COSINE:
        return o->min_lr + (o->lr - o->min_lr) * 0.5 * (1.0 + cos(M_PI * frac));
    case SCHED_LINEAR:
        return o->min_lr + (o->lr - o->min_lr) * (1.0 - frac);
    case SCHED_INVSQRT: {
        /* lr * sqrt(w) / sqrt(step + 1) after warm-up: continuous at the end of warm-up */
        double w = o->warmup > 0 ? (double)o->warmup : 1.0;
        return o->lr * sqrt(w) / sqrt(s + 1 > w ? s + 1 : w);
    }
    default:
        return o->lr;
    }
}

/* What one update needs besides the buffers, computed once per step. */
typedef struct upd_ {
    int kind;
    float lr, b1, b2, eps, step_size, sqrt_bc2, mom;
} upd_;

static upd_ upd_make_(const trainer_optim *o, int64_t step, double lr) {
    upd_ k;
    k.kind = o->kind;
    k.lr = (float)lr;
    k.b1 = (float)o->beta1;
    k.b2 = (float)o->beta2;
    k.eps = (float)o->eps;
    /* Adam with the bias corrections folded into the step size and epsilon, as in
     * Kingma & Ba, Algorithm 1's efficient form. */
    k.step_size = k.lr / (float)(1.0 - pow(o->beta1, (double)(step + 1)));
    k.sqrt_bc2 = sqrtf((float)(1.0 - pow(o->beta2, (double)(step + 1))));
    k.mom = (float)o->momentum;
    return k;
}

/* Updates n consecutive floats: weights w, gradients g, state m and v (NULL when the
 * optimizer has none). decay: lr * weight_decay for AdamW matrices, else 0. */
static inline void upd_range_(const upd_ *k, float *restrict w, const float *restrict g,
                              float *restrict m, float *restrict v, size_t n, float decay) {
    const float flr = k->lr;
    switch (k->kind) {
    case OPT_SGD:
        for (size_t i = 0; i < n; i++) w[i] -= flr * g[i];
        break;
    case OPT_MOMENTUM:
        for (size_t i = 0; i < n; i++) {
            m[i] = k->mom * m[i] + g[i];
            w[i] -= flr * m[i];
        }
        break;
    case OPT_ADAM:
    case OPT_ADAMW:
        for (size_t i = 0; i < n; i++) {
            m[i] = k->b1 * m[i] + (1.0f - k->b1) * g[i];
            v[i] = k->b2 * v[i] + (1.0f - k->b2) * g[i] * g[i];
            float denom = sqrtf(v[i]) / k->sqrt_bc2 + k->eps;
            w[i] -= k->step_size * m[i] / denom + decay * w[i];
        }
        break;
    }
}

typedef struct optim_job_ {
    const trainer_optim *o;
    nn_params *ps;
    upd_ k;
    double lr;
} optim_job_;

/* Half of the slice this optimizer owns, tensor by tensor (the update is elementwise, so
 * the cut changes nothing). */
static void optim_part_(void *ctx, int part) {
    const optim_job_ *j = ctx;
    const trainer_optim *o = j->o;
    nn_params *ps = j->ps;
    size_t c0, c1;
    nn_par_half(o->hi - o->lo, part, 16, &c0, &c1);
    const size_t lo = o->lo + c0, hi = o->lo + c1;
    for (int t = 0; t < ps->n; t++) {
        const nn_param *p = &ps->p[t];
        if (p->frozen) continue;
        /* the part of this tensor inside [lo, hi) */
        size_t a = p->offset > lo ? p->offset : lo;
        size_t b = p->offset + p->size < hi ? p->offset + p->size : hi;
        if (a >= b) continue;
        const float decay = p->decay ? (float)(j->lr * o->weight_decay) : 0.0f;
        upd_range_(&j->k, ps->data + a, ps->grad + a, o->m ? o->m + (a - o->lo) : NULL,
                   o->v ? o->v + (a - o->lo) : NULL, b - a, decay);
    }
}

void trainer_optim_step(trainer_optim *o, nn_params *ps, int64_t step, double lr) {
    optim_job_ j = {o, ps, upd_make_(o, step, lr), lr};
    nn_par_run(optim_part_, &j, o->hi - o->lo >= 65536);
}

void trainer_optim_step_sparse(trainer_optim *o, nn_params *ps, int64_t step, double lr,
                               const int32_t *const *rows, const int *n_rows) {
    NN_ASSERT(o->lo == 0 && o->hi == o->n);
    const upd_ k = upd_make_(o, step, lr);
    for (int t = 0; t < ps->n; t++) {
        const nn_param *p = &ps->p[t];
        if (p->frozen) continue;
        const float decay = p->decay ? (float)(lr * o->weight_decay) : 0.0f;
        float *m = o->m ? o->m + p->offset : NULL, *v = o->v ? o->v + p->offset : NULL;
        if (n_rows[t] < 0) {
            upd_range_(&k, ps->data + p->offset, ps->grad + p->offset, m, v, p->size, decay);
            continue;
        }
        NN_ASSERT(p->ndim == 2);
        const size_t C = (size_t)p->shape[1];
        for (int i = 0; i < n_rows[t]; i++) {
            size_t at = (size_t)rows[t][i] * C;
            upd_range_(&k, ps->data + p->offset + at, ps->grad + p->offset + at,
                       m ? m + at : NULL, v ? v + at : NULL, C, decay);
        }
    }
}

int trainer_optim_slots(const trainer_optim *o, const char **names, float **bufs) {
    int k = 0;
    if (o->m) {
        names[k] = "m";
        bufs[k++] = o->m;
    }
    if (o->v) {
        names[k] = "v";
        bufs[k++] = o->v;
    }
    return k;
}

typedef struct sumsq_job_ {
    const float *g;
    size_t lo, hi;
    double sum[2];
} sumsq_job_;

/* Each half of [lo, hi) in eight partial sums (element lo + i goes to lane i mod 8),
 * added pairwise: eight independent chains the compiler vectorises (one chain of double
 * adds ran at ~1 ns per element, latency-bound). The halves are the same whatever the
 * thread count, and are added in order. */
static void sumsq_part_(void *ctx, int part) {
    sumsq_job_ *j = ctx;
    size_t c0, c1;
    nn_par_half(j->hi - j->lo, part, 64, &c0, &c1);
    const float *g = j->g;
    double acc[8] = {0};
    size_t i = j->lo + c0, end = j->lo + c1;
    for (; i + 8 <= end; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += (double)g[i + k] * g[i + k];
    for (int k = 0; i < end; i++, k++) acc[k] += (double)g[i] * g[i];
    j->sum[part] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

double trainer_grad_sumsq(const nn_params *ps, size_t lo, size_t hi) {
    sumsq_job_ j = {ps->grad, lo, hi, {0, 0}};
    nn_par_run(sumsq_part_, &j, hi - lo >= 65536);
    return j.sum[0] + j.sum[1];
}

double trainer_grad_norm(const nn_params *ps) { return sqrt(trainer_grad_sumsq(ps, 0, ps->total)); }

void trainer_scale_grads(nn_params *ps, size_t lo, size_t hi, double norm, double max_norm) {
    if (max_norm > 0 && norm > max_norm) {
        float s = (float)(max_norm / (norm + 1e-6));
        for (size_t i = lo; i < hi; i++) ps->grad[i] *= s;
    }
}

double trainer_clip_grads(nn_params *ps, double max_norm) {
    double norm = trainer_grad_norm(ps);
    trainer_scale_grads(ps, 0, ps->total, norm, max_norm);
    return norm;
}
