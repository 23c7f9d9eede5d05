/* fuzz_util.h - helpers shared by the libFuzzer harnesses of tests/fuzz: a scratch file
 * per process for inputs that the code under test reads by path.
 *
 * Does not: keep anything between inputs except the scratch directory's name. */
#ifndef TESTS_FUZZ_FUZZ_UTIL_H
#define TESTS_FUZZ_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* "<dir>/<name>" in a per-process scratch directory (TMPDIR or /tmp), created once. */
static inline const char *fuzz_path(const char *name) {
    static char dir[256];
    static char buf[4][512];
    static int k;
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/lockstep_fuzz_XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) abort();
    }
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* Writes data[0..n) to path (aborts on failure: the harness itself is broken then). */
static inline void fuzz_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
}

/* Asserts a property of the code under test; a failure is a finding, like a crash. */
#define FUZZ_CHECK(cond)                                                               \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

#endif
