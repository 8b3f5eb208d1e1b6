/*
 * Learning across instances (learner.mode distributed), through Kafka and nothing else:
 *
 * - Every instance writes the experiences it closes to the experience topic (one
 *   partition), instead of learning from them itself. The journal in Redis already
 *   guarantees that exactly one instance closes each decision.
 * - The learner is whichever instance the group <kafka.group.id>.learner assigns that
 *   partition to: Kafka's group protocol elects it, and a rebalance moves the role when the
 *   instance dies or leaves. It hands the experiences to its learner thread.
 * - The learner publishes its policy (clustermsg.h: parameters, optimiser state, version,
 *   and the experience offset after the last experience learned into it) to the policy
 *   topic every learner.publish_every. Every instance follows that topic and serves the
 *   newest valid snapshot, swapped in between batches; a damaged one is refused by its
 *   checksums and the previous one keeps serving.
 * - A new learner first reads the policy topic to its end, takes the newest snapshot and
 *   reads the experience topic from the snapshot's offset: nothing learned into the
 *   published policy is learned again, and nothing after it is skipped. The group's
 *   committed offset follows the published snapshots, for lag monitoring.
 *
 * Everything runs on the serving thread, except cluster_snapshot_sink, which the learner
 * thread calls, and cluster_stats, which any thread may call.
 */
#ifndef PD_CLUSTER_H
#define PD_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "journal.h"
#include "learner.h"

typedef struct Cluster Cluster;

/* Creates the clients: a producer for both topics, a follower of the policy topic, and,
 * when learn is true, a member of the learner group. layout is the running policy's
 * (snapshots of another layout are refused). Returns 0, or -1 with err. */
int cluster_open(Cluster **out, const Config *c, const char *brokers, const char *layout,
                 bool learn, char *err, size_t errlen);

/* The learner thread this instance runs, fed while this instance is the learner and reset
 * to the published policy while it is not. Set before the first cluster_serve. */
void cluster_set_learner(Cluster *cl, Learner *l);

/* Reads the policy topic up to its end as it is now, waiting up to timeout_ms, so that the
 * first decision is made with the current policy. Returns 0, or -1 with err (the topic
 * cannot be read in time; the caller serves its local policy until it can). */
int cluster_catch_up(Cluster *cl, int timeout_ms, char *err, size_t errlen);

/* Writes e (its decision's id is id) to the experience topic; e stays the caller's.
 * Returns 0, or -1 with err (counted as lost). */
int cluster_send_experience(Cluster *cl, const Experience *e, const char *id, char *err,
                            size_t errlen);

/* Between batches: serves deliveries, reads new snapshots, takes part in the election,
 * and while learner hands the learner thread as many experiences as it has room for. */
void cluster_serve(Cluster *cl);

/* Copies the newest valid snapshot's parameters into params when its version is newer
 * than *version, updating *version. Returns whether it did. */
bool cluster_poll_policy(Cluster *cl, float *params, uint64_t *version);

/* LearnerConfig.on_snapshot (ctx is the Cluster): publishes ck while this instance is the
 * learner. Any thread. */
void cluster_snapshot_sink(void *ctx, const Checkpoint *ck, int64_t next_offset);

typedef struct {
    bool learner;                 /* this instance is the learner now */
    uint64_t elections;           /* times it became the learner */
    uint64_t newest_version;      /* the newest valid snapshot on the policy topic */
    int64_t experience_lag;       /* learner only: experiences not yet taken (-1: unknown) */
    uint64_t experiences_sent;    /* acknowledged by the broker */
    uint64_t experiences_lost;    /* could not be written */
    uint64_t experiences_taken;   /* read by this instance as learner */
    uint64_t experiences_refused; /* damaged messages skipped */
    uint64_t snapshots_published; /* acknowledged */
    uint64_t snapshots_refused;   /* damaged or of another layout */
} ClusterStats;

ClusterStats cluster_stats(Cluster *cl);

/* Flushes what is produced (up to timeout_ms), leaves the learner group and frees. Call
 * after learner_stop, so that its final snapshot is published. */
void cluster_close(Cluster *cl, int timeout_ms);

#endif
