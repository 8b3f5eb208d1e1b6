/* The metrics page, health and status of a serving promptd; see observe.h. */
#include "observe.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <lua.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "hashmap.h"
#include "message.h"
#include "pd.h"
#include "stats.h"

PdLatency pd_latency;

#define NAME_LEN      128   /* a template name longer than this is cut */
#define TEMPLATES_MAX 1024  /* names remembered across reloads; beyond, "other" */
#define REWARD_WINDOW 1000  /* rewards the moving mean covers */
#define STALL_MS      10000 /* a serving loop silent this long is reported failing */

typedef struct {
    char name[NAME_LEN];
    uint64_t count;
} TemplateCount;

/* The serving thread's own tables. */
static struct {
    HashMap index; /* name hash -> 1 + row in counts */
    TemplateCount counts[TEMPLATES_MAX + 1];
    size_t n;
    double rewards[REWARD_WINDOW], reward_sum;
    size_t rewards_filled, rewards_next;
} serving;

/* What the HTTP threads read, copied by observe_publish. */
static struct {
    pthread_mutex_t lock;
    JournalStats journal;
    TemplateCount counts[TEMPLATES_MAX + 1];
    size_t n;
    double reward_mean; /* NaN before the first reward */
    uint64_t policy_version;
    char model_id[17]; /* of the encoder serving now; "" before the first */
} shown = {.lock = PTHREAD_MUTEX_INITIALIZER};

static ObserveParts parts;
static atomic_int phase;
static atomic_int_fast64_t kafka_lag = -1;
static atomic_uint_fast64_t heartbeat_ms;

void observe_init(const ObserveParts *p) {
    parts = *p;
    metrics_histogram_init(&pd_latency.cache, NULL, 0);
    metrics_histogram_init(&pd_latency.encode, NULL, 0);
    metrics_histogram_init(&pd_latency.select, NULL, 0);
    metrics_histogram_init(&pd_latency.render, NULL, 0);
    metrics_histogram_init(&pd_latency.end_to_end, NULL, 0);
    shown.reward_mean = NAN;
    snprintf(serving.counts[TEMPLATES_MAX].name, NAME_LEN, "%s", "other");
    atomic_store(&heartbeat_ms, pd_mono_ms());
}

/* --- the serving thread --- */

void observe_selection(const char *name) {
    uint64_t h = hashmap_hash(name, strlen(name), 0x73656c);
    uintptr_t row = (uintptr_t)hashmap_get(&serving.index, h);
    if (!row && serving.n < TEMPLATES_MAX &&
        hashmap_put(&serving.index, h, (void *)(uintptr_t)(serving.n + 1)) == 0) {
        snprintf(serving.counts[serving.n].name, NAME_LEN, "%s", name);
        row = ++serving.n;
    }
    serving.counts[row ? row - 1 : TEMPLATES_MAX].count++;
}

void observe_set_model(const char *id) {
    pthread_mutex_lock(&shown.lock);
    snprintf(shown.model_id, sizeof shown.model_id, "%s", id);
    pthread_mutex_unlock(&shown.lock);
}

void observe_reward(double r) {
    if (serving.rewards_filled == REWARD_WINDOW)
        serving.reward_sum -= serving.rewards[serving.rewards_next];
    else
        serving.rewards_filled++;
    serving.rewards[serving.rewards_next] = r;
    serving.reward_sum += r;
    serving.rewards_next = (serving.rewards_next + 1) % REWARD_WINDOW;
}

void observe_publish(const JournalStats *journal, uint64_t policy_version) {
    pthread_mutex_lock(&shown.lock);
    shown.journal = *journal;
    memcpy(shown.counts, serving.counts, sizeof shown.counts);
    shown.n = serving.n;
    shown.reward_mean =
        serving.rewards_filled ? serving.reward_sum / (double)serving.rewards_filled : NAN;
    shown.policy_version = policy_version;
    pthread_mutex_unlock(&shown.lock);
}

void observe_heartbeat(void) {
    atomic_store_explicit(&heartbeat_ms, pd_mono_ms(), memory_order_relaxed);
}

void observe_set_phase(ObservePhase p) {
    atomic_store(&phase, (int)p);
}

void observe_kafka_lag(int64_t lag) {
    atomic_store_explicit(&kafka_lag, lag, memory_order_relaxed);
}

/* --- the page --- */

static void render_flow(MetricsWriter *w) {
    metrics_counter(w, "promptd_prompts_total", "Prompt messages consumed.",
                    (double)pd_read(&pd_stats.prompts_consumed));
    metrics_counter(w, "promptd_decisions_total", "Decisions the broker acknowledged.",
                    (double)pd_read(&pd_stats.decisions_acked));
    metrics_family(w, "promptd_dead_letters_total", METRICS_COUNTER,
                   "Dead letters the broker acknowledged, by reason.");
    for (int r = 0; r < MSG_REASON_COUNT; r++)
        if (r != MSG_OK)
            metrics_value1(w, "reason", msg_reason_name((MsgReason)r),
                           (double)pd_read(&pd_stats.dead_letters_acked[r]));
    metrics_counter(w, "promptd_produce_failures_total",
                    "Deliveries that failed and were sent again.",
                    (double)pd_read(&pd_stats.produce_failures));
    metrics_counter(w, "promptd_backpressure_pauses_total",
                    "Times the input was paused because too many outputs were in flight.",
                    (double)pd_read(&pd_stats.pauses));
    metrics_counter(w, "promptd_rebalances_total", "Consumer group rebalances.",
                    (double)pd_read(&pd_stats.rebalances));
    int64_t lag = atomic_load_explicit(&kafka_lag, memory_order_relaxed);
    if (lag >= 0)
        metrics_gauge(w, "promptd_kafka_consumer_lag",
                      "Messages the consumer is behind, over its partitions (librdkafka "
                      "statistics).",
                      (double)lag);
}

static void render_latency(MetricsWriter *w) {
    static const struct {
        const char *stage;
        const MetricsHistogram *h;
    } stages[] = {{"cache", &pd_latency.cache},
                  {"encode", &pd_latency.encode},
                  {"select", &pd_latency.select},
                  {"render", &pd_latency.render}};
    metrics_family(w, "promptd_stage_duration_seconds", METRICS_HISTOGRAM,
                   "Time in a stage: cache and encode per batch, select and render per prompt.");
    for (size_t i = 0; i < PD_ARRAY_LEN(stages); i++)
        metrics_histogram(w, &(MetricsLabel){"stage", stages[i].stage}, 1, stages[i].h);
    metrics_family(w, "promptd_end_to_end_duration_seconds", METRICS_HISTOGRAM,
                   "From a prompt's Kafka timestamp to its decision handed to the producer.");
    metrics_histogram(w, NULL, 0, &pd_latency.end_to_end);
}

static void lookup(MetricsWriter *w, const char *level, const char *result, uint64_t n) {
    MetricsLabel labels[] = {{"level", level}, {"result", result}};
    metrics_value(w, labels, 2, (double)n);
}

static void render_cache(MetricsWriter *w) {
    if (!parts.cache) return;
    CacheStats c = cache_stats(parts.cache);
    metrics_family(w, "promptd_cache_lookups_total", METRICS_COUNTER,
                   "Embedding cache lookups by level and result.");
    lookup(w, "l1", "hit", c.l1_hits);
    lookup(w, "l1", "miss", c.l1_misses);
    if (c.l2_enabled) {
        lookup(w, "redis", "hit", c.l2_hits);
        lookup(w, "redis", "miss", c.l2_misses);
        lookup(w, "redis", "corrupt", c.l2_corrupt);
        lookup(w, "redis", "unavailable", c.l2_unavailable);
    }
    metrics_gauge(w, "promptd_cache_entries", "Vectors in the in-process cache.",
                  (double)c.l1_entries);
    if (!parts.redis_configured) return;
    metrics_gauge(w, "promptd_redis_up", "1 while connected to Redis, else 0.", c.l2_up);
    metrics_counter(w, "promptd_redis_outages_total",
                    "Times Redis became unavailable, start-up included.", (double)c.outages);
}

static void render_rewards(MetricsWriter *w, const JournalStats *j, double mean) {
    metrics_gauge(w, "promptd_journal_entries",
                  "Decisions waiting for their reward: in Redis (every instance's) when it is "
                  "used, else in this process.",
                  (double)(j->redis_enabled ? j->redis_open : j->open));
    metrics_gauge(w, "promptd_journal_memory_entries",
                  "Decisions this process keeps in memory until their window closes.",
                  (double)j->open);
    if (j->redis_enabled) {
        metrics_family(w, "promptd_journal_redis_total", METRICS_COUNTER,
                       "The journal's dealings with Redis: writes taken, decisions kept in "
                       "memory only (Redis unavailable), writes without a reply (sent again), "
                       "reward events Redis could not join yet (offered again), errors, entries "
                       "Redis lost.");
        metrics_value1(w, "event", "put", (double)j->redis_puts);
        metrics_value1(w, "event", "fallback", (double)j->redis_fallbacks);
        metrics_value1(w, "event", "uncertain", (double)j->redis_uncertain);
        metrics_value1(w, "event", "unavailable", (double)j->redis_unavailable);
        metrics_value1(w, "event", "error", (double)j->redis_errors);
        metrics_value1(w, "event", "lost", (double)j->redis_lost);
    }
    metrics_family(w, "promptd_reward_events_total", METRICS_COUNTER,
                   "Reward events by outcome: joined to a waiting decision, late (it had "
                   "closed), unknown id, no reward (reward() returned nil), error.");
    metrics_value1(w, "outcome", "joined", (double)j->joined);
    metrics_value1(w, "outcome", "late", (double)j->late);
    metrics_value1(w, "outcome", "unknown", (double)j->unknown);
    metrics_value1(w, "outcome", "no_reward", (double)pd_read(&pd_stats.rewards_none));
    metrics_value1(w, "outcome", "error", (double)pd_read(&pd_stats.reward_errors));
    metrics_gauge(w, "promptd_reward_events_waiting",
                  "Reward events kept unjoined: until the journal can record them (Redis "
                  "unavailable or refusing writes; their partitions paused), or their "
                  "decisions are made again (prompts read again after a crash).",
                  (double)pd_read(&pd_stats.rewards_waiting));
    metrics_counter(w, "promptd_journal_expired_total",
                    "Decisions whose reward window closed with no event.", (double)j->expired);
    metrics_counter(w, "promptd_journal_evicted_total",
                    "Decisions closed early because the journal was full.", (double)j->evicted);
    metrics_family(w, "promptd_journal_redecided_total", METRICS_COUNTER,
                   "Decisions for an id that already had one (a re-delivered prompt): "
                   "replacing the open one, or not journaled because the first had closed.");
    metrics_value1(w, "first", "open", (double)j->replaced);
    metrics_value1(w, "first", "closed", (double)j->redecided);
    metrics_gauge(w, "promptd_reward_mean", "Mean of the last 1000 rewards learned from.", mean);
}

static void render_policy(MetricsWriter *w, uint64_t serving_version) {
    metrics_gauge(w, "promptd_policy_version", "Version of the policy choosing templates now.",
                  (double)serving_version);
    if (!parts.learner) return;
    LearnerStats l = learner_stats(parts.learner);
    metrics_counter(w, "promptd_policy_updates_total", "PPO updates.", (double)l.updates);
    metrics_counter(w, "promptd_learner_experiences_total", "Experiences learned from.",
                    (double)l.experiences);
    metrics_family(w, "promptd_learner_dropped_total", METRICS_COUNTER,
                   "Experiences not learned from, by reason.");
    metrics_value1(w, "reason", "stale", (double)l.dropped_stale);
    metrics_value1(w, "reason", "unknown_template", (double)l.dropped_unknown);
    metrics_value1(w, "reason", "queue_full", (double)l.dropped_full);
    metrics_value1(w, "reason", "bad_record", (double)l.dropped_bad);
    metrics_gauge(w, "promptd_policy_kl", "Approximate KL of the last update.", l.kl);
    metrics_gauge(w, "promptd_policy_entropy", "Policy entropy in the last update, in nats.",
                  l.entropy);
    metrics_family(w, "promptd_checkpoints_total", METRICS_COUNTER, "Checkpoints by result.");
    metrics_value1(w, "result", "ok", (double)l.checkpoints);
    metrics_value1(w, "result", "error", (double)l.checkpoint_errors);
    if (l.head_tunes + l.tune_skips + l.tune_errors) {
        metrics_family(w, "promptd_encoder_head_tune_runs_total", METRICS_COUNTER,
                       "Online fine-tunes of the encoder's head by result: written, skipped "
                       "(too few triplets, or nothing to learn), error.");
        metrics_value1(w, "result", "written", (double)l.head_tunes);
        metrics_value1(w, "result", "skipped", (double)l.tune_skips);
        metrics_value1(w, "result", "error", (double)l.tune_errors);
    }
}

/* learner.mode distributed: the role, how far this instance's policy is behind the
 * newest published one, and the experience topic. */
static void render_cluster(MetricsWriter *w, uint64_t serving_version) {
    if (!parts.cluster) return;
    ClusterStats c = cluster_stats(parts.cluster);
    metrics_gauge(w, "promptd_cluster_learner",
                  "1 while this instance is the elected learner, 0 while it is an actor.",
                  c.learner ? 1 : 0);
    metrics_counter(w, "promptd_cluster_elections_total", "Times this instance became the learner.",
                    (double)c.elections);
    metrics_gauge(w, "promptd_policy_published_version",
                  "Newest valid policy snapshot read from the policy topic.",
                  (double)c.newest_version);
    metrics_gauge(w, "promptd_policy_version_lag",
                  "Versions between the newest published policy and the one serving here.",
                  c.newest_version > serving_version ? (double)(c.newest_version - serving_version)
                                                     : 0);
    if (c.experience_lag >= 0)
        metrics_gauge(w, "promptd_experience_lag",
                      "Learner only: experiences on the experience topic not yet taken.",
                      (double)c.experience_lag);
    metrics_family(w, "promptd_cluster_experiences_total", METRICS_COUNTER,
                   "Experiences on the experience topic: sent (acknowledged), lost (could not "
                   "be written), taken (by this instance as learner), refused (damaged).");
    metrics_value1(w, "outcome", "sent", (double)c.experiences_sent);
    metrics_value1(w, "outcome", "lost", (double)c.experiences_lost);
    metrics_value1(w, "outcome", "taken", (double)c.experiences_taken);
    metrics_value1(w, "outcome", "refused", (double)c.experiences_refused);
    metrics_family(w, "promptd_policy_snapshots_total", METRICS_COUNTER,
                   "Policy snapshots: published by this instance, refused (damaged or of "
                   "another layout).");
    metrics_value1(w, "outcome", "published", (double)c.snapshots_published);
    metrics_value1(w, "outcome", "refused", (double)c.snapshots_refused);
}

static void render_pack(MetricsWriter *w, const TemplateCount *counts, size_t n) {
    metrics_family(w, "promptd_template_selections_total", METRICS_COUNTER,
                   "Decisions per template.");
    for (size_t i = 0; i < n; i++)
        metrics_value1(w, "template", counts[i].name, (double)counts[i].count);
    if (counts[TEMPLATES_MAX].count)
        metrics_value1(w, "template", counts[TEMPLATES_MAX].name,
                       (double)counts[TEMPLATES_MAX].count);
    metrics_family(w, "promptd_pack_reloads_total", METRICS_COUNTER, "Pack reloads by result.");
    metrics_value1(w, "result", "ok", (double)pd_read(&pd_stats.pack_reloads_ok));
    metrics_value1(w, "result", "refused", (double)pd_read(&pd_stats.pack_reloads_failed));
    metrics_gauge(w, "promptd_pack_last_reload_success",
                  "1 if the last pack reload succeeded, 0 if it was refused.",
                  (double)pd_read(&pd_stats.pack_last_reload_ok));
    uint64_t at = pd_read(&pd_stats.pack_last_reload_ms);
    if (at)
        metrics_gauge(w, "promptd_pack_last_reload_timestamp_seconds",
                      "When a pack was last loaded successfully.", (double)at / 1000);
    metrics_family(w, "promptd_lua_errors_total", METRICS_COUNTER,
                   "Errors in the pack's Lua, by function.");
    metrics_value1(w, "kind", "render", (double)pd_read(&pd_stats.render_errors));
    metrics_value1(w, "kind", "eligible", (double)pd_read(&pd_stats.eligible_errors));
    metrics_value1(w, "kind", "reward", (double)pd_read(&pd_stats.reward_errors));
    metrics_value1(w, "kind", "features", (double)pd_read(&pd_stats.feature_errors));
    metrics_counter(w, "promptd_no_template_total",
                    "Prompts for which no template was eligible (dead letters).",
                    (double)pd_read(&pd_stats.no_template));
}

static void render_encoder(MetricsWriter *w, const char *model) {
    if (model[0]) {
        metrics_family(w, "promptd_encoder_model_info", METRICS_GAUGE,
                       "The encoder model serving now (its id changes when the head is "
                       "fine-tuned online).");
        MetricsLabel id[] = {{"id", model}};
        metrics_value(w, id, 1, 1);
    }
    metrics_counter(w, "promptd_encoder_head_tunes_total",
                    "Fine-tuned projection heads (online triplets) that took over serving.",
                    (double)pd_read(&pd_stats.head_tunes));
}

void observe_render(void *ctx, MetricsWriter *w) {
    (void)ctx;
    static TemplateCount counts[TEMPLATES_MAX + 1]; /* one scrape at a time (metrics.h) */
    pthread_mutex_lock(&shown.lock);
    JournalStats journal = shown.journal;
    size_t n = shown.n;
    memcpy(counts, shown.counts, sizeof counts);
    double mean = shown.reward_mean;
    uint64_t version = shown.policy_version;
    char model[sizeof shown.model_id];
    memcpy(model, shown.model_id, sizeof model);
    pthread_mutex_unlock(&shown.lock);

    render_flow(w);
    render_latency(w);
    render_cache(w);
    render_rewards(w, &journal, mean);
    render_policy(w, version);
    render_cluster(w, version);
    render_pack(w, counts, n);
    render_encoder(w, model);
    metrics_family(w, "promptd_build_info", METRICS_GAUGE, "Versions promptd runs with.");
    MetricsLabel build[] = {
        {"version", PD_VERSION}, {"librdkafka", rd_kafka_version_str()}, {"lua", LUA_RELEASE}};
    metrics_value(w, build, PD_ARRAY_LEN(build), 1);
    metrics_write_process(w);
}

void observe_health(void *ctx, MetricsHealth *h) {
    (void)ctx;
    ObservePhase p = (ObservePhase)atomic_load(&phase);
    if (p == OBSERVE_STARTING) metrics_health_add(h, METRICS_FAILING, "starting");
    if (p == OBSERVE_STOPPING) metrics_health_add(h, METRICS_FAILING, "stopping");
    uint64_t silent = pd_mono_ms() - atomic_load_explicit(&heartbeat_ms, memory_order_relaxed);
    if (p == OBSERVE_SERVING && silent > STALL_MS)
        metrics_health_add(h, METRICS_FAILING, "serving loop stalled for %.0f s",
                           (double)silent / 1000);
    if (parts.redis_configured && parts.cache && !cache_stats(parts.cache).l2_up)
        metrics_health_add(h, METRICS_DEGRADED, "redis down (in-process fallback)");
    pthread_mutex_lock(&shown.lock);
    bool journal_refused = shown.journal.redis_refusing;
    pthread_mutex_unlock(&shown.lock);
    /* The journal writes for every decision, so its view is current; the cache's is not
     * (a warm cache writes nothing). */
    if (journal_refused)
        metrics_health_add(h, METRICS_DEGRADED,
                           "redis refusing writes (decisions wait for rewards in memory)");
    if (parts.learner && learner_stats(parts.learner).checkpoint_failing)
        metrics_health_add(h, METRICS_DEGRADED,
                           "checkpoints failing (the learned policy is not saved; see the log)");
    if (pd_read(&pd_stats.pack_reloads_failed) && !pd_read(&pd_stats.pack_last_reload_ok))
        metrics_health_add(h, METRICS_DEGRADED,
                           "last pack reload refused (the previous pack serves)");
}

void observe_status_line(char *buf, size_t len) {
    static uint64_t last_count, last_ms;
    uint64_t count = pd_read(&pd_stats.decisions_acked), now = pd_mono_ms();
    double rate = last_ms && now > last_ms
                      ? (double)(count - last_count) * 1000 / (double)(now - last_ms)
                      : 0;
    last_count = count, last_ms = now;
    pthread_mutex_lock(&shown.lock);
    uint64_t version = shown.policy_version;
    double mean = shown.reward_mean;
    pthread_mutex_unlock(&shown.lock);
    if (isnan(mean))
        snprintf(buf, len, "serving: %.0f decisions/s, policy v%" PRIu64 ", no reward yet", rate,
                 version);
    else
        snprintf(buf, len, "serving: %.0f decisions/s, policy v%" PRIu64 ", mean reward %.3f", rate,
                 version, mean);
}
