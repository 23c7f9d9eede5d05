/* dense.c - dense HDF5 data sets for the autoencoder and captioner models: the shape of a
 * 2-D dataset, hyperslab reads of row ranges (float features, integer labels, rows of
 * integer token ids), so that a rank reads only its rows; and the small extras of a
 * captioning file: a vocabulary stored as variable-length strings and an integer
 * attribute array of the root group.
 *
 * Does not: cache, shuffle or normalise; every call opens and closes the file (cheap
 * next to the read for the batch sizes used). */
#include "io/io.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <hdf5.h>

/* Opens dataset of path; *f and *d >= 0 on success. */
static int io_dense_open_(const char *path, const char *dataset, hid_t *f, hid_t *d) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *f = *d = -1;
    struct stat st;
    if (stat(path, &st) != 0) {
        io_set_error("%s: cannot open: %s", path, strerror(errno));
        return IO_ERR_NOTFOUND;
    }
    if ((*f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
        io_set_error("%s: cannot open as HDF5", path);
        return IO_ERR_OPEN;
    }
    if (H5Lexists(*f, dataset, H5P_DEFAULT) <= 0 || (*d = H5Dopen2(*f, dataset, H5P_DEFAULT)) < 0) {
        io_set_error("%s: dataset %s not found", path, dataset);
        H5Fclose(*f);
        *f = -1;
        return IO_ERR_NOTFOUND;
    }
    return IO_OK;
}

/* Dims of d into dims (at most 2); returns ndim or -1. */
static int io_dense_dims_(hid_t d, hsize_t *dims) {
    hid_t s = H5Dget_space(d);
    if (s < 0) return -1;
    int nd = H5Sget_simple_extent_ndims(s);
    if (nd >= 0 && nd <= 2) nd = H5Sget_simple_extent_dims(s, dims, NULL);
    else nd = -1;
    H5Sclose(s);
    return nd;
}

int io_dense_info(const char *path, const char *dataset, int64_t *rows, int64_t *cols) {
    hid_t f, d;
    int rc = io_dense_open_(path, dataset, &f, &d);
    if (rc != IO_OK) return rc;
    hsize_t dims[2] = {0, 0};
    if (io_dense_dims_(d, dims) != 2) {
        io_set_error("%s: %s is not a 2-D dataset", path, dataset);
        rc = IO_ERR_SHAPE;
    } else {
        *rows = (int64_t)dims[0];
        *cols = (int64_t)dims[1];
    }
    H5Dclose(d);
    H5Fclose(f);
    return rc;
}

/* Reads rows [row0, row0+nrows) of a dataset of rank want_nd and type class want_cls
 * into out as mem type. */
static int io_dense_slab_(const char *path, const char *dataset, int want_nd,
                          H5T_class_t want_cls, int64_t row0, int64_t nrows, hid_t mem,
                          void *out) {
    hid_t f, d, fs = -1, ms = -1;
    int rc = io_dense_open_(path, dataset, &f, &d);
    if (rc != IO_OK) return rc;
    hsize_t dims[2] = {0, 0};
    int nd = io_dense_dims_(d, dims);
    hid_t ty = H5Dget_type(d);
    H5T_class_t cls = ty >= 0 ? H5Tget_class(ty) : H5T_NO_CLASS;
    if (ty >= 0) H5Tclose(ty);
    if (nd != want_nd) {
        io_set_error("%s: %s has %d dimensions, expected %d", path, dataset, nd, want_nd);
        rc = IO_ERR_SHAPE;
        goto done;
    }
    if (cls != want_cls) {
        io_set_error("%s: %s is not a%s dataset", path, dataset,
                     want_cls == H5T_FLOAT ? " floating-point" : "n integer");
        rc = IO_ERR_FORMAT;
        goto done;
    }
    if (row0 < 0 || nrows < 0 || (uint64_t)row0 + (uint64_t)nrows > dims[0]) {
        io_set_error("%s: rows [%" PRId64 ", %" PRId64 ") outside %s with %llu rows", path, row0,
                     row0 + nrows, dataset, (unsigned long long)dims[0]);
        rc = IO_ERR_SHAPE;
        goto done;
    }
    if (nrows == 0) goto done;
    hsize_t start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)nrows, dims[1]};
    fs = H5Dget_space(d);
    ms = H5Screate_simple(want_nd, count, NULL);
    if (fs < 0 || ms < 0 ||
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(d, mem, ms, fs, H5P_DEFAULT, out) < 0) {
        io_set_error("%s: cannot read rows [%" PRId64 ", %" PRId64 ") of %s", path, row0,
                     row0 + nrows, dataset);
        rc = IO_ERR_READ;
    }
done:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    H5Dclose(d);
    H5Fclose(f);
    return rc;
}

int io_dense_read_rows(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                       float *out) {
    return io_dense_slab_(path, dataset, 2, H5T_FLOAT, row0, nrows, H5T_NATIVE_FLOAT, out);
}

int io_dense_read_labels(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                         int32_t *out) {
    return io_dense_slab_(path, dataset, 1, H5T_INTEGER, row0, nrows, H5T_NATIVE_INT32, out);
}

int io_dense_read_tokens(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                         int32_t *out) {
    return io_dense_slab_(path, dataset, 2, H5T_INTEGER, row0, nrows, H5T_NATIVE_INT32, out);
}

int io_dense_cols(const char *path, const char *dataset, int64_t *rows, int64_t *cols) {
    return io_dense_info(path, dataset, rows, cols);
}

int io_dense_vocab(const char *path, const char *dataset, io_vocab *v) {
    hid_t f, d, s = -1, mt = -1;
    memset(v, 0, sizeof *v);
    int rc = io_dense_open_(path, dataset, &f, &d);
    if (rc != IO_OK) return rc;
    char **w = NULL;
    hsize_t dims[2] = {0, 0};
    hid_t ty = H5Dget_type(d);
    int ok = ty >= 0 && H5Tget_class(ty) == H5T_STRING && H5Tis_variable_str(ty) > 0;
    H5T_cset_t cset = ok ? H5Tget_cset(ty) : H5T_CSET_ASCII;
    if (ty >= 0) H5Tclose(ty);
    if (!ok || io_dense_dims_(d, dims) != 1) {
        io_set_error("%s: %s is not a 1-D dataset of variable-length strings", path, dataset);
        rc = IO_ERR_FORMAT;
        goto done;
    }
    if (io_vocab_init(v, 0) < 0) {
        rc = IO_ERR_NOMEM;
        goto done;
    }
    if (dims[0] == 0) goto done;
    w = calloc(dims[0], sizeof *w);
    mt = H5Tcopy(H5T_C_S1);
    s = H5Dget_space(d);
    if (!w || mt < 0 || s < 0) {
        io_set_error("%s: out of memory reading %s", path, dataset);
        rc = IO_ERR_NOMEM;
        goto done;
    }
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, cset); /* as stored: no conversion between character sets */
    if (H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) < 0) {
        io_set_error("%s: cannot read the strings of %s", path, dataset);
        rc = IO_ERR_READ;
        free(w);
        w = NULL;
        goto done;
    }
    for (hsize_t i = 0; i < dims[0] && rc == IO_OK; i++) {
        const char *word = w[i] ? w[i] : "";
        int id = io_vocab_add(v, word, strlen(word), 0);
        if (id < 0) {
            rc = IO_ERR_NOMEM;
            io_set_error("%s: out of memory reading %s", path, dataset);
        } else if ((hsize_t)id != i) {
            io_set_error("%s: %s repeats the word \"%s\" (entries %d and %llu)", path, dataset,
                         word, id, (unsigned long long)i);
            rc = IO_ERR_FORMAT;
        }
    }
    H5Dvlen_reclaim(mt, s, H5P_DEFAULT, w);
done:
    free(w);
    if (mt >= 0) H5Tclose(mt);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
    if (rc != IO_OK) io_vocab_free(v);
    return rc;
}

int io_dense_attr_i64(const char *path, const char *name, int64_t *out, int n) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    struct stat st;
    if (stat(path, &st) != 0) {
        io_set_error("%s: cannot open: %s", path, strerror(errno));
        return IO_ERR_NOTFOUND;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        io_set_error("%s: cannot open as HDF5", path);
        return IO_ERR_OPEN;
    }
    int rc = IO_OK;
    hid_t a = -1, s = -1, ty = -1;
    if (H5Aexists(f, name) <= 0 || (a = H5Aopen(f, name, H5P_DEFAULT)) < 0) {
        io_set_error("%s: root attribute %s not found", path, name);
        rc = IO_ERR_NOTFOUND;
        goto done;
    }
    s = H5Aget_space(a);
    ty = H5Aget_type(a);
    hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    if (ty < 0 || H5Tget_class(ty) != H5T_INTEGER) {
        io_set_error("%s: attribute %s is not an integer array", path, name);
        rc = IO_ERR_FORMAT;
        goto done;
    }
    if (np != (hssize_t)n) {
        io_set_error("%s: attribute %s has %lld values, expected %d", path, name,
                     (long long)np, n);
        rc = IO_ERR_SHAPE;
        goto done;
    }
    if (n > 0 && H5Aread(a, H5T_NATIVE_INT64, out) < 0) {
        io_set_error("%s: cannot read attribute %s", path, name);
        rc = IO_ERR_READ;
    }
done:
    if (ty >= 0) H5Tclose(ty);
    if (s >= 0) H5Sclose(s);
    if (a >= 0) H5Aclose(a);
    H5Fclose(f);
    return rc;
}
