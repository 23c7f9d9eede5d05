/* png.c - grey-scale PNG pictures (reconstructions, samples, interpolations) via libpng.
 *
 * Does: quantise a float image in [0,1] to 8 bits and write it as one PNG, through a
 * temporary file renamed into place, so a failed write leaves nothing under path.
 * Does not: read PNGs, handle colour, or lay out grids (models draw their own grids). */
#include "io/io.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <png.h>

/* Writes img (h,w) row-major to fp; 0 or IO_ERR_WRITE/IO_ERR_NOMEM. row (w) is scratch. */
static int png_write_rows_(FILE *fp, const float *img, int h, int w, png_bytep row) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        io_set_error("png: cannot create libpng write structures");
        return IO_ERR_NOMEM;
    }
    /* libpng reports errors by longjmp back here; png and info are not modified after
     * setjmp, so they are still valid when we land. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        io_set_error("png: libpng failed while writing");
        return IO_ERR_WRITE;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) {
        const float *src = img + (size_t)y * w;
        for (int x = 0; x < w; x++) {
            float v = src[x];
            v = v != v ? 0.0f : v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; /* NaN -> black */
            row[x] = (png_byte)(v * 255.0f + 0.5f);
        }
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return IO_OK;
}

/* Writes img (h,w), values in [0,1] (clamped; NaN becomes 0), as an 8-bit grey PNG at
 * path. Returns IO_OK, or a negative io_status with io_error() naming path; on failure
 * no file is left under path (an existing one is untouched). */
int io_png_write_gray(const char *path, const float *img, int h, int w) {
    if (!path || !img || h <= 0 || w <= 0 || h > (1 << 20) || w > (1 << 20)) {
        io_set_error("png %s: bad image %d x %d", path ? path : "(null)", h, w);
        return IO_ERR_FORMAT;
    }
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    png_bytep row = malloc((size_t)w);
    if (!tmp || !row) {
        free(tmp);
        free(row);
        io_set_error("png %s: out of memory", path);
        return IO_ERR_NOMEM;
    }
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int rc;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        io_set_error("png %s: cannot create %s", path, tmp);
        rc = IO_ERR_OPEN;
        goto done;
    }
    rc = png_write_rows_(fp, img, h, w, row);
    if (fflush(fp) != 0 || ferror(fp)) {
        if (rc == IO_OK) io_set_error("png %s: write failed", path);
        rc = rc == IO_OK ? IO_ERR_WRITE : rc;
    }
    if (fclose(fp) != 0 && rc == IO_OK) {
        io_set_error("png %s: close failed", path);
        rc = IO_ERR_WRITE;
    }
    if (rc == IO_OK && rename(tmp, path) != 0) {
        io_set_error("png %s: cannot rename %s into place", path, tmp);
        rc = IO_ERR_OPEN;
    }
    if (rc != IO_OK) remove(tmp);
done:
    free(tmp);
    free(row);
    return rc;
}
