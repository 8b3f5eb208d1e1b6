/*
 * The in-process journal: a first-in-first-out queue of entries (decisions are made in
 * time order and share one window, so the oldest entry always closes first), an index by
 * id, and a memory of recently closed ids so that a late event is told from an unknown
 * one.
 */
#include "journal.h"

#include <stdlib.h>
#include <string.h>
#include "hashmap.h"

typedef struct Entry {
    struct Entry *next; /* FIFO order */
    uint64_t hash;
    char *id;
    size_t id_len;
    char *decision;
    void *record;
    size_t record_len;
    int64_t made_ms;
    bool open;
    unsigned events;
    double sum, max, first, last;
} Entry;

struct Journal {
    JournalConfig cfg;
    Entry *head, *tail;
    HashMap open;          /* hash -> Entry*, for open entries */
    HashMap closed;        /* hash -> (void *)1, ids closed recently */
    size_t queued;         /* entries in the FIFO, open or closed: what the capacity bounds */
    uint64_t *closed_ring; /* the order of `closed`, to forget the oldest */
    size_t closed_pos, closed_cap;
    JournalStats stats;
};

static uint64_t id_hash(const char *id, size_t len) {
    return hashmap_hash(id, len, 0x6a6f75726e616cu);
}

/* --- entries --- */

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
    if (!j->closed_cap) return;
    uint64_t old = j->closed_ring[j->closed_pos];
    if (old) hashmap_remove(&j->closed, old);
    j->closed_ring[j->closed_pos] = hash;
    j->closed_pos = (j->closed_pos + 1) % j->closed_cap;
    hashmap_put(&j->closed, hash, (void *)1);
}

static double aggregate(const JournalConfig *cfg, const Entry *e) {
    switch (cfg->rule) {
    case JOURNAL_FIRST: return e->first;
    case JOURNAL_LAST: return e->last;
    case JOURNAL_SUM: return e->sum;
    case JOURNAL_MAX: return e->max;
    default: return e->sum / e->events;
    }
}

/* Closes e: moves its buffers into out (returns true) or drops it (returns false). The
 * entry stays in the FIFO, closed, until it reaches the head. */
static bool close_entry(Journal *j, Entry *e, Experience *out) {
    e->open = false;
    hashmap_remove(&j->open, e->hash);
    remember_closed(j, e->hash);

    if (e->events == 0) {
        j->stats.expired++;
        if (j->cfg.default_drop) {
            j->stats.dropped++;
            return false;
        }
    } else {
        j->stats.closed++;
    }
    *out = (Experience){e->decision,   e->record,
                        e->record_len, e->events ? aggregate(&j->cfg, e) : j->cfg.default_reward,
                        e->events,     e->made_ms};
    e->decision = NULL;
    e->record = NULL;
    return true;
}

/* --- the API --- */

Journal *journal_new(const JournalConfig *cfg) {
    Journal *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->cfg = *cfg;
    j->closed_cap = cfg->max_entries ? cfg->max_entries : 1;
    j->closed_ring = calloc(j->closed_cap, sizeof *j->closed_ring);
    if (!j->closed_ring) {
        free(j);
        return NULL;
    }
    return j;
}

void journal_configure(Journal *j, const JournalConfig *cfg) {
    size_t ring = j->closed_cap;
    j->cfg = *cfg;
    j->cfg.max_entries = cfg->max_entries ? cfg->max_entries : 1;
    (void)ring; /* the memory of closed ids keeps its size until a restart */
}

void journal_free(Journal *j) {
    if (!j) return;
    while (j->head) {
        Entry *e = j->head;
        j->head = e->next;
        entry_free(e);
    }
    hashmap_free(&j->open);
    hashmap_free(&j->closed);
    free(j->closed_ring);
    free(j);
}

static char *copy(const void *src, size_t len, bool terminate) {
    char *p = malloc(len + terminate);
    if (!p) return NULL;
    if (len) memcpy(p, src, len);
    if (terminate) p[len] = 0;
    return p;
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
    e->record_len = record_len;
    e->made_ms = now_ms;
    e->open = true;

    /* A second decision for an id (a re-delivered prompt): the newer one is the one whose
     * reward will come; the older is closed without a reward and not learned. */
    Entry *old = hashmap_get(&j->open, e->hash);
    if (old && old->id_len == id_len && !memcmp(old->id, id, id_len)) {
        old->open = false;
        hashmap_remove(&j->open, old->hash);
        j->stats.replaced++;
    }
    if (hashmap_put(&j->open, e->hash, e)) {
        entry_free(e);
        return -1;
    }
    hashmap_remove(&j->closed, e->hash);
    if (j->tail)
        j->tail->next = e;
    else
        j->head = e;
    j->tail = e;
    j->queued++;
    return 0;
}

static Entry *find_open(Journal *j, const char *id, size_t id_len) {
    Entry *e = hashmap_get(&j->open, id_hash(id, id_len));
    return e && e->id_len == id_len && !memcmp(e->id, id, id_len) ? e : NULL;
}

const char *journal_decision(Journal *j, const char *id, size_t id_len) {
    Entry *e = find_open(j, id, id_len);
    return e ? e->decision : NULL;
}

JoinResult journal_reward(Journal *j, const char *id, size_t id_len, double r, int64_t now_ms,
                          Experience *out) {
    Entry *e = find_open(j, id, id_len);
    if (!e || now_ms - e->made_ms > j->cfg.window_ms) {
        bool closed = e || hashmap_get(&j->closed, id_hash(id, id_len));
        if (closed)
            j->stats.late++;
        else
            j->stats.unknown++;
        return closed ? JOIN_LATE : JOIN_UNKNOWN;
    }

    j->stats.joined++;
    if (e->events++ == 0) e->first = e->max = r;
    e->last = r;
    e->sum += r;
    if (r > e->max) e->max = r;
    if (j->cfg.rule != JOURNAL_FIRST) return JOIN_ACCUMULATED;
    return close_entry(j, e, out) ? JOIN_CLOSED : JOIN_ACCUMULATED;
}

size_t journal_expire(Journal *j, int64_t now_ms, Experience *out, size_t max) {
    size_t n = 0;
    while (j->head && n < max) {
        Entry *e = j->head;
        bool due = now_ms - e->made_ms > j->cfg.window_ms;
        bool over = j->queued > j->cfg.max_entries;
        if (e->open && !due && !over) break;

        if (e->open) {
            if (!due) j->stats.evicted++;
            if (close_entry(j, e, &out[n])) n++;
        }
        j->head = e->next;
        if (!j->head) j->tail = NULL;
        j->queued--;
        entry_free(e);
    }
    return n;
}

JournalStats journal_stats(const Journal *j) {
    JournalStats s = j->stats;
    s.open = j->open.len;
    return s;
}
