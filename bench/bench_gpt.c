/* bench_gpt.c - training throughput of the gpt model: forward_backward plus an AdamW
 * update on random tokens, timed per step; prints tokens/s, model FLOPs utilisation
 * against an SGEMM peak measured in the same process, and peak RSS against the memory
 * the model needs on paper.
 *
 *   bench_gpt [--threads N] [--steps N] [--warmup N] [--batch B] [--context T]
 *             [--vocab V] [--dim C] [--layers L] [--heads H] [--ff FF] [--peak 0|1]
 *             [--matmul fp32|bf16]
 *
 * Defaults are the headline model: V8192 T128 C256 L4 H4 FF1024 GELU pre-LN, learned
 * positions, tied embeddings, B16. The AdamW loop is written here (the trainer has its
 * own); it is one pass over the flat parameter buffer. --matmul bf16 runs every GEMM in
 * bf16 (nn_set_matmul; AMX where the CPU has it); the peak is then measured in bf16 too. Does not read data or use MPI.
 * Output: one line "RESULT key=value ..." for scripts/bench-gpt, and readable lines. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "models/nn.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void) { /* CPU seconds of the whole process (all threads) */
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* GEMM GFLOP/s (in the process's matmul precision) on a transformer-shaped product (the FFN's N x FF x C), best of a few
 * repetitions (30), with the current thread count. */
static double gemm_peak(int N, int C, int FF) {
    float *a = malloc((size_t)N * C * sizeof *a), *w = malloc((size_t)FF * C * sizeof *w);
    float *y = malloc((size_t)N * FF * sizeof *y);
    if (!a || !w || !y) return 0.0;
    for (size_t i = 0; i < (size_t)N * C; i++) a[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)FF * C; i++) w[i] = (float)(i % 7) * 0.01f;
    double best = 0.0;
    for (int rep = 0; rep < 30; rep++) {
        double t0 = now();
        nn_gemm(0, 1, N, FF, C, 1.0f, a, C, w, C, 0.0f, y, FF);
        double dt = now() - t0, gf = 2.0 * N * FF * C / dt * 1e-9;
        if (gf > best) best = gf;
    }
    free(a), free(w), free(y);
    return best;
}

typedef struct adamw {
    float *m, *v;
    float lr, b1, b2, eps, wd;
    long t;
} adamw;

/* One AdamW step; also zeroes each gradient after reading it (saving the separate
 * nn_params_zero_grad pass before the next step). */
static void adamw_step(adamw *o, nn_params *ps) {
    o->t++;
    const float c1 = 1.0f / (1.0f - powf(o->b1, (float)o->t));
    const float c2 = 1.0f / (1.0f - powf(o->b2, (float)o->t));
    for (int k = 0; k < ps->n; k++) {
        const nn_param *p = &ps->p[k];
        float *restrict w = ps->data + p->offset, *restrict g = ps->grad + p->offset;
        float *restrict m = o->m + p->offset, *restrict v = o->v + p->offset;
        const float decay = p->decay ? 1.0f - o->lr * o->wd : 1.0f;
        const float b1 = o->b1, b2 = o->b2, lr = o->lr, eps = o->eps;
        for (size_t i = 0; i < p->size; i++) {
            float gi = g[i];
            g[i] = 0.0f;
            float mi = b1 * m[i] + (1.0f - b1) * gi, vi = b2 * v[i] + (1.0f - b2) * gi * gi;
            m[i] = mi, v[i] = vi;
            w[i] = w[i] * decay - lr * (mi * c1) / (sqrtf(vi * c2) + eps);
        }
    }
}

int main(int argc, char **argv) {
    int threads = 1, steps = 10, warmup = 2, B = 16, T = 128, V = 8192, C = 256, L = 4, H = 4,
        FF = 1024, peak = 1, bf16 = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--matmul") && (!strcmp(argv[i + 1], "fp32") || !strcmp(argv[i + 1], "bf16")))
            bf16 = !strcmp(argv[i + 1], "bf16");
        else if (!strcmp(argv[i], "--threads")) threads = v;
        else if (!strcmp(argv[i], "--steps")) steps = v;
        else if (!strcmp(argv[i], "--warmup")) warmup = v;
        else if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--context")) T = v;
        else if (!strcmp(argv[i], "--vocab")) V = v;
        else if (!strcmp(argv[i], "--dim")) C = v;
        else if (!strcmp(argv[i], "--layers")) L = v;
        else if (!strcmp(argv[i], "--heads")) H = v;
        else if (!strcmp(argv[i], "--ff")) FF = v;
        else if (!strcmp(argv[i], "--peak")) peak = v;
        else {
            fprintf(stderr, "bench_gpt: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (steps < 1 || B < 1 || T < 1) return 2;
    nn_set_threads(threads);
    nn_set_matmul(bf16 ? NN_MATMUL_BF16 : NN_MATMUL_FP32);
    char buf[8][32];
    nn_config cfg = {0};
    snprintf(buf[0], 32, "%d", L), nn_config_set(&cfg, "layers", buf[0]);
    snprintf(buf[1], 32, "%d", H), nn_config_set(&cfg, "heads", buf[1]);
    snprintf(buf[2], 32, "%d", C), nn_config_set(&cfg, "dim", buf[2]);
    snprintf(buf[3], 32, "%d", FF), nn_config_set(&cfg, "ff", buf[3]);
    snprintf(buf[4], 32, "%d", T), nn_config_set(&cfg, "context", buf[4]);
    nn_dims d = {0};
    d.vocab = V, d.max_len = T, d.max_batch = B;
    nn_model m;
    if (nn_model_init(&m, &nn_gpt_ops, &cfg, &d, 1234) != NN_OK) {
        fprintf(stderr, "bench_gpt: %s\n", nn_error());
        return 1;
    }
    size_t P = m.params.total;
    adamw opt = {nn_alloc_big(P * sizeof(float)), nn_alloc_big(P * sizeof(float)), 3e-4f, 0.9f,
                 0.95f, 1e-8f, 0.1f, 0};
    int32_t *x = malloc((size_t)B * T * sizeof *x), *y = malloc((size_t)B * T * sizeof *y);
    int64_t *index = malloc((size_t)B * sizeof *index);
    double *dt = malloc((size_t)steps * sizeof *dt), *dc = malloc((size_t)steps * sizeof *dc);
    if (!dc || !opt.m || !opt.v || !x || !y || !index || !dt) return 1;
    memset(opt.m, 0, P * sizeof(float)), memset(opt.v, 0, P * sizeof(float));
    nn_batch b = {0};
    b.B = B, b.T = T, b.U = T, b.x = x, b.y = y, b.index = index;
    nn_params_zero_grad(&m.params); /* afterwards adamw_step leaves the gradients zero */
    double loss0 = 0, loss1 = 0;
    for (int s = 0; s < warmup + steps; s++) {
        nn_rng r = nn_rng_make(99, (uint64_t)s, 0, NN_RNG_USER);
        for (int i = 0; i < B * T; i++) { /* a learnable stream: y is x shifted */
            x[i] = 4 + (int32_t)nn_rng_below(&r, (uint32_t)V - 4);
        }
        for (int i = 0; i < B * T; i++) y[i] = (i % T == T - 1) ? x[i] : x[i + 1];
        for (int i = 0; i < B; i++) index[i] = (int64_t)s * B + i;
        b.step = (uint64_t)s;
        double t0 = now(), c0 = cpu_now();
        nn_stats st = {0};
        if (m.ops->forward_backward(&m, &b, 1.0f / (float)(B * T), &st) != NN_OK) {
            fprintf(stderr, "bench_gpt: %s\n", nn_error());
            return 1;
        }
        adamw_step(&opt, &m.params);
        double t1 = now(), c1 = cpu_now();
        if (s >= warmup) dt[s - warmup] = t1 - t0, dc[s - warmup] = c1 - c0;
        if (s == 0) loss0 = st.loss / st.count;
        loss1 = st.loss / st.count;
    }
    qsort(dt, (size_t)steps, sizeof *dt, cmp_double);
    qsort(dc, (size_t)steps, sizeof *dc, cmp_double);
    double med = dt[steps / 2], tps = (double)B * T / med, cmed = dc[steps / 2];
    /* FLOPs per token: 6 x (matmul parameters) + 12 L T C for attention (full T x T) */
    double mm = (double)L * (4.0 * C * C + 2.0 * C * FF) + (double)C * V;
    double flop_tok = 6.0 * mm + 12.0 * L * T * C;
    double gpk = peak ? gemm_peak(B * T, C, FF) : 0.0;
    double mfu = gpk > 0 ? tps * flop_tok * 1e-9 / gpk : 0.0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double N = (double)B * T;
    /* on paper: params + grads + Adam m, v; activations kept for backward (per layer x_in,
     * ln1, qkv, atty, x_mid, ln2 = 8 N C; h, a, GELU's tanh = 3 N FF; probabilities
     * B H T T), the logits N V, ln_f in/out 2 N C, and backward scratch (5 N C + N FF +
     * the transposed output gradient C V). */
    double act = L * (8.0 * N * C + 3.0 * N * FF + (double)B * H * T * T) + N * V +
                 2.0 * N * C + 5.0 * N * C + N * FF + (double)C * V;
    double paper_mb = (4.0 * P + act) * 4.0 / 1048576.0;
    printf("gpt V%d T%d C%d L%d H%d FF%d B%d, %zu parameters, %d thread(s), matmul %s%s\n", V, T,
           C, L, H, FF, B, P, threads, bf16 ? "bf16 on " : "fp32", bf16 ? nn_matmul_engine() : "");
    printf("  step median %.1f ms (min %.1f, max %.1f) over %d steps: %.0f tokens/s\n",
           med * 1e3, dt[0] * 1e3, dt[steps - 1] * 1e3, steps, tps);
    printf("  CPU time per step median %.1f ms (%.2f cores busy)\n", cmed * 1e3, cmed / med);
    printf("  %.1f MFLOP/token -> %.1f GFLOP/s; GEMM peak %.1f GFLOP/s; MFU %.1f%%\n",
           flop_tok * 1e-6, tps * flop_tok * 1e-9, gpk, 100.0 * mfu);
    printf("  loss %.3f -> %.3f; peak RSS %.0f MB, on paper %.0f MB (ratio %.2f)\n", loss0, loss1,
           ru.ru_maxrss / 1024.0, paper_mb, ru.ru_maxrss / 1024.0 / paper_mb);
    printf("RESULT impl=%s threads=%d tokens_per_s=%.1f step_ms=%.2f gflops=%.2f "
           "peak_gflops=%.2f mfu=%.4f rss_mb=%.1f paper_mb=%.1f cpu_ms=%.2f best_tokens_per_s=%.1f\n",
           bf16 ? "lockstep-bf16" : "lockstep", threads, tps, med * 1e3, tps * flop_tok * 1e-9, gpk, mfu, ru.ru_maxrss / 1024.0,
           paper_mb, cmed * 1e3, (double)B * T / dt[0]);
    free(dc), free(x), free(y), free(index), free(dt), free(opt.m), free(opt.v);
    nn_model_free(&m);
    nn_config_free(&cfg);
    return 0;
}
