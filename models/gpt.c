/* gpt.c - the decoder-only transformer language model (`--model gpt`).
 *
 * Token and position embeddings, L blocks of causal multi-head self-attention and a
 * position-wise feed-forward network with residual connections and layer norm (pre-LN
 * with a final ln_f, or post-LN), and a vocabulary projection that is tied to the token
 * embedding by default. Training is one forward and one explicit backward over a (B,T)
 * batch; the vocabulary softmax and cross-entropy run fused and in place over the logits.
 * `generate` decodes one token at a time with a per-layer key/value cache, so no past
 * position is recomputed.
 *
 * Does not: allocate in forward/backward (every activation and scratch buffer is carved
 * from one block sized at build time for max_batch x context), look at ranks, or touch
 * files. Sequences longer than `context` are the trainer's business (NN_ERR_SHAPE here).
 *
 * Parameter names (PyTorch mapping in tests/torch_gpt.py):
 *   wte (V,C), wpe (context,C) [pos=learned], layer_<l>/ln1/{g,b},
 *   layer_<l>/attn/{w_q,w_k,w_v,w_o} (C,C) and {b_q,b_k,b_v,b_o} (C), layer_<l>/ln2/{g,b},
 *   layer_<l>/ffn/w1 (FF,C), b1 (FF), w2 (C,FF), b2 (C), ln_f/{g,b} [norm=pre],
 *   lm_head/w (V,C) [tie=0]. */
#include <math.h>
#include <string.h>

#include "models/nn.h"

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
    {"dropout", "0", "dropout on embeddings and on both residual branches"},
    {"label-smoothing", "0", "label smoothing of the training loss"},
    {NULL, NULL, NULL}};

typedef struct gpt_layer {
    nn_mha attn;
    float *ln1_g, *ln1_b, *ln2_g, *ln2_b, *w1, *b1, *w2, *b2;
    float *dln1_g, *dln1_b, *dln2_g, *dln2_b, *dw1, *db1, *dw2, *db2;
    /* activations for N = B*T rows (capacity Bmax*Tmax) */
    float *x_in;                  /* (N,C) residual stream entering the block */
    float *ln1, *ln1_mean, *ln1_rstd; /* (N,C) pre-LN: norm of x_in; (N) stats */
    float *qkv;                   /* (N,3C) */
    float *att;                   /* (B,NH,T,T) probabilities */
    float *atty;                  /* (N,C) heads concatenated, before w_o */
    float *r1;                    /* (N,C) post-LN: x_in + attention */
    float *x_mid;                 /* (N,C) stream between attention and FFN */
    float *ln2, *ln2_mean, *ln2_rstd; /* (N,C) pre-LN: norm of x_mid */
    float *h, *a;                 /* (N,FF) FFN pre-activation and activation */
    float *r2;                    /* (N,C) post-LN: x_mid + FFN */
    float *mask_attn, *mask_ffn;  /* (N,C) dropout masks, when dropout > 0 */
} gpt_layer;

typedef struct gpt {
    int L, NH, C, FF, Tmax, V, Bmax;
    int relu, post, sinus, tie;
    float dropout, smoothing;
    float *wte, *dwte, *wpe, *dwpe, *head, *dhead, *lnf_g, *lnf_b, *dlnf_g, *dlnf_b;
    gpt_layer *layer;
    float *mem;                   /* the one activation block */
    float *pos_table;             /* (Tmax,C) sinusoidal encodings */
    float *x_out;                 /* (N,C) stream after the last block */
    float *lnf, *lnf_mean, *lnf_rstd; /* (N,C), (N): pre-LN final norm */
    float *logits;                /* (N,V); overwritten by dlogits in training */
    float *mask_emb;              /* (N,C) */
    float *dres, *dtmp, *dtmp2;   /* (N,C) gradient of the stream and scratch */
    float *datty;                 /* (N,C) gradient at the concatenated heads */
    float *dqkv;                  /* (N,3C) */
    float *dff;                   /* (N,FF) */
    float *datt;                  /* (Tmax,Tmax) attention backward scratch */
    float *kcache, *vcache;       /* (L,Tmax,C) generation caches */
    float *probs;                 /* (V) sampling scratch */
    int64_t *row_index;           /* (N) dropout keys */
} gpt;

/* ---- construction ---------------------------------------------------------------------- */

static void gpt_free(nn_model *m) {
    gpt *g = m->impl;
    if (!g) return;
    free(g->mem);
    free(g->row_index);
    free(g->layer);
    free(g);
    m->impl = NULL;
}

/* Hands out 64-byte aligned slices of g->mem; with base == NULL only counts. */
static float *take(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

static size_t carve(gpt *g, float *base) {
    size_t off = 0, N = (size_t)g->Bmax * g->Tmax, C = g->C, FF = g->FF;
    int pre = !g->post, drop = g->dropout > 0.0f;
    for (int l = 0; l < g->L; l++) {
        gpt_layer *ly = &g->layer[l];
        ly->x_in = take(base, &off, N * C);
        ly->ln1 = pre ? take(base, &off, N * C) : NULL;
        ly->ln1_mean = take(base, &off, N);
        ly->ln1_rstd = take(base, &off, N);
        ly->qkv = take(base, &off, 3 * N * C);
        ly->att = take(base, &off, (size_t)g->Bmax * g->NH * g->Tmax * g->Tmax);
        ly->atty = take(base, &off, N * C);
        ly->r1 = pre ? NULL : take(base, &off, N * C);
        ly->x_mid = take(base, &off, N * C);
        ly->ln2 = pre ? take(base, &off, N * C) : NULL;
        ly->ln2_mean = take(base, &off, N);
        ly->ln2_rstd = take(base, &off, N);
        ly->h = take(base, &off, N * FF);
        ly->a = take(base, &off, N * FF);
        ly->r2 = pre ? NULL : take(base, &off, N * C);
        ly->mask_attn = drop ? take(base, &off, N * C) : NULL;
        ly->mask_ffn = drop ? take(base, &off, N * C) : NULL;
    }
    g->pos_table = g->sinus ? take(base, &off, (size_t)g->Tmax * C) : NULL;
    g->x_out = take(base, &off, N * C);
    g->lnf = pre ? take(base, &off, N * C) : NULL;
    g->lnf_mean = take(base, &off, N);
    g->lnf_rstd = take(base, &off, N);
    g->logits = take(base, &off, N * g->V);
    g->mask_emb = drop ? take(base, &off, N * C) : NULL;
    g->dres = take(base, &off, N * C);
    g->dtmp = take(base, &off, N * C);
    g->dtmp2 = take(base, &off, N * C);
    g->datty = take(base, &off, N * C);
    g->dqkv = take(base, &off, 3 * N * C);
    g->dff = take(base, &off, N * FF);
    g->datt = take(base, &off, (size_t)g->Tmax * g->Tmax);
    g->kcache = take(base, &off, (size_t)g->L * g->Tmax * C);
    g->vcache = take(base, &off, (size_t)g->L * g->Tmax * C);
    g->probs = take(base, &off, (size_t)g->V);
    return off;
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

static int gpt_register(gpt *g, nn_params *ps) {
    char name[NN_NAME_MAX];
    const float std = 0.02f, res_std = 0.02f / sqrtf(2.0f * (float)g->L);
    int rc;
    if ((rc = add_mat(ps, "wte", g->V, g->C, std, &g->wte, &g->dwte))) return rc;
    if (!g->sinus && (rc = add_mat(ps, "wpe", g->Tmax, g->C, 0.01f, &g->wpe, &g->dwpe)))
        return rc;
    for (int l = 0; l < g->L; l++) {
        gpt_layer *ly = &g->layer[l];
#define VEC(suffix, n, init, d, gr)                                   \
    do {                                                              \
        snprintf(name, sizeof name, "layer_%d/%s", l, suffix);        \
        if ((rc = add_vec(ps, name, n, init, d, gr))) return rc;      \
    } while (0)
#define MAT(suffix, r, c, s, d, gr)                                   \
    do {                                                              \
        snprintf(name, sizeof name, "layer_%d/%s", l, suffix);        \
        if ((rc = add_mat(ps, name, r, c, s, d, gr))) return rc;      \
    } while (0)
        VEC("ln1/g", g->C, NN_INIT_ONE, &ly->ln1_g, &ly->dln1_g);
        VEC("ln1/b", g->C, NN_INIT_ZERO, &ly->ln1_b, &ly->dln1_b);
        snprintf(name, sizeof name, "layer_%d/attn", l);
        if ((rc = nn_mha_register(&ly->attn, ps, name, g->C, g->NH, std, res_std))) return rc;
        VEC("ln2/g", g->C, NN_INIT_ONE, &ly->ln2_g, &ly->dln2_g);
        VEC("ln2/b", g->C, NN_INIT_ZERO, &ly->ln2_b, &ly->dln2_b);
        MAT("ffn/w1", g->FF, g->C, std, &ly->w1, &ly->dw1);
        VEC("ffn/b1", g->FF, NN_INIT_ZERO, &ly->b1, &ly->db1);
        MAT("ffn/w2", g->C, g->FF, res_std, &ly->w2, &ly->dw2);
        VEC("ffn/b2", g->C, NN_INIT_ZERO, &ly->b2, &ly->db2);
#undef VEC
#undef MAT
    }
    if (!g->post) {
        if ((rc = add_vec(ps, "ln_f/g", g->C, NN_INIT_ONE, &g->lnf_g, &g->dlnf_g))) return rc;
        if ((rc = add_vec(ps, "ln_f/b", g->C, NN_INIT_ZERO, &g->lnf_b, &g->dlnf_b))) return rc;
    }
    if (!g->tie && (rc = add_mat(ps, "lm_head/w", g->V, g->C, std, &g->head, &g->dhead)))
        return rc;
    return NN_OK;
}

static int gpt_build(nn_model *m, const nn_config *cfg, const nn_dims *d) {
    long L, NH, C, FF, T;
    double drop, ls;
    const char *act, *norm, *pos;
    int tie, rc;
    if ((rc = nn_config_int(cfg, "layers", 4, &L)) || (rc = nn_config_int(cfg, "heads", 4, &NH)) ||
        (rc = nn_config_int(cfg, "dim", 256, &C)) || (rc = nn_config_int(cfg, "ff", 1024, &FF)) ||
        (rc = nn_config_int(cfg, "context", 128, &T)) ||
        (rc = nn_config_choice(cfg, "activation", "gelu", "gelu|relu", &act)) ||
        (rc = nn_config_choice(cfg, "norm", "pre", "pre|post", &norm)) ||
        (rc = nn_config_choice(cfg, "pos", "learned", "learned|sinusoidal", &pos)) ||
        (rc = nn_config_bool(cfg, "tie", 1, &tie)) ||
        (rc = nn_config_float(cfg, "dropout", 0.0, &drop)) ||
        (rc = nn_config_float(cfg, "label-smoothing", 0.0, &ls)))
        return rc;
    if (L < 1 || NH < 1 || C < 1 || FF < 1 || T < 1 || L > 1024 || C > 65536 || FF > 1 << 20 ||
        T > 1 << 16 || C % NH) {
        nn_set_error("gpt: need layers, heads, dim, ff, context >= 1 and dim a multiple of "
                     "heads (layers=%ld heads=%ld dim=%ld ff=%ld context=%ld)",
                     L, NH, C, FF, T);
        return NN_ERR_CONFIG;
    }
    if (!(drop >= 0.0 && drop < 1.0) || !(ls >= 0.0 && ls < 1.0)) {
        nn_set_error("gpt: dropout (%g) and label-smoothing (%g) must be in [0,1)", drop, ls);
        return NN_ERR_CONFIG;
    }
    if (d->vocab < 4) {
        nn_set_error("gpt: vocabulary of %d ids is too small (needs the 4 special ids)",
                     d->vocab);
        return NN_ERR_CONFIG;
    }
    if (d->max_len > T) {
        nn_set_error("gpt: sequences of %d tokens exceed context %ld", d->max_len, T);
        return NN_ERR_CONFIG;
    }
    gpt *g = calloc(1, sizeof *g);
    if (!g) return NN_ERR_NOMEM;
    m->impl = g;
    g->L = (int)L, g->NH = (int)NH, g->C = (int)C, g->FF = (int)FF, g->Tmax = (int)T;
    g->V = d->vocab;
    g->Bmax = d->max_batch > 0 ? d->max_batch : 1;
    g->relu = !strcmp(act, "relu");
    g->post = !strcmp(norm, "post");
    g->sinus = !strcmp(pos, "sinusoidal");
    g->tie = tie;
    g->dropout = (float)drop;
    g->smoothing = (float)ls;
    g->layer = calloc((size_t)L, sizeof *g->layer);
    if (!g->layer) goto nomem;
    if ((rc = gpt_register(g, &m->params))) goto fail;
    size_t n = carve(g, NULL);
    g->mem = aligned_alloc(64, n * sizeof(float));
    g->row_index = malloc((size_t)g->Bmax * g->Tmax * sizeof *g->row_index);
    if (!g->mem || !g->row_index) goto nomem;
    carve(g, g->mem);
    if (g->sinus) nn_sinusoid_table(g->pos_table, g->Tmax, g->C);
    return NN_OK;
nomem:
    nn_set_error("gpt: out of memory for activations (batch %d, context %d)", g->Bmax, g->Tmax);
    rc = NN_ERR_NOMEM;
fail:
    gpt_free(m);
    return rc;
}

/* ---- forward ----------------------------------------------------------------------------- */

/* Dropout key of a (token, site): unique over examples, positions and the 2L+1 sites. */
static void dropout_apply(gpt *g, float *buf, float *mask, int B, int T, int site,
                          const int64_t *index, uint64_t step, uint64_t seed) {
    size_t N = (size_t)B * T, C = g->C;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int64_t ex = index ? index[b] : b;
            g->row_index[(size_t)b * T + t] =
                (ex * g->Tmax + t) * (int64_t)(2 * g->L + 1) + site;
        }
    nn_dropout_forward(g->dtmp2, mask, buf, N * C, (int)C, g->dropout, seed, step,
                       g->row_index);
    memcpy(buf, g->dtmp2, N * C * sizeof *buf);
}

static void activation(const gpt *g, float *a, const float *h, size_t n) {
    if (g->relu) nn_frelu_forward(a, h, n);
    else nn_fgelu_forward(a, h, n);
}

/* The feed-forward branch: h = x w1^T + b1, a = act(h), out (N,C) = a w2^T + b2. */
static void ffn_forward(const gpt *g, gpt_layer *ly, float *out, const float *x, int N) {
    nn_proj_forward(ly->h, g->FF, x, ly->w1, ly->b1, N, g->C, g->FF);
    activation(g, ly->a, ly->h, (size_t)N * g->FF);
    nn_proj_forward(out, g->C, ly->a, ly->w2, ly->b2, N, g->FF, g->C);
}

/* Runs the blocks and the output projection; logits (B*T,V). train: apply dropout. */
static void gpt_forward(gpt *g, const int32_t *x, int B, int T, int train, const int64_t *index,
                        uint64_t step, uint64_t seed) {
    int N = B * T, C = g->C, HS = C / g->NH;
    size_t NC = (size_t)N * C;
    int drop = train && g->dropout > 0.0f;
    const float *pos = g->sinus ? g->pos_table : g->wpe;
    nn_embed_pos_forward(g->layer[0].x_in, x, g->wte, pos, B, T, C);
    if (drop) dropout_apply(g, g->layer[0].x_in, g->mask_emb, B, T, 0, index, step, seed);
    for (int l = 0; l < g->L; l++) {
        gpt_layer *ly = &g->layer[l];
        float *xout = l + 1 < g->L ? g->layer[l + 1].x_in : g->x_out;
        const float *ain = ly->x_in;
        if (!g->post) {
            nn_flayernorm_forward(ly->ln1, ly->ln1_mean, ly->ln1_rstd, ly->x_in, ly->ln1_g,
                                  ly->ln1_b, N, C);
            ain = ly->ln1;
        }
        nn_mha_qkv_forward(&ly->attn, ly->qkv, ain, N);
        nn_sdpa_forward(ly->atty, C, ly->att, ly->qkv, 3 * C, ly->qkv + C, 3 * C, ly->qkv + 2 * C,
                        3 * C, NULL, 1, B, T, T, g->NH, HS);
        nn_proj_forward(g->dtmp, C, ly->atty, ly->attn.w_o, ly->attn.b_o, N, C, C);
        if (drop) dropout_apply(g, g->dtmp, ly->mask_attn, B, T, 1 + 2 * l, index, step, seed);
        if (!g->post) {
            nn_add3(ly->x_mid, ly->x_in, g->dtmp, NC);
            nn_flayernorm_forward(ly->ln2, ly->ln2_mean, ly->ln2_rstd, ly->x_mid, ly->ln2_g,
                                  ly->ln2_b, N, C);
            ffn_forward(g, ly, g->dtmp, ly->ln2, N);
        } else {
            nn_add3(ly->r1, ly->x_in, g->dtmp, NC);
            nn_flayernorm_forward(ly->x_mid, ly->ln1_mean, ly->ln1_rstd, ly->r1, ly->ln1_g,
                                  ly->ln1_b, N, C);
            ffn_forward(g, ly, g->dtmp, ly->x_mid, N);
        }
        if (drop) dropout_apply(g, g->dtmp, ly->mask_ffn, B, T, 2 + 2 * l, index, step, seed);
        if (!g->post) {
            nn_add3(xout, ly->x_mid, g->dtmp, NC);
        } else {
            nn_add3(ly->r2, ly->x_mid, g->dtmp, NC);
            nn_flayernorm_forward(xout, ly->ln2_mean, ly->ln2_rstd, ly->r2, ly->ln2_g, ly->ln2_b,
                                  N, C);
        }
    }
    const float *hf = g->x_out;
    if (!g->post) {
        nn_flayernorm_forward(g->lnf, g->lnf_mean, g->lnf_rstd, g->x_out, g->lnf_g, g->lnf_b, N,
                              C);
        hf = g->lnf;
    }
    nn_gemm(0, 1, N, g->V, C, 1.0f, hf, C, g->tie ? g->wte : g->head, C, 0.0f, g->logits, g->V);
}

/* ---- backward ---------------------------------------------------------------------------- */

static void mul3(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
}

/* dst = src * mask (dropout active) or src itself. */
static const float *undrop(float *dst, const float *src, const float *mask, size_t n) {
    if (!mask) return src;
    mul3(dst, src, mask, n);
    return dst;
}

/* FFN branch backward: given df (N,C), dx_ffn_in (N,C) is OVERWRITTEN with the gradient
 * w.r.t. the branch input x. Parameter gradients accumulate. */
static void ffn_backward(gpt *g, gpt_layer *ly, float *dx, const float *df, const float *x,
                         int N) {
    size_t NF = (size_t)N * g->FF;
    nn_proj_backward_to(g->dff, ly->dw2, ly->db2, df, g->C, ly->a, ly->w2, N, g->FF, g->C);
    if (g->relu) nn_frelu_backward_inplace(g->dff, ly->h, NF);
    else nn_fgelu_backward_inplace(g->dff, ly->h, NF);
    nn_proj_backward_to(dx, ly->dw1, ly->db1, g->dff, g->FF, x, ly->w1, N, g->C, g->FF);
}

/* Attention branch backward: given dp (N,C) (gradient at the w_o output), adds the
 * gradient w.r.t. the branch input x into dx (zeroed first when overwrite). dp is fully
 * consumed before dx is written, so dx may alias it. */
static void attn_backward(gpt *g, gpt_layer *ly, float *dx, int overwrite, const float *dp,
                          const float *x, int B, int T) {
    int N = B * T, C = g->C;
    nn_proj_backward_to(g->datty, ly->attn.dw_o, ly->attn.db_o, dp, C, ly->atty, ly->attn.w_o, N,
                        C, C);
    memset(g->dqkv, 0, (size_t)N * 3 * C * sizeof *g->dqkv);
    if (overwrite) memset(dx, 0, (size_t)N * C * sizeof *dx);
    nn_sdpa_backward(g->dqkv, g->dqkv + C, g->dqkv + 2 * C, g->datt, g->datty, C, ly->att,
                     ly->qkv, 3 * C, ly->qkv + C, 3 * C, ly->qkv + 2 * C, 3 * C, B, T, T, g->NH,
                     C / g->NH);
    nn_mha_qkv_backward(&ly->attn, dx, g->dqkv, x, N);
}

/* g->logits holds dlogits (B*T,V); accumulates every parameter gradient. */
static void gpt_backward(gpt *g, const int32_t *x, int B, int T) {
    int N = B * T, C = g->C;
    size_t NC = (size_t)N * C;
    const float *W = g->tie ? g->wte : g->head;
    float *dW = g->tie ? g->dwte : g->dhead;
    const float *hf = g->post ? g->x_out : g->lnf;
    nn_gemm(1, 0, g->V, C, N, 1.0f, g->logits, g->V, hf, C, 1.0f, dW, C);
    if (!g->post) {
        nn_gemm(0, 0, N, C, g->V, 1.0f, g->logits, g->V, W, C, 0.0f, g->dtmp, C);
        memset(g->dres, 0, NC * sizeof *g->dres);
        nn_flayernorm_backward(g->dres, g->dlnf_g, g->dlnf_b, g->dtmp, g->x_out, g->lnf_mean,
                               g->lnf_rstd, g->lnf_g, N, C);
    } else {
        nn_gemm(0, 0, N, C, g->V, 1.0f, g->logits, g->V, W, C, 0.0f, g->dres, C);
    }
    for (int l = g->L - 1; l >= 0; l--) {
        gpt_layer *ly = &g->layer[l];
        if (!g->post) {
            /* dres = d x_out = d x_mid (residual) + through ffn(ln2(x_mid)) */
            const float *df = undrop(g->dtmp, g->dres, ly->mask_ffn, NC);
            ffn_backward(g, ly, g->dtmp2, df, ly->ln2, N);
            nn_flayernorm_backward(g->dres, ly->dln2_g, ly->dln2_b, g->dtmp2, ly->x_mid,
                                   ly->ln2_mean, ly->ln2_rstd, ly->ln2_g, N, C);
            /* dres = d x_mid = d x_in (residual) + through attn(ln1(x_in)) */
            const float *dp = undrop(g->dtmp, g->dres, ly->mask_attn, NC);
            attn_backward(g, ly, g->dtmp2, 1, dp, ly->ln1, B, T);
            nn_flayernorm_backward(g->dres, ly->dln1_g, ly->dln1_b, g->dtmp2, ly->x_in,
                                   ly->ln1_mean, ly->ln1_rstd, ly->ln1_g, N, C);
        } else {
            /* dres = d LN2(r2): dtmp2 = d r2 = d x_mid (residual) = d ffn output */
            memset(g->dtmp2, 0, NC * sizeof *g->dtmp2);
            nn_flayernorm_backward(g->dtmp2, ly->dln2_g, ly->dln2_b, g->dres, ly->r2,
                                   ly->ln2_mean, ly->ln2_rstd, ly->ln2_g, N, C);
            const float *df = undrop(g->dtmp, g->dtmp2, ly->mask_ffn, NC);
            ffn_backward(g, ly, g->dres, df, ly->x_mid, N);
            nn_add_inplace(g->dtmp2, g->dres, NC); /* dtmp2 = d x_mid */
            memset(g->dres, 0, NC * sizeof *g->dres);
            nn_flayernorm_backward(g->dres, ly->dln1_g, ly->dln1_b, g->dtmp2, ly->r1,
                                   ly->ln1_mean, ly->ln1_rstd, ly->ln1_g, N, C);
            /* dres = d r1 = d x_in (residual) + through attn(x_in) */
            const float *dp = undrop(g->dtmp, g->dres, ly->mask_attn, NC);
            attn_backward(g, ly, g->dres, 0, dp, ly->x_in, B, T);
        }
    }
    if (g->mask_emb) mul3(g->dres, g->dres, g->mask_emb, NC);
    nn_embed_pos_backward(g->dwte, g->sinus ? NULL : g->dwpe, g->dres, x, B, T, C);
}

/* ---- model operations -------------------------------------------------------------------- */

static int check_ids(const int32_t *ids, size_t n, int V, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            nn_set_error("gpt: %s id %d at %zu outside the vocabulary of %d", what, (int)ids[i],
                         i, V);
            return NN_ERR_DATA;
        }
    return NN_OK;
}

static int check_batch(const gpt *g, const nn_batch *b) {
    if (b->B < 0 || b->B > g->Bmax || (b->B > 0 && (b->T < 1 || b->T > g->Tmax))) {
        nn_set_error("gpt: batch of %d x %d does not fit max_batch %d x context %d", b->B, b->T,
                     g->Bmax, g->Tmax);
        return NN_ERR_SHAPE;
    }
    if (b->B == 0) return NN_OK;
    if (!b->x || !b->y || (b->U != 0 && b->U != b->T)) {
        nn_set_error("gpt: an lm batch needs x and y of the same shape (T=%d, U=%d)", b->T, b->U);
        return NN_ERR_SHAPE;
    }
    size_t n = (size_t)b->B * b->T;
    int rc = check_ids(b->x, n, g->V, "input");
    return rc ? rc : check_ids(b->y, n, g->V, "target");
}

static int gpt_forward_backward(nn_model *m, const nn_batch *b, float grad_scale, nn_stats *st) {
    gpt *g = m->impl;
    int rc = check_batch(g, b);
    if (rc || b->B == 0) return rc;
    int N = b->B * b->T;
    gpt_forward(g, b->x, b->B, b->T, 1, b->index, b->step, m->seed);
    double cnt = 0.0, hits = 0.0;
    double loss = nn_fxent_forward_backward(g->logits, g->logits, b->y, N, g->V, NN_PAD,
                                            g->smoothing, grad_scale, &cnt, &hits);
    if (!isfinite(loss)) {
        nn_set_error("gpt: loss is not finite");
        return NN_ERR_NUMERIC;
    }
    gpt_backward(g, b->x, b->B, b->T);
    st->loss += loss;
    st->count += cnt;
    st->correct += hits;
    return NN_OK;
}

static int gpt_evaluate(nn_model *m, const nn_batch *b, nn_stats *st) {
    gpt *g = m->impl;
    int rc = check_batch(g, b);
    if (rc || b->B == 0) return rc;
    gpt_forward(g, b->x, b->B, b->T, 0, NULL, 0, 0);
    double cnt = 0.0, hits = 0.0;
    double loss = nn_fxent_forward_backward(NULL, g->logits, b->y, b->B * b->T, g->V, NN_PAD,
                                            0.0f, 0.0f, &cnt, &hits);
    st->loss += loss;
    st->count += cnt;
    st->correct += hits;
    return NN_OK;
}

/* ---- incremental decoding with a key/value cache ----------------------------------------- */

/* Feeds T0 new tokens at positions [p0, p0+T0) of one sequence whose earlier keys and
 * values are cached; appends theirs to the cache and returns the logits (V) of the last
 * one. Uses layer 0's activation buffers as scratch (capacity >= context rows). */
static const float *gpt_step(gpt *g, const int32_t *ids, int T0, int p0) {
    int C = g->C, HS = C / g->NH, S = p0 + T0;
    size_t NC = (size_t)T0 * C;
    gpt_layer *s = &g->layer[0];
    float *cur = s->x_in, *next = g->x_out;
    const float *pos = g->sinus ? g->pos_table : g->wpe;
    nn_embed_pos_forward(cur, ids, g->wte, pos + (size_t)p0 * C, 1, T0, C);
    for (int l = 0; l < g->L; l++) {
        gpt_layer *ly = &g->layer[l];
        float *kc = g->kcache + (size_t)l * g->Tmax * C, *vc = g->vcache + (size_t)l * g->Tmax * C;
        const float *ain = cur;
        if (!g->post) {
            nn_flayernorm_forward(s->ln1, s->ln1_mean, s->ln1_rstd, cur, ly->ln1_g, ly->ln1_b, T0,
                                  C);
            ain = s->ln1;
        }
        nn_mha_qkv_forward(&ly->attn, s->qkv, ain, T0);
        for (int t = 0; t < T0; t++) {
            memcpy(kc + (size_t)(p0 + t) * C, s->qkv + (size_t)t * 3 * C + C, C * sizeof *kc);
            memcpy(vc + (size_t)(p0 + t) * C, s->qkv + (size_t)t * 3 * C + 2 * C, C * sizeof *vc);
        }
        nn_sdpa_forward(s->atty, C, s->att, s->qkv, 3 * C, kc, C, vc, C, NULL, 1, 1, T0, S, g->NH,
                        HS);
        nn_proj_forward(g->dtmp, C, s->atty, ly->attn.w_o, ly->attn.b_o, T0, C, C);
        if (!g->post) {
            nn_add3(s->x_mid, cur, g->dtmp, NC);
            nn_flayernorm_forward(s->ln2, s->ln2_mean, s->ln2_rstd, s->x_mid, ly->ln2_g,
                                  ly->ln2_b, T0, C);
            nn_proj_forward(s->h, g->FF, s->ln2, ly->w1, ly->b1, T0, C, g->FF);
        } else {
            nn_add3(s->r1, cur, g->dtmp, NC);
            nn_flayernorm_forward(s->x_mid, s->ln1_mean, s->ln1_rstd, s->r1, ly->ln1_g,
                                  ly->ln1_b, T0, C);
            nn_proj_forward(s->h, g->FF, s->x_mid, ly->w1, ly->b1, T0, C, g->FF);
        }
        activation(g, s->a, s->h, (size_t)T0 * g->FF);
        nn_proj_forward(g->dtmp, C, s->a, ly->w2, ly->b2, T0, g->FF, C);
        if (!g->post) {
            nn_add3(next, s->x_mid, g->dtmp, NC);
        } else {
            nn_add3(s->r2, s->x_mid, g->dtmp, NC);
            nn_flayernorm_forward(next, s->ln2_mean, s->ln2_rstd, s->r2, ly->ln2_g, ly->ln2_b,
                                  T0, C);
        }
        float *tmp = cur;
        cur = next;
        next = tmp;
    }
    const float *last = cur + (size_t)(T0 - 1) * C;
    if (!g->post) {
        nn_flayernorm_forward(g->dtmp, g->lnf_mean, g->lnf_rstd, last, g->lnf_g, g->lnf_b, 1, C);
        last = g->dtmp;
    }
    nn_gemm(0, 1, 1, g->V, C, 1.0f, last, C, g->tie ? g->wte : g->head, C, 0.0f, g->logits,
            g->V);
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

/* ---- test hooks ---------------------------------------------------------------------------- */

int nn_gpt_logits(nn_model *m, const int32_t *x, int B, int T, float *logits) {
    gpt *g = m->impl;
    if (B < 1 || B > g->Bmax || T < 1 || T > g->Tmax) {
        nn_set_error("gpt: %d x %d does not fit %d x %d", B, T, g->Bmax, g->Tmax);
        return NN_ERR_SHAPE;
    }
    int rc = check_ids(x, (size_t)B * T, g->V, "input");
    if (rc) return rc;
    gpt_forward(g, x, B, T, 0, NULL, 0, 0);
    memcpy(logits, g->logits, (size_t)B * T * g->V * sizeof *logits);
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
