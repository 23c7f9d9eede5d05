/* dense.c - dense HDF5 data sets for the autoencoder models: the shape of a 2-D float32
 * dataset and hyperslab reads of row ranges (features and integer labels), so that a
 * rank reads only its rows.
 *
 * Does not: cache, shuffle or normalise; every call opens and closes the file (cheap
 * next to the read for the batch sizes used). */
#include "io/io.h"

#include <errno.h>
#include <inttypes.h>
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

/* Reads rows [row0, row0+nrows) of a dataset of rank want_nd into out as mem type. */
static int io_dense_slab_(const char *path, const char *dataset, int want_nd, int64_t row0,
                          int64_t nrows, hid_t mem, void *out) {
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
    if (cls != (want_nd == 2 ? H5T_FLOAT : H5T_INTEGER)) {
        io_set_error("%s: %s is not a %s dataset", path, dataset,
                     want_nd == 2 ? "floating-point" : "integer");
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
    return io_dense_slab_(path, dataset, 2, row0, nrows, H5T_NATIVE_FLOAT, out);
}

int io_dense_read_labels(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                         int32_t *out) {
    return io_dense_slab_(path, dataset, 1, row0, nrows, H5T_NATIVE_INT32, out);
}
