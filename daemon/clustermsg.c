/*
 * An experience message:
 *
 *   offset  size  field
 *   0       8     magic "PDEXP001"
 *   8       8     reward (IEEE 754 double, little-endian as every number here)
 *   16      4     events joined (0: the default reward)
 *   20      8     when the decision was made, ms since the epoch
 *   28      2     id length L
 *   30      L     id (UTF-8, as the prompt had it)
 *   30+L    4     record length R
 *   34+L    R     learning record
 *   end-4   4     CRC-32 (zlib) of everything before it
 *
 * A policy snapshot:
 *
 *   0       8     magic "PDPOL001"
 *   8       8     next experience offset (-1: none learned from the topic yet)
 *   16      n     a checkpoint file's bytes (checkpoint.c), with its own CRC-32
 *   end-4   4     CRC-32 of everything before it
 */
#include "clustermsg.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define MAGIC      "PDEXP001"
#define SNAP_MAGIC "PDPOL001"
#define FIXED_SIZE (8 + 8 + 4 + 8 + 2 + 4 + 4)
#define RECORD_MAX ((size_t)1 << 24) /* far above any policy's record; bounds a bad length */

static void put_le(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

void *clustermsg_experience_encode(const Experience *e, const char *id, size_t *len) {
    size_t id_len = strlen(id);
    if (id_len > UINT16_MAX || e->record_len > RECORD_MAX) return NULL;
    *len = FIXED_SIZE + id_len + e->record_len;
    unsigned char *buf = malloc(*len), *p = buf;
    if (!buf) return NULL;

    uint64_t reward_bits;
    memcpy(&reward_bits, &e->reward, sizeof reward_bits);
    memcpy(p, MAGIC, 8);
    put_le(p + 8, reward_bits, 8);
    put_le(p + 16, e->events, 4);
    put_le(p + 20, (uint64_t)e->made_ms, 8);
    put_le(p + 28, id_len, 2);
    p += 30;
    memcpy(p, id, id_len);
    p += id_len;
    put_le(p, e->record_len, 4);
    memcpy(p + 4, e->record, e->record_len);

    put_le(buf + *len - 4, crc32(crc32(0, NULL, 0), buf, (uInt)(*len - 4)), 4);
    return buf;
}

static int fail(char *err, size_t errlen, const char *why) {
    snprintf(err, errlen, "experience message: %s", why);
    return -1;
}

int clustermsg_experience_decode(const void *data, size_t len, Experience *out, char *err,
                                 size_t errlen) {
    const unsigned char *b = data;
    if (len < FIXED_SIZE || memcmp(b, MAGIC, 8)) return fail(err, errlen, "not one of promptd's");
    if (get_le(b + len - 4, 4) != crc32(crc32(0, NULL, 0), b, (uInt)(len - 4)))
        return fail(err, errlen, "CRC mismatch (damaged)");
    size_t id_len = get_le(b + 28, 2);
    if (FIXED_SIZE + id_len > len) return fail(err, errlen, "id longer than the message");
    size_t record_len = get_le(b + 30 + id_len, 4);
    if (FIXED_SIZE + id_len + record_len != len)
        return fail(err, errlen, "record length does not match the message's size");

    Experience e = {.events = (unsigned)get_le(b + 16, 4),
                    .made_ms = (int64_t)get_le(b + 20, 8),
                    .record_len = record_len};
    uint64_t reward_bits = get_le(b + 8, 8);
    memcpy(&e.reward, &reward_bits, sizeof e.reward);
    json_t *decision = json_object();
    if (decision) json_object_set_new(decision, "id", json_stringn((const char *)b + 30, id_len));
    e.decision = decision ? json_dumps(decision, JSON_COMPACT) : NULL;
    json_decref(decision);
    e.record = malloc(record_len ? record_len : 1);
    if (!e.decision || !e.record) {
        experience_free(&e);
        return fail(err, errlen, "out of memory");
    }
    memcpy(e.record, b + 34 + id_len, record_len);
    *out = e;
    return 0;
}

void *clustermsg_snapshot_encode(const Checkpoint *ck, int64_t next_offset, size_t *len) {
    size_t ck_len;
    unsigned char *ck_bytes = checkpoint_encode(ck, &ck_len);
    unsigned char *buf = ck_bytes ? malloc(16 + ck_len + 4) : NULL;
    if (!buf) {
        free(ck_bytes);
        return NULL;
    }

    memcpy(buf, SNAP_MAGIC, 8);
    put_le(buf + 8, (uint64_t)next_offset, 8);
    memcpy(buf + 16, ck_bytes, ck_len);
    free(ck_bytes);
    *len = 16 + ck_len + 4;
    put_le(buf + *len - 4, crc32(crc32(0, NULL, 0), buf, (uInt)(*len - 4)), 4);
    return buf;
}

int clustermsg_snapshot_decode(const char *name, const void *data, size_t len, const char *layout,
                               Checkpoint *ck, int64_t *next_offset, char *err, size_t errlen) {
    const unsigned char *b = data;
    if (len < 16 + 4 || memcmp(b, SNAP_MAGIC, 8)) {
        snprintf(err, errlen, "%s: not a promptd policy snapshot", name);
        return -1;
    }
    if (get_le(b + len - 4, 4) != crc32(crc32(0, NULL, 0), b, (uInt)(len - 4))) {
        snprintf(err, errlen, "%s: CRC mismatch (corrupt policy snapshot)", name);
        return -1;
    }
    if (checkpoint_decode(name, b + 16, len - 20, layout, ck, err, errlen)) return -1;
    *next_offset = (int64_t)get_le(b + 8, 8);
    return 0;
}
