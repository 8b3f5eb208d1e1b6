/* test_train.c - Criterion tests of the encoder's training: the backward kernels against
 * finite differences and against each other, triplet mining on constructed batches, the
 * triplet and reconstruction gradients, three full training steps against PyTorch
 * autograd (tests/reference/train_ref.py), and the trainer: scores, reproducibility, the
 * model file it writes and the accuracy it reaches on the alarm generator's data.
 *
 * Run from the repository root; the accuracy test runs build/tools/gen_alarms (or
 * $PROMPTD_GEN_ALARMS).
 */
#include "../daemon/train.h"
#include "../kernels/adam.h"
#include "../kernels/encoder.h"
#include "../kernels/encoder_backward.h"
#include "../kernels/safetensors.h"
#include "../kernels/triplet.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- a small model and batch --- */

typedef struct {
    EncConfig cfg;
    float *params, *grad, *out;
    void *arena, *barena;
    EncWork ws;
    EncBackWork bw;
    int32_t ids[256];
    size_t off[16], B;
} Net;

static Net net_new(int act, size_t B, const size_t *lens, uint64_t seed) {
    Net n = {.cfg = {97, 16, 2, 4, 32, 8, 6, 8, act, 1e-5f}, .B = B};
    size_t np = enc_param_count(&n.cfg), T = 0, S = 0;

    n.params = malloc(np * sizeof *n.params);
    n.grad = calloc(np, sizeof *n.grad);
    n.out = malloc(B * 8 * sizeof *n.out);
    cr_assert(n.params && n.grad && n.out);
    enc_init_random(n.params, &n.cfg, seed, ENC_INIT_PERTURB);

    /* Token ids from a fixed LCG: the same batch on every machine. */
    uint32_t x = (uint32_t)seed;
    n.off[0] = 0;
    for (size_t b = 0; b < B; b++) {
        n.off[b + 1] = n.off[b] + lens[b];
        for (size_t i = n.off[b]; i < n.off[b + 1]; i++) {
            x = x * 1664525u + 1013904223u;
            n.ids[i] = (int32_t)(1 + (x >> 8) % 96);
        }
        T += enc_packed_len(lens[b], &n.cfg), S += enc_chunk_count(lens[b], &n.cfg);
    }
    size_t fb = enc_work_size(&n.cfg, T, S, B, ENC_TRAIN),
           bb = enc_backward_work_size(&n.cfg, T, B);
    n.arena = malloc(fb), n.barena = malloc(bb);
    cr_assert(n.arena && n.barena);
    cr_assert_eq(enc_work_init(&n.ws, n.arena, fb, &n.cfg, T, S, B, ENC_TRAIN), 0);
    cr_assert_eq(enc_backward_work_init(&n.bw, n.barena, bb, &n.cfg, T, B), 0);
    return n;
}

static void net_free(Net *n) {
    free(n->params), free(n->grad), free(n->out), free(n->arena), free(n->barena);
}

/* The scalar loss sum(out * R) of a forward pass; R (B, P) fixed. */
static double net_loss(Net *n, const float *R, unsigned flags) {
    EncWeights w;
    enc_weights_flat(&w, &n->cfg, n->params);
    cr_assert_eq(enc_encode(n->out, &n->ws, n->ids, n->off, n->B, &w, &n->cfg, flags), 0);
    double s = 0.0;
    for (size_t i = 0; i < n->B * 8; i++) s += (double)n->out[i] * R[i];
    return s;
}

static void net_backward(Net *n, const float *R, unsigned flags) {
    EncWeights w;
    EncGrads g;
    memset(n->grad, 0, enc_param_count(&n->cfg) * sizeof *n->grad);
    net_loss(n, R, flags & ENC_NAIVE);
    enc_weights_flat(&w, &n->cfg, n->params);
    enc_grads_flat(&g, &n->cfg, n->grad);
    cr_assert_eq(enc_backward(&g, &n->bw, R, n->out, &n->ws, &w, &n->cfg, flags), 0);
}

static void fill_r(float *R, size_t n, uint32_t x) {
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        R[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
    }
}

/* Prompts of 3, 8 (a full chunk), 13 (two chunks), 1 and 20 (three chunks) tokens. */
static const size_t LENS[] = {3, 8, 13, 1, 20};

/* --- backward against finite differences --- */

/* Central differences of the loss in float (step H), against the analytic gradient, on up
 * to 24 elements of every tensor. The float forward limits the agreement to about 1e-4;
 * a wrong kernel is off by the size of the gradient itself (up to 1). */
#define FD_H   3e-3f
#define FD_TOL 4e-4

Test(backward, every_tensor_matches_finite_differences) {
    Net n = net_new(ENC_ACT_GELU, 5, LENS, 3);
    float R[40];
    fill_r(R, 40, 11);
    net_backward(&n, R, 0);

    double worst = 0.0;
    for (size_t ti = 0; ti < enc_tensor_count(&n.cfg); ti++) {
        EncTensor t;
        enc_tensor_info(&t, &n.cfg, ti);
        double err = 0.0, big = 0.0;
        for (size_t k = 0; k < t.numel; k += t.numel / 24 + 1) {
            float *p = n.params + t.offset + k, old = *p;
            *p = old + FD_H;
            double up = net_loss(&n, R, ENC_NAIVE);
            *p = old - FD_H;
            double down = net_loss(&n, R, ENC_NAIVE);
            *p = old;
            double fd = (up - down) / (2.0 * FD_H), an = n.grad[t.offset + k];
            err = fmax(err, fabs(fd - an)), big = fmax(big, fabs(an));
        }
        printf("finite differences %-36s max |fd - grad| %.1e (max |grad| %.1e)\n", t.name, err,
               big);
        cr_expect_leq(err, FD_TOL, "%s: finite differences differ by %.2e (tolerance %.0e)", t.name,
                      err, FD_TOL);
        worst = fmax(worst, err);
    }
    printf("finite differences: worst %.1e over every tensor (tolerance %.0e)\n", worst, FD_TOL);
    net_free(&n);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void naive_vs_blas(int act) {
    Net n = net_new(act, 5, LENS, 5);
    size_t np = enc_param_count(&n.cfg);
    float R[40], *blas = malloc(np * sizeof *blas);
    cr_assert(blas);
    fill_r(R, 40, 17);

    net_backward(&n, R, 0);
    memcpy(blas, n.grad, np * sizeof *blas);
    net_backward(&n, R, ENC_NAIVE);
    double d = max_diff(blas, n.grad, np);
    printf("backward %s: naive loops against BLAS max |diff| %.1e\n",
           act == ENC_ACT_GELU ? "gelu" : "relu", d);
    cr_expect_leq(d, 2e-5, "naive and BLAS gradients differ by %.2e", d);
    free(blas);
    net_free(&n);
}

Test(backward, naive_loops_and_blas_agree_gelu) {
    naive_vs_blas(ENC_ACT_GELU);
}

Test(backward, naive_loops_and_blas_agree_relu) {
    naive_vs_blas(ENC_ACT_RELU);
}

Test(backward, gradients_accumulate) {
    Net n = net_new(ENC_ACT_GELU, 5, LENS, 9);
    size_t np = enc_param_count(&n.cfg);
    float R[40], *once = malloc(np * sizeof *once);
    EncWeights w;
    EncGrads g;
    cr_assert(once);
    fill_r(R, 40, 3);

    net_backward(&n, R, 0);
    memcpy(once, n.grad, np * sizeof *once);
    enc_weights_flat(&w, &n.cfg, n.params);
    enc_grads_flat(&g, &n.cfg, n.grad);
    cr_assert_eq(enc_backward(&g, &n.bw, R, n.out, &n.ws, &w, &n.cfg, 0), 0);
    for (size_t i = 0; i < np; i++) once[i] *= 2.0f;
    cr_expect_leq(max_diff(once, n.grad, np), 1e-6, "a second pass must add the same gradient");
    free(once);
    net_free(&n);
}

Test(backward, key_bias_gets_no_gradient_and_head_mode_only_the_head) {
    Net n = net_new(ENC_ACT_GELU, 5, LENS, 13);
    size_t np = enc_param_count(&n.cfg), C = 16;
    float R[40], *full = malloc(np * sizeof *full);
    cr_assert(full);
    fill_r(R, 40, 5);

    net_backward(&n, R, 0);
    memcpy(full, n.grad, np * sizeof *full);
    for (int l = 0; l < n.cfg.n_layers; l++) {
        EncGrads g;
        enc_grads_flat(&g, &n.cfg, full);
        for (size_t c = C; c < 2 * C; c++) cr_assert_eq(g.layer[l].qkv_b[c], 0.0f);
    }

    net_backward(&n, R, ENC_BACK_HEAD);
    size_t head = np - 8 * (C + 1);
    for (size_t i = 0; i < head; i++) cr_assert_eq(n.grad[i], 0.0f, "element %zu", i);
    cr_expect_leq(max_diff(full + head, n.grad + head, 8 * (C + 1)), 1e-7);
    free(full);
    net_free(&n);
}

Test(backward, refuses_a_workspace_that_did_not_keep_the_activations) {
    Net n = net_new(ENC_ACT_GELU, 5, LENS, 1);
    EncWork plain;
    EncWeights w;
    EncGrads g;
    float R[40] = {0};
    size_t bytes = enc_work_size(&n.cfg, 64, 16, 5, ENC_TRACE);
    void *arena = malloc(bytes);
    cr_assert_eq(enc_work_init(&plain, arena, bytes, &n.cfg, 64, 16, 5, ENC_TRACE), 0);
    enc_weights_flat(&w, &n.cfg, n.params);
    enc_grads_flat(&g, &n.cfg, n.grad);
    cr_assert_eq(enc_encode(n.out, &plain, n.ids, n.off, 5, &w, &n.cfg, 0), 0);

    cr_expect_eq(enc_backward(&g, &n.bw, R, n.out, &plain, &w, &n.cfg, 0), ENC_E_CFG);
    cr_expect_eq(enc_backward(&g, &n.bw, R, n.out, &plain, &w, &n.cfg, ENC_BACK_HEAD), 0);
    EncConfig other = n.cfg;
    other.proj_dim = 4;
    cr_expect_eq(enc_backward(&g, &n.bw, R, n.out, &n.ws, &w, &other, 0), ENC_E_CFG);
    free(arena);
    net_free(&n);
}

/* --- triplet mining and loss --- */

/* Unit vectors in 2-D at angles 0, 0.1, 0.5, 0.22, 0.95, 0.35 with labels 0 0 0 1 1 2:
 * distances grow with the difference of angles, and no two differences are equal. */
static void line_batch(float *y, int32_t *labels) {
    const float at[6] = {0.0f, 0.1f, 0.5f, 0.22f, 0.95f, 0.35f};
    const int32_t lab[6] = {0, 0, 0, 1, 1, 2};
    for (int i = 0; i < 6; i++) {
        y[2 * i] = cosf(at[i]), y[2 * i + 1] = sinf(at[i]), labels[i] = lab[i];
    }
}

Test(triplet, batch_hard_picks_the_farthest_positive_and_the_nearest_negative) {
    float y[12], dist[36];
    int32_t labels[6];
    Triplet t[6];
    line_batch(y, labels);
    triplet_distances(dist, y, 6, 2);

    int n = triplet_mine_hard(t, dist, labels, 6);
    cr_assert_eq(n, 5, "anchor 5 (alone in its label) has no positive");
    const Triplet want[5] = {{0, 2, 3}, {1, 2, 3}, {2, 0, 5}, {3, 4, 1}, {4, 3, 2}};
    for (int i = 0; i < 5; i++) {
        cr_expect(t[i].a == want[i].a && t[i].p == want[i].p && t[i].n == want[i].n,
                  "anchor %d: expected (%d, %d, %d), got (%d, %d, %d)", i, want[i].a, want[i].p,
                  want[i].n, t[i].a, t[i].p, t[i].n);
    }
}

Test(triplet, semi_hard_picks_the_nearest_negative_beyond_the_positive_else_the_farthest) {
    float y[12], dist[36];
    int32_t labels[6];
    Triplet t[16];
    line_batch(y, labels);
    triplet_distances(dist, y, 6, 2);

    int n = triplet_mine_semihard(t, 16, dist, labels, 6);
    cr_assert_eq(n, 8, "ordered positive pairs: 6 of label 0, 2 of label 1");
    /* Anchor 0: positive 1 (0.1 away) -> nearest negative beyond it is 3 (0.22);
     * positive 2 (0.5) -> 4 (0.95). Anchor 2: positive 0 (0.5) has no negative beyond it,
     * so the farthest, 4 (0.45). Anchor 3: positive 4 (0.73) -> none beyond -> farthest
     * 2 (0.28). Anchor 5 has no positive. */
    const Triplet want[8] = {{0, 1, 3}, {0, 2, 4}, {1, 0, 3}, {1, 2, 4},
                             {2, 0, 4}, {2, 1, 4}, {3, 4, 2}, {4, 3, 1}};
    for (int i = 0; i < 8; i++) {
        cr_expect(t[i].a == want[i].a && t[i].p == want[i].p && t[i].n == want[i].n,
                  "pair %d: expected (%d, %d, %d), got (%d, %d, %d)", i, want[i].a, want[i].p,
                  want[i].n, t[i].a, t[i].p, t[i].n);
    }
}

Test(triplet, loss_and_gradient_match_finite_differences) {
    float y[12], dist[36], dy[12] = {0};
    int32_t labels[6];
    Triplet t[16];
    line_batch(y, labels);
    triplet_distances(dist, y, 6, 2);
    int n = triplet_mine_semihard(t, 16, dist, labels, 6);
    int active;

    float loss = triplet_loss_forward(&active, t, n, y, 2, 1.0f);
    cr_expect(active > 0 && loss > 0.0f);
    triplet_loss_backward(dy, 1.0f, t, n, y, 2, 1.0f);
    double err = 0.0;
    for (int i = 0; i < 12; i++) {
        float old = y[i];
        y[i] = old + 1e-3f;
        double up = triplet_loss_forward(NULL, t, n, y, 2, 1.0f);
        y[i] = old - 1e-3f;
        double down = triplet_loss_forward(NULL, t, n, y, 2, 1.0f);
        y[i] = old;
        err = fmax(err, fabs((up - down) / 2e-3 - dy[i]));
    }
    printf("triplet loss: finite differences max |diff| %.1e\n", err);
    cr_expect_leq(err, 1e-3);
}

/* --- the projection head --- */

static double head_loss(const float *w, const float *b, const float *x, const Triplet *t, int n,
                        float lambda, float *work) {
    float y[6 * 4], z[6 * 4];
    triplet_head_forward(y, z, x, w, b, 6, 5, 4);
    return triplet_loss_forward(NULL, t, n, y, 4, 1.0f) +
           triplet_recon_forward(work, x, w, 6, 5, 4, lambda);
}

Test(triplet, head_and_reconstruction_match_finite_differences) {
    float x[30], w[20], b[4], y[24], z[24], dz[24], dy[24] = {0}, dw[20] = {0}, db[4] = {0};
    float dist[36], work[6 * 9];
    int32_t labels[6] = {0, 0, 1, 1, 2, 2};
    Triplet t[16];
    fill_r(x, 30, 1), fill_r(w, 20, 2), fill_r(b, 4, 3);

    triplet_head_forward(y, z, x, w, b, 6, 5, 4);
    triplet_distances(dist, y, 6, 4);
    int n = triplet_mine_hard(t, dist, labels, 6);
    triplet_loss_backward(dy, 1.0f, t, n, y, 4, 1.0f);
    triplet_head_backward(dw, db, dz, dy, y, z, x, w, 6, 5, 4);
    triplet_recon_forward(work, x, w, 6, 5, 4, 0.7f);
    triplet_recon_backward(dw, work, x, w, 6, 5, 4, 0.7f);

    double err = 0.0;
    for (int i = 0; i < 24; i++) {
        float *p = i < 20 ? &w[i] : &b[i - 20], old = *p, g = i < 20 ? dw[i] : db[i - 20];
        *p = old + 1e-3f;
        double up = head_loss(w, b, x, t, n, 0.7f, work);
        *p = old - 1e-3f;
        double down = head_loss(w, b, x, t, n, 0.7f, work);
        *p = old;
        err = fmax(err, fabs((up - down) / 2e-3 - g));
    }
    printf("head + reconstruction: finite differences max |diff| %.1e\n", err);
    cr_expect_leq(err, 1e-3);
}

Test(triplet, explicit_triplets_train_the_head_as_mined_ones_do) {
    float x[30], w[20], b[4], y[24], z[24], dz[24], dy[24] = {0};
    float dw1[20] = {0}, db1[4] = {0}, dw2[20] = {0}, db2[4] = {0};
    float a[10], p[10], ng[10], *work = malloc(triplet_head_work_floats(2, 5, 4) * sizeof(float));
    Triplet t[2] = {{0, 1, 2}, {3, 2, 5}};
    fill_r(x, 30, 4), fill_r(w, 20, 5), fill_r(b, 4, 6);
    cr_assert(work);

    triplet_head_forward(y, z, x, w, b, 6, 5, 4);
    float l1 = triplet_loss_forward(NULL, t, 2, y, 4, 1.0f);
    triplet_loss_backward(dy, 1.0f, t, 2, y, 4, 1.0f);
    triplet_head_backward(dw1, db1, dz, dy, y, z, x, w, 6, 5, 4);

    for (int i = 0; i < 2; i++) {
        memcpy(a + 5 * i, x + 5 * t[i].a, 5 * sizeof *x);
        memcpy(p + 5 * i, x + 5 * t[i].p, 5 * sizeof *x);
        memcpy(ng + 5 * i, x + 5 * t[i].n, 5 * sizeof *x);
    }
    float l2 = triplet_head_explicit(dw2, db2, work, a, p, ng, 2, w, b, 5, 4, 1.0f);
    cr_expect_float_eq(l1, l2, 1e-6);
    cr_expect_leq(max_diff(dw1, dw2, 20), 1e-6);
    cr_expect_leq(max_diff(db1, db2, 4), 1e-6);
    free(work);
}

/* --- three training steps against PyTorch --- */

typedef struct {
    char name[32];
    int dtype;
    size_t n;
    void *data;
} Rec;

typedef struct {
    Rec rec[64];
    size_t n;
} Ref;

static uint32_t u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static Ref read_ref(const char *path) {
    FILE *f = fopen(path, "rb");
    Ref r = {0};
    cr_assert(f, "cannot open %s (run the tests from the repository root)", path);
    fseek(f, 0, SEEK_END);
    size_t len = (size_t)ftell(f), pos = 12;
    unsigned char *blob = malloc(len);
    fseek(f, 0, SEEK_SET);
    cr_assert(blob && fread(blob, 1, len, f) == len && memcmp(blob, "PDREF01\n", 8) == 0);
    fclose(f);

    r.n = u32(blob + 8);
    cr_assert_leq(r.n, 64);
    for (size_t i = 0; i < r.n; i++) {
        Rec *c = &r.rec[i];
        size_t nl = (size_t)blob[pos] | (size_t)blob[pos + 1] << 8, nd;
        cr_assert_lt(nl, sizeof c->name);
        memcpy(c->name, blob + pos + 2, nl);
        pos += 2 + nl;
        c->dtype = blob[pos], nd = blob[pos + 1], c->n = 1, pos += 2;
        for (size_t k = 0; k < nd; k++, pos += 4) c->n *= u32(blob + pos);
        size_t bytes = c->n * (c->dtype == 2 ? 1 : 4);
        cr_assert_leq(pos + bytes, len);
        c->data = malloc(bytes ? bytes : 1);
        memcpy(c->data, blob + pos, bytes);
        pos += bytes;
    }
    free(blob);
    return r;
}

static const void *field(const Ref *r, const char *name, size_t *n) {
    for (size_t i = 0; i < r->n; i++) {
        if (!strcmp(r->rec[i].name, name)) {
            if (n) *n = r->rec[i].n;
            return r->rec[i].data;
        }
    }
    cr_assert_fail("reference lacks %s", name);
    return NULL;
}

static void free_ref(Ref *r) {
    for (size_t i = 0; i < r->n; i++) free(r->rec[i].data);
}

/* One step as daemon/train.c takes it: forward, mining, loss, backward, reconstruction,
 * clipping, Adam. Returns the loss; grad keeps the gradient before clipping. */
static double torch_step(Net *n, float *m, float *v, const AdamConfig *ac, long t,
                         const int32_t *labels, bool semihard, float recon) {
    size_t B = n->B, np = enc_param_count(&n->cfg);
    int P = n->cfg.proj_dim, C = n->cfg.d_model;
    float dist[144], dout[12 * 16], work[12 * 48];
    Triplet tr[48];
    EncWeights w;
    EncGrads g;

    enc_weights_flat(&w, &n->cfg, n->params);
    enc_grads_flat(&g, &n->cfg, n->grad);
    cr_assert_eq(enc_encode(n->out, &n->ws, n->ids, n->off, B, &w, &n->cfg, 0), 0);
    triplet_distances(dist, n->out, (int)B, P);
    int nt = triplet_mine(tr, 48, semihard ? TRIPLET_SEMIHARD : TRIPLET_HARD, dist, labels, (int)B);
    double loss = triplet_loss_forward(NULL, tr, nt, n->out, P, 1.0f);
    memset(dout, 0, sizeof dout);
    triplet_loss_backward(dout, 1.0f, tr, nt, n->out, P, 1.0f);
    memset(n->grad, 0, np * sizeof *n->grad);
    cr_assert_eq(enc_backward(&g, &n->bw, dout, n->out, &n->ws, &w, &n->cfg, 0), 0);
    if (recon > 0.0f) {
        loss += triplet_recon_forward(work, n->ws.pooled, w.proj_w, (int)B, C, P, recon);
        triplet_recon_backward(g.proj_w, work, n->ws.pooled, w.proj_w, (int)B, C, P, recon);
    }

    float scale = adam_clip_scale(adam_grad_norm(n->grad, np), 1.0f);
    adam_step(n->params, m, v, n->grad, np, adam_lr(ac, t), scale, ac, t);
    return loss;
}

/* Points the net at the batch of step s of the reference (ids, offsets). */
static void load_batch(Net *n, const Ref *r, int s, const int32_t **labels) {
    char name[32];
    size_t ni, no;
    snprintf(name, sizeof name, "ids%d", s);
    const int32_t *ids = field(r, name, &ni);
    snprintf(name, sizeof name, "off%d", s);
    const int32_t *off = field(r, name, &no);
    snprintf(name, sizeof name, "labels%d", s);
    *labels = field(r, name, NULL);
    cr_assert_leq(ni, 256);
    memcpy(n->ids, ids, ni * sizeof *ids);
    n->B = no - 1;
    for (size_t b = 0; b < no; b++) n->off[b] = (size_t)off[b];
}

Test(train, three_steps_match_pytorch_autograd) {
    Ref r = read_ref("tests/reference/train_step.ref");
    const int32_t *c = field(&r, "config", NULL);
    const float *sched = field(&r, "schedule", NULL);
    EncConfig cfg = {c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], ENC_ACT_GELU, 1e-5f};
    size_t np = enc_param_count(&cfg), B = (size_t)(c[9] * c[10]), T = B * 20, S = B * 3;
    Net n = {.cfg = cfg, .B = B};
    char id[17];

    n.params = malloc(np * sizeof(float)), n.grad = calloc(np, sizeof(float));
    n.out = malloc(B * (size_t)cfg.proj_dim * sizeof(float));
    float *m = calloc(np, sizeof(float)), *v = calloc(np, sizeof(float)), *grad0 = malloc(np * 4);
    size_t fb = enc_work_size(&cfg, T, S, B, ENC_TRAIN), bb = enc_backward_work_size(&cfg, T, B);
    n.arena = malloc(fb), n.barena = malloc(bb);
    cr_assert(n.params && n.grad && n.out && m && v && grad0 && n.arena && n.barena);
    cr_assert_eq(enc_work_init(&n.ws, n.arena, fb, &cfg, T, S, B, ENC_TRAIN), 0);
    cr_assert_eq(enc_backward_work_init(&n.bw, n.barena, bb, &cfg, T, B), 0);
    enc_init_random(n.params, &cfg, (uint64_t)c[8], ENC_INIT_PERTURB);
    st_model_id(id, n.params, np * sizeof(float));
    cr_assert(!memcmp(id, field(&r, "model_id", NULL), 16),
              "model id %s differs from the reference's: run `make reference`", id);

    AdamConfig ac = adam_defaults();
    ac.lr = sched[0], ac.lr_min = sched[1], ac.warmup = c[12], ac.decay_steps = c[13];
    ac.decay = ADAM_COSINE;
    const float *want_loss = field(&r, "loss", NULL);
    for (int s = 0; s < c[11]; s++) {
        const int32_t *labels;
        char name[32];
        snprintf(name, sizeof name, "step%d", s);
        const float *kind = field(&r, name, NULL);
        load_batch(&n, &r, s, &labels);
        double loss = torch_step(&n, m, v, &ac, s + 1, labels, kind[0] > 0.5f, kind[1]);
        printf("torch parity: step %d loss %.6f, torch %.6f, |diff| %.1e\n", s + 1, loss,
               (double)want_loss[s], fabs(loss - want_loss[s]));
        cr_expect_leq(fabs(loss - want_loss[s]), 1e-5, "step %d loss", s + 1);
        if (s == 0) memcpy(grad0, n.grad, np * sizeof(float));
    }

    size_t ng, npar;
    const float *tg = field(&r, "grad0", &ng), *tp = field(&r, "params", &npar);
    cr_assert_eq(ng, np);
    cr_assert_eq(npar, np);
    double dg = max_diff(grad0, tg, np), dp = max_diff(n.params, tp, np);
    printf("torch parity: gradient of step 1 max |diff| %.1e, weights after 3 Adam steps max "
           "|diff| %.1e (tolerance 1e-4)\n",
           dg, dp);
    cr_expect_leq(dg, 1e-4);
    cr_expect_leq(dp, 1e-4);
    free(m), free(v), free(grad0);
    net_free(&n);
    free_ref(&r);
}

/* --- the trainer --- */

static void scratch_dir(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/pd_train_XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp");
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert(f && fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", path);
}

static void remove_dir(const char *dir) {
    char cmd[512];
    if (getenv("PROMPTD_KEEP_TEST_FILES")) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(train, scores_count_knn_votes_centroids_and_margins) {
    /* Gallery: label 0 at (1, 0) and (0.8, 0.6), label 1 at (0, 1) and (-0.6, 0.8). Query
     * 0 (label 1) at (0.6, 0.8) has cosines 0.6 0.96 0.8 0.28: its 3 nearest vote 2 to 1
     * for label 0, its 2 nearest tie and the larger similarity (0.96) wins, label 0 again;
     * the centroids say 0 too (0.82 against 0.57). Query 1 (label 1) at (-0.28, 0.96) is
     * right every way. Margins: 0.54 - 0.78 and 0.948 - 0.036. */
    float g[8] = {1, 0, 0.8f, 0.6f, 0, 1, -0.6f, 0.8f}, q[4] = {0.6f, 0.8f, -0.28f, 0.96f};
    int32_t gl[4] = {0, 0, 1, 1}, ql[2] = {1, 1};
    TrainScores s;

    cr_assert_eq(train_score(&s, q, ql, 2, g, gl, 4, 2, 3, 2), 0);
    cr_expect_float_eq(s.knn, 0.5, 1e-9);
    cr_expect_float_eq(s.centroid, 0.5, 1e-9);
    cr_expect_float_eq(s.margin, (-0.24 + 0.912) / 2, 1e-6);
    cr_assert_eq(train_score(&s, q, ql, 2, g, gl, 4, 2, 2, 2), 0);
    cr_expect_float_eq(s.knn, 0.5, 1e-9, "a tied vote goes to the larger summed similarity");

    /* Each gallery point against the others: its twin is nearest, its own centroid too. */
    cr_assert_eq(train_score(&s, g, gl, 4, g, gl, 4, 2, 1, 2), 0);
    cr_expect_float_eq(s.knn, 1.0, 1e-9);
    cr_expect_float_eq(s.centroid, 1.0, 1e-9);
    cr_expect_float_eq(s.margin, 0.8, 1e-6);
}

Test(train, data_errors_name_the_file_and_line) {
    char dir[64], path[128], err[256];
    TrainLabels *labels = train_labels_new();
    TrainData *d;
    scratch_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/bad.jsonl", dir);

    write_text(path, "{\"text\": \"a\", \"label\": \"x\"}\n\n{\"text\": \"b\"}\n");
    cr_expect_eq(train_data_load(&d, path, labels, err, sizeof err), -1);
    cr_expect(strstr(err, "bad.jsonl:3:") && strstr(err, "label"), "got: %s", err);
    write_text(path, "{\"text\": \"a\", \"label\": \"x\"}\nnot json\n");
    cr_expect_eq(train_data_load(&d, path, labels, err, sizeof err), -1);
    cr_expect(strstr(err, "bad.jsonl:2: not JSON"), "got: %s", err);
    write_text(path, "\n");
    cr_expect_eq(train_data_load(&d, path, labels, err, sizeof err), -1);
    cr_expect(strstr(err, "no examples"), "got: %s", err);

    write_text(path, "{\"text\": \"WTG-12 Bearing 92C\", \"label\": \"x\", \"id\": 3}\n");
    cr_assert_eq(train_data_load(&d, path, labels, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(train_data_text(d, 0), "wtg-<num> bearing <num>", "texts are normalised");
    train_data_free(d);
    train_labels_free(labels);
    remove_dir(dir);
}

/* Four situations in a few wordings each; enough for two steps of 4 x 2. */
static void small_data(const char *path) {
    static const char *const texts[4][4] = {
        {"pump %d vibration high", "vibration alarm on pump %d", "pump %d shaking", "pump %d vib"},
        {"how do I reset breaker %d", "steps to reset breaker %d", "procedure breaker %d reset",
         "reset breaker %d how"},
        {"fan %d back to normal", "fan %d recovered", "fan %d alarm cleared", "fan %d ok again"},
        {"test alarm %d ignore", "heartbeat %d ok", "ignore test %d", "test message %d"}};
    static const char *const names[4] = {"triage", "runbook", "recovery", "ignore-noise"};
    char line[160], all[8192] = "";
    for (int i = 0; i < 48; i++) {
        char text[96];
        snprintf(text, sizeof text, texts[i % 4][(i / 4) % 4], i);
        snprintf(line, sizeof line, "{\"text\": \"%s\", \"label\": \"%s\"}\n", text, names[i % 4]);
        strcat(all, line);
    }
    write_text(path, all);
}

static TrainConfig tiny_config(void) {
    TrainConfig c = train_default_config();
    c.enc = (EncConfig){512, 16, 1, 4, 32, 16, 12, 8, ENC_ACT_GELU, 1e-5f};
    c.tok = tok_default_config(512);
    c.epochs = 2, c.labels_per_batch = 4, c.per_label = 2;
    c.recon_weight = 0.1f;
    return c;
}

/* Trains on path with c and returns a copy of the weights. */
static float *train_once(const char *path, const TrainConfig *c, size_t *n) {
    char err[256];
    TrainLabels *labels = train_labels_new();
    TrainData *d;
    Trainer *t;
    cr_assert_eq(train_data_load(&d, path, labels, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_new(&t, c, d, d, train_labels_count(labels), err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_run(t, NULL, NULL, err, sizeof err), 0, "%s", err);

    *n = enc_param_count(train_enc_config(t));
    float *p = malloc(*n * sizeof *p);
    cr_assert(p);
    memcpy(p, train_params(t), *n * sizeof *p);
    train_free(t);
    train_data_free(d);
    train_labels_free(labels);
    return p;
}

Test(train, same_seed_gives_the_same_weights) {
    char dir[64], path[128];
    size_t n1, n2, n3;
    scratch_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/small.jsonl", dir);
    small_data(path);

    TrainConfig c = tiny_config();
    float *a = train_once(path, &c, &n1), *b = train_once(path, &c, &n2);
    c.seed = 2;
    float *other = train_once(path, &c, &n3);
    cr_assert_eq(n1, n2);
    cr_expect(memcmp(a, b, n1 * sizeof *a) == 0, "two runs with seed 1 differ");
    cr_expect(memcmp(a, other, n1 * sizeof *a) != 0, "seeds 1 and 2 gave the same weights");

    c.seed = 1, c.head_only = true;
    free(b);
    b = train_once(path, &c, &n2);
    float *b2 = train_once(path, &c, &n3);
    cr_expect(memcmp(b, b2, n2 * sizeof *b) == 0, "two head-only runs differ");
    free(a), free(b), free(b2), free(other);
    remove_dir(dir);
}

Test(train, saves_a_valid_model_with_a_new_id_and_its_record) {
    char dir[64], data[128], model[128], tuned[128], svg[128], err[512], id1[17], id2[17];
    TrainLabels *labels = train_labels_new();
    TrainData *d;
    Trainer *t;
    scratch_dir(dir, sizeof dir);
    snprintf(data, sizeof data, "%s/small.jsonl", dir);
    snprintf(model, sizeof model, "%s/m.safetensors", dir);
    snprintf(tuned, sizeof tuned, "%s/tuned.safetensors", dir);
    snprintf(svg, sizeof svg, "%s/curve.svg", dir);
    small_data(data);

    TrainConfig c = tiny_config();
    cr_assert_eq(train_data_load(&d, data, labels, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_new(&t, &c, d, d, train_labels_count(labels), err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(train_run(t, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_save(t, model, labels, id1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_write_svg(t, svg, err, sizeof err), 0, "%s", err);
    train_free(t);

    /* Fine-tune the head of the saved model: it loads, and the new file has another id. */
    c.init_path = model, c.head_only = true;
    cr_assert_eq(train_new(&t, &c, d, NULL, train_labels_count(labels), err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(train_run(t, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_save(t, tuned, labels, id2, err, sizeof err), 0, "%s", err);
    cr_expect_str_neq(id1, id2, "fine-tuning must change the model id");
    train_free(t);

    float *p;
    EncConfig enc;
    TokConfig tok;
    char id3[17];
    cr_assert_eq(train_load_model(&p, &enc, &tok, id3, tuned, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(id2, id3);
    free(p);
    FILE *f = fopen(tuned, "rb");
    char head[4096] = "";
    cr_assert(f && fread(head, 1, sizeof head - 1, f) > 0);
    fclose(f);
    cr_expect(strstr(head + 8, "\"base_model_id\":\"") && strstr(head + 8, id1) &&
                  strstr(head + 8, "\"train_mode\":\"head\"") && strstr(head + 8, "runbook"),
              "metadata lacks the run's record: %.300s", head + 8);
    f = fopen(svg, "r");
    cr_assert(f && fread(head, 1, sizeof head - 1, f) > 0);
    fclose(f);
    cr_expect(strstr(head, "<svg") && strstr(head, "<polyline"), "not an SVG learning curve");
    train_data_free(d);
    train_labels_free(labels);
    remove_dir(dir);
}

/* Generates the alarm generator's train and test splits into dir. */
static void generate(const char *dir, int n_train, int n_test) {
    const char *gen = getenv("PROMPTD_GEN_ALARMS");
    char cmd[512];
    if (!gen) gen = "build/tools/gen_alarms";
    cr_assert(access(gen, X_OK) == 0, "%s is missing: build it (make) or set PROMPTD_GEN_ALARMS",
              gen);
    snprintf(cmd, sizeof cmd,
             "%s --seed 3 --count %d -o %s/train.jsonl && %s --seed 3 --count %d "
             "--split test -o %s/test.jsonl",
             gen, n_train, dir, gen, n_test, dir);
    cr_assert_eq(system(cmd), 0, "%s failed", cmd);
}

Test(train, raises_heldout_knn_accuracy_far_above_the_untrained_model) {
    char dir[64], p1[128], p2[128], err[512];
    TrainLabels *labels = train_labels_new();
    TrainData *tr, *te;
    Trainer *t;
    TrainScores trained, untrained;
    scratch_dir(dir, sizeof dir);
    generate(dir, 1600, 400);
    snprintf(p1, sizeof p1, "%s/train.jsonl", dir);
    snprintf(p2, sizeof p2, "%s/test.jsonl", dir);

    /* A small model (one layer of d 64), so that the test also runs under the sanitizers
     * in well under a minute; measured: 94% against the untrained 54%. */
    TrainConfig c = train_default_config();
    c.enc = (EncConfig){4096, 64, 1, 4, 128, 64, 48, 32, ENC_ACT_GELU, 1e-5f};
    c.tok = tok_default_config(4096);
    c.epochs = 10, c.lr = 3e-3, c.eval_queries = 100, c.eval_gallery = 200;
    cr_assert_eq(train_data_load(&tr, p1, labels, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_data_load(&te, p2, labels, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_new(&t, &c, tr, te, train_labels_count(labels), err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(train_run(t, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_final_scores(t, &trained, &untrained, err, sizeof err), 0, "%s", err);
    printf("held-out (unseen phrasings) kNN@10: trained %.1f%%, untrained %.1f%%; centroid "
           "%.1f%% / %.1f%%; margin %+.3f / %+.3f\n",
           100 * trained.knn, 100 * untrained.knn, 100 * trained.centroid, 100 * untrained.centroid,
           trained.margin, untrained.margin);
    cr_expect_geq(trained.knn, untrained.knn + 0.25, "trained %.3f, untrained %.3f", trained.knn,
                  untrained.knn);
    cr_expect_geq(trained.knn, 0.85, "trained kNN accuracy %.3f", trained.knn);
    cr_expect_geq(trained.margin, untrained.margin + 0.5);
    train_free(t);
    train_data_free(tr);
    train_data_free(te);
    train_labels_free(labels);
    remove_dir(dir);
}
