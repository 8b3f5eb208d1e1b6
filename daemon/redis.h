/*
 * A connection to Redis that survives Redis: the redis.url syntax, connecting with AUTH and
 * SELECT under a connect timeout, a command timeout on every read and write, and a small
 * background thread that reconnects with capped exponential backoff and jitter, so that
 * the serving thread never waits for a connect.
 *
 * The serving thread asks for the connection before each round trip and gets NULL while
 * Redis is unavailable; when a command fails it reports the failure, and the connection
 * is freed (a hiredis context is unusable after an error) and an outage begins. One
 * warning is logged when an outage begins and one notice when it ends.
 *
 * It sends no commands of its own beyond the handshake (AUTH, SELECT, PING): what to read
 * and write is the caller's business (see cache.h, journal.h and session.h, which share one
 * link: each finishes its round trip before it returns, so their replies never interleave).
 * No TLS: hiredis 0.14 has none. The process must ignore SIGPIPE (main does): hiredis
 * writes with write(2).
 */
#ifndef PD_REDIS_H
#define PD_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

typedef enum {
    REDIS_URL_NONE, /* "none": no Redis at all */
    REDIS_URL_TCP,
    REDIS_URL_UNIX,
} RedisUrlKind;

/* A parsed redis.url:
 *   none
 *   redis://[[user]:password@]host[:port][/db]     host may be [IPv6]; port 6379, db 0
 *   unix://[[user]:password@]/path/to/socket[?db=N]
 * user and password are percent-decoded (%40 for '@'); a user name means AUTH user
 * password (Redis 6 ACL), no user means AUTH password. */
typedef struct {
    RedisUrlKind kind;
    char host[256]; /* TCP: a name or an address, without the IPv6 brackets */
    int port;       /* TCP: 1 to 65535 */
    char path[108]; /* unix: an absolute path, within the limit of sockaddr_un */
    int db;         /* SELECT when not 0 */
    char user[128];
    char password[512]; /* "" = no AUTH */
} RedisUrl;

/* Parses s into u. Returns 0, or PD_ECONFIG with a message saying what is wrong (without
 * the key's name, which the caller adds). */
int redis_url_parse(RedisUrl *u, const char *s, char *err, size_t errlen);

/* The URL without its password, for log lines: "redis://app@10.0.0.5:6379/2". */
const char *redis_url_describe(const RedisUrl *u, char *buf, size_t len);

typedef struct {
    int64_t connect_ms;     /* a connect and its handshake, on the reconnect thread */
    int64_t command_ms;     /* each blocking read or write on the serving thread */
    int64_t backoff_min_ms; /* first wait after a failed attempt (0: 100 ms), doubled ... */
    int64_t backoff_max_ms; /* ... up to this (0: 5 s); each wait is jittered down to half */
} RedisTimeouts;

typedef struct RedisLink RedisLink;

/* Connects once, on the calling thread, then starts the reconnect thread. Redis being
 * unreachable is not an error: the link starts in an outage and keeps trying. A password
 * or database that Redis refuses is (PD_ECONFIG), as is a thread that cannot start
 * (PD_ERR); err says which. u must not be REDIS_URL_NONE. */
int redis_link_open(RedisLink **out, const RedisUrl *u, const RedisTimeouts *t, char *err,
                    size_t errlen);

/* Stops the reconnect thread and frees all. Waits for an attempt in progress: a connect
 * and each handshake reply are bounded by the connect timeout (name resolution is not). */
void redis_link_close(RedisLink *l);

/* The connection to use for the next round trip, or NULL while Redis is unavailable.
 * Never blocks on the network. Serving thread only. The context stays the link's. */
redisContext *redis_link_get(RedisLink *l);

/* The connection from redis_link_get failed in a hiredis call; errno_saved is errno just
 * after it (EAGAIN marks a command timeout). Frees the connection, counts the failure and,
 * unless one is already open, starts an outage. Serving thread only. */
void redis_link_fail(RedisLink *l, int errno_saved);

/* The server's answer made no sense (what says how): handled as a failed connection. */
void redis_link_fail_protocol(RedisLink *l, const char *what);

/* Sends the n commands appended on c (the context from redis_link_get) and reads their
 * replies into replies[0, n), in order. On a failure it calls redis_link_fail, leaves the
 * rest NULL and returns how many were read: a command without a reply may or may not have
 * run. The caller frees each reply. Serving thread only. */
size_t redis_link_replies(RedisLink *l, redisContext *c, redisReply **replies, size_t n);

/* Counters and state, readable from any thread. */
typedef struct {
    bool up;                    /* a connection is ready or in use */
    uint64_t outages;           /* outages begun, including one at start-up */
    uint64_t outage_ms_total;   /* time without Redis, the current outage included */
    uint64_t outage_ms_current; /* 0 while up */
    uint64_t errors;            /* failed commands: I/O, closed connection, protocol */
    uint64_t timeouts;          /* commands that got no reply within the command timeout */
    uint64_t connect_failures;  /* failed connection attempts */
    uint64_t reconnects;        /* outages ended by a new connection */
} RedisLinkStats;

RedisLinkStats redis_link_stats(const RedisLink *l);

#endif
