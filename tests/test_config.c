/* The configuration table and parser: values, bounds, includes, and every error path. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../daemon/config.h"
#include "../daemon/kafka.h"
#include "harness.h"

static Config c;
static ConfigErrors errs;
static const char *dir;

static void setup(void) {
    memset(&errs, 0, sizeof errs);
    config_init(&c);
    dir = harness_tmpdir();
}

static void teardown(void) {
    config_free(&c);
    harness_cleanup();
}

TestSuite(config, .init = setup, .fini = teardown);

/* Writes text to dir/name and returns the path (static buffer per name slot). */
static const char *write_conf(const char *name, const char *text) {
    static char paths[4][512];
    static int slot;
    char *path = paths[slot++ % 4];
    harness_path(path, 512, dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static int load(const char *text) {
    return config_load(&c, write_conf("promptd.conf", text), &errs);
}

Test(config, defaults_serve_without_a_file) {
    cr_expect_str_eq(c.kafka_brokers, "embedded");
    cr_expect_str_eq(c.topic_prompts, "promptd.prompts");
    cr_expect_eq(c.prompt_max_bytes, 64 * 1024);
    cr_expect_eq(c.batch_wait_ms, 5);
    cr_expect_eq(c.shutdown_timeout_ms, 30000);
    cr_expect_str_eq(config_origin(&c, "kafka.brokers").file, "default");
}

Test(config, reads_typed_values_and_comments) {
    int n = load("# a comment\n"
                 "kafka.brokers kafka1:9092,kafka2:9092   # trailing comment\n"
                 "\n"
                 "prompt.max_bytes 16kb\n"
                 "kafka.batch.wait 1.5s\n"
                 "shutdown.timeout 2m\n"
                 "log.level warning\n"
                 "log.debug kafka, pipeline\n"
                 "kafka.topic.prompts \"alarms.in\"\n");
    cr_assert_eq(n, 0, "%s", errs.text);
    cr_expect_str_eq(c.kafka_brokers, "kafka1:9092,kafka2:9092");
    cr_expect_eq(c.prompt_max_bytes, 16384);
    cr_expect_eq(c.batch_wait_ms, 1500);
    cr_expect_eq(c.shutdown_timeout_ms, 120000);
    cr_expect_eq(c.log_level, 4);
    cr_expect_str_eq(c.log_debug, "kafka, pipeline");
    cr_expect_str_eq(c.topic_prompts, "alarms.in");
    cr_expect_eq(config_origin(&c, "prompt.max_bytes").line, 4);
}

Test(config, sizes_follow_redis_units) {
    cr_assert_eq(load("prompt.max_bytes 2k\n"), 0, "%s", errs.text);
    cr_expect_eq(c.prompt_max_bytes, 2000);
    cr_assert_eq(load("prompt.max_bytes 2KB\n"), 0, "%s", errs.text);
    cr_expect_eq(c.prompt_max_bytes, 2048);
    cr_assert_eq(load("prompt.max_bytes 1mb\n"), 0, "%s", errs.text);
    cr_expect_eq(c.prompt_max_bytes, 1024 * 1024);
}

Test(config, last_value_wins) {
    cr_assert_eq(load("kafka.group.id first\nkafka.group.id second\n"), 0);
    cr_expect_str_eq(c.kafka_group_id, "second");
}

Test(config, quoted_values_keep_hashes_and_escapes) {
    cr_assert_eq(load("kafka.group.id \"a #1 \\\"x\\\"\"  # comment\n"), 0, "%s", errs.text);
    cr_expect_str_eq(c.kafka_group_id, "a #1 \"x\"");
}

Test(config, environment_variables_are_substituted) {
    setenv("PROMPTD_TEST_BROKERS", "k9:9092", 1);
    cr_assert_eq(load("kafka.brokers ${PROMPTD_TEST_BROKERS}\n"), 0, "%s", errs.text);
    cr_expect_str_eq(c.kafka_brokers, "k9:9092");
}

Test(config, include_is_relative_and_globbed) {
    char sub[600];
    snprintf(sub, sizeof sub, "%s/conf.d", dir);
    mkdir(sub, 0755);
    write_conf("conf.d/10-kafka.conf", "kafka.group.id from-include\n");
    write_conf("conf.d/20-log.conf", "log.level debug\n");
    int n = load("kafka.group.id main\ninclude conf.d/*.conf\n");
    cr_assert_eq(n, 0, "%s", errs.text);
    cr_expect_str_eq(c.kafka_group_id, "from-include");
    cr_expect_eq(c.log_level, 7);
    cr_expect(strstr(config_origin(&c, "kafka.group.id").file, "10-kafka.conf"));
}

Test(config, empty_include_glob_is_fine) {
    cr_expect_eq(load("include nothing-here/*.conf\n"), 0, "%s", errs.text);
}

Test(config, passthrough_properties_are_kept) {
    cr_assert_eq(load("kafka.consumer.session.timeout.ms 6000\n"
                      "kafka.producer.linger.ms 1\n"
                      "kafka.producer.linger.ms 2\n"),
                 0);
    cr_assert_eq(c.consumer_props.len, 1);
    cr_expect_str_eq(c.consumer_props.items[0].name, "session.timeout.ms");
    cr_assert_eq(c.producer_props.len, 1);
    cr_expect_str_eq(c.producer_props.items[0].value, "2");
    cr_expect_eq(c.producer_props.items[0].origin.line, 3);
}

/* --- every error path: each names file, line and key --- */

static void expect_error(const char *text, const char *fragment) {
    memset(&errs, 0, sizeof errs);
    int n = load(text);
    cr_expect_gt(n, 0, "no error for: %s", text);
    cr_expect(strstr(errs.text, fragment), "expected '%s' in: %s", fragment, errs.text);
    cr_expect(strstr(errs.text, ".conf:"), "no file:line in: %s", errs.text);
}

Test(config, unknown_key_names_the_closest) {
    expect_error("kafka.borkers x\n", "promptd.conf:1: kafka.borkers: unknown key; did you mean "
                                      "'kafka.brokers'?");
    expect_error("\n\nprompt.maxbytes 5\n", ":3: prompt.maxbytes: unknown key; did you mean "
                                            "'prompt.max_bytes'?");
}

Test(config, bad_numbers_are_refused) {
    expect_error("kafka.batch.size lots\n", "kafka.batch.size: expects a whole number");
    expect_error("kafka.batch.size 0\n", "must be between 1 and 100000, got '0'");
    expect_error("kafka.batch.size 99999999999999999999\n", "expects a whole number");
    expect_error("prompt.max_bytes 64 kb\n", "expects a size");
    expect_error("prompt.max_bytes -5\n", "expects a size");
    expect_error("prompt.max_bytes 1gb\n", "must be between 16 and 16mb");
    expect_error("kafka.batch.wait 5\n", "expects a duration with a unit");
    expect_error("kafka.batch.wait -1s\n", "expects a duration");
    expect_error("kafka.batch.wait 1h\n", "must be between 1ms and 10s");
    expect_error("kafka.batch.wait 0\n", "must be between 1ms and 10s");
    expect_error("log.level loud\n", "log.level: expects one of");
    expect_error("log.debug kafka,nonsense\n", "unknown module 'nonsense'");
}

Test(config, bad_strings_are_refused) {
    expect_error("kafka.topic.prompts has space\n", "kafka.topic.prompts: topic names use only");
    expect_error("kafka.topic.prompts ..\n", "not a valid topic name");
    expect_error("kafka.group.id \"\"\n", "kafka.group.id: must not be empty");
    expect_error("kafka.group.id\n", "kafka.group.id: has no value");
    expect_error("kafka.group.id \"open\n", "unterminated quoted value");
    expect_error("kafka.group.id \"a\" b\n", "unexpected text after the quoted value");
    expect_error("kafka.consumer. 5\n", "names no librdkafka property");
}

Test(config, environment_errors_are_refused) {
    unsetenv("PROMPTD_TEST_UNSET");
    expect_error("kafka.brokers ${PROMPTD_TEST_UNSET}\n",
                 "environment variable PROMPTD_TEST_UNSET is not set");
    expect_error("kafka.brokers ${oops\n", "unterminated or empty ${...}");
}

Test(config, include_errors_are_refused) {
    expect_error("include missing.conf\n", "include: no such file");
    write_conf("loop.conf", "include loop.conf\n");
    expect_error("include loop.conf\n", "include cycle: ");
}

/* Each file of a chain of ten includes the next: distinct files, so only depth stops it. */
Test(config, include_depth_is_limited) {
    for (int i = 0; i < 10; i++) {
        char name[32], text[64];
        snprintf(name, sizeof name, "chain%d.conf", i);
        snprintf(text, sizeof text, "include chain%d.conf\n", i + 1);
        write_conf(name, text);
    }
    write_conf("chain10.conf", "kafka.group.id end\n");
    expect_error("include chain0.conf\n", "nest deeper than 8 levels");
}

/* Found while fuzzing: with only the depth limit, five lines that include their own file
 * re-read it 5^9 times (minutes). A cycle is now refused at once, once per line. */
Test(config, self_including_globs_are_refused_at_once, .timeout = 10) {
    int n = load("include *.conf\ninclude *.conf\ninclude *.conf\ninclude *.conf\n"
                 "include *.conf\n");
    cr_expect_eq(n, 5, "%s", errs.text);
    cr_expect(strstr(errs.text, "include cycle: "), "%s", errs.text);
}

Test(config, missing_file_is_an_error) {
    int n = config_load(&c, "/nonexistent/promptd.conf", &errs);
    cr_expect_eq(n, 1);
    cr_expect(strstr(errs.text, "cannot open /nonexistent/promptd.conf"), "%s", errs.text);
}

Test(config, every_error_is_reported_not_just_the_first) {
    int n = load("a.b 1\nkafka.batch.size 0\nlog.level x\n");
    cr_expect_eq(n, 3, "%d errors: %s", n, errs.text);
}

Test(config, librdkafka_checks_passthrough_properties) {
    cr_assert_eq(load("kafka.consumer.session.timeout.ms banana\n"
                      "kafka.producer.no.such.property 1\n"
                      "kafka.consumer.enable.auto.offset.store true\n"
                      "kafka.producer.linger.ms 2\n"),
                 0);
    int n = kafka_check_config(&c, &errs);
    cr_expect_eq(n, 3, "%d errors: %s", n, errs.text);
    cr_expect(strstr(errs.text, ":1: kafka.consumer.session.timeout.ms: librdkafka refused it"),
              "%s", errs.text);
    cr_expect(strstr(errs.text, ":2: kafka.producer.no.such.property: librdkafka refused it"), "%s",
              errs.text);
    cr_expect(strstr(errs.text, ":3: kafka.consumer.enable.auto.offset.store: is set by promptd"),
              "%s", errs.text);
}

/* --- reload --- */

static int notes;
static char noted[256];
static void note(void *ctx, const char *key) {
    (void)ctx;
    notes++;
    snprintf(noted, sizeof noted, "%s", key);
}

Test(config, reload_applies_reloadable_keys_and_names_the_rest) {
    Config fresh;
    config_init(&fresh);
    ConfigErrors e2 = {0};
    cr_assert_eq(config_load(&fresh,
                             write_conf("new.conf", "log.level debug\n"
                                                    "kafka.batch.size 64\n"
                                                    "kafka.brokers elsewhere:9092\n"),
                             &e2),
                 0);
    notes = 0;
    int applied = config_apply_reload(&c, &fresh, note, NULL);
    cr_expect_eq(applied, 2);
    cr_expect_eq(c.log_level, 7);
    cr_expect_eq(c.batch_size, 64);
    cr_expect_str_eq(c.kafka_brokers, "embedded", "a restart-only key changed live");
    cr_expect_eq(notes, 1);
    cr_expect_str_eq(noted, "kafka.brokers");
    config_free(&fresh);
}

/* --- the documented file --- */

Test(config, shipped_file_is_valid_and_documents_every_key) {
    int n = config_load(&c, "conf/promptd.conf", &errs);
    cr_assert_eq(n, 0, "conf/promptd.conf: %s", errs.text);
    char *text = harness_read_file("conf/promptd.conf", NULL);
    cr_assert_not_null(text);
    for (size_t i = 0; config_key_name(i); i++) {
        char needle[128];
        snprintf(needle, sizeof needle, "\n# %s ", config_key_name(i));
        char needle2[128];
        snprintf(needle2, sizeof needle2, "\n%s ", config_key_name(i));
        cr_expect(strstr(text, needle) || strstr(text, needle2),
                  "conf/promptd.conf does not document %s", config_key_name(i));
    }
    free(text);
}

Test(config, dump_reads_back_identically) {
    cr_assert_eq(load("kafka.group.id g\nprompt.max_bytes 3000\nshutdown.timeout 90s\n"), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_dump(&c, f);
    fclose(f);

    Config again;
    ConfigErrors e2 = {0};
    config_init(&again);
    cr_assert_eq(config_load(&again, write_conf("dump.conf", buf), &e2), 0, "%s", e2.text);
    cr_expect_str_eq(again.kafka_group_id, "g");
    cr_expect_eq(again.prompt_max_bytes, 3000);
    cr_expect_eq(again.shutdown_timeout_ms, 90000);
    config_free(&again);
    free(buf);
}
