/* comm_zero.c - the collectives of sharded optimizer state (ZeRO stage 1): each rank owns
 * the slice comm_slice(n, rank, size) of the flat parameter buffer; gradients are
 * reduce-scattered onto the owners, owners update their slice, and the new parameters
 * are all-gathered. Optimizer state is gathered to / scattered from rank 0 only for
 * checkpoints. Does not: decide which slice a rank owns (comm_slice does), or overlap
 * with compute. Slices are counted in ints: a slice must stay below 2^31 floats. */
#include "comm/comm.h"

#include <limits.h>
#include <stdlib.h>

/* counts[r], displs[r] of comm_slice for every rank; caller frees both (one block). */
static int *slice_table_(const comm *c, size_t n, int **displs) {
    int *t = malloc(2 * (size_t)c->size * sizeof *t);
    if (!t) comm_abort(c, 1, "out of memory for a slice table of %d ranks", c->size);
    for (int r = 0; r < c->size; r++) {
        size_t lo, hi;
        comm_slice(n, r, c->size, &lo, &hi);
        if (hi - lo > INT_MAX || lo > INT_MAX)
            comm_abort(c, 1, "a parameter slice of %zu floats exceeds MPI's int counts", hi - lo);
        t[r] = (int)(hi - lo);
        t[c->size + r] = (int)lo;
    }
    *displs = t + c->size;
    return t;
}

void comm_reduce_scatter_f32(const comm *c, const float *send, float *slice, size_t n) {
    int *displs, *counts = slice_table_(c, n, &displs);
    COMM_CHECK(MPI_Reduce_scatter(send, slice, counts, MPI_FLOAT, MPI_SUM, c->world));
    free(counts);
}

void comm_allgather_f32(const comm *c, float *buf, size_t n) {
    int *displs, *counts = slice_table_(c, n, &displs);
    COMM_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs,
                              MPI_FLOAT, c->world));
    free(counts);
}

void comm_gather_f32(const comm *c, const float *slice, float *full, size_t n, int root) {
    int *displs, *counts = slice_table_(c, n, &displs);
    COMM_CHECK(MPI_Gatherv(slice, counts[c->rank], MPI_FLOAT, full, counts, displs, MPI_FLOAT,
                           root, c->world));
    free(counts);
}

void comm_scatter_f32(const comm *c, const float *full, float *slice, size_t n, int root) {
    int *displs, *counts = slice_table_(c, n, &displs);
    COMM_CHECK(MPI_Scatterv(full, counts, displs, MPI_FLOAT, slice, counts[c->rank], MPI_FLOAT,
                            root, c->world));
    free(counts);
}
