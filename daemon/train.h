/*
 * The offline trainer of the semantic encoder: triplet loss over P labels x K examples
 * batches, Adam with warm-up and cosine decay, held-out evaluation, and the model file and
 * learning curve it leaves behind. `promptctl train` and `promptctl evaluate` are its user
 * interface (daemon/ctl_train.c); nothing here prints.
 *
 * Data are JSON lines {"text": "...", "label": "..."}; texts are raw and are normalised
 * (kernels/normalize.h, with masking) and tokenised with the model's tokeniser, as promptd
 * does before encoding. A run is reproducible: the same data, configuration and seed give
 * the same weights, bit for bit, on the same machine (one OpenBLAS thread).
 *
 * Single-threaded; the caller sets OpenBLAS's thread count (model_set_threads).
 */
#ifndef PD_TRAIN_H
#define PD_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../kernels/encoder.h"
#include "../kernels/tokenize.h"
#include "../kernels/triplet.h"

/* --- data --- */

typedef struct TrainData TrainData;

/* Labels shared by a training set and its held-out set, so that label ids agree. */
typedef struct TrainLabels TrainLabels;

TrainLabels *train_labels_new(void);
void train_labels_free(TrainLabels *l);
size_t train_labels_count(const TrainLabels *l);
const char *train_labels_name(const TrainLabels *l, size_t id);

/* The normalised form of text[0..len) as promptd serves it (masking on), malloc'ed, its
 * length in *out_len when not NULL; NULL when out of memory. */
char *train_normalise(const char *text, size_t len, size_t *out_len);

/* Reads JSON lines from path: every non-blank line an object with string "text" and
 * "label" (other fields are ignored). New labels are added to labels. Texts are kept
 * normalised. Returns 0, or -1 with err naming the file, line and problem (an empty
 * file is an error too). */
int train_data_load(TrainData **out, const char *path, TrainLabels *labels, char *err,
                    size_t errlen);
void train_data_free(TrainData *d);
size_t train_data_count(const TrainData *d);
const char *train_data_text(const TrainData *d, size_t i); /* normalised */
int32_t train_data_label(const TrainData *d, size_t i);

/* --- configuration --- */

typedef struct {
    EncConfig enc;         /* architecture when training from scratch (ignored with init_path) */
    TokConfig tok;         /* its tokeniser; vocab_size follows enc */
    const char *init_path; /* fine-tune this model file; NULL: from scratch */
    uint64_t seed;         /* weights (from scratch), batches */

    int epochs;
    int labels_per_batch; /* P; fewer when the data has fewer labels, K then grows */
    int per_label;        /* K >= 2 */
    double lr, lr_min;    /* peak and final learning rates (cosine decay) */
    double warmup;        /* fraction of the steps spent warming up */
    float clip;           /* global gradient-norm bound, 1.0 */
    float margin;         /* triplet margin, 1.0 */
    TripletMining mining;
    int semihard_epochs;  /* with TRIPLET_HARD: first epochs mined semi-hard */
    float recon_weight;   /* weight of the head's reconstruction term; 0: off */
    double token_dropout; /* probability of leaving a token out of a training text */
    bool head_only;       /* train proj.weight and proj.bias alone, from cached pooled vectors */
    size_t max_tokens;    /* tokens read per text, as encoder.max_tokens */

    int knn_k;           /* neighbours of the kNN vote, 10 */
    size_t eval_queries; /* held-out texts scored per epoch (0: all) */
    size_t eval_gallery; /* training texts they are compared with per epoch (0: all) */
} TrainConfig;

/* Defaults: d 128, 2 layers, 8 heads, F 512, L 64, stride 48, P 64, GELU, vocab 16384;
 * 20 epochs of 16 x 4 batches, lr 1e-3 to 1e-5, 5% warm-up, clip 1, margin 1, batch-hard
 * after 2 semi-hard epochs, no reconstruction, 256 tokens, k 10. */
TrainConfig train_default_config(void);

/* --- evaluation --- */

typedef struct {
    double knn;      /* accuracy of the k-nearest-neighbour vote (cosine) */
    double centroid; /* accuracy of the nearest label centroid (cosine) */
    double margin;   /* mean over queries of mean same-label minus mean other-label cosine */
    size_t queries;
} TrainScores;

/* Scores query vectors (nq, dim) against gallery vectors (ng, dim), all unit length,
 * with their labels. With same set (gallery == queries), each query leaves itself out.
 * Returns 0, or -1 (out of memory). */
int train_score(TrainScores *s, const float *queries, const int32_t *qlabels, size_t nq,
                const float *gallery, const int32_t *glabels, size_t ng, int dim, int k,
                size_t n_labels);

/* --- a run --- */

typedef struct {
    int epoch, epochs; /* epoch is 1-based */
    long step, steps;  /* steps done, steps in all */
    long step_in_epoch, steps_per_epoch;
    double loss;           /* mean loss over the epoch so far */
    double active;         /* fraction of mined triplets with a positive loss */
    double examples_per_s; /* forward and backward, this epoch */
    double lr;
    double heldout_knn; /* after an epoch with held-out data; else negative */
    double heldout_centroid;
    bool epoch_end;
} TrainProgress;

/* Called after every step and at the end of every epoch; a non-zero return stops the run
 * (which then fails with "interrupted"). */
typedef int (*TrainProgressFn)(const TrainProgress *p, void *ctx);

typedef struct Trainer Trainer;

/* Prepares a run: loads init_path (or draws seeded weights), tokenises the data and sizes
 * every buffer. heldout may be NULL. Returns 0, or -1 with err. */
int train_new(Trainer **out, const TrainConfig *cfg, const TrainData *train,
              const TrainData *heldout, size_t n_labels, char *err, size_t errlen);
void train_free(Trainer *t);

/* Runs every epoch. Returns 0, or -1 with err. */
int train_run(Trainer *t, TrainProgressFn fn, void *ctx, char *err, size_t errlen);

/* One step outside the epoch loop (benchmarks): a batch drawn as train_run draws them,
 * mined with cfg.mining. Returns 0 or -1 with err. */
int train_step(Trainer *t, double *loss, char *err, size_t errlen);

/* Examples per step: P x K. */
int train_batch_size(const Trainer *t);

/* Scores of the current weights and of the untrained weights (seeded random, same
 * architecture) on the held-out set against the training set. Returns 0 or -1. */
int train_final_scores(Trainer *t, TrainScores *trained, TrainScores *untrained, char *err,
                       size_t errlen);

/* Writes the model to path (through path.tmp and a rename), with metadata recording the
 * run (labels, data, seed, base model); the model id is the hash of the new weights.
 * model_id receives it (17 bytes). Returns 0, or -1 with err. */
int train_save(Trainer *t, const char *path, const TrainLabels *labels, char model_id[17],
               char *err, size_t errlen);

/* Writes the learning curve (loss per step, held-out accuracy per epoch) as SVG. */
int train_write_svg(const Trainer *t, const char *path, char *err, size_t errlen);

/* The flat parameters (enc_param_count floats) and configuration, for tests. */
const float *train_params(const Trainer *t);
const EncConfig *train_enc_config(const Trainer *t);
const TokConfig *train_tok_config(const Trainer *t);

/* --- model files --- */

/* Reads and validates the model file at path (st_load) and copies its weights into
 * *params (malloc'ed, enc_param_count floats in canonical order). Returns 0, or -1 with
 * err naming the file and the problem. */
int train_load_model(float **params, EncConfig *enc, TokConfig *tok, char model_id[17],
                     const char *path, char *err, size_t errlen);

/* Encodes every text of d with the weights params (enc, tok) into vecs (n, proj_dim),
 * max_tokens per text, optionally also writing pooled vectors (n, d_model). Returns 0 or
 * -1 (out of memory). */
int train_encode(float *vecs, float *pooled, const TrainData *d, const float *params,
                 const EncConfig *enc, const TokConfig *tok, size_t max_tokens, char *err,
                 size_t errlen);

/* As train_encode, for texts[0..n) (normalised, NUL-terminated) of no data set: the
 * learner's online fine-tuning encodes the prompts it buffered with it. */
int train_encode_texts(float *vecs, float *pooled, const char *const *texts, size_t n,
                       const float *params, const EncConfig *enc, const TokConfig *tok,
                       size_t max_tokens, char *err, size_t errlen);

/* Writes the weights params (enc, tok) as a model file at path, atomically (path.tmp,
 * fsync, rename, fsync of the directory), after checking it as the daemon's loader
 * would. meta holds nmeta key-value pairs of strings (meta[2i], meta[2i + 1]) added to
 * the header's metadata (e.g. base_model_id). model_id receives the new id. Returns 0,
 * or -1 with err. */
int train_write_model(const char *path, const EncConfig *enc, const TokConfig *tok,
                      const float *params, const char *const *meta, size_t nmeta, char model_id[17],
                      char *err, size_t errlen);

/* Reads the metadata string key of the model file at path from its header alone (the
 * weights are not read or checked: model_load does that). Returns 1 with out filled, 0
 * when the key is absent, or -1 with err naming the file and the problem. */
int train_model_metadata(const char *path, const char *key, char *out, size_t outlen, char *err,
                         size_t errlen);

#endif
