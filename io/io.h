/* io.h - everything that touches files: vocabularies, corpora, token shards, HDF5
 * checkpoints, metrics logs.
 *
 * The only module that includes <hdf5.h>. It never includes models/: parameters arrive
 * as a flat float buffer plus a table of (name, offset, shape). Functions return IO_OK or
 * a negative enum io_status and leave a one-line message (file, position, what was
 * expected) in io_error(). Nothing here writes a file under its final name until it is
 * complete: writers go to a temporary name, fsync, rename, fsync the directory. */
#ifndef IO_IO_H
#define IO_IO_H

#include <stddef.h>
#include <stdint.h>

enum io_status {
    IO_OK = 0,
    IO_ERR_OPEN = -1,     /* cannot open / create / rename */
    IO_ERR_READ = -2,     /* short read, I/O error */
    IO_ERR_WRITE = -3,    /* short write, disk full, fsync failed */
    IO_ERR_FORMAT = -4,   /* malformed content: bad magic, bad line, bad checksum */
    IO_ERR_SHAPE = -5,    /* a checkpoint disagrees with the model (names, shapes) */
    IO_ERR_VERSION = -6,  /* unsupported format version */
    IO_ERR_NOMEM = -7,
    IO_ERR_NOTFOUND = -8  /* no such file / no checkpoint in a directory */
};
const char *io_status_str(int status);
const char *io_error(void);                 /* message of the last failure, or "" */
void io_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Special ids, equal to NN_PAD/NN_UNK/NN_BOS/NN_EOS in models/ (the trainer checks). */
#define IO_PAD 0
#define IO_UNK 1
#define IO_BOS 2
#define IO_EOS 3
#define IO_N_SPECIAL 4

/* ---- vocabularies ------------------------------------------------------------------- */
/* Words <-> ids. Ids 0..3 are "<pad>", "<unk>", "<s>", "</s>" in token vocabularies;
 * label vocabularies (specials = 0) have none. */
typedef struct io_vocab {
    int n;           /* number of entries */
    char **word;     /* (n) NUL-terminated, owned */
    int64_t *count;  /* (n) training-set frequency (0 for specials) */
    int *slot;       /* open-addressing hash table of ids, cap entries, -1 empty */
    int cap;
} io_vocab;

void io_vocab_free(io_vocab *v);                    /* zero-safe, idempotent */
int io_vocab_init(io_vocab *v, int specials);       /* empty; specials 1 adds the four */
/* Adds word (len bytes) if absent, adding cnt to its count; returns its id or < 0. */
int io_vocab_add(io_vocab *v, const char *w, size_t len, int64_t cnt);
int io_vocab_lookup(const io_vocab *v, const char *w, size_t len); /* id or -1 */
/* Keeps specials, then words with count >= min_count, most frequent first (ties by
 * bytes), at most max_size entries in all (0: no limit). Rebuilds ids. */
int io_vocab_prune(io_vocab *v, int64_t min_count, int max_size);
/* Serialise to / from one buffer of NUL-separated words (for broadcast). Caller frees. */
int io_vocab_pack(const io_vocab *v, char **buf, size_t *len);
int io_vocab_unpack(io_vocab *v, const char *buf, size_t len);

/* ---- text corpora ------------------------------------------------------------------- */
/* Text formats (UTF-8, one example per line, tokens separated by single spaces,
 * produced by scripts/):
 *   IO_TEXT_CLASSIFY   "label<TAB>tok tok tok"
 *   IO_TEXT_PARALLEL   "src tok tok<TAB>tgt tok tok"
 *   IO_TEXT_PLAIN      "tok tok tok" (language modelling: lines are concatenated, each
 *                      followed by </s>) */
enum io_text_kind { IO_TEXT_CLASSIFY = 1, IO_TEXT_PARALLEL = 2, IO_TEXT_PLAIN = 3 };

/* Streams path once and counts tokens (source side into src, target side into tgt,
 * labels into labels; pass NULL for sides not wanted). Bounded memory: the tables only.
 * A malformed line gives IO_ERR_FORMAT naming path:line. */
int io_text_count(const char *path, int kind, io_vocab *src, io_vocab *tgt, io_vocab *labels);

/* ---- token shards ------------------------------------------------------------------- */
/* A binary file of encoded examples, memory-mapped for reading so that a rank touches
 * only the examples it uses. Layout (little-endian):
 *   header  "LSTKSHRD" magic, u32 version, u32 kind, i64 n, i64 n_tok, i64 n_tok_tgt,
 *           u64 checksum (FNV-1a 64 over everything after the header), pad to 64 bytes
 *   i64 off[n+1]        source token offsets
 *   i32 ids[n_tok]
 *   i64 off_tgt[n+1], i32 ids_tgt[n_tok_tgt]   (parallel only)
 *   i32 label[n]                               (classify only)
 * Each section starts at a multiple of 8 bytes (zero padding after an odd-length i32
 * array), so the i64 arrays are aligned in the mapping.
 * Plain: one example per non-empty line, its tokens followed by IO_EOS. Parallel: the
 * target ends with IO_EOS, the source does not. Classify: no IO_EOS. */
typedef struct io_shard {
    int kind;
    int64_t n, n_tok, n_tok_tgt;
    const int64_t *off;
    const int32_t *ids;
    const int64_t *off_tgt;
    const int32_t *ids_tgt;
    const int32_t *label;
    void *map;
    size_t map_len;
} io_shard;

/* Encodes a text corpus with the given vocabularies (unknown words -> IO_UNK; unknown
 * labels are IO_ERR_FORMAT) into a shard at dst, atomically. max_len > 0 truncates
 * source and target sequences to max_len tokens (IO_EOS included: it is kept as the last
 * id). Streaming, bounded memory (two passes over the text). */
int io_shard_encode(const char *src_path, int kind, const io_vocab *src, const io_vocab *tgt,
                    const io_vocab *labels, int max_len, const char *dst_path);
/* Maps a shard, checks magic, version, sizes (and the checksum when verify != 0). */
int io_shard_open(io_shard *s, const char *path, int verify);
void io_shard_close(io_shard *s); /* zero-safe, idempotent */

/* ---- checkpoints (HDF5) ------------------------------------------------------------- */
#define IO_CKPT_FORMAT "lockstep-checkpoint"
#define IO_CKPT_VERSION 1
#define IO_CKPT_CHECKSUM "mulrot4x64"     /* root attribute checksum_algorithm (hash.c) */
#define IO_CKPT_CHECKSUM_FNV1A64 "fnv1a64" /* the earlier algorithm: still read, not written */
#define IO_MAX_DIMS 4

/* Every function below that opens an existing checkpoint (read, peek, read_vocabs, info,
 * verify, latest) first reads it in a forked child process, so that a damaged file that
 * crashes or hangs the HDF5 library becomes an IO_ERR_FORMAT here ("reading it crashed the
 * HDF5 library"); the child gives up after 60 s + 1 s per 20 MB
 * (LOCKSTEP_CKPT_CHECK_TIMEOUT=<seconds> replaces the 60; LOCKSTEP_CKPT_GUARD=0 checks
 * in this process instead, for debugging). peek and read_vocabs verify
 * the strings they return (configuration, vocabularies); the others everything. */
typedef struct io_tensor {
    const char *name;   /* slash path: dataset /params/<name> */
    size_t offset;      /* floats into the flat buffer */
    int ndim;
    int shape[IO_MAX_DIMS];
} io_tensor;

typedef struct io_train_state {
    int64_t step, epoch, tokens_seen, examples_seen;
    int64_t world_size;     /* ranks that wrote it */
    int64_t data_pos;       /* position in the data order (examples or tokens consumed) */
    double best_metric;     /* best validation metric so far */
    int64_t best_step;
    int64_t bad_evals;      /* evaluations without improvement (early stopping) */
} io_train_state;

typedef struct io_ckpt {
    const char *model;            /* model name (root attribute "model") */
    int n_tensors;
    const io_tensor *tensors;
    size_t n_floats;              /* length of params and of each slot buffer */
    float *params;                /* (n_floats) written from / read into */
    int n_slots;                  /* optimizer slots: "m", "v", ... */
    const char *const *slot_names;
    float *const *slots;          /* (n_slots) buffers of n_floats */
    int n_config;                 /* configuration as given: keys and values */
    char **config_keys, **config_vals; /* read: allocated by io, freed by io_ckpt_release */
    io_train_state train;
    int n_vocabs;
    const char *const *vocab_names;   /* "src", "tgt", "labels" */
    io_vocab *vocabs;             /* read: filled (caller frees each) */
    const char *metrics;          /* evaluation history as JSON lines (may be NULL) */
    char *metrics_read;           /* read: allocated copy, freed by io_ckpt_release;
                                     NULL if none; every line ends with '\n' */
} io_ckpt;

/* Writes ck to path atomically (path.tmp.<pid>, flush, fsync, rename, fsync dir). On any
 * failure the temporary file is removed and nothing under path changes; a full disk or
 * another disk error is named in io_error(). Every dataset gets a uint64 attribute
 * "checksum" (IO_CKPT_CHECKSUM of its elements) and the root a "checksum" over all of them,
 * /train and /config (layout in ckpt.c). */
int io_ckpt_write(const char *path, const io_ckpt *ck);
/* Reads path into ck, whose tensors/params/slots describe what the model expects.
 * Refuses (IO_ERR_SHAPE / IO_ERR_VERSION / IO_ERR_FORMAT) with io_error() naming the
 * first disagreement: format, version, a missing or extra parameter, a shape, then the
 * checksums (as io_ckpt_verify: IO_ERR_FORMAT naming the damaged dataset), the model name. Reads config, train state, vocabularies and metrics too.
 * ck->model NULL accepts any model name. Each of ck->vocab_names must exist in the file
 * (IO_ERR_FORMAT otherwise) and is read into ck->vocabs[i] with ids in file order.
 * Every optimizer slot named in ck->slot_names must exist (IO_ERR_SHAPE otherwise).
 * Shapes are all checked before any buffer is written; on failure nothing is left
 * allocated (config, vocabularies, metrics). */
int io_ckpt_read(const char *path, io_ckpt *ck);
void io_ckpt_release(io_ckpt *ck); /* frees what io_ckpt_read allocated */
/* Verifies the checksums of path: each dataset's against its data, the root's against
 * the datasets' checksums, /train and /config. A file without a root checksum (written
 * before checksums existed) passes if the datasets that carry one match. IO_OK, or
 * IO_ERR_FORMAT with io_error() = "<path>: /params/w has checksum <hex>, expected <hex>
 * (corrupted)" (or naming the root), IO_ERR_OPEN for a file HDF5 cannot open (truncated),
 * IO_ERR_VERSION / IO_ERR_NOTFOUND as io_ckpt_read. Reads the whole file in bounded
 * memory. */
int io_ckpt_verify(const char *path);
/* Reads only the model name and configuration (to rebuild a model before reading). */
int io_ckpt_peek(const char *path, char **model, int *n_config, char ***keys, char ***vals);
/* Reads only the vocabularies names[0..n) into out[0..n) (the caller frees each), so a
 * resumed run can size its model before reading parameters. */
int io_ckpt_read_vocabs(const char *path, int n, const char *const *names, io_vocab *out);
/* Reads the parameter /params/<name> of any checkpoint into a new buffer *out (caller
 * frees) with its shape. IO_ERR_NOTFOUND when absent. */
int io_ckpt_read_tensor(const char *path, const char *name, float **out, int *ndim,
                        int64_t shape[IO_MAX_DIMS]);
/* Prints a human summary (model, step, tensors with shapes and sizes, configuration). */
int io_ckpt_info(const char *path, void *file /* FILE* */);

/* Run directories: checkpoints are <dir>/ckpt_<step>.h5 (step zero-padded to 8). */
/* Newest complete checkpoint in dir into out (size outlen); IO_ERR_NOTFOUND if none.
 * A ckpt_<step>.h5 that does not open or verify (io_ckpt_verify: truncated, altered, not a
 * checkpoint) is skipped for the next older one, each with one line on stderr:
 * "lockstep: warning: skipping corrupted checkpoint <path>: <reason>". */
int io_ckpt_latest(const char *dir, char *out, size_t outlen);
/* Deletes all but the newest keep checkpoints (never best.h5). keep <= 0 keeps all. */
int io_ckpt_prune(const char *dir, int keep);

/* ---- metrics log -------------------------------------------------------------------- */
/* Appends one JSON object per line to <dir>/metrics.jsonl; flushed after every line. */
typedef struct io_log { void *fp; } io_log;
int io_log_open(io_log *l, const char *dir, int append);
int io_log_write(io_log *l, const char *json_object);
void io_log_close(io_log *l);

/* ---- dense data sets (autoencoders) ------------------------------------------------ */
/* A 2-D float32 dataset (rows, cols) in an HDF5 file, e.g. "/x"; labels a 1-D integer
 * dataset (rows) such as "/y". Reads only the requested hyperslab. */
int io_dense_info(const char *path, const char *dataset, int64_t *rows, int64_t *cols);
/* out (nrows, cols) := rows [row0, row0 + nrows) of the 2-D dataset; IO_ERR_SHAPE when
 * the range lies outside it. */
int io_dense_read_rows(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                       float *out);
/* out (nrows) := entries [row0, row0 + nrows) of a 1-D integer dataset, as int32. */
int io_dense_read_labels(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                         int32_t *out);

/* ---- captioning data sets (dense.c; written by scripts/prepare-captions) ------------ */
/* out (nrows, cols) := rows [row0, row0 + nrows) of a 2-D integer dataset (e.g.
 * "train/tokens"), as int32; IO_ERR_SHAPE when the range lies outside it, IO_ERR_FORMAT
 * when the dataset is not integer. */
int io_dense_read_tokens(const char *path, const char *dataset, int64_t row0, int64_t nrows,
                         int32_t *out);
/* Dims of any 2-D dataset (float or integer); the same as io_dense_info. */
int io_dense_cols(const char *path, const char *dataset, int64_t *rows, int64_t *cols);
/* v := the 1-D dataset of variable-length strings, ids in file order, specials as stored
 * (io_vocab_init(v, 0), then each word added with count 0). IO_ERR_FORMAT when it is not
 * such a dataset or repeats a word. v is initialised here (caller frees; freed on error). */
int io_dense_vocab(const char *path, const char *dataset, io_vocab *v);
/* out (n) := the integer attribute `name` of the root group (e.g. "image_shape"), as
 * int64; IO_ERR_NOTFOUND when absent, IO_ERR_SHAPE when it does not hold exactly n values. */
int io_dense_attr_i64(const char *path, const char *name, int64_t *out, int n);

/* Creates dir and parents (mkdir -p). */
int io_mkdirs(const char *dir);
/* Atomically writes a whole small file (temp, fsync, rename). */
int io_write_file_atomic(const char *path, const void *data, size_t n);
const char *io_hdf5_version(void);

/* ---- pictures (png.c, libpng) ------------------------------------------------------ */
/* Writes img (h,w), row-major, values in [0,1] (clamped; NaN as 0), as an 8-bit grey PNG
 * at path via a temporary file and rename. IO_OK, or a negative io_status with io_error()
 * set; on failure nothing is left under path. */
int io_png_write_gray(const char *path, const float *img, int h, int w);

#endif
