/*
 * End to end through the real Kafka protocol: promptd against librdkafka's mock cluster on
 * loopback TCP, with kcat as an independent client producing prompts and reading
 * decisions and dead letters. Covers delivery of every id, dead letters with reasons,
 * kill -9 and SIGTERM in the middle of a stream, backpressure, and reload.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../daemon/mockbroker.h"
#include "../kernels/rng.h"
#include "harness.h"
#include "redis_harness.h"

#define TOPIC_PROMPTS   "promptd.prompts"
#define TOPIC_DECISIONS "promptd.decisions"
#define TOPIC_DEAD      "promptd.dead-letters"
#define TOPIC_REWARDS   "promptd.rewards"

typedef struct {
    const char *dir;
    char bootstrap[512];
    char log[512];
    MockBroker *broker; /* when the test hosts the cluster itself */
    Proc promptd;
    Proc consumer; /* kcat following the decisions */
    char decisions[512];
} Run;

static void run_init(Run *r) {
    memset(r, 0, sizeof *r);
    r->dir = harness_tmpdir();
    cr_assert_not_null(r->dir, "cannot make a scratch directory");
    harness_path(r->log, sizeof r->log, r->dir, "promptd.log");
    harness_path(r->decisions, sizeof r->decisions, r->dir, "decisions.txt");
}

static void run_fini(Run *r) {
    proc_stop(&r->promptd);
    proc_stop(&r->consumer);
    mockbroker_stop(r->broker);
    harness_cleanup();
}

/* Hosts the mock cluster in the test process, so that it outlives a killed promptd. */
static void host_broker(Run *r, int partitions) {
    char err[256];
    const char *topics[] = {TOPIC_PROMPTS, TOPIC_DECISIONS, TOPIC_DEAD, TOPIC_REWARDS};
    int rc = mockbroker_start(&r->broker, 3, topics, 4, partitions, err, sizeof err);
    cr_assert_eq(rc, 0, "mock cluster: %s", err);
    snprintf(r->bootstrap, sizeof r->bootstrap, "%s", mockbroker_bootstraps(r->broker));
}

/* Starts promptd with extra --set arguments (NULL-terminated). With no hosted broker it
 * uses its embedded one and the test reads the bootstrap file it writes. */
static void start_promptd(Run *r, const char *const *sets) {
    char *argv[64];
    char brokers[600], bootfile[600], bootpath[512], state[600];
    int n = 0;
    argv[n++] = (char *)harness_promptd();
    snprintf(state, sizeof state, "learner.checkpoint_dir=%s/state", r->dir);
    if (r->broker) {
        snprintf(brokers, sizeof brokers, "kafka.brokers=%s", r->bootstrap);
    } else {
        harness_path(bootpath, sizeof bootpath, r->dir, "bootstrap");
        snprintf(brokers, sizeof brokers, "kafka.brokers=embedded");
        snprintf(bootfile, sizeof bootfile, "kafka.embedded.bootstrap_file=%s", bootpath);
        argv[n++] = "--set";
        argv[n++] = bootfile;
    }
    argv[n++] = "--set";
    argv[n++] = brokers;
    argv[n++] = "--set";
    argv[n++] = "kafka.consumer.session.timeout.ms=6000";
    argv[n++] = "--set";
    argv[n++] = "kafka.consumer.heartbeat.interval.ms=500";
    argv[n++] = "--set";
    argv[n++] = "metrics.listen=127.0.0.1:0"; /* tests run beside each other */
    argv[n++] = "--set";
    argv[n++] = state;
    for (; sets && *sets; sets++) {
        argv[n++] = "--set";
        argv[n++] = (char *)*sets;
    }
    argv[n] = NULL;
    cr_assert_eq(proc_start(&r->promptd, argv, NULL, NULL, r->log), 0);

    if (!r->broker) {
        cr_assert_eq(harness_wait_file(bootpath, 10000), 0, "promptd wrote no bootstrap file");
        char *text = harness_read_file(bootpath, NULL);
        text[strcspn(text, "\n")] = 0;
        snprintf(r->bootstrap, sizeof r->bootstrap, "%s", text);
        free(text);
    }
}

/* Produces the lines of file; with keyed, each line is "key<TAB>payload". */
static void kcat_produce_lines(Run *r, const char *topic, const char *file, bool keyed) {
    Proc kcat;
    char *argv[] = {"kcat",        "-P", "-b",         r->bootstrap,          "-t",
                    (char *)topic, "-l", (char *)file, keyed ? "-K\t" : NULL, NULL};
    cr_assert_eq(proc_start(&kcat, argv, NULL, NULL, NULL), 0);
    cr_assert_eq(proc_wait(&kcat, 60000), 0, "kcat could not produce %s", file);
}

static void kcat_produce(Run *r, const char *topic, const char *file) {
    kcat_produce_lines(r, topic, file, true);
}

/* kcat produces the lines of file into topic at `rate` per second, in the background,
 * keyed like kcat_produce. Join the feeder, then wait for the kcat process. */
static Feeder *kcat_stream(Run *r, Proc *kcat, const char *topic, const char *file, int rate) {
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    /* A request the mock cluster leaves unanswered (see broker_faults) is given up after
     * 10 s rather than librdkafka's default 60 s. */
    char *argv[] = {"kcat",       "-P", "-b",
                    r->bootstrap, "-t", (char *)topic,
                    "-K\t",       "-X", "socket.timeout.ms=10000",
                    NULL};
    cr_assert_eq(proc_start_fd(kcat, argv, fds[0], NULL, NULL), 0);
    close(fds[0]);
    Feeder *f = feeder_start(file, fds[1], rate);
    cr_assert_not_null(f);
    return f;
}

/* kcat follows topic from the beginning, writing "headers<TAB>payload" lines to out. */
static void kcat_follow(Run *r, Proc *p, const char *topic, const char *out) {
    char *argv[] = {
        "kcat",      "-C", "-b", r->bootstrap, "-t",       (char *)topic, "-o",
        "beginning", "-u", "-q", "-f",         "%h\t%s\n", "-X",          "socket.timeout.ms=10000",
        NULL};
    cr_assert_eq(proc_start(p, argv, NULL, out, NULL), 0);
}

/* --- counting ids in the decisions --- */

typedef struct {
    int n;
    int *count;    /* decisions seen per id */
    char **source; /* promptd-source header of the first decision per id */
    int unique, duplicates, foreign, mismatched_source;
    char *mismatch[64]; /* "first source<TAB>other source<TAB>id" of the first mismatches */
} Seen;

static void seen_init(Seen *s, int n) {
    memset(s, 0, sizeof *s);
    s->n = n;
    s->count = calloc((size_t)n, sizeof *s->count);
    s->source = calloc((size_t)n, sizeof *s->source);
}

static void seen_free(Seen *s) {
    for (int i = 0; i < s->n; i++) free(s->source[i]);
    for (int i = 0; i < 64; i++) free(s->mismatch[i]);
    free(s->count);
    free(s->source);
}

/* Takes one "headers<TAB>json" line of the decisions topic. Returns the index of an id
 * seen for the first time, else -1. */
static int seen_add(Seen *s, const char *prefix, char *line) {
    char *tab = strchr(line, '\t');
    int fresh = -1;
    if (!tab) {
        s->foreign++;
        return -1;
    }
    *tab = 0;
    json_t *d = json_loads(tab + 1, 0, NULL);
    const char *id = d ? json_string_value(json_object_get(d, "id")) : NULL;
    size_t plen = strlen(prefix);
    if (!id || strncmp(id, prefix, plen)) {
        s->foreign++;
        json_decref(d);
        return -1;
    }
    int i = atoi(id + plen);
    if (i < 0 || i >= s->n) {
        s->foreign++;
    } else if (s->count[i]++ == 0) {
        s->unique++;
        s->source[i] = strdup(line);
        fresh = i;
    } else {
        s->duplicates++;
        /* A duplicate is the same input processed twice, so it names the same source. */
        if (strcmp(s->source[i], line) && s->mismatched_source++ < 64 &&
            asprintf(&s->mismatch[s->mismatched_source - 1], "%s\t%s\t%s", s->source[i], line, id) <
                0)
            s->mismatch[s->mismatched_source - 1] = NULL;
    }
    json_decref(d);
    return fresh;
}

/* Reads decisions until every id is seen or timeout_ms passes. */
static void seen_collect(Seen *s, Tail *t, const char *prefix, int until_unique, int timeout_ms) {
    long long deadline = harness_now_ms() + timeout_ms;
    while (s->unique < until_unique && harness_now_ms() < deadline) {
        char *line = tail_next(t);
        if (line)
            seen_add(s, prefix, line);
        else
            usleep(20000);
    }
}

/* Reads topic from the beginning to its end with a new kcat, one line per message in
 * format, into the file r->dir/<topic>.<round>, whose path goes to out. */
static void kcat_read_topic(Run *r, const char *topic, const char *format, int round, char *out,
                            size_t outlen) {
    char name[300];
    Proc kcat;
    snprintf(name, sizeof name, "%s.%d", topic, round);
    harness_path(out, outlen, r->dir, name);
    char *argv[] = {"kcat", "-C",
                    "-b",   r->bootstrap,
                    "-t",   (char *)topic,
                    "-o",   "beginning",
                    "-e",   "-q",
                    "-f",   (char *)format,
                    "-X",   "socket.timeout.ms=10000",
                    NULL};
    cr_assert_eq(proc_start(&kcat, argv, NULL, out, NULL), 0);
    cr_expect_eq(proc_wait(&kcat, 120000), 0, "kcat could not read %s to its end", topic);
}

/* Counts every message in topic, read afresh; the "source" of each is what format puts
 * before the tab ("%h": its headers). */
static void seen_read_topic(Run *r, Seen *s, const char *topic, const char *prefix,
                            const char *format, int round) {
    char out[600];
    kcat_read_topic(r, topic, format, round, out, sizeof out);
    Tail t;
    tail_open(&t, out);
    for (char *line; (line = tail_next(&t));) seen_add(s, prefix, line);
    tail_close(&t);
}

/* Logs the first ids with no decision, with where their prompt is in the prompts topic
 * (read afresh), to tell a prompt never produced from one promptd did not decide. */
static void seen_report_missing(Run *r, const Seen *s, const char *prefix) {
    Seen prompts;
    seen_init(&prompts, s->n);
    seen_read_topic(r, &prompts, TOPIC_PROMPTS, prefix, "partition %p offset %o\t%s\n", 0);
    int shown = 0;
    for (int i = 0; i < s->n && shown < 20; i++) {
        if (s->count[i]) continue;
        cr_log_warn("no decision for %s%d: its prompt is %s", prefix, i,
                    prompts.count[i] ? prompts.source[i] : "not in the prompts topic");
        shown++;
    }
    seen_free(&prompts);
}

/* Of the duplicates naming another input, how many answer a prompt that is itself in the
 * prompts topic twice, at both places they name, with their id: kcat's producer (not
 * idempotent) sends a timed-out request again, and promptd rightly decides both. */
static int seen_inputs_written_twice(Run *r, const Seen *s) {
    char name[600];
    kcat_read_topic(r, TOPIC_PROMPTS, "promptd-source=promptd.prompts/%p/%o\t%s\n", 9, name,
                    sizeof name);
    char *text = harness_read_file(name, NULL);
    int twice = 0;
    for (int k = 0; text && k < s->mismatched_source && k < 64; k++) {
        char *m = s->mismatch[k] ? strdup(s->mismatch[k]) : NULL;
        char *first = m, *other = m ? strchr(m, '\t') : NULL, *id = NULL;
        if (other) *other++ = 0, id = strchr(other, '\t');
        if (!id) {
            free(m);
            continue;
        }
        *id++ = 0;
        int found = 0;
        const char *places[2] = {first, other};
        for (int w = 0; w < 2; w++) {
            char needle[400];
            snprintf(needle, sizeof needle, "%s\t{\"id\":\"%s\"", places[w], id);
            found += strstr(text, needle) != NULL;
        }
        twice += found == 2;
        free(m);
    }
    free(text);
    return twice;
}

static int exit_of_promptd(Run *r, int sig) {
    proc_signal(&r->promptd, sig);
    return proc_wait(&r->promptd, 40000);
}

/* --- tests --- */

Test(stream, every_prompt_gets_a_decision, .timeout = 180) {
    Run r;
    char prompts[512];
    Seen seen;
    Tail tail;
    run_init(&r);
    start_promptd(&r, NULL);

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "p-", 10000), 0);
    kcat_produce(&r, TOPIC_PROMPTS, prompts);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);

    seen_init(&seen, 10000);
    tail_open(&tail, r.decisions);
    seen_collect(&seen, &tail, "p-", 10000, 90000);
    cr_expect_eq(seen.unique, 10000, "decisions for %d of 10000 ids", seen.unique);
    cr_expect_eq(seen.foreign, 0, "%d lines that are not decisions of ours", seen.foreign);
    cr_log_info("10000 prompts: %d decided, %d duplicates", seen.unique, seen.duplicates);

    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0, "promptd did not exit 0 on SIGTERM");
    cr_expect_eq(harness_wait_text(r.log, "decisions=10000 ", 1000), 0,
                 "the shutdown summary does not count 10000 decisions");
    tail_close(&tail);
    run_fini(&r);
}

/* The decision carries the prompt's id and session, the template the shipped alarm pack
 * chose and rendered, its probability, and the pack's name and version. */
Test(stream, decision_carries_the_rendered_template, .timeout = 120) {
    Run r;
    char prompts[512];
    Tail tail;
    run_init(&r);
    start_promptd(&r, NULL);

    harness_path(prompts, sizeof prompts, r.dir, "one.jsonl");
    FILE *f = fopen(prompts, "w");
    fprintf(f, "{\"id\":\"x1\",\"session\":\"inc-7\",\"text\":\"WTG-12  Bearing TEMP 92C\"}\n");
    fclose(f);
    kcat_produce_lines(&r, TOPIC_PROMPTS, prompts, false);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);

    tail_open(&tail, r.decisions);
    char *line = NULL;
    for (long long end = harness_now_ms() + 60000; !line && harness_now_ms() < end;)
        if (!(line = tail_next(&tail))) usleep(20000);
    cr_assert_not_null(line, "no decision within 60 s");

    char *tab = strchr(line, '\t');
    cr_assert_not_null(tab);
    cr_expect(strstr(line, "promptd-source=" TOPIC_PROMPTS "/"), "headers: %s", line);
    json_t *d = json_loads(tab + 1, 0, NULL);
    cr_assert_not_null(d, "decision is not JSON: %s", tab + 1);
    cr_expect_str_eq(json_string_value(json_object_get(d, "id")), "x1");
    cr_expect_str_eq(json_string_value(json_object_get(d, "session")), "inc-7");
    const char *tpl = json_string_value(json_object_get(d, "template"));
    const char *known[] = {"triage", "root_cause", "runbook", "escalation_summary"};
    bool found = false;
    for (int i = 0; tpl && i < 4; i++) found |= !strcmp(tpl, known[i]);
    cr_expect(found, "template %s is not one of the alarm pack's", tpl ? tpl : "(none)");
    /* Eligible here: triage, root cause, escalation (a session); runbook needs equipment.
     * A fresh policy is close to uniform, so that it explores them all. */
    cr_expect_float_eq(json_number_value(json_object_get(d, "p")), 1.0 / 3, 0.02);
    cr_expect(strstr(json_string_value(json_object_get(d, "prompt")), "WTG-12  Bearing TEMP 92C"),
              "the rendered prompt lost the alarm text");
    cr_expect_str_eq(json_string_value(json_object_get(d, "pack")), "alarm");
    cr_expect_eq(json_string_length(json_object_get(d, "script_version")), 16);
    cr_expect_eq(json_integer_value(json_object_get(d, "policy_version")), 0);
    json_decref(d);
    tail_close(&tail);
    run_fini(&r);
}

/* --- dead letters --- */

static const char *const bad_kinds[] = {"invalid_json", "invalid_utf8", "missing_id",
                                        "missing_text", "too_large"};

/* Writes 20 malformed messages of each kind, each tagged bad-<kind>-<i>, between good
 * ones. */
static void write_malformed(const char *path) {
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 20; i++) {
        fprintf(f, "{\"id\":\"good-%d\",\"text\":\"UPS-%d on battery\"}\n", i, i);
        fprintf(f, "{\"id\":\"bad-invalid_json-%d\",\"text\":\"unterminated\n", i);
        fprintf(f, "{\"id\":\"bad-invalid_utf8-%d\",\"text\":\"temp \xff\xfe high\"}\n", i);
        fprintf(f, "{\"tag\":\"bad-missing_id-%d\",\"text\":\"no id here\"}\n", i);
        fprintf(f, "{\"id\":\"bad-missing_text-%d\",\"body\":\"wrong field\"}\n", i);
        fprintf(f, "{\"id\":\"bad-too_large-%d\",\"text\":\"", i);
        for (int j = 0; j < 300; j++) fputs("overheat ", f);
        fputs("\"}\n", f);
    }
    fclose(f);
}

static int kind_index(const char *reason) {
    for (int k = 0; k < 5; k++)
        if (reason && !strcmp(reason, bad_kinds[k])) return k;
    return -1;
}

/* The tag bad-<kind>-<i> of a dead letter, from its payload (or base64 payload). */
static bool payload_has_tag(json_t *dl, const char *kind) {
    const char *payload = json_string_value(json_object_get(dl, "payload"));
    const char *b64 = json_string_value(json_object_get(dl, "payload_base64"));
    char want[64];
    snprintf(want, sizeof want, "bad-%s-", kind);
    if (!strcmp(kind, "missing_id")) snprintf(want, sizeof want, "bad-missing_id-");
    if (payload) return strstr(payload, want) != NULL;
    if (!b64) return false;

    /* Decode base64 just far enough to look for the tag. */
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(b64), n = 0;
    char *raw = calloc(len, 1);
    unsigned v = 0, bits = 0;
    for (size_t i = 0; i < len && b64[i] != '='; i++) {
        v = v << 6 | (unsigned)(strchr(alphabet, b64[i]) - alphabet);
        if ((bits += 6) >= 8) raw[n++] = (char)(v >> (bits -= 8));
    }
    bool found = memmem(raw, n, want, strlen(want)) != NULL;
    free(raw);
    return found;
}

Test(stream, malformed_messages_become_dead_letters_with_reasons, .timeout = 180) {
    Run r;
    char prompts[512], dead[512];
    Proc dead_consumer;
    Tail tail;
    int per_kind[5] = {0}, tagged = 0, with_source = 0, total = 0;
    run_init(&r);
    start_promptd(&r, (const char *const[]){"prompt.max_bytes=1kb", NULL});

    harness_path(prompts, sizeof prompts, r.dir, "malformed.jsonl");
    harness_path(dead, sizeof dead, r.dir, "dead.txt");
    write_malformed(prompts);
    kcat_produce_lines(&r, TOPIC_PROMPTS, prompts, false);
    kcat_follow(&r, &dead_consumer, TOPIC_DEAD, dead);

    tail_open(&tail, dead);
    for (long long end = harness_now_ms() + 90000; total < 100 && harness_now_ms() < end;) {
        char *line = tail_next(&tail);
        if (!line) {
            usleep(20000);
            continue;
        }
        char *tab = strchr(line, '\t');
        json_t *dl = tab ? json_loads(tab + 1, 0, NULL) : NULL;
        cr_assert_not_null(dl, "dead letter is not JSON: %s", line);
        total++;
        int k = kind_index(json_string_value(json_object_get(dl, "reason")));
        cr_expect_geq(k, 0, "unexpected reason in %s", tab + 1);
        if (k >= 0) {
            per_kind[k]++;
            tagged += payload_has_tag(dl, bad_kinds[k]);
        }
        with_source += json_is_string(json_object_get(dl, "topic")) &&
                       json_is_integer(json_object_get(dl, "partition")) &&
                       json_is_integer(json_object_get(dl, "offset")) &&
                       json_string_length(json_object_get(dl, "error")) > 10;
        json_decref(dl);
    }

    cr_expect_eq(total, 100, "%d dead letters, expected 100", total);
    for (int k = 0; k < 5; k++)
        cr_expect_eq(per_kind[k], 20, "%d dead letters for %s, expected 20", per_kind[k],
                     bad_kinds[k]);
    cr_expect_eq(tagged, 100, "only %d dead letters carry their original payload", tagged);
    cr_expect_eq(with_source, 100, "only %d dead letters name topic, partition, offset, error",
                 with_source);

    /* The good prompts among them were all decided: bad input never stops the stream. */
    Seen seen;
    Tail dtail;
    seen_init(&seen, 20);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    tail_open(&dtail, r.decisions);
    seen_collect(&seen, &dtail, "good-", 20, 30000);
    cr_expect_eq(seen.unique, 20, "%d of 20 good prompts decided", seen.unique);

    proc_stop(&dead_consumer);
    tail_close(&tail);
    tail_close(&dtail);
    seen_free(&seen);
    run_fini(&r);
}

/* --- a corpus of 10,000 malformed messages --- */

#define CORPUS_BAD  10000
#define CORPUS_GOOD 500

/* A valid prompt's JSON with seeded words, for the mutations below to break. */
static int valid_prompt(char *buf, size_t len, Rng *rng, int i) {
    static const char *const words[] = {"gearbox", "bearing", "temp", "high", "UPS",    "battery",
                                        "风机",    "告警",    "CRAC", "trip", "WTG-12", "92C"};
    int n = snprintf(buf, len, "{\"id\":\"m-%d\",\"text\":\"", i);
    for (int w = 0, count = 1 + (int)rng_below(rng, 8); w < count; w++)
        n += snprintf(buf + n, len - (size_t)n, "%s%s", w ? " " : "", words[rng_below(rng, 12)]);
    return n + snprintf(buf + n, len - (size_t)n, "\"}");
}

/* Writes one malformed message of kind k (seeded variations of each), without newline. */
static void write_bad(FILE *f, Rng *rng, int k, int i) {
    char ok[512];
    int n = valid_prompt(ok, sizeof ok, rng, i);
    /* (An integer id is valid: ids are strings or integers.) */
    static const char *const not_strings[] = {"-1.5e300", "null",      "true",
                                              "[1,2]",    "{\"a\":1}", "0.5"};
    static const char *const not_objects[] = {
        "[]", "[{\"id\":\"x\",\"text\":\"y\"}]", "\"text\"", "12345", "null", "false"};
    switch (k) {
    case 0: /* truncated: a prefix of an object never closes it */
        fwrite(ok, 1, 1 + rng_below(rng, (uint32_t)n - 2), f);
        break;
    case 1: { /* a byte no UTF-8 text contains, inside the text */
        static const unsigned char bad[] = {0x80, 0xbf, 0xc0, 0xc1, 0xf5, 0xff, 0xfe};
        int at = (int)(strstr(ok, "\"text\":\"") - ok) + 8;
        fwrite(ok, 1, (size_t)at, f);
        fputc(bad[rng_below(rng, sizeof bad)], f);
        fputs(ok + at, f);
        break;
    }
    case 2: /* an id that is not a non-empty string */
        fprintf(f, "{\"id\":%s,\"text\":\"UPS on battery\"}", not_strings[rng_below(rng, 6)]);
        break;
    case 3: /* a text that is not a string, or none */
        if (rng_below(rng, 4) == 0)
            fprintf(f, "{\"id\":\"m-%d\",\"body\":\"UPS on battery\"}", i);
        else
            fprintf(f, "{\"id\":\"m-%d\",\"text\":%s}", i, not_strings[rng_below(rng, 6)]);
        break;
    case 4: /* not an object at all */ fputs(not_objects[rng_below(rng, 6)], f); break;
    case 5: /* a raw control character inside a string */
        ok[12 + rng_below(rng, (uint32_t)n - 14)] = (char)(1 + rng_below(rng, 9));
        fputs(ok, f);
        break;
    case 6: /* trailing bytes after the object */
        fprintf(f, "%s%s", ok, rng_below(rng, 2) ? " garbage" : "}");
        break;
    default: /* over prompt.max_bytes (1 KB here) */
        fprintf(f, "{\"id\":\"m-%d\",\"text\":\"", i);
        for (int j = 0, words = 210 + (int)rng_below(rng, 400); j < words; j++) fputs("trip ", f);
        fputs("\"}", f);
    }
}

/* Every one of 10,000 malformed messages of eight kinds, with seeded variations, becomes
 * a dead letter naming its offset, its reason and the parser's message; the good prompts
 * between them are all decided. */
Test(stream, a_corpus_of_10000_malformed_messages_all_become_dead_letters, .timeout = 240) {
    Run r;
    char prompts[512], dead[512];
    Proc dead_consumer;
    Tail tail;
    Rng rng;
    rng_seed(&rng, 20261203);
    run_init(&r);
    start_promptd(&r, (const char *const[]){"prompt.max_bytes=1kb", NULL});

    harness_path(prompts, sizeof prompts, r.dir, "corpus.jsonl");
    FILE *f = fopen(prompts, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < CORPUS_BAD; i++) {
        if (i % (CORPUS_BAD / CORPUS_GOOD) == 0)
            fprintf(f, "{\"id\":\"good-%d\",\"text\":\"WTG-%d gearbox trip\"}\n",
                    i / (CORPUS_BAD / CORPUS_GOOD), i);
        write_bad(f, &rng, i % 8, i);
        fputc('\n', f);
    }
    fclose(f);
    kcat_produce_lines(&r, TOPIC_PROMPTS, prompts, false);

    harness_path(dead, sizeof dead, r.dir, "dead.txt");
    kcat_follow(&r, &dead_consumer, TOPIC_DEAD, dead);
    tail_open(&tail, dead);
    int total = 0, named = 0, ok_reason = 0;
    /* Dead letters by input partition and offset (keyless messages spread over them). */
    size_t per_partition = CORPUS_BAD + CORPUS_GOOD + 1;
    bool *seen = calloc(64 * per_partition, sizeof *seen);
    int distinct = 0;
    for (long long end = harness_now_ms() + 150000; total < CORPUS_BAD && harness_now_ms() < end;) {
        char *line = tail_next(&tail);
        if (!line) {
            usleep(20000);
            continue;
        }
        char *tab = strchr(line, '\t');
        json_t *dl = tab ? json_loads(tab + 1, 0, NULL) : NULL;
        cr_assert_not_null(dl, "dead letter is not JSON: %s", line);
        total++;
        const char *reason = json_string_value(json_object_get(dl, "reason"));
        ok_reason += reason && strcmp(reason, "ok") && strcmp(reason, "unknown");
        named += json_string_length(json_object_get(dl, "error")) > 5;
        json_int_t partition = json_integer_value(json_object_get(dl, "partition"));
        json_int_t offset = json_integer_value(json_object_get(dl, "offset"));
        size_t at = (size_t)partition * per_partition + (size_t)offset;
        if (partition >= 0 && partition < 64 && offset >= 0 && (size_t)offset < per_partition &&
            !seen[at]) {
            seen[at] = true;
            distinct++;
        }
        json_decref(dl);
    }
    cr_expect_eq(total, CORPUS_BAD, "%d dead letters for %d malformed messages", total, CORPUS_BAD);
    cr_expect_eq(distinct, CORPUS_BAD, "%d distinct offsets dead-lettered", distinct);
    cr_expect_eq(ok_reason, total, "%d of %d dead letters with a reason", ok_reason, total);
    cr_expect_eq(named, total, "%d of %d dead letters with the error", named, total);

    Seen good;
    Tail dtail;
    seen_init(&good, CORPUS_GOOD);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    tail_open(&dtail, r.decisions);
    seen_collect(&good, &dtail, "good-", CORPUS_GOOD, 60000);
    cr_expect_eq(good.unique, CORPUS_GOOD, "%d of %d good prompts decided", good.unique,
                 CORPUS_GOOD);
    cr_expect_eq(proc_wait(&r.promptd, 0), -1, "promptd stopped during the corpus");

    free(seen);
    proc_stop(&dead_consumer);
    tail_close(&tail);
    tail_close(&dtail);
    seen_free(&good);
    run_fini(&r);
}

/* --- broker faults --- */

/* Kafka API keys, for the mock cluster's error injection. */
enum { API_PRODUCE = 0, API_FETCH = 1, API_OFFSET_COMMIT = 8 };

/* Waits until at least `unique` ids are decided (or 60 s pass): faults land mid-stream. */
static void decided_at_least(Seen *seen, Tail *tail, const char *prefix, int unique) {
    seen_collect(seen, tail, prefix, unique, 60000);
    cr_assert_geq(seen->unique, unique, "the stream stalled at %d decisions", seen->unique);
}

/* While a stream flows: produce, fetch and commit errors, a leader change, and a broker
 * going down and coming back. Every prompt still gets a decision, duplicates name their
 * input, promptd exits cleanly, and it does not log an error per failed request. */
Test(stream, broker_faults_lose_nothing, .timeout = 300) {
    Run r;
    char prompts[512];
    Seen seen;
    Tail tail;
    Proc producer;
    const int total = 30000;
    run_init(&r);
    host_broker(&r, 4);
    rd_kafka_mock_cluster_t *mc = mockbroker_cluster(r.broker);
    /* The mock cluster now and then leaves requests unanswered after injected fetch
     * errors (librdkafka 2.0.2; seen as Fetch, Produce and FindCoordinator requests in
     * flight for 60 s on one broker, then a disconnect). A shorter socket timeout makes
     * promptd drop such a connection after 10 s.
     * And the mock checks the idempotent producer's sequence numbers only for
     * transactional producers. A broker refuses a batch that leaves a gap, so librdkafka
     * takes an acknowledged later batch as proof that an earlier, timed-out one was
     * written; the mock acknowledges past the gap. In one ASan run promptd had all
     * 30,000 decisions acknowledged (unacked=0, produce_failures=0) while the mock's
     * partition lacked 83 consecutive ones, and a ProduceRequest to its leader had gone
     * unanswered. With one request in flight per connection, nothing is sent past a
     * stuck request. */
    start_promptd(
        &r, (const char *const[]){"kafka.consumer.socket.timeout.ms=10000",
                                  "kafka.producer.socket.timeout.ms=10000",
                                  "kafka.producer.max.in.flight.requests.per.connection=1", NULL});

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "f-", total), 0);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    Feeder *feeder = kcat_stream(&r, &producer, TOPIC_PROMPTS, prompts, 2500);
    seen_init(&seen, total);
    tail_open(&tail, r.decisions);

    decided_at_least(&seen, &tail, "f-", total / 10);
    rd_kafka_mock_push_request_errors(
        mc, API_PRODUCE, 4, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE);

    decided_at_least(&seen, &tail, "f-", total / 5);
    /* Fetch errors hit whichever client fetches next, and kcat's own consumer, hit by
     * them, stopped fetching for good in about one run of three (librdkafka 2.0.2's
     * consumer without a group). So kcat is stopped while they are injected, and follows
     * again (from the beginning, into a second file) once promptd has taken them: its
     * warning for the timed-out fetch says so. */
    char again[600];
    proc_stop(&r.consumer);
    tail_close(&tail);
    rd_kafka_mock_push_request_errors(mc, API_FETCH, 3, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                      RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                                      RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
    cr_expect_eq(harness_wait_text(r.log, "consumer: Broker: Request timed out", 30000), 0,
                 "promptd did not take the fetch errors");
    harness_path(again, sizeof again, r.dir, "decisions-again.txt");
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, again);
    tail_open(&tail, again);

    decided_at_least(&seen, &tail, "f-", total / 4);
    rd_kafka_mock_push_request_errors(
        mc, API_OFFSET_COMMIT, 3, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_COORDINATOR);

    decided_at_least(&seen, &tail, "f-", total * 3 / 10);
    for (int p = 0; p < 4; p++) {
        rd_kafka_mock_partition_set_leader(mc, TOPIC_PROMPTS, p, 1 + (p + 1) % 3);
        rd_kafka_mock_partition_set_leader(mc, TOPIC_DECISIONS, p, 1 + (p + 2) % 3);
    }

    decided_at_least(&seen, &tail, "f-", total * 2 / 5);
    rd_kafka_mock_broker_set_down(mc, 2);
    usleep(3000 * 1000);
    rd_kafka_mock_broker_set_up(mc, 2);

    feeder_join(feeder);
    cr_expect_eq(proc_wait(&producer, 60000), 0, "kcat could not produce the stream");
    seen_collect(&seen, &tail, "f-", total, 150000);
    /* The followers are the test's instruments, and the mock's faults hit them too: one
     * stalls (above), or reads a partition short after a rebalance. A decision any reader
     * saw is in the topic, so the topic is read afresh, up to three times, until every
     * id is accounted for; what no reader saw is named with its prompt's place. */
    for (int round = 0; round < 3 && seen.unique < total; round++) {
        cr_log_warn("broker faults: the readers saw %d of %d ids; reading the topic afresh",
                    seen.unique, total);
        seen_read_topic(&r, &seen, TOPIC_DECISIONS, "f-", "%h\t%s\n", round);
    }
    if (seen.unique < total) seen_report_missing(&r, &seen, "f-");
    cr_log_info("broker faults: %d of %d decided", seen.unique, total);
    cr_expect_eq(seen.unique, total, "%d of %d ids got no decision", total - seen.unique, total);
    int written_twice = seen.mismatched_source ? seen_inputs_written_twice(&r, &seen) : 0;
    if (written_twice)
        cr_log_warn("broker faults: %d prompts were written twice by the test's producer (a "
                    "timed-out request sent again), and promptd decided each copy",
                    written_twice);
    cr_expect_eq(seen.mismatched_source - written_twice, 0,
                 "%d duplicates name another input (%d were prompts written twice)",
                 seen.mismatched_source, written_twice);
    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0);

    /* Errors are logged per episode, not per failed request or message. */
    size_t len = 0;
    char *log = harness_read_file(r.log, &len);
    cr_assert_not_null(log);
    int loud = 0;
    for (char *line = log; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        loud += line[0] == '<' && line[1] >= '0' && line[1] <= '4';
    cr_log_info("broker faults: %d lines at warning or above", loud);
    cr_expect_leq(loud, 60, "%d lines at warning or above for a handful of faults", loud);
    free(log);
    tail_close(&tail);
    seen_free(&seen);
    run_fini(&r);
}

/* --- crashes and shutdown --- */

/* A stream flows at 10,000 prompts/s; promptd is killed while it serves it. */
Test(stream, kill_9_mid_stream_loses_nothing, .timeout = 300) {
    Run r;
    char prompts[512];
    Seen seen;
    Tail tail;
    Proc producer;
    const int total = 50000;
    run_init(&r);
    host_broker(&r, 8);
    start_promptd(&r, NULL);

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "k-", total), 0);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    Feeder *feeder = kcat_stream(&r, &producer, TOPIC_PROMPTS, prompts, 10000);

    seen_init(&seen, total);
    tail_open(&tail, r.decisions);
    seen_collect(&seen, &tail, "k-", total / 4, 90000);
    cr_assert_geq(seen.unique, total / 4, "only %d decisions before the kill", seen.unique);
    int before = seen.unique;
    proc_signal(&r.promptd, SIGKILL);
    cr_assert_lt(before, total - 10000, "the stream was nearly over at the kill");

    start_promptd(&r, NULL);
    feeder_join(feeder);
    cr_expect_eq(proc_wait(&producer, 30000), 0, "kcat could not produce the stream");
    seen_collect(&seen, &tail, "k-", total, 120000);
    cr_log_info("kill -9 after %d of %d decisions: %d decided after restart, %d duplicates", before,
                total, seen.unique, seen.duplicates);
    cr_expect_eq(seen.unique, total, "%d of %d ids got no decision", total - seen.unique, total);
    cr_expect_eq(seen.mismatched_source, 0, "%d duplicates name another input",
                 seen.mismatched_source);
    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0);
    tail_close(&tail);
    run_fini(&r);
}

/* --- twenty crashes with learning --- */

/* The newest checkpoint in dir: its policy version, and its CRC-32 as computed here over
 * everything before the last 4 bytes, which must equal the CRC stored there. Returns
 * false when dir holds none. */
static bool newest_checkpoint(const char *dir, unsigned long long *version, uint32_t *crc) {
    char newest[256] = "", path[1024];
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        bool named = !strncmp(e->d_name, "policy-", 7) && len > 5 &&
                     !strcmp(e->d_name + len - 5, ".ckpt"); /* not a temporary file */
        if (named && strcmp(e->d_name, newest) > 0)
            snprintf(newest, sizeof newest, "%s", e->d_name);
    }
    if (d) closedir(d);
    if (!newest[0]) return false;

    snprintf(path, sizeof path, "%s/%s", dir, newest);
    size_t len = 0;
    unsigned char *data = (unsigned char *)harness_read_file(path, &len);
    cr_assert(data && len > 40, "cannot read %s", path);
    uint32_t stored = (uint32_t)data[len - 4] | (uint32_t)data[len - 3] << 8 |
                      (uint32_t)data[len - 2] << 16 | (uint32_t)data[len - 1] << 24;
    *crc = (uint32_t)crc32(crc32(0, NULL, 0), data, (uInt)(len - 4));
    cr_assert_eq(*crc, stored, "%s: a complete file whose CRC does not match", path);
    *version = 0;
    for (int i = 7; i >= 0; i--) *version = *version << 8 | data[8 + i];
    free(data);
    return true;
}

/* Waits for a line containing needle in the part of the log written after offset; returns
 * a copy of the line, or NULL after timeout_ms. */
static char *log_line_after(const char *log, size_t offset, const char *needle, int timeout_ms) {
    for (long long end = harness_now_ms() + timeout_ms; harness_now_ms() < end; usleep(50000)) {
        size_t len = 0;
        char *text = harness_read_file(log, &len);
        char *hit = text && len > offset ? strstr(text + offset, needle) : NULL;
        char *line = NULL;
        if (hit) {
            while (hit > text + offset && hit[-1] != '\n') hit--;
            line = strndup(hit, strcspn(hit, "\n"));
        }
        free(text);
        if (line) return line;
    }
    return NULL;
}

static size_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? 0 : (size_t)st.st_size;
}

/* promptd is killed with SIGKILL at 20 random moments of a 200,000-prompt stream whose
 * rewards come back as the decisions arrive (one reward event per id, through a real
 * redis-server holding the journal), and restarted each time. Every id is decided;
 * duplicates stay within the in-flight bound; each restart serves exactly the newest
 * checkpoint (by CRC); and no reward is learned twice. */
Test(stream, twenty_kill_9_in_a_200000_prompt_stream_lose_nothing_and_learn_once, .timeout = 600) {
    enum { TOTAL = 200000, KILLS = 20, INFLIGHT = 2000 };
    Run r;
    RedisServer redis;
    char prompts[512], url[300], redis_set[400], state[600], inflight[64];
    Seen seen;
    Tail tail;
    Proc rewarder;
    Rng rng;
    int kill_at[KILLS], dups_after[KILLS + 1] = {0}, restored_right = 0;
    long long served_from = 0, unique_from = 0;
    double peak_rate = 0; /* decisions per second between a restart and the next kill */
    run_init(&r);
    host_broker(&r, 16);
    cr_assert_eq(rserver_start(&redis, NULL), 0, "redis-server did not start");
    snprintf(redis_set, sizeof redis_set, "redis.url=%s", rserver_url(&redis, 0, url, sizeof url));
    snprintf(state, sizeof state, "%s/state", r.dir);
    snprintf(inflight, sizeof inflight, "kafka.max_inflight=%d", INFLIGHT);
    /* Redis at its default 50 ms command timeout: under a sanitizer on a loaded machine
     * it is now and then taken for down, and reward events must then wait rather than
     * be joined in memory, where a crash would forget them (journal.h). */
    const char *const sets[] = {redis_set,
                                inflight,
                                "reward.window=2m",
                                "learner.checkpoint_every=0",
                                "learner.batch_size=512",
                                "log.debug=learner",
                                "kafka.consumer.session.timeout.ms=4000",
                                "kafka.consumer.heartbeat.interval.ms=400",
                                NULL};

    /* The moments: one at a random point of each of 20 consecutive slices of the stream. */
    rng_seed(&rng, 20261204);
    for (int k = 0; k < KILLS; k++)
        kill_at[k] = TOTAL / (KILLS + 2) * (k + 1) + (int)rng_below(&rng, TOTAL / (KILLS + 2));

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "c-", TOTAL), 0);
    start_promptd(&r, sets);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    kcat_produce(&r, TOPIC_PROMPTS, prompts);

    /* The rewarder: one reward event per id, as its first decision arrives. */
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    char *argv[] = {"kcat", "-P", "-b", r.bootstrap, "-t", TOPIC_REWARDS, "-K\t", NULL};
    cr_assert_eq(proc_start_fd(&rewarder, argv, fds[0], NULL, NULL), 0);
    close(fds[0]);
    FILE *rewards = fdopen(fds[1], "w");
    cr_assert_not_null(rewards);

    seen_init(&seen, TOTAL);
    tail_open(&tail, r.decisions);
    int kills = 0;
    long long deadline = harness_now_ms() + 420000;
    while (seen.unique < TOTAL && harness_now_ms() < deadline) {
        char *line = tail_next(&tail);
        if (!line) {
            fflush(rewards);
            usleep(20000);
            continue;
        }
        int fresh = seen_add(&seen, "c-", line);
        if (fresh >= 0)
            fprintf(rewards, "c-%d\t{\"id\":\"c-%d\",\"resolved\":%s,\"rating\":%d}\n", fresh,
                    fresh, fresh % 3 ? "true" : "false", 1 + fresh % 5);
        if (kills == KILLS || seen.unique < kill_at[kills]) continue;

        proc_signal(&r.promptd, SIGKILL);
        dups_after[kills] = seen.duplicates;
        if (served_from) {
            double rate = 1000.0 * (seen.unique - unique_from) / (harness_now_ms() - served_from);
            if (rate > peak_rate) peak_rate = rate;
        }
        unsigned long long version = 0;
        uint32_t crc = 0;
        bool saved = newest_checkpoint(state, &version, &crc);
        size_t offset = file_size(r.log);
        start_promptd(&r, sets);
        char *restored =
            log_line_after(r.log, offset, saved ? "restored policy" : "fresh policy", 30000);
        char want[800];
        snprintf(want, sizeof want, "restored policy version %llu from %s (crc32 %08x)", version,
                 state, crc);
        bool right = restored && (!saved || strstr(restored, want));
        restored_right += right;
        cr_expect(right, "kill %d: the newest checkpoint is \"%s\"; the restart logged \"%s\"",
                  kills + 1, saved ? want : "(none)", restored ? restored : "(nothing)");
        free(restored);
        kills++;
        served_from = harness_now_ms();
        unique_from = seen.unique;
    }
    dups_after[kills] = seen.duplicates;
    fclose(rewards);
    cr_expect_eq(proc_wait(&rewarder, 60000), 0, "kcat could not produce the rewards");
    cr_expect_eq(kills, KILLS, "the stream ended after %d kills", kills);
    cr_expect_eq(seen.unique, TOTAL, "%d of %d ids got no decision", TOTAL - seen.unique, TOTAL);
    cr_expect_eq(seen.mismatched_source, 0, "%d duplicates name another input",
                 seen.mismatched_source);
    cr_expect_eq(restored_right, KILLS, "%d restarts did not serve the newest checkpoint",
                 KILLS - restored_right);

    /* Each kill re-reads at most what was in flight: decisions awaiting acknowledgement
     * (kafka.max_inflight), plus those acknowledged but not yet committed: commits run
     * every 250 ms, so at the peak rate, half a second's worth covers the commit's round
     * trip and the batch being served. */
    int bound = INFLIGHT + (int)(peak_rate * 0.5), worst = 0;
    for (int k = 0; k < KILLS; k++) {
        int dups = dups_after[k + 1] - dups_after[k];
        if (dups > worst) worst = dups;
        cr_log_info("kill %d at %d decided: %d duplicates after it", k + 1, kill_at[k], dups);
    }

    /* Let the last rewards be learned: the experience count stops growing. */
    int *learned = calloc(TOTAL, sizeof *learned), lines = -1, settled = 0;
    while (settled < 3 && harness_now_ms() < deadline + 60000) {
        int now = harness_count_experiences(r.log, "c-", learned, TOTAL);
        settled = now == lines ? settled + 1 : 0;
        lines = now;
        usleep(1000000);
    }
    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0);
    lines = harness_count_experiences(r.log, "c-", learned, TOTAL);
    int twice = 0, once = 0;
    for (int i = 0; i < TOTAL; i++) {
        once += learned[i] == 1;
        if (learned[i] > 1 && twice++ < 5)
            cr_log_error("reward of c-%d learned %d times", i, learned[i]);
    }
    cr_log_info("%d kills in %d prompts: every id decided %s; %d duplicates (at most %d after one "
                "kill, bound %d); %d of %d rewards learned once, %d twice; %d restarts served "
                "the newest checkpoint",
                kills, TOTAL, seen.unique == TOTAL ? "yes" : "NO", seen.duplicates, worst, bound,
                once, TOTAL, twice, restored_right);
    cr_expect_eq(twice, 0, "%d rewards were learned twice", twice);
    cr_expect_leq(worst, bound, "%d duplicates after one kill (peak %.0f decisions/s)", worst,
                  peak_rate);
    free(learned);
    tail_close(&tail);
    seen_free(&seen);
    rserver_stop(&redis);
    run_fini(&r);
}

/* SIGTERM drains and commits: a restart re-reads nothing, so there are no duplicates. */
Test(stream, sigterm_drains_and_commits_without_duplicates, .timeout = 300) {
    Run r;
    char prompts[512];
    Seen seen;
    Tail tail;
    Proc producer;
    const int total = 20000;
    run_init(&r);
    host_broker(&r, 8);
    start_promptd(&r, NULL);

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "t-", total), 0);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    Feeder *feeder = kcat_stream(&r, &producer, TOPIC_PROMPTS, prompts, 5000);

    seen_init(&seen, total);
    tail_open(&tail, r.decisions);
    seen_collect(&seen, &tail, "t-", total / 4, 90000);
    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0, "promptd did not exit 0 on SIGTERM");
    cr_assert_lt(seen.unique, total - 5000, "the stream was nearly over at SIGTERM");

    start_promptd(&r, NULL);
    feeder_join(feeder);
    cr_expect_eq(proc_wait(&producer, 30000), 0, "kcat could not produce the stream");
    seen_collect(&seen, &tail, "t-", total, 120000);
    usleep(500000); /* a late duplicate would arrive about now */
    seen_collect(&seen, &tail, "t-", total + 1, 500);
    cr_expect_eq(seen.unique, total, "%d ids got no decision", total - seen.unique);
    cr_expect_eq(seen.duplicates, 0, "%d duplicates after a clean stop", seen.duplicates);
    tail_close(&tail);
    run_fini(&r);
}

/* A slow broker fills the in-flight window: the input is paused, then resumed, and every
 * prompt is still decided. */
Test(stream, slow_acknowledgements_pause_and_resume_input, .timeout = 180) {
    Run r;
    char prompts[512];
    Seen seen;
    Tail tail;
    const int total = 1000;
    run_init(&r);
    host_broker(&r, 4);
    for (int b = 1; b <= 3; b++) rd_kafka_mock_broker_set_rtt(mockbroker_cluster(r.broker), b, 30);
    start_promptd(&r, (const char *const[]){"kafka.max_inflight=40", "kafka.batch.size=20", NULL});

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "b-", total), 0);
    kcat_produce(&r, TOPIC_PROMPTS, prompts);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);

    seen_init(&seen, total);
    tail_open(&tail, r.decisions);
    seen_collect(&seen, &tail, "b-", total, 120000);
    cr_expect_eq(seen.unique, total, "%d ids got no decision", total - seen.unique);

    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0);
    char *log = harness_read_file(r.log, NULL);
    const char *pauses = log ? strstr(log, "pauses=") : NULL;
    cr_assert_not_null(pauses, "no shutdown summary in the log");
    cr_expect_gt(atoi(pauses + 7), 0, "the input was never paused: %.80s", pauses);
    free(log);
    tail_close(&tail);
    run_fini(&r);
}

/* --- reload under load --- */

/* Version k of the live pack: 1 + k % 4 templates, each rendering "v<k>|t<j>|<id>", so
 * that every decision tells which version and template rendered it. Every fifth version
 * from the third on fails to compile, and every fifth from the fifth on fails its
 * load-time render check: both must be refused while the previous version serves. */
static bool version_broken(int k) {
    return k % 5 == 2 || k % 5 == 4;
}

static void write_version(const char *packdir, int k) {
    char path[700], tmp[720];
    snprintf(path, sizeof path, "%s/init.lua", packdir);
    snprintf(tmp, sizeof tmp, "%s/.init.lua.tmp", packdir);
    FILE *f = fopen(tmp, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "local templates = {}\n"
            "for j = 0, %d do\n"
            "  templates[#templates + 1] = { name = 't' .. j, about = 'template ' .. j,\n"
            "    render = function(msg) %s return 'v%d|t' .. j .. '|' .. msg.id end }\n"
            "end\n"
            "return { templates = templates, reward = function() return 0 end } %s\n",
            k % 4, k % 5 == 4 ? "error('broken on purpose')" : "", k,
            k % 5 == 2 ? "this is not Lua" : "");
    fclose(f);
    /* An editor's save: a new file renamed over the old one. */
    cr_assert_eq(rename(tmp, path), 0);
}

/* Flips the live symlink to a new directory holding version k, as configuration
 * management swaps a whole directory. */
static void flip_version(const char *packs, int k) {
    char vdir[600], link_tmp[600], live[600], target[64];
    snprintf(target, sizeof target, "v%d", k);
    snprintf(vdir, sizeof vdir, "%s/%s", packs, target);
    snprintf(link_tmp, sizeof link_tmp, "%s/live.new", packs);
    snprintf(live, sizeof live, "%s/live", packs);
    mkdir(vdir, 0755);
    write_version(vdir, k);
    unlink(link_tmp);
    cr_assert_eq(symlink(target, link_tmp), 0);
    cr_assert_eq(rename(link_tmp, live), 0);
}

Test(stream, pack_rewritten_50_times_under_load, .timeout = 300) {
    Run r;
    char prompts[512], packs[512], live[600], setpack[700];
    Proc producer;
    Tail tail;
    const int total = 20000, versions = 50;
    int rendered_by[50] = {0}, bad = 0, broken_written = 0;
    run_init(&r);

    harness_path(packs, sizeof packs, r.dir, "packs");
    mkdir(packs, 0755);
    flip_version(packs, 0);
    snprintf(live, sizeof live, "%s/live", packs);
    snprintf(setpack, sizeof setpack, "policy.pack=%s", live);
    start_promptd(&r, (const char *const[]){setpack, "policy.lib=lua", NULL});

    harness_path(prompts, sizeof prompts, r.dir, "prompts.jsonl");
    cr_assert_eq(harness_write_prompts(prompts, "r-", total), 0);
    kcat_follow(&r, &r.consumer, TOPIC_DECISIONS, r.decisions);
    tail_open(&tail, r.decisions);
    cr_assert_eq(harness_wait_text(r.log, "assigned", 30000), 0, "promptd never got partitions");

    /* Rewrite the pack every 120 ms while the stream flows (for about 6.7 s). */
    Feeder *feeder = kcat_stream(&r, &producer, TOPIC_PROMPTS, prompts, 3000);
    for (int k = 1; k < versions; k++) {
        if (k % 2)
            flip_version(packs, k);
        else
            write_version(live, k);
        broken_written += version_broken(k);
        usleep(120000);
    }
    feeder_join(feeder);
    cr_expect_eq(proc_wait(&producer, 30000), 0);

    /* Every decision was rendered by a version that passed its checks, by one of that
     * version's own templates, for its own prompt. */
    long long deadline = harness_now_ms() + 120000;
    int decided = 0;
    char *line;
    while (decided < total && harness_now_ms() < deadline) {
        if (!(line = tail_next(&tail))) {
            usleep(20000);
            continue;
        }
        json_t *d = json_loads(strchr(line, '\t') + 1, 0, NULL);
        const char *id = json_string_value(json_object_get(d, "id"));
        const char *text = json_string_value(json_object_get(d, "prompt"));
        const char *tpl = json_string_value(json_object_get(d, "template"));
        int k = -1, j = -1;
        char tail_id[64] = "";
        if (text) sscanf(text, "v%d|t%d|%63s", &k, &j, tail_id);
        bool ok = id && tpl && k >= 0 && k < versions && !version_broken(k) && j >= 0 &&
                  j <= k % 4 && !strcmp(tail_id, id) && atoi(tpl + 1) == j;
        if (!ok && bad++ < 5) cr_log_error("decision not from a valid version: %s", line);
        if (ok) rendered_by[k]++;
        if (id && !strncmp(id, "r-", 2) && ok) decided++;
        json_decref(d);
    }

    int good_seen = 0;
    for (int k = 0; k < versions; k++) good_seen += rendered_by[k] > 0;
    cr_log_info("%d decisions from %d pack versions; %d broken versions written", decided,
                good_seen, broken_written);
    cr_expect_eq(bad, 0, "%d decisions from a broken or foreign version", bad);
    cr_expect_geq(decided, total, "%d of %d prompts got a valid decision", decided, total);
    cr_expect_geq(good_seen, 10, "only %d versions ever served", good_seen);

    cr_expect_eq(exit_of_promptd(&r, SIGTERM), 0);
    cr_expect_eq(harness_wait_text(r.log, "dead_letters=0 ", 1000), 0,
                 "a reload made prompts fail");
    /* Refusals are counted (the log rate-limits their lines). Not necessarily one per
     * broken version: on a loaded machine a version can be replaced before the loader's
     * quiet period ends, and then it is never loaded at all. */
    char *log = harness_read_file(r.log, NULL);
    const char *counted = log ? strstr(log, "pack_refused=") : NULL;
    cr_assert_not_null(counted, "no shutdown summary");
    cr_expect(atoi(counted + 13) >= 1 && atoi(counted + 13) <= broken_written,
              "%d refusals counted for %d broken versions", atoi(counted + 13), broken_written);
    cr_expect_gt(harness_count_text(r.log, "reload refused"), 0, "no refusal was logged");
    free(log);
    tail_close(&tail);
    run_fini(&r);
}
