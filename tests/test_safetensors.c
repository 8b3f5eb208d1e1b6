/* test_safetensors.c - Criterion tests for kernels/safetensors.c, the model file loader.
 *
 * A small valid model file is built in memory; each refusal test breaks one thing
 * (in the bytes, or in the JSON header through jansson) and checks that st_load
 * refuses it with a message naming that thing, and leaves the model zeroed.
 */
#include "../kernels/encoder.h"
#include "../kernels/safetensors.h"
#include "../kernels/tokenize.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --- a valid model and ways to rebuild it --- */

typedef struct {
    EncConfig cfg;
    unsigned char *file;
    size_t len, hlen; /* hlen: bytes before the data, length field included */
} Good;

static Good good_model(void) {
    Good g = {.cfg = enc_default_config(50)};
    g.cfg.d_model = 16, g.cfg.d_ff = 32, g.cfg.n_layers = 1, g.cfg.proj_dim = 8;
    g.cfg.max_len = 8, g.cfg.chunk_stride = 6;
    TokConfig tok = tok_default_config(50);
    size_t n = enc_param_count(&g.cfg);
    float *params = malloc(n * sizeof *params);
    char *head, err[200];

    enc_init_random(params, &g.cfg, 42, ENC_INIT_PERTURB);
    cr_assert_eq(st_header(&head, &g.hlen, &g.cfg, &tok, params, err, sizeof err), 0, "%s", err);
    g.len = g.hlen + n * sizeof *params;
    g.file = malloc(g.len);
    memcpy(g.file, head, g.hlen);
    memcpy(g.file + g.hlen, params, n * sizeof *params);
    free(head);
    free(params);
    return g;
}

static json_t *header_of(const Good *g) {
    json_error_t jerr;
    json_t *root = json_loadb((const char *)g->file + 8, g->hlen - 8, 0, &jerr);
    cr_assert(root, "%s", jerr.text);
    return root;
}

/* Assembles length + JSON + padding + data; pad_to_mod4 picks (8 + header) % 4. */
static unsigned char *assemble(json_t *root, const unsigned char *data, size_t data_len,
                               size_t pad_to_mod4, size_t *len) {
    char *js = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    size_t jl = strlen(js), hl = jl;
    while ((8 + hl) % 4 != pad_to_mod4) hl++;
    unsigned char *f = malloc(8 + hl + data_len + 1);

    for (int k = 0; k < 8; k++) f[k] = (unsigned char)((uint64_t)hl >> (8 * k));
    memcpy(f + 8, js, jl);
    memset(f + 8 + jl, ' ', hl - jl);
    memcpy(f + 8 + hl, data, data_len);
    *len = 8 + hl + data_len;
    free(js);
    json_decref(root);
    return f;
}

static unsigned char *rebuild(const Good *g, json_t *root, size_t *len) {
    return assemble(root, g->file + g->hlen, g->len - g->hlen, 0, len);
}

static json_t *meta_of(json_t *root) {
    return json_object_get(root, "__metadata__");
}

static json_t *tensor_of(json_t *root, const char *name) {
    json_t *t = json_object_get(root, name);
    cr_assert(t, "no tensor %s", name);
    return t;
}

static void set_model_id(json_t *root, const unsigned char *data, size_t len) {
    char id[17];
    st_model_id(id, data, len);
    json_object_set_new(meta_of(root), "model_id", json_string(id));
}

/* Every refusal message seen, to check that no two kinds share one. */
static char seen[40][256];
static size_t n_seen;

static void expect_refused(const unsigned char *file, size_t len, const char *want) {
    StModel m;
    char err[256] = "";

    memset(&m, 0xAB, sizeof m);
    cr_expect_eq(st_load(&m, file, len, err, sizeof err), -1, "accepted; expected \"%s\"", want);
    cr_expect(strstr(err, want), "message \"%s\" does not contain \"%s\"", err, want);
    cr_expect(m.w.wte == NULL && m.enc.d_model == 0 && m.model_id[0] == '\0',
              "model not zeroed after \"%s\"", err);
    for (size_t i = 0; i < n_seen; i++) {
        cr_expect_str_neq(seen[i], err, "two kinds of damage share the message \"%s\"", err);
    }
    if (n_seen < 40) snprintf(seen[n_seen++], sizeof seen[0], "%s", err);
}

static void expect_header_refused(const Good *g, json_t *root, const char *want) {
    size_t len;
    unsigned char *f = rebuild(g, root, &len);
    expect_refused(f, len, want);
    free(f);
}

/* --- a good file --- */

Test(safetensors, loads_a_valid_file_with_its_metadata_and_weights) {
    Good g = good_model();
    StModel m;
    char err[256];

    cr_assert_eq(st_load(&m, g.file, g.len, err, sizeof err), 0, "%s", err);
    cr_expect_eq(m.enc.d_model, 16);
    cr_expect_eq(m.enc.n_layers, 1);
    cr_expect_eq(m.enc.n_heads, 8);
    cr_expect_eq(m.enc.d_ff, 32);
    cr_expect_eq(m.enc.max_len, 8);
    cr_expect_eq(m.enc.chunk_stride, 6);
    cr_expect_eq(m.enc.proj_dim, 8);
    cr_expect_eq(m.enc.activation, ENC_ACT_GELU);
    cr_expect_float_eq(m.enc.ln_eps, 1e-5f, 1e-12f);
    cr_expect_eq(m.tok.vocab_size, 50u);
    cr_expect_eq(m.tok.ngram, 3);
    cr_expect_eq(m.tok.max_ngrams, 6);
    cr_expect_eq(m.tok.seed, tok_default_config(50).seed);
    cr_expect_eq((const unsigned char *)m.w.wte, g.file + g.hlen, "embedding not at data start");
    cr_expect_eq((const unsigned char *)(m.w.proj_b + 8), g.file + g.len, "proj.bias not last");
    cr_expect_eq(m.data_len, g.len - g.hlen);

    char id[17];
    st_model_id(id, g.file + g.hlen, g.len - g.hlen);
    cr_expect_str_eq(m.model_id, id);
    free(g.file);
}

Test(safetensors, header_is_deterministic_and_padded_to_8_bytes) {
    Good a = good_model(), b = good_model();

    cr_expect_eq(a.len, b.len);
    cr_expect_eq(memcmp(a.file, b.file, a.len), 0, "same seed, different bytes");
    cr_expect_eq(a.hlen % 8, 0, "data starts at %zu", a.hlen);
    free(a.file);
    free(b.file);
}

/* --- refusals: the bytes --- */

Test(safetensors, refuses_a_file_shorter_than_the_header_length) {
    Good g = good_model();
    expect_refused(g.file, 5, "too short for the 8-byte header length");
    expect_refused(g.file, 0, "too short for the 8-byte header length");
    free(g.file);
}

Test(safetensors, refuses_a_header_length_past_the_end) {
    Good g = good_model();
    expect_refused(g.file, 100, "runs past the end of the 100-byte file"); /* cut in the JSON */
    free(g.file);
}

Test(safetensors, refuses_a_header_that_is_not_json) {
    Good g = good_model();
    g.file[8] = '#'; /* the opening brace */
    expect_refused(g.file, g.len, "header is not valid JSON");
    free(g.file);
}

Test(safetensors, refuses_duplicate_keys) {
    Good g = good_model();
    const char *js = "{\"__metadata__\":{},\"__metadata__\":{}}";
    size_t n = strlen(js);
    unsigned char f[64] = {(unsigned char)n};
    memcpy(f + 8, js, n);
    expect_refused(f, 8 + n, "duplicate");
    free(g.file);
}

Test(safetensors, refuses_truncated_data) {
    Good g = good_model();
    expect_refused(g.file, g.len - 4, "fall outside the");
    free(g.file);
}

Test(safetensors, refuses_trailing_bytes) {
    Good g = good_model();
    unsigned char *f = malloc(g.len + 4);
    memcpy(f, g.file, g.len);
    memset(f + g.len, 0, 4);
    expect_refused(f, g.len + 4, "4 bytes after the last tensor 'proj.bias'");
    free(f);
    free(g.file);
}

Test(safetensors, refuses_weights_that_do_not_match_the_model_id) {
    Good g = good_model();
    g.file[g.len - 1] ^= 0x01;
    expect_refused(g.file, g.len, "does not match the weights");
    free(g.file);
}

Test(safetensors, refuses_misaligned_tensors) {
    Good g = good_model();
    size_t len;
    unsigned char *f = assemble(header_of(&g), g.file + g.hlen, g.len - g.hlen, 1, &len);
    expect_refused(f, len, "is not 4-byte aligned");
    free(f);
    free(g.file);
}

Test(safetensors, refuses_non_finite_weights) {
    Good g = good_model();
    float nan = NAN;
    memcpy(g.file + g.hlen + 40, &nan, 4); /* embedding.weight element 10 */
    json_t *root = header_of(&g);
    set_model_id(root, g.file + g.hlen, g.len - g.hlen);
    expect_header_refused(&g, root, "tensor 'embedding.weight': element 10 is nan");
    free(g.file);
}

/* --- refusals: the header --- */

Test(safetensors, refuses_a_header_that_is_not_an_object) {
    Good g = good_model();
    expect_header_refused(&g, json_array(), "header is not a JSON object");
    free(g.file);
}

Test(safetensors, refuses_a_header_without_metadata) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_del(root, "__metadata__");
    expect_header_refused(&g, root, "no __metadata__ object");
    free(g.file);
}

Test(safetensors, refuses_metadata_values_that_are_not_strings) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "d_model", json_integer(16));
    expect_header_refused(&g, root, "metadata value of 'd_model' is not a string");
    free(g.file);
}

Test(safetensors, refuses_another_architecture) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "arch", json_string("bert"));
    expect_header_refused(&g, root, "metadata arch 'bert'");
    free(g.file);
}

Test(safetensors, refuses_missing_metadata) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_del(meta_of(root), "n_heads");
    expect_header_refused(&g, root, "metadata lacks 'n_heads'");
    free(g.file);
}

Test(safetensors, refuses_metadata_that_is_not_a_number) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "n_layers", json_string("-1"));
    expect_header_refused(&g, root, "metadata n_layers '-1' is not an integer");
    free(g.file);
}

Test(safetensors, refuses_an_unknown_activation) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "activation", json_string("swish"));
    expect_header_refused(&g, root, "activation 'swish': expected 'gelu' or 'relu'");
    free(g.file);
}

Test(safetensors, refuses_inconsistent_sizes) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "n_heads", json_string("3"));
    expect_header_refused(&g, root, "n_heads 3 does not divide d_model 16");
    free(g.file);
}

Test(safetensors, refuses_another_tokeniser_version) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "tok_version", json_string("2"));
    expect_header_refused(&g, root, "tok_version 2");
    free(g.file);
}

Test(safetensors, refuses_a_malformed_model_id) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "model_id", json_string("XYZ"));
    expect_header_refused(&g, root, "model_id 'XYZ' is not 16 lower-case hex digits");
    free(g.file);
}

Test(safetensors, refuses_a_missing_tensor) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_del(root, "layers.0.norm2.bias");
    expect_header_refused(&g, root, "missing tensor 'layers.0.norm2.bias'");
    free(g.file);
}

Test(safetensors, refuses_an_unexpected_tensor) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set(root, "layers.1.norm2.bias", tensor_of(root, "layers.0.norm2.bias"));
    expect_header_refused(&g, root, "unexpected tensor 'layers.1.norm2.bias'");
    free(g.file);
}

Test(safetensors, refuses_a_dtype_other_than_f32) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(tensor_of(root, "proj.weight"), "dtype", json_string("BF16"));
    expect_header_refused(&g, root, "tensor 'proj.weight': dtype BF16 is not supported");
    free(g.file);
}

Test(safetensors, refuses_a_shape_that_does_not_fit_its_bytes) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(tensor_of(root, "proj.weight"), "shape", json_pack("[ii]", 8, 15));
    expect_header_refused(&g, root, "shape [8, 15] needs 480 bytes of F32");
    free(g.file);
}

Test(safetensors, refuses_shapes_that_disagree_with_the_metadata) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(meta_of(root), "vocab_size", json_string("60"));
    expect_header_refused(&g, root,
                          "shape [50, 16] does not match the metadata, which needs "
                          "[60, 16]");
    free(g.file);
}

Test(safetensors, refuses_malformed_shapes_and_offsets) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set_new(tensor_of(root, "proj.bias"), "shape", json_string("8"));
    expect_header_refused(&g, root, "tensor 'proj.bias': shape is not a list");
    root = header_of(&g);
    json_object_set_new(tensor_of(root, "proj.bias"), "data_offsets", json_pack("[i]", 0));
    expect_header_refused(&g, root, "tensor 'proj.bias': data_offsets is not a pair");
    free(g.file);
}

Test(safetensors, refuses_offsets_out_of_bounds) {
    Good g = good_model();
    json_t *root = header_of(&g);
    size_t end = g.len - g.hlen;
    json_object_set_new(tensor_of(root, "proj.bias"), "data_offsets",
                        json_pack("[II]", (json_int_t)end, (json_int_t)end + 32));
    expect_header_refused(&g, root, "fall outside the");
    free(g.file);
}

Test(safetensors, refuses_overlapping_tensors) {
    Good g = good_model();
    json_t *root = header_of(&g);
    json_object_set(tensor_of(root, "layers.0.norm1.bias"), "data_offsets",
                    json_object_get(tensor_of(root, "layers.0.norm1.weight"), "data_offsets"));
    expect_header_refused(&g, root, "overlap");
    free(g.file);
}

Test(safetensors, refuses_gaps_between_tensors) {
    Good g = good_model();
    json_t *root = header_of(&g),
           *off = json_object_get(tensor_of(root, "proj.bias"), "data_offsets");
    size_t len, data_len = g.len - g.hlen + 4;
    unsigned char *data = calloc(1, data_len);
    memcpy(data, g.file + g.hlen, g.len - g.hlen);
    json_array_set_new(off, 0, json_integer(json_integer_value(json_array_get(off, 0)) + 4));
    json_array_set_new(off, 1, json_integer(json_integer_value(json_array_get(off, 1)) + 4));
    unsigned char *f = assemble(root, data, data_len, 0, &len);
    expect_refused(f, len, "4 unused bytes between tensors 'proj.weight' and 'proj.bias'");
    free(f);
    free(data);
    free(g.file);
}

Test(safetensors, refuses_at_least_ten_kinds_with_distinct_messages) {
    /* Each test above records its message in its own process; this one runs a
     * dozen kinds in one process so that the distinctness check sees them all. */
    Good g = good_model();
    json_t *root;

    expect_refused(g.file, 3, "too short");
    expect_refused(g.file, 100, "runs past the end");
    expect_refused(g.file, g.len - 4, "fall outside");
    root = header_of(&g);
    json_object_del(root, "embedding.weight");
    expect_header_refused(&g, root, "missing tensor");
    root = header_of(&g);
    json_object_set_new(tensor_of(root, "proj.weight"), "dtype", json_string("F16"));
    expect_header_refused(&g, root, "dtype F16");
    root = header_of(&g);
    json_object_set_new(tensor_of(root, "proj.weight"), "shape", json_pack("[ii]", 4, 30));
    expect_header_refused(&g, root, "needs");
    root = header_of(&g);
    json_object_set_new(meta_of(root), "d_model", json_string("32"));
    expect_header_refused(&g, root, "does not match the metadata");
    root = header_of(&g);
    json_object_set_new(meta_of(root), "activation", json_string("tanh"));
    expect_header_refused(&g, root, "activation 'tanh'");
    root = header_of(&g);
    json_object_set(tensor_of(root, "layers.0.norm1.bias"), "data_offsets",
                    json_object_get(tensor_of(root, "layers.0.norm1.weight"), "data_offsets"));
    expect_header_refused(&g, root, "overlap");
    root = header_of(&g);
    json_object_set_new(meta_of(root), "model_id", json_string("0123456789abcdef"));
    expect_header_refused(&g, root, "does not match the weights");
    g.file[8] = '#';
    expect_refused(g.file, g.len, "not valid JSON");
    cr_expect_geq(n_seen, 11);
    free(g.file);
}
