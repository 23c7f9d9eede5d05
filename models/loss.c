/* loss.c - fused loss kernels: softmax cross-entropy (ignore index, label smoothing)
 * and sigmoid binary cross-entropy, each computing the loss sum and, optionally, the
 * gradient with respect to the logits in the same pass over memory.
 *
 * Losses are summed (never averaged) so the trainer can normalise by the GLOBAL count
 * across ranks. Nothing here allocates. Layers are in layers.c. */
#include "models/nn.h"
#include "models/nn_math.h"

#include <math.h>
#include <string.h>

/* ---- softmax cross-entropy ----------------------------------------------------------- */
/* Per row with target t, smoothing e, lse = log sum_j exp(x_j):
 *   loss = (1 - e)(lse - x_t) + e * mean_j (lse - x_j) = lse - (1 - e) x_t - e mean_j x_j
 *   dloss/dx_j = softmax_j - (1 - e) [j == t] - e / V
 * (PyTorch's definition: the smoothing mass is spread over all V classes, the target
 * included.) The max is subtracted before exp, so no overflow for any finite logits. */
double nn_xent_forward_backward(float *dlogits, const float *logits, const int32_t *targets,
                                int N, int V, int ignore_index, float label_smoothing,
                                float grad_scale, double *count, double *correct) {
    NN_ASSERT(V > 0);
    NN_ASSERT(label_smoothing >= 0.0f && label_smoothing < 1.0f);
    const float eps = label_smoothing;
    double loss = 0.0, cnt = 0.0, hits = 0.0;
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * V;
        float *d = dlogits ? dlogits + (size_t)i * V : NULL;
        int32_t t = targets[i];
        if (t == ignore_index) {
            if (d) memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        NN_ASSERT(t >= 0 && t < V);
        /* pass 1: max and its first index */
        float mx = x[0];
        int am = 0;
        for (int j = 1; j < V; j++)
            if (x[j] > mx) {
                mx = x[j];
                am = j;
            }
        /* pass 2: sum of exp (and of logits when smoothing) */
        float s = 0.0f;
        for (int j = 0; j < V; j++) s += nn_exp_(x[j] - mx);
        double lse = (double)mx + log((double)s);
        double row = lse - (double)(1.0f - eps) * x[t];
        if (eps > 0.0f) {
            double sx = 0.0;
            for (int j = 0; j < V; j++) sx += x[j];
            row -= (double)eps * sx / V;
        }
        loss += row;
        cnt += 1.0;
        hits += am == t;
        /* pass 3: gradient; x[t] was read above, so d may alias x */
        if (d) {
            float a = grad_scale / s, c = grad_scale * eps / (float)V;
            for (int j = 0; j < V; j++) d[j] = a * nn_exp_(x[j] - mx) - c;
            d[t] -= grad_scale * (1.0f - eps);
        }
    }
    if (count) *count = cnt;
    if (correct) *correct = hits;
    return loss;
}

/* ---- sigmoid binary cross-entropy --------------------------------------------------- */
/* loss = -t log s(z) - (1 - t) log(1 - s(z)) = max(z, 0) - z t + log1p(exp(-|z|)),
 * finite for every finite z. A prediction is correct when (z > 0) == (t >= 0.5). */
double nn_bce_forward_backward(float *dz, const float *z, const float *t, int N, float grad_scale,
                               double *correct) {
    double loss = 0.0, hits = 0.0;
    for (int i = 0; i < N; i++) {
        float zi = z[i], ti = t[i];
        float a = fabsf(zi);
        loss += (double)(zi > 0.0f ? zi : 0.0f) - (double)zi * ti + log1p(exp(-(double)a));
        hits += (zi > 0.0f) == (ti >= 0.5f);
        if (dz) dz[i] = grad_scale * (nn_sigmoid_(zi) - ti);
    }
    if (correct) *correct = hits;
    return loss;
}
