/*
 * The Kafka side of the serving loop: one consumer in a consumer group reading the prompts
 * and reward topics in batches, and one idempotent producer (acks=all) writing decisions
 * and dead letters.
 *
 * At-least-once: a prompt's offset is stored for commit only after the message it produced
 * is acknowledged, and only once every earlier prompt of its partition is acknowledged too
 * (offsets.h). Auto-commit then commits stored offsets; a revoke commits them at once. A
 * crash therefore re-delivers, never loses. When too many outputs await acknowledgement
 * the input partitions are paused, and resumed when half of them have drained.
 *
 * librdkafka's log lines and errors go through pd_log (module rdkafka). Everything here
 * runs on the serving thread: librdkafka's callbacks are served from its polls.
 */
#ifndef PD_KAFKA_H
#define PD_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "message.h"

typedef struct Kafka Kafka;

typedef enum { KAFKA_DECISIONS, KAFKA_DEAD_LETTERS, KAFKA_OUTPUT_COUNT } KafkaOutput;

/* The topics read: prompts, and reward events (when kafka.topic.rewards is set). */
typedef enum { KAFKA_PROMPTS, KAFKA_REWARDS, KAFKA_INPUT_COUNT } KafkaInput;

/* Checks the kafka.consumer.* and kafka.producer.* properties with librdkafka itself,
 * appending "file:line: key: what librdkafka says" to errs. Returns the number of errors. */
int kafka_check_config(const Config *c, ConfigErrors *errs);

/* Creates the consumer, subscribed to the prompts topic, and the producer, both connecting
 * to brokers. Returns 0, or an error with err filled. */
int kafka_open(Kafka **out, const Config *c, const char *brokers, char *err, size_t errlen);

/* Picks up the reloadable settings (kafka.max_inflight). */
void kafka_reconfigure(Kafka *k, const Config *c);

/* Takes up to max input messages into msgs, reward events first for up to half of them,
 * waiting up to wait_ms for the first. Error events of the stream are logged and counted
 * here. Returns the number taken, or PD_EFATAL with err filled when the consumer cannot
 * go on. */
int kafka_poll_batch(Kafka *k, rd_kafka_message_t **msgs, int max, int wait_ms, char *err,
                     size_t errlen);

/* What to produce for one input. headers carries one optional extra header. */
typedef struct {
    KafkaOutput output;
    MsgReason reason; /* for dead letters */
    const void *key;
    size_t key_len;
    const void *payload;
    size_t len;
} KafkaRecord;

/* Produces rec for the input message in (copying the payload). The input's offset becomes
 * committable once rec is acknowledged. Serves deliveries while the producer's queue is
 * full. Returns 0, or PD_EFATAL / PD_ENOMEM with err filled. */
int kafka_produce(Kafka *k, const rd_kafka_message_t *in, const KafkaRecord *rec, char *err,
                  size_t errlen);

/* Which input a message taken by kafka_poll_batch came from. */
KafkaInput kafka_input_of(const Kafka *k, const rd_kafka_message_t *m);

/* Marks an input done that produces no output (a reward event joined into the journal):
 * its offset becomes committable in turn. */
void kafka_done(Kafka *k, const rd_kafka_message_t *m);

/* Releases messages taken by kafka_poll_batch (NULL slots are skipped). */
void kafka_release(rd_kafka_message_t **msgs, int n);

/* Keeps reward events msgs[0..n) taken but not yet joined (the journal could not take
 * them: Redis unavailable), in their order and ahead of any kept before; their slots
 * become NULL. Until every kept event is taken back, the reward partitions are paused and
 * reward events still arriving are kept behind them, so that no later offset is committed
 * first. Returns 0, or PD_ENOMEM (nothing is kept). */
int kafka_hold(Kafka *k, rd_kafka_message_t **msgs, int n);

/* Takes back up to max kept reward events, oldest first, to be offered again (and done,
 * or kept again); the reward partitions resume once none is left. Returns how many. */
int kafka_take_held(Kafka *k, rd_kafka_message_t **msgs, int max);

/* Reward events kept by kafka_hold. */
size_t kafka_held(const Kafka *k);

/* Whether prompts assigned to this member are being read again: at an assignment, every
 * prompts partition whose last commit is behind its end is read up to that end (prompts
 * decided before a crash or by a member that left, whose decisions may be unknown to the
 * journal). A reward event for one of them read meanwhile should wait rather than be
 * counted unknown. It stops after a minute (or reward.window if shorter) in any
 * case: a partition whose last offset is a transaction marker is never read "to its end". */
bool kafka_replaying(Kafka *k);

/* Serves delivery reports (waiting up to timeout_ms for one), stores commit points,
 * re-sends failed deliveries and pauses or resumes the input. Returns 0, or PD_EFATAL with
 * err filled when the producer cannot go on (an idempotence fatal error). */
int kafka_serve(Kafka *k, int timeout_ms, char *err, size_t errlen);

/* Outputs produced and not yet acknowledged. */
size_t kafka_unacked(const Kafka *k);

/* Waits up to timeout_ms until every output is acknowledged and its offset stored.
 * Returns the number still unacknowledged. */
size_t kafka_drain(Kafka *k, int timeout_ms);

/* Leaves the group, committing the stored offsets, and frees everything. */
void kafka_close(Kafka *k);

#endif
