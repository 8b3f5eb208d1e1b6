/*
 * The embedding cache: redis.url parsing, the L1 LRU, and L2 against a real redis-server
 * started per test on a free loopback port: hits, TTL, model change, corrupt values, AUTH
 * and databases, an outage (SIGKILL and restart), a slow and a frozen server, and error
 * replies. Waits are bounded by the tests themselves (no Criterion .timeout: it leaks in
 * Criterion 2.4.1's runner, which LeakSanitizer reports).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "../daemon/cache.h"
#include "../daemon/log.h"
#include "../daemon/pd.h"
#include "../daemon/redis.h"
#include "redis_harness.h"

#define DIM        64
#define CMD_MS     100 /* the command timeout of the tests */
#define HANG_BOUND (5 * CMD_MS)

/* --- log capture: the reconnect thread logs too --- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char lines[256][512];
static int nlines;

static void capture(void *ctx, int level, const char *line) {
    (void)ctx, (void)level;
    pthread_mutex_lock(&log_lock);
    if (nlines < 256) snprintf(lines[nlines++], sizeof lines[0], "%s", line);
    pthread_mutex_unlock(&log_lock);
}

/* Lines that start with prefix ("<4>") and contain needle. */
static int logged(const char *prefix, const char *needle) {
    int n = 0;
    pthread_mutex_lock(&log_lock);
    for (int i = 0; i < nlines; i++)
        n += !strncmp(lines[i], prefix, strlen(prefix)) && strstr(lines[i], needle);
    pthread_mutex_unlock(&log_lock);
    return n;
}

static void dump_log(void) {
    pthread_mutex_lock(&log_lock);
    for (int i = 0; i < nlines; i++) cr_log_info("log: %s", lines[i]);
    pthread_mutex_unlock(&log_lock);
}

static void setup(void) {
    nlines = 0;
    signal(SIGPIPE, SIG_IGN); /* as main does: hiredis writes with write(2) */
    pd_log_set_sink(capture, NULL);
    pd_log_set_level(PD_LOG_INFO);
    pd_log_set_ratelimit(0, 0); /* count every line */
}

static void teardown(void) {
    pd_log_set_sink(NULL, NULL);
}

/* --- helpers --- */

static long long now_ms(void) {
    return harness_now_ms();
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void make_keys(CacheKey *keys, size_t n, uint64_t model, const char *tag) {
    for (size_t i = 0; i < n; i++) {
        char text[96];
        int len =
            snprintf(text, sizeof text, "%s wtg-<num> gearbox bearing temp <num> #%zu", tag, i);
        cache_key(&keys[i], model, text, (size_t)len);
    }
}

static void make_vectors(float *v, size_t n, float seed) {
    for (size_t i = 0; i < n * DIM; i++) v[i] = seed + (float)i * 0.25f;
}

static const CacheConfig base_config = {
    .redis_url = "none",
    .l1_bytes = 1 << 20,
    .ttl_ms = 60000,
    .connect_timeout_ms = 300,
    .command_timeout_ms = CMD_MS,
    .backoff_min_ms = 20,
    .backoff_max_ms = 200,
};

static Cache *open_ok(const char *url, int64_t l1_bytes) {
    CacheConfig cfg = base_config;
    cfg.redis_url = url;
    cfg.l1_bytes = l1_bytes;
    char err[512] = "";
    Cache *c;
    int rc = cache_open(&c, &cfg, err, sizeof err);
    cr_assert_eq(rc, 0, "cache_open(%s): %s", url, err);
    return c;
}

static RedisServer *start_server(RedisServer *srv, const char *password, const char *config) {
    RedisServerOptions opt = {password, config};
    cr_assert_eq(rserver_start(srv, &opt), 0, "redis-server did not start (see %s)", srv->dir);
    return srv;
}

static Cache *open_on(const RedisServer *srv, int db, int64_t l1_bytes) {
    char url[256];
    return open_ok(rserver_url(srv, db, url, sizeof url), l1_bytes);
}

/* Waits until the reconnect thread has a connection. */
static bool wait_up(const Cache *c, int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    while (!cache_stats(c).l2_up) {
        if (now_ms() > deadline) return false;
        sleep_ms(10);
    }
    return true;
}

static long long reply_integer(redisReply *r) {
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1000;
    if (r) freeReplyObject(r);
    return v;
}

static void check_identity(const CacheStats *s) {
    cr_expect_eq(s->l1_misses, s->l2_hits + s->l2_misses + s->l2_corrupt + s->l2_unavailable,
                 "every L1 miss has one L2 outcome: %llu != %llu+%llu+%llu+%llu",
                 (unsigned long long)s->l1_misses, (unsigned long long)s->l2_hits,
                 (unsigned long long)s->l2_misses, (unsigned long long)s->l2_corrupt,
                 (unsigned long long)s->l2_unavailable);
}

static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* --- redis.url --- */

TestSuite(url, .init = setup, .fini = teardown);

Test(url, none_means_no_redis) {
    RedisUrl u;
    char err[256];
    cr_assert_eq(redis_url_parse(&u, "none", err, sizeof err), 0);
    cr_expect_eq(u.kind, REDIS_URL_NONE);
}

Test(url, redis_forms_give_host_port_db_and_credentials) {
    RedisUrl u;
    char err[256] = "";
    cr_assert_eq(redis_url_parse(&u, "redis://cache.example", err, sizeof err), 0, "%s", err);
    cr_expect_eq(u.kind, REDIS_URL_TCP);
    cr_expect_str_eq(u.host, "cache.example");
    cr_expect_eq(u.port, 6379);
    cr_expect_eq(u.db, 0);
    cr_expect_str_eq(u.password, "");

    cr_assert_eq(redis_url_parse(&u, "redis://10.0.0.5:6380/3", err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(u.host, "10.0.0.5");
    cr_expect_eq(u.port, 6380);
    cr_expect_eq(u.db, 3);

    cr_assert_eq(redis_url_parse(&u, "redis://:s3cr%40t:x@h:1/", err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(u.user, "");
    cr_expect_str_eq(u.password, "s3cr@t:x");
    cr_expect_eq(u.port, 1);
    cr_expect_eq(u.db, 0);

    cr_assert_eq(redis_url_parse(&u, "redis://app:pw@[::1]:7000/15", err, sizeof err), 0, "%s",
                 err);
    cr_expect_str_eq(u.user, "app");
    cr_expect_str_eq(u.password, "pw");
    cr_expect_str_eq(u.host, "::1");
    cr_expect_eq(u.port, 7000);
    cr_expect_eq(u.db, 15);

    /* An unencoded '@' or '/' in a password: the last '@' ends it. */
    cr_assert_eq(redis_url_parse(&u, "REDIS://:a@b/c@h", err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(u.password, "a@b/c");
    cr_expect_str_eq(u.host, "h");
}

Test(url, unix_forms_give_path_db_and_credentials) {
    RedisUrl u;
    char err[256] = "";
    cr_assert_eq(redis_url_parse(&u, "unix:///run/redis/redis.sock", err, sizeof err), 0, "%s",
                 err);
    cr_expect_eq(u.kind, REDIS_URL_UNIX);
    cr_expect_str_eq(u.path, "/run/redis/redis.sock");
    cr_expect_eq(u.db, 0);

    cr_assert_eq(redis_url_parse(&u, "unix://app:pw@/tmp/r.sock?db=4", err, sizeof err), 0, "%s",
                 err);
    cr_expect_str_eq(u.path, "/tmp/r.sock");
    cr_expect_str_eq(u.user, "app");
    cr_expect_str_eq(u.password, "pw");
    cr_expect_eq(u.db, 4);
}

Test(url, every_error_says_what_is_wrong) {
    char longhost[400], longpath[200], longpw[700];
    snprintf(longhost, sizeof longhost, "redis://%0300d", 0);
    snprintf(longpath, sizeof longpath, "unix:///%0150d", 0);
    snprintf(longpw, sizeof longpw, "redis://:%0600d@h", 0);
    const struct {
        const char *url, *message;
    } cases[] = {
        {"", "is empty"},
        {"redis://h o", "contains a space or a control character"},
        {"localhost:6379", "is not a URL"},
        {"http://h", "unknown scheme 'http'"},
        {"rediss://h", "TLS"},
        {"redis://", "has no host"},
        {"redis://:6379", "has no host"},
        {"redis://h:", "has an empty port"},
        {"redis://h:abc", "port 'abc' is not a number from 1 to 65535"},
        {"redis://h:0", "port '0' is not a number"},
        {"redis://h:65536", "port '65536' is not a number"},
        {"redis://h/x", "database 'x' is not a number"},
        {"redis://h/1/2", "database '1/2' is not a number"},
        {"redis://h/99999999999", "database '99999999999' is not a number"},
        {"redis://h?db=1", "query parameters are not supported"},
        {"redis://user@h", "has a user name but no password"},
        {"redis://:@h", "has an empty password"},
        {"redis://:p%zz@h", "bad percent-encoding in the password"},
        {"redis://:p%00@h", "bad percent-encoding in the password"},
        {"redis://us%4@h", "has a user name but no password"},
        {"redis://u%4:p@h", "bad percent-encoding in the user name"},
        {"redis://[::1", "unclosed '['"},
        {"redis://[::1]x", "unexpected 'x' after the host"},
        {"redis://h!st", "host 'h!st' has a character that is not allowed"},
        {longhost, "host is longer than 255 bytes"},
        {longpw, "password is longer than 511 bytes"},
        {"unix://", "has no socket path"},
        {"unix:///", "has no socket path"},
        {"unix://run/redis.sock", "is not absolute; write unix:///run/redis.sock"},
        {longpath, "socket path is longer than 107 bytes"},
        {"unix:///r.sock?db=a", "database 'a' is not a number"},
        {"unix:///r.sock?timeout=1", "unknown parameter 'timeout'"},
        {"unix://:@/r.sock", "has an empty password"},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        RedisUrl u;
        char err[256] = "";
        int rc = redis_url_parse(&u, cases[i].url, err, sizeof err);
        cr_expect_eq(rc, PD_ECONFIG, "'%s' parsed", cases[i].url);
        cr_expect(strstr(err, cases[i].message), "'%s': expected '%s', got '%s'", cases[i].url,
                  cases[i].message, err);
    }
}

Test(url, errors_never_echo_the_password) {
    RedisUrl u;
    char err[256];
    cr_assert_neq(redis_url_parse(&u, "redis://:hunter2@h:99999", err, sizeof err), 0);
    cr_expect_null(strstr(err, "hunter2"), "%s", err);
    cr_assert_neq(redis_url_parse(&u, "redis://:hunter2 x@h", err, sizeof err), 0);
    cr_expect_null(strstr(err, "hunter2"), "%s", err);
}

Test(url, describe_hides_the_password) {
    RedisUrl u;
    char err[256], buf[512];
    cr_assert_eq(redis_url_parse(&u, "redis://app:hunter2@[::1]:7000/2", err, sizeof err), 0);
    cr_expect_str_eq(redis_url_describe(&u, buf, sizeof buf), "redis://app:***@[::1]:7000/2");
    cr_assert_eq(redis_url_parse(&u, "unix:///tmp/r.sock?db=1", err, sizeof err), 0);
    cr_expect_str_eq(redis_url_describe(&u, buf, sizeof buf), "unix:///tmp/r.sock?db=1");
}

Test(url, cache_open_names_the_setting_at_fault) {
    CacheConfig cfg = base_config;
    Cache *c;
    char err[256];
    cfg.redis_url = "redis://h:0";
    cr_expect_eq(cache_open(&c, &cfg, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "redis.url: port '0'"), "%s", err);
    cr_expect_null(c);

    cfg = base_config;
    cfg.command_timeout_ms = 0;
    cr_expect_eq(cache_open(&c, &cfg, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "redis.command_timeout"), "%s", err);
    cfg = base_config;
    cfg.ttl_ms = 0;
    cr_expect_eq(cache_open(&c, &cfg, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "cache.ttl"), "%s", err);
}

/* --- L1 --- */

TestSuite(l1, .init = setup, .fini = teardown);

Test(l1, a_hit_returns_the_stored_vector_and_a_miss_finds_nothing) {
    Cache *c = open_ok("none", 1 << 20);
    CacheKey keys[4];
    float in[4 * DIM], out[4 * DIM];
    bool found[4];
    make_keys(keys, 4, 1, "hit");
    make_vectors(in, 4, 1.0f);

    cache_put(c, keys, 2, DIM, in);
    cr_expect_eq(cache_get(c, keys, 4, DIM, out, found), 2);
    cr_expect(found[0] && found[1] && !found[2] && !found[3]);
    cr_expect_arr_eq(out, in, 2 * DIM * sizeof(float));

    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l1_hits, 2);
    cr_expect_eq(s.l1_misses, 2);
    cr_expect_eq(s.l1_entries, 2);
    cr_expect_not(s.l2_enabled);
    cache_close(c);
}

/* What one entry of DIM floats costs, measured from the stats. */
static uint64_t entry_cost(void) {
    Cache *c = open_ok("none", 1 << 20);
    CacheKey k[2];
    float v[2 * DIM];
    make_keys(k, 2, 1, "cost");
    make_vectors(v, 2, 0);
    cache_put(c, k, 1, DIM, v);
    uint64_t one = cache_stats(c).l1_bytes;
    cache_put(c, k + 1, 1, DIM, v + DIM);
    uint64_t cost = cache_stats(c).l1_bytes - one;
    cache_close(c);
    return cost;
}

Test(l1, evicts_the_least_recently_used_first) {
    uint64_t cost = entry_cost();
    /* Room for three entries and the smallest index (64 buckets of 8 bytes). */
    Cache *c = open_ok("none", (int64_t)(3 * cost + 64 * sizeof(void *)));
    CacheKey keys[4];
    float v[4 * DIM], out[DIM];
    bool found;
    make_keys(keys, 4, 1, "lru");
    make_vectors(v, 4, 0);

    cache_put(c, keys, 3, DIM, v);                                /* A B C */
    cr_expect_eq(cache_get(c, &keys[0], 1, DIM, out, &found), 1); /* A is used: B is oldest */
    cache_put(c, &keys[3], 1, DIM, v + 3 * DIM);                  /* D evicts B */

    bool expect[4] = {true, false, true, true};
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(cache_get(c, &keys[i], 1, DIM, out, &found), expect[i], "key %d", i);
        if (found) cr_expect_arr_eq(out, v + i * DIM, DIM * sizeof(float));
    }
    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l1_evictions, 1);
    cr_expect_eq(s.l1_entries, 3);
    cache_close(c);
}

Test(l1, bytes_count_vectors_entries_and_index_within_the_budget) {
    uint64_t cost = entry_cost();
    cr_expect_geq(cost, DIM * sizeof(float) + 48, "an entry costs its vector and more: %llu",
                  (unsigned long long)cost);

    const int64_t budget = 100000;
    Cache *c = open_ok("none", budget);
    CacheKey keys[1000];
    static float v[1000 * DIM];
    make_keys(keys, 1000, 1, "budget");
    make_vectors(v, 1000, 0);
    for (int i = 0; i < 1000; i += 10) {
        cache_put(c, keys + i, 10, DIM, v + i * DIM);
        CacheStats s = cache_stats(c);
        cr_assert_leq(s.l1_bytes, (uint64_t)budget, "over budget after %d puts", i + 10);
    }

    CacheStats s = cache_stats(c);
    uint64_t index = s.l1_bytes - s.l1_entries * cost;
    cr_expect_eq(index % sizeof(void *), 0, "the rest is the bucket array");
    cr_expect_geq(index, s.l1_entries * sizeof(void *), "at most one entry per bucket");
    cr_expect_gt(s.l1_bytes, (uint64_t)budget - cost - index, "the budget is used");
    cr_expect_eq(s.l1_entries + s.l1_evictions, 1000);
    cache_close(c);
}

Test(l1, put_of_an_existing_key_replaces_it) {
    Cache *c = open_ok("none", 1 << 20);
    CacheKey k;
    float a[DIM], b[DIM], out[DIM];
    bool found;
    make_keys(&k, 1, 1, "update");
    make_vectors(a, 1, 1.0f);
    make_vectors(b, 1, 2.0f);

    cache_put(c, &k, 1, DIM, a);
    uint64_t bytes = cache_stats(c).l1_bytes;
    cache_put(c, &k, 1, DIM, b);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 1);
    cr_expect_arr_eq(out, b, sizeof b);
    cr_expect_eq(cache_stats(c).l1_entries, 1);
    cr_expect_eq(cache_stats(c).l1_bytes, bytes);

    /* Another dimension: the old vector is replaced, and is a miss at its old size. */
    cache_put(c, &k, 1, DIM / 2, a);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 0);
    cr_expect_eq(cache_get(c, &k, 1, DIM / 2, out, &found), 1);
    cr_expect_arr_eq(out, a, DIM / 2 * sizeof(float));
    cr_expect_eq(cache_stats(c).l1_entries, 1);
    cr_expect_lt(cache_stats(c).l1_bytes, bytes);
    cache_close(c);
}

Test(l1, zero_bytes_turns_it_off) {
    Cache *c = open_ok("none", 0);
    CacheKey k;
    float v[DIM], out[DIM];
    bool found;
    make_keys(&k, 1, 1, "off");
    make_vectors(v, 1, 0);
    cache_put(c, &k, 1, DIM, v);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 0);
    cr_expect_eq(cache_stats(c).l1_bytes, 0);
    cache_close(c);
}

Test(l1, keys_depend_on_model_and_text) {
    CacheKey a, b, m;
    const char *text = "wtg-<num> bearing temp <num>";
    cache_key(&a, 7, text, strlen(text));
    cache_key(&b, 7, "wtg-<num> bearing temp", strlen(text) - 6);
    cache_key(&m, 8, text, strlen(text));
    XXH128_hash_t h = XXH3_128bits(text, strlen(text));
    cr_expect(a.lo == h.low64 && a.hi == h.high64 && a.model == 7);
    cr_expect(a.lo != b.lo || a.hi != b.hi);
    cr_expect(a.lo == m.lo && a.hi == m.hi && a.model != m.model);

    char name[CACHE_REDIS_KEY_LEN + 1], want[80];
    cache_key_format(&a, name);
    snprintf(want, sizeof want, "pd:e:%016llx:%016llx%016llx", 7ULL, (unsigned long long)h.high64,
             (unsigned long long)h.low64);
    cr_expect_str_eq(name, want);
}

Test(l1, non_finite_vectors_are_never_stored) {
    Cache *c = open_ok("none", 1 << 20);
    CacheKey k[2];
    float v[2 * DIM], out[2 * DIM];
    bool found[2];
    make_keys(k, 2, 1, "nan");
    make_vectors(v, 2, 0);
    v[5] = NAN;
    v[DIM + 7] = INFINITY;
    cache_put(c, k, 2, DIM, v);
    cr_expect_eq(cache_get(c, k, 2, DIM, out, found), 0);
    cr_expect_eq(cache_stats(c).rejected, 2);
    cache_close(c);
}

/* --- L2: a real redis-server --- */

TestSuite(l2, .init = setup, .fini = teardown);

Test(l2, hit_miss_and_promotion_to_l1) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *writer = open_on(&srv, 0, 0), *reader = open_on(&srv, 0, 1 << 20);
    CacheKey keys[8];
    float in[8 * DIM], out[8 * DIM];
    bool found[8];
    make_keys(keys, 8, 42, "l2");
    make_vectors(in, 8, 3.0f);

    cache_put(writer, keys, 4, DIM, in);
    cr_expect_eq(cache_stats(writer).l2_writes, 4);

    cr_expect_eq(cache_get(reader, keys, 8, DIM, out, found), 4);
    for (int i = 0; i < 8; i++) cr_expect_eq(found[i], i < 4, "key %d", i);
    cr_expect_arr_eq(out, in, 4 * DIM * sizeof(float));
    CacheStats s = cache_stats(reader);
    cr_expect_eq(s.l2_hits, 4);
    cr_expect_eq(s.l2_misses, 4);
    cr_expect(s.l2_up);

    /* Promoted: the second lookup is served by L1. */
    cr_expect_eq(cache_get(reader, keys, 4, DIM, out, found), 4);
    s = cache_stats(reader);
    cr_expect_eq(s.l1_hits, 4);
    cr_expect_eq(s.l2_hits, 4);
    check_identity(&s);

    cache_close(writer);
    cache_close(reader);
    rserver_stop(&srv);
}

/* The calls of one command since the last CONFIG RESETSTAT. */
static long command_calls(const RedisServer *srv, const char *command) {
    redisReply *r = rserver_command(srv, 0, "INFO commandstats");
    char needle[64];
    snprintf(needle, sizeof needle, "cmdstat_%s:calls=", command);
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, needle) : NULL;
    long calls = p ? atol(p + strlen(needle)) : 0;
    if (r) freeReplyObject(r);
    return calls;
}

Test(l2, a_batch_is_one_mget_and_one_pipeline_of_sets) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 1 << 20);
    enum { N = 256 };
    static CacheKey keys[N];
    static float v[N * DIM], out[N * DIM];
    static bool found[N];
    make_keys(keys, N, 42, "batch");
    make_vectors(v, N, 0);

    cr_assert(rserver_run(&srv, 0, "CONFIG RESETSTAT"));
    cr_expect_eq(cache_get(c, keys, N, DIM, out, found), 0);
    cache_put(c, keys, N, DIM, v);
    cr_expect_eq(command_calls(&srv, "mget"), 1);
    cr_expect_eq(command_calls(&srv, "get"), 0);
    cr_expect_eq(command_calls(&srv, "set"), N);

    /* All in L1: Redis is not asked. */
    cr_expect_eq(cache_get(c, keys, N, DIM, out, found), N);
    cr_expect_eq(command_calls(&srv, "mget"), 1);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, values_are_written_with_the_ttl_and_expire) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    CacheConfig cfg = base_config;
    char url[256], err[256];
    cfg.redis_url = rserver_url(&srv, 0, url, sizeof url);
    cfg.l1_bytes = 0;
    cfg.ttl_ms = 800;
    Cache *c;
    cr_assert_eq(cache_open(&c, &cfg, err, sizeof err), 0, "%s", err);
    CacheKey k;
    float v[DIM], out[DIM];
    bool found;
    char name[CACHE_REDIS_KEY_LEN + 1];
    make_keys(&k, 1, 9, "ttl");
    make_vectors(v, 1, 0);
    cache_key_format(&k, name);

    cache_put(c, &k, 1, DIM, v);
    long long pttl = reply_integer(rserver_command(&srv, 0, "PTTL %s", name));
    cr_expect(pttl > 0 && pttl <= 800, "PTTL %lld", pttl);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 1);

    long long deadline = now_ms() + 3000;
    while (reply_integer(rserver_command(&srv, 0, "EXISTS %s", name)) != 0 && now_ms() < deadline)
        sleep_ms(50);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 0, "expired");
    cr_expect_eq(cache_stats(c).l2_misses, 1);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, a_new_model_id_never_meets_the_old_vectors) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 1 << 20);
    CacheKey old_keys[16], new_keys[16];
    float v[16 * DIM], out[16 * DIM];
    bool found[16];
    make_keys(old_keys, 16, 0x1111, "model");
    make_keys(new_keys, 16, 0x2222, "model");
    make_vectors(v, 16, 0);

    cache_put(c, old_keys, 16, DIM, v);
    cr_expect_eq(cache_get(c, new_keys, 16, DIM, out, found), 0);
    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l1_misses, 16);
    cr_expect_eq(s.l2_misses, 16);

    char name[CACHE_REDIS_KEY_LEN + 1];
    cache_key_format(&new_keys[0], name);
    cr_expect(!strncmp(name, "pd:e:0000000000002222:", 22), "%s", name);
    cr_expect_eq(reply_integer(rserver_command(&srv, 0, "EXISTS %s", name)), 0);
    cr_expect_eq(cache_get(c, old_keys, 16, DIM, out, found), 16, "the old model still hits");

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, the_value_has_the_documented_header) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey k;
    float v[DIM];
    char name[CACHE_REDIS_KEY_LEN + 1];
    make_keys(&k, 1, 5, "format");
    make_vectors(v, 1, -1.5f);
    cache_key_format(&k, name);
    cache_put(c, &k, 1, DIM, v);

    redisReply *r = rserver_command(&srv, 0, "GET %s", name);
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    cr_assert_eq(r->len, 16 + DIM * 4);
    const unsigned char *p = (const unsigned char *)r->str;
    cr_expect(!memcmp(p, "pdv\x01", 4));
    cr_expect(p[4] == DIM && !p[5] && !p[6] && !p[7], "dim, little-endian");
    uint64_t sum = 0;
    for (int i = 7; i >= 0; i--) sum = sum << 8 | p[8 + i];
    cr_expect_eq(sum, XXH64(p + 16, DIM * 4, 0));
    cr_expect_arr_eq(p + 16, v, sizeof v, "raw float32 on this little-endian machine");
    freeReplyObject(r);

    cache_close(c);
    rserver_stop(&srv);
}

/* Writes a hand-made value under k's key. */
static void plant(const RedisServer *srv, const CacheKey *k, const void *value, size_t len) {
    char name[CACHE_REDIS_KEY_LEN + 1];
    cache_key_format(k, name);
    cr_assert(rserver_run(srv, 0, "SET %s %b", name, value, len));
}

/* A valid value of dim floats, checksum included. */
static size_t make_value(unsigned char *out, const float *v, int dim) {
    memcpy(out, "pdv\x01", 4);
    for (int i = 0; i < 4; i++) out[4 + i] = (unsigned char)((unsigned)dim >> (8 * i));
    memcpy(out + 16, v, (size_t)dim * 4);
    uint64_t sum = XXH64(out + 16, (size_t)dim * 4, 0);
    for (int i = 0; i < 8; i++) out[8 + i] = (unsigned char)(sum >> (8 * i));
    return 16 + (size_t)dim * 4;
}

/* Gets k (a miss, counted corrupt), puts v, and checks Redis now has v. */
static void expect_ignored_then_rewritten(Cache *c, const RedisServer *srv, const CacheKey *k,
                                          const float *v, const char *what) {
    float out[DIM];
    bool found;
    uint64_t corrupt = cache_stats(c).l2_corrupt;
    cr_expect_eq(cache_get(c, k, 1, DIM, out, &found), 0, "%s was used", what);
    cr_expect_eq(cache_stats(c).l2_corrupt, corrupt + 1, "%s not counted", what);

    cache_put(c, k, 1, DIM, v);
    char name[CACHE_REDIS_KEY_LEN + 1];
    unsigned char want[16 + DIM * 4];
    cache_key_format(k, name);
    make_value(want, v, DIM);
    redisReply *r = rserver_command(srv, 0, "GET %s", name);
    cr_expect(r && r->type == REDIS_REPLY_STRING && r->len == sizeof want &&
                  !memcmp(r->str, want, sizeof want),
              "%s was not rewritten", what);
    if (r) freeReplyObject(r);
    cr_expect_eq(cache_get(c, k, 1, DIM, out, &found), 1, "%s: the rewrite hits", what);
}

Test(l2, corrupt_values_are_ignored_counted_and_rewritten) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey keys[6];
    float v[DIM];
    unsigned char value[16 + DIM * 4];
    make_keys(keys, 6, 3, "corrupt");
    make_vectors(v, 1, 0.5f);

    plant(&srv, &keys[0], "not a vector", 12);
    expect_ignored_then_rewritten(c, &srv, &keys[0], v, "garbage");

    size_t len = make_value(value, v, DIM);
    value[16 + 9] ^= 0x40;
    plant(&srv, &keys[1], value, len);
    expect_ignored_then_rewritten(c, &srv, &keys[1], v, "a flipped bit");

    make_value(value, v, DIM);
    value[3] = 2;
    plant(&srv, &keys[2], value, len);
    expect_ignored_then_rewritten(c, &srv, &keys[2], v, "another version");

    plant(&srv, &keys[3], value, len - 1);
    expect_ignored_then_rewritten(c, &srv, &keys[3], v, "a truncated value");

    float nan_vec[DIM];
    memcpy(nan_vec, v, sizeof v);
    nan_vec[10] = NAN;
    len = make_value(value, nan_vec, DIM); /* a valid checksum over a NaN */
    plant(&srv, &keys[4], value, len);
    expect_ignored_then_rewritten(c, &srv, &keys[4], v, "a NaN");

    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l2_corrupt, 5);
    cr_expect_eq(s.l2_hits, 5);
    check_identity(&s);
    cr_expect_eq(logged("<4>", "ignoring the cached vector"), 1, "one warning, then debug");

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, a_value_of_another_dimension_is_ignored_and_rewritten) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey k;
    float v[DIM];
    unsigned char value[16 + DIM * 4];
    make_keys(&k, 1, 3, "dim");
    make_vectors(v, 1, 0);

    /* Well-formed and checksummed, but 32 floats where 64 are expected. */
    plant(&srv, &k, value, make_value(value, v, DIM / 2));
    expect_ignored_then_rewritten(c, &srv, &k, v, "a 32-float vector");

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, auth_with_a_password_and_with_an_acl_user) {
    RedisServer srv;
    start_server(&srv, "t0ps3cret", NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey k;
    float v[DIM], out[DIM];
    bool found;
    make_keys(&k, 1, 3, "auth");
    make_vectors(v, 1, 0);
    cache_put(c, &k, 1, DIM, v);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 1);
    cache_close(c);

    cr_assert(rserver_run(&srv, 0, "ACL SETUSER app on >apppass ~pd:* +@all"));
    char url[256];
    snprintf(url, sizeof url, "redis://app:apppass@127.0.0.1:%d/0", srv.port);
    c = open_ok(url, 0);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 1);
    cache_close(c);

    rserver_stop(&srv);
}

Test(l2, a_wrong_or_missing_password_is_a_clear_configuration_error) {
    RedisServer srv;
    start_server(&srv, "t0ps3cret", NULL);
    CacheConfig cfg = base_config;
    char url[256], err[512];
    Cache *c;

    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d/0", srv.port);
    cfg.redis_url = url;
    cr_expect_eq(cache_open(&c, &cfg, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "Redis refused the password: WRONGPASS"), "%s", err);
    cr_expect_null(strstr(err, "wrong@"), "the password is not shown: %s", err);

    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", srv.port);
    cr_expect_eq(cache_open(&c, &cfg, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "Redis requires a password; put it in redis.url"), "%s", err);

    rserver_stop(&srv);
}

Test(l2, the_selected_db_holds_the_keys) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 3, 0);
    CacheKey k;
    float v[DIM];
    char name[CACHE_REDIS_KEY_LEN + 1];
    make_keys(&k, 1, 3, "db");
    make_vectors(v, 1, 0);
    cache_key_format(&k, name);

    cache_put(c, &k, 1, DIM, v);
    cr_expect_eq(reply_integer(rserver_command(&srv, 3, "EXISTS %s", name)), 1);
    cr_expect_eq(reply_integer(rserver_command(&srv, 0, "EXISTS %s", name)), 0);
    cache_close(c);

    CacheConfig cfg = base_config;
    char url[256], err[512];
    cfg.redis_url = rserver_url(&srv, 99, url, sizeof url);
    cr_expect_eq(cache_open(&c, &cfg, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "Redis refused database 99"), "%s", err);

    rserver_stop(&srv);
}

Test(l2, a_unix_socket_with_a_db) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    char url[512];
    snprintf(url, sizeof url, "unix://%s?db=2", srv.sock);
    Cache *c = open_ok(url, 0);
    CacheKey k;
    float v[DIM], out[DIM];
    bool found;
    char name[CACHE_REDIS_KEY_LEN + 1];
    make_keys(&k, 1, 3, "unix");
    make_vectors(v, 1, 0);
    cache_key_format(&k, name);

    cache_put(c, &k, 1, DIM, v);
    cr_expect_eq(cache_get(c, &k, 1, DIM, out, &found), 1);
    cr_expect_eq(reply_integer(rserver_command(&srv, 2, "EXISTS %s", name)), 1);
    cache_close(c);
    rserver_stop(&srv);
}

/* Puts what a batch missed, as the serving pipeline does after encoding. */
static size_t serve_batch(Cache *c, const CacheKey *keys, size_t n, float *out, bool *found,
                          const float *v) {
    size_t hits = cache_get(c, keys, n, DIM, out, found);
    for (size_t i = 0; i < n; i++)
        if (!found[i]) cache_put(c, &keys[i], 1, DIM, v + i * DIM);
    return hits;
}

Test(l2, down_at_start_serves_from_l1_and_recovers) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    rserver_kill(&srv);
    Cache *c = open_on(&srv, 0, 0);
    CacheStats s = cache_stats(c);
    cr_expect(s.l2_enabled && !s.l2_up);
    cr_expect_eq(logged("<4>", "unavailable at start (Connection refused)"), 1);

    CacheKey keys[8];
    float v[8 * DIM], out[8 * DIM];
    bool found[8];
    make_keys(keys, 8, 3, "start");
    make_vectors(v, 8, 0);
    long long t0 = now_ms();
    cr_expect_eq(cache_get(c, keys, 8, DIM, out, found), 0);
    cr_expect_lt(now_ms() - t0, HANG_BOUND);
    cr_expect_eq(cache_stats(c).l2_unavailable, 8);

    cr_assert_eq(rserver_restart(&srv), 0);
    cr_assert(wait_up(c, 5000), "no reconnect");
    cache_put(c, keys, 8, DIM, v);
    cr_expect_eq(cache_get(c, keys, 8, DIM, out, found), 8);
    cr_expect_eq(logged("<5>", "back after"), 1);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, an_outage_costs_misses_one_warning_and_one_notice) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    int fds_before = open_fds();
    Cache *c = open_on(&srv, 0, 0);
    enum { N = 64, BATCHES = 150 };
    static CacheKey keys[N];
    static float v[N * DIM], out[N * DIM];
    static bool found[N];
    make_keys(keys, N, 3, "outage");
    make_vectors(v, N, 0);
    int fds_up = -1;

    long long worst = 0;
    size_t hits_after = 0;
    for (int b = 0; b < BATCHES; b++) {
        if (b == 40) rserver_kill(&srv);
        if (b == 80) cr_assert_eq(rserver_restart(&srv), 0);
        long long t0 = now_ms();
        size_t hits = serve_batch(c, keys, N, out, found, v);
        long long dt = now_ms() - t0;
        if (dt > worst) worst = dt;
        if (b == 10) fds_up = open_fds();
        if (b >= 80) hits_after = hits;
        sleep_ms(10);
    }
    cr_expect_lt(worst, HANG_BOUND, "a batch took %lld ms", worst);
    cr_expect_eq(hits_after, N, "the cache is back in service");

    CacheStats s = cache_stats(c);
    cr_expect(s.l2_up);
    cr_expect_eq(s.outages, 1);
    cr_expect_eq(s.reconnects, 1);
    cr_expect_geq(s.l2_errors, 1);
    cr_expect_eq(s.l2_timeouts, 0);
    cr_expect_geq(s.connect_failures, 1);
    cr_expect_geq(s.l2_unavailable, N * 30, "batches during the outage missed");
    cr_expect_gt(s.outage_ms_total, 300);
    cr_expect_eq(s.outage_ms_current, 0);
    check_identity(&s);
    cr_expect_eq(logged("<4>", "unavailable"), 1, "one warning per outage");
    cr_expect_eq(logged("<5>", "back after"), 1, "one notice per recovery");
    cr_expect_eq(open_fds(), fds_up, "one connection, no leaked descriptor");
    if (logged("<4>", "unavailable") != 1) dump_log();

    cache_close(c);
    cr_expect_eq(open_fds(), fds_before);
    rserver_stop(&srv);
}

Test(l2, repeated_outages_leak_no_descriptors) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey k;
    float v[DIM], out[DIM];
    bool found;
    make_keys(&k, 1, 3, "fds");
    make_vectors(v, 1, 0);
    serve_batch(c, &k, 1, out, &found, v);
    int fds = open_fds();

    for (int round = 0; round < 3; round++) {
        rserver_kill(&srv);
        serve_batch(c, &k, 1, out, &found, v);
        cr_assert_eq(rserver_restart(&srv), 0);
        cr_assert(wait_up(c, 5000), "round %d: no reconnect", round);
        serve_batch(c, &k, 1, out, &found, v);
        cr_expect_eq(open_fds(), fds, "round %d", round);
    }
    cr_expect_eq(cache_stats(c).outages, 3);
    cr_expect_eq(cache_stats(c).reconnects, 3);

    cache_close(c);
    rserver_stop(&srv);
}

/* Lookups while Redis cannot answer: the first waits one command timeout and ends the
 * connection, the next ones do not wait at all; after resume the cache recovers. */
static void expect_bounded_while_stalled(Cache *c, const CacheKey *keys, size_t n) {
    float out[16 * DIM];
    bool found[16];
    for (int i = 0; i < 5; i++) {
        long long t0 = now_ms();
        cr_expect_eq(cache_get(c, keys, n, DIM, out, found), 0);
        long long dt = now_ms() - t0;
        cr_expect_lt(dt, HANG_BOUND, "lookup %d took %lld ms", i, dt);
        if (i > 0) cr_expect_lt(dt, CMD_MS, "lookup %d waited (%lld ms) with Redis down", i, dt);
    }
    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l2_timeouts, 1);
    cr_expect_not(s.l2_up);
}

Test(l2, a_sleeping_server_costs_one_command_timeout) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey keys[16];
    float v[16 * DIM], out[16 * DIM];
    bool found[16];
    make_keys(keys, 16, 3, "sleep");
    make_vectors(v, 16, 0);
    cache_put(c, keys, 16, DIM, v);

    redisContext *sleeper = rserver_sleep(&srv, 1500);
    cr_assert(sleeper, "DEBUG SLEEP did not start");
    expect_bounded_while_stalled(c, keys, 16);
    rserver_sleep_end(sleeper);

    cr_assert(wait_up(c, 5000), "no recovery");
    cr_expect_eq(cache_get(c, keys, 16, DIM, out, found), 16, "the values survived");
    cr_expect_eq(logged("<4>", "(no reply within 100 ms)"), 1);
    cr_expect_eq(logged("<5>", "back after"), 1);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, a_frozen_server_costs_one_command_timeout) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey keys[16];
    float v[16 * DIM], out[16 * DIM];
    bool found[16];
    make_keys(keys, 16, 3, "stop");
    make_vectors(v, 16, 0);
    cache_put(c, keys, 16, DIM, v);

    rserver_freeze(&srv);
    expect_bounded_while_stalled(c, keys, 16);

    /* A put while frozen does not wait either: the connection is gone. */
    long long t0 = now_ms();
    cache_put(c, keys, 16, DIM, v);
    cr_expect_lt(now_ms() - t0, CMD_MS);
    sleep_ms(500);
    rserver_thaw(&srv);

    cr_assert(wait_up(c, 5000), "no recovery");
    cr_expect_eq(cache_get(c, keys, 16, DIM, out, found), 16);
    cr_expect_eq(cache_stats(c).outages, 1);
    cr_expect_eq(logged("<4>", "unavailable"), 1);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, oom_replies_skip_writes_and_reads_go_on) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey keys[16];
    float v[16 * DIM], out[16 * DIM];
    bool found[16];
    make_keys(keys, 16, 3, "oom");
    make_vectors(v, 16, 0);
    cache_put(c, keys, 8, DIM, v);

    cr_assert(rserver_run(&srv, 0, "CONFIG SET maxmemory-policy noeviction"));
    cr_assert(rserver_run(&srv, 0, "CONFIG SET maxmemory 1"));
    cache_put(c, keys + 8, 8, DIM, v + 8 * DIM);
    cache_put(c, keys + 8, 8, DIM, v + 8 * DIM);
    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l2_error_replies, 16);
    cr_expect_eq(s.l2_write_failures, 16);
    cr_expect_eq(s.l2_writes, 8);
    cr_expect(s.l2_up, "an error reply is not an outage");
    cr_expect_eq(s.l2_errors, 0);
    cr_expect_eq(logged("<4>", "redis refused SET (OOM"), 1, "once per episode");

    cr_expect_eq(cache_get(c, keys, 16, DIM, out, found), 8, "reads still work");

    cr_assert(rserver_run(&srv, 0, "CONFIG SET maxmemory 0"));
    cache_put(c, keys + 8, 8, DIM, v + 8 * DIM);
    cr_expect_eq(cache_stats(c).l2_writes, 16);
    cr_expect_eq(logged("<5>", "redis accepts SET again"), 1);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, a_read_only_replica_skips_writes) {
    RedisServer srv;
    start_server(&srv, NULL, NULL);
    Cache *c = open_on(&srv, 0, 0);
    CacheKey keys[4];
    float v[4 * DIM], out[4 * DIM];
    bool found[4];
    make_keys(keys, 4, 3, "readonly");
    make_vectors(v, 4, 0);
    cache_put(c, keys, 2, DIM, v);

    /* A replica of a master that is not there keeps its data and refuses writes. */
    int nobody = rserver_free_port();
    cr_assert(rserver_run(&srv, 0, "REPLICAOF 127.0.0.1 %d", nobody));
    cache_put(c, keys + 2, 2, DIM, v + 2 * DIM);
    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l2_error_replies, 2);
    cr_expect(s.l2_up);
    cr_expect_eq(logged("<4>", "refused SET (READONLY"), 1);
    cr_expect_eq(cache_get(c, keys, 4, DIM, out, found), 2);

    cache_close(c);
    rserver_stop(&srv);
}

Test(l2, a_busy_script_makes_reads_miss_without_an_outage) {
    RedisServer srv;
    start_server(&srv, NULL, "busy-reply-threshold 50");
    Cache *c = open_on(&srv, 0, 0);
    CacheKey keys[4];
    float v[4 * DIM], out[4 * DIM];
    bool found[4];
    make_keys(keys, 4, 3, "busy");
    make_vectors(v, 4, 0);
    cache_put(c, keys, 4, DIM, v);

    redisContext *script = rserver_client(&srv, 0);
    cr_assert(script);
    redisAppendCommand(script, "EVAL %s 0", "while true do end");
    int done = 0;
    while (!done) cr_assert_eq(redisBufferWrite(script, &done), REDIS_OK);
    sleep_ms(200); /* past busy-reply-threshold */

    cr_expect_eq(cache_get(c, keys, 4, DIM, out, found), 0);
    CacheStats s = cache_stats(c);
    cr_expect_eq(s.l2_error_replies, 1);
    cr_expect_eq(s.l2_unavailable, 4);
    cr_expect(s.l2_up);
    cr_expect_eq(logged("<4>", "redis refused MGET (BUSY"), 1);

    cr_expect(rserver_run(&srv, 0, "SCRIPT KILL"));
    redisReply *r;
    if (redisGetReply(script, (void **)&r) == REDIS_OK) freeReplyObject(r);
    redisFree(script);
    cr_expect_eq(cache_get(c, keys, 4, DIM, out, found), 4);
    cr_expect_eq(logged("<5>", "redis accepts MGET again"), 1);

    cache_close(c);
    rserver_stop(&srv);
}

/* A TCP server that answers anything with bytes that are not RESP. */
typedef struct {
    int fd;
    atomic_bool stop;
    pthread_t thread;
} Garbage;

static void *garbage_main(void *arg) {
    Garbage *g = arg;
    while (!atomic_load(&g->stop)) {
        struct pollfd p = {g->fd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) continue;
        int conn = accept(g->fd, NULL, NULL);
        if (conn < 0) continue;
        char buf[512];
        struct pollfd q = {conn, POLLIN, 0};
        if (poll(&q, 1, 500) > 0 && read(conn, buf, sizeof buf) > 0) {
            const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
            ssize_t unused = write(conn, junk, sizeof junk - 1);
            (void)unused;
        }
        close(conn);
    }
    return NULL;
}

Test(l2, a_server_that_is_not_redis_is_survived) {
    Garbage g = {.fd = socket(AF_INET, SOCK_STREAM, 0)};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    cr_assert(!bind(g.fd, (struct sockaddr *)&sa, sizeof sa) && !listen(g.fd, 16));
    cr_assert(!getsockname(g.fd, (struct sockaddr *)&sa, &len));
    cr_assert(!pthread_create(&g.thread, NULL, garbage_main, &g));

    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", ntohs(sa.sin_port));
    Cache *c = open_ok(url, 0);
    CacheKey k;
    float v[DIM], out[DIM];
    bool found;
    make_keys(&k, 1, 3, "garbage");
    make_vectors(v, 1, 0);
    for (int i = 0; i < 10; i++) {
        cr_expect_eq(serve_batch(c, &k, 1, out, &found, v), 0);
        sleep_ms(20);
    }
    CacheStats s = cache_stats(c);
    cr_expect_not(s.l2_up);
    cr_expect_eq(s.outages, 1);
    cr_expect_geq(s.connect_failures, 1);
    cr_expect_eq(logged("<4>", "Protocol error"), 1);

    cache_close(c);
    atomic_store(&g.stop, true);
    pthread_join(g.thread, NULL);
    close(g.fd);
}
