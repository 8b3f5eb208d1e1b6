/*
 * A policy pack: a directory of Lua whose entry script (init.lua) returns the templates,
 * the reward function and the optional features. See README.md "Policy packs" for the
 * contract; this is its host.
 *
 * pack_load builds a pack in a fresh sandbox and checks it: it compiles, the table has
 * the right shape, template names are unique, every template renders the built-in sample
 * messages, the features have their declared length, and the pack's self-test passes.
 * Only a pack that passes is returned, so a pack in use is always a checked one.
 *
 * A pack is used by one thread at a time (the serving thread); a loader thread may build
 * the next one meanwhile, each in its own Lua state.
 */
#ifndef PD_PACK_H
#define PD_PACK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message.h"
#include "sandbox.h"

#define PACK_TEMPLATES_MAX 256
#define PACK_FEATURES_MAX  64
#define PACK_NAME_MAX      64

typedef struct Pack Pack;

typedef struct {
    const char *name;  /* stable, [A-Za-z0-9_.-], unique in the pack */
    const char *about; /* one sentence; the policy will encode it to score the template */
    bool has_eligible;
} PackTemplate;

/* Loads and checks the pack in dir, with `require` also reaching lib_dir. Returns NULL
 * with err naming the file and line (or the check) that failed. */
Pack *pack_load(const char *dir, const char *lib_dir, const SandboxLimits *limits, char *err,
                size_t errlen);
void pack_free(Pack *p);

const char *pack_name(const Pack *p);
/* 16 hex digits: XXH64 over the pack's files (paths and contents) and the helper files it
 * required. Equal versions mean equal behaviour. */
const char *pack_version(const Pack *p);
const char *pack_dir(const Pack *p);

size_t pack_template_count(const Pack *p);
const PackTemplate *pack_template(const Pack *p, size_t i);
/* Index of the template called name, or -1. */
int pack_template_index(const Pack *p, const char *name);

size_t pack_feature_count(const Pack *p);
const char *pack_feature_name(const Pack *p, size_t i);

/* --- serving: bind a message, then ask about it ---
 * pack_bind makes prompt the message of the following calls (building its Lua table
 * once); pack_unbind releases it. norm is the normalised text. */
int pack_bind(Pack *p, const Prompt *prompt, const char *norm, size_t norm_len, char *err,
              size_t errlen);
void pack_unbind(Pack *p);

/* Fills eligible[i] for every template. A template without eligible() is eligible; one
 * whose eligible() fails is not, and its error is counted and logged (rate-limited).
 * Returns the number of eligible templates. */
size_t pack_eligible(Pack *p, bool *eligible);

/* Renders template i for the bound message into out. Returns 0, or -1 with the script
 * error ("pack: function: file:line: message") in err. */
int pack_render(Pack *p, size_t i, int64_t now_ms, MsgBuf *out, char *err, size_t errlen);

/* Fills out[0..pack_feature_count) for the bound message. Returns 0, or -1 with err
 * (then out is zeroed). */
int pack_features(Pack *p, float *out, char *err, size_t errlen);

/* Scores a reward event for a decision (both JSON objects). Returns 1 with *reward set, 0
 * when reward() returned nil ("no reward from this event"), or -1 with err (a failure, or
 * a result that is not a finite number). */
int pack_reward(Pack *p, const json_t *event, const json_t *decision, double *reward, char *err,
                size_t errlen);

/* Failures of eligible() since the pack was loaded. */
uint64_t pack_eligible_errors(const Pack *p);

#endif
