/* Decoding prompts and encoding decisions and dead letters. */
#include <criterion/criterion.h>
#include <math.h>
#include <jansson.h>
#include <string.h>

#include "../daemon/message.h"

/* A string literal and its length, which may include NUL bytes. */
#define LIT(s) s, sizeof(s) - 1

static Prompt p;
static char why[512];

static MsgReason decode(const char *text) {
    return msg_decode_prompt(&p, text, strlen(text), 65536, why, sizeof why);
}

static void expect_reason(const char *payload, size_t len, MsgReason want, const char *fragment) {
    MsgReason got = msg_decode_prompt(&p, payload, len, 1024, why, sizeof why);
    cr_expect_eq(got, want, "for %.60s: got %s, want %s (%s)", payload, msg_reason_name(got),
                 msg_reason_name(want), why);
    cr_expect(strstr(why, fragment), "reason '%s' lacks '%s'", why, fragment);
    cr_expect_null(p.root, "a refused prompt keeps no JSON");
}

Test(message, decodes_a_full_prompt) {
    cr_assert_eq(decode("{\"id\":\"a-1\",\"text\":\"UPS-3 on battery\",\"session\":\"inc-9\","
                        "\"attrs\":{\"site\":\"dc1\"}}"),
                 MSG_OK, "%s", why);
    cr_expect_str_eq(p.id, "a-1");
    cr_expect_eq(p.id_len, 3);
    cr_expect_eq(p.text_len, 16);
    cr_expect(!strncmp(p.text, "UPS-3 on battery", p.text_len));
    cr_expect(!strncmp(p.session, "inc-9", p.session_len));
    cr_expect_str_eq(json_string_value(json_object_get(p.attrs, "site")), "dc1");
    msg_prompt_free(&p);
}

Test(message, integer_ids_become_their_decimal_text) {
    cr_assert_eq(decode("{\"id\":12345678901,\"text\":\"x\"}"), MSG_OK, "%s", why);
    cr_expect_str_eq(p.id, "12345678901");
    msg_prompt_free(&p);
}

Test(message, chinese_text_and_escapes_decode) {
    cr_assert_eq(decode("{\"id\":\"z\",\"text\":\"风机12号 \\u6e29\\u5ea6\\n高\"}"), MSG_OK, "%s",
                 why);
    cr_expect(!strncmp(p.text, "风机12号 温度\n高", p.text_len));
    msg_prompt_free(&p);
}

Test(message, optional_fields_may_be_null_or_absent) {
    cr_assert_eq(decode("{\"id\":\"a\",\"text\":\"t\",\"session\":null,\"attrs\":null}"), MSG_OK);
    cr_expect_null(p.session);
    cr_expect_null(p.attrs);
    msg_prompt_free(&p);
}

Test(message, every_refusal_has_a_reason_and_a_sentence) {
    char big[1100];
    memset(big, 'a', sizeof big);
    expect_reason(big, sizeof big, MSG_TOO_LARGE, "more than prompt.max_bytes (1024)");
    expect_reason(LIT("{\"id\":\"a\",\"text\":\"\xff\"}"), MSG_INVALID_UTF8, "offset 18");
    expect_reason(LIT("{\"id\":\"a\",\"text\":\"\xed\xa0\x80\"}"), MSG_INVALID_UTF8,
                  "not valid UTF-8");
    expect_reason(LIT("{\"id\":\"a\",\"text\":\"\xc0\xaf\"}"), MSG_INVALID_UTF8, "UTF-8");
    expect_reason(LIT("{\"id\":\"a\","), MSG_INVALID_JSON, "not valid JSON");
    expect_reason(LIT(""), MSG_INVALID_JSON, "not valid JSON");
    expect_reason(NULL, 0, MSG_INVALID_JSON, "null payload");
    expect_reason(LIT("[1,2]"), MSG_NOT_AN_OBJECT, "is an array");
    expect_reason(LIT("\"text\""), MSG_NOT_AN_OBJECT, "is a string");
    expect_reason(LIT("{\"text\":\"x\"}"), MSG_MISSING_ID, "no \"id\"");
    expect_reason(LIT("{\"id\":1.5,\"text\":\"x\"}"), MSG_INVALID_ID, "is a number");
    expect_reason(LIT("{\"id\":\"\",\"text\":\"x\"}"), MSG_INVALID_ID, "1 to 256 bytes");
    expect_reason(LIT("{\"id\":\"a\\u0000b\",\"text\":\"x\"}"), MSG_INVALID_ID, "without NUL");
    expect_reason(LIT("{\"id\":\"a\"}"), MSG_MISSING_TEXT, "no \"text\"");
    expect_reason(LIT("{\"id\":\"a\",\"text\":\" \\n \"}"), MSG_MISSING_TEXT, "is empty");
    expect_reason(LIT("{\"id\":\"a\",\"text\":[]}"), MSG_INVALID_TEXT, "is an array");
    expect_reason(LIT("{\"id\":\"a\",\"text\":\"x\",\"session\":3}"), MSG_INVALID_FIELD,
                  "\"session\" is an integer");
    expect_reason(LIT("{\"id\":\"a\",\"text\":\"x\",\"attrs\":\"s\"}"), MSG_INVALID_FIELD,
                  "\"attrs\" is a string");
}

Test(message, ids_longer_than_the_limit_are_refused) {
    char doc[600];
    snprintf(doc, sizeof doc, "{\"id\":\"%0257d\",\"text\":\"x\"}", 0);
    expect_reason(doc, strlen(doc), MSG_INVALID_ID, "got 257 bytes");
}

Test(message, deep_nesting_is_refused_not_crashed) {
    static char doc[200000];
    size_t n = 0;
    for (int i = 0; i < 50000; i++) doc[n++] = '[';
    cr_expect_eq(msg_decode_prompt(&p, doc, n, sizeof doc, why, sizeof why), MSG_INVALID_JSON);
}

Test(message, reason_names_are_stable) {
    cr_expect_str_eq(msg_reason_name(MSG_INVALID_JSON), "invalid_json");
    cr_expect_str_eq(msg_reason_name(MSG_INVALID_UTF8), "invalid_utf8");
    cr_expect_str_eq(msg_reason_name(MSG_MISSING_ID), "missing_id");
    cr_expect_str_eq(msg_reason_name(MSG_MISSING_TEXT), "missing_text");
    cr_expect_str_eq(msg_reason_name(MSG_TOO_LARGE), "too_large");
    cr_expect_str_eq(msg_reason_name(MSG_NO_TEMPLATE), "no_template");
    cr_expect_str_eq(msg_reason_name(MSG_RENDER_ERROR), "render_error");
    cr_expect_str_eq(msg_reason_name(MSG_REASON_COUNT), "unknown");
}

/* --- encoding --- */

Test(message, decision_round_trips_through_json) {
    MsgBuf out = {0};
    cr_assert_eq(decode("{\"id\":\"q\\\"1\",\"text\":\"x\",\"session\":\"s\"}"), MSG_OK);
    Decision d = {"triage", "Alarm: 温度 high", 18, 1.0 / 3, 0.25,
                  "alarm",  "00ff00ff00ff00ff", 0,  1234};
    cr_assert_eq(msg_encode_decision(&out, &p, &d), 0);
    json_t *j = json_loadb(out.data, out.len, 0, NULL);
    cr_assert_not_null(j, "not JSON: %.*s", (int)out.len, out.data);
    cr_expect_str_eq(json_string_value(json_object_get(j, "id")), "q\"1");
    cr_expect_str_eq(json_string_value(json_object_get(j, "session")), "s");
    cr_expect_str_eq(json_string_value(json_object_get(j, "template")), "triage");
    cr_expect_str_eq(json_string_value(json_object_get(j, "prompt")), "Alarm: 温度 high");
    cr_expect_float_eq(json_real_value(json_object_get(j, "p")), 1.0 / 3, 1e-12);
    cr_expect_float_eq(json_real_value(json_object_get(j, "value")), 0.25, 1e-12);
    cr_expect_str_eq(json_string_value(json_object_get(j, "pack")), "alarm");
    cr_expect_str_eq(json_string_value(json_object_get(j, "script_version")), "00ff00ff00ff00ff");
    cr_expect_eq(json_integer_value(json_object_get(j, "policy_version")), 0);
    cr_expect_eq(json_integer_value(json_object_get(j, "ts")), 1234);
    json_decref(j);
    msg_prompt_free(&p);
    msg_buf_free(&out);
}

Test(message, decision_probability_one_is_a_json_number) {
    MsgBuf out = {0};
    cr_assert_eq(decode("{\"id\":\"a\",\"text\":\"x\"}"), MSG_OK);
    Decision d = {"only", "x", 1, 1.0, NAN, "p", "v", 0, 1};
    cr_assert_eq(msg_encode_decision(&out, &p, &d), 0);
    json_t *j = json_loadb(out.data, out.len, 0, NULL);
    cr_assert_not_null(j, "not JSON: %.*s", (int)out.len, out.data);
    cr_expect_float_eq(json_number_value(json_object_get(j, "p")), 1.0, 1e-12);
    cr_expect_null(json_object_get(j, "value"), "a non-finite value must be left out");
    json_decref(j);
    msg_prompt_free(&p);
    msg_buf_free(&out);
}

Test(message, decision_escapes_every_control_character) {
    MsgBuf out = {0};
    char text[40];
    for (int i = 0; i < 32; i++) text[i] = (char)(i + 1 == 32 ? '\\' : i + 1);
    memcpy(text + 32, "\"end\"", 5);
    cr_assert_eq(decode("{\"id\":\"c\",\"text\":\"x\"}"), MSG_OK);
    Decision d = {"tri\"age", text, 37, 0.5, -1.5, "pack", "v1", 7, -5};
    cr_assert_eq(msg_encode_decision(&out, &p, &d), 0);
    json_error_t jerr;
    json_t *j = json_loadb(out.data, out.len, 0, &jerr);
    cr_assert_not_null(j, "%s in %.*s", jerr.text, (int)out.len, out.data);
    json_t *prompt = json_object_get(j, "prompt");
    cr_expect_eq(json_string_length(prompt), 37);
    cr_expect_eq(memcmp(json_string_value(prompt), text, 37), 0, "escaping changed the text");
    cr_expect_str_eq(json_string_value(json_object_get(j, "template")), "tri\"age");
    cr_expect_null(json_object_get(j, "session"));
    cr_expect_eq(json_integer_value(json_object_get(j, "ts")), -5);
    json_decref(j);
    msg_prompt_free(&p);
    msg_buf_free(&out);
}

static json_t *dead_letter(const void *payload, size_t len, size_t max) {
    static MsgBuf out;
    MsgSource src = {"promptd.prompts", 3, 42, 1700000000000};
    cr_assert_eq(
        msg_encode_dead_letter(&out, MSG_INVALID_JSON, "bad \"thing\"", &src, payload, len, max),
        0);
    json_t *dl = json_loadb(out.data, out.len, 0, NULL);
    cr_assert_not_null(dl);
    return dl;
}

Test(message, dead_letter_names_its_source_and_keeps_the_payload) {
    json_t *dl = dead_letter("{oops", 5, 1024);
    cr_expect_str_eq(json_string_value(json_object_get(dl, "reason")), "invalid_json");
    cr_expect_str_eq(json_string_value(json_object_get(dl, "error")), "bad \"thing\"");
    cr_expect_str_eq(json_string_value(json_object_get(dl, "topic")), "promptd.prompts");
    cr_expect_eq(json_integer_value(json_object_get(dl, "partition")), 3);
    cr_expect_eq(json_integer_value(json_object_get(dl, "offset")), 42);
    cr_expect_eq(json_integer_value(json_object_get(dl, "timestamp")), 1700000000000);
    cr_expect_str_eq(json_string_value(json_object_get(dl, "payload")), "{oops");
    cr_expect(json_is_false(json_object_get(dl, "payload_truncated")));
    json_decref(dl);
}

Test(message, dead_letter_base64_encodes_invalid_utf8) {
    json_t *dl = dead_letter("a\xff\x00z", 4, 1024);
    cr_expect_null(json_object_get(dl, "payload"));
    cr_expect_str_eq(json_string_value(json_object_get(dl, "payload_base64")), "Yf8Aeg==");
    cr_expect_eq(json_integer_value(json_object_get(dl, "payload_bytes")), 4);
    json_decref(dl);
}

Test(message, dead_letter_cuts_long_payloads_on_character_boundaries) {
    /* 1,500 three-byte characters, cut at 1,024 bytes: 341 whole characters remain. */
    static char text[4500];
    for (int i = 0; i < 1500; i++) memcpy(text + 3 * i, "温", 3);
    json_t *dl = dead_letter(text, sizeof text, 1024);
    const char *kept = json_string_value(json_object_get(dl, "payload"));
    cr_assert_not_null(kept, "a cut payload must stay valid UTF-8");
    cr_expect_eq(strlen(kept), 1023);
    cr_expect(json_is_true(json_object_get(dl, "payload_truncated")));
    cr_expect_eq(json_integer_value(json_object_get(dl, "payload_bytes")), 4500);
    json_decref(dl);
}

Test(message, utf8_validation_matches_the_standard) {
    size_t at;
    cr_expect(msg_utf8_valid("plain ascii", 11, &at));
    cr_expect(msg_utf8_valid("\xf0\x9f\x94\xa5 fire", 9, &at));
    cr_expect_not(msg_utf8_valid("\xf4\x90\x80\x80", 4, &at), "past U+10FFFF");
    cr_expect_not(msg_utf8_valid("ok\xe2\x82", 4, &at), "truncated");
    cr_expect_eq(at, 2);
    cr_expect_not(msg_utf8_valid("\xe0\x80\xaf", 3, &at), "overlong");
}

Test(message, reward_events_need_only_an_id) {
    RewardEvent r;
    const char *ok = "{\"id\":\"wtg-7\",\"resolved\":true,\"rating\":4}";
    cr_assert_eq(msg_decode_reward(&r, ok, strlen(ok), 65536, why, sizeof why), MSG_OK, "%s", why);
    cr_expect_str_eq(r.id, "wtg-7");
    cr_expect(json_is_true(json_object_get(r.root, "resolved")));
    msg_reward_free(&r);

    const char *no_id = "{\"resolved\":true}";
    cr_expect_eq(msg_decode_reward(&r, no_id, strlen(no_id), 65536, why, sizeof why),
                 MSG_MISSING_ID);
    cr_expect(strstr(why, "every reward names the prompt it scores"), "%s", why);
    cr_expect_eq(msg_decode_reward(&r, "[1]", 3, 65536, why, sizeof why), MSG_NOT_AN_OBJECT);
    cr_expect(strstr(why, "a reward event is a JSON object"), "%s", why);
    cr_expect_null(r.root);
}
