/* shard.c - token shards: encoding a text corpus into the binary layout of io.h, and
 * memory-mapping it for reading.
 *
 * Encoding makes two passes over the text with memory bounded by a few fixed buffers:
 * pass 1 validates every line and counts examples and tokens (so every section's
 * offset is known), pass 2 writes each section through its own buffer with pwrite at
 * its own offset. The checksum is then computed by reading the body back sequentially,
 * and the header is written last; the file reaches its final name only by rename.
 * Sections start at multiples of 8 bytes (zero padding) so that the int64 arrays are
 * aligned in the mapping.
 *
 * Does not: build vocabularies (text.c), shuffle, or split by rank (readers index the
 * mapping directly). */
#include "io/io.h"
#include "io/io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define IO_SHARD_MAGIC "LSTKSHRD"
#define IO_SHARD_VERSION 1u
#define IO_SHARD_HEADER 64
#define IO_SEC_BUF (1 << 16)

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shards are little-endian and mapped directly: big-endian hosts are not supported"
#endif

typedef struct io_shard_header_ {
    char magic[8];
    uint32_t version, kind;
    int64_t n, n_tok, n_tok_tgt;
    uint64_t checksum;
    char pad[IO_SHARD_HEADER - 48];
} io_shard_header_;
_Static_assert(sizeof(io_shard_header_) == IO_SHARD_HEADER, "shard header is 64 bytes");

static uint64_t io_align8_(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

/* Byte offsets of the sections and the total size; 0 on overflow. */
typedef struct io_shard_layout_ {
    uint64_t off, ids, off_tgt, ids_tgt, label, size;
} io_shard_layout_;

static int io_shard_compute_layout_(int kind, int64_t n, int64_t n_tok, int64_t n_tok_tgt,
                            io_shard_layout_ *L) {
    const int64_t lim = INT64_C(1) << 58;  /* keeps every product below 2^63 */
    if (n < 0 || n_tok < 0 || n_tok_tgt < 0 || n >= lim || n_tok >= lim || n_tok_tgt >= lim)
        return 0;
    uint64_t p = IO_SHARD_HEADER;
    memset(L, 0, sizeof *L);
    L->off = p;
    p = io_align8_(p + 8 * (uint64_t)(n + 1));
    L->ids = p;
    p = io_align8_(p + 4 * (uint64_t)n_tok);
    if (kind == IO_TEXT_PARALLEL) {
        L->off_tgt = p;
        p = io_align8_(p + 8 * (uint64_t)(n + 1));
        L->ids_tgt = p;
        p = io_align8_(p + 4 * (uint64_t)n_tok_tgt);
    }
    if (kind == IO_TEXT_CLASSIFY) {
        L->label = p;
        p = io_align8_(p + 4 * (uint64_t)n);
    }
    L->size = p;
    return 1;
}

/* ---- encoding ----------------------------------------------------------------------- */

typedef struct io_sec_ {
    int fd;
    uint64_t pos;  /* file offset of buf[0] */
    size_t used;
    char buf[IO_SEC_BUF];
} io_sec_;

static int io_sec_flush_(io_sec_ *s, const char *path) {
    size_t done = 0;
    while (done < s->used) {
        ssize_t w = pwrite(s->fd, s->buf + done, s->used - done, (off_t)(s->pos + done));
        if (w < 0) {
            if (errno == EINTR) continue;
            io_set_error("%s: write failed: %s", path, strerror(errno));
            return IO_ERR_WRITE;
        }
        done += (size_t)w;
    }
    s->pos += s->used;
    s->used = 0;
    return IO_OK;
}

static int io_sec_put_(io_sec_ *s, const void *x, size_t n, const char *path) {
    if (s->used + n > IO_SEC_BUF) {
        int rc = io_sec_flush_(s, path);
        if (rc != IO_OK) return rc;
    }
    memcpy(s->buf + s->used, x, n);
    s->used += n;
    return IO_OK;
}

/* Number of ids a side produces: tokens (truncated), plus </s> when eos. */
static int64_t io_side_len_(const char *s, size_t n, int max_len, int eos) {
    size_t p = 0;
    const char *t;
    size_t tl;
    int64_t k = 0;
    while (io_token_next_(s, n, &p, &t, &tl)) k++;
    if (eos) k++;
    if (max_len > 0 && k > max_len) k = max_len;
    return k;
}

/* Writes a side's ids: the first (len - eos) tokens mapped through v, then </s>. */
static int io_side_put_(io_sec_ *sec, const io_vocab *v, const char *s, size_t n, int64_t len,
                        int eos, const char *path) {
    size_t p = 0;
    const char *t;
    size_t tl;
    int64_t want = len - (eos ? 1 : 0);
    for (int64_t k = 0; k < want && io_token_next_(s, n, &p, &t, &tl); k++) {
        int id = io_vocab_lookup(v, t, tl);
        int32_t x = id < 0 ? IO_UNK : id;
        int rc = io_sec_put_(sec, &x, 4, path);
        if (rc != IO_OK) return rc;
    }
    if (eos && len > 0) {
        int32_t x = IO_EOS;
        return io_sec_put_(sec, &x, 4, path);
    }
    return IO_OK;
}

/* One pass over the text. pass 1 (secs == NULL): counts into *n, *nt, *ntt. pass 2:
 * writes ids, offsets and labels through the section buffers. */
static int io_shard_pass_(const char *src_path, int kind, const io_vocab *src,
                          const io_vocab *tgt, const io_vocab *labels, int max_len,
                          io_sec_ *secs, int64_t *n, int64_t *nt, int64_t *ntt) {
    FILE *f = fopen(src_path, "rb");
    if (!f) {
        io_set_error("%s: cannot open: %s", src_path, strerror(errno));
        return errno == ENOENT ? IO_ERR_NOTFOUND : IO_ERR_OPEN;
    }
    char *buf = NULL;
    size_t cap = 0, len = 0;
    int64_t lineno = 0, ex = 0, tok = 0, tokt = 0;
    int rc;
    int src_eos = kind == IO_TEXT_PLAIN;
    if (secs) {
        int64_t zero = 0;
        if ((rc = io_sec_put_(&secs[0], &zero, 8, src_path)) != IO_OK) goto done;
        if (kind == IO_TEXT_PARALLEL && (rc = io_sec_put_(&secs[2], &zero, 8, src_path)) != IO_OK)
            goto done;
    }
    while ((rc = io_text_next_(f, &buf, &cap, &len, src_path, &lineno)) == 1) {
        io_line_ l;
        rc = io_text_split_(buf, len, kind, &l, src_path, lineno);
        if (rc < 0) break;
        if (rc == 0) continue;
        int32_t label = 0;
        if (kind == IO_TEXT_CLASSIFY) {
            int id = io_vocab_lookup(labels, l.label, l.label_len);
            if (id < 0) {
                io_set_error("%s:%" PRId64 ": unknown label \"%.*s\"", src_path, lineno,
                             (int)(l.label_len > 64 ? 64 : l.label_len), l.label);
                rc = IO_ERR_FORMAT;
                break;
            }
            label = id;
        }
        int64_t ls = io_side_len_(l.src, l.src_len, max_len, src_eos);
        int64_t lt = kind == IO_TEXT_PARALLEL ? io_side_len_(l.tgt, l.tgt_len, max_len, 1) : 0;
        ex++;
        tok += ls;
        tokt += lt;
        if (!secs) continue;
        if ((rc = io_side_put_(&secs[1], src, l.src, l.src_len, ls, src_eos, src_path)) != IO_OK ||
            (rc = io_sec_put_(&secs[0], &tok, 8, src_path)) != IO_OK)
            break;
        if (kind == IO_TEXT_PARALLEL &&
            ((rc = io_side_put_(&secs[3], tgt, l.tgt, l.tgt_len, lt, 1, src_path)) != IO_OK ||
             (rc = io_sec_put_(&secs[2], &tokt, 8, src_path)) != IO_OK))
            break;
        if (kind == IO_TEXT_CLASSIFY && (rc = io_sec_put_(&secs[4], &label, 4, src_path)) != IO_OK)
            break;
    }
done:
    free(buf);
    fclose(f);
    if (rc < 0) return rc;
    if (secs) {
        if (ex != *n || tok != *nt || tokt != *ntt) {
            io_set_error("%s: changed while being encoded", src_path);
            return IO_ERR_READ;
        }
    } else {
        *n = ex;
        *nt = tok;
        *ntt = tokt;
    }
    return IO_OK;
}

static uint64_t io_checksum_fd_(int fd, uint64_t from, uint64_t to, int *err) {
    char *b = malloc(IO_SEC_BUF);
    uint64_t h = IO_FNV64_INIT;
    *err = b == NULL;
    for (uint64_t p = from; b && p < to;) {
        size_t want = to - p < IO_SEC_BUF ? (size_t)(to - p) : IO_SEC_BUF;
        ssize_t r = pread(fd, b, want, (off_t)p);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { *err = 1; break; }
        h = io_fnv64_(h, b, (size_t)r);
        p += (uint64_t)r;
    }
    free(b);
    return h;
}

int io_shard_encode(const char *src_path, int kind, const io_vocab *src, const io_vocab *tgt,
                    const io_vocab *labels, int max_len, const char *dst_path) {
    if ((kind != IO_TEXT_CLASSIFY && kind != IO_TEXT_PARALLEL && kind != IO_TEXT_PLAIN) || !src ||
        (kind == IO_TEXT_PARALLEL && !tgt) || (kind == IO_TEXT_CLASSIFY && !labels)) {
        io_set_error("%s: io_shard_encode: kind %d needs its vocabularies", src_path, kind);
        return IO_ERR_FORMAT;
    }
    int64_t n = 0, nt = 0, ntt = 0;
    int rc = io_shard_pass_(src_path, kind, src, tgt, labels, max_len, NULL, &n, &nt, &ntt);
    if (rc != IO_OK) return rc;
    io_shard_layout_ L;
    if (!io_shard_compute_layout_(kind, n, nt, ntt, &L)) {
        io_set_error("%s: corpus too large for a shard", src_path);
        return IO_ERR_FORMAT;
    }
    char *tmp = io_tmp_name_(dst_path);
    io_sec_ *secs = calloc(5, sizeof *secs);
    if (!tmp || !secs) {
        free(tmp);
        free(secs);
        io_set_error("%s: out of memory", dst_path);
        return IO_ERR_NOMEM;
    }
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        io_set_error("%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(secs);
        return IO_ERR_OPEN;
    }
    if (ftruncate(fd, (off_t)L.size) != 0) {  /* zero padding between sections */
        io_set_error("%s: cannot size to %" PRIu64 " bytes: %s", tmp, L.size, strerror(errno));
        rc = IO_ERR_WRITE;
        goto fail;
    }
    uint64_t starts[5] = {L.off, L.ids, L.off_tgt, L.ids_tgt, L.label};
    for (int i = 0; i < 5; i++) {
        secs[i].fd = fd;
        secs[i].pos = starts[i];
    }
    rc = io_shard_pass_(src_path, kind, src, tgt, labels, max_len, secs, &n, &nt, &ntt);
    for (int i = 0; rc == IO_OK && i < 5; i++) rc = io_sec_flush_(&secs[i], tmp);
    if (rc != IO_OK) goto fail;
    io_shard_header_ h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, IO_SHARD_MAGIC, 8);
    h.version = IO_SHARD_VERSION;
    h.kind = (uint32_t)kind;
    h.n = n;
    h.n_tok = nt;
    h.n_tok_tgt = ntt;
    int err;
    h.checksum = io_checksum_fd_(fd, IO_SHARD_HEADER, L.size, &err);
    if (err) {
        io_set_error("%s: cannot read back for the checksum", tmp);
        rc = IO_ERR_READ;
        goto fail;
    }
    if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        io_set_error("%s: cannot write header: %s", tmp, strerror(errno));
        rc = IO_ERR_WRITE;
        goto fail;
    }
    if (fsync(fd) != 0) {
        io_set_error("%s: fsync failed: %s", tmp, strerror(errno));
        rc = IO_ERR_WRITE;
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        io_set_error("%s: close failed: %s", tmp, strerror(errno));
        rc = IO_ERR_WRITE;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, dst_path) != 0) {
        io_set_error("%s: cannot rename %s into place: %s", dst_path, tmp, strerror(errno));
        rc = IO_ERR_OPEN;
        goto fail;
    }
    rc = io_fsync_dir_(dst_path);
    free(tmp);
    free(secs);
    return rc;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    free(secs);
    return rc;
}

/* ---- reading ------------------------------------------------------------------------ */

void io_shard_close(io_shard *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->map_len);
    memset(s, 0, sizeof *s);
}

static int io_shard_bad_(io_shard *s, const char *path, const char *what) {
    io_set_error("%s: %s", path, what);
    io_shard_close(s);
    return IO_ERR_FORMAT;
}

/* Offsets must start at 0, never decrease and end at total. */
static int io_offsets_ok_(const int64_t *off, int64_t n, int64_t total) {
    if (off[0] != 0 || off[n] != total) return 0;
    for (int64_t i = 0; i < n; i++)
        if (off[i + 1] < off[i]) return 0;
    return 1;
}

static int io_ids_ok_(const int32_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (x[i] < 0) return 0;
    return 1;
}

int io_shard_open(io_shard *s, const char *path, int verify) {
    memset(s, 0, sizeof *s);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        io_set_error("%s: cannot open: %s", path, strerror(errno));
        return errno == ENOENT ? IO_ERR_NOTFOUND : IO_ERR_OPEN;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        io_set_error("%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return IO_ERR_READ;
    }
    if ((uint64_t)st.st_size < IO_SHARD_HEADER) {
        close(fd);
        io_set_error("%s: %lld bytes, shorter than the %d-byte shard header", path,
                     (long long)st.st_size, IO_SHARD_HEADER);
        return IO_ERR_FORMAT;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        io_set_error("%s: mmap failed: %s", path, strerror(errno));
        return IO_ERR_READ;
    }
    s->map = map;
    s->map_len = (size_t)st.st_size;
    io_shard_header_ h;
    memcpy(&h, map, sizeof h);
    if (memcmp(h.magic, IO_SHARD_MAGIC, 8) != 0)
        return io_shard_bad_(s, path, "not a token shard (bad magic)");
    if (h.version != IO_SHARD_VERSION) {
        io_set_error("%s: shard version %u, this build reads %u", path, h.version,
                     IO_SHARD_VERSION);
        io_shard_close(s);
        return IO_ERR_VERSION;
    }
    if (h.kind != IO_TEXT_CLASSIFY && h.kind != IO_TEXT_PARALLEL && h.kind != IO_TEXT_PLAIN)
        return io_shard_bad_(s, path, "unknown shard kind");
    if (h.kind != IO_TEXT_PARALLEL && h.n_tok_tgt != 0)
        return io_shard_bad_(s, path, "target tokens in a shard without targets");
    io_shard_layout_ L;
    if (!io_shard_compute_layout_((int)h.kind, h.n, h.n_tok, h.n_tok_tgt, &L))
        return io_shard_bad_(s, path, "header sizes out of range");
    if (L.size != (uint64_t)st.st_size) {
        io_set_error("%s: header says %" PRIu64 " bytes, file has %lld (truncated?)", path,
                     L.size, (long long)st.st_size);
        io_shard_close(s);
        return IO_ERR_FORMAT;
    }
    const char *b = map;
    s->kind = (int)h.kind;
    s->n = h.n;
    s->n_tok = h.n_tok;
    s->n_tok_tgt = h.n_tok_tgt;
    s->off = (const int64_t *)(const void *)(b + L.off);
    s->ids = (const int32_t *)(const void *)(b + L.ids);
    if (h.kind == IO_TEXT_PARALLEL) {
        s->off_tgt = (const int64_t *)(const void *)(b + L.off_tgt);
        s->ids_tgt = (const int32_t *)(const void *)(b + L.ids_tgt);
    }
    if (h.kind == IO_TEXT_CLASSIFY) s->label = (const int32_t *)(const void *)(b + L.label);
    /* Cheap checks touch one page per array end; the full scan only under verify. */
    if (s->off[0] != 0 || s->off[s->n] != s->n_tok ||
        (s->off_tgt && (s->off_tgt[0] != 0 || s->off_tgt[s->n] != s->n_tok_tgt)))
        return io_shard_bad_(s, path, "offset table does not match the token count");
    if (verify) {
        uint64_t c = io_fnv64_(IO_FNV64_INIT, b + IO_SHARD_HEADER, s->map_len - IO_SHARD_HEADER);
        if (c != h.checksum) return io_shard_bad_(s, path, "checksum mismatch (file damaged)");
        if (!io_offsets_ok_(s->off, s->n, s->n_tok) ||
            (s->off_tgt && !io_offsets_ok_(s->off_tgt, s->n, s->n_tok_tgt)))
            return io_shard_bad_(s, path, "offsets decrease");
        if (!io_ids_ok_(s->ids, s->n_tok) || (s->ids_tgt && !io_ids_ok_(s->ids_tgt, s->n_tok_tgt)) ||
            (s->label && !io_ids_ok_(s->label, s->n)))
            return io_shard_bad_(s, path, "negative token id or label");
    }
    return IO_OK;
}
