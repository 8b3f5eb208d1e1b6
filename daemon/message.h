/*
 * The wire formats: decoding a prompt, encoding a decision and a dead letter (JSON, UTF-8).
 *
 *   prompt:      {"id": "...", "text": "...", "session": "...", "attrs": {...}}
 *   decision:    {"id", "session"?, "template", "prompt", "p", "value"?, "pack",
 *                 "script_version", "policy_version", "ts"}
 *   dead letter: {"reason", "error", "topic", "partition", "offset", "timestamp",
 *                 "payload" | "payload_base64", "payload_bytes", "payload_truncated"}
 *
 * Decoding never trusts the payload: every way it can be wrong has a reason code and a
 * sentence a person can act on. No logging here.
 */
#ifndef PD_MESSAGE_H
#define PD_MESSAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why a message went to the dead-letter topic. Stable names: they are metric labels. */
typedef enum {
    MSG_OK = 0,
    MSG_TOO_LARGE,
    MSG_INVALID_UTF8,
    MSG_INVALID_JSON,
    MSG_NOT_AN_OBJECT,
    MSG_MISSING_ID,
    MSG_INVALID_ID,
    MSG_MISSING_TEXT,
    MSG_INVALID_TEXT,
    MSG_INVALID_FIELD,
    MSG_NO_TEMPLATE,  /* the pack has no template eligible for this prompt */
    MSG_RENDER_ERROR, /* the chosen template's render() failed */
    MSG_REASON_COUNT
} MsgReason;

const char *msg_reason_name(MsgReason reason);

#define MSG_ID_MAX 256 /* bytes; ids are join keys, not content */

/* A decoded prompt. The strings point into root, which the prompt owns. */
typedef struct {
    json_t *root;
    char id[MSG_ID_MAX + 1]; /* numeric ids are kept as their decimal text */
    size_t id_len;
    const char *text; /* the original text, kept for rendering */
    size_t text_len;
    const char *session; /* NULL when the prompt has none */
    size_t session_len;
    json_t *attrs; /* borrowed from root; NULL when absent */
} Prompt;

/* Decodes payload[0..len). Returns MSG_OK with p filled (free it with msg_prompt_free), or
 * the reason with a human sentence in err and p empty. */
MsgReason msg_decode_prompt(Prompt *p, const void *payload, size_t len, size_t max_bytes, char *err,
                            size_t errlen);
void msg_prompt_free(Prompt *p);

/* A decoded reward event: {"id": ..., any further fields for the pack's reward()}. */
typedef struct {
    json_t *root; /* owned */
    char id[MSG_ID_MAX + 1];
    size_t id_len;
} RewardEvent;

/* Decodes a reward event like a prompt (same reasons), requiring only an id. */
MsgReason msg_decode_reward(RewardEvent *r, const void *payload, size_t len, size_t max_bytes,
                            char *err, size_t errlen);
void msg_reward_free(RewardEvent *r);

/* A growable output buffer, reused across messages. */
typedef struct {
    char *data;
    size_t len, cap;
} MsgBuf;

void msg_buf_free(MsgBuf *b);

/* What was decided for a prompt. */
typedef struct {
    const char *template_name; /* the chosen template */
    const char *prompt;        /* the rendered prompt */
    size_t prompt_len;
    double p;                   /* the probability the logging policy gave the choice */
    double value;               /* the policy's V(state); left out of the JSON if not finite */
    const char *pack;           /* the pack's name */
    const char *script_version; /* the pack's version (a hash of its files) */
    int64_t policy_version;     /* 0: the uniform logging policy */
    int64_t ts_ms;              /* when the decision was made */
} Decision;

/* Encodes the decision d for prompt p into out. Returns 0 or -1 (no memory). */
int msg_encode_decision(MsgBuf *out, const Prompt *p, const Decision *d);

/* Where a message came from. */
typedef struct {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* the broker's timestamp of the input, -1 if none */
} MsgSource;

/* Encodes a dead letter: the reason code, the sentence, where the input came from and the
 * input itself (as a string when it is UTF-8, otherwise base64), cut at max_payload bytes.
 * Returns 0 or -1 (no memory). */
int msg_encode_dead_letter(MsgBuf *out, MsgReason reason, const char *error, const MsgSource *src,
                           const void *payload, size_t len, size_t max_payload);

/* True when s[0..len) is well-formed UTF-8 (no overlongs, surrogates or values past
 * U+10FFFF). On false, *bad_at is the offset of the first bad byte. */
bool msg_utf8_valid(const void *s, size_t len, size_t *bad_at);

#endif
