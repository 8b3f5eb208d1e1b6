/*
 * What promptctl's operational commands share: durations on the command line, and the
 * Kafka clients of the commands that talk to promptd through its topics (bootstrap
 * options, -X properties, following topics from their end). Where the admin endpoint is
 * comes from ctl.h (ctl_admin_target).
 *
 * Nothing here prints or exits: errors come back in the caller's buffer.
 */
#ifndef PD_CTL_COMMON_H
#define PD_CTL_COMMON_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes beside pd.h's, from <sysexits.h>. */
enum {
    CTL_EXIT_NOINPUT = 66,     /* an input file cannot be read */
    CTL_EXIT_UNAVAILABLE = 69, /* Kafka or the admin endpoint cannot be reached */
};

/* Parses a duration such as 30s, 500ms, 2m or 1h (a bare number is seconds) into
 * milliseconds. Returns 0, or -1 when text is not one. */
int ctl_duration_ms(const char *text, int64_t *ms);

#define CTL_KAFKA_PROPS_MAX 64

typedef struct {
    const char *brokers;                    /* --brokers, or NULL */
    const char *bootstrap_file;             /* --bootstrap-file, or NULL */
    const char *props[CTL_KAFKA_PROPS_MAX]; /* -X key=value, applied after promptctl's own */
    size_t nprops;
} CtlKafka;

/* Adds a -X KEY=VALUE. Returns 0, or -1 when it has no '=' or there are too many. */
int ctl_kafka_prop(CtlKafka *k, const char *kv);

/* Checks the -X properties with librdkafka, before anything waits on the network.
 * Returns 0, or -1 with err naming the property and what librdkafka says. */
int ctl_kafka_check(const CtlKafka *k, char *err, size_t errlen);

/* The bootstrap servers: --brokers, or the first line of --bootstrap-file (which promptd's
 * embedded broker writes), waiting until deadline_ms (monotonic) for the file to appear.
 * Returns 0, or -1 with err. */
int ctl_kafka_brokers(const CtlKafka *k, char *out, size_t len, uint64_t deadline_ms, char *err,
                      size_t errlen);

/* A producer or consumer for brokers, built on conf (taken over; NULL for a fresh one) with
 * the -X properties applied last. librdkafka's own log lines are dropped unless -X debug=
 * is given, because the commands report what failed themselves. Returns NULL with err. */
rd_kafka_t *ctl_kafka_client(const CtlKafka *k, const char *brokers, rd_kafka_type_t type,
                             rd_kafka_conf_t *conf, char *err, size_t errlen);

/* Assigns every partition of the n topics to consumer at its high watermark, so that it
 * reads only what is written from now on. Waits for the topics' metadata until
 * deadline_ms (monotonic). Returns 0, or PD_ETIMEOUT (no broker answered, or a topic does
 * not exist) or PD_EIO with err. */
int ctl_kafka_follow(rd_kafka_t *consumer, const char *const *topics, size_t n,
                     uint64_t deadline_ms, char *err, size_t errlen);

#endif
