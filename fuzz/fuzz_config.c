/*
 * libFuzzer harness: the configuration parser (daemon/config.h), which reads files only.
 * Each input is written to one file in a private temporary directory and loaded from there,
 * then dumped, as `promptd --check` would do.
 *
 * An include is resolved relative to the including file, so with no '/' in its value it
 * can only reach the temporary directory (the input itself, or the directory entries).
 * Inputs whose include lines hold a '/' or a ${...} (which could expand to one) are skipped:
 * they would let the fuzzer read /dev/zero, /dev/stdin or the whole file system.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/config.h"

static char dir[64], path[96];
static FILE *devnull;

static void cleanup(void) {
    unlink(path);
    rmdir(dir);
}

static int setup(void) {
    snprintf(dir, sizeof dir, "/tmp/fuzz_config.XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(path, sizeof path, "%s/input.conf", dir);
    devnull = fopen("/dev/null", "w");
    atexit(cleanup);
    return devnull ? 0 : -1;
}

/* True when some line's first word starts with "include" and the rest of the line (NUL
 * bytes included, to err on the safe side) has a '/' or a '$'. */
static bool escaping_include(const uint8_t *data, size_t size) {
    for (size_t i = 0; i < size;) {
        size_t end = i;
        while (end < size && data[end] != '\n') end++;
        size_t k = i;
        while (k < end && (data[k] == ' ' || data[k] == '\t' || data[k] == '\r')) k++;
        if (end - k >= 7 && !memcmp(data + k, "include", 7) &&
            (memchr(data + k, '/', end - k) || memchr(data + k, '$', end - k)))
            return true;
        i = end + 1;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!devnull && setup()) abort();
    if (escaping_include(data, size)) return 0;

    FILE *f = fopen(path, "w");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f)) abort();

    Config c;
    ConfigErrors errs = {0};
    config_init(&c);
    int n = config_load(&c, path, &errs);
    /* Errors are counted and written as text, or not at all. */
    if (n < 0 || (n > 0) != (errs.len > 0) || strlen(errs.text) != errs.len) abort();
    config_dump(&c, devnull);
    config_free(&c);
    return 0;
}
