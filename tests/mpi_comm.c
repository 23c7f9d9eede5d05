/* mpi_comm.c - comm/ under mpiexec (2 and 4 ranks): broadcast, sums, slices, flags.
 *
 * Every test runs its collectives first and asserts after, so a failing rank never skips
 * a collective and leaves the others hanging. Expected values are computed here from
 * closed-form formulas (integers and halves, exact in float), never by the code under
 * test. Check runs in CK_NOFORK mode: a forked child is not an MPI process. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"

static comm C; /* MPI_COMM_WORLD for every test */

/* Element i of rank r's test buffer: small integers and halves, so every sum is exact. */
static float val_(size_t i, int r) { return (float)(i % 13) - 6.0f + 0.5f * (float)r; }
/* Exact sum over ranks 0..P-1 of val_(i, r). */
static double sum_(size_t i, int P) {
    return (double)P * ((double)(i % 13) - 6.0) + 0.5 * (double)P * (P - 1) / 2.0;
}

static const size_t SIZES[] = {0, 1, 2, 7, 64, 1001, 4099};
static const size_t CHUNKS[] = {0, 1, 3, 64}; /* 0 = default 2^30 */
#define NSIZES (sizeof SIZES / sizeof SIZES[0])
#define NCHUNKS (sizeof CHUNKS / sizeof CHUNKS[0])

/* ---- broadcast ------------------------------------------------------------------ */

START_TEST(test_bcast_params_makes_every_rank_hold_rank0_values) {
    size_t bad = 0, checked = 0;
    for (size_t ci = 0; ci < NCHUNKS; ci++) {
        comm_set_chunk_(CHUNKS[ci]);
        for (size_t si = 0; si < NSIZES; si++) {
            size_t n = SIZES[si];
            float *p = malloc((n ? n : 1) * sizeof *p);
            ck_assert_ptr_nonnull(p);
            for (size_t i = 0; i < n; i++) p[i] = val_(i, C.rank) + 100.0f * (float)C.rank;
            comm_bcast_params(&C, p, n);
            for (size_t i = 0; i < n; i++, checked++) bad += p[i] != val_(i, 0);
            free(p);
        }
    }
    comm_set_chunk_(0);
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_gt(checked, 0);
}
END_TEST

START_TEST(test_bcast_bytes_copies_from_a_nonzero_root_across_chunks) {
    const size_t n = 1037;
    int root = C.size - 1;
    unsigned char *b = malloc(n);
    ck_assert_ptr_nonnull(b);
    comm_set_chunk_(100); /* 10 full chunks and a partial one */
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 7 + (size_t)C.rank * 31) & 0xff);
    comm_bcast_bytes(&C, b, n, root);
    comm_set_chunk_(0);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += b[i] != (unsigned char)((i * 7 + (size_t)root * 31) & 0xff);
    free(b);
    ck_assert_uint_eq(bad, 0);
}
END_TEST

/* ---- sums ----------------------------------------------------------------------- */

START_TEST(test_allreduce_sum_f32_is_exact_for_odd_sizes_empty_and_small_chunks) {
    size_t bad = 0, checked = 0;
    for (size_t ci = 0; ci < NCHUNKS; ci++) {
        comm_set_chunk_(CHUNKS[ci]);
        for (size_t si = 0; si < NSIZES; si++) {
            size_t n = SIZES[si];
            float *g = n ? malloc(n * sizeof *g) : NULL; /* n = 0 with NULL must work */
            for (size_t i = 0; i < n; i++) g[i] = val_(i, C.rank);
            comm_allreduce_sum_f32(&C, g, n);
            for (size_t i = 0; i < n; i++, checked++) bad += (double)g[i] != sum_(i, C.size);
            free(g);
        }
    }
    comm_set_chunk_(0);
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_gt(checked, 0);
}
END_TEST

START_TEST(test_allreduce_f64_sum_and_max_are_exact) {
    const size_t n = 1001;
    double *s = malloc(n * sizeof *s), *m = malloc(n * sizeof *m);
    ck_assert(s && m);
    comm_set_chunk_(17);
    for (size_t i = 0; i < n; i++) {
        s[i] = (double)val_(i, C.rank);
        /* The maximum sits on a different rank for different i. */
        m[i] = (double)(((int)i + C.rank) % C.size) - 1e300;
    }
    comm_allreduce_sum_f64(&C, s, n);
    comm_allreduce_max_f64(&C, m, n);
    comm_set_chunk_(0);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        bad += s[i] != sum_(i, C.size);
        bad += m[i] != (double)(C.size - 1) - 1e300;
    }
    free(s);
    free(m);
    ck_assert_uint_eq(bad, 0);
}
END_TEST

/* mpirun starts every rank of this test on this one machine; a world split into halves
 * by a fake "node" is not testable without a cluster, so only the single-node answer is
 * checked, and that every rank gets it (the call is collective). */
START_TEST(test_single_node_is_true_on_one_machine_on_every_rank) {
    int v = comm_single_node(&C);
    ck_assert_int_eq(v, 1);
    int all = v;
    MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    ck_assert_int_eq(all, 1);
}
END_TEST

START_TEST(test_allreduce_grads_sums_then_scales) {
    const size_t n = 333;
    float g[333];
    for (size_t i = 0; i < n; i++) g[i] = val_(i, C.rank);
    comm_allreduce_grads(&C, g, n, 0.25f); /* power of two: the scaled sum stays exact */
    float h[333];
    for (size_t i = 0; i < n; i++) h[i] = val_(i, C.rank);
    comm_allreduce_grads(&C, h, n, 1.0f);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        bad += (double)g[i] != 0.25 * sum_(i, C.size);
        bad += (double)h[i] != sum_(i, C.size);
    }
    ck_assert_uint_eq(bad, 0);
}
END_TEST

/* ---- agreement ------------------------------------------------------------------ */

START_TEST(test_comm_any_is_the_maximum_flag_on_every_rank) {
    int none = comm_any(&C, 0);
    int last = comm_any(&C, C.rank == C.size - 1);
    int first = comm_any(&C, C.rank == 0 ? 3 : 0);
    int all = comm_any(&C, 1);
    ck_assert_int_eq(none, 0);
    ck_assert_int_eq(last, 1);
    ck_assert_int_eq(first, 3);
    ck_assert_int_eq(all, 1);
}
END_TEST

START_TEST(test_barrier_returns_and_world_matches_mpi) {
    comm_barrier(&C);
    int r = -1, s = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    ck_assert_int_eq(C.rank, r);
    ck_assert_int_eq(C.size, s);
    ck_assert_int_ge(C.size, 1);
}
END_TEST

/* ---- pure helpers --------------------------------------------------------------- */

START_TEST(test_slice_covers_range_disjointly_with_sizes_differing_by_at_most_one) {
    for (size_t n = 0; n <= 70; n++) {
        for (int P = 1; P <= 9; P++) {
            size_t expect_lo = 0, mn = (size_t)-1, mx = 0;
            for (int r = 0; r < P; r++) {
                size_t lo, hi;
                comm_slice(n, r, P, &lo, &hi);
                ck_assert_uint_eq(lo, expect_lo); /* contiguous, in rank order, no gap */
                ck_assert_uint_le(lo, hi);
                if (hi - lo < mn) mn = hi - lo;
                if (hi - lo > mx) mx = hi - lo;
                expect_lo = hi;
            }
            ck_assert_uint_eq(expect_lo, n); /* covers [0, n) */
            ck_assert_uint_le(mx - mn, 1);
        }
    }
    size_t lo, hi; /* larger than 32 bits */
    size_t big = ((size_t)1 << 33) + 5;
    comm_slice(big, 3, 4, &lo, &hi);
    ck_assert_uint_eq(hi, big);
    ck_assert_uint_eq(hi - lo, ((size_t)1 << 31) + 1);
}
END_TEST

START_TEST(test_mpi_version_is_one_trimmed_line) {
    const char *v = comm_mpi_version();
    ck_assert_ptr_nonnull(v);
    size_t n = strlen(v);
    ck_assert_uint_gt(n, 0);
    ck_assert_ptr_null(strchr(v, '\n'));
    ck_assert(v[n - 1] != ' ' && v[n - 1] != '\t');
}
END_TEST


/* ---- buckets -------------------------------------------------------------------- */

START_TEST(test_buckets_cut_contiguous_ranges_from_the_end) {
    comm_buckets b;
    ck_assert_int_eq(comm_buckets_init(&b, &C, NULL, 0, 100), 0);
    ck_assert_uint_eq(b.count, 0);
    comm_buckets_finish(&b, 0.5f); /* empty: must neither hang nor touch memory */
    comm_buckets_free(&b);
    comm_buckets_free(&b); /* idempotent */

    float g[1001];
    ck_assert_int_eq(comm_buckets_init(&b, &C, g, 1001, 100), 0); /* 25 floats each */
    ck_assert_uint_eq(b.count, 41);
    ck_assert_uint_eq(b.lo[0], 1001);
    ck_assert_uint_eq(b.lo[b.count], 0);
    for (size_t i = 0; i + 1 < b.count; i++) ck_assert_uint_eq(b.lo[i] - b.lo[i + 1], 25);
    ck_assert_uint_eq(b.lo[b.count - 1] - b.lo[b.count], 1); /* the remainder is first */
    comm_buckets_free(&b);

    ck_assert_int_eq(comm_buckets_init(&b, &C, g, 1001, 0), 0); /* default 4 MiB */
    ck_assert_uint_eq(b.count, 1);
    comm_buckets_free(&b);
    ck_assert_int_eq(comm_buckets_init(&b, &C, g, 5, 1), 0); /* clamped to one float */
    ck_assert_uint_eq(b.count, 5);
    comm_buckets_free(&b);
}
END_TEST

/* Buckets of 25 floats over n = 1001: bucket i is [max(0, 1001 - 25(i+1)), 1001 - 25i).
 * Number of buckets lying entirely inside [lo, 1001): */
static size_t buckets_inside_(size_t lo) {
    size_t cnt = 0;
    for (size_t i = 0; i < 41; i++) {
        size_t start = 1001 >= 25 * (i + 1) ? 1001 - 25 * (i + 1) : 0;
        cnt += start >= lo;
    }
    return cnt;
}

START_TEST(test_buckets_sum_exactly_with_irregular_ready_calls_over_several_steps) {
    enum { N = 1001, STEPS = 3 };
    static const size_t los[] = {2000, 1001, 990, 976, 976, 950, 700, 701, 333, 26, 25, 1};
    const size_t nlos = sizeof los / sizeof los[0];
    float g[N];
    comm_buckets b;
    int rc = comm_buckets_init(&b, &C, g, N, 100);
    ck_assert_int_eq(rc, 0);
    size_t bad_sum = 0, bad_started = 0;
    uint64_t early = 0;
    for (int step = 0; step < STEPS; step++) {
        for (size_t i = 0; i < N; i++) g[i] = val_(i, C.rank) + (float)step;
        for (size_t j = 0; j < nlos; j++) {
            /* Ranks announce readiness at different points: rank r skips every call
             * with j % (r + 2) == 1. Buckets must still start in the same order. */
            if (j % (size_t)(C.rank + 2) == 1) continue;
            comm_buckets_ready(&b, los[j]);
            /* Monotone minimum of the lo values given so far decides what started. */
            size_t mn = (size_t)-1;
            for (size_t t = 0; t <= j; t++)
                if (t % (size_t)(C.rank + 2) != 1 && los[t] < mn) mn = los[t];
            bad_started += b.started != buckets_inside_(mn);
            comm_buckets_progress(&b);
        }
        early += b.started;
        comm_buckets_finish(&b, 0.5f);
        for (size_t i = 0; i < N; i++)
            bad_sum += (double)g[i] != 0.5 * (sum_(i, C.size) + (double)C.size * step);
    }
    ck_assert_uint_eq(bad_sum, 0);
    ck_assert_uint_eq(bad_started, 0);
    ck_assert_uint_eq(b.steps, STEPS);
    ck_assert_uint_eq(b.bytes_reduced, (uint64_t)STEPS * N * sizeof(float));
    ck_assert_uint_eq(b.started_early, early);
    ck_assert(b.wait_seconds >= 0.0 && b.last_wait_seconds <= b.wait_seconds);
    ck_assert_uint_eq(b.started, 0); /* reset for the next step */
    comm_buckets_free(&b);
}
END_TEST

START_TEST(test_buckets_large_buffer_overlapped_with_progress_sums_exactly) {
    const size_t n = 300007;
    float *g = malloc(n * sizeof *g);
    ck_assert_ptr_nonnull(g);
    for (size_t i = 0; i < n; i++) g[i] = val_(i, C.rank);
    comm_buckets b;
    ck_assert_int_eq(comm_buckets_init(&b, &C, g, n, 64 << 10), 0);
    /* "Backward" finishes 10000 gradients at a time, from the end. */
    for (size_t lo = n; lo > 10000; lo -= 10000) {
        comm_buckets_ready(&b, lo - 10000);
        for (int k = 0; k < 5; k++) comm_buckets_progress(&b);
    }
    comm_buckets_finish(&b, 1.0f);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += (double)g[i] != sum_(i, C.size);
    comm_buckets_free(&b);
    free(g);
    ck_assert_uint_eq(bad, 0);
}
END_TEST

/* ---- deterministic fixed point -------------------------------------------------- */

enum { FX_N = 517, FX_K = 11 }; /* gradient length, micro-batches per step */

/* Contribution of micro-batch m to element i: signs, magnitudes from 2^-30 to 2^20 and
 * full 24-bit mantissas, so float sums in different orders round differently. */
static float fx_val_(int m, size_t i) {
    uint64_t h = (uint64_t)(m + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(i + 7) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    float mant = 1.0f + (float)(h & 0xffffff) / 16777216.0f; /* [1, 2) */
    int e = (int)((h >> 24) % 51) - 30;                       /* [-30, 20] */
    float v = ldexpf(mant, e);
    return (h >> 40) & 1 ? -v : v;
}

/* Which rank holds micro-batch m under distribution d (of 4). Within a rank, distribution 3
 * also accumulates in reverse order. */
static int fx_owner_(int d, int m, int P) {
    switch (d) {
    case 0: return m % P;                 /* round robin */
    case 1: {                             /* contiguous blocks, as comm_slice cuts them */
        for (int r = 0; r < P; r++) {
            size_t lo, hi;
            comm_slice(FX_K, r, P, &lo, &hi);
            if ((size_t)m >= lo && (size_t)m < hi) return r;
        }
        return -1;
    }
    case 2: return P - 1;                 /* all on the last rank */
    default: return (FX_K - 1 - m) % P;   /* reversed round robin */
    }
}

START_TEST(test_fixed_sum_is_bit_identical_for_any_distribution_of_micro_batches) {
    static int64_t acc[FX_N];
    static float g[FX_N], out[4][FX_N], ref[FX_N];
    int status[4], acc_bad = 0;
    for (int d = 0; d < 4; d++) {
        memset(acc, 0, sizeof acc);
        for (int j = 0; j < FX_K; j++) {
            int m = d == 3 ? FX_K - 1 - j : j;
            if (fx_owner_(d, m, C.size) != C.rank) continue;
            for (size_t i = 0; i < FX_N; i++) g[i] = fx_val_(m, i);
            acc_bad |= comm_fixed_accumulate(acc, g, FX_N, COMM_FIXED_SCALE) != COMM_OK;
        }
        comm_set_chunk_(d == 1 ? 100 : 0);
        status[d] = comm_fixed_allreduce(&C, acc, FX_N, acc_bad);
        comm_set_chunk_(0);
        comm_fixed_to_float(out[d], acc, FX_N, COMM_FIXED_SCALE);
    }
    /* The reference: rank 0 sums all micro-batches alone, then broadcasts its floats. */
    if (C.rank == 0) {
        memset(acc, 0, sizeof acc);
        for (int m = 0; m < FX_K; m++) {
            for (size_t i = 0; i < FX_N; i++) g[i] = fx_val_(m, i);
            acc_bad |= comm_fixed_accumulate(acc, g, FX_N, COMM_FIXED_SCALE) != COMM_OK;
        }
        comm_fixed_to_float(ref, acc, FX_N, COMM_FIXED_SCALE);
    }
    comm_bcast_bytes(&C, ref, sizeof ref, 0);

    ck_assert_int_eq(acc_bad, 0);
    for (int d = 0; d < 4; d++) {
        ck_assert_int_eq(status[d], COMM_OK);
        ck_assert_msg(memcmp(out[d], ref, sizeof ref) == 0, "distribution %d differs", d);
    }
    /* And it is the right sum: within K rounding steps of 2^-33 plus one float rounding. */
    for (size_t i = 0; i < FX_N; i++) {
        double exact = 0.0;
        for (int m = 0; m < FX_K; m++) exact += (double)fx_val_(m, i);
        double tol = FX_K * ldexp(1.0, -33) + fabs(exact) * ldexp(1.0, -24);
        ck_assert_msg(fabs((double)ref[i] - exact) <= tol, "i=%zu: %.17g vs %.17g", i,
                      (double)ref[i], exact);
    }
}
END_TEST

START_TEST(test_fixed_reports_out_of_range_and_nan_on_every_rank) {
    int64_t acc[4] = {0, 0, 0, 0};
    const float big[4] = {1.0f, 2e9f, -2e9f, 0.25f};    /* 2e9 * 2^32 > 2^62 */
    int st_big = comm_fixed_accumulate(acc, big, 4, COMM_FIXED_SCALE);
    int64_t saturated = acc[1], unhurt = acc[3];
    const float nan[1] = {NAN};
    int64_t acc_nan[1] = {5};
    int st_nan = comm_fixed_accumulate(acc_nan, nan, 1, COMM_FIXED_SCALE);

    /* One rank reports a bad accumulate: every rank gets the error, acc untouched. */
    int64_t a[3] = {1, 2, 3};
    int st_one = comm_fixed_allreduce(&C, a, 3, C.rank == C.size - 1);
    /* Sums that could overflow: each rank holds 2^61, times P >= 2 ranks reaches 2^62. */
    int64_t h[2] = {(int64_t)1 << 61, -7};
    int st_sum = comm_fixed_allreduce(&C, h, 2, 0);
    /* Repeated accumulation past the limit saturates instead of wrapping. */
    int64_t s[1] = {0};
    const float x[1] = {6e8f}; /* 6e8 * 2^32 ~ 2.6e18; 2 of them exceed 2^62 ~ 4.6e18 */
    int st_acc1 = comm_fixed_accumulate(s, x, 1, COMM_FIXED_SCALE);
    int st_acc2 = comm_fixed_accumulate(s, x, 1, COMM_FIXED_SCALE);

    ck_assert_int_eq(st_big, COMM_ERR_RANGE);
    ck_assert_int_eq(saturated, (int64_t)1 << 62);
    ck_assert_int_eq(acc[2], -((int64_t)1 << 62));
    ck_assert_int_eq(acc[0], (int64_t)1 << 32);
    ck_assert_int_eq(unhurt, (int64_t)1 << 30);
    ck_assert_int_eq(st_nan, COMM_ERR_RANGE);
    ck_assert_int_eq(acc_nan[0], 5);
    ck_assert_int_eq(st_one, COMM_ERR_RANGE);
    ck_assert(a[0] == 1 && a[1] == 2 && a[2] == 3);
    ck_assert_int_eq(st_sum, COMM_ERR_RANGE);
    ck_assert(h[0] == (int64_t)1 << 61 && h[1] == -7);
    ck_assert_int_eq(st_acc1, COMM_OK);
    ck_assert_int_eq(st_acc2, COMM_ERR_RANGE);
    ck_assert_int_eq(s[0], (int64_t)1 << 62);
}
END_TEST

START_TEST(test_fixed_round_trip_is_exact_for_multiples_of_the_resolution) {
    enum { N = 257 };
    int64_t acc[N] = {0};
    float g[N], out[N];
    for (size_t i = 0; i < N; i++) g[i] = val_(i, C.rank) * 0.125f; /* exact in fixed point */
    int st = comm_fixed_accumulate(acc, g, N, COMM_FIXED_SCALE);
    int st2 = comm_fixed_allreduce(&C, acc, N, st != COMM_OK);
    comm_fixed_to_float(out, acc, N, COMM_FIXED_SCALE);
    size_t bad = 0;
    for (size_t i = 0; i < N; i++) bad += (double)out[i] != 0.125 * sum_(i, C.size);
    ck_assert_int_eq(st, COMM_OK);
    ck_assert_int_eq(st2, COMM_OK);
    ck_assert_uint_eq(bad, 0);
}
END_TEST

/* ---- runner --------------------------------------------------------------------- */


static Suite *comm_suite(void) {
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("collectives");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_barrier_returns_and_world_matches_mpi);
    tcase_add_test(tc, test_bcast_params_makes_every_rank_hold_rank0_values);
    tcase_add_test(tc, test_single_node_is_true_on_one_machine_on_every_rank);
    tcase_add_test(tc, test_bcast_bytes_copies_from_a_nonzero_root_across_chunks);
    tcase_add_test(tc, test_allreduce_sum_f32_is_exact_for_odd_sizes_empty_and_small_chunks);
    tcase_add_test(tc, test_allreduce_f64_sum_and_max_are_exact);
    tcase_add_test(tc, test_allreduce_grads_sums_then_scales);
    tcase_add_test(tc, test_comm_any_is_the_maximum_flag_on_every_rank);
    suite_add_tcase(s, tc);
    TCase *tb = tcase_create("buckets");
    tcase_set_timeout(tb, 60);
    tcase_add_test(tb, test_buckets_cut_contiguous_ranges_from_the_end);
    tcase_add_test(tb, test_buckets_sum_exactly_with_irregular_ready_calls_over_several_steps);
    tcase_add_test(tb, test_buckets_large_buffer_overlapped_with_progress_sums_exactly);
    suite_add_tcase(s, tb);
    TCase *tf = tcase_create("fixed");
    tcase_set_timeout(tf, 60);
    tcase_add_test(tf, test_fixed_sum_is_bit_identical_for_any_distribution_of_micro_batches);
    tcase_add_test(tf, test_fixed_reports_out_of_range_and_nan_on_every_rank);
    tcase_add_test(tf, test_fixed_round_trip_is_exact_for_multiples_of_the_resolution);
    suite_add_tcase(s, tf);
    TCase *tp = tcase_create("pure");
    tcase_add_test(tp, test_slice_covers_range_disjointly_with_sizes_differing_by_at_most_one);
    tcase_add_test(tp, test_mpi_version_is_one_trimmed_line);
    suite_add_tcase(s, tp);
    return s;
}

int main(int argc, char **argv) {
    comm_init(&C, &argc, &argv);
    SRunner *sr = srunner_create(comm_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    /* Only rank 0 prints the summary; other ranks print their own failures below. */
    srunner_run_all(sr, C.rank == 0 ? CK_NORMAL : CK_SILENT);
    int failed = srunner_ntests_failed(sr);
    if (C.rank != 0 && failed) {
        TestResult **tr = srunner_failures(sr);
        for (int i = 0; i < failed; i++)
            fprintf(stderr, "[rank %d] %s:%d: %s: %s\n", C.rank, tr_lfile(tr[i]),
                    tr_lno(tr[i]), tr_tcname(tr[i]), tr_msg(tr[i]));
        free(tr);
    }
    srunner_free(sr);
    int any_failed = comm_any(&C, failed > 0);
    if (C.rank == 0 && any_failed) fprintf(stderr, "mpi_comm: FAILED on at least one rank\n");
    comm_free(&C);
    return any_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
