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

/* Collective. The gradient exchange: grads[0..n) := SUM over ranks * scale, in place.
 * The trainer passes scale = 1 when the model already scaled by 1/global count. */
void comm_allreduce_grads(const comm *c, float *grads, size_t n, float scale);

/* The disjoint slice [*lo, *hi) of n items owned by `rank` of `size` (contiguous, sizes
 * differing by at most one). Pure function; no MPI. */
void comm_slice(size_t n, int rank, int size, size_t *lo, size_t *hi);

/* Library versions for the first log lines, e.g. "Open MPI v4.1.4". */
const char *comm_mpi_version(void);

/* ---- test hooks (not for the trainer) ---------------------------------------------- */
/* Largest element count per MPI call in the blocking collectives above; 0 restores the
 * default 2^30. Lets tests cover chunk boundaries with small buffers. Not thread-safe. */
void comm_set_chunk_(size_t elems);
size_t comm_chunk_elems_(void);

#endif
