/*
 * Budgeted Lua patterns: differential tests against Lua 5.4's own string.find, match, gmatch
 * and gsub in the same state (a table of tricky cases and 200,000 random ones), and the
 * budget stopping pathological patterns without harming the state.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../daemon/luapat.h"

/* -DRANDOM_CASES=... -DRANDOM_SEED=... run a longer or another differential campaign. */
#ifndef RANDOM_CASES
#define RANDOM_CASES 200000
#endif
#ifndef RANDOM_SEED
#define RANDOM_SEED 0x9e3779b97f4a7c15u
#endif

/* --- fixture --- */

/* The host's budget in a test: raise once the state's step count reaches limit. */
typedef struct {
    uint64_t limit; /* 0: never raise */
    int calls;      /* times the check ran */
} Budget;

static void budget_check(lua_State *L, void *ctx) {
    Budget *budget = ctx;
    budget->calls++;
    if (budget->limit && luapat_steps(L) >= budget->limit) luaL_error(L, "budget exceeded");
}

/* Lua side of the differential test. O holds Lua's own functions, N the budgeted ones.
 * check(fname, rk, nargs, ...) calls O[fname] and N[fname] with the same arguments (rk > 0
 * puts replacement number rk in argument 3 of gsub) and returns nil when every result, error
 * message and call of a replacement function agrees, else a description of both. */
static const char harness[] =
    "local O, N = O, N\n"
    "local pack, unpack = table.pack, table.unpack\n"
    "local function call(f, ...)\n" /* not a tail call: keeps the function name 'f' */
    "  local r = pack(f(...))\n"
    "  return unpack(r, 1, r.n)\n"
    "end\n"
    "local function outcome(f, a)\n"
    "  return pack(pcall(call, f, unpack(a, 1, a.n)))\n"
    "end\n"
    "local function gmatch_outcome(f, a)\n"
    "  local made = pack(pcall(call, f, unpack(a, 1, a.n)))\n"
    "  if not made[1] then return {made, n = 1} end\n"
    "  local list = {n = 0}\n"
    "  for i = 1, 60 do\n"
    "    local r = pack(pcall(made[2]))\n"
    "    list.n = i; list[i] = r\n"
    "    if not r[1] or r.n == 1 then break end\n"
    "  end\n"
    "  return list\n"
    "end\n"
    "local tables = {\n"
    "  {a = '<A>', b = false, ab = 7, [1] = 'one', [2] = {}, c = true, [''] = 'E'},\n"
    "  setmetatable({}, {__index = function(_, k) return k .. '?' end}),\n"
    "}\n"
    "local function repl(rk, log)\n"
    "  if rk >= 5 then return tables[rk - 4] end\n"
    "  return function(...)\n"
    "    local a = pack(...)\n"
    "    log.n = log.n + 1; log[log.n] = a\n"
    "    if rk == 1 then return (log.n % 3 == 0) and 'F' or (log.n % 3 == 1 and nil) end\n"
    "    if rk == 2 then return type(a[1]) == 'string' and a[1] .. '!' or a[1] end\n"
    "    if rk == 3 then return {} end\n"
    "    return log.n * 1.5\n"
    "  end\n"
    "end\n"
    "local function same(x, y)\n"
    "  if type(x) ~= type(y) or math.type(x) ~= math.type(y) then return false end\n"
    "  if type(x) ~= 'table' then return x == y end\n"
    "  if x.n ~= y.n then return false end\n"
    "  for i = 1, x.n do if not same(x[i], y[i]) then return false end end\n"
    "  return true\n"
    "end\n"
    "local function show(v)\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  if type(v) ~= 'table' then return tostring(v) end\n"
    "  local t = {}\n"
    "  for i = 1, v.n or #v do t[i] = show(v[i]) end\n"
    "  return '{' .. table.concat(t, ', ') .. '}'\n"
    "end\n"
    "local function side(T, fname, rk, a)\n"
    "  local log = {n = 0}\n"
    "  a = pack(unpack(a, 1, a.n))\n"
    "  if rk > 0 then a[3] = repl(rk, log) end\n"
    "  local r\n"
    "  if fname == 'gmatch' then r = gmatch_outcome(T.gmatch, a) else r = outcome(T[fname], a) "
    "end\n"
    "  return {r, log, n = 2}\n"
    "end\n"
    "checked, outcomes = 0, {error = 0, match = 0, none = 0}\n"
    "local function tally(r)\n" /* Lua's outcome: an error, a match, or none */
    "  if r.n and r.n > 0 and type(r[1]) == 'table' then r = r[r.n] end\n"
    "  local k = not r[1] and 'error' or (r.n > 1 and r[2] ~= nil) and 'match' or 'none'\n"
    "  outcomes[k] = outcomes[k] + 1\n"
    "end\n"
    "function check(fname, rk, nargs, ...)\n"
    "  local a = pack(...); a.n = nargs\n"
    "  local want, got = side(O, fname, rk, a), side(N, fname, rk, a)\n"
    "  checked = checked + 1\n"
    "  tally(want[1])\n"
    "  if same(want, got) then return nil end\n"
    "  return fname .. ' rk=' .. rk .. ' args=' .. show(a) .. '\\n  lua: ' .. show(want) ..\n"
    "         '\\n  new: ' .. show(got)\n"
    "end\n";

static void must_run(lua_State *L, const char *code) {
    if (luaL_dostring(L, code) != LUA_OK) cr_assert_fail("lua: %s", lua_tostring(L, -1));
}

/* A state whose string table holds the budgeted functions, with Lua's own kept in O. */
static lua_State *new_state(LuapatCheck check, void *ctx) {
    lua_State *L = luaL_newstate();
    cr_assert_not_null(L);
    luaL_openlibs(L);
    must_run(L, "O = {find = string.find, match = string.match, gmatch = string.gmatch,"
                "     gsub = string.gsub}");

    lua_getglobal(L, "string");
    luapat_install(L, -1, check, ctx);
    lua_pop(L, 1);

    must_run(L, "N = {find = string.find, match = string.match, gmatch = string.gmatch,"
                "     gsub = string.gsub}");
    must_run(L, "for k, f in pairs(N) do assert(O[k] ~= f, k) end"); /* really two sets */
    must_run(L, harness);
    cr_assert_eq(lua_gettop(L), 0, "install left %d values on the stack", lua_gettop(L));
    return L;
}

/* Runs code; returns NULL on success, else the error message (valid until the next call). */
static const char *run(lua_State *L, const char *code) {
    static char err[512];
    lua_settop(L, 0);
    if (luaL_dostring(L, code) == LUA_OK) return NULL;
    snprintf(err, sizeof err, "%s", lua_tostring(L, -1));
    lua_settop(L, 0);
    return err;
}

/* Runs code that must succeed. */
#define RUN_OK(L, code)                                                                            \
    do {                                                                                           \
        const char *err_ = run((L), (code));                                                       \
        cr_expect_null(err_, "lua: %s", err_);                                                     \
    } while (0)

/* --- differential: tricky cases --- */

/* T(fname, rk, ...) runs one case and collects mismatches in bad. ALL is every byte. */
static const char tricky[] =
    "local bad, unpack = {}, table.unpack\n"
    "local function T(fname, rk, ...)\n"
    "  local d = check(fname, rk, select('#', ...), ...)\n"
    "  if d then bad[#bad + 1] = d end\n"
    "end\n"
    "local ALL = {}\n"
    "for i = 0, 255 do ALL[#ALL + 1] = string.char(i) end\n"
    "ALL = table.concat(ALL)\n"
    /* every escape and class, alone, in a set and complemented in a set */
    "for i = 0, 255 do\n"
    "  local e = '%' .. string.char(i)\n"
    "  T('find', 0, ALL, e)\n"
    "  T('gsub', 0, ALL, e, '')\n"
    "  T('gsub', 0, ALL, '[' .. e .. ']', '')\n"
    "  T('gsub', 0, ALL, '[^' .. e .. ']+', '.')\n"
    "  T('find', 0, ALL, string.char(i))\n"
    "  T('gsub', 0, ALL, '[' .. string.char(i) .. ']', '')\n"
    "  T('gsub', 0, ALL, '[^' .. string.char(i) .. ']', '')\n"
    "  T('gsub', 0, ALL, '%f[' .. e .. ']', '|')\n"
    "end\n"
    /* sets: ']' and '-' at the edges, ranges, malformed */
    "for _, p in ipairs{'[]]', '[^]]', '[]a]', '[a-]', '[-a]', '[a-c-e]', '[%a-z]',\n"
    "    '[a-%%]', '[%]]', '[^%]]', '[]-a]', '[!-/]', '[z-a]', '[\\0-\\31]', '[\\128-\\255]',\n"
    "    '[a%]', '[a', '[^', '[', '[]', '[^]', '[%', '[%a', '[a-', 'x[', '[[]', '[^[]',\n"
    "    '[%]', '[a-%]]', '[%a-%d]', '[^^]', '[a^]', '[-]', '[--]', '[---]', '[^-]',\n"
    "    '[]-]', '[%-]', '[\\0]', '[^\\0]', '[a-\\0]', '[\\0-a]'} do\n"
    "  T('gsub', 0, ALL, p, '<%0>')\n"
    "  T('find', 0, 'x]-^a%', p)\n"
    "end\n"
    /* find: init and plain */
    "for _, a in ipairs{{'hello world', 'o w'}, {'hello world', 'o', 6}, {'hello', 'l', -2},\n"
    "    {'hello', 'l', -10}, {'hello', '', 10}, {'hello', '', 6}, {'hello', '', 7},\n"
    "    {'hello', 'h', 0}, {'', ''}, {'', '', 1}, {'', '', 2}, {'', '', 0}, {'', '', -1},\n"
    "    {'', 'a'}, {'a.b', '.', 1, true}, {'a.b', '.', 1, false}, {'a+b', '+', 1, true},\n"
    "    {'a+b', 'a+b'}, {'a+b', 'a%+b'}, {'abc', '[a', 1, true}, {'abc', 'b', math.maxinteger},\n"
    "    {'abc', 'b', math.mininteger}, {'abc', 'b', 2.0}, {'abc', 'b', 2.5}, {'abc', 'b', '2'},\n"
    "    {'abc', 'b', 'x'}, {123, 2}, {'abc', nil}, {nil, 'a'}, {'abc', {}}, {'a\\0b', '\\0'},\n"
    "    {'a\\0b', '%z'}, {'a\\0b', '[\\0]'}, {'a\\0b', '.\\0'}, {'a]b', ']'}, {'x', 'x', 1, "
    "nil},\n"
    "    {'abc', 'c', -1}, {'abc', 'c', 3, 'yes'}, {'abcabc', 'abc', 2, true}, {'abc', 'abcd', 1, "
    "true},\n"
    "    {'aaa', 'aa', 2, true}, {'abc', '', 4, true}, {'abc', '', 5, true}, {'a)', 'a)'},\n"
    "    {'abc', '^b', 2}, {'abc', '^a', 2}, {'abc', 'c$', -1}, {'ab$', '$', 1}, {'abc', '^'},\n"
    "    {'abc', '$'}, {'', '^$'}, {'a$b', 'a$b'}, {'a$b', '$b'}, {'^a', '^^a'}, {'a^', 'a^'},\n"
    "    {'abc', 'b', nil, true}, {'a.c', '.', nil, true}} do\n"
    "  T('find', 0, unpack(a, 1, 4)); T('match', 0, unpack(a, 1, 3))\n"
    "  T('gmatch', 0, unpack(a, 1, 3)); T('gsub', 0, a[1], a[2], '<%0>', a[3])\n"
    "end\n"
    /* quantifiers, anchors, captures, back-references, %b, %f */
    "local S = {'', 'a', 'aaa', 'abc', 'aab', 'hello world', 'hello hello', '  trim me  ',\n"
    "    'key = value', '((a)(b)', 'a(b(c)d)e', '(()', 'x(y)z(', 'THE (quick) fox',\n"
    "    'abc123def', '3.14 -2 +7e3', 'aXbXc', 'a,b,,c', ' a b '}\n"
    "local P = {'a*', 'a+', 'a-', 'a?', '.-b', '.*b', '[ab]+', '%d+%.?%d*', 'x*$', '^x*',\n"
    "    'a?a?a?aaa', '^abc', '^', '$', '^$', 'a$b', '$a', '^^a', 'a^', '(a)(b)', '(a(b)c)',\n"
    "    '()a()', '(()', '())', '(a', 'a)', ')', '(', '()', '(a)%1', '(a)%2', '%1', '(a%1)',\n"
    "    '()%1', '(%w+) %1', '((a)(b))%2%3', '(h)(e)(l)(l)(o)', '%b()', '%b((', '%bxy', '%b',\n"
    "    '%b(', '%b()x', '%b)(', '%baa', '%f[%w]%w+', '%f[%W]', '%f[%z]', '%f[^%z]', '%f[a]',\n"
    "    '%fa', '%f', '%f[', '%f[%w]$', '%f[%l]()', '^%s*(.-)%s*$', '(%w+)%s*=%s*(%w+)',\n"
    "    '%a+', '(%a)(%d*)', '()', '.-', 'a-b', '[^,]*', '([^,]*)', '%s*', '(.)%1', '%0',\n"
    "    '(a)%0', 'a%', '%', '(a)-', '(a)*', '%b()*', '%1*', 'a**', 'a*?', 'a+-', '.?$',\n"
    "    '(a*(.)%w(%s*))', '[%w_]+', 'x?y?z?', '%u%l+', '(%d)(%d)(%d)', '()()()()'}\n"
    "for _, s in ipairs(S) do for _, p in ipairs(P) do\n"
    "  T('find', 0, s, p); T('match', 0, s, p); T('gmatch', 0, s, p)\n"
    "  T('find', 0, s, p, 2); T('match', 0, s, p, -3); T('gmatch', 0, s, p, 3)\n"
    "  T('gsub', 0, s, p, '<%0>'); T('gsub', 0, s, p, '%1'); T('gsub', 0, s, p, '[%2]', 2)\n"
    "  for rk = 1, 6 do T('gsub', rk, s, p, 0) end\n"
    "end end\n"
    /* gsub: replacement strings, counts, replacement values */
    "for _, a in ipairs{{'hello world', 'o', '0'}, {'hello world', 'o', '0', 1},\n"
    "    {'hello world', 'o', '0', 0}, {'hello world', 'o', '0', -1}, {'hello', 'o', '0', 1.5},\n"
    "    {'hello', 'l', '0', '1'}, {'abc', '%w', '%0%0'}, {'abc', '%w', '%%'}, {'abc', '%w', "
    "'%'},\n"
    "    {'abc', '%w', '%a'}, {'abc', '(%w)', '%2'}, {'abc', '%w', '%1'}, {'abc', '%w', '%2'},\n"
    "    {'abc', '()', '%1'}, {'abc', '(b)()', '%2'}, {'abc', '(b)()', '%3'}, {'abc', '', '-'},\n"
    "    {'abc', '%w*', '-'}, {'abc', 'x*', '-'}, {'abc', 'b*', '-'}, {'hello', '^h', 'H'},\n"
    "    {'hello', '^', '>'}, {'hello', '$', '<'}, {'hello', '^l', 'L'}, {'abc', 'b', 3},\n"
    "    {'abc', 'b', 3.5}, {'abc', 'b', 2^63}, {'abc', 'b'}, {'abc', 'b', true}, {'abc', 'b', "
    "nil},\n"
    "    {'abc', '(', 'x'}, {'abc', 'b', 'a%\\0b'}, {'abc', 'b', '%\\0'}, {'abc', '(b', '%1'},\n"
    "    {'abc', '(b', '%0'}, {'abc', 'b', {b = 'B'}}, {'abc', '()b', {[2] = 'X'}},\n"
    "    {'abc', '.', {a = 1, b = true}}, {'abc', '.', {a = false}}, {'abc', '.', {}},\n"
    "    {'abc', '(.)', {a = 2.5}}, {'', '', 'x'}, {'', 'x*', 'y', 5}, {'abc', '.', '%0', "
    "math.mininteger},\n"
    "    {'abc', '.', '%0', math.maxinteger}, {123, 2, 4}, {'abc', nil, 'x'}, {'a', 'a', 'x', "
    "{}},\n"
    "    {'a b', '%s', '%%%0%%'}, {'abc', '[', 'x', 0}, {'abc', '[', 'x'}} do\n"
    "  T('gsub', 0, unpack(a, 1, 4))\n"
    "end\n"
    /* the recursion limit: 200 nested matches */
    "for k = 195, 205 do\n"
    "  T('find', 0, ('a'):rep(300), ('a?'):rep(k))\n"
    "  T('match', 0, ('a'):rep(300), ('a*'):rep(k))\n"
    "  T('find', 0, 'b', ('.-'):rep(k) .. 'b')\n"
    "  T('find', 0, ('x'):rep(10), ('(x?)'):rep(k // 8))\n"
    "  T('gsub', 0, ('ab'):rep(150), ('[ab]?'):rep(k), 'x')\n"
    "  T('find', 0, ('a'):rep(k), ('a'):rep(k) .. '$')\n"
    "end\n"
    /* the capture limit: 32 */
    "for k = 30, 34 do\n"
    "  T('find', 0, ('a'):rep(40), ('(a)'):rep(k))\n"
    "  T('find', 0, ('a'):rep(40), ('()'):rep(k))\n"
    "  T('match', 0, ('a'):rep(40), ('('):rep(k) .. 'a' .. (')'):rep(k))\n"
    "  T('gsub', 2, ('a'):rep(40), ('(a)'):rep(k), 0)\n"
    "end\n"
    "return #bad, table.concat(bad, '\\n', 1, math.min(#bad, 10))\n";

Test(luapat, agrees_with_lua_on_tricky_cases) {
    lua_State *L = new_state(NULL, NULL);

    if (luaL_dostring(L, tricky) != LUA_OK) cr_assert_fail("lua: %s", lua_tostring(L, -1));
    int bad = (int)lua_tointeger(L, -2);
    cr_expect_eq(bad, 0, "%d mismatches, first ones:\n%s", bad, lua_tostring(L, -1));

    lua_getglobal(L, "checked");
    cr_log_info("tricky cases compared: %lld", (long long)lua_tointeger(L, -1));
    cr_expect_gt(lua_tointeger(L, -1), 5000);
    cr_expect_gt(luapat_steps(L), 0);
    lua_close(L);
}

/* --- differential: random cases --- */

typedef struct {
    uint64_t state;
} Rng;

static uint32_t rnd(Rng *rng) {
    rng->state ^= rng->state >> 12; /* xorshift64* */
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return (uint32_t)((rng->state * 2685821657736338717u) >> 32);
}

static int below(Rng *rng, int n) {
    return (int)(rnd(rng) % (uint32_t)n);
}

typedef struct {
    char data[256];
    size_t len;
} Text;

/* Appends s with '@' standing for a NUL byte. */
static void put(Text *t, const char *s) {
    for (; *s && t->len < sizeof t->data; s++) t->data[t->len++] = *s == '@' ? '\0' : *s;
}

static void put_char(Text *t, char c) {
    if (t->len < sizeof t->data) t->data[t->len++] = c;
}

static const char *const atoms[] = {
    "a",     "b",     "c",     " ",     "(",     ".",        "%a",    "%A",   "%d",   "%D",
    "%s",    "%S",    "%w",    "%W",    "%p",    "%P",       "%l",    "%L",   "%u",   "%U",
    "%x",    "%X",    "%c",    "%C",    "%g",    "%G",       "%%",    "%.",   "%]",   "%z",
    "%-",    "%(",    "[ab]",  "[^a]",  "[a-c]", "[%a_]",    "[]]",   "[^]]", "[a-]", "[-a]",
    "[%]a]", "[^%s]", "[b-a]", "[]-a]", "[%w-]", "[a%-c]",   "-",     "*",    "?",    "+",
    ")",     "^",     "$",     "@",     "\xe9",  "[@-\x1f]", "[^()]", "1",    "A",    "%@",
};

static const char *const frontier_sets[] = {"[%w]", "[%s]", "[a]", "[^a]", "[%z]",
                                            "[@]",  "[]",   "a",   "[(]",  "[^%l]"};

static const char *const alphabets[] = {"ab", "abc ()", "aab()[]%.-^$ 1A@\xe9\x01"};

static void gen_items(Rng *rng, Text *p, int depth, int *quants);

/* One item: an atom with perhaps a quantifier, a capture, %b, %f or a back-reference. At
 * most three quantifiers keep Lua's own backtracking short on 40-byte subjects. */
static void gen_item(Rng *rng, Text *p, int depth, int *quants) {
    int kind = below(rng, 24);
    if (kind == 0 && depth < 2) {
        put(p, "(");
        gen_items(rng, p, depth + 1, quants);
        if (below(rng, 12)) put(p, ")");
    } else if (kind == 1) {
        put(p, "()");
    } else if (kind == 2) {
        put(p, "%b");
        for (int i = below(rng, 8) ? 2 : below(rng, 2); i > 0; i--)
            put_char(p, "()ab"[below(rng, 4)]);
    } else if (kind == 3) {
        put(p, "%f");
        put(p, frontier_sets[below(rng, 10)]);
    } else if (kind == 4) {
        put_char(p, '%');
        put_char(p, (char)('0' + below(rng, 4)));
    } else {
        const char *atom = atoms[below(rng, (int)(sizeof atoms / sizeof atoms[0]))];
        bool quant_like = strchr("*+-?", atom[0]) && atom[1] == '\0';
        if (quant_like && *quants >= 3) atom = "a";
        if (quant_like) ++*quants;
        put(p, atom);
        if (*quants < 3 && below(rng, 3) == 0) {
            put_char(p, "*+-?"[below(rng, 4)]);
            ++*quants;
        }
    }
}

static void gen_items(Rng *rng, Text *p, int depth, int *quants) {
    for (int n = below(rng, depth ? 4 : 7); n > 0; n--) gen_item(rng, p, depth, quants);
}

/* A random pattern; one in twenty is cut short or given a stray '%' or '['. */
static void gen_pattern(Rng *rng, Text *p) {
    int quants = 0;
    p->len = 0;
    if (below(rng, 5) == 0) put(p, "^");
    gen_items(rng, p, 0, &quants);
    if (below(rng, 6) == 0) put(p, "$");

    int mangle = below(rng, 40);
    if (mangle == 0 && p->len > 0) p->len = (size_t)below(rng, (int)p->len);
    if (mangle == 1) put(p, "%");
    if (mangle == 2) put(p, "[");
}

static void gen_subject(Rng *rng, Text *s) {
    const char *alphabet = alphabets[below(rng, 3)];
    size_t n = strlen(alphabet);
    s->len = 0;
    for (int len = below(rng, 41); len > 0; len--) {
        char c = alphabet[below(rng, (int)n)];
        put_char(s, c == '@' ? '\0' : c);
    }
}

/* Pushes an init argument (or nothing); returns how many values it pushed. */
static int push_init(lua_State *L, Rng *rng) {
    switch (below(rng, 8)) {
    case 0: return 0;
    case 1: lua_pushnil(L); return 1;
    case 2: lua_pushinteger(L, (lua_Integer)1 << 40); return 1;
    case 3: lua_pushinteger(L, -((lua_Integer)1 << 40)); return 1;
    default: lua_pushinteger(L, below(rng, 91) - 45); return 1;
    }
}

static const char *const repl_strings[] = {"x", "%0",     "%1", "<%1|%2>", "%%",     "%",  "%a",
                                           "",  "[%2%1]", "%9", "%3",      "%0%0%%", "a%@"};

/* Pushes gsub's replacement and count; returns the replacement code for check() and sets
 * *nargs. */
static int push_gsub_args(lua_State *L, Rng *rng, int *nargs) {
    int rk = 0;
    int kind = below(rng, 20);
    if (kind < 6) {
        rk = 1 + kind; /* a function or table built by the harness */
        lua_pushinteger(L, 0);
    } else if (kind == 6) {
        lua_pushinteger(L, 7);
    } else if (kind == 7) {
        lua_pushboolean(L, 1); /* an error: not a valid replacement */
    } else {
        Text r = {.len = 0};
        put(&r, repl_strings[below(rng, (int)(sizeof repl_strings / sizeof repl_strings[0]))]);
        lua_pushlstring(L, r.data, r.len);
    }
    *nargs += 1;

    int count = below(rng, 10);
    if (count < 6) {
        lua_pushinteger(L, count - 1);
        *nargs += 1;
    } else if (count == 6) {
        lua_pushnumber(L, 1.5);
        *nargs += 1;
    }
    return rk;
}

/* Runs check() for fname on subject s and pattern p with random further arguments; returns
 * NULL or the mismatch description (on the Lua stack until the next call). */
static const char *check_random(lua_State *L, Rng *rng, const char *fname, const Text *s,
                                const Text *p) {
    lua_settop(L, 0);
    lua_getglobal(L, "check");
    lua_pushstring(L, fname);
    lua_pushinteger(L, 0); /* rk, replaced below for gsub */
    lua_pushinteger(L, 0); /* nargs, replaced below */
    lua_pushlstring(L, s->data, s->len);
    lua_pushlstring(L, p->data, p->len);

    int nargs = 2, rk = 0;
    if (!strcmp(fname, "gsub")) {
        rk = push_gsub_args(L, rng, &nargs);
    } else {
        int n = push_init(L, rng);
        nargs += n;
        if (n && !strcmp(fname, "find") && below(rng, 3) == 0) {
            lua_pushboolean(L, below(rng, 2));
            nargs++;
        }
    }
    lua_pushinteger(L, rk);
    lua_replace(L, 3);
    lua_pushinteger(L, nargs);
    lua_replace(L, 4);

    if (lua_pcall(L, lua_gettop(L) - 1, 1, 0) != LUA_OK) return lua_tostring(L, -1);
    return lua_tostring(L, -1);
}

Test(luapat, agrees_with_lua_on_random_patterns) {
    static const char *const fnames[] = {"find", "match", "gmatch", "gsub"};
    lua_State *L = new_state(NULL, NULL);
    Rng rng = {RANDOM_SEED};
    int bad = 0;

    for (int i = 0; i < RANDOM_CASES; i++) {
        Text s, p;
        gen_subject(&rng, &s);
        gen_pattern(&rng, &p);
        const char *fname = fnames[i % 4];
        const char *diff = check_random(L, &rng, fname, &s, &p);
        if (diff && ++bad <= 40) cr_log_error("case %d: %s", i, diff);
    }
    cr_expect_eq(bad, 0, "%d of %d random cases differ from Lua", bad, RANDOM_CASES);

    lua_getglobal(L, "checked");
    cr_expect_eq(lua_tointeger(L, -1), RANDOM_CASES);
    lua_settop(L, 0);
    must_run(L, "return outcomes.match, outcomes.none, outcomes.error");
    cr_log_info("random cases: %lld matched, %lld found nothing, %lld raised errors",
                (long long)lua_tointeger(L, 1), (long long)lua_tointeger(L, 2),
                (long long)lua_tointeger(L, 3));
    for (int i = 1; i <= 3; i++)
        cr_expect_gt(lua_tointeger(L, i), RANDOM_CASES / 20, "outcome %d is too rare", i);
    lua_close(L);
}

/* --- the budget --- */

/* Pathological calls; each would run for seconds to hours in Lua's own matcher. */
static const char *const pathological[] = {
    "return string.rep('a', 384):find('.-.-.-b')",
    "return string.rep('a', 65536):find('.-.-.-b')",
    "return ('a'):rep(1e5):match('(.-)*b')",
    "return ('a'):rep(1e5):match('(.-)%1b')",
    "return ('a'):rep(5000):find('a*a*a*a*b')",
    "return ('a'):rep(384):gsub('.-.-.-b', 'x')",
    "return ('a'):rep(384):gsub('(.-)(.-)(.-)b', function(a) return a end)",
    "for x in ('a'):rep(384):gmatch('.-.-.-b') do end",
    "for x, y in ('a'):rep(1e4):gmatch('()(.-)%2b') do end",
    "return ('('):rep(3e4):find('%b()%b()b')",
    "return ('a'):rep(1e5):find('[' .. ('b'):rep(1e5) .. ']')",
};

Test(luapat, host_check_stops_pathological_patterns) {
    for (size_t i = 0; i < sizeof pathological / sizeof pathological[0]; i++) {
        Budget budget = {.limit = 1000000};
        lua_State *L = new_state(budget_check, &budget);
        const char *err = run(L, pathological[i]);

        cr_expect(err && strstr(err, "budget exceeded"), "%s: got %s", pathological[i],
                  err ? err : "success");
        uint64_t steps = luapat_steps(L);
        cr_expect(steps >= budget.limit && steps < budget.limit + 2 * LUAPAT_CHECK_EVERY,
                  "%s: %llu steps for a limit of %llu", pathological[i], (unsigned long long)steps,
                  (unsigned long long)budget.limit);
        lua_close(L);
    }
}

Test(luapat, absolute_cap_stops_match_without_a_host_check) {
    lua_State *L = new_state(NULL, NULL);

    const char *err = run(L, "return string.rep('a', 65536):find('.-.-.-b')");
    cr_assert(err && strstr(err, LUAPAT_BUDGET_MSG), "got %s", err ? err : "success");
    uint64_t steps = luapat_steps(L);
    cr_expect(steps >= LUAPAT_MAX_STEPS && steps < LUAPAT_MAX_STEPS + 2 * LUAPAT_CHECK_EVERY,
              "%llu steps for a cap of %llu", (unsigned long long)steps,
              (unsigned long long)LUAPAT_MAX_STEPS);

    /* The cap is per call: the next ordinary call works. */
    RUN_OK(L, "assert(('abc'):find('b') == 2)");
    lua_close(L);
}

Test(luapat, check_runs_every_check_every_steps) {
    Budget budget = {.limit = 0};
    lua_State *L = new_state(budget_check, &budget);

    RUN_OK(L, "assert(('a'):rep(300):find('.-.-b') == nil)");
    uint64_t steps = luapat_steps(L);
    cr_expect(steps > 100 * LUAPAT_CHECK_EVERY, "only %llu steps", (unsigned long long)steps);
    cr_expect_eq((uint64_t)budget.calls, steps / LUAPAT_CHECK_EVERY, "%d calls for %llu steps",
                 budget.calls, (unsigned long long)steps);
    lua_close(L);
}

Test(luapat, long_scans_run_the_check_once_per_window) {
    Budget budget = {.limit = 0};
    lua_State *L = new_state(budget_check, &budget);

    /* Each test of the set and each %b scan charges many steps at once. */
    RUN_OK(L, "local set = '[' .. ('b'):rep(1e5) .. ']'\n"
              "assert(('a'):rep(100):find(set) == nil)\n"
              "assert(('('):rep(3000):find('%b()') == nil)\n"
              "assert(('x'):rep(1e5):find(('y'):rep(50), 1, true) == nil)");
    uint64_t steps = luapat_steps(L);
    cr_expect_gt(steps, 100 * 100000 / 16);
    cr_expect_eq((uint64_t)budget.calls, steps / LUAPAT_CHECK_EVERY, "%d calls for %llu steps",
                 budget.calls, (unsigned long long)steps);
    lua_close(L);
}

Test(luapat, many_small_calls_reach_the_check) {
    Budget budget = {.limit = 0};
    lua_State *L = new_state(budget_check, &budget);

    RUN_OK(L, "for i = 1, 20000 do assert(('abc'):find('c$')) end");
    cr_expect_gt(budget.calls, 0);
    cr_expect_eq((uint64_t)budget.calls, luapat_steps(L) / LUAPAT_CHECK_EVERY);
    lua_close(L);
}

Test(luapat, state_survives_a_stop_inside_gsub_with_a_function) {
    Budget budget = {.limit = 200000};
    lua_State *L = new_state(budget_check, &budget);

    /* The replacement runs between matches, so the stop lands with a luaL_Buffer in use and
     * Lua frames of the function below. */
    const char *err = run(L, "calls = 0\n"
                             "return (('ab'):rep(3000) .. ('a'):rep(400)):gsub('a.-.-.-b',\n"
                             "    function(x) calls = calls + 1; return x:upper() end)");
    cr_assert(err && strstr(err, "budget exceeded"), "got %s", err ? err : "success");
    RUN_OK(L, "assert(calls > 0)");

    budget.limit = 0;
    cr_expect_null(
        run(L, "collectgarbage()\n"
               "local s, n = ('hello world'):gsub('%w+', function(w) return w:upper() end)\n"
               "assert(s == 'HELLO WORLD' and n == 2)\n"
               "assert(('k=v'):match('(%w)=(%w)') == 'k')"));
    lua_close(L);
}

Test(luapat, state_survives_a_stop_inside_gmatch) {
    Budget budget = {.limit = 100000};
    lua_State *L = new_state(budget_check, &budget);

    const char *err = run(L, "it = ('a'):rep(300):gmatch('(.-).-b')\n"
                             "return it()");
    cr_assert(err && strstr(err, "budget exceeded"), "got %s", err ? err : "success");

    /* The iterator raised mid-scan; with the budget lifted it resumes and ends cleanly. */
    budget.limit = 0;
    RUN_OK(L, "assert(it() == nil and it() == nil)\n"
              "local n = 0\n"
              "for w in ('one two three'):gmatch('%a+') do n = n + 1 end\n"
              "assert(n == 3)\n"
              "collectgarbage()");
    lua_close(L);
}

Test(luapat, states_count_their_own_steps) {
    lua_State *a = new_state(NULL, NULL);
    lua_State *b = luaL_newstate();
    cr_expect_eq(luapat_steps(b), 0, "no steps before install");
    luaL_openlibs(b);
    lua_getglobal(b, "string");
    luapat_install(b, -1, NULL, NULL);
    lua_pop(b, 1);

    uint64_t before = luapat_steps(a);
    RUN_OK(a, "assert(('hello world'):match('(%w+) (%w+)') == 'hello')");
    cr_expect_gt(luapat_steps(a), before);
    cr_expect_eq(luapat_steps(b), 0);
    lua_close(a);
    lua_close(b);
}

Test(luapat, string_methods_use_the_budgeted_functions) {
    Budget budget = {.limit = 50000};
    lua_State *L = new_state(budget_check, &budget);

    const char *err = run(L, "local s = ('a'):rep(384); return s:find('.-.-.-b')");
    cr_expect(err && strstr(err, "budget exceeded"), "got %s", err ? err : "success");
    lua_close(L);
}

Test(luapat, argument_errors_name_the_function_as_lua_does) {
    lua_State *L = new_state(NULL, NULL);

    const char *err = run(L, "string.find(nil, 'a')");
    cr_expect(err && strstr(err, "bad argument #1 to 'find' (string expected, got nil)"), "got %s",
              err ? err : "success");
    err = run(L, "string.gsub('a', 'a')");
    cr_expect(err && strstr(err, "bad argument #3 to 'gsub' (string/function/table expected"),
              "got %s", err ? err : "success");
    lua_close(L);
}
