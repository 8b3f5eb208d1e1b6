/*
 * The configuration table and the file parser. Adding a key means adding a field to Config
 * and a row to `keys`; parsing, bounds, defaults, --check, the reference (--help-config),
 * the dump and the reload rules all come from that row.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "journal.h"
#include "log.h"
#include "pd.h"
#include "redis.h"

#define INCLUDE_DEPTH_MAX 8

typedef enum { T_STR, T_INT, T_SIZE, T_DURATION, T_BOOL, T_LEVEL, T_MODULES, T_REAL } KeyType;

typedef struct KeyDef KeyDef;
typedef int (*Validator)(const KeyDef *def, const char *value, char *err, size_t errlen);

struct KeyDef {
    const char *name;
    KeyType type;
    const char *def; /* the default, written as a file would write it */
    double min, max; /* numeric bounds; for strings, bounds of the length (exact below 2^53) */
    bool reloadable;
    size_t offset; /* of the field in Config */
    Validator validate;
    const char *help;
};

static int validate_topic(const KeyDef *def, const char *value, char *err, size_t errlen);
static int validate_redis_url(const KeyDef *def, const char *value, char *err, size_t errlen);
static int validate_reward_default(const KeyDef *def, const char *value, char *err, size_t errlen);
static int validate_aggregate(const KeyDef *def, const char *value, char *err, size_t errlen);
static int validate_modules(const KeyDef *def, const char *value, char *err, size_t errlen);
static int validate_learner_mode(const KeyDef *def, const char *value, char *err, size_t errlen);

#define F(field) offsetof(Config, field)
#define KB       ((int64_t)1024)
#define MB       ((int64_t)1024 * 1024)
#define SEC      ((int64_t)1000)
#define MIN      (60 * SEC)

static const KeyDef keys[] = {
    {"kafka.brokers", T_STR, "embedded", 1, 4096, false, F(kafka_brokers), NULL,
     "bootstrap servers (host:port,...), or \"embedded\" for an in-process mock cluster"},
    {"kafka.group.id", T_STR, "promptd", 1, 255, false, F(kafka_group_id), NULL,
     "consumer group shared by every instance that serves the same prompts"},
    {"kafka.topic.prompts", T_STR, "promptd.prompts", 1, 249, false, F(topic_prompts),
     validate_topic, "topic the prompts are read from"},
    {"kafka.topic.decisions", T_STR, "promptd.decisions", 1, 249, false, F(topic_decisions),
     validate_topic, "topic the decisions are written to"},
    {"kafka.topic.dead_letters", T_STR, "promptd.dead-letters", 1, 249, false,
     F(topic_dead_letters), validate_topic,
     "topic for prompts that cannot be served, with the reason"},
    {"kafka.topic.rewards", T_STR, "promptd.rewards", 0, 249, false, F(topic_rewards),
     validate_topic, "topic the reward events are read from (empty: none)"},
    {"kafka.topic.experience", T_STR, "promptd.experience", 1, 249, false, F(topic_experience),
     validate_topic, "learner.mode distributed: the experiences, for the learner (1 partition)"},
    {"kafka.topic.policy", T_STR, "promptd.policy", 1, 249, false, F(topic_policy), validate_topic,
     "learner.mode distributed: the learner's policy snapshots (compacted)"},
    {"kafka.batch.size", T_INT, "256", 1, 100000, true, F(batch_size), NULL,
     "most prompts taken per poll and processed together"},
    {"kafka.batch.wait", T_DURATION, "5ms", 1, 10 * SEC, true, F(batch_wait_ms), NULL,
     "how long a poll waits to fill a batch (the latency a batch may add)"},
    {"kafka.max_inflight", T_INT, "20000", 1, 10000000, true, F(max_inflight), NULL,
     "decisions awaiting the broker's acknowledgement before input partitions are paused"},
    {"kafka.embedded.brokers", T_INT, "3", 1, 16, false, F(embedded_brokers), NULL,
     "brokers of the embedded mock cluster"},
    {"kafka.embedded.partitions", T_INT, "8", 1, 1024, false, F(embedded_partitions), NULL,
     "partitions of each topic the embedded cluster creates"},
    {"kafka.embedded.bootstrap_file", T_STR, "", 0, PATH_MAX, false, F(embedded_bootstrap_file),
     NULL, "file to write the embedded cluster's bootstrap address to (empty: none)"},
    {"encoder.model", T_STR, "", 0, PATH_MAX, false, F(encoder_model), NULL,
     "the encoder's model file (safetensors; empty: the shipped default model)"},
    {"encoder.max_tokens", T_INT, "4096", 8, 1000000, false, F(encoder_max_tokens), NULL,
     "tokens of one prompt the encoder reads; the rest of a longer prompt is ignored"},
    {"encoder.threads", T_INT, "1", 1, 64, false, F(encoder_threads), NULL,
     "OpenBLAS threads of the encoder (the serving thread and the learner share the cores)"},
    {"redis.url", T_STR, "none", 1, 4096, false, F(redis_url), validate_redis_url,
     "redis://[[user]:password@]host[:port][/db], unix:///path[?db=N], or none"},
    {"redis.connect_timeout", T_DURATION, "1s", 10, 60 * SEC, false, F(redis_connect_timeout_ms),
     NULL, "a connection to Redis and its handshake"},
    {"redis.command_timeout", T_DURATION, "50ms", 1, 10 * SEC, false, F(redis_command_timeout_ms),
     NULL, "one round trip to Redis (a batch's lookups)"},
    {"cache.l1_bytes", T_SIZE, "64mb", 0, 64 * 1024 * MB, false, F(cache_l1_bytes), NULL,
     "memory of the in-process embedding cache (0: none)"},
    {"cache.ttl", T_DURATION, "1d", 1 * SEC, 365 * 24 * 60 * MIN, false, F(cache_ttl_ms), NULL,
     "how long Redis keeps a cached embedding"},
    {"policy.pack", T_STR, "", 0, PATH_MAX, false, F(policy_pack), NULL,
     "directory of the policy pack (empty: the shipped alarm pack)"},
    {"policy.lib", T_STR, "", 0, PATH_MAX, false, F(policy_lib), NULL,
     "directory of the Lua helper library (empty: the shipped one)"},
    {"policy.watch", T_BOOL, "yes", 0, 1, true, F(policy_watch), NULL,
     "reload the pack when its files change (SIGHUP reloads it either way)"},
    {"policy.seed", T_INT, "0", 0, (double)INT64_MAX, false, F(policy_seed), NULL,
     "seed of the template sampler (0: a random seed at each start)"},
    {"lua.memory", T_SIZE, "64mb", 1 * MB, 4096 * MB, true, F(lua_memory), NULL,
     "memory one pack's Lua state may hold"},
    {"lua.instructions", T_INT, "1000000", 1000, 10000000000, true, F(lua_instructions), NULL,
     "Lua instructions one call (render, reward, ...) may run"},
    {"lua.time", T_DURATION, "50ms", 1, 60 * SEC, true, F(lua_time_ms), NULL,
     "wall-clock time one call may take"},
    {"lua.max_depth", T_INT, "200", 10, 100000, true, F(lua_max_depth), NULL,
     "Lua call depth a script may reach"},
    {"lua.max_string", T_SIZE, "1mb", 1 * KB, 1024 * MB, true, F(lua_max_string), NULL,
     "largest string string.rep may build"},
    {"policy.temperature", T_REAL, "0.7", 0.01, 100, true, F(policy_temperature), NULL,
     "softmax temperature of the template sampler: lower is greedier"},
    {"policy.min_prob", T_REAL, "0.005", 0, 1, true, F(policy_min_prob), NULL,
     "probability floor of every eligible template (off-policy evaluation needs it)"},
    {"policy.greedy", T_BOOL, "no", 0, 1, true, F(policy_greedy), NULL,
     "always choose the best-scored template (the logged p stays the sampler's)"},
    {"reward.window", T_DURATION, "10m", 1, 7 * 24 * 60 * MIN, false, F(reward_window_ms), NULL,
     "how long a decision waits for its reward events"},
    {"reward.default", T_STR, "0", 1, 64, true, F(reward_default), validate_reward_default,
     "reward of a decision whose window closes without an event: a number, or drop"},
    {"reward.aggregate", T_STR, "first", 1, 16, true, F(reward_aggregate), validate_aggregate,
     "how several events for one decision combine: first, last, sum, max or mean"},
    {"reward.clip", T_REAL, "10", 1e-6, 1e12, true, F(reward_clip), NULL,
     "rewards are clipped to [-clip, clip]"},
    {"journal.max_entries", T_INT, "1000000", 1, 100000000, true, F(journal_max_entries), NULL,
     "decisions waiting for rewards; the oldest close early beyond it"},
    {"session.ttl", T_DURATION, "1h", 1 * SEC, 30 * 24 * 60 * MIN, false, F(session_ttl_ms), NULL,
     "a session unseen this long starts afresh"},
    {"session.max", T_INT, "100000", 1, 100000000, false, F(session_max), NULL,
     "sessions remembered; the least recently seen go first"},
    {"learner.enabled", T_BOOL, "yes", 0, 1, false, F(learner_enabled), NULL,
     "learn online from rewards (no: serve the loaded policy as it is)"},
    {"learner.mode", T_STR, "local", 1, 16, false, F(learner_mode), validate_learner_mode,
     "local: this process learns; distributed: one instance, elected by Kafka, learns for all"},
    {"learner.publish_every", T_DURATION, "1s", 0, 60 * MIN, false, F(learner_publish_every_ms),
     NULL, "learner.mode distributed: time between two policy snapshots (0: after every update)"},
    {"learner.batch_size", T_INT, "256", 8, 1000000, false, F(learner_batch_size), NULL,
     "experiences per PPO update"},
    {"learner.epochs", T_INT, "4", 1, 100, false, F(learner_epochs), NULL,
     "passes over a batch per update"},
    {"learner.minibatch", T_INT, "64", 1, 100000, false, F(learner_minibatch), NULL,
     "experiences per optimiser step"},
    {"learner.lr", T_REAL, "0.003", 1e-8, 1, false, F(learner_lr), NULL, "Adam's learning rate"},
    {"learner.target_kl", T_REAL, "0.02", 0, 100, false, F(learner_target_kl), NULL,
     "an update stops its epochs once the policy moved this far (approximate KL)"},
    {"learner.entropy_coef", T_REAL, "0.01", 0, 10, false, F(learner_entropy_coef), NULL,
     "weight of the entropy bonus, which keeps the policy exploring"},
    {"learner.max_staleness", T_INT, "16", 0, 1000000, false, F(learner_max_staleness), NULL,
     "experiences from policies this many versions older are not learned from"},
    {"learner.episodes", T_BOOL, "no", 0, 1, false, F(learner_episodes), NULL,
     "sessions are episodes: advantages by GAE over a session's turns"},
    {"learner.checkpoint_dir", T_STR, "", 0, PATH_MAX, false, F(learner_checkpoint_dir), NULL,
     "where the policy is saved (empty: $STATE_DIRECTORY, else ./promptd-state)"},
    {"learner.checkpoint_every", T_DURATION, "1m", 0, 24 * 60 * MIN, false,
     F(learner_checkpoint_every_ms), NULL, "time between checkpoints (0: after every update)"},
    {"learner.checkpoint_keep", T_INT, "5", 1, 1000, false, F(learner_checkpoint_keep), NULL,
     "checkpoints kept; older ones are removed"},
    {"learner.triplets", T_BOOL, "no", 0, 1, false, F(learner_triplets), NULL,
     "fine-tune the encoder's projection head from the rewards (online triplets)"},
    {"learner.triplets_every", T_INT, "2048", 64, 10000000, false, F(learner_triplets_every), NULL,
     "experiences between two fine-tunes of the head"},
    {"learner.triplets_steps", T_INT, "50", 1, 10000, false, F(learner_triplets_steps), NULL,
     "Adam steps of one fine-tune"},
    {"learner.triplets_lr", T_REAL, "0.001", 1e-8, 1, false, F(learner_triplets_lr), NULL,
     "Adam's learning rate for the head"},
    {"prompt.max_bytes", T_SIZE, "64kb", 16, 16 * MB, true, F(prompt_max_bytes), NULL,
     "larger prompt messages go to the dead-letter topic"},
    {"dead_letter.max_payload", T_SIZE, "512kb", 1 * KB, 16 * MB, true, F(dead_letter_max_payload),
     NULL, "a dead letter carries at most this much of the original payload"},
    {"log.level", T_LEVEL, "info", PD_LOG_EMERG, PD_LOG_DEBUG, true, F(log_level), NULL,
     "emerg, alert, crit, err, warning, notice, info or debug"},
    {"log.debug", T_MODULES, "", 0, 1024, true, F(log_debug), validate_modules,
     "debug lines of these modules (main, config, kafka, rdkafka, broker, pipeline, lua, "
     "encoder, cache, policy, learner) or all"},
    {"log.ratelimit.burst", T_INT, "5", 0, 1000000, true, F(log_ratelimit_burst), NULL,
     "identical warnings or errors logged per interval before the rest are counted (0: off)"},
    {"log.ratelimit.interval", T_DURATION, "10s", 1, 1440 * MIN, true, F(log_ratelimit_interval_ms),
     NULL, "window of the log rate limit"},
    {"shutdown.timeout", T_DURATION, "30s", 0, 10 * MIN, true, F(shutdown_timeout_ms), NULL,
     "how long SIGTERM waits for in-flight decisions to be acknowledged"},
    {"metrics.listen", T_STR, "127.0.0.1:9464", 0, 256, false, F(metrics_listen), NULL,
     "address of /metrics, /healthz and /-/reload (\"\": none)"},
    {"metrics.allow_remote", T_BOOL, "no", 0, 1, false, F(metrics_allow_remote), NULL,
     "allow a metrics.listen address other than loopback"},
    {"admin.socket", T_STR, "", 0, 107, false, F(admin_socket), NULL,
     "unix socket for promptctl reload and status (\"\": none)"},
    {"admin.reload_timeout", T_DURATION, "30s", 1 * SEC, 10 * MIN, false,
     F(admin_reload_timeout_ms), NULL, "how long a reload request waits for its result"},
};

static const char *const passthrough_prefix[] = {"kafka.consumer.", "kafka.producer."};

/* --- small helpers --- */

static const KeyDef *key_find(const char *name) {
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++)
        if (!strcmp(keys[i].name, name)) return &keys[i];
    return NULL;
}

static char **str_field(Config *c, const KeyDef *def) {
    return (char **)((char *)c + def->offset);
}

static int64_t *num_field(Config *c, const KeyDef *def) {
    return (int64_t *)((char *)c + def->offset);
}

static double *real_field(Config *c, const KeyDef *def) {
    return (double *)((char *)c + def->offset);
}

static bool is_string_type(KeyType t) {
    return t == T_STR || t == T_MODULES;
}

const char *config_key_name(size_t index) {
    return index < PD_ARRAY_LEN(keys) ? keys[index].name : NULL;
}

static const char *intern(Config *c, const char *s) {
    for (size_t i = 0; i < c->interned_len; i++)
        if (!strcmp(c->interned[i], s)) return c->interned[i];
    char **grown = realloc(c->interned, (c->interned_len + 1) * sizeof *grown);
    PD_ASSERT(grown);
    c->interned = grown;
    c->interned[c->interned_len] = pd_xstrdup(s);
    return c->interned[c->interned_len++];
}

void config_error(ConfigErrors *errs, ConfigOrigin origin, const char *key, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    errs->count++;
    size_t room = sizeof errs->text - errs->len;
    if (room <= 1) return;
    int n = origin.line > 0
                ? snprintf(errs->text + errs->len, room, "%s:%d: %s: %s\n", origin.file,
                           origin.line, key, msg)
                : snprintf(errs->text + errs->len, room, "%s: %s: %s\n", origin.file, key, msg);
    errs->len += n > 0 && (size_t)n < room ? (size_t)n : room - 1;
}

/* --- value parsers: each returns 0, or -1 with a message for the operator --- */

static int parse_int(const char *s, int64_t *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        snprintf(err, errlen, "expects a whole number, got '%s'", s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Redis's convention: 1k = 1000, 1kb = 1024. */
static int parse_size(const char *s, int64_t *out, char *err, size_t errlen) {
    static const struct {
        const char *suffix;
        int64_t mul;
    } units[] = {{"", 1},        {"b", 1},   {"k", 1000},       {"kb", KB},
                 {"m", 1000000}, {"mb", MB}, {"g", 1000000000}, {"gb", 1024 * MB}};
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0) goto bad;

    for (size_t i = 0; i < PD_ARRAY_LEN(units); i++) {
        if (strcasecmp(end, units[i].suffix)) continue;
        if (v > INT64_MAX / units[i].mul) goto bad;
        *out = v * units[i].mul;
        return 0;
    }
bad:
    snprintf(err, errlen, "expects a size such as 512, 64kb or 16mb, got '%s'", s);
    return -1;
}

static int parse_duration(const char *s, int64_t *out, char *err, size_t errlen) {
    static const struct {
        const char *suffix;
        double ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0) || v > 1e15) goto bad;
    if (!*end && v == 0) {
        *out = 0;
        return 0;
    }
    for (size_t i = 0; i < PD_ARRAY_LEN(units); i++) {
        if (strcmp(end, units[i].suffix)) continue;
        *out = (int64_t)(v * units[i].ms + 0.5);
        return 0;
    }
bad:
    snprintf(err, errlen, "expects a duration with a unit (ms, s, m, h, d) such as 30s, got '%s'",
             s);
    return -1;
}

static int parse_bool(const char *s, int64_t *out, char *err, size_t errlen) {
    if (!strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "on") || !strcmp(s, "1")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "off") || !strcmp(s, "0")) {
        *out = 0;
        return 0;
    }
    snprintf(err, errlen, "expects yes or no, got '%s'", s);
    return -1;
}

static int parse_level(const char *s, int64_t *out, char *err, size_t errlen) {
    int level = pd_log_level_parse(s);
    if (level < 0) {
        snprintf(err, errlen,
                 "expects one of emerg, alert, crit, err, warning, notice, info, debug; got '%s'",
                 s);
        return -1;
    }
    *out = level;
    return 0;
}

static int validate_topic(const KeyDef *def, const char *value, char *err, size_t errlen) {
    (void)def;
    if (!strcmp(value, ".") || !strcmp(value, "..")) {
        snprintf(err, errlen, "'%s' is not a valid topic name", value);
        return -1;
    }
    for (const char *p = value; *p; p++) {
        if (isalnum((unsigned char)*p) || *p == '.' || *p == '_' || *p == '-') continue;
        snprintf(err, errlen, "topic names use only letters, digits, '.', '_' and '-'; got '%s'",
                 value);
        return -1;
    }
    return 0;
}

static int validate_redis_url(const KeyDef *def, const char *value, char *err, size_t errlen) {
    RedisUrl url;
    (void)def;
    return redis_url_parse(&url, value, err, errlen) ? -1 : 0;
}

static int validate_reward_default(const KeyDef *def, const char *value, char *err, size_t errlen) {
    char *end;
    (void)def;
    if (!strcmp(value, "drop")) return 0;
    double r = strtod(value, &end);
    if (end != value && !*end && isfinite(r)) return 0;
    snprintf(err, errlen, "expects a number or drop, got '%s'", value);
    return -1;
}

static int validate_aggregate(const KeyDef *def, const char *value, char *err, size_t errlen) {
    (void)def;
    if (journal_rule_parse(value) >= 0) return 0;
    snprintf(err, errlen, "expects first, last, sum, max or mean, got '%s'", value);
    return -1;
}

static int validate_learner_mode(const KeyDef *def, const char *value, char *err, size_t errlen) {
    (void)def;
    if (!strcmp(value, "local") || !strcmp(value, "distributed")) return 0;
    snprintf(err, errlen, "expects local or distributed, got '%s'", value);
    return -1;
}

static int validate_modules(const KeyDef *def, const char *value, char *err, size_t errlen) {
    (void)def;
    uint32_t mask;
    char bad[64];
    if (pd_log_debug_parse(value, &mask, bad, sizeof bad) == 0) return 0;
    snprintf(err, errlen,
             "unknown module '%s'; known: main, config, kafka, rdkafka, broker, pipeline, lua, "
             "encoder, cache, policy, learner, all",
             bad);
    return -1;
}

/* --- formatting values back (dump, bounds in messages) --- */

static void format_size(int64_t v, char *buf, size_t len) {
    if (v && v % MB == 0)
        snprintf(buf, len, "%" PRId64 "mb", v / MB);
    else if (v && v % KB == 0)
        snprintf(buf, len, "%" PRId64 "kb", v / KB);
    else
        snprintf(buf, len, "%" PRId64, v);
}

static void format_duration(int64_t ms, char *buf, size_t len) {
    if (ms == 0)
        snprintf(buf, len, "0");
    else if (ms % 3600000 == 0)
        snprintf(buf, len, "%" PRId64 "h", ms / 3600000);
    else if (ms % 60000 == 0)
        snprintf(buf, len, "%" PRId64 "m", ms / 60000);
    else if (ms % 1000 == 0)
        snprintf(buf, len, "%" PRId64 "s", ms / 1000);
    else
        snprintf(buf, len, "%" PRId64 "ms", ms);
}

static void format_number(KeyType type, int64_t v, char *buf, size_t len) {
    switch (type) {
    case T_SIZE: format_size(v, buf, len); break;
    case T_DURATION: format_duration(v, buf, len); break;
    case T_BOOL: snprintf(buf, len, "%s", v ? "yes" : "no"); break;
    case T_LEVEL: snprintf(buf, len, "%s", pd_log_level_name((int)v)); break;
    default: snprintf(buf, len, "%" PRId64, v); break;
    }
}

/* --- setting one key --- */

/* An integer key's bound, kept as a double in the table: INT64_MAX does not survive the
 * round trip (2^63 is out of range), so the ends are clamped. */
static int64_t int_bound(double b) {
    if (b >= 9223372036854775807.0) return INT64_MAX;
    if (b <= -9223372036854775807.0) return INT64_MIN;
    return (int64_t)b;
}

static int parse_number(const KeyDef *def, const char *value, int64_t *out, char *err,
                        size_t errlen) {
    int rc;
    switch (def->type) {
    case T_INT: rc = parse_int(value, out, err, errlen); break;
    case T_SIZE: rc = parse_size(value, out, err, errlen); break;
    case T_DURATION: rc = parse_duration(value, out, err, errlen); break;
    case T_BOOL: rc = parse_bool(value, out, err, errlen); break;
    case T_LEVEL: rc = parse_level(value, out, err, errlen); break;
    default: PD_ASSERT(!"not a numeric key type"); return -1;
    }
    if (rc || def->type == T_BOOL || def->type == T_LEVEL) return rc;

    if (*out < def->min || *out > def->max) {
        char lo[32], hi[32];
        format_number(def->type, int_bound(def->min), lo, sizeof lo);
        format_number(def->type, int_bound(def->max), hi, sizeof hi);
        snprintf(err, errlen, "must be between %s and %s, got '%s'", lo, hi, value);
        return -1;
    }
    return 0;
}

static int set_known(Config *c, const KeyDef *def, const char *value, char *err, size_t errlen) {
    if (is_string_type(def->type)) {
        size_t len = strlen(value);
        if ((int64_t)len < def->min) {
            snprintf(err, errlen, "must not be empty");
            return -1;
        }
        if ((int64_t)len > def->max) {
            snprintf(err, errlen, "is %zu bytes long, at most %.0f allowed", len, def->max);
            return -1;
        }
        if (def->validate && def->validate(def, value, err, errlen)) return -1;
        char **field = str_field(c, def);
        free(*field);
        *field = pd_xstrdup(value);
        return 0;
    }

    if (def->type == T_REAL) {
        char *end;
        double r = strtod(value, &end);
        if (end == value || *end || !(r >= def->min && r <= def->max)) {
            snprintf(err, errlen, "expects a number from %g to %g, got '%s'", def->min, def->max,
                     value);
            return -1;
        }
        *real_field(c, def) = r;
        return 0;
    }

    int64_t v;
    if (parse_number(def, value, &v, err, errlen)) return -1;
    *num_field(c, def) = v;
    return 0;
}

static void props_set(ConfigProps *props, const char *name, const char *value,
                      ConfigOrigin origin) {
    for (size_t i = 0; i < props->len; i++) {
        if (strcmp(props->items[i].name, name)) continue;
        free(props->items[i].value);
        props->items[i].value = pd_xstrdup(value);
        props->items[i].origin = origin;
        return;
    }
    if (props->len == props->cap) {
        props->cap = props->cap ? props->cap * 2 : 8;
        props->items = realloc(props->items, props->cap * sizeof *props->items);
        PD_ASSERT(props->items);
    }
    props->items[props->len++] = (ConfigProp){pd_xstrdup(name), pd_xstrdup(value), origin};
}

/* Edit distance, for "did you mean". Keys are short, so the quadratic table is fine. */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return SIZE_MAX;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++) d[i][0] = i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    }
    return d[la][lb];
}

static const char *closest_key(const char *name) {
    const char *best = keys[0].name;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++) {
        size_t d = edit_distance(name, keys[i].name);
        if (d < best_d) best_d = d, best = keys[i].name;
    }
    return best;
}

int config_set(Config *c, const char *key, const char *value, ConfigOrigin origin,
               ConfigErrors *errs) {
    char err[512];
    origin.file = intern(c, origin.file);

    const KeyDef *def = key_find(key);
    if (def) {
        if (set_known(c, def, value, err, sizeof err)) {
            config_error(errs, origin, key, "%s", err);
            return -1;
        }
        c->origins[def - keys] = origin;
        return 0;
    }

    for (size_t i = 0; i < PD_ARRAY_LEN(passthrough_prefix); i++) {
        size_t plen = strlen(passthrough_prefix[i]);
        if (strncmp(key, passthrough_prefix[i], plen)) continue;
        if (!key[plen]) {
            config_error(errs, origin, key, "names no librdkafka property");
            return -1;
        }
        props_set(i == 0 ? &c->consumer_props : &c->producer_props, key + plen, value, origin);
        return 0;
    }

    config_error(errs, origin, key, "unknown key; did you mean '%s'?", closest_key(key));
    return -1;
}

/* --- the file format --- */

/* Replaces ${NAME} by the environment variable NAME. Returns a malloc'ed string or NULL
 * with err filled. */
static char *expand_env(const char *value, char *err, size_t errlen) {
    size_t cap = strlen(value) + 1, len = 0;
    char *out = malloc(cap);
    PD_ASSERT(out);
    for (const char *p = value; *p;) {
        const char *piece = p;
        size_t plen = 1;
        char name[256];
        if (p[0] == '$' && p[1] == '{') {
            const char *close = strchr(p + 2, '}');
            size_t nlen = close ? (size_t)(close - p - 2) : 0;
            if (!close || nlen == 0 || nlen >= sizeof name) {
                snprintf(err, errlen, "unterminated or empty ${...} in '%s'", value);
                free(out);
                return NULL;
            }
            memcpy(name, p + 2, nlen);
            name[nlen] = 0;
            piece = getenv(name);
            if (!piece) {
                snprintf(err, errlen, "environment variable %s is not set", name);
                free(out);
                return NULL;
            }
            plen = strlen(piece);
            p = close + 1;
        } else {
            p++;
        }
        if (len + plen + 1 > cap) {
            cap = (len + plen + 1) * 2;
            out = realloc(out, cap);
            PD_ASSERT(out);
        }
        memcpy(out + len, piece, plen);
        len += plen;
    }
    out[len] = 0;
    return out;
}

/* Splits a line into key and value in place. Returns 0 (key NULL for a blank or comment
 * line; value NULL when the key has none, "" for a quoted empty value), or -1 with err
 * filled. */
static int split_line(char *line, char **key, char **value, char *err, size_t errlen) {
    char *p = line + strspn(line, " \t\r\n");
    *key = NULL;
    if (!*p || *p == '#') return 0;

    *key = p;
    p += strcspn(p, " \t\r\n");
    if (*p) *p++ = 0;
    p += strspn(p, " \t\r\n");

    if (*p != '"') {
        /* An unquoted value ends at a comment that follows whitespace. */
        char *v = p;
        for (; *p; p++)
            if (*p == '#' && p > v && (p[-1] == ' ' || p[-1] == '\t')) break;
        *p = 0;
        while (p > v && strchr(" \t\r\n", p[-1])) *--p = 0;
        *value = *v ? v : NULL;
        return 0;
    }

    char *out = ++p, *v = out;
    for (; *p && *p != '"'; p++) {
        if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
        *out++ = *p;
    }
    if (*p != '"') {
        snprintf(err, errlen, "unterminated quoted value");
        return -1;
    }
    p++;
    p += strspn(p, " \t\r\n");
    if (*p && *p != '#') {
        snprintf(err, errlen, "unexpected text after the quoted value: '%s'", p);
        return -1;
    }
    *out = 0;
    *value = v;
    return 0;
}

/* The files being read, innermost first: an include of one of them is a cycle. */
typedef struct IncludeChain {
    dev_t dev;
    ino_t ino;
    const struct IncludeChain *up;
} IncludeChain;

static int load_file(Config *c, const char *path, const IncludeChain *chain, int depth,
                     ConfigOrigin from, ConfigErrors *errs);

static void load_include(Config *c, const char *pattern, const char *including, ConfigOrigin origin,
                         const IncludeChain *chain, int depth, ConfigErrors *errs) {
    char full[PATH_MAX];
    const char *slash = strrchr(including, '/');
    if (pattern[0] == '/' || !slash)
        snprintf(full, sizeof full, "%s", pattern);
    else
        snprintf(full, sizeof full, "%.*s/%s", (int)(slash - including), including, pattern);

    glob_t g;
    int rc = glob(full, 0, NULL, &g);
    if (rc == GLOB_NOMATCH) {
        /* An empty glob is fine (conf.d/ with no files yet); a missing plain file is not. */
        if (!strpbrk(pattern, "*?["))
            config_error(errs, origin, "include", "no such file: %s", full);
    } else if (rc) {
        config_error(errs, origin, "include", "cannot expand '%s'", full);
    } else {
        for (size_t i = 0; i < g.gl_pathc; i++)
            load_file(c, g.gl_pathv[i], chain, depth + 1, origin, errs);
    }
    globfree(&g);
}

static void load_line(Config *c, char *line, ConfigOrigin origin, const IncludeChain *chain,
                      int depth, ConfigErrors *errs) {
    char err[512];
    char *key, *raw;
    if (split_line(line, &key, &raw, err, sizeof err)) {
        config_error(errs, origin, key ? key : "?", "%s", err);
        return;
    }
    if (!key) return;
    if (!raw) {
        config_error(errs, origin, key, "has no value");
        return;
    }

    char *value = expand_env(raw, err, sizeof err);
    if (!value) {
        config_error(errs, origin, key, "%s", err);
        return;
    }
    if (!strcmp(key, "include"))
        load_include(c, value, origin.file, origin, chain, depth, errs);
    else
        config_set(c, key, value, origin, errs);
    free(value);
}

static int load_file(Config *c, const char *path, const IncludeChain *chain, int depth,
                     ConfigOrigin from, ConfigErrors *errs) {
    if (depth > INCLUDE_DEPTH_MAX) {
        config_error(errs, from, "include", "includes nest deeper than %d levels (a cycle?) at %s",
                     INCLUDE_DEPTH_MAX, path);
        return -1;
    }
    /* Only regular files are included: a glob matching a FIFO or a device would block or
     * read without end. (The top file may be anything the operator names, such as <(...).) */
    struct stat kind;
    if (depth && stat(path, &kind) == 0 && !S_ISREG(kind.st_mode)) {
        config_error(errs, from, "include", "%s is not a regular file", path);
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        config_error(errs, from, depth ? "include" : "config", "cannot open %s: %s", path,
                     strerror(errno));
        return -1;
    }
    /* The depth limit alone lets a few "include *" lines that match their own file re-read
     * it k^depth times (five such lines took minutes under fuzz/fuzz_config), so a file
     * that is already being read is refused at once. */
    struct stat st;
    IncludeChain self = {0, 0, chain};
    if (fstat(fileno(f), &st) == 0) {
        self.dev = st.st_dev, self.ino = st.st_ino;
        for (const IncludeChain *up = chain; up; up = up->up) {
            if (up->dev == st.st_dev && up->ino == st.st_ino) {
                config_error(errs, from, "include", "include cycle: %s is already being read",
                             path);
                fclose(f);
                return -1;
            }
        }
    }

    ConfigOrigin origin = {intern(c, path), 0};
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) >= 0) {
        origin.line++;
        load_line(c, line, origin, &self, depth, errs);
    }
    if (ferror(f))
        config_error(errs, origin, "config", "read error on %s: %s", path, strerror(errno));
    free(line);
    fclose(f);
    return 0;
}

int config_load(Config *c, const char *path, ConfigErrors *errs) {
    int before = errs->count;
    load_file(c, path, NULL, 0, (ConfigOrigin){path, 0}, errs);
    return errs->count - before;
}

/* --- life cycle --- */

void config_init(Config *c) {
    memset(c, 0, sizeof *c);
    c->origins = pd_xcalloc(PD_ARRAY_LEN(keys), sizeof *c->origins);

    ConfigErrors errs = {0};
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++)
        config_set(c, keys[i].name, keys[i].def, (ConfigOrigin){"default", 0}, &errs);
    /* The defaults are written in this file; one that fails its own row is a bug. */
    if (errs.count) pd_log(PD_LOG_CRIT, PD_MOD_CONFIG, "bad default: %s", errs.text);
    PD_ASSERT(errs.count == 0);
}

static void props_free(ConfigProps *props) {
    for (size_t i = 0; i < props->len; i++) {
        free(props->items[i].name);
        free(props->items[i].value);
    }
    free(props->items);
}

void config_free(Config *c) {
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++)
        if (is_string_type(keys[i].type)) free(*str_field(c, &keys[i]));
    props_free(&c->consumer_props);
    props_free(&c->producer_props);
    for (size_t i = 0; i < c->interned_len; i++) free(c->interned[i]);
    free(c->interned);
    free(c->origins);
    memset(c, 0, sizeof *c);
}

ConfigOrigin config_origin(const Config *c, const char *key) {
    const KeyDef *def = key_find(key);
    return def ? c->origins[def - keys] : (ConfigOrigin){"unknown", 0};
}

/* --- reload, dump, reference --- */

static bool key_differs(const Config *a, const Config *b, const KeyDef *def) {
    if (is_string_type(def->type))
        return strcmp(*str_field((Config *)a, def), *str_field((Config *)b, def)) != 0;
    if (def->type == T_REAL) return *real_field((Config *)a, def) != *real_field((Config *)b, def);
    return *num_field((Config *)a, def) != *num_field((Config *)b, def);
}

static bool props_equal(const ConfigProps *a, const ConfigProps *b) {
    if (a->len != b->len) return false;
    for (size_t i = 0; i < a->len; i++)
        if (strcmp(a->items[i].name, b->items[i].name) ||
            strcmp(a->items[i].value, b->items[i].value))
            return false;
    return true;
}

int config_apply_reload(Config *live, const Config *fresh, void (*note)(void *, const char *),
                        void *ctx) {
    int applied = 0;
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++) {
        const KeyDef *def = &keys[i];
        if (!key_differs(live, fresh, def)) continue;
        if (!def->reloadable) {
            note(ctx, def->name);
            continue;
        }
        if (is_string_type(def->type)) {
            char **field = str_field(live, def);
            free(*field);
            *field = pd_xstrdup(*str_field((Config *)fresh, def));
        } else if (def->type == T_REAL) {
            *real_field(live, def) = *real_field((Config *)fresh, def);
        } else {
            *num_field(live, def) = *num_field((Config *)fresh, def);
        }
        applied++;
    }
    if (!props_equal(&live->consumer_props, &fresh->consumer_props)) note(ctx, "kafka.consumer.*");
    if (!props_equal(&live->producer_props, &fresh->producer_props)) note(ctx, "kafka.producer.*");
    return applied;
}

/* Writes s as a quoted value that split_line reads back unchanged. */
static void print_quoted(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

static void dump_props(const ConfigProps *props, const char *prefix, FILE *out) {
    for (size_t i = 0; i < props->len; i++) {
        fprintf(out, "%s%s ", prefix, props->items[i].name);
        print_quoted(out, props->items[i].value);
        fputc('\n', out);
    }
}

void config_dump(const Config *c, FILE *out) {
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++) {
        const KeyDef *def = &keys[i];
        fprintf(out, "%-32s ", def->name);
        if (is_string_type(def->type)) {
            print_quoted(out, *str_field((Config *)c, def));
        } else if (def->type == T_REAL) {
            fprintf(out, "%.17g", *real_field((Config *)c, def));
        } else {
            char value[64];
            format_number(def->type, *num_field((Config *)c, def), value, sizeof value);
            fputs(value, out);
        }
        fputc('\n', out);
    }
    dump_props(&c->consumer_props, "kafka.consumer.", out);
    dump_props(&c->producer_props, "kafka.producer.", out);
}

static const char *type_name(KeyType t) {
    static const char *const names[] = {"string", "integer", "size",        "duration",
                                        "yes/no", "level",   "module list", "number"};
    return names[t];
}

void config_describe(FILE *out) {
    for (size_t i = 0; i < PD_ARRAY_LEN(keys); i++) {
        const KeyDef *def = &keys[i];
        fprintf(out, "%s (%s, default \"%s\"", def->name, type_name(def->type), def->def);
        if (def->type == T_INT || def->type == T_SIZE || def->type == T_DURATION) {
            char lo[32], hi[32];
            format_number(def->type, int_bound(def->min), lo, sizeof lo);
            format_number(def->type, int_bound(def->max), hi, sizeof hi);
            fprintf(out, ", %s to %s", lo, hi);
        }
        if (def->type == T_REAL) fprintf(out, ", %g to %g", def->min, def->max);
        fprintf(out, "%s)\n    %s\n", def->reloadable ? ", reloadable" : "", def->help);
    }
    fprintf(out, "kafka.consumer.<property>, kafka.producer.<property> (passed to librdkafka)\n"
                 "    any librdkafka property, checked by librdkafka itself\n");
}
