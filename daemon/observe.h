/*
 * What promptd shows the outside while it serves: the Prometheus page, /healthz, and the
 * systemd STATUS= line.
 *
 * The serving thread records as it goes (latencies into lock-free histograms, selections
 * and rewards into its own tables) and publishes a snapshot of what only it may read (the
 * journal's counters, the selections per template, the moving mean reward) once per tick,
 * under a mutex held for a copy. The render and health callbacks run on the HTTP threads
 * and read that snapshot plus what is safe from any thread: pd_stats, cache_stats,
 * learner_stats. So a scrape never waits for a batch, and a batch never waits for a scrape.
 */
#ifndef PD_OBSERVE_H
#define PD_OBSERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "cluster.h"
#include "journal.h"
#include "learner.h"
#include "metrics.h"

/* Latencies, observed by the serving thread. */
typedef struct {
    MetricsHistogram cache;      /* one batch's embedding lookups (L1, then one Redis trip) */
    MetricsHistogram encode;     /* one batch's forward pass over its cache misses */
    MetricsHistogram select;     /* one prompt: state, policy scores and the sample */
    MetricsHistogram render;     /* one prompt: the template's render() */
    MetricsHistogram end_to_end; /* a prompt's Kafka timestamp to its decision produced */
} PdLatency;

extern PdLatency pd_latency;

/* What the callbacks read besides the snapshot; borrowed, alive while the server runs.
 * Any may be NULL. */
typedef struct {
    Cache *cache;
    Learner *learner;
    bool redis_configured;
    Cluster *cluster; /* learner.mode distributed */
} ObserveParts;

/* Sets up the histograms and the snapshot. Call once before the server starts. */
void observe_init(const ObserveParts *parts);

/* Serving thread: one decision for the template called name; one learned reward. */
void observe_selection(const char *name);
void observe_reward(double r);

/* Serving thread: the encoder model serving now (its 16-digit id), at start and after
 * every fine-tuned head that takes over. */
void observe_set_model(const char *id);

/* Serving thread, once per tick: publishes the snapshot. */
void observe_publish(const JournalStats *journal, uint64_t policy_version);

/* Serving thread: the loop is alive (for the stalled-loop health check). */
void observe_heartbeat(void);

/* The service's phase, for /healthz: starting and stopping are failing, serving is ready
 * unless something degrades it. */
typedef enum { OBSERVE_STARTING, OBSERVE_SERVING, OBSERVE_STOPPING } ObservePhase;
void observe_set_phase(ObservePhase phase);

/* From librdkafka's statistics callback (any thread): the consumer's lag in messages. */
void observe_kafka_lag(int64_t lag);

/* The callbacks for metrics_start (ctx unused). */
void observe_render(void *ctx, MetricsWriter *w);
void observe_health(void *ctx, MetricsHealth *h);

/* The STATUS= line: throughput since the last call, policy version, reward. */
void observe_status_line(char *buf, size_t len);

#endif
