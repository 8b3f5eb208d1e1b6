/*
 * Online triplets: the learner fine-tunes the encoder's projection head from the reward
 * stream (learner.triplets). Prompts whose chosen template scored high are positives of
 * each other; prompts for which the same template scored low are their negatives. So
 * the vectors of prompts that one template serves well move together and away from
 * those it serves badly, which is the distinction the policy has to draw.
 *
 * A Tuner keeps the last TUNER_BUFFER experiences that carry their prompt's text (the
 * learning record's text tail, learner.h), and its own copy of the weights of the model
 * serving now (a Model is single-thread, and the head changes here first). Every
 * `every` experiences, tuner_run builds triplets (below), encodes the texts it needs once
 * (the body is frozen, so a text's pooled vector never changes and is kept), takes
 * `steps` Adam steps on proj.weight and proj.bias alone (gradient norm clipped at 1.0,
 * margin 1.0, kernels/triplet.h) and writes the whole model atomically with
 * base_model_id set: a new file, so a new model id.
 *
 * Triplets, per template with at least TUNER_MIN_PER_TEMPLATE experiences: with q =
 * ceil(m / 4) of its m rewards sorted, "high" are those at least the q-th largest, "low"
 * those at most the q-th smallest and strictly below every high one (ties at a threshold
 * are all in). Anchor and positive are two high prompts of different texts, the
 * negative a low prompt of a third text, all of that template. Templates take turns;
 * at most TUNER_MAX_TRIPLETS distinct triplets are drawn, seeded.
 *
 * Does not log; the learner thread calls it and decides. Single-threaded.
 */
#ifndef PD_TUNER_H
#define PD_TUNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kernels/triplet.h"

#define TUNER_BUFFER           4096 /* recent experiences kept */
#define TUNER_MIN_PER_TEMPLATE 8    /* fewer rewards do not make quartiles */
#define TUNER_MAX_TRIPLETS     256  /* drawn per fine-tune */
#define TUNER_MIN_TRIPLETS     16   /* fewer: the fine-tune is skipped */
#define TUNER_MARGIN           1.0f
#define TUNER_CLIP             1.0f /* bound of the head gradient's norm */

typedef struct {
    int every;                 /* experiences between fine-tunes */
    int steps;                 /* Adam steps per fine-tune */
    double lr;                 /* Adam's learning rate */
    uint64_t seed;             /* of the triplet draws */
    const char *model_path;    /* weights to start from: the model serving now */
    const char *out_path;      /* where a tuned model is written */
    const char *base_model_id; /* the configured model's id, recorded in the file */
    size_t max_tokens;         /* tokens of a text read, as encoder.max_tokens */
} TunerConfig;

typedef struct Tuner Tuner;

/* Loads the weights of cfg->model_path (validated whole). Strings are copied. Returns 0,
 * or -1 with err. */
int tuner_new(Tuner **out, const TunerConfig *cfg, char *err, size_t errlen);
void tuner_free(Tuner *t);

/* Keeps one experience: the prompt's normalised text (len bytes, copied, cut to
 * TUNER_TEXT_MAX at a UTF-8 boundary), the chosen template's name hash and its reward.
 * The oldest goes when the buffer is full. Out of memory only loses the experience. */
void tuner_add(Tuner *t, const char *text, size_t len, uint64_t tmpl, float reward);

/* Whether `every` experiences came since the last tuner_run. */
bool tuner_due(const Tuner *t);

typedef struct {
    int triplets;                  /* trained on */
    size_t experiences;            /* in the buffer */
    float loss_before, loss_after; /* mean triplet loss before the first and after the last step */
    char model_id[17];             /* of the file written */
} TunerResult;

/* Fine-tunes the head on the buffer and writes cfg->out_path. Returns 1 when a new model
 * was written (r filled), 0 when there was nothing to learn (too few triplets, or all
 * already beyond the margin; err says which; nothing changed), or -1 with err (out of
 * memory, the file cannot be written: the weights stay as they were). */
int tuner_run(Tuner *t, TunerResult *r, char *err, size_t errlen);

/* --- the parts, for tests --- */

#define TUNER_TEXT_MAX 512 /* bytes of a prompt's text kept */

/* The length of text[0..len) cut to at most TUNER_TEXT_MAX bytes, at a UTF-8 character
 * boundary (a cut character would tokenise as garbage). */
size_t tuner_text_cut(const char *text, size_t len);

typedef struct {
    uint64_t tmpl; /* the chosen template's name hash */
    uint64_t text; /* hash of the normalised text */
    float reward;
} TunerSample;

/* Draws up to cap triplets (indices into s) by the rule above, seeded. Returns the
 * count, or -1 when out of memory. */
int tuner_triplets(Triplet *out, int cap, const TunerSample *s, size_t n, uint64_t seed);

/* Takes steps Adam steps (lr, clipping at TUNER_CLIP, margin TUNER_MARGIN) on the head:
 * head holds proj.weight (P, C) then proj.bias (P), updated in place, from n triplets of
 * pooled vectors anchor, positive, negative (n, C) each. loss_before and loss_after
 * receive the mean loss at the first step and after the last. Returns 0, or -1 when out
 * of memory (head untouched). */
int tuner_fit_head(float *head, const float *anchor, const float *positive, const float *negative,
                   int n, int C, int P, int steps, double lr, float *loss_before,
                   float *loss_after);

#endif
