/* nn_attdec.h - the attention decoder shared by seq2seq (s2s.c) and the image captioner
 * (captioner.c): a one-layer LSTM/GRU cell over [emb(y_{t-1}); ctx_t] with additive
 * (Bahdanau) attention over a per-example memory, the output layer on [s_t; ctx_t],
 * teacher-forced training (forward, loss, backward) and greedy / beam-search decoding.
 * Private to models/: include after models/nn.h; nn.h does not include it.
 *
 * A model owns an nn_attdec (embedded in its own struct: the parameter registry keeps
 * pointers to the views inside it), runs its own encoder, and hands the decoder what it
 * produced through nn_attdec_begin:
 *   init_in (B,Dv)    input of the initial state  s_0 = tanh(W_init init_in + b_init), c_0 = 0;
 *                     also the fixed context of NN_ATTDEC_FIXED
 *   mem (B,T,Dv)      the attention values h_j; keys W_k h_j (+ a learned position vector p_j)
 *   len (B)           valid memory positions per example (softmax over j < len)
 * Per step t:  q = W_s s_{t-1} + b_s,  e_j = v . tanh(q + k_j),  a = masked softmax,
 *              ctx_t = sum_j a_j h_j;  s_t = cell([emb(y_{t-1}); ctx_t], s_{t-1})
 *              (PyTorch gate layout: LSTM i,f,g,o; GRU r,z,n);  logits_t = W_o [s_t; ctx_t] + b_o.
 * Context kinds: NN_ATTDEC_BAHDANAU as above; NN_ATTDEC_FIXED ctx_t = init_in (the
 * captioner's mean-pooled baseline); NN_ATTDEC_NONE no context at all (cell input emb,
 * output layer on s_t: seq2seq's no-attention baseline).
 *
 * Parameter names below "<init>/" and the embedding name are the model's; the others are
 * attention/{w_key,w_query,b_query,v[,position]}, decoder/{w_ih,w_hh,b_ih,b_hh},
 * output/{weight,bias}, registered in that order (checkpoints depend on names and shapes).
 *
 * Does not: encode anything, apply dropout (a model applies its own around the embedded
 * targets and the output-layer input), normalise the loss, or use MPI. Training scratch is
 * carved by the model (nn_attdec_carve_train into the model's one allocation); the step
 * loops allocate nothing. Decoding allocates its scratch on first use and grows it. */
#ifndef MODELS_NN_ATTDEC_H
#define MODELS_NN_ATTDEC_H

#include <stddef.h>
#include <stdint.h>

/* ---- two-pass carving of one allocation --------------------------------------------- */
/* First pass with base == NULL measures (off = bytes needed), the second carves for real.
 * Every block is 64-byte aligned. Cannot fail; returns NULL while measuring. */
typedef struct nn_attdec_arena { char *base; size_t off; } nn_attdec_arena;
void *nn_attdec_carve(nn_attdec_arena *a, size_t bytes);
#define NN_ATTDEC_F(a, n) ((float *)nn_attdec_carve((a), (size_t)(n) * sizeof(float)))
#define NN_ATTDEC_I(a, n) ((int32_t *)nn_attdec_carve((a), (size_t)(n) * sizeof(int32_t)))
#define NN_ATTDEC_D(a, n) ((double *)nn_attdec_carve((a), (size_t)(n) * sizeof(double)))

/* ---- the decoder -------------------------------------------------------------------- */
enum nn_attdec_ctx { NN_ATTDEC_NONE = 0, NN_ATTDEC_FIXED = 1, NN_ATTDEC_BAHDANAU = 2 };

typedef struct nn_attdec_config {
    const char *name;       /* model name that prefixes error messages ("seq2seq") */
    int cell;               /* NN_CELL_LSTM or NN_CELL_GRU */
    int kind;               /* enum nn_attdec_ctx */
    int positions;          /* BAHDANAU: learned (max_T,A) position vectors added to the keys */
    int V, D, H, Dv;        /* output vocabulary, embedding width, hidden = attention width,
                               memory (and init_in) width */
    int max_B, max_T, max_U; /* examples, memory positions, target steps */
    int chunk;              /* output-layer rows per chunk of logits; 0: max_U * max_B */
} nn_attdec_config;

/* Decode scratch for R rows (B examples x K hypotheses) and `steps` outputs. */
typedef struct nn_attdec_scratch {
    int R, steps, B;        /* capacity */
    char *mem;
    float *Sa, *Sb, *Ca, *Cb;          /* (R,H) states before / after the step */
    float *emb, *q, *att, *ctx, *xin;  /* (R,D), (R,A), (R,max_T), (R,Dv), (R,In) */
    float *gates, *aux, *tmp, *O;      /* (R,GH), (R,H), (R,GH), (R,Hc) */
    float *logits;                     /* (R,V) */
    int32_t *tok, *parent, *src;       /* (R) */
    int32_t *hist, *hist2;             /* (R,steps) */
    int32_t *fin, *fin_len, *fin_n, *done; /* (B,steps), (B), (B), (B) */
    int32_t *cand_k, *cand_v;          /* (2R) */
    double *score, *score2, *fin_best, *cand_s; /* (R), (R), (B), (2R) */
    float *attn_store;                 /* (B,steps,T) of the last greedy decode */
    int attn_B, attn_steps, attn_T, attn_valid;
} nn_attdec_scratch;

typedef struct nn_attdec {
    const char *name;
    int cell, kind, positions;
    int V, D, H, A, Dv, G, GH, In, Hc;
    int max_B, max_T, max_U, chunk;
    /* parameter views (filled by nn_params_alloc after nn_attdec_add_params) */
    float *Wi, *dWi, *bi, *dbi;        /* initial state (H,Dv), (H) */
    float *Wk, *dWk;                   /* attention keys (A,Dv) */
    float *pos, *dpos;                 /* (max_T,A) position vectors, or NULL */
    float *Ws, *dWs, *bs, *dbs;        /* attention query (A,H), (A) */
    float *va, *dva;                   /* (A) */
    float *E, *dE;                     /* target embedding (V,D) */
    float *Wih, *dWih, *Whh, *dWhh;    /* cell (GH,In), (GH,H) */
    float *bih, *dbih, *bhh, *dbhh;    /* (GH) */
    float *Wo, *dWo, *bo, *dbo;        /* output (V,Hc), (V) */
    /* the memory of the last nn_attdec_begin (owned by the model) */
    const float *init_in, *mem;
    const int32_t *len;
    int T;
    /* training scratch (nn_attdec_carve_train), time-major (U,B,...) */
    int32_t *yl, *yin, *ytgt;          /* (B), (U,B), (U,B) target lengths, inputs, targets */
    float *ye, *dye;                   /* (U,B,D) embedded inputs, their gradient */
    float *S, *C;                      /* (U+1,B,H) states (slot 0 = s_0), LSTM cells */
    float *gates, *aux, *xin;          /* (U,B,GH) activated, (U,B,H), (U,B,In) */
    float *q, *att, *ctx;              /* (U,B,A), (U,B,max_T), (U,B,Dv) */
    float *O, *dO;                     /* (U,B,Hc) output-layer input, its gradient */
    float *logits;                     /* (chunk,V) */
    float *kh, *dkh;                   /* (B,max_T,A) keys */
    float *ds, *dsn, *dc, *dcn;        /* (B,H) */
    float *dxin, *dq, *dctx;           /* (B,In), (B,A), (B,Dv) */
    float *dg, *dg2, *tmp;             /* (B,GH) */
    float *ascr;                       /* (max_T + 2A) attention scratch */
    nn_attdec_scratch dec;
} nn_attdec;

/* Fills d's dimensions from c (In = D + Dv and Hc = H + Dv unless kind is NONE; A = H).
 * Allocates nothing; c must be valid (the model checked its options). Cannot fail. */
void nn_attdec_init(nn_attdec *d, const nn_attdec_config *c);
/* Registers the decoder's parameters in this order: <init_name>/{weight,bias},
 * attention/{w_key,w_query,b_query,v[,position]} (BAHDANAU only), <emb_name>,
 * decoder/{w_ih,w_hh,b_ih,b_hh}, output/{weight,bias}. Returns the registry index of
 * output/weight, or a negative status from nn_params_add. */
int nn_attdec_add_params(nn_attdec *d, nn_params *ps, const char *init_name,
                         const char *emb_name);
/* Carves (or measures) the training scratch for max_B, max_T, max_U. Cannot fail. */
void nn_attdec_carve_train(nn_attdec *d, nn_attdec_arena *a);
/* Frees the decode scratch; safe on a zeroed or already-freed decoder. */
void nn_attdec_free(nn_attdec *d);

/* Validates B id rows ids (B,T) with lengths len (B; NULL: all T): len[i] in [0, T] and
 * every id, padding included, in [0, V). Copies the lengths into len_out (B). On failure
 * NN_ERR_DATA and the message "<model>: <len_noun> length ... of example ..." or
 * "<model>: <id_noun> id ... at example ... position ...". */
int nn_attdec_check_ids(const char *model, const char *len_noun, const char *id_noun,
                        int32_t *len_out, const int32_t *ids, const int32_t *len, int B, int T,
                        int V);
/* Validates the targets of b (b->B examples already checked by the model): U in
 * [1, max_U], y present, y_len[i] in [0, U], ids in [0, V). Fills yl. `noun` names the
 * targets in messages ("target", "caption"). NN_ERR_SHAPE / NN_ERR_DATA with a message. */
int nn_attdec_check_targets(nn_attdec *d, const nn_batch *b, const char *noun);
/* Teacher forcing: yin = NN_BOS, y_0, ..., y_{U-2} and ytgt = y (NN_PAD past yl), (U,B);
 * ye = E[yin]. Needs the yl of nn_attdec_check_targets. Cannot fail. */
void nn_attdec_embed_targets(nn_attdec *d, const nn_batch *b);

/* Installs the memory of B examples (pointers kept until the next call; owned by the
 * model): s_0 into S slot 0, c_0 = 0, and (BAHDANAU) the keys kh = mem W_k^T (+ pos).
 * init_in (B,Dv); mem (B,T,Dv) and len (B) used by BAHDANAU only (may be NULL otherwise);
 * T <= max_T. Cannot fail. */
void nn_attdec_begin(nn_attdec *d, const float *init_in, const float *mem,
                     const int32_t *len, int B, int T);
/* Teacher-forced forward of U steps from emb (U,B,D) (ye, or the model's dropout of it):
 * fills the training caches S, C, gates, aux, xin, q, att, ctx and O. Cannot fail. */
void nn_attdec_forward(nn_attdec *d, const float *emb, int B, int U);
/* Output layer and softmax cross-entropy over R = U*B rows of O (R,Hc) (d->O, or the
 * model's dropout of it) against ytgt, NN_PAD ignored, in chunks of `chunk` rows. Adds
 * loss, count, correct to st. train: writes dO (R,Hc) and ACCUMULATES dWo, dbo with the
 * gradient scaled by grad_scale. Cannot fail. */
void nn_attdec_output_loss(nn_attdec *d, nn_stats *st, const float *O, int R, int train,
                           float grad_scale);
/* Backward of nn_attdec_forward and nn_attdec_begin given dO (the model may have masked
 * it): ACCUMULATES the decoder's parameter gradients except dE, dinit (B,Dv) (the gradient
 * of init_in, and of the FIXED context) and dmem (B,T,Dv) (BAHDANAU; may be NULL
 * otherwise); writes dye (U,B,D), the gradient of the emb passed to nn_attdec_forward
 * (the model runs the embedding backward, after its dropout backward). Cannot fail. */
void nn_attdec_backward(nn_attdec *d, float *dinit, float *dmem, int B, int U);

/* ---- decoding ----------------------------------------------------------------------- */
/* How a model prepares decoding: check validates the batch for decoding (b->B may be 0;
 * negative status with a message on bad input); encode runs the encoder on b->B >= 1
 * examples and calls nn_attdec_begin. */
typedef struct nn_attdec_source {
    int (*check)(nn_model *m, const nn_batch *b);
    void (*encode)(nn_model *m, const nn_batch *b);
} nn_attdec_source;

/* ops->decode for a model whose decoder is d: greedy when beam == 1 and !force_beam, else
 * beam search with K = beam and length penalty ((5 + len) / 6)^len_alpha (len counts the
 * NN_EOS). out (B,max_out): rows end with NN_EOS and are NN_PAD-padded, or hold max_out
 * ids without NN_EOS; never NN_PAD or NN_BOS as a token. The greedy decode records its
 * attention weights (BAHDANAU; nn_attdec_attention). NN_ERR_CONFIG on beam < 1,
 * max_out < 1 or out == NULL, the check's status on a bad batch, NN_ERR_NOMEM when the
 * scratch cannot grow (it is allocated on first use for B*beam rows and max_out steps,
 * and reallocated only when a call needs more). */
int nn_attdec_decode(nn_attdec *d, nn_model *m, const nn_attdec_source *src,
                     const nn_batch *b, int beam, float len_alpha, int max_out, int32_t *out,
                     int force_beam);
/* Attention weights of the last greedy decode: (B, steps, T), zero after an example's
 * NN_EOS; NULL and zero dims when there are none or d is NULL. Valid until the next
 * decode. */
const float *nn_attdec_attention(const nn_attdec *d, int *B, int *steps, int *T);

#endif
