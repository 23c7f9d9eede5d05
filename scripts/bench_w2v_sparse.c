/* bench_w2v_sparse.c - prototype of the trainer support that skip-gram would need, for
 * scripts/bench-word2vec: the SAME model code (models/skipgram.c) driven by a loop that
 * zeroes and updates only the rows listed by nn_skipgram_touched (plain SGD, linear decay
 * to 0, as word2vec), instead of the trainer's dense zero / NaN scan / optimizer pass /
 * allreduce over all V x dim x 2 parameters every step. With P > 1 MPI ranks each rank
 * trains on its own windows (rank r takes every P-th batch of one global shuffled order)
 * and every K local steps (`--sync-every K`) and at the end the ranks add up their
 * parameter changes since the previous sync (local SGD with summed deltas). It is a measurement tool, not part of lockstep: no checkpoints, no resume.
 *
 *   mpirun -np P bench_w2v_sparse CKPT SHARD OUT.vec B T LR K [SEED [key=value ...]]
 * CKPT: a checkpoint of a `lockstep train --model skipgram` run with the wanted keys (its
 * configuration and vocabulary are used, its parameters are NOT: the model is rebuilt
 * from the seed); SHARD: that run's data/train.shard; B windows of T tokens per step.
 * Prints "words N seconds S words/s W" on rank 0 and writes OUT.vec (word2vec text). */
#include <mpi.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trainer/infer.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sgd_rows(float *p, float *g, const int32_t *rows, int n, int dim, float lr) {
    for (int i = 0; i < n; i++) {
        float *pr = p + (size_t)rows[i] * dim, *gr = g + (size_t)rows[i] * dim;
        for (int c = 0; c < dim; c++) {
            pr[c] -= lr * gr[c];
            gr[c] = 0.0f;
        }
    }
}

/* Every rank's parameters := base + the SUM over ranks of (params - base); base := that.
 * Summing the deltas (not averaging the models) keeps each update at full size: a plain
 * average would halve every row that only one rank touched, i.e. halve the learning rate. */
static void sync_deltas(float *p, float *base, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] -= base[i];
    MPI_Allreduce(MPI_IN_PLACE, p, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    for (size_t i = 0; i < n; i++) base[i] = p[i] += base[i];
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    if (argc < 8) {
        if (rank == 0) fprintf(stderr, "usage: bench_w2v_sparse CKPT SHARD OUT.vec B T LR K [SEED]\n");
        MPI_Finalize();
        return 2;
    }
    const int B = atoi(argv[4]), T = atoi(argv[5]), K = atoi(argv[7]);
    const float lr0 = (float)atof(argv[6]);
    trainer_loaded L;
    if (trainer_load_checkpoint(&L, argv[1], B, T) < 0) {
        fprintf(stderr, "bench_w2v_sparse: %s\n", nn_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    long seed = 1;
    nn_config_int(&L.cfg, "seed", 1, &seed);
    if (argc >= 9) seed = atol(argv[8]); /* a different initialisation, order and sampling */
    for (int i = 9; i < argc; i++) { /* model keys overriding the checkpoint's */
        char *eq = strchr(argv[i], '=');
        if (!eq) MPI_Abort(MPI_COMM_WORLD, 2);
        *eq = 0;
        nn_config_set(&L.cfg, argv[i], eq + 1);
    }
    long warmup = 0; /* key warmup=N on the command line */
    nn_config_int(&L.cfg, "warmup", 0, &warmup);
    nn_dims d = {.vocab = L.src->n, .vocab_counts = L.src->count, .max_batch = B, .max_len = T};
    nn_model m;
    if (nn_model_init(&m, &nn_skipgram_ops, &L.cfg, &d, (uint64_t)seed) < 0) {
        fprintf(stderr, "bench_w2v_sparse: %s\n", nn_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    nn_set_threads(1);
    io_shard sh;
    if (io_shard_open(&sh, argv[2], 0) < 0) {
        fprintf(stderr, "bench_w2v_sparse: %s\n", io_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const int64_t n_win = (sh.n_tok - 1) / T, steps = n_win / B;
    int64_t *perm = malloc((size_t)n_win * sizeof *perm), *index = malloc((size_t)B * sizeof *index);
    int32_t *x = malloc((size_t)B * T * sizeof *x);
    nn_rng g = nn_rng_make((uint64_t)seed, 0, 0, NN_RNG_SHUFFLE);
    for (int64_t i = 0; i < n_win; i++) perm[i] = i;
    for (int64_t i = n_win - 1; i > 0; i--) {
        int64_t j = (int64_t)(nn_rng_u64(&g) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    nn_params *ps = &m.params;
    const int in = nn_params_find(ps, "input/weight"), out = nn_params_find(ps, "output/weight");
    const int dim = ps->p[in].shape[1];
    float *Pin = ps->data + ps->p[in].offset, *Gin = ps->grad + ps->p[in].offset;
    float *Pout = ps->data + ps->p[out].offset, *Gout = ps->grad + ps->p[out].offset;
    nn_params_zero_grad(ps);
    float *base = malloc(ps->total * sizeof *base); /* parameters at the last sync */
    memcpy(base, ps->data, ps->total * sizeof *base);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now(), t_sync = 0, lsum = 0, lcount = 0;
    const int verbose = getenv("W2V_VERBOSE") != NULL;
    int64_t local = 0;
    for (int64_t s = rank; s < steps; s += P, local++) {
        for (int i = 0; i < B; i++) {
            index[i] = perm[s * B + i];
            memcpy(x + (size_t)i * T, sh.ids + index[i] * T, (size_t)T * sizeof *x);
        }
        nn_batch b = {.B = B, .T = T, .x = x, .index = index, .step = (uint64_t)s};
        nn_stats st = {0};
        if (m.ops->forward_backward(&m, &b, 1.0f / (float)(B * T), &st) < 0) {
            fprintf(stderr, "bench_w2v_sparse: %s\n", nn_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        /* the trainer's linear schedule (trainer_lr): warm-up, then linear decay to 0 */
        lsum += st.loss;
        lcount += st.count;
        if (verbose && rank == 0 && local % 250 == 0) {
            /* the largest input row norm: a diverging row shows here first */
            double mx = 0;
            int arg = 0;
            for (int v = 0; v < d.vocab; v++) {
                double nr = 0;
                for (int c = 0; c < dim; c++) nr += (double)Pin[(size_t)v * dim + c] * Pin[(size_t)v * dim + c];
                if (nr > mx) mx = nr, arg = v;
            }
            fprintf(stderr, "step %lld loss %.4f max |in| %.2f (%s)\n", (long long)s,
                    lcount > 0 ? lsum / lcount : 0.0, sqrt(mx), L.src->word[arg]);
            lsum = lcount = 0;
        }
        float lr = s < warmup ? lr0 * (float)(s + 1) / (float)warmup
                              : lr0 * (1.0f - (float)(s - warmup) / (float)(steps - warmup));
        const int32_t *rows;
        int n = nn_skipgram_touched(&m, 0, &rows);
        sgd_rows(Pin, Gin, rows, n, dim, lr);
        n = nn_skipgram_touched(&m, 1, &rows);
        sgd_rows(Pout, Gout, rows, n, dim, lr);
        nn_skipgram_touched_clear(&m);
        if (P > 1 && K > 0 && (local + 1) % K == 0) {
            double ts = now();
            sync_deltas(ps->data, base, ps->total);
            t_sync += now() - ts;
        }
    }
    if (P > 1) sync_deltas(ps->data, base, ps->total);
    double secs = now() - t0;
    if (rank == 0) {
        double words = (double)steps * B * T;
        printf("words %.0f seconds %.2f words/s %.0f ranks %d sync-every %d sync-seconds %.2f\n",
               words, secs, words / secs, P, K, t_sync);
        FILE *f = fopen(argv[3], "w");
        if (!f) MPI_Abort(MPI_COMM_WORLD, 1);
        fprintf(f, "%d %d\n", L.src->n - 4, dim);
        for (int i = 4; i < L.src->n; i++) {
            fputs(L.src->word[i], f);
            for (int c = 0; c < dim; c++) fprintf(f, " %.6g", Pin[(size_t)i * dim + c]);
            fputc('\n', f);
        }
        fclose(f);
    }
    free(base);
    free(perm);
    free(index);
    free(x);
    io_shard_close(&sh);
    nn_model_free(&m);
    trainer_loaded_free(&L);
    MPI_Finalize();
    return 0;
}
