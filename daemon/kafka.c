/*
 * Consumer, producer, delivery reports and commit points. See kafka.h for the guarantees.
 */
#include "kafka.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "observe.h"
#include "offsets.h"
#include "pd.h"
#include "stats.h"

/* Properties promptd sets itself: a passthrough of them would break a guarantee or
 * duplicate a promptd key, so --check refuses them with the reason. */
static const struct {
    const char *name;
    const char *why;
} reserved_props[] = {
    {"enable.auto.offset.store",
     "promptd stores each offset itself once its decision is acknowledged (at-least-once)"},
    {"bootstrap.servers", "set kafka.brokers instead"},
    {"metadata.broker.list", "set kafka.brokers instead"},
    {"group.id", "set kafka.group.id instead"},
    {"enable.idempotence", "promptd needs the idempotent producer for ordered, unduplicated "
                           "retries"},
    {"acks", "decisions are written with acks=all so that an acknowledged one is durable"},
    {"log.queue", "promptd routes librdkafka's log lines through its own logger"},
};

/* One input topic: its consumed offsets and the commit points not yet stored. */
typedef struct {
    char *topic; /* NULL when the topic is not read */
    OffsetTracker *tracker;
    int64_t *commit_at; /* by partition; -1 = nothing new */
    size_t commit_len;
} Input;

/* One produced message, from produce to delivery report. */
typedef struct {
    OffsetToken *tok;
    KafkaInput input;
    KafkaOutput output;
    MsgReason reason;
    int32_t in_partition; /* the input it answers, for the promptd-source header */
    int64_t in_offset;
} Delivery;

/* A delivery that failed after librdkafka's own retries; re-sent by kafka_serve. */
typedef struct Resend {
    struct Resend *next;
    Delivery *d;
    size_t key_len, len;
    unsigned char bytes[]; /* key, then payload */
} Resend;

struct Kafka {
    rd_kafka_t *consumer;
    rd_kafka_queue_t *queue;   /* the consumer's queue, read a batch at a time */
    rd_kafka_queue_t *rewards; /* the reward partitions' messages: up to half of each batch */
    rd_kafka_t *producer;
    rd_kafka_topic_t *out[KAFKA_OUTPUT_COUNT];
    Input in[KAFKA_INPUT_COUNT];
    bool commit_dirty; /* some Input has a commit point to store */

    Resend *resend;
    size_t max_inflight;
    bool paused;

    /* Reward events taken but not yet joined (kafka_hold), oldest first. While there are
     * any, the reward partitions stay paused and new reward events queue behind them, so
     * that no later offset is committed before them. */
    rd_kafka_message_t **held;
    size_t held_len, held_cap;
    int64_t flush_timeout_ms;

    /* The prompts read again after an assignment (kafka_replaying): by partition, the end
     * offset it had when assigned, or -1 once read that far (or nothing to read again). */
    int64_t *replay_end;
    size_t replay_len;
    size_t replay_left; /* partitions not yet read to their end */
    uint64_t replay_deadline_ms;
    int64_t replay_max_ms; /* how long reward events wait for it at most */
    bool fatal;
    char fatal_reason[1024];
};

/* Reward events wait for the prompts read again after an assignment (kafka_replaying) for
 * at most this long, or reward.window if shorter. The end it waits for is where each
 * partition ended at the assignment, so with a backlog it waits for all of it, and a
 * reward event whose decision never comes (its prompt was committed, its journal entry
 * lost) waits until then, set aside by the pipeline so that it stops nothing. A minute
 * covers re-reading the in-flight prompts of a crash many times over. */
#define REPLAY_MAX_MS (60 * 1000)

/* --- configuration --- */

static const char *reserved_why(const char *name) {
    for (size_t i = 0; i < PD_ARRAY_LEN(reserved_props); i++)
        if (!strcmp(reserved_props[i].name, name)) return reserved_props[i].why;
    return NULL;
}

/* Applies user properties after promptd's own, so that they override the defaults. */
static int apply_props(rd_kafka_conf_t *conf, const ConfigProps *props, const char *prefix,
                       ConfigErrors *errs) {
    int bad = 0;
    for (size_t i = 0; i < props->len; i++) {
        const ConfigProp *p = &props->items[i];
        char key[300], err[512];
        snprintf(key, sizeof key, "%s%s", prefix, p->name);

        const char *why = reserved_why(p->name);
        if (why) {
            config_error(errs, p->origin, key, "is set by promptd: %s", why);
            bad++;
            continue;
        }
        if (rd_kafka_conf_set(conf, p->name, p->value, err, sizeof err) != RD_KAFKA_CONF_OK) {
            config_error(errs, p->origin, key, "librdkafka refused it: %s", err);
            bad++;
        }
    }
    return bad;
}

static void set_or_assert(rd_kafka_conf_t *conf, const char *name, const char *value) {
    char err[256];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) == RD_KAFKA_CONF_OK) return;
    pd_log(PD_LOG_CRIT, PD_MOD_KAFKA, "librdkafka refused %s=%s: %s", name, value, err);
    PD_ASSERT(!"a property promptd sets itself was refused");
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    pd_log(level, PD_MOD_RDKAFKA, "%s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    Kafka *k = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        snprintf(k->fatal_reason, sizeof k->fatal_reason, "%s: fatal error %s: %s",
                 rd_kafka_name(rk), rd_kafka_err2name(orig), why);
        k->fatal = true;
        return;
    }
    /* Broker outages report here, once per connection attempt: the rate limit turns a long
     * outage into a few lines and a count. */
    pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "%s: %s: %s", rd_kafka_name(rk),
           rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static rd_kafka_conf_t *common_conf(const char *brokers, Kafka *k) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    set_or_assert(conf, "bootstrap.servers", brokers);
    set_or_assert(conf, "client.id", "promptd");
    set_or_assert(conf, "log.queue", "true");
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, k);
    return conf;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque);
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);

/* librdkafka's statistics, every statistics.interval.ms: the consumer lag for metrics. */
static int on_statistics(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
    (void)rk, (void)len, (void)opaque;
    int64_t lag = 0;
    if (metrics_kafka_lag(json, &lag) > 0) observe_kafka_lag(lag);
    return 0; /* librdkafka frees json */
}

static rd_kafka_conf_t *consumer_conf(const Config *c, const char *brokers, Kafka *k,
                                      ConfigErrors *errs) {
    rd_kafka_conf_t *conf = common_conf(brokers, k);
    set_or_assert(conf, "group.id", c->kafka_group_id);
    set_or_assert(conf, "enable.auto.offset.store", "false");
    set_or_assert(conf, "enable.auto.commit", "true");
    set_or_assert(conf, "auto.commit.interval.ms", "250");
    /* A new group starts at the oldest prompt: skipping what arrived before the first
     * start would be a loss. */
    set_or_assert(conf, "auto.offset.reset", "earliest");
    set_or_assert(conf, "statistics.interval.ms", "5000"); /* kafka.consumer.* may change it */
    rd_kafka_conf_set_stats_cb(conf, on_statistics);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    apply_props(conf, &c->consumer_props, "kafka.consumer.", errs);
    return conf;
}

static rd_kafka_conf_t *producer_conf(const Config *c, const char *brokers, Kafka *k,
                                      ConfigErrors *errs) {
    rd_kafka_conf_t *conf = common_conf(brokers, k);
    set_or_assert(conf, "enable.idempotence", "true");
    set_or_assert(conf, "acks", "all");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    apply_props(conf, &c->producer_props, "kafka.producer.", errs);
    return conf;
}

int kafka_check_config(const Config *c, ConfigErrors *errs) {
    int before = errs->count;
    rd_kafka_conf_destroy(consumer_conf(c, "127.0.0.1:9092", NULL, errs));
    rd_kafka_conf_destroy(producer_conf(c, "127.0.0.1:9092", NULL, errs));
    return errs->count - before;
}

/* --- opening and closing --- */

static int open_fail(Kafka *k, char *err, size_t errlen, const char *what, const char *why) {
    snprintf(err, errlen, "%s: %s", what, why);
    kafka_close(k);
    return PD_ERR;
}

int kafka_open(Kafka **out, const Config *c, const char *brokers, char *err, size_t errlen) {
    char why[512];
    ConfigErrors errs = {0};
    Kafka *k = pd_xcalloc(1, sizeof *k);
    const char *topics[KAFKA_INPUT_COUNT] = {c->topic_prompts, c->topic_rewards};
    for (int i = 0; i < KAFKA_INPUT_COUNT; i++) {
        k->in[i].tracker = offtrack_new();
        PD_ASSERT(k->in[i].tracker);
        k->in[i].topic = topics[i][0] ? pd_xstrdup(topics[i]) : NULL;
    }
    kafka_reconfigure(k, c);

    rd_kafka_conf_t *cconf = consumer_conf(c, brokers, k, &errs);
    rd_kafka_conf_t *pconf = producer_conf(c, brokers, k, &errs);
    if (errs.count) {
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        return open_fail(k, err, errlen, "kafka configuration", errs.text);
    }

    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, why, sizeof why);
    if (!k->consumer) {
        rd_kafka_conf_destroy(cconf);
        rd_kafka_conf_destroy(pconf);
        return open_fail(k, err, errlen, "cannot create the consumer", why);
    }
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, why, sizeof why);
    if (!k->producer) {
        rd_kafka_conf_destroy(pconf);
        return open_fail(k, err, errlen, "cannot create the producer", why);
    }

    /* Log lines reach the consumer's queue (served by its poll) and the producer's main
     * queue (served by rd_kafka_poll), so they are written from the serving thread. */
    rd_kafka_set_log_queue(k->consumer, NULL);
    rd_kafka_set_log_queue(k->producer, NULL);
    rd_kafka_poll_set_consumer(k->consumer);
    k->queue = rd_kafka_queue_get_consumer(k->consumer);
    if (k->in[KAFKA_REWARDS].topic) k->rewards = rd_kafka_queue_new(k->consumer);

    k->out[KAFKA_DECISIONS] = rd_kafka_topic_new(k->producer, c->topic_decisions, NULL);
    k->out[KAFKA_DEAD_LETTERS] = rd_kafka_topic_new(k->producer, c->topic_dead_letters, NULL);

    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(2);
    for (int i = 0; i < KAFKA_INPUT_COUNT; i++)
        if (k->in[i].topic)
            rd_kafka_topic_partition_list_add(subs, k->in[i].topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t rc = rd_kafka_subscribe(k->consumer, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (rc) return open_fail(k, err, errlen, "cannot subscribe", rd_kafka_err2str(rc));

    *out = k;
    return PD_OK;
}

void kafka_reconfigure(Kafka *k, const Config *c) {
    k->max_inflight = (size_t)c->max_inflight;
    k->flush_timeout_ms = c->shutdown_timeout_ms;
    k->replay_max_ms = c->reward_window_ms < REPLAY_MAX_MS ? c->reward_window_ms : REPLAY_MAX_MS;
}

void kafka_close(Kafka *k) {
    if (!k) return;
    kafka_release(k->held, (int)k->held_len); /* not done: read again after a restart */
    free(k->held);
    k->held = NULL, k->held_len = 0; /* the revoke callback of the close below drops them */
    if (k->queue) rd_kafka_queue_destroy(k->queue);
    if (k->rewards) rd_kafka_queue_destroy(k->rewards);
    if (k->consumer) {
        /* Runs the revoke callback: outputs are flushed and stored offsets committed. */
        rd_kafka_resp_err_t rc = rd_kafka_consumer_close(k->consumer);
        if (rc) pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "leaving the group: %s", rd_kafka_err2str(rc));
        rd_kafka_destroy(k->consumer);
    }
    free(k->replay_end); /* after the close, whose revoke callback still reads it */
    for (int i = 0; i < KAFKA_OUTPUT_COUNT; i++)
        if (k->out[i]) rd_kafka_topic_destroy(k->out[i]);
    if (k->producer) rd_kafka_destroy(k->producer);

    while (k->resend) {
        Resend *r = k->resend;
        k->resend = r->next;
        free(r->d);
        free(r);
    }
    for (int i = 0; i < KAFKA_INPUT_COUNT; i++) {
        offtrack_free(k->in[i].tracker);
        free(k->in[i].commit_at);
        free(k->in[i].topic);
    }
    free(k);
}

/* --- commit points --- */

static void note_commit(Kafka *k, Input *in, int32_t partition, int64_t offset) {
    if ((size_t)partition >= in->commit_len) {
        size_t n = (size_t)partition + 1;
        int64_t *grown = realloc(in->commit_at, n * sizeof *grown);
        if (!grown) return; /* a later acknowledgement of this partition stores it */
        for (size_t i = in->commit_len; i < n; i++) grown[i] = -1;
        in->commit_at = grown;
        in->commit_len = n;
    }
    in->commit_at[partition] = offset;
    k->commit_dirty = true;
}

static void report_store_errors(Kafka *k, const rd_kafka_topic_partition_list_t *list) {
    for (int i = 0; i < list->cnt; i++) {
        if (list->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            pd_count(&pd_stats.offsets_stored, 1);
            continue;
        }
        /* __STATE: the partition was revoked meanwhile; its new owner re-reads from the
         * last commit, which is a duplicate, not a loss. */
        pd_count(&pd_stats.offset_store_errors, 1);
        pd_log(PD_LOG_NOTICE, PD_MOD_KAFKA,
               "cannot store offset %" PRId64 " of %s [%" PRId32 "]: %s", list->elems[i].offset,
               list->elems[i].topic, list->elems[i].partition,
               rd_kafka_err2str(list->elems[i].err));
    }
    (void)k;
}

/* Hands the moved commit points to the consumer, which auto-commits them. */
static void store_commits(Kafka *k) {
    if (!k->commit_dirty) return;
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(8);
    for (int t = 0; t < KAFKA_INPUT_COUNT; t++) {
        Input *in = &k->in[t];
        for (size_t p = 0; p < in->commit_len; p++) {
            if (in->commit_at[p] < 0) continue;
            rd_kafka_topic_partition_list_add(list, in->topic, (int32_t)p)->offset =
                in->commit_at[p];
            in->commit_at[p] = -1;
        }
    }
    k->commit_dirty = false;

    rd_kafka_offsets_store(k->consumer, list);
    report_store_errors(k, list);
    /* Destroying the list matters: it holds partition references that would otherwise
     * keep rd_kafka_destroy waiting forever. */
    rd_kafka_topic_partition_list_destroy(list);
}

static size_t pending(const Kafka *k) {
    size_t n = 0;
    for (int t = 0; t < KAFKA_INPUT_COUNT; t++) n += offtrack_pending(k->in[t].tracker);
    return n;
}

KafkaInput kafka_input_of(const Kafka *k, const rd_kafka_message_t *m) {
    const char *name = rd_kafka_topic_name(m->rkt);
    return k->in[KAFKA_REWARDS].topic && !strcmp(name, k->in[KAFKA_REWARDS].topic) ? KAFKA_REWARDS
                                                                                   : KAFKA_PROMPTS;
}

static Input *input_named(Kafka *k, const char *topic) {
    for (int t = 0; t < KAFKA_INPUT_COUNT; t++)
        if (k->in[t].topic && !strcmp(k->in[t].topic, topic)) return &k->in[t];
    return NULL;
}

/* --- delivery --- */

static int queue_resend(Kafka *k, const rd_kafka_message_t *m, Delivery *d) {
    size_t key_len = m->key ? m->key_len : 0;
    Resend *r = malloc(sizeof *r + key_len + m->len);
    if (!r) return -1;
    r->d = d;
    r->key_len = key_len;
    r->len = m->len;
    if (key_len) memcpy(r->bytes, m->key, key_len);
    if (m->len) memcpy(r->bytes + key_len, m->payload, m->len);
    r->next = k->resend;
    k->resend = r;
    return 0;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    Kafka *k = opaque;
    Delivery *d = m->_private;
    (void)rk;

    if (m->err) {
        /* librdkafka retried until message.timeout.ms; the message may even be in the log
         * (possibly persisted). Sending it again keeps at-least-once: a duplicate at worst. */
        pd_count(&pd_stats.produce_failures, 1);
        pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "delivery to %s failed, sending again: %s",
               rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
        if (queue_resend(k, m, d) == 0) return;
        pd_log(PD_LOG_ERR, PD_MOD_KAFKA,
               "no memory to re-send; its prompt stays uncommitted "
               "and is read again after a restart");
        offtrack_abandon(d->tok);
        free(d);
        return;
    }

    if (d->output == KAFKA_DECISIONS)
        pd_count(&pd_stats.decisions_acked, 1);
    else
        pd_count(&pd_stats.dead_letters_acked[d->reason], 1);

    int32_t partition;
    Input *in = &k->in[d->input];
    int64_t commit = offtrack_done(in->tracker, d->tok, &partition);
    if (commit >= 0) note_commit(k, in, partition, commit);
    free(d);
}

/* Every output names its input in a header, "topic/partition/offset": consumers of the
 * decisions use it to recognise the duplicates that at-least-once allows. */
static rd_kafka_resp_err_t produce_once(Kafka *k, KafkaOutput output, const void *key,
                                        size_t key_len, const void *payload, size_t len,
                                        Delivery *d) {
    char source[320];
    int source_len = snprintf(source, sizeof source, "%s/%" PRId32 "/%" PRId64,
                              k->in[d->input].topic, d->in_partition, d->in_offset);
    const char *reason = msg_reason_name(d->reason);
    ssize_t reason_len = output == KAFKA_DEAD_LETTERS ? (ssize_t)strlen(reason) : -1;

    if (reason_len < 0)
        return rd_kafka_producev(
            k->producer, RD_KAFKA_V_RKT(k->out[output]), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE((void *)payload, len),
            RD_KAFKA_V_HEADER("promptd-source", source, source_len), RD_KAFKA_V_OPAQUE(d),
            RD_KAFKA_V_END);
    return rd_kafka_producev(k->producer, RD_KAFKA_V_RKT(k->out[output]),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
                             RD_KAFKA_V_VALUE((void *)payload, len),
                             RD_KAFKA_V_HEADER("promptd-source", source, source_len),
                             RD_KAFKA_V_HEADER("promptd-reason", reason, reason_len),
                             RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
}

/* Produces, serving deliveries while the local queue is full. */
static int produce_blocking(Kafka *k, KafkaOutput output, const void *key, size_t key_len,
                            const void *payload, size_t len, Delivery *d, char *err,
                            size_t errlen) {
    for (;;) {
        rd_kafka_resp_err_t rc = produce_once(k, output, key, key_len, payload, len, d);
        if (rc == RD_KAFKA_RESP_ERR_NO_ERROR) return PD_OK;
        if (rc != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            snprintf(err, errlen, "cannot produce to %s: %s", rd_kafka_topic_name(k->out[output]),
                     rd_kafka_err2str(rc));
            return PD_EFATAL;
        }
        pd_count(&pd_stats.queue_full_waits, 1);
        rd_kafka_poll(k->producer, 10);
        if (k->fatal) {
            snprintf(err, errlen, "%s", k->fatal_reason);
            return PD_EFATAL;
        }
    }
}

int kafka_produce(Kafka *k, const rd_kafka_message_t *in, const KafkaRecord *rec, char *err,
                  size_t errlen) {
    KafkaInput input = kafka_input_of(k, in);
    Delivery *d = malloc(sizeof *d);
    OffsetToken *tok = d ? offtrack_add(k->in[input].tracker, in->partition, in->offset) : NULL;
    if (!tok) {
        free(d);
        snprintf(err, errlen, "no memory to track offset %" PRId64, in->offset);
        return PD_ENOMEM;
    }
    *d = (Delivery){tok, input, rec->output, rec->reason, in->partition, in->offset};

    int rc = produce_blocking(k, rec->output, rec->key, rec->key_len, rec->payload, rec->len, d,
                              err, errlen);
    if (rc) {
        /* Never produced, so never acknowledged: the offset must not be committed. */
        offtrack_abandon(tok);
        free(d);
    }
    return rc;
}

/* --- backpressure --- */

/* Pauses or resumes the assigned reward partitions. */
static void pause_rewards(Kafka *k, bool pause) {
    rd_kafka_topic_partition_list_t *assigned = NULL, *rewards;
    if (!k->in[KAFKA_REWARDS].topic ||
        rd_kafka_assignment(k->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    rewards = rd_kafka_topic_partition_list_new(assigned->cnt);
    for (int i = 0; i < assigned->cnt; i++)
        if (input_named(k, assigned->elems[i].topic) == &k->in[KAFKA_REWARDS])
            rd_kafka_topic_partition_list_add(rewards, assigned->elems[i].topic,
                                              assigned->elems[i].partition);
    if (pause)
        rd_kafka_pause_partitions(k->consumer, rewards);
    else
        rd_kafka_resume_partitions(k->consumer, rewards);
    rd_kafka_topic_partition_list_destroy(rewards);
    rd_kafka_topic_partition_list_destroy(assigned);
}

static void set_paused(Kafka *k, bool pause) {
    rd_kafka_topic_partition_list_t *assigned = NULL;
    if (rd_kafka_assignment(k->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
    if (pause)
        rd_kafka_pause_partitions(k->consumer, assigned);
    else
        rd_kafka_resume_partitions(k->consumer, assigned);
    rd_kafka_topic_partition_list_destroy(assigned);
    if (!pause && k->held_len) pause_rewards(k, true); /* they wait for their held events */

    k->paused = pause;
    if (pause) pd_count(&pd_stats.pauses, 1);
    pd_log(PD_LOG_DEBUG, PD_MOD_KAFKA, "%s input: %zu outputs await acknowledgement",
           pause ? "pausing" : "resuming", pending(k));
}

static void apply_backpressure(Kafka *k) {
    size_t n = pending(k);
    if (!k->paused && n >= k->max_inflight)
        set_paused(k, true);
    else if (k->paused && n <= k->max_inflight / 2)
        set_paused(k, false);
}

static int resend_failed(Kafka *k, char *err, size_t errlen) {
    while (k->resend) {
        Resend *r = k->resend;
        k->resend = r->next;
        int rc = produce_blocking(k, r->d->output, r->bytes, r->key_len, r->bytes + r->key_len,
                                  r->len, r->d, err, errlen);
        free(r);
        if (rc) return rc;
    }
    return PD_OK;
}

int kafka_serve(Kafka *k, int timeout_ms, char *err, size_t errlen) {
    rd_kafka_poll(k->producer, timeout_ms);
    if (k->fatal) {
        snprintf(err, errlen, "%s", k->fatal_reason);
        return PD_EFATAL;
    }
    store_commits(k);
    apply_backpressure(k);
    return resend_failed(k, err, errlen);
}

size_t kafka_unacked(const Kafka *k) {
    return pending(k);
}

void kafka_done(Kafka *k, const rd_kafka_message_t *m) {
    Input *in = &k->in[kafka_input_of(k, m)];
    OffsetToken *tok = offtrack_add(in->tracker, m->partition, m->offset);
    int32_t partition;
    int64_t commit = tok ? offtrack_done(in->tracker, tok, &partition) : -1;
    if (commit >= 0) note_commit(k, in, partition, commit);
}

size_t kafka_drain(Kafka *k, int timeout_ms) {
    char err[512];
    uint64_t deadline = pd_mono_ms() + (uint64_t)timeout_ms;
    while (pending(k) > 0 && pd_mono_ms() < deadline) {
        if (kafka_serve(k, 50, err, sizeof err)) {
            pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "while draining: %s", err);
            break;
        }
    }
    store_commits(k);
    return pending(k);
}

/* --- consuming --- */

/* Reward partitions get a queue of their own, read ahead of the prompts for up to half of
 * each batch (kafka_poll_batch). In one shared
 * queue a backlog of prompts (after an outage, or at a restart) stands in front of the
 * reward events, which then wait for all of it: past their reward window, or past a
 * crash that makes them be read again. The forwarding stays through later assignments
 * (librdkafka no longer routes a forwarded partition to the consumer's queue); setting it
 * again on each assignment covers partitions new to this member. */
static void route_rewards(Kafka *k, const rd_kafka_topic_partition_list_t *parts) {
    if (!k->rewards) return;
    for (int i = 0; i < parts->cnt; i++) {
        if (input_named(k, parts->elems[i].topic) != &k->in[KAFKA_REWARDS]) continue;
        rd_kafka_queue_t *q = rd_kafka_queue_get_partition(k->consumer, parts->elems[i].topic,
                                                           parts->elems[i].partition);
        if (!q) continue;
        rd_kafka_queue_forward(q, k->rewards);
        rd_kafka_queue_destroy(q);
    }
}

static int held_append(Kafka *k, rd_kafka_message_t *m);

/* Held reward events of partitions this member gives up are let go, not done: their new
 * owner reads them from the last commit. */
static void drop_held(Kafka *k, const rd_kafka_topic_partition_list_t *parts) {
    size_t kept = 0;
    for (size_t i = 0; i < k->held_len; i++) {
        rd_kafka_message_t *m = k->held[i];
        if (rd_kafka_topic_partition_list_find(parts, rd_kafka_topic_name(m->rkt), m->partition))
            rd_kafka_message_destroy(m);
        else
            k->held[kept++] = m;
    }
    k->held_len = kept;
}

/* --- re-reading after an assignment --- */

/* The broker queries at an assignment share this budget, so that a broker that does not
 * answer delays the assignment by seconds, not seconds per partition. */
#define REPLAY_QUERY_MS 5000

static void replay_forget(Kafka *k, int32_t partition) {
    if (partition < 0 || (size_t)partition >= k->replay_len || k->replay_end[partition] < 0) return;
    k->replay_end[partition] = -1;
    k->replay_left--;
}

static void replay_track(Kafka *k, int32_t partition, int64_t end) {
    if ((size_t)partition >= k->replay_len) {
        size_t len = (size_t)partition + 1;
        int64_t *grown = realloc(k->replay_end, len * sizeof *grown);
        if (!grown) return; /* untracked: reward events do not wait for it */
        for (size_t i = k->replay_len; i < len; i++) grown[i] = -1;
        k->replay_end = grown;
        k->replay_len = len;
    }
    if (k->replay_end[partition] < 0) k->replay_left++;
    k->replay_end[partition] = end;
}

/* Notes how far each newly assigned prompts partition reaches (its end offset) when its
 * last commit is behind it: those prompts are read again, and decided again, and until
 * they are, a reward event for one of them finds no decision. Re-read after a crash, the
 * reward events would otherwise be taken first (they have their own queue) and counted
 * unknown, losing their rewards. Nothing is noted when the broker cannot say: reward
 * events then do not wait. */
static void start_replay(Kafka *k, rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts) {
    if (!k->rewards) return;
    rd_kafka_topic_partition_list_t *prompts = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; i < parts->cnt; i++)
        if (input_named(k, parts->elems[i].topic) == &k->in[KAFKA_PROMPTS])
            rd_kafka_topic_partition_list_add(prompts, parts->elems[i].topic,
                                              parts->elems[i].partition);
    uint64_t started = pd_mono_ms(), until = started + REPLAY_QUERY_MS;
    int64_t behind = 0;
    if (prompts->cnt && !rd_kafka_committed(rk, prompts, REPLAY_QUERY_MS)) {
        for (int i = 0; i < prompts->cnt && pd_mono_ms() < until; i++) {
            rd_kafka_topic_partition_t *tp = &prompts->elems[i];
            int64_t low, high;
            if (tp->err || rd_kafka_query_watermark_offsets(rk, tp->topic, tp->partition, &low,
                                                            &high, (int)(until - pd_mono_ms())))
                continue;
            int64_t from = tp->offset >= 0 ? tp->offset : low;
            if (from >= high) continue;
            replay_track(k, tp->partition, high);
            behind += high - from;
        }
    }
    pd_log(PD_LOG_DEBUG, PD_MOD_KAFKA,
           "%d prompts partition(s) asked for their last commits and ends in %" PRIu64 " ms",
           prompts->cnt, pd_mono_ms() - started);
    rd_kafka_topic_partition_list_destroy(prompts);
    if (!k->replay_left) return;
    k->replay_deadline_ms = pd_mono_ms() + (uint64_t)k->replay_max_ms;
    pd_log(PD_LOG_INFO, PD_MOD_KAFKA,
           "%" PRId64 " prompt(s) since the last commit are read again; reward events without "
           "a decision wait for them (at most %" PRId64 " s)",
           behind, k->replay_max_ms / 1000);
}

bool kafka_replaying(Kafka *k) {
    if (!k->replay_left) return false;
    if (pd_mono_ms() < k->replay_deadline_ms) return true;
    pd_log(PD_LOG_WARNING, PD_MOD_KAFKA,
           "%zu prompts partition(s) not read again within %" PRId64 " s; reward events "
           "without a decision no longer wait for them",
           k->replay_left, k->replay_max_ms / 1000);
    for (size_t i = 0; i < k->replay_len; i++) k->replay_end[i] = -1;
    k->replay_left = 0;
    return false;
}

/* A prompt taken: its partition's re-reading may be over. */
static void replay_progress(Kafka *k, const rd_kafka_message_t *m) {
    int32_t partition = m->partition;
    if (!k->replay_left || partition < 0 || (size_t)partition >= k->replay_len) return;
    if (k->replay_end[partition] >= 0 && m->offset + 1 >= k->replay_end[partition]) {
        replay_forget(k, partition);
        if (!k->replay_left)
            pd_log(PD_LOG_INFO, PD_MOD_KAFKA, "the prompts since the last commit are read again");
    }
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    Kafka *k = opaque;
    bool cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    pd_count(&pd_stats.rebalances, 1);

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        pd_log(PD_LOG_INFO, PD_MOD_KAFKA, "assigned %d partition(s)", parts->cnt);
        if (cooperative)
            rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
        route_rewards(k, parts);
        start_replay(k, rk, parts);
        if (k->paused) rd_kafka_pause_partitions(rk, parts);
        if (k->held_len) pause_rewards(k, true);
        return;
    }

    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && !rd_kafka_assignment_lost(rk)) {
        /* Commit what is done before another member takes over, so that it re-reads as
         * little as possible: wait for outstanding outputs, store, commit now. */
        size_t left = kafka_drain(k, (int)k->flush_timeout_ms);
        rd_kafka_resp_err_t rc = rd_kafka_commit(rk, NULL, 0);
        if (rc && rc != RD_KAFKA_RESP_ERR__NO_OFFSET)
            pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "commit on revoke: %s", rd_kafka_err2str(rc));
        pd_log(PD_LOG_INFO, PD_MOD_KAFKA,
               "revoked %d partition(s); %zu output(s) still unacknowledged will be re-read",
               parts->cnt, left);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        pd_log(PD_LOG_WARNING, PD_MOD_KAFKA,
               "lost %d partition(s) (session timed out?); their uncommitted prompts will be "
               "re-read by their new owner",
               parts->cnt);
    } else {
        pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "rebalance failed: %s", rd_kafka_err2str(err));
    }

    for (int i = 0; i < parts->cnt; i++) {
        Input *in = input_named(k, parts->elems[i].topic);
        if (in) offtrack_reset(in->tracker, parts->elems[i].partition);
        if (in == &k->in[KAFKA_PROMPTS]) replay_forget(k, parts->elems[i].partition);
    }
    drop_held(k, parts);
    if (cooperative)
        rd_kafka_incremental_unassign(rk, parts);
    else
        rd_kafka_assign(rk, NULL);
}

static int consumer_event(Kafka *k, rd_kafka_message_t *m, char *err, size_t errlen) {
    rd_kafka_resp_err_t e = m->err;
    if (e == RD_KAFKA_RESP_ERR__PARTITION_EOF) return PD_OK;
    pd_count(&pd_stats.consumer_errors, 1);

    if (e == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(k->consumer, why, sizeof why);
        snprintf(err, errlen, "consumer fatal error: %s", why);
        return PD_EFATAL;
    }
    pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "consumer: %s%s%s", rd_kafka_err2str(e),
           m->rkt ? " on " : "", m->rkt ? rd_kafka_topic_name(m->rkt) : "");
    return PD_OK;
}

int kafka_poll_batch(Kafka *k, rd_kafka_message_t **msgs, int max, int wait_ms, char *err,
                     size_t errlen) {
    /* Reward events take up to half the batch first, without waiting; prompts fill the
     * rest, in one call that waits up to wait_ms when there was no reward and serves the
     * rebalance, error and log callbacks queued meanwhile; reward events fill what prompts
     * left. Half, not all: rewards arrive in answer to decisions, so strict priority
     * makes a burst of decisions starve the prompts behind its own rewards, and serving
     * swings between the two (seen in the soak). */
    size_t half = (size_t)(max + 1) / 2;
    ssize_t got = k->rewards ? rd_kafka_consume_batch_queue(k->rewards, 0, msgs, half) : 0;
    if (got >= 0 && got < max) {
        ssize_t more = rd_kafka_consume_batch_queue(k->queue, got ? 0 : wait_ms, msgs + got,
                                                    (size_t)(max - got));
        if (more < 0) kafka_release(msgs, (int)got);
        got = more < 0 ? more : got + more;
    }
    if (k->rewards && got >= 0 && got < max) {
        ssize_t more = rd_kafka_consume_batch_queue(k->rewards, 0, msgs + got, (size_t)(max - got));
        got = more < 0 ? got : got + more;
    }
    if (got < 0) {
        snprintf(err, errlen, "consumer: %s", rd_kafka_err2str(rd_kafka_last_error()));
        return PD_EFATAL;
    }

    int n = 0, rc = PD_OK;
    for (ssize_t i = 0; i < got; i++) {
        rd_kafka_message_t *m = msgs[i];
        if (!m->err && k->held_len && kafka_input_of(k, m) == KAFKA_REWARDS) {
            /* Behind held events it waits too, so that it is not committed before them.
             * Without memory for that, promptd stops rather than commit past them. */
            if (held_append(k, m) == 0) continue;
            rd_kafka_message_destroy(m);
            if (rc == PD_OK) snprintf(err, errlen, "no memory to hold reward events");
            rc = PD_ENOMEM;
            continue;
        }
        if (!m->err) {
            msgs[n++] = m;
            continue;
        }
        if (rc == PD_OK) rc = consumer_event(k, m, err, errlen);
        rd_kafka_message_destroy(m);
    }
    if (rc) {
        kafka_release(msgs, n);
        return rc;
    }
    int prompts = 0;
    for (int i = 0; i < n; i++) {
        if (kafka_input_of(k, msgs[i]) != KAFKA_PROMPTS) continue;
        prompts++;
        replay_progress(k, msgs[i]);
    }
    pd_count(&pd_stats.prompts_consumed, (uint64_t)prompts);
    return n;
}

void kafka_release(rd_kafka_message_t **msgs, int n) {
    for (int i = 0; i < n; i++)
        if (msgs[i]) rd_kafka_message_destroy(msgs[i]);
}

/* --- reward events that wait --- */

static bool held_reserve(Kafka *k, size_t more) {
    if (k->held_len + more <= k->held_cap) return true;
    size_t cap = k->held_cap ? k->held_cap : 64;
    while (cap < k->held_len + more) cap *= 2;
    rd_kafka_message_t **grown = realloc(k->held, cap * sizeof *grown);
    if (!grown) return false;
    k->held = grown;
    k->held_cap = cap;
    return true;
}

/* Returns 0, or -1 when out of memory. */
static int held_append(Kafka *k, rd_kafka_message_t *m) {
    if (!held_reserve(k, 1)) return -1;
    k->held[k->held_len++] = m;
    return 0;
}

int kafka_hold(Kafka *k, rd_kafka_message_t **msgs, int n) {
    if (n <= 0) return PD_OK;
    if (!held_reserve(k, (size_t)n)) return PD_ENOMEM;
    bool first = k->held_len == 0;
    memmove(k->held + n, k->held, k->held_len * sizeof *k->held);
    for (int i = 0; i < n; i++) {
        k->held[i] = msgs[i];
        msgs[i] = NULL;
    }
    k->held_len += (size_t)n;
    if (first) pause_rewards(k, true);
    return PD_OK;
}

int kafka_take_held(Kafka *k, rd_kafka_message_t **msgs, int max) {
    size_t n = k->held_len < (size_t)max ? k->held_len : (size_t)max;
    memcpy(msgs, k->held, n * sizeof *msgs);
    k->held_len -= n;
    memmove(k->held, k->held + n, k->held_len * sizeof *k->held);
    /* Offered again and joined, or held again (kafka_hold pauses again): either way
     * reading on is safe once nothing older waits. */
    if (!k->held_len && n) pause_rewards(k, k->paused);
    return (int)n;
}

size_t kafka_held(const Kafka *k) {
    return k->held_len;
}
