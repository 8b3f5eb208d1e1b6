/*
 * libFuzzer harness: the model file loader (kernels/safetensors.h), which validates a whole
 * file held in memory, exactly as model_load hands it the mapped file. A file is either
 * loaded whole or refused with a message and the model left zeroed.
 */
#include <stdlib.h>
#include <string.h>

#include "../kernels/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The weights are used in place, so the copy sits where a mapping would: on an
     * aligned address, with the loader's alignment check still seeing the file's offsets. */
    void *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    StModel m;
    char err[512] = "";
    if (st_load(&m, buf, size, err, sizeof err) == 0) {
        /* A loaded model points into the file and has a well-formed id. */
        if (m.data_len > size || (const char *)m.data < (const char *)buf ||
            strlen(m.model_id) != 16)
            abort();
    } else {
        static const StModel zero;
        if (!err[0] || memcmp(&m, &zero, sizeof m)) abort();
    }
    free(buf);
    return 0;
}
