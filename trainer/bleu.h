/* bleu.h - corpus BLEU exactly as sacreBLEU computes it by default:
 * 13a tokenisation (mteval-v13a rules), n-gram orders 1..4, clipping against the maximum
 * count over the references, brevity penalty against the closest reference length (ties
 * go to the shorter one), 'exp' smoothing, score in 0..100.
 *
 * Pure C, no MPI and no HDF5: the trainer reduces bleu_stats across ranks (they are plain
 * sums) and the coordinator calls bleu_score on the totals. */
#ifndef TRAINER_BLEU_H
#define TRAINER_BLEU_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BLEU_ORDER 4

/* Sufficient statistics of corpus BLEU. Every field is a sum over sentences, so stats of
 * disjoint shards add element-wise: the trainer may reduce a bleu_stats as
 * double[2 * BLEU_ORDER + 2] (bleu.c asserts there is no padding). */
typedef struct bleu_stats {
    double match[BLEU_ORDER]; /* clipped n-gram matches, order n at [n-1] */
    double total[BLEU_ORDER]; /* hypothesis n-grams: max(0, hyp_len - n + 1) summed */
    double hyp_len, ref_len;  /* tokens; ref_len uses the closest reference per sentence */
} bleu_stats;

/* Tokenises hyp and each reference with 13a (after removing trailing whitespace, as
 * sacreBLEU does) and adds the sentence's statistics to *s. References that are NULL or
 * "" are skipped (sacreBLEU's rule for a variable number of references); when none is
 * left the hypothesis is counted against an empty reference. Cannot fail except on
 * malloc failure, which aborts (NN-style assert: this is evaluation, not a hot loop). */
void bleu_add_sentence(bleu_stats *s, const char *hyp, const char *const *refs, int nrefs);

/* The same on token ids, for in-training evaluation: hyp (nh) ids and nrefs references,
 * refs[r] (nref[r]) ids. Ids are compared as they are: strip BOS/EOS/padding first.
 * Cannot fail (asserts on malloc failure). */
void bleu_add_tokens(bleu_stats *s, const int32_t *hyp, int nh, const int32_t *const *refs,
                     const int *nref, int nrefs);

/* BLEU in 0..100 from summed statistics. If prec != NULL it gets the four precisions in
 * percent (smoothed ones included, 0 for orders not reached), if bp != NULL the brevity
 * penalty. No match at all gives 0 (sacreBLEU's early exit); an order with no hypothesis
 * n-gram at all also gives 0. Cannot fail. */
double bleu_score(const bleu_stats *s, double prec[BLEU_ORDER], double *bp);

/* Writes sacreBLEU's text line, e.g.
 *   "BLEU = 27.35 60.1/33.2/20.4/12.8 (BP = 1.000 ratio = 1.012 hyp_len = 1234 ref_len = 1219)"
 * into buf (cap bytes, NUL-terminated, truncated if short). Returns the score. */
double bleu_format(const bleu_stats *s, char *buf, size_t cap);

/* 13a tokenisation of one line: returns a malloc'd string of tokens separated by single
 * spaces (caller frees). Does not strip trailing whitespace first (bleu_add_sentence does).
 * NULL on malloc failure. */
char *bleu_tokenize_13a(const char *line);

/* Scores the file hyp_path (one hypothesis per line; "-" reads stdin) against nrefs
 * reference files with the same number of lines. Prints the BLEU line and the signature
 * line to out. On error (unreadable file, line count mismatch, a line whose references are
 * all empty) writes one line to err and returns a nonzero status; nothing goes to out.
 * If st != NULL it receives the corpus statistics. */
int bleu_files(const char *hyp_path, const char *const *ref_paths, int nrefs, FILE *out,
               FILE *err, bleu_stats *st);

/* `lockstep bleu REF HYP [REF2 ...]`: argv[0] is the subcommand name ("bleu"), argv[1] the
 * first reference file, argv[2] the hypothesis file, further arguments more reference
 * files. Returns the process exit status (0 ok, 1 error, 2 usage). */
int bleu_main(int argc, char **argv);

#endif
