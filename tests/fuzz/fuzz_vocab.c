/* fuzz_vocab.c - libFuzzer harness: io_vocab_unpack on arbitrary bytes (the buffer rank 0
 * broadcasts). Never crashes; a buffer it accepts packs back to the same bytes, and
 * unpacking that gives the same vocabulary. */
#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    io_vocab v = {0}, w = {0};
    if (io_vocab_unpack(&v, (const char *)data, size) == IO_OK) {
        char *buf = NULL;
        size_t len = 0;
        FUZZ_CHECK(io_vocab_pack(&v, &buf, &len) == IO_OK);
        FUZZ_CHECK(io_vocab_unpack(&w, buf, len) == IO_OK);
        FUZZ_CHECK(w.n == v.n);
        for (int i = 0; i < v.n; i++) {
            FUZZ_CHECK(strcmp(v.word[i], w.word[i]) == 0 && v.count[i] == w.count[i]);
            FUZZ_CHECK(io_vocab_lookup(&v, v.word[i], strlen(v.word[i])) == i);
        }
        free(buf);
    } else {
        FUZZ_CHECK(v.n == 0 && v.word == NULL); /* nothing left behind */
        FUZZ_CHECK(io_error()[0] != '\0');
    }
    io_vocab_free(&v);
    io_vocab_free(&w);
    return 0;
}
