/*
 * The Redis link: redis.url parsing, connect and handshake under timeouts, and the
 * reconnect thread. Issues no data commands; cache.c, journal.c and session.c do.
 *
 * Threads: the serving thread owns the connection in use (ctx). The reconnect thread
 * makes new connections and leaves one in `ready`, under the lock; the serving thread
 * adopts it before its next round trip. So no context is ever used by two threads at
 * once, and a connect never runs on the serving thread after start-up.
 */
#include "redis.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "pd.h"

/* Until log.h has a "cache" module. */
#define REDIS_LOG_MOD PD_MOD_CACHE

#define REDIS_DEFAULT_PORT 6379
#define REDIS_DB_MAX       2147483647L
#define BACKOFF_MIN_MS     100
#define BACKOFF_MAX_MS     5000

static void count(atomic_uint_fast64_t *counter, uint64_t n) {
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

static uint64_t counter_read(const atomic_uint_fast64_t *counter) {
    return atomic_load_explicit(counter, memory_order_relaxed);
}

/* --- redis.url --- */

static int url_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int url_error(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return PD_ECONFIG;
}

static int hex_digit(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Copies src[0, len) to dst, decoding %XX. Returns 0, -1 for a bad escape (%00 included:
 * a C string cannot carry it), -2 when dst is too small. */
static int percent_decode(char *dst, size_t cap, const char *src, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int ch = (unsigned char)src[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hex_digit(src[i + 1]) : -1;
            int lo = hi >= 0 ? hex_digit(src[i + 2]) : -1;
            if (lo < 0 || (hi | lo) == 0) return -1;
            ch = hi << 4 | lo;
            i += 2;
        }
        if (n + 1 >= cap) return -2;
        dst[n++] = (char)ch;
    }
    dst[n] = 0;
    return 0;
}

/* A decimal number of len digits, at most max. Returns -1 if it is not one. */
static long parse_number(const char *s, size_t len, long max) {
    if (len == 0 || len > 10) return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

static int parse_db(RedisUrl *u, const char *s, size_t len, char *err, size_t errlen) {
    long db = parse_number(s, len, REDIS_DB_MAX);
    if (db < 0)
        return url_error(err, errlen, "database '%.*s' is not a number from 0 to %ld", (int)len, s,
                         REDIS_DB_MAX);
    u->db = (int)db;
    return 0;
}

/* "[user]:password", before the '@'. */
static int parse_userinfo(RedisUrl *u, const char *s, size_t len, char *err, size_t errlen) {
    const char *colon = memchr(s, ':', len);
    if (!colon)
        return url_error(err, errlen,
                         "has a user name but no password; write :password@ for a password "
                         "alone, or user:password@");

    size_t ulen = (size_t)(colon - s), plen = len - ulen - 1;
    int rc = percent_decode(u->user, sizeof u->user, s, ulen);
    if (rc == -1) return url_error(err, errlen, "bad percent-encoding in the user name");
    if (rc == -2)
        return url_error(err, errlen, "user name is longer than %zu bytes", sizeof u->user - 1);

    if (plen == 0) return url_error(err, errlen, "has an empty password");
    rc = percent_decode(u->password, sizeof u->password, colon + 1, plen);
    if (rc == -1) return url_error(err, errlen, "bad percent-encoding in the password");
    if (rc == -2)
        return url_error(err, errlen, "password is longer than %zu bytes", sizeof u->password - 1);
    return 0;
}

/* Splits off "userinfo@" if present: hosts, paths and numbers never contain '@', so the
 * last one ends the user information even in a password that was not percent-encoded. */
static int take_userinfo(RedisUrl *u, const char **rest, char *err, size_t errlen) {
    const char *at = strrchr(*rest, '@');
    if (!at) return 0;
    int rc = parse_userinfo(u, *rest, (size_t)(at - *rest), err, errlen);
    *rest = at + 1;
    return rc;
}

static bool host_char_ok(int ch, bool bracketed) {
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    if (ch == '.' || ch == '-' || ch == '_') return true;
    return bracketed && (ch == ':' || ch == '%');
}

/* host[:port] or [v6][:port] in s[0, len). */
static int parse_hostport(RedisUrl *u, const char *s, size_t len, char *err, size_t errlen) {
    const char *host = s, *end = s + len, *after;
    bool bracketed = len > 0 && s[0] == '[';
    if (bracketed) {
        const char *close = memchr(s, ']', len);
        if (!close) return url_error(err, errlen, "has an unclosed '[' in the host");
        host = s + 1;
        after = close + 1;
        if (after < end && *after != ':')
            return url_error(err, errlen, "unexpected '%.*s' after the host", (int)(end - after),
                             after);
    } else {
        after = memchr(s, ':', len);
        if (!after) after = end;
    }

    size_t hlen = (size_t)((bracketed ? after - 1 : after) - host);
    if (hlen == 0) return url_error(err, errlen, "has no host");
    if (hlen >= sizeof u->host)
        return url_error(err, errlen, "host is longer than %zu bytes", sizeof u->host - 1);
    for (size_t i = 0; i < hlen; i++)
        if (!host_char_ok((unsigned char)host[i], bracketed))
            return url_error(err, errlen, "host '%.*s' has a character that is not allowed",
                             (int)hlen, host);
    memcpy(u->host, host, hlen);
    u->host[hlen] = 0;

    if (after == end) return 0;
    const char *port = after + 1;
    if (port == end) return url_error(err, errlen, "has an empty port");
    long v = parse_number(port, (size_t)(end - port), 65535);
    if (v < 1)
        return url_error(err, errlen, "port '%.*s' is not a number from 1 to 65535",
                         (int)(end - port), port);
    u->port = (int)v;
    return 0;
}

/* After "redis://". */
static int parse_tcp(RedisUrl *u, const char *rest, char *err, size_t errlen) {
    u->kind = REDIS_URL_TCP;
    u->port = REDIS_DEFAULT_PORT;
    if (take_userinfo(u, &rest, err, errlen)) return PD_ECONFIG;
    if (strchr(rest, '?'))
        return url_error(err, errlen,
                         "query parameters are not supported in redis:// URLs; the database "
                         "goes in the path: redis://host:port/db");

    size_t alen = strcspn(rest, "/");
    if (parse_hostport(u, rest, alen, err, errlen)) return PD_ECONFIG;
    if (rest[alen] != '/' || rest[alen + 1] == 0) return 0;
    return parse_db(u, rest + alen + 1, strlen(rest + alen + 1), err, errlen);
}

/* "db=N[&db=N]" after the '?' of a unix:// URL. */
static int parse_unix_query(RedisUrl *u, const char *q, char *err, size_t errlen) {
    while (*q) {
        size_t len = strcspn(q, "&");
        if (len >= 3 && !strncmp(q, "db=", 3)) {
            if (parse_db(u, q + 3, len - 3, err, errlen)) return PD_ECONFIG;
        } else if (len > 0) {
            size_t name = strcspn(q, "=&");
            return url_error(err, errlen, "unknown parameter '%.*s'; the only one is db=N",
                             (int)(name < len ? name : len), q);
        }
        q += len + (q[len] == '&');
    }
    return 0;
}

/* After "unix://". */
static int parse_unix(RedisUrl *u, const char *rest, char *err, size_t errlen) {
    u->kind = REDIS_URL_UNIX;
    if (take_userinfo(u, &rest, err, errlen)) return PD_ECONFIG;

    size_t plen = strcspn(rest, "?");
    if (plen == 0 || (plen == 1 && rest[0] == '/'))
        return url_error(err, errlen, "has no socket path; write unix:///path/to/socket");
    if (rest[0] != '/')
        return url_error(err, errlen, "socket path '%.*s' is not absolute; write unix:///%.*s",
                         (int)plen, rest, (int)plen, rest);
    if (plen >= sizeof u->path)
        return url_error(err, errlen,
                         "socket path is longer than %zu bytes, the limit of a unix socket "
                         "address",
                         sizeof u->path - 1);
    memcpy(u->path, rest, plen);
    u->path[plen] = 0;

    return rest[plen] == '?' ? parse_unix_query(u, rest + plen + 1, err, errlen) : 0;
}

int redis_url_parse(RedisUrl *u, const char *s, char *err, size_t errlen) {
    memset(u, 0, sizeof *u);
    if (!*s)
        return url_error(err, errlen,
                         "is empty; expected redis://host:port/db, unix:///path/to/socket or "
                         "none");
    /* The URL may hold a password: never echo it whole. */
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            return url_error(err, errlen,
                             "contains a space or a control character; percent-encode it");
    if (!strcmp(s, "none")) return 0;

    const char *sep = strstr(s, "://");
    if (!sep)
        return url_error(err, errlen,
                         "is not a URL; expected redis://host:port/db, unix:///path/to/socket "
                         "or none");
    size_t slen = (size_t)(sep - s);
    if (slen == 5 && !strncasecmp(s, "redis", 5)) return parse_tcp(u, sep + 3, err, errlen);
    if (slen == 4 && !strncasecmp(s, "unix", 4)) return parse_unix(u, sep + 3, err, errlen);
    if (slen == 6 && !strncasecmp(s, "rediss", 6))
        return url_error(err, errlen,
                         "rediss:// (TLS) is not supported: hiredis 0.14 has no TLS; reach "
                         "Redis through a TLS tunnel such as stunnel");
    return url_error(err, errlen, "unknown scheme '%.*s'; expected redis://, unix:// or none",
                     (int)(slen > 16 ? 16 : slen), s);
}

const char *redis_url_describe(const RedisUrl *u, char *buf, size_t len) {
    const char *pw = u->password[0] ? ":***" : "";
    const char *at = u->user[0] || u->password[0] ? "@" : "";
    if (u->kind == REDIS_URL_TCP) {
        bool v6 = strchr(u->host, ':') != NULL;
        snprintf(buf, len, "redis://%s%s%s%s%s%s:%d/%d", u->user, pw, at, v6 ? "[" : "", u->host,
                 v6 ? "]" : "", u->port, u->db);
    } else if (u->kind == REDIS_URL_UNIX) {
        snprintf(buf, len, "unix://%s%s%s%s?db=%d", u->user, pw, at, u->path, u->db);
    } else {
        snprintf(buf, len, "none");
    }
    return buf;
}

/* --- connecting --- */

struct RedisLink {
    RedisUrl url;
    RedisTimeouts t;
    char name[400]; /* the URL without its password */

    redisContext *ctx; /* the serving thread's connection; NULL while down */

    pthread_mutex_t lock;
    pthread_cond_t wake; /* CLOCK_MONOTONIC */
    redisContext *ready; /* made by the reconnect thread, not yet adopted */
    bool want;           /* the reconnect thread should connect */
    bool stop;
    pthread_t thread;

    atomic_bool up;
    atomic_uint_fast64_t down_since_ms;  /* monotonic; valid while !up */
    atomic_uint_fast64_t outage_ms_done; /* of the outages that ended */
    atomic_uint_fast64_t outages, errors, timeouts, connect_failures, reconnects;
};

typedef enum {
    CONNECT_OK,
    CONNECT_RETRY,   /* unreachable, slow or busy: try again later */
    CONNECT_REFUSED, /* the password or database was refused: needs an operator */
} ConnectResult;

static struct timeval timeval_ms(int64_t ms) {
    return (struct timeval){(time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000)};
}

/* Describes why a hiredis call on c failed; errno_saved is errno just after it. */
static bool describe_failure(const RedisLink *l, const redisContext *c, int errno_saved, char *why,
                             size_t len) {
    bool timeout = c->err == REDIS_ERR_IO && (errno_saved == EAGAIN || errno_saved == EWOULDBLOCK);
    if (timeout)
        snprintf(why, len, "no reply within %lld ms", (long long)l->t.command_ms);
    else
        snprintf(why, len, "%s", c->errstr[0] ? c->errstr : "unknown error");
    return timeout;
}

static redisContext *dial(const RedisLink *l) {
    struct timeval tv = timeval_ms(l->t.connect_ms);
    if (l->url.kind == REDIS_URL_UNIX) return redisConnectUnixWithTimeout(l->url.path, tv);
    return redisConnectWithTimeout(l->url.host, l->url.port, tv);
}

/* Queues AUTH, SELECT and PING; returns how many, with their names in step. */
static int append_handshake(const RedisLink *l, redisContext *c, const char *step[3]) {
    int n = 0;
    if (l->url.password[0]) {
        const char *argv[3] = {"AUTH", l->url.user, l->url.password};
        bool acl = l->url.user[0] != 0;
        if (!acl) argv[1] = l->url.password;
        redisAppendCommandArgv(c, acl ? 3 : 2, argv, NULL);
        step[n++] = "AUTH";
    }
    if (l->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", l->url.db);
        const char *argv[2] = {"SELECT", db};
        redisAppendCommandArgv(c, 2, argv, NULL);
        step[n++] = "SELECT";
    }
    const char *ping = "PING";
    redisAppendCommandArgv(c, 1, &ping, NULL);
    step[n++] = "PING";
    return n;
}

/* What an error reply to a handshake step means. */
static ConnectResult judge_reply(const RedisLink *l, const char *step, const redisReply *r,
                                 char *why, size_t len) {
    if (!strcmp(step, "AUTH")) {
        snprintf(why, len, "Redis refused the password: %.200s", r->str);
        return CONNECT_REFUSED;
    }
    if (!strcmp(step, "SELECT")) {
        snprintf(why, len, "Redis refused database %d: %.200s", l->url.db, r->str);
        return CONNECT_REFUSED;
    }
    if (!strncmp(r->str, "NOAUTH", 6)) {
        snprintf(why, len,
                 "Redis requires a password; put it in redis.url: redis://:password@host:port/db");
        return CONNECT_REFUSED;
    }
    snprintf(why, len, "%s: %.200s", step, r->str);
    return CONNECT_RETRY;
}

/* Reads the handshake's replies; the first error decides. */
static ConnectResult check_handshake(const RedisLink *l, redisContext *c, const char *step[], int n,
                                     char *why, size_t len) {
    ConnectResult res = CONNECT_OK;
    for (int i = 0; i < n; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            int errno_saved = errno;
            char what[200];
            describe_failure(l, c, errno_saved, what, sizeof what);
            snprintf(why, len, "%s: %s", step[i], what);
            return CONNECT_RETRY;
        }
        if (r->type == REDIS_REPLY_ERROR && res == CONNECT_OK)
            res = judge_reply(l, step[i], r, why, len);
        freeReplyObject(r);
    }
    return res;
}

/* One attempt: connect, handshake under the connect timeout, then arm the command
 * timeout. Without redisSetTimeout, hiredis 0.14 waits forever on a frozen server. */
static ConnectResult link_connect(const RedisLink *l, redisContext **out, char *why, size_t len) {
    *out = NULL;
    redisContext *c = dial(l);
    if (!c) {
        snprintf(why, len, "out of memory");
        return CONNECT_RETRY;
    }
    if (c->err) {
        snprintf(why, len, "%s", c->errstr);
        redisFree(c);
        return CONNECT_RETRY;
    }

    ConnectResult res = CONNECT_RETRY;
    snprintf(why, len, "cannot set the socket timeouts");
    if (l->url.kind == REDIS_URL_TCP) redisEnableKeepAlive(c); /* best effort */
    if (redisSetTimeout(c, timeval_ms(l->t.connect_ms)) == REDIS_OK) {
        const char *step[3];
        int n = append_handshake(l, c, step);
        res = check_handshake(l, c, step, n, why, len);
    }
    if (res == CONNECT_OK && redisSetTimeout(c, timeval_ms(l->t.command_ms)) != REDIS_OK) {
        snprintf(why, len, "cannot set the command timeout");
        res = CONNECT_RETRY;
    }

    if (res != CONNECT_OK) {
        redisFree(c);
        return res;
    }
    *out = c;
    return CONNECT_OK;
}

/* --- outages --- */

/* Caller holds the lock. */
static void outage_begin(RedisLink *l, const char *reason, bool at_start) {
    atomic_store(&l->down_since_ms, pd_mono_ms());
    atomic_store(&l->up, false);
    count(&l->outages, 1);
    l->want = true;
    pthread_cond_signal(&l->wake);
    pd_log(PD_LOG_WARNING, REDIS_LOG_MOD,
           "redis %s unavailable%s (%s); the cache serves from L1 and the encoder, the journal "
           "and session context from memory; reconnecting in the background",
           l->name, at_start ? " at start" : "", reason);
}

/* Caller holds the lock. */
static void outage_end(RedisLink *l, unsigned attempts) {
    uint64_t ms = pd_mono_ms() - atomic_load(&l->down_since_ms);
    count(&l->outage_ms_done, ms);
    count(&l->reconnects, 1);
    atomic_store(&l->up, true);
    pd_log(PD_LOG_NOTICE, REDIS_LOG_MOD,
           "redis %s back after %.1f s (%u connection attempts); the cache, journal and "
           "sessions use it again",
           l->name, (double)ms / 1000.0, attempts);
}

/* Serving thread. */
static void drop(RedisLink *l, bool timeout, const char *reason) {
    count(timeout ? &l->timeouts : &l->errors, 1);
    redisFree(l->ctx);
    l->ctx = NULL;

    pthread_mutex_lock(&l->lock);
    if (atomic_load(&l->up)) outage_begin(l, reason, false);
    pthread_mutex_unlock(&l->lock);
}

void redis_link_fail(RedisLink *l, int errno_saved) {
    char why[200];
    bool timeout = describe_failure(l, l->ctx, errno_saved, why, sizeof why);
    drop(l, timeout, why);
}

void redis_link_fail_protocol(RedisLink *l, const char *what) {
    drop(l, false, what);
}

size_t redis_link_replies(RedisLink *l, redisContext *c, redisReply **replies, size_t n) {
    size_t got = 0;
    for (; got < n; got++) {
        if (redisGetReply(c, (void **)&replies[got]) != REDIS_OK) {
            redis_link_fail(l, errno);
            break;
        }
    }
    for (size_t i = got; i < n; i++) replies[i] = NULL;
    return got;
}

redisContext *redis_link_get(RedisLink *l) {
    if (l->ctx) return l->ctx;

    pthread_mutex_lock(&l->lock);
    l->ctx = l->ready;
    l->ready = NULL;
    pthread_mutex_unlock(&l->lock);
    return l->ctx;
}

/* --- the reconnect thread --- */

/* Equal jitter: a random wait in [delay/2, delay], so that instances sharing one Redis do
 * not all knock at the same moment after it returns. */
static uint64_t jitter(uint64_t delay, uint64_t *rng) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    return delay / 2 + *rng % (delay / 2 + 1);
}

/* Waits ms or until stop. Caller holds the lock. */
static void pause_locked(RedisLink *l, uint64_t ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    while (!l->stop && pthread_cond_timedwait(&l->wake, &l->lock, &ts) != ETIMEDOUT) {}
}

/* A refused password or database will not heal by itself: say so once per outage, at
 * error level, besides the outage's warning. Other failures are the outage itself. */
static void report_attempt(const RedisLink *l, ConnectResult res, const char *why,
                           unsigned attempts, uint64_t wait_ms, bool *refused_logged) {
    if (res == CONNECT_REFUSED && !*refused_logged) {
        pd_log(PD_LOG_ERR, REDIS_LOG_MOD, "redis %s: %s; retrying until it is fixed", l->name, why);
        *refused_logged = true;
        return;
    }
    pd_log(PD_LOG_DEBUG, REDIS_LOG_MOD,
           "redis %s: connection attempt %u failed (%s); next in %llu ms", l->name, attempts, why,
           (unsigned long long)wait_ms);
}

static void *link_main(void *arg) {
    RedisLink *l = arg;
    uint64_t rng = pd_mono_ns() ^ (uint64_t)(uintptr_t)l;
    uint64_t delay = 0;
    unsigned attempts = 0;
    bool refused_logged = false;
    char why[300];

    pthread_mutex_lock(&l->lock);
    while (!l->stop) {
        if (!l->want) {
            pthread_cond_wait(&l->wake, &l->lock);
            continue;
        }
        pthread_mutex_unlock(&l->lock);

        redisContext *c;
        ConnectResult res = link_connect(l, &c, why, sizeof why);
        attempts++;

        pthread_mutex_lock(&l->lock);
        if (res == CONNECT_OK) {
            l->ready = c;
            l->want = false;
            outage_end(l, attempts);
            delay = attempts = 0;
            refused_logged = false;
            continue;
        }
        count(&l->connect_failures, 1);
        delay = delay ? delay * 2 : (uint64_t)l->t.backoff_min_ms;
        if (delay > (uint64_t)l->t.backoff_max_ms) delay = (uint64_t)l->t.backoff_max_ms;
        uint64_t wait = jitter(delay, &rng);
        report_attempt(l, res, why, attempts, wait, &refused_logged);
        pause_locked(l, wait);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

/* With every signal blocked, so that SIGTERM and SIGHUP reach the main thread. */
static int start_thread(RedisLink *l) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&l->thread, NULL, link_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) pthread_setname_np(l->thread, "pd-redis");
    return rc;
}

/* --- open, close, stats --- */

static void link_free(RedisLink *l) {
    if (l->ctx) redisFree(l->ctx);
    if (l->ready) redisFree(l->ready);
    pthread_cond_destroy(&l->wake);
    pthread_mutex_destroy(&l->lock);
    explicit_bzero(&l->url, sizeof l->url);
    free(l);
}

static RedisLink *link_new(const RedisUrl *u, const RedisTimeouts *t) {
    RedisLink *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->url = *u;
    l->t = *t;
    if (l->t.backoff_min_ms <= 0) l->t.backoff_min_ms = BACKOFF_MIN_MS;
    if (l->t.backoff_max_ms <= 0) l->t.backoff_max_ms = BACKOFF_MAX_MS;
    if (l->t.backoff_max_ms < l->t.backoff_min_ms) l->t.backoff_max_ms = l->t.backoff_min_ms;
    redis_url_describe(u, l->name, sizeof l->name);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

int redis_link_open(RedisLink **out, const RedisUrl *u, const RedisTimeouts *t, char *err,
                    size_t errlen) {
    *out = NULL;
    PD_ASSERT(u->kind != REDIS_URL_NONE && t->connect_ms > 0 && t->command_ms > 0);
    RedisLink *l = link_new(u, t);
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return PD_ENOMEM;
    }

    char why[300];
    ConnectResult res = link_connect(l, &l->ctx, why, sizeof why);
    if (res == CONNECT_REFUSED) {
        snprintf(err, errlen, "redis %s: %s", l->name, why);
        link_free(l);
        return PD_ECONFIG;
    }
    if (res == CONNECT_OK) {
        atomic_store(&l->up, true);
        pd_log(PD_LOG_INFO, REDIS_LOG_MOD, "redis %s connected", l->name);
    } else {
        pthread_mutex_lock(&l->lock);
        outage_begin(l, why, true);
        pthread_mutex_unlock(&l->lock);
    }

    if (start_thread(l)) {
        snprintf(err, errlen, "cannot start the redis reconnect thread");
        link_free(l);
        return PD_ERR;
    }
    *out = l;
    return PD_OK;
}

void redis_link_close(RedisLink *l) {
    if (!l) return;
    pthread_mutex_lock(&l->lock);
    l->stop = true;
    pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    link_free(l);
}

RedisLinkStats redis_link_stats(const RedisLink *l) {
    RedisLinkStats s = {0};
    s.up = atomic_load(&l->up);
    if (!s.up) s.outage_ms_current = pd_mono_ms() - counter_read(&l->down_since_ms);
    s.outages = counter_read(&l->outages);
    s.outage_ms_total = counter_read(&l->outage_ms_done) + s.outage_ms_current;
    s.errors = counter_read(&l->errors);
    s.timeouts = counter_read(&l->timeouts);
    s.connect_failures = counter_read(&l->connect_failures);
    s.reconnects = counter_read(&l->reconnects);
    return s;
}
