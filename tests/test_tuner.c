/*
 * Online triplets (daemon/tuner.c): which buffered prompts become anchors, positives and
 * negatives; the head's fine-tune lowering the triplet loss; the model it writes (a new
 * id, base_model_id, loadable by promptd); and the text tail of learning records that
 * carries the prompts to the learner.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/learner.h"
#include "../daemon/model.h"
#include "../daemon/train.h"
#include "../daemon/tuner.h"
#include "../kernels/encoder.h"
#include "../kernels/rng.h"
#include "../kernels/tokenize.h"

/* --- triplet construction --- */

/* Four templates of a constructed buffer:
 *   1: rewards 0..7 in a shuffled order: q = 2, high = {6, 7}, low = {0, 1};
 *   2: eight equal rewards: everything is high, nothing strictly lower, no triplet;
 *   3: five experiences, fewer than TUNER_MIN_PER_TEMPLATE: no triplet;
 *   4: rewards 0 0 0 1 1 1 1 1: ties at the thresholds are in, high = the five 1s, low
 *      = the three 0s. */
#define NS 29

static void buffer(TunerSample *s) {
    for (int i = 0; i < 8; i++) s[i] = (TunerSample){1, 100 + i, (float)((i * 3) % 8)};
    for (int i = 8; i < 16; i++) s[i] = (TunerSample){2, 100 + i, 1.0f};
    for (int i = 16; i < 21; i++) s[i] = (TunerSample){3, 100 + i, (float)(i - 16)};
    for (int i = 21; i < 29; i++) s[i] = (TunerSample){4, 100 + i, i < 24 ? 0.0f : 1.0f};
}

/* 'H', 'L' or '-' for sample i of buffer(). */
static char expected_class(const TunerSample *s, int i) {
    if (s[i].tmpl == 1) return s[i].reward >= 6 ? 'H' : s[i].reward <= 1 ? 'L' : '-';
    if (s[i].tmpl == 4) return s[i].reward == 1 ? 'H' : 'L';
    return '-';
}

Test(tuner, triplets_pair_high_scorers_of_a_template_against_its_low_scorers) {
    TunerSample s[NS];
    Triplet t[32];
    buffer(s);
    int n = tuner_triplets(t, 32, s, NS, 7);
    cr_assert_eq(n, 32, "64 distinct triplets exist; got %d", n);

    bool seen[NS] = {false};
    int per_template[5] = {0};
    for (int i = 0; i < n; i++) {
        const TunerSample *a = &s[t[i].a], *p = &s[t[i].p], *ng = &s[t[i].n];
        cr_expect(a->tmpl == p->tmpl && a->tmpl == ng->tmpl,
                  "triplet %d mixes templates %llu %llu %llu", i, (unsigned long long)a->tmpl,
                  (unsigned long long)p->tmpl, (unsigned long long)ng->tmpl);
        cr_expect_eq(expected_class(s, t[i].a), 'H', "anchor %d (reward %g) is not high", t[i].a,
                     a->reward);
        cr_expect_eq(expected_class(s, t[i].p), 'H', "positive %d (reward %g) is not high", t[i].p,
                     p->reward);
        cr_expect_eq(expected_class(s, t[i].n), 'L', "negative %d (reward %g) is not low", t[i].n,
                     ng->reward);
        cr_expect_neq(t[i].a, t[i].p, "anchor and positive are the same prompt");
        cr_expect_lt(ng->reward, a->reward);
        seen[t[i].a] = seen[t[i].p] = seen[t[i].n] = true;
        per_template[a->tmpl]++;
    }
    /* Every high and low prompt takes part. Templates take turns, and a triplet is drawn
     * once: template 1 gives all of its 2 x 1 x 2 ordered ones, template 4 the rest. */
    for (int i = 0; i < NS; i++)
        if (expected_class(s, i) != '-') cr_expect(seen[i], "sample %d never drawn", i);
    cr_expect_eq(per_template[1], 4, "template 1 drew %d", per_template[1]);
    cr_expect_eq(per_template[4], 28, "template 4 drew %d", per_template[4]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            cr_expect(t[i].a != t[j].a || t[i].p != t[j].p || t[i].n != t[j].n,
                      "triplets %d and %d are the same", j, i);

    Triplet again[32];
    cr_assert_eq(tuner_triplets(again, 32, s, NS, 7), n);
    cr_expect(memcmp(t, again, sizeof t) == 0, "the same seed drew other triplets");
}

Test(tuner, no_triplets_from_too_few_or_indistinct_prompts) {
    TunerSample s[NS];
    Triplet t[16];
    buffer(s);
    /* Templates 2 and 3 alone: equal rewards, and too few experiences. */
    cr_expect_eq(tuner_triplets(t, 16, s + 8, 13, 1), 0);
    cr_expect_eq(tuner_triplets(t, 16, s, 0, 1), 0);
    /* Template 1's two high prompts share one text: nothing to learn about wording. */
    for (int i = 0; i < 8; i++)
        if (s[i].reward >= 6) s[i].text = 99;
    cr_expect_eq(tuner_triplets(t, 16, s, 8, 1), 0);
}

/* --- the head's fine-tune --- */

static void noisy(float *x, const float *centre, int C, Rng *rng) {
    for (int j = 0; j < C; j++) x[j] = centre[j] + 0.3f * (float)(rng_uniform(rng) - 0.5);
}

Test(tuner, head_fine_tune_lowers_the_triplet_loss) {
    enum { C = 16, P = 8, N = 48 };
    static float head[P * C + P], before[P * C + P], a[N * C], p[N * C], n[N * C];
    float u[C], v[C], lb, la;
    Rng rng;
    rng_seed(&rng, 3);
    for (int j = 0; j < P * C + P; j++) head[j] = (float)(rng_uniform(&rng) - 0.5) * 0.5f;
    for (int j = 0; j < C; j++) {
        u[j] = (float)(rng_uniform(&rng) - 0.5);
        v[j] = u[j] + 0.2f * (float)(rng_uniform(&rng) - 0.5); /* close: a hard case */
    }
    for (int i = 0; i < N; i++) {
        noisy(a + i * C, u, C, &rng);
        noisy(p + i * C, u, C, &rng);
        noisy(n + i * C, v, C, &rng);
    }
    memcpy(before, head, sizeof head);
    cr_assert_eq(tuner_fit_head(head, a, p, n, N, C, P, 100, 1e-2, &lb, &la), 0);
    cr_expect_gt(lb, 0.5f, "the constructed triplets should start with a real loss: %g", lb);
    cr_expect_lt(la, 0.5f * lb, "loss %g -> %g: the fine-tune did not learn", lb, la);
    cr_expect(memcmp(before, head, sizeof head) != 0);
}

/* --- the tuner end to end, on a tiny model --- */

static void tiny_model(const char *path, char id[17]) {
    char err[512];
    EncConfig enc = {512, 16, 1, 4, 32, 16, 12, 8, ENC_ACT_GELU, 1e-5f};
    TokConfig tok = tok_default_config(512);
    float *params = malloc(enc_param_count(&enc) * sizeof *params);
    cr_assert_not_null(params);
    enc_init_random(params, &enc, 5, 0);
    cr_assert_eq(train_write_model(path, &enc, &tok, params, NULL, 0, id, err, sizeof err), 0, "%s",
                 err);
    free(params);
}

/* Template 1 serves pump alarms well (reward 1) and breaker questions badly (0), or the
 * other way round when flipped. */
static void feed(Tuner *t, int n, bool flip) {
    for (int i = 0; i < n; i++) {
        char text[96];
        if (i % 2)
            snprintf(text, sizeof text, "pump %d vibration high on line %d", i, i % 7);
        else
            snprintf(text, sizeof text, "how do i reset breaker %d in hall %d", i, i % 5);
        tuner_add(t, text, strlen(text), 1, (i % 2) != flip ? 1.0f : 0.0f);
    }
}

Test(tuner, writes_a_loadable_model_with_a_new_id_from_its_base) {
    char dir[] = "/tmp/pd_tuner_XXXXXX", base[128], tuned[128], err[512], id[17], got[64];
    cr_assert(mkdtemp(dir));
    snprintf(base, sizeof base, "%s/base.safetensors", dir);
    snprintf(tuned, sizeof tuned, "%s/tuned.safetensors", dir);
    tiny_model(base, id);

    TunerConfig cfg = {64, 40, 1e-2, 1, base, tuned, id, 256};
    Tuner *t;
    TunerResult r;
    cr_assert_eq(tuner_new(&t, &cfg, err, sizeof err), 0, "%s", err);
    feed(t, 6, false);
    cr_expect_not(tuner_due(t));
    cr_expect_eq(tuner_run(t, &r, err, sizeof err), 0, "6 prompts of a template are too few");
    cr_expect(strstr(err, "triplets"), "%s", err);
    cr_expect_neq(access(tuned, F_OK), 0, "a skipped fine-tune wrote a model");

    feed(t, 64, false);
    cr_expect(tuner_due(t));
    cr_assert_eq(tuner_run(t, &r, err, sizeof err), 1, "%s", err);
    cr_expect_eq(r.triplets, TUNER_MAX_TRIPLETS);
    cr_expect_lt(r.loss_after, r.loss_before, "loss %g -> %g", r.loss_before, r.loss_after);
    cr_expect_str_neq(r.model_id, id, "a tuned head must change the model id");
    cr_expect_not(tuner_due(t));

    Model *m = NULL;
    cr_assert_eq(model_load(&m, tuned, 256, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(model_id(m), r.model_id);
    model_free(m);
    cr_expect_eq(train_model_metadata(tuned, "base_model_id", got, sizeof got, err, sizeof err), 1,
                 "%s", err);
    cr_expect_str_eq(got, id);
    cr_expect_eq(train_model_metadata(base, "base_model_id", got, sizeof got, err, sizeof err), 0);

    /* A second fine-tune starts from the first one's head: yet another id. The buffer
     * then says the opposite (the newest 64 of 70 prompts), so there is a loss to lower. */
    char first[17];
    memcpy(first, r.model_id, sizeof first);
    feed(t, 4096, true);
    cr_assert_eq(tuner_run(t, &r, err, sizeof err), 1, "%s", err);
    cr_expect_str_neq(r.model_id, first);
    tuner_free(t);

    /* A corrupt file is named when its metadata is asked for. */
    FILE *f = fopen(tuned, "wb");
    cr_assert(f && fputs("garbage", f) >= 0 && fclose(f) == 0);
    cr_expect_eq(train_model_metadata(tuned, "base_model_id", got, sizeof got, err, sizeof err),
                 -1);
    cr_expect(strstr(err, tuned), "the error does not name the file: %s", err);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* --- the record's text tail --- */

Test(tuner, records_carry_the_text_cut_at_a_character_boundary) {
    PolicyDims d = {.D = 6, .E = 2, .H = 4, .Q = 4};
    float x[6] = {1, 2, 3, 4, 5, 6};
    uint64_t tmpl[2] = {11, 22};
    char buf[2048], text[600];
    size_t len = learner_record_size(&d, 2), tl;
    learner_record_write(buf, &d, 3, 0, 0, x, tmpl, 2, 1, -0.5f, 0.1f);
    cr_expect_null(learner_record_text(buf, len, &d, &tl), "a plain record has no text");

    /* 511 ASCII bytes, then a 3-byte character that would end at 514: cut before it. */
    memset(text, 'a', 511);
    memcpy(text + 511, "\xe6\xb8\xa9xyz", 6);
    size_t with = learner_record_add_text(buf, sizeof buf, len, text, 517);
    const char *got = learner_record_text(buf, with, &d, &tl);
    cr_assert_not_null(got);
    cr_expect_eq(tl, 511, "cut at %zu bytes", tl);
    cr_expect(memcmp(got, text, tl) == 0);
    cr_expect_null(learner_record_text(buf, with - 1, &d, &tl), "a torn tail must be refused");
    cr_expect_eq(learner_record_add_text(buf, len + 4, len, "abc", 3), len, "no room: unchanged");
    cr_expect_eq(tuner_text_cut("abc", 3), 3);
}
