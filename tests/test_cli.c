/*
 * The command line as an operator meets it: --check and its exit codes, --version, --help,
 * usage errors, and SIGHUP reload of the configuration while serving.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

static const char *dir;
static char out[512], err[512];

static void setup(void) {
    dir = harness_tmpdir();
    harness_path(out, sizeof out, dir, "stdout");
    harness_path(err, sizeof err, dir, "stderr");
}

static void teardown(void) {
    harness_cleanup();
}

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 60);

/* Runs promptd with args to completion; returns its exit code. */
static int run(const char *const *args) {
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)harness_promptd();
    for (; *args; args++) argv[n++] = (char *)*args;
    argv[n] = NULL;
    Proc p;
    cr_assert_eq(proc_start(&p, argv, NULL, out, err), 0);
    int code = proc_wait(&p, 30000);
    cr_assert_geq(code, 0, "promptd did not exit within 30 s");
    return code;
}

static const char *write_conf(const char *text) {
    static char path[512];
    harness_path(path, sizeof path, dir, "promptd.conf");
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static bool file_has(const char *path, const char *needle) {
    char *text = harness_read_file(path, NULL);
    bool found = text && strstr(text, needle);
    free(text);
    return found;
}

Test(cli, version_and_help_go_to_stdout_and_exit_0) {
    cr_expect_eq(run((const char *[]){"--version", NULL}), 0);
    cr_expect(file_has(out, "promptd "), "no version on stdout");
    cr_expect_eq(run((const char *[]){"--help", NULL}), 0);
    cr_expect(file_has(out, "Usage: promptd"), "no usage on stdout");
    cr_expect_eq(run((const char *[]){"--help-config", NULL}), 0);
    cr_expect(file_has(out, "kafka.brokers (string, default \"embedded\""));
}

Test(cli, usage_errors_exit_64) {
    cr_expect_eq(run((const char *[]){"--no-such-option", NULL}), 64);
    cr_expect_eq(run((const char *[]){"stray-argument", NULL}), 64);
    cr_expect(file_has(err, "unexpected argument 'stray-argument'"));
}

Test(cli, check_accepts_the_shipped_configuration) {
    cr_expect_eq(run((const char *[]){"--check", "--config", "conf/promptd.conf", NULL}), 0);
    cr_expect(file_has(out, "configuration is valid"));
    cr_expect_eq(run((const char *[]){"-t", NULL}), 0, "the embedded defaults must be valid");
}

Test(cli, check_reports_file_line_key_and_exits_78) {
    const char *conf = write_conf("kafka.brokers embedded\n"
                                  "\n"
                                  "kafka.batch.size 0\n"
                                  "kafka.consumer.session.timeout.ms soon\n");
    cr_expect_eq(run((const char *[]){"--check", "--config", conf, NULL}), 78);
    char want[700];
    snprintf(want, sizeof want, "%s:3: kafka.batch.size: must be between 1 and 100000", conf);
    cr_expect(file_has(err, want), "stderr lacks: %s", want);
    snprintf(want, sizeof want, "%s:4: kafka.consumer.session.timeout.ms: librdkafka refused",
             conf);
    cr_expect(file_has(err, want), "stderr lacks: %s", want);
}

Test(cli, check_refuses_a_broken_pack_with_its_file_and_line) {
    char pack[600], init[700];
    snprintf(pack, sizeof pack, "%s/broken", dir);
    mkdir(pack, 0755);
    snprintf(init, sizeof init, "%s/init.lua", pack);
    FILE *f = fopen(init, "w");
    fputs("return {\n  templates = {\n    { name = 't', about = 'x', render = function( }\n", f);
    fclose(f);

    char conf_text[800];
    snprintf(conf_text, sizeof conf_text, "\npolicy.pack %s\n", pack);
    const char *conf = write_conf(conf_text);
    cr_expect_eq(run((const char *[]){"--check", "--config", conf, NULL}), 78);
    char want[2048];
    snprintf(want, sizeof want, "%s:2: policy.pack: pack broken (%s): broken/init.lua:3:", conf,
             pack);
    cr_expect(file_has(err, want), "stderr lacks: %s", want);

    cr_expect_eq(run((const char *[]){"--check", "--set", "policy.pack=policies/support", NULL}),
                 0);
    cr_expect(file_has(out, "pack support version"));
}

Test(cli, set_overrides_are_checked_too) {
    cr_expect_eq(run((const char *[]){"--check", "--set", "log.level=chatty", NULL}), 78);
    cr_expect(file_has(err, "command line: log.level: expects one of"));
    cr_expect_eq(run((const char *[]){"--check", "--set", "novalue", NULL}), 78);
    cr_expect(file_has(err, "--set expects KEY=VALUE"));
}

static void empty(const char *path) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
}

/* Hostile values: each is refused at --check (exit 78) with a line naming its key and
 * what is wrong, before anything is opened or bound. */
Test(cli, hostile_values_are_refused_by_check) {
    static const struct {
        const char *set, *says;
    } cases[] = {
        {"kafka.batch.size=99999999999", "kafka.batch.size: must be between"},
        {"reward.window=-5s", "reward.window: expects a duration"},
        {"learner.checkpoint_every=-1m", "learner.checkpoint_every: expects a duration"},
        {"cache.l1_bytes=1000tb", "cache.l1_bytes: expects a size"},
        {"prompt.max_bytes=0", "prompt.max_bytes: must be between"},
        {"encoder.max_tokens=1e30", "encoder.max_tokens: expects a whole number"},
        {"encoder.model=/etc/passwd", "encoder.model: the model /etc/passwd is refused"},
        {"encoder.model=/nonexistent/model.safetensors", "encoder.model:"},
        {"policy.pack=/etc", "policy.pack: pack etc (/etc): /etc/init.lua not found"},
        {"metrics.listen=8.8.8.8:80", "metrics.listen: '8.8.8.8:80' is not a loopback address"},
        {"redis.url=ftp://x", "redis.url: unknown scheme"},
        {"learner.mode=federated", "learner.mode: expects local or distributed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        empty(err);
        cr_expect_eq(run((const char *[]){"--check", "--set", cases[i].set, NULL}), 78, "%s",
                     cases[i].set);
        cr_expect(file_has(err, cases[i].says), "%s: the error does not say '%s'", cases[i].set,
                  cases[i].says);
    }

    /* Distributed learning: its topics carry promptd's own messages, and the fine-tuned
     * head is not shared yet. */
    empty(err);
    cr_expect_eq(run((const char *[]){"--check", "--set", "learner.mode=distributed", "--set",
                                      "kafka.topic.policy=promptd.rewards", NULL}),
                 78);
    cr_expect(file_has(err, "kafka.topic.policy: must differ from kafka.topic.rewards"));
    empty(err);
    cr_expect_eq(run((const char *[]){"--check", "--set", "learner.mode=distributed", "--set",
                                      "learner.triplets=yes", NULL}),
                 78);
    cr_expect(file_has(err, "learner.triplets: needs learner.mode local"));

    /* An include that is not a regular file (a directory) is named. */
    char sub[600], line[700];
    harness_path(sub, sizeof sub, dir, "conf.d");
    mkdir(sub, 0755);
    snprintf(line, sizeof line, "include %s\n", sub);
    empty(err);
    cr_expect_eq(run((const char *[]){"--check", "--config", write_conf(line), NULL}), 78);
    cr_expect(file_has(err, "conf.d is not a regular file"));

    /* Nor a FIFO, which would block the read forever. */
    char fifo[600];
    harness_path(fifo, sizeof fifo, dir, "fifo.conf");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    snprintf(line, sizeof line, "include %s\n", fifo);
    empty(err);
    cr_expect_eq(run((const char *[]){"--check", "--config", write_conf(line), NULL}), 78);
    cr_expect(file_has(err, "fifo.conf is not a regular file"));
}

Test(cli, a_missing_config_file_is_a_configuration_error) {
    cr_expect_eq(run((const char *[]){"--config", "/nonexistent.conf", NULL}), 78);
    cr_expect(file_has(err, "cannot open /nonexistent.conf"));
}

Test(cli, dump_config_prints_effective_values) {
    const char *conf = write_conf("kafka.group.id team-a\n");
    cr_expect_eq(run((const char *[]){"--dump-config", "--config", conf, NULL}), 0);
    cr_expect(file_has(out, "kafka.group.id"));
    cr_expect(file_has(out, "\"team-a\""));
}

/* SIGHUP: a broken file is refused and the service keeps running; a good one applies its
 * reloadable keys and names those that need a restart. */
Test(cli, sighup_reloads_or_refuses_the_configuration, .timeout = 90) {
    const char *conf = write_conf("log.level info\n");
    char state[600];
    snprintf(state, sizeof state, "learner.checkpoint_dir=%s/state", dir);
    char *argv[] = {(char *)harness_promptd(),    "--config", (char *)conf, "--set",
                    "metrics.listen=127.0.0.1:0", "--set",    state,        NULL};
    Proc p;
    cr_assert_eq(proc_start(&p, argv, NULL, out, err), 0);
    cr_assert_eq(harness_wait_text(err, "serving:", 20000), 0, "promptd did not start");

    write_conf("log.level info\nkafka.batch.sise 9\n");
    proc_signal(&p, SIGHUP);
    cr_expect_eq(harness_wait_text(err, "reload refused", 10000), 0, "no refusal logged");
    cr_expect(file_has(err, "kafka.batch.sise: unknown key; did you mean 'kafka.batch.size'?"));
    cr_expect_eq(proc_wait(&p, 200), -1, "promptd exited after a bad reload");

    write_conf("log.level notice\nkafka.batch.size 9\nkafka.group.id other\n");
    proc_signal(&p, SIGHUP);
    cr_expect_eq(harness_wait_text(err, "configuration reloaded: 2 key(s) changed", 10000), 0);
    cr_expect(file_has(err, "kafka.group.id changed; it takes effect after a restart"));

    proc_signal(&p, SIGTERM);
    cr_expect_eq(proc_wait(&p, 30000), 0);
}

/* --- promptctl and the model --- */

static int run_ctl(const char *const *args) {
    char *argv[32];
    int n = 0;
    argv[n++] = getenv("PROMPTCTL") ? getenv("PROMPTCTL") : "build/promptctl";
    for (; *args; args++) argv[n++] = (char *)*args;
    argv[n] = NULL;
    Proc p;
    cr_assert_eq(proc_start(&p, argv, NULL, out, err), 0);
    int code = proc_wait(&p, 30000);
    cr_assert_geq(code, 0, "promptctl did not exit within 30 s");
    return code;
}

Test(cli, promptctl_encode_prints_vectors_and_similarities) {
    cr_expect_eq(run_ctl((const char *[]){"encode", "WTG-12 gearbox bearing temp 92C",
                                          "WTG-07 gearbox bearing temp 95C", NULL}),
                 0);
    cr_expect(file_has(out, "normalised: wtg-<num> gearbox bearing temp <num>"));
    cr_expect(file_has(out, "cosine similarity"));
    /* The two texts normalise identically, so their vectors are identical. */
    cr_expect(file_has(out, "[1]   +1.000 +1.000"), "identical texts must have similarity 1");
}

Test(cli, promptctl_check_validates_a_pack_offline) {
    cr_expect_eq(run_ctl((const char *[]){"check", "policies/alarm", NULL}), 0);
    cr_expect(file_has(out, "template triage"));
    cr_expect_eq(run_ctl((const char *[]){"check", "/nonexistent/pack", NULL}), 78);
    cr_expect(file_has(err, "init.lua not found"));
    cr_expect_eq(run_ctl((const char *[]){"frobnicate", NULL}), 64);
}

/* A scenario writes a pack that loads as any other, with the features it declares. */
Test(cli, simulate_writes_a_pack_that_checks) {
    char pack[600];
    harness_path(pack, sizeof pack, dir, "bandit-pack");
    mkdir(pack, 0755);
    cr_assert_eq(run_ctl((const char *[]){"simulate", "--scenario", "bandit", "--param",
                                          "templates=16", "--write-pack", pack, NULL}),
                 0);
    cr_expect_eq(run_ctl((const char *[]){"check", pack, NULL}), 0);
    cr_expect(file_has(out, "template t16"));
    cr_expect(file_has(out, "feature  code7"), "the scenario's pack_fields are in the pack");
    cr_expect_eq(run_ctl((const char *[]){"simulate", "--scenario", "bandit", "--param",
                                          "templates=12", "--write-pack", pack, NULL}),
                 78);
    cr_expect(file_has(err, "templates must be 8, 16 or 32"));
}

Test(cli, a_corrupt_model_is_refused_and_named) {
    char model[600];
    harness_path(model, sizeof model, dir, "broken.safetensors");
    FILE *f = fopen(model, "w");
    fputs("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", f);
    fclose(f);
    char set[700];
    snprintf(set, sizeof set, "encoder.model=%s", model);
    cr_expect_eq(run((const char *[]){"--check", "--set", set, NULL}), 78);
    cr_expect(file_has(err, "command line: encoder.model: the model"), "no refusal naming it");
    cr_expect(file_has(err, "broken.safetensors is refused"));
}
