/* The open-addressing map; see hashmap.h. */
#include "hashmap.h"

#include <stdbool.h>
#include <stdlib.h>
#include <xxhash.h>

uint64_t hashmap_hash(const void *data, size_t len, uint64_t seed) {
    uint64_t h = XXH64(data, len, seed);
    return h ? h : 1;
}

void *hashmap_get(const HashMap *m, uint64_t key) {
    if (!m->cap) return NULL;
    for (size_t i = key & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key) return m->values[i];
        if (m->keys[i] == 0) return NULL;
    }
}

static int grow(HashMap *m) {
    HashMap bigger = {calloc(m->cap ? m->cap * 2 : 64, sizeof(uint64_t)),
                      calloc(m->cap ? m->cap * 2 : 64, sizeof(void *)), m->cap ? m->cap * 2 : 64,
                      0};
    if (!bigger.keys || !bigger.values) {
        free(bigger.keys);
        free(bigger.values);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = m->keys[i] & (bigger.cap - 1);
        while (bigger.keys[j]) j = (j + 1) & (bigger.cap - 1);
        bigger.keys[j] = m->keys[i];
        bigger.values[j] = m->values[i];
        bigger.len++;
    }
    free(m->keys);
    free(m->values);
    *m = bigger;
    return 0;
}

int hashmap_put(HashMap *m, uint64_t key, void *value) {
    if ((m->len + 1) * 4 > m->cap * 3 && grow(m)) return -1;
    size_t i = key & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) m->len++;
    m->keys[i] = key;
    m->values[i] = value;
    return 0;
}

void hashmap_remove(HashMap *m, uint64_t key) {
    if (!m->cap) return;
    size_t mask = m->cap - 1, i = key & mask;
    while (m->keys[i] != key) {
        if (!m->keys[i]) return;
        i = (i + 1) & mask;
    }
    /* Shift back the entries of the run that would no longer be found past the hole. */
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t home = m->keys[j] & mask;
        bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (!movable) continue;
        m->keys[i] = m->keys[j];
        m->values[i] = m->values[j];
        i = j;
    }
    m->keys[i] = 0;
    m->values[i] = NULL;
    m->len--;
}

void hashmap_free(HashMap *m) {
    free(m->keys);
    free(m->values);
    m->keys = NULL;
    m->values = NULL;
    m->cap = m->len = 0;
}
