/* Online triplets: the buffer, the triplets, the head's fine-tune, the file; see tuner.h. */
#include "tuner.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/adam.h"
#include "../kernels/rng.h"
#include "hashmap.h"
#include "train.h"

/* One buffered experience. Its pooled vector lives in Tuner.pooled at the same slot. */
typedef struct {
    char *text; /* normalised, NUL-terminated; NULL: the slot is empty */
    uint64_t tmpl, hash;
    float reward;
    bool encoded; /* pooled vector computed */
} Entry;

struct Tuner {
    TunerConfig cfg;
    char model_path[PATH_MAX], out_path[PATH_MAX], base_id[17];

    float *params; /* the whole model; only the head changes */
    EncConfig enc;
    TokConfig tok;
    size_t n_params;

    Entry ring[TUNER_BUFFER];
    float *pooled; /* TUNER_BUFFER rows of C */
    size_t head, count;
    long since; /* experiences added since the last run */
    uint64_t runs;
};

/* --- the buffer --- */

size_t tuner_text_cut(const char *text, size_t len) {
    if (len <= TUNER_TEXT_MAX) return len;
    len = TUNER_TEXT_MAX;
    /* Step back over continuation bytes (10xxxxxx) to the first byte of a character. */
    while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80) len--;
    return len;
}

int tuner_new(Tuner **out, const TunerConfig *cfg, char *err, size_t errlen) {
    char id[17];
    Tuner *t = calloc(1, sizeof *t);
    if (!t) return snprintf(err, errlen, "out of memory"), -1;
    t->cfg = *cfg;
    snprintf(t->model_path, sizeof t->model_path, "%s", cfg->model_path);
    snprintf(t->out_path, sizeof t->out_path, "%s", cfg->out_path);
    snprintf(t->base_id, sizeof t->base_id, "%s", cfg->base_model_id);
    t->cfg.model_path = t->model_path, t->cfg.out_path = t->out_path;
    t->cfg.base_model_id = t->base_id;

    if (train_load_model(&t->params, &t->enc, &t->tok, id, t->model_path, err, errlen)) {
        free(t);
        return -1;
    }
    t->n_params = enc_param_count(&t->enc);
    t->pooled = malloc((size_t)TUNER_BUFFER * (size_t)t->enc.d_model * sizeof *t->pooled);
    if (!t->pooled) {
        tuner_free(t);
        return snprintf(err, errlen, "out of memory for the triplet buffer"), -1;
    }
    *out = t;
    return 0;
}

void tuner_free(Tuner *t) {
    if (!t) return;
    for (size_t i = 0; i < TUNER_BUFFER; i++) free(t->ring[i].text);
    free(t->params);
    free(t->pooled);
    free(t);
}

void tuner_add(Tuner *t, const char *text, size_t len, uint64_t tmpl, float reward) {
    len = tuner_text_cut(text, len);
    char *copy = malloc(len + 1);
    if (!copy) return;
    memcpy(copy, text, len);
    copy[len] = '\0';

    size_t slot = (t->head + t->count) % TUNER_BUFFER;
    if (t->count == TUNER_BUFFER) {
        slot = t->head; /* the oldest goes */
        t->head = (t->head + 1) % TUNER_BUFFER;
        free(t->ring[slot].text);
    } else {
        t->count++;
    }
    t->ring[slot] = (Entry){copy, tmpl, hashmap_hash(copy, len, 0), reward, false};
    t->since++;
}

bool tuner_due(const Tuner *t) {
    return t->since >= t->cfg.every;
}

/* --- triplets --- */

typedef struct {
    uint64_t tmpl;
    float reward;
    int32_t idx;
} Ranked;

/* By template, then reward, then position: a total order, so the draw is reproducible. */
static int cmp_ranked(const void *pa, const void *pb) {
    const Ranked *a = pa, *b = pb;
    if (a->tmpl != b->tmpl) return a->tmpl < b->tmpl ? -1 : 1;
    if (a->reward != b->reward) return a->reward < b->reward ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

typedef struct {
    size_t lo, nlo; /* low scorers: r[lo .. lo + nlo) */
    size_t hi, nhi; /* high scorers */
} Group;

/* The high and low ranges of one template's sorted rewards r[g0 .. g1); false when it
 * cannot give a triplet. */
static bool split_group(Group *g, const Ranked *r, size_t g0, size_t g1) {
    size_t m = g1 - g0, q = (m + 3) / 4;
    if (m < TUNER_MIN_PER_TEMPLATE) return false;
    float hi_min = r[g1 - q].reward, lo_max = r[g0 + q - 1].reward;

    size_t hi = g1 - q, lo_end = g0;
    while (hi > g0 && r[hi - 1].reward >= hi_min) hi--; /* ties at the threshold are in */
    while (lo_end < g1 && r[lo_end].reward <= lo_max && r[lo_end].reward < hi_min) lo_end++;
    *g = (Group){g0, lo_end - g0, hi, g1 - hi};
    return g->nhi >= 2 && g->nlo >= 1;
}

/* One triplet of group g, or false when the draw hit the same text twice. */
static bool draw(Triplet *t, const Group *g, const Ranked *r, const TunerSample *s, Rng *rng) {
    const Ranked *a = &r[g->hi + rng_below(rng, (uint32_t)g->nhi)];
    const Ranked *p = &r[g->hi + rng_below(rng, (uint32_t)g->nhi)];
    const Ranked *n = &r[g->lo + rng_below(rng, (uint32_t)g->nlo)];
    uint64_t ta = s[a->idx].text, tp = s[p->idx].text, tn = s[n->idx].text;
    /* The same text twice is no evidence about wording: its distance is zero either way. */
    if (ta == tp || tn == ta || tn == tp) return false;
    *t = (Triplet){a->idx, p->idx, n->idx};
    return true;
}

/* Draws for group g until one new triplet is found, at most 8 tries. */
static bool draw_new(Triplet *t, const Group *g, const Ranked *r, const TunerSample *s, Rng *rng,
                     HashMap *drawn) {
    for (int tries = 0; tries < 8; tries++) {
        if (!draw(t, g, r, s, rng)) continue;
        int32_t key[3] = {t->a, t->p, t->n};
        uint64_t h = hashmap_hash(key, sizeof key, 0x747269);
        if (hashmap_get(drawn, h)) continue;
        /* Out of memory here only lets a repeat through later. */
        hashmap_put(drawn, h, (void *)1);
        return true;
    }
    return false;
}

int tuner_triplets(Triplet *out, int cap, const TunerSample *s, size_t n, uint64_t seed) {
    Ranked *r = malloc((n ? n : 1) * sizeof *r);
    Group *groups = malloc((n ? n : 1) * sizeof *groups);
    if (!r || !groups) {
        free(r), free(groups);
        return -1;
    }
    for (size_t i = 0; i < n; i++) r[i] = (Ranked){s[i].tmpl, s[i].reward, (int32_t)i};
    qsort(r, n, sizeof *r, cmp_ranked);

    size_t ng = 0;
    for (size_t g0 = 0, g1; g0 < n; g0 = g1) {
        for (g1 = g0 + 1; g1 < n && r[g1].tmpl == r[g0].tmpl;) g1++;
        if (split_group(&groups[ng], r, g0, g1)) ng++;
    }

    /* Templates take turns, so that a busy template does not drown the others; a
     * triplet is drawn once (a small buffer must not look like many triplets); the
     * draws end when a whole round of turns found nothing new. */
    Rng rng;
    HashMap drawn = {0};
    rng_seed(&rng, seed);
    int got = 0;
    for (size_t turn = 0, idle = 0; got < cap && idle < ng; turn++) {
        bool found = draw_new(&out[got], &groups[turn % ng], r, s, &rng, &drawn);
        got += found;
        idle = found ? 0 : idle + 1;
    }
    hashmap_free(&drawn);
    free(r);
    free(groups);
    return got;
}

/* --- the fine-tune --- */

int tuner_fit_head(float *head, const float *anchor, const float *positive, const float *negative,
                   int n, int C, int P, int steps, double lr, float *loss_before,
                   float *loss_after) {
    size_t nh = (size_t)P * C + (size_t)P;
    float *grad = calloc(nh, sizeof *grad), *m = calloc(nh, sizeof *m), *v = calloc(nh, sizeof *v);
    float *work = malloc(triplet_head_work_floats(n, C, P) * sizeof *work);
    if (!grad || !m || !v || !work) {
        free(grad), free(m), free(v), free(work);
        return -1;
    }
    AdamConfig ac = adam_defaults();
    ac.lr = lr;
    float *w = head, *b = head + (size_t)P * C;

    /* Fresh moments per fine-tune: runs are far apart and the data moved meanwhile. */
    for (int step = 1; step <= steps; step++) {
        memset(grad, 0, nh * sizeof *grad);
        float loss = triplet_head_explicit(grad, grad + (size_t)P * C, work, anchor, positive,
                                           negative, n, w, b, C, P, TUNER_MARGIN);
        if (step == 1) *loss_before = loss;
        float scale = adam_clip_scale(adam_grad_norm(grad, nh), TUNER_CLIP);
        adam_step(head, m, v, grad, nh, adam_lr(&ac, step), scale, &ac, step);
    }
    *loss_after = triplet_head_explicit(grad, grad + (size_t)P * C, work, anchor, positive,
                                        negative, n, w, b, C, P, TUNER_MARGIN);
    if (steps <= 0) *loss_before = *loss_after;
    free(grad), free(m), free(v), free(work);
    return 0;
}

/* Encodes the buffered texts the triplets use that have no pooled vector yet. */
static int encode_needed(Tuner *t, const Triplet *trip, int n, const size_t *slot, char *err,
                         size_t errlen) {
    size_t C = (size_t)t->enc.d_model, P = (size_t)t->enc.proj_dim, k = 0;
    size_t *todo = malloc(3 * (size_t)n * sizeof *todo);
    const char **texts = malloc(3 * (size_t)n * sizeof *texts);
    float *vecs = malloc(3 * (size_t)n * P * sizeof *vecs);
    float *pooled = malloc(3 * (size_t)n * C * sizeof *pooled);
    int rc = todo && texts && vecs && pooled ? 0 : -1;

    if (rc) snprintf(err, errlen, "out of memory encoding the buffered prompts");
    for (int i = 0; rc == 0 && i < n; i++) {
        int32_t idx[3] = {trip[i].a, trip[i].p, trip[i].n};
        for (int j = 0; j < 3; j++) {
            Entry *e = &t->ring[slot[idx[j]]];
            if (e->encoded) continue;
            e->encoded = true; /* listed once; set for good below, or undone on failure */
            todo[k] = slot[idx[j]], texts[k++] = e->text;
        }
    }
    if (rc == 0 && k)
        rc = train_encode_texts(vecs, pooled, texts, k, t->params, &t->enc, &t->tok,
                                t->cfg.max_tokens, err, errlen);
    for (size_t i = 0; i < k; i++) {
        if (rc == 0) memcpy(t->pooled + todo[i] * C, pooled + i * C, C * sizeof *pooled);
        t->ring[todo[i]].encoded = rc == 0;
    }
    free(todo), free(texts), free(vecs), free(pooled);
    return rc;
}

/* Gathers the pooled vectors of the triplets' anchors, positives and negatives. */
static void gather(const Tuner *t, float *apn, const Triplet *trip, int n, const size_t *slot) {
    size_t C = (size_t)t->enc.d_model;
    for (int i = 0; i < n; i++) {
        const int32_t idx[3] = {trip[i].a, trip[i].p, trip[i].n};
        for (int j = 0; j < 3; j++)
            memcpy(apn + ((size_t)j * n + i) * C, t->pooled + slot[idx[j]] * C, C * sizeof *apn);
    }
}

/* Trains the head on the triplets and writes the model; the head is restored on failure,
 * so the weights here stay those of a file that exists. Returns 0, 1 when there was
 * nothing to learn (err says so), or -1 with err. */
static int fit_and_write(Tuner *t, TunerResult *r, const Triplet *trip, int n, const size_t *slot,
                         char *err, size_t errlen) {
    int C = t->enc.d_model, P = t->enc.proj_dim;
    size_t nh = (size_t)P * C + (size_t)P, C3 = 3 * (size_t)n * (size_t)C;
    float *head = t->params + t->n_params - nh;
    float *apn = malloc(C3 * sizeof *apn), *backup = malloc(nh * sizeof *backup);
    if (!apn || !backup) {
        free(apn), free(backup);
        return snprintf(err, errlen, "out of memory for %d triplets", n), -1;
    }
    memcpy(backup, head, nh * sizeof *head);
    gather(t, apn, trip, n, slot);

    int rc = tuner_fit_head(head, apn, apn + (size_t)n * C, apn + 2 * (size_t)n * C, n, C, P,
                            t->cfg.steps, t->cfg.lr, &r->loss_before, &r->loss_after);
    if (rc) snprintf(err, errlen, "out of memory for the head's fine-tune");
    /* Every triplet already beyond the margin: no gradient, the same weights; writing
     * them would announce a "new" model with the old id. */
    if (rc == 0 && r->loss_before == 0.0f) {
        snprintf(err, errlen, "the head already separates all %d triplets (loss 0)", n);
        free(apn), free(backup);
        return 1;
    }
    char examples[32];
    snprintf(examples, sizeof examples, "%d", n);
    const char *meta[] = {"base_model_id", t->base_id, "trained_by",     "promptd online triplets",
                          "train_mode",    "head",     "train_examples", examples};
    if (rc == 0)
        rc = train_write_model(t->out_path, &t->enc, &t->tok, t->params, meta, 4, r->model_id, err,
                               errlen);
    if (rc) memcpy(head, backup, nh * sizeof *head);
    free(apn), free(backup);
    return rc;
}

int tuner_run(Tuner *t, TunerResult *r, char *err, size_t errlen) {
    size_t n = t->count;
    TunerSample *s = malloc((n ? n : 1) * sizeof *s);
    size_t *slot = malloc((n ? n : 1) * sizeof *slot);
    Triplet *trip = malloc(TUNER_MAX_TRIPLETS * sizeof *trip);
    int got = s && slot && trip ? 0 : -1;

    memset(r, 0, sizeof *r);
    r->experiences = n;
    t->since = 0;
    for (size_t i = 0; got == 0 && i < n; i++) {
        const Entry *e = &t->ring[slot[i] = (t->head + i) % TUNER_BUFFER];
        s[i] = (TunerSample){e->tmpl, e->hash, e->reward};
    }
    if (got == 0) got = tuner_triplets(trip, TUNER_MAX_TRIPLETS, s, n, t->cfg.seed + t->runs++);
    int rc = got < 0 ? -1 : got < TUNER_MIN_TRIPLETS ? 0 : 1;
    if (rc < 0) snprintf(err, errlen, "out of memory building triplets");
    if (rc == 0)
        snprintf(err, errlen, "only %d triplets from %zu experiences (at least %d needed)", got, n,
                 TUNER_MIN_TRIPLETS);
    if (rc == 1 && encode_needed(t, trip, got, slot, err, errlen)) rc = -1;
    if (rc == 1) {
        int fit = fit_and_write(t, r, trip, got, slot, err, errlen);
        rc = fit < 0 ? -1 : fit == 1 ? 0 : 1;
    }
    if (rc == 1) r->triplets = got;
    free(s), free(slot), free(trip);
    return rc;
}
