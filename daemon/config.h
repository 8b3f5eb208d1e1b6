/*
 * Configuration: one table of typed keys (type, default, bounds, reloadable, help) and a
 * parser for the "key value" file format with '#' comments, "quoted values", ${ENV}
 * substitution and "include <glob>" (relative to the including file). The last value read
 * wins. librdkafka properties pass through unchanged as kafka.consumer.<property> and
 * kafka.producer.<property>; librdkafka itself validates them (see kafka_check_config).
 *
 * Errors are collected, not printed: each is one line "file:line: key: what is wrong".
 * The module never logs; the caller decides.
 */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Where a value came from, for error messages found after parsing. */
typedef struct {
    const char *file; /* interned; "default" or "command line" when not from a file */
    int line;
} ConfigOrigin;

/* One librdkafka property to pass through. */
typedef struct {
    char *name; /* the librdkafka property, without the kafka.consumer./producer. prefix */
    char *value;
    ConfigOrigin origin;
} ConfigProp;

typedef struct {
    ConfigProp *items;
    size_t len, cap;
} ConfigProps;

typedef struct Config {
    /* kafka */
    char *kafka_brokers; /* "embedded" starts the in-process mock cluster */
    char *kafka_group_id;
    char *topic_prompts;
    char *topic_decisions;
    char *topic_dead_letters;
    char *topic_rewards;    /* "" = rewards are not read */
    char *topic_experience; /* learner.mode distributed: experiences for the learner */
    char *topic_policy;     /* learner.mode distributed: the learner's policy snapshots */
    int64_t batch_size;     /* messages per poll */
    int64_t batch_wait_ms;  /* how long a poll waits for its first message */
    int64_t max_inflight;   /* produced but unacknowledged messages before pausing */
    int64_t embedded_brokers;
    int64_t embedded_partitions;
    char *embedded_bootstrap_file; /* "" = do not write one */
    ConfigProps consumer_props;
    ConfigProps producer_props;

    /* encoder */
    char *encoder_model; /* "" = the shipped default model */
    int64_t encoder_max_tokens;
    int64_t encoder_threads;

    /* embedding cache */
    char *redis_url; /* "none" = the in-process cache only */
    int64_t cache_l1_bytes;
    int64_t cache_ttl_ms;
    int64_t redis_connect_timeout_ms;
    int64_t redis_command_timeout_ms;

    /* policy packs */
    char *policy_pack; /* "" = the shipped pack in the data directory */
    char *policy_lib;  /* "" = the helper library in the data directory */
    int64_t policy_watch;
    int64_t policy_seed;
    int64_t lua_memory;
    int64_t lua_instructions;
    int64_t lua_time_ms;
    int64_t lua_max_depth;
    int64_t lua_max_string;

    /* policy and learning */
    double policy_temperature;
    double policy_min_prob;
    int64_t policy_greedy;
    int64_t reward_window_ms;
    char *reward_default; /* a number, or "drop" */
    char *reward_aggregate;
    double reward_clip;
    int64_t journal_max_entries;
    int64_t session_ttl_ms;
    int64_t session_max;
    int64_t learner_enabled;
    char *learner_mode; /* "local" or "distributed" */
    int64_t learner_publish_every_ms;
    int64_t learner_batch_size;
    int64_t learner_epochs;
    int64_t learner_minibatch;
    double learner_lr;
    double learner_target_kl;
    double learner_entropy_coef;
    int64_t learner_max_staleness;
    int64_t learner_episodes;
    char *learner_checkpoint_dir; /* "" = $STATE_DIRECTORY, else ./promptd-state */
    int64_t learner_checkpoint_every_ms;
    int64_t learner_checkpoint_keep;
    int64_t learner_triplets; /* fine-tune the encoder's head online */
    int64_t learner_triplets_every;
    int64_t learner_triplets_steps;
    double learner_triplets_lr;

    /* messages */
    int64_t prompt_max_bytes;
    int64_t dead_letter_max_payload;

    /* process */
    int64_t log_level;
    char *log_debug;
    int64_t log_ratelimit_burst;
    int64_t log_ratelimit_interval_ms;
    int64_t shutdown_timeout_ms;
    char *metrics_listen; /* "" = no HTTP listener */
    int64_t metrics_allow_remote;
    char *admin_socket; /* "" = none */
    int64_t admin_reload_timeout_ms;

    /* bookkeeping: origin of each table key (indexed like the table) and interned names */
    ConfigOrigin *origins;
    char **interned;
    size_t interned_len;
} Config;

/* Collected errors; text holds one "file:line: key: message" per line. */
typedef struct {
    char text[8192];
    size_t len;
    int count;
} ConfigErrors;

/* Fills c with the defaults. Call config_free when done. */
void config_init(Config *c);
void config_free(Config *c);

/* Reads path (and its includes) into c. Returns the number of errors (0 = good). */
int config_load(Config *c, const char *path, ConfigErrors *errs);

/* Sets one key from text, as a file line would; origin names where it came from. Returns 0
 * or -1 with the error appended to errs. */
int config_set(Config *c, const char *key, const char *value, ConfigOrigin origin,
               ConfigErrors *errs);

/* Appends "file:line: key: message" to errs. */
void config_error(ConfigErrors *errs, ConfigOrigin origin, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Where key got its value. */
ConfigOrigin config_origin(const Config *c, const char *key);

/* Applies to live the reloadable keys that differ in fresh. For each changed key that
 * needs a restart, calls note(ctx, key) so the caller can warn. Returns keys applied. */
int config_apply_reload(Config *live, const Config *fresh, void (*note)(void *, const char *),
                        void *ctx);

/* Prints every key with its effective value, "key value" lines that config_load reads. */
void config_dump(const Config *c, FILE *out);

/* Prints the reference of every key: type, default, bounds, reloadable, help. */
void config_describe(FILE *out);

/* Iterates the table's key names (NULL after the last), for tests and documentation. */
const char *config_key_name(size_t index);

#endif
