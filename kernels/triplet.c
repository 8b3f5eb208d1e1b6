/* triplet.c - triplet loss, in-batch mining and the projection head; see triplet.h.
 *
 * Buffers (letters of triplet.h):
 *   y, dy (rows, P)   dist (B, B)   labels (B)   triplets (n)
 *   head: x (B, C)  w (P, C)  b (P)  z, y, dz, dy (B, P)
 *   reconstruction work: u (B, P) = w x,  r (B, C) = x - w^T u,  wr (B, P) = w r
 *
 * Everything here is small (B a few hundred, P and C a few hundred): plain loops,
 * with sums in double where a sum of many squares sets a distance or a norm.
 */
#include "triplet.h"

#include <math.h>
#include <string.h>

/* --- distances and mining --- */

static float distance(const float *u, const float *v, int P) {
    double ss = 0.0;
    for (int k = 0; k < P; k++) ss += (double)(u[k] - v[k]) * (u[k] - v[k]);
    return sqrtf((float)ss + TRIPLET_EPS);
}

void triplet_distances(float *dist, const float *y, int B, int P) {
    for (int i = 0; i < B; i++) {
        dist[(size_t)i * B + i] = sqrtf(TRIPLET_EPS);
        for (int j = i + 1; j < B; j++) {
            float d = distance(y + (size_t)i * P, y + (size_t)j * P, P);
            dist[(size_t)i * B + j] = dist[(size_t)j * B + i] = d;
        }
    }
}

int triplet_mine_hard(Triplet *out, const float *dist, const int32_t *labels, int B) {
    int n = 0;

    for (int a = 0; a < B; a++) {
        const float *row = dist + (size_t)a * B;
        int p = -1, neg = -1;
        for (int j = 0; j < B; j++) {
            if (j == a) continue;
            if (labels[j] == labels[a]) {
                if (p < 0 || row[j] > row[p]) p = j; /* strict: the first of equals */
            } else if (neg < 0 || row[j] < row[neg]) {
                neg = j;
            }
        }
        if (p >= 0 && neg >= 0) out[n++] = (Triplet){a, p, neg};
    }
    return n;
}

/* The semi-hard negative of anchor a for a positive at distance dap: the nearest
 * negative with d > dap, else the farthest negative; -1 when a has none. */
static int semihard_negative(const float *row, const int32_t *labels, int a, int B, float dap) {
    int outside = -1, farthest = -1;

    for (int j = 0; j < B; j++) {
        if (labels[j] == labels[a]) continue;
        if (row[j] > dap && (outside < 0 || row[j] < row[outside])) outside = j;
        if (farthest < 0 || row[j] > row[farthest]) farthest = j;
    }
    return outside >= 0 ? outside : farthest;
}

int triplet_mine_semihard(Triplet *out, int cap, const float *dist, const int32_t *labels, int B) {
    int n = 0;

    for (int a = 0; a < B; a++) {
        const float *row = dist + (size_t)a * B;
        for (int p = 0; p < B && n < cap; p++) {
            if (p == a || labels[p] != labels[a]) continue;
            int neg = semihard_negative(row, labels, a, B, row[p]);
            if (neg < 0) break; /* no negative for this anchor at all */
            out[n++] = (Triplet){a, p, neg};
        }
    }
    return n;
}

int triplet_mine(Triplet *out, int cap, TripletMining rule, const float *dist,
                 const int32_t *labels, int B) {
    if (rule == TRIPLET_SEMIHARD) return triplet_mine_semihard(out, cap, dist, labels, B);
    return cap >= B ? triplet_mine_hard(out, dist, labels, B) : 0;
}

/* --- the loss --- */

float triplet_loss_forward(int *active, const Triplet *t, int n, const float *y, int P,
                           float margin) {
    double sum = 0.0;
    int on = 0;

    for (int i = 0; i < n; i++) {
        const float *ya = y + (size_t)t[i].a * P;
        float h = distance(ya, y + (size_t)t[i].p * P, P) -
                  distance(ya, y + (size_t)t[i].n * P, P) + margin;
        if (h > 0.0f) sum += h, on++;
    }
    if (active) *active = on;
    return n ? (float)(sum / n) : 0.0f;
}

/* dy_i += g (y_i - y_j) / d(i, j) and dy_j -= the same: the gradient of g d(i, j). */
static void distance_backward(float *dy, const float *y, int i, int j, int P, float g) {
    const float *yi = y + (size_t)i * P, *yj = y + (size_t)j * P;
    float s = g / distance(yi, yj, P);

    for (int k = 0; k < P; k++) {
        float v = s * (yi[k] - yj[k]);
        dy[(size_t)i * P + k] += v;
        dy[(size_t)j * P + k] -= v;
    }
}

void triplet_loss_backward(float *dy, float dloss, const Triplet *t, int n, const float *y, int P,
                           float margin) {
    if (n == 0) return;
    float g = dloss / (float)n;

    /* Only the triplets whose hinge is open carry a gradient. */
    for (int i = 0; i < n; i++) {
        const float *ya = y + (size_t)t[i].a * P;
        float h = distance(ya, y + (size_t)t[i].p * P, P) -
                  distance(ya, y + (size_t)t[i].n * P, P) + margin;
        if (h <= 0.0f) continue;
        distance_backward(dy, y, t[i].a, t[i].p, P, g);
        distance_backward(dy, y, t[i].a, t[i].n, P, -g);
    }
}

/* --- projection head --- */

void triplet_head_forward(float *y, float *z, const float *x, const float *w, const float *b, int B,
                          int C, int P) {
    for (int i = 0; i < B; i++) {
        const float *xi = x + (size_t)i * C;
        float *zi = z + (size_t)i * P, *yi = y + (size_t)i * P;
        double ss = 0.0;
        for (int o = 0; o < P; o++) {
            const float *wo = w + (size_t)o * C;
            float acc = b[o];
            for (int c = 0; c < C; c++) acc += xi[c] * wo[c];
            zi[o] = acc;
            ss += (double)acc * acc;
        }

        /* As torch.nn.functional.normalize: divide by the norm, floored at 1e-12. */
        float norm = (float)sqrt(ss), inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
        for (int o = 0; o < P; o++) yi[o] = zi[o] * inv;
    }
}

void triplet_head_backward(float *dw, float *db, float *dz, const float *dy, const float *y,
                           const float *z, const float *x, const float *w, int B, int C, int P) {
    (void)w; /* the gradient of x, which would need w, is not wanted here */

    /* Through the normalisation: dz = (dy - y (y . dy)) / |z|. */
    for (int i = 0; i < B; i++) {
        const float *yi = y + (size_t)i * P, *dyi = dy + (size_t)i * P, *zi = z + (size_t)i * P;
        float *dzi = dz + (size_t)i * P;
        double dot = 0.0, ss = 0.0;
        for (int o = 0; o < P; o++) dot += (double)yi[o] * dyi[o], ss += (double)zi[o] * zi[o];
        float norm = (float)sqrt(ss);
        for (int o = 0; o < P; o++)
            dzi[o] = norm > 1e-12f ? (dyi[o] - yi[o] * (float)dot) / norm : dyi[o] / 1e-12f;
    }

    /* Through the linear layer: dw += dz^T x, db += column sums of dz. */
    for (int i = 0; i < B; i++) {
        const float *xi = x + (size_t)i * C, *dzi = dz + (size_t)i * P;
        for (int o = 0; o < P; o++) {
            float *dwo = dw + (size_t)o * C, g = dzi[o];
            for (int c = 0; c < C; c++) dwo[c] += g * xi[c];
            db[o] += g;
        }
    }
}

/* --- reconstruction term --- */

float triplet_recon_forward(float *work, const float *x, const float *w, int B, int C, int P,
                            float lambda) {
    float *u = work, *r = work + (size_t)B * P;
    double sum = 0.0;

    for (int i = 0; i < B; i++) {
        const float *xi = x + (size_t)i * C;
        float *ui = u + (size_t)i * P, *ri = r + (size_t)i * C;

        /* u = w x (the code), then r = x - w^T u (what decoding misses). */
        for (int o = 0; o < P; o++) {
            float acc = 0.0f;
            for (int c = 0; c < C; c++) acc += w[(size_t)o * C + c] * xi[c];
            ui[o] = acc;
        }
        memcpy(ri, xi, (size_t)C * sizeof *ri);
        for (int o = 0; o < P; o++) {
            for (int c = 0; c < C; c++) ri[c] -= w[(size_t)o * C + c] * ui[o];
        }
        for (int c = 0; c < C; c++) sum += (double)ri[c] * ri[c];
    }
    return B ? (float)(lambda * sum / ((double)B * C)) : 0.0f;
}

/* For f = |x - w^T w x|^2 with u = w x and r = x - w^T u: grad_w f = -2 (u r^T + (w r) x^T). */
void triplet_recon_backward(float *dw, const float *work, const float *x, const float *w, int B,
                            int C, int P, float lambda) {
    const float *u = work, *r = work + (size_t)B * P;
    if (B == 0) return;
    float s = -2.0f * lambda / ((float)B * (float)C);

    for (int i = 0; i < B; i++) {
        const float *xi = x + (size_t)i * C, *ri = r + (size_t)i * C, *ui = u + (size_t)i * P;
        for (int o = 0; o < P; o++) {
            const float *wo = w + (size_t)o * C;
            float wr = 0.0f;
            for (int c = 0; c < C; c++) wr += wo[c] * ri[c];

            float *dwo = dw + (size_t)o * C;
            for (int c = 0; c < C; c++) dwo[c] += s * (ui[o] * ri[c] + wr * xi[c]);
        }
    }
}

/* --- explicit triplets --- */

size_t triplet_head_work_floats(int n, int C, int P) {
    (void)C;
    return 12 * (size_t)n * (size_t)P;
}

float triplet_head_explicit(float *dw, float *db, float *work, const float *anchor,
                            const float *positive, const float *negative, int n, const float *w,
                            const float *b, int C, int P, float margin) {
    size_t block = (size_t)n * P;
    float *y = work, *z = y + 3 * block, *dy = z + 3 * block, *dz = dy + 3 * block;
    const float *x[3] = {anchor, positive, negative};
    if (n <= 0) return 0.0f;

    /* Rows [0, n) anchors, [n, 2n) positives, [2n, 3n) negatives. */
    for (int k = 0; k < 3; k++)
        triplet_head_forward(y + k * block, z + k * block, x[k], w, b, n, C, P);

    double sum = 0.0;
    float g = 1.0f / (float)n;
    memset(dy, 0, 3 * block * sizeof *dy);
    for (int i = 0; i < n; i++) {
        float h = distance(y + (size_t)i * P, y + block + (size_t)i * P, P) -
                  distance(y + (size_t)i * P, y + 2 * block + (size_t)i * P, P) + margin;
        if (h <= 0.0f) continue;
        sum += h;
        distance_backward(dy, y, i, n + i, P, g);
        distance_backward(dy, y, i, 2 * n + i, P, -g);
    }
    for (int k = 0; k < 3; k++) {
        triplet_head_backward(dw, db, dz + k * block, dy + k * block, y + k * block, z + k * block,
                              x[k], w, n, C, P);
    }
    return (float)(sum / n);
}
