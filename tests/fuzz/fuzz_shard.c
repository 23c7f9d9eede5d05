/* fuzz_shard.c - libFuzzer harness: io_shard_open on arbitrary bytes. Bit 0 of the first
 * byte asks the harness to fix up the header checksum (FNV-1a 64 of everything after the
 * 64-byte header, at byte 40) so that mutations get past it to the structural checks;
 * bit 1 opens without verification. Never crashes; a shard accepted with verification
 * has offsets that start at 0, never decrease and stay within the token arrays, and
 * non-negative ids and labels (what the data pipeline relies on when it indexes). */
#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int fix = data[0] & 1, verify = !(data[0] & 2);
    size_t n = size - 1;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return 0;
    memcpy(b, data + 1, n);
    if (fix && n >= 64) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 64; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
        memcpy(b + 40, &h, 8);
    }
    const char *path = fuzz_path("input.shard");
    fuzz_write(path, b, n);
    free(b);
    io_shard s;
    int rc = io_shard_open(&s, path, verify);
    if (rc != IO_OK) {
        FUZZ_CHECK(io_error()[0] != '\0' && s.map == NULL);
        return 0;
    }
    FUZZ_CHECK(s.n >= 0 && s.off[0] == 0 && s.off[s.n] == s.n_tok);
    if (verify) {
        for (int64_t i = 0; i < s.n; i++) {
            FUZZ_CHECK(s.off[i] <= s.off[i + 1] && s.off[i + 1] <= s.n_tok);
            if (s.off_tgt) FUZZ_CHECK(s.off_tgt[i] <= s.off_tgt[i + 1] &&
                                      s.off_tgt[i + 1] <= s.n_tok_tgt);
            if (s.label) FUZZ_CHECK(s.label[i] >= 0);
        }
        for (int64_t k = 0; k < s.n_tok; k++) FUZZ_CHECK(s.ids[k] >= 0);
        for (int64_t k = 0; s.ids_tgt && k < s.n_tok_tgt; k++) FUZZ_CHECK(s.ids_tgt[k] >= 0);
    }
    io_shard_close(&s);
    return 0;
}
