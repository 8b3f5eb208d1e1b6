/*
 * A reader of the Prometheus text exposition format (0.0.4), for promptctl status and top:
 * `# HELP` and `# TYPE` lines, other comments, and samples `name{label="value",...} value
 * [timestamp]` with the format's escapes (\\, \" and \n in label values; \\ and \n in
 * help text) and the special values NaN, +Inf and -Inf.
 *
 * It is lenient the way a dashboard must be: a line it cannot read is skipped and counted
 * (with the first one's line number and reason), never a reason to show nothing. It does
 * not check what a scraper would refuse (duplicate series, a TYPE after its samples).
 *
 * Lookups are linear scans: an admin page has hundreds of samples, not millions.
 */
#ifndef PD_PROMTEXT_H
#define PD_PROMTEXT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct PromPage PromPage;

typedef struct {
    const char *name, *value; /* unescaped, NUL-terminated; owned by the page */
} PromLabel;

typedef struct {
    const char *name; /* the sample's name, with _bucket, _sum or _count for histograms */
    const PromLabel *labels;
    size_t nlabels;
    double value;
} PromSample;

/* Parses text[0..len) into a new page (the page keeps its own copy). Returns the page, or
 * NULL only when out of memory. */
PromPage *promtext_parse(const char *text, size_t len);
void promtext_free(PromPage *pg);

size_t promtext_count(const PromPage *pg);
const PromSample *promtext_sample(const PromPage *pg, size_t i);

/* Lines that could not be read, and the first one's "line N: reason" (NULL when none). */
size_t promtext_bad_lines(const PromPage *pg, const char **first);

/* The # TYPE ("counter", "gauge", "histogram"...) and # HELP text of a family, or NULL. */
const char *promtext_type(const PromPage *pg, const char *family);
const char *promtext_help(const PromPage *pg, const char *family);

/* The value of label `name` in s, or NULL. */
const char *promtext_label(const PromSample *s, const char *name);

/* Sums the samples called name whose labels include every pair of match[0..n) (match may
 * be NULL when n is 0). Returns how many samples were summed; *sum is set only when that
 * is at least one, so that an absent metric stays distinguishable from a zero. */
size_t promtext_sum(const PromPage *pg, const char *name, const PromLabel *match, size_t n,
                    double *sum);

/* The value of a single unlabelled sample, or false when absent. */
bool promtext_get(const PromPage *pg, const char *name, double *value);

/* The q-quantile (0 < q < 1) of histogram family `name` from its cumulative _bucket
 * samples, summed over the series that include match[0..n), interpolating linearly inside
 * a bucket as Prometheus' histogram_quantile does. A quantile in the +Inf bucket is the
 * highest finite bound. Returns false when there are no buckets or no observations. */
bool promtext_quantile(const PromPage *pg, const char *name, const PromLabel *match, size_t n,
                       double q, double *value);

#endif
