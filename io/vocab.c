/* vocab.c - word <-> id tables: open-addressing hash (FNV-1a, linear probing, load
 * factor <= 1/2), counting, deterministic pruning, pack/unpack for broadcast.
 *
 * Does not: tokenise text (text.c) or normalise words; a word is any byte string
 * without NUL. Entries are never deleted one by one: prune rebuilds the table. */
#include "io/io.h"
#include "io/io_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const io_special_words_[IO_N_SPECIAL] = {"<pad>", "<unk>", "<s>", "</s>"};

uint64_t io_fnv64_(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint32_t io_hash_(const char *w, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)w[i];
        h *= 16777619u;
    }
    return h;
}

void io_vocab_free(io_vocab *v) {
    if (!v) return;
    if (v->word)
        for (int i = 0; i < v->n; i++) free(v->word[i]);
    free(v->word);
    free(v->count);
    free(v->slot);
    memset(v, 0, sizeof *v);
}

/* Number of leading special entries (IO_N_SPECIAL when v starts with the four). */
static int io_vocab_n_special_(const io_vocab *v) {
    if (v->n < IO_N_SPECIAL) return 0;
    for (int i = 0; i < IO_N_SPECIAL; i++)
        if (strcmp(v->word[i], io_special_words_[i]) != 0) return 0;
    return IO_N_SPECIAL;
}

static int io_vocab_rehash_(io_vocab *v, int cap) {
    int *slot = malloc((size_t)cap * sizeof *slot);
    if (!slot) { io_set_error("vocabulary: out of memory"); return IO_ERR_NOMEM; }
    for (int i = 0; i < cap; i++) slot[i] = -1;
    for (int id = 0; id < v->n; id++) {
        uint32_t h = io_hash_(v->word[id], strlen(v->word[id])) & (uint32_t)(cap - 1);
        while (slot[h] >= 0) h = (h + 1) & (uint32_t)(cap - 1);
        slot[h] = id;
    }
    free(v->slot);
    v->slot = slot;
    v->cap = cap;
    return IO_OK;
}

/* Grows word/count arrays to hold at least need entries. */
static int io_vocab_reserve_(io_vocab *v, int need, int *room) {
    if (need <= *room) return IO_OK;
    int nr = *room ? *room * 2 : 64;
    while (nr < need) nr *= 2;
    char **w = realloc(v->word, (size_t)nr * sizeof *w);
    if (!w) { io_set_error("vocabulary: out of memory"); return IO_ERR_NOMEM; }
    v->word = w;
    int64_t *c = realloc(v->count, (size_t)nr * sizeof *c);
    if (!c) { io_set_error("vocabulary: out of memory"); return IO_ERR_NOMEM; }
    v->count = c;
    *room = nr;
    return IO_OK;
}

/* Arrays grow by doubling; the capacity of word/count is derived from n so the struct
 * needs no extra field: room = next power of two >= max(n, 64). */
static int io_vocab_room_(int n) {
    int r = 64;
    while (r < n) r *= 2;
    return r;
}

int io_vocab_init(io_vocab *v, int specials) {
    memset(v, 0, sizeof *v);
    int room = 0;
    if (io_vocab_reserve_(v, 64, &room) != IO_OK) { io_vocab_free(v); return IO_ERR_NOMEM; }
    if (io_vocab_rehash_(v, 128) != IO_OK) { io_vocab_free(v); return IO_ERR_NOMEM; }
    if (specials)
        for (int i = 0; i < IO_N_SPECIAL; i++)
            if (io_vocab_add(v, io_special_words_[i], strlen(io_special_words_[i]), 0) < 0) {
                io_vocab_free(v);
                return IO_ERR_NOMEM;
            }
    return IO_OK;
}

int io_vocab_lookup(const io_vocab *v, const char *w, size_t len) {
    if (!v->slot || v->cap == 0) return -1;
    uint32_t mask = (uint32_t)(v->cap - 1);
    uint32_t h = io_hash_(w, len) & mask;
    for (;;) {
        int id = v->slot[h];
        if (id < 0) return -1;
        if (strncmp(v->word[id], w, len) == 0 && v->word[id][len] == '\0') return id;
        h = (h + 1) & mask;
    }
}

int io_vocab_add(io_vocab *v, const char *w, size_t len, int64_t cnt) {
    if (!v->slot) {
        io_set_error("vocabulary: not initialised");
        return IO_ERR_FORMAT;
    }
    if (memchr(w, '\0', len)) { io_set_error("vocabulary: word contains NUL"); return IO_ERR_FORMAT; }
    int id = io_vocab_lookup(v, w, len);
    if (id >= 0) { v->count[id] += cnt; return id; }
    if (v->n >= 0x3fffffff) { io_set_error("vocabulary: too many words"); return IO_ERR_NOMEM; }
    int room = io_vocab_room_(v->n);
    if (io_vocab_reserve_(v, v->n + 1, &room) != IO_OK) return IO_ERR_NOMEM;
    if (2 * (v->n + 1) > v->cap && io_vocab_rehash_(v, v->cap * 2) != IO_OK) return IO_ERR_NOMEM;
    char *s = malloc(len + 1);
    if (!s) { io_set_error("vocabulary: out of memory"); return IO_ERR_NOMEM; }
    memcpy(s, w, len);
    s[len] = '\0';
    id = v->n;
    v->word[id] = s;
    v->count[id] = cnt;
    v->n++;
    uint32_t mask = (uint32_t)(v->cap - 1);
    uint32_t h = io_hash_(w, len) & mask;
    while (v->slot[h] >= 0) h = (h + 1) & mask;
    v->slot[h] = id;
    return id;
}

static const io_vocab *io_sort_vocab_; /* qsort has no context argument */

static int io_prune_cmp_(const void *a, const void *b) {
    int ia = *(const int *)a, ib = *(const int *)b;
    int64_t ca = io_sort_vocab_->count[ia], cb = io_sort_vocab_->count[ib];
    if (ca != cb) return ca > cb ? -1 : 1;
    return strcmp(io_sort_vocab_->word[ia], io_sort_vocab_->word[ib]);
}

int io_vocab_prune(io_vocab *v, int64_t min_count, int max_size) {
    int ns = io_vocab_n_special_(v);
    int m = v->n - ns;
    int *order = malloc((size_t)(m > 0 ? m : 1) * sizeof *order);
    char **word = malloc((size_t)io_vocab_room_(v->n) * sizeof *word);
    int64_t *count = malloc((size_t)io_vocab_room_(v->n) * sizeof *count);
    if (!order || !word || !count) {
        free(order); free(word); free(count);
        io_set_error("vocabulary: out of memory");
        return IO_ERR_NOMEM;
    }
    for (int i = 0; i < m; i++) order[i] = ns + i;
    /* Words are unique, so (count desc, bytes asc) is a total order: qsort's lack of
     * stability cannot change the result. Not thread-safe (file-static context). */
    io_sort_vocab_ = v;
    qsort(order, (size_t)m, sizeof *order, io_prune_cmp_);
    io_sort_vocab_ = NULL;
    int n = 0;
    for (int i = 0; i < ns; i++) { word[n] = v->word[i]; count[n] = v->count[i]; n++; }
    for (int i = 0; i < m; i++) {
        int id = order[i];
        int keep = v->count[id] >= min_count && (max_size <= 0 || n < max_size);
        if (keep) { word[n] = v->word[id]; count[n] = v->count[id]; n++; }
        else free(v->word[id]);
    }
    free(order);
    free(v->word);
    free(v->count);
    v->word = word;
    v->count = count;
    v->n = n;
    int cap = 128;
    while (cap < 2 * n) cap *= 2;
    return io_vocab_rehash_(v, cap);
}

/* Layout: for each entry "word\0count\0" with count in decimal. */
int io_vocab_pack(const io_vocab *v, char **buf, size_t *len) {
    size_t total = 0;
    for (int i = 0; i < v->n; i++) total += strlen(v->word[i]) + 1 + 21;
    char *b = malloc(total ? total : 1);
    if (!b) { io_set_error("vocabulary: out of memory"); return IO_ERR_NOMEM; }
    size_t p = 0;
    for (int i = 0; i < v->n; i++) {
        size_t l = strlen(v->word[i]) + 1;
        memcpy(b + p, v->word[i], l);
        p += l;
        p += (size_t)snprintf(b + p, 21, "%" PRId64, v->count[i]) + 1;
    }
    *buf = b;
    *len = p;
    return IO_OK;
}

int io_vocab_unpack(io_vocab *v, const char *buf, size_t len) {
    int rc = io_vocab_init(v, 0);
    if (rc != IO_OK) return rc;
    size_t p = 0;
    while (p < len) {
        const char *w = buf + p;
        const char *e = memchr(w, '\0', len - p);
        if (!e) break;
        const char *c = e + 1;
        const char *ce = (size_t)(c - buf) < len ? memchr(c, '\0', len - (size_t)(c - buf)) : NULL;
        if (!ce) break;
        char *end;
        long long cnt = strtoll(c, &end, 10);
        if (end != ce) break;
        size_t wl = (size_t)(e - w);
        if (io_vocab_lookup(v, w, wl) >= 0) {
            io_set_error("vocabulary buffer: duplicate word at byte %zu", p);
            io_vocab_free(v);
            return IO_ERR_FORMAT;
        }
        if (io_vocab_add(v, w, wl, cnt) < 0) { io_vocab_free(v); return IO_ERR_NOMEM; }
        p = (size_t)(ce - buf) + 1;
    }
    if (p != len) {
        io_set_error("vocabulary buffer: malformed entry at byte %zu of %zu", p, len);
        io_vocab_free(v);
        return IO_ERR_FORMAT;
    }
    return IO_OK;
}
