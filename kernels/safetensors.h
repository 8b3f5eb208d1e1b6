/* safetensors.h - the encoder's model file: safetensors layout, validated in memory.
 *
 * A model file is an 8-byte little-endian header length, a JSON header naming each
 * tensor ({"dtype", "shape", "data_offsets"}) plus "__metadata__" (architecture,
 * tokeniser parameters, model id), then the tensors' bytes. Tensor names mirror the
 * PyTorch modules (kernels/encoder.h lists them), so a model trained in PyTorch
 * exports to it directly (tests/reference/st_io.py). The metadata keys are listed
 * in kernels/ENCODER.md.
 *
 * No I/O: the caller maps or reads the file and passes its bytes; the loaded
 * weights point into those bytes, which must outlive the model. jansson allocates
 * while the header is parsed and everything is freed before returning.
 * Little-endian hosts only (the tensors are used in place).
 */
#ifndef PD_SAFETENSORS_H
#define PD_SAFETENSORS_H

#include "encoder.h"
#include "tokenize.h"

#include <stddef.h>

#define ST_ARCH       "promptd-encoder" /* metadata "arch" */
#define ST_MAX_HEADER (100u << 20)      /* largest header accepted, as safetensors' own */

typedef struct {
    EncConfig enc;
    TokConfig tok;
    EncWeights w;      /* points into the buffer given to st_load */
    char model_id[17]; /* XXH64 of the data section, 16 lower-case hex digits */
    const void *data;  /* the data section, for hashing or checksums */
    size_t data_len;   /* its bytes */
} StModel;

/* Validates buf[0..len) as a complete model file and fills m. Every header field,
 * shape, dtype (F32 only), offset (in bounds, contiguous, non-overlapping,
 * 4-byte aligned in memory), the metadata's consistency with the shapes, the
 * model id and the finiteness of every weight are checked. Returns 0, or -1 with
 * a message naming what is wrong in err and m zeroed: never half-loaded. */
int st_load(StModel *m, const void *buf, size_t len, char *err, size_t errlen);

/* Writes the 16 hex digits and NUL of the model id of a data section. */
void st_model_id(char out[17], const void *data, size_t len);

/* Builds the part of a model file before the data: header length, JSON header
 * (compact, sorted keys: deterministic) and space padding to a multiple of 8
 * bytes. params holds enc_param_count(enc) floats in canonical order; the file is
 * this header followed by those floats. *out is malloc'd (the caller frees it).
 * Returns 0, or -1 with a message (bad configuration, out of memory). */
int st_header(char **out, size_t *out_len, const EncConfig *enc, const TokConfig *tok,
              const float *params, char *err, size_t errlen);

#endif
