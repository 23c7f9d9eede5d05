/* bench_ckpt.c - time io_ckpt_write of a checkpoint of about MB megabytes against plain
 * stdio of the same bytes with the same durability (fwrite, fflush, fsync, rename), in
 * alternating rounds. Usage: bench_ckpt DIR [MB] [ROUNDS]. Prints medians and the ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io/io.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_ckpt DIR [MB] [ROUNDS]\n");
        return 2;
    }
    const char *dir = argv[1];
    const int mb = argc > 2 ? atoi(argv[2]) : 100, rounds = argc > 3 ? atoi(argv[3]) : 5;
    enum { NT = 25 };
    const size_t per = (size_t)mb * 1048576 / 4 / NT, n = per * NT;
    float *p = malloc(n * sizeof *p);
    if (!p) return 1;
    for (size_t i = 0; i < n; i++) p[i] = (float)(i % 1000) * 1e-3f;
    io_tensor t[NT];
    char names[NT][32];
    for (int i = 0; i < NT; i++) {
        snprintf(names[i], sizeof names[i], "layer_%d/w", i);
        t[i].name = names[i];
        t[i].offset = (size_t)i * per;
        t[i].ndim = 2;
        t[i].shape[0] = (int)(per / 1024);
        t[i].shape[1] = 1024;
    }
    io_ckpt ck = {0};
    ck.model = "bench";
    ck.n_tensors = NT;
    ck.tensors = t;
    ck.n_floats = n;
    ck.params = p;
    char hpath[4096], fpath[4096], tpath[4200];
    snprintf(hpath, sizeof hpath, "%s/bench_ckpt.h5", dir);
    snprintf(fpath, sizeof fpath, "%s/bench_ckpt.bin", dir);
    snprintf(tpath, sizeof tpath, "%s.tmp", fpath);
    double *th = calloc((size_t)rounds, sizeof *th), *tf = calloc((size_t)rounds, sizeof *tf);
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        if (io_ckpt_write(hpath, &ck) != IO_OK) {
            fprintf(stderr, "bench_ckpt: %s\n", io_error());
            return 1;
        }
        th[r] = now() - t0;
        t0 = now();
        FILE *f = fopen(tpath, "wb");
        if (!f || fwrite(p, sizeof *p, n, f) != n || fflush(f) != 0 || fsync(fileno(f)) != 0 ||
            fclose(f) != 0 || rename(tpath, fpath) != 0) {
            perror("bench_ckpt: fwrite path");
            return 1;
        }
        tf[r] = now() - t0;
        printf("round %d: io_ckpt_write %.3f s, fwrite+fsync %.3f s\n", r + 1, th[r], tf[r]);
    }
    qsort(th, (size_t)rounds, sizeof *th, cmp);
    qsort(tf, (size_t)rounds, sizeof *tf, cmp);
    double mh = th[rounds / 2], mf = tf[rounds / 2];
    printf("%d MB: io_ckpt_write median %.3f s (%.0f MB/s), fwrite+fsync median %.3f s "
           "(%.0f MB/s), ratio %.2fx\n",
           mb, mh, mb / mh, mf, mb / mf, mh / mf);
    unlink(hpath);
    unlink(fpath);
    free(th);
    free(tf);
    free(p);
    return 0;
}
