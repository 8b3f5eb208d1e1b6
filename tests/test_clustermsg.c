/* The messages of distributed learning: round trips, and every damage refused with a reason. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/clustermsg.h"

static unsigned char *encode_one(size_t *len, const char *id) {
    static unsigned char record[97];
    for (size_t i = 0; i < sizeof record; i++) record[i] = (unsigned char)(i * 31 + 7);
    Experience e = {.decision = "{\"id\":\"ignored\"}",
                    .record = record,
                    .record_len = sizeof record,
                    .reward = -0.625,
                    .events = 3,
                    .made_ms = 1764800000123};
    unsigned char *bytes = clustermsg_experience_encode(&e, id, len);
    cr_assert_not_null(bytes);
    return bytes;
}

Test(clustermsg, a_message_decodes_to_the_experience_it_was_made_from) {
    size_t len;
    unsigned char *bytes = encode_one(&len, "alarm-\xc3\xa9-17");
    Experience e;
    char err[200];
    cr_assert_eq(clustermsg_experience_decode(bytes, len, &e, err, sizeof err), 0, "%s", err);

    cr_expect(e.reward == -0.625);
    cr_expect_eq(e.events, 3);
    cr_expect_eq(e.made_ms, 1764800000123);
    cr_assert_eq(e.record_len, 97);
    for (size_t i = 0; i < e.record_len; i++)
        cr_assert_eq(((unsigned char *)e.record)[i], (unsigned char)(i * 31 + 7));
    json_t *d = json_loads(e.decision, 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(d, "id")), "alarm-\xc3\xa9-17");
    json_decref(d);
    experience_free(&e);
    free(bytes);
}

Test(clustermsg, every_damage_is_refused_with_a_reason) {
    size_t len;
    unsigned char *bytes = encode_one(&len, "id-1");
    Experience e;
    char err[200];

    for (size_t at = 0; at < len; at += 5) {
        bytes[at] ^= 0x40;
        cr_expect_eq(clustermsg_experience_decode(bytes, len, &e, err, sizeof err), -1, "byte %zu",
                     at);
        cr_expect(strstr(err, "experience message: "), "%s", err);
        bytes[at] ^= 0x40;
    }
    for (size_t cut = 0; cut < len; cut += 7)
        cr_expect_eq(clustermsg_experience_decode(bytes, cut, &e, err, sizeof err), -1,
                     "cut at %zu", cut);
    cr_expect_eq(
        clustermsg_experience_decode("PDCKPT01 and more bytes than that", 33, &e, err, sizeof err),
        -1);
    cr_expect(strstr(err, "not one of promptd's"), "%s", err);
    free(bytes);
}

Test(clustermsg, a_snapshot_carries_the_policy_and_where_to_resume_and_refuses_damage) {
    enum { N = 200 };
    float p[N], m[N], v[N];
    for (int i = 0; i < N; i++) p[i] = (float)i * 0.25f, m[i] = (float)-i, v[i] = (float)i;
    Checkpoint ck = {17, 0x77, "policy/1 D=8", 5, p, m, v, N, 0};
    size_t len;
    unsigned char *bytes = clustermsg_snapshot_encode(&ck, 123456789012, &len);
    cr_assert_not_null(bytes);

    Checkpoint back;
    int64_t next = 0;
    char err[300];
    cr_assert_eq(clustermsg_snapshot_decode("policy [0] @3", bytes, len, "policy/1 D=8", &back,
                                            &next, err, sizeof err),
                 0, "%s", err);
    cr_expect_eq(next, 123456789012);
    cr_expect_eq(back.policy_version, 17);
    cr_expect_eq(back.model_id, 0x77);
    cr_expect_eq(memcmp(back.params, p, sizeof p), 0);
    cr_expect_eq(memcmp(back.m, m, sizeof m), 0);
    checkpoint_free(&back);

    size_t damaged = 0;
    for (size_t at = 0; at < len; at += 97) {
        bytes[at] ^= 0x10;
        int rc = clustermsg_snapshot_decode("policy [0] @3", bytes, len, NULL, &back, &next, err,
                                            sizeof err);
        if (rc == 0) checkpoint_free(&back);
        damaged += rc == -1 && strstr(err, "policy [0] @3") != NULL;
        bytes[at] ^= 0x10;
    }
    cr_expect_eq(damaged, (len + 96) / 97, "a damaged snapshot was taken");
    cr_expect_eq(
        clustermsg_snapshot_decode("x", bytes, len, "policy/1 D=16", &back, &next, err, sizeof err),
        -1);
    cr_expect(strstr(err, "layout"), "%s", err);
    free(bytes);
}
