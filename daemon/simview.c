/* The simulator's live view and learning curve; see simview.h. */
#include "simview.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "pd.h"

#define EVENTS_MAX 8  /* shown in the view; all are marked on the curve */
#define BAR_WIDTH  30 /* characters of a full bar */
#define TREND_MAX  48 /* points of the trend sparkline */

typedef struct {
    uint64_t decisions;
    double quality, oracle, uniform;
} Point;

typedef struct {
    uint64_t decisions;
    double seconds;
    char text[160];
} Event;

struct SimView {
    char title[128];
    char **names;
    size_t n, window;
    uint64_t total;
    size_t *ring; /* the last `window` choices */
    size_t ring_filled, ring_next;
    uint64_t *shares; /* counts over the ring, [n + 1] */
    Point *points;
    size_t npoints, cap_points;
    Event *events;
    size_t nevents, cap_events;
    int64_t policy_version;
    uint64_t started_ms;
};

SimView *simview_new(const char *title, const char *const *names, size_t n, size_t window,
                     uint64_t total) {
    SimView *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    snprintf(v->title, sizeof v->title, "%s", title);
    v->n = n, v->window = window, v->total = total;
    v->names = calloc(n, sizeof *v->names);
    v->ring = calloc(window, sizeof *v->ring);
    v->shares = calloc(n + 1, sizeof *v->shares);
    bool ok = v->names && v->ring && v->shares;
    for (size_t i = 0; ok && i < n; i++) ok = (v->names[i] = strdup(names[i])) != NULL;
    if (!ok) {
        simview_free(v);
        return NULL;
    }
    v->started_ms = pd_mono_ms();
    return v;
}

void simview_free(SimView *v) {
    if (!v) return;
    for (size_t i = 0; v->names && i < v->n; i++) free(v->names[i]);
    free(v->names);
    free(v->ring);
    free(v->shares);
    free(v->points);
    free(v->events);
    free(v);
}

void simview_choice(SimView *v, size_t index) {
    if (index > v->n) index = v->n;
    if (v->ring_filled == v->window)
        v->shares[v->ring[v->ring_next]]--;
    else
        v->ring_filled++;
    v->ring[v->ring_next] = index;
    v->shares[index]++;
    v->ring_next = (v->ring_next + 1) % v->window;
}

static int grow(void **p, size_t *cap, size_t need, size_t each) {
    if (need <= *cap) return 0;
    size_t n = *cap ? 2 * *cap : 64;
    void *q = realloc(*p, n * each);
    if (!q) return -1;
    *p = q, *cap = n;
    return 0;
}

void simview_point(SimView *v, uint64_t decisions, double quality, double oracle, double uniform,
                   int64_t policy_version) {
    v->policy_version = policy_version;
    if (grow((void **)&v->points, &v->cap_points, v->npoints + 1, sizeof *v->points)) return;
    v->points[v->npoints++] = (Point){decisions, quality, oracle, uniform};
}

void simview_event(SimView *v, const char *fmt, ...) {
    if (grow((void **)&v->events, &v->cap_events, v->nevents + 1, sizeof *v->events)) return;
    Event *e = &v->events[v->nevents++];
    e->decisions = v->npoints ? v->points[v->npoints - 1].decisions : 0;
    e->seconds = (double)(pd_mono_ms() - v->started_ms) / 1000;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof e->text, fmt, ap);
    va_end(ap);
}

/* --- the terminal view --- */

static void bar(FILE *out, double fraction, int width) {
    static const char *const eighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    if (fraction < 0) fraction = 0;
    if (fraction > 1) fraction = 1;
    int units = (int)(fraction * width * 8 + 0.5);
    for (int i = 0; i < units / 8; i++) fputs("█", out);
    fputs(eighths[units % 8], out);
    for (int i = units / 8 + (units % 8 > 0); i < width; i++) fputc(' ', out);
}

/* The quality trend as a sparkline scaled between uniform (lowest) and oracle (top). */
static void trend(FILE *out, const SimView *v, double low, double high) {
    static const char *const levels[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    size_t from = v->npoints > TREND_MAX ? v->npoints - TREND_MAX : 0;
    for (size_t i = from; i < v->npoints; i++) {
        double f = high > low ? (v->points[i].quality - low) / (high - low) : 0;
        int k = (int)(f * 7 + 0.5);
        fputs(levels[k < 0 ? 0 : k > 7 ? 7 : k], out);
    }
}

void simview_draw(SimView *v, FILE *out) {
    double secs = (double)(pd_mono_ms() - v->started_ms) / 1000;
    const Point *p = v->npoints ? &v->points[v->npoints - 1] : &(Point){0};
    fputs("\033[H\033[2J", out);
    fprintf(out, "\033[1m%s\033[0m\n\n", v->title);
    fprintf(out, "  decisions %" PRIu64 " of %" PRIu64 "   %.0f s   policy version %" PRId64 "\n\n",
            p->decisions, v->total, secs, v->policy_version);

    double low = p->uniform * 0.9, high = p->oracle;
    fprintf(out, "  quality of the choices, last %zu decisions\n", v->window);
    fprintf(out, "    promptd  %.3f  ", p->quality);
    bar(out, high > 0 ? p->quality / high : 0, BAR_WIDTH);
    fprintf(out, "  %3.0f%% of the oracle\n", high > 0 ? 100 * p->quality / high : 0);
    fprintf(out, "    uniform  %.3f  ", p->uniform);
    bar(out, high > 0 ? p->uniform / high : 0, BAR_WIDTH);
    fprintf(out, "  %3.0f%%\n", high > 0 ? 100 * p->uniform / high : 0);
    fprintf(out, "    oracle   %.3f  ", p->oracle);
    bar(out, 1, BAR_WIDTH);
    fprintf(out, "\n    trend    ");
    trend(out, v, low, high);
    fprintf(out, "\n\n  template shares, last %zu decisions\n", v->ring_filled);
    for (size_t i = 0; i <= v->n; i++) {
        if (i == v->n && !v->shares[i]) break;
        double f = v->ring_filled ? (double)v->shares[i] / (double)v->ring_filled : 0;
        fprintf(out, "    %-20.20s %3.0f%%  ", i < v->n ? v->names[i] : "(other)", 100 * f);
        bar(out, f, BAR_WIDTH);
        fputc('\n', out);
    }
    if (v->nevents) fprintf(out, "\n  events\n");
    for (size_t i = v->nevents > EVENTS_MAX ? v->nevents - EVENTS_MAX : 0; i < v->nevents; i++)
        fprintf(out, "    %5.0f s  %s\n", v->events[i].seconds, v->events[i].text);
    fflush(out);
}

/* --- the curve --- */

enum { W = 760, H = 420, LEFT = 60, RIGHT = 20, TOP = 40, BOTTOM = 50 };

static double px(const SimView *v, uint64_t decisions) {
    uint64_t last = v->npoints ? v->points[v->npoints - 1].decisions : 1;
    return LEFT + (double)(W - LEFT - RIGHT) * (double)decisions / (double)(last ? last : 1);
}

static double py(double value, double low, double high) {
    return TOP + (double)(H - TOP - BOTTOM) * (1 - (value - low) / (high - low));
}

static void polyline(FILE *f, const SimView *v, size_t field, double low, double high,
                     const char *style) {
    fprintf(f, "<polyline fill=\"none\" %s points=\"", style);
    for (size_t i = 0; i < v->npoints; i++) {
        const Point *p = &v->points[i];
        double value = field == 0 ? p->quality : field == 1 ? p->oracle : p->uniform;
        fprintf(f, "%.1f,%.1f ", px(v, p->decisions), py(value, low, high));
    }
    fprintf(f, "\"/>\n");
}

static void escaped(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

int simview_write_svg(const SimView *v, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    double low = 1e300, high = -1e300;
    for (size_t i = 0; i < v->npoints; i++) {
        const Point *p = &v->points[i];
        double lo = p->quality < p->uniform ? p->quality : p->uniform;
        double hi = p->quality > p->oracle ? p->quality : p->oracle;
        if (lo < low) low = lo;
        if (hi > high) high = hi;
    }
    if (!v->npoints) low = 0, high = 1;
    double pad = (high - low) * 0.08 + 1e-9;
    low -= pad, high += pad;

    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n",
            W, H);
    fprintf(f,
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%d\" y=\"24\" "
            "font-size=\"15\">",
            LEFT);
    escaped(f, v->title);
    fprintf(f, ": quality of the last %zu choices</text>\n", v->window);
    for (int k = 0; k <= 4; k++) { /* y grid */
        double value = low + (high - low) * k / 4;
        fprintf(f,
                "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n",
                LEFT, W - RIGHT, py(value, low, high), py(value, low, high), LEFT - 6,
                py(value, low, high) + 4, value);
    }
    uint64_t last = v->npoints ? v->points[v->npoints - 1].decisions : 0;
    for (int k = 0; k <= 4; k++) /* x ticks */
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%" PRIu64 "</text>\n",
                px(v, last * (uint64_t)k / 4), H - BOTTOM + 18, last * (uint64_t)k / 4);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">decisions</text>\n",
            (LEFT + W - RIGHT) / 2, H - 10);
    for (size_t i = 0; i < v->nevents; i++) {
        double x = px(v, v->events[i].decisions);
        fprintf(f,
                "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\" stroke=\"#999\" "
                "stroke-dasharray=\"4 3\"/><text x=\"%.1f\" y=\"%d\" fill=\"#666\">",
                x, x, TOP, H - BOTTOM, x + 4, TOP + 14 + 14 * (int)(i % 3));
        escaped(f, v->events[i].text);
        fprintf(f, "</text>\n");
    }
    polyline(f, v, 1, low, high, "stroke=\"#2a9d8f\" stroke-dasharray=\"6 4\"");
    polyline(f, v, 2, low, high, "stroke=\"#e76f51\" stroke-dasharray=\"6 4\"");
    polyline(f, v, 0, low, high, "stroke=\"#264653\" stroke-width=\"2.5\"");
    fprintf(f,
            "<g transform=\"translate(%d,%d)\">"
            "<line x1=\"0\" x2=\"24\" y1=\"0\" y2=\"0\" stroke=\"#264653\" stroke-width=\"2.5\"/>"
            "<text x=\"30\" y=\"4\">promptd</text>"
            "<line x1=\"100\" x2=\"124\" y1=\"0\" y2=\"0\" stroke=\"#2a9d8f\" "
            "stroke-dasharray=\"6 4\"/><text x=\"130\" y=\"4\">oracle</text>"
            "<line x1=\"190\" x2=\"214\" y1=\"0\" y2=\"0\" stroke=\"#e76f51\" "
            "stroke-dasharray=\"6 4\"/><text x=\"220\" y=\"4\">uniform random</text></g>\n",
            W - 360, H - BOTTOM - 12);
    fprintf(f, "</svg>\n");
    if (fclose(f)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
