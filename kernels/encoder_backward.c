/* encoder_backward.c - backward pass of the encoder over packed chunks; see
 * encoder_backward.h.
 *
 * Does: the gradient of every weight from the gradient of the output vectors,
 * step by step in the reverse order of enc_encode: L2 normalisation, projection,
 * pooling, then each layer (norm2, feed-forward, norm1, out_proj, attention,
 * in_proj) and the embeddings. Each step has a naive loop version (ENC_NAIVE) and
 * one whose matrix products go through cblas_sgemm; tests compare the two.
 *
 * Does not: allocate, log, do I/O, or keep state.
 *
 * Shapes (letters of encoder.c; d-prefixed buffers hold gradients):
 *   dout, out (B, P)   dprojected (B, P)   dpooled (B, C)
 *   per layer, from the forward's trace: inp, attn, atty, ln1, ff (T, C)
 *     qkv (T, 3C)  fch, slope (T, F)  att (sum over chunks of N^2 H)
 *   dx, dln1, dsum, datty (T, C)  dqkv (T, 3C)  dfch (T, F)  dprobs (L, L)
 *
 * What the forward did not keep is recomputed: a LayerNorm's mean and variance from
 * its two inputs (an O(T C) loop). The attention probabilities and the activation's
 * slope are kept by the forward on an ENC_TRAIN workspace.
 */
#include "encoder_backward.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* --- gradient pointers --- */

void enc_grads_flat(EncGrads *g, const EncConfig *cfg, float *grad) {
    float *t[2 + 12 * ENC_MAX_LAYERS + 2];
    size_t n = enc_tensor_count(cfg);

    for (size_t i = 0; i < n; i++) {
        EncTensor info;
        enc_tensor_info(&info, cfg, i);
        t[i] = grad + info.offset;
    }

    /* The order of enc_tensor_info: embeddings, 12 tensors per layer, projection. */
    memset(g, 0, sizeof *g);
    g->wte = t[0], g->wpe = t[1];
    for (int l = 0; l < cfg->n_layers; l++) {
        float **lt = t + 2 + 12 * (size_t)l;
        EncLayerGrads *lg = &g->layer[l];
        lg->qkv_w = lt[0], lg->qkv_b = lt[1], lg->att_w = lt[2], lg->att_b = lt[3];
        lg->fc1_w = lt[4], lg->fc1_b = lt[5], lg->fc2_w = lt[6], lg->fc2_b = lt[7];
        lg->ln1_w = lt[8], lg->ln1_b = lt[9], lg->ln2_w = lt[10], lg->ln2_b = lt[11];
    }
    g->proj_w = t[n - 2], g->proj_b = t[n - 1];
}

/* --- workspace --- */

typedef struct {
    char *base; /* NULL while measuring */
    size_t used;
    bool overflow;
} Carver;

static size_t mul_sat(size_t a, size_t b) {
    return b && a > SIZE_MAX / b ? SIZE_MAX : a * b;
}

static float *carve(Carver *cv, size_t n) {
    size_t bytes = mul_sat(n, sizeof(float)), start = (cv->used + 63) & ~(size_t)63;

    if (bytes == SIZE_MAX || start < cv->used || bytes > SIZE_MAX - start) {
        cv->overflow = true;
        return NULL;
    }
    cv->used = start + bytes;
    return cv->base && !cv->overflow ? (float *)(void *)(cv->base + start) : NULL;
}

static void plan(EncBackWork *bw, Carver *cv, const EncConfig *cfg, size_t T, size_t B) {
    size_t C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff, L = (size_t)cfg->max_len;

    bw->dx = carve(cv, mul_sat(T, C));
    bw->dln1 = carve(cv, mul_sat(T, C));
    bw->dsum = carve(cv, mul_sat(T, C));
    bw->dqkv = carve(cv, mul_sat(T, 3 * C));
    bw->datty = carve(cv, mul_sat(T, C));
    bw->dfch = carve(cv, mul_sat(T, F));
    bw->dprobs = carve(cv, L * L);
    bw->dpooled = carve(cv, mul_sat(B, C));
    bw->dprojected = carve(cv, mul_sat(B, (size_t)cfg->proj_dim));
}

size_t enc_backward_work_size(const EncConfig *cfg, size_t max_tokens, size_t max_prompts) {
    EncBackWork bw;
    Carver cv = {0};

    plan(&bw, &cv, cfg, max_tokens, max_prompts);
    return cv.overflow || cv.used > SIZE_MAX - 64 ? SIZE_MAX : cv.used + 64;
}

int enc_backward_work_init(EncBackWork *bw, void *arena, size_t arena_size, const EncConfig *cfg,
                           size_t max_tokens, size_t max_prompts) {
    size_t need = enc_backward_work_size(cfg, max_tokens, max_prompts);

    memset(bw, 0, sizeof *bw);
    if (need == SIZE_MAX || arena_size < need) return ENC_E_ARENA;

    uintptr_t p = (uintptr_t)arena;
    Carver cv = {.base = (char *)arena + (((p + 63) & ~(uintptr_t)63) - p)};
    plan(bw, &cv, cfg, max_tokens, max_prompts);
    bw->max_tokens = max_tokens, bw->max_prompts = max_prompts, bw->cfg = *cfg;
    return 0;
}

/* --- normalisation, pooling, embedding (one version: no product) --- */

/* Forward: out = inp / max(|inp|, 1e-12) per row. Then
 * dinp += (dout - out (out . dout)) / |inp|, or dout / 1e-12 where the floor held
 * (the constant does not depend on inp), as torch's F.normalize. */
static void l2norm_backward(float *dinp, const float *dout, const float *out, const float *inp,
                            size_t B, size_t P) {
    for (size_t b = 0; b < B; b++) {
        const float *y = out + b * P, *dy = dout + b * P, *x = inp + b * P;
        double ss = 0.0, dot = 0.0;
        for (size_t p = 0; p < P; p++) ss += (double)x[p] * x[p], dot += (double)y[p] * dy[p];

        float norm = (float)sqrt(ss);
        float *dx = dinp + b * P;
        if (norm > 1e-12f) {
            for (size_t p = 0; p < P; p++) dx[p] += (dy[p] - y[p] * (float)dot) / norm;
        } else {
            for (size_t p = 0; p < P; p++) dx[p] += dy[p] / 1e-12f;
        }
    }
}

/* Forward: pooled[b] = the mean of h over the tokens of all of prompt b's chunks.
 * So each of those tokens receives dpooled[b] / their number. */
static void pooling_backward(float *dh, const float *dpooled, const size_t *chunk_off,
                             const size_t *prompt_chunk, size_t B, size_t C) {
    for (size_t b = 0; b < B; b++) {
        size_t t0 = chunk_off[prompt_chunk[b]], t1 = chunk_off[prompt_chunk[b + 1]];
        if (t1 == t0) continue;

        float inv = 1.0f / (float)(t1 - t0);
        for (size_t t = t0; t < t1; t++) {
            for (size_t c = 0; c < C; c++) dh[t * C + c] += dpooled[b * C + c] * inv;
        }
    }
}

/* Forward: emb[t] = wte[tok[t]] + wpe[pos[t]]. Only the rows of the batch's
 * tokens and positions are touched, however large V is. */
static void embedding_backward(float *dwte, float *dwpe, const float *demb, const int32_t *tok,
                               const int32_t *pos, size_t T, size_t C) {
    for (size_t t = 0; t < T; t++) {
        float *we = dwte + (size_t)tok[t] * C, *pe = dwpe + (size_t)pos[t] * C;
        const float *d = demb + t * C;
        for (size_t c = 0; c < C; c++) we[c] += d[c], pe[c] += d[c];
    }
}

/* --- matmul: forward out (T, OC) = inp (T, IC) . w^T + b, w (OC, IC) --- */

/* db (OC) += the column sums of dout (T, OC), for columns [o0, o1). */
static void bias_backward(float *db, const float *dout, size_t T, size_t OC, size_t o0, size_t o1) {
    for (size_t t = 0; t < T; t++) {
        for (size_t o = o0; o < o1; o++) db[o] += dout[t * OC + o];
    }
}

/* dinp (T, IC) += dout . w; dw (OC, IC) += dout^T . inp; db (OC) += column sums
 * of dout. dinp and db may be NULL. */
static void matmul_backward_naive(float *dinp, float *dw, float *db, const float *dout,
                                  const float *inp, const float *w, size_t T, size_t IC,
                                  size_t OC) {
    for (size_t t = 0; t < T && dinp; t++) {
        for (size_t i = 0; i < IC; i++) {
            float acc = 0.0f;
            for (size_t o = 0; o < OC; o++) acc += dout[t * OC + o] * w[o * IC + i];
            dinp[t * IC + i] += acc;
        }
    }
    for (size_t o = 0; o < OC; o++) {
        for (size_t i = 0; i < IC; i++) {
            float acc = 0.0f;
            for (size_t t = 0; t < T; t++) acc += dout[t * OC + o] * inp[t * IC + i];
            dw[o * IC + i] += acc;
        }
    }
    if (db) bias_backward(db, dout, T, OC, 0, OC);
}

/* The same as two sgemm with beta = 1, which is what makes them accumulate. */
static void matmul_backward_blas(float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, size_t T, size_t IC, size_t OC) {
    if (T == 0) return;
    if (dinp) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)IC, (int)OC, 1.0f, dout,
                    (int)OC, w, (int)IC, 1.0f, dinp, (int)IC);
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)IC, (int)T, 1.0f, dout,
                (int)OC, inp, (int)IC, 1.0f, dw, (int)IC);
    if (db) bias_backward(db, dout, T, OC, 0, OC);
}

typedef void (*MatmulBackward)(float *, float *, float *, const float *, const float *,
                               const float *, size_t, size_t, size_t);

/* --- layer norm --- */

/* Forward: y = (s - mean) rstd w + b with s = x + r over each row of C, the
 * biased variance, rstd = 1 / sqrt(var + eps). With xhat = (s - mean) rstd:
 *   db += dy,  dw += dy xhat,  g = dy w,
 *   ds += rstd (g - mean(g) - xhat mean(g xhat)).
 * ds is the gradient of both x and r, which the caller sends down both branches. */
static void residual_layernorm_backward(float *dsum, float *dw, float *db, const float *dout,
                                        const float *x, const float *r, const float *w, size_t T,
                                        size_t C, float eps) {
    for (size_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *rt = r + t * C, *dy = dout + t * C;
        float mean = 0.0f, var = 0.0f;
        for (size_t c = 0; c < C; c++) mean += xt[c] + rt[c];
        mean /= (float)C;
        for (size_t c = 0; c < C; c++) var += (xt[c] + rt[c] - mean) * (xt[c] + rt[c] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + eps);

        float mg = 0.0f, mgx = 0.0f;
        for (size_t c = 0; c < C; c++) {
            float xhat = (xt[c] + rt[c] - mean) * rstd, g = dy[c] * w[c];
            db[c] += dy[c];
            dw[c] += dy[c] * xhat;
            mg += g, mgx += g * xhat;
        }
        mg /= (float)C, mgx /= (float)C;

        float *ds = dsum + t * C;
        for (size_t c = 0; c < C; c++) {
            float xhat = (xt[c] + rt[c] - mean) * rstd;
            ds[c] += rstd * (dy[c] * w[c] - mg - xhat * mgx);
        }
    }
}

/* --- attention, chunk by chunk and head by head --- */

/* The forward, for one chunk of N tokens and head h (channels [hD, (h+1)D)):
 *   S = q k^T / sqrt(D) (N, N),  P = softmax over each row of S,  o = P v.
 * Backward: dP = do v^T, dv += P^T do, dS = P * (dP - rowsum(P * dP)),
 *   dq += dS k / sqrt(D), dk += dS^T q / sqrt(D).
 * P is what the forward kept (ENC_TRAIN): N^2 floats per chunk and head. */

/* dS = P * (dP - rowsum(P * dP)), in place over dprobs. */
static void softmax_backward_rows(float *dprobs, const float *probs, size_t N) {
    for (size_t i = 0; i < N; i++) {
        const float *p = probs + i * N;
        float *dp = dprobs + i * N, dot = 0.0f;
        for (size_t j = 0; j < N; j++) dot += p[j] * dp[j];
        for (size_t j = 0; j < N; j++) dp[j] = p[j] * (dp[j] - dot);
    }
}

/* One chunk and head with loops: q, k, v, dq, dk, dv rows of stride 3C; o, dO rows
 * of stride C. */
static void attention_head_naive(float *dq, float *dk, float *dv, const float *probs, float *dprobs,
                                 const float *dO, const float *q, const float *k, const float *v,
                                 size_t N, size_t D, size_t C, float scale) {
    size_t C3 = 3 * C;

    for (size_t i = 0; i < N; i++) {
        for (size_t j = 0; j < N; j++) {
            float dp = 0.0f;
            for (size_t d = 0; d < D; d++) dp += dO[i * C + d] * v[j * C3 + d];
            dprobs[i * N + j] = dp;
        }
    }

    for (size_t j = 0; j < N; j++) {
        for (size_t d = 0; d < D; d++) {
            float acc = 0.0f;
            for (size_t i = 0; i < N; i++) acc += probs[i * N + j] * dO[i * C + d];
            dv[j * C3 + d] += acc;
        }
    }
    softmax_backward_rows(dprobs, probs, N);

    for (size_t i = 0; i < N; i++) {
        for (size_t j = 0; j < N; j++) {
            float ds = dprobs[i * N + j] * scale;
            for (size_t d = 0; d < D; d++) {
                dq[i * C3 + d] += ds * k[j * C3 + d];
                dk[j * C3 + d] += ds * q[i * C3 + d];
            }
        }
    }
}

/* The same with four sgemm, reading and writing q, k, v in place through the
 * leading dimension 3C (beta = 1 accumulates). */
static void attention_head_blas(float *dq, float *dk, float *dv, const float *probs, float *dprobs,
                                const float *dO, const float *q, const float *k, const float *v,
                                size_t N, size_t D, size_t C, float scale) {
    int n = (int)N, d = (int)D, c = (int)C, c3 = (int)(3 * C);

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, dO, c, v, c3, 0.0f, dprobs,
                n);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, probs, n, dO, c, 1.0f, dv,
                c3);
    softmax_backward_rows(dprobs, probs, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, scale, dprobs, n, k, c3, 1.0f,
                dq, c3);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, scale, dprobs, n, q, c3, 1.0f, dk,
                c3);
}

/* dqkv (T, 3C) += the gradient through every chunk's attention of datty (T, C), from
 * the probabilities probs the forward kept, one N x N block per chunk and head. */
static void attention_backward(float *dqkv, float *dprobs, const float *probs, const float *datty,
                               const float *qkv, const size_t *chunk_off, size_t S, size_t C,
                               size_t H, bool naive) {
    size_t D = C / H;
    float scale = 1.0f / sqrtf((float)D);

    for (size_t s = 0; s < S; s++) {
        size_t t0 = chunk_off[s], N = chunk_off[s + 1] - t0;
        for (size_t h = 0; h < H; h++, probs += N * N) {
            const float *q = qkv + t0 * 3 * C + h * D, *dO = datty + t0 * C + h * D;
            float *dq = dqkv + t0 * 3 * C + h * D;
            if (naive) {
                attention_head_naive(dq, dq + C, dq + 2 * C, probs, dprobs, dO, q, q + C, q + 2 * C,
                                     N, D, C, scale);
            } else {
                attention_head_blas(dq, dq + C, dq + 2 * C, probs, dprobs, dO, q, q + C, q + 2 * C,
                                    N, D, C, scale);
            }
        }
    }
}

/* --- one layer --- */

/* On entry bw->dx holds the gradient of the layer's output (ln2); on return, that
 * of its input inp. The forward (encoder.c, layer_forward):
 *   qkv = inp Wqkv^T + bqkv;  atty = attention(qkv);  attn = atty Wo^T + bo
 *   ln1 = norm1(inp + attn);  fch = act(ln1 W1^T + b1);  ff = fch W2^T + b2
 *   ln2 = norm2(ln1 + ff) */
static void layer_backward(const EncLayerGrads *g, EncBackWork *bw, const EncLayerActs *a,
                           const float *inp, const EncWork *ws, const EncLayerWeights *lw,
                           const EncConfig *cfg, bool naive) {
    size_t T = ws->n_tokens, C = (size_t)cfg->d_model, F = (size_t)cfg->d_ff;
    MatmulBackward matmul = naive ? matmul_backward_naive : matmul_backward_blas;

    /* norm2: its input sum ln1 + ff sends dsum to both the residual and ff. */
    memset(bw->dsum, 0, T * C * sizeof(float));
    residual_layernorm_backward(bw->dsum, g->ln2_w, g->ln2_b, bw->dx, a->ln1, a->ff, lw->ln2_w, T,
                                C, cfg->ln_eps);
    memcpy(bw->dln1, bw->dsum, T * C * sizeof(float));

    /* Feed-forward: linear2, the activation (its slope kept by the forward), linear1. */
    memset(bw->dfch, 0, T * F * sizeof(float));
    matmul(bw->dfch, g->fc2_w, g->fc2_b, bw->dsum, a->fch, lw->fc2_w, T, F, C);
    for (size_t i = 0; i < T * F; i++) bw->dfch[i] *= a->slope[i];
    matmul(bw->dln1, g->fc1_w, g->fc1_b, bw->dfch, a->ln1, lw->fc1_w, T, C, F);

    /* norm1: its input sum inp + attn; the residual part is the layer input's. */
    memset(bw->dsum, 0, T * C * sizeof(float));
    residual_layernorm_backward(bw->dsum, g->ln1_w, g->ln1_b, bw->dln1, inp, a->attn, lw->ln1_w, T,
                                C, cfg->ln_eps);
    memcpy(bw->dx, bw->dsum, T * C * sizeof(float));

    /* out_proj, attention, in_proj. */
    memset(bw->datty, 0, T * C * sizeof(float));
    matmul(bw->datty, g->att_w, g->att_b, bw->dsum, a->atty, lw->att_w, T, C, C);
    memset(bw->dqkv, 0, T * 3 * C * sizeof(float));
    attention_backward(bw->dqkv, bw->dprobs, a->att, bw->datty, a->qkv, ws->chunk_off, ws->n_chunks,
                       C, (size_t)cfg->n_heads, naive);
    matmul(bw->dx, g->qkv_w, NULL, bw->dqkv, inp, lw->qkv_w, T, C, 3 * C);

    /* The key bias shifts every score of a query's row by the same amount, which
     * the softmax cancels: its gradient is exactly zero, and what float sums leave
     * is noise that Adam would turn into steps of size lr. So it gets none. */
    bias_backward(g->qkv_b, bw->dqkv, T, 3 * C, 0, C);
    bias_backward(g->qkv_b, bw->dqkv, T, 3 * C, 2 * C, 3 * C);
}

/* --- whole model --- */

static bool same_config(const EncConfig *a, const EncConfig *b) {
    return a->vocab_size == b->vocab_size && a->d_model == b->d_model &&
           a->n_layers == b->n_layers && a->n_heads == b->n_heads && a->d_ff == b->d_ff &&
           a->max_len == b->max_len && a->chunk_stride == b->chunk_stride &&
           a->proj_dim == b->proj_dim && a->activation == b->activation && a->ln_eps == b->ln_eps;
}

static int check_args(const EncBackWork *bw, const EncWork *ws, const EncConfig *cfg, bool head) {
    if (!same_config(&ws->cfg, cfg) || !same_config(&bw->cfg, cfg)) return ENC_E_CFG;
    if (!head && !(ws->flags & ENC_TRAIN)) return ENC_E_CFG;
    if (ws->n_prompts > bw->max_prompts) return ENC_E_CAP;
    if (!head && ws->n_tokens > bw->max_tokens) return ENC_E_CAP;
    return 0;
}

int enc_backward(const EncGrads *g, EncBackWork *bw, const float *dout, const float *out,
                 const EncWork *ws, const EncWeights *w, const EncConfig *cfg, unsigned flags) {
    bool naive = flags & ENC_NAIVE, head = flags & ENC_BACK_HEAD;
    int rc = check_args(bw, ws, cfg, head);
    if (rc) return rc;

    size_t B = ws->n_prompts, T = ws->n_tokens, C = (size_t)cfg->d_model;
    size_t P = (size_t)cfg->proj_dim;
    MatmulBackward matmul = naive ? matmul_backward_naive : matmul_backward_blas;

    /* Head: normalisation, then the projection (pooled -> projected). */
    memset(bw->dprojected, 0, B * P * sizeof(float));
    l2norm_backward(bw->dprojected, dout, out, ws->projected, B, P);
    memset(bw->dpooled, 0, B * C * sizeof(float));
    matmul(head ? NULL : bw->dpooled, g->proj_w, g->proj_b, bw->dprojected, ws->pooled, w->proj_w,
           B, C, P);
    if (head) return 0;

    /* Pooling spreads each prompt's gradient over its tokens; then the layers in
     * reverse, the input of layer l being layer l-1's ln2 (or the embedding). */
    memset(bw->dx, 0, T * C * sizeof(float));
    pooling_backward(bw->dx, bw->dpooled, ws->chunk_off, ws->prompt_chunk, B, C);
    for (int l = cfg->n_layers - 1; l >= 0; l--) {
        const float *inp = l ? ws->layer[l - 1].ln2 : ws->emb;
        layer_backward(&g->layer[l], bw, &ws->layer[l], inp, ws, &w->layer[l], cfg, naive);
    }
    embedding_backward(g->wte, g->wpe, bw->dx, ws->tok, ws->pos, T, C);
    return 0;
}
