/*
 * Metrics, health and admin endpoint: the text-format writer, lock-free histograms, the
 * HTTP server on libmicrohttpd, the reload rendezvous, a small HTTP client for promptctl,
 * and the librdkafka statistics parser. See metrics.h for the contract.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "pd.h"

#define CONTENT_TYPE_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_TEXT    "text/plain; charset=utf-8"
#define NAME_MAX_LEN         128

/* --- the text-format writer --- */

struct MetricsWriter {
    char *buf; /* the page, NUL-terminated */
    size_t len, cap;
    char family[NAME_MAX_LEN]; /* the current family's name, "" before the first */
    MetricsType type;
    char **names; /* every family written, to refuse a duplicate */
    size_t nnames, capnames;
    bool failed, oom; /* a misuse or no memory: the page is not served */
    char err[256];
};

static void writer_fail(MetricsWriter *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void writer_fail(MetricsWriter *w, const char *fmt, ...) {
    va_list ap;
    if (w->failed) return;
    w->failed = true;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

static void writer_oom(MetricsWriter *w) {
    writer_fail(w, "out of memory writing the metrics page");
    w->oom = true;
}

static void put(MetricsWriter *w, const char *s, size_t n) {
    if (w->failed) return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (w->len + n + 1 > cap) cap *= 2;
        char *grown = realloc(w->buf, cap);
        if (!grown) return writer_oom(w);
        w->buf = grown;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

static void put_str(MetricsWriter *w, const char *s) {
    put(w, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at p (1 to 4), or 0 when it is not valid. */
static size_t utf8_seq(const unsigned char *p) {
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* Writes s escaped for a label value (quote too) or a HELP text (quote kept), with every
 * byte that does not start valid UTF-8 replaced by U+FFFD: the format is UTF-8. */
static void put_escaped(MetricsWriter *w, const char *s, bool label) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = utf8_seq(p);
        if (*p == '\\')
            put_str(w, "\\\\");
        else if (*p == '\n')
            put_str(w, "\\n");
        else if (*p == '"' && label)
            put_str(w, "\\\"");
        else if (n == 0)
            put_str(w, "\xEF\xBF\xBD");
        else
            put(w, (const char *)p, n);
        p += n ? n : 1;
    }
}

/* Numbers as Prometheus parses them: integers exactly, others with the fewest digits that
 * read back to the same double, and NaN, +Inf, -Inf. */
static void put_number(MetricsWriter *w, double v) {
    char b[40];
    if (isnan(v))
        snprintf(b, sizeof b, "NaN");
    else if (isinf(v))
        snprintf(b, sizeof b, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (v == 0)
        snprintf(b, sizeof b, "0");
    else if (fabs(v) < 1e15 && v == trunc(v))
        snprintf(b, sizeof b, "%.0f", v);
    else
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(b, sizeof b, "%.*g", prec, v);
            if (strtod(b, NULL) == v) break;
        }
    put_str(w, b);
}

static bool name_char(char c, bool first, bool colon) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
    if (c == ':') return colon;
    return !first && c >= '0' && c <= '9';
}

/* A metric name (colons allowed: recording rules use them) or a label name. */
static bool valid_name(const char *s, bool metric) {
    if (!s || !*s || strlen(s) >= NAME_MAX_LEN) return false;
    for (size_t i = 0; s[i]; i++)
        if (!name_char(s[i], i == 0, metric)) return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Records name as written; false (and the writer failed) when it was already. */
static bool remember_family(MetricsWriter *w, const char *name) {
    for (size_t i = 0; i < w->nnames; i++)
        if (!strcmp(w->names[i], name)) {
            writer_fail(w, "metric family %s written twice", name);
            return false;
        }
    if (w->nnames == w->capnames) {
        size_t cap = w->capnames ? w->capnames * 2 : 64;
        char **grown = realloc(w->names, cap * sizeof *grown);
        if (!grown) return writer_oom(w), false;
        w->names = grown;
        w->capnames = cap;
    }
    if (!(w->names[w->nnames] = strdup(name))) return writer_oom(w), false;
    w->nnames++;
    return true;
}

static const char *type_name(MetricsType t) {
    return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

void metrics_family(MetricsWriter *w, const char *name, MetricsType type, const char *help) {
    if (w->failed) return;
    if (!valid_name(name, true))
        return writer_fail(w, "invalid metric name '%s'", name ? name : "(null)");
    if (type != METRICS_COUNTER && type != METRICS_GAUGE && type != METRICS_HISTOGRAM)
        return writer_fail(w, "%s: unknown metric type %d", name, (int)type);
    if (type == METRICS_COUNTER && !ends_with(name, "_total"))
        return writer_fail(w, "counter %s must end in _total", name);
    if (!help || !*help) return writer_fail(w, "%s: no help text", name);
    if (!remember_family(w, name)) return;

    snprintf(w->family, sizeof w->family, "%s", name);
    w->type = type;
    put_str(w, "# HELP ");
    put_str(w, name);
    put_str(w, " ");
    put_escaped(w, help, false);
    put_str(w, "\n# TYPE ");
    put_str(w, name);
    put_str(w, " ");
    put_str(w, type_name(type));
    put_str(w, "\n");
}

/* Checks the label names of one sample: valid, not reserved, no duplicates. */
static bool check_labels(MetricsWriter *w, const MetricsLabel *labels, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *name = labels[i].name;
        if (!valid_name(name, false) || !strncmp(name, "__", 2) || !strcmp(name, "le"))
            return writer_fail(w, "%s: invalid label name '%s'", w->family, name ? name : ""),
                   false;
        if (!labels[i].value)
            return writer_fail(w, "%s: label %s has no value", w->family, name), false;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(labels[j].name, name))
                return writer_fail(w, "%s: label %s given twice", w->family, name), false;
    }
    return true;
}

/* Writes "{a="x",b="y",le="0.5"}"; nothing when there are no labels. */
static void put_labels(MetricsWriter *w, const MetricsLabel *labels, size_t n, const char *le) {
    if (n == 0 && !le) return;
    put_str(w, "{");
    for (size_t i = 0; i < n; i++) {
        if (i) put_str(w, ",");
        put_str(w, labels[i].name);
        put_str(w, "=\"");
        put_escaped(w, labels[i].value, true);
        put_str(w, "\"");
    }
    if (le) {
        put_str(w, n ? ",le=\"" : "le=\"");
        put_str(w, le);
        put_str(w, "\"");
    }
    put_str(w, "}");
}

static void put_sample(MetricsWriter *w, const char *suffix, const MetricsLabel *labels, size_t n,
                       const char *le, double v) {
    put_str(w, w->family);
    put_str(w, suffix);
    put_labels(w, labels, n, le);
    put_str(w, " ");
    put_number(w, v);
    put_str(w, "\n");
}

void metrics_value(MetricsWriter *w, const MetricsLabel *labels, size_t n, double value) {
    if (w->failed) return;
    if (!w->family[0]) return writer_fail(w, "a sample before any metric family");
    if (w->type == METRICS_HISTOGRAM)
        return writer_fail(w, "%s is a histogram: write it with metrics_histogram", w->family);
    if (w->type == METRICS_COUNTER && !(value >= 0))
        return writer_fail(w, "counter %s given %g", w->family, value);
    if (!check_labels(w, labels, n)) return;
    put_sample(w, "", labels, n, NULL, value);
}

void metrics_value1(MetricsWriter *w, const char *label, const char *label_value, double value) {
    MetricsLabel l = {label, label_value};
    metrics_value(w, &l, 1, value);
}

void metrics_counter(MetricsWriter *w, const char *name, const char *help, double value) {
    metrics_family(w, name, METRICS_COUNTER, help);
    metrics_value(w, NULL, 0, value);
}

void metrics_gauge(MetricsWriter *w, const char *name, const char *help, double value) {
    metrics_family(w, name, METRICS_GAUGE, help);
    metrics_value(w, NULL, 0, value);
}

const char *metrics_writer_error(const MetricsWriter *w) {
    return w->failed ? w->err : NULL;
}

static void writer_free(MetricsWriter *w) {
    for (size_t i = 0; i < w->nnames; i++) free(w->names[i]);
    free(w->names);
    free(w->buf);
}

int metrics_render(MetricsRenderFn render, void *ctx, char **text, size_t *len, char *err,
                   size_t errlen) {
    MetricsWriter w;
    memset(&w, 0, sizeof w);
    put(&w, "", 0); /* an empty page is still a NUL-terminated buffer */
    if (render) render(ctx, &w);

    *text = NULL;
    if (w.failed) {
        snprintf(err, errlen, "metrics: %s", w.err);
        writer_free(&w);
        return w.oom ? PD_ENOMEM : PD_EINVAL;
    }
    *text = w.buf;
    *len = w.len;
    w.buf = NULL;
    writer_free(&w);
    return PD_OK;
}

/* --- histograms --- */

const double metrics_latency_buckets[] = {
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01,     0.025,   0.05,     0.1,     0.25,   0.5,     1,      2.5,   5,
};
const size_t metrics_latency_bucket_count = PD_ARRAY_LEN(metrics_latency_buckets);

int metrics_histogram_init(MetricsHistogram *h, const double *bounds, size_t n) {
    if (!bounds) bounds = metrics_latency_buckets, n = metrics_latency_bucket_count;
    if (n == 0 || n > METRICS_HIST_MAX) return PD_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!(bounds[i] > 0) || !(bounds[i] < 1e9) || (i && !(bounds[i] > bounds[i - 1])))
            return PD_EINVAL;

    memset(h, 0, sizeof *h);
    h->n = n;
    for (size_t i = 0; i < n; i++) {
        h->bound[i] = bounds[i];
        h->bound_ns[i] = (uint64_t)llround(bounds[i] * 1e9);
    }
    for (size_t i = 0; i <= n; i++) atomic_init(&h->count[i], 0);
    atomic_init(&h->sum_ns, 0);
    return PD_OK;
}

void metrics_observe_ns(MetricsHistogram *h, uint64_t ns) {
    size_t lo = 0, hi = h->n; /* the first bound >= ns; n when above all */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (h->bound_ns[mid] < ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    atomic_fetch_add_explicit(&h->count[lo], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void metrics_observe(MetricsHistogram *h, double seconds) {
    double ns = seconds * 1e9;
    metrics_observe_ns(h, !(ns > 0) ? 0 : ns >= 1.8e19 ? UINT64_MAX / 2 : (uint64_t)ns);
}

void metrics_histogram(MetricsWriter *w, const MetricsLabel *labels, size_t n,
                       const MetricsHistogram *h) {
    char le[40];
    uint64_t cumulative = 0;
    if (w->failed) return;
    if (!w->family[0] || w->type != METRICS_HISTOGRAM)
        return writer_fail(w, "metrics_histogram outside a histogram family (in '%s')", w->family);
    if (!check_labels(w, labels, n)) return;

    /* Each bucket is read once, so the cumulated series cannot decrease within a scrape
     * even while the serving thread observes. */
    for (size_t i = 0; i <= h->n; i++) {
        cumulative += atomic_load_explicit(&h->count[i], memory_order_relaxed);
        if (i == h->n)
            snprintf(le, sizeof le, "+Inf");
        else
            snprintf(le, sizeof le, "%.15g", h->bound[i]);
        put_sample(w, "_bucket", labels, n, le, (double)cumulative);
    }
    put_sample(w, "_sum", labels, n, NULL,
               (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9);
    put_sample(w, "_count", labels, n, NULL, (double)cumulative);
}

/* --- process metrics --- */

/* Fields of /proc/self/stat after the command name: vsize (bytes), rss (pages), threads,
 * start time (clock ticks after boot). Returns 0 or -1. */
static int read_proc_stat(unsigned long long *vsize, long long *rss, long *threads,
                          unsigned long long *start) {
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';

    /* The command name may contain spaces and parentheses: parse after the last ')'. */
    const char *p = strrchr(buf, ')');
    if (!p) return -1;
    int got = sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %ld "
                     "%*d %llu %llu %lld",
                     threads, start, vsize, rss);
    return got == 4 ? 0 : -1;
}

static int count_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static double clock_seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void metrics_write_process(MetricsWriter *w) {
    unsigned long long vsize, start;
    long long rss;
    long threads;
    struct rlimit rl;
    int fds = count_open_fds();

    metrics_counter(w, "process_cpu_seconds_total", "User and system CPU time spent, in seconds.",
                    clock_seconds(CLOCK_PROCESS_CPUTIME_ID));
    if (read_proc_stat(&vsize, &rss, &threads, &start) == 0) {
        double ticks = (double)sysconf(_SC_CLK_TCK);
        double age = clock_seconds(CLOCK_BOOTTIME) - (double)start / ticks;
        metrics_gauge(w, "process_resident_memory_bytes", "Resident memory size, in bytes.",
                      (double)rss * (double)sysconf(_SC_PAGESIZE));
        metrics_gauge(w, "process_virtual_memory_bytes", "Virtual memory size, in bytes.",
                      (double)vsize);
        metrics_gauge(w, "process_threads", "Threads of the process.", (double)threads);
        metrics_gauge(w, "process_start_time_seconds",
                      "Start time of the process since the Unix epoch, in seconds.",
                      floor(clock_seconds(CLOCK_REALTIME) - age));
    }
    if (fds >= 0) metrics_gauge(w, "process_open_fds", "Open file descriptors.", fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        metrics_gauge(w, "process_max_fds", "Limit of open file descriptors.",
                      rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

/* --- health --- */

void metrics_health_add(MetricsHealth *h, MetricsHealthState s, const char *fmt, ...) {
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (s > h->state) h->state = s;

    /* Whole reasons only: a reason that does not fit is dropped, and "..." says so once. */
    const char *sep = h->len ? "; " : "";
    size_t need = strlen(sep) + strlen(reason);
    if (h->len + need + 1 <= sizeof h->reasons - 5) {
        h->len +=
            (size_t)snprintf(h->reasons + h->len, sizeof h->reasons - h->len, "%s%s", sep, reason);
    } else if (!ends_with(h->reasons, "...")) {
        h->len += (size_t)snprintf(h->reasons + h->len, sizeof h->reasons - h->len, "%s...", sep);
    }
}

/* --- addresses and listening sockets --- */

/* Parses "host:port" ("[v6]:port"; host "", "*", "localhost" or numeric). */
static int parse_address(const char *text, struct sockaddr_storage *ss, socklen_t *sslen, char *err,
                         size_t errlen) {
    char host[64];
    const char *colon, *port_text;
    memset(ss, 0, sizeof *ss);

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':' || (size_t)(close - text - 1) >= sizeof host)
            return snprintf(err, errlen, "'%s': expected [address]:port", text), PD_ECONFIG;
        snprintf(host, sizeof host, "%.*s", (int)(close - text - 1), text + 1);
        port_text = close + 2;
    } else {
        colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof host || memchr(text, ':', colon - text))
            return snprintf(err, errlen, "'%s': expected address:port ([address]:port for IPv6)",
                            text),
                   PD_ECONFIG;
        snprintf(host, sizeof host, "%.*s", (int)(colon - text), text);
        port_text = colon + 1;
    }

    char *end;
    errno = 0;
    long port = strtol(port_text, &end, 10);
    if (!*port_text || *end || errno || port < 0 || port > 65535)
        return snprintf(err, errlen, "'%s': the port must be 0 to 65535", text), PD_ECONFIG;

    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (!host[0] || !strcmp(host, "*")) {
        v4->sin_family = AF_INET;
        v4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (!strcmp(host, "localhost")) {
        v4->sin_family = AF_INET;
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
    } else {
        return snprintf(err, errlen, "'%s': '%s' is not a numeric address (names are not resolved)",
                        text, host),
               PD_ECONFIG;
    }
    if (ss->ss_family == AF_INET) {
        v4->sin_port = htons((uint16_t)port);
        *sslen = sizeof *v4;
    } else {
        v6->sin6_port = htons((uint16_t)port);
        *sslen = sizeof *v6;
    }
    return PD_OK;
}

static bool is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_UNIX) return true;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family != AF_INET6) return false;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

/* Parses listen and refuses a non-loopback address unless allow_remote. */
static int resolve_listen(const char *listen, bool allow_remote, struct sockaddr_storage *ss,
                          socklen_t *len, char *err, size_t errlen) {
    int rc = parse_address(listen, ss, len, err, errlen);
    if (rc) return rc;
    if (!allow_remote && !is_loopback((struct sockaddr *)ss))
        return snprintf(err, errlen,
                        "'%s' is not a loopback address: metrics and health would be visible to "
                        "the network; set metrics.allow_remote yes to mean it",
                        listen),
               PD_ECONFIG;
    return PD_OK;
}

int metrics_check_address(const char *listen, bool allow_remote, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (!listen || !listen[0]) return PD_OK;
    return resolve_listen(listen, allow_remote, &ss, &len, err, errlen);
}

static int listen_tcp(const MetricsConfig *cfg, int *fd_out, int *port, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = resolve_listen(cfg->listen, cfg->allow_remote, &ss, &len, err, errlen);
    if (rc) return rc;

    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0) return snprintf(err, errlen, "socket: %s", strerror(errno)), PD_EIO;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 64) ||
        getsockname(fd, (struct sockaddr *)&ss, &len)) {
        snprintf(err, errlen, "%s: %s", cfg->listen, strerror(errno));
        close(fd);
        return PD_EIO;
    }
    *port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                          : ((struct sockaddr_in6 *)&ss)->sin6_port);
    *fd_out = fd;
    return PD_OK;
}

static int unix_address(const char *path, struct sockaddr_un *sun, char *err, size_t errlen) {
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun->sun_path)
        return snprintf(err, errlen, "%s: a socket path has at most %zu bytes", path,
                        sizeof sun->sun_path - 1),
               PD_ECONFIG;
    memcpy(sun->sun_path, path, strlen(path));
    return PD_OK;
}

/* A socket file left by a process that died is removed; one that answers is not ours. */
static int clear_stale_socket(const struct sockaddr_un *sun, char *err, size_t errlen) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return snprintf(err, errlen, "socket: %s", strerror(errno)), PD_EIO;
    int rc = connect(fd, (const struct sockaddr *)sun, sizeof *sun), e = errno;
    close(fd);
    if (rc == 0)
        return snprintf(err, errlen, "%s: another process serves this socket", sun->sun_path),
               PD_EIO;
    if (e == ECONNREFUSED && unlink(sun->sun_path) && errno != ENOENT)
        return snprintf(err, errlen, "%s: %s", sun->sun_path, strerror(errno)), PD_EIO;
    return PD_OK;
}

/* The admin socket is readable and writable by its owner and group only: connecting to
 * it is what allows a reload. */
static int listen_unix(const char *path, int *fd_out, char *err, size_t errlen) {
    struct sockaddr_un sun;
    int rc = unix_address(path, &sun, err, errlen);
    if (!rc) rc = clear_stale_socket(&sun, err, errlen);
    if (rc) return rc;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return snprintf(err, errlen, "socket: %s", strerror(errno)), PD_EIO;
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) || chmod(path, 0660) || listen(fd, 16)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return PD_EIO;
    }
    *fd_out = fd;
    return PD_OK;
}

/* --- the server --- */

typedef struct {
    MetricsServer *server;
    struct MHD_Daemon *daemon;
    bool admin; /* the unix socket: file permissions already vouch for the peer */
} Listener;

struct MetricsServer {
    MetricsConfig cfg;
    char *listen, *admin_socket; /* owned copies of the configured strings */
    Listener tcp, unix_sock;
    int port;

    pthread_mutex_t render_lock; /* one render and one health call at a time */
    pthread_mutex_t lock;        /* the reload rendezvous below */
    pthread_cond_t cond;
    atomic_uint_fast64_t requested; /* reload tickets handed out (changed under lock) */
    atomic_uint_fast64_t done;      /* highest ticket answered (changed under lock) */
    MetricsReloadResult result;     /* of the last reload */
    char message[2048];
    bool stopping;
    char http_error[256]; /* libmicrohttpd's last message (under lock) */

    atomic_uint_fast64_t requests, scrapes, scrape_errors, reloads, reload_timeouts, refused,
        http_errors;
};

static void count(atomic_uint_fast64_t *c) {
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* libmicrohttpd's own messages: counted and the last one kept for a start error, never
 * printed (this module does not log). */
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    MetricsServer *s = cls;
    count(&s->http_errors);
    pthread_mutex_lock(&s->lock);
    vsnprintf(s->http_error, sizeof s->http_error, fmt, ap);
    s->http_error[strcspn(s->http_error, "\n")] = '\0';
    pthread_mutex_unlock(&s->lock);
}

/* Queues text as the answer; buf is freed by libmicrohttpd when owned is true. */
static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *type,
                               char *buf, size_t len, bool owned, const char *allow) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, buf, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!r) {
        if (owned) free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status, const char *allow,
                                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status, const char *allow,
                                    const char *fmt, ...) {
    char text[2560];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
    return respond(conn, status, CONTENT_TYPE_TEXT, text, len, false, allow);
}

static enum MHD_Result serve_metrics(MetricsServer *s, struct MHD_Connection *conn) {
    char *text, err[512];
    size_t len;
    pthread_mutex_lock(&s->render_lock);
    int rc = metrics_render(s->cfg.render, s->cfg.ctx, &text, &len, err, sizeof err);
    pthread_mutex_unlock(&s->render_lock);

    if (rc) {
        count(&s->scrape_errors);
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "%s\n", err);
    }
    count(&s->scrapes);
    return respond(conn, MHD_HTTP_OK, CONTENT_TYPE_METRICS, text, len, true, NULL);
}

static enum MHD_Result serve_health(MetricsServer *s, struct MHD_Connection *conn) {
    MetricsHealth h;
    memset(&h, 0, sizeof h);
    if (s->cfg.health) {
        pthread_mutex_lock(&s->render_lock);
        s->cfg.health(s->cfg.ctx, &h);
        pthread_mutex_unlock(&s->render_lock);
    }
    if (h.state == METRICS_READY) return respond_text(conn, MHD_HTTP_OK, NULL, "ready\n");
    if (h.state == METRICS_DEGRADED)
        return respond_text(conn, MHD_HTTP_OK, NULL, "degraded: %s\n", h.reasons);
    return respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "failing: %s\n",
                        h.len ? h.reasons : "unknown");
}

/* Admin commands come from the admin socket or from a loopback peer, and never from a web
 * page: a browser sends Origin with a cross-site POST, a command-line client does not. */
static const char *admin_refusal(const Listener *l, struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!l->admin && (!info || !info->client_addr || !is_loopback(info->client_addr)))
        return "admin commands are accepted from this host only (the admin socket or a "
               "loopback address)";
    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN))
        return "admin commands are not accepted from web pages (the request has an Origin "
               "header)";
    return NULL;
}

static int reload_timeout_ms(const MetricsServer *s) {
    return s->cfg.reload_timeout_ms > 0 ? s->cfg.reload_timeout_ms : 30000;
}

/* Waits until ticket is answered, the deadline passes or the server stops. Holds lock. */
static void wait_reload(MetricsServer *s, uint64_t ticket) {
    struct timespec deadline;
    int ms = reload_timeout_ms(s);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (long)(ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) deadline.tv_sec++, deadline.tv_nsec -= 1000000000;
    while (atomic_load(&s->done) < ticket && !s->stopping)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT) break;
}

/* Hands out a ticket, asks for the reload, and waits for its result. Returns false with
 * *stopping set when there is no result (timeout, or the server stops). */
static bool request_reload(MetricsServer *s, MetricsReloadResult *result, char *message, size_t len,
                           bool *stopping) {
    pthread_mutex_lock(&s->lock);
    if ((*stopping = s->stopping)) {
        pthread_mutex_unlock(&s->lock);
        return false;
    }
    uint64_t ticket = atomic_fetch_add(&s->requested, 1) + 1;
    pthread_mutex_unlock(&s->lock);
    s->cfg.reload(s->cfg.ctx);

    pthread_mutex_lock(&s->lock);
    wait_reload(s, ticket);
    bool answered = atomic_load(&s->done) >= ticket;
    *stopping = s->stopping;
    *result = s->result;
    snprintf(message, len, "%s", s->message);
    pthread_mutex_unlock(&s->lock);
    return answered;
}

static enum MHD_Result serve_reload(Listener *l, struct MHD_Connection *conn) {
    MetricsServer *s = l->server;
    MetricsReloadResult result;
    char message[sizeof s->message];
    bool stopping;
    const char *refusal = admin_refusal(l, conn);
    if (refusal) {
        count(&s->refused);
        return respond_text(conn, MHD_HTTP_FORBIDDEN, NULL, "%s\n", refusal);
    }
    if (!s->cfg.reload)
        return respond_text(conn, MHD_HTTP_NOT_IMPLEMENTED, NULL, "reload is not available\n");
    count(&s->reloads);

    if (!request_reload(s, &result, message, sizeof message, &stopping)) {
        if (stopping) return respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "stopping\n");
        count(&s->reload_timeouts);
        return respond_text(conn, MHD_HTTP_GATEWAY_TIMEOUT, NULL,
                            "timeout: no result within %d ms; the reload may still complete\n",
                            reload_timeout_ms(s));
    }
    if (result == METRICS_RELOAD_OK)
        return respond_text(conn, MHD_HTTP_OK, NULL, "reloaded: %s\n", message);
    if (result == METRICS_RELOAD_REFUSED)
        return respond_text(conn, MHD_HTTP_UNPROCESSABLE_CONTENT, NULL, "refused: %s\n", message);
    return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "failed: %s\n", message);
}

static const char index_page[] =
    "promptd\n"
    "  GET  /metrics    Prometheus metrics (text format 0.0.4)\n"
    "  GET  /healthz    ready, degraded: <reasons>, failing: <reasons>\n"
    "  POST /-/reload   reload the configuration and policy pack\n";

static bool is_get(const char *method) {
    return !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
}

static enum MHD_Result route(Listener *l, struct MHD_Connection *conn, const char *url,
                             const char *method) {
    MetricsServer *s = l->server;
    count(&s->requests);
    if (!strcmp(url, "/metrics"))
        return is_get(method)
                   ? serve_metrics(s, conn)
                   : respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "GET, HEAD", "use GET\n");
    if (!strcmp(url, "/healthz"))
        return is_get(method)
                   ? serve_health(s, conn)
                   : respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "GET, HEAD", "use GET\n");
    if (!strcmp(url, "/-/reload"))
        return !strcmp(method, MHD_HTTP_METHOD_POST)
                   ? serve_reload(l, conn)
                   : respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "POST", "use POST\n");
    if (!strcmp(url, "/") && is_get(method))
        return respond_text(conn, MHD_HTTP_OK, NULL, "%s", index_page);
    return respond_text(conn, MHD_HTTP_NOT_FOUND, NULL, "not found: %s\n", url);
}

/* libmicrohttpd calls this once with the headers, then once per piece of body, then once
 * more with nothing left: we answer on that last call. Bodies are ignored. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
    static int headers_seen;
    (void)version;
    (void)upload_data;
    if (!*req_cls) {
        *req_cls = &headers_seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    return route(cls, conn, url, method);
}

/* One thread per connection: a POST /-/reload that waits for the serving thread never
 * delays a scrape. The connection limit bounds the threads. */
static int start_daemon(Listener *l, MetricsServer *s, int fd, bool admin, char *err,
                        size_t errlen) {
    l->server = s;
    l->admin = admin;
    l->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, on_request, l, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!l->daemon) {
        /* Whether libmicrohttpd closed the socket it was given depends on where it
         * failed: close it only if it is still open. */
        if (fcntl(fd, F_GETFD) != -1) close(fd);
        pthread_mutex_lock(&s->lock);
        snprintf(err, errlen, "%s: the HTTP server did not start: %s",
                 admin ? s->admin_socket : s->listen,
                 s->http_error[0] ? s->http_error : "no reason given");
        pthread_mutex_unlock(&s->lock);
        return PD_EIO;
    }
    return PD_OK;
}

static MetricsServer *server_new(const MetricsConfig *cfg) {
    MetricsServer *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->cfg = *cfg;
    s->listen = strdup(cfg->listen ? cfg->listen : "");
    s->admin_socket = strdup(cfg->admin_socket ? cfg->admin_socket : "");
    if (!s->listen || !s->admin_socket) {
        free(s->listen);
        free(s->admin_socket);
        free(s);
        return NULL;
    }
    s->cfg.listen = s->listen;
    s->cfg.admin_socket = s->admin_socket;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->render_lock, NULL);
    s->message[0] = '\0';
    return s;
}

int metrics_start(MetricsServer **out, const MetricsConfig *cfg, char *err, size_t errlen) {
    int fd, rc = PD_OK;
    MetricsServer *s = server_new(cfg);
    *out = NULL;
    if (!s) return snprintf(err, errlen, "out of memory"), PD_ENOMEM;

    if (s->listen[0]) {
        rc = listen_tcp(&s->cfg, &fd, &s->port, err, errlen);
        if (!rc) rc = start_daemon(&s->tcp, s, fd, false, err, errlen);
    }
    if (!rc && s->admin_socket[0]) {
        rc = listen_unix(s->admin_socket, &fd, err, errlen);
        if (!rc) rc = start_daemon(&s->unix_sock, s, fd, true, err, errlen);
    }
    if (rc) {
        metrics_stop(s);
        return rc;
    }
    *out = s;
    return PD_OK;
}

void metrics_set_stopping(MetricsServer *s) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void metrics_stop(MetricsServer *s) {
    if (!s) return;
    metrics_set_stopping(s);
    /* libmicrohttpd joins its threads and closes the listening sockets it was given. */
    if (s->tcp.daemon) MHD_stop_daemon(s->tcp.daemon);
    if (s->unix_sock.daemon) {
        MHD_stop_daemon(s->unix_sock.daemon);
        unlink(s->admin_socket);
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->render_lock);
    free(s->listen);
    free(s->admin_socket);
    free(s);
}

int metrics_port(const MetricsServer *s) {
    return s ? s->port : 0;
}

uint64_t metrics_reload_begin(MetricsServer *s) {
    if (!s) return 0;
    pthread_mutex_lock(&s->lock);
    uint64_t ticket = atomic_load(&s->requested);
    pthread_mutex_unlock(&s->lock);
    return ticket;
}

void metrics_reload_end(MetricsServer *s, uint64_t ticket, MetricsReloadResult result,
                        const char *message) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    if (ticket > atomic_load(&s->done)) atomic_store(&s->done, ticket);
    s->result = result;
    snprintf(s->message, sizeof s->message, "%s", message ? message : "");
    for (char *p = s->message; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' '; /* one line for the body and promptctl */
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static uint64_t load(const atomic_uint_fast64_t *c) {
    return atomic_load_explicit(c, memory_order_relaxed);
}

MetricsServerStats metrics_server_stats(const MetricsServer *s) {
    MetricsServerStats st = {0};
    if (!s) return st;
    st.requests = load(&s->requests);
    st.scrapes = load(&s->scrapes);
    st.scrape_errors = load(&s->scrape_errors);
    st.reloads = load(&s->reloads);
    st.reload_timeouts = load(&s->reload_timeouts);
    st.refused = load(&s->refused);
    st.http_errors = load(&s->http_errors);
    return st;
}

bool metrics_reload_pending(const MetricsServer *s) {
    if (!s) return false;
    return atomic_load(&s->requested) > atomic_load(&s->done);
}

/* --- the client side --- */

static int client_address(const char *target, struct sockaddr_storage *ss, socklen_t *len,
                          char *err, size_t errlen) {
    char buf[256];
    if (!strncmp(target, "unix:", 5)) target += 5;
    if (target[0] == '/') {
        struct sockaddr_un sun;
        int rc = unix_address(target, &sun, err, errlen);
        memcpy(ss, &sun, sizeof sun);
        *len = sizeof sun;
        return rc ? PD_EINVAL : PD_OK;
    }

    if (!strncmp(target, "http://", 7)) target += 7;
    snprintf(buf, sizeof buf, "%s", target);
    size_t n = strlen(buf);
    if (n && buf[n - 1] == '/') buf[n - 1] = '\0';
    if (parse_address(buf, ss, len, err, errlen)) return PD_EINVAL;
    if (((struct sockaddr_in *)ss)->sin_port == 0) /* the same offset in sockaddr_in6 */
        return snprintf(err, errlen, "'%s': no port", target), PD_EINVAL;
    return PD_OK;
}

/* Polls fd for events until deadline (monotonic ms). Returns 1 ready, 0 timed out, -1. */
static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        uint64_t now = pd_mono_ms();
        if (now >= deadline) return 0;
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, (int)(deadline - now));
        if (rc >= 0 || errno != EINTR) return rc > 0 ? 1 : rc;
    }
}

static int connect_within(int fd, const struct sockaddr *sa, socklen_t len, uint64_t deadline) {
    int e = 0;
    socklen_t elen = sizeof e;
    if (connect(fd, sa, len) == 0) return 0;
    if (errno != EINPROGRESS && errno != EAGAIN) return -1;
    int rc = wait_fd(fd, POLLOUT, deadline);
    if (rc <= 0) return errno = rc == 0 ? ETIMEDOUT : errno, -1;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) || e) return errno = e ? e : errno, -1;
    return 0;
}

static int send_all(int fd, const char *buf, size_t len, uint64_t deadline) {
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n, len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) return -1;
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc <= 0) return errno = rc == 0 ? ETIMEDOUT : errno, -1;
    }
    return 0;
}

/* Reads until the server closes (the request said Connection: close). */
static int recv_all(int fd, char **out, size_t *outlen, uint64_t deadline) {
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 == cap) {
            char *grown = cap >= (16u << 20) ? NULL : realloc(buf, cap * 2);
            if (!grown) break;
            buf = grown, cap *= 2;
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
        } else if (n == 0) {
            buf[len] = '\0';
            *out = buf, *outlen = len;
            return 0;
        } else if (errno != EAGAIN && errno != EINTR) {
            break;
        } else {
            int rc = wait_fd(fd, POLLIN, deadline);
            if (rc <= 0) {
                free(buf);
                return errno = rc == 0 ? ETIMEDOUT : errno, -1;
            }
        }
    }
    free(buf);
    return errno = errno ? errno : ENOMEM, -1;
}

/* Splits an HTTP answer into its status and body. */
static int parse_answer(const char *answer, int *status, char *body, size_t bodylen, char *err,
                        size_t errlen) {
    const char *start = strstr(answer, "\r\n\r\n");
    if (sscanf(answer, "HTTP/%*d.%*d %d", status) != 1 || !start)
        return snprintf(err, errlen, "the answer is not HTTP"), PD_EIO;
    snprintf(body, bodylen, "%s", start + 4);
    return PD_OK;
}

int metrics_client_request(const char *target, const char *method, const char *path, int timeout_ms,
                           int *status, char *body, size_t bodylen, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t sslen;
    char request[512], *answer = NULL;
    size_t answer_len;
    uint64_t deadline = pd_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    int rc = client_address(target, &ss, &sslen, err, errlen);
    if (rc) return rc;

    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return snprintf(err, errlen, "socket: %s", strerror(errno)), PD_EIO;
    snprintf(request, sizeof request,
             "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: promptctl\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             method, path);
    if (connect_within(fd, (struct sockaddr *)&ss, sslen, deadline) ||
        send_all(fd, request, strlen(request), deadline) ||
        recv_all(fd, &answer, &answer_len, deadline)) {
        rc = errno == ETIMEDOUT ? PD_ETIMEOUT : PD_EIO;
        snprintf(err, errlen, "%s: %s", target,
                 rc == PD_ETIMEOUT ? "no answer in time" : strerror(errno));
    } else {
        rc = parse_answer(answer, status, body, bodylen, err, errlen);
    }
    free(answer);
    close(fd);
    return rc;
}

/* --- librdkafka statistics --- */

/* Adds the known consumer_lag of each partition of topic; returns partitions counted. */
static int topic_lag(json_t *topic, int64_t *lag) {
    json_t *parts = json_object_get(topic, "partitions"), *part;
    const char *key;
    int n = 0;
    if (!json_is_object(parts)) return 0;
    json_object_foreach(parts, key, part) {
        json_t *v = json_object_get(part, "consumer_lag");
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            *lag += json_integer_value(v);
            n++;
        }
    }
    return n;
}

int metrics_kafka_lag(const char *json, int64_t *lag) {
    json_error_t e;
    json_t *root = json ? json_loads(json, 0, &e) : NULL, *topics, *topic;
    const char *key;
    int n = 0;
    *lag = 0;
    if (!json_is_object(root) || !json_is_string(json_object_get(root, "type"))) {
        json_decref(root);
        return PD_EINVAL;
    }

    topics = json_object_get(root, "topics");
    if (json_is_object(topics)) json_object_foreach(topics, key, topic) n += topic_lag(topic, lag);
    json_decref(root);
    return n;
}
