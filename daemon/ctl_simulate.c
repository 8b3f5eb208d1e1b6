/*
 * promptctl simulate: a seeded scenario (scenario.h) plays the world around promptd. It
 * produces the scenario's prompt stream to the prompts topic, reads promptd's decisions,
 * and answers each with the scenario's reward event on the rewards topic after its delay,
 * all through Kafka like any client. As it goes it prints the mean quality of promptd's
 * choices against the oracle's (the best eligible template every time) and uniform random
 * choice's, over the last --window decisions.
 *
 * The quality is the scenario's expected reward for the chosen template, not the noisy
 * reward sent: it measures the policy, not the luck of the draw.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_common.h"
#include "metrics.h"
#include "pd.h"
#include "scenario.h"
#include "simview.h"

typedef struct {
    CtlKafka kafka;
    const char *scenario, *write_pack, *json_out, *csv_out, *svg_out;
    const char *admin;
    bool live;
    const char *topic_prompts, *topic_decisions, *topic_rewards;
    const char *params[65];
    size_t nparams;
    long long prompts, inflight, every, window, seed;
    double rate, stall_s;
} SimOptions;

/* A prompt of the run: sent, then decided (its reward queued). */
typedef struct {
    Situation sit;
    bool sent, decided;
} Slot;

/* A reward event waiting for its time. */
typedef struct {
    int64_t due_ms;
    uint64_t index;
    char *payload;
} Due;

typedef struct {
    Due *items;
    size_t len, cap;
} DueHeap;

/* Quality of the last `window` decisions, as a ring, and the whole run's. */
typedef struct {
    double *q, *oracle, *uniform;
    size_t window, filled, next;
    double sum_q, sum_oracle, sum_uniform; /* over the ring */
    double regret;                         /* sum of oracle - q over the run */
    uint64_t decided, duplicates, foreign, unreadable;
    int64_t policy_version;
    uint64_t *per_template;
} Tally;

typedef struct {
    SimOptions o;
    Scenario *scenario;
    rd_kafka_t *producer, *consumer;
    Slot *slots;
    char tag[32];
    DueHeap due;
    Tally t;
    FILE *csv;
    SimView *view;
    char pack_version[64];
    double refused; /* promptd_pack_reloads_total{result="refused"} last seen; -1: unknown */
} Sim;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig) {
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *out) {
    fprintf(out,
            "Usage: promptctl simulate [OPTION]...\n"
            "Play a seeded scenario against a running promptd through Kafka: send its prompts,\n"
            "answer each decision with a reward event, and report the policy's quality against\n"
            "the oracle's and uniform random choice's.\n"
            "\n"
            "  -s, --scenario NAME|FILE   alarm (default), bandit, or a scenario script\n"
            "  -p, --param KEY=VALUE      a parameter of the scenario (repeatable)\n"
            "  -b, --brokers LIST         Kafka bootstrap servers\n"
            "  -B, --bootstrap-file FILE  read them from the file promptd's embedded broker\n"
            "                             writes (kafka.embedded.bootstrap_file)\n"
            "  -X, --kafka KEY=VALUE      a librdkafka property for both clients (repeatable)\n"
            "  -n, --prompts N            prompts to send (default 10000)\n"
            "  -r, --rate N               prompts per second (default 0: as fast as --inflight)\n"
            "  -i, --inflight N           prompts awaiting their decision at most (default 256)\n"
            "  -w, --window N             decisions the running figures cover (default 1000)\n"
            "  -e, --every N              print a line every N decisions (default 1000; 0: none)\n"
            "      --seed N               seed of the scenario (default 1)\n"
            "      --stall SECONDS        give up after this long without a decision (default 60)\n"
            "      --json FILE            write the summary as JSON\n"
            "      --csv FILE             write the running figures every --every decisions\n"
            "      --svg FILE             draw the learning curve into FILE at the end\n"
            "      --live                 a live view of the run instead of progress lines\n"
            "      --admin TARGET         also watch promptd's metrics there for refused pack\n"
            "                             reloads (an admin socket or host:port)\n"
            "      --topic-prompts T, --topic-decisions T, --topic-rewards T\n"
            "                             topic names (default promptd.prompts, ...)\n"
            "      --write-pack DIR       write a policy pack for the scenario's templates into\n"
            "                             DIR and exit (no Kafka)\n"
            "\n"
            "Exit status: 0 done, 1 no decision for --stall seconds or interrupted, 64 usage,\n"
            "78 a scenario or Kafka configuration refused.\n");
}

static int parse(int argc, char **argv, SimOptions *o) {
    enum { SEED = 256, STALL, JSON, CSV, TP, TD, TR, PACK, SVG, LIVE, ADMIN };
    static const struct option opts[] = {{"scenario", required_argument, NULL, 's'},
                                         {"param", required_argument, NULL, 'p'},
                                         {"brokers", required_argument, NULL, 'b'},
                                         {"bootstrap-file", required_argument, NULL, 'B'},
                                         {"kafka", required_argument, NULL, 'X'},
                                         {"prompts", required_argument, NULL, 'n'},
                                         {"rate", required_argument, NULL, 'r'},
                                         {"inflight", required_argument, NULL, 'i'},
                                         {"window", required_argument, NULL, 'w'},
                                         {"every", required_argument, NULL, 'e'},
                                         {"seed", required_argument, NULL, SEED},
                                         {"stall", required_argument, NULL, STALL},
                                         {"json", required_argument, NULL, JSON},
                                         {"csv", required_argument, NULL, CSV},
                                         {"topic-prompts", required_argument, NULL, TP},
                                         {"topic-decisions", required_argument, NULL, TD},
                                         {"topic-rewards", required_argument, NULL, TR},
                                         {"write-pack", required_argument, NULL, PACK},
                                         {"svg", required_argument, NULL, SVG},
                                         {"live", no_argument, NULL, LIVE},
                                         {"admin", required_argument, NULL, ADMIN},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    *o = (SimOptions){.scenario = "alarm",
                      .topic_prompts = "promptd.prompts",
                      .topic_decisions = "promptd.decisions",
                      .topic_rewards = "promptd.rewards",
                      .prompts = 10000,
                      .inflight = 256,
                      .every = 1000,
                      .window = 1000,
                      .seed = 1,
                      .stall_s = 60};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "s:p:b:B:X:n:r:i:w:e:h", opts, NULL)) != -1) {
        errno = 0;
        switch (c) {
        case 's': o->scenario = optarg; break;
        case 'b': o->kafka.brokers = optarg; break;
        case 'B': o->kafka.bootstrap_file = optarg; break;
        case 'p':
        case 'X':
            if (c == 'p' ? !strchr(optarg, '=') || o->nparams >= 64
                         : ctl_kafka_prop(&o->kafka, optarg) != 0) {
                fprintf(stderr, "promptctl simulate: -%c wants KEY=VALUE (at most 64)\n", c);
                return -1;
            }
            if (c == 'p') o->params[o->nparams++] = optarg;
            break;
        case 'n': o->prompts = strtoll(optarg, &end, 10); break;
        case 'r': o->rate = strtod(optarg, &end); break;
        case 'i': o->inflight = strtoll(optarg, &end, 10); break;
        case 'w': o->window = strtoll(optarg, &end, 10); break;
        case 'e': o->every = strtoll(optarg, &end, 10); break;
        case SEED: o->seed = strtoll(optarg, &end, 10); break;
        case STALL: o->stall_s = strtod(optarg, &end); break;
        case JSON: o->json_out = optarg; break;
        case CSV: o->csv_out = optarg; break;
        case TP: o->topic_prompts = optarg; break;
        case TD: o->topic_decisions = optarg; break;
        case TR: o->topic_rewards = optarg; break;
        case PACK: o->write_pack = optarg; break;
        case SVG: o->svg_out = optarg; break;
        case LIVE: o->live = true; break;
        case ADMIN: o->admin = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
        if (strchr("nriwe", c) && c != 0 && (errno || *end)) {
            fprintf(stderr, "promptctl simulate: -%c: not a number: %s\n", c, optarg);
            return -1;
        }
    }
    if (optind < argc || o->prompts < 1 || o->inflight < 1 || o->window < 1 || o->every < 0 ||
        o->rate < 0 || o->stall_s <= 0) {
        fprintf(stderr, "promptctl simulate: bad arguments (see --help)\n");
        return -1;
    }
    if (!o->write_pack && !o->kafka.brokers && !o->kafka.bootstrap_file) {
        fprintf(stderr, "promptctl simulate: say where Kafka is: --brokers or --bootstrap-file\n");
        return -1;
    }
    return 0;
}

/* A shipped scenario's name becomes its path under the data directory. */
static void scenario_path(const char *name, char *path, size_t len) {
    if (strchr(name, '/') || strstr(name, ".lua"))
        snprintf(path, len, "%s", name);
    else
        snprintf(path, len, "%s/lua/scenarios/%s.lua", pd_datadir(), name);
}

/* --- the reward heap, ordered by due time --- */

static void heap_swap(Due *a, Due *b) {
    Due t = *a;
    *a = *b;
    *b = t;
}

static int heap_push(DueHeap *h, Due d) {
    if (h->len == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 256;
        Due *grown = realloc(h->items, cap * sizeof *grown);
        if (!grown) return -1;
        h->items = grown;
        h->cap = cap;
    }
    size_t i = h->len++;
    h->items[i] = d;
    while (i > 0 && h->items[(i - 1) / 2].due_ms > h->items[i].due_ms) {
        heap_swap(&h->items[(i - 1) / 2], &h->items[i]);
        i = (i - 1) / 2;
    }
    return 0;
}

static Due heap_pop(DueHeap *h) {
    Due top = h->items[0];
    h->items[0] = h->items[--h->len];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && h->items[l].due_ms < h->items[m].due_ms) m = l;
        if (r < h->len && h->items[r].due_ms < h->items[m].due_ms) m = r;
        if (m == i) break;
        heap_swap(&h->items[i], &h->items[m]);
        i = m;
    }
    return top;
}

/* --- Kafka --- */

static int produce(Sim *s, const char *topic, const char *key, const char *payload) {
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            s->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE((void *)payload, strlen(payload)),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf(stderr, "promptctl simulate: produce to %s: %s\n", topic, rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(s->producer, 10);
    }
}

/* --- the run --- */

static int send_prompt(Sim *s, uint64_t i) {
    char err[1024], id[64];
    Slot *slot = &s->slots[i];
    if (scenario_next(s->scenario, i, &slot->sit, err, sizeof err)) {
        fprintf(stderr, "promptctl simulate: %s\n", err);
        return -1;
    }
    snprintf(id, sizeof id, "sim-%s-%" PRIu64, s->tag, i);
    json_object_set_new(slot->sit.prompt, "id", json_string(id));
    char *payload = json_dumps(slot->sit.prompt, JSON_COMPACT);
    const json_t *session = json_object_get(slot->sit.prompt, "session");
    int rc = payload ? produce(s, s->o.topic_prompts,
                               json_is_string(session) ? json_string_value(session) : id, payload)
                     : -1;
    free(payload);
    slot->sent = rc == 0;
    return rc;
}

static void tally(Tally *t, double q, double oracle, double uniform) {
    if (t->filled == t->window) {
        t->sum_q -= t->q[t->next];
        t->sum_oracle -= t->oracle[t->next];
        t->sum_uniform -= t->uniform[t->next];
    } else {
        t->filled++;
    }
    t->q[t->next] = q, t->oracle[t->next] = oracle, t->uniform[t->next] = uniform;
    t->sum_q += q, t->sum_oracle += oracle, t->sum_uniform += uniform;
    t->next = (t->next + 1) % t->window;
    t->regret += oracle - q;
    t->decided++;
}

static void report(Sim *s) {
    const Tally *t = &s->t;
    double n = (double)t->filled, mean = t->sum_q / n, oracle = t->sum_oracle / n;
    double uniform = t->sum_uniform / n;
    if (!s->o.live) {
        printf("decisions %7" PRIu64 "  policy v%-5" PRId64 " last %zu: quality %.3f  oracle "
               "%.3f  uniform %.3f  -> %.2f of oracle (uniform %.2f)  regret %.0f\n",
               t->decided, t->policy_version, t->filled, mean, oracle, uniform,
               oracle > 0 ? mean / oracle : 0, oracle > 0 ? uniform / oracle : 0, t->regret);
        fflush(stdout);
    }
    if (s->csv)
        fprintf(s->csv, "%" PRIu64 ",%" PRId64 ",%.6f,%.6f,%.6f,%.6f\n", t->decided,
                t->policy_version, mean, oracle, uniform, t->regret);
}

/* The run's index of one of its own decision ids, or -1 for anyone else's. */
static long long own_index(const Sim *s, const char *id) {
    char prefix[48];
    int n = snprintf(prefix, sizeof prefix, "sim-%s-", s->tag);
    if (strncmp(id, prefix, (size_t)n)) return -1;
    char *end;
    long long i = strtoll(id + n, &end, 10);
    return *end || i < 0 || i >= s->o.prompts ? -1 : i;
}

/* A decision from another pack version than the last one: the pack was reloaded. */
static void watch_pack(Sim *s, const json_t *d) {
    const char *pack = json_string_value(json_object_get(d, "pack"));
    const char *version = json_string_value(json_object_get(d, "script_version"));
    if (!pack || !version || !strcmp(version, s->pack_version)) return;
    bool first = !s->pack_version[0];
    snprintf(s->pack_version, sizeof s->pack_version, "%s", version);
    if (s->view)
        simview_event(s->view, "%s pack %s version %.8s", first ? "serving" : "reloaded: now", pack,
                      version);
    if (!s->o.live && !first)
        printf("decisions %7" PRIu64 "  pack %s reloaded: version %s\n", s->t.decided, pack,
               version);
}

/* A pack reload that promptd refused never shows in the decisions (the previous pack
 * keeps serving), so it is read from promptd's metrics. */
static void watch_refusals(Sim *s) {
    static char page[1 << 17];
    char err[256];
    int status = 0;
    if (metrics_client_request(s->o.admin, "GET", "/metrics", 1000, &status, page, sizeof page, err,
                               sizeof err) ||
        status != 200)
        return;
    const char *key = "promptd_pack_reloads_total{result=\"refused\"} ";
    const char *at = strstr(page, key);
    double refused = at ? strtod(at + strlen(key), NULL) : 0;
    if (s->refused >= 0 && refused > s->refused) {
        if (s->view)
            simview_event(s->view, "pack reload refused: the previous version keeps serving");
        if (!s->o.live)
            printf("decisions %7" PRIu64 "  pack reload refused: the previous version keeps "
                   "serving\n",
                   s->t.decided);
    }
    s->refused = refused;
}

/* Feeds the view and the progress lines with one more decision for template k. */
static void show(Sim *s, size_t k) {
    const Tally *t = &s->t;
    if (s->view) {
        simview_choice(s->view, k);
        if (t->decided % 100 == 0 || t->decided == (uint64_t)s->o.prompts)
            simview_point(s->view, t->decided, t->sum_q / (double)t->filled,
                          t->sum_oracle / (double)t->filled, t->sum_uniform / (double)t->filled,
                          t->policy_version);
    }
    if (s->o.every && t->decided % (uint64_t)s->o.every == 0) report(s);
}

static int on_decision(Sim *s, const rd_kafka_message_t *m) {
    char err[1024];
    json_t *d = json_loadb(m->payload, m->len, 0, NULL);
    const char *id = json_string_value(json_object_get(d, "id"));
    const char *name = json_string_value(json_object_get(d, "template"));
    long long i = id ? own_index(s, id) : -1;
    int rc = 0;
    if (!d || !name) {
        s->t.unreadable += d != NULL;
        s->t.foreign += d == NULL;
    } else if (i < 0) {
        s->t.foreign++;
    } else if (s->slots[i].decided) {
        s->t.duplicates++; /* at-least-once: a re-delivered prompt decided again */
    } else {
        Slot *slot = &s->slots[i];
        double q, delay;
        json_t *fields = NULL;
        rc = scenario_quality(s->scenario, &slot->sit, name, &q, err, sizeof err);
        if (rc == 0)
            rc = scenario_event(s->scenario, &slot->sit, name, q, &fields, &delay, err, sizeof err);
        if (rc == 0) {
            json_object_set_new(fields, "id", json_string(id));
            Due due = {(int64_t)pd_mono_ms() + (int64_t)delay, (uint64_t)i,
                       json_dumps(fields, JSON_COMPACT)};
            rc = due.payload && heap_push(&s->due, due) == 0 ? 0 : -1;
            if (rc) free(due.payload), snprintf(err, sizeof err, "out of memory");
        }
        json_decref(fields);
        if (rc) {
            fprintf(stderr, "promptctl simulate: %s\n", err);
        } else {
            slot->decided = true;
            s->t.policy_version = json_integer_value(json_object_get(d, "policy_version"));
            size_t k = 0, n = scenario_template_count(s->scenario);
            while (k < n && strcmp(scenario_template_name(s->scenario, k), name)) k++;
            if (k < n) s->t.per_template[k]++;
            tally(&s->t, q, slot->sit.oracle, slot->sit.uniform);
            scenario_release(s->scenario, &slot->sit);
            watch_pack(s, d);
            show(s, k);
        }
    }
    json_decref(d);
    return rc;
}

static int send_due(Sim *s, int64_t now) {
    char id[64];
    while (s->due.len && s->due.items[0].due_ms <= now) {
        Due d = heap_pop(&s->due);
        snprintf(id, sizeof id, "sim-%s-%" PRIu64, s->tag, d.index);
        int rc = produce(s, s->o.topic_rewards, id, d.payload);
        free(d.payload);
        if (rc) return -1;
    }
    return 0;
}

static int run(Sim *s) {
    uint64_t sent = 0, total = (uint64_t)s->o.prompts;
    int64_t start = (int64_t)pd_mono_ms(), last_progress = start;
    uint64_t last_decided = 0;
    int64_t next_frame = 0, next_scrape = 0;

    while (!interrupted && (s->t.decided < total || s->due.len)) {
        int64_t now = (int64_t)pd_mono_ms();
        if (s->o.admin && now >= next_scrape) {
            watch_refusals(s);
            next_scrape = now + 1000;
        }
        if (s->o.live && now >= next_frame) {
            simview_draw(s->view, stdout);
            next_frame = now + 250;
        }
        uint64_t allowed =
            s->o.rate > 0 ? (uint64_t)(s->o.rate * (double)(now - start) / 1000) + 1 : total;
        while (sent < total && sent < allowed && sent - s->t.decided < (uint64_t)s->o.inflight) {
            if (send_prompt(s, sent)) return -1;
            sent++;
        }
        if (send_due(s, now)) return -1;
        rd_kafka_poll(s->producer, 0);

        for (int k = 0; k < 1000; k++) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, k == 0 ? 5 : 0);
            if (!m) break;
            int rc = m->err ? 0 : on_decision(s, m);
            if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "promptctl simulate: decisions: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            if (rc) return -1;
        }

        if (s->t.decided != last_decided) {
            last_decided = s->t.decided, last_progress = now;
        } else if (s->t.decided < total && now - last_progress > (int64_t)(s->o.stall_s * 1000)) {
            fprintf(stderr,
                    "promptctl simulate: no decision for %.0f s: %" PRIu64 " of %" PRIu64
                    " prompts sent, %" PRIu64 " decided (is promptd running and reading %s?)\n",
                    s->o.stall_s, sent, total, s->t.decided, s->o.topic_prompts);
            return -1;
        }
    }
    rd_kafka_flush(s->producer, 30000);
    if (s->o.live) simview_draw(s->view, stdout);
    return interrupted ? -1 : 0;
}

/* --- summary --- */

static void summary(Sim *s, double seconds) {
    const Tally *t = &s->t;
    double n = t->filled ? (double)t->filled : 1, oracle = t->sum_oracle / n;
    printf("\n%s: %" PRIu64 " decisions in %.1f s, final policy version %" PRId64 "\n",
           scenario_name(s->scenario), t->decided, seconds, t->policy_version);
    printf("  last %zu decisions: quality %.3f = %.2f of the oracle's %.3f (uniform random: %.3f "
           "= %.2f)\n",
           t->filled, t->sum_q / n, oracle > 0 ? t->sum_q / n / oracle : 0, oracle,
           t->sum_uniform / n, oracle > 0 ? t->sum_uniform / n / oracle : 0);
    printf("  regret over the run: %.1f; duplicates %" PRIu64 ", other decisions %" PRIu64 "\n",
           t->regret, t->duplicates, t->foreign);
    printf("  choices:");
    for (size_t k = 0; k < scenario_template_count(s->scenario); k++)
        printf(" %s %" PRIu64, scenario_template_name(s->scenario, k), t->per_template[k]);
    printf("\n");
    if (!s->o.json_out) return;

    json_t *j = json_pack(
        "{ss sI sI sI sI sf sf sf sf sf sf sf}", "scenario", scenario_name(s->scenario),
        "decisions", (json_int_t)t->decided, "duplicates", (json_int_t)t->duplicates, "window",
        (json_int_t)t->filled, "policy_version", (json_int_t)t->policy_version, "quality",
        t->sum_q / n, "oracle", oracle, "uniform", t->sum_uniform / n, "fraction_of_oracle",
        oracle > 0 ? t->sum_q / n / oracle : 0.0, "uniform_fraction",
        oracle > 0 ? t->sum_uniform / n / oracle : 0.0, "regret", t->regret, "seconds", seconds);
    json_t *choices = json_object();
    for (size_t k = 0; k < scenario_template_count(s->scenario); k++)
        json_object_set_new(choices, scenario_template_name(s->scenario, k),
                            json_integer((json_int_t)t->per_template[k]));
    json_object_set_new(j, "choices", choices);
    if (json_dump_file(j, s->o.json_out, JSON_INDENT(2)))
        fprintf(stderr, "promptctl simulate: cannot write %s\n", s->o.json_out);
    json_decref(j);
}

static void sim_free(Sim *s) {
    for (long long i = 0; s->slots && i < s->o.prompts; i++)
        if (s->slots[i].sent && !s->slots[i].decided)
            scenario_release(s->scenario, &s->slots[i].sit);
    while (s->due.len) free(heap_pop(&s->due).payload);
    free(s->due.items);
    free(s->slots);
    free(s->t.q), free(s->t.oracle), free(s->t.uniform), free(s->t.per_template);
    if (s->consumer) rd_kafka_consumer_close(s->consumer), rd_kafka_destroy(s->consumer);
    if (s->producer) rd_kafka_destroy(s->producer);
    if (s->csv) fclose(s->csv);
    simview_free(s->view);
    scenario_free(s->scenario);
}

/* promptctl's settings of a client; the -X properties come on top. The values are ones
 * librdkafka knows, so setting them cannot fail. */
static rd_kafka_conf_t *conf_of(const char *const *kv, size_t n) {
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i + 1 < n; i += 2)
        rd_kafka_conf_set(conf, kv[i], kv[i + 1], err, sizeof err);
    return conf;
}

/* A producer, and a consumer that reads the decisions made from now on. */
static int open_clients(Sim *s) {
    char brokers[1024], err[1024], group[64];
    uint64_t deadline = pd_mono_ms() + 30000;
    snprintf(group, sizeof group, "promptctl-simulate-%s", s->tag);
    const char *producer[] = {"linger.ms", "2"};
    const char *consumer[] = {"group.id",          group, "enable.auto.commit", "false",
                              "fetch.wait.max.ms", "10"};

    int rc = ctl_kafka_check(&s->o.kafka, err, sizeof err);
    if (rc == 0)
        rc = ctl_kafka_brokers(&s->o.kafka, brokers, sizeof brokers, deadline, err, sizeof err);
    if (rc == 0)
        s->producer = ctl_kafka_client(&s->o.kafka, brokers, RD_KAFKA_PRODUCER,
                                       conf_of(producer, PD_ARRAY_LEN(producer)), err, sizeof err);
    if (rc == 0 && s->producer)
        s->consumer = ctl_kafka_client(&s->o.kafka, brokers, RD_KAFKA_CONSUMER,
                                       conf_of(consumer, PD_ARRAY_LEN(consumer)), err, sizeof err);
    if (rc == 0 && !s->consumer) rc = -1;
    if (rc == 0) {
        rd_kafka_poll_set_consumer(s->consumer);
        const char *topics[] = {s->o.topic_decisions};
        rc = ctl_kafka_follow(s->consumer, topics, 1, deadline, err, sizeof err);
    }
    if (rc) fprintf(stderr, "promptctl simulate: %s\n", err);
    return rc;
}

int ctl_simulate(int argc, char **argv) {
    Sim s = {.refused = -1};
    char path[PATH_MAX], err[2048];
    if (parse(argc, argv, &s.o)) return PD_EXIT_USAGE;

    scenario_path(s.o.scenario, path, sizeof path);
    s.o.params[s.o.nparams] = NULL;
    s.scenario = scenario_load(path, s.o.params, (uint64_t)s.o.seed, err, sizeof err);
    if (!s.scenario) {
        fprintf(stderr, "promptctl simulate: %s\n", err);
        return PD_EXIT_CONFIG;
    }
    if (s.o.write_pack) {
        int rc = scenario_write_pack(s.scenario, s.o.write_pack, err, sizeof err);
        if (rc)
            fprintf(stderr, "promptctl simulate: %s\n", err);
        else
            printf("wrote %s/init.lua (%zu templates)\n", s.o.write_pack,
                   scenario_template_count(s.scenario));
        scenario_free(s.scenario);
        return rc ? PD_EXIT_CONFIG : 0;
    }

    size_t k = scenario_template_count(s.scenario), w = (size_t)s.o.window;
    s.slots = calloc((size_t)s.o.prompts, sizeof *s.slots);
    s.t = (Tally){.window = w,
                  .q = calloc(w, sizeof(double)),
                  .oracle = calloc(w, sizeof(double)),
                  .uniform = calloc(w, sizeof(double)),
                  .per_template = calloc(k, sizeof(uint64_t))};
    if (!s.slots || !s.t.q || !s.t.oracle || !s.t.uniform || !s.t.per_template) {
        fprintf(stderr, "promptctl simulate: out of memory\n");
        sim_free(&s);
        return PD_EXIT_SOFTWARE;
    }
    snprintf(s.tag, sizeof s.tag, "%llx%x", (unsigned long long)time(NULL), (unsigned)getpid());
    if (s.o.csv_out && !(s.csv = fopen(s.o.csv_out, "w")))
        fprintf(stderr, "promptctl simulate: cannot write %s\n", s.o.csv_out);
    if (s.csv) fprintf(s.csv, "decisions,policy_version,quality,oracle,uniform,regret\n");

    if (s.o.live || s.o.svg_out) {
        const char *names[SCENARIO_TEMPLATES_MAX];
        char title[160];
        for (size_t i = 0; i < k && i < SCENARIO_TEMPLATES_MAX; i++)
            names[i] = scenario_template_name(s.scenario, i);
        snprintf(title, sizeof title, "promptd learning the %s scenario",
                 scenario_name(s.scenario));
        s.view = simview_new(title, names, k < SCENARIO_TEMPLATES_MAX ? k : SCENARIO_TEMPLATES_MAX,
                             w, (uint64_t)s.o.prompts);
    }

    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    int64_t start = (int64_t)pd_mono_ms();
    int rc = open_clients(&s) ? PD_EXIT_CONFIG : run(&s) ? 1 : 0;
    if (s.t.decided) summary(&s, (double)((int64_t)pd_mono_ms() - start) / 1000);
    if (s.view && s.o.svg_out && s.t.decided) {
        if (simview_write_svg(s.view, s.o.svg_out, err, sizeof err))
            fprintf(stderr, "promptctl simulate: %s\n", err);
        else
            printf("  learning curve: %s\n", s.o.svg_out);
    }
    sim_free(&s);
    return rc;
}
