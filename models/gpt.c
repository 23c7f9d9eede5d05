/* gpt.c - the transformer models: `--model gpt` (decoder-only language model) and
 * `--model transformer` (encoder-decoder translation model with cross-attention).
 *
 * Both are built from one "stack": token embedding plus positions, L blocks of multi-head
 * self-attention (causal or with key padding), optional cross-attention to an encoder
 * memory, a position-wise feed-forward network, residual connections and layer norm
 * (pre-LN with a final ln_f, or post-LN). Training is one forward and one explicit backward
 * over (B,T) rows; the vocabulary softmax cross-entropy runs fused and in place over the
 * logits. Generation (gpt) and beam search (transformer) decode one position at a time
 * with per-layer key/value caches, so no past position is recomputed; the encoder memory
 * is projected to cross-attention keys and values once per source batch.
 *
 * Does not: allocate in forward/backward (activations and scratch are carved from one
 * block sized at build time for max_batch x context; decode and generate allocate their
 * caches on entry), look at ranks, or touch files. Sequences longer than `context` are the
 * trainer's business (NN_ERR_SHAPE here).
 *
 * gpt parameters (PyTorch mapping in tests/torch_gpt.py):
 *   wte (V,C), wpe (context,C) [pos=learned], layer_<l>/ln1/{g,b},
 *   layer_<l>/attn/{w_q,w_k,w_v,w_o} (C,C) and {b_q,b_k,b_v,b_o} (C), layer_<l>/ln2/{g,b},
 *   layer_<l>/ffn/w1 (FF,C), b1 (FF), w2 (C,FF), b2 (C), ln_f/{g,b} [norm=pre],
 *   lm_head/w (V,C) [tie=0].
 * transformer parameters: encoder/emb, encoder/pos, encoder/layer_<l>/... as above,
 *   encoder/ln_f; decoder/emb, decoder/pos, decoder/layer_<l>/{ln1,attn,ln_cross,cross,
 *   ln2,ffn}/..., decoder/ln_f, decoder/out/w [tie=0]. cross/w_q acts on the decoder
 *   stream, cross/w_k and w_v on the encoder output. */
#include <math.h>
#include <string.h>

#include "models/nn.h"

/* ---- one stack of blocks ------------------------------------------------------------------ */

typedef struct blk {
    int first_param;                  /* registry index of this block's first tensor */
    nn_mha self, cross;
    float *ln1_g, *ln1_b, *lnc_g, *lnc_b, *ln2_g, *ln2_b, *w1, *b1, *w2, *b2;
    float *dln1_g, *dln1_b, *dlnc_g, *dlnc_b, *dln2_g, *dln2_b, *dw1, *db1, *dw2, *db2;
    /* activations for N = B*T rows (capacity Bmax*Tmax), S memory rows per example */
    float *x_in;                      /* (N,C) stream entering the block */
    float *ln1, *ln1_mean, *ln1_rstd; /* (N,C) pre-LN: norm of x_in; (N) stats */
    float *qkv;                       /* (N,3C) */
    float *att;                       /* (B,NH,T,T) probabilities */
    float *atty;                      /* (N,C) heads concatenated, before w_o */
    float *r1;                        /* (N,C) post-LN: x_in + attention */
    float *x_mid;                     /* (N,C) after self-attention */
    float *lnc, *lnc_mean, *lnc_rstd; /* cross: (N,C) pre-LN norm of x_mid; (N) */
    float *qc;                        /* cross: (N,C) queries */
    float *kvc;                       /* cross: (B*S,2C) keys and values of the memory */
    float *attc;                      /* cross: (B,NH,T,S) */
    float *attyc;                     /* cross: (N,C) */
    float *rc;                        /* cross, post-LN: x_mid + cross-attention */
    float *x_mid2;                    /* (N,C) after cross-attention (== x_mid without) */
    float *ln2, *ln2_mean, *ln2_rstd; /* (N,C) pre-LN: norm of x_mid2 */
    float *h, *a;                     /* (N,FF) FFN pre-activation and activation */
    float *gt;                        /* (N,FF) GELU's tanh, kept for backward */
    float *r2;                        /* (N,C) post-LN: x_mid2 + FFN */
    float *mask_attn, *mask_cross, *mask_ffn; /* (N,C) dropout masks, when dropout > 0 */
} blk;

typedef struct stack {
    int L, NH, C, FF, Tmax, Smax, V, Bmax;
    int relu, post, causal, cross, learned, id;
    float dropout;
    float *emb, *demb;   /* (V,C) */
    float *pos, *dpos;   /* (Tmax,C): learned parameter or fixed sinusoid table (dpos NULL) */
    float *lnf_g, *lnf_b, *dlnf_g, *dlnf_b;
    blk *blk;
    float *x_out, *lnf, *lnf_mean, *lnf_rstd; /* (N,C), (N) */
    float *mask_emb;                          /* (N,C) */
    nn_model *grad_hook; /* set during a backward whose finished blocks may be announced */
} stack;

/* Backward scratch shared by the stacks of a model. */
typedef struct scratch {
    float *dres, *dtmp, *dtmp2, *datty; /* (N,C) */
    float *dqkv;                        /* (N,3C) */
    float *dkv;                         /* (Bmax*Smax,2C) */
    float *dff;                         /* (N,FF) */
    float *datt;                        /* (2,Tmax,max(Tmax,Smax)) */
    int64_t *row_index;                 /* (N) dropout keys */
} scratch;

/* Hands out 64-byte aligned slices of a block; with base == NULL only counts. */
static float *take(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

static void stack_carve(stack *s, float *base, size_t *off) {
    size_t N = (size_t)s->Bmax * s->Tmax, C = s->C, FF = s->FF, M = (size_t)s->Bmax * s->Smax;
    int pre = !s->post, drop = s->dropout > 0.0f, x = s->cross;
    for (int l = 0; l < s->L; l++) {
        blk *b = &s->blk[l];
        b->x_in = take(base, off, N * C);
        b->ln1 = pre ? take(base, off, N * C) : NULL;
        b->ln1_mean = take(base, off, N);
        b->ln1_rstd = take(base, off, N);
        b->qkv = take(base, off, 3 * N * C);
        b->att = take(base, off, N * s->NH * s->Tmax);
        b->atty = take(base, off, N * C);
        b->r1 = pre ? NULL : take(base, off, N * C);
        b->x_mid = take(base, off, N * C);
        b->lnc = x && pre ? take(base, off, N * C) : NULL;
        b->lnc_mean = x ? take(base, off, N) : NULL;
        b->lnc_rstd = x ? take(base, off, N) : NULL;
        b->qc = x ? take(base, off, N * C) : NULL;
        b->kvc = x ? take(base, off, 2 * M * C) : NULL;
        b->attc = x ? take(base, off, N * s->NH * s->Smax) : NULL;
        b->attyc = x ? take(base, off, N * C) : NULL;
        b->rc = x && !pre ? take(base, off, N * C) : NULL;
        b->x_mid2 = x ? take(base, off, N * C) : b->x_mid;
        b->ln2 = pre ? take(base, off, N * C) : NULL;
        b->ln2_mean = take(base, off, N);
        b->ln2_rstd = take(base, off, N);
        b->h = take(base, off, N * FF);
        b->a = take(base, off, N * FF);
        b->gt = s->relu ? NULL : take(base, off, N * FF);
        b->r2 = pre ? NULL : take(base, off, N * C);
        b->mask_attn = drop ? take(base, off, N * C) : NULL;
        b->mask_cross = drop && x ? take(base, off, N * C) : NULL;
        b->mask_ffn = drop ? take(base, off, N * C) : NULL;
    }
    if (!s->learned) s->pos = take(base, off, (size_t)s->Tmax * C);
    s->x_out = take(base, off, N * C);
    s->lnf = pre ? take(base, off, N * C) : NULL;
    s->lnf_mean = take(base, off, N);
    s->lnf_rstd = take(base, off, N);
    s->mask_emb = drop ? take(base, off, N * C) : NULL;
}

static void scratch_carve(scratch *w, float *base, size_t *off, size_t N, size_t M, int C, int FF,
                          size_t att) {
    w->dres = take(base, off, N * C);
    w->dtmp = take(base, off, N * C);
    w->dtmp2 = take(base, off, N * C);
    w->datty = take(base, off, N * C);
    w->dqkv = take(base, off, 3 * N * C);
    w->dkv = M ? take(base, off, 2 * M * C) : NULL;
    w->dff = take(base, off, N * FF);
    w->datt = take(base, off, 2 * att);
}

static int add_vec(nn_params *ps, const char *name, int n, int init, float **d, float **gr) {
    int shape[1] = {n};
    return nn_params_add(ps, name, 1, shape, init, 0.0f, d, gr) < 0 ? NN_ERR_NOMEM : NN_OK;
}
static int add_mat(nn_params *ps, const char *name, int r, int c, float std, float **d,
                   float **gr) {
    int shape[2] = {r, c};
    return nn_params_add(ps, name, 2, shape, NN_INIT_NORMAL, std, d, gr) < 0 ? NN_ERR_NOMEM
                                                                            : NN_OK;
}

/* Registers emb_name (V,C), pos_name (Tmax,C) when learned, prefix+"layer_<l>/..." and
 * prefix+"ln_f/..." (pre-LN). */
static int stack_register(stack *s, nn_params *ps, const char *prefix, const char *emb_name,
                          const char *pos_name) {
    char name[NN_NAME_MAX];
    const float std = 0.02f, res_std = 0.02f / sqrtf(2.0f * (float)s->L);
    int rc;
    if ((rc = add_mat(ps, emb_name, s->V, s->C, std, &s->emb, &s->demb))) return rc;
    if (s->learned && (rc = add_mat(ps, pos_name, s->Tmax, s->C, 0.01f, &s->pos, &s->dpos)))
        return rc;
    for (int l = 0; l < s->L; l++) {
        blk *b = &s->blk[l];
        b->first_param = ps->n;
#define VEC(suffix, n, init, d, gr)                                         \
    do {                                                                    \
        snprintf(name, sizeof name, "%slayer_%d/%s", prefix, l, suffix);    \
        if ((rc = add_vec(ps, name, n, init, d, gr))) return rc;            \
    } while (0)
#define MAT(suffix, r, c, sd, d, gr)                                        \
    do {                                                                    \
        snprintf(name, sizeof name, "%slayer_%d/%s", prefix, l, suffix);    \
        if ((rc = add_mat(ps, name, r, c, sd, d, gr))) return rc;           \
    } while (0)
        VEC("ln1/g", s->C, NN_INIT_ONE, &b->ln1_g, &b->dln1_g);
        VEC("ln1/b", s->C, NN_INIT_ZERO, &b->ln1_b, &b->dln1_b);
        snprintf(name, sizeof name, "%slayer_%d/attn", prefix, l);
        if ((rc = nn_mha_register(&b->self, ps, name, s->C, s->NH, std, res_std))) return rc;
        if (s->cross) {
            VEC("ln_cross/g", s->C, NN_INIT_ONE, &b->lnc_g, &b->dlnc_g);
            VEC("ln_cross/b", s->C, NN_INIT_ZERO, &b->lnc_b, &b->dlnc_b);
            snprintf(name, sizeof name, "%slayer_%d/cross", prefix, l);
            if ((rc = nn_mha_register(&b->cross, ps, name, s->C, s->NH, std, res_std))) return rc;
        }
        VEC("ln2/g", s->C, NN_INIT_ONE, &b->ln2_g, &b->dln2_g);
        VEC("ln2/b", s->C, NN_INIT_ZERO, &b->ln2_b, &b->dln2_b);
        MAT("ffn/w1", s->FF, s->C, std, &b->w1, &b->dw1);
        VEC("ffn/b1", s->FF, NN_INIT_ZERO, &b->b1, &b->db1);
        MAT("ffn/w2", s->C, s->FF, res_std, &b->w2, &b->dw2);
        VEC("ffn/b2", s->C, NN_INIT_ZERO, &b->b2, &b->db2);
#undef VEC
#undef MAT
    }
    if (!s->post) {
        snprintf(name, sizeof name, "%sln_f/g", prefix);
        if ((rc = add_vec(ps, name, s->C, NN_INIT_ONE, &s->lnf_g, &s->dlnf_g))) return rc;
        snprintf(name, sizeof name, "%sln_f/b", prefix);
        if ((rc = add_vec(ps, name, s->C, NN_INIT_ZERO, &s->lnf_b, &s->dlnf_b))) return rc;
    }
    return NN_OK;
}

/* ---- stack forward ------------------------------------------------------------------------ */

typedef struct fwd_ctx {
    int train;
    const int64_t *index;
    uint64_t step, seed;
} fwd_ctx;

/* Dropout of buf (B*T,C) in place; key of a (token, site): unique over examples, stacks,
 * positions and the 4L+1 sites of a stack. */
static void dropout_apply(const stack *s, scratch *w, float *buf, float *mask, int B, int T,
                          int site, const fwd_ctx *f) {
    size_t N = (size_t)B * T, C = s->C;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int64_t ex = f->index ? f->index[b] : b;
            w->row_index[(size_t)b * T + t] =
                ((ex * 2 + s->id) * s->Tmax + t) * (int64_t)(4 * s->L + 1) + site;
        }
    nn_dropout_forward(w->dtmp2, mask, buf, N * C, (int)C, s->dropout, f->seed, f->step,
                       w->row_index);
    memcpy(buf, w->dtmp2, N * C * sizeof *buf);
}

static void activation(const stack *s, float *a, const float *h, size_t n) {
    if (s->relu) nn_frelu_forward(a, h, n);
    else nn_fgelu_forward(a, h, n);
}

/* Cross-attention keys and values of the memory: kvc (B*S,2C) = [mem w_k^T + b_k | ...]. */
static void cross_kv_forward(const nn_mha *a, float *kvc, const float *mem, int M) {
    int C = a->C;
    if (a->w_v == a->w_k + (size_t)C * C && a->b_v == a->b_k + C) {
        nn_proj_forward(kvc, 2 * C, mem, a->w_k, a->b_k, M, C, 2 * C);
    } else {
        nn_proj_forward(kvc, 2 * C, mem, a->w_k, a->b_k, M, C, C);
        nn_proj_forward(kvc + C, 2 * C, mem, a->w_v, a->b_v, M, C, C);
    }
}

/* Runs the stack over ids (B,T); returns the output stream (B*T,C) (after ln_f when pre-LN).
 * key_len (B) or NULL masks padded keys of the self-attention; mem (B*S,C) and mem_len (B)
 * feed cross-attention. */
static const float *stack_forward(stack *s, scratch *w, const int32_t *ids, int B, int T,
                                  const int32_t *key_len, const float *mem, int S,
                                  const int32_t *mem_len, const fwd_ctx *f) {
    int N = B * T, C = s->C, HS = C / s->NH;
    size_t NC = (size_t)N * C;
    int drop = f->train && s->dropout > 0.0f;
    float *tmp = w->dtmp;
    nn_embed_pos_forward(s->blk[0].x_in, ids, s->emb, s->pos, B, T, C);
    if (drop) dropout_apply(s, w, s->blk[0].x_in, s->mask_emb, B, T, 0, f);
    for (int l = 0; l < s->L; l++) {
        blk *b = &s->blk[l];
        float *xout = l + 1 < s->L ? s->blk[l + 1].x_in : s->x_out;
        int site = 1 + 4 * l;
        /* self-attention */
        const float *ain = b->x_in;
        if (!s->post) {
            nn_flayernorm_forward(b->ln1, b->ln1_mean, b->ln1_rstd, b->x_in, b->ln1_g, b->ln1_b,
                                  N, C);
            ain = b->ln1;
        }
        nn_mha_qkv_forward(&b->self, b->qkv, ain, N);
        nn_sdpa_forward(b->atty, C, b->att, b->qkv, 3 * C, b->qkv + C, 3 * C, b->qkv + 2 * C,
                        3 * C, key_len, s->causal, B, T, T, s->NH, HS);
        nn_proj_forward(tmp, C, b->atty, b->self.w_o, b->self.b_o, N, C, C);
        if (drop) dropout_apply(s, w, tmp, b->mask_attn, B, T, site, f);
        if (!s->post) {
            nn_add3(b->x_mid, b->x_in, tmp, NC);
        } else {
            nn_add3(b->r1, b->x_in, tmp, NC);
            nn_flayernorm_forward(b->x_mid, b->ln1_mean, b->ln1_rstd, b->r1, b->ln1_g, b->ln1_b,
                                  N, C);
        }
        /* cross-attention */
        if (s->cross) {
            const float *cin = b->x_mid;
            if (!s->post) {
                nn_flayernorm_forward(b->lnc, b->lnc_mean, b->lnc_rstd, b->x_mid, b->lnc_g,
                                      b->lnc_b, N, C);
                cin = b->lnc;
            }
            nn_proj_forward(b->qc, C, cin, b->cross.w_q, b->cross.b_q, N, C, C);
            cross_kv_forward(&b->cross, b->kvc, mem, B * S);
            nn_sdpa_forward(b->attyc, C, b->attc, b->qc, C, b->kvc, 2 * C, b->kvc + C, 2 * C,
                            mem_len, 0, B, T, S, s->NH, HS);
            nn_proj_forward(tmp, C, b->attyc, b->cross.w_o, b->cross.b_o, N, C, C);
            if (drop) dropout_apply(s, w, tmp, b->mask_cross, B, T, site + 1, f);
            if (!s->post) {
                nn_add3(b->x_mid2, b->x_mid, tmp, NC);
            } else {
                nn_add3(b->rc, b->x_mid, tmp, NC);
                nn_flayernorm_forward(b->x_mid2, b->lnc_mean, b->lnc_rstd, b->rc, b->lnc_g,
                                      b->lnc_b, N, C);
            }
        }
        /* feed-forward */
        const float *fin = b->x_mid2;
        if (!s->post) {
            nn_flayernorm_forward(b->ln2, b->ln2_mean, b->ln2_rstd, b->x_mid2, b->ln2_g,
                                  b->ln2_b, N, C);
            fin = b->ln2;
        }
        nn_proj_forward(b->h, s->FF, fin, b->w1, b->b1, N, C, s->FF);
        if (s->relu) nn_frelu_forward(b->a, b->h, (size_t)N * s->FF);
        else nn_fgelu_forward_cache(b->a, b->gt, b->h, (size_t)N * s->FF);
        nn_proj_forward(tmp, C, b->a, b->w2, b->b2, N, s->FF, C);
        if (drop) dropout_apply(s, w, tmp, b->mask_ffn, B, T, site + 2, f);
        if (!s->post) {
            nn_add3(xout, b->x_mid2, tmp, NC);
        } else {
            nn_add3(b->r2, b->x_mid2, tmp, NC);
            nn_flayernorm_forward(xout, b->ln2_mean, b->ln2_rstd, b->r2, b->ln2_g, b->ln2_b, N,
                                  C);
        }
    }
    if (s->post) return s->x_out;
    nn_flayernorm_forward(s->lnf, s->lnf_mean, s->lnf_rstd, s->x_out, s->lnf_g, s->lnf_b, N, C);
    return s->lnf;
}

/* ---- stack backward ------------------------------------------------------------------------ */

static void mul3(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
}

/* dst = src * mask (dropout active) or src itself. */
static const float *undrop(float *dst, const float *src, const float *mask, size_t n) {
    if (!mask) return src;
    mul3(dst, src, mask, n);
    return dst;
}

/* FFN branch: given df (N,C), dx (N,C) is OVERWRITTEN with the gradient at the branch
 * input x; parameter gradients accumulate. */
static void ffn_backward(const stack *s, scratch *w, blk *b, float *dx, const float *df,
                         const float *x, int N) {
    size_t NF = (size_t)N * s->FF;
    nn_proj_backward_to(w->dff, b->dw2, b->db2, df, s->C, b->a, b->w2, N, s->FF, s->C);
    if (s->relu) nn_frelu_backward_inplace(w->dff, b->h, NF);
    else nn_fgelu_backward_cached(w->dff, b->h, b->gt, NF);
    nn_proj_backward_to(dx, b->dw1, b->db1, w->dff, s->FF, x, b->w1, N, s->C, s->FF);
}

/* Self-attention branch: given dp (N,C) at the w_o output, adds the gradient at the branch
 * input x into dx (zeroed first when overwrite). dp is consumed before dx is written. */
static void self_backward(const stack *s, scratch *w, blk *b, float *dx, int overwrite,
                          const float *dp, const float *x, const int32_t *key_len, int B, int T) {
    int N = B * T, C = s->C;
    nn_proj_backward_to(w->datty, b->self.dw_o, b->self.db_o, dp, C, b->atty, b->self.w_o, N, C,
                        C);
    memset(w->dqkv, 0, (size_t)N * 3 * C * sizeof *w->dqkv);
    if (overwrite) memset(dx, 0, (size_t)N * C * sizeof *dx);
    nn_sdpa_backward(w->dqkv, w->dqkv + C, w->dqkv + 2 * C, w->datt, w->datty, C, b->att, b->qkv,
                     3 * C, b->qkv + C, 3 * C, b->qkv + 2 * C, 3 * C, key_len, s->causal, B, T, T,
                     s->NH, C / s->NH);
    nn_mha_qkv_backward(&b->self, dx, w->dqkv, x, N);
}

/* Cross-attention branch: as self_backward for the query input x; the memory gradient is
 * ADDED to dmem (B*S,C). */
static void cross_backward(const stack *s, scratch *w, blk *b, float *dx, int overwrite,
                           const float *dp, const float *x, const float *mem, float *dmem,
                           const int32_t *mem_len, int B, int T, int S) {
    int N = B * T, C = s->C, M = B * S;
    nn_proj_backward_to(w->datty, b->cross.dw_o, b->cross.db_o, dp, C, b->attyc, b->cross.w_o, N,
                        C, C);
    memset(w->dqkv, 0, (size_t)N * C * sizeof *w->dqkv);
    memset(w->dkv, 0, (size_t)M * 2 * C * sizeof *w->dkv);
    nn_sdpa_backward(w->dqkv, w->dkv, w->dkv + C, w->datt, w->datty, C, b->attc, b->qc, C,
                     b->kvc, 2 * C, b->kvc + C, 2 * C, mem_len, 0, B, T, S, s->NH, C / s->NH);
    if (overwrite) memset(dx, 0, (size_t)N * C * sizeof *dx);
    nn_proj_backward(dx, b->cross.dw_q, b->cross.db_q, w->dqkv, C, x, b->cross.w_q, N, C, C);
    nn_proj_backward(dmem, b->cross.dw_k, b->cross.db_k, w->dkv, 2 * C, mem, b->cross.w_k, M, C,
                     C);
    nn_proj_backward(dmem, b->cross.dw_v, b->cross.db_v, w->dkv + C, 2 * C, mem, b->cross.w_v, M,
                     C, C);
}

/* dout (B*T,C): gradient at the stack output (ln_f output when pre-LN); it is read before
 * the scratch is reused, so it may be w->dtmp. Accumulates every parameter gradient of the
 * stack and, with cross-attention, the memory gradient into dmem (B*S,C). */
static void stack_backward(stack *s, scratch *w, const int32_t *ids, int B, int T,
                           const int32_t *key_len, const float *dout, const float *mem,
                           float *dmem, int S, const int32_t *mem_len) {
    int N = B * T, C = s->C;
    size_t NC = (size_t)N * C;
    if (!s->post) {
        memset(w->dres, 0, NC * sizeof *w->dres);
        nn_flayernorm_backward(w->dres, s->dlnf_g, s->dlnf_b, dout, s->x_out, s->lnf_mean,
                               s->lnf_rstd, s->lnf_g, N, C);
    } else if (dout != w->dres) {
        memcpy(w->dres, dout, NC * sizeof *w->dres);
    }
    for (int l = s->L - 1; l >= 0; l--) {
        blk *b = &s->blk[l];
        if (!s->post) {
            /* dres = d out = d x_mid2 (residual) + through ffn(ln2(x_mid2)) */
            const float *df = undrop(w->dtmp, w->dres, b->mask_ffn, NC);
            ffn_backward(s, w, b, w->dtmp2, df, b->ln2, N);
            nn_flayernorm_backward(w->dres, b->dln2_g, b->dln2_b, w->dtmp2, b->x_mid2,
                                   b->ln2_mean, b->ln2_rstd, b->ln2_g, N, C);
            if (s->cross) { /* dres = d x_mid2 = d x_mid + through cross(lnc(x_mid)) */
                const float *dp = undrop(w->dtmp, w->dres, b->mask_cross, NC);
                cross_backward(s, w, b, w->dtmp2, 1, dp, b->lnc, mem, dmem, mem_len, B, T, S);
                nn_flayernorm_backward(w->dres, b->dlnc_g, b->dlnc_b, w->dtmp2, b->x_mid,
                                       b->lnc_mean, b->lnc_rstd, b->lnc_g, N, C);
            }
            /* dres = d x_mid = d x_in (residual) + through attn(ln1(x_in)) */
            const float *dp = undrop(w->dtmp, w->dres, b->mask_attn, NC);
            self_backward(s, w, b, w->dtmp2, 1, dp, b->ln1, key_len, B, T);
            nn_flayernorm_backward(w->dres, b->dln1_g, b->dln1_b, w->dtmp2, b->x_in,
                                   b->ln1_mean, b->ln1_rstd, b->ln1_g, N, C);
        } else {
            /* dres = d LN2(r2): dtmp2 = d r2 */
            memset(w->dtmp2, 0, NC * sizeof *w->dtmp2);
            nn_flayernorm_backward(w->dtmp2, b->dln2_g, b->dln2_b, w->dres, b->r2, b->ln2_mean,
                                   b->ln2_rstd, b->ln2_g, N, C);
            const float *df = undrop(w->dtmp, w->dtmp2, b->mask_ffn, NC);
            ffn_backward(s, w, b, w->dres, df, b->x_mid2, N);
            nn_add_inplace(w->dtmp2, w->dres, NC); /* dtmp2 = d x_mid2 */
            if (s->cross) {
                memset(w->dres, 0, NC * sizeof *w->dres); /* dres = d rc */
                nn_flayernorm_backward(w->dres, b->dlnc_g, b->dlnc_b, w->dtmp2, b->rc,
                                       b->lnc_mean, b->lnc_rstd, b->lnc_g, N, C);
                const float *dp = undrop(w->dtmp, w->dres, b->mask_cross, NC);
                cross_backward(s, w, b, w->dres, 0, dp, b->x_mid, mem, dmem, mem_len, B, T, S);
                memcpy(w->dtmp2, w->dres, NC * sizeof *w->dtmp2); /* dtmp2 = d x_mid */
            }
            memset(w->dres, 0, NC * sizeof *w->dres); /* dres = d r1 */
            nn_flayernorm_backward(w->dres, b->dln1_g, b->dln1_b, w->dtmp2, b->r1, b->ln1_mean,
                                   b->ln1_rstd, b->ln1_g, N, C);
            const float *dp = undrop(w->dtmp, w->dres, b->mask_attn, NC);
            self_backward(s, w, b, w->dres, 0, dp, b->x_in, key_len, B, T);
        }
        /* block l and everything registered after it are final: the trainer may start
         * reducing them while the blocks below run */
        if (s->grad_hook) nn_grad_ready(s->grad_hook, s->blk[l].first_param);
    }
    if (s->mask_emb) mul3(w->dres, w->dres, s->mask_emb, NC);
    nn_embed_pos_backward(s->demb, s->dpos, w->dres, ids, B, T, C);
}

/* ---- incremental decoding ------------------------------------------------------------------ */

/* Per-call scratch of stack_step, for R = H*T0 rows. */
typedef struct step_buf {
    float *x, *y, *ln, *qkv, *att, *atty, *tmp, *mid, *h, *a, *q;
    float *mean, *rstd;
} step_buf;

static size_t step_buf_carve(step_buf *sb, float *base, const stack *s, int R, int Smax) {
    size_t off = 0, C = s->C;
    sb->x = take(base, &off, (size_t)R * C);
    sb->y = take(base, &off, (size_t)R * C);
    sb->ln = take(base, &off, (size_t)R * C);
    sb->qkv = take(base, &off, (size_t)R * 3 * C);
    sb->att = take(base, &off, (size_t)R * s->NH * (Smax > s->Tmax ? Smax : s->Tmax));
    sb->atty = take(base, &off, (size_t)R * C);
    sb->tmp = take(base, &off, (size_t)R * C);
    sb->mid = take(base, &off, (size_t)R * C);
    sb->q = take(base, &off, (size_t)R * C);
    sb->h = take(base, &off, (size_t)R * s->FF);
    sb->a = take(base, &off, (size_t)R * s->FF);
    sb->mean = take(base, &off, (size_t)R);
    sb->rstd = take(base, &off, (size_t)R);
    return off;
}

/* Post-LN residual: x = LN(x + y); pre-LN: x += y. */
static void residual(const stack *s, float *x, const float *y, const float *g, const float *bb,
                     step_buf *sb, int R) {
    nn_add_inplace(x, y, (size_t)R * s->C);
    if (s->post) {
        memcpy(sb->ln, x, (size_t)R * s->C * sizeof *x);
        nn_flayernorm_forward(x, sb->mean, sb->rstd, sb->ln, g, bb, R, s->C);
    }
}

/* The input of a branch: LN(x) into sb->ln when pre-LN, else x. */
static const float *branch_in(const stack *s, const float *x, const float *g, const float *bb,
                              step_buf *sb, int R) {
    if (s->post) return x;
    nn_flayernorm_forward(sb->ln, sb->mean, sb->rstd, x, g, bb, R, s->C);
    return sb->ln;
}

/* Feeds T0 new tokens of each of H sequences at positions [p0, p0+T0) through the stack in
 * evaluation mode. ids (H,T0). kc, vc: per layer l, sequence j, the cache rows start at
 * kc + l*lstride + j*cstride (stride C between positions); positions < p0 must be filled,
 * the new ones are appended. Cross-attention (s->cross) reads memkv[l] + ex[j]*S*2C with
 * mem_len[ex[j]] valid keys. Returns the output rows (H*T0,C) (after ln_f when pre-LN). */
static const float *stack_step(stack *s, step_buf *sb, const int32_t *ids, int H, int T0, int p0,
                               float *kc, float *vc, size_t lstride, size_t cstride,
                               float *const *memkv, const int *ex, int S,
                               const int32_t *mem_len) {
    int C = s->C, HS = C / s->NH, R = H * T0;
    float *x = sb->x;
    nn_embed_pos_forward(x, ids, s->emb, s->pos + (size_t)p0 * C, H, T0, C);
    for (int l = 0; l < s->L; l++) {
        blk *b = &s->blk[l];
        const float *ain = branch_in(s, x, b->ln1_g, b->ln1_b, sb, R);
        nn_mha_qkv_forward(&b->self, sb->qkv, ain, R);
        for (int j = 0; j < H; j++) {
            float *kj = kc + l * lstride + j * cstride, *vj = vc + l * lstride + j * cstride;
            for (int t = 0; t < T0; t++) {
                const float *row = sb->qkv + ((size_t)j * T0 + t) * 3 * C;
                memcpy(kj + (size_t)(p0 + t) * C, row + C, (size_t)C * sizeof *kj);
                memcpy(vj + (size_t)(p0 + t) * C, row + 2 * C, (size_t)C * sizeof *vj);
            }
            nn_sdpa_forward(sb->atty + (size_t)j * T0 * C, C, sb->att, sb->qkv + (size_t)j * T0 * 3 * C,
                            3 * C, kj, C, vj, C, NULL, 1, 1, T0, p0 + T0, s->NH, HS);
        }
        nn_proj_forward(sb->tmp, C, sb->atty, b->self.w_o, b->self.b_o, R, C, C);
        residual(s, x, sb->tmp, b->ln1_g, b->ln1_b, sb, R);
        if (s->cross) {
            const float *cin = branch_in(s, x, b->lnc_g, b->lnc_b, sb, R);
            nn_proj_forward(sb->q, C, cin, b->cross.w_q, b->cross.b_q, R, C, C);
            for (int j = 0; j < H; j++) {
                const float *kv = memkv[l] + (size_t)ex[j] * S * 2 * C;
                nn_sdpa_forward(sb->atty + (size_t)j * T0 * C, C, sb->att, sb->q + (size_t)j * T0 * C,
                                C, kv, 2 * C, kv + C, 2 * C, mem_len + ex[j], 0, 1, T0, S, s->NH,
                                HS);
            }
            nn_proj_forward(sb->tmp, C, sb->atty, b->cross.w_o, b->cross.b_o, R, C, C);
            residual(s, x, sb->tmp, b->lnc_g, b->lnc_b, sb, R);
        }
        const float *fin = branch_in(s, x, b->ln2_g, b->ln2_b, sb, R);
        nn_proj_forward(sb->h, s->FF, fin, b->w1, b->b1, R, C, s->FF);
        activation(s, sb->a, sb->h, (size_t)R * s->FF);
        nn_proj_forward(sb->tmp, C, sb->a, b->w2, b->b2, R, s->FF, C);
        residual(s, x, sb->tmp, b->ln2_g, b->ln2_b, sb, R);
    }
    if (s->post) return x;
    nn_flayernorm_forward(sb->y, sb->mean, sb->rstd, x, s->lnf_g, s->lnf_b, R, C);
    return sb->y;
}

/* ---- shared model plumbing ------------------------------------------------------------------ */

static const nn_key gpt_keys[] = {
    {"layers", "4", "transformer blocks"},
    {"heads", "4", "attention heads (dim must be a multiple)"},
    {"dim", "256", "model width"},
    {"ff", "1024", "feed-forward width"},
    {"context", "128", "longest sequence (learned positions, key/value cache)"},
    {"activation", "gelu", "feed-forward nonlinearity: gelu|relu"},
    {"norm", "pre", "layer norm placement: pre|post"},
    {"pos", "learned", "positional encoding: learned|sinusoidal"},
    {"tie", "1", "tie the output projection to the token embedding"},
    {"dropout", "0", "dropout on embeddings and on every residual branch"},
    {"label-smoothing", "0", "label smoothing of the training loss"},
    {NULL, NULL, NULL}};

static const nn_key transformer_keys[] = {
    {"layers", "3", "encoder blocks and decoder blocks (each)"},
    {"heads", "4", "attention heads (dim must be a multiple)"},
    {"dim", "256", "model width"},
    {"ff", "1024", "feed-forward width"},
    {"context", "128", "longest source or target sequence"},
    {"activation", "relu", "feed-forward nonlinearity: gelu|relu"},
    {"norm", "pre", "layer norm placement: pre|post"},
    {"pos", "sinusoidal", "positional encoding: learned|sinusoidal"},
    {"tie", "1", "tie the output projection to the decoder embedding"},
    {"dropout", "0.1", "dropout on embeddings and on every residual branch"},
    {"label-smoothing", "0.1", "label smoothing of the training loss"},
    {NULL, NULL, NULL}};

typedef struct hparams {
    long L, NH, C, FF, T;
    double drop, ls;
    int relu, post, learned, tie;
} hparams;

static int read_hparams(const nn_config *cfg, const nn_key *keys, hparams *h) {
    const char *act, *norm, *pos;
    int rc;
    if ((rc = nn_config_int(cfg, "layers", atol(keys[0].def), &h->L)) ||
        (rc = nn_config_int(cfg, "heads", 4, &h->NH)) ||
        (rc = nn_config_int(cfg, "dim", 256, &h->C)) ||
        (rc = nn_config_int(cfg, "ff", 1024, &h->FF)) ||
        (rc = nn_config_int(cfg, "context", 128, &h->T)) ||
        (rc = nn_config_choice(cfg, "activation", keys[5].def, "gelu|relu", &act)) ||
        (rc = nn_config_choice(cfg, "norm", "pre", "pre|post", &norm)) ||
        (rc = nn_config_choice(cfg, "pos", keys[7].def, "learned|sinusoidal", &pos)) ||
        (rc = nn_config_bool(cfg, "tie", 1, &h->tie)) ||
        (rc = nn_config_float(cfg, "dropout", atof(keys[9].def), &h->drop)) ||
        (rc = nn_config_float(cfg, "label-smoothing", atof(keys[10].def), &h->ls)))
        return rc;
    if (h->L < 1 || h->NH < 1 || h->C < 1 || h->FF < 1 || h->T < 1 || h->L > 1024 ||
        h->C > 65536 || h->FF > 1 << 20 || h->T > 1 << 16 || h->C % h->NH) {
        nn_set_error("need layers, heads, dim, ff, context >= 1 and dim a multiple of heads "
                     "(layers=%ld heads=%ld dim=%ld ff=%ld context=%ld)",
                     h->L, h->NH, h->C, h->FF, h->T);
        return NN_ERR_CONFIG;
    }
    if (!(h->drop >= 0.0 && h->drop < 1.0) || !(h->ls >= 0.0 && h->ls < 1.0)) {
        nn_set_error("dropout (%g) and label-smoothing (%g) must be in [0,1)", h->drop, h->ls);
        return NN_ERR_CONFIG;
    }
    h->relu = !strcmp(act, "relu");
    h->post = !strcmp(norm, "post");
    h->learned = !strcmp(pos, "learned");
    return NN_OK;
}

static void stack_setup(stack *s, const hparams *h, int V, int Bmax, int causal, int cross,
                        int Smax, int id) {
    s->L = (int)h->L, s->NH = (int)h->NH, s->C = (int)h->C, s->FF = (int)h->FF;
    s->Tmax = (int)h->T, s->Smax = Smax, s->V = V, s->Bmax = Bmax;
    s->relu = h->relu, s->post = h->post, s->learned = h->learned;
    s->causal = causal, s->cross = cross, s->id = id;
    s->dropout = (float)h->drop;
}

static int check_ids(const int32_t *ids, size_t n, int V, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            nn_set_error("%s id %d at %zu outside the vocabulary of %d", what, (int)ids[i], i, V);
            return NN_ERR_DATA;
        }
    return NN_OK;
}

/* ---- gpt ------------------------------------------------------------------------------------- */

typedef struct gpt {
    stack dec;
    scratch w;
    int tie, V, Tmax, Bmax;
    float smoothing;
    float *head, *dhead; /* (V,C) when untied */
    float *mem;          /* the one activation block */
    float *logits;       /* (N,V); overwritten by dlogits in training */
    float *dWT;          /* (C,V) output projection gradient, transposed */
    nn_bf16_pair dpack;  /* bf16 mode on AMX: dlogits in tile layouts, straight from the
                          * cross-entropy (the fp32 dlogits are never written) */
    float *kcache, *vcache; /* (L,Tmax,C) generation caches */
    float *probs;        /* (V) sampling scratch */
    step_buf sb;         /* generation scratch for Tmax rows */
} gpt;

static void gpt_free(nn_model *m) {
    gpt *g = m->impl;
    if (!g) return;
    free(g->mem);
    nn_bf16_pair_free(&g->dpack);
    free(g->w.row_index);
    free(g->dec.blk);
    free(g);
    m->impl = NULL;
}

static size_t gpt_carve(gpt *g, float *base) {
    size_t off = 0, N = (size_t)g->Bmax * g->Tmax;
    stack *s = &g->dec;
    stack_carve(s, base, &off);
    scratch_carve(&g->w, base, &off, N, 0, s->C, s->FF, (size_t)g->Tmax * g->Tmax);
    g->logits = take(base, &off, N * g->V);
    g->dWT = take(base, &off, (size_t)s->C * g->V);
    g->kcache = take(base, &off, (size_t)s->L * g->Tmax * s->C);
    g->vcache = take(base, &off, (size_t)s->L * g->Tmax * s->C);
    g->probs = take(base, &off, (size_t)g->V);
    size_t sbn = step_buf_carve(&g->sb, base ? base + off : NULL, s, g->Tmax, 0);
    take(base, &off, sbn);
    return off;
}

static int gpt_build(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    hparams h;
    int rc = read_hparams(cfg, gpt_keys, &h);
    if (rc) return rc;
    if (d->vocab < 4) {
        nn_set_error("gpt: vocabulary of %d ids is too small (needs the 4 special ids)",
                     d->vocab);
        return NN_ERR_CONFIG;
    }
    if (d->max_len > h.T) {
        nn_set_error("gpt: sequences of %d tokens exceed context %ld", d->max_len, h.T);
        return NN_ERR_CONFIG;
    }
    gpt *g = calloc(1, sizeof *g);
    if (!g) return NN_ERR_NOMEM;
    m->impl = g;
    g->V = d->vocab, g->Tmax = (int)h.T, g->Bmax = d->max_batch > 0 ? d->max_batch : 1;
    g->tie = h.tie, g->smoothing = (float)h.ls;
    stack_setup(&g->dec, &h, g->V, g->Bmax, 1, 0, 0, 0);
    g->dec.blk = calloc((size_t)h.L, sizeof *g->dec.blk);
    if (!g->dec.blk) goto nomem;
    if ((rc = stack_register(&g->dec, &m->params, "", "wte", "wpe"))) goto fail;
    if (!g->tie && (rc = add_mat(&m->params, "lm_head/w", g->V, g->dec.C, 0.02f, &g->head,
                                 &g->dhead)))
        goto fail;
    size_t n = gpt_carve(g, NULL);
    g->mem = nn_alloc_big(n * sizeof(float));
    g->w.row_index = malloc((size_t)g->Bmax * g->Tmax * sizeof *g->w.row_index);
    if (!g->mem || !g->w.row_index) goto nomem;
    gpt_carve(g, g->mem);
    if (!g->dec.learned) nn_sinusoid_table(g->dec.pos, g->Tmax, g->dec.C);
    return NN_OK;
nomem:
    nn_set_error("gpt: out of memory for activations (batch %d, context %d)", g->Bmax, g->Tmax);
    rc = NN_ERR_NOMEM;
fail:
    gpt_free(m);
    return rc;
}

static int check_batch(const nn_batch *b, int Bmax, int Tmax, int V, int Vt, int parallel) {
    if (b->B < 0 || b->B > Bmax || (b->B > 0 && (b->T < 1 || b->T > Tmax))) {
        nn_set_error("batch of %d x %d does not fit max_batch %d x context %d", b->B, b->T, Bmax,
                     Tmax);
        return NN_ERR_SHAPE;
    }
    if (b->B == 0) return NN_OK;
    if (!b->x || !b->y) {
        nn_set_error("batch without x or y");
        return NN_ERR_SHAPE;
    }
    if (!parallel && b->U != 0 && b->U != b->T) {
        nn_set_error("an lm batch needs x and y of the same shape (T=%d, U=%d)", b->T, b->U);
        return NN_ERR_SHAPE;
    }
    if (parallel && (b->U < 1 || b->U > Tmax)) {
        nn_set_error("target length %d outside [1, context %d]", b->U, Tmax);
        return NN_ERR_SHAPE;
    }
    int rc = check_ids(b->x, (size_t)b->B * b->T, V, "input");
    return rc ? rc : check_ids(b->y, (size_t)b->B * (parallel ? b->U : b->T), Vt, "target");
}

/* logits (N,V) = hf (N,C) W^T. */
static void project(float *logits, const float *hf, const float *W, int N, int C, int V) {
    nn_gemm(0, 1, N, V, C, 1.0f, hf, C, W, C, 0.0f, logits, V);
}

/* Output projection backward from dlogits (N,V): dW += dlogits^T hf; dhf OVERWRITTEN.
 * dWT (C,V) is scratch: OpenBLAS runs hf^T dlogits (C,V) ~10% faster than the (V,C)
 * product at vocabulary sizes, and the transpose-add costs less than the difference.
 * dpack (bf16 on AMX) or NULL: dlogits already packed for both GEMMs (dlogits unused). */
static void project_backward(float *dhf, float *dW, float *dWT, const float *dlogits,
                             const nn_bf16_pair *dpack, const float *hf, const float *W, int N,
                             int C, int V) {
    if (dpack) nn_gemm_bf16_xb(1, C, hf, C, dpack, 1.0f, 0.0f, dWT, V);
    else nn_gemm(1, 0, C, V, N, 1.0f, hf, C, dlogits, V, 0.0f, dWT, V);
    nn_transpose_add(dW, dWT, V, C);
    if (dpack) nn_gemm_bf16_xa(dpack, 0, C, W, C, 1.0f, 0.0f, dhf, C);
    else nn_gemm(0, 0, N, C, V, 1.0f, dlogits, V, W, C, 0.0f, dhf, C);
}

static int gpt_forward_backward(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st) {
    gpt *g = m->impl;
    stack *s = &g->dec;
    int rc = check_batch(b, g->Bmax, g->Tmax, g->V, g->V, 0);
    if (rc || b->B == 0) return rc;
    int N = b->B * b->T;
    fwd_ctx f = {1, b->index, b->step, m->seed};
    const float *hf = stack_forward(s, &g->w, b->x, b->B, b->T, NULL, NULL, 0, NULL, &f);
    const float *W = g->tie ? s->emb : g->head;
    project(g->logits, hf, W, N, s->C, g->V);
    double cnt = 0.0, hits = 0.0, loss;
    /* bf16 on AMX: the gradient rows are packed for both GEMMs as they are made */
    int packed = nn_bf16_pair_usable() && nn_bf16_pair_begin(&g->dpack, N, g->V) == NN_OK;
    if (packed)
        loss = nn_fxent_forward_backward_packed(&g->dpack, g->logits, b->y, N, g->V, NN_PAD,
                                                g->smoothing, grad_scale, &cnt, &hits);
    else
        loss = nn_fxent_forward_backward(g->logits, g->logits, b->y, N, g->V, NN_PAD,
                                         g->smoothing, grad_scale, &cnt, &hits);
    if (!isfinite(loss)) {
        nn_set_error("gpt: loss is not finite");
        return NN_ERR_NUMERIC;
    }
    project_backward(g->w.dtmp, g->tie ? s->demb : g->dhead, g->dWT, g->logits,
                     packed ? &g->dpack : NULL, hf, W, N, s->C, g->V);
    s->grad_hook = m; /* decoder-only: blocks finish in reverse registration order */
    stack_backward(s, &g->w, b->x, b->B, b->T, NULL, g->w.dtmp, NULL, NULL, 0, NULL);
    s->grad_hook = NULL;
    st->loss += loss;
    st->count += cnt;
    st->correct += hits;
    return NN_OK;
}

static int gpt_evaluate(nn_model *m, const nn_batch *b, nn_stats *st) {
    gpt *g = m->impl;
    int rc = check_batch(b, g->Bmax, g->Tmax, g->V, g->V, 0);
    if (rc || b->B == 0) return rc;
    int N = b->B * b->T;
    fwd_ctx f = {0, NULL, 0, 0};
    const float *hf = stack_forward(&g->dec, &g->w, b->x, b->B, b->T, NULL, NULL, 0, NULL, &f);
    project(g->logits, hf, g->tie ? g->dec.emb : g->head, N, g->dec.C, g->V);
    double cnt = 0.0, hits = 0.0;
    double loss = nn_fxent_forward_backward(NULL, g->logits, b->y, N, g->V, NN_PAD, 0.0f, 0.0f,
                                            &cnt, &hits);
    st->loss += loss;
    st->count += cnt;
    st->correct += hits;
    return NN_OK;
}

/* Feeds T0 tokens at [p0, p0+T0) through the cache; logits (V) of the last one. */
static const float *gpt_step(gpt *g, const int32_t *ids, int T0, int p0) {
    stack *s = &g->dec;
    size_t lstride = (size_t)g->Tmax * s->C;
    const float *y = stack_step(s, &g->sb, ids, 1, T0, p0, g->kcache, g->vcache, lstride, 0,
                                NULL, NULL, 0, NULL);
    project(g->logits, y + (size_t)(T0 - 1) * s->C, g->tie ? s->emb : g->head, 1, s->C, g->V);
    return g->logits;
}

static int desc_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Draws from softmax(logits / temperature) restricted to the top_k largest (top_k <= 0:
 * all); temperature <= 0 is greedy. Randomness keyed by (seed, position). */
static int32_t sample(gpt *g, const float *logits, float temperature, int top_k, uint64_t seed,
                      int position) {
    int V = g->V, best = 0;
    for (int j = 1; j < V; j++)
        if (logits[j] > logits[best]) best = j;
    if (temperature <= 0.0f || top_k == 1) return best;
    float thr = -INFINITY;
    if (top_k > 0 && top_k < V) {
        memcpy(g->probs, logits, (size_t)V * sizeof *g->probs);
        qsort(g->probs, (size_t)V, sizeof *g->probs, desc_float);
        thr = g->probs[top_k - 1];
    }
    double sum = 0.0;
    for (int j = 0; j < V; j++) {
        float p = logits[j] >= thr ? expf((logits[j] - logits[best]) / temperature) : 0.0f;
        g->probs[j] = p;
        sum += p;
    }
    nn_rng r = nn_rng_make(seed, (uint64_t)position, 0, NN_RNG_SAMPLE);
    double u = nn_rng_uniform(&r) * sum, acc = 0.0;
    for (int j = 0; j < V; j++) {
        acc += g->probs[j];
        if (g->probs[j] > 0.0f && u < acc) return j;
    }
    return best;
}

static int gpt_generate(nn_model *m, const int32_t *prompt, int n, int max_out, float temperature,
                        int top_k, uint64_t seed, int32_t *out) {
    gpt *g = m->impl;
    int32_t bos = NN_BOS;
    if (n < 0 || max_out < 0 || (n > 0 && !prompt) || (max_out > 0 && !out)) {
        nn_set_error("gpt: generate needs a prompt of n >= 0 ids and room for max_out >= 0");
        return NN_ERR_SHAPE;
    }
    if (n == 0) prompt = &bos, n = 1;
    if (n > g->Tmax) { /* keep the most recent context */
        prompt += n - g->Tmax;
        n = g->Tmax;
    }
    int rc = check_ids(prompt, (size_t)n, g->V, "prompt");
    if (rc) return rc;
    if (max_out == 0) return 0;
    const float *logits = gpt_step(g, prompt, n, 0);
    int pos = n, count = 0;
    while (count < max_out) {
        int32_t id = sample(g, logits, temperature, top_k, seed, pos);
        out[count++] = id;
        if (id == NN_EOS || pos >= g->Tmax) break;
        logits = gpt_step(g, &id, 1, pos);
        pos++;
    }
    return count;
}

const nn_model_ops nn_gpt_ops = {
    .name = "gpt",
    .summary = "decoder-only transformer language model (GPT): perplexity, generate",
    .data_kind = "lm",
    .keys = gpt_keys,
    .stat_names = NULL,
    .build = gpt_build,
    .bind = NULL,
    .free = gpt_free,
    .forward_backward = gpt_forward_backward,
    .evaluate = gpt_evaluate,
    .decode = NULL,
    .generate = gpt_generate,
};

int nn_gpt_logits(nn_model *m, const int32_t *x, int B, int T, float *logits) {
    gpt *g = m->impl;
    if (B < 1 || B > g->Bmax || T < 1 || T > g->Tmax) {
        nn_set_error("gpt: %d x %d does not fit %d x %d", B, T, g->Bmax, g->Tmax);
        return NN_ERR_SHAPE;
    }
    int rc = check_ids(x, (size_t)B * T, g->V, "input");
    if (rc) return rc;
    fwd_ctx f = {0, NULL, 0, 0};
    const float *hf = stack_forward(&g->dec, &g->w, x, B, T, NULL, NULL, 0, NULL, &f);
    project(logits, hf, g->tie ? g->dec.emb : g->head, B * T, g->dec.C, g->V);
    return NN_OK;
}

int nn_gpt_cached_logits(nn_model *m, const int32_t *x, int T, int first, float *logits) {
    gpt *g = m->impl;
    if (T < 1 || T > g->Tmax || first < 1 || first > T) {
        nn_set_error("gpt: cached logits need 1 <= first <= T <= %d", g->Tmax);
        return NN_ERR_SHAPE;
    }
    int rc = check_ids(x, (size_t)T, g->V, "input");
    if (rc) return rc;
    const float *lg = gpt_step(g, x, first, 0);
    memcpy(logits + (size_t)(first - 1) * g->V, lg, (size_t)g->V * sizeof *logits);
    for (int t = 0; t < first - 1; t++) /* only the last of a chunk is projected */
        for (int j = 0; j < g->V; j++) logits[(size_t)t * g->V + j] = NAN;
    for (int t = first; t < T; t++) {
        lg = gpt_step(g, x + t, 1, t);
        memcpy(logits + (size_t)t * g->V, lg, (size_t)g->V * sizeof *logits);
    }
    return NN_OK;
}

/* ---- transformer (encoder-decoder) ----------------------------------------------------------- */

typedef struct xfm {
    stack enc, dec;
    scratch w;
    int tie, Vs, Vt, Tmax, Bmax;
    float smoothing;
    float *head, *dhead; /* (Vt,C) when untied */
    float *mem;          /* the one activation block */
    float *logits;       /* (N,Vt) */
    float *dWT;          /* (C,Vt) output projection gradient, transposed */
    float *dmem;         /* (N,C) gradient at the encoder output */
    int32_t *din;        /* (N) decoder inputs: BOS, then y shifted right */
    int32_t *src_len;    /* (Bmax) */
} xfm;

static void xfm_free(nn_model *m) {
    xfm *x = m->impl;
    if (!x) return;
    free(x->mem);
    free(x->w.row_index);
    free(x->din);
    free(x->src_len);
    free(x->enc.blk);
    free(x->dec.blk);
    free(x);
    m->impl = NULL;
}

static size_t xfm_carve(xfm *x, float *base) {
    size_t off = 0, N = (size_t)x->Bmax * x->Tmax;
    stack_carve(&x->enc, base, &off);
    stack_carve(&x->dec, base, &off);
    scratch_carve(&x->w, base, &off, N, N, x->dec.C, x->dec.FF, (size_t)x->Tmax * x->Tmax);
    x->logits = take(base, &off, N * x->Vt);
    x->dWT = take(base, &off, (size_t)x->dec.C * x->Vt);
    x->dmem = take(base, &off, N * x->dec.C);
    return off;
}

static int xfm_build(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    hparams h;
    int rc = read_hparams(cfg, transformer_keys, &h);
    if (rc) return rc;
    int Vt = d->vocab_tgt > 0 ? d->vocab_tgt : d->vocab;
    if (d->vocab < 4 || Vt < 4) {
        nn_set_error("transformer: vocabularies of %d and %d ids are too small", d->vocab, Vt);
        return NN_ERR_CONFIG;
    }
    if (d->max_len > h.T || d->max_len_tgt > h.T) {
        nn_set_error("transformer: sequences of %d/%d tokens exceed context %ld", d->max_len,
                     d->max_len_tgt, h.T);
        return NN_ERR_CONFIG;
    }
    xfm *x = calloc(1, sizeof *x);
    if (!x) return NN_ERR_NOMEM;
    m->impl = x;
    x->Vs = d->vocab, x->Vt = Vt, x->Tmax = (int)h.T;
    x->Bmax = d->max_batch > 0 ? d->max_batch : 1;
    x->tie = h.tie, x->smoothing = (float)h.ls;
    stack_setup(&x->enc, &h, x->Vs, x->Bmax, 0, 0, 0, 0);
    stack_setup(&x->dec, &h, Vt, x->Bmax, 1, 1, x->Tmax, 1);
    x->enc.blk = calloc((size_t)h.L, sizeof *x->enc.blk);
    x->dec.blk = calloc((size_t)h.L, sizeof *x->dec.blk);
    if (!x->enc.blk || !x->dec.blk) goto nomem;
    if ((rc = stack_register(&x->enc, &m->params, "encoder/", "encoder/emb", "encoder/pos")) ||
        (rc = stack_register(&x->dec, &m->params, "decoder/", "decoder/emb", "decoder/pos")))
        goto fail;
    if (!x->tie && (rc = add_mat(&m->params, "decoder/out/w", Vt, x->dec.C, 0.02f, &x->head,
                                 &x->dhead)))
        goto fail;
    size_t n = xfm_carve(x, NULL), N = (size_t)x->Bmax * x->Tmax;
    x->mem = nn_alloc_big(n * sizeof(float));
    x->w.row_index = malloc(N * sizeof *x->w.row_index);
    x->din = malloc(N * sizeof *x->din);
    x->src_len = malloc((size_t)x->Bmax * sizeof *x->src_len);
    if (!x->mem || !x->w.row_index || !x->din || !x->src_len) goto nomem;
    xfm_carve(x, x->mem);
    if (!h.learned) {
        nn_sinusoid_table(x->enc.pos, x->Tmax, x->enc.C);
        nn_sinusoid_table(x->dec.pos, x->Tmax, x->dec.C);
    }
    return NN_OK;
nomem:
    nn_set_error("transformer: out of memory for activations (batch %d, context %d)", x->Bmax,
                 x->Tmax);
    rc = NN_ERR_NOMEM;
fail:
    xfm_free(m);
    return rc;
}

/* Source lengths (up to the last non-padding id) and decoder inputs for a batch. */
static void xfm_prepare(xfm *x, const nn_batch *b) {
    for (int i = 0; i < b->B; i++) {
        int n = b->T;
        while (n > 0 && b->x[(size_t)i * b->T + n - 1] == NN_PAD) n--;
        x->src_len[i] = n;
        int32_t *d = x->din + (size_t)i * b->U;
        d[0] = NN_BOS;
        for (int u = 1; u < b->U; u++) d[u] = b->y[(size_t)i * b->U + u - 1];
    }
}

/* Teacher-forced forward; returns the decoder output (B*U,C), logits in x->logits. */
static const float *xfm_forward(xfm *x, const nn_batch *b, const fwd_ctx *f,
                                const float **memp) {
    xfm_prepare(x, b);
    const float *mem = stack_forward(&x->enc, &x->w, b->x, b->B, b->T, x->src_len, NULL, 0, NULL,
                                     f);
    const float *hf = stack_forward(&x->dec, &x->w, x->din, b->B, b->U, NULL, mem, b->T,
                                    x->src_len, f);
    project(x->logits, hf, x->tie ? x->dec.emb : x->head, b->B * b->U, x->dec.C, x->Vt);
    *memp = mem;
    return hf;
}

static int xfm_forward_backward(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st) {
    xfm *x = m->impl;
    int rc = check_batch(b, x->Bmax, x->Tmax, x->Vs, x->Vt, 1);
    if (rc || b->B == 0) return rc;
    int N = b->B * b->U, C = x->dec.C;
    fwd_ctx f = {1, b->index, b->step, m->seed};
    const float *mem;
    const float *hf = xfm_forward(x, b, &f, &mem);
    double cnt = 0.0, hits = 0.0;
    double loss = nn_fxent_forward_backward(x->logits, x->logits, b->y, N, x->Vt, NN_PAD,
                                            x->smoothing, grad_scale, &cnt, &hits);
    if (!isfinite(loss)) {
        nn_set_error("transformer: loss is not finite");
        return NN_ERR_NUMERIC;
    }
    const float *W = x->tie ? x->dec.emb : x->head;
    project_backward(x->w.dtmp, x->tie ? x->dec.demb : x->dhead, x->dWT, x->logits, NULL, hf, W,
                     N, C, x->Vt);
    memset(x->dmem, 0, (size_t)b->B * b->T * C * sizeof *x->dmem);
    /* encoder then decoder are registered, and backward runs the decoder blocks from the
     * top, then the encoder blocks from the top: each finished block and everything
     * registered after it are final, so both stacks may announce their blocks */
    x->dec.grad_hook = x->enc.grad_hook = m;
    stack_backward(&x->dec, &x->w, x->din, b->B, b->U, NULL, x->w.dtmp, mem, x->dmem, b->T,
                   x->src_len);
    stack_backward(&x->enc, &x->w, b->x, b->B, b->T, x->src_len, x->dmem, NULL, NULL, 0, NULL);
    x->dec.grad_hook = x->enc.grad_hook = NULL;
    st->loss += loss;
    st->count += cnt;
    st->correct += hits;
    return NN_OK;
}

static int xfm_evaluate(nn_model *m, const nn_batch *b, nn_stats *st) {
    xfm *x = m->impl;
    int rc = check_batch(b, x->Bmax, x->Tmax, x->Vs, x->Vt, 1);
    if (rc || b->B == 0) return rc;
    fwd_ctx f = {0, NULL, 0, 0};
    const float *mem;
    xfm_forward(x, b, &f, &mem);
    double cnt = 0.0, hits = 0.0;
    double loss = nn_fxent_forward_backward(NULL, x->logits, b->y, b->B * b->U, x->Vt, NN_PAD,
                                            0.0f, 0.0f, &cnt, &hits);
    st->loss += loss;
    st->count += cnt;
    st->correct += hits;
    return NN_OK;
}

/* One beam-search candidate. */
typedef struct cand {
    double score;
    int parent, token;
} cand;

/* Decodes examples [e0, e0+E) of b. Caches and scratch are allocated by the caller for
 * H = E*beam hypotheses and Tdec positions. */
typedef struct beam_ws {
    float *kc, *vc, *tmp;   /* (L,H,Tdec,C) x 2 and (H,Tdec,C) reorder buffer */
    float **kv;             /* per decoder layer: (E*S,2C) cross keys/values */
    float *kvbuf, *logits;  /* (L,E*S,2C), (H,Vt) */
    float *sbuf;            /* step_buf block */
    int32_t *hist, *hist2;  /* (H,Tdec+1) token histories, BOS first */
    int32_t *cur;           /* (H) */
    int *ex;                /* (H) example of each hypothesis (0..E) */
    double *score, *score2; /* (H) */
    cand *cands;            /* (2*beam) */
    step_buf sb;
} beam_ws;

static double length_penalty(int len, float alpha) {
    return alpha == 0.0f ? 1.0 : pow((5.0 + len) / 6.0, (double)alpha);
}

static void beam_chunk(xfm *x, const nn_batch *b, int e0, int E, int beam, float alpha,
                       int Tdec, int max_out, beam_ws *ws, int32_t *out) {
    stack *d = &x->dec;
    int C = d->C, S = b->T, H = E * beam, Vt = x->Vt, K = 2 * beam;
    size_t lstride = (size_t)H * Tdec * C, cstride = (size_t)Tdec * C;
    const int32_t *src_len = x->src_len + e0;
    /* encoder over the chunk, then cross keys/values once per layer */
    fwd_ctx f = {0, NULL, 0, 0};
    const float *mem = stack_forward(&x->enc, &x->w, b->x + (size_t)e0 * S, E, S, src_len, NULL,
                                     0, NULL, &f);
    for (int l = 0; l < d->L; l++) {
        ws->kv[l] = ws->kvbuf + (size_t)l * E * S * 2 * C;
        cross_kv_forward(&d->blk[l].cross, ws->kv[l], mem, E * S);
    }
    double *best = malloc((size_t)E * sizeof *best);
    int *nfin = calloc((size_t)E, sizeof *nfin), *done = calloc((size_t)E, sizeof *done);
    if (!best || !nfin || !done) {
        free(best), free(nfin), free(done);
        return; /* out already padded by the caller */
    }
    for (int e = 0; e < E; e++) best[e] = -INFINITY;
    const int W = Tdec + 1; /* history width: BOS and up to Tdec tokens */
    for (int j = 0; j < H; j++) {
        ws->ex[j] = j / beam;
        ws->cur[j] = NN_BOS;
        ws->hist[(size_t)j * W] = NN_BOS;
        ws->score[j] = j % beam ? -INFINITY : 0.0;
    }
    const float *Wout = x->tie ? d->emb : x->head;
    for (int t = 0; t < Tdec; t++) {
        const float *y = stack_step(d, &ws->sb, ws->cur, H, 1, t, ws->kc, ws->vc, lstride,
                                    cstride, ws->kv, ws->ex, S, src_len);
        project(ws->logits, y, Wout, H, C, Vt);
        int live_any = 0;
        for (int e = 0; e < E; e++) {
            int nc = 0;
            if (!done[e]) {
                for (int j = e * beam; j < (e + 1) * beam; j++) {
                    if (ws->score[j] == -INFINITY) continue;
                    float *row = ws->logits + (size_t)j * Vt;
                    float mx = -INFINITY;
                    for (int v = 0; v < Vt; v++) mx = row[v] > mx ? row[v] : mx;
                    double z = 0.0;
                    for (int v = 0; v < Vt; v++) z += exp((double)row[v] - mx);
                    double lz = mx + log(z);
                    for (int v = 0; v < Vt; v++) {
                        if (v == NN_PAD || v == NN_BOS) continue;
                        double sc = ws->score[j] + (double)row[v] - lz;
                        if (nc == K && sc <= ws->cands[K - 1].score) continue;
                        int i = nc < K ? nc++ : K - 1; /* insertion into the sorted top K */
                        while (i > 0 && ws->cands[i - 1].score < sc) {
                            ws->cands[i] = ws->cands[i - 1];
                            i--;
                        }
                        ws->cands[i] = (cand){sc, j, v};
                    }
                }
            }
            /* finished candidates leave the beam; the rest refill it in score order */
            int filled = 0;
            for (int i = 0; i < nc && filled < beam; i++) {
                cand c = ws->cands[i];
                int len = t + 1;
                int last = t + 1 == Tdec;
                if (c.token == NN_EOS || last) {
                    double norm = c.score / length_penalty(len, alpha);
                    if (norm > best[e]) {
                        best[e] = norm;
                        int32_t *o = out + (size_t)(e0 + e) * max_out;
                        for (int u = 0; u < t; u++) o[u] = ws->hist[(size_t)c.parent * W + u + 1];
                        o[t] = c.token;
                        for (int u = t + 1; u < max_out; u++) o[u] = NN_PAD;
                    }
                    nfin[e]++;
                    if (c.token == NN_EOS) continue;
                }
                int k = e * beam + filled++;
                ws->score2[k] = c.score;
                memcpy(ws->hist2 + (size_t)k * W, ws->hist + (size_t)c.parent * W,
                       (size_t)(t + 1) * sizeof *ws->hist);
                ws->hist2[(size_t)k * W + t + 1] = c.token;
                ws->ex[k] = c.parent; /* until the cache reorder below: the parent */
                ws->cur[k] = c.token;
            }
            for (int k = e * beam + filled; k < (e + 1) * beam; k++) {
                ws->score2[k] = -INFINITY;
                ws->ex[k] = k;
                ws->cur[k] = NN_PAD;
            }
            if (nfin[e] >= beam || filled == 0) done[e] = 1;
            if (done[e]) {
                for (int k = e * beam; k < (e + 1) * beam; k++) ws->score2[k] = -INFINITY;
            } else {
                live_any = 1;
            }
        }
        /* reorder the self-attention caches to the surviving parents (positions 0..t) */
        for (int l = 0; l < d->L; l++) {
            float *caches[2] = {ws->kc + l * lstride, ws->vc + l * lstride};
            for (int c = 0; c < 2; c++) {
                for (int k = 0; k < H; k++)
                    memcpy(ws->tmp + k * cstride, caches[c] + (size_t)ws->ex[k] * cstride,
                           (size_t)(t + 1) * C * sizeof *ws->tmp);
                for (int k = 0; k < H; k++)
                    memcpy(caches[c] + k * cstride, ws->tmp + k * cstride,
                           (size_t)(t + 1) * C * sizeof *ws->tmp);
            }
        }
        for (int j = 0; j < H; j++) ws->ex[j] = j / beam;
        double *ts = ws->score;
        ws->score = ws->score2, ws->score2 = ts;
        int32_t *th = ws->hist;
        ws->hist = ws->hist2, ws->hist2 = th;
        if (!live_any) break;
    }
    free(best), free(nfin), free(done);
}

static int xfm_decode(nn_model *m, const nn_batch *b, int beam, float len_alpha, int max_out,
                      int32_t *out) {
    xfm *x = m->impl;
    if (beam < 1 || max_out < 1 || b->B < 0 || b->B > x->Bmax ||
        (b->B > 0 && (b->T < 1 || b->T > x->Tmax || !b->x || !out))) {
        nn_set_error("transformer: decode needs beam >= 1, max_out >= 1 and a batch within "
                     "max_batch %d x context %d",
                     x->Bmax, x->Tmax);
        return NN_ERR_SHAPE;
    }
    if (b->B == 0) return NN_OK;
    int rc = check_ids(b->x, (size_t)b->B * b->T, x->Vs, "input");
    if (rc) return rc;
    for (size_t i = 0; i < (size_t)b->B * max_out; i++) out[i] = NN_PAD;
    stack *d = &x->dec;
    int C = d->C, S = b->T, L = d->L, Tdec = max_out < x->Tmax ? max_out : x->Tmax;
    int E = 64 / beam > 0 ? 64 / beam : 1; /* examples per chunk: bounds the caches */
    if (E > b->B) E = b->B;
    int H = E * beam;
    for (int i = 0; i < b->B; i++) { /* source lengths for every example */
        int n = S;
        while (n > 0 && b->x[(size_t)i * S + n - 1] == NN_PAD) n--;
        x->src_len[i] = n;
    }
    beam_ws ws = {0};
    size_t cache = (size_t)L * H * Tdec * C;
    step_buf probe;
    size_t sbn = step_buf_carve(&probe, NULL, d, H, S);
    ws.kc = malloc(cache * sizeof(float));
    ws.vc = malloc(cache * sizeof(float));
    ws.tmp = malloc((size_t)H * Tdec * C * sizeof(float));
    ws.kv = malloc((size_t)L * sizeof *ws.kv);
    ws.kvbuf = malloc((size_t)L * E * S * 2 * C * sizeof(float));
    ws.logits = malloc((size_t)H * x->Vt * sizeof(float));
    ws.sbuf = aligned_alloc(64, sbn * sizeof(float));
    ws.hist = malloc((size_t)H * (Tdec + 1) * sizeof *ws.hist);
    ws.hist2 = malloc((size_t)H * (Tdec + 1) * sizeof *ws.hist2);
    ws.cur = malloc((size_t)H * sizeof *ws.cur);
    ws.ex = malloc((size_t)H * sizeof *ws.ex);
    ws.score = malloc((size_t)H * sizeof *ws.score);
    ws.score2 = malloc((size_t)H * sizeof *ws.score2);
    ws.cands = malloc((size_t)2 * beam * sizeof *ws.cands);
    rc = NN_OK;
    if (!ws.kc || !ws.vc || !ws.tmp || !ws.kv || !ws.kvbuf || !ws.logits || !ws.sbuf ||
        !ws.hist || !ws.hist2 || !ws.cur || !ws.ex || !ws.score || !ws.score2 || !ws.cands) {
        nn_set_error("transformer: out of memory for beam search (%d hypotheses)", H);
        rc = NN_ERR_NOMEM;
    } else {
        step_buf_carve(&ws.sb, ws.sbuf, d, H, S);
        for (int e0 = 0; e0 < b->B; e0 += E) {
            int n = b->B - e0 < E ? b->B - e0 : E;
            beam_chunk(x, b, e0, n, beam, len_alpha, Tdec, max_out, &ws, out);
        }
    }
    free(ws.kc), free(ws.vc), free(ws.tmp), free(ws.kv), free(ws.kvbuf), free(ws.logits);
    free(ws.sbuf), free(ws.hist), free(ws.hist2), free(ws.cur), free(ws.ex), free(ws.score);
    free(ws.score2), free(ws.cands);
    return rc;
}

const nn_model_ops nn_transformer_ops = {
    .name = "transformer",
    .summary = "encoder-decoder transformer for translation: cross-attention, beam search",
    .data_kind = "parallel",
    .keys = transformer_keys,
    .stat_names = NULL,
    .build = xfm_build,
    .bind = NULL,
    .free = xfm_free,
    .forward_backward = xfm_forward_backward,
    .evaluate = xfm_evaluate,
    .decode = xfm_decode,
    .generate = NULL,
};

int nn_transformer_logits(nn_model *m, const nn_batch *b, float *logits) {
    xfm *x = m->impl;
    int rc = check_batch(b, x->Bmax, x->Tmax, x->Vs, x->Vt, 1);
    if (rc || b->B == 0) return rc;
    fwd_ctx f = {0, NULL, 0, 0};
    const float *mem;
    xfm_forward(x, b, &f, &mem);
    memcpy(logits, x->logits, (size_t)b->B * b->U * x->Vt * sizeof *logits);
    return NN_OK;
}
