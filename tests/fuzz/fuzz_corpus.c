/* fuzz_corpus.c - libFuzzer harness: text corpora. The first byte picks the kind
 * (classify, parallel, plain) and a truncation length; the rest is the corpus file
 * (invalid UTF-8, NUL bytes, empty and huge lines, stray TABs, binary garbage).
 * io_text_count must never crash; when it accepts, io_shard_encode must encode with the
 * counted vocabularies, and the shard must open with verification and hold only ids of
 * those vocabularies, sequences no longer than the truncation, labels in range. */
#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int kind = IO_TEXT_CLASSIFY + data[0] % 3;
    int max_len = (data[0] >> 2) % 8; /* 0: no limit */
    const char *text = fuzz_path("corpus.txt"), *shard = fuzz_path("corpus.shard");
    fuzz_write(text, data + 1, size - 1);
    io_vocab src = {0}, tgt = {0}, labels = {0};
    io_vocab_init(&src, 1);
    io_vocab_init(&tgt, 1);
    io_vocab_init(&labels, 0);
    int rc = io_text_count(text, kind, &src, kind == IO_TEXT_PARALLEL ? &tgt : NULL,
                           kind == IO_TEXT_CLASSIFY ? &labels : NULL);
    if (rc != IO_OK) {
        FUZZ_CHECK(io_error()[0] != '\0');
    } else {
        rc = io_shard_encode(text, kind, &src, &tgt, &labels, max_len, shard);
        FUZZ_CHECK(rc == IO_OK); /* what counting accepted, encoding accepts */
        io_shard s;
        FUZZ_CHECK(io_shard_open(&s, shard, 1) == IO_OK);
        FUZZ_CHECK(s.kind == kind);
        for (int64_t i = 0; i < s.n; i++) {
            int64_t len = s.off[i + 1] - s.off[i];
            FUZZ_CHECK(len >= 0 && (max_len == 0 || len <= max_len));
            for (int64_t k = s.off[i]; k < s.off[i + 1]; k++)
                FUZZ_CHECK(s.ids[k] >= 0 && s.ids[k] < src.n);
            if (s.off_tgt) {
                int64_t lt = s.off_tgt[i + 1] - s.off_tgt[i];
                FUZZ_CHECK(lt >= 1 && (max_len == 0 || lt <= max_len));
                FUZZ_CHECK(s.ids_tgt[s.off_tgt[i + 1] - 1] == IO_EOS);
                for (int64_t k = s.off_tgt[i]; k < s.off_tgt[i + 1]; k++)
                    FUZZ_CHECK(s.ids_tgt[k] >= 0 && s.ids_tgt[k] < tgt.n);
            }
            if (s.label) FUZZ_CHECK(s.label[i] >= 0 && s.label[i] < labels.n);
        }
        io_shard_close(&s);
        unlink(shard);
    }
    io_vocab_free(&src);
    io_vocab_free(&tgt);
    io_vocab_free(&labels);
    return 0;
}
