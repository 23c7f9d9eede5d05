/* bench_comm.c - gradient-exchange benchmark for comm/ (run with 2 ranks).
 *
 * Measures, per buffer size: one blocking in-place MPI_Allreduce (comm_allreduce_sum_f32)
 * against the bucketed path (comm_buckets: all buckets started, then finish), in GB/s of
 * payload (n * 4 bytes / time). Then the overlap test: a simulated backward pass (a fixed
 * loop of SGEMMs, split into layers) announces each layer's gradients as ready and calls
 * comm_buckets_progress between GEMMs; the fraction of communication hidden is
 *     (T_compute + T_comm - T_overlapped) / T_comm,
 * next to the time left waiting in comm_buckets_finish as a share of T_comm (on 2 cores
 * the copies themselves use the CPUs, so a short wait does not mean free communication);
 * both also without progress calls. Medians over --reps runs. Does not check results
 * (tests/mpi_comm.c does). Prints on rank 0 only.
 *
 * usage: bench_comm [--floats N[,N...]] [--bucket-mib X] [--reps R] [--gemm M] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"

static int cmp_dbl_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_dbl_);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One simulated backward: L layers of G GEMMs (M,M)x(M,M). After each layer, the
 * gradients of the next 1/L of the buffer (from the end) are final. b may be NULL
 * (compute only); progress = 0 skips the progress calls. */
typedef struct sim {
    int L, G, M;
    float *A, *B, *Cm; /* (M,M) each */
} sim;

static void sim_backward_(const sim *s, comm_buckets *b, size_t n, int progress) {
    for (int l = 0; l < s->L; l++) {
        for (int g = 0; g < s->G; g++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->M, s->M, s->M, 1.0f,
                        s->A, s->M, s->B, s->M, 0.5f, s->Cm, s->M);
            if (b && progress) comm_buckets_progress(b);
        }
        if (b) comm_buckets_ready(b, n / (size_t)s->L * (size_t)(s->L - 1 - l));
    }
}

int main(int argc, char **argv) {
    comm c;
    comm_init(&c, &argc, &argv);
    size_t sizes[8] = {(size_t)4 << 20, (size_t)16 << 20};
    int nsizes = 2, reps = 5, M = 128;
    double bucket_mib = 4.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--floats") && i + 1 < argc) {
            nsizes = 0;
            for (char *t = strtok(argv[++i], ","); t && nsizes < 8; t = strtok(NULL, ","))
                sizes[nsizes++] = (size_t)strtoull(t, NULL, 10);
        } else if (!strcmp(argv[i], "--bucket-mib") && i + 1 < argc) {
            bucket_mib = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--gemm") && i + 1 < argc) {
            M = atoi(argv[++i]);
        } else {
            if (c.rank == 0)
                fprintf(stderr, "usage: bench_comm [--floats N[,N...]] [--bucket-mib X] "
                                "[--reps R] [--gemm M]\n");
            comm_free(&c);
            return 2;
        }
    }
    if (reps < 1 || reps > 100) reps = 5;
    size_t bucket_bytes = (size_t)(bucket_mib * 1048576.0);
    if (c.rank == 0)
        printf("bench_comm: %s, %d ranks, buckets %.2f MiB, %d reps (median), GEMM %d^3\n",
               comm_mpi_version(), c.size, bucket_mib, reps, M);

    size_t nmax = 0;
    for (int i = 0; i < nsizes; i++) nmax = sizes[i] > nmax ? sizes[i] : nmax;
    float *g = malloc((nmax ? nmax : 1) * sizeof *g);
    double *t = malloc((size_t)reps * sizeof *t);
    sim s = {.L = 16, .G = 1, .M = M};
    s.A = malloc((size_t)M * M * sizeof(float));
    s.B = malloc((size_t)M * M * sizeof(float));
    s.Cm = malloc((size_t)M * M * sizeof(float));
    if (!g || !t || !s.A || !s.B || !s.Cm) comm_abort(&c, 1, "bench_comm: out of memory");
    for (size_t i = 0; i < nmax; i++) g[i] = 1e-3f * (float)(i % 1000);
    for (size_t i = 0; i < (size_t)M * M; i++) {
        s.A[i] = 1e-3f * (float)(i % 97);
        s.B[i] = 1e-3f * (float)(i % 89);
        s.Cm[i] = 0.0f;
    }

    for (int si = 0; si < nsizes; si++) {
        size_t n = sizes[si];
        double mb = (double)n * sizeof(float) / 1e9;
        comm_buckets b;
        if (comm_buckets_init(&b, &c, g, n, bucket_bytes) != 0)
            comm_abort(&c, 1, "bench_comm: out of memory");
        float inv = 1.0f / (float)c.size; /* keeps values bounded over the reps */

        /* Warm-up both paths once (first touch, shared-memory segments). */
        comm_allreduce_grads(&c, g, n, inv);
        comm_buckets_ready(&b, 0);
        comm_buckets_finish(&b, inv);

        for (int r = 0; r < reps; r++) {
            comm_barrier(&c);
            double t0 = MPI_Wtime();
            comm_allreduce_sum_f32(&c, g, n);
            t[r] = MPI_Wtime() - t0;
        }
        double t_plain = median_(t, reps), t_plain_min = t[0];
        for (int r = 0; r < reps; r++) {
            comm_barrier(&c);
            double t0 = MPI_Wtime();
            comm_buckets_ready(&b, 0);
            comm_buckets_finish(&b, 1.0f);
            t[r] = MPI_Wtime() - t0;
        }
        double t_buck = median_(t, reps), t_buck_min = t[0];
        comm_allreduce_max_f64(&c, &t_plain, 1);
        comm_allreduce_max_f64(&c, &t_buck, 1);
        comm_allreduce_max_f64(&c, &t_plain_min, 1);
        comm_allreduce_max_f64(&c, &t_buck_min, 1);

        /* Calibrate the simulated backward to ~1.5x the bucketed communication time,
         * on rank 0, so every rank runs the same number of GEMMs. */
        double t0 = MPI_Wtime();
        for (int k = 0; k < 20; k++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, M, M, 1.0f, s.A, M,
                        s.B, M, 0.5f, s.Cm, M);
        double t_gemm = (MPI_Wtime() - t0) / 20;
        int G = (int)(1.5 * t_buck / (t_gemm * s.L)) + 1;
        comm_bcast_bytes(&c, &G, sizeof G, 0);
        s.G = G;

        double tc[3]; /* compute only, overlapped with progress, overlapped without */
        double waitp = 0, waitn = 0;
        for (int mode = 0; mode < 3; mode++) {
            for (int r = 0; r < reps; r++) {
                comm_barrier(&c);
                double w0 = b.wait_seconds;
                double t1 = MPI_Wtime();
                sim_backward_(&s, mode ? &b : NULL, n, mode == 1);
                if (mode) comm_buckets_finish(&b, 1.0f);
                t[r] = MPI_Wtime() - t1;
                if (mode == 1) waitp += b.wait_seconds - w0;
                if (mode == 2) waitn += b.wait_seconds - w0;
            }
            tc[mode] = median_(t, reps);
        }
        comm_allreduce_max_f64(&c, tc, 3);
        waitp /= reps;
        waitn /= reps;
        double hid_p = (tc[0] + t_buck - tc[1]) / t_buck;
        double hid_n = (tc[0] + t_buck - tc[2]) / t_buck;
        if (c.rank == 0) {
            printf("n=%zu floats (%.1f MB), %zu buckets\n", n, mb * 1e3, b.count);
            printf("  plain MPI_Allreduce   %8.2f ms  %6.2f GB/s  (best %6.2f GB/s)\n",
                   t_plain * 1e3, mb / t_plain, mb / t_plain_min);
            printf("  bucketed Iallreduce   %8.2f ms  %6.2f GB/s  (best %6.2f GB/s)\n",
                   t_buck * 1e3, mb / t_buck, mb / t_buck_min);
            printf("  overlap: compute %.2f ms (%d layers x %d GEMMs)\n", tc[0] * 1e3, s.L, G);
            printf("    with progress     total %8.2f ms, hidden %6.1f %%; finish() wait "
                   "%7.2f ms = %5.1f %% of comm (rank 0)\n", tc[1] * 1e3, 100 * hid_p,
                   waitp * 1e3, 100 * waitp / t_buck);
            printf("    without progress  total %8.2f ms, hidden %6.1f %%; finish() wait "
                   "%7.2f ms = %5.1f %% of comm (rank 0)\n", tc[2] * 1e3, 100 * hid_n,
                   waitn * 1e3, 100 * waitn / t_buck);
        }
        comm_buckets_free(&b);
    }
    free(s.A);
    free(s.B);
    free(s.Cm);
    free(t);
    free(g);
    comm_free(&c);
    return 0;
}
