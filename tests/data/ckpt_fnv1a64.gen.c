/* ckpt_fnv1a64.gen.c - wrote tests/data/ckpt_fnv1a64.h5 with the build of commit 96605d8
 * (checksum_algorithm "fnv1a64"), before the word-parallel checksum: the contents of
 * test_ckpt_checksum ckbuf_init(fill 1, step 70). Kept for the record; not built.
 * cc -I. tests/data/ckpt_fnv1a64.gen.c build/liblockstep_io.a -lhdf5 -lpng16 */
#include "io/io.h"
#include <stdio.h>
#include <string.h>
enum { NF = 46 };
static const io_tensor tensors[] = {
    {"embed/weight", 0, 2, {6, 4}}, {"out/weight", 24, 2, {4, 5}}, {"out/bias", 44, 1, {2}},
};
static const char *const slot_names[] = {"m", "v"};
static const char *const vocab_names[] = {"src", "labels"};
int main(int argc, char **argv) {
    float params[NF], m[NF], v[NF];
    float *slots[2] = {m, v};
    char *keys[2] = {"lr", "dim"}, *vals[2] = {"0.01", "4"};
    io_vocab vocabs[2];
    int64_t step = 70;
    for (int i = 0; i < NF; i++) {
        params[i] = 0.125f * (float)(i - 20) + (float)step;
        m[i] = 1e-2f * (float)i;
        v[i] = 1e-4f * (float)(i + 1);
    }
    io_vocab_init(&vocabs[0], 1);
    io_vocab_add(&vocabs[0], "alpha", 5, 9);
    io_vocab_add(&vocabs[0], "w\xc3\xb6rtchen", 9, 4);
    io_vocab_init(&vocabs[1], 0);
    io_vocab_add(&vocabs[1], "yes", 3, 3);
    io_vocab_add(&vocabs[1], "no", 2, 2);
    io_ckpt ck = {.model = "bow", .n_tensors = 3, .tensors = tensors, .n_floats = NF,
                  .params = params, .n_slots = 2, .slot_names = slot_names, .slots = slots,
                  .n_vocabs = 2, .vocab_names = vocab_names, .vocabs = vocabs,
                  .n_config = 2, .config_keys = keys, .config_vals = vals,
                  .metrics = "{\"step\":1,\"loss\":2}\n"};
    ck.train = (io_train_state){.step = step, .epoch = 1, .tokens_seen = 999,
                                .examples_seen = 50, .world_size = 2, .data_pos = 7,
                                .best_metric = 0.5, .best_step = step, .bad_evals = 0};
    (void)argc;
    int rc = io_ckpt_write(argv[1], &ck);
    if (rc) fprintf(stderr, "%s\n", io_error());
    return rc != 0;
}
