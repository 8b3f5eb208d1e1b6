/* test_encoder.c - Criterion tests for kernels/encoder.c: parity with PyTorch, naive
 * against BLAS, chunking, workspace limits.
 *
 * The PyTorch tensors come from tests/reference/encoder_ref.py (`make reference`),
 * which ran torch 1.13 on models written by tools/make_model; this test rebuilds
 * the same models in memory (same generator, same seed: the model ids must match)
 * and compares every traced activation and the output vectors within TOL, printing
 * the largest absolute difference of each. Run from the repository root.
 */
#include "../kernels/encoder.h"
#include "../kernels/safetensors.h"
#include "../kernels/tokenize.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL       1e-4f /* parity with PyTorch, max absolute difference */
#define TOL_NAIVE 2e-5f /* naive loops against BLAS + SIMD on the same machine */

/* --- reference files (PDREF01, written by tests/reference/st_io.py) --- */

typedef struct {
    char name[64];
    int dtype; /* 0 f32, 1 i32, 2 u8 */
    size_t n, shape[4], ndim;
    void *data;
} Record;

typedef struct {
    unsigned char *blob;
    Record rec[64];
    size_t n;
} Ref;

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (run the tests from the repository root)", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len + 1);
    cr_assert(b && fread(b, 1, *len, f) == *len);
    fclose(f);
    return b;
}

static uint32_t u32_at(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static Ref load_ref(const char *path) {
    Ref r = {0};
    size_t len, pos = 12;
    r.blob = slurp(path, &len);
    cr_assert(len >= 12 && memcmp(r.blob, "PDREF01\n", 8) == 0, "%s: bad magic", path);
    r.n = u32_at(r.blob + 8);
    cr_assert_leq(r.n, 64);
    for (size_t i = 0; i < r.n; i++) {
        Record *c = &r.rec[i];
        size_t nl = (size_t)r.blob[pos] | (size_t)r.blob[pos + 1] << 8;
        cr_assert_lt(nl, sizeof c->name);
        memcpy(c->name, r.blob + pos + 2, nl);
        pos += 2 + nl;
        c->dtype = r.blob[pos], c->ndim = r.blob[pos + 1], c->n = 1;
        pos += 2;
        for (size_t k = 0; k < c->ndim; k++, pos += 4) c->n *= c->shape[k] = u32_at(r.blob + pos);
        /* Records follow each other unaligned: copy each one out. */
        size_t bytes = c->n * (c->dtype == 2 ? 1 : 4);
        cr_assert_leq(pos + bytes, len, "%s: truncated at %s", path, c->name);
        c->data = malloc(bytes ? bytes : 1);
        memcpy(c->data, r.blob + pos, bytes);
        pos += bytes;
    }
    return r;
}

static void free_ref(Ref *r) {
    for (size_t i = 0; i < r->n; i++) free(r->rec[i].data);
    free(r->blob);
}

static const Record *rec(const Ref *r, const char *name) {
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->rec[i].name, name) == 0) return &r->rec[i];
    }
    cr_assert_fail("reference lacks %s", name);
    return NULL;
}

static const int32_t *ints(const Ref *r, const char *name, size_t *n) {
    const Record *c = rec(r, name);
    cr_assert_eq(c->dtype, 1, "%s is not int32", name);
    if (n) *n = c->n;
    return c->data;
}

static const float *floats(const Ref *r, const char *name) {
    const Record *c = rec(r, name);
    cr_assert_eq(c->dtype, 0, "%s is not float32", name);
    return c->data;
}

/* --- models --- */

typedef struct {
    unsigned char *file; /* the whole model file, as the daemon would map it */
    size_t len;
    StModel m;
    float *prepared; /* transposed weights (enc_prepare), or NULL */
} Model;

/* Gives the BLAS path the transposed weights, as the daemon does after loading. */
static void prepare(Model *md) {
    md->prepared = malloc(enc_prepared_count(&md->m.enc) * sizeof(float));
    cr_assert(md->prepared);
    enc_prepare(&md->m.w, md->prepared, &md->m.enc);
}

static void free_model(Model *md) {
    free(md->file);
    free(md->prepared);
}

/* Builds a model file in memory exactly as tools/make_model would, then loads it
 * through st_load, so that the loader sits on the tested path. */
static Model make_model(const EncConfig *cfg, uint64_t seed, unsigned flags) {
    Model md = {0};
    TokConfig tok = tok_default_config((uint32_t)cfg->vocab_size);
    size_t n = enc_param_count(cfg), hlen;
    float *params = malloc(n * sizeof *params);
    char *head, err[256];

    cr_assert(params);
    enc_init_random(params, cfg, seed, flags);
    cr_assert_eq(st_header(&head, &hlen, cfg, &tok, params, err, sizeof err), 0, "%s", err);
    md.len = hlen + n * sizeof *params;
    md.file = malloc(md.len);
    cr_assert(md.file);
    memcpy(md.file, head, hlen);
    memcpy(md.file + hlen, params, n * sizeof *params);
    free(head);
    free(params);
    cr_assert_eq(st_load(&md.m, md.file, md.len, err, sizeof err), 0, "%s", err);
    prepare(&md);
    return md;
}

static Model model_from_ref(const Ref *r) {
    size_t n;
    const int32_t *c = ints(r, "config", &n);
    cr_assert_eq(n, 11);
    EncConfig cfg = enc_default_config(c[0]);
    cfg.d_model = c[1], cfg.n_layers = c[2], cfg.n_heads = c[3], cfg.d_ff = c[4];
    cfg.max_len = c[5], cfg.chunk_stride = c[6], cfg.proj_dim = c[7];
    cfg.activation = c[8] ? ENC_ACT_RELU : ENC_ACT_GELU;
    Model md = make_model(&cfg, (uint64_t)c[9], c[10] ? ENC_INIT_PERTURB : 0);

    const Record *id = rec(r, "model_id");
    cr_assert(id->n == 16 && memcmp(id->data, md.m.model_id, 16) == 0,
              "model id %s differs from the reference's %.16s: tools/make_model's generator "
              "changed, run `make reference`",
              md.m.model_id, (const char *)id->data);
    return md;
}

static Model model_from_file(const char *path) {
    Model md = {0};
    char err[256];
    md.file = slurp(path, &md.len);
    cr_assert_eq(st_load(&md.m, md.file, md.len, err, sizeof err), 0, "%s: %s", path, err);
    prepare(&md);
    return md;
}

/* --- encoding --- */

typedef struct {
    void *arena;
    EncWork ws;
    float *out;
    size_t B;
} Run;

static Run encode(const Model *md, const int32_t *ids, const size_t *off, size_t B,
                  unsigned flags) {
    const EncConfig *cfg = &md->m.enc;
    Run r = {.B = B};
    size_t T = 0, S = 0;
    for (size_t b = 0; b < B; b++) {
        T += enc_packed_len(off[b + 1] - off[b], cfg);
        S += enc_chunk_count(off[b + 1] - off[b], cfg);
    }
    size_t bytes = enc_work_size(cfg, T, S, B, ENC_TRACE);
    r.arena = malloc(bytes);
    r.out = malloc((B ? B : 1) * (size_t)cfg->proj_dim * sizeof *r.out);
    cr_assert(r.arena && r.out);
    cr_assert_eq(enc_work_init(&r.ws, r.arena, bytes, cfg, T, S, B, ENC_TRACE), 0);
    int rc = enc_encode(r.out, &r.ws, ids, off, B, &md->m.w, cfg, flags);
    cr_assert_eq(rc, 0, "enc_encode returned %d", rc);
    return r;
}

static void free_run(Run *r) {
    free(r->arena);
    free(r->out);
}

static float max_diff_rows(const float *got, const float *want, const int32_t *rows, size_t R,
                           size_t C) {
    float mx = 0.0f;
    for (size_t i = 0; i < R; i++) {
        for (size_t c = 0; c < C; c++) {
            float d = fabsf(got[(size_t)rows[i] * C + c] - want[i * C + c]);
            mx = d > mx || isnan(d) ? d : mx;
        }
    }
    return mx;
}

static float max_diff(const float *a, const float *b, size_t n) {
    float mx = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        mx = d > mx || isnan(d) ? d : mx;
    }
    return mx;
}

/* Tokenises the reference's texts with the C tokeniser and checks the ids. */
static int32_t *tokenise_texts(const Ref *r, const TokConfig *tok, size_t *off, size_t *B) {
    size_t nt, ni, no;
    const int32_t *toff = ints(r, "text_off", &nt), *want = ints(r, "ids", &ni);
    const int32_t *woff = ints(r, "off", &no);
    const char *texts = rec(r, "texts")->data;
    int32_t *ids = malloc((ni ? ni : 1) * sizeof *ids);

    *B = nt - 1;
    cr_assert_eq(no, nt);
    off[0] = 0;
    for (size_t b = 0; b < *B; b++) {
        size_t n = tok_text(ids + off[b], ni - off[b], texts + toff[b],
                            (size_t)(toff[b + 1] - toff[b]), tok);
        off[b + 1] = off[b] + n;
        cr_assert_eq(off[b + 1], (size_t)woff[b + 1], "prompt %zu: %zu tokens, reference %d", b, n,
                     woff[b + 1] - woff[b]);
    }
    cr_assert_eq(memcmp(ids, want, ni * sizeof *ids), 0, "token ids differ from tokenize_ref.py");
    return ids;
}

#define UNPREPARED 0x100u /* expect_parity: drop the transposed weights first */

/* Compares one encoding (flags: ENC_NAIVE, UNPREPARED) with every tensor of the
 * reference, printing the largest absolute difference of each. */
static void expect_parity(const char *path, unsigned flags, float tol) {
    Ref r = load_ref(path);
    Model md = strstr(path, "tiny_torch")
                   ? model_from_file("tests/reference/tiny_torch.safetensors")
                   : model_from_ref(&r);
    for (int l = 0; l < md.m.enc.n_layers && (flags & UNPREPARED); l++) {
        EncLayerWeights *lw = &md.m.w.layer[l];
        lw->qkv_wt = lw->att_wt = lw->fc1_wt = lw->fc2_wt = NULL;
    }
    const EncConfig *cfg = &md.m.enc;
    size_t off[64], B, R;
    int32_t *ids = tokenise_texts(&r, &md.m.tok, off, &B);
    Run run = encode(&md, ids, off, B, flags & ENC_NAIVE);
    const int32_t *rows = ints(&r, "rows", &R);
    size_t C = (size_t)cfg->d_model, P = (size_t)cfg->proj_dim;
    char line[1024];
    int o = snprintf(line, sizeof line, "%s%s max |diff|:", path,
                     flags & ENC_NAIVE    ? " naive"
                     : flags & UNPREPARED ? " untransposed"
                                          : "");

    float d = max_diff_rows(run.ws.emb, floats(&r, "emb"), rows, R, C), worst = d;
    o += snprintf(line + o, sizeof line - (size_t)o, " emb %.1e", (double)d);
    for (int l = 0; l < cfg->n_layers; l++) {
        const EncLayerActs *a = &run.ws.layer[l];
        const float *got[] = {a->attn, a->ln1, a->ff, a->ln2};
        const char *names[] = {"attn", "ln1", "ff", "ln2"};
        for (size_t k = 0; k < 4; k++) {
            char name[64];
            snprintf(name, sizeof name, "layers.%d.%s", l, names[k]);
            d = max_diff_rows(got[k], floats(&r, name), rows, R, C);
            worst = d > worst ? d : worst;
            o +=
                snprintf(line + o, sizeof line - (size_t)o, " L%d.%s %.1e", l, names[k], (double)d);
            cr_expect_leq(d, tol, "%s: %s differs from PyTorch by %g (tolerance %g)", path, name,
                          (double)d, (double)tol);
        }
    }
    struct {
        const char *name;
        const float *got;
        size_t n;
    } outs[] = {{"pooled", run.ws.pooled, B * C},
                {"projected", run.ws.projected, B * P},
                {"out", run.out, B * P}};
    for (size_t k = 0; k < 3; k++) {
        d = max_diff(outs[k].got, floats(&r, outs[k].name), outs[k].n);
        worst = d > worst ? d : worst;
        o += snprintf(line + o, sizeof line - (size_t)o, " %s %.1e", outs[k].name, (double)d);
        cr_expect_leq(d, tol, "%s: %s differs from PyTorch by %g (tolerance %g)", path,
                      outs[k].name, (double)d, (double)tol);
    }
    fprintf(stderr, "%s (worst %.1e, tolerance %.0e)\n", line, (double)worst, (double)tol);
    cr_expect_leq(worst, tol);

    free_run(&run);
    free(ids);
    free_model(&md);
    free_ref(&r);
}

/* --- parity with PyTorch --- */

Test(encoder, matches_torch_d64_1_layer_gelu) {
    expect_parity("tests/reference/enc_d64_l1_gelu.ref", 0, TOL);
}

Test(encoder, matches_torch_d64_2_layers_relu) {
    expect_parity("tests/reference/enc_d64_l2_relu.ref", 0, TOL);
}

Test(encoder, matches_torch_d256_1_layer_relu) {
    expect_parity("tests/reference/enc_d256_l1_relu.ref", 0, TOL);
}

Test(encoder, matches_torch_d256_2_layers_gelu) {
    expect_parity("tests/reference/enc_d256_l2_gelu.ref", 0, TOL);
}

Test(encoder, matches_torch_on_a_model_exported_by_pytorch) {
    expect_parity("tests/reference/tiny_torch.ref", 0, TOL);
}

Test(encoder, untransposed_weights_match_torch_d256_2_layers_gelu) {
    expect_parity("tests/reference/enc_d256_l2_gelu.ref", UNPREPARED, TOL);
}

Test(encoder, naive_loops_match_torch_d64_2_layers_relu) {
    expect_parity("tests/reference/enc_d64_l2_relu.ref", ENC_NAIVE, TOL);
}

Test(encoder, naive_loops_match_torch_d256_2_layers_gelu) {
    expect_parity("tests/reference/enc_d256_l2_gelu.ref", ENC_NAIVE, TOL);
}

/* --- naive against BLAS --- */

static int32_t *random_prompts(const EncConfig *cfg, size_t B, size_t max_n, uint64_t seed,
                               size_t *off) {
    uint64_t s = seed;
    off[0] = 0;
    for (size_t b = 0; b < B; b++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        off[b + 1] = off[b] + (size_t)(s >> 33) % (max_n + 1);
    }
    int32_t *ids = malloc((off[B] ? off[B] : 1) * sizeof *ids);
    for (size_t i = 0; i < off[B]; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 1 + (int32_t)((s >> 33) % (uint64_t)(cfg->vocab_size - 1));
    }
    return ids;
}

static void expect_naive_matches_blas(EncConfig cfg, size_t B, size_t max_n) {
    Model md = make_model(&cfg, 99, ENC_INIT_PERTURB);
    size_t off[65];
    int32_t *ids = random_prompts(&cfg, B, max_n, 7, off);
    Run fast = encode(&md, ids, off, B, 0), slow = encode(&md, ids, off, B, ENC_NAIVE);
    size_t T = fast.ws.n_tokens, C = (size_t)cfg.d_model, F = (size_t)cfg.d_ff;
    float worst = max_diff(fast.ws.emb, slow.ws.emb, T * C);

    for (int l = 0; l < cfg.n_layers; l++) {
        const EncLayerActs *a = &fast.ws.layer[l], *b = &slow.ws.layer[l];
        float d[] = {max_diff(a->qkv, b->qkv, T * 3 * C), max_diff(a->atty, b->atty, T * C),
                     max_diff(a->attn, b->attn, T * C),   max_diff(a->ln1, b->ln1, T * C),
                     max_diff(a->fch, b->fch, T * F),     max_diff(a->ff, b->ff, T * C),
                     max_diff(a->ln2, b->ln2, T * C)};
        for (size_t k = 0; k < sizeof d / sizeof d[0]; k++) worst = d[k] > worst ? d[k] : worst;
    }
    float dout = max_diff(fast.out, slow.out, B * (size_t)cfg.proj_dim);
    worst = dout > worst ? dout : worst;
    fprintf(stderr, "naive vs BLAS, d=%d %d layers %s, %zu prompts, %zu tokens: max |diff| %.1e\n",
            cfg.d_model, cfg.n_layers, cfg.activation == ENC_ACT_GELU ? "gelu" : "relu", B, T,
            (double)worst);
    cr_expect_leq(worst, TOL_NAIVE, "naive and BLAS kernels differ by %g", (double)worst);

    free_run(&fast);
    free_run(&slow);
    free(ids);
    free_model(&md);
}

Test(encoder, naive_and_blas_agree_gelu) {
    EncConfig cfg = enc_default_config(1000);
    cfg.d_model = 64, cfg.d_ff = 256, cfg.proj_dim = 16;
    expect_naive_matches_blas(cfg, 9, 150);
}

Test(encoder, naive_and_blas_agree_relu_odd_sizes) {
    /* Sizes that are not multiples of 8 take the SIMD tails and scalar fallbacks. */
    EncConfig cfg = enc_default_config(777);
    cfg.d_model = 60, cfg.n_heads = 6, cfg.d_ff = 100, cfg.proj_dim = 13, cfg.max_len = 21;
    cfg.chunk_stride = 13, cfg.n_layers = 3, cfg.activation = ENC_ACT_RELU;
    expect_naive_matches_blas(cfg, 7, 90);
}

Test(encoder, naive_and_blas_agree_default_size) {
    expect_naive_matches_blas(enc_default_config(2048), 4, 130);
}

/* --- chunking and pooling --- */

Test(encoder, chunks_overlap_by_max_len_minus_stride) {
    EncConfig cfg = enc_default_config(100); /* L = 64, stride 48 */
    size_t n[] = {0, 1, 64, 65, 112, 113, 160, 200, 4096};
    size_t chunks[] = {0, 1, 1, 2, 2, 3, 3, 4, 85};
    size_t packed[] = {0, 1, 64, 81, 128, 145, 192, 248, 85 * 64 - (84 * 48 + 64 - 4096)};

    for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) {
        cr_expect_eq(enc_chunk_count(n[i], &cfg), chunks[i], "chunks of %zu tokens: %zu", n[i],
                     enc_chunk_count(n[i], &cfg));
        cr_expect_eq(enc_packed_len(n[i], &cfg), packed[i], "packed length of %zu tokens: %zu",
                     n[i], enc_packed_len(n[i], &cfg));
    }
}

Test(encoder, packed_length_grows_linearly) {
    EncConfig cfg = enc_default_config(100);
    for (size_t n = 1; n <= 20000; n += 37) {
        size_t p = enc_packed_len(n, &cfg);
        cr_assert(p >= n && p <= n * 64 / 48 + 64, "%zu tokens pack to %zu", n, p);
        /* A last chunk after the first keeps more than L - stride tokens. */
        size_t k = enc_chunk_count(n, &cfg), last = n - (k - 1) * 48;
        cr_assert(last <= 64 && (k == 1 || last > 16), "%zu tokens: last chunk of %zu", n, last);
    }
}

Test(encoder, prompt_in_a_batch_encodes_as_alone) {
    EncConfig cfg = enc_default_config(500);
    cfg.d_model = 64, cfg.d_ff = 256;
    Model md = make_model(&cfg, 3, ENC_INIT_PERTURB);
    size_t off[9];
    int32_t *ids = random_prompts(&cfg, 8, 140, 11, off);
    Run all = encode(&md, ids, off, 8, 0);
    size_t P = (size_t)cfg.proj_dim;

    for (size_t b = 0; b < 8; b++) {
        size_t one[2] = {0, off[b + 1] - off[b]};
        Run alone = encode(&md, ids + off[b], one, 1, 0);
        float d = max_diff(alone.out, all.out + b * P, P);
        cr_expect_leq(d, 1e-6f, "prompt %zu alone differs from in the batch by %g", b, (double)d);
        free_run(&alone);
    }
    free_run(&all);
    free(ids);
    free_model(&md);
}

/* Encodes with the shared-buffer workspace and checks the bits against the
 * traced one (which keeps every buffer apart, so aliasing cannot hide there). */
static void expect_shared_equals_traced(EncConfig cfg, size_t B, size_t max_n) {
    Model md = make_model(&cfg, 5, ENC_INIT_PERTURB);
    size_t off[17];
    int32_t *ids = random_prompts(&cfg, B, max_n, 13, off);
    Run traced = encode(&md, ids, off, B, 0);
    size_t T = traced.ws.n_tokens, S = traced.ws.n_chunks, P = (size_t)cfg.proj_dim;
    size_t bytes = enc_work_size(&cfg, T, S, B, 0);
    void *arena = malloc(bytes);
    float *out = malloc(B * P * sizeof *out);
    EncWork ws;

    cr_assert_lt(bytes, enc_work_size(&cfg, T, S, B, ENC_TRACE), "sharing saves no memory");
    cr_assert_eq(enc_work_init(&ws, arena, bytes, &cfg, T, S, B, 0), 0);
    cr_assert_eq(enc_encode(out, &ws, ids, off, B, &md.m.w, &cfg, 0), 0);
    cr_expect_eq(memcmp(out, traced.out, B * P * sizeof *out), 0,
                 "outputs differ (%zu tokens, %zu chunks)", T, S);
    free(out);
    free(arena);
    free_run(&traced);
    free(ids);
    free_model(&md);
}

Test(encoder, trace_and_shared_buffers_give_identical_output) {
    EncConfig cfg = enc_default_config(500);
    cfg.d_model = 64, cfg.d_ff = 192, cfg.n_layers = 3;
    expect_shared_equals_traced(cfg, 9, 300); /* several groups of chunks */
}

Test(encoder, chunks_longer_than_a_group_run_alone) {
    EncConfig cfg = enc_default_config(500);
    cfg.d_model = 32, cfg.d_ff = 128, cfg.max_len = 600, cfg.chunk_stride = 450;
    expect_shared_equals_traced(cfg, 3, 1500);
}

Test(encoder, empty_prompt_gives_normalised_projection_bias) {
    EncConfig cfg = enc_default_config(100);
    cfg.d_model = 16, cfg.d_ff = 32, cfg.proj_dim = 4;
    Model md = make_model(&cfg, 1, 0);
    size_t off[2] = {0, 0};
    Run r = encode(&md, NULL, off, 1, 0);
    const float *b = md.m.w.proj_b;
    float norm = sqrtf(b[0] * b[0] + b[1] * b[1] + b[2] * b[2] + b[3] * b[3]);

    for (int p = 0; p < 4; p++) {
        cr_expect_float_eq(r.out[p], b[p] / norm, 1e-6f, "element %d: %g", p, (double)r.out[p]);
    }
    free_run(&r);
    free_model(&md);
}

Test(encoder, outputs_have_unit_norm) {
    EncConfig cfg = enc_default_config(300);
    cfg.d_model = 32, cfg.d_ff = 64;
    Model md = make_model(&cfg, 2, 0);
    size_t off[17];
    int32_t *ids = random_prompts(&cfg, 16, 300, 17, off);
    Run r = encode(&md, ids, off, 16, 0);

    for (size_t b = 0; b < 16; b++) {
        double ss = 0.0;
        for (int p = 0; p < cfg.proj_dim; p++)
            ss += (double)r.out[b * 64 + (size_t)p] * r.out[b * 64 + (size_t)p];
        cr_expect(fabs(sqrt(ss) - 1.0) < 1e-5, "prompt %zu: norm %g", b, sqrt(ss));
    }
    free_run(&r);
    free(ids);
    free_model(&md);
}

/* --- limits --- */

Test(encoder, refuses_batches_beyond_the_workspace_before_any_work) {
    EncConfig cfg = enc_default_config(100);
    cfg.d_model = 16, cfg.d_ff = 32;
    Model md = make_model(&cfg, 1, 0);
    int32_t ids[200] = {0};
    size_t off[3] = {0, 100, 200};
    size_t bytes = enc_work_size(&cfg, 200, 3, 1, 0);
    void *arena = malloc(bytes);
    float out[2 * 64];
    EncWork ws;

    /* 100 tokens pack to 2 chunks of 64 + 52 = 116 tokens. */
    cr_assert_eq(enc_work_init(&ws, arena, bytes, &cfg, 200, 3, 1, 0), 0);
    cr_expect_eq(enc_encode(out, &ws, ids, off, 2, &md.m.w, &cfg, 0), ENC_E_CAP, "prompts");
    cr_assert_eq(enc_work_init(&ws, arena, bytes, &cfg, 200, 3, 2, 0), ENC_E_ARENA);
    bytes = enc_work_size(&cfg, 200, 3, 2, 0);
    arena = realloc(arena, bytes);
    cr_assert_eq(enc_work_init(&ws, arena, bytes, &cfg, 200, 3, 2, 0), 0);
    cr_expect_eq(enc_encode(out, &ws, ids, off, 2, &md.m.w, &cfg, 0), ENC_E_CAP, "chunks");
    ids[150] = 100;
    cr_assert_eq(enc_work_init(&ws, arena, bytes, &cfg, 240, 4, 2, 0), ENC_E_ARENA);
    free(arena);
    bytes = enc_work_size(&cfg, 240, 4, 2, 0);
    arena = malloc(bytes);
    cr_assert_eq(enc_work_init(&ws, arena, bytes, &cfg, 240, 4, 2, 0), 0);
    cr_expect_eq(enc_encode(out, &ws, ids, off, 2, &md.m.w, &cfg, 0), ENC_E_ID, "id 100 of 100");
    ids[150] = 99;
    cr_expect_eq(enc_encode(out, &ws, ids, off, 2, &md.m.w, &cfg, 0), 0);
    EncConfig other = cfg;
    other.chunk_stride = 32;
    cr_expect_eq(enc_encode(out, &ws, ids, off, 2, &md.m.w, &other, 0), ENC_E_CFG,
                 "a workspace laid out for another configuration");
    cr_expect_eq(enc_work_size(&cfg, SIZE_MAX / 2, 1, 1, 0), SIZE_MAX, "overflow not caught");
    cr_expect_eq(enc_work_size(&cfg, 1, SIZE_MAX, 1, 0), SIZE_MAX, "chunks + 1 wrapped");
    cr_expect_eq(enc_work_size(&cfg, 1, 1, SIZE_MAX, 0), SIZE_MAX, "prompts + 1 wrapped");
    free(arena);
    free_model(&md);
}

Test(encoder, refuses_inconsistent_configurations) {
    char err[160];
    EncConfig ok = enc_default_config(100), c;

    cr_expect_eq(enc_check_config(&ok, err, sizeof err), 0, "%s", err);
    c = ok, c.n_heads = 7;
    cr_expect_eq(enc_check_config(&c, err, sizeof err), -1);
    cr_expect(strstr(err, "n_heads"), "%s", err);
    c = ok, c.chunk_stride = 65;
    cr_expect_eq(enc_check_config(&c, err, sizeof err), -1);
    cr_expect(strstr(err, "chunk_stride"), "%s", err);
    c = ok, c.n_layers = ENC_MAX_LAYERS + 1;
    cr_expect_eq(enc_check_config(&c, err, sizeof err), -1);
    cr_expect(strstr(err, "n_layers"), "%s", err);
    c = ok, c.activation = 2;
    cr_expect_eq(enc_check_config(&c, err, sizeof err), -1);
    cr_expect(strstr(err, "activation"), "%s", err);
}

/* --- the default model --- */

Test(encoder, default_model_is_byte_identical_everywhere) {
    /* tools/make_model with no options: this id pins every bit of the 39 MB file. */
    EncConfig cfg = enc_default_config(32768);
    Model md = make_model(&cfg, 1, 0);

    cr_expect_str_eq(md.m.model_id, "a1310fdef0f41eb2");
    cr_expect_eq(md.len, 40006824);
    free_model(&md);
}

Test(encoder, tensor_table_follows_pytorch_state_dict_order) {
    EncConfig cfg = enc_default_config(10);
    const char *want[] = {"embedding.weight",
                          "pos_embedding.weight",
                          "layers.0.self_attn.in_proj_weight",
                          "layers.0.self_attn.in_proj_bias",
                          "layers.0.self_attn.out_proj.weight",
                          "layers.0.self_attn.out_proj.bias",
                          "layers.0.linear1.weight",
                          "layers.0.linear1.bias",
                          "layers.0.linear2.weight",
                          "layers.0.linear2.bias",
                          "layers.0.norm1.weight",
                          "layers.0.norm1.bias",
                          "layers.0.norm2.weight",
                          "layers.0.norm2.bias"};
    size_t n = enc_tensor_count(&cfg), total = 0;
    EncTensor t;

    cr_assert_eq(n, 2 + 12 * 2 + 2);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        enc_tensor_info(&t, &cfg, i);
        cr_expect_str_eq(t.name, want[i]);
    }
    for (size_t i = 0; i < n; i++) {
        enc_tensor_info(&t, &cfg, i);
        cr_expect_eq(t.offset, total, "%s starts at %zu, not %zu", t.name, t.offset, total);
        total += t.numel;
    }
    enc_tensor_info(&t, &cfg, n - 1);
    cr_expect_str_eq(t.name, "proj.bias");
    cr_expect_eq(total, enc_param_count(&cfg));
}
