/* bench_train.c - encoder training throughput against torch, and accuracy against fastText.
 *
 *   bench_train [--train FILE] [--test FILE] [--model FILE] [--retrain] [--quick]
 *
 * 1. Throughput: the default training configuration (daemon/train.c) from seeded weights,
 *    at promptctl train's default width (128) and the shipped model's (64), without token
 *    dropout (torch has none), one OpenBLAS thread, examples per second of whole steps (P x K batch drawn, forward,
 *    batch-hard triplet loss, backward, clipping, Adam) against the same model, the same
 *    tokenised texts and the same step in torch (bench/train_torch.py, one thread,
 *    OMP_WAIT_POLICY=PASSIVE). Best and median of 5 rounds.
 * 2. Accuracy on the held-out split of the alarm generator (phrasings the training split
 *    never shows): promptd's kNN@10 and nearest-centroid accuracy of the model (the
 *    shipped default, or one trained now with --retrain) against the training split,
 *    and fastText supervised (Debian's fasttext) trained on the same training split, with
 *    its defaults and with word bigrams and character n-grams. fastText reads the same
 *    normalised text as promptd, Chinese characters spaced apart (it splits on spaces).
 *
 * Defaults: build/data/alarms-train.jsonl, build/data/alarms-test.jsonl (written by
 * tools/gen_alarms, see the Makefile), build/model/default.safetensors. Run from the
 * repository root.
 */
#include "../daemon/train.h"
#include "../kernels/tokenize.h"
#include "../tests/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *train, *test, *model;
    bool retrain, quick;
    char dir[64]; /* scratch */
} Args;

static void die(const char *what, const char *err) {
    fprintf(stderr, "bench_train: %s: %s\n", what, err);
    exit(1);
}

/* --- throughput --- */

/* The tokenised texts for torch: "PDTRAIN1", u32 n, per text i32 label, u32 n, i32 ids. */
static void write_tokens(const char *path, const TrainData *d, const TokConfig *tok,
                         size_t max_tokens) {
    FILE *f = fopen(path, "wb");
    uint32_t n = (uint32_t)train_data_count(d);
    int32_t *ids = malloc(max_tokens * sizeof *ids);
    if (!f || !ids) die(path, "cannot write");
    fwrite("PDTRAIN1", 1, 8, f);
    fwrite(&n, 4, 1, f);
    for (uint32_t i = 0; i < n; i++) {
        const char *text = train_data_text(d, i);
        size_t got = tok_text(ids, max_tokens, text, strlen(text), tok);
        uint32_t len = (uint32_t)(got < max_tokens ? got : max_tokens);
        int32_t label = train_data_label(d, i);
        fwrite(&label, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(ids, 4, len, f);
    }
    free(ids);
    if (fclose(f) != 0) die(path, "cannot write");
}

/* Examples per second of the trainer's own steps: best and median of the rounds. */
static void c_rate(Trainer *t, int steps, int rounds, double *best, double *median) {
    double r[16], loss;
    char err[256];

    for (int k = 0; k <= rounds; k++) {
        double t0 = harness_seconds();
        for (int s = 0; s < steps; s++) {
            if (train_step(t, &loss, err, sizeof err)) die("step", err);
        }
        if (k) r[k - 1] = steps * train_batch_size(t) / (harness_seconds() - t0);
    }
    qsort(r, (size_t)rounds, sizeof r[0], harness_cmp_double);
    *best = r[rounds - 1], *median = r[rounds / 2];
}

static int torch_rate(const Args *a, const char *model, const char *data, const TrainConfig *c,
                      int steps, int rounds, double *best, double *median) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 BENCH_ROUNDS=%d /usr/bin/python3 "
             "bench/train_torch.py %s %s %d %d %d",
             rounds, model, data, c->labels_per_batch, c->per_label, steps);
    FILE *p = popen(cmd, "r");
    int ok = p && fscanf(p, "%lf %lf", best, median) == 2;
    if (p) ok = pclose(p) == 0 && ok;
    (void)a;
    return ok ? 0 : -1;
}

/* d_model 0: the default architecture of promptctl train; else that width (the shipped
 * model's is 64). */
static void throughput(const Args *a, const TrainData *train, size_t n_labels, int d) {
    TrainConfig c = train_default_config();
    TrainLabels *none = train_labels_new();
    Trainer *t;
    char err[512], model[128], data[128], id[17];
    int steps = a->quick ? 4 : 12, rounds = a->quick ? 2 : 5;
    double cb, cm, tb, tm;

    c.mining = TRIPLET_HARD, c.semihard_epochs = 0, c.epochs = 1, c.token_dropout = 0.0;
    if (d) c.enc.d_model = d, c.enc.d_ff = 4 * d;
    if (train_new(&t, &c, train, NULL, n_labels, err, sizeof err)) die("trainer", err);
    snprintf(model, sizeof model, "%s/start.safetensors", a->dir);
    snprintf(data, sizeof data, "%s/tokens.bin", a->dir);
    if (train_save(t, model, none, id, err, sizeof err)) die("model", err);
    write_tokens(data, train, train_tok_config(t), c.max_tokens);

    const EncConfig *e = train_enc_config(t);
    printf("training throughput: d %d, %d layers, vocab %d, batches of %d labels x %d, one "
           "thread\n",
           e->d_model, e->n_layers, e->vocab_size, c.labels_per_batch, c.per_label);
    c_rate(t, steps, rounds, &cb, &cm);
    if (torch_rate(a, model, data, &c, steps, rounds, &tb, &tm)) {
        printf("  promptd %8.1f examples/s (median %.1f); torch failed (python3-torch?)\n", cb, cm);
    } else {
        printf("  %-10s %10s %10s\n", "", "best", "median");
        printf("  %-10s %10.1f %10.1f examples/s\n", "promptd", cb, cm);
        printf("  %-10s %10.1f %10.1f examples/s\n", "torch", tb, tm);
        printf("  ratio      %9.2fx %9.2fx   (target >= 1.5x)\n", cb / tb, cm / tm);
    }
    train_free(t);
    train_labels_free(none);
}

/* --- accuracy --- */

/* Writes fastText's input: "__label__NAME text", text normalised and CJK spaced. */
static void write_fasttext(const char *path, const TrainData *d, const TrainLabels *labels) {
    FILE *f = fopen(path, "w");
    if (!f) die(path, "cannot write");
    for (size_t i = 0; i < train_data_count(d); i++) {
        const unsigned char *s = (const unsigned char *)train_data_text(d, i);
        fprintf(f, "__label__%s ", train_labels_name(labels, (size_t)train_data_label(d, i)));
        while (*s) {
            /* Three-byte UTF-8 sequences from U+3000 on (E3..E9 lead bytes): CJK. */
            bool cjk = *s >= 0xE3 && *s <= 0xE9 && s[1] && s[2];
            if (cjk)
                fprintf(f, " %c%c%c ", s[0], s[1], s[2]), s += 3;
            else
                fputc(*s++ == '\n' ? ' ' : s[-1], f);
        }
        fputc('\n', f);
    }
    if (fclose(f) != 0) die(path, "cannot write");
}

/* Trains and tests one fastText setting; returns its accuracy, *secs its training time. */
static double fasttext_run(const Args *a, const char *opts, double *secs) {
    char cmd[1024];
    double acc = -1.0, t0 = harness_seconds();
    snprintf(cmd, sizeof cmd,
             "fasttext supervised -input %s/ft-train.txt -output %s/ft -thread 1 -verbose 0 %s",
             a->dir, a->dir, opts);
    if (system(cmd) != 0) return -1.0;
    *secs = harness_seconds() - t0;

    snprintf(cmd, sizeof cmd, "fasttext test %s/ft.bin %s/ft-test.txt", a->dir, a->dir);
    FILE *p = popen(cmd, "r");
    char line[256];
    while (p && fgets(line, sizeof line, p)) {
        if (!strncmp(line, "P@1", 3)) acc = atof(line + 3);
    }
    if (p) pclose(p);
    return acc;
}

/* kNN and centroid accuracy of a model file on test against train. */
static void promptd_scores(const char *model, const TrainData *train, const TrainData *test,
                           size_t n_labels, TrainScores *s) {
    float *params;
    EncConfig enc;
    TokConfig tok;
    char err[512], id[17];
    if (train_load_model(&params, &enc, &tok, id, model, err, sizeof err)) die(model, err);

    size_t ng = train_data_count(train), nq = train_data_count(test), P = (size_t)enc.proj_dim;
    float *gv = malloc(ng * P * sizeof *gv), *qv = malloc(nq * P * sizeof *qv);
    int32_t *gl = malloc(ng * sizeof *gl), *ql = malloc(nq * sizeof *ql);
    if (!gv || !qv || !gl || !ql) die("scores", "out of memory");
    if (train_encode(gv, NULL, train, params, &enc, &tok, 256, err, sizeof err) ||
        train_encode(qv, NULL, test, params, &enc, &tok, 256, err, sizeof err))
        die("encode", err);
    for (size_t i = 0; i < ng; i++) gl[i] = train_data_label(train, i);
    for (size_t i = 0; i < nq; i++) ql[i] = train_data_label(test, i);
    if (train_score(s, qv, ql, nq, gv, gl, ng, (int)P, 10, n_labels)) die("scores", "oom");
    printf("  promptd   %s (id %s, d %d): knn@10 %.1f%%  centroid %.1f%%  margin %+.3f\n", model,
           id, enc.d_model, 100 * s->knn, 100 * s->centroid, s->margin);
    free(params), free(gv), free(qv), free(gl), free(ql);
}

/* Trains the default configuration now, as the shipped model was trained. */
static void retrain(const Args *a, const TrainData *train, size_t n_labels, char *out) {
    TrainConfig c = train_default_config();
    TrainLabels *none = train_labels_new();
    Trainer *t;
    char err[512], id[17];
    double t0 = harness_seconds();

    snprintf(out, 128, "%s/retrained.safetensors", a->dir);
    if (train_new(&t, &c, train, NULL, n_labels, err, sizeof err) ||
        train_run(t, NULL, NULL, err, sizeof err) || train_save(t, out, none, id, err, sizeof err))
        die("retrain", err);
    printf("  promptd   trained in %.1f s (%d epochs of %zu texts, one thread)\n",
           harness_seconds() - t0, c.epochs, train_data_count(train));
    train_free(t);
    train_labels_free(none);
}

static void accuracy(const Args *a, const TrainData *train, const TrainData *test,
                     const TrainLabels *labels) {
    static const char *const settings[][2] = {
        {"defaults", ""},
        {"bigrams, subwords", "-epoch 25 -lr 0.5 -wordNgrams 2 -minn 2 -maxn 5"},
    };
    char path[128], model[128];
    TrainScores s;

    printf("\naccuracy on the held-out split: %zu texts (unseen phrasings) against %zu training "
           "texts, %zu labels\n",
           train_data_count(test), train_data_count(train), train_labels_count(labels));
    snprintf(model, sizeof model, "%s", a->model);
    if (a->retrain) retrain(a, train, train_labels_count(labels), model);
    promptd_scores(model, train, test, train_labels_count(labels), &s);

    snprintf(path, sizeof path, "%s/ft-train.txt", a->dir);
    write_fasttext(path, train, labels);
    snprintf(path, sizeof path, "%s/ft-test.txt", a->dir);
    write_fasttext(path, test, labels);
    double best = -1.0;
    for (size_t k = 0; k < sizeof settings / sizeof settings[0]; k++) {
        double secs = 0.0, acc = fasttext_run(a, settings[k][1], &secs);
        if (acc < 0) {
            printf("  fastText  not available (apt-get install fasttext)\n");
            return;
        }
        printf("  fastText  %-18s accuracy %.1f%%  trained in %.2f s\n", settings[k][0], 100 * acc,
               secs);
        best = acc > best ? acc : best;
    }
    printf("  promptd kNN %.1f%% vs best fastText %.1f%%: %s (targets: >= fastText, >= 92%%)\n",
           100 * s.knn, 100 * best, s.knn >= best && s.knn >= 0.92 ? "met" : "NOT met");
}

/* --- main --- */

static void parse(Args *a, int argc, char **argv) {
    a->train = "build/data/alarms-train.jsonl", a->test = "build/data/alarms-test.jsonl";
    a->model = "build/model/default.safetensors";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            a->quick = true;
        else if (!strcmp(argv[i], "--retrain"))
            a->retrain = true;
        else if (i + 1 < argc && !strcmp(argv[i], "--train"))
            a->train = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--test"))
            a->test = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--model"))
            a->model = argv[++i];
        else {
            fprintf(stderr, "usage: bench_train [--train FILE] [--test FILE] [--model FILE] "
                            "[--retrain] [--quick]\n");
            exit(64);
        }
    }
}

int main(int argc, char **argv) {
    Args a = {0};
    TrainLabels *labels = train_labels_new();
    TrainData *train, *test;
    char err[512], cmd[128];

    parse(&a, argc, argv);
    snprintf(a.dir, sizeof a.dir, "/tmp/pd_bench_train_XXXXXX");
    if (!labels || !mkdtemp(a.dir)) die("scratch directory", "cannot create");
    if (train_data_load(&train, a.train, labels, err, sizeof err) ||
        train_data_load(&test, a.test, labels, err, sizeof err))
        die("data", err);

    throughput(&a, train, train_labels_count(labels), 0);
    throughput(&a, train, train_labels_count(labels), 64);
    accuracy(&a, train, test, labels);

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", a.dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_train: could not remove %s\n", a.dir);
    train_data_free(train);
    train_data_free(test);
    train_labels_free(labels);
    return 0;
}
