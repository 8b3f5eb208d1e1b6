/* Batch stages (decode, normalise, embed, select, render, produce, journal) and the
 * reward path; see pipeline.h. */
#include "pipeline.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../kernels/normalize.h"
#include "hashmap.h"
#include "log.h"
#include "message.h"
#include "observe.h"
#include "pd.h"
#include "stats.h"

/* One message of the batch as it moves through the stages. */
typedef struct {
    rd_kafka_message_t *m;
    Prompt prompt;
    MsgReason reason; /* MSG_OK, or why it becomes a dead letter */
    char why[1024];
    size_t norm_off, norm_len; /* the normalised text, in Pipeline.norm */
    const float *vector;       /* the semantic vector, in Pipeline.vectors */
    Selection sel;             /* the policy's choice */
    size_t out_off, out_len;   /* the rendered prompt, in Pipeline.rendered */
    size_t rec_off, rec_len;   /* the learning record, in Pipeline.records */
} Slot;

/* A growable byte arena for the texts of one batch. */
typedef struct {
    char *data;
    size_t len, cap;
} Arena;

/* A reward event read before its prompt, which is being read again (kafka_replaying),
 * decoded; its offset is done so that it stops no other event. It is kept in memory only:
 * if promptd stops before the join, it is lost, as every such event was (counted unknown)
 * before this wait. */
typedef struct {
    RewardEvent ev;
    size_t bytes; /* its message's size, for PARK_MAX_BYTES */
} ParkedReward;

/* Bounds on what is set aside; past them an event is counted unknown, as without the
 * wait. A crash re-reads at most kafka.max_inflight prompts and what was acknowledged
 * since the last commit, so these are only reached with reward events for ids no prompt
 * has (or had within reward.window). */
#define PARK_MAX_EVENTS 4096
#define PARK_MAX_BYTES  (16u << 20)

struct Pipeline {
    PipelineParts parts;
    Kafka *kafka;
    Cache *cache;
    Model *model;
    Pack *pack;
    size_t max_bytes;
    size_t max_dead_payload;
    double reward_clip;
    bool record_text; /* learner.triplets: the learner wants each prompt's text */
    char *prompts_topic, *rewards_topic;

    Slot *slots;
    size_t slots_cap;
    Arena norm;     /* normalised texts, NUL-terminated */
    Arena rendered; /* rendered prompts */
    Arena records;  /* learning records */
    float *x;       /* one state */
    size_t x_cap;
    float features[PACK_FEATURES_MAX];
    float *policy_copy;       /* where a new policy from the learner lands */
    bool policy_started;      /* the learner's restored policy was taken */
    uint64_t held_retry_ms;   /* when held reward events are next offered again */
    uint64_t parked_retry_ms; /* when those set aside for their decisions are */
    ParkedReward *parked;     /* set aside while the prompts are read again */
    size_t parked_len, parked_cap, parked_bytes;
    bool rewards_wait; /* reward events wait for the journal (logged once) */
    int32_t *norm_work;
    size_t norm_work_cap;
    bool *eligible; /* one flag per template of the pack */
    size_t eligible_cap;
    float *vectors; /* the batch's semantic vectors, one row per slot encoded */
    size_t vectors_cap;
    const char **texts; /* the batch's normalised texts, for the encoder */
    size_t *lens;
    size_t texts_cap, lens_cap;
    const char **session_ids; /* the batch's sessions, read from Redis in one round trip */
    size_t *session_lens;
    size_t session_ids_cap, session_lens_cap;
    CacheKey *keys; /* cache keys of the batch's texts; the misses' gathered after them */
    bool *found;
    size_t *miss; /* rows of the batch that missed the cache */
    float *fresh; /* the misses' new vectors */
    size_t keys_cap, found_cap, miss_cap, fresh_cap;

    MsgBuf render_buf, out;
};

/* Grows *buf to hold at least need elements of size bytes. */
static int reserve(void **buf, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *grown = realloc(*buf, n * size);
    if (!grown) return -1;
    *buf = grown;
    *cap = n;
    return 0;
}

static int arena_reserve(Arena *a, size_t more) {
    return reserve((void **)&a->data, &a->cap, a->len + more, 1);
}

Pipeline *pipeline_new(const Config *c, const PipelineParts *parts) {
    Pipeline *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->parts = *parts;
    p->kafka = parts->kafka;
    p->cache = parts->cache;
    p->model = parts->model;
    p->prompts_topic = strdup(c->topic_prompts);
    p->rewards_topic = strdup(c->topic_rewards);
    p->record_text = c->learner_triplets && c->learner_enabled;
    size_t D = (size_t)selector_policy_dims(parts->selector)->D;
    if (!p->prompts_topic || !p->rewards_topic ||
        reserve((void **)&p->x, &p->x_cap, D, sizeof *p->x)) {
        pipeline_free(p);
        return NULL;
    }
    pipeline_reconfigure(p, c);
    return p;
}

void pipeline_free(Pipeline *p) {
    if (!p) return;
    free(p->slots);
    free(p->norm.data);
    free(p->rendered.data);
    free(p->records.data);
    free(p->x);
    free(p->policy_copy);
    free(p->rewards_topic);
    free(p->norm_work);
    free(p->eligible);
    free(p->vectors);
    free(p->texts);
    free(p->lens);
    free(p->session_ids);
    free(p->session_lens);
    free(p->keys);
    free(p->found);
    free(p->miss);
    free(p->fresh);
    msg_buf_free(&p->render_buf);
    msg_buf_free(&p->out);
    free(p->prompts_topic);
    if (p->parked_len)
        pd_log(PD_LOG_WARNING, PD_MOD_LEARNER,
               "%zu reward event(s) waiting for their prompts to be decided again are dropped",
               p->parked_len);
    for (size_t i = 0; i < p->parked_len; i++) msg_reward_free(&p->parked[i].ev);
    free(p->parked);
    free(p);
}

void pipeline_reconfigure(Pipeline *p, const Config *c) {
    p->max_bytes = (size_t)c->prompt_max_bytes;
    p->max_dead_payload = (size_t)c->dead_letter_max_payload;
    p->reward_clip = c->reward_clip;
}

static uint64_t template_hash(const char *name) {
    return hashmap_hash(name, strlen(name), 0x74656d706c617465u);
}

/* Normalises and encodes the about sentences of pack's templates into emb [n, E]. */
static int encode_abouts(Pipeline *p, const Pack *pack, float *emb, char *err, size_t errlen) {
    size_t n = pack_template_count(pack), E = (size_t)model_dim(p->model);
    const char **texts = calloc(n, sizeof *texts);
    size_t *lens = calloc(n, sizeof *lens);
    int rc = texts && lens ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *about = pack_template(pack, i)->about;
        size_t len = strlen(about), cap = norm_out_cap(len), wcap = norm_work_cap(len);
        char *out = malloc(cap);
        int32_t *work = malloc(wcap * sizeof *work);
        ptrdiff_t got = out && work ? norm_text(out, cap, about, len, work, wcap, NORM_MASK) : -1;
        free(work);
        texts[i] = out;
        lens[i] = got < 0 ? 0 : (size_t)got;
        if (got < 0) rc = -1;
    }
    if (rc == 0)
        rc = model_encode(p->model, texts, lens, n, emb, err, errlen);
    else
        snprintf(err, errlen, "out of memory encoding the templates");
    for (size_t i = 0; texts && i < n; i++) free((char *)texts[i]);
    free(texts);
    free(lens);
    (void)E;
    return rc;
}

/* Template descriptions share most of their wording ("Summarise ...", "Explain ..."), so
 * their embeddings sit close together (cosines of 0.7 to 0.9) and the policy would spend
 * most of its learning pulling them apart. Removing the pack's mean direction and
 * re-normalising keeps only what tells the templates apart. With a single template there
 * is nothing to tell apart, and it stays as it is. */
static void center_templates(float *emb, size_t n, size_t E, float *mean) {
    memset(mean, 0, E * sizeof *mean);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < E; j++) mean[j] += emb[i * E + j] / (float)n;
    if (n < 2) return;
    for (size_t i = 0; i < n; i++) {
        float *t = emb + i * E, norm = 0;
        for (size_t j = 0; j < E; j++) t[j] -= mean[j], norm += t[j] * t[j];
        norm = sqrtf(norm);
        for (size_t j = 0; j < E && norm > 1e-6f; j++) t[j] /= norm;
    }
}

/* Encodes pack's templates with the pipeline's model and hands them to the selector and
 * the learner. Returns 0, or -1 with err (nothing changed). */
static int use_templates(Pipeline *p, const Pack *pack, char *err, size_t errlen) {
    size_t n = pack_template_count(pack), E = (size_t)model_dim(p->model);
    float *emb = malloc(n * E * sizeof *emb);
    uint64_t *hashes = malloc(n * sizeof *hashes);
    int rc = emb && hashes ? encode_abouts(p, pack, emb, err, errlen) : -1;
    float mean[1024];
    PD_ASSERT(E <= PD_ARRAY_LEN(mean));
    if (rc == 0) center_templates(emb, n, E, mean);
    for (size_t i = 0; rc == 0 && i < n; i++)
        hashes[i] = template_hash(pack_template(pack, i)->name);
    if (rc == 0 && selector_set_templates(p->parts.selector, hashes, emb, n, mean)) rc = -1;
    if (rc == 0) learner_add_templates(p->parts.learner, hashes, emb, n);
    if (rc && !emb) snprintf(err, errlen, "out of memory encoding the templates");
    free(emb);
    free(hashes);
    return rc;
}

Pack *pipeline_use_pack(Pipeline *p, Pack *pack, char *err, size_t errlen) {
    if (use_templates(p, pack, err, errlen)) return pack;
    Pack *old = p->pack;
    p->pack = pack;
    return old;
}

Model *pipeline_use_model(Pipeline *p, Model *model, char *err, size_t errlen) {
    Model *old = p->model;
    if (model_dim(model) != model_dim(old)) {
        snprintf(err, errlen, "it has %d dimensions, the serving model %d", model_dim(model),
                 model_dim(old));
        return model;
    }
    p->model = model; /* the templates' vectors must come from the model that serves */
    if (p->pack && use_templates(p, p->pack, err, errlen)) {
        p->model = old;
        return model;
    }
    return old;
}

/* --- stages --- */

static void stage_decode(Pipeline *p, Slot *slots, int n) {
    for (int i = 0; i < n; i++) {
        Slot *s = &slots[i];
        s->reason = msg_decode_prompt(&s->prompt, s->m->payload, s->m->len, p->max_bytes, s->why,
                                      sizeof s->why);
    }
}

static int normalize_one(Pipeline *p, Slot *s) {
    const Prompt *pr = &s->prompt;
    if (reserve((void **)&p->norm_work, &p->norm_work_cap, norm_work_cap(pr->text_len),
                sizeof *p->norm_work) ||
        arena_reserve(&p->norm, norm_out_cap(pr->text_len)))
        return -1;

    ptrdiff_t len = norm_text(p->norm.data + p->norm.len, p->norm.cap - p->norm.len, pr->text,
                              pr->text_len, p->norm_work, p->norm_work_cap, NORM_MASK);
    PD_ASSERT(len >= 0); /* the buffers were sized by the normaliser's own bounds */
    s->norm_off = p->norm.len;
    s->norm_len = (size_t)len;
    p->norm.len += (size_t)len + 1;
    return 0;
}

/* Out of memory is not the prompt's fault, so it does not become a dead letter: the
 * caller stops, and the uncommitted prompts are read again after the restart. */
static int stage_normalize(Pipeline *p, Slot *slots, int n, char *err, size_t errlen) {
    p->norm.len = 0;
    for (int i = 0; i < n; i++) {
        Slot *s = &slots[i];
        if (s->reason != MSG_OK || normalize_one(p, s) == 0) continue;
        snprintf(err, errlen, "no memory to normalise a %zu-byte text", s->prompt.text_len);
        return PD_ENOMEM;
    }
    return PD_OK;
}

/* Encodes what the cache does not have: the misses of the whole batch go through the
 * encoder together (one packed forward pass), then into the cache. */
static int encode_misses(Pipeline *p, size_t m, size_t dim, char *err, size_t errlen) {
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        if (p->found[i]) continue;
        p->miss[k] = i;
        p->texts[m + k] = p->texts[i];
        p->lens[m + k] = p->lens[i];
        p->keys[m + k] = p->keys[i];
        k++;
    }
    if (k == 0) return PD_OK;
    uint64_t start = pd_mono_ns();
    if (model_encode(p->model, p->texts + m, p->lens + m, k, p->fresh, err, errlen))
        return PD_ENOMEM;
    metrics_observe_ns(&pd_latency.encode, pd_mono_ns() - start);
    for (size_t j = 0; j < k; j++)
        memcpy(p->vectors + p->miss[j] * dim, p->fresh + j * dim, dim * sizeof(float));
    cache_put(p->cache, p->keys + m, k, (int)dim, p->fresh);
    return PD_OK;
}

/* The semantic vector of every prompt of the batch: from the cache (one round trip for
 * the batch), else from the encoder. */
static int stage_encode(Pipeline *p, Slot *slots, int n, char *err, size_t errlen) {
    size_t dim = (size_t)model_dim(p->model), m = 0, nn = (size_t)n;
    if (reserve((void **)&p->texts, &p->texts_cap, 2 * nn, sizeof *p->texts) ||
        reserve((void **)&p->lens, &p->lens_cap, 2 * nn, sizeof *p->lens) ||
        reserve((void **)&p->keys, &p->keys_cap, 2 * nn, sizeof *p->keys) ||
        reserve((void **)&p->found, &p->found_cap, nn, sizeof *p->found) ||
        reserve((void **)&p->miss, &p->miss_cap, nn, sizeof *p->miss) ||
        reserve((void **)&p->fresh, &p->fresh_cap, nn * dim, sizeof *p->fresh) ||
        reserve((void **)&p->vectors, &p->vectors_cap, nn * dim, sizeof *p->vectors)) {
        snprintf(err, errlen, "no memory to encode a batch of %d", n);
        return PD_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        if (slots[i].reason != MSG_OK) continue;
        p->texts[m] = p->norm.data + slots[i].norm_off;
        p->lens[m] = slots[i].norm_len;
        cache_key(&p->keys[m], model_cache_id(p->model), p->texts[m], p->lens[m]);
        slots[i].vector = p->vectors + m * dim;
        m++;
    }
    if (m == 0) return PD_OK;
    uint64_t start = pd_mono_ns();
    cache_get(p->cache, p->keys, m, (int)dim, p->vectors, p->found);
    metrics_observe_ns(&pd_latency.cache, pd_mono_ns() - start);
    return encode_misses(p, m, dim, err, errlen);
}

static void fail_slot(Slot *s, MsgReason reason, const char *why) {
    s->reason = reason;
    snprintf(s->why, sizeof s->why, "%s", why);
}

static int append(Arena *a, const void *data, size_t len, size_t *off) {
    if (arena_reserve(a, len)) return -1;
    memcpy(a->data + a->len, data, len);
    *off = a->len;
    a->len += len;
    return 0;
}

/* The state of a bound prompt: its vector, the pack's features, its session's context. */
static void build_state(Pipeline *p, const Slot *s) {
    char err[512];
    size_t nf = pack_feature_count(p->pack);
    if (nf && pack_features(p->pack, p->features, err, sizeof err)) {
        pd_count(&pd_stats.feature_errors, 1);
        pd_log(PD_LOG_WARNING, PD_MOD_LUA, "%s (the features count as 0)", err);
    }
    const Prompt *pr = &s->prompt;
    SessionView view;
    if (pr->session)
        view = session_get(p->parts.sessions, pr->session, pr->session_len, pd_wall_ms());
    selector_state(p->parts.selector, p->x, s->vector, p->features, nf, pr->session ? &view : NULL);
}

/* Chooses the template of a bound prompt and keeps the decision's learning record. */
static int choose(Pipeline *p, Slot *s) {
    if (selector_choose(p->parts.selector, p->x, p->eligible, &s->sel)) {
        pd_count(&pd_stats.policy_errors, 1);
        pd_log(PD_LOG_ERR, PD_MOD_POLICY,
               "the policy scored a non-finite value; chose "
               "uniformly instead");
    }
    char record[16384];
    const Prompt *pr = &s->prompt;
    uint64_t episode = pr->session ? hashmap_hash(pr->session, pr->session_len, 0) : 0;
    SessionView view =
        pr->session ? session_get(p->parts.sessions, pr->session, pr->session_len, pd_wall_ms())
                    : (SessionView){0};
    s->rec_len =
        selector_record(p->parts.selector, record, sizeof record, p->x, episode, view.turn);
    if (s->rec_len && p->record_text)
        s->rec_len = learner_record_add_text(record, sizeof record, s->rec_len,
                                             p->norm.data + s->norm_off, s->norm_len);
    return s->rec_len && append(&p->records, record, s->rec_len, &s->rec_off) ? -1 : 0;
}

static int select_and_render(Pipeline *p, Slot *s) {
    Pack *pack = p->pack;
    char err[1024];

    if (pack_bind(pack, &s->prompt, p->norm.data + s->norm_off, s->norm_len, err, sizeof err)) {
        fail_slot(s, MSG_RENDER_ERROR, err);
        return 0;
    }
    if (pack_eligible(pack, p->eligible) == 0) {
        pd_count(&pd_stats.no_template, 1);
        snprintf(err, sizeof err,
                 "no template of pack %s (version %s) is eligible for this "
                 "prompt",
                 pack_name(pack), pack_version(pack));
        fail_slot(s, MSG_NO_TEMPLATE, err);
        pack_unbind(pack);
        return 0;
    }

    uint64_t start = pd_mono_ns();
    build_state(p, s);
    int rc = choose(p, s);
    uint64_t chosen = pd_mono_ns();
    metrics_observe_ns(&pd_latency.select, chosen - start);
    int failed = rc ? 0
                    : pack_render(pack, s->sel.template_index, pd_wall_ms(), &p->render_buf, err,
                                  sizeof err);
    metrics_observe_ns(&pd_latency.render, pd_mono_ns() - chosen);
    if (failed) {
        pd_count(&pd_stats.render_errors, 1);
        pd_log(PD_LOG_WARNING, PD_MOD_LUA, "%s", err);
        fail_slot(s, MSG_RENDER_ERROR, err);
        pack_unbind(pack);
        return 0;
    }
    pack_unbind(pack);
    return rc ? rc : append(&p->rendered, p->render_buf.data, p->render_buf.len, &s->out_off);
}

/* The sessions of the batch in one round trip, before build_state asks for each. Without
 * the room for it, each session_get reads on its own: slower, not wrong. */
static void prefetch_sessions(Pipeline *p, const Slot *slots, int n) {
    if (reserve((void **)&p->session_ids, &p->session_ids_cap, (size_t)n, sizeof *p->session_ids) ||
        reserve((void **)&p->session_lens, &p->session_lens_cap, (size_t)n,
                sizeof *p->session_lens))
        return;
    size_t m = 0;
    for (int i = 0; i < n; i++) {
        const Prompt *pr = &slots[i].prompt;
        if (slots[i].reason != MSG_OK || !pr->session) continue;
        p->session_ids[m] = pr->session;
        p->session_lens[m++] = pr->session_len;
    }
    if (m) session_prefetch(p->parts.sessions, p->session_ids, p->session_lens, m, pd_wall_ms());
}

static int stage_select(Pipeline *p, Slot *slots, int n, char *err, size_t errlen) {
    uint64_t errors_before = pack_eligible_errors(p->pack);
    p->rendered.len = p->records.len = 0;
    prefetch_sessions(p, slots, n);
    if (reserve((void **)&p->eligible, &p->eligible_cap, pack_template_count(p->pack),
                sizeof *p->eligible))
        goto oom;

    for (int i = 0; i < n; i++) {
        if (slots[i].reason != MSG_OK) continue;
        if (select_and_render(p, &slots[i])) goto oom;
        slots[i].out_len = slots[i].reason == MSG_OK ? p->render_buf.len : 0;
    }
    pd_count(&pd_stats.eligible_errors, pack_eligible_errors(p->pack) - errors_before);
    return PD_OK;

oom:
    snprintf(err, errlen, "no memory to select for a batch of %d", n);
    return PD_ENOMEM;
}

static int produce_dead_letter(Pipeline *p, Slot *s, char *err, size_t errlen) {
    const rd_kafka_message_t *m = s->m;
    rd_kafka_timestamp_type_t tstype;
    MsgSource src = {p->prompts_topic, m->partition, m->offset,
                     rd_kafka_message_timestamp(m, &tstype)};

    pd_log(PD_LOG_NOTICE, PD_MOD_PIPELINE, "dead letter %s/%" PRId32 "/%" PRId64 ": %s: %s",
           p->prompts_topic, m->partition, m->offset, msg_reason_name(s->reason), s->why);
    if (msg_encode_dead_letter(&p->out, s->reason, s->why, &src, m->payload, m->len,
                               p->max_dead_payload)) {
        snprintf(err, errlen, "no memory to encode a dead letter");
        return PD_ENOMEM;
    }
    KafkaRecord rec = {KAFKA_DEAD_LETTERS, s->reason, m->key, m->key_len, p->out.data, p->out.len};
    return kafka_produce(p->kafka, m, &rec, err, errlen);
}

/* After the decision is sent: the journal keeps it for its reward, the session moves on.
 * Neither can fail the prompt; running out of memory only costs learning. */
static void remember(Pipeline *p, const Slot *s, const char *template_name, int64_t now) {
    const Prompt *pr = &s->prompt;
    if (journal_put(p->parts.journal, pr->id, pr->id_len, p->out.data, p->out.len,
                    p->records.data + s->rec_off, s->rec_len, now))
        pd_count(&pd_stats.journal_errors, 1);
    if (pr->session)
        session_decided(p->parts.sessions, pr->session, pr->session_len,
                        template_hash(template_name), s->vector, now);
    pd_count(&pd_stats.selections, 1);
    observe_selection(template_name);

    rd_kafka_timestamp_type_t type;
    int64_t arrived = rd_kafka_message_timestamp(s->m, &type);
    if (arrived >= 0 && now >= arrived)
        metrics_observe_ns(&pd_latency.end_to_end, (uint64_t)(now - arrived) * 1000000u);
}

static int produce_decision(Pipeline *p, Slot *s, char *err, size_t errlen) {
    const char *name = pack_template(p->pack, s->sel.template_index)->name;
    int64_t now = pd_wall_ms();
    Decision d = {
        .template_name = name,
        .prompt = p->rendered.data + s->out_off,
        .prompt_len = s->out_len,
        .p = s->sel.p,
        .value = s->sel.value,
        .pack = pack_name(p->pack),
        .script_version = pack_version(p->pack),
        .policy_version = (int64_t)s->sel.policy_version,
        .ts_ms = now,
    };
    if (msg_encode_decision(&p->out, &s->prompt, &d)) {
        snprintf(err, errlen, "no memory to encode a decision");
        return PD_ENOMEM;
    }
    KafkaRecord rec = {KAFKA_DECISIONS,  MSG_OK,      s->prompt.id,
                       s->prompt.id_len, p->out.data, p->out.len};
    int rc = kafka_produce(p->kafka, s->m, &rec, err, errlen);
    if (rc == PD_OK) remember(p, s, name, now);
    return rc;
}

static int stage_produce(Pipeline *p, Slot *slots, int n, char *err, size_t errlen) {
    for (int i = 0; i < n; i++) {
        Slot *s = &slots[i];
        int rc = s->reason == MSG_OK ? produce_decision(p, s, err, errlen)
                                     : produce_dead_letter(p, s, err, errlen);
        if (rc) return rc;
    }
    return PD_OK;
}

/* --- rewards --- */

/* Hands a closed experience on: to the learner thread, to the experience topic
 * (learner.mode distributed), or nowhere (learner.enabled no). Its id is read from the
 * decision's JSON once, for whichever needs it: the debug line per experience (which a
 * crash test counts to prove that no reward is learned twice) and the topic's message. */
static void submit(Pipeline *p, Experience *e) {
    char err[600];
    bool debug = pd_log_enabled(PD_LOG_DEBUG, PD_MOD_LEARNER);
    bool distributed = p->parts.learn && p->parts.cluster;
    json_t *d = debug || distributed ? json_loads(e->decision, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(d, "id"));

    observe_reward(e->reward);
    if (debug)
        pd_log_write(PD_LOG_DEBUG, PD_MOD_LEARNER, "experience id=%s reward=%g events=%u",
                     id ? id : "?", e->reward, e->events);
    if (distributed) {
        if (cluster_send_experience(p->parts.cluster, e, id ? id : "", err, sizeof err))
            pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "%s", err);
        experience_free(e);
    } else if (p->parts.learn) {
        learner_submit(p->parts.learner, e);
    } else {
        pd_count(&pd_stats.experiences_unlearned, 1);
        experience_free(e);
    }
    json_decref(d);
}

/* The session of a decision, from its JSON, for the session's previous reward. */
static void reward_session(Pipeline *p, const json_t *decision, double r) {
    const json_t *session = json_object_get(decision, "session");
    if (json_is_string(session))
        session_rewarded(p->parts.sessions, json_string_value(session), json_string_length(session),
                         r, pd_wall_ms());
}

/* Why a reward event cannot be taken yet. */
typedef enum {
    TAKEN,         /* joined, or counted (unknown, late, no reward, error) */
    WAIT_JOURNAL,  /* Redis unavailable or refusing writes */
    WAIT_DECISION, /* no decision yet, while the prompts since the last commit are re-read */
} RewardTake;

/* Scores an event with the pack's reward() and joins it to its decision's journal entry,
 * or says why it must wait. */
static RewardTake join_reward(Pipeline *p, const RewardEvent *ev, bool may_wait_decision) {
    char err[1024];
    const char *text = journal_decision(p->parts.journal, ev->id, ev->id_len);
    Experience e;
    if (!text && may_wait_decision && kafka_replaying(p->kafka)) return WAIT_DECISION;
    if (!text) /* counted as unknown or late, or it waits for Redis */
        return journal_reward(p->parts.journal, ev->id, ev->id_len, 0, pd_wall_ms(), &e) ==
                       JOIN_UNAVAILABLE
                   ? WAIT_JOURNAL
                   : TAKEN;

    double r = 0;
    bool waits = false;
    json_t *decision = json_loads(text, 0, NULL);
    int rc = decision ? pack_reward(p->pack, ev->root, decision, &r, err, sizeof err) : -1;
    if (rc < 0) {
        pd_count(&pd_stats.reward_errors, 1);
        pd_log(PD_LOG_WARNING, PD_MOD_LUA, "%s", decision ? err : "a journal entry is not JSON");
    } else if (rc == 0) {
        pd_count(&pd_stats.rewards_none, 1);
    } else {
        if (r > p->reward_clip) r = p->reward_clip;
        if (r < -p->reward_clip) r = -p->reward_clip;
        JoinResult joined =
            journal_reward(p->parts.journal, ev->id, ev->id_len, r, pd_wall_ms(), &e);
        if (joined == JOIN_CLOSED) submit(p, &e);
        waits = joined == JOIN_UNAVAILABLE;
        if (!waits) reward_session(p, decision, r); /* once, when the event is taken */
    }
    json_decref(decision);
    return waits ? WAIT_JOURNAL : TAKEN;
}

/* Takes *ev (it is left empty) to offer it again in run_parked. */
static int park_reward(Pipeline *p, RewardEvent *ev, size_t bytes) {
    if (p->parked_len == p->parked_cap) {
        size_t cap = p->parked_cap ? p->parked_cap * 2 : 64;
        ParkedReward *grown = realloc(p->parked, cap * sizeof *grown);
        if (!grown) return PD_ENOMEM;
        p->parked = grown;
        p->parked_cap = cap;
    }
    p->parked[p->parked_len++] = (ParkedReward){.ev = *ev, .bytes = bytes};
    p->parked_bytes += bytes;
    memset(ev, 0, sizeof *ev);
    return PD_OK;
}

/* A reward event: joined, set aside for its decision, or a dead letter when it cannot be
 * read. Its offset is then done (reward events produce no output). Sets *take to
 * WAIT_JOURNAL, leaving it not done, when the journal cannot take it yet. */
static int process_reward(Pipeline *p, rd_kafka_message_t *m, RewardTake *take, char *err,
                          size_t errlen) {
    RewardEvent ev;
    char why[512];
    MsgReason reason = msg_decode_reward(&ev, m->payload, m->len, p->max_bytes, why, sizeof why);
    if (reason != MSG_OK) {
        pd_count(&pd_stats.rewards_consumed, 1);
        Slot s = {.m = m, .reason = reason};
        snprintf(s.why, sizeof s.why, "reward event: %s", why);
        return produce_dead_letter(p, &s, err, errlen);
    }
    bool room = p->parked_len < PARK_MAX_EVENTS && p->parked_bytes + m->len <= PARK_MAX_BYTES;
    *take = join_reward(p, &ev, room);
    if (*take == WAIT_DECISION && park_reward(p, &ev, m->len) == PD_OK) *take = TAKEN;
    msg_reward_free(&ev);
    if (*take == WAIT_DECISION) {
        snprintf(err, errlen, "no memory to set a reward event aside");
        return PD_ENOMEM;
    }
    if (*take != TAKEN) return PD_OK;
    pd_count(&pd_stats.rewards_consumed, 1);
    kafka_done(p->kafka, m);
    return PD_OK;
}

/* Reward events msgs[0..n), in order. From the first that must wait for the journal, they
 * are kept by kafka_hold (their slots become NULL) and offered again by run_held. One that
 * waits for its decision is set aside (park_reward) and offered again by run_parked; the
 * wait for the prompts being read again is logged by kafka.c, once per assignment. */
static int run_rewards(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen) {
    for (int i = 0; i < n; i++) {
        RewardTake take = TAKEN;
        int rc = process_reward(p, msgs[i], &take, err, errlen);
        if (rc) return rc;
        if (take == TAKEN) continue;

        if (!p->rewards_wait) /* once per episode: the retries take them back and forth */
            pd_log(PD_LOG_WARNING, PD_MOD_LEARNER,
                   "reward events wait: the journal cannot record their joins (redis "
                   "unavailable or refusing writes); they are read again when it can");
        p->rewards_wait = true;
        if (kafka_hold(p->kafka, msgs + i, n - i) == PD_OK) return PD_OK;
        snprintf(err, errlen, "no memory to hold %d reward events", n - i);
        return PD_ENOMEM;
    }
    return PD_OK;
}

/* Offers the held reward events again: soon when the journal is ready, else once a
 * second (a refusal clears only when a write succeeds). */
static int run_held(Pipeline *p, char *err, size_t errlen) {
    uint64_t now = pd_mono_ms();
    if (!kafka_held(p->kafka) || now < p->held_retry_ms) return PD_OK;
    p->held_retry_ms = now + (journal_ready(p->parts.journal) ? 100 : 1000);

    rd_kafka_message_t *msgs[256];
    int n = kafka_take_held(p->kafka, msgs, (int)PD_ARRAY_LEN(msgs));
    int rc = run_rewards(p, msgs, n, err, errlen);
    kafka_release(msgs, n);
    if (rc == PD_OK && p->rewards_wait && !kafka_held(p->kafka)) {
        pd_log(PD_LOG_NOTICE, PD_MOD_LEARNER, "reward events are joined again");
        p->rewards_wait = false;
    }
    return rc;
}

/* Offers the reward events set aside for their decisions again, a few times a second:
 * joined once their prompts are decided again, or counted unknown once those are read
 * again (kafka_replaying). The others stay aside. */
static void run_parked(Pipeline *p) {
    uint64_t now = pd_mono_ms();
    if (!p->parked_len || now < p->parked_retry_ms) return;
    p->parked_retry_ms = now + 200;

    size_t kept = 0;
    for (size_t i = 0; i < p->parked_len; i++) {
        ParkedReward *r = &p->parked[i];
        if (join_reward(p, &r->ev, true) != TAKEN) {
            p->parked[kept++] = *r;
            continue;
        }
        p->parked_bytes -= r->bytes;
        msg_reward_free(&r->ev);
    }
    p->parked_len = kept;
}

int pipeline_tick(Pipeline *p, int64_t now_ms, char *err, size_t errlen) {
    Experience closed[64];
    size_t n;
    while ((n = journal_expire(p->parts.journal, now_ms, closed, PD_ARRAY_LEN(closed))) > 0)
        for (size_t i = 0; i < n; i++) submit(p, &closed[i]);
    session_flush(p->parts.sessions, now_ms); /* so that other instances see this batch's turns */

    uint64_t version = selector_policy_version(p->parts.selector);
    size_t count = policy_param_count(selector_policy_dims(p->parts.selector));
    float *params = p->policy_copy ? p->policy_copy : (p->policy_copy = malloc(count * 4));
    /* Distributed, every instance serves the newest snapshot on the policy topic (the
     * learner too, so that all serve the same versions), after the policy its learner
     * thread restored at the start. */
    bool fresh = false;
    if (params && (!p->parts.cluster || !p->policy_started))
        fresh = learner_poll(p->parts.learner, params, &version);
    if (params && p->parts.cluster && cluster_poll_policy(p->parts.cluster, params, &version))
        fresh = true;
    if (fresh) selector_set_policy(p->parts.selector, params, version);
    p->policy_started = params != NULL;
    int rc = run_held(p, err, errlen);
    run_parked(p);
    atomic_store_explicit(&pd_stats.rewards_waiting, kafka_held(p->kafka) + p->parked_len,
                          memory_order_relaxed);
    return rc;
}

/* --- a batch --- */

static int run_prompts(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen) {
    if (reserve((void **)&p->slots, &p->slots_cap, (size_t)n, sizeof *p->slots)) {
        snprintf(err, errlen, "no memory for a batch of %d", n);
        return PD_ENOMEM;
    }
    Slot *slots = p->slots;
    for (int i = 0; i < n; i++) {
        memset(&slots[i], 0, sizeof slots[i]);
        slots[i].m = msgs[i];
    }

    stage_decode(p, slots, n);
    int rc = stage_normalize(p, slots, n, err, errlen);
    if (rc == PD_OK) rc = stage_encode(p, slots, n, err, errlen);
    if (rc == PD_OK) rc = stage_select(p, slots, n, err, errlen);
    if (rc == PD_OK) rc = stage_produce(p, slots, n, err, errlen);

    for (int i = 0; i < n; i++) msg_prompt_free(&slots[i].prompt);
    return rc;
}

int pipeline_run(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen) {
    /* Prompts first, in batch order; reward events after them, one by one (they are cheap
     * and need no batching). Both keep their own commit order. */
    int np = 0, rc = PD_OK;
    for (int i = 0; i < n; i++) {
        if (kafka_input_of(p->kafka, msgs[i]) != KAFKA_PROMPTS) continue;
        rd_kafka_message_t *t = msgs[np];
        msgs[np++] = msgs[i];
        msgs[i] = t;
    }
    if (np) rc = run_prompts(p, msgs, np, err, errlen);
    if (rc == PD_OK) rc = run_rewards(p, msgs + np, n - np, err, errlen);
    return rc;
}
