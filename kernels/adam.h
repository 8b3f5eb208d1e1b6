/* adam.h - Adam over a flat parameter arena, with a warm-up and decay schedule and global
 * gradient-norm clipping (pure kernels, no I/O, no allocation).
 *
 * The arithmetic follows torch.optim.Adam (torch 1.13, no weight decay, no amsgrad) and
 * torch.nn.utils.clip_grad_norm_, so a PyTorch reference can match it step for step.
 * Moments live in two arenas of the parameters' layout; the caller owns them and the step
 * counter, and may checkpoint them with the parameters.
 */
#ifndef PD_ADAM_H
#define PD_ADAM_H

#include <stddef.h>

typedef enum { ADAM_CONSTANT, ADAM_LINEAR, ADAM_COSINE } AdamDecay;

typedef struct {
    double lr;        /* peak learning rate */
    double lr_min;    /* where the decay ends */
    double beta1;     /* 0.9 */
    double beta2;     /* 0.999 */
    double eps;       /* 1e-8, added to sqrt of the corrected second moment */
    long warmup;      /* steps of linear warm-up from lr / warmup to lr; 0: none */
    long decay_steps; /* steps from lr to lr_min after the warm-up; then lr_min */
    AdamDecay decay;  /* shape of the decay; ADAM_CONSTANT keeps lr after warm-up */
} AdamConfig;

typedef struct {
    float *m;  /* [P] first moments, zero at the start */
    float *v;  /* [P] second moments, zero at the start */
    long step; /* optimiser steps taken; the next step is step + 1 */
} AdamState;

/* lr 1e-3, lr_min 0, betas 0.9 / 0.999, eps 1e-8, no warm-up, constant. */
AdamConfig adam_defaults(void);

/* The learning rate of step t (1-based):
 *   t <= warmup:  lr * t / warmup
 *   after:        p = min(1, (t - warmup) / decay_steps), then
 *                 cosine: lr_min + (lr - lr_min) (1 + cos(pi p)) / 2
 *                 linear: lr - (lr - lr_min) p
 * (ADAM_CONSTANT, or decay_steps <= 0: lr after the warm-up). */
double adam_lr(const AdamConfig *cfg, long t);

/* Euclidean norm of grad [n], accumulated in double. */
double adam_grad_norm(const float *grad, size_t n);

/* The factor clip_grad_norm_ multiplies gradients by: min(1, max_norm / (norm + 1e-6));
 * 1 when max_norm <= 0 (no clipping). */
float adam_clip_scale(double norm, float max_norm);

/* One Adam step t (1-based) at learning rate lr on params [n] from grad [n] * grad_scale,
 * updating the moments m [n], v [n] in place. */
void adam_step(float *params, float *m, float *v, const float *grad, size_t n, double lr,
               float grad_scale, const AdamConfig *cfg, long t);

#endif
