/*
 * promptctl: the operator's companion to promptd.
 *
 *   promptctl encode [--model FILE] [--full] TEXT...   vectors and pairwise similarities
 *   promptctl check [--lib DIR] DIR                    validate a policy pack offline
 *   promptctl simulate [OPTION]...                     a scenario against promptd (ctl_simulate.c)
 *
 * Exit codes: 0 good, 1 a check failed, 64 usage error, 78 a model or pack refused.
 */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "pack.h"
#include "pd.h"
#include "train.h"

static void usage(FILE *out) {
    fprintf(out, "Usage: promptctl COMMAND [OPTION]... [ARG]...\n"
                 "The operator's companion to promptd.\n"
                 "\n"
                 "Commands:\n"
                 "  encode [--model FILE] [--full] TEXT...\n"
                 "        normalise and encode each TEXT; print its vector (the first 8\n"
                 "        dimensions, or all with --full) and the pairwise cosine similarities\n"
                 "  check [--lib DIR] PACKDIR\n"
                 "        load and check a policy pack as promptd would, without serving\n"
                 "  train DATA [OPTION]...\n"
                 "        train the encoder on labelled texts with a triplet loss, write a\n"
                 "        model promptd can load (see train --help)\n"
                 "  evaluate MODEL DATA [--reference TRAIN]\n"
                 "        how well a model separates held-out texts by label (kNN, centroid)\n"
                 "  reload [--admin TARGET] [--timeout SECONDS]\n"
                 "        reload the running promptd's configuration and pack and wait for the\n"
                 "        result: exit 0 reloaded, 1 refused (the previous ones keep serving)\n"
                 "  simulate [OPTION]...\n"
                 "        play a seeded scenario against a running promptd through Kafka and\n"
                 "        report its choices against the oracle's (see simulate --help)\n"
                 "  send [OPTION]... TEXT...\n"
                 "        send one prompt through promptd and print its decision or dead\n"
                 "        letter (see send --help)\n"
                 "  replay --pack DIR --decisions FILE --rewards FILE [--against DIR]\n"
                 "        re-score logged decisions and rewards with a pack's reward() before\n"
                 "        it goes live (see replay --help)\n"
                 "  status [--admin TARGET]\n"
                 "        one screen about a running promptd from its admin endpoint\n"
                 "  top [--admin TARGET] [--interval 1s] [--once]\n"
                 "        a live view of a running promptd; q quits\n"
                 "  help  print this help\n");
}

/* --- encode --- */

static double cosine(const float *a, const float *b, int dim) {
    double dot = 0, na = 0, nb = 0;
    for (int i = 0; i < dim; i++) dot += a[i] * b[i], na += a[i] * a[i], nb += b[i] * b[i];
    return na > 0 && nb > 0 ? dot / sqrt(na * nb) : 0;
}

static void print_vectors(char **texts, char **norms, const float *v, int n, int dim, bool full) {
    for (int i = 0; i < n; i++) {
        printf("[%d] %s\n    normalised: %s\n    vector:", i + 1, texts[i], norms[i]);
        int shown = full ? dim : (dim < 8 ? dim : 8);
        for (int j = 0; j < shown; j++) printf(" %+.4f", v[(size_t)i * dim + j]);
        printf("%s\n", shown < dim ? " ..." : "");
    }
    if (n < 2) return;
    printf("\ncosine similarity\n     ");
    for (int j = 0; j < n; j++) printf("  [%d]  ", j + 1);
    printf("\n");
    for (int i = 0; i < n; i++) {
        printf("[%d]  ", i + 1);
        for (int j = 0; j < n; j++)
            printf(" %+.3f", cosine(v + (size_t)i * dim, v + (size_t)j * dim, dim));
        printf("\n");
    }
}

static int cmd_encode(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'}, {"full", no_argument, NULL, 'f'}, {0}};
    const char *path = NULL;
    bool full = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "m:f", opts, NULL)) != -1) {
        if (opt == 'm')
            path = optarg;
        else if (opt == 'f')
            full = true;
        else
            return usage(stderr), 64;
    }
    int n = argc - optind;
    if (n < 1) return fprintf(stderr, "promptctl encode: give at least one TEXT\n"), 64;

    char err[1024];
    Model *m;
    model_set_threads(1);
    if (model_load(&m, path ? path : model_default_path(), 4096, err, sizeof err)) {
        fprintf(stderr, "promptctl: %s\n", err);
        return 78;
    }
    int dim = model_dim(m), rc = 0;
    char **norms = calloc((size_t)n, sizeof *norms);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    float *v = calloc((size_t)n * dim, sizeof *v);
    for (int i = 0; i < n && norms && lens; i++)
        if (!(norms[i] = train_normalise(argv[optind + i], strlen(argv[optind + i]), &lens[i])))
            rc = 70;
    if (rc || !v ||
        model_encode(m, (const char *const *)norms, lens, (size_t)n, v, err, sizeof err)) {
        fprintf(stderr, "promptctl: %s\n", rc ? "out of memory" : err);
        rc = 70;
    } else {
        printf("model %s (id %s, %d dimensions)\n\n", model_path(m), model_id(m), dim);
        print_vectors(argv + optind, norms, v, n, dim, full);
    }
    for (int i = 0; i < n && norms; i++) free(norms[i]);
    free(norms);
    free(lens);
    free(v);
    model_free(m);
    return rc;
}

/* --- reload --- */

/* The admin endpoint of the local promptd: --admin, else $PROMPTD_ADMIN, else the
 * systemd unit's socket if it exists, else the default metrics address. */
const char *ctl_admin_target(const char *given) {
    const char *env = getenv("PROMPTD_ADMIN");
    if (given && *given) return given;
    if (env && *env) return env;
    if (access("/run/promptd/admin.sock", F_OK) == 0) return "/run/promptd/admin.sock";
    return "127.0.0.1:9464";
}

/* What ExecReload runs: asks for a reload and waits for its result. Exit 0 reloaded,
 * 1 refused (the previous configuration and pack keep serving), 64 usage, 69 promptd
 * unreachable, 70 the reload failed, 75 no answer in time. */
static int cmd_reload(int argc, char **argv) {
    static const struct option opts[] = {
        {"admin", required_argument, NULL, 'a'}, {"timeout", required_argument, NULL, 't'}, {0}};
    const char *admin = NULL;
    double timeout_s = 35;
    int opt;
    while ((opt = getopt_long(argc, argv, "a:t:", opts, NULL)) != -1) {
        char *end = NULL;
        if (opt == 'a')
            admin = optarg;
        else if (opt == 't' && (timeout_s = strtod(optarg, &end)) > 0 &&
                 (!*end || !strcmp(end, "s")))
            continue;
        else
            return fprintf(stderr, "promptctl reload [--admin TARGET] [--timeout SECONDS]\n"), 64;
    }
    if (optind != argc) return fprintf(stderr, "promptctl reload: no arguments expected\n"), 64;

    char body[4096], err[512];
    int status = 0;
    const char *target = ctl_admin_target(admin);
    int rc = metrics_client_request(target, "POST", "/-/reload", (int)(timeout_s * 1000), &status,
                                    body, sizeof body, err, sizeof err);
    if (rc == PD_ETIMEOUT) return fprintf(stderr, "promptctl reload: %s\n", err), 75;
    if (rc)
        return fprintf(stderr, "promptctl reload: %s: %s\n", target, err),
               rc == PD_EINVAL ? 64 : 69;
    fprintf(status == 200 ? stdout : stderr, "%s%s", body,
            *body && body[strlen(body) - 1] == '\n' ? "" : "\n");
    if (status == 200) return 0;
    if (status == 422) return 1;
    if (status == 504) return 75;
    return status == 500 ? 70 : 69;
}

/* --- check --- */

static int cmd_check(int argc, char **argv) {
    static const struct option opts[] = {{"lib", required_argument, NULL, 'l'}, {0}};
    char lib[PATH_MAX];
    snprintf(lib, sizeof lib, "%s/lua", pd_datadir());
    int opt;
    while ((opt = getopt_long(argc, argv, "l:", opts, NULL)) != -1) {
        if (opt == 'l')
            snprintf(lib, sizeof lib, "%s", optarg);
        else
            return usage(stderr), 64;
    }
    if (optind != argc - 1) return fprintf(stderr, "promptctl check: give one PACKDIR\n"), 64;

    SandboxLimits limits = {64 << 20, 1000000, 50, 200, 1 << 20, 0};
    char err[1024];
    Pack *p = pack_load(argv[optind], lib, &limits, err, sizeof err);
    if (!p) {
        fprintf(stderr, "promptctl: %s\n", err);
        return 78;
    }
    printf("pack %s version %s: ok\n", pack_name(p), pack_version(p));
    for (size_t i = 0; i < pack_template_count(p); i++) {
        const PackTemplate *t = pack_template(p, i);
        printf("  template %-20s %s%s\n", t->name, t->about,
               t->has_eligible ? " (eligibility rule)" : "");
    }
    for (size_t i = 0; i < pack_feature_count(p); i++)
        printf("  feature  %s\n", pack_feature_name(p, i));
    pack_free(p);
    return 0;
}

int main(int argc, char **argv) {
    pd_log_set_level(PD_LOG_WARNING);
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 64 : 0;
    }
    if (!strcmp(argv[1], "--version")) return printf("promptctl %s\n", PD_VERSION), 0;
    if (!strcmp(argv[1], "encode")) return cmd_encode(argc - 1, argv + 1);
    if (!strcmp(argv[1], "check")) return cmd_check(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return ctl_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "evaluate")) return ctl_evaluate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "simulate")) return ctl_simulate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "send")) return ctl_send(argc - 1, argv + 1);
    if (!strcmp(argv[1], "replay")) return ctl_replay(argc - 1, argv + 1);
    if (!strcmp(argv[1], "status")) return ctl_status(argc - 1, argv + 1);
    if (!strcmp(argv[1], "top")) return ctl_top(argc - 1, argv + 1);
    if (!strcmp(argv[1], "reload")) return cmd_reload(argc - 1, argv + 1);
    fprintf(stderr, "promptctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 64;
}
