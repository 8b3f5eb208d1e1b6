/*
 * The metrics endpoint, black-box over real HTTP on 127.0.0.1 (a free port) and on a unix
 * socket, with a small HTTP/1.1 client written here: text-format validity (HELP and TYPE
 * for every sample, cumulative histogram buckets ending in +Inf, _sum and _count), label
 * escaping, /healthz states and codes, the reload rendezvous (success, refusal, timeout,
 * shutdown), loopback-only binding, scrapes during updates, and the librdkafka
 * statistics parser.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "../daemon/metrics.h"
#include "../daemon/pd.h"
#include "harness.h"

static void teardown(void) {
    harness_cleanup();
}

TestSuite(metrics, .fini = teardown);

/* --- a small HTTP client, independent of the one in metrics.c --- */

typedef struct {
    int status;
    char type[128];
    char *body;
} Answer;

static int connect_to(int port, const char *unix_path) {
    int fd;
    struct timeval tv = {10, 0};
    if (unix_path) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sun, sizeof sun)) return close(fd), -1;
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sin, sizeof sin)) return close(fd), -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends request as is and reads the answer until the server closes. */
static Answer http(int port, const char *unix_path, const char *request) {
    Answer a = {0};
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    int fd = connect_to(port, unix_path);
    cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
    cr_assert_eq(write(fd, request, strlen(request)), (ssize_t)strlen(request));
    for (ssize_t n; (n = read(fd, buf + len, cap - len - 1)) > 0;) {
        len += (size_t)n;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    close(fd);
    buf[len] = '\0';

    char *body = strstr(buf, "\r\n\r\n"), *type = strcasestr(buf, "\r\nContent-Type: ");
    cr_assert(body && sscanf(buf, "HTTP/1.1 %d", &a.status) == 1, "not HTTP: '%s'", buf);
    if (type && type < body) sscanf(type + 16, "%127[^\r]", a.type);
    a.body = strdup(body + 4);
    free(buf);
    return a;
}

static Answer request(int port, const char *unix_path, const char *method, const char *path,
                      const char *headers) {
    char text[1024];
    snprintf(text, sizeof text, "%s %s HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n",
             method, path, headers ? headers : "");
    return http(port, unix_path, text);
}

static Answer get(int port, const char *path) {
    return request(port, NULL, "GET", path, NULL);
}

static Answer post(int port, const char *unix_path, const char *path) {
    return request(port, unix_path, "POST", path, "Content-Length: 0\r\n");
}

/* --- a checker of the text format, as strict as the writer means to be --- */

typedef struct {
    char name[128], type[16];
} Family;

typedef struct {
    Family fam[256];
    int n;
    char series[1200]; /* histogram series in progress: base name + labels without le */
    double last_le, last_bucket, inf_bucket;
    bool closed;
} Checker;

static Family *family_of(Checker *c, const char *name) {
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->fam[i].name, name)) return &c->fam[i];
    return NULL;
}

static bool strip_suffix(char *name, const char *suffix) {
    size_t n = strlen(name), k = strlen(suffix);
    if (n <= k || strcmp(name + n - k, suffix)) return false;
    name[n - k] = '\0';
    return true;
}

static double parse_value(const char *text) {
    char *end;
    if (!strcmp(text, "NaN")) return NAN;
    if (!strcmp(text, "+Inf")) return INFINITY;
    if (!strcmp(text, "-Inf")) return -INFINITY;
    double v = strtod(text, &end);
    cr_assert(*text && !*end, "bad value '%s'", text);
    return v;
}

/* Parses {a="x",le="0.5"} at p: the labels other than le go to rest, le to le. Returns the
 * character after '}'. */
static const char *parse_labels(const char *p, char *rest, size_t restlen, char *le) {
    size_t r = 0;
    le[0] = '\0';
    rest[0] = '\0';
    for (p++; *p != '}';) {
        char name[128], value[512];
        size_t n = 0, v = 0;
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
               (n && *p >= '0' && *p <= '9'))
            name[n++] = *p++;
        name[n] = '\0';
        cr_assert(n && p[0] == '=' && p[1] == '"', "bad label near '%s'", p);
        for (p += 2; *p != '"'; p++) {
            cr_assert(*p && *p != '\n', "unterminated label value");
            if (*p == '\\') {
                p++;
                cr_assert(*p == '\\' || *p == '"' || *p == 'n', "bad escape \\%c", *p);
            }
            value[v++] = *p;
        }
        value[v] = '\0';
        p++;
        if (!strcmp(name, "le"))
            snprintf(le, 64, "%.63s", value);
        else
            r += (size_t)snprintf(rest + r, restlen - r, "%s=%s,", name, value);
        cr_assert(*p == ',' || *p == '}', "bad label list near '%s'", p);
        if (*p == ',') p++;
    }
    return p + 1;
}

static void check_histogram_sample(Checker *c, const char *name, const char *base, const char *rest,
                                   const char *le, double v) {
    char series[1200];
    snprintf(series, sizeof series, "%s|%s", base, rest);
    if (strstr(name, "_bucket") == name + strlen(base)) {
        cr_assert(le[0], "%s without le", name);
        if (strcmp(series, c->series) || c->closed) {
            snprintf(c->series, sizeof c->series, "%s", series);
            c->last_le = -INFINITY, c->last_bucket = 0, c->closed = false;
        }
        double bound = parse_value(le);
        cr_assert_gt(bound, c->last_le, "%s: le %s not increasing", name, le);
        cr_assert_geq(v, c->last_bucket, "%s{le=%s}: buckets not cumulative", name, le);
        c->last_le = bound, c->last_bucket = v;
        if (isinf(bound)) c->closed = true, c->inf_bucket = v;
        return;
    }
    cr_assert(!strcmp(series, c->series) && c->closed, "%s before its +Inf bucket", name);
    if (strstr(name, "_count") == name + strlen(base))
        cr_assert_eq(v, c->inf_bucket, "%s %g != +Inf bucket %g", name, v, c->inf_bucket);
}

static void check_sample(Checker *c, const char *line) {
    char name[128], rest[1024], le[64] = "", base[128];
    size_t n = strcspn(line, "{ ");
    cr_assert(n > 0 && n < sizeof name, "bad sample line '%s'", line);
    snprintf(name, sizeof name, "%.*s", (int)n, line);
    const char *p = line + n;
    if (*p == '{')
        p = parse_labels(p, rest, sizeof rest, le);
    else
        rest[0] = '\0';
    cr_assert(*p == ' ', "no value in '%s'", line);
    double v = parse_value(p + 1);

    Family *f = family_of(c, name);
    if (f && strcmp(f->type, "histogram")) {
        cr_assert(!le[0], "%s: le outside a histogram", name);
        if (!strcmp(f->type, "counter")) cr_assert(v >= 0, "counter %s is %g", name, v);
        return;
    }
    snprintf(base, sizeof base, "%s", name);
    cr_assert(strip_suffix(base, "_bucket") || strip_suffix(base, "_sum") ||
                  strip_suffix(base, "_count"),
              "sample %s has no HELP/TYPE", name);
    f = family_of(c, base);
    cr_assert(f && !strcmp(f->type, "histogram"), "sample %s has no histogram family", name);
    check_histogram_sample(c, name, base, rest, le, v);
}

static void check_comment(Checker *c, const char *line) {
    char name[128], word[16];
    if (!strncmp(line, "# HELP ", 7)) {
        cr_assert_eq(sscanf(line + 7, "%127s", name), 1);
        cr_assert_null(family_of(c, name), "%s described twice", name);
        cr_assert_lt(c->n, 256);
        snprintf(c->fam[c->n++].name, sizeof c->fam[0].name, "%s", name);
        cr_assert_gt(strlen(line), 8 + strlen(name), "%s: empty HELP", name);
        return;
    }
    cr_assert(!strncmp(line, "# TYPE ", 7), "unexpected comment '%s'", line);
    cr_assert_eq(sscanf(line + 7, "%127s %15s", name, word), 2);
    Family *f = family_of(c, name);
    cr_assert(f && !f->type[0], "TYPE of %s without its HELP, or twice", name);
    cr_assert(!strcmp(word, "counter") || !strcmp(word, "gauge") || !strcmp(word, "histogram"),
              "type %s", word);
    snprintf(f->type, sizeof f->type, "%s", word);
    if (!strcmp(word, "counter")) cr_assert(strstr(name, "_total"), "counter %s", name);
}

static void check_exposition(const char *page) {
    Checker *c = calloc(1, sizeof *c);
    char *copy = strdup(page), *save, *line;
    size_t len = strlen(page);
    cr_assert(len == 0 || page[len - 1] == '\n', "the page must end with a newline");
    for (line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            check_comment(c, line);
        else
            check_sample(c, line);
    }
    free(copy);
    free(c);
}

/* --- renders used by the tests --- */

static MetricsHistogram latency;

static void render_basic(void *ctx, MetricsWriter *w) {
    (void)ctx;
    metrics_counter(w, "promptd_prompts_total", "Prompts consumed.", 42);
    metrics_family(w, "promptd_dead_letters_total", METRICS_COUNTER, "Dead letters, by reason.");
    metrics_value1(w, "reason", "invalid_json", 3);
    metrics_value1(w, "reason", "too_large", 0);
    metrics_gauge(w, "promptd_policy_kl", "KL divergence of the last update.", 0.015);
    metrics_family(w, "promptd_stage_duration_seconds", METRICS_HISTOGRAM, "Stage latency.");
    metrics_histogram(w, &(MetricsLabel){"stage", "encode"}, 1, &latency);
}

static char *render_text(MetricsRenderFn fn, void *ctx) {
    char *text = NULL, err[512] = "";
    size_t len;
    int rc = metrics_render(fn, ctx, &text, &len, err, sizeof err);
    cr_assert_eq(rc, 0, "render: %s", err);
    cr_assert_eq(strlen(text), len);
    return text;
}

/* --- the writer --- */

Test(metrics, a_page_has_help_type_and_samples_in_text_format) {
    static const double bounds[] = {0.001, 0.01, 0.1};
    cr_assert_eq(metrics_histogram_init(&latency, bounds, 3), 0);
    metrics_observe(&latency, 0.0005);
    metrics_observe(&latency, 0.001); /* le is inclusive */
    metrics_observe(&latency, 0.05);
    metrics_observe(&latency, 7);
    char *text = render_text(render_basic, NULL);
    const char *want = "# HELP promptd_prompts_total Prompts consumed.\n"
                       "# TYPE promptd_prompts_total counter\n"
                       "promptd_prompts_total 42\n"
                       "# HELP promptd_dead_letters_total Dead letters, by reason.\n"
                       "# TYPE promptd_dead_letters_total counter\n"
                       "promptd_dead_letters_total{reason=\"invalid_json\"} 3\n"
                       "promptd_dead_letters_total{reason=\"too_large\"} 0\n"
                       "# HELP promptd_policy_kl KL divergence of the last update.\n"
                       "# TYPE promptd_policy_kl gauge\n"
                       "promptd_policy_kl 0.015\n"
                       "# HELP promptd_stage_duration_seconds Stage latency.\n"
                       "# TYPE promptd_stage_duration_seconds histogram\n"
                       "promptd_stage_duration_seconds_bucket{stage=\"encode\",le=\"0.001\"} 2\n"
                       "promptd_stage_duration_seconds_bucket{stage=\"encode\",le=\"0.01\"} 2\n"
                       "promptd_stage_duration_seconds_bucket{stage=\"encode\",le=\"0.1\"} 3\n"
                       "promptd_stage_duration_seconds_bucket{stage=\"encode\",le=\"+Inf\"} 4\n"
                       "promptd_stage_duration_seconds_sum{stage=\"encode\"} 7.0515\n"
                       "promptd_stage_duration_seconds_count{stage=\"encode\"} 4\n";
    cr_expect_str_eq(text, want);
    check_exposition(text);
    free(text);
}

static void render_escapes(void *ctx, MetricsWriter *w) {
    (void)ctx;
    metrics_family(w, "promptd_template_selections_total", METRICS_COUNTER,
                   "Help with a back\\slash\nand a second line, \"quoted\".");
    metrics_value1(w, "template", "say \"hi\"\\now\nplease", 1);
    metrics_value1(w, "template", "bad \xff\xfe utf8 \xe2\x82 and \xe2\x82\xac ok", 2);
    metrics_value1(w, "template", "", 3);
}

Test(metrics, label_values_and_help_are_escaped_and_kept_utf8) {
    char *text = render_text(render_escapes, NULL);
    cr_expect(strstr(text, "# HELP promptd_template_selections_total Help with a back\\\\slash"
                           "\\nand a second line, \"quoted\".\n"),
              "help: %s", text);
    cr_expect(strstr(text, "{template=\"say \\\"hi\\\"\\\\now\\nplease\"} 1\n"), "%s", text);
    cr_expect(strstr(text, "{template=\"bad \xef\xbf\xbd\xef\xbf\xbd utf8 \xef\xbf\xbd\xef\xbf\xbd"
                           " and \xe2\x82\xac ok\"} 2\n"),
              "%s", text);
    cr_expect(strstr(text, "{template=\"\"} 3\n"), "%s", text);
    check_exposition(text);
    free(text);
}

static void render_numbers(void *ctx, MetricsWriter *w) {
    (void)ctx;
    static const double v[] = {0.1, 1e-6,     1e20,      -2.5,   123456789012,
                               NAN, INFINITY, -INFINITY, 1.0 / 3};
    char name[64];
    for (size_t i = 0; i < PD_ARRAY_LEN(v); i++) {
        snprintf(name, sizeof name, "g%zu", i);
        metrics_gauge(w, name, "a number", v[i]);
    }
}

Test(metrics, numbers_are_written_as_prometheus_reads_them) {
    char *text = render_text(render_numbers, NULL);
    const char *want[] = {"g0 0.1\n",  "g1 1e-06\n",        "g2 1e+20\n",
                          "g3 -2.5\n", "g4 123456789012\n", "g5 NaN\n",
                          "g6 +Inf\n", "g7 -Inf\n",         "g8 0.3333333333333333\n"};
    for (size_t i = 0; i < PD_ARRAY_LEN(want); i++)
        cr_expect(strstr(text, want[i]), "missing '%s' in:\n%s", want[i], text);
    cr_expect_eq(strtod(strstr(text, "\ng8 ") + 4, NULL), 1.0 / 3, "1/3 must read back exactly");
    check_exposition(text);
    free(text);
}

/* Each misuse names itself; the scrape fails rather than serve a page Prometheus rejects. */
static void misuse_counter_suffix(void *c, MetricsWriter *w) {
    (void)c;
    metrics_counter(w, "promptd_prompts", "x", 1);
}
static void misuse_duplicate(void *c, MetricsWriter *w) {
    (void)c;
    metrics_gauge(w, "g", "x", 1);
    metrics_gauge(w, "g", "x", 2);
}
static void misuse_orphan(void *c, MetricsWriter *w) {
    (void)c;
    metrics_value(w, NULL, 0, 1);
}
static void misuse_negative(void *c, MetricsWriter *w) {
    (void)c;
    metrics_counter(w, "c_total", "x", -1);
}
static void misuse_label_name(void *c, MetricsWriter *w) {
    (void)c;
    metrics_family(w, "g", METRICS_GAUGE, "x");
    metrics_value1(w, "bad-name", "v", 1);
}
static void misuse_le(void *c, MetricsWriter *w) {
    (void)c;
    metrics_family(w, "g", METRICS_GAUGE, "x");
    metrics_value1(w, "le", "1", 1);
}
static void misuse_histogram_value(void *c, MetricsWriter *w) {
    (void)c;
    metrics_family(w, "h_seconds", METRICS_HISTOGRAM, "x");
    metrics_value(w, NULL, 0, 1);
}
static void misuse_metric_name(void *c, MetricsWriter *w) {
    (void)c;
    metrics_gauge(w, "9lives", "x", 1);
}
static void misuse_no_help(void *c, MetricsWriter *w) {
    (void)c;
    metrics_gauge(w, "g", "", 1);
}
static void misuse_duplicate_label(void *c, MetricsWriter *w) {
    (void)c;
    MetricsLabel l[] = {{"a", "1"}, {"a", "2"}};
    metrics_family(w, "g", METRICS_GAUGE, "x");
    metrics_value(w, l, 2, 1);
}

Test(metrics, misuses_fail_the_render_with_a_message) {
    struct {
        MetricsRenderFn fn;
        const char *says;
    } cases[] = {
        {misuse_counter_suffix, "counter promptd_prompts must end in _total"},
        {misuse_duplicate, "metric family g written twice"},
        {misuse_orphan, "a sample before any metric family"},
        {misuse_negative, "counter c_total given -1"},
        {misuse_label_name, "g: invalid label name 'bad-name'"},
        {misuse_le, "g: invalid label name 'le'"},
        {misuse_histogram_value, "h_seconds is a histogram"},
        {misuse_metric_name, "invalid metric name '9lives'"},
        {misuse_no_help, "g: no help text"},
        {misuse_duplicate_label, "g: label a given twice"},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        char *text = NULL, err[512] = "";
        size_t len;
        cr_expect_eq(metrics_render(cases[i].fn, NULL, &text, &len, err, sizeof err), PD_EINVAL,
                     "case %zu accepted", i);
        cr_expect(strstr(err, cases[i].says), "case %zu: expected '%s', got '%s'", i, cases[i].says,
                  err);
        cr_expect_null(text);
    }
}

Test(metrics, histogram_bounds_are_checked_and_the_default_spans_5us_to_5s) {
    MetricsHistogram h;
    static const double unordered[] = {0.1, 0.01}, negative[] = {-1, 1};
    double many[METRICS_HIST_MAX + 1];
    for (int i = 0; i <= METRICS_HIST_MAX; i++) many[i] = i + 1;
    cr_expect_eq(metrics_histogram_init(&h, unordered, 2), PD_EINVAL);
    cr_expect_eq(metrics_histogram_init(&h, negative, 2), PD_EINVAL);
    cr_expect_eq(metrics_histogram_init(&h, many, METRICS_HIST_MAX + 1), PD_EINVAL);
    cr_assert_eq(metrics_histogram_init(&h, NULL, 0), 0);
    cr_expect_eq(h.n, metrics_latency_bucket_count);
    cr_expect_eq(h.bound[0], 0.000005);
    cr_expect_eq(h.bound[h.n - 1], 5);

    metrics_observe_ns(&h, 5000); /* exactly the first bound */
    metrics_observe_ns(&h, 5001); /* just above it */
    metrics_observe(&h, 100);     /* above all */
    metrics_observe(&h, -1);      /* a clock step backwards counts as 0 */
    cr_expect_eq(atomic_load(&h.count[0]), 2);
    cr_expect_eq(atomic_load(&h.count[1]), 1);
    cr_expect_eq(atomic_load(&h.count[h.n]), 1);
}

static void render_process(void *ctx, MetricsWriter *w) {
    (void)ctx;
    metrics_write_process(w);
}

Test(metrics, process_metrics_are_present_and_valid) {
    char *text = render_text(render_process, NULL);
    check_exposition(text);
    const char *names[] = {"process_cpu_seconds_total ", "process_resident_memory_bytes ",
                           "process_open_fds ",          "process_max_fds ",
                           "process_threads ",           "process_start_time_seconds "};
    for (size_t i = 0; i < PD_ARRAY_LEN(names); i++)
        cr_expect(strstr(text, names[i]), "missing %s", names[i]);
    double start = strtod(strstr(text, "\nprocess_start_time_seconds ") + 28, NULL);
    double now = (double)time(NULL);
    cr_expect(start > now - 3600 && start <= now + 1, "start time %f, now %f", start, now);
    free(text);
}

/* Prometheus's own Python client (Debian's python3-prometheus-client) reads the page
 * too: an independent parser of the syntax, and of the escaping, since it must decode
 * the template label back to the original bytes. */
static void render_everything(void *ctx, MetricsWriter *w) {
    render_basic(ctx, w);
    render_escapes(ctx, w);
    render_numbers(ctx, w);
    metrics_write_process(w);
}

static const char parse_script[] =
    "import sys\n"
    "from prometheus_client.parser import text_string_to_metric_families as parse\n"
    "families = list(parse(open(sys.argv[1]).read()))\n"
    "by_name = {f.name: f for f in families}\n"
    "sel = by_name['promptd_template_selections']\n"
    "got = [s.labels['template'] for s in sel.samples if s.value == 1]\n"
    "assert got == ['say \"hi\"\\\\now\\nplease'], got\n"
    "for f in families:\n"
    "    if f.type == 'histogram':\n"
    "        les = [s.labels['le'] for s in f.samples if s.name.endswith('_bucket')]\n"
    "        assert les[-1] == '+Inf', (f.name, les)\n"
    "print(len(families), sum(len(f.samples) for f in families))\n";

/* Runs parse_script on the file at page; returns its first line of output. */
static void run_parser(const char *page, char *line, size_t len) {
    char script[512], cmd[1200];
    snprintf(script, sizeof script, "%s/parse.py", harness_tmpdir());
    FILE *f = fopen(script, "w");
    fputs(parse_script, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1 | tail -1", script, page);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    if (!fgets(line, (int)len, p)) line[0] = '\0';
    pclose(p);
}

Test(metrics, prometheus_client_parses_the_page) {
    char path[512], line[512] = "";
    int families = 0, samples = 0;
    if (system("/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null") != 0)
        cr_skip_test("python3-prometheus-client is not installed (make deps)");
    cr_assert_eq(metrics_histogram_init(&latency, NULL, 0), 0);
    metrics_observe(&latency, 0.002);
    char *text = render_text(render_everything, NULL);
    snprintf(path, sizeof path, "%s/page.txt", harness_tmpdir());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    free(text);

    run_parser(path, line, sizeof line);
    cr_assert_eq(sscanf(line, "%d %d", &families, &samples), 2, "the parser says: %s", line);
    cr_expect_geq(families, 20, "%s", line);
    cr_expect_geq(samples, 40, "%s", line);
}

/* --- the server --- */

static MetricsServer *start_server(const MetricsConfig *cfg) {
    MetricsServer *s = NULL;
    char err[512] = "";
    cr_assert_eq(metrics_start(&s, cfg, err, sizeof err), 0, "metrics_start: %s", err);
    cr_assert_gt(metrics_port(s) + (cfg->listen && cfg->listen[0] ? 0 : 1), 0);
    return s;
}

Test(metrics, scrape_serves_the_page_with_its_content_type) {
    cr_assert_eq(metrics_histogram_init(&latency, NULL, 0), 0);
    metrics_observe(&latency, 0.003);
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .render = render_basic});
    Answer a = get(metrics_port(s), "/metrics");
    cr_expect_eq(a.status, 200);
    cr_expect_str_eq(a.type, "text/plain; version=0.0.4; charset=utf-8");
    cr_expect(strstr(a.body, "promptd_prompts_total 42\n"));
    check_exposition(a.body);
    free(a.body);

    a = request(metrics_port(s), NULL, "HEAD", "/metrics", NULL);
    cr_expect_eq(a.status, 200);
    cr_expect_str_eq(a.body, "", "HEAD has no body");
    free(a.body);
    cr_expect_eq(metrics_server_stats(s).scrapes, 2);
    metrics_stop(s);
}

Test(metrics, wrong_paths_and_methods_get_404_and_405) {
    MetricsServer *s = start_server(&(MetricsConfig){.listen = "127.0.0.1:0"});
    int port = metrics_port(s);
    Answer a = get(port, "/nope");
    cr_expect_eq(a.status, 404);
    free(a.body);
    a = post(port, NULL, "/metrics");
    cr_expect_eq(a.status, 405);
    free(a.body);
    a = get(port, "/-/reload");
    cr_expect_eq(a.status, 405, "a reload is a POST: a GET must not trigger it");
    free(a.body);
    a = get(port, "/");
    cr_expect_eq(a.status, 200);
    cr_expect(strstr(a.body, "/healthz"));
    free(a.body);
    a = get(port, "/metrics");
    cr_expect_eq(a.status, 200, "no render callback: an empty page");
    cr_expect_str_eq(a.body, "");
    free(a.body);
    metrics_stop(s);
}

Test(metrics, a_render_misuse_answers_500_with_its_message) {
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .render = misuse_duplicate});
    Answer a = get(metrics_port(s), "/metrics");
    cr_expect_eq(a.status, 500);
    cr_expect(strstr(a.body, "metric family g written twice"), "%s", a.body);
    free(a.body);
    cr_expect_eq(metrics_server_stats(s).scrape_errors, 1);
    metrics_stop(s);
}

/* --- health --- */

typedef struct {
    int redis_down, starting, kafka_fatal;
} HealthState;

static void health(void *ctx, MetricsHealth *h) {
    HealthState *st = ctx;
    if (st->starting) metrics_health_add(h, METRICS_FAILING, "starting");
    if (st->kafka_fatal) metrics_health_add(h, METRICS_FAILING, "kafka: %s", "fatal error");
    if (st->redis_down) metrics_health_add(h, METRICS_DEGRADED, "redis down for %d s", 12);
}

Test(metrics, healthz_reports_ready_degraded_and_failing_with_reasons) {
    HealthState st = {0};
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .health = health, .ctx = &st});
    int port = metrics_port(s);
    struct {
        HealthState set;
        int status;
        const char *body;
    } cases[] = {
        {{0, 0, 0}, 200, "ready\n"},
        {{1, 0, 0}, 200, "degraded: redis down for 12 s\n"},
        {{0, 1, 0}, 503, "failing: starting\n"},
        {{1, 0, 1}, 503, "failing: kafka: fatal error; redis down for 12 s\n"},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        st = cases[i].set;
        Answer a = get(port, "/healthz");
        cr_expect_eq(a.status, cases[i].status, "case %zu: status %d", i, a.status);
        cr_expect_str_eq(a.body, cases[i].body, "case %zu", i);
        free(a.body);
    }
    metrics_stop(s);
}

Test(metrics, health_reasons_are_cut_at_a_reason_boundary) {
    MetricsHealth h = {0};
    for (int i = 0; i < 100; i++) metrics_health_add(&h, METRICS_DEGRADED, "reason number %d", i);
    cr_expect_eq(h.state, METRICS_DEGRADED);
    cr_expect(strstr(h.reasons, "; ...") && !strstr(h.reasons, "...; "), "%s", h.reasons);
    cr_expect_eq(strlen(h.reasons), h.len);
    cr_expect_lt(h.len, sizeof h.reasons);
}

/* --- reload --- */

/* A stand-in for the serving loop: polls the flag the reload callback sets, reloads
 * (taking delay_ms), and reports result. */
typedef struct {
    MetricsServer *server;
    atomic_int flag, stop, reloads, begun;
    MetricsReloadResult result;
    const char *message;
    int delay_ms;
    pthread_t thread;
} Loop;

static void on_reload(void *ctx) {
    Loop *l = ctx;
    atomic_store(&l->flag, 1);
}

static void *serving_loop(void *arg) {
    Loop *l = arg;
    while (!atomic_load(&l->stop)) {
        if (atomic_exchange(&l->flag, 0)) {
            uint64_t ticket = metrics_reload_begin(l->server);
            atomic_fetch_add(&l->begun, 1);
            usleep((useconds_t)l->delay_ms * 1000);
            /* Counted before the answer: the test reads the count as soon as it has it. */
            atomic_fetch_add(&l->reloads, 1);
            metrics_reload_end(l->server, ticket, l->result, l->message);
        }
        usleep(1000);
    }
    return NULL;
}

static void loop_start(Loop *l, MetricsServer *s) {
    l->server = s;
    pthread_create(&l->thread, NULL, serving_loop, l);
}

static void loop_stop(Loop *l) {
    atomic_store(&l->stop, 1);
    pthread_join(l->thread, NULL);
}

Test(metrics, reload_waits_for_the_result_and_reports_success_or_refusal) {
    Loop l = {.result = METRICS_RELOAD_OK,
              .message = "configuration: 2 key(s) changed; pack alarm 9f2c",
              .delay_ms = 50};
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .reload = on_reload, .ctx = &l});
    loop_start(&l, s);

    Answer a = post(metrics_port(s), NULL, "/-/reload");
    cr_expect_eq(a.status, 200);
    cr_expect_str_eq(a.body, "reloaded: configuration: 2 key(s) changed; pack alarm 9f2c\n");
    free(a.body);

    l.result = METRICS_RELOAD_REFUSED;
    l.message = "/etc/promptd/promptd.conf:12: kafka.batch.size: must be at most 100000\n";
    a = post(metrics_port(s), NULL, "/-/reload");
    cr_expect_eq(a.status, 422);
    cr_expect_str_eq(a.body, "refused: /etc/promptd/promptd.conf:12: kafka.batch.size: must be "
                             "at most 100000 \n");
    free(a.body);

    l.result = METRICS_RELOAD_FAILED;
    l.message = "out of memory";
    a = post(metrics_port(s), NULL, "/-/reload");
    cr_expect_eq(a.status, 500);
    cr_expect_str_eq(a.body, "failed: out of memory\n");
    free(a.body);
    cr_expect_eq(atomic_load(&l.reloads), 3);
    cr_expect_not(metrics_reload_pending(s));
    loop_stop(&l);
    metrics_stop(s);
}

Test(metrics, reload_times_out_with_504_when_nobody_answers) {
    Loop l = {0};
    MetricsServer *s = start_server(&(MetricsConfig){
        .listen = "127.0.0.1:0", .reload = on_reload, .ctx = &l, .reload_timeout_ms = 300});
    long long t0 = harness_now_ms();
    Answer a = post(metrics_port(s), NULL, "/-/reload");
    long long took = harness_now_ms() - t0;
    cr_expect_eq(a.status, 504);
    cr_expect(strstr(a.body, "timeout: no result within 300 ms"), "%s", a.body);
    cr_expect(took >= 290 && took < 3000, "answered after %lld ms", took);
    cr_expect(metrics_reload_pending(s));
    cr_expect_eq(metrics_server_stats(s).reload_timeouts, 1);
    free(a.body);
    metrics_stop(s);
}

Test(metrics, reload_without_a_callback_is_not_implemented) {
    MetricsServer *s = start_server(&(MetricsConfig){.listen = "127.0.0.1:0"});
    Answer a = post(metrics_port(s), NULL, "/-/reload");
    cr_expect_eq(a.status, 501);
    free(a.body);
    metrics_stop(s);
}

typedef struct {
    int port;
    Answer answer;
} PostArg;

static void *post_thread(void *arg) {
    PostArg *p = arg;
    p->answer = post(p->port, NULL, "/-/reload");
    return NULL;
}

/* One thread per connection: a reload waiting for the serving thread delays no scrape, and
 * stopping releases the waiter at once. */
Test(metrics, scrapes_go_on_while_a_reload_waits_and_stopping_releases_it) {
    Loop l = {0};
    MetricsServer *s = start_server(&(MetricsConfig){.listen = "127.0.0.1:0",
                                                     .render = render_basic,
                                                     .reload = on_reload,
                                                     .ctx = &l,
                                                     .reload_timeout_ms = 20000});
    cr_assert_eq(metrics_histogram_init(&latency, NULL, 0), 0);
    PostArg p = {metrics_port(s), {0}};
    pthread_t t;
    pthread_create(&t, NULL, post_thread, &p);
    while (!atomic_load(&l.flag)) usleep(1000);

    long long t0 = harness_now_ms();
    Answer a = get(metrics_port(s), "/metrics");
    cr_expect_eq(a.status, 200);
    cr_expect_lt(harness_now_ms() - t0, 2000, "a scrape waited for the reload");
    free(a.body);

    t0 = harness_now_ms();
    metrics_set_stopping(s);
    pthread_join(t, NULL);
    cr_expect_lt(harness_now_ms() - t0, 2000, "the waiting reload was not released");
    cr_expect_eq(p.answer.status, 503);
    cr_expect_str_eq(p.answer.body, "stopping\n");
    free(p.answer.body);

    a = post(metrics_port(s), NULL, "/-/reload");
    cr_expect_eq(a.status, 503, "a reload after stopping began");
    free(a.body);
    a = get(metrics_port(s), "/healthz");
    cr_expect_eq(a.status, 200, "health is still served while stopping");
    free(a.body);
    metrics_stop(s);
}

/* Requests that arrive during a reload are answered by the next one, which began after
 * they asked: a reload's result never answers a request made after it started. */
Test(metrics, a_request_during_a_reload_waits_for_the_next_one) {
    Loop l = {.result = METRICS_RELOAD_OK, .message = "ok", .delay_ms = 300};
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .reload = on_reload, .ctx = &l});
    loop_start(&l, s);
    PostArg first = {metrics_port(s), {0}}, second = {metrics_port(s), {0}};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, post_thread, &first);
    while (!atomic_load(&l.begun)) usleep(1000); /* the first reload is running */
    pthread_create(&t2, NULL, post_thread, &second);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    cr_expect_eq(first.answer.status, 200);
    cr_expect_eq(second.answer.status, 200);
    cr_expect_eq(atomic_load(&l.reloads), 2, "the second request needs its own reload");
    free(first.answer.body);
    free(second.answer.body);
    loop_stop(&l);
    metrics_stop(s);
}

Test(metrics, a_web_page_cannot_trigger_a_reload) {
    Loop l = {.result = METRICS_RELOAD_OK, .message = "ok"};
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .reload = on_reload, .ctx = &l});
    Answer a = request(metrics_port(s), NULL, "POST", "/-/reload",
                       "Origin: http://evil.example\r\nContent-Length: 0\r\n");
    cr_expect_eq(a.status, 403);
    cr_expect(strstr(a.body, "Origin"), "%s", a.body);
    cr_expect_not(atomic_load(&l.flag), "the reload callback ran");
    cr_expect_eq(metrics_server_stats(s).refused, 1);
    free(a.body);
    metrics_stop(s);
}

/* --- addresses and the admin socket --- */

Test(metrics, a_non_loopback_address_is_refused_unless_allowed) {
    MetricsServer *s = NULL;
    char err[512] = "";
    cr_expect_eq(metrics_start(&s, &(MetricsConfig){.listen = "0.0.0.0:0"}, err, sizeof err),
                 PD_ECONFIG);
    cr_expect(strstr(err, "'0.0.0.0:0' is not a loopback address") &&
                  strstr(err, "metrics.allow_remote"),
              "%s", err);
    cr_expect_null(s);
    cr_expect_eq(metrics_start(&s, &(MetricsConfig){.listen = "[::]:0"}, err, sizeof err),
                 PD_ECONFIG);

    s = start_server(&(MetricsConfig){.listen = "0.0.0.0:0", .allow_remote = true});
    Answer a = get(metrics_port(s), "/healthz");
    cr_expect_eq(a.status, 200);
    free(a.body);
    metrics_stop(s);
}

Test(metrics, addresses_can_be_checked_without_binding) {
    char err[512] = "";
    cr_expect_eq(metrics_check_address("127.0.0.1:9464", false, err, sizeof err), 0);
    cr_expect_eq(metrics_check_address("", false, err, sizeof err), 0, "empty: no listener");
    cr_expect_eq(metrics_check_address("0.0.0.0:9464", false, err, sizeof err), PD_ECONFIG);
    cr_expect(strstr(err, "metrics.allow_remote"), "%s", err);
    cr_expect_eq(metrics_check_address("0.0.0.0:9464", true, err, sizeof err), 0);
    cr_expect_eq(metrics_check_address("[::1]:x", false, err, sizeof err), PD_ECONFIG);
}

Test(metrics, loopback_forms_are_accepted) {
    const char *ok[] = {"127.0.0.1:0", "localhost:0", "[::1]:0", "127.1.2.3:0"};
    for (size_t i = 0; i < PD_ARRAY_LEN(ok); i++) {
        MetricsServer *s = NULL;
        char err[512] = "";
        int rc = metrics_start(&s, &(MetricsConfig){.listen = ok[i]}, err, sizeof err);
        /* A host without IPv6 cannot bind [::1]; that is an I/O error, not a refusal. */
        cr_expect(rc == 0 || (rc == PD_EIO && ok[i][0] == '['), "%s: %s", ok[i], err);
        metrics_stop(s);
    }
}

Test(metrics, bad_addresses_are_configuration_errors_with_the_address) {
    const char *bad[] = {"127.0.0.1", "127.0.0.1:99999",         "127.0.0.1:x",
                         "::1:9464",  "prometheus.example:9464", "[::1:9464"};
    for (size_t i = 0; i < PD_ARRAY_LEN(bad); i++) {
        MetricsServer *s = NULL;
        char err[512] = "";
        cr_expect_eq(metrics_start(&s, &(MetricsConfig){.listen = bad[i]}, err, sizeof err),
                     PD_ECONFIG, "%s accepted", bad[i]);
        cr_expect(strstr(err, bad[i]), "error for %s does not name it: %s", bad[i], err);
    }
}

Test(metrics, a_port_in_use_is_an_io_error_naming_the_address) {
    MetricsServer *a = start_server(&(MetricsConfig){.listen = "127.0.0.1:0"}), *b = NULL;
    char addr[64], err[512] = "";
    snprintf(addr, sizeof addr, "127.0.0.1:%d", metrics_port(a));
    cr_expect_eq(metrics_start(&b, &(MetricsConfig){.listen = addr}, err, sizeof err), PD_EIO);
    cr_expect(strstr(err, addr) && strstr(err, "in use"), "%s", err);
    metrics_stop(a);
}

Test(metrics, the_admin_socket_serves_reload_and_is_guarded_by_permissions) {
    char path[256];
    struct stat st;
    Loop l = {.result = METRICS_RELOAD_OK, .message = "ok"};
    snprintf(path, sizeof path, "%s/admin.sock", harness_tmpdir());
    MetricsServer *s =
        start_server(&(MetricsConfig){.admin_socket = path, .reload = on_reload, .ctx = &l});
    loop_start(&l, s);
    cr_expect_eq(metrics_port(s), 0, "no TCP listener was asked for");
    cr_assert_eq(stat(path, &st), 0);
    cr_expect(S_ISSOCK(st.st_mode));
    cr_expect_eq(st.st_mode & 0777, 0660, "mode %o", st.st_mode & 0777);

    Answer a = post(0, path, "/-/reload");
    cr_expect_eq(a.status, 200);
    cr_expect_str_eq(a.body, "reloaded: ok\n");
    free(a.body);
    a = request(0, path, "GET", "/healthz", NULL);
    cr_expect_eq(a.status, 200);
    free(a.body);

    /* A second server must not steal a live socket. */
    MetricsServer *other = NULL;
    char err[512] = "";
    cr_expect_eq(metrics_start(&other, &(MetricsConfig){.admin_socket = path}, err, sizeof err),
                 PD_EIO);
    cr_expect(strstr(err, "another process serves this socket"), "%s", err);
    cr_expect_eq(stat(path, &st), 0, "the refused server removed the live socket");

    loop_stop(&l);
    metrics_stop(s);
    cr_expect_neq(stat(path, &st), 0, "the socket file outlived the server");
}

Test(metrics, a_stale_admin_socket_is_replaced) {
    char path[100];
    snprintf(path, sizeof path, "%.80s/admin.sock", harness_tmpdir());
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    close(fd); /* bound, never listened: what a killed process leaves */

    MetricsServer *s = start_server(&(MetricsConfig){.admin_socket = path});
    Answer a = request(0, path, "GET", "/healthz", NULL);
    cr_expect_eq(a.status, 200);
    free(a.body);
    metrics_stop(s);
}

Test(metrics, an_admin_socket_path_too_long_is_a_configuration_error) {
    char path[200], err[512] = "";
    MetricsServer *s = NULL;
    memset(path, 'a', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    cr_expect_eq(metrics_start(&s, &(MetricsConfig){.admin_socket = path}, err, sizeof err),
                 PD_ECONFIG);
    cr_expect(strstr(err, "at most 107 bytes"), "%s", err);
}

/* --- the client promptctl uses --- */

Test(metrics, the_client_reaches_tcp_and_unix_listeners) {
    char path[256], target[64], body[1024], err[512] = "";
    int status = 0;
    Loop l = {.result = METRICS_RELOAD_REFUSED, .message = "pack alarm: init.lua:3: syntax"};
    snprintf(path, sizeof path, "%s/admin.sock", harness_tmpdir());
    MetricsServer *s = start_server(&(MetricsConfig){
        .listen = "127.0.0.1:0", .admin_socket = path, .reload = on_reload, .ctx = &l});
    loop_start(&l, s);

    cr_expect_eq(metrics_client_request(path, "POST", "/-/reload", 5000, &status, body, sizeof body,
                                        err, sizeof err),
                 0, "%s", err);
    cr_expect_eq(status, 422);
    cr_expect_str_eq(body, "refused: pack alarm: init.lua:3: syntax\n");

    snprintf(target, sizeof target, "http://127.0.0.1:%d/", metrics_port(s));
    cr_expect_eq(metrics_client_request(target, "GET", "/healthz", 5000, &status, body, sizeof body,
                                        err, sizeof err),
                 0, "%s", err);
    cr_expect_eq(status, 200);
    cr_expect_str_eq(body, "ready\n");
    loop_stop(&l);
    metrics_stop(s);

    cr_expect_eq(metrics_client_request(target, "GET", "/healthz", 2000, &status, body, sizeof body,
                                        err, sizeof err),
                 PD_EIO);
    cr_expect(strstr(err, "Connection refused"), "%s", err);
    cr_expect_eq(metrics_client_request("unix:relative", "GET", "/", 2000, &status, body,
                                        sizeof body, err, sizeof err),
                 PD_EINVAL);
}

Test(metrics, the_client_times_out_on_a_silent_server) {
    char target[64], body[64], err[512] = "";
    int status, fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof sin;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    cr_assert_eq(listen(fd, 1), 0);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    snprintf(target, sizeof target, "127.0.0.1:%d", ntohs(sin.sin_port));
    long long t0 = harness_now_ms();
    cr_expect_eq(metrics_client_request(target, "GET", "/", 300, &status, body, sizeof body, err,
                                        sizeof err),
                 PD_ETIMEOUT);
    cr_expect_lt(harness_now_ms() - t0, 2000);
    close(fd);
}

/* --- concurrency --- */

typedef struct {
    MetricsHistogram hist;
    atomic_uint_fast64_t events;
    atomic_int stop;
} Busy;

static void render_busy(void *ctx, MetricsWriter *w) {
    Busy *b = ctx;
    metrics_counter(w, "promptd_events_total", "Events.",
                    (double)atomic_load_explicit(&b->events, memory_order_relaxed));
    metrics_family(w, "promptd_end_to_end_duration_seconds", METRICS_HISTOGRAM, "Latency.");
    metrics_histogram(w, NULL, 0, &b->hist);
}

static void *observer(void *arg) {
    Busy *b = arg;
    for (uint64_t i = 0; !atomic_load(&b->stop); i++) {
        metrics_observe_ns(&b->hist, (i * 7919) % 6000000000u);
        atomic_fetch_add_explicit(&b->events, 1, memory_order_relaxed);
    }
    return NULL;
}

static double sample_of(const char *page, const char *prefix) {
    char line[256];
    snprintf(line, sizeof line, "\n%s", prefix);
    const char *p = strstr(page, line);
    cr_assert(p, "no %s", prefix);
    return strtod(p + strlen(line), NULL);
}

Test(metrics, scrapes_during_updates_stay_consistent_and_monotonic) {
    Busy *b = calloc(1, sizeof *b);
    cr_assert_eq(metrics_histogram_init(&b->hist, NULL, 0), 0);
    MetricsServer *s =
        start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .render = render_busy, .ctx = b});
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, observer, b);

    double last_events = 0, last_count = 0;
    for (int i = 0; i < 40; i++) {
        Answer a = get(metrics_port(s), "/metrics");
        cr_assert_eq(a.status, 200, "%s", a.body);
        check_exposition(a.body);
        double events = sample_of(a.body, "promptd_events_total ");
        double count = sample_of(a.body, "promptd_end_to_end_duration_seconds_count ");
        cr_expect_geq(events, last_events, "a counter went backwards");
        cr_expect_geq(count, last_count, "a histogram count went backwards");
        last_events = events, last_count = count;
        free(a.body);
    }
    atomic_store(&b->stop, 1);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    cr_expect_gt(last_count, 0);
    metrics_stop(s);
    free(b);
}

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

Test(metrics, stop_releases_every_descriptor) {
    char path[256];
    snprintf(path, sizeof path, "%s/admin.sock", harness_tmpdir());
    int before = open_fds();
    for (int i = 0; i < 3; i++) {
        MetricsServer *s =
            start_server(&(MetricsConfig){.listen = "127.0.0.1:0", .admin_socket = path});
        Answer a = get(metrics_port(s), "/healthz");
        free(a.body);
        metrics_stop(s);
    }
    cr_expect_eq(open_fds(), before, "descriptors leaked: %d before, %d after", before, open_fds());
    metrics_stop(NULL);
}

/* --- librdkafka statistics --- */

static const char stats_json[] =
    "{\"name\":\"rdkafka#consumer-1\",\"type\":\"consumer\",\"ts\":1,\"topics\":{"
    "\"promptd.prompts\":{\"topic\":\"promptd.prompts\",\"partitions\":{"
    "\"0\":{\"partition\":0,\"consumer_lag\":120,\"consumer_lag_stored\":130},"
    "\"1\":{\"partition\":1,\"consumer_lag\":0},"
    "\"2\":{\"partition\":2,\"consumer_lag\":-1},"
    "\"-1\":{\"partition\":-1,\"consumer_lag\":-1}}},"
    "\"promptd.rewards\":{\"partitions\":{\"0\":{\"consumer_lag\":5}}}}}";

Test(metrics, kafka_lag_sums_the_known_partitions) {
    int64_t lag = -7;
    cr_expect_eq(metrics_kafka_lag(stats_json, &lag), 3);
    cr_expect_eq(lag, 125);
    cr_expect_eq(metrics_kafka_lag("{\"name\":\"p\",\"type\":\"producer\",\"topics\":{}}", &lag),
                 0);
    cr_expect_eq(lag, 0);
    cr_expect_eq(metrics_kafka_lag("{\"type\":\"consumer\"}", &lag), 0);
}

Test(metrics, kafka_lag_refuses_what_is_not_statistics) {
    int64_t lag;
    const char *bad[] = {"", "{", "[]", "{\"topics\":{}}", "null"};
    for (size_t i = 0; i < PD_ARRAY_LEN(bad); i++)
        cr_expect_eq(metrics_kafka_lag(bad[i], &lag), PD_EINVAL, "'%s' accepted", bad[i]);
    cr_expect_eq(metrics_kafka_lag(NULL, &lag), PD_EINVAL);
}
