/* nn_seq.h - sequence layers of lockstep: 1D convolution over time, global pooling over
 * valid positions, and recurrent stacks (SimpleRNN, LSTM, GRU) with masking, stacking,
 * bidirectionality, truncated BPTT and state carried across batches.
 * Included by nn.h; do not include directly.
 *
 * Layouts: user-facing sequence buffers are batch-major (B,T,C) row-major, as the batch
 * itself. Lengths len (B) give the valid prefix of each row; len == NULL means every row
 * has length T. Positions t >= len[b] are padding: they never influence anything. */
#ifndef MODELS_NN_SEQ_H
#define MODELS_NN_SEQ_H

#include <stddef.h>
#include <stdint.h>

/* ---- Conv1D over time -------------------------------------------------------------- */
/* Output length: same -> T (left pad (k-1)/2, right pad k-1-(k-1)/2, as PyTorch's
 * padding='same'); valid -> max(1, T-k+1) (a sequence shorter than k still gives one window,
 * zero-filled past its end). k >= 1. Cannot fail. */
int nn_conv1d_out_len(int T, int k, int same);
/* Number of outputs of row b that see at least one valid input position and do not
 * depend on padding positions beyond the window: same -> min(len, T); valid ->
 * clamp(len-k+1, 1, To). len NULL: every row full. Writes out (B). Cannot fail. */
void nn_conv1d_valid_len(int32_t *out, const int32_t *len, int B, int T, int k, int same);

/* y (B,To,F) = conv(x (B,T,C), W (F,C,k)) + b (F), cross-correlation as nn.Conv1d:
 * y[b,t,f] = b[f] + sum_{c,j} W[f,c,j] * x[b, t+j-padl, c], where input positions outside
 * [0, min(T,len[b])) read as zero. Implemented as im2col into cols (B*To, C*k) (the cache
 * backward needs) and one GEMM for the whole batch. b may be NULL. Cannot fail. */
void nn_conv1d_forward(float *y, float *cols, const float *x, const int32_t *len,
                       const float *W, const float *b, int B, int T, int C, int F, int k,
                       int same);
/* Accumulates dW (F,C,k) += dy^T cols, db (F) += colsum(dy) (db may be NULL) and, when dx
 * (B,T,C) != NULL, dx += col2im(dy W) using the scratch dcols (B*To, C*k). dy (B,To,F).
 * Cannot fail. */
void nn_conv1d_backward(float *dx, float *dW, float *db, float *dcols, const float *dy,
                        const float *cols, const float *W, const int32_t *len, int B, int T,
                        int C, int F, int k, int same);

/* ---- global pooling over time ------------------------------------------------------- */
/* x (B,T,F) -> y (B,F), over positions t < n[b] (n (B), 1 <= n[b] <= T; NULL: all T).
 * Max pooling caches argmax (B,F) (time index). Cannot fail. */
void nn_maxpool_time_forward(float *y, int32_t *argmax, const float *x, const int32_t *n,
                             int B, int T, int F);
void nn_maxpool_time_backward(float *dx, const float *dy, const int32_t *argmax, int B, int T,
                              int F); /* dx (B,T,F) += scatter(dy) */
void nn_meanpool_time_forward(float *y, const float *x, const int32_t *n, int B, int T, int F);
void nn_meanpool_time_backward(float *dx, const float *dy, const int32_t *n, int B, int T,
                               int F); /* dx[b,t<n[b]] += dy[b] / n[b] */

/* ---- recurrent stacks ------------------------------------------------------------- */
enum nn_cell { NN_CELL_RNN = 0, NN_CELL_LSTM = 1, NN_CELL_GRU = 2 };
enum nn_merge { NN_MERGE_CONCAT = 0, NN_MERGE_SUM = 1 };
#define NN_RNN_MAX_LAYERS 8

/* Parse "rnn|lstm|gru" / "concat|sum". Return the enum or -1. */
int nn_cell_parse(const char *s);
int nn_merge_parse(const char *s);

/* One direction of one layer. Weights follow PyTorch's nn.RNN/nn.LSTM/nn.GRU exactly
 * (gate blocks stacked along rows): LSTM i,f,g,o; GRU r,z,n; RNN a single tanh block.
 * G = gates (1, 4, 3). Views into the registry, plus caches owned by nn_rnn.mem. */
typedef struct nn_rnn_dir {
    float *w_ih, *w_hh, *b_ih, *b_hh;     /* (G*H,In), (G*H,H), (G*H), (G*H) */
    float *dw_ih, *dw_hh, *db_ih, *db_hh; /* gradients, same shapes */
    float *gates;  /* (T,B,G*H) activated gates; overwritten by their gradients in backward */
    float *state;  /* (T+1,B,H) hidden states (fwd: slot t = before step t; bwd: t+1) */
    float *cell;   /* LSTM (T+1,B,H) cell states, same slots; else NULL */
    float *aux;    /* LSTM (T,B,H) tanh(c_t); GRU (T,B,H) W_hn h + b_hn; RNN NULL */
    float *dgh;    /* GRU (T,B,G*H) gradient w.r.t. the recurrent projection; else NULL */
} nn_rnn_dir;

typedef struct nn_rnn_layer {
    int in;                /* input width: C for layer 0, else the previous Hout */
    nn_rnn_dir dir[2];     /* [0] forward, [1] reverse (bidirectional only) */
    float *out;            /* (T,B,Hout) layer output, time-major, zero at padding */
    float *dout;           /* (T,B,Hout) its gradient (backward scratch) */
} nn_rnn_layer;

/* A stack of `layers` recurrent layers. Masking: at t >= len[b] the state is frozen and
 * the output is zero, so the reverse direction starts at each row's true end. The first
 * layer's input is copied at forward, so the caller's x may change before backward. */
typedef struct nn_rnn {
    int cell, G, C, H, layers, bidir, merge, Hout; /* Hout: H, or 2H for bidir concat */
    int max_B, max_T;
    int bptt;      /* 0: full BPTT; k > 0: no gradient between t0-1 and t0 when t0 % k == 0 */
    int lanes;     /* > 0: carry final states across calls in a table of `lanes` rows;
                      row i uses lane lane_index[i] % lanes (forward-only stacks) */
    float *carry_h, *carry_c; /* (lanes, layers, H) */
    int B, T;                 /* shape of the last forward */
    int32_t *len;             /* (max_B) lengths of the last forward, clamped to [0,T] */
    float *x_tm, *dx_tm;      /* (T,B,C) time-major input copy and its gradient */
    float *dh, *dc;           /* (B,H) gradient carried through time */
    nn_rnn_layer L[NN_RNN_MAX_LAYERS];
    float *mem;               /* one allocation for every cache above */
} nn_rnn;

/* Registers the parameters under "<prefix>/layer_<l>/<fwd|bwd>/<w_ih|w_hh|b_ih|b_hh>"
 * (init uniform +-1/sqrt(H), as PyTorch) and allocates caches for max_B x max_T.
 * Parameter views are valid after nn_params_alloc. r must not move afterwards.
 * Returns NN_OK, NN_ERR_CONFIG (bad cell, layers outside [1, NN_RNN_MAX_LAYERS],
 * non-positive sizes, carry with bidir) or NN_ERR_NOMEM; on failure r is freed. */
int nn_rnn_init(nn_rnn *r, nn_params *ps, const char *prefix, int cell, int C, int H,
                int layers, int bidir, int merge, int bptt, int lanes, int max_B, int max_T);
void nn_rnn_free(nn_rnn *r); /* zero-safe, idempotent */
/* Zeroes the carried state table. Cannot fail. */
void nn_rnn_reset_carry(nn_rnn *r);

/* Forward over x (B,T,C) with lengths len (B) (NULL: all T), B <= max_B, T <= max_T.
 * y (B,T,Hout) the last layer's sequence output (zero at padding) or NULL (return_sequences
 * off); last (B,Hout) the final valid state (forward: h at len-1, reverse: h at 0, as
 * PyTorch's h_n with packed sequences; zero for len 0) or NULL. lane_index (B): when
 * non-NULL and lanes > 0, initial states come from the carry table and final states are
 * written back; otherwise the initial state is zero. Cannot fail. */
void nn_rnn_forward(nn_rnn *r, float *y, float *last, const float *x, const int32_t *len,
                    const int64_t *lane_index, int B, int T);
/* Backward of the last forward: dy (B,T,Hout) or NULL, dlast (B,Hout) or NULL.
 * ACCUMULATES parameter gradients and dx (B,T,C) (may be NULL). Destroys the gate caches:
 * call once per forward. Cannot fail. */
void nn_rnn_backward(nn_rnn *r, float *dx, const float *dy, const float *dlast);

/* One inference step of a forward-only stack for B rows (no masking, no carry table):
 * x (B,C); h, c (layers,B,H) states in/out (c used by LSTM only); y (B,H) the top
 * layer's output; scratch of nn_rnn_step_scratch(r, B) floats. Cannot fail. */
size_t nn_rnn_step_scratch(const nn_rnn *r, int B);
void nn_rnn_step(const nn_rnn *r, float *y, float *h, float *c, const float *x, int B,
                 float *scratch);

/* ---- sequence models (seqmodels.c; listed in nn_models) ------------------------------ */
/* cnn-classifier: embedding -> Conv1D per width -> ReLU -> global max|mean pool -> concat ->
 * dropout -> linear -> softmax xent. Keys: dim, filters, width (list), pool, padding,
 * dropout. Parameters embedding/weight, conv_<i>/weight (F,dim,k), conv_<i>/bias,
 * output/weight, output/bias. */
extern const nn_model_ops nn_cnn_classifier_ops;
/* rnn-classifier: embedding -> stack -> final valid state (both directions) -> dropout ->
 * linear -> softmax xent. Keys: cell, bidirectional, merge, layers, hidden, dim, dropout. */
extern const nn_model_ops nn_rnn_classifier_ops;
/* rnn-lm: embedding -> dropout -> stack -> dropout -> linear (V) -> xent over non-pad
 * targets (stats: loss sum and token count; perplexity exp(loss/count)). Keys: cell,
 * layers, hidden, dim, dropout, bptt, carry (lanes), tie. Implements generate. */
extern const nn_model_ops nn_rnn_lm_ops;

#endif
