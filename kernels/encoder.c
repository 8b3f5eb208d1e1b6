/* encoder.c - transformer encoder forward pass over packed variable-length chunks.
 *
 * Does: chunk prompts, pack every chunk of a batch back to back, run token and
 * position embedding, N post-norm encoder layers (PyTorch's
 * nn.TransformerEncoderLayer with norm_first=False), masked mean pooling per
 * prompt, the projection and L2 normalisation. Each step has a naive loop version
 * (ENC_NAIVE) and a fast one: cblas_sgemm for every matrix product, AVX2/FMA for
 * the element-wise steps when the CPU has them. ENCODER.md is the specification.
 *
 * Does not: allocate, log, do I/O, or set OpenBLAS's thread count.
 *
 * Shapes, with the letters used in every comment below:
 *   B prompts, S chunks (sequences), T packed tokens (sum of chunk lengths),
 *   N tokens of one chunk (N <= L), C channels, H heads, D = C / H head size,
 *   F feed-forward size, P projection size, V vocab size, L max_len.
 *   ids  (sum of prompt lengths)   tok, pos (T)   emb (T, C)
 *   per layer: qkv (T, 3C)  atty, attn, ln1 (T, C)  fch (T, F)  ff, ln2 (T, C)
 *     (without ENC_TRACE, qkv atty attn fch ff hold one group of chunks: plan())
 *   scores (L, L)   pooled (B, C)   projected, out (B, P)
 *
 * Attention never crosses a chunk: each chunk attends over its own N tokens, which
 * is what PyTorch computes for the real tokens of a padded batch with
 * src_key_padding_mask, without the padding.
 */
#include "encoder.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86_SIMD 1
#define TARGET_AVX2   __attribute__((target("avx2,fma")))
#else
#define HAVE_X86_SIMD 0
#endif

/* --- configuration --- */

EncConfig enc_default_config(int vocab_size) {
    EncConfig cfg = {
        .vocab_size = vocab_size,
        .d_model = 256,
        .n_layers = 2,
        .n_heads = 8,
        .d_ff = 1024,
        .max_len = 64,
        .chunk_stride = 48,
        .proj_dim = 64,
        .activation = ENC_ACT_GELU,
        .ln_eps = 1e-5f,
    };
    return cfg;
}

static int bad_size(char *err, size_t errlen, const char *what, long v, long lo, long hi) {
    snprintf(err, errlen, "encoder %s %ld: must lie in [%ld, %ld]", what, v, lo, hi);
    return -1;
}

/* Bounds keep every product of sizes far from overflow on 64-bit size_t. */
int enc_check_config(const EncConfig *cfg, char *err, size_t errlen) {
    if (cfg->vocab_size < 2 || cfg->vocab_size > (1 << 26))
        return bad_size(err, errlen, "vocab_size", cfg->vocab_size, 2, 1 << 26);
    if (cfg->d_model < 1 || cfg->d_model > 8192)
        return bad_size(err, errlen, "d_model", cfg->d_model, 1, 8192);
    if (cfg->n_layers < 1 || cfg->n_layers > ENC_MAX_LAYERS)
        return bad_size(err, errlen, "n_layers", cfg->n_layers, 1, ENC_MAX_LAYERS);
    if (cfg->n_heads < 1 || cfg->n_heads > cfg->d_model)
        return bad_size(err, errlen, "n_heads", cfg->n_heads, 1, cfg->d_model);
    if (cfg->d_model % cfg->n_heads != 0) {
        snprintf(err, errlen, "encoder n_heads %d does not divide d_model %d", cfg->n_heads,
                 cfg->d_model);
        return -1;
    }
    if (cfg->d_ff < 1 || cfg->d_ff > 65536)
        return bad_size(err, errlen, "d_ff", cfg->d_ff, 1, 65536);
    if (cfg->max_len < 1 || cfg->max_len > 8192)
        return bad_size(err, errlen, "max_len", cfg->max_len, 1, 8192);
    if (cfg->chunk_stride < 1 || cfg->chunk_stride > cfg->max_len)
        return bad_size(err, errlen, "chunk_stride", cfg->chunk_stride, 1, cfg->max_len);
    if (cfg->proj_dim < 1 || cfg->proj_dim > 8192)
        return bad_size(err, errlen, "proj_dim", cfg->proj_dim, 1, 8192);
    if (cfg->activation != ENC_ACT_GELU && cfg->activation != ENC_ACT_RELU)
        return bad_size(err, errlen, "activation", cfg->activation, 0, 1);
    if (!(cfg->ln_eps > 0.0f && cfg->ln_eps < 1.0f)) {
        snprintf(err, errlen, "encoder ln_eps %g: must lie in (0, 1)", (double)cfg->ln_eps);
        return -1;
    }
    return 0;
}

/* --- tensor table --- */

/* A layer's tensors in state_dict order; rows and cols in units of C or F. */
enum { DIM_ONE, DIM_C, DIM_3C, DIM_F };

static const struct {
    const char *suffix;
    int rows, cols; /* cols DIM_ONE: a vector of rows elements */
} layer_tensors[] = {
    {"self_attn.in_proj_weight", DIM_3C, DIM_C},
    {"self_attn.in_proj_bias", DIM_3C, DIM_ONE},
    {"self_attn.out_proj.weight", DIM_C, DIM_C},
    {"self_attn.out_proj.bias", DIM_C, DIM_ONE},
    {"linear1.weight", DIM_F, DIM_C},
    {"linear1.bias", DIM_F, DIM_ONE},
    {"linear2.weight", DIM_C, DIM_F},
    {"linear2.bias", DIM_C, DIM_ONE},
    {"norm1.weight", DIM_C, DIM_ONE},
    {"norm1.bias", DIM_C, DIM_ONE},
    {"norm2.weight", DIM_C, DIM_ONE},
    {"norm2.bias", DIM_C, DIM_ONE},
};

#define N_LAYER_TENSORS (sizeof layer_tensors / sizeof layer_tensors[0])

static size_t dim(int code, const EncConfig *cfg) {
    size_t C = (size_t)cfg->d_model;
    return code == DIM_C ? C : code == DIM_3C ? 3 * C : code == DIM_F ? (size_t)cfg->d_ff : 1;
}

static size_t layer_numel(const EncConfig *cfg) {
    size_t n = 0;
    for (size_t k = 0; k < N_LAYER_TENSORS; k++) {
        n += dim(layer_tensors[k].rows, cfg) * dim(layer_tensors[k].cols, cfg);
    }
    return n;
}

size_t enc_tensor_count(const EncConfig *cfg) {
    return 2 + N_LAYER_TENSORS * (size_t)cfg->n_layers + 2;
}

static void set_tensor(EncTensor *t, const char *name, size_t rows, size_t cols, size_t off) {
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = rows * (cols ? cols : 1);
    t->offset = off;
}

/* Tensor i of layer l (i < N_LAYER_TENSORS), whose data starts at float off. */
static void layer_tensor(EncTensor *t, const EncConfig *cfg, size_t l, size_t i, size_t off) {
    char name[ENC_NAME_MAX];

    for (size_t j = 0; j < i; j++) {
        off += dim(layer_tensors[j].rows, cfg) * dim(layer_tensors[j].cols, cfg);
    }
    snprintf(name, sizeof name, "layers.%zu.%s", l, layer_tensors[i].suffix);
    size_t cols = layer_tensors[i].cols == DIM_ONE ? 0 : dim(layer_tensors[i].cols, cfg);
    set_tensor(t, name, dim(layer_tensors[i].rows, cfg), cols, off);
}

void enc_tensor_info(EncTensor *t, const EncConfig *cfg, size_t i) {
    size_t V = (size_t)cfg->vocab_size, C = (size_t)cfg->d_model, L = (size_t)cfg->max_len;
    size_t P = (size_t)cfg->proj_dim, NL = (size_t)cfg->n_layers;
    size_t head = V * C + L * C, per_layer = layer_numel(cfg), tail = head + NL * per_layer;

    if (i == 0) {
        set_tensor(t, "embedding.weight", V, C, 0);
    } else if (i == 1) {
        set_tensor(t, "pos_embedding.weight", L, C, V * C);
    } else if (i - 2 < NL * N_LAYER_TENSORS) {
        size_t l = (i - 2) / N_LAYER_TENSORS;
        layer_tensor(t, cfg, l, (i - 2) % N_LAYER_TENSORS, head + l * per_layer);
    } else if (i - 2 == NL * N_LAYER_TENSORS) {
        set_tensor(t, "proj.weight", P, C, tail);
    } else {
        set_tensor(t, "proj.bias", P, 0, tail + P * C);
    }
}

size_t enc_param_count(const EncConfig *cfg) {
    size_t C = (size_t)cfg->d_model, P = (size_t)cfg->proj_dim;
    return ((size_t)cfg->vocab_size + (size_t)cfg->max_len) * C +
           (size_t)cfg->n_layers * layer_numel(cfg) + P * C + P;
}

void enc_weights_bind(EncWeights *w, const EncConfig *cfg, const float *const *tensors) {
    memset(w, 0, sizeof *w);
    w->wte = tensors[0];
    w->wpe = tensors[1];
    for (int l = 0; l < cfg->n_layers; l++) {
        const float *const *t = tensors + 2 + (size_t)l * N_LAYER_TENSORS;
        EncLayerWeights *lw = &w->layer[l];
        lw->qkv_w = t[0], lw->qkv_b = t[1], lw->att_w = t[2], lw->att_b = t[3];
        lw->fc1_w = t[4], lw->fc1_b = t[5], lw->fc2_w = t[6], lw->fc2_b = t[7];
        lw->ln1_w = t[8], lw->ln1_b = t[9], lw->ln2_w = t[10], lw->ln2_b = t[11];
    }
    size_t last = 2 + (size_t)cfg->n_layers * N_LAYER_TENSORS;
    w->proj_w = tensors[last];
    w->proj_b = tensors[last + 1];
}

void enc_weights_flat(EncWeights *w, const EncConfig *cfg, const float *params) {
    const float *ptrs[2 + N_LAYER_TENSORS * ENC_MAX_LAYERS + 2];
    size_t n = enc_tensor_count(cfg);

    for (size_t i = 0; i < n; i++) {
        EncTensor t;
        enc_tensor_info(&t, cfg, i);
        ptrs[i] = params + t.offset;
    }
    enc_weights_bind(w, cfg, ptrs);
}

size_t enc_prepared_count(const EncConfig *cfg) {
    size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff;
    return (size_t)cfg->n_layers * (4 * C * C + 2 * C * F);
}

/* dst (cols, rows) = src (rows, cols) transposed. */
static const float *transpose(float *dst, const float *src, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
    }
    return dst;
}

void enc_prepare(EncWeights *w, float *buf, const EncConfig *cfg) {
    size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff;

    for (int l = 0; l < cfg->n_layers; l++) {
        EncLayerWeights *lw = &w->layer[l];
        lw->qkv_wt = transpose(buf, lw->qkv_w, 3 * C, C), buf += 3 * C * C;
        lw->att_wt = transpose(buf, lw->att_w, C, C), buf += C * C;
        lw->fc1_wt = transpose(buf, lw->fc1_w, F, C), buf += F * C;
        lw->fc2_wt = transpose(buf, lw->fc2_w, C, F), buf += C * F;
    }
}

/* --- random initialisation --- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-a, a): 2u - 1 is exact for a 24-bit u, so only the product by a
 * rounds, the same way on every IEEE machine. */
static void fill_uniform(float *p, size_t n, float a, float centre, uint64_t *state) {
    for (size_t i = 0; i < n; i++) {
        float u = (float)(splitmix64(state) >> 40) * 0x1p-24f;
        p[i] = centre + (2.0f * u - 1.0f) * a;
    }
}

/* The bound of tensor t and its centre (1 for LayerNorm weights), after PyTorch's
 * defaults: N(0, 1) embeddings (here uniform of variance 1), xavier-uniform
 * in_proj, kaiming-uniform linears and their biases (1/sqrt(fan_in)), zero
 * attention biases, LayerNorm (1, 0). ENC_INIT_PERTURB moves those zeros and ones
 * by up to 0.1, so that tests exercise every tensor. */
static float init_bound(const EncTensor *t, size_t fan_in, unsigned flags, float *centre) {
    float perturb = flags & ENC_INIT_PERTURB ? 0.1f : 0.0f;
    const char *name = t->name;

    *centre = 0.0f;
    if (strstr(name, "embedding")) return sqrtf(3.0f);
    if (strstr(name, "norm")) {
        if (strstr(name, ".weight")) *centre = 1.0f;
        return perturb;
    }
    if (strstr(name, "in_proj_weight")) {
        return (float)sqrt(6.0 / (double)(t->shape[0] + t->shape[1]));
    }
    if (strstr(name, "in_proj_bias") || strstr(name, "out_proj.bias")) return perturb;
    return (float)(1.0 / sqrt((double)fan_in));
}

void enc_init_random(float *params, const EncConfig *cfg, uint64_t seed, unsigned flags) {
    size_t n = enc_tensor_count(cfg), fan_in = 1;

    for (size_t i = 0; i < n; i++) {
        EncTensor t;
        enc_tensor_info(&t, cfg, i);
        if (t.ndim == 2) fan_in = t.shape[1]; /* a bias follows its weight */

        /* One stream per tensor, so that a tensor's values do not depend on the
         * sizes of the tensors before it. */
        uint64_t state = seed ^ (0xD1B54A32D192ED03ull * (i + 1));
        float centre, a = init_bound(&t, fan_in, flags, &centre);
        fill_uniform(params + t.offset, t.numel, a, centre, &state);
    }
}

/* --- chunking --- */

size_t enc_chunk_count(size_t n, const EncConfig *cfg) {
    size_t L = (size_t)cfg->max_len, stride = (size_t)cfg->chunk_stride;

    if (n == 0) return 0;
    if (n <= L) return 1;
    return 1 + (n - L + stride - 1) / stride;
}

size_t enc_packed_len(size_t n, const EncConfig *cfg) {
    size_t chunks = enc_chunk_count(n, cfg), L = (size_t)cfg->max_len;

    if (chunks == 0) return 0;
    /* All chunks are full but the last, which starts at (chunks - 1) * stride. */
    return (chunks - 1) * L + (n - (chunks - 1) * (size_t)cfg->chunk_stride);
}

/* --- workspace --- */

typedef struct {
    char *base; /* NULL while only measuring */
    size_t used;
    bool overflow;
} Carver;

static size_t mul_sat(size_t a, size_t b) {
    return b && a > SIZE_MAX / b ? SIZE_MAX : a * b;
}

/* Reserves n elements of size sz, 64-byte aligned relative to base. */
static void *carve(Carver *cv, size_t n, size_t sz) {
    size_t bytes = mul_sat(n, sz), start = (cv->used + 63) & ~(size_t)63;

    if (bytes == SIZE_MAX || start < cv->used || bytes > SIZE_MAX - start) {
        cv->overflow = true;
        return NULL;
    }
    cv->used = start + bytes;
    return cv->base && !cv->overflow ? cv->base + start : NULL;
}

/* The forward pass runs all layers over a group of whole chunks of at most
 * GROUP_TOKENS tokens before the next group, so that a group's activations stay
 * in the core's cache from one step and one layer to the next (about 4% faster
 * at batch 32 here than one group of 2,048 tokens; smaller groups repack the
 * weights too often). A group holds at least one chunk, so up to max(L, 512). */
#define GROUP_TOKENS 512

static size_t group_rows(const EncConfig *cfg) {
    return (size_t)cfg->max_len > GROUP_TOKENS ? (size_t)cfg->max_len : GROUP_TOKENS;
}

/* Lays the workspace out. Without ENC_TRACE the layers share one set of buffers
 * and the dead ones are reused: x = emb = ln1 = ln2 (residual stream, updated in
 * place, T rows), and scratch of one group's rows: R = qkv then attn then fch,
 * atty after qkv in R, ff apart. */
static void plan(EncWork *ws, Carver *cv, const EncConfig *cfg, size_t T, size_t S, size_t B,
                 unsigned flags) {
    size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff, L = (size_t)cfg->max_len;

    if (flags & ENC_TRAIN) flags |= ENC_TRACE;
    if (S == SIZE_MAX || B == SIZE_MAX) cv->overflow = true; /* S + 1, B + 1 below */
    ws->tok = carve(cv, T, sizeof(int32_t));
    ws->pos = carve(cv, T, sizeof(int32_t));
    ws->chunk_off = carve(cv, S + 1, sizeof(size_t));
    ws->prompt_chunk = carve(cv, B + 1, sizeof(size_t));
    ws->scores = carve(cv, L * L, sizeof(float));
    ws->pooled = carve(cv, mul_sat(B, C), sizeof(float));
    ws->projected = carve(cv, mul_sat(B, (size_t)cfg->proj_dim), sizeof(float));
    ws->emb = carve(cv, mul_sat(T, C), sizeof(float));

    if (!(flags & ENC_TRACE)) {
        size_t G = T < group_rows(cfg) ? T : group_rows(cfg);
        float *r = carve(cv, mul_sat(G, 4 * C > F ? 4 * C : F), sizeof(float));
        float *ff = carve(cv, mul_sat(G, C), sizeof(float));
        for (int l = 0; l < cfg->n_layers; l++) {
            EncLayerActs *a = &ws->layer[l];
            a->qkv = r, a->atty = r ? r + G * 3 * C : NULL, a->attn = r, a->fch = r;
            a->ff = ff, a->ln1 = ws->emb, a->ln2 = ws->emb, a->slope = NULL, a->att = NULL;
        }
        return;
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        EncLayerActs *a = &ws->layer[l];
        a->slope = flags & ENC_TRAIN ? carve(cv, mul_sat(T, F), sizeof(float)) : NULL;
        /* A chunk of N tokens keeps N^2 <= N L probabilities per head. */
        size_t att = mul_sat(T, mul_sat(L, (size_t)cfg->n_heads));
        a->att = flags & ENC_TRAIN ? carve(cv, att, sizeof(float)) : NULL;
        a->qkv = carve(cv, mul_sat(T, 3 * C), sizeof(float));
        a->atty = carve(cv, mul_sat(T, C), sizeof(float));
        a->attn = carve(cv, mul_sat(T, C), sizeof(float));
        a->ln1 = carve(cv, mul_sat(T, C), sizeof(float));
        a->fch = carve(cv, mul_sat(T, F), sizeof(float));
        a->ff = carve(cv, mul_sat(T, C), sizeof(float));
        a->ln2 = carve(cv, mul_sat(T, C), sizeof(float));
    }
}

size_t enc_work_size(const EncConfig *cfg, size_t max_tokens, size_t max_chunks, size_t max_prompts,
                     unsigned flags) {
    EncWork ws;
    Carver cv = {0};

    plan(&ws, &cv, cfg, max_tokens, max_chunks, max_prompts, flags);
    /* Room to move an arbitrary arena start up to a 64-byte boundary. */
    return cv.overflow || cv.used > SIZE_MAX - 64 ? SIZE_MAX : cv.used + 64;
}

int enc_work_init(EncWork *ws, void *arena, size_t arena_size, const EncConfig *cfg,
                  size_t max_tokens, size_t max_chunks, size_t max_prompts, unsigned flags) {
    size_t need = enc_work_size(cfg, max_tokens, max_chunks, max_prompts, flags);

    if (flags & ENC_TRAIN) flags |= ENC_TRACE; /* the backward pass reads every activation */
    memset(ws, 0, sizeof *ws);
    if (need == SIZE_MAX || arena_size < need) return ENC_E_ARENA;

    uintptr_t p = (uintptr_t)arena;
    Carver cv = {.base = (char *)arena + (((p + 63) & ~(uintptr_t)63) - p)};
    plan(ws, &cv, cfg, max_tokens, max_chunks, max_prompts, flags);
    ws->max_tokens = max_tokens, ws->max_chunks = max_chunks, ws->max_prompts = max_prompts;
    ws->flags = flags, ws->cfg = *cfg;
    return 0;
}

/* --- SIMD helpers (x86-64 with AVX2 and FMA, chosen at run time) --- */

/* __builtin_cpu_supports reads flags that libgcc sets before main: no state of
 * our own, so any thread may ask. */
static bool use_avx2(void) {
#if HAVE_X86_SIMD
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

#if HAVE_X86_SIMD
/* Lanes [0, n) of a vector, n in [0, 8]: for loads, stores and blends of a tail. */
TARGET_AVX2 static inline __m256i lanes(size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* e^x within 2 ulp on [-87, 88] (inputs are clamped there): x = n ln2 + r with
 * |r| <= ln2/2, e^r by its Taylor series to r^7 (error below 1e-8), and 2^n put
 * straight into the exponent bits. */
TARGET_AVX2 static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); /* ln2, high bits */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);     /* ln2, the rest */

    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));

    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* erf(t) by Abramowitz and Stegun 7.1.26: 1 - (a1 k + ... + a5 k^5) e^(-t^2),
 * k = 1 / (1 + p |t|), absolute error <= 1.5e-7; *gauss receives e^(-t^2), which
 * GELU's slope needs too. */
TARGET_AVX2 static inline __m256 erf256(__m256 t, __m256 *gauss) {
    __m256 sign = _mm256_and_ps(t, _mm256_set1_ps(-0.0f));
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), t);
    __m256 k = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));

    __m256 q = _mm256_set1_ps(1.061405429f);
    q = _mm256_fmadd_ps(q, k, _mm256_set1_ps(-1.453152027f));
    q = _mm256_fmadd_ps(q, k, _mm256_set1_ps(1.421413741f));
    q = _mm256_fmadd_ps(q, k, _mm256_set1_ps(-0.284496736f));
    q = _mm256_fmadd_ps(q, k, _mm256_set1_ps(0.254829592f));
    q = _mm256_mul_ps(q, k);

    *gauss = exp256(_mm256_mul_ps(_mm256_xor_ps(a, _mm256_set1_ps(-0.0f)), a));
    return _mm256_or_ps(_mm256_fnmadd_ps(q, *gauss, _mm256_set1_ps(1.0f)), sign);
}

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)), erf by erf256. Measured on [-10, 10]
 * against erf in double: GELU within 3.7e-7, no worse than the float erff form of
 * the naive path (4.5e-7). */
TARGET_AVX2 static inline __m256 gelu256(__m256 x) {
    __m256 gauss, erf = erf256(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678f)), &gauss);
    __m256 half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5f));
    return _mm256_fmadd_ps(half_x, erf, half_x);
}

/* GELU's slope: Phi(x) + x phi(x) = (1 + erf(x / sqrt 2)) / 2 + x e^(-x^2/2) / sqrt(2 pi). */
TARGET_AVX2 static inline __m256 gelu_slope256(__m256 x) {
    __m256 gauss, erf = erf256(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678f)), &gauss);
    __m256 cdf = _mm256_fmadd_ps(erf, _mm256_set1_ps(0.5f), _mm256_set1_ps(0.5f));
    return _mm256_fmadd_ps(_mm256_mul_ps(x, gauss), _mm256_set1_ps(0.39894228f), cdf);
}

TARGET_AVX2 static void gelu_slope_avx2(float *slope, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(slope + i, gelu_slope256(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = lanes(n - i);
        _mm256_maskstore_ps(slope + i, m, gelu_slope256(_mm256_maskload_ps(x + i, m)));
    }
}

TARGET_AVX2 static void gelu_avx2(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu256(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = lanes(n - i);
        _mm256_maskstore_ps(x + i, m, gelu256(_mm256_maskload_ps(x + i, m)));
    }
}

TARGET_AVX2 static void relu_avx2(float *x, size_t n) {
    size_t i = 0;
    __m256 zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_max_ps(_mm256_loadu_ps(x + i), zero));
    for (; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

TARGET_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TARGET_AVX2 static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Softmax of one row of n scores, in place. */
TARGET_AVX2 static void softmax_avx2(float *a, size_t n) {
    size_t full = n & ~(size_t)7, rest = n - full;
    __m256i m = lanes(rest);
    __m256 vmax = _mm256_set1_ps(-INFINITY);

    for (size_t i = 0; i < full; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(a + i));
    if (rest) {
        __m256 v = _mm256_blendv_ps(vmax, _mm256_maskload_ps(a + full, m), _mm256_castsi256_ps(m));
        vmax = _mm256_max_ps(vmax, v);
    }
    __m256 mx = _mm256_set1_ps(hmax256(vmax)), vsum = _mm256_setzero_ps();

    for (size_t i = 0; i < full; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(a + i), mx));
        _mm256_storeu_ps(a + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    if (rest) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_maskload_ps(a + full, m), mx));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
        _mm256_maskstore_ps(a + full, m, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum256(vsum));

    for (size_t i = 0; i < full; i += 8)
        _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), inv));
    if (rest) _mm256_maskstore_ps(a + full, m, _mm256_mul_ps(_mm256_maskload_ps(a + full, m), inv));
}

/* out = LN(x + r) * w + b for one row of C floats, C a multiple of 8; out may be x. */
TARGET_AVX2 static void residual_ln_avx2(float *out, const float *x, const float *r, const float *w,
                                         const float *b, size_t C, float eps) {
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < C; i += 8) {
        __m256 s = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(r + i));
        _mm256_storeu_ps(out + i, s);
        acc = _mm256_add_ps(acc, s);
    }
    __m256 mean = _mm256_set1_ps(hsum256(acc) / (float)C);

    acc = _mm256_setzero_ps();
    for (size_t i = 0; i < C; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(out + i), mean);
        acc = _mm256_fmadd_ps(d, d, acc);
    }
    __m256 rstd = _mm256_set1_ps(1.0f / sqrtf(hsum256(acc) / (float)C + eps));

    for (size_t i = 0; i < C; i += 8) {
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(out + i), mean), rstd);
        _mm256_storeu_ps(out + i,
                         _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
}
#endif

/* --- embedding, pooling, normalisation (one version: no product, no libm) --- */

/* out (T, C) = wte[tok] + wpe[pos] */
static void embedding_forward(float *out, const int32_t *tok, const int32_t *pos, const float *wte,
                              const float *wpe, size_t T, size_t C) {
    for (size_t t = 0; t < T; t++) {
        const float *we = wte + (size_t)tok[t] * C, *pe = wpe + (size_t)pos[t] * C;
        float *o = out + t * C;
        for (size_t c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}

/* pooled (B, C) = for each prompt, the sum of h (T, C) over the tokens of all its
 * chunks divided by their number: the chunk means weighted by chunk length. */
static void pooling_forward(float *pooled, const float *h, const size_t *chunk_off,
                            const size_t *prompt_chunk, size_t B, size_t C) {
    for (size_t b = 0; b < B; b++) {
        float *o = pooled + b * C;
        size_t t0 = chunk_off[prompt_chunk[b]], t1 = chunk_off[prompt_chunk[b + 1]];

        memset(o, 0, C * sizeof *o);
        for (size_t t = t0; t < t1; t++) {
            for (size_t c = 0; c < C; c++) o[c] += h[t * C + c];
        }
        if (t1 > t0) {
            float inv = 1.0f / (float)(t1 - t0);
            for (size_t c = 0; c < C; c++) o[c] *= inv;
        }
    }
}

/* out (B, P) = inp / max(|inp|, 1e-12), as torch.nn.functional.normalize. */
static void l2norm_forward(float *out, const float *inp, size_t B, size_t P) {
    for (size_t b = 0; b < B; b++) {
        double ss = 0.0;
        for (size_t p = 0; p < P; p++) ss += (double)inp[b * P + p] * inp[b * P + p];
        float norm = (float)sqrt(ss), inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
        for (size_t p = 0; p < P; p++) out[b * P + p] = inp[b * P + p] * inv;
    }
}

/* --- matmul: out (T, OC) = inp (T, IC) . w^T + b, w (OC, IC) as nn.Linear --- */

/* wt (IC, OC), the transposed copy of w, is ignored here: the loops read w. */
static void matmul_forward_naive(float *out, const float *inp, const float *w, const float *wt,
                                 const float *b, size_t T, size_t IC, size_t OC) {
    (void)wt;
    for (size_t t = 0; t < T; t++) {
        for (size_t o = 0; o < OC; o++) {
            float acc = b[o];
            for (size_t i = 0; i < IC; i++) acc += inp[t * IC + i] * w[o * IC + i];
            out[t * OC + o] = acc;
        }
    }
}

/* The bias is copied into out first and sgemm adds the product (beta = 1), as
 * torch's addmm does. wt (IC, OC), when not NULL, is w transposed (enc_prepare). */
static void matmul_forward_blas(float *out, const float *inp, const float *w, const float *wt,
                                const float *b, size_t T, size_t IC, size_t OC) {
    if (T == 0) return;
    for (size_t t = 0; t < T; t++) memcpy(out + t * OC, b, OC * sizeof *out);
    if (wt) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)OC, (int)IC, 1.0f, inp,
                    (int)IC, wt, (int)OC, 1.0f, out, (int)OC);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)OC, (int)IC, 1.0f, inp,
                    (int)IC, w, (int)IC, 1.0f, out, (int)OC);
    }
}

/* --- attention: atty (T, C) from qkv (T, 3C), chunk by chunk --- */

/* Row i of a chunk: softmax_j(q_i . k_j / sqrt(D)) over its N keys, then the
 * weighted sum of the v_j; heads h take channels [h D, (h+1) D). */
static void attention_forward_naive(float *atty, float *scores, const float *qkv,
                                    const size_t *chunk_off, size_t S, size_t C, size_t H,
                                    size_t t_base, bool keep) {
    size_t D = C / H, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)D);

    for (size_t s = 0; s < S; s++) {
        size_t t0 = chunk_off[s] - t_base, N = chunk_off[s + 1] - chunk_off[s];
        for (size_t h = 0; h < H; h++, scores += keep ? N * N : 0) {
            for (size_t i = 0; i < N; i++) {
                const float *q = qkv + (t0 + i) * C3 + h * D;
                float *row = scores + i * N, mx = -INFINITY, sum = 0.0f;
                for (size_t j = 0; j < N; j++) {
                    const float *k = qkv + (t0 + j) * C3 + C + h * D;
                    float dot = 0.0f;
                    for (size_t d = 0; d < D; d++) dot += q[d] * k[d];
                    row[j] = dot * scale;
                    mx = row[j] > mx ? row[j] : mx;
                }
                for (size_t j = 0; j < N; j++) sum += row[j] = expf(row[j] - mx);

                float *o = atty + (t0 + i) * C + h * D;
                for (size_t d = 0; d < D; d++) o[d] = 0.0f;
                for (size_t j = 0; j < N; j++) {
                    const float *v = qkv + (t0 + j) * C3 + 2 * C + h * D;
                    float p = row[j] / sum;
                    if (keep) row[j] = p;
                    for (size_t d = 0; d < D; d++) o[d] += p * v[d];
                }
            }
        }
    }
}

static void softmax_rows(float *a, size_t rows, size_t n) {
#if HAVE_X86_SIMD
    if (use_avx2()) {
        for (size_t i = 0; i < rows; i++) softmax_avx2(a + i * n, n);
        return;
    }
#endif
    for (size_t i = 0; i < rows; i++) {
        float *row = a + i * n, mx = -INFINITY, sum = 0.0f;
        for (size_t j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
        for (size_t j = 0; j < n; j++) sum += row[j] = expf(row[j] - mx);
        for (size_t j = 0; j < n; j++) row[j] /= sum;
    }
}

/* Two sgemm per chunk and head, reading q, k, v in place through the leading
 * dimension 3C: scores (N, N) = q k^T / sqrt(D), then atty = softmax(scores) v.
 * With keep, scores is not scratch but where every chunk's and head's probabilities
 * stay, one N x N block after the other, for the backward pass. */
static void attention_forward_blas(float *atty, float *scores, const float *qkv,
                                   const size_t *chunk_off, size_t S, size_t C, size_t H,
                                   size_t t_base, bool keep) {
    int D = (int)(C / H), C3 = (int)(3 * C);
    float scale = 1.0f / sqrtf((float)D);

    for (size_t s = 0; s < S; s++) {
        size_t t0 = chunk_off[s] - t_base;
        int N = (int)(chunk_off[s + 1] - chunk_off[s]);
        const float *base = qkv + t0 * 3 * C;
        for (size_t h = 0; h < H; h++, scores += keep ? N * N : 0) {
            const float *q = base + h * (size_t)D, *k = q + C, *v = q + 2 * C;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, D, scale, q, C3, k, C3, 0.0f,
                        scores, N);
            softmax_rows(scores, (size_t)N, (size_t)N);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, N, 1.0f, scores, N, v, C3,
                        0.0f, atty + t0 * C + h * (size_t)D, (int)C);
        }
    }
}

/* --- layer norm and activation --- */

/* out (T, C) = LN(x + r) * w + b over each row; out may be x (in place). The
 * variance is the biased one, as torch.nn.LayerNorm. */
static void residual_layernorm_forward(float *out, const float *x, const float *r, const float *w,
                                       const float *b, size_t T, size_t C, float eps, bool fast) {
#if HAVE_X86_SIMD
    if (fast && C % 8 == 0 && use_avx2()) {
        for (size_t t = 0; t < T; t++) {
            residual_ln_avx2(out + t * C, x + t * C, r + t * C, w, b, C, eps);
        }
        return;
    }
#endif
    (void)fast;
    for (size_t t = 0; t < T; t++) {
        float *o = out + t * C, mean = 0.0f, var = 0.0f;
        for (size_t c = 0; c < C; c++) mean += o[c] = x[t * C + c] + r[t * C + c];
        mean /= (float)C;
        for (size_t c = 0; c < C; c++) var += (o[c] - mean) * (o[c] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + eps);
        for (size_t c = 0; c < C; c++) o[c] = (o[c] - mean) * rstd * w[c] + b[c];
    }
}

/* x (n) = act(x), in place: GELU's exact erf form or ReLU. */
static void activation_forward(float *x, size_t n, int act, bool fast) {
#if HAVE_X86_SIMD
    if (fast && use_avx2()) {
        if (act == ENC_ACT_GELU)
            gelu_avx2(x, n);
        else
            relu_avx2(x, n);
        return;
    }
#endif
    (void)fast;
    for (size_t i = 0; i < n; i++) {
        if (act == ENC_ACT_GELU)
            x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        else
            x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
}

/* slope (n) = act'(x (n)), what the backward pass multiplies by: GELU's
 * Phi(x) + x phi(x), or ReLU's step (0 at 0, as torch). */
static void activation_slope(float *slope, const float *x, size_t n, int act, bool fast) {
#if HAVE_X86_SIMD
    if (fast && act == ENC_ACT_GELU && use_avx2()) {
        gelu_slope_avx2(slope, x, n);
        return;
    }
#endif
    (void)fast;
    for (size_t i = 0; i < n; i++) {
        if (act == ENC_ACT_GELU) {
            float cdf = 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
            slope[i] = cdf + x[i] * expf(-0.5f * x[i] * x[i]) * 0.39894228040143268f;
        } else {
            slope[i] = x[i] > 0.0f ? 1.0f : 0.0f;
        }
    }
}

/* --- forward --- */

/* Checks the batch against the workspace and the vocabulary, then writes the
 * plan: packed ids and positions, chunk and prompt offsets. */
static int plan_batch(EncWork *ws, const int32_t *ids, const size_t *off, size_t B,
                      const EncConfig *cfg) {
    size_t T = 0, S = 0, L = (size_t)cfg->max_len, stride = (size_t)cfg->chunk_stride;

    if (B > ws->max_prompts) return ENC_E_CAP;
    for (size_t b = 0; b < B; b++) {
        size_t n = off[b + 1] - off[b];
        T += enc_packed_len(n, cfg);
        S += enc_chunk_count(n, cfg);
        for (size_t i = off[b]; i < off[b + 1]; i++) {
            if (ids[i] < 0 || ids[i] >= cfg->vocab_size) return ENC_E_ID;
        }
    }
    if (T > ws->max_tokens || S > ws->max_chunks) return ENC_E_CAP;

    size_t t = 0, s = 0;
    ws->chunk_off[0] = 0;
    for (size_t b = 0; b < B; b++) {
        size_t n = off[b + 1] - off[b], chunks = enc_chunk_count(n, cfg);
        ws->prompt_chunk[b] = s;
        for (size_t k = 0; k < chunks; k++, s++) {
            size_t start = k * stride, len = n - start < L ? n - start : L;
            for (size_t i = 0; i < len; i++, t++) {
                ws->tok[t] = ids[off[b] + start + i];
                ws->pos[t] = (int32_t)i;
            }
            ws->chunk_off[s + 1] = t;
        }
    }
    ws->prompt_chunk[B] = s;
    ws->n_tokens = T, ws->n_chunks = S, ws->n_prompts = B;
    return 0;
}

/* Runs one layer over chunks [s0, s1), whose tokens are packed rows [t0, t1):
 * the steps around attention are row-wise and attention stays inside a chunk,
 * so any run of whole chunks can go on its own. The residual stream (inp, ln1,
 * ln2) is indexed by packed row; without ENC_TRACE the scratch buffers (qkv, atty,
 * attn, fch, ff) hold only the group, from their first row. */
static void layer_forward(EncLayerActs *a, const float *inp, const EncWork *ws,
                          const EncLayerWeights *lw, const EncConfig *cfg, bool naive, size_t s0,
                          size_t s1, size_t att_base) {
    size_t t0 = ws->chunk_off[s0], T = ws->chunk_off[s1] - t0;
    size_t r0 = ws->flags & ENC_TRACE ? t0 : 0; /* first scratch row of the group */
    size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff, H = (size_t)cfg->n_heads;
    void (*matmul)(float *, const float *, const float *, const float *, const float *, size_t,
                   size_t, size_t) = naive ? matmul_forward_naive : matmul_forward_blas;
    void (*attention)(float *, float *, const float *, const size_t *, size_t, size_t, size_t,
                      size_t, bool) = naive ? attention_forward_naive : attention_forward_blas;
    float *qkv = a->qkv + r0 * 3 * C, *atty = a->atty + r0 * C, *attn = a->attn + r0 * C;
    float *fch = a->fch + r0 * F, *ff = a->ff + r0 * C;
    float *ln1 = a->ln1 + t0 * C, *ln2 = a->ln2 + t0 * C;
    inp += t0 * C;

    /* Self-attention block: ln1 = norm1(x + out_proj(attention(x))). */
    matmul(qkv, inp, lw->qkv_w, lw->qkv_wt, lw->qkv_b, T, C, 3 * C);
    float *scores = a->att ? a->att + att_base : ws->scores;
    attention(a->atty, scores, a->qkv, ws->chunk_off + s0, s1 - s0, C, H, t0 - r0, a->att != NULL);
    matmul(attn, atty, lw->att_w, lw->att_wt, lw->att_b, T, C, C);
    residual_layernorm_forward(ln1, inp, attn, lw->ln1_w, lw->ln1_b, T, C, cfg->ln_eps, !naive);

    /* Feed-forward block: ln2 = norm2(ln1 + linear2(act(linear1(ln1)))). */
    matmul(fch, ln1, lw->fc1_w, lw->fc1_wt, lw->fc1_b, T, C, F);
    if (a->slope) activation_slope(a->slope + r0 * F, fch, T * F, cfg->activation, !naive);
    activation_forward(fch, T * F, cfg->activation, !naive);
    matmul(ff, fch, lw->fc2_w, lw->fc2_wt, lw->fc2_b, T, F, C);
    residual_layernorm_forward(ln2, ln1, ff, lw->ln2_w, lw->ln2_b, T, C, cfg->ln_eps, !naive);
}

/* The end of the group of chunks that starts at s0: whole chunks up to
 * GROUP_TOKENS tokens, at least one. */
static size_t group_end(const EncWork *ws, size_t s0) {
    size_t s1 = s0 + 1;
    while (s1 < ws->n_chunks && ws->chunk_off[s1 + 1] - ws->chunk_off[s0] <= GROUP_TOKENS) s1++;
    return s1;
}

static bool same_config(const EncConfig *a, const EncConfig *b) {
    return a->vocab_size == b->vocab_size && a->d_model == b->d_model &&
           a->n_layers == b->n_layers && a->n_heads == b->n_heads && a->d_ff == b->d_ff &&
           a->max_len == b->max_len && a->chunk_stride == b->chunk_stride &&
           a->proj_dim == b->proj_dim && a->activation == b->activation && a->ln_eps == b->ln_eps;
}

int enc_encode(float *out, EncWork *ws, const int32_t *ids, const size_t *off, size_t n_prompts,
               const EncWeights *w, const EncConfig *cfg, unsigned flags) {
    size_t C = (size_t)cfg->d_model, P = (size_t)cfg->proj_dim;
    bool naive = flags & ENC_NAIVE;
    if (!same_config(&ws->cfg, cfg)) return ENC_E_CFG;
    int rc = plan_batch(ws, ids, off, n_prompts, cfg);
    if (rc) return rc;

    size_t T = ws->n_tokens;
    embedding_forward(ws->emb, ws->tok, ws->pos, w->wte, w->wpe, T, C);
    /* Group after group, every layer (see GROUP_TOKENS). att counts the attention
     * probabilities kept so far (ENC_TRAIN): N^2 per chunk and head. */
    for (size_t s0 = 0, s1, att = 0; s0 < ws->n_chunks; s0 = s1) {
        s1 = group_end(ws, s0);
        const float *x = ws->emb;
        for (int l = 0; l < cfg->n_layers; l++) {
            layer_forward(&ws->layer[l], x, ws, &w->layer[l], cfg, naive, s0, s1, att);
            x = ws->layer[l].ln2;
        }
        for (size_t s = s0; s < s1; s++) {
            size_t N = ws->chunk_off[s + 1] - ws->chunk_off[s];
            att += N * N * (size_t)cfg->n_heads;
        }
    }
    const float *x = ws->layer[cfg->n_layers - 1].ln2;

    pooling_forward(ws->pooled, x, ws->chunk_off, ws->prompt_chunk, n_prompts, C);
    if (naive) {
        matmul_forward_naive(ws->projected, ws->pooled, w->proj_w, NULL, w->proj_b, n_prompts, C,
                             P);
    } else {
        matmul_forward_blas(ws->projected, ws->pooled, w->proj_w, NULL, w->proj_b, n_prompts, C, P);
    }
    l2norm_forward(out, ws->projected, n_prompts, P);
    return 0;
}
