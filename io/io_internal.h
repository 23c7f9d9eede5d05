/* io_internal.h - helpers shared by the io/ source files; not part of the public contract. */
#ifndef IO_IO_INTERNAL_H
#define IO_IO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

void io_clear_error_(void);
/* fsync the directory that contains path (so a rename there is durable). */
int io_fsync_dir_(const char *path);
/* open + fsync + close of an existing file. */
int io_fsync_path_(const char *path);
/* "<path>.tmp.<pid>", malloc'ed; NULL when out of memory. */
char *io_tmp_name_(const char *path);
/* Finishes an atomic write of `path` through its temporary file tmp (open as fd, malloc'd;
 * both released here): when rc is IO_OK, fsync, close, rename over path and fsync the
 * directory; otherwise (or on any failure) close and unlink tmp, leaving path untouched.
 * Returns the first failure (message set) or IO_OK. */
int io_commit_tmp_(int fd, char *tmp, const char *path, int rc);
/* write(2) until done; message names path on failure. */
int io_write_all_(int fd, const void *data, size_t n, const char *path);
/* FNV-1a 64-bit, continued from h (start with IO_FNV64_INIT). */
#define IO_FNV64_INIT 0xcbf29ce484222325ULL
uint64_t io_fnv64_(uint64_t h, const void *data, size_t n);

/* ---- checkpoint checksums (hash.c): streaming hashes of a byte string ---- */
enum { IO_HASH_FNV1A64 = 0, IO_HASH_MULROT4X64 = 1 };
typedef struct io_hasher_ {
    int alg;                 /* IO_HASH_* */
    uint64_t fnv;            /* fnv1a64 state */
    uint64_t v[4];           /* mulrot4x64 lanes */
    unsigned char tail[32];  /* bytes after the last whole 32-byte block */
    size_t ntail;
    uint64_t n;              /* bytes so far */
} io_hasher_;
void io_hash_init_(io_hasher_ *s, int alg);
void io_hash_update_(io_hasher_ *s, const void *data, size_t n);
void io_hash_u64le_(io_hasher_ *s, uint64_t x);  /* the 8 little-endian bytes of x */
uint64_t io_hash_final_(const io_hasher_ *s);     /* s unchanged: may go on after */
uint64_t io_hash_buf_(int alg, const void *data, size_t n);
/* IO_HASH_* of a checksum_algorithm name (IO_CKPT_CHECKSUM, IO_CKPT_CHECKSUM_FNV1A64); -1
 * when unknown. */
int io_hash_alg_(const char *name);
#ifdef H5public_H /* files that include <hdf5.h> first */
/* Makes fapl write through ckpt_vfd.c on fd (open read-write, owned by the caller): the
 * first errno of a failed write lands in *err (which starts at 0), and HDF5 never sees it.
 * 0, or -1 when HDF5 refuses the driver. */
int io_ckpt_vfd_set_(hid_t fapl, int fd, int *err);
#endif
/* Validates UTF-8; returns 1 if s[0..n) is well-formed. */
int io_utf8_valid_(const char *s, size_t n);

/* ---- text lines (text.c), shared with shard.c ---- */
#include <stdio.h>
#define IO_MAX_LINE (1 << 20)
typedef struct io_line_ {
    const char *label; size_t label_len;  /* classify */
    const char *src; size_t src_len;      /* tokens (source side) */
    const char *tgt; size_t tgt_len;      /* parallel target side */
} io_line_;
/* Reads the next line (without "\n" / "\r\n") into *buf; 1: a line, 0: EOF, < 0 error
 * naming path:lineno (too long, read error). *lineno is advanced. */
int io_text_next_(FILE *f, char **buf, size_t *cap, size_t *len, const char *path,
                  int64_t *lineno);
/* Splits and validates one line of the given kind; 1: use it, 0: skip (empty plain
 * line), < 0: IO_ERR_FORMAT naming path:lineno. */
int io_text_split_(const char *line, size_t len, int kind, io_line_ *out, const char *path,
                   int64_t lineno);
/* Next space-separated token of s[0..n) starting at *pos; 1 with tok/tlen, 0 at end. */
int io_token_next_(const char *s, size_t n, size_t *pos, const char **tok, size_t *tlen);

#endif
