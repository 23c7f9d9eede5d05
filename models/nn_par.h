/* nn_par.h - the two-way split shared by the kernels of models/ (internal to models/). */
#ifndef MODELS_NN_PAR_H
#define MODELS_NN_PAR_H
#include <stddef.h>

typedef void (*nn_par_fn)(void *ctx, int part);

/* Runs fn(ctx, 0) and fn(ctx, 1): concurrently when helper is set (and the helper thread
 * could be started, and no other split is in flight), else one after the other in the
 * caller. Returns when both are done. The parts must not wait for each other. */
void nn_par_run_on(nn_par_fn fn, void *ctx, int helper);
/* nn_par_run_on with helper = big && nn_get_threads() >= 2. */
void nn_par_run(nn_par_fn fn, void *ctx, int big);
/* For parts that call OpenBLAS themselves: OpenBLAS runs on one thread meanwhile. */
void nn_par_run_blas(nn_par_fn fn, void *ctx, int big);
/* Part `part` (0 or 1) of [0, n) as [*i0, *i1): the cut is rounded up to a multiple of
 * align. */
void nn_par_half(size_t n, int part, size_t align, size_t *i0, size_t *i1);

#endif
