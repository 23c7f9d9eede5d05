/* infer.h - a checkpoint loaded for inference (translate, generate, embed), outside MPI. */
#ifndef TRAINER_INFER_H
#define TRAINER_INFER_H

#include "trainer/trainer.h"

typedef struct trainer_loaded {
    const nn_model_ops *ops;
    nn_config cfg;            /* the configuration stored in the checkpoint */
    nn_model model;
    io_vocab vocab[3];        /* src, then tgt (parallel) or labels (classify) */
    const io_vocab *src, *tgt;/* views: tgt == src for language models */
    int64_t step;
} trainer_loaded;

/* Rebuilds the model named in the checkpoint at path from its stored configuration and
 * vocabularies, for micro-batches of up to max_batch sequences of up to max_len tokens
 * (unless the checkpoint's own max-len is set), and reads its parameters. On failure
 * returns a negative status with nn_error() set and leaves L freed. */
int trainer_load_checkpoint(trainer_loaded *L, const char *path, int max_batch, int max_len);
void trainer_loaded_free(trainer_loaded *L);

/* Tokens of line (split on spaces; modified in place) as ids of v, unknown -> <unk>,
 * at most cap. Returns the count. */
int trainer_encode_line(const io_vocab *v, char *line, int32_t *ids, int cap);
/* Writes ids up to the first </s> as words separated by spaces, then a newline. */
void trainer_write_ids(FILE *f, const io_vocab *v, const int32_t *ids, int n);

int trainer_translate_cmd(int argc, char **argv);
int trainer_generate_cmd(int argc, char **argv);

#endif
