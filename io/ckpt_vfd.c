/* ckpt_vfd.c - the HDF5 file driver checkpoints are written with: POSIX pread/pwrite on a
 * descriptor the caller opened (as HDF5's sec2 driver does), except that a failed write or
 * truncate is not reported to HDF5. The first errno is kept in the caller's variable, later
 * writes are skipped, and HDF5 goes on as if the disk were fine; the caller checks the
 * variable after H5Fclose and throws the file away. So HDF5 never meets a full disk or an
 * I/O error: when H5Fflush or H5Fclose fails on one, HDF5 1.10.8 leaves its metadata cache
 * in a state that no later H5Fclose gets out of, keeps the file in its ID table and
 * crashes at exit closing it again.
 *
 * Raw data of contiguous datasets goes from the caller's buffer straight to pwrite (no
 * image in memory). Files are plain HDF5 files (no driver information in the superblock):
 * any driver reads them.
 *
 * Does not: open, lock or close the descriptor (the caller owns it), nor read files with
 * HDF5 (readers use the default driver). */
#include <hdf5.h>

#include "io/io_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct io_vfd_info_ {
    int fd;
    int *err;
} io_vfd_info_;

typedef struct io_vfd_ {
    H5FD_t pub; /* first: HDF5 fills it */
    int fd;
    int *err;
    haddr_t eoa, eof;
} io_vfd_;

#define IO_VFD_MAXADDR ((haddr_t)(((uint64_t)1 << 62) - 1))

static void io_vfd_fail_(io_vfd_ *v, int e) {
    if (*v->err == 0) *v->err = e ? e : EIO;
}

static H5FD_t *io_vfd_open_(const char *name, unsigned flags, hid_t fapl, haddr_t maxaddr) {
    (void)name;
    (void)flags;
    (void)maxaddr;
    const io_vfd_info_ *info = H5Pget_driver_info(fapl);
    if (!info || info->fd < 0 || !info->err) return NULL;
    io_vfd_ *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    struct stat st;
    if (fstat(info->fd, &st) != 0) {
        free(v);
        return NULL;
    }
    v->fd = info->fd;
    v->err = info->err;
    v->eof = (haddr_t)st.st_size;
    return &v->pub;
}

static herr_t io_vfd_close_(H5FD_t *f) {
    free(f);
    return 0;
}

static int io_vfd_cmp_(const H5FD_t *a, const H5FD_t *b) {
    int x = ((const io_vfd_ *)a)->fd, y = ((const io_vfd_ *)b)->fd;
    return (x > y) - (x < y);
}

static herr_t io_vfd_query_(const H5FD_t *f, unsigned long *flags) {
    (void)f;
    *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA |
             H5FD_FEAT_DATA_SIEVE | H5FD_FEAT_AGGREGATE_SMALLDATA |
             H5FD_FEAT_POSIX_COMPAT_HANDLE;
    return 0;
}

static haddr_t io_vfd_get_eoa_(const H5FD_t *f, H5FD_mem_t type) {
    (void)type;
    return ((const io_vfd_ *)f)->eoa;
}

static herr_t io_vfd_set_eoa_(H5FD_t *f, H5FD_mem_t type, haddr_t addr) {
    (void)type;
    ((io_vfd_ *)f)->eoa = addr;
    return 0;
}

static haddr_t io_vfd_get_eof_(const H5FD_t *f, H5FD_mem_t type) {
    (void)type;
    return ((const io_vfd_ *)f)->eof;
}

static herr_t io_vfd_get_handle_(H5FD_t *f, hid_t fapl, void **handle) {
    (void)fapl;
    *handle = &((io_vfd_ *)f)->fd;
    return 0;
}

/* Bytes past the end of the file read as zeros (as with sec2). A read error is an error:
 * it cannot leave HDF5's cache half flushed. */
static herr_t io_vfd_read_(H5FD_t *f, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size,
                           void *buf) {
    (void)type;
    (void)dxpl;
    io_vfd_ *v = (io_vfd_ *)f;
    unsigned char *p = buf;
    while (size > 0) {
        ssize_t r = pread(v->fd, p, size, (off_t)addr);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) {
            memset(p, 0, size);
            break;
        }
        p += r;
        addr += (haddr_t)r;
        size -= (size_t)r;
    }
    return 0;
}

static herr_t io_vfd_write_(H5FD_t *f, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size,
                            const void *buf) {
    (void)type;
    (void)dxpl;
    io_vfd_ *v = (io_vfd_ *)f;
    if (addr + size > v->eof) v->eof = addr + size;
    const unsigned char *p = buf;
    while (size > 0 && *v->err == 0) {
        ssize_t w = pwrite(v->fd, p, size, (off_t)addr);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            io_vfd_fail_(v, w < 0 ? errno : ENOSPC);
            break;
        }
        p += w;
        addr += (haddr_t)w;
        size -= (size_t)w;
    }
    return 0;
}

static herr_t io_vfd_truncate_(H5FD_t *f, hid_t dxpl, hbool_t closing) {
    (void)dxpl;
    (void)closing;
    io_vfd_ *v = (io_vfd_ *)f;
    if (v->eoa != v->eof) {
        if (*v->err == 0 && ftruncate(v->fd, (off_t)v->eoa) != 0) io_vfd_fail_(v, errno);
        v->eof = v->eoa;
    }
    return 0;
}

static const H5FD_class_t io_vfd_class_ = {
#ifdef H5FD_CLASS_VERSION /* HDF5 >= 1.13 numbers its driver classes (untested here) */
    .version = H5FD_CLASS_VERSION,
    .value = (H5FD_class_value_t)600, /* in the range for drivers outside HDF5 */
#endif
    .name = "lockstep-ckpt",
    .maxaddr = IO_VFD_MAXADDR,
    .fc_degree = H5F_CLOSE_WEAK,
    .fapl_size = sizeof(io_vfd_info_),
    .open = io_vfd_open_,
    .close = io_vfd_close_,
    .cmp = io_vfd_cmp_,
    .query = io_vfd_query_,
    .get_eoa = io_vfd_get_eoa_,
    .set_eoa = io_vfd_set_eoa_,
    .get_eof = io_vfd_get_eof_,
    .get_handle = io_vfd_get_handle_,
    .read = io_vfd_read_,
    .write = io_vfd_write_,
    .truncate = io_vfd_truncate_,
    .fl_map = H5FD_FLMAP_DICHOTOMY,
};

int io_ckpt_vfd_set_(hid_t fapl, int fd, int *err) {
    static hid_t id = H5I_INVALID_HID;
    if (id < 0 || H5Iis_valid(id) <= 0) id = H5FDregister(&io_vfd_class_);
    if (id < 0) return -1;
    io_vfd_info_ info = {.fd = fd, .err = err};
    return H5Pset_driver(fapl, id, &info) < 0 ? -1 : 0;
}
