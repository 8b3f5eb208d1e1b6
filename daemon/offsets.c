/* Per-partition rings of consumed offsets and their commit points. */
#include "offsets.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t offset;
    bool done;
} Entry;

/* Entries [head, tail) are outstanding, in arrival order; sequence numbers are absolute, the
 * ring index is seq & (cap - 1). */
typedef struct {
    Entry *ring;
    size_t cap; /* a power of two, or 0 */
    uint64_t head, tail;
    uint32_t epoch; /* bumped by a reset, so that older tokens are recognised */
} Partition;

struct OffsetToken {
    int32_t partition;
    uint32_t epoch;
    uint64_t seq;
};

struct OffsetTracker {
    Partition *parts;
    size_t nparts;
    size_t pending;
};

OffsetTracker *offtrack_new(void) {
    return calloc(1, sizeof(OffsetTracker));
}

void offtrack_free(OffsetTracker *t) {
    if (!t) return;
    for (size_t i = 0; i < t->nparts; i++) free(t->parts[i].ring);
    free(t->parts);
    free(t);
}

static Partition *partition_get(OffsetTracker *t, int32_t partition) {
    if (partition < 0) return NULL;
    if ((size_t)partition >= t->nparts) {
        size_t n = (size_t)partition + 1;
        Partition *grown = realloc(t->parts, n * sizeof *grown);
        if (!grown) return NULL;
        memset(grown + t->nparts, 0, (n - t->nparts) * sizeof *grown);
        t->parts = grown;
        t->nparts = n;
    }
    return &t->parts[partition];
}

/* Doubles the ring, keeping entries at the same sequence numbers. */
static int ring_grow(Partition *p) {
    size_t cap = p->cap ? p->cap * 2 : 64;
    Entry *ring = malloc(cap * sizeof *ring);
    if (!ring) return -1;
    for (uint64_t s = p->head; s < p->tail; s++) ring[s & (cap - 1)] = p->ring[s & (p->cap - 1)];
    free(p->ring);
    p->ring = ring;
    p->cap = cap;
    return 0;
}

OffsetToken *offtrack_add(OffsetTracker *t, int32_t partition, int64_t offset) {
    Partition *p = partition_get(t, partition);
    if (!p) return NULL;
    if (p->tail - p->head == p->cap && ring_grow(p)) return NULL;

    OffsetToken *tok = malloc(sizeof *tok);
    if (!tok) return NULL;
    *tok = (OffsetToken){partition, p->epoch, p->tail};
    p->ring[p->tail & (p->cap - 1)] = (Entry){offset, false};
    p->tail++;
    t->pending++;
    return tok;
}

int64_t offtrack_done(OffsetTracker *t, OffsetToken *tok, int32_t *partition) {
    Partition *p = (size_t)tok->partition < t->nparts ? &t->parts[tok->partition] : NULL;
    bool live = p && tok->epoch == p->epoch && tok->seq >= p->head && tok->seq < p->tail;
    *partition = tok->partition;
    if (!live) {
        free(tok);
        return -1;
    }

    Entry *e = &p->ring[tok->seq & (p->cap - 1)];
    free(tok);
    if (e->done) return -1; /* a second report for one message: nothing new */
    e->done = true;
    t->pending--;

    int64_t commit = -1;
    while (p->head < p->tail && p->ring[p->head & (p->cap - 1)].done) {
        commit = p->ring[p->head & (p->cap - 1)].offset + 1;
        p->head++;
    }
    return commit;
}

void offtrack_abandon(OffsetToken *tok) {
    free(tok);
}

void offtrack_reset(OffsetTracker *t, int32_t partition) {
    Partition *p = partition_get(t, partition);
    if (!p) return;
    for (uint64_t s = p->head; s < p->tail; s++)
        if (!p->ring[s & (p->cap - 1)].done) t->pending--;
    p->head = p->tail;
    p->epoch++;
}

size_t offtrack_pending(const OffsetTracker *t) {
    return t->pending;
}

size_t offtrack_pending_in(const OffsetTracker *t, int32_t partition) {
    if (partition < 0 || (size_t)partition >= t->nparts) return 0;
    const Partition *p = &t->parts[partition];
    size_t n = 0;
    for (uint64_t s = p->head; s < p->tail; s++) n += !p->ring[s & (p->cap - 1)].done;
    return n;
}
