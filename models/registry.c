/* registry.c - the table of every model compiled into lockstep.
 * Adding a model: define its nn_model_ops in its own file, declare it in nn.h, list it
 * here. Nothing else refers to models by name. */
#include "models/nn.h"

const nn_model_ops *const nn_models[] = {
    &nn_bow_classifier_ops,
    &nn_cnn_classifier_ops,
    &nn_rnn_classifier_ops,
    &nn_rnn_lm_ops,
    &nn_seq2seq_ops,
    &nn_autoencoder_ops,
    &nn_vae_ops,
    &nn_pca_ops,
    &nn_gpt_ops,
    &nn_transformer_ops,
    &nn_captioner_ops,
    &nn_skipgram_ops,
    &nn_onehot_logreg_ops,
    &nn_bow_logreg_ops,
    NULL,
};
