/*
 * The serving side of the learned policy: builds a prompt's state, scores the pack's
 * eligible templates and samples one, and writes the decision's learning record for the
 * journal.
 *
 * State x = [v, session mean, previous template's embedding, scalars] (D = 3E + S):
 * the prompt's semantic vector (E), the running mean of its session's vectors, the
 * `about` embedding of the session's previous template, and S scalar slots: the pack's
 * features (the first S - 4), then has-session, turn (scaled, capped), the previous
 * reward (squashed) and whether it is known. Zeros where there is no session.
 *
 * The two prompt vectors enter centred and scaled to entries of unit variance. An
 * encoder's vectors share one large direction (every text looks alike to it before the
 * differences), which would leave the policy's first layer all but blind to what tells
 * prompts apart: measured on the bandit scenario with 32 templates, centring takes the
 * quality reached in 10,000 rewards from 0.47 to 0.63 of the oracle's. The centre is a
 * running mean of the prompt vectors served (a time constant of about 2,000 prompts),
 * starting from the mean of the pack's template descriptions. It is not checkpointed: a
 * restart begins again from that prior, and the restored policy sees slightly shifted
 * states for its first few thousand prompts. Saving the centre with the policy would
 * lift that.
 *
 * Templates are scored from the embeddings of their `about` sentences, so templates can
 * be added live and a new one starts from a prior: the template tower's outputs are
 * cached per (pack, policy version). The serving thread picks new policy versions up
 * from the learner between batches.
 *
 * Serving thread only.
 */
#ifndef PD_SELECTOR_H
#define PD_SELECTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kernels/policy.h"
#include "session.h"

#define SELECTOR_SCALARS       16 /* S: feature and context slots of the state */
#define SELECTOR_TEMPLATES_MAX 256
#define SELECTOR_FEATURES      (SELECTOR_SCALARS - 4)

typedef struct Selector Selector;

/* Dimensions of the policy for embeddings of E floats. */
PolicyDims selector_dims(int E);

Selector *selector_new(int E, const PolicySampling *sampling, uint64_t seed);
void selector_free(Selector *s);
void selector_configure(Selector *s, const PolicySampling *sampling);

/* A new policy (params: policy_param_count floats, copied) with its version. */
void selector_set_policy(Selector *s, const float *params, uint64_t version);

/* The serving pack's templates: their name hashes and about embeddings ([n, E], copied),
 * and the mean of their raw embeddings (the centre's prior until prompts arrive; may be
 * NULL). Returns 0 or -1 (out of memory: the previous templates stay). */
int selector_set_templates(Selector *s, const uint64_t *hashes, const float *emb, size_t n,
                           const float *center);

/* Writes the state of a prompt into x [D]. features: nfeatures floats (more than
 * SELECTOR_FEATURES are ignored); session NULL when the prompt has none. */
void selector_state(Selector *s, float *x, const float *vector, const float *features,
                    size_t nfeatures, const SessionView *session);

typedef struct {
    size_t template_index; /* into the pack's templates */
    double p;              /* pi of the choice under the behaviour policy */
    float logp, value;
    uint64_t policy_version;
} Selection;

/* Chooses among the templates with eligible[i] set (at least one). Returns 0, or -1 when
 * the policy produced a non-finite score (then *out is a uniform choice, still valid). */
int selector_choose(Selector *s, const float *x, const bool *eligible, Selection *out);

/* The learning record of the last choice (see learner_record_write), into buf; returns
 * its size, or 0 when buf is too small. */
size_t selector_record(const Selector *s, void *buf, size_t len, const float *x, uint64_t episode,
                       uint32_t turn);

uint64_t selector_policy_version(const Selector *s);
const PolicyDims *selector_policy_dims(const Selector *s);

/* The about embedding of a template by name hash, or NULL (for the session context). */
const float *selector_template_embedding(const Selector *s, uint64_t hash);

#endif
