/* log.c - small helpers for the coordinator's progress display. */
#include <stdio.h>
#include <time.h>

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
