/*
 * Policy packs and their sandbox: the pack API contract, the helper library, every escape
 * and denial-of-service route we know of, and the out-of-memory paths (a failing
 * allocator). Packs are written into a scratch directory from the strings below.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../daemon/log.h"
#include "../daemon/pack.h"
#include "../daemon/pd.h"
#include "harness.h"

static const char *dir;
static char lines[64][1024];
static int nlines;

static void capture(void *ctx, int level, const char *line) {
    (void)ctx, (void)level;
    if (nlines < 64) snprintf(lines[nlines++], sizeof lines[0], "%s", line);
}

static void setup(void) {
    dir = harness_tmpdir();
    nlines = 0;
    pd_log_set_sink(capture, NULL);
    pd_log_set_level(PD_LOG_DEBUG);
    pd_log_set_ratelimit(0, 1000);
}

static void teardown(void) {
    pd_log_set_sink(NULL, NULL);
    harness_cleanup();
}

/* No .timeout here: Criterion 2.4.1's timeout leaks 48 bytes in its runner, which
 * LeakSanitizer reports when these tests run sanitized. The sandbox bounds every call. */
TestSuite(lua, .init = setup, .fini = teardown);

static SandboxLimits limits(void) {
    return (SandboxLimits){.memory = 32 << 20,
                           .instructions = 200000,
                           .time_ms = 2000,
                           .max_depth = 100,
                           .max_string = 1 << 20};
}

/* Writes dir/<pack>/<file>, creating the pack directory. Returns the pack's path. */
static const char *write_file(const char *pack, const char *file, const char *text) {
    static char packdir[512];
    char path[700];
    snprintf(packdir, sizeof packdir, "%s/%s", dir, pack);
    mkdir(packdir, 0755);
    snprintf(path, sizeof path, "%s/%s", packdir, file);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return packdir;
}

/* A pack whose single template's render body is `body` (Lua statements returning a
 * string), with a trivial reward. The load-time samples get a fixed answer, so that the
 * body can rely on the fields of the test's own message. */
static const char *pack_with_render(const char *pack, const char *body) {
    char text[8192];
    snprintf(text, sizeof text,
             "local pd = require 'promptd'\n"
             "return { templates = { { name = 't', about = 'a template',\n"
             "  render = function(msg, ctx)\n"
             "    if msg.id:sub(1, 6) == 'sample' then return 'sample' end\n"
             "    %s\n"
             "  end } },\n"
             "  reward = function(e, d) return e.r end }\n",
             body);
    return write_file(pack, "init.lua", text);
}

static Pack *load(const char *packdir, char *err, size_t errlen) {
    SandboxLimits l = limits();
    return pack_load(packdir, "lua", &l, err, errlen);
}

static Pack *load_ok(const char *packdir) {
    char err[1024];
    Pack *p = load(packdir, err, sizeof err);
    cr_assert_not_null(p, "pack refused: %s", err);
    return p;
}

static void expect_refused(const char *packdir, const char *fragment) {
    char err[1024] = "";
    Pack *p = load(packdir, err, sizeof err);
    cr_expect_null(p, "pack accepted, expected a refusal with '%s'", fragment);
    cr_expect(strstr(err, fragment), "error lacks '%s': %s", fragment, err);
    pack_free(p);
}

/* Binds a prompt decoded from json to the pack. */
static Prompt prompt;
static void bind(Pack *p, const char *json) {
    char why[256];
    cr_assert_eq(msg_decode_prompt(&prompt, json, strlen(json), 65536, why, sizeof why), MSG_OK,
                 "%s", why);
    cr_assert_eq(pack_bind(p, &prompt, "normalised <num>", 16, why, sizeof why), 0, "%s", why);
}

static void unbind(Pack *p) {
    pack_unbind(p);
    msg_prompt_free(&prompt);
}

/* Renders template 0 of the bound message; returns 0 or -1, with out or err. */
static int render(Pack *p, MsgBuf *out, char *err, size_t errlen) {
    return pack_render(p, 0, 42, out, err, errlen);
}

/* Loads a one-template pack, renders a sample message, and expects the render to fail
 * with fragment in the error; then expects the pack to keep serving. */
static void expect_render_error(const char *body, const char *fragment) {
    char err[1024] = "", path[64];
    static int n;
    snprintf(path, sizeof path, "r%d", n++);
    char text[8192];
    snprintf(text, sizeof text,
             "local pd = require 'promptd'\n"
             "return { templates = { { name = 't', about = 'a template',\n"
             "  render = function(msg, ctx)\n"
             "    if msg.id:sub(1, 6) == 'sample' then return 'ok' end\n"
             "    if msg.id == 'again' then return 'still serving' end\n"
             "    %s\n"
             "  end } },\n"
             "  reward = function() return 0 end }\n",
             body);
    Pack *p = load_ok(write_file(path, "init.lua", text));
    MsgBuf out = {0};

    bind(p, "{\"id\":\"attack\",\"text\":\"x\"}");
    cr_expect_eq(render(p, &out, err, sizeof err), -1, "the render succeeded: %.*s", (int)out.len,
                 out.data);
    cr_expect(strstr(err, fragment), "error lacks '%s': %s", fragment, err);
    unbind(p);

    bind(p, "{\"id\":\"again\",\"text\":\"x\"}");
    cr_expect_eq(render(p, &out, err, sizeof err), 0, "the pack stopped serving: %s", err);
    unbind(p);
    msg_buf_free(&out);
    pack_free(p);
}

/* --- the shipped packs --- */

Test(lua, shipped_packs_load_and_render) {
    const char *packs[] = {"policies/alarm", "policies/support"};
    for (size_t k = 0; k < 2; k++) {
        Pack *p = load_ok(packs[k]);
        cr_expect_geq(pack_template_count(p), 4);
        cr_expect_eq(strlen(pack_version(p)), 16);
        cr_expect_eq(pack_feature_count(p), 4);

        MsgBuf out = {0};
        char err[1024];
        bool eligible[PACK_TEMPLATES_MAX];
        bind(p, "{\"id\":\"a1\",\"text\":\"WTG-07 gearbox oil pressure low, order 5\","
                "\"session\":\"inc-1\",\"attrs\":{\"site\":\"north\",\"severity\":\"critical\"}}");
        cr_expect_gt(pack_eligible(p, eligible), 0);
        for (size_t i = 0; i < pack_template_count(p); i++) {
            cr_expect_eq(pack_render(p, i, 0, &out, err, sizeof err), 0, "%s", err);
            cr_expect(memmem(out.data, out.len, "WTG-07 gearbox", 14), "%s/%s lost the text",
                      packs[k], pack_template(p, i)->name);
        }
        unbind(p);
        msg_buf_free(&out);
        pack_free(p);
    }
}

Test(lua, alarm_pack_rewards_realistic_feedback) {
    Pack *p = load_ok("policies/alarm");
    char err[512];
    double r = 0;
    json_t *decision = json_pack("{s:s}", "template", "triage");
    json_t *good = json_pack("{s:b,s:i,s:i}", "resolved", 1, "time_to_resolve_s", 900, "rating", 5);
    json_t *bad = json_pack("{s:b,s:b}", "resolved", 0, "escalated", 1);
    json_t *none = json_pack("{s:s}", "comment", "thanks");

    cr_expect_eq(pack_reward(p, good, decision, &r, err, sizeof err), 1, "%s", err);
    cr_expect_float_eq(r, 1 + 0.5 * 0.75 + 0.5, 1e-9);
    cr_expect_eq(pack_reward(p, bad, decision, &r, err, sizeof err), 1, "%s", err);
    cr_expect_float_eq(r, -1.0, 1e-9);
    cr_expect_eq(pack_reward(p, none, decision, &r, err, sizeof err), 0, "no feedback: no reward");

    json_decref(decision);
    json_decref(good);
    json_decref(bad);
    json_decref(none);
    pack_free(p);
}

/* --- the API contract --- */

Test(lua, render_sees_message_and_context) {
    Pack *p = load_ok(pack_with_render(
        "ctx", "return msg.id .. '|' .. msg.text .. '|' .. msg.normalized .. '|' .. "
               "(msg.session or '-') .. '|' .. (msg.attrs.site or '-') .. '|' .. ctx.template .. "
               "'|' .. ctx.pack .. '|' .. ctx.now_ms .. '|' .. #ctx.pack_version"));
    MsgBuf out = {0};
    char err[512];
    bind(p,
         "{\"id\":\"m1\",\"text\":\"Hot 92C\",\"session\":\"s9\",\"attrs\":{\"site\":\"north\"}}");
    cr_assert_eq(render(p, &out, err, sizeof err), 0, "%s", err);
    cr_expect_eq(out.len, strlen("m1|Hot 92C|normalised <num>|s9|north|t|ctx|42|16"));
    cr_expect(!memcmp(out.data, "m1|Hot 92C|normalised <num>|s9|north|t|ctx|42|16", out.len),
              "got %.*s", (int)out.len, out.data);
    unbind(p);
    msg_buf_free(&out);
    pack_free(p);
}

Test(lua, eligible_selects_templates) {
    const char *dirp = write_file(
        "elig", "init.lua",
        "return { templates = {\n"
        "  { name = 'always', about = 'a', render = function() return 'x' end },\n"
        "  { name = 'never', about = 'b', render = function() return 'x' end,\n"
        "    eligible = function(m) return false end },\n"
        "  { name = 'wind', about = 'c', render = function() return 'x' end,\n"
        "    eligible = function(m) return m.text:find('WTG', 1, true) ~= nil end },\n"
        "  { name = 'broken', about = 'd', render = function() return 'x' end,\n"
        "    eligible = function(m) if m.id == 'z' then error('boom') end return true end },\n"
        "}, reward = function() end }\n");
    Pack *p = load_ok(dirp);
    bool e[4];
    bind(p, "{\"id\":\"z\",\"text\":\"WTG-1 down\"}");
    cr_expect_eq(pack_eligible(p, e), 2);
    cr_expect(e[0] && !e[1] && e[2] && !e[3], "got %d %d %d %d", e[0], e[1], e[2], e[3]);
    cr_expect_eq(pack_eligible_errors(p), 1, "a failing eligible() is counted");
    unbind(p);
    pack_free(p);
}

Test(lua, reward_results_are_checked) {
    const char *dirp = write_file("rew", "init.lua",
                                  "return { templates = { { name = 't', about = 'a', render = "
                                  "function() return 'x' end } },\n"
                                  "  reward = function(e, d)\n"
                                  "    if e.kind == 'nan' then return 0/0 end\n"
                                  "    if e.kind == 'inf' then return math.huge end\n"
                                  "    if e.kind == 'str' then return 'good' end\n"
                                  "    if e.kind == 'err' then error('no rating') end\n"
                                  "    if e.kind == 'nil' then return nil end\n"
                                  "    return e.rating * 2 + (d.template == 't' and 1 or 0)\n"
                                  "  end }\n");
    Pack *p = load_ok(dirp);
    const struct {
        const char *event;
        int rc;
        const char *fragment;
    } cases[] = {
        {"{\"rating\":3}", 1, ""},
        {"{\"kind\":\"nil\"}", 0, ""},
        {"{\"kind\":\"nan\"}", -1, "non-finite number"},
        {"{\"kind\":\"inf\"}", -1, "non-finite number"},
        {"{\"kind\":\"str\"}", -1, "returned string"},
        {"{\"kind\":\"err\"}", -1, "rew/init.lua:6: no rating"},
    };
    json_t *d = json_pack("{s:s}", "template", "t");
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        char err[512] = "";
        double r = -1;
        json_t *e = json_loads(cases[i].event, 0, NULL);
        cr_expect_eq(pack_reward(p, e, d, &r, err, sizeof err), cases[i].rc, "%s: %s",
                     cases[i].event, err);
        cr_expect(strstr(err, cases[i].fragment), "%s: error lacks '%s': %s", cases[i].event,
                  cases[i].fragment, err);
        if (cases[i].rc == 1) cr_expect_float_eq(r, 7.0, 1e-9);
        json_decref(e);
    }
    json_decref(d);
    pack_free(p);
}

Test(lua, features_by_position_or_name) {
    const char *dirp = write_file("feat", "init.lua",
                                  "return { templates = { { name = 't', about = 'a', render = "
                                  "function() return 'x' end } },\n"
                                  "  reward = function() end, feature_names = { 'len', 'hot' },\n"
                                  "  features = function(m)\n"
                                  "    if m.id == 'named' then return { hot = 1, len = 0.5 } end\n"
                                  "    if m.id == 'bad' then return { 1, 0/0 } end\n"
                                  "    return { #m.text / 10, 0 } end }\n");
    Pack *p = load_ok(dirp);
    float f[2];
    char err[512];
    bind(p, "{\"id\":\"pos\",\"text\":\"abcde\"}");
    cr_expect_eq(pack_features(p, f, err, sizeof err), 0, "%s", err);
    cr_expect_float_eq(f[0], 0.5f, 1e-6);
    unbind(p);
    bind(p, "{\"id\":\"named\",\"text\":\"x\"}");
    cr_expect_eq(pack_features(p, f, err, sizeof err), 0, "%s", err);
    cr_expect(f[0] == 0.5f && f[1] == 1.0f, "got %g %g", f[0], f[1]);
    unbind(p);
    bind(p, "{\"id\":\"bad\",\"text\":\"x\"}");
    cr_expect_eq(pack_features(p, f, err, sizeof err), -1);
    cr_expect(strstr(err, "for 'hot'"), "%s", err);
    cr_expect(f[0] == 0 && f[1] == 0, "a failed features() leaves zeros");
    unbind(p);
    pack_free(p);
}

Test(lua, bad_shapes_are_refused_with_the_reason) {
    const struct {
        const char *lua, *fragment;
    } cases[] = {
        {"return 42", "init.lua must return a table (it returned number)"},
        {"return {}", "non-empty list `templates`"},
        {"return { templates = {} , reward = function() end }", "non-empty list `templates`"},
        {"return { templates = { 5 }, reward = function() end }", "templates[1] must be a table"},
        {"return { templates = { { about = 'a', render = print } }, reward = print }",
         "templates[1].name must be a string"},
        {"return { templates = { { name = 'a b', about = 'a', render = print } }, reward = print }",
         "templates[1].name must be a string"},
        {"return { templates = { { name = 't', render = print } }, reward = print }",
         "template 't': about must be a sentence"},
        {"return { templates = { { name = 't', about = 'a', render = 'x' } }, reward = print }",
         "template 't'.render must be a function, not string"},
        {"return { templates = { { name = 't', about = 'a', render = print },\n"
         "  { name = 't', about = 'b', render = print } }, reward = print }",
         "template name 't' is used twice"},
        {"return { templates = { { name = 't', about = 'a', render = print } } }",
         "pack.reward must be a function, not missing"},
        {"return { templates = { { name = 't', about = 'a', render = function() return 'x' end } },"
         " reward = print, features = function() return {} end }",
         "features() needs feature_names"},
        {"return { templates = { { name = 't', about = 'a', render = function() return 'x' end } },"
         " reward = print, feature_names = { 'a' } }",
         "feature_names is given but features() is not"},
        {"return { templates = { { name = 't', about = 'a', render = function() return 'x' end } },"
         " reward = print, self_test = function() assert(1 == 2, 'sums are off') end }",
         "self_test failed: bad/init.lua:1: sums are off"},
        {"return { templates = { { name = 't', about = 'a', render = function(m)\n"
         "  return m.attrs.site:upper() end } }, reward = print }",
         "sample message"},
        {"return { templates = { { name = 't', about = 'a', render = function() return 7 end } },"
         " reward = print }",
         "returned number"},
        {"local x = \n return {", "bad/init.lua:2:"},
        {"error('not today')", "bad/init.lua:1: not today"},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        write_file("bad", "init.lua", cases[i].lua);
        expect_refused(write_file("bad", "init.lua", cases[i].lua), cases[i].fragment);
    }
    char missing[600];
    snprintf(missing, sizeof missing, "%s/nothing-here", dir);
    expect_refused(missing, "not found");
}

Test(lua, version_follows_the_code) {
    Pack *a = load_ok(pack_with_render("va", "return 'one'"));
    Pack *b = load_ok(pack_with_render("vb", "return 'one'"));
    char version[17];
    snprintf(version, sizeof version, "%s", pack_version(a));
    pack_free(a);
    Pack *c = load_ok(pack_with_render("va", "return 'two'"));
    cr_expect_str_neq(pack_version(c), version, "an edit must change the version");
    cr_expect_str_neq(pack_version(b), version, "the pack's name is part of its files' paths");
    pack_free(b);
    pack_free(c);
    Pack *d = load_ok(pack_with_render("va", "return 'one'"));
    cr_expect_str_eq(pack_version(d), version, "the same files give the same version");
    pack_free(d);
}

Test(lua, require_reaches_the_pack_and_the_library_only) {
    write_file("req", "util.lua", "return { greet = function(n) return 'hi ' .. n end }");
    Pack *p = load_ok(pack_with_render("req", "return require('util').greet(msg.id)"));
    MsgBuf out = {0};
    char err[512];
    bind(p, "{\"id\":\"bob\",\"text\":\"x\"}");
    cr_expect_eq(render(p, &out, err, sizeof err), 0, "%s", err);
    cr_expect(out.len == 6 && !memcmp(out.data, "hi bob", 6));
    unbind(p);
    msg_buf_free(&out);
    pack_free(p);

    expect_render_error("return require('../../etc/passwd')", "invalid module name");
    expect_render_error("return require('/etc/passwd')", "invalid module name");
    expect_render_error("return require('nosuchmodule')", "module 'nosuchmodule' not found");
    expect_render_error("return require('os')", "module 'os' not found");
}

/* --- the helper library --- */

static void expect_render(const char *body, const char *want) {
    static int n;
    char path[64], err[1024];
    snprintf(path, sizeof path, "h%d", n++);
    Pack *p = load_ok(pack_with_render(path, body));
    MsgBuf out = {0};
    bind(p, "{\"id\":\"i7\",\"text\":\"temp\\u0007 high ${x}\",\"session\":\"s\","
            "\"attrs\":{\"site\":\"<north & co>\",\"rack\":{\"row\":\"B\"},\"n\":3}}");
    cr_assert_eq(render(p, &out, err, sizeof err), 0, "%s: %s", body, err);
    cr_expect(out.len == strlen(want) && !memcmp(out.data, want, out.len),
              "%s:\n got  %.*s\n want %s", body, (int)out.len, out.data, want);
    unbind(p);
    msg_buf_free(&out);
    pack_free(p);
}

Test(lua, interp_fills_and_escapes_fields) {
    expect_render("return pd.interp('${id} at ${attrs.site} row ${attrs.rack.row} n=${attrs.n}', "
                  "msg)",
                  "i7 at <north & co> row B n=3");
    expect_render("return pd.interp('[${text}]', msg)", "[temp  high $ {x}]");
    expect_render("return pd.interp('${attrs.site}', msg, { escape = 'xml' })",
                  "&lt;north &amp; co&gt;");
    expect_render("return pd.interp('\"${text}\"', msg, { escape = 'json' })",
                  "\"temp\\u0007 high ${x}\"");
    expect_render("return pd.interp('${attrs.missing|n/a}', msg)", "n/a");
    expect_render("return pd.interp('${attrs.site}', msg, { max = 6 })", "<no…");
    expect_render_error("return pd.interp('${attrs.missing}', msg)",
                        "interp: no value for ${attrs.missing}");
}

Test(lua, truncate_keeps_characters_whole) {
    expect_render("return pd.truncate('风机齿轮箱', 7)", "风机");
    expect_render("return pd.truncate('风机齿轮箱', 8, '…')", "风…");
    expect_render("return pd.truncate('风机齿轮箱', 9, '…')", "风机…");
    expect_render("return pd.truncate('short', 10)", "short");
    expect_render("return pd.truncate('abcdef', 4, '...')", "a...");
}

Test(lua, json_round_trips_and_refuses_what_it_cannot_encode) {
    expect_render("return pd.json.encode(pd.json.decode('{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}'))",
                  "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}");
    expect_render("return pd.json.encode({ 1.5, true, 'é' })", "[1.5,true,\"é\"]");
    expect_render("local v, e = pd.json.decode('{oops') return tostring(v) .. ' ' .. e",
                  "nil invalid JSON at line 1 column 5: string or '}' expected near 'oops'");
    expect_render_error("return pd.json.encode({ f = print })", "cannot encode a function");
    expect_render_error("return pd.json.encode({ 0/0 })", "cannot encode NaN");
    expect_render_error("local t = {} t.self = t return pd.json.encode(t)", "nested deeper");
    expect_render_error("return pd.json.encode({ [true] = 1 })", "with a boolean key");
}

Test(lua, hash_is_deterministic) {
    expect_render("return pd.hash('abc')", "44bc2cf5ad770999");
    expect_render("local b = pd.bucket('user-42', 10) return tostring(b >= 1 and b <= 10) .. "
                  "tostring(b == pd.bucket('user-42', 10))",
                  "truetrue");
}

Test(lua, log_goes_through_promptd_with_the_pack_name) {
    expect_render("pd.set_pack_name('ops') pd.log.warn('disk', 93, 'full') print('hello', 1) "
                  "return 'x'",
                  "x");
    bool warn = false, info = false;
    for (int i = 0; i < nlines; i++) {
        warn |= !strcmp(lines[i], "<4>lua: pack ops: disk 93 full");
        info |= strstr(lines[i], "<6>lua: pack h") && strstr(lines[i], ": hello\t1");
    }
    cr_expect(warn, "no warning line from pd.log.warn");
    cr_expect(info, "no info line from print");
}

/* --- escapes: each is refused with a clear error and the pack keeps serving --- */

Test(lua, dangerous_libraries_are_absent) {
    expect_render("return tostring(os) .. tostring(io) .. tostring(debug) .. tostring(package) "
                  ".. tostring(dofile) .. tostring(loadfile) .. tostring(collectgarbage) .. "
                  "tostring(string.dump)",
                  "nilnilnilnilnilnilnilnil");
    expect_render_error("return os.execute('id')", "attempt to index a nil value (global 'os')");
    expect_render_error("return io.open('/etc/passwd')", "global 'io'");
    expect_render_error("debug.sethook() return 'x'", "global 'debug'");
    expect_render_error("return package.loadlib('libc.so.6', 'system')", "global 'package'");
}

Test(lua, binary_chunks_are_refused) {
    /* A Lua 5.4 binary chunk starts with ESC "Lua" 0x54. */
    expect_render("local f, e = load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n') "
                  "return tostring(f) .. ': ' .. e",
                  "nil: attempt to load a binary chunk (mode is 't')");
    expect_render("return tostring(load('return 1 + 1')())", "2");
}

Test(lua, shared_metatables_and_libraries_are_read_only) {
    expect_render("return tostring(getmetatable(''))", "false");
    expect_render_error("string.upper = function() return 'pwned' end",
                        "attempt to modify read-only table string");
    expect_render_error("rawset(string, 'upper', print)", "read-only library table");
    expect_render_error("setmetatable(string, {})", "cannot change a protected metatable");
    expect_render_error("table.insert = nil", "read-only table table");
    expect_render("local ok = pcall(function() string.upper = nil end) "
                  "return ('a'):upper() .. tostring(ok)",
                  "Afalse");
    expect_render("local n = 0 for k in pairs(math) do n = n + 1 end return tostring(n > 20)",
                  "true");
}

Test(lua, finalizers_are_refused) {
    expect_render_error("setmetatable({}, { __gc = function() while true do end end })",
                        "__gc metamethods are not allowed");
}

/* --- denial of service --- */

Test(lua, runaway_loops_hit_the_instruction_budget) {
    expect_render_error("while true do end", "instruction budget exceeded");
    expect_render_error("for i = 1, 10 do pcall(function() while true do end end) end return 'x'",
                        "instruction budget exceeded");
    expect_render_error("local co = coroutine.wrap(function() while true do end end) co()",
                        "instruction budget exceeded");
    expect_render_error("while true do pcall(error, 'x') end", "instruction budget exceeded");
}

/* An error raised inside a coroutine reaches the caller as the render's error, with its
 * place; a coroutine that yields out of a render, or returns the wrong type, is refused. */
Test(lua, errors_inside_coroutines_and_wrong_types_are_refused) {
    expect_render_error("return coroutine.wrap(function() error('inner fault') end)()",
                        "inner fault");
    expect_render_error("local co = coroutine.create(function() local x = nil; return x.y end) "
                        "local ok, e = coroutine.resume(co) error(e, 0)",
                        "attempt to index");
    expect_render_error("return coroutine.wrap(function() return {} end)()", "table");
    expect_render_error("return 0/0", "number");
}

Test(lua, memory_and_string_bombs_are_stopped) {
    expect_render_error("return string.rep('x', 1 << 30)", "string.rep would build more");
    expect_render_error("local s = 'x' for i = 1, 40 do s = s .. s end return s",
                        "not enough memory");
    expect_render_error("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 10000) .. i end",
                        "not enough memory");
}

Test(lua, recursion_is_bounded) {
    expect_render_error("local function f(n) return f(n + 1) + 1 end return f(1)",
                        "call depth exceeds");
    expect_render_error("local t = setmetatable({}, {}) getmetatable(t).__index = function(t, k) "
                        "return t[k] end return t.x",
                        "stack overflow");
}

Test(lua, pathological_patterns_are_stopped) {
    expect_render_error("return tostring(string.rep('a', 384):find('.-.-.-b'))",
                        "instruction budget exceeded");
    expect_render_error("return tostring(string.rep('a', 65536):match('(.-)*b'))",
                        "instruction budget exceeded");
    expect_render_error("return (string.rep('a', 5000):gsub('.-.-b', 'x'))",
                        "instruction budget exceeded");
    expect_render("return (('a,b,,c'):gsub(',', ';'))", "a;b;;c");
}

Test(lua, the_time_limit_stops_what_the_budget_allows) {
    const char *dirp =
        pack_with_render("slow", "if msg.id == 'slow' then while true do end end return 'ok'");
    SandboxLimits l = limits();
    l.instructions = 10000000000ull;
    l.time_ms = 30;
    char err[1024];
    Pack *p = pack_load(dirp, "lua", &l, err, sizeof err);
    cr_assert_not_null(p, "%s", err);
    MsgBuf out = {0};
    bind(p, "{\"id\":\"slow\",\"text\":\"x\"}");
    cr_expect_eq(render(p, &out, err, sizeof err), -1);
    cr_expect(strstr(err, "time limit exceeded (30 ms)"), "%s", err);
    unbind(p);
    msg_buf_free(&out);
    pack_free(p);
}

/* --- out of memory: every allocation failure is an error, never a crash or a leak --- */

Test(lua, failing_allocations_reach_every_error_path) {
    int loaded = 0, refused = 0, render_failures = 0;
    for (long n = 1; n < 6000; n += (n < 400 ? 1 : 37)) {
        SandboxLimits l = limits();
        l.fail_after = n;
        char err[1024] = "";
        Pack *p = pack_load("policies/alarm", "lua", &l, err, sizeof err);
        if (!p) {
            cr_assert(strstr(err, "memory") || strstr(err, "not found"), "n=%ld: %s", n, err);
            refused++;
            continue;
        }
        loaded++;
        /* The budget of allocations keeps running down: serve until it fails. */
        MsgBuf out = {0};
        for (int k = 0; k < 50; k++) {
            char why[256];
            Prompt pr;
            const char *j = "{\"id\":\"a\",\"text\":\"UPS-3 on battery\",\"attrs\":{\"a\":[1,2]}}";
            msg_decode_prompt(&pr, j, strlen(j), 65536, why, sizeof why);
            if (pack_bind(p, &pr, "ups-<num> on battery", 20, err, sizeof err) == 0) {
                if (pack_render(p, 0, 0, &out, err, sizeof err)) render_failures++;
                pack_unbind(p);
            } else {
                render_failures++;
            }
            msg_prompt_free(&pr);
        }
        msg_buf_free(&out);
        pack_free(p);
    }
    cr_expect_gt(refused, 100, "the allocation failures never hit loading");
    cr_expect_gt(loaded, 5, "no load ever succeeded");
    cr_expect_gt(render_failures, 0, "the allocation failures never hit serving");
}

/* The example in README.md is a pack that loads: the documentation cannot drift. */
Test(lua, readme_example_pack_loads) {
    char *readme = harness_read_file("README.md", NULL);
    cr_assert_not_null(readme);
    char *section = strstr(readme, "## Policy packs");
    char *start = section ? strstr(section, "```lua\n") : NULL;
    char *end = start ? strstr(start + 7, "\n```") : NULL;
    cr_assert(start && end, "no ```lua example under '## Policy packs' in README.md");
    *end = 0;
    const char *packdir = write_file("example", "init.lua", start + 7);
    free(readme);

    Pack *p = load_ok(packdir);
    cr_expect_str_eq(pack_name(p), "example");
    cr_expect_eq(pack_template_count(p), 2);
    cr_expect(pack_template(p, 1)->has_eligible);
    cr_expect_eq(pack_feature_count(p), 1);
    pack_free(p);
}
