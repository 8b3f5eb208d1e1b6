/* The encoder's model file, tokeniser and batch workspace; see model.h. */
#include "model.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utf8proc.h>
#include <xxhash.h>

#include "../kernels/encoder.h"
#include "../kernels/normalize.h"
#include "../kernels/safetensors.h"
#include "../kernels/tokenize.h"
#include "pd.h"

struct Model {
    char path[PATH_MAX];
    void *map;
    size_t map_len;
    StModel st;
    float *prepared; /* transposed weights for the BLAS path */
    size_t max_tokens;
    uint64_t id, cache_id;

    /* The batch workspace, grown to the largest batch so far. */
    int32_t *ids;
    size_t ids_cap;
    size_t *off;
    size_t off_cap;
    void *arena;
    size_t arena_len;
    EncWork work;
    size_t work_tokens, work_chunks, work_prompts; /* what arena is laid out for */
};

/* --- loading --- */

static int map_file(Model *m, char *err, size_t errlen) {
    int fd = open(m->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot open the model %s: %s", m->path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    m->map_len = (size_t)st.st_size;
    m->map = m->map_len ? mmap(NULL, m->map_len, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m->map == MAP_FAILED) {
        m->map = NULL;
        snprintf(err, errlen, "cannot map the model %s: %s", m->path,
                 m->map_len ? strerror(errno) : "the file is empty");
        return -1;
    }
    return 0;
}

int model_load(Model **out, const char *path, size_t max_tokens, char *err, size_t errlen) {
    char why[512];
    Model *m = calloc(1, sizeof *m);
    if (!m) return snprintf(err, errlen, "out of memory"), -1;
    snprintf(m->path, sizeof m->path, "%s", path);
    m->max_tokens = max_tokens ? max_tokens : 1;
    if (map_file(m, err, errlen)) goto fail;

    if (st_load(&m->st, m->map, m->map_len, why, sizeof why)) {
        snprintf(err, errlen, "the model %s is refused: %s", path, why);
        goto fail;
    }
    m->prepared = malloc(enc_prepared_count(&m->st.enc) * sizeof(float));
    if (!m->prepared) {
        snprintf(err, errlen, "out of memory for the model %s", path);
        goto fail;
    }
    enc_prepare(&m->st.w, m->prepared, &m->st.enc);
    m->id = strtoull(m->st.model_id, NULL, 16);
    char versions[128];
    int n = snprintf(versions, sizeof versions, "%s norm %d tok %d unicode %s", m->st.model_id,
                     NORM_RULES_VERSION, TOK_VERSION, utf8proc_unicode_version());
    m->cache_id = XXH64(versions, (size_t)n, 0);
    *out = m;
    return 0;

fail:
    model_free(m);
    return -1;
}

void model_free(Model *m) {
    if (!m) return;
    if (m->map) munmap(m->map, m->map_len);
    free(m->prepared);
    free(m->ids);
    free(m->off);
    free(m->arena);
    free(m);
}

const char *model_id(const Model *m) {
    return m->st.model_id;
}

uint64_t model_id_u64(const Model *m) {
    return m->id;
}

uint64_t model_cache_id(const Model *m) {
    return m->cache_id;
}

int model_dim(const Model *m) {
    return m->st.enc.proj_dim;
}

const char *model_path(const Model *m) {
    return m->path;
}

/* --- encoding --- */

static int grow(void **buf, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need) n *= 2;
    void *p = realloc(*buf, n * size);
    if (!p) return -1;
    *buf = p;
    *cap = n;
    return 0;
}

/* Tokenises the batch into m->ids with prompt b at [off[b], off[b+1]). */
static int tokenize(Model *m, const char *const *texts, const size_t *lens, size_t n) {
    if (grow((void **)&m->off, &m->off_cap, n + 1, sizeof *m->off)) return -1;
    m->off[0] = 0;
    for (size_t b = 0; b < n; b++) {
        size_t cap = tok_max_tokens(lens[b]);
        if (cap > m->max_tokens) cap = m->max_tokens;
        if (grow((void **)&m->ids, &m->ids_cap, m->off[b] + cap, sizeof *m->ids)) return -1;
        size_t got = tok_text(m->ids + m->off[b], cap, texts[b], lens[b], &m->st.tok);
        m->off[b + 1] = m->off[b] + (got < cap ? got : cap);
    }
    return 0;
}

/* Lays the workspace out for at least the batch's tokens, chunks and prompts, growing by
 * doubling so that a steady stream settles on one size. */
static int fit_workspace(Model *m, size_t n) {
    size_t tokens = 0, chunks = 0;
    for (size_t b = 0; b < n; b++) {
        size_t len = m->off[b + 1] - m->off[b];
        tokens += enc_packed_len(len, &m->st.enc);
        chunks += enc_chunk_count(len, &m->st.enc);
    }
    if (tokens <= m->work_tokens && chunks <= m->work_chunks && n <= m->work_prompts) return 0;

    size_t t = m->work_tokens ? m->work_tokens : 4096, c = m->work_chunks ? m->work_chunks : 256,
           p = m->work_prompts ? m->work_prompts : 256;
    while (t < tokens) t *= 2;
    while (c < chunks) c *= 2;
    while (p < n) p *= 2;
    size_t bytes = enc_work_size(&m->st.enc, t, c, p, 0);
    void *arena = bytes == SIZE_MAX ? NULL : realloc(m->arena, bytes);
    if (!arena) return -1;
    m->arena = arena;
    m->arena_len = bytes;
    if (enc_work_init(&m->work, arena, bytes, &m->st.enc, t, c, p, 0)) return -1;
    m->work_tokens = t, m->work_chunks = c, m->work_prompts = p;
    return 0;
}

int model_encode(Model *m, const char *const *texts, const size_t *lens, size_t n, float *out,
                 char *err, size_t errlen) {
    if (n == 0) return 0;
    if (tokenize(m, texts, lens, n) || fit_workspace(m, n)) {
        snprintf(err, errlen, "out of memory encoding a batch of %zu prompts", n);
        return -1;
    }
    int rc = enc_encode(out, &m->work, m->ids, m->off, n, &m->st.w, &m->st.enc, 0);
    if (rc) {
        /* The model was validated and the workspace sized for this batch: a bug. */
        snprintf(err, errlen, "the encoder refused a batch of %zu prompts (error %d)", n, rc);
        return -1;
    }
    return 0;
}

const char *model_default_path(void) {
    static char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/build/model/default.safetensors", pd_datadir());
    if (stat(path, &st) == 0) return path;
    snprintf(path, sizeof path, "%s/model/default.safetensors", pd_datadir());
    return path;
}

void model_set_threads(int n) {
    openblas_set_num_threads(n > 0 ? n : 1);
}
