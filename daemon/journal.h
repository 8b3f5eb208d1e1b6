/*
 * The journal: every decision waiting for its reward. A decision is recorded when it is
 * made (its JSON, for the pack's reward function, and an opaque learning record: state,
 * eligible templates, action, probability, value, policy version); reward events are
 * joined to it by id; when its reward window closes it becomes an experience for the
 * learner, with the aggregated reward, or reward.default if no event came (or it is
 * dropped).
 *
 * Aggregation of several events for one id: first (the experience is final at the first
 * event), last, sum, max or mean (final when the window closes).
 *
 * What lives where, and why:
 *
 * - Redis (when a link is given and Redis answers) holds the decisions, so that a restart
 *   or another instance sharing the consumer group can still join a reward or close a
 *   window. Per decision a hash <prefix>j:<id> (c: 0 open / 1 closed, d: decision JSON,
 *   r: record bytes, m: made ms, dl: deadline ms, n/f/l/s/x: count, first, last, sum and
 *   max of the events joined in Redis, mn/mf/ml/ms/mx: the same of those joined in
 *   memory), and one sorted set <prefix>jdue of ids by deadline. Every change is one Lua
 *   script (EVAL): closing checks c, sets it to 1 and takes the id off the index, so
 *   exactly one instance learns from an entry however many race; a join updates the
 *   aggregate the same way; a write sets memory's events rather than adding them, so a
 *   write sent twice counts them once. A closed entry stays as a small tombstone (c=1, no
 *   d, no r) so that a late event is told from an unknown one.
 *   Every key lives reward.window + grace (1 h by default). TTL = window alone would let
 *   Redis delete an entry at the moment it falls due, before any instance closes it, and
 *   its default reward would never be learned; the grace covers expiry running between
 *   batches, a restart, and promptd being down for up to that long.
 * - Memory holds, bounded by max_entries, this instance's decisions until their deadline:
 *   journal_put only records, and the next journal_expire writes what is new in one
 *   pipelined round trip (a batch costs one round trip, not one per decision). Once
 *   written, memory keeps a copy: rewards for it need no lookup, and while Redis is
 *   unavailable they are joined to the copy and written with it when Redis answers. A
 *   copy is let go at its deadline (Redis closes the entry) or first when memory is full.
 *   A decision never written (Redis down, or refusing) takes no reward event until it is
 *   (JOIN_UNAVAILABLE: the event waits), and closes in memory only at its deadline or
 *   when memory is full; when Redis answers again, everything memory holds is written
 *   again, so that a Redis restarted without its data gets back what memory still has.
 *   With no link (redis.url none) the journal is memory only.
 * - An entry that is, or may be, in Redis is never closed in memory: another instance
 *   could close it there too. That includes a write whose reply was lost (a timeout, a
 *   broken connection): it may have applied. Such entries wait for Redis, and are given
 *   up a grace past their deadline (redis_lost), so nothing is learned twice.
 *
 * Known shortcomings:
 * - Closing in Redis is at most once: if the reply to a closing script (a first-rule join,
 *   an expiry scan) is lost, the entries it closed are learned by nobody (they are few: one
 *   call's worth). Lifting it needs a two-step claim (close with a lease, then confirm),
 *   which costs a second round trip per close.
 * - Events joined in memory during an outage to an entry that another instance closes
 *   meanwhile are not learned; and when events were joined both in memory and in Redis,
 *   which came first is not known (memory's are taken as the earlier, for first/last).
 * - While Redis is unavailable, reward events for entries it does not have wait (in
 *   Kafka, paused: pipeline.h), so a long outage makes them late: their decisions close
 *   at their deadline with the default reward. That is the price of learning each reward
 *   once: a close in memory alone is forgotten by a crash, and the event read again after
 *   the restart would be learned a second time.
 * - A reward for another instance's decision costs two round trips (journal_decision,
 *   then journal_reward), because the reward function needs the decision before the join.
 * - The scripts name keys they build from ids, so Redis Cluster is not supported (hiredis
 *   0.14 has no cluster client either).
 *
 * Threads: one thread (the serving thread) uses a journal; the link is shared with the
 * cache and the session store on that thread.
 */
#ifndef PD_JOURNAL_H
#define PD_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct RedisLink;

typedef enum { JOURNAL_FIRST, JOURNAL_LAST, JOURNAL_SUM, JOURNAL_MAX, JOURNAL_MEAN } JournalRule;

#define JOURNAL_GRACE_MS (60 * 60 * 1000) /* default Redis lifetime beyond the window */

typedef struct {
    JournalRule rule;
    int64_t window_ms;     /* how long a decision waits for its reward */
    bool default_drop;     /* a decision without reward is dropped, not learned */
    double default_reward; /* otherwise it is learned with this reward */
    size_t max_entries;    /* entries held in memory, copies of Redis entries included */
    int64_t grace_ms;      /* Redis keys live window + grace; 0: JOURNAL_GRACE_MS */
} JournalConfig;

/* A closed decision, handed to the caller, who owns the two buffers. */
typedef struct {
    char *decision; /* the decision's JSON, NUL-terminated */
    void *record;   /* the learning record as given to journal_put */
    size_t record_len;
    double reward;
    unsigned events; /* reward events joined (0: the default reward applied) */
    int64_t made_ms; /* when the decision was made */
    /* Where a learner resumes after this experience: its offset in the experience topic
     * plus one (learner.mode distributed); 0 when it did not come from that topic. */
    int64_t next_offset;
} Experience;

void experience_free(Experience *e);

typedef struct Journal Journal;

/* Parses "first", "last", "sum", "max" or "mean"; -1 if unknown. */
int journal_rule_parse(const char *name);

/* A journal. link: Redis, shared and not owned (it must outlive the journal), or NULL for
 * memory only. prefix: the start of every key, so that deployments sharing a Redis do
 * not meet ("promptd:<kafka.group.id>:"); copied. Returns NULL when out of memory. */
Journal *journal_new(const JournalConfig *cfg, struct RedisLink *link, const char *prefix);

/* Writes what memory still holds to Redis when it answers (one bounded round trip), so a
 * restart can join it; then frees everything. */
void journal_free(Journal *j);

/* Applies a reloaded configuration: rule, default and capacity apply to entries already
 * made too (Redis entries keep every aggregate); the window and grace do not change. */
void journal_configure(Journal *j, const JournalConfig *cfg);

/* Records a decision, in memory, for the next journal_expire to write to Redis. Copies
 * everything. Returns 0, or -1 when out of memory (the decision then simply goes
 * unlearned). A second decision for an id replaces the first (a re-delivered prompt
 * decided again). Never does I/O. */
int journal_put(Journal *j, const char *id, size_t id_len, const char *decision,
                size_t decision_len, const void *record, size_t record_len, int64_t now_ms);

/* The decision JSON of an open entry, for the reward function; NULL when unknown, closed
 * or expired. Valid until the next journal call. Looks in memory, then in Redis (one
 * round trip, at most the command timeout). A copy in memory may belong to an entry
 * another instance has just closed: journal_reward then says JOIN_LATE. */
const char *journal_decision(Journal *j, const char *id, size_t id_len);

typedef enum {
    JOIN_CLOSED,      /* the reward closed the entry: *out is an experience */
    JOIN_ACCUMULATED, /* added to the entry's aggregate; it closes with its window */
    JOIN_UNKNOWN,     /* no decision with this id (never made here, or long gone) */
    JOIN_LATE,        /* the entry already closed: the event is counted and ignored */
    JOIN_UNAVAILABLE, /* Redis could not take the join now (down, refusing, or its entry
                       * not yet written back): counted; the caller keeps the event and
                       * offers it again once Redis answers (journal_ready) */
} JoinResult;

/* Joins reward r to the entry of id. With the first rule the entry closes and *out is
 * filled. An entry in Redis is joined there (one round trip; none when the
 * journal_decision just before found nothing), or, during an outage, to memory's copy,
 * which only Redis may close. An entry not yet in Redis is written first; while it cannot
 * be, the answer is JOIN_UNAVAILABLE. Without a link, memory joins and closes. */
JoinResult journal_reward(Journal *j, const char *id, size_t id_len, double r, int64_t now_ms,
                          Experience *out);

/* Closes up to max entries whose window ended by now_ms (and, when memory is over
 * capacity, the oldest there). Fills out[0..n) with those that are learned; returns n.
 * Entries dropped by the default-drop rule are counted, not returned. Also writes what
 * Redis lacks (new decisions, events joined during an outage; up to 512 a call), in the
 * same round trip as the scan of Redis for due entries (any instance's). The scan runs
 * when an entry can be due (at the earliest deadline it knows of, and at least once a
 * second in now_ms) and nothing is left unwritten. max 0 only writes. Call until it
 * returns less than max. */
size_t journal_expire(Journal *j, int64_t now_ms, Experience *out, size_t max);

typedef struct {
    size_t open;        /* entries in memory, copies of Redis entries included */
    uint64_t joined;    /* reward events joined to an open entry */
    uint64_t closed;    /* entries closed with at least one event */
    uint64_t expired;   /* entries closed with no event (default reward or dropped) */
    uint64_t dropped;   /* of those, dropped by reward.default drop */
    uint64_t late;      /* events for entries already closed */
    uint64_t unknown;   /* events for ids never seen */
    uint64_t evicted;   /* entries closed early because memory was full */
    uint64_t replaced;  /* entries superseded by a new decision for the same id */
    uint64_t redecided; /* decisions for ids already closed: not journaled (learned once) */

    bool redis_enabled;         /* a link was given */
    uint64_t redis_open;        /* ids in the shared Redis index at the last scan */
    uint64_t redis_puts;        /* writes Redis took (a decision again after an outage) */
    uint64_t redis_fallbacks;   /* decisions made while Redis was unavailable or refusing */
    uint64_t redis_uncertain;   /* decisions whose write got no reply: written again later */
    uint64_t redis_unavailable; /* reward events Redis could not join yet: offered again */
    uint64_t redis_errors;      /* error replies and failed round trips */
    uint64_t redis_lost;        /* entries nobody could learn: Redis dropped them first */
    bool redis_refusing;        /* Redis answers the journal's writes with errors now */
} JournalStats;

JournalStats journal_stats(const Journal *j);

/* Whether a join may succeed now: no link, or Redis up and taking writes. The caller
 * offers events that got JOIN_UNAVAILABLE again when it turns true (and at most once a
 * second meanwhile: the refusal clears only when a write succeeds). */
bool journal_ready(const Journal *j);

#endif
