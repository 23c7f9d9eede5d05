/* log.c - the metrics log of a run directory: <dir>/metrics.jsonl, one JSON object per
 * line, flushed after every line so that a crash loses at most the line being written.
 *
 * Does not: build or validate JSON (the caller formats the object), or fsync (a log
 * line is not worth 100 ms; checkpoints are the durable state). */
#include "io/io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int io_log_open(io_log *l, const char *dir, int append) {
    l->fp = NULL;
    int rc = io_mkdirs(dir);
    if (rc != IO_OK) return rc;
    size_t n = strlen(dir) + sizeof "/metrics.jsonl";
    char *p = malloc(n);
    if (!p) { io_set_error("%s: out of memory", dir); return IO_ERR_NOMEM; }
    snprintf(p, n, "%s/metrics.jsonl", dir);
    FILE *f = fopen(p, append ? "a" : "w");
    if (!f) {
        io_set_error("%s: cannot open: %s", p, strerror(errno));
        free(p);
        return IO_ERR_OPEN;
    }
    free(p);
    l->fp = f;
    return IO_OK;
}

int io_log_write(io_log *l, const char *json_object) {
    FILE *f = l->fp;
    if (!f) { io_set_error("metrics log: not open"); return IO_ERR_WRITE; }
    if (fputs(json_object, f) < 0 || fputc('\n', f) == EOF || fflush(f) != 0) {
        io_set_error("metrics.jsonl: write failed: %s", strerror(errno));
        return IO_ERR_WRITE;
    }
    return IO_OK;
}

void io_log_close(io_log *l) {
    if (!l || !l->fp) return;
    fclose(l->fp);
    l->fp = NULL;
}
