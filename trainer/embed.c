/* embed.c - `lockstep embed`: nearest neighbours, analogies, evaluation against analogy
 * and similarity sets, and export in word2vec text format (see embed.h).
 *
 * All similarity is cosine: rows are normalised once into a copy, a query is one dot
 * product per vocabulary row, and the analogy evaluation scores 256 questions at a time
 * with one GEMM. Analogy files use the word2vec layout (": section" lines, then
 * "a b c d" meaning a : b :: c : d, answered by the nearest word to b - a + c other than
 * a, b and c); similarity files hold "w1 w2 score" lines (# comments). Questions and pairs
 * with a word outside the vocabulary are skipped and counted.
 *
 * It does not train, use MPI or modify checkpoints. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/embed.h"
#include "trainer/infer.h"

typedef struct emb {
    trainer_loaded L;   /* the checkpoint (zeroed for --vec) */
    io_vocab own;       /* the vocabulary of a --vec file */
    const io_vocab *v;  /* L.src or &own */
    int V, dim, first;  /* rows; first real word (4 after the specials, 0 for --vec) */
    const float *raw;   /* (V, dim) as trained */
    float *rawbuf;      /* owned rows of a --vec file */
    float *unit;        /* (V, dim) rows scaled to length 1 (zero rows stay zero) */
} emb;

static void emb_free(emb *e) {
    trainer_loaded_free(&e->L);
    io_vocab_free(&e->own);
    free(e->rawbuf);
    free(e->unit);
    memset(e, 0, sizeof *e);
}

static int emb_normalise(emb *e) {
    e->unit = malloc((size_t)e->V * e->dim * sizeof *e->unit);
    if (!e->unit) {
        nn_set_error("out of memory for %d x %d embeddings", e->V, e->dim);
        return NN_ERR_NOMEM;
    }
    for (int i = 0; i < e->V; i++) {
        const float *r = e->raw + (size_t)i * e->dim;
        float *u = e->unit + (size_t)i * e->dim;
        double s = 0;
        for (int c = 0; c < e->dim; c++) s += (double)r[c] * r[c];
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int c = 0; c < e->dim; c++) u[c] = r[c] * inv;
    }
    return NN_OK;
}

static int emb_load_ckpt(emb *e, const char *path) {
    int rc = trainer_load_checkpoint(&e->L, path, 1, 1);
    if (rc < 0) return rc;
    const nn_params *ps = &e->L.model.params;
    int p = nn_params_find(ps, "input/weight");
    if (p < 0) p = nn_params_find(ps, "embedding/weight");
    if (p < 0 || ps->p[p].ndim != 2 || ps->p[p].shape[0] != e->L.src->n) {
        nn_set_error("%s: model %s has no input/weight or embedding/weight matrix of one row per "
                     "word", path, e->L.ops->name);
        return NN_ERR_UNSUPPORTED;
    }
    e->v = e->L.src;
    e->V = ps->p[p].shape[0];
    e->dim = ps->p[p].shape[1];
    e->first = IO_N_SPECIAL < e->V ? IO_N_SPECIAL : e->V;
    e->raw = ps->data + ps->p[p].offset;
    return emb_normalise(e);
}

static int emb_load_vec(emb *e, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        nn_set_error("%s: cannot open", path);
        return NN_ERR_DATA;
    }
    char *line = NULL;
    size_t cap = 0;
    long V = 0, dim = 0, lineno = 1;
    int rc = NN_OK;
    if (getline(&line, &cap, f) < 0 || sscanf(line, "%ld %ld", &V, &dim) != 2 || V < 1 ||
        dim < 1 || V > 100000000 || dim > 100000) {
        nn_set_error("%s:1: expected a header \"V dim\"", path);
        rc = NN_ERR_DATA;
    }
    if (rc == NN_OK && io_vocab_init(&e->own, 0) < 0) rc = NN_ERR_NOMEM;
    if (rc == NN_OK && !(e->rawbuf = malloc((size_t)V * dim * sizeof *e->rawbuf))) {
        nn_set_error("%s: out of memory for %ld x %ld", path, V, dim);
        rc = NN_ERR_NOMEM;
    }
    int n = 0;
    while (rc == NN_OK && n < V && getline(&line, &cap, f) >= 0) {
        lineno++;
        char *s = line, *end;
        while (*s && !isspace((unsigned char)*s)) s++;
        size_t wl = (size_t)(s - line);
        if (wl == 0) {
            nn_set_error("%s:%ld: empty word", path, lineno);
            rc = NN_ERR_DATA;
            break;
        }
        float *row = e->rawbuf + (size_t)n * dim;
        for (long c = 0; c < dim; c++) {
            row[c] = strtof(s, &end);
            if (end == s) {
                nn_set_error("%s:%ld: expected %ld numbers after the word", path, lineno, dim);
                rc = NN_ERR_DATA;
                break;
            }
            s = end;
        }
        if (rc < 0) break;
        if (io_vocab_lookup(&e->own, line, wl) >= 0) continue; /* first copy wins */
        if (io_vocab_add(&e->own, line, wl, 1) != n) {
            nn_set_error("%s: out of memory for the vocabulary", path);
            rc = NN_ERR_NOMEM;
            break;
        }
        n++;
    }
    free(line);
    fclose(f);
    if (rc < 0) return rc;
    if (n == 0) {
        nn_set_error("%s: no vectors", path);
        return NN_ERR_DATA;
    }
    e->v = &e->own;
    e->V = n;
    e->dim = (int)dim;
    e->first = 0;
    e->raw = e->rawbuf;
    return emb_normalise(e);
}

static int emb_id(const emb *e, const char *w) {
    int id = io_vocab_lookup(e->v, w, strlen(w));
    return id >= e->first ? id : -1;
}

/* The k best rows by score against q (unit vectors), excluding ids in ex[0..nex). */
static int emb_topk(const emb *e, const float *q, int k, const int *ex, int nex, int *best,
                    float *bs) {
    int n = 0;
    for (int i = e->first; i < e->V; i++) {
        int skip = 0;
        for (int j = 0; j < nex; j++) skip |= ex[j] == i;
        if (skip) continue;
        const float *u = e->unit + (size_t)i * e->dim;
        float s = 0;
        for (int c = 0; c < e->dim; c++) s += q[c] * u[c];
        if (n == k && s <= bs[k - 1]) continue;
        int j = n < k ? n++ : k - 1;
        while (j > 0 && bs[j - 1] < s) {
            bs[j] = bs[j - 1];
            best[j] = best[j - 1];
            j--;
        }
        bs[j] = s;
        best[j] = i;
    }
    return n;
}

/* ---- evaluation ---------------------------------------------------------------------- */

static void ranks_of(const double *x, int n, double *r, int *ord) {
    for (int i = 0; i < n; i++) ord[i] = i;
    /* insertion sort is fine for a few thousand pairs; stable */
    for (int i = 1; i < n; i++) {
        int t = ord[i], j = i;
        while (j > 0 && x[ord[j - 1]] > x[t]) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = t;
    }
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && x[ord[j + 1]] == x[ord[i]]) j++;
        double avg = 0.5 * (i + j) + 1.0;
        for (int k = i; k <= j; k++) r[ord[k]] = avg;
        i = j + 1;
    }
}

double trainer_spearman(const double *x, const double *y, int n) {
    if (n < 2) return NAN;
    double *rx = malloc((size_t)n * sizeof *rx), *ry = malloc((size_t)n * sizeof *ry);
    int *ord = malloc((size_t)n * sizeof *ord);
    double res = NAN;
    if (rx && ry && ord) {
        ranks_of(x, n, rx, ord);
        ranks_of(y, n, ry, ord);
        double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++) mx += rx[i], my += ry[i];
        mx /= n;
        my /= n;
        for (int i = 0; i < n; i++) {
            sxy += (rx[i] - mx) * (ry[i] - my);
            sxx += (rx[i] - mx) * (rx[i] - mx);
            syy += (ry[i] - my) * (ry[i] - my);
        }
        if (sxx > 0 && syy > 0) res = sxy / sqrt(sxx * syy);
    }
    free(rx);
    free(ry);
    free(ord);
    return res;
}

#define EMB_QCHUNK 256

typedef struct section_stat {
    char name[64];
    long total, covered, correct;
} section_stat;

static int eval_analogies(const emb *e, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        nn_set_error("%s: cannot open", path);
        return NN_ERR_DATA;
    }
    const int D = e->dim, V = e->V;
    float *Q = malloc((size_t)EMB_QCHUNK * D * sizeof *Q);
    float *S = malloc((size_t)EMB_QCHUNK * V * sizeof *S);
    int (*qid)[4] = malloc(EMB_QCHUNK * sizeof *qid);
    int *qsec = malloc(EMB_QCHUNK * sizeof *qsec);
    int nsec_cap = 64, nsec = 0, rc = NN_OK;
    section_stat *sec = calloc((size_t)nsec_cap, sizeof *sec);
    if (!Q || !S || !qid || !qsec || !sec) {
        nn_set_error("out of memory for the analogy evaluation");
        rc = NN_ERR_NOMEM;
    }
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int nq = 0, eof = 0;
    while (rc == NN_OK && !eof) {
        /* fill a chunk of covered questions */
        while (nq < EMB_QCHUNK) {
            if (getline(&line, &cap, f) < 0) {
                eof = 1;
                break;
            }
            lineno++;
            char *s = line;
            while (isspace((unsigned char)*s)) s++;
            if (!*s || *s == '#') continue;
            if (*s == ':' || nsec == 0) {
                if (nsec == nsec_cap) {
                    section_stat *ns = realloc(sec, 2 * (size_t)nsec_cap * sizeof *sec);
                    if (!ns) {
                        rc = NN_ERR_NOMEM;
                        nn_set_error("out of memory");
                        break;
                    }
                    memset(ns + nsec_cap, 0, (size_t)nsec_cap * sizeof *sec);
                    sec = ns;
                    nsec_cap *= 2;
                }
                char name[64] = "all";
                if (*s == ':') sscanf(s + 1, " %63s", name);
                snprintf(sec[nsec].name, sizeof sec[nsec].name, "%s", name);
                nsec++;
                if (*s == ':') continue;
            }
            char w[4][256];
            if (sscanf(s, "%255s %255s %255s %255s", w[0], w[1], w[2], w[3]) != 4) {
                nn_set_error("%s:%ld: expected \"a b c d\"", path, lineno);
                rc = NN_ERR_DATA;
                break;
            }
            section_stat *st = &sec[nsec - 1];
            st->total++;
            int ids[4], ok = 1;
            for (int k = 0; k < 4; k++) ok &= (ids[k] = emb_id(e, w[k])) >= 0;
            if (!ok) continue;
            st->covered++;
            memcpy(qid[nq], ids, sizeof ids);
            qsec[nq] = nsec - 1;
            float *q = Q + (size_t)nq * D;
            const float *a = e->unit + (size_t)ids[0] * D, *b = e->unit + (size_t)ids[1] * D,
                        *c = e->unit + (size_t)ids[2] * D;
            for (int d = 0; d < D; d++) q[d] = b[d] - a[d] + c[d];
            nq++;
        }
        if (rc < 0 || nq == 0) continue;
        nn_gemm(0, 1, nq, V, D, 1.0f, Q, D, e->unit, D, 0.0f, S, V);
        for (int i = 0; i < nq; i++) {
            const float *s = S + (size_t)i * V;
            int best = -1;
            float bs = -INFINITY;
            for (int j = e->first; j < V; j++) {
                if (j == qid[i][0] || j == qid[i][1] || j == qid[i][2]) continue;
                if (s[j] > bs) bs = s[j], best = j;
            }
            if (best == qid[i][3]) sec[qsec[i]].correct++;
        }
        nq = 0;
    }
    free(line);
    fclose(f);
    if (rc == NN_OK) {
        long t = 0, c = 0, k = 0;
        for (int i = 0; i < nsec; i++) {
            printf("analogy %-24s %5ld / %5ld correct (%5.1f%%), %ld of %ld questions covered\n",
                   sec[i].name, sec[i].correct, sec[i].covered,
                   sec[i].covered ? 100.0 * sec[i].correct / sec[i].covered : 0.0, sec[i].covered,
                   sec[i].total);
            t += sec[i].total, c += sec[i].covered, k += sec[i].correct;
        }
        printf("analogy accuracy %.4f (%ld / %ld), coverage %ld of %ld questions\n",
               c ? (double)k / c : 0.0, k, c, c, t);
    }
    free(Q);
    free(S);
    free(qid);
    free(qsec);
    free(sec);
    return rc;
}

static int eval_similarity(const emb *e, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        nn_set_error("%s: cannot open", path);
        return NN_ERR_DATA;
    }
    int cap_n = 1024, n = 0, total = 0, rc = NN_OK;
    double *gold = malloc((size_t)cap_n * sizeof *gold), *pred = malloc((size_t)cap_n * sizeof *pred);
    if (!gold || !pred) rc = NN_ERR_NOMEM;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    while (rc == NN_OK && getline(&line, &cap, f) >= 0) {
        lineno++;
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!*s || *s == '#') continue;
        char a[256], b[256];
        double g;
        if (sscanf(s, "%255s %255s %lf", a, b, &g) != 3) {
            nn_set_error("%s:%ld: expected \"word word score\"", path, lineno);
            rc = NN_ERR_DATA;
            break;
        }
        total++;
        int ia = emb_id(e, a), ib = emb_id(e, b);
        if (ia < 0 || ib < 0) continue;
        if (n == cap_n) {
            cap_n *= 2;
            double *g2 = realloc(gold, (size_t)cap_n * sizeof *g2);
            if (g2) gold = g2;
            double *p2 = realloc(pred, (size_t)cap_n * sizeof *p2);
            if (p2) pred = p2;
            if (!g2 || !p2) {
                rc = NN_ERR_NOMEM;
                break;
            }
        }
        const float *ua = e->unit + (size_t)ia * e->dim, *ub = e->unit + (size_t)ib * e->dim;
        double c = 0;
        for (int d = 0; d < e->dim; d++) c += (double)ua[d] * ub[d];
        gold[n] = g;
        pred[n] = c;
        n++;
    }
    if (rc == NN_ERR_NOMEM) nn_set_error("out of memory for the similarity evaluation");
    free(line);
    fclose(f);
    if (rc == NN_OK)
        printf("similarity spearman %.4f over %d of %d pairs\n", trainer_spearman(gold, pred, n),
               n, total);
    free(gold);
    free(pred);
    return rc;
}

/* ---- export -------------------------------------------------------------------------- */

static int export_vec(const emb *e, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        nn_set_error("%s: cannot open for writing", path);
        return NN_ERR_DATA;
    }
    fprintf(f, "%d %d\n", e->V - e->first, e->dim);
    for (int i = e->first; i < e->V; i++) {
        fputs(e->v->word[i], f);
        const float *r = e->raw + (size_t)i * e->dim;
        for (int c = 0; c < e->dim; c++) fprintf(f, " %.6g", r[c]);
        fputc('\n', f);
    }
    if (fclose(f) != 0) {
        nn_set_error("%s: write failed", path);
        return NN_ERR_DATA;
    }
    return NN_OK;
}

/* ---- the command --------------------------------------------------------------------- */

static void embed_usage(FILE *f) {
    fprintf(f,
            "usage: lockstep embed neighbors (--ckpt C | --vec F) WORD [--k 10]\n"
            "       lockstep embed analogy (--ckpt C | --vec F) A B C [--k 10]   (B - A + C)\n"
            "       lockstep embed eval (--ckpt C | --vec F) [--analogies FILE] [--similarity FILE]\n"
            "       lockstep embed export --ckpt C --out FILE                  (word2vec text)\n");
}

static int embed_run(int argc, char **argv) {
    const char *sub = argv[1], *ckpt = NULL, *vec = NULL, *ana = NULL, *sim = NULL, *out = NULL;
    const char *pos[3];
    int npos = 0;
    long k = 10;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = strcmp(a, "--ckpt") == 0         ? &ckpt
                           : strcmp(a, "--vec") == 0        ? &vec
                           : strcmp(a, "--analogies") == 0  ? &ana
                           : strcmp(a, "--similarity") == 0 ? &sim
                           : strcmp(a, "--out") == 0        ? &out
                                                            : NULL;
        if (dst || strcmp(a, "--k") == 0) {
            if (i + 1 >= argc) {
                nn_set_error("%s needs a value", a);
                return NN_ERR_CONFIG;
            }
            if (dst) {
                *dst = argv[++i];
            } else {
                char *end;
                k = strtol(argv[++i], &end, 10);
                if (*end || k < 1 || k > 100000) {
                    nn_set_error("--k: expected an integer in [1, 100000], got '%s'", argv[i]);
                    return NN_ERR_CONFIG;
                }
            }
        } else if (a[0] == '-' && a[1] == '-') {
            nn_set_error("embed %s: unknown option %s", sub, a);
            return NN_ERR_CONFIG;
        } else if (npos < 3) {
            pos[npos++] = a;
        } else {
            nn_set_error("embed %s: too many words", sub);
            return NN_ERR_CONFIG;
        }
    }
    int want = strcmp(sub, "neighbors") == 0 ? 1 : strcmp(sub, "analogy") == 0 ? 3 : 0;
    if (strcmp(sub, "neighbors") && strcmp(sub, "analogy") && strcmp(sub, "eval") &&
        strcmp(sub, "export")) {
        nn_set_error("embed: unknown subcommand '%s' (neighbors, analogy, eval, export)", sub);
        return NN_ERR_CONFIG;
    }
    if (npos != want) {
        nn_set_error("embed %s: expected %d word%s, got %d", sub, want, want == 1 ? "" : "s", npos);
        return NN_ERR_CONFIG;
    }
    if (!ckpt == !vec) {
        nn_set_error("embed %s: give exactly one of --ckpt FILE and --vec FILE", sub);
        return NN_ERR_CONFIG;
    }
    if (strcmp(sub, "export") == 0 && !out) {
        nn_set_error("embed export: --out FILE is required");
        return NN_ERR_CONFIG;
    }
    if (strcmp(sub, "eval") == 0 && !ana && !sim) {
        nn_set_error("embed eval: give --analogies FILE and/or --similarity FILE");
        return NN_ERR_CONFIG;
    }
    emb e;
    memset(&e, 0, sizeof e);
    int rc = ckpt ? emb_load_ckpt(&e, ckpt) : emb_load_vec(&e, vec);
    if (rc == NN_OK && want > 0) {
        int ids[3];
        for (int j = 0; j < want && rc == NN_OK; j++)
            if ((ids[j] = emb_id(&e, pos[j])) < 0) {
                nn_set_error("'%s' is not in the vocabulary (%d words)", pos[j], e.V - e.first);
                rc = NN_ERR_DATA;
            }
        float *q = rc == NN_OK ? calloc((size_t)e.dim, sizeof *q) : NULL;
        int *best = rc == NN_OK ? malloc((size_t)k * sizeof *best) : NULL;
        float *bs = rc == NN_OK ? malloc((size_t)k * sizeof *bs) : NULL;
        if (rc == NN_OK && (!q || !best || !bs)) {
            nn_set_error("out of memory");
            rc = NN_ERR_NOMEM;
        }
        if (rc == NN_OK) {
            const float *u0 = e.unit + (size_t)ids[0] * e.dim;
            for (int c = 0; c < e.dim; c++) {
                q[c] = u0[c];
                if (want == 3)
                    q[c] = e.unit[(size_t)ids[1] * e.dim + c] - u0[c] + e.unit[(size_t)ids[2] * e.dim + c];
            }
            double nq = 0;
            for (int c = 0; c < e.dim; c++) nq += (double)q[c] * q[c];
            for (int c = 0; c < e.dim && nq > 0; c++) q[c] = (float)(q[c] / sqrt(nq));
            int n = emb_topk(&e, q, (int)k, ids, want, best, bs);
            for (int j = 0; j < n; j++) printf("%s\t%.4f\n", e.v->word[best[j]], bs[j]);
        }
        free(q);
        free(best);
        free(bs);
    } else if (rc == NN_OK && strcmp(sub, "eval") == 0) {
        if (ana) rc = eval_analogies(&e, ana);
        if (rc == NN_OK && sim) rc = eval_similarity(&e, sim);
    } else if (rc == NN_OK) {
        rc = export_vec(&e, out);
        if (rc == NN_OK) fprintf(stderr, "lockstep: wrote %d vectors of %d to %s\n", e.V - e.first, e.dim, out);
    }
    emb_free(&e);
    return rc;
}

int trainer_embed_main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        embed_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    int rc = embed_run(argc, argv);
    if (rc < 0) {
        fprintf(stderr, "lockstep: error: %s\n", nn_error());
        if (rc == NN_ERR_CONFIG) embed_usage(stderr);
        return 1;
    }
    return 0;
}
