/*
 * promptctl send: one prompt through a running promptd, as any client would send it, and
 * the answer printed: the decision, or the dead letter with its reason.
 *
 * The decisions and dead-letter topics are assigned at their high watermarks before the
 * prompt is produced, so the answer cannot slip by between sending and listening. The
 * answer is recognised by the promptd-source header promptd puts on every output (the
 * prompt's topic/partition/offset, known from the delivery report), which holds even when
 * the prompt has no readable id; without that header, by id.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_common.h"
#include "pd.h"

#define ATTRS_MAX 64

typedef struct {
    CtlKafka kafka;
    const char *session, *id, *raw;
    const char *topic_prompts, *topic_decisions, *topic_dead;
    const char *attrs[ATTRS_MAX];
    size_t nattrs;
    int64_t timeout_ms;
    bool json;
} SendOptions;

/* The prompt's delivery, filled by the delivery report. */
typedef struct {
    bool done;
    rd_kafka_resp_err_t err;
    int32_t partition;
    int64_t offset;
} Delivery;

typedef enum { NOT_OURS, ANSWER_DECISION, ANSWER_DEAD_LETTER } Answer;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: promptctl send [OPTION]... TEXT...\n"
            "       promptctl send [OPTION]... --raw JSON\n"
            "Send one prompt to a running promptd through Kafka and print its decision (or\n"
            "its dead letter). The words of TEXT are joined with spaces.\n"
            "\n"
            "  -b, --brokers LIST         Kafka bootstrap servers\n"
            "  -B, --bootstrap-file FILE  read them from the file promptd's embedded broker\n"
            "                             writes (kafka.embedded.bootstrap_file)\n"
            "  -X, --kafka KEY=VALUE      a librdkafka property for both clients (repeatable)\n"
            "  -s, --session S            the prompt's session (incident, conversation)\n"
            "  -a, --attr KEY=VALUE       an attribute (repeatable); VALUE is JSON when it\n"
            "                             reads as JSON (3, true, \"3\"), else a string\n"
            "      --id ID                the prompt's id (default: a generated one)\n"
            "      --raw JSON             send this payload as is, for how promptd treats a\n"
            "                             malformed prompt\n"
            "  -t, --timeout DURATION     how long to wait for the answer (default 30s)\n"
            "      --json                 print the decision or dead letter as received\n"
            "      --topic-prompts T, --topic-decisions T, --topic-dead-letters T\n"
            "                             topic names (default promptd.prompts, ...)\n"
            "\n"
            "Exit status: 0 decided, 1 dead-lettered, 64 usage, 69 Kafka unreachable,\n"
            "75 no answer in time.\n");
}

static int parse(int argc, char **argv, SendOptions *o) {
    enum { ID = 256, RAW, JSON, TP, TD, TDL };
    static const struct option opts[] = {{"brokers", required_argument, NULL, 'b'},
                                         {"bootstrap-file", required_argument, NULL, 'B'},
                                         {"kafka", required_argument, NULL, 'X'},
                                         {"session", required_argument, NULL, 's'},
                                         {"attr", required_argument, NULL, 'a'},
                                         {"id", required_argument, NULL, ID},
                                         {"raw", required_argument, NULL, RAW},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"json", no_argument, NULL, JSON},
                                         {"topic-prompts", required_argument, NULL, TP},
                                         {"topic-decisions", required_argument, NULL, TD},
                                         {"topic-dead-letters", required_argument, NULL, TDL},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    *o = (SendOptions){.topic_prompts = "promptd.prompts",
                       .topic_decisions = "promptd.decisions",
                       .topic_dead = "promptd.dead-letters",
                       .timeout_ms = 30000};
    int c;
    while ((c = getopt_long(argc, argv, "b:B:X:s:a:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': o->kafka.brokers = optarg; break;
        case 'B': o->kafka.bootstrap_file = optarg; break;
        case 'X':
            if (ctl_kafka_prop(&o->kafka, optarg))
                return fprintf(stderr, "promptctl send: -X wants KEY=VALUE\n"), -1;
            break;
        case 's': o->session = optarg; break;
        case 'a':
            if (!strchr(optarg, '=') || optarg[0] == '=' || o->nattrs >= ATTRS_MAX)
                return fprintf(stderr, "promptctl send: --attr wants KEY=VALUE\n"), -1;
            o->attrs[o->nattrs++] = optarg;
            break;
        case ID: o->id = optarg; break;
        case RAW: o->raw = optarg; break;
        case 't':
            if (ctl_duration_ms(optarg, &o->timeout_ms) || o->timeout_ms <= 0)
                return fprintf(stderr, "promptctl send: bad --timeout '%s'\n", optarg), -1;
            break;
        case JSON: o->json = true; break;
        case TP: o->topic_prompts = optarg; break;
        case TD: o->topic_decisions = optarg; break;
        case TDL: o->topic_dead = optarg; break;
        case 'h': usage(stdout); return 1;
        default: return -1;
        }
    }
    if (!o->kafka.brokers == !o->kafka.bootstrap_file)
        return fprintf(stderr, "promptctl send: give one of --brokers, --bootstrap-file\n"), -1;
    if (!o->raw == (optind == argc))
        return fprintf(stderr, "promptctl send: give TEXT or --raw JSON (not both)\n"), -1;
    if (o->raw && (o->session || o->nattrs || o->id))
        return fprintf(stderr, "promptctl send: --raw goes without --session/--attr/--id\n"), -1;
    char err[512];
    if (ctl_kafka_check(&o->kafka, err, sizeof err))
        return fprintf(stderr, "promptctl send: %s\n", err), -1;
    return 0;
}

/* --- the prompt --- */

/* {"id", "text", "session"?, "attrs"?} from the options and TEXT..., malloc'ed. */
static char *build_prompt(const SendOptions *o, char **words, int nwords, const char *id) {
    json_t *attrs = json_object(), *prompt = json_object();
    size_t len = 1;
    for (int i = 0; i < nwords; i++) len += strlen(words[i]) + 1;
    char *text = calloc(1, len);
    for (int i = 0; text && i < nwords; i++) {
        if (i) strcat(text, " ");
        strcat(text, words[i]);
    }
    for (size_t i = 0; attrs && i < o->nattrs; i++) {
        const char *eq = strchr(o->attrs[i], '=');
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(eq - o->attrs[i]), o->attrs[i]);
        json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
        json_object_set_new(attrs, key, v ? v : json_string(eq + 1));
    }
    char *payload = NULL;
    if (text && attrs && prompt) {
        json_object_set_new(prompt, "id", json_string(id));
        json_object_set_new(prompt, "text", json_string(text));
        if (o->session) json_object_set_new(prompt, "session", json_string(o->session));
        if (o->nattrs) json_object_set(prompt, "attrs", attrs);
        payload = json_dumps(prompt, JSON_COMPACT);
    }
    json_decref(attrs);
    json_decref(prompt);
    free(text);
    return payload;
}

/* The id in a raw payload, when it has one, for matching without the header. */
static void raw_id(const char *raw, char *id, size_t len) {
    json_t *j = json_loads(raw, 0, NULL);
    const json_t *v = json_object_get(j, "id");
    if (json_is_string(v))
        snprintf(id, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(id, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else
        id[0] = '\0';
    json_decref(j);
}

/* --- Kafka --- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk, (void)opaque;
    Delivery *d = m->_private;
    *d = (Delivery){true, m->err, m->partition, m->offset};
}

/* Produces the prompt and waits for its delivery report until deadline. */
static int produce(rd_kafka_t *producer, const SendOptions *o, const char *key, const char *payload,
                   Delivery *d, uint64_t deadline, char *err, size_t errlen) {
    rd_kafka_resp_err_t e = rd_kafka_producev(
        producer, RD_KAFKA_V_TOPIC(o->topic_prompts), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
        RD_KAFKA_V_VALUE((void *)payload, strlen(payload)),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    if (e) return snprintf(err, errlen, "produce: %s", rd_kafka_err2str(e)), -1;
    while (!d->done && pd_mono_ms() < deadline) rd_kafka_poll(producer, 50);
    e = d->done ? d->err : RD_KAFKA_RESP_ERR__MSG_TIMED_OUT;
    if (e)
        return snprintf(err, errlen, "%s: the prompt was not delivered: %s", o->topic_prompts,
                        rd_kafka_err2str(e)),
               -1;
    return 0;
}

/* Whether m answers our prompt, and how. */
static Answer answer_of(const SendOptions *o, const rd_kafka_message_t *m, const char *source,
                        const char *id) {
    const char *topic = rd_kafka_topic_name(m->rkt);
    Answer kind = !strcmp(topic, o->topic_decisions) ? ANSWER_DECISION : ANSWER_DEAD_LETTER;
    rd_kafka_headers_t *hdrs = NULL;
    const void *value;
    size_t size;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(hdrs, "promptd-source", &value, &size) ==
            RD_KAFKA_RESP_ERR_NO_ERROR)
        return size == strlen(source) && !memcmp(value, source, size) ? kind : NOT_OURS;

    /* No header: an older promptd. A decision names its prompt's id; a dead letter where
     * its input came from. */
    json_t *j = json_loadb(m->payload, m->len, 0, NULL);
    char from[320] = "";
    bool ours = false;
    if (kind == ANSWER_DECISION) {
        ours = id[0] && json_is_string(json_object_get(j, "id")) &&
               !strcmp(json_string_value(json_object_get(j, "id")), id);
    } else if (json_is_string(json_object_get(j, "topic"))) {
        snprintf(from, sizeof from, "%s/%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                 json_string_value(json_object_get(j, "topic")),
                 json_integer_value(json_object_get(j, "partition")),
                 json_integer_value(json_object_get(j, "offset")));
        ours = !strcmp(from, source);
    }
    json_decref(j);
    return ours ? kind : NOT_OURS;
}

/* Reads the followed topics until our answer comes or deadline passes. Returns the answer
 * (its message in *out), or NOT_OURS on timeout. */
static Answer await(rd_kafka_t *consumer, const SendOptions *o, const char *source, const char *id,
                    uint64_t deadline, rd_kafka_message_t **out) {
    while (pd_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        if (!m) continue;
        Answer a = m->err ? NOT_OURS : answer_of(o, m, source, id);
        if (a != NOT_OURS) {
            *out = m;
            return a;
        }
        rd_kafka_message_destroy(m);
    }
    return NOT_OURS;
}

/* --- printing --- */

static const char *str(const json_t *j, const char *key) {
    const char *s = json_string_value(json_object_get(j, key));
    return s ? s : "-";
}

static void print_decision(const json_t *d, int64_t ms) {
    const json_t *p = json_object_get(d, "p"), *v = json_object_get(d, "value");
    printf("decision %s (%" PRId64 " ms)\n", str(d, "id"), ms);
    printf("  template  %s (p %.3f", str(d, "template"), json_number_value(p));
    if (json_is_number(v)) printf(", value %+.3f", json_number_value(v));
    printf(")\n  policy    version %" JSON_INTEGER_FORMAT "\n",
           json_integer_value(json_object_get(d, "policy_version")));
    printf("  pack      %s %s\n", str(d, "pack"), str(d, "script_version"));
    if (json_is_string(json_object_get(d, "session")))
        printf("  session   %s\n", str(d, "session"));
    printf("\n%s\n", str(d, "prompt"));
}

static void print_dead_letter(const json_t *d, const char *id, int64_t ms) {
    printf("dead letter%s%s (%" PRId64 " ms)\n", id[0] ? " for " : "", id, ms);
    printf("  reason    %s\n", str(d, "reason"));
    printf("  error     %s\n", str(d, "error"));
    printf("  input     %s/%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "\n", str(d, "topic"),
           json_integer_value(json_object_get(d, "partition")),
           json_integer_value(json_object_get(d, "offset")));
}

static int report(const SendOptions *o, Answer a, const rd_kafka_message_t *m, const char *id,
                  int64_t ms) {
    if (o->json) {
        printf("%.*s\n", (int)m->len, (const char *)m->payload);
        return a == ANSWER_DECISION ? 0 : 1;
    }
    json_t *j = json_loadb(m->payload, m->len, 0, NULL);
    if (!j) {
        printf("%s (not JSON):\n%.*s\n", a == ANSWER_DECISION ? "decision" : "dead letter",
               (int)m->len, (const char *)m->payload);
    } else if (a == ANSWER_DECISION) {
        print_decision(j, ms);
    } else {
        print_dead_letter(j, id, ms);
    }
    json_decref(j);
    return a == ANSWER_DECISION ? 0 : 1;
}

/* --- the command --- */

int ctl_send(int argc, char **argv) {
    SendOptions o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc > 0 ? 0 : PD_EXIT_USAGE;

    char id[320], brokers[1024], err[1600], why[512], source[320];
    if (o.raw)
        raw_id(o.raw, id, sizeof id);
    else if (o.id)
        snprintf(id, sizeof id, "%s", o.id);
    else
        snprintf(id, sizeof id, "promptctl-%" PRIx64 "-%x", pd_mono_ns(), (unsigned)getpid());
    char *payload = o.raw ? strdup(o.raw) : build_prompt(&o, argv + optind, argc - optind, id);
    if (!payload) return fprintf(stderr, "promptctl send: out of memory\n"), PD_EXIT_SOFTWARE;

    uint64_t start = pd_mono_ms(), deadline = start + (uint64_t)o.timeout_ms;
    rd_kafka_t *consumer = NULL, *producer = NULL;
    rd_kafka_message_t *answer = NULL;
    Delivery delivery = {0};
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%" PRId64, o.timeout_ms);
    rd_kafka_conf_t *pconf = rd_kafka_conf_new();
    rd_kafka_conf_set_dr_msg_cb(pconf, on_delivery);
    rd_kafka_conf_set(pconf, "message.timeout.ms", timeout, err, sizeof err);

    rc = CTL_EXIT_UNAVAILABLE;
    if (ctl_kafka_brokers(&o.kafka, brokers, sizeof brokers, deadline, err, sizeof err)) goto done;
    rc = PD_EXIT_USAGE; /* from here on, a client refused is a -X mistake */
    consumer = ctl_kafka_client(&o.kafka, brokers, RD_KAFKA_CONSUMER, NULL, err, sizeof err);
    producer = consumer
                   ? ctl_kafka_client(&o.kafka, brokers, RD_KAFKA_PRODUCER, pconf, err, sizeof err)
                   : (rd_kafka_conf_destroy(pconf), NULL);
    pconf = NULL;
    if (!producer) goto done;
    rd_kafka_poll_set_consumer(consumer);

    rc = CTL_EXIT_UNAVAILABLE;
    const char *follow[] = {o.topic_decisions, o.topic_dead};
    if (ctl_kafka_follow(consumer, follow, 2, deadline, why, sizeof why)) {
        snprintf(err, sizeof err, "Kafka at %s: %s", brokers, why);
        goto done;
    }
    const char *key = o.session ? o.session : id[0] ? id : NULL;
    if (produce(producer, &o, key, payload, &delivery, deadline, err, sizeof err)) goto done;

    snprintf(source, sizeof source, "%s/%" PRId32 "/%" PRId64, o.topic_prompts, delivery.partition,
             delivery.offset);
    Answer a = await(consumer, &o, source, id, deadline, &answer);
    if (a == NOT_OURS) {
        snprintf(err, sizeof err,
                 "no decision or dead letter for %s (%s) within %" PRId64
                 " ms (is promptd running and reading %s?)",
                 id[0] ? id : "the prompt", source, o.timeout_ms, o.topic_prompts);
        rc = PD_EXIT_TEMPFAIL;
        goto done;
    }
    rc = report(&o, a, answer, id, (int64_t)(pd_mono_ms() - start));

done:
    if (rc != 0 && rc != 1) fprintf(stderr, "promptctl send: %s\n", err);
    if (answer) rd_kafka_message_destroy(answer);
    if (consumer) rd_kafka_consumer_close(consumer), rd_kafka_destroy(consumer);
    if (producer) rd_kafka_destroy(producer);
    if (pconf) rd_kafka_conf_destroy(pconf);
    free(payload);
    return rc;
}
