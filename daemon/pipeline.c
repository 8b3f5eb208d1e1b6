/* Batch stages: decode, normalise, produce. */
#include "pipeline.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/normalize.h"
#include "log.h"
#include "message.h"
#include "pd.h"

/* One message of the batch as it moves through the stages. */
typedef struct {
    rd_kafka_message_t *m;
    Prompt prompt;
    MsgReason reason; /* MSG_OK, or why it becomes a dead letter */
    char why[384];
    size_t norm_off, norm_len; /* the normalised text, in Pipeline.norm */
} Slot;

struct Pipeline {
    Kafka *kafka;
    size_t max_bytes;
    size_t max_dead_payload;
    char *prompts_topic;

    Slot *slots;
    size_t slots_cap;

    /* Normalised texts of the batch, back to back, NUL-terminated. */
    char *norm;
    size_t norm_len, norm_cap;
    int32_t *norm_work; /* the normaliser's scratch */
    size_t norm_work_cap;

    MsgBuf out;
};

Pipeline *pipeline_new(const Config *c, Kafka *k) {
    Pipeline *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->kafka = k;
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
    free(p->norm);
    free(p->norm_work);
    msg_buf_free(&p->out);
    free(p->prompts_topic);
    free(p);
}

void pipeline_reconfigure(Pipeline *p, const Config *c) {
    p->max_bytes = (size_t)c->prompt_max_bytes;
    p->max_dead_payload = (size_t)c->dead_letter_max_payload;
}

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
        reserve((void **)&p->norm, &p->norm_cap, p->norm_len + norm_out_cap(pr->text_len), 1))
        return -1;

    ptrdiff_t len = norm_text(p->norm + p->norm_len, p->norm_cap - p->norm_len, pr->text,
                              pr->text_len, p->norm_work, p->norm_work_cap, NORM_MASK);
    PD_ASSERT(len >= 0); /* the buffers were sized by the normaliser's own bounds */
    s->norm_off = p->norm_len;
    s->norm_len = (size_t)len;
    p->norm_len += (size_t)len + 1;
    return 0;
}

/* Out of memory is not the prompt's fault, so it does not become a dead letter: the
 * caller stops, and the uncommitted prompts are read again after the restart. */
static int stage_normalize(Pipeline *p, Slot *slots, int n, char *err, size_t errlen) {
    p->norm_len = 0;
    for (int i = 0; i < n; i++) {
        Slot *s = &slots[i];
        if (s->reason != MSG_OK || normalize_one(p, s) == 0) continue;
        snprintf(err, errlen, "no memory to normalise a %zu-byte text", s->prompt.text_len);
        return PD_ENOMEM;
    }
    return PD_OK;
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
    const char *norm = p->norm + s->norm_off;
    /* Until policy packs and selection land, a decision carries the normalised text and
     * no template: this is the seam where select and render plug in. */
    if (msg_encode_decision(&p->out, &s->prompt, NULL, norm, s->norm_len, pd_wall_ms())) {
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
    if (rc == PD_OK) rc = stage_produce(p, slots, n, err, errlen);

    for (int i = 0; i < n; i++) msg_prompt_free(&slots[i].prompt);
    return rc;
}
