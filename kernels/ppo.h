/* ppo.h - PPO for the template-selection policy: advantages, the clipped surrogate, the
 * value loss, and the update over a batch of experience (pure kernels, no I/O).
 *
 * An update takes N experiences, computes advantages (one-step, or GAE over the turns of
 * an episode), normalises them over the batch, then runs E epochs over shuffled
 * minibatches of M samples. Each minibatch is one Adam step on the mean of
 *   L = -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + c_v (V(x) - R)^2 - c_e H(pi(.|x)),
 * rho = pi(a|x) / pi_old(a|x), with the same floored, tempered pi the policy samples
 * from. It stops early after an epoch whose approximate KL exceeds target_kl.
 * kernels/POLICY.md gives the maths.
 *
 * Nothing here allocates: ppo_update carves its workspace from a caller's block sized by
 * ppo_work_size. Only the learner thread should call ppo_update on a given arena; the
 * serving path reads a published copy.
 */
#ifndef PD_PPO_H
#define PD_PPO_H

#include "adam.h"
#include "policy.h"
#include "rng.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    PPO_E_ARG = -1,       /* a configuration value out of range */
    PPO_E_BATCH = -2,     /* an index outside its set or the table, or a non-finite value */
    PPO_E_WORK = -3,      /* the workspace is smaller than ppo_work_size */
    PPO_E_NONFINITE = -4, /* a non-finite gradient: the step was refused (see ppo_update) */
};

/* A batch of N experiences. Templates are rows of one table, so a template eligible in
 * many samples is stored, and passed through the template tower, once per minibatch. */
typedef struct {
    const float *x;          /* [N, D] states, as act saw them */
    const float *emb;        /* [NT, E] template embeddings */
    const int32_t *elig;     /* [K] the eligible templates of all samples, rows of emb */
    const int32_t *off;      /* [N + 1] sample n's set is elig[off[n] .. off[n+1]); off[0] = 0 */
    const int32_t *action;   /* [N] the chosen template: a position in sample n's set */
    const float *logp_old;   /* [N] log pi_old(action | x), as act returned it */
    const float *v_old;      /* [N] V_old(x), as act returned it */
    const float *reward;     /* [N] */
    const uint64_t *episode; /* [N] or NULL (one-step episodes): an episode's turns are
                                adjacent and in turn order; equal ids continue it */
    const uint8_t *done;     /* [N] or NULL: nonzero ends the episode after this turn */
    int N;
    int NT;
} PpoBatch;

typedef struct {
    int epochs;          /* E, passes over the batch; default 4 */
    int minibatch;       /* M, samples per step (the last one of an epoch may be smaller); 64 */
    float clip;          /* eps of the surrogate; 0.2 */
    float value_coef;    /* c_v; 0.5 */
    float entropy_coef;  /* c_e; 0.01 */
    float target_kl;     /* stop after an epoch whose KL exceeds it; <= 0: never; 0.02 */
    float gamma, lambda; /* GAE, when the batch has episodes; 0.99, 0.95 */
    float adv_eps;       /* added to the advantages' std before dividing; 1e-8 */
    float max_grad_norm; /* global gradient-norm clip; <= 0: none; 1.0 */
    float temperature;   /* T of the policy's pi, as at acting time; 0.7 */
    float min_prob;      /* floor m of the policy's pi; 0.0 */
} PpoConfig;

/* Means over the samples of one minibatch (or, in PpoStats, of the last epoch run). */
typedef struct {
    float loss;        /* L, the objective differentiated */
    float policy_loss; /* -min(rho A, clip(rho) A) */
    float value_loss;  /* (V - R)^2, before c_v */
    float entropy;     /* H(pi(.|x)) in nats */
    float kl;          /* (rho - 1) - log rho: the non-negative estimator of KL(old || new) */
    float clip_frac;   /* share of samples with |rho - 1| > eps */
} PpoLosses;

typedef struct {
    int epochs;      /* epochs run: cfg.epochs, or fewer after an early stop */
    int steps;       /* optimiser steps taken */
    bool early_stop; /* the KL of epoch `epochs` exceeded target_kl */
    PpoLosses last;  /* the last epoch's means, measured before each minibatch's step */
    float grad_norm; /* mean global gradient norm over the steps, before clipping */
    float lr;        /* learning rate of the last step */
    float adv_mean;  /* the raw advantages' mean and std, before normalisation */
    float adv_std;
} PpoStats;

PpoConfig ppo_defaults(void);

/* adv [N], ret [N] from reward, v_old [N]. Without episodes A = r - V_old. With them,
 * GAE: delta_t = r_t + gamma V_old(t+1) - V_old(t), V_old past the episode's last turn
 * in the batch (or a done turn) counting 0, A_t = sum_l (gamma lambda)^l delta_{t+l}.
 * In both cases ret = A + V_old, the value target. */
void ppo_advantages(float *adv, float *ret, const float *reward, const float *v_old,
                    const uint64_t *episode, const uint8_t *done, int N, float gamma, float lambda);

/* adv [N] = (adv - mean) / (std + eps), std over N (not N - 1); mean and std (either
 * may be NULL) receive the statistics before the change. */
void ppo_normalize(float *adv, int N, float eps, float *mean, float *std);

/* loss [B] = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A), ratio [B] = exp(logp - logp_old). */
void ppo_clip_forward(float *loss, float *ratio, const float *logp, const float *logp_old,
                      const float *adv, int B, float eps);

/* dlogp [B] += dloss * d loss / d logp: -A ratio where the unclipped term is the minimum,
 * else 0 (the clipped term does not depend on the policy). */
void ppo_clip_backward(float *dlogp, const float *dloss, const float *ratio, const float *adv,
                       int B, float eps);

/* loss [B] = (v - ret)^2 */
void ppo_value_forward(float *loss, const float *v, const float *ret, int B);

/* dv [B] += dloss * 2 (v - ret) */
void ppo_value_backward(float *dv, const float *dloss, const float *v, const float *ret, int B);

/* Fills perm [n] with a permutation of 0..n-1: Fisher-Yates from the end, drawing
 * rng_below(i + 1) for i = n-1 .. 1 (tests/reference/policy_ref.py mirrors it). */
void ppo_shuffle(int32_t *perm, int n, Rng *rng);

/* Bytes of workspace for ppo_minibatch_grad, for minibatches of up to M samples of up to
 * kmax eligible templates each and a table of up to NT rows. */
size_t ppo_minibatch_work_size(const PolicyDims *d, int M, int kmax, int NT);

/* Bytes of workspace for ppo_update on batches of up to N samples (else as above). */
size_t ppo_work_size(const PolicyDims *d, int N, int M, int kmax, int NT);

/* The loss of the samples idx [M] of batch b, with advantages adv [N] and returns ret [N]
 * already computed, and its gradient accumulated into grad [P] (+=). The template bias
 * gets no gradient: adding the same q . bt to every score leaves pi unchanged, so its
 * exact gradient is 0 (POLICY.md). Does not validate b (ppo_update does). Returns 0, or
 * PPO_E_WORK when work_size < ppo_minibatch_work_size(d, M, kmax of these samples, NT). */
int ppo_minibatch_grad(PpoLosses *out, float *grad, void *work, size_t work_size,
                       const float *params, const PpoBatch *b, const float *adv, const float *ret,
                       const int32_t *idx, int M, const PolicyDims *d, const PpoConfig *cfg);

/* One PPO update of params [P] with Adam state opt (moments [P], step counter) on batch b,
 * shuffling with rng (advanced). work: work_size bytes, at least ppo_work_size(d, b->N,
 * cfg->minibatch, kmax of b, b->NT). Returns 0; PPO_E_ARG, PPO_E_BATCH or PPO_E_WORK
 * before touching anything; or PPO_E_NONFINITE when a gradient was not finite, after
 * stats->steps good steps: params and moments then hold the last good step and the
 * caller should not publish them. */
int ppo_update(PpoStats *stats, float *params, AdamState *opt, void *work, size_t work_size,
               const PpoBatch *b, const PolicyDims *d, const PpoConfig *cfg, const AdamConfig *acfg,
               Rng *rng);

#endif
