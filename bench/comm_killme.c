/* comm_killme.c - how a job ends when one rank dies (manual experiment, not a test).
 *
 * All ranks loop over 1M-float allreduces; after --after iterations the last rank fails
 * in the chosen way while the others are inside (or entering) the next collective:
 *   sigkill  raise(SIGKILL)          (OOM killer, node failure)
 *   segv     raise(SIGSEGV)
 *   abort    comm_abort(...)         (our error path: message + MPI_Abort)
 *   check    a failing MPI call under COMM_CHECK (invalid root)
 *   exit     exit(3) without MPI_Finalize (what comm/ must never do)
 *   exit0    exit(0) without MPI_Finalize
 * scripts/bench-comm --kill runs each mode under mpirun and reports time and status.
 * usage: comm_killme MODE [--after N] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"

int main(int argc, char **argv) {
    comm c;
    comm_init(&c, &argc, &argv);
    const char *mode = argc > 1 ? argv[1] : "sigkill";
    int after = (argc > 3 && !strcmp(argv[2], "--after")) ? atoi(argv[3]) : 20;
    size_t n = (size_t)1 << 20;
    float *g = calloc(n, sizeof *g);
    if (!g) comm_abort(&c, 1, "comm_killme: out of memory");
    for (int it = 0; it < 1000000; it++) {
        if (it == after && c.rank == c.size - 1) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            fprintf(stderr, "[rank %d] comm_killme: failing by '%s' at iteration %d, t=%.3f\n",
                    c.rank, mode, it, (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec);
            fflush(stderr);
            if (!strcmp(mode, "sigkill")) raise(SIGKILL);
            if (!strcmp(mode, "segv")) raise(SIGSEGV);
            if (!strcmp(mode, "abort")) comm_abort(&c, 7, "comm_killme: deliberate abort");
            if (!strcmp(mode, "check")) {
                int x = 0;
                COMM_CHECK(MPI_Bcast(&x, 1, MPI_INT, c.size + 5, c.world));
            }
            if (!strcmp(mode, "exit")) exit(3);
            if (!strcmp(mode, "exit0")) exit(0);
        }
        comm_allreduce_sum_f32(&c, g, n);
    }
    free(g);
    comm_free(&c);
    return 0;
}
