/*
 * promptctl replay: re-scores logged decisions and reward events with a pack's reward()
 * to preview a change before it goes live, and compares with the pack in service.
 *
 * It joins each event to its decision by id and scores it as promptd does: the same
 * sandbox (pack_load), the reward clipped to [-clip, clip] per event, then the events of
 * one decision combined by the aggregate rule, nil and failed events left out. It does
 * not replay time: promptd ignores events that come after reward.window, and a replay
 * counts them all.
 *
 * Besides the mean reward per template it gives, for each template, an importance-
 * weighted (IPS) estimate of the mean reward had promptd always chosen that template
 * where it was eligible: the sum of reward / p over the decisions that chose it, divided
 * by all decisions, with p the probability the logging policy gave the choice. It is
 * unbiased because promptd keeps a floor on every eligible template's probability, and
 * noisy where p is small.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"
#include "hashmap.h"
#include "message.h"
#include "pack.h"
#include "pd.h"

#define ERRORS_KEPT    3
#define LINE_MAX_BYTES (16u << 20)

typedef enum { AGG_FIRST, AGG_LAST, AGG_SUM, AGG_MAX, AGG_MEAN } Aggregate;
static const char *const aggregate_names[] = {"first", "last", "sum", "max", "mean"};

/* The rewards one pack gave one decision's events. */
typedef struct {
    uint32_t events;
    double first, last, sum, max;
} Agg;

typedef struct Dec {
    char id[MSG_ID_MAX + 1];
    json_t *root;     /* the decision as logged: what reward() gets */
    size_t tmpl;      /* index into Replay.templates */
    double p;         /* the logged probability, NAN when absent or unusable */
    Agg agg[2];       /* per pack: [0] the new one, [1] the one it is compared against */
    struct Dec *next; /* in the list of all decisions, and of one hash bucket */
    struct Dec *same_hash;
} Dec;

/* A pack and what it made of the events. */
typedef struct {
    const char *dir;
    Pack *pack;
    uint64_t scored, nil, errors;
    char error[ERRORS_KEPT][800];
} Scorer;

/* Per template and pack, once the events are in. */
typedef struct {
    uint64_t rewarded;
    double sum;       /* of the aggregated rewards */
    double ips_sum;   /* of reward / p, the unrewarded counted at the default */
    double value_sum; /* of reward over the same decisions: the logged policy's value */
} Tally;

typedef struct {
    char *name;
    uint64_t decisions;
    Tally t[2];
} Template;

/* Lines of an input file that could not be used. */
typedef struct {
    uint64_t count;
    char first[ERRORS_KEPT][600];
} Unreadable;

typedef struct {
    const char *pack_dir, *against_dir, *lib, *decisions_path, *rewards_path;
    Aggregate aggregate;
    double clip, default_reward;
    bool drop_unrewarded, json;
} ReplayOptions;

typedef struct {
    ReplayOptions o;
    Scorer scorer[2];
    int npacks;
    HashMap by_id; /* id hash -> Dec chain */
    Dec *first, **tail;
    uint64_t decisions, duplicates, without_p;
    uint64_t events, orphans;
    Unreadable bad_decisions, bad_events;
    Template *templates;
    size_t ntemplates, captemplates;
    uint64_t ips_n[2]; /* decisions that enter each pack's IPS estimate */
} Replay;

static void usage(FILE *out) {
    fprintf(out, "Usage: promptctl replay --pack DIR --decisions FILE --rewards FILE [OPTION]...\n"
                 "Re-score logged decisions and reward events with DIR's reward() to preview a\n"
                 "change before it goes live; with --against, compare with another pack.\n"
                 "Inputs are JSON lines (kcat -C -f '%%s\\n'), or key<TAB>JSON lines.\n"
                 "\n"
                 "  -p, --pack DIR            the pack whose reward() scores the events\n"
                 "  -a, --against DIR         the pack to compare with (usually the one serving)\n"
                 "  -l, --lib DIR             the helper library for `require` (default: shipped)\n"
                 "  -d, --decisions FILE      the decisions topic's messages (-: stdin)\n"
                 "  -r, --rewards FILE        the reward events (-: stdin)\n"
                 "  -g, --aggregate RULE      combine a decision's events: first (default), last,\n"
                 "                            sum, max or mean, like reward.aggregate\n"
                 "  -c, --clip X              clip each event's reward to [-X, X] (default 10,\n"
                 "                            like reward.clip)\n"
                 "      --default X|drop      the reward of a decision without events, for the\n"
                 "                            policy-value estimates (default 0, like\n"
                 "                            reward.default)\n"
                 "      --json                print the figures as JSON\n"
                 "\n"
                 "Exit status: 0 done, 1 a pack failed to load, 64 usage, 66 an input cannot be\n"
                 "read.\n");
}

static int parse(int argc, char **argv, ReplayOptions *o) {
    enum { DEFAULT = 256, JSON };
    static const struct option opts[] = {{"pack", required_argument, NULL, 'p'},
                                         {"against", required_argument, NULL, 'a'},
                                         {"lib", required_argument, NULL, 'l'},
                                         {"decisions", required_argument, NULL, 'd'},
                                         {"rewards", required_argument, NULL, 'r'},
                                         {"aggregate", required_argument, NULL, 'g'},
                                         {"clip", required_argument, NULL, 'c'},
                                         {"default", required_argument, NULL, DEFAULT},
                                         {"json", no_argument, NULL, JSON},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    *o = (ReplayOptions){.clip = 10};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "p:a:l:d:r:g:c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': o->pack_dir = optarg; break;
        case 'a': o->against_dir = optarg; break;
        case 'l': o->lib = optarg; break;
        case 'd': o->decisions_path = optarg; break;
        case 'r': o->rewards_path = optarg; break;
        case 'g': {
            size_t i = 0;
            while (i < PD_ARRAY_LEN(aggregate_names) && strcmp(optarg, aggregate_names[i])) i++;
            if (i == PD_ARRAY_LEN(aggregate_names))
                return fprintf(stderr,
                               "promptctl replay: --aggregate: first, last, sum, max "
                               "or mean, not '%s'\n",
                               optarg),
                       -1;
            o->aggregate = (Aggregate)i;
            break;
        }
        case 'c':
            errno = 0;
            o->clip = strtod(optarg, &end);
            if (errno || *end || !(o->clip > 0))
                return fprintf(stderr, "promptctl replay: --clip wants a positive number\n"), -1;
            break;
        case DEFAULT:
            errno = 0;
            o->drop_unrewarded = !strcmp(optarg, "drop");
            if (!o->drop_unrewarded) o->default_reward = strtod(optarg, &end);
            if (!o->drop_unrewarded &&
                (errno || *end || end == optarg || !isfinite(o->default_reward)))
                return fprintf(stderr, "promptctl replay: --default wants a number or drop\n"), -1;
            break;
        case JSON: o->json = true; break;
        case 'h': usage(stdout); return 1;
        default: return -1;
        }
    }
    if (optind < argc || !o->pack_dir || !o->decisions_path || !o->rewards_path) {
        fprintf(stderr, "promptctl replay: give --pack, --decisions and --rewards "
                        "(see --help)\n");
        return -1;
    }
    return 0;
}

/* --- reading the inputs --- */

static void unreadable(Unreadable *u, const char *path, size_t lineno, const char *why) {
    if (u->count < ERRORS_KEPT)
        snprintf(u->first[u->count], sizeof u->first[0], "%s:%zu: %s", path, lineno, why);
    u->count++;
}

/* The JSON object of one line: the whole line, or what follows its first tab (kcat's
 * key<TAB>value). Decodes it with the rules promptd applies to a reward event (an
 * object with a string or integer id). Returns 1 with *out filled, 0 for a blank line,
 * -1 with why. */
static int read_object(char *line, RewardEvent *out, char *why, size_t whylen) {
    line[strcspn(line, "\r\n")] = '\0';
    char *s = line + strspn(line, " \t"), *tab = strchr(s, '\t');
    if (!*s) return 0;
    if ((*s == '{' || !tab) &&
        msg_decode_reward(out, s, strlen(s), LINE_MAX_BYTES, why, whylen) == MSG_OK)
        return 1;
    if (!tab) return -1;
    return msg_decode_reward(out, tab + 1, strlen(tab + 1), LINE_MAX_BYTES, why, whylen) == MSG_OK
               ? 1
               : -1;
}

static Dec *find(const Replay *r, const char *id, size_t len) {
    Dec *d = hashmap_get(&r->by_id, hashmap_hash(id, len, 0));
    while (d && strcmp(d->id, id)) d = d->same_hash;
    return d;
}

static int template_index(Replay *r, const char *name, size_t *index) {
    for (size_t i = 0; i < r->ntemplates; i++)
        if (!strcmp(r->templates[i].name, name)) return *index = i, 0;
    if (r->ntemplates == r->captemplates) {
        size_t cap = r->captemplates ? 2 * r->captemplates : 16;
        Template *grown = realloc(r->templates, cap * sizeof *grown);
        if (!grown) return -1;
        r->templates = grown, r->captemplates = cap;
    }
    Template *t = &r->templates[r->ntemplates];
    *t = (Template){.name = strdup(name)};
    if (!t->name) return -1;
    *index = r->ntemplates++;
    return 0;
}

/* Takes one decision; the first of an id wins (at-least-once may log it twice). */
static int add_decision(Replay *r, RewardEvent *ev, const char *path, size_t lineno) {
    const json_t *name = json_object_get(ev->root, "template"), *p = json_object_get(ev->root, "p");
    if (!json_is_string(name)) {
        unreadable(&r->bad_decisions, path, lineno, "a decision without a \"template\" string");
        msg_reward_free(ev);
        return 0;
    }
    if (find(r, ev->id, ev->id_len)) {
        r->duplicates++;
        msg_reward_free(ev);
        return 0;
    }
    Dec *d = calloc(1, sizeof *d);
    if (!d || template_index(r, json_string_value(name), &d->tmpl)) {
        free(d);
        msg_reward_free(ev);
        return PD_ENOMEM;
    }
    memcpy(d->id, ev->id, ev->id_len + 1);
    d->root = ev->root; /* the decision keeps the parsed object */
    ev->root = NULL;
    double pv = json_number_value(p);
    d->p = json_is_number(p) && pv > 0 && pv <= 1 ? pv : NAN;
    r->without_p += isnan(d->p);
    uint64_t h = hashmap_hash(d->id, ev->id_len, 0);
    d->same_hash = hashmap_get(&r->by_id, h);
    if (hashmap_put(&r->by_id, h, d)) return json_decref(d->root), free(d), PD_ENOMEM;
    *r->tail = d, r->tail = &d->next;
    r->templates[d->tmpl].decisions++;
    r->decisions++;
    return 0;
}

static void agg_add(Agg *a, double v) {
    if (a->events++ == 0) a->first = a->max = v;
    a->last = v;
    a->sum += v;
    if (v > a->max) a->max = v;
}

static double agg_value(const Agg *a, Aggregate rule) {
    switch (rule) {
    case AGG_FIRST: return a->first;
    case AGG_LAST: return a->last;
    case AGG_SUM: return a->sum;
    case AGG_MAX: return a->max;
    default: return a->sum / a->events;
    }
}

static void score(Replay *r, int k, Dec *d, const RewardEvent *ev) {
    Scorer *sc = &r->scorer[k];
    char err[512];
    double v;
    int rc = pack_reward(sc->pack, ev->root, d->root, &v, err, sizeof err);
    if (rc < 0) {
        if (sc->errors < ERRORS_KEPT)
            snprintf(sc->error[sc->errors], sizeof sc->error[0], "%.256s: %s", ev->id, err);
        sc->errors++;
    } else if (rc == 0) {
        sc->nil++;
    } else {
        sc->scored++;
        agg_add(&d->agg[k], v > r->o.clip ? r->o.clip : v < -r->o.clip ? -r->o.clip : v);
    }
}

static void add_event(Replay *r, RewardEvent *ev) {
    Dec *d = find(r, ev->id, ev->id_len);
    r->events++;
    if (!d) {
        r->orphans++;
        return;
    }
    for (int k = 0; k < r->npacks; k++) score(r, k, d, ev);
}

/* Reads a file of JSON lines ("-": standard input): decisions, or the events to score.
 * Returns 0, or PD_EIO (the file cannot be read) or PD_ENOMEM with err. */
static int read_lines(Replay *r, const char *path, Unreadable *bad, bool decisions, char *err,
                      size_t errlen) {
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) return snprintf(err, errlen, "%s: %s", path, strerror(errno)), PD_EIO;
    char *line = NULL, why[512];
    size_t cap = 0, lineno = 0;
    int rc = 0;
    while (rc == 0 && getline(&line, &cap, f) >= 0) {
        RewardEvent ev;
        int got = read_object(line, &ev, why, sizeof why);
        lineno++;
        if (got < 0) {
            unreadable(bad, path, lineno, why);
        } else if (got > 0 && decisions) {
            rc = add_decision(r, &ev, path, lineno);
            if (rc) snprintf(err, errlen, "out of memory");
        } else if (got > 0) {
            add_event(r, &ev);
            msg_reward_free(&ev);
        }
    }
    if (rc == 0 && ferror(f)) rc = PD_EIO, snprintf(err, errlen, "%s: %s", path, strerror(errno));
    free(line);
    if (f != stdin) fclose(f);
    return rc;
}

/* --- the figures --- */

static void tally(Replay *r) {
    for (Dec *d = r->first; d; d = d->next) {
        Template *t = &r->templates[d->tmpl];
        for (int k = 0; k < r->npacks; k++) {
            bool rewarded = d->agg[k].events > 0;
            double v = rewarded ? agg_value(&d->agg[k], r->o.aggregate) : r->o.default_reward;
            if (rewarded) t->t[k].rewarded++, t->t[k].sum += v;
            if (isnan(d->p) || (!rewarded && r->o.drop_unrewarded)) continue;
            t->t[k].ips_sum += v / d->p;
            t->t[k].value_sum += v;
            r->ips_n[k]++;
        }
    }
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const Template *)a)->name, ((const Template *)b)->name);
}

/* The "all" row for pack k: its estimate is the value of the logged choices themselves,
 * whose weights are all 1. */
static Tally total(const Replay *r, int k) {
    Tally all = {0};
    for (size_t i = 0; i < r->ntemplates; i++) {
        all.rewarded += r->templates[i].t[k].rewarded;
        all.sum += r->templates[i].t[k].sum;
        all.ips_sum += r->templates[i].t[k].value_sum;
    }
    return all;
}

static double mean(const Tally *t) {
    return t->rewarded ? t->sum / (double)t->rewarded : NAN;
}

static double ips(const Replay *r, const Tally *t, int k) {
    return r->ips_n[k] ? t->ips_sum / (double)r->ips_n[k] : NAN;
}

static void cell(double v, const char *fmt) {
    if (isnan(v))
        printf(" %10s", "-");
    else
        printf(fmt, v);
}

static void print_row(const Replay *r, const char *name, uint64_t decisions, const Tally *t) {
    printf("%-22s %9llu %9llu", name, (unsigned long long)decisions,
           (unsigned long long)t[0].rewarded);
    cell(mean(&t[0]), " %10.4f");
    if (r->npacks == 2) {
        printf(" %9llu", (unsigned long long)t[1].rewarded);
        cell(mean(&t[1]), " %10.4f");
        cell(mean(&t[0]) - mean(&t[1]), " %+10.4f");
    }
    cell(ips(r, &t[0], 0), " %10.4f");
    printf("\n");
}

static void print_scorer(const Scorer *sc, const char *which) {
    printf("  %s pack: %llu scored, %llu nil, %llu error%s\n", which,
           (unsigned long long)sc->scored, (unsigned long long)sc->nil,
           (unsigned long long)sc->errors, sc->errors == 1 ? "" : "s");
    for (uint64_t i = 0; i < sc->errors && i < ERRORS_KEPT; i++) printf("    %s\n", sc->error[i]);
}

static void print_unreadable(const Unreadable *u, const char *what) {
    if (!u->count) return;
    printf("  %llu unreadable %s line%s\n", (unsigned long long)u->count, what,
           u->count == 1 ? "" : "s");
    for (uint64_t i = 0; i < u->count && i < ERRORS_KEPT; i++) printf("    %s\n", u->first[i]);
}

static void print_text(const Replay *r) {
    static const char *const which[] = {"new", "old"};
    printf("replay of %llu decisions and %llu reward events (aggregate %s, clip %g)\n",
           (unsigned long long)r->decisions, (unsigned long long)r->events,
           aggregate_names[r->o.aggregate], r->o.clip);
    for (int k = 0; k < r->npacks; k++)
        printf("  %s pack  %s %s (%s)\n", which[k], pack_name(r->scorer[k].pack),
               pack_version(r->scorer[k].pack), r->scorer[k].dir);

    printf("\n%-22s %9s %9s %10s", "template", "decisions", "rewarded", "mean new");
    if (r->npacks == 2) printf(" %9s %10s %10s", "rewarded", "mean old", "change");
    printf(" %10s\n", "ips new");
    for (size_t i = 0; i < r->ntemplates; i++)
        print_row(r, r->templates[i].name, r->templates[i].decisions, r->templates[i].t);
    Tally all[2] = {total(r, 0), r->npacks == 2 ? total(r, 1) : (Tally){0}};
    print_row(r, "all", r->decisions, all);

    printf("\nevents: %llu read, %llu with no decision\n", (unsigned long long)r->events,
           (unsigned long long)r->orphans);
    for (int k = 0; k < r->npacks; k++) print_scorer(&r->scorer[k], which[k]);
    print_unreadable(&r->bad_events, "event");
    printf("decisions: %llu read, %llu duplicate, %llu without a logged p\n",
           (unsigned long long)r->decisions, (unsigned long long)r->duplicates,
           (unsigned long long)r->without_p);
    print_unreadable(&r->bad_decisions, "decision");
    printf("\nips: the mean reward had promptd always chosen that template where it was "
           "eligible,\nestimated from the logged p (for all: the logged choices' mean); "
           "decisions without\na reward count as ");
    if (r->o.drop_unrewarded)
        printf("nothing (dropped).\n");
    else
        printf("%g.\n", r->o.default_reward);
}

static json_t *number_or_null(double v) {
    return isnan(v) ? json_null() : json_real(v);
}

static json_t *tally_json(const Replay *r, const Tally *t, int k) {
    return json_pack("{sI so so}", "rewarded", (json_int_t)t->rewarded, "mean",
                     number_or_null(mean(t)), "ips", number_or_null(ips(r, t, k)));
}

static json_t *row_json(const Replay *r, const char *name, uint64_t decisions, const Tally *t) {
    json_t *row = json_pack("{ss sI so}", "template", name, "decisions", (json_int_t)decisions,
                            "new", tally_json(r, &t[0], 0));
    if (r->npacks == 2) {
        json_object_set_new(row, "old", tally_json(r, &t[1], 1));
        json_object_set_new(row, "change", number_or_null(mean(&t[0]) - mean(&t[1])));
    }
    return row;
}

static json_t *scorer_json(const Scorer *sc) {
    json_t *errors = json_array();
    for (uint64_t i = 0; i < sc->errors && i < ERRORS_KEPT; i++)
        json_array_append_new(errors, json_string(sc->error[i]));
    return json_pack("{ss ss ss sI sI sI so}", "pack", pack_name(sc->pack), "version",
                     pack_version(sc->pack), "dir", sc->dir, "scored", (json_int_t)sc->scored,
                     "nil", (json_int_t)sc->nil, "errors", (json_int_t)sc->errors, "error_messages",
                     errors);
}

static json_t *unreadable_json(const Unreadable *u) {
    json_t *first = json_array();
    for (uint64_t i = 0; i < u->count && i < ERRORS_KEPT; i++)
        json_array_append_new(first, json_string(u->first[i]));
    return json_pack("{sI so}", "count", (json_int_t)u->count, "first", first);
}

static int print_json(const Replay *r) {
    static const char *const which[] = {"new", "old"};
    json_t *rows = json_array();
    for (size_t i = 0; i < r->ntemplates; i++)
        json_array_append_new(
            rows, row_json(r, r->templates[i].name, r->templates[i].decisions, r->templates[i].t));
    Tally all[2] = {total(r, 0), r->npacks == 2 ? total(r, 1) : (Tally){0}};
    json_t *j = json_pack(
        "{sI sI sI sI sI so so ss sf so so so}", "decisions", (json_int_t)r->decisions,
        "duplicate_decisions", (json_int_t)r->duplicates, "decisions_without_p",
        (json_int_t)r->without_p, "events", (json_int_t)r->events, "events_without_decision",
        (json_int_t)r->orphans, "unreadable_decisions", unreadable_json(&r->bad_decisions),
        "unreadable_events", unreadable_json(&r->bad_events), "aggregate",
        aggregate_names[r->o.aggregate], "clip", r->o.clip, "default",
        r->o.drop_unrewarded ? json_string("drop") : json_real(r->o.default_reward), "templates",
        rows, "all", row_json(r, "all", r->decisions, all));
    for (int k = 0; j && k < r->npacks; k++)
        json_object_set_new(j, which[k], scorer_json(&r->scorer[k]));
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text) printf("%s\n", text);
    free(text);
    json_decref(j);
    return text ? 0 : -1;
}

/* --- the command --- */

static void replay_free(Replay *r) {
    for (Dec *d = r->first, *next; d; d = next) {
        next = d->next;
        json_decref(d->root);
        free(d);
    }
    hashmap_free(&r->by_id);
    for (size_t i = 0; i < r->ntemplates; i++) free(r->templates[i].name);
    free(r->templates);
    for (int k = 0; k < 2; k++) pack_free(r->scorer[k].pack);
}

int ctl_replay(int argc, char **argv) {
    Replay r = {0};
    r.tail = &r.first;
    int rc = parse(argc, argv, &r.o);
    if (rc) return rc > 0 ? 0 : PD_EXIT_USAGE;

    char lib[PATH_MAX], err[1024];
    if (r.o.lib)
        snprintf(lib, sizeof lib, "%s", r.o.lib);
    else
        snprintf(lib, sizeof lib, "%s/lua", pd_datadir());
    /* promptd's default Lua limits (lua.* in conf/promptd.conf). */
    SandboxLimits limits = {64 << 20, 1000000, 50, 200, 1 << 20, 0};
    const char *dirs[2] = {r.o.pack_dir, r.o.against_dir};
    r.npacks = r.o.against_dir ? 2 : 1;
    for (int k = 0; k < r.npacks; k++) {
        r.scorer[k].dir = dirs[k];
        r.scorer[k].pack = pack_load(dirs[k], lib, &limits, err, sizeof err);
        if (!r.scorer[k].pack) {
            fprintf(stderr, "promptctl: %s\n", err);
            replay_free(&r);
            return 1;
        }
    }

    rc = read_lines(&r, r.o.decisions_path, &r.bad_decisions, true, err, sizeof err);
    if (rc == 0) rc = read_lines(&r, r.o.rewards_path, &r.bad_events, false, err, sizeof err);
    if (rc) {
        fprintf(stderr, "promptctl replay: %s\n", err);
        replay_free(&r);
        return rc == PD_ENOMEM ? PD_EXIT_SOFTWARE : CTL_EXIT_NOINPUT;
    }
    tally(&r);
    qsort(r.templates, r.ntemplates, sizeof *r.templates, by_name);
    if (r.o.json)
        rc = print_json(&r) ? PD_EXIT_SOFTWARE : 0;
    else
        print_text(&r);
    replay_free(&r);
    return rc;
}
