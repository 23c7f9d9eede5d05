/* prepare.c - `lockstep prepare`: builds the vocabularies and token shards of a run
 * directory ahead of training, serially and without MPI.
 *
 * It repeats, step for step, what rank 0 does in trainer_data_init (trainer/data.c) for a
 * fresh text run: one counting pass over the training text (io_text_count), pruning
 * (io_vocab_prune: --min-count and --vocab-size for tokens, every label kept), encoding of
 * each split into <out>/data/<split>.shard (io_shard_encode; --max-len truncation except
 * for language modelling) and the stamp <out>/data/stamp.txt that names the sources (path
 * as given, size, mtime), the kind, --max-len and a hash of the vocabularies. A later
 * `lockstep train` with the same keys computes the same stamp, finds it current and maps
 * the shards as they are. tests/e2e_prepare.sh checks that the shards are not rewritten.
 * The stamp format must stay in step with data.c's.
 *
 * It does not handle dense (HDF5) data, which needs no preparation, does not save the
 * vocabularies anywhere else (train recounts them: see docs/operations.md), and does not
 * shuffle or split anything. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "trainer/prepare.h"
#include "trainer/trainer.h"

/* ---- the stamp, exactly as trainer/data.c writes it ------------------------------------ */

static uint64_t vocab_hash(const io_vocab *v, uint64_t h) {
    for (int i = 0; i < v->n; i++)
        for (const char *p = v->word[i];; p++) {
            h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
            if (!*p) break;
        }
    return h;
}

static void stamp_line(char *out, size_t n, const char *path) {
    struct stat st;
    if (path && *path && stat(path, &st) == 0)
        snprintf(out, n, "%s %lld %lld\n", path, (long long)st.st_size, (long long)st.st_mtime);
    else
        snprintf(out, n, "%s -\n", path ? path : "");
}

static int read_small(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
    return (int)n;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static int from_io(int rc) {
    if (rc >= 0) return NN_OK;
    nn_set_error("%s", io_error());
    return NN_ERR_DATA;
}

static double file_mb(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (double)st.st_size / 1e6 : 0.0;
}

static int64_t total_count(const io_vocab *v) {
    int64_t s = 0;
    for (int i = 0; i < v->n; i++) s += v->count[i];
    return s;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: lockstep prepare --data FILE [--valid F] [--test F] --out DIR\n"
            "                        (--kind lm|classify|parallel | --model NAME)\n"
            "                        [--vocab-size N] [--min-count N] [--max-len N] [--config FILE]\n"
            "\n"
            "Builds the vocabularies and encodes every split into token shards under DIR/data,\n"
            "exactly as `lockstep train` with the same keys would at start-up, so that train\n"
            "then maps them without re-encoding. Give train the same --data/--valid/--test\n"
            "strings, --out, --vocab-size, --min-count and --max-len (defaults 20000, 2, 200).\n"
            "Other training keys are accepted and ignored: a training command line or config\n"
            "file can be passed unchanged. Serial (no MPI); memory: the vocabulary tables.\n");
}

static int kind_of(const char *s) {
    if (strcmp(s, "classify") == 0) return IO_TEXT_CLASSIFY;
    if (strcmp(s, "parallel") == 0) return IO_TEXT_PARALLEL;
    if (strcmp(s, "lm") == 0) return IO_TEXT_PLAIN;
    return -1;
}

/* ---- the command ----------------------------------------------------------------------- */

int trainer_prepare_cmd(int argc, char **argv) {
    /* --kind is ours; everything else goes through the training parser */
    const char *kind_arg = NULL;
    char **av = calloc((size_t)argc + 1, sizeof *av);
    if (!av) {
        nn_set_error("out of memory");
        return NN_ERR_NOMEM;
    }
    int ac = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            free(av);
            return NN_OK;
        }
        if (strcmp(argv[i], "--kind") == 0) {
            if (i + 1 >= argc) {
                free(av);
                nn_set_error("--kind needs a value: lm, classify or parallel");
                return NN_ERR_CONFIG;
            }
            kind_arg = argv[++i];
        } else if (strncmp(argv[i], "--kind=", 7) == 0) {
            kind_arg = argv[i] + 7;
        } else {
            av[ac++] = argv[i];
        }
    }
    nn_config cfg = {0};
    io_vocab src = {0}, tgt = {0}, labels = {0};
    int rc = trainer_parse_args(&cfg, ac, av);
    free(av);
    if (rc < 0) goto done;

    int kind = kind_arg ? kind_of(kind_arg) : -1;
    if (kind_arg && kind < 0) {
        nn_set_error("--kind %s: expected lm, classify or parallel", kind_arg);
        rc = NN_ERR_CONFIG;
        goto done;
    }
    const char *model = nn_config_get(&cfg, "model");
    if (model) {
        const nn_model_ops *ops = nn_model_find(model);
        if (!ops) {
            nn_set_error("unknown model '%s' (see lockstep train --help)", model);
            rc = NN_ERR_CONFIG;
            goto done;
        }
        if (strcmp(ops->data_kind, "dense") == 0) {
            nn_set_error("model %s reads dense HDF5 data, which needs no preparation", model);
            rc = NN_ERR_CONFIG;
            goto done;
        }
        int mk = kind_of(ops->data_kind);
        if (kind >= 0 && kind != mk) {
            nn_set_error("--kind %s disagrees with --model %s, which reads %s data", kind_arg,
                         model, ops->data_kind);
            rc = NN_ERR_CONFIG;
            goto done;
        }
        kind = mk;
    }
    if (kind < 0) {
        usage(stderr);
        nn_set_error("give --kind lm|classify|parallel or --model NAME");
        rc = NN_ERR_CONFIG;
        goto done;
    }

    /* the same keys, defaults and checks as trainer_data_init */
    const char *train = nn_config_get(&cfg, "data");
    const char *valid = nn_config_get(&cfg, "valid");
    const char *test = nn_config_get(&cfg, "test");
    const char *out = nn_config_get(&cfg, "out");
    if (!out) out = "runs/default";
    long vocab_size, min_count, max_len;
    if ((rc = nn_config_int(&cfg, "vocab-size", 20000, &vocab_size)) < 0 ||
        (rc = nn_config_int(&cfg, "min-count", 2, &min_count)) < 0 ||
        (rc = nn_config_int(&cfg, "max-len", 200, &max_len)) < 0)
        goto done;
    if (!train || !*train) {
        nn_set_error("--data is required: the training corpus");
        rc = NN_ERR_CONFIG;
        goto done;
    }
    if (vocab_size < IO_N_SPECIAL + 1 || min_count < 1 || max_len < 0) {
        nn_set_error("need --vocab-size > %d, --min-count >= 1, --max-len >= 0", IO_N_SPECIAL);
        rc = NN_ERR_CONFIG;
        goto done;
    }
    const int want_tgt = kind == IO_TEXT_PARALLEL, want_labels = kind == IO_TEXT_CLASSIFY;

    /* 1. vocabularies: one streaming pass over the training text */
    double t0 = trainer_now();
    rc = from_io(io_vocab_init(&src, 1));
    if (rc == NN_OK && want_tgt) rc = from_io(io_vocab_init(&tgt, 1));
    if (rc == NN_OK && want_labels) rc = from_io(io_vocab_init(&labels, 0));
    if (rc == NN_OK)
        rc = from_io(io_text_count(train, kind, &src, want_tgt ? &tgt : NULL,
                                   want_labels ? &labels : NULL));
    if (rc < 0) goto done;
    const int64_t tokens = total_count(&src) + total_count(&tgt);
    const int words = src.n - IO_N_SPECIAL, words_tgt = want_tgt ? tgt.n - IO_N_SPECIAL : 0;
    rc = from_io(io_vocab_prune(&src, min_count, (int)vocab_size));
    if (rc == NN_OK && want_tgt) rc = from_io(io_vocab_prune(&tgt, min_count, (int)vocab_size));
    if (rc == NN_OK && want_labels) rc = from_io(io_vocab_prune(&labels, 1, 0));
    if (rc < 0) goto done;
    if (want_labels && labels.n < 2) {
        nn_set_error("%s: need at least 2 distinct labels, found %d", train, labels.n);
        rc = NN_ERR_DATA;
        goto done;
    }
    double dt = trainer_now() - t0, mb = file_mb(train);
    printf("prepare: vocabulary pass over %s: %.1f MB, %lld words in %.2f s (%.1f MB/s)\n", train,
           mb, (long long)tokens, dt, mb / (dt + 1e-9));
    printf("prepare: vocabulary %d entries: %d specials + %d of %d distinct words (min-count %ld, "
           "vocab-size %ld)", src.n, IO_N_SPECIAL, src.n - IO_N_SPECIAL, words, min_count,
           vocab_size);
    if (want_tgt) printf("; target %d + %d of %d", IO_N_SPECIAL, tgt.n - IO_N_SPECIAL, words_tgt);
    if (want_labels) printf("; %d labels", labels.n);
    printf("\n");

    /* 2. the stamp and the shards, as data.c */
    char dir[4096], stamp[16384] = {0}, old[16384] = {0}, line[4600];
    snprintf(dir, sizeof dir, "%s/data", out);
    if ((rc = from_io(io_mkdirs(dir))) < 0) goto done;
    const char *paths[3] = {train, valid, test};
    for (int i = 0; i < 3; i++) {
        stamp_line(line, sizeof line, paths[i]);
        strncat(stamp, line, sizeof stamp - strlen(stamp) - 1);
    }
    uint64_t h = 0xcbf29ce484222325ULL;
    h = vocab_hash(&src, h);
    h = vocab_hash(&tgt, h);
    h = vocab_hash(&labels, h);
    snprintf(line, sizeof line, "kind %d max-len %ld vocab %016llx format %d\n", kind, max_len,
             (unsigned long long)h, 1);
    strncat(stamp, line, sizeof stamp - strlen(stamp) - 1);
    char stamp_path[4200];
    snprintf(stamp_path, sizeof stamp_path, "%s/stamp.txt", dir);
    int fresh = read_small(stamp_path, old, sizeof old) >= 0 && strcmp(old, stamp) == 0;
    const char *names[3] = {"train", "valid", "test"};
    double enc_mb = 0, enc_s = 0;
    for (int i = 0; i < 3; i++) {
        if (!paths[i] || !*paths[i]) continue;
        char sp[4200];
        int k = snprintf(sp, sizeof sp, "%s/data/%s.shard", out, names[i]);
        if (k < 0 || (size_t)k >= sizeof sp) {
            nn_set_error("run directory path too long: %s", out);
            rc = NN_ERR_CONFIG;
            goto done;
        }
        struct stat st;
        if (fresh && stat(sp, &st) == 0) {
            printf("prepare: %s is current (stamp matches); left as it is\n", sp);
            continue;
        }
        int ml = kind == IO_TEXT_PLAIN ? 0 : (int)max_len;
        double t1 = trainer_now();
        rc = from_io(io_shard_encode(paths[i], kind, &src, want_tgt ? &tgt : NULL,
                                     want_labels ? &labels : NULL, ml, sp));
        if (rc < 0) goto done;
        double s = trainer_now() - t1, in_mb = file_mb(paths[i]);
        enc_mb += in_mb;
        enc_s += s;
        io_shard sh = {0};
        if ((rc = from_io(io_shard_open(&sh, sp, 0))) < 0) goto done;
        printf("prepare: %s: %lld examples, %lld tokens%s, %.1f MB from %.1f MB of text in %.2f s "
               "(%.1f MB/s)\n",
               sp, (long long)sh.n, (long long)(sh.n_tok + sh.n_tok_tgt),
               want_tgt ? " (source + target)" : "", file_mb(sp), in_mb, s, in_mb / (s + 1e-9));
        io_shard_close(&sh);
    }
    if (!fresh && (rc = from_io(io_write_file_atomic(stamp_path, stamp, strlen(stamp)))) < 0)
        goto done;
    dt = trainer_now() - t0;
    printf("prepare: %s ready in %.2f s (encoding %.1f MB/s); train with the same --data/--valid/"
           "--test, --out %s, --vocab-size %ld, --min-count %ld, --max-len %ld\n",
           dir, dt, enc_s > 0 ? enc_mb / enc_s : 0.0, out, vocab_size, min_count, max_len);
    rc = NN_OK;
done:
    io_vocab_free(&src);
    io_vocab_free(&tgt);
    io_vocab_free(&labels);
    nn_config_free(&cfg);
    return rc;
}

int trainer_prepare_main(int argc, char **argv) {
    int rc = trainer_prepare_cmd(argc, argv);
    if (rc < 0) fprintf(stderr, "lockstep: error: %s\n", nn_error());
    return rc == NN_ERR_CONFIG ? 2 : rc < 0 ? 1 : 0;
}
