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
 * Writes are atomic: <path>.tmp.<pid>, H5Fflush, H5Fclose, fsync, rename, fsync(dir); any
 * failure removes the temporary file. HDF5's own error stack printing is switched off;
 * every failure becomes one line in io_error().
 *
 * File locking: HDF5 1.10.7+ reads the environment variable HDF5_USE_FILE_LOCKING itself
 * (FALSE disables the flock() it takes on open). On NFS/Lustre where flock fails, users
 * set HDF5_USE_FILE_LOCKING=FALSE; nothing here overrides it.
 *
 * Does not: write from more than one process (rank 0 writes; serial HDF5), compress,
 * or interpret the configuration (strings as given). */
#include "io/io.h"
#include "io/io_internal.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hdf5.h>

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

static int io_h5_attr_f64_(hid_t obj, const char *name, double val) {
    int ok = 0;
    hid_t s = H5Screate(H5S_SCALAR), a = -1;
    if (s >= 0) a = H5Acreate2(obj, name, H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) ok = H5Awrite(a, H5T_NATIVE_DOUBLE, &val) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    return ok ? IO_OK : IO_ERR_WRITE;
}

/* Reads a scalar string attribute (fixed or variable length) into a malloc'ed string;
 * NULL if absent or not a string. */
static char *io_h5_attr_read_str_(hid_t obj, const char *name) {
    if (H5Aexists(obj, name) <= 0) return NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
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
    if (H5Aexists(obj, name) <= 0) return 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return 0;
    int ok = H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    H5Aclose(a);
    return ok;
}

static int io_h5_attr_read_f64_(hid_t obj, const char *name, double *v) {
    if (H5Aexists(obj, name) <= 0) return 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
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

/* Creates dataset `name` (absolute, parents created) of float32 with t's shape from x. */
static int io_h5_write_f32_(hid_t f, hid_t lcpl, const char *name, const io_tensor *t,
                            const float *x) {
    hsize_t dims[IO_MAX_DIMS];
    io_tensor_dims_(t, dims);
    int ok = 0;
    hid_t s = t->ndim > 0 ? H5Screate_simple(t->ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t d = -1;
    if (s >= 0) d = H5Dcreate2(f, name, H5T_IEEE_F32LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0) ok = io_tensor_count_(t) == 0 ||
                     H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0;
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

int io_ckpt_write(const char *path, const io_ckpt *ck) {
    io_h5_quiet_();
    char *tmp = io_tmp_name_(path);
    if (!tmp) { io_set_error("%s: out of memory", path); return IO_ERR_NOMEM; }
    int rc;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* STRONG: closing the file closes anything left open, so H5Fclose really ends it. */
    if (fapl >= 0) H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl >= 0 ? fapl : H5P_DEFAULT);
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) {
        io_set_error("%s: cannot create checkpoint file %s: %s", path, tmp,
                     errno ? strerror(errno) : "HDF5 error");
        unlink(tmp);
        free(tmp);
        return IO_ERR_OPEN;
    }
    rc = io_ckpt_fill_(f, path, ck);
    if (rc == IO_OK && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) {
        io_set_error("%s: H5Fflush failed", tmp);
        rc = IO_ERR_WRITE;
    }
    if (H5Fclose(f) < 0 && rc == IO_OK) {
        io_set_error("%s: H5Fclose failed", tmp);
        rc = IO_ERR_WRITE;
    }
    if (rc == IO_OK) rc = io_fsync_path_(tmp);
    if (rc == IO_OK && rename(tmp, path) != 0) {
        io_set_error("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        rc = IO_ERR_OPEN;
    }
    if (rc != IO_OK) unlink(tmp);
    else rc = io_fsync_dir_(path);
    free(tmp);
    return rc;
}

/* ---- reading ------------------------------------------------------------------------ */

/* Opens path read-only as a lockstep checkpoint: checks format and version. */
static hid_t io_ckpt_open_(const char *path, int *rc) {
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

int io_ckpt_read(const char *path, io_ckpt *ck) {
    int rc;
    char *model = NULL, *pname = NULL;
    ck->n_config = 0;
    ck->config_keys = ck->config_vals = NULL;
    ck->metrics_read = NULL;
    hid_t f = io_ckpt_open_(path, &rc);
    if (f < 0) return rc;

    model = io_h5_attr_read_str_(f, "model");
    if (!model || (ck->model && strcmp(model, ck->model) != 0)) {
        io_set_error("%s: checkpoint is of model \"%s\", expected \"%s\"", path,
                     model ? model : "(missing)", ck->model ? ck->model : "");
        rc = IO_ERR_SHAPE;
        goto done;
    }
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
                         path, vis.extra, hs, model);
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
    /* 3. train state */
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
    /* 4. configuration, vocabularies, metrics (allocations undone on failure) */
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
    /* 5. the numbers themselves */
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
    hid_t f = io_ckpt_open_(path, &rc);
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
    hid_t f = io_ckpt_open_(path, &rc);
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
    io_set_error("%s: no complete checkpoint (ckpt_<step>.h5)", dir);
    for (size_t i = 0; i < n && rc == IO_ERR_NOTFOUND; i++) {
        char *p = io_join_(dir, e[i].name, NULL);
        if (!p) { rc = IO_ERR_NOMEM; break; }
        hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f >= 0) {
            char *fmt = io_h5_attr_read_str_(f, "format");
            if (fmt && strcmp(fmt, IO_CKPT_FORMAT) == 0) {
                if (strlen(p) + 1 > outlen) {
                    io_set_error("%s: path longer than the %zu-byte buffer", p, outlen);
                    rc = IO_ERR_NOMEM;
                } else {
                    memcpy(out, p, strlen(p) + 1);
                    rc = IO_OK;
                }
            }
            free(fmt);
            H5Fclose(f);
        }
        free(p);
    }
    for (size_t i = 0; i < n; i++) free(e[i].name);
    free(e);
    if (rc == IO_OK) io_clear_error_();
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
    hid_t f = io_ckpt_open_(path, &rc);
    if (f < 0) return rc;
    int i;
    for (i = 0; i < n && rc == IO_OK; i++) rc = io_ckpt_read_vocab_(f, path, names[i], &out[i]);
    if (rc != IO_OK)
        for (int j = 0; j < i - 1; j++) io_vocab_free(&out[j]);
    H5Fclose(f);
    return rc;
}
