/* bench_policy.c - the policy's act and PPO update against PyTorch in one run, and its
 * learning quality on kernel-level contextual bandits.
 *
 *   bench_policy [--quick] [--csv FILE]
 *
 * act: one prompt, 8 eligible templates, state 64 + 16 (D = 80, E = 64, H = 64, Q = 32),
 * both towers per call, and with the template tower's outputs cached as promptd caches
 * them per (pack version, policy version). update: a batch of 256 experiences, 4 epochs
 * of minibatches of 64 (16 Adam steps), no early stop. The same weights and inputs go to
 * torch (bench/policy_torch.py, spawned with /usr/bin/python3, one thread,
 * OMP_WAIT_POLICY=PASSIVE) through a temporary file. Each figure is the median of 5
 * rounds of 0.4 s (--quick: 1 round of 0.1 s). OpenBLAS runs one thread.
 *
 * Learning: for 8, 16 and 32 templates, a seeded contextual bandit (as many kinds of
 * situation as templates, each with a hidden best template, noisy rewards; template
 * descriptions unrelated to, or near, their situations) runs 10,000 act steps with a
 * PPO update every 256. It prints the mean expected reward of the last 1,000 steps as a
 * fraction of the oracle's, and writes the cumulative regret every 100 steps to FILE
 * (default build/bench/policy_regret.csv). Run from the repository root.
 */
#include "../kernels/adam.h"
#include "../kernels/policy.h"
#include "../kernels/ppo.h"
#include "../kernels/rng.h"
#include "../tests/harness.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { D = 80, E = 64, H = 64, Q = 32, K = 8, N = 256, NT = 8 };

static int rounds = 5;
static double round_seconds = 0.4;

/* Median over the rounds of the seconds one call of fn(arg) takes. */
static double per_call(void (*fn)(void *), void *arg) {
    double t[16];

    fn(arg); /* warm caches and OpenBLAS's buffers */
    for (int k = 0; k < rounds; k++) {
        long n = 0;
        double t0 = harness_seconds(), dt;
        do {
            fn(arg);
            n++;
        } while ((dt = harness_seconds() - t0) < round_seconds);
        t[k] = dt / (double)n;
    }
    qsort(t, (size_t)rounds, sizeof t[0], harness_cmp_double);
    return t[rounds / 2];
}

static void fill(float *a, size_t n, Rng *r, float scale) {
    for (size_t i = 0; i < n; i++) a[i] = (float)((2.0 * rng_uniform(r) - 1.0) * scale);
}

/* Random unit rows; with r NULL, normalises the rows in place. */
static void unit_rows(float *a, int rows, int cols, Rng *r) {
    for (int i = 0; i < rows; i++) {
        float *v = a + (size_t)i * cols;
        double s = 0;
        if (r) fill(v, (size_t)cols, r, 1);
        for (int j = 0; j < cols; j++) s += v[j] * v[j];
        for (int j = 0; j < cols; j++) v[j] /= (float)sqrt(s);
    }
}

/* --- the inputs --- */

typedef struct {
    PolicyDims d;
    float *params, *start, *m, *v, *work, *u;
    float x[D], emb[K * E], probs[K];
    float bx[N * D], bemb[NT * E], logp[N], vold[N], reward[N];
    int32_t elig[N * K], off[N + 1], action[N];
    PolicySampling sampling;
    PpoConfig cfg;
    AdamConfig acfg;
    AdamState opt;
    PpoBatch batch;
    void *uwork;
    size_t uwork_size;
    Rng rng;
    PolicyChoice last;
} Bench;

/* A batch as promptd would journal it: every template eligible, actions drawn from pi. */
static void make_batch(Bench *b) {
    for (int n = 0; n < N; n++) {
        fill(b->bx + n * D, D, &b->rng, 1);
        memset(b->bx + n * D + D - 8, 0, 8 * sizeof(float)); /* unused scalar slots */
        for (int j = 0; j < K; j++) b->elig[n * K + j] = j;
        b->off[n] = n * K;

        PolicyChoice ch;
        policy_act_emb(&ch, NULL, b->work, b->params, &b->d, b->bx + n * D, b->bemb, K,
                       &b->sampling, rng_uniform(&b->rng));
        b->action[n] = ch.index, b->logp[n] = ch.logp, b->vold[n] = ch.value;
        b->reward[n] = (float)rng_uniform(&b->rng);
    }
    b->off[N] = N * K;
    b->batch = (PpoBatch){b->bx,   b->bemb,   b->elig, b->off, b->action, b->logp,
                          b->vold, b->reward, NULL,    NULL,   N,         NT};
}

static Bench *make_bench(void) {
    Bench *b = calloc(1, sizeof *b);
    b->d = (PolicyDims){D, E, H, Q};
    size_t P = policy_param_count(&b->d);

    b->params = calloc(P, sizeof(float)), b->start = calloc(P, sizeof(float));
    b->m = calloc(P, sizeof(float)), b->v = calloc(P, sizeof(float));
    b->work = calloc(policy_act_work_floats(&b->d, K), sizeof(float));
    b->u = calloc((size_t)K * Q, sizeof(float));
    policy_init(b->params, &b->d, 1);
    memcpy(b->start, b->params, P * sizeof(float));
    rng_seed(&b->rng, 2);
    fill(b->x, D, &b->rng, 1);
    memset(b->x + 64 + 6, 0, 10 * sizeof(float)); /* 6 scalar features in use */
    unit_rows(b->emb, K, E, &b->rng);
    unit_rows(b->bemb, NT, E, &b->rng);
    policy_templates(b->u, b->params, &b->d, b->emb, K);

    b->sampling = (PolicySampling){0.7f, 0.01f, false};
    b->cfg = ppo_defaults();
    b->cfg.target_kl = 0.0f; /* every update runs its 4 epochs, as torch's does */
    b->cfg.min_prob = b->sampling.min_prob;
    b->acfg = adam_defaults();
    b->acfg.lr = 3e-3;
    make_batch(b);
    b->uwork_size = ppo_work_size(&b->d, N, b->cfg.minibatch, K, NT);
    b->uwork = malloc(b->uwork_size);
    return b;
}

static void free_bench(Bench *b) {
    free(b->params), free(b->start), free(b->m), free(b->v), free(b->work), free(b->u);
    free(b->uwork), free(b);
}

/* --- what is timed --- */

static void act_emb(void *arg) {
    Bench *b = arg;
    policy_act_emb(&b->last, b->probs, b->work, b->params, &b->d, b->x, b->emb, K, &b->sampling,
                   rng_uniform(&b->rng));
}

static void act_cached(void *arg) {
    Bench *b = arg;
    policy_act(&b->last, b->probs, b->work, b->params, &b->d, b->x, b->u, K, &b->sampling,
               rng_uniform(&b->rng));
}

/* One update from the same starting point each time. */
static void update(void *arg) {
    Bench *b = arg;
    size_t P = policy_param_count(&b->d);
    PpoStats st;

    memcpy(b->params, b->start, P * sizeof(float));
    memset(b->m, 0, P * sizeof(float));
    memset(b->v, 0, P * sizeof(float));
    b->opt = (AdamState){b->m, b->v, 0};
    if (ppo_update(&st, b->params, &b->opt, b->uwork, b->uwork_size, &b->batch, &b->d, &b->cfg,
                   &b->acfg, &b->rng) != 0) {
        fprintf(stderr, "bench_policy: ppo_update failed\n");
        exit(1);
    }
}

/* --- torch --- */

static void put_record(FILE *f, const char *name, int dtype, const void *data, int ndim,
                       const uint32_t *shape) {
    uint16_t nl = (uint16_t)strlen(name);
    uint8_t head[2] = {(uint8_t)dtype, (uint8_t)ndim};
    size_t n = 1;

    fwrite(&nl, 2, 1, f), fwrite(name, 1, nl, f), fwrite(head, 1, 2, f);
    for (int i = 0; i < ndim; i++) n *= shape[i];
    fwrite(shape, 4, (size_t)ndim, f);
    fwrite(data, dtype == 2 ? 1 : 4, n, f);
}

#define PUT1(f, name, dtype, data, n0)     put_record(f, name, dtype, data, 1, (uint32_t[]){n0})
#define PUT2(f, name, dtype, data, n0, n1) put_record(f, name, dtype, data, 2, (uint32_t[]){n0, n1})

/* The weights, the prompt and the batch, in PDREF01 (little-endian hosts only). */
static int write_inputs(const char *path, const Bench *b, double uniform) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;

    uint32_t count = 15; /* the records below */
    int32_t dims[4] = {D, E, H, Q};
    float act_cfg[3] = {b->sampling.temperature, b->sampling.min_prob, (float)uniform};
    const PpoConfig *c = &b->cfg;
    float ppo_cfg[11] = {(float)c->epochs, (float)c->minibatch, c->clip,
                         c->value_coef,    c->entropy_coef,     c->gamma,
                         c->lambda,        c->adv_eps,          c->max_grad_norm,
                         c->temperature,   c->min_prob};
    float adam_cfg[1] = {(float)b->acfg.lr};
    fwrite("PDREF01\n", 1, 8, f), fwrite(&count, 4, 1, f);
    PUT1(f, "dims", 1, dims, 4);
    PUT1(f, "params", 0, b->start, (uint32_t)policy_param_count(&b->d));
    PUT1(f, "act_x", 0, b->x, D);
    PUT2(f, "act_emb", 0, b->emb, K, E);
    PUT1(f, "act_cfg", 0, act_cfg, 3);
    PUT1(f, "ppo_cfg", 0, ppo_cfg, 11);
    PUT1(f, "adam_cfg", 0, adam_cfg, 1);
    PUT2(f, "x", 0, b->bx, N, D);
    PUT2(f, "emb", 0, b->bemb, NT, E);
    PUT1(f, "elig", 1, b->elig, N * K);
    PUT1(f, "off", 1, b->off, N + 1);
    PUT1(f, "action", 1, b->action, N);
    PUT1(f, "logp_old", 0, b->logp, N);
    PUT1(f, "v_old", 0, b->vold, N);
    PUT1(f, "reward", 0, b->reward, N);
    return fclose(f);
}

typedef struct {
    double act_us, cached_us, update_ms, p, value;
    int index;
} TorchFigures;

static int run_torch(TorchFigures *t, const Bench *b, double uniform) {
    char path[] = "/tmp/promptd-bench-policy-XXXXXX", cmd[512], line[256];
    int fd = mkstemp(path);

    if (fd < 0) return -1;
    close(fd);
    if (write_inputs(path, b, uniform) != 0) return unlink(path), -1;
    snprintf(cmd, sizeof cmd,
             "OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/policy_torch.py %s %d %g", path,
             rounds, round_seconds);
    FILE *p = popen(cmd, "r");
    int got = 0;
    while (p && fgets(line, sizeof line, p)) {
        got += sscanf(line, "act_us %lf", &t->act_us) +
               sscanf(line, "act_cached_us %lf", &t->cached_us);
        got +=
            sscanf(line, "update_ms %lf", &t->update_ms) + sscanf(line, "act_index %d", &t->index);
        got += sscanf(line, "act_p %lf", &t->p) + sscanf(line, "act_value %lf", &t->value);
    }
    int rc = p ? pclose(p) : -1;
    unlink(path);
    return rc == 0 && got == 6 ? 0 : -1;
}

/* --- learning quality --- */

typedef struct {
    int k;           /* templates, and kinds of situation */
    double fraction; /* last 1,000 steps' mean expected reward / oracle */
    double uniform;  /* the same for uniform random choice */
    double *regret;  /* [STEPS / 100] cumulative regret */
} Learning;

enum { STEPS = 10000, LAST = 1000, EVERY = 100, LK_MAX = 32, LE = 32, LS = 8 };

static double gaussian(Rng *r) {
    return sqrt(-2.0 * log(1.0 - rng_uniform(r))) * cos(2 * M_PI * rng_uniform(r));
}

/* The world: k kinds of situation, each a cluster of prompt vectors with one best
 * template (mean reward 1) among k - 1 others (mean rewards in [0.1, 0.6]); rewards
 * carry N(0, 0.2) noise. Template descriptions are either unrelated to the situations
 * (the worst case: nothing but rewards tells them apart) or, as a template's `about`
 * text should be, near the situation it serves (cosine about 0.9 to its centre). */
typedef struct {
    int k;
    float emb[LK_MAX * LE], centre[LK_MAX * LE], mu[LK_MAX][LK_MAX];
} World;

static int best_of(int c, int k) {
    return (c * 5 + 3) % k; /* 5 is prime to 8, 16 and 32: a permutation */
}

static void make_world(World *w, int k, bool aligned, Rng *r) {
    w->k = k;
    unit_rows(w->emb, k, LE, r);
    unit_rows(w->centre, k, LE, r);
    for (int c = 0; c < k; c++) {
        for (int a = 0; a < k; a++) w->mu[c][a] = 0.1f + 0.5f * (float)rng_uniform(r);
        w->mu[c][best_of(c, k)] = 1.0f;
    }
    for (int c = 0; c < k && aligned; c++) {
        float *t = w->emb + best_of(c, k) * LE;
        for (int i = 0; i < LE; i++) t[i] = w->centre[c * LE + i] + 0.5f * t[i];
        unit_rows(t, 1, LE, NULL);
    }
}

static int situation(float *x, const World *w, Rng *r) {
    int c = (int)rng_below(r, (uint32_t)w->k);
    float noise[LE];

    unit_rows(noise, 1, LE, r);
    for (int i = 0; i < LE; i++) x[i] = x[LE + i] = w->centre[c * LE + i] + 0.4f * noise[i];
    memset(x + 2 * LE, 0, LS * sizeof *x);
    x[2 * LE] = 1.0f, x[2 * LE + 1] = (float)rng_uniform(r);
    return c;
}

static void learn(Learning *out, int k, bool aligned) {
    PolicyDims d = {2 * LE + LS, LE, 64, 32};
    int Dl = d.D;
    size_t P = policy_param_count(&d);
    float *params = calloc(P, sizeof(float)), *m = calloc(P, sizeof(float));
    float *v = calloc(P, sizeof(float)),
          *work = calloc(policy_act_work_floats(&d, k), sizeof(float));
    float *xs = calloc((size_t)N * Dl, sizeof(float)), *u = calloc((size_t)k * d.Q, sizeof(float));
    float logp[N], vold[N], rew[N];
    int32_t *elig = calloc((size_t)N * k, sizeof(int32_t)), off[N + 1], action[N];
    World *w = malloc(sizeof *w);
    Rng r;

    rng_seed(&r, (uint64_t)k);
    make_world(w, k, aligned, &r);
    for (int n = 0; n <= N; n++) off[n] = n * k;
    for (int j = 0; j < N * k; j++) elig[j] = j % k;
    out->uniform = 0;
    for (int c = 0; c < k; c++) {
        for (int a = 0; a < k; a++) out->uniform += w->mu[c][a] / (k * k);
    }

    /* The floor keeps 5% of the mass spread over the templates, whatever their number. */
    PpoConfig cfg = ppo_defaults();
    cfg.min_prob = 0.05f / (float)k;
    AdamConfig acfg = adam_defaults();
    acfg.lr = 3e-3;
    AdamState opt = {m, v, 0};
    PpoBatch b = {xs, w->emb, elig, off, action, logp, vold, rew, NULL, NULL, N, k};
    size_t wsize = ppo_work_size(&d, N, cfg.minibatch, k, k);
    void *uwork = malloc(wsize);
    PolicySampling sampling = {cfg.temperature, cfg.min_prob, false};
    double late = 0, regret = 0;

    policy_init(params, &d, 7);
    policy_templates(u, params, &d, w->emb, k);
    for (int t = 0; t < STEPS; t++) {
        int n = t % N, c = situation(xs + (size_t)n * Dl, w, &r);
        PolicyChoice ch;
        policy_act(&ch, NULL, work, params, &d, xs + (size_t)n * Dl, u, k, &sampling,
                   rng_uniform(&r));
        action[n] = ch.index, logp[n] = ch.logp, vold[n] = ch.value;
        rew[n] = w->mu[c][ch.index] + 0.2f * (float)gaussian(&r);
        regret += 1.0 - w->mu[c][ch.index];
        if (t >= STEPS - LAST) late += w->mu[c][ch.index] / LAST;
        if ((t + 1) % EVERY == 0) out->regret[t / EVERY] = regret;

        /* Learn from the last N decisions; the serving side re-caches the tower. */
        if (n == N - 1) {
            PpoStats st;
            ppo_update(&st, params, &opt, uwork, wsize, &b, &d, &cfg, &acfg, &r);
            policy_templates(u, params, &d, w->emb, k);
        }
    }
    out->k = k;
    out->fraction = late;
    free(params), free(m), free(v), free(work), free(xs), free(u), free(elig), free(w);
    free(uwork);
}

static void learning_report(const char *csv) {
    enum { ROWS = STEPS / EVERY };
    static double regret[6][ROWS];
    Learning l[6];
    int ks[3] = {8, 16, 32};

    printf("\nlearning: contextual bandit, k templates and k kinds of situation, each with a\n"
           "hidden best template; 10,000 steps, PPO every 256, defaults (T 0.7, floor 5%% of\n"
           "the mass, lr 3e-3); mean expected reward of the last 1,000 steps / oracle's\n");
    printf("  %-10s %-24s %-24s %s\n", "templates", "descriptions unrelated", "descriptions near",
           "uniform");
    for (int i = 0; i < 3; i++) {
        for (int a = 0; a < 2; a++) {
            l[2 * i + a].regret = regret[2 * i + a];
            learn(&l[2 * i + a], ks[i], a == 1);
        }
        printf("  %-10d %-24.3f %-24.3f %.3f\n", ks[i], l[2 * i].fraction, l[2 * i + 1].fraction,
               l[2 * i].uniform);
    }

    FILE *f = fopen(csv, "w");
    if (!f) {
        printf("  (cannot write %s: no regret curves)\n", csv);
        return;
    }
    fprintf(f, "step,k8_unrelated,k8_near,k16_unrelated,k16_near,k32_unrelated,k32_near\n");
    for (int s = 0; s < ROWS; s++) {
        fprintf(f, "%d", (s + 1) * EVERY);
        for (int i = 0; i < 6; i++) fprintf(f, ",%.2f", regret[i][s]);
        fprintf(f, "\n");
    }
    fclose(f);
    printf("  cumulative regret every %d steps: %s\n", EVERY, csv);
}

/* --- report --- */

int main(int argc, char **argv) {
    const char *csv = "build/bench/policy_regret.csv";

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            rounds = 1, round_seconds = 0.1;
        } else if (strcmp(argv[i], "--csv") == 0 && i + 1 < argc) {
            csv = argv[++i];
        } else {
            fprintf(stderr, "usage: bench_policy [--quick] [--csv FILE]\n");
            return 64;
        }
    }
    openblas_set_num_threads(1);

    Bench *b = make_bench();
    double uniform = 0.6180339887;
    PolicyChoice fixed;
    policy_act_emb(&fixed, b->probs, b->work, b->params, &b->d, b->x, b->emb, K, &b->sampling,
                   uniform);

    double ours_act = per_call(act_emb, b) * 1e6;
    double ours_cached = per_call(act_cached, b) * 1e6;
    double ours_update = per_call(update, b) * 1e3;

    TorchFigures t;
    int have_torch = run_torch(&t, b, uniform) == 0;
    printf("policy (D = 64 + 16, E = 64, H = 64, Q = 32; one thread)\n");
    printf("  %-44s %10s %10s %8s\n", "", "promptd", "torch", "speed-up");
    printf("  %-44s %8.2f us %7.1f us %7.1fx\n", "act, 8 templates, both towers (target 6 us)",
           ours_act, have_torch ? t.act_us : NAN, have_torch ? t.act_us / ours_act : NAN);
    printf("  %-44s %8.2f us %7.1f us %7.1fx\n", "act, 8 templates, tower outputs cached",
           ours_cached, have_torch ? t.cached_us : NAN,
           have_torch ? t.cached_us / ours_cached : NAN);
    printf("  %-44s %8.3f ms %7.2f ms %7.1fx\n", "update, 256 x 4 epochs x 64 (target 3 ms)",
           ours_update, have_torch ? t.update_ms : NAN,
           have_torch ? t.update_ms / ours_update : NAN);
    if (have_torch) {
        printf("  same prompt, same uniform: template %d p %.6f V %.5f (torch: %d %.6f %.5f)\n",
               fixed.index, fixed.p, fixed.value, t.index, t.p, t.value);
    } else {
        printf("  torch: not available (/usr/bin/python3 with torch 1.13 is needed)\n");
    }
    free_bench(b);

    learning_report(csv);
    return 0;
}
