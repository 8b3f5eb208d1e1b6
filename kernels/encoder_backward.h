/* encoder_backward.h - the encoder's backward pass, for training (pure kernel).
 *
 * Given the gradient of a loss with respect to the output vectors of the last
 * enc_encode() on a workspace laid out with ENC_TRAIN, enc_backward() accumulates
 * the gradient of every weight: L2 normalisation, projection, mean pooling over
 * the chunks of each prompt, every encoder layer (LayerNorm, feed-forward,
 * self-attention chunk by chunk) and the token and position embeddings (only the
 * rows of the batch's tokens are touched). The arithmetic is PyTorch autograd's
 * for the same module (kernels/ENCODER.md, "Training").
 *
 * Gradients accumulate (+=) into a flat buffer in the canonical tensor order
 * (enc_tensor_info), which the caller zeroes; the same layout as the weights, so
 * Adam (kernels/adam.h) runs over both as flat arrays. No allocation, no I/O: the
 * caller sizes one scratch arena with enc_backward_work_size(). A workspace is
 * used by one thread at a time.
 *
 * Letters as in encoder.h: B prompts, T packed tokens, C d_model, F d_ff,
 * L max_len, P proj_dim.
 */
#ifndef PD_ENCODER_BACKWARD_H
#define PD_ENCODER_BACKWARD_H

#include "encoder.h"

#include <stddef.h>

/* Writable pointers to one layer's gradients, named as EncLayerWeights. */
typedef struct {
    float *qkv_w, *qkv_b, *att_w, *att_b;
    float *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
} EncLayerGrads;

typedef struct {
    float *wte, *wpe; /* (V, C), (L, C) */
    EncLayerGrads layer[ENC_MAX_LAYERS];
    float *proj_w, *proj_b; /* (P, C), (P) */
} EncGrads;

/* Points g into a flat buffer of enc_param_count floats, in canonical order. */
void enc_grads_flat(EncGrads *g, const EncConfig *cfg, float *grad);

/* Scratch of one backward pass; every buffer is overwritten. */
typedef struct {
    size_t max_tokens, max_prompts; /* capacity: T, B */
    EncConfig cfg;
    float *dx;         /* (T, C) gradient of the residual stream between layers */
    float *dln1;       /* (T, C) gradient of a layer's norm1 output */
    float *dsum;       /* (T, C) gradient of a LayerNorm's input sum */
    float *dqkv;       /* (T, 3C) */
    float *datty;      /* (T, C) */
    float *dfch;       /* (T, F) */
    float *dprobs;     /* (L, L) one chunk and head */
    float *dpooled;    /* (B, C) */
    float *dprojected; /* (B, P) */
} EncBackWork;

/* Bytes of arena for T packed tokens and B prompts; SIZE_MAX on overflow. With
 * ENC_BACK_HEAD only the (B, ...) buffers are needed: pass max_tokens 0. */
size_t enc_backward_work_size(const EncConfig *cfg, size_t max_tokens, size_t max_prompts);

/* Carves arena (any alignment, at least enc_backward_work_size bytes) into bw.
 * Returns 0 or ENC_E_ARENA. */
int enc_backward_work_init(EncBackWork *bw, void *arena, size_t arena_size, const EncConfig *cfg,
                           size_t max_tokens, size_t max_prompts);

#define ENC_BACK_HEAD 8u /* stop at the projection: gradients of proj.weight and proj.bias only */

/* Accumulates into g the weights' gradient of a loss whose gradient with respect
 * to out (B, P), the output of the last enc_encode on ws, is dout (B, P). ws must
 * be laid out with ENC_TRAIN (ENC_TRACE suffices with ENC_BACK_HEAD) and still
 * hold that call's activations; w and cfg are the ones it ran with. flags:
 * ENC_NAIVE (plain loops instead of BLAS), ENC_BACK_HEAD. Returns 0, ENC_E_CFG
 * when ws or bw was laid out for another configuration or ws lacks ENC_TRAIN, or
 * ENC_E_CAP when the batch exceeds bw; both checked before any work. */
int enc_backward(const EncGrads *g, EncBackWork *bw, const float *dout, const float *out,
                 const EncWork *ws, const EncWeights *w, const EncConfig *cfg, unsigned flags);

#endif
