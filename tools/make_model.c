/* make_model.c - writes a seeded random encoder model file, deterministically.
 *
 *   make_model [--seed N] [--vocab V] [--d C] [--layers N] [--heads H] [--ff F]
 *              [--max-len L] [--stride S] [--proj P] [--act gelu|relu] [--perturb]
 *              -o FILE
 *
 * Until a trained model exists, promptd ships the output of `make_model -o ...`
 * with the defaults (d=256, 2 layers, 8 heads, F=4d, L=64, stride 48, P=64, GELU,
 * vocab 32768: about 39 MB), generated at build time rather than committed. The
 * same arguments give a byte-identical file on every machine: the generator is
 * integer-only and the float arithmetic is exact (kernels/encoder.c). --perturb
 * also randomises the zero biases and LayerNorm parameters, for test models.
 * Exit status: 0 written, 64 usage, 1 failure (with a message on stderr).
 */
#include "../kernels/encoder.h"
#include "../kernels/safetensors.h"
#include "../kernels/tokenize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr, "usage: make_model [--seed N] [--vocab V] [--d C] [--layers N] [--heads H] "
                    "[--ff F] [--max-len L] [--stride S] [--proj P] [--act gelu|relu] "
                    "[--perturb] -o FILE\n");
    exit(64);
}

static long long number(const char *opt, const char *s) {
    char *end;
    long long v = strtoll(s, &end, 0);
    if (*s == '\0' || *end || v < 0) {
        fprintf(stderr, "make_model: %s wants a non-negative integer, not '%s'\n", opt, s);
        exit(64);
    }
    return v;
}

typedef struct {
    EncConfig enc;
    uint64_t seed;
    unsigned flags;
    const char *out;
    int ff_set;
} Args;

static void parse_args(Args *a, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--perturb") == 0) {
            a->flags |= ENC_INIT_PERTURB;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (strcmp(o, "-o") == 0)
            a->out = v;
        else if (strcmp(o, "--seed") == 0)
            a->seed = (uint64_t)number(o, v);
        else if (strcmp(o, "--vocab") == 0)
            a->enc.vocab_size = (int)number(o, v);
        else if (strcmp(o, "--d") == 0)
            a->enc.d_model = (int)number(o, v);
        else if (strcmp(o, "--layers") == 0)
            a->enc.n_layers = (int)number(o, v);
        else if (strcmp(o, "--heads") == 0)
            a->enc.n_heads = (int)number(o, v);
        else if (strcmp(o, "--ff") == 0)
            a->enc.d_ff = (int)number(o, v), a->ff_set = 1;
        else if (strcmp(o, "--max-len") == 0)
            a->enc.max_len = (int)number(o, v);
        else if (strcmp(o, "--stride") == 0)
            a->enc.chunk_stride = (int)number(o, v);
        else if (strcmp(o, "--proj") == 0)
            a->enc.proj_dim = (int)number(o, v);
        else if (strcmp(o, "--act") == 0 && strcmp(v, "gelu") == 0)
            a->enc.activation = ENC_ACT_GELU;
        else if (strcmp(o, "--act") == 0 && strcmp(v, "relu") == 0)
            a->enc.activation = ENC_ACT_RELU;
        else
            usage();
    }
    if (!a->out) usage();
    if (!a->ff_set) a->enc.d_ff = 4 * a->enc.d_model;
}

/* Writes to FILE.tmp and renames, so that an interrupted run leaves no torn
 * model behind for make to trust. */
static int write_file(const char *path, const char *head, size_t head_len, const float *params,
                      size_t n) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    int ok = fwrite(head, 1, head_len, f) == head_len && fwrite(params, sizeof *params, n, f) == n;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    Args a = {.enc = enc_default_config(32768), .seed = 1};
    char err[256];

    parse_args(&a, argc, argv);
    if (enc_check_config(&a.enc, err, sizeof err)) {
        fprintf(stderr, "make_model: %s\n", err);
        return 64;
    }

    TokConfig tok = tok_default_config((uint32_t)a.enc.vocab_size);
    size_t n = enc_param_count(&a.enc), head_len;
    float *params = malloc(n * sizeof *params);
    char *head;
    if (!params) {
        fprintf(stderr, "make_model: out of memory for %zu parameters\n", n);
        return 1;
    }
    enc_init_random(params, &a.enc, a.seed, a.flags);
    if (st_header(&head, &head_len, &a.enc, &tok, params, err, sizeof err)) {
        fprintf(stderr, "make_model: %s\n", err);
        return 1;
    }
    if (write_file(a.out, head, head_len, params, n)) {
        perror(a.out);
        return 1;
    }
    free(head);
    free(params);
    return 0;
}
