/* hash.c - the checkpoint checksums as streaming hashes of a byte string:
 *   IO_HASH_FNV1A64    "fnv1a64": FNV-1a 64, one multiply per byte (io_fnv64_). Written
 *                      by lockstep until the word-parallel hash below; still read.
 *   IO_HASH_MULROT4X64 "mulrot4x64": four independent 64-bit lanes over 32-byte blocks,
 *                      fast enough to hash every checkpoint as it is written.
 *
 * mulrot4x64 of the bytes b[0..n), defined on little-endian byte order (so the value does
 * not depend on the host nor on the alignment of the buffer):
 *   K = 0x9e3779b97f4a7c15, F = 0xcbf29ce484222325 (the FNV-1a 64 offset basis)
 *   lane j = 0..3 starts at F + j*K (mod 2^64)
 *   for each whole 32-byte block k (bytes 32k .. 32k+31), for j = 0..3:
 *       w = the 8 bytes 32k+8j .. 32k+8j+7 as a little-endian uint64
 *       lane j = rotl64((lane j XOR w) * K mod 2^64, 29)
 *   result = FNV-1a 64 (offset basis F, prime 0x100000001b3) over the bytes of
 *       lane 0, lane 1, lane 2, lane 3 (each 8 bytes little-endian),
 *       the n mod 32 bytes after the last whole block,
 *       n (8 bytes little-endian).
 * Each lane step is a bijection of the lane for a given word (XOR, multiply by an odd
 * constant, rotate), and each FNV-1a step is injective in both the state and the byte,
 * so changing the bytes of any single 8-byte word, or any one tail byte, always changes
 * the result; wider damage is missed with probability about 2^-64. A Python version for
 * cross-checking is in tests/check_ckpt_h5py.py.
 *
 * The result depends only on the concatenated bytes, never on how they are split among
 * io_hash_update_ calls. Does not: resist deliberate forgery (not cryptographic). */
#include "io/io.h"
#include "io/io_internal.h"

#include <string.h>

#define IO_MR_K 0x9e3779b97f4a7c15ULL
#define IO_FNV_PRIME 0x100000001b3ULL

static inline uint64_t io_le64_(const unsigned char *p) {
    uint64_t x;
    memcpy(&x, p, 8); /* any alignment */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

static inline uint64_t io_rotl64_(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t io_fnv_u64le_step_(uint64_t h, uint64_t x) {
    for (int i = 0; i < 8; i++) {
        h ^= (x >> (8 * i)) & 0xff;
        h *= IO_FNV_PRIME;
    }
    return h;
}

/* The four lanes over n / 32 whole blocks of p. Scalar on purpose: GCC would put the four
 * lanes into one AVX-512 vector, whose 64-bit multiply (vpmullq) has about five times the
 * latency of imul, and each lane is a chain of dependent multiplies. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
static void io_mr_blocks_(uint64_t v[4], const unsigned char *p, size_t nblocks) {
    uint64_t a = v[0], b = v[1], c = v[2], d = v[3];
    for (size_t k = 0; k < nblocks; k++, p += 32) {
        a = io_rotl64_((a ^ io_le64_(p)) * IO_MR_K, 29);
        b = io_rotl64_((b ^ io_le64_(p + 8)) * IO_MR_K, 29);
        c = io_rotl64_((c ^ io_le64_(p + 16)) * IO_MR_K, 29);
        d = io_rotl64_((d ^ io_le64_(p + 24)) * IO_MR_K, 29);
    }
    v[0] = a;
    v[1] = b;
    v[2] = c;
    v[3] = d;
}

void io_hash_init_(io_hasher_ *s, int alg) {
    memset(s, 0, sizeof *s);
    s->alg = alg;
    s->fnv = IO_FNV64_INIT;
    for (int j = 0; j < 4; j++) s->v[j] = IO_FNV64_INIT + (uint64_t)j * IO_MR_K;
}

void io_hash_update_(io_hasher_ *s, const void *data, size_t n) {
    const unsigned char *p = data;
    if (s->alg == IO_HASH_FNV1A64) {
        s->fnv = io_fnv64_(s->fnv, p, n);
        return;
    }
    s->n += n;
    if (s->ntail) { /* complete the pending block first */
        size_t take = 32 - s->ntail < n ? 32 - s->ntail : n;
        memcpy(s->tail + s->ntail, p, take);
        s->ntail += take;
        p += take;
        n -= take;
        if (s->ntail < 32) return;
        io_mr_blocks_(s->v, s->tail, 1);
        s->ntail = 0;
    }
    io_mr_blocks_(s->v, p, n / 32);
    p += n / 32 * 32;
    n %= 32;
    memcpy(s->tail, p, n);
    s->ntail = n;
}

void io_hash_u64le_(io_hasher_ *s, uint64_t x) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(x >> (8 * i));
    io_hash_update_(s, b, 8);
}

uint64_t io_hash_final_(const io_hasher_ *s) {
    if (s->alg == IO_HASH_FNV1A64) return s->fnv;
    uint64_t h = IO_FNV64_INIT;
    for (int j = 0; j < 4; j++) h = io_fnv_u64le_step_(h, s->v[j]);
    h = io_fnv64_(h, s->tail, s->ntail);
    return io_fnv_u64le_step_(h, s->n);
}

uint64_t io_hash_buf_(int alg, const void *data, size_t n) {
    io_hasher_ s;
    io_hash_init_(&s, alg);
    io_hash_update_(&s, data, n);
    return io_hash_final_(&s);
}

int io_hash_alg_(const char *name) {
    if (!name) return -1;
    if (strcmp(name, IO_CKPT_CHECKSUM) == 0) return IO_HASH_MULROT4X64;
    if (strcmp(name, IO_CKPT_CHECKSUM_FNV1A64) == 0) return IO_HASH_FNV1A64;
    return -1;
}
