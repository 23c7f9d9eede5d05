/* fuzz_config.c - libFuzzer harness: the configuration of `lockstep train`.
 * The first byte picks what the rest is: a config file (`--config FILE`, written to a
 * scratch file), or command-line flags (one argument per line). trainer_parse_args must
 * never crash; when it accepts, defaults are filled for the named model and every key's
 * typed getter (int, float, bool) runs on the value, as the trainer would do. Properties:
 * a refusal leaves a message; an accepted configuration dumps and holds only known keys. */
#include "tests/fuzz/fuzz_util.h"
#include "trainer/trainer.h"

static void typed_reads(const nn_config *cfg) {
    for (int i = 0; i < cfg->n; i++) {
        long l;
        double d;
        int b;
        const char *c;
        nn_config_int(cfg, cfg->key[i], 0, &l);
        nn_config_float(cfg, cfg->key[i], 0.0, &d);
        nn_config_bool(cfg, cfg->key[i], 0, &b);
        nn_config_choice(cfg, cfg->key[i], "a", "a|b|shuffle|stop", &c);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0] & 1;
    const char *body = (const char *)data + 1;
    size_t n = size - 1;
    char *argv_store[66];
    char *copy = NULL;
    int argc = 0;
    if (mode == 0) {
        const char *path = fuzz_path("config.cfg");
        fuzz_write(path, body, n);
        argv_store[argc++] = "--config";
        argv_store[argc++] = (char *)path;
        argv_store[argc++] = "--model";
        argv_store[argc++] = "bow-classifier";
    } else {
        copy = malloc(n + 1);
        if (!copy) return 0;
        memcpy(copy, body, n);
        copy[n] = '\0';
        char *save = NULL;
        for (char *t = strtok_r(copy, "\n", &save); t && argc < 64; t = strtok_r(NULL, "\n", &save))
            argv_store[argc++] = t;
    }
    argv_store[argc] = NULL;
    nn_config cfg = {0};
    int rc = trainer_parse_args(&cfg, argc, argv_store);
    if (rc < 0) {
        FUZZ_CHECK(nn_error()[0] != '\0');
    } else {
        const char *m = nn_config_get(&cfg, "model");
        const nn_model_ops *ops = m ? nn_model_find(m) : NULL;
        if (ops && trainer_config_defaults(&cfg, ops) == NN_OK) {
            for (int i = 0; i < cfg.n; i++)
                FUZZ_CHECK(trainer_is_trainer_key(cfg.key[i]) ||
                           trainer_is_model_key(ops, cfg.key[i]));
        }
        typed_reads(&cfg);
        char *dump = trainer_config_dump(&cfg);
        FUZZ_CHECK(dump != NULL);
        free(dump);
    }
    nn_config_free(&cfg);
    free(copy);
    return 0;
}
