/*
 * libFuzzer harness: the checkpoint loader (daemon/checkpoint.h), which reads files only.
 * Each input is written as a checkpoint file in a private temporary directory and loaded
 * three ways: as it is, then with its CRC-32 corrected (so that mutations reach the checks
 * behind the checksum) for the running layout and for any layout, and through
 * checkpoint_load_latest, as promptd does on start.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "../daemon/checkpoint.h"

/* The layout the seeds were written with (learner_layout's format). */
#define LAYOUT "policy/1 D=8 E=4 H=4 Q=2"

static char dir[64], path[128];

static void cleanup(void) {
    unlink(path);
    rmdir(dir);
}

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/fuzz_checkpoint.XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(path, sizeof path, "%s/policy-00000000000000000001.ckpt", dir);
    atexit(cleanup);
}

static void put_file(const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
}

static void load(const char *layout) {
    Checkpoint ck;
    char err[512] = "";
    if (checkpoint_load(path, layout, &ck, err, sizeof err) == 0)
        checkpoint_free(&ck);
    else if (!err[0])
        abort(); /* a refusal says why */
}

static void skipped(void *ctx, const char *file, const char *why) {
    (void)ctx, (void)file;
    if (!why[0]) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) setup();

    put_file(data, size);
    load(LAYOUT);
    if (size < 4) return 0;

    uint8_t *fixed = malloc(size);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    uLong crc = crc32(crc32(0, NULL, 0), fixed, (uInt)(size - 4));
    for (int i = 0; i < 4; i++) fixed[size - 4 + (size_t)i] = (uint8_t)(crc >> (8 * i));
    put_file(fixed, size);
    free(fixed);
    load(LAYOUT);
    load(NULL);

    Checkpoint ck;
    char err[512] = "";
    int rc = checkpoint_load_latest(dir, LAYOUT, &ck, skipped, NULL, err, sizeof err);
    if (rc == 1) checkpoint_free(&ck);
    if (rc < 0) abort(); /* the directory exists and is readable */
    return 0;
}
