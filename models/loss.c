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
 * included.) The max is subtracted before exp, so no overflow for any finite logits.
 *
 * Speed: this runs over (B*T, V) logits every step, V up to tens of thousands, so it is
 * memory-bound. Each row is read from memory ONCE: pass A finds max, first argmax and
 * the sum of logits; pass B writes exp(x - max) into dlogits and sums it; pass C scales
 * dlogits in place. A row of 8192 floats is 32 KiB, so passes B and C hit L1/L2. Every
 * reduction runs in 16 lanes held in vector registers (nn_vf), in a fixed order: results
 * depend only on the row's values and V, never on alignment or the batch layout. */
typedef struct nn_rowstat_ {
    float mx;   /* max logit */
    int am;     /* first index of the max */
    float sx;   /* sum of logits (only when smoothing) */
} nn_rowstat_;

/* Two 8-lane accumulators per quantity: 16 logits per iteration, all in registers. */
static inline nn_rowstat_ nn_row_scan_(const float *x, int V, int want_sum) {
    nn_vf m0 = nn_vsplat_(-INFINITY), m1 = m0, s0 = nn_vsplat_(0.0f), s1 = s0;
    nn_vi i0 = {0}, i1 = {0};
    nn_vi j0, j1;
    for (int k = 0; k < NN_VW; k++) j0[k] = k;
    j1 = j0 + NN_VW;
    int j = 0;
    for (; j + 2 * NN_VW <= V; j += 2 * NN_VW) {
        nn_vf v0 = nn_vload_(x + j), v1 = nn_vload_(x + j + NN_VW);
        nn_vi g0 = v0 > m0, g1 = v1 > m1; /* strict: the earliest index in a lane wins */
        m0 = nn_vsel_(g0, v0, m0);
        m1 = nn_vsel_(g1, v1, m1);
        i0 = nn_vseli_(g0, j0, i0);
        i1 = nn_vseli_(g1, j1, i1);
        j0 += 2 * NN_VW;
        j1 += 2 * NN_VW;
        if (want_sum) s0 += v0, s1 += v1;
    }
    nn_rowstat_ r = {-INFINITY, 0, 0.0f};
    for (int k = 0; k < NN_VW; k++) { /* lanes in index order within each half */
        if (m0[k] > r.mx || (m0[k] == r.mx && i0[k] < r.am)) r.mx = m0[k], r.am = i0[k];
        if (m1[k] > r.mx || (m1[k] == r.mx && i1[k] < r.am)) r.mx = m1[k], r.am = i1[k];
    }
    float sx = nn_vsum_(s0 + s1);
    for (; j < V; j++) { /* tail: later indices, so only a strictly larger value wins */
        if (x[j] > r.mx) r.mx = x[j], r.am = j;
        sx += x[j];
    }
    r.sx = sx;
    return r;
}

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
        nn_rowstat_ st = nn_row_scan_(x, V, eps > 0.0f);
        float xt = x[t]; /* read before d (possibly == x) is overwritten */
        float s = nn_vrow_expsum_(d, x, st.mx, V);
        double lse = (double)st.mx + log((double)s);
        double row = lse - (double)(1.0f - eps) * xt;
        if (eps > 0.0f) row -= (double)eps * st.sx / V;
        loss += row;
        cnt += 1.0;
        hits += st.am == t;
        if (d) { /* d holds exp(x - max): scale to grad_scale * (softmax - e / V) */
            float a = grad_scale / s, c = grad_scale * eps / (float)V;
            for (int j = 0; j < V; j++) d[j] = a * d[j] - c;
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
