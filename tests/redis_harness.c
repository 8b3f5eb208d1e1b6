/* A redis-server per test: configuration, start, stop, signals and client helpers. */
#include "redis_harness.h"

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define START_TIMEOUT_MS 10000

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

int rserver_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int port = -1;
    if (!bind(fd, (struct sockaddr *)&sa, sizeof sa) &&
        !getsockname(fd, (struct sockaddr *)&sa, &len))
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* --- configuration and process --- */

static int write_config(const RedisServer *r, const RedisServerOptions *opt) {
    char path[512];
    FILE *f = fopen(harness_path(path, sizeof path, r->dir, "redis.conf"), "w");
    if (!f) return -1;
    /* No persistence: a restart is a cold server, the case the cache must tolerate. The
     * DEBUG command (DEBUG SLEEP) is off by default since Redis 7. */
    fprintf(f,
            "bind 127.0.0.1\nport %d\nunixsocket %s\nunixsocketperm 700\ndir %s\n"
            "save \"\"\nappendonly no\ndaemonize no\nlogfile \"\"\n"
            "enable-debug-command local\n",
            r->port, r->sock, r->dir);
    if (r->password[0]) fprintf(f, "requirepass %s\n", r->password);
    if (opt && opt->config) fprintf(f, "%s\n", opt->config);
    return fclose(f);
}

/* A raw connection, without AUTH, with short timeouts. */
static redisContext *connect_raw(const RedisServer *r, int timeout_ms) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (c && !c->err && redisSetTimeout(c, tv) == REDIS_OK) return c;
    if (c) redisFree(c);
    return NULL;
}

/* Up means answering PING, even if only with -NOAUTH. */
static bool answers(const RedisServer *r) {
    redisContext *c = connect_raw(r, 200);
    if (!c) return false;
    redisReply *reply = redisCommand(c, "PING");
    bool ok = reply != NULL;
    if (reply) freeReplyObject(reply);
    redisFree(c);
    return ok;
}

static int launch(RedisServer *r) {
    char conf[512], log[512];
    harness_path(conf, sizeof conf, r->dir, "redis.conf");
    harness_path(log, sizeof log, r->dir, "redis.log");
    char *argv[] = {"redis-server", conf, NULL};
    if (proc_start(&r->proc, argv, NULL, log, log)) return -1;

    long long deadline = harness_now_ms() + START_TIMEOUT_MS;
    while (harness_now_ms() < deadline) {
        if (proc_wait(&r->proc, 0) >= 0) return -1; /* exited: the port was taken? */
        if (answers(r)) {
            r->running = true;
            return 0;
        }
        sleep_ms(10);
    }
    proc_signal(&r->proc, SIGKILL);
    return -1;
}

int rserver_start(RedisServer *r, const RedisServerOptions *opt) {
    memset(r, 0, sizeof *r);
    const char *base = getenv("TMPDIR");
    snprintf(r->dir, sizeof r->dir, "%s/promptd-redis-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(r->dir)) return -1;
    harness_path(r->sock, sizeof r->sock, r->dir, "redis.sock");
    if (opt && opt->password) snprintf(r->password, sizeof r->password, "%s", opt->password);

    /* Another process may take the free port before redis-server binds it: try again. */
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = rserver_free_port();
        if (r->port > 0 && !write_config(r, opt) && !launch(r)) return 0;
    }
    return -1;
}

int rserver_restart(RedisServer *r) {
    if (r->running) rserver_kill(r);
    return launch(r);
}

void rserver_kill(RedisServer *r) {
    if (!r->running) return;
    proc_signal(&r->proc, SIGKILL);
    r->running = false;
}

void rserver_freeze(RedisServer *r) {
    proc_signal(&r->proc, SIGSTOP);
}

void rserver_thaw(RedisServer *r) {
    proc_signal(&r->proc, SIGCONT);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void rserver_stop(RedisServer *r) {
    if (r->running) {
        proc_signal(&r->proc, SIGCONT); /* a frozen server would not see SIGTERM */
        proc_stop(&r->proc);
        r->running = false;
    }
    if (r->dir[0] && !getenv("PROMPTD_KEEP_TEST_FILES"))
        nftw(r->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    r->dir[0] = 0;
}

/* --- clients --- */

const char *rserver_url(const RedisServer *r, int db, char *buf, size_t len) {
    snprintf(buf, len, "redis://%s%s%s127.0.0.1:%d/%d", r->password[0] ? ":" : "", r->password,
             r->password[0] ? "@" : "", r->port, db);
    return buf;
}

static bool ok_reply(redisReply *reply) {
    bool ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply) freeReplyObject(reply);
    return ok;
}

redisContext *rserver_client(const RedisServer *r, int db) {
    redisContext *c = connect_raw(r, 5000);
    if (!c) return NULL;
    if (r->password[0] && !ok_reply(redisCommand(c, "AUTH %s", r->password))) goto fail;
    if (db && !ok_reply(redisCommand(c, "SELECT %d", db))) goto fail;
    return c;
fail:
    redisFree(c);
    return NULL;
}

static redisReply *command_v(const RedisServer *r, int db, const char *fmt, va_list ap) {
    redisContext *c = rserver_client(r, db);
    if (!c) return NULL;
    redisReply *reply = redisvCommand(c, fmt, ap);
    redisFree(c);
    return reply;
}

redisReply *rserver_command(const RedisServer *r, int db, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = command_v(r, db, fmt, ap);
    va_end(ap);
    return reply;
}

bool rserver_run(const RedisServer *r, int db, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = command_v(r, db, fmt, ap);
    va_end(ap);
    return ok_reply(reply);
}

redisContext *rserver_sleep(const RedisServer *r, int ms) {
    redisContext *c = rserver_client(r, 0);
    if (!c) return NULL;
    redisAppendCommand(c, "DEBUG SLEEP %d.%03d", ms / 1000, ms % 1000);
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            redisFree(c);
            return NULL;
        }

    /* The server reads the command at its next event-loop turn; once PING goes
     * unanswered it is asleep. */
    for (int i = 0; i < 50; i++) {
        redisContext *probe = connect_raw(r, 20);
        redisReply *reply = probe ? redisCommand(probe, "PING") : NULL;
        if (reply) freeReplyObject(reply);
        if (probe) redisFree(probe);
        if (!reply) return c;
        sleep_ms(2);
    }
    redisFree(c);
    return NULL;
}

void rserver_sleep_end(redisContext *c) {
    if (!c) return;
    redisReply *reply;
    if (redisGetReply(c, (void **)&reply) == REDIS_OK) freeReplyObject(reply);
    redisFree(c);
}
