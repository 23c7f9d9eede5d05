/* text.c - line-oriented text corpora: reading lines with a length bound, validating
 * them (UTF-8, TAB fields), splitting tokens, and counting words into vocabularies.
 *
 * Does not: keep more than one line in memory, normalise case or Unicode, or tokenise
 * anything beyond single-space splitting (corpus preparation lives in scripts/). */
#include "io/io.h"
#include "io/io_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int io_utf8_valid_(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) { i++; continue; }
        int k;
        unsigned min;
        if ((c & 0xe0) == 0xc0) { k = 1; min = 0x80; c &= 0x1f; }
        else if ((c & 0xf0) == 0xe0) { k = 2; min = 0x800; c &= 0x0f; }
        else if ((c & 0xf8) == 0xf0) { k = 3; min = 0x10000; c &= 0x07; }
        else return 0;
        if (i + (size_t)k > n - 1) return 0;
        for (int j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) return 0;
            c = (c << 6) | (p[i + j] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

/* Reads byte by byte (getc_unlocked: one stream per caller) so that a file without
 * newlines never makes the buffer grow past IO_MAX_LINE + 2 bytes. */
int io_text_next_(FILE *f, char **buf, size_t *cap, size_t *len, const char *path,
                  int64_t *lineno) {
    if (*cap < IO_MAX_LINE + 2) {
        char *b = realloc(*buf, IO_MAX_LINE + 2);
        if (!b) { io_set_error("%s: out of memory", path); return IO_ERR_NOMEM; }
        *buf = b;
        *cap = IO_MAX_LINE + 2;
    }
    char *b = *buf;
    size_t n = 0;
    int c;
    while ((c = getc_unlocked(f)) != EOF && c != '\n') {
        if (n > IO_MAX_LINE) { /* one byte of slack for a final '\r' */
            io_set_error("%s:%" PRId64 ": line exceeds the limit of %d bytes", path,
                         *lineno + 1, IO_MAX_LINE);
            return IO_ERR_FORMAT;
        }
        b[n++] = (char)c;
    }
    if (c == EOF) {
        if (ferror(f)) {
            io_set_error("%s:%" PRId64 ": read error: %s", path, *lineno + 1, strerror(errno));
            return IO_ERR_READ;
        }
        if (n == 0) return 0;
    }
    (*lineno)++;
    if (n > 0 && b[n - 1] == '\r') n--;
    if (n > IO_MAX_LINE) {
        io_set_error("%s:%" PRId64 ": line exceeds the limit of %d bytes", path, *lineno,
                     IO_MAX_LINE);
        return IO_ERR_FORMAT;
    }
    b[n] = '\0';
    *len = n;
    return 1;
}

int io_text_split_(const char *line, size_t len, int kind, io_line_ *out, const char *path,
                   int64_t lineno) {
    memset(out, 0, sizeof *out);
    if (memchr(line, '\0', len)) {
        io_set_error("%s:%" PRId64 ": NUL byte in line", path, lineno);
        return IO_ERR_FORMAT;
    }
    if (!io_utf8_valid_(line, len)) {
        io_set_error("%s:%" PRId64 ": invalid UTF-8", path, lineno);
        return IO_ERR_FORMAT;
    }
    const char *tab = memchr(line, '\t', len);
    int ntab = 0;
    for (size_t i = 0; i < len; i++) ntab += line[i] == '\t';
    switch (kind) {
    case IO_TEXT_PLAIN:
        if (ntab) {
            io_set_error("%s:%" PRId64 ": TAB in a plain-text line", path, lineno);
            return IO_ERR_FORMAT;
        }
        out->src = line;
        out->src_len = len;
        {   /* a line of only spaces is empty too */
            size_t p = 0; const char *t; size_t tl;
            if (!io_token_next_(line, len, &p, &t, &tl)) return 0;
        }
        return 1;
    case IO_TEXT_CLASSIFY:
        if (ntab != 1) {
            io_set_error("%s:%" PRId64 ": expected \"label<TAB>tokens\" (one TAB), found %d TABs",
                         path, lineno, ntab);
            return IO_ERR_FORMAT;
        }
        if (tab == line) {
            io_set_error("%s:%" PRId64 ": empty label", path, lineno);
            return IO_ERR_FORMAT;
        }
        out->label = line;
        out->label_len = (size_t)(tab - line);
        out->src = tab + 1;
        out->src_len = len - out->label_len - 1;
        return 1;
    case IO_TEXT_PARALLEL:
        if (ntab != 1) {
            io_set_error("%s:%" PRId64 ": expected \"source<TAB>target\" (one TAB), found %d TABs",
                         path, lineno, ntab);
            return IO_ERR_FORMAT;
        }
        out->src = line;
        out->src_len = (size_t)(tab - line);
        out->tgt = tab + 1;
        out->tgt_len = len - out->src_len - 1;
        return 1;
    default:
        io_set_error("%s: unknown text kind %d", path, kind);
        return IO_ERR_FORMAT;
    }
}

int io_token_next_(const char *s, size_t n, size_t *pos, const char **tok, size_t *tlen) {
    size_t p = *pos;
    while (p < n && s[p] == ' ') p++;
    if (p >= n) { *pos = p; return 0; }
    size_t b = p;
    while (p < n && s[p] != ' ') p++;
    *tok = s + b;
    *tlen = p - b;
    *pos = p;
    return 1;
}

static int io_count_tokens_(io_vocab *v, const char *s, size_t n) {
    size_t p = 0;
    const char *t;
    size_t tl;
    while (io_token_next_(s, n, &p, &t, &tl))
        if (io_vocab_add(v, t, tl, 1) < 0) return IO_ERR_NOMEM;
    return IO_OK;
}

int io_text_count(const char *path, int kind, io_vocab *src, io_vocab *tgt, io_vocab *labels) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        io_set_error("%s: cannot open: %s", path, strerror(errno));
        return errno == ENOENT ? IO_ERR_NOTFOUND : IO_ERR_OPEN;
    }
    char *buf = NULL;
    size_t cap = 0, len = 0;
    int64_t lineno = 0;
    int rc;
    while ((rc = io_text_next_(f, &buf, &cap, &len, path, &lineno)) == 1) {
        io_line_ l;
        rc = io_text_split_(buf, len, kind, &l, path, lineno);
        if (rc < 0) break;
        if (rc == 0) continue;
        if (src && (rc = io_count_tokens_(src, l.src, l.src_len)) < 0) break;
        if (tgt && l.tgt && (rc = io_count_tokens_(tgt, l.tgt, l.tgt_len)) < 0) break;
        if (labels && l.label && io_vocab_add(labels, l.label, l.label_len, 1) < 0) {
            rc = IO_ERR_NOMEM;
            break;
        }
    }
    free(buf);
    fclose(f);
    return rc < 0 ? rc : IO_OK;
}
