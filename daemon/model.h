/*
 * The semantic encoder as the daemon uses it: a model file mapped read-only and validated
 * whole before use (a truncated, corrupt or mismatched file is refused, never half-loaded),
 * the tokeniser it was trained with, and a workspace that grows to the largest batch seen.
 *
 * model_encode takes a batch of normalised texts and encodes them together: one packed
 * forward pass, one sgemm per layer for the whole batch.
 *
 * A Model is used by one thread at a time (its workspace is not shared); two threads need
 * two Models, which may map the same file.
 */
#ifndef PD_MODEL_H
#define PD_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct Model Model;

/* Maps and validates the model at path. max_tokens caps the tokens of one prompt (its
 * tail is dropped beyond it, so a huge prompt cannot stall a batch). Returns 0, or -1 with
 * err naming the file and what is wrong with it. */
int model_load(Model **out, const char *path, size_t max_tokens, char *err, size_t errlen);
void model_free(Model *m);

/* 16 hex digits: the hash of the weights. Caches key on it. */
const char *model_id(const Model *m);
uint64_t model_id_u64(const Model *m);
int model_dim(const Model *m);

/* What a cached vector of this model is keyed by: the model id combined with the
 * versions of the normaliser, the tokeniser and the Unicode tables, since the same text
 * gives other tokens (and another vector) when any of them changes. */
uint64_t model_cache_id(const Model *m);
const char *model_path(const Model *m);

/* Encodes texts[0..n) (normalised text, lens in bytes) into out (n rows of model_dim
 * floats, unit length). Returns 0, or -1 with err (out of memory). */
int model_encode(Model *m, const char *const *texts, const size_t *lens, size_t n, float *out,
                 char *err, size_t errlen);

/* The path of the shipped default model: in the build tree when promptd runs from it,
 * else in the data directory. */
const char *model_default_path(void);

/* Gives OpenBLAS n threads. The serving thread and the learner share two cores, and two
 * thread pools spinning against each other cost several times their speed, so promptd
 * runs BLAS single-threaded unless told otherwise (encoder.threads). */
void model_set_threads(int n);

#endif
