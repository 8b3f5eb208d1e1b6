/*
 * The journal: joins, aggregation rules, the reward window, capacity, late and unknown, in
 * memory; then the same through a real redis-server started per test on a free loopback
 * port, with a second instance (a restart, or another promptd), two instances racing, an
 * outage (SIGKILL and a cold restart), a frozen server and error replies. Waits are
 * bounded by the tests themselves (no Criterion .timeout: it leaks under LeakSanitizer).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../daemon/journal.h"
#include "../daemon/log.h"
#include "../daemon/redis.h"
#include "redis_harness.h"

static Journal *j;

static void open_with(JournalRule rule, bool drop, size_t max) {
    JournalConfig cfg = {rule, 1000, drop, -0.25, max, 0};
    j = journal_new(&cfg, NULL, NULL);
    cr_assert_not_null(j);
}

static void teardown(void) {
    journal_free(j);
}

TestSuite(journal, .fini = teardown);

static void put(const char *id, int64_t now) {
    char decision[64], record[8];
    snprintf(decision, sizeof decision, "{\"id\":\"%s\"}", id);
    memcpy(record, "recordXY", 8);
    cr_assert_eq(journal_put(j, id, strlen(id), decision, strlen(decision), record, 8, now), 0);
}

static JoinResult reward(const char *id, double r, int64_t now, Experience *out) {
    return journal_reward(j, id, strlen(id), r, now, out);
}

Test(journal, first_rule_closes_at_the_first_event) {
    Experience e;
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    cr_expect_str_eq(journal_decision(j, "a", 1), "{\"id\":\"a\"}");
    cr_assert_eq(reward("a", 0.75, 10, &e), JOIN_CLOSED);
    cr_expect_float_eq(e.reward, 0.75, 1e-12);
    cr_expect_eq(e.events, 1);
    cr_expect_str_eq(e.decision, "{\"id\":\"a\"}");
    cr_expect(e.record_len == 8 && !memcmp(e.record, "recordXY", 8));
    experience_free(&e);

    cr_expect_eq(reward("a", 1, 20, &e), JOIN_LATE, "a second event is late, never learned twice");
    cr_expect_eq(reward("zzz", 1, 20, &e), JOIN_UNKNOWN);
    JournalStats s = journal_stats(j);
    cr_expect(s.joined == 1 && s.closed == 1 && s.late == 1 && s.unknown == 1 && s.open == 0);
}

static double aggregated(JournalRule rule) {
    Experience e[4];
    open_with(rule, false, 100);
    put("x", 0);
    cr_assert_eq(reward("x", 1, 100, e), JOIN_ACCUMULATED);
    cr_assert_eq(reward("x", 4, 200, e), JOIN_ACCUMULATED);
    cr_assert_eq(reward("x", -2, 300, e), JOIN_ACCUMULATED);
    cr_assert_eq(journal_expire(j, 999, e, 4), 0, "closed before its window ended");
    cr_assert_eq(journal_expire(j, 1001, e, 4), 1);
    cr_expect_eq(e[0].events, 3);
    double r = e[0].reward;
    experience_free(&e[0]);
    journal_free(j);
    j = NULL;
    return r;
}

Test(journal, aggregation_rules_combine_every_event) {
    cr_expect_float_eq(aggregated(JOURNAL_LAST), -2, 1e-12);
    cr_expect_float_eq(aggregated(JOURNAL_SUM), 3, 1e-12);
    cr_expect_float_eq(aggregated(JOURNAL_MAX), 4, 1e-12);
    cr_expect_float_eq(aggregated(JOURNAL_MEAN), 1, 1e-12);
}

Test(journal, window_closes_with_the_default_reward) {
    Experience e[4];
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    put("b", 500);
    cr_assert_eq(journal_expire(j, 1200, e, 4), 1, "only a's window ended");
    cr_expect_float_eq(e[0].reward, -0.25, 1e-12);
    cr_expect_eq(e[0].events, 0);
    experience_free(&e[0]);
    cr_expect_eq(reward("a", 1, 1300, e), JOIN_LATE);
    cr_expect_eq(reward("b", 1, 1600, e), JOIN_LATE, "an event after the window is late");
    cr_expect_eq(journal_stats(j).expired, 1);
}

Test(journal, default_drop_learns_nothing_without_an_event) {
    Experience e[4];
    open_with(JOURNAL_FIRST, true, 100);
    put("a", 0);
    cr_expect_eq(journal_expire(j, 5000, e, 4), 0);
    JournalStats s = journal_stats(j);
    cr_expect(s.expired == 1 && s.dropped == 1, "expired %lu dropped %lu", (unsigned long)s.expired,
              (unsigned long)s.dropped);
}

Test(journal, a_full_journal_closes_its_oldest_entries) {
    Experience e[8];
    open_with(JOURNAL_FIRST, false, 3);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "i%d", i);
        put(id, i);
    }
    size_t n = journal_expire(j, 10, e, 8);
    cr_expect_eq(n, 2);
    cr_expect_str_eq(e[0].decision, "{\"id\":\"i0\"}");
    cr_expect_str_eq(e[1].decision, "{\"id\":\"i1\"}");
    for (size_t i = 0; i < n; i++) experience_free(&e[i]);
    cr_expect_eq(journal_stats(j).evicted, 2);
    cr_expect_eq(journal_stats(j).open, 3);
}

Test(journal, a_redecided_prompt_keeps_the_newer_decision) {
    Experience e;
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    put("a", 50);
    cr_assert_eq(reward("a", 2, 60, &e), JOIN_CLOSED);
    cr_expect_eq(e.made_ms, 50);
    experience_free(&e);
    cr_expect_eq(journal_expire(j, 5000, &e, 1), 0, "the superseded entry is not learned");
    cr_expect_eq(journal_stats(j).replaced, 1);
}

/* After a crash the prompt and its reward event are both read again: the re-read event
 * must not teach the policy a second time through the second decision. */
Test(journal, a_prompt_redecided_after_its_reward_closed_is_not_learned_again) {
    Experience e;
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    cr_assert_eq(reward("a", 2, 10, &e), JOIN_CLOSED);
    experience_free(&e);

    put("a", 20);
    cr_expect_null(journal_decision(j, "a", 1), "the second decision is not journaled");
    cr_expect_eq(reward("a", 2, 30, &e), JOIN_LATE, "the re-read event is late");
    cr_expect_eq(journal_expire(j, 5000, &e, 1), 0, "nothing more to learn");
    JournalStats s = journal_stats(j);
    cr_expect(s.redecided == 1 && s.closed == 1 && s.open == 0, "redecided %llu closed %llu",
              (unsigned long long)s.redecided, (unsigned long long)s.closed);
}

Test(journal, many_entries_stay_consistent) {
    enum { N = 20000 };
    Experience e[64];
    open_with(JOURNAL_FIRST, false, N);
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "k%d", i);
        put(id, i);
    }
    size_t joined = 0;
    for (int i = 0; i < N; i += 2) {
        char id[16];
        snprintf(id, sizeof id, "k%d", i);
        if (reward(id, i, i + 10, &e[0]) == JOIN_CLOSED) {
            cr_assert_float_eq(e[0].reward, i, 1e-9);
            experience_free(&e[0]);
            joined++;
        }
    }
    size_t expired = 0, n;
    while ((n = journal_expire(j, N + 5000, e, 64)) > 0) {
        for (size_t i = 0; i < n; i++) experience_free(&e[i]);
        expired += n;
    }
    cr_expect_eq(joined, N / 2, "joined %zu", joined);
    cr_expect_eq(expired, N / 2, "expired %zu", expired);
    cr_expect_eq(journal_stats(j).open, 0);
}

Test(journal, rule_names_parse) {
    cr_expect_eq(journal_rule_parse("first"), JOURNAL_FIRST);
    cr_expect_eq(journal_rule_parse("mean"), JOURNAL_MEAN);
    cr_expect_eq(journal_rule_parse("median"), -1);
}

/* --- through Redis --- */

#define CMD_MS       100 /* the command timeout of the tests */
#define HANG_BOUND   (5 * CMD_MS)
#define PREFIX       "promptd:test:"
#define RECORD_LEN   9
#define RACE_MAX_IDS 512

static const char record_bytes[RECORD_LEN] = "rec\0rd\xff\0Z"; /* binary, with NULs */
static RedisServer srv;
static RedisLink *links[3];
static Journal *js[3];

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char lines[64][512];
static int nlines;

static void capture(void *ctx, int level, const char *line) {
    (void)ctx, (void)level;
    pthread_mutex_lock(&log_lock);
    if (nlines < 64) snprintf(lines[nlines++], sizeof lines[0], "%s", line);
    pthread_mutex_unlock(&log_lock);
}

static int logged(const char *needle) {
    int n = 0;
    pthread_mutex_lock(&log_lock);
    for (int i = 0; i < nlines; i++) n += strstr(lines[i], needle) != NULL;
    pthread_mutex_unlock(&log_lock);
    return n;
}

static void redis_setup(void) {
    signal(SIGPIPE, SIG_IGN); /* as main does: hiredis writes with write(2) */
    pd_log_set_sink(capture, NULL);
    pd_log_set_level(PD_LOG_INFO);
    pd_log_set_ratelimit(0, 0);
    cr_assert_eq(rserver_start(&srv, NULL), 0, "redis-server did not start (see %s)", srv.dir);
}

static void redis_teardown(void) {
    for (int i = 0; i < 3; i++) {
        journal_free(js[i]); /* before its link: it may write what it holds */
        js[i] = NULL;
    }
    for (int i = 0; i < 3; i++) {
        redis_link_close(links[i]);
        links[i] = NULL;
    }
    rserver_stop(&srv);
    pd_log_set_sink(NULL, NULL);
}

TestSuite(redis, .init = redis_setup, .fini = redis_teardown);

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static RedisLink *open_link(void) {
    RedisUrl u;
    RedisLink *l;
    char url[256], err[256] = "";
    cr_assert_eq(redis_url_parse(&u, rserver_url(&srv, 0, url, sizeof url), err, sizeof err), 0);
    RedisTimeouts t = {300, CMD_MS, 20, 200};
    cr_assert_eq(redis_link_open(&l, &u, &t, err, sizeof err), 0, "%s", err);
    return l;
}

/* Instance i: a link of its own and a journal on it. */
static Journal *instance(int i, JournalRule rule, bool drop, int64_t grace_ms) {
    JournalConfig cfg = {rule, 1000, drop, -0.25, 100, grace_ms};
    if (!links[i]) links[i] = open_link();
    js[i] = journal_new(&cfg, links[i], PREFIX);
    cr_assert_not_null(js[i]);
    return js[i];
}

static void rput(Journal *jr, const char *id, int64_t now) {
    char decision[64];
    snprintf(decision, sizeof decision, "{\"id\":\"%s\"}", id);
    cr_assert_eq(
        journal_put(jr, id, strlen(id), decision, strlen(decision), record_bytes, RECORD_LEN, now),
        0);
}

/* As the pipeline joins an event: the decision first, then the reward. */
static JoinResult rreward(Journal *jr, const char *id, double r, int64_t now, Experience *out) {
    Experience scratch;
    journal_decision(jr, id, strlen(id));
    JoinResult res = journal_reward(jr, id, strlen(id), r, now, out ? out : &scratch);
    if (!out && res == JOIN_CLOSED) experience_free(&scratch);
    return res;
}

/* Writes what the journal holds (journal_expire with max 0). */
static void flush(Journal *jr, int64_t now) {
    cr_assert_eq(journal_expire(jr, now, NULL, 0), 0);
}

static bool wait_up(RedisLink *l, int timeout_ms) {
    for (int waited = 0; !redis_link_stats(l).up; waited += 10) {
        if (waited > timeout_ms) return false;
        sleep_ms(10);
    }
    return true;
}

static long long reply_int(redisReply *r) {
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1000;
    if (r) freeReplyObject(r);
    return v;
}

static bool reply_str_is(redisReply *r, const char *want) {
    bool ok = r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, want);
    if (r) freeReplyObject(r);
    return ok;
}

/* The number in {"id":"<letter>N"}, to count what was learned per entry. */
static int learned_index(const Experience *e) {
    const char *p = strstr(e->decision, "\":\"");
    return p ? atoi(p + 4) : -1;
}

static void expect_record(const Experience *e) {
    cr_expect(e->record_len == RECORD_LEN && !memcmp(e->record, record_bytes, RECORD_LEN),
              "the record's bytes survive Redis");
}

static int events_seen[RACE_MAX_IDS]; /* events of the last experience learned per index */

/* Expires everything due at now; counts per learned index into seen[]. */
static size_t drain(Journal *jr, int64_t now, int *seen, size_t nseen) {
    Experience e[16];
    size_t n, total = 0;
    while ((n = journal_expire(jr, now, e, 16)) > 0) {
        for (size_t i = 0; i < n; i++) {
            int k = learned_index(&e[i]);
            if (seen && k >= 0 && (size_t)k < nseen) seen[k]++;
            if (k >= 0 && k < RACE_MAX_IDS) events_seen[k] = (int)e[i].events;
            experience_free(&e[i]);
        }
        total += n;
    }
    return total;
}

Test(redis, joins_a_reward_through_redis) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    Experience e;
    rput(a, "a", 0);
    rput(a, "b", 0);
    flush(a, 10);
    JournalStats s = journal_stats(a);
    cr_expect(s.redis_enabled && s.redis_puts == 2 && s.open == 2,
              "puts %llu open %zu: memory keeps copies", (unsigned long long)s.redis_puts, s.open);
    cr_expect_eq(reply_int(rserver_command(&srv, 0, "EXISTS " PREFIX "j:a")), 1);
    long long ttl = reply_int(rserver_command(&srv, 0, "PTTL " PREFIX "j:a"));
    cr_expect(ttl > JOURNAL_GRACE_MS && ttl <= JOURNAL_GRACE_MS + 1000,
              "TTL = window + grace, got %lld", ttl);

    cr_expect_str_eq(journal_decision(a, "a", 1), "{\"id\":\"a\"}");
    cr_assert_eq(journal_reward(a, "a", 1, 0.75, 20, &e), JOIN_CLOSED);
    cr_expect_float_eq(e.reward, 0.75, 1e-12);
    cr_expect_eq(e.events, 1);
    cr_expect_eq(e.made_ms, 0);
    cr_expect_str_eq(e.decision, "{\"id\":\"a\"}");
    expect_record(&e);
    experience_free(&e);

    cr_expect_eq(rreward(a, "a", 1, 30, &e), JOIN_LATE, "closed: a second event is late");
    cr_expect_eq(rreward(a, "zzz", 1, 30, &e), JOIN_UNKNOWN);
    cr_expect(reply_str_is(rserver_command(&srv, 0, "HGET " PREFIX "j:a c"), "1"), "a tombstone");
    cr_expect_eq(reply_int(rserver_command(&srv, 0, "HEXISTS " PREFIX "j:a d")), 0,
                 "the tombstone keeps no decision");
    cr_expect_eq(reply_int(rserver_command(&srv, 0, "ZCARD " PREFIX "jdue")), 1, "b waits");
    s = journal_stats(a);
    cr_expect(s.joined == 1 && s.closed == 1 && s.late == 1 && s.unknown == 1 && s.open == 1);
}

/* The same across a restart: the new process knows of the closed entry only through
 * Redis, whose put script refuses to open it again. */
Test(redis, a_prompt_redecided_after_a_restart_is_not_learned_again) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    rput(a, "a", 0);
    flush(a, 10);
    cr_assert_eq(rreward(a, "a", 1, 20, NULL), JOIN_CLOSED);

    Journal *b = instance(1, JOURNAL_FIRST, false, 0);
    rput(b, "a", 30);
    flush(b, 40);
    cr_expect_eq(rreward(b, "a", 1, 50, NULL), JOIN_LATE, "the re-read event is late");
    cr_expect_eq(drain(b, 5000, NULL, 0), 0, "nothing more to learn");
    JournalStats s = journal_stats(b);
    cr_expect(s.redecided == 1 && s.open == 0, "redecided %llu open %zu",
              (unsigned long long)s.redecided, s.open);
    cr_expect(reply_str_is(rserver_command(&srv, 0, "HGET " PREFIX "j:a c"), "1"),
              "the tombstone stays");
}

/* A reward that comes before its decision's batched write: the write goes first, so that
 * Redis, not memory alone, closes the entry, and a restart knows it closed. */
Test(redis, a_reward_before_the_write_is_closed_in_redis) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    rput(a, "a", 0);
    cr_assert_eq(rreward(a, "a", 1, 5, NULL), JOIN_CLOSED);
    cr_expect(reply_str_is(rserver_command(&srv, 0, "HGET " PREFIX "j:a c"), "1"),
              "Redis holds the closed entry");

    Journal *b = instance(1, JOURNAL_FIRST, false, 0);
    rput(b, "a", 30);
    flush(b, 40);
    cr_expect_eq(rreward(b, "a", 1, 50, NULL), JOIN_LATE, "the re-read event is late");
    cr_expect_eq(journal_stats(b).redecided, 1);
}

Test(redis, a_window_closes_in_redis_with_the_default_reward) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    Experience e[4];
    rput(a, "a", 0);
    rput(a, "b", 500);
    flush(a, 600);
    cr_assert_eq(journal_expire(a, 1000, e, 4), 0, "a's window ends after 1000");
    cr_assert_eq(journal_expire(a, 1200, e, 4), 1, "only a's window ended");
    cr_expect_float_eq(e[0].reward, -0.25, 1e-12);
    cr_expect_eq(e[0].events, 0);
    cr_expect_str_eq(e[0].decision, "{\"id\":\"a\"}");
    expect_record(&e[0]);
    experience_free(&e[0]);
    cr_expect_eq(rreward(a, "a", 1, 1300, e), JOIN_LATE);
    cr_expect_eq(rreward(a, "b", 1, 1600, e), JOIN_LATE, "an event after the window is late");
    cr_expect_eq(drain(a, 1600, NULL, 0), 1, "b closes with its window, once");
    JournalStats s = journal_stats(a);
    cr_expect(s.expired == 2 && s.late == 2 && s.redis_open == 0);
}

Test(redis, default_drop_learns_nothing_in_redis_either) {
    Journal *a = instance(0, JOURNAL_FIRST, true, 0);
    Experience e[4];
    rput(a, "a", 0);
    flush(a, 1);
    cr_expect_eq(journal_expire(a, 5000, e, 4), 0);
    JournalStats s = journal_stats(a);
    cr_expect(s.expired == 1 && s.dropped == 1, "expired %llu dropped %llu",
              (unsigned long long)s.expired, (unsigned long long)s.dropped);
    cr_expect_eq(reply_int(rserver_command(&srv, 0, "ZCARD " PREFIX "jdue")), 0);
}

static double aggregated_in_redis(JournalRule rule, const char *id) {
    Journal *a = instance(0, rule, false, 0);
    Experience e[4];
    rput(a, id, 0);
    flush(a, 1);
    cr_assert_eq(rreward(a, id, 1, 100, e), JOIN_ACCUMULATED);
    cr_assert_eq(rreward(a, id, 4, 200, e), JOIN_ACCUMULATED);
    cr_assert_eq(rreward(a, id, -2, 300, e), JOIN_ACCUMULATED);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "HGET " PREFIX "j:%s n", id);
    cr_assert(reply_str_is(rserver_command(&srv, 0, cmd), "3"), "the events were joined in Redis");
    cr_assert_eq(journal_expire(a, 999, e, 4), 0, "closed before its window ended");
    cr_assert_eq(journal_expire(a, 1001, e, 4), 1);
    cr_expect_eq(e[0].events, 3);
    double r = e[0].reward;
    experience_free(&e[0]);
    journal_free(a);
    js[0] = NULL;
    return r;
}

Test(redis, aggregation_rules_combine_every_event_in_redis) {
    /* One call each: cr_expect_float_eq evaluates its arguments more than once. */
    double last = aggregated_in_redis(JOURNAL_LAST, "last");
    double sum = aggregated_in_redis(JOURNAL_SUM, "sum");
    double max = aggregated_in_redis(JOURNAL_MAX, "max");
    double mean = aggregated_in_redis(JOURNAL_MEAN, "mean");
    cr_expect_float_eq(last, -2, 1e-12);
    cr_expect_float_eq(sum, 3, 1e-12);
    cr_expect_float_eq(max, 4, 1e-12);
    cr_expect_float_eq(mean, 1, 1e-12);
}

Test(redis, a_restart_or_another_instance_joins_and_expires) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    Experience e;
    rput(a, "a", 0);
    rput(a, "b", 0);
    rput(a, "c", 0);
    journal_free(a); /* a restart: what memory held is written on the way out */
    js[0] = NULL;

    Journal *b = instance(1, JOURNAL_FIRST, false, 0);
    cr_expect_str_eq(journal_decision(b, "a", 1), "{\"id\":\"a\"}");
    cr_assert_eq(journal_reward(b, "a", 1, 0.5, 100, &e), JOIN_CLOSED);
    expect_record(&e);
    experience_free(&e);
    cr_expect_eq(drain(b, 1001, NULL, 0), 2, "b and c close with the default reward");
    cr_expect_eq(journal_stats(b).expired, 2);
}

Test(redis, two_instances_aggregate_one_entry) {
    Journal *a = instance(0, JOURNAL_SUM, false, 0);
    Journal *b = instance(1, JOURNAL_SUM, false, 0);
    Experience e[4];
    rput(a, "x", 0);
    flush(a, 1);
    cr_expect_eq(rreward(a, "x", 1, 100, e), JOIN_ACCUMULATED);
    cr_expect_eq(rreward(b, "x", 2, 200, e), JOIN_ACCUMULATED);
    cr_assert_eq(journal_expire(b, 1001, e, 4), 1);
    cr_expect_float_eq(e[0].reward, 3, 1e-12);
    cr_expect_eq(e[0].events, 2);
    experience_free(&e[0]);
    cr_expect_eq(drain(a, 1001, NULL, 0), 0, "closed once, by whoever came first");
}

/* --- two instances racing --- */

enum { RACE_N = 300 };

typedef struct {
    Journal *jr;
    int seen[RACE_N];
    int closed[RACE_N];
} Racer;

static void *race_expire(void *arg) {
    Racer *r = arg;
    drain(r->jr, 5000, r->seen, RACE_N);
    return NULL;
}

static void *race_join(void *arg) {
    Racer *r = arg;
    for (int i = 0; i < RACE_N; i++) {
        char id[16];
        Experience e;
        snprintf(id, sizeof id, "k%d", i);
        if (rreward(r->jr, id, 1, 10, &e) == JOIN_CLOSED) {
            r->closed[learned_index(&e)]++;
            experience_free(&e);
        }
    }
    return NULL;
}

static void race(void *(*fn)(void *), Racer *r1, Racer *r2) {
    pthread_t t1, t2;
    cr_assert_eq(pthread_create(&t1, NULL, fn, r1), 0);
    cr_assert_eq(pthread_create(&t2, NULL, fn, r2), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
}

static void put_many(Journal *jr, int n) {
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "k%d", i);
        rput(jr, id, 0);
    }
    flush(jr, 1);
    cr_assert_eq(journal_stats(jr).redis_puts, (uint64_t)n);
}

Test(redis, exactly_one_instance_closes_each_expired_entry) {
    static Racer r1, r2;
    put_many(instance(0, JOURNAL_FIRST, false, 0), RACE_N);
    r1.jr = instance(1, JOURNAL_FIRST, false, 0);
    r2.jr = instance(2, JOURNAL_FIRST, false, 0);
    race(race_expire, &r1, &r2);

    int once = 0, twice = 0, by1 = 0;
    for (int i = 0; i < RACE_N; i++) {
        once += r1.seen[i] + r2.seen[i] == 1;
        twice += r1.seen[i] + r2.seen[i] > 1;
        by1 += r1.seen[i];
    }
    cr_expect_eq(once, RACE_N, "every entry learned once: %d of %d (%d twice)", once, RACE_N,
                 twice);
    cr_log_info("instance 1 closed %d, instance 2 %d", by1, RACE_N - by1);
}

Test(redis, exactly_one_instance_closes_each_joined_entry) {
    static Racer r1, r2;
    put_many(instance(0, JOURNAL_FIRST, false, 0), RACE_N);
    r1.jr = instance(1, JOURNAL_FIRST, false, 0);
    r2.jr = instance(2, JOURNAL_FIRST, false, 0);
    race(race_join, &r1, &r2);

    int once = 0;
    for (int i = 0; i < RACE_N; i++) once += r1.closed[i] + r2.closed[i] == 1;
    cr_expect_eq(once, RACE_N, "every entry closed by one event: %d of %d", once, RACE_N);
    JournalStats s1 = journal_stats(r1.jr), s2 = journal_stats(r2.jr);
    cr_expect_eq(s1.late + s2.late, RACE_N, "the losing event of each pair is late");
    cr_expect_eq(drain(r1.jr, 5000, NULL, 0), 0, "nothing left to expire");
}

/* --- outages --- */

static void ids_put(Journal *jr, char letter, int from, int to, int64_t now) {
    for (int i = from; i < to; i++) {
        char id[16];
        snprintf(id, sizeof id, "%c%d", letter, i);
        rput(jr, id, now);
    }
}

/* Joins rewards to ids letter[from, to); counts the closed ones in seen. Returns the
 * slowest call in ms. */
static long long ids_reward(Journal *jr, char letter, int from, int to, int64_t now, int *seen,
                            JoinResult want) {
    long long worst = 0;
    for (int i = from; i < to; i++) {
        char id[16];
        Experience e;
        snprintf(id, sizeof id, "%c%d", letter, i);
        long long t0 = harness_now_ms();
        JoinResult res = rreward(jr, id, 0.5, now, &e);
        long long dt = harness_now_ms() - t0;
        if (dt > worst) worst = dt;
        cr_expect_eq(res, want, "%s: expected %d, got %d", id, want, res);
        if (res == JOIN_CLOSED) {
            seen[learned_index(&e)]++;
            experience_free(&e);
        }
    }
    return worst;
}

Test(redis, an_outage_during_joins_falls_back_and_learns_everything_once) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    int seen[20] = {0};
    ids_put(a, 'p', 0, 10, 0);
    flush(a, 1);

    /* Redis dies. The first join meets the dead connection (its event may have been
     * joined or not: it is ignored); the next ones are joined to memory's copies. */
    rserver_kill(&srv);
    long long worst = ids_reward(a, 'p', 0, 1, 5, seen, JOIN_UNAVAILABLE);
    cr_expect_lt(worst, HANG_BOUND, "a join took %lld ms", worst);
    worst = ids_reward(a, 'p', 1, 5, 5, seen, JOIN_ACCUMULATED);
    cr_expect_lt(worst, CMD_MS, "a join waited %lld ms while Redis is known down", worst);

    /* Decisions made during the outage are memory's alone; their events wait, since a
     * close in memory would be forgotten by a crash. */
    ids_put(a, 'q', 10, 20, 10);
    long long t0 = harness_now_ms();
    flush(a, 20);
    cr_expect_lt(harness_now_ms() - t0, CMD_MS, "no wait while Redis is known down");
    ids_reward(a, 'q', 10, 15, 30, seen, JOIN_UNAVAILABLE);
    JournalStats s = journal_stats(a);
    cr_expect_eq(s.redis_fallbacks, 10, "fallbacks %llu", (unsigned long long)s.redis_fallbacks);
    cr_expect_eq(s.redis_unavailable, 6);
    cr_expect_eq(s.open, 20, "p0..p9 and q10..q19");
    cr_expect(!journal_ready(a), "ready while Redis is down");

    /* Redis returns empty (no persistence): memory writes back all it holds, and the
     * events that waited are joined there. */
    cr_assert_eq(rserver_restart(&srv), 0);
    cr_assert(wait_up(links[0], 5000), "no reconnect");
    flush(a, 40);
    cr_expect(journal_ready(a), "not ready once Redis is back");
    s = journal_stats(a);
    cr_expect_eq(s.redis_puts, 30, "puts %llu", (unsigned long long)s.redis_puts);
    ids_reward(a, 'q', 10, 15, 45, seen, JOIN_CLOSED);
    cr_expect_eq(rreward(a, "q10", 1, 50, NULL), JOIN_LATE, "closed once Redis was back");
    ids_reward(a, 'q', 15, 16, 50, seen, JOIN_CLOSED);
    cr_expect_eq(drain(a, 1100, seen, 20), 14, "p0..p9 and q16..q19 close with their windows");
    for (int i = 0; i < 20; i++) cr_expect_eq(seen[i], 1, "#%d learned %d times", i, seen[i]);
    for (int i = 0; i < 5; i++)
        cr_expect_eq(events_seen[i], i > 0, "p%d learned with %d events", i, events_seen[i]);
    cr_expect_eq(logged("unavailable"), 1, "one warning per outage");
}

Test(redis, a_write_without_a_reply_is_settled_not_learned_twice) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    Journal *b = instance(1, JOURNAL_FIRST, false, 0);
    int seen[5] = {0};
    ids_put(a, 'u', 0, 5, 0);

    /* The server stops while the writes are in flight: they may or may not apply. */
    rserver_freeze(&srv);
    long long t0 = harness_now_ms();
    flush(a, 1);
    cr_expect_lt(harness_now_ms() - t0, HANG_BOUND);
    cr_expect_eq(journal_stats(a).redis_uncertain, 5);
    cr_expect_eq(rreward(a, "u0", 0.5, 10, NULL), JOIN_ACCUMULATED, "only Redis may close it");
    cr_expect_eq(rreward(a, "u1", 0.5, 10, NULL), JOIN_ACCUMULATED);
    cr_expect_eq(drain(a, 1500, seen, 5), 0, "unsettled entries wait for Redis");
    rserver_thaw(&srv);
    cr_assert(wait_up(links[0], 5000) && wait_up(links[1], 5000), "no reconnect");

    /* Another instance joins u2 if the write did apply; then a writes again. */
    Experience e;
    JoinResult r2 = rreward(b, "u2", 0.75, 20, &e);
    if (r2 == JOIN_CLOSED) {
        seen[learned_index(&e)]++;
        experience_free(&e);
    }
    cr_log_info("the frozen writes %s", r2 == JOIN_CLOSED ? "applied" : "did not apply");
    flush(a, 30);
    cr_expect_eq(journal_stats(a).redis_puts, r2 == JOIN_CLOSED ? 4 : 5,
                 "u2, closed by b, is not written again");
    drain(a, 1500, seen, 5);
    drain(b, 1500, seen, 5);
    for (int i = 0; i < 5; i++) cr_expect_eq(seen[i], 1, "u%d learned %d times", i, seen[i]);
    cr_expect(events_seen[0] == 1 && events_seen[1] == 1,
              "the events joined during the outage are learned once: %d %d", events_seen[0],
              events_seen[1]);
}

Test(redis, error_replies_keep_decisions_in_memory_until_redis_accepts) {
    Journal *a = instance(0, JOURNAL_FIRST, false, 0);
    Experience e;
    cr_assert(rserver_run(&srv, 0, "CONFIG SET maxmemory-policy noeviction"));
    cr_assert(rserver_run(&srv, 0, "CONFIG SET maxmemory 1"));
    rput(a, "a", 0);
    rput(a, "b", 0);
    flush(a, 1);
    flush(a, 2);
    JournalStats s = journal_stats(a);
    cr_expect(s.open == 2 && s.redis_puts == 0 && s.redis_fallbacks == 2 && s.redis_errors == 4,
              "open %zu puts %llu fallbacks %llu errors %llu", s.open,
              (unsigned long long)s.redis_puts, (unsigned long long)s.redis_fallbacks,
              (unsigned long long)s.redis_errors);
    cr_expect_eq(logged("redis refused a journal write"), 1, "once per episode");
    cr_expect_eq(rreward(a, "a", 1, 3, &e), JOIN_UNAVAILABLE, "joined where a crash forgets it");
    cr_expect(!journal_ready(a), "ready while Redis refuses");

    cr_assert(rserver_run(&srv, 0, "CONFIG SET maxmemory 0"));
    flush(a, 4);
    cr_expect_eq(journal_stats(a).redis_puts, 2);
    cr_expect_eq(logged("redis accepts journal writes again"), 1);
    cr_expect(journal_ready(a));
    cr_expect_eq(rreward(a, "a", 1, 5, &e), JOIN_CLOSED, "joined in Redis once it has room");
    experience_free(&e);
    cr_expect_eq(drain(a, 1001, NULL, 0), 1);
}

Test(redis, an_entry_redis_dropped_before_anyone_closed_it_is_counted_lost) {
    /* window 1000 + grace 100: keys live 1.1 s; the index lives on with the later put */
    Journal *a = instance(0, JOURNAL_FIRST, false, 100);
    rput(a, "a", 0);
    flush(a, 1);
    sleep_ms(600);
    rput(a, "b", 0);
    flush(a, 2);
    sleep_ms(700);
    cr_expect_eq(drain(a, 2000, NULL, 0), 1, "b is learned");
    cr_expect_eq(journal_stats(a).redis_lost, 1, "a expired in Redis first");
}
