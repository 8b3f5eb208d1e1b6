/* The journal: joins, aggregation rules, the reward window, capacity, late and unknown. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "../daemon/journal.h"

static Journal *j;

static void open_with(JournalRule rule, bool drop, size_t max) {
    JournalConfig cfg = {rule, 1000, drop, -0.25, max};
    j = journal_new(&cfg);
    cr_assert_not_null(j);
}

static void teardown(void) {
    journal_free(j);
}

TestSuite(journal, .fini = teardown);

static void put(const char *id, int64_t now) {
    char decision[64], record[8];
    snprintf(decision, sizeof decision, "{\"id\":\"%s\"}", id);
    memcpy(record, "recordXY", 8);
    cr_assert_eq(journal_put(j, id, strlen(id), decision, strlen(decision), record, 8, now), 0);
}

static JoinResult reward(const char *id, double r, int64_t now, Experience *out) {
    return journal_reward(j, id, strlen(id), r, now, out);
}

Test(journal, first_rule_closes_at_the_first_event) {
    Experience e;
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    cr_expect_str_eq(journal_decision(j, "a", 1), "{\"id\":\"a\"}");
    cr_assert_eq(reward("a", 0.75, 10, &e), JOIN_CLOSED);
    cr_expect_float_eq(e.reward, 0.75, 1e-12);
    cr_expect_eq(e.events, 1);
    cr_expect_str_eq(e.decision, "{\"id\":\"a\"}");
    cr_expect(e.record_len == 8 && !memcmp(e.record, "recordXY", 8));
    experience_free(&e);

    cr_expect_eq(reward("a", 1, 20, &e), JOIN_LATE, "a second event is late, never learned twice");
    cr_expect_eq(reward("zzz", 1, 20, &e), JOIN_UNKNOWN);
    JournalStats s = journal_stats(j);
    cr_expect(s.joined == 1 && s.closed == 1 && s.late == 1 && s.unknown == 1 && s.open == 0);
}

static double aggregated(JournalRule rule) {
    Experience e[4];
    open_with(rule, false, 100);
    put("x", 0);
    cr_assert_eq(reward("x", 1, 100, e), JOIN_ACCUMULATED);
    cr_assert_eq(reward("x", 4, 200, e), JOIN_ACCUMULATED);
    cr_assert_eq(reward("x", -2, 300, e), JOIN_ACCUMULATED);
    cr_assert_eq(journal_expire(j, 999, e, 4), 0, "closed before its window ended");
    cr_assert_eq(journal_expire(j, 1001, e, 4), 1);
    cr_expect_eq(e[0].events, 3);
    double r = e[0].reward;
    experience_free(&e[0]);
    journal_free(j);
    j = NULL;
    return r;
}

Test(journal, aggregation_rules_combine_every_event) {
    cr_expect_float_eq(aggregated(JOURNAL_LAST), -2, 1e-12);
    cr_expect_float_eq(aggregated(JOURNAL_SUM), 3, 1e-12);
    cr_expect_float_eq(aggregated(JOURNAL_MAX), 4, 1e-12);
    cr_expect_float_eq(aggregated(JOURNAL_MEAN), 1, 1e-12);
}

Test(journal, window_closes_with_the_default_reward) {
    Experience e[4];
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    put("b", 500);
    cr_assert_eq(journal_expire(j, 1200, e, 4), 1, "only a's window ended");
    cr_expect_float_eq(e[0].reward, -0.25, 1e-12);
    cr_expect_eq(e[0].events, 0);
    experience_free(&e[0]);
    cr_expect_eq(reward("a", 1, 1300, e), JOIN_LATE);
    cr_expect_eq(reward("b", 1, 1600, e), JOIN_LATE, "an event after the window is late");
    cr_expect_eq(journal_stats(j).expired, 1);
}

Test(journal, default_drop_learns_nothing_without_an_event) {
    Experience e[4];
    open_with(JOURNAL_FIRST, true, 100);
    put("a", 0);
    cr_expect_eq(journal_expire(j, 5000, e, 4), 0);
    JournalStats s = journal_stats(j);
    cr_expect(s.expired == 1 && s.dropped == 1, "expired %lu dropped %lu", (unsigned long)s.expired,
              (unsigned long)s.dropped);
}

Test(journal, a_full_journal_closes_its_oldest_entries) {
    Experience e[8];
    open_with(JOURNAL_FIRST, false, 3);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "i%d", i);
        put(id, i);
    }
    size_t n = journal_expire(j, 10, e, 8);
    cr_expect_eq(n, 2);
    cr_expect_str_eq(e[0].decision, "{\"id\":\"i0\"}");
    cr_expect_str_eq(e[1].decision, "{\"id\":\"i1\"}");
    for (size_t i = 0; i < n; i++) experience_free(&e[i]);
    cr_expect_eq(journal_stats(j).evicted, 2);
    cr_expect_eq(journal_stats(j).open, 3);
}

Test(journal, a_redecided_prompt_keeps_the_newer_decision) {
    Experience e;
    open_with(JOURNAL_FIRST, false, 100);
    put("a", 0);
    put("a", 50);
    cr_assert_eq(reward("a", 2, 60, &e), JOIN_CLOSED);
    cr_expect_eq(e.made_ms, 50);
    experience_free(&e);
    cr_expect_eq(journal_expire(j, 5000, &e, 1), 0, "the superseded entry is not learned");
    cr_expect_eq(journal_stats(j).replaced, 1);
}

Test(journal, many_entries_stay_consistent) {
    enum { N = 20000 };
    Experience e[64];
    open_with(JOURNAL_FIRST, false, N);
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "k%d", i);
        put(id, i);
    }
    size_t joined = 0;
    for (int i = 0; i < N; i += 2) {
        char id[16];
        snprintf(id, sizeof id, "k%d", i);
        if (reward(id, i, i + 10, &e[0]) == JOIN_CLOSED) {
            cr_assert_float_eq(e[0].reward, i, 1e-9);
            experience_free(&e[0]);
            joined++;
        }
    }
    size_t expired = 0, n;
    while ((n = journal_expire(j, N + 5000, e, 64)) > 0) {
        for (size_t i = 0; i < n; i++) experience_free(&e[i]);
        expired += n;
    }
    cr_expect_eq(joined, N / 2, "joined %zu", joined);
    cr_expect_eq(expired, N / 2, "expired %zu", expired);
    cr_expect_eq(journal_stats(j).open, 0);
}

Test(journal, rule_names_parse) {
    cr_expect_eq(journal_rule_parse("first"), JOURNAL_FIRST);
    cr_expect_eq(journal_rule_parse("mean"), JOURNAL_MEAN);
    cr_expect_eq(journal_rule_parse("median"), -1);
}
