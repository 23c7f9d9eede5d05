/* main.c - the `lockstep` program: subcommand dispatch, MPI start-up and the one error
 * line a failure prints. The same binary runs alone, under mpirun -np N, or under srun. */
#include <stdio.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#include <pmmintrin.h>
#endif

#include "trainer/bleu.h"
#include "trainer/embed.h"
#include "trainer/infer.h"
#include "trainer/prepare.h"
#include "trainer/trainer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: lockstep COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  train --model NAME [--config FILE] [--key value ...]   train (see train --help)\n"
            "  eval --ckpt FILE [--valid F] [--test F]                evaluate a checkpoint\n"
            "  prepare --kind lm|classify|parallel --data F --out DIR\n"
            "                                                         vocabularies + shards ahead of train\n"
            "  info CKPT                                              what a checkpoint holds\n"
            "  translate --ckpt FILE [--beam B] [--len-alpha A] < src > hyp\n"
            "                                                         decode tokenised lines\n"
            "  generate --ckpt FILE [--prompt TEXT] [--temperature T] [--top-k K] [--max-out N]\n"
            "                                                         sample from a language model\n"
            "  bleu REF HYP [REF2 ...]                                corpus BLEU as sacreBLEU\n"
            "  help                                                   this text\n"
            "\n"
            "Run under `mpirun -np N lockstep ...` for N data-parallel ranks.\n");
}

int main(int argc, char **argv) {
#if defined(__SSE__)
    /* Denormals in optimizer state (Adam's v decaying towards 0) slow every step by ~1.7x
     * and carry no information at float32 training precision: flush them to zero. */
    _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
    _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
#endif
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "info") == 0) {
        int rc = trainer_info_cmd(argc - 2, argv + 2);
        if (rc < 0) fprintf(stderr, "lockstep: error: %s\n", nn_error());
        return rc < 0 ? 1 : 0;
    }
    if (strcmp(cmd, "prepare") == 0) return trainer_prepare_main(argc - 2, argv + 2);
    if (strcmp(cmd, "bleu") == 0) return bleu_main(argc - 1, argv + 1);
    if (strcmp(cmd, "embed") == 0) return trainer_embed_main(argc - 1, argv + 1);
    if (strcmp(cmd, "translate") == 0 || strcmp(cmd, "generate") == 0) {
        int rc = strcmp(cmd, "translate") == 0 ? trainer_translate_cmd(argc - 2, argv + 2)
                                               : trainer_generate_cmd(argc - 2, argv + 2);
        if (rc < 0) fprintf(stderr, "lockstep: error: %s\n", nn_error());
        return rc < 0 ? 1 : 0;
    }
    if (strcmp(cmd, "train") != 0 && strcmp(cmd, "eval") != 0) {
        fprintf(stderr, "lockstep: error: unknown command '%s' (try lockstep help)\n", cmd);
        return 2;
    }
    comm c;
    comm_init(&c, &argc, &argv);
    int rc = strcmp(cmd, "train") == 0 ? trainer_train(&c, argc - 2, argv + 2)
                                       : trainer_eval_cmd(&c, argc - 2, argv + 2);
    if (rc < 0 && c.rank == 0) fprintf(stderr, "lockstep: error: %s\n", nn_error());
    comm_free(&c);
    if (rc == TRAINER_EXIT_PREEMPTED) return TRAINER_EXIT_PREEMPTED;
    return rc < 0 ? 1 : 0;
}
