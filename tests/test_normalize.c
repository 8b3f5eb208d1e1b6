/* test_normalize.c - Criterion tests for kernels/normalize.c.
 *
 * The table of alarm texts pins the exact output of every rule in NORMALIZE.md;
 * the other tests cover UTF-8 repair, whitespace, NFKC with case folding, the
 * buffer caps (also against every Unicode scalar value) and idempotence.
 */
#include "../kernels/normalize.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* --- helpers --- */

typedef struct {
    const char *in;
    const char *want;
} Case;

/* Normalises in[0..n) with buffers of exactly the advertised caps, so that a wrong
 * cap shows up as NORM_E_WORK / NORM_E_OUT; returns a malloc'd string. */
static char *norm_n(const char *in, size_t n, unsigned flags) {
    size_t work_cap = norm_work_cap(n), out_cap = norm_out_cap(n);
    int32_t *work = malloc((work_cap ? work_cap : 1) * sizeof *work);
    char *out = malloc(out_cap);

    cr_assert(work && out);
    ptrdiff_t len = norm_text(out, out_cap, in, n, work, work_cap, flags);
    cr_assert_geq(len, 0, "norm_text(\"%.60s\") returned %td", in, len);
    cr_assert_eq(strlen(out), (size_t)len, "length %td but strlen %zu", len, strlen(out));
    free(work);
    return out;
}

static char *norm(const char *in, unsigned flags) {
    return norm_n(in, strlen(in), flags);
}

static void expect_norm(const char *in, unsigned flags, const char *want) {
    char *got = norm(in, flags);
    cr_expect_str_eq(got, want, "input \"%s\"\n  want \"%s\"\n  got  \"%s\"", in, want, got);
    free(got);
}

static void expect_table(const Case *cases, size_t n, unsigned flags) {
    for (size_t i = 0; i < n; i++) expect_norm(cases[i].in, flags, cases[i].want);
}

static void expect_idempotent(const char *in, unsigned flags) {
    char *once = norm(in, flags), *twice = norm(once, flags);
    cr_expect_str_eq(twice, once, "input \"%s\": once \"%s\", twice \"%s\"", in, once, twice);
    free(once);
    free(twice);
}

static void expect_same(const char *a, const char *b, bool same) {
    char *na = norm(a, NORM_MASK), *nb = norm(b, NORM_MASK);
    if (same) {
        cr_expect_str_eq(na, nb, "\"%s\" -> \"%s\"\n\"%s\" -> \"%s\"", a, na, b, nb);
    } else {
        cr_expect_str_neq(na, nb, "both \"%s\" and \"%s\" -> \"%s\"", a, b, na);
    }
    free(na);
    free(nb);
}

static size_t utf8_len(int32_t c) {
    return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

/* --- alarm texts, English and Chinese --- */

static const Case alarms[] = {
    {"WTG-12 bearing temp 92C", "wtg-<num> bearing temp <num>"},
    {"WTG-07 Gearbox oil temperature high: 78.5 °C (limit 75 °C)",
     "wtg-<num> gearbox oil temperature high: <num> (limit <num>)"},
    {"WTG-03 pitch motor 2 overcurrent 35A", "wtg-<num> pitch motor <num> overcurrent <num>"},
    {"WTG-21 yaw misalignment 12° for 300s", "wtg-<num> yaw misalignment <num> for <num>"},
    {"WTG-05 generator speed 1500 rpm exceeds 1450 rpm",
     "wtg-<num> generator speed <num> exceeds <num>"},
    {"WTG-18 grid frequency 50.2Hz, voltage 690 V",
     "wtg-<num> grid frequency <num>, voltage <num> v"},
    {"Wind speed 25.3 m/s above cut-out", "wind speed <num> above cut-out"},
    {"CRAC-04 return air temperature 27.5°C > setpoint 24°C",
     "crac-<num> return air temperature <num> > setpoint <num>"},
    {"UPS-2 on battery, load 45 %, est. runtime 12 min",
     "ups-<num> on battery, load <num>, est. runtime <num>"},
    {"PDU-A3 outlet 7 current 16.2A exceeds threshold",
     "pdu-a<num> outlet <num> current <num> exceeds threshold"},
    {"Rack B07 inlet temp 35C humidity 80%RH", "rack b<num> inlet temp <num> humidity <num>"},
    {"Chiller 2 supply water 12.5℃, return 18℃", "chiller <num> supply water <num>, return <num>"},
    {"Core switch 10.0.0.1 interface Gi1/0/24 down",
     "core switch <ip> interface gi<num>/<num>/<num> down"},
    {"BGP peer 192.168.10.254 state changed to Idle", "bgp peer <ip> state changed to idle"},
    {"Ping 8.8.8.8 packet loss 100%", "ping <ip> packet loss <num>"},
    {"sshd: failed login from 203.0.113.7:52144", "sshd: failed login from <ip>"},
    {"Route 10.20.0.0/16 withdrawn", "route <ip> withdrawn"},
    {"IPv6 neighbor fe80::1%eth0 unreachable", "ipv<num> neighbor <ip> unreachable"},
    {"Duplicate address 2001:db8::8a2e:370:7334 detected", "duplicate address <ip> detected"},
    {"NTP offset 120 ms from 2001:db8:0:0:1:0:0:1", "ntp offset <num> from <ip>"},
    {"Port 3 MAC 00:1A:2B:3C:4D:5E flapping", "port <num> mac <hex> flapping"},
    {"2024-05-01T12:00:00Z ERROR job 550e8400-e29b-41d4-a716-446655440000 failed",
     "<ts> error job <uuid> failed"},
    {"2024-05-01 12:00:00.123+02:00 WARN disk /dev/sda1 95% full",
     "<ts> warn disk /dev/sda<num> <num> full"},
    {"[2024/05/01 08:15] backup finished in 42s", "[<ts>] backup finished in <num>"},
    {"May  1 12:34:56 host kernel: segfault at 0x7f3a2c00 ip 00007f3a2c001234",
     "may <num> <ts> host kernel: segfault at <hex> ip <hex>"},
    {"Exception 0xC0000005 in module x64.dll", "exception <hex> in module x<num>.dll"},
    {"commit a1b2c3d deployed, trace 4bf92f3577b34da6a3ce929d0e0e4736",
     "commit <hex> deployed, trace <hex>"},
    {"Service deadbeef facade restarted", "service deadbeef facade restarted"},
    {"Tag PLC1.AI_TEMP_03 value -12.5 out of range",
     "tag plc<num>.ai_temp_<num> value <num> out of range"},
    {"SCADA point 40001 = 1,234.5 kWh", "scada point <num> = <num>"},
    {"Tank level 3.2e3 mm, pressure 2.5 bar", "tank level <num>, pressure <num>"},
    {"Pump P-101A vibration 7.1 mm/s", "pump p-<num> vibration <num>"},
    {"Feeder F12 breaker tripped at 10:42", "feeder f<num> breaker tripped at <ts>"},
    {"Transformer T2 oil temp 85 °C, load 1.2 MVA",
     "transformer t<num> oil temp <num>, load <num>"},
    {"Disk usage 10GB of 100 GB (10.0%)", "disk usage <num> of <num> (<num>)"},
    {"Battery 48V string 2 cell 13 voltage 2.05 V",
     "battery <num> string <num> cell <num> voltage <num> v"},
    {"Fan 2 speed 0 RPM, expected ≥ 3000 RPM", "fan <num> speed <num>, expected ≥ <num>"},
    {"风机12号 齿轮箱温度过高：92℃", "风机<num>号 齿轮箱温度过高:<num>"},
    {"３号机组 发电机转速１５００ｒｐｍ", "<num>号机组 发电机转速<num>"},
    {"UPS电池电压低于 220V，请检查", "ups电池电压低于 <num>,请检查"},
    {"机房A区温度 35.5℃ 湿度 80%", "机房a区温度 <num> 湿度 <num>"},
    {"2024年5月1日 12:00 变电站3号主变跳闸", "<num>年<num>月<num>日 <ts> 变电站<num>号主变跳闸"},
    {"告警：交换机 10.1.1.1 端口 Gi0/1 链路中断", "告警:交换机 <ip> 端口 gi<num>/<num> 链路中断"},
    {"任务 3f2a9c1b-7d4e-4a6b-9c8d-1e2f3a4b5c6d 执行失败", "任务 <uuid> 执行失败"},
    {"十二号风机 叶片结冰", "十二号风机 叶片结冰"},
    {"ＷＴＧ－１２　风速２５．３ｍ／ｓ", "wtg-<num> 风速<num>"},
    {"压力传感器PT-101读数异常（-0.5MPa）", "压力传感器pt-<num>读数异常(<num>)"},
    {"温度传感器TE-05 读数 -40℃ 超出量程", "温度传感器te-<num> 读数 <num> 超出量程"},
};

#define N_ALARMS (sizeof alarms / sizeof alarms[0])

Test(normalize, masks_alarm_texts_in_english_and_chinese) {
    cr_assert_geq(N_ALARMS, 40);
    expect_table(alarms, N_ALARMS, NORM_MASK);
}

Test(normalize, is_idempotent_over_the_alarm_table) {
    for (size_t i = 0; i < N_ALARMS; i++) {
        expect_idempotent(alarms[i].in, NORM_MASK);
        expect_idempotent(alarms[i].in, 0);
    }
}

/* --- one rule at a time --- */

Test(normalize, masks_uuids_with_a_digit) {
    static const Case cases[] = {
        {"id 550E8400-E29B-41D4-A716-446655440000", "id <uuid>"},
        {"req-550e8400-e29b-41d4-a716-446655440000", "req-<uuid>"},
        {"abcdefab-abcd-abcd-abcd-abcdefabcdef", "abcdefab-abcd-abcd-abcd-abcdefabcdef"},
        {"550e8400-e29b-41d4-a716-4466554400001", "<hex>-e<num>-<num>d<num>-a<num>-<num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, masks_mac_addresses_as_hex) {
    static const Case cases[] = {
        {"00:1a:2b:3c:4d:5e", "<hex>"},
        {"port-00-1A-2B-3C-4D-5E up", "port-<hex> up"},
        {"cisco 001a.2b3c.4d5e", "cisco <hex>"},
        {"aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"},
        {"a1:b2:c3:d4:e5:f6:77", "a<num>:b<num>:c<num>:d<num>:e<num>:f<num>:<num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, masks_ipv4_with_port_and_prefix) {
    static const Case cases[] = {
        {"10.0.0.1", "<ip>"},
        {"10.0.0.1:8080.", "<ip>."},
        {"192.168.0.0/24", "<ip>"},
        {"256.1.1.1", "<num>"},
        {"version 1.2.3.4.5", "version <num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, masks_ipv6_but_not_scope_operators) {
    static const Case cases[] = {
        {"::1", "<ip>"},
        {"[fe80::1]:8080", "[<ip>]:<num>"},
        {"2001:0db8:85a3:0000:0000:8a2e:0370:7334", "<ip>"},
        {"::ffff:10.0.0.1 mapped", "<ip> mapped"},
        {"std::map and ::", "std::map and ::"},
        {"1::2::3", "<num>::<num>::<num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, masks_dates_and_times_as_one_ts) {
    static const Case cases[] = {
        {"2024-05-01", "<ts>"},
        {"2024-05-01T12:00:00Z", "<ts>"},
        {"2024-05-01 12:00:00.123+02:00", "<ts>"},
        {"01.05.2024 12:34:56,789", "<ts>"},
        {"at 12:34:56 and 9:05", "at <ts> and <ts>"},
        {"shift 10:00-12:00", "shift <ts>-<ts>"},
        {"2024-13-01", "<num>-<num>-<num>"},
        {"ratio 1:5", "ratio <num>:<num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, masks_hex_ids_but_not_words_or_names) {
    static const Case cases[] = {
        {"0x1F reg0x1f", "<hex> reg<hex>"},
        {"id a1b2c3 3f2a9c", "id <hex> <hex>"},
        {"deadbeef facade", "deadbeef facade"},
        {"cab123 abc12", "cab<num> abc<num>"},
        {"10x5", "<num>x<num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, masks_numbers_with_signs_and_units) {
    static const Case cases[] = {
        {"temp -5 x=-3 (+2)", "temp <num> x=<num> (<num>)"},
        {"WTG-12 wtg--12", "wtg-<num> wtg--<num>"},
        {"1,234.5 3,5 1e-5 1.2.3", "<num> <num> <num> <num>"},
        {"92°C 92 °C 92℃ 92 ℃ 92c", "<num> <num> <num> <num> <num>"},
        {"92 c 220 v 30 s", "<num> c <num> v <num> s"},
        {"3.5kW 3.5 kw 10GB 40ms 12% 80 %", "<num> <num> <num> <num> <num> <num>"},
        {"1st 2nd 3rd 4th floor", "<num> <num> <num> <num> floor"},
        {"pump7 风机12号 ①", "pump<num> 风机<num>号 <num>"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, leaves_chinese_numerals_alone) {
    expect_norm("十二号风机 第三排", NORM_MASK, "十二号风机 第三排");
}

Test(normalize, drops_combining_marks_after_a_mask) {
    /* ">" + U+0338 would compose to U+226F and break the mask on a second pass. */
    expect_norm("1\xcc\xb8 x", NORM_MASK, "<num> x");
    expect_idempotent("1\xcc\xb8 x", NORM_MASK);
}

Test(normalize, keeps_digits_without_the_mask_flag) {
    expect_norm("WTG-12 temp 92C at 10.0.0.1", 0, "wtg-12 temp 92c at 10.0.0.1");
    expect_norm("ＷＴＧ１２ ９２℃", 0, "wtg12 92°c");
}

/* --- same situation, other numbers --- */

Test(normalize, same_situation_with_other_numbers_is_the_same_text) {
    expect_same("WTG-12 bearing temp 92C", "WTG-07 bearing temp 95C", true);
    expect_same("UPS-1 on battery, load 45%", "ups-3 on battery, load 80 %", true);
    expect_same("Core switch 10.0.0.1 down", "core switch 192.168.1.254 down", true);
    expect_same("job 550e8400-e29b-41d4-a716-446655440000 failed at 2024-05-01T12:00:00Z",
                "job 123e4567-e89b-12d3-a456-426614174000 failed at 2023-12-31 23:59:59", true);
    expect_same("风机12号 齿轮箱温度过高：92℃", "风机07号 齿轮箱温度过高:95°C", true);
    expect_same("ＷＴＧ１２ 风速２５ｍ／ｓ", "wtg7 风速12.5 m/s", true);
    expect_same("segfault at 0x7f3a2c00", "segfault at 0xdeadbeef", true);
    expect_same("Temp 92 °C", "TEMP 92℃", true);
}

Test(normalize, different_situations_stay_different) {
    expect_same("WTG-12 bearing temp 92C", "WTG-12 gearbox temp 92C", false);
    expect_same("UPS-1 on battery", "UPS-1 on mains", false);
    expect_same("Core switch 10.0.0.1 down", "Core switch 10.0.0.1 up", false);
    expect_same("风机12号 齿轮箱温度过高", "风机12号 齿轮箱温度过低", false);
    expect_same("WTG-12 offline", "PDU-12 offline", false);
}

/* --- UTF-8 repair --- */

Test(normalize, replaces_invalid_utf8_per_maximal_subpart) {
    static const Case cases[] = {
        {"a\x80z", "a\uFFFDz"},
        {"\xC0\xAF", "\uFFFD\uFFFD"},                     /* overlong '/' */
        {"\xE0\x80\xAF", "\uFFFD\uFFFD\uFFFD"},           /* overlong, 3 bytes */
        {"\xED\xA0\x80", "\uFFFD\uFFFD\uFFFD"},           /* surrogate U+D800 */
        {"\xF4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"}, /* above U+10FFFF */
        {"\xF5\xFF\xC1", "\uFFFD\uFFFD\uFFFD"},
        {"ok\xE2\x82", "ok\uFFFD"}, /* truncated at the end: one U+FFFD */
        {"\xF0\x9F\x98", "\uFFFD"},
        {"\xE2\x82x", "\uFFFDx"},
        {"\xF0\x9F\x98\x80 ok", "\xF0\x9F\x98\x80 ok"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], NORM_MASK);
}

Test(normalize, treats_nul_bytes_as_control_characters) {
    char *got = norm_n("a\0\0b", 4, NORM_MASK);
    cr_expect_str_eq(got, "a b");
    free(got);
}

Test(normalize, survives_every_two_byte_input) {
    for (unsigned v = 0; v < 65536; v++) {
        char in[2] = {(char)(v >> 8), (char)(v & 0xFF)};
        free(norm_n(in, 2, NORM_MASK));
    }
}

/* --- whitespace, NFKC, case folding --- */

Test(normalize, collapses_whitespace_and_controls) {
    static const Case cases[] = {
        {" \t a \r\n b\v\f c \xC2\x85 d\u2028e\u2029f\u00A0g\u3000h ", "a b c d e f g h"},
        {"a\x01\x1F"
         "b\x7F c",
         "a b c"},
        {"", ""},
        {" \t\n ", ""},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], 0);
}

Test(normalize, deletes_invisible_format_characters) {
    expect_norm("\uFEFFtem\u00ADpera\u200Bture \u200Dok\u034F", 0, "temperature ok");
}

Test(normalize, applies_nfkc_and_case_folding) {
    static const Case cases[] = {
        {"\uFB01re", "fire"}, {"ＡＢＣ", "abc"},     {"Straße", "strasse"}, {"Ⅻ", "xii"},
        {"℃", "°c"},          {"ΣΑΣ", "σασ"},        {"İ", "i\u0307"},      {"e\u0301", "\u00E9"},
        {"\u212B", "\u00E5"}, {"\u01C4", "d\u017E"}, {"㎾", "kw"},          {"ｶ", "カ"},
        {"①", "1"},           {"ﬃ", "ffi"},
    };
    expect_table(cases, sizeof cases / sizeof cases[0], 0);
}

Test(normalize, orders_combining_marks_canonically) {
    expect_norm("a\u0301\u0323", 0, "\u1EA1\u0301");
    expect_norm("a\u0323\u0301", 0, "\u1EA1\u0301");
}

Test(normalize, caps_runs_of_combining_marks_with_cgj) {
    char in[1 + 40 * 2 + 1] = "a";
    for (int k = 0; k < 40; k++) memcpy(in + 1 + 2 * k, "\xCC\x81", 2);
    in[81] = '\0';

    char *got = norm(in, 0);
    /* a + U+0301 composes; 29 marks, the CGJ, then the last 10. */
    cr_expect_eq(strlen(got), 2 + 29 * 2 + 2 + 10 * 2, "got %zu bytes", strlen(got));
    cr_expect_not_null(strstr(got, "\u034F"));
    free(got);
    expect_idempotent(in, 0);
}

/* --- buffer caps --- */

Test(normalize, reports_small_buffers) {
    const char *in = "WTG-12 bearing temp 92C";
    size_t n = strlen(in), wc = norm_work_cap(n), oc = norm_out_cap(n);
    int32_t work[256];
    char out[512];

    cr_assert(wc <= 256 && oc <= 512);
    cr_expect_eq(norm_text(out, oc, in, n, work, wc - 1, NORM_MASK), NORM_E_WORK);
    cr_expect_eq(norm_text(out, oc - 1, in, n, work, wc, NORM_MASK), NORM_E_OUT);
    cr_expect_eq(norm_text(out, 0, "", 0, NULL, 0, 0), NORM_E_OUT);
    cr_expect_eq(norm_text(out, 1, "", 0, NULL, 0, 0), 0);
    cr_expect_str_eq(out, "");
}

Test(normalize, caps_follow_the_formulas_and_saturate) {
    cr_expect_eq(norm_work_cap(SIZE_MAX / 2), SIZE_MAX);
    cr_expect_eq(norm_out_cap(SIZE_MAX / 2), SIZE_MAX);
    cr_expect_eq(norm_work_cap(0), 0u);
    cr_expect_eq(norm_out_cap(0), 1u);
    cr_expect_eq(norm_work_cap(1000), 6000u + 200u);      /* 6n + n/5 */
    cr_expect_eq(norm_out_cap(1000), 11000u + 400u + 1u); /* 11n + 2(n/5) + 1 */
}

/* Repeats unit k times and normalises it with exact caps; returns the length. */
static size_t norm_repeated(const char *unit, size_t k, unsigned flags) {
    size_t ul = strlen(unit);
    char *in = malloc(ul * k + 1);

    for (size_t i = 0; i < k; i++) memcpy(in + i * ul, unit, ul);
    char *out = norm_n(in, ul * k, flags);
    size_t len = strlen(out);
    free(in);
    free(out);
    return len;
}

Test(normalize, caps_hold_on_adversarial_inputs) {
    cr_expect_eq(norm_repeated("\uFDFA", 1000, NORM_MASK), 33 * 1000);
    cr_expect_eq(norm_repeated("1 ", 1000, NORM_MASK), 6 * 1000 - 1);
    cr_expect_eq(norm_repeated("\xFF", 1000, NORM_MASK), 3 * 1000);
    cr_expect_eq(norm_repeated("\u00BD ", 1000, NORM_MASK), 14 * 1000 - 1);
    cr_expect_eq(norm_repeated("1", 1, NORM_MASK), 5);
    norm_repeated("\xCC\x81\xCC\xA3\xCD\x85", 1000, 0);
    norm_repeated("0x", 1000, NORM_MASK);
    norm_repeated("::", 1000, NORM_MASK);
}

/* The caps rest on two ratios per input byte: at most 6 decomposed code points and
 * at most 11 output bytes when a digit counts as its 5-byte <num>. */
Test(normalize, every_code_point_fits_the_per_byte_ratios) {
    const utf8proc_option_t opts =
        UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD | UTF8PROC_STABLE;
    int32_t d[32];

    for (int32_t c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        int bc = 0;
        utf8proc_ssize_t n = utf8proc_decompose_char(c, d, 32, opts, &bc);
        cr_assert(n >= 0 && n <= 32, "U+%04X decomposes to %td code points", c, n);

        size_t bytes = 0;
        for (utf8proc_ssize_t k = 0; k < n; k++)
            bytes += d[k] >= '0' && d[k] <= '9' ? 5 : utf8_len(d[k]);
        cr_assert_leq((size_t)n, 6 * utf8_len(c), "U+%04X: %td code points", c, n);
        cr_assert_leq(bytes, 11 * utf8_len(c), "U+%04X: %zu bytes", c, bytes);
    }
}

Test(normalize, every_code_point_normalises_within_caps_idempotently) {
    for (int32_t c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        utf8proc_uint8_t in[4];
        size_t n = (size_t)utf8proc_encode_char(c, in);

        char *once = norm_n((const char *)in, n, NORM_MASK), *twice = norm(once, NORM_MASK);
        cr_assert_str_eq(twice, once, "U+%04X", c);
        free(once);
        free(twice);
    }
}
