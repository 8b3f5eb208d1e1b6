/*
 * Session context: turns, the previous template and reward, the running mean, expiry, in
 * memory; then through a real redis-server started per test: shared by two instances and
 * a restart, read a batch at a time, an outage (SIGKILL and a cold restart), a frozen
 * server and a corrupt value. Waits are bounded by the tests themselves.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../daemon/log.h"
#include "../daemon/redis.h"
#include "../daemon/session.h"
#include "redis_harness.h"

Test(session, a_new_session_has_no_context) {
    SessionStore *s = session_new(4, 1000, 10, NULL, NULL);
    SessionView v = session_get(s, "inc-1", 5, 0);
    cr_expect(v.turn == 0 && v.prev_template == 0 && !v.has_reward && v.count == 0);
    session_free(s);
}

Test(session, decisions_and_rewards_build_the_context) {
    SessionStore *s = session_new(2, 1000, 10, NULL, NULL);
    float a[2] = {1, 0}, b[2] = {0, 1}, c[2] = {1, 1};
    session_decided(s, "inc", 3, 11, a, 0);
    session_rewarded(s, "inc", 3, 0.5, 10);
    SessionView v = session_get(s, "inc", 3, 20);
    cr_expect(v.turn == 1 && v.prev_template == 11 && v.has_reward && v.prev_reward == 0.5);

    session_decided(s, "inc", 3, 22, b, 30);
    session_decided(s, "inc", 3, 33, c, 40);
    v = session_get(s, "inc", 3, 50);
    cr_expect_eq(v.turn, 3);
    cr_expect_eq(v.prev_template, 33);
    cr_expect(!v.has_reward, "a new decision's reward is not known yet");
    cr_expect_float_eq(v.mean[0], 2.0f / 3, 1e-6);
    cr_expect_float_eq(v.mean[1], 2.0f / 3, 1e-6);
    session_free(s);
}

Test(session, sessions_expire_after_their_ttl_and_beyond_capacity) {
    SessionStore *s = session_new(1, 100, 2, NULL, NULL);
    float x[1] = {1};
    session_decided(s, "a", 1, 1, x, 0);
    session_decided(s, "b", 1, 1, x, 50);
    cr_expect_eq(session_get(s, "a", 1, 120).turn, 0, "a was unseen for longer than the TTL");
    cr_expect_eq(session_get(s, "b", 1, 120).turn, 1);
    session_decided(s, "c", 1, 1, x, 130);
    session_decided(s, "d", 1, 1, x, 131);
    cr_expect_eq(session_count(s), 2);
    cr_expect_eq(session_get(s, "b", 1, 132).turn, 0, "the least recently seen went first");
    cr_expect_eq(session_get(s, "d", 1, 132).turn, 1);
    session_free(s);
}

/* --- through Redis --- */

#define CMD_MS     100
#define HANG_BOUND (5 * CMD_MS)
#define PREFIX     "promptd:test:"
#define TTL_MS     60000

static RedisServer srv;
static RedisLink *links[2];
static SessionStore *ss[2];

static void quiet(void *ctx, int level, const char *line) {
    (void)ctx, (void)level, (void)line;
}

static void redis_setup(void) {
    signal(SIGPIPE, SIG_IGN);
    pd_log_set_sink(quiet, NULL);
    cr_assert_eq(rserver_start(&srv, NULL), 0, "redis-server did not start (see %s)", srv.dir);
}

static void redis_teardown(void) {
    for (int i = 0; i < 2; i++) {
        session_free(ss[i]); /* before its link: it writes what is pending */
        ss[i] = NULL;
    }
    for (int i = 0; i < 2; i++) {
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

/* Instance i: a link of its own and a store of 2-float vectors on it. */
static SessionStore *instance(int i) {
    RedisUrl u;
    char url[256], err[256] = "";
    if (!links[i]) {
        cr_assert_eq(redis_url_parse(&u, rserver_url(&srv, 0, url, sizeof url), err, sizeof err),
                     0);
        RedisTimeouts t = {300, CMD_MS, 20, 200};
        cr_assert_eq(redis_link_open(&links[i], &u, &t, err, sizeof err), 0, "%s", err);
    }
    ss[i] = session_new(2, TTL_MS, 100, links[i], PREFIX);
    cr_assert_not_null(ss[i]);
    return ss[i];
}

static bool wait_up(RedisLink *l, int timeout_ms) {
    for (int waited = 0; !redis_link_stats(l).up; waited += 10) {
        if (waited > timeout_ms) return false;
        sleep_ms(10);
    }
    return true;
}

/* After a restart, a link that sent nothing since still holds the dead connection: its
 * first round trip fails and starts the reconnect. Waits until every instance is back. */
static void reconnect_all(void) {
    for (int i = 0; i < 2; i++) {
        if (!ss[i]) continue;
        session_get(ss[i], "probe", 5, 0);
        cr_assert(wait_up(links[i], 5000), "instance %d did not reconnect", i);
    }
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

static void decide(SessionStore *s, const char *id, uint64_t tpl, float x, float y, int64_t now) {
    float v[2] = {x, y};
    session_get(s, id, strlen(id), now); /* as the pipeline does, before it decides */
    cr_assert_eq(session_decided(s, id, strlen(id), tpl, v, now), 0);
}

static SessionView get(SessionStore *s, const char *id, int64_t now) {
    return session_get(s, id, strlen(id), now);
}

Test(redis, the_context_is_shared_through_redis) {
    SessionStore *a = instance(0), *b = instance(1);
    decide(a, "inc", 11, 1, 0, 0);
    session_flush(a, 0);
    cr_expect(reply_str_is(rserver_command(&srv, 0, "HGET " PREFIX "s:inc t"), "1"));
    long long ttl = reply_int(rserver_command(&srv, 0, "PTTL " PREFIX "s:inc"));
    cr_expect(ttl > TTL_MS - 1000 && ttl <= TTL_MS, "TTL = session.ttl, got %lld", ttl);

    SessionView v = get(b, "inc", 5);
    cr_expect(v.turn == 1 && v.prev_template == 11 && !v.has_reward && v.count == 1);
    cr_assert_not_null(v.mean);
    cr_expect(v.mean[0] == 1 && v.mean[1] == 0, "the mean is exact: %g %g", v.mean[0], v.mean[1]);

    /* The reward is joined by the other instance. */
    session_rewarded(b, "inc", 3, 0.5, 6);
    session_flush(b, 6);
    v = get(a, "inc", 2000);
    cr_expect(v.has_reward && v.prev_reward == 0.5, "a reads it again once its copy is stale");

    decide(a, "inc", 22, 0, 1, 2001);
    session_flush(a, 2001);
    v = get(b, "inc", 4000);
    cr_expect(v.turn == 2 && v.prev_template == 22 && !v.has_reward && v.count == 2);
    cr_expect_float_eq(v.mean[0], 0.5f, 1e-6);
    cr_expect_float_eq(v.mean[1], 0.5f, 1e-6);
    SessionStats s = session_stats(b);
    cr_expect(s.redis_enabled && s.redis_reads == 2 && s.redis_hits == 2 && s.redis_writes == 1,
              "reads %llu hits %llu writes %llu", (unsigned long long)s.redis_reads,
              (unsigned long long)s.redis_hits, (unsigned long long)s.redis_writes);
}

Test(redis, a_restart_keeps_the_context) {
    SessionStore *a = instance(0);
    decide(a, "inc", 7, 2, 4, 0);
    decide(a, "other", 8, 1, 1, 1);
    session_free(a); /* writes what is pending on the way out */
    ss[0] = NULL;
    a = instance(0);
    SessionView v = get(a, "inc", 10);
    cr_expect(v.turn == 1 && v.prev_template == 7 && v.mean && v.mean[1] == 4);
    cr_expect_eq(get(a, "new", 10).turn, 0);
    cr_expect_eq(get(a, "new", 11).turn, 0);
    cr_expect_eq(session_stats(a).redis_reads, 2, "an absent session is not asked for twice");
}

Test(redis, prefetch_reads_a_batch_in_one_round_trip) {
    SessionStore *a = instance(0), *b = instance(1);
    decide(a, "s1", 1, 1, 0, 0);
    decide(a, "s2", 2, 0, 1, 0);
    session_flush(a, 0);

    const char *ids[] = {"s1", "s2", "s3"};
    size_t lens[] = {2, 2, 2};
    session_prefetch(b, ids, lens, 3, 10);
    cr_expect_eq(session_stats(b).redis_reads, 3);
    rserver_kill(&srv); /* what follows must need no round trip */
    cr_expect_eq(get(b, "s1", 11).prev_template, 1);
    cr_expect_eq(get(b, "s2", 11).prev_template, 2);
    cr_expect_eq(get(b, "s3", 11).turn, 0);
    cr_expect_eq(session_stats(b).redis_reads, 3);
    cr_expect_eq(session_stats(b).redis_fallbacks, 0);
}

Test(redis, an_outage_falls_back_to_memory_and_writes_back) {
    SessionStore *a = instance(0), *b = instance(1);
    decide(a, "s1", 1, 1, 0, 0);
    session_flush(a, 0);
    rserver_kill(&srv);

    long long t0 = harness_now_ms();
    SessionView v = get(a, "s1", 2000); /* stale, Redis cannot be asked: memory serves */
    cr_expect_lt(harness_now_ms() - t0, HANG_BOUND);
    cr_expect_eq(v.turn, 1);
    t0 = harness_now_ms();
    decide(a, "s1", 2, 0, 1, 2001);
    decide(a, "s2", 3, 1, 1, 2002);
    session_flush(a, 2003);
    cr_expect_lt(harness_now_ms() - t0, CMD_MS, "no wait while Redis is known down");
    cr_expect_eq(get(a, "s1", 2004).turn, 2);
    cr_expect_geq(session_stats(a).redis_fallbacks, 1);

    cr_assert_eq(rserver_restart(&srv), 0);
    reconnect_all();
    session_flush(a, 3000);
    cr_expect_eq(get(b, "s1", 3001).turn, 2, "what was decided in the outage reached Redis");
    cr_expect_eq(get(b, "s2", 3001).turn, 1);
}

Test(redis, a_cold_redis_gets_the_context_back_from_memory) {
    SessionStore *a = instance(0), *b = instance(1);
    decide(a, "s1", 1, 1, 0, 0);
    session_flush(a, 0);
    cr_assert_eq(rserver_restart(&srv), 0); /* empty */
    reconnect_all();

    /* a's copy is stale: it asks Redis, which no longer has the session. */
    cr_expect_eq(get(a, "s1", 2000).turn, 1);
    cr_expect_eq(session_stats(a).redis_hits, 0);
    session_flush(a, 2000);
    cr_expect_eq(get(b, "s1", 4001).turn, 1, "written back from memory");
}

Test(redis, a_frozen_server_costs_one_command_timeout) {
    SessionStore *a = instance(0);
    decide(a, "s1", 1, 1, 0, 0);
    session_flush(a, 0);
    rserver_freeze(&srv);
    for (int i = 0; i < 5; i++) {
        long long t0 = harness_now_ms();
        SessionView v = get(a, "s1", 2000 + 2000 * i);
        long long dt = harness_now_ms() - t0;
        cr_expect_lt(dt, HANG_BOUND, "read %d took %lld ms", i, dt);
        if (i > 0) cr_expect_lt(dt, CMD_MS, "read %d waited %lld ms with Redis down", i, dt);
        cr_expect_eq(v.turn, 1);
    }
    rserver_thaw(&srv);
}

Test(redis, a_corrupt_value_is_ignored_and_overwritten) {
    SessionStore *a = instance(0);
    cr_assert(rserver_run(&srv, 0, "HSET " PREFIX "s:x t 3 p 9 r 0 h 0 n 1 v short w 0"));
    SessionView v = get(a, "x", 10);
    cr_expect_eq(v.turn, 0);
    cr_expect_eq(session_stats(a).redis_corrupt, 1);
    decide(a, "x", 5, 1, 1, 11);
    session_flush(a, 11);
    cr_expect(reply_str_is(rserver_command(&srv, 0, "HGET " PREFIX "s:x t"), "1"));
    cr_expect_eq(reply_int(rserver_command(&srv, 0, "HSTRLEN " PREFIX "s:x v")), 8);
}
