/* encoder.h - the semantic encoder: token ids in, L2-normalised vectors out (pure kernel).
 *
 * The architecture is PyTorch's (kernels/ENCODER.md): token and learned position
 * embeddings, N post-norm nn.TransformerEncoderLayer (self-attention, feed-forward
 * with GELU or ReLU), masked mean pooling, a linear projection and L2
 * normalisation. A prompt longer than max_len tokens is split into overlapping
 * chunks; all chunks of all prompts of a batch run as one packed batch, so the
 * cost follows the sum of the lengths. Matrix products go through OpenBLAS
 * cblas_sgemm, beside a naive loop version (ENC_NAIVE) that tests compare with.
 *
 * No I/O, no allocation, no logging, no threads of its own: the caller sizes one
 * arena with enc_work_size() and owns it. The number of OpenBLAS threads is the
 * caller's business (see ENCODER.md). A workspace is used by one thread at a
 * time; weights are read-only and may be shared by any number of threads.
 */
#ifndef PD_ENCODER_H
#define PD_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#define ENC_MAX_LAYERS 16
#define ENC_NAME_MAX   64 /* longest tensor name, NUL included */

enum { ENC_ACT_GELU = 0, ENC_ACT_RELU = 1 };

/* Errors of enc_encode / enc_work_init (no partial output is meaningful then). */
enum { ENC_E_CAP = -1, ENC_E_ID = -2, ENC_E_ARENA = -3, ENC_E_CFG = -4 };

/* Sizes of a model; a model file's metadata carries them. Letters used in the
 * shapes below: V vocab_size, C d_model, H n_heads, F d_ff, L max_len, P proj_dim. */
typedef struct {
    int vocab_size;   /* V: rows of the token embedding */
    int d_model;      /* C */
    int n_layers;     /* 1..ENC_MAX_LAYERS */
    int n_heads;      /* H, divides C */
    int d_ff;         /* F, 4C by default */
    int max_len;      /* L: chunk length and rows of the position embedding */
    int chunk_stride; /* tokens between chunk starts, 1..L (overlap L - stride) */
    int proj_dim;     /* P: length of the output vector */
    int activation;   /* ENC_ACT_GELU (exact erf form) or ENC_ACT_RELU */
    float ln_eps;     /* LayerNorm epsilon, 1e-5 as PyTorch's default */
} EncConfig;

/* d=256, 2 layers, 8 heads, F=1024, L=64, stride 48, P=64, GELU. */
EncConfig enc_default_config(int vocab_size);

/* 0 when every size is in bounds and consistent, else -1 with a message. */
int enc_check_config(const EncConfig *cfg, char *err, size_t errlen);

/* --- weights --- */

/* Pointers to one layer's tensors, PyTorch layout (out_features, in_features). */
typedef struct {
    const float *qkv_w, *qkv_b; /* (3C, C), (3C): self_attn.in_proj_weight / _bias */
    const float *att_w, *att_b; /* (C, C), (C): self_attn.out_proj */
    const float *fc1_w, *fc1_b; /* (F, C), (F): linear1 */
    const float *fc2_w, *fc2_b; /* (C, F), (C): linear2 */
    const float *ln1_w, *ln1_b; /* (C), (C): norm1 */
    const float *ln2_w, *ln2_b; /* (C), (C): norm2 */

    /* Transposed copies (in_features, out_features) made by enc_prepare, or NULL.
     * OpenBLAS packs a weight on every call, and packs it much faster from this
     * layout when the weight comes from memory rather than cache: 10-25% on the
     * d=256 shapes here. */
    const float *qkv_wt, *att_wt; /* (C, 3C), (C, C) */
    const float *fc1_wt, *fc2_wt; /* (C, F), (F, C) */
} EncLayerWeights;

typedef struct {
    const float *wte; /* (V, C) embedding.weight */
    const float *wpe; /* (L, C) pos_embedding.weight */
    EncLayerWeights layer[ENC_MAX_LAYERS];
    const float *proj_w; /* (P, C) proj.weight */
    const float *proj_b; /* (P) proj.bias */
} EncWeights;

/* One tensor of the model, in the canonical order (PyTorch's state_dict order),
 * which is also the order of the data in a model file and of a flat buffer. */
typedef struct {
    char name[ENC_NAME_MAX]; /* e.g. "layers.0.self_attn.in_proj_weight" */
    int ndim;                /* 1 or 2 */
    size_t shape[2];
    size_t numel;
    size_t offset; /* in floats, from the start of a flat parameter buffer */
} EncTensor;

size_t enc_tensor_count(const EncConfig *cfg);

/* Describes tensor i < enc_tensor_count(cfg). */
void enc_tensor_info(EncTensor *t, const EncConfig *cfg, size_t i);

/* Floats of all tensors together. */
size_t enc_param_count(const EncConfig *cfg);

/* Points w at the tensors: tensors[i] holds tensor i of enc_tensor_info. */
void enc_weights_bind(EncWeights *w, const EncConfig *cfg, const float *const *tensors);

/* Points w into a flat buffer of enc_param_count floats, in canonical order. */
void enc_weights_flat(EncWeights *w, const EncConfig *cfg, const float *params);

/* Floats of the buffer that enc_prepare fills: the transposed linear weights. */
size_t enc_prepared_count(const EncConfig *cfg);

/* Writes transposed copies of each layer's linear weights into buf
 * (enc_prepared_count floats, owned by the caller, kept as long as w) and points
 * w's *_wt fields at them; the BLAS path then uses them. Optional: without it
 * the same products run on the original layout. */
void enc_prepare(EncWeights *w, float *buf, const EncConfig *cfg);

#define ENC_INIT_PERTURB 1u /* also randomise zero biases and LayerNorm (tests) */

/* Fills params (enc_param_count floats) with seeded uniform weights scaled as
 * PyTorch's default initialisers; the same seed gives the same bits everywhere
 * (integer generator, exact float arithmetic). */
void enc_init_random(float *params, const EncConfig *cfg, uint64_t seed, unsigned flags);

/* --- chunking --- */

/* Chunks of a prompt of n tokens: 0 for n = 0, 1 for n <= L, else
 * 1 + ceil((n - L) / stride). Chunk k covers tokens [k*stride, min(k*stride + L, n)). */
size_t enc_chunk_count(size_t n, const EncConfig *cfg);

/* Tokens that the packed batch holds for a prompt of n tokens: the sum of its
 * chunk lengths, which is below n * L / stride + L. */
size_t enc_packed_len(size_t n, const EncConfig *cfg);

/* --- workspace --- */

#define ENC_TRACE 1u /* keep every layer's activations apart, for tests */
#define ENC_NAIVE 2u /* enc_encode: plain loops instead of BLAS and SIMD */
#define ENC_TRAIN 4u /* ENC_TRACE plus what the backward pass needs (encoder_backward.h) */

/* Activations of one layer over the T packed tokens: the trace tests read. With
 * ENC_TRACE every buffer is apart and complete after enc_encode. Without it the
 * layers share one set, ln1 and ln2 are emb (the residual stream, updated in
 * place), and the others are scratch holding one group of chunks (at most
 * max(L, 512) tokens, from their first row) that later steps overwrite. */
typedef struct {
    float *qkv;   /* (T, 3C) q, k, v projections */
    float *atty;  /* (T, C) attention heads, concatenated, before out_proj */
    float *attn;  /* (T, C) self_attn output (after out_proj) */
    float *ln1;   /* (T, C) norm1(x + attn) */
    float *fch;   /* (T, F) activation(linear1(ln1)) */
    float *slope; /* (T, F) act'(linear1(ln1)), for the backward pass: ENC_TRAIN, else NULL */
    float *att;   /* softmax probabilities of every chunk and head, chunk after chunk, head
                   * after head, N x N each (at most T L H floats): ENC_TRAIN, else NULL */
    float *ff;    /* (T, C) linear2(fch) */
    float *ln2;   /* (T, C) norm2(ln1 + ff): the layer's output, kept */
} EncLayerActs;

typedef struct {
    size_t max_tokens, max_chunks, max_prompts; /* capacity: T, S, B */
    unsigned flags;
    EncConfig cfg; /* the configuration the workspace was laid out for */

    /* The plan of the last enc_encode call. */
    size_t n_tokens, n_chunks, n_prompts;
    int32_t *tok;         /* (T) packed token ids, chunk after chunk */
    int32_t *pos;         /* (T) position of each token within its chunk */
    size_t *chunk_off;    /* (S+1) chunk s holds packed tokens [chunk_off[s], chunk_off[s+1]) */
    size_t *prompt_chunk; /* (B+1) prompt b owns chunks [prompt_chunk[b], prompt_chunk[b+1]) */

    float *emb;                         /* (T, C) token + position embedding (ENC_TRACE) */
    EncLayerActs layer[ENC_MAX_LAYERS]; /* only n_layers are set */
    float *scores;                      /* (L, L) one head's attention scratch */
    float *pooled;                      /* (B, C) mean of the last ln2 over a prompt's tokens */
    float *projected;                   /* (B, P) proj(pooled), before normalisation */
} EncWork;

/* Bytes of arena for a workspace of T packed tokens, S chunks and B prompts,
 * flags ENC_TRACE, ENC_TRAIN or 0; SIZE_MAX when that overflows. Without
 * ENC_TRACE, about 1 KB per token plus a fixed 2.5 MB at the default size (20 MB
 * for 256 prompts of 64 tokens); with it, 27 KB per token; ENC_TRAIN adds F + L H
 * floats per token and layer (35 KB per token at the default size). */
size_t enc_work_size(const EncConfig *cfg, size_t max_tokens, size_t max_chunks, size_t max_prompts,
                     unsigned flags);

/* Carves arena (at least enc_work_size bytes, any alignment) into ws. Returns 0,
 * or ENC_E_ARENA when arena_size is too small. */
int enc_work_init(EncWork *ws, void *arena, size_t arena_size, const EncConfig *cfg,
                  size_t max_tokens, size_t max_chunks, size_t max_prompts, unsigned flags);

/* --- forward --- */

/* Encodes B prompts: prompt b is ids[off[b] .. off[b+1]) (off has B+1 entries;
 * a prompt may be empty). Writes out (B, P), each row of unit L2 norm (an empty
 * prompt gives normalize(proj.bias)). flags: ENC_NAIVE or 0. Returns 0,
 * ENC_E_CAP when the batch needs more than the workspace's T, S or B, ENC_E_ID
 * when an id lies outside [0, V), or ENC_E_CFG when ws was laid out for another
 * configuration; all are checked before any work. */
int enc_encode(float *out, EncWork *ws, const int32_t *ids, const size_t *off, size_t n_prompts,
               const EncWeights *w, const EncConfig *cfg, unsigned flags);

#endif
