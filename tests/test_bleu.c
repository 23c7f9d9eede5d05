/* test_bleu.c - trainer/bleu.c: 13a tokenisation, n-gram statistics, smoothing, brevity
 * penalty, several references, corpus aggregation and the `bleu` command. Every expected
 * value is worked out by hand in the comment above its assertion. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/bleu.h"

static void tok_is(const char *in, const char *want) {
    char *t = bleu_tokenize_13a(in);
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t, want);
    free(t);
}

static double sentence_bleu(const char *hyp, const char *ref, bleu_stats *out) {
    bleu_stats s = {0};
    const char *refs[1] = {ref};
    bleu_add_sentence(&s, hyp, refs, 1);
    if (out) *out = s;
    return bleu_score(&s, NULL, NULL);
}

/* ---- tokenisation ---------------------------------------------------------------------- */

START_TEST(test_13a_splits_punctuation_from_words) {
    /* ',' after a non-digit -> " , "; '!' is in the punctuation class. */
    tok_is("Hello, world!", "Hello , world !");
    /* '"' ( ) ? : ; are in the class; apostrophe and in-word hyphen are not. */
    tok_is("\"Don't (re)start?\" well-known: yes;", "\" Don't ( re ) start ? \" well-known : yes ;");
    /* $ % / @ # and brackets. */
    tok_is("$5/10 = 50% @home #1 [x]{y}", "$ 5 / 10 = 50 % @ home # 1 [ x ] { y }");
}
END_TEST

START_TEST(test_13a_keeps_numbers_with_separators_together) {
    /* "1,000.50": ',' and '.' have digits on both sides -> untouched; the final '.' follows
     * 's' (non-digit) -> " . ". */
    tok_is("It costs 1,000.50 dollars.", "It costs 1,000.50 dollars .");
    /* "x.5": '.' preceded by non-digit -> "x . 5". "5.x": preceded by digit (rule 2 no),
     * followed by non-digit (rule 3) -> "5 . x". */
    tok_is("x.5 5.x", "x . 5 5 . x");
    /* dash after a digit is split, other dashes are not: "3-4" -> "3 - 4", "a-b" stays. */
    tok_is("pages 3-4 a-b", "pages 3 - 4 a-b");
    /* Sentence-final period after a digit: rule 2 needs a non-digit before it, rule 3
     * needs a character after it; the wrapping space supplies it -> "5 ." */
    tok_is("It is 5.", "It is 5 .");
}
END_TEST

START_TEST(test_13a_unescapes_entities_and_drops_skipped) {
    /* &quot; -> '"', &amp; -> '&', &lt; -> '<', &gt; -> '>', each then a separate token. */
    tok_is("&quot;a&quot; &amp; b &lt;c&gt;", "\" a \" & b < c >");
    /* &amp;lt; -> &lt; (amp replaced first) -> '<' (lt replaced after). */
    tok_is("&amp;lt;", "<");
    tok_is("a <skipped> b", "a b");
    /* "-\n" joins a hyphenated line break; other newlines become spaces. */
    tok_is("hyphen-\nated two\nlines", "hyphenated two lines");
}
END_TEST

START_TEST(test_13a_handles_utf8_and_unicode_spaces) {
    /* Non-ASCII letters are untouched; ',' and '.' after them are split. */
    tok_is("Grüße, Welt.", "Grüße , Welt .");
    /* U+00A0 (C2 A0) and U+3000 (E3 80 80) are whitespace for Python's split(). */
    tok_is("a\xc2\xa0" "b\xe3\x80\x80" "c\t d", "a b c d");
    tok_is("", "");
    tok_is("   ", "");
}
END_TEST

/* ---- the score --------------------------------------------------------------------------- */

START_TEST(test_perfect_match_scores_100) {
    /* 6 tokens: p1 = 6/6, p2 = 5/5, p3 = 4/4, p4 = 3/3, BP = 1 -> 100. */
    bleu_stats s;
    double score = sentence_bleu("the cat sat on the mat", "the cat sat on the mat", &s);
    ck_assert_double_eq_tol(score, 100.0, 1e-9);
    ck_assert_double_eq(s.match[0], 6);
    ck_assert_double_eq(s.total[3], 3);
    ck_assert_double_eq(s.hyp_len, 6);
    ck_assert_double_eq(s.ref_len, 6);
}
END_TEST

START_TEST(test_no_overlap_scores_exactly_zero) {
    /* No n-gram matches at any order: sacreBLEU returns 0 before smoothing, with all
     * precisions reported as 0. */
    double p[4], bp;
    bleu_stats s = {0};
    const char *r[1] = {"e f g h"};
    bleu_add_sentence(&s, "a b c d", r, 1);
    ck_assert_double_eq(bleu_score(&s, p, &bp), 0.0);
    for (int n = 0; n < 4; n++) ck_assert_double_eq(p[n], 0.0);
    ck_assert_double_eq(bp, 1.0);
}
END_TEST

START_TEST(test_exp_smoothing_of_unmatched_higher_orders) {
    /* hyp "a b c d", ref "a x c y": unigrams a,c match -> p1 = 2/4 = 50%.
     * Bigrams ab bc cd vs ax xc cy: 0/3 -> first zero order, k=1: 100/(2*3) = 16.667.
     * Trigrams 0/2, k=2: 100/(4*2) = 12.5.  4-grams 0/1, k=3: 100/(8*1) = 12.5.
     * BLEU = (50 * 16.667 * 12.5 * 12.5)^(1/4) = 130208.33^(1/4) = 18.9959 (BP = 1). */
    double p[4], bp;
    bleu_stats s = {0};
    const char *r[1] = {"a x c y"};
    bleu_add_sentence(&s, "a b c d", r, 1);
    double score = bleu_score(&s, p, &bp);
    ck_assert_double_eq_tol(p[0], 50.0, 1e-9);
    ck_assert_double_eq_tol(p[1], 100.0 / 6.0, 1e-9);
    ck_assert_double_eq_tol(p[2], 12.5, 1e-9);
    ck_assert_double_eq_tol(p[3], 12.5, 1e-9);
    ck_assert_double_eq_tol(score, pow(50.0 * (100.0 / 6.0) * 12.5 * 12.5, 0.25), 1e-9);
    ck_assert_double_eq_tol(score, 18.9959, 1e-4);
}
END_TEST

START_TEST(test_exp_smoothing_counts_only_zero_orders) {
    /* hyp "a b c d e", ref "a b x d e": p1 = 4/5 (a b d e) = 80, p2 = 2/4 (ab, de) = 50,
     * trigrams 0/3 -> k=1: 100/(2*3) = 16.667, 4-grams 0/2 -> k=2: 100/(4*2) = 12.5.
     * BLEU = (80 * 50 * 16.667 * 12.5)^(1/4) = 833333.3^(1/4) = 30.2138. */
    double p[4];
    bleu_stats s;
    sentence_bleu("a b c d e", "a b x d e", &s);
    double score = bleu_score(&s, p, NULL);
    ck_assert_double_eq_tol(p[2], 100.0 / 6.0, 1e-9);
    ck_assert_double_eq_tol(p[3], 12.5, 1e-9);
    ck_assert_double_eq_tol(score, pow(80.0 * 50.0 * (100.0 / 6.0) * 12.5, 0.25), 1e-9);
    ck_assert_double_eq_tol(score, 30.2138, 1e-4);
}
END_TEST

START_TEST(test_empty_higher_orders_give_zero) {
    /* A 2-token hypothesis has no trigram at all (total3 = 0): sacreBLEU stops at that
     * order and leaves p3 = p4 = 0, so the (non-effective-order) score is 0 even though
     * p1 = p2 = 100. */
    double p[4];
    bleu_stats s;
    sentence_bleu("the cat", "the cat", &s);
    double score = bleu_score(&s, p, NULL);
    ck_assert_double_eq(score, 0.0);
    ck_assert_double_eq_tol(p[0], 100.0, 1e-12);
    ck_assert_double_eq_tol(p[1], 100.0, 1e-12);
    ck_assert_double_eq(p[2], 0.0);
    ck_assert_double_eq(s.total[2], 0.0);
}
END_TEST

START_TEST(test_brevity_penalty_is_exp_one_minus_r_over_c) {
    /* hyp "the cat sat on" (c = 4) is a prefix of the 6-token ref: all precisions 100,
     * BP = exp(1 - 6/4) = exp(-0.5) = 0.606531 -> BLEU = 60.6531. */
    double bp;
    bleu_stats s;
    sentence_bleu("the cat sat on", "the cat sat on the mat", &s);
    double score = bleu_score(&s, NULL, &bp);
    ck_assert_double_eq_tol(bp, exp(-0.5), 1e-12);
    ck_assert_double_eq_tol(score, 100.0 * exp(-0.5), 1e-9);
    /* Longer hypothesis than reference: no penalty. */
    sentence_bleu("the cat sat on the mat", "the cat sat on", &s);
    bleu_score(&s, NULL, &bp);
    ck_assert_double_eq(bp, 1.0);
}
END_TEST

START_TEST(test_several_references_clip_by_max_count) {
    /* hyp "the the the the", refs "the cat" and "the the dog".
     * Unigram "the": 4 in hyp, max ref count = 2 -> 2/4.  Bigram "the the": 3 in hyp, 1 in
     * ref 2 -> 1/3.  Trigram 0/2, 4-gram 0/1.  Closest ref length to 4: 3 (|4-3| < |4-2|),
     * so BP = 1.  p = 50, 33.333, 100/(2*2) = 25, 100/(4*1) = 25:
     * BLEU = (50 * 33.333 * 25 * 25)^(1/4) = 1041666.7^(1/4) = 31.9472. */
    bleu_stats s = {0};
    const char *r[2] = {"the cat", "the the dog"};
    bleu_add_sentence(&s, "the the the the", r, 2);
    ck_assert_double_eq(s.match[0], 2);
    ck_assert_double_eq(s.match[1], 1);
    ck_assert_double_eq(s.match[2], 0);
    ck_assert_double_eq(s.total[0], 4);
    ck_assert_double_eq(s.total[3], 1);
    ck_assert_double_eq(s.ref_len, 3);
    ck_assert_double_eq_tol(bleu_score(&s, NULL, NULL),
                            pow(50.0 * (100.0 / 3.0) * 25.0 * 25.0, 0.25), 1e-9);
    /* Tie in distance: hyp length 4, refs of 3 and 5 tokens -> the shorter, 3. */
    bleu_stats t = {0};
    const char *r2[2] = {"v w x y z", "x y z"};
    bleu_add_sentence(&t, "a b c d", r2, 2);
    ck_assert_double_eq(t.ref_len, 3);
    /* Empty references are skipped (variable number of references). */
    bleu_stats u = {0};
    const char *r3[3] = {"", "the the dog", NULL};
    bleu_add_sentence(&u, "the the the the", r3, 3);
    ck_assert_double_eq(u.ref_len, 3);
    ck_assert_double_eq(u.match[0], 2);
}
END_TEST

START_TEST(test_corpus_stats_are_sums_not_mean_of_sentences) {
    /* s1: "a b c d" = ref: matches 4/3/2/1 of totals 4/3/2/1.
     * s2: "e f g h" vs "e f x y": matches 2/1/0/0 of 4/3/2/1.
     * Corpus: 6/8 = 75, 4/6 = 66.667, 2/4 = 50, 1/2 = 50 (no zero order, no smoothing):
     * BLEU = (75 * 66.667 * 50 * 50)^(1/4) = 12500000^(1/4) = 59.4604.
     * Mean of sentence BLEUs would be (100 + 31.9472)/2 = 65.97: a different number. */
    bleu_stats c = {0}, s1, s2;
    const char *r1[1] = {"a b c d"}, *r2[1] = {"e f x y"};
    bleu_add_sentence(&c, "a b c d", r1, 1);
    bleu_add_sentence(&c, "e f g h", r2, 1);
    double b1 = sentence_bleu("a b c d", "a b c d", &s1);
    double b2 = sentence_bleu("e f g h", "e f x y", &s2);
    for (int n = 0; n < 4; n++) {
        ck_assert_double_eq(c.match[n], s1.match[n] + s2.match[n]);
        ck_assert_double_eq(c.total[n], s1.total[n] + s2.total[n]);
    }
    double score = bleu_score(&c, NULL, NULL);
    ck_assert_double_eq_tol(score, pow(75.0 * (200.0 / 3.0) * 50.0 * 50.0, 0.25), 1e-9);
    ck_assert_double_eq_tol(score, 59.4604, 1e-4);
    ck_assert_double_eq_tol(b2, pow(50.0 * (100.0 / 3.0) * 25.0 * 25.0, 0.25), 1e-9);
    ck_assert(fabs((b1 + b2) / 2 - score) > 1.0);
}
END_TEST

START_TEST(test_token_ids_give_the_same_statistics_as_strings) {
    /* "the the the the" / refs "the cat", "the the dog" with the=5, cat=6, dog=7. */
    const int32_t h[4] = {5, 5, 5, 5}, ra[2] = {5, 6}, rb[3] = {5, 5, 7};
    const int32_t *refs[2] = {ra, rb};
    const int nref[2] = {2, 3};
    bleu_stats a = {0}, b = {0};
    bleu_add_tokens(&a, h, 4, refs, nref, 2);
    const char *r[2] = {"the cat", "the the dog"};
    bleu_add_sentence(&b, "the the the the", r, 2);
    ck_assert_mem_eq(&a, &b, sizeof a);
    /* Empty hypothesis: lengths only. */
    bleu_stats e = {0};
    bleu_add_tokens(&e, h, 0, refs, nref, 2);
    ck_assert_double_eq(e.hyp_len, 0);
    ck_assert_double_eq(e.ref_len, 2);
    ck_assert_double_eq(e.total[0], 0);
    ck_assert_double_eq(bleu_score(&e, NULL, NULL), 0.0);
}
END_TEST

START_TEST(test_format_matches_sacrebleu_text_line) {
    /* The corpus of test_corpus_stats: 59.46, precisions 75.0/66.7/50.0/50.0, 8 vs 8. */
    bleu_stats c = {0};
    const char *r1[1] = {"a b c d"}, *r2[1] = {"e f x y"};
    bleu_add_sentence(&c, "a b c d", r1, 1);
    bleu_add_sentence(&c, "e f g h", r2, 1);
    char line[256];
    bleu_format(&c, line, sizeof line);
    ck_assert_str_eq(line, "BLEU = 59.46 75.0/66.7/50.0/50.0 (BP = 1.000 ratio = 1.000 "
                           "hyp_len = 8 ref_len = 8)");
}
END_TEST

/* ---- the command ------------------------------------------------------------------------ */

static char tmpdir[256];

static void write_file(const char *name, const char *text, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void setup_tmp(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_bleu_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int run_files(const char *hyp, const char **refs, int n, char *out, size_t cap,
                     char *err, size_t ecap) {
    FILE *o = tmpfile(), *e = tmpfile();
    int rc = bleu_files(hyp, refs, n, o, e, NULL);
    rewind(o);
    rewind(e);
    size_t k = fread(out, 1, cap - 1, o);
    out[k] = '\0';
    k = fread(err, 1, ecap - 1, e);
    err[k] = '\0';
    fclose(o);
    fclose(e);
    return rc;
}

START_TEST(test_command_prints_score_and_signature) {
    setup_tmp();
    char ref[512], hyp[512], ref2[512], out[1024], err[1024];
    /* Same corpus as above, with trailing whitespace and CRLF that are stripped. */
    write_file("ref", "a b c d\r\ne f x y  \n", ref, sizeof ref);
    write_file("hyp", "a b c d\ne f g h", hyp, sizeof hyp);
    const char *refs[1] = {ref};
    ck_assert_int_eq(run_files(hyp, refs, 1, out, sizeof out, err, sizeof err), 0);
    ck_assert_str_eq(out, "BLEU = 59.46 75.0/66.7/50.0/50.0 (BP = 1.000 ratio = 1.000 "
                          "hyp_len = 8 ref_len = 8)\n"
                          "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:lockstep\n");
    ck_assert_str_eq(err, "");
    /* A second reference that matches line 2 perfectly: line 2 becomes 4/3/2/1 too -> 100. */
    write_file("ref2", "q\ne f g h\n", ref2, sizeof ref2);
    const char *two[2] = {ref, ref2};
    ck_assert_int_eq(run_files(hyp, two, 2, out, sizeof out, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(out, "BLEU = 100.00 100.0/100.0/100.0/100.0"));
    ck_assert_ptr_nonnull(strstr(out, "\nnrefs:2|"));
}
END_TEST

START_TEST(test_command_rejects_missing_file_and_line_mismatch) {
    setup_tmp();
    char ref[512], hyp[512], missing[512], out[1024], err[1024];
    write_file("ref", "a\nb\nc\n", ref, sizeof ref);
    write_file("hyp", "a\nb\n", hyp, sizeof hyp);
    snprintf(missing, sizeof missing, "%s/nope", tmpdir);
    const char *refs[1] = {ref};
    ck_assert_int_ne(run_files(hyp, refs, 1, out, sizeof out, err, sizeof err), 0);
    ck_assert_str_eq(out, "");
    ck_assert_ptr_nonnull(strstr(err, "has 2 lines but reference"));
    ck_assert_ptr_nonnull(strstr(err, "has 3"));
    /* Exactly one line. */
    ck_assert_ptr_eq(strchr(err, '\n'), err + strlen(err) - 1);
    const char *bad[1] = {missing};
    ck_assert_int_ne(run_files(hyp, bad, 1, out, sizeof out, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    ck_assert_ptr_nonnull(strstr(err, "nope"));
    /* An all-empty reference line is refused, as sacreBLEU does. */
    write_file("ref3", "a\n  \n", ref, sizeof ref);
    ck_assert_int_ne(run_files(hyp, refs, 1, out, sizeof out, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "line 2: empty reference"));
    /* bleu_main: usage error. */
    char *argv[] = {"bleu", ref};
    ck_assert_int_eq(bleu_main(2, argv), 2);
}
END_TEST

static Suite *bleu_suite(void) {
    Suite *s = suite_create("bleu");
    TCase *t = tcase_create("tokenize");
    tcase_add_test(t, test_13a_splits_punctuation_from_words);
    tcase_add_test(t, test_13a_keeps_numbers_with_separators_together);
    tcase_add_test(t, test_13a_unescapes_entities_and_drops_skipped);
    tcase_add_test(t, test_13a_handles_utf8_and_unicode_spaces);
    suite_add_tcase(s, t);
    t = tcase_create("score");
    tcase_add_test(t, test_perfect_match_scores_100);
    tcase_add_test(t, test_no_overlap_scores_exactly_zero);
    tcase_add_test(t, test_exp_smoothing_of_unmatched_higher_orders);
    tcase_add_test(t, test_exp_smoothing_counts_only_zero_orders);
    tcase_add_test(t, test_empty_higher_orders_give_zero);
    tcase_add_test(t, test_brevity_penalty_is_exp_one_minus_r_over_c);
    tcase_add_test(t, test_several_references_clip_by_max_count);
    tcase_add_test(t, test_corpus_stats_are_sums_not_mean_of_sentences);
    tcase_add_test(t, test_token_ids_give_the_same_statistics_as_strings);
    tcase_add_test(t, test_format_matches_sacrebleu_text_line);
    suite_add_tcase(s, t);
    t = tcase_create("command");
    tcase_add_test(t, test_command_prints_score_and_signature);
    tcase_add_test(t, test_command_rejects_missing_file_and_line_mismatch);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(bleu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
