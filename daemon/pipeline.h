/*
 * The serving pipeline: a batch of prompt messages in, one decision or one dead letter out
 * per message. Stages run over the whole batch in turn (decode, normalise, then produce) so
 * that later stages can work on the batch at once, as the encoder's batched forward pass
 * needs.
 *
 * Runs on the serving thread only.
 */
#ifndef PD_PIPELINE_H
#define PD_PIPELINE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "config.h"
#include "kafka.h"

typedef struct Pipeline Pipeline;

/* Returns NULL when out of memory. k is borrowed and must outlive the pipeline. */
Pipeline *pipeline_new(const Config *c, Kafka *k);
void pipeline_free(Pipeline *p);

/* Picks up reloadable settings (prompt.max_bytes, dead_letter.max_payload). */
void pipeline_reconfigure(Pipeline *p, const Config *c);

/* Produces an output for each of msgs[0..n). A bad message becomes a dead letter and never
 * stops the batch. Returns 0, or PD_EFATAL with err filled when outputs cannot be sent. */
int pipeline_run(Pipeline *p, rd_kafka_message_t **msgs, int n, char *err, size_t errlen);

#endif
