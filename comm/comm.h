/* comm.h - data-parallel communication over MPI_COMM_WORLD.
 *
 * The only module that includes <mpi.h>. Owns no model buffers: every pointer passed in
 * belongs to the caller. Every collective here must be called by all ranks in the same
 * order. Any MPI failure aborts the whole job with the failing rank's message; nothing
 * here ever calls exit() on one rank. */
#ifndef COMM_COMM_H
#define COMM_COMM_H

#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

typedef struct comm {
    MPI_Comm world;
    int rank, size;
    int initialized_here; /* 1: comm_init called MPI_Init, comm_free finalizes */
} comm;

/* MPI_Init (unless already initialised) + MPI_ERRORS_RETURN on world. Cannot fail:
 * a failure to start MPI prints a message and exits the process (no peers exist yet). */
void comm_init(comm *c, int *argc, char ***argv);
void comm_free(comm *c); /* MPI_Finalize if comm_init initialised; safe on a zeroed comm */

/* Ends every rank of the job: prints "[rank r] msg" to stderr, then MPI_Abort(code).
 * Never returns. Usable from any single rank. */
void comm_abort(const comm *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

/* Aborts with "[rank r] file:line: call: <MPI error string>" on any MPI failure. */
#define COMM_CHECK(call)                                                      \
    do {                                                                      \
        int rc_ = (call);                                                     \
        if (rc_ != MPI_SUCCESS) comm_fail_(rc_, #call, __FILE__, __LINE__);   \
    } while (0)
void comm_fail_(int rc, const char *what, const char *file, int line) __attribute__((noreturn));

void comm_barrier(const comm *c);
/* Collective. Copies n bytes from root to every rank. n may exceed INT_MAX. */
void comm_bcast_bytes(const comm *c, void *buf, size_t n, int root);
/* Collective. params[0..n) on every rank := rank 0's values. */
void comm_bcast_params(const comm *c, float *params, size_t n);
/* Collective. buf[0..n) := sum over ranks, in place, in chunks of at most 2^30. */
void comm_allreduce_sum_f32(const comm *c, float *buf, size_t n);
void comm_allreduce_sum_f64(const comm *c, double *buf, size_t n);
void comm_allreduce_max_f64(const comm *c, double *buf, size_t n);
/* Collective: a value every rank agrees on: the maximum of the flags given (e.g. "any rank
 * wants to stop"). */
int comm_any(const comm *c, int flag);
/* Collective. 1 when every rank shares one node's memory (MPI_COMM_TYPE_SHARED), else 0;
 * the same answer on every rank. */
int comm_single_node(const comm *c);

/* Collective. The gradient exchange: grads[0..n) := SUM over ranks * scale, in place.
 * The trainer passes scale = 1 when the model already scaled by 1/global count. */
void comm_allreduce_grads(const comm *c, float *grads, size_t n, float scale);

/* The disjoint slice [*lo, *hi) of n items owned by `rank` of `size` (contiguous, sizes
 * differing by at most one). Pure function; no MPI. */
void comm_slice(size_t n, int rank, int size, size_t *lo, size_t *hi);

/* Library versions for the first log lines, e.g. "Open MPI v4.1.4". */
const char *comm_mpi_version(void);

/* ---- gradient buckets: allreduce overlapped with backward (comm_buckets.c) ----------
 * The gradient buffer grads[0..n) is cut into contiguous buckets of about bucket_bytes,
 * cut from the END backwards: bucket 0 is [n - k, n), bucket 1 the k before it, ... The
 * last-registered parameters receive their gradients first in backward, so bucket 0 can
 * be summed while backward still runs. Use per step:
 *     comm_buckets_ready(&b, lo)     after backward made grads[lo..n) final (lo decreasing)
 *     comm_buckets_progress(&b)      between layers: Open MPI moves data only inside calls
 *     comm_buckets_finish(&b, scale) before the optimizer: grads := SUM over ranks * scale
 * A started bucket belongs to MPI until finish returns: the caller must not read or write
 * grads[lo..n) of a ready range in between. Buckets start in the same order on every rank
 * (always bucket 0, 1, 2, ...), as MPI requires of nonblocking collectives, whatever lo
 * values each rank passes. */
typedef struct comm_buckets {
    MPI_Comm world;
    float *grads;          /* (n) the caller's buffer; not owned */
    size_t n;              /* elements in grads */
    size_t count;          /* number of buckets */
    size_t *lo;            /* (count+1) bucket i is [lo[i+1], lo[i]); lo[0] = n, lo[count] = 0 */
    MPI_Request *req;      /* (count) MPI_REQUEST_NULL when not started or completed */
    size_t started;        /* buckets [0, started) are started this step */
    size_t done;           /* buckets [0, done) are known complete this step */
    /* Counters, cumulative since init (the trainer divides by its own step time): */
    double wait_seconds;   /* wall time spent inside finish(): starting leftovers + waiting */
    double last_wait_seconds; /* the same, for the last finish() only */
    uint64_t bytes_reduced;   /* payload bytes summed (n * 4 per finish) */
    uint64_t steps;           /* finish() calls */
    uint64_t started_early;   /* buckets started by ready() rather than by finish() */
} comm_buckets;

/* Not collective (no MPI communication); every rank must use the same n and bucket_bytes.
 * bucket_bytes is clamped to [4, 2^32] bytes (MPI counts are int); 0 means 4 MiB.
 * grads may be NULL iff n == 0. b keeps a copy of c->world, not a pointer to c.
 * Returns 0, or -1 if allocation fails (then b is zeroed and owns nothing). */
int comm_buckets_init(comm_buckets *b, const comm *c, float *grads, size_t n,
                      size_t bucket_bytes);
/* Every gradient at index >= lo is final. Starts (MPI_Iallreduce, in place, SUM) each
 * not-yet-started bucket lying entirely inside [lo, n), in bucket order. lo >= n starts
 * nothing. Collective in the sense that all ranks must start the same buckets before
 * finish; ranks may call it at different points. */
void comm_buckets_ready(comm_buckets *b, size_t lo);
/* Lets MPI move data for started buckets (MPI_Testall). Cheap; call it often (~100 us). */
void comm_buckets_progress(comm_buckets *b);
/* Collective. Starts the remaining buckets, waits for all, then grads[i] *= scale (skipped
 * when scale == 1). Resets the per-step state: the next step starts at bucket 0 again. */
void comm_buckets_finish(comm_buckets *b, float scale);
/* Frees the bucket tables. Safe on a zeroed or freed struct. Must not be called with
 * buckets in flight (call finish first). */
void comm_buckets_free(comm_buckets *b);

/* ---- deterministic reduction in 64-bit fixed point (comm_fixed.c) -------------------
 * For --deterministic: bit-identical sums on any number of ranks and any assignment of
 * micro-batches to ranks. Each micro-batch contribution g is rounded once to the integer
 * llrint(g * scale); integer addition is associative, so the total does not depend on the
 * grouping. Per step:
 *     memset(acc, 0, n * sizeof *acc);
 *     for each local micro-batch: comm_fixed_accumulate(acc, g, n, COMM_FIXED_SCALE);
 *     bad |= status of each accumulate;
 *     if (comm_fixed_allreduce(&c, acc, n, bad) != COMM_OK) -> same error on every rank
 *     comm_fixed_to_float(grads, acc, n, COMM_FIXED_SCALE);
 * Precision: absolute 1/scale per contribution (2^-32 = 2.3e-10 by default). Range: each
 * rank's partial sums must stay below 2^62 / (scale * ranks) in magnitude (2^30 / ranks,
 * about 1e9 / ranks, by default). Costs 2x the float traffic (int64 on the wire). */
#define COMM_FIXED_SCALE 4294967296.0 /* 2^32 */
enum { COMM_OK = 0, COMM_ERR_RANGE = -2 };
/* acc[i] += llrint(g[i] * scale), i in [0, n). Not collective. Returns COMM_OK, or
 * COMM_ERR_RANGE if some g[i] is NaN, or g[i] * scale or the new acc[i] lies outside
 * [-2^62, 2^62]; then that acc[i] saturates to +-2^62 (a NaN adds nothing) and the rest is
 * still accumulated. acc (n), g (n). */
int comm_fixed_accumulate(int64_t *acc, const float *g, size_t n, double scale);
/* Collective. acc[0..n) := sum over ranks, in place (MPI_INT64_T). Returns COMM_OK, or
 * COMM_ERR_RANGE on EVERY rank if any rank passes bad != 0 or if the sum could overflow
 * (ranks * max over ranks of max|acc| >= 2^62, checked before reducing; then acc is
 * unchanged). Pass bad = "some local accumulate failed" so all ranks agree on failure. */
int comm_fixed_allreduce(const comm *c, int64_t *acc, size_t n, int bad);
/* out[i] = (float)(acc[i] / scale). Exact for power-of-two scales up to the float
 * rounding. out (n), acc (n). Not collective. */
void comm_fixed_to_float(float *out, const int64_t *acc, size_t n, double scale);

/* ---- sharded optimizer state (ZeRO-1, comm_zero.c) -----------------------------------
 * Rank r owns [lo, hi) = comm_slice(n, r, size) of an n-float buffer. All collective. */
/* slice (hi-lo) := sum over ranks of send[lo..hi). send (n) is not modified. */
void comm_reduce_scatter_f32(const comm *c, const float *send, float *slice, size_t n);
/* buf[0..n): every rank's owned slice is copied to every rank, in place. */
void comm_allgather_f32(const comm *c, float *buf, size_t n);
/* full (n, root only; may be NULL elsewhere) := every rank's slice (hi-lo floats). */
void comm_gather_f32(const comm *c, const float *slice, float *full, size_t n, int root);
/* slice (hi-lo) := full[lo..hi) from root (full may be NULL on other ranks). */
void comm_scatter_f32(const comm *c, const float *full, float *slice, size_t n, int root);

/* ---- test hooks (not for the trainer) ---------------------------------------------- */
/* Largest element count per MPI call in the blocking collectives above; 0 restores the
 * default 2^30. Lets tests cover chunk boundaries with small buffers. Not thread-safe. */
void comm_set_chunk_(size_t elems);
size_t comm_chunk_elems_(void);

#endif
