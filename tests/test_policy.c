/* test_policy.c - Criterion tests for kernels/policy.c, ppo.c and adam.c: gradients
 * against finite differences, one PPO update against PyTorch, SIMD and BLAS against the
 * naive loops, sampling, and a contextual bandit the policy must learn.
 *
 * The PyTorch tensors come from tests/reference/policy_ref.py (`make reference`), which
 * ran torch 1.13 on the same initial weights (a Python copy of kernels/rng.c reproduces
 * policy_init and ppo_shuffle). Run from the repository root.
 */
#include "../kernels/adam.h"
#include "../kernels/policy.h"
#include "../kernels/ppo.h"
#include "../kernels/rng.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_TORCH 1e-4 /* weights after one update, max absolute difference */
#define TOL_GRAD0 2e-6 /* first minibatch gradient, max absolute difference */
#define TOL_FD    5e-3 /* finite differences, max error over the largest gradient */
#define TOL_NAIVE 2e-5 /* SIMD and BLAS against the plain loops */

/* --- reference files (PDREF01, written by tests/reference/policy_ref.py) --- */

typedef struct {
    char name[64];
    int dtype; /* 0 f32, 1 i32, 2 u8 */
    size_t n, ndim, shape[4];
    void *data;
} Record;

typedef struct {
    Record rec[96];
    size_t n;
} Ref;

static uint32_t u32_at(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (run the tests from the repository root)", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len + 1);
    cr_assert(b && fread(b, 1, *len, f) == *len);
    fclose(f);
    return b;
}

static Ref load_ref(const char *path) {
    Ref r = {0};
    size_t len, pos = 12;
    unsigned char *blob = slurp(path, &len);

    cr_assert(len >= 12 && memcmp(blob, "PDREF01\n", 8) == 0, "%s: bad magic", path);
    r.n = u32_at(blob + 8);
    cr_assert_leq(r.n, sizeof r.rec / sizeof r.rec[0]);
    for (size_t i = 0; i < r.n; i++) {
        Record *c = &r.rec[i];
        size_t nl = (size_t)blob[pos] | (size_t)blob[pos + 1] << 8;
        cr_assert_lt(nl, sizeof c->name);
        memcpy(c->name, blob + pos + 2, nl);
        pos += 2 + nl;
        c->dtype = blob[pos], c->ndim = blob[pos + 1], c->n = 1;
        pos += 2;
        for (size_t k = 0; k < c->ndim; k++, pos += 4) c->n *= c->shape[k] = u32_at(blob + pos);

        /* Records follow each other unaligned: copy each one out. */
        size_t bytes = c->n * (c->dtype == 2 ? 1 : 4);
        cr_assert_leq(pos + bytes, len, "%s: truncated at %s", path, c->name);
        c->data = malloc(bytes ? bytes : 1);
        memcpy(c->data, blob + pos, bytes);
        pos += bytes;
    }
    free(blob);
    return r;
}

static void free_ref(Ref *r) {
    for (size_t i = 0; i < r->n; i++) free(r->rec[i].data);
}

static const Record *get(const Ref *r, const char *name) {
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->rec[i].name, name) == 0) return &r->rec[i];
    }
    cr_assert_fail("reference record %s missing", name);
    return NULL;
}

static const float *getf(const Ref *r, const char *name) {
    const Record *c = get(r, name);
    cr_assert_eq(c->dtype, 0, "%s is not float32", name);
    return c->data;
}

static const int32_t *geti(const Ref *r, const char *name) {
    const Record *c = get(r, name);
    cr_assert_eq(c->dtype, 1, "%s is not int32", name);
    return c->data;
}

/* An arena from the records prefix/<tensor name>, by the names of policy_layout. */
static void load_arena(float *arena, const Ref *r, const char *prefix, const PolicyDims *d) {
    PolicyTensor t[POLICY_NTENSORS];
    char key[96];

    memset(arena, 0, policy_layout(t, d) * sizeof *arena);
    for (int i = 0; i < POLICY_NTENSORS; i++) {
        snprintf(key, sizeof key, "%s/%s", prefix, t[i].name);
        const Record *c = get(r, key);
        cr_assert_eq(c->n, t[i].size, "%s: %zu floats, layout says %zu", key, c->n, t[i].size);
        memcpy(arena + t[i].offset, c->data, t[i].size * sizeof *arena);
    }
}

/* --- helpers --- */

static void fill(float *a, size_t n, Rng *r, float scale) {
    for (size_t i = 0; i < n; i++) a[i] = (float)((2.0 * rng_uniform(r) - 1.0) * scale);
}

static float *falloc(size_t n) {
    float *a = calloc(n ? n : 1, sizeof(float));
    cr_assert(a);
    return a;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* --- finite differences --- */

/* A scalar probe of a kernel: recomputes the forward from the current inputs and returns
 * sum_i w_i out_i, so that the analytic gradient is the backward of dout = w. */
typedef double (*Probe)(void *ctx);

/* Central differences of probe over v [n] against the analytic g [n]. Returns the
 * largest |g - numeric| divided by the largest |numeric| (so tiny entries do not
 * dominate), and prints it. */
static double fd_check(const char *what, float *v, const float *g, size_t n, Probe probe, void *ctx,
                       float h) {
    double worst = 0, scale = 1e-12;

    for (size_t i = 0; i < n; i++) {
        float keep = v[i];
        v[i] = keep + h;
        double up = probe(ctx);
        v[i] = keep - h;
        double down = probe(ctx);
        v[i] = keep;
        double num = (up - down) / ((double)(keep + h) - (double)(keep - h));
        worst = fmax(worst, fabs(g[i] - num));
        scale = fmax(scale, fabs(num));
    }
    printf("gradcheck %-28s n=%-5zu max rel error %.2e\n", what, n, worst / scale);
    return worst / scale;
}

static double dotw(const float *w, const float *out, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * out[i];
    return s;
}

/* --- gradient checks of the layer kernels --- */

typedef struct {
    float *inp, *weight, *bias, *out, *w;
    int B, C, OC;
    bool naive;
} LinearCase;

static double linear_probe(void *ctx) {
    LinearCase *c = ctx;
    if (c->naive) {
        policy_linear_forward_naive(c->out, c->inp, c->weight, c->bias, c->B, c->C, c->OC);
    } else {
        policy_linear_forward(c->out, c->inp, c->weight, c->bias, c->B, c->C, c->OC);
    }
    return dotw(c->w, c->out, (size_t)c->B * c->OC);
}

static void check_linear(int B, int C, int OC, bool naive) {
    Rng r;
    size_t ni = (size_t)B * C, nw = (size_t)OC * C, no = (size_t)B * OC;
    LinearCase c = {falloc(ni), falloc(nw), falloc(OC), falloc(no), falloc(no), B, C, OC, naive};
    float *dinp = falloc(ni), *dw = falloc(nw), *db = falloc(OC);
    char what[64];

    rng_seed(&r, (uint64_t)(B * 1000 + C * 10 + OC));
    fill(c.inp, ni, &r, 1), fill(c.weight, nw, &r, 0.5f), fill(c.bias, OC, &r, 0.5f);
    fill(c.w, no, &r, 1);
    if (naive) {
        policy_linear_backward_naive(dinp, dw, db, c.w, c.inp, c.weight, B, C, OC);
    } else {
        policy_linear_backward(dinp, dw, db, c.w, c.inp, c.weight, B, C, OC);
    }

    const char *kind = naive ? "naive" : "fast";
    snprintf(what, sizeof what, "linear %s B=%d dinp", kind, B);
    cr_expect_lt(fd_check(what, c.inp, dinp, ni, linear_probe, &c, 1e-2f), TOL_FD);
    snprintf(what, sizeof what, "linear %s B=%d dweight", kind, B);
    cr_expect_lt(fd_check(what, c.weight, dw, nw, linear_probe, &c, 1e-2f), TOL_FD);
    snprintf(what, sizeof what, "linear %s B=%d dbias", kind, B);
    cr_expect_lt(fd_check(what, c.bias, db, OC, linear_probe, &c, 1e-2f), TOL_FD);

    free(c.inp), free(c.weight), free(c.bias), free(c.out), free(c.w);
    free(dinp), free(dw), free(db);
}

Test(policy_grad, linear_layer) {
    check_linear(3, 11, 7, false);   /* SIMD rows */
    check_linear(12, 13, 10, false); /* sgemm */
    check_linear(5, 9, 6, true);
}

typedef struct {
    float *inp, *out, *w;
    size_t n;
} TanhCase;

static double tanh_probe(void *ctx) {
    TanhCase *c = ctx;
    policy_tanh_forward(c->out, c->inp, c->n);
    return dotw(c->w, c->out, c->n);
}

Test(policy_grad, tanh) {
    enum { N = 40 };
    TanhCase c = {falloc(N), falloc(N), falloc(N), N};
    float *din = falloc(N);
    Rng r;

    rng_seed(&r, 3);
    fill(c.inp, N, &r, 3), fill(c.w, N, &r, 1);
    c.inp[0] = 1e-5f, c.inp[1] = -12.0f; /* the linear and the saturated branches */
    tanh_probe(&c);
    policy_tanh_backward(din, c.w, c.out, N);
    cr_expect_lt(fd_check("tanh dinp", c.inp, din, N, tanh_probe, &c, 1e-3f), TOL_FD);

    tanh_probe(&c); /* the differences left the last entry perturbed */
    for (int i = 0; i < N; i++) {
        cr_expect_leq(fabs(c.out[i] - tanh(c.inp[i])), 2e-7, "tanh(%g) = %.9g, libm %.9g", c.inp[i],
                      c.out[i], tanh(c.inp[i]));
    }
    free(c.inp), free(c.out), free(c.w), free(din);
}

/* Four samples of 3, 5, 1 and 5 eligible templates from a table of 4 rows; rows repeat
 * across samples, so the table's gradient must accumulate. */
static const int32_t case_off[] = {0, 3, 8, 9, 14};
static const int32_t case_elig[] = {0, 2, 3, 1, 0, 3, 2, 1, 2, 3, 2, 1, 0, 1};
enum { CASE_B = 4, CASE_K = 14, CASE_NT = 4 };

typedef struct {
    float *q, *u, *z, *w;
    int Q;
} ScoreCase;

static double score_probe(void *ctx) {
    ScoreCase *c = ctx;
    policy_score_forward(c->z, c->q, c->u, case_elig, case_off, CASE_B, c->Q);
    return dotw(c->w, c->z, CASE_K);
}

Test(policy_grad, bilinear_score) {
    int Q = 13;
    ScoreCase c = {falloc(CASE_B * Q), falloc(CASE_NT * Q), falloc(CASE_K), falloc(CASE_K), Q};
    float *dq = falloc(CASE_B * Q), *du = falloc(CASE_NT * Q);
    Rng r;

    rng_seed(&r, 4);
    fill(c.q, CASE_B * Q, &r, 1), fill(c.u, CASE_NT * Q, &r, 1), fill(c.w, CASE_K, &r, 1);
    policy_score_backward(dq, du, c.w, c.q, c.u, case_elig, case_off, CASE_B, Q);
    cr_expect_lt(fd_check("score dq", c.q, dq, CASE_B * Q, score_probe, &c, 1e-2f), TOL_FD);
    cr_expect_lt(fd_check("score du", c.u, du, CASE_NT * Q, score_probe, &c, 1e-2f), TOL_FD);
    free(c.q), free(c.u), free(c.z), free(c.w), free(dq), free(du);
}

typedef struct {
    float *z, *pi, *logpi, *s, *wp, *wl;
    float T, m;
} ProbsCase;

static double probs_probe(void *ctx) {
    ProbsCase *c = ctx;
    policy_probs_forward(c->pi, c->logpi, c->s, c->z, case_off, CASE_B, c->T, c->m);
    return dotw(c->wp, c->pi, CASE_K) + dotw(c->wl, c->logpi, CASE_K);
}

static void check_probs(float m, float T) {
    ProbsCase c = {falloc(CASE_K),
                   falloc(CASE_K),
                   falloc(CASE_K),
                   falloc(CASE_K),
                   falloc(CASE_K),
                   falloc(CASE_K),
                   T,
                   m};
    float *dz = falloc(CASE_K);
    char what[64];
    Rng r;

    rng_seed(&r, 5);
    fill(c.z, CASE_K, &r, 2), fill(c.wp, CASE_K, &r, 1), fill(c.wl, CASE_K, &r, 1);
    probs_probe(&c);
    policy_probs_backward(dz, c.wp, c.wl, c.pi, c.s, case_off, CASE_B, T, m);
    snprintf(what, sizeof what, "probs m=%.2f T=%.1f dz", m, T);
    cr_expect_lt(fd_check(what, c.z, dz, CASE_K, probs_probe, &c, 1e-3f), TOL_FD);

    /* Each sample's probabilities sum to 1 and respect the floor. */
    for (int b = 0; b < CASE_B; b++) {
        double sum = 0;
        for (int j = case_off[b]; j < case_off[b + 1]; j++) {
            sum += c.pi[j];
            cr_expect_geq(c.pi[j], fminf(m, 1.0f / (float)(case_off[b + 1] - case_off[b])) - 1e-7f);
        }
        cr_expect_leq(fabs(sum - 1), 1e-6, "sample %d sums to %.9f", b, sum);
    }
    free(c.z), free(c.pi), free(c.logpi), free(c.s), free(c.wp), free(c.wl), free(dz);
}

Test(policy_grad, tempered_softmax_with_floor) {
    check_probs(0.05f, 0.7f);
    check_probs(0.0f, 0.7f);  /* log-softmax path */
    check_probs(0.25f, 1.3f); /* k m >= 1 for the sets of 5: uniform, zero gradient */
}

Test(policy_grad, probs_stay_finite_where_softmax_underflows) {
    float z[3] = {0, -200, 200}, pi[3], logpi[3], s[3], dz[3] = {0}, dl[3] = {1, 1, 1};
    int32_t off[2] = {0, 3};

    policy_probs_forward(pi, logpi, s, z, off, 1, 0.5f, 0.0f);
    policy_probs_backward(dz, NULL, dl, pi, s, off, 1, 0.5f, 0.0f);
    for (int j = 0; j < 3; j++) {
        cr_expect(isfinite(logpi[j]) && isfinite(dz[j]), "entry %d: logpi %g dz %g", j, logpi[j],
                  dz[j]);
    }
    cr_expect_float_eq(logpi[1], -800.0f, 1e-3f);
}

typedef struct {
    float *pi, *logpi, *ent, *w;
} EntropyCase;

/* The entropy as a function of pi alone: logpi follows pi. */
static double entropy_probe(void *ctx) {
    EntropyCase *c = ctx;
    for (int j = 0; j < CASE_K; j++) c->logpi[j] = logf(c->pi[j]);
    policy_entropy_forward(c->ent, c->pi, c->logpi, case_off, CASE_B);
    return dotw(c->w, c->ent, CASE_B);
}

Test(policy_grad, entropy) {
    EntropyCase c = {falloc(CASE_K), falloc(CASE_K), falloc(CASE_B), falloc(CASE_B)};
    float *dpi = falloc(CASE_K);
    Rng r;

    rng_seed(&r, 6);
    for (int j = 0; j < CASE_K; j++) c.pi[j] = 0.05f + 0.4f * (float)rng_uniform(&r);
    fill(c.w, CASE_B, &r, 1);
    entropy_probe(&c);
    policy_entropy_backward(dpi, c.w, c.logpi, case_off, CASE_B);
    cr_expect_lt(fd_check("entropy dpi", c.pi, dpi, CASE_K, entropy_probe, &c, 1e-3f), TOL_FD);
    free(c.pi), free(c.logpi), free(c.ent), free(c.w), free(dpi);
}

typedef struct {
    float *logp, *logp_old, *adv, *ratio, *loss, *w;
    int B;
    float eps;
} ClipCase;

static double clip_probe(void *ctx) {
    ClipCase *c = ctx;
    ppo_clip_forward(c->loss, c->ratio, c->logp, c->logp_old, c->adv, c->B, c->eps);
    return dotw(c->w, c->loss, c->B);
}

Test(policy_grad, clipped_surrogate_and_value_loss) {
    enum { B = 8 };
    /* log ratios well inside and well outside [log 0.8, log 1.2], for both signs of A. */
    float lr[B] = {0.05f, -0.05f, 0.5f, -0.5f, 0.05f, -0.05f, 0.5f, -0.5f};
    float adv[B] = {1, 1, 1, 1, -1, -1, -1, -1}, logp[B], old[B] = {0};
    float ratio[B], loss[B], w[B], dlogp[B] = {0};
    ClipCase c = {logp, old, adv, ratio, loss, w, B, 0.2f};
    Rng r;

    rng_seed(&r, 7);
    fill(w, B, &r, 1);
    for (int b = 0; b < B; b++) logp[b] = lr[b] - 1.0f, old[b] = -1.0f, adv[b] *= 0.7f;
    clip_probe(&c);
    ppo_clip_backward(dlogp, w, ratio, adv, B, 0.2f);
    cr_expect_lt(fd_check("clip dlogp", logp, dlogp, B, clip_probe, &c, 1e-3f), TOL_FD);

    /* Clipped samples (ratio past the range in A's favour) get no gradient. */
    cr_expect_eq(dlogp[2], 0.0f);
    cr_expect_eq(dlogp[7], 0.0f);
    cr_expect_neq(dlogp[3], 0.0f);

    /* The value loss: (v - R)^2 has gradient 2 (v - R). */
    float v[3] = {0.5f, -1.0f, 2.0f}, ret[3] = {1.0f, -1.0f, 0.0f}, lv[3], dl[3] = {1, 1, 1};
    float dv[3] = {0};
    ppo_value_forward(lv, v, ret, 3);
    ppo_value_backward(dv, dl, v, ret, 3);
    cr_expect_float_eq(lv[2], 4.0f, 1e-6f);
    cr_expect_float_eq(dv[0], -1.0f, 1e-6f);
    cr_expect_float_eq(dv[2], 4.0f, 1e-6f);
}

/* --- the whole minibatch objective --- */

typedef struct {
    PolicyDims d;
    PpoBatch b;
    PpoConfig cfg;
    float *params, *grad, *adv, *ret;
    int32_t *idx;
    void *work;
    size_t work_size;
} Composite;

static double composite_probe(void *ctx) {
    Composite *c = ctx;
    PpoLosses l;
    cr_assert_eq(ppo_minibatch_grad(&l, c->grad, c->work, c->work_size, c->params, &c->b, c->adv,
                                    c->ret, c->idx, c->b.N, &c->d, &c->cfg),
                 0);
    return l.loss;
}

/* A small batch whose logp_old sit at log ratios of +-0.05 and +-0.5 from the current
 * policy, away from the clip range's kinks, so central differences are meaningful. */
static void make_composite(Composite *c, float m, uint64_t seed) {
    enum { N = 12, NT = 5, KMAX = 4 };
    static float x[N * 11], emb[NT * 6], logp_old[N], v_old[N], reward[N], adv[N], ret[N];
    static int32_t off[N + 1], elig[N * KMAX], action[N], idx[N];
    const float shift[4] = {0.05f, -0.05f, 0.5f, -0.5f};
    Rng r;

    rng_seed(&r, seed);
    c->d = (PolicyDims){11, 6, 9, 5};
    c->cfg = ppo_defaults();
    c->cfg.min_prob = m, c->cfg.temperature = 0.8f, c->cfg.entropy_coef = 0.05f;
    size_t P = policy_param_count(&c->d);
    c->params = falloc(P), c->grad = falloc(P);
    fill(c->params, P, &r, 0.6f); /* not policy_init: biases too, so their gradients count */
    fill(x, sizeof x / sizeof x[0], &r, 1), fill(emb, sizeof emb / sizeof emb[0], &r, 1);

    off[0] = 0;
    for (int n = 0; n < N; n++) {
        int k = 1 + (int)rng_below(&r, KMAX);
        for (int j = 0; j < k; j++) elig[off[n] + j] = (int32_t)((n + 2 * j) % NT);
        off[n + 1] = off[n] + k;
        action[n] = (int32_t)rng_below(&r, (uint32_t)k);
        idx[n] = n;
        adv[n] = (float)(2.0 * rng_uniform(&r) - 1.0), ret[n] = (float)rng_uniform(&r);
        v_old[n] = 0, reward[n] = 0;
    }
    c->b = (PpoBatch){x, emb, elig, off, action, logp_old, v_old, reward, NULL, NULL, N, NT};
    c->adv = adv, c->ret = ret, c->idx = idx;
    c->work_size = ppo_minibatch_work_size(&c->d, N, KMAX, NT);
    c->work = malloc(c->work_size);

    /* The current log-probabilities, then the stale ones at fixed log ratios. */
    float set[KMAX * 6], probs[KMAX], *w = falloc(policy_act_work_floats(&c->d, KMAX));
    PolicySampling s = {c->cfg.temperature, m, false};
    for (int n = 0; n < N; n++) {
        PolicyChoice ch;
        int k = off[n + 1] - off[n];
        for (int j = 0; j < k; j++)
            memcpy(set + j * 6, emb + elig[off[n] + j] * 6, 6 * sizeof(float));
        cr_assert_eq(policy_act_emb(&ch, probs, w, c->params, &c->d, x + n * 11, set, k, &s, 0.5),
                     0);
        logp_old[n] = logf(probs[action[n]]) - shift[n % 4];
    }
    free(w);
}

static void check_composite(float m) {
    Composite c;
    char what[64];

    make_composite(&c, m, 8);
    composite_probe(&c);
    snprintf(what, sizeof what, "ppo objective m=%.2f dparams", m);
    float *g = falloc(policy_param_count(&c.d));
    memcpy(g, c.grad, policy_param_count(&c.d) * sizeof *g);
    cr_expect_lt(fd_check(what, c.params, g, policy_param_count(&c.d), composite_probe, &c, 3e-3f),
                 TOL_FD);

    /* The template bias shifts every score alike: the loss does not move with it. */
    PolicyTensor t[POLICY_NTENSORS];
    policy_layout(t, &c.d);
    double before = composite_probe(&c);
    for (size_t i = 0; i < t[POLICY_TMPL_B].size; i++)
        c.params[t[POLICY_TMPL_B].offset + i] += 0.3f;
    double after = composite_probe(&c);
    cr_expect_leq(fabs(after - before), 1e-5, "moving bt changed the loss by %.2e", after - before);
    free(g), free(c.params), free(c.grad), free(c.work);
}

Test(policy_grad, whole_ppo_objective) {
    check_composite(0.05f);
    check_composite(0.0f);
}

/* --- layout and init --- */

Test(policy, layout_is_aligned_and_named_as_torch) {
    PolicyDims d = {80, 64, 64, 32};
    PolicyTensor t[POLICY_NTENSORS];
    const char *names[] = {"fc1.weight",      "fc1.bias",      "fc2.weight",   "fc2.bias",
                           "template.weight", "template.bias", "value.weight", "value.bias"};
    size_t P = policy_layout(t, &d), end = 0;

    for (int i = 0; i < POLICY_NTENSORS; i++) {
        cr_expect_str_eq(t[i].name, names[i]);
        cr_expect_eq(t[i].offset % 16, 0, "%s at %zu", t[i].name, t[i].offset);
        cr_expect_geq(t[i].offset, end, "%s overlaps its predecessor", t[i].name);
        end = t[i].offset + t[i].size;
    }
    cr_expect_eq(t[POLICY_FC1_W].size, 64 * 80);
    cr_expect_eq(t[POLICY_TMPL_W].shape[0], 32);
    cr_expect_eq(t[POLICY_TMPL_W].shape[1], 64);
    cr_expect_eq(t[POLICY_VALUE_B].ndim, 1);
    cr_expect_leq(end, P);
    cr_expect_eq(P, policy_param_count(&d));
    printf("layout D=80 E=64 H=64 Q=32: %zu floats (%zu bytes)\n", P, P * sizeof(float));
}

Test(policy, init_is_seeded_glorot) {
    PolicyDims d = {80, 64, 64, 32};
    size_t P = policy_param_count(&d);
    float *a = falloc(P), *b = falloc(P), *c = falloc(P);
    PolicyTensor t[POLICY_NTENSORS];

    policy_layout(t, &d);
    policy_init(a, &d, 1), policy_init(b, &d, 1), policy_init(c, &d, 2);
    cr_expect_eq(memcmp(a, b, P * sizeof *a), 0, "equal seeds, different arenas");
    cr_expect_gt(max_abs_diff(a, c, P), 0.1);
    float bound = sqrtf(6.0f / (64 + 80));
    cr_expect_leq(max_abs(a + t[POLICY_FC1_W].offset, t[POLICY_FC1_W].size), bound);
    cr_expect_gt(max_abs(a + t[POLICY_FC1_W].offset, t[POLICY_FC1_W].size), 0.95 * bound);
    cr_expect_eq(max_abs(a + t[POLICY_FC1_B].offset, t[POLICY_FC1_B].size), 0);
    free(a), free(b), free(c);
}

/* --- SIMD and BLAS against the naive loops --- */

static void compare_linear(int B, int C, int OC) {
    Rng r;
    size_t ni = (size_t)B * C, nw = (size_t)OC * C, no = (size_t)B * OC;
    float *inp = falloc(ni), *w = falloc(nw), *bias = falloc(OC), *dout = falloc(no);
    float *o1 = falloc(no), *o2 = falloc(no), *di1 = falloc(ni), *di2 = falloc(ni);
    float *dw1 = falloc(nw), *dw2 = falloc(nw), *db1 = falloc(OC), *db2 = falloc(OC);

    rng_seed(&r, (uint64_t)B);
    fill(inp, ni, &r, 1), fill(w, nw, &r, 1), fill(bias, OC, &r, 1), fill(dout, no, &r, 1);
    policy_linear_forward(o1, inp, w, bias, B, C, OC);
    policy_linear_forward_naive(o2, inp, w, bias, B, C, OC);
    policy_linear_backward(di1, dw1, db1, dout, inp, w, B, C, OC);
    policy_linear_backward_naive(di2, dw2, db2, dout, inp, w, B, C, OC);

    /* Sums of up to max(B, C, OC) unit terms: relative to that scale. */
    double s = fmax(fmax(B, C), OC);
    cr_expect_leq(max_abs_diff(o1, o2, no) / s, TOL_NAIVE, "B=%d forward", B);
    cr_expect_leq(max_abs_diff(di1, di2, ni) / s, TOL_NAIVE, "B=%d dinp", B);
    cr_expect_leq(max_abs_diff(dw1, dw2, nw) / s, TOL_NAIVE, "B=%d dweight", B);
    cr_expect_leq(max_abs_diff(db1, db2, OC) / s, TOL_NAIVE, "B=%d dbias", B);
    printf("naive vs fast linear B=%-3d C=%d OC=%d: max abs diff %.2e\n", B, C, OC,
           max_abs_diff(o1, o2, no));
    free(inp), free(w), free(bias), free(dout), free(o1), free(o2), free(di1), free(di2);
    free(dw1), free(dw2), free(db1), free(db2);
}

Test(policy, fast_linear_matches_naive) {
    compare_linear(1, 80, 64);
    compare_linear(3, 67, 33); /* every tail of the SIMD loop */
    compare_linear(7, 67, 33);
    compare_linear(8, 64, 32);
    compare_linear(64, 80, 64);
    compare_linear(1, 3, 2);
}

/* act against the same maths through the naive kernels. */
Test(policy, act_matches_naive_forward) {
    PolicyDims d = {83, 61, 64, 30};
    enum { K = 7 };
    size_t P = policy_param_count(&d);
    PolicyTensor t[POLICY_NTENSORS];
    float *p = falloc(P), x[83], emb[K * 61], u[K * 30], probs[K];
    float h[64], q[30], z[K], pi[K], logpi[K], s[K], v;
    float *work = falloc(policy_act_work_floats(&d, K));
    int32_t off[2] = {0, K};
    PolicySampling cfg = {0.7f, 0.01f, false};
    PolicyChoice ch;
    Rng r;

    policy_layout(t, &d);
    policy_init(p, &d, 9);
    rng_seed(&r, 9);
    fill(x, 83, &r, 1), fill(emb, K * 61, &r, 0.3f);
    fill(p + t[POLICY_FC1_B].offset, 64, &r, 0.2f), fill(p + t[POLICY_TMPL_B].offset, 30, &r, 0.2f);
    cr_assert_eq(policy_act_emb(&ch, probs, work, p, &d, x, emb, K, &cfg, 0.3), 0);

    policy_linear_forward_naive(h, x, p + t[POLICY_FC1_W].offset, p + t[POLICY_FC1_B].offset, 1, 83,
                                64);
    for (int i = 0; i < 64; i++) h[i] = tanhf(h[i]);
    policy_linear_forward_naive(q, h, p + t[POLICY_FC2_W].offset, p + t[POLICY_FC2_B].offset, 1, 64,
                                30);
    policy_linear_forward_naive(&v, h, p + t[POLICY_VALUE_W].offset, p + t[POLICY_VALUE_B].offset,
                                1, 64, 1);
    policy_linear_forward_naive(u, emb, p + t[POLICY_TMPL_W].offset, p + t[POLICY_TMPL_B].offset, K,
                                61, 30);
    policy_score_forward(z, q, u, NULL, off, 1, 30);
    policy_probs_forward(pi, logpi, s, z, off, 1, 0.7f, 0.01f);

    cr_expect_leq(fabsf(ch.value - v), 1e-5f, "V %g, naive %g", ch.value, v);
    cr_expect_leq(max_abs_diff(probs, pi, K), 1e-6, "max |dpi| %.2e", max_abs_diff(probs, pi, K));
    cr_expect_float_eq(ch.p, probs[ch.index], 0);
    cr_expect_float_eq(ch.logp, logf(probs[ch.index]), 1e-6f);

    /* The cached-tower path gives the very same choice. */
    PolicyChoice c2;
    float u2[K * 30];
    policy_templates(u2, p, &d, emb, K);
    cr_assert_eq(policy_act(&c2, NULL, work, p, &d, x, u2, K, &cfg, 0.3), 0);
    cr_expect(c2.index == ch.index && c2.p == ch.p && c2.value == ch.value);
    free(p), free(work);
}

/* --- sampling --- */

typedef struct {
    PolicyDims d;
    float *params, *x, *emb, *work;
} Actor;

static Actor make_actor(int K, uint64_t seed, float weight_scale) {
    Actor a = {{20, 12, 16, 8}, NULL, NULL, NULL, NULL};
    size_t P = policy_param_count(&a.d);
    Rng r;

    a.params = falloc(P), a.x = falloc(20), a.emb = falloc((size_t)K * 12);
    a.work = falloc(policy_act_work_floats(&a.d, K));
    policy_init(a.params, &a.d, seed);
    for (size_t i = 0; i < P; i++) a.params[i] *= weight_scale;
    rng_seed(&r, seed);
    fill(a.x, 20, &r, 1), fill(a.emb, (size_t)K * 12, &r, 1);
    return a;
}

static void free_actor(Actor *a) {
    free(a->params), free(a->x), free(a->emb), free(a->work);
}

Test(policy_sampling, empirical_distribution_matches_pi) {
    enum { K = 8, DRAWS = 80000 };
    Actor a = make_actor(K, 11, 0.8f);
    PolicySampling cfg = {0.7f, 0.01f, false};
    float probs[K];
    int counts[K] = {0};
    PolicyChoice ch;
    Rng r;

    rng_seed(&r, 12);
    for (int i = 0; i < DRAWS; i++) {
        cr_assert_eq(policy_act_emb(&ch, probs, a.work, a.params, &a.d, a.x, a.emb, K, &cfg,
                                    rng_uniform(&r)),
                     0);
        counts[ch.index]++;
        cr_assert_float_eq(ch.p, probs[ch.index], 0);
    }

    /* Chi-square with 7 degrees of freedom; 24.3 is the 0.999 quantile. */
    double chi = 0, pmin = 1, pmax = 0;
    for (int j = 0; j < K; j++) {
        double e = DRAWS * (double)probs[j];
        chi += (counts[j] - e) * (counts[j] - e) / e;
        pmin = fmin(pmin, probs[j]), pmax = fmax(pmax, probs[j]);
    }
    printf("sampling: chi-square %.2f (7 dof), pi from %.4f to %.4f\n", chi, pmin, pmax);
    cr_expect_lt(chi, 24.3, "chi-square %.1f: act does not sample pi", chi);
    cr_expect_gt(pmax / pmin, 3, "a flat pi would not test much");
    free_actor(&a);
}

Test(policy_sampling, floor_holds_even_for_extreme_scores) {
    enum { K = 8 };
    Actor a = make_actor(K, 13, 40.0f); /* scores in the hundreds */
    float probs[K];
    PolicyChoice ch;

    for (int t = 0; t < 3; t++) {
        float m = (float[]){0.001f, 0.03f, 0.1f}[t];
        PolicySampling cfg = {0.7f, m, false};
        cr_assert_eq(policy_act_emb(&ch, probs, a.work, a.params, &a.d, a.x, a.emb, K, &cfg, 0.5),
                     0);
        double sum = 0;
        for (int j = 0; j < K; j++) {
            cr_expect_geq(probs[j], m * (1 - 1e-6f), "m=%g: pi[%d] = %g", m, j, probs[j]);
            sum += probs[j];
        }
        cr_expect_leq(fabs(sum - 1), 1e-6);
        cr_expect(isfinite(ch.logp));
    }
    free_actor(&a);
}

Test(policy_sampling, floor_at_or_above_one_over_k_is_uniform) {
    enum { K = 5 };
    Actor a = make_actor(K, 14, 5.0f);
    float probs[K];
    PolicyChoice ch;

    for (int t = 0; t < 2; t++) {
        PolicySampling cfg = {0.7f, t ? 0.2f : 0.5f, false};
        cr_assert_eq(policy_act_emb(&ch, probs, a.work, a.params, &a.d, a.x, a.emb, K, &cfg, 0.99),
                     0);
        for (int j = 0; j < K; j++) cr_expect_float_eq(probs[j], 0.2f, 1e-7f);
        cr_expect_eq(ch.index, 4);
        cr_expect_float_eq(ch.logp, logf(0.2f), 1e-6f);
    }
    free_actor(&a);
}

Test(policy_sampling, small_temperature_is_near_greedy_and_greedy_logs_pi) {
    enum { K = 8 };
    Actor a = make_actor(K, 15, 1.0f);
    PolicySampling greedy = {0.7f, 0.01f, true}, cold = {1e-3f, 0.0f, false};
    float probs[K], cold_probs[K];
    PolicyChoice g, c;
    Rng r;

    cr_assert_eq(policy_act_emb(&g, probs, a.work, a.params, &a.d, a.x, a.emb, K, &greedy, 0.0), 0);
    cr_expect_float_eq(g.p, probs[g.index], 0, "greedy logs the sampling pi");
    for (int j = 0; j < K; j++) cr_expect_leq(probs[j], probs[g.index]);

    rng_seed(&r, 16);
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(policy_act_emb(&c, cold_probs, a.work, a.params, &a.d, a.x, a.emb, K, &cold,
                                    rng_uniform(&r)),
                     0);
        cr_assert_eq(c.index, g.index, "T = 0.001 chose %d, argmax is %d", c.index, g.index);
    }
    cr_expect_gt(cold_probs[g.index], 0.999f);
    free_actor(&a);
}

Test(policy_sampling, inverse_cdf_edges) {
    float pi[4] = {0.0f, 0.5f, 0.0f, 0.5f};

    cr_expect_eq(policy_sample(pi, 4, 0.0), 1);
    cr_expect_eq(policy_sample(pi, 4, 0.4999), 1);
    cr_expect_eq(policy_sample(pi, 4, 0.5), 3);
    cr_expect_eq(policy_sample(pi, 4, 0.9999999999), 3);
    float skew[3] = {0.3333333f, 0.3333333f, 0.3333333f}; /* sums below 1 in float */
    cr_expect_eq(policy_sample(skew, 3, 0.99999999), 2);
}

Test(policy_sampling, bad_arguments_and_non_finite_inputs) {
    enum { K = 4 };
    Actor a = make_actor(K, 17, 1.0f);
    PolicySampling cfg = {0.7f, 0.0f, false}, cold = {0.0f, 0.0f, false};
    PolicyChoice ch;

    cr_expect_eq(policy_act_emb(&ch, NULL, a.work, a.params, &a.d, a.x, a.emb, 0, &cfg, 0.5),
                 POLICY_E_ARG);
    cr_expect_eq(policy_act_emb(&ch, NULL, a.work, a.params, &a.d, a.x, a.emb, K, &cold, 0.5),
                 POLICY_E_ARG);
    a.x[3] = NAN;
    cr_expect_eq(policy_act_emb(&ch, NULL, a.work, a.params, &a.d, a.x, a.emb, K, &cfg, 0.6),
                 POLICY_E_NONFINITE);
    cr_expect(ch.index == 2 && ch.p == 0.25f, "fallback %d %g", ch.index, ch.p);
    free_actor(&a);
}

/* --- advantages and Adam --- */

Test(ppo, one_step_and_gae_advantages) {
    float r[5] = {1, 0, 2, 0.5f, -1}, v[5] = {0.5f, 0.2f, 1, 0, 0.3f}, adv[5], ret[5];
    uint64_t ep[5] = {7, 7, 7, 9, 9};
    uint8_t done[5] = {0, 1, 0, 0, 0};

    ppo_advantages(adv, ret, r, v, NULL, NULL, 5, 0.9f, 0.8f);
    for (int n = 0; n < 5; n++) {
        cr_expect_float_eq(adv[n], r[n] - v[n], 1e-7f);
        cr_expect_float_eq(ret[n], r[n], 1e-6f);
    }

    /* Episode 7 is cut by done after turn 1: turns {0, 1}, {2}; episode 9 is {3, 4}. */
    ppo_advantages(adv, ret, r, v, ep, done, 5, 0.9f, 0.8f);
    float d1 = 0 - 0.2f, d0 = 1 + 0.9f * 0.2f - 0.5f;
    float d4 = -1 - 0.3f, d3 = 0.5f + 0.9f * 0.3f - 0;
    cr_expect_float_eq(adv[1], d1, 1e-6f);
    cr_expect_float_eq(adv[0], d0 + 0.72f * d1, 1e-6f);
    cr_expect_float_eq(adv[2], 2 - 1.0f, 1e-6f);
    cr_expect_float_eq(adv[4], d4, 1e-6f);
    cr_expect_float_eq(adv[3], d3 + 0.72f * d4, 1e-6f);
    for (int n = 0; n < 5; n++) cr_expect_float_eq(ret[n], adv[n] + v[n], 1e-6f);

    float mean, std;
    ppo_normalize(adv, 5, 1e-8f, &mean, &std);
    double m2 = 0, s2 = 0;
    for (int n = 0; n < 5; n++) m2 += adv[n] / 5.0, s2 += adv[n] * adv[n] / 5.0;
    cr_expect_leq(fabs(m2), 1e-6);
    cr_expect_leq(fabs(s2 - 1), 1e-5);
    cr_expect_gt(std, 0);
}

Test(adam, schedule_clipping_and_one_step) {
    AdamConfig c = adam_defaults();
    c.lr = 1e-2, c.lr_min = 1e-3, c.warmup = 10, c.decay_steps = 100, c.decay = ADAM_COSINE;

    cr_expect_float_eq(adam_lr(&c, 1), 1e-3, 1e-12);
    cr_expect_float_eq(adam_lr(&c, 10), 1e-2, 1e-12);
    cr_expect_float_eq(adam_lr(&c, 60), 5.5e-3, 1e-12);
    cr_expect_float_eq(adam_lr(&c, 110), 1e-3, 1e-12);
    cr_expect_float_eq(adam_lr(&c, 500), 1e-3, 1e-12);
    c.decay = ADAM_LINEAR;
    cr_expect_float_eq(adam_lr(&c, 35), 1e-2 - 9e-3 * 0.25, 1e-12);
    c.decay = ADAM_CONSTANT;
    cr_expect_float_eq(adam_lr(&c, 500), 1e-2, 1e-12);

    float g[2] = {3, 4};
    cr_expect_float_eq(adam_grad_norm(g, 2), 5.0, 1e-12);
    cr_expect_float_eq(adam_clip_scale(5.0, 1.0f), 1.0f / (5.0f + 1e-6f), 1e-9f);
    cr_expect_float_eq(adam_clip_scale(0.5, 1.0f), 1.0f, 0);
    cr_expect_float_eq(adam_clip_scale(50.0, 0.0f), 1.0f, 0);

    /* Step 1 moves every parameter by lr against the sign of its gradient. */
    AdamConfig d = adam_defaults();
    float p[3] = {1, 1, 1}, m[3] = {0}, v[3] = {0}, gr[3] = {0.5f, -2, 0};
    adam_step(p, m, v, gr, 3, 1e-3, 1.0f, &d, 1);
    cr_expect_float_eq(p[0], 1 - 1e-3f, 1e-7f);
    cr_expect_float_eq(p[1], 1 + 1e-3f, 1e-7f);
    cr_expect_float_eq(p[2], 1.0f, 0);
}

/* --- one PPO update against PyTorch --- */

typedef struct {
    Ref ref;
    PolicyDims d;
    PpoBatch b;
    PpoConfig cfg;
    AdamConfig acfg;
    uint64_t *episode;
    int shuffle_seed, step0, init_seed;
} Case;

static Case load_case(const char *path) {
    Case c = {.ref = load_ref(path)};
    const int32_t *dims = geti(&c.ref, "dims"), *ci = geti(&c.ref, "cfg_int");
    const float *cf = getf(&c.ref, "cfg_float");

    c.d = (PolicyDims){dims[0], dims[1], dims[2], dims[3]};
    c.cfg = (PpoConfig){ci[0], ci[1], cf[0], cf[1], cf[2], cf[3],
                        cf[4], cf[5], cf[6], cf[7], cf[8], cf[9]};
    c.acfg = (AdamConfig){cf[10], cf[11], cf[12], cf[13], cf[14], ci[4], ci[5], (AdamDecay)ci[6]};
    c.shuffle_seed = ci[2], c.step0 = ci[3], c.init_seed = ci[8];

    const Record *emb = get(&c.ref, "emb"), *reward = get(&c.ref, "reward");
    c.b = (PpoBatch){getf(&c.ref, "x"),
                     emb->data,
                     geti(&c.ref, "elig"),
                     geti(&c.ref, "off"),
                     geti(&c.ref, "action"),
                     getf(&c.ref, "logp_old"),
                     getf(&c.ref, "v_old"),
                     reward->data,
                     NULL,
                     NULL,
                     (int)reward->n,
                     (int)emb->shape[0]};
    if (ci[7]) {
        const int32_t *ep = geti(&c.ref, "episode");
        c.episode = malloc(reward->n * sizeof *c.episode);
        for (size_t n = 0; n < reward->n; n++) c.episode[n] = (uint64_t)ep[n];
        c.b.episode = c.episode;
        c.b.done = get(&c.ref, "done")->data;
    }
    return c;
}

static int batch_kmax(const PpoBatch *b) {
    int kmax = 0;
    for (int n = 0; n < b->N; n++) kmax = fmax(kmax, b->off[n + 1] - b->off[n]);
    return kmax;
}

/* Advantages, returns and every epoch's shuffle against the reference's. */
static void check_prelude(const Case *c, float *adv, float *ret, int32_t *order) {
    const Record *perm = get(&c->ref, "perm");
    int N = c->b.N;
    Rng rng;

    ppo_advantages(adv, ret, c->b.reward, c->b.v_old, c->b.episode, c->b.done, N, c->cfg.gamma,
                   c->cfg.lambda);
    ppo_normalize(adv, N, c->cfg.adv_eps, NULL, NULL);
    cr_expect_leq(max_abs_diff(adv, getf(&c->ref, "adv"), N), 1e-5);
    cr_expect_leq(max_abs_diff(ret, getf(&c->ref, "ret"), N), 1e-5);
    rng_seed(&rng, (uint64_t)c->shuffle_seed);
    for (size_t e = 0; e < perm->shape[0]; e++) {
        ppo_shuffle(order, N, &rng);
        const int32_t *want = (const int32_t *)perm->data + e * N;
        cr_expect_eq(memcmp(order, want, (size_t)N * sizeof *order), 0, "epoch %zu shuffle", e);
    }
}

/* The update's statistics against torch's (epochs, steps, early stop, then the means). */
static void check_stats(const Case *c, const PpoStats *st) {
    const float *want = getf(&c->ref, "stats");
    float got[] = {st->last.loss, st->last.policy_loss, st->last.value_loss, st->last.entropy,
                   st->last.kl,   st->last.clip_frac,   st->grad_norm,       st->lr,
                   st->adv_mean,  st->adv_std};

    cr_expect_eq(st->epochs, (int)want[0]);
    cr_expect_eq(st->steps, (int)want[1]);
    cr_expect_eq(st->early_stop, want[2] != 0);
    for (int i = 0; i < 10; i++) {
        cr_expect_leq(fabs(got[i] - want[3 + i]), 1e-4 * fmax(1, fabs(want[3 + i])),
                      "statistic %d is %g, torch %g", i, got[i], want[3 + i]);
    }
}

static void torch_parity(const char *path) {
    Case c = load_case(path);
    size_t P = policy_param_count(&c.d);
    int N = c.b.N, M = c.cfg.minibatch < N ? c.cfg.minibatch : N;
    float *before = falloc(P), *want = falloc(P), *params = falloc(P), *grad = falloc(P);
    float *m = falloc(P), *v = falloc(P), *adv = falloc(N), *ret = falloc(N);
    int32_t *order = malloc((size_t)N * sizeof *order);
    size_t wsize = ppo_work_size(&c.d, N, M, batch_kmax(&c.b), c.b.NT);
    void *work = malloc(wsize);
    Rng rng;

    /* The same initial weights, by name, as policy_init makes them. */
    load_arena(before, &c.ref, "before", &c.d);
    policy_init(params, &c.d, (uint64_t)c.init_seed);
    cr_expect_eq(max_abs_diff(params, before, P), 0, "%s: policy_init differs from Python's", path);
    check_prelude(&c, adv, ret, order);

    /* The gradient of the first minibatch, before clipping. */
    PpoLosses l;
    rng_seed(&rng, (uint64_t)c.shuffle_seed);
    ppo_shuffle(order, N, &rng);
    cr_assert_eq(
        ppo_minibatch_grad(&l, grad, work, wsize, before, &c.b, adv, ret, order, M, &c.d, &c.cfg),
        0);
    load_arena(want, &c.ref, "grad0", &c.d);
    double gdiff = max_abs_diff(grad, want, P);
    printf("torch %s: first minibatch gradient max abs diff %.2e (max |g| %.2e)\n", path, gdiff,
           max_abs(want, P));
    cr_expect_leq(gdiff, TOL_GRAD0);

    /* The whole update, Adam resumed at step0 with the reference's moments. */
    AdamState opt = {m, v, c.step0};
    if (c.step0) load_arena(m, &c.ref, "m0", &c.d), load_arena(v, &c.ref, "v0", &c.d);
    PpoStats st;
    memcpy(params, before, P * sizeof *params);
    rng_seed(&rng, (uint64_t)c.shuffle_seed);
    cr_assert_eq(ppo_update(&st, params, &opt, work, wsize, &c.b, &c.d, &c.cfg, &c.acfg, &rng), 0);
    load_arena(want, &c.ref, "after", &c.d);
    double wdiff = max_abs_diff(params, want, P);
    printf("torch %s: %d epochs, %d steps; weights after max abs diff %.2e (moved up to %.2e)\n",
           path, st.epochs, st.steps, wdiff, max_abs_diff(want, before, P));
    cr_expect_leq(wdiff, TOL_TORCH, "%s: weights differ by %.2e", path, wdiff);
    cr_expect_eq(opt.step, c.step0 + st.steps);
    check_stats(&c, &st);

    free(before), free(want), free(params), free(grad), free(m), free(v), free(adv), free(ret);
    free(order), free(work), free(c.episode);
    free_ref(&c.ref);
}

Test(ppo_torch, one_step_update_matches_pytorch) {
    torch_parity("tests/reference/policy_onestep.ref");
}

Test(ppo_torch, gae_update_with_early_stop_matches_pytorch) {
    torch_parity("tests/reference/policy_gae.ref");
}

/* --- update errors --- */

Test(ppo, update_refuses_bad_batches_and_non_finite_gradients) {
    Composite c;
    make_composite(&c, 0.02f, 21);
    size_t P = policy_param_count(&c.d);
    float *keep = falloc(P), *m = falloc(P), *v = falloc(P);
    size_t wsize = ppo_work_size(&c.d, c.b.N, c.cfg.minibatch, 4, c.b.NT);
    void *work = malloc(wsize);
    AdamConfig acfg = adam_defaults();
    AdamState opt = {m, v, 0};
    PpoStats st;
    Rng rng;

    memcpy(keep, c.params, P * sizeof *keep);
    rng_seed(&rng, 1);
    int32_t *action = (int32_t *)c.b.action, *elig = (int32_t *)c.b.elig;
    float *reward = (float *)c.b.reward;

    action[3] += 10;
    cr_expect_eq(ppo_update(&st, c.params, &opt, work, wsize, &c.b, &c.d, &c.cfg, &acfg, &rng),
                 PPO_E_BATCH);
    action[3] -= 10, elig[5] = -1;
    cr_expect_eq(ppo_update(&st, c.params, &opt, work, wsize, &c.b, &c.d, &c.cfg, &acfg, &rng),
                 PPO_E_BATCH);
    elig[5] = 1;
    cr_expect_eq(ppo_update(&st, c.params, &opt, work, wsize - 1, &c.b, &c.d, &c.cfg, &acfg, &rng),
                 PPO_E_WORK);
    reward[4] = NAN;
    cr_expect_eq(ppo_update(&st, c.params, &opt, work, wsize, &c.b, &c.d, &c.cfg, &acfg, &rng),
                 PPO_E_BATCH);
    reward[4] = 1;
    cr_expect_eq(opt.step, 0);
    cr_expect_eq(memcmp(keep, c.params, P * sizeof *keep), 0, "a refused update changed weights");

    /* Weights gone bad: the step is refused and nothing moves. */
    PolicyTensor t[POLICY_NTENSORS];
    policy_layout(t, &c.d);
    c.params[t[POLICY_FC2_W].offset + 3] = INFINITY;
    memcpy(keep, c.params, P * sizeof *keep);
    cr_expect_eq(ppo_update(&st, c.params, &opt, work, wsize, &c.b, &c.d, &c.cfg, &acfg, &rng),
                 PPO_E_NONFINITE);
    cr_expect_eq(st.steps, 0);
    cr_expect_eq(opt.step, 0);
    cr_expect_eq(memcmp(keep, c.params, P * sizeof *keep), 0, "a refused step changed weights");
    c.params[t[POLICY_FC2_W].offset + 3] = 0.1f;

    /* A tiny target KL stops after the first epoch. */
    c.cfg.target_kl = 1e-6f, c.cfg.minibatch = 4;
    wsize = ppo_work_size(&c.d, c.b.N, c.cfg.minibatch, 4, c.b.NT);
    cr_expect_eq(ppo_update(&st, c.params, &opt, work, wsize, &c.b, &c.d, &c.cfg, &acfg, &rng), 0);
    cr_expect(st.early_stop && st.epochs == 1 && st.steps == 3, "epochs %d steps %d", st.epochs,
              st.steps);
    free(keep), free(m), free(v), free(work), free(c.params), free(c.grad), free(c.work);
}

/* --- learning: a contextual bandit --- */

enum { BANDIT_K = 8, BANDIT_C = 4, BANDIT_E = 16, BANDIT_S = 8, BANDIT_BATCH = 256 };

typedef struct {
    float emb[BANDIT_K * BANDIT_E], centre[BANDIT_C * BANDIT_E];
    float mu[BANDIT_C][BANDIT_K]; /* mean reward of each template in each cluster */
} Bandit;

static double gaussian(Rng *r) {
    return sqrt(-2.0 * log(1.0 - rng_uniform(r))) * cos(2 * M_PI * rng_uniform(r));
}

static void unit(float *v, int n, Rng *r) {
    double s = 0;
    for (int i = 0; i < n; i++) v[i] = (float)gaussian(r), s += v[i] * v[i];
    for (int i = 0; i < n; i++) v[i] /= (float)sqrt(s);
}

/* A state as promptd builds it: the prompt's vector, the session mean, scalar slots. */
static int context(float *x, const Bandit *bd, Rng *r) {
    int c = (int)rng_below(r, BANDIT_C);
    float v[BANDIT_E];

    unit(v, BANDIT_E, r);
    for (int i = 0; i < BANDIT_E; i++) v[i] = bd->centre[c * BANDIT_E + i] + 0.4f * v[i];
    memcpy(x, v, sizeof v);
    memcpy(x + BANDIT_E, v, sizeof v);
    memset(x + 2 * BANDIT_E, 0, BANDIT_S * sizeof *x);
    x[2 * BANDIT_E] = 1.0f, x[2 * BANDIT_E + 1] = (float)rng_uniform(r);
    return c;
}

Test(ppo_learning, contextual_bandit_rises_far_above_uniform) {
    enum { D = 2 * BANDIT_E + BANDIT_S, STEPS = 4096, LAST = 1000 };
    PolicyDims d = {D, BANDIT_E, 32, 16};
    size_t P = policy_param_count(&d);
    float *params = falloc(P), *m = falloc(P), *v = falloc(P);
    float *xs = falloc(BANDIT_BATCH * D), logp[BANDIT_BATCH], vold[BANDIT_BATCH], rew[BANDIT_BATCH];
    int32_t elig[BANDIT_BATCH * BANDIT_K], off[BANDIT_BATCH + 1], action[BANDIT_BATCH];
    float *work = falloc(policy_act_work_floats(&d, BANDIT_K));
    Bandit bd;
    Rng r;

    /* The world: templates, clusters, and a hidden best template per cluster. */
    rng_seed(&r, 2024);
    for (int a = 0; a < BANDIT_K; a++) unit(bd.emb + a * BANDIT_E, BANDIT_E, &r);
    for (int c = 0; c < BANDIT_C; c++) unit(bd.centre + c * BANDIT_E, BANDIT_E, &r);
    double uniform = 0;
    for (int c = 0; c < BANDIT_C; c++) {
        for (int a = 0; a < BANDIT_K; a++) bd.mu[c][a] = 0.2f + 0.3f * (float)rng_uniform(&r);
        bd.mu[c][(3 * c + 1) % BANDIT_K] = 1.0f;
        for (int a = 0; a < BANDIT_K; a++) uniform += bd.mu[c][a] / (BANDIT_C * BANDIT_K);
    }
    for (int n = 0; n <= BANDIT_BATCH; n++) off[n] = n * BANDIT_K;
    for (int j = 0; j < BANDIT_BATCH * BANDIT_K; j++) elig[j] = j % BANDIT_K;

    policy_init(params, &d, 7);
    PpoConfig cfg = ppo_defaults();
    cfg.min_prob = 0.01f;
    AdamConfig acfg = adam_defaults();
    acfg.lr = 3e-3;
    AdamState opt = {m, v, 0};
    PpoBatch b = {xs,   bd.emb, elig, off,  action,       logp,
                  vold, rew,    NULL, NULL, BANDIT_BATCH, BANDIT_K};
    size_t wsize = ppo_work_size(&d, BANDIT_BATCH, cfg.minibatch, BANDIT_K, BANDIT_K);
    void *uwork = malloc(wsize);
    PolicySampling sampling = {cfg.temperature, cfg.min_prob, false};
    double late = 0;

    for (int t = 0; t < STEPS; t++) {
        int n = t % BANDIT_BATCH;
        int c = context(xs + n * D, &bd, &r);
        PolicyChoice ch;
        cr_assert_eq(policy_act_emb(&ch, NULL, work, params, &d, xs + n * D, bd.emb, BANDIT_K,
                                    &sampling, rng_uniform(&r)),
                     0);
        action[n] = ch.index, logp[n] = ch.logp, vold[n] = ch.value;
        rew[n] = bd.mu[c][ch.index] + 0.2f * (float)gaussian(&r);
        if (t >= STEPS - LAST) late += bd.mu[c][ch.index] / LAST;

        if (n == BANDIT_BATCH - 1) {
            PpoStats st;
            cr_assert_eq(ppo_update(&st, params, &opt, uwork, wsize, &b, &d, &cfg, &acfg, &r), 0);
        }
    }
    printf("bandit: mean reward over the last %d of %d steps %.3f (uniform %.3f, oracle 1.0)\n",
           LAST, STEPS, late, uniform);
    cr_expect_gt(late, uniform + 0.6 * (1.0 - uniform), "the policy did not learn: %.3f", late);
    free(params), free(m), free(v), free(xs), free(work), free(uwork);
}
