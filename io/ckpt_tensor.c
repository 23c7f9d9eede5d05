/* ckpt_tensor.c - reading one named parameter of a checkpoint, whatever model wrote it:
 * the way pretrained pieces (word embeddings) move between models. Does not validate the
 * rest of the file beyond its format attribute. */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

int io_ckpt_read_tensor(const char *path, const char *name, float **out, int *ndim,
                        int64_t shape[IO_MAX_DIMS]) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *out = NULL;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), d = -1, s = -1;
    int rc = IO_ERR_FORMAT;
    char ds[1024];
    snprintf(ds, sizeof ds, "/params/%s", name);
    if (f < 0) {
        io_set_error("%s: cannot open as HDF5", path);
        return IO_ERR_OPEN;
    }
    if (H5Lexists(f, "/params", H5P_DEFAULT) <= 0 || H5Lexists(f, ds, H5P_DEFAULT) <= 0) {
        io_set_error("%s: no parameter %s", path, ds);
        rc = IO_ERR_NOTFOUND;
        goto done;
    }
    if ((d = H5Dopen2(f, ds, H5P_DEFAULT)) < 0 || (s = H5Dget_space(d)) < 0) {
        io_set_error("%s: cannot open %s", path, ds);
        goto done;
    }
    int nd = H5Sget_simple_extent_ndims(s);
    hsize_t dims[IO_MAX_DIMS];
    if (nd < 1 || nd > IO_MAX_DIMS || H5Sget_simple_extent_dims(s, dims, NULL) < 0) {
        io_set_error("%s: %s has %d dimensions (1..%d expected)", path, ds, nd, IO_MAX_DIMS);
        goto done;
    }
    size_t count = 1;
    for (int i = 0; i < nd; i++) {
        shape[i] = (int64_t)dims[i];
        count *= (size_t)dims[i];
    }
    *ndim = nd;
    if (!(*out = malloc(count ? count * sizeof(float) : 1))) {
        io_set_error("%s: out of memory reading %s", path, ds);
        rc = IO_ERR_NOMEM;
        goto done;
    }
    if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0) {
        io_set_error("%s: cannot read %s", path, ds);
        free(*out);
        *out = NULL;
        goto done;
    }
    rc = IO_OK;
done:
    if (s >= 0) H5Sclose(s);
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    return rc;
}
