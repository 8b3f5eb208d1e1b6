/*
 * Stream benchmark (make bench): prompt-to-decision throughput and latency of promptd
 * through the embedded broker, against the transport's ceiling measured in the same run on
 * the same broker: kcat alone moving the same messages (kcat -C | kcat -P).
 *
 * The benchmark hosts librdkafka's mock cluster itself (the same code promptd embeds), so
 * that both contenders read the same preloaded prompts from the same brokers. Throughput
 * is timed from the first to the last output message seen by an independent consumer, so a
 * consumer group's join time (about 3 s on the mock) is not counted against promptd.
 *
 * A report, not a test: it prints figures and ratios and never fails on a slow machine.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../daemon/mockbroker.h"
#include "../daemon/pd.h"

#define PARTITIONS      16
#define PROMPTS         100000
#define LATENCY_RATE    5000 /* prompts per second in the latency phase */
#define LATENCY_SECONDS 6
#define STORM_PROMPTS   20000
#define STORM_RATE      1000 /* prompts per second in the storm's latency phase */
#define STORM_SECONDS   5

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "bench_stream: %s\n", what);
    exit(1);
}

static const char *alarm_text(int i, char *buf, size_t len) {
    static const char *const texts[] = {
        "WTG-%02d gearbox bearing temperature %d C above limit",
        "CRAC unit %d return air %dC high, rack row B",
        "UPS-%d on battery, load %d%%, input voltage lost",
        "风机%d号 齿轮箱轴承温度 %d°C 超限",
        "PDU %d branch circuit %d overcurrent",
        "core switch 10.0.%d.%d BGP session down",
    };
    snprintf(buf, len, texts[i % 6], i % 40 + 1, 60 + i % 37);
    return buf;
}

typedef const char *TextFn(int i, char *buf, size_t len);

/* An alarm storm: 95% of the prompts repeat one of the six alarm texts once numbers are
 * masked; the others are new (i spelt in letters, which the normaliser keeps). */
static const char *storm_text(int i, char *buf, size_t len) {
    uint32_t h = (uint32_t)i * 2654435761u;
    if (h % 100 >= 5) return alarm_text((int)(h >> 8), buf, len);

    char word[16];
    int k = 0;
    for (unsigned v = (unsigned)i; k < (int)sizeof word - 1; v /= 26) {
        word[k++] = (char)('a' + v % 26);
        if (v < 26) break;
    }
    word[k] = 0;
    snprintf(buf, len, "sensor %s reports a fault on feeder %s", word, word);
    return buf;
}

/* --- clients --- */

static rd_kafka_t *client(rd_kafka_type_t type, const char *brokers) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    if (type == RD_KAFKA_CONSUMER) {
        rd_kafka_conf_set(conf, "group.id", "bench-reader", err, sizeof err);
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "5", err, sizeof err);
    }
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
    if (!rk) die(err);
    return rk;
}

/* Reads topic from offset (RD_KAFKA_OFFSET_BEGINNING or _END) on every partition, without
 * a group. */
static rd_kafka_t *reader_from(const char *brokers, const char *topic, int64_t offset) {
    rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, brokers);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(PARTITIONS);
    for (int p = 0; p < PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = offset;
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    return rk;
}

static rd_kafka_t *reader(const char *brokers, const char *topic) {
    return reader_from(brokers, topic, RD_KAFKA_OFFSET_BEGINNING);
}

static void produce(rd_kafka_t *rk, const char *topic, const char *id, const char *text) {
    char json[512];
    int n = snprintf(json, sizeof json, "{\"id\":\"%s\",\"text\":\"%s\"}", id, text);
    while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(json, (size_t)n),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rk, 10);
}

static void preload(const char *brokers, const char *topic, const char *prefix, int n,
                    TextFn *text_of) {
    char id[32], text[256];
    rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, brokers);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s%d", prefix, i);
        produce(rk, topic, id, text_of(i, text, sizeof text));
    }
    if (rd_kafka_flush(rk, 60000)) die("preload did not finish");
    rd_kafka_destroy(rk);
}

/* Drains what topic already holds, so that timing starts with the reader caught up. */
static void drain(rd_kafka_t *rk, int idle_ms) {
    for (;;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, idle_ms);
        if (!m) return;
        rd_kafka_message_destroy(m);
    }
}

/* Seconds between the first and the last of n new messages on the reader's topic; 0 on
 * timeout. The reader is already polling when the contender starts, so neither side's
 * start-up (a group join, kcat's metadata request) is counted. */
static double time_outputs(rd_kafka_t *rk, int n, double timeout_s) {
    double first = 0, last = 0, deadline = now_s() + timeout_s;
    int seen = 0;
    while (seen < n && now_s() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) continue;
        if (!m->err) {
            last = now_s();
            if (seen++ == 0) first = last;
        }
        rd_kafka_message_destroy(m);
    }
    return seen == n ? last - first : 0;
}

static void close_reader(rd_kafka_t *rk) {
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

/* --- contenders --- */

static pid_t spawn(char *const argv[], int in_fd, int out_fd) {
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(in_fd >= 0 ? in_fd : null, 0);
        dup2(out_fd >= 0 ? out_fd : null, 1);
        dup2(null, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static double kcat_ceiling(const char *brokers) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC)) die("pipe");
    char *consume[] = {
        "kcat", "-C", "-b", (char *)brokers, "-t", "promptd.prompts", "-o", "beginning",
        "-e",   "-q", "-f", "%s\n",          NULL};
    char *copy[] = {"kcat", "-P", "-b", (char *)brokers, "-t", "bench.copy", NULL};
    rd_kafka_t *rd = reader(brokers, "bench.copy");
    drain(rd, 500);
    pid_t c = spawn(consume, -1, pipefd[1]);
    pid_t p = spawn(copy, pipefd[0], -1);
    close(pipefd[0]);
    close(pipefd[1]);

    double secs = time_outputs(rd, PROMPTS, 120);
    waitpid(c, NULL, 0);
    waitpid(p, NULL, 0);
    close_reader(rd);
    return secs > 0 ? PROMPTS / secs : 0;
}

/* Starts promptd on brokers; settings: more "key=value ..." (or NULL), after those of
 * BENCH_STREAM_SET. */
static pid_t start_promptd(const char *promptd, const char *brokers, const char *settings) {
    char set[600];
    snprintf(set, sizeof set, "kafka.brokers=%s", brokers);
    char *argv[] = {(char *)promptd,
                    "--set",
                    set,
                    "--set",
                    "log.level=warning",
                    "--set",
                    "kafka.consumer.fetch.wait.max.ms=5",
                    "--set",
                    "metrics.listen=127.0.0.1:0",
                    "--set",
                    "learner.checkpoint_dir=/tmp/promptd-bench-state",
                    [11] = NULL,
                    [28] = NULL};

    /* BENCH_STREAM_SET="key=value ..." (up to eight with settings) shows what settings
     * cost. */
    static char extra[1024];
    const char *env = getenv("BENCH_STREAM_SET");
    snprintf(extra, sizeof extra, "%s %s", env ? env : "", settings ? settings : "");
    size_t argc = 11;
    char *save = NULL;
    for (char *kv = strtok_r(extra, " ", &save); kv && argc + 2 < PD_ARRAY_LEN(argv);
         kv = strtok_r(NULL, " ", &save)) {
        argv[argc++] = "--set";
        argv[argc++] = kv;
    }
    return spawn(argv, -1, -1);
}

static double promptd_throughput(const char *promptd, const char *brokers, pid_t *pid) {
    rd_kafka_t *rd = reader(brokers, "promptd.decisions");
    drain(rd, 500);
    *pid = start_promptd(promptd, brokers, NULL);
    double secs = time_outputs(rd, PROMPTS, 180);
    close_reader(rd);
    return secs > 0 ? PROMPTS / secs : 0;
}

/* --- latency --- */

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sends prompts at rate per second for seconds and measures each one's time to its
 * decision (ids prefix + number). A warm-up round first lets the producer learn the
 * partition leaders. */
static void latency(const char *brokers, int rate, int seconds, TextFn *text_of, const char *prefix,
                    double *p50, double *p99) {
    int n = rate * seconds, seen = 0;
    size_t plen = strlen(prefix);
    char needle[40];
    snprintf(needle, sizeof needle, "\"id\":\"%s", prefix);
    double *sent = calloc((size_t)n, sizeof *sent), *lat = calloc((size_t)n, sizeof *lat);
    rd_kafka_t *prod = client(RD_KAFKA_PRODUCER, brokers);
    rd_kafka_t *rd = reader_from(brokers, "promptd.decisions", RD_KAFKA_OFFSET_END);
    char id[32], text[256];

    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "W%s%d", prefix, i);
        produce(prod, "promptd.prompts", id, text_of(i, text, sizeof text));
    }
    rd_kafka_flush(prod, 10000);
    drain(rd, 1000);

    double start = now_s(), deadline = start + seconds + 30;
    int next = 0;
    while (seen < n && now_s() < deadline) {
        while (next < n && now_s() >= start + (double)next / rate) {
            snprintf(id, sizeof id, "%s%d", prefix, next);
            sent[next] = now_s();
            produce(prod, "promptd.prompts", id, text_of(next, text, sizeof text));
            next++;
        }
        rd_kafka_poll(prod, 0);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rd, 1);
        if (!m) continue;
        const char *p = m->err ? NULL : memmem(m->payload, m->len, needle, 6 + plen);
        if (p) {
            int i = atoi(p + 6 + plen);
            if (i >= 0 && i < n && sent[i] > 0) lat[seen++] = now_s() - sent[i];
        }
        rd_kafka_message_destroy(m);
    }
    qsort(lat, (size_t)seen, sizeof *lat, compare);
    *p50 = seen ? lat[seen / 2] * 1e3 : 0;
    *p99 = seen ? lat[seen * 99 / 100] * 1e3 : 0;
    rd_kafka_consumer_close(rd);
    rd_kafka_destroy(rd);
    rd_kafka_destroy(prod);
    free(sent);
    free(lat);
}

/* The embedding cache's worth on an alarm storm: throughput and latency with the cache
 * (L1, no Redis) against without it (cache.l1_bytes 0: every prompt encoded). */
static void storm(const char *promptd, const char *brokers) {
    printf("alarm storm (95%% repeats after normalisation): %d prompts queued, then %d/s for "
           "%d s\n",
           STORM_PROMPTS, STORM_RATE, STORM_SECONDS);
    double rates[2] = {0};
    for (int cached = 1; cached >= 0; cached--) {
        const char *prefix = cached ? "c" : "u", *latency_prefix = cached ? "CL" : "UL";
        rd_kafka_t *rd = reader_from(brokers, "promptd.decisions", RD_KAFKA_OFFSET_END);
        drain(rd, 1000); /* long enough for the reader to find the ends */
        preload(brokers, "promptd.prompts", prefix, STORM_PROMPTS, storm_text);
        pid_t pd = start_promptd(promptd, brokers, cached ? NULL : "cache.l1_bytes=0");
        double secs = time_outputs(rd, STORM_PROMPTS, 180);
        close_reader(rd);

        double p50, p99;
        latency(brokers, STORM_RATE, STORM_SECONDS, storm_text, latency_prefix, &p50, &p99);
        kill(pd, SIGTERM);
        waitpid(pd, NULL, 0);

        rates[cached] = secs > 0 ? STORM_PROMPTS / secs : 0;
        printf("  %-24s %9.0f prompts/s   p50 %.2f ms   p99 %.2f ms\n",
               cached ? "with the cache" : "without (l1_bytes 0)", rates[cached], p50, p99);
    }
    printf("  throughput with the cache / without: %.1fx\n",
           rates[0] > 0 ? rates[1] / rates[0] : 0);
}

/* --- scale-out --- */

/* Aggregate throughput of 1, 2 and 3 instances in one consumer group (learner.mode
 * distributed), cache warm: the six alarm texts repeat once numbers are masked. The group
 * settles before the prompts are written, so no rebalance is timed. On this 2-core machine
 * the instances share the cores: this measures the coordination's cost, not a speed-up. */
static void scale_out(const char *promptd, const char *brokers) {
    enum { MAX = 3, SETTLE_S = 12 };
    static char sets[MAX][600];
    double rates[MAX + 1] = {0};
    printf("scale-out: instances in one group, learner.mode distributed, %d prompts each "
           "round\n",
           PROMPTS);
    for (int k = 1; k <= MAX; k++) {
        char prefix[8];
        pid_t pids[MAX];
        snprintf(prefix, sizeof prefix, "s%d-", k);
        rd_kafka_t *rd = reader_from(brokers, "bench.scale.out", RD_KAFKA_OFFSET_END);
        drain(rd, 1000);
        for (int i = 0; i < k; i++) {
            snprintf(sets[i], sizeof sets[i],
                     "kafka.group.id=bench-scale-%d kafka.topic.prompts=bench.scale-%d "
                     "kafka.topic.decisions=bench.scale.out learner.mode=distributed "
                     "kafka.topic.experience=bench.scale.exp-%d "
                     "kafka.topic.policy=bench.scale.policy-%d "
                     "learner.checkpoint_dir=/tmp/promptd-bench-state-%d",
                     k, k, k, k, i);
            pids[i] = start_promptd(promptd, brokers, sets[i]);
        }
        sleep(SETTLE_S);
        char topic[32]; /* each round its own, so that a new group has nothing old to read */
        snprintf(topic, sizeof topic, "bench.scale-%d", k);
        preload(brokers, topic, prefix, PROMPTS, alarm_text);
        double secs = time_outputs(rd, PROMPTS, 180);
        close_reader(rd);
        for (int i = 0; i < k; i++) kill(pids[i], SIGTERM);
        for (int i = 0; i < k; i++) waitpid(pids[i], NULL, 0);
        rates[k] = secs > 0 ? PROMPTS / secs : 0;
        printf("  %d instance%s %9.0f prompts/s   ratio to one %.2f\n", k, k > 1 ? "s" : " ",
               rates[k], rates[1] > 0 ? rates[k] / rates[1] : 0);
    }
}

int main(int argc, char **argv) {
    const char *promptd = argc > 1 ? argv[1] : "build/promptd";
    const char *topics[] = {"promptd.prompts", "promptd.decisions", "promptd.dead-letters",
                            "promptd.rewards", "bench.copy",        "bench.scale.out"};
    char err[512];
    MockBroker *mb;
    if (mockbroker_start(&mb, 3, topics, 6, PARTITIONS, err, sizeof err)) die(err);
    for (int k = 1; k <= 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "bench.scale-%d", k);
        rd_kafka_mock_topic_create(mockbroker_cluster(mb), name, PARTITIONS, 3);
        snprintf(name, sizeof name, "bench.scale.exp-%d", k);
        rd_kafka_mock_topic_create(mockbroker_cluster(mb), name, 1, 3);
        snprintf(name, sizeof name, "bench.scale.policy-%d", k);
        rd_kafka_mock_topic_create(mockbroker_cluster(mb), name, 1, 3);
    }
    const char *brokers = mockbroker_bootstraps(mb);

    printf("stream benchmark: librdkafka %s mock cluster, 3 brokers, %d partitions, %d "
           "prompts\n",
           rd_kafka_version_str(), PARTITIONS, PROMPTS);
    preload(brokers, "promptd.prompts", "p", PROMPTS, alarm_text);

    double ceiling = kcat_ceiling(brokers);
    printf("  transport ceiling (kcat -C | kcat -P)   %9.0f msg/s\n", ceiling);

    pid_t pd;
    double rate = promptd_throughput(promptd, brokers, &pd);
    printf("  promptd prompt -> decision             %9.0f msg/s   ratio %.2f (target >= 0.50)\n",
           rate, ceiling > 0 ? rate / ceiling : 0);

    double p50, p99;
    latency(brokers, LATENCY_RATE, LATENCY_SECONDS, alarm_text, "L", &p50, &p99);
    printf("  latency at %d prompts/s               p50 %.2f ms   p99 %.2f ms\n", LATENCY_RATE, p50,
           p99);

    kill(pd, SIGTERM);
    waitpid(pd, NULL, 0);

    storm(promptd, brokers);
    if (!getenv("BENCH_STREAM_NO_SCALE")) scale_out(promptd, brokers);
    mockbroker_stop(mb);
    return 0;
}
