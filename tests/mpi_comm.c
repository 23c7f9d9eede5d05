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

/* ---- runner --------------------------------------------------------------------- */


static Suite *comm_suite(void) {
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("collectives");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_barrier_returns_and_world_matches_mpi);
    tcase_add_test(tc, test_bcast_params_makes_every_rank_hold_rank0_values);
    tcase_add_test(tc, test_bcast_bytes_copies_from_a_nonzero_root_across_chunks);
    tcase_add_test(tc, test_allreduce_sum_f32_is_exact_for_odd_sizes_empty_and_small_chunks);
    tcase_add_test(tc, test_allreduce_f64_sum_and_max_are_exact);
    tcase_add_test(tc, test_allreduce_grads_sums_then_scales);
    tcase_add_test(tc, test_comm_any_is_the_maximum_flag_on_every_rank);
    suite_add_tcase(s, tc);
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
