/*
 * The embedding cache: keys, the value format, the L1 LRU and the batch paths to Redis.
 * Connecting, timeouts and outages are redis.c's; this file only decides what one batch
 * reads and writes, and what a reply means.
 */
#include "cache.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "log.h"
#include "pd.h"
#include "redis.h"

/* Until log.h has a "cache" module. */
#define CACHE_LOG_MOD PD_MOD_CACHE

/* What malloc adds to each entry (glibc: an 8-byte size word, rounded up to 16), so that
 * the L1 budget is the memory the process really spends. */
#define L1_ALLOC_OVERHEAD 16
#define L1_MIN_BUCKETS    64
#define NAME_STRIDE       (CACHE_REDIS_KEY_LEN + 1)

typedef atomic_uint_fast64_t Counter;

static void count(Counter *counter, uint64_t n) {
    if (n) atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

static uint64_t counter_read(const Counter *counter) {
    return atomic_load_explicit(counter, memory_order_relaxed);
}

/* --- keys --- */

void cache_key(CacheKey *k, uint64_t model_id, const char *text, size_t len) {
    XXH128_hash_t h = XXH3_128bits(text, len);
    k->model = model_id;
    k->lo = h.low64;
    k->hi = h.high64;
}

static char *put_hex(char *out, uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    for (int shift = 60; shift >= 0; shift -= 4) *out++ = digits[(v >> shift) & 15];
    return out;
}

void cache_key_format(const CacheKey *k, char *out) {
    memcpy(out, CACHE_KEY_PREFIX, sizeof CACHE_KEY_PREFIX - 1);
    char *p = put_hex(out + sizeof CACHE_KEY_PREFIX - 1, k->model);
    *p++ = ':';
    p = put_hex(p, k->hi);
    p = put_hex(p, k->lo);
    *p = 0;
}

static bool key_equal(const CacheKey *a, const CacheKey *b) {
    return a->lo == b->lo && a->hi == b->hi && a->model == b->model;
}

/* --- values --- */

static void store_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void store_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load_le64(const unsigned char *p) {
    return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

static size_t value_size(int dim) {
    return CACHE_VALUE_HEADER + (size_t)dim * sizeof(float);
}

static bool all_finite(const float *v, int dim) {
    for (int i = 0; i < dim; i++)
        if (!isfinite(v[i])) return false;
    return true;
}

static void value_encode(unsigned char *out, const float *v, int dim) {
    unsigned char *payload = out + CACHE_VALUE_HEADER;
    for (int i = 0; i < dim; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        store_le32(payload + 4 * i, bits);
    }
    memcpy(out, "pdv", 3);
    out[3] = CACHE_VALUE_VERSION;
    store_le32(out + 4, (uint32_t)dim);
    store_le64(out + 8, XXH64(payload, (size_t)dim * sizeof(float), 0));
}

/* Decodes a value into out. Returns NULL, or what is wrong with it; out may then hold
 * part of it. */
static const char *value_decode(float *out, const char *buf, size_t len, int dim) {
    const unsigned char *p = (const unsigned char *)buf;
    if (len != value_size(dim)) return "wrong size";
    if (memcmp(p, "pdv", 3) || p[3] != CACHE_VALUE_VERSION) return "unknown format or version";
    if (load_le32(p + 4) != (uint32_t)dim) return "wrong dimension";
    if (load_le64(p + 8) != XXH64(p + CACHE_VALUE_HEADER, (size_t)dim * sizeof(float), 0))
        return "bad checksum";

    for (int i = 0; i < dim; i++) {
        uint32_t bits = load_le32(p + CACHE_VALUE_HEADER + 4 * i);
        memcpy(&out[i], &bits, sizeof bits);
    }
    return all_finite(out, dim) ? NULL : "not finite";
}

/* --- L1: a hash table of chains, and a list from most to least recently used --- */

typedef struct L1Entry L1Entry;
struct L1Entry {
    CacheKey key;
    L1Entry *chain;         /* next in the same bucket */
    L1Entry *newer, *older; /* neighbours in the LRU list */
    int dim;
    float vec[];
};

typedef struct {
    L1Entry **buckets;
    size_t nbuckets; /* a power of two, or 0 before the first entry */
    size_t count;
    size_t bytes; /* entries (with their allocation overhead) and the bucket array */
    size_t budget;
    L1Entry *newest, *oldest;
} L1;

static size_t l1_cost(int dim) {
    return sizeof(L1Entry) + (size_t)dim * sizeof(float) + L1_ALLOC_OVERHEAD;
}

static L1Entry **l1_bucket(const L1 *l1, const CacheKey *k) {
    /* lo is already a good hash; the model id is mixed in so that two models' keys for
     * one text do not share a chain. */
    uint64_t h = k->lo ^ (k->model * 0x9e3779b97f4a7c15u);
    return &l1->buckets[h & (l1->nbuckets - 1)];
}

static L1Entry *l1_find(const L1 *l1, const CacheKey *k) {
    if (!l1->count) return NULL;
    for (L1Entry *e = *l1_bucket(l1, k); e; e = e->chain)
        if (key_equal(&e->key, k)) return e;
    return NULL;
}

static void lru_unlink(L1 *l1, L1Entry *e) {
    if (e->newer)
        e->newer->older = e->older;
    else
        l1->newest = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        l1->oldest = e->newer;
}

static void lru_push(L1 *l1, L1Entry *e) {
    e->newer = NULL;
    e->older = l1->newest;
    if (l1->newest) l1->newest->newer = e;
    l1->newest = e;
    if (!l1->oldest) l1->oldest = e;
}

static void l1_remove(L1 *l1, L1Entry *e) {
    L1Entry **link = l1_bucket(l1, &e->key);
    while (*link != e) link = &(*link)->chain;
    *link = e->chain;
    lru_unlink(l1, e);
    l1->count--;
    l1->bytes -= l1_cost(e->dim);
    free(e);
}

/* Evicts from the old end until need more bytes fit. Returns how many went. */
static uint64_t l1_make_room(L1 *l1, size_t need) {
    uint64_t evicted = 0;
    while (l1->oldest && l1->bytes + need > l1->budget) {
        l1_remove(l1, l1->oldest);
        evicted++;
    }
    return evicted;
}

/* Doubles the bucket array. Returns false when out of memory. */
static bool l1_grow(L1 *l1) {
    size_t n = l1->nbuckets ? l1->nbuckets * 2 : L1_MIN_BUCKETS;
    L1Entry **grown = calloc(n, sizeof *grown);
    if (!grown) return false;

    L1Entry **old = l1->buckets;
    size_t nold = l1->nbuckets;
    l1->buckets = grown;
    l1->nbuckets = n;
    for (size_t b = 0; b < nold; b++) {
        for (L1Entry *e = old[b], *next; e; e = next) {
            next = e->chain;
            L1Entry **head = l1_bucket(l1, &e->key);
            e->chain = *head;
            *head = e;
        }
    }
    free(old);
    l1->bytes += (n - nold) * sizeof *grown;
    return true;
}

static bool l1_get(L1 *l1, const CacheKey *k, int dim, float *out) {
    L1Entry *e = l1_find(l1, k);
    if (!e || e->dim != dim) return false;
    memcpy(out, e->vec, (size_t)dim * sizeof(float));
    lru_unlink(l1, e);
    lru_push(l1, e);
    return true;
}

/* Stores a copy of v. Returns the number of entries evicted to make room. */
static uint64_t l1_put(L1 *l1, const CacheKey *k, int dim, const float *v) {
    if (!l1->budget) return 0;
    L1Entry *e = l1_find(l1, k);
    if (e && e->dim == dim) {
        memcpy(e->vec, v, (size_t)dim * sizeof(float));
        lru_unlink(l1, e);
        lru_push(l1, e);
        return 0;
    }
    if (e) l1_remove(l1, e);

    size_t cost = l1_cost(dim);
    uint64_t evicted = l1_make_room(l1, cost);
    if (l1->count + 1 > l1->nbuckets) {
        if (!l1_grow(l1)) return evicted;
        evicted += l1_make_room(l1, cost);
    }
    if (l1->bytes + cost > l1->budget) return evicted; /* the index alone fills the budget */

    e = malloc(sizeof *e + (size_t)dim * sizeof(float));
    if (!e) return evicted;
    e->key = *k;
    e->dim = dim;
    memcpy(e->vec, v, (size_t)dim * sizeof(float));
    L1Entry **head = l1_bucket(l1, k);
    e->chain = *head;
    *head = e;
    lru_push(l1, e);
    l1->count++;
    l1->bytes += cost;
    return evicted;
}

static void l1_free(L1 *l1) {
    for (L1Entry *e = l1->newest, *next; e; e = next) {
        next = e->older;
        free(e);
    }
    free(l1->buckets);
    memset(l1, 0, sizeof *l1);
}

/* --- the cache --- */

struct Cache {
    L1 l1;
    RedisLink *link; /* NULL with redis.url none */
    char ttl_arg[24];

    /* One batch's scratch, grown on demand. */
    size_t cap;        /* keys that fit */
    size_t *idx;       /* positions in the caller's arrays */
    char *names;       /* Redis keys, NUL-terminated, NAME_STRIDE bytes apart */
    const char **argv; /* MGET and its keys */
    size_t *argvlen;
    unsigned char *values; /* encoded values */
    size_t values_cap;

    bool reads_refused, writes_refused; /* an episode of error replies is open */
    bool corrupt_logged;

    Counter l1_hits, l1_misses, l1_evictions, l1_entries, l1_bytes;
    Counter l2_hits, l2_misses, l2_corrupt, l2_unavailable, l2_writes, l2_write_failures;
    Counter l2_error_replies, rejected;
};

/* Makes room for n keys and n values of value_bytes each. Returns false when out of
 * memory; what was there stays valid. */
static bool scratch_reserve(Cache *c, size_t n, size_t value_bytes) {
    if (n > c->cap) {
        size_t cap = n < 256 ? 256 : n;
        size_t *idx = realloc(c->idx, cap * sizeof *idx);
        if (idx) c->idx = idx;
        char *names = realloc(c->names, cap * NAME_STRIDE);
        if (names) c->names = names;
        const char **argv = realloc(c->argv, (cap + 1) * sizeof *argv);
        if (argv) c->argv = argv;
        size_t *argvlen = realloc(c->argvlen, (cap + 1) * sizeof *argvlen);
        if (argvlen) c->argvlen = argvlen;
        if (!idx || !names || !argv || !argvlen) return false;
        c->cap = cap;
    }
    if (n * value_bytes > c->values_cap) {
        unsigned char *values = realloc(c->values, n * value_bytes);
        if (!values) return false;
        c->values = values;
        c->values_cap = n * value_bytes;
    }
    return true;
}

static void publish_l1(Cache *c, uint64_t evicted) {
    count(&c->l1_evictions, evicted);
    atomic_store_explicit(&c->l1_entries, c->l1.count, memory_order_relaxed);
    atomic_store_explicit(&c->l1_bytes, c->l1.bytes, memory_order_relaxed);
}

/* An error reply (-OOM, -LOADING, -READONLY, -BUSY ...): logged once per episode. */
static void refused(bool *episode, const char *command, const char *reply) {
    if (*episode) return;
    *episode = true;
    pd_log(PD_LOG_WARNING, CACHE_LOG_MOD,
           "redis refused %s (%.200s); the cache %s until it accepts them again", command, reply,
           !strcmp(command, "MGET") ? "misses" : "skips its writes");
}

static void accepted(bool *episode, const char *command) {
    if (!*episode) return;
    *episode = false;
    pd_log(PD_LOG_NOTICE, CACHE_LOG_MOD, "redis accepts %s again", command);
}

static void note_corrupt(Cache *c, const char *name, const char *why) {
    int level = c->corrupt_logged ? PD_LOG_DEBUG : PD_LOG_WARNING;
    c->corrupt_logged = true;
    pd_log(level, CACHE_LOG_MOD,
           "ignoring the cached vector %s (%s); it is recomputed and overwritten (later ones are "
           "counted in l2_corrupt, logged at debug level)",
           name, why);
}

/* Copies the values of an MGET reply for the m keys c->idx[0, m). Returns the hits. */
static size_t take_values(Cache *c, const redisReply *r, const CacheKey *keys, size_t m, int dim,
                          float *vectors, bool *found) {
    size_t hits = 0, misses = 0, corrupt = 0;
    uint64_t evicted = 0;
    for (size_t j = 0; j < m; j++) {
        size_t i = c->idx[j];
        const redisReply *v = r->element[j];
        if (v->type == REDIS_REPLY_NIL) {
            misses++;
            continue;
        }
        const char *why = v->type == REDIS_REPLY_STRING
                              ? value_decode(vectors + i * (size_t)dim, v->str, v->len, dim)
                              : "not a string";
        if (why) {
            corrupt++;
            note_corrupt(c, c->argv[j + 1], why);
            continue;
        }
        found[i] = true;
        hits++;
        evicted += l1_put(&c->l1, &keys[i], dim, vectors + i * (size_t)dim);
    }
    count(&c->l2_hits, hits);
    count(&c->l2_misses, misses);
    count(&c->l2_corrupt, corrupt);
    publish_l1(c, evicted);
    return hits;
}

/* The L1 misses (found[i] false) in one MGET. Returns the hits. */
static size_t l2_get(Cache *c, const CacheKey *keys, size_t n, int dim, float *vectors, bool *found,
                     size_t m) {
    redisContext *rc = redis_link_get(c->link);
    if (!rc || !scratch_reserve(c, m, 0)) {
        count(&c->l2_unavailable, m);
        return 0;
    }

    c->argv[0] = "MGET";
    c->argvlen[0] = 4;
    for (size_t i = 0, j = 0; i < n; i++) {
        if (found[i]) continue;
        char *name = c->names + j * NAME_STRIDE;
        cache_key_format(&keys[i], name);
        c->idx[j] = i;
        c->argv[j + 1] = name;
        c->argvlen[j + 1] = CACHE_REDIS_KEY_LEN;
        j++;
    }

    redisReply *r = NULL;
    if (redisAppendCommandArgv(rc, (int)m + 1, c->argv, c->argvlen) != REDIS_OK ||
        redisGetReply(rc, (void **)&r) != REDIS_OK) {
        redis_link_fail(c->link, errno);
        count(&c->l2_unavailable, m);
        return 0;
    }

    size_t hits = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        count(&c->l2_error_replies, 1);
        count(&c->l2_unavailable, m);
        refused(&c->reads_refused, "MGET", r->str);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != m) {
        count(&c->l2_unavailable, m);
        redis_link_fail_protocol(c->link, "the reply to MGET is not an array of the keys");
    } else {
        accepted(&c->reads_refused, "MGET");
        hits = take_values(c, r, keys, m, dim, vectors, found);
    }
    freeReplyObject(r);
    return hits;
}

size_t cache_get(Cache *c, const CacheKey *keys, size_t n, int dim, float *vectors, bool *found) {
    PD_ASSERT(dim > 0 && dim <= CACHE_DIM_MAX);
    size_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        found[i] = l1_get(&c->l1, &keys[i], dim, vectors + i * (size_t)dim);
        hits += found[i];
    }
    count(&c->l1_hits, hits);
    count(&c->l1_misses, n - hits);

    if (hits == n || !c->link) return hits;
    return hits + l2_get(c, keys, n, dim, vectors, found, n - hits);
}

/* Reads the replies to m pipelined SETs. */
static void read_set_replies(Cache *c, redisContext *rc, size_t m) {
    size_t stored = 0, errors = 0;
    char first[200] = "";
    for (size_t j = 0; j < m; j++) {
        redisReply *r;
        if (redisGetReply(rc, (void **)&r) != REDIS_OK) {
            redis_link_fail(c->link, errno);
            break;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (!errors++) snprintf(first, sizeof first, "%s", r->str);
        } else {
            stored++;
        }
        freeReplyObject(r);
    }

    count(&c->l2_writes, stored);
    count(&c->l2_write_failures, m - stored);
    count(&c->l2_error_replies, errors);
    if (errors)
        refused(&c->writes_refused, "SET", first);
    else if (stored == m)
        accepted(&c->writes_refused, "SET");
}

/* Writes the m vectors at c->idx[0, m) with pipelined SET key value PX ttl. */
static void l2_put(Cache *c, const CacheKey *keys, size_t m, int dim, const float *vectors) {
    redisContext *rc = redis_link_get(c->link);
    size_t vsize = value_size(dim);
    if (!rc) {
        count(&c->l2_write_failures, m);
        return;
    }

    for (size_t j = 0; j < m; j++) {
        size_t i = c->idx[j];
        char name[CACHE_REDIS_KEY_LEN + 1];
        unsigned char *value = c->values + j * vsize;
        cache_key_format(&keys[i], name);
        value_encode(value, vectors + i * (size_t)dim, dim);

        const char *argv[5] = {"SET", name, (const char *)value, "PX", c->ttl_arg};
        size_t len[5] = {3, CACHE_REDIS_KEY_LEN, vsize, 2, strlen(c->ttl_arg)};
        if (redisAppendCommandArgv(rc, 5, argv, len) != REDIS_OK) {
            redis_link_fail(c->link, errno);
            count(&c->l2_write_failures, m);
            return;
        }
    }
    read_set_replies(c, rc, m);
}

void cache_put(Cache *c, const CacheKey *keys, size_t n, int dim, const float *vectors) {
    PD_ASSERT(dim > 0 && dim <= CACHE_DIM_MAX);
    bool room = scratch_reserve(c, n, value_size(dim));
    size_t m = 0, rejected = 0;
    uint64_t evicted = 0;
    for (size_t i = 0; i < n; i++) {
        const float *v = vectors + i * (size_t)dim;
        if (!all_finite(v, dim)) {
            rejected++;
            continue;
        }
        evicted += l1_put(&c->l1, &keys[i], dim, v);
        if (room) c->idx[m++] = i;
    }
    count(&c->rejected, rejected);
    publish_l1(c, evicted);

    if (!c->link) return;
    if (!room) {
        count(&c->l2_write_failures, n - rejected);
        return;
    }
    if (m) l2_put(c, keys, m, dim, vectors);
}

/* --- open, close, stats --- */

static int check_config(const CacheConfig *cfg, char *err, size_t errlen) {
    const char *what = NULL;
    if (cfg->l1_bytes < 0)
        what = "cache.l1_bytes must not be negative";
    else if (cfg->ttl_ms < 1)
        what = "cache.ttl must be at least 1 ms";
    else if (cfg->connect_timeout_ms < 1)
        what = "redis.connect_timeout must be at least 1 ms";
    else if (cfg->command_timeout_ms < 1)
        what = "redis.command_timeout must be at least 1 ms";
    else if (cfg->backoff_min_ms < 0 || cfg->backoff_max_ms < 0)
        what = "the reconnect backoff must not be negative";
    if (!what) return 0;
    snprintf(err, errlen, "%s", what);
    return PD_ECONFIG;
}

static int open_link(Cache *c, const CacheConfig *cfg, char *err, size_t errlen) {
    RedisUrl url;
    char why[256];
    int rc = redis_url_parse(&url, cfg->redis_url ? cfg->redis_url : "none", why, sizeof why);
    if (rc) {
        snprintf(err, errlen, "redis.url: %s", why);
        return rc;
    }

    if (url.kind != REDIS_URL_NONE) {
        RedisTimeouts t = {cfg->connect_timeout_ms, cfg->command_timeout_ms, cfg->backoff_min_ms,
                           cfg->backoff_max_ms};
        rc = redis_link_open(&c->link, &url, &t, err, errlen);
    }
    explicit_bzero(&url, sizeof url);
    return rc;
}

int cache_open(Cache **out, const CacheConfig *cfg, char *err, size_t errlen) {
    *out = NULL;
    int rc = check_config(cfg, err, errlen);
    if (rc) return rc;

    Cache *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return PD_ENOMEM;
    }
    c->l1.budget = (size_t)cfg->l1_bytes;
    snprintf(c->ttl_arg, sizeof c->ttl_arg, "%lld", (long long)cfg->ttl_ms);

    rc = open_link(c, cfg, err, errlen);
    if (rc) {
        free(c);
        return rc;
    }
    *out = c;
    return PD_OK;
}

void cache_close(Cache *c) {
    if (!c) return;
    redis_link_close(c->link);
    l1_free(&c->l1);
    free(c->idx);
    free(c->names);
    free(c->argv);
    free(c->argvlen);
    free(c->values);
    free(c);
}

struct RedisLink *cache_redis_link(Cache *c) {
    return c->link;
}

CacheStats cache_stats(const Cache *c) {
    CacheStats s = {0};
    s.l1_hits = counter_read(&c->l1_hits);
    s.l1_misses = counter_read(&c->l1_misses);
    s.l1_evictions = counter_read(&c->l1_evictions);
    s.l1_entries = counter_read(&c->l1_entries);
    s.l1_bytes = counter_read(&c->l1_bytes);
    s.l2_hits = counter_read(&c->l2_hits);
    s.l2_misses = counter_read(&c->l2_misses);
    s.l2_corrupt = counter_read(&c->l2_corrupt);
    s.l2_unavailable = counter_read(&c->l2_unavailable);
    s.l2_writes = counter_read(&c->l2_writes);
    s.l2_write_failures = counter_read(&c->l2_write_failures);
    s.l2_error_replies = counter_read(&c->l2_error_replies);
    s.rejected = counter_read(&c->rejected);
    if (!c->link) return s;

    RedisLinkStats r = redis_link_stats(c->link);
    s.l2_enabled = true;
    s.l2_up = r.up;
    s.l2_errors = r.errors;
    s.l2_timeouts = r.timeouts;
    s.outages = r.outages;
    s.outage_ms_total = r.outage_ms_total;
    s.outage_ms_current = r.outage_ms_current;
    s.connect_failures = r.connect_failures;
    s.reconnects = r.reconnects;
    return s;
}
