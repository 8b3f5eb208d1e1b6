/* safetensors.c - parse, validate and build the encoder's model file.
 *
 * Does: check a whole model file held in memory (header length, JSON, metadata,
 * every tensor's name, dtype, shape and offsets, the data layout, the model id,
 * finite weights) and point EncWeights into it; build the header of a new file.
 *
 * Does not: read or map files, convert dtypes (F32 only), accept extra or missing
 * tensors, or keep any allocation: jansson's objects are freed before returning.
 *
 * The checks run from the outside in (length, JSON, metadata, each tensor, the
 * layout, the hash, the values), so that each kind of damage is reported by its
 * own message and the first one found is the one a human should fix first.
 */
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model files hold little-endian floats that are used in place"
#endif

#define MAX_TENSORS (2 + 12 * ENC_MAX_LAYERS + 2)

/* One tensor as the header describes it, matched to the canonical table. */
typedef struct {
    const char *name; /* the header's key (owned by the JSON tree) */
    size_t index;     /* in enc_tensor_info order */
    size_t begin, end;
} Entry;

typedef struct {
    char *err;
    size_t errlen;
} Err;

static int fail(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(Err *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void st_model_id(char out[17], const void *data, size_t len) {
    snprintf(out, 17, "%016" PRIx64, (uint64_t)XXH64(data, len, 0));
}

/* --- metadata --- */

static int meta_str(Err *e, json_t *meta, const char *key, const char **out) {
    json_t *v = json_object_get(meta, key);

    if (!v) return fail(e, "metadata lacks '%s'", key);
    *out = json_string_value(v); /* strings checked when __metadata__ was read */
    return 0;
}

/* A decimal integer with no sign, space or leading '+', in [lo, hi]. */
static int meta_uint(Err *e, json_t *meta, const char *key, uint64_t lo, uint64_t hi,
                     uint64_t *out) {
    const char *s = "";
    if (meta_str(e, meta, key, &s)) return -1;

    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end || errno || v < lo || v > hi) {
        return fail(e, "metadata %s '%s' is not an integer in [%" PRIu64 ", %" PRIu64 "]", key, s,
                    lo, hi);
    }
    *out = v;
    return 0;
}

static int meta_int(Err *e, json_t *meta, const char *key, int lo, int hi, int *out) {
    uint64_t v;
    if (meta_uint(e, meta, key, (uint64_t)lo, (uint64_t)hi, &v)) return -1;
    *out = (int)v;
    return 0;
}

static int read_enc_config(Err *e, json_t *meta, EncConfig *c) {
    const char *act = "", *eps = "";
    if (meta_int(e, meta, "vocab_size", 2, 1 << 26, &c->vocab_size) ||
        meta_int(e, meta, "d_model", 1, 8192, &c->d_model) ||
        meta_int(e, meta, "n_layers", 1, ENC_MAX_LAYERS, &c->n_layers) ||
        meta_int(e, meta, "n_heads", 1, 8192, &c->n_heads) ||
        meta_int(e, meta, "d_ff", 1, 65536, &c->d_ff) ||
        meta_int(e, meta, "max_len", 1, 8192, &c->max_len) ||
        meta_int(e, meta, "chunk_stride", 1, 8192, &c->chunk_stride) ||
        meta_int(e, meta, "proj_dim", 1, 8192, &c->proj_dim) ||
        meta_str(e, meta, "activation", &act) || meta_str(e, meta, "layer_norm_eps", &eps)) {
        return -1;
    }

    if (strcmp(act, "gelu") == 0)
        c->activation = ENC_ACT_GELU;
    else if (strcmp(act, "relu") == 0)
        c->activation = ENC_ACT_RELU;
    else
        return fail(e, "metadata activation '%s': expected 'gelu' or 'relu'", act);

    char *end;
    c->ln_eps = strtof(eps, &end);
    if (*end || end == eps || !(c->ln_eps > 0.0f && c->ln_eps < 1.0f)) {
        return fail(e, "metadata layer_norm_eps '%s' is not a number in (0, 1)", eps);
    }
    char msg[160];
    if (enc_check_config(c, msg, sizeof msg)) return fail(e, "metadata: %s", msg);
    return 0;
}

static int read_tok_config(Err *e, json_t *meta, uint32_t vocab_size, TokConfig *t) {
    int version;
    uint64_t seed;
    if (meta_int(e, meta, "tok_version", 0, 1 << 30, &version)) return -1;
    if (version != TOK_VERSION) {
        return fail(e, "metadata tok_version %d: this build tokenises as version %d", version,
                    TOK_VERSION);
    }
    if (meta_int(e, meta, "tok_ngram", 0, 1 << 30, &t->ngram) ||
        meta_int(e, meta, "tok_max_ngrams", 0, 1 << 30, &t->max_ngrams) ||
        meta_int(e, meta, "tok_cjk_bigrams", 0, 1 << 30, &t->cjk_bigrams) ||
        meta_uint(e, meta, "tok_seed", 0, UINT64_MAX, &seed)) {
        return -1;
    }
    t->seed = seed;
    t->vocab_size = vocab_size;

    char msg[160];
    if (tok_check_config(t, msg, sizeof msg)) return fail(e, "metadata: %s", msg);
    return 0;
}

/* __metadata__ must be an object of strings (the safetensors rule). */
static int read_metadata(Err *e, json_t *root, StModel *m, const char **model_id) {
    json_t *meta = json_object_get(root, "__metadata__"), *v;
    const char *key, *arch = "";

    if (!json_is_object(meta)) return fail(e, "header has no __metadata__ object");
    json_object_foreach(meta, key, v) {
        if (!json_is_string(v)) return fail(e, "metadata value of '%s' is not a string", key);
    }
    if (meta_str(e, meta, "arch", &arch)) return -1;
    if (strcmp(arch, ST_ARCH) != 0) {
        return fail(e, "metadata arch '%s': expected '%s'", arch, ST_ARCH);
    }
    if (read_enc_config(e, meta, &m->enc) ||
        read_tok_config(e, meta, (uint32_t)m->enc.vocab_size, &m->tok) ||
        meta_str(e, meta, "model_id", model_id)) {
        return -1;
    }
    size_t n = strlen(*model_id);
    if (n != 16 || strspn(*model_id, "0123456789abcdef") != 16) {
        return fail(e, "metadata model_id '%s' is not 16 lower-case hex digits", *model_id);
    }
    return 0;
}

/* --- tensors --- */

static size_t find_tensor(const EncTensor *want, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) {
        if (strcmp(want[i].name, name) == 0) return i;
    }
    return SIZE_MAX;
}

static void shape_str(char *out, size_t cap, const size_t *dims, size_t ndim) {
    size_t o = (size_t)snprintf(out, cap, "[");
    for (size_t k = 0; k < ndim && o < cap; k++) {
        o += (size_t)snprintf(out + o, cap - o, k ? ", %zu" : "%zu", dims[k]);
    }
    if (o < cap) snprintf(out + o, cap - o, "]");
}

/* A JSON array of n non-negative integers, n <= max, into out. */
static int int_array(json_t *a, size_t max, size_t *out, size_t *n) {
    if (!json_is_array(a) || json_array_size(a) > max) return -1;
    *n = json_array_size(a);
    for (size_t k = 0; k < *n; k++) {
        json_t *v = json_array_get(a, k);
        if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
        out[k] = (size_t)json_integer_value(v);
    }
    return 0;
}

/* Bytes of an F32 tensor of this shape; SIZE_MAX when that overflows (then it
 * cannot equal a span of the data section). */
static size_t f32_bytes(const size_t *dims, size_t ndim) {
    size_t bytes = 4;
    for (size_t k = 0; k < ndim; k++) {
        if (dims[k] && bytes > SIZE_MAX / dims[k]) return SIZE_MAX;
        bytes *= dims[k];
    }
    return bytes;
}

/* Checks one header entry against the expected tensor and the data section. */
static int read_entry(Err *e, const char *name, json_t *v, const EncTensor *want, size_t data_len,
                      Entry *out) {
    size_t dims[8], ndim, offs[2], noffs;
    const char *dtype = json_string_value(json_object_get(v, "dtype"));

    if (!json_is_object(v)) return fail(e, "tensor '%s': entry is not an object", name);
    if (!dtype) return fail(e, "tensor '%s': no dtype", name);
    if (strcmp(dtype, "F32") != 0) {
        return fail(e, "tensor '%s': dtype %s is not supported (only F32)", name, dtype);
    }
    if (int_array(json_object_get(v, "shape"), 8, dims, &ndim)) {
        return fail(e, "tensor '%s': shape is not a list of at most 8 non-negative integers", name);
    }
    if (int_array(json_object_get(v, "data_offsets"), 2, offs, &noffs) || noffs != 2) {
        return fail(e, "tensor '%s': data_offsets is not a pair of non-negative integers", name);
    }
    if (offs[0] > offs[1] || offs[1] > data_len) {
        return fail(e,
                    "tensor '%s': data_offsets [%zu, %zu] fall outside the %zu-byte data section",
                    name, offs[0], offs[1], data_len);
    }

    char got[96], exp[96];
    size_t bytes = f32_bytes(dims, ndim);
    shape_str(got, sizeof got, dims, ndim);
    if (bytes != offs[1] - offs[0]) {
        return fail(e,
                    "tensor '%s': shape %s needs %zu bytes of F32 but data_offsets [%zu, %zu] "
                    "hold %zu",
                    name, got, bytes, offs[0], offs[1], offs[1] - offs[0]);
    }
    shape_str(exp, sizeof exp, want->shape, (size_t)want->ndim);
    if (ndim != (size_t)want->ndim || dims[0] != want->shape[0] ||
        (ndim == 2 && dims[1] != want->shape[1])) {
        return fail(e, "tensor '%s': shape %s does not match the metadata, which needs %s", name,
                    got, exp);
    }
    out->name = name, out->begin = offs[0], out->end = offs[1];
    return 0;
}

/* Matches every header key but __metadata__ to an expected tensor. */
static int read_entries(Err *e, json_t *root, const EncTensor *want, size_t n_want, size_t data_len,
                        Entry *entries, const char *model_desc) {
    bool seen[MAX_TENSORS] = {false};
    const char *key;
    json_t *v;

    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        size_t i = find_tensor(want, n_want, key);
        if (i == SIZE_MAX) return fail(e, "unexpected tensor '%s' in %s", key, model_desc);
        if (read_entry(e, key, v, &want[i], data_len, &entries[i])) return -1;
        entries[i].index = i;
        seen[i] = true;
    }
    for (size_t i = 0; i < n_want; i++) {
        if (!seen[i]) return fail(e, "missing tensor '%s' for %s", want[i].name, model_desc);
    }
    return 0;
}

/* The tensors must tile the data section: sorted by offset, no overlap, no gap,
 * nothing after the last one (the safetensors rule). */
static int check_layout(Err *e, Entry *entries, size_t n, size_t data_len) {
    Entry *order[MAX_TENSORS] = {entries};

    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        for (; j > 0 && order[j - 1]->begin > entries[i].begin; j--) order[j] = order[j - 1];
        order[j] = &entries[i];
    }
    if (order[0]->begin != 0) {
        return fail(e, "%zu unused bytes before the first tensor '%s'", order[0]->begin,
                    order[0]->name);
    }
    for (size_t i = 1; i < n; i++) {
        const Entry *a = order[i - 1], *b = order[i];
        if (b->begin < a->end) {
            return fail(e, "tensors '%s' [%zu, %zu] and '%s' [%zu, %zu] overlap", a->name, a->begin,
                        a->end, b->name, b->begin, b->end);
        }
        if (b->begin > a->end) {
            return fail(e, "%zu unused bytes between tensors '%s' and '%s'", b->begin - a->end,
                        a->name, b->name);
        }
    }
    if (order[n - 1]->end != data_len) {
        return fail(e, "%zu bytes after the last tensor '%s'", data_len - order[n - 1]->end,
                    order[n - 1]->name);
    }
    return 0;
}

static int check_values(Err *e, const float *p, size_t numel, const char *name) {
    for (size_t k = 0; k < numel; k++) {
        if (!isfinite(p[k]))
            return fail(e, "tensor '%s': element %zu is %g", name, k, (double)p[k]);
    }
    return 0;
}

/* --- load --- */

/* Everything after the JSON parse; root is freed by the caller. */
static int load_tree(Err *e, StModel *m, json_t *root, const unsigned char *data, size_t data_len) {
    const char *model_id = "";
    if (!json_is_object(root)) return fail(e, "header is not a JSON object");
    if (read_metadata(e, root, m, &model_id)) return -1;

    EncTensor want[MAX_TENSORS];
    Entry entries[MAX_TENSORS];
    size_t n = enc_tensor_count(&m->enc);
    char desc[128];
    for (size_t i = 0; i < n; i++) enc_tensor_info(&want[i], &m->enc, i);
    snprintf(desc, sizeof desc, "a %d-layer encoder (d_model %d, vocab_size %d)", m->enc.n_layers,
             m->enc.d_model, m->enc.vocab_size);
    if (read_entries(e, root, want, n, data_len, entries, desc)) return -1;
    if (check_layout(e, entries, n, data_len)) return -1;

    const float *ptrs[MAX_TENSORS];
    for (size_t i = 0; i < n; i++) {
        if ((uintptr_t)(data + entries[i].begin) % sizeof(float)) {
            return fail(e, "tensor '%s' at data offset %zu is not 4-byte aligned in memory",
                        entries[i].name, entries[i].begin);
        }
        ptrs[i] = (const float *)(const void *)(data + entries[i].begin);
    }

    st_model_id(m->model_id, data, data_len);
    if (strcmp(m->model_id, model_id) != 0) {
        return fail(e,
                    "model_id %s does not match the weights (their XXH64 is %s): the file "
                    "is corrupt or was edited",
                    model_id, m->model_id);
    }
    for (size_t i = 0; i < n; i++) {
        if (check_values(e, ptrs[i], want[i].numel, want[i].name)) return -1;
    }
    enc_weights_bind(&m->w, &m->enc, ptrs);
    m->data = data, m->data_len = data_len;
    return 0;
}

int st_load(StModel *m, const void *buf, size_t len, char *err, size_t errlen) {
    Err e = {err, errlen};
    const unsigned char *b = buf;

    memset(m, 0, sizeof *m);
    if (len < 8)
        return fail(&e, "file of %zu bytes is too short for the 8-byte header length", len);

    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | b[k];
    if (hlen > len - 8) {
        return fail(&e, "header length %" PRIu64 " runs past the end of the %zu-byte file", hlen,
                    len);
    }
    if (hlen > ST_MAX_HEADER) {
        return fail(&e, "header length %" PRIu64 " exceeds the limit of %u bytes", hlen,
                    ST_MAX_HEADER);
    }

    json_error_t jerr;
    json_t *root = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        return fail(&e, "header is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                    jerr.column);
    }
    int rc = load_tree(&e, m, root, b + 8 + hlen, len - 8 - (size_t)hlen);
    json_decref(root);
    if (rc) memset(m, 0, sizeof *m);
    return rc;
}

/* --- build --- */

/* The shortest decimal form that reads back as the same float. */
static void float_str(char *out, size_t cap, float v) {
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(out, cap, "%.*g", prec, (double)v);
        if (strtof(out, NULL) == v) return;
    }
}

static int set_meta(json_t *meta, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_meta(json_t *meta, const char *key, const char *fmt, ...) {
    char buf[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return json_object_set_new(meta, key, json_string(buf));
}

static json_t *build_metadata(const EncConfig *c, const TokConfig *t, const char *model_id) {
    json_t *meta = json_object();
    char eps[32];
    float_str(eps, sizeof eps, c->ln_eps);

    int bad = !meta || set_meta(meta, "format", "pt") || set_meta(meta, "arch", ST_ARCH) ||
              set_meta(meta, "vocab_size", "%d", c->vocab_size) ||
              set_meta(meta, "d_model", "%d", c->d_model) ||
              set_meta(meta, "n_layers", "%d", c->n_layers) ||
              set_meta(meta, "n_heads", "%d", c->n_heads) ||
              set_meta(meta, "d_ff", "%d", c->d_ff) ||
              set_meta(meta, "max_len", "%d", c->max_len) ||
              set_meta(meta, "chunk_stride", "%d", c->chunk_stride) ||
              set_meta(meta, "proj_dim", "%d", c->proj_dim) ||
              set_meta(meta, "activation", "%s", c->activation == ENC_ACT_RELU ? "relu" : "gelu") ||
              set_meta(meta, "layer_norm_eps", "%s", eps) ||
              set_meta(meta, "tok_version", "%d", TOK_VERSION) ||
              set_meta(meta, "tok_ngram", "%d", t->ngram) ||
              set_meta(meta, "tok_max_ngrams", "%d", t->max_ngrams) ||
              set_meta(meta, "tok_cjk_bigrams", "%d", t->cjk_bigrams) ||
              set_meta(meta, "tok_seed", "%" PRIu64, t->seed) ||
              set_meta(meta, "model_id", "%s", model_id);
    if (bad) {
        json_decref(meta);
        return NULL;
    }
    return meta;
}

static json_t *build_tree(const EncConfig *c, const TokConfig *t, const char *model_id) {
    json_t *root = json_object(), *meta = build_metadata(c, t, model_id);
    size_t n = enc_tensor_count(c);

    if (!root || !meta || json_object_set_new(root, "__metadata__", meta)) goto fail;
    for (size_t i = 0; i < n; i++) {
        EncTensor ti;
        enc_tensor_info(&ti, c, i);
        json_t *shape = ti.ndim == 2
                            ? json_pack("[II]", (json_int_t)ti.shape[0], (json_int_t)ti.shape[1])
                            : json_pack("[I]", (json_int_t)ti.shape[0]);
        json_t *entry =
            json_pack("{s:s, s:o, s:[II]}", "dtype", "F32", "shape", shape, "data_offsets",
                      (json_int_t)(ti.offset * 4), (json_int_t)((ti.offset + ti.numel) * 4));
        if (!entry || json_object_set_new(root, ti.name, entry)) goto fail;
    }
    return root;

fail:
    json_decref(root);
    return NULL;
}

int st_header(char **out, size_t *out_len, const EncConfig *enc, const TokConfig *tok,
              const float *params, char *err, size_t errlen) {
    Err e = {err, errlen};
    char msg[160], model_id[17];

    *out = NULL, *out_len = 0;
    if (enc_check_config(enc, msg, sizeof msg) || tok_check_config(tok, msg, sizeof msg)) {
        return fail(&e, "%s", msg);
    }
    if ((uint32_t)enc->vocab_size != tok->vocab_size) {
        return fail(&e, "tokeniser vocab_size %u differs from the encoder's %d", tok->vocab_size,
                    enc->vocab_size);
    }
    st_model_id(model_id, params, enc_param_count(enc) * sizeof(float));

    json_t *root = build_tree(enc, tok, model_id);
    char *json = root ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (!json) return fail(&e, "out of memory while building the header");

    size_t jlen = strlen(json), padded = (jlen + 7) & ~(size_t)7;
    char *buf = malloc(8 + padded);
    if (!buf) {
        free(json);
        return fail(&e, "out of memory while building the header");
    }
    for (int k = 0; k < 8; k++) buf[k] = (char)(((uint64_t)padded >> (8 * k)) & 0xFF);
    memcpy(buf + 8, json, jlen);
    memset(buf + 8 + jlen, ' ', padded - jlen);
    free(json);
    *out = buf, *out_len = 8 + padded;
    return 0;
}
