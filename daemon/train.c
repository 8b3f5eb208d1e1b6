/*
 * The encoder's offline trainer; see train.h.
 *
 * One step: draw P labels x K examples, encode them with the training forward
 * (enc_encode on an ENC_TRAIN workspace), mine triplets among their output vectors,
 * take the triplet loss (plus the head's reconstruction term when asked), run the
 * backward pass into a flat gradient, clip its global norm and step Adam over the flat
 * parameters. In head-only mode the pooled vectors of every text are computed once and
 * only the projection head is trained on them (kernels/triplet.h).
 *
 * Memory is planned at the start: the batch's worst case (the B longest texts) sizes the
 * training and backward workspaces once, so the loop allocates nothing.
 */
#include "train.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/adam.h"
#include "../kernels/encoder_backward.h"
#include "../kernels/normalize.h"
#include "../kernels/rng.h"
#include "../kernels/safetensors.h"

#define ENCODE_BATCH   128 /* texts per forward pass when only encoding */
#define UNTRAINED_SEED 1   /* the untrained baseline's weights: make_model's default seed */

/* --- labels --- */

struct TrainLabels {
    char **names;
    size_t n, cap;
};

TrainLabels *train_labels_new(void) {
    return calloc(1, sizeof(TrainLabels));
}

void train_labels_free(TrainLabels *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    free(l);
}

size_t train_labels_count(const TrainLabels *l) {
    return l->n;
}

const char *train_labels_name(const TrainLabels *l, size_t id) {
    return id < l->n ? l->names[id] : "?";
}

/* The id of name, added when new; -1 when out of memory. Linear: data sets have at most a
 * few hundred labels, and each line looks up one. */
static int32_t label_id(TrainLabels *l, const char *name) {
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->names[i], name) == 0) return (int32_t)i;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **p = realloc(l->names, cap * sizeof *p);
        if (!p) return -1;
        l->names = p, l->cap = cap;
    }
    if (!(l->names[l->n] = strdup(name))) return -1;
    return (int32_t)l->n++;
}

/* --- data --- */

struct TrainData {
    char **texts; /* normalised, NUL-terminated */
    int32_t *labels;
    size_t n, cap;
};

void train_data_free(TrainData *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) free(d->texts[i]);
    free(d->texts);
    free(d->labels);
    free(d);
}

size_t train_data_count(const TrainData *d) {
    return d->n;
}

const char *train_data_text(const TrainData *d, size_t i) {
    return d->texts[i];
}

int32_t train_data_label(const TrainData *d, size_t i) {
    return d->labels[i];
}

char *train_normalise(const char *text, size_t len, size_t *out_len) {
    size_t cap = norm_out_cap(len), wcap = norm_work_cap(len);
    char *out = malloc(cap);
    int32_t *work = malloc(wcap * sizeof *work);
    ptrdiff_t n = out && work ? norm_text(out, cap, text, len, work, wcap, NORM_MASK) : -1;

    free(work);
    if (n < 0) {
        free(out);
        return NULL;
    }
    if (out_len) *out_len = (size_t)n;
    return out;
}

static int data_push(TrainData *d, char *text, int32_t label) {
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 1024;
        char **t = realloc(d->texts, cap * sizeof *t);
        if (t) d->texts = t;
        int32_t *l = t ? realloc(d->labels, cap * sizeof *l) : NULL;
        if (!l) return -1;
        d->labels = l, d->cap = cap;
    }
    d->texts[d->n] = text, d->labels[d->n++] = label;
    return 0;
}

/* One JSON line into d; returns 0, or -1 with a message (without the file and line). */
static int parse_line(TrainData *d, TrainLabels *labels, const char *line, size_t len, char *err,
                      size_t errlen) {
    json_error_t jerr;
    json_t *root = json_loadb(line, len, 0, &jerr), *text, *label;

    if (!root) return snprintf(err, errlen, "not JSON: %s", jerr.text), -1;
    text = json_object_get(root, "text"), label = json_object_get(root, "label");
    int rc = -1;
    if (!json_is_object(root) || !json_is_string(text) || !json_is_string(label)) {
        snprintf(err, errlen, "expected an object with string fields \"text\" and \"label\"");
    } else if (json_string_length(label) == 0) {
        snprintf(err, errlen, "the label is empty");
    } else {
        int32_t id = label_id(labels, json_string_value(label));
        char *norm = id < 0
                         ? NULL
                         : train_normalise(json_string_value(text), json_string_length(text), NULL);
        if (norm && data_push(d, norm, id) == 0) {
            rc = 0;
        } else {
            free(norm);
            snprintf(err, errlen, "out of memory");
        }
    }
    json_decref(root);
    return rc;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    }
    return true;
}

int train_data_load(TrainData **out, const char *path, TrainLabels *labels, char *err,
                    size_t errlen) {
    FILE *f = fopen(path, "r");
    TrainData *d = calloc(1, sizeof *d);
    char *line = NULL, why[256];
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int rc = -1;

    *out = NULL;
    if (!f || !d) {
        snprintf(err, errlen, "%s: %s", path, f ? "out of memory" : strerror(errno));
        goto done;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (blank(line, (size_t)len)) continue;
        if (parse_line(d, labels, line, (size_t)len, why, sizeof why)) {
            snprintf(err, errlen, "%s:%zu: %s", path, lineno, why);
            goto done;
        }
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
    } else if (d->n == 0) {
        snprintf(err, errlen, "%s: no examples", path);
    } else {
        *out = d, d = NULL, rc = 0;
    }

done:
    free(line);
    if (f) fclose(f);
    train_data_free(d);
    return rc;
}

/* --- configuration --- */

TrainConfig train_default_config(void) {
    TrainConfig c = {0};

    c.enc = enc_default_config(16384);
    c.enc.d_model = 128, c.enc.d_ff = 512;
    c.tok = tok_default_config(16384);
    c.seed = 1;
    c.epochs = 20;
    c.labels_per_batch = 16, c.per_label = 4;
    c.lr = 1e-3, c.lr_min = 1e-5, c.warmup = 0.05;
    c.clip = 1.0f, c.margin = 1.0f;
    c.mining = TRIPLET_SEMIHARD, c.semihard_epochs = 0, c.token_dropout = 0.1;
    c.max_tokens = 256;
    c.knn_k = 10;
    c.eval_queries = 2000, c.eval_gallery = 4000;
    return c;
}

/* --- tokenised texts --- */

typedef struct {
    int32_t *ids;
    size_t *off; /* n + 1 */
    size_t n;
} Tokens;

static void tokens_free(Tokens *tk) {
    free(tk->ids);
    free(tk->off);
    memset(tk, 0, sizeof *tk);
}

/* Tokenises texts[0..n) (normalised, NUL-terminated), at most max_tokens ids each (the
 * tail is dropped, as promptd does with encoder.max_tokens). */
static int tokens_make(Tokens *tk, const char *const *texts, size_t n, const TokConfig *tok,
                       size_t max_tokens) {
    size_t total = 0;

    memset(tk, 0, sizeof *tk);
    for (size_t i = 0; i < n; i++) {
        size_t got = tok_text(NULL, 0, texts[i], strlen(texts[i]), tok);
        total += got < max_tokens ? got : max_tokens;
    }
    tk->ids = malloc((total ? total : 1) * sizeof *tk->ids);
    tk->off = malloc((n + 1) * sizeof *tk->off);
    if (!tk->ids || !tk->off) return tokens_free(tk), -1;

    tk->off[0] = 0, tk->n = n;
    for (size_t i = 0; i < n; i++) {
        size_t got = tok_text(tk->ids + tk->off[i], max_tokens, texts[i], strlen(texts[i]), tok);
        tk->off[i + 1] = tk->off[i] + (got < max_tokens ? got : max_tokens);
    }
    return 0;
}

static int tokens_of_data(Tokens *tk, const TrainData *d, const TokConfig *tok, size_t max_tokens) {
    return tokens_make(tk, (const char *const *)d->texts, d->n, tok, max_tokens);
}

/* --- encoding only (evaluation, head-only caches) --- */

typedef struct {
    float *prepared;
    void *arena;
    EncWork ws;
    int32_t *ids;
    size_t off[ENCODE_BATCH + 1];
    EncWeights w;
} Encoder;

static void encoder_free(Encoder *e) {
    free(e->prepared);
    free(e->arena);
    free(e->ids);
}

/* A forward-only encoder of the weights params for batches of the given texts. */
static int encoder_init(Encoder *e, const float *params, const EncConfig *cfg, size_t max_tokens) {
    size_t packed = enc_packed_len(max_tokens, cfg), chunks = enc_chunk_count(max_tokens, cfg);
    size_t T = ENCODE_BATCH * (packed ? packed : 1), S = ENCODE_BATCH * (chunks ? chunks : 1);
    size_t bytes = enc_work_size(cfg, T, S, ENCODE_BATCH, 0);

    memset(e, 0, sizeof *e);
    e->prepared = malloc(enc_prepared_count(cfg) * sizeof(float));
    e->arena = bytes == SIZE_MAX ? NULL : malloc(bytes);
    e->ids = malloc(ENCODE_BATCH * (max_tokens ? max_tokens : 1) * sizeof *e->ids);
    if (!e->prepared || !e->arena || !e->ids ||
        enc_work_init(&e->ws, e->arena, bytes, cfg, T, S, ENCODE_BATCH, 0)) {
        encoder_free(e);
        return -1;
    }
    enc_weights_flat(&e->w, cfg, params);
    enc_prepare(&e->w, e->prepared, cfg);
    return 0;
}

/* Encodes texts idx[0..n) of tk (all of them when idx is NULL) into vecs (n, P) and,
 * when pooled is not NULL, their pooled vectors (n, C). */
static int encode_tokens(float *vecs, float *pooled, const Tokens *tk, const size_t *idx, size_t n,
                         const float *params, const EncConfig *cfg, size_t max_tokens) {
    Encoder e;
    size_t P = (size_t)cfg->proj_dim, C = (size_t)cfg->d_model;

    if (encoder_init(&e, params, cfg, max_tokens)) return -1;
    for (size_t b0 = 0; b0 < n; b0 += ENCODE_BATCH) {
        size_t nb = n - b0 < ENCODE_BATCH ? n - b0 : ENCODE_BATCH;
        e.off[0] = 0;
        for (size_t j = 0; j < nb; j++) {
            size_t i = idx ? idx[b0 + j] : b0 + j, len = tk->off[i + 1] - tk->off[i];
            memcpy(e.ids + e.off[j], tk->ids + tk->off[i], len * sizeof *e.ids);
            e.off[j + 1] = e.off[j] + len;
        }
        if (enc_encode(vecs + b0 * P, &e.ws, e.ids, e.off, nb, &e.w, cfg, 0)) {
            encoder_free(&e);
            return -1;
        }
        if (pooled) memcpy(pooled + b0 * C, e.ws.pooled, nb * C * sizeof(float));
    }
    encoder_free(&e);
    return 0;
}

int train_encode(float *vecs, float *pooled, const TrainData *d, const float *params,
                 const EncConfig *enc, const TokConfig *tok, size_t max_tokens, char *err,
                 size_t errlen) {
    return train_encode_texts(vecs, pooled, (const char *const *)d->texts, d->n, params, enc, tok,
                              max_tokens, err, errlen);
}

int train_encode_texts(float *vecs, float *pooled, const char *const *texts, size_t n,
                       const float *params, const EncConfig *enc, const TokConfig *tok,
                       size_t max_tokens, char *err, size_t errlen) {
    Tokens tk;
    if (tokens_make(&tk, texts, n, tok, max_tokens))
        return snprintf(err, errlen, "out of memory"), -1;

    int rc = encode_tokens(vecs, pooled, &tk, NULL, n, params, enc, max_tokens);
    tokens_free(&tk);
    if (rc) snprintf(err, errlen, "out of memory encoding %zu texts", n);
    return rc;
}

/* --- scores --- */

/* The k most similar gallery rows of one query's similarities sims (ng), skipping self
 * (or SIZE_MAX), into top (k), best first. Returns how many were found. */
static int top_k(size_t *top, const float *sims, size_t ng, size_t self, int k) {
    int n = 0;

    for (size_t g = 0; g < ng; g++) {
        if (g == self) continue;
        if (n == k && sims[g] <= sims[top[n - 1]]) continue;
        int j = n < k ? n++ : k - 1;
        for (; j > 0 && sims[top[j - 1]] < sims[g]; j--) top[j] = top[j - 1];
        top[j] = g;
    }
    return n;
}

/* The label of the majority among the neighbours; a tie goes to the larger summed
 * similarity. votes and mass (n_labels) are zero on entry and on return. */
static int32_t vote(const size_t *top, int n, const float *sims, const int32_t *glabels, int *votes,
                    double *mass) {
    int32_t best = -1;

    for (int j = 0; j < n; j++) votes[glabels[top[j]]]++, mass[glabels[top[j]]] += sims[top[j]];
    for (int j = 0; j < n; j++) {
        int32_t l = glabels[top[j]];
        if (best < 0 || votes[l] > votes[best] || (votes[l] == votes[best] && mass[l] > mass[best]))
            best = l;
    }
    for (int j = 0; j < n; j++) votes[glabels[top[j]]] = 0, mass[glabels[top[j]]] = 0.0;
    return best;
}

typedef struct {
    double *sum;    /* (n_labels, dim) the sum of each label's gallery vectors */
    double *sqnorm; /* (n_labels) |sum|^2 */
    size_t *count;  /* (n_labels) */
    double *total;  /* (dim) the sum of all gallery vectors */
    size_t n;       /* gallery rows */
} Centroids;

static int centroids_make(Centroids *c, const float *gallery, const int32_t *glabels, size_t ng,
                          int dim, size_t n_labels) {
    c->sum = calloc(n_labels * dim, sizeof *c->sum);
    c->sqnorm = calloc(n_labels, sizeof *c->sqnorm);
    c->count = calloc(n_labels, sizeof *c->count);
    c->total = calloc((size_t)dim, sizeof *c->total);
    c->n = ng;
    if (!c->sum || !c->sqnorm || !c->count || !c->total) return -1;

    for (size_t g = 0; g < ng; g++) {
        c->count[glabels[g]]++;
        for (int k = 0; k < dim; k++) {
            c->sum[glabels[g] * dim + k] += gallery[g * dim + k];
            c->total[k] += gallery[g * dim + k];
        }
    }
    for (size_t l = 0; l < n_labels; l++) {
        for (int k = 0; k < dim; k++) c->sqnorm[l] += c->sum[l * dim + k] * c->sum[l * dim + k];
    }
    return 0;
}

static void centroids_free(Centroids *c) {
    free(c->sum);
    free(c->sqnorm);
    free(c->count);
    free(c->total);
}

/* Nearest centroid (cosine) and margin of one query q of label y. When q is itself in
 * the gallery (self), it leaves its own label's sum: with S that sum,
 * q . (S - q) = q . S - |q|^2 and |S - q|^2 = |S|^2 - 2 q . S + |q|^2. */
static void centroid_scores(const Centroids *c, const float *q, int32_t y, bool self, int dim,
                            size_t n_labels, bool *right, double *margin, bool *has_margin) {
    double best = -INFINITY, qq = 0.0, qt = 0.0, qy = 0.0;
    size_t arg = SIZE_MAX;

    for (int k = 0; k < dim; k++) qq += (double)q[k] * q[k], qt += q[k] * c->total[k];
    for (size_t l = 0; l < n_labels; l++) {
        double dot = 0.0, sq = c->sqnorm[l];
        for (int k = 0; k < dim; k++) dot += q[k] * c->sum[l * dim + k];
        if ((int32_t)l == y) qy = dot;
        if (self && (int32_t)l == y) sq += qq - 2.0 * dot, dot -= qq;
        if (sq > 1e-12 && dot / sqrt(sq) > best) best = dot / sqrt(sq), arg = l;
    }
    *right = arg == (size_t)y;

    /* Mean cosine to the same label's other vectors minus that to the other labels'. */
    size_t same = c->count[y] - (self ? 1 : 0), other = c->n - c->count[y];
    *has_margin = same > 0 && other > 0;
    if (*has_margin) *margin = (qy - (self ? qq : 0.0)) / (double)same - (qt - qy) / (double)other;
}

int train_score(TrainScores *s, const float *queries, const int32_t *qlabels, size_t nq,
                const float *gallery, const int32_t *glabels, size_t ng, int dim, int k,
                size_t n_labels) {
    bool same_set = queries == gallery;
    size_t rows = 64, *top = malloc((size_t)k * sizeof *top);
    float *sims = malloc(rows * ng * sizeof *sims);
    int *votes = calloc(n_labels, sizeof *votes);
    double *mass = calloc(n_labels, sizeof *mass), margin_sum = 0.0;
    size_t knn_right = 0, cen_right = 0, n_margin = 0;
    Centroids c = {0};
    int rc = -1;

    memset(s, 0, sizeof *s);
    if (!top || !sims || !votes || !mass || centroids_make(&c, gallery, glabels, ng, dim, n_labels))
        goto done;
    for (size_t q0 = 0; q0 < nq; q0 += rows) {
        size_t nr = nq - q0 < rows ? nq - q0 : rows;
        if (ng) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)ng, dim, 1.0f,
                        queries + q0 * dim, dim, gallery, dim, 0.0f, sims, (int)ng);
        }
        for (size_t r = 0; r < nr; r++) {
            size_t q = q0 + r;
            const float *row = sims + r * ng;
            int n = top_k(top, row, ng, same_set ? q : SIZE_MAX, k);
            knn_right += n > 0 && vote(top, n, row, glabels, votes, mass) == qlabels[q];

            bool right = false, has_margin = false;
            double m = 0.0;
            if (qlabels[q] >= 0 && (size_t)qlabels[q] < n_labels) {
                centroid_scores(&c, queries + q * dim, qlabels[q], same_set, dim, n_labels, &right,
                                &m, &has_margin);
            }
            cen_right += right;
            if (has_margin) margin_sum += m, n_margin++;
        }
    }
    s->queries = nq;
    s->knn = nq ? (double)knn_right / (double)nq : 0.0;
    s->centroid = nq ? (double)cen_right / (double)nq : 0.0;
    s->margin = n_margin ? margin_sum / (double)n_margin : 0.0;
    rc = 0;

done:
    centroids_free(&c);
    free(top);
    free(sims);
    free(votes);
    free(mass);
    return rc;
}

/* --- the trainer --- */

typedef struct {
    float *loss; /* per step */
    long n;
    double *knn; /* per epoch, index 0 = before training; negative when not measured */
    double *centroid;
} History;

struct Trainer {
    TrainConfig cfg;
    EncConfig enc;
    TokConfig tok;
    char base_id[17];               /* the model fine-tuned, or "" */
    const TrainLabels *save_labels; /* train_save's, for add_metadata */
    size_t n_labels;

    size_t n_params;
    float *params, *grad, *m, *v;
    AdamConfig adam;
    long step;

    Tokens train, held;
    const int32_t *train_labels, *held_labels;
    size_t *eval_q, n_eval_q, *eval_g, n_eval_g; /* per-epoch evaluation subsets */

    /* Examples of each label, shuffled, and a cursor into each list. */
    size_t *members, *label_off, *cursor;
    int32_t *active_labels; /* labels with at least two examples */
    size_t n_active;
    int P, K, B;
    Rng rng;

    /* Batch buffers. */
    int32_t *ids;
    size_t *off, *batch;
    int32_t *labels;
    float *out, *dout, *dist, *recon;
    Triplet *trip;
    int trip_cap;

    /* Full training: the forward and backward workspaces. Head only: pooled caches. */
    void *arena, *barena;
    EncWork ws;
    EncBackWork bw;
    float *pooled_train, *pooled_held, *hx, *hz, *hdz;

    History hist;
};

static void shuffle(size_t *a, size_t n, Rng *rng) {
    for (size_t i = n; i > 1; i--) {
        size_t j = rng_below(rng, (uint32_t)i), t = a[i - 1];
        a[i - 1] = a[j], a[j] = t;
    }
}

/* Groups the training examples by label; labels with one example cannot be anchors. */
static int plan_labels(Trainer *t) {
    size_t L = t->n_labels, N = t->train.n;
    t->members = malloc(N * sizeof *t->members);
    t->label_off = calloc(L + 1, sizeof *t->label_off);
    t->cursor = calloc(L, sizeof *t->cursor);
    t->active_labels = malloc((L ? L : 1) * sizeof *t->active_labels);
    if (!t->members || !t->label_off || !t->cursor || !t->active_labels) return -1;

    for (size_t i = 0; i < N; i++) t->label_off[t->train_labels[i] + 1]++;
    for (size_t l = 0; l < L; l++) t->label_off[l + 1] += t->label_off[l];
    for (size_t i = 0; i < N; i++)
        t->members[t->label_off[t->train_labels[i]] + t->cursor[t->train_labels[i]]++] = i;
    for (size_t l = 0; l < L; l++) {
        t->cursor[l] = 0;
        shuffle(t->members + t->label_off[l], t->label_off[l + 1] - t->label_off[l], &t->rng);
        if (t->label_off[l + 1] - t->label_off[l] >= 2)
            t->active_labels[t->n_active++] = (int32_t)l;
    }
    return 0;
}

/* Chooses the batch: P distinct labels, K examples of each, every label's examples
 * visited in a shuffled order that is drawn again once exhausted. */
static void sample_batch(Trainer *t) {
    int32_t *pool = t->active_labels;
    int b = 0;

    for (int p = 0; p < t->P; p++) {
        size_t j = (size_t)p + rng_below(&t->rng, (uint32_t)(t->n_active - (size_t)p));
        int32_t l = pool[j];
        pool[j] = pool[p], pool[p] = l;

        size_t first = t->label_off[l], count = t->label_off[l + 1] - first;
        for (int k = 0; k < t->K; k++, b++) {
            t->batch[b] = t->members[first + t->cursor[l]];
            t->labels[b] = l;
            if (++t->cursor[l] == count) {
                t->cursor[l] = 0;
                shuffle(t->members + first, count, &t->rng);
            }
        }
    }
}

/* Packs the batch's token ids for enc_encode. With token dropout each token is left out
 * with probability cfg.token_dropout (a text keeps at least one): the model then cannot
 * lean on a single word or n-gram, and wordings it has not seen, which share only part
 * of the tokens, land nearer to those it has. */
static void pack_batch(Trainer *t) {
    double p = t->cfg.token_dropout;

    t->off[0] = 0;
    for (int b = 0; b < t->B; b++) {
        size_t i = t->batch[b], len = t->train.off[i + 1] - t->train.off[i], n = 0;
        const int32_t *src = t->train.ids + t->train.off[i];
        int32_t *dst = t->ids + t->off[b];
        for (size_t k = 0; k < len; k++) {
            if (p > 0.0 && rng_uniform(&t->rng) < p) continue;
            dst[n++] = src[k];
        }
        if (n == 0 && len > 0) dst[n++] = src[rng_below(&t->rng, (uint32_t)len)];
        t->off[b + 1] = t->off[b] + n;
    }
}

/* The triplet loss of the batch's output vectors t->out; t->dout receives its gradient. */
static double triplet_step(Trainer *t, TripletMining rule, int *active, int *n_trip) {
    int B = t->B, P = t->enc.proj_dim;

    triplet_distances(t->dist, t->out, B, P);
    *n_trip = triplet_mine(t->trip, t->trip_cap, rule, t->dist, t->labels, B);
    double loss = triplet_loss_forward(active, t->trip, *n_trip, t->out, P, t->cfg.margin);
    memset(t->dout, 0, (size_t)B * P * sizeof *t->dout);
    triplet_loss_backward(t->dout, 1.0f, t->trip, *n_trip, t->out, P, t->cfg.margin);
    return loss;
}

/* Adds the head's reconstruction term on pooled vectors x (B, C) to the loss and its
 * gradient to proj.weight's. */
static double recon_step(Trainer *t, const float *x, float *dproj_w, const float *proj_w) {
    float lambda = t->cfg.recon_weight;
    if (lambda <= 0.0f) return 0.0;

    int C = t->enc.d_model, P = t->enc.proj_dim;
    double r = triplet_recon_forward(t->recon, x, proj_w, t->B, C, P, lambda);
    triplet_recon_backward(dproj_w, t->recon, x, proj_w, t->B, C, P, lambda);
    return r;
}

/* Clips the gradient slice [first, first + n) and steps Adam over the same slice. */
static void optimise(Trainer *t, size_t first, size_t n) {
    double norm = adam_grad_norm(t->grad + first, n);
    float scale = adam_clip_scale(norm, t->cfg.clip);
    double lr = adam_lr(&t->adam, t->step + 1);

    adam_step(t->params + first, t->m + first, t->v + first, t->grad + first, n, lr, scale,
              &t->adam, t->step + 1);
    t->step++;
}

/* The flat offset of proj.weight: the head is the last P C + P floats. */
static size_t head_offset(const Trainer *t) {
    return t->n_params - (size_t)t->enc.proj_dim * ((size_t)t->enc.d_model + 1);
}

static int step_full(Trainer *t, TripletMining rule, double *loss, int *active, int *n_trip) {
    EncWeights w;
    EncGrads g;

    enc_weights_flat(&w, &t->enc, t->params);
    enc_grads_flat(&g, &t->enc, t->grad);
    sample_batch(t);
    pack_batch(t);
    if (enc_encode(t->out, &t->ws, t->ids, t->off, (size_t)t->B, &w, &t->enc, 0)) return -1;

    *loss = triplet_step(t, rule, active, n_trip);
    memset(t->grad, 0, t->n_params * sizeof *t->grad);
    if (enc_backward(&g, &t->bw, t->dout, t->out, &t->ws, &w, &t->enc, 0)) return -1;
    *loss += recon_step(t, t->ws.pooled, g.proj_w, w.proj_w);
    optimise(t, 0, t->n_params);
    return 0;
}

static int step_head(Trainer *t, TripletMining rule, double *loss, int *active, int *n_trip) {
    int B, C = t->enc.d_model, P = t->enc.proj_dim;
    size_t h = head_offset(t), nh = (size_t)P * C + (size_t)P;
    const float *w = t->params + h, *b = w + (size_t)P * C;

    sample_batch(t);
    B = t->B;
    for (int i = 0; i < B; i++) {
        memcpy(t->hx + (size_t)i * C, t->pooled_train + t->batch[i] * (size_t)C,
               (size_t)C * sizeof *t->hx);
    }
    triplet_head_forward(t->out, t->hz, t->hx, w, b, B, C, P);

    *loss = triplet_step(t, rule, active, n_trip);
    memset(t->grad + h, 0, nh * sizeof *t->grad);
    triplet_head_backward(t->grad + h, t->grad + h + (size_t)P * C, t->hdz, t->dout, t->out, t->hz,
                          t->hx, w, B, C, P);
    *loss += recon_step(t, t->hx, t->grad + h, w);
    optimise(t, h, nh);
    return 0;
}

/* --- evaluation during and after a run --- */

/* Gathers rows idx[0..n) (all rows when idx is NULL) of a (rows, width) into out. */
static void gather(float *out, const float *a, const size_t *idx, size_t n, size_t width) {
    for (size_t i = 0; i < n; i++) {
        memcpy(out + i * width, a + (idx ? idx[i] : i) * width, width * sizeof *out);
    }
}

/* Output vectors of texts idx[0..n) of tk (or of the head on their cached pooled vectors). */
static int vectors(float *out, const Trainer *t, const float *params, const Tokens *tk,
                   const float *cache, const size_t *idx, size_t n) {
    int C = t->enc.d_model, P = t->enc.proj_dim;
    if (!cache) return encode_tokens(out, NULL, tk, idx, n, params, &t->enc, t->cfg.max_tokens);

    float *x = malloc(n * (size_t)C * sizeof *x), *z = malloc(n * (size_t)P * sizeof *z);
    const float *w = params + head_offset(t);
    if (x && z) {
        gather(x, cache, idx, n, (size_t)C);
        triplet_head_forward(out, z, x, w, w + (size_t)P * C, (int)n, C, P);
    }
    free(z);
    free(x);
    return x && z ? 0 : -1;
}

static void labels_of(int32_t *out, const int32_t *labels, const size_t *idx, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = labels[idx ? idx[i] : i];
}

/* Held-out texts against training texts, both subsets (or all of them with all). The
 * cached pooled vectors serve only for the weights being trained in head-only mode. */
static int evaluate(Trainer *t, const float *params, bool all, bool use_cache, TrainScores *s) {
    const size_t *qi = all ? NULL : t->eval_q, *gi = all ? NULL : t->eval_g;
    size_t nq = all ? t->held.n : t->n_eval_q, ng = all ? t->train.n : t->n_eval_g;
    size_t P = (size_t)t->enc.proj_dim;
    float *qv = malloc((nq ? nq : 1) * P * sizeof *qv),
          *gv = malloc((ng ? ng : 1) * P * sizeof *gv);
    int32_t *ql = malloc((nq ? nq : 1) * sizeof *ql), *gl = malloc((ng ? ng : 1) * sizeof *gl);
    bool cache = use_cache && t->cfg.head_only;
    int rc = -1;

    if (qv && gv && ql && gl &&
        vectors(qv, t, params, &t->held, cache ? t->pooled_held : NULL, qi, nq) == 0 &&
        vectors(gv, t, params, &t->train, cache ? t->pooled_train : NULL, gi, ng) == 0) {
        labels_of(ql, t->held_labels, qi, nq);
        labels_of(gl, t->train_labels, gi, ng);
        rc = train_score(s, qv, ql, nq, gv, gl, ng, (int)P, t->cfg.knn_k, t->n_labels);
    }
    free(qv);
    free(gv);
    free(ql);
    free(gl);
    return rc;
}

/* n distinct indices of [0, total) in increasing order, or NULL for all of them. */
static int subset(size_t **out, size_t *n, size_t total, size_t want, Rng *rng) {
    *out = NULL, *n = total;
    if (want == 0 || want >= total) return 0;

    size_t *all = malloc(total * sizeof *all);
    if (!all) return -1;
    for (size_t i = 0; i < total; i++) all[i] = i;
    for (size_t i = 0; i < want; i++) {
        size_t j = i + rng_below(rng, (uint32_t)(total - i)), tmp = all[i];
        all[i] = all[j], all[j] = tmp;
    }
    *out = all, *n = want;
    return 0;
}

/* --- model files --- */

/* The pointer of tensor i (enc_tensor_info order) of w. */
static const float *tensor_ptr(const EncWeights *w, size_t i, size_t n) {
    if (i == 0) return w->wte;
    if (i == 1) return w->wpe;
    if (i == n - 2) return w->proj_w;
    if (i == n - 1) return w->proj_b;

    const EncLayerWeights *lw = &w->layer[(i - 2) / 12];
    const float *t[12] = {lw->qkv_w, lw->qkv_b, lw->att_w, lw->att_b, lw->fc1_w, lw->fc1_b,
                          lw->fc2_w, lw->fc2_b, lw->ln1_w, lw->ln1_b, lw->ln2_w, lw->ln2_b};
    return t[(i - 2) % 12];
}

int train_load_model(float **params, EncConfig *enc, TokConfig *tok, char model_id[17],
                     const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long len = -1;
    char why[512];
    StModel m;

    *params = NULL;
    if (f && fseek(f, 0, SEEK_END) == 0) len = ftell(f);
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0) buf = malloc(len ? (size_t)len : 1);
    if (!f || !buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        snprintf(err, errlen, "cannot read the model %s: %s", path,
                 f && !buf && len >= 0 ? "out of memory" : strerror(errno));
        goto fail;
    }
    if (st_load(&m, buf, (size_t)len, why, sizeof why)) {
        snprintf(err, errlen, "the model %s is refused: %s", path, why);
        goto fail;
    }

    size_t n = enc_tensor_count(&m.enc);
    if (!(*params = malloc(enc_param_count(&m.enc) * sizeof **params))) {
        snprintf(err, errlen, "out of memory for the model %s", path);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        EncTensor ti;
        enc_tensor_info(&ti, &m.enc, i);
        memcpy(*params + ti.offset, tensor_ptr(&m.w, i, n), ti.numel * sizeof(float));
    }
    *enc = m.enc, *tok = m.tok;
    memcpy(model_id, m.model_id, 17);
    free(buf);
    fclose(f);
    return 0;

fail:
    free(buf);
    if (f) fclose(f);
    return -1;
}

/* --- setting a run up --- */

/* P labels of K examples: fewer labels than asked makes K grow, so B stays. */
static int plan_batch(Trainer *t, char *err, size_t errlen) {
    const TrainConfig *c = &t->cfg;

    if (t->n_active < 2) {
        snprintf(err, errlen,
                 "the training data need at least two labels with two examples "
                 "each (found %zu)",
                 t->n_active);
        return -1;
    }
    t->P = c->labels_per_batch < (int)t->n_active ? c->labels_per_batch : (int)t->n_active;
    t->K = c->per_label;
    if (t->P < c->labels_per_batch) {
        int k = c->labels_per_batch * c->per_label / t->P;
        t->K = k > t->K ? k : t->K;
    }
    t->B = t->P * t->K;
    t->trip_cap = t->B * (t->K > 2 ? t->K - 1 : 1);
    return 0;
}

static int cmp_size_desc(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x < y) - (x > y);
}

/* The packed tokens and chunks of the worst batch: its B longest texts. */
static int worst_batch(const Trainer *t, size_t *T, size_t *S) {
    size_t n = t->train.n, *len = malloc(n * sizeof *len);
    if (!len) return -1;

    for (size_t i = 0; i < n; i++) len[i] = t->train.off[i + 1] - t->train.off[i];
    qsort(len, n, sizeof *len, cmp_size_desc);
    *T = 0, *S = 0;
    for (size_t i = 0; i < (size_t)t->B && i < n; i++) {
        *T += enc_packed_len(len[i], &t->enc);
        *S += enc_chunk_count(len[i], &t->enc);
    }
    free(len);
    return 0;
}

static int alloc_full(Trainer *t) {
    size_t T, S, B = (size_t)t->B;
    if (worst_batch(t, &T, &S)) return -1;
    T = T ? T : 1, S = S ? S : 1;

    size_t fwd = enc_work_size(&t->enc, T, S, B, ENC_TRAIN);
    size_t bwd = enc_backward_work_size(&t->enc, T, B);
    t->arena = fwd == SIZE_MAX ? NULL : malloc(fwd);
    t->barena = bwd == SIZE_MAX ? NULL : malloc(bwd);
    t->ids = malloc(B * (t->cfg.max_tokens ? t->cfg.max_tokens : 1) * sizeof *t->ids);
    if (!t->arena || !t->barena || !t->ids) return -1;
    if (enc_work_init(&t->ws, t->arena, fwd, &t->enc, T, S, B, ENC_TRAIN)) return -1;
    return enc_backward_work_init(&t->bw, t->barena, bwd, &t->enc, T, B);
}

/* Head only: the pooled vectors of every text, from the (frozen) encoder, once. */
static int alloc_head(Trainer *t) {
    size_t C = (size_t)t->enc.d_model, P = (size_t)t->enc.proj_dim, B = (size_t)t->B;
    size_t n = t->train.n > t->held.n ? t->train.n : t->held.n;
    float *vecs = malloc((n ? n : 1) * P * sizeof *vecs);

    t->pooled_train = malloc(t->train.n * C * sizeof(float));
    t->pooled_held = malloc((t->held.n ? t->held.n : 1) * C * sizeof(float));
    t->hx = malloc(B * C * sizeof(float));
    t->hz = malloc(B * P * sizeof(float));
    t->hdz = malloc(B * P * sizeof(float));
    int rc = vecs && t->pooled_train && t->pooled_held && t->hx && t->hz && t->hdz ? 0 : -1;
    if (rc == 0) {
        rc = encode_tokens(vecs, t->pooled_train, &t->train, NULL, t->train.n, t->params, &t->enc,
                           t->cfg.max_tokens);
    }
    if (rc == 0 && t->held.n) {
        rc = encode_tokens(vecs, t->pooled_held, &t->held, NULL, t->held.n, t->params, &t->enc,
                           t->cfg.max_tokens);
    }
    free(vecs);
    return rc;
}

static int alloc_batch(Trainer *t) {
    size_t B = (size_t)t->B, P = (size_t)t->enc.proj_dim, C = (size_t)t->enc.d_model;
    t->off = malloc((B + 1) * sizeof *t->off);
    t->batch = malloc(B * sizeof *t->batch);
    t->labels = malloc(B * sizeof *t->labels);
    t->out = malloc(B * P * sizeof *t->out);
    t->dout = malloc(B * P * sizeof *t->dout);
    t->dist = malloc(B * B * sizeof *t->dist);
    t->recon = malloc(B * (C + P) * sizeof *t->recon);
    t->trip = malloc((size_t)t->trip_cap * sizeof *t->trip);
    return t->off && t->batch && t->labels && t->out && t->dout && t->dist && t->recon && t->trip
               ? 0
               : -1;
}

static int alloc_params(Trainer *t) {
    size_t n = t->n_params;
    if (!t->params) t->params = malloc(n * sizeof *t->params);
    t->grad = calloc(n, sizeof *t->grad);
    t->m = calloc(n, sizeof *t->m);
    t->v = calloc(n, sizeof *t->v);
    return t->params && t->grad && t->m && t->v ? 0 : -1;
}

/* Warm-up then cosine decay over the whole run. */
static void plan_schedule(Trainer *t) {
    long spe = (long)((t->train.n + (size_t)t->B - 1) / (size_t)t->B);
    long total = (long)t->cfg.epochs * (spe ? spe : 1);

    t->adam = adam_defaults();
    t->adam.lr = t->cfg.lr, t->adam.lr_min = t->cfg.lr_min;
    t->adam.warmup = (long)(t->cfg.warmup * (double)total + 0.5);
    t->adam.decay_steps = total - t->adam.warmup;
    t->adam.decay = ADAM_COSINE;
}

static int alloc_history(Trainer *t) {
    long spe = (long)((t->train.n + (size_t)t->B - 1) / (size_t)t->B);
    size_t epochs = (size_t)t->cfg.epochs + 1;

    t->hist.loss = malloc((size_t)(t->cfg.epochs * spe + 1) * sizeof *t->hist.loss);
    t->hist.knn = malloc(epochs * sizeof *t->hist.knn);
    t->hist.centroid = malloc(epochs * sizeof *t->hist.centroid);
    if (!t->hist.loss || !t->hist.knn || !t->hist.centroid) return -1;
    for (size_t e = 0; e < epochs; e++) t->hist.knn[e] = t->hist.centroid[e] = -1.0;
    return 0;
}

/* Weights: the base model's (fine-tuning), or seeded random ones. */
static int init_weights(Trainer *t, char *err, size_t errlen) {
    const TrainConfig *c = &t->cfg;

    if (c->init_path) {
        if (train_load_model(&t->params, &t->enc, &t->tok, t->base_id, c->init_path, err, errlen))
            return -1;
    } else {
        char why[160];
        t->enc = c->enc, t->tok = c->tok;
        t->tok.vocab_size = (uint32_t)t->enc.vocab_size;
        if (enc_check_config(&t->enc, why, sizeof why) ||
            tok_check_config(&t->tok, why, sizeof why)) {
            snprintf(err, errlen, "%s", why);
            return -1;
        }
        t->params = malloc(enc_param_count(&t->enc) * sizeof *t->params);
        if (!t->params) return snprintf(err, errlen, "out of memory"), -1;
        enc_init_random(t->params, &t->enc, c->seed, 0);
    }
    t->n_params = enc_param_count(&t->enc);
    return 0;
}

static int check_config(const TrainConfig *c, char *err, size_t errlen) {
    const char *why = c->epochs < 1                    ? "epochs must be at least 1"
                      : c->labels_per_batch < 2        ? "labels per batch must be at least 2"
                      : c->per_label < 2               ? "examples per label must be at least 2"
                      : !(c->lr > 0.0)                 ? "the learning rate must be positive"
                      : c->lr_min < 0.0                ? "the final learning rate must be >= 0"
                      : c->warmup < 0 || c->warmup > 1 ? "warm-up is a fraction in [0, 1]"
                      : !(c->margin > 0.0f)            ? "the margin must be positive"
                      : c->recon_weight < 0.0f         ? "the reconstruction weight must be >= 0"
                      : c->token_dropout < 0 || c->token_dropout >= 0.9
                          ? "token dropout is a probability below 0.9"
                      : c->max_tokens < 1 ? "max tokens must be at least 1"
                      : c->knn_k < 1      ? "k must be at least 1"
                                          : NULL;
    if (why) snprintf(err, errlen, "%s", why);
    return why ? -1 : 0;
}

int train_new(Trainer **out, const TrainConfig *cfg, const TrainData *train,
              const TrainData *heldout, size_t n_labels, char *err, size_t errlen) {
    Trainer *t = calloc(1, sizeof *t);
    Rng eval_rng;

    *out = NULL;
    if (!t) return snprintf(err, errlen, "out of memory"), -1;
    t->cfg = *cfg, t->n_labels = n_labels;
    t->train_labels = train->labels, t->held_labels = heldout ? heldout->labels : NULL;
    rng_seed(&t->rng, cfg->seed);
    rng_seed(&eval_rng, cfg->seed ^ 0x6576616cull); /* "eval": apart from the batches */
    if (check_config(cfg, err, errlen) || init_weights(t, err, errlen)) goto fail;

    if (tokens_of_data(&t->train, train, &t->tok, cfg->max_tokens) ||
        (heldout && tokens_of_data(&t->held, heldout, &t->tok, cfg->max_tokens)) || plan_labels(t))
        goto oom;
    if (plan_batch(t, err, errlen)) goto fail;
    if (alloc_params(t) || alloc_batch(t) || alloc_history(t) ||
        (cfg->head_only ? alloc_head(t) : alloc_full(t)))
        goto oom;
    if (subset(&t->eval_q, &t->n_eval_q, t->held.n, cfg->eval_queries, &eval_rng) ||
        subset(&t->eval_g, &t->n_eval_g, t->train.n, cfg->eval_gallery, &eval_rng))
        goto oom;
    plan_schedule(t);
    *out = t;
    return 0;

oom:
    snprintf(err, errlen, "out of memory preparing the run (%zu training texts)", train->n);
fail:
    train_free(t);
    return -1;
}

void train_free(Trainer *t) {
    if (!t) return;
    free(t->params), free(t->grad), free(t->m), free(t->v);
    tokens_free(&t->train), tokens_free(&t->held);
    free(t->eval_q), free(t->eval_g);
    free(t->members), free(t->label_off), free(t->cursor), free(t->active_labels);
    free(t->ids), free(t->off), free(t->batch), free(t->labels);
    free(t->out), free(t->dout), free(t->dist), free(t->recon), free(t->trip);
    free(t->arena), free(t->barena);
    free(t->pooled_train), free(t->pooled_held), free(t->hx), free(t->hz), free(t->hdz);
    free(t->hist.loss), free(t->hist.knn), free(t->hist.centroid);
    free(t);
}

/* --- running --- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int epoch_scores(Trainer *t, int epoch, TrainProgress *p, char *err, size_t errlen) {
    TrainScores s;

    if (!t->held.n) return 0;
    if (evaluate(t, t->params, false, true, &s)) {
        snprintf(err, errlen, "out of memory evaluating epoch %d", epoch);
        return -1;
    }
    t->hist.knn[epoch] = p->heldout_knn = s.knn;
    t->hist.centroid[epoch] = p->heldout_centroid = s.centroid;
    return 0;
}

/* One epoch; p carries the progress shown to the caller. */
static int run_epoch(Trainer *t, int epoch, long spe, TrainProgress *p, TrainProgressFn fn,
                     void *ctx, char *err, size_t errlen) {
    TripletMining rule = t->cfg.mining == TRIPLET_HARD && epoch <= t->cfg.semihard_epochs
                             ? TRIPLET_SEMIHARD
                             : t->cfg.mining;
    double t0 = now_s(), loss_sum = 0.0, on = 0.0, mined = 0.0;

    p->epoch = epoch, p->epoch_end = false, p->heldout_knn = p->heldout_centroid = -1.0;
    for (long s = 0; s < spe; s++) {
        double loss;
        int active, n_trip;
        int rc = t->cfg.head_only ? step_head(t, rule, &loss, &active, &n_trip)
                                  : step_full(t, rule, &loss, &active, &n_trip);
        if (rc) return snprintf(err, errlen, "the encoder refused a batch (a bug)"), -1;

        t->hist.loss[t->hist.n++] = (float)loss;
        loss_sum += loss, on += active, mined += n_trip;
        p->step = t->step, p->step_in_epoch = s + 1, p->loss = loss_sum / (double)(s + 1);
        p->active = mined > 0 ? on / mined : 0.0;
        p->examples_per_s = (double)(s + 1) * t->B / (now_s() - t0 + 1e-9);
        p->lr = adam_lr(&t->adam, t->step);
        if (fn && fn(p, ctx)) return snprintf(err, errlen, "interrupted"), -1;
    }
    if (epoch_scores(t, epoch, p, err, errlen)) return -1;
    p->epoch_end = true;
    if (fn && fn(p, ctx)) return snprintf(err, errlen, "interrupted"), -1;
    return 0;
}

int train_step(Trainer *t, double *loss, char *err, size_t errlen) {
    int active, n_trip;
    int rc = t->cfg.head_only ? step_head(t, t->cfg.mining, loss, &active, &n_trip)
                              : step_full(t, t->cfg.mining, loss, &active, &n_trip);
    if (rc) snprintf(err, errlen, "the encoder refused a batch (a bug)");
    return rc;
}

int train_batch_size(const Trainer *t) {
    return t->B;
}

int train_run(Trainer *t, TrainProgressFn fn, void *ctx, char *err, size_t errlen) {
    long spe = (long)((t->train.n + (size_t)t->B - 1) / (size_t)t->B);
    TrainProgress p = {
        .epochs = t->cfg.epochs, .steps_per_epoch = spe, .steps = spe * t->cfg.epochs};

    /* Epoch 0: the starting weights, for the learning curve. */
    if (epoch_scores(t, 0, &p, err, errlen)) return -1;
    for (int e = 1; e <= t->cfg.epochs; e++) {
        if (run_epoch(t, e, spe, &p, fn, ctx, err, errlen)) return -1;
    }
    return 0;
}

int train_final_scores(Trainer *t, TrainScores *trained, TrainScores *untrained, char *err,
                       size_t errlen) {
    float *random = malloc(t->n_params * sizeof *random);
    int rc = -1;

    if (random) {
        enc_init_random(random, &t->enc, t->cfg.seed, 0);
        rc = evaluate(t, t->params, true, true, trained);
        if (rc == 0 && untrained) rc = evaluate(t, random, true, false, untrained);
    }
    free(random);
    if (rc) snprintf(err, errlen, "out of memory evaluating the held-out set");
    return rc;
}

const float *train_params(const Trainer *t) {
    return t->params;
}

const EncConfig *train_enc_config(const Trainer *t) {
    return &t->enc;
}

const TokConfig *train_tok_config(const Trainer *t) {
    return &t->tok;
}

/* --- saving --- */

/* Adds the run's record to the metadata of a header made by st_header. */
static int add_metadata(json_t *meta, const void *ctx) {
    const Trainer *t = ctx;
    const TrainLabels *labels = t->save_labels;
    json_t *names = json_array();
    char buf[64];
    int bad = !names;

    for (size_t i = 0; names && i < labels->n; i++)
        bad |= json_array_append_new(names, json_string(labels->names[i]));
    char *list = bad ? NULL : json_dumps(names, JSON_COMPACT);
    json_decref(names);
    if (!list) return -1;

    bad = json_object_set_new(meta, "train_labels", json_string(list));
    free(list);
    snprintf(buf, sizeof buf, "%zu", t->train.n);
    bad |= json_object_set_new(meta, "train_examples", json_string(buf));
    snprintf(buf, sizeof buf, "%d", t->cfg.epochs);
    bad |= json_object_set_new(meta, "train_epochs", json_string(buf));
    snprintf(buf, sizeof buf, "%" PRIu64, t->cfg.seed);
    bad |= json_object_set_new(meta, "train_seed", json_string(buf));
    bad |= json_object_set_new(meta, "train_mode", json_string(t->cfg.head_only ? "head" : "full"));
    bad |= json_object_set_new(meta, "trained_by", json_string("promptctl train"));
    if (t->base_id[0]) bad |= json_object_set_new(meta, "base_model_id", json_string(t->base_id));
    return bad ? -1 : 0;
}

/* Adds the key-value pairs of train_write_model's caller. */
typedef struct {
    const char *const *kv;
    size_t n;
} MetaPairs;

static int add_pairs(json_t *meta, const void *ctx) {
    const MetaPairs *m = ctx;
    int bad = 0;
    for (size_t i = 0; i < m->n; i++)
        bad |= json_object_set_new(meta, m->kv[2 * i], json_string(m->kv[2 * i + 1]));
    return bad ? -1 : 0;
}

/* The whole file in memory: st_header's header with metadata added by add(meta, ctx),
 * then the weights. */
static int build_file(char **out, size_t *len, const EncConfig *enc, const TokConfig *tok,
                      const float *params, int (*add)(json_t *, const void *), const void *ctx,
                      char *err, size_t errlen) {
    char *head, *json = NULL;
    size_t head_len, n = enc_param_count(enc) * sizeof(float);

    if (st_header(&head, &head_len, enc, tok, params, err, errlen)) return -1;
    json_t *root = json_loadb(head + 8, head_len - 8, 0, NULL);
    free(head);
    if (root && add(json_object_get(root, "__metadata__"), ctx) == 0)
        json = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    if (!json) return snprintf(err, errlen, "out of memory building the model header"), -1;

    /* As st_header: the JSON padded with spaces to a multiple of 8 bytes. */
    size_t jlen = strlen(json), padded = (jlen + 7) & ~(size_t)7;
    *len = 8 + padded + n;
    if (!(*out = malloc(*len))) {
        free(json);
        return snprintf(err, errlen, "out of memory building the model file"), -1;
    }
    for (int k = 0; k < 8; k++) (*out)[k] = (char)(((uint64_t)padded >> (8 * k)) & 0xFF);
    memcpy(*out + 8, json, jlen);
    memset(*out + 8 + jlen, ' ', padded - jlen);
    memcpy(*out + 8 + padded, params, n);
    free(json);
    return 0;
}

/* fsync of the directory holding path, so that a rename into it survives a crash. */
static int sync_parent(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* path.tmp, fsync, rename, fsync of the directory: a crash leaves the old file or the new
 * one, never a torn one (promptd serves what it finds there at the next start). */
static int write_atomically(const char *path, const void *data, size_t len, char *err,
                            size_t errlen) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno)), -1;

    int ok = fwrite(data, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0 || sync_parent(path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

/* Validates the built file as the daemon's loader will, then writes it. */
static int check_and_write(const char *path, char *file, size_t len, char model_id[17], char *err,
                           size_t errlen) {
    char why[512];
    StModel m;
    int rc = st_load(&m, file, len, why, sizeof why);
    if (rc) snprintf(err, errlen, "the new model fails validation: %s (a bug)", why);
    if (rc == 0) memcpy(model_id, m.model_id, 17);
    if (rc == 0) rc = write_atomically(path, file, len, err, errlen);
    free(file);
    return rc;
}

int train_save(Trainer *t, const char *path, const TrainLabels *labels, char model_id[17],
               char *err, size_t errlen) {
    char *file;
    size_t len;

    t->save_labels = labels;
    if (build_file(&file, &len, &t->enc, &t->tok, t->params, add_metadata, t, err, errlen))
        return -1;
    return check_and_write(path, file, len, model_id, err, errlen);
}

int train_write_model(const char *path, const EncConfig *enc, const TokConfig *tok,
                      const float *params, const char *const *meta, size_t nmeta, char model_id[17],
                      char *err, size_t errlen) {
    char *file;
    size_t len;
    MetaPairs pairs = {meta, nmeta};

    if (build_file(&file, &len, enc, tok, params, add_pairs, &pairs, err, errlen)) return -1;
    return check_and_write(path, file, len, model_id, err, errlen);
}

int train_model_metadata(const char *path, const char *key, char *out, size_t outlen, char *err,
                         size_t errlen) {
    unsigned char lenbuf[8];
    uint64_t hlen = 0;
    char *head = NULL;
    int rc = -1;
    FILE *f = fopen(path, "rb");

    if (!f || fread(lenbuf, 1, 8, f) != 8) {
        snprintf(err, errlen, "cannot read the model %s: %s", path,
                 f ? "shorter than its header" : strerror(errno));
        goto done;
    }
    for (int k = 0; k < 8; k++) hlen |= (uint64_t)lenbuf[k] << (8 * k);
    if (hlen == 0 || hlen > ST_MAX_HEADER || !(head = malloc(hlen)) ||
        fread(head, 1, hlen, f) != hlen) {
        bool sized = hlen > 0 && hlen <= ST_MAX_HEADER;
        snprintf(err, errlen, "the model %s is refused: its header is %s", path,
                 !sized ? "of a wrong size"
                 : head ? "truncated"
                        : "too large for memory");
        goto done;
    }
    json_t *root = json_loadb(head, hlen, 0, NULL);
    const json_t *v = json_object_get(json_object_get(root, "__metadata__"), key);
    if (!root)
        snprintf(err, errlen, "the model %s is refused: its header is not JSON", path);
    else
        rc = json_is_string(v) ? 1 : 0;
    if (rc == 1) snprintf(out, outlen, "%s", json_string_value(v));
    json_decref(root);

done:
    free(head);
    if (f) fclose(f);
    return rc;
}

/* --- learning curve --- */

#define SVG_W     720
#define SVG_H     400
#define SVG_LEFT  64
#define SVG_RIGHT 64
#define SVG_TOP   40
#define SVG_BOT   56

typedef struct {
    FILE *f;
    double x0, x1, y0, y1; /* data ranges of the x and left y axes */
} Plot;

static double px(const Plot *p, double x) {
    return SVG_LEFT + (x - p->x0) / (p->x1 - p->x0) * (SVG_W - SVG_LEFT - SVG_RIGHT);
}

/* v in [lo, hi] to a pixel row. */
static double py(double v, double lo, double hi) {
    return SVG_TOP + (1.0 - (v - lo) / (hi - lo)) * (SVG_H - SVG_TOP - SVG_BOT);
}

/* The loss averaged over a window of steps, so that batch-to-batch noise does not hide
 * the trend; at most about 600 points. */
static void svg_loss(const Plot *p, const History *h) {
    long win = h->n / 100 > 1 ? h->n / 100 : 1, every = h->n / 600 > 1 ? h->n / 600 : 1;
    double sum = 0.0;

    fprintf(p->f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"");
    for (long i = 0; i < h->n; i++) {
        sum += h->loss[i] - (i >= win ? h->loss[i - win] : 0.0f);
        long n = i + 1 < win ? i + 1 : win;
        if (i % every == 0 || i == h->n - 1)
            fprintf(p->f, "%.1f,%.1f ", px(p, (double)i + 1), py(sum / (double)n, p->y0, p->y1));
    }
    fprintf(p->f, "\"/>\n");
}

/* One accuracy series (per epoch, right axis 0..100%). */
static void svg_accuracy(const Plot *p, const double *acc, int epochs, long spe,
                         const char *colour) {
    fprintf(p->f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", colour);
    for (int e = 0; e <= epochs; e++) {
        if (acc[e] >= 0.0)
            fprintf(p->f, "%.1f,%.1f ", px(p, (double)e * spe), py(acc[e], 0.0, 1.0));
    }
    fprintf(p->f, "\"/>\n");
    for (int e = 0; e <= epochs; e++) {
        if (acc[e] >= 0.0) {
            fprintf(p->f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                    px(p, (double)e * spe), py(acc[e], 0.0, 1.0), colour);
        }
    }
}

static void svg_axes(const Plot *p, bool with_acc) {
    FILE *f = p->f;
    int x_end = SVG_W - SVG_RIGHT, y_end = SVG_H - SVG_BOT;

    fprintf(f,
            "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n",
            SVG_LEFT, SVG_TOP, x_end - SVG_LEFT, y_end - SVG_TOP);
    for (int k = 0; k <= 4; k++) {
        double x = p->x0 + (p->x1 - p->x0) * k / 4, y = p->y0 + (p->y1 - p->y0) * k / 4;
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", px(p, x),
                y_end + 18, x);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", SVG_LEFT - 6,
                py(y, p->y0, p->y1) + 4, y);
        if (with_acc)
            fprintf(f, "<text x=\"%d\" y=\"%.1f\">%d%%</text>\n", x_end + 6, py(k / 4.0, 0, 1) + 4,
                    k * 25);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n",
            (SVG_LEFT + x_end) / 2, SVG_H - 14);
    fprintf(f, "<text x=\"%d\" y=\"24\" fill=\"#1f77b4\">triplet loss (left)</text>\n", SVG_LEFT);
    if (with_acc) {
        fprintf(f, "<text x=\"%d\" y=\"24\" fill=\"#d62728\">held-out kNN accuracy</text>\n",
                SVG_LEFT + 180);
        fprintf(f, "<text x=\"%d\" y=\"24\" fill=\"#2ca02c\">nearest centroid (right)</text>\n",
                SVG_LEFT + 360);
    }
}

int train_write_svg(const Trainer *t, const char *path, char *err, size_t errlen) {
    const History *h = &t->hist;
    long spe = (long)((t->train.n + (size_t)t->B - 1) / (size_t)t->B);
    Plot p = {fopen(path, "w"), 0.0, h->n > 0 ? (double)h->n : 1.0, 0.0, 1e-6};

    if (!p.f) return snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno)), -1;
    for (long i = 0; i < h->n; i++) p.y1 = h->loss[i] > p.y1 ? h->loss[i] : p.y1;
    p.y1 *= 1.05;

    bool acc = t->held.n > 0;
    fprintf(p.f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, SVG_H);
    svg_axes(&p, acc);
    svg_loss(&p, h);
    if (acc) {
        svg_accuracy(&p, h->knn, t->cfg.epochs, spe, "#d62728");
        svg_accuracy(&p, h->centroid, t->cfg.epochs, spe, "#2ca02c");
    }
    fprintf(p.f, "</svg>\n");
    if (fclose(p.f) != 0)
        return snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno)), -1;
    return 0;
}
