/* test_nn.c - models/: finite-difference gradients of every layer, loss and of the
 * bow-classifier; registry layout and initialisation; the counter RNG; configuration
 * parsing and its errors; edge cases (B = 1, n = 0, all-padding rows); a training smoke
 * test. Every gradient check also verifies that a sign-flipped gradient FAILS it, so a
 * check that cannot fail is itself caught. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "models/nn.h"
#include "tests/testutil.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void fill_normal(float *x, size_t n, float scale, uint64_t key) {
    tu_fill_normal(x, n, scale, 12345, key);
}

/* a zero gradient stays zero when flipped: allowed here (some layers have zero entries) */
static void check_grad(double (*f)(void *), void *ctx, float *x, const float *g, size_t n,
                       float h, double tol, const char *what) {
    tu_check_grad(f, ctx, x, g, n, h, tol, 200, 1e-2, 1, what);
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* One closure for all layer tests: L = sum r * layer(x, params). */
enum { K_EMB, K_LIN, K_RELU, K_TANH, K_SIG, K_GELU, K_DROP, K_LN, K_XENT, K_BCE };
typedef struct fx {
    int kind;
    float *x, *W, *b, *g, *y, *mean, *rstd, *mask, *t;
    const float *r;
    int32_t *ids;
    int N, C, OC;
    size_t n, ny;
    float p, smooth;
    int ignore;
} fx;

static double fx_loss(void *vc) {
    fx *c = vc;
    switch (c->kind) {
    case K_EMB: nn_embedding_forward(c->y, c->ids, c->W, c->N, c->C); break;
    case K_LIN: nn_linear_forward(c->y, c->x, c->W, c->b, c->N, c->C, c->OC); break;
    case K_RELU: nn_relu_forward(c->y, c->x, c->n); break;
    case K_TANH: nn_tanh_forward(c->y, c->x, c->n); break;
    case K_SIG: nn_sigmoid_forward(c->y, c->x, c->n); break;
    case K_GELU: nn_gelu_forward(c->y, c->x, c->n); break;
    case K_DROP: nn_dropout_forward(c->y, c->mask, c->x, c->n, c->C, c->p, 7, 3, NULL); break;
    case K_LN: nn_layernorm_forward(c->y, c->mean, c->rstd, c->x, c->g, c->b, c->N, c->C); break;
    case K_XENT:
        return nn_xent_forward_backward(NULL, c->x, c->ids, c->N, c->C, c->ignore, c->smooth,
                                        1.0f, NULL, NULL);
    case K_BCE: return nn_bce_forward_backward(NULL, c->x, c->t, c->N, 1.0f, NULL);
    }
    return dot_d(c->r, c->y, c->ny);
}

/* ---- errors, status ----------------------------------------------------------------- */

START_TEST(test_status_strings_are_distinct_and_never_null) {
    int codes[] = {NN_OK, NN_ERR_NOMEM, NN_ERR_CONFIG, NN_ERR_SHAPE, NN_ERR_DATA,
                   NN_ERR_UNSUPPORTED, NN_ERR_NUMERIC};
    for (int i = 0; i < 7; i++) {
        ck_assert_ptr_nonnull(nn_status_str(codes[i]));
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(nn_status_str(codes[i]), nn_status_str(codes[j]));
    }
    ck_assert_ptr_nonnull(nn_status_str(-999));
    nn_set_error("x=%d", 42);
    ck_assert_str_eq(nn_error(), "x=42");
}
END_TEST

/* ---- rng ----------------------------------------------------------------------------- */

START_TEST(test_rng_is_a_pure_function_of_its_key) {
    nn_rng a = nn_rng_make(1, 2, 3, NN_RNG_DROPOUT), b = nn_rng_make(1, 2, 3, NN_RNG_DROPOUT);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(nn_rng_u64(&a), nn_rng_u64(&b));
    /* every component of the key matters, and (a, b) is not symmetric */
    uint64_t base = nn_rng_u64(&(nn_rng){nn_rng_make(1, 2, 3, 2).key, 0});
    nn_rng v[5] = {nn_rng_make(9, 2, 3, 2), nn_rng_make(1, 9, 3, 2), nn_rng_make(1, 2, 9, 2),
                   nn_rng_make(1, 2, 3, 9), nn_rng_make(1, 3, 2, 2)};
    for (int i = 0; i < 5; i++) ck_assert_uint_ne(nn_rng_u64(&v[i]), base);
    ck_assert_uint_ne(nn_hash64(1), nn_hash64(2));
}
END_TEST

START_TEST(test_rng_uniform_and_normal_have_the_right_moments) {
    nn_rng r = nn_rng_make(42, 0, 0, NN_RNG_USER);
    const int n = 200000;
    double s = 0, s2 = 0, lo = 1, hi = 0;
    for (int i = 0; i < n; i++) {
        float u = nn_rng_uniform(&r);
        ck_assert(u >= 0.0f && u < 1.0f);
        s += u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    ck_assert_double_eq_tol(s / n, 0.5, 0.005);
    ck_assert(lo < 1e-3 && hi > 1 - 1e-3);
    s = 0;
    for (int i = 0; i < n; i++) {
        double z = nn_rng_normal(&r);
        ck_assert(isfinite(z));
        s += z;
        s2 += z * z;
    }
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    ck_assert_double_eq_tol(mean, 0.0, 0.01);
    ck_assert_double_eq_tol(sd, 1.0, 0.01);
    int hist[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint32_t k = nn_rng_below(&r, 7);
        ck_assert_uint_lt(k, 7);
        hist[k]++;
    }
    for (int k = 0; k < 7; k++) ck_assert_int_lt(abs(hist[k] - 10000), 500);
}
END_TEST

/* ---- config -------------------------------------------------------------------------- */

START_TEST(test_config_typed_getters_and_errors_name_key_and_value) {
    nn_config c = {0};
    long l;
    double d;
    int b;
    const char *s;
    ck_assert_int_eq(nn_config_set(&c, "hidden", "abc"), NN_OK);
    ck_assert_int_eq(nn_config_int(&c, "hidden", 5, &l), NN_ERR_CONFIG);
    ck_assert_str_eq(nn_error(), "--hidden: expected an integer, got 'abc'");
    ck_assert_int_eq(nn_config_set(&c, "hidden", "12x"), NN_OK); /* replaces */
    ck_assert_int_eq(c.n, 1);
    ck_assert_int_eq(nn_config_int(&c, "hidden", 5, &l), NN_ERR_CONFIG);
    ck_assert_int_eq(nn_config_set(&c, "hidden", "-128"), NN_OK);
    ck_assert_int_eq(nn_config_int(&c, "hidden", 5, &l), NN_OK);
    ck_assert_int_eq(l, -128);
    ck_assert_int_eq(nn_config_int(&c, "absent", 5, &l), NN_OK);
    ck_assert_int_eq(l, 5);
    ck_assert_int_eq(nn_config_set(&c, "hidden", ""), NN_OK);
    ck_assert_int_eq(nn_config_int(&c, "hidden", 5, &l), NN_ERR_CONFIG);

    nn_config_set(&c, "lr", "3e-4");
    ck_assert_int_eq(nn_config_float(&c, "lr", 1.0, &d), NN_OK);
    ck_assert_double_eq_tol(d, 3e-4, 1e-12);
    nn_config_set(&c, "lr", "fast");
    ck_assert_int_eq(nn_config_float(&c, "lr", 1.0, &d), NN_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(nn_error(), "--lr"));
    ck_assert_ptr_nonnull(strstr(nn_error(), "'fast'"));
    nn_config_set(&c, "lr", "nan");
    ck_assert_int_eq(nn_config_float(&c, "lr", 1.0, &d), NN_ERR_CONFIG);

    nn_config_set(&c, "deterministic", "yes");
    ck_assert_int_eq(nn_config_bool(&c, "deterministic", 0, &b), NN_OK);
    ck_assert_int_eq(b, 1);
    nn_config_set(&c, "deterministic", "False");
    ck_assert_int_eq(nn_config_bool(&c, "deterministic", 1, &b), NN_OK);
    ck_assert_int_eq(b, 0);
    nn_config_set(&c, "deterministic", "maybe");
    ck_assert_int_eq(nn_config_bool(&c, "deterministic", 1, &b), NN_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(nn_error(), "maybe"));

    nn_config_set(&c, "cell", "gru");
    ck_assert_int_eq(nn_config_choice(&c, "cell", "lstm", "lstm|gru|rnn", &s), NN_OK);
    ck_assert_str_eq(s, "gru");
    nn_config_set(&c, "cell", "gr");  /* a prefix of a choice is not a choice */
    ck_assert_int_eq(nn_config_choice(&c, "cell", "lstm", "lstm|gru|rnn", &s), NN_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(nn_error(), "--cell"));
    ck_assert_ptr_nonnull(strstr(nn_error(), "'gr'"));
    ck_assert_int_eq(nn_config_choice(&c, "absent", "rnn", "lstm|gru|rnn", &s), NN_OK);
    ck_assert_str_eq(s, "rnn");
    ck_assert_int_eq(nn_config_choice(&c, "absent", NULL, "a|b", &s), NN_ERR_CONFIG);
    ck_assert_ptr_null(nn_config_get(&c, "absent"));
    nn_config_free(&c);
    ck_assert_int_eq(c.n, 0);
    nn_config_free(&c);
}
END_TEST

START_TEST(test_config_table_full_is_an_error) {
    nn_config c = {0};
    char k[32];
    for (int i = 0; i < NN_CONFIG_MAX; i++) {
        snprintf(k, sizeof k, "k%d", i);
        ck_assert_int_eq(nn_config_set(&c, k, "1"), NN_OK);
    }
    ck_assert_int_eq(nn_config_set(&c, "one-more", "1"), NN_ERR_CONFIG);
    ck_assert_int_eq(nn_config_set(&c, "k3", "2"), NN_OK); /* replacing still works */
    ck_assert_str_eq(nn_config_get(&c, "k3"), "2");
    nn_config_free(&c);
}
END_TEST

/* ---- registry ----------------------------------------------------------------------- */

typedef struct three { float *a, *da, *b, *db, *c, *dc; } three;

static void reg_three(nn_params *ps, three *t, int last_rows) {
    memset(ps, 0, sizeof *ps);
    int sa[2] = {300, 70}, sb[1] = {13}, sc[3] = {last_rows, 3, 5};
    ck_assert_int_eq(nn_params_add(ps, "enc/w", 2, sa, NN_INIT_NORMAL, 0.5f, &t->a, &t->da), 0);
    ck_assert_int_eq(nn_params_add(ps, "enc/b", 1, sb, NN_INIT_ONE, 0, &t->b, &t->db), 1);
    ck_assert_int_eq(nn_params_add(ps, "dec/w", 3, sc, NN_INIT_UNIFORM, 0.1f, &t->c, &t->dc), 2);
}

START_TEST(test_registry_layout_is_contiguous_and_views_point_into_buffers) {
    nn_params ps;
    three t;
    reg_three(&ps, &t, 4);
    ck_assert_int_eq(nn_params_alloc(&ps, 7), NN_OK);
    ck_assert_uint_eq(ps.total, 300 * 70 + 13 + 4 * 15);
    size_t off = 0;
    for (int i = 0; i < ps.n; i++) {
        ck_assert_uint_eq(ps.p[i].offset, off);
        off += ps.p[i].size;
        ck_assert_int_eq(nn_params_find(&ps, ps.p[i].name), i);
        ck_assert_int_eq(ps.p[i].frozen, 0);
        ck_assert_int_eq(ps.p[i].decay, ps.p[i].ndim >= 2);
    }
    ck_assert_uint_eq(off, ps.total);
    ck_assert_int_eq(nn_params_find(&ps, "nope"), -1);
    ck_assert_uint_eq((uintptr_t)ps.data % 64, 0);
    ck_assert_uint_eq((uintptr_t)ps.grad % 64, 0);
    ck_assert_ptr_eq(t.a, ps.data);
    ck_assert_ptr_eq(t.db, ps.grad + 300 * 70);
    ck_assert_ptr_eq(t.c, ps.data + 300 * 70 + 13);
    ck_assert_ptr_eq(t.dc, ps.grad + 300 * 70 + 13);
    for (size_t i = 0; i < ps.total; i++) ck_assert(ps.grad[i] == 0.0f);
    /* initialisers */
    for (int i = 0; i < 13; i++) ck_assert(t.b[i] == 1.0f);
    for (int i = 0; i < 60; i++) ck_assert(fabsf(t.c[i]) <= 0.1f);
    double s = 0, s2 = 0;
    for (int i = 0; i < 21000; i++) s += t.a[i], s2 += (double)t.a[i] * t.a[i];
    ck_assert_double_eq_tol(s / 21000, 0.0, 0.02);
    ck_assert_double_eq_tol(sqrt(s2 / 21000), 0.5, 0.02);
    t.dc[5] = 3.0f;
    nn_params_zero_grad(&ps);
    ck_assert(t.dc[5] == 0.0f);
    nn_params_free(&ps);
    ck_assert_ptr_null(ps.data);
    nn_params_free(&ps);
}
END_TEST

START_TEST(test_registry_init_depends_only_on_seed_index_and_position) {
    nn_params p1, p2, p3;
    three t1, t2, t3;
    reg_three(&p1, &t1, 4);
    reg_three(&p2, &t2, 9); /* a later tensor of another size: earlier ones unchanged */
    reg_three(&p3, &t3, 4);
    nn_params_alloc(&p1, 11);
    nn_params_alloc(&p2, 11);
    nn_params_alloc(&p3, 12);
    ck_assert_int_eq(memcmp(t1.a, t2.a, 21000 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(t1.c, t2.c, 60 * sizeof(float)), 0); /* first 4 rows agree */
    int same = 0;
    for (int i = 0; i < 21000; i++) same += t1.a[i] == t3.a[i];
    ck_assert_int_lt(same, 10);
    /* blocks within one tensor are not copies of each other */
    ck_assert(memcmp(t1.a, t1.a + 4096, 100 * sizeof(float)) != 0);
    nn_params_free(&p1);
    nn_params_free(&p2);
    nn_params_free(&p3);
}
END_TEST

/* ---- gemm / threads ----------------------------------------------------------------- */

START_TEST(test_gemm_matches_naive_product_for_all_transposes) {
    enum { M = 5, N = 4, K = 3 };
    float A[M * K], At[K * M], Bm[K * N], Bt[N * K], C[M * N], ref[M * N];
    fill_normal(A, M * K, 1, 1);
    fill_normal(Bm, K * N, 1, 2);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) At[k * M + i] = A[i * K + k];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) Bt[j * K + k] = Bm[k * N + j];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)A[i * K + k] * Bm[k * N + j];
            ref[i * N + j] = (float)(2.0 * s + 1.0);
        }
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            for (int i = 0; i < M * N; i++) C[i] = 1.0f;
            nn_gemm(ta, tb, M, N, K, 2.0f, ta ? At : A, ta ? M : K, tb ? Bt : Bm, tb ? K : N,
                    1.0f, C, N);
            for (int i = 0; i < M * N; i++) ck_assert_float_eq_tol(C[i], ref[i], 1e-5f);
        }
    nn_set_threads(1);
    ck_assert_int_eq(nn_get_threads(), 1);
}
END_TEST

/* ---- bf16 matmul --------------------------------------------------------------------- */

static uint32_t f2u(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float u2f(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

START_TEST(test_round_bf16_is_nearest_even_like_the_hardware) {
    /* ties go to the even neighbour; a carry moves into the exponent */
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x3f808000u))), 0x3f800000u);
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x3f818000u))), 0x3f820000u);
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x3f808001u))), 0x3f810000u);
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x3fffffffu))), 0x40000000u);
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0xbf807fffu))), 0xbf800000u);
    /* the largest float rounds up to infinity; infinities stay; NaN stays NaN */
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x7f7fffffu))), 0x7f800000u);
    ck_assert_uint_eq(f2u(nn_round_bf16(-INFINITY)), 0xff800000u);
    ck_assert(isnan(nn_round_bf16(NAN)));
    ck_assert(isnan(nn_round_bf16(u2f(0x7f800001u)))); /* signalling NaN with low bits only */
    /* denormals become zeros of the same sign */
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x00400000u))), 0u);
    ck_assert_uint_eq(f2u(nn_round_bf16(u2f(0x80000001u))), 0x80000000u);
    /* bf16 values are fixed points; the error is at most half a unit in the 8th bit */
    nn_rng r = nn_rng_make(5, 0, 0, NN_RNG_USER);
    for (int i = 0; i < 10000; i++) {
        float x = (nn_rng_uniform(&r) - 0.5f) * 1e3f, y = nn_round_bf16(x);
        ck_assert_float_eq(nn_round_bf16(y), y);
        ck_assert(fabsf(y - x) <= fabsf(x) * (1.0f / 256.0f));
    }
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    /* the conversion instruction the AMX engine packs with gives the same bits */
    if (__builtin_cpu_supports("avx512f")) {
        float x[32];
        for (int t = 0; t < 200; t++) {
            for (int i = 0; i < 32; i++) x[i] = u2f((uint32_t)nn_rng_u64(&r));
            uint16_t h[32];
            _mm512_storeu_si512(h, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16),
                                                               _mm512_loadu_ps(x)));
            for (int i = 0; i < 32; i++) {
                if (isnan(x[i])) continue;
                ck_assert_msg(f2u(nn_round_bf16(x[i])) == (uint32_t)h[i] << 16,
                              "%08x: %08x against the instruction's %04x", f2u(x[i]),
                              f2u(nn_round_bf16(x[i])), h[i]);
            }
        }
    }
#endif
}
END_TEST

/* A (rows x ld) filled with N(0,1), the padding past cols set to a marker. */
static float *gemm_operand(int rows, int cols, int ld, uint64_t key) {
    float *a = malloc((size_t)rows * ld * sizeof *a + 4);
    ck_assert_ptr_nonnull(a);
    fill_normal(a, (size_t)rows * ld, 1, key);
    for (int i = 0; i < rows; i++)
        for (int j = cols; j < ld; j++) a[(size_t)i * ld + j] = 1e30f;
    return a;
}

/* Both engines against the product of the bf16-rounded inputs summed in double, over
 * shapes with ragged edges (not multiples of 16 or 32) and whole 32 x 32 blocks over one
 * and several K slices, every transpose, padded leading dimensions, and five ways to
 * combine with C: alpha 0.75 with beta -1.5, alpha 0.75 / 1 with beta 0 (C holds NaN,
 * which must not leak), alpha 1 with beta 1 (C read through the tiles), and a bias. */
START_TEST(test_gemm_bf16_engines_match_the_rounded_product) {
    static const int shapes[][3] = {{1, 1, 1},    {5, 7, 3},      {17, 33, 31}, {32, 32, 32},
                                    {33, 65, 97}, {64, 48, 600},  {100, 3, 70}, {3, 100, 1100},
                                    {64, 96, 1100}};
    static const float alphas[5] = {0.75f, 0.75f, 1.0f, 1.0f, 1.0f};
    static const float betas[5] = {-1.5f, 0.0f, 0.0f, 1.0f, 0.0f};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int v = 0; v < 5; v++)
                    for (int engine = NN_ENGINE_BEST; engine <= NN_ENGINE_REF; engine++) {
                        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                        int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
                        int lda = ac + 3, ldb = bc + 1, ldc = N + 2, bias = v == 4;
                        uint64_t key = 100 * s + 10 * ta + tb;
                        float *A = gemm_operand(ar, ac, lda, key), *B = gemm_operand(br, bc, ldb, key + 7);
                        float *C = gemm_operand(M, N, ldc, key + 9), *bv = gemm_operand(1, N, N, key + 11);
                        float *C0 = malloc((size_t)M * ldc * sizeof *C0);
                        float alpha = alphas[v], beta = betas[v];
                        if (beta == 0.0f)
                            for (int i = 0; i < M; i++)
                                for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN;
                        memcpy(C0, C, (size_t)M * ldc * sizeof *C);
                        if (bias)
                            nn_gemm_bf16_bias(engine, ta, tb, M, N, K, A, lda, B, ldb, bv, C, ldc);
                        else
                            nn_gemm_bf16(engine, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                        for (int i = 0; i < M; i++)
                            for (int j = 0; j < ldc; j++) {
                                size_t q = (size_t)i * ldc + j;
                                if (j >= N) { /* past N: untouched */
                                    ck_assert_float_eq(C[q], C0[q]);
                                    continue;
                                }
                                double sum = 0, mag = 0;
                                for (int k = 0; k < K; k++) {
                                    float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                                    float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                                    double p = (double)nn_round_bf16(a) * nn_round_bf16(b);
                                    sum += p, mag += fabs(p);
                                }
                                double add = bias ? bv[j] : beta == 0.0f ? 0.0 : beta * C0[q];
                                double want = alpha * sum + add;
                                double tol = 1e-6 * (fabs(alpha) * mag + fabs(add)) + 1e-30;
                                ck_assert_msg(fabs(C[q] - want) <= tol,
                                              "engine %d M%d N%d K%d ta%d tb%d variant %d: C[%d,%d] = "
                                              "%.7g, want %.7g",
                                              engine, M, N, K, ta, tb, v, i, j, C[q], want);
                            }
                        free(A), free(B), free(C), free(C0), free(bv);
                    }
}
END_TEST

/* A matrix packed once, row groups at a time (nn_bf16_pair), gives the same bits in both
 * GEMMs as packing it inside the GEMM; also after the pair was used for a larger shape. */
START_TEST(test_bf16_pair_matches_packing_inside_the_gemm) {
    nn_bf16_pair x = {0};
    static const int shapes[][3] = {{96, 64, 40}, {70, 45, 33}, {5, 3, 17}}; /* N, V, other */
    nn_set_matmul(NN_MATMUL_BF16);
    if (!nn_bf16_pair_usable()) { /* no AMX here: models never use the pair */
        nn_set_matmul(NN_MATMUL_FP32);
        return;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], V = shapes[s][1], D = shapes[s][2];
        float *X = gemm_operand(N, V, V, 40 + s), *W = gemm_operand(V, D, D, 50 + s);
        float *H = gemm_operand(N, D, D, 60 + s);
        float *c1 = malloc(sizeof(float) * (size_t)N * (V > D ? V : D) * 2);
        float *c2 = malloc(sizeof(float) * (size_t)N * (V > D ? V : D) * 2);
        ck_assert_int_eq(nn_bf16_pair_begin(&x, N, V), NN_OK);
        for (int n0 = 0; n0 < N; n0 += 32)
            nn_bf16_pair_put_rows(&x, n0, N - n0 < 32 ? N - n0 : 32, X + (size_t)n0 * V, (size_t)V);
        /* X W (N,D) */
        nn_gemm_bf16_xa(&x, 0, D, W, D, 1.0f, 0.0f, c1, D);
        nn_gemm_bf16(NN_ENGINE_BEST, 0, 0, N, D, V, 1.0f, X, V, W, D, 0.0f, c2, D);
        ck_assert_int_eq(memcmp(c1, c2, sizeof(float) * (size_t)N * D), 0);
        /* H^T X (D,V) */
        nn_gemm_bf16_xb(1, D, H, D, &x, 1.0f, 0.0f, c1, V);
        nn_gemm_bf16(NN_ENGINE_BEST, 1, 0, D, V, N, 1.0f, H, D, X, V, 0.0f, c2, V);
        ck_assert_int_eq(memcmp(c1, c2, sizeof(float) * (size_t)D * V), 0);
        free(X), free(W), free(H), free(c1), free(c2);
    }
    nn_set_matmul(NN_MATMUL_FP32);
    nn_bf16_pair_free(&x);
    nn_bf16_pair_free(&x);
}
END_TEST

/* The process mode routes nn_gemm; bf16 results differ from fp32 ones by the rounding
 * only, and do not depend on the thread count (the split cuts blocks of C, never K). */
START_TEST(test_matmul_mode_routes_nn_gemm_and_threads_do_not_change_bits) {
    enum { M = 300, N = 200, K = 160 };
    float *A = gemm_operand(M, K, K, 1), *B = gemm_operand(N, K, K, 2);
    float *c32 = malloc(sizeof(float) * M * N), *c16 = malloc(sizeof(float) * M * N);
    float *c16b = malloc(sizeof(float) * M * N), *direct = malloc(sizeof(float) * M * N);
    ck_assert_int_eq(nn_get_matmul(), NN_MATMUL_FP32);
    ck_assert_int_eq(nn_set_matmul(7), NN_ERR_CONFIG);
    ck_assert_int_eq(nn_get_matmul(), NN_MATMUL_FP32);
    nn_set_threads(1);
    nn_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, c32, N);
    ck_assert_int_eq(nn_set_matmul(NN_MATMUL_BF16), NN_OK);
    nn_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, c16, N);
    nn_set_threads(2);
    nn_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, c16b, N);
    nn_set_threads(1);
    nn_set_matmul(NN_MATMUL_FP32);
    nn_gemm_bf16(NN_ENGINE_BEST, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, direct, N);
    ck_assert_int_eq(memcmp(c16, c16b, sizeof(float) * M * N), 0);
    ck_assert_int_eq(memcmp(c16, direct, sizeof(float) * M * N), 0);
    double diff = 0, norm = 0;
    for (int i = 0; i < M * N; i++) diff += fabs(c16[i] - c32[i]), norm += fabs(c32[i]);
    ck_assert_msg(diff > 1e-4 * norm && diff < 2e-2 * norm, "bf16 vs fp32: %g of %g", diff, norm);
    const char *e = nn_matmul_engine();
    ck_assert(strcmp(e, "amx") == 0 || strcmp(e, "ref") == 0);
    free(A), free(B), free(c32), free(c16), free(c16b), free(direct);
}
END_TEST

/* ---- layers: finite differences ------------------------------------------------------ */

START_TEST(test_embedding_gradient_touches_only_used_rows) {
    enum { V = 7, C = 5, N = 6 };
    float table[V * C], dtable[V * C] = {0}, y[N * C], r[N * C];
    int32_t ids[N] = {3, NN_PAD, 3, 5, 1, NN_PAD};
    fill_normal(table, V * C, 1, 3);
    fill_normal(r, N * C, 1, 4);
    fx c = {.kind = K_EMB, .W = table, .y = y, .r = r, .ids = ids, .N = N, .C = C, .ny = N * C};
    fx_loss(&c);
    for (int k = 0; k < C; k++) {
        ck_assert(y[1 * C + k] == 0.0f && y[5 * C + k] == 0.0f);
        ck_assert(y[3 * C + k] == table[5 * C + k]);
    }
    nn_embedding_backward(dtable, r, ids, N, C);
    for (int k = 0; k < C; k++) {
        ck_assert(dtable[NN_PAD * C + k] == 0.0f); /* pad: no gradient */
        ck_assert(dtable[2 * C + k] == 0.0f && dtable[4 * C + k] == 0.0f &&
                  dtable[6 * C + k] == 0.0f);
        ck_assert_float_eq_tol(dtable[3 * C + k], r[k] + r[2 * C + k], 1e-6f);
    }
    /* table row 0 (pad) is never read, so its fd gradient is 0 like the analytic one */
    check_grad(fx_loss, &c, table, dtable, V * C, 1e-2f, 1e-3, "embedding");
}
END_TEST

START_TEST(test_linear_dx_dW_db_match_finite_differences) {
    enum { B = 3, C = 5, OC = 4 };
    float x[B * C], W[OC * C], b[OC], y[B * OC], r[B * OC];
    float dx[B * C] = {0}, dW[OC * C] = {0}, db[OC] = {0};
    fill_normal(x, B * C, 1, 5);
    fill_normal(W, OC * C, 1, 6);
    fill_normal(b, OC, 1, 7);
    fill_normal(r, B * OC, 1, 8);
    fx c = {.kind = K_LIN, .x = x, .W = W, .b = b, .y = y, .r = r, .N = B, .C = C, .OC = OC,
            .ny = B * OC};
    fx_loss(&c);
    nn_linear_backward(dx, dW, db, r, x, W, B, C, OC);
    check_grad(fx_loss, &c, x, dx, B * C, 1e-2f, 2e-3, "linear dx");
    check_grad(fx_loss, &c, W, dW, OC * C, 1e-2f, 2e-3, "linear dW");
    check_grad(fx_loss, &c, b, db, OC, 1e-2f, 2e-3, "linear db");
    /* backward accumulates: a second call doubles every gradient */
    float dW1[OC * C];
    memcpy(dW1, dW, sizeof dW);
    nn_linear_backward(NULL, dW, NULL, r, x, W, B, C, OC);
    for (int i = 0; i < OC * C; i++) ck_assert_float_eq_tol(dW[i], 2 * dW1[i], 1e-5f);
    /* without bias, y = x W^T exactly */
    nn_linear_forward(y, x, W, NULL, B, C, OC);
    for (int i = 0; i < B; i++)
        for (int o = 0; o < OC; o++)
            ck_assert_float_eq_tol(y[i * OC + o], dot_d(x + i * C, W + o * C, C), 1e-5f);
}
END_TEST

/* Elementwise activation: gradcheck of backward, and forward against libm in double. */
static void check_activation(int kind, const char *what) {
    enum { n = 41 };
    float x[n], y[n], r[n], dx[n];
    fill_normal(x, n, 2.0f, 9 + kind);
    x[0] = 0.3f, x[1] = -0.3f, x[2] = 6.0f, x[3] = -6.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) < 0.05f) x[i] = 0.2f; /* keep relu's kink away from x +- h */
    fill_normal(r, n, 1, 10);
    for (int i = 0; i < n; i++) dx[i] = 0.25f; /* backward must ADD to this */
    fx c = {.kind = kind, .x = x, .y = y, .r = r, .n = n, .ny = n};
    fx_loss(&c);
    for (int i = 0; i < n; i++) {
        double v = x[i], ref = 0;
        switch (kind) {
        case K_RELU: ref = v > 0 ? v : 0; break;
        case K_TANH: ref = tanh(v); break;
        case K_SIG: ref = 1 / (1 + exp(-v)); break;
        case K_GELU: ref = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); break;
        }
        ck_assert_msg(fabs(y[i] - ref) <= 2e-7 + 2e-6 * fabs(ref), "%s(%g) = %.9g, want %.9g",
                      what, v, y[i], ref);
    }
    switch (kind) {
    case K_RELU: nn_relu_backward(dx, r, x, n); break;
    case K_TANH: nn_tanh_backward(dx, r, y, n); break;
    case K_SIG: nn_sigmoid_backward(dx, r, y, n); break;
    case K_GELU: nn_gelu_backward(dx, r, x, n); break;
    }
    for (int i = 0; i < n; i++) dx[i] -= 0.25f;
    check_grad(fx_loss, &c, x, dx, n, kind == K_RELU ? 1e-3f : 1e-2f, 2e-3, what);
    /* in place forward gives the same values, bit for bit */
    fx_loss(&c); /* the check left y at a perturbed x */
    float z[n];
    memcpy(z, x, sizeof z);
    switch (kind) {
    case K_RELU: nn_relu_forward(z, z, n); break;
    case K_TANH: nn_tanh_forward(z, z, n); break;
    case K_SIG: nn_sigmoid_forward(z, z, n); break;
    case K_GELU: nn_gelu_forward(z, z, n); break;
    }
    ck_assert_int_eq(memcmp(z, y, sizeof z), 0);
    /* the value of an element does not depend on its position or the length */
    for (int off = 1; off < 20; off += 6) {
        switch (kind) {
        case K_RELU: nn_relu_forward(z, x + off, n - off); break;
        case K_TANH: nn_tanh_forward(z, x + off, n - off); break;
        case K_SIG: nn_sigmoid_forward(z, x + off, n - off); break;
        case K_GELU: nn_gelu_forward(z, x + off, n - off); break;
        }
        ck_assert_int_eq(memcmp(z, y + off, (n - off) * sizeof(float)), 0);
    }
}

START_TEST(test_relu_backward_matches_finite_differences) { check_activation(K_RELU, "relu"); }
END_TEST
START_TEST(test_tanh_backward_matches_finite_differences) { check_activation(K_TANH, "tanh"); }
END_TEST
START_TEST(test_sigmoid_backward_matches_finite_differences) { check_activation(K_SIG, "sigmoid"); }
END_TEST
START_TEST(test_gelu_backward_matches_finite_differences) { check_activation(K_GELU, "gelu"); }
END_TEST

START_TEST(test_empty_inputs_touch_nothing) {
    float x[4] = {1, 2, 3, 4}, y[4] = {7, 7, 7, 7}, m[4] = {7, 7, 7, 7}, W[4] = {1, 1, 1, 1};
    int32_t ids[1] = {2};
    nn_relu_forward(y, x, 0);
    nn_tanh_forward(y, x, 0);
    nn_sigmoid_forward(y, x, 0);
    nn_gelu_forward(y, x, 0);
    nn_gelu_backward(y, x, x, 0);
    nn_dropout_forward(y, m, x, 0, 4, 0.5f, 1, 1, NULL);
    nn_embedding_forward(y, ids, W, 0, 2);
    nn_linear_forward(y, x, W, W, 0, 2, 2);
    nn_linear_backward(y, W, W, x, x, W, 0, 2, 2);
    nn_layernorm_forward(y, m, m, x, W, W, 0, 4);
    nn_softmax_forward(y, x, 0, 4);
    for (int i = 0; i < 4; i++) ck_assert(y[i] == 7.0f && m[i] == 7.0f && W[i] == 1.0f);
    nn_params ps = {0};
    ck_assert_int_eq(nn_params_alloc(&ps, 1), NN_OK); /* an empty registry is fine */
    ck_assert_uint_eq(ps.total, 0);
    nn_params_zero_grad(&ps);
    nn_params_free(&ps);
}
END_TEST

START_TEST(test_activations_saturate_without_nan) {
    float x[6] = {-1e30f, -200.0f, -88.5f, 88.5f, 200.0f, 1e30f}, y[6], dx[6] = {0},
          one[6] = {1, 1, 1, 1, 1, 1};
    nn_sigmoid_forward(y, x, 6);
    ck_assert(y[0] >= 0.0f && y[0] < 1e-30f && y[5] == 1.0f);
    nn_tanh_forward(y, x, 6);
    ck_assert(y[0] == -1.0f && y[5] == 1.0f);
    nn_gelu_forward(y, x, 6);
    ck_assert(fabsf(y[1]) < 1e-20f && y[4] == 200.0f);
    nn_gelu_backward(dx, one, x + 1, 4);
    for (int i = 0; i < 4; i++) ck_assert(isfinite(dx[i]));
    ck_assert_float_eq_tol(dx[3], 1.0f, 1e-6f);
}
END_TEST

START_TEST(test_dropout_mask_is_deterministic_and_backward_is_exact) {
    enum { R = 4, C = 250, n = R * C };
    static float x[n], y[n], m[n], m2[n], r[n], dx[n];
    fill_normal(x, n, 1, 11);
    fill_normal(r, n, 1, 12);
    const float p = 0.4f;
    fx c = {.kind = K_DROP, .x = x, .y = y, .mask = m, .r = r, .n = n, .ny = n, .C = C, .p = p};
    fx_loss(&c);
    int dropped = 0;
    for (int i = 0; i < n; i++) {
        ck_assert(m[i] == 0.0f || m[i] == 1.0f / (1.0f - p));
        dropped += m[i] == 0.0f;
        ck_assert(y[i] == x[i] * m[i]);
    }
    ck_assert_int_lt(abs(dropped - 400), 60);
    /* the documented rule: element j of row r is dropped when draw j of
     * nn_rng_make(seed, step, row index, NN_RNG_DROPOUT) is below p */
    for (int rr = 0; rr < R; rr++) {
        nn_rng g = nn_rng_make(7, 3, (uint64_t)rr, NN_RNG_DROPOUT);
        for (int j = 0; j < C; j++)
            ck_assert_int_eq(m[rr * C + j] == 0.0f, nn_rng_uniform(&g) < p);
    }
    memset(dx, 0, sizeof dx);
    nn_dropout_backward(dx, r, m, n);
    check_grad(fx_loss, &c, x, dx, n, 1e-2f, 1e-3, "dropout");
    /* mask rows follow the row index: swapping two indices swaps those rows */
    int64_t idx[R] = {0, 1, 2, 3}, swp[R] = {0, 2, 1, 3};
    nn_dropout_forward(y, m, x, n, C, p, 7, 3, idx);
    nn_dropout_forward(y, m2, x, n, C, p, 7, 3, swp);
    ck_assert_int_eq(memcmp(m + C, m2 + 2 * C, C * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(m, m2, C * sizeof(float)), 0);
    ck_assert(memcmp(m + C, m2 + C, C * sizeof(float)) != 0);
    nn_dropout_forward(y, m2, x, n, C, p, 7, 4, idx); /* another step: another mask */
    ck_assert(memcmp(m, m2, n * sizeof(float)) != 0);
    nn_dropout_forward(y, m, x, n, C, 0.0f, 7, 3, NULL);
    for (int i = 0; i < n; i++) ck_assert(m[i] == 1.0f && y[i] == x[i]);
}
END_TEST

START_TEST(test_layernorm_dx_dg_db_match_finite_differences) {
    enum { N = 3, C = 41 }; /* vector blocks and a scalar tail */
    float x[N * C], g[C], b[C], y[N * C], r[N * C], mean[N], rstd[N];
    float dx[N * C] = {0}, dg[C] = {0}, db[C] = {0};
    fill_normal(x, N * C, 2, 13);
    for (int i = 0; i < N * C; i++) x[i] += 3.0f; /* a nonzero mean */
    fill_normal(g, C, 1, 14);
    fill_normal(b, C, 1, 15);
    fill_normal(r, N * C, 1, 16);
    fx c = {.kind = K_LN, .x = x, .g = g, .b = b, .y = y, .mean = mean, .rstd = rstd, .r = r,
            .N = N, .C = C, .ny = N * C};
    fx_loss(&c);
    for (int i = 0; i < N; i++) { /* normalised rows: check against a direct computation */
        double m = 0, v = 0;
        for (int k = 0; k < C; k++) m += x[i * C + k];
        m /= C;
        for (int k = 0; k < C; k++) v += (x[i * C + k] - m) * (x[i * C + k] - m);
        double rs = 1 / sqrt(v / C + 1e-5);
        ck_assert_float_eq_tol(mean[i], m, 1e-5);
        ck_assert_float_eq_tol(rstd[i], rs, 1e-5 * rs);
        for (int k = 0; k < C; k++)
            ck_assert_float_eq_tol(y[i * C + k], (x[i * C + k] - m) * rs * g[k] + b[k], 1e-5);
    }
    nn_layernorm_backward(dx, dg, db, r, x, mean, rstd, g, N, C);
    check_grad(fx_loss, &c, x, dx, N * C, 3e-2f, 5e-3, "layernorm dx");
    check_grad(fx_loss, &c, g, dg, C, 1e-2f, 2e-3, "layernorm dg");
    check_grad(fx_loss, &c, b, db, C, 1e-2f, 2e-3, "layernorm db");
}
END_TEST

START_TEST(test_softmax_rows_match_direct_computation) {
    enum { N = 3, C = 45 }; /* vector blocks and a scalar tail */
    float x[N * C], p[N * C];
    fill_normal(x, N * C, 3, 17);
    x[0] = 1000.0f; /* no overflow */
    x[C + 3] = x[C + 40] = -INFINITY; /* masked entries get exactly 0 */
    nn_softmax_forward(p, x, N, C);
    for (int i = 0; i < N; i++) {
        double mx = -INFINITY, s = 0;
        for (int k = 0; k < C; k++) mx = fmax(mx, x[i * C + k]);
        for (int k = 0; k < C; k++) s += exp(x[i * C + k] - mx);
        for (int k = 0; k < C; k++)
            ck_assert_float_eq_tol(p[i * C + k], exp(x[i * C + k] - mx) / s, 1e-6);
    }
    ck_assert(p[C + 3] == 0.0f && p[C + 40] == 0.0f);
    nn_softmax_forward(x, x, N, C); /* in place */
    ck_assert_int_eq(memcmp(x, p, sizeof p), 0);
}
END_TEST

/* ---- losses ------------------------------------------------------------------------- */

START_TEST(test_xent_equals_direct_log_softmax) {
    enum { N = 5, V = 53 }; /* vector blocks and a scalar tail on any ISA */
    float x[N * V], d[N * V];
    int32_t t[N] = {3, 0, 10, 50, 3};
    fill_normal(x, N * V, 3, 18);
    x[2 * V + 10] = 50.0f; /* row 2 is surely right */
    for (int k = 0; k < V; k++) x[4 * V + k] += 1e4f; /* large offset: stable */
    for (int si = 0; si < 2; si++) {
        float eps = si ? 0.1f : 0.0f;
        double ref = 0;
        int hits = 0;
        for (int i = 0; i < N; i++) {
            double mx = -INFINITY, s = 0, sum_lp = 0;
            int am = 0;
            for (int k = 0; k < V; k++)
                if (x[i * V + k] > mx) mx = x[i * V + k], am = k;
            for (int k = 0; k < V; k++) s += exp(x[i * V + k] - mx);
            for (int k = 0; k < V; k++) sum_lp += x[i * V + k] - mx - log(s);
            double nll = -(x[i * V + t[i]] - mx - log(s));
            ref += (1 - eps) * nll - eps * sum_lp / V;
            hits += am == t[i];
        }
        double cnt = -1, cor = -1;
        double got = nn_xent_forward_backward(d, x, t, N, V, -100, eps, 1.0f, &cnt, &cor);
        ck_assert_double_eq_tol(got, ref, 1e-4 * fabs(ref) + 1e-5);
        ck_assert_double_eq(cnt, N);
        ck_assert_double_eq(cor, hits);
        ck_assert_int_ge(hits, 1);
        for (int i = 0; i < N * V; i++) ck_assert(isfinite(d[i]));
    }
}
END_TEST

/* Reference values from PyTorch 1.13 (/usr/bin/python3): F.cross_entropy(x, t,
 * ignore_index=-1, label_smoothing=0.1, reduction='sum') and its x.grad; F.gelu(g,
 * approximate='tanh') and its derivative. Independent of this code. */
START_TEST(test_xent_and_gelu_match_pytorch) {
    float x[15] = {1.5f, -0.25f, 3.0f, 0.5f, -2.0f, 0.0f, 1.0f, 2.0f, 3.0f, 4.0f,
                   2.5f, 2.5f, -1.0f, 0.75f, 0.125f};
    int32_t t[3] = {2, -1, 4};
    const float ref_g[15] = {0.145192593f, 0.0087061692f, -0.1796581f, 0.0407709591f,
                             -0.0150116142f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.415353149f,
                             0.415353149f, -0.00685347524f, 0.0556530282f, -0.879505813f};
    float d[15];
    double l = nn_xent_forward_backward(d, x, t, 3, 5, -1, 0.1f, 1.0f, NULL, NULL);
    ck_assert_double_eq_tol(l, 3.66724086, 1e-6);
    for (int i = 0; i < 15; i++) ck_assert_float_eq_tol(d[i], ref_g[i], 2e-7f);
    float g[8] = {-3.0f, -1.0f, -0.5f, 0.0f, 0.25f, 1.0f, 2.0f, 4.0f}, y[8], dg[8] = {0},
          one[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    const float ref_y[8] = {-0.00363743305f, -0.158807993f, -0.154285997f, 0.0f, 0.149675354f,
                            0.841192007f, 1.95459771f, 3.9999299f};
    const float ref_d[8] = {-0.0115842968f, -0.0829640925f, 0.13263011f, 0.5f, 0.695354104f,
                            1.08296406f, 1.08609927f, 1.00033498f};
    nn_gelu_forward(y, g, 8);
    nn_gelu_backward(dg, one, g, 8);
    for (int i = 0; i < 8; i++) {
        ck_assert_float_eq_tol(y[i], ref_y[i], 3e-7f);
        ck_assert_float_eq_tol(dg[i], ref_d[i], 2e-6f);
    }
}
END_TEST

START_TEST(test_xent_gradient_with_ignore_index_and_label_smoothing) {
    enum { N = 5, V = 37 }; /* vector blocks and a scalar tail on any ISA */
    float x[N * V], d[N * V], d2[N * V], d3[N * V];
    int32_t t[N] = {2, -1, 36, 17, -1};
    fill_normal(x, N * V, 1.5f, 19);
    for (int si = 0; si < 2; si++) {
        float eps = si ? 0.2f : 0.0f;
        double cnt, cor;
        nn_xent_forward_backward(d, x, t, N, V, -1, eps, 1.0f, &cnt, &cor);
        ck_assert_double_eq(cnt, 3);
        for (int k = 0; k < V; k++) ck_assert(d[1 * V + k] == 0.0f && d[4 * V + k] == 0.0f);
        fx c = {.kind = K_XENT, .x = x, .ids = t, .N = N, .C = V, .ignore = -1, .smooth = eps};
        check_grad(fx_loss, &c, x, d, N * V, 2e-2f, 5e-3, eps > 0 ? "xent smoothed" : "xent");
        /* rows of d sum to 0 for counted targets (probabilities minus a distribution) */
        for (int i = 0; i < N; i++) {
            double s = 0;
            for (int k = 0; k < V; k++) s += d[i * V + k];
            ck_assert_double_eq_tol(s, 0.0, 1e-6);
        }
        /* grad_scale scales; in place equals out of place bit for bit; the loss does
         * not depend on whether gradients are asked for */
        memcpy(d2, x, sizeof x);
        double l1 = nn_xent_forward_backward(d2, d2, t, N, V, -1, eps, 0.5f, NULL, NULL);
        double l0 = nn_xent_forward_backward(NULL, x, t, N, V, -1, eps, 0.5f, NULL, NULL);
        double l2 = nn_xent_forward_backward(d3, x, t, N, V, -1, eps, 0.5f, NULL, NULL);
        ck_assert_double_eq(l1, l0);
        ck_assert_double_eq(l2, l0);
        ck_assert_int_eq(memcmp(d2, d3, sizeof d2), 0);
        for (int i = 0; i < N * V; i++) ck_assert_float_eq_tol(d2[i], 0.5f * d[i], 1e-7f);
    }
}
END_TEST

START_TEST(test_xent_edge_cases_n0_all_ignored_b1) {
    float x[4] = {1, 2, 3, 4}, d[4] = {9, 9, 9, 9};
    int32_t t[1] = {0};
    double cnt = -1, cor = -1;
    ck_assert_double_eq(nn_xent_forward_backward(d, x, t, 0, 4, -1, 0, 1, &cnt, &cor), 0.0);
    ck_assert_double_eq(cnt, 0.0);
    ck_assert(d[0] == 9.0f); /* nothing touched */
    ck_assert_double_eq(nn_xent_forward_backward(d, x, t, 1, 4, 0, 0, 1, &cnt, &cor), 0.0);
    ck_assert_double_eq(cnt, 0.0);
    for (int k = 0; k < 4; k++) ck_assert(d[k] == 0.0f);
    t[0] = 3; /* B = 1, argmax hit */
    double l = nn_xent_forward_backward(d, x, t, 1, 4, -1, 0, 1, &cnt, &cor);
    ck_assert_double_eq_tol(l, log(exp(1) + exp(2) + exp(3) + exp(4)) - 4, 1e-6);
    ck_assert_double_eq(cor, 1.0);
    /* ties: the FIRST index of the max counts, wherever the copies sit (vector lanes,
     * blocks, tail) */
    static float w[3 * 45];
    int32_t tt[3] = {20, 4, 41};
    for (int i = 0; i < 3 * 45; i++) w[i] = -1.0f;
    w[0 * 45 + 20] = w[0 * 45 + 36] = 5.0f; /* first copy counts: hit */
    w[1 * 45 + 3] = w[1 * 45 + 4] = 5.0f;   /* target is the second copy: miss */
    w[2 * 45 + 41] = w[2 * 45 + 44] = 5.0f; /* both in the tail: hit */
    nn_xent_forward_backward(NULL, w, tt, 3, 45, -1, 0, 1, &cnt, &cor);
    ck_assert_double_eq(cor, 2.0);
    tt[0] = 36;
    nn_xent_forward_backward(NULL, w, tt, 1, 45, -1, 0, 1, &cnt, &cor);
    ck_assert_double_eq(cor, 0.0);
    static float w2[70];
    for (int i = 0; i < 70; i++) w2[i] = 0.0f;
    w2[5] = w2[37] = w2[69] = 2.0f; /* the same vector lane in two blocks, and the tail */
    for (int k = 0; k < 3; k++) {
        int32_t tk = k == 0 ? 5 : k == 1 ? 37 : 69;
        nn_xent_forward_backward(NULL, w2, &tk, 1, 70, -1, 0, 1, &cnt, &cor);
        ck_assert_double_eq(cor, k == 0 ? 1.0 : 0.0);
    }
    int32_t nb = 4; /* the max at 5 is not a hit for a neighbouring target */
    nn_xent_forward_backward(NULL, w2, &nb, 1, 70, -1, 0, 1, &cnt, &cor);
    ck_assert_double_eq(cor, 0.0);
    nb = 6;
    nn_xent_forward_backward(NULL, w2, &nb, 1, 70, -1, 0, 1, &cnt, &cor);
    ck_assert_double_eq(cor, 0.0);
    /* a NaN logit makes the loss NaN (the trainer's check), it is not skipped */
    w2[50] = NAN;
    nb = 5;
    ck_assert(isnan(nn_xent_forward_backward(NULL, w2, &nb, 1, 70, -1, 0, 1, &cnt, &cor)));
    /* V = 1: loss 0 whatever the logit */
    ck_assert_double_eq_tol(nn_xent_forward_backward(d, x, (int32_t[]){0}, 1, 1, -1, 0, 1, 0, 0),
                            0.0, 1e-7);
}
END_TEST

START_TEST(test_bce_gradient_and_stability) {
    enum { N = 9 };
    float z[N], t[N] = {1, 0, 1, 0, 1, 0.3f, 1, 0, 1}, d[N];
    fill_normal(z, N, 2, 20);
    double cor;
    double l = nn_bce_forward_backward(d, z, t, N, 1.0f, &cor);
    double ref = 0;
    int hits = 0;
    for (int i = 0; i < N; i++) {
        double s = 1 / (1 + exp(-(double)z[i]));
        ref += -t[i] * log(s) - (1 - t[i]) * log(1 - s);
        hits += (z[i] > 0) == (t[i] >= 0.5f);
        ck_assert_float_eq_tol(d[i], s - t[i], 1e-6);
    }
    ck_assert_double_eq_tol(l, ref, 1e-6 * ref);
    ck_assert_double_eq(cor, hits);
    fx c = {.kind = K_BCE, .x = z, .t = t, .N = N};
    check_grad(fx_loss, &c, z, d, N, 1e-2f, 2e-3, "bce");
    float big[2] = {100.0f, -100.0f}, tt[2] = {0, 1}, db[2];
    l = nn_bce_forward_backward(db, big, tt, 2, 1.0f, &cor);
    ck_assert_double_eq_tol(l, 200.0, 1e-6);
    ck_assert_float_eq_tol(db[0], 1.0f, 1e-6f);
    ck_assert_float_eq_tol(db[1], -1.0f, 1e-6f);
    ck_assert_double_eq(cor, 0);
    ck_assert_double_eq(nn_bce_forward_backward(NULL, z, t, 0, 1.0f, NULL), 0.0);
}
END_TEST

static double quad_f(void *ctx) {
    float *x = ctx;
    return (double)x[0] * x[0] * 3 + (double)x[1] * x[2];
}

START_TEST(test_gradcheck_detects_wrong_gradients_and_restores_x) {
    float x[3] = {0.5f, -1.25f, 2.0f}, g[3] = {3.0f, 2.0f, -1.25f}, orig[3];
    memcpy(orig, x, sizeof x);
    ck_assert_double_lt(nn_gradcheck(quad_f, x, x, g, 3, 1e-2f, 10), 1e-4);
    ck_assert_int_eq(memcmp(x, orig, sizeof x), 0);
    g[2] = -2.5f; /* factor 2 wrong */
    ck_assert_double_gt(nn_gradcheck(quad_f, x, x, g, 3, 1e-2f, 10), 0.3);
    ck_assert_double_eq(nn_gradcheck(quad_f, x, x, g, 0, 1e-2f, 10), 0.0);
}
END_TEST

/* ---- bow-classifier ----------------------------------------------------------------- */

typedef struct bowctx {
    nn_model m;
    nn_batch b;
    int train;
} bowctx;

static double bow_f(void *vc) {
    bowctx *c = vc;
    nn_stats st = {0};
    int rc = c->train ? c->m.ops->forward_backward(&c->m, &c->b, 1.0f, &st)
                      : c->m.ops->evaluate(&c->m, &c->b, &st);
    ck_assert_int_eq(rc, NN_OK);
    return st.loss;
}

static void bow_make(nn_model *m, int V, int K, int dim, const char *dropout, int max_batch) {
    nn_config cfg = {0};
    char s[16];
    snprintf(s, sizeof s, "%d", dim);
    nn_config_set(&cfg, "dim", s);
    nn_config_set(&cfg, "dropout", dropout);
    nn_dims d = {.vocab = V, .classes = K, .max_len = 8, .max_batch = max_batch};
    const nn_model_ops *ops = nn_model_find("bow-classifier");
    ck_assert_ptr_nonnull(ops);
    int rc = nn_model_init(m, ops, &cfg, &d, 77);
    ck_assert_msg(rc == NN_OK, "init: %s", nn_error());
    nn_config_free(&cfg);
}

static const int32_t bow_x[4 * 6] = {
    4, 5, 5, 0, 0, 0,   /* repeated token */
    6, 7, 8, 9, 10, 11, /* full length */
    0, 0, 0, 0, 0, 0,   /* all padding */
    11, 0, 4, 0, 0, 0,  /* pad in the middle */
};

static void check_bow_gradients(int K, const char *dropout) {
    bowctx c;
    bow_make(&c.m, 12, K, 5, dropout, 4);
    static const int32_t y[4] = {1, 0, 1, 0};
    static const int64_t idx[4] = {100, 101, 102, 103};
    c.b = (nn_batch){.B = 4, .T = 6, .x = bow_x, .y = y, .index = idx, .step = 9};
    c.train = strcmp(dropout, "0") != 0;
    /* make the output layer large enough that gradients reach the embeddings */
    nn_params *ps = &c.m.params;
    for (size_t i = ps->p[1].offset; i < ps->total; i++) ps->data[i] *= 3.0f;
    nn_params_zero_grad(ps);
    nn_stats st = {0};
    ck_assert_int_eq(c.m.ops->forward_backward(&c.m, &c.b, 1.0f, &st), NN_OK);
    ck_assert_double_eq(st.count, 4);
    float *g = malloc(ps->total * sizeof *g);
    memcpy(g, ps->grad, ps->total * sizeof *g);
    /* only rows of tokens used get embedding gradient */
    int used[12] = {0};
    for (int i = 0; i < 24; i++) used[bow_x[i]] = 1;
    used[NN_PAD] = 0;
    for (int v = 0; v < 12; v++) {
        double a = 0;
        for (int k = 0; k < 5; k++) a += fabs(g[v * 5 + k]);
        ck_assert_msg(used[v] ? a > 0 : a == 0, "row %d: |grad| %g", v, a);
    }
    for (int i = 0; i < ps->n; i++) {
        char what[160];
        snprintf(what, sizeof what, "bow K=%d dropout=%s %s", K, dropout, ps->p[i].name);
        check_grad(bow_f, &c, ps->data + ps->p[i].offset, g + ps->p[i].offset, ps->p[i].size,
                   1e-2f, 5e-3, what);
    }
    free(g);
    nn_model_free(&c.m);
}

START_TEST(test_bow_softmax_gradients_match_finite_differences) { check_bow_gradients(4, "0"); }
END_TEST
START_TEST(test_bow_sigmoid_gradients_match_finite_differences) { check_bow_gradients(2, "0"); }
END_TEST
START_TEST(test_bow_dropout_gradients_match_finite_differences) {
    check_bow_gradients(3, "0.3");
    check_bow_gradients(2, "0.5");
}
END_TEST

START_TEST(test_bow_layout_names_and_errors) {
    nn_model m;
    bow_make(&m, 12, 4, 5, "0", 4);
    ck_assert_int_eq(m.params.n, 3);
    int e = nn_params_find(&m.params, "embedding/weight");
    int w = nn_params_find(&m.params, "output/weight");
    int b = nn_params_find(&m.params, "output/bias");
    ck_assert(e >= 0 && w >= 0 && b >= 0);
    ck_assert_int_eq(m.params.p[e].shape[0], 12);
    ck_assert_int_eq(m.params.p[e].shape[1], 5);
    ck_assert_int_eq(m.params.p[w].shape[0], 4);
    ck_assert_int_eq(m.params.p[b].shape[0], 4);
    for (int k = 0; k < 5; k++) ck_assert(m.params.data[NN_PAD * 5 + k] == 0.0f);
    /* an all-padding example: logits = bias = 0, so its loss is log K */
    nn_stats st = {0};
    static const int32_t y1[1] = {2};
    nn_batch bt = {.B = 1, .T = 6, .x = bow_x + 12, .y = y1};
    ck_assert_int_eq(m.ops->evaluate(&m, &bt, &st), NN_OK);
    ck_assert_double_eq_tol(st.loss, log(4.0), 1e-6);
    ck_assert_double_eq(st.count, 1);
    /* B = 0 is fine and adds nothing */
    bt.B = 0;
    ck_assert_int_eq(m.ops->forward_backward(&m, &bt, 1.0f, &st), NN_OK);
    ck_assert_double_eq(st.count, 1);
    /* bad data is an error naming the problem, not a crash */
    static const int32_t bad_x[2] = {4, 12}, bad_y[1] = {4}, ok_y[1] = {0};
    bt = (nn_batch){.B = 1, .T = 2, .x = bad_x, .y = ok_y};
    ck_assert_int_eq(m.ops->evaluate(&m, &bt, &st), NN_ERR_DATA);
    ck_assert_ptr_nonnull(strstr(nn_error(), "12"));
    bt.T = 1;
    bt.y = bad_y;
    ck_assert_int_eq(m.ops->forward_backward(&m, &bt, 1.0f, &st), NN_ERR_DATA);
    bt.B = 5;
    ck_assert_int_eq(m.ops->evaluate(&m, &bt, &st), NN_ERR_SHAPE);
    nn_model_free(&m);
    nn_model_free(&m);

    /* init failures leave the model freed and say why */
    nn_config cfg = {0};
    nn_config_set(&cfg, "dim", "abc");
    nn_dims d = {.vocab = 10, .classes = 3, .max_len = 4, .max_batch = 2};
    ck_assert_int_eq(nn_model_init(&m, &nn_bow_classifier_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    ck_assert_str_eq(nn_error(), "--dim: expected an integer, got 'abc'");
    ck_assert_ptr_null(m.impl);
    ck_assert_ptr_null(m.params.data);
    nn_config_set(&cfg, "dim", "8");
    nn_config_set(&cfg, "dropout", "1.0");
    ck_assert_int_eq(nn_model_init(&m, &nn_bow_classifier_ops, &cfg, &d, 1), NN_ERR_CONFIG);
    nn_config_set(&cfg, "dropout", "0.1");
    d.classes = 1;
    ck_assert_int_eq(nn_model_init(&m, &nn_bow_classifier_ops, &cfg, &d, 1), NN_ERR_SHAPE);
    nn_config_free(&cfg);
    ck_assert_ptr_null(nn_model_find("no-such-model"));
}
END_TEST

START_TEST(test_bow_same_seed_same_model) {
    nn_model a, b, c;
    bow_make(&a, 30, 3, 8, "0", 2);
    bow_make(&b, 30, 3, 8, "0", 2);
    nn_config cfg = {0};
    nn_dims d = {.vocab = 30, .classes = 3, .max_len = 8, .max_batch = 2};
    nn_config_set(&cfg, "dim", "8");
    ck_assert_int_eq(nn_model_init(&c, &nn_bow_classifier_ops, &cfg, &d, 78), NN_OK);
    ck_assert_uint_eq(a.params.total, c.params.total);
    ck_assert_int_eq(memcmp(a.params.data, b.params.data, a.params.total * sizeof(float)), 0);
    ck_assert(memcmp(a.params.data, c.params.data, a.params.total * sizeof(float)) != 0);
    nn_config_free(&cfg);
    nn_model_free(&a);
    nn_model_free(&b);
    nn_model_free(&c);
}
END_TEST

/* Separable toy problem: class c uses tokens 4 + 8c .. 11 + 8c, plus shared noise
 * tokens 28, 29. Plain SGD must cut the loss by more than 5x. */
static void bow_train_smoke(int K, double *first, double *last) {
    enum { B = 24, T = 10, V = 30 };
    int32_t x[B * T] = {0}, y[B];
    nn_rng r = nn_rng_make(5, 0, 0, NN_RNG_USER);
    for (int i = 0; i < B; i++) {
        y[i] = (int32_t)nn_rng_below(&r, (uint32_t)K);
        int len = 3 + (int)nn_rng_below(&r, 6);
        for (int t = 0; t < len; t++)
            x[i * T + t] = nn_rng_below(&r, 4) == 0 ? 28 + (int32_t)nn_rng_below(&r, 2)
                                                    : 4 + 8 * y[i] + (int32_t)nn_rng_below(&r, 8);
    }
    nn_model m;
    bow_make(&m, V, K, 16, "0.1", B);
    nn_batch b = {.B = B, .T = T, .x = x, .y = y};
    for (int step = 0; step <= 150; step++) {
        nn_stats st = {0};
        b.step = (uint64_t)step;
        nn_params_zero_grad(&m.params);
        ck_assert_int_eq(m.ops->forward_backward(&m, &b, 1.0f / B, &st), NN_OK);
        for (size_t i = 0; i < m.params.total; i++) m.params.data[i] -= 1.0f * m.params.grad[i];
        if (step == 0) *first = st.loss / st.count;
    }
    nn_stats ev = {0};
    ck_assert_int_eq(m.ops->evaluate(&m, &b, &ev), NN_OK);
    *last = ev.loss / ev.count;
    ck_assert_double_eq(ev.correct, B);
    nn_model_free(&m);
}

START_TEST(test_bow_sgd_drives_the_loss_down) {
    for (int K = 2; K <= 3; K++) {
        double first, last;
        bow_train_smoke(K, &first, &last);
        if (getenv("NN_TEST_VERBOSE")) fprintf(stderr, "bow SGD K=%d: loss %.4f -> %.4f\n", K, first, last);
        ck_assert_msg(last < first / 5, "K=%d: loss %g -> %g", K, first, last);
    }
}
END_TEST

/* ---- suite -------------------------------------------------------------------------- */

int main(void) {
    const tu_case cases[] = {
        {"status", test_status_strings_are_distinct_and_never_null},
        {"rng", test_rng_is_a_pure_function_of_its_key},
        {"rng", test_rng_uniform_and_normal_have_the_right_moments},
        {"config", test_config_typed_getters_and_errors_name_key_and_value},
        {"config", test_config_table_full_is_an_error},
        {"registry", test_registry_layout_is_contiguous_and_views_point_into_buffers},
        {"registry", test_registry_init_depends_only_on_seed_index_and_position},
        {"gemm", test_gemm_matches_naive_product_for_all_transposes},
        {"bf16", test_round_bf16_is_nearest_even_like_the_hardware},
        {"bf16", test_gemm_bf16_engines_match_the_rounded_product},
        {"bf16", test_matmul_mode_routes_nn_gemm_and_threads_do_not_change_bits},
        {"bf16", test_bf16_pair_matches_packing_inside_the_gemm},
        {"embedding", test_embedding_gradient_touches_only_used_rows},
        {"linear", test_linear_dx_dW_db_match_finite_differences},
        {"relu", test_relu_backward_matches_finite_differences},
        {"tanh", test_tanh_backward_matches_finite_differences},
        {"sigmoid", test_sigmoid_backward_matches_finite_differences},
        {"gelu", test_gelu_backward_matches_finite_differences},
        {"activations", test_activations_saturate_without_nan},
        {"activations", test_empty_inputs_touch_nothing},
        {"dropout", test_dropout_mask_is_deterministic_and_backward_is_exact},
        {"layernorm", test_layernorm_dx_dg_db_match_finite_differences},
        {"softmax", test_softmax_rows_match_direct_computation},
        {"xent", test_xent_equals_direct_log_softmax},
        {"xent", test_xent_gradient_with_ignore_index_and_label_smoothing},
        {"xent", test_xent_edge_cases_n0_all_ignored_b1},
        {"xent", test_xent_and_gelu_match_pytorch},
        {"bce", test_bce_gradient_and_stability},
        {"gradcheck", test_gradcheck_detects_wrong_gradients_and_restores_x},
        {"bow", test_bow_softmax_gradients_match_finite_differences},
        {"bow", test_bow_sigmoid_gradients_match_finite_differences},
        {"bow", test_bow_dropout_gradients_match_finite_differences},
        {"bow", test_bow_layout_names_and_errors},
        {"bow", test_bow_same_seed_same_model},
        {"bow", test_bow_sgd_drives_the_loss_down},
    };
    return tu_run("nn", cases, sizeof cases / sizeof cases[0]);
}
