/*
 * libFuzzer harness: normalisation (kernels/normalize.h), with and without masking, then
 * tokenisation (kernels/tokenize.h) of its output with the default tokeniser of the shipped
 * model. Both kernels promise to accept any bytes within the capacities they publish.
 */
#include <stdlib.h>

#include "../kernels/normalize.h"
#include "../kernels/tokenize.h"

/* The shipped model's vocabulary (model/default.safetensors). */
#define VOCAB 16384

static void tokenize(const char *text, size_t len) {
    TokConfig cfg = tok_default_config(VOCAB);
    size_t cap = tok_max_tokens(len);
    int32_t *ids = malloc((cap ? cap : 1) * sizeof *ids);
    if (!ids) return;
    size_t n = tok_text(ids, cap, text, len, &cfg);
    /* The published bound sizes the encoder's buffers, and an id out of range would read
     * past the embedding table: both are memory errors in waiting. */
    if (n > cap) abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 1 || ids[i] >= VOCAB) abort();
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t work_cap = norm_work_cap(size), out_cap = norm_out_cap(size);
    int32_t *work = malloc(work_cap * sizeof *work);
    char *out = malloc(out_cap);
    if (!work || !out) goto done;

    for (unsigned flags = 0; flags <= NORM_MASK; flags++) {
        ptrdiff_t n = norm_text(out, out_cap, (const char *)data, size, work, work_cap, flags);
        /* The capacities are the documented ones, so a refusal is a bug. */
        if (n < 0 || (size_t)n >= out_cap || out[n] != 0) abort();
        tokenize(out, (size_t)n);
    }
    /* The tokeniser also takes raw bytes (invalid UTF-8 reads as U+FFFD). */
    tokenize((const char *)data, size);
done:
    free(work);
    free(out);
    return 0;
}
