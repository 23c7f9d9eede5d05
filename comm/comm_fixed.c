/* comm_fixed.c - deterministic gradient sums in 64-bit fixed point.
 *
 * Does: round each micro-batch contribution once to an integer multiple of 1/scale,
 * add contributions as int64 (associative, so the total is the same bits for any rank
 * count and any assignment of micro-batches to ranks), sum across ranks with
 * MPI_Allreduce on MPI_INT64_T, convert back; detects values out of range instead of
 * wrapping. Does not: choose the scale from the data (a data-dependent scale would have
 * to be agreed on first), or overlap with backward (the trainer's deterministic mode
 * trades speed for reproducibility). */
#include "comm/comm.h"

#include <math.h>

#define COMM_FIXED_LIMIT ((int64_t)1 << 62) /* |product| and |acc| stay within this */

int comm_fixed_accumulate(int64_t *acc, const float *g, size_t n, double scale) {
    int status = COMM_OK;
    const double lim = (double)COMM_FIXED_LIMIT;
    for (size_t i = 0; i < n; i++) {
        double v = (double)g[i] * scale; /* exact for power-of-two scales */
        int64_t q;
        if (isnan(v)) {
            status = COMM_ERR_RANGE;
            continue;
        }
        if (v > lim || v < -lim) {
            status = COMM_ERR_RANGE;
            q = v > 0 ? COMM_FIXED_LIMIT : -COMM_FIXED_LIMIT;
        } else {
            q = llrint(v); /* round to nearest even: a pure function of g[i] */
        }
        /* Both terms are within +-2^62, so the sum cannot overflow int64. */
        int64_t s = acc[i] + q;
        if (s > COMM_FIXED_LIMIT || s < -COMM_FIXED_LIMIT) {
            status = COMM_ERR_RANGE;
            s = s > 0 ? COMM_FIXED_LIMIT : -COMM_FIXED_LIMIT;
        }
        acc[i] = s;
    }
    return status;
}

int comm_fixed_allreduce(const comm *c, int64_t *acc, size_t n, int bad) {
    /* Decide first, on every rank alike, whether the sum is safe: |sum_r acc_r[i]| <=
     * P * max_r max_i |acc_r[i]|. Conservative (may refuse a sum that would have fit), but
     * it never lets MPI's int64 addition overflow. MAX is exact, so every rank sees the
     * same numbers and takes the same branch. */
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = fabs((double)acc[i]);
        if (a > m) m = a;
    }
    double chk[2] = {m, bad ? 1.0 : 0.0};
    COMM_CHECK(MPI_Allreduce(MPI_IN_PLACE, chk, 2, MPI_DOUBLE, MPI_MAX, c->world));
    if (chk[1] != 0.0 || chk[0] * (double)c->size >= (double)COMM_FIXED_LIMIT)
        return COMM_ERR_RANGE;
    size_t chunk = comm_chunk_elems_();
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        COMM_CHECK(MPI_Allreduce(MPI_IN_PLACE, acc + off, (int)k, MPI_INT64_T, MPI_SUM,
                                 c->world));
    }
    return COMM_OK;
}

void comm_fixed_to_float(float *out, const int64_t *acc, size_t n, double scale) {
    const double inv = 1.0 / scale; /* exact for power-of-two scales */
    for (size_t i = 0; i < n; i++) out[i] = (float)((double)acc[i] * inv);
}
