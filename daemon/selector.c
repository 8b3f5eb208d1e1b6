/* The policy on the serving path: state, scoring, sampling, records; see selector.h. */
#include "selector.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/rng.h"
#include "learner.h"
#include "pd.h"

#define HIDDEN      64
#define SCORE_SPACE 32
/* The running mean of prompt vectors: the templates' mean counts as CENTER_PRIOR prompts,
 * then each prompt weighs 1 / (prompts seen + CENTER_PRIOR) until that falls to
 * CENTER_RATE, a time constant of 2,000 prompts: slow next to a batch, quick next to a
 * day's drift. */
#define CENTER_RATE  5e-4
#define CENTER_PRIOR 100.0

struct Selector {
    PolicyDims d;
    PolicySampling sampling;
    Rng rng;
    float *params;
    uint64_t version;

    /* The pack's templates: name hashes, about embeddings [n, E], tower outputs [n, Q]. */
    uint64_t *hashes;
    float *emb, *u;
    size_t n;
    bool u_stale; /* the policy changed since u was computed */

    /* Where prompt vectors are centred (see selector.h), and how many were seen. */
    float *center;
    double seen;

    /* Scratch for one choice. */
    float *u_elig, *probs, *work;
    uint64_t *elig_hashes;
    int k, action;
    Selection last;
};

PolicyDims selector_dims(int E) {
    return (PolicyDims){3 * E + SELECTOR_SCALARS, E, HIDDEN, SCORE_SPACE};
}

Selector *selector_new(int E, const PolicySampling *sampling, uint64_t seed) {
    Selector *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->d = selector_dims(E);
    s->sampling = *sampling;
    rng_seed(&s->rng, seed);
    s->params = calloc(policy_param_count(&s->d), sizeof(float));
    s->center = calloc((size_t)E, sizeof(float));
    if (!s->params || !s->center) {
        selector_free(s);
        return NULL;
    }
    return s;
}

void selector_free(Selector *s) {
    if (!s) return;
    free(s->params);
    free(s->hashes);
    free(s->emb);
    free(s->u);
    free(s->u_elig);
    free(s->probs);
    free(s->work);
    free(s->elig_hashes);
    free(s->center);
    free(s);
}

void selector_configure(Selector *s, const PolicySampling *sampling) {
    s->sampling = *sampling;
}

void selector_set_policy(Selector *s, const float *params, uint64_t version) {
    memcpy(s->params, params, policy_param_count(&s->d) * sizeof(float));
    s->version = version;
    s->u_stale = true;
}

int selector_set_templates(Selector *s, const uint64_t *hashes, const float *emb, size_t n,
                           const float *center) {
    size_t E = (size_t)s->d.E, Q = (size_t)s->d.Q;
    uint64_t *h = malloc(n * sizeof *h), *eh = malloc(n * sizeof *eh);
    float *e = malloc(n * E * sizeof *e), *u = malloc(n * Q * sizeof *u),
          *ue = malloc(n * Q * sizeof *ue), *pr = malloc(n * sizeof *pr),
          *w = malloc(policy_act_work_floats(&s->d, (int)n) * sizeof *w);
    if (!h || !eh || !e || !u || !ue || !pr || !w) {
        free(h), free(eh), free(e), free(u), free(ue), free(pr), free(w);
        return -1;
    }
    memcpy(h, hashes, n * sizeof *h);
    memcpy(e, emb, n * E * sizeof *e);
    free(s->hashes), free(s->elig_hashes), free(s->emb), free(s->u), free(s->u_elig);
    free(s->probs), free(s->work);
    s->hashes = h, s->elig_hashes = eh, s->emb = e, s->u = u, s->u_elig = ue, s->probs = pr;
    s->work = w;
    s->n = n;
    s->u_stale = true;
    if (center && s->seen == 0) memcpy(s->center, center, E * sizeof *center);
    return 0;
}

const float *selector_template_embedding(const Selector *s, uint64_t hash) {
    for (size_t i = 0; i < s->n; i++)
        if (s->hashes[i] == hash) return s->emb + i * (size_t)s->d.E;
    return NULL;
}

/* dst = sqrt(E) (v - centre) / |v - centre|: unit-variance entries, as the policy's
 * initialisation expects, with the direction every text shares taken out. */
static void centred(float *dst, const float *v, const float *center, size_t E) {
    float norm = 0;
    for (size_t i = 0; i < E; i++) {
        dst[i] = v[i] - center[i];
        norm += dst[i] * dst[i];
    }
    float scale = norm > 1e-12f ? sqrtf((float)E / norm) : 0;
    for (size_t i = 0; i < E; i++) dst[i] *= scale;
}

void selector_state(Selector *s, float *x, const float *vector, const float *features,
                    size_t nfeatures, const SessionView *session) {
    size_t E = (size_t)s->d.E;
    float *scalars = x + 3 * E;
    memset(x, 0, (size_t)s->d.D * sizeof *x);
    centred(x, vector, s->center, E);
    s->seen += 1;
    double rate = 1 / (s->seen + CENTER_PRIOR);
    if (rate < CENTER_RATE) rate = CENTER_RATE;
    for (size_t i = 0; i < E; i++) s->center[i] += (float)rate * (vector[i] - s->center[i]);
    if (nfeatures > SELECTOR_FEATURES) nfeatures = SELECTOR_FEATURES;
    memcpy(scalars, features, nfeatures * sizeof *x);
    if (!session) return;

    if (session->count) centred(x + E, session->mean, s->center, E);
    const float *prev = selector_template_embedding(s, session->prev_template);
    for (size_t i = 0; prev && i < E; i++) x[2 * E + i] = prev[i] * sqrtf((float)E);
    scalars[SELECTOR_FEATURES] = 1;
    scalars[SELECTOR_FEATURES + 1] = (float)(session->turn < 10 ? session->turn : 10) / 10;
    if (session->has_reward) {
        scalars[SELECTOR_FEATURES + 2] = (float)tanh(session->prev_reward);
        scalars[SELECTOR_FEATURES + 3] = 1;
    }
}

int selector_choose(Selector *s, const float *x, const bool *eligible, Selection *out) {
    size_t Q = (size_t)s->d.Q;
    if (s->u_stale) {
        policy_templates(s->u, s->params, &s->d, s->emb, (int)s->n);
        s->u_stale = false;
    }

    /* Gather the eligible templates' tower outputs; remember where each came from. */
    int k = 0;
    size_t where[SELECTOR_TEMPLATES_MAX];
    for (size_t i = 0; i < s->n && k < SELECTOR_TEMPLATES_MAX; i++) {
        if (!eligible[i]) continue;
        memcpy(s->u_elig + (size_t)k * Q, s->u + i * Q, Q * sizeof(float));
        s->elig_hashes[k] = s->hashes[i];
        where[k++] = i;
    }
    PD_ASSERT(k > 0);

    PolicyChoice c;
    int rc = policy_act(&c, s->probs, s->work, s->params, &s->d, x, s->u_elig, k, &s->sampling,
                        rng_uniform(&s->rng));
    s->k = k;
    s->action = c.index;
    s->last = (Selection){where[c.index], c.p, c.logp, c.value, s->version};
    *out = s->last;
    return rc == 0 ? 0 : -1;
}

size_t selector_record(const Selector *s, void *buf, size_t len, const float *x, uint64_t episode,
                       uint32_t turn) {
    size_t need = learner_record_size(&s->d, s->k);
    if (need > len) return 0;
    learner_record_write(buf, &s->d, s->last.policy_version, episode, turn, x, s->elig_hashes, s->k,
                         s->action, s->last.logp, s->last.value);
    return need;
}

uint64_t selector_policy_version(const Selector *s) {
    return s->version;
}

const PolicyDims *selector_policy_dims(const Selector *s) {
    return &s->d;
}
