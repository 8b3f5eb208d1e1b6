/*
 * The soak (`make soak`): promptd serves for SOAK_MINUTES (default 30) at half of the
 * throughput measured at the start, with rewards coming back for every decision, a reload
 * (SIGHUP) every 2 minutes and one Redis restart in the middle. Every minute it samples
 * promptd's resident memory and open descriptors and prints a table row. It passes when
 * every prompt is decided, resident memory grows less than 5% after warm-up (the first
 * fifth of the run; the least of the last five minutes against the least of the five
 * after warm-up, sampled every second),
 * the descriptors at the end are those after warm-up, and promptd
 * exits 0 on SIGTERM. The "journal" column is the decisions promptd holds in memory
 * awaiting their reward: it stays small while promptd keeps up.
 *
 * Everything but promptd and redis-server runs in this process: the mock cluster (so
 * that it outlives nothing it should not), a producer pacing the prompts, and a consumer
 * counting the decisions per id and answering each first decision with a reward event.
 *
 * Usage: soak PROMPTD. SOAK_MINUTES and SOAK_RATE (prompts/s; default half the measured
 * maximum) change the run.
 */
#include <dirent.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/mockbroker.h"
#include "harness.h"
#include "redis_harness.h"

#define PREFIX       "soak-"
#define WARMUP_COUNT 60000 /* prompts sent at full speed to measure the maximum */

static const char *const topics[] = {"promptd.prompts", "promptd.decisions", "promptd.dead-letters",
                                     "promptd.rewards"};

typedef struct {
    rd_kafka_t *producer; /* prompts and rewards */
    rd_kafka_t *consumer; /* decisions */
    unsigned char *seen;  /* decisions per id, saturating at 255 */
    long capacity;
    atomic_long unique, duplicates, foreign;
    atomic_bool stop;
    pthread_t thread;
} Soak;

static void die(const char *what) {
    fprintf(stderr, "soak: %s\n", what);
    exit(2);
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *bootstrap) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err);
    if (type == RD_KAFKA_CONSUMER) {
        rd_kafka_conf_set(conf, "group.id", "soak-checker", err, sizeof err);
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err);
    } else {
        rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
    }
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
    if (!rk) die(err);
    return rk;
}

static void produce(rd_kafka_t *p, const char *topic, const char *key, const char *value) {
    for (;;) {
        rd_kafka_resp_err_t rc =
            rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
                              RD_KAFKA_V_VALUE((void *)value, strlen(value)),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (rc != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
        rd_kafka_poll(p, 10);
    }
    rd_kafka_poll(p, 0);
}

/* Takes one decision: counts its id, and rewards it the first time. */
static void take(Soak *s, const rd_kafka_message_t *m) {
    json_t *d = json_loadb(m->payload, m->len, 0, NULL);
    const char *id = json_string_value(json_object_get(d, "id"));
    long i = id && !strncmp(id, PREFIX, strlen(PREFIX)) ? atol(id + strlen(PREFIX)) : -1;
    if (i < 0 || i >= s->capacity) {
        atomic_fetch_add(&s->foreign, 1);
    } else if (s->seen[i] == 0) {
        s->seen[i] = 1;
        char reward[128];
        snprintf(reward, sizeof reward, "{\"id\":\"%s\",\"resolved\":%s,\"rating\":%ld}", id,
                 i % 3 ? "true" : "false", 1 + i % 5);
        produce(s->producer, "promptd.rewards", id, reward);
        atomic_fetch_add(&s->unique, 1);
    } else {
        if (s->seen[i] < 255) s->seen[i]++;
        atomic_fetch_add(&s->duplicates, 1);
    }
    json_decref(d);
}

static void *consume(void *arg) {
    Soak *s = arg;
    while (!atomic_load(&s->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 100);
        if (!m) continue;
        if (!m->err) take(s, m);
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

static void prompt(Soak *s, long i) {
    char key[32], text[256], value[400];
    snprintf(key, sizeof key, PREFIX "%ld", i);
    harness_prompt_text(text, sizeof text, (int)(i % 1000003));
    snprintf(value, sizeof value, "{\"id\":\"%s\",\"text\":\"%s\",\"session\":\"s%ld\"}", key, text,
             i % 97);
    produce(s->producer, "promptd.prompts", key, value);
}

/* Waits until `unique` ids are decided, or timeout_ms pass. */
static bool decided(Soak *s, long unique, int timeout_ms) {
    for (long long end = harness_now_ms() + timeout_ms; harness_now_ms() < end; usleep(50000))
        if (atomic_load(&s->unique) >= unique) return true;
    return false;
}

#define JOINED "\npromptd_reward_events_total{outcome=\"joined\"} "

static long least(const long *v, int n) {
    long m = v[0];
    for (int i = 1; i < n; i++)
        if (v[i] < m) m = v[i];
    return m;
}

/* Resident kilobytes and open descriptors of pid. */
static long rss_kb(pid_t pid) {
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

static int open_fds(pid_t pid) {
    char path[64];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2) die("usage: soak PROMPTD");
    setenv("PROMPTD", argv[1], 1);
    signal(SIGPIPE, SIG_IGN);
    int minutes = getenv("SOAK_MINUTES") ? atoi(getenv("SOAK_MINUTES")) : 30;
    long rate = getenv("SOAK_RATE") ? atol(getenv("SOAK_RATE")) : 0;
    if (minutes < 10) die("SOAK_MINUTES must be at least 10");

    /* The parts: Redis, the cluster, promptd, and this process's clients. */
    const char *dir = harness_tmpdir();
    char err[512], url[300], sets[5][700], log[600], admin[600];
    RedisServer redis;
    MockBroker *broker;
    if (!dir || rserver_start(&redis, NULL)) die("redis-server did not start");
    if (mockbroker_start(&broker, 1, topics, 4, 8, err, sizeof err)) die(err);
    const char *bootstrap = mockbroker_bootstraps(broker);
    snprintf(sets[0], sizeof sets[0], "kafka.brokers=%s", bootstrap);
    snprintf(sets[1], sizeof sets[1], "redis.url=%s", rserver_url(&redis, 0, url, sizeof url));
    snprintf(sets[2], sizeof sets[2], "learner.checkpoint_dir=%s/state", dir);
    snprintf(sets[3], sizeof sets[3], "reward.window=1m");
    harness_path(log, sizeof log, dir, "promptd.log");
    harness_path(admin, sizeof admin, dir, "admin.sock");
    snprintf(sets[4], sizeof sets[4], "admin.socket=%s", admin);
    char *pargv[] = {argv[1],
                     "--set",
                     sets[0],
                     "--set",
                     sets[1],
                     "--set",
                     sets[2],
                     "--set",
                     sets[3],
                     "--set",
                     sets[4],
                     "--set",
                     "metrics.listen=127.0.0.1:0",
                     NULL};
    Proc promptd;
    if (proc_start(&promptd, pargv, NULL, NULL, log)) die("cannot start promptd");
    if (harness_wait_text(log, "assigned", 60000)) die("promptd never got its partitions");

    Soak s = {.capacity = WARMUP_COUNT + (rate ? rate : 50000) * 60L * minutes};
    s.seen = calloc((size_t)s.capacity, 1);
    s.producer = client(RD_KAFKA_PRODUCER, bootstrap);
    s.consumer = client(RD_KAFKA_CONSUMER, bootstrap);
    rd_kafka_poll_set_consumer(s.consumer);
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subs, "promptd.decisions", RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(s.consumer, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (!s.seen || pthread_create(&s.thread, NULL, consume, &s)) die("out of memory");

    /* The maximum: a burst at full speed, timed from its first decision until promptd has
     * joined the reward of its last one (a prompt costs its decision and its reward). */
    long sent = 0;
    for (; sent < 1000; sent++) prompt(&s, sent);
    if (!decided(&s, 1000, 60000)) die("the first 1,000 prompts were not decided");
    double t0 = harness_seconds();
    for (; sent < WARMUP_COUNT; sent++) prompt(&s, sent);
    for (long long end = harness_now_ms() + 300000; harness_metric(admin, JOINED) < WARMUP_COUNT;) {
        if (harness_now_ms() > end) die("the burst's rewards were not joined");
        usleep(20000);
    }
    double max_rate = (WARMUP_COUNT - 1000) / (harness_seconds() - t0);
    if (!rate) rate = (long)(max_rate / 2);
    if (WARMUP_COUNT + rate * 60L * minutes > s.capacity) die("SOAK_RATE above 50,000/s");
    printf("soak: maximum %.0f prompts/s with rewards; serving %ld/s for %d minutes\n", max_rate,
           rate, minutes);
    printf("%6s %10s %9s %8s %8s %8s %5s %9s  %s\n", "minute", "decided", "dups", "rate/s",
           "RSS min", "RSS max", "fds", "journal", "event");

    /* The run, paced in 10 ms steps; resident memory sampled every second. */
    long *rss_min = calloc((size_t)minutes + 1, sizeof *rss_min), rss = 0, peak = 0;
    long *rss_max = calloc((size_t)minutes + 1, sizeof *rss_max);
    int warm = (minutes + 4) / 5;
    int base_fds = 0, fds = 0, max_fds = 0, reloads = 0;
    double start = harness_seconds(), prev = 0;
    long prev_unique = atomic_load(&s.unique);
    for (int minute = 1; minute <= minutes; minute++) {
        const char *event = "";
        for (double sampled = 0; harness_seconds() - start < 60.0 * minute;) {
            long due = WARMUP_COUNT + (long)((harness_seconds() - start) * (double)rate);
            while (sent < due) prompt(&s, sent++);
            rd_kafka_poll(s.producer, 10);
            if (harness_seconds() - sampled < 1.0) continue;
            sampled = harness_seconds();
            if ((rss = rss_kb(promptd.pid)) < 0 || promptd.exited) die("promptd is gone");
            if (!rss_min[minute] || rss < rss_min[minute]) rss_min[minute] = rss;
            if (rss > rss_max[minute]) rss_max[minute] = rss;
        }
        if (minute == minutes / 2) {
            rserver_restart(&redis);
            event = "redis restarted";
        } else if (minute % 2 == 0) {
            proc_signal(&promptd, SIGHUP);
            reloads++;
            event = "reload";
        }
        fds = open_fds(promptd.pid);
        if (minute == warm) base_fds = fds;
        if (minute >= warm && rss_max[minute] > peak) peak = rss_max[minute];
        if (base_fds && fds > max_fds) max_fds = fds;
        long unique = atomic_load(&s.unique);
        double now = harness_seconds() - start;
        printf("%6d %10ld %9ld %8.0f %8.1f %8.1f %5d %9.0f  %s%s\n", minute, unique,
               atomic_load(&s.duplicates), (double)(unique - prev_unique) / (now - prev),
               (double)rss_min[minute] / 1024, (double)rss_max[minute] / 1024, fds,
               harness_metric(admin, "\npromptd_journal_memory_entries "), event,
               minute == (minutes + 4) / 5 ? (*event ? ", warm" : "warm") : "");
        fflush(stdout);
        prev_unique = unique, prev = now;
    }

    /* The end: every prompt decided, a clean stop. */
    bool all = decided(&s, sent, 120000);
    proc_signal(&promptd, SIGTERM);
    int code = proc_wait(&promptd, 60000);
    atomic_store(&s.stop, true);
    pthread_join(s.thread, NULL);
    long unique = atomic_load(&s.unique);
    /* Growth is the floor's, not a surge's: the least resident memory of the five minutes
     * from warm-up against that of the last five. A surge (a backlog fills the journal and
     * librdkafka's prefetch queue, and drains) leaves the floor where it was; a leak
     * raises it. */
    long base_rss = least(rss_min + warm, 5), end_rss = least(rss_min + minutes - 4, 5);
    double growth = 100.0 * (double)(end_rss - base_rss) / (double)base_rss;
    bool memory_ok = growth < 5.0, fds_ok = fds <= base_fds && max_fds <= base_fds + 4;
    printf("soak: %ld prompts sent, %ld decided (%ld undecided at the end), %ld duplicates, "
           "%ld foreign; %d reloads, 1 Redis restart\n",
           sent, unique, sent - unique, atomic_load(&s.duplicates), atomic_load(&s.foreign),
           reloads);
    printf("soak: least resident memory after warm-up %.1f MiB, at the end %.1f MiB (%+.1f%%, "
           "limit 5%%; peak %.1f MiB): %s\n",
           (double)base_rss / 1024, (double)end_rss / 1024, growth, (double)peak / 1024,
           memory_ok ? "ok" : "FAIL");
    printf("soak: descriptors after warm-up %d, at most %d, at the end %d: %s\n", base_fds, max_fds,
           fds, fds_ok ? "ok" : "FAIL");
    printf("soak: promptd exited %d on SIGTERM: %s\n", code, code == 0 ? "ok" : "FAIL");

    rd_kafka_consumer_close(s.consumer);
    rd_kafka_destroy(s.consumer);
    rd_kafka_flush(s.producer, 5000);
    rd_kafka_destroy(s.producer);
    free(s.seen);
    free(rss_min);
    free(rss_max);
    mockbroker_stop(broker);
    rserver_stop(&redis);
    harness_cleanup();
    bool ok = all && unique == sent && memory_ok && fds_ok && code == 0;
    printf("soak: %s\n", ok ? "passed" : "FAILED");
    return ok ? 0 : 1;
}
