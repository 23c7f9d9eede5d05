/* bench_data.c - how fast the training loop can read a language-model token shard.
 *
 * usage: bench_data SHARD [--seq-len T] [--batch B] [--cold] [--verify] [--sequential]
 *
 * Maps SHARD as every rank does (io_shard_open), builds the example order the trainer
 * uses for --order shuffle (a Fisher-Yates permutation of all (n_tok - 1) / T windows, one
 * int64 each), then touches every window once in that order, copying inputs and shifted
 * targets into a batch buffer of B windows exactly as trainer_batch_fill does. --cold
 * first drops the file's pages from the page cache (posix_fadvise DONTNEED on this file
 * only), so the pass reads from disk; --verify also checks the shard's checksum on open
 * (a full sequential read); --sequential reads windows in file order instead.
 *
 * Prints one line of key=value pairs: windows, tokens, seconds for open, permutation and
 * the pass, tokens/s, MB/s of ids read, the permutation's size, the peak RSS and the
 * resident anonymous and file-backed memory at the end.
 * Not a test and not part of the trainer: it measures, it does not check. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "io/io.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_data SHARD [--seq-len T] [--batch B] [--cold] [--verify] "
                        "[--sequential]\n");
        return 2;
    }
    const char *path = argv[1];
    int T = 64, B = 32, cold = 0, verify = 0, sequential = 0, advice = 0;
    long long limit = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--seq-len") == 0 && i + 1 < argc) T = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--cold") == 0) cold = 1;
        else if (strcmp(argv[i], "--verify") == 0) verify = 1;
        else if (strcmp(argv[i], "--sequential") == 0) sequential = 1;
        else if (strcmp(argv[i], "--random-advice") == 0) advice = 1;
        else if (strcmp(argv[i], "--windows") == 0 && i + 1 < argc) limit = atoll(argv[++i]);
        else {
            fprintf(stderr, "bench_data: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (T < 1 || B < 1) {
        fprintf(stderr, "bench_data: need --seq-len >= 1 and --batch >= 1\n");
        return 2;
    }
    if (cold) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            fdatasync(fd);
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            close(fd);
        }
    }
    double t0 = now();
    io_shard s = {0};
    if (io_shard_open(&s, path, verify) < 0) {
        fprintf(stderr, "bench_data: %s\n", io_error());
        return 1;
    }
    double t_open = now() - t0;
    if (s.kind != IO_TEXT_PLAIN) {
        fprintf(stderr, "bench_data: %s is not a language-model (plain text) shard\n", path);
        io_shard_close(&s);
        return 1;
    }
    if (advice) madvise(s.map, s.map_len, MADV_RANDOM);
    const int64_t n_all = s.n_tok > 1 ? (s.n_tok - 1) / T : 0;
    int64_t *perm = malloc((size_t)(n_all ? n_all : 1) * sizeof *perm);
    int32_t *x = malloc((size_t)B * (size_t)T * sizeof *x), *y = malloc((size_t)B * (size_t)T * sizeof *y);
    if (!perm || !x || !y) {
        fprintf(stderr, "bench_data: out of memory\n");
        return 1;
    }
    t0 = now();
    for (int64_t i = 0; i < n_all; i++) perm[i] = i;
    if (!sequential) {
        uint64_t st = 12345;
        for (int64_t i = n_all - 1; i > 0; i--) {
            int64_t j = (int64_t)(splitmix(&st) % (uint64_t)(i + 1));
            int64_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
    double t_perm = now() - t0;
    const int64_t n = limit > 0 && limit < n_all ? limit : n_all;
    uint64_t sum = 0;
    t0 = now();
    for (int64_t i = 0; i < n; i += B) {
        int nb = (int)(n - i < B ? n - i : B);
        for (int b = 0; b < nb; b++) {
            int64_t start = perm[i + b] * (int64_t)T;
            memcpy(x + (size_t)b * T, s.ids + start, (size_t)T * sizeof *x);
            memcpy(y + (size_t)b * T, s.ids + start + 1, (size_t)T * sizeof *y);
        }
        sum += (uint64_t)x[0] + (uint64_t)y[(size_t)nb * T - 1];
    }
    double t_pass = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* resident now: anonymous (heap: the permutation) vs file-backed (the mapping, which
     * the kernel can drop at any time) */
    long anon_kb = -1, file_kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "RssAnon:", 8) == 0) anon_kb = atol(line + 8);
            if (strncmp(line, "RssFile:", 8) == 0) file_kb = atol(line + 8);
        }
        fclose(f);
    }
    double toks = (double)n * T;
    printf("windows=%lld tokens=%.0f seq_len=%d batch=%d order=%s cache=%s open_s=%.3f "
           "perm_s=%.3f pass_s=%.3f tokens_per_s=%.3g MB_per_s=%.0f perm_MB=%.1f "
           "maxrss_MB=%.1f rss_anon_MB=%.1f rss_file_MB=%.1f checksum=%llu\n",
           (long long)n, toks, T, B, sequential ? "sequential" : "shuffle", cold ? "cold" : "warm",
           t_open, t_perm, t_pass, toks / (t_pass + 1e-12), toks * 4 / 1e6 / (t_pass + 1e-12),
           (double)n * 8 / 1e6, (double)ru.ru_maxrss / 1024.0, anon_kb / 1024.0, file_kb / 1024.0,
           (unsigned long long)sum);
    free(perm);
    free(x);
    free(y);
    io_shard_close(&s);
    return 0;
}
