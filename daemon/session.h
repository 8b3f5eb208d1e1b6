/*
 * Session context: what the policy knows about the earlier turns of a session (an
 * incident, a conversation) when it chooses a template for the next prompt: the turn
 * index, the previous template and its reward, and the running mean of the session's
 * semantic vectors.
 *
 * This is the in-process store: sessions unseen for the TTL are forgotten, and the least
 * recently seen go first when it is full. One thread (the serving thread) uses it.
 */
#ifndef PD_SESSION_H
#define PD_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t turn;          /* decisions made in the session so far */
    uint64_t prev_template; /* hash of the previous decision's template name; 0: none */
    double prev_reward;     /* the reward of the previous decision, if has_reward */
    bool has_reward;
    uint32_t count;    /* vectors in the mean */
    const float *mean; /* [dim] running mean of the session's vectors */
} SessionView;

typedef struct SessionStore SessionStore;

SessionStore *session_new(int dim, int64_t ttl_ms, size_t max_sessions);
void session_free(SessionStore *s);

/* The context of session id (zeroed when the session is new or forgotten). The view is
 * valid until the next call. */
SessionView session_get(SessionStore *s, const char *id, size_t len, int64_t now_ms);

/* Records a decision of the session: the turn advances, the template becomes the previous
 * one, the vector joins the mean. Returns 0 or -1 (out of memory: the context is lost,
 * which only costs the policy some context). */
int session_decided(SessionStore *s, const char *id, size_t len, uint64_t template_hash,
                    const float *vector, int64_t now_ms);

/* Records the reward of the session's latest decision. */
void session_rewarded(SessionStore *s, const char *id, size_t len, double reward, int64_t now_ms);

/* Sessions held now. */
size_t session_count(const SessionStore *s);

#endif
