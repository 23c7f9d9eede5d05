/* gemm_bf16.c - nn_gemm in bfloat16: C (M,N) = alpha op(A) op(B) + beta C with the inputs
 * rounded to bfloat16 (nearest even) and the products summed in fp32; A, B and C stay
 * fp32 in memory. This is the arithmetic of PyTorch's CPU autocast for matmuls, except
 * that C keeps fp32 (autocast rounds its outputs to bf16 as well).
 *
 * Two engines compute it:
 *   amx  Intel AMX tiles (TDPBF16PS, 16x16 fp32 accumulators), where the CPU and kernel
 *        offer them. The operands are converted and packed into the tile layouts (A in
 *        16 x 32 blocks, B in 16-pair x 16 "VNNI" blocks, zero padded to multiples of 32),
 *        then a 32x32 block of C is accumulated in four tiles over K slices of 512 and
 *        added into C. With nn_get_threads() >= 2 the packing and the blocks of C are cut
 *        in two halves (par.c); each block of C is always summed in the same order, so the
 *        result does not depend on the thread count.
 *   ref  The inputs rounded to bf16 into fp32 copies, then OpenBLAS SGEMM: a product of
 *        two bf16 values is exact in fp32, so only the summation order differs from amx.
 *        Used where AMX is missing, and by the tests as the reference.
 *
 * A matrix made row by row can be packed once for two GEMMs as it is made (nn_bf16_pair:
 * the gpt's cross-entropy gradient, read by both GEMMs of the output layer's backward).
 *
 * Does not: keep packed weights between calls (every call packs its other operands), or
 * use AMX for anything but bf16. LOCKSTEP_AMX=0 in the environment forces the ref engine. */
#include <cblas.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/nn.h"
#include "models/nn_par.h"

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && \
    defined(__AVX512BF16__) && defined(__AVX512BW__)
#define HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#else
#define HAVE_AMX 0
#endif

static atomic_int matmul_mode; /* NN_MATMUL_FP32 or NN_MATMUL_BF16 */

int nn_set_matmul(int mode) {
    if (mode != NN_MATMUL_FP32 && mode != NN_MATMUL_BF16) return NN_ERR_CONFIG;
    atomic_store(&matmul_mode, mode);
    return NN_OK;
}

int nn_get_matmul(void) { return atomic_load(&matmul_mode); }

/* ---- reference engine -------------------------------------------------------------- */

/* fp32 -> bf16 -> fp32, nearest even, as VCVTNEPS2BF16: fp32 denormals become signed
 * zeros, NaNs stay NaN (quiet). */
float nn_round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0) {
        u &= 0x80000000u;
    } else if ((u & 0x7fffffffu) > 0x7f800000u) {
        u = (u | 0x00400000u) & 0xffff0000u;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        u &= 0xffff0000u;
    }
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Rounded copies of both operands, kept per thread and grown as needed (the training step
 * does not allocate). */
static _Thread_local float *ref_buf;
static _Thread_local size_t ref_cap;

/* The rows x cols matrix at src (leading dimension ld) rounded to bf16 into dst. */
static void round_into(float *dst, const float *src, int rows, int cols, int ld) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            dst[(size_t)i * cols + j] = nn_round_bf16(src[(size_t)i * ld + j]);
}

static void gemm_ref(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    size_t na = (size_t)ar * ac, need = na + (size_t)br * bc;
    if (need > ref_cap) {
        free(ref_buf);
        ref_buf = nn_alloc_big(need * sizeof *ref_buf);
        ref_cap = ref_buf ? need : 0;
    }
    NN_ASSERT(ref_buf); /* out of memory inside a GEMM: nothing sensible to return */
    float *a = ref_buf, *b = ref_buf + na;
    round_into(a, A, ar, ac, lda);
    round_into(b, B, br, bc, ldb);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, a, ac, b, bc, beta, C, ldc);
}

#if HAVE_AMX

/* ---- AMX engine ---------------------------------------------------------------------- */

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define KSLICE 16 /* K blocks of 32 per pass over C: A strip 32 x 512 bf16 = 32 KB (L1) */
#define NGROUP 32 /* 32-column strips of B per group: 1024 x 512 bf16 = 1 MB (L2); the A strip
                   * is reused over 32 blocks (4: 11 % slower gpt steps, 64: 4 %) */

typedef uint16_t bf16;

/* AMX usable in this process: CPU flags, the kernel's permission for tile data, and not
 * switched off by LOCKSTEP_AMX=0. Decided once. */
static int amx_usable(void) {
    static atomic_int state; /* 0 unknown, 1 yes, 2 no */
    int s = atomic_load(&state);
    if (s) return s == 1;
    unsigned a, b, c, d, a1, b1, c1, d1;
    const char *env = getenv("LOCKSTEP_AMX");
    int ok = !(env && env[0] == '0') && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
             __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (d & (1u << 24)) && /* AMX-TILE */
             (d & (1u << 22)) && (a1 & (1u << 5)) &&                          /* AMX-BF16, AVX512-BF16 */
             (b & (1u << 30)) &&                                               /* AVX512BW */
             syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    atomic_store(&state, ok ? 1 : 2);
    return ok;
}

/* Every tile 16 rows x 64 bytes: 0-3 accumulators (fp32 16x16), 4-5 A, 6-7 B. The
 * configuration is per thread; it is loaded before each use (a few cycles). */
static void tiles_configure(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } __attribute__((aligned(64))) cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
}

/* 16 rows of 32 k-contiguous floats (row i at src + i * ld; rows >= nr and columns >= nk
 * read as zero) -> r[i]: row i as 32 bf16. */
static inline void load_rows(__m512i r[16], const float *src, size_t ld, int nr, int nk) {
    __mmask16 m0 = nk >= 16 ? 0xffff : (__mmask16)((1u << nk) - 1);
    __mmask16 m1 = nk >= 32 ? 0xffff : nk <= 16 ? 0 : (__mmask16)((1u << (nk - 16)) - 1);
    for (int i = 0; i < 16; i++) {
        r[i] = _mm512_setzero_si512();
        if (i < nr) {
            const float *s = src + (size_t)i * ld;
            __m512 lo = _mm512_maskz_loadu_ps(m0, s), hi = _mm512_maskz_loadu_ps(m1, s + 16);
            r[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        }
    }
}

/* 32 rows (k) of 16 contiguous floats (row k at src + k * ld; rows >= nk and columns >= nc
 * read as zero) -> r[p]: k-pair p as 16 words, word c = (row 2p, row 2p + 1) of column c. */
static inline void load_pairs(__m512i r[16], const float *src, size_t ld, int nk, int nc) {
    __mmask16 m = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1);
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
                                         1, 16, 0);
    for (int p = 0; p < 16; p++) {
        int k = 2 * p;
        __m512 r0 = k < nk ? _mm512_maskz_loadu_ps(m, src + (size_t)k * ld) : _mm512_setzero_ps();
        __m512 r1 = k + 1 < nk ? _mm512_maskz_loadu_ps(m, src + (size_t)(k + 1) * ld)
                               : _mm512_setzero_ps();
        __m512i both = (__m512i)_mm512_cvtne2ps_pbh(r1, r0); /* r0 in the low half */
        r[p] = _mm512_permutexvar_epi16(idx, both);
    }
}

/* r as a 16 x 16 matrix of 32-bit words (pairs of bf16 move together), transposed:
 * words interleaved in pairs of rows, then 64-bit halves in fours, then 128-bit lanes. */
static inline void transpose_words(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + j], lane L: column 4L + j of rows 4i .. 4i+3 */
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) { /* row 4L + j of the result: lane L of u[j], u[4+j], ... */
        __m512i x0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44);
        __m512i x1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xee);
        __m512i y0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
        __m512i y1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xee);
        r[j] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        r[8 + j] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
}

static inline void store_block(bf16 *dst, const __m512i r[16]) {
    for (int i = 0; i < 16; i++) _mm512_store_si512((__m512i *)(dst + 32 * i), r[i]);
}

typedef struct gemm_job {
    int ta, tb, M, N, K, KB, MS, NS; /* KB: K blocks of 32; MS, NS: strips of 32 */
    float alpha, beta;
    const float *A, *B;
    int lda, ldb, ldc;
    float *C;
    bf16 *Ap, *Bp; /* Ap: (2 MS) x KB blocks of 16 rows x 32; Bp: (2 NS) x KB pair blocks */
    int split_m;   /* compute halves cut along M (else along N) */
    const float *bias; /* NULL, or C = alpha op(A) op(B) + bias (N) on every row */
    int a_ready, b_ready; /* Ap / Bp were packed ahead (nn_bf16_pair): skip packing them */
} gemm_job;

/* Block (row block rb, k block kb) of an operand op(X) of R rows by K, into dst: in the
 * A layout (16 rows x 32 k) or the pair layout (16 k-pairs x 16 columns) of B. k_contig:
 * X stores op(X) with k contiguous (A untransposed, B transposed). Loading along k gives
 * the A layout and loading pairs of rows gives the pair layout; the other one is a word
 * transpose away. Rows past R and k past K are zero. */
static void pack_block(bf16 *dst, const float *X, int ld, int k_contig, int R, int K, int rb,
                       int kb, int pair_layout) {
    int r0 = 16 * rb, k0 = 32 * kb, nr = R - r0, nk = K - k0;
    __m512i r[16];
    if (nr <= 0) {
        memset(dst, 0, 1024);
        return;
    }
    if (k_contig) load_rows(r, X + (size_t)r0 * ld + k0, (size_t)ld, nr, nk);
    else load_pairs(r, X + (size_t)k0 * ld + r0, (size_t)ld, nk, nr);
    if (k_contig == pair_layout) transpose_words(r);
    store_block(dst, r);
}

/* Block i of an operand with nr row blocks of KB k blocks each, in the order that reads
 * the source sequentially: along k when the source is k-contiguous (rows), else along the
 * row blocks (each k block reads 32 source rows, 64 bytes at a time). */
static void block_of(size_t i, int nr, int KB, int k_contig, int *r, int *k) {
    if (k_contig) *r = (int)(i / (size_t)KB), *k = (int)(i % (size_t)KB);
    else *k = (int)(i / (size_t)nr), *r = (int)(i % (size_t)nr);
}

static void pack_part(void *ctx, int part) {
    const gemm_job *j = ctx;
    size_t na = (size_t)2 * j->MS * j->KB, nb = (size_t)2 * j->NS * j->KB, i0, i1;
    nn_par_half(na + nb, part, 1, &i0, &i1);
    for (size_t i = i0; i < i1; i++) {
        int r, k;
        if (i < na ? j->a_ready : j->b_ready) continue;
        if (i < na) {
            block_of(i, 2 * j->MS, j->KB, !j->ta, &r, &k);
            pack_block(j->Ap + ((size_t)r * j->KB + k) * 512, j->A, j->lda, !j->ta, j->M, j->K,
                       r, k, 0);
        } else {
            block_of(i - na, 2 * j->NS, j->KB, j->tb, &r, &k);
            pack_block(j->Bp + ((size_t)r * j->KB + k) * 512, j->B, j->ldb, j->tb, j->N, j->K,
                       r, k, 1);
        }
    }
}

/* acc (32x32, row stride 32) into C at strip (ms, ns), for blocks the tiles cannot
 * read and write directly: on the first K slice C = alpha acc + beta C (C not read when
 * beta is 0) or C = alpha acc + bias; after it C += alpha acc. */
static void add_block(const gemm_job *j, const float *acc, int ms, int ns, int first) {
    int m0 = 32 * ms, n0 = 32 * ns, rows = j->M - m0 < 32 ? j->M - m0 : 32;
    int cols = j->N - n0 < 32 ? j->N - n0 : 32;
    __mmask16 k0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 k1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    __m512 al = _mm512_set1_ps(j->alpha), be = _mm512_set1_ps(first ? j->beta : 1.0f);
    int read = !(first && (j->beta == 0.0f || j->bias));
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (first && j->bias) {
        b0 = _mm512_maskz_loadu_ps(k0, j->bias + n0);
        b1 = _mm512_maskz_loadu_ps(k1, j->bias + n0 + 16);
    }
    for (int i = 0; i < rows; i++) {
        float *c = j->C + (size_t)(m0 + i) * j->ldc + n0;
        __m512 v0 = _mm512_fmadd_ps(al, _mm512_load_ps(acc + 32 * i), b0);
        __m512 v1 = _mm512_fmadd_ps(al, _mm512_load_ps(acc + 32 * i + 16), b1);
        if (read) {
            v0 = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(k0, c), v0);
            v1 = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(k1, c + 16), v1);
        }
        _mm512_mask_storeu_ps(c, k0, v0);
        _mm512_mask_storeu_ps(c + 16, k1, v1);
    }
}

/* One 32 x 32 block of C over K blocks [kb0, kb1). Full blocks with alpha 1 keep C in the
 * tiles: they start from C itself (after the first slice, or beta 1), from the bias
 * repeated down the rows (a tile load with stride 0), or from zero, and are stored
 * straight back. Other blocks go through acc and add_block. */
static void block(const gemm_job *j, int ms, int ns, int kb0, int kb1, float *acc) {
    const size_t blk = 512, KB = (size_t)j->KB;
    const bf16 *a0 = j->Ap + (size_t)(2 * ms) * KB * blk, *a1 = a0 + KB * blk;
    const bf16 *b0 = j->Bp + (size_t)(2 * ns) * KB * blk, *b1 = b0 + KB * blk;
    int first = kb0 == 0;
    int direct = j->alpha == 1.0f && 32 * ms + 32 <= j->M && 32 * ns + 32 <= j->N &&
                 (j->bias || j->beta == 0.0f || j->beta == 1.0f);
    float *c = j->C + (size_t)(32 * ms) * j->ldc + 32 * ns;
    const size_t ldb = (size_t)j->ldc * sizeof(float); /* bytes between rows of C */
    if (direct && (!first || (!j->bias && j->beta == 1.0f))) {
        _tile_loadd(0, c, ldb);
        _tile_loadd(1, c + 16, ldb);
        _tile_loadd(2, c + 16 * (size_t)j->ldc, ldb);
        _tile_loadd(3, c + 16 * (size_t)j->ldc + 16, ldb);
    } else if (direct && j->bias) {
        _tile_loadd(0, j->bias + 32 * ns, 0);
        _tile_loadd(1, j->bias + 32 * ns + 16, 0);
        _tile_loadd(2, j->bias + 32 * ns, 0);
        _tile_loadd(3, j->bias + 32 * ns + 16, 0);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int kb = kb0; kb < kb1; kb++) {
        _tile_loadd(4, a0 + kb * blk, 64);
        _tile_loadd(6, b0 + kb * blk, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b1 + kb * blk, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a1 + kb * blk, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    if (direct) {
        _tile_stored(0, c, ldb);
        _tile_stored(1, c + 16, ldb);
        _tile_stored(2, c + 16 * (size_t)j->ldc, ldb);
        _tile_stored(3, c + 16 * (size_t)j->ldc + 16, ldb);
        return;
    }
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    _tile_stored(2, acc + 16 * 32, 128);
    _tile_stored(3, acc + 16 * 32 + 16, 128);
    add_block(j, acc, ms, ns, first);
}

static void compute_part(void *ctx, int part) {
    const gemm_job *j = ctx;
    size_t s0, s1;
    nn_par_half((size_t)(j->split_m ? j->MS : j->NS), part, 1, &s0, &s1);
    int ms0 = j->split_m ? (int)s0 : 0, ms1 = j->split_m ? (int)s1 : j->MS;
    int ns0 = j->split_m ? 0 : (int)s0, ns1 = j->split_m ? j->NS : (int)s1;
    if (ms0 >= ms1 || ns0 >= ns1) return;
    tiles_configure();
    float acc[32 * 32] __attribute__((aligned(64)));
    for (int kb0 = 0; kb0 < j->KB; kb0 += KSLICE) {
        int kb1 = kb0 + KSLICE < j->KB ? kb0 + KSLICE : j->KB;
        for (int g0 = ns0; g0 < ns1; g0 += NGROUP) {
            int g1 = g0 + NGROUP < ns1 ? g0 + NGROUP : ns1;
            for (int ms = ms0; ms < ms1; ms++)
                for (int ns = g0; ns < g1; ns++) block(j, ms, ns, kb0, kb1, acc);
        }
    }
    _tile_release();
}

/* Packing buffers of the calling thread, grown as needed and kept (a GEMM may run in
 * either of two threads at once: attention's halves call nn_gemm concurrently). */
static _Thread_local bf16 *pack_buf;
static _Thread_local size_t pack_cap;

static bf16 *pack_space(size_t elems) {
    if (elems > pack_cap) {
        free(pack_buf);
        pack_buf = nn_alloc_big(elems * sizeof(bf16));
        pack_cap = pack_buf ? elems : 0;
    }
    return pack_buf;
}

static int gemm_amx_pre(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                        int lda, const float *B, int ldb, float beta, const float *bias, float *C,
                        int ldc, const bf16 *Apre, const bf16 *Bpre) {
    gemm_job j = {ta, tb, M, N, K, (K + 31) / 32, (M + 31) / 32, (N + 31) / 32, alpha, beta,
                  A, B, lda, ldb, ldc, C, NULL, NULL, 0, bias, Apre != NULL, Bpre != NULL};
    size_t na = Apre ? 0 : (size_t)2 * j.MS * j.KB * 512;
    size_t nb = Bpre ? 0 : (size_t)2 * j.NS * j.KB * 512;
    bf16 *buf = na + nb ? pack_space(na + nb) : NULL;
    if (na + nb && !buf) return 0;
    j.Ap = Apre ? (bf16 *)Apre : buf, j.Bp = Bpre ? (bf16 *)Bpre : buf + na;
    j.split_m = j.MS >= j.NS;
    int big = (double)M * N * K >= 1 << 20; /* ~2 MFLOP: worth a thread handoff */
    if (na + nb) nn_par_run(pack_part, &j, big);
    nn_par_run(compute_part, &j, big && (j.split_m ? j.MS : j.NS) >= 2);
    return 1;
}

static int gemm_amx(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, const float *bias, float *C, int ldc) {
    return gemm_amx_pre(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, bias, C, ldc, NULL, NULL);
}

/* ---- a matrix packed once for two GEMMs (nn_bf16_pair) ------------------------------- */

/* Rows [n0, n0 + nr) of X, nr <= 32 and n0 a multiple of 32, from src (row stride ld)
 * into both layouts, one whole 1 KB block at a time: the two 16-row A blocks of every
 * k block, and the k-pair block of every 16 columns (rows past nr read as zero). */
static void pair_put_rows(nn_bf16_pair *x, int n0, int nr, const float *src, size_t ld) {
    const int V = x->V, KBa = (V + 31) / 32, KBb = (x->N + 31) / 32, NB = 2 * ((V + 31) / 32);
    __m512i r[16];
    for (int h = 0; h < 2; h++) {
        int rows = nr - 16 * h;
        bf16 *a = x->rows_fmt + ((size_t)(n0 / 16 + h) * KBa) * 512;
        for (int kb = 0; kb < KBa; kb++) {
            if (rows <= 0) break; /* padding rows stay zero */
            load_rows(r, src + (size_t)(16 * h) * ld + 32 * kb, ld, rows, V - 32 * kb);
            store_block(a + (size_t)kb * 512, r);
        }
    }
    bf16 *b = x->pairs_fmt + (size_t)(n0 / 32) * 512;
    for (int nb = 0; nb < NB; nb++) {
        int nc = V - 16 * nb;
        if (nc <= 0) break; /* padding columns stay zero */
        load_pairs(r, src + 16 * nb, ld, nr, nc);
        store_block(b + (size_t)nb * KBb * 512, r);
    }
}

#endif /* HAVE_AMX */

int nn_bf16_pair_usable(void) {
#if HAVE_AMX
    return nn_get_matmul() == NN_MATMUL_BF16 && amx_usable();
#else
    return 0;
#endif
}

int nn_bf16_pair_begin(nn_bf16_pair *x, int N, int V) {
    size_t na = (size_t)2 * ((N + 31) / 32) * ((V + 31) / 32) * 512;
    size_t nb = (size_t)2 * ((V + 31) / 32) * ((N + 31) / 32) * 512;
    if (na + nb > x->cap) {
        free(x->rows_fmt);
        x->rows_fmt = nn_alloc_big((na + nb) * sizeof(uint16_t));
        x->cap = x->rows_fmt ? na + nb : 0;
        if (!x->rows_fmt) return NN_ERR_NOMEM;
    }
    x->pairs_fmt = x->rows_fmt + na;
    /* padding rows (N up to a multiple of 32) and columns must read as zero: clear it all
     * when the shape changes; put_rows then rewrites rows [0, N) completely */
    if (x->N != N || x->V != V) memset(x->rows_fmt, 0, (na + nb) * sizeof(uint16_t));
    x->N = N, x->V = V;
    return NN_OK;
}

void nn_bf16_pair_put_rows(nn_bf16_pair *x, int n0, int nr, const float *src, size_t ld) {
    NN_ASSERT(n0 >= 0 && n0 % 32 == 0 && nr > 0 && nr <= 32 && n0 + nr <= x->N);
#if HAVE_AMX
    pair_put_rows(x, n0, nr, src, ld);
#else
    (void)src, (void)ld;
    NN_ASSERT(!"nn_bf16_pair without AMX support");
#endif
}

void nn_bf16_pair_free(nn_bf16_pair *x) {
    if (!x) return;
    free(x->rows_fmt);
    memset(x, 0, sizeof *x);
}

void nn_gemm_bf16_xa(const nn_bf16_pair *x, int tb, int N, const float *B, int ldb, float alpha,
                     float beta, float *C, int ldc) {
#if HAVE_AMX
    if (gemm_amx_pre(0, tb, x->N, N, x->V, alpha, NULL, x->V, B, ldb, beta, NULL, C, ldc,
                     x->rows_fmt, NULL))
        return;
#endif
    NN_ASSERT(!"nn_gemm_bf16_xa: no AMX or no memory");
    (void)x, (void)tb, (void)N, (void)B, (void)ldb, (void)alpha, (void)beta, (void)C, (void)ldc;
}

void nn_gemm_bf16_xb(int ta, int M, const float *A, int lda, const nn_bf16_pair *x, float alpha,
                     float beta, float *C, int ldc) {
#if HAVE_AMX
    if (gemm_amx_pre(ta, 0, M, x->V, x->N, alpha, A, lda, NULL, x->V, beta, NULL, C, ldc, NULL,
                     x->pairs_fmt))
        return;
#endif
    NN_ASSERT(!"nn_gemm_bf16_xb: no AMX or no memory");
    (void)x, (void)ta, (void)M, (void)A, (void)lda, (void)alpha, (void)beta, (void)C, (void)ldc;
}


const char *nn_matmul_engine(void) {
#if HAVE_AMX
    if (amx_usable()) return "amx";
#endif
    return "ref";
}

/* C = alpha op(A) op(B) + (bias ? bias on every row : beta C). */
static void gemm_bf16(int engine, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta,
                      const float *bias, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (bias) { /* the ref engine and K = 0 start from the bias rows */
#if HAVE_AMX
        if (K > 0 && engine == NN_ENGINE_BEST && amx_usable() &&
            gemm_amx(ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, bias, C, ldc))
            return;
#endif
        for (int i = 0; i < M; i++) memcpy(C + (size_t)i * ldc, bias, (size_t)N * sizeof *C);
        beta = 1.0f;
    }
    if (K <= 0) { /* no products: C = beta C */
        for (int i = 0; i < M; i++)
            for (int k = 0; k < N; k++) {
                float *c = C + (size_t)i * ldc + k;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
#if HAVE_AMX
    if (!bias && engine == NN_ENGINE_BEST && amx_usable() &&
        gemm_amx(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc))
        return;
#else
    (void)engine;
#endif
    gemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void nn_gemm_bf16(int engine, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_bf16(engine, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc);
}

void nn_gemm_bf16_bias(int engine, int ta, int tb, int M, int N, int K, const float *A, int lda,
                       const float *B, int ldb, const float *bias, float *C, int ldc) {
    gemm_bf16(engine, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, bias, C, ldc);
}
