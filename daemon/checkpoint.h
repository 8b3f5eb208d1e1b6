/*
 * Checkpoints of the learned policy: its parameters, the optimiser's moments and the
 * policy version, in one file per version, written atomically (a temporary file, fsync,
 * rename, fsync of the directory), so that a crash at any moment leaves either the old
 * checkpoint or the new one, never half of one. A header names the format, the version
 * and the parameter layout; a CRC-32 over the whole file catches corruption.
 *
 * On start the newest valid checkpoint is loaded; a corrupt or mismatched one is named
 * (through the caller's callback) and skipped for the one before it.
 *
 * No logging here; the caller decides. Any thread (the learner writes, main loads).
 */
#ifndef PD_CHECKPOINT_H
#define PD_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#define CHECKPOINT_LAYOUT_MAX 96

typedef struct {
    uint64_t policy_version;
    uint64_t model_id;                  /* the encoder the states were computed with */
    char layout[CHECKPOINT_LAYOUT_MAX]; /* the parameter layout, e.g. "policy/1 D=144 H=64" */
    uint64_t step;                      /* optimiser steps taken */
    float *params;                      /* nparams each: parameters, first and second moments */
    float *m;
    float *v;
    size_t nparams;
    uint32_t crc; /* set by loading: the file's CRC-32, for the log to name what was loaded */
} Checkpoint;

/* Writes ck into dir as policy-<version>.ckpt, atomically, then removes all but the keep
 * newest checkpoints. Returns 0, or -1 with err naming the file and the system error. */
int checkpoint_write(const char *dir, const Checkpoint *ck, int keep, char *err, size_t errlen);

/* Called for every checkpoint that is skipped, with its path and why. */
typedef void (*CheckpointSkip)(void *ctx, const char *path, const char *why);

/* Loads the newest valid checkpoint of dir whose layout equals layout into *out (which
 * owns its three buffers afterwards; free with checkpoint_free). Returns 1 when one was
 * loaded, 0 when there is none, -1 with err when dir cannot be read. */
int checkpoint_load_latest(const char *dir, const char *layout, Checkpoint *out,
                           CheckpointSkip skip, void *ctx, char *err, size_t errlen);

/* Loads one file; returns 0, or -1 with err saying what is wrong with it. */
int checkpoint_load(const char *path, const char *layout, Checkpoint *out, char *err,
                    size_t errlen);

/* The bytes of ck as a checkpoint file holds them (CRC included), for sending it elsewhere
 * than a file: malloc'd, *len bytes; NULL when out of memory. */
void *checkpoint_encode(const Checkpoint *ck, size_t *len);

/* Reads checkpoint bytes that came from elsewhere than a file (name says where, for err).
 * The same checks as checkpoint_load; returns 0, or -1 with err. */
int checkpoint_decode(const char *name, const void *data, size_t len, const char *layout,
                      Checkpoint *out, char *err, size_t errlen);

void checkpoint_free(Checkpoint *ck);

#endif
