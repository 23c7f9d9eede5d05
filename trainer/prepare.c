/* prepare.c - `lockstep prepare`: builds the vocabularies and token shards of a run
 * directory ahead of training, serially and without MPI.
 *
 * It runs trainer_data_prepare (trainer/data.c), the same function rank 0 of `lockstep
 * train` runs at start-up: one counting pass over the training text, pruning, encoding of
 * each split into <out>/data/<split>.shard, vocab.bin and the stamp. A later `lockstep
 * train` with the same keys finds the stamp current and maps the shards as they are.
 * tests/e2e_prepare.sh checks that the shards are not rewritten.
 *
 * It does not handle dense (HDF5) data, which needs no preparation, and does not shuffle
 * or split anything. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "trainer/prepare.h"
#include "trainer/trainer.h"

/* ---- helpers ------------------------------------------------------------------------------ */

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
    double t0 = trainer_now();
    trainer_prep p = {kind, {train, valid, test}, out, vocab_size, min_count, max_len, 1};
    if ((rc = trainer_data_prepare(&p, NULL, 0, &src, &tgt, &labels)) < 0) goto done;
    printf("prepare: %s/data ready in %.2f s; train with the same --data/--valid/--test, "
           "--out %s, --vocab-size %ld, --min-count %ld, --max-len %ld\n",
           out, trainer_now() - t0, out, vocab_size, min_count, max_len);
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
