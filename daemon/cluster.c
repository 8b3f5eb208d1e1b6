/* Distributed learning over Kafka: experiences out, the learner's election, policy
 * snapshots in and out. See cluster.h. */
#include "cluster.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clustermsg.h"
#include "log.h"
#include "pd.h"

#define SNAPSHOT_KEY     "policy"
#define TAKE_PER_SERVE   1024 /* experiences handed to the learner per cluster_serve */
#define READ_PER_SERVE   64   /* policy snapshots read per cluster_serve */
#define ELECTION_WAIT_MS 10000

/* The opaque of a produced snapshot, for its delivery report. */
typedef struct {
    int64_t next_offset;
} SentSnapshot;

struct Cluster {
    char *topic_experience, *topic_policy;
    char layout[CHECKPOINT_LAYOUT_MAX];
    rd_kafka_t *producer;
    rd_kafka_t *follower; /* the policy topic, assigned from its beginning, never joined */
    rd_kafka_t *elector;  /* member of the learner group on the experience topic */
    rd_kafka_topic_t *experience_out, *policy_out;
    Learner *learner;
    atomic_bool is_learner;

    /* Serving thread: the newest valid snapshot read, and what was last handed over. */
    Checkpoint newest;
    bool has_newest;
    int64_t newest_next_offset;
    uint64_t reset_version; /* the snapshot the learner thread was last reset to */
    int64_t policy_end;     /* offset after the last policy message read */
    bool first_taken;       /* an experience was taken since the last election */

    pthread_mutex_t lock; /* guards stats */
    ClusterStats stats;
};

/* --- clients --- */

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    pd_log(level, PD_MOD_RDKAFKA, "%s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)opaque;
    pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "%s: %s: %s", rd_kafka_name(rk),
           rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void count(Cluster *cl, uint64_t *field, uint64_t n) {
    pthread_mutex_lock(&cl->lock);
    *field += n;
    pthread_mutex_unlock(&cl->lock);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque);

/* promptd's settings first, then the operator's kafka.consumer.* or kafka.producer.*
 * (checked by kafka_check_config when the configuration was loaded). */
static rd_kafka_conf_t *client_conf(Cluster *cl, const char *brokers, const ConfigProps *props,
                                    const char *const *settings) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "client.id", "promptd-cluster", err, sizeof err);
    for (; settings && settings[0]; settings += 2)
        if (rd_kafka_conf_set(conf, settings[0], settings[1], err, sizeof err))
            pd_log(PD_LOG_CRIT, PD_MOD_KAFKA, "%s=%s refused: %s", settings[0], settings[1], err);
    for (size_t i = 0; i < props->len; i++)
        rd_kafka_conf_set(conf, props->items[i].name, props->items[i].value, err, sizeof err);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, cl);
    return conf;
}

static rd_kafka_t *client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *what,
                              char *err, size_t errlen) {
    char why[512];
    rd_kafka_t *rk = rd_kafka_new(type, conf, why, sizeof why);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "cannot create the %s: %s", what, why);
    }
    return rk;
}

static int open_follower(Cluster *cl, const Config *c, const char *brokers, char *err,
                         size_t errlen) {
    /* librdkafka's assign needs a group.id, but an assignment without subscribe or commits
     * never joins it: every instance reads the whole topic. */
    char group[300];
    snprintf(group, sizeof group, "%s.policy", c->kafka_group_id);
    const char *settings[] = {"group.id", group, "enable.auto.commit", "false", "auto.offset.reset",
                              "earliest", NULL};
    rd_kafka_conf_t *conf = client_conf(cl, brokers, &c->consumer_props, settings);
    if (!(cl->follower = client_new(RD_KAFKA_CONSUMER, conf, "policy follower", err, errlen)))
        return -1;
    rd_kafka_poll_set_consumer(cl->follower);

    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, cl->topic_policy, 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t rc = rd_kafka_assign(cl->follower, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (rc) snprintf(err, errlen, "cannot follow %s: %s", cl->topic_policy, rd_kafka_err2str(rc));
    return rc ? -1 : 0;
}

static int open_elector(Cluster *cl, const Config *c, const char *brokers, char *err,
                        size_t errlen) {
    char group[300];
    snprintf(group, sizeof group, "%s.learner", c->kafka_group_id);
    /* Offsets are committed by hand, after the snapshot that covers them is acknowledged. */
    const char *settings[] = {"group.id",
                              group,
                              "enable.auto.commit",
                              "false",
                              "enable.auto.offset.store",
                              "false",
                              "auto.offset.reset",
                              "earliest",
                              NULL};
    rd_kafka_conf_t *conf = client_conf(cl, brokers, &c->consumer_props, settings);

    /* A rebalance waits for every member up to max.poll.interval.ms, and a member that died
     * in the middle of one held the election for the default 5 minutes on the mock cluster.
     * This group is polled every turn of the serving loop: the session timeout (which
     * librdkafka requires it to reach), or 30 s if that is shorter, is ample. */
    char value[32];
    size_t len = sizeof value;
    long poll_ms = 30000;
    if (rd_kafka_conf_get(conf, "session.timeout.ms", value, &len) == RD_KAFKA_CONF_OK &&
        atol(value) > poll_ms)
        poll_ms = atol(value);
    snprintf(value, sizeof value, "%ld", poll_ms);
    rd_kafka_conf_set(conf, "max.poll.interval.ms", value, err, errlen);
    /* on_rebalance assigns eagerly; a cooperative strategy from kafka.consumer.* would need
     * incremental assignment, and one partition gains nothing from it. */
    char why[256];
    rd_kafka_conf_set(conf, "partition.assignment.strategy", "range", why, sizeof why);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    if (!(cl->elector = client_new(RD_KAFKA_CONSUMER, conf, "learner group member", err, errlen)))
        return -1;
    rd_kafka_poll_set_consumer(cl->elector);

    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subs, cl->topic_experience, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t rc = rd_kafka_subscribe(cl->elector, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (rc) snprintf(err, errlen, "cannot join %s: %s", group, rd_kafka_err2str(rc));
    return rc ? -1 : 0;
}

int cluster_open(Cluster **out, const Config *c, const char *brokers, const char *layout,
                 bool learn, char *err, size_t errlen) {
    Cluster *cl = pd_xcalloc(1, sizeof *cl);
    cl->topic_experience = pd_xstrdup(c->topic_experience);
    cl->topic_policy = pd_xstrdup(c->topic_policy);
    snprintf(cl->layout, sizeof cl->layout, "%s", layout);
    pthread_mutex_init(&cl->lock, NULL);
    cl->stats.experience_lag = -1;

    const char *settings[] = {"enable.idempotence", "true", "acks", "all", "linger.ms", "5", NULL};
    rd_kafka_conf_t *conf = client_conf(cl, brokers, &c->producer_props, settings);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    if (!(cl->producer = client_new(RD_KAFKA_PRODUCER, conf, "cluster producer", err, errlen)) ||
        open_follower(cl, c, brokers, err, errlen) ||
        (learn && open_elector(cl, c, brokers, err, errlen))) {
        cluster_close(cl, 0);
        return -1;
    }
    cl->experience_out = rd_kafka_topic_new(cl->producer, cl->topic_experience, NULL);
    cl->policy_out = rd_kafka_topic_new(cl->producer, cl->topic_policy, NULL);
    *out = cl;
    return 0;
}

void cluster_set_learner(Cluster *cl, Learner *l) {
    cl->learner = l;
}

/* --- producing --- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    Cluster *cl = opaque;
    SentSnapshot *snap = m->_private;
    (void)rk;

    if (m->err) {
        /* librdkafka retried until message.timeout.ms. A lost snapshot costs nothing (the
         * next one carries everything); a lost experience is one sample fewer. */
        pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "%s to %s lost: %s",
               snap ? "a policy snapshot" : "an experience", rd_kafka_topic_name(m->rkt),
               rd_kafka_err2str(m->err));
        if (!snap) count(cl, &cl->stats.experiences_lost, 1);
        free(snap);
        return;
    }
    if (!snap) {
        count(cl, &cl->stats.experiences_sent, 1);
        return;
    }

    count(cl, &cl->stats.snapshots_published, 1);
    /* The group's offset follows what is published, so that its lag is the learner's. */
    if (snap->next_offset > 0 && cl->elector && atomic_load(&cl->is_learner)) {
        rd_kafka_topic_partition_list_t *at = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(at, cl->topic_experience, 0)->offset = snap->next_offset;
        rd_kafka_commit(cl->elector, at, 1);
        rd_kafka_topic_partition_list_destroy(at);
    }
    free(snap);
}

/* Produces, serving deliveries while librdkafka's queue is full. */
static rd_kafka_resp_err_t produce(Cluster *cl, rd_kafka_topic_t *topic, const void *key,
                                   size_t key_len, void *payload, size_t len, void *opaque) {
    for (int tries = 0;; tries++) {
        if (rd_kafka_produce(topic, 0, RD_KAFKA_MSG_F_FREE, payload, len, key, key_len, opaque) ==
            0)
            return RD_KAFKA_RESP_ERR_NO_ERROR;
        rd_kafka_resp_err_t rc = rd_kafka_last_error();
        if (rc != RD_KAFKA_RESP_ERR__QUEUE_FULL || tries == 500) {
            free(payload);
            return rc;
        }
        rd_kafka_poll(cl->producer, 10);
    }
}

int cluster_send_experience(Cluster *cl, const Experience *e, const char *id, char *err,
                            size_t errlen) {
    size_t len;
    void *bytes = clustermsg_experience_encode(e, id, &len);
    rd_kafka_resp_err_t rc = bytes
                                 ? produce(cl, cl->experience_out, id, strlen(id), bytes, len, NULL)
                                 : RD_KAFKA_RESP_ERR__NOENT;
    if (rc == RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
    count(cl, &cl->stats.experiences_lost, 1);
    snprintf(err, errlen, "experience %s not written to %s: %s", id, cl->topic_experience,
             bytes ? rd_kafka_err2str(rc) : "out of memory, or too large to frame");
    return -1;
}

void cluster_snapshot_sink(void *ctx, const Checkpoint *ck, int64_t next_offset) {
    Cluster *cl = ctx;
    if (!atomic_load(&cl->is_learner)) return; /* the role moved on: not ours to publish */

    size_t len;
    void *bytes = clustermsg_snapshot_encode(ck, next_offset, &len);
    SentSnapshot *snap = malloc(sizeof *snap);
    if (!bytes || !snap) {
        free(bytes);
        free(snap);
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "no memory to publish policy version %" PRIu64,
               ck->policy_version);
        return;
    }
    snap->next_offset = next_offset;
    rd_kafka_resp_err_t rc =
        produce(cl, cl->policy_out, SNAPSHOT_KEY, strlen(SNAPSHOT_KEY), bytes, len, snap);
    if (rc) {
        free(snap);
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "policy version %" PRIu64 " not published to %s: %s",
               ck->policy_version, cl->topic_policy, rd_kafka_err2str(rc));
        return;
    }
    pd_log(PD_LOG_DEBUG, PD_MOD_LEARNER,
           "published policy version %" PRIu64 " (%zu bytes, experiences up to offset %" PRId64 ")",
           ck->policy_version, len, next_offset);
}

/* --- following the policy topic --- */

/* Keeps a snapshot message if it is valid and newest; a non-learner's learner thread is
 * reset to it, so that its state (and its local checkpoints) follow the cluster's. */
static void take_snapshot(Cluster *cl, const rd_kafka_message_t *m) {
    char name[400], err[700];
    Checkpoint ck;
    int64_t next_offset;
    cl->policy_end = m->offset + 1;
    snprintf(name, sizeof name, "%s [%" PRId32 "] at offset %" PRId64, cl->topic_policy,
             m->partition, m->offset);
    if (clustermsg_snapshot_decode(name, m->payload, m->len, cl->layout, &ck, &next_offset, err,
                                   sizeof err)) {
        pd_log(PD_LOG_WARNING, PD_MOD_LEARNER,
               "policy snapshot refused, the previous one "
               "serves: %s",
               err);
        count(cl, &cl->stats.snapshots_refused, 1);
        return;
    }
    if (cl->has_newest && ck.policy_version < cl->newest.policy_version) {
        checkpoint_free(&ck); /* a late one from a learner that lost its role */
        return;
    }
    if (cl->has_newest) checkpoint_free(&cl->newest);
    cl->newest = ck;
    cl->newest_next_offset = next_offset;
    cl->has_newest = true;
    pthread_mutex_lock(&cl->lock);
    cl->stats.newest_version = ck.policy_version;
    pthread_mutex_unlock(&cl->lock);
}

/* Reads up to max policy messages without waiting; returns how many came. */
static int read_policy(Cluster *cl, int max, int wait_ms) {
    int n = 0;
    for (; n < max; n++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cl->follower, n == 0 ? wait_ms : 0);
        if (!m) break;
        if (!m->err)
            take_snapshot(cl, m);
        else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "reading %s: %s", cl->topic_policy,
                   rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
    }
    return n;
}

int cluster_catch_up(Cluster *cl, int timeout_ms, char *err, size_t errlen) {
    int64_t low = 0, high = 0;
    uint64_t end = pd_mono_ms() + (uint64_t)timeout_ms;
    rd_kafka_resp_err_t rc = rd_kafka_query_watermark_offsets(cl->follower, cl->topic_policy, 0,
                                                              &low, &high, timeout_ms);
    if (rc) {
        snprintf(err, errlen, "cannot read %s: %s", cl->topic_policy, rd_kafka_err2str(rc));
        return -1;
    }
    if (cl->policy_end < low) cl->policy_end = low; /* older messages are gone */
    while (cl->policy_end < high) {
        if (pd_mono_ms() >= end) {
            snprintf(err, errlen, "read %s up to offset %" PRId64 " of %" PRId64 " in %d ms",
                     cl->topic_policy, cl->policy_end, high, timeout_ms);
            return -1;
        }
        read_policy(cl, READ_PER_SERVE, 100);
    }
    return 0;
}

bool cluster_poll_policy(Cluster *cl, float *params, uint64_t *version) {
    if (!cl->has_newest || cl->newest.policy_version <= *version) return false;
    memcpy(params, cl->newest.params, cl->newest.nparams * sizeof(float));
    *version = cl->newest.policy_version;
    return true;
}

/* --- the election --- */

static void become_learner(Cluster *cl, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts) {
    char err[512];
    if (cluster_catch_up(cl, ELECTION_WAIT_MS, err, sizeof err))
        pd_log(PD_LOG_WARNING, PD_MOD_LEARNER,
               "the learner starts from the newest snapshot it has read so far: %s", err);
    for (int i = 0; i < parts->cnt; i++)
        parts->elems[i].offset = cl->has_newest && cl->newest_next_offset >= 0
                                     ? cl->newest_next_offset
                                     : RD_KAFKA_OFFSET_STORED;
    rd_kafka_assign(rk, parts);
    if (cl->learner)
        learner_reset(cl->learner, cl->has_newest ? &cl->newest : NULL,
                      cl->has_newest ? cl->newest_next_offset : 0);
    cl->reset_version = cl->has_newest ? cl->newest.policy_version : 0;
    atomic_store(&cl->is_learner, true);
    cl->first_taken = false;
    count(cl, &cl->stats.elections, 1);

    if (cl->has_newest)
        pd_log(PD_LOG_NOTICE, PD_MOD_LEARNER,
               "this instance is the learner: policy version %" PRIu64
               ", experiences from offset %" PRId64 " of %s",
               cl->newest.policy_version, cl->newest_next_offset, cl->topic_experience);
    else
        pd_log(PD_LOG_NOTICE, PD_MOD_LEARNER,
               "this instance is the learner: no snapshot on %s yet, the local policy goes on",
               cl->topic_policy);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    Cluster *cl = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && parts->cnt > 0) {
        become_learner(cl, rk, parts);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, parts);
        return;
    }
    if (atomic_exchange(&cl->is_learner, false)) {
        /* What it took and has not published is the next learner's to learn. */
        if (cl->learner) learner_reset(cl->learner, NULL, 0);
        pthread_mutex_lock(&cl->lock);
        cl->stats.experience_lag = -1;
        pthread_mutex_unlock(&cl->lock);
        pd_log(PD_LOG_NOTICE, PD_MOD_LEARNER, "this instance is no longer the learner");
    }
    rd_kafka_assign(rk, NULL);
}

/* --- between batches --- */

static void note_lag(Cluster *cl, int64_t position) {
    int64_t low, high;
    if (rd_kafka_get_watermark_offsets(cl->elector, cl->topic_experience, 0, &low, &high) ||
        high < 0)
        return;
    pthread_mutex_lock(&cl->lock);
    cl->stats.experience_lag = high > position ? high - position : 0;
    pthread_mutex_unlock(&cl->lock);
}

/* One message from the learner group's consumer, taken while this instance is the
 * learner. */
static void take_experience(Cluster *cl, const rd_kafka_message_t *m) {
    Experience e;
    char err[300];
    if (clustermsg_experience_decode(m->payload, m->len, &e, err, sizeof err)) {
        pd_log(PD_LOG_WARNING, PD_MOD_LEARNER, "%s [%" PRId32 "] at offset %" PRId64 ": %s",
               cl->topic_experience, m->partition, m->offset, err);
        count(cl, &cl->stats.experiences_refused, 1);
        return;
    }
    if (!cl->first_taken) {
        pd_log(PD_LOG_DEBUG, PD_MOD_LEARNER, "first experience taken at offset %" PRId64,
               m->offset);
        cl->first_taken = true;
    }
    e.next_offset = m->offset + 1;
    learner_submit(cl->learner, &e);
    count(cl, &cl->stats.experiences_taken, 1);
}

/* Serves the learner group (its rebalances run in here) and, while this instance is the
 * learner, hands the learner thread the experiences it has room for. */
static void take_experiences(Cluster *cl) {
    int64_t position = -1;
    for (int n = 0; n < TAKE_PER_SERVE; n++) {
        bool learner = atomic_load(&cl->is_learner) && cl->learner;
        if (learner && learner_room(cl->learner) == 0) break;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cl->elector, 0);
        if (!m) break;
        /* The role may have come within this poll (its rebalance callback ran in it). */
        learner = atomic_load(&cl->is_learner) && cl->learner;
        if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            pd_log(PD_LOG_WARNING, PD_MOD_KAFKA, "reading %s: %s", cl->topic_experience,
                   rd_kafka_message_errstr(m));
        else if (!m->err && learner)
            take_experience(cl, m), position = m->offset + 1;
        rd_kafka_message_destroy(m);
    }
    if (position >= 0) note_lag(cl, position);
}

void cluster_serve(Cluster *cl) {
    rd_kafka_poll(cl->producer, 0);
    read_policy(cl, READ_PER_SERVE, 0);

    if (cl->elector) take_experiences(cl);

    /* A non-learner's learner thread follows the published policy, so that its local
     * checkpoints hold the cluster's policy for a cold start without Kafka history. */
    if (cl->learner && cl->has_newest && !atomic_load(&cl->is_learner) &&
        cl->newest.policy_version != cl->reset_version) {
        learner_reset(cl->learner, &cl->newest, cl->newest_next_offset);
        cl->reset_version = cl->newest.policy_version;
    }
}

ClusterStats cluster_stats(Cluster *cl) {
    pthread_mutex_lock(&cl->lock);
    ClusterStats s = cl->stats;
    pthread_mutex_unlock(&cl->lock);
    s.learner = atomic_load(&cl->is_learner);
    return s;
}

void cluster_close(Cluster *cl, int timeout_ms) {
    if (!cl) return;
    cl->learner = NULL; /* stopped: the revoke below must not reach it */
    if (cl->producer) {
        if (rd_kafka_flush(cl->producer, timeout_ms))
            pd_log(PD_LOG_WARNING, PD_MOD_KAFKA,
                   "%d experience or policy message(s) not "
                   "acknowledged at the stop",
                   rd_kafka_outq_len(cl->producer));
    }
    if (cl->elector) {
        rd_kafka_consumer_close(cl->elector);
        rd_kafka_destroy(cl->elector);
    }
    if (cl->follower) {
        rd_kafka_consumer_close(cl->follower);
        rd_kafka_destroy(cl->follower);
    }
    if (cl->experience_out) rd_kafka_topic_destroy(cl->experience_out);
    if (cl->policy_out) rd_kafka_topic_destroy(cl->policy_out);
    if (cl->producer) rd_kafka_destroy(cl->producer);
    if (cl->has_newest) checkpoint_free(&cl->newest);
    pthread_mutex_destroy(&cl->lock);
    free(cl->topic_experience);
    free(cl->topic_policy);
    free(cl);
}
