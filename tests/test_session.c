/* Session context: turns, the previous template and reward, the running mean, expiry. */
#include <criterion/criterion.h>
#include <string.h>

#include "../daemon/session.h"

Test(session, a_new_session_has_no_context) {
    SessionStore *s = session_new(4, 1000, 10);
    SessionView v = session_get(s, "inc-1", 5, 0);
    cr_expect(v.turn == 0 && v.prev_template == 0 && !v.has_reward && v.count == 0);
    session_free(s);
}

Test(session, decisions_and_rewards_build_the_context) {
    SessionStore *s = session_new(2, 1000, 10);
    float a[2] = {1, 0}, b[2] = {0, 1}, c[2] = {1, 1};
    session_decided(s, "inc", 3, 11, a, 0);
    session_rewarded(s, "inc", 3, 0.5, 10);
    SessionView v = session_get(s, "inc", 3, 20);
    cr_expect(v.turn == 1 && v.prev_template == 11 && v.has_reward && v.prev_reward == 0.5);

    session_decided(s, "inc", 3, 22, b, 30);
    session_decided(s, "inc", 3, 33, c, 40);
    v = session_get(s, "inc", 3, 50);
    cr_expect_eq(v.turn, 3);
    cr_expect_eq(v.prev_template, 33);
    cr_expect(!v.has_reward, "a new decision's reward is not known yet");
    cr_expect_float_eq(v.mean[0], 2.0f / 3, 1e-6);
    cr_expect_float_eq(v.mean[1], 2.0f / 3, 1e-6);
    session_free(s);
}

Test(session, sessions_expire_after_their_ttl_and_beyond_capacity) {
    SessionStore *s = session_new(1, 100, 2);
    float x[1] = {1};
    session_decided(s, "a", 1, 1, x, 0);
    session_decided(s, "b", 1, 1, x, 50);
    cr_expect_eq(session_get(s, "a", 1, 120).turn, 0, "a was unseen for longer than the TTL");
    cr_expect_eq(session_get(s, "b", 1, 120).turn, 1);
    session_decided(s, "c", 1, 1, x, 130);
    session_decided(s, "d", 1, 1, x, 131);
    cr_expect_eq(session_count(s), 2);
    cr_expect_eq(session_get(s, "b", 1, 132).turn, 0, "the least recently seen went first");
    cr_expect_eq(session_get(s, "d", 1, 132).turn, 1);
    session_free(s);
}
