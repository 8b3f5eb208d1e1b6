/*
 * Distributed learning (learner.mode distributed) on one machine: several promptd processes
 * sharing one mock cluster (started here) and one real redis-server. They must behave as
 * one service: every prompt decided, every reward joined once, one learner elected by
 * Kafka, every instance serving the learner's policy, a late joiner serving it from its
 * first decision, a damaged snapshot refused by all, and the learner's death survived
 * with nothing learned twice.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/clustermsg.h"
#include "../daemon/mockbroker.h"
#include "harness.h"
#include "redis_harness.h"

#define INSTANCES_MAX 4
#define T_PROMPTS     "promptd.prompts"
#define T_REWARDS     "promptd.rewards"
#define T_EXPERIENCE  "promptd.experience"
#define T_POLICY      "promptd.policy"

typedef struct {
    const char *dir;
    MockBroker *broker;
    const char *bootstrap;
    RedisServer redis;
    char url[300];
    Proc proc[INSTANCES_MAX];
    char admin[INSTANCES_MAX][600], log[INSTANCES_MAX][600];
    bool running[INSTANCES_MAX];
} Cluster;

static void cluster_start(Cluster *c) {
    char err[256];
    const char *topics[] = {T_PROMPTS, "promptd.decisions", "promptd.dead-letters", T_REWARDS};
    c->dir = harness_tmpdir();
    cr_assert_eq(rserver_start(&c->redis, NULL), 0, "redis-server did not start");
    rserver_url(&c->redis, 0, c->url, sizeof c->url);
    cr_assert_eq(mockbroker_start(&c->broker, 1, topics, 4, 6, err, sizeof err), 0, "%s", err);
    rd_kafka_mock_cluster_t *mock = mockbroker_cluster(c->broker);
    cr_assert_eq(rd_kafka_mock_topic_create(mock, T_EXPERIENCE, 1, 1), 0);
    cr_assert_eq(rd_kafka_mock_topic_create(mock, T_POLICY, 1, 1), 0);
    c->bootstrap = mockbroker_bootstraps(c->broker);
}

/* SIGTERM to every instance still running, each expected to exit 0, then the rest. */
static void cluster_stop(Cluster *c) {
    for (int i = 0; i < INSTANCES_MAX; i++) {
        if (!c->running[i]) continue;
        proc_signal(&c->proc[i], SIGTERM);
        cr_expect_eq(proc_wait(&c->proc[i], 60000), 0, "instance %d did not stop cleanly", i);
        proc_stop(&c->proc[i]); /* a no-op once it has exited */
        c->running[i] = false;
    }
    mockbroker_stop(c->broker);
    rserver_stop(&c->redis);
    harness_cleanup();
}

static void instance_serving(Cluster *c, int i) {
    cr_assert_eq(harness_wait_text(c->log[i], "serving:", 60000), 0, "instance %d did not start",
                 i);
}

/* Instance i, with extra --set values (NULL-terminated, or NULL); wait: until it serves. */
static void instance_spawn(Cluster *c, int i, const char *const *extra, bool wait) {
    char sets[5][700];
    snprintf(c->admin[i], sizeof c->admin[i], "%s/admin%d.sock", c->dir, i);
    snprintf(c->log[i], sizeof c->log[i], "%s/promptd%d.log", c->dir, i);
    snprintf(sets[0], sizeof sets[0], "kafka.brokers=%s", c->bootstrap);
    snprintf(sets[1], sizeof sets[1], "redis.url=%s", c->url);
    snprintf(sets[2], sizeof sets[2], "admin.socket=%s", c->admin[i]);
    snprintf(sets[3], sizeof sets[3], "learner.checkpoint_dir=%s/state%d", c->dir, i);
    snprintf(sets[4], sizeof sets[4], "policy.seed=%d", 11 + i);
    const char *fixed[] = {"learner.mode=distributed", "learner.publish_every=200ms",
                           "learner.batch_size=128",
                           /* The tests decide every prompt before the rewards come, so
                            * every experience is of the first policy versions. */
                           "learner.max_staleness=100000", "reward.window=10m", "log.debug=learner",
                           "metrics.listen=127.0.0.1:0", "kafka.consumer.session.timeout.ms=6000",
                           "kafka.consumer.heartbeat.interval.ms=500", NULL};
    char *argv[48];
    int n = 0;
    argv[n++] = (char *)harness_promptd();
    for (int k = 0; k < 5; k++) argv[n++] = "--set", argv[n++] = sets[k];
    for (int k = 0; fixed[k]; k++) argv[n++] = "--set", argv[n++] = (char *)fixed[k];
    for (int k = 0; extra && extra[k] && n < 44; k++)
        argv[n++] = "--set", argv[n++] = (char *)extra[k];
    argv[n] = NULL;
    cr_assert_eq(proc_start(&c->proc[i], argv, NULL, NULL, c->log[i]), 0);
    c->running[i] = true;
    if (wait) instance_serving(c, i);
}

static void instance_start(Cluster *c, int i, const char *const *extra) {
    instance_spawn(c, i, extra, true);
}

static double metric(Cluster *c, int i, const char *line_start) {
    return harness_metric(c->admin[i], line_start);
}

/* The sum of a metric over the running instances (-1 when one cannot be read). */
static double metric_sum(Cluster *c, const char *line_start) {
    double sum = 0;
    for (int i = 0; i < INSTANCES_MAX; i++) {
        if (!c->running[i]) continue;
        double v = metric(c, i, line_start);
        if (v < 0) return -1;
        sum += v;
    }
    return sum;
}

/* Polls metric_sum until it reaches min or timeout_ms passes; returns its last value. */
static double sum_reaching(Cluster *c, const char *line_start, double min, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    double v;
    while ((v = metric_sum(c, line_start)) < min && harness_now_ms() < end) usleep(200000);
    return v;
}

/* The one running instance that is the learner, waiting up to timeout_ms; -1 if there is
 * none or more than one. */
static int learner_of(Cluster *c, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    do {
        int found = -1, count = 0;
        for (int i = 0; i < INSTANCES_MAX; i++)
            if (c->running[i] && metric(c, i, "\npromptd_cluster_learner ") == 1)
                found = i, count++;
        if (count == 1) return found;
        usleep(200000);
    } while (harness_now_ms() < end);
    return -1;
}

/* The learner once the group has settled: the same single learner for 5 s (members that
 * join late move the role in a rebalance). -1 after timeout_ms. */
static int settled_learner(Cluster *c, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms, since = harness_now_ms();
    int last = -1;
    while (harness_now_ms() < end) {
        int now = learner_of(c, 1000);
        if (now != last) since = harness_now_ms(), last = now;
        if (now >= 0 && harness_now_ms() - since >= 5000) return now;
        usleep(200000);
    }
    return -1;
}

static void kcat_produce(Cluster *c, const char *topic, const char *file) {
    Proc p;
    char *argv[] = {"kcat",        "-P",   "-b", (char *)c->bootstrap, "-t",
                    (char *)topic, "-K\t", "-l", (char *)file,         NULL};
    cr_assert_eq(proc_start(&p, argv, NULL, NULL, NULL), 0);
    cr_assert_eq(proc_wait(&p, 120000), 0, "kcat could not produce %s", file);
}

static void send_prompts(Cluster *c, const char *prefix, int from, int n) {
    char path[600];
    snprintf(path, sizeof path, "%s/prompts-%d.tsv", c->dir, from);
    cr_assert_eq(harness_write_prompts(path, prefix, from + n), 0);
    /* harness_write_prompts numbers from 0: keep only the lines from `from` on. */
    if (from) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "sed -i '1,%dd' '%s'", from, path);
        cr_assert_eq(system(cmd), 0);
    }
    kcat_produce(c, T_PROMPTS, path);
}

static void send_rewards(Cluster *c, const char *prefix, int from, int n) {
    char path[600];
    snprintf(path, sizeof path, "%s/rewards-%d.tsv", c->dir, from);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = from; i < from + n; i++)
        fprintf(f, "%s%d\t{\"id\":\"%s%d\",\"resolved\":%s,\"rating\":%d}\n", prefix, i, prefix, i,
                i % 3 ? "true" : "false", 1 + i % 5);
    fclose(f);
    kcat_produce(c, T_REWARDS, path);
}

#define TAKEN "\npromptd_cluster_experiences_total{outcome=\"taken\"} "
#define CHUNK 1000 /* rewards sent at once around a failover */

/* Sends the rewards of from .. from+n-1 in chunks of most, each once the learner has taken
 * the experiences of the one before: the mock cluster keeps only about 5 MiB of a
 * partition (about 5,000 experiences) and silently drops older messages, which a learner
 * further behind (a rebalance of the learner group takes seconds) would never read. */
static void send_rewards_paced(Cluster *c, const char *prefix, int from, int n, int most) {
    for (int sent = 0; sent < n;) {
        int chunk = n - sent < most ? n - sent : most;
        send_rewards(c, prefix, from + sent, chunk);
        sent += chunk;
        double taken = sum_reaching(c, TAKEN, from + sent, 120000);
        cr_assert_geq(taken, from + sent, "the learner took %.0f of %d experiences", taken,
                      from + sent);
    }
}

/* Messages in the one partition of topic, as its high watermark says. */
static int64_t topic_end(Cluster *c, const char *topic) {
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstrap, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    cr_assert_not_null(rk, "%s", err);
    int64_t low = -1, high = -1;
    rd_kafka_resp_err_t rc = rd_kafka_query_watermark_offsets(rk, topic, 0, &low, &high, 10000);
    rd_kafka_destroy(rk);
    cr_assert_eq(rc, 0, "watermarks of %s: %s", topic, rd_kafka_err2str(rc));
    return high;
}

/* Waits until every running instance serves the same policy version, the newest
 * published; returns it (0 when they did not agree within timeout_ms). */
static double converged_version(Cluster *c, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms;
    do {
        double agreed = -1;
        bool same = true;
        for (int i = 0; i < INSTANCES_MAX && same; i++) {
            if (!c->running[i]) continue;
            double serving = metric(c, i, "\npromptd_policy_version ");
            double newest = metric(c, i, "\npromptd_policy_published_version ");
            same = serving > 0 && serving == newest && (agreed < 0 || serving == agreed);
            agreed = serving;
        }
        if (same && agreed > 0) return agreed;
        usleep(200000);
    } while (harness_now_ms() < end);
    return 0;
}

/* Experiences counted per id over every instance's log ("experience id=" lines, written
 * where a decision's reward window closes); returns the ids seen once, *twice those seen
 * more often. */
static int experiences_once(Cluster *c, const char *prefix, int n, int *twice) {
    int *learned = calloc((size_t)n, sizeof *learned), *sum = calloc((size_t)n, sizeof *sum);
    cr_assert(learned && sum);
    for (int i = 0; i < INSTANCES_MAX; i++) {
        if (!c->log[i][0]) continue;
        cr_assert_geq(harness_count_experiences(c->log[i], prefix, learned, n), 0);
        for (int k = 0; k < n; k++) sum[k] += learned[k];
    }
    int once = 0;
    *twice = 0;
    for (int k = 0; k < n; k++) once += sum[k] == 1, *twice += sum[k] > 1;
    free(learned);
    free(sum);
    return once;
}

/* Produces a policy snapshot of version, valid or with one byte of its parameters flipped
 * (so that its checksum fails), as a broken learner or a bad disk on a broker would. */
static void produce_snapshot(Cluster *c, uint64_t version, bool damaged) {
    enum { N = 64 };
    float p[N] = {0}, m[N] = {0}, v[N] = {0};
    Checkpoint ck = {version, 0, "policy/1 D=1", 1, p, m, v, N, 0};
    size_t len;
    unsigned char *bytes = clustermsg_snapshot_encode(&ck, 0, &len);
    cr_assert_not_null(bytes);
    if (damaged) bytes[len / 2] ^= 0x01;

    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstrap, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    cr_assert_not_null(rk, "%s", err);
    cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(T_POLICY), RD_KAFKA_V_PARTITION(0),
                                   RD_KAFKA_V_KEY("policy", 6), RD_KAFKA_V_VALUE(bytes, len),
                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                 0);
    cr_assert_eq(rd_kafka_flush(rk, 10000), 0, "the snapshot was not delivered");
    rd_kafka_destroy(rk);
    free(bytes);
}

/* The mock cluster, Redis, and three instances with their learner elected; returns it. */
static int three_instances(Cluster *c) {
    cluster_start(c);
    for (int i = 0; i < 3; i++) instance_spawn(c, i, NULL, false);
    for (int i = 0; i < 3; i++) instance_serving(c, i);
    int learner = settled_learner(c, 90000);
    cr_assert_geq(learner, 0, "no single learner was elected");
    return learner;
}

/* Three instances serve a stream with a reward per prompt. Every prompt is decided, every
 * reward is joined and closed once, one learner is elected and all serve its policy; a
 * fourth instance joining late serves that policy from its first decision; a damaged
 * snapshot is refused by every instance, which keep the policy they had. */
Test(cluster, three_instances_serve_and_learn_as_one) {
    Cluster c = {0};
    const int n = 60000;
    int learner = three_instances(&c);

    send_prompts(&c, "c-", 0, n);
    double decided = sum_reaching(&c, "\npromptd_decisions_total ", n, 240000);
    cr_assert_geq(decided, n, "only %.0f of %d prompts decided", decided, n);
    /* The group was stable before the stream: a duplicate would need a rebalance. */
    cr_expect_leq(decided - n, 2000, "%.0f duplicates, beyond the in-flight bound", decided - n);

    send_rewards_paced(&c, "c-", 0, n, 4 * CHUNK); /* no failover here: less pacing */
    const char *joined = "\npromptd_reward_events_total{outcome=\"joined\"} ";
    /* Reward outcomes are published once a second; the learner's count at once. */
    double took = metric_sum(&c, TAKEN), joins = sum_reaching(&c, joined, n, 10000);
    cr_expect_eq(joins, n, "%.0f reward events joined for %d", joins, n);
    cr_expect_eq(took, n, "the learner took %.0f experiences for %d", took, n);
    cr_expect_eq(topic_end(&c, T_EXPERIENCE), n, "the experience topic holds more or fewer");
    cr_expect_eq(learner_of(&c, 1000), learner, "the learner changed without a failure");

    int twice, once = experiences_once(&c, "c-", n, &twice);
    cr_expect_eq(twice, 0, "%d rewards closed twice", twice);
    cr_expect_eq(once, n, "%d of %d rewards closed", once, n);

    double version = converged_version(&c, 60000);
    cr_expect_gt(version, n / 128 / 2,
                 "the instances did not converge on a learned policy (version %.0f)", version);

    /* A late joiner reads the policy topic before it serves. */
    instance_start(&c, 3, NULL);
    char *text = harness_read_file(c.log[3], NULL);
    const char *serving = text ? strstr(text, "serving:") : NULL;
    const char *at = serving ? strstr(serving, "policy=v") : NULL;
    cr_assert_not_null(at, "no policy version in the late joiner's serving line");
    cr_expect_eq(strtod(at + 8, NULL), version, "the late joiner started on another policy");
    free(text);

    /* Damage: every instance refuses it by checksum and keeps its policy. */
    produce_snapshot(&c, 1000000000, true);
    const char *refused = "\npromptd_policy_snapshots_total{outcome=\"refused\"} ";
    cr_expect_eq(sum_reaching(&c, refused, 4, 30000), 4, "not every instance refused it");
    for (int i = 0; i < 4; i++)
        cr_expect_lt(metric(&c, i, "\npromptd_policy_version "), 1000000000,
                     "instance %d serves the damaged snapshot", i);
    cr_expect_eq(converged_version(&c, 30000), version, "the policy moved without learning");

    cluster_stop(&c);
}

/* Waits until the experience topic has stopped growing for a second (the rewards sent are
 * joined) and learner, which resumed at offset, has taken all of it; up to timeout_ms. */
static void caught_up(Cluster *c, int learner, int64_t offset, int timeout_ms) {
    long long end = harness_now_ms() + timeout_ms, since = harness_now_ms();
    int64_t last = -1;
    while (harness_now_ms() < end) {
        int64_t written = topic_end(c, T_EXPERIENCE);
        if (written != last) last = written, since = harness_now_ms();
        if (metric(c, learner, TAKEN) >= (double)(written - offset) &&
            harness_now_ms() - since >= 1000)
            return;
        usleep(200000);
    }
}

/* The learner's last "published policy version V (... experiences up to offset O)" line
 * for version, or -1. */
static int64_t published_offset(const char *log, double version) {
    char needle[80];
    snprintf(needle, sizeof needle, "published policy version %.0f (", version);
    char *text = harness_read_file(log, NULL);
    const char *at = text ? strstr(text, needle) : NULL;
    const char *off = at ? strstr(at, "up to offset ") : NULL;
    int64_t offset = off ? strtoll(off + 13, NULL, 10) : -1;
    free(text);
    return offset;
}

/* kill -9 of the learner in the middle of the rewards. Another instance is elected within
 * the session timeout, resumes from the newest snapshot at the offset it covers, and takes
 * every experience after it exactly once; learning goes on. */
Test(cluster, the_learner_killed_is_replaced_and_nothing_is_learned_twice) {
    Cluster c = {0};
    const int n = 20000;
    int learner = three_instances(&c);

    send_prompts(&c, "k-", 0, n);
    cr_assert_geq(sum_reaching(&c, "\npromptd_decisions_total ", n, 240000), n,
                  "prompts undecided");
    /* Half the rewards, the last of them still being learned when the learner dies. */
    send_rewards_paced(&c, "k-", 0, n / 2 - CHUNK, CHUNK);
    send_rewards(&c, "k-", n / 2 - CHUNK, CHUNK);
    double before = metric(&c, learner, "\npromptd_policy_published_version ");
    cr_assert_gt(before, 0, "nothing published before the kill");

    proc_signal(&c.proc[learner], SIGKILL);
    c.running[learner] = false;
    long long killed = harness_now_ms();
    int next = learner_of(&c, 30000);
    cr_assert_geq(next, 0, "no instance took the learner's role");
    cr_log_info("learner %d killed; instance %d elected after %lld ms", learner, next,
                harness_now_ms() - killed);

    /* It resumed from a snapshot the dead learner published, at the offset that covers. */
    const char *says = "this instance is the learner: policy version ";
    char *text = harness_read_file(c.log[next], NULL);
    const char *line = NULL;
    for (const char *p = text; p && (p = strstr(p, says)); p++) line = p; /* the last one */
    cr_assert_not_null(line, "the new learner names no snapshot it resumed from");
    double resumed = strtod(line + 45, NULL);
    const char *from = strstr(line, "experiences from offset ");
    cr_assert_not_null(from);
    int64_t offset = strtoll(from + 24, NULL, 10);
    free(text);
    cr_expect_geq(resumed, before, "resumed from a snapshot older than one seen before the kill");
    cr_expect_eq(published_offset(c.log[learner], resumed), offset,
                 "the snapshot's offset is not the one its learner published");

    /* The rest of the rewards, paced again: learning goes on. */
    double took_before = metric(&c, next, TAKEN);
    for (int first = n / 2; first < n; first += CHUNK) {
        send_rewards(&c, "k-", first, CHUNK);
        caught_up(&c, next, offset, 60000);
    }
    cr_log_info("the new learner had taken %.0f before the rest was sent", took_before);
    caught_up(&c, next, offset, 60000);
    int64_t written = topic_end(&c, T_EXPERIENCE);
    double took = metric(&c, next, TAKEN);
    cr_log_info("experiences: %" PRId64 " written, resumed at %" PRId64 ", %.0f taken after",
                written, offset, took);
    cr_expect_eq(took, (double)(written - offset),
                 "the new learner took experiences twice or skipped some");
    cr_expect_gt(written, n / 2, "too few experiences written");
    double version = converged_version(&c, 60000);
    cr_expect_gt(version, resumed, "no learning after the failover");

    cluster_stop(&c);
}

/* With nothing but learner.mode distributed (librdkafka's default session timeout, the
 * embedded broker creating both topics), one instance elects itself and stops cleanly. */
Test(cluster, alone_on_the_defaults_an_instance_is_its_own_learner) {
    const char *dir = harness_tmpdir();
    char log[600], state[700];
    snprintf(log, sizeof log, "%s/promptd.log", dir);
    snprintf(state, sizeof state, "learner.checkpoint_dir=%s/state", dir);
    char *argv[] = {(char *)harness_promptd(),
                    "--set",
                    "learner.mode=distributed",
                    "--set",
                    "metrics.listen=127.0.0.1:0",
                    "--set",
                    state,
                    NULL};
    Proc p;
    cr_assert_eq(proc_start(&p, argv, NULL, NULL, log), 0);
    cr_expect_eq(harness_wait_text(log, "this instance is the learner", 60000), 0,
                 "it did not become the learner");
    proc_signal(&p, SIGTERM);
    cr_expect_eq(proc_wait(&p, 60000), 0, "it did not stop cleanly");
    harness_cleanup();
}
