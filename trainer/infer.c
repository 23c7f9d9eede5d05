/* infer.c - using a trained checkpoint: `lockstep translate` (greedy or beam search) and
 * `lockstep generate` (sampling from a language model), plus the loader they share.
 *
 * These run in one process without MPI: the model is rebuilt from the configuration and
 * vocabularies stored in the checkpoint, then its parameters are read. Input is text
 * tokenised the way the corpus scripts tokenise (tokens separated by spaces); output is
 * tokens joined by single spaces, one line per input line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/infer.h"

io_tensor *trainer_tensor_table(const nn_params *ps) {
    io_tensor *t = calloc((size_t)(ps->n ? ps->n : 1), sizeof *t);
    if (!t) return NULL;
    for (int i = 0; i < ps->n; i++) {
        t[i].name = ps->p[i].name;
        t[i].offset = ps->p[i].offset;
        t[i].ndim = ps->p[i].ndim;
        for (int k = 0; k < ps->p[i].ndim; k++) t[i].shape[k] = ps->p[i].shape[k];
    }
    return t;
}

io_ckpt trainer_ckpt_of(const char *model, nn_params *ps, const io_tensor *t, int n_slots,
                        const char *const *slot_names, float *const *slots) {
    io_ckpt ck = {0};
    ck.model = model;
    ck.n_tensors = ps->n;
    ck.tensors = t;
    ck.n_floats = ps->total;
    ck.params = ps->data;
    ck.n_slots = n_slots;
    ck.slot_names = slot_names;
    ck.slots = slots;
    return ck;
}

void trainer_loaded_free(trainer_loaded *L) {
    nn_model_free(&L->model);
    nn_config_free(&L->cfg);
    for (int i = 0; i < 3; i++) io_vocab_free(&L->vocab[i]);
    memset(L, 0, sizeof *L);
}

int trainer_load_checkpoint(trainer_loaded *L, const char *path, int max_batch, int max_len) {
    memset(L, 0, sizeof *L);
    char *model = NULL, **keys = NULL, **vals = NULL;
    int n = 0, rc = NN_OK;
    if (io_ckpt_peek(path, &model, &n, &keys, &vals) < 0) {
        nn_set_error("%s", io_error());
        return NN_ERR_DATA;
    }
    for (int i = 0; i < n && rc == NN_OK; i++) rc = nn_config_set(&L->cfg, keys[i], vals[i]);
    for (int i = 0; i < n; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    free(keys);
    free(vals);
    L->ops = model ? nn_model_find(model) : NULL;
    if (rc == NN_OK && !L->ops) {
        nn_set_error("%s: model '%s' is not built into this lockstep", path,
                     model ? model : "?");
        rc = NN_ERR_CONFIG;
    }
    free(model);
    if (rc < 0) {
        trainer_loaded_free(L);
        return rc;
    }
    const char *kind = L->ops->data_kind;
    const char *names[3] = {"src", NULL, NULL};
    int nv = 0;
    if (strcmp(kind, "dense") != 0) {
        nv = 1;
        if (strcmp(kind, "parallel") == 0) names[nv++] = "tgt";
        if (strcmp(kind, "classify") == 0) names[nv++] = "labels";
        if (io_ckpt_read_vocabs(path, nv, names, L->vocab) < 0) {
            nn_set_error("%s", io_error());
            trainer_loaded_free(L);
            return NN_ERR_DATA;
        }
    }
    L->src = &L->vocab[0];
    L->tgt = strcmp(kind, "parallel") == 0 ? &L->vocab[1] : &L->vocab[0];
    nn_dims d = {0};
    d.vocab = L->vocab[0].n;
    d.vocab_counts = L->vocab[0].count;
    if (strcmp(kind, "parallel") == 0) d.vocab_tgt = L->vocab[1].n;
    if (strcmp(kind, "classify") == 0) d.classes = L->vocab[1].n;
    long ml = max_len, seq = 64;
    nn_config_int(&L->cfg, "max-len", max_len, &ml);
    nn_config_int(&L->cfg, "seq-len", 64, &seq);
    if (ml <= 0) ml = max_len;
    d.max_len = strcmp(kind, "lm") == 0 ? (int)seq : (int)ml;
    d.max_len_tgt = d.max_len + 1;
    long ctx = 0; /* models with positions cannot take more than their context */
    if (nn_config_int(&L->cfg, "context", 0, &ctx) == NN_OK && ctx > 1 && d.max_len_tgt > ctx) {
        d.max_len_tgt = (int)ctx;
        d.max_len = (int)ctx - 1;
    }
    d.max_batch = max_batch;
    long seed = 1;
    nn_config_int(&L->cfg, "seed", 1, &seed);
    if ((rc = nn_model_init(&L->model, L->ops, &L->cfg, &d, (uint64_t)seed)) < 0) {
        trainer_loaded_free(L);
        return rc;
    }
    nn_params *ps = &L->model.params;
    io_tensor *t = trainer_tensor_table(ps);
    if (!t) {
        trainer_loaded_free(L);
        return NN_ERR_NOMEM;
    }
    io_ckpt ck = trainer_ckpt_of(L->ops->name, ps, t, 0, NULL, NULL);
    rc = io_ckpt_read(path, &ck) < 0 ? NN_ERR_DATA : NN_OK;
    if (rc < 0) nn_set_error("%s", io_error());
    L->step = ck.train.step;
    io_ckpt_release(&ck);
    free(t);
    if (rc < 0) trainer_loaded_free(L);
    return rc;
}

/* Splits a line into ids of v (unknown -> <unk>), at most cap. Returns the count. */
int trainer_encode_line(const io_vocab *v, char *line, int32_t *ids, int cap) {
    int n = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && n < cap; tok = strtok(NULL, " \t\r\n")) {
        int id = io_vocab_lookup(v, tok, strlen(tok));
        ids[n++] = id >= 0 ? id : IO_UNK;
    }
    return n;
}

/* Writes ids up to the first </s> as words separated by spaces; specials are skipped. */
void trainer_write_ids(FILE *f, const io_vocab *v, const int32_t *ids, int n) {
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (ids[i] == IO_EOS) break;
        if (ids[i] < IO_N_SPECIAL && ids[i] != IO_UNK) continue;
        if (ids[i] < 0 || ids[i] >= v->n) continue;
        fprintf(f, "%s%s", first ? "" : " ", v->word[ids[i]]);
        first = 0;
    }
    fputc('\n', f);
}

static int opt_value(int argc, char **argv, int *i, const char **out) {
    if (*i + 1 >= argc) {
        nn_set_error("%s needs a value", argv[*i]);
        return NN_ERR_CONFIG;
    }
    *out = argv[++*i];
    return NN_OK;
}

static int parse_num(const char *key, const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || v < lo || v > hi) {
        nn_set_error("%s: expected a number in [%g, %g], got '%s'", key, lo, hi, s);
        return NN_ERR_CONFIG;
    }
    *out = v;
    return NN_OK;
}

/* lockstep translate --ckpt C [--beam B] [--len-alpha A] [--max-out N] [--batch N]
 *                    [--input FILE] [--output FILE] */
int trainer_translate_cmd(int argc, char **argv) {
    const char *ckpt = NULL, *in_path = NULL, *out_path = NULL, *v;
    double beam = 1, alpha = 0.6, max_out = 100, batch = 32;
    int rc = NN_OK;
    for (int i = 0; i < argc && rc == NN_OK; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--ckpt") == 0) rc = opt_value(argc, argv, &i, &ckpt);
        else if (strcmp(a, "--input") == 0) rc = opt_value(argc, argv, &i, &in_path);
        else if (strcmp(a, "--output") == 0) rc = opt_value(argc, argv, &i, &out_path);
        else if (strcmp(a, "--beam") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 1, 64, &beam);
        } else if (strcmp(a, "--len-alpha") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 0, 5, &alpha);
        } else if (strcmp(a, "--max-out") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK)
                rc = parse_num(a, v, 1, 4096, &max_out);
        } else if (strcmp(a, "--batch") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 1, 4096, &batch);
        } else {
            nn_set_error("translate: unknown option '%s' (--ckpt --beam --len-alpha --max-out "
                         "--batch --input --output)", a);
            rc = NN_ERR_CONFIG;
        }
    }
    if (rc < 0) return rc;
    if (!ckpt) {
        nn_set_error("translate needs --ckpt FILE");
        return NN_ERR_CONFIG;
    }
    trainer_loaded L;
    const int B = (int)batch, MO = (int)max_out;
    if ((rc = trainer_load_checkpoint(&L, ckpt, B, 200)) < 0) return rc;
    if (!L.ops->decode) {
        nn_set_error("%s: model %s cannot decode (translate needs a seq2seq or transformer)",
                     ckpt, L.ops->name);
        trainer_loaded_free(&L);
        return NN_ERR_UNSUPPORTED;
    }
    FILE *in = in_path ? fopen(in_path, "r") : stdin;
    FILE *out = out_path ? fopen(out_path, "w") : stdout;
    if (!in || !out) {
        nn_set_error("%s: cannot open", !in ? in_path : out_path);
        if (in && in != stdin) fclose(in);
        trainer_loaded_free(&L);
        return NN_ERR_DATA;
    }
    const int T = L.model.dims.max_len;
    int32_t *x = calloc((size_t)B * T, sizeof *x), *len = calloc((size_t)B, sizeof *len);
    int32_t *hyp = calloc((size_t)B * MO, sizeof *hyp);
    int64_t *index = calloc((size_t)B, sizeof *index);
    char *line = NULL;
    size_t cap = 0;
    if (!x || !len || !hyp || !index) rc = NN_ERR_NOMEM;
    int64_t lineno = 0;
    while (rc == NN_OK) {
        int b = 0, Tb = 1;
        int32_t *row = x;
        while (b < B && getline(&line, &cap, in) >= 0) {
            row = x + (size_t)b * T;
            len[b] = trainer_encode_line(L.src, line, row, T);
            index[b] = lineno++;
            Tb = len[b] > Tb ? len[b] : Tb;
            b++;
        }
        if (b == 0) break;
        /* repack rows with stride Tb, padded */
        for (int i = 0; i < b; i++) {
            memmove(x + (size_t)i * Tb, x + (size_t)i * T, (size_t)len[i] * sizeof *x);
            for (int t = len[i]; t < Tb; t++) x[(size_t)i * Tb + t] = IO_PAD;
        }
        nn_batch nb = {0};
        nb.B = b;
        nb.T = Tb;
        nb.x = x;
        nb.x_len = len;
        nb.index = index;
        rc = L.ops->decode(&L.model, &nb, (int)beam, (float)alpha, MO, hyp);
        for (int i = 0; rc == NN_OK && i < b; i++)
            trainer_write_ids(out, L.tgt, hyp + (size_t)i * MO, MO);
        (void)row;
    }
    free(line);
    free(x);
    free(len);
    free(hyp);
    free(index);
    if (in != stdin) fclose(in);
    if (out != stdout && fclose(out) != 0 && rc == NN_OK) {
        nn_set_error("%s: write failed", out_path);
        rc = NN_ERR_DATA;
    }
    trainer_loaded_free(&L);
    return rc;
}

/* lockstep generate --ckpt C [--prompt TEXT] [--max-out N] [--temperature T] [--top-k K]
 *                   [--seed S] [--samples N] */
int trainer_generate_cmd(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "", *v;
    double max_out = 50, temp = 1.0, top_k = 0, seed = 1, samples = 1;
    int rc = NN_OK;
    for (int i = 0; i < argc && rc == NN_OK; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--ckpt") == 0) rc = opt_value(argc, argv, &i, &ckpt);
        else if (strcmp(a, "--prompt") == 0) rc = opt_value(argc, argv, &i, &prompt);
        else if (strcmp(a, "--max-out") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 1, 100000, &max_out);
        } else if (strcmp(a, "--temperature") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 1e-3, 100, &temp);
        } else if (strcmp(a, "--top-k") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 0, 1e9, &top_k);
        } else if (strcmp(a, "--seed") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 0, 1e15, &seed);
        } else if (strcmp(a, "--samples") == 0) {
            if ((rc = opt_value(argc, argv, &i, &v)) == NN_OK) rc = parse_num(a, v, 1, 1000, &samples);
        } else {
            nn_set_error("generate: unknown option '%s' (--ckpt --prompt --max-out "
                         "--temperature --top-k --seed --samples)", a);
            rc = NN_ERR_CONFIG;
        }
    }
    if (rc < 0) return rc;
    if (!ckpt) {
        nn_set_error("generate needs --ckpt FILE");
        return NN_ERR_CONFIG;
    }
    trainer_loaded L;
    if ((rc = trainer_load_checkpoint(&L, ckpt, 1, 200)) < 0) return rc;
    if (!L.ops->generate) {
        nn_set_error("%s: model %s cannot generate (generate needs a language model)", ckpt,
                     L.ops->name);
        trainer_loaded_free(&L);
        return NN_ERR_UNSUPPORTED;
    }
    char *p = strdup(prompt);
    int32_t *ids = calloc(4096, sizeof *ids);
    int32_t *out = calloc((size_t)max_out + 1, sizeof *out);
    if (!p || !ids || !out) rc = NN_ERR_NOMEM;
    int n = rc == NN_OK ? trainer_encode_line(L.src, p, ids, 4096) : 0;
    for (int s = 0; rc == NN_OK && s < (int)samples; s++) {
        int k = L.ops->generate(&L.model, ids, n, (int)max_out, (float)temp, (int)top_k,
                                (uint64_t)seed + (uint64_t)s, out);
        if (k < 0) {
            rc = k;
            break;
        }
        if (*prompt) printf("%s ", prompt);
        /* generated text may span several lines: </s> ends a line of the corpus */
        int first = 1;
        for (int i = 0; i < k; i++) {
            if (out[i] == IO_EOS) {
                printf(" /");
                continue;
            }
            if (out[i] < 0 || out[i] >= L.src->n || (out[i] < IO_N_SPECIAL && out[i] != IO_UNK))
                continue;
            printf("%s%s", first ? "" : " ", L.src->word[out[i]]);
            first = 0;
        }
        printf("\n");
    }
    free(p);
    free(ids);
    free(out);
    trainer_loaded_free(&L);
    return rc;
}
