/*
 * The journal (see journal.h for what lives where). Memory: a first-in-first-out list of
 * entries (decisions are made in time order and share one window, so the oldest falls
 * due first), an index by id, the list of entries Redis may lack ("unsent"), and a memory
 * of ids closed here so that a late event is told from an unknown one. Redis: three small
 * Lua scripts (put, join, scan) that make every change to an entry atomic, and one plain
 * HMGET for lookups.
 *
 * Events live in two places in Redis: n/f/l/s/x, added to by the join script (events
 * joined while Redis answered), and mn/mf/ml/ms/mx, set by the put script to memory's
 * aggregate (events joined in memory, before the first write or during an outage). Set,
 * not added: a write sent twice, or sent again after its reply was lost, counts its
 * events once.
 */
#include "journal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"
#include "log.h"
#include "pd.h"
#include "redis.h"

/* Until log.h has a "redis" module: the Redis debug switch is the cache's. */
#define JOURNAL_LOG_MOD PD_MOD_CACHE

#define FLUSH_MAX     512  /* decisions written per round trip: bounds the buffers */
#define SCAN_EVERY_MS 1000 /* look for other instances' due entries at least this often */
#define ITEM_FIELDS   14   /* id, d, r, m, n, f, l, s, x, mn, mf, ml, ms, mx */

/* --- the Redis scripts --- */

/* KEYS: entry, index. ARGV: id, decision, record, made, deadline, ttl, mn, mf, ml, ms, mx,
 * token. The same decision (same token) already there: only memory's events are set
 * (merged); closed there: nothing (closed, or redecided when another decision for the id
 * closed: its reward was learned, and a re-delivered prompt must not learn it again); a
 * newer decision for the id: nothing (newer).
 * Otherwise the entry is written whole (stored, or replaced when an older decision for
 * the id was open). The first write is HSET, a deny-oom command, so that a Redis out of
 * memory refuses the script before it changes anything. */
static const char PUT_SCRIPT[] =
    "local k, made = KEYS[1], ARGV[4]\n"
    "local h = redis.call('HMGET', k, 'c', 'm', 'u')\n"
    "local res = 'stored'\n"
    "if h[1] and h[1] ~= '0' then\n"
    "  if h[3] == ARGV[12] then return 'closed' end\n"
    "  return 'redecided'\n"
    "elseif h[1] and h[3] == ARGV[12] then\n"
    "  res = 'merged'\n"
    "elseif h[1] == '0' then\n"
    "  if tonumber(h[2]) > tonumber(made) then return 'newer' end\n"
    "  res = 'replaced'\n"
    "end\n"
    "if res ~= 'merged' then\n"
    "  redis.call('HSET', k, 'c', '0', 'd', ARGV[2], 'r', ARGV[3], 'm', made, 'dl', ARGV[5],\n"
    "    'u', ARGV[12], 'n', '0', 'f', '0', 'l', '0', 's', '0', 'x', '0')\n"
    "end\n"
    "redis.call('HSET', k, 'mn', ARGV[7], 'mf', ARGV[8], 'ml', ARGV[9], 'ms', ARGV[10],\n"
    "  'mx', ARGV[11])\n"
    "redis.call('PEXPIRE', k, ARGV[6])\n"
    "redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[6])\n"
    "return res\n";

/* KEYS: entry, index. ARGV: id, reward, now, first (1 or 0), ttl. Replies {unknown},
 * {late}, {joined} or {closed, d, r, m, n, f, l, s, x, mn, mf, ml, ms, mx}. */
static const char JOIN_SCRIPT[] =
    "local k = KEYS[1]\n"
    "local h = redis.call('HMGET', k, 'c', 'dl', 'n', 's', 'x', 'mn')\n"
    "if not h[1] then return {'unknown'} end\n"
    "if h[1] ~= '0' or tonumber(ARGV[3]) > tonumber(h[2]) then return {'late'} end\n"
    "local r, n = ARGV[2], tonumber(h[3]) or 0\n"
    "if ARGV[4] == '1' and n + (tonumber(h[6]) or 0) > 0 then return {'late'} end\n"
    "n = n + 1\n"
    "if n == 1 then\n"
    "  redis.call('HSET', k, 'n', '1', 'f', r, 'l', r, 's', r, 'x', r)\n"
    "else\n"
    "  local x = h[5]\n"
    "  if tonumber(r) > tonumber(x) then x = r end\n"
    "  redis.call('HSET', k, 'n', tostring(n), 'l', r, 'x', x,\n"
    "    's', string.format('%.17g', tonumber(h[4]) + tonumber(r)))\n"
    "end\n"
    "if ARGV[4] ~= '1' then return {'joined'} end\n"
    "local e = redis.call('HMGET', k, 'd', 'r', 'm', 'n', 'f', 'l', 's', 'x', 'mn', 'mf',\n"
    "  'ml', 'ms', 'mx')\n"
    "redis.call('HSET', k, 'c', '1')\n"
    "redis.call('HDEL', k, 'd', 'r')\n"
    "redis.call('PEXPIRE', k, ARGV[5])\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "local out = {'closed'}\n"
    "for i = 1, 13 do out[i + 1] = e[i] or '' end\n"
    "return out\n";

/* KEYS: index. ARGV: now, max, entry key prefix, ttl. Closes up to max entries due before
 * now. Replies {lost, earliest deadline left or '', index size, {{id, d, r, m, n, f, l,
 * s, x, mn, mf, ml, ms, mx} ...}}. An id whose hash is gone was never closed: Redis
 * expired it first (lost). */
static const char SCAN_SCRIPT[] =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0,\n"
    "  tonumber(ARGV[2]))\n"
    "local out, lost = {}, 0\n"
    "for _, id in ipairs(ids) do\n"
    "  local k = ARGV[3] .. id\n"
    "  redis.call('ZREM', KEYS[1], id)\n"
    "  local e = redis.call('HMGET', k, 'c', 'd', 'r', 'm', 'n', 'f', 'l', 's', 'x', 'mn',\n"
    "    'mf', 'ml', 'ms', 'mx')\n"
    "  if e[1] == '0' and e[2] and e[3] then\n"
    "    redis.call('HSET', k, 'c', '1')\n"
    "    redis.call('HDEL', k, 'd', 'r')\n"
    "    redis.call('PEXPIRE', k, ARGV[4])\n"
    "    local item = {id}\n"
    "    for i = 2, 14 do item[i] = e[i] or '' end\n"
    "    out[#out + 1] = item\n"
    "  elseif e[1] ~= '1' then\n"
    "    lost = lost + 1\n"
    "  end\n"
    "end\n"
    "local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
    "return {tostring(lost), head[2] or '', tostring(redis.call('ZCARD', KEYS[1])), out}\n";

/* --- memory entries --- */

typedef struct {
    unsigned events;
    double first, last, sum, max;
} Agg;

typedef struct Entry {
    struct Entry *prev, *next;   /* FIFO order, oldest first */
    struct Entry *uprev, *unext; /* the unsent list */
    uint64_t hash;
    char *id;
    size_t id_len;
    char *decision;
    size_t decision_len;
    void *record;
    size_t record_len;
    int64_t made_ms;
    uint64_t token;         /* tells this decision from another for the same id */
    Agg agg;                /* events joined in memory */
    bool in_redis;          /* Redis has, or may have, it: only Redis may close it */
    bool unsent;            /* memory holds what Redis may lack: it is in the unsent list */
    bool fallback_counted;  /* counted in redis_fallbacks */
    bool uncertain_counted; /* counted in redis_uncertain */
    bool replace_counted;   /* the decision it replaced is counted in replaced */
} Entry;

typedef enum { LOOK_NONE, LOOK_OPEN, LOOK_LATE, LOOK_UNKNOWN, LOOK_UNAVAILABLE } Look;

/* What the join script said; DOWN: Redis was not asked; FAILED: asked, no usable answer
 * (the event may have been joined). */
typedef enum { RJ_UNKNOWN, RJ_LATE, RJ_JOINED, RJ_CLOSED, RJ_DOWN, RJ_FAILED } RedisJoin;

struct Journal {
    JournalConfig cfg;
    Entry *head, *tail;
    size_t count; /* entries in memory */
    HashMap open; /* hash -> Entry*, every entry in memory */
    Entry *unsent_head, *unsent_tail;
    size_t unsent_count;
    HashMap closed;        /* hash -> (void *)1, ids closed here recently */
    uint64_t *closed_ring; /* the order of `closed`, to forget the oldest */
    size_t closed_pos, closed_cap;

    RedisLink *link; /* NULL: memory only */
    char *entry_prefix;
    size_t entry_prefix_len;
    char *index_key;
    char ttl_arg[24];
    char *key; /* scratch for one entry key */
    size_t key_cap;
    Entry **sent; /* one round trip's entries and replies */
    redisReply **replies;
    int64_t scan_at_ms;    /* the next scan of Redis, in the callers' clock */
    uint64_t outages_seen; /* the link's outage count when memory was last all written */
    uint64_t rng;          /* for tokens */
    bool refused;          /* an episode of error replies to writes is open */

    Look look; /* what journal_decision learned from Redis about look_id */
    char *look_id;
    size_t look_len, look_cap;
    char *look_decision;

    JournalStats stats;
};

static uint64_t id_hash(const char *id, size_t len) {
    return hashmap_hash(id, len, 0x6a6f75726e616cu);
}

int journal_rule_parse(const char *name) {
    static const char *const names[] = {"first", "last", "sum", "max", "mean"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

void experience_free(Experience *e) {
    free(e->decision);
    free(e->record);
    memset(e, 0, sizeof *e);
}

static void entry_free(Entry *e) {
    if (!e) return;
    free(e->id);
    free(e->decision);
    free(e->record);
    free(e);
}

/* Remembers that hash closed, forgetting the oldest beyond the ring's size. */
static void remember_closed(Journal *j, uint64_t hash) {
    uint64_t old = j->closed_ring[j->closed_pos];
    if (old) hashmap_remove(&j->closed, old);
    j->closed_ring[j->closed_pos] = hash;
    j->closed_pos = (j->closed_pos + 1) % j->closed_cap;
    hashmap_put(&j->closed, hash, (void *)1);
}

static double aggregate(JournalRule rule, const Agg *a) {
    switch (rule) {
    case JOURNAL_FIRST: return a->first;
    case JOURNAL_LAST: return a->last;
    case JOURNAL_SUM: return a->sum;
    case JOURNAL_MAX: return a->max;
    default: return a->sum / a->events;
    }
}

static void accumulate(Agg *a, double r) {
    if (a->events++ == 0) a->first = a->max = r;
    a->last = r;
    a->sum += r;
    if (r > a->max) a->max = r;
}

/* Events joined in memory (mem) and in Redis (red) as one aggregate. Their order is not
 * known: memory's are taken as the earlier (they are joined where the decision was made,
 * or during an outage, before Redis saw any). */
static Agg combine(const Agg *mem, const Agg *red) {
    if (!mem->events) return *red;
    if (!red->events) return *mem;
    return (Agg){mem->events + red->events, mem->first, red->last, mem->sum + red->sum,
                 mem->max > red->max ? mem->max : red->max};
}

static void unsent_add(Journal *j, Entry *e) {
    if (e->unsent || !j->link) return;
    e->unsent = true;
    e->unext = NULL;
    e->uprev = j->unsent_tail;
    if (j->unsent_tail)
        j->unsent_tail->unext = e;
    else
        j->unsent_head = e;
    j->unsent_tail = e;
    j->unsent_count++;
}

static void unsent_remove(Journal *j, Entry *e) {
    if (!e->unsent) return;
    if (e->uprev)
        e->uprev->unext = e->unext;
    else
        j->unsent_head = e->unext;
    if (e->unext)
        e->unext->uprev = e->uprev;
    else
        j->unsent_tail = e->uprev;
    e->unsent = false;
    j->unsent_count--;
}

/* Takes e out of memory (the FIFO, the index, the unsent list) and frees it. */
static void discard(Journal *j, Entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        j->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        j->tail = e->prev;
    unsent_remove(j, e);
    if (hashmap_get(&j->open, e->hash) == e) hashmap_remove(&j->open, e->hash);
    j->count--;
    entry_free(e);
}

/* Makes the experience of a closed entry, taking decision and record; false (and both
 * freed) when it has no event and reward.default is drop. */
static bool make_experience(Journal *j, Experience *out, char *decision, void *record,
                            size_t record_len, const Agg *a, int64_t made_ms) {
    if (a->events == 0) {
        j->stats.expired++;
        if (j->cfg.default_drop) {
            j->stats.dropped++;
            free(decision);
            free(record);
            return false;
        }
    } else {
        j->stats.closed++;
    }
    double reward = a->events ? aggregate(j->cfg.rule, a) : j->cfg.default_reward;
    *out = (Experience){decision, record, record_len, reward, a->events, made_ms, 0};
    return true;
}

/* Closes e in memory (it is not in Redis): fills out and returns true, or drops it. */
static bool close_entry(Journal *j, Entry *e, Experience *out) {
    remember_closed(j, e->hash);
    bool learned =
        make_experience(j, out, e->decision, e->record, e->record_len, &e->agg, e->made_ms);
    e->decision = NULL;
    e->record = NULL;
    discard(j, e);
    return learned;
}

static Entry *find_open(Journal *j, const char *id, size_t id_len) {
    Entry *e = hashmap_get(&j->open, id_hash(id, id_len));
    return e && e->id_len == id_len && !memcmp(e->id, id, id_len) ? e : NULL;
}

/* Joins r to memory's entry. One Redis may hold is not closed here, even by the first
 * rule: another instance could close it there too. Its events reach Redis with its next
 * write, and Redis closes it. */
static JoinResult join_memory(Journal *j, Entry *e, double r, int64_t now_ms, Experience *out) {
    bool first = j->cfg.rule == JOURNAL_FIRST;
    if (now_ms - e->made_ms > j->cfg.window_ms || (first && e->agg.events)) {
        j->stats.late++;
        return JOIN_LATE;
    }
    j->stats.joined++;
    accumulate(&e->agg, r);
    if (e->in_redis) {
        unsent_add(j, e);
        return JOIN_ACCUMULATED;
    }
    if (!first) return JOIN_ACCUMULATED;
    return close_entry(j, e, out) ? JOIN_CLOSED : JOIN_ACCUMULATED;
}

static int64_t grace_ms(const Journal *j) {
    return j->cfg.grace_ms > 0 ? j->cfg.grace_ms : JOURNAL_GRACE_MS;
}

/* Closes up to max due entries of memory (and the oldest beyond capacity). A copy of an
 * entry Redis holds is only let go: Redis closes it. */
static size_t expire_memory(Journal *j, int64_t now_ms, Experience *out, size_t max) {
    size_t n = 0;
    Entry *e = j->head;
    while (e && n < max) {
        Entry *next = e->next;
        bool due = now_ms - e->made_ms > j->cfg.window_ms;
        bool over = j->count > j->cfg.max_entries;
        if (!due && !over) break;

        if (!e->in_redis) {
            if (!due) j->stats.evicted++;
            if (close_entry(j, e, &out[n])) n++;
        } else if (!e->unsent) {
            discard(j, e);
        } else if (now_ms - e->made_ms > j->cfg.window_ms + grace_ms(j)) {
            /* Never settled with Redis: by now its copy there has expired or was closed
             * by another instance; which, we cannot tell, and learning it could be twice. */
            j->stats.redis_lost++;
            discard(j, e);
        }
        e = next;
    }
    return n;
}

/* --- Redis: commands and replies --- */

/* The key of id's entry, in j->key; NULL when out of memory. */
static const char *entry_key(Journal *j, const char *id, size_t id_len, size_t *len) {
    size_t need = j->entry_prefix_len + id_len;
    if (need > j->key_cap) {
        char *grown = realloc(j->key, need);
        if (!grown) return NULL;
        j->key = grown;
        j->key_cap = need;
    }
    memcpy(j->key, j->entry_prefix, j->entry_prefix_len);
    memcpy(j->key + j->entry_prefix_len, id, id_len);
    *len = need;
    return j->key;
}

/* Queues one command. key is the entry key the command names, NULL when it could not be
 * built. On failure (out of memory) the connection, holding a partly built pipeline, is
 * given up: nothing of it has been sent. */
static bool append(Journal *j, redisContext *c, const char *key, int argc, const char **argv,
                   const size_t *len) {
    if (key && redisAppendCommandArgv(c, argc, argv, len) == REDIS_OK) return true;
    redis_link_fail_protocol(j->link, "out of memory building a command");
    return false;
}

/* Argument lengths: strlen of each, except where given (binary or not NUL-terminated). */
static void arg_lengths(const char **argv, size_t *len, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (len[i] == SIZE_MAX) len[i] = argv[i] ? strlen(argv[i]) : 0;
}

static bool is_string(const redisReply *r) {
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

static bool reply_is(const redisReply *r, const char *s) {
    return is_string(r) && r->len == strlen(s) && !memcmp(r->str, s, r->len);
}

/* A number in a string reply; false if it is not one. */
static bool reply_f64(const redisReply *r, double *v) {
    char buf[64], *end;
    if (!is_string(r) || r->len == 0 || r->len >= sizeof buf) return false;
    memcpy(buf, r->str, r->len);
    buf[r->len] = 0;
    *v = strtod(buf, &end);
    return *end == 0;
}

static bool reply_i64(const redisReply *r, int64_t *v) {
    double d;
    if (!reply_f64(r, &d) || d < -9e15 || d > 9e15) return false;
    *v = (int64_t)d;
    return true;
}

/* Five strings n, f, l, s, x as an aggregate. */
static bool reply_agg(redisReply *const *f, Agg *a) {
    int64_t events;
    *a = (Agg){0};
    if (!reply_i64(f[0], &events) || events < 0 || events > UINT32_MAX) return false;
    a->events = (unsigned)events;
    return !events || (reply_f64(f[1], &a->first) && reply_f64(f[2], &a->last) &&
                       reply_f64(f[3], &a->sum) && reply_f64(f[4], &a->max));
}

/* An error reply to a write (-OOM, -READONLY, -BUSY ...): logged once per episode. */
static void refused(Journal *j, const char *reply) {
    j->stats.redis_errors++;
    if (j->refused) return;
    j->refused = true;
    pd_log(PD_LOG_WARNING, JOURNAL_LOG_MOD,
           "redis refused a journal write (%.200s); decisions stay in memory until it accepts "
           "them again",
           reply);
}

static void accepted(Journal *j) {
    if (!j->refused) return;
    j->refused = false;
    pd_log(PD_LOG_NOTICE, JOURNAL_LOG_MOD, "redis accepts journal writes again");
}

/* Memory's copy of an entry Redis closed (el: id, d, r, m ...) is let go. */
static void forget_copy(Journal *j, redisReply *const *el) {
    int64_t made;
    Entry *e = is_string(el[0]) ? find_open(j, el[0]->str, el[0]->len) : NULL;
    if (e && reply_i64(el[3], &made) && made == e->made_ms) discard(j, e);
}

/* An experience from the ITEM_FIELDS strings of an entry Redis closed. False if they make
 * no sense (counted as lost) or it is dropped by the default-drop rule. */
static bool experience_of(Journal *j, redisReply *const *el, Experience *out) {
    Agg red, mem;
    int64_t made;
    bool ok = is_string(el[1]) && is_string(el[2]) && reply_i64(el[3], &made) &&
              reply_agg(el + 4, &red) && reply_agg(el + 9, &mem);
    char *decision = ok ? malloc(el[1]->len + 1) : NULL;
    void *record = ok ? malloc(el[2]->len ? el[2]->len : 1) : NULL;
    if (!decision || !record) {
        free(decision);
        free(record);
        j->stats.redis_lost++;
        return false;
    }
    memcpy(decision, el[1]->str, el[1]->len);
    decision[el[1]->len] = 0;
    memcpy(record, el[2]->str, el[2]->len);
    Agg a = combine(&mem, &red);
    return make_experience(j, out, decision, record, el[2]->len, &a, made);
}

/* --- Redis: writing what memory holds, and the expiry scan --- */

static bool append_put(Journal *j, redisContext *c, const Entry *e) {
    char made[24], deadline[24], n[16], f[32], l[32], s[32], x[32], token[24];
    const Agg *a = &e->agg;
    snprintf(made, sizeof made, "%" PRId64, e->made_ms);
    snprintf(deadline, sizeof deadline, "%" PRId64, e->made_ms + j->cfg.window_ms);
    snprintf(n, sizeof n, "%u", a->events);
    snprintf(f, sizeof f, "%.17g", a->first);
    snprintf(l, sizeof l, "%.17g", a->last);
    snprintf(s, sizeof s, "%.17g", a->sum);
    snprintf(x, sizeof x, "%.17g", a->max);
    snprintf(token, sizeof token, "%016" PRIx64, e->token);

    size_t klen = 0;
    const char *key = entry_key(j, e->id, e->id_len, &klen);
    const char *argv[] = {"EVAL",
                          PUT_SCRIPT,
                          "2",
                          key,
                          j->index_key,
                          e->id,
                          e->decision,
                          e->record ? e->record : "",
                          made,
                          deadline,
                          j->ttl_arg,
                          n,
                          f,
                          l,
                          s,
                          x,
                          token};
    size_t len[PD_ARRAY_LEN(argv)];
    memset(len, 0xff, sizeof len);
    len[1] = sizeof PUT_SCRIPT - 1;
    len[3] = klen;
    len[5] = e->id_len;
    len[6] = e->decision_len;
    len[7] = e->record_len;
    arg_lengths(argv, len, PD_ARRAY_LEN(argv));
    return append(j, c, key, (int)PD_ARRAY_LEN(argv), argv, len);
}

static bool append_scan(Journal *j, redisContext *c, int64_t now_ms, size_t max) {
    char now[24], limit[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(limit, sizeof limit, "%zu", max);
    const char *argv[] = {"EVAL", SCAN_SCRIPT,     "1",       j->index_key, now,
                          limit,  j->entry_prefix, j->ttl_arg};
    size_t len[PD_ARRAY_LEN(argv)];
    memset(len, 0xff, sizeof len);
    arg_lengths(argv, len, PD_ARRAY_LEN(argv));
    return append(j, c, j->index_key, (int)PD_ARRAY_LEN(argv), argv, len);
}

static void count_fallback(Journal *j, Entry *e) {
    if (e->fallback_counted) return;
    e->fallback_counted = true;
    j->stats.redis_fallbacks++;
}

/* What the reply to the write of e means for e. */
static void settle_put(Journal *j, Entry *e, const redisReply *r) {
    if (!r) {
        /* Sent, perhaps applied: from now on only Redis may close it. It stays unsent:
         * the next write sets its events there once, whether this one applied or not. */
        if (!e->uncertain_counted) j->stats.redis_uncertain++;
        e->uncertain_counted = true;
        e->in_redis = true;
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        refused(j, r->str); /* the script did not run: e stays as it was */
        count_fallback(j, e);
        return;
    }
    accepted(j);
    bool replaced = reply_is(r, "replaced"), newer = reply_is(r, "newer");
    if ((replaced && !e->replace_counted) || newer) j->stats.replaced++;
    e->replace_counted |= replaced;
    if (replaced || reply_is(r, "stored") || reply_is(r, "merged")) {
        j->stats.redis_puts++;
        e->in_redis = true;
        unsent_remove(j, e);
        int64_t due = e->made_ms + j->cfg.window_ms + 1;
        if (due < j->scan_at_ms) j->scan_at_ms = due;
    } else if (reply_is(r, "redecided")) {
        j->stats.redecided++;
        discard(j, e);
    } else if (newer || reply_is(r, "closed")) {
        discard(j, e); /* superseded, or closed there by another instance */
    } else {
        j->stats.redis_errors++; /* not our script's answer: keep e */
    }
}

/* Learns from the reply to the scan; asked for want entries. */
static size_t take_scan(Journal *j, const redisReply *r, int64_t now_ms, Experience *out,
                        size_t want) {
    if (!r) return 0;
    if (r->type == REDIS_REPLY_ERROR) {
        j->stats.redis_errors++;
        return 0;
    }
    int64_t lost, open, earliest;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 || !reply_i64(r->element[0], &lost) ||
        !reply_i64(r->element[2], &open) || r->element[3]->type != REDIS_REPLY_ARRAY) {
        j->stats.redis_errors++;
        redis_link_fail_protocol(j->link, "the reply to the journal's expiry scan is malformed");
        return 0;
    }
    j->stats.redis_lost += (uint64_t)lost;
    j->stats.redis_open = (uint64_t)open;

    const redisReply *list = r->element[3];
    size_t n = 0;
    for (size_t i = 0; i < list->elements && n < want; i++) {
        const redisReply *item = list->element[i];
        if (item->type != REDIS_REPLY_ARRAY || item->elements != ITEM_FIELDS) {
            j->stats.redis_lost++;
            continue;
        }
        forget_copy(j, item->element);
        if (experience_of(j, item->element, &out[n])) n++;
    }

    /* A full scan may have left more due; otherwise nothing is due before the earliest
     * deadline left, unless another instance adds an earlier one. */
    j->scan_at_ms = now_ms + SCAN_EVERY_MS;
    if (list->elements >= want)
        j->scan_at_ms = now_ms;
    else if (reply_i64(r->element[1], &earliest) && earliest + 1 < j->scan_at_ms)
        j->scan_at_ms = earliest + 1;
    return n;
}

/* After an outage Redis may have lost data (a restart without persistence): everything
 * memory holds is written again. The writes are idempotent, so this costs only time. */
static void resend_after_outage(Journal *j) {
    uint64_t outages = redis_link_stats(j->link).outages;
    if (outages == j->outages_seen) return;
    j->outages_seen = outages;
    for (Entry *e = j->head; e; e = e->next) unsent_add(j, e);
}

/* One round trip: writes up to FLUSH_MAX unsent entries, oldest first, and, when an
 * entry may be due and nothing unsent is left behind (a scan must not close an entry
 * before memory's events reach it), closes up to max due entries in Redis. */
static size_t redis_sync(Journal *j, int64_t now_ms, Experience *out, size_t max) {
    redisContext *c = redis_link_get(j->link);
    if (!c) return 0;
    resend_after_outage(j);

    size_t m = 0;
    for (Entry *e = j->unsent_head; e && m < FLUSH_MAX; e = e->unext) j->sent[m++] = e;
    bool scan = max > 0 && now_ms >= j->scan_at_ms && j->unsent_count == m;
    if (!m && !scan) return 0;

    bool queued = true;
    for (size_t i = 0; queued && i < m; i++) queued = append_put(j, c, j->sent[i]);
    if (queued && scan) queued = append_scan(j, c, now_ms, max);
    if (!queued) return 0;

    redis_link_replies(j->link, c, j->replies, m + scan);
    for (size_t i = 0; i < m; i++) settle_put(j, j->sent[i], j->replies[i]);
    size_t n = scan ? take_scan(j, j->replies[m], now_ms, out, max) : 0;
    for (size_t i = 0; i < m + scan; i++)
        if (j->replies[i]) freeReplyObject(j->replies[i]);
    return n;
}

/* --- Redis: lookups and joins --- */

/* What Redis knows of id; an open entry's decision goes to j->look_decision. */
static Look lookup(Journal *j, const char *id, size_t id_len) {
    redisContext *c = redis_link_get(j->link);
    if (!c) return LOOK_UNAVAILABLE;
    size_t klen = 0;
    const char *key = entry_key(j, id, id_len, &klen);
    const char *argv[] = {"HMGET", key, "c", "d"};
    size_t len[] = {5, klen, 1, 1};
    redisReply *r;
    if (!append(j, c, key, 4, argv, len) || !redis_link_replies(j->link, c, &r, 1))
        return LOOK_UNAVAILABLE;

    Look look = LOOK_UNAVAILABLE;
    if (r->type == REDIS_REPLY_ERROR) {
        j->stats.redis_errors++;
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        j->stats.redis_errors++;
        redis_link_fail_protocol(j->link, "the reply to a journal lookup is not two fields");
    } else if (r->element[0]->type == REDIS_REPLY_NIL) {
        look = LOOK_UNKNOWN;
    } else if (!reply_is(r->element[0], "0") || !is_string(r->element[1])) {
        look = LOOK_LATE;
    } else {
        const redisReply *d = r->element[1];
        free(j->look_decision);
        j->look_decision = malloc(d->len + 1);
        if (j->look_decision) {
            memcpy(j->look_decision, d->str, d->len);
            j->look_decision[d->len] = 0;
            look = LOOK_OPEN;
        }
    }
    freeReplyObject(r);
    return look;
}

/* Remembers what journal_decision found for id, for the journal_reward that follows. */
static void look_set(Journal *j, const char *id, size_t id_len, Look look) {
    j->look = LOOK_NONE;
    if (id_len > j->look_cap) {
        char *grown = realloc(j->look_id, id_len);
        if (!grown) return;
        j->look_id = grown;
        j->look_cap = id_len;
    }
    memcpy(j->look_id, id, id_len);
    j->look_len = id_len;
    j->look = look;
}

/* What journal_decision found for id, if it was asked about id last; forgets it. */
static Look look_take(Journal *j, const char *id, size_t id_len) {
    Look look = j->look;
    j->look = LOOK_NONE;
    if (look == LOOK_NONE || j->look_len != id_len || memcmp(j->look_id, id, id_len))
        return LOOK_NONE;
    return look;
}

/* The join script's reply: its verdict, and on a close the experience. */
static RedisJoin join_reply(Journal *j, const redisReply *rep, Experience *out) {
    const redisReply *head =
        rep->type == REDIS_REPLY_ARRAY && rep->elements ? rep->element[0] : NULL;
    if (reply_is(head, "unknown")) return RJ_UNKNOWN;
    if (reply_is(head, "late")) return RJ_LATE;
    if (reply_is(head, "joined")) return RJ_JOINED;
    if (reply_is(head, "closed") && rep->elements == ITEM_FIELDS)
        return experience_of(j, rep->element, out) ? RJ_CLOSED : RJ_JOINED;
    j->stats.redis_errors++;
    return RJ_FAILED;
}

/* Joins r to id's entry in Redis, atomically. Counts nothing but errors. */
static RedisJoin join_redis(Journal *j, const char *id, size_t id_len, double r, int64_t now_ms,
                            Experience *out) {
    redisContext *c = redis_link_get(j->link);
    if (!c) return RJ_DOWN;
    char reward[32], now[24];
    snprintf(reward, sizeof reward, "%.17g", r);
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    size_t klen = 0;
    const char *key = entry_key(j, id, id_len, &klen);
    const char *argv[] = {"EVAL",    JOIN_SCRIPT,  "2",
                          key,       j->index_key, id,
                          reward,    now,          j->cfg.rule == JOURNAL_FIRST ? "1" : "0",
                          j->ttl_arg};
    size_t len[PD_ARRAY_LEN(argv)];
    memset(len, 0xff, sizeof len);
    len[1] = sizeof JOIN_SCRIPT - 1;
    len[3] = klen;
    len[5] = id_len;
    arg_lengths(argv, len, PD_ARRAY_LEN(argv));

    redisReply *rep;
    if (!append(j, c, key, (int)PD_ARRAY_LEN(argv), argv, len)) return RJ_DOWN;
    if (!redis_link_replies(j->link, c, &rep, 1)) return RJ_FAILED;
    RedisJoin res = join_reply(j, rep, out);
    freeReplyObject(rep);
    return res;
}

/* Counts a join of an entry memory does not hold, and says what it was. */
static JoinResult count_join(Journal *j, RedisJoin rj) {
    switch (rj) {
    case RJ_UNKNOWN: j->stats.unknown++; return JOIN_UNKNOWN;
    case RJ_LATE: j->stats.late++; return JOIN_LATE;
    case RJ_JOINED: j->stats.joined++; return JOIN_ACCUMULATED;
    case RJ_CLOSED: j->stats.joined++; return JOIN_CLOSED;
    default: j->stats.redis_unavailable++; return JOIN_UNAVAILABLE;
    }
}

/* Joins r to an entry memory holds a copy of, and Redis the entry. */
static JoinResult join_copy(Journal *j, Entry *e, double r, int64_t now_ms, Experience *out) {
    if (j->cfg.rule == JOURNAL_FIRST && e->agg.events) {
        j->stats.late++; /* memory joined its first event during an outage */
        return JOIN_LATE;
    }
    RedisJoin rj = join_redis(j, e->id, e->id_len, r, now_ms, out);
    if (rj == RJ_CLOSED) discard(j, e);
    if (rj == RJ_UNKNOWN) {
        /* Redis has no trace of it, not even closed: it lost its data. Memory's copy is
         * the entry again: it is written back, and the event waits for that. */
        e->in_redis = false;
        unsent_add(j, e);
        j->stats.redis_unavailable++;
        return JOIN_UNAVAILABLE;
    }
    if (rj == RJ_DOWN) return join_memory(j, e, r, now_ms, out);
    return count_join(j, rj);
}

/* --- the API --- */

static char *copy(const void *src, size_t len, bool terminate) {
    char *p = malloc(len + terminate);
    if (!p) return NULL;
    if (len) memcpy(p, src, len);
    if (terminate) p[len] = 0;
    return p;
}

static char *concat(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 1);
    if (!p) return NULL;
    memcpy(p, a, la);
    memcpy(p + la, b, lb + 1);
    return p;
}

static bool attach_redis(Journal *j, RedisLink *link, const char *prefix) {
    j->link = link;
    j->entry_prefix = concat(prefix, "j:");
    j->index_key = concat(prefix, "jdue");
    j->sent = calloc(FLUSH_MAX, sizeof *j->sent);
    j->replies = calloc(FLUSH_MAX + 1, sizeof *j->replies);
    if (!j->entry_prefix || !j->index_key || !j->sent || !j->replies) return false;
    j->entry_prefix_len = strlen(j->entry_prefix);
    snprintf(j->ttl_arg, sizeof j->ttl_arg, "%" PRId64, j->cfg.window_ms + grace_ms(j));
    j->scan_at_ms = INT64_MIN; /* a restart looks at once for what is due */
    j->outages_seen = redis_link_stats(link).outages;
    j->stats.redis_enabled = true;
    return true;
}

Journal *journal_new(const JournalConfig *cfg, RedisLink *link, const char *prefix) {
    Journal *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->cfg = *cfg;
    j->cfg.max_entries = cfg->max_entries ? cfg->max_entries : 1;
    j->rng = pd_mono_ns() ^ (uint64_t)(uintptr_t)j ^ 0x9e3779b97f4a7c15u;
    j->closed_cap = j->cfg.max_entries;
    j->closed_ring = calloc(j->closed_cap, sizeof *j->closed_ring);
    if (!j->closed_ring || (link && !attach_redis(j, link, prefix ? prefix : ""))) {
        journal_free(j);
        return NULL;
    }
    return j;
}

void journal_configure(Journal *j, const JournalConfig *cfg) {
    int64_t window = j->cfg.window_ms, grace = j->cfg.grace_ms;
    j->cfg = *cfg;
    j->cfg.max_entries = cfg->max_entries ? cfg->max_entries : 1;
    /* Deadlines and TTLs in Redis were computed with these; the memory of closed ids
     * keeps its size until a restart. */
    j->cfg.window_ms = window;
    j->cfg.grace_ms = grace;
}

void journal_free(Journal *j) {
    if (!j) return;
    /* What Redis may lack goes there, so that a restart can still learn it. */
    while (j->link && j->sent && j->unsent_head) {
        size_t before = j->unsent_count;
        redis_sync(j, 0, NULL, 0);
        if (j->unsent_count >= before) break;
    }
    while (j->head) discard(j, j->head);
    hashmap_free(&j->open);
    hashmap_free(&j->closed);
    free(j->closed_ring);
    free(j->entry_prefix);
    free(j->index_key);
    free(j->key);
    free(j->sent);
    free(j->replies);
    free(j->look_id);
    free(j->look_decision);
    free(j);
}

int journal_put(Journal *j, const char *id, size_t id_len, const char *decision,
                size_t decision_len, const void *record, size_t record_len, int64_t now_ms) {
    Entry *e = calloc(1, sizeof *e);
    if (!e) return -1;
    e->hash = id_hash(id, id_len);
    e->id = copy(id, id_len, true);
    e->decision = copy(decision, decision_len, true);
    e->record = copy(record, record_len, false);
    if (!e->id || !e->decision || (record_len && !e->record)) {
        entry_free(e);
        return -1;
    }
    e->id_len = id_len;
    e->decision_len = decision_len;
    e->record_len = record_len;
    e->made_ms = now_ms;
    j->rng ^= j->rng << 13; /* xorshift: tokens need to differ, not to be secret */
    j->rng ^= j->rng >> 7;
    j->rng ^= j->rng << 17;
    e->token = j->rng;

    /* A second decision for an id (a re-delivered prompt): the newer one is the one whose
     * reward will come; the older is closed without a reward and not learned. In Redis
     * the newer one's write replaces it. When the first one has closed already, its reward
     * was learned: the second is not journaled, so that the re-read reward event finds it
     * closed instead of learning again. */
    if (hashmap_get(&j->closed, e->hash)) {
        j->stats.redecided++;
        entry_free(e);
        return 0;
    }
    Entry *old = find_open(j, id, id_len);
    if (hashmap_put(&j->open, e->hash, e)) {
        entry_free(e);
        return -1;
    }
    if (old) {
        j->stats.replaced++;
        e->replace_counted = true;
        discard(j, old);
    }
    e->prev = j->tail;
    if (j->tail)
        j->tail->next = e;
    else
        j->head = e;
    j->tail = e;
    j->count++;
    unsent_add(j, e);
    if (j->link && !redis_link_stats(j->link).up) count_fallback(j, e);
    return 0;
}

const char *journal_decision(Journal *j, const char *id, size_t id_len) {
    j->look = LOOK_NONE;
    Entry *e = find_open(j, id, id_len);
    if (e) return e->decision;
    if (!j->link || hashmap_get(&j->closed, id_hash(id, id_len))) return NULL;
    look_set(j, id, id_len, lookup(j, id, id_len));
    return j->look == LOOK_OPEN ? j->look_decision : NULL;
}

JoinResult journal_reward(Journal *j, const char *id, size_t id_len, double r, int64_t now_ms,
                          Experience *out) {
    Look look = look_take(j, id, id_len);
    Entry *e = find_open(j, id, id_len);

    /* An event for a decision not yet written to Redis (it came within the write's batch):
     * write it first, so that Redis closes it. Closed in memory only, a crash before the
     * next write would forget the close, and the event read again after the restart could
     * be joined to the re-delivered prompt's decision and learned twice. So while Redis
     * is unavailable or refusing, the event waits (JOIN_UNAVAILABLE) instead. */
    for (int round = 0; e && !e->in_redis && j->link && !j->refused && round < 4; round++) {
        if (!redis_link_stats(j->link).up) break;
        redis_sync(j, now_ms, NULL, 0);
        e = find_open(j, id, id_len);
    }
    if (e && !e->in_redis && j->link) {
        j->stats.redis_unavailable++;
        return JOIN_UNAVAILABLE;
    }
    if (e) return e->in_redis ? join_copy(j, e, r, now_ms, out) : join_memory(j, e, r, now_ms, out);
    if (hashmap_get(&j->closed, id_hash(id, id_len))) {
        j->stats.late++;
        return JOIN_LATE;
    }
    if (!j->link) look = LOOK_UNKNOWN;

    switch (look) {
    case LOOK_LATE: j->stats.late++; return JOIN_LATE;
    case LOOK_UNKNOWN: j->stats.unknown++; return JOIN_UNKNOWN;
    case LOOK_UNAVAILABLE: j->stats.redis_unavailable++; return JOIN_UNAVAILABLE;
    default: return count_join(j, join_redis(j, id, id_len, r, now_ms, out));
    }
}

size_t journal_expire(Journal *j, int64_t now_ms, Experience *out, size_t max) {
    j->look = LOOK_NONE;
    size_t n = expire_memory(j, now_ms, out, max);
    if (j->link) n += redis_sync(j, now_ms, out + n, max - n);
    return n;
}

JournalStats journal_stats(const Journal *j) {
    JournalStats s = j->stats;
    s.open = j->count;
    s.redis_refusing = j->refused;
    return s;
}

bool journal_ready(const Journal *j) {
    return !j->link || (redis_link_stats(j->link).up && !j->refused);
}
