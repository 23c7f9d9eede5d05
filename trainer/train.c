/* train.c - `lockstep train` and `lockstep eval`: the data-parallel training loop and the
 * evaluation coordinator.
 *
 * One step: the GLOBAL batch (positions step*G .. step*G+G-1 of the example order) is cut
 * into micro-batches of fixed positions; rank r of P takes a contiguous run of them. Each
 * loss is scaled by 1 / (global token or example count), which every rank computes from
 * the data alone, so the summed gradient is the same mean on any rank count. Gradients
 * are summed across ranks, clipped, and applied by an optimizer that runs identically
 * everywhere. Rank 0 alone prints, logs and writes checkpoints; every decision it makes
 * (stop, error) is agreed through a collective so no rank is left in a collective alone.
 * Models that list the rows their gradients touch (skip-gram) take the row-sparse path of
 * trainer/sparse.c instead: only those rows are exchanged, checked and updated, and with
 * --sync-every K > 1 each rank applies its own share and the ranks agree (statistics,
 * errors, stop requests, summed parameter changes) only every K steps.
 *
 * Not here: model internals (models/), MPI calls (comm/), HDF5 (io/). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/bleu.h"
#include "trainer/trainer.h"

/* ---- preemption ------------------------------------------------------------------------ */

/* SIGUSR1 (SLURM's --signal=B:USR1@N, forwarded by mpirun) and SIGTERM ask for a clean
 * stop. The handler only sets a flag; after every step all ranks agree on it with one
 * tiny collective, so every rank stops after the same step and the coordinator writes a
 * checkpoint before the job exits with status 99 (SLURM's RequeueExit). */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = sig; }

static void install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---- the run ------------------------------------------------------------------------- */

typedef struct run {
    const comm *c;
    nn_config cfg;
    const nn_model_ops *ops;
    nn_model model;
    trainer_data data;
    trainer_optim opt;
    trainer_batch batch;
    io_log log;
    int log_open;

    /* settings */
    const char *out;
    long batch_size, micro, stop_after, log_every, eval_every, ckpt_every, keep, patience, eval_batches;
    long threads;
    int deterministic, skip_nan;
    double clip;
    uint64_t seed;
    int64_t total_steps, steps_per_epoch;

    /* state */
    io_train_state ts;
    char *metrics;          /* evaluation history (JSON lines), rank 0 */
    size_t metrics_len;
    int64_t *perm;          /* permutation of the training examples for perm_epoch */
    int64_t perm_epoch;
    int order;              /* 0 shuffle, 1 sequential, 2 lanes */
    int64_t *slots;         /* (micro) example ids of the current micro-batch */
    int64_t *acc;           /* deterministic mode: fixed-point gradient sums */
    int zero;               /* ZeRO-1: this rank updates and stores state for [zlo, zhi) */
    size_t zlo, zhi;
    float *zgrad;           /* (zhi - zlo) reduce-scatter target */
    comm_buckets buckets;   /* overlapped gradient reduction (bucket-mb > 0, P > 1) */
    trainer_sparse sp;      /* row-sparse updates and local SGD (sp.on), trainer/sparse.c */
    int local;              /* --sync-every K > 1 on P > 1 ranks: each rank applies its own
                               share of a step; the ranks agree only at sync points */
    nn_stats lwin;          /* local: this rank's statistics since the last agreement */
    int deferred_rc;        /* local: this rank's first error since the last agreement */
    int use_buckets;
    double bucket_mb;
    double comm_wait;       /* seconds spent waiting for gradient reduction (this window) */
    int bleu, eval_beam;    /* decode and score BLEU during evaluation */
    double len_alpha;
    int max_out;
    int32_t *hyp;           /* (micro, max_out) decoded ids */
    char *hyp_txt, *ref_txt;/* scratch strings for BLEU */
    size_t txt_cap;
    double last_bleu, last_exact; /* BLEU and exact-match rate of the last evaluation */
} run;

enum { ORDER_SHUFFLE, ORDER_SEQUENTIAL, ORDER_LANES };

static int fail_config(int rc) { return rc; }

/* ---- example order -------------------------------------------------------------------- */

static int make_perm(run *r, int64_t epoch) {
    const int64_t n = r->data.train.n;
    if (!r->perm && !(r->perm = malloc((size_t)n * sizeof *r->perm))) {
        nn_set_error("out of memory for the example order (%lld examples)", (long long)n);
        return NN_ERR_NOMEM;
    }
    for (int64_t i = 0; i < n; i++) r->perm[i] = i;
    /* Fisher-Yates driven by the counter RNG keyed by (seed, epoch): the order of an epoch
     * is a pure function of the seed, whatever the rank count or resume point. */
    nn_rng g = nn_rng_make(r->seed, (uint64_t)epoch, 0, NN_RNG_SHUFFLE);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(nn_rng_u64(&g) % (uint64_t)(i + 1));
        int64_t t = r->perm[i];
        r->perm[i] = r->perm[j];
        r->perm[j] = t;
    }
    r->perm_epoch = epoch;
    return NN_OK;
}

/* The training example at global position pos of the run. */
static int example_at(run *r, int64_t pos, int64_t *ex) {
    const int64_t n = r->data.train.n;
    if (r->order == ORDER_LANES) {
        /* G lanes read the stream contiguously: slot j of step s reads window
         * j * L + s mod L, so a recurrent state carried per lane sees consecutive text. */
        const int64_t G = r->batch_size;
        int64_t L = n / G;
        if (L < 1) L = 1;
        int64_t s = pos / G, j = pos % G;
        *ex = (j * L + s % L) % n;
        return NN_OK;
    }
    int64_t epoch = pos / n, k = pos % n;
    if (r->order == ORDER_SEQUENTIAL) {
        *ex = k;
        return NN_OK;
    }
    if (!r->perm || r->perm_epoch != epoch) {
        int rc = make_perm(r, epoch);
        if (rc < 0) return rc;
    }
    *ex = r->perm[k];
    return NN_OK;
}

/* ---- checkpoints ----------------------------------------------------------------------- */

/* Collective. With --sync-every K > 1 on several ranks: adds up the ranks' parameter
 * changes since the last sync (trainer/sparse.c); otherwise nothing. */
static void sparse_sync(run *r) {
    double t0 = trainer_now();
    trainer_sparse_sync(&r->sp, r->c, &r->model.params);
    r->comm_wait += trainer_now() - t0;
}

static void metrics_append(run *r, const char *line) {
    size_t len = strlen(line);
    char *m = realloc(r->metrics, r->metrics_len + len + 2);
    if (!m) return; /* history is best effort; metrics.jsonl has it all */
    memcpy(m + r->metrics_len, line, len);
    m[r->metrics_len + len] = '\n';
    m[r->metrics_len + len + 1] = 0;
    r->metrics = m;
    r->metrics_len += len + 1;
}

/* Collective. The optimizer state as full-length buffers: the slots themselves, or with
 * ZeRO-1 the slices gathered onto rank 0 (freshly allocated there; release with
 * release_full_slots). Returns the slot count; bufs[i] is NULL on other ranks. */
static int full_slots(run *r, const char **names, float **bufs) {
    int ns = trainer_optim_slots(&r->opt, names, bufs);
    if (!r->zero) return ns;
    const size_t n = r->model.params.total;
    for (int i = 0; i < ns; i++) {
        float *slice = bufs[i];
        float *full = NULL;
        if (r->c->rank == 0 && !(full = malloc(n * sizeof *full)))
            comm_abort(r->c, 1, "out of memory gathering optimizer state (%zu floats)", n);
        comm_gather_f32(r->c, slice, full, n, 0);
        bufs[i] = full;
    }
    return ns;
}

static void release_full_slots(run *r, float **bufs, int ns) {
    if (!r->zero) return;
    for (int i = 0; i < ns; i++) free(bufs[i]);
}

/* Rank 0 only. Writes <out>/<name> atomically; slots are full-length buffers. */
static int write_ckpt(run *r, const char *path, const char *const *slot_names, float **slots,
                      int ns) {
    nn_params *ps = &r->model.params;
    io_tensor *t = trainer_tensor_table(ps);
    if (!t) {
        nn_set_error("out of memory writing a checkpoint");
        return NN_ERR_NOMEM;
    }
    const char *vnames[3];
    io_vocab vocabs[3];
    int nv = 0;
    if (r->data.kind == TRAINER_CAPTION) {
        vnames[nv] = "tgt";
        vocabs[nv++] = r->data.tgt;
    } else if (r->data.kind != TRAINER_DENSE) {
        vnames[nv] = "src";
        vocabs[nv++] = r->data.src;
        if (r->data.kind == IO_TEXT_PARALLEL) {
            vnames[nv] = "tgt";
            vocabs[nv++] = r->data.tgt;
        }
        if (r->data.kind == IO_TEXT_CLASSIFY) {
            vnames[nv] = "labels";
            vocabs[nv++] = r->data.labels;
        }
    }
    io_ckpt ck = trainer_ckpt_of(r->ops->name, ps, t, ns, slot_names, slots);
    ck.n_config = r->cfg.n;
    ck.config_keys = r->cfg.key;
    ck.config_vals = r->cfg.val;
    ck.train = r->ts;
    ck.n_vocabs = nv;
    ck.vocab_names = vnames;
    ck.vocabs = vocabs;
    ck.metrics = r->metrics;
    int rc = io_ckpt_write(path, &ck);
    free(t);
    if (rc < 0) {
        nn_set_error("%s", io_error());
        return NN_ERR_DATA;
    }
    return NN_OK;
}

/* Collective. Rank 0 writes ckpt_<step>.h5 (and best.h5 when asked), prunes old ones; the
 * outcome is agreed. */
/* Sum over i of bits(p[i]) * (2i + 1) mod 2^64: any change of any one value changes it.
 * tests/e2e_sparse.sh recomputes it from the checkpoint. */
static uint64_t params_checksum(const nn_params *ps) {
    uint64_t h = 0;
    for (size_t i = 0; i < ps->total; i++) {
        uint32_t w;
        memcpy(&w, ps->data + i, sizeof w);
        h += (uint64_t)w * (2 * (uint64_t)i + 1);
    }
    return h;
}

/* Collective, sparse path on several ranks: checks that every rank holds the parameters
 * rank 0 is about to save (they apply updates, or sum changes, independently). */
static int check_replicas(run *r) {
    if (!r->sp.on || r->c->size == 1) return NN_OK;
    uint64_t h = params_checksum(&r->model.params);
    double hi = (double)(h >> 32), lo = (double)(h & 0xffffffffu);
    double v[4] = {hi, lo, -hi, -lo};
    comm_allreduce_max_f64(r->c, v, 4);
    if (v[0] != -v[2] || v[1] != -v[3]) {
        nn_set_error("step %lld: the ranks hold different parameters (a bug in the sparse "
                     "path); not checkpointing", (long long)r->ts.step);
        return NN_ERR_NUMERIC;
    }
    if (r->c->rank == 0)
        printf("lockstep: step %lld: parameters identical on %d ranks (checksum %016llx)\n",
               (long long)r->ts.step, r->c->size, (unsigned long long)h);
    return NN_OK;
}

static int save(run *r, int best) {
    sparse_sync(r); /* with local updates: every rank holds the same parameters to save */
    int rc = check_replicas(r);
    if (rc < 0) return rc;
    const char *slot_names[2];
    float *slots[2];
    int ns = full_slots(r, slot_names, slots);
    if (r->c->rank == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/ckpt_%08lld.h5", r->out, (long long)r->ts.step);
        rc = write_ckpt(r, path, slot_names, slots, ns);
        if (rc == NN_OK && best) {
            snprintf(path, sizeof path, "%s/best.h5", r->out);
            rc = write_ckpt(r, path, slot_names, slots, ns);
        }
        if (rc == NN_OK && io_ckpt_prune(r->out, (int)r->keep) < 0) {
            fprintf(stderr, "lockstep: warning: %s\n", io_error());
        }
    }
    release_full_slots(r, slots, ns);
    int buf[1] = {rc};
    comm_bcast_bytes(r->c, buf, sizeof buf, 0);
    if (buf[0] < 0 && r->c->rank != 0) nn_set_error("checkpoint write failed on rank 0");
    return buf[0];
}

/* Collective. Rank 0 reads path into the model and optimizer; everything is broadcast. */
static int load(run *r, const char *path) {
    nn_params *ps = &r->model.params;
    int rc = NN_OK;
    /* full-length slot buffers on rank 0 (with ZeRO-1 scattered after reading) */
    const char *slot_names[2];
    float *slots[2];
    int ns = trainer_optim_slots(&r->opt, slot_names, slots);
    float *owned[2] = {NULL, NULL};
    if (r->zero && r->c->rank == 0)
        for (int i = 0; i < ns; i++) {
            if (!(owned[i] = calloc(ps->total, sizeof(float))))
                comm_abort(r->c, 1, "out of memory reading optimizer state");
            slots[i] = owned[i];
        }
    if (r->c->rank == 0) {
        io_tensor *t = trainer_tensor_table(ps);
        if (!t) return NN_ERR_NOMEM;
        io_ckpt ck = trainer_ckpt_of(r->ops->name, ps, t, ns, slot_names, slots);
        if (io_ckpt_read(path, &ck) < 0) {
            nn_set_error("%s", io_error());
            rc = NN_ERR_DATA;
        } else {
            r->ts = ck.train;
            if (ck.metrics_read) {
                free(r->metrics);
                r->metrics = strdup(ck.metrics_read);
                r->metrics_len = r->metrics ? strlen(r->metrics) : 0;
            }
        }
        io_ckpt_release(&ck);
        free(t);
    }
    int buf[1] = {rc};
    comm_bcast_bytes(r->c, buf, sizeof buf, 0);
    if (buf[0] < 0) {
        char msg[1024] = {0};
        if (r->c->rank == 0) snprintf(msg, sizeof msg, "%s", nn_error());
        comm_bcast_bytes(r->c, msg, sizeof msg, 0);
        if (r->c->rank != 0) nn_set_error("%s", msg);
        for (int i = 0; i < 2; i++) free(owned[i]);
        return buf[0];
    }
    comm_bcast_params(r->c, ps->data, ps->total);
    if (r->zero) {
        float *mine[2];
        trainer_optim_slots(&r->opt, slot_names, mine);
        for (int i = 0; i < ns; i++) comm_scatter_f32(r->c, owned[i], mine[i], ps->total, 0);
        for (int i = 0; i < 2; i++) free(owned[i]);
    } else {
        if (r->opt.m) comm_bcast_params(r->c, r->opt.m, ps->total);
        if (r->opt.v) comm_bcast_params(r->c, r->opt.v, ps->total);
    }
    comm_bcast_bytes(r->c, &r->ts, sizeof r->ts, 0);
    trainer_sparse_rebase(&r->sp, ps);
    return NN_OK;
}

/* ---- evaluation ------------------------------------------------------------------------ */

/* ids up to </s> as space-separated words; <unk> in references never matches. */
static void ids_text(const io_vocab *v, const int32_t *ids, int n, int is_ref, char *out,
                     size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] == IO_EOS) break;
        if (ids[i] == IO_PAD || ids[i] == IO_BOS || ids[i] < 0 || ids[i] >= v->n) continue;
        const char *w = ids[i] == IO_UNK ? (is_ref ? "<unk-ref>" : "<unk>") : v->word[ids[i]];
        size_t l = strlen(w);
        if (o + l + 2 >= cap) break;
        if (o) out[o++] = ' ';
        memcpy(out + o, w, l);
        o += l;
        out[o] = 0;
    }
}

/* Decodes the batch and adds its BLEU statistics and exact matches. */
static int bleu_batch(run *r, bleu_stats *bs, double *exact) {
    const nn_batch *b = &r->batch.b;
    int rc = r->ops->decode(&r->model, b, r->eval_beam, (float)r->len_alpha, r->max_out, r->hyp);
    for (int i = 0; rc == NN_OK && i < b->B; i++) {
        ids_text(&r->data.tgt, r->hyp + (size_t)i * r->max_out, r->max_out, 0, r->hyp_txt,
                 r->txt_cap);
        ids_text(&r->data.tgt, b->y + (size_t)i * b->U, b->y_len[i], 1, r->ref_txt, r->txt_cap);
        const char *refs[1] = {r->ref_txt};
        bleu_add_sentence(bs, r->hyp_txt, refs, 1);
        *exact += strcmp(r->hyp_txt, r->ref_txt) == 0;
    }
    return rc;
}

/* Collective. Sums stats over split s (sharded across ranks). */
static int evaluate_split(run *r, const trainer_split *s, nn_stats *tot) {
    memset(tot, 0, sizeof *tot);
    int64_t n = s->n;
    if (r->eval_batches > 0 && r->eval_batches * r->batch_size < n)
        n = r->eval_batches * r->batch_size;
    size_t lo, hi;
    comm_slice((size_t)n, r->c->rank, r->c->size, &lo, &hi);
    int rc = NN_OK;
    nn_stats st = {0};
    bleu_stats bs;
    memset(&bs, 0, sizeof bs);
    double exact = 0, n_seen = (double)(hi - lo);
    for (size_t i = lo; i < hi && rc == NN_OK; i += (size_t)r->micro) {
        int b = (int)((hi - i) < (size_t)r->micro ? (hi - i) : (size_t)r->micro);
        for (int k = 0; k < b; k++) r->slots[k] = (int64_t)(i + (size_t)k);
        rc = trainer_batch_fill(&r->batch, &r->data, s, r->slots, b, (uint64_t)r->ts.step);
        if (rc == NN_OK) rc = r->ops->evaluate(&r->model, &r->batch.b, &st);
        if (rc == NN_OK && r->bleu) rc = bleu_batch(r, &bs, &exact);
    }
    if (comm_any(r->c, rc < 0)) {
        if (rc == NN_OK) nn_set_error("evaluation failed on another rank");
        return rc < 0 ? rc : NN_ERR_DATA;
    }
    /* loss sums, model extras and BLEU sufficient statistics in one reduction */
    enum { NB = 2 * BLEU_ORDER + 4 };
    double v[3 + NN_STATS_EXTRA + NB] = {st.loss, st.count, st.correct};
    for (int k = 0; k < NN_STATS_EXTRA; k++) v[3 + k] = st.extra[k];
    double *vb = v + 3 + NN_STATS_EXTRA;
    for (int k = 0; k < BLEU_ORDER; k++) {
        vb[k] = bs.match[k];
        vb[BLEU_ORDER + k] = bs.total[k];
    }
    vb[2 * BLEU_ORDER] = bs.hyp_len;
    vb[2 * BLEU_ORDER + 1] = bs.ref_len;
    vb[2 * BLEU_ORDER + 2] = exact;
    vb[2 * BLEU_ORDER + 3] = n_seen;
    comm_allreduce_sum_f64(r->c, v, 3 + NN_STATS_EXTRA + NB);
    for (int k = 0; k < BLEU_ORDER; k++) {
        bs.match[k] = vb[k];
        bs.total[k] = vb[BLEU_ORDER + k];
    }
    bs.hyp_len = vb[2 * BLEU_ORDER];
    bs.ref_len = vb[2 * BLEU_ORDER + 1];
    r->last_bleu = r->bleu ? bleu_score(&bs, NULL, NULL) : NAN;
    r->last_exact = vb[2 * BLEU_ORDER + 3] > 0 ? vb[2 * BLEU_ORDER + 2] / vb[2 * BLEU_ORDER + 3] : 0;
    tot->loss = v[0];
    tot->count = v[1];
    tot->correct = v[2];
    for (int k = 0; k < NN_STATS_EXTRA; k++) tot->extra[k] = v[3 + k];
    return NN_OK;
}

/* Higher is better: BLEU for translators, accuracy for classifiers, minus the mean loss
 * otherwise. */
static double metric_of(const run *r, const nn_stats *st) {
    if (st->count <= 0) return -INFINITY;
    if (r->bleu) return r->last_bleu;
    if (r->data.kind == IO_TEXT_CLASSIFY) return st->correct / st->count;
    return -st->loss / st->count;
}

static void format_stats(const run *r, const nn_stats *st, char *txt, size_t tn, char *json,
                         size_t jn) {
    double mean = st->count > 0 ? st->loss / st->count : NAN;
    int k = snprintf(txt, tn, "loss %.4f", mean);
    int j = snprintf(json, jn, "\"loss\":%.6f,\"count\":%.0f", mean, st->count);
    if (r->data.kind == IO_TEXT_CLASSIFY || st->correct > 0) {
        double acc = st->count > 0 ? st->correct / st->count : 0;
        k += snprintf(txt + k, tn - (size_t)k, "  acc %.4f", acc);
        j += snprintf(json + j, jn - (size_t)j, ",\"acc\":%.6f", acc);
    }
    if (r->data.kind == IO_TEXT_PLAIN || r->data.kind == IO_TEXT_PARALLEL) {
        double ppl = exp(mean);
        k += snprintf(txt + k, tn - (size_t)k, "  ppl %.2f", ppl);
        j += snprintf(json + j, jn - (size_t)j, ",\"ppl\":%.4f", ppl);
    }
    if (r->bleu) {
        k += snprintf(txt + k, tn - (size_t)k, "  BLEU %.2f exact %.4f (beam %d)", r->last_bleu,
                      r->last_exact, r->eval_beam);
        j += snprintf(json + j, jn - (size_t)j, ",\"bleu\":%.4f,\"exact\":%.6f,\"beam\":%d",
                      r->last_bleu, r->last_exact, r->eval_beam);
    }
    if (r->ops->stat_names) {
        for (int e = 0; e < NN_STATS_EXTRA && r->ops->stat_names[e]; e++) {
            double v = st->count > 0 ? st->extra[e] / st->count : 0;
            k += snprintf(txt + k, tn - (size_t)k, "  %s %.4f", r->ops->stat_names[e], v);
            j += snprintf(json + j, jn - (size_t)j, ",\"%s\":%.6f", r->ops->stat_names[e], v);
        }
    }
}

/* Collective. Evaluates one split, logs it on rank 0, returns the metric. */
static int eval_and_log(run *r, const trainer_split *s, const char *name, double *metric) {
    sparse_sync(r); /* evaluate the parameters every rank agrees on */
    nn_stats st;
    int rc = evaluate_split(r, s, &st);
    if (rc < 0) return rc;
    *metric = metric_of(r, &st);
    if (r->c->rank == 0) {
        char txt[512], json[768], line[1024];
        format_stats(r, &st, txt, sizeof txt, json, sizeof json);
        printf("%s%s step %lld: %s\n", trainer_stdout_is_terminal() ? "\r\033[K" : "", name,
               (long long)r->ts.step, txt);
        fflush(stdout);
        snprintf(line, sizeof line, "{\"step\":%lld,\"split\":\"%s\",%s}", (long long)r->ts.step,
                 name, json);
        if (r->log_open) io_log_write(&r->log, line);
        metrics_append(r, line);
    }
    return NN_OK;
}

/* ---- one training step ------------------------------------------------------------------ */

/* First tensor with a non-finite gradient inside [lo, hi), or -1. */
static int find_nonfinite(const nn_params *ps, size_t lo, size_t hi) {
    for (int t = 0; t < ps->n; t++) {
        size_t a = ps->p[t].offset > lo ? ps->p[t].offset : lo;
        size_t b = ps->p[t].offset + ps->p[t].size < hi ? ps->p[t].offset + ps->p[t].size : hi;
        for (size_t i = a; i < b; i++)
            if (!isfinite(ps->grad[i])) return t;
    }
    return -1;
}

/* Called by models during backward of the last micro-batch: start reducing what is done. */
static void on_grad_ready(void *ctx, size_t lo) {
    run *r = ctx;
    comm_buckets_ready(&r->buckets, lo);
    comm_buckets_progress(&r->buckets);
}

/* A non-finite loss or gradient (bad: the tensor index, -1 for the loss or when another
 * rank found it): 1 to skip the step (--on-nan skip, with a warning) or NN_ERR_NUMERIC. */
static int on_nonfinite(run *r, int bad, int grad_bad, double loss) {
    char what[300];
    if (bad >= 0)
        snprintf(what, sizeof what, "gradient of %s", r->model.params.p[bad].name);
    else
        snprintf(what, sizeof what, grad_bad ? "gradient (on another rank)" : "loss");
    if (r->skip_nan) {
        if (r->local) /* only this rank knows: it skips its own share */
            fprintf(stderr, "lockstep: warning: rank %d, step %lld: non-finite %s; the rank's "
                    "share of the step skipped\n", r->c->rank, (long long)r->ts.step, what);
        else if (r->c->rank == 0)
            fprintf(stderr, "lockstep: warning: step %lld: non-finite %s; step skipped\n",
                    (long long)r->ts.step, what);
        return 1;
    }
    nn_set_error("step %lld: non-finite %s (loss %g); stopping without a checkpoint "
                 "(--on-nan skip skips such steps)",
                 (long long)r->ts.step, what, loss);
    return NN_ERR_NUMERIC;
}

/* The rest of a step on the row-sparse path, after every local micro-batch (local_rc:
 * their status): only the touched rows are exchanged (K = 1), checked, clipped and
 * updated. Collective, except in local mode (r->local): then each rank checks, clips (by
 * its own share's norm) and applies its own share, and the caller defers errors and
 * statistics to the next agreement (local_agree). */
static int sparse_step(run *r, const nn_stats *st, int local_rc, nn_stats *out) {
    nn_params *ps = &r->model.params;
    trainer_sparse *sp = &r->sp;
    if (r->local) {
        if (local_rc < 0) return local_rc;
    } else if (comm_any(r->c, local_rc < 0)) {
        if (local_rc == NN_OK) nn_set_error("a training step failed on another rank");
        return local_rc < 0 ? local_rc : NN_ERR_DATA;
    }
    double t_wait = trainer_now();
    trainer_sparse_gather(sp, &r->model, r->c);
    r->comm_wait += trainer_now() - t_wait;
    double ss = trainer_sparse_sumsq(sp, ps);
    *out = *st;
    if (!r->local) {
        double v[3] = {st->loss, st->count, st->correct};
        comm_allreduce_sum_f64(r->c, v, 3);
        out->loss = v[0];
        out->count = v[1];
        out->correct = v[2];
    }
    if (!isfinite(out->loss) || !isfinite(ss)) {
        int bad = isfinite(ss) ? -1 : trainer_sparse_nonfinite(sp, ps);
        int rc = on_nonfinite(r, bad, !isfinite(ss), out->loss);
        trainer_sparse_end(sp, &r->model); /* skipped: the gradient rows are zeroed */
        return rc;
    }
    if (r->clip > 0) trainer_sparse_scale(sp, ps, sqrt(ss), r->clip);
    trainer_sparse_update(sp, &r->opt, ps, r->ts.step, trainer_lr(&r->opt, r->ts.step));
    trainer_sparse_end(sp, &r->model);
    return NN_OK;
}

/* ---- local mode: agreement at sync points -------------------------------------------- */

/* Collective only through the callers: whether step r->ts.step (just taken) evaluates. */
static int eval_due(const run *r) {
    const int64_t s = r->ts.step;
    int end_of_epoch = r->eval_every == 0 && s % r->steps_per_epoch == 0;
    return r->data.has_valid &&
           ((r->eval_every > 0 && s % r->eval_every == 0) || end_of_epoch || s == r->total_steps);
}

/* Local mode: the steps after which the ranks agree and sync: every K-th, the last, and
 * every step that evaluates or checkpoints on schedule. The same on every rank. A stop
 * (--stop-after, a signal) waits for the next of them, so it falls where an
 * uninterrupted run syncs too and a resumed run continues it bit for bit. */
static int local_agree_due(const run *r) {
    const int64_t s = r->ts.step;
    return s % r->sp.sync_every == 0 || s == r->total_steps || eval_due(r) ||
           (r->ckpt_every > 0 && s % r->ckpt_every == 0);
}

/* Local mode, after each step: keeps what the rank will report at the next agreement. */
static void local_account(run *r, int rc, const nn_stats *st) {
    if (rc < 0) {
        if (r->deferred_rc == NN_OK) r->deferred_rc = rc;
    } else if (rc == 0) {
        r->lwin.loss += st->loss;
        r->lwin.count += st->count;
        r->lwin.correct += st->correct;
    }
}

/* Collective, local mode. One reduction agrees on everything the ranks kept to themselves
 * since the last agreement (errors, stop signals, the statistics of the steps trained:
 * into *st), then the parameter changes are summed (trainer_sparse_sync). */
static int local_agree(run *r, nn_stats *st, int *sig) {
    double v[5] = {r->lwin.loss, r->lwin.count, r->lwin.correct, r->deferred_rc < 0,
                   stop_signal != 0};
    double t0 = trainer_now();
    comm_allreduce_sum_f64(r->c, v, 5);
    r->comm_wait += trainer_now() - t0;
    memset(&r->lwin, 0, sizeof r->lwin);
    if (v[3] > 0) {
        if (r->deferred_rc == NN_OK) nn_set_error("a training step failed on another rank");
        return r->deferred_rc < 0 ? r->deferred_rc : NN_ERR_DATA;
    }
    memset(st, 0, sizeof *st);
    st->loss = v[0];
    st->count = v[1];
    st->correct = v[2];
    *sig = v[4] > 0;
    sparse_sync(r);
    return NN_OK;
}

/* Collective. Returns NN_OK, a negative status, or 1 when the step was skipped (NaN). */
static int train_step(run *r, nn_stats *out) {
    const int64_t G = r->batch_size, m = r->micro;
    const int64_t n_chunks = (G + m - 1) / m;
    size_t lo, hi;
    comm_slice((size_t)n_chunks, r->c->rank, r->c->size, &lo, &hi);
    nn_params *ps = &r->model.params;
    const int64_t base = r->ts.step * G;

    /* The global normaliser: every rank computes it from the data alone. */
    double count = 0;
    int rc = NN_OK;
    for (int64_t j = 0; j < G && rc == NN_OK; j++) {
        int64_t ex;
        rc = example_at(r, base + j, &ex);
        if (rc == NN_OK) count += trainer_example_count(&r->data, &r->data.train, ex);
    }
    if (rc < 0) return rc;
    const float scale = count > 0 ? (float)(1.0 / count) : 0.0f;

    if (r->sp.on)
        trainer_sparse_begin(&r->sp, ps); /* the rows of the last step are zero already */
    else
        nn_params_zero_grad(ps);
    nn_stats st = {0};
    int fixed_bad = 0;
    for (size_t k = lo; k < hi && rc == NN_OK; k++) {
        int64_t j0 = (int64_t)k * m, j1 = j0 + m < G ? j0 + m : G;
        for (int64_t j = j0; j < j1 && rc == NN_OK; j++)
            rc = example_at(r, base + j, &r->slots[j - j0]);
        if (rc == NN_OK)
            rc = trainer_batch_fill(&r->batch, &r->data, &r->data.train, r->slots,
                                    (int)(j1 - j0), (uint64_t)r->ts.step);
        /* overlap only in the last micro-batch: earlier ones still add to every gradient */
        int last = k + 1 == hi;
        r->model.grad_ready = r->use_buckets && last ? on_grad_ready : NULL;
        r->model.grad_ready_ctx = r;
        if (rc == NN_OK) rc = r->ops->forward_backward(&r->model, &r->batch.b, scale, &st);
        r->model.grad_ready = NULL;
        if (rc == NN_OK && r->deterministic) {
            if (comm_fixed_accumulate(r->acc, ps->grad, ps->total, COMM_FIXED_SCALE) != COMM_OK)
                fixed_bad = 1;
            nn_params_zero_grad(ps);
        }
    }
    if (r->sp.on) return sparse_step(r, &st, rc, out);
    double t_wait = trainer_now();
    if (r->use_buckets) {
        /* a rank with no micro-batch (more ranks than micro-batches) starts all here */
        comm_buckets_finish(&r->buckets, 1.0f);
    }
    if (comm_any(r->c, rc < 0)) {
        if (rc == NN_OK) nn_set_error("a training step failed on another rank");
        return rc < 0 ? rc : NN_ERR_DATA;
    }
    if (r->use_buckets) {
        /* reduced above */
    } else if (r->zero) {
        comm_reduce_scatter_f32(r->c, ps->grad, r->zgrad, ps->total);
        memcpy(ps->grad + r->zlo, r->zgrad, (r->zhi - r->zlo) * sizeof *r->zgrad);
    } else if (r->deterministic) {
        int frc = comm_fixed_allreduce(r->c, r->acc, ps->total, fixed_bad);
        comm_fixed_to_float(ps->grad, r->acc, ps->total, COMM_FIXED_SCALE);
        memset(r->acc, 0, ps->total * sizeof *r->acc);
        if (frc != COMM_OK) {
            /* a non-finite or huge gradient: poison one value so the NaN check below
             * reports it like in the float path */
            ps->grad[0] = NAN;
        }
    } else if (r->c->size > 1) {
        comm_allreduce_grads(r->c, ps->grad, ps->total, 1.0f);
    }
    r->comm_wait += trainer_now() - t_wait;
    double v[3] = {st.loss, st.count, st.correct};
    comm_allreduce_sum_f64(r->c, v, 3);
    out->loss = v[0];
    out->count = v[1];
    out->correct = v[2];

    /* NaN/Inf: the gradients are identical on every rank, so every rank decides alike. */
    /* One vectorised pass: a NaN or Inf anywhere makes the sum of squares non-finite
     * (it also serves clipping); only then are the tensors searched for a name. */
    double ss = trainer_grad_sumsq(ps, r->zlo, r->zhi);
    int bad = isfinite(ss) ? -1 : find_nonfinite(ps, r->zlo, r->zhi);
    if (r->zero) {
        /* each rank checked its slice: agree on the highest failing tensor index */
        double b = bad;
        comm_allreduce_max_f64(r->c, &b, 1);
        bad = (int)b;
    }
    if (!isfinite(out->loss) || bad >= 0) return on_nonfinite(r, bad, bad >= 0, out->loss);
    if (r->clip > 0) {
        if (r->zero) comm_allreduce_sum_f64(r->c, &ss, 1);
        trainer_scale_grads(ps, r->zlo, r->zhi, sqrt(ss), r->clip);
    }
    double lr = trainer_lr(&r->opt, r->ts.step);
    trainer_optim_step(&r->opt, ps, r->ts.step, lr);
    if (r->zero) comm_allgather_f32(r->c, ps->data, ps->total);
    return NN_OK;
}

/* ---- models fitted from sufficient statistics (pca) ------------------------------------- */

/* Collective. One pass over the training split, sharded across ranks; the statistics are
 * summed over ranks and every rank finishes the fit identically. */
static int fit_model(run *r) {
    size_t n = r->ops->fit_size(&r->model);
    double *acc = calloc(n ? n : 1, sizeof *acc);
    int rc = acc ? NN_OK : NN_ERR_NOMEM;
    size_t lo, hi;
    comm_slice((size_t)r->data.train.n, r->c->rank, r->c->size, &lo, &hi);
    for (size_t i = lo; i < hi && rc == NN_OK; i += (size_t)r->micro) {
        int b = (int)((hi - i) < (size_t)r->micro ? (hi - i) : (size_t)r->micro);
        for (int k = 0; k < b; k++) r->slots[k] = (int64_t)(i + (size_t)k);
        rc = trainer_batch_fill(&r->batch, &r->data, &r->data.train, r->slots, b, 0);
        if (rc == NN_OK) rc = r->ops->fit_accumulate(&r->model, &r->batch.b, acc);
    }
    if (comm_any(r->c, rc < 0)) {
        free(acc);
        if (rc == NN_OK) nn_set_error("fitting failed on another rank");
        return rc < 0 ? rc : NN_ERR_DATA;
    }
    comm_allreduce_sum_f64(r->c, acc, n);
    rc = r->ops->fit_finish(&r->model, acc, (double)r->data.train.n);
    free(acc);
    if (comm_any(r->c, rc < 0)) return rc < 0 ? rc : NN_ERR_NUMERIC;
    r->ts.step = r->total_steps = 1;
    r->ts.examples_seen = r->data.train.n;
    return NN_OK;
}

/* Rank 0: pictures of what the model does on the first examples of split s, written as
 * <out>/<panel name>.png. Best effort: a failure is a warning, not the end of the run. */
static void write_pictures(run *r, const trainer_split *s) {
    if (!r->ops->visualize || r->c->rank != 0 || s->n == 0) return;
    int b = (int)(s->n < r->micro ? s->n : r->micro);
    if (b > 16) b = 16;
    for (int k = 0; k < b; k++) r->slots[k] = k;
    if (trainer_batch_fill(&r->batch, &r->data, s, r->slots, b, (uint64_t)r->ts.step) < 0) return;
    float *img = malloc(sizeof(float) << 22);
    if (!img) return;
    if (r->data.tgt.n > 0) {
        r->model.words = (const char *const *)r->data.tgt.word;
        r->model.n_words = r->data.tgt.n;
    }
    for (int panel = 0; panel < 16; panel++) {
        int h = 0, w = 0;
        const char *name = NULL;
        int rc = r->ops->visualize(&r->model, &r->batch.b, panel, img, &h, &w, &name);
        if (rc < 0) break;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s.png", r->out, name ? name : "panel");
        if (io_png_write_gray(path, img, h, w) < 0)
            fprintf(stderr, "lockstep: warning: %s\n", io_error());
        else
            printf("lockstep: wrote %s (%dx%d)\n", path, w, h);
    }
    free(img);
}

/* ---- pretrained pieces and frozen parameters ------------------------------------------ */

/* Rank 0: rows of this model's embedding/weight := the pretrained vectors of the same words
 * (matched through both vocabularies); other rows keep their initialisation. */
static int init_embeddings(run *r, const char *spec) {
    char path[4096], tensor[256] = "input/weight";
    snprintf(path, sizeof path, "%s", spec);
    /* FILE.h5:TENSOR names the tensor; a plain path uses input/weight (skip-gram's) */
    char *colon = strstr(path, ".h5:") ? strstr(path, ".h5:") + 3 : NULL;
    if (colon) {
        *colon = 0;
        snprintf(tensor, sizeof tensor, "%s", colon + 1);
    }
    nn_params *ps = &r->model.params;
    int dst = nn_params_find(ps, "embedding/weight");
    if (dst < 0) {
        nn_set_error("--init-embeddings: model %s has no embedding/weight", r->ops->name);
        return NN_ERR_CONFIG;
    }
    io_vocab pv = {0};
    const char *names[1] = {"src"};
    float *w = NULL;
    int nd = 0;
    int64_t shape[IO_MAX_DIMS];
    if (io_ckpt_read_vocabs(path, 1, names, &pv) < 0 ||
        io_ckpt_read_tensor(path, tensor, &w, &nd, shape) < 0) {
        io_vocab_free(&pv);
        nn_set_error("--init-embeddings: %s", io_error());
        return NN_ERR_DATA;
    }
    const nn_param *p = &ps->p[dst];
    int rc = NN_OK;
    if (nd != 2 || shape[0] != pv.n || p->ndim != 2 || shape[1] != p->shape[1]) {
        nn_set_error("--init-embeddings: %s:%s has shape (%lld,%lld) for %d words; this model's "
                     "embedding/weight has width %d",
                     path, tensor, (long long)shape[0], nd > 1 ? (long long)shape[1] : 0LL, pv.n,
                     p->ndim == 2 ? p->shape[1] : 0);
        rc = NN_ERR_SHAPE;
    }
    int copied = 0;
    const io_vocab *v = &r->data.src;
    for (int i = IO_N_SPECIAL; rc == NN_OK && i < v->n && i < p->shape[0]; i++) {
        int j = io_vocab_lookup(&pv, v->word[i], strlen(v->word[i]));
        if (j < 0) continue;
        memcpy(ps->data + p->offset + (size_t)i * p->shape[1], w + (size_t)j * shape[1],
               (size_t)p->shape[1] * sizeof(float));
        copied++;
    }
    if (rc == NN_OK)
        printf("lockstep: initialised %d of %d embedding rows from %s:%s\n", copied,
               v->n - IO_N_SPECIAL, path, tensor);
    free(w);
    io_vocab_free(&pv);
    return rc;
}

static int apply_freeze(run *r, const char *list) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int hit = 0;
        for (int t = 0; t < r->model.params.n; t++)
            if (strncmp(r->model.params.p[t].name, tok, strlen(tok)) == 0) {
                r->model.params.p[t].frozen = 1;
                hit = 1;
            }
        if (!hit) {
            nn_set_error("--freeze: no parameter of %s starts with '%s'", r->ops->name, tok);
            return NN_ERR_CONFIG;
        }
    }
    return NN_OK;
}

/* ---- set-up ---------------------------------------------------------------------------- */

static int local_ranks(const comm *c) {
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return c->size;
}

/* Collective: rank 0 finds the checkpoint to resume and its configuration; every rank
 * merges it under the flags given. Returns 1 when resuming (path set), 0 when not. */
static int resolve_resume(run *r, char *path, size_t plen) {
    const char *res = nn_config_get(&r->cfg, "resume");
    const char *out = nn_config_get(&r->cfg, "out");
    if (!res || strcmp(res, "none") == 0 || !*res) return 0;
    int rc = NN_OK, found = 0;
    char *packed = NULL;
    uint64_t plen_bytes = 0;
    if (r->c->rank == 0) {
        if (strcmp(res, "auto") == 0) {
            int q = io_ckpt_latest(out ? out : "runs/default", path, plen);
            if (q == IO_OK) found = 1;
            else if (q != IO_ERR_NOTFOUND) {
                nn_set_error("%s", io_error());
                rc = NN_ERR_DATA;
            }
        } else {
            snprintf(path, plen, "%s", res);
            found = 1;
        }
        if (rc == NN_OK && found) {
            char *model = NULL, **keys = NULL, **vals = NULL;
            int n = 0;
            if (io_ckpt_peek(path, &model, &n, &keys, &vals) < 0) {
                nn_set_error("%s", io_error());
                rc = NN_ERR_DATA;
            } else {
                /* pack: model\0 k\0v\0 ... */
                size_t len = strlen(model) + 1;
                for (int i = 0; i < n; i++) len += strlen(keys[i]) + strlen(vals[i]) + 2;
                packed = malloc(len);
                if (packed) {
                    size_t o = 0;
                    o += (size_t)sprintf(packed + o, "%s", model) + 1;
                    for (int i = 0; i < n; i++) {
                        o += (size_t)sprintf(packed + o, "%s", keys[i]) + 1;
                        o += (size_t)sprintf(packed + o, "%s", vals[i]) + 1;
                    }
                    plen_bytes = len;
                } else {
                    rc = NN_ERR_NOMEM;
                }
                for (int i = 0; i < n; i++) {
                    free(keys[i]);
                    free(vals[i]);
                }
                free(keys);
                free(vals);
                free(model);
            }
        }
    }
    int hdr[2] = {rc, found};
    comm_bcast_bytes(r->c, hdr, sizeof hdr, 0);
    if (hdr[0] < 0) {
        char msg[1024] = {0};
        if (r->c->rank == 0) snprintf(msg, sizeof msg, "%s", nn_error());
        comm_bcast_bytes(r->c, msg, sizeof msg, 0);
        if (r->c->rank != 0) nn_set_error("%s", msg);
        free(packed);
        return hdr[0];
    }
    if (!hdr[1]) return 0;
    comm_bcast_bytes(r->c, path, plen, 0);
    comm_bcast_bytes(r->c, &plen_bytes, sizeof plen_bytes, 0);
    if (r->c->rank != 0) packed = malloc(plen_bytes ? plen_bytes : 1);
    if (!packed) return NN_ERR_NOMEM;
    comm_bcast_bytes(r->c, packed, (size_t)plen_bytes, 0);
    /* merge: the checkpoint's model and model keys must agree with what was given */
    const char *p = packed, *end = packed + plen_bytes;
    const char *model = p;
    p += strlen(p) + 1;
    const char *given = nn_config_get(&r->cfg, "model");
    if (given && strcmp(given, model) != 0) {
        nn_set_error("%s holds model %s, but --model %s was given", path, model, given);
        free(packed);
        return NN_ERR_CONFIG;
    }
    nn_config_set(&r->cfg, "model", model);
    const nn_model_ops *ops = nn_model_find(model);
    while (p < end && rc == NN_OK) {
        const char *k = p;
        p += strlen(p) + 1;
        const char *v = p;
        p += strlen(p) + 1;
        const char *now = nn_config_get(&r->cfg, k);
        /* settings of one invocation are not inherited from the checkpoint */
        static const char *const transient[] = {"resume", "stop-after", "threads", "log-every",
                                                "config", NULL};
        int skip = 0;
        for (int t = 0; transient[t]; t++) skip |= strcmp(k, transient[t]) == 0;
        if (skip) continue;
        if (!now) {
            rc = nn_config_set(&r->cfg, k, v);
        } else if (strcmp(now, v) != 0 && ops && trainer_is_model_key(ops, k)) {
            nn_set_error("%s was trained with --%s %s; cannot resume with --%s %s", path, k, v, k,
                         now);
            rc = NN_ERR_CONFIG;
        } else if (strcmp(now, v) != 0 &&
                   (strcmp(k, "batch-size") == 0 || strcmp(k, "seed") == 0 ||
                    strcmp(k, "data") == 0 || strcmp(k, "order") == 0)) {
            nn_set_error("%s was trained with --%s %s; resuming with --%s %s would not continue "
                         "the same run",
                         path, k, v, k, now);
            rc = NN_ERR_CONFIG;
        }
    }
    free(packed);
    return rc < 0 ? rc : 1;
}

static int read_settings(run *r) {
    const nn_config *cfg = &r->cfg;
    long seed, steps, epochs, det, beam;
    const char *order, *on_nan, *matmul;
    int rc;
    if ((rc = nn_config_int(cfg, "batch-size", 32, &r->batch_size)) < 0 ||
        (rc = nn_config_int(cfg, "micro-batch", 0, &r->micro)) < 0 ||
        (rc = nn_config_int(cfg, "log-every", 10, &r->log_every)) < 0 ||
        (rc = nn_config_int(cfg, "eval-every", 0, &r->eval_every)) < 0 ||
        (rc = nn_config_int(cfg, "eval-batches", 0, &r->eval_batches)) < 0 ||
        (rc = nn_config_int(cfg, "ckpt-every", 0, &r->ckpt_every)) < 0 ||
        (rc = nn_config_int(cfg, "keep", 3, &r->keep)) < 0 ||
        (rc = nn_config_int(cfg, "patience", 0, &r->patience)) < 0 ||
        (rc = nn_config_int(cfg, "stop-after", 0, &r->stop_after)) < 0 ||
        (rc = nn_config_int(cfg, "threads", 0, &r->threads)) < 0 ||
        (rc = nn_config_int(cfg, "seed", 1, &seed)) < 0 ||
        (rc = nn_config_int(cfg, "steps", 0, &steps)) < 0 ||
        (rc = nn_config_int(cfg, "epochs", 1, &epochs)) < 0 ||
        (rc = nn_config_bool(cfg, "deterministic", 0, &r->deterministic)) < 0 ||
        (rc = nn_config_float(cfg, "clip", 0, &r->clip)) < 0 ||
        (rc = nn_config_choice(cfg, "order", "shuffle", "shuffle|sequential|lanes", &order)) < 0 ||
        (rc = nn_config_choice(cfg, "on-nan", "stop", "stop|skip", &on_nan)) < 0 ||
        (rc = nn_config_choice(cfg, "matmul", "fp32", "fp32|bf16", &matmul)) < 0 ||
        (rc = nn_config_bool(cfg, "bleu", 1, &r->bleu)) < 0 ||
        (rc = nn_config_int(cfg, "eval-beam", 1, &beam)) < 0 ||
        (rc = nn_config_float(cfg, "len-alpha", 0.6, &r->len_alpha)) < 0 ||

        (rc = nn_config_bool(cfg, "zero", 0, &r->zero)) < 0)
        return rc;
    if (r->zero && r->deterministic) {
        nn_set_error("--zero 1 and --deterministic cannot be combined (the fixed-point "
                     "reduction needs the whole gradient on every rank)");
        return NN_ERR_CONFIG;
    }
    /* auto: overlap only pays across a network; within one node the shared-memory
     * allreduce is fast and the progress calls cost more than they hide (bench-comm) */
    const char *bmb = nn_config_get(cfg, "bucket-mb");
    if (!bmb || strcmp(bmb, "auto") == 0)
        r->bucket_mb = r->c->size > 1 && !comm_single_node(r->c) ? 4.0 : 0.0;
    else if ((rc = nn_config_float(cfg, "bucket-mb", 4, &r->bucket_mb)) < 0)
        return rc;
    if (r->bucket_mb < 0 || r->bucket_mb > 1024) {
        nn_set_error("--bucket-mb must be in 0..1024, got %g", r->bucket_mb);
        return NN_ERR_CONFIG;
    }
    if (beam < 1 || beam > 64) {
        nn_set_error("--eval-beam must be in 1..64, got %ld", beam);
        return NN_ERR_CONFIG;
    }
    r->eval_beam = (int)beam;
    if (!r->ops->decode || (strcmp(r->ops->data_kind, "parallel") != 0 &&
                            strcmp(r->ops->data_kind, "caption") != 0))
        r->bleu = 0;
    (void)det;
    if (r->batch_size < 1 || r->micro < 0 || r->log_every < 1 || r->eval_every < 0 ||
        r->ckpt_every < 0 || r->stop_after < 0 || r->keep < 1 || r->patience < 0 || r->threads < 0 || steps < 0 ||
        epochs < 0 || r->clip < 0 || r->eval_batches < 0) {
        nn_set_error("need --batch-size >= 1, --keep >= 1, --log-every >= 1 and no negative "
                     "--steps, --epochs, --micro-batch, --eval-every, --ckpt-every, "
                     "--patience, --threads, --clip, --eval-batches");
        return NN_ERR_CONFIG;
    }
    if (steps == 0 && epochs == 0) {
        nn_set_error("nothing to do: --steps 0 and --epochs 0");
        return NN_ERR_CONFIG;
    }
    r->seed = (uint64_t)seed;
    r->order = strcmp(order, "shuffle") == 0 ? ORDER_SHUFFLE
               : strcmp(order, "sequential") == 0 ? ORDER_SEQUENTIAL : ORDER_LANES;
    r->skip_nan = strcmp(on_nan, "skip") == 0;
    nn_set_matmul(strcmp(matmul, "bf16") == 0 ? NN_MATMUL_BF16 : NN_MATMUL_FP32);
    r->out = nn_config_get(cfg, "out");
    if (r->micro == 0) {
        /* default: one micro-batch per rank; deterministic mode needs micro-batch
         * boundaries that do not depend on the rank count */
        r->micro = r->deterministic ? (r->batch_size + 3) / 4
                                    : (r->batch_size + r->c->size - 1) / r->c->size;
    }
    if (r->micro > r->batch_size) r->micro = r->batch_size;
    r->total_steps = steps;  /* epochs resolved once the data size is known */
    if (steps == 0) r->total_steps = -epochs;
    return NN_OK;
}

/* The update path (after the model and the optimizer exist): row-sparse when the model
 * lists touched rows and --sparse-updates allows it (auto: plain SGD, where it is exact,
 * without --deterministic or --zero); and --sync-every K (auto, for sparse SGD on several
 * ranks: about TRAINER_SYNC_EXAMPLES examples between syncs, K = ceil(that / batch-size),
 * but at least 16 syncs per epoch on small data sets; else 1).
 * Why local SGD by default, and why 256 examples: one epoch of the prose corpus (skip-gram,
 * batch 4 windows of 64, 2 ranks on 2 shared cores, seeds 1-3): K = 1 (a few collectives
 * every step, each a rendezvous of both ranks) ran at 750-790k words/s with the 1-rank
 * analogy accuracy (median 0.150); K = 64 at 960k words/s, median 0.150 (0.1499-0.1531);
 * K = 256 at 1.10-1.23M words/s but 0.005 lower on every seed (median 0.1445). */
#define TRAINER_SYNC_EXAMPLES 256
static int setup_sparse(run *r) {
    const char *mode, *se = nn_config_get(&r->cfg, "sync-every");
    long k = 0; /* 0: auto */
    int rc;
    if ((rc = nn_config_choice(&r->cfg, "sparse-updates", "auto", "auto|1|0", &mode)) < 0)
        return rc;
    if (se && strcmp(se, "auto") != 0) {
        if ((rc = nn_config_int(&r->cfg, "sync-every", 1, &k)) < 0) return rc;
        if (k < 1) {
            nn_set_error("--sync-every must be auto or a step count >= 1, got %ld", k);
            return NN_ERR_CONFIG;
        }
    }
    const int sgd = r->opt.kind == OPT_SGD, forced = strcmp(mode, "1") == 0;
    if (forced && (r->deterministic || r->zero)) {
        nn_set_error("--sparse-updates 1 cannot be combined with --%s (it reduces whole "
                     "gradients); use --sparse-updates auto or 0",
                     r->deterministic ? "deterministic" : "zero 1");
        return NN_ERR_CONFIG;
    }
    if (k > 1 && (r->deterministic || r->zero || !sgd)) {
        const char *what = r->deterministic ? "--deterministic"
                           : r->zero        ? "--zero 1"
                                            : "--optimizer other than sgd";
        const char *why = r->deterministic ? ", so results would depend on the rank count"
                          : r->zero        ? " to state it does not hold"
                                           : " to optimizer state that would differ between ranks";
        nn_set_error("--sync-every %ld cannot be combined with %s (each rank would apply its own "
                     "updates%s); use --sync-every 1", k, what, why);
        return NN_ERR_CONFIG;
    }
    int want = forced || (strcmp(mode, "auto") == 0 && sgd && !r->deterministic && !r->zero);
    if (want) {
        long kk = 1;
        if (k > 0) {
            kk = k;
        } else if (sgd && r->c->size > 1) {
            kk = (TRAINER_SYNC_EXAMPLES + r->batch_size - 1) / r->batch_size;
            if (kk > r->steps_per_epoch / 16) kk = r->steps_per_epoch / 16;
            if (kk < 1) kk = 1;
        }
        if ((rc = trainer_sparse_init(&r->sp, &r->model, r->c->size, (int)kk)) < 0) return rc;
    }
    r->local = r->sp.on && r->c->size > 1 && r->sp.sync_every > 1;
    if (k > 1 && !r->sp.on) {
        nn_set_error("--sync-every %ld needs row-sparse updates, and %s", k,
                     want ? "this model's gradients are dense"
                          : "--sparse-updates 0 turns them off");
        return NN_ERR_CONFIG;
    }
    return NN_OK;
}

static void print_banner(run *r) {
    if (r->c->rank != 0) return;
    printf("lockstep: model %s, %d rank%s x %d thread%s, %s, HDF5 %s, %s%s%s\n", r->ops->name,
           r->c->size, r->c->size == 1 ? "" : "s", nn_get_threads(),
           nn_get_threads() == 1 ? "" : "s", comm_mpi_version(), io_hdf5_version(),
           nn_blas_version(), nn_get_matmul() == NN_MATMUL_BF16 ? ", matmul bf16 on " : "",
           nn_get_matmul() == NN_MATMUL_BF16 ? nn_matmul_engine() : "");
    printf("lockstep: %zu parameters (%.1f MiB), train %lld examples", r->model.params.total,
           (double)r->model.params.total * 4 / 1048576.0, (long long)r->data.train.n);
    if (r->data.has_valid) printf(", valid %lld", (long long)r->data.valid.n);
    if (r->data.has_test) printf(", test %lld", (long long)r->data.test.n);
    if (r->data.dims.vocab) printf(", vocab %d", r->data.dims.vocab);
    if (r->data.dims.vocab_tgt) printf("/%d", r->data.dims.vocab_tgt);
    if (r->data.dims.classes) printf(", %d classes", r->data.dims.classes);
    printf("\nlockstep: %lld steps of %ld examples (micro-batch %ld), run directory %s\n",
           (long long)r->total_steps, r->batch_size, r->micro, r->out);
    if (r->sp.on) {
        printf("lockstep: sparse updates (touched rows only) of");
        for (int t = 0; t < r->sp.n; t++)
            if (r->sp.kind[t]) printf(" %s", r->model.params.p[t].name);
        if (r->c->size == 1)
            printf("\n");
        else if (r->sp.sync_every == 1)
            printf("; ranks sum the touched rows' gradients every step\n");
        else
            printf("; ranks apply their own updates and add up their changes every %d steps\n",
                   r->sp.sync_every);
    }
    fflush(stdout);
}

static void progress(run *r, const nn_stats *st, double t_start, int64_t first_step,
                     double seen, double lr) {
    double el = trainer_now() - t_start;
    double done = (double)(r->ts.step - first_step);
    double left = (double)(r->total_steps - r->ts.step);
    double eta = done > 0 ? el / done * left : 0;
    char e1[32], e2[32];
    trainer_fmt_duration(e1, sizeof e1, el);
    trainer_fmt_duration(e2, sizeof e2, eta);
    double mean = st->count > 0 ? st->loss / st->count : NAN;
    double rate = el > 0 ? seen / el : 0;
    int tty = trainer_stdout_is_terminal();
    if (tty) {
        int w = 24, fill = (int)(w * (double)r->ts.step / (double)r->total_steps);
        char bar[32];
        for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
        bar[w] = 0;
        printf("\r\033[K[%s] step %lld/%lld  loss %.4f  lr %.2e  %.0f ex/s  %s  ETA %s", bar,
               (long long)r->ts.step, (long long)r->total_steps, mean, lr, rate, e1, e2);
    } else {
        printf("step %lld/%lld  loss %.4f  lr %.2e  %.0f ex/s  elapsed %s  ETA %s\n",
               (long long)r->ts.step, (long long)r->total_steps, mean, lr, rate, e1, e2);
    }
    fflush(stdout);
    char line[512];
    snprintf(line, sizeof line,
             "{\"step\":%lld,\"split\":\"train\",\"loss\":%.6f,\"lr\":%.6g,\"ex_per_s\":%.1f,"
             "\"elapsed\":%.3f}",
             (long long)r->ts.step, mean, lr, rate, el);
    if (r->log_open) io_log_write(&r->log, line);
}

static void run_free(run *r) {
    trainer_batch_free(&r->batch);
    trainer_optim_free(&r->opt);
    nn_model_free(&r->model);
    trainer_data_free(&r->data);
    if (r->log_open) io_log_close(&r->log);
    nn_config_free(&r->cfg);
    free(r->metrics);
    free(r->perm);
    free(r->slots);
    free(r->acc);
    comm_buckets_free(&r->buckets);
    trainer_sparse_free(&r->sp);
    free(r->zgrad);
    free(r->hyp);
    free(r->hyp_txt);
    free(r->ref_txt);
}

/* Collective. Everything before the first step. Returns 1 if resumed. */
static int setup(run *r, int argc, char **argv, int for_eval) {
    int rc = trainer_parse_args(&r->cfg, argc, argv);
    if (rc < 0) return fail_config(rc);
    char ckpt[4096] = {0};
    int resumed = 0;
    if (for_eval) {
        const char *p = nn_config_get(&r->cfg, "resume");
        if (!p || !*p) {
            nn_set_error("lockstep eval needs --ckpt FILE");
            return NN_ERR_CONFIG;
        }
    }
    rc = resolve_resume(r, ckpt, sizeof ckpt);
    if (rc < 0) return rc;
    resumed = rc;
    const char *mname = nn_config_get(&r->cfg, "model");
    if (!mname) {
        nn_set_error("--model is required (lockstep train --help lists the models)");
        return NN_ERR_CONFIG;
    }
    r->ops = nn_model_find(mname);
    if (!r->ops) {
        nn_set_error("unknown model '%s' (lockstep train --help lists the models)", mname);
        return NN_ERR_CONFIG;
    }
    if ((rc = trainer_config_defaults(&r->cfg, r->ops)) < 0) return rc;
    if ((rc = read_settings(r)) < 0) return rc;
    /* threads: ranks x threads <= cores on a node */
    int threads = (int)r->threads;
    if (threads == 0) {
        /* auto: what the environment asks for, else the node's cores over its ranks */
        const char *env = getenv("OPENBLAS_NUM_THREADS");
        if (!env || atoi(env) < 1) env = getenv("OMP_NUM_THREADS");
        if (env && atoi(env) >= 1) {
            threads = atoi(env);
        } else {
            long cores = sysconf(_SC_NPROCESSORS_ONLN);
            threads = (int)(cores / local_ranks(r->c));
        }
        if (threads < 1) threads = 1;
    }
    nn_set_threads(threads);

    /* run directory, metrics log, resolved configuration */
    if (!for_eval) {
        int drc = NN_OK;
        if (r->c->rank == 0) {
            if (io_mkdirs(r->out) < 0) {
                nn_set_error("%s", io_error());
                drc = NN_ERR_DATA;
            } else if (io_log_open(&r->log, r->out, 1) < 0) {
                nn_set_error("%s", io_error());
                drc = NN_ERR_DATA;
            } else {
                r->log_open = 1;
                char *dump = trainer_config_dump(&r->cfg);
                char path[4200];
                snprintf(path, sizeof path, "%s/config.txt", r->out);
                if (!dump || io_write_file_atomic(path, dump, strlen(dump)) < 0) {
                    nn_set_error("%s", dump ? io_error() : "out of memory");
                    drc = NN_ERR_DATA;
                }
                free(dump);
            }
        }
        int buf[1] = {drc};
        comm_bcast_bytes(r->c, buf, sizeof buf, 0);
        if (buf[0] < 0) {
            if (r->c->rank != 0) nn_set_error("cannot prepare the run directory");
            return buf[0];
        }
    }

    /* vocabularies from the checkpoint when resuming */
    io_vocab vocabs[3];
    int nvoc = 0;
    memset(vocabs, 0, sizeof vocabs);
    if (resumed && r->c->rank == 0 && strcmp(r->ops->data_kind, "dense") != 0) {
        const char *names[3] = {"src", NULL, NULL};
        int k = 1;
        if (strcmp(r->ops->data_kind, "parallel") == 0) names[k++] = "tgt";
        if (strcmp(r->ops->data_kind, "classify") == 0) names[k++] = "labels";
        if (io_ckpt_read_vocabs(ckpt, k, names, vocabs) < 0) {
            nn_set_error("%s", io_error());
            rc = NN_ERR_DATA;
        }
        nvoc = k;
    }
    int vb[1] = {rc};
    comm_bcast_bytes(r->c, vb, sizeof vb, 0);
    if (vb[0] < 0) {
        for (int i = 0; i < 3; i++) io_vocab_free(&vocabs[i]);
        if (r->c->rank != 0) nn_set_error("cannot read vocabularies from %s", ckpt);
        return vb[0];
    }
    rc = trainer_data_init(&r->data, r->c, &r->cfg, r->ops, nvoc ? vocabs : NULL, nvoc,
                           (int)r->micro);
    for (int i = 0; i < 3; i++) io_vocab_free(&vocabs[i]);
    if (rc < 0) return rc;

    r->steps_per_epoch = (r->data.train.n + r->batch_size - 1) / r->batch_size;
    if (r->total_steps < 0) r->total_steps = -r->total_steps * r->steps_per_epoch;

    if ((rc = nn_model_init(&r->model, r->ops, &r->cfg, &r->data.dims, r->seed)) < 0) return rc;
    const char *emb = nn_config_get(&r->cfg, "init-embeddings");
    if (emb && *emb && !resumed) {
        int erc = r->c->rank == 0 ? init_embeddings(r, emb) : NN_OK;
        int buf[1] = {erc};
        comm_bcast_bytes(r->c, buf, sizeof buf, 0);
        if (buf[0] < 0) {
            if (r->c->rank != 0) nn_set_error("--init-embeddings failed on rank 0");
            return buf[0];
        }
    }
    comm_bcast_params(r->c, r->model.params.data, r->model.params.total);
    const char *freeze = nn_config_get(&r->cfg, "freeze");
    if (freeze && *freeze && (rc = apply_freeze(r, freeze)) < 0) return rc;
    r->zlo = 0;
    r->zhi = r->model.params.total;
    if (r->zero) comm_slice(r->model.params.total, r->c->rank, r->c->size, &r->zlo, &r->zhi);
    if ((rc = trainer_optim_init_slice(&r->opt, &r->cfg, r->model.params.total, r->zlo, r->zhi,
                                       r->total_steps)) < 0)
        return rc;
    if (r->zero && !(r->zgrad = malloc((r->zhi - r->zlo + 1) * sizeof *r->zgrad)))
        return NN_ERR_NOMEM;
    if ((rc = trainer_batch_init(&r->batch, &r->data, (int)r->micro)) < 0) return rc;
    r->slots = calloc((size_t)r->micro, sizeof *r->slots);
    if (!r->slots) return NN_ERR_NOMEM;
    if (r->bleu) {
        r->max_out = r->data.dims.max_len_tgt + 8;
        r->txt_cap = (size_t)r->max_out * 64 + 64;
        r->hyp = calloc((size_t)r->micro * (size_t)r->max_out, sizeof *r->hyp);
        r->hyp_txt = malloc(r->txt_cap);
        r->ref_txt = malloc(r->txt_cap);
        if (!r->hyp || !r->hyp_txt || !r->ref_txt) return NN_ERR_NOMEM;
    }
    if ((rc = setup_sparse(r)) < 0) return rc;
    r->use_buckets = r->c->size > 1 && !r->deterministic && !r->zero && r->bucket_mb > 0 &&
                     !r->sp.on;
    if (r->use_buckets &&
        comm_buckets_init(&r->buckets, r->c, r->model.params.grad, r->model.params.total,
                          (size_t)(r->bucket_mb * 1048576.0)) < 0) {
        nn_set_error("out of memory for gradient buckets");
        return NN_ERR_NOMEM;
    }
    if (r->deterministic) {
        r->acc = calloc(r->model.params.total ? r->model.params.total : 1, sizeof *r->acc);
        if (!r->acc) return NN_ERR_NOMEM;
    }
    r->ts.best_metric = -INFINITY;
    r->ts.world_size = r->c->size;
    if (resumed) {
        if ((rc = load(r, ckpt)) < 0) return rc;
        if (r->c->rank == 0)
            printf("lockstep: resumed from %s at step %lld\n", ckpt, (long long)r->ts.step);
        r->ts.world_size = r->c->size;
    }
    return resumed;
}

int trainer_train(const comm *c, int argc, char **argv) {
    run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    /* first thing: a preemption signal during a long set-up (vocabulary pass, shard
     * encoding) must not kill the ranks with the default action */
    install_signal_handlers();
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            const nn_model_ops *only = NULL;
            for (int j = 0; j + 1 < argc; j++)
                if (strcmp(argv[j], "--model") == 0) only = nn_model_find(argv[j + 1]);
            if (c->rank == 0) trainer_print_help(stdout, "lockstep", only);
            return 0;
        }
    int rc = setup(&r, argc, argv, 0);
    if (rc < 0) {
        run_free(&r);
        return rc;
    }
    print_banner(&r);

    const int64_t first = r.ts.step, first_tokens = r.ts.tokens_seen;
    double t_start = trainer_now(), seen = 0;
    if (r.ops->fit_size && r.ts.step == 0) {
        /* fitted, not trained: one pass, then the usual evaluation and checkpoint */
        if ((rc = fit_model(&r)) < 0) {
            run_free(&r);
            return rc;
        }
        seen = (double)r.data.train.n;
        double metric;
        if (r.data.has_valid && (rc = eval_and_log(&r, &r.data.valid, "valid", &metric)) < 0) {
            run_free(&r);
            return rc;
        }
    }
    nn_stats win = {0};
    int stop = 0, preempted = 0, signalled = 0;
    int64_t last_saved = -1, last_agreed = r.ts.step;
    while (r.ts.step < r.total_steps && !stop) {
        nn_stats st;
        int sig = 0;
        if (r.local) {
            /* each rank trains its own share; what follows runs at agreements only */
            rc = r.deferred_rc < 0 ? r.deferred_rc : train_step(&r, &st);
            r.ts.step++;
            local_account(&r, rc, &st);
            if (!local_agree_due(&r)) continue;
            if ((rc = local_agree(&r, &st, &sig)) < 0) break;
        } else {
            rc = train_step(&r, &st);
            if (rc < 0) break;
            r.ts.step++;
            sig = comm_any(r.c, stop_signal != 0);
        }
        const int64_t steps = r.ts.step - last_agreed; /* steps these statistics cover */
        if (rc == 0) {
            r.ts.examples_seen += r.batch_size * steps;
            r.ts.tokens_seen += (int64_t)st.count;
            r.ts.data_pos = r.ts.step * r.batch_size;
            r.ts.epoch = r.ts.data_pos / r.data.train.n;
            win.loss += st.loss;
            win.count += st.count;
            seen += (double)(r.batch_size * steps);
        }
        rc = NN_OK;
        int log_due = r.ts.step / r.log_every != last_agreed / r.log_every;
        last_agreed = r.ts.step;
        if (r.c->rank == 0 && (log_due || r.ts.step == r.total_steps)) {
            progress(&r, &win, t_start, first, seen, trainer_lr(&r.opt, r.ts.step - 1));
            memset(&win, 0, sizeof win);
        }
        int due_eval = eval_due(&r);
        int improved = 0;
        if (due_eval) {
            double metric;
            if ((rc = eval_and_log(&r, &r.data.valid, "valid", &metric)) < 0) break;
            if (metric > r.ts.best_metric) {
                r.ts.best_metric = metric;
                r.ts.best_step = r.ts.step;
                r.ts.bad_evals = 0;
                improved = 1;
            } else {
                r.ts.bad_evals++;
                if (r.patience > 0 && r.ts.bad_evals >= r.patience) {
                    stop = 1;
                    if (r.c->rank == 0)
                        printf("lockstep: no improvement in %ld evaluations; stopping early "
                               "(best at step %lld)\n",
                               r.patience, (long long)r.ts.best_step);
                }
            }
        }
        if (r.stop_after > 0 && r.ts.step - first >= r.stop_after && r.ts.step < r.total_steps)
            stop = preempted = 1;
        if (sig && r.ts.step < r.total_steps) {
            stop = preempted = signalled = 1;
            if (r.c->rank == 0)
                printf("%slockstep: stop requested by a signal; checkpointing step %lld and "
                       "exiting with status %d (resume with --resume auto)\n",
                       trainer_stdout_is_terminal() ? "\n" : "", (long long)r.ts.step,
                       TRAINER_EXIT_PREEMPTED);
        }
        int due_ckpt = (r.ckpt_every > 0 && r.ts.step % r.ckpt_every == 0) ||
                       r.ts.step == r.total_steps || stop || improved;
        if (due_ckpt) {
            if ((rc = save(&r, improved)) < 0) break;
            last_saved = r.ts.step;
        }
    }
    if (rc == NN_OK && last_saved != r.ts.step) rc = save(&r, 0);
    if (rc == NN_OK && r.c->rank == 0 && trainer_stdout_is_terminal()) printf("\n");
    double metric;
    if (rc == NN_OK && r.data.has_test && !preempted)
        rc = eval_and_log(&r, &r.data.test, "test", &metric);
    if (rc == NN_OK && !preempted)
        write_pictures(&r, r.data.has_test ? &r.data.test : r.data.has_valid ? &r.data.valid
                                                                               : &r.data.train);
    if (rc == NN_OK && r.c->rank == 0) {
        char e1[32];
        trainer_fmt_duration(e1, sizeof e1, trainer_now() - t_start);
        double wall = trainer_now() - t_start;
        printf("lockstep: done at step %lld in %s (%.0f examples/s, %.0f tokens/s)", (long long)r.ts.step,
               e1, seen / (wall + 1e-9), (double)(r.ts.tokens_seen - first_tokens) / (wall + 1e-9));
        if (r.c->size > 1)
            printf("; rank 0 waited %.1f s for gradient reduction (%.1f %% of the run)", r.comm_wait,
                   100.0 * r.comm_wait / (wall + 1e-9));
        if (r.c->size > 1 && r.use_buckets && r.buckets.steps > 0)
            printf("; %llu of %llu gradient buckets reduced during backward",
                   (unsigned long long)r.buckets.started_early,
                   (unsigned long long)(r.buckets.steps * r.buckets.count));
        if (r.sp.syncs > 0)
            printf("; %lld syncs of parameter changes took %.1f s", (long long)r.sp.syncs,
                   r.sp.sync_seconds);
        printf("\n");
    }
    run_free(&r);
    if (rc == NN_OK && signalled) return TRAINER_EXIT_PREEMPTED;
    return rc;
}

/* lockstep eval --ckpt FILE [--data/--valid/--test ...]: evaluates a checkpoint on the
 * splits given (defaults: those it was trained with). */
int trainer_eval_cmd(const comm *c, int argc, char **argv) {
    run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    /* --ckpt X is --resume X without training */
    char **av = calloc((size_t)argc + 1, sizeof *av);
    if (!av) return NN_ERR_NOMEM;
    for (int i = 0; i < argc; i++) av[i] = strcmp(argv[i], "--ckpt") == 0 ? "--resume" : argv[i];
    int rc = setup(&r, argc, av, 1);
    free(av);
    if (rc >= 0) {
        double metric;
        if (r.data.has_valid) rc = eval_and_log(&r, &r.data.valid, "valid", &metric);
        if (rc >= 0 && r.data.has_test) rc = eval_and_log(&r, &r.data.test, "test", &metric);
        if (rc >= 0 && !r.data.has_valid && !r.data.has_test)
            rc = eval_and_log(&r, &r.data.train, "train", &metric);
    }
    run_free(&r);
    return rc < 0 ? rc : 0;
}

int trainer_info_cmd(int argc, char **argv) {
    if (argc < 1) {
        fprintf(stderr, "usage: lockstep info CKPT\n");
        return NN_ERR_CONFIG;
    }
    if (io_ckpt_info(argv[0], stdout) < 0) {
        nn_set_error("%s", io_error());
        return NN_ERR_DATA;
    }
    return 0;
}
