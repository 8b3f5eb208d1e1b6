/*
 * promptctl status and top: what a running promptd says about itself on its admin
 * endpoint (GET /metrics and GET /healthz), as one screen (status) or a live view (top).
 *
 * Both read only what the page says: a metric promptd does not expose (an older version,
 * Redis not configured, nothing happened yet) shows as "-", never as a zero. Rates come
 * from two scrapes, never from a single counter value divided by the uptime, because a
 * daemon that was busy an hour ago and idle now should read idle.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_common.h"
#include "metrics.h"
#include "pd.h"
#include "promtext.h"

#define BODY_MAX   (8u << 20) /* the largest page read; promptd's is a few kB */
#define REQUEST_MS 5000
#define PARTS_MAX  64
#define HISTORY    32 /* intervals the sparklines cover */

/* One look at the endpoint. */
typedef struct {
    PromPage *pg;     /* NULL when /metrics could not be read */
    uint64_t mono_ms; /* when it was taken */
    int health_code;  /* HTTP status of /healthz; 0 when it could not be asked */
    char health[512]; /* its first line */
    char err[512];    /* why pg is NULL */
} Scrape;

/* --- taking a scrape --- */

/* Reads /metrics (and /healthz with health) from target. Returns 0, or the error of the
 * first request that could not be made (PD_EINVAL: a bad target, PD_EIO, PD_ETIMEOUT). */
static int scrape(const char *target, bool health, char *body, Scrape *s) {
    int status = 0, rc;
    memset(s, 0, sizeof *s);
    s->mono_ms = pd_mono_ms();
    if (health) {
        rc = metrics_client_request(target, "GET", "/healthz", REQUEST_MS, &s->health_code,
                                    s->health, sizeof s->health, s->err, sizeof s->err);
        if (rc) return s->health_code = 0, rc;
        s->health[strcspn(s->health, "\r\n")] = '\0';
    }
    rc = metrics_client_request(target, "GET", "/metrics", REQUEST_MS, &status, body, BODY_MAX,
                                s->err, sizeof s->err);
    if (rc) return rc;
    if (status != 200) {
        body[strcspn(body, "\r\n")] = '\0';
        snprintf(s->err, sizeof s->err, "/metrics answered HTTP %d: %.200s", status, body);
        return 0;
    }
    s->pg = promtext_parse(body, strlen(body));
    if (!s->pg) snprintf(s->err, sizeof s->err, "out of memory reading /metrics");
    return 0;
}

static void scrape_free(Scrape *s) {
    promtext_free(s->pg);
    s->pg = NULL;
}

/* --- figures from a page --- */

/* The sum of every series called name (with label = value unless label is NULL), or NAN
 * when there is none. */
static double val(const Scrape *s, const char *name, const char *label, const char *value) {
    PromLabel match = {label, value};
    double v;
    if (!s || !s->pg || !promtext_sum(s->pg, name, &match, label ? 1 : 0, &v)) return NAN;
    return v;
}

/* Per second between two scrapes, or NAN (no earlier scrape, a counter that went back:
 * a restart between the scrapes). */
static double rate(const Scrape *cur, const Scrape *prev, const char *name, const char *label,
                   const char *value) {
    double now = val(cur, name, label, value), then = val(prev, name, label, value);
    double dt = prev ? (double)(cur->mono_ms - prev->mono_ms) / 1000 : 0;
    return dt > 0 && now >= then ? (now - then) / dt : NAN;
}

/* One label value of a family and its total, now and its change since the last scrape. */
typedef struct {
    const char *key;
    double v, dv;
} Part;

static int by_value(const void *a, const void *b) {
    double x = ((const Part *)a)->v, y = ((const Part *)b)->v;
    int c = (x < y) - (x > y);
    return c ? c : strcmp(((const Part *)a)->key, ((const Part *)b)->key);
}

static int by_change(const void *a, const void *b) {
    double x = ((const Part *)a)->dv, y = ((const Part *)b)->dv;
    int c = (x < y) - (x > y);
    return c ? c : by_value(a, b);
}

/* The series of name grouped by label, largest first. Returns how many (at most max). */
static size_t parts(const Scrape *cur, const Scrape *prev, const char *name, const char *label,
                    Part *out, size_t max, bool by_delta) {
    size_t n = 0;
    for (size_t i = 0; cur->pg && i < promtext_count(cur->pg); i++) {
        const PromSample *s = promtext_sample(cur->pg, i);
        const char *key = promtext_label(s, label);
        if (!key || strcmp(s->name, name)) continue;
        size_t k = 0;
        while (k < n && strcmp(out[k].key, key)) k++;
        if (k == n && n == max) continue;
        if (k == n) out[n++] = (Part){key, 0, 0};
        out[k].v += s->value;
    }
    for (size_t k = 0; k < n; k++) {
        double then = val(prev, name, label, out[k].key);
        out[k].dv = prev && prev->pg ? out[k].v - (isnan(then) ? 0 : then) : NAN;
    }
    qsort(out, n, sizeof *out, by_delta ? by_change : by_value);
    return n;
}

/* --- formatting --- */

/* Short-lived text for printf arguments: a ring of buffers, enough for one line. */
static char *fmt_buf(void) {
    static char ring[24][64];
    static size_t next;
    return ring[next++ % PD_ARRAY_LEN(ring)];
}

/* A count: exact when whole, "-" when unknown. */
static const char *cnt(double v) {
    char *b = fmt_buf();
    if (isnan(v)) return "-";
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(b, 64, "%.0f", v);
    else
        snprintf(b, 64, "%.4g", v);
    return b;
}

/* A measurement with fmt, "-" when unknown. */
static const char *num(double v, const char *fmt) {
    char *b = fmt_buf();
    if (isnan(v)) return "-";
    snprintf(b, 64, fmt, v);
    return b;
}

static const char *pct(double part, double whole) {
    return whole > 0 && !isnan(part) ? num(100 * part / whole, "%.1f%%") : "-";
}

/* Seconds as milliseconds with the digits that mean something. */
static const char *millis(double seconds) {
    double ms = seconds * 1000;
    return num(ms, ms < 10 ? "%.2f ms" : ms < 100 ? "%.1f ms" : "%.0f ms");
}

static const char *duration(double seconds) {
    char *b = fmt_buf();
    if (isnan(seconds) || seconds < 0) return "-";
    long long s = (long long)seconds;
    if (s >= 86400)
        snprintf(b, 64, "%lldd %02lldh %02lldm", s / 86400, s % 86400 / 3600, s % 3600 / 60);
    else if (s >= 3600)
        snprintf(b, 64, "%lldh %02lldm %02llds", s / 3600, s % 3600 / 60, s % 60);
    else if (s >= 60)
        snprintf(b, 64, "%lldm %02llds", s / 60, s % 60);
    else
        snprintf(b, 64, "%llds", s);
    return b;
}

static const char *clock_time(double epoch) {
    char *b = fmt_buf();
    time_t t = (time_t)epoch;
    struct tm tm;
    if (isnan(epoch) || epoch <= 0 || !localtime_r(&t, &tm)) return "-";
    strftime(b, 64, "%Y-%m-%d %H:%M:%S", &tm);
    return b;
}

static double now_epoch(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* "reason 3, other 1" for the parts with a value (or a change, with delta). */
static void print_parts(const Part *p, size_t n, bool delta) {
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        double v = delta ? p[i].dv : p[i].v;
        if (!(v > 0)) continue;
        printf("%s%s %s", any ? ", " : " (", p[i].key, cnt(v));
        any = true;
    }
    if (any) printf(")");
}

/* --- the status screen --- */

static void print_health_line(const Scrape *s, const char *target) {
    const char *version = NULL;
    for (size_t i = 0; s->pg && i < promtext_count(s->pg) && !version; i++)
        if (!strcmp(promtext_sample(s->pg, i)->name, "promptd_build_info"))
            version = promtext_label(promtext_sample(s->pg, i), "version");
    printf("promptd %s at %s\n", version ? version : "-", target);
    if (s->health_code == 200 || s->health_code == 503)
        printf("  health        %s\n", s->health[0] ? s->health : "-");
    else
        printf("  health        unknown (/healthz answered HTTP %d)\n", s->health_code);
}

static void print_traffic(const Scrape *cur, const Scrape *prev) {
    Part reasons[PARTS_MAX];
    size_t n = parts(cur, prev, "promptd_dead_letters_total", "reason", reasons, PARTS_MAX, 0);
    printf("  prompts       in %s, decided %s, dead letters %s",
           cnt(val(cur, "promptd_prompts_total", NULL, NULL)),
           cnt(val(cur, "promptd_decisions_total", NULL, NULL)),
           cnt(val(cur, "promptd_dead_letters_total", NULL, NULL)));
    print_parts(reasons, n, false);
    printf("\n");
    if (prev)
        printf("  throughput    %s prompts/s, %s decisions/s, %s dead letters/s (over %.1f s)\n",
               num(rate(cur, prev, "promptd_prompts_total", NULL, NULL), "%.1f"),
               num(rate(cur, prev, "promptd_decisions_total", NULL, NULL), "%.1f"),
               num(rate(cur, prev, "promptd_dead_letters_total", NULL, NULL), "%.1f"),
               (double)(cur->mono_ms - prev->mono_ms) / 1000);
    double p50 = NAN, p99 = NAN;
    if (cur->pg) {
        promtext_quantile(cur->pg, "promptd_end_to_end_duration_seconds", NULL, 0, 0.5, &p50);
        promtext_quantile(cur->pg, "promptd_end_to_end_duration_seconds", NULL, 0, 0.99, &p99);
    }
    printf("  latency       end to end p50 %s, p99 %s\n", millis(p50), millis(p99));
    printf("  kafka lag     %s\n", cnt(val(cur, "promptd_kafka_consumer_lag", NULL, NULL)));
}

static void print_learning(const Scrape *cur) {
    const char *ev = "promptd_reward_events_total";
    printf("  policy        version %s, updates %s, KL %s, entropy %s\n",
           cnt(val(cur, "promptd_policy_version", NULL, NULL)),
           cnt(val(cur, "promptd_policy_updates_total", NULL, NULL)),
           num(val(cur, "promptd_policy_kl", NULL, NULL), "%.4g"),
           num(val(cur, "promptd_policy_entropy", NULL, NULL), "%.4g"));
    printf("  reward        mean %s; events joined %s, late %s, unknown %s, nil %s, errors %s\n",
           num(val(cur, "promptd_reward_mean", NULL, NULL), "%.4f"),
           cnt(val(cur, ev, "outcome", "joined")), cnt(val(cur, ev, "outcome", "late")),
           cnt(val(cur, ev, "outcome", "unknown")), cnt(val(cur, ev, "outcome", "no_reward")),
           cnt(val(cur, ev, "outcome", "error")));
    printf("  journal       %s open, %s expired\n",
           cnt(val(cur, "promptd_journal_entries", NULL, NULL)),
           cnt(val(cur, "promptd_journal_expired_total", NULL, NULL)));

    /* learner.mode distributed only: these metrics exist nowhere else. */
    double learner = val(cur, "promptd_cluster_learner", NULL, NULL);
    if (isnan(learner)) return;
    const char *ex = "promptd_cluster_experiences_total";
    printf("  cluster       %s; published policy version %s, this one %s behind; "
           "experiences sent %s, lost %s",
           learner > 0 ? "LEARNER" : "actor",
           cnt(val(cur, "promptd_policy_published_version", NULL, NULL)),
           cnt(val(cur, "promptd_policy_version_lag", NULL, NULL)),
           cnt(val(cur, ex, "outcome", "sent")), cnt(val(cur, ex, "outcome", "lost")));
    if (learner > 0)
        printf("; taken %s, experience lag %s", cnt(val(cur, ex, "outcome", "taken")),
               cnt(val(cur, "promptd_experience_lag", NULL, NULL)));
    printf("\n");
}

static void print_cache(const Scrape *cur) {
    Part levels[PARTS_MAX];
    size_t n = parts(cur, NULL, "promptd_cache_lookups_total", "level", levels, PARTS_MAX, 0);
    printf("  cache        ");
    if (n == 0) printf(" -");
    for (size_t i = 0; i < n; i++) {
        PromLabel hit[] = {{"level", levels[i].key}, {"result", "hit"}};
        double hits = 0;
        promtext_sum(cur->pg, "promptd_cache_lookups_total", hit, 2, &hits);
        printf("%s %s hits %s of %s", i ? "," : "", levels[i].key, pct(hits, levels[i].v),
               cnt(levels[i].v));
    }
    double up = val(cur, "promptd_redis_up", NULL, NULL);
    printf("\n  redis         %s\n", isnan(up) ? "-" : up > 0 ? "up" : "DOWN");
}

static void print_pack(const Scrape *cur) {
    const char *r = "promptd_pack_reloads_total";
    double ok = val(cur, r, "result", "ok"), refused = val(cur, r, "result", "refused");
    double last_ok = val(cur, "promptd_pack_last_reload_success", NULL, NULL);
    double when = val(cur, "promptd_pack_last_reload_timestamp_seconds", NULL, NULL);
    /* The success gauge means nothing before the first reload: go by the counts. */
    printf("  pack reload   %s", isnan(ok + refused) ? "-"
                                 : ok + refused == 0 ? "none yet"
                                 : isnan(last_ok)    ? "last -"
                                 : last_ok > 0       ? "last ok"
                                                     : "last REFUSED (the previous pack serves)");
    if (when > 0) printf("; loaded at %s (%s ago)", clock_time(when), duration(now_epoch() - when));
    printf("; ok %s, refused %s\n", cnt(ok), cnt(refused));
    Part kinds[PARTS_MAX];
    size_t n = parts(cur, NULL, "promptd_lua_errors_total", "kind", kinds, PARTS_MAX, 0);
    printf("  lua errors    %s", cnt(val(cur, "promptd_lua_errors_total", NULL, NULL)));
    print_parts(kinds, n, false);
    printf("\n");
}

static void print_templates(const Scrape *cur) {
    Part t[PARTS_MAX];
    const char *name = "promptd_template_selections_total";
    size_t n = parts(cur, NULL, name, "template", t, PARTS_MAX, 0);
    double all = val(cur, name, NULL, NULL);
    printf("  templates     %s selections%s\n", cnt(all), n ? ":" : "");
    for (size_t i = 0; i < n; i++)
        printf("    %-24s %7s  %s\n", t[i].key, pct(t[i].v, all), cnt(t[i].v));
}

static void print_status(const Scrape *cur, const Scrape *prev, const char *target) {
    print_health_line(cur, target);
    if (!cur->pg) {
        printf("  metrics       unavailable: %s\n", cur->err);
        return;
    }
    double start = val(cur, "process_start_time_seconds", NULL, NULL);
    printf("  uptime        %s (since %s)\n", duration(now_epoch() - start), clock_time(start));
    print_traffic(cur, prev);
    print_learning(cur);
    print_cache(cur);
    print_pack(cur);
    print_templates(cur);
    const char *first;
    size_t bad = promtext_bad_lines(cur->pg, &first);
    if (bad) printf("  note          %zu unreadable lines in /metrics (%s)\n", bad, first);
}

/* The exit status the health asks for: 0 ready or degraded, 1 failing or unknown. */
static int health_exit(const Scrape *s) {
    return s->health_code == 200 && strncmp(s->health, "failing", 7) ? 0 : 1;
}

/* Reports a request that could not be made; returns the exit status for it. */
static int unreachable(const char *cmd, int rc, const char *err) {
    fprintf(stderr, "promptctl %s: %s%s\n", cmd, err,
            rc == PD_EINVAL ? "" : " (is promptd running with its admin endpoint?)");
    return rc == PD_EINVAL ? PD_EXIT_USAGE : CTL_EXIT_UNAVAILABLE;
}

int ctl_status(int argc, char **argv) {
    static const struct option opts[] = {{"admin", required_argument, NULL, 'a'},
                                         {"interval", required_argument, NULL, 'i'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    const char *admin = NULL;
    int64_t interval = 1000;
    int c;
    while ((c = getopt_long(argc, argv, "a:i:h", opts, NULL)) != -1) {
        if (c == 'a') {
            admin = optarg;
        } else if (c == 'i' && !ctl_duration_ms(optarg, &interval)) {
            continue;
        } else {
            fprintf(c == 'h' ? stdout : stderr,
                    "Usage: promptctl status [--admin TARGET] [--interval DURATION]\n"
                    "One screen about a running promptd from its admin endpoint: health,\n"
                    "traffic, learning, cache, pack and template shares. Rates come from two\n"
                    "scrapes --interval apart (default 1s; 0: one scrape, no rates).\n"
                    "TARGET: a unix socket path, unix:PATH, HOST:PORT or http://HOST:PORT\n"
                    "(default $PROMPTD_ADMIN, else /run/promptd/admin.sock if it exists,\n"
                    "else 127.0.0.1:9464).\n"
                    "Exit status: 0 ready or degraded, 1 failing, 64 usage, 69 unreachable.\n");
            return c == 'h' ? 0 : PD_EXIT_USAGE;
        }
    }
    if (optind < argc) return fprintf(stderr, "promptctl status: no arguments wanted\n"), 64;

    const char *target = ctl_admin_target(admin);
    char *body = malloc(BODY_MAX);
    Scrape first = {0}, second = {0};
    if (!body) return fprintf(stderr, "promptctl status: out of memory\n"), PD_EXIT_SOFTWARE;
    const Scrape *failed = &first;
    int rc = scrape(target, interval == 0, body, &first);
    if (rc == 0 && interval > 0) {
        usleep((useconds_t)(interval * 1000));
        rc = scrape(target, true, body, &second);
        failed = &second;
    }
    if (rc) {
        rc = unreachable("status", rc, failed->err);
    } else {
        const Scrape *cur = interval > 0 ? &second : &first;
        print_status(cur, interval > 0 && first.pg ? &first : NULL, target);
        rc = health_exit(cur);
    }
    scrape_free(&first);
    scrape_free(&second);
    free(body);
    return rc;
}

/* --- top --- */

static volatile sig_atomic_t quit;

static void on_signal(int sig) {
    (void)sig;
    quit = 1;
}

typedef struct {
    double v[HISTORY];
    size_t n, next;
} History;

static void history_add(History *h, double v) {
    h->v[h->next] = v;
    h->next = (h->next + 1) % HISTORY;
    if (h->n < HISTORY) h->n++;
}

static bool utf8_locale(void) {
    const char *vars[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    for (size_t i = 0; i < PD_ARRAY_LEN(vars); i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return strcasestr(v, "utf-8") || strcasestr(v, "utf8");
    }
    return false;
}

/* The history as a line of eighth-blocks (or ASCII steps), low to high; "-" for gaps. */
static void sparkline(const History *h, bool utf8) {
    if (h->n < 2) return; /* one point is no trend */
    static const char *const blocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    static const char ascii[] = "_.-:=+*#";
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < h->n; i++) {
        double v = h->v[(h->next + HISTORY - h->n + i) % HISTORY];
        if (!isnan(v)) lo = fmin(lo, v), hi = fmax(hi, v);
    }
    for (size_t i = 0; i < h->n; i++) {
        double v = h->v[(h->next + HISTORY - h->n + i) % HISTORY];
        int k = isnan(v) ? -1 : hi > lo ? (int)((v - lo) / (hi - lo) * 7.999) : 3;
        if (k < 0)
            fputs(" ", stdout);
        else if (utf8)
            fputs(blocks[k], stdout);
        else
            putchar(ascii[k]);
    }
}

static int terminal_columns(void) {
    struct winsize ws;
    return ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40 ? ws.ws_col : 80;
}

typedef struct {
    const char *target;
    int64_t interval_ms;
    bool once, utf8;
    History throughput, reward;
} Top;

static void print_bar(double share, int width, bool utf8) {
    int cells = (int)(share * width + 0.5);
    for (int i = 0; i < cells; i++) fputs(utf8 ? "█" : "#", stdout);
}

static void top_templates(const Top *t, const Scrape *cur, const Scrape *prev) {
    Part p[PARTS_MAX];
    const char *name = "promptd_template_selections_total";
    size_t n = parts(cur, prev, name, "template", p, PARTS_MAX, prev != NULL);
    double all = 0;
    for (size_t i = 0; i < n; i++) all += prev ? p[i].dv : p[i].v;
    const char *when = "in the last interval";
    if (prev && !(all > 0)) { /* an idle interval: the shares since start say more */
        when = "since start (none in the last interval)";
        prev = NULL;
        n = parts(cur, NULL, name, "template", p, PARTS_MAX, false);
        for (size_t i = 0; i < n; i++) all += p[i].v;
    } else if (!prev) {
        when = "since start";
    }
    printf("templates     %s selections %s\n", cnt(n ? all : NAN), when);
    int width = terminal_columns() - 40;
    for (size_t i = 0; i < n; i++) {
        double v = prev ? p[i].dv : p[i].v;
        printf("  %-24s %7s ", p[i].key, pct(v, all));
        print_bar(all > 0 ? v / all : 0, width, t->utf8);
        printf("\n");
    }
}

static void top_frame(Top *t, const Scrape *cur, const Scrape *prev) {
    printf("promptd top: %s, %s, every %.1f s%s\n", t->target,
           cur->health_code ? cur->health : "health unknown", (double)t->interval_ms / 1000,
           t->once ? "" : " (q quits)");
    if (!cur->pg) {
        printf("\nunavailable: %s\n", cur->err);
        return;
    }
    double tp = rate(cur, prev, "promptd_decisions_total", NULL, NULL);
    printf("throughput    %s prompts/s, %s decisions/s  ",
           num(rate(cur, prev, "promptd_prompts_total", NULL, NULL), "%.1f"), num(tp, "%.1f"));
    sparkline(&t->throughput, t->utf8);
    printf("\nreward        mean %s  ", num(val(cur, "promptd_reward_mean", NULL, NULL), "%.4f"));
    sparkline(&t->reward, t->utf8);
    double version = val(cur, "promptd_policy_version", NULL, NULL);
    double then = val(prev, "promptd_policy_version", NULL, NULL);
    printf("\npolicy        version %s", cnt(version));
    if (!isnan(version - then)) printf(" (%+.0f)", version - then);
    printf(", KL %s, entropy %s\n", num(val(cur, "promptd_policy_kl", NULL, NULL), "%.4g"),
           num(val(cur, "promptd_policy_entropy", NULL, NULL), "%.4g"));

    Part reasons[PARTS_MAX];
    size_t n = parts(cur, prev, "promptd_dead_letters_total", "reason", reasons, PARTS_MAX, 1);
    double dead = val(cur, "promptd_dead_letters_total", NULL, NULL);
    double dead_then = val(prev, "promptd_dead_letters_total", NULL, NULL);
    printf("dead letters  %s, %s in the last interval", cnt(dead),
           cnt(prev && dead >= dead_then ? dead - dead_then : NAN));
    print_parts(reasons, n, true);
    printf("\nkafka lag     %s\n", cnt(val(cur, "promptd_kafka_consumer_lag", NULL, NULL)));
    top_templates(t, cur, prev);
}

/* Waits until deadline (monotonic ms) for a key; true when it asks to quit. */
static bool wait_key(uint64_t deadline, bool tty) {
    while (!quit) {
        uint64_t now = pd_mono_ms();
        if (now >= deadline) return false;
        struct pollfd p = {STDIN_FILENO, POLLIN, 0};
        int rc = poll(&p, tty ? 1 : 0, (int)(deadline - now));
        if (rc > 0) {
            char key;
            ssize_t got = read(STDIN_FILENO, &key, 1);
            if (got == 1 && (key == 'q' || key == 'Q' || key == 3)) return true;
            if (got <= 0) tty = false; /* stdin closed: only signals quit now */
        }
    }
    return true;
}

static int top_run(Top *t, char *body) {
    struct termios saved, raw;
    bool tty = !t->once && isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty) {
        raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0, raw.c_cc[VTIME] = 0;
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    if (!t->once) printf("\033[?25l");

    Scrape prev = {0}, cur = {0};
    int rc = 0;
    for (uint64_t next = pd_mono_ms(); !quit;) {
        rc = scrape(t->target, true, body, &cur);
        if (rc && t->once) break;
        if (cur.pg && prev.pg) {
            history_add(&t->throughput, rate(&cur, &prev, "promptd_decisions_total", NULL, NULL));
            history_add(&t->reward, val(&cur, "promptd_reward_mean", NULL, NULL));
        }
        /* --once shows the second scrape, so that its rates cover one interval; an
         * unreadable page (shown in the frame; top keeps trying) needs no second. */
        if (!t->once || prev.pg || !cur.pg) {
            if (!t->once) printf("\033[H\033[2J");
            top_frame(t, &cur, prev.pg ? &prev : NULL);
            fflush(stdout);
            if (t->once) break;
        }
        scrape_free(&prev);
        prev = cur;
        cur = (Scrape){0};
        next += (uint64_t)t->interval_ms;
        if (wait_key(next, tty)) break;
    }
    if (!t->once) printf("\033[?25h\n");
    if (tty) tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    rc = rc && t->once ? unreachable("top", rc, cur.err) : 0;
    scrape_free(&prev);
    scrape_free(&cur);
    return rc;
}

int ctl_top(int argc, char **argv) {
    static const struct option opts[] = {{"admin", required_argument, NULL, 'a'},
                                         {"interval", required_argument, NULL, 'i'},
                                         {"once", no_argument, NULL, '1'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    Top t = {.interval_ms = 1000, .utf8 = utf8_locale()};
    const char *admin = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "a:i:1h", opts, NULL)) != -1) {
        if (c == 'a') {
            admin = optarg;
        } else if (c == '1') {
            t.once = true;
        } else if (c == 'i' && !ctl_duration_ms(optarg, &t.interval_ms) && t.interval_ms >= 100) {
            continue;
        } else {
            fprintf(c == 'h' ? stdout : stderr,
                    "Usage: promptctl top [--admin TARGET] [--interval DURATION] [--once]\n"
                    "A live view of a running promptd: throughput and mean reward with their\n"
                    "trend, policy version, dead letters, lag and the template shares of the\n"
                    "last interval. q or Ctrl-C quits. --once prints one frame (two scrapes an\n"
                    "interval apart) without escape codes. TARGET as for status.\n"
                    "Exit status: 0, 64 usage, 69 unreachable (--once).\n");
            return c == 'h' ? 0 : PD_EXIT_USAGE;
        }
    }
    if (optind < argc) return fprintf(stderr, "promptctl top: no arguments wanted\n"), 64;
    t.target = ctl_admin_target(admin);
    char *body = malloc(BODY_MAX);
    if (!body) return fprintf(stderr, "promptctl top: out of memory\n"), PD_EXIT_SOFTWARE;

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc = top_run(&t, body);
    free(body);
    return rc;
}
