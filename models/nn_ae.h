/* nn_ae.h - autoencoders, the variational autoencoder and PCA (issue 8).
 *
 * Included at the end of nn.h; declares the three model tables and the losses and
 * helpers they add, so tests can check each piece on its own. Everything here works on
 * dense float rows: x (B,D) with values in [0,1]. */
#ifndef MODELS_NN_AE_H
#define MODELS_NN_AE_H

/* ---- models ------------------------------------------------------------------------- */
/* "autoencoder": dense encoder (key hidden, e.g. "256,64"; the last width is the code),
 * mirrored decoder, sigmoid output; denoising, sparse, stacked (greedy layer-wise
 * pretraining keyed on nn_batch.step) and supervised (softmax head on the code). */
extern const nn_model_ops nn_autoencoder_ops;
/* "vae": Gaussian encoder (mean, log-variance), reparameterised sample, Bernoulli decoder.
 * Loss per example = BCE reconstruction + kl-weight * KL(q(z|x) || N(0,I)). */
extern const nn_model_ops nn_vae_ops;
/* "pca": principal components from the data covariance (LAPACK dsyevd); fitted through
 * fit_size / fit_accumulate / fit_finish, never gradient-trained. */
extern const nn_model_ops nn_pca_ops;

#define NN_AE_MAX_LAYERS 8

/* Stats extra[] slots of the autoencoder ("recon_sse", "recon_n", "noisy_sse"). */
enum { NN_AE_SSE = 0, NN_AE_SSE_N = 1, NN_AE_NOISY_SSE = 2 };
/* Stats extra[] slots of the vae ("recon", "kl", "recon_sse", "recon_n"). */
enum { NN_VAE_RECON = 0, NN_VAE_KL = 1, NN_VAE_SSE = 2, NN_VAE_SSE_N = 3 };
/* Stats extra[] slots of pca: sse at the configured K, pixel count, then sse at
 * k = 1, 2, 5, 10, 20, 50 (each clamped to K). */
enum { NN_PCA_SSE = 0, NN_PCA_SSE_N = 1, NN_PCA_SSE_K0 = 2 };

/* The `step` key of evaluation noise (denoising inputs, VAE samples): a constant, so
 * every evaluation of a checkpoint sees the same corruption whatever the training step. */
#define NN_AE_EVAL_STEP UINT64_C(0xE7A1E7A1E7A1E7A1)

/* ---- noise ------------------------------------------------------------------------- */
enum nn_noise { NN_NOISE_NONE = 0, NN_NOISE_GAUSSIAN = 1, NN_NOISE_MASK = 2 };
/* out (B,D) = corrupted x (B,D). Row i draws from nn_rng_make(seed, step, index[i],
 * NN_RNG_NOISE) (index NULL: i). GAUSSIAN adds level * N(0,1); MASK zeroes each value
 * with probability level; NONE copies. out may equal x. Cannot fail. */
void nn_ae_corrupt(float *out, const float *x, int B, int D, int kind, float level,
                   uint64_t seed, uint64_t step, const int64_t *index);

/* ---- losses and penalties ---------------------------------------------------------- */
/* Squared error sum_i (y_i - t_i)^2 over n values; returns the sum. dy (may be NULL) is
 * OVERWRITTEN with grad_scale * 2 (y - t). */
double nn_mse_forward_backward(float *dy, const float *y, const float *t, size_t n,
                               float grad_scale);

/* KL(N(mu, exp(logvar)) || N(0, 1)) summed over the Z latent dims of each of B rows:
 * -1/2 sum(1 + logvar - mu^2 - exp(logvar)) >= 0. Returns the sum over all rows; if
 * dmu/dlogvar are non-NULL, ACCUMULATES grad_scale * the gradient into them (the
 * reparameterised path adds to the same buffers). */
double nn_kl_gauss_forward_backward(float *dmu, float *dlogvar, const float *mu,
                                    const float *logvar, int B, int Z, float grad_scale);

/* Sparsity penalty on a (B,H) sigmoid activations: with rho_j = mean_i a_ij (clamped to
 * [1e-6, 1 - 1e-6]), returns B * sum_j KL(rho || rho_j) (Bernoulli KL; scaled by B so it
 * adds to a per-example loss sum) and, if da != NULL, ACCUMULATES grad_scale * its
 * gradient into da. */
double nn_kl_sparse_forward_backward(float *da, const float *a, int B, int H, float rho,
                                     float grad_scale);

/* L1 penalty sum |a| over n values; ACCUMULATES grad_scale * sign(a) into da (may be NULL). */
double nn_l1_forward_backward(float *da, const float *a, size_t n, float grad_scale);

/* ---- vae generation ------------------------------------------------------------------ */
/* Decodes n latent codes z (n,Z) into images out (n,D) in [0,1] (sigmoid means), in chunks
 * of the model's max_batch. NN_ERR_SHAPE if m is not a vae. */
int nn_vae_decode(nn_model *m, const float *z, int n, float *out);
/* Encodes x (n,D) to the posterior means mu (n,Z). NN_ERR_SHAPE if m is not a vae. */
int nn_vae_encode(nn_model *m, const float *x, int n, float *mu);
int nn_vae_latent(const nn_model *m); /* Z, or 0 if m is not a vae */

/* ---- pca ---------------------------------------------------------------------------- */
/* Fits pca on x (N,D) in one go (fit_accumulate on the whole matrix then fit_finish);
 * for tests and single-process tools. Returns 0 or a negative status. */
int nn_pca_fit(nn_model *m, const float *x, int N);

#endif
