/*
 * The Prometheus text-format reader; see promtext.h. The page keeps one copy of the text
 * and cuts it in place: names end where a NUL is written over the character after them,
 * and escaped values are unescaped into the bytes they came from (never longer), so a
 * page costs two allocations beside its arrays.
 */
#include "promtext.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name, *type, *help;
} Family;

struct PromPage {
    char *buf; /* the text, cut and unescaped in place */
    PromSample *samples;
    size_t *first_label; /* per sample, its first label in labels, while parsing */
    size_t nsamples, capsamples, capfirst;
    PromLabel *labels; /* every sample's labels, in order */
    size_t nlabels, caplabels;
    Family *families;
    size_t nfamilies, capfamilies;
    size_t bad;          /* lines skipped */
    char first_bad[160]; /* "line N: reason" of the first */
    bool oom;
};

/* --- growing arrays --- */

static bool reserve(PromPage *pg, void **items, size_t *cap, size_t len, size_t size) {
    if (len < *cap) return true;
    size_t n = *cap ? *cap * 2 : 64;
    void *grown = realloc(*items, n * size);
    if (!grown) return pg->oom = true, false;
    *items = grown;
    *cap = n;
    return true;
}

static Family *family(PromPage *pg, const char *name, bool add) {
    for (size_t i = 0; i < pg->nfamilies; i++)
        if (!strcmp(pg->families[i].name, name)) return &pg->families[i];
    if (!add ||
        !reserve(pg, (void **)&pg->families, &pg->capfamilies, pg->nfamilies, sizeof *pg->families))
        return NULL;
    Family *f = &pg->families[pg->nfamilies++];
    *f = (Family){name, NULL, NULL};
    return f;
}

/* --- lexing one line --- */

typedef struct {
    char *s;         /* the next unread byte; the line ends at a NUL */
    const char *why; /* the first problem, or NULL */
} Line;

static bool is_space(char c) {
    return c == ' ' || c == '\t';
}

static void skip_space(Line *l) {
    while (is_space(*l->s)) l->s++;
}

static bool name_char(char c, bool first, bool colon) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
    if (colon && c == ':') return true;
    return !first && c >= '0' && c <= '9';
}

/* Reads a name and returns where it ends (not yet cut: the caller reads that byte
 * first), or NULL when there is none. */
static char *read_name(Line *l, bool colon) {
    if (!name_char(*l->s, true, colon)) return NULL;
    while (name_char(*l->s, false, colon)) l->s++;
    return l->s;
}

/* Reads a quoted label value, unescaping it in place; returns it or NULL. */
static const char *read_quoted(Line *l) {
    if (*l->s != '"') return l->why = "expected '\"' before a label value", NULL;
    char *r = ++l->s, *w = r, *start = r;
    while (*r != '"') {
        if (!*r) return l->why = "unterminated label value", NULL;
        if (*r == '\\') {
            r++;
            if (*r == 'n') {
                *w++ = '\n';
            } else if (*r == '\\' || *r == '"') {
                *w++ = *r;
            } else if (*r) { /* not an escape the format knows: keep it as written */
                *w++ = '\\';
                *w++ = *r;
            } else {
                return l->why = "unterminated label value", NULL;
            }
            r++;
        } else {
            *w++ = *r++;
        }
    }
    l->s = r + 1;
    *w = '\0'; /* w <= r: only bytes already read are overwritten */
    return start;
}

static bool add_label(PromPage *pg, const char *name, const char *value) {
    if (!reserve(pg, (void **)&pg->labels, &pg->caplabels, pg->nlabels, sizeof *pg->labels))
        return false;
    pg->labels[pg->nlabels++] = (PromLabel){name, value};
    return true;
}

/* Reads {name="value",...} after the '{'. */
static bool read_labels(PromPage *pg, Line *l) {
    for (;;) {
        skip_space(l);
        if (*l->s == '}') return l->s++, true;
        char *name = l->s, *end = read_name(l, false);
        if (!end) return l->why = "expected a label name or '}'", false;
        skip_space(l);
        if (*l->s != '=') return l->why = "expected '=' after a label name", false;
        l->s++;
        *end = '\0';
        skip_space(l);
        const char *value = read_quoted(l);
        if (!value) return false;
        if (!add_label(pg, name, value)) return l->why = "out of memory", false;
        skip_space(l);
        if (*l->s == ',') {
            l->s++;
        } else if (*l->s != '}') {
            return l->why = "expected ',' or '}' after a label", false;
        }
    }
}

/* Cuts the next space-delimited token and returns it ("" at the end of the line). */
static char *token(Line *l) {
    skip_space(l);
    char *start = l->s;
    while (*l->s && !is_space(*l->s)) l->s++;
    if (*l->s) *l->s++ = '\0';
    return start;
}

/* Go's ParseFloat, which Prometheus uses, and strtod agree on the forms that matter:
 * decimals, exponents, NaN and [+-]Inf in any case. */
static bool parse_value(const char *tok, double *v) {
    char *end;
    errno = 0;
    *v = strtod(tok, &end);
    return *tok && !*end && (errno != ERANGE || isinf(*v) || *v == 0);
}

/* --- lines --- */

static void bad_line(PromPage *pg, size_t lineno, const char *why) {
    if (pg->bad++ == 0) snprintf(pg->first_bad, sizeof pg->first_bad, "line %zu: %s", lineno, why);
}

/* # HELP name text, # TYPE name type; other comments are ignored. */
static void comment(PromPage *pg, Line *l, size_t lineno) {
    l->s++; /* '#' */
    char *word = token(l);
    bool help = !strcmp(word, "HELP"), type = !strcmp(word, "TYPE");
    if (!help && !type) return;

    skip_space(l);
    char *name = l->s, *end = read_name(l, true);
    if (!end || (*end && !is_space(*end))) {
        bad_line(pg, lineno, "bad name in # HELP/TYPE");
        return;
    }
    if (*end) l->s++;
    *end = '\0';
    Family *f = family(pg, name, true);
    if (!f) return;
    if (type) {
        f->type = token(l);
        return;
    }
    skip_space(l);
    char *r = l->s, *w = r; /* help text escapes only \\ and \n */
    f->help = r;
    for (; *r; r++) {
        if (*r == '\\' && (r[1] == '\\' || r[1] == 'n'))
            r++, *w++ = *r == 'n' ? '\n' : '\\';
        else
            *w++ = *r;
    }
    *w = '\0';
}

static void sample(PromPage *pg, Line *l, size_t lineno) {
    size_t labels_before = pg->nlabels;
    char *name = l->s, *end = read_name(l, true);
    if (!end) {
        bad_line(pg, lineno, "expected a metric name");
        return;
    }
    char after = *end;
    if (after == '{') {
        l->s++;
        *end = '\0';
        if (!read_labels(pg, l)) {
            pg->nlabels = labels_before;
            bad_line(pg, lineno, l->why);
            return;
        }
    } else if (is_space(after)) {
        l->s++;
        *end = '\0';
    } else {
        bad_line(pg, lineno, after ? "unexpected character after the name" : "no value");
        return;
    }

    double v, ts;
    char *value = token(l), *stamp = token(l);
    const char *why = !*value                              ? "no value"
                      : !parse_value(value, &v)            ? "the value is not a number"
                      : *stamp && !parse_value(stamp, &ts) ? "the timestamp is not a number"
                      : *token(l)                          ? "unexpected text after the value"
                                                           : NULL;
    if (!why &&
        !reserve(pg, (void **)&pg->samples, &pg->capsamples, pg->nsamples, sizeof *pg->samples))
        why = "out of memory";
    if (!why && !reserve(pg, (void **)&pg->first_label, &pg->capfirst, pg->nsamples,
                         sizeof *pg->first_label))
        why = "out of memory";
    if (why) {
        pg->nlabels = labels_before;
        bad_line(pg, lineno, why);
        return;
    }
    pg->first_label[pg->nsamples] = labels_before;
    pg->samples[pg->nsamples++] = (PromSample){name, NULL, pg->nlabels - labels_before, v};
}

PromPage *promtext_parse(const char *text, size_t len) {
    PromPage *pg = calloc(1, sizeof *pg);
    if (!pg || !(pg->buf = malloc(len + 1))) return free(pg), NULL;
    memcpy(pg->buf, text, len);
    pg->buf[len] = '\0';

    char *p = pg->buf, *stop = pg->buf + len;
    for (size_t lineno = 1; p < stop && !pg->oom; lineno++) {
        char *nl = memchr(p, '\n', (size_t)(stop - p)), *next = nl ? nl + 1 : stop;
        char *eol = nl && nl > p && nl[-1] == '\r' ? nl - 1 : nl ? nl : stop;
        *eol = '\0';
        if (memchr(p, '\0', (size_t)(eol - p))) { /* a NUL inside the line cuts it short */
            bad_line(pg, lineno, "a NUL byte in the line");
        } else {
            Line l = {p, NULL};
            skip_space(&l);
            if (*l.s == '#')
                comment(pg, &l, lineno);
            else if (*l.s)
                sample(pg, &l, lineno);
        }
        p = next;
    }
    if (pg->oom) return promtext_free(pg), NULL;

    /* The labels array has stopped moving: point the samples into it. */
    for (size_t i = 0; i < pg->nsamples; i++)
        pg->samples[i].labels = pg->labels + pg->first_label[i];
    return pg;
}

void promtext_free(PromPage *pg) {
    if (!pg) return;
    free(pg->buf);
    free(pg->samples);
    free(pg->first_label);
    free(pg->labels);
    free(pg->families);
    free(pg);
}

/* --- lookups --- */

size_t promtext_count(const PromPage *pg) {
    return pg->nsamples;
}

const PromSample *promtext_sample(const PromPage *pg, size_t i) {
    return i < pg->nsamples ? &pg->samples[i] : NULL;
}

size_t promtext_bad_lines(const PromPage *pg, const char **first) {
    if (first) *first = pg->bad ? pg->first_bad : NULL;
    return pg->bad;
}

const char *promtext_type(const PromPage *pg, const char *name) {
    Family *f = family((PromPage *)pg, name, false);
    return f ? f->type : NULL;
}

const char *promtext_help(const PromPage *pg, const char *name) {
    Family *f = family((PromPage *)pg, name, false);
    return f ? f->help : NULL;
}

const char *promtext_label(const PromSample *s, const char *name) {
    for (size_t i = 0; i < s->nlabels; i++)
        if (!strcmp(s->labels[i].name, name)) return s->labels[i].value;
    return NULL;
}

static bool matches(const PromSample *s, const char *name, const PromLabel *match, size_t n) {
    if (strcmp(s->name, name)) return false;
    for (size_t i = 0; i < n; i++) {
        const char *v = promtext_label(s, match[i].name);
        if (!v || strcmp(v, match[i].value)) return false;
    }
    return true;
}

size_t promtext_sum(const PromPage *pg, const char *name, const PromLabel *match, size_t n,
                    double *sum) {
    size_t found = 0;
    double total = 0;
    for (size_t i = 0; i < pg->nsamples; i++) {
        if (!matches(&pg->samples[i], name, match, n)) continue;
        total += pg->samples[i].value;
        found++;
    }
    if (found) *sum = total;
    return found;
}

bool promtext_get(const PromPage *pg, const char *name, double *value) {
    for (size_t i = 0; i < pg->nsamples; i++) {
        if (pg->samples[i].nlabels || strcmp(pg->samples[i].name, name)) continue;
        *value = pg->samples[i].value;
        return true;
    }
    return false;
}

/* --- histogram quantiles --- */

typedef struct {
    double le, count;
} Bucket;

static int by_bound(const void *a, const void *b) {
    double x = ((const Bucket *)a)->le, y = ((const Bucket *)b)->le;
    return (x > y) - (x < y);
}

/* The quantile from buckets sorted by bound, the last being +Inf. */
static double quantile_of(const Bucket *b, size_t n, double q) {
    double rank = q * b[n - 1].count;
    size_t i = 0;
    while (i < n - 1 && b[i].count < rank) i++;
    if (i == n - 1) return b[n - 2].le; /* beyond every finite bound */
    if (i == 0 && b[0].le <= 0) return b[0].le;
    double lo = i ? b[i - 1].le : 0, below = i ? b[i - 1].count : 0;
    return lo + (b[i].le - lo) * (rank - below) / (b[i].count - below);
}

bool promtext_quantile(const PromPage *pg, const char *name, const PromLabel *match, size_t n,
                       double q, double *value) {
    char bucket_name[256];
    snprintf(bucket_name, sizeof bucket_name, "%s_bucket", name);
    Bucket *b = NULL;
    size_t nb = 0, cap = 0;

    /* Buckets of equal bounds are summed across the matching series. */
    for (size_t i = 0; i < pg->nsamples; i++) {
        const PromSample *s = &pg->samples[i];
        const char *le_text = promtext_label(s, "le");
        double le;
        if (!le_text || !matches(s, bucket_name, match, n) || !parse_value(le_text, &le) ||
            isnan(le) || isnan(s->value))
            continue;
        size_t k = 0;
        while (k < nb && b[k].le != le) k++;
        if (k == nb) {
            if (nb == cap) {
                Bucket *grown = realloc(b, (cap = cap ? 2 * cap : 32) * sizeof *b);
                if (!grown) return free(b), false;
                b = grown;
            }
            b[nb++] = (Bucket){le, 0};
        }
        b[k].count += s->value;
    }

    bool ok = nb >= 2;
    if (ok) qsort(b, nb, sizeof *b, by_bound);
    ok = ok && isinf(b[nb - 1].le) && b[nb - 1].le > 0 && b[nb - 1].count > 0 && q > 0 && q < 1;
    if (ok) *value = quantile_of(b, nb, q);
    free(b);
    return ok;
}
