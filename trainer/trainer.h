/* trainer.h - the lockstep program: configuration, data pipeline, optimizers, training
 * loop, evaluation coordinator, subcommands.
 *
 * The only module that includes models/, comm/ and io/ together and wires them up: the
 * model sees batches and a gradient scale, comm sees flat float buffers, io sees
 * (name, offset, shape) tables. Rank 0 is the coordinator: it alone prints, logs and
 * writes checkpoints; decisions reach the other ranks through collectives. */
#ifndef TRAINER_TRAINER_H
#define TRAINER_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "comm/comm.h"
#include "io/io.h"
#include "models/nn.h"

/* ---- configuration (trainer/config.c) ------------------------------------------------ */
/* Keys every model shares, with defaults and help; terminated by {NULL}. */
extern const nn_key trainer_keys[];

/* Parses `--key value`, `--key=value`, bare `--flag` (boolean keys only) and `--config FILE`
 * (lines `key = value` or `key value`, # comments) into cfg. Flags override the file,
 * whatever their order. Every key must be a trainer key or a key of the model named by
 * --model; anything else is NN_ERR_CONFIG with a message naming the key (and, for a file,
 * file:line). Values are checked later by their getters. */
int trainer_parse_args(nn_config *cfg, int argc, char **argv);
/* Fills missing keys with defaults (trainer keys, then the model's). */
int trainer_config_defaults(nn_config *cfg, const nn_model_ops *ops);
/* Prints the models and every key with its default and help to f. */
void trainer_print_help(FILE *f, const char *prog, const nn_model_ops *only);
/* Writes "key = value" lines, sorted, to a string (caller frees). */
char *trainer_config_dump(const nn_config *cfg);
int trainer_is_model_key(const nn_model_ops *ops, const char *key);
int trainer_is_trainer_key(const char *key);

/* ---- optimizers and schedules (trainer/optim.c) ------------------------------------ */
enum trainer_opt { OPT_SGD, OPT_MOMENTUM, OPT_ADAM, OPT_ADAMW };
enum trainer_sched { SCHED_CONSTANT, SCHED_COSINE, SCHED_LINEAR, SCHED_INVSQRT };

typedef struct trainer_optim {
    int kind;            /* enum trainer_opt */
    double lr, beta1, beta2, eps, momentum, weight_decay;
    int sched;           /* enum trainer_sched */
    int64_t warmup, total_steps;
    double min_lr;
    size_t n;            /* floats in the whole parameter buffer */
    size_t lo, hi;       /* the slice this optimizer updates (ZeRO-1: this rank's) */
    float *m, *v;        /* state of [lo, hi) (NULL when unused); one allocation each */
} trainer_optim;

/* Reads optimizer/schedule keys from cfg and allocates state for n floats (zeroed). */
int trainer_optim_init(trainer_optim *o, const nn_config *cfg, size_t n, int64_t total_steps);
/* The same for the slice [lo, hi) only (sharded optimizer state). */
int trainer_optim_init_slice(trainer_optim *o, const nn_config *cfg, size_t n, size_t lo,
                             size_t hi, int64_t total_steps);
void trainer_optim_free(trainer_optim *o);
/* Learning rate at step (0-based step about to be taken). Pure function. */
double trainer_lr(const trainer_optim *o, int64_t step);
/* One update of every non-frozen parameter inside [o->lo, o->hi) with the gradients in
 * ps->grad (already averaged). step is 0-based (Adam bias correction uses step + 1). */
void trainer_optim_step(trainer_optim *o, nn_params *ps, int64_t step, double lr);
/* The same update restricted to rows: for parameter t with n_rows[t] >= 0 only rows
 * rows[t][0..n_rows[t]) of the (R, C) tensor are updated; n_rows[t] < 0 updates the whole
 * tensor. Plain SGD gives exactly what trainer_optim_step gives when the other rows have
 * zero gradient. Momentum, Adam and AdamW become LAZY (TF's LazyAdam, PyTorch's
 * SparseAdam): rows without gradient keep their state undecayed and get no weight decay;
 * the bias correction still uses the global step. Needs the whole buffer (no ZeRO slice). */
void trainer_optim_step_sparse(trainer_optim *o, nn_params *ps, int64_t step, double lr,
                               const int32_t *const *rows, const int *n_rows);
/* Slots as (name, buffer) for checkpoints. Returns the count (0..2). */
int trainer_optim_slots(const trainer_optim *o, const char **names, float **bufs);
/* Sum of squared gradients over [lo, hi) (double accumulation). */
double trainer_grad_sumsq(const nn_params *ps, size_t lo, size_t hi);
/* Scales grads[lo, hi) by max_norm / norm when norm > max_norm > 0. */
void trainer_scale_grads(nn_params *ps, size_t lo, size_t hi, double norm, double max_norm);
/* Global L2 norm of all gradients (double accumulation). */
double trainer_grad_norm(const nn_params *ps);
/* Scales gradients so their global norm is at most max_norm; returns the norm before. */
double trainer_clip_grads(nn_params *ps, double max_norm);

/* ---- row-sparse steps and local SGD (trainer/sparse.c) ------------------------------ */
/* For models with nn_model_ops.touched_rows. A step with the sparse path:
 *     trainer_sparse_begin        zero the gradients of the dense parameters
 *     forward_backward ...        (the model lists the rows it touched)
 *     trainer_sparse_gather       rows of this step; K = 1 on P > 1 ranks: sum gradients
 *                                 over the union of the ranks' rows (collective)
 *     trainer_sparse_sumsq / _nonfinite / _scale / _update   on the listed rows only
 *     trainer_sparse_end          zero those gradient rows again, clear the model's lists
 * and with K > 1 on P > 1 ranks, trainer_sparse_sync every K steps and before every
 * evaluation and checkpoint. Between steps every gradient is zero. */
typedef struct trainer_sparse {
    int on;               /* 1: the model has row-sparse parameters and this path is used */
    int n;                /* parameters in the registry */
    int ranks, sync_every;/* P, K */
    int *kind;            /* (n) 1: row-sparse (rows listed), 0: dense */
    const int32_t **rows; /* (n) the rows of this step (NULL for dense) */
    int *n_rows;          /* (n) their count; -1 for dense parameters */
    const int32_t **loc_rows; /* (n) this rank's own rows as the model lists them */
    int *loc_n;
    int32_t **rows_own;   /* (n) P > 1: union lists, R_t each */
    size_t *flag_off;     /* (n + 1) offsets of each parameter's rows in flags/dirty */
    size_t n_flags;       /* sum of R_t over sparse parameters */
    float *flags;         /* (n_flags) P > 1: per-row flags summed over ranks, or the
                             gathered row ids of every rank */
    uint8_t *seen;        /* (n_flags) P > 1: scratch marks, all zero between calls */
    float *pack;          /* (total) P > 1: exchange buffer */
    /* K > 1 on P > 1 ranks */
    float *base;          /* (total) parameters at the last sync */
    uint8_t *dirty;       /* (n_flags) row changed on this rank since the last sync */
    int32_t **dirty_rows; /* (n) the same rows as lists */
    int *n_dirty;
    int64_t since_sync;   /* steps since the last sync */
    int64_t syncs;        /* counters for the final log line */
    double sync_seconds;
} trainer_sparse;

/* Returns 1 and sets s->on when the model lists touched rows for at least one 2-D
 * parameter (and zeroes all gradients), 0 when it has none (s zeroed), or NN_ERR_NOMEM.
 * ranks: P; sync_every: K (>= 1). With K > 1 and P > 1 the current parameters become the
 * base of the first sync. */
int trainer_sparse_init(trainer_sparse *s, nn_model *m, int ranks, int sync_every);
void trainer_sparse_free(trainer_sparse *s); /* zero-safe, idempotent */
/* The parameters as they are now are the state all ranks share (after a load). */
void trainer_sparse_rebase(trainer_sparse *s, const nn_params *ps);
void trainer_sparse_begin(const trainer_sparse *s, nn_params *ps);
/* Collective when P > 1 and K == 1 (then the rows are the union over ranks and their
 * gradients the sums); otherwise local. */
void trainer_sparse_gather(trainer_sparse *s, nn_model *m, const comm *c);
/* Sum of squares of the listed gradients (row sums in float, total in double). */
double trainer_sparse_sumsq(const trainer_sparse *s, const nn_params *ps);
/* Index of the first parameter with a non-finite listed gradient, or -1. */
int trainer_sparse_nonfinite(const trainer_sparse *s, const nn_params *ps);
/* Listed gradients *= max_norm / norm when norm > max_norm > 0. */
void trainer_sparse_scale(const trainer_sparse *s, nn_params *ps, double norm, double max_norm);
/* trainer_optim_step_sparse on the listed rows (exact for SGD, lazy for the others). */
void trainer_sparse_update(const trainer_sparse *s, trainer_optim *o, nn_params *ps,
                           int64_t step, double lr);
void trainer_sparse_end(trainer_sparse *s, nn_model *m);
/* Collective (K > 1, P > 1; otherwise a no-op, as when nothing changed since the last
 * sync): parameters := base + sum over ranks of (parameters - base), base := parameters,
 * over the rows any rank changed and the dense parameters. Identical on every rank after. */
void trainer_sparse_sync(trainer_sparse *s, const comm *c, nn_params *ps);

/* ---- data (trainer/data.c) ----------------------------------------------------------- */
/* One split of a data set, in a form every kind shares: examples 0..n-1. */
typedef struct trainer_split {
    int kind;            /* IO_TEXT_* or TRAINER_DENSE */
    io_shard shard;      /* text kinds */
    int64_t n;           /* examples */
    int seq_len;         /* lm: window length T */
    char *dense_path;    /* dense: HDF5 file and group prefix ("train") */
    char dense_group[32];
    int64_t dense_cols;
    int has_labels;
    int32_t *tok_len;    /* caption: (n) tokens of each example's caption, </s> included */
    int64_t tok_cols;    /* caption: padded caption length L */
} trainer_split;
#define TRAINER_DENSE 10
#define TRAINER_CAPTION 11 /* dense images (x) with token captions (tokens) */

typedef struct trainer_data {
    int kind;
    io_vocab src, tgt, labels;
    trainer_split train, valid, test;
    int has_valid, has_test;
    nn_dims dims;
    int max_len;
} trainer_data;

/* What a text data set is prepared from. */
typedef struct trainer_prep {
    int kind;              /* IO_TEXT_* */
    const char *paths[3];  /* train, valid, test ("" or NULL: absent) */
    const char *out;       /* run directory: results go to <out>/data */
    long vocab_size, min_count, max_len;
    int verbose;           /* print what is counted, encoded or reused */
} trainer_prep;

/* Not collective. Vocabularies and token shards of a text data set under <out>/data,
 * reusing them when <out>/data/stamp.txt says they were made from the same sources (real
 * path, size, mtime) and settings (and, when vocab_from is given, the same ids).
 * vocab_from (resume): these vocabularies, moved into src/tgt/labels, instead of a
 * counting pass. On success src/tgt/labels hold the vocabularies. */
int trainer_data_prepare(const trainer_prep *p, io_vocab *vocab_from, int n_vocab_from,
                         io_vocab *src, io_vocab *tgt, io_vocab *labels);

/* Collective. Prepares vocabularies (from the checkpoint when vocab_from is non-NULL,
 * else rank 0 counts the training text) and shards under <out>/data (rank 0 encodes,
 * the others wait), then every rank maps them. Errors are agreed by all ranks. */
int trainer_data_init(trainer_data *d, const comm *c, const nn_config *cfg,
                      const nn_model_ops *ops, io_vocab *vocab_from, int n_vocab_from,
                      int micro_batch);
void trainer_data_free(trainer_data *d);

/* Batch buffers sized once for the largest micro-batch. */
typedef struct trainer_batch {
    nn_batch b;
    int cap_B, cap_T, cap_U, cap_D;
    int32_t *x, *x_len, *y, *y_len;
    float *xf;
    int64_t *index;
} trainer_batch;
int trainer_batch_init(trainer_batch *tb, const trainer_data *d, int max_B);
void trainer_batch_free(trainer_batch *tb);
/* Fills tb with examples ex[0..n) of split s. */
int trainer_batch_fill(trainer_batch *tb, const trainer_data *d, const trainer_split *s,
                       const int64_t *ex, int n, uint64_t step);
/* What the loss of example e is normalised by (tokens or 1). */
double trainer_example_count(const trainer_data *d, const trainer_split *s, int64_t e);

/* The registry as io's (name, offset, shape) table; names point into ps. Caller frees;
 * NULL when out of memory. (trainer/infer.c) */
io_tensor *trainer_tensor_table(const nn_params *ps);
/* The io_ckpt describing the model's parameters (table t from trainer_tensor_table) and
 * n_slots optimizer slots, for io_ckpt_write / io_ckpt_read; other fields zero. */
io_ckpt trainer_ckpt_of(const char *model, nn_params *ps, const io_tensor *t, int n_slots,
                        const char *const *slot_names, float *const *slots);

/* ---- the training run (trainer/train.c) --------------------------------------------- */
/* Exit status of a run stopped by SIGUSR1/SIGTERM after writing its checkpoint; a SLURM
 * cluster with RequeueExit=99 requeues the job, which then resumes with --resume auto. */
#define TRAINER_EXIT_PREEMPTED 99
int trainer_train(const comm *c, int argc, char **argv);
int trainer_eval_cmd(const comm *c, int argc, char **argv);
int trainer_info_cmd(int argc, char **argv);

/* ---- progress and logs (trainer/log.c) ---------------------------------------------- */
/* Human-readable duration "1:02:03" / "2:05" into buf. */
void trainer_fmt_duration(char *buf, size_t n, double seconds);
double trainer_now(void); /* monotonic seconds */
/* 1 when a person watches stdout (live progress bar), 0 for files and pipes (plain
 * lines). LOCKSTEP_PROGRESS=bar|lines overrides. */
int trainer_stdout_is_terminal(void);

#endif
