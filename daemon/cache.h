/*
 * The embedding cache in front of the encoder: an in-process LRU (L1) with a memory
 * budget, and Redis (L2) shared by every instance. Keyed by (model id, 128-bit hash of
 * the normalised text), so a new model changes every key and never meets a stale vector.
 *
 * A batch costs at most one round trip to Redis per call: cache_get looks up all its L1
 * misses with one MGET, cache_put stores them with pipelined SET ... PX. Redis is never
 * the source of truth: when it is down, slow or refusing commands, lookups miss (the caller
 * encodes), writes are skipped, and nothing fails or waits longer than the command timeout.
 * A value that fails its checks is a miss, counted, and overwritten by the caller's put.
 *
 * Redis key:   pd:e:<model id, 16 hex>:<text hash, 32 hex: high then low 64 bits>
 * Redis value: 16-byte header, then dim float32, all little-endian:
 *              "pdv" | version 1 (1 byte) | dim (u32) | XXH64 of the float bytes (u64)
 *
 * Threads: cache_get, cache_put and cache_close are called by one thread (the serving
 * thread); cache_stats by any. Reconnecting runs on a thread of its own (see redis.h).
 * Does not normalise text (the caller passes normalised text) and never encodes.
 */
#ifndef PD_CACHE_H
#define PD_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_DIM_MAX       16384
#define CACHE_KEY_PREFIX    "pd:e:"
#define CACHE_REDIS_KEY_LEN 54 /* prefix, 16 hex, ':', 32 hex */
#define CACHE_VALUE_VERSION 1
#define CACHE_VALUE_HEADER  16

typedef struct Cache Cache;

typedef struct {
    uint64_t model;  /* the model id: XXH64 of the encoder's weights */
    uint64_t lo, hi; /* XXH3-128 of the normalised text */
} CacheKey;

typedef struct {
    const char *redis_url;      /* see redis.h; "none" or NULL: L1 only */
    int64_t l1_bytes;           /* L1 budget: vectors, entries and index; 0 = no L1 */
    int64_t ttl_ms;             /* expiry of what is written to Redis */
    int64_t connect_timeout_ms; /* a connect with its handshake (background thread) */
    int64_t command_timeout_ms; /* each round trip of cache_get and cache_put */
    int64_t backoff_min_ms;     /* reconnect waits: 0 = 100 ms, doubling ... */
    int64_t backoff_max_ms;     /* ... up to this; 0 = 5 s */
} CacheConfig;

/* Counters since cache_open, readable from any thread. With Redis configured, each L1
 * miss ends as exactly one of l2_hits, l2_misses, l2_corrupt and l2_unavailable. */
typedef struct {
    uint64_t l1_hits, l1_misses;
    uint64_t l1_evictions;
    uint64_t l1_entries, l1_bytes; /* now; l1_bytes stays within CacheConfig.l1_bytes */

    bool l2_enabled;            /* a redis.url other than none */
    bool l2_up;                 /* connected now */
    uint64_t l2_hits;           /* valid vectors read from Redis (and copied into L1) */
    uint64_t l2_misses;         /* keys Redis did not have */
    uint64_t l2_corrupt;        /* values that failed size, header, checksum or finiteness */
    uint64_t l2_unavailable;    /* keys not looked up: Redis down, failing or refusing */
    uint64_t l2_writes;         /* vectors Redis stored */
    uint64_t l2_write_failures; /* vectors not stored, for the same reasons */
    uint64_t l2_error_replies;  /* -OOM, -LOADING, -READONLY, -BUSY ...: one per reply */
    uint64_t l2_errors;         /* failed round trips: I/O, closed connection, protocol */
    uint64_t l2_timeouts;       /* round trips with no reply within the command timeout */
    uint64_t outages;           /* times Redis became unavailable, start-up included */
    uint64_t outage_ms_total, outage_ms_current;
    uint64_t connect_failures, reconnects;

    uint64_t rejected; /* vectors cache_put refused to store: not finite */
} CacheStats;

/* The key of normalised text under a model id. */
void cache_key(CacheKey *k, uint64_t model_id, const char *text, size_t len);

/* The Redis key of k, NUL-terminated, into out (CACHE_REDIS_KEY_LEN + 1 bytes). */
void cache_key_format(const CacheKey *k, char *out);

/* Checks cfg, then connects to Redis once (bounded by the connect timeout). Redis being
 * unreachable is not an error: the cache starts with L1 only and reconnects in the
 * background. Returns 0, or PD_ECONFIG (a bad setting, or a password or database Redis
 * refuses), PD_ENOMEM or PD_ERR, with err naming the setting and what is wrong. */
int cache_open(Cache **out, const CacheConfig *cfg, char *err, size_t errlen);

/* Frees everything; waits for a reconnect attempt in progress (see redis_link_close). */
void cache_close(Cache *c);

/* Looks up n keys: in L1, then the L1 misses in one MGET (valid L2 hits are copied into
 * L1). vectors has n * dim floats; row i is filled when found[i] is true and unspecified
 * otherwise. Returns the number found. Waits for Redis at most the command timeout. */
size_t cache_get(Cache *c, const CacheKey *keys, size_t n, int dim, float *vectors, bool *found);

/* Stores n vectors in L1 and, with pipelined SET ... PX ttl, in Redis: one round trip.
 * A vector with a NaN or an infinity is stored nowhere (counted in rejected). */
void cache_put(Cache *c, const CacheKey *keys, size_t n, int dim, const float *vectors);

CacheStats cache_stats(const Cache *c);

/* The cache's Redis link, for the journal and the session store to share (one connection,
 * one reconnect thread, one outage); NULL with redis.url none. It stays the cache's: it
 * lives until cache_close, so close the journal and sessions first. Serving thread only. */
struct RedisLink *cache_redis_link(Cache *c);

#endif
