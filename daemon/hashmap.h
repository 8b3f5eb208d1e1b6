/*
 * A map from non-zero 64-bit keys (hashes) to pointers: open addressing with linear
 * probing, and removal that shifts the following run back, so that no tombstones build up
 * in long-running maps. The caller resolves hash collisions of its own keys (it compares
 * the full key of the value it finds). One thread at a time.
 */
#ifndef PD_HASHMAP_H
#define PD_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *keys; /* 0 = empty */
    void **values;
    size_t cap, len; /* cap is 0 or a power of two */
} HashMap;

/* The value of key, or NULL. */
void *hashmap_get(const HashMap *m, uint64_t key);

/* Sets key to value (replacing). Returns 0, or -1 when out of memory. key must not be 0. */
int hashmap_put(HashMap *m, uint64_t key, void *value);

/* Removes key if present. */
void hashmap_remove(HashMap *m, uint64_t key);

void hashmap_free(HashMap *m);

/* A hash that is never 0, for keys of strings. */
uint64_t hashmap_hash(const void *data, size_t len, uint64_t seed);

#endif
