/* The learner thread: a queue in, PPO updates, publication and checkpoints; see learner.h. */
#include "learner.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../kernels/rng.h"
#include "checkpoint.h"
#include "hashmap.h"
#include "log.h"
#include "pd.h"

#define RECORD_MAGIC 0x31524450u /* "PDR1" */
#define TEXT_MAGIC   0x31544450u /* "PDT1" */

typedef struct {
    uint32_t magic;
    uint16_t k, action;
    uint32_t turn, D;
    uint64_t policy_version;
    uint64_t episode;
    float logp, value;
} RecordHeader; /* followed by uint64_t templates[k], then float x[D], then a TextTail */

/* The optional tail of a record (learner.triplets): the prompt's normalised text. */
typedef struct {
    uint32_t magic, len;
} TextTail; /* followed by len bytes of text */

/* The arrays of one PPO batch, grown as needed and reused by the learner thread. */
typedef struct Batch Batch;
struct Batch {
    float *x, *emb, *logp, *vold, *reward;
    int32_t *elig, *off, *action;
    uint64_t *episode;
    size_t cap_n, cap_k; /* samples; eligible entries (also the most table rows) */
    HashMap rows;        /* template hash -> row + 1 in emb */
};

struct Learner {
    LearnerConfig cfg;
    pthread_t thread;
    size_t nparams;

    /* The learner thread's own state. */
    float *params, *m, *v;
    AdamState adam;
    Rng rng;
    uint64_t version;
    Experience *pending;
    size_t npending;
    void *work;
    size_t work_len;
    int64_t last_checkpoint_ms;
    char layout[CHECKPOINT_LAYOUT_MAX];
    Batch batch;

    /* The queue from the serving thread. */
    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    Experience *queue;
    size_t qhead, qlen;
    bool stopping;
    bool reset_pending; /* learner_reset: applied by the thread before its next update */
    bool reset_has_policy;
    Checkpoint reset_to;
    int64_t reset_next_offset;

    /* Distributed learning (cfg.on_snapshot): the experience offset the policy has learned
     * up to, and the version and time of the last snapshot handed out. */
    int64_t next_offset;
    uint64_t snapshot_version;
    int64_t last_snapshot_ms;

    /* Template embeddings by name hash (serving thread writes, learner reads). */
    pthread_mutex_t tlock;
    HashMap templates; /* hash -> float[E] */

    /* The published policy, and the last fine-tuned encoder model. */
    pthread_mutex_t plock;
    float *published;
    uint64_t published_version;
    Tuner *tuner; /* learner thread only; NULL without learner.triplets */
    char tuned_path[PATH_MAX];
    LearnerTuned tuned;
    bool tuned_fresh;

    pthread_mutex_t slock; /* guards stats and the two sampling settings */
    float sampling_temperature, sampling_min_prob;
    LearnerStats stats;
};

/* --- records --- */

size_t learner_record_size(const PolicyDims *d, int k) {
    return sizeof(RecordHeader) + (size_t)k * sizeof(uint64_t) + (size_t)d->D * sizeof(float);
}

void learner_record_write(void *buf, const PolicyDims *d, uint64_t policy_version, uint64_t episode,
                          uint32_t turn, const float *x, const uint64_t *templates, int k,
                          int action, float logp, float value) {
    RecordHeader h = {RECORD_MAGIC, (uint16_t)k,    (uint16_t)action,
                      turn,         (uint32_t)d->D, policy_version,
                      episode,      logp,           value};
    char *p = buf;
    memcpy(p, &h, sizeof h);
    memcpy(p + sizeof h, templates, (size_t)k * sizeof *templates);
    memcpy(p + sizeof h + (size_t)k * sizeof *templates, x, (size_t)d->D * sizeof *x);
}

void learner_layout(char *buf, size_t len, const PolicyDims *d) {
    snprintf(buf, len, "policy/1 D=%d E=%d H=%d Q=%d", d->D, d->E, d->H, d->Q);
}

size_t learner_record_add_text(void *buf, size_t cap, size_t rec_len, const char *text,
                               size_t len) {
    len = tuner_text_cut(text, len);
    TextTail tail = {TEXT_MAGIC, (uint32_t)len};
    if (rec_len + sizeof tail + len > cap) return rec_len;
    memcpy((char *)buf + rec_len, &tail, sizeof tail);
    memcpy((char *)buf + rec_len + sizeof tail, text, len);
    return rec_len + sizeof tail + len;
}

/* The bytes of the record proper: its size, or 0 when it is not of this policy's shape.
 * A record may carry a text tail after it, which must fill the rest exactly. */
static size_t record_base(const void *rec, size_t rec_len, const PolicyDims *d) {
    const RecordHeader *h = rec;
    if (rec_len < sizeof *h || h->magic != RECORD_MAGIC || h->D != (uint32_t)d->D || h->k == 0 ||
        h->action >= h->k)
        return 0;
    size_t base = learner_record_size(d, h->k);
    if (rec_len == base) return base;

    TextTail tail;
    if (rec_len < base + sizeof tail) return 0;
    memcpy(&tail, (const char *)rec + base, sizeof tail); /* may be unaligned */
    bool ok = tail.magic == TEXT_MAGIC && tail.len <= TUNER_TEXT_MAX &&
              rec_len == base + sizeof tail + tail.len;
    return ok ? base : 0;
}

const char *learner_record_text(const void *rec, size_t rec_len, const PolicyDims *d, size_t *len) {
    size_t base = record_base(rec, rec_len, d);
    if (!base || rec_len == base) return NULL;
    *len = rec_len - base - sizeof(TextTail);
    return (const char *)rec + base + sizeof(TextTail);
}

/* The header of a record, or NULL when the record is not one of this policy's shape. */
static const RecordHeader *record_header(const Experience *e, const PolicyDims *d) {
    return record_base(e->record, e->record_len, d) ? e->record : NULL;
}

static const uint64_t *record_templates(const Experience *e) {
    return (const uint64_t *)((const char *)e->record + sizeof(RecordHeader));
}

static const float *record_state(const Experience *e) {
    const RecordHeader *h = e->record;
    return (const float *)((const char *)e->record + sizeof *h + h->k * sizeof(uint64_t));
}

/* --- publication and checkpoints --- */

static void publish(Learner *l) {
    pthread_mutex_lock(&l->plock);
    memcpy(l->published, l->params, l->nparams * sizeof(float));
    l->published_version = l->version;
    pthread_mutex_unlock(&l->plock);
}

bool learner_poll(Learner *l, float *params, uint64_t *version) {
    if (pthread_mutex_trylock(&l->plock)) return false;
    bool fresh = l->published_version != *version;
    if (fresh) {
        memcpy(params, l->published, l->nparams * sizeof(float));
        *version = l->published_version;
    }
    pthread_mutex_unlock(&l->plock);
    return fresh;
}

static void count(Learner *l, uint64_t *field, uint64_t n) {
    pthread_mutex_lock(&l->slock);
    *field += n;
    pthread_mutex_unlock(&l->slock);
}

/* The counter and the flag change together, so /healthz never disagrees with /metrics. */
static void record_checkpoint(Learner *l, bool saved) {
    pthread_mutex_lock(&l->slock);
    if (saved)
        l->stats.checkpoints++;
    else
        l->stats.checkpoint_errors++;
    l->stats.checkpoint_failing = !saved;
    pthread_mutex_unlock(&l->slock);
}

static void write_checkpoint(Learner *l) {
    char err[PATH_MAX + 256];
    if (!l->cfg.checkpoint_dir[0]) return;
    Checkpoint ck = {l->version, l->cfg.model_id, {0}, (uint64_t)l->adam.step, l->params, l->m,
                     l->v,       l->nparams,      0};
    snprintf(ck.layout, sizeof ck.layout, "%s", l->layout);

    if (checkpoint_write(l->cfg.checkpoint_dir, &ck, l->cfg.checkpoint_keep, err, sizeof err)) {
        /* Loud, but not fatal: serving goes on with the policy in memory. */
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "checkpoint failed, the policy is not saved: %s", err);
        record_checkpoint(l, false);
        return;
    }
    record_checkpoint(l, true);
    l->last_checkpoint_ms = (int64_t)pd_mono_ms();
}

static void on_skip(void *ctx, const char *path, const char *why) {
    (void)ctx;
    pd_log(PD_LOG_WARNING, PD_MOD_LEARNER, "skipping checkpoint %s: %s", path, why);
    (void)path;
}

/* Glorot everywhere, then the state side of the score shrunk 100-fold: a fresh policy is
 * then close to uniform over the eligible templates, so it explores them all instead of
 * committing to whichever one a random init happens to favour. The gradient of W2 does not
 * depend on its own scale, so learning starts at full speed. */
static void fresh_policy(float *params, const PolicyDims *d, uint64_t seed) {
    PolicyTensor t[POLICY_NTENSORS];
    policy_layout(t, d);
    policy_init(params, d, seed);
    for (int k = POLICY_FC2_W; k <= POLICY_FC2_B; k++)
        for (size_t i = 0; i < t[k].size; i++) params[t[k].offset + i] *= 0.01f;
}

/* The newest valid checkpoint, or a fresh policy. */
static int restore(Learner *l, char *err, size_t errlen) {
    Checkpoint ck;
    int found = 0;
    if (l->cfg.checkpoint_dir[0]) {
        mkdir(l->cfg.checkpoint_dir, 0750);
        found = checkpoint_load_latest(l->cfg.checkpoint_dir, l->layout, &ck, on_skip, NULL, err,
                                       errlen);
        if (found < 0) return -1;
    }
    if (found && ck.model_id != l->cfg.model_id) {
        pd_log(PD_LOG_WARNING, PD_MOD_LEARNER,
               "checkpoint version %" PRIu64 " was learned on another encoder model; starting "
               "a fresh policy",
               ck.policy_version);
        checkpoint_free(&ck);
        found = 0;
    }
    if (!found) {
        fresh_policy(l->params, &l->cfg.dims, l->cfg.seed);
        pd_log(PD_LOG_INFO, PD_MOD_LEARNER, "starting a fresh policy (%s)", l->layout);
        return 0;
    }
    memcpy(l->params, ck.params, l->nparams * sizeof(float));
    memcpy(l->m, ck.m, l->nparams * sizeof(float));
    memcpy(l->v, ck.v, l->nparams * sizeof(float));
    l->adam.step = (long)ck.step;
    l->version = ck.policy_version;
    pd_log(PD_LOG_NOTICE, PD_MOD_LEARNER,
           "restored policy version %" PRIu64 " from %s (crc32 %08" PRIx32 ")", l->version,
           l->cfg.checkpoint_dir, ck.crc);
    checkpoint_free(&ck);
    return 0;
}

/* --- an update --- */

static int grow(void **p, size_t n, size_t each) {
    void *q = realloc(*p, n * each);
    if (!q) return -1;
    *p = q;
    return 0;
}

static int batch_reserve(Batch *b, const PolicyDims *d, size_t n, size_t k) {
    if (n > b->cap_n) {
        if (grow((void **)&b->x, n, (size_t)d->D * sizeof(float)) ||
            grow((void **)&b->logp, n, sizeof(float)) ||
            grow((void **)&b->vold, n, sizeof(float)) ||
            grow((void **)&b->reward, n, sizeof(float)) ||
            grow((void **)&b->off, n + 1, sizeof(int32_t)) ||
            grow((void **)&b->action, n, sizeof(int32_t)) ||
            grow((void **)&b->episode, n, sizeof(uint64_t)))
            return -1;
        b->cap_n = n;
    }
    if (k > b->cap_k) {
        if (grow((void **)&b->elig, k, sizeof(int32_t)) ||
            grow((void **)&b->emb, k, (size_t)d->E * sizeof(float)))
            return -1;
        b->cap_k = k;
    }
    return 0;
}

static void batch_free(Batch *b) {
    free(b->x), free(b->emb), free(b->logp), free(b->vold), free(b->reward);
    free(b->elig), free(b->off), free(b->action), free(b->episode);
    hashmap_free(&b->rows);
}

/* The row of template hash in the batch's table, adding it; -1 if the template is
 * unknown (its embedding never came: a pack from before a restart). */
static int template_row(Learner *l, uint64_t hash, int *nt) {
    Batch *b = &l->batch;
    intptr_t row = (intptr_t)hashmap_get(&b->rows, hash);
    if (row) return (int)row - 1;
    pthread_mutex_lock(&l->tlock);
    const float *emb = hashmap_get(&l->templates, hash);
    if (emb) memcpy(b->emb + (size_t)*nt * l->cfg.dims.E, emb, l->cfg.dims.E * sizeof(float));
    pthread_mutex_unlock(&l->tlock);
    if (!emb || hashmap_put(&b->rows, hash, (void *)(intptr_t)(*nt + 1))) return -1;
    return (*nt)++;
}

/* Turns pending experiences into the batch arrays; returns the samples kept. */
static int fill_batch(Learner *l, int *nt, int *kmax) {
    const PolicyDims *d = &l->cfg.dims;
    Batch *b = &l->batch;
    size_t k_total = 0;
    for (size_t i = 0; i < l->npending; i++) {
        const RecordHeader *h = record_header(&l->pending[i], d);
        k_total += h ? h->k : 0;
    }
    if (batch_reserve(b, d, l->npending, k_total)) return -1;

    int n = 0;
    *nt = *kmax = 0;
    b->off[0] = 0;
    for (size_t i = 0; i < l->npending; i++) {
        const Experience *e = &l->pending[i];
        const RecordHeader *h = record_header(e, d);
        if (!h) {
            count(l, &l->stats.dropped_bad, 1);
            continue;
        }
        if (l->version > h->policy_version + l->cfg.max_staleness) {
            count(l, &l->stats.dropped_stale, 1);
            continue;
        }
        int32_t *elig = b->elig + b->off[n];
        const uint64_t *tmpl = record_templates(e);
        bool known = true;
        for (int j = 0; j < h->k && known; j++)
            known = (elig[j] = template_row(l, tmpl[j], nt)) >= 0;
        if (!known) {
            count(l, &l->stats.dropped_unknown, 1);
            continue;
        }
        memcpy(b->x + (size_t)n * d->D, record_state(e), (size_t)d->D * sizeof(float));
        b->action[n] = h->action;
        b->logp[n] = h->logp;
        b->vold[n] = h->value;
        b->reward[n] = (float)e->reward;
        b->episode[n] = h->episode ? h->episode : (uint64_t)i + 1;
        b->off[n + 1] = b->off[n] + h->k;
        if (h->k > *kmax) *kmax = h->k;
        n++;
    }
    return n;
}

static int run_ppo(Learner *l, int n, int nt, int kmax, PpoStats *st) {
    const PolicyDims *d = &l->cfg.dims;
    size_t need = ppo_work_size(d, n, l->cfg.ppo.minibatch, kmax, nt);
    if (need > l->work_len) {
        void *w = realloc(l->work, need);
        if (!w) return PPO_E_WORK;
        l->work = w;
        l->work_len = need;
    }
    const Batch *t = &l->batch;
    PpoBatch b = {t->x,    t->emb,    t->elig,
                  t->off,  t->action, t->logp,
                  t->vold, t->reward, l->cfg.episodes ? t->episode : NULL,
                  NULL,    n,         nt};
    return ppo_update(st, l->params, &l->adam, l->work, l->work_len, &b, d, &l->cfg.ppo,
                      &l->cfg.adam, &l->rng);
}

static void record_update(Learner *l, int n, const PpoStats *st) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += l->batch.reward[i];
    pthread_mutex_lock(&l->slock);
    l->stats.version = l->version;
    l->stats.updates++;
    l->stats.experiences += (uint64_t)n;
    l->stats.kl = st->last.kl;
    l->stats.entropy = st->last.entropy;
    l->stats.loss = st->last.loss;
    l->stats.mean_reward = (float)(sum / n);
    pthread_mutex_unlock(&l->slock);
}

/* --- online triplets --- */

/* Hands the tuner every experience whose record carries its prompt's text. Stale ones
 * too: how well a template served a prompt does not depend on the policy version. */
static void feed_tuner(Learner *l) {
    if (!l->tuner) return;
    for (size_t i = 0; i < l->npending; i++) {
        const Experience *e = &l->pending[i];
        size_t len;
        const char *text = learner_record_text(e->record, e->record_len, &l->cfg.dims, &len);
        if (!text) continue;
        const RecordHeader *h = e->record;
        tuner_add(l->tuner, text, len, record_templates(e)[h->action], (float)e->reward);
    }
}

/* Fine-tunes the encoder's head and offers the new model to the serving thread. */
static void tune(Learner *l) {
    char err[PATH_MAX + 256];
    TunerResult r;
    int rc = tuner_run(l->tuner, &r, err, sizeof err);
    if (rc == 0) {
        pd_log(PD_LOG_DEBUG, PD_MOD_LEARNER, "triplets: no fine-tune: %s", err);
        count(l, &l->stats.tune_skips, 1);
        return;
    }
    if (rc < 0) {
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "triplets: fine-tune failed, the model stays: %s", err);
        count(l, &l->stats.tune_errors, 1);
        return;
    }
    pthread_mutex_lock(&l->plock);
    snprintf(l->tuned.path, sizeof l->tuned.path, "%s", l->tuned_path);
    memcpy(l->tuned.model_id, r.model_id, sizeof r.model_id);
    l->tuned.triplets = r.triplets;
    l->tuned.loss_before = r.loss_before, l->tuned.loss_after = r.loss_after;
    l->tuned_fresh = true;
    pthread_mutex_unlock(&l->plock);
    count(l, &l->stats.head_tunes, 1);
    pd_log(PD_LOG_DEBUG, PD_MOD_LEARNER,
           "triplets: %d from %zu experiences, loss %.4f -> %.4f, wrote %s (id %s)", r.triplets,
           r.experiences, r.loss_before, r.loss_after, l->tuned_path, r.model_id);
}

bool learner_poll_model(Learner *l, LearnerTuned *out) {
    if (pthread_mutex_trylock(&l->plock)) return false;
    bool fresh = l->tuned_fresh;
    if (fresh) *out = l->tuned;
    l->tuned_fresh = false;
    pthread_mutex_unlock(&l->plock);
    return fresh;
}

/* --- snapshots for distributed learning --- */

static void snapshot(Learner *l) {
    Checkpoint ck = {l->version, l->cfg.model_id, {0}, (uint64_t)l->adam.step, l->params, l->m,
                     l->v,       l->nparams,      0};
    snprintf(ck.layout, sizeof ck.layout, "%s", l->layout);
    l->cfg.on_snapshot(l->cfg.snapshot_ctx, &ck, l->next_offset);
    l->snapshot_version = l->version;
    l->last_snapshot_ms = (int64_t)pd_mono_ms();
}

/* Milliseconds until a snapshot is due (0: now), or -1 when none is owed. */
static int64_t snapshot_due_in(const Learner *l) {
    if (!l->cfg.on_snapshot || l->snapshot_version == l->version) return -1;
    int64_t left = l->last_snapshot_ms + l->cfg.snapshot_every_ms - (int64_t)pd_mono_ms();
    return left > 0 ? left : 0;
}

/* The thread's side of learner_reset (qlock held). */
static void apply_reset(Learner *l) {
    for (size_t i = 0; i < l->npending; i++) experience_free(&l->pending[i]);
    l->npending = 0;
    if (l->reset_has_policy) {
        Checkpoint *ck = &l->reset_to;
        memcpy(l->params, ck->params, l->nparams * sizeof(float));
        memcpy(l->m, ck->m, l->nparams * sizeof(float));
        memcpy(l->v, ck->v, l->nparams * sizeof(float));
        l->adam.step = (long)ck->step;
        l->version = l->snapshot_version = ck->policy_version;
        l->next_offset = l->reset_next_offset;
        checkpoint_free(ck);
        publish(l);
        pthread_mutex_lock(&l->slock);
        l->stats.version = l->version;
        pthread_mutex_unlock(&l->slock);
    }
    l->reset_pending = l->reset_has_policy = false;
}

/* --- an update, continued --- */

static void update(Learner *l) {
    int nt, kmax;
    PpoStats st;
    int n = fill_batch(l, &nt, &kmax);
    hashmap_free(&l->batch.rows);

    pthread_mutex_lock(&l->slock);
    l->cfg.ppo.temperature = l->sampling_temperature;
    l->cfg.ppo.min_prob = l->sampling_min_prob;
    pthread_mutex_unlock(&l->slock);
    int rc = n > 0 ? run_ppo(l, n, nt, kmax, &st) : 0;
    if (n > 0 && rc == 0) {
        l->version++;
        publish(l);
        record_update(l, n, &st);
        pd_log(PD_LOG_DEBUG, PD_MOD_LEARNER,
               "update %" PRIu64 ": %d experiences, %d epochs, kl %.4f, entropy %.3f", l->version,
               n, st.epochs, st.last.kl, st.last.entropy);
    } else if (rc) {
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER,
               "PPO update refused (%d) on %d experiences; the "
               "published policy stays",
               rc, n);
    }
    feed_tuner(l);
    for (size_t i = 0; i < l->npending; i++) {
        if (l->pending[i].next_offset > l->next_offset) l->next_offset = l->pending[i].next_offset;
        experience_free(&l->pending[i]);
    }
    l->npending = 0;
    if (l->tuner && tuner_due(l->tuner)) tune(l);

    if (l->cfg.checkpoint_every_ms >= 0 &&
        (int64_t)pd_mono_ms() - l->last_checkpoint_ms >= l->cfg.checkpoint_every_ms)
        write_checkpoint(l);
    if (snapshot_due_in(l) == 0) snapshot(l);
}

/* --- the thread --- */

/* Moves queued experiences into pending; waits while there are none, or until a snapshot
 * falls due. Returns false to stop. */
static bool take(Learner *l) {
    pthread_mutex_lock(&l->qlock);
    for (;;) {
        if (l->reset_pending) apply_reset(l);
        int64_t due = snapshot_due_in(l);
        if (l->qlen > 0 || l->stopping || due == 0) break;
        if (due < 0) {
            pthread_cond_wait(&l->qcond, &l->qlock);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)(due / 1000);
        until.tv_nsec += (long)(due % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&l->qcond, &l->qlock, &until);
    }
    bool go = !l->stopping;
    while (l->qlen > 0 && l->npending < (size_t)l->cfg.batch_size) {
        l->pending[l->npending++] = l->queue[l->qhead];
        l->qhead = (l->qhead + 1) % l->cfg.queue_max;
        l->qlen--;
    }
    pthread_mutex_unlock(&l->qlock);
    return go;
}

static void *run(void *arg) {
    Learner *l = arg;
    while (take(l)) {
        if (l->npending >= (size_t)l->cfg.batch_size)
            update(l);
        else if (snapshot_due_in(l) == 0)
            snapshot(l);
    }
    return NULL;
}

int learner_start(Learner **out, const LearnerConfig *cfg, char *err, size_t errlen) {
    Learner *l = pd_xcalloc(1, sizeof *l);
    l->cfg = *cfg;
    if (l->cfg.queue_max < (size_t)cfg->batch_size) l->cfg.queue_max = (size_t)cfg->batch_size;
    l->nparams = policy_param_count(&cfg->dims);
    l->params = pd_xcalloc(l->nparams, sizeof(float));
    l->m = pd_xcalloc(l->nparams, sizeof(float));
    l->v = pd_xcalloc(l->nparams, sizeof(float));
    l->published = pd_xcalloc(l->nparams, sizeof(float));
    l->pending = pd_xcalloc((size_t)cfg->batch_size, sizeof *l->pending);
    l->queue = pd_xcalloc(l->cfg.queue_max, sizeof *l->queue);
    l->adam = (AdamState){l->m, l->v, 0};
    rng_seed(&l->rng, cfg->seed);
    learner_layout(l->layout, sizeof l->layout, &cfg->dims);
    pthread_mutex_init(&l->qlock, NULL);
    pthread_cond_init(&l->qcond, NULL);
    pthread_mutex_init(&l->tlock, NULL);
    pthread_mutex_init(&l->plock, NULL);
    pthread_mutex_init(&l->slock, NULL);
    l->sampling_temperature = l->cfg.ppo.temperature;
    l->sampling_min_prob = l->cfg.ppo.min_prob;

    if (restore(l, err, errlen)) goto fail;
    if (cfg->triplets && tuner_new(&l->tuner, &cfg->tuner, err, errlen)) goto fail;
    if (cfg->triplets) snprintf(l->tuned_path, sizeof l->tuned_path, "%s", cfg->tuner.out_path);
    /* The caller's strings need not outlive the start (the tuner copied them). */
    l->cfg.tuner.model_path = l->cfg.tuner.out_path = l->cfg.tuner.base_model_id = NULL;
    l->last_checkpoint_ms = l->last_snapshot_ms = (int64_t)pd_mono_ms();
    l->snapshot_version = l->version; /* what it restored is no news to the cluster */
    publish(l);
    l->stats.version = l->version;
    if (pthread_create(&l->thread, NULL, run, l)) {
        snprintf(err, errlen, "cannot start the learner thread");
        goto fail;
    }
    *out = l;
    return 0;

fail:
    tuner_free(l->tuner);
    free(l->params);
    free(l->m);
    free(l->v);
    free(l->published);
    free(l->pending);
    free(l->queue);
    free(l);
    return -1;
}

void learner_stop(Learner *l) {
    if (!l) return;
    pthread_mutex_lock(&l->qlock);
    l->stopping = true;
    pthread_cond_signal(&l->qcond);
    pthread_mutex_unlock(&l->qlock);
    pthread_join(l->thread, NULL);

    write_checkpoint(l);
    if (snapshot_due_in(l) >= 0) snapshot(l);
    if (l->reset_pending && l->reset_has_policy) checkpoint_free(&l->reset_to);
    for (size_t i = 0; i < l->npending; i++) experience_free(&l->pending[i]);
    for (size_t i = 0; i < l->qlen; i++)
        experience_free(&l->queue[(l->qhead + i) % l->cfg.queue_max]);
    for (size_t i = 0; i < l->templates.cap; i++)
        if (l->templates.keys[i]) free(l->templates.values[i]);
    hashmap_free(&l->templates);
    tuner_free(l->tuner);
    free(l->params);
    free(l->m);
    free(l->v);
    free(l->published);
    free(l->pending);
    free(l->queue);
    free(l->work);
    batch_free(&l->batch);
    free(l);
}

void learner_set_sampling(Learner *l, float temperature, float min_prob) {
    pthread_mutex_lock(&l->slock);
    l->sampling_temperature = temperature;
    l->sampling_min_prob = min_prob;
    pthread_mutex_unlock(&l->slock);
}

void learner_add_templates(Learner *l, const uint64_t *hashes, const float *emb, size_t n) {
    size_t E = (size_t)l->cfg.dims.E;
    pthread_mutex_lock(&l->tlock);
    for (size_t i = 0; i < n; i++) {
        float *copy = hashmap_get(&l->templates, hashes[i]);
        if (!copy && (copy = malloc(E * sizeof *copy)) &&
            hashmap_put(&l->templates, hashes[i], copy)) {
            free(copy);
            continue;
        }
        if (copy) memcpy(copy, emb + i * E, E * sizeof *copy);
    }
    pthread_mutex_unlock(&l->tlock);
}

int learner_submit(Learner *l, Experience *e) {
    pthread_mutex_lock(&l->qlock);
    bool full = l->qlen == l->cfg.queue_max;
    if (!full) {
        l->queue[(l->qhead + l->qlen) % l->cfg.queue_max] = *e;
        l->qlen++;
        pthread_cond_signal(&l->qcond);
    }
    pthread_mutex_unlock(&l->qlock);
    if (full) {
        experience_free(e);
        count(l, &l->stats.dropped_full, 1);
        return -1;
    }
    memset(e, 0, sizeof *e);
    return 0;
}

size_t learner_room(Learner *l) {
    pthread_mutex_lock(&l->qlock);
    size_t room = l->cfg.queue_max - l->qlen;
    pthread_mutex_unlock(&l->qlock);
    return room;
}

static int copy_checkpoint(Checkpoint *to, const Checkpoint *from) {
    size_t bytes = from->nparams * sizeof(float);
    *to = *from;
    to->params = malloc(bytes), to->m = malloc(bytes), to->v = malloc(bytes);
    if (!to->params || !to->m || !to->v) {
        checkpoint_free(to);
        return -1;
    }
    memcpy(to->params, from->params, bytes);
    memcpy(to->m, from->m, bytes);
    memcpy(to->v, from->v, bytes);
    return 0;
}

void learner_reset(Learner *l, const Checkpoint *ck, int64_t next_offset) {
    Checkpoint copy = {0};
    bool has_policy = ck && ck->nparams == l->nparams;
    if (has_policy && copy_checkpoint(&copy, ck)) {
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "no memory to take policy version %" PRIu64,
               ck->policy_version);
        has_policy = false;
    }

    pthread_mutex_lock(&l->qlock);
    for (size_t i = 0; i < l->qlen; i++)
        experience_free(&l->queue[(l->qhead + i) % l->cfg.queue_max]);
    l->qlen = 0;
    if (l->reset_pending && l->reset_has_policy) checkpoint_free(&l->reset_to);
    l->reset_pending = true;
    l->reset_has_policy = has_policy;
    l->reset_to = copy;
    l->reset_next_offset = next_offset;
    pthread_cond_signal(&l->qcond);
    pthread_mutex_unlock(&l->qlock);
}

LearnerStats learner_stats(Learner *l) {
    pthread_mutex_lock(&l->slock);
    LearnerStats s = l->stats;
    pthread_mutex_unlock(&l->slock);
    return s;
}
