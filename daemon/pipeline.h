/*
 * The serving pipeline: a batch of prompt messages in, one decision or one dead letter out
 * per message. Stages run over the whole batch in turn (decode, normalise, encode, select
 * and render, produce), so that a stage works on the batch at once: the encoder encodes
 * the whole batch in one packed forward pass.
 *
 * Selection is uniform among the templates the pack finds eligible, and the decision
 * records that probability: a real logging policy, until the learned one replaces it.
 *
 * Runs on the serving thread only.
 */
#ifndef PD_PIPELINE_H
#define PD_PIPELINE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "cache.h"
#include "config.h"
#include "kafka.h"
#include "model.h"
#include "pack.h"

typedef struct Pipeline Pipeline;

/* Returns NULL when out of memory. k, cache, model and pack are borrowed and must outlive
 * their use. */
Pipeline *pipeline_new(const Config *c, Kafka *k, Cache *cache, Model *model, Pack *pack);

/* Serves from pack from the next batch on; returns the pack it replaces. */
Pack *pipeline_swap_pack(Pipeline *p, Pack *pack);
void pipeline_free(Pipeline *p);

/* Picks up reloadable settings (prompt.max_bytes, dead_letter.max_payload). */
void pipeline_reconfigure(Pipeline *p, const Config *c);

/* Produces an output for each of msgs[0..n). A bad message becomes a dead letter and never
 * stops the batch. Returns 0, or PD_EFATAL with err filled when outputs cannot be sent. */
int pipeline_run(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen);

#endif
