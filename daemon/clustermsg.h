/*
 * The messages of distributed learning (learner.mode distributed), as they travel on Kafka.
 *
 * - An experience message: the decision's id, the aggregated reward, how many events made
 *   it, when the decision was made, and the learning record. Every instance writes the
 *   experiences it closes to the experience topic; the learner trains on them.
 * - A policy snapshot: a checkpoint (checkpoint.h: parameters, optimiser moments, version,
 *   layout, its own CRC-32) and the experience topic's offset after the last experience
 *   learned into it, where a new learner resumes.
 *
 * Each is framed with a magic and a CRC-32, so that a damaged message is named and refused
 * rather than trained on or served. Pure encoding: no Kafka, no logging.
 */
#ifndef PD_CLUSTERMSG_H
#define PD_CLUSTERMSG_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "journal.h"

/* The message for e, whose decision has the given id: malloc'd, *len bytes. NULL when out
 * of memory or when the id or record is too long to frame. */
void *clustermsg_experience_encode(const Experience *e, const char *id, size_t *len);

/* Reads an experience message into *out, which owns its buffers afterwards
 * (experience_free): the record as it was, and as the decision a JSON object holding only
 * the id. Returns 0, or -1 with err saying what is wrong with the bytes. */
int clustermsg_experience_decode(const void *data, size_t len, Experience *out, char *err,
                                 size_t errlen);

/* The snapshot message of ck with the experience offset to resume from: malloc'd, *len
 * bytes; NULL when out of memory. */
void *clustermsg_snapshot_encode(const Checkpoint *ck, int64_t next_offset, size_t *len);

/* Reads a snapshot message into *ck (checkpoint_free it) and *next_offset. name says where
 * the bytes came from, for err; a layout other than layout (unless NULL) is refused.
 * Returns 0, or -1 with err. */
int clustermsg_snapshot_decode(const char *name, const void *data, size_t len, const char *layout,
                               Checkpoint *ck, int64_t *next_offset, char *err, size_t errlen);

#endif
