/* gradcheck.c - finite-difference gradient checking for tests and --gradcheck.
 *
 * Perturbs entries of any float buffer (usually a parameter slice of the registry) and
 * compares central differences of a caller-supplied scalar loss with the analytic
 * gradient. It knows nothing about models: the closure computes the loss. */
#include "models/nn.h"

#include <math.h>

/* Checked indices are spread evenly over [0, n): index k of max_checks is
 * floor((k + 0.5) n / max_checks), so both ends and the middle of a tensor are seen.
 * The error of one entry is |g - fd| / max(1e-3, |g| + |fd|): relative for normal
 * gradients, absolute (times 1000) for gradients near zero, where float32 noise in f
 * would make a relative measure meaningless. x is restored bit for bit afterwards. */
double nn_gradcheck(double (*f)(void *ctx), void *ctx, float *x, const float *g, size_t n,
                    float h, int max_checks) {
    NN_ASSERT(f && x && g && h > 0.0f);
    if (n == 0 || max_checks <= 0) return 0.0;
    size_t checks = n < (size_t)max_checks ? n : (size_t)max_checks;
    double worst = 0.0;
    for (size_t k = 0; k < checks; k++) {
        size_t i = checks == n ? k : (size_t)(((double)k + 0.5) * (double)n / (double)checks);
        if (i >= n) i = n - 1;
        float orig = x[i];
        x[i] = orig + h;
        double fp = f(ctx);
        x[i] = orig - h;
        double fm = f(ctx);
        x[i] = orig;
        /* divide by the step actually taken: orig +- h is rounded to float */
        double step = (double)(orig + h) - (double)(orig - h);
        double fd = (fp - fm) / step;
        double ga = g[i];
        double den = fabs(ga) + fabs(fd);
        if (den < 1e-3) den = 1e-3;
        double err = fabs(ga - fd) / den;
        if (!(err <= worst)) worst = err; /* NaN propagates as the worst */
    }
    return worst;
}
