/*
 * The checkpoint file:
 *
 *   offset  size  field
 *   0       8     magic "PDCKPT01"
 *   8       8     policy version          (little-endian, as every number here)
 *   16      8     model id
 *   24      8     optimiser step
 *   32      8     parameter count n
 *   40      96    layout, NUL-padded
 *   136     12n   parameters, first moments, second moments (float32)
 *   end-4   4     CRC-32 (zlib) of everything before it
 */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC       "PDCKPT01"
#define HEADER_SIZE (8 + 8 * 4 + CHECKPOINT_LAYOUT_MAX)
#define PARAMS_MAX  ((size_t)1 << 28) /* a sanity bound: no policy has a billion floats */

void checkpoint_free(Checkpoint *ck) {
    free(ck->params);
    free(ck->m);
    free(ck->v);
    memset(ck, 0, sizeof *ck);
}

/* --- writing --- */

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int write_all(int fd, const void *buf, size_t len, uLong *crc) {
    *crc = crc32(*crc, buf, (uInt)len);
    for (const char *p = buf; len > 0;) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void put_header(unsigned char *header, const Checkpoint *ck) {
    memset(header, 0, HEADER_SIZE);
    memcpy(header, MAGIC, 8);
    put_u64(header + 8, ck->policy_version);
    put_u64(header + 16, ck->model_id);
    put_u64(header + 24, ck->step);
    put_u64(header + 32, ck->nparams);
    memcpy(header + 40, ck->layout, strnlen(ck->layout, CHECKPOINT_LAYOUT_MAX - 1));
}

static void put_crc(unsigned char *p, uLong crc) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(crc >> (8 * i));
}

static int write_body(int fd, const Checkpoint *ck) {
    unsigned char header[HEADER_SIZE];
    put_header(header, ck);

    uLong crc = crc32(0, NULL, 0);
    size_t bytes = ck->nparams * sizeof(float);
    if (write_all(fd, header, sizeof header, &crc) || write_all(fd, ck->params, bytes, &crc) ||
        write_all(fd, ck->m, bytes, &crc) || write_all(fd, ck->v, bytes, &crc))
        return -1;
    unsigned char tail[4];
    put_crc(tail, crc);
    uLong unused = 0;
    return write_all(fd, tail, 4, &unused);
}

/* The rename is only durable once the directory entry is on disk too. */
static int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int is_checkpoint(const char *name) {
    size_t len = strlen(name);
    return len > 12 && !strncmp(name, "policy-", 7) && !strcmp(name + len - 5, ".ckpt");
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The checkpoint names of dir, sorted oldest first (the version is zero-padded). */
static char **list_checkpoints(const char *dir, size_t *count) {
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    if (!d) return NULL;
    while ((e = readdir(d))) {
        if (!is_checkpoint(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        if (!(names[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, compare_names);
    *count = n;
    return names ? names : calloc(1, sizeof *names);
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static void prune(const char *dir, int keep) {
    size_t n = 0;
    char **names = list_checkpoints(dir, &n);
    for (size_t i = 0; names && keep > 0 && i + (size_t)keep < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    free_names(names, n);
}

int checkpoint_write(const char *dir, const Checkpoint *ck, int keep, char *err, size_t errlen) {
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/policy-%020" PRIu64 ".ckpt", dir, ck->policy_version);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    int rc = write_body(fd, ck);
    if (rc == 0) rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0) rc = -1, saved = errno;
    if (rc == 0 && sync_dir(dir) != 0) rc = -1, saved = errno;
    if (rc) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(saved));
        unlink(tmp);
        return -1;
    }
    prune(dir, keep);
    return 0;
}

void *checkpoint_encode(const Checkpoint *ck, size_t *len) {
    size_t bytes = ck->nparams * sizeof(float);
    *len = HEADER_SIZE + 3 * bytes + 4;
    unsigned char *buf = malloc(*len);
    if (!buf) return NULL;

    put_header(buf, ck);
    memcpy(buf + HEADER_SIZE, ck->params, bytes);
    memcpy(buf + HEADER_SIZE + bytes, ck->m, bytes);
    memcpy(buf + HEADER_SIZE + 2 * bytes, ck->v, bytes);
    put_crc(buf + *len - 4, crc32(crc32(0, NULL, 0), buf, (uInt)(*len - 4)));
    return buf;
}

/* --- reading --- */

static int fail(char *err, size_t errlen, const char *path, const char *why) {
    snprintf(err, errlen, "%s: %s", path, why);
    return -1;
}

static int read_file(const char *path, unsigned char **data, size_t *len, char *err,
                     size_t errlen) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f) return fail(err, errlen, path, strerror(errno));
    if (fstat(fileno(f), &st) || st.st_size < HEADER_SIZE + 4) {
        fclose(f);
        return fail(err, errlen, path, "too short to be a checkpoint (truncated?)");
    }
    *len = (size_t)st.st_size;
    *data = malloc(*len);
    bool ok = *data && fread(*data, 1, *len, f) == *len;
    fclose(f);
    if (!ok) {
        free(*data);
        return fail(err, errlen, path, "cannot read it");
    }
    return 0;
}

static int parse(const char *path, const unsigned char *data, size_t len, const char *layout,
                 Checkpoint *out, char *err, size_t errlen) {
    if (memcmp(data, MAGIC, 8)) return fail(err, errlen, path, "not a promptd checkpoint");
    uLong crc = crc32(crc32(0, NULL, 0), data, (uInt)(len - 4));
    const unsigned char *t = data + len - 4;
    uint32_t stored =
        (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
    if (stored != (uint32_t)crc)
        return fail(err, errlen, path, "CRC mismatch (corrupt or partly written)");

    size_t n = get_u64(data + 32);
    if (n == 0 || n > PARAMS_MAX || len != HEADER_SIZE + 12 * n + 4)
        return fail(err, errlen, path, "parameter count does not match the file's size");
    char file_layout[CHECKPOINT_LAYOUT_MAX + 1] = {0};
    memcpy(file_layout, data + 40, CHECKPOINT_LAYOUT_MAX);
    if (layout && strcmp(file_layout, layout)) {
        char why[300];
        snprintf(why, sizeof why, "layout '%s' is not the running policy's '%s'", file_layout,
                 layout);
        return fail(err, errlen, path, why);
    }

    Checkpoint ck = {.policy_version = get_u64(data + 8),
                     .model_id = get_u64(data + 16),
                     .step = get_u64(data + 24),
                     .params = malloc(4 * n),
                     .m = malloc(4 * n),
                     .v = malloc(4 * n),
                     .nparams = n,
                     .crc = stored};
    if (!ck.params || !ck.m || !ck.v) {
        checkpoint_free(&ck);
        return fail(err, errlen, path, "out of memory");
    }
    memcpy(ck.layout, file_layout, CHECKPOINT_LAYOUT_MAX - 1);
    memcpy(ck.params, data + HEADER_SIZE, 4 * n);
    memcpy(ck.m, data + HEADER_SIZE + 4 * n, 4 * n);
    memcpy(ck.v, data + HEADER_SIZE + 8 * n, 4 * n);
    *out = ck;
    return 0;
}

int checkpoint_decode(const char *name, const void *data, size_t len, const char *layout,
                      Checkpoint *out, char *err, size_t errlen) {
    if (len < HEADER_SIZE + 4) return fail(err, errlen, name, "too short to be a checkpoint");
    return parse(name, data, len, layout, out, err, errlen);
}

int checkpoint_load(const char *path, const char *layout, Checkpoint *out, char *err,
                    size_t errlen) {
    unsigned char *data;
    size_t len;
    if (read_file(path, &data, &len, err, errlen)) return -1;
    int rc = parse(path, data, len, layout, out, err, errlen);
    free(data);
    return rc;
}

int checkpoint_load_latest(const char *dir, const char *layout, Checkpoint *out,
                           CheckpointSkip skip, void *ctx, char *err, size_t errlen) {
    size_t n = 0;
    char **names = list_checkpoints(dir, &n);
    if (!names) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "cannot read %s: %s", dir, strerror(errno));
        return -1;
    }

    int found = 0;
    for (size_t i = n; i-- > 0 && !found;) {
        char path[PATH_MAX], why[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (checkpoint_load(path, layout, out, why, sizeof why) == 0)
            found = 1;
        else if (skip)
            skip(ctx, path, why);
    }
    free_names(names, n);
    return found;
}
