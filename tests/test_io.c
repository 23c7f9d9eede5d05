/* test_io.c - io/: vocabularies, text validation, token shards, HDF5 checkpoints (round
 * trip, refusals, atomicity, run directories), metrics log, dense reads, and an h5py
 * cross-check of the checkpoint layout (tests/check_ckpt_h5py.py).
 *
 * Runs from tests/ (fixtures in tests/data/); scratch files go to a fresh mkdtemp
 * directory per test. Needs /usr/bin/python3 with h5py and numpy for the cross-checks. */
#include "io/io.h"

#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

/* ---- helpers ------------------------------------------------------------------------ */

static char tdir[256];

static void setup_tmp(void) {
    snprintf(tdir, sizeof tdir, "/tmp/test_io_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tdir));
}

static void teardown_tmp(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tdir);
}

static char *tpath(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tdir, name);
    return buf[k];
}

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(s, 1, strlen(s), f), strlen(s));
    fclose(f);
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    b[len] = '\0';
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int count_tmp_files(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static int have_h5py(void) {
    return system("/usr/bin/python3 -c 'import h5py, numpy' >/dev/null 2>&1") == 0;
}

static int lookup(const io_vocab *v, const char *w) { return io_vocab_lookup(v, w, strlen(w)); }

/* ---- vocabularies ------------------------------------------------------------------- */

START_TEST(test_vocab_specials_come_first_and_lookup_round_trips) {
    io_vocab v;
    ck_assert_int_eq(io_vocab_init(&v, 1), IO_OK);
    ck_assert_int_eq(v.n, IO_N_SPECIAL);
    ck_assert_int_eq(lookup(&v, "<pad>"), IO_PAD);
    ck_assert_int_eq(lookup(&v, "<unk>"), IO_UNK);
    ck_assert_int_eq(lookup(&v, "<s>"), IO_BOS);
    ck_assert_int_eq(lookup(&v, "</s>"), IO_EOS);
    /* enough words to force several regrowths of arrays and table */
    char w[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(w, sizeof w, "w%d", i);
        ck_assert_int_eq(io_vocab_add(&v, w, strlen(w), i), IO_N_SPECIAL + i);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(w, sizeof w, "w%d", i);
        ck_assert_int_eq(lookup(&v, w), IO_N_SPECIAL + i);
        ck_assert_str_eq(v.word[IO_N_SPECIAL + i], w);
    }
    ck_assert_int_eq(io_vocab_add(&v, "w7", 2, 5), IO_N_SPECIAL + 7);
    ck_assert_int_eq(v.count[IO_N_SPECIAL + 7], 12);
    ck_assert_int_eq(lookup(&v, "w5000"), -1);
    ck_assert_int_eq(io_vocab_lookup(&v, "w12", 2), IO_N_SPECIAL + 1); /* length-bounded */
    ck_assert_int_eq(lookup(&v, "w"), -1);
    io_vocab_free(&v);
    io_vocab_free(&v); /* idempotent */
    ck_assert_int_eq(v.n, 0);
}
END_TEST

START_TEST(test_vocab_prune_orders_by_count_then_bytes_and_limits) {
    io_vocab v;
    ck_assert_int_eq(io_vocab_init(&v, 1), IO_OK);
    const char *w[] = {"d", "b", "a", "c", "e", "f"};
    const int64_t c[] = {5, 7, 5, 1, 7, 2};
    for (int i = 0; i < 6; i++) io_vocab_add(&v, w[i], 1, c[i]);
    ck_assert_int_eq(io_vocab_prune(&v, 2, 0), IO_OK);
    /* expected by hand: 7:b,e  5:a,d  2:f ; c dropped (count 1) */
    const char *want[] = {"<pad>", "<unk>", "<s>", "</s>", "b", "e", "a", "d", "f"};
    ck_assert_int_eq(v.n, 9);
    for (int i = 0; i < 9; i++) {
        ck_assert_str_eq(v.word[i], want[i]);
        ck_assert_int_eq(lookup(&v, want[i]), i);
    }
    ck_assert_int_eq(lookup(&v, "c"), -1);
    ck_assert_int_eq(v.count[4], 7);
    ck_assert_int_eq(io_vocab_prune(&v, 0, 6), IO_OK);
    ck_assert_int_eq(v.n, 6);
    ck_assert_str_eq(v.word[5], "e");
    ck_assert_int_eq(lookup(&v, "a"), -1);
    io_vocab_free(&v);

    io_vocab l; /* label vocabularies have no specials */
    ck_assert_int_eq(io_vocab_init(&l, 0), IO_OK);
    io_vocab_add(&l, "neg", 3, 1);
    io_vocab_add(&l, "pos", 3, 4);
    ck_assert_int_eq(io_vocab_prune(&l, 1, 0), IO_OK);
    ck_assert_str_eq(l.word[0], "pos");
    ck_assert_str_eq(l.word[1], "neg");
    io_vocab_free(&l);
}
END_TEST

START_TEST(test_vocab_pack_unpack_round_trip) {
    io_vocab v, u;
    ck_assert_int_eq(io_vocab_init(&v, 1), IO_OK);
    io_vocab_add(&v, "héllo", strlen("héllo"), 3);
    io_vocab_add(&v, "x", 1, 1234567890123LL);
    char *buf;
    size_t len;
    ck_assert_int_eq(io_vocab_pack(&v, &buf, &len), IO_OK);
    ck_assert_int_eq(io_vocab_unpack(&u, buf, len), IO_OK);
    ck_assert_int_eq(u.n, v.n);
    for (int i = 0; i < v.n; i++) {
        ck_assert_str_eq(u.word[i], v.word[i]);
        ck_assert_int_eq(u.count[i], v.count[i]);
        ck_assert_int_eq(lookup(&u, v.word[i]), i);
    }
    io_vocab_free(&u);
    ck_assert_int_lt(io_vocab_unpack(&u, buf, len - 1), 0); /* cut inside the last count */
    ck_assert_ptr_null(u.word);
    free(buf);
    io_vocab_free(&v);
}
END_TEST

/* ---- text --------------------------------------------------------------------------- */

START_TEST(test_text_count_classify_fixture) {
    io_vocab s, l;
    io_vocab_init(&s, 1);
    io_vocab_init(&l, 0);
    ck_assert_int_eq(io_text_count("data/classify.txt", IO_TEXT_CLASSIFY, &s, NULL, &l), IO_OK);
    /* counted by hand from data/classify.txt (the double space adds no token) */
    const char *w[] = {"the", "film", "was", "good", "bad", "fun"};
    const int64_t c[] = {2, 2, 2, 3, 2, 1};
    ck_assert_int_eq(s.n, IO_N_SPECIAL + 6);
    for (int i = 0; i < 6; i++) ck_assert_int_eq(s.count[lookup(&s, w[i])], c[i]);
    ck_assert_int_eq(lookup(&s, ""), -1);
    ck_assert_int_eq(l.n, 2);
    ck_assert_int_eq(l.count[lookup(&l, "pos")], 2);
    ck_assert_int_eq(l.count[lookup(&l, "neg")], 1);
    io_vocab_free(&s);
    io_vocab_free(&l);
}
END_TEST

START_TEST(test_text_count_parallel_and_plain_fixtures) {
    io_vocab s, t;
    io_vocab_init(&s, 1);
    io_vocab_init(&t, 1);
    ck_assert_int_eq(io_text_count("data/parallel.txt", IO_TEXT_PARALLEL, &s, &t, NULL), IO_OK);
    ck_assert_int_eq(s.count[lookup(&s, "b")], 3);
    ck_assert_int_eq(t.count[lookup(&t, "x")], 2);
    ck_assert_int_eq(lookup(&t, "a"), -1);
    io_vocab_free(&s);
    io_vocab_free(&t);
    io_vocab_init(&s, 1);
    ck_assert_int_eq(io_text_count("data/plain.txt", IO_TEXT_PLAIN, &s, NULL, NULL), IO_OK);
    ck_assert_int_eq(s.count[lookup(&s, "the")], 3);
    ck_assert_int_eq(s.n, IO_N_SPECIAL + 6);
    io_vocab_free(&s);
}
END_TEST

/* Expects io_text_count to fail with IO_ERR_FORMAT and a message containing "<path>:<line>". */
static void expect_bad(const char *content, int kind, int line, const char *what) {
    char *p = tpath("bad.txt");
    write_text(p, content);
    io_vocab s, t, l;
    io_vocab_init(&s, 1);
    io_vocab_init(&t, 1);
    io_vocab_init(&l, 0);
    int rc = io_text_count(p, kind, &s, &t, &l);
    ck_assert_int_eq(rc, IO_ERR_FORMAT);
    char want[600];
    snprintf(want, sizeof want, "%s:%d:", p, line);
    ck_assert_msg(strstr(io_error(), want), "message \"%s\" lacks \"%s\"", io_error(), want);
    if (what) ck_assert_msg(strstr(io_error(), what), "message \"%s\" lacks \"%s\"", io_error(), what);
    io_vocab_free(&s);
    io_vocab_free(&t);
    io_vocab_free(&l);
}

START_TEST(test_text_malformed_lines_name_the_line) {
    expect_bad("a\tb c\nb\tc\nx\ty\tz\n", IO_TEXT_CLASSIFY, 3, "TAB");
    expect_bad("a\tb c\n\tno label\n", IO_TEXT_CLASSIFY, 2, "empty label");
    expect_bad("no tab here\n", IO_TEXT_CLASSIFY, 1, NULL);
    expect_bad("a b\tc\nsrc only\n", IO_TEXT_PARALLEL, 2, NULL);
    expect_bad("fine\nbad \xff byte\n", IO_TEXT_PLAIN, 2, "UTF-8");
    expect_bad("ok\tok\nx\t\xc3\n", IO_TEXT_CLASSIFY, 2, "UTF-8");         /* cut sequence */
    expect_bad("\xc0\xaf\n", IO_TEXT_PLAIN, 1, "UTF-8");                   /* overlong */
    expect_bad("\xed\xa0\x80\n", IO_TEXT_PLAIN, 1, "UTF-8");               /* surrogate */
    expect_bad("one\ntwo\tthree\n", IO_TEXT_PLAIN, 2, "TAB");
    /* a line over 1 MiB on line 2 */
    size_t big = (1u << 20) + 10;
    char *s = malloc(big + 16);
    strcpy(s, "ok\n");
    memset(s + 3, 'a', big);
    strcpy(s + 3 + big, "\n");
    expect_bad(s, IO_TEXT_PLAIN, 2, "exceeds");
    free(s);
    /* valid multi-byte UTF-8 and CRLF endings pass */
    char *p = tpath("good.txt");
    write_text(p, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\r\n");
    io_vocab v;
    io_vocab_init(&v, 1);
    ck_assert_int_eq(io_text_count(p, IO_TEXT_PLAIN, &v, NULL, NULL), IO_OK);
    ck_assert_int_ge(lookup(&v, "\xf0\x9f\x98\x80"), 0);
    io_vocab_free(&v);
    ck_assert_int_eq(io_text_count(tpath("missing.txt"), IO_TEXT_PLAIN, NULL, NULL, NULL),
                     IO_ERR_NOTFOUND);
}
END_TEST

/* ---- shards ------------------------------------------------------------------------- */

/* Tokens of s by an independent splitter (strtok on spaces). */
static int split(char *s, char **tok, int max) {
    int n = 0;
    for (char *t = strtok(s, " "); t && n < max; t = strtok(NULL, " ")) tok[n++] = t;
    return n;
}

/* Checks the ids of one side against the text, mapping unknown words to <unk>. */
static void check_side(const io_vocab *v, const int32_t *ids, int64_t len, char *text, int eos,
                       int max_len) {
    char *tok[64];
    int n = split(text, tok, 64);
    int want = n + eos;
    if (max_len > 0 && want > max_len) want = max_len;
    ck_assert_int_eq(len, want);
    for (int i = 0; i < want - eos; i++) {
        int id = lookup(v, tok[i]);
        ck_assert_int_eq(ids[i], id < 0 ? IO_UNK : id);
    }
    if (eos) ck_assert_int_eq(ids[len - 1], IO_EOS);
}

static void shard_round_trip(const char *text, int kind, int max_len, int drop_word) {
    io_vocab s, t, l;
    io_vocab_init(&s, 1);
    io_vocab_init(&t, 1);
    io_vocab_init(&l, 0);
    ck_assert_int_eq(io_text_count(text, kind, &s, &t, &l), IO_OK);
    if (drop_word) ck_assert_int_eq(io_vocab_prune(&s, 2, 0), IO_OK); /* creates unknowns */
    char *dst = tpath("x.shard");
    ck_assert_int_eq(io_shard_encode(text, kind, &s, &t, &l, max_len, dst), IO_OK);
    ck_assert_int_eq(count_tmp_files(tdir), 0);
    io_shard sh;
    ck_assert_int_eq(io_shard_open(&sh, dst, 1), IO_OK);
    ck_assert_int_eq(sh.kind, kind);
    FILE *f = fopen(text, "rb");
    char line[4096];
    int64_t ex = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (kind == IO_TEXT_PLAIN && strspn(line, " ") == strlen(line)) continue;
        ck_assert_int_lt(ex, sh.n);
        char *tab = strchr(line, '\t');
        const int32_t *ids = sh.ids + sh.off[ex];
        int64_t len = sh.off[ex + 1] - sh.off[ex];
        if (kind == IO_TEXT_PLAIN) {
            check_side(&s, ids, len, line, 1, max_len);
        } else if (kind == IO_TEXT_CLASSIFY) {
            *tab = '\0';
            ck_assert_int_eq(sh.label[ex], lookup(&l, line));
            check_side(&s, ids, len, tab + 1, 0, max_len);
        } else {
            *tab = '\0';
            check_side(&s, ids, len, line, 0, max_len);
            check_side(&t, sh.ids_tgt + sh.off_tgt[ex], sh.off_tgt[ex + 1] - sh.off_tgt[ex],
                       tab + 1, 1, max_len);
        }
        ex++;
    }
    fclose(f);
    ck_assert_int_eq(ex, sh.n);
    ck_assert_int_eq(sh.off[sh.n], sh.n_tok);
    io_shard_close(&sh);
    io_shard_close(&sh);
    io_vocab_free(&s);
    io_vocab_free(&t);
    io_vocab_free(&l);
}

START_TEST(test_shard_round_trip_all_kinds) {
    shard_round_trip("data/classify.txt", IO_TEXT_CLASSIFY, 0, 0);
    shard_round_trip("data/classify.txt", IO_TEXT_CLASSIFY, 2, 1);
    shard_round_trip("data/parallel.txt", IO_TEXT_PARALLEL, 0, 0);
    shard_round_trip("data/parallel.txt", IO_TEXT_PARALLEL, 2, 1);
    shard_round_trip("data/plain.txt", IO_TEXT_PLAIN, 0, 0);
    shard_round_trip("data/plain.txt", IO_TEXT_PLAIN, 3, 1);
}
END_TEST

START_TEST(test_shard_larger_corpus_crosses_buffer_boundaries) {
    /* ~40k tokens: every section buffer (64 KiB) is flushed several times */
    char *p = tpath("big.txt");
    FILE *f = fopen(p, "w");
    for (int i = 0; i < 4000; i++) {
        fprintf(f, "w%d", i % 97);
        for (int j = 0; j < i % 19; j++) fprintf(f, " w%d", (i * 7 + j) % 131);
        fprintf(f, "\tt%d t%d\n", i % 5, i % 11);
    }
    fclose(f);
    shard_round_trip(p, IO_TEXT_PARALLEL, 0, 1);
}
END_TEST

START_TEST(test_shard_damage_is_detected) {
    io_vocab s, l;
    io_vocab_init(&s, 1);
    io_vocab_init(&l, 0);
    ck_assert_int_eq(io_text_count("data/classify.txt", IO_TEXT_CLASSIFY, &s, NULL, &l), IO_OK);
    char *dst = tpath("c.shard");
    ck_assert_int_eq(io_shard_encode("data/classify.txt", IO_TEXT_CLASSIFY, &s, NULL, &l, 0, dst),
                     IO_OK);
    size_t n;
    char *b = slurp(dst, &n);
    io_shard sh;
    /* truncated by 4 bytes */
    char *p = tpath("trunc.shard");
    FILE *f = fopen(p, "wb");
    fwrite(b, 1, n - 4, f);
    fclose(f);
    ck_assert_int_eq(io_shard_open(&sh, p, 0), IO_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(io_error(), "truncated"));
    ck_assert_ptr_null(sh.map);
    /* header only */
    f = fopen(p, "wb");
    fwrite(b, 1, 30, f);
    fclose(f);
    ck_assert_int_eq(io_shard_open(&sh, p, 0), IO_ERR_FORMAT);
    /* one flipped bit in a token id: only the checksum can see it */
    b[n - 20] ^= 0x40;
    p = tpath("flip.shard");
    f = fopen(p, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    ck_assert_int_eq(io_shard_open(&sh, p, 1), IO_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(io_error(), "checksum"));
    b[n - 20] ^= 0x40;
    b[0] = 'X'; /* bad magic */
    f = fopen(p, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    ck_assert_int_eq(io_shard_open(&sh, p, 0), IO_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(io_error(), "magic"));
    free(b);
    /* unknown label */
    write_text(tpath("unk.txt"), "pos\ta\nmaybe\tb\n");
    ck_assert_int_eq(io_shard_encode(tpath("unk.txt"), IO_TEXT_CLASSIFY, &s, NULL, &l, 0,
                                     tpath("u.shard")), IO_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(io_error(), "unk.txt:2"));
    ck_assert_int_eq(access(tpath("u.shard"), F_OK), -1);
    ck_assert_int_eq(count_tmp_files(tdir), 0);
    io_vocab_free(&s);
    io_vocab_free(&l);
}
END_TEST

/* ---- checkpoints -------------------------------------------------------------------- */

enum { NF = 31 };
static const io_tensor model_tensors[] = {
    {"embed/weight", 0, 2, {5, 3}},
    {"out/weight", 15, 2, {4, 3}},
    {"out/bias", 27, 1, {4}},
};
static const char *const slot_names[] = {"m", "v"};
static const char *const vocab_names[] = {"src", "labels"};

typedef struct fixture {
    float params[NF], m[NF], v[NF];
    float *slots[2];
    char *keys[3], *vals[3];
    io_vocab vocabs[2];
    io_ckpt ck;
} fixture;

static void fixture_init(fixture *x, float seed) {
    memset(x, 0, sizeof *x);
    for (int i = 0; i < NF; i++) {
        x->params[i] = seed + 0.25f * (float)i - 3.0f;
        x->m[i] = 1e-3f * (float)i;
        x->v[i] = 1e-6f * (float)(i * i);
    }
    x->slots[0] = x->m;
    x->slots[1] = x->v;
    x->keys[0] = "lr"; x->vals[0] = "0.001";
    x->keys[1] = "model"; x->vals[1] = "cnn";
    x->keys[2] = "dim"; x->vals[2] = "3";
    io_vocab_init(&x->vocabs[0], 1);
    io_vocab_add(&x->vocabs[0], "hello", 5, 7);
    io_vocab_add(&x->vocabs[0], "w\xc3\xb6rld", 6, 2);
    io_vocab_init(&x->vocabs[1], 0);
    io_vocab_add(&x->vocabs[1], "pos", 3, 10);
    io_vocab_add(&x->vocabs[1], "neg", 3, 9);
    io_ckpt *ck = &x->ck;
    ck->model = "cnn";
    ck->n_tensors = 3;
    ck->tensors = model_tensors;
    ck->n_floats = NF;
    ck->params = x->params;
    ck->n_slots = 2;
    ck->slot_names = slot_names;
    ck->slots = x->slots;
    ck->n_config = 3;
    ck->config_keys = x->keys;
    ck->config_vals = x->vals;
    ck->train = (io_train_state){.step = 20, .epoch = 2, .tokens_seen = 123456789012LL,
                                 .examples_seen = 5000, .world_size = 4, .data_pos = 777,
                                 .best_metric = 0.123456789012345, .best_step = 10,
                                 .bad_evals = 1};
    ck->n_vocabs = 2;
    ck->vocab_names = vocab_names;
    ck->vocabs = x->vocabs;
    ck->metrics = "{\"step\":10,\"loss\":2.5}\n{\"step\":20,\"loss\":1.25}\n";
}

static void fixture_free(fixture *x) {
    io_vocab_free(&x->vocabs[0]);
    io_vocab_free(&x->vocabs[1]);
}

/* A reader's view: same tensors, empty buffers. */
typedef struct reader {
    float params[NF], m[NF], v[NF];
    float *slots[2];
    io_vocab vocabs[2];
    io_ckpt ck;
} reader;

static void reader_init(reader *r) {
    memset(r, 0, sizeof *r);
    r->slots[0] = r->m;
    r->slots[1] = r->v;
    r->ck = (io_ckpt){.model = "cnn", .n_tensors = 3, .tensors = model_tensors, .n_floats = NF,
                      .params = r->params, .n_slots = 2, .slot_names = slot_names,
                      .slots = r->slots, .n_vocabs = 2, .vocab_names = vocab_names,
                      .vocabs = r->vocabs};
}

START_TEST(test_ckpt_write_read_round_trip) {
    fixture x;
    fixture_init(&x, 1.0f);
    char *p = tpath("ckpt_00000020.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    ck_assert_int_eq(count_tmp_files(tdir), 0);
    reader r;
    reader_init(&r);
    ck_assert_msg(io_ckpt_read(p, &r.ck) == IO_OK, "%s", io_error());
    ck_assert_mem_eq(r.params, x.params, sizeof r.params);
    ck_assert_mem_eq(r.m, x.m, sizeof r.m);
    ck_assert_mem_eq(r.v, x.v, sizeof r.v);
    ck_assert_int_eq(r.ck.n_config, 3);
    for (int i = 0; i < 3; i++) {  /* order as given */
        ck_assert_str_eq(r.ck.config_keys[i], x.keys[i]);
        ck_assert_str_eq(r.ck.config_vals[i], x.vals[i]);
    }
    ck_assert_mem_eq(&r.ck.train, &x.ck.train, sizeof r.ck.train);
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(r.vocabs[k].n, x.vocabs[k].n);
        for (int i = 0; i < x.vocabs[k].n; i++) {
            ck_assert_str_eq(r.vocabs[k].word[i], x.vocabs[k].word[i]);
            ck_assert_int_eq(r.vocabs[k].count[i], x.vocabs[k].count[i]);
            ck_assert_int_eq(lookup(&r.vocabs[k], x.vocabs[k].word[i]), i);
        }
    }
    ck_assert_str_eq(r.ck.metrics_read, x.ck.metrics);
    io_ckpt_release(&r.ck);
    io_ckpt_release(&r.ck);
    io_vocab_free(&r.vocabs[0]);
    io_vocab_free(&r.vocabs[1]);

    /* peek and info */
    char *model, **keys, **vals;
    int nc;
    ck_assert_int_eq(io_ckpt_peek(p, &model, &nc, &keys, &vals), IO_OK);
    ck_assert_str_eq(model, "cnn");
    ck_assert_int_eq(nc, 3);
    ck_assert_str_eq(keys[2], "dim");
    ck_assert_str_eq(vals[2], "3");
    free(model);
    for (int i = 0; i < nc; i++) { free(keys[i]); free(vals[i]); }
    free(keys);
    free(vals);
    char *ip = tpath("info.txt");
    FILE *f = fopen(ip, "w");
    ck_assert_int_eq(io_ckpt_info(p, f), IO_OK);
    fclose(f);
    size_t n;
    char *info = slurp(ip, &n);
    ck_assert_ptr_nonnull(strstr(info, "out/weight"));
    ck_assert_ptr_nonnull(strstr(info, "(4,3)"));
    ck_assert_ptr_nonnull(strstr(info, "31 parameters"));
    ck_assert_ptr_nonnull(strstr(info, "124 bytes"));
    ck_assert_ptr_nonnull(strstr(info, "lr = 0.001"));
    ck_assert_ptr_nonnull(strstr(info, "step: 20"));
    free(info);
    fixture_free(&x);
}
END_TEST

START_TEST(test_ckpt_empty_metrics_and_no_vocab) {
    fixture x;
    fixture_init(&x, 2.0f);
    x.ck.metrics = NULL;
    x.ck.n_vocabs = 0;
    char *p = tpath("a.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    reader r;
    reader_init(&r);
    r.ck.n_vocabs = 0;
    ck_assert_int_eq(io_ckpt_read(p, &r.ck), IO_OK);
    ck_assert_ptr_null(r.ck.metrics_read);
    ck_assert_mem_eq(r.params, x.params, sizeof r.params);
    io_ckpt_release(&r.ck);
    /* asking for a vocabulary the file lacks is an error, and leaves nothing allocated */
    reader_init(&r);
    ck_assert_int_eq(io_ckpt_read(p, &r.ck), IO_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(io_error(), "/vocab/src"));
    ck_assert_ptr_null(r.ck.config_keys);
    fixture_free(&x);
}
END_TEST

/* Writes x with a modified tensor table, reads with the model's, expects rc and msg. */
static void expect_refused(const io_tensor *tt, int nt, size_t nf, int rc, const char *msg) {
    fixture x;
    fixture_init(&x, 0.5f);
    float *params = calloc(nf, sizeof *params), *m = calloc(nf, 4), *v = calloc(nf, 4);
    float *slots[2] = {m, v};
    x.ck.tensors = tt;
    x.ck.n_tensors = nt;
    x.ck.n_floats = nf;
    x.ck.params = params;
    x.ck.slots = slots;
    char *p = tpath("ckpt_00000020.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    reader r;
    reader_init(&r);
    int got = io_ckpt_read(p, &r.ck);
    ck_assert_int_eq(got, rc);
    ck_assert_msg(strstr(io_error(), msg), "message \"%s\" lacks \"%s\"", io_error(), msg);
    ck_assert_ptr_null(r.ck.config_keys);
    free(params);
    free(m);
    free(v);
    fixture_free(&x);
}

START_TEST(test_ckpt_refuses_disagreeing_checkpoints) {
    const io_tensor wrong_shape[] = {
        {"embed/weight", 0, 2, {5, 3}}, {"out/weight", 15, 2, {6, 3}}, {"out/bias", 33, 1, {4}}};
    expect_refused(wrong_shape, 3, 37, IO_ERR_SHAPE,
                   "ckpt_00000020.h5: /params/out/weight has shape (6,3), model expects (4,3)");
    const io_tensor wrong_rank[] = {
        {"embed/weight", 0, 1, {15}}, {"out/weight", 15, 2, {4, 3}}, {"out/bias", 27, 1, {4}}};
    expect_refused(wrong_rank, 3, NF, IO_ERR_SHAPE,
                   "/params/embed/weight has shape (15), model expects (5,3)");
    const io_tensor missing[] = {{"embed/weight", 0, 2, {5, 3}}, {"out/weight", 15, 2, {4, 3}}};
    expect_refused(missing, 2, 27, IO_ERR_SHAPE, "/params/out/bias is missing");
    const io_tensor extra[] = {{"embed/weight", 0, 2, {5, 3}}, {"out/weight", 15, 2, {4, 3}},
                               {"out/bias", 27, 1, {4}}, {"out/extra/w", 31, 2, {1, 2}}};
    expect_refused(extra, 4, 33, IO_ERR_SHAPE, "unexpected parameter /params/out/extra/w");

    /* wrong model name, missing optimizer slot */
    fixture x;
    fixture_init(&x, 0.5f);
    char *p = tpath("b.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    reader r;
    reader_init(&r);
    r.ck.model = "gpt";
    ck_assert_int_eq(io_ckpt_read(p, &r.ck), IO_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(io_error(), "model \"cnn\", expected \"gpt\""));
    reader_init(&r);
    const char *const three[] = {"m", "v", "w"};
    float w[NF];
    float *slots[3] = {r.m, r.v, w};
    r.ck.n_slots = 3;
    r.ck.slot_names = three;
    r.ck.slots = slots;
    ck_assert_int_eq(io_ckpt_read(p, &r.ck), IO_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(io_error(), "/optim/w/embed/weight is missing"));
    fixture_free(&x);
}
END_TEST

START_TEST(test_ckpt_refuses_wrong_version_and_foreign_files) {
    ck_assert_msg(have_h5py(), "/usr/bin/python3 with h5py and numpy is required "
                               "(apt-get install python3-h5py)");
    fixture x;
    fixture_init(&x, 0.5f);
    char *p = tpath("c.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import h5py, numpy; f = h5py.File('%s', 'r+'); "
             "f.attrs['format_version'] = numpy.int64(2); f.close(); "
             "g = h5py.File('%s/foreign.h5', 'w'); g['x'] = numpy.zeros(3); g.close()\"",
             p, tdir);
    ck_assert_int_eq(system(cmd), 0);
    reader r;
    reader_init(&r);
    ck_assert_int_eq(io_ckpt_read(p, &r.ck), IO_ERR_VERSION);
    ck_assert_ptr_nonnull(strstr(io_error(), "format_version 2"));
    ck_assert_int_eq(io_ckpt_read(tpath("foreign.h5"), &r.ck), IO_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(io_error(), "not a lockstep checkpoint"));
    ck_assert_int_eq(io_ckpt_read(tpath("nothing.h5"), &r.ck), IO_ERR_NOTFOUND);
    fixture_free(&x);
}
END_TEST

START_TEST(test_ckpt_truncated_file_fails_cleanly) {
    fixture x;
    fixture_init(&x, 0.5f);
    char *p = tpath("d.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    size_t n;
    char *b = slurp(p, &n);
    size_t cuts[] = {n / 2, n - 100, 100, 0};
    for (int i = 0; i < 4; i++) {
        char *q = tpath("ckpt_00000001.h5");
        FILE *f = fopen(q, "wb");
        fwrite(b, 1, cuts[i], f);
        fclose(f);
        reader r;
        reader_init(&r);
        int rc = io_ckpt_read(q, &r.ck);
        ck_assert_int_lt(rc, 0);
        ck_assert_str_ne(io_error(), "");
        ck_assert_ptr_null(r.ck.config_keys);
        char out[512];
        ck_assert_int_eq(io_ckpt_latest(tdir, out, sizeof out), IO_ERR_NOTFOUND);
    }
    free(b);
    fixture_free(&x);
}
END_TEST

START_TEST(test_ckpt_failed_write_keeps_old_file_and_leaves_no_temp) {
    fixture x;
    fixture_init(&x, 0.5f);
    char *p = tpath("ckpt_00000020.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    size_t n0, n1;
    char *before = slurp(p, &n0);
    /* fails half way: the second tensor has the first one's name */
    const io_tensor dup[] = {{"embed/weight", 0, 2, {5, 3}}, {"embed/weight", 15, 2, {4, 3}}};
    fixture y;
    fixture_init(&y, 9.0f);
    y.ck.tensors = dup;
    y.ck.n_tensors = 2;
    ck_assert_int_eq(io_ckpt_write(p, &y.ck), IO_ERR_WRITE);
    ck_assert_ptr_nonnull(strstr(io_error(), "/params/embed/weight"));
    char *after = slurp(p, &n1);
    ck_assert_uint_eq(n0, n1);
    ck_assert_mem_eq(before, after, n0);
    ck_assert_int_eq(count_tmp_files(tdir), 0);
    free(before);
    free(after);
    /* a directory that does not exist */
    ck_assert_int_eq(io_ckpt_write(tpath("no/such/dir/ckpt.h5"), &x.ck), IO_ERR_OPEN);
    /* an unwritable directory (root ignores permissions, so only checked for users) */
    if (geteuid() != 0) {
        char *ro = tpath("ro");
        mkdir(ro, 0755);
        char q[600];
        snprintf(q, sizeof q, "%s/ckpt_00000020.h5", ro);
        ck_assert_int_eq(io_ckpt_write(q, &x.ck), IO_OK);
        chmod(ro, 0555);
        ck_assert_int_lt(io_ckpt_write(q, &y.ck), 0);
        chmod(ro, 0755);
        reader r;
        reader_init(&r);
        ck_assert_int_eq(io_ckpt_read(q, &r.ck), IO_OK);
        ck_assert_mem_eq(r.params, x.params, sizeof r.params);
        io_ckpt_release(&r.ck);
        io_vocab_free(&r.vocabs[0]);
        io_vocab_free(&r.vocabs[1]);
        ck_assert_int_eq(count_tmp_files(ro), 0);
    }
    fixture_free(&x);
    fixture_free(&y);
}
END_TEST

/* A disk error in the middle of HDF5's writes (here the file size limit: every write past
 * it fails with EFBIG, as writes on a full disk fail with ENOSPC), at every stage of the
 * file: one error naming the system's reason, the earlier file unchanged, no temporary
 * file, no HDF5 file left open, and the next write with room again succeeds. */
START_TEST(test_ckpt_disk_error_inside_hdf5_is_clean) {
    fixture x, y;
    fixture_init(&x, 0.5f);
    fixture_init(&y, 7.0f);
    char *p = tpath("ckpt_00000020.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    size_t n0, n1;
    char *before = slurp(p, &n0);
    struct rlimit old;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_IGN);
    int failed = 0;
    for (size_t lim = 256; lim < n0; lim += n0 / 13) {
        /* no ck_assert while the limit holds: Check's own messages go to a file */
        struct rlimit r = {.rlim_cur = lim, .rlim_max = old.rlim_max};
        int set = setrlimit(RLIMIT_FSIZE, &r);
        int rc = io_ckpt_write(p, &y.ck);
        int reset = setrlimit(RLIMIT_FSIZE, &old);
        ck_assert(set == 0 && reset == 0);
        ck_assert_msg(rc == IO_ERR_WRITE, "limit %zu of %zu: rc %d", lim, n0, rc);
        ck_assert_msg(strstr(io_error(), "File too large") && strstr(io_error(), ".tmp."),
                      "limit %zu: %s", lim, io_error());
        ck_assert_msg(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "limit %zu: %s", lim, io_error());
        ck_assert_int_eq(count_tmp_files(tdir), 0);
        char *after = slurp(p, &n1);
        ck_assert_uint_eq(n0, n1);
        ck_assert_mem_eq(before, after, n0);
        free(after);
        failed++;
    }
    ck_assert_int_ge(failed, 10);
    signal(SIGXFSZ, SIG_DFL);
    ck_assert_int_eq(io_ckpt_write(p, &y.ck), IO_OK);
    reader r;
    reader_init(&r);
    ck_assert_msg(io_ckpt_read(p, &r.ck) == IO_OK, "%s", io_error());
    ck_assert_mem_eq(r.params, y.params, sizeof r.params);
    io_ckpt_release(&r.ck);
    io_vocab_free(&r.vocabs[0]);
    io_vocab_free(&r.vocabs[1]);
    free(before);
    fixture_free(&x);
    fixture_free(&y);
}
END_TEST

START_TEST(test_ckpt_latest_and_prune) {
    char out[512];
    ck_assert_int_eq(io_ckpt_latest(tdir, out, sizeof out), IO_ERR_NOTFOUND);
    ck_assert_int_eq(io_ckpt_latest(tpath("nodir"), out, sizeof out), IO_ERR_NOTFOUND);
    fixture x;
    fixture_init(&x, 0.5f);
    const int steps[] = {30, 5, 100, 20};
    char name[64];
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "ckpt_%08d.h5", steps[i]);
        x.ck.train.step = steps[i];
        ck_assert_int_eq(io_ckpt_write(tpath(name), &x.ck), IO_OK);
    }
    ck_assert_int_eq(io_ckpt_write(tpath("best.h5"), &x.ck), IO_OK);
    ck_assert_int_eq(io_ckpt_latest(tdir, out, sizeof out), IO_OK);
    ck_assert_str_eq(out, tpath("ckpt_00000100.h5"));
    /* a newer but broken file and a temp file are skipped */
    write_text(tpath("ckpt_00000200.h5"), "not hdf5 at all");
    write_text(tpath("ckpt_00000300.h5.tmp.1234"), "partial");
    ck_assert_int_eq(io_ckpt_latest(tdir, out, sizeof out), IO_OK);
    ck_assert_str_eq(out, tpath("ckpt_00000100.h5"));
    ck_assert_int_eq(io_ckpt_latest(tdir, out, 8), IO_ERR_NOMEM); /* too small a buffer */
    unlink(tpath("ckpt_00000200.h5"));
    ck_assert_int_eq(io_ckpt_prune(tdir, 0), IO_OK);  /* keeps all */
    ck_assert_int_eq(access(tpath("ckpt_00000005.h5"), F_OK), 0);
    ck_assert_int_eq(io_ckpt_prune(tdir, 2), IO_OK);
    ck_assert_int_eq(access(tpath("ckpt_00000100.h5"), F_OK), 0);
    ck_assert_int_eq(access(tpath("ckpt_00000030.h5"), F_OK), 0);
    ck_assert_int_eq(access(tpath("ckpt_00000020.h5"), F_OK), -1);
    ck_assert_int_eq(access(tpath("ckpt_00000005.h5"), F_OK), -1);
    ck_assert_int_eq(access(tpath("best.h5"), F_OK), 0);
    ck_assert_int_eq(access(tpath("ckpt_00000300.h5.tmp.1234"), F_OK), 0);
    fixture_free(&x);
}
END_TEST

START_TEST(test_ckpt_is_readable_by_h5py) {
    ck_assert_msg(have_h5py(), "/usr/bin/python3 with h5py and numpy is required "
                               "(apt-get install python3-h5py)");
    fixture x;
    fixture_init(&x, 0.5f);
    char *p = tpath("ckpt_00000020.h5");
    ck_assert_int_eq(io_ckpt_write(p, &x.ck), IO_OK);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 check_ckpt_h5py.py '%s' params/embed/weight:5,3 "
             "params/out/weight:4,3 params/out/bias:4 optim/m/out/weight:4,3 "
             "optim/v/out/bias:4", p);
    ck_assert_int_eq(system(cmd), 0);
    /* and the checker itself fails on a wrong expectation */
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 check_ckpt_h5py.py '%s' params/out/weight:3,4 2>/dev/null", p);
    ck_assert_int_ne(system(cmd), 0);
    /* values as h5py sees them: out/bias = params[27..31) */
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import h5py, numpy, sys; f = h5py.File('%s', 'r'); "
             "b = f['params/out/bias'][()]; "
             "sys.exit(0 if numpy.allclose(b, 0.5 + 0.25 * numpy.arange(27, 31) - 3.0, atol=0) "
             "and f['vocab/labels'].asstr()[0] == 'pos' and int(f['train'].attrs['step']) == 20 "
             "else 1)\"", p);
    ck_assert_int_eq(system(cmd), 0);
    fixture_free(&x);
}
END_TEST

/* ---- dense data, log, util ---------------------------------------------------------- */

START_TEST(test_dense_reads_hyperslabs) {
    ck_assert_msg(have_h5py(), "/usr/bin/python3 with h5py and numpy is required");
    char *p = tpath("dense.h5");
    char cmd[1024];
    /* x[i, j] = 100 i + j, y[i] = i % 7 (int64 on disk, read as int32) */
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import h5py, numpy as np; f = h5py.File('%s', 'w'); "
             "f['data/x'] = (100 * np.arange(10)[:, None] + np.arange(3)[None, :]).astype('f4'); "
             "f['data/y'] = (np.arange(10) %% 7).astype('i8'); f.close()\"", p);
    ck_assert_int_eq(system(cmd), 0);
    int64_t rows, cols;
    ck_assert_int_eq(io_dense_info(p, "/data/x", &rows, &cols), IO_OK);
    ck_assert_int_eq(rows, 10);
    ck_assert_int_eq(cols, 3);
    float out[4 * 3];
    ck_assert_int_eq(io_dense_read_rows(p, "/data/x", 6, 4, out), IO_OK);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) ck_assert_float_eq(out[i * 3 + j], 100.0f * (6 + i) + j);
    int32_t y[3];
    ck_assert_int_eq(io_dense_read_labels(p, "/data/y", 5, 3, y), IO_OK);
    ck_assert_int_eq(y[0], 5);
    ck_assert_int_eq(y[1], 6);
    ck_assert_int_eq(y[2], 0);
    ck_assert_int_eq(io_dense_read_rows(p, "/data/x", 8, 3, out), IO_ERR_SHAPE);
    ck_assert_int_eq(io_dense_read_rows(p, "/data/y", 0, 1, out), IO_ERR_SHAPE);
    ck_assert_int_eq(io_dense_info(p, "/data/z", &rows, &cols), IO_ERR_NOTFOUND);
    ck_assert_int_eq(io_dense_info(p, "/nope/z", &rows, &cols), IO_ERR_NOTFOUND);
}
END_TEST

START_TEST(test_log_and_util) {
    char *d = tpath("run/a/b");
    ck_assert_int_eq(io_mkdirs(d), IO_OK);
    ck_assert_int_eq(io_mkdirs(d), IO_OK);
    io_log l;
    ck_assert_int_eq(io_log_open(&l, d, 0), IO_OK);
    ck_assert_int_eq(io_log_write(&l, "{\"a\":1}"), IO_OK);
    /* visible before close: flushed per line */
    size_t n;
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.jsonl", d);
    char *s = slurp(path, &n);
    ck_assert_str_eq(s, "{\"a\":1}\n");
    free(s);
    io_log_close(&l);
    io_log_close(&l);
    ck_assert_int_eq(io_log_open(&l, d, 1), IO_OK);
    io_log_write(&l, "{\"b\":2}");
    io_log_close(&l);
    s = slurp(path, &n);
    ck_assert_str_eq(s, "{\"a\":1}\n{\"b\":2}\n");
    free(s);
    ck_assert_int_eq(io_write_file_atomic(tpath("f.txt"), "abc", 3), IO_OK);
    s = slurp(tpath("f.txt"), &n);
    ck_assert_str_eq(s, "abc");
    free(s);
    ck_assert_int_eq(io_write_file_atomic(tpath("no/dir/f.txt"), "abc", 3), IO_ERR_OPEN);
    ck_assert_int_eq(count_tmp_files(tdir), 0);
    write_text(tpath("file"), "x");
    ck_assert_int_lt(io_mkdirs(tpath("file/sub")), 0);
    ck_assert_str_eq(io_status_str(IO_ERR_SHAPE), "shape mismatch");
    ck_assert_int_eq(io_hdf5_version()[0], '1');
}
END_TEST

static Suite *io_suite(void) {
    Suite *s = suite_create("io");
    TCase *t = tcase_create("vocab");
    tcase_add_test(t, test_vocab_specials_come_first_and_lookup_round_trips);
    tcase_add_test(t, test_vocab_prune_orders_by_count_then_bytes_and_limits);
    tcase_add_test(t, test_vocab_pack_unpack_round_trip);
    suite_add_tcase(s, t);
    t = tcase_create("text");
    tcase_add_checked_fixture(t, setup_tmp, teardown_tmp);
    tcase_add_test(t, test_text_count_classify_fixture);
    tcase_add_test(t, test_text_count_parallel_and_plain_fixtures);
    tcase_add_test(t, test_text_malformed_lines_name_the_line);
    suite_add_tcase(s, t);
    t = tcase_create("shard");
    tcase_add_checked_fixture(t, setup_tmp, teardown_tmp);
    tcase_add_test(t, test_shard_round_trip_all_kinds);
    tcase_add_test(t, test_shard_larger_corpus_crosses_buffer_boundaries);
    tcase_add_test(t, test_shard_damage_is_detected);
    suite_add_tcase(s, t);
    t = tcase_create("ckpt");
    tcase_add_checked_fixture(t, setup_tmp, teardown_tmp);
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_ckpt_write_read_round_trip);
    tcase_add_test(t, test_ckpt_empty_metrics_and_no_vocab);
    tcase_add_test(t, test_ckpt_refuses_disagreeing_checkpoints);
    tcase_add_test(t, test_ckpt_refuses_wrong_version_and_foreign_files);
    tcase_add_test(t, test_ckpt_truncated_file_fails_cleanly);
    tcase_add_test(t, test_ckpt_failed_write_keeps_old_file_and_leaves_no_temp);
    tcase_add_test(t, test_ckpt_disk_error_inside_hdf5_is_clean);
    tcase_add_test(t, test_ckpt_latest_and_prune);
    tcase_add_test(t, test_ckpt_is_readable_by_h5py);
    suite_add_tcase(s, t);
    t = tcase_create("dense_log_util");
    tcase_add_checked_fixture(t, setup_tmp, teardown_tmp);
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_dense_reads_hyperslabs);
    tcase_add_test(t, test_log_and_util);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
