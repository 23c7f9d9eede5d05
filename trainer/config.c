/* config.c - the command line and configuration files of `lockstep train`.
 *
 * Every key works both as a flag and in a config file, and every key has a default and
 * a line of help. This file only collects strings and rejects unknown keys; typed
 * checking happens where a value is used (nn_config_int & co name the key on error). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/trainer.h"

const nn_key trainer_keys[] = {
    {"model", NULL, "model to train (see the list above)"},
    {"config", "", "configuration file of `key = value` lines; flags override it"},
    {"data", NULL, "training corpus (label<TAB>text, src<TAB>tgt, plain text, or .h5 images)"},
    {"valid", "", "validation corpus, same format"},
    {"test", "", "test corpus, same format"},
    {"out", "runs/default", "run directory: checkpoints, config.txt, metrics.jsonl"},
    {"steps", "0", "optimizer steps to run (0: use --epochs)"},
    {"epochs", "1", "passes over the training data when --steps is 0"},
    {"batch-size", "32", "GLOBAL batch in examples, whatever the rank count"},
    {"micro-batch", "0", "examples per forward pass (gradient accumulation); 0: batch/ranks"},
    {"optimizer", "adam", "sgd|momentum|adam|adamw"},
    {"lr", "1e-3", "peak learning rate"},
    {"schedule", "constant", "constant|cosine|linear|invsqrt (after warm-up)"},
    {"warmup", "0", "linear warm-up steps"},
    {"min-lr", "0", "floor of the cosine and linear decays"},
    {"momentum", "0.9", "momentum of sgd with momentum"},
    {"beta1", "0.9", "Adam beta1"},
    {"beta2", "0.999", "Adam beta2"},
    {"eps", "1e-8", "Adam epsilon"},
    {"weight-decay", "0.01", "decoupled weight decay of adamw (matrices only)"},
    {"clip", "0", "clip the global gradient norm to this value (0: off)"},
    {"seed", "1", "seed of initialisation, shuffling, dropout and sampling"},
    {"threads", "0", "OpenBLAS threads per rank (0: OPENBLAS_NUM_THREADS, else cores / ranks on this node)"},
    {"matmul", "fp32", "fp32|bf16: precision of matrix products (bf16: inputs rounded to bfloat16 and fp32 sums, as PyTorch's autocast, on AMX tiles where the CPU has them; parameters, gradients and optimizer state stay fp32)"},
    {"deterministic", "0", "bit-identical results on any rank count (fixed-point reduction)"},
    {"zero", "0", "0|1: 1 shards optimizer state over ranks (ZeRO stage 1)"},
    {"sparse-updates", "auto", "auto|1|0: models listing touched rows (skipgram) zero, clip and update only those (auto: with sgd; 1: also momentum/adam/adamw, lazily: untouched rows' state is not decayed)"},
    {"sync-every", "auto", "sparse updates on several ranks: each rank applies its own share of each step and the ranks add up their changes every N steps and before each evaluation and checkpoint (1: sum touched rows' gradients every step; auto: ceil(256 / batch-size) steps, at most 1/16 epoch, with sgd)"},
    {"bucket-mb", "auto", "gradient buckets of this many MiB reduced during backward (0: one allreduce after it; auto: 4 across nodes, 0 within one node, where it measured faster)"},
    {"eval-every", "0", "evaluate every N steps (0: at the end of each epoch and run)"},
    {"eval-batches", "0", "validation batches per evaluation (0: the whole set)"},
    {"ckpt-every", "0", "checkpoint every N steps (0: only at the end)"},
    {"keep", "3", "checkpoints kept in the run directory"},
    {"resume", "none", "none|auto|PATH: auto takes the newest complete checkpoint in --out"},
    {"stop-after", "0", "end this invocation after N steps with a checkpoint (0: run to the end)"},
    {"patience", "0", "stop after N evaluations without improvement (0: never)"},
    {"log-every", "10", "progress line every N steps"},
    {"on-nan", "stop", "stop|skip: what a NaN or Inf loss or gradient does"},
    {"bleu", "1", "models that decode: BLEU of greedy/beam output on every evaluation"},
    {"eval-beam", "1", "beam width of decoding during evaluation (1: greedy)"},
    {"len-alpha", "0.6", "length normalisation of beam search: score / ((5+len)/6)^alpha"},
    {"init-embeddings", "", "CKPT[:TENSOR]: copy word vectors (default input/weight) into this model's embedding/weight, matched by word"},
    {"freeze", "", "comma-separated parameter name prefixes the optimizer leaves alone"},
    {"vocab-size", "20000", "largest vocabulary, specials included"},
    {"min-count", "2", "words seen fewer times in training become <unk>"},
    {"max-len", "200", "truncate sequences to this many tokens (0: no limit)"},
    {"seq-len", "64", "language models: tokens per training window"},
    {"order", "shuffle", "shuffle|sequential|lanes: example order (lanes: contiguous LM streams)"},
    {NULL, NULL, NULL}};

static const nn_key *find_key(const nn_key *keys, const char *name) {
    if (!keys) return NULL;
    for (const nn_key *k = keys; k->name; k++)
        if (strcmp(k->name, name) == 0) return k;
    return NULL;
}

int trainer_is_trainer_key(const char *key) { return find_key(trainer_keys, key) != NULL; }

int trainer_is_model_key(const nn_model_ops *ops, const char *key) {
    return ops && find_key(ops->keys, key) != NULL;
}

static int is_bool_key(const char *key) {
    const nn_key *k = find_key(trainer_keys, key);
    return k && k->def && (strcmp(key, "deterministic") == 0);
}

/* Checks that key is known for the model named in cfg (if any model is named yet). */
static int check_key(const nn_config *cfg, const char *key, const char *where) {
    if (trainer_is_trainer_key(key)) return NN_OK;
    const char *mname = nn_config_get(cfg, "model");
    const nn_model_ops *ops = mname ? nn_model_find(mname) : NULL;
    if (ops && trainer_is_model_key(ops, key)) return NN_OK;
    if (!ops) {
        /* Without a model we cannot tell yet; any model's key is accepted here and the
         * final check in trainer_config_defaults rejects it if the model lacks it. */
        for (int i = 0; nn_models[i]; i++)
            if (trainer_is_model_key(nn_models[i], key)) return NN_OK;
    }
    if (ops)
        nn_set_error("%sunknown key '%s' for model %s (see lockstep train --model %s --help)",
                     where, key, ops->name, ops->name);
    else
        nn_set_error("%sunknown key '%s' (see lockstep train --help)", where, key);
    return NN_ERR_CONFIG;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

static int parse_file(nn_config *cfg, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        nn_set_error("%s: cannot open config file: %s", path, strerror(errno));
        return NN_ERR_CONFIG;
    }
    char line[4096];
    int lineno = 0, rc = NN_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *h = strchr(line, '#');
        if (h) *h = 0;
        char *s = trim(line);
        if (!*s) continue;
        if (s[0] == '-' && s[1] == '-') s += 2;
        char *sep = strpbrk(s, "= \t");
        if (!sep) {
            nn_set_error("%s:%d: expected 'key = value', got '%s'", path, lineno, s);
            rc = NN_ERR_CONFIG;
            break;
        }
        char *val = sep + 1;
        *sep = 0;
        char *key = trim(s);
        val = trim(val);
        if (*val == '=') val = trim(val + 1);
        char where[600];
        snprintf(where, sizeof where, "%s:%d: ", path, lineno);
        if ((rc = check_key(cfg, key, where)) < 0) break;
        if (strcmp(key, "config") == 0) {
            nn_set_error("%s:%d: a config file cannot include another", path, lineno);
            rc = NN_ERR_CONFIG;
            break;
        }
        if ((rc = nn_config_set(cfg, key, val)) < 0) break;
    }
    fclose(f);
    return rc;
}

int trainer_parse_args(nn_config *cfg, int argc, char **argv) {
    nn_config flags = {0};
    int rc = NN_OK;
    for (int i = 0; i < argc && rc == NN_OK; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            nn_set_error("unexpected argument '%s' (keys are given as --key value)", a);
            rc = NN_ERR_CONFIG;
            break;
        }
        char key[128];
        const char *val = NULL;
        const char *eq = strchr(a + 2, '=');
        size_t klen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (klen >= sizeof key) klen = sizeof key - 1;
        memcpy(key, a + 2, klen);
        key[klen] = 0;
        if (eq) {
            val = eq + 1;
        } else if (is_bool_key(key) && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
            val = "1";
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            nn_set_error("--%s needs a value", key);
            rc = NN_ERR_CONFIG;
            break;
        }
        /* The model must be known before its keys can be checked: flags are collected
         * first and checked once --model and --config are known. */
        rc = nn_config_set(&flags, key, val);
    }
    if (rc == NN_OK) {
        const char *m = nn_config_get(&flags, "model");
        if (m) rc = nn_config_set(cfg, "model", m);
    }
    if (rc == NN_OK) {
        const char *file = nn_config_get(&flags, "config");
        if (file && *file) {
            rc = parse_file(cfg, file);
            if (rc == NN_OK) rc = nn_config_set(cfg, "config", file);
        }
    }
    if (rc == NN_OK && nn_config_get(&flags, "model") == NULL && nn_config_get(cfg, "model")) {
        /* the model came from the file */
    }
    for (int i = 0; rc == NN_OK && i < flags.n; i++) {
        char where[8] = "";
        if ((rc = check_key(cfg, flags.key[i], where)) < 0) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", nn_error());
            nn_set_error("--%s: %s", flags.key[i], msg);
            break;
        }
        rc = nn_config_set(cfg, flags.key[i], flags.val[i]);
    }
    nn_config_free(&flags);
    return rc;
}

int trainer_config_defaults(nn_config *cfg, const nn_model_ops *ops) {
    for (int i = 0; i < cfg->n; i++) {
        if (!trainer_is_trainer_key(cfg->key[i]) && !trainer_is_model_key(ops, cfg->key[i])) {
            nn_set_error("unknown key '%s' for model %s (see lockstep train --model %s --help)",
                         cfg->key[i], ops->name, ops->name);
            return NN_ERR_CONFIG;
        }
    }
    const nn_key *tables[2] = {trainer_keys, ops->keys};
    for (int t = 0; t < 2; t++) {
        if (!tables[t]) continue;
        for (const nn_key *k = tables[t]; k->name; k++) {
            if (nn_config_get(cfg, k->name)) continue;
            if (!k->def) {
                nn_set_error("missing required key --%s (%s)", k->name, k->help);
                return NN_ERR_CONFIG;
            }
            int rc = nn_config_set(cfg, k->name, k->def);
            if (rc < 0) return rc;
        }
    }
    return NN_OK;
}

static void print_keys(FILE *f, const nn_key *keys) {
    for (const nn_key *k = keys; k && k->name; k++) {
        char left[64];
        snprintf(left, sizeof left, "--%s %s", k->name, k->def ? k->def : "(required)");
        fprintf(f, "  %-30s %s\n", left, k->help);
    }
}

void trainer_print_help(FILE *f, const char *prog, const nn_model_ops *only) {
    fprintf(f, "usage: %s train --model NAME [--config FILE] [--key value ...]\n\n", prog);
    fprintf(f, "models:\n");
    for (int i = 0; nn_models[i]; i++)
        fprintf(f, "  %-18s %s\n", nn_models[i]->name, nn_models[i]->summary);
    fprintf(f, "\nkeys of every model (flag, default, meaning):\n");
    print_keys(f, trainer_keys);
    for (int i = 0; nn_models[i]; i++) {
        if (only && only != nn_models[i]) continue;
        if (!nn_models[i]->keys || !nn_models[i]->keys[0].name) continue;
        fprintf(f, "\nkeys of --model %s:\n", nn_models[i]->name);
        print_keys(f, nn_models[i]->keys);
    }
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char *trainer_config_dump(const nn_config *cfg) {
    char **lines = malloc((size_t)(cfg->n ? cfg->n : 1) * sizeof *lines);
    if (!lines) return NULL;
    size_t total = 1;
    for (int i = 0; i < cfg->n; i++) {
        size_t len = strlen(cfg->key[i]) + strlen(cfg->val[i]) + 5;
        lines[i] = malloc(len);
        if (!lines[i]) {
            for (int j = 0; j < i; j++) free(lines[j]);
            free(lines);
            return NULL;
        }
        snprintf(lines[i], len, "%s = %s", cfg->key[i], cfg->val[i]);
        total += len;
    }
    qsort(lines, (size_t)cfg->n, sizeof *lines, cmp_str);
    char *out = malloc(total);
    if (out) {
        size_t o = 0;
        for (int i = 0; i < cfg->n; i++) o += (size_t)sprintf(out + o, "%s\n", lines[i]);
        out[o] = 0;
    }
    for (int i = 0; i < cfg->n; i++) free(lines[i]);
    free(lines);
    return out;
}
