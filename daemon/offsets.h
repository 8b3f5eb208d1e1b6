/*
 * Which input offsets may be committed. A prompt's offset may be committed only when the
 * decision (or dead letter) it produced has been acknowledged by the broker, and only when
 * every earlier prompt of its partition has been too: acknowledgements arrive out of order
 * (several output partitions, the dead-letter topic, retries), and committing past a gap
 * would lose the gap on a crash. So each partition keeps its consumed offsets in arrival
 * order, and the commit point is the first one not yet acknowledged.
 *
 * Pure bookkeeping: no Kafka calls, no logging. One thread (the serving thread) uses it.
 */
#ifndef PD_OFFSETS_H
#define PD_OFFSETS_H

#include <stddef.h>
#include <stdint.h>

typedef struct OffsetTracker OffsetTracker;

/* Identifies one consumed message until it is done. Owned by the tracker's caller between
 * offtrack_add and offtrack_done, which frees it. */
typedef struct OffsetToken OffsetToken;

OffsetTracker *offtrack_new(void);
void offtrack_free(OffsetTracker *t);

/* Registers a consumed message. Returns its token, or NULL when out of memory. */
OffsetToken *offtrack_add(OffsetTracker *t, int32_t partition, int64_t offset);

/* Marks a message done and frees its token. Returns the offset to commit for *partition
 * (the next offset to read) when the partition's commit point moved, else -1. A token from
 * before offtrack_reset of its partition is stale: it is freed and -1 returned. */
int64_t offtrack_done(OffsetTracker *t, OffsetToken *tok, int32_t *partition);

/* Frees a token whose message will never be done (its output could not be sent). The
 * partition's commit point stays before it until a reset, so it is re-read after a restart
 * or a rebalance. */
void offtrack_abandon(OffsetToken *tok);

/* Forgets a partition (revoked or lost): its outstanding tokens become stale. */
void offtrack_reset(OffsetTracker *t, int32_t partition);

/* Messages registered and not yet done, over all partitions. */
size_t offtrack_pending(const OffsetTracker *t);

/* Messages of one partition registered and not yet done. */
size_t offtrack_pending_in(const OffsetTracker *t, int32_t partition);

#endif
