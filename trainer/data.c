/* data.c - from corpus files to micro-batches.
 *
 * Rank 0 builds the vocabularies (one streaming pass over the training text) and encodes
 * every split into a token shard under <out>/data; the other ranks wait, receive the
 * vocabularies, and memory-map the shards, so a rank only ever touches the pages of the
 * examples it is given. Every data kind is reduced to "examples 0..n-1" so that the
 * training loop's ordering and sharding logic is shared:
 *   classify  one line = one example (tokens, label)
 *   parallel  one line = one example (source tokens, target tokens + </s>)
 *   lm        the concatenated token stream cut into windows of seq-len (+1 for targets)
 *   dense     one row of a 2-D float32 HDF5 dataset (+ an int32 label when present)
 * This file does not decide the order of examples (train.c does) and never shuffles. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/trainer.h"

_Static_assert(IO_PAD == NN_PAD && IO_UNK == NN_UNK && IO_BOS == NN_BOS && IO_EOS == NN_EOS,
               "io and models must agree on special token ids");

static int kind_of(const char *data_kind) {
    if (strcmp(data_kind, "classify") == 0) return IO_TEXT_CLASSIFY;
    if (strcmp(data_kind, "parallel") == 0) return IO_TEXT_PARALLEL;
    if (strcmp(data_kind, "lm") == 0) return IO_TEXT_PLAIN;
    if (strcmp(data_kind, "dense") == 0) return TRAINER_DENSE;
    if (strcmp(data_kind, "caption") == 0) return TRAINER_CAPTION;
    return -1;
}

/* ---- agreement helpers --------------------------------------------------------------- */

/* Collective: rank 0's status and message reach every rank. */
static int agree(const comm *c, int rc) {
    int buf[2] = {rc, 0};
    comm_bcast_bytes(c, buf, sizeof buf, 0);
    if (buf[0] < 0) {
        char msg[1024] = {0};
        if (c->rank == 0) snprintf(msg, sizeof msg, "%s", nn_error());
        comm_bcast_bytes(c, msg, sizeof msg, 0);
        if (c->rank != 0) nn_set_error("%s", msg);
    }
    return buf[0];
}

static int from_io(int rc) {
    if (rc >= 0) return NN_OK;
    nn_set_error("%s", io_error());
    return NN_ERR_DATA;
}

static int bcast_vocab(const comm *c, io_vocab *v) {
    char *buf = NULL;
    size_t len = 0;
    int rc = 0;
    if (c->rank == 0) rc = io_vocab_pack(v, &buf, &len);
    uint64_t n = (uint64_t)len;
    comm_bcast_bytes(c, &n, sizeof n, 0);
    if (c->rank != 0) {
        buf = malloc(n ? n : 1);
        if (!buf) rc = -1;
    }
    if (comm_any(c, rc < 0)) {
        free(buf);
        nn_set_error("out of memory broadcasting a vocabulary");
        return NN_ERR_NOMEM;
    }
    comm_bcast_bytes(c, buf, (size_t)n, 0);
    if (c->rank != 0) {
        io_vocab_free(v);
        rc = io_vocab_unpack(v, buf, (size_t)n);
    }
    free(buf);
    if (comm_any(c, rc < 0)) {
        nn_set_error("cannot unpack a broadcast vocabulary");
        return NN_ERR_DATA;
    }
    return NN_OK;
}

static int shard_path(char *out, size_t n, const char *dir, const char *split);

/* ---- preparation: vocabularies and shards under <out>/data ------------------------------ */

/* The stamp names what a shard set was built from: each source (real path, size, mtime)
 * and the settings. With a matching stamp, vocab.bin (the packed vocabularies) and the
 * shards are reused as they are, so a restart neither recounts nor re-encodes. The stamp
 * is removed before anything is rebuilt and written last, so it never vouches for a
 * half-built set. */
static uint64_t vocab_hash(const io_vocab *v, uint64_t h) {
    for (int i = 0; i < v->n; i++)
        for (const char *p = v->word[i]; ; p++) {
            h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
            if (!*p) break;
        }
    return h;
}

static void stamp_line(char *out, size_t n, const char *path) {
    struct stat st;
    char real[4096];
    if (path && *path && realpath(path, real) && stat(real, &st) == 0)
        snprintf(out, n, "%s %lld %lld\n", real, (long long)st.st_size, (long long)st.st_mtime);
    else
        snprintf(out, n, "%s -\n", path ? path : "");
}

static char *read_whole(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = 0;
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

/* vocab.bin: for src, tgt, labels: u64 length + io_vocab_pack bytes (length 0: absent). */
static int save_vocabs(const char *path, io_vocab *const v[3]) {
    char *parts[3] = {NULL, NULL, NULL};
    size_t lens[3] = {0, 0, 0}, total = 0;
    int rc = NN_OK;
    for (int i = 0; i < 3 && rc == NN_OK; i++) {
        if (v[i]->n > 0 && io_vocab_pack(v[i], &parts[i], &lens[i]) < 0) rc = from_io(-1);
        total += 8 + lens[i];
    }
    char *buf = rc == NN_OK ? malloc(total) : NULL;
    if (rc == NN_OK && !buf) rc = NN_ERR_NOMEM;
    if (rc == NN_OK) {
        size_t o = 0;
        for (int i = 0; i < 3; i++) {
            uint64_t l = lens[i];
            memcpy(buf + o, &l, 8);
            if (lens[i]) memcpy(buf + o + 8, parts[i], lens[i]);
            o += 8 + lens[i];
        }
        rc = from_io(io_write_file_atomic(path, buf, total));
    }
    free(buf);
    for (int i = 0; i < 3; i++) free(parts[i]);
    return rc;
}

static int load_vocabs(const char *path, io_vocab *const v[3]) {
    size_t len = 0;
    char *buf = read_whole(path, &len);
    if (!buf) return NN_ERR_DATA;
    size_t o = 0;
    int rc = NN_OK;
    for (int i = 0; i < 3 && rc == NN_OK; i++) {
        uint64_t l;
        if (o + 8 > len) {
            rc = NN_ERR_DATA;
            break;
        }
        memcpy(&l, buf + o, 8);
        o += 8;
        if (l > len - o) {
            rc = NN_ERR_DATA;
            break;
        }
        if (l && io_vocab_unpack(v[i], buf + o, (size_t)l) < 0) rc = NN_ERR_DATA;
        o += (size_t)l;
    }
    free(buf);
    if (rc < 0)
        for (int i = 0; i < 3; i++) io_vocab_free(v[i]);
    return rc;
}

int trainer_data_prepare(const trainer_prep *p, io_vocab *vocab_from, int n_vocab_from,
                         io_vocab *src, io_vocab *tgt, io_vocab *labels) {
    const int want_tgt = p->kind == IO_TEXT_PARALLEL, want_labels = p->kind == IO_TEXT_CLASSIFY;
    io_vocab *const v[3] = {src, tgt, labels};
    char dir[4096], stamp[16384] = {0}, line[4600], stamp_path[4200], vocab_path[4200];
    size_t old_len = 0;
    snprintf(dir, sizeof dir, "%s/data", p->out);
    snprintf(stamp_path, sizeof stamp_path, "%s/stamp.txt", dir);
    snprintf(vocab_path, sizeof vocab_path, "%s/vocab.bin", dir);
    if (io_mkdirs(dir) < 0) return from_io(-1);
    for (int i = 0; i < 3; i++) {
        stamp_line(line, sizeof line, p->paths[i]);
        strncat(stamp, line, sizeof stamp - strlen(stamp) - 1);
    }
    snprintf(line, sizeof line, "kind %d max-len %ld vocab-size %ld min-count %ld format 2\n",
             p->kind, p->max_len, p->vocab_size, p->min_count);
    strncat(stamp, line, sizeof stamp - strlen(stamp) - 1);

    /* current? the stamp matches, the vocabularies load, every shard exists */
    char *old = read_whole(stamp_path, &old_len);
    int fresh = old && strcmp(old, stamp) == 0;
    free(old);
    const char *names[3] = {"train", "valid", "test"};
    char sp[3][4200];
    for (int i = 0; i < 3; i++) {
        int rc = shard_path(sp[i], sizeof sp[i], p->out, names[i]);
        if (rc < 0) return rc;
        struct stat st;
        if (p->paths[i] && *p->paths[i] && stat(sp[i], &st) != 0) fresh = 0;
    }
    if (fresh && load_vocabs(vocab_path, v) < 0) fresh = 0;
    if (fresh && vocab_from) {
        /* resuming: the shards are only current if they were made with these ids */
        uint64_t a = 0xcbf29ce484222325ULL, b = a;
        for (int i = 0; i < 3; i++) a = vocab_hash(v[i], a);
        for (int i = 0; i < n_vocab_from; i++) b = vocab_hash(&vocab_from[i], b);
        if (a != b) fresh = 0;
    }
    if (fresh) {
        if (p->verbose) printf("prepare: %s is current (stamp matches); left as it is\n", dir);
        return NN_OK;
    }
    for (int i = 0; i < 3; i++) io_vocab_free(v[i]);
    unlink(stamp_path);

    int rc = NN_OK;
    if (vocab_from) {
        /* the checkpoint's vocabularies, in the order src, tgt, labels */
        int k = 0;
        *src = vocab_from[k];
        memset(&vocab_from[k++], 0, sizeof(io_vocab));
        if (want_tgt && k < n_vocab_from) {
            *tgt = vocab_from[k];
            memset(&vocab_from[k++], 0, sizeof(io_vocab));
        }
        if (want_labels && k < n_vocab_from) {
            *labels = vocab_from[k];
            memset(&vocab_from[k++], 0, sizeof(io_vocab));
        }
    } else {
        double t0 = trainer_now();
        rc = from_io(io_vocab_init(src, 1));
        if (rc == NN_OK && want_tgt) rc = from_io(io_vocab_init(tgt, 1));
        if (rc == NN_OK && want_labels) rc = from_io(io_vocab_init(labels, 0));
        if (rc == NN_OK)
            rc = from_io(io_text_count(p->paths[0], p->kind, src, want_tgt ? tgt : NULL,
                                       want_labels ? labels : NULL));
        int words = src->n - IO_N_SPECIAL;
        if (rc == NN_OK) rc = from_io(io_vocab_prune(src, p->min_count, (int)p->vocab_size));
        if (rc == NN_OK && want_tgt)
            rc = from_io(io_vocab_prune(tgt, p->min_count, (int)p->vocab_size));
        if (rc == NN_OK && want_labels) rc = from_io(io_vocab_prune(labels, 1, 0));
        if (rc == NN_OK && want_labels && labels->n < 2) {
            nn_set_error("%s: need at least 2 distinct labels, found %d", p->paths[0], labels->n);
            rc = NN_ERR_DATA;
        }
        if (rc == NN_OK && p->verbose)
            printf("prepare: vocabulary of %s: %d entries (%d of %d distinct words, min-count "
                   "%ld, vocab-size %ld)%s in %.2f s\n",
                   p->paths[0], src->n, src->n - IO_N_SPECIAL, words, p->min_count,
                   p->vocab_size, want_labels ? " + labels" : want_tgt ? " + target" : "",
                   trainer_now() - t0);
    }
    for (int i = 0; i < 3 && rc == NN_OK; i++) {
        if (!p->paths[i] || !*p->paths[i]) continue;
        double t0 = trainer_now();
        int ml = p->kind == IO_TEXT_PLAIN ? 0 : (int)p->max_len;
        rc = from_io(io_shard_encode(p->paths[i], p->kind, src, want_tgt ? tgt : NULL,
                                     want_labels ? labels : NULL, ml, sp[i]));
        struct stat st;
        if (rc == NN_OK && p->verbose && stat(p->paths[i], &st) == 0) {
            double dt = trainer_now() - t0;
            printf("prepare: %s: %.1f MB of text encoded in %.2f s (%.1f MB/s)\n", sp[i],
                   (double)st.st_size / 1e6, dt, (double)st.st_size / 1e6 / (dt + 1e-9));
        }
    }
    if (rc == NN_OK) rc = save_vocabs(vocab_path, v);
    if (rc == NN_OK) rc = from_io(io_write_file_atomic(stamp_path, stamp, strlen(stamp)));
    return rc;
}

static int shard_path(char *out, size_t n, const char *dir, const char *split) {
    int k = snprintf(out, n, "%s/data/%s.shard", dir, split);
    if (k < 0 || (size_t)k >= n) {
        nn_set_error("run directory path too long: %s", dir);
        return NN_ERR_CONFIG;
    }
    return NN_OK;
}

/* ---- init ---------------------------------------------------------------------------- */

static int dense_split(trainer_split *s, const char *spec, const char *default_group) {
    memset(s, 0, sizeof *s);
    s->kind = TRAINER_DENSE;
    s->dense_path = strdup(spec);
    if (!s->dense_path) return NN_ERR_NOMEM;
    char *colon = strrchr(s->dense_path, ':');
    const char *group = default_group;
    if (colon && strstr(colon, ".h5") == NULL) {
        *colon = 0;
        group = colon + 1;
    }
    snprintf(s->dense_group, sizeof s->dense_group, "%s", group);
    char ds[64];
    snprintf(ds, sizeof ds, "%s/x", s->dense_group);
    int64_t rows = 0, cols = 0;
    if (io_dense_info(s->dense_path, ds, &rows, &cols) < 0) return from_io(-1);
    s->n = rows;
    s->dense_cols = cols;
    snprintf(ds, sizeof ds, "%s/y", s->dense_group);
    int64_t lr = 0, lc = 0;
    s->has_labels = 0;
    int32_t probe;
    if (rows > 0 && io_dense_read_labels(s->dense_path, ds, 0, 1, &probe) == IO_OK) {
        (void)lr;
        (void)lc;
        s->has_labels = 1;
    }
    return NN_OK;
}

/* Captions: the lengths of every caption of a split (</s> included), read once. */
static int caption_split(trainer_split *s) {
    char ds[64];
    snprintf(ds, sizeof ds, "%s/tokens", s->dense_group);
    int64_t rows = 0, cols = 0;
    if (io_dense_cols(s->dense_path, ds, &rows, &cols) < 0) return from_io(-1);
    if (rows != s->n || cols < 1) {
        nn_set_error("%s: %s has %lld rows of %lld tokens; %lld images", s->dense_path, ds,
                     (long long)rows, (long long)cols, (long long)s->n);
        return NN_ERR_DATA;
    }
    s->kind = TRAINER_CAPTION;
    s->tok_cols = cols;
    s->tok_len = malloc((size_t)(rows ? rows : 1) * sizeof *s->tok_len);
    int32_t *buf = malloc((size_t)cols * 1024 * sizeof *buf);
    if (!s->tok_len || !buf) {
        free(buf);
        return NN_ERR_NOMEM;
    }
    int rc = NN_OK;
    for (int64_t r = 0; r < rows && rc == NN_OK; r += 1024) {
        int64_t k = rows - r < 1024 ? rows - r : 1024;
        if (io_dense_read_tokens(s->dense_path, ds, r, k, buf) < 0) {
            rc = from_io(-1);
            break;
        }
        for (int64_t i = 0; i < k; i++) {
            int len = 0;
            while (len < cols && buf[i * cols + len] != IO_PAD) len++;
            s->tok_len[r + i] = len;
        }
    }
    free(buf);
    return rc;
}

static int max_seq(const int64_t *off, int64_t n) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (off[i + 1] - off[i] > m) m = off[i + 1] - off[i];
    return (int)m;
}

int trainer_data_init(trainer_data *d, const comm *c, const nn_config *cfg,
                      const nn_model_ops *ops, io_vocab *vocab_from, int n_vocab_from,
                      int micro_batch) {
    memset(d, 0, sizeof *d);
    d->kind = kind_of(ops->data_kind);
    if (d->kind < 0) {
        nn_set_error("model %s has unknown data kind '%s'", ops->name, ops->data_kind);
        return NN_ERR_CONFIG;
    }
    const char *train = nn_config_get(cfg, "data");
    const char *valid = nn_config_get(cfg, "valid");
    const char *test = nn_config_get(cfg, "test");
    const char *out = nn_config_get(cfg, "out");
    long vocab_size, min_count, max_len, seq_len;
    int rc;
    if ((rc = nn_config_int(cfg, "vocab-size", 20000, &vocab_size)) < 0 ||
        (rc = nn_config_int(cfg, "min-count", 2, &min_count)) < 0 ||
        (rc = nn_config_int(cfg, "max-len", 200, &max_len)) < 0 ||
        (rc = nn_config_int(cfg, "seq-len", 64, &seq_len)) < 0)
        return rc;
    if (!train || !*train) {
        nn_set_error("--data is required: the training corpus");
        return NN_ERR_CONFIG;
    }
    if (vocab_size < IO_N_SPECIAL + 1 || min_count < 1 || max_len < 0 || seq_len < 1) {
        nn_set_error("need --vocab-size > %d, --min-count >= 1, --max-len >= 0, --seq-len >= 1",
                     IO_N_SPECIAL);
        return NN_ERR_CONFIG;
    }
    d->has_valid = valid && *valid;
    d->has_test = test && *test;
    d->max_len = (int)max_len;

    if (d->kind == TRAINER_DENSE || d->kind == TRAINER_CAPTION) {
        rc = dense_split(&d->train, train, "train");
        if (rc == NN_OK && d->has_valid) rc = dense_split(&d->valid, valid, "valid");
        if (rc == NN_OK && d->has_test) rc = dense_split(&d->test, test, "test");
        if (rc < 0) return rc;
        d->dims.features = (int)d->train.dense_cols;
        d->dims.max_batch = micro_batch;
        int64_t shape[3] = {0, 0, 0};
        if (io_dense_attr_i64(d->train.dense_path, "image_shape", shape, 3) == IO_OK) {
            d->dims.image_c = (int)shape[0];
            d->dims.image_h = (int)shape[1];
            d->dims.image_w = (int)shape[2];
        }
        if (d->kind == TRAINER_CAPTION) {
            trainer_split *sp[3] = {&d->train, &d->valid, &d->test};
            const int on[3] = {1, d->has_valid, d->has_test};
            for (int i = 0; i < 3 && rc == NN_OK; i++)
                if (on[i]) rc = caption_split(sp[i]);
            if (rc == NN_OK && io_dense_vocab(d->train.dense_path, "vocab", &d->tgt) < 0)
                rc = from_io(-1);
            if (rc < 0) return rc;
            d->dims.vocab_tgt = d->tgt.n;
            d->dims.max_len_tgt = (int)d->train.tok_cols;
            for (int i = 1; i < 3; i++)
                if (on[i] && sp[i]->tok_cols > d->dims.max_len_tgt)
                    d->dims.max_len_tgt = (int)sp[i]->tok_cols;
            d->dims.max_len = 1;
            return NN_OK;
        }
        if (d->train.has_labels) {
            /* classes = 1 + the largest label in the training set */
            int32_t mx = 0;
            int32_t lab[4096];
            char ds[64];
            snprintf(ds, sizeof ds, "%s/y", d->train.dense_group);
            for (int64_t r = 0; r < d->train.n; r += 4096) {
                int64_t k = d->train.n - r < 4096 ? d->train.n - r : 4096;
                if (io_dense_read_labels(d->train.dense_path, ds, r, k, lab) < 0)
                    return from_io(-1);
                for (int64_t i = 0; i < k; i++) mx = lab[i] > mx ? lab[i] : mx;
            }
            d->dims.classes = mx + 1;
        }
        return NN_OK;
    }

    /* Text kinds: vocabularies first. */
    const int want_tgt = d->kind == IO_TEXT_PARALLEL;
    const int want_labels = d->kind == IO_TEXT_CLASSIFY;
    if (c->rank == 0) {
        trainer_prep p = {d->kind, {train, valid, test}, out, vocab_size, min_count, max_len, 0};
        rc = trainer_data_prepare(&p, vocab_from, n_vocab_from, &d->src, &d->tgt, &d->labels);
    }
    if ((rc = agree(c, rc)) < 0) return rc;
    if ((rc = bcast_vocab(c, &d->src)) < 0) return rc;
    if (want_tgt && (rc = bcast_vocab(c, &d->tgt)) < 0) return rc;
    if (want_labels && (rc = bcast_vocab(c, &d->labels)) < 0) return rc;

    /* Every rank maps the shards. */
    trainer_split *splits[3] = {&d->train, &d->valid, &d->test};
    const char *names[3] = {"train", "valid", "test"};
    const int present[3] = {1, d->has_valid, d->has_test};
    for (int i = 0; i < 3 && rc == NN_OK; i++) {
        if (!present[i]) continue;
        char sp[4200];
        if ((rc = shard_path(sp, sizeof sp, out, names[i])) < 0) break;
        splits[i]->kind = d->kind;
        rc = from_io(io_shard_open(&splits[i]->shard, sp, 0));
        if (rc < 0) break;
        if (d->kind == IO_TEXT_PLAIN) {
            splits[i]->seq_len = (int)seq_len;
            int64_t nt = splits[i]->shard.n_tok;
            splits[i]->n = nt > 1 ? (nt - 1) / seq_len : 0;
        } else {
            splits[i]->n = splits[i]->shard.n;
        }
    }
    if (comm_any(c, rc < 0)) {
        if (rc == NN_OK) nn_set_error("another rank failed to map a data shard");
        return rc < 0 ? rc : NN_ERR_DATA;
    }
    if (d->train.n == 0) {
        nn_set_error("%s: no training examples", train);
        return NN_ERR_DATA;
    }
    d->dims.vocab = d->src.n;
    d->dims.vocab_counts = d->src.count;
    d->dims.vocab_tgt = d->tgt.n;
    d->dims.classes = d->labels.n;
    d->dims.max_batch = micro_batch;
    if (d->kind == IO_TEXT_PLAIN) {
        d->dims.max_len = (int)seq_len;
        d->dims.max_len_tgt = (int)seq_len;
    } else {
        int m = 1, mt = 1;
        for (int i = 0; i < 3; i++) {
            if (!present[i]) continue;
            int a = max_seq(splits[i]->shard.off, splits[i]->shard.n);
            m = a > m ? a : m;
            if (want_tgt) {
                int b = max_seq(splits[i]->shard.off_tgt, splits[i]->shard.n);
                mt = b > mt ? b : mt;
            }
        }
        d->dims.max_len = m;
        d->dims.max_len_tgt = want_tgt ? mt : 0;
    }
    return NN_OK;
}

static void split_free(trainer_split *s) {
    io_shard_close(&s->shard);
    free(s->dense_path);
    free(s->tok_len);
    s->dense_path = NULL;
    s->tok_len = NULL;
}

void trainer_data_free(trainer_data *d) {
    io_vocab_free(&d->src);
    io_vocab_free(&d->tgt);
    io_vocab_free(&d->labels);
    split_free(&d->train);
    split_free(&d->valid);
    split_free(&d->test);
}

/* ---- batches --------------------------------------------------------------------------- */

int trainer_batch_init(trainer_batch *tb, const trainer_data *d, int max_B) {
    memset(tb, 0, sizeof *tb);
    tb->cap_B = max_B > 0 ? max_B : 1;
    tb->cap_T = d->dims.max_len > 0 ? d->dims.max_len : 1;
    tb->cap_U = d->kind == IO_TEXT_PLAIN ? tb->cap_T : (d->dims.max_len_tgt > 0 ? d->dims.max_len_tgt : 1);
    tb->cap_D = d->dims.features;
    size_t B = (size_t)tb->cap_B;
    tb->x = calloc(B * (size_t)tb->cap_T, sizeof *tb->x);
    tb->x_len = calloc(B, sizeof *tb->x_len);
    tb->y = calloc(B * (size_t)tb->cap_U, sizeof *tb->y);
    tb->y_len = calloc(B, sizeof *tb->y_len);
    tb->index = calloc(B, sizeof *tb->index);
    tb->xf = tb->cap_D ? calloc(B * (size_t)tb->cap_D, sizeof *tb->xf) : NULL;
    if (!tb->x || !tb->x_len || !tb->y || !tb->y_len || !tb->index || (tb->cap_D && !tb->xf)) {
        trainer_batch_free(tb);
        nn_set_error("out of memory for batch buffers");
        return NN_ERR_NOMEM;
    }
    return NN_OK;
}

void trainer_batch_free(trainer_batch *tb) {
    free(tb->x);
    free(tb->x_len);
    free(tb->y);
    free(tb->y_len);
    free(tb->index);
    free(tb->xf);
    memset(tb, 0, sizeof *tb);
}

double trainer_example_count(const trainer_data *d, const trainer_split *s, int64_t e) {
    switch (d->kind) {
    case IO_TEXT_PARALLEL: {
        int64_t len = s->shard.off_tgt[e + 1] - s->shard.off_tgt[e];
        return (double)len;
    }
    case IO_TEXT_PLAIN: return (double)s->seq_len;
    case TRAINER_CAPTION: return (double)s->tok_len[e];
    default: return 1.0;
    }
}

int trainer_batch_fill(trainer_batch *tb, const trainer_data *d, const trainer_split *s,
                       const int64_t *ex, int n, uint64_t step) {
    NN_ASSERT(n <= tb->cap_B);
    nn_batch *b = &tb->b;
    memset(b, 0, sizeof *b);
    b->B = n;
    b->index = tb->index;
    b->step = step;
    for (int i = 0; i < n; i++) tb->index[i] = ex[i];
    if (d->kind == IO_TEXT_CLASSIFY || d->kind == IO_TEXT_PARALLEL) {
        const io_shard *sh = &s->shard;
        int T = 1, U = 1;
        for (int i = 0; i < n; i++) {
            int len = (int)(sh->off[ex[i] + 1] - sh->off[ex[i]]);
            T = len > T ? len : T;
            if (d->kind == IO_TEXT_PARALLEL) {
                int lt = (int)(sh->off_tgt[ex[i] + 1] - sh->off_tgt[ex[i]]);
                U = lt > U ? lt : U;
            }
        }
        NN_ASSERT(T <= tb->cap_T);
        for (int i = 0; i < n; i++) {
            int len = (int)(sh->off[ex[i] + 1] - sh->off[ex[i]]);
            int32_t *row = tb->x + (size_t)i * T;
            memcpy(row, sh->ids + sh->off[ex[i]], (size_t)len * sizeof *row);
            for (int t = len; t < T; t++) row[t] = IO_PAD;
            tb->x_len[i] = len;
        }
        b->T = T;
        b->x = tb->x;
        b->x_len = tb->x_len;
        if (d->kind == IO_TEXT_CLASSIFY) {
            for (int i = 0; i < n; i++) tb->y[i] = sh->label[ex[i]];
            b->y = tb->y;
        } else {
            NN_ASSERT(U <= tb->cap_U);
            for (int i = 0; i < n; i++) {
                int len = (int)(sh->off_tgt[ex[i] + 1] - sh->off_tgt[ex[i]]);
                int32_t *row = tb->y + (size_t)i * U;
                memcpy(row, sh->ids_tgt + sh->off_tgt[ex[i]], (size_t)len * sizeof *row);
                for (int t = len; t < U; t++) row[t] = IO_PAD;
                tb->y_len[i] = len;
            }
            b->U = U;
            b->y = tb->y;
            b->y_len = tb->y_len;
        }
    } else if (d->kind == IO_TEXT_PLAIN) {
        const int T = s->seq_len;
        const int32_t *ids = s->shard.ids;
        for (int i = 0; i < n; i++) {
            int64_t start = ex[i] * (int64_t)T;
            memcpy(tb->x + (size_t)i * T, ids + start, (size_t)T * sizeof(int32_t));
            memcpy(tb->y + (size_t)i * T, ids + start + 1, (size_t)T * sizeof(int32_t));
            tb->x_len[i] = T;
            tb->y_len[i] = T;
        }
        b->T = b->U = T;
        b->x = tb->x;
        b->x_len = tb->x_len;
        b->y = tb->y;
        b->y_len = tb->y_len;
    } else {
        char ds[64], ls[64];
        snprintf(ds, sizeof ds, "%s/x", s->dense_group);
        snprintf(ls, sizeof ls, "%s/y", s->dense_group);
        const int D = (int)s->dense_cols;
        NN_ASSERT(D == tb->cap_D);
        for (int i = 0; i < n; i++) {
            if (io_dense_read_rows(s->dense_path, ds, ex[i], 1, tb->xf + (size_t)i * D) < 0)
                return from_io(-1);
            if (s->has_labels &&
                io_dense_read_labels(s->dense_path, ls, ex[i], 1, tb->y + i) < 0)
                return from_io(-1);
        }
        b->D = D;
        b->xf = tb->xf;
        if (s->has_labels) b->y = tb->y;
        if (s->kind == TRAINER_CAPTION) {
            char ts[64];
            snprintf(ts, sizeof ts, "%s/tokens", s->dense_group);
            const int U = (int)s->tok_cols;
            NN_ASSERT(U <= tb->cap_U);
            for (int i = 0; i < n; i++) {
                if (io_dense_read_tokens(s->dense_path, ts, ex[i], 1, tb->y + (size_t)i * U) < 0)
                    return from_io(-1);
                tb->y_len[i] = s->tok_len[ex[i]];
            }
            b->U = U;
            b->y = tb->y;
            b->y_len = tb->y_len;
        }
    }
    return NN_OK;
}
