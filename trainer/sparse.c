/* sparse.c - row-sparse training steps and local SGD for models whose gradients touch few
 * rows of big matrices (skip-gram: two (V, dim) tables, a few hundred rows per step).
 *
 * A model that implements nn_model_ops.touched_rows tells, after its backward, which rows
 * of each 2-D parameter have gradient. Then a step zeroes, NaN-checks, clips and updates
 * only those rows (plus, densely, every parameter the model calls dense), instead of
 * several passes over all parameters. Invariant between steps: every gradient row is
 * zero, so the rows listed are the only ones a step has to clear again.
 *
 * Several ranks, two ways (--sync-every K):
 *   K = 1  every step the ranks sum the gradients of the UNION of their touched rows
 *          (the ranks' row ids are gathered, then the packed rows summed in one
 *          allreduce); every rank then applies the same summed gradient, as the dense
 *          path does, and the result equals a 1-rank run up to float rounding.
 *   K > 1  local SGD: each rank applies its own share of every global step at once, and
 *          every K steps (and before every evaluation and checkpoint) the ranks add up
 *          their parameter changes since the previous sync: p := base + sum_r (p_r - base)
 *          over the union of the rows any rank changed (flags, then packed rows), then
 *          base := p. Summing (not averaging) keeps every update at full size, so K steps
 *          of P ranks move the parameters as K global steps would (Hogwild-like: each
 *          rank's gradients see the others' updates only at syncs). The union of the
 *          rows changed is found with a per-row flag vector summed over ranks; summing
 *          the whole delta instead was slower (3.5 s vs 1.8-2.6 s of syncs per epoch of
 *          the prose corpus, 2 ranks) for the same result.
 *
 * Not here: the choice of path (train.c reads --sparse-updates and --sync-every), MPI
 * (comm/), the optimizer's arithmetic (optim.c). Allocates at init only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/trainer.h"

void trainer_sparse_free(trainer_sparse *s) {
    if (s->rows_own)
        for (int t = 0; t < s->n; t++) free(s->rows_own[t]);
    if (s->dirty_rows)
        for (int t = 0; t < s->n; t++) free(s->dirty_rows[t]);
    free(s->rows_own);
    free(s->dirty_rows);
    free(s->kind);
    free(s->rows);
    free(s->n_rows);
    free(s->loc_rows);
    free(s->loc_n);
    free(s->n_dirty);
    free(s->flag_off);
    free(s->dirty);
    free(s->flags);
    free(s->seen);
    free(s->pack);
    free(s->base);
    memset(s, 0, sizeof *s);
}

/* Rows (R) of parameter t when it is row-sparse, else 0. */
static int sparse_rows_(const trainer_sparse *s, const nn_params *ps, int t) {
    return s->kind[t] ? ps->p[t].shape[0] : 0;
}

int trainer_sparse_init(trainer_sparse *s, nn_model *m, int ranks, int sync_every) {
    memset(s, 0, sizeof *s);
    const nn_params *ps = &m->params;
    if (!m->ops->touched_rows || !m->ops->touched_clear || ps->n == 0) return 0;
    m->ops->touched_clear(m);
    int any = 0;
    for (int t = 0; t < ps->n; t++) {
        const int32_t *rows;
        any |= ps->p[t].ndim == 2 && m->ops->touched_rows(m, t, &rows) >= 0;
    }
    if (!any) return 0;
    s->n = ps->n;
    if (!(s->kind = calloc((size_t)s->n, sizeof *s->kind))) goto nomem;
    for (int t = 0; t < ps->n; t++) {
        const int32_t *rows;
        s->kind[t] = ps->p[t].ndim == 2 && m->ops->touched_rows(m, t, &rows) >= 0;
    }
    s->ranks = ranks;
    s->sync_every = sync_every < 1 ? 1 : sync_every;
    s->rows = calloc((size_t)s->n, sizeof *s->rows);
    s->n_rows = calloc((size_t)s->n, sizeof *s->n_rows);
    s->loc_rows = calloc((size_t)s->n, sizeof *s->loc_rows);
    s->loc_n = calloc((size_t)s->n, sizeof *s->loc_n);
    s->rows_own = calloc((size_t)s->n, sizeof *s->rows_own);
    s->dirty_rows = calloc((size_t)s->n, sizeof *s->dirty_rows);
    s->n_dirty = calloc((size_t)s->n, sizeof *s->n_dirty);
    s->flag_off = calloc((size_t)s->n + 1, sizeof *s->flag_off);
    if (!s->rows || !s->n_rows || !s->loc_rows || !s->loc_n || !s->rows_own || !s->dirty_rows ||
        !s->n_dirty || !s->flag_off)
        goto nomem;
    size_t nflags = 0;
    for (int t = 0; t < s->n; t++) {
        s->flag_off[t] = nflags;
        nflags += (size_t)sparse_rows_(s, ps, t);
    }
    s->flag_off[s->n] = nflags;
    s->n_flags = nflags;
    if (ranks > 1) {
        /* the union lists, the flag vector and the exchange buffer (worst case: every
         * row of every parameter) */
        for (int t = 0; t < s->n; t++) {
            int R = sparse_rows_(s, ps, t);
            if (R && !(s->rows_own[t] = malloc((size_t)R * sizeof *s->rows_own[t]))) goto nomem;
        }
        if (!(s->flags = malloc((nflags ? nflags : 1) * sizeof *s->flags)) ||
            !(s->seen = calloc(nflags ? nflags : 1, 1)) ||
            !(s->pack = malloc((ps->total ? ps->total : 1) * sizeof *s->pack)))
            goto nomem;
        if (s->sync_every > 1) {
            if (!(s->dirty = calloc(nflags ? nflags : 1, 1)) ||
                !(s->base = malloc((ps->total ? ps->total : 1) * sizeof *s->base)))
                goto nomem;
            for (int t = 0; t < s->n; t++) {
                int R = sparse_rows_(s, ps, t);
                if (R && !(s->dirty_rows[t] = malloc((size_t)R * sizeof *s->dirty_rows[t])))
                    goto nomem;
            }
            memcpy(s->base, ps->data, ps->total * sizeof *s->base);
        }
    }
    nn_params_zero_grad(&m->params); /* the invariant: all gradient rows zero */
    s->on = 1;
    return 1;
nomem:
    trainer_sparse_free(s);
    nn_set_error("out of memory for sparse updates");
    return NN_ERR_NOMEM;
}

void trainer_sparse_rebase(trainer_sparse *s, const nn_params *ps) {
    if (s->base) memcpy(s->base, ps->data, ps->total * sizeof *s->base);
    if (s->dirty) memset(s->dirty, 0, s->n_flags);
    for (int t = 0; t < s->n; t++) s->n_dirty[t] = 0;
    s->since_sync = 0;
}

void trainer_sparse_begin(const trainer_sparse *s, nn_params *ps) {
    for (int t = 0; t < s->n; t++)
        if (!s->kind[t]) memset(ps->grad + ps->p[t].offset, 0, ps->p[t].size * sizeof(float));
}

/* Parameter whose rows hold flag index id. */
static int param_of_flag_(const trainer_sparse *s, size_t id) {
    int t = 0;
    while (!(s->kind[t] && id >= s->flag_off[t] && id < s->flag_off[t + 1])) t++;
    return t;
}

/* The union over ranks of the row sets rows[t][0..n[t]) of every sparse parameter into
 * rows/n_rows (the same lists, in the same order, on every rank). Few rows (a step):
 * every rank's row ids are gathered (slots of P x the largest count, exact as floats
 * below 2^24); many (a sync): a per-row flag vector is summed. Returns the floats the
 * union rows and the dense parameters hold (what pack_ packs). Collective. */
static size_t union_rows_(trainer_sparse *s, const comm *c, const nn_params *ps,
                          const int32_t *const *rows, const int *n) {
    const size_t P = (size_t)s->ranks;
    size_t mine = 0;
    for (int t = 0; t < s->n; t++)
        if (s->kind[t]) {
            mine += (size_t)n[t];
            s->n_rows[t] = 0;
            s->rows[t] = s->rows_own[t];
        }
    double most = (double)mine;
    comm_allreduce_max_f64(c, &most, 1);
    const size_t cap = (size_t)most;
    if (P * cap <= s->n_flags / 2 && s->n_flags < (1u << 24)) {
        float *ids = s->flags + (size_t)c->rank * cap;
        size_t k = 0;
        for (int t = 0; t < s->n; t++)
            if (s->kind[t])
                for (int i = 0; i < n[t]; i++)
                    ids[k++] = (float)(s->flag_off[t] + (size_t)rows[t][i]);
        for (; k < cap; k++) ids[k] = -1.0f;
        comm_allgather_f32(c, s->flags, P * cap);
        for (size_t j = 0; j < P * cap; j++) {
            if (s->flags[j] < 0) continue;
            size_t id = (size_t)s->flags[j];
            if (s->seen[id]) continue;
            s->seen[id] = 1;
            int t = param_of_flag_(s, id);
            s->rows_own[t][s->n_rows[t]++] = (int32_t)(id - s->flag_off[t]);
        }
        for (int t = 0; t < s->n; t++)
            if (s->kind[t])
                for (int i = 0; i < s->n_rows[t]; i++)
                    s->seen[s->flag_off[t] + (size_t)s->rows_own[t][i]] = 0;
    } else {
        memset(s->flags, 0, s->n_flags * sizeof *s->flags);
        for (int t = 0; t < s->n; t++) {
            if (!s->kind[t]) continue;
            float *f = s->flags + s->flag_off[t];
            for (int i = 0; i < n[t]; i++) f[rows[t][i]] = 1.0f;
        }
        comm_allreduce_sum_f32(c, s->flags, s->n_flags);
        for (int t = 0; t < s->n; t++) {
            if (!s->kind[t]) continue;
            const float *f = s->flags + s->flag_off[t];
            int R = sparse_rows_(s, ps, t), k = 0;
            for (int v = 0; v < R; v++)
                if (f[v] != 0.0f) s->rows_own[t][k++] = v;
            s->n_rows[t] = k;
        }
    }
    size_t floats = 0;
    for (int t = 0; t < s->n; t++)
        floats += s->kind[t] ? (size_t)s->n_rows[t] * (size_t)ps->p[t].shape[1] : ps->p[t].size;
    return floats;
}

/* buf := the union rows (and dense parameters) of src, in order; or back. */
static void pack_(const trainer_sparse *s, const nn_params *ps, const float *src, float *buf) {
    size_t o = 0;
    for (int t = 0; t < s->n; t++) {
        const nn_param *p = &ps->p[t];
        if (!s->kind[t]) {
            memcpy(buf + o, src + p->offset, p->size * sizeof *buf);
            o += p->size;
            continue;
        }
        const size_t C = (size_t)p->shape[1];
        for (int i = 0; i < s->n_rows[t]; i++, o += C)
            memcpy(buf + o, src + p->offset + (size_t)s->rows[t][i] * C, C * sizeof *buf);
    }
}

static void unpack_(const trainer_sparse *s, const nn_params *ps, const float *buf, float *dst) {
    size_t o = 0;
    for (int t = 0; t < s->n; t++) {
        const nn_param *p = &ps->p[t];
        if (!s->kind[t]) {
            memcpy(dst + p->offset, buf + o, p->size * sizeof *buf);
            o += p->size;
            continue;
        }
        const size_t C = (size_t)p->shape[1];
        for (int i = 0; i < s->n_rows[t]; i++, o += C)
            memcpy(dst + p->offset + (size_t)s->rows[t][i] * C, buf + o, C * sizeof *buf);
    }
}

void trainer_sparse_gather(trainer_sparse *s, nn_model *m, const comm *c) {
    nn_params *ps = &m->params;
    for (int t = 0; t < s->n; t++) {
        const int32_t *rows = NULL;
        int k = s->kind[t] ? m->ops->touched_rows(m, t, &rows) : -1;
        NN_ASSERT(k >= 0 || !s->kind[t]);
        s->rows[t] = s->loc_rows[t] = rows;
        s->n_rows[t] = s->loc_n[t] = k;
    }
    if (s->ranks > 1 && s->sync_every == 1) {
        /* sum the gradients of the union of the touched rows (dense parameters whole) */
        size_t floats = union_rows_(s, c, ps, s->loc_rows, s->loc_n);
        pack_(s, ps, ps->grad, s->pack);
        comm_allreduce_sum_f32(c, s->pack, floats);
        unpack_(s, ps, s->pack, ps->grad);
    } else if (s->dirty) {
        /* local SGD: remember what this rank will change before the next sync */
        for (int t = 0; t < s->n; t++) {
            if (!s->kind[t]) continue;
            uint8_t *d = s->dirty + s->flag_off[t];
            for (int i = 0; i < s->n_rows[t]; i++) {
                int32_t v = s->rows[t][i];
                if (!d[v]) {
                    d[v] = 1;
                    s->dirty_rows[t][s->n_dirty[t]++] = v;
                }
            }
        }
    }
}

/* Runs BODY with g (float *) and len set to every listed range of the gradient buffer:
 * whole dense parameters and the listed rows of sparse ones. */
#define SPARSE_FOR_RANGES_(s, ps, BODY)                                                   \
    for (int t_ = 0; t_ < (s)->n; t_++) {                                                 \
        const nn_param *p_ = &(ps)->p[t_];                                                \
        if ((s)->n_rows[t_] < 0) {                                                        \
            float *g = (ps)->grad + p_->offset;                                           \
            size_t len = p_->size;                                                        \
            BODY;                                                                         \
            continue;                                                                     \
        }                                                                                 \
        const size_t C_ = (size_t)p_->shape[1];                                           \
        for (int i_ = 0; i_ < (s)->n_rows[t_]; i_++) {                                    \
            float *g = (ps)->grad + p_->offset + (size_t)(s)->rows[t_][i_] * C_;          \
            size_t len = C_;                                                              \
            BODY;                                                                         \
        }                                                                                 \
    }

double trainer_sparse_sumsq(const trainer_sparse *s, const nn_params *ps) {
    double ss = 0;
    SPARSE_FOR_RANGES_(s, ps, {
        float acc = 0; /* a row in float, rows summed in double */
        for (size_t j = 0; j < len; j++) acc += g[j] * g[j];
        ss += acc;
    });
    return ss;
}

int trainer_sparse_nonfinite(const trainer_sparse *s, const nn_params *ps) {
    for (int t = 0; t < s->n; t++) {
        const nn_param *p = &ps->p[t];
        if (s->n_rows[t] < 0) {
            for (size_t j = 0; j < p->size; j++)
                if (!isfinite(ps->grad[p->offset + j])) return t;
            continue;
        }
        const size_t C = (size_t)p->shape[1];
        for (int i = 0; i < s->n_rows[t]; i++)
            for (size_t j = 0; j < C; j++)
                if (!isfinite(ps->grad[p->offset + (size_t)s->rows[t][i] * C + j])) return t;
    }
    return -1;
}

void trainer_sparse_scale(const trainer_sparse *s, nn_params *ps, double norm, double max_norm) {
    if (!(max_norm > 0 && norm > max_norm)) return;
    const float f = (float)(max_norm / (norm + 1e-6));
    SPARSE_FOR_RANGES_(s, ps, {
        for (size_t j = 0; j < len; j++) g[j] *= f;
    });
}

void trainer_sparse_update(const trainer_sparse *s, trainer_optim *o, nn_params *ps,
                           int64_t step, double lr) {
    trainer_optim_step_sparse(o, ps, step, lr, s->rows, s->n_rows);
}

void trainer_sparse_end(trainer_sparse *s, nn_model *m) {
    nn_params *ps = &m->params;
    SPARSE_FOR_RANGES_(s, ps, { memset(g, 0, len * sizeof *g); });
    m->ops->touched_clear(m);
    for (int t = 0; t < s->n; t++) s->n_rows[t] = s->kind[t] ? 0 : -1;
    s->since_sync++;
}

void trainer_sparse_sync(trainer_sparse *s, const comm *c, nn_params *ps) {
    if (!s->base || s->since_sync == 0) return;
    double t0 = trainer_now();
    size_t floats = union_rows_(s, c, ps, (const int32_t *const *)s->dirty_rows, s->n_dirty);
    /* delta := p - base on the union rows; sum over ranks; p := base + sum =: base */
    pack_(s, ps, ps->data, s->pack);
    size_t o = 0;
    for (int t = 0; t < s->n; t++) {
        const nn_param *p = &ps->p[t];
        if (!s->kind[t]) {
            for (size_t j = 0; j < p->size; j++) s->pack[o + j] -= s->base[p->offset + j];
            o += p->size;
            continue;
        }
        const size_t C = (size_t)p->shape[1];
        for (int i = 0; i < s->n_rows[t]; i++, o += C) {
            const float *b = s->base + p->offset + (size_t)s->rows[t][i] * C;
            for (size_t j = 0; j < C; j++) s->pack[o + j] -= b[j];
        }
    }
    comm_allreduce_sum_f32(c, s->pack, floats);
    o = 0;
    for (int t = 0; t < s->n; t++) {
        const nn_param *p = &ps->p[t];
        if (!s->kind[t]) {
            float *w = ps->data + p->offset, *b = s->base + p->offset;
            for (size_t j = 0; j < p->size; j++) b[j] = w[j] = b[j] + s->pack[o + j];
            o += p->size;
            continue;
        }
        const size_t C = (size_t)p->shape[1];
        for (int i = 0; i < s->n_rows[t]; i++, o += C) {
            size_t at = p->offset + (size_t)s->rows[t][i] * C;
            float *w = ps->data + at, *b = s->base + at;
            for (size_t j = 0; j < C; j++) b[j] = w[j] = b[j] + s->pack[o + j];
        }
    }
    for (int t = 0; t < s->n; t++) {
        if (!s->kind[t]) continue;
        uint8_t *d = s->dirty + s->flag_off[t];
        for (int i = 0; i < s->n_dirty[t]; i++) d[s->dirty_rows[t][i]] = 0;
        s->n_dirty[t] = 0;
        s->n_rows[t] = 0;
    }
    s->since_sync = 0;
    s->syncs++;
    s->sync_seconds += trainer_now() - t0;
}
