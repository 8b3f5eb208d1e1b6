/* policy.c - the template-selection policy's kernels; see policy.h and POLICY.md.
 *
 * Does: the parameter arena's layout and seeded init, forward and backward of every
 * layer (linear, tanh, bilinear score, tempered softmax with a floor, entropy), and the
 * acting path (score the eligible templates of one state and choose one).
 *
 * Does not: allocate, log, keep state, or decide threading: the sgemm calls run on
 * whatever OpenBLAS thread count the caller set (one, for a learner beside the serving
 * path: DESIGN.md on thread pools).
 *
 * Buffers (dimension letters as in policy.h):
 *   params [P]      the arena: W1 [H,D] b1 [H] W2 [Q,H] b2 [Q] Wt [Q,E] bt [Q] v [1,H] c [1]
 *   x [B,D] -> h [B,H] -> q [B,Q];  emb [NT,E] -> u [NT,Q]
 *   elig [K] rows of u, off [B+1] -> z, s, pi, logpi [K];  V [B]
 *
 * Small matrix-vector products run in GCC vector extensions (four floats, so plain
 * x86-64 SSE2 suffices): at these sizes an sgemm call costs more than the arithmetic,
 * and a scalar dot product is bound by its add latency because C forbids the compiler
 * to reorder the sum. Batches of 4 rows and more go to OpenBLAS.
 */
#include "policy.h"

#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define ALIGN_FLOATS   16             /* tensors start on 64-byte boundaries */
#define BLAS_MIN_ROWS  4              /* measured: below this, per-row SIMD beats sgemm's set-up */
#define TANH_LINEAR    2.44140625e-4f /* 2^-12: tanh(x) = x in float below it */
#define TANH_SATURATED 10.0f          /* tanh(10) rounds to 1 in float */

typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));

/* --- parameter arena --- */

static const char *const tensor_names[POLICY_NTENSORS] = {
    "fc1.weight",      "fc1.bias",      "fc2.weight",   "fc2.bias",
    "template.weight", "template.bias", "value.weight", "value.bias",
};

size_t policy_layout(PolicyTensor *t, const PolicyDims *d) {
    const int shape[POLICY_NTENSORS][2] = {{d->H, d->D}, {d->H, 0}, {d->Q, d->H}, {d->Q, 0},
                                           {d->Q, d->E}, {d->Q, 0}, {1, d->H},    {1, 0}};
    size_t offset = 0;

    for (int i = 0; i < POLICY_NTENSORS; i++) {
        int ndim = shape[i][1] ? 2 : 1;
        size_t size = (size_t)shape[i][0] * (ndim == 2 ? (size_t)shape[i][1] : 1);
        if (t)
            t[i] = (PolicyTensor){tensor_names[i], offset, size, ndim, {shape[i][0], shape[i][1]}};
        offset += (size + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    }
    return offset;
}

size_t policy_param_count(const PolicyDims *d) {
    return policy_layout(NULL, d);
}

void policy_init(float *params, const PolicyDims *d, uint64_t seed) {
    PolicyTensor t[POLICY_NTENSORS];
    size_t n = policy_layout(t, d);
    Rng rng;

    rng_seed(&rng, seed);
    memset(params, 0, n * sizeof *params);
    for (int i = 0; i < POLICY_NTENSORS; i++) {
        if (t[i].ndim != 2) continue;
        double a = sqrt(6.0 / (t[i].shape[0] + t[i].shape[1]));
        float *w = params + t[i].offset;
        for (size_t j = 0; j < t[i].size; j++) w[j] = (float)((2.0 * rng_uniform(&rng) - 1.0) * a);
    }
}

/* Read-only pointers to the tensors of an arena. */
typedef struct {
    const float *w1, *b1, *w2, *b2, *wt, *bt, *v, *c;
} View;

static View view(const float *params, const PolicyDims *d) {
    PolicyTensor t[POLICY_NTENSORS];
    policy_layout(t, d);
    return (View){params + t[POLICY_FC1_W].offset,   params + t[POLICY_FC1_B].offset,
                  params + t[POLICY_FC2_W].offset,   params + t[POLICY_FC2_B].offset,
                  params + t[POLICY_TMPL_W].offset,  params + t[POLICY_TMPL_B].offset,
                  params + t[POLICY_VALUE_W].offset, params + t[POLICY_VALUE_B].offset};
}

/* --- small vector helpers --- */

static inline F4 load4(const float *p) {
    F4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float hsum(F4 v) {
    return (v[0] + v[1]) + (v[2] + v[3]);
}

/* a [n] . b [n], eight lanes wide so two add chains overlap. */
static float dot(const float *a, const float *b, int n) {
    F4 s0 = {0}, s1 = {0};
    int i = 0;

    for (; i + 8 <= n; i += 8) {
        s0 += load4(a + i) * load4(b + i);
        s1 += load4(a + i + 4) * load4(b + i + 4);
    }
    float s = hsum(s0 + s1);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y [n] += alpha * x [n] */
static void axpy(float *y, float alpha, const float *x, int n) {
    F4 a = {alpha, alpha, alpha, alpha};
    int i = 0;

    for (; i + 4 <= n; i += 4) {
        F4 r = load4(y + i) + a * load4(x + i);
        memcpy(y + i, &r, sizeof r);
    }
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* out [OC] = w [OC, C] . x [C] + bias [OC]: four rows at a time share each load of x,
 * and each row keeps two accumulators, eight independent chains in all. */
static void matvec(float *out, const float *w, const float *bias, const float *x, int C, int OC) {
    int o = 0, C8 = C & ~7;

    for (; o + 4 <= OC; o += 4) {
        const float *r0 = w + (size_t)o * C, *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
        F4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
        for (int i = 0; i < C8; i += 8) {
            F4 xa = load4(x + i), xb = load4(x + i + 4);
            a0 += load4(r0 + i) * xa, c0 += load4(r0 + i + 4) * xb;
            a1 += load4(r1 + i) * xa, c1 += load4(r1 + i + 4) * xb;
            a2 += load4(r2 + i) * xa, c2 += load4(r2 + i + 4) * xb;
            a3 += load4(r3 + i) * xa, c3 += load4(r3 + i + 4) * xb;
        }
        float s[4] = {hsum(a0 + c0), hsum(a1 + c1), hsum(a2 + c2), hsum(a3 + c3)};
        for (int i = C8; i < C; i++) {
            s[0] += r0[i] * x[i], s[1] += r1[i] * x[i], s[2] += r2[i] * x[i], s[3] += r3[i] * x[i];
        }
        for (int j = 0; j < 4; j++) out[o + j] = s[j] + (bias ? bias[o + j] : 0.0f);
    }
    for (; o < OC; o++) out[o] = dot(w + (size_t)o * C, x, C) + (bias ? bias[o] : 0.0f);
}

/* --- linear layer --- */

void policy_linear_forward_naive(float *out, const float *inp, const float *weight,
                                 const float *bias, int B, int C, int OC) {
    for (int b = 0; b < B; b++) {
        for (int o = 0; o < OC; o++) {
            float s = bias ? bias[o] : 0.0f;
            for (int i = 0; i < C; i++) s += inp[(size_t)b * C + i] * weight[(size_t)o * C + i];
            out[(size_t)b * OC + o] = s;
        }
    }
}

void policy_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int B, int C, int OC) {
    if (B < BLAS_MIN_ROWS) {
        for (int b = 0; b < B; b++)
            matvec(out + (size_t)b * OC, weight, bias, inp + (size_t)b * C, C, OC);
        return;
    }

    /* Seed every row with the bias and let sgemm add inp . W^T on top (beta = 1). */
    for (int b = 0; b < B && bias; b++)
        memcpy(out + (size_t)b * OC, bias, (size_t)OC * sizeof *out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, OC, C, 1.0f, inp, C, weight, C,
                bias ? 1.0f : 0.0f, out, OC);
}

void policy_linear_backward_naive(float *dinp, float *dweight, float *dbias, const float *dout,
                                  const float *inp, const float *weight, int B, int C, int OC) {
    for (int b = 0; b < B; b++) {
        for (int o = 0; o < OC; o++) {
            float g = dout[(size_t)b * OC + o];
            if (dbias) dbias[o] += g;
            for (int i = 0; i < C; i++) {
                if (dinp) dinp[(size_t)b * C + i] += g * weight[(size_t)o * C + i];
                if (dweight) dweight[(size_t)o * C + i] += g * inp[(size_t)b * C + i];
            }
        }
    }
}

void policy_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int B, int C, int OC) {
    if (dinp) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, OC, 1.0f, dout, OC, weight, C,
                    1.0f, dinp, C);
    }
    if (dweight) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, B, 1.0f, dout, OC, inp, C, 1.0f,
                    dweight, C);
    }
    for (int b = 0; b < B && dbias; b++) axpy(dbias, 1.0f, dout + (size_t)b * OC, OC);
}

/* --- tanh --- */

/* tanh|x| = 1 - 2 / (e^2|x| + 1), four lanes at a time: glibc's tanhf costs ~23 ns and
 * expf ~4 ns, and the tanh layer was a sixth of an update. The absolute error stays
 * ~1e-7 (test_policy checks 2e-7); tiny |x| returns x, |x| > 10 returns +-1, NaN stays
 * NaN so that act can report non-finite weights. */

/* e^y for y in [0, 2 TANH_SATURATED]: y = k ln2 + r with |r| <= ln2 / 2 (ln2 split in
 * two so k ln2 is exact), e^r from its Taylor series to r^7 (error < 1e-8), and 2^k
 * written into the exponent bits. */
static inline F4 exp4_small(F4 y) {
    const float round = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    F4 k = (y * 1.44269504f + round) - round;
    F4 r = (y - k * 0.693145751953125f) - k * 1.42860677e-6f;
    F4 p = 1.0f / 5040.0f + r * (1.0f / 40320.0f);

    p = 1.0f / 720.0f + r * p;
    p = 1.0f / 120.0f + r * p;
    p = 1.0f / 24.0f + r * p;
    p = 1.0f / 6.0f + r * p;
    p = 0.5f + r * p;
    p = 1.0f + r * p;
    p = 1.0f + r * p;
    I4 scale = (__builtin_convertvector(k, I4) + 127) << 23;
    return p * (F4)scale;
}

/* Lanes of a where mask is set, else lanes of b. */
static inline F4 blend(I4 mask, F4 a, F4 b) {
    return (F4)((mask & (I4)a) | (~mask & (I4)b));
}

static inline F4 tanh4(F4 x) {
    const I4 sign = {INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN};
    const F4 cap = {TANH_SATURATED, TANH_SATURATED, TANH_SATURATED, TANH_SATURATED};
    F4 a = (F4)((I4)x & ~sign);
    I4 nan = a != a, keep = nan | (a < TANH_LINEAR);

    /* exp only ever sees [0, 20], so its float-to-int conversion is defined. */
    F4 y = blend(a > cap, cap, blend(nan, (F4){0}, a));
    F4 t = 1.0f - 2.0f / (exp4_small(2.0f * y) + 1.0f);
    return blend(keep, x, (F4)((I4)t | ((I4)x & sign)));
}

void policy_tanh_forward(float *out, const float *inp, size_t n) {
    size_t i = 0;

    for (; i + 8 <= n; i += 8) { /* two independent chains hide the latency */
        F4 y0 = tanh4(load4(inp + i)), y1 = tanh4(load4(inp + i + 4));
        memcpy(out + i, &y0, sizeof y0);
        memcpy(out + i + 4, &y1, sizeof y1);
    }
    for (; i + 4 <= n; i += 4) {
        F4 y = tanh4(load4(inp + i));
        memcpy(out + i, &y, sizeof y);
    }
    if (i < n) { /* the tail through the same arithmetic, so no entry depends on its place */
        F4 x = {0};
        memcpy(&x, inp + i, (n - i) * sizeof *inp);
        x = tanh4(x);
        memcpy(out + i, &x, (n - i) * sizeof *out);
    }
}

void policy_tanh_backward(float *dinp, const float *dout, const float *out, size_t n) {
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

/* --- bilinear score --- */

void policy_score_forward(float *z, const float *q, const float *u, const int32_t *elig,
                          const int32_t *off, int B, int Q) {
    for (int b = 0; b < B; b++) {
        for (int32_t j = off[b]; j < off[b + 1]; j++) {
            const float *ur = u + (size_t)(elig ? elig[j] : j) * Q;
            z[j] = dot(q + (size_t)b * Q, ur, Q);
        }
    }
}

void policy_score_backward(float *dq, float *du, const float *dz, const float *q, const float *u,
                           const int32_t *elig, const int32_t *off, int B, int Q) {
    for (int b = 0; b < B; b++) {
        for (int32_t j = off[b]; j < off[b + 1]; j++) {
            size_t row = (size_t)(elig ? elig[j] : j) * Q;

            /* z = q . u: each side's gradient is dz times the other side. */
            axpy(dq + (size_t)b * Q, dz[j], u + row, Q);
            if (du) axpy(du + row, dz[j], q + (size_t)b * Q, Q);
        }
    }
}

/* --- tempered softmax with a floor --- */

/* One sample's k entries; see policy_probs_forward. Dividing by T before taking the
 * maximum follows torch's softmax(z / T), so both round alike. */
static void probs_one(float *pi, float *logpi, float *s, const float *z, int k, float T, float m) {
    float c = 1.0f - (float)k * m; /* the softmax's share of the mass */
    float top = -INFINITY, sum = 0.0f;

    for (int j = 0; j < k; j++) top = z[j] / T > top ? z[j] / T : top;
    for (int j = 0; j < k; j++) sum += s[j] = expf(z[j] / T - top);
    float lse = logf(sum);
    for (int j = 0; j < k; j++) s[j] /= sum;

    for (int j = 0; j < k; j++) {
        if (c <= 0.0f) {
            pi[j] = 1.0f / (float)k;
            logpi[j] = -logf((float)k);
        } else if (m > 0.0f) {
            pi[j] = m + c * s[j];
            logpi[j] = logf(pi[j]);
        } else {
            pi[j] = s[j];
            logpi[j] = z[j] / T - top - lse;
        }
    }
}

void policy_probs_forward(float *pi, float *logpi, float *s, const float *z, const int32_t *off,
                          int B, float T, float m) {
    for (int b = 0; b < B; b++) {
        int32_t o = off[b];
        probs_one(pi + o, logpi + o, s + o, z + o, off[b + 1] - o, T, m);
    }
}

/* Forward: pi_j = m + c s_j with c = 1 - k m, s = softmax(z / T), logpi_j = log pi_j.
 * ds_j/dz_i = s_j (delta_ij - s_i) / T, so with e_j = s_j dL/ds_j,
 *   dL/dz_i = (e_i - s_i sum_j e_j) / T,
 * and dL/ds_j = c dpi_j + c dlogpi_j / pi_j. The second term enters e as w_j dlogpi_j with
 * w_j = c s_j / pi_j in [0, 1] (exactly 1 when m = 0), which never divides by an
 * underflowed probability. */
static void probs_backward_one(float *dz, const float *dpi, const float *dlogpi, const float *pi,
                               const float *s, int k, float T, float m) {
    float c = 1.0f - (float)k * m, sum = 0.0f;

    if (c <= 0.0f) return; /* uniform: pi does not depend on z */
    for (int j = 0; j < k; j++) {
        float e = dpi ? c * s[j] * dpi[j] : 0.0f;
        if (dlogpi) e += (m > 0.0f ? c * s[j] / pi[j] : 1.0f) * dlogpi[j];
        dz[j] += e / T; /* e_j / T now; the shared term follows */
        sum += e;
    }
    for (int j = 0; j < k; j++) dz[j] -= s[j] * sum / T;
}

void policy_probs_backward(float *dz, const float *dpi, const float *dlogpi, const float *pi,
                           const float *s, const int32_t *off, int B, float T, float m) {
    for (int b = 0; b < B; b++) {
        int32_t o = off[b];
        probs_backward_one(dz + o, dpi ? dpi + o : NULL, dlogpi ? dlogpi + o : NULL, pi + o, s + o,
                           off[b + 1] - o, T, m);
    }
}

/* --- entropy --- */

void policy_entropy_forward(float *ent, const float *pi, const float *logpi, const int32_t *off,
                            int B) {
    for (int b = 0; b < B; b++) {
        float h = 0.0f;
        for (int32_t j = off[b]; j < off[b + 1]; j++) h -= pi[j] * logpi[j];
        ent[b] = h;
    }
}

/* H = -sum pi_j log pi_j, so dH/dpi_j = -(log pi_j + 1). */
void policy_entropy_backward(float *dpi, const float *dent, const float *logpi, const int32_t *off,
                             int B) {
    for (int b = 0; b < B; b++) {
        for (int32_t j = off[b]; j < off[b + 1]; j++) dpi[j] -= dent[b] * (logpi[j] + 1.0f);
    }
}

/* --- acting --- */

int policy_sample(const float *pi, int k, double uniform) {
    double total = 0.0, run = 0.0;
    int last = 0;

    for (int j = 0; j < k; j++) total += pi[j];

    /* Scaling by the float sum makes the draw follow pi / sum(pi) exactly, and the
     * fallback covers a threshold that rounding lifts above the last running sum. */
    double t = uniform * total;
    for (int j = 0; j < k; j++) {
        if (pi[j] <= 0.0f) continue;
        last = j;
        run += pi[j];
        if (t < run) return j;
    }
    return last;
}

static int argmax(const float *z, int k) {
    int best = 0;
    for (int j = 1; j < k; j++) best = z[j] > z[best] ? j : best;
    return best;
}

void policy_templates(float *u, const float *params, const PolicyDims *d, const float *emb, int k) {
    View p = view(params, d);
    policy_linear_forward(u, emb, p.wt, p.bt, k, d->E, d->Q);
}

size_t policy_act_work_floats(const PolicyDims *d, int kmax) {
    return (size_t)d->H + (size_t)d->Q + 4 * (size_t)kmax + (size_t)kmax * (size_t)d->Q;
}

static bool all_finite(const float *a, int n, float more) {
    float s = more;
    for (int i = 0; i < n; i++) s += a[i] * 0.0f; /* NaN or inf turns 0 into NaN */
    return isfinite(s);
}

int policy_act(PolicyChoice *out, float *probs, float *work, const float *params,
               const PolicyDims *d, const float *x, const float *u, int k,
               const PolicySampling *cfg, double uniform) {
    if (k < 1 || !(cfg->temperature > 0.0f) || !(cfg->min_prob >= 0.0f)) return POLICY_E_ARG;

    View p = view(params, d);
    float *h = work, *q = h + d->H, *z = q + d->Q, *s = z + k, *logpi = s + k;
    float *pi = probs ? probs : logpi + k;
    int32_t off[2] = {0, k};

    /* State tower and value head. */
    policy_linear_forward(h, x, p.w1, p.b1, 1, d->D, d->H);
    policy_tanh_forward(h, h, (size_t)d->H);
    policy_linear_forward(q, h, p.w2, p.b2, 1, d->H, d->Q);
    float value = dot(p.v, h, d->H) + p.c[0];

    /* Scores and the behaviour distribution. */
    policy_score_forward(z, q, u, NULL, off, 1, d->Q);
    policy_probs_forward(pi, logpi, s, z, off, 1, cfg->temperature, cfg->min_prob);
    if (!all_finite(z, k, value) || !all_finite(pi, k, 0.0f)) {
        int a = (int)(uniform * k);
        *out = (PolicyChoice){a < k ? a : k - 1, 1.0f / (float)k, -logf((float)k), 0.0f};
        return POLICY_E_NONFINITE;
    }

    int a = cfg->greedy ? argmax(z, k) : policy_sample(pi, k, uniform);
    *out = (PolicyChoice){a, pi[a], logpi[a], value};
    return 0;
}

int policy_act_emb(PolicyChoice *out, float *probs, float *work, const float *params,
                   const PolicyDims *d, const float *x, const float *emb, int k,
                   const PolicySampling *cfg, double uniform) {
    if (k < 1) return POLICY_E_ARG;

    /* policy_act uses the first H + Q + 4k floats; the towers' outputs go after them. */
    float *u = work + d->H + d->Q + 4 * (size_t)k;
    policy_templates(u, params, d, emb, k);
    return policy_act(out, probs, work, params, d, x, u, k, cfg, uniform);
}
