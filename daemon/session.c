/*
 * The session store: a hash map plus a recency list in memory, and Redis behind it (see
 * session.h). Memory entries keep their id, for the Redis key, and whether they hold a
 * change Redis has not stored yet (dirty).
 */
#include "session.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"
#include "pd.h"
#include "redis.h"

#define SYNC_MAX 512 /* writes or reads per round trip: bounds the buffers */
#define FLUSH_AT 64  /* pending writes that start a flush without waiting */

/* KEYS: session. ARGV: t, p, r, h, n, v, w, ttl. */
static const char WRITE_SCRIPT[] =
    "redis.call('HSET', KEYS[1], 't', ARGV[1], 'p', ARGV[2], 'r', ARGV[3], 'h', ARGV[4],\n"
    "  'n', ARGV[5], 'v', ARGV[6], 'w', ARGV[7])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[8])\n"
    "return 1\n";

/* KEYS: session. ARGV: reward. A session Redis no longer has is not created: its other
 * fields would be missing. HSET keeps the key's TTL: a reward does not extend a session. */
static const char REWARD_SCRIPT[] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
                                    "redis.call('HSET', KEYS[1], 'r', ARGV[1], 'h', '1')\n"
                                    "return 1\n";

typedef struct Entry {
    struct Entry *prev, *next; /* recency: head is the least recently seen */
    uint64_t hash;
    int64_t seen_ms;   /* the last decision (read from Redis: wherever it was made) */
    int64_t synced_ms; /* last read from Redis */
    size_t dirty_at;   /* 1 + its place in SessionStore.dirty; 0: Redis has it */
    uint32_t turn, count;
    uint64_t prev_template;
    double prev_reward;
    bool has_reward;
    char *id; /* after mean, in the same allocation */
    size_t id_len;
    float mean[]; /* [dim] */
} Entry;

typedef struct {
    char *id;
    size_t len;
    double reward;
} RewardOp;

struct SessionStore {
    int dim;
    int64_t ttl_ms;
    size_t max;
    HashMap map;
    Entry *head, *tail;
    size_t len;

    RedisLink *link; /* NULL: memory only */
    char *prefix;    /* "<prefix>s:" */
    size_t prefix_len;
    char ttl_arg[24];
    char *key; /* scratch for one key */
    size_t key_cap;
    Entry **dirty; /* entries with a change Redis has not stored */
    size_t ndirty, dirty_cap;
    RewardOp *ops; /* rewards for Redis, in order */
    size_t nops;
    int64_t pending_since_ms; /* the oldest unwritten change, when ndirty + nops > 0 */
    Entry **sent;             /* one round trip's entries and replies */
    redisReply **replies;
    size_t replies_cap;
    unsigned char *values; /* encoded means, SYNC_MAX of them */
    SessionStats stats;
};

/* --- memory --- */

static uint64_t key_hash(const char *id, size_t len) {
    return hashmap_hash(id, len, 0x73657373696f6eu);
}

static void unlink_entry(SessionStore *s, Entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void append(SessionStore *s, Entry *e) {
    e->prev = s->tail;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
}

static void mark_dirty(SessionStore *s, Entry *e, int64_t now_ms) {
    if (e->dirty_at || !s->link) return;
    if (s->ndirty == s->dirty_cap) {
        size_t cap = s->dirty_cap ? s->dirty_cap * 2 : 64;
        Entry **grown = realloc(s->dirty, cap * sizeof *grown);
        if (!grown) return; /* Redis misses this change; memory keeps it */
        s->dirty = grown;
        s->dirty_cap = cap;
    }
    if (!s->ndirty && !s->nops) s->pending_since_ms = now_ms;
    s->dirty[s->ndirty++] = e;
    e->dirty_at = s->ndirty;
}

static void mark_clean(SessionStore *s, Entry *e) {
    if (!e->dirty_at) return;
    Entry *last = s->dirty[--s->ndirty];
    s->dirty[e->dirty_at - 1] = last;
    last->dirty_at = e->dirty_at;
    e->dirty_at = 0;
}

static void drop(SessionStore *s, Entry *e) {
    if (e->dirty_at) {
        s->stats.redis_dropped++;
        mark_clean(s, e);
    }
    unlink_entry(s, e);
    if (hashmap_get(&s->map, e->hash) == e) hashmap_remove(&s->map, e->hash);
    s->len--;
    free(e);
}

/* Forgets sessions past their TTL, and the least recently seen beyond capacity. */
static void expire(SessionStore *s, int64_t now_ms) {
    while (s->head && (now_ms - s->head->seen_ms > s->ttl_ms || s->len > s->max)) drop(s, s->head);
}

/* The entry of id, NULL if none or past its TTL (then forgotten). */
static Entry *find(SessionStore *s, const char *id, size_t len, int64_t now_ms) {
    Entry *e = hashmap_get(&s->map, key_hash(id, len));
    if (e && now_ms - e->seen_ms > s->ttl_ms) {
        drop(s, e);
        return NULL;
    }
    return e;
}

/* The entry of id, made (zeroed, most recently seen) if there is none. */
static Entry *make(SessionStore *s, const char *id, size_t len, int64_t now_ms) {
    uint64_t hash = key_hash(id, len);
    Entry *e = hashmap_get(&s->map, hash);
    if (e) return e;
    e = calloc(1, sizeof *e + (size_t)s->dim * sizeof(float) + len);
    if (!e) return NULL;
    e->hash = hash;
    e->id = (char *)(e->mean + s->dim);
    memcpy(e->id, id, len);
    e->id_len = len;
    e->seen_ms = now_ms;
    e->synced_ms = INT64_MIN;
    if (hashmap_put(&s->map, hash, e)) {
        free(e);
        return NULL;
    }
    append(s, e);
    s->len++;
    return e;
}

static void touch(SessionStore *s, Entry *e) {
    unlink_entry(s, e);
    append(s, e);
}

/* --- Redis: values --- */

static void store_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void mean_encode(unsigned char *out, const float *mean, int dim) {
    for (int i = 0; i < dim; i++) {
        uint32_t bits;
        memcpy(&bits, &mean[i], sizeof bits);
        store_le32(out + 4 * i, bits);
    }
}

static bool is_string(const redisReply *r) {
    return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

/* An unsigned decimal string reply, at most max. */
static bool reply_u64(const redisReply *r, uint64_t max, uint64_t *v) {
    if (!is_string(r) || r->len == 0 || r->len > 20) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < r->len; i++) {
        unsigned d = (unsigned)(r->str[i] - '0');
        if (d > 9 || x > (UINT64_MAX - d) / 10) return false;
        x = x * 10 + d;
    }
    *v = x;
    return x <= max;
}

static bool reply_f64(const redisReply *r, double *v) {
    char buf[64], *end;
    if (!is_string(r) || r->len == 0 || r->len >= sizeof buf) return false;
    memcpy(buf, r->str, r->len);
    buf[r->len] = 0;
    *v = strtod(buf, &end);
    return *end == 0 && isfinite(*v);
}

/* Reads the seven fields t p r h n v w into e when they all make sense. */
static bool take_fields(const SessionStore *s, Entry *e, redisReply *const *f) {
    uint64_t turn, tpl, has, count, seen;
    double reward;
    size_t vlen = (size_t)s->dim * sizeof(float);
    if (!reply_u64(f[0], UINT32_MAX, &turn) || !reply_u64(f[1], UINT64_MAX, &tpl) ||
        !reply_f64(f[2], &reward) || !reply_u64(f[3], 1, &has) ||
        !reply_u64(f[4], UINT32_MAX, &count) || !is_string(f[5]) || f[5]->len != vlen ||
        !reply_u64(f[6], INT64_MAX, &seen))
        return false;

    float *mean = malloc(vlen ? vlen : 1);
    if (!mean) return false;
    for (int i = 0; i < s->dim; i++) {
        uint32_t bits = load_le32((const unsigned char *)f[5]->str + 4 * i);
        memcpy(&mean[i], &bits, sizeof bits);
        if (!isfinite(mean[i])) {
            free(mean);
            return false;
        }
    }
    memcpy(e->mean, mean, vlen);
    free(mean);
    e->turn = (uint32_t)turn;
    e->prev_template = tpl;
    e->prev_reward = reward;
    e->has_reward = has != 0;
    e->count = (uint32_t)count;
    e->seen_ms = (int64_t)seen;
    return true;
}

/* --- Redis: round trips --- */

static const char *session_key(SessionStore *s, const char *id, size_t len, size_t *klen) {
    size_t need = s->prefix_len + len;
    if (need > s->key_cap) {
        char *grown = realloc(s->key, need);
        if (!grown) return NULL;
        s->key = grown;
        s->key_cap = need;
    }
    memcpy(s->key, s->prefix, s->prefix_len);
    memcpy(s->key + s->prefix_len, id, len);
    *klen = need;
    return s->key;
}

/* Queues one command naming key (NULL: it could not be built). On failure the connection,
 * holding a partly built pipeline that was never sent, is given up. */
static bool queue(SessionStore *s, redisContext *c, const char *key, int argc, const char **argv,
                  const size_t *len) {
    if (key && redisAppendCommandArgv(c, argc, argv, len) == REDIS_OK) return true;
    redis_link_fail_protocol(s->link, "out of memory building a command");
    return false;
}

static bool queue_reward(SessionStore *s, redisContext *c, const RewardOp *op) {
    char reward[32];
    size_t klen = 0;
    snprintf(reward, sizeof reward, "%.17g", op->reward);
    const char *key = session_key(s, op->id, op->len, &klen);
    const char *argv[] = {"EVAL", REWARD_SCRIPT, "1", key, reward};
    size_t len[] = {4, sizeof REWARD_SCRIPT - 1, 1, klen, strlen(reward)};
    return queue(s, c, key, 5, argv, len);
}

static bool queue_state(SessionStore *s, redisContext *c, const Entry *e, unsigned char *value) {
    char t[16], p[24], r[32], n[16], w[24];
    snprintf(t, sizeof t, "%" PRIu32, e->turn);
    snprintf(p, sizeof p, "%" PRIu64, e->prev_template);
    snprintf(r, sizeof r, "%.17g", e->prev_reward);
    snprintf(n, sizeof n, "%" PRIu32, e->count);
    snprintf(w, sizeof w, "%" PRId64, e->seen_ms < 0 ? 0 : e->seen_ms);
    mean_encode(value, e->mean, s->dim);

    size_t klen = 0;
    const char *key = session_key(s, e->id, e->id_len, &klen);
    const char *argv[] = {
        "EVAL", WRITE_SCRIPT,        "1", key,       t, p, r, e->has_reward ? "1" : "0",
        n,      (const char *)value, w,   s->ttl_arg};
    /* The key and the mean are binary: only the other arguments are C strings. */
    size_t len[PD_ARRAY_LEN(argv)];
    for (size_t i = 0; i < PD_ARRAY_LEN(argv); i++)
        len[i] = i == 3 || i == 9 || !argv[i] ? 0 : strlen(argv[i]);
    len[1] = sizeof WRITE_SCRIPT - 1;
    len[3] = klen;
    len[9] = (size_t)s->dim * sizeof(float);
    return queue(s, c, key, (int)PD_ARRAY_LEN(argv), argv, len);
}

static bool queue_read(SessionStore *s, redisContext *c, const char *id, size_t len) {
    size_t klen = 0;
    const char *key = session_key(s, id, len, &klen);
    const char *argv[] = {"HMGET", key, "t", "p", "r", "h", "n", "v", "w"};
    size_t lens[] = {5, klen, 1, 1, 1, 1, 1, 1, 1};
    return queue(s, c, key, 9, argv, lens);
}

static bool reserve_replies(SessionStore *s, size_t n) {
    if (n <= s->replies_cap) return true;
    redisReply **grown = realloc(s->replies, n * sizeof *grown);
    if (!grown) return false;
    s->replies = grown;
    s->replies_cap = n;
    return true;
}

/* A write's reply: true if Redis took it. */
static bool written(SessionStore *s, const redisReply *r) {
    if (!r) return false;
    if (r->type == REDIS_REPLY_INTEGER) {
        s->stats.redis_writes += r->integer == 1; /* 0: a reward for a session Redis lacks */
        return true;
    }
    s->stats.redis_errors++;
    return false;
}

/* What Redis said about session id. */
static void take_read(SessionStore *s, const char *id, size_t len, const redisReply *r,
                      int64_t now_ms) {
    if (!r) return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 7) {
        s->stats.redis_errors++;
        return;
    }
    s->stats.redis_reads++;
    Entry *e = find(s, id, len, now_ms);
    if (e && e->dirty_at) return; /* memory holds a newer change, still to be written */

    bool absent = r->element[0]->type == REDIS_REPLY_NIL;
    if (!absent) {
        Entry *fresh = e ? e : make(s, id, len, now_ms);
        if (!fresh) return;
        if (take_fields(s, fresh, r->element)) {
            s->stats.redis_hits++;
            fresh->synced_ms = now_ms;
            touch(s, fresh);
            return;
        }
        s->stats.redis_corrupt++;
        e = fresh;
    }

    /* Not in Redis (or unreadable there). A context memory still has within its TTL was
     * lost by Redis (a cold restart): write it back. Otherwise remember "no context"
     * for a while, so that the next turns do not ask again. */
    if (!e) e = make(s, id, len, now_ms);
    if (!e) return;
    e->synced_ms = now_ms;
    if (e->turn && now_ms - e->seen_ms <= s->ttl_ms) {
        mark_dirty(s, e, now_ms);
    } else if (!absent) {
        memset(e->mean, 0, (size_t)s->dim * sizeof(float));
        e->turn = e->count = 0;
        e->prev_template = 0;
        e->has_reward = false;
    }
}

/* One round trip: up to SYNC_MAX pending rewards and states, then the reads of
 * ids[0, n). Returns false when Redis could not be asked. */
static bool sync(SessionStore *s, const char *const *ids, const size_t *lens, size_t n,
                 int64_t now_ms) {
    size_t nops = s->nops < SYNC_MAX ? s->nops : SYNC_MAX;
    size_t nst = s->ndirty < SYNC_MAX ? s->ndirty : SYNC_MAX;
    if (!nops && !nst && !n) return true;
    redisContext *c = redis_link_get(s->link);
    if (!c || !reserve_replies(s, nops + nst + n)) {
        s->stats.redis_fallbacks++;
        return false;
    }

    bool ok = true;
    for (size_t i = 0; ok && i < nops; i++) ok = queue_reward(s, c, &s->ops[i]);
    for (size_t i = 0; ok && i < nst; i++) {
        s->sent[i] = s->dirty[i];
        ok = queue_state(s, c, s->sent[i], s->values + i * (size_t)s->dim * sizeof(float));
    }
    for (size_t i = 0; ok && i < n; i++) ok = queue_read(s, c, ids[i], lens[i]);
    if (!ok) return false;

    size_t got = redis_link_replies(s->link, c, s->replies, nops + nst + n);
    size_t done = 0;
    while (done < nops && written(s, s->replies[done])) done++;
    for (size_t i = 0; i < done; i++) free(s->ops[i].id);
    memmove(s->ops, s->ops + done, (s->nops - done) * sizeof *s->ops);
    s->nops -= done;
    for (size_t i = 0; i < nst; i++) {
        if (!written(s, s->replies[nops + i])) continue;
        mark_clean(s, s->sent[i]);
        s->sent[i]->synced_ms = now_ms;
    }
    for (size_t i = 0; i < n; i++)
        take_read(s, ids[i], lens[i], s->replies[nops + nst + i], now_ms);

    for (size_t i = 0; i < nops + nst + n; i++)
        if (s->replies[i]) freeReplyObject(s->replies[i]);
    if (!s->ndirty && !s->nops) s->pending_since_ms = INT64_MAX;
    return got == nops + nst + n;
}

/* A flush when enough is pending, or for long enough. */
static void maybe_flush(SessionStore *s, int64_t now_ms) {
    if (s->ndirty + s->nops >= FLUSH_AT || now_ms - s->pending_since_ms >= SESSION_FRESH_MS)
        sync(s, NULL, NULL, 0, now_ms);
}

/* --- the API --- */

SessionStore *session_new(int dim, int64_t ttl_ms, size_t max_sessions, RedisLink *link,
                          const char *prefix) {
    SessionStore *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->dim = dim;
    s->ttl_ms = ttl_ms;
    s->max = max_sessions ? max_sessions : 1;
    s->pending_since_ms = INT64_MAX;
    if (!link) return s;

    s->link = link;
    s->stats.redis_enabled = true;
    if (!prefix) prefix = "";
    s->prefix_len = strlen(prefix) + 2;
    s->prefix = malloc(s->prefix_len + 1);
    s->sent = calloc(SYNC_MAX, sizeof *s->sent);
    s->values = malloc(SYNC_MAX * ((size_t)dim * sizeof(float) + 1));
    s->ops = calloc(SESSION_QUEUE_MAX, sizeof *s->ops);
    if (!s->prefix || !s->sent || !s->values || !s->ops) {
        session_free(s);
        return NULL;
    }
    snprintf(s->prefix, s->prefix_len + 1, "%ss:", prefix);
    snprintf(s->ttl_arg, sizeof s->ttl_arg, "%" PRId64, ttl_ms);
    return s;
}

void session_free(SessionStore *s) {
    if (!s) return;
    if (s->link && s->sent && s->ops) session_flush(s, pd_wall_ms());
    while (s->head) {
        Entry *e = s->head;
        s->head = e->next;
        free(e);
    }
    for (size_t i = 0; i < s->nops; i++) free(s->ops[i].id);
    hashmap_free(&s->map);
    free(s->prefix);
    free(s->key);
    free(s->dirty);
    free(s->ops);
    free(s->sent);
    free(s->replies);
    free(s->values);
    free(s);
}

static SessionView view_of(const Entry *e) {
    if (!e || (!e->turn && !e->count)) return (SessionView){0};
    return (SessionView){e->turn,       e->prev_template, e->prev_reward,
                         e->has_reward, e->count,         e->mean};
}

/* Whether memory's copy of id can be used without asking Redis. */
static bool usable(const SessionStore *s, const Entry *e, int64_t now_ms) {
    if (!s->link) return true;
    if (!e) return false;
    return e->dirty_at || (e->synced_ms != INT64_MIN && now_ms - e->synced_ms <= SESSION_FRESH_MS);
}

/* The entry of id, read from Redis first when memory's copy is not usable; NULL if none. */
static Entry *current(SessionStore *s, const char *id, size_t len, int64_t now_ms) {
    expire(s, now_ms);
    Entry *e = find(s, id, len, now_ms);
    if (usable(s, e, now_ms)) return e;
    sync(s, &id, &len, 1, now_ms);
    return find(s, id, len, now_ms);
}

SessionView session_get(SessionStore *s, const char *id, size_t len, int64_t now_ms) {
    return view_of(current(s, id, len, now_ms));
}

void session_prefetch(SessionStore *s, const char *const *ids, const size_t *lens, size_t n,
                      int64_t now_ms) {
    if (!s->link) return;
    const char *want[SYNC_MAX];
    size_t want_len[SYNC_MAX], m = 0;
    expire(s, now_ms);
    for (size_t i = 0; i < n; i++) {
        if (usable(s, find(s, ids[i], lens[i], now_ms), now_ms)) continue;
        want[m] = ids[i];
        want_len[m++] = lens[i];
        if (m == SYNC_MAX || i + 1 == n) {
            if (!sync(s, want, want_len, m, now_ms)) return;
            m = 0;
        }
    }
    if (m) sync(s, want, want_len, m, now_ms);
}

int session_decided(SessionStore *s, const char *id, size_t len, uint64_t template_hash,
                    const float *vector, int64_t now_ms) {
    Entry *e = current(s, id, len, now_ms);
    if (!e) e = make(s, id, len, now_ms);
    if (!e) return -1;
    touch(s, e);
    e->seen_ms = now_ms;
    e->turn++;
    e->prev_template = template_hash;
    e->has_reward = false;

    /* An incremental mean: exact, and needs no history. */
    e->count++;
    for (int i = 0; i < s->dim; i++) e->mean[i] += (vector[i] - e->mean[i]) / (float)e->count;
    mark_dirty(s, e, now_ms);
    expire(s, now_ms);
    if (s->link) maybe_flush(s, now_ms);
    return 0;
}

/* Queues a reward for Redis, for a session memory has no change of its own for. */
static void queue_op(SessionStore *s, const char *id, size_t len, double reward, int64_t now_ms) {
    char *copy = s->nops < SESSION_QUEUE_MAX ? malloc(len ? len : 1) : NULL;
    if (!copy) {
        s->stats.redis_dropped++;
        return;
    }
    memcpy(copy, id, len);
    if (!s->ndirty && !s->nops) s->pending_since_ms = now_ms;
    s->ops[s->nops++] = (RewardOp){copy, len, reward};
}

void session_rewarded(SessionStore *s, const char *id, size_t len, double reward, int64_t now_ms) {
    Entry *e = hashmap_get(&s->map, key_hash(id, len));
    if (e) {
        e->prev_reward = reward;
        e->has_reward = true;
    }
    if (!s->link) return;
    /* A dirty entry's whole state, this reward included, is written anyway. */
    if (!e || !e->dirty_at) queue_op(s, id, len, reward, now_ms);
    maybe_flush(s, now_ms);
}

void session_flush(SessionStore *s, int64_t now_ms) {
    if (!s->link) return;
    while (s->ndirty || s->nops) {
        size_t before = s->ndirty + s->nops;
        if (!sync(s, NULL, NULL, 0, now_ms) || s->ndirty + s->nops >= before) break;
    }
}

size_t session_count(const SessionStore *s) {
    return s->len;
}

SessionStats session_stats(const SessionStore *s) {
    SessionStats st = s->stats;
    st.sessions = s->len;
    return st;
}
