/*
 * Session context: what the policy knows about the earlier turns of a session (an
 * incident, a conversation) when it chooses a template for the next prompt: the turn
 * index, the previous template and its reward, and the running mean of the session's
 * semantic vectors.
 *
 * What lives where, and why:
 *
 * - Redis (when a link is given and Redis answers) holds every session, so that a restart
 *   or another instance serving the next prompt of a session still has its context: a
 *   hash <prefix>s:<id> with t (turn), p (previous template hash), r and h (previous
 *   reward, and whether there is one), n (vectors in the mean), v (the mean: dim float32,
 *   little-endian) and w (ms of the last decision), living session.ttl after the last
 *   decision.
 * - Memory holds the sessions seen lately, bounded and forgotten after the TTL as before:
 *   a read cache (a copy read from Redis is used for SESSION_FRESH_MS, then read again)
 *   and a write-behind buffer (a decision updates memory at once and is written to Redis
 *   with the next flush: session_flush, a read that goes to Redis, or 64 pending writes or
 *   a pending write older than SESSION_FRESH_MS). While Redis is unavailable memory is the
 *   store; what was decided meanwhile is written when Redis answers again, and a session
 *   Redis has lost (a cold restart) is written back from memory.
 * - With no link (redis.url none), memory only.
 *
 * Known shortcomings:
 * - A state is written whole (last writer wins): if two instances decide for one session
 *   within SESSION_FRESH_MS (a partition moving between them), one turn can be lost. It
 *   only costs the policy some context; merging the mean server-side in a script would
 *   lift it, at a cost of dim multiplications per decision on the Redis thread.
 * - A reward for a session held in no memory is queued (at most SESSION_QUEUE_MAX) and
 *   written as an update of r and h if the session exists in Redis; beyond the queue,
 *   during a long outage, rewards are dropped (redis_dropped).
 *
 * Threads: one thread (the serving thread) uses a store; the link is shared with the cache
 * and the journal on that thread. Every call waits for Redis at most one command timeout
 * per round trip.
 */
#ifndef PD_SESSION_H
#define PD_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct RedisLink;

#define SESSION_FRESH_MS  1000 /* a copy read from Redis is used this long */
#define SESSION_QUEUE_MAX 4096 /* rewards for sessions not in memory, waiting for Redis */

typedef struct {
    uint32_t turn;          /* decisions made in the session so far */
    uint64_t prev_template; /* hash of the previous decision's template name; 0: none */
    double prev_reward;     /* the reward of the previous decision, if has_reward */
    bool has_reward;
    uint32_t count;    /* vectors in the mean */
    const float *mean; /* [dim] running mean of the session's vectors */
} SessionView;

typedef struct SessionStore SessionStore;

/* A store for vectors of dim floats. Sessions unseen for ttl_ms are forgotten; at most
 * max_sessions are held in memory. link: Redis, shared and not owned (it must outlive the
 * store), or NULL for memory only. prefix: the start of every key ("promptd:<kafka.group.
 * id>:"); copied. Returns NULL when out of memory. */
SessionStore *session_new(int dim, int64_t ttl_ms, size_t max_sessions, struct RedisLink *link,
                          const char *prefix);

/* Writes what is pending to Redis when it answers (bounded round trips), then frees all. */
void session_free(SessionStore *s);

/* The context of session id (zeroed when the session is new or forgotten). The view is
 * valid until the next call. Reads Redis (one round trip) unless memory has a fresh copy
 * or a newer one of its own. */
SessionView session_get(SessionStore *s, const char *id, size_t len, int64_t now_ms);

/* Reads the sessions of a batch that memory has no fresh copy of, with what is pending
 * to be written, in one round trip: the session_get calls that follow need none. */
void session_prefetch(SessionStore *s, const char *const *ids, const size_t *lens, size_t n,
                      int64_t now_ms);

/* Records a decision of the session: the turn advances, the template becomes the previous
 * one, the vector joins the mean. Returns 0 or -1 (out of memory: the context is lost,
 * which only costs the policy some context). */
int session_decided(SessionStore *s, const char *id, size_t len, uint64_t template_hash,
                    const float *vector, int64_t now_ms);

/* Records the reward of the session's latest decision. */
void session_rewarded(SessionStore *s, const char *id, size_t len, double reward, int64_t now_ms);

/* Writes every pending update to Redis (one round trip per 512), if it answers. For the
 * serving loop to call between batches, so that other instances see this one's turns. */
void session_flush(SessionStore *s, int64_t now_ms);

/* Sessions held in memory now. */
size_t session_count(const SessionStore *s);

typedef struct {
    size_t sessions;          /* held in memory */
    bool redis_enabled;       /* a link was given */
    uint64_t redis_reads;     /* sessions read from Redis */
    uint64_t redis_hits;      /* of those, found there */
    uint64_t redis_writes;    /* states and rewards Redis stored */
    uint64_t redis_fallbacks; /* reads and flushes that found Redis unavailable: memory served */
    uint64_t redis_errors;    /* error replies and failed round trips */
    uint64_t redis_corrupt;   /* values that made no sense: ignored, then overwritten */
    uint64_t redis_dropped;   /* updates lost before Redis took them: memory was full */
} SessionStats;

SessionStats session_stats(const SessionStore *s);

#endif
