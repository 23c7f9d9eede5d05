/* comm.c - MPI lifetime, error handling and the blocking collectives of comm.h.
 *
 * Does: start/stop MPI, turn every MPI failure into a job-wide abort with the failing
 * rank's message, broadcast and sum flat buffers in chunks whose counts fit in an int,
 * compute per-rank slices. Does not: own any buffer, know about models or parameters,
 * overlap communication with compute (comm_buckets.c), or reduce deterministically
 * across rank counts (comm_fixed.c). Every collective must be called by all ranks in the
 * same order with the same n. */
#include "comm/comm.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest element count of one MPI call. MPI counts are int; 2^30 keeps every chunk
 * (and its byte size for MPI_BYTE broadcasts) well below INT_MAX. Tests shrink it. */
#define COMM_CHUNK_MAX ((size_t)1 << 30)
static size_t comm_chunk_ = COMM_CHUNK_MAX;

void comm_set_chunk_(size_t elems) {
    comm_chunk_ = (elems == 0 || elems > COMM_CHUNK_MAX) ? COMM_CHUNK_MAX : elems;
}

size_t comm_chunk_elems_(void) { return comm_chunk_; }

/* ---- lifetime ------------------------------------------------------------------- */

void comm_init(comm *c, int *argc, char ***argv) {
    memset(c, 0, sizeof *c);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) {
        fprintf(stderr, "comm_init: MPI was already finalized\n");
        exit(EXIT_FAILURE);
    }
    if (!inited) {
        int provided = 0;
        /* FUNNELED: only the main thread calls MPI; OpenBLAS threads never do. */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            /* No peers exist yet: exiting this process cannot leave anyone hanging. */
            fprintf(stderr, "comm_init: MPI_Init_thread failed\n");
            exit(EXIT_FAILURE);
        }
        c->initialized_here = 1;
    }
    c->world = MPI_COMM_WORLD;
    /* Without this every COMM_CHECK is dead code: MPI's default handler is fatal. */
    COMM_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    COMM_CHECK(MPI_Comm_rank(c->world, &c->rank));
    COMM_CHECK(MPI_Comm_size(c->world, &c->size));
}

void comm_free(comm *c) {
    if (!c) return;
    if (c->initialized_here) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }
    memset(c, 0, sizeof *c);
}

/* ---- errors --------------------------------------------------------------------- */

/* Rank in MPI_COMM_WORLD, or -1 when MPI is not running (then there is nothing to abort). */
static int comm_world_rank_(void) {
    int inited = 0, finalized = 0, rank = -1;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

static void comm_die_(int code) __attribute__((noreturn));
static void comm_die_(int code) {
    if (code == 0) code = 1; /* an abort is never a success */
    fflush(stdout);
    fflush(stderr);
    if (comm_world_rank_() >= 0) MPI_Abort(MPI_COMM_WORLD, code);
    /* MPI_Abort returned, or MPI is not running: at least end this process. */
    _Exit(code & 0xff ? code & 0xff : 1);
}

void comm_abort(const comm *c, int code, const char *fmt, ...) {
    int rank = (c && c->size > 0) ? c->rank : comm_world_rank_();
    /* One fprintf per piece would interleave with other ranks' lines; build it first. */
    char msg[1024];
    int off = snprintf(msg, sizeof msg, "[rank %d] ", rank);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + off, sizeof msg - (size_t)off, fmt, ap);
    va_end(ap);
    size_t len = strlen(msg);
    fprintf(stderr, "%s%s", msg, (len && msg[len - 1] == '\n') ? "" : "\n");
    comm_die_(code);
}

void comm_fail_(int rc, const char *what, const char *file, int line) {
    char err[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(rc, err, &len) != MPI_SUCCESS) len = 0;
    err[len] = '\0';
    fprintf(stderr, "[rank %d] %s:%d: %s: %s\n", comm_world_rank_(), file, line, what,
            len ? err : "unknown MPI error");
    comm_die_(rc);
}

/* ---- collectives ---------------------------------------------------------------- */

void comm_barrier(const comm *c) { COMM_CHECK(MPI_Barrier(c->world)); }

void comm_bcast_bytes(const comm *c, void *buf, size_t n, int root) {
    unsigned char *p = buf;
    for (size_t off = 0; off < n; off += comm_chunk_) {
        size_t k = n - off < comm_chunk_ ? n - off : comm_chunk_;
        COMM_CHECK(MPI_Bcast(p + off, (int)k, MPI_BYTE, root, c->world));
    }
}

void comm_bcast_params(const comm *c, float *params, size_t n) {
    for (size_t off = 0; off < n; off += comm_chunk_) {
        size_t k = n - off < comm_chunk_ ? n - off : comm_chunk_;
        COMM_CHECK(MPI_Bcast(params + off, (int)k, MPI_FLOAT, 0, c->world));
    }
}

/* In-place allreduce of n elements of `type` (element size `es`) in chunks. */
static void comm_allreduce_(const comm *c, void *buf, size_t n, size_t es, MPI_Datatype type,
                            MPI_Op op) {
    unsigned char *p = buf;
    for (size_t off = 0; off < n; off += comm_chunk_) {
        size_t k = n - off < comm_chunk_ ? n - off : comm_chunk_;
        COMM_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + off * es, (int)k, type, op, c->world));
    }
}

void comm_allreduce_sum_f32(const comm *c, float *buf, size_t n) {
    comm_allreduce_(c, buf, n, sizeof *buf, MPI_FLOAT, MPI_SUM);
}

void comm_allreduce_sum_f64(const comm *c, double *buf, size_t n) {
    comm_allreduce_(c, buf, n, sizeof *buf, MPI_DOUBLE, MPI_SUM);
}

void comm_allreduce_max_f64(const comm *c, double *buf, size_t n) {
    comm_allreduce_(c, buf, n, sizeof *buf, MPI_DOUBLE, MPI_MAX);
}

int comm_any(const comm *c, int flag) {
    int v = flag;
    COMM_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, c->world));
    return v;
}

int comm_single_node(const comm *c) {
    MPI_Comm node;
    int n = 0;
    COMM_CHECK(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL,
                                   &node));
    COMM_CHECK(MPI_Comm_size(node, &n));
    COMM_CHECK(MPI_Comm_free(&node));
    return !comm_any(c, n != c->size);
}

void comm_allreduce_grads(const comm *c, float *grads, size_t n, float scale) {
    comm_allreduce_sum_f32(c, grads, n);
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) grads[i] *= scale;
}

/* ---- pure helpers --------------------------------------------------------------- */

void comm_slice(size_t n, int rank, int size, size_t *lo, size_t *hi) {
    if (size <= 0 || rank < 0 || rank >= size) {
        fprintf(stderr, "%s:%d: comm_slice: rank %d of size %d\n", __FILE__, __LINE__, rank,
                size);
        abort(); /* our bug: callers pass c->rank, c->size */
    }
    size_t P = (size_t)size, r = (size_t)rank;
    size_t q = n / P, rem = n % P;
    /* The first `rem` ranks take q+1 items, the rest q. */
    *lo = r * q + (r < rem ? r : rem);
    *hi = *lo + q + (r < rem ? 1 : 0);
}

const char *comm_mpi_version(void) {
    static char v[MPI_MAX_LIBRARY_VERSION_STRING + 1];
    int len = 0;
    if (MPI_Get_library_version(v, &len) != MPI_SUCCESS) return "MPI (unknown version)";
    v[len] = '\0';
    /* Open MPI: "Open MPI v4.1.4, package: ..., ident: ...": keep the name and version.
     * Other libraries: keep the first line. Then trim trailing blanks. */
    v[strcspn(v, "\n")] = '\0';
    if (strncmp(v, "Open MPI", 8) == 0) v[strcspn(v, ",")] = '\0';
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r')) v[--n] = '\0';
    return v;
}

/* ---- sanitizer builds ----------------------------------------------------------- */
#if defined(__SANITIZE_ADDRESS__)
/* Open MPI keeps allocations from MPI_Init until exit and unloads its components before
 * LeakSanitizer runs, so every MPI program "leaks" ~120 kB. Suppress leaks whose stack
 * passes through the MPI libraries; ours stay reported. The frames are only visible with
 * the slow unwinder (Open MPI is built without frame pointers). Any binary that calls
 * comm_init links this file and gets these defaults; ASAN_OPTIONS still overrides. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
    return "leak:libmpi.so\nleak:libopen-rte.so\nleak:libopen-pal.so\nleak:libpmix.so\n"
           "leak:libhwloc.so\nleak:libevent\nleak:libucp.so\nleak:libucs.so\n";
}
#endif
