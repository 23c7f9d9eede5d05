/* bench_lstm.c - training throughput of the rnn-lm model: forward_backward plus a plain
 * Adam update on random tokens, timed over a number of steps after warm-up.
 *
 *   bench_lstm [--threads N] [--steps N] [--warmup N] [--vocab V] [--dim E] [--hidden H]
 *              [--layers L] [--seq T] [--batch B] [--cell lstm|gru|rnn]
 *
 * Prints one line "lockstep tokens/s X threads N ..." (what scripts/bench-lstm parses).
 * Does not read data or use MPI: it measures the model stack alone. */
#include "models/nn.h"

#include <math.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* CPU seconds of the whole process (all threads): less sensitive to a shared machine. */
static double cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(int argc, char **argv) {
    int threads = 1, steps = 10, warmup = 2, V = 8192, E = 256, H = 256, L = 2, T = 64, B = 32;
    const char *cell = "lstm";
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i];
        int v = atoi(argv[i + 1]);
        if (!strcmp(k, "--threads")) threads = v;
        else if (!strcmp(k, "--steps")) steps = v;
        else if (!strcmp(k, "--warmup")) warmup = v;
        else if (!strcmp(k, "--vocab")) V = v;
        else if (!strcmp(k, "--dim")) E = v;
        else if (!strcmp(k, "--hidden")) H = v;
        else if (!strcmp(k, "--layers")) L = v;
        else if (!strcmp(k, "--seq")) T = v;
        else if (!strcmp(k, "--batch")) B = v;
        else if (!strcmp(k, "--cell")) cell = argv[i + 1];
        else {
            fprintf(stderr, "bench_lstm: unknown option %s\n", k);
            return 2;
        }
    }
    nn_set_threads(threads);
    nn_config cfg = {0};
    char buf[32];
    nn_config_set(&cfg, "cell", cell);
    snprintf(buf, sizeof buf, "%d", E), nn_config_set(&cfg, "dim", buf);
    snprintf(buf, sizeof buf, "%d", H), nn_config_set(&cfg, "hidden", buf);
    snprintf(buf, sizeof buf, "%d", L), nn_config_set(&cfg, "layers", buf);
    nn_dims d = {0};
    d.vocab = V;
    d.max_len = T;
    d.max_batch = B;
    nn_model m = {0};
    if (nn_model_init(&m, nn_model_find("rnn-lm"), &cfg, &d, 1) < 0) {
        fprintf(stderr, "bench_lstm: %s\n", nn_error());
        return 1;
    }
    size_t P = m.params.total;
    float *mom = calloc(P, sizeof(float)), *vel = calloc(P, sizeof(float));
    int32_t *x = malloc((size_t)B * (T + 1) * sizeof *x), *y = malloc((size_t)B * T * sizeof *y);
    int32_t *xl = malloc((size_t)B * sizeof *xl);
    int64_t *idx = malloc((size_t)B * sizeof *idx);
    if (!mom || !vel || !x || !y || !xl || !idx) return 1;
    nn_rng g = nn_rng_make(7, 0, 0, NN_RNG_USER);
    double t0 = 0.0, c0 = 0.0, loss = 0.0;
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup) t0 = now(), c0 = cpu();
        for (int b = 0; b < B; b++) {
            for (int t = 0; t <= T; t++) x[b * (T + 1) + t] = 4 + (int32_t)nn_rng_below(&g, V - 4);
            xl[b] = T;
            idx[b] = (int64_t)s * B + b;
        }
        for (int b = 0; b < B; b++) memcpy(y + b * T, x + b * (T + 1) + 1, T * sizeof *y);
        for (int b = 0; b < B; b++) memmove(x + b * T, x + b * (T + 1), T * sizeof *x);
        nn_batch bt = {0};
        bt.B = B, bt.T = T, bt.U = T, bt.x = x, bt.x_len = xl, bt.y = y, bt.index = idx;
        bt.step = (uint64_t)s;
        nn_stats st = {0};
        nn_params_zero_grad(&m.params);
        if (m.ops->forward_backward(&m, &bt, 1.0f / (B * T), &st) < 0) {
            fprintf(stderr, "bench_lstm: %s\n", nn_error());
            return 1;
        }
        loss = st.loss / st.count;
        /* plain Adam over the flat buffer */
        float c1 = 1.0f / (1.0f - powf(b1, s + 1)), c2 = 1.0f / (1.0f - powf(b2, s + 1));
        float *w = m.params.data, *gr = m.params.grad;
        for (size_t i = 0; i < P; i++) {
            mom[i] = b1 * mom[i] + (1.0f - b1) * gr[i];
            vel[i] = b2 * vel[i] + (1.0f - b2) * gr[i] * gr[i];
            w[i] -= lr * (mom[i] * c1) / (sqrtf(vel[i] * c2) + eps);
        }
    }
    double dt = now() - t0, dc = cpu() - c0;
    printf("lockstep tokens/s %.0f threads %d steps %d sec/step %.4f cpu/step %.4f loss %.4f "
           "params %zu\n", (double)steps * B * T / dt, threads, steps, dt / steps, dc / steps,
           loss, P);
    nn_model_free(&m);
    nn_config_free(&cfg);
    free(mom); free(vel); free(x); free(y); free(xl); free(idx);
    return 0;
}
