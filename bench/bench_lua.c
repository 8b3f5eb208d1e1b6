/*
 * Policy-pack benchmark (make bench): the cost per message of the Lua calls the serving
 * path makes for the shipped packs (bind the message, eligible(), render()) and of a
 * reward(), in µs; and the reload latency from a file write to a checked pack ready to
 * serve. Targets: render and reward ≤ 5 µs each, reload ≤ 50 ms.
 *
 * A report, not a test.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../daemon/log.h"
#include "../daemon/pack.h"
#include "../daemon/packwatch.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static const SandboxLimits limits = {64 << 20, 1000000, 50, 200, 1 << 20, 0};

static const char *const alarms[] = {
    "{\"id\":\"a1\",\"text\":\"WTG-12 gearbox bearing temperature 92C above limit\","
    "\"session\":\"inc-7\",\"attrs\":{\"site\":\"north-ridge\",\"severity\":\"major\"}}",
    "{\"id\":\"a2\",\"text\":\"UPS-3 on battery, 61% charge remaining\",\"attrs\":{\"site\":"
    "\"dc-fra-2\"}}",
    "{\"id\":\"a3\",\"text\":\"风机12号 齿轮箱轴承温度 92°C 超限\"}",
    "{\"id\":\"a4\",\"text\":\"core switch 10.0.3.1 BGP session down\",\"attrs\":{\"severity\":"
    "\"critical\",\"source\":\"nms\"}}",
};

static void die(const char *msg) {
    fprintf(stderr, "bench_lua: %s\n", msg);
    exit(1);
}

/* Per message: bind, eligible, render of one template; reported per step. */
static void bench_render(const char *dir) {
    char err[1024];
    Pack *p = pack_load(dir, "lua", &limits, err, sizeof err);
    if (!p) die(err);
    Prompt prompts[4];
    for (int i = 0; i < 4; i++)
        if (msg_decode_prompt(&prompts[i], alarms[i], strlen(alarms[i]), 65536, err, sizeof err))
            die(err);

    const int n = 40000;
    bool eligible[PACK_TEMPLATES_MAX];
    MsgBuf out = {0};
    double t_bind = 0, t_elig = 0, t_render = 0;
    for (int i = 0; i < n; i++) {
        const Prompt *pr = &prompts[i % 4];
        double t0 = now_us();
        if (pack_bind(p, pr, "normalised <num> text", 21, err, sizeof err)) die(err);
        double t1 = now_us();
        pack_eligible(p, eligible);
        double t2 = now_us();
        if (pack_render(p, (size_t)i % pack_template_count(p), 0, &out, err, sizeof err)) die(err);
        double t3 = now_us();
        pack_unbind(p);
        t_bind += t1 - t0, t_elig += t2 - t1, t_render += t3 - t2;
    }
    printf("  %-8s bind %.2f µs + eligible (%zu templates) %.2f µs + render %.2f µs = %.2f µs "
           "per message\n",
           pack_name(p), t_bind / n, pack_template_count(p), t_elig / n, t_render / n,
           (t_bind + t_elig + t_render) / n);
    for (int i = 0; i < 4; i++) msg_prompt_free(&prompts[i]);
    msg_buf_free(&out);
    pack_free(p);
}

static void bench_reward(const char *dir) {
    char err[1024];
    Pack *p = pack_load(dir, "lua", &limits, err, sizeof err);
    if (!p) die(err);
    json_t *event = json_pack("{s:s,s:b,s:b,s:i,s:i}", "id", "a1", "resolved", 1, "escalated", 0,
                              "time_to_resolve_s", 1200, "rating", 4);
    json_t *decision = json_pack("{s:s,s:s,s:f,s:s}", "id", "a1", "template", "triage", "p", 0.25,
                                 "script_version", "0123456789abcdef");
    const int n = 40000;
    double r, sum = 0, t0 = now_us();
    for (int i = 0; i < n; i++) {
        if (pack_reward(p, event, decision, &r, err, sizeof err) < 0) die(err);
        sum += r;
    }
    double t = now_us() - t0;
    printf("  %-8s reward %.2f µs per event (mean reward %.3f)\n", pack_name(p), t / n, sum / n);
    json_decref(event);
    json_decref(decision);
    pack_free(p);
}

/* --- reload latency --- */

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    if (!in || !out) die("cannot copy the pack");
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void bench_reload(void) {
    char dir[] = "/tmp/promptd-bench-XXXXXX", init[256], tmp[256], err[1024];
    if (!mkdtemp(dir)) die("mkdtemp");
    snprintf(init, sizeof init, "%s/init.lua", dir);
    snprintf(tmp, sizeof tmp, "%s/.init.lua.new", dir);
    char rules[256];
    snprintf(rules, sizeof rules, "%s/rules.lua", dir);
    copy_file("policies/alarm/init.lua", init);
    copy_file("policies/alarm/rules.lua", rules);

    PackWatch *w;
    PackWatchConfig wc = {dir, "lua", limits, true, ""};
    if (packwatch_start(&w, &wc, err, sizeof err)) die(err);
    packwatch_request(w);
    packwatch_wait(w, 5000, err, sizeof err);
    pack_free(packwatch_take(w));

    enum { TRIALS = 25 };
    double lat[TRIALS];
    for (int t = 0; t < TRIALS; t++) {
        copy_file("policies/alarm/init.lua", tmp);
        FILE *f = fopen(tmp, "a");
        fprintf(f, "\n-- edit %d\n", t);
        fclose(f);
        double t0 = now_us();
        rename(tmp, init); /* the editor's save */
        Pack *p = NULL;
        while (!(p = packwatch_take(w)) && now_us() - t0 < 5e6) usleep(200);
        lat[t] = (now_us() - t0) / 1000;
        pack_free(p);
        usleep(50000);
    }
    packwatch_stop(w);
    qsort(lat, TRIALS, sizeof *lat, compare);
    printf("  reload: file write to checked pack ready, median %.1f ms, max %.1f ms over %d "
           "saves (target <= 50 ms; includes the %d ms quiet period editors' bursts need)\n",
           lat[TRIALS / 2], lat[TRIALS - 1], TRIALS, 20);
    unlink(init);
    unlink(rules);
    rmdir(dir);
}

/* The floor: a pack whose render returns a constant costs the sandboxed call itself. */
static void bench_floor(void) {
    char dir[] = "/tmp/promptd-bench-XXXXXX", init[256];
    if (!mkdtemp(dir)) die("mkdtemp");
    snprintf(init, sizeof init, "%s/init.lua", dir);
    FILE *f = fopen(init, "w");
    fputs("return { templates = { { name = 'c', about = 'constant', render = function() "
          "return 'constant' end } }, reward = function() return 0 end }\n",
          f);
    fclose(f);
    bench_render(dir);
    unlink(init);
    rmdir(dir);
}

int main(void) {
    pd_log_set_level(PD_LOG_WARNING);
    printf("policy-pack benchmark (Lua %s, one thread)\n", LUA_RELEASE);
    bench_floor();
    bench_render("policies/alarm");
    bench_render("policies/support");
    bench_reward("policies/alarm");
    bench_reward("policies/support");
    bench_reload();
    return 0;
}
