/*
 * The Prometheus text-format reader behind promptctl status and top: escapes, special
 * values, comments, histograms and quantiles, lines it cannot read (skipped and counted,
 * never fatal), and a round trip through the writer promptd serves its page with.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/metrics.h"
#include "../daemon/pd.h"
#include "../daemon/promtext.h"

static PromPage *parse(const char *text) {
    PromPage *pg = promtext_parse(text, strlen(text));
    cr_assert_not_null(pg, "out of memory parsing a small page");
    return pg;
}

/* The one sample called name whose label key has value (key NULL: the first called name). */
static const PromSample *find(const PromPage *pg, const char *name, const char *key,
                              const char *value) {
    for (size_t i = 0; i < promtext_count(pg); i++) {
        const PromSample *s = promtext_sample(pg, i);
        const char *v = key ? promtext_label(s, key) : NULL;
        if (!strcmp(s->name, name) && (!key || (v && !strcmp(v, value)))) return s;
    }
    cr_assert_fail("no sample %s{%s=\"%s\"}", name, key ? key : "", value ? value : "");
    return NULL;
}

Test(promtext, label_values_are_unescaped_and_may_hold_the_syntax_characters) {
    PromPage *pg = parse("x{path=\"C:\\\\dir\\\\f\",msg=\"say \\\"hi\\\"\\nbye\"} 1\n"
                         "y{v=\"a,b=c}#{d\",w=\"\"} 2\n"
                         "z{u=\"caf\xc3\xa9 \xe2\x82\xac\",odd=\"\\q\"} 3\n");
    const PromSample *x = find(pg, "x", NULL, NULL);
    cr_expect_str_eq(promtext_label(x, "path"), "C:\\dir\\f");
    cr_expect_str_eq(promtext_label(x, "msg"), "say \"hi\"\nbye");
    cr_expect_eq(x->value, 1);
    const PromSample *y = find(pg, "y", NULL, NULL);
    cr_expect_eq(y->nlabels, 2);
    cr_expect_str_eq(promtext_label(y, "v"), "a,b=c}#{d");
    cr_expect_str_eq(promtext_label(y, "w"), "");
    const PromSample *z = find(pg, "z", NULL, NULL);
    cr_expect_str_eq(promtext_label(z, "u"), "caf\xc3\xa9 \xe2\x82\xac");
    cr_expect_str_eq(promtext_label(z, "odd"), "\\q", "an unknown escape is kept as written");
    cr_expect_null(promtext_label(z, "absent"));
    cr_expect_eq(promtext_bad_lines(pg, NULL), 0);
    promtext_free(pg);
}

Test(promtext, special_values_exponents_and_timestamps_are_read) {
    PromPage *pg = parse("a NaN\nb +Inf\nc -Inf\nd 1.5e3\ne -0.25 1712345678901\n"
                         "f 0x10\ng 7 \t\nh{} 8\ni{k=\"v\",} 9\n  j   10  \n");
    double v;
    cr_expect(promtext_get(pg, "a", &v) && isnan(v));
    cr_expect(promtext_get(pg, "b", &v) && isinf(v) && v > 0);
    cr_expect(promtext_get(pg, "c", &v) && isinf(v) && v < 0);
    cr_expect(promtext_get(pg, "d", &v) && v == 1500);
    cr_expect(promtext_get(pg, "e", &v) && v == -0.25, "a timestamp is not the value");
    cr_expect(promtext_get(pg, "f", &v) && v == 16);
    cr_expect(promtext_get(pg, "g", &v) && v == 7, "trailing blanks are allowed");
    cr_expect(promtext_get(pg, "h", &v) && v == 8, "empty braces are no labels");
    cr_expect_str_eq(promtext_label(find(pg, "i", NULL, NULL), "k"), "v", "a trailing comma");
    cr_expect(promtext_get(pg, "j", &v) && v == 10, "leading blanks are allowed");
    cr_expect_not(promtext_get(pg, "i", &v), "get is for unlabelled samples");
    cr_expect_not(promtext_get(pg, "nothing", &v));
    cr_expect_eq(promtext_count(pg), 10);
    promtext_free(pg);
}

Test(promtext, help_and_type_are_kept_and_other_comments_ignored) {
    PromPage *pg = parse("# HELP up_total Whether it is up.\\nSecond line \\\\ \\q.\n"
                         "# TYPE up_total counter\n"
                         "# a comment with { and \" in it\n"
                         "#\n"
                         "#TYPE tight gauge\n"
                         "up_total 1\n"
                         "# EOF\n");
    cr_expect_str_eq(promtext_help(pg, "up_total"), "Whether it is up.\nSecond line \\ \\q.");
    cr_expect_str_eq(promtext_type(pg, "up_total"), "counter");
    cr_expect_str_eq(promtext_type(pg, "tight"), "gauge", "no blank is needed after '#'");
    cr_expect_null(promtext_type(pg, "absent"));
    cr_expect_null(promtext_help(pg, "tight"));
    cr_expect_eq(promtext_count(pg), 1);
    cr_expect_eq(promtext_bad_lines(pg, NULL), 0);
    promtext_free(pg);
}

Test(promtext, unreadable_lines_are_skipped_counted_and_the_first_named) {
    PromPage *pg = parse("good 1\n"
                         "bad{x=\"unterminated} 2\n"
                         "novalue\n"
                         "word{a=\"1\"} notanumber\n"
                         "9digit 1\n"
                         "extra 1 2 3\n"
                         "unquoted{a=1} 1\n"
                         "nocomma{a=\"1\" b=\"2\"} 1\n"
                         "also_good{a=\"1\"} 2\r\n"
                         "last 3");
    const char *first;
    cr_expect_eq(promtext_bad_lines(pg, &first), 7);
    cr_expect_str_eq(first, "line 2: unterminated label value");
    double v;
    cr_expect(promtext_get(pg, "good", &v) && v == 1);
    cr_expect(promtext_get(pg, "last", &v) && v == 3, "a last line without newline counts");
    const PromSample *s = find(pg, "also_good", "a", "1");
    cr_expect_eq(s->value, 2, "CRLF line ends are accepted");
    cr_expect_eq(s->nlabels, 1, "labels of skipped lines do not leak into the next sample");
    cr_expect_eq(promtext_count(pg), 3);
    promtext_free(pg);
}

Test(promtext, sums_match_labels_and_tell_absent_from_zero) {
    PromPage *pg = parse("c_total{level=\"l1\",result=\"hit\"} 90\n"
                         "c_total{level=\"l1\",result=\"miss\"} 10\n"
                         "c_total{level=\"redis\",result=\"hit\"} 3\n"
                         "c_total{level=\"redis\",result=\"miss\"} 0\n");
    double sum = -1;
    cr_expect_eq(promtext_sum(pg, "c_total", NULL, 0, &sum), 4);
    cr_expect_eq(sum, 103);
    PromLabel l1[] = {{"level", "l1"}};
    cr_expect_eq(promtext_sum(pg, "c_total", l1, 1, &sum), 2);
    cr_expect_eq(sum, 100);
    PromLabel hit[] = {{"level", "redis"}, {"result", "hit"}};
    cr_expect_eq(promtext_sum(pg, "c_total", hit, 2, &sum), 1);
    cr_expect_eq(sum, 3);
    sum = -1;
    PromLabel none[] = {{"level", "l3"}};
    cr_expect_eq(promtext_sum(pg, "c_total", none, 1, &sum), 0);
    cr_expect_eq(promtext_sum(pg, "absent_total", NULL, 0, &sum), 0);
    cr_expect_eq(sum, -1, "an absent metric leaves the sum alone");
    promtext_free(pg);
}

static const char *histogram_page = "# TYPE lat_seconds histogram\n"
                                    "lat_seconds_bucket{stage=\"a\",le=\"0.1\"} 2\n"
                                    "lat_seconds_bucket{stage=\"a\",le=\"0.5\"} 6\n"
                                    "lat_seconds_bucket{stage=\"a\",le=\"1\"} 8\n"
                                    "lat_seconds_bucket{stage=\"a\",le=\"+Inf\"} 10\n"
                                    "lat_seconds_sum{stage=\"a\"} 4.2\n"
                                    "lat_seconds_count{stage=\"a\"} 10\n"
                                    "lat_seconds_bucket{stage=\"b\",le=\"1\"} 10\n"
                                    "lat_seconds_bucket{stage=\"b\",le=\"0.1\"} 0\n"
                                    "lat_seconds_bucket{stage=\"b\",le=\"0.5\"} 10\n"
                                    "lat_seconds_bucket{stage=\"b\",le=\"+Inf\"} 10\n"
                                    "lat_seconds_sum{stage=\"b\"} 3\n"
                                    "lat_seconds_count{stage=\"b\"} 10\n"
                                    "empty_seconds_bucket{le=\"1\"} 0\n"
                                    "empty_seconds_bucket{le=\"+Inf\"} 0\n";

Test(promtext, histogram_quantiles_interpolate_inside_buckets_like_prometheus) {
    PromPage *pg = parse(histogram_page);
    PromLabel a[] = {{"stage", "a"}}, b[] = {{"stage", "b"}};
    double v;
    /* a: rank 5 of 10 falls in (0.1, 0.5] holding 4 after 2 below: 0.1 + 0.4 * 3/4. */
    cr_assert(promtext_quantile(pg, "lat_seconds", a, 1, 0.5, &v));
    cr_expect_float_eq(v, 0.4, 1e-12, "p50 of a: %g", v);
    cr_assert(promtext_quantile(pg, "lat_seconds", a, 1, 0.1, &v));
    cr_expect_float_eq(v, 0.05, 1e-12, "the first bucket starts at 0: %g", v);
    cr_assert(promtext_quantile(pg, "lat_seconds", a, 1, 0.95, &v));
    cr_expect_eq(v, 1, "the +Inf bucket reports the highest finite bound, got %g", v);
    /* b is given out of order; summed with a the buckets are 2, 16, 18, 20: rank 10 lies
     * in (0.1, 0.5] at 8 of 14. */
    cr_assert(promtext_quantile(pg, "lat_seconds", b, 1, 0.5, &v));
    cr_expect_float_eq(v, 0.1 + 0.4 * 5 / 10, 1e-12, "p50 of b: %g", v);
    cr_assert(promtext_quantile(pg, "lat_seconds", NULL, 0, 0.5, &v));
    cr_expect_float_eq(v, 0.1 + 0.4 * 8 / 14, 1e-12, "p50 over both: %g", v);
    cr_expect_not(promtext_quantile(pg, "empty_seconds", NULL, 0, 0.5, &v), "no observations");
    cr_expect_not(promtext_quantile(pg, "absent_seconds", NULL, 0, 0.5, &v));
    cr_expect_not(promtext_quantile(pg, "lat_seconds", a, 1, 1.5, &v), "q out of range");
    double sum;
    cr_expect_eq(promtext_sum(pg, "lat_seconds_count", NULL, 0, &sum), 2);
    cr_expect_eq(sum, 20);
    promtext_free(pg);
}

Test(promtext, an_empty_page_and_a_nul_byte_are_handled) {
    PromPage *pg = parse("");
    cr_expect_eq(promtext_count(pg), 0);
    cr_expect_eq(promtext_bad_lines(pg, NULL), 0);
    promtext_free(pg);
    static const char with_nul[] = "a 1\nb\0c 2\nd 3\n";
    pg = promtext_parse(with_nul, sizeof with_nul - 1);
    cr_assert_not_null(pg);
    const char *first;
    cr_expect_eq(promtext_bad_lines(pg, &first), 1);
    cr_expect_str_eq(first, "line 2: a NUL byte in the line");
    cr_expect_eq(promtext_count(pg), 2);
    promtext_free(pg);
}

/* --- what promptd's writer produces reads back --- */

static void render_page(void *ctx, MetricsWriter *w) {
    (void)ctx;
    static MetricsHistogram h;
    static const double bounds[] = {0.001, 0.01};
    metrics_histogram_init(&h, bounds, 2);
    metrics_observe(&h, 0.0005);
    metrics_observe(&h, 0.005);
    metrics_observe(&h, 3);
    metrics_family(w, "promptd_template_selections_total", METRICS_COUNTER,
                   "Selections \"by\" template\\name\nper line.");
    metrics_value1(w, "template", "say \"hi\"\\now\nplease", 5);
    metrics_value1(w, "template", "triage", 7);
    metrics_gauge(w, "promptd_policy_kl", "KL.", NAN);
    metrics_gauge(w, "promptd_reward_mean", "Mean.", -INFINITY);
    metrics_family(w, "promptd_end_to_end_duration_seconds", METRICS_HISTOGRAM, "E2E.");
    metrics_histogram(w, NULL, 0, &h);
}

Test(promtext, the_page_promptds_writer_produces_reads_back_exactly) {
    char *text, err[256];
    size_t len;
    cr_assert_eq(metrics_render(render_page, NULL, &text, &len, err, sizeof err), 0, "%s", err);
    PromPage *pg = promtext_parse(text, len);
    cr_assert_not_null(pg);
    const char *first;
    cr_expect_eq(promtext_bad_lines(pg, &first), 0, "%s in:\n%s", first, text);
    cr_expect_eq(
        find(pg, "promptd_template_selections_total", "template", "say \"hi\"\\now\nplease")->value,
        5);
    cr_expect_str_eq(promtext_help(pg, "promptd_template_selections_total"),
                     "Selections \"by\" template\\name\nper line.");
    cr_expect_str_eq(promtext_type(pg, "promptd_end_to_end_duration_seconds"), "histogram");
    double v;
    cr_expect(promtext_get(pg, "promptd_policy_kl", &v) && isnan(v));
    cr_expect(promtext_get(pg, "promptd_reward_mean", &v) && isinf(v) && v < 0);
    cr_expect(promtext_get(pg, "promptd_end_to_end_duration_seconds_count", &v) && v == 3);
    cr_assert(promtext_quantile(pg, "promptd_end_to_end_duration_seconds", NULL, 0, 0.5, &v));
    cr_expect_float_eq(v, 0.001 + 0.009 * 0.5, 1e-12, "p50 %g", v);
    promtext_free(pg);
    free(text);
}
