/* test_ckpt_checksum.c - io/ckpt.c checksums: every dataset and the root carry one; a byte
 * flipped inside a dataset's data (found with H5Dget_offset), a changed vocabulary word,
 * an altered /train or /config attribute and a truncated file are refused with a message
 * naming what is damaged, before any buffer is written; io_ckpt_latest skips damaged
 * checkpoints for older ones with a warning on stderr; checkpoints without checksums
 * (written before they existed) still read; and a sweep of single-byte flips over a whole
 * file never yields a successful read of different contents.
 * The checksum algorithm (io/hash.c, "mulrot4x64") against values from an independent
 * Python implementation and a plain byte-wise C one here; its result does not depend on
 * how a buffer is split or aligned. Checkpoints written with the earlier "fnv1a64" (the
 * fixture tests/data/ckpt_fnv1a64.h5, written by the code before the change, see
 * tests/data/ckpt_fnv1a64.gen.c) still verify and read, and damage in them is still found.
 *
 * Scratch files go to a fresh mkdtemp directory per test. Uses the HDF5 C API directly to
 * locate and alter datasets. */
#define _GNU_SOURCE /* memmem */
#include "io/io.h"
#include "io/io_internal.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

static char tdir[256];

static void setup_tmp(void) {
    snprintf(tdir, sizeof tdir, "/tmp/test_ckck_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tdir));
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
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

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void spit(const char *path, const char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* No HDF5 object may stay open after an io call (else HDF5 keeps the file cached). */
static void assert_no_open_hdf5(void) {
    ck_assert_int_eq(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
}

/* mulrot4x64 as specified at the top of io/hash.c, byte by byte, written again here. */
static uint64_t ref_mulrot4x64(const void *data, size_t n) {
    const unsigned char *b = data;
    const uint64_t K = 0x9e3779b97f4a7c15ULL, F = 0xcbf29ce484222325ULL, P = 0x100000001b3ULL;
    uint64_t lane[4];
    for (int j = 0; j < 4; j++) lane[j] = F + (uint64_t)j * K;
    size_t whole = n / 32 * 32;
    for (size_t k = 0; k < whole; k += 32)
        for (int j = 0; j < 4; j++) {
            uint64_t w = 0;
            for (int i = 7; i >= 0; i--) w = (w << 8) | b[k + 8 * (size_t)j + (size_t)i];
            uint64_t x = (lane[j] ^ w) * K;
            lane[j] = (x << 29) | (x >> 35);
        }
    uint64_t h = F;
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < 8; i++) h = (h ^ ((lane[j] >> (8 * i)) & 0xff)) * P;
    for (size_t i = whole; i < n; i++) h = (h ^ b[i]) * P;
    for (int i = 0; i < 8; i++) h = (h ^ (((uint64_t)n >> (8 * i)) & 0xff)) * P;
    return h;
}

/* ---- a small checkpoint ---------------------------------------------------------------- */

enum { NF = 46 };
static const io_tensor tensors[] = {
    {"embed/weight", 0, 2, {6, 4}},
    {"out/weight", 24, 2, {4, 5}},
    {"out/bias", 44, 1, {2}},
};
static const char *const slot_names[] = {"m", "v"};
static const char *const vocab_names[] = {"src", "labels"};

typedef struct ckbuf {
    float params[NF], m[NF], v[NF];
    float *slots[2];
    char *keys[2], *vals[2];
    io_vocab vocabs[2];
    io_ckpt ck;
} ckbuf;

/* A writer's checkpoint (fill 1) or a reader's empty buffers (fill 0). */
static void ckbuf_init(ckbuf *x, int fill, int64_t step) {
    memset(x, 0, sizeof *x);
    x->slots[0] = x->m;
    x->slots[1] = x->v;
    x->ck = (io_ckpt){.model = "bow", .n_tensors = 3, .tensors = tensors, .n_floats = NF,
                      .params = x->params, .n_slots = 2, .slot_names = slot_names,
                      .slots = x->slots, .n_vocabs = 2, .vocab_names = vocab_names,
                      .vocabs = x->vocabs};
    if (!fill) return;
    for (int i = 0; i < NF; i++) {
        x->params[i] = 0.125f * (float)(i - 20) + (float)step;
        x->m[i] = 1e-2f * (float)i;
        x->v[i] = 1e-4f * (float)(i + 1);
    }
    x->keys[0] = "lr"; x->vals[0] = "0.01";
    x->keys[1] = "dim"; x->vals[1] = "4";
    x->ck.n_config = 2;
    x->ck.config_keys = x->keys;
    x->ck.config_vals = x->vals;
    x->ck.train = (io_train_state){.step = step, .epoch = 1, .tokens_seen = 999,
                                   .examples_seen = 50, .world_size = 2, .data_pos = 7,
                                   .best_metric = 0.5, .best_step = step, .bad_evals = 0};
    io_vocab_init(&x->vocabs[0], 1);
    io_vocab_add(&x->vocabs[0], "alpha", 5, 9);
    io_vocab_add(&x->vocabs[0], "w\xc3\xb6rtchen", 9, 4);
    io_vocab_init(&x->vocabs[1], 0);
    io_vocab_add(&x->vocabs[1], "yes", 3, 3);
    io_vocab_add(&x->vocabs[1], "no", 2, 2);
    x->ck.metrics = "{\"step\":1,\"loss\":2}\n";
}

static void ckbuf_free(ckbuf *x) {
    io_vocab_free(&x->vocabs[0]);
    io_vocab_free(&x->vocabs[1]);
}

static void write_ckpt(const char *path, int64_t step) {
    ckbuf x;
    ckbuf_init(&x, 1, step);
    ck_assert_msg(io_ckpt_write(path, &x.ck) == IO_OK, "%s", io_error());
    ckbuf_free(&x);
}

/* 1 when reading path succeeds with exactly what write_ckpt(step) wrote. */
static int reads_back_equal(const char *path, int64_t step, int *rc_out) {
    ckbuf w, r;
    ckbuf_init(&w, 1, step);
    ckbuf_init(&r, 0, 0);
    int rc = io_ckpt_read(path, &r.ck);
    if (rc_out) *rc_out = rc;
    int same = 0;
    if (rc == IO_OK) {
        same = memcmp(w.params, r.params, sizeof w.params) == 0 &&
               memcmp(w.m, r.m, sizeof w.m) == 0 && memcmp(w.v, r.v, sizeof w.v) == 0 &&
               memcmp(&w.ck.train, &r.ck.train, sizeof w.ck.train) == 0 &&
               r.ck.n_config == 2 && strcmp(r.ck.config_vals[0], "0.01") == 0 &&
               strcmp(r.ck.config_vals[1], "4") == 0 && r.vocabs[0].n == w.vocabs[0].n &&
               r.vocabs[1].n == w.vocabs[1].n && r.ck.metrics_read &&
               strcmp(r.ck.metrics_read, w.ck.metrics) == 0;
        for (int k = 0; same && k < 2; k++)
            for (int i = 0; same && i < w.vocabs[k].n; i++)
                same = strcmp(w.vocabs[k].word[i], r.vocabs[k].word[i]) == 0 &&
                       w.vocabs[k].count[i] == r.vocabs[k].count[i];
        io_ckpt_release(&r.ck);
    } else {
        /* refused before any buffer was written, and nothing left allocated */
        for (int i = 0; i < NF; i++) ck_assert(r.params[i] == 0.0f && r.m[i] == 0.0f);
        ck_assert_ptr_null(r.ck.config_keys);
        ck_assert_ptr_null(r.ck.metrics_read);
    }
    ckbuf_free(&r);
    ckbuf_free(&w);
    assert_no_open_hdf5();
    return same;
}

static haddr_t dataset_offset(const char *path, const char *name) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    ck_assert_int_ge(d, 0);
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    ck_assert(off != HADDR_UNDEF);
    return off;
}

static void flip_byte(const char *path, size_t at, unsigned char mask) {
    size_t n;
    char *b = slurp(path, &n);
    ck_assert_uint_lt(at, n);
    b[at] = (char)(b[at] ^ mask);
    spit(path, b, n);
    free(b);
}

static uint64_t read_u64_attr(hid_t obj, const char *name) {
    uint64_t v = 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    ck_assert_int_ge(a, 0);
    ck_assert_int_ge(H5Aread(a, H5T_NATIVE_UINT64, &v), 0);
    H5Aclose(a);
    return v;
}

/* Captures what fn writes to stderr into buf (size n). */
static int latest_capturing_stderr(const char *dir, char *out, size_t outlen, char *buf, size_t n) {
    char *log = tpath("stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    FILE *f = fopen(log, "w");
    ck_assert_ptr_nonnull(f);
    dup2(fileno(f), 2);
    int rc = io_ckpt_latest(dir, out, outlen);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(f);
    size_t len;
    char *s = slurp(log, &len);
    unlink(log);
    snprintf(buf, n, "%.*s", (int)len, s);
    free(s);
    return rc;
}

/* ---- tests ------------------------------------------------------------------------------ */

START_TEST(test_every_dataset_and_the_root_carry_a_checksum) {
    char *p = tpath("ckpt_00000010.h5");
    write_ckpt(p, 10);
    hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    const char *names[] = {"/params/embed/weight", "/params/out/bias", "/optim/m/out/weight",
                           "/optim/v/embed/weight", "/vocab/src", "/vocab/src_count",
                           "/vocab/labels", "/vocab/labels_count", "/metrics"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        hid_t d = H5Dopen2(f, names[i], H5P_DEFAULT);
        ck_assert_msg(d >= 0 && H5Aexists(d, "checksum") > 0, "%s has no checksum", names[i]);
        H5Dclose(d);
    }
    /* the parameter checksum is mulrot4x64 of the float bytes, computed here independently */
    ckbuf w;
    ckbuf_init(&w, 1, 10);
    uint64_t h = ref_mulrot4x64(w.params + 24, 20 * sizeof(float));
    hid_t d = H5Dopen2(f, "/params/out/weight", H5P_DEFAULT);
    ck_assert_uint_eq(read_u64_attr(d, "checksum"), h);
    H5Dclose(d);
    ckbuf_free(&w);
    ck_assert_int_gt(H5Aexists(f, "checksum"), 0);
    char alg[16] = {0};
    hid_t a = H5Aopen(f, "checksum_algorithm", H5P_DEFAULT);
    hid_t t = H5Aget_type(a);
    ck_assert_int_gt(H5Tis_variable_str(t), 0);
    char *s = NULL;
    ck_assert_int_ge(H5Aread(a, t, &s), 0);
    snprintf(alg, sizeof alg, "%s", s);
    H5free_memory(s);
    H5Tclose(t);
    H5Aclose(a);
    ck_assert_str_eq(alg, IO_CKPT_CHECKSUM);
    H5Fclose(f);
    ck_assert_int_eq(io_ckpt_verify(p), IO_OK);
    ck_assert(reads_back_equal(p, 10, NULL));
}
END_TEST

START_TEST(test_flipped_byte_in_dataset_data_is_detected) {
    char *good = tpath("good.h5");
    write_ckpt(good, 20);
    size_t n;
    char *orig = slurp(good, &n);
    const char *targets[] = {"/params/embed/weight", "/params/out/bias", "/optim/v/out/weight",
                             "/vocab/src_count"};
    size_t sizes[] = {24 * 4, 2 * 4, 20 * 4, 6 * 8};
    for (size_t t = 0; t < sizeof targets / sizeof *targets; t++) {
        for (size_t k = 0; k < sizes[t]; k += sizes[t] / 3 + 1) {
            char *p = tpath("ckpt_00000020.h5");
            spit(p, orig, n);
            haddr_t off = dataset_offset(p, targets[t]);
            flip_byte(p, (size_t)off + k, 0x10);
            int rc;
            ck_assert(!reads_back_equal(p, 20, &rc));
            ck_assert_int_eq(rc, IO_ERR_FORMAT);
            char want[200];
            snprintf(want, sizeof want, "%s: %s has checksum ", p, targets[t]);
            ck_assert_msg(strncmp(io_error(), want, strlen(want)) == 0 &&
                              strstr(io_error(), "(corrupted)"),
                          "message: %s", io_error());
            ck_assert_int_eq(io_ckpt_verify(p), IO_ERR_FORMAT);
            ck_assert_ptr_nonnull(strstr(io_error(), targets[t]));
        }
    }
    /* a vocabulary word changed in HDF5's global heap (valid UTF-8 still) */
    char *p = tpath("ckpt_00000020.h5");
    char *w = memmem(orig, n, "w\xc3\xb6rtchen", 9);
    ck_assert_ptr_nonnull(w);
    w[8] = 'm';
    spit(p, orig, n);
    int rc;
    ck_assert(!reads_back_equal(p, 20, &rc));
    ck_assert_int_eq(rc, IO_ERR_FORMAT);
    ck_assert_msg(strstr(io_error(), "/vocab/src has checksum"), "%s", io_error());
    free(orig);
}
END_TEST

START_TEST(test_altered_attributes_fail_the_root_checksum) {
    char *p = tpath("ckpt_00000030.h5");
    const char *what[] = {"train step", "config value", "dataset checksum"};
    const char *names[] = {": /train has checksum ", ": /config (with the root attributes model, "
                           "created) has checksum ", ": the root (over every dataset's checksum) "
                           "has checksum "};
    for (int c = 0; c < 3; c++) {
        write_ckpt(p, 30);
        hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        ck_assert_int_ge(f, 0);
        if (c == 0) {
            hid_t g = H5Gopen2(f, "/train", H5P_DEFAULT);
            hid_t a = H5Aopen(g, "step", H5P_DEFAULT);
            int64_t step = 31;
            ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_INT64, &step), 0);
            H5Aclose(a);
            H5Gclose(g);
        } else if (c == 1) {
            hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
            hid_t a = H5Aopen(g, "lr", H5P_DEFAULT);
            hid_t t = H5Aget_type(a);
            const char *v = "0.02";
            ck_assert_int_ge(H5Awrite(a, t, &v), 0);
            H5Tclose(t);
            H5Aclose(a);
            H5Gclose(g);
        } else {
            /* data and its checksum changed together: only the root can tell */
            hid_t d = H5Dopen2(f, "/params/out/bias", H5P_DEFAULT);
            float bias[2] = {1.0f, 2.0f};
            ck_assert_int_ge(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, bias), 0);
            uint64_t h = ref_mulrot4x64(bias, sizeof bias);
            hid_t a = H5Aopen(d, "checksum", H5P_DEFAULT);
            ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_UINT64, &h), 0);
            H5Aclose(a);
            H5Dclose(d);
        }
        H5Fclose(f);
        int rc;
        ck_assert_msg(!reads_back_equal(p, 30, &rc), "%s: altered file read as the original", what[c]);
        ck_assert_int_eq(rc, IO_ERR_FORMAT);
        ck_assert_msg(strstr(io_error(), names[c]) && strstr(io_error(), "(corrupted)"),
                      "%s: %s", what[c], io_error());
        ck_assert_int_eq(io_ckpt_verify(p), IO_ERR_FORMAT);
    }
}
END_TEST

START_TEST(test_truncated_file_is_refused) {
    char *good = tpath("good.h5");
    write_ckpt(good, 40);
    size_t n;
    char *orig = slurp(good, &n);
    size_t cuts[] = {0, 1, 100, n / 3, n / 2, n - 4096 > n / 2 ? n - 4096 : n - 1, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        char *p = tpath("ckpt_00000040.h5");
        spit(p, orig, cuts[i]);
        int rc;
        ck_assert_msg(!reads_back_equal(p, 40, &rc), "cut at %zu of %zu read fine", cuts[i], n);
        ck_assert_int_lt(rc, 0);
        ck_assert_int_lt(io_ckpt_verify(p), 0);
        ck_assert_str_ne(io_error(), "");
    }
    free(orig);
}
END_TEST

START_TEST(test_latest_skips_damaged_newest_with_a_warning) {
    write_ckpt(tpath("ckpt_00000010.h5"), 10);
    write_ckpt(tpath("ckpt_00000020.h5"), 20);
    write_ckpt(tpath("ckpt_00000030.h5"), 30);
    char out[512], err[4096];
    ck_assert_int_eq(latest_capturing_stderr(tdir, out, sizeof out, err, sizeof err), IO_OK);
    ck_assert_str_eq(out, tpath("ckpt_00000030.h5"));
    ck_assert_str_eq(err, "");
    /* newest altered inside its data: the previous one is chosen, one warning line */
    char *p30 = tpath("ckpt_00000030.h5");
    flip_byte(p30, (size_t)dataset_offset(p30, "/optim/m/embed/weight") + 5, 0x01);
    ck_assert_int_eq(latest_capturing_stderr(tdir, out, sizeof out, err, sizeof err), IO_OK);
    ck_assert_str_eq(out, tpath("ckpt_00000020.h5"));
    char want[700];
    snprintf(want, sizeof want, "lockstep: warning: skipping corrupted checkpoint %s: "
             "/optim/m/embed/weight has checksum ", p30);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "stderr: %s", err);
    ck_assert_ptr_null(strchr(err, '\n') ? strchr(strchr(err, '\n') + 1, '\n') : NULL);
    /* the next one truncated too: the oldest */
    char *p20 = tpath("ckpt_00000020.h5");
    size_t n;
    char *b = slurp(p20, &n);
    spit(p20, b, n / 2);
    free(b);
    ck_assert_int_eq(latest_capturing_stderr(tdir, out, sizeof out, err, sizeof err), IO_OK);
    ck_assert_str_eq(out, tpath("ckpt_00000010.h5"));
    ck_assert_ptr_nonnull(strstr(err, "skipping corrupted checkpoint"));
    ck_assert_ptr_nonnull(strstr(err, p20));
    ck_assert(reads_back_equal(out, 10, NULL));
    /* all damaged: not found, and the message counts the skipped ones */
    flip_byte(tpath("ckpt_00000010.h5"), (size_t)dataset_offset(tpath("ckpt_00000010.h5"),
                                                               "/params/out/weight"), 0x80);
    ck_assert_int_eq(latest_capturing_stderr(tdir, out, sizeof out, err, sizeof err),
                     IO_ERR_NOTFOUND);
    ck_assert_msg(strstr(io_error(), "3 corrupted ones skipped"), "%s", io_error());
    assert_no_open_hdf5();
}
END_TEST

/* Removes every "checksum" attribute (datasets and root), as files written before
 * checksums existed look. */
static herr_t strip_visit(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    (void)op;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d >= 0 && H5Aexists(d, "checksum") > 0) H5Adelete(d, "checksum");
    if (d >= 0) H5Dclose(d);
    return 0;
}

START_TEST(test_checkpoints_without_checksums_still_read) {
    char *p = tpath("ckpt_00000050.h5");
    write_ckpt(p, 50);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    ck_assert_int_ge(H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, strip_visit, NULL), 0);
    H5Adelete(f, "checksum");
    H5Adelete(f, "checksum_algorithm");
    H5Fclose(f);
    ck_assert_int_eq(io_ckpt_verify(p), IO_OK);
    ck_assert_msg(reads_back_equal(p, 50, NULL), "%s", io_error());
    char out[512];
    ck_assert_int_eq(io_ckpt_latest(tdir, out, sizeof out), IO_OK);
    ck_assert_str_eq(out, p);
    /* but with a root checksum, a dataset without one is refused */
    write_ckpt(p, 50);
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/optim/v/out/bias", H5P_DEFAULT);
    ck_assert_int_ge(H5Adelete(d, "checksum"), 0);
    H5Dclose(d);
    H5Fclose(f);
    int rc;
    ck_assert(!reads_back_equal(p, 50, &rc));
    ck_assert_int_eq(rc, IO_ERR_FORMAT);
    ck_assert_msg(strstr(io_error(), "/optim/v/out/bias has no checksum"), "%s", io_error());
}
END_TEST

/* Every single-byte change anywhere in the file either is refused or reads back exactly
 * the original contents (bytes HDF5 never reads: padding, free space). */
START_TEST(test_single_byte_flips_never_read_as_different_contents) {
    char *good = tpath("good.h5");
    write_ckpt(good, 60);
    size_t n;
    char *orig = slurp(good, &n);
    char *p = tpath("ckpt_00000060.h5");
    /* a damaged file can make HDF5 spin in the checking child: give up on it sooner */
    setenv("LOCKSTEP_CKPT_CHECK_TIMEOUT", "2", 1);
    int refused = 0, same = 0, hung = 0, crashed = 0;
    for (size_t at = 0; at < n; at += 31) {
        orig[at] = (char)(orig[at] ^ 0x04);
        spit(p, orig, n);
        orig[at] = (char)(orig[at] ^ 0x04);
        int rc;
        if (reads_back_equal(p, 60, &rc)) same++;
        else if (rc < 0) refused++, hung += strstr(io_error(), "did not finish") != NULL,
                         crashed += strstr(io_error(), "crashed the HDF5") != NULL;
        else ck_abort_msg("flip at byte %zu of %zu read back different contents", at, n);
    }
    unsetenv("LOCKSTEP_CKPT_CHECK_TIMEOUT");
    ck_assert_int_gt(refused, 0);
    free(orig);
    fprintf(stderr, "byte flips: %d refused (%d crashed HDF5 in the checking child, %d hung "
            "it), %d harmless (unused bytes)\n", refused, crashed, hung, same);
}
END_TEST

/* Values from the Python implementation in tests/check_ckpt_h5py.py (not lockstep code):
 *   cd tests && /usr/bin/python3 -c "from check_ckpt_h5py import mulrot4x64 as h; \
 *     [print(len(d), '0x%016x' % h(d)) for d in [b'', b'a', b'lockstep', bytes(range(100)), \
 *     bytes(i * 7 % 256 for i in range(1000))]]" */
START_TEST(test_mulrot4x64_known_values) {
    unsigned char r100[100], r1000[1000];
    for (int i = 0; i < 100; i++) r100[i] = (unsigned char)i;
    for (int i = 0; i < 1000; i++) r1000[i] = (unsigned char)(i * 7 % 256);
    struct { const void *p; size_t n; uint64_t want; } c[] = {
        {"", 0, 0xc75f23223bcc828dULL},
        {"a", 1, 0xd6dbaebf58b9e285ULL},
        {"lockstep", 8, 0xe9bd61cf46e5be50ULL},
        {r100, 100, 0xc8ef68abfb6fef8bULL},
        {r1000, 1000, 0x35ea4818085c53cfULL},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        ck_assert_uint_eq(io_hash_buf_(IO_HASH_MULROT4X64, c[i].p, c[i].n), c[i].want);
        ck_assert_uint_eq(ref_mulrot4x64(c[i].p, c[i].n), c[i].want);
    }
    /* fnv1a64 is still the byte-wise FNV-1a 64 ("a": the published test vector) */
    ck_assert_uint_eq(io_hash_buf_(IO_HASH_FNV1A64, "a", 1), 0xaf63dc4c8601ec8cULL);
}
END_TEST

/* Any split into update calls and any alignment of the buffer give the same value, equal
 * to the byte-wise reference; every single-bit flip changes it. */
START_TEST(test_mulrot4x64_split_alignment_and_bit_flips) {
    enum { N = 777 };
    unsigned char *raw = malloc(N + 8);
    unsigned seed = 12345;
    for (int i = 0; i < N + 8; i++) raw[i] = (unsigned char)((seed = seed * 1103515245u + 12345u) >> 16);
    const uint64_t want = ref_mulrot4x64(raw, N);
    unsigned char *moved = malloc(N + 8);
    for (int off = 0; off < 8; off++) { /* the same bytes at every alignment */
        memcpy(moved + off, raw, N);
        ck_assert_uint_eq(io_hash_buf_(IO_HASH_MULROT4X64, moved + off, N), want);
    }
    for (int trial = 0; trial < 200; trial++) { /* random splits, pieces of 0..70 bytes */
        io_hasher_ s;
        io_hash_init_(&s, IO_HASH_MULROT4X64);
        size_t at = 0;
        while (at < N) {
            size_t k = (seed = seed * 1103515245u + 12345u) >> 16 & 63;
            if (trial % 2) k += 7;
            if (k > N - at) k = N - at;
            io_hash_update_(&s, raw + at, k);
            at += k;
        }
        ck_assert_uint_eq(io_hash_final_(&s), want);
    }
    for (size_t bit = 0; bit < 8 * (size_t)N; bit++) {
        raw[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        ck_assert_msg(io_hash_buf_(IO_HASH_MULROT4X64, raw, N) != want, "bit %zu", bit);
        raw[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    }
    /* a longer or shorter buffer differs, zero bytes included */
    unsigned char z[64] = {0};
    ck_assert_uint_ne(io_hash_buf_(IO_HASH_MULROT4X64, z, 32), io_hash_buf_(IO_HASH_MULROT4X64, z, 33));
    ck_assert_uint_ne(io_hash_buf_(IO_HASH_MULROT4X64, z, 0), io_hash_buf_(IO_HASH_MULROT4X64, z, 64));
    free(moved);
    free(raw);
}
END_TEST

/* tests/data/ckpt_fnv1a64.h5 was written by the code before mulrot4x64 (checksum_algorithm
 * "fnv1a64"), with the contents of write_ckpt(step 70). */
START_TEST(test_fnv1a64_checkpoints_still_verify_and_read) {
    const char *fixture = "data/ckpt_fnv1a64.h5";
    char *p = tpath("ckpt_00000070.h5");
    size_t n;
    char *orig = slurp(fixture, &n);
    spit(p, orig, n);
    ck_assert_msg(io_ckpt_verify(p) == IO_OK, "%s", io_error());
    ck_assert_msg(reads_back_equal(p, 70, NULL), "%s", io_error());
    /* info names the algorithm the file was verified with */
    char *info = tpath("info.txt");
    FILE *out = fopen(info, "w");
    ck_assert_int_eq(io_ckpt_info(p, out), IO_OK);
    fclose(out);
    size_t len;
    char *txt = slurp(info, &len);
    txt[len] = '\0';
    ck_assert_msg(strstr(txt, "checksums: verified (14 datasets, fnv1a64)"), "%s", txt);
    free(txt);
    /* damage is found with the old algorithm too: a parameter byte, then /train */
    flip_byte(p, (size_t)dataset_offset(p, "/params/embed/weight") + 9, 0x02);
    int rc;
    ck_assert(!reads_back_equal(p, 70, &rc));
    ck_assert_int_eq(rc, IO_ERR_FORMAT);
    ck_assert_msg(strstr(io_error(), "/params/embed/weight has checksum"), "%s", io_error());
    spit(p, orig, n);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t g = H5Gopen2(f, "/train", H5P_DEFAULT);
    hid_t a = H5Aopen(g, "epoch", H5P_DEFAULT);
    int64_t epoch = 2;
    ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_INT64, &epoch), 0);
    H5Aclose(a);
    H5Gclose(g);
    H5Fclose(f);
    ck_assert_int_eq(io_ckpt_verify(p), IO_ERR_FORMAT);
    ck_assert_msg(strstr(io_error(), "/train has checksum"), "%s", io_error());
    /* an fnv1a64 file relabelled as the new algorithm no longer verifies, and an unknown
     * algorithm is a version error */
    const char *labels[] = {IO_CKPT_CHECKSUM, "crc99"};
    for (int i = 0; i < 2; i++) {
        spit(p, orig, n);
        f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        a = H5Aopen(f, "checksum_algorithm", H5P_DEFAULT);
        hid_t t = H5Aget_type(a);
        ck_assert_int_ge(H5Awrite(a, t, &labels[i]), 0);
        H5Tclose(t);
        H5Aclose(a);
        H5Fclose(f);
        rc = io_ckpt_verify(p);
        ck_assert_int_eq(rc, i == 0 ? IO_ERR_FORMAT : IO_ERR_VERSION);
        ck_assert_msg(i == 0 ? strstr(io_error(), "has checksum") != NULL
                             : strstr(io_error(), "checksum algorithm \"crc99\"") != NULL,
                      "%s", io_error());
    }
    /* a checkpoint written now carries the new algorithm and reads the same */
    write_ckpt(p, 70);
    ck_assert(reads_back_equal(p, 70, NULL));
    free(orig);
}
END_TEST

/* Tensors above 1 MB are hashed and written in slabs of rows: the file holds the same
 * bytes, each checksum is that of the whole tensor, and it reads back exactly. */
START_TEST(test_large_tensors_written_in_slabs) {
    static const io_tensor big[] = {
        {"a/w", 0, 2, {300, 1000}},           /* 1.2 MB: slabs of 262 rows, a short last one */
        {"b/v", 300000, 1, {300001}},         /* 1-D, 1.2 MB */
        {"c/t", 600001, 4, {3, 5, 7, 11}},    /* small, one write */
        {"d/r", 601156, 2, {1, 300000}},      /* one row above the slab size */
    };
    const size_t nf = 901156;
    float *p = malloc(nf * sizeof *p), *m = malloc(nf * sizeof *m), *q = calloc(nf, sizeof *q),
          *qm = calloc(nf, sizeof *qm);
    for (size_t i = 0; i < nf; i++) {
        p[i] = (float)(i % 9973) * 0.001f - 3.0f;
        m[i] = (float)i;
    }
    float *slots[1] = {m}, *rslots[1] = {qm};
    const char *const one[] = {"m"};
    io_ckpt ck = {.model = "big", .n_tensors = 4, .tensors = big, .n_floats = nf, .params = p,
                  .n_slots = 1, .slot_names = one, .slots = slots};
    char *path = tpath("big.h5");
    ck_assert_msg(io_ckpt_write(path, &ck) == IO_OK, "%s", io_error());
    ck_assert_msg(io_ckpt_verify(path) == IO_OK, "%s", io_error());
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    for (int i = 0; i < 4; i++) {
        size_t cnt = 1;
        for (int k = 0; k < big[i].ndim; k++) cnt *= (size_t)big[i].shape[k];
        char name[64];
        snprintf(name, sizeof name, "/params/%s", big[i].name);
        hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
        ck_assert_uint_eq(read_u64_attr(d, "checksum"),
                          ref_mulrot4x64(p + big[i].offset, cnt * sizeof(float)));
        H5Dclose(d);
        snprintf(name, sizeof name, "/optim/m/%s", big[i].name);
        d = H5Dopen2(f, name, H5P_DEFAULT);
        ck_assert_uint_eq(read_u64_attr(d, "checksum"),
                          ref_mulrot4x64(m + big[i].offset, cnt * sizeof(float)));
        H5Dclose(d);
    }
    H5Fclose(f);
    io_ckpt rd = {.model = "big", .n_tensors = 4, .tensors = big, .n_floats = nf, .params = q,
                  .n_slots = 1, .slot_names = one, .slots = rslots};
    ck_assert_msg(io_ckpt_read(path, &rd) == IO_OK, "%s", io_error());
    ck_assert_mem_eq(q, p, nf * sizeof *p);
    ck_assert_mem_eq(qm, m, nf * sizeof *m);
    io_ckpt_release(&rd);
    /* a flipped byte in the last slab of a slab-written tensor is found */
    flip_byte(path, (size_t)dataset_offset(path, "/params/a/w") + 4 * 299999, 0x40);
    ck_assert_int_eq(io_ckpt_verify(path), IO_ERR_FORMAT);
    ck_assert_msg(strstr(io_error(), "/params/a/w has checksum"), "%s", io_error());
    free(p);
    free(m);
    free(q);
    free(qm);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("ckpt_checksum");
    TCase *t = tcase_create("checksum");
    tcase_add_checked_fixture(t, setup_tmp, teardown_tmp);
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_mulrot4x64_known_values);
    tcase_add_test(t, test_mulrot4x64_split_alignment_and_bit_flips);
    tcase_add_test(t, test_fnv1a64_checkpoints_still_verify_and_read);
    tcase_add_test(t, test_large_tensors_written_in_slabs);
    tcase_add_test(t, test_every_dataset_and_the_root_carry_a_checksum);
    tcase_add_test(t, test_flipped_byte_in_dataset_data_is_detected);
    tcase_add_test(t, test_altered_attributes_fail_the_root_checksum);
    tcase_add_test(t, test_truncated_file_is_refused);
    tcase_add_test(t, test_latest_skips_damaged_newest_with_a_warning);
    tcase_add_test(t, test_checkpoints_without_checksums_still_read);
    tcase_add_test(t, test_single_byte_flips_never_read_as_different_contents);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
