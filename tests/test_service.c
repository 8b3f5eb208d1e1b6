/*
 * promptd as systemd runs it, without systemd: the notify protocol against a datagram
 * socket the test listens on (READY, STATUS, WATCHDOG, RELOADING, STOPPING), and the
 * admin endpoint on a unix socket: /healthz, /metrics after a stream, and `promptctl
 * reload` for a good and for a broken pack (what ExecReload runs).
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../daemon/metrics.h"
#include "harness.h"

typedef struct {
    const char *dir;
    char sock[300], admin[300], boot[300], log[300], pack[300];
    int notify_fd;
    char seen[16384]; /* every notification so far, one per line */
    size_t seen_len;
    Proc promptd;
} Service;

static void notify_listen(Service *s) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(s->sock, sizeof s->sock, "%s/notify", s->dir);
    cr_assert_lt(strlen(s->sock), sizeof a.sun_path, "scratch path too long for a socket");
    memcpy(a.sun_path, s->sock, strlen(s->sock) + 1);
    s->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(s->notify_fd, 0);
    cr_assert_eq(bind(s->notify_fd, (struct sockaddr *)&a, sizeof a), 0);
}

/* Collects notifications until one contains want, for at most ms; true if it came. */
static bool await_notification(Service *s, const char *want, int ms) {
    long long end = harness_now_ms() + ms;
    for (;;) {
        if (strstr(s->seen, want)) return true;
        long long left = end - harness_now_ms();
        if (left <= 0) return false;
        struct pollfd p = {s->notify_fd, POLLIN, 0};
        if (poll(&p, 1, (int)left) <= 0) continue;
        char buf[4096];
        ssize_t n = recv(s->notify_fd, buf, sizeof buf - 1, 0);
        if (n <= 0) continue;
        buf[n] = 0;
        s->seen_len +=
            (size_t)snprintf(s->seen + s->seen_len, sizeof s->seen - s->seen_len, "%s\n", buf);
        if (s->seen_len >= sizeof s->seen - 1) s->seen_len = 0; /* keep the newest */
    }
}

static int count_of(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void copy_pack(Service *s) {
    char cmd[800];
    snprintf(s->pack, sizeof s->pack, "%s/pack", s->dir);
    snprintf(cmd, sizeof cmd, "cp -r policies/alarm '%s'", s->pack);
    cr_assert_eq(system(cmd), 0);
}

static void start(Service *s) {
    char sets[6][400];
    snprintf(sets[0], sizeof sets[0], "kafka.embedded.bootstrap_file=%s", s->boot);
    snprintf(sets[1], sizeof sets[1], "learner.checkpoint_dir=%s/state", s->dir);
    snprintf(sets[2], sizeof sets[2], "admin.socket=%s", s->admin);
    snprintf(sets[3], sizeof sets[3], "policy.pack=%s", s->pack);
    snprintf(sets[4], sizeof sets[4], "metrics.listen=127.0.0.1:0");
    snprintf(sets[5], sizeof sets[5], "policy.watch=no"); /* reloads come from the test */
    char *argv[16];
    int n = 0;
    argv[n++] = (char *)harness_promptd();
    for (int i = 0; i < 6; i++) argv[n++] = "--set", argv[n++] = sets[i];
    argv[n] = NULL;
    setenv("NOTIFY_SOCKET", s->sock, 1);
    setenv("WATCHDOG_USEC", "1000000", 1);
    cr_assert_eq(proc_start(&s->promptd, argv, NULL, NULL, s->log), 0);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
}

static int get(Service *s, const char *method, const char *path, char *body, size_t len) {
    char err[256];
    int status = 0;
    int rc =
        metrics_client_request(s->admin, method, path, 30000, &status, body, len, err, sizeof err);
    cr_assert_eq(rc, 0, "%s %s: %s", method, path, err);
    return status;
}

static int promptctl(const Service *s, const char *const *args, char *out, size_t len) {
    char path[400], *argv[16];
    int n = 0;
    argv[n++] = getenv("PROMPTCTL") ? getenv("PROMPTCTL") : "build/promptctl";
    for (; *args; args++) argv[n++] = (char *)*args;
    argv[n] = NULL;
    snprintf(path, sizeof path, "%s/promptctl.out", s->dir);
    Proc p;
    unlink(path);
    cr_assert_eq(proc_start(&p, argv, NULL, path, path), 0);
    int rc = proc_wait(&p, 60000);
    char *text = harness_read_file(path, NULL);
    snprintf(out, len, "%s", text ? text : "");
    free(text);
    return rc;
}

static double sample(const char *page, const char *line_start) {
    const char *p = strstr(page, line_start);
    return p ? strtod(p + strlen(line_start), NULL) : -1;
}

Test(service, notifies_systemd_serves_metrics_and_reloads_with_an_answer) {
    Service s = {.dir = harness_tmpdir()};
    char body[1 << 16], out[8192];
    cr_assert_not_null(s.dir);
    snprintf(s.admin, sizeof s.admin, "%s/admin.sock", s.dir);
    snprintf(s.boot, sizeof s.boot, "%s/bootstrap", s.dir);
    snprintf(s.log, sizeof s.log, "%s/promptd.log", s.dir);
    notify_listen(&s);
    copy_pack(&s);
    start(&s);

    /* READY=1 once serving, a STATUS= line, and the watchdog pinged every half interval. */
    cr_assert(await_notification(&s, "READY=1", 30000), "no READY=1; saw:\n%s", s.seen);
    cr_expect(await_notification(&s, "STATUS=serving", 2000), "no STATUS= line: %s", s.seen);
    cr_expect(await_notification(&s, "WATCHDOG=1", 3000), "no WATCHDOG=1 within 3 s");
    s.seen[0] = 0, s.seen_len = 0;
    await_notification(&s, "never", 2500);
    cr_expect_geq(count_of(s.seen, "WATCHDOG=1"), 3, "the watchdog is pinged too rarely: %s",
                  s.seen);

    cr_expect_eq(get(&s, "GET", "/healthz", body, sizeof body), 200);
    cr_expect(!strncmp(body, "ready", 5), "health: %s", body);

    /* A stream through it shows on the metrics page. */
    const char *sim[] = {"simulate", "--bootstrap-file", s.boot, "--prompts",
                         "300",      "--every",          "0",    NULL};
    cr_assert_eq(promptctl(&s, sim, out, sizeof out), 0, "simulate failed: %s", out);
    cr_expect_eq(get(&s, "GET", "/metrics", body, sizeof body), 200);
    cr_expect_eq(sample(body, "\npromptd_prompts_total "), 300, "page:\n%.2000s", body);
    cr_expect_eq(sample(body, "\npromptd_decisions_total "), 300);
    cr_expect(strstr(body, "promptd_template_selections_total{template=\"triage\"}"));
    cr_expect(strstr(body, "promptd_stage_duration_seconds_count{stage=\"render\"} 300"),
              "render latency not observed per prompt");

    /* A good reload answers 0, framed by RELOADING=1 and READY=1. */
    FILE *f = fopen(strcat(strcpy(out, s.pack), "/init.lua"), "a");
    fputs("\n-- an operator's edit\n", f);
    fclose(f);
    s.seen[0] = 0, s.seen_len = 0;
    const char *reload[] = {"reload", "--admin", s.admin, NULL};
    cr_expect_eq(promptctl(&s, reload, out, sizeof out), 0, "reload: %s", out);
    cr_expect(strstr(out, "loaded: pack alarm"), "reload said: %s", out);
    cr_expect(await_notification(&s, "READY=1", 5000));
    cr_expect(strstr(s.seen, "RELOADING=1"), "no RELOADING=1 before READY=1: %s", s.seen);

    /* A broken pack is refused: exit 1 with the file and line, and the old pack serves. */
    f = fopen(strcat(strcpy(out, s.pack), "/init.lua"), "a");
    fputs("\nlocal broken = (\n", f);
    fclose(f);
    cr_expect_eq(promptctl(&s, reload, out, sizeof out), 1, "a broken pack was not refused: %s",
                 out);
    cr_expect(strstr(out, "refused") && strstr(out, "init.lua:"), "refusal: %s", out);
    cr_expect_eq(get(&s, "GET", "/healthz", body, sizeof body), 200);
    cr_expect(strstr(body, "degraded") && strstr(body, "reload refused"), "health: %s", body);

    /* SIGTERM: STOPPING=1, then a clean exit. */
    proc_signal(&s.promptd, SIGTERM);
    cr_expect(await_notification(&s, "STOPPING=1", 10000), "no STOPPING=1");
    cr_expect_eq(proc_wait(&s.promptd, 30000), 0);
    close(s.notify_fd);
    harness_cleanup();
}
