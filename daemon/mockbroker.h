/*
 * The embedded broker: librdkafka's mock cluster, listening on 127.0.0.1, so that promptd
 * runs with no Kafka installed and other processes (kcat, tests, the simulator) can talk
 * to it over the real protocol.
 *
 * Limits of librdkafka 2.0.2's mock, measured here: each partition keeps only about 5 MiB
 * and silently drops older messages, and a consumer group join takes about 3 s. It is for
 * trying promptd out and for tests, not for production data.
 */
#ifndef PD_MOCKBROKER_H
#define PD_MOCKBROKER_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stddef.h>

typedef struct MockBroker MockBroker;

/* Starts a cluster of `brokers` brokers and creates each topic with `partitions`
 * partitions. Returns 0, or an error with err filled. */
int mockbroker_start(MockBroker **out, int brokers, const char *const *topics, size_t ntopics,
                     int partitions, char *err, size_t errlen);

/* "127.0.0.1:port,..." — valid until mockbroker_stop. */
const char *mockbroker_bootstraps(const MockBroker *mb);

/* For tests that inject faults (rd_kafka_mock_push_request_errors and friends). */
rd_kafka_mock_cluster_t *mockbroker_cluster(MockBroker *mb);

/* Writes the bootstrap address to path atomically (a temporary file, then rename), so a
 * reader never sees half of it. Returns 0 or an error with err filled. */
int mockbroker_write_bootstrap(const MockBroker *mb, const char *path, char *err, size_t errlen);

void mockbroker_stop(MockBroker *mb);

#endif
