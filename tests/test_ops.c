/*
 * promptctl's operational commands, black-box through the binary:
 *
 *   replay   two small packs with known reward functions and hand-made decisions and
 *            rewards files: the exact means, counts, IPS figures and error reports
 *   status   against a canned admin endpoint served by promptd's own metrics server
 *   top      (missing metrics shown as "-", health states, rates, template shares)
 *   send     end to end against a real promptd on its embedded broker: a decision, dead
 *            letters with their reasons, timeout and an unreachable broker
 *   status and top --once against that promptd's admin socket
 *
 * Every wait is bounded (proc_wait), so a hung command fails its test instead of the
 * suite.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../daemon/metrics.h"
#include "harness.h"

static const char *dir;
static char out_path[512], err_path[512];

static void setup(void) {
    dir = harness_tmpdir();
    cr_assert_not_null(dir, "cannot make a scratch directory");
    harness_path(out_path, sizeof out_path, dir, "stdout");
    harness_path(err_path, sizeof err_path, dir, "stderr");
}

static void teardown(void) {
    harness_cleanup();
}

TestSuite(ops, .init = setup, .fini = teardown);

static const char *promptctl(void) {
    const char *p = getenv("PROMPTCTL");
    return p ? p : "build/promptctl";
}

/* What a run of promptctl printed. */
typedef struct {
    int code;
    char *out, *err;
} Run;

static void run_free(Run *r) {
    free(r->out);
    free(r->err);
}

/* Runs promptctl with args (NULL-terminated) to completion, within 60 s. */
static Run ctl(const char *const *args) {
    char *argv[48];
    int n = 0;
    argv[n++] = (char *)promptctl();
    for (; *args && n < 47; args++) argv[n++] = (char *)*args;
    argv[n] = NULL;
    unlink(out_path);
    unlink(err_path);
    Proc p;
    cr_assert_eq(proc_start(&p, argv, NULL, out_path, err_path), 0);
    Run r = {proc_wait(&p, 60000), NULL, NULL};
    if (r.code < 0) proc_stop(&p);
    cr_assert_geq(r.code, 0, "promptctl %s did not finish within 60 s", argv[1]);
    r.out = harness_read_file(out_path, NULL);
    r.err = harness_read_file(err_path, NULL);
    if (!r.out) r.out = strdup("");
    if (!r.err) r.err = strdup("");
    return r;
}

static const char *write_file(const char *name, const char *text) {
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
    harness_path(p, 512, dir, name);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f, "cannot write %s", p);
    fputs(text, f);
    fclose(f);
    return p;
}

/* --- replay --- */

/* Two packs that score a rating differently: new gives the rating and fails on "err"
 * events; old gives the rating minus 1 and has no failure. Both return nil for "nil". */
static void write_packs(char *new_dir, char *old_dir, size_t len) {
    static const char *const body[] = {
        "return { templates = { { name = 'a', about = 'first', render = function() return "
        "'x' end }, { name = 'b', about = 'second', render = function() return 'y' end } },\n"
        "  reward = function(e, d)\n"
        "    if e.kind == 'nil' then return nil end\n"
        "    if e.kind == 'err' then error('no rating here') end\n"
        "    return e.rating\n"
        "  end }\n",
        "return { templates = { { name = 'a', about = 'first', render = function() return "
        "'x' end } },\n"
        "  reward = function(e, d)\n"
        "    if e.kind == 'nil' then return nil end\n"
        "    return (e.rating or 0) - 1\n"
        "  end }\n"};
    char *dirs[] = {new_dir, old_dir};
    const char *names[] = {"newpack", "oldpack"};
    for (int i = 0; i < 2; i++) {
        char file[600];
        harness_path(dirs[i], len, dir, names[i]);
        cr_assert_eq(mkdir(dirs[i], 0755), 0);
        snprintf(file, sizeof file, "%s/init.lua", dirs[i]);
        FILE *f = fopen(file, "w");
        cr_assert_not_null(f);
        fputs(body[i], f);
        fclose(f);
    }
}

/* Decisions as kcat writes them, with a key<TAB> form, an empty key, a duplicate (whose
 * different template must not win), a blank line and two unusable lines. */
static const char *decisions_text =
    "{\"id\":\"d1\",\"template\":\"a\",\"prompt\":\"x\",\"p\":0.5,\"policy_version\":3}\n"
    "{\"id\":\"d2\",\"template\":\"a\",\"prompt\":\"x\",\"p\":0.25,\"policy_version\":3}\n"
    "d3\t{\"id\":\"d3\",\"template\":\"b\",\"prompt\":\"y\",\"p\":0.5,\"policy_version\":3}\n"
    "\t{\"id\":\"d4\",\"template\":\"b\",\"prompt\":\"y\",\"p\":1,\"policy_version\":3}\n"
    "{\"id\":\"d5\",\"template\":\"a\",\"prompt\":\"x\",\"p\":0.5,\"policy_version\":3}\n"
    "{\"id\":\"d1\",\"template\":\"b\",\"prompt\":\"y\",\"p\":0.5,\"policy_version\":3}\n"
    "\n"
    "not json at all\n"
    "{\"id\":\"d9\",\"prompt\":\"no template\"}\n";

/* Under new (clip 10): d1 2 then 4, d2 1, d3 50 -> 10 then nil, d4 an error, d5 nothing.
 * Under old: d1 1 then 3, d2 0, d3 49 -> 10 then nil, d4 -1. */
static const char *rewards_text = "{\"id\":\"d1\",\"rating\":2}\n"
                                  "{\"id\":\"d1\",\"rating\":4}\n"
                                  "{\"id\":\"d2\",\"rating\":1}\n"
                                  "{\"id\":\"d3\",\"rating\":50}\n"
                                  "{\"id\":\"d3\",\"kind\":\"nil\"}\n"
                                  "d4\t{\"id\":\"d4\",\"kind\":\"err\"}\n"
                                  "{\"id\":\"zz\",\"rating\":1}\n"
                                  "{broken\n"
                                  "{\"rating\":1}\n";

static json_t *replay_json(const char *const *args) {
    Run r = ctl(args);
    cr_assert_eq(r.code, 0, "replay exited %d: %s", r.code, r.err);
    json_error_t e;
    json_t *j = json_loads(r.out, 0, &e);
    cr_assert_not_null(j, "replay --json printed no JSON (%s):\n%s", e.text, r.out);
    run_free(&r);
    return j;
}

static double num_at(const json_t *j, const char *path) {
    char buf[256], *save, *key;
    snprintf(buf, sizeof buf, "%s", path);
    for (key = strtok_r(buf, ".", &save); key && j; key = strtok_r(NULL, ".", &save))
        j = json_is_array(j) ? json_array_get(j, (size_t)atoi(key)) : json_object_get(j, key);
    cr_assert(json_is_number(j) || json_is_null(j), "no number at %s", path);
    return json_is_null(j) ? NAN : json_number_value(j);
}

#define EXPECT_AT(j, path, want)                                                                   \
    do {                                                                                           \
        double got_ = num_at(j, path), want_ = (want);                                             \
        cr_expect(fabs(got_ - want_) < 1e-9, "%s: expected %.6f, got %.6f", path, want_, got_);    \
    } while (0)

Test(ops, replay_rescores_events_and_compares_two_packs_exactly) {
    char newp[512], oldp[512];
    write_packs(newp, oldp, sizeof newp);
    const char *dec = write_file("decisions.jsonl", decisions_text);
    const char *rew = write_file("rewards.jsonl", rewards_text);
    json_t *j = replay_json((const char *[]){"replay", "--pack", newp, "--against", oldp,
                                             "--decisions", dec, "--rewards", rew, "--json", NULL});
    EXPECT_AT(j, "decisions", 5);
    EXPECT_AT(j, "duplicate_decisions", 1);
    EXPECT_AT(j, "unreadable_decisions.count", 2);
    EXPECT_AT(j, "events", 7);
    EXPECT_AT(j, "events_without_decision", 1);
    EXPECT_AT(j, "unreadable_events.count", 2);
    EXPECT_AT(j, "new.scored", 4);
    EXPECT_AT(j, "new.nil", 1);
    EXPECT_AT(j, "new.errors", 1);
    EXPECT_AT(j, "old.scored", 5);
    EXPECT_AT(j, "old.nil", 1);
    EXPECT_AT(j, "old.errors", 0);
    const char *msg = json_string_value(
        json_array_get(json_object_get(json_object_get(j, "new"), "error_messages"), 0));
    cr_expect(msg && strstr(msg, "d4: ") && strstr(msg, "no rating here"), "error: %s", msg);

    /* Template a: d1 (first event 2), d2 (1) and d5 (none); b: d3 (10, clipped) and d4. */
    cr_expect_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(j, "templates"), 0), "template")),
                     "a");
    EXPECT_AT(j, "templates.0.decisions", 3);
    EXPECT_AT(j, "templates.0.new.rewarded", 2);
    EXPECT_AT(j, "templates.0.new.mean", 1.5);
    EXPECT_AT(j, "templates.0.old.rewarded", 2);
    EXPECT_AT(j, "templates.0.old.mean", 0.5);
    EXPECT_AT(j, "templates.0.change", 1.0);
    EXPECT_AT(j, "templates.1.decisions", 2);
    EXPECT_AT(j, "templates.1.new.rewarded", 1);
    EXPECT_AT(j, "templates.1.new.mean", 10);
    EXPECT_AT(j, "templates.1.old.rewarded", 2);
    EXPECT_AT(j, "templates.1.old.mean", 4.5);
    EXPECT_AT(j, "all.new.rewarded", 3);
    EXPECT_AT(j, "all.new.mean", 13.0 / 3);
    EXPECT_AT(j, "all.old.mean", 2.5);
    EXPECT_AT(j, "all.change", 13.0 / 3 - 2.5);
    /* IPS over the 5 decisions, unrewarded counted as 0: a = (2/0.5 + 1/0.25) / 5,
     * b = (10/0.5) / 5; all = the logged choices' mean, 13 / 5. */
    EXPECT_AT(j, "templates.0.new.ips", 8.0 / 5);
    EXPECT_AT(j, "templates.1.new.ips", 20.0 / 5);
    EXPECT_AT(j, "all.new.ips", 13.0 / 5);
    EXPECT_AT(j, "all.old.ips", (1 + 0 + 10 - 1) / 5.0);
    json_decref(j);
}

Test(ops, replay_aggregates_and_treats_unrewarded_decisions_as_asked) {
    char newp[512], oldp[512];
    write_packs(newp, oldp, sizeof newp);
    const char *dec = write_file("decisions.jsonl", decisions_text);
    const char *rew = write_file("rewards.jsonl", rewards_text);
    const struct {
        const char *rule;
        double a_mean;
    } rules[] = {{"first", 1.5}, {"last", 2.5}, {"sum", 3.5}, {"max", 2.5}, {"mean", 2}};
    for (size_t i = 0; i < sizeof rules / sizeof *rules; i++) {
        json_t *j = replay_json((const char *[]){"replay", "-p", newp, "-d", dec, "-r", rew,
                                                 "--aggregate", rules[i].rule, "--json", NULL});
        cr_expect_null(json_object_get(j, "old"), "no old pack without --against");
        double got = num_at(j, "templates.0.new.mean");
        cr_expect(fabs(got - rules[i].a_mean) < 1e-9, "%s: mean of a %.4f, expected %.4f",
                  rules[i].rule, got, rules[i].a_mean);
        json_decref(j);
    }

    /* Dropped, the unrewarded decisions leave the estimate: 3 decisions remain. */
    json_t *j = replay_json((const char *[]){"replay", "-p", newp, "-d", dec, "-r", rew,
                                             "--default", "drop", "--clip", "5", "--json", NULL});
    EXPECT_AT(j, "templates.1.new.mean", 5);
    EXPECT_AT(j, "templates.0.new.ips", 8.0 / 3);
    EXPECT_AT(j, "templates.1.new.ips", 10.0 / 3);
    EXPECT_AT(j, "all.new.ips", 8.0 / 3);
    json_decref(j);
    j = replay_json((const char *[]){"replay", "-p", newp, "-d", dec, "-r", rew, "--default", "-1",
                                     "--json", NULL});
    EXPECT_AT(j, "templates.0.new.ips", (4 + 4 - 1 / 0.5) / 5);
    EXPECT_AT(j, "all.new.ips", (2 + 1 + 10 - 1 - 1) / 5.0);
    json_decref(j);
}

Test(ops, replay_prints_a_table_per_template_with_the_problems_named) {
    char newp[512], oldp[512];
    write_packs(newp, oldp, sizeof newp);
    const char *dec = write_file("decisions.jsonl", decisions_text);
    const char *rew = write_file("rewards.jsonl", rewards_text);
    Run r = ctl((const char *[]){"replay", "--pack", newp, "--against", oldp, "--decisions", dec,
                                 "--rewards", rew, NULL});
    cr_assert_eq(r.code, 0, "%s", r.err);
    const char *want[] = {
        "replay of 5 decisions and 7 reward events (aggregate first, clip 10)",
        "a                              3         2     1.5000         2     0.5000    +1.0000 "
        "    1.6000",
        "b                              2         1    10.0000         2     4.5000    +5.5000 "
        "    4.0000",
        "all                            5         3     4.3333         4     2.5000    +1.8333 "
        "    2.6000",
        "events: 7 read, 1 with no decision",
        "new pack: 4 scored, 1 nil, 1 error\n",
        "no rating here",
        "old pack: 5 scored, 1 nil, 0 errors",
        "2 unreadable event lines",
        "decisions: 5 read, 1 duplicate, 0 without a logged p",
        "2 unreadable decision lines",
        "decisions.jsonl:8: the message is not valid JSON",
        "decisions.jsonl:9: a decision without a \"template\" string",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_expect(strstr(r.out, want[i]), "missing '%s' in:\n%s", want[i], r.out);
    run_free(&r);
}

Test(ops, replay_refuses_a_broken_pack_like_check_and_bad_usage) {
    char newp[512], oldp[512];
    write_packs(newp, oldp, sizeof newp);
    const char *dec = write_file("decisions.jsonl", decisions_text);
    const char *rew = write_file("rewards.jsonl", rewards_text);
    char broken[600], file[700];
    snprintf(broken, sizeof broken, "%s/broken", dir);
    cr_assert_eq(mkdir(broken, 0755), 0);
    snprintf(file, sizeof file, "%s/init.lua", broken);
    FILE *f = fopen(file, "w");
    fputs("return { templates = {\n", f);
    fclose(f);

    Run r = ctl((const char *[]){"replay", "-p", newp, "-a", broken, "-d", dec, "-r", rew, NULL});
    cr_expect_eq(r.code, 1, "a pack that does not load: exit 1, got %d", r.code);
    cr_expect(strstr(r.err, "promptctl: ") && strstr(r.err, "init.lua"), "stderr: %s", r.err);
    run_free(&r);
    Run c = ctl((const char *[]){"check", broken, NULL});
    cr_expect_neq(c.code, 0);
    cr_expect(strstr(c.err, "init.lua:"), "check: %s", c.err);
    run_free(&c);

    r = ctl((const char *[]){"replay", "-p", newp, "-d", "/nonexistent/d.jsonl", "-r", rew, NULL});
    cr_expect_eq(r.code, 66, "an unreadable input: exit 66, got %d", r.code);
    cr_expect(strstr(r.err, "/nonexistent/d.jsonl"), "stderr: %s", r.err);
    run_free(&r);
    const char *const usage[][10] = {
        {"replay", "-p", newp, "-d", dec, NULL},
        {"replay", "-p", newp, "-d", dec, "-r", rew, "--aggregate", "median", NULL},
        {"replay", "-p", newp, "-d", dec, "-r", rew, "--clip", "0", NULL},
        {"replay", "-p", newp, "-d", dec, "-r", rew, "--default", "maybe", NULL},
    };
    for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
        r = ctl(usage[i]);
        cr_expect_eq(r.code, 64, "usage case %zu: exit %d", i, r.code);
        run_free(&r);
    }
}

/* --- status and top against a canned endpoint --- */

static atomic_int scrapes;
static atomic_int health_state;

/* A page as promptd writes it, with some metrics left out (no Redis gauge, no lag, no
 * reload timestamp) and counters that grow by a known step per scrape. */
static void canned_render(void *ctx, MetricsWriter *w) {
    (void)ctx;
    double k = atomic_fetch_add(&scrapes, 1) + 1;
    metrics_counter(w, "promptd_prompts_total", "Prompts.", 100 * k);
    metrics_counter(w, "promptd_decisions_total", "Decisions.", 90 * k);
    metrics_family(w, "promptd_dead_letters_total", METRICS_COUNTER, "Dead letters.");
    metrics_value1(w, "reason", "invalid_json", 5 * k);
    metrics_value1(w, "reason", "missing_text", 2);
    metrics_value1(w, "reason", "too_large", 0);
    metrics_gauge(w, "promptd_policy_version", "Version.", 12 + k);
    metrics_counter(w, "promptd_policy_updates_total", "Updates.", 40);
    metrics_gauge(w, "promptd_policy_kl", "KL.", 0.0125);
    metrics_gauge(w, "promptd_reward_mean", "Mean.", 0.25 * k);
    metrics_family(w, "promptd_cache_lookups_total", METRICS_COUNTER, "Lookups.");
    MetricsLabel l1h[] = {{"level", "l1"}, {"result", "hit"}};
    MetricsLabel l1m[] = {{"level", "l1"}, {"result", "miss"}};
    metrics_value(w, l1h, 2, 75);
    metrics_value(w, l1m, 2, 25);
    metrics_family(w, "promptd_template_selections_total", METRICS_COUNTER, "Selections.");
    metrics_value1(w, "template", "triage", 30 * k);
    metrics_value1(w, "template", "runbook", 10 * k);
    metrics_value1(w, "template", "say \"hi\"", 0);
    metrics_family(w, "promptd_pack_reloads_total", METRICS_COUNTER, "Reloads.");
    metrics_value1(w, "result", "ok", 2);
    metrics_value1(w, "result", "refused", 1);
    metrics_gauge(w, "promptd_pack_last_reload_success", "Last reload.", 0);
    metrics_gauge(w, "promptd_pack_last_reload_timestamp_seconds", "Loaded at.",
                  (double)time(NULL) - 90);
    metrics_family(w, "promptd_build_info", METRICS_GAUGE, "Build.");
    metrics_value1(w, "version", "9.9.9", 1);
}

static void canned_health(void *ctx, MetricsHealth *h) {
    (void)ctx;
    if (atomic_load(&health_state) == 1)
        metrics_health_add(h, METRICS_DEGRADED, "redis down (in-process fallback)");
    if (atomic_load(&health_state) == 2) metrics_health_add(h, METRICS_FAILING, "starting");
}

static MetricsServer *canned_server(char *sock, size_t len) {
    char err[256];
    MetricsServer *s;
    harness_path(sock, len, dir, "admin.sock");
    MetricsConfig cfg = {.admin_socket = sock, .render = canned_render, .health = canned_health};
    cr_assert_eq(metrics_start(&s, &cfg, err, sizeof err), 0, "metrics_start: %s", err);
    return s;
}

Test(ops, status_shows_a_canned_page_with_dashes_for_what_is_missing) {
    char sock[512], target[600];
    atomic_store(&scrapes, 0);
    atomic_store(&health_state, 1);
    MetricsServer *s = canned_server(sock, sizeof sock);
    snprintf(target, sizeof target, "unix:%s", sock);

    Run r = ctl((const char *[]){"status", "--admin", target, "--interval", "200ms", NULL});
    cr_expect_eq(r.code, 0, "degraded is still exit 0, got %d: %s", r.code, r.err);
    const char *want[] = {
        "promptd 9.9.9 at unix:",
        "  health        degraded: redis down (in-process fallback)\n",
        "  uptime        - (since -)\n",
        "  prompts       in 200, decided 180, dead letters 12 (invalid_json 10, missing_text 2)\n",
        "  latency       end to end p50 -, p99 -\n",
        "  kafka lag     -\n",
        "  policy        version 14, updates 40, KL 0.0125, entropy -\n",
        "  reward        mean 0.5000; events joined -, late -, unknown -, nil -, errors -\n",
        "  journal       - open, - expired\n",
        "  cache         l1 hits 75.0% of 100\n",
        "  redis         -\n",
        "  pack reload   last REFUSED (the previous pack serves); loaded at ",
        " ago); ok 2, refused 1\n",
        "  lua errors    -\n",
        "  templates     80 selections:\n",
        "    triage                     75.0%  60\n",
        "    runbook                    25.0%  20\n",
        "    say \"hi\"                    0.0%  0\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_expect(strstr(r.out, want[i]), "missing '%s' in:\n%s", want[i], r.out);
    /* 100 prompts more in about 200 ms: a rate, whatever the exact timing. */
    cr_expect(strstr(r.out, "  throughput    ") && !strstr(r.out, "throughput    - "),
              "no rate:\n%s", r.out);
    run_free(&r);

    atomic_store(&health_state, 2);
    r = ctl((const char *[]){"status", "--admin", target, "--interval", "0", NULL});
    cr_expect_eq(r.code, 1, "failing is exit 1, got %d", r.code);
    cr_expect(strstr(r.out, "  health        failing: starting\n"), "%s", r.out);
    cr_expect_null(strstr(r.out, "throughput"), "one scrape gives no rates:\n%s", r.out);
    run_free(&r);
    metrics_stop(s);

    r = ctl((const char *[]){"status", "--admin", target, NULL});
    cr_expect_eq(r.code, 69, "a stopped endpoint is unreachable, got %d", r.code);
    cr_expect(strstr(r.err, sock), "stderr names the target: %s", r.err);
    run_free(&r);
    r = ctl((const char *[]){"status", "--admin", "nohost:notaport", NULL});
    cr_expect_eq(r.code, 64, "a malformed target is a usage error, got %d", r.code);
    run_free(&r);
}

Test(ops, top_once_prints_one_plain_frame_with_the_last_interval) {
    char sock[512];
    atomic_store(&scrapes, 0);
    atomic_store(&health_state, 0);
    MetricsServer *s = canned_server(sock, sizeof sock);
    Run r = ctl((const char *[]){"top", "--admin", sock, "--once", "--interval", "200ms", NULL});
    metrics_stop(s);
    cr_assert_eq(r.code, 0, "top --once exited %d: %s", r.code, r.err);
    cr_expect_null(strchr(r.out, '\033'), "--once prints no escape codes:\n%s", r.out);
    const char *want[] = {"promptd top: ",
                          ", ready, every 0.2 s\n",
                          "policy        version 14 (+1), KL 0.0125, entropy -\n",
                          "dead letters  12, 5 in the last interval (invalid_json 5)\n",
                          "kafka lag     -\n",
                          "templates     40 selections in the last interval\n",
                          "  triage                     75.0% ",
                          "  runbook                    25.0% ",
                          "reward        mean 0.5000"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_expect(strstr(r.out, want[i]), "missing '%s' in:\n%s", want[i], r.out);
    cr_expect_null(strstr(r.out, "(q quits)"), "--once has no keys to press");
    run_free(&r);

    r = ctl((const char *[]){"top", "--admin", sock, "--once", NULL});
    cr_expect_eq(r.code, 69, "top --once with nothing listening: exit 69, got %d", r.code);
    run_free(&r);
    r = ctl((const char *[]){"top", "--interval", "fast", NULL});
    cr_expect_eq(r.code, 64);
    run_free(&r);
}

/* --- against a real promptd --- */

typedef struct {
    Proc promptd;
    char boot[512], sock[512], log[512];
} Daemon;

static void daemon_start(Daemon *d) {
    char boot[600], sock[600];
    harness_path(d->boot, sizeof d->boot, dir, "bootstrap");
    harness_path(d->sock, sizeof d->sock, dir, "promptd.sock");
    harness_path(d->log, sizeof d->log, dir, "promptd.log");
    snprintf(boot, sizeof boot, "kafka.embedded.bootstrap_file=%s", d->boot);
    snprintf(sock, sizeof sock, "admin.socket=%s", d->sock);
    /* No TCP listener: tests run beside each other and beside a promptd on 9464. */
    char *argv[] = {(char *)harness_promptd(),
                    "--set",
                    boot,
                    "--set",
                    sock,
                    "--set",
                    "metrics.listen=",
                    "--set",
                    "kafka.consumer.session.timeout.ms=6000",
                    "--set",
                    "kafka.consumer.heartbeat.interval.ms=500",
                    NULL};
    cr_assert_eq(proc_start(&d->promptd, argv, NULL, NULL, d->log), 0);
    cr_assert_eq(harness_wait_file(d->boot, 15000), 0, "promptd wrote no bootstrap file");
    /* Only a head start: each send below waits up to 30 s for the group to form. */
    harness_wait_text(d->log, "assigned", 30000);
}

static bool one_of(const char *text, const char *const *names) {
    for (; *names; names++)
        if (!strcmp(text, *names)) return true;
    return false;
}

Test(ops, send_prints_the_decision_or_the_dead_letter_from_promptd) {
    Daemon d;
    daemon_start(&d);
    const char *const alarm[] = {"triage", "root_cause", "runbook", "escalation_summary", NULL};

    Run r = ctl((const char *[]){"send", "--bootstrap-file", d.boot, "--session", "INC-7", "--attr",
                                 "severity=3", "--attr", "site=WTG-12", "--timeout", "30s",
                                 "WTG-12", "gearbox bearing temperature 92C", NULL});
    cr_expect_eq(r.code, 0, "send exited %d: %s", r.code, r.err);
    char name[64] = "";
    const char *line = strstr(r.out, "\n  template  ");
    if (line) sscanf(line, "\n  template  %63s", name);
    cr_expect(one_of(name, alarm), "not an alarm template: '%s' in:\n%s", name, r.out);
    cr_expect(strstr(r.out, "  pack      alarm "), "%s", r.out);
    cr_expect(strstr(r.out, "  session   INC-7\n"), "%s", r.out);
    cr_expect(strstr(r.out, "Alarm from WTG-12 (monitoring), severity 3:\n"
                            "WTG-12 gearbox bearing temperature 92C"),
              "the rendered prompt, with the attributes:\n%s", r.out);
    run_free(&r);

    r = ctl((const char *[]){"send", "-B", d.boot, "--id", "ops-json-1", "--json",
                             "UPS-2 on battery", NULL});
    cr_expect_eq(r.code, 0, "send --json exited %d: %s", r.code, r.err);
    json_t *j = json_loads(r.out, 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(j, "id")), "ops-json-1");
    cr_expect(one_of(json_string_value(json_object_get(j, "template")), alarm), "%s", r.out);
    cr_expect(json_number_value(json_object_get(j, "p")) > 0, "%s", r.out);
    json_decref(j);
    run_free(&r);

    r = ctl((const char *[]){"send", "-B", d.boot, "", NULL});
    cr_expect_eq(r.code, 1, "an empty text is dead-lettered: exit 1, got %d: %s", r.code, r.err);
    cr_expect(strstr(r.out, "  reason    missing_text\n"), "%s", r.out);
    cr_expect(strstr(r.out, "  error     \"text\" is empty"), "%s", r.out);
    run_free(&r);

    r = ctl((const char *[]){"send", "-B", d.boot, "--raw", "{\"id\":\"ops-raw\"}", NULL});
    cr_expect_eq(r.code, 1, "a prompt with no text: exit 1, got %d: %s", r.code, r.err);
    cr_expect(strstr(r.out, "dead letter for ops-raw"), "%s", r.out);
    cr_expect(strstr(r.out, "  reason    missing_text\n"), "%s", r.out);
    run_free(&r);

    r = ctl((const char *[]){"send", "-B", d.boot, "--raw", "not json", NULL});
    cr_expect_eq(r.code, 1);
    cr_expect(strstr(r.out, "  reason    invalid_json\n"),
              "a payload with no id is found by "
              "its offset:\n%s",
              r.out);
    run_free(&r);

    /* The status screen sees the five prompts (the counters are read at each scrape). */
    Run s = {0};
    for (long long end = harness_now_ms() + 15000; harness_now_ms() < end; usleep(200000)) {
        run_free(&s);
        s = ctl((const char *[]){"status", "--admin", d.sock, "--interval", "0", NULL});
        if (strstr(s.out, "  prompts       in 5, decided 2, dead letters 3")) break;
    }
    cr_expect_eq(s.code, 0, "status of a serving promptd exited %d: %s", s.code, s.err);
    cr_expect(strstr(s.out, "  health        ready\n"), "%s", s.out);
    cr_expect(strstr(s.out, "  prompts       in 5, decided 2, dead letters 3 "
                            "(missing_text 2, invalid_json 1)"),
              "%s", s.out);
    cr_expect(strstr(s.out, "promptd 0."), "the version from promptd_build_info:\n%s", s.out);
    run_free(&s);
    s = ctl((const char *[]){"top", "--admin", d.sock, "--once", "--interval", "300ms", NULL});
    cr_expect_eq(s.code, 0, "top --once exited %d: %s", s.code, s.err);
    cr_expect(strstr(s.out, ", ready, every 0.3 s\n"), "%s", s.out);
    cr_expect(strstr(s.out, "dead letters  3, 0 in the last interval"), "%s", s.out);
    run_free(&s);

    proc_stop(&d.promptd);
}

Test(ops, send_times_out_or_reports_kafka_unreachable_with_its_exit_codes) {
    Daemon d;
    daemon_start(&d);
    /* A topic nobody reads: delivered, never answered. */
    Run r = ctl((const char *[]){"send", "-B", d.boot, "--topic-prompts", "ops.nobody", "--timeout",
                                 "3s", "lost", NULL});
    cr_expect_eq(r.code, 75, "no answer in time: exit 75, got %d: %s", r.code, r.err);
    cr_expect(strstr(r.err, "no decision or dead letter"), "%s", r.err);
    run_free(&r);
    proc_stop(&d.promptd);

    long long start = harness_now_ms();
    r = ctl((const char *[]){"send", "--brokers", "127.0.0.1:1", "--timeout", "3s", "x", NULL});
    cr_expect_eq(r.code, 69, "no broker: exit 69, got %d: %s", r.code, r.err);
    cr_expect_lt(harness_now_ms() - start, 20000, "the timeout bounds the wait");
    run_free(&r);

    const char *const usage[][8] = {
        {"send", "text", NULL},
        {"send", "-B", d.boot, NULL},
        {"send", "-B", d.boot, "--raw", "{}", "text"},
        {"send", "-B", d.boot, "--timeout", "soon", "x"},
    };
    for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
        r = ctl(usage[i]);
        cr_expect_eq(r.code, 64, "usage case %zu: exit %d", i, r.code);
        run_free(&r);
    }
}
