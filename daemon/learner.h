/*
 * The learner: its own thread, which turns experiences (decisions joined with their
 * rewards) into PPO updates of the policy, publishes each new policy for the serving
 * thread to pick up between batches, and checkpoints it.
 *
 * The serving thread never waits for it: it hands experiences over through a bounded
 * queue (a full queue drops the newest, counted), and picks a new policy up with a
 * try-lock and one copy of the parameter block, or keeps the one it has.
 *
 * The learning record of a decision (learner_record_*) is what the journal keeps: the
 * state x, the eligible templates (by name hash), the action, log pi and V at acting
 * time, the policy version, and the session as the episode.
 */
#ifndef PD_LEARNER_H
#define PD_LEARNER_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kernels/adam.h"
#include "checkpoint.h"
#include "../kernels/policy.h"
#include "../kernels/ppo.h"
#include "journal.h"
#include "tuner.h"

typedef struct {
    PolicyDims dims;
    PpoConfig ppo;
    AdamConfig adam;
    int batch_size;                /* experiences per update */
    uint64_t max_staleness;        /* experiences from older policy versions are dropped */
    bool episodes;                 /* GAE over sessions (the pack marks turns of an episode) */
    char checkpoint_dir[PATH_MAX]; /* "" = no checkpoints */
    int64_t checkpoint_every_ms;
    int checkpoint_keep;
    uint64_t seed;
    uint64_t model_id; /* the configured encoder: the states hold its vectors or those of
                          a head fine-tuned from it online, which the policy follows */
    size_t queue_max;  /* experiences waiting for the learner */
    bool triplets;     /* learner.triplets: fine-tune the encoder's head from the rewards */
    TunerConfig tuner; /* its settings, when on (strings copied at start) */

    /* Distributed learning: when set, called on the learner thread with the policy after
     * updates, at most every snapshot_every_ms and once more at the stop, with the
     * experience offset to resume from (Experience.next_offset of the last experience
     * learned, or the one given to learner_reset). ck is only valid during the call. */
    void (*on_snapshot)(void *ctx, const Checkpoint *ck, int64_t next_offset);
    void *snapshot_ctx;
    int64_t snapshot_every_ms;
} LearnerConfig;

typedef struct Learner Learner;

/* Loads the newest valid checkpoint of cfg->checkpoint_dir (naming and skipping corrupt
 * ones in the log), or initialises a fresh policy, loads the tuner's weights when
 * cfg->triplets, and starts the thread. Returns 0, or -1 with err. */
int learner_start(Learner **out, const LearnerConfig *cfg, char *err, size_t errlen);

/* Writes a final checkpoint (when checkpoints are on), stops the thread, frees. */
void learner_stop(Learner *l);

/* --- the serving thread's side --- */

/* Makes template embeddings known: hashes[i] (of a template's name) has emb[i*E..]. An
 * experience naming an unknown template is dropped. */
void learner_add_templates(Learner *l, const uint64_t *hashes, const float *emb, size_t n);

/* The sampler's temperature and probability floor changed (a reload): the next updates
 * compute probabilities as the serving side now does. */
void learner_set_sampling(Learner *l, float temperature, float min_prob);

/* Hands an experience over (the learner owns its buffers from now on, also on failure).
 * Returns 0, or -1 when the queue is full (the experience is dropped and counted). */
int learner_submit(Learner *l, Experience *e);

/* Free places in the queue: how many experiences learner_submit takes now without
 * dropping any. */
size_t learner_room(Learner *l);

/* Drops every experience queued or pending and, when ck is not NULL, takes ck's policy,
 * optimiser state and version, resuming from next_offset (see on_snapshot). The learner
 * thread applies it before its next update; ck is copied. Distributed learning calls it
 * when this instance becomes the learner (from the newest snapshot) and when it stops
 * being it. */
void learner_reset(Learner *l, const Checkpoint *ck, int64_t next_offset);

/* Copies the latest published policy into params (policy_param_count floats) if it is
 * newer than *version, updating *version. Never blocks: returns false when there is
 * nothing new or the learner is publishing right now. */
bool learner_poll(Learner *l, float *params, uint64_t *version);

/* A model whose head the learner fine-tuned (learner.triplets), written to path. */
typedef struct {
    char path[PATH_MAX];
    char model_id[17];
    int triplets;
    float loss_before, loss_after;
} LearnerTuned;

/* Takes the model the learner fine-tuned last, if any came since the last call. Never
 * blocks: false when there is none or the learner is publishing right now. */
bool learner_poll_model(Learner *l, LearnerTuned *out);

typedef struct {
    uint64_t version;     /* of the latest published policy */
    uint64_t updates;     /* PPO updates run */
    uint64_t experiences; /* experiences learned from */
    uint64_t dropped_stale, dropped_unknown, dropped_full, dropped_bad;
    uint64_t checkpoints, checkpoint_errors;
    bool checkpoint_failing;                      /* the last checkpoint attempt failed */
    uint64_t head_tunes, tune_skips, tune_errors; /* online triplets: written, too few, failed */
    float kl, entropy, loss, mean_reward;         /* of the last update */
} LearnerStats;

LearnerStats learner_stats(Learner *l);

/* --- learning records --- */

/* Bytes of the record of a decision with k eligible templates. */
size_t learner_record_size(const PolicyDims *d, int k);

/* Writes a record into buf (learner_record_size bytes). */
void learner_record_write(void *buf, const PolicyDims *d, uint64_t policy_version, uint64_t episode,
                          uint32_t turn, const float *x, const uint64_t *templates, int k,
                          int action, float logp, float value);

/* Appends the prompt's normalised text to a record of rec_len bytes in buf (cap bytes),
 * cut to TUNER_TEXT_MAX bytes at a UTF-8 boundary, for online triplets. Plain bytes, so
 * the record goes through Redis as it is; a record without it stays valid. Returns the
 * new length, or rec_len when cap is too small. */
size_t learner_record_add_text(void *buf, size_t cap, size_t rec_len, const char *text, size_t len);

/* The text a record carries (*len bytes, not NUL-terminated), or NULL: none, or the
 * record is not of this shape. */
const char *learner_record_text(const void *rec, size_t rec_len, const PolicyDims *d, size_t *len);

/* The layout string checkpoints carry, e.g. "policy/1 D=208 E=64 H=64 Q=32". */
void learner_layout(char *buf, size_t len, const PolicyDims *d);

#endif
