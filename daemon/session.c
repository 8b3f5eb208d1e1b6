/* The in-process session store: a hash map plus a recency list; see session.h. */
#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "hashmap.h"

typedef struct Entry {
    struct Entry *prev, *next; /* recency: head is the least recently seen */
    uint64_t hash;
    int64_t seen_ms;
    uint32_t turn, count;
    uint64_t prev_template;
    double prev_reward;
    bool has_reward;
    float mean[]; /* [dim] */
} Entry;

struct SessionStore {
    int dim;
    int64_t ttl_ms;
    size_t max;
    HashMap map;
    Entry *head, *tail;
    size_t len;
};

SessionStore *session_new(int dim, int64_t ttl_ms, size_t max_sessions) {
    SessionStore *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->dim = dim;
    s->ttl_ms = ttl_ms;
    s->max = max_sessions ? max_sessions : 1;
    return s;
}

void session_free(SessionStore *s) {
    if (!s) return;
    while (s->head) {
        Entry *e = s->head;
        s->head = e->next;
        free(e);
    }
    hashmap_free(&s->map);
    free(s);
}

static void unlink_entry(SessionStore *s, Entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void append(SessionStore *s, Entry *e) {
    e->prev = s->tail;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
}

static void drop(SessionStore *s, Entry *e) {
    unlink_entry(s, e);
    hashmap_remove(&s->map, e->hash);
    s->len--;
    free(e);
}

/* Forgets sessions past their TTL, and the least recently seen beyond capacity. */
static void expire(SessionStore *s, int64_t now_ms) {
    while (s->head && (now_ms - s->head->seen_ms > s->ttl_ms || s->len > s->max)) drop(s, s->head);
}

static uint64_t key(const char *id, size_t len) {
    return hashmap_hash(id, len, 0x73657373696f6eu);
}

SessionView session_get(SessionStore *s, const char *id, size_t len, int64_t now_ms) {
    expire(s, now_ms);
    Entry *e = hashmap_get(&s->map, key(id, len));
    if (!e) return (SessionView){0};
    return (SessionView){e->turn,       e->prev_template, e->prev_reward,
                         e->has_reward, e->count,         e->mean};
}

static Entry *touch(SessionStore *s, uint64_t hash, int64_t now_ms) {
    Entry *e = hashmap_get(&s->map, hash);
    if (e) {
        unlink_entry(s, e);
    } else {
        e = calloc(1, sizeof *e + (size_t)s->dim * sizeof(float));
        if (!e) return NULL;
        e->hash = hash;
        if (hashmap_put(&s->map, hash, e)) {
            free(e);
            return NULL;
        }
        s->len++;
    }
    e->seen_ms = now_ms;
    append(s, e);
    return e;
}

int session_decided(SessionStore *s, const char *id, size_t len, uint64_t template_hash,
                    const float *vector, int64_t now_ms) {
    Entry *e = touch(s, key(id, len), now_ms);
    if (!e) return -1;
    e->turn++;
    e->prev_template = template_hash;
    e->has_reward = false;

    /* An incremental mean: exact, and needs no history. */
    e->count++;
    for (int i = 0; i < s->dim; i++) e->mean[i] += (vector[i] - e->mean[i]) / (float)e->count;
    expire(s, now_ms);
    return 0;
}

void session_rewarded(SessionStore *s, const char *id, size_t len, double reward, int64_t now_ms) {
    Entry *e = hashmap_get(&s->map, key(id, len));
    if (!e) return;
    e->prev_reward = reward;
    e->has_reward = true;
    (void)now_ms;
}

size_t session_count(const SessionStore *s) {
    return s->len;
}
