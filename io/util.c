/* util.c - io/ plumbing: status strings, the thread-local error message, mkdir -p,
 * atomic small-file writes, the HDF5 version string.
 *
 * Does not: print anything (callers decide what to show), or retry failed syscalls
 * except on EINTR. */
#include "io/io.h"
#include "io/io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

static _Thread_local char io_err_[1024];

const char *io_status_str(int status) {
    switch (status) {
    case IO_OK: return "ok";
    case IO_ERR_OPEN: return "cannot open";
    case IO_ERR_READ: return "read error";
    case IO_ERR_WRITE: return "write error";
    case IO_ERR_FORMAT: return "malformed file";
    case IO_ERR_SHAPE: return "shape mismatch";
    case IO_ERR_VERSION: return "unsupported version";
    case IO_ERR_NOMEM: return "out of memory";
    case IO_ERR_NOTFOUND: return "not found";
    default: return "unknown io status";
    }
}

const char *io_error(void) { return io_err_; }

void io_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(io_err_, sizeof io_err_, fmt, ap);
    va_end(ap);
}

void io_clear_error_(void) { io_err_[0] = '\0'; }

/* Creates each prefix of dir in turn; an existing directory is fine. */
int io_mkdirs(const char *dir) {
    if (!dir || !*dir) { io_set_error("io_mkdirs: empty path"); return IO_ERR_OPEN; }
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) { io_set_error("io_mkdirs: out of memory"); return IO_ERR_NOMEM; }
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            io_set_error("%s: cannot create directory: %s", p, strerror(errno));
            free(p);
            return IO_ERR_OPEN;
        }
        p[i] = c;
    }
    struct stat st;
    int ok = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
    if (!ok) io_set_error("%s: not a directory", dir);
    free(p);
    return ok ? IO_OK : IO_ERR_OPEN;
}

/* fsync of the directory holding path, so that a rename in it is durable. */
int io_fsync_dir_(const char *path) {
    char *d = strdup(path);
    if (!d) { io_set_error("out of memory"); return IO_ERR_NOMEM; }
    char *slash = strrchr(d, '/');
    const char *dir = ".";
    if (slash == d) dir = "/";
    else if (slash) { *slash = '\0'; dir = d; }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    int rc = IO_OK;
    if (fd < 0) {
        io_set_error("%s: cannot open directory: %s", dir, strerror(errno));
        rc = IO_ERR_OPEN;
    } else {
        /* Some file systems refuse fsync on directories (EINVAL): not an error. */
        if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
            io_set_error("%s: fsync of directory failed: %s", dir, strerror(errno));
            rc = IO_ERR_WRITE;
        }
        close(fd);
    }
    free(d);
    return rc;
}

int io_fsync_path_(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { io_set_error("%s: cannot reopen for fsync: %s", path, strerror(errno)); return IO_ERR_OPEN; }
    int rc = IO_OK;
    if (fsync(fd) != 0) { io_set_error("%s: fsync failed: %s", path, strerror(errno)); rc = IO_ERR_WRITE; }
    close(fd);
    return rc;
}

char *io_tmp_name_(const char *path) {
    size_t n = strlen(path) + 32;
    char *t = malloc(n);
    if (t) snprintf(t, n, "%s.tmp.%ld", path, (long)getpid());
    return t;
}

int io_write_all_(int fd, const void *data, size_t n, const char *path) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            io_set_error("%s: write failed: %s", path, strerror(errno));
            return IO_ERR_WRITE;
        }
        p += w;
        n -= (size_t)w;
    }
    return IO_OK;
}

int io_write_file_atomic(const char *path, const void *data, size_t n) {
    char *tmp = io_tmp_name_(path);
    if (!tmp) { io_set_error("out of memory"); return IO_ERR_NOMEM; }
    int rc = IO_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        io_set_error("%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return IO_ERR_OPEN;
    }
    rc = io_write_all_(fd, data, n, tmp);
    return io_commit_tmp_(fd, tmp, path, rc);
}

int io_commit_tmp_(int fd, char *tmp, const char *path, int rc) {
    if (rc == IO_OK && fsync(fd) != 0) {
        io_set_error("%s: fsync failed: %s", tmp, strerror(errno));
        rc = IO_ERR_WRITE;
    }
    if (close(fd) != 0 && rc == IO_OK) {
        io_set_error("%s: close failed: %s", tmp, strerror(errno));
        rc = IO_ERR_WRITE;
    }
    if (rc == IO_OK && rename(tmp, path) != 0) {
        io_set_error("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        rc = IO_ERR_OPEN;
    }
    if (rc != IO_OK) unlink(tmp);
    else rc = io_fsync_dir_(path);
    free(tmp);
    return rc;
}

const char *io_hdf5_version(void) {
    static char v[32];
    unsigned maj = 0, min = 0, rel = 0;
    H5get_libversion(&maj, &min, &rel);
    snprintf(v, sizeof v, "%u.%u.%u", maj, min, rel);
    return v;
}
