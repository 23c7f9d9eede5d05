/* log.c - small helpers for the coordinator's progress display. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "trainer/trainer.h"

double trainer_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void trainer_fmt_duration(char *buf, size_t n, double seconds) {
    if (seconds < 0 || seconds != seconds) seconds = 0;
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else
        snprintf(buf, n, "%ld:%02ld", s / 60, s % 60);
}

/* Under mpirun, Open MPI hands every rank a pseudo-terminal even when the job's output
 * goes to a file (a SLURM log), so isatty() alone would draw a bar into log files. The
 * launcher's own stdout tells the truth: /proc/<parent>/fd/1 is /dev/pts/N only when a
 * person is watching. */
int trainer_stdout_is_terminal(void) {
    static int cached = -1;
    if (cached >= 0) return cached;
    cached = isatty(STDOUT_FILENO);
    const char *force = getenv("LOCKSTEP_PROGRESS");
    if (force && strcmp(force, "lines") == 0) cached = 0;
    else if (force && strcmp(force, "bar") == 0) cached = 1;
    else if (cached && getenv("OMPI_COMM_WORLD_SIZE")) {
        char link[64], target[256];
        snprintf(link, sizeof link, "/proc/%d/fd/1", (int)getppid());
        ssize_t n = readlink(link, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        cached = n > 0 && (strncmp(target, "/dev/pts/", 9) == 0 || strncmp(target, "/dev/tty", 8) == 0);
    }
    return cached;
}
