/* policy.h - the template-selection policy: forward and backward kernels (pure, no I/O).
 *
 * The policy scores (state, template) pairs, so templates can be added or edited live:
 *   h = tanh(W1 x + b1)        state tower, x [D] -> h [H]
 *   q = W2 h + b2              h [H] -> q [Q]
 *   u_a = Wt t_a + bt          template tower, t_a [E] (the template's `about` vector)
 *   z_a = q . u_a              score of template a
 *   V(x) = v . h + c           value head
 *   pi(a|x) = m + (1 - k m) softmax(z / T)_a over the k eligible templates, uniform when
 *   k m >= 1 (m = policy.min_prob, T = policy.temperature).
 * kernels/POLICY.md gives the maths, the gradients and the layout.
 *
 * Parameters live in one float arena carved into named tensors (policy_layout), so the
 * caller can checksum, copy, checkpoint and swap a policy as one block. Kernels never
 * allocate, log or keep state; every buffer is the caller's. Backward kernels accumulate
 * (+=) into gradients the caller has zeroed. All functions are safe to call from any
 * thread as long as the buffers they write are not shared.
 *
 * Dimension letters: B rows of a batch, D state, E template embedding, H hidden,
 * Q score space, C and OC the input and output widths of a linear layer, k eligible
 * templates of one sample, K eligible pairs of a batch (the sum of the k), NT rows of a
 * template table.
 */
#ifndef PD_POLICY_H
#define PD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { POLICY_E_ARG = -1, POLICY_E_NONFINITE = -2 };

typedef struct {
    int D; /* state size; promptd uses E + E + S (vector, session mean, scalar slots) */
    int E; /* template embedding size */
    int H; /* hidden units of the state tower */
    int Q; /* size of the space where states meet templates */
} PolicyDims;

/* --- parameter arena --- */

/* The arena's tensors in order; the names are the state_dict keys of the PyTorch module
 * in tests/reference/policy_ref.py (fc1, fc2, template: nn.Linear; value: nn.Linear(H, 1)). */
enum {
    POLICY_FC1_W,   /* "fc1.weight"      W1 [H, D] */
    POLICY_FC1_B,   /* "fc1.bias"        b1 [H] */
    POLICY_FC2_W,   /* "fc2.weight"      W2 [Q, H] */
    POLICY_FC2_B,   /* "fc2.bias"        b2 [Q] */
    POLICY_TMPL_W,  /* "template.weight" Wt [Q, E] */
    POLICY_TMPL_B,  /* "template.bias"   bt [Q] */
    POLICY_VALUE_W, /* "value.weight"    v  [1, H] */
    POLICY_VALUE_B, /* "value.bias"      c  [1] */
    POLICY_NTENSORS
};

typedef struct {
    const char *name; /* static string, PyTorch's key */
    size_t offset;    /* first float in the arena; a multiple of 16 (64-byte aligned) */
    size_t size;      /* floats */
    int ndim;         /* 2 for weights [out, in], row-major as torch; 1 for biases */
    int shape[2];
} PolicyTensor;

/* Fills t[POLICY_NTENSORS] (t may be NULL) and returns the arena size in floats. The
 * gaps that align each tensor are part of the arena and stay zero. */
size_t policy_layout(PolicyTensor *t, const PolicyDims *d);

/* Floats of the arena: policy_layout(NULL, d). Moments and gradients use the same. */
size_t policy_param_count(const PolicyDims *d);

/* Glorot-uniform weights (U(-a, a), a = sqrt(6 / (fan_in + fan_out))) drawn in layout
 * order from rng_seed(seed), zero biases and gaps. Equal seeds give equal arenas. */
void policy_init(float *params, const PolicyDims *d, uint64_t seed);

/* --- layer kernels --- */

/* out [B, OC] = inp [B, C] . weight [OC, C]^T + bias [OC] (bias may be NULL). Small B runs
 * SIMD loops, larger B one sgemm; the _naive twin is the plain loop the tests compare. */
void policy_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int B, int C, int OC);
void policy_linear_forward_naive(float *out, const float *inp, const float *weight,
                                 const float *bias, int B, int C, int OC);

/* dinp [B, C] += dout . weight; dweight [OC, C] += dout^T . inp; dbias [OC] += column sums
 * of dout [B, OC]. Any of dinp, dweight, dbias may be NULL (not wanted). */
void policy_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int B, int C, int OC);
void policy_linear_backward_naive(float *dinp, float *dweight, float *dbias, const float *dout,
                                  const float *inp, const float *weight, int B, int C, int OC);

/* out [n] = tanh(inp [n]); out may equal inp. Absolute error <= 2e-7. */
void policy_tanh_forward(float *out, const float *inp, size_t n);

/* dinp [n] += dout * (1 - out^2), out being the forward's output. */
void policy_tanh_backward(float *dinp, const float *dout, const float *out, size_t n);

/* z [K]: z[j] = q[b] . u[elig[j]] for the entries j in [off[b], off[b+1]) of sample b.
 * q [B, Q], u [NT, Q], elig [K] rows of u (NULL: entry j uses row j), off [B + 1]. */
void policy_score_forward(float *z, const float *q, const float *u, const int32_t *elig,
                          const int32_t *off, int B, int Q);

/* dq [B, Q] += sum_j dz[j] u[elig[j]]; du [NT, Q] (may be NULL): du[elig[j]] += dz[j] q[b]. */
void policy_score_backward(float *dq, float *du, const float *dz, const float *q, const float *u,
                           const int32_t *elig, const int32_t *off, int B, int Q);

/* Per sample b over its entries [off[b], off[b+1]), k of them:
 *   s = softmax(z / T), pi = m + (1 - k m) s, logpi = log pi; uniform 1/k when k m >= 1.
 * With m = 0, logpi is computed as a log-softmax, so it stays finite where pi underflows.
 * pi, logpi, s, z: [K]. T > 0, m >= 0. */
void policy_probs_forward(float *pi, float *logpi, float *s, const float *z, const int32_t *off,
                          int B, float T, float m);

/* dz [K] += the gradient through pi and logpi of dpi and dlogpi (either may be NULL); zero
 * for a uniform sample (k m >= 1), whose pi does not depend on z. Needs the forward's pi
 * and s; stable when a probability underflows. */
void policy_probs_backward(float *dz, const float *dpi, const float *dlogpi, const float *pi,
                           const float *s, const int32_t *off, int B, float T, float m);

/* ent [B] = -sum_j pi_j logpi_j over each sample's entries. */
void policy_entropy_forward(float *ent, const float *pi, const float *logpi, const int32_t *off,
                            int B);

/* dpi [K] += -dent[b] (logpi_j + 1). */
void policy_entropy_backward(float *dpi, const float *dent, const float *logpi, const int32_t *off,
                             int B);

/* --- acting --- */

typedef struct {
    float temperature; /* T > 0; promptd's default 0.7 */
    float min_prob;    /* floor m >= 0 on every eligible template's probability */
    bool greedy;       /* choose argmax z (first on ties); p stays the sampling pi */
} PolicySampling;

typedef struct {
    int index;   /* the chosen template: a position in [0, k) of the caller's list */
    float p;     /* pi(index | x) of the stochastic policy, also in greedy mode */
    float logp;  /* log pi(index | x), what PPO's importance weight divides by */
    float value; /* V(x) */
} PolicyChoice;

/* The position that inverse-CDF sampling picks from pi [k] for uniform in [0, 1):
 * the first j whose running sum exceeds uniform * sum(pi), never a zero entry. */
int policy_sample(const float *pi, int k, double uniform);

/* u [k, Q] = emb [k, E] . Wt^T + bt: the template tower. The caller may cache u per
 * (pack version, policy version) and pass it to policy_act. */
void policy_templates(float *u, const float *params, const PolicyDims *d, const float *emb, int k);

/* Floats of scratch that policy_act and policy_act_emb need for up to kmax templates. */
size_t policy_act_work_floats(const PolicyDims *d, int kmax);

/* Scores the k eligible templates of state x [D] from their tower outputs u [k, Q] and
 * chooses one with uniform in [0, 1) (greedy ignores it). probs [k] (may be NULL)
 * receives every eligible template's pi. work: policy_act_work_floats(d, k) floats.
 * Returns 0; POLICY_E_ARG for k < 1, T <= 0 or m < 0; POLICY_E_NONFINITE when the
 * parameters or x give a non-finite score or value, in which case *out holds a uniform
 * choice (index from uniform, p = 1/k, value 0) that the caller may use or not. */
int policy_act(PolicyChoice *out, float *probs, float *work, const float *params,
               const PolicyDims *d, const float *x, const float *u, int k,
               const PolicySampling *cfg, double uniform);

/* policy_act from the templates' embeddings emb [k, E] instead of u. */
int policy_act_emb(PolicyChoice *out, float *probs, float *work, const float *params,
                   const PolicyDims *d, const float *x, const float *emb, int k,
                   const PolicySampling *cfg, double uniform);

#endif
