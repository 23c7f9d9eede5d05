/* bleu.c - corpus BLEU as sacreBLEU computes it by default (tok 13a, smooth exp, 4-grams).
 *
 * Does: the 13a tokeniser of mteval-v13a as sacreBLEU applies it, n-gram statistics per
 * sentence on strings or on token ids, the score from summed statistics, the text line and
 * signature, and the `lockstep bleu REF HYP [REF2 ...]` command.
 * Does not: lowercase, other tokenisers, other smoothing methods, effective order, bootstrap
 * resampling, or anything MPI (statistics are plain sums; the trainer reduces them).
 *
 * Text is handled as UTF-8 bytes. Every 13a rule that inserts spaces keys on ASCII
 * characters only, so working on bytes gives the same tokens as working on code points;
 * whitespace is Python's str.split() set (ASCII and the Unicode spaces), as sacreBLEU splits
 * with it. N-grams are counted by direct comparison within a sentence, O(L^2) per order:
 * sentences are short and this is evaluation, not training. */
#include "trainer/bleu.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The trainer reduces bleu_stats across ranks as 10 contiguous doubles. */
_Static_assert(sizeof(bleu_stats) == (2 * BLEU_ORDER + 2) * sizeof(double),
               "bleu_stats must be a plain array of doubles");

#define BLEU_ASSERT(cond)                                                               \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* ---- whitespace as Python's str.isspace --------------------------------------------- */

/* Length in bytes of the whitespace character starting at p (avail bytes readable), or 0.
 * U+0009..000D, U+001C..001F, U+0020, U+0085, U+00A0, U+1680, U+2000..200A, U+2028,
 * U+2029, U+202F, U+205F, U+3000. */
static int ws_len(const unsigned char *p, size_t avail) {
    if (avail == 0) return 0;
    unsigned c = p[0];
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return 1;
    if (c == 0xC2 && avail >= 2 && (p[1] == 0x85 || p[1] == 0xA0)) return 2;
    if (avail < 3) return 0;
    if (c == 0xE1 && p[1] == 0x9A && p[2] == 0x80) return 3;
    if (c == 0xE2 && p[1] == 0x80 &&
        ((p[2] >= 0x80 && p[2] <= 0x8A) || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF))
        return 3;
    if (c == 0xE2 && p[1] == 0x81 && p[2] == 0x9F) return 3;
    if (c == 0xE3 && p[1] == 0x80 && p[2] == 0x80) return 3;
    return 0;
}

/* Length of s[0..n) without trailing whitespace (Python's rstrip()). */
static size_t rstrip_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (;;) {
        if (n >= 1 && ws_len(u + n - 1, 1) == 1) n -= 1;
        else if (n >= 2 && ws_len(u + n - 2, 2) == 2) n -= 2;
        else if (n >= 3 && ws_len(u + n - 3, 3) == 3) n -= 3;
        else return n;
    }
}

/* ---- 13a tokenisation --------------------------------------------------------------- */

/* In place: every non-overlapping occurrence of from, scanning left to right, becomes to
 * (strlen(to) <= strlen(from)), as Python's str.replace. */
static void replace_all(char *s, const char *from, const char *to) {
    size_t lf = strlen(from), lt = strlen(to);
    char *r = s, *w = s;
    while (*r) {
        if (strncmp(r, from, lf) == 0) {
            memcpy(w, to, lt);
            w += lt;
            r += lf;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* The first 13a class: { | } ~  [ \ ] ^ _ `  space ! " # $ % &  ( ) * +  : ; < = > ? @  / */
static int is_punct13a(unsigned char c) {
    return (c >= 0x7B && c <= 0x7E) || (c >= 0x5B && c <= 0x60) || (c >= 0x20 && c <= 0x26) ||
           (c >= 0x28 && c <= 0x2B) || (c >= 0x3A && c <= 0x40) || c == 0x2F;
}
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_nondigit(unsigned char c) { return !is_digit(c); }
static int is_period_comma(unsigned char c) { return c == '.' || c == ','; }
static int is_dash(unsigned char c) { return c == '-'; }

/* One regex substitution of a two-character pattern (a)(b) over s, non-overlapping and left
 * to right as Python's re.sub. form 0 writes "a b ", form 1 writes " a b". Returns a new
 * malloc'd string (NULL on malloc failure); s is freed. */
static char *sub_pair(char *s, int (*ca)(unsigned char), int (*cb)(unsigned char), int form) {
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1);
    if (!o) {
        free(s);
        return NULL;
    }
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        unsigned char a = (unsigned char)s[i];
        if (i + 1 < n && ca(a) && cb((unsigned char)s[i + 1])) {
            if (form == 1) o[w++] = ' ';
            o[w++] = s[i];
            o[w++] = ' ';
            o[w++] = s[i + 1];
            if (form == 0) o[w++] = ' ';
            i += 2;
        } else {
            o[w++] = s[i++];
        }
    }
    o[w] = '\0';
    free(s);
    return o;
}

char *bleu_tokenize_13a(const char *line) {
    size_t n = strlen(line);
    char *a = malloc(n + 1);
    if (!a) return NULL;
    memcpy(a, line, n + 1);
    /* Language-independent part, in mteval-v13a's order. */
    replace_all(a, "<skipped>", "");
    replace_all(a, "-\n", "");
    replace_all(a, "\n", " ");
    replace_all(a, "&quot;", "\"");
    replace_all(a, "&amp;", "&");
    replace_all(a, "&lt;", "<");
    replace_all(a, "&gt;", ">");
    /* " line ", then spaces around the punctuation class. */
    n = strlen(a);
    char *b = malloc(3 * n + 3);
    if (!b) {
        free(a);
        return NULL;
    }
    size_t w = 0;
    b[w++] = ' ';
    for (size_t i = 0; i < n; i++) {
        if (is_punct13a((unsigned char)a[i])) {
            b[w++] = ' ';
            b[w++] = a[i];
            b[w++] = ' ';
        } else {
            b[w++] = a[i];
        }
    }
    b[w++] = ' ';
    b[w] = '\0';
    free(a);
    /* Period and comma unless preceded by a digit; unless followed by a digit; dash after
     * a digit. */
    b = sub_pair(b, is_nondigit, is_period_comma, 0);
    if (b) b = sub_pair(b, is_period_comma, is_nondigit, 1);
    if (b) b = sub_pair(b, is_digit, is_dash, 0);
    if (!b) return NULL;
    /* Split on whitespace and join with single spaces, in place. */
    n = strlen(b);
    const unsigned char *u = (const unsigned char *)b;
    size_t r = 0;
    w = 0;
    while (r < n) {
        int k = ws_len(u + r, n - r);
        if (k) {
            r += (size_t)k;
            continue;
        }
        if (w > 0) b[w++] = ' ';
        while (r < n && ws_len(u + r, n - r) == 0) b[w++] = b[r++];
    }
    b[w] = '\0';
    return b;
}

/* ---- n-gram statistics on ids ------------------------------------------------------- */

/* Occurrences of the n-gram g (n ids) in x (len ids). */
static int count_ngram(const int32_t *g, int n, const int32_t *x, int len) {
    int c = 0;
    for (int i = 0; i + n <= len; i++)
        if (memcmp(x + i, g, (size_t)n * sizeof *g) == 0) c++;
    return c;
}

/* sacreBLEU's closest reference length: smallest |hyp - ref|, ties to the shorter ref. */
static int closest_ref_len(int nh, const int *nref, int nrefs) {
    int best_diff = -1, best = 0;
    for (int r = 0; r < nrefs; r++) {
        int d = abs(nh - nref[r]);
        if (best_diff < 0 || d < best_diff) {
            best_diff = d;
            best = nref[r];
        } else if (d == best_diff && nref[r] < best) {
            best = nref[r];
        }
    }
    return best;
}

void bleu_add_tokens(bleu_stats *s, const int32_t *hyp, int nh, const int32_t *const *refs,
                     const int *nref, int nrefs) {
    BLEU_ASSERT(s && nh >= 0 && nrefs >= 0 && (nh == 0 || hyp));
    s->hyp_len += nh;
    s->ref_len += closest_ref_len(nh, nref, nrefs);
    for (int n = 1; n <= BLEU_ORDER; n++) {
        if (nh - n + 1 <= 0) continue;
        s->total[n - 1] += nh - n + 1;
        for (int i = 0; i + n <= nh; i++) {
            const int32_t *g = hyp + i;
            /* Count each distinct n-gram once, at its first occurrence. */
            if (count_ngram(g, n, hyp, i + n - 1) > 0) continue;
            int ch = count_ngram(g, n, hyp, nh);
            int cr = 0;
            for (int r = 0; r < nrefs; r++) {
                int c = count_ngram(g, n, refs[r], nref[r]);
                if (c > cr) cr = c;
            }
            s->match[n - 1] += ch < cr ? ch : cr;
        }
    }
}

/* ---- strings -> ids ----------------------------------------------------------------- */

typedef struct tok_slice { const char *p; int len; } tok_slice;

static uint64_t hash_bytes(const char *p, int len) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (int i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Number of space-separated tokens in a 13a output and their slices (toks may be NULL). */
static int split_spaces(const char *s, tok_slice *toks) {
    int n = 0;
    while (*s) {
        while (*s == ' ') s++;
        if (!*s) break;
        const char *b = s;
        while (*s && *s != ' ') s++;
        if (toks) {
            toks[n].p = b;
            toks[n].len = (int)(s - b);
        }
        n++;
    }
    return n;
}

/* Trailing whitespace removed, then 13a. Aborts on malloc failure. */
static char *preprocess(const char *line) {
    size_t n = rstrip_len(line, strlen(line));
    char *c = malloc(n + 1);
    BLEU_ASSERT(c);
    memcpy(c, line, n);
    c[n] = '\0';
    char *t = bleu_tokenize_13a(c);
    BLEU_ASSERT(t);
    free(c);
    return t;
}

void bleu_add_sentence(bleu_stats *s, const char *hyp, const char *const *refs, int nrefs) {
    BLEU_ASSERT(s && hyp && nrefs >= 0);
    int m = 0; /* usable references */
    for (int r = 0; r < nrefs; r++)
        if (refs[r] && refs[r][0]) m++;
    /* texts[0] is the hypothesis, texts[1..m] the references. */
    char **texts = malloc((size_t)(m + 1) * sizeof *texts);
    int *len = malloc((size_t)(m + 1) * sizeof *len);
    BLEU_ASSERT(texts && len);
    texts[0] = preprocess(hyp);
    for (int r = 0, k = 1; r < nrefs; r++)
        if (refs[r] && refs[r][0]) texts[k++] = preprocess(refs[r]);
    int ntok = 0;
    for (int k = 0; k <= m; k++) {
        len[k] = split_spaces(texts[k], NULL);
        ntok += len[k];
    }
    tok_slice *toks = malloc((size_t)(ntok + 1) * sizeof *toks);
    int32_t *ids = malloc((size_t)(ntok + 1) * sizeof *ids);
    size_t cap = 16;
    while (cap < 2 * (size_t)ntok) cap *= 2;
    int *table = malloc(cap * sizeof *table); /* token index of the first of its kind, or -1 */
    const int32_t **rp = calloc((size_t)(m + 1), sizeof *rp);
    BLEU_ASSERT(toks && ids && table && rp);
    for (size_t i = 0; i < cap; i++) table[i] = -1;
    /* Intern: equal strings get equal ids (the index of their first occurrence). */
    int off = 0;
    for (int k = 0; k <= m; k++) {
        split_spaces(texts[k], toks + off);
        for (int i = off; i < off + len[k]; i++) {
            size_t h = (size_t)hash_bytes(toks[i].p, toks[i].len) & (cap - 1);
            for (;;) {
                int j = table[h];
                if (j < 0) {
                    table[h] = i;
                    ids[i] = i;
                    break;
                }
                if (toks[j].len == toks[i].len && memcmp(toks[j].p, toks[i].p, toks[i].len) == 0) {
                    ids[i] = j;
                    break;
                }
                h = (h + 1) & (cap - 1);
            }
        }
        rp[k] = ids + off;
        off += len[k];
    }
    bleu_add_tokens(s, rp[0], len[0], rp + 1, len + 1, m);
    for (int k = 0; k <= m; k++) free(texts[k]);
    free(texts);
    free(len);
    free(toks);
    free(ids);
    free(table);
    free(rp);
}

/* ---- the score ---------------------------------------------------------------------- */

double bleu_score(const bleu_stats *s, double prec[BLEU_ORDER], double *bp_out) {
    double p[BLEU_ORDER] = {0};
    double bp = 1.0;
    if (s->hyp_len < s->ref_len) bp = s->hyp_len > 0 ? exp(1.0 - s->ref_len / s->hyp_len) : 0.0;
    double score = 0.0;
    int any = 0;
    for (int n = 0; n < BLEU_ORDER; n++)
        if (s->match[n] != 0) any = 1;
    if (any) {
        /* exp smoothing: the k-th order with no match gets 100 / (2^k * total). An order
         * with no n-gram at all stops the loop and leaves its precision 0, hence score 0. */
        double smooth = 1.0;
        int reached = 1;
        for (int n = 0; n < BLEU_ORDER; n++) {
            if (s->total[n] == 0) {
                reached = 0;
                break;
            }
            if (s->match[n] == 0) {
                smooth *= 2;
                p[n] = 100.0 / (smooth * s->total[n]);
            } else {
                p[n] = 100.0 * s->match[n] / s->total[n];
            }
        }
        if (reached) {
            double sum = 0;
            for (int n = 0; n < BLEU_ORDER; n++) sum += log(p[n]);
            score = bp * exp(sum / BLEU_ORDER);
        }
    }
    if (prec)
        for (int n = 0; n < BLEU_ORDER; n++) prec[n] = p[n];
    if (bp_out) *bp_out = bp;
    return score;
}

double bleu_format(const bleu_stats *s, char *buf, size_t cap) {
    double p[BLEU_ORDER], bp;
    double score = bleu_score(s, p, &bp);
    double ratio = s->ref_len > 0 ? s->hyp_len / s->ref_len : 0.0;
    snprintf(buf, cap,
             "BLEU = %.2f %.1f/%.1f/%.1f/%.1f (BP = %.3f ratio = %.3f hyp_len = %lld "
             "ref_len = %lld)",
             score, p[0], p[1], p[2], p[3], bp, ratio, (long long)llround(s->hyp_len),
             (long long)llround(s->ref_len));
    return score;
}

/* ---- files and the command ------------------------------------------------------------ */

typedef struct text_file {
    char *data;   /* whole file, '\n' replaced by '\0' */
    char **line;  /* (n) pointers into data */
    long n;
} text_file;

static void text_file_free(text_file *f) {
    free(f->data);
    free(f->line);
    memset(f, 0, sizeof *f);
}

/* Reads path ("-": stdin) and splits it into lines on '\n' only (sacreBLEU opens files
 * with newline="\n"); a final line without '\n' counts. 0 or -1 with a message on err. */
static int text_file_read(text_file *f, const char *path, FILE *err) {
    memset(f, 0, sizeof *f);
    int use_stdin = strcmp(path, "-") == 0;
    FILE *in = use_stdin ? stdin : fopen(path, "rb");
    if (!in) {
        fprintf(err, "bleu: cannot open '%s': %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *d = malloc(cap + 1);
    for (;;) {
        if (!d) break;
        size_t got = fread(d + n, 1, cap - n, in);
        n += got;
        if (n < cap) break;
        char *nd = realloc(d, 2 * cap + 1);
        if (!nd) {
            free(d);
            d = NULL;
            break;
        }
        d = nd;
        cap *= 2;
    }
    int bad = d ? ferror(in) : 0;
    if (!use_stdin) fclose(in);
    if (!d || bad) {
        fprintf(err, "bleu: cannot read '%s': %s\n", path, d ? strerror(errno) : "out of memory");
        free(d);
        return -1;
    }
    d[n] = '\0';
    long lines = 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] == '\n') lines++;
    if (n > 0 && d[n - 1] != '\n') lines++;
    f->line = malloc((size_t)(lines + 1) * sizeof *f->line);
    if (!f->line) {
        free(d);
        fprintf(err, "bleu: out of memory reading '%s'\n", path);
        return -1;
    }
    long k = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n && k < lines; i++) {
        if (i == n || d[i] == '\n') {
            d[i] = '\0';
            f->line[k++] = d + start;
            start = i + 1;
        }
    }
    f->data = d;
    f->n = lines;
    return 0;
}

int bleu_files(const char *hyp_path, const char *const *ref_paths, int nrefs, FILE *out,
               FILE *err, bleu_stats *st) {
    int rc = 1;
    text_file hyp = {0};
    text_file *refs = calloc((size_t)(nrefs > 0 ? nrefs : 1), sizeof *refs);
    const char **seg = malloc((size_t)(nrefs > 0 ? nrefs : 1) * sizeof *seg);
    if (!refs || !seg) {
        fprintf(err, "bleu: out of memory\n");
        goto done;
    }
    if (nrefs < 1) {
        fprintf(err, "bleu: at least one reference file is needed\n");
        goto done;
    }
    for (int r = 0; r < nrefs; r++)
        if (text_file_read(&refs[r], ref_paths[r], err) < 0) goto done;
    if (text_file_read(&hyp, hyp_path, err) < 0) goto done;
    for (int r = 0; r < nrefs; r++) {
        if (refs[r].n != hyp.n) {
            fprintf(err, "bleu: '%s' has %ld lines but reference '%s' has %ld\n", hyp_path, hyp.n,
                    ref_paths[r], refs[r].n);
            goto done;
        }
    }
    bleu_stats s = {0};
    int seen_nrefs = -2; /* -2: none yet; -1: varies */
    for (long i = 0; i < hyp.n; i++) {
        int m = 0;
        for (int r = 0; r < nrefs; r++) {
            /* sacreBLEU rstrips reference lines as it reads them and then drops empty ones. */
            char *l = refs[r].line[i];
            l[rstrip_len(l, strlen(l))] = '\0';
            if (l[0]) seg[m++] = l;
        }
        if (m == 0) {
            fprintf(err, "bleu: '%s' line %ld: empty reference (sacreBLEU refuses these too)\n",
                    ref_paths[0], i + 1);
            goto done;
        }
        if (seen_nrefs == -2) seen_nrefs = m;
        else if (seen_nrefs != m) seen_nrefs = -1;
        bleu_add_sentence(&s, hyp.line[i], seg, m);
    }
    char line[256];
    bleu_format(&s, line, sizeof line);
    fprintf(out, "%s\n", line);
    if (seen_nrefs == -1) fprintf(out, "nrefs:var");
    else fprintf(out, "nrefs:%d", seen_nrefs < 0 ? nrefs : seen_nrefs);
    fprintf(out, "|case:mixed|eff:no|tok:13a|smooth:exp|version:lockstep\n");
    if (st) *st = s;
    rc = 0;
done:
    text_file_free(&hyp);
    if (refs)
        for (int r = 0; r < nrefs; r++) text_file_free(&refs[r]);
    free(refs);
    free(seg);
    return rc;
}

int bleu_main(int argc, char **argv) {
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: lockstep bleu REF HYP [REF2 ...]\n"
               "  corpus BLEU as sacreBLEU's defaults (tok 13a, smooth exp); HYP '-' reads "
               "stdin\n");
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: lockstep bleu REF HYP [REF2 ...]\n");
        return 2;
    }
    int nrefs = argc - 2;
    const char **refs = malloc((size_t)nrefs * sizeof *refs);
    if (!refs) {
        fprintf(stderr, "bleu: out of memory\n");
        return 1;
    }
    refs[0] = argv[1];
    for (int i = 3; i < argc; i++) refs[i - 2] = argv[i];
    int rc = bleu_files(argv[2], refs, nrefs, stdout, stderr, NULL);
    free(refs);
    return rc ? 1 : 0;
}
