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
 * This is the in-process journal, bounded by a number of entries: when full, the oldest
 * entry is closed early (counted). Entries are closed in the order they were made, since
 * every entry has the same window. One thread (the serving thread) uses it.
 */
#ifndef PD_JOURNAL_H
#define PD_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { JOURNAL_FIRST, JOURNAL_LAST, JOURNAL_SUM, JOURNAL_MAX, JOURNAL_MEAN } JournalRule;

typedef struct {
    JournalRule rule;
    int64_t window_ms;     /* how long a decision waits for its reward */
    bool default_drop;     /* a decision without reward is dropped, not learned */
    double default_reward; /* otherwise it is learned with this reward */
    size_t max_entries;
} JournalConfig;

/* A closed decision, handed to the caller, who owns the two buffers. */
typedef struct {
    char *decision; /* the decision's JSON, NUL-terminated */
    void *record;   /* the learning record as given to journal_put */
    size_t record_len;
    double reward;
    unsigned events; /* reward events joined (0: the default reward applied) */
    int64_t made_ms; /* when the decision was made */
} Experience;

void experience_free(Experience *e);

typedef struct Journal Journal;

/* Parses "first", "last", "sum", "max" or "mean"; -1 if unknown. */
int journal_rule_parse(const char *name);

Journal *journal_new(const JournalConfig *cfg);
void journal_free(Journal *j);
void journal_configure(Journal *j, const JournalConfig *cfg);

/* Records a decision. Copies everything. Returns 0, or -1 when out of memory (the
 * decision then simply goes unlearned). A second decision for an id replaces the first
 * (a re-delivered prompt decided again). */
int journal_put(Journal *j, const char *id, size_t id_len, const char *decision,
                size_t decision_len, const void *record, size_t record_len, int64_t now_ms);

/* The decision JSON of an open entry, for the reward function; NULL when unknown, closed
 * or expired. Valid until the next journal call. */
const char *journal_decision(Journal *j, const char *id, size_t id_len);

typedef enum {
    JOIN_CLOSED,      /* the reward closed the entry: *out is an experience */
    JOIN_ACCUMULATED, /* added to the entry's aggregate; it closes with its window */
    JOIN_UNKNOWN,     /* no decision with this id (never made here, or long gone) */
    JOIN_LATE,        /* the entry already closed: the event is counted and ignored */
} JoinResult;

/* Joins reward r to the entry of id. With the first rule, or once the window has passed,
 * the entry closes and *out is filled. */
JoinResult journal_reward(Journal *j, const char *id, size_t id_len, double r, int64_t now_ms,
                          Experience *out);

/* Closes up to max entries whose window ended by now_ms (and, when over capacity, the
 * oldest). Fills out[0..n) with those that are learned; returns n. Entries dropped by the
 * default-drop rule are counted, not returned. */
size_t journal_expire(Journal *j, int64_t now_ms, Experience *out, size_t max);

typedef struct {
    size_t open;       /* entries waiting */
    uint64_t joined;   /* reward events joined to an open entry */
    uint64_t closed;   /* entries closed with at least one event */
    uint64_t expired;  /* entries closed with no event (default reward or dropped) */
    uint64_t dropped;  /* of those, dropped by reward.default drop */
    uint64_t late;     /* events for entries already closed */
    uint64_t unknown;  /* events for ids never seen */
    uint64_t evicted;  /* entries closed early because the journal was full */
    uint64_t replaced; /* entries superseded by a new decision for the same id */
} JournalStats;

JournalStats journal_stats(const Journal *j);

#endif
