/* test_captioner.c - issue 11: the captioning data readers of io/dense.c on the fixture
 * tests/data/captions_small.h5 (scripts/prepare-captions fixture).
 * Layer and model tests are added below as they land. */
#include <check.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"
#include "models/nn.h"

#define FIXTURE "data/captions_small.h5"

/* ---- io readers --------------------------------------------------------------------- */

START_TEST(test_io_reads_tokens_vocab_and_image_shape) {
    int64_t rows = 0, cols = 0, xr = 0, xc = 0;
    ck_assert_int_eq(io_dense_cols(FIXTURE, "train/tokens", &rows, &cols), IO_OK);
    ck_assert_int_eq(io_dense_cols(FIXTURE, "train/x", &xr, &xc), IO_OK);
    ck_assert_int_eq(rows, 300);
    ck_assert_int_eq(xr, rows);
    ck_assert_int_eq(cols, 5);
    int64_t shape[3] = {0, 0, 0};
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "image_shape", shape, 3), IO_OK);
    ck_assert_int_eq(shape[0], 1);
    ck_assert_int_eq(shape[0] * shape[1] * shape[2], xc);
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "image_shape", shape, 2), IO_ERR_SHAPE);
    ck_assert_int_eq(io_dense_attr_i64(FIXTURE, "no_such_attr", shape, 3), IO_ERR_NOTFOUND);

    io_vocab v;
    ck_assert_int_eq(io_dense_vocab(FIXTURE, "vocab", &v), IO_OK);
    ck_assert_int_eq(v.n, 14);
    ck_assert_str_eq(v.word[IO_PAD], "<pad>");
    ck_assert_str_eq(v.word[IO_EOS], "</s>");
    ck_assert_int_eq(io_vocab_lookup(&v, "sneaker", 7), 11);
    /* a float dataset is not a vocabulary, nor token ids */
    io_vocab bad;
    ck_assert_int_eq(io_dense_vocab(FIXTURE, "train/x", &bad), IO_ERR_FORMAT);

    int32_t tok[3 * 5], one[5];
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/tokens", 7, 3, tok), IO_OK);
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/tokens", 8, 1, one), IO_OK);
    ck_assert_mem_eq(one, tok + 5, sizeof one);
    for (int r = 0; r < 3; r++) {
        for (int j = 0; j < 4; j++) {
            ck_assert_int_ge(tok[r * 5 + j], IO_N_SPECIAL);
            ck_assert_int_lt(tok[r * 5 + j], v.n);
        }
        ck_assert_int_eq(tok[r * 5 + 4], IO_EOS);
    }
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/tokens", 298, 3, tok), IO_ERR_SHAPE);
    float xf[8];
    ck_assert_int_eq(io_dense_read_tokens(FIXTURE, "train/x", 0, 1, (int32_t *)xf),
                     IO_ERR_FORMAT);
    ck_assert_int_eq(io_dense_read_tokens("no/such.h5", "train/tokens", 0, 1, tok),
                     IO_ERR_NOTFOUND);
    io_vocab_free(&v);
}
END_TEST

static Suite *captioner_suite(void) {
    Suite *s = suite_create("captioner");
    TCase *tc = tcase_create("io");
    tcase_add_test(tc, test_io_reads_tokens_vocab_and_image_shape);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(captioner_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
