/*
 * Embedding-cache benchmark (make bench): L2 lookups per second through cache_get (L1
 * off, batches of 256 keys, 64-float vectors: 272-byte values) against redis-benchmark's
 * pipelined GET rate on the same redis-server in the same run (-P 16, the same value
 * size), and their ratio (target >= 0.8); then the cost of an L1 hit (target < 1 µs).
 * Each rate is the median of three rounds, taken alternately.
 *
 * Two references are printed. redis-benchmark's GET without -r reads one hot key over
 * and over; the cache reads 65536 keys, and on a keyspace that size Redis's own lookups
 * (dictFind) dominate the cost. So the like-for-like reference is GET with -r 65536;
 * the hot-key figure is shown as well.
 *
 * A report, not a test: it starts its own redis-server on a free loopback port.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../daemon/cache.h"
#include "../daemon/log.h"
#include "../tests/redis_harness.h"

#define DIM     64
#define BATCH   256
#define KEYS    65536
#define ROUNDS  3
#define RB_REQS 300000

static CacheKey keys[KEYS];
static float vectors[BATCH * DIM];
static float out[BATCH * DIM];
static bool found[BATCH];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static RedisServer server;

static void die(const char *msg) {
    fprintf(stderr, "bench_cache: %s\n", msg);
    rserver_stop(&server);
    exit(1);
}

static Cache *open_cache(const char *url, int64_t l1_bytes) {
    CacheConfig cfg = {url, l1_bytes, 3600 * 1000, 1000, 1000, 0, 0};
    char err[512];
    Cache *c;
    if (cache_open(&c, &cfg, err, sizeof err)) die(err);
    return c;
}

/* Puts every key; returns keys per second. */
static double fill(Cache *c) {
    for (size_t i = 0; i < BATCH * DIM; i++) vectors[i] = (float)i * 0.001f;
    for (size_t i = 0; i < KEYS; i++) {
        char text[64];
        int len = snprintf(text, sizeof text, "wtg-<num> gearbox bearing temp <num> %zu", i);
        cache_key(&keys[i], 0x5eed, text, (size_t)len);
    }
    double t0 = now_s();
    for (size_t i = 0; i < KEYS; i += BATCH) cache_put(c, keys + i, BATCH, DIM, vectors);
    return KEYS / (now_s() - t0);
}

/* Keys per second through cache_get for about seconds; every key must hit. */
static double lookups(Cache *c, double seconds) {
    size_t done = 0, hits = 0, at = 0;
    double t0 = now_s(), t;
    do {
        for (int b = 0; b < 16; b++) {
            hits += cache_get(c, keys + at, BATCH, DIM, out, found);
            done += BATCH;
            at = (at + BATCH) % KEYS;
        }
        t = now_s();
    } while (t - t0 < seconds);
    if (hits != done) die("lookups missed: is Redis evicting?");
    return (double)done / (t - t0);
}

/* redis-benchmark's GET rate; -t set,get so that the GET keys hold values of our size.
 * keyspace 0 means its one fixed key. */
static double redis_benchmark(int port, int clients, int keyspace) {
    char cmd[256], random[32] = "";
    if (keyspace) snprintf(random, sizeof random, "-r %d ", keyspace);
    snprintf(cmd, sizeof cmd,
             "redis-benchmark -h 127.0.0.1 -p %d -P 16 -c %d %s-t set,get -d %d -n %d -q 2>&1",
             port, clients, random, CACHE_VALUE_HEADER + DIM * 4, RB_REQS);
    FILE *p = popen(cmd, "r");
    if (!p) die("cannot run redis-benchmark");
    /* -q redraws "GET: rps=..." after \r and ends with "GET: 123.45 requests per second":
     * read segments between \r and \n, however long the line. */
    char seg[256];
    size_t len = 0;
    double rate = 0;
    for (int ch; (ch = getc(p)) != EOF;) {
        if (ch != '\r' && ch != '\n') {
            if (len + 1 < sizeof seg) seg[len++] = (char)ch;
            continue;
        }
        seg[len] = 0;
        len = 0;
        char *end;
        if (!strncmp(seg, "GET: ", 5)) {
            double v = strtod(seg + 5, &end);
            if (end != seg + 5 && !strncmp(end, " requests per second", 20)) rate = v;
        }
    }
    if (pclose(p) != 0 || rate <= 0) die("redis-benchmark failed");
    return rate;
}

static void row(const char *label, double value, const char *unit, const char *note) {
    printf("  %-58s %9.0f %s%s%s\n", label, value, unit, note ? "  " : "", note ? note : "");
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v) {
    qsort(v, ROUNDS, sizeof *v, by_value);
    return v[ROUNDS / 2];
}

static void bench_l2(const RedisServer *srv) {
    char url[128];
    Cache *c = open_cache(rserver_url(srv, 0, url, sizeof url), 0);
    double writes = fill(c);

    double ours[ROUNDS], hot[ROUNDS], same[ROUNDS];
    char ratio[64];
    for (int r = 0; r < ROUNDS; r++) {
        ours[r] = lookups(c, 1.5);
        hot[r] = redis_benchmark(srv->port, 50, 0);
        same[r] = redis_benchmark(srv->port, 50, KEYS);
    }
    double one = redis_benchmark(srv->port, 1, KEYS);
    double o = median(ours), h = median(hot), s = median(same);
    char label[96];
    snprintf(label, sizeof label, "L2 lookups via cache_get (MGET of %d, one connection)", BATCH);
    row(label, o, "keys/s", NULL);
    snprintf(label, sizeof label, "L2 writes via cache_put (%d pipelined SET ... PX)", BATCH);
    row(label, writes, "keys/s", NULL);
    snprintf(label, sizeof label, "redis-benchmark GET -P 16 -c 50 -r %d, %d-byte values", KEYS,
             CACHE_VALUE_HEADER + DIM * 4);
    snprintf(ratio, sizeof ratio, "ratio %.2f (target >= 0.80)", o / s);
    row(label, s, "req/s ", ratio);
    snprintf(ratio, sizeof ratio, "ratio %.2f", o / h);
    row("redis-benchmark GET -P 16 -c 50, one hot key", h, "req/s ", ratio);
    snprintf(label, sizeof label, "redis-benchmark GET -P 16 -c 1 -r %d (one connection)", KEYS);
    snprintf(ratio, sizeof ratio, "ratio %.2f", o / one);
    row(label, one, "req/s ", ratio);

    CacheStats st = cache_stats(c);
    if (st.l2_errors || st.l2_timeouts || st.l2_corrupt) die("errors during the L2 benchmark");
    cache_close(c);
}

/* The cost of one L1 hit, in batches of BATCH and one key at a time. */
static void bench_l1(void) {
    Cache *c = open_cache("none", 256 << 20);
    fill(c);

    double t0 = now_s();
    size_t n = 0;
    for (int rep = 0; rep < 40; rep++)
        for (size_t i = 0; i < KEYS; i += BATCH)
            n += cache_get(c, keys + i, BATCH, DIM, out, found);
    double batched = (now_s() - t0) / (double)n * 1e9;

    t0 = now_s();
    size_t m = 0;
    for (int rep = 0; rep < 10; rep++)
        for (size_t i = 0; i < KEYS; i++) m += cache_get(c, keys + i, 1, DIM, out, found);
    double single = (now_s() - t0) / (double)m * 1e9;
    if (n != 40 * (size_t)KEYS || m != 10 * (size_t)KEYS) die("L1 lookups missed");

    CacheStats s = cache_stats(c);
    char label[96];
    snprintf(label, sizeof label, "L1 hit, batches of %d", BATCH);
    row(label, batched, "ns/key", "(target < 1000)");
    row("L1 hit, one key per call", single, "ns/key", NULL);
    printf("  L1 footprint: %llu entries in %.1f MiB (%.0f bytes each, index included)\n",
           (unsigned long long)s.l1_entries, (double)s.l1_bytes / (1 << 20),
           (double)s.l1_bytes / (double)s.l1_entries);
    cache_close(c);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    pd_log_set_level(PD_LOG_WARNING);

    if (rserver_start(&server, NULL)) die("redis-server did not start");
    printf("cache benchmark: redis-server on 127.0.0.1:%d, %d keys, %d floats per vector\n",
           server.port, KEYS, DIM);
    bench_l2(&server);
    bench_l1();
    rserver_stop(&server);
    return 0;
}
