/* ckpt.c - HDF5 checkpoints in the DESIGN.md layout:
 *   /                 attrs format, format_version (int64), model, created (ISO 8601 UTC)
 *   /config           one variable-length UTF-8 string attribute per key, creation order kept
 *   /params/<name>    float32 datasets of the tensor's shape
 *   /optim/<slot>/<name>  optimizer state, same shapes
 *   /train            int64 attrs step, epoch, tokens_seen, examples_seen, world_size,
 *                     data_pos, best_step, bad_evals; double attr best_metric
 *   /vocab/<side>     1-D variable-length string dataset, /vocab/<side>_count int64
 *   /metrics          1-D variable-length string dataset, one JSON object per element
 * Strings are variable-length UTF-8 so that h5py returns str, not bytes.
 *
 * Checksums, uint64 attributes, each the hash named by the root attribute
 * checksum_algorithm (hash.c: "mulrot4x64" is written; "fnv1a64", FNV-1a 64, the
 * algorithm of earlier files, is still verified) of a byte string:
 *   /<dataset> "checksum"   its elements in row-major order, each as its little-endian
 *                           bytes in the stored type (float32, int64); a variable-length
 *                           string as its bytes and one NUL
 *   / "config_checksum"     /config as key NUL value NUL in creation order, then the root
 *                           attributes model and created (each with a NUL)
 *   / "train_checksum"      the nine /train attributes, 8 bytes each, io_train_state order
 *   / "checksum"            for every dataset in H5Ovisit name order its path, a NUL and
 *                           its checksum (8 bytes), then config_checksum and train_checksum
 *   / "checksum_algorithm"  IO_CKPT_CHECKSUM
 * Reading verifies them all before any buffer is written (names and shapes are checked
 * first, so that a checkpoint of another shape is named as such), with the algorithm the
 * file names. Files without a root checksum (written before checksums existed) are read
 * as before, verifying only the datasets that carry one (fnv1a64).
 * Files are written with library version bounds EARLIEST..V18: superblock v0, the 1.8
 * formats only where needed (/config tracks creation order); readers need HDF5 >= 1.8.
 *
 * Writes are atomic: <path>.tmp.<pid> written by HDF5 through ckpt_vfd.c (raw data
 * straight from the caller's buffers; a disk error is kept from HDF5 and reported after
 * H5Fclose), fsync, rename, fsync(dir); any failure removes the temporary file. HDF5's
 * own error stack printing is switched off; every failure becomes one line in io_error().
 *
 * File locking: HDF5 1.10.7+ reads the environment variable HDF5_USE_FILE_LOCKING itself
 * (FALSE disables the flock() it takes on open). On NFS/Lustre where flock fails, users
 * set HDF5_USE_FILE_LOCKING=FALSE; nothing here overrides it.
 *
 * Does not: write from more than one process (rank 0 writes; serial HDF5), compress,
 * or interpret the configuration (strings as given). */
#include <hdf5.h>

#include "io/io.h"
#include "io/io_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- small HDF5 helpers ----------------------------------------------------------- */

static void io_h5_quiet_(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static hid_t io_h5_str_type_(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Writes a scalar variable-length UTF-8 string attribute. */
static int io_h5_attr_str_(hid_t obj, const char *name, const char *val) {
    int ok = 0;
    hid_t t = io_h5_str_type_(), s = H5Screate(H5S_SCALAR), a = -1;
    if (t >= 0 && s >= 0) a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) ok = H5Awrite(a, t, &val) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    if (t >= 0) H5Tclose(t);
    return ok ? IO_OK : IO_ERR_WRITE;
}

static int io_h5_attr_i64_(hid_t obj, const char *name, int64_t val) {
    int ok = 0;
    hid_t s = H5Screate(H5S_SCALAR), a = -1;
    if (s >= 0) a = H5Acreate2(obj, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) ok = H5Awrite(a, H5T_NATIVE_INT64, &val) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    return ok ? IO_OK : IO_ERR_WRITE;
}

static int io_h5_attr_u64_(hid_t obj, const char *name, uint64_t val) {
    int ok = 0;
    hid_t s = H5Screate(H5S_SCALAR), a = -1;
    if (s >= 0) a = H5Acreate2(obj, name, H5T_STD_U64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) ok = H5Awrite(a, H5T_NATIVE_UINT64, &val) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    return ok ? IO_OK : IO_ERR_WRITE;
}

static int io_h5_attr_f64_(hid_t obj, const char *name, double val) {
    int ok = 0;
    hid_t s = H5Screate(H5S_SCALAR), a = -1;
    if (s >= 0) a = H5Acreate2(obj, name, H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) ok = H5Awrite(a, H5T_NATIVE_DOUBLE, &val) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    return ok ? IO_OK : IO_ERR_WRITE;
}

/* Opens attribute `name` of obj if it exists and holds exactly one element (so that
 * reading it into one variable cannot overrun it); -1 otherwise. */
static hid_t io_h5_attr_open_scalar_(hid_t obj, const char *name) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t s = H5Aget_space(a);
    int one = s >= 0 && H5Sget_simple_extent_npoints(s) == 1;
    if (s >= 0) H5Sclose(s);
    if (!one) {
        H5Aclose(a);
        return -1;
    }
    return a;
}

/* Reads a scalar string attribute (fixed or variable length) into a malloc'ed string;
 * NULL if absent or not a string. */
static char *io_h5_attr_read_str_(hid_t obj, const char *name) {
    hid_t a = io_h5_attr_open_scalar_(obj, name);
    if (a < 0) return NULL;
    char *out = NULL;
    hid_t ft = H5Aget_type(a);
    if (ft >= 0 && H5Tget_class(ft) == H5T_STRING) {
        if (H5Tis_variable_str(ft) > 0) {
            hid_t mt = io_h5_str_type_();
            char *s = NULL;
            if (mt >= 0 && H5Aread(a, mt, &s) >= 0 && s) {
                out = strdup(s);
                H5free_memory(s);
            }
            if (mt >= 0) H5Tclose(mt);
        } else {
            size_t n = H5Tget_size(ft);
            hid_t mt = H5Tcopy(H5T_C_S1);
            char *s = calloc(n + 1, 1);
            if (mt >= 0 && s && H5Tset_size(mt, n) >= 0 && H5Aread(a, mt, s) >= 0) {
                s[n] = '\0';
                out = s;
                s = NULL;
            }
            free(s);
            if (mt >= 0) H5Tclose(mt);
        }
    }
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    return out;
}

static int io_h5_attr_read_i64_(hid_t obj, const char *name, int64_t *v) {
    hid_t a = io_h5_attr_open_scalar_(obj, name);
    if (a < 0) return 0;
    int ok = H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    H5Aclose(a);
    return ok;
}

/* 1 and *v when obj has an integer attribute `name` (a scalar); 0 otherwise. */
static int io_h5_attr_read_u64_(hid_t obj, const char *name, uint64_t *v) {
    hid_t a = io_h5_attr_open_scalar_(obj, name);
    if (a < 0) return 0;
    hid_t t = H5Aget_type(a);
    int ok = t >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Aread(a, H5T_NATIVE_UINT64, v) >= 0;
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return ok;
}

static int io_h5_attr_read_f64_(hid_t obj, const char *name, double *v) {
    hid_t a = io_h5_attr_open_scalar_(obj, name);
    if (a < 0) return 0;
    int ok = H5Aread(a, H5T_NATIVE_DOUBLE, v) >= 0;
    H5Aclose(a);
    return ok;
}

/* 1 if every component of the absolute path p exists (H5Lexists needs its parents). */
static int io_h5_exists_(hid_t f, const char *p) {
    size_t n = strlen(p);
    char *b = malloc(n + 1);
    if (!b) return 0;
    memcpy(b, p, n + 1);
    int ok = 1;
    for (size_t i = 1; i <= n && ok; i++) {
        if (b[i] != '/' && b[i] != '\0') continue;
        char c = b[i];
        b[i] = '\0';
        ok = H5Lexists(f, b, H5P_DEFAULT) > 0;
        b[i] = c;
    }
    free(b);
    return ok;
}

static void io_fmt_shape_(char *out, size_t n, int ndim, const hsize_t *dims) {
    size_t p = (size_t)snprintf(out, n, "(");
    for (int i = 0; i < ndim && p < n; i++)
        p += (size_t)snprintf(out + p, n - p, i ? ",%llu" : "%llu", (unsigned long long)dims[i]);
    if (p < n) snprintf(out + p, n - p, ")");
}

static void io_tensor_dims_(const io_tensor *t, hsize_t *dims) {
    for (int i = 0; i < t->ndim; i++) dims[i] = (hsize_t)t->shape[i];
}

static size_t io_tensor_count_(const io_tensor *t) {
    size_t c = 1;
    for (int i = 0; i < t->ndim; i++) c *= (size_t)t->shape[i];
    return c;
}

/* ---- writing ------------------------------------------------------------------------ */

#define IO_WRITE_SLAB ((size_t)1 << 20) /* bytes hashed, then written while in cache */

/* Creates dataset `name` (absolute, parents created) of float32 with t's shape from x, and
 * its checksum. Large tensors go in slabs of whole rows of about IO_WRITE_SLAB bytes, each
 * hashed just before it is written, so that the write copies it from the cache. */
static int io_h5_write_f32_(hid_t f, hid_t lcpl, const char *name, const io_tensor *t,
                            const float *x) {
    hsize_t dims[IO_MAX_DIMS];
    io_tensor_dims_(t, dims);
    const size_t cnt = io_tensor_count_(t);
    int ok = 0;
    hid_t s = t->ndim > 0 ? H5Screate_simple(t->ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t d = -1;
    if (s >= 0) d = H5Dcreate2(f, name, H5T_IEEE_F32LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    io_hasher_ h;
    io_hash_init_(&h, IO_HASH_MULROT4X64);
    hsize_t rows = t->ndim > 0 && cnt > 0 ? dims[0] : 1, row = cnt / rows;
    hsize_t per = row > 0 ? IO_WRITE_SLAB / (row * sizeof *x) : 1;
    if (per < 1) per = 1;
    if (d < 0 || cnt == 0) {
        ok = d >= 0;
    } else if (per >= rows) { /* one write */
        io_hash_update_(&h, x, cnt * sizeof *x);
        ok = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0;
    } else {
        ok = 1;
        for (hsize_t r = 0; ok && r < rows; r += per) {
            hsize_t start[IO_MAX_DIMS] = {0}, count[IO_MAX_DIMS];
            for (int i = 0; i < t->ndim; i++) count[i] = dims[i];
            start[0] = r;
            count[0] = rows - r < per ? rows - r : per;
            hsize_t m = count[0] * row;
            const float *p = x + r * row;
            io_hash_update_(&h, p, (size_t)m * sizeof *x);
            hid_t ms = H5Screate_simple(1, &m, NULL);
            ok = ms >= 0 && H5Sselect_hyperslab(s, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
                 H5Dwrite(d, H5T_NATIVE_FLOAT, ms, s, H5P_DEFAULT, p) >= 0;
            if (ms >= 0) H5Sclose(ms);
        }
    }
    if (ok) ok = io_h5_attr_u64_(d, "checksum", io_hash_final_(&h)) == IO_OK;
    if (d >= 0) H5Dclose(d);
    if (s >= 0) H5Sclose(s);
    return ok ? IO_OK : IO_ERR_WRITE;
}

/* 1-D variable-length string dataset of n strings. */
static int io_h5_write_strs_(hid_t f, hid_t lcpl, const char *name, const char *const *strs,
                             hsize_t n) {
    int ok = 0;
    hid_t t = io_h5_str_type_(), s = H5Screate_simple(1, &n, NULL), d = -1;
    if (t >= 0 && s >= 0) d = H5Dcreate2(f, name, t, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0) ok = n == 0 || H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, strs) >= 0;
    if (ok) {
        io_hasher_ h;
        io_hash_init_(&h, IO_HASH_MULROT4X64);
        for (hsize_t i = 0; i < n; i++) io_hash_update_(&h, strs[i], strlen(strs[i]) + 1);
        ok = io_h5_attr_u64_(d, "checksum", io_hash_final_(&h)) == IO_OK;
    }
    if (d >= 0) H5Dclose(d);
    if (s >= 0) H5Sclose(s);
    if (t >= 0) H5Tclose(t);
    return ok ? IO_OK : IO_ERR_WRITE;
}

static int io_h5_write_i64s_(hid_t f, hid_t lcpl, const char *name, const int64_t *x,
                             hsize_t n) {
    int ok = 0;
    hid_t s = H5Screate_simple(1, &n, NULL), d = -1;
    if (s >= 0) d = H5Dcreate2(f, name, H5T_STD_I64LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0) ok = n == 0 || H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0;
    if (ok) ok = io_h5_attr_u64_(d, "checksum", io_hash_buf_(IO_HASH_MULROT4X64, x, n * sizeof *x)) == IO_OK;
    if (d >= 0) H5Dclose(d);
    if (s >= 0) H5Sclose(s);
    return ok ? IO_OK : IO_ERR_WRITE;
}

static char *io_join_(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + strlen(b) + (c ? strlen(c) + 1 : 0) + 2;
    char *s = malloc(n);
    if (!s) return NULL;
    if (c) snprintf(s, n, "%s/%s/%s", a, b, c);
    else snprintf(s, n, "%s/%s", a, b);
    return s;
}

/* Writes everything into the open file f; message names what failed. */
static int io_ckpt_fill_(hid_t f, const char *path, const io_ckpt *ck) {
    int rc = IO_ERR_WRITE;
    char *name = NULL;
    const char **lines = NULL;
    char *mcopy = NULL;
    hid_t lcpl = -1, g = -1, gcpl = -1;
#define IO_TRY_(cond, ...) do { if (!(cond)) { io_set_error(__VA_ARGS__); goto done; } } while (0)

    lcpl = H5Pcreate(H5P_LINK_CREATE);
    IO_TRY_(lcpl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0,
            "%s: HDF5 property list failed", path);

    /* root attributes */
    char created[32];
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    IO_TRY_(io_h5_attr_str_(f, "format", IO_CKPT_FORMAT) == IO_OK &&
            io_h5_attr_i64_(f, "format_version", IO_CKPT_VERSION) == IO_OK &&
            io_h5_attr_str_(f, "model", ck->model ? ck->model : "") == IO_OK &&
            io_h5_attr_str_(f, "created", created) == IO_OK,
            "%s: cannot write root attributes", path);

    /* /config, attributes in creation order so that "as given" survives */
    gcpl = H5Pcreate(H5P_GROUP_CREATE);
    IO_TRY_(gcpl >= 0 && H5Pset_attr_creation_order(gcpl, H5P_CRT_ORDER_TRACKED |
                                                              H5P_CRT_ORDER_INDEXED) >= 0,
            "%s: HDF5 property list failed", path);
    g = H5Gcreate2(f, "/config", H5P_DEFAULT, gcpl, H5P_DEFAULT);
    IO_TRY_(g >= 0, "%s: cannot create /config", path);
    for (int i = 0; i < ck->n_config; i++)
        IO_TRY_(io_h5_attr_str_(g, ck->config_keys[i], ck->config_vals[i]) == IO_OK,
                "%s: cannot write config key \"%s\" (duplicate or invalid name?)", path,
                ck->config_keys[i]);
    H5Gclose(g);
    g = -1;

    /* /params and /optim */
    for (int i = 0; i < ck->n_tensors; i++) {
        const io_tensor *t = &ck->tensors[i];
        IO_TRY_(t->ndim >= 0 && t->ndim <= IO_MAX_DIMS &&
                t->offset + io_tensor_count_(t) <= ck->n_floats,
                "%s: tensor %s (offset %zu, ndim %d) lies outside the %zu-float buffer", path,
                t->name, t->offset, t->ndim, ck->n_floats);
        free(name);
        name = io_join_("/params", t->name, NULL);
        IO_TRY_(name, "%s: out of memory", path);
        IO_TRY_(io_h5_write_f32_(f, lcpl, name, t, ck->params + t->offset) == IO_OK,
                "%s: cannot write %s (duplicate or invalid name?)", path, name);
        for (int k = 0; k < ck->n_slots; k++) {
            free(name);
            name = io_join_("/optim", ck->slot_names[k], t->name);
            IO_TRY_(name, "%s: out of memory", path);
            IO_TRY_(io_h5_write_f32_(f, lcpl, name, t, ck->slots[k] + t->offset) == IO_OK,
                    "%s: cannot write %s", path, name);
        }
    }
    if (!io_h5_exists_(f, "/params")) {  /* a model without parameters still has the group */
        g = H5Gcreate2(f, "/params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        IO_TRY_(g >= 0, "%s: cannot create /params", path);
        H5Gclose(g);
        g = -1;
    }

    /* /train */
    g = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    IO_TRY_(g >= 0, "%s: cannot create /train", path);
    const io_train_state *ts = &ck->train;
    IO_TRY_(io_h5_attr_i64_(g, "step", ts->step) == IO_OK &&
            io_h5_attr_i64_(g, "epoch", ts->epoch) == IO_OK &&
            io_h5_attr_i64_(g, "tokens_seen", ts->tokens_seen) == IO_OK &&
            io_h5_attr_i64_(g, "examples_seen", ts->examples_seen) == IO_OK &&
            io_h5_attr_i64_(g, "world_size", ts->world_size) == IO_OK &&
            io_h5_attr_i64_(g, "data_pos", ts->data_pos) == IO_OK &&
            io_h5_attr_i64_(g, "best_step", ts->best_step) == IO_OK &&
            io_h5_attr_i64_(g, "bad_evals", ts->bad_evals) == IO_OK &&
            io_h5_attr_f64_(g, "best_metric", ts->best_metric) == IO_OK,
            "%s: cannot write /train attributes", path);
    H5Gclose(g);
    g = -1;

    /* /vocab */
    g = H5Gcreate2(f, "/vocab", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    IO_TRY_(g >= 0, "%s: cannot create /vocab", path);
    H5Gclose(g);
    g = -1;
    for (int i = 0; i < ck->n_vocabs; i++) {
        const io_vocab *v = &ck->vocabs[i];
        free(name);
        name = io_join_("/vocab", ck->vocab_names[i], NULL);
        IO_TRY_(name, "%s: out of memory", path);
        IO_TRY_(io_h5_write_strs_(f, lcpl, name, (const char *const *)v->word,
                                  (hsize_t)v->n) == IO_OK,
                "%s: cannot write %s", path, name);
        char *cname = malloc(strlen(name) + 7);
        IO_TRY_(cname, "%s: out of memory", path);
        sprintf(cname, "%s_count", name);
        int ok = io_h5_write_i64s_(f, lcpl, cname, v->count, (hsize_t)v->n) == IO_OK;
        free(cname);
        IO_TRY_(ok, "%s: cannot write %s_count", path, name);
    }

    /* /metrics: one element per line */
    size_t nl = 0;
    if (ck->metrics && *ck->metrics) {
        mcopy = strdup(ck->metrics);
        IO_TRY_(mcopy, "%s: out of memory", path);
        size_t cap = 1;
        for (const char *p = mcopy; *p; p++) cap += *p == '\n';
        lines = malloc(cap * sizeof *lines);
        IO_TRY_(lines, "%s: out of memory", path);
        char *save = NULL;
        for (char *tok = strtok_r(mcopy, "\n", &save); tok; tok = strtok_r(NULL, "\n", &save))
            lines[nl++] = tok;
    }
    IO_TRY_(io_h5_write_strs_(f, lcpl, "/metrics", lines, (hsize_t)nl) == IO_OK,
            "%s: cannot write /metrics", path);
    rc = IO_OK;
#undef IO_TRY_
done:
    if (g >= 0) H5Gclose(g);
    if (gcpl >= 0) H5Pclose(gcpl);
    if (lcpl >= 0) H5Pclose(lcpl);
    free(name);
    free(lines);
    free(mcopy);
    return rc;
}

static int io_ckpt_write_sums_(hid_t f, const char *path);

int io_ckpt_write(const char *path, const io_ckpt *ck) {
    io_h5_quiet_();
    /* HDF5 writes the file straight from the callers' buffers into <path>.tmp.<pid> through
     * ckpt_vfd.c, which keeps a failed write (full disk, I/O error) to itself: HDF5 never
     * meets it (HDF5 1.10.8 cannot close a file whose flush failed, and crashes at exit),
     * and it is reported here after H5Fclose. Then fsync, rename, fsync(dir); any failure
     * removes the temporary file. */
    char *tmp = io_tmp_name_(path);
    if (!tmp) {
        io_set_error("%s: out of memory", path);
        return IO_ERR_NOMEM;
    }
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        io_set_error("%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return IO_ERR_OPEN;
    }
    int rc = IO_OK, werr = 0;
    hid_t f = -1, fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* STRONG: closing the file closes anything left open, so H5Fclose really ends it.
     * Superblock v0 (lowest bound EARLIEST), as the files written before; our own checksums
     * cover every dataset and the root. */
    if (fapl < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0 ||
        H5Pset_libver_bounds(fapl, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18) < 0 ||
        io_ckpt_vfd_set_(fapl, fd, &werr) != 0 ||
        (f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl)) < 0) {
        io_set_error("%s: HDF5 cannot create the file", tmp);
        rc = IO_ERR_OPEN;
    }
    if (fapl >= 0) H5Pclose(fapl);
    if (rc == IO_OK) rc = io_ckpt_fill_(f, path, ck);
    if (rc == IO_OK) rc = io_ckpt_write_sums_(f, path);
    if (f >= 0 && H5Fclose(f) < 0 && rc == IO_OK) {
        io_set_error("%s: HDF5 cannot close the file", tmp);
        rc = IO_ERR_WRITE;
    }
    if (werr) { /* the disk's reason comes first: HDF5 may have failed for it */
        io_set_error("%s: cannot write: %s", tmp, strerror(werr));
        rc = IO_ERR_WRITE;
    }
    return io_commit_tmp_(fd, tmp, path, rc);
}

/* ---- reading ------------------------------------------------------------------------ */

/* Opens path read-only as a lockstep checkpoint: checks format and version. Unguarded:
 * see io_ckpt_open_. */
static hid_t io_ckpt_open_raw_(const char *path, int *rc) {
    io_h5_quiet_();
    struct stat st;
    if (stat(path, &st) != 0) {
        io_set_error("%s: no such checkpoint: %s", path, strerror(errno));
        *rc = IO_ERR_NOTFOUND;
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        io_set_error("%s: cannot open as HDF5 (truncated, not HDF5, or locked by a writer)",
                     path);
        *rc = IO_ERR_OPEN;
        return -1;
    }
    char *fmt = io_h5_attr_read_str_(f, "format");
    if (!fmt || strcmp(fmt, IO_CKPT_FORMAT) != 0) {
        io_set_error("%s: not a lockstep checkpoint (root attribute format is %s%s%s, "
                     "expected \"%s\")", path, fmt ? "\"" : "", fmt ? fmt : "missing",
                     fmt ? "\"" : "", IO_CKPT_FORMAT);
        free(fmt);
        H5Fclose(f);
        *rc = IO_ERR_FORMAT;
        return -1;
    }
    free(fmt);
    int64_t ver = -1;
    if (!io_h5_attr_read_i64_(f, "format_version", &ver) || ver != IO_CKPT_VERSION) {
        io_set_error("%s: format_version %" PRId64 ", this build reads version %d", path, ver,
                     IO_CKPT_VERSION);
        H5Fclose(f);
        *rc = IO_ERR_VERSION;
        return -1;
    }
    *rc = IO_OK;
    return f;
}

/* Checks that dataset `name` exists with exactly t's shape and a float type. */
static int io_ckpt_check_(hid_t f, const char *path, const char *name, const io_tensor *t,
                          const char *what) {
    hsize_t want[IO_MAX_DIMS];
    io_tensor_dims_(t, want);
    char ws[128], hs[128];
    io_fmt_shape_(ws, sizeof ws, t->ndim, want);
    if (!io_h5_exists_(f, name)) {
        io_set_error("%s: %s %s is missing, model expects shape %s", path, what, name, ws);
        return IO_ERR_SHAPE;
    }
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) {
        io_set_error("%s: %s is not a dataset, model expects shape %s", path, name, ws);
        return IO_ERR_SHAPE;
    }
    int rc = IO_OK;
    hid_t s = H5Dget_space(d), ty = H5Dget_type(d);
    int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
    hsize_t have[H5S_MAX_RANK];
    if (nd < 0 || nd > H5S_MAX_RANK || H5Sget_simple_extent_dims(s, have, NULL) < 0) {
        io_set_error("%s: cannot read the shape of %s", path, name);
        rc = IO_ERR_FORMAT;
    } else {
        int same = nd == t->ndim;
        for (int i = 0; same && i < nd; i++) same = have[i] == want[i];
        if (!same) {
            io_fmt_shape_(hs, sizeof hs, nd, have);
            io_set_error("%s: %s has shape %s, model expects %s", path, name, hs, ws);
            rc = IO_ERR_SHAPE;
        } else if (ty < 0 || H5Tget_class(ty) != H5T_FLOAT) {
            io_set_error("%s: %s is not a floating-point dataset", path, name);
            rc = IO_ERR_FORMAT;
        }
    }
    if (ty >= 0) H5Tclose(ty);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    return rc;
}

static int io_ckpt_read_f32_(hid_t f, const char *path, const char *name, float *out,
                             size_t count) {
    if (count == 0) return IO_OK;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    int ok = d >= 0 && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0;
    if (d >= 0) H5Dclose(d);
    if (!ok) {
        io_set_error("%s: cannot read %s (file damaged or truncated?)", path, name);
        return IO_ERR_READ;
    }
    return IO_OK;
}

typedef struct io_visit_ {
    const io_ckpt *ck;
    char *extra;        /* first dataset name under /params not in the model */
    hsize_t dims[H5S_MAX_RANK];
    int ndim;
} io_visit_;

static herr_t io_visit_params_(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    io_visit_ *v = op;
    if (info->type != H5O_TYPE_DATASET || v->extra) return 0;
    for (int i = 0; i < v->ck->n_tensors; i++)
        if (strcmp(v->ck->tensors[i].name, name) == 0) return 0;
    v->extra = strdup(name);
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d >= 0) {
        hid_t s = H5Dget_space(d);
        v->ndim = s >= 0 ? H5Sget_simple_extent_dims(s, v->dims, NULL) : 0;
        if (v->ndim < 0) v->ndim = 0;
        if (s >= 0) H5Sclose(s);
        H5Dclose(d);
    }
    return 1; /* stop at the first one */
}

/* Reads a 1-D string dataset into a malloc'ed array of malloc'ed strings. */
static int io_h5_read_strs_(hid_t f, const char *path, const char *name, char ***out,
                            size_t *n) {
    *out = NULL;
    *n = 0;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) { io_set_error("%s: %s is missing", path, name); return IO_ERR_FORMAT; }
    int rc = IO_ERR_READ;
    hid_t s = H5Dget_space(d), mt = io_h5_str_type_(), ft = H5Dget_type(d);
    char **tmp = NULL;
    hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    if (np < 0 || mt < 0 || ft < 0 || H5Tget_class(ft) != H5T_STRING ||
        H5Tis_variable_str(ft) <= 0) {
        io_set_error("%s: %s is not a variable-length string dataset", path, name);
        rc = IO_ERR_FORMAT;
        goto done;
    }
    size_t cnt = (size_t)np;
    char **res = calloc(cnt ? cnt : 1, sizeof *res);
    tmp = calloc(cnt ? cnt : 1, sizeof *tmp);
    if (!res || !tmp) { free(res); io_set_error("%s: out of memory", path); rc = IO_ERR_NOMEM; goto done; }
    if (cnt && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, tmp) < 0) {
        free(res);
        io_set_error("%s: cannot read %s", path, name);
        goto done;
    }
    int okc = 1;
    for (size_t i = 0; i < cnt; i++)
        if (!(res[i] = strdup(tmp[i] ? tmp[i] : ""))) okc = 0;
    if (cnt) H5Dvlen_reclaim(mt, s, H5P_DEFAULT, tmp);
    if (!okc) {
        for (size_t i = 0; i < cnt; i++) free(res[i]);
        free(res);
        io_set_error("%s: out of memory", path);
        rc = IO_ERR_NOMEM;
        goto done;
    }
    *out = res;
    *n = cnt;
    rc = IO_OK;
done:
    free(tmp);
    if (ft >= 0) H5Tclose(ft);
    if (mt >= 0) H5Tclose(mt);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    return rc;
}

static void io_free_strs_(char **s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

typedef struct io_names_ { char **names; size_t n, cap; int oom; } io_names_;

static herr_t io_collect_attr_(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)loc;
    (void)info;
    io_names_ *c = op;
    if (c->n == c->cap) {
        size_t nc = c->cap ? 2 * c->cap : 16;
        char **p = realloc(c->names, nc * sizeof *p);
        if (!p) { c->oom = 1; return -1; }
        c->names = p;
        c->cap = nc;
    }
    if (!(c->names[c->n] = strdup(name))) { c->oom = 1; return -1; }
    c->n++;
    return 0;
}

/* Reads /config into parallel arrays (creation order when tracked, else by name). */
static int io_ckpt_read_config_(hid_t f, const char *path, int *n_config, char ***keys,
                                char ***vals) {
    *n_config = 0;
    *keys = NULL;
    *vals = NULL;
    hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
    if (g < 0) { io_set_error("%s: /config is missing", path); return IO_ERR_FORMAT; }
    io_names_ c = {0};
    hsize_t idx = 0;
    if (H5Aiterate2(g, H5_INDEX_CRT_ORDER, H5_ITER_INC, &idx, io_collect_attr_, &c) < 0 && !c.oom) {
        io_free_strs_(c.names, c.n);
        memset(&c, 0, sizeof c);
        idx = 0;
        H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &idx, io_collect_attr_, &c);
    }
    int rc = IO_OK;
    char **v = calloc(c.n ? c.n : 1, sizeof *v);
    if (c.oom || !v) { io_set_error("%s: out of memory", path); rc = IO_ERR_NOMEM; }
    for (size_t i = 0; rc == IO_OK && i < c.n; i++) {
        v[i] = io_h5_attr_read_str_(g, c.names[i]);
        if (!v[i]) {
            io_set_error("%s: /config attribute \"%s\" is not a string", path, c.names[i]);
            rc = IO_ERR_FORMAT;
        }
    }
    H5Gclose(g);
    if (rc != IO_OK) {
        io_free_strs_(c.names, c.n);
        io_free_strs_(v, c.n);
        return rc;
    }
    if (!c.names) c.names = calloc(1, sizeof *c.names);
    *n_config = (int)c.n;
    *keys = c.names;
    *vals = v;
    return IO_OK;
}

static int io_ckpt_read_vocab_(hid_t f, const char *path, const char *vname, io_vocab *v) {
    char *name = io_join_("/vocab", vname, NULL);
    char *cname = name ? malloc(strlen(name) + 7) : NULL;
    if (!cname) { free(name); io_set_error("%s: out of memory", path); return IO_ERR_NOMEM; }
    sprintf(cname, "%s_count", name);
    char **words = NULL;
    size_t n = 0;
    int64_t *counts = NULL;
    int rc = io_h5_exists_(f, name) ? io_h5_read_strs_(f, path, name, &words, &n)
                                    : (io_set_error("%s: vocabulary %s is missing", path, name),
                                       IO_ERR_FORMAT);
    if (rc == IO_OK && n > 0 && io_h5_exists_(f, cname)) {
        counts = calloc(n, sizeof *counts);
        hid_t d = H5Dopen2(f, cname, H5P_DEFAULT);
        hid_t s = d >= 0 ? H5Dget_space(d) : -1;
        int ok = counts && s >= 0 && H5Sget_simple_extent_npoints(s) == (hssize_t)n &&
                 H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, counts) >= 0;
        if (s >= 0) H5Sclose(s);
        if (d >= 0) H5Dclose(d);
        if (!ok) { io_set_error("%s: cannot read %s", path, cname); rc = IO_ERR_FORMAT; }
    }
    if (rc == IO_OK) rc = io_vocab_init(v, 0);
    for (size_t i = 0; rc == IO_OK && i < n; i++) {
        size_t l = strlen(words[i]);
        if (io_vocab_lookup(v, words[i], l) >= 0) {
            io_set_error("%s: %s has the word \"%s\" twice", path, name, words[i]);
            rc = IO_ERR_FORMAT;
        } else if (io_vocab_add(v, words[i], l, counts ? counts[i] : 0) < 0) {
            rc = IO_ERR_NOMEM;
        }
    }
    if (rc != IO_OK) io_vocab_free(v);
    io_free_strs_(words, n);
    free(counts);
    free(cname);
    free(name);
    return rc;
}

/* ---- checksums -------------------------------------------------------------------------- */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint checksums hash native little-endian element bytes"
#endif

#define IO_SUM_BLOCK (1 << 22) /* bytes of a dataset hashed per read */

enum {
    IO_SUM_FOLD = 0,    /* writer: fold the stored dataset checksums into the root's */
    IO_SUM_FULL = 1,    /* read every dataset, compare with its checksum where present */
    IO_SUM_STRINGS = 2  /* read only string datasets (a probe for peek, info, vocabs) */
};

/* Checksum of dataset d (`name`, for messages) into *sum: elements in row-major order,
 * read in blocks of rows along the first dimension so memory stays bounded. Numbers are
 * read in the native type matching the stored one (the same bytes on this little-endian
 * host); variable-length strings as their bytes and a NUL. */
static int io_h5_dataset_sum_(hid_t d, const char *path, const char *name, int alg,
                              uint64_t *sum) {
    hid_t s = H5Dget_space(d), ft = H5Dget_type(d), mt = -1, ms = -1;
    char *buf = NULL;
    int rc = IO_ERR_FORMAT;
    io_hasher_ h;
    io_hash_init_(&h, alg);
    hsize_t dims[H5S_MAX_RANK];
    int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
    hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    int vstr = ft >= 0 && H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0;
    int num = ft >= 0 && (H5Tget_class(ft) == H5T_INTEGER || H5Tget_class(ft) == H5T_FLOAT);
    if (nd < 0 || nd > H5S_MAX_RANK || np < 0 || H5Sget_simple_extent_dims(s, dims, NULL) < 0) {
        io_set_error("%s: cannot read the extent of /%s (corrupted)", path, name);
        goto done;
    }
    if (!vstr && !num) {
        io_set_error("%s: /%s is neither numbers nor variable-length strings", path, name);
        goto done;
    }
    mt = vstr ? io_h5_str_type_() : H5Tget_native_type(ft, H5T_DIR_ASCEND);
    size_t esize = mt >= 0 ? H5Tget_size(mt) : 0;
    if (esize == 0 || (num && esize != H5Tget_size(ft))) {
        io_set_error("%s: /%s has an unsupported element type", path, name);
        goto done;
    }
    if (np == 0) {
        rc = IO_OK;
        goto done;
    }
    hsize_t rows = nd > 0 ? dims[0] : 1, row = 1;
    for (int i = 1; i < nd; i++) row *= dims[i];
    hsize_t per = IO_SUM_BLOCK / (row * esize);
    if (per < 1) per = 1;
    if (per > rows) per = rows;
    buf = malloc((size_t)(per * row) * esize);
    if (!buf) {
        io_set_error("%s: out of memory checking /%s", path, name);
        rc = IO_ERR_NOMEM;
        goto done;
    }
    for (hsize_t r = 0; r < rows; r += per) {
        hsize_t k = rows - r < per ? rows - r : per, cnt = k * row;
        hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
        for (int i = 0; i < nd; i++) count[i] = dims[i];
        start[0] = r;
        count[0] = k;
        if (ms >= 0) H5Sclose(ms);
        ms = H5Screate_simple(1, &cnt, NULL);
        int ok = ms >= 0 && (nd == 0 || H5Sselect_hyperslab(s, H5S_SELECT_SET, start, NULL,
                                                             count, NULL) >= 0);
        if (ok) ok = H5Dread(d, mt, nd == 0 ? H5S_ALL : ms, nd == 0 ? H5S_ALL : s, H5P_DEFAULT,
                             buf) >= 0;
        if (!ok) {
            io_set_error("%s: cannot read /%s (damaged or truncated)", path, name);
            rc = IO_ERR_READ;
            goto done;
        }
        if (num) {
            io_hash_update_(&h, buf, (size_t)cnt * esize);
        } else {
            char **str = (char **)(void *)buf;
            for (hsize_t i = 0; i < cnt; i++)
                io_hash_update_(&h, str[i] ? str[i] : "", (str[i] ? strlen(str[i]) : 0) + 1);
            H5Dvlen_reclaim(mt, ms, H5P_DEFAULT, buf);
        }
    }
    rc = IO_OK;
done:
    if (rc == IO_OK) *sum = io_hash_final_(&h);
    free(buf);
    if (ms >= 0) H5Sclose(ms);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (s >= 0) H5Sclose(s);
    return rc;
}

typedef struct io_verify_ {
    const char *path;
    uint64_t fsize;   /* bytes in the file: no dataset can hold more */
    int mode;         /* IO_SUM_* */
    int need;         /* every dataset must carry a checksum (root checksum present) */
    int alg;          /* IO_HASH_* of the file */
    io_hasher_ root;    /* running root checksum */
    int64_t n_checked;
    int rc;           /* first failure; the walk goes on (a probe reads everything) */
    char msg[1024];
} io_verify_;

static void io_verify_fail_(io_verify_ *v, int rc) {
    if (v->rc != IO_OK) return;
    v->rc = rc;
    snprintf(v->msg, sizeof v->msg, "%s", io_error());
}

static herr_t io_verify_visit_(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    io_verify_ *v = op;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d < 0) {
        io_set_error("%s: cannot open dataset /%s (corrupted)", v->path, name);
        io_verify_fail_(v, IO_ERR_FORMAT);
        return 0;
    }
    uint64_t want = 0, have = 0;
    int has = io_h5_attr_read_u64_(d, "checksum", &want);
    hid_t s = H5Dget_space(d), t = H5Dget_type(d);
    hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    size_t es = t >= 0 ? H5Tget_size(t) : 0;
    int vstr = t >= 0 && H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0;
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (v->mode != IO_SUM_FOLD && (np < 0 || es == 0 || (uint64_t)np > v->fsize / es)) {
        io_set_error("%s: /%s claims more data than the %llu-byte file holds (corrupted)",
                     v->path, name, (unsigned long long)v->fsize);
        io_verify_fail_(v, IO_ERR_FORMAT);
    } else if (!has && H5Aexists(d, "checksum") > 0) {
        io_set_error("%s: /%s has a malformed checksum attribute (corrupted)", v->path, name);
        io_verify_fail_(v, IO_ERR_FORMAT);
    } else if (!has && v->need && (v->mode == IO_SUM_FULL || (v->mode == IO_SUM_STRINGS && vstr))) {
        io_set_error("%s: /%s has no checksum although the file has one (altered)", v->path,
                     name);
        io_verify_fail_(v, IO_ERR_FORMAT);
    }
    if (v->mode == IO_SUM_FULL || (v->mode == IO_SUM_STRINGS && vstr)) {
        int rc = io_h5_dataset_sum_(d, v->path, name, v->alg, &have);
        if (rc != IO_OK) {
            io_verify_fail_(v, rc);
        } else if (has && have != want) {
            io_set_error("%s: /%s has checksum %016llx, expected %016llx (corrupted)", v->path,
                         name, (unsigned long long)have, (unsigned long long)want);
            io_verify_fail_(v, IO_ERR_FORMAT);
        }
        v->n_checked += has;
    }
    H5Dclose(d);
    io_hash_update_(&v->root, name, strlen(name) + 1);
    io_hash_u64le_(&v->root, want);
    return 0;
}

/* Checksum of the nine /train attributes (8 bytes each, io_train_state order). */
static int io_ckpt_train_sum_(hid_t f, const char *path, int alg, uint64_t *out) {
    static const char *const ints[] = {"step", "epoch", "tokens_seen", "examples_seen",
                                       "world_size", "data_pos", NULL, "best_step", "bad_evals"};
    hid_t g = io_h5_exists_(f, "/train") ? H5Gopen2(f, "/train", H5P_DEFAULT) : -1;
    int ok = g >= 0;
    io_hasher_ h;
    io_hash_init_(&h, alg);
    for (int i = 0; ok && i < 9; i++) {
        uint64_t x = 0;
        if (ints[i]) {
            int64_t v = 0;
            ok = io_h5_attr_read_i64_(g, ints[i], &v);
            x = (uint64_t)v;
        } else {
            double v = 0;
            ok = io_h5_attr_read_f64_(g, "best_metric", &v);
            memcpy(&x, &v, sizeof x);
        }
        io_hash_u64le_(&h, x);
    }
    if (g >= 0) H5Gclose(g);
    if (!ok) {
        io_set_error("%s: /train is missing or lacks one of its attributes", path);
        return IO_ERR_FORMAT;
    }
    *out = io_hash_final_(&h);
    return IO_OK;
}

/* Checksum of the strings read before parameters: /config (key NUL value NUL, creation
 * order), then the root attributes model and created (each with a NUL). */
static int io_ckpt_config_sum_(hid_t f, const char *path, int alg, uint64_t *out) {
    int n = 0;
    char **keys = NULL, **vals = NULL;
    int rc = io_ckpt_read_config_(f, path, &n, &keys, &vals);
    if (rc != IO_OK) return rc;
    io_hasher_ h;
    io_hash_init_(&h, alg);
    for (int i = 0; i < n; i++) {
        io_hash_update_(&h, keys[i], strlen(keys[i]) + 1);
        io_hash_update_(&h, vals[i], strlen(vals[i]) + 1);
    }
    io_free_strs_(keys, (size_t)n);
    io_free_strs_(vals, (size_t)n);
    const char *names[2] = {"model", "created"};
    for (int i = 0; i < 2; i++) {
        char *v = io_h5_attr_read_str_(f, names[i]);
        if (!v) {
            io_set_error("%s: root attribute %s is missing", path, names[i]);
            return IO_ERR_FORMAT;
        }
        io_hash_update_(&h, v, strlen(v) + 1);
        free(v);
    }
    *out = io_hash_final_(&h);
    return IO_OK;
}

/* Walks every dataset of the open file f in mode (IO_SUM_*) with checksum algorithm alg
 * (IO_HASH_*): *root is the running hash of the datasets' (path, checksum) pairs, to be
 * continued by the caller. First failure in io_error(). */
static int io_ckpt_sum_(hid_t f, const char *path, int mode, int need, int alg, io_hasher_ *root,
                        int64_t *n_checked) {
    hsize_t fsize = 0;
    if (H5Fget_filesize(f, &fsize) < 0) {
        io_set_error("%s: cannot get the file size", path);
        return IO_ERR_READ;
    }
    io_verify_ v = {.path = path, .fsize = fsize, .mode = mode, .need = need, .alg = alg};
    io_hash_init_(&v.root, alg);
    if (H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, io_verify_visit_, &v) < 0) {
        io_set_error("%s: cannot walk the file's objects (corrupted)", path);
        io_verify_fail_(&v, IO_ERR_FORMAT);
    }
    if (n_checked) *n_checked = v.n_checked;
    if (v.rc != IO_OK) {
        io_set_error("%s", v.msg);
        return v.rc;
    }
    *root = v.root;
    return IO_OK;
}

/* Computes and writes the root attributes checksum, config_checksum, train_checksum and
 * checksum_algorithm of the open file f (the writer, after everything else). */
static int io_ckpt_write_sums_(hid_t f, const char *path) {
    uint64_t cs = 0, ts = 0;
    io_hasher_ root;
    int rc = io_ckpt_sum_(f, path, IO_SUM_FOLD, 1, IO_HASH_MULROT4X64, &root, NULL);
    if (rc == IO_OK) rc = io_ckpt_config_sum_(f, path, IO_HASH_MULROT4X64, &cs);
    if (rc == IO_OK) rc = io_ckpt_train_sum_(f, path, IO_HASH_MULROT4X64, &ts);
    if (rc != IO_OK) return rc;
    io_hash_u64le_(&root, cs);
    io_hash_u64le_(&root, ts);
    if (io_h5_attr_u64_(f, "config_checksum", cs) != IO_OK ||
        io_h5_attr_u64_(f, "train_checksum", ts) != IO_OK ||
        io_h5_attr_u64_(f, "checksum", io_hash_final_(&root)) != IO_OK ||
        io_h5_attr_str_(f, "checksum_algorithm", IO_CKPT_CHECKSUM) != IO_OK) {
        io_set_error("%s: cannot write the root checksums", path);
        return IO_ERR_WRITE;
    }
    return IO_OK;
}

static int io_sum_mismatch_(const char *path, const char *what, uint64_t have, uint64_t want) {
    io_set_error("%s: %s has checksum %016llx, expected %016llx (corrupted)", path, what,
                 (unsigned long long)have, (unsigned long long)want);
    return IO_ERR_FORMAT;
}

/* Verifies the checksums of the open checkpoint f (see the top of this file). Mode
 * IO_SUM_FULL: everything. IO_SUM_STRINGS: what io_ckpt_peek and io_ckpt_read_vocabs
 * read: the string datasets and the configuration (not the root's fold). */
static int io_ckpt_verify_(hid_t f, const char *path, int mode, int64_t *n_checked,
                           int *has_root, char *alg_name, size_t alg_len) {
    uint64_t want = 0, want_c = 0, want_t = 0, have_c = 0, have_t = 0;
    io_hasher_ have;
    int alg = IO_HASH_FNV1A64; /* files without a root checksum predate the algorithm name */
    int need = io_h5_attr_read_u64_(f, "checksum", &want);
    if (has_root) *has_root = need;
    if (!need && H5Aexists(f, "checksum") > 0) {
        io_set_error("%s: root attribute checksum is malformed (corrupted)", path);
        return IO_ERR_FORMAT;
    }
    if (need && (!io_h5_attr_read_u64_(f, "config_checksum", &want_c) ||
                 !io_h5_attr_read_u64_(f, "train_checksum", &want_t))) {
        io_set_error("%s: root attributes config_checksum or train_checksum are missing "
                     "(corrupted)", path);
        return IO_ERR_FORMAT;
    }
    if (need) { /* verified with the algorithm the file names */
        char *name = io_h5_attr_read_str_(f, "checksum_algorithm");
        alg = io_hash_alg_(name);
        if (alg < 0)
            io_set_error("%s: checksum algorithm \"%s\", this build knows \"%s\" and \"%s\"",
                         path, name ? name : "(missing)", IO_CKPT_CHECKSUM,
                         IO_CKPT_CHECKSUM_FNV1A64);
        free(name);
        if (alg < 0) return IO_ERR_VERSION;
    }
    if (alg_name)
        snprintf(alg_name, alg_len, "%s",
                 alg == IO_HASH_FNV1A64 ? IO_CKPT_CHECKSUM_FNV1A64 : IO_CKPT_CHECKSUM);
    /* strings first: the configuration and root strings are read by everyone */
    int rc = io_ckpt_config_sum_(f, path, alg, &have_c);
    if (rc == IO_OK && need && have_c != want_c)
        rc = io_sum_mismatch_(path, "/config (with the root attributes model, created)", have_c,
                              want_c);
    if (rc == IO_OK) rc = io_ckpt_sum_(f, path, mode, need, alg, &have, n_checked);
    if (rc != IO_OK || mode == IO_SUM_STRINGS || !need) return rc;
    if ((rc = io_ckpt_train_sum_(f, path, alg, &have_t)) != IO_OK) return rc;
    if (have_t != want_t) return io_sum_mismatch_(path, "/train", have_t, want_t);
    io_hash_u64le_(&have, have_c);
    io_hash_u64le_(&have, have_t);
    uint64_t root = io_hash_final_(&have);
    if (root != want)
        return io_sum_mismatch_(path, "the root (over every dataset's checksum)", root, want);
    return IO_OK;
}

/* ---- opening under a guard ---------------------------------------------------------------
 * HDF5 trusts parts of a file that carry no checksum of its own (the global heap that
 * holds every variable-length string, raw data addresses): a damaged byte there can make
 * the library read out of bounds and crash the process (seen with 1.10.8 in
 * test_ckpt_checksum's byte-flip sweep). So a checkpoint is first opened and read in a
 * forked child: a crash or a hang there becomes an error here. The child also does the
 * checksum verification (IO_SUM_FULL) or a probe of the strings (IO_SUM_STRINGS) and
 * reports the outcome through a pipe. The child ends with _exit, so no HDF5 or atexit
 * handler of the parent runs twice. If fork fails, or LOCKSTEP_CKPT_GUARD=0 (debugging,
 * fuzzing files HDF5 wrote itself), the checks run in this process. */

typedef struct io_probe_ {
    int open_rc;      /* format and version checks, or the child's crash */
    int verify_rc;    /* checksums (IO_SUM_FULL) */
    int has_root;
    int64_t n_checked;
    char alg[16];     /* checksum algorithm the file was verified with */
    char open_msg[1024], verify_msg[1024];
} io_probe_;

static void io_probe_run_(const char *path, int mode, io_probe_ *pr) {
    memset(pr, 0, sizeof *pr);
    hid_t f = io_ckpt_open_raw_(path, &pr->open_rc);
    if (f < 0) {
        snprintf(pr->open_msg, sizeof pr->open_msg, "%s", io_error());
        return;
    }
    pr->verify_rc = io_ckpt_verify_(f, path, mode, &pr->n_checked, &pr->has_root, pr->alg,
                                    sizeof pr->alg);
    if (pr->verify_rc != IO_OK) snprintf(pr->verify_msg, sizeof pr->verify_msg, "%s", io_error());
    H5Fclose(f);
}

/* Milliseconds a child may take to read a file of `bytes`: generous (slow disks, big
 * files), 60 s + 1 s per 20 MB; LOCKSTEP_CKPT_CHECK_TIMEOUT=<seconds> replaces the 60. */
static int io_probe_timeout_ms_(off_t bytes) {
    const char *env = getenv("LOCKSTEP_CKPT_CHECK_TIMEOUT");
    double base = env && atof(env) > 0 ? atof(env) : 60.0;
    double s = base + (double)bytes / 20e6;
    return s > 2e6 ? 2000000000 : (int)(s * 1000.0);
}

static void io_probe_guarded_(const char *path, int mode, off_t bytes, io_probe_ *pr) {
    int fds[2];
    pid_t pid = -1;
    const char *guard = getenv("LOCKSTEP_CKPT_GUARD");
    if (guard && strcmp(guard, "0") == 0) { /* asked to check in this process */
        io_probe_run_(path, mode, pr);
        return;
    }
    if (pipe(fds) == 0) {
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
            close(fds[0]);
            close(fds[1]);
        }
    }
    if (pid < 0) { /* no child: check in this process, unguarded */
        io_probe_run_(path, mode, pr);
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        io_probe_run_(path, mode, pr);
        ssize_t w = write(fds[1], pr, sizeof *pr);
        _exit(w == (ssize_t)sizeof *pr ? 0 : 1);
    }
    close(fds[1]);
    memset(pr, 0, sizeof *pr);
    size_t got = 0;
    int timed_out = 0;
    struct pollfd pf = {.fd = fds[0], .events = POLLIN};
    while (got < sizeof *pr) {
        int r = poll(&pf, 1, io_probe_timeout_ms_(bytes));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) { timed_out = 1; break; }
        if (r < 0) break;
        ssize_t n = read(fds[0], (char *)pr + got, sizeof *pr - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fds[0]);
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (got == sizeof *pr && WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
    memset(pr, 0, sizeof *pr);
    pr->open_rc = IO_ERR_FORMAT;
    if (timed_out)
        snprintf(pr->open_msg, sizeof pr->open_msg,
                 "%s: reading it did not finish in %d s (damaged file?)", path,
                 io_probe_timeout_ms_(bytes) / 1000);
    else if (WIFSIGNALED(status))
        snprintf(pr->open_msg, sizeof pr->open_msg,
                 "%s: reading it crashed the HDF5 library (signal %d): the file is damaged",
                 path, WTERMSIG(status));
    else
        snprintf(pr->open_msg, sizeof pr->open_msg, "%s: the checking process failed", path);
}

/* Opens path as a lockstep checkpoint after a guarded probe in mode (IO_SUM_FULL or
 * IO_SUM_STRINGS). A checksum failure refuses the file, unless defer and the file was
 * only altered (a dataset replaced by a tool, without a checksum): then the outcome is
 * left in *pr for the caller to report after its own checks (so that a checkpoint of
 * another shape is named as such). */
static hid_t io_ckpt_open_(const char *path, int *rc, int mode, int defer, io_probe_ *pr) {
    io_h5_quiet_();
    struct stat st;
    if (stat(path, &st) != 0) {
        io_set_error("%s: no such checkpoint: %s", path, strerror(errno));
        *rc = IO_ERR_NOTFOUND;
        return -1;
    }
    io_probe_guarded_(path, mode, st.st_size, pr);
    if (pr->open_rc != IO_OK) {
        io_set_error("%s", pr->open_msg);
        *rc = pr->open_rc;
        return -1;
    }
    /* Deferred only when the file was altered by a tool (a dataset without a checksum),
     * never when bytes are damaged: then this process does not open it at all. */
    int altered = strstr(pr->verify_msg, "checksum although the file has one (altered)") != NULL;
    if (pr->verify_rc != IO_OK && (!defer || !altered)) {
        io_set_error("%s", pr->verify_msg);
        *rc = pr->verify_rc;
        return -1;
    }
    return io_ckpt_open_raw_(path, rc);
}

int io_ckpt_verify(const char *path) {
    int rc;
    io_probe_ pr;
    hid_t f = io_ckpt_open_(path, &rc, IO_SUM_FULL, 0, &pr);
    if (f < 0) return rc;
    H5Fclose(f);
    io_clear_error_();
    return IO_OK;
}

int io_ckpt_read(const char *path, io_ckpt *ck) {
    int rc;
    char *model = NULL, *pname = NULL;
    ck->n_config = 0;
    ck->config_keys = ck->config_vals = NULL;
    ck->metrics_read = NULL;
    io_probe_ pr;
    hid_t f = io_ckpt_open_(path, &rc, IO_SUM_FULL, 1, &pr);
    if (f < 0) return rc;

    /* Names and shapes come first: they live in object headers, which HDF5 checksums
     * itself, so they are safe to read before the strings are known to be intact. */
    /* 1. every expected tensor (and optimizer slot) exists with the exact shape */
    for (int i = 0; i < ck->n_tensors; i++) {
        const io_tensor *t = &ck->tensors[i];
        if (t->offset + io_tensor_count_(t) > ck->n_floats) {
            io_set_error("%s: tensor %s lies outside the %zu-float buffer", path, t->name,
                         ck->n_floats);
            rc = IO_ERR_SHAPE;
            goto done;
        }
        free(pname);
        if (!(pname = io_join_("/params", t->name, NULL))) { rc = IO_ERR_NOMEM; goto done; }
        if ((rc = io_ckpt_check_(f, path, pname, t, "parameter")) != IO_OK) goto done;
    }
    /* 2. nothing under /params that the model does not have */
    if (io_h5_exists_(f, "/params")) {
        hid_t g = H5Gopen2(f, "/params", H5P_DEFAULT);
        io_visit_ vis = {.ck = ck};
        if (g >= 0) {
            H5Ovisit(g, H5_INDEX_NAME, H5_ITER_INC, io_visit_params_, &vis);
            H5Gclose(g);
        }
        if (vis.extra) {
            char hs[128];
            io_fmt_shape_(hs, sizeof hs, vis.ndim, vis.dims);
            io_set_error("%s: unexpected parameter /params/%s with shape %s, not in model \"%s\"",
                         path, vis.extra, hs, ck->model ? ck->model : "(any)");
            free(vis.extra);
            rc = IO_ERR_SHAPE;
            goto done;
        }
    } else if (ck->n_tensors > 0) {
        io_set_error("%s: /params is missing", path);
        rc = IO_ERR_FORMAT;
        goto done;
    }
    for (int k = 0; k < ck->n_slots; k++)
        for (int i = 0; i < ck->n_tensors; i++) {
            free(pname);
            pname = io_join_("/optim", ck->slot_names[k], ck->tensors[i].name);
            if (!pname) { rc = IO_ERR_NOMEM; goto done; }
            rc = io_ckpt_check_(f, path, pname, &ck->tensors[i], "optimizer slot");
            if (rc != IO_OK) goto done;
        }
    /* 3. checksums (verified by the probe), before anything is allocated or written; after
     * the names and shapes so that a disagreeing checkpoint is named as such */
    if (pr.verify_rc != IO_OK) {
        io_set_error("%s", pr.verify_msg);
        rc = pr.verify_rc;
        goto done;
    }
    model = io_h5_attr_read_str_(f, "model");
    if (!model || (ck->model && strcmp(model, ck->model) != 0)) {
        io_set_error("%s: checkpoint is of model \"%s\", expected \"%s\"", path,
                     model ? model : "(missing)", ck->model ? ck->model : "");
        rc = IO_ERR_SHAPE;
        goto done;
    }
    /* 4. train state */
    hid_t g = H5Gopen2(f, "/train", H5P_DEFAULT);
    io_train_state ts = {0};
    int ok = g >= 0 && io_h5_attr_read_i64_(g, "step", &ts.step) &&
             io_h5_attr_read_i64_(g, "epoch", &ts.epoch) &&
             io_h5_attr_read_i64_(g, "tokens_seen", &ts.tokens_seen) &&
             io_h5_attr_read_i64_(g, "examples_seen", &ts.examples_seen) &&
             io_h5_attr_read_i64_(g, "world_size", &ts.world_size) &&
             io_h5_attr_read_i64_(g, "data_pos", &ts.data_pos) &&
             io_h5_attr_read_i64_(g, "best_step", &ts.best_step) &&
             io_h5_attr_read_i64_(g, "bad_evals", &ts.bad_evals) &&
             io_h5_attr_read_f64_(g, "best_metric", &ts.best_metric);
    if (g >= 0) H5Gclose(g);
    if (!ok) {
        io_set_error("%s: /train is missing or lacks one of its attributes", path);
        rc = IO_ERR_FORMAT;
        goto done;
    }
    /* 5. configuration, vocabularies, metrics (allocations undone on failure) */
    if ((rc = io_ckpt_read_config_(f, path, &ck->n_config, &ck->config_keys,
                                   &ck->config_vals)) != IO_OK)
        goto done;
    for (int i = 0; i < ck->n_vocabs; i++) {
        if ((rc = io_ckpt_read_vocab_(f, path, ck->vocab_names[i], &ck->vocabs[i])) != IO_OK) {
            for (int j = 0; j < i; j++) io_vocab_free(&ck->vocabs[j]);
            io_ckpt_release(ck);
            goto done;
        }
    }
    if (io_h5_exists_(f, "/metrics")) {
        char **lines = NULL;
        size_t nl = 0;
        if ((rc = io_h5_read_strs_(f, path, "/metrics", &lines, &nl)) != IO_OK) goto vocab_fail;
        if (nl > 0) {
            size_t total = 1;
            for (size_t i = 0; i < nl; i++) total += strlen(lines[i]) + 1;
            ck->metrics_read = malloc(total);
            if (!ck->metrics_read) { io_free_strs_(lines, nl); rc = IO_ERR_NOMEM; goto vocab_fail; }
            size_t p = 0;
            for (size_t i = 0; i < nl; i++) {
                size_t l = strlen(lines[i]);
                memcpy(ck->metrics_read + p, lines[i], l);
                p += l;
                ck->metrics_read[p++] = '\n';
            }
            ck->metrics_read[p] = '\0';
        }
        io_free_strs_(lines, nl);
    }
    /* 6. the numbers themselves */
    for (int i = 0; i < ck->n_tensors; i++) {
        const io_tensor *t = &ck->tensors[i];
        size_t cnt = io_tensor_count_(t);
        free(pname);
        if (!(pname = io_join_("/params", t->name, NULL))) { rc = IO_ERR_NOMEM; goto vocab_fail; }
        if ((rc = io_ckpt_read_f32_(f, path, pname, ck->params + t->offset, cnt)) != IO_OK)
            goto vocab_fail;
        for (int k = 0; k < ck->n_slots; k++) {
            free(pname);
            pname = io_join_("/optim", ck->slot_names[k], t->name);
            if (!pname) { rc = IO_ERR_NOMEM; goto vocab_fail; }
            if ((rc = io_ckpt_read_f32_(f, path, pname, ck->slots[k] + t->offset, cnt)) != IO_OK)
                goto vocab_fail;
        }
    }
    ck->train = ts;
    rc = IO_OK;
    goto done;
vocab_fail:
    for (int j = 0; j < ck->n_vocabs; j++) io_vocab_free(&ck->vocabs[j]);
    io_ckpt_release(ck);
done:
    free(pname);
    free(model);
    H5Fclose(f);
    return rc;
}

void io_ckpt_release(io_ckpt *ck) {
    if (!ck) return;
    if (ck->config_keys || ck->config_vals) {
        for (int i = 0; i < ck->n_config; i++) {
            if (ck->config_keys) free(ck->config_keys[i]);
            if (ck->config_vals) free(ck->config_vals[i]);
        }
    }
    free(ck->config_keys);
    free(ck->config_vals);
    ck->config_keys = ck->config_vals = NULL;
    ck->n_config = 0;
    free(ck->metrics_read);
    ck->metrics_read = NULL;
}

int io_ckpt_peek(const char *path, char **model, int *n_config, char ***keys, char ***vals) {
    int rc;
    *model = NULL;
    io_probe_ pr;
    hid_t f = io_ckpt_open_(path, &rc, IO_SUM_STRINGS, 0, &pr);
    if (f < 0) return rc;
    *model = io_h5_attr_read_str_(f, "model");
    if (!*model) {
        io_set_error("%s: root attribute model is missing", path);
        rc = IO_ERR_FORMAT;
    } else {
        rc = io_ckpt_read_config_(f, path, n_config, keys, vals);
        if (rc != IO_OK) { free(*model); *model = NULL; }
    }
    H5Fclose(f);
    return rc;
}

/* ---- info ----------------------------------------------------------------------------- */

/* The reason in io_error() without a leading "<p>: " (the warning names p itself). */
static const char *io_reason_(const char *p) {
    const char *e = io_error();
    size_t n = strlen(p);
    if (strncmp(e, p, n) == 0 && e[n] == ':' && e[n + 1] == ' ') return e + n + 2;
    return e;
}

typedef struct io_info_ { FILE *out; int64_t n_params, n_tensors, bytes; } io_info_;

static herr_t io_info_visit_(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    io_info_ *in = op;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t s = H5Dget_space(d), t = H5Dget_type(d);
    hsize_t dims[H5S_MAX_RANK];
    int nd = s >= 0 ? H5Sget_simple_extent_dims(s, dims, NULL) : -1;
    if (nd >= 0) {
        char sh[128];
        io_fmt_shape_(sh, sizeof sh, nd, dims);
        int64_t cnt = 1;
        for (int i = 0; i < nd; i++) cnt *= (int64_t)dims[i];
        fprintf(in->out, "  %-40s %-20s %12" PRId64 "\n", name, sh, cnt);
        in->n_params += cnt;
        in->n_tensors++;
        in->bytes += cnt * (int64_t)(t >= 0 ? H5Tget_size(t) : 4);
    }
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    return 0;
}

int io_ckpt_info(const char *path, void *file) {
    FILE *out = file;
    int rc;
    io_probe_ pr;
    hid_t f = io_ckpt_open_(path, &rc, IO_SUM_FULL, 0, &pr);
    if (f < 0) return rc;
    char *model = io_h5_attr_read_str_(f, "model");
    char *created = io_h5_attr_read_str_(f, "created");
    char *format = io_h5_attr_read_str_(f, "format");
    int64_t version = -1;
    io_h5_attr_read_i64_(f, "format_version", &version);
    struct stat fst;
    double mib = stat(path, &fst) == 0 ? (double)fst.st_size / 1048576.0 : -1.0;
    fprintf(out, "checkpoint: %s (%.2f MiB)\nformat: %s version %" PRId64 ", created %s\n"
                 "model: %s\n",
            path, mib, format ? format : "?", version, created ? created : "?",
            model ? model : "?");

    /* training state */
    io_train_state ts = {.step = -1, .epoch = -1, .world_size = -1, .best_step = -1};
    int has_best = 0;
    hid_t g = H5Gopen2(f, "/train", H5P_DEFAULT);
    if (g >= 0) {
        io_h5_attr_read_i64_(g, "step", &ts.step);
        io_h5_attr_read_i64_(g, "epoch", &ts.epoch);
        io_h5_attr_read_i64_(g, "world_size", &ts.world_size);
        io_h5_attr_read_i64_(g, "examples_seen", &ts.examples_seen);
        io_h5_attr_read_i64_(g, "tokens_seen", &ts.tokens_seen);
        io_h5_attr_read_i64_(g, "data_pos", &ts.data_pos);
        io_h5_attr_read_i64_(g, "best_step", &ts.best_step);
        io_h5_attr_read_i64_(g, "bad_evals", &ts.bad_evals);
        has_best = io_h5_attr_read_f64_(g, "best_metric", &ts.best_metric);
        H5Gclose(g);
    }
    fprintf(out, "step: %" PRId64 "  epoch %" PRId64 "  written by %" PRId64 " rank%s\n",
            ts.step, ts.epoch, ts.world_size, ts.world_size == 1 ? "" : "s");
    fprintf(out, "seen: %" PRId64 " examples, %" PRId64 " tokens; data position %" PRId64
                 "\n",
            ts.examples_seen, ts.tokens_seen, ts.data_pos);
    if (has_best && ts.best_step >= 0)
        fprintf(out, "best: validation metric %.6g (higher is better) at step %" PRId64
                     " (%" PRId64 " evaluations without improvement since)\n",
                ts.best_metric, ts.best_step, ts.bad_evals);
    else
        fprintf(out, "best: no validation yet\n");

    /* parameters, one line each */
    fprintf(out, "parameters:\n  %-40s %-20s %12s\n", "name", "shape", "count");
    io_info_ in = {.out = out};
    if (io_h5_exists_(f, "/params") && (g = H5Gopen2(f, "/params", H5P_DEFAULT)) >= 0) {
        H5Ovisit(g, H5_INDEX_NAME, H5_ITER_INC, io_info_visit_, &in);
        H5Gclose(g);
    }
    fprintf(out, "total: %" PRId64 " tensors, %" PRId64 " parameters, %" PRId64
                 " bytes (%.2f MiB)\n",
            in.n_tensors, in.n_params, in.bytes, (double)in.bytes / 1048576.0);

    /* optimizer slots: each has the layout of /params */
    if (io_h5_exists_(f, "/optim") && (g = H5Gopen2(f, "/optim", H5P_DEFAULT)) >= 0) {
        H5G_info_t gi;
        if (H5Gget_info(g, &gi) >= 0) {
            fprintf(out, "optimizer: %d slot%s", (int)gi.nlinks, gi.nlinks == 1 ? "" : "s");
            for (hsize_t i = 0; i < gi.nlinks; i++) {
                char name[64] = "?";
                H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                                   H5P_DEFAULT);
                fprintf(out, "%s%s", i ? ", " : " (", name);
            }
            fprintf(out, "%s, %" PRId64 " bytes\n", gi.nlinks ? ")" : "",
                    (int64_t)gi.nlinks * in.bytes);
        }
        H5Gclose(g);
    } else {
        fprintf(out, "optimizer: no state\n");
    }

    /* vocabularies: /vocab/<side> string datasets (beside <side>_count) */
    if (io_h5_exists_(f, "/vocab") && (g = H5Gopen2(f, "/vocab", H5P_DEFAULT)) >= 0) {
        H5G_info_t gi;
        int shown = 0;
        if (H5Gget_info(g, &gi) >= 0) {
            fprintf(out, "vocabulary:");
            for (hsize_t i = 0; i < gi.nlinks; i++) {
                char name[64] = "";
                if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                                       H5P_DEFAULT) < 0)
                    continue;
                size_t ln = strlen(name);
                if (ln > 6 && strcmp(name + ln - 6, "_count") == 0) continue;
                hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
                if (d < 0) continue;
                hid_t sp = H5Dget_space(d);
                hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
                fprintf(out, "%s %s %lld", shown++ ? "," : "", name, (long long)n);
                if (sp >= 0) H5Sclose(sp);
                H5Dclose(d);
            }
            fprintf(out, "%s\n", shown ? " entries" : " none");
        }
        H5Gclose(g);
    }

    /* evaluation history */
    if (io_h5_exists_(f, "/metrics")) {
        hid_t d = H5Dopen2(f, "/metrics", H5P_DEFAULT);
        if (d >= 0) {
            hid_t sp = H5Dget_space(d);
            hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
            fprintf(out, "metrics: %lld evaluation record%s in /metrics\n", (long long)n,
                    n == 1 ? "" : "s");
            if (sp >= 0) H5Sclose(sp);
            H5Dclose(d);
        }
    }

    if (pr.has_root)
        fprintf(out, "checksums: verified (%" PRId64 " datasets, %s)\n", pr.n_checked, pr.alg);
    else
        fprintf(out, "checksums: none (written before checksums existed)\n");

    /* configuration as given */
    int nc = 0;
    char **keys = NULL, **vals = NULL;
    if (io_ckpt_read_config_(f, path, &nc, &keys, &vals) == IO_OK) {
        fprintf(out, "config: %d keys\n", nc);
        for (int i = 0; i < nc; i++) fprintf(out, "  %s = %s\n", keys[i], vals[i]);
        io_free_strs_(keys, (size_t)nc);
        io_free_strs_(vals, (size_t)nc);
    }
    free(format);
    free(model);
    free(created);
    H5Fclose(f);
    return IO_OK;
}

/* ---- run directories ------------------------------------------------------------------ */

/* Step of "ckpt_<digits>.h5", or -1 for any other name (temp files included). */
static int64_t io_ckpt_step_(const char *name) {
    if (strncmp(name, "ckpt_", 5) != 0) return -1;
    const char *p = name + 5;
    int64_t step = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9') {
        if (step > (INT64_MAX - 9) / 10) return -1;
        step = step * 10 + (*p - '0');
        p++;
        nd++;
    }
    if (nd == 0 || strcmp(p, ".h5") != 0) return -1;
    return step;
}

typedef struct io_ck_entry_ { int64_t step; char *name; } io_ck_entry_;

static int io_ck_entry_cmp_(const void *a, const void *b) {
    const io_ck_entry_ *x = a, *y = b;
    if (x->step != y->step) return x->step > y->step ? -1 : 1;  /* newest first */
    return strcmp(x->name, y->name);
}

/* Lists the checkpoints of dir, newest first. */
static int io_ckpt_list_(const char *dir, io_ck_entry_ **out, size_t *n) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        io_set_error("%s: cannot open directory: %s", dir, strerror(errno));
        return errno == ENOENT ? IO_ERR_NOTFOUND : IO_ERR_OPEN;
    }
    io_ck_entry_ *e = NULL;
    size_t cap = 0, cnt = 0;
    struct dirent *de;
    int rc = IO_OK;
    while ((de = readdir(d))) {
        int64_t st = io_ckpt_step_(de->d_name);
        if (st < 0) continue;
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            io_ck_entry_ *p = realloc(e, nc * sizeof *p);
            if (!p) { rc = IO_ERR_NOMEM; break; }
            e = p;
            cap = nc;
        }
        if (!(e[cnt].name = strdup(de->d_name))) { rc = IO_ERR_NOMEM; break; }
        e[cnt++].step = st;
    }
    closedir(d);
    if (rc != IO_OK) {
        for (size_t i = 0; i < cnt; i++) free(e[i].name);
        free(e);
        io_set_error("%s: out of memory listing checkpoints", dir);
        return rc;
    }
    if (cnt) qsort(e, cnt, sizeof *e, io_ck_entry_cmp_);
    *out = e;
    *n = cnt;
    return IO_OK;
}

int io_ckpt_latest(const char *dir, char *out, size_t outlen) {
    io_ck_entry_ *e;
    size_t n;
    int rc = io_ckpt_list_(dir, &e, &n);
    if (rc != IO_OK) return rc;
    io_h5_quiet_();
    rc = IO_ERR_NOTFOUND;
    size_t skipped = 0;
    for (size_t i = 0; i < n && rc == IO_ERR_NOTFOUND; i++) {
        char *p = io_join_(dir, e[i].name, NULL);
        if (!p) { rc = IO_ERR_NOMEM; break; }
        int vrc;
        io_probe_ pr;
        hid_t f = io_ckpt_open_(p, &vrc, IO_SUM_FULL, 0, &pr);
        if (f >= 0) H5Fclose(f);
        if (vrc != IO_OK) {
            fprintf(stderr, "lockstep: warning: skipping corrupted checkpoint %s: %s\n", p,
                    io_reason_(p));
            skipped++;
        } else if (strlen(p) + 1 > outlen) {
            io_set_error("%s: path longer than the %zu-byte buffer", p, outlen);
            rc = IO_ERR_NOMEM;
        } else {
            memcpy(out, p, strlen(p) + 1);
            rc = IO_OK;
        }
        free(p);
    }
    for (size_t i = 0; i < n; i++) free(e[i].name);
    free(e);
    if (rc == IO_OK) io_clear_error_();
    else if (rc == IO_ERR_NOTFOUND && skipped)
        io_set_error("%s: no complete checkpoint (ckpt_<step>.h5): %zu corrupted one%s skipped",
                     dir, skipped, skipped == 1 ? "" : "s");
    else if (rc == IO_ERR_NOTFOUND)
        io_set_error("%s: no complete checkpoint (ckpt_<step>.h5)", dir);
    return rc;
}

int io_ckpt_prune(const char *dir, int keep) {
    if (keep <= 0) return IO_OK;
    io_ck_entry_ *e;
    size_t n;
    int rc = io_ckpt_list_(dir, &e, &n);
    if (rc != IO_OK) return rc;
    for (size_t i = (size_t)keep; i < n; i++) {
        char *p = io_join_(dir, e[i].name, NULL);
        if (!p) { rc = IO_ERR_NOMEM; break; }
        if (unlink(p) != 0 && errno != ENOENT) {
            io_set_error("%s: cannot delete: %s", p, strerror(errno));
            rc = IO_ERR_WRITE;
        }
        free(p);
    }
    if (rc == IO_OK && n > (size_t)keep) {
        char *p = io_join_(dir, e[0].name, NULL);  /* any name inside dir: syncs dir */
        rc = p ? io_fsync_dir_(p) : IO_ERR_NOMEM;
        free(p);
    }
    for (size_t i = 0; i < n; i++) free(e[i].name);
    free(e);
    return rc;
}

/* ---- vocabularies alone ---------------------------------------------------------------- */

int io_ckpt_read_vocabs(const char *path, int n, const char *const *names, io_vocab *out) {
    int rc;
    io_probe_ pr;
    hid_t f = io_ckpt_open_(path, &rc, IO_SUM_STRINGS, 0, &pr);
    if (f < 0) return rc;
    int i;
    for (i = 0; i < n && rc == IO_OK; i++) rc = io_ckpt_read_vocab_(f, path, names[i], &out[i]);
    if (rc != IO_OK)
        for (int j = 0; j < i - 1; j++) io_vocab_free(&out[j]);
    H5Fclose(f);
    return rc;
}
