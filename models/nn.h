/* nn.h - the model stack of lockstep: parameter registry, kernels, layers, losses, models.
 *
 * models/ depends on OpenBLAS and libc only. It knows nothing of MPI, HDF5 or files:
 * the trainer hands it configuration values, batches of token ids or floats, and a
 * gradient scale, and gets back loss sums. A model never knows how many ranks exist.
 *
 * Conventions (STYLE.md): row-major float32; dims B batch, T time, C in-features,
 * OC out-features, V vocabulary. Layer forward functions take outputs, caches, inputs,
 * dims in that order; backward functions ACCUMULATE into parameter gradients and into
 * dx (beta = 1), so a step starts with one nn_params_zero_grad. */
#ifndef MODELS_NN_H
#define MODELS_NN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- errors ------------------------------------------------------------------------ */

enum nn_status {
    NN_OK = 0,
    NN_ERR_NOMEM = -1,   /* malloc failed */
    NN_ERR_CONFIG = -2,  /* missing, unknown or malformed configuration value */
    NN_ERR_SHAPE = -3,   /* dimensions that cannot work together */
    NN_ERR_DATA = -4,    /* a batch the model cannot take (token id out of range, ...) */
    NN_ERR_UNSUPPORTED = -5, /* the model does not implement this operation */
    NN_ERR_NUMERIC = -6  /* NaN or Inf */
};
const char *nn_status_str(int status); /* static string; never NULL */

/* One message per thread describing the last failure; functions that return a negative
 * status set it. nn_error() returns "" when nothing failed. */
void nn_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *nn_error(void);

/* Our own bugs: print file:line and the condition, then abort(). On in release builds. */
#define NN_ASSERT(cond)                                                                 \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* ---- counter-based random numbers --------------------------------------------------- */
/* Randomness is a pure function of (seed, a, b, purpose): a is usually the step, b the
 * global example index. No state survives between calls, so results depend neither on
 * the rank count nor on where a run was resumed. */
enum nn_purpose {
    NN_RNG_INIT = 1, NN_RNG_DROPOUT = 2, NN_RNG_SHUFFLE = 3, NN_RNG_NOISE = 4,
    NN_RNG_NEGATIVE = 5, NN_RNG_SAMPLE = 6, NN_RNG_SUBSAMPLE = 7, NN_RNG_USER = 16
};
typedef struct nn_rng { uint64_t key, ctr; } nn_rng;
nn_rng nn_rng_make(uint64_t seed, uint64_t a, uint64_t b, uint32_t purpose); /* cannot fail */
uint64_t nn_rng_u64(nn_rng *r);
uint32_t nn_rng_below(nn_rng *r, uint32_t n);   /* uniform in [0, n); n > 0 */
float nn_rng_uniform(nn_rng *r);                /* uniform in [0, 1) */
float nn_rng_normal(nn_rng *r);                 /* standard normal (Box-Muller) */
uint64_t nn_hash64(uint64_t x);                 /* splitmix64 finaliser */

/* ---- configuration ------------------------------------------------------------------ */
/* A flat table of key -> value strings. The trainer fills it from config files and
 * flags; models read typed values. Keys use dashes (batch-size). */
typedef struct nn_key {
    const char *name;  /* "hidden" */
    const char *def;   /* default as text; NULL: required */
    const char *help;  /* one line for --help */
} nn_key;

#define NN_CONFIG_MAX 256
typedef struct nn_config {
    int n;
    char *key[NN_CONFIG_MAX];
    char *val[NN_CONFIG_MAX];
} nn_config;

void nn_config_free(nn_config *c);                              /* zero-safe, idempotent */
int nn_config_set(nn_config *c, const char *key, const char *val); /* copies; replaces */
const char *nn_config_get(const nn_config *c, const char *key); /* NULL when absent */
/* Typed getters: a missing key yields def; a malformed value returns NN_ERR_CONFIG with
 * nn_error() naming the key and the value. */
int nn_config_int(const nn_config *c, const char *key, long def, long *out);
int nn_config_float(const nn_config *c, const char *key, double def, double *out);
int nn_config_bool(const nn_config *c, const char *key, int def, int *out);
/* The value must be one of the '|'-separated choices ("lstm|gru|rnn"). *out points into
 * c (or is def): valid until the key is set again or c is freed. */
int nn_config_choice(const nn_config *c, const char *key, const char *def, const char *choices,
                     const char **out);

/* ---- the parameter registry -------------------------------------------------------- */
/* All parameters in ONE float buffer, gradients in a second with the same layout.
 * Registration stores where to write the view pointers; nn_params_alloc allocates both
 * buffers, fills the views and initialises values from the seed. */
enum nn_init { NN_INIT_ZERO, NN_INIT_ONE, NN_INIT_NORMAL, NN_INIT_UNIFORM };
#define NN_NAME_MAX 128
#define NN_MAX_DIMS 4

typedef struct nn_param {
    char name[NN_NAME_MAX];  /* slash path: "encoder/layer_0/attn/w_q" */
    int ndim;
    int shape[NN_MAX_DIMS];
    size_t offset, size;     /* in floats, within data/grad */
    int init;                /* enum nn_init */
    float scale;             /* std (NORMAL) or bound (UNIFORM) */
    int decay;               /* 1: weight decay applies (matrices); 0: biases, norms */
    int frozen;              /* 1: optimizer leaves it alone */
    float **data_view, **grad_view; /* filled by nn_params_alloc */
} nn_param;

typedef struct nn_params {
    int n, cap;
    nn_param *p;
    size_t total;            /* floats */
    float *data, *grad;      /* one allocation each (64-byte aligned) */
} nn_params;

/* Registers a tensor. shape has ndim entries. Returns its index, or NN_ERR_NOMEM.
 * A duplicate name is a bug (asserts). */
int nn_params_add(nn_params *ps, const char *name, int ndim, const int *shape, int init,
                  float scale, float **data_view, float **grad_view);
/* Allocates data and grad, fills every view, initialises from seed. NN_ERR_NOMEM on failure. */
int nn_params_alloc(nn_params *ps, uint64_t seed);
void nn_params_zero_grad(nn_params *ps);
int nn_params_find(const nn_params *ps, const char *name); /* index or -1 */
void nn_params_free(nn_params *ps);                        /* zero-safe, idempotent */

/* ---- kernels ------------------------------------------------------------------------ */
/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major; ta/tb: 1 = transpose. */
/* A buffer of at least `bytes` for tensors that are streamed through every step
 * (parameters, gradients, optimizer state, activation arenas): 64-byte aligned, and from
 * 2 MiB up aligned to 2 MiB and advised as transparent huge pages, so GEMM packing and
 * elementwise passes over tens of MB do not miss the TLB on every 4 KiB page (this
 * machine's THP policy is "madvise": nothing gets huge pages without asking). Contents
 * are undefined; release with free(). NULL when out of memory. */
void *nn_alloc_big(size_t bytes);
void nn_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
             const float *Bm, int ldb, float beta, float *C, int ldc);
/* Precision of every nn_gemm product in this process. NN_MATMUL_FP32 (the default):
 * OpenBLAS SGEMM. NN_MATMUL_BF16: the inputs rounded to bfloat16 (nearest even) and the
 * products summed in fp32 into fp32 C, as PyTorch's CPU autocast does for matmuls; run on
 * AMX tiles where the CPU has them (gemm_bf16.c). Parameters, gradients, optimizer state
 * and every other kernel stay fp32. nn_set_matmul returns NN_ERR_CONFIG for other modes. */
enum { NN_MATMUL_FP32 = 0, NN_MATMUL_BF16 = 1 };
int nn_set_matmul(int mode);
int nn_get_matmul(void);
/* The engine bf16 products use here: "amx", or "ref" (SGEMM on bf16-rounded copies). */
const char *nn_matmul_engine(void);
/* The bf16 product itself, whatever the process mode; same arguments as nn_gemm.
 * engine NN_ENGINE_BEST: amx where usable, else ref; NN_ENGINE_REF: always ref. */
enum { NN_ENGINE_BEST = 0, NN_ENGINE_REF = 1 };
void nn_gemm_bf16(int engine, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *Bm, int ldb, float beta, float *C, int ldc);
/* C (M,N) = op(A) op(B) + bias, the bias (N) added to every row (C is not read). In
 * bf16 on AMX the bias seeds the accumulators; else rows of bias, then a GEMM with beta 1. */
void nn_gemm_bias(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *Bm,
                  int ldb, const float *bias, float *C, int ldc);
void nn_gemm_bf16_bias(int engine, int ta, int tb, int M, int N, int K, const float *A, int lda,
                       const float *Bm, int ldb, const float *bias, float *C, int ldc);
/* A matrix X (N,V) converted to bf16 once, row by row, into both tile layouts the AMX
 * engine takes it in: as the A operand of X op(B) (K = V) and as the B operand of
 * op(A) X (K = N). For producers that make X one row at a time (the cross-entropy over
 * the vocabulary) so that the two GEMMs that consume it skip reading and packing it.
 * Only where nn_bf16_pair_usable() (bf16 mode on AMX). Zero the struct before first use;
 * begin sizes it for (N,V) (NN_ERR_NOMEM), then every row [0,N) must be put once, in
 * groups of 32 rows. */
typedef struct nn_bf16_pair {
    uint16_t *rows_fmt, *pairs_fmt;
    int N, V;
    size_t cap; /* elements allocated */
} nn_bf16_pair;
int nn_bf16_pair_usable(void);
int nn_bf16_pair_begin(nn_bf16_pair *x, int N, int V);
/* Rows [n0, n0 + nr) of X from src (row stride ld): n0 a multiple of 32, nr <= 32, and
 * nr < 32 only for the last rows. */
void nn_bf16_pair_put_rows(nn_bf16_pair *x, int n0, int nr, const float *src, size_t ld);
void nn_bf16_pair_free(nn_bf16_pair *x); /* zero-safe, idempotent */
/* C (x.N, N) = alpha X op(B) + beta C;  C (M, x.V) = alpha op(A) X + beta C. */
void nn_gemm_bf16_xa(const nn_bf16_pair *x, int tb, int N, const float *Bm, int ldb, float alpha,
                     float beta, float *C, int ldc);
void nn_gemm_bf16_xb(int ta, int M, const float *A, int lda, const nn_bf16_pair *x, float alpha,
                     float beta, float *C, int ldc);
/* x rounded to bfloat16 and back (nearest even; fp32 denormals to signed zero). */
float nn_round_bf16(float x);
void nn_set_threads(int n); /* OpenBLAS threads for this process */
/* The two-way split of models/par.c, for any elementwise or reducing pass. Runs fn(ctx, 0)
 * and fn(ctx, 1), concurrently (part 1 on one helper thread) when big, nn_get_threads()
 * >= 2 and no other split is in flight, else one after the other in the caller; returns
 * when both are done. The parts must not wait for each other. Callers cut [0, n) with
 * nn_par_half (the cut rounded up to a multiple of align), so what each part computes,
 * and any partial sums combined in part order, never depend on the thread count. */
typedef void (*nn_par_fn)(void *ctx, int part);
void nn_par_run(nn_par_fn fn, void *ctx, int big);
void nn_par_half(size_t n, int part, size_t align, size_t *i0, size_t *i1);
int nn_get_threads(void);
/* "OpenBLAS 0.3.21 ..." as the library reports itself (static string). */
const char *nn_blas_version(void);

/* ---- layers ------------------------------------------------------------------------- */
/* Embedding: out (N,C) = table[ids]. ids (N). NN_PAD ids give a zero row. */
void nn_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C);
/* dtable[ids[i]] += dout[i]; touches only rows used; NN_PAD ids get no gradient. */
void nn_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C);

/* y (B,OC) = x (B,C) W^T + b; W (OC,C), b (OC) or NULL. */
void nn_linear_forward(float *y, const float *x, const float *W, const float *b, int B, int C,
                       int OC);
/* dx += dy W (dx may be NULL); dW += dy^T x; db += colsum(dy) (db may be NULL). */
void nn_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                        const float *W, int B, int C, int OC);

/* Elementwise activations over n floats. Forward may run in place (y == x). Backward
 * ACCUMULATES dx += dy * f'(.) using the named cache (x for relu/gelu, y for tanh/sigmoid). */
void nn_relu_forward(float *y, const float *x, size_t n);
void nn_relu_backward(float *dx, const float *dy, const float *x, size_t n);
void nn_tanh_forward(float *y, const float *x, size_t n);
void nn_tanh_backward(float *dx, const float *dy, const float *y, size_t n);
void nn_sigmoid_forward(float *y, const float *x, size_t n);
void nn_sigmoid_backward(float *dx, const float *dy, const float *y, size_t n);
/* GELU, tanh approximation (as GPT-2 and PyTorch approximate='tanh'). */
void nn_gelu_forward(float *y, const float *x, size_t n);
void nn_gelu_backward(float *dx, const float *dy, const float *x, size_t n);

/* Inverted dropout over n = rows * row floats: mask = 0 or 1/(1-p); element j of row r is
 * dropped when draw j of nn_rng_make(seed, step, row_index[r], NN_RNG_DROPOUT) (r itself
 * when row_index is NULL) is below p; y = x * mask (in place allowed). p = 0 copies and
 * sets mask to 1. */
void nn_dropout_forward(float *y, float *mask, const float *x, size_t n, int row, float p,
                        uint64_t seed, uint64_t step, const int64_t *row_index);
void nn_dropout_backward(float *dx, const float *dy, const float *mask, size_t n);

/* Layer norm over the last dim C: y = (x - mean) * rstd * g + b. mean, rstd (N) caches. */
void nn_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                          const float *b, int N, int C);
void nn_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                           const float *mean, const float *rstd, const float *g, int N, int C);

/* Row softmax, in place allowed: p (N,C) = softmax(x). */
void nn_softmax_forward(float *p, const float *x, int N, int C);

/* ---- losses ------------------------------------------------------------------------- */
/* Softmax cross-entropy over rows of logits (N,V) with integer targets (N). Targets equal
 * to ignore_index (e.g. padding) contribute nothing. Returns the loss SUM; *count gets the
 * number of counted rows and *correct the argmax hits (either may be NULL).
 * If dlogits != NULL it is OVERWRITTEN with grad_scale * d(sum)/dlogits (zero rows for
 * ignored targets); dlogits may equal logits (fused, in place). label_smoothing in [0,1). */
double nn_xent_forward_backward(float *dlogits, const float *logits, const int32_t *targets,
                                int N, int V, int ignore_index, float label_smoothing,
                                float grad_scale, double *count, double *correct);
/* Sigmoid binary cross-entropy on logits z (N) with targets t (N) in {0,1} (or [0,1]).
 * Returns the sum; dz (may be NULL) OVERWRITTEN with grad_scale * (sigmoid(z) - t). */
double nn_bce_forward_backward(float *dz, const float *z, const float *t, int N, float grad_scale,
                               double *correct);

/* ---- gradient checking (tests and --gradcheck) --------------------------------------- */
/* f(ctx) must return the scalar loss for the current values of x[0..n). Compares analytic
 * gradient g against central differences with step h at up to max_checks indices spread
 * over x; returns the worst relative error |g - fd| / max(1e-3, |g| + |fd|) (NaN if any).
 * x is restored exactly. */
double nn_gradcheck(double (*f)(void *ctx), void *ctx, float *x, const float *g, size_t n,
                    float h, int max_checks);

/* ---- models ------------------------------------------------------------------------- */
#define NN_PAD 0  /* token id of padding in every vocabulary */
#define NN_UNK 1
#define NN_BOS 2
#define NN_EOS 3

/* What the data tells a model at build time. */
typedef struct nn_dims {
    int vocab;        /* source / input vocabulary size (0 when not text) */
    int vocab_tgt;    /* target vocabulary (translation), else 0 */
    int classes;      /* number of labels (classifiers), else 0 */
    int max_len;      /* longest input sequence a batch will hold */
    int max_len_tgt;  /* longest target sequence */
    int max_batch;    /* most examples in one micro-batch on one rank */
    int features;     /* dense input width (autoencoders), else 0 */
    int image_c, image_h, image_w; /* dense inputs that are images (C,H,W), else 0 */
    const int64_t *vocab_counts; /* (vocab) training-set frequency of each source id
                                    (specials 0), or NULL: unigram tables, subsampling */
} nn_dims;

/* One micro-batch on one rank. Unused fields are 0/NULL. */
typedef struct nn_batch {
    int B;                 /* examples; may be 0 */
    int T;                 /* padded source length */
    const int32_t *x;      /* (B,T) token ids, NN_PAD-padded */
    const int32_t *x_len;  /* (B) true lengths */
    int U;                 /* padded target length (sequence targets) */
    const int32_t *y;      /* (B) labels, or (B,U) target ids NN_PAD-padded */
    const int32_t *y_len;  /* (B) target lengths, or NULL */
    int D;                 /* dense feature width */
    const float *xf;       /* (B,D) dense inputs */
    const int64_t *index;  /* (B) global example indices: keys randomness */
    uint64_t step;         /* optimizer step: keys randomness */
} nn_batch;

/* Sufficient statistics; sums over examples, reduced across ranks by the trainer. */
#define NN_STATS_EXTRA 8
typedef struct nn_stats {
    double loss;      /* summed loss */
    double count;     /* what the loss is normalised by: tokens or examples */
    double correct;   /* argmax hits among count */
    double extra[NN_STATS_EXTRA]; /* model-specific sums (named by the model's stat_names) */
} nn_stats;

typedef struct nn_model nn_model;
typedef struct nn_model_ops {
    const char *name;      /* "bow-classifier" */
    const char *summary;   /* one line for --help */
    const char *data_kind; /* "classify" (label<TAB>text), "lm" (token stream),
                              "parallel" (src<TAB>tgt), "dense" (float matrix) */
    const nn_key *keys;    /* model keys with defaults, terminated by {NULL} */
    const char *const *stat_names; /* names of nn_stats.extra used, NULL-terminated, or NULL */
    /* Registers parameters in m->params and sizes scratch for d.max_batch; does not
     * allocate parameters (the caller calls nn_params_alloc, then ops->bind if set). */
    int (*build)(nn_model *m, const nn_config *cfg, const nn_dims *d);
    int (*bind)(nn_model *m);   /* optional: after nn_params_alloc */
    void (*free)(nn_model *m);
    /* Training: forward and backward on one micro-batch; gradients of
     * grad_scale * (loss sum) are ACCUMULATED into m->params.grad. Adds to *st. */
    int (*forward_backward)(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st);
    /* Evaluation without dropout or gradients; adds to *st. */
    int (*evaluate)(nn_model *m, const nn_batch *b, nn_stats *st);
    /* Optional: decode b->x into out (B, max_out) ids ending with NN_EOS or padded with
     * NN_PAD; beam = 1 is greedy. */
    int (*decode)(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                  int32_t *out);
    /* Optional: continue prompt (n ids) into out (max_out ids); returns count generated. */
    int (*generate)(nn_model *m, const int32_t *prompt, int n, int max_out, float temperature,
                    int top_k, uint64_t seed, int32_t *out);
    /* Optional, for models fitted from sufficient statistics instead of gradients (pca).
     * fit_size: number of doubles of statistics. fit_accumulate ADDS batch b's sums into
     * acc (fit_size doubles, zeroed by the caller). The trainer sums acc over ranks and
     * calls fit_finish with the total and n = the number of examples it covers; it
     * stores the fit in the parameters (so it lands in the checkpoint). */
    size_t (*fit_size)(nn_model *m);
    int (*fit_accumulate)(nn_model *m, const nn_batch *b, double *acc);
    int (*fit_finish)(nn_model *m, const double *acc, double n);
    /* Optional: picture number `panel` (0, 1, ...) for batch b as a grey image img (h,w),
     * values in [0,1], row-major, in a caller buffer of at least 1<<22 floats; *name gets
     * a static name ("reconstructions", "samples", "interpolation"). Returns
     * NN_ERR_UNSUPPORTED past the last panel. */
    int (*visualize)(nn_model *m, const nn_batch *b, int panel, float *img, int *h, int *w,
                     const char **name);
    /* Optional, for models whose gradients are row-sparse (embeddings): the rows of the 2-D
     * parameter param_index that forward_backward gave gradient since the last
     * touched_clear, each once, in any order; *rows points into the model (valid until
     * the next forward_backward or touched_clear). Every row NOT listed has had its
     * gradient left exactly as it was. Returns the count, or -1 (*rows NULL) for
     * "dense": the parameter must be treated as wholly touched (1-D tensors, dense
     * output layers). Lets the trainer zero, reduce and update only those rows.
     * touched_clear must be set with touched_rows; after it every count is 0. */
    int (*touched_rows)(nn_model *m, int param_index, const int32_t **rows);
    void (*touched_clear)(nn_model *m);
} nn_model_ops;

struct nn_model {
    const nn_model_ops *ops;
    nn_params params;
    nn_dims dims;
    uint64_t seed;
    void *impl;            /* owned by the model; released by ops->free */
    /* Optional hook set by the trainer (NULL otherwise). During backward a model calls
     * nn_grad_ready(m, i) once the gradients of parameter i and of EVERY parameter
     * registered after i are final for this micro-batch (parameters registered in forward
     * order finish in reverse), so the trainer can start reducing them while backward
     * goes on. Calling it is optional and never changes results. */
    void (*grad_ready)(void *ctx, size_t lo);
    void *grad_ready_ctx;
    /* Optional, set by the trainer: the words of the output vocabulary (n_words of them),
     * for models that write text into their pictures. NULL: ids are drawn instead. */
    const char *const *words;
    int n_words;
};

static inline void nn_grad_ready(nn_model *m, int param_index) {
    if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, m->params.p[param_index].offset);
}

/* Every model compiled in, NULL-terminated. */
extern const nn_model_ops *const nn_models[];
const nn_model_ops *nn_model_find(const char *name); /* NULL when unknown */

/* Builds, allocates and initialises a model from cfg. On failure returns a negative
 * status, sets nn_error() and leaves m freed. */
int nn_model_init(nn_model *m, const nn_model_ops *ops, const nn_config *cfg, const nn_dims *d,
                  uint64_t seed);
void nn_model_free(nn_model *m); /* zero-safe, idempotent */

/* ---- the models compiled in (listed in nn_models, models/registry.c) ---------------- */
/* bow-classifier (bow.c): mean of token embeddings -> dropout -> linear -> softmax
 * cross-entropy, or one logit + sigmoid BCE when classes == 2. Keys: dim, dropout. */
extern const nn_model_ops nn_bow_classifier_ops;

#include "models/nn_seq.h"
#include "models/nn_s2s.h"
#include "models/nn_ae.h"
#include "models/nn_attn.h" /* attention and transformer layers (attn.c, gpt.c) */
#include "models/nn_cnn.h"  /* image layers and the captioner (conv2d.c, captioner.c) */
#include "models/nn_emb.h"  /* skip-gram/CBOW embeddings, sparse logistic regression */

#endif
