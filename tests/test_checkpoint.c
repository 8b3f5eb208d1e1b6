/* Checkpoints: round trip, corruption detected and skipped, a crash while writing. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../daemon/checkpoint.h"
#include "harness.h"

static const char *dir;
static char skipped[8][600];
static int nskipped;

static void setup(void) {
    dir = harness_tmpdir();
    nskipped = 0;
}
static void teardown(void) {
    harness_cleanup();
}
TestSuite(checkpoint, .init = setup, .fini = teardown);

static void on_skip(void *ctx, const char *path, const char *why) {
    (void)ctx;
    if (nskipped < 8) snprintf(skipped[nskipped++], sizeof skipped[0], "%s: %s", path, why);
}

static void write_version(uint64_t version, float base) {
    enum { N = 1000 };
    static float p[N], m[N], v[N];
    for (int i = 0; i < N; i++) p[i] = base + (float)i, m[i] = -(float)i, v[i] = 0.5f * (float)i;
    Checkpoint ck = {version, 0xabcdef, "policy/1 D=144", 7 * version, p, m, v, N, 0};
    char err[600];
    cr_assert_eq(checkpoint_write(dir, &ck, 3, err, sizeof err), 0, "%s", err);
}

static char *path_of(uint64_t version) {
    static char path[600];
    snprintf(path, sizeof path, "%s/policy-%020llu.ckpt", dir, (unsigned long long)version);
    return path;
}

Test(checkpoint, round_trip_keeps_everything) {
    write_version(5, 100);
    Checkpoint ck;
    char err[600];
    cr_assert_eq(checkpoint_load_latest(dir, "policy/1 D=144", &ck, on_skip, NULL, err, sizeof err),
                 1, "%s", err);
    cr_expect_eq(ck.policy_version, 5);
    cr_expect_eq(ck.model_id, 0xabcdef);
    cr_expect_eq(ck.step, 35);
    cr_expect_eq(ck.nparams, 1000);
    cr_expect(ck.params[999] == 1099.0f && ck.m[3] == -3.0f && ck.v[4] == 2.0f);
    checkpoint_free(&ck);
}

Test(checkpoint, newest_wins_and_old_ones_are_pruned) {
    for (uint64_t v = 1; v <= 5; v++) write_version(v, (float)v);
    cr_expect_neq(access(path_of(1), F_OK), 0, "checkpoint 1 should be pruned (keep 3)");
    cr_expect_eq(access(path_of(3), F_OK), 0);
    Checkpoint ck;
    char err[600];
    cr_assert_eq(checkpoint_load_latest(dir, NULL, &ck, on_skip, NULL, err, sizeof err), 1);
    cr_expect_eq(ck.policy_version, 5);
    checkpoint_free(&ck);
}

static void corrupt_byte(const char *path, long at) {
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    fseek(f, at, at >= 0 ? SEEK_SET : SEEK_END);
    int c = fgetc(f);
    fseek(f, -1, SEEK_CUR);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

Test(checkpoint, a_corrupt_checkpoint_is_named_and_skipped) {
    write_version(1, 10);
    write_version(2, 20);
    corrupt_byte(path_of(2), 4000);
    Checkpoint ck;
    char err[600];
    cr_assert_eq(checkpoint_load_latest(dir, NULL, &ck, on_skip, NULL, err, sizeof err), 1);
    cr_expect_eq(ck.policy_version, 1, "fell back to the previous checkpoint");
    cr_expect(ck.params[0] == 10.0f);
    checkpoint_free(&ck);
    cr_assert_eq(nskipped, 1);
    cr_expect(strstr(skipped[0], "policy-00000000000000000002.ckpt: CRC mismatch"), "%s",
              skipped[0]);
}

Test(checkpoint, every_kind_of_damage_is_refused) {
    Checkpoint ck;
    char err[600];
    write_version(9, 1);
    char *path = path_of(9);

    truncate(path, 4000);
    cr_expect_eq(checkpoint_load(path, NULL, &ck, err, sizeof err), -1);
    cr_expect(strstr(err, "CRC mismatch"), "%s", err);

    truncate(path, 20);
    cr_expect_eq(checkpoint_load(path, NULL, &ck, err, sizeof err), -1);
    cr_expect(strstr(err, "too short"), "%s", err);

    write_version(9, 1);
    corrupt_byte(path, 0);
    cr_expect_eq(checkpoint_load(path, NULL, &ck, err, sizeof err), -1);
    cr_expect(strstr(err, "not a promptd checkpoint"), "%s", err);

    write_version(9, 1);
    cr_expect_eq(checkpoint_load(path, "policy/2 D=80", &ck, err, sizeof err), -1);
    cr_expect(strstr(err, "layout 'policy/1 D=144' is not the running policy's"), "%s", err);
}

/* A crash while writing leaves a temporary file and the previous checkpoint: the
 * temporary is never taken for a checkpoint. */
Test(checkpoint, a_crash_during_the_write_keeps_the_old_one) {
    write_version(1, 1);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp", path_of(2));
    FILE *f = fopen(tmp, "w");
    fputs("PDCKPT01 half a checkpoint", f);
    fclose(f);

    Checkpoint ck;
    char err[600];
    cr_assert_eq(checkpoint_load_latest(dir, NULL, &ck, on_skip, NULL, err, sizeof err), 1);
    cr_expect_eq(ck.policy_version, 1);
    cr_expect_eq(nskipped, 0, "the temporary file was considered: %s", skipped[0]);
    checkpoint_free(&ck);
}

Test(checkpoint, an_unwritable_directory_is_a_clear_error) {
    Checkpoint ck = {1, 0, "x", 0, (float[]){1}, (float[]){1}, (float[]){1}, 1, 0};
    char err[600];
    cr_expect_eq(checkpoint_write("/nonexistent/dir", &ck, 3, err, sizeof err), -1);
    cr_expect(strstr(err, "cannot create /nonexistent/dir/policy-"), "%s", err);
    cr_expect_eq(checkpoint_load_latest("/nonexistent/dir", NULL, &ck, NULL, NULL, err, sizeof err),
                 0, "no directory: no checkpoint, not an error");
}

/* What a policy snapshot on a Kafka topic is made of: the same bytes as the file, and the
 * same refusal of any damage, named after where they came from. */
Test(checkpoint, encoded_bytes_decode_to_the_same_policy_and_damage_is_refused) {
    enum { N = 300 };
    float p[N], m[N], v[N];
    for (int i = 0; i < N; i++) p[i] = (float)i / 7, m[i] = (float)-i, v[i] = (float)(i * i);
    Checkpoint ck = {42, 0x1234, "policy/1 D=144", 9, p, m, v, N, 0};
    size_t len;
    unsigned char *bytes = checkpoint_encode(&ck, &len);
    cr_assert_not_null(bytes);

    char err[600];
    cr_assert_eq(checkpoint_write(dir, &ck, 3, err, sizeof err), 0, "%s", err);
    size_t file_len = 0;
    char *file = harness_read_file(path_of(42), &file_len);
    cr_assert_not_null(file);
    cr_expect(file_len == len && memcmp(file, bytes, len) == 0,
              "the encoded bytes are not the file's");
    free(file);

    Checkpoint back;
    cr_assert_eq(
        checkpoint_decode("policy@7", bytes, len, "policy/1 D=144", &back, err, sizeof err), 0,
        "%s", err);
    cr_expect_eq(back.policy_version, 42);
    cr_expect_eq(back.step, 9);
    cr_expect_eq(memcmp(back.params, p, sizeof p), 0);
    cr_expect_eq(memcmp(back.v, v, sizeof v), 0);
    checkpoint_free(&back);

    bytes[200] ^= 1;
    cr_expect_eq(checkpoint_decode("policy@7", bytes, len, NULL, &back, err, sizeof err), -1);
    cr_expect(strstr(err, "policy@7") && strstr(err, "CRC"), "%s", err);
    bytes[200] ^= 1;
    cr_expect_eq(checkpoint_decode("policy@7", bytes, len - 1, NULL, &back, err, sizeof err), -1);
    cr_expect_eq(checkpoint_decode("policy@7", bytes, 20, NULL, &back, err, sizeof err), -1);
    cr_expect(strstr(err, "too short"), "%s", err);
    cr_expect_eq(
        checkpoint_decode("policy@7", bytes, len, "policy/1 D=208", &back, err, sizeof err), -1);
    cr_expect(strstr(err, "layout"), "%s", err);
    free(bytes);
}
