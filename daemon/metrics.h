/*
 * Metrics, health and the admin endpoint: a small HTTP server (libmicrohttpd, its own
 * threads) that serves
 *
 *   GET  /metrics     Prometheus text format 0.0.4, written per scrape by a render callback
 *   GET  /healthz     200 "ready", 200 "degraded: <reasons>" or 503 "failing: <reasons>"
 *   POST /-/reload    asks the serving thread to reload and waits (bounded) for the result
 *   GET  /            a short index of the above
 *
 * on a TCP address (loopback unless remote access is configured explicitly) and, for the
 * admin commands, on a unix socket that file permissions guard.
 *
 * There is no registry of metric objects: the owner of the state renders it. The render
 * callback runs on an HTTP thread, once per scrape, and writes families and samples with
 * the metrics_family/metrics_value/metrics_histogram helpers, which check names, escape
 * label values and format numbers. It must only read what other threads may change
 * (atomics, or snapshots under the owner's lock), never block on the serving thread.
 *
 * The serving thread never waits on this module. It only polls a flag (set through the
 * reload callback) and reports a reload's result; histograms are updated with relaxed
 * atomics and read by the scrape.
 *
 * The module never logs: start errors are returned with a message, and runtime troubles
 * (a client that goes away, an allocation that fails in a scrape) are answered with an
 * HTTP error and counted in metrics_server_stats.
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- writing the text format --- */

typedef struct MetricsWriter MetricsWriter;

typedef enum {
    METRICS_COUNTER,   /* name ends in _total; value never negative */
    METRICS_GAUGE,     /* any value, NaN and infinities included */
    METRICS_HISTOGRAM, /* samples through metrics_histogram only */
} MetricsType;

typedef struct {
    const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", not "le" */
    const char *value; /* any bytes; escaped, and invalid UTF-8 replaced by U+FFFD */
} MetricsLabel;

/* Starts a family: its # HELP and # TYPE lines. Every sample that follows belongs to it,
 * until the next family. A name may appear once per scrape. */
void metrics_family(MetricsWriter *w, const char *name, MetricsType type, const char *help);

/* One sample of the current counter or gauge family, with n labels (labels may be NULL
 * when n is 0). */
void metrics_value(MetricsWriter *w, const MetricsLabel *labels, size_t n, double value);

/* One sample with a single label, the common case (reason, level, template...). */
void metrics_value1(MetricsWriter *w, const char *label, const char *label_value, double value);

/* A family with one unlabelled sample. */
void metrics_counter(MetricsWriter *w, const char *name, const char *help, double value);
void metrics_gauge(MetricsWriter *w, const char *name, const char *help, double value);

/* The standard process metrics from /proc/self (process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
 * process_max_fds, process_start_time_seconds, process_threads). Families whose source
 * cannot be read are left out. */
void metrics_write_process(MetricsWriter *w);

/* The first misuse in this scrape (bad name, counter without _total, negative counter,
 * duplicate family, sample outside a family, out of memory), or NULL. After a misuse the
 * writer ignores further calls and the scrape is answered 500 with this text. */
const char *metrics_writer_error(const MetricsWriter *w);

/* --- latency histograms --- */

#define METRICS_HIST_MAX 24 /* most finite buckets */

/* Fixed buckets, updated lock-free by any thread and read by the scrape. Each bucket
 * counts the observations that fall in it (not cumulated); the scrape cumulates, so the
 * _bucket series are always non-decreasing and +Inf always equals _count. _sum is added
 * separately and may trail the buckets by the observations in flight. */
typedef struct {
    size_t n;                                         /* finite buckets */
    double bound[METRICS_HIST_MAX];                   /* upper bounds, seconds, increasing */
    uint64_t bound_ns[METRICS_HIST_MAX];              /* the same in nanoseconds */
    atomic_uint_fast64_t count[METRICS_HIST_MAX + 1]; /* per bucket; [n] is above all */
    atomic_uint_fast64_t sum_ns;
} MetricsHistogram;

/* Latency buckets around promptd's targets, in seconds: from 5 µs (a template's render)
 * through 1-50 ms (a batch's encode, a Redis round trip) to 5 s. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_bucket_count;

/* Sets the buckets (bounds in seconds, strictly increasing and positive, at most
 * METRICS_HIST_MAX; bounds NULL: metrics_latency_buckets) and zeroes the counts. Call
 * before any thread observes. Returns 0, or PD_EINVAL for bad bounds. */
int metrics_histogram_init(MetricsHistogram *h, const double *bounds, size_t n);

/* Records one observation; any thread, lock-free. */
void metrics_observe_ns(MetricsHistogram *h, uint64_t ns);
void metrics_observe(MetricsHistogram *h, double seconds);

/* Writes the _bucket, _sum and _count samples of h into the current histogram family,
 * with n extra labels (labels may be NULL when n is 0). */
void metrics_histogram(MetricsWriter *w, const MetricsLabel *labels, size_t n,
                       const MetricsHistogram *h);

/* --- rendering without a server --- */

/* Called once per scrape on an HTTP thread (never concurrently with itself). */
typedef void (*MetricsRenderFn)(void *ctx, MetricsWriter *w);

/* Runs render into a malloc'ed, NUL-terminated text (*len bytes without the NUL), as a
 * scrape would. Returns 0, or PD_EINVAL (a misuse, named in err) or PD_ENOMEM. For tests
 * and for tools that print metrics. */
int metrics_render(MetricsRenderFn render, void *ctx, char **text, size_t *len, char *err,
                   size_t errlen);

/* --- health --- */

typedef enum {
    METRICS_READY = 0,    /* 200 "ready" */
    METRICS_DEGRADED = 1, /* 200 "degraded: ...": serving, with a fallback in use */
    METRICS_FAILING = 2,  /* 503 "failing: ...": not serving, or about to stop */
} MetricsHealthState;

typedef struct {
    MetricsHealthState state; /* the worst state added */
    char reasons[512];        /* "redis down; starting", cut at a reason boundary */
    size_t len;
} MetricsHealth;

/* Adds a reason and raises the state to at least s. For health callbacks. */
void metrics_health_add(MetricsHealth *h, MetricsHealthState s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fills h (which starts READY with no reasons). Called on an HTTP thread. */
typedef void (*MetricsHealthFn)(void *ctx, MetricsHealth *h);

/* --- reload --- */

typedef enum {
    METRICS_RELOAD_OK = 0,      /* 200: the new configuration and pack serve */
    METRICS_RELOAD_REFUSED = 1, /* 422: refused, the previous ones keep serving */
    METRICS_RELOAD_FAILED = 2,  /* 500: the reload could not run (out of memory...) */
} MetricsReloadResult;

/* Asks the serving thread to reload, for instance by setting the flag SIGHUP sets. Called
 * on an HTTP thread; must return at once. */
typedef void (*MetricsReloadFn)(void *ctx);

/* --- the server --- */

typedef struct MetricsServer MetricsServer;

typedef struct {
    const char *listen;       /* "127.0.0.1:9464", "[::1]:9464", "localhost:0"; NULL or ""
                                  for no TCP listener. Numeric addresses only (no DNS). */
    bool allow_remote;        /* permit a non-loopback listen address (0.0.0.0, [::]) */
    const char *admin_socket; /* unix socket path for promptctl; NULL or "" for none */
    MetricsRenderFn render;   /* NULL: /metrics serves an empty page */
    MetricsHealthFn health;   /* NULL: always ready */
    MetricsReloadFn reload;   /* NULL: POST /-/reload answers 501 */
    void *ctx;                /* passed to the three callbacks */
    int reload_timeout_ms;    /* how long POST /-/reload waits for the result; 0: 30 s */
} MetricsConfig;

/* Checks a listen address as metrics_start would (syntax, numeric host, loopback unless
 * allow_remote) without binding: for configuration validation and --check. Returns 0 or
 * PD_ECONFIG with err naming the address and the reason. */
int metrics_check_address(const char *listen, bool allow_remote, char *err, size_t errlen);

/* Binds the listeners and starts the HTTP threads. Returns 0, PD_ECONFIG (an address
 * that does not parse, a non-loopback address without allow_remote, a socket path too
 * long) or PD_EIO (bind or listen failed, or another process serves the admin socket),
 * with err naming the address and the reason. */
int metrics_start(MetricsServer **out, const MetricsConfig *cfg, char *err, size_t errlen);

/* Stops the threads, closes the listeners and removes the admin socket. A reload request
 * still waiting is answered 503. NULL is a no-op. */
void metrics_stop(MetricsServer *s);

/* The bound TCP port (useful with port 0), or 0 without a TCP listener. */
int metrics_port(const MetricsServer *s);

/* Serving thread, when it starts a reload (whatever asked for it): returns a ticket that
 * covers every request made so far. Never blocks for long (a mutex held for a copy). */
uint64_t metrics_reload_begin(MetricsServer *s);

/* Serving thread, when that reload's result is known: answers every request the ticket
 * covers with result and message (one line, for the HTTP body and promptctl). */
void metrics_reload_end(MetricsServer *s, uint64_t ticket, MetricsReloadResult result,
                        const char *message);

/* Whether a reload was requested and not yet answered: the serving loop may poll this
 * instead of (or besides) a flag set by the reload callback. */
bool metrics_reload_pending(const MetricsServer *s);

/* From now on reload requests are answered 503 "stopping", and waiting ones at once.
 * Scrapes and /healthz go on being served until metrics_stop. */
void metrics_set_stopping(MetricsServer *s);

typedef struct {
    uint64_t requests;        /* HTTP requests answered */
    uint64_t scrapes;         /* GET /metrics answered 200 */
    uint64_t scrape_errors;   /* GET /metrics answered 500 (a render misuse, no memory) */
    uint64_t reloads;         /* POST /-/reload requests */
    uint64_t reload_timeouts; /* of those, answered 504 */
    uint64_t refused;         /* 403: admin command from a non-local peer or a web page */
    uint64_t http_errors;     /* errors libmicrohttpd reported (bad requests, resets) */
} MetricsServerStats;

MetricsServerStats metrics_server_stats(const MetricsServer *s);

/* --- the client side, for promptctl --- */

/* Sends "METHOD path" to target: a unix socket path ("/run/promptd/admin.sock",
 * "unix:/run/...") or a TCP address ("127.0.0.1:9464", "http://[::1]:9464"). Waits at
 * most timeout_ms in all. Fills *status with the HTTP status and body (NUL-terminated,
 * cut to bodylen - 1). Returns 0, or PD_EINVAL (a bad target), PD_EIO (cannot connect,
 * or the answer is not HTTP) or PD_ETIMEOUT, with err. */
int metrics_client_request(const char *target, const char *method, const char *path, int timeout_ms,
                           int *status, char *body, size_t bodylen, char *err, size_t errlen);

/* --- librdkafka statistics --- */

/* Sums consumer_lag over the partitions of every topic in a statistics JSON document (the
 * statistics callback's argument, statistics.interval.ms). Partitions whose lag is not
 * known (-1: not assigned here, nothing committed yet) are skipped. Returns the number of
 * partitions summed (0 leaves *lag 0), or PD_EINVAL when json is not a statistics
 * document. */
int metrics_kafka_lag(const char *json, int64_t *lag);

#endif
