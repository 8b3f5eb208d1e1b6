/*
 * Lua 5.4 string patterns with a step budget: string.find, match, gmatch and gsub for the
 * script sandbox, written from the reference manual (§6.4.1 and the four functions).
 *
 * What it does: the same results and the same error messages as Lua 5.4.4 for every
 * pattern, subject, init, plain flag, replacement and count, including the recursion limit
 * ("pattern too complex" past 200 nested matches), with C-locale character classes. Every
 * matching step is counted; every LUAPAT_CHECK_EVERY steps of the state the host's check
 * runs and may raise a Lua error, and one call stops by itself after LUAPAT_MAX_STEPS.
 *
 * What it does not do: make a bad pattern fast. The matcher backtracks exactly as Lua's does
 * (anything else would change which match is found); the budget only bounds how long it may.
 * Plain finds (the plain flag, or a pattern without special characters) use memmem, which is
 * linear. The time a gsub replacement function runs is the host's instruction hook's
 * business, not this budget's, and so is memory: the output of gsub grows in a luaL_Buffer
 * under the state's allocator.
 *
 * No function here allocates C memory or holds a C resource across a call that can raise:
 * state lives in the C stack frame, on the Lua stack, in luaL_Buffer or in userdata, so an
 * error raised by the host's check (a longjmp) unwinds cleanly from any point.
 */
#include "luapat.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#define ESC          '%'
#define SPECIALS     "^$*+?.([%-" /* a pattern without any of these is searched plainly */
#define MAX_CAPTURES 32           /* Lua's LUA_MAXCAPTURES */
#define MAX_DEPTH    200          /* nested match calls; Lua's MAXCCALLS */
#define CAP_OPEN     (-1)         /* capture length while its ')' is not reached */
#define CAP_POSITION (-2)         /* capture length of "()", which records a position */
#define NO_MATCH     ((size_t)-1)

/* The host's check, one per luapat_install; upvalue of the functions it installed. */
typedef struct {
    LuapatCheck check;
    void *ctx;
    uint64_t *counter; /* the state's step count; this userdata's user value keeps it alive */
} Host;

typedef struct {
    const char *init;
    ptrdiff_t len; /* bytes, CAP_OPEN or CAP_POSITION */
} Capture;

/* One call's matching state; lives in the C frame of the string function. */
typedef struct {
    lua_State *L;
    const Host *host;
    const char *src;     /* subject */
    const char *src_end; /* one past the subject */
    const char *pat_end; /* one past the pattern: items stop here, not at a NUL */
    int level;           /* captures started */
    int depth_left;      /* nested match calls allowed before "pattern too complex" */
    int64_t left;        /* steps until the next checkpoint */
    int64_t window;      /* value of left at the last flush */
    uint64_t used;       /* steps of this call flushed so far */
    Capture cap[MAX_CAPTURES];
} Matcher;

/* gmatch iterator state, a userdata upvalue of the iterator. */
typedef struct {
    size_t pos;  /* offset where the next search starts; past the end when done */
    size_t last; /* end offset of the previous match, or NO_MATCH */
} Gmatch;

static const char counter_key = 0; /* registry key of the state's step counter */

static inline int uc(char c) {
    return (unsigned char)c;
}

/* --- character classes --- */

/* C-locale ctype as bit sets, built at compile time so that the result never depends on
 * setlocale in the host and costs one load per test. */
enum {
    CT_ALPHA = 1 << 0,
    CT_CNTRL = 1 << 1,
    CT_DIGIT = 1 << 2,
    CT_GRAPH = 1 << 3,
    CT_LOWER = 1 << 4,
    CT_PUNCT = 1 << 5,
    CT_SPACE = 1 << 6,
    CT_UPPER = 1 << 7,
    CT_ALNUM = 1 << 8,
    CT_XDIGIT = 1 << 9,
    CT_ZERO = 1 << 10,   /* %z, deprecated since 5.2 but still matched by 5.4 */
    CT_NEGATE = 1 << 15, /* in class_kind only: %A, %D, ... */
};

#define IN(c, lo, hi) ((c) >= (lo) && (c) <= (hi))
#define UP(c)         IN(c, 'A', 'Z')
#define LO(c)         IN(c, 'a', 'z')
#define DI(c)         IN(c, '0', '9')
#define GR(c)         IN(c, 33, 126)
#define CT(c)                                                                                      \
    ((UP(c) || LO(c) ? CT_ALPHA : 0) | (IN(c, 0, 31) || (c) == 127 ? CT_CNTRL : 0) |               \
     (DI(c) ? CT_DIGIT : 0) | (GR(c) ? CT_GRAPH : 0) | (LO(c) ? CT_LOWER : 0) |                    \
     (GR(c) && !UP(c) && !LO(c) && !DI(c) ? CT_PUNCT : 0) |                                        \
     (IN(c, 9, 13) || (c) == 32 ? CT_SPACE : 0) | (UP(c) ? CT_UPPER : 0) |                         \
     (UP(c) || LO(c) || DI(c) ? CT_ALNUM : 0) |                                                    \
     (DI(c) || IN(c, 'a', 'f') || IN(c, 'A', 'F') ? CT_XDIGIT : 0) | ((c) == 0 ? CT_ZERO : 0))
#define CT4(c)  CT(c), CT(c + 1), CT(c + 2), CT(c + 3)
#define CT16(c) CT4(c), CT4(c + 4), CT4(c + 8), CT4(c + 12)
#define CT64(c) CT16(c), CT16(c + 16), CT16(c + 32), CT16(c + 48)

static const uint16_t ctype_bits[256] = {CT64(0), CT64(64), CT64(128), CT64(192)};

/* What the letter after '%' stands for; 0: the character itself ("%." is a dot). */
static const uint16_t class_kind[256] = {
    ['a'] = CT_ALPHA,
    ['c'] = CT_CNTRL,
    ['d'] = CT_DIGIT,
    ['g'] = CT_GRAPH,
    ['l'] = CT_LOWER,
    ['p'] = CT_PUNCT,
    ['s'] = CT_SPACE,
    ['u'] = CT_UPPER,
    ['w'] = CT_ALNUM,
    ['x'] = CT_XDIGIT,
    ['z'] = CT_ZERO,
    ['A'] = CT_ALPHA | CT_NEGATE,
    ['C'] = CT_CNTRL | CT_NEGATE,
    ['D'] = CT_DIGIT | CT_NEGATE,
    ['G'] = CT_GRAPH | CT_NEGATE,
    ['L'] = CT_LOWER | CT_NEGATE,
    ['P'] = CT_PUNCT | CT_NEGATE,
    ['S'] = CT_SPACE | CT_NEGATE,
    ['U'] = CT_UPPER | CT_NEGATE,
    ['W'] = CT_ALNUM | CT_NEGATE,
    ['X'] = CT_XDIGIT | CT_NEGATE,
    ['Z'] = CT_ZERO | CT_NEGATE,
};

/* Does character c match the escape "%cl"? */
static inline bool class_match(int c, int cl) {
    unsigned kind = class_kind[cl];
    if (!kind) return c == cl;
    bool in = (ctype_bits[c] & kind) != 0; /* CT_NEGATE is never a ctype bit */
    return (kind & CT_NEGATE) ? !in : in;
}

/* Does c belong to the set that opens with '[' at p and closes with ']' at close? The
 * members are escapes, ranges "x-y" and single characters; a '-' that cannot be a range is
 * itself. */
static bool set_match(int c, const char *p, const char *close) {
    bool found = true;
    p++;
    if (*p == '^') {
        found = false;
        p++;
    }
    for (; p < close; p++) {
        if (*p == ESC) {
            p++;
            if (class_match(c, uc(*p))) return found;
        } else if (p[1] == '-' && p + 2 < close) {
            if (uc(p[0]) <= c && c <= uc(p[2])) return found;
            p += 2;
        } else if (uc(*p) == c) {
            return found;
        }
    }
    return !found;
}

/* --- step budget --- */

/* Raises a Lua error the way luaL_error does, after accounting for the steps taken. */
static _Noreturn void matcher_error(Matcher *m, const char *fmt, ...);

/* Adds the steps since the last flush to the call's and the state's counts. */
static void flush_steps(Matcher *m) {
    uint64_t n = (uint64_t)(m->window - m->left);
    m->used += n;
    *m->host->counter += n;
    m->window = m->left;
}

/* Runs when left reaches 0; out of line so that step() stays two instructions. A long scan
 * may cross several windows at once: the check then runs once per window, so that a host
 * counting its calls counts every step. */
static __attribute__((noinline)) void checkpoint(Matcher *m) {
    flush_steps(m);
    if (m->used >= LUAPAT_MAX_STEPS) matcher_error(m, "%s", LUAPAT_BUDGET_MSG);

    int64_t windows = 1 + -m->left / LUAPAT_CHECK_EVERY;
    m->left += windows * LUAPAT_CHECK_EVERY;
    m->window = m->left;
    if (!m->host->check) return;
    for (int64_t i = 0; i < windows; i++) m->host->check(m->L, m->host->ctx);
}

static inline void step(Matcher *m, int64_t n) {
    m->left -= n;
    if (m->left <= 0) checkpoint(m);
}

static _Noreturn void matcher_error(Matcher *m, const char *fmt, ...) {
    va_list ap;
    flush_steps(m);

    luaL_where(m->L, 1);
    va_start(ap, fmt);
    lua_pushvfstring(m->L, fmt, ap);
    va_end(ap);
    lua_concat(m->L, 2);
    lua_error(m->L);
    abort(); /* not reached: lua_error does not return */
}

/* Steps one test of the item p..ep costs: a long set takes time in proportion to its
 * length, and the budget must bound time, not tests. */
static inline int64_t item_cost(const char *p, const char *ep) {
    return 1 + ((ep - p) >> 4);
}

/* --- pattern items --- */

/* End of the set whose members start at p (after '['). The first member is taken as it is,
 * so "[]]" and "[^]]" are sets holding ']'. */
static const char *set_end(Matcher *m, const char *p) {
    const char *end = m->pat_end;
    if (p < end && *p == '^') p++;

    for (bool first = true;; first = false) {
        if (p >= end) matcher_error(m, "malformed pattern (missing ']')");
        if (*p == ']' && !first) return p + 1;
        p += (*p == ESC && p + 1 < end) ? 2 : 1;
    }
}

/* End of the single-character item at p: a character, ".", "%x" or a set. */
static inline const char *item_end(Matcher *m, const char *p) {
    if (*p == ESC) {
        if (p + 1 >= m->pat_end) matcher_error(m, "malformed pattern (ends with '%%')");
        return p + 2;
    }
    return *p == '[' ? set_end(m, p + 1) : p + 1;
}

/* Does the item p..ep match the subject character at s? */
static inline bool single_match(const Matcher *m, const char *s, const char *p, const char *ep) {
    if (s >= m->src_end) return false;
    int c = uc(*s);
    switch (*p) {
    case '.': return true;
    case ESC: return class_match(c, uc(p[1]));
    case '[': return set_match(c, p, ep - 1);
    default: return uc(*p) == c;
    }
}

/* --- matching --- */

static const char *match(Matcher *m, const char *s, const char *p);

/* "x*" and "x+": takes as many x as there are, then gives them back one by one, trying the
 * rest of the pattern (from ep + 1) after each. s is where the repeats start. */
static const char *match_greedy(Matcher *m, const char *s, const char *p, const char *ep) {
    int64_t cost = item_cost(p, ep);
    const char *t = s;
    while (single_match(m, t, p, ep)) {
        step(m, cost);
        t++;
    }

    for (;; t--) {
        const char *e = match(m, t, ep + 1);
        if (e || t == s) return e;
    }
}

/* "x-": tries the rest of the pattern first and takes one more x only when it fails. */
static const char *match_lazy(Matcher *m, const char *s, const char *p, const char *ep) {
    int64_t cost = item_cost(p, ep);
    for (;;) {
        const char *e = match(m, s, ep + 1);
        if (e) return e;
        step(m, cost);
        if (!single_match(m, s, p, ep)) return NULL;
        s++;
    }
}

/* "(" at p - 1, or "()" for a position. */
static const char *open_capture(Matcher *m, const char *s, const char *p) {
    ptrdiff_t len = CAP_OPEN;
    if (p < m->pat_end && *p == ')') {
        len = CAP_POSITION;
        p++;
    }
    if (m->level >= MAX_CAPTURES) matcher_error(m, "too many captures");

    m->cap[m->level] = (Capture){s, len};
    m->level++;
    const char *e = match(m, s, p);
    if (!e) m->level--; /* backtracking past the '(' */
    return e;
}

/* ")" at p - 1 closes the innermost capture still open. */
static const char *close_capture(Matcher *m, const char *s, const char *p) {
    int l = m->level - 1;
    while (l >= 0 && m->cap[l].len != CAP_OPEN) l--;
    if (l < 0) matcher_error(m, "invalid pattern capture");

    m->cap[l].len = s - m->cap[l].init;
    const char *e = match(m, s, p);
    if (!e) m->cap[l].len = CAP_OPEN;
    return e;
}

/* "%bxy" with p at x: a balanced run from x to its y. */
static const char *match_balance(Matcher *m, const char *s, const char *p) {
    if (m->pat_end - p < 2) matcher_error(m, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != p[0]) return NULL;

    ptrdiff_t open = 1;
    const char *t = s + 1;
    for (; t < m->src_end; t++) {
        if (*t == p[1]) {
            if (--open == 0) break;
        } else if (*t == p[0]) {
            open++;
        }
    }
    step(m, (t - s) >> 4); /* the scan is linear but may be long */
    return t < m->src_end ? t + 1 : NULL;
}

/* "%f[set]" with *pp at '%': the empty string between a character not in the set and one in
 * it; the subject's edges count as '\0'. Advances *pp past the set. */
static const char *match_frontier(Matcher *m, const char *s, const char **pp) {
    const char *set = *pp + 2;
    if (set >= m->pat_end || *set != '[') matcher_error(m, "missing '[' after '%%f' in pattern");
    const char *ep = item_end(m, set);
    step(m, item_cost(set, ep));

    int prev = s > m->src ? uc(s[-1]) : 0;
    int next = s < m->src_end ? uc(*s) : 0;
    *pp = ep;
    return !set_match(prev, set, ep - 1) && set_match(next, set, ep - 1) ? s : NULL;
}

/* "%1" to "%9": the text of an earlier, closed capture. */
static const char *match_backref(Matcher *m, const char *s, int digit) {
    int l = digit - '1';
    if (l < 0 || l >= m->level || m->cap[l].len == CAP_OPEN)
        matcher_error(m, "invalid capture index %%%d", l + 1);

    ptrdiff_t len = m->cap[l].len;
    if (len < 0) return NULL; /* a position has no text; Lua never matches it either */
    step(m, len >> 4);
    if (m->src_end - s < len || memcmp(m->cap[l].init, s, (size_t)len) != 0) return NULL;
    return s + len;
}

/* %b, %f and %0-%9, with *pp at '%': items that are not one character. Advances *pp. */
static const char *match_escape(Matcher *m, const char *s, const char **pp) {
    const char *p = *pp + 1;
    if (*p == 'b') {
        s = match_balance(m, s, p + 1);
        *pp = p + 3;
        return s;
    }
    if (*p == 'f') return match_frontier(m, s, pp);
    *pp = p + 1;
    return match_backref(m, s, uc(*p));
}

static inline bool is_special_escape(char c) {
    return c == 'b' || c == 'f' || (c >= '0' && c <= '9');
}

/* The single-character item at *pp and its quantifier. Returns true when matching goes on
 * with the updated *sp and *pp in the same frame, false when *sp is the final result. */
static inline bool match_quantified(Matcher *m, const char **sp, const char **pp) {
    const char *s = *sp, *p = *pp;
    const char *ep = item_end(m, p);
    char q = ep < m->pat_end ? *ep : '\0';
    step(m, item_cost(p, ep));

    if (!single_match(m, s, p, ep)) {
        if (q != '*' && q != '?' && q != '-') {
            *sp = NULL;
            return false;
        }
        *pp = ep + 1; /* zero repeats are enough for these */
        return true;
    }
    switch (q) {
    case '?': {
        const char *e = match(m, s + 1, ep + 1);
        *pp = ep + 1;
        if (e) *sp = e;
        return !e; /* the rest failed after x: go on without x */
    }
    case '*': *sp = match_greedy(m, s, p, ep); return false;
    case '+': *sp = match_greedy(m, s + 1, p, ep); return false;
    case '-': *sp = match_lazy(m, s, p, ep); return false;
    default:
        *sp = s + 1;
        *pp = ep;
        return true;
    }
}

/* Matches the pattern from p against the subject from s; returns the end of the match or
 * NULL. Recursion happens only where backtracking needs it (quantifiers with a choice,
 * captures), exactly where Lua's matcher recurses, so that the depth limit trips alike. */
static const char *match_items(Matcher *m, const char *s, const char *p) {
    while (p < m->pat_end) {
        switch (*p) {
        case '(': return open_capture(m, s, p + 1);
        case ')': return close_capture(m, s, p + 1);
        case '$':
            if (p + 1 == m->pat_end) return s == m->src_end ? s : NULL;
            break;
        case ESC:
            if (p + 1 < m->pat_end && is_special_escape(p[1])) {
                step(m, 1);
                s = match_escape(m, s, &p);
                if (!s) return NULL;
                continue;
            }
            break;
        }
        if (!match_quantified(m, &s, &p)) return s;
    }
    return s;
}

static const char *match(Matcher *m, const char *s, const char *p) {
    if (m->depth_left-- == 0) matcher_error(m, "pattern too complex");
    step(m, 1);

    const char *e = match_items(m, s, p);
    m->depth_left++;
    return e;
}

/* --- matcher state --- */

/* host_up: upvalue index of the Host. */
static void matcher_init(Matcher *m, lua_State *L, int host_up, const char *s, size_t ls,
                         const char *p, size_t lp) {
    m->L = L;
    m->host = lua_touserdata(L, lua_upvalueindex(host_up));
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->used = 0;

    /* Checkpoints fall every LUAPAT_CHECK_EVERY steps of the state, not of the call, so a
     * loop of many small calls reaches the host's check too. */
    m->left = LUAPAT_CHECK_EVERY - (int64_t)(*m->host->counter % LUAPAT_CHECK_EVERY);
    m->window = m->left;
}

/* Before each attempt at a new subject position. */
static inline void matcher_reset(Matcher *m) {
    m->level = 0;
    m->depth_left = MAX_DEPTH;
}

/* --- captures to Lua --- */

/* Pushes capture i; capture 0 of a pattern without captures is the whole match s..e. */
static void push_capture(Matcher *m, int i, const char *s, const char *e) {
    if (i >= m->level) {
        if (i != 0) matcher_error(m, "invalid capture index %%%d", i + 1);
        lua_pushlstring(m->L, s, (size_t)(e - s));
        return;
    }

    ptrdiff_t len = m->cap[i].len;
    if (len == CAP_OPEN) matcher_error(m, "unfinished capture");
    if (len == CAP_POSITION)
        lua_pushinteger(m->L, m->cap[i].init - m->src + 1);
    else
        lua_pushlstring(m->L, m->cap[i].init, (size_t)len);
}

/* Pushes all captures, or the whole match when there are none and whole is set (find
 * returns positions instead). Returns how many values it pushed. */
static int push_captures(Matcher *m, const char *s, const char *e, bool whole) {
    int n = (m->level == 0 && whole) ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++) push_capture(m, i, s, e);
    return n;
}

/* --- string.find and string.match --- */

/* Lua's rule for init: 1-based, negative counts from the end, too negative is the start.
 * Returns a 0-based offset, which may lie past the end. */
static size_t start_offset(lua_Integer pos, size_t len) {
    if (pos > 0) return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len) return 0;
    return len - (size_t)(-pos);
}

static bool has_specials(const char *p, size_t lp) {
    for (size_t i = 0; i < lp; i++)
        if (p[i] != '\0' && strchr(SPECIALS, p[i])) return true;
    return false;
}

static int find_plain(lua_State *L, const char *s, size_t ls, size_t init, const char *p,
                      size_t lp) {
    const char *hit = memmem(s + init, ls - init, p, lp); /* linear in glibc (two-way) */

    /* Linear, but a script may repeat it on a long subject: charge the bytes passed. */
    Matcher m;
    matcher_init(&m, L, 1, s, ls, p, lp);
    size_t scanned = (hit ? (size_t)(hit - s) + lp : ls) - init;
    step(&m, 1 + (int64_t)(scanned >> 4));
    flush_steps(&m);

    if (!hit) {
        luaL_pushfail(L);
        return 1;
    }
    lua_pushinteger(L, hit - s + 1);
    lua_pushinteger(L, (lua_Integer)(hit - s) + (lua_Integer)lp);
    return 2;
}

static int find_pattern(lua_State *L, const char *s, size_t ls, size_t init, const char *p,
                        size_t lp, bool find) {
    Matcher m;
    matcher_init(&m, L, 1, s, ls, p, lp);
    bool anchor = lp > 0 && *p == '^';
    if (anchor) p++;

    for (const char *start = s + init;; start++) {
        matcher_reset(&m);
        const char *e = match(&m, start, p);
        if (e) {
            flush_steps(&m);
            if (!find) return push_captures(&m, start, e, true);
            lua_pushinteger(L, start - s + 1);
            lua_pushinteger(L, e - s);
            return 2 + push_captures(&m, NULL, NULL, false);
        }
        if (anchor || start == m.src_end) break;
    }
    flush_steps(&m);
    luaL_pushfail(L);
    return 1;
}

static int find_aux(lua_State *L, bool find) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }

    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp)))
        return find_plain(L, s, ls, init, p, lp);
    return find_pattern(L, s, ls, init, p, lp, find);
}

static int lp_find(lua_State *L) {
    return find_aux(L, true);
}

static int lp_match(lua_State *L) {
    return find_aux(L, false);
}

/* --- string.gmatch --- */

/* The iterator; upvalues: subject, pattern, Gmatch, Host. A '^' is an ordinary character
 * here, as in Lua 5.4: an anchored pattern would stop the iteration. */
static int gmatch_next(lua_State *L) {
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
    Gmatch *g = lua_touserdata(L, lua_upvalueindex(3));
    Matcher m;
    matcher_init(&m, L, 4, s, ls, p, lp);

    for (size_t pos = g->pos; pos <= ls; pos++) {
        matcher_reset(&m);
        const char *e = match(&m, s + pos, p);
        if (e && (size_t)(e - s) != g->last) { /* no empty match where the last one ended */
            g->pos = g->last = (size_t)(e - s);
            flush_steps(&m);
            return push_captures(&m, s + pos, e, true);
        }
    }
    g->pos = ls + 1; /* a new scan would find nothing again: spare its steps */
    flush_steps(&m);
    return 0;
}

static int lp_gmatch(lua_State *L) {
    size_t ls;
    luaL_checklstring(L, 1, &ls);
    luaL_checklstring(L, 2, NULL);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2); /* subject, pattern: kept alive as upvalues */

    Gmatch *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->pos = init > ls ? ls + 1 : init;
    g->last = NO_MATCH;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* --- string.gsub --- */

/* Appends capture i of the match s..e; "%1" without captures is the whole match. */
static void add_capture(Matcher *m, luaL_Buffer *b, int i, const char *s, const char *e) {
    if (i < m->level && m->cap[i].len >= 0) {
        luaL_addlstring(b, m->cap[i].init, (size_t)m->cap[i].len);
    } else if (i == 0 && m->level == 0) {
        luaL_addlstring(b, s, (size_t)(e - s));
    } else {
        push_capture(m, i, s, e); /* a position, or raises */
        luaL_addvalue(b);
    }
}

/* Appends the replacement string (argument 3) with its escapes %0-%9 and %% expanded. */
static void add_string_repl(Matcher *m, luaL_Buffer *b, const char *s, const char *e) {
    size_t len;
    const char *r = lua_tolstring(m->L, 3, &len);
    const char *end = r + len;
    const char *pct;
    step(m, (int64_t)(len >> 4)); /* a long replacement may produce nothing, e.g. "%1%1..." */

    while ((pct = memchr(r, ESC, (size_t)(end - r))) != NULL) {
        luaL_addlstring(b, r, (size_t)(pct - r));
        int c = pct + 1 < end ? uc(pct[1]) : '\0';
        if (c == ESC)
            luaL_addchar(b, ESC);
        else if (c == '0')
            luaL_addlstring(b, s, (size_t)(e - s));
        else if (c >= '1' && c <= '9')
            add_capture(m, b, c - '1', s, e);
        else
            matcher_error(m, "invalid use of '%c' in replacement string", ESC);
        r = pct + 2;
    }
    luaL_addlstring(b, r, (size_t)(end - r));
}

/* Appends the replacement of the match s..e; repl is argument 3 of type tr. Returns whether
 * the text changed: a function or table giving false or nil keeps the match. */
static bool add_value(Matcher *m, luaL_Buffer *b, const char *s, const char *e, int tr) {
    lua_State *L = m->L;
    if (tr == LUA_TSTRING || tr == LUA_TNUMBER) {
        add_string_repl(m, b, s, e);
        return true;
    }

    flush_steps(m); /* Lua code may run and raise: keep the count exact */
    if (tr == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e, true);
        lua_call(L, n, 1);
    } else {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    }

    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return false;
    }
    if (!lua_isstring(L, -1))
        matcher_error(m, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return true;
}

/* The replacement loop; returns the number of matches replaced and leaves the unmatched
 * tail from *srcp on. */
static lua_Integer gsub_loop(Matcher *m, luaL_Buffer *b, const char **srcp, const char *p,
                             lua_Integer max_n, int tr, bool *changed) {
    bool anchor = p < m->pat_end && *p == '^';
    if (anchor) p++;
    const char *src = *srcp, *last = NULL;
    lua_Integer n = 0;

    while (n < max_n) {
        matcher_reset(m);
        const char *e = match(m, src, p);
        if (e && e != last) { /* no empty match where the last one ended */
            n++;
            *changed |= add_value(m, b, src, e, tr);
            src = last = e;
        } else if (src < m->src_end) {
            luaL_addchar(b, *src++);
        } else {
            break;
        }
        if (anchor) break;
    }
    *srcp = src;
    return n;
}

static int lp_gsub(lua_State *L) {
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int tr = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(
        L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
        "string/function/table");

    luaL_Buffer b;
    luaL_buffinit(L, &b);
    Matcher m;
    matcher_init(&m, L, 1, src, ls, p, lp);
    bool changed = false;
    lua_Integer n = gsub_loop(&m, &b, &src, p, max_n, tr, &changed);
    flush_steps(&m);

    if (changed) {
        luaL_addlstring(&b, src, (size_t)(m.src_end - src));
        luaL_pushresult(&b);
    } else {
        lua_pushvalue(L, 1); /* nothing replaced: the subject itself */
    }
    lua_pushinteger(L, n);
    return 2;
}

/* --- installation --- */

/* Pushes the state's step counter, creating it on first use. */
static uint64_t *push_counter(lua_State *L) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &counter_key) == LUA_TUSERDATA)
        return lua_touserdata(L, -1);
    lua_pop(L, 1);

    uint64_t *counter = lua_newuserdatauv(L, sizeof *counter, 0);
    *counter = 0;
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &counter_key);
    return counter;
}

void luapat_install(lua_State *L, int idx, LuapatCheck check, void *ctx) {
    static const luaL_Reg fns[] = {
        {"find", lp_find}, {"match", lp_match}, {"gmatch", lp_gmatch},
        {"gsub", lp_gsub}, {NULL, NULL},
    };
    idx = lua_absindex(L, idx);
    lua_pushvalue(L, idx);

    Host *host = lua_newuserdatauv(L, sizeof *host, 1);
    host->check = check;
    host->ctx = ctx;
    host->counter = push_counter(L);
    lua_setiuservalue(L, -2, 1); /* the host keeps the counter alive */

    luaL_setfuncs(L, fns, 1); /* each function gets the host as upvalue 1 */
    lua_pop(L, 1);
}

uint64_t luapat_steps(lua_State *L) {
    uint64_t n = 0;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &counter_key) == LUA_TUSERDATA)
        n = *(const uint64_t *)lua_touserdata(L, -1);
    lua_pop(L, 1);
    return n;
}
