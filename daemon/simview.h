/*
 * What `promptctl simulate` shows: a live terminal view of the run (the policy's quality
 * against the oracle and uniform random choice, its trend, the template shares, and
 * events such as a new pack version) and, at the end, the learning curve as an SVG file.
 * Plain ANSI escapes, no curses: the view is redrawn whole at a few frames per second.
 */
#ifndef PD_SIMVIEW_H
#define PD_SIMVIEW_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct SimView SimView;

/* names: the scenario's n templates (copied); window: decisions the shares cover;
 * total: decisions the run expects. Returns NULL when out of memory. */
SimView *simview_new(const char *title, const char *const *names, size_t n, size_t window,
                     uint64_t total);
void simview_free(SimView *v);

/* One decision for template index (n: a template the scenario does not know). */
void simview_choice(SimView *v, size_t index);

/* The running figures after `decisions` decisions: means over the last window. */
void simview_point(SimView *v, uint64_t decisions, double quality, double oracle, double uniform,
                   int64_t policy_version);

/* Something worth a line in the view and a mark on the curve (a pack reload...). */
void simview_event(SimView *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Redraws the whole view on out (a terminal). */
void simview_draw(SimView *v, FILE *out);

/* The learning curve: quality, oracle and uniform against decisions, with the events
 * marked. Returns 0, or -1 with err. */
int simview_write_svg(const SimView *v, const char *path, char *err, size_t errlen);

#endif
