/* triplet.h - triplet loss with in-batch mining, and the projection head's own
 * kernels (pure: no I/O, no allocation, no state).
 *
 * Response-pattern separation: prompts that need the same kind of answer are
 * pulled together and the others pushed at least a margin further away. On the
 * encoder's L2-normalised output vectors y, with the plain Euclidean distance
 *   d(i, j) = sqrt(|y_i - y_j|^2 + TRIPLET_EPS)
 * (PyTorch's nn.TripletMarginLoss uses p = 2 too, not the squared distance), a
 * triplet (anchor a, positive p of a's label, negative n of another) costs
 *   max(0, d(a, p) - d(a, n) + margin),  margin 1.0 by default,
 * and the loss is the mean over the mined triplets. On unit vectors d lies in
 * [0, 2], so margin 1 asks that a negative sit at least 1 further than a positive.
 *
 * Batches hold P labels x K examples; triplets are mined inside the batch:
 *   batch-hard  one per anchor: its farthest positive and its nearest negative
 *               (Hermans, Beyer and Leibe 2017);
 *   semi-hard   one per (anchor, positive) pair: the nearest negative farther than
 *               that positive, or, when none is, the farthest negative (the rule of
 *               TensorFlow's triplet_semihard_loss, after Schroff et al. 2015).
 * Mining is a choice of indices: gradients flow through the chosen distances only.
 * Ties go to the lowest index, as torch.argmax / argmin do.
 *
 * The projection head kernels (forward, backward, reconstruction) let a caller
 * train proj.weight and proj.bias alone from pooled vectors: the trainer's
 * head-only mode, and the online fine-tuning from the reward stream
 * (triplet_head_explicit). Letters: B rows, C pooled size (d_model), P output
 * size (proj_dim), n triplets.
 */
#ifndef PD_TRIPLET_H
#define PD_TRIPLET_H

#include <stddef.h>
#include <stdint.h>

#define TRIPLET_EPS 1e-12f /* inside the square root: d(i, i) has a zero gradient */

typedef enum { TRIPLET_HARD = 0, TRIPLET_SEMIHARD = 1 } TripletMining;

typedef struct {
    int32_t a, p, n; /* rows of the batch: anchor, positive, negative */
} Triplet;

/* dist (B, B) = d(i, j) of the rows of y (B, P). */
void triplet_distances(float *dist, const float *y, int B, int P);

/* Batch-hard: one triplet per anchor that has a positive and a negative in the
 * batch, in anchor order. out has room for B. Returns the count. */
int triplet_mine_hard(Triplet *out, const float *dist, const int32_t *labels, int B);

/* Semi-hard: one triplet per ordered (anchor, positive) pair whose anchor has a
 * negative, in (anchor, positive) order; at most cap are written (B (K - 1) for
 * P x K batches). Returns the count written. */
int triplet_mine_semihard(Triplet *out, int cap, const float *dist, const int32_t *labels, int B);

/* Mines with either rule: triplet_mine_hard or triplet_mine_semihard. */
int triplet_mine(Triplet *out, int cap, TripletMining rule, const float *dist,
                 const int32_t *labels, int B);

/* The mean over the n triplets of max(0, d(a, p) - d(a, n) + margin), from y
 * (rows, P); 0 when n is 0. *active (may be NULL) receives the number of triplets
 * with a positive loss. */
float triplet_loss_forward(int *active, const Triplet *t, int n, const float *y, int P,
                           float margin);

/* dy (rows, P) += dloss times the gradient of that mean with respect to y. */
void triplet_loss_backward(float *dy, float dloss, const Triplet *t, int n, const float *y, int P,
                           float margin);

/* --- the projection head --- */

/* z (B, P) = x (B, C) . w^T + b, then y = z / max(|z|, 1e-12): the encoder's last
 * two steps, from pooled vectors x. */
void triplet_head_forward(float *y, float *z, const float *x, const float *w, const float *b, int B,
                          int C, int P);

/* dw (P, C) += and db (P) += the gradient from dy (B, P) through the head; dz (B,
 * P) is scratch. y, z, x as the forward left them. */
void triplet_head_backward(float *dw, float *db, float *dz, const float *dy, const float *y,
                           const float *z, const float *x, const float *w, int B, int C, int P);

/* The reconstruction ("compression") term of the head, with its weight lambda:
 *   recon = lambda / (B C) sum_b |x_b - w^T w x_b|^2
 * the error of decoding the pooled vector x_b back from w x_b with the tied
 * decoder w^T (the bias cancels, so it is left out). It pushes w's rows towards
 * an orthonormal basis of the pooled vectors' main directions, so the projection
 * keeps what the encoder knows beyond the labels at hand. The pooled vectors are
 * taken as given: the term trains the head only. work: B (C + P) floats. */
float triplet_recon_forward(float *work, const float *x, const float *w, int B, int C, int P,
                            float lambda);

/* dw (P, C) += the gradient of that term; work as triplet_recon_forward left it. */
void triplet_recon_backward(float *dw, const float *work, const float *x, const float *w, int B,
                            int C, int P, float lambda);

/* --- online fine-tuning of the head from explicit triplets --- */

/* Floats of work that triplet_head_explicit needs for n triplets. */
size_t triplet_head_work_floats(int n, int C, int P);

/* For n explicit triplets of pooled vectors anchor, positive, negative (n, C)
 * each (from the reward stream: prompts whose template scored high are
 * positives of each other, low scorers their negatives), accumulates into dw
 * (P, C) and db (P) the gradient of the mean triplet loss of the head w (P, C),
 * b (P) and returns that loss. The caller zeroes dw and db, clips their joint
 * norm (adam_grad_norm / adam_clip_scale) and steps Adam over the weights and the
 * bias, which are contiguous in the model's flat layout (proj.weight then
 * proj.bias). */
float triplet_head_explicit(float *dw, float *db, float *work, const float *anchor,
                            const float *positive, const float *negative, int n, const float *w,
                            const float *b, int C, int P, float margin);

#endif
