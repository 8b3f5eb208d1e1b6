/*
 * Process-wide counters: the serving thread and the learner add to them, and the metrics
 * endpoint and the shutdown summary read them. Relaxed atomics: each counter is exact, but
 * a reader may see two counters at slightly different moments.
 */
#ifndef PD_STATS_H
#define PD_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "message.h"

typedef struct {
    atomic_uint_fast64_t prompts_consumed; /* prompt messages taken from the broker */
    atomic_uint_fast64_t decisions_acked;  /* decisions the broker acknowledged */
    atomic_uint_fast64_t dead_letters_acked[MSG_REASON_COUNT]; /* by reason */
    atomic_uint_fast64_t produce_failures; /* deliveries that failed and were re-sent */
    atomic_uint_fast64_t queue_full_waits; /* produce calls that found the queue full */
    atomic_uint_fast64_t pauses;           /* times the input was paused for backpressure */
    atomic_uint_fast64_t offsets_stored;   /* commit points handed to the consumer */
    atomic_uint_fast64_t offset_store_errors;
    atomic_uint_fast64_t consumer_errors; /* error events from the consumer */
    atomic_uint_fast64_t rebalances;

    /* policy packs */
    atomic_uint_fast64_t pack_reloads_ok;
    atomic_uint_fast64_t pack_reloads_failed;
    atomic_uint_fast64_t pack_last_reload_ok; /* 1 or 0 */
    atomic_uint_fast64_t pack_last_reload_ms; /* wall clock of the last good reload */
    atomic_uint_fast64_t render_errors;
    atomic_uint_fast64_t eligible_errors;
    atomic_uint_fast64_t no_template;
    atomic_uint_fast64_t feature_errors;

    /* policy and rewards */
    atomic_uint_fast64_t selections;
    atomic_uint_fast64_t policy_errors;  /* non-finite scores: a uniform choice instead */
    atomic_uint_fast64_t journal_errors; /* decisions not journaled (out of memory) */
    atomic_uint_fast64_t rewards_consumed;
    atomic_uint_fast64_t rewards_none;          /* reward() returned nil */
    atomic_uint_fast64_t reward_errors;         /* reward() failed or returned a non-number */
    atomic_uint_fast64_t rewards_waiting;       /* gauge: events kept until they can be joined */
    atomic_uint_fast64_t experiences_unlearned; /* no learner to take them */
    atomic_uint_fast64_t head_tunes;            /* fine-tuned encoder heads now serving */
} PdStats;

extern PdStats pd_stats;

static inline void pd_count(atomic_uint_fast64_t *counter, uint64_t n) {
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

static inline uint64_t pd_read(const atomic_uint_fast64_t *counter) {
    return atomic_load_explicit(counter, memory_order_relaxed);
}

#endif
