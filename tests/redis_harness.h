/*
 * A real redis-server for tests and benchmarks: started on a free 127.0.0.1 port, and on a
 * unix socket, in a scratch directory of its own, without persistence (so a restart is a
 * cold, empty server); killed, restarted on the same port, frozen and thawed. Helpers
 * connect with AUTH and SELECT, run one command, and make the server sleep (DEBUG SLEEP)
 * from a second connection without waiting for it.
 *
 * Every wait is bounded. Not for production: the configuration is made for tests.
 */
#ifndef PD_TEST_REDIS_HARNESS_H
#define PD_TEST_REDIS_HARNESS_H

#include <stdbool.h>

#include <hiredis/hiredis.h>

#include "harness.h"

typedef struct {
    Proc proc;
    int port;
    bool running;
    char dir[256];     /* scratch directory: redis.conf, redis.log, redis.sock */
    char sock[300];    /* the unix socket */
    char password[64]; /* requirepass, "" for none */
} RedisServer;

typedef struct {
    const char *password; /* requirepass, or NULL */
    const char *config;   /* more redis.conf lines, or NULL */
} RedisServerOptions;

/* A port nobody listens on now (bound and released), or -1. */
int rserver_free_port(void);

/* Writes the configuration and starts the server, waiting until it answers. opt may be
 * NULL. Returns 0 or -1 (the server's log is in dir/redis.log). */
int rserver_start(RedisServer *r, const RedisServerOptions *opt);

/* Starts the server again on the same port and socket, empty; kills it first if it runs. */
int rserver_restart(RedisServer *r);

/* SIGKILL, and reaps it. */
void rserver_kill(RedisServer *r);

/* SIGSTOP and SIGCONT: a hung server whose sockets still accept connections. */
void rserver_freeze(RedisServer *r);
void rserver_thaw(RedisServer *r);

/* Stops the server and removes its directory (kept with PROMPTD_KEEP_TEST_FILES=1). */
void rserver_stop(RedisServer *r);

/* redis://[:password@]127.0.0.1:port/db into buf. */
const char *rserver_url(const RedisServer *r, int db, char *buf, size_t len);

/* A connection with AUTH and SELECT done and a 5 s timeout, or NULL. The caller frees it. */
redisContext *rserver_client(const RedisServer *r, int db);

/* Runs one command on a fresh connection. Returns the reply (the caller frees it) or NULL. */
redisReply *rserver_command(const RedisServer *r, int db, const char *fmt, ...);

/* As rserver_command, for commands whose reply does not matter; true if it was not an
 * error. */
bool rserver_run(const RedisServer *r, int db, const char *fmt, ...);

/* Sends DEBUG SLEEP ms on a connection of its own and returns once the server sleeps,
 * without waiting for the reply: every other client is stalled meanwhile. Returns the
 * connection for rserver_sleep_end, or NULL. */
redisContext *rserver_sleep(const RedisServer *r, int ms);

/* Waits for the DEBUG SLEEP's reply and closes its connection. */
void rserver_sleep_end(redisContext *c);

#endif
