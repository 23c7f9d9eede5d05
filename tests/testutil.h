/* testutil.h - helpers shared by the Check unit tests of models/: keyed random fills, the
 * finite-difference gradient assertion and a table-driven suite runner. Header-only
 * (static functions), included by test_*.c files; it touches no files. */
#ifndef LOCKSTEP_TESTUTIL_H
#define LOCKSTEP_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/nn.h"

/* x[0..n) ~ U(lo, hi), a pure function of (seed, key). */
static inline void tu_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed,
                                   uint64_t key) {
    nn_rng r = nn_rng_make(seed, key, 0, NN_RNG_USER);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * nn_rng_uniform(&r);
}

/* x[0..n) ~ N(0, scale^2), a pure function of (seed, key). */
static inline void tu_fill_normal(float *x, size_t n, float scale, uint64_t seed, uint64_t key) {
    nn_rng r = nn_rng_make(seed, key, 0, NN_RNG_USER);
    for (size_t i = 0; i < n; i++) x[i] = scale * nn_rng_normal(&r);
}

/* Asserts that g (n floats), the gradient of f at x, agrees with central differences of
 * step h at `checks` entries spread over x (nn_gradcheck error < tol), and that the
 * negated gradient fails (error > 0.5), which shows the check can fail at all. A gradient
 * whose largest entry is below min_grad cannot show that: it fails the test, unless
 * zero_ok (a gradient that is legitimately zero), when only the first check is made.
 * NN_TEST_VERBOSE=1 prints every error. */
static inline void tu_check_grad(double (*f)(void *), void *ctx, float *x, const float *g,
                                 size_t n, float h, double tol, int checks, double min_grad,
                                 int zero_ok, const char *what) {
    double err = nn_gradcheck(f, ctx, x, g, n, h, checks);
    if (getenv("NN_TEST_VERBOSE")) fprintf(stderr, "%-48s error %.2e (tol %.0e)\n", what, err, tol);
    ck_assert_msg(err < tol, "%s: gradient check error %g >= %g", what, err, tol);
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
    if (gmax <= min_grad) {
        ck_assert_msg(zero_ok, "%s: gradient is (nearly) zero: %g", what, gmax);
        return;
    }
    float *neg = malloc(n * sizeof *neg);
    ck_assert_ptr_nonnull(neg);
    for (size_t i = 0; i < n; i++) neg[i] = -g[i];
    double bad = nn_gradcheck(f, ctx, x, neg, n, h, checks);
    ck_assert_msg(bad > 0.5, "%s: flipped gradient passed (error %g)", what, bad);
    free(neg);
}

/* A test and the test case (group) it belongs to; consecutive entries with the same
 * name form one TCase. */
typedef struct tu_case {
    const char *name;
    const TTest *t;
} tu_case;

/* Runs cases[0..n) as suite `suite` (60 s timeout per case) and returns the process exit
 * status: EXIT_SUCCESS when every test passed. */
static inline int tu_run(const char *suite, const tu_case *cases, size_t n) {
    Suite *s = suite_create(suite);
    TCase *tc = NULL;
    const char *cur = "";
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cases[i].name, cur) != 0) {
            tc = tcase_create(cases[i].name);
            tcase_set_timeout(tc, 60);
            suite_add_tcase(s, tc);
            cur = cases[i].name;
        }
        tcase_add_test(tc, cases[i].t);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
