/* nn_par.h - the parts of the two-way split (par.c) only models/ uses; nn_par_run and
 * nn_par_half are public in nn.h. */
#ifndef MODELS_NN_PAR_H
#define MODELS_NN_PAR_H
#include <stddef.h>

#include "models/nn.h" /* nn_par_fn, nn_par_run, nn_par_half */

/* Runs fn(ctx, 0) and fn(ctx, 1): concurrently when helper is set (and the helper thread
 * could be started, and no other split is in flight), else one after the other in the
 * caller. Returns when both are done. The parts must not wait for each other. */
void nn_par_run_on(nn_par_fn fn, void *ctx, int helper);
/* For parts that call OpenBLAS themselves: OpenBLAS runs on one thread meanwhile. */
void nn_par_run_blas(nn_par_fn fn, void *ctx, int big);

#endif
