/* comm_buckets.c - gradient allreduce in buckets, overlapped with backward.
 *
 * Does: cut the flat gradient buffer into contiguous buckets from the end backwards,
 * start each bucket's MPI_Iallreduce (in place, SUM) as soon as the caller says its
 * gradients are final, push MPI's progress engine when asked, and wait + scale at the
 * end; counts the time spent waiting and the bytes reduced. Does not: know layers or
 * parameters (the caller maps them to indices), run a progress thread (Open MPI only
 * moves nonblocking-collective data inside MPI calls, so the caller must call
 * comm_buckets_progress between layers), allocate after init. */
#include "comm/comm.h"

#include <stdlib.h>
#include <string.h>

#define COMM_BUCKET_DEFAULT_BYTES ((size_t)4 << 20)
#define COMM_BUCKET_MAX_ELEMS ((size_t)1 << 30) /* counts are int */

int comm_buckets_init(comm_buckets *b, const comm *c, float *grads, size_t n,
                      size_t bucket_bytes) {
    memset(b, 0, sizeof *b);
    if (bucket_bytes == 0) bucket_bytes = COMM_BUCKET_DEFAULT_BYTES;
    size_t k = bucket_bytes / sizeof(float);
    if (k < 1) k = 1;
    if (k > COMM_BUCKET_MAX_ELEMS) k = COMM_BUCKET_MAX_ELEMS;
    size_t count = (n + k - 1) / k;
    b->lo = malloc((count + 1) * sizeof *b->lo);
    b->req = malloc((count ? count : 1) * sizeof *b->req);
    if (!b->lo || !b->req) {
        free(b->lo);
        free(b->req);
        memset(b, 0, sizeof *b);
        return -1;
    }
    /* Bucket i = [lo[i+1], lo[i]): full buckets of k from the end, the remainder (if
     * any) is the last bucket, holding the first-registered parameters. */
    for (size_t i = 0; i < count; i++) b->lo[i] = n - i * k;
    b->lo[count] = 0;
    for (size_t i = 0; i < count; i++) b->req[i] = MPI_REQUEST_NULL;
    b->world = c->world;
    b->grads = grads;
    b->n = n;
    b->count = count;
    return 0;
}

void comm_buckets_ready(comm_buckets *b, size_t lo) {
    /* Buckets lie in decreasing index order, so the ready ones are always a prefix. */
    while (b->started < b->count && b->lo[b->started + 1] >= lo) {
        size_t i = b->started, hi = b->lo[i], start = b->lo[i + 1];
        COMM_CHECK(MPI_Iallreduce(MPI_IN_PLACE, b->grads + start, (int)(hi - start),
                                  MPI_FLOAT, MPI_SUM, b->world, &b->req[i]));
        b->started++;
    }
}

void comm_buckets_progress(comm_buckets *b) {
    if (b->done == b->started) return;
    int flag = 0;
    /* Testall completes nothing unless all are done, but every call runs Open MPI's
     * progress engine once, which is what moves the data. */
    COMM_CHECK(MPI_Testall((int)(b->started - b->done), b->req + b->done, &flag,
                           MPI_STATUSES_IGNORE));
    if (flag) b->done = b->started;
}

void comm_buckets_finish(comm_buckets *b, float scale) {
    double t0 = MPI_Wtime();
    b->started_early += b->started;
    comm_buckets_ready(b, 0);
    if (b->done < b->started)
        COMM_CHECK(MPI_Waitall((int)(b->started - b->done), b->req + b->done,
                               MPI_STATUSES_IGNORE));
    double dt = MPI_Wtime() - t0;
    b->wait_seconds += dt;
    b->last_wait_seconds = dt;
    b->bytes_reduced += (uint64_t)b->n * sizeof(float);
    b->steps++;
    b->started = b->done = 0;
    if (scale != 1.0f)
        for (size_t i = 0; i < b->n; i++) b->grads[i] *= scale;
}

void comm_buckets_free(comm_buckets *b) {
    if (!b) return;
    free(b->lo);
    free(b->req);
    memset(b, 0, sizeof *b);
}
