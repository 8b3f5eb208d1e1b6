/*
 * promptd: the command line, the configuration, signals, and the serving loop that moves
 * prompts from the consumer through the pipeline to the producer.
 *
 * Exit codes: 0 after a clean stop, 64 for a usage error, 78 for a configuration error
 * (systemd does not restart on it), 75 when Kafka cannot go on (a restart may help; no
 * prompt is lost because its offset was not committed).
 */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "cluster.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "mockbroker.h"
#include "model.h"
#include "notify.h"
#include "observe.h"
#include "pack.h"
#include "packwatch.h"
#include "pd.h"
#include "journal.h"
#include "learner.h"
#include "pipeline.h"
#include "selector.h"
#include "session.h"
#include "stats.h"
#include "train.h"

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reload_requested;

/* What the command line asked for. */
typedef struct {
    const char *config_path; /* NULL: embedded defaults */
    char **overrides;        /* "key=value" from --set, re-applied on every reload */
    int noverrides;
    int check, dump;
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: promptd [OPTION]...\n"
            "Choose a prompt template for every prompt read from Kafka, and learn from rewards.\n"
            "\n"
            "  -c, --config FILE     read the configuration from FILE (default: built-in\n"
            "                        defaults: embedded broker, in-process cache)\n"
            "  -o, --set KEY=VALUE   set a configuration key, after the file (repeatable)\n"
            "  -t, --check           validate the configuration and the policy pack and exit: 0\n"
            "                        when good,\n"
            "                        78 on an error, printed as file:line: key: what is wrong\n"
            "      --dump-config     print the effective configuration and exit\n"
            "      --help-config     print every configuration key with its default and exit\n"
            "  -V, --version         print the version and exit\n"
            "  -h, --help            print this help and exit\n"
            "\n"
            "Signals: SIGTERM and SIGINT drain in-flight prompts, commit and exit 0;\n"
            "SIGHUP reloads the configuration's reloadable keys and the policy pack.\n");
}

static int parse_options(int argc, char **argv, Options *o) {
    enum { OPT_DUMP = 256, OPT_HELP_CONFIG };
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"set", required_argument, NULL, 'o'},
                                             {"check", no_argument, NULL, 't'},
                                             {"dump-config", no_argument, NULL, OPT_DUMP},
                                             {"help-config", no_argument, NULL, OPT_HELP_CONFIG},
                                             {"version", no_argument, NULL, 'V'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int opt;
    o->overrides = pd_xcalloc((size_t)argc, sizeof *o->overrides);
    while ((opt = getopt_long(argc, argv, "c:o:tVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': o->config_path = optarg; break;
        case 'o': o->overrides[o->noverrides++] = optarg; break;
        case 't': o->check = 1; break;
        case OPT_DUMP: o->dump = 1; break;
        case OPT_HELP_CONFIG: config_describe(stdout); exit(PD_EXIT_OK);
        case 'V':
            printf("promptd %s\nlibrdkafka %s\n", PD_VERSION, rd_kafka_version_str());
            exit(PD_EXIT_OK);
        case 'h': usage(stdout); exit(PD_EXIT_OK);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "promptd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Reads the configuration: defaults, then the file, then --set. Returns the error count. */
/* The experience and policy topics carry promptd's own binary messages: sharing a topic
 * with anything else would feed them to the wrong reader. */
static void check_cluster_topics(const Config *c, ConfigErrors *errs) {
    const struct {
        const char *key, *value;
    } topics[] = {{"kafka.topic.prompts", c->topic_prompts},
                  {"kafka.topic.decisions", c->topic_decisions},
                  {"kafka.topic.dead_letters", c->topic_dead_letters},
                  {"kafka.topic.rewards", c->topic_rewards},
                  {"kafka.topic.experience", c->topic_experience},
                  {"kafka.topic.policy", c->topic_policy}};
    size_t n = PD_ARRAY_LEN(topics);
    for (size_t i = n - 2; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (!strcmp(topics[i].value, topics[j].value))
                config_error(errs, config_origin(c, topics[i].key), topics[i].key,
                             "must differ from %s ('%s')", topics[j].key, topics[j].value);
}

static int load_config(Config *c, const Options *o, ConfigErrors *errs) {
    config_init(c);
    if (o->config_path) config_load(c, o->config_path, errs);
    for (int i = 0; i < o->noverrides; i++) {
        char key[256];
        const char *eq = strchr(o->overrides[i], '=');
        ConfigOrigin origin = {"command line", 0};
        if (!eq || eq == o->overrides[i] || (size_t)(eq - o->overrides[i]) >= sizeof key) {
            config_error(errs, origin, o->overrides[i], "--set expects KEY=VALUE");
            continue;
        }
        snprintf(key, sizeof key, "%.*s", (int)(eq - o->overrides[i]), o->overrides[i]);
        config_set(c, key, eq + 1, origin, errs);
    }
    kafka_check_config(c, errs);
    if (!strcmp(c->learner_mode, "distributed") && c->learner_triplets)
        config_error(errs, config_origin(c, "learner.triplets"), "learner.triplets",
                     "needs learner.mode local: a fine-tuned head is not shared between "
                     "instances yet");
    if (!strcmp(c->learner_mode, "distributed")) check_cluster_topics(c, errs);
    return errs->count;
}

/* The pack and helper-library directories: configured, or the shipped ones. */
static void pack_paths(const Config *c, char *pack, char *lib, size_t len) {
    if (c->policy_pack[0])
        snprintf(pack, len, "%s", c->policy_pack);
    else
        snprintf(pack, len, "%s/policies/alarm", pd_datadir());
    if (c->policy_lib[0])
        snprintf(lib, len, "%s", c->policy_lib);
    else
        snprintf(lib, len, "%s/lua", pd_datadir());
}

static SandboxLimits limits_of(const Config *c) {
    return (SandboxLimits){
        .memory = (size_t)c->lua_memory,
        .instructions = (uint64_t)c->lua_instructions,
        .time_ms = (uint64_t)c->lua_time_ms,
        .max_depth = (int)c->lua_max_depth,
        .max_string = (size_t)c->lua_max_string,
    };
}

/* Loads the configured pack; an error is reported like a configuration error, at the line
 * that names the pack. */
static Pack *load_pack(const Config *c, ConfigErrors *errs) {
    char dir[PATH_MAX], lib[PATH_MAX], err[1024];
    SandboxLimits limits = limits_of(c);
    pack_paths(c, dir, lib, sizeof dir);
    Pack *p = pack_load(dir, lib, &limits, err, sizeof err);
    if (!p) config_error(errs, config_origin(c, "policy.pack"), "policy.pack", "%s", err);
    return p;
}

static const char *model_path_of(const Config *c) {
    return c->encoder_model[0] ? c->encoder_model : model_default_path();
}

/* Loads the encoder's model; an error is reported at the line that names the model. */
static Model *load_model(const Config *c, ConfigErrors *errs) {
    char err[1024];
    Model *m = NULL;
    if (model_load(&m, model_path_of(c), (size_t)c->encoder_max_tokens, err, sizeof err))
        config_error(errs, config_origin(c, "encoder.model"), "encoder.model", "%s", err);
    return m;
}

static void apply_logging(const Config *c) {
    uint32_t mask = 0;
    char bad[64];
    pd_log_set_level((int)c->log_level);
    pd_log_debug_parse(c->log_debug, &mask, bad, sizeof bad); /* validated when set */
    pd_log_set_debug_mask(mask);
    pd_log_set_ratelimit((unsigned)c->log_ratelimit_burst, (uint64_t)c->log_ratelimit_interval_ms);
}

/* --- signals --- */

static void on_signal(int sig) {
    if (sig == SIGHUP)
        reload_requested = 1;
    else
        stop_requested = 1;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* --- the service --- */

typedef struct {
    Options opts;
    Config config;
    MockBroker *broker;
    Kafka *kafka;
    Model *model;
    char base_model_id[17];    /* of encoder.model, which a fine-tuned head starts from */
    char tuned_path[PATH_MAX]; /* where the learner writes it (learner.triplets) */
    Cache *cache;
    Pack *pack; /* the pack serving now */
    PackWatch *packwatch;
    Selector *selector;
    Journal *journal;
    SessionStore *sessions;
    Learner *learner;
    Cluster *cluster; /* learner.mode distributed */
    Pipeline *pipeline;
    MetricsServer *metrics;
    rd_kafka_message_t **batch;
    size_t batch_cap;
} Service;

static JournalConfig journal_config(const Config *c) {
    bool drop = !strcmp(c->reward_default, "drop");
    return (JournalConfig){(JournalRule)journal_rule_parse(c->reward_aggregate),
                           c->reward_window_ms,
                           drop,
                           drop ? 0 : strtod(c->reward_default, NULL),
                           (size_t)c->journal_max_entries,
                           0};
}

static PolicySampling sampling_of(const Config *c) {
    return (PolicySampling){(float)c->policy_temperature, (float)c->policy_min_prob,
                            c->policy_greedy != 0};
}

static void note_restart_needed(void *ctx, const char *key) {
    (void)ctx;
    pd_log(PD_LOG_WARNING, PD_MOD_CONFIG, "%s changed; it takes effect after a restart", key);
}

static int resize_batch(Service *s) {
    size_t want = (size_t)s->config.batch_size;
    if (want <= s->batch_cap) return 0;
    rd_kafka_message_t **grown = realloc(s->batch, want * sizeof *grown);
    if (!grown) return -1;
    s->batch = grown;
    s->batch_cap = want;
    return 0;
}

/* Re-reads the configuration and asks for the pack to be reloaded. Returns 0, or -1 when
 * the configuration was refused (msg says why; the running one stays). */
static int reload_config(Service *s, char *msg, size_t msglen) {
    Config fresh;
    ConfigErrors errs = {0};
    if (load_config(&fresh, &s->opts, &errs)) {
        pd_log(PD_LOG_ERR, PD_MOD_CONFIG, "reload refused, the running configuration stays: %s",
               errs.text);
        snprintf(msg, msglen, "configuration refused, the running one stays: %.*s",
                 (int)strcspn(errs.text, "\n"), errs.text);
        config_free(&fresh);
        return -1;
    }

    int applied = config_apply_reload(&s->config, &fresh, note_restart_needed, NULL);
    config_free(&fresh);
    apply_logging(&s->config);
    SandboxLimits limits = limits_of(&s->config);
    packwatch_set_limits(s->packwatch, &limits);
    kafka_reconfigure(s->kafka, &s->config);
    pipeline_reconfigure(s->pipeline, &s->config);
    PolicySampling sampling = sampling_of(&s->config);
    selector_configure(s->selector, &sampling);
    if (s->learner) learner_set_sampling(s->learner, sampling.temperature, sampling.min_prob);
    JournalConfig jc = journal_config(&s->config);
    journal_configure(s->journal, &jc);
    if (resize_batch(s))
        pd_log(PD_LOG_WARNING, PD_MOD_MAIN, "no memory for the larger batch; it stays at %zu",
               s->batch_cap);
    pd_log(PD_LOG_NOTICE, PD_MOD_CONFIG, "configuration reloaded: %d key(s) changed", applied);
    snprintf(msg, msglen, "configuration: %d key(s) changed", applied);
    return 0;
}

static void swap_pack(Service *s);

/* A reload (SIGHUP, POST /-/reload, systemctl reload): the configuration, then the pack,
 * waited for so that the answer says whether the new pack serves. The serving loop
 * stands still meanwhile (a pack loads in tens of milliseconds). */
static void reload(Service *s) {
    char config_msg[600], pack_msg[1200], answer[1900];
    uint64_t ticket = s->metrics ? metrics_reload_begin(s->metrics) : 0;
    notify_reloading();
    pd_log(PD_LOG_NOTICE, PD_MOD_MAIN, "reload requested");

    bool config_ok = reload_config(s, config_msg, sizeof config_msg) == 0;
    packwatch_request(s->packwatch); /* the pack reloads on its own merits either way */
    packwatch_wait(s->packwatch, (int)s->config.admin_reload_timeout_ms, pack_msg, sizeof pack_msg);
    swap_pack(s);

    bool pack_ok = strncmp(pack_msg, "refused", 7) && strncmp(pack_msg, "timed out", 9);
    const char *pack_part = pack_msg;
    if (!strncmp(pack_part, "loaded: ", 8)) pack_part += 8;
    if (!strncmp(pack_part, "refused: ", 9)) pack_part += 9;
    snprintf(answer, sizeof answer, "%s; %s", pack_part, config_msg);
    if (s->metrics)
        metrics_reload_end(s->metrics, ticket,
                           config_ok && pack_ok ? METRICS_RELOAD_OK : METRICS_RELOAD_REFUSED,
                           answer);
    notify_ready();
}

static int start_broker(Service *s, const char **brokers) {
    char err[512];
    const Config *c = &s->config;
    const char *topics[] = {c->topic_prompts, c->topic_decisions, c->topic_dead_letters,
                            c->topic_rewards[0] ? c->topic_rewards : c->topic_prompts};
    const char *single[] = {c->topic_experience, c->topic_policy};

    if (strcmp(c->kafka_brokers, "embedded")) {
        *brokers = c->kafka_brokers;
        return 0;
    }
    if (mockbroker_start(&s->broker, (int)c->embedded_brokers, topics, PD_ARRAY_LEN(topics),
                         (int)c->embedded_partitions, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_BROKER, "%s", err);
        return -1;
    }
    /* One partition each: the learner is elected by who holds the experience partition. */
    for (size_t i = 0; i < PD_ARRAY_LEN(single) && !strcmp(c->learner_mode, "distributed"); i++)
        rd_kafka_mock_topic_create(mockbroker_cluster(s->broker), single[i], 1, 1);
    *brokers = mockbroker_bootstraps(s->broker);
    pd_log(PD_LOG_NOTICE, PD_MOD_BROKER,
           "embedded broker (a test cluster that keeps about 5 MiB per partition) at %s", *brokers);

    if (c->embedded_bootstrap_file[0] &&
        mockbroker_write_bootstrap(s->broker, c->embedded_bootstrap_file, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_BROKER, "%s", err);
        return -1;
    }
    return 0;
}

static int start_pack(Service *s) {
    char dir[PATH_MAX], lib[PATH_MAX], err[1024];
    ConfigErrors errs = {0};
    s->pack = load_pack(&s->config, &errs);
    if (!s->pack) {
        pd_log(PD_LOG_ERR, PD_MOD_LUA, "%s", errs.text);
        return PD_EXIT_CONFIG;
    }
    pd_log(PD_LOG_NOTICE, PD_MOD_LUA, "pack %s version %s: %zu templates", pack_name(s->pack),
           pack_version(s->pack), pack_template_count(s->pack));

    pack_paths(&s->config, dir, lib, sizeof dir);
    PackWatchConfig wc = {dir, lib, limits_of(&s->config), s->config.policy_watch != 0,
                          pack_version(s->pack)};
    if (packwatch_start(&s->packwatch, &wc, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_LUA, "%s", err);
        return PD_EXIT_SOFTWARE;
    }
    return PD_EXIT_OK;
}

/* Where checkpoints go: configured, or systemd's StateDirectory, or ./promptd-state. */
static void checkpoint_dir(const Config *c, char *dir, size_t len) {
    const char *state = getenv("STATE_DIRECTORY");
    if (c->learner_checkpoint_dir[0])
        snprintf(dir, len, "%s", c->learner_checkpoint_dir);
    else if (state && *state)
        snprintf(dir, len, "%.*s", (int)strcspn(state, ":"), state);
    else
        snprintf(dir, len, "promptd-state");
}

/* With learner.triplets, a head the learner fine-tuned from the configured model serves
 * instead of it, so what it learned survives a restart. A file made from another model,
 * or one that does not load, is named in the log and left alone. */
static void use_tuned_model(Service *s) {
    char err[PATH_MAX + 512], base[64];
    Model *tuned = NULL;
    if (access(s->tuned_path, F_OK) != 0) return;

    int found =
        train_model_metadata(s->tuned_path, "base_model_id", base, sizeof base, err, sizeof err);
    if (found < 0 || (found && model_load(&tuned, s->tuned_path,
                                          (size_t)s->config.encoder_max_tokens, err, sizeof err))) {
        pd_log(PD_LOG_WARNING, PD_MOD_ENCODER, "ignoring the fine-tuned model: %s; %s serves", err,
               model_path(s->model));
        return;
    }
    if (!found || strcmp(base, s->base_model_id)) {
        pd_log(PD_LOG_NOTICE, PD_MOD_ENCODER,
               "ignoring the fine-tuned model %s: it was made from model %s, not from the "
               "configured %s",
               s->tuned_path, found ? base : "(none recorded)", s->base_model_id);
        model_free(tuned);
        return;
    }
    pd_log(PD_LOG_NOTICE, PD_MOD_ENCODER,
           "serving the fine-tuned model %s (id %s, its head tuned online from %s)", s->tuned_path,
           model_id(tuned), s->base_model_id);
    model_free(s->model);
    s->model = tuned;
}

static int start_model(Service *s) {
    ConfigErrors errs = {0};
    model_set_threads((int)s->config.encoder_threads);
    s->model = load_model(&s->config, &errs);
    if (!s->model) {
        pd_log(PD_LOG_ERR, PD_MOD_ENCODER, "%s", errs.text);
        return PD_EXIT_CONFIG;
    }
    pd_log(PD_LOG_NOTICE, PD_MOD_ENCODER, "model %s (id %s, %d dimensions)", model_path(s->model),
           model_id(s->model), model_dim(s->model));
    snprintf(s->base_model_id, sizeof s->base_model_id, "%s", model_id(s->model));
    if (s->config.learner_triplets) {
        char dir[PATH_MAX];
        checkpoint_dir(&s->config, dir, sizeof dir);
        snprintf(s->tuned_path, sizeof s->tuned_path, "%.*s/tuned.safetensors",
                 (int)(sizeof s->tuned_path - 32), dir);
        use_tuned_model(s);
    }
    return PD_EXIT_OK;
}

static int start_cache(Service *s) {
    char err[1024];
    const Config *c = &s->config;
    CacheConfig cc = {c->redis_url,
                      c->cache_l1_bytes,
                      c->cache_ttl_ms,
                      c->redis_connect_timeout_ms,
                      c->redis_command_timeout_ms,
                      0,
                      0};
    int rc = cache_open(&s->cache, &cc, err, sizeof err);
    if (rc) {
        ConfigOrigin where = config_origin(c, "redis.url");
        pd_log(PD_LOG_ERR, PD_MOD_CACHE, "%s:%d: redis.url: %s", where.file, where.line, err);
        return rc == PD_ECONFIG ? PD_EXIT_CONFIG : PD_EXIT_SOFTWARE;
    }
    return PD_EXIT_OK;
}

/* learner.mode distributed: the clients of the experience and policy topics. */
static int start_cluster(Service *s, const char *brokers, const PolicyDims *dims) {
    char err[1024], layout[CHECKPOINT_LAYOUT_MAX];
    const Config *c = &s->config;
    if (strcmp(c->learner_mode, "distributed")) return PD_EXIT_OK;
    learner_layout(layout, sizeof layout, dims);
    if (cluster_open(&s->cluster, c, brokers, layout, c->learner_enabled != 0, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "%s", err);
        return PD_EXIT_TEMPFAIL;
    }
    return PD_EXIT_OK;
}

/* The first decision is made with the cluster's current policy, or, when its topic cannot
 * be read in time, with the local one until it can. */
static void catch_up_cluster(Service *s) {
    char err[1024];
    if (!s->cluster) return;
    cluster_set_learner(s->cluster, s->learner);
    if (cluster_catch_up(s->cluster, 15000, err, sizeof err))
        pd_log(PD_LOG_WARNING, PD_MOD_LEARNER, "serving the local policy for now: %s", err);
    ClusterStats cs = cluster_stats(s->cluster);
    pd_log(PD_LOG_NOTICE, PD_MOD_LEARNER,
           "distributed learning: experiences to %s, policy from %s (newest version %" PRIu64 ")",
           s->config.topic_experience, s->config.topic_policy, cs.newest_version);
}

static int start_learning(Service *s, const char *brokers) {
    char err[1024];
    const Config *c = &s->config;
    PolicyDims dims = selector_dims(model_dim(s->model));
    int code = start_cluster(s, brokers, &dims);
    if (code) return code;
    LearnerConfig lc = {.dims = dims,
                        .ppo = ppo_defaults(),
                        .adam = adam_defaults(),
                        .batch_size = (int)c->learner_batch_size,
                        .max_staleness = (uint64_t)c->learner_max_staleness,
                        .episodes = c->learner_episodes != 0,
                        .checkpoint_every_ms = c->learner_checkpoint_every_ms,
                        .checkpoint_keep = (int)c->learner_checkpoint_keep,
                        .seed = (uint64_t)c->policy_seed + 1,
                        /* Not the tuned head's: the policy follows it across swaps
                         * while serving, and so across restarts. */
                        .model_id = strtoull(s->base_model_id, NULL, 16),
                        .queue_max = 64 * (size_t)c->learner_batch_size,
                        .on_snapshot =
                            s->cluster && c->learner_enabled ? cluster_snapshot_sink : NULL,
                        .snapshot_ctx = s->cluster,
                        .snapshot_every_ms = c->learner_publish_every_ms};
    lc.ppo.epochs = (int)c->learner_epochs;
    lc.ppo.minibatch = (int)c->learner_minibatch;
    lc.ppo.target_kl = (float)c->learner_target_kl;
    lc.ppo.entropy_coef = (float)c->learner_entropy_coef;
    lc.ppo.temperature = (float)c->policy_temperature;
    lc.ppo.min_prob = (float)c->policy_min_prob;
    lc.adam.lr = c->learner_lr;
    checkpoint_dir(c, lc.checkpoint_dir, sizeof lc.checkpoint_dir);
    /* Without learning there are no experiences to tune from. */
    lc.triplets = c->learner_triplets && c->learner_enabled;
    lc.tuner = (TunerConfig){(int)c->learner_triplets_every,
                             (int)c->learner_triplets_steps,
                             c->learner_triplets_lr,
                             (uint64_t)c->policy_seed + 2,
                             model_path(s->model),
                             s->tuned_path,
                             s->base_model_id,
                             (size_t)c->encoder_max_tokens};

    PolicySampling sampling = sampling_of(c);
    s->selector = selector_new(model_dim(s->model), &sampling, (uint64_t)c->policy_seed);
    JournalConfig jc = journal_config(c);
    /* Keys are per consumer group, so that deployments sharing a Redis never meet. */
    char prefix[300];
    snprintf(prefix, sizeof prefix, "promptd:%s:", c->kafka_group_id);
    struct RedisLink *link = cache_redis_link(s->cache);
    s->journal = journal_new(&jc, link, prefix);
    s->sessions =
        session_new(model_dim(s->model), c->session_ttl_ms, (size_t)c->session_max, link, prefix);
    if (!s->selector || !s->journal || !s->sessions) {
        pd_log(PD_LOG_ERR, PD_MOD_MAIN, "out of memory at start-up");
        return PD_EXIT_SOFTWARE;
    }
    if (learner_start(&s->learner, &lc, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_LEARNER, "%s", err);
        return PD_EXIT_SOFTWARE;
    }
    return PD_EXIT_OK;
}

static void reload_requested_over_http(void *ctx) {
    (void)ctx; /* the serving loop polls metrics_reload_pending */
}

/* /metrics, /healthz and /-/reload, on metrics.listen and admin.socket. */
static int start_metrics(Service *s) {
    char err[1024];
    const Config *c = &s->config;
    ObserveParts parts = {s->cache, s->learner, strcmp(c->redis_url, "none") != 0, s->cluster};
    observe_init(&parts);
    if (!c->metrics_listen[0] && !c->admin_socket[0]) return PD_EXIT_OK;

    MetricsConfig mc = {c->metrics_listen,
                        c->metrics_allow_remote != 0,
                        c->admin_socket,
                        observe_render,
                        observe_health,
                        reload_requested_over_http,
                        NULL,
                        (int)c->admin_reload_timeout_ms};
    int rc = metrics_start(&s->metrics, &mc, err, sizeof err);
    if (rc) {
        pd_log(PD_LOG_ERR, PD_MOD_MAIN, "%s", err);
        return rc == PD_ECONFIG ? PD_EXIT_CONFIG : PD_EXIT_TEMPFAIL;
    }
    if (metrics_port(s->metrics))
        pd_log(PD_LOG_NOTICE, PD_MOD_MAIN, "metrics on http://%.*s:%d/metrics",
               (int)(strrchr(c->metrics_listen, ':') - c->metrics_listen), c->metrics_listen,
               metrics_port(s->metrics));
    if (c->admin_socket[0]) pd_log(PD_LOG_INFO, PD_MOD_MAIN, "admin socket %s", c->admin_socket);
    return PD_EXIT_OK;
}

static int start(Service *s) {
    char err[1024];
    const char *brokers;
    int code = start_model(s);
    if (code == PD_EXIT_OK) code = start_cache(s);
    if (code == PD_EXIT_OK && start_broker(s, &brokers)) code = PD_EXIT_TEMPFAIL;
    if (code == PD_EXIT_OK) code = start_learning(s, brokers);
    if (code == PD_EXIT_OK) code = start_pack(s);
    if (code == PD_EXIT_OK) code = start_metrics(s);
    if (code) return code;
    observe_set_model(model_id(s->model));
    catch_up_cluster(s);

    if (kafka_open(&s->kafka, &s->config, brokers, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "%s", err);
        return PD_EXIT_TEMPFAIL;
    }
    PipelineParts parts = {s->kafka,   s->cache,    s->model,   s->selector,
                           s->journal, s->sessions, s->learner, s->config.learner_enabled != 0,
                           s->cluster};
    s->pipeline = pipeline_new(&s->config, &parts);
    Pack *none = s->pipeline ? pipeline_use_pack(s->pipeline, s->pack, err, sizeof err) : s->pack;
    if (none == s->pack) {
        pd_log(PD_LOG_ERR, PD_MOD_MAIN, "cannot start the pipeline: %s",
               s->pipeline ? err : "out of memory");
        return PD_EXIT_SOFTWARE;
    }
    /* The restored or fresh policy; nothing is held yet, so it cannot fail. */
    pipeline_tick(s->pipeline, pd_wall_ms(), err, sizeof err);
    if (resize_batch(s)) {
        pd_log(PD_LOG_ERR, PD_MOD_MAIN, "out of memory at start-up");
        return PD_EXIT_SOFTWARE;
    }
    pd_log(PD_LOG_NOTICE, PD_MOD_MAIN,
           "promptd %s serving: prompts=%s decisions=%s dead_letters=%s group=%s policy=v%" PRIu64,
           PD_VERSION, s->config.topic_prompts, s->config.topic_decisions,
           s->config.topic_dead_letters, s->config.kafka_group_id,
           selector_policy_version(s->selector));
    observe_set_phase(OBSERVE_SERVING);
    notify_ready();
    notify_status("serving: policy v%" PRIu64 ", pack %s version %s",
                  selector_policy_version(s->selector), pack_name(s->pack), pack_version(s->pack));
    return PD_EXIT_OK;
}

/* Between batches: a newly checked pack replaces the serving one, which goes back to the
 * loader thread to be closed. */
static void swap_pack(Service *s) {
    char err[512];
    Pack *fresh = packwatch_take(s->packwatch);
    if (!fresh) return;
    Pack *old = pipeline_use_pack(s->pipeline, fresh, err, sizeof err);
    if (old == fresh) {
        pd_log(PD_LOG_ERR, PD_MOD_LUA, "pack %s version %s not used: %s", pack_name(fresh),
               pack_version(fresh), err);
        packwatch_retire(s->packwatch, fresh);
        return;
    }
    s->pack = fresh;
    packwatch_retire(s->packwatch, old);
}

/* Between batches: a model whose head the learner fine-tuned replaces the serving one.
 * The pipeline re-encodes the pack's templates with it and tells the learner; prompts
 * are cached under the new id. */
static void swap_model(Service *s) {
    char err[1024];
    LearnerTuned tuned;
    Model *fresh = NULL;
    if (!s->learner || !learner_poll_model(s->learner, &tuned)) return;
    if (model_load(&fresh, tuned.path, (size_t)s->config.encoder_max_tokens, err, sizeof err)) {
        pd_log(PD_LOG_ERR, PD_MOD_ENCODER, "fine-tuned model not used: %s", err);
        return;
    }
    Model *old = pipeline_use_model(s->pipeline, fresh, err, sizeof err);
    if (old == fresh) {
        pd_log(PD_LOG_ERR, PD_MOD_ENCODER, "fine-tuned model %s not used: %s", tuned.path, err);
        model_free(fresh);
        return;
    }
    observe_set_model(model_id(fresh));
    pd_count(&pd_stats.head_tunes, 1);
    pd_log(PD_LOG_NOTICE, PD_MOD_ENCODER,
           "projection head fine-tuned on %d triplets (loss %.4f -> %.4f): model %s -> %s",
           tuned.triplets, tuned.loss_before, tuned.loss_after, model_id(old), model_id(fresh));
    model_free(old);
    s->model = fresh;
}

/* The serving loop: poll a batch, run it, serve acknowledgements; until asked to stop. */
/* A surge (a backlog after a Redis restart or an outage) grows the journal and the batches
 * for a while; once it has drained, glibc keeps the freed pages unless asked, and resident
 * memory would stay at the surge's peak for good, which reads as a leak on a dashboard.
 * Every 10 s, free pages go back to the system. The cost is a walk of the arenas, which
 * grows with the heap; the soak (tests/soak.c) serves at its rate with this in place. */
static void give_back_memory(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static int serve(Service *s) {
    char err[1024];
    uint64_t next_tick = pd_mono_ms() + 1000, ticks = 0;

    while (!stop_requested) {
        int n = kafka_poll_batch(s->kafka, s->batch, (int)s->config.batch_size,
                                 (int)s->config.batch_wait_ms, err, sizeof err);
        int rc = n < 0 ? n : PD_OK;
        if (n > 0) {
            rc = pipeline_run(s->pipeline, s->batch, n, err, sizeof err);
            kafka_release(s->batch, n);
        }
        if (rc == PD_OK) rc = kafka_serve(s->kafka, 0, err, sizeof err);
        if (rc) {
            pd_log(PD_LOG_CRIT, PD_MOD_MAIN, "stopping: %s", err);
            return PD_EXIT_TEMPFAIL;
        }

        if (reload_requested || (s->metrics && metrics_reload_pending(s->metrics))) {
            reload_requested = 0;
            reload(s);
        }
        swap_pack(s);
        swap_model(s);
        if (s->cluster) cluster_serve(s->cluster);
        if (pipeline_tick(s->pipeline, pd_wall_ms(), err, sizeof err)) {
            pd_log(PD_LOG_CRIT, PD_MOD_MAIN, "stopping: %s", err);
            return PD_EXIT_TEMPFAIL;
        }
        observe_heartbeat();
        notify_watchdog();
        if (pd_mono_ms() >= next_tick) {
            char status[256];
            JournalStats js = journal_stats(s->journal);
            observe_publish(&js, selector_policy_version(s->selector));
            if (++ticks % 5 == 0) {
                observe_status_line(status, sizeof status);
                notify_status("%s", status);
            }
            pd_log_tick();
            if (ticks % 10 == 0) give_back_memory();
            next_tick = pd_mono_ms() + 1000;
        }
    }
    return PD_EXIT_OK;
}

static void log_summary(size_t unacked) {
    uint64_t dead = 0;
    for (int r = 0; r < MSG_REASON_COUNT; r++) dead += pd_read(&pd_stats.dead_letters_acked[r]);
    pd_log(PD_LOG_NOTICE, PD_MOD_MAIN,
           "stopped: prompts=%" PRIu64 " decisions=%" PRIu64 " rewards=%" PRIu64
           " dead_letters=%" PRIu64 " unacked=%zu produce_failures=%" PRIu64 " pauses=%" PRIu64
           " rebalances=%" PRIu64 " pack_reloads=%" PRIu64 " pack_refused=%" PRIu64
           " render_errors=%" PRIu64,
           (uint64_t)pd_read(&pd_stats.prompts_consumed),
           (uint64_t)pd_read(&pd_stats.decisions_acked),
           (uint64_t)pd_read(&pd_stats.rewards_consumed), dead, unacked,
           (uint64_t)pd_read(&pd_stats.produce_failures), (uint64_t)pd_read(&pd_stats.pauses),
           (uint64_t)pd_read(&pd_stats.rebalances), (uint64_t)pd_read(&pd_stats.pack_reloads_ok),
           (uint64_t)pd_read(&pd_stats.pack_reloads_failed),
           (uint64_t)pd_read(&pd_stats.render_errors));
}

/* Drains in-flight outputs, commits, and frees everything. */
static void stop(Service *s) {
    size_t unacked = 0;
    observe_set_phase(OBSERVE_STOPPING);
    notify_stopping();
    if (s->metrics) metrics_set_stopping(s->metrics);
    if (s->kafka) {
        unacked = kafka_drain(s->kafka, (int)s->config.shutdown_timeout_ms);
        if (unacked)
            pd_log(PD_LOG_WARNING, PD_MOD_KAFKA,
                   "%zu output(s) unacknowledged after shutdown.timeout; their prompts stay "
                   "uncommitted and are read again after the restart",
                   unacked);
        kafka_close(s->kafka);
    }
    metrics_stop(s->metrics); /* before what its callbacks read */
    pipeline_free(s->pipeline);
    learner_stop(s->learner); /* writes the final checkpoint (and publishes it) */
    cluster_close(s->cluster, (int)s->config.shutdown_timeout_ms);
    journal_free(s->journal);
    session_free(s->sessions);
    selector_free(s->selector);
    packwatch_stop(s->packwatch);
    pack_free(s->pack);
    cache_close(s->cache);
    model_free(s->model);
    mockbroker_stop(s->broker);
    log_summary(unacked);
    free(s->batch);
    config_free(&s->config);
    free(s->opts.overrides);
}

int main(int argc, char **argv) {
    Service s;
    ConfigErrors errs = {0};
    memset(&s, 0, sizeof s);
    if (parse_options(argc, argv, &s.opts)) {
        free(s.opts.overrides);
        return PD_EXIT_USAGE;
    }

    if (load_config(&s.config, &s.opts, &errs)) {
        fputs(errs.text, stderr);
        config_free(&s.config);
        free(s.opts.overrides);
        return PD_EXIT_CONFIG;
    }
    if (s.opts.check) {
        char err[512];
        if (s.config.metrics_listen[0] &&
            metrics_check_address(s.config.metrics_listen, s.config.metrics_allow_remote != 0, err,
                                  sizeof err)) {
            ConfigOrigin where = config_origin(&s.config, "metrics.listen");
            config_error(&errs, where, "metrics.listen", "%s", err);
        }
        Model *m = load_model(&s.config, &errs);
        Pack *p = load_pack(&s.config, &errs);
        if (!p || !m || errs.count) {
            pack_free(p);
            model_free(m);
            fputs(errs.text, stderr);
            config_free(&s.config);
            free(s.opts.overrides);
            return PD_EXIT_CONFIG;
        }
        printf("promptd: configuration is valid; pack %s version %s has %zu templates; model "
               "%s\n",
               pack_name(p), pack_version(p), pack_template_count(p), model_id(m));
        pack_free(p);
        model_free(m);
    }
    if (s.opts.check || s.opts.dump) {
        if (s.opts.dump) config_dump(&s.config, stdout);
        config_free(&s.config);
        free(s.opts.overrides);
        return PD_EXIT_OK;
    }

    apply_logging(&s.config);
    char err[512];
    if (notify_init(err, sizeof err))
        pd_log(PD_LOG_WARNING, PD_MOD_MAIN, "systemd notification is off: %s", err);
    install_signals();
    int code = start(&s);
    if (code == PD_EXIT_OK) code = serve(&s);
    stop(&s);
    return code;
}
