/* embed.h - `lockstep embed`: use trained word embeddings outside MPI.
 *
 *   lockstep embed neighbors (--ckpt C | --vec F) WORD [--k 10]
 *   lockstep embed analogy   (--ckpt C | --vec F) A B C [--k 10]     B - A + C
 *   lockstep embed eval      (--ckpt C | --vec F) [--analogies FILE] [--similarity FILE]
 *   lockstep embed export    --ckpt C --out FILE                     word2vec text format
 *
 * The embeddings are the rows of the checkpoint's "input/weight" (skipgram), or of
 * "embedding/weight" (bow-classifier and friends), named by its source vocabulary; or
 * the rows of a word2vec/fastText text file (first line "V dim", then "word v1 .. vdim").
 * Special tokens (<pad> <unk> <s> </s>) are never answers and are not exported. */
#ifndef TRAINER_EMBED_H
#define TRAINER_EMBED_H

/* argv[0] is "embed". Prints results to stdout and one error line to stderr; returns
 * the process exit status (0 ok, 1 failure, 2 usage). */
int trainer_embed_main(int argc, char **argv);

/* Spearman rank correlation of x and y (n pairs, ties get their average rank); NaN when
 * n < 2 or either side is constant. */
double trainer_spearman(const double *x, const double *y, int n);

#endif
