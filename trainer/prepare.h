/* prepare.h - `lockstep prepare`: the vocabulary pass and shard encoding of `lockstep
 * train`, as a separate serial step, so that a big corpus is prepared once, ahead of (or
 * outside) a batch job. */
#ifndef TRAINER_PREPARE_H
#define TRAINER_PREPARE_H

/* lockstep prepare --data FILE [--valid F] [--test F] --out DIR (--kind lm|classify|parallel
 * | --model NAME) [--vocab-size N] [--min-count N] [--max-len N] [--config FILE] [...]
 *
 * Builds the vocabularies from FILE and writes <out>/data/{train,valid,test}.shard and
 * <out>/data/stamp.txt exactly as `lockstep train` with the same --data/--valid/--test
 * (same path strings), --out, --vocab-size, --min-count and --max-len would, so that train
 * finds the stamp current and maps the shards without rewriting them. Shards that are
 * already current are left alone. Other training keys are accepted and ignored, so a
 * training command line or config file can be passed unchanged. Serial: no MPI.
 * Prints what it did (tokens, sizes, MB/s) on stdout. Returns 0, or a negative nn_status
 * with nn_error() set (bad arguments: NN_ERR_CONFIG; unreadable or malformed data:
 * NN_ERR_DATA). */
int trainer_prepare_cmd(int argc, char **argv);
/* The subcommand as main() calls it: runs trainer_prepare_cmd, prints the error line on
 * failure; returns the process exit status (0 ok, 1 failure, 2 bad arguments). */
int trainer_prepare_main(int argc, char **argv);

#endif
