/* bench_encoder.c - encoder throughput against PyTorch, per thread, in one run.
 *
 *   bench_encoder [--model FILE] [--quick]
 *
 * Runs the same weights and inputs through kernels/encoder.c and through torch
 * (bench/encoder_torch.py, spawned with /usr/bin/python3, one thread,
 * OMP_WAIT_POLICY=PASSIVE) and prints sequences/s, the ratio to torch, GFLOP/s, the
 * fraction of the FMA peak and of the sgemm ceiling (both measured here, now), and
 * the cost of one prompt from 8 to 4,096 tokens. OpenBLAS runs one thread. Without
 * --model the default model (tools/make_model's defaults) is built in memory and
 * handed to torch through a temporary file. Each rate is the best of 5 rounds of
 * 0.4 s (--quick: 1 round of 0.1 s), with the ratio of the medians beside it.
 * Run from the repository root.
 */
#include "../kernels/encoder.h"
#include "../kernels/safetensors.h"
#include "../kernels/tokenize.h"
#include "../tests/harness.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

static int rounds = 5;
static double round_seconds = 0.4;

/* Calls per second of fn(arg): the best round, and the median in *median. The
 * machines are shared, so other loads only ever slow a round down: the best round
 * is the figure of the code, the median that of the afternoon. */
static double rate2(void (*fn)(void *), void *arg, double *median) {
    double r[16];
    fn(arg); /* warm caches and OpenBLAS's buffers */
    for (int k = 0; k < rounds; k++) {
        long n = 0;
        double t0 = harness_seconds(), dt;
        do {
            fn(arg);
            n++;
            dt = harness_seconds() - t0;
        } while (dt < round_seconds);
        r[k] = (double)n / dt;
    }
    qsort(r, (size_t)rounds, sizeof r[0], harness_cmp_double);
    if (median) *median = r[rounds / 2];
    return r[rounds - 1];
}

static double rate(void (*fn)(void *), void *arg) {
    return rate2(fn, arg, NULL);
}

/* --- the machine's ceilings --- */

#if defined(__x86_64__) && defined(__GNUC__)
/* 12 independent FMA chains of 8 lanes: enough to cover the FMA latency on both
 * ports of the cores here (AVX2; no AVX-512 on these AMD EPYC machines). */
__attribute__((target("avx2,fma"))) static void fma_avx2(void *arg) {
    long iters = *(long *)arg;
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    __m256 x0 = a, x1 = a, x2 = a, x3 = a, x4 = a, x5 = a, x6 = a, x7 = a, x8 = a, x9 = a, x10 = a,
           x11 = a;
    for (long i = 0; i < iters; i++) {
        x0 = _mm256_fmadd_ps(x0, a, b), x1 = _mm256_fmadd_ps(x1, a, b);
        x2 = _mm256_fmadd_ps(x2, a, b), x3 = _mm256_fmadd_ps(x3, a, b);
        x4 = _mm256_fmadd_ps(x4, a, b), x5 = _mm256_fmadd_ps(x5, a, b);
        x6 = _mm256_fmadd_ps(x6, a, b), x7 = _mm256_fmadd_ps(x7, a, b);
        x8 = _mm256_fmadd_ps(x8, a, b), x9 = _mm256_fmadd_ps(x9, a, b);
        x10 = _mm256_fmadd_ps(x10, a, b), x11 = _mm256_fmadd_ps(x11, a, b);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
                             _mm256_add_ps(_mm256_add_ps(x4, x5), _mm256_add_ps(x6, x7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(x8, x9), _mm256_add_ps(x10, x11)));
    volatile float sink = _mm256_cvtss_f32(s);
    (void)sink;
}

/* The same with 16-lane registers, where the CPU has AVX-512. */
__attribute__((target("avx512f"))) static void fma_avx512(void *arg) {
    long iters = *(long *)arg;
    __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    __m512 x0 = a, x1 = a, x2 = a, x3 = a, x4 = a, x5 = a, x6 = a, x7 = a, x8 = a, x9 = a, x10 = a,
           x11 = a;
    for (long i = 0; i < iters; i++) {
        x0 = _mm512_fmadd_ps(x0, a, b), x1 = _mm512_fmadd_ps(x1, a, b);
        x2 = _mm512_fmadd_ps(x2, a, b), x3 = _mm512_fmadd_ps(x3, a, b);
        x4 = _mm512_fmadd_ps(x4, a, b), x5 = _mm512_fmadd_ps(x5, a, b);
        x6 = _mm512_fmadd_ps(x6, a, b), x7 = _mm512_fmadd_ps(x7, a, b);
        x8 = _mm512_fmadd_ps(x8, a, b), x9 = _mm512_fmadd_ps(x9, a, b);
        x10 = _mm512_fmadd_ps(x10, a, b), x11 = _mm512_fmadd_ps(x11, a, b);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x0, x1), _mm512_add_ps(x2, x3)),
                             _mm512_add_ps(_mm512_add_ps(x4, x5), _mm512_add_ps(x6, x7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(x8, x9), _mm512_add_ps(x10, x11)));
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
}
#endif

/* FLOP/s of one core's widest FMA loop, and its name. */
static double fma_peak(const char **isa) {
    long iters = 1000000;
    *isa = "none (not x86-64)";
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f")) {
        *isa = "AVX-512 FMA loop";
        return rate(fma_avx512, &iters) * (double)iters * 12 * 16 * 2;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *isa = "AVX2 FMA loop";
        return rate(fma_avx2, &iters) * (double)iters * 12 * 8 * 2;
    }
#endif
    return 0.0;
}

typedef struct {
    int n;
    float *a, *b, *c;
} Gemm;

static void gemm_call(void *arg) {
    Gemm *g = arg;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b,
                g->n, 0.0f, g->c, g->n);
}

static double sgemm_ceiling(void) {
    Gemm g = {.n = 2048};
    size_t n2 = (size_t)g.n * (size_t)g.n;
    g.a = malloc(n2 * sizeof(float)), g.b = malloc(n2 * sizeof(float));
    g.c = malloc(n2 * sizeof(float));
    for (size_t i = 0; i < n2; i++) g.a[i] = (float)(i % 13) * 0.1f, g.b[i] = (float)(i % 7);
    double r = rate(gemm_call, &g) * 2.0 * g.n * (double)n2;
    free(g.a), free(g.b), free(g.c);
    return r;
}

/* --- inputs --- */

typedef struct {
    const char *name;
    size_t B;
    size_t *off; /* B + 1 */
    int32_t *ids;
} Case;

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* B prompts of lengths lo..hi tokens with uniform random ids. */
static Case make_case(const char *name, size_t B, size_t lo, size_t hi, int vocab, uint64_t seed) {
    Case c = {.name = name, .B = B, .off = malloc((B + 1) * sizeof(size_t))};
    c.off[0] = 0;
    for (size_t b = 0; b < B; b++) c.off[b + 1] = c.off[b] + lo + lcg(&seed) % (hi - lo + 1);
    c.ids = malloc(c.off[B] * sizeof(int32_t));
    for (size_t i = 0; i < c.off[B]; i++)
        c.ids[i] = 1 + (int32_t)(lcg(&seed) % (uint64_t)(vocab - 1));
    return c;
}

/* Matrix-product FLOPs of one encode, from the chunk plan (attention included). */
static double case_flops(const Case *c, const EncConfig *cfg) {
    double C = cfg->d_model, F = cfg->d_ff, flops = 0.0;
    for (size_t b = 0; b < c->B; b++) {
        size_t n = c->off[b + 1] - c->off[b], chunks = enc_chunk_count(n, cfg);
        for (size_t k = 0; k < chunks; k++) {
            size_t start = k * (size_t)cfg->chunk_stride;
            double N =
                (double)(n - start < (size_t)cfg->max_len ? n - start : (size_t)cfg->max_len);
            flops += cfg->n_layers * (2 * N * C * (3 * C + C + 2 * F) + 4 * N * N * C);
        }
        flops += 2 * C * cfg->proj_dim;
    }
    return flops;
}

/* --- the C encoder --- */

typedef struct {
    const Case *c;
    EncWork *ws;
    const StModel *m;
    float *out;
} Job;

static void encode_call(void *arg) {
    Job *j = arg;
    if (enc_encode(j->out, j->ws, j->c->ids, j->c->off, j->c->B, &j->m->w, &j->m->enc, 0) != 0) {
        fprintf(stderr, "bench_encoder: enc_encode failed on %s\n", j->c->name);
        exit(1);
    }
}

/* --- torch --- */

static void write_cases(const char *path, const Case *cases, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    uint32_t u = (uint32_t)n;
    fwrite("PDBENCH1", 1, 8, f);
    fwrite(&u, 4, 1, f);
    for (size_t k = 0; k < n; k++) {
        const Case *c = &cases[k];
        u = (uint32_t)strlen(c->name);
        fwrite(&u, 4, 1, f);
        fwrite(c->name, 1, u, f);
        u = (uint32_t)c->B;
        fwrite(&u, 4, 1, f);
        for (size_t b = 0; b < c->B; b++) {
            u = (uint32_t)(c->off[b + 1] - c->off[b]);
            fwrite(&u, 4, 1, f);
        }
        fwrite(c->ids, sizeof(int32_t), c->off[c->B], f);
    }
    fclose(f);
}

/* Runs encoder_torch.py; fills rates[k] (0 when missing) and the output vectors. */
static void run_torch(const char *model, const Case *cases, size_t n, double *rates,
                      double *medians, char variants[][16], float *outs, size_t P) {
    char dir[] = "/tmp/pd_bench_XXXXXX", cmd[1024], line[256];
    if (!mkdtemp(dir)) return;
    char cpath[64], opath[64];
    snprintf(cpath, sizeof cpath, "%s/cases", dir);
    snprintf(opath, sizeof opath, "%s/out", dir);
    write_cases(cpath, cases, n);

    snprintf(cmd, sizeof cmd,
             "OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 BENCH_ROUNDS=%d "
             "BENCH_ROUND_SECONDS=%g /usr/bin/python3 bench/encoder_torch.py %s %s %s",
             rounds, round_seconds, model, cpath, opath);
    FILE *p = popen(cmd, "r");
    while (p && fgets(line, sizeof line, p)) {
        char name[64], variant[16];
        double r, med;
        if (sscanf(line, "%63s %lf %lf %15s", name, &r, &med, variant) != 4) continue;
        for (size_t k = 0; k < n; k++) {
            if (strcmp(name, cases[k].name) != 0) continue;
            rates[k] = r, medians[k] = med;
            snprintf(variants[k], 16, "%s", variant);
        }
    }
    if (p) pclose(p);

    FILE *f = fopen(opath, "rb");
    size_t total = 0;
    for (size_t k = 0; k < n; k++) total += cases[k].B * P;
    if (!f || fread(outs, sizeof(float), total, f) != total) memset(rates, 0, n * sizeof *rates);
    if (f) fclose(f);
    remove(cpath), remove(opath), rmdir(dir);
}

/* --- main --- */

typedef struct {
    const char *model_path;
    unsigned char *file;
    size_t len;
    char tmp[64];
} ModelFile;

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len);
    if (b && fread(b, 1, *len, f) != *len) free(b), b = NULL;
    fclose(f);
    return b;
}

/* The default model, built in memory and written to a temporary file for torch. */
static void default_model(ModelFile *mf) {
    EncConfig cfg = enc_default_config(32768);
    TokConfig tok = tok_default_config(32768);
    size_t n = enc_param_count(&cfg), hlen;
    float *params = malloc(n * sizeof *params);
    char *head, err[256];

    enc_init_random(params, &cfg, 1, 0);
    if (st_header(&head, &hlen, &cfg, &tok, params, err, sizeof err)) {
        fprintf(stderr, "bench_encoder: %s\n", err);
        exit(1);
    }
    mf->len = hlen + n * sizeof *params;
    mf->file = malloc(mf->len);
    memcpy(mf->file, head, hlen);
    memcpy(mf->file + hlen, params, n * sizeof *params);
    free(head), free(params);

    snprintf(mf->tmp, sizeof mf->tmp, "/tmp/pd_bench_model_XXXXXX");
    int fd = mkstemp(mf->tmp);
    if (fd < 0 || write(fd, mf->file, mf->len) != (ssize_t)mf->len) mf->tmp[0] = '\0';
    if (fd >= 0) close(fd);
    mf->model_path = mf->tmp;
}

/* Everything a measurement needs: the model, one workspace, the ceilings. */
typedef struct {
    StModel m;
    EncWork ws;
    float *out;
    double peak, gemm; /* FLOP/s of the FMA loop and of a 2048^3 sgemm */
} Bench;

/* One row of the throughput table: promptd's rate, and torch's when it ran. */
static void throughput_row(Bench *b, const Case *c, const char *label, double target,
                           double torch_rate, double torch_median, const float *torch_out) {
    size_t P = (size_t)b->m.enc.proj_dim;
    Job j = {c, &b->ws, &b->m, b->out};
    double median, calls = rate2(encode_call, &j, &median), seqs = calls * (double)c->B;
    double flops = case_flops(c, &b->m.enc), gflops = calls * flops * 1e-9, diff = 0.0;

    encode_call(&j);
    for (size_t i = 0; i < c->B * P; i++) {
        double d = fabs((double)b->out[i] - torch_out[i]);
        diff = d > diff ? d : diff;
    }
    char ratio[32] = "-", ceiling[32] = "-", dstr[16] = "-", mratio[16] = "-";
    if (torch_rate > 0) {
        double r = seqs / torch_rate;
        snprintf(mratio, sizeof mratio, "%.2fx", median * (double)c->B / torch_median);
        snprintf(ratio, sizeof ratio, "%.2fx (>=%.1f) %s", r, target, r >= target ? "ok" : "MISS");
        /* What the ratio would be if every FLOP ran at the 2048^3 sgemm rate. */
        snprintf(ceiling, sizeof ceiling, "%.2fx", b->gemm / flops * (double)c->B / torch_rate);
        snprintf(dstr, sizeof dstr, "%.1e", diff);
    }
    printf("%-20s %10.1f %9.1f %17s %8s %8.1f %5.0f%% %6.0f%% %8s %8s\n", label, seqs, torch_rate,
           ratio, mratio, gflops, b->peak > 0 ? 100 * gflops * 1e9 / b->peak : 0.0,
           100 * gflops * 1e9 / b->gemm, ceiling, dstr);
}

/* Batch 1 and batch 32 against torch, on the same ids. */
static void throughput_table(Bench *b, const char *model_path) {
    const EncConfig *cfg = &b->m.enc;
    size_t P = (size_t)cfg->proj_dim, total = 0, at = 0;
    Case cases[] = {make_case("b1_seq64", 1, 64, 64, cfg->vocab_size, 1),
                    make_case("b32_seq64", 32, 64, 64, cfg->vocab_size, 2),
                    make_case("b32_mixed8-64", 32, 8, 64, cfg->vocab_size, 3)};
    const char *labels[] = {"batch 1, seq 64", "batch 32, seq 64", "batch 32, seq 8..64"};
    double targets[] = {1.6, 1.3, 1.3}, torch_rates[3] = {0}, torch_medians[3] = {0};
    char variants[3][16] = {{0}};
    size_t n = sizeof cases / sizeof cases[0];

    for (size_t k = 0; k < n; k++) total += cases[k].B * P;
    float *torch_out = calloc(total, sizeof(float));
    if (model_path[0]) {
        run_torch(model_path, cases, n, torch_rates, torch_medians, variants, torch_out, P);
    }

    printf("%-20s %10s %9s %17s %8s %8s %6s %7s %8s %8s\n", "sequences/s", "promptd", "torch",
           "ratio (target)", "median", "GFLOP/s", "%peak", "%sgemm", "ceiling", "|diff|");
    for (size_t k = 0; k < n; k++) {
        throughput_row(b, &cases[k], labels[k], targets[k], torch_rates[k], torch_medians[k],
                       torch_out + at);
        at += cases[k].B * P;
    }
    if (torch_rates[0] == 0) {
        printf("(torch not available: no ratios)\n");
    } else {
        printf("torch ran its faster way per case: %s / %s / %s; |diff| = max abs difference "
               "of the output vectors against torch's\n",
               variants[0], variants[1], variants[2]);
    }
    printf("promptd, torch: the best of %d rounds of %.1f s; median: the ratio of the median "
           "rounds;\nceiling: the ratio if promptd's every FLOP ran at the sgemm 2048^3 rate\n",
           rounds, round_seconds);
    for (size_t k = 0; k < n; k++) free(cases[k].off), free(cases[k].ids);
    free(torch_out);
}

/* One prompt of 8 to 4,096 tokens: the cost per token must stay flat. */
static void length_sweep(Bench *b) {
    const EncConfig *cfg = &b->m.enc;
    double per_token_64 = 0.0, per_token = 0.0;

    printf("\ncost of one prompt against its length (chunks of %d, stride %d):\n", cfg->max_len,
           cfg->chunk_stride);
    printf("%8s %7s %8s %12s %10s %9s\n", "tokens", "chunks", "packed", "us/prompt", "us/token",
           "GFLOP/s");
    for (size_t n = 8; n <= 4096; n *= 2) {
        Case c = make_case("len", 1, n, n, cfg->vocab_size, n);
        Job j = {&c, &b->ws, &b->m, b->out};
        double calls = rate(encode_call, &j), us = 1e6 / calls;
        per_token = us / (double)n;
        if (n == 64) per_token_64 = per_token;
        printf("%8zu %7zu %8zu %12.1f %10.2f %9.1f\n", n, enc_chunk_count(n, cfg),
               enc_packed_len(n, cfg), us, us / (double)n, calls * case_flops(&c, cfg) * 1e-9);
        free(c.off), free(c.ids);
    }
    printf("us/token at 4096 over us/token at 64: %.2f (linear growth keeps it near 1; the "
           "chunk overlap costs at most L/stride = %.2f)\n",
           per_token / per_token_64, (double)cfg->max_len / cfg->chunk_stride);
}

int main(int argc, char **argv) {
    ModelFile mf = {0};
    Bench b = {0};
    char err[256];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            rounds = 1, round_seconds = 0.1;
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            mf.model_path = argv[++i];
        } else {
            fprintf(stderr, "usage: bench_encoder [--model FILE] [--quick]\n");
            return 64;
        }
    }
    openblas_set_num_threads(1);

    if (mf.model_path)
        mf.file = slurp(mf.model_path, &mf.len);
    else
        default_model(&mf);
    if (!mf.file || st_load(&b.m, mf.file, mf.len, err, sizeof err)) {
        fprintf(stderr, "bench_encoder: %s: %s\n", mf.model_path, mf.file ? err : "cannot read");
        return 1;
    }
    const EncConfig *cfg = &b.m.enc;
    float *prepared = malloc(enc_prepared_count(cfg) * sizeof(float));
    enc_prepare(&b.m.w, prepared, cfg); /* as the daemon does after loading */
    size_t max_T = 6000, max_S = 128, max_B = 32,
           bytes = enc_work_size(cfg, max_T, max_S, max_B, 0);
    void *arena = malloc(bytes);
    b.out = malloc(max_B * (size_t)cfg->proj_dim * sizeof(float));
    if (!arena || enc_work_init(&b.ws, arena, bytes, cfg, max_T, max_S, max_B, 0)) return 1;

    printf("encoder benchmark: d=%d, %d layers, %d heads, F=%d, L=%d (stride %d), P=%d, %s, "
           "model %s\n",
           cfg->d_model, cfg->n_layers, cfg->n_heads, cfg->d_ff, cfg->max_len, cfg->chunk_stride,
           cfg->proj_dim, cfg->activation == ENC_ACT_GELU ? "GELU" : "ReLU", b.m.model_id);
    printf("fp32, one thread each: OpenBLAS 1 thread; torch 1 thread, OMP_WAIT_POLICY=PASSIVE "
           "(bench/encoder_torch.py)\n");
    const char *isa;
    b.peak = fma_peak(&isa), b.gemm = sgemm_ceiling();
    printf("this core: %s %.1f GFLOP/s (peak); OpenBLAS sgemm 2048^3 %.1f GFLOP/s (%.0f%% of "
           "peak: the practical ceiling)\n\n",
           isa, b.peak * 1e-9, b.gemm * 1e-9, b.peak > 0 ? 100 * b.gemm / b.peak : 0.0);

    throughput_table(&b, mf.model_path);
    length_sweep(&b);

    if (mf.tmp[0]) remove(mf.tmp);
    free(arena), free(b.out), free(mf.file), free(prepared);
    return 0;
}
