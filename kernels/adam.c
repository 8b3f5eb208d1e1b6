/* adam.c - Adam, its schedule and gradient clipping over a flat arena; see adam.h.
 *
 * Buffers: params, m, v, grad [P], all in the same layout.
 */
#include "adam.h"

#include <math.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define CLIP_EPS 1e-6f                  /* torch's clip_grad_norm_ guards the division with it */
#define PI       3.14159265358979323846 /* M_PI is POSIX, not C17 */

/* Four lanes of GCC's vector extension: the update is bound by two divisions and a
 * square root per parameter, which SSE2 does four at a time, rounding as scalars do. */
typedef float F4 __attribute__((vector_size(16)));

static inline F4 load4(const float *p) {
    F4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, F4 v) {
    memcpy(p, &v, sizeof v);
}

/* sqrtf would keep errno semantics and stay scalar; sqrt of v >= 0 never sets errno. */
static inline F4 sqrt4(F4 v) {
#ifdef __SSE2__
    return _mm_sqrt_ps(v);
#else
    return (F4){sqrtf(v[0]), sqrtf(v[1]), sqrtf(v[2]), sqrtf(v[3])};
#endif
}

AdamConfig adam_defaults(void) {
    return (AdamConfig){1e-3, 0.0, 0.9, 0.999, 1e-8, 0, 0, ADAM_CONSTANT};
}

double adam_lr(const AdamConfig *cfg, long t) {
    if (t <= cfg->warmup) return cfg->lr * (double)t / (double)cfg->warmup;
    if (cfg->decay == ADAM_CONSTANT || cfg->decay_steps <= 0) return cfg->lr;

    double p = fmin(1.0, (double)(t - cfg->warmup) / (double)cfg->decay_steps);
    double span = cfg->lr - cfg->lr_min;
    if (cfg->decay == ADAM_LINEAR) return cfg->lr - span * p;
    return cfg->lr_min + span * 0.5 * (1.0 + cos(PI * p));
}

/* Four partial sums, so the additions do not wait on each other. */
double adam_grad_norm(const float *grad, size_t n) {
    double s[4] = {0};
    size_t i = 0;

    for (; i + 4 <= n; i += 4) {
        for (int j = 0; j < 4; j++) s[j] += (double)grad[i + j] * grad[i + j];
    }
    for (; i < n; i++) s[0] += (double)grad[i] * grad[i];
    return sqrt((s[0] + s[1]) + (s[2] + s[3]));
}

float adam_clip_scale(double norm, float max_norm) {
    if (max_norm <= 0.0f) return 1.0f;
    float scale = max_norm / ((float)norm + CLIP_EPS);
    return scale < 1.0f ? scale : 1.0f;
}

/* As torch: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). The coefficients are
 * formed in double and rounded once to float, as torch does with Python scalars. */
void adam_step(float *params, float *m, float *v, const float *grad, size_t n, double lr,
               float grad_scale, const AdamConfig *cfg, long t) {
    float b1 = (float)cfg->beta1, b2 = (float)cfg->beta2;
    float a1 = (float)(1.0 - cfg->beta1), a2 = (float)(1.0 - cfg->beta2);
    float step_size = (float)(lr / (1.0 - pow(cfg->beta1, (double)t)));
    float root2 = (float)sqrt(1.0 - pow(cfg->beta2, (double)t));
    float eps = (float)cfg->eps;
    size_t i = 0;

    for (; i + 4 <= n; i += 4) {
        F4 g = load4(grad + i) * grad_scale;
        F4 m4 = load4(m + i) * b1 + a1 * g;
        F4 v4 = load4(v + i) * b2 + a2 * (g * g);
        store4(m + i, m4);
        store4(v + i, v4);
        store4(params + i, load4(params + i) - step_size * (m4 / (sqrt4(v4) / root2 + eps)));
    }
    for (; i < n; i++) {
        float g = grad[i] * grad_scale;
        m[i] = m[i] * b1 + a1 * g;
        v[i] = v[i] * b2 + a2 * (g * g);
        params[i] -= step_size * (m[i] / (sqrtf(v[i]) / root2 + eps));
    }
}
