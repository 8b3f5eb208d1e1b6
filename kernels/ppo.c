/* ppo.c - PPO update of the template-selection policy; see ppo.h and POLICY.md.
 *
 * Buffers (letters as in policy.h; N batch, M minibatch, P arena floats):
 *   adv, ret [N]    normalised advantages and returns      perm [N]  this epoch's order
 *   grad [P]        gradient of the minibatch's mean loss  (zeroed before each step)
 *   per minibatch:  x [M,D] h, dh, dpre [M,H] q, dq [M,Q] v, dv [M]
 *                   u, du [NT,Q] (the whole table's template tower)
 *                   z, s, pi, logpi, dz, dpi, dlogpi [K <= M kmax], elig [K], off [M+1]
 *                   adv, ret, logp_old (gathered), logp, ratio, lclip, lval, ent [M]
 *                   dlogp, dclip, dval, dent [M], action [M]
 */
#include "ppo.h"

#include <math.h>
#include <string.h>

#define WORK_ALIGN 64 /* bytes; every carved buffer starts on a cache line */

PpoConfig ppo_defaults(void) {
    return (PpoConfig){4, 64, 0.2f, 0.5f, 0.01f, 0.02f, 0.99f, 0.95f, 1e-8f, 1.0f, 0.7f, 0.0f};
}

/* --- advantages --- */

void ppo_advantages(float *adv, float *ret, const float *reward, const float *v_old,
                    const uint64_t *episode, const uint8_t *done, int N, float gamma,
                    float lambda) {
    float carry = 0.0f; /* A_{t+1} of the same episode */

    for (int n = N - 1; n >= 0; n--) {
        bool more = episode && n + 1 < N && episode[n + 1] == episode[n] && !(done && done[n]);
        float next_v = more ? v_old[n + 1] : 0.0f;
        float delta = reward[n] + gamma * next_v - v_old[n];

        adv[n] = delta + (more ? gamma * lambda * carry : 0.0f);
        ret[n] = adv[n] + v_old[n];
        carry = adv[n];
    }
}

void ppo_normalize(float *adv, int N, float eps, float *mean, float *std) {
    double sum = 0.0, sq = 0.0;

    for (int n = 0; n < N; n++) sum += adv[n];
    double mu = N > 0 ? sum / N : 0.0;
    for (int n = 0; n < N; n++) sq += (adv[n] - mu) * (adv[n] - mu);
    double sd = N > 0 ? sqrt(sq / N) : 0.0;

    for (int n = 0; n < N; n++) adv[n] = (float)((adv[n] - mu) / (sd + eps));
    if (mean) *mean = (float)mu;
    if (std) *std = (float)sd;
}

/* --- losses --- */

void ppo_clip_forward(float *loss, float *ratio, const float *logp, const float *logp_old,
                      const float *adv, int B, float eps) {
    for (int b = 0; b < B; b++) {
        float r = expf(logp[b] - logp_old[b]);
        float rc = fminf(fmaxf(r, 1.0f - eps), 1.0f + eps);
        ratio[b] = r;
        loss[b] = -fminf(r * adv[b], rc * adv[b]);
    }
}

void ppo_clip_backward(float *dlogp, const float *dloss, const float *ratio, const float *adv,
                       int B, float eps) {
    for (int b = 0; b < B; b++) {
        float r = ratio[b], rc = fminf(fmaxf(r, 1.0f - eps), 1.0f + eps);

        /* d ratio / d logp = ratio. On a tie (inside the range) the two terms are the
         * same function of ratio, so the gradient is the unclipped one. */
        if (r * adv[b] <= rc * adv[b]) dlogp[b] += dloss[b] * -adv[b] * r;
    }
}

void ppo_value_forward(float *loss, const float *v, const float *ret, int B) {
    for (int b = 0; b < B; b++) loss[b] = (v[b] - ret[b]) * (v[b] - ret[b]);
}

void ppo_value_backward(float *dv, const float *dloss, const float *v, const float *ret, int B) {
    for (int b = 0; b < B; b++) dv[b] += dloss[b] * 2.0f * (v[b] - ret[b]);
}

void ppo_shuffle(int32_t *perm, int n, Rng *rng) {
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        uint32_t j = rng_below(rng, (uint32_t)i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* --- workspace --- */

/* One minibatch's activations and their gradients. */
typedef struct {
    float *x, *h, *dh, *dpre, *q, *dq, *v, *dv, *u, *du;
    float *z, *s, *pi, *logpi, *dz, *dpi, *dlogpi;
    float *adv, *ret, *logp_old, *logp, *ratio, *lclip, *lval, *ent;
    float *dlogp, *dclip, *dval, *dent;
    int32_t *elig, *off, *action;
} Acts;

typedef struct {
    float *grad, *adv, *ret;
    int32_t *perm;
} Update;

/* Hands out aligned pieces of base, or with base NULL only counts the bytes. */
typedef struct {
    char *base;
    size_t used;
} Carver;

static void *take(Carver *c, size_t count, size_t elem) {
    size_t at = (c->used + WORK_ALIGN - 1) / WORK_ALIGN * WORK_ALIGN;
    c->used = at + count * elem;
    return c->base ? c->base + at : NULL;
}

static float *takef(Carver *c, size_t count) {
    return take(c, count, sizeof(float));
}

static void carve_acts(Acts *a, Carver *c, const PolicyDims *d, int M, int kmax, int NT) {
    size_t mh = (size_t)M * d->H, mq = (size_t)M * d->Q, nq = (size_t)NT * d->Q;
    size_t K = (size_t)M * kmax, m = (size_t)M;

    a->x = takef(c, m * d->D);
    a->h = takef(c, mh), a->dh = takef(c, mh), a->dpre = takef(c, mh);
    a->q = takef(c, mq), a->dq = takef(c, mq), a->v = takef(c, m), a->dv = takef(c, m);
    a->u = takef(c, nq), a->du = takef(c, nq);
    a->z = takef(c, K), a->s = takef(c, K), a->pi = takef(c, K), a->logpi = takef(c, K);
    a->dz = takef(c, K), a->dpi = takef(c, K), a->dlogpi = takef(c, K);
    a->adv = takef(c, m), a->ret = takef(c, m), a->logp_old = takef(c, m), a->logp = takef(c, m);
    a->ratio = takef(c, m), a->lclip = takef(c, m), a->lval = takef(c, m), a->ent = takef(c, m);
    a->dlogp = takef(c, m), a->dclip = takef(c, m), a->dval = takef(c, m), a->dent = takef(c, m);
    a->elig = take(c, K, sizeof(int32_t));
    a->off = take(c, m + 1, sizeof(int32_t));
    a->action = take(c, m, sizeof(int32_t));
}

static void carve_update(Update *u, Carver *c, const PolicyDims *d, int N) {
    u->grad = takef(c, policy_param_count(d));
    u->adv = takef(c, (size_t)N), u->ret = takef(c, (size_t)N);
    u->perm = take(c, (size_t)N, sizeof(int32_t));
}

size_t ppo_minibatch_work_size(const PolicyDims *d, int M, int kmax, int NT) {
    Carver c = {NULL, 0};
    Acts a;
    carve_acts(&a, &c, d, M, kmax, NT);
    return c.used;
}

size_t ppo_work_size(const PolicyDims *d, int N, int M, int kmax, int NT) {
    Carver c = {NULL, 0};
    Update u;
    Acts a;
    carve_update(&u, &c, d, N);
    carve_acts(&a, &c, d, M < N ? M : N, kmax, NT);
    return c.used;
}

/* --- one minibatch --- */

/* The offsets of the arena's tensors, indexed by POLICY_FC1_W ... */
static void tensor_offsets(size_t *at, const PolicyDims *d) {
    PolicyTensor t[POLICY_NTENSORS];
    policy_layout(t, d);
    for (int i = 0; i < POLICY_NTENSORS; i++) at[i] = t[i].offset;
}

/* Copies the samples idx [M] into contiguous rows, with their eligible sets re-based. */
static void gather(Acts *a, const PpoBatch *b, const float *adv, const float *ret,
                   const int32_t *idx, int M, int D) {
    a->off[0] = 0;
    for (int i = 0; i < M; i++) {
        int n = idx[i], k = b->off[n + 1] - b->off[n];
        memcpy(a->x + (size_t)i * D, b->x + (size_t)n * D, (size_t)D * sizeof(float));
        memcpy(a->elig + a->off[i], b->elig + b->off[n], (size_t)k * sizeof(int32_t));
        a->off[i + 1] = a->off[i] + k;
        a->action[i] = b->action[n];
        a->adv[i] = adv[n], a->ret[i] = ret[n], a->logp_old[i] = b->logp_old[n];
    }
}

static void forward(Acts *a, const float *const *w, const PpoBatch *b, int M, const PolicyDims *d,
                    const PpoConfig *cfg) {
    /* State tower and value head; the template tower runs over the whole table. */
    policy_linear_forward(a->h, a->x, w[POLICY_FC1_W], w[POLICY_FC1_B], M, d->D, d->H);
    policy_tanh_forward(a->h, a->h, (size_t)M * d->H);
    policy_linear_forward(a->q, a->h, w[POLICY_FC2_W], w[POLICY_FC2_B], M, d->H, d->Q);
    policy_linear_forward(a->v, a->h, w[POLICY_VALUE_W], w[POLICY_VALUE_B], M, d->H, 1);
    policy_linear_forward(a->u, b->emb, w[POLICY_TMPL_W], w[POLICY_TMPL_B], b->NT, d->E, d->Q);

    /* The behaviour distribution and the chosen templates' log-probabilities. */
    policy_score_forward(a->z, a->q, a->u, a->elig, a->off, M, d->Q);
    policy_probs_forward(a->pi, a->logpi, a->s, a->z, a->off, M, cfg->temperature, cfg->min_prob);
    policy_entropy_forward(a->ent, a->pi, a->logpi, a->off, M);
    for (int i = 0; i < M; i++) a->logp[i] = a->logpi[a->off[i] + a->action[i]];

    /* The loss terms of every sample. */
    ppo_clip_forward(a->lclip, a->ratio, a->logp, a->logp_old, a->adv, M, cfg->clip);
    ppo_value_forward(a->lval, a->v, a->ret, M);
}

static PpoLosses means(const Acts *a, int M, const PpoConfig *cfg) {
    double pl = 0, vl = 0, en = 0, kl = 0, clipped = 0;

    for (int i = 0; i < M; i++) {
        double log_ratio = (double)a->logp[i] - a->logp_old[i];
        pl += a->lclip[i], vl += a->lval[i], en += a->ent[i];
        kl += (a->ratio[i] - 1.0) - log_ratio;
        clipped += fabsf(a->ratio[i] - 1.0f) > cfg->clip;
    }
    return (PpoLosses){(float)((pl + cfg->value_coef * vl - cfg->entropy_coef * en) / M),
                       (float)(pl / M),
                       (float)(vl / M),
                       (float)(en / M),
                       (float)(kl / M),
                       (float)(clipped / M)};
}

static void zero_grads(Acts *a, int M, int NT, const PolicyDims *d) {
    size_t K = (size_t)a->off[M], mh = (size_t)M * d->H * sizeof(float);

    memset(a->dh, 0, mh);
    memset(a->dpre, 0, mh);
    memset(a->dq, 0, (size_t)M * d->Q * sizeof(float));
    memset(a->dv, 0, (size_t)M * sizeof(float));
    memset(a->du, 0, (size_t)NT * d->Q * sizeof(float));
    memset(a->dz, 0, K * sizeof(float));
    memset(a->dpi, 0, K * sizeof(float));
    memset(a->dlogpi, 0, K * sizeof(float));
    memset(a->dlogp, 0, (size_t)M * sizeof(float));
}

static void backward(float *const *g, Acts *a, const float *const *w, const PpoBatch *b, int M,
                     const PolicyDims *d, const PpoConfig *cfg) {
    zero_grads(a, M, b->NT, d);

    /* L is a mean over the minibatch: each sample's terms weigh 1/M. */
    for (int i = 0; i < M; i++) {
        a->dclip[i] = 1.0f / (float)M;
        a->dval[i] = cfg->value_coef / (float)M;
        a->dent[i] = -cfg->entropy_coef / (float)M;
    }
    ppo_clip_backward(a->dlogp, a->dclip, a->ratio, a->adv, M, cfg->clip);
    ppo_value_backward(a->dv, a->dval, a->v, a->ret, M);
    for (int i = 0; i < M; i++) a->dlogpi[a->off[i] + a->action[i]] += a->dlogp[i];
    policy_entropy_backward(a->dpi, a->dent, a->logpi, a->off, M);

    /* Through the floored softmax and the bilinear score. */
    policy_probs_backward(a->dz, a->dpi, a->dlogpi, a->pi, a->s, a->off, M, cfg->temperature,
                          cfg->min_prob);
    policy_score_backward(a->dq, a->du, a->dz, a->q, a->u, a->elig, a->off, M, d->Q);

    /* Template tower: no gradient for bt, whose exact gradient is zero (ppo.h). */
    policy_linear_backward(NULL, g[POLICY_TMPL_W], NULL, a->du, b->emb, w[POLICY_TMPL_W], b->NT,
                           d->E, d->Q);

    /* Both heads into h, then the tanh layer. */
    policy_linear_backward(a->dh, g[POLICY_VALUE_W], g[POLICY_VALUE_B], a->dv, a->h,
                           w[POLICY_VALUE_W], M, d->H, 1);
    policy_linear_backward(a->dh, g[POLICY_FC2_W], g[POLICY_FC2_B], a->dq, a->h, w[POLICY_FC2_W], M,
                           d->H, d->Q);
    policy_tanh_backward(a->dpre, a->dh, a->h, (size_t)M * d->H);
    policy_linear_backward(NULL, g[POLICY_FC1_W], g[POLICY_FC1_B], a->dpre, a->x, w[POLICY_FC1_W],
                           M, d->D, d->H);
}

static PpoLosses minibatch(float *grad, Acts *a, const float *params, const PpoBatch *b,
                           const float *adv, const float *ret, const int32_t *idx, int M,
                           const PolicyDims *d, const PpoConfig *cfg) {
    size_t at[POLICY_NTENSORS];
    const float *w[POLICY_NTENSORS];
    float *g[POLICY_NTENSORS];

    tensor_offsets(at, d);
    for (int i = 0; i < POLICY_NTENSORS; i++) w[i] = params + at[i], g[i] = grad + at[i];

    gather(a, b, adv, ret, idx, M, d->D);
    forward(a, w, b, M, d, cfg);
    backward(g, a, w, b, M, d, cfg);
    return means(a, M, cfg);
}

static int max_set(const int32_t *off, const int32_t *idx, int M) {
    int kmax = 0;
    for (int i = 0; i < M; i++) {
        int k = off[idx[i] + 1] - off[idx[i]];
        kmax = k > kmax ? k : kmax;
    }
    return kmax;
}

int ppo_minibatch_grad(PpoLosses *out, float *grad, void *work, size_t work_size,
                       const float *params, const PpoBatch *b, const float *adv, const float *ret,
                       const int32_t *idx, int M, const PolicyDims *d, const PpoConfig *cfg) {
    int kmax = max_set(b->off, idx, M);
    if (work_size < ppo_minibatch_work_size(d, M, kmax, b->NT)) return PPO_E_WORK;

    Carver c = {work, 0};
    Acts a;
    carve_acts(&a, &c, d, M, kmax, b->NT);
    *out = minibatch(grad, &a, params, b, adv, ret, idx, M, d, cfg);
    return 0;
}

/* --- the update --- */

static bool config_ok(const PpoConfig *cfg) {
    return cfg->epochs >= 1 && cfg->minibatch >= 1 && cfg->temperature > 0.0f &&
           cfg->min_prob >= 0.0f && cfg->clip >= 0.0f;
}

static bool finite_all(const float *a, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) s += a[i] * 0.0f; /* NaN or inf turns 0 into NaN */
    return isfinite(s);
}

/* The largest eligible set of b, or -1 when a sample is malformed. External data: the
 * journal may hold anything, so every index and value is checked before it is used (a
 * NaN log-probability would otherwise drop its sample's policy term without a trace). */
static int check_batch(const PpoBatch *b, const PolicyDims *d) {
    int kmax = 0;

    if (b->N < 1 || b->NT < 1 || b->off[0] != 0) return -1;
    for (int n = 0; n < b->N; n++) {
        int k = b->off[n + 1] - b->off[n];
        if (k < 1 || b->action[n] < 0 || b->action[n] >= k) return -1;
        kmax = k > kmax ? k : kmax;
    }
    for (int32_t j = 0; j < b->off[b->N]; j++) {
        if (b->elig[j] < 0 || b->elig[j] >= b->NT) return -1;
    }

    size_t N = (size_t)b->N;
    bool finite = finite_all(b->x, N * d->D) && finite_all(b->emb, (size_t)b->NT * d->E) &&
                  finite_all(b->logp_old, N) && finite_all(b->v_old, N) && finite_all(b->reward, N);
    return finite ? kmax : -1;
}

/* Running sums of an epoch's minibatch means, weighted by their sizes. */
static void add_losses(PpoLosses *sum, const PpoLosses *l, float w) {
    sum->loss += w * l->loss, sum->policy_loss += w * l->policy_loss;
    sum->value_loss += w * l->value_loss, sum->entropy += w * l->entropy;
    sum->kl += w * l->kl, sum->clip_frac += w * l->clip_frac;
}

/* One optimiser step on the minibatch idx [M]; false when the gradient is not finite. */
static bool step(PpoStats *st, PpoLosses *sum, float *params, AdamState *opt, Update *u, Acts *a,
                 const PpoBatch *b, const int32_t *idx, int M, const PolicyDims *d,
                 const PpoConfig *cfg, const AdamConfig *acfg) {
    size_t P = policy_param_count(d);

    memset(u->grad, 0, P * sizeof(float));
    PpoLosses l = minibatch(u->grad, a, params, b, u->adv, u->ret, idx, M, d, cfg);
    double norm = adam_grad_norm(u->grad, P);
    if (!isfinite(norm)) return false;

    double lr = adam_lr(acfg, opt->step + 1);
    adam_step(params, opt->m, opt->v, u->grad, P, lr, adam_clip_scale(norm, cfg->max_grad_norm),
              acfg, opt->step + 1);
    opt->step++;
    st->steps++;
    st->lr = (float)lr;
    st->grad_norm += (float)norm; /* a sum until the update ends */
    add_losses(sum, &l, (float)M / (float)b->N);
    return true;
}

int ppo_update(PpoStats *stats, float *params, AdamState *opt, void *work, size_t work_size,
               const PpoBatch *b, const PolicyDims *d, const PpoConfig *cfg, const AdamConfig *acfg,
               Rng *rng) {
    memset(stats, 0, sizeof *stats);
    if (!config_ok(cfg)) return PPO_E_ARG;
    int kmax = check_batch(b, d);
    if (kmax < 0) return PPO_E_BATCH;
    int N = b->N, M = cfg->minibatch < N ? cfg->minibatch : N;
    if (work_size < ppo_work_size(d, N, M, kmax, b->NT)) return PPO_E_WORK;

    Carver c = {work, 0};
    Update u;
    Acts a;
    carve_update(&u, &c, d, N);
    carve_acts(&a, &c, d, M, kmax, b->NT);

    ppo_advantages(u.adv, u.ret, b->reward, b->v_old, b->episode, b->done, N, cfg->gamma,
                   cfg->lambda);
    ppo_normalize(u.adv, N, cfg->adv_eps, &stats->adv_mean, &stats->adv_std);

    int rc = 0;
    for (int e = 0; e < cfg->epochs && rc == 0; e++) {
        PpoLosses sum = {0};
        ppo_shuffle(u.perm, N, rng);
        for (int at = 0; at < N && rc == 0; at += M) {
            int m = N - at < M ? N - at : M;
            if (!step(stats, &sum, params, opt, &u, &a, b, u.perm + at, m, d, cfg, acfg))
                rc = PPO_E_NONFINITE;
        }
        if (rc) break;

        /* The KL is measured before each minibatch's step, so it costs no extra pass. */
        stats->epochs = e + 1;
        stats->last = sum;
        if (cfg->target_kl > 0.0f && sum.kl > cfg->target_kl) {
            stats->early_stop = e + 1 < cfg->epochs;
            break;
        }
    }
    stats->grad_norm = stats->steps ? stats->grad_norm / (float)stats->steps : 0.0f;
    return rc;
}
