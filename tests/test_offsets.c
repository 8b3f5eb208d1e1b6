/* Commit points: only past messages whose outputs are all acknowledged. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "../daemon/offsets.h"

static OffsetTracker *t;
static void setup(void) {
    t = offtrack_new();
}
static void teardown(void) {
    offtrack_free(t);
}
TestSuite(offsets, .init = setup, .fini = teardown);

static int64_t done(OffsetToken *tok) {
    int32_t partition;
    return offtrack_done(t, tok, &partition);
}

Test(offsets, in_order_acknowledgements_advance_one_by_one) {
    OffsetToken *a = offtrack_add(t, 0, 10), *b = offtrack_add(t, 0, 11);
    cr_expect_eq(offtrack_pending(t), 2);
    cr_expect_eq(done(a), 11, "commit point is the next offset to read");
    cr_expect_eq(done(b), 12);
    cr_expect_eq(offtrack_pending(t), 0);
}

Test(offsets, a_gap_holds_the_commit_point_back) {
    OffsetToken *a = offtrack_add(t, 2, 100), *b = offtrack_add(t, 2, 101),
                *c = offtrack_add(t, 2, 102);
    cr_expect_eq(done(c), -1, "102 acknowledged before 100: nothing to commit yet");
    cr_expect_eq(done(b), -1);
    cr_expect_eq(offtrack_pending_in(t, 2), 1);
    cr_expect_eq(done(a), 103, "the gap closed: commit past all three");
}

Test(offsets, partitions_are_independent) {
    OffsetToken *a = offtrack_add(t, 0, 5), *b = offtrack_add(t, 1, 7);
    cr_expect_eq(done(b), 8);
    cr_expect_eq(offtrack_pending_in(t, 0), 1);
    int32_t partition;
    cr_expect_eq(offtrack_done(t, a, &partition), 6);
    cr_expect_eq(partition, 0);
}

Test(offsets, offsets_with_holes_commit_past_the_last_done) {
    /* Compacted topics and transaction markers leave holes in offsets. */
    OffsetToken *a = offtrack_add(t, 0, 10), *b = offtrack_add(t, 0, 15);
    cr_expect_eq(done(a), 11);
    cr_expect_eq(done(b), 16);
}

Test(offsets, reset_makes_old_tokens_stale) {
    OffsetToken *a = offtrack_add(t, 0, 1), *b = offtrack_add(t, 0, 2);
    offtrack_reset(t, 0);
    cr_expect_eq(offtrack_pending(t), 0);
    cr_expect_eq(done(a), -1, "a token from a revoked assignment must not store an offset");
    OffsetToken *c = offtrack_add(t, 0, 2);
    cr_expect_eq(done(b), -1);
    cr_expect_eq(done(c), 3);
}

Test(offsets, an_abandoned_message_blocks_its_partition) {
    OffsetToken *a = offtrack_add(t, 0, 1), *b = offtrack_add(t, 0, 2);
    offtrack_abandon(a);
    cr_expect_eq(done(b), -1, "never commit past a message whose output was not sent");
    cr_expect_eq(offtrack_pending(t), 1);
}

Test(offsets, many_in_flight_grow_the_ring_in_order) {
    enum { N = 100000 };
    OffsetToken **toks = malloc(N * sizeof *toks);
    for (int i = 0; i < N; i++) toks[i] = offtrack_add(t, 3, 1000 + i);
    /* Acknowledge in reverse: only the last acknowledgement moves the commit point. */
    for (int i = N - 1; i > 0; i--) cr_assert_eq(done(toks[i]), -1);
    cr_expect_eq(done(toks[0]), 1000 + N);
    cr_expect_eq(offtrack_pending(t), 0);
    free(toks);
}

Test(offsets, random_completion_order_never_passes_a_pending_offset) {
    enum { N = 5000 };
    OffsetToken **toks = malloc(N * sizeof *toks);
    char *acked = calloc(N, 1);
    int order[N];
    for (int i = 0; i < N; i++) {
        toks[i] = offtrack_add(t, 0, i);
        order[i] = i;
    }
    srand(7);
    for (int i = N - 1; i > 0; i--) {
        int j = rand() % (i + 1), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    int64_t committed = 0;
    for (int k = 0; k < N; k++) {
        acked[order[k]] = 1;
        int64_t c = done(toks[order[k]]);
        if (c < 0) continue;
        cr_assert_gt(c, committed, "the commit point went backwards");
        for (int64_t o = 0; o < c; o++) cr_assert(acked[o], "committed past unacked %ld", (long)o);
        committed = c;
    }
    cr_expect_eq(committed, N);
    free(toks);
    free(acked);
}
