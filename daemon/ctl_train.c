/*
 * promptctl train / evaluate: option parsing, progress display and reports around
 * daemon/train.c, which does the work and prints nothing.
 *
 *   promptctl train [OPTION]... TRAIN.jsonl -o MODEL
 *   promptctl evaluate [--reference TRAIN.jsonl] [--k N] MODEL DATA.jsonl
 *
 * On a terminal, training shows a progress bar on stdout, redrawn at most ten times a
 * second; otherwise it prints one plain line per epoch, which logs and CI read better.
 */
#include "ctl.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "train.h"

enum { EXIT_USAGE = 64, EXIT_DATA = 65, EXIT_SOFTWARE = 70, EXIT_CANTCREAT = 73, EXIT_CONFIG = 78 };

static void train_usage(FILE *out) {
    fprintf(out,
            "Usage: promptctl train [OPTION]... TRAIN.jsonl -o MODEL\n"
            "Train the encoder with a triplet loss on JSON lines {\"text\", \"label\"}.\n"
            "\n"
            "  -o, --output FILE       the model to write (safetensors; a new model id)\n"
            "  --heldout FILE          held-out JSON lines: accuracy each epoch and at the end\n"
            "  --init MODEL            fine-tune this model (default: train from scratch)\n"
            "  --head-only             train the projection head alone (fast)\n"
            "  --curve FILE            learning curve as SVG (default: MODEL with .svg)\n"
            "  --epochs N              passes over the data (20)\n"
            "  --labels-per-batch P    labels in a batch (16)\n"
            "  --per-label K           examples of each label in a batch (4)\n"
            "  --lr X, --lr-min X      peak and final learning rate (1e-3, 1e-5)\n"
            "  --warmup F              fraction of steps warming up (0.05)\n"
            "  --clip X                gradient norm bound (1)\n"
            "  --margin X              triplet margin (1)\n"
            "  --mining hard|semihard  triplet mining (semihard)\n"
            "  --semihard-epochs N     with hard mining, first epochs mined semi-hard (0)\n"
            "  --recon X               weight of the head's reconstruction term (0: off)\n"
            "  --token-dropout X       chance of leaving a token out while training (0.1)\n"
            "  --seed N                weights and batches (1)\n"
            "  --max-tokens N          tokens read per text (256)\n"
            "  --threads N             OpenBLAS threads (1)\n"
            "  --quiet                 no progress, only the summary\n"
            "From scratch, the architecture: --vocab V (16384) --d C (128) --layers N (2)\n"
            "  --heads H (8) --ff F (4C) --max-len L (64) --stride S (48) --proj P (64)\n"
            "  --act gelu|relu (gelu)\n");
}

/* --- options --- */

typedef struct {
    TrainConfig cfg;
    const char *train, *heldout, *output, *curve;
    int threads;
    bool quiet, ff_set;
} TrainArgs;

static int number(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "promptctl train: --%s wants a number in [%g, %g], not '%s'\n", opt, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    O_HELDOUT = 256,
    O_INIT,
    O_HEAD,
    O_CURVE,
    O_EPOCHS,
    O_P,
    O_K,
    O_LR,
    O_LRMIN,
    O_WARMUP,
    O_CLIP,
    O_MARGIN,
    O_MINING,
    O_SEMI,
    O_RECON,
    O_SEED,
    O_MAXTOK,
    O_THREADS,
    O_QUIET,
    O_VOCAB,
    O_D,
    O_LAYERS,
    O_HEADS,
    O_FF,
    O_MAXLEN,
    O_STRIDE,
    O_PROJ,
    O_ACT,
    O_DROPOUT
};

static const struct option train_opts[] = {
    {"output", required_argument, NULL, 'o'},
    {"heldout", required_argument, NULL, O_HELDOUT},
    {"init", required_argument, NULL, O_INIT},
    {"head-only", no_argument, NULL, O_HEAD},
    {"curve", required_argument, NULL, O_CURVE},
    {"epochs", required_argument, NULL, O_EPOCHS},
    {"labels-per-batch", required_argument, NULL, O_P},
    {"per-label", required_argument, NULL, O_K},
    {"lr", required_argument, NULL, O_LR},
    {"lr-min", required_argument, NULL, O_LRMIN},
    {"warmup", required_argument, NULL, O_WARMUP},
    {"clip", required_argument, NULL, O_CLIP},
    {"margin", required_argument, NULL, O_MARGIN},
    {"mining", required_argument, NULL, O_MINING},
    {"semihard-epochs", required_argument, NULL, O_SEMI},
    {"recon", required_argument, NULL, O_RECON},
    {"seed", required_argument, NULL, O_SEED},
    {"max-tokens", required_argument, NULL, O_MAXTOK},
    {"threads", required_argument, NULL, O_THREADS},
    {"quiet", no_argument, NULL, O_QUIET},
    {"vocab", required_argument, NULL, O_VOCAB},
    {"d", required_argument, NULL, O_D},
    {"layers", required_argument, NULL, O_LAYERS},
    {"heads", required_argument, NULL, O_HEADS},
    {"ff", required_argument, NULL, O_FF},
    {"max-len", required_argument, NULL, O_MAXLEN},
    {"stride", required_argument, NULL, O_STRIDE},
    {"proj", required_argument, NULL, O_PROJ},
    {"act", required_argument, NULL, O_ACT},
    {"token-dropout", required_argument, NULL, O_DROPOUT},
    {0},
};

/* The architecture options, all integers. */
static int arch_option(TrainArgs *a, int opt, double v) {
    EncConfig *e = &a->cfg.enc;
    switch (opt) {
    case O_VOCAB: e->vocab_size = (int)v; return 0;
    case O_D: e->d_model = (int)v; return 0;
    case O_LAYERS: e->n_layers = (int)v; return 0;
    case O_HEADS: e->n_heads = (int)v; return 0;
    case O_FF: e->d_ff = (int)v, a->ff_set = true; return 0;
    case O_MAXLEN: e->max_len = (int)v; return 0;
    case O_STRIDE: e->chunk_stride = (int)v; return 0;
    case O_PROJ: e->proj_dim = (int)v; return 0;
    default: return -1;
    }
}

/* Options that take a number; lo and hi bound it. */
static int numeric_option(TrainArgs *a, int opt, const char *arg) {
    TrainConfig *c = &a->cfg;
    const char *name = "";
    double v, lo = 0, hi = 1e9;

    for (const struct option *o = train_opts; o->name; o++)
        if (o->val == opt) name = o->name;
    if (opt == O_LR || opt == O_LRMIN) hi = 10;
    if (opt == O_DROPOUT || opt == O_WARMUP) hi = 0.9;
    if (number(name, arg, lo, hi, &v)) return -1;
    switch (opt) {
    case O_EPOCHS: c->epochs = (int)v; return 0;
    case O_P: c->labels_per_batch = (int)v; return 0;
    case O_K: c->per_label = (int)v; return 0;
    case O_LR: c->lr = v; return 0;
    case O_LRMIN: c->lr_min = v; return 0;
    case O_WARMUP: c->warmup = v; return 0;
    case O_CLIP: c->clip = (float)v; return 0;
    case O_MARGIN: c->margin = (float)v; return 0;
    case O_SEMI: c->semihard_epochs = (int)v; return 0;
    case O_RECON: c->recon_weight = (float)v; return 0;
    case O_DROPOUT: c->token_dropout = v; return 0;
    case O_SEED: c->seed = (uint64_t)v; return 0;
    case O_MAXTOK: c->max_tokens = (size_t)v; return 0;
    case O_THREADS: a->threads = (int)v; return 0;
    default: return arch_option(a, opt, v);
    }
}

static int train_option(TrainArgs *a, int opt, const char *arg) {
    switch (opt) {
    case 'o': a->output = arg; return 0;
    case O_HELDOUT: a->heldout = arg; return 0;
    case O_INIT: a->cfg.init_path = arg; return 0;
    case O_HEAD: a->cfg.head_only = true; return 0;
    case O_CURVE: a->curve = arg; return 0;
    case O_QUIET: a->quiet = true; return 0;
    case O_ACT:
        if (strcmp(arg, "gelu") && strcmp(arg, "relu")) break;
        a->cfg.enc.activation = strcmp(arg, "relu") ? ENC_ACT_GELU : ENC_ACT_RELU;
        return 0;
    case O_MINING:
        if (strcmp(arg, "hard") && strcmp(arg, "semihard")) break;
        a->cfg.mining = strcmp(arg, "hard") ? TRIPLET_SEMIHARD : TRIPLET_HARD;
        return 0;
    default:
        if (opt >= O_HELDOUT) return numeric_option(a, opt, arg);
        train_usage(stderr);
        return -1;
    }
    fprintf(stderr, "promptctl train: bad value '%s'\n", arg);
    return -1;
}

static int parse_train(TrainArgs *a, int argc, char **argv) {
    int opt;

    a->cfg = train_default_config();
    a->threads = 1;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "o:", train_opts, NULL)) != -1) {
        if (opt == '?' || train_option(a, opt, optarg)) return -1;
    }
    if (optind != argc - 1 || !a->output) {
        fprintf(stderr, "promptctl train: give one TRAIN file and -o MODEL\n");
        return -1;
    }
    a->train = argv[optind];
    if (!a->ff_set) a->cfg.enc.d_ff = 4 * a->cfg.enc.d_model;
    a->cfg.tok = tok_default_config((uint32_t)a->cfg.enc.vocab_size);
    return 0;
}

/* --- progress --- */

typedef struct {
    bool tty, quiet;
    double last; /* when the bar was last drawn */
} Display;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void print_heldout(const TrainProgress *p) {
    if (p->heldout_knn >= 0.0)
        printf("  held-out knn %.1f%% centroid %.1f%%", 100 * p->heldout_knn,
               100 * p->heldout_centroid);
}

static void draw_bar(const TrainProgress *p) {
    char bar[31];
    int fill = (int)(30 * p->step_in_epoch / (p->steps_per_epoch ? p->steps_per_epoch : 1));

    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    printf("\repoch %d/%d [%s] loss %.4f active %3.0f%% %6.0f ex/s lr %.1e", p->epoch, p->epochs,
           bar, p->loss, 100 * p->active, p->examples_per_s, p->lr);
    fflush(stdout);
}

static int progress(const TrainProgress *p, void *ctx) {
    Display *d = ctx;

    if (d->quiet) return 0;
    if (!p->epoch_end) {
        if (d->tty && now_s() - d->last >= 0.1) draw_bar(p), d->last = now_s();
        return 0;
    }
    if (d->tty) {
        draw_bar(p);
        print_heldout(p);
        printf("\n");
    } else {
        printf("epoch %d/%d loss %.4f active %.0f%% %.0f examples/s lr %.2e", p->epoch, p->epochs,
               p->loss, 100 * p->active, p->examples_per_s, p->lr);
        print_heldout(p);
        printf("\n");
    }
    fflush(stdout);
    return 0;
}

/* --- train --- */

typedef struct {
    TrainLabels *labels;
    TrainData *train, *held;
    Trainer *t;
} Run;

static void run_free(Run *r) {
    train_free(r->t);
    train_data_free(r->train);
    train_data_free(r->held);
    train_labels_free(r->labels);
}

static void print_scores(const char *what, const TrainScores *s, int k) {
    printf("  %-10s knn@%d %5.1f%%  centroid %5.1f%%  margin %+.3f\n", what, k, 100 * s->knn,
           100 * s->centroid, s->margin);
}

/* The SVG's path: --curve, or the model's with its extension replaced by .svg. */
static void curve_path(char *out, size_t cap, const TrainArgs *a) {
    if (a->curve) {
        snprintf(out, cap, "%s", a->curve);
        return;
    }
    snprintf(out, cap, "%s", a->output);
    char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (dot && (!slash || dot > slash)) *dot = '\0';
    size_t n = strlen(out);
    snprintf(out + n, cap - n, ".svg");
}

static int finish(Run *r, const TrainArgs *a, double seconds) {
    char err[1024], id[17], svg[4096];
    TrainScores trained, untrained;

    if (r->held && train_final_scores(r->t, &trained, &untrained, err, sizeof err)) {
        fprintf(stderr, "promptctl train: %s\n", err);
        return EXIT_SOFTWARE;
    }
    if (train_save(r->t, a->output, r->labels, id, err, sizeof err)) {
        fprintf(stderr, "promptctl train: %s\n", err);
        return EXIT_CANTCREAT;
    }
    curve_path(svg, sizeof svg, a);
    if (train_write_svg(r->t, svg, err, sizeof err)) {
        fprintf(stderr, "promptctl train: %s\n", err);
        return EXIT_CANTCREAT;
    }
    printf("wrote %s (model id %s) in %.1f s; learning curve %s\n", a->output, id, seconds, svg);
    if (r->held) {
        printf("held-out (%zu texts against %zu training texts):\n", trained.queries,
               train_data_count(r->train));
        print_scores("trained", &trained, a->cfg.knn_k);
        print_scores("untrained", &untrained, a->cfg.knn_k);
    }
    return 0;
}

int ctl_train(int argc, char **argv) {
    TrainArgs a = {0};
    Run r = {0};
    char err[1024];
    int rc = EXIT_DATA;

    if (parse_train(&a, argc, argv)) return EXIT_USAGE;
    model_set_threads(a.threads);
    if (!(r.labels = train_labels_new())) return EXIT_SOFTWARE;
    if (train_data_load(&r.train, a.train, r.labels, err, sizeof err) ||
        (a.heldout && train_data_load(&r.held, a.heldout, r.labels, err, sizeof err)))
        goto fail;

    double t0 = now_s();
    rc = EXIT_CONFIG;
    if (train_new(&r.t, &a.cfg, r.train, r.held, train_labels_count(r.labels), err, sizeof err))
        goto fail;
    Display d = {isatty(STDOUT_FILENO) == 1, a.quiet, 0.0};
    printf("training on %zu texts, %zu labels%s\n", train_data_count(r.train),
           train_labels_count(r.labels), a.cfg.head_only ? " (projection head only)" : "");
    rc = EXIT_SOFTWARE;
    if (train_run(r.t, progress, &d, err, sizeof err)) goto fail;
    rc = finish(&r, &a, now_s() - t0);
    run_free(&r);
    return rc;

fail:
    fprintf(stderr, "promptctl train: %s\n", err);
    run_free(&r);
    return rc;
}

/* --- evaluate --- */

static void evaluate_usage(FILE *out) {
    fprintf(out, "Usage: promptctl evaluate [--reference TRAIN.jsonl] [--k N] [--max-tokens N] "
                 "MODEL DATA.jsonl\n"
                 "kNN (cosine) and nearest-centroid accuracy and the mean margin of MODEL on\n"
                 "labelled DATA, and the same for an untrained model of its architecture.\n"
                 "Without --reference each text is scored against the others of DATA.\n");
}

typedef struct {
    const char *reference, *model, *data;
    int k;
    size_t max_tokens;
} EvalArgs;

static int parse_evaluate(EvalArgs *a, int argc, char **argv) {
    static const struct option opts[] = {{"reference", required_argument, NULL, 'r'},
                                         {"k", required_argument, NULL, 'k'},
                                         {"max-tokens", required_argument, NULL, 'm'},
                                         {0}};
    int opt;
    double v;

    a->k = 10, a->max_tokens = 256;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "r:k:m:", opts, NULL)) != -1) {
        if (opt == 'r') {
            a->reference = optarg;
        } else if ((opt == 'k' || opt == 'm') &&
                   number(opt == 'k' ? "k" : "max-tokens", optarg, 1, 1e6, &v) == 0) {
            if (opt == 'k')
                a->k = (int)v;
            else
                a->max_tokens = (size_t)v;
        } else {
            evaluate_usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 2) return evaluate_usage(stderr), -1;
    a->model = argv[optind], a->data = argv[optind + 1];
    return 0;
}

/* Scores the weights params on the queries against the gallery (or the queries alone). */
static int score_model(TrainScores *s, const float *params, const EncConfig *enc,
                       const TokConfig *tok, const TrainData *q, const TrainData *g,
                       const EvalArgs *a, size_t n_labels, char *err, size_t errlen) {
    size_t P = (size_t)enc->proj_dim, nq = train_data_count(q), ng = g ? train_data_count(g) : 0;
    float *qv = malloc(nq * P * sizeof *qv), *gv = g ? malloc(ng * P * sizeof *gv) : NULL;
    int32_t *ql = malloc(nq * sizeof *ql), *gl = g ? malloc(ng * sizeof *gl) : NULL;
    int rc = -1;

    if (!qv || !ql || (g && (!gv || !gl))) {
        snprintf(err, errlen, "out of memory");
    } else if (train_encode(qv, NULL, q, params, enc, tok, a->max_tokens, err, errlen) == 0 &&
               (!g ||
                train_encode(gv, NULL, g, params, enc, tok, a->max_tokens, err, errlen) == 0)) {
        for (size_t i = 0; i < nq; i++) ql[i] = train_data_label(q, i);
        for (size_t i = 0; i < ng; i++) gl[i] = train_data_label(g, i);
        rc = train_score(s, qv, ql, nq, g ? gv : qv, g ? gl : ql, g ? ng : nq, (int)P, a->k,
                         n_labels);
        if (rc) snprintf(err, errlen, "out of memory");
    }
    free(qv), free(gv), free(ql), free(gl);
    return rc;
}

int ctl_evaluate(int argc, char **argv) {
    EvalArgs a = {0};
    TrainLabels *labels = NULL;
    TrainData *data = NULL, *ref = NULL;
    float *params = NULL, *random = NULL;
    EncConfig enc;
    TokConfig tok;
    char err[1024], id[17];
    TrainScores trained, untrained;
    int rc = EXIT_CONFIG;

    if (parse_evaluate(&a, argc, argv)) return EXIT_USAGE;
    model_set_threads(1);
    if (train_load_model(&params, &enc, &tok, id, a.model, err, sizeof err)) goto fail;
    rc = EXIT_DATA;
    if (!(labels = train_labels_new()) ||
        (a.reference && train_data_load(&ref, a.reference, labels, err, sizeof err)) ||
        train_data_load(&data, a.data, labels, err, sizeof err))
        goto fail;

    /* The untrained model: seeded random weights of the same architecture (seed 1, as
     * tools/make_model's default). */
    rc = EXIT_SOFTWARE;
    size_t n_labels = train_labels_count(labels);
    if (!(random = malloc(enc_param_count(&enc) * sizeof *random))) goto fail;
    enc_init_random(random, &enc, 1, 0);
    if (score_model(&trained, params, &enc, &tok, data, ref, &a, n_labels, err, sizeof err) ||
        score_model(&untrained, random, &enc, &tok, data, ref, &a, n_labels, err, sizeof err))
        goto fail;

    printf("model %s (id %s): %zu texts, %zu labels, %s\n", a.model, id, train_data_count(data),
           n_labels, a.reference ? "against the reference set" : "each against the others");
    print_scores("model", &trained, a.k);
    print_scores("untrained", &untrained, a.k);
    rc = 0;
    goto done;

fail:
    fprintf(stderr, "promptctl evaluate: %s\n", err);
done:
    free(params);
    free(random);
    train_data_free(data);
    train_data_free(ref);
    train_labels_free(labels);
    return rc;
}
