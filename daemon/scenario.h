/*
 * A simulator scenario: a Lua script that stands in for the world promptd serves. It
 * makes the prompt stream, knows the hidden quality of every template for every prompt
 * (so the simulator can compare promptd with the oracle and with uniform random choice),
 * and answers a decision with a reward event after a delay. See README.md "Simulator"
 * for the contract; lua/scenarios/ has the shipped ones.
 *
 * The script runs with Lua's standard libraries (it is the operator's own test tool,
 * not a pack), `require` reaching its own directory, math.random seeded with the
 * simulator's seed, and the --param pairs as its vararg table.
 */
#ifndef PD_SCENARIO_H
#define PD_SCENARIO_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define SCENARIO_TEMPLATES_MAX 256

typedef struct Scenario Scenario;

/* One prompt of the stream. The scenario keeps the Lua side of it until released. */
typedef struct {
    json_t *prompt; /* {"text", "session"?, "attrs"?}: the prompt message without its id */
    int ref;        /* the situation table, in the registry */
    double oracle;  /* the best eligible template's quality */
    double uniform; /* the mean quality of the eligible templates */
} Situation;

/* Loads path with params (NULL-terminated "key=value" strings). Returns NULL with err
 * filled: a missing file, a Lua error, or a table without templates and functions. */
Scenario *scenario_load(const char *path, const char *const *params, uint64_t seed, char *err,
                        size_t errlen);
void scenario_free(Scenario *s);

const char *scenario_name(const Scenario *s);
size_t scenario_template_count(const Scenario *s);
const char *scenario_template_name(const Scenario *s, size_t i);
const char *scenario_template_about(const Scenario *s, size_t i); /* "" when not given */

/* The i-th prompt of the stream. Returns 0, or -1 with err filled. */
int scenario_next(Scenario *s, uint64_t i, Situation *out, char *err, size_t errlen);
void scenario_release(Scenario *s, Situation *sit);

/* The expected quality of template's answer to the situation. Returns 0 or -1. */
int scenario_quality(Scenario *s, const Situation *sit, const char *template_name, double *q,
                     char *err, size_t errlen);

/* The feedback on a decision of quality q: the reward event's fields (a new JSON object,
 * without the id) and the delay before it is sent. Returns 0 or -1. */
int scenario_event(Scenario *s, const Situation *sit, const char *template_name, double q,
                   json_t **fields, double *delay_ms, char *err, size_t errlen);

/* A policy pack serving the scenario's templates (their names and abouts), whose reward
 * is the scenario's `reward` source (default: the event's score), as init.lua in dir.
 * Returns 0 or -1 with err filled. */
int scenario_write_pack(const Scenario *s, const char *dir, char *err, size_t errlen);

#endif
