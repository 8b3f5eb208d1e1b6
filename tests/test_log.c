/* Logging: the <N> prefix, levels, debug switches and the rate limit. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "../daemon/log.h"

static char lines[64][512];
static int nlines;

static void capture(void *ctx, int level, const char *line) {
    (void)ctx, (void)level;
    if (nlines < 64) snprintf(lines[nlines++], sizeof lines[0], "%s", line);
}

static void setup(void) {
    nlines = 0;
    pd_log_set_sink(capture, NULL);
    pd_log_set_level(PD_LOG_INFO);
    pd_log_set_debug_mask(0);
    pd_log_set_ratelimit(5, 60000);
}

static void teardown(void) {
    pd_log_set_sink(NULL, NULL);
}

TestSuite(log, .init = setup, .fini = teardown);

Test(log, lines_carry_the_journald_level_prefix) {
    pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "broker %d down", 3);
    pd_log(PD_LOG_INFO, PD_MOD_MAIN, "hello");
    cr_assert_eq(nlines, 2);
    cr_expect_str_eq(lines[0], "<3>kafka: broker 3 down");
    cr_expect_str_eq(lines[1], "<6>main: hello");
}

Test(log, level_filters_and_debug_switches_select_modules) {
    pd_log(PD_LOG_DEBUG, PD_MOD_KAFKA, "hidden");
    cr_expect_eq(nlines, 0);

    pd_log_set_debug_mask(1u << PD_MOD_KAFKA);
    pd_log(PD_LOG_DEBUG, PD_MOD_KAFKA, "shown");
    pd_log(PD_LOG_DEBUG, PD_MOD_PIPELINE, "hidden");
    cr_assert_eq(nlines, 1);
    cr_expect_str_eq(lines[0], "<7>kafka: shown");

    pd_log_set_level(PD_LOG_ERR);
    pd_log(PD_LOG_WARNING, PD_MOD_MAIN, "hidden");
    cr_expect_eq(nlines, 1);
}

Test(log, newlines_stay_on_one_line) {
    pd_log(PD_LOG_WARNING, PD_MOD_MAIN, "a\nb\r\nc");
    cr_expect_str_eq(lines[0], "<4>main: a b  c");
}

Test(log, repeated_errors_are_rate_limited_and_counted) {
    for (int i = 0; i < 20; i++) pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "delivery failed offset %d", i);
    cr_expect_eq(nlines, 5, "burst of 5, then suppressed; got %d lines", nlines);

    pd_log(PD_LOG_ERR, PD_MOD_KAFKA, "another problem");
    cr_expect_eq(nlines, 6, "a different error is not suppressed");

    pd_log_set_ratelimit(5, 0); /* the window closes at once */
    pd_log_tick();
    cr_assert_eq(nlines, 7);
    cr_expect(strstr(lines[6], "<3>kafka: suppressed 15 repeats of: delivery failed offset"),
              "got: %s", lines[6]);
}

Test(log, info_lines_are_never_rate_limited) {
    for (int i = 0; i < 20; i++) pd_log(PD_LOG_INFO, PD_MOD_MAIN, "tick");
    cr_expect_eq(nlines, 20);
}

Test(log, level_and_module_names_parse) {
    uint32_t mask;
    char bad[32];
    cr_expect_eq(pd_log_level_parse("warning"), PD_LOG_WARNING);
    cr_expect_eq(pd_log_level_parse("warn"), PD_LOG_WARNING);
    cr_expect_eq(pd_log_level_parse("error"), PD_LOG_ERR);
    cr_expect_eq(pd_log_level_parse("shout"), -1);
    cr_expect_eq(pd_log_debug_parse("kafka, pipeline", &mask, bad, sizeof bad), 0);
    cr_expect_eq(mask, (1u << PD_MOD_KAFKA) | (1u << PD_MOD_PIPELINE));
    cr_expect_eq(pd_log_debug_parse("all", &mask, bad, sizeof bad), 0);
    cr_expect_eq(mask, (1u << PD_MOD_COUNT) - 1);
    cr_expect_eq(pd_log_debug_parse("kafka,bogus", &mask, bad, sizeof bad), -1);
    cr_expect_str_eq(bad, "bogus");
}
