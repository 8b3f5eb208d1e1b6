/*
 * The serving pipeline: a batch of messages in; for each prompt one decision or one dead
 * letter out; each reward event joined to its decision.
 *
 * Prompts go through stages over the whole batch in turn, so that a stage works on the
 * batch at once: decode, normalise, embed (the cache, then one packed forward pass of the
 * encoder for the misses), select (the pack's eligible() and features(), the session's
 * context, the policy's choice), render, produce, and record the decision in the journal
 * for its reward.
 *
 * A reward event is scored by the serving pack's reward(event, decision), clipped, and
 * joined in the journal; a decision whose reward window closes becomes an experience for
 * the learner.
 *
 * Runs on the serving thread only.
 */
#ifndef PD_PIPELINE_H
#define PD_PIPELINE_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

#include "cache.h"
#include "cluster.h"
#include "config.h"
#include "journal.h"
#include "kafka.h"
#include "learner.h"
#include "model.h"
#include "pack.h"
#include "selector.h"
#include "session.h"

typedef struct Pipeline Pipeline;

/* What the pipeline works with; all borrowed, and they must outlive it. The learner
 * publishes the policy the pipeline serves; with learn false (learner.enabled no) it is
 * not given experiences, which are counted and dropped, and the policy stays frozen. */
typedef struct {
    Kafka *kafka;
    Cache *cache;
    Model *model;
    Selector *selector;
    Journal *journal;
    SessionStore *sessions;
    Learner *learner;
    bool learn;
    Cluster *cluster; /* learner.mode distributed: experiences go to the experience topic,
                         and the policy served comes from the policy topic; else NULL */
} PipelineParts;

/* Returns NULL when out of memory. */
Pipeline *pipeline_new(const Config *c, const PipelineParts *parts);
void pipeline_free(Pipeline *p);

/* Picks up reloadable settings (sizes, reward clipping). */
void pipeline_reconfigure(Pipeline *p, const Config *c);

/* Serves from pack from the next batch on: encodes its templates' about sentences for
 * the policy. Returns the pack it replaces (NULL the first time), or pack itself when it
 * cannot be used (out of memory; err says so), in which case nothing changed. */
Pack *pipeline_use_pack(Pipeline *p, Pack *pack, char *err, size_t errlen);

/* Serves with model from the next batch on (a fine-tuned encoder head): re-encodes the
 * serving pack's templates with it, as a pack swap does, and hands them to the learner.
 * Cache keys follow the model (model_cache_id), so the old model's vectors are not
 * reused. Returns the model it replaces, which the caller frees, or model itself when it
 * cannot be used (another dimension, out of memory; err says why): nothing changed. */
Model *pipeline_use_model(Pipeline *p, Model *model, char *err, size_t errlen);

/* Processes msgs[0..n). A bad message becomes a dead letter and never stops the batch.
 * Returns 0, or PD_EFATAL / PD_ENOMEM with err filled when outputs cannot be sent. */
int pipeline_run(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen);

/* Between batches: closes the decisions whose reward window ended (handing them to the
 * learner), picks up a newer policy, and offers again the reward events that had to wait
 * for the journal (Redis unavailable: they are kept, in order, with their partitions
 * paused, and done only once joined, so that a crash reads them again rather than a
 * close in memory being forgotten). Returns 0, or an error as pipeline_run. */
int pipeline_tick(Pipeline *p, int64_t now_ms, char *err, size_t errlen);

#endif
