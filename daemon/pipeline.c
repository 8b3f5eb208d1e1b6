/* Batch stages: decode, normalise, select and render, produce. */
#include "pipeline.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../kernels/normalize.h"
#include "../kernels/rng.h"
#include "log.h"
#include "message.h"
#include "pd.h"
#include "stats.h"

/* One message of the batch as it moves through the stages. */
typedef struct {
    rd_kafka_message_t *m;
    Prompt prompt;
    MsgReason reason; /* MSG_OK, or why it becomes a dead letter */
    char why[1024];
    size_t norm_off, norm_len; /* the normalised text, in Pipeline.norm */
    size_t tpl;                /* the chosen template */
    double p;                  /* its probability under the logging policy */
    size_t out_off, out_len;   /* the rendered prompt, in Pipeline.rendered */
    const float *vector;       /* the semantic vector, in Pipeline.vectors */
} Slot;

/* A growable byte arena for the texts of one batch. */
typedef struct {
    char *data;
    size_t len, cap;
} Arena;

struct Pipeline {
    Kafka *kafka;
    Cache *cache;
    Model *model;
    Pack *pack;
    Rng rng;
    size_t max_bytes;
    size_t max_dead_payload;
    char *prompts_topic;

    Slot *slots;
    size_t slots_cap;
    Arena norm;     /* normalised texts, NUL-terminated */
    Arena rendered; /* rendered prompts */
    int32_t *norm_work;
    size_t norm_work_cap;
    bool *eligible; /* one flag per template of the pack */
    size_t eligible_cap;
    float *vectors; /* the batch's semantic vectors, one row per slot encoded */
    size_t vectors_cap;
    const char **texts; /* the batch's normalised texts, for the encoder */
    size_t *lens;
    size_t texts_cap, lens_cap;
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

static uint64_t seed_from(const Config *c) {
    uint64_t seed = (uint64_t)c->policy_seed;
    if (seed == 0 && getrandom(&seed, sizeof seed, 0) != sizeof seed) seed = pd_mono_ns();
    return seed;
}

Pipeline *pipeline_new(const Config *c, Kafka *k, Cache *cache, Model *model, Pack *pack) {
    Pipeline *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->kafka = k;
    p->cache = cache;
    p->model = model;
    p->pack = pack;
    rng_seed(&p->rng, seed_from(c));
    p->prompts_topic = strdup(c->topic_prompts);
    if (!p->prompts_topic) {
        free(p);
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
    free(p->norm_work);
    free(p->eligible);
    free(p->vectors);
    free(p->texts);
    free(p->lens);
    free(p->keys);
    free(p->found);
    free(p->miss);
    free(p->fresh);
    msg_buf_free(&p->render_buf);
    msg_buf_free(&p->out);
    free(p->prompts_topic);
    free(p);
}

void pipeline_reconfigure(Pipeline *p, const Config *c) {
    p->max_bytes = (size_t)c->prompt_max_bytes;
    p->max_dead_payload = (size_t)c->dead_letter_max_payload;
}

Pack *pipeline_swap_pack(Pipeline *p, Pack *pack) {
    Pack *old = p->pack;
    p->pack = pack;
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
    if (model_encode(p->model, p->texts + m, p->lens + m, k, p->fresh, err, errlen))
        return PD_ENOMEM;
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
    cache_get(p->cache, p->keys, m, (int)dim, p->vectors, p->found);
    return encode_misses(p, m, dim, err, errlen);
}

/* Uniform among the eligible templates: the logging policy until the learned one lands.
 * Its probability is recorded, so later off-policy evaluation can weigh the choice. */
static size_t choose_uniform(Pipeline *p, size_t ntemplates, size_t neligible, double *prob) {
    uint32_t pick = rng_below(&p->rng, (uint32_t)neligible);
    *prob = 1.0 / (double)neligible;
    for (size_t i = 0; i < ntemplates; i++)
        if (p->eligible[i] && pick-- == 0) return i;
    PD_ASSERT(!"fewer eligible templates than counted");
    return 0;
}

static void fail_slot(Slot *s, MsgReason reason, const char *why) {
    s->reason = reason;
    snprintf(s->why, sizeof s->why, "%s", why);
}

static int select_and_render(Pipeline *p, Slot *s) {
    Pack *pack = p->pack;
    size_t ntemplates = pack_template_count(pack);
    char err[1024];

    if (pack_bind(pack, &s->prompt, p->norm.data + s->norm_off, s->norm_len, err, sizeof err)) {
        fail_slot(s, MSG_RENDER_ERROR, err);
        return 0;
    }
    size_t neligible = pack_eligible(pack, p->eligible);
    if (neligible == 0) {
        pd_count(&pd_stats.no_template, 1);
        snprintf(err, sizeof err,
                 "no template of pack %s (version %s) is eligible for this "
                 "prompt",
                 pack_name(pack), pack_version(pack));
        fail_slot(s, MSG_NO_TEMPLATE, err);
        pack_unbind(pack);
        return 0;
    }

    s->tpl = choose_uniform(p, ntemplates, neligible, &s->p);
    int rc = pack_render(pack, s->tpl, pd_wall_ms(), &p->render_buf, err, sizeof err);
    pack_unbind(pack);
    if (rc) {
        pd_count(&pd_stats.render_errors, 1);
        pd_log(PD_LOG_WARNING, PD_MOD_LUA, "%s", err);
        fail_slot(s, MSG_RENDER_ERROR, err);
        return 0;
    }

    if (arena_reserve(&p->rendered, p->render_buf.len)) return -1;
    memcpy(p->rendered.data + p->rendered.len, p->render_buf.data, p->render_buf.len);
    s->out_off = p->rendered.len;
    s->out_len = p->render_buf.len;
    p->rendered.len += p->render_buf.len;
    return 0;
}

static int stage_select(Pipeline *p, Slot *slots, int n, char *err, size_t errlen) {
    uint64_t errors_before = pack_eligible_errors(p->pack);
    p->rendered.len = 0;
    if (reserve((void **)&p->eligible, &p->eligible_cap, pack_template_count(p->pack),
                sizeof *p->eligible))
        goto oom;

    for (int i = 0; i < n; i++)
        if (slots[i].reason == MSG_OK && select_and_render(p, &slots[i])) goto oom;
    pd_count(&pd_stats.eligible_errors, pack_eligible_errors(p->pack) - errors_before);
    return PD_OK;

oom:
    snprintf(err, errlen, "no memory to render a batch of %d", n);
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

static int produce_decision(Pipeline *p, Slot *s, char *err, size_t errlen) {
    Decision d = {
        .template_name = pack_template(p->pack, s->tpl)->name,
        .prompt = p->rendered.data + s->out_off,
        .prompt_len = s->out_len,
        .p = s->p,
        .pack = pack_name(p->pack),
        .script_version = pack_version(p->pack),
        .policy_version = 0,
        .ts_ms = pd_wall_ms(),
    };
    if (msg_encode_decision(&p->out, &s->prompt, &d)) {
        snprintf(err, errlen, "no memory to encode a decision");
        return PD_ENOMEM;
    }
    KafkaRecord rec = {KAFKA_DECISIONS,  MSG_OK,      s->prompt.id,
                       s->prompt.id_len, p->out.data, p->out.len};
    return kafka_produce(p->kafka, s->m, &rec, err, errlen);
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

int pipeline_run(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen) {
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
