/* normalize.c - prompt text normalisation for the embedding cache and the tokeniser.
 *
 * Does: repair invalid UTF-8 (U+FFFD per maximal subpart), NFKC with full case
 * folding via utf8proc, deletion of default-ignorable code points, collapse of
 * whitespace and control characters into single spaces, and (NORM_MASK) masking of
 * volatile tokens: <uuid> <hex> <ip> <ts> <num>. kernels/NORMALIZE.md is the
 * specification; every rule below is listed there.
 *
 * Does not: allocate, log, keep state, read the locale, recognise numbers written
 * in words or Chinese numerals, mask digits of scripts other than ASCII, or
 * preserve the original text (the caller keeps it for rendering).
 *
 * Buffers, for n input bytes:
 *   in   [n]                  any bytes
 *   work [norm_work_cap(n)]   code points: decomposed text, then composed in place
 *   out  [norm_out_cap(n)]    UTF-8 result and its NUL
 *
 * Idempotence by construction: every masking rule needs an ASCII digit and every
 * ASCII digit ends up inside a mask, so masking finds nothing in its own output;
 * combining marks after a mask are dropped so they cannot compose with its '>'.
 */
#include "normalize.h"

#include <stdbool.h>
#include <string.h>
#include <utf8proc.h>

/* --- bounds --- */

/* U+FDFA is the widest expansion: 3 bytes become 18 code points, 33 UTF-8 bytes.
 * tests/test_normalize.c checks both ratios against every Unicode scalar value. */
#define CP_PER_BYTE  6
#define OUT_PER_BYTE 11 /* a digit counts 5, the size of the <num> that may replace it */

#define SAFE_RUN   30 /* UAX #15 stream-safe limit; a multiple of CP_PER_BYTE */
#define CGJ        0x034F
#define MAX_DECOMP 32 /* one code point's decomposition; Unicode's maximum is 18 */

#define DECOMP_OPTS  (UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD | UTF8PROC_STABLE)
#define COMPOSE_OPTS (UTF8PROC_COMPOSE | UTF8PROC_STABLE)

static size_t sat_mul_add(size_t n, size_t k, size_t add) {
    if (n > (SIZE_MAX - add) / k) return SIZE_MAX;
    return n * k + add;
}

/* A CGJ is inserted only after 30 decomposed code points: at most 6n / 30. */
static size_t max_cgj(size_t in_len) {
    return in_len / (SAFE_RUN / CP_PER_BYTE);
}

size_t norm_work_cap(size_t in_len) {
    return sat_mul_add(in_len, CP_PER_BYTE, max_cgj(in_len));
}

/* Content is at most 11n bytes: a mask is never longer than the code points it
 * replaces when a digit counts 5 bytes, and every mask covers a digit (a <uuid>
 * covers 36 code points). Each CGJ adds 2 bytes; then the NUL. */
size_t norm_out_cap(size_t in_len) {
    return sat_mul_add(in_len, OUT_PER_BYTE, 2 * max_cgj(in_len) + 1);
}

/* --- UTF-8 --- */

/* Range of the second byte after lead byte b; it excludes overlongs, surrogates and
 * values above U+10FFFF, so those fail at the second byte as WHATWG requires. */
static void second_range(unsigned char b, unsigned char *lo, unsigned char *hi) {
    *lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
    *hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
}

/* Decodes one code point from s[0..n), n >= 1. An invalid sequence yields U+FFFD
 * and consumes its maximal subpart: the lead byte and the continuation bytes that
 * were still acceptable. Returns the bytes consumed. */
static size_t utf8_decode(const unsigned char *s, size_t n, int32_t *cp) {
    unsigned char b = s[0], lo, hi;
    size_t need = b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
    int32_t v = b & (0x3F >> need);

    *cp = b < 0x80 ? b : 0xFFFD;
    if (b < 0xC2 || b > 0xF4) return 1;

    second_range(b, &lo, &hi);
    for (size_t k = 1; k <= need; k++) {
        if (k >= n || s[k] < lo || s[k] > hi) return k;
        v = v << 6 | (s[k] & 0x3F);
        lo = 0x80, hi = 0xBF;
    }
    *cp = v;
    return need + 1;
}

static size_t utf8_encode(int32_t cp, char *dst) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    static const unsigned char lead[5] = {0, 0, 0xC0, 0xE0, 0xF0};
    size_t n = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;

    for (size_t k = n - 1; k > 0; k--, cp >>= 6) dst[k] = (char)(0x80 | (cp & 0x3F));
    dst[0] = (char)(lead[n] | cp);
    return n;
}

/* --- output --- */

typedef struct {
    char *buf;
    size_t cap; /* bytes, NUL included */
    size_t len;
    bool full; /* a write did not fit: the caps are wrong for this input */
} Out;

static void out_bytes(Out *o, const char *s, size_t n) {
    if (n >= o->cap - o->len) {
        o->full = true;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static void out_cp(Out *o, int32_t cp) {
    char tmp[4];
    out_bytes(o, tmp, utf8_encode(cp, tmp));
}

/* --- decode, decompose, filter --- */

typedef struct {
    int32_t *cp;
    size_t cap;
    size_t len;
    size_t run; /* non-starters at the end of cp[0..len) */
    bool full;
    bool ascii; /* every code point so far is ASCII, so composition has nothing to do */
} Work;

static int ccc(int32_t c) {
    return utf8proc_get_property(c)->combining_class;
}

static bool work_append(Work *w, int32_t c) {
    if (w->len == w->cap) {
        w->full = true;
        return false;
    }
    w->cp[w->len++] = c;
    return true;
}

/* Whitespace and control characters all become one space. Leading spaces are
 * never stored and a trailing one is cut after composition. */
static void push_space(Work *w) {
    if (w->len > 0 && w->cp[w->len - 1] != ' ' && work_append(w, ' ')) w->run = 0;
}

/* Canonical ordering, done on arrival: a stable insertion into the trailing run of
 * non-starters. The run is capped at SAFE_RUN by a CGJ (UAX #15 stream-safe form)
 * so that a flood of combining marks costs linear time, not quadratic. */
static void push_nonstarter(Work *w, int32_t c, int k) {
    if (w->run == SAFE_RUN && work_append(w, CGJ)) w->run = 0;
    if (!work_append(w, c)) return;

    size_t j = w->len - 1, first = w->len - 1 - w->run;
    for (; j > first && ccc(w->cp[j - 1]) > k; j--) w->cp[j] = w->cp[j - 1];
    w->cp[j] = c;
    w->run++;
}

static void push_decomposed(Work *w, int32_t c) {
    const utf8proc_property_t *p = utf8proc_get_property(c);
    int k = p->combining_class;

    /* Invisible format characters (soft hyphen, ZWSP, ZWJ, BOM, CGJ...) occur
     * inside words, so they vanish rather than become spaces. */
    if (p->ignorable) return;

    /* The remaining format characters (Arabic number signs, interlinear
     * annotation) separate rather than join, so they read as spaces. */
    switch (p->category) {
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF: push_space(w); return;
    default: break;
    }
    if (k != 0) {
        push_nonstarter(w, c, k);
    } else if (work_append(w, c)) {
        w->run = 0;
    }
}

/* Compatibility decomposition with case folding of one input code point. Returns
 * false only if utf8proc were to expand a code point past MAX_DECOMP. */
static bool push_input(Work *w, int32_t c) {
    /* ASCII is its own NFKC and folds by a shift; most alarm text is ASCII, and this
     * path is several times faster than asking utf8proc. */
    if (c < 0x80) {
        if (c <= ' ' || c == 0x7F) {
            push_space(w);
        } else if (work_append(w, c >= 'A' && c <= 'Z' ? c + 32 : c)) {
            w->run = 0;
        }
        return true;
    }
    w->ascii = false;

    int32_t tmp[MAX_DECOMP];
    int boundclass = 0; /* unused without UTF8PROC_CHARBOUND */
    utf8proc_ssize_t n = utf8proc_decompose_char(c, tmp, MAX_DECOMP, DECOMP_OPTS, &boundclass);

    if (n < 0 || n > MAX_DECOMP) return false;
    for (utf8proc_ssize_t k = 0; k < n; k++) push_decomposed(w, tmp[k]);
    return true;
}

static bool decompose_text(Work *w, const unsigned char *in, size_t n) {
    size_t i = 0;
    int32_t c;

    while (i < n && !w->full) {
        i += utf8_decode(in + i, n - i, &c);
        if (!push_input(w, c)) return false;
    }
    return !w->full;
}

/* Canonical composition in place; returns the new length without a trailing space. */
static size_t compose(int32_t *cp, size_t n, bool ascii) {
    utf8proc_ssize_t m = n && !ascii
                             ? utf8proc_normalize_utf32(cp, (utf8proc_ssize_t)n, COMPOSE_OPTS)
                             : (utf8proc_ssize_t)n;
    size_t len = m > 0 ? (size_t)m : 0;

    if (len > 0 && cp[len - 1] == ' ') len--;
    return len;
}

/* --- masking lexer: character classes and small scanners --- */

/* Positions are 1-based so that 0 can mean "no match" and flow through a chain of
 * scanners: every scanner fails on position 0. The text is case-folded, so ASCII
 * letters are lowercase here. */
typedef struct {
    const int32_t *cp;
    size_t n;
} Src;

typedef bool (*CharPred)(int32_t c);
typedef size_t (*Rule)(const Src *s, size_t i); /* end of the token at i, or 0 */

static int32_t at(const Src *s, size_t i) {
    return i >= 1 && i <= s->n ? s->cp[i - 1] : -1;
}

static bool is_digit(int32_t c) {
    return c >= '0' && c <= '9';
}

static bool is_hex(int32_t c) {
    return is_digit(c) || (c >= 'a' && c <= 'f');
}

static bool is_alnum(int32_t c) {
    return is_digit(c) || (c >= 'a' && c <= 'z');
}

static bool is_one_of(int32_t c, const char *set) {
    return c > 0 && c < 0x80 && strchr(set, (int)c) != NULL;
}

static bool is_mark(int32_t c) {
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC ||
           cat == UTF8PROC_CATEGORY_ME;
}

static size_t count_while(const Src *s, size_t i, size_t max, CharPred pred) {
    size_t k = 0;
    while (k < max && pred(at(s, i + k))) k++;
    return k;
}

/* End of a run of lo..hi (lo >= 1) characters matching pred that does not go on
 * past hi, else 0. */
static size_t field(const Src *s, size_t i, size_t lo, size_t hi, CharPred pred) {
    size_t k = count_while(s, i, hi + 1, pred);
    return k >= lo && k <= hi ? i + k : 0;
}

static size_t expect(const Src *s, size_t i, int32_t c) {
    return at(s, i) == c ? i + 1 : 0;
}

static long value(const Src *s, size_t i, size_t j) {
    long v = 0;
    for (; i < j; i++) v = v * 10 + (at(s, i) - '0');
    return v;
}

/* End of a field of 1..width digits valued in [lo, hi]. */
static size_t ranged(const Src *s, size_t i, size_t width, long lo, long hi) {
    size_t j = field(s, i, 1, width, is_digit);
    long v = j ? value(s, i, j) : -1;
    return v >= lo && v <= hi ? j : 0;
}

static bool token_start(const Src *s, size_t i) {
    return !is_alnum(at(s, i - 1));
}

static bool ends_token(const Src *s, size_t j) {
    return !is_alnum(at(s, j));
}

/* A token of sep-separated groups must not go on with sep and another group. */
static bool ends_group(const Src *s, size_t j, int32_t sep) {
    return ends_token(s, j) && !(at(s, j) == sep && is_alnum(at(s, j + 1)));
}

/* ...nor start in the middle of such a token ("a1:b2:c3:d4:e5:f6:77"). */
static bool starts_group(const Src *s, size_t i, int32_t sep) {
    return token_start(s, i) && !(at(s, i - 1) == sep && is_alnum(at(s, i - 2)));
}

static bool has_digit(const Src *s, size_t i, size_t j) {
    for (; i < j; i++)
        if (is_digit(at(s, i))) return true;
    return false;
}

/* --- masking rules: <uuid>, MAC <hex>, <ip> --- */

static size_t match_uuid(const Src *s, size_t i) {
    static const unsigned char width[5] = {8, 4, 4, 4, 12};
    size_t j = field(s, i, width[0], width[0], is_hex);

    for (int g = 1; g < 5; g++) j = field(s, expect(s, j, '-'), width[g], width[g], is_hex);
    return j && ends_token(s, j) && has_digit(s, i, j) ? j : 0;
}

/* Dashes are left out of the start check: "port-00-1a-2b-3c-4d-5e" is one MAC. */
static size_t hex_groups(const Src *s, size_t i, int32_t sep, int groups, size_t width) {
    size_t j = sep == '-' || starts_group(s, i, sep) ? field(s, i, width, width, is_hex) : 0;

    for (int g = 1; g < groups; g++) j = field(s, expect(s, j, sep), width, width, is_hex);
    return j && ends_group(s, j, sep) && has_digit(s, i, j) ? j : 0;
}

/* 00:1a:2b:3c:4d:5e, 00-1a-2b-3c-4d-5e and Cisco's 001a.2b3c.4d5e. */
static size_t match_mac(const Src *s, size_t i) {
    size_t j = hex_groups(s, i, ':', 6, 2);

    if (!j) j = hex_groups(s, i, '-', 6, 2);
    if (!j) j = hex_groups(s, i, '.', 3, 4);
    return j;
}

static size_t ipv4_octets(const Src *s, size_t i) {
    size_t j = ranged(s, i, 3, 0, 255);

    for (int o = 1; o < 4; o++) {
        size_t from = expect(s, j, '.');
        j = from ? ranged(s, from, 3, 0, 255) : 0;
    }
    return j;
}

/* ":port" or "/prefix" glued to an address, kept inside the mask. */
static size_t addr_suffix(const Src *s, size_t j, int32_t mark, size_t max_digits) {
    size_t k = field(s, expect(s, j, mark), 1, max_digits, is_digit);
    return k && ends_token(s, k) ? k : j;
}

static size_t match_ipv4(const Src *s, size_t i) {
    size_t j = starts_group(s, i, '.') ? ipv4_octets(s, i) : 0;

    if (!j || !ends_group(s, j, '.')) return 0;
    return addr_suffix(s, addr_suffix(s, j, ':', 5), '/', 2);
}

typedef struct {
    size_t j;      /* scan position */
    size_t groups; /* 16-bit groups seen; an IPv4 tail counts 2 */
    bool gap;      /* "::" seen */
    bool bad;      /* a second "::", a group of 5+ digits, a broken IPv4 tail */
} V6;

/* Consumes one hex group and the colons after it; false ends the scan. */
static bool v6_step(const Src *s, V6 *v) {
    size_t k = count_while(s, v->j, 5, is_hex);

    if (k >= 1 && k <= 3 && at(s, v->j + k) == '.') {
        size_t tail = ipv4_octets(s, v->j);
        v->bad = !tail, v->groups += 2, v->j = tail;
        return false;
    }
    v->bad = k > 4;
    if (k == 0 || k > 4) return false;

    v->groups++, v->j += k;
    if (at(s, v->j) == ':' && at(s, v->j + 1) == ':') {
        v->bad = v->gap, v->gap = true, v->j += 2;
        return !v->bad;
    }
    if (at(s, v->j) != ':' || !is_hex(at(s, v->j + 1))) return false;
    v->j++;
    return true;
}

/* A zone such as "%eth0" is part of a link-local address. */
static size_t v6_zone(const Src *s, size_t j) {
    size_t k = count_while(s, j + 1, SIZE_MAX, is_alnum);
    return at(s, j) == '%' && k ? j + 1 + k : j;
}

/* The full eight-group form or a "::" form, with at least one digit so that
 * "std::map" or a bare "::" stay text. */
static size_t match_ipv6(const Src *s, size_t i) {
    V6 v = {i, 0, false, false};

    if (at(s, i - 1) == ':') return 0;
    if (at(s, i) == ':') {
        if (at(s, i + 1) != ':') return 0;
        v.gap = true, v.j = i + 2;
    }
    while (v6_step(s, &v)) continue;

    if (v.bad || (v.gap ? v.groups > 7 : v.groups != 8)) return 0;
    if (!ends_group(s, v.j, ':') || !has_digit(s, i, v.j)) return 0;
    return v6_zone(s, v.j);
}

/* --- masking rules: <ts> --- */

/* yyyy-mm-dd, or dd-mm-yyyy / mm-dd-yyyy, with one of - / . used twice. */
static size_t date_parts(const Src *s, size_t i, bool year_first) {
    size_t j = year_first ? field(s, i, 4, 4, is_digit) : ranged(s, i, 2, 1, 31);
    int32_t sep = at(s, j);

    if (!j || !is_one_of(sep, "-/.")) return 0;
    j = expect(s, ranged(s, j + 1, 2, 1, year_first ? 12 : 31), sep);
    return year_first ? ranged(s, j, 2, 1, 31) : field(s, j, 4, 4, is_digit);
}

/* Exactly two digits valued at most hi. */
static size_t two_digits(const Src *s, size_t i, long hi) {
    size_t j = field(s, i, 2, 2, is_digit);
    return j && value(s, i, j) <= hi ? j : 0;
}

/* End of ":ss" and an optional ".fff" or ",fff" after hh:mm at m, else 0. */
static size_t seconds(const Src *s, size_t m) {
    size_t sec = two_digits(s, expect(s, m, ':'), 60);
    size_t f = is_one_of(at(s, sec), ".,") ? field(s, sec + 1, 1, 9, is_digit) : 0;
    return f ? f : sec;
}

/* "z", or with offsets also +hh, +hhmm, +hh:mm (or -). */
static size_t zone(const Src *s, size_t j, bool offsets) {
    if (at(s, j) == 'z') return j + 1;
    if (!offsets || !is_one_of(at(s, j), "+-")) return j;

    size_t h = field(s, j + 1, 2, 2, is_digit);
    size_t hm = field(s, j + 1, 4, 4, is_digit);
    size_t m = field(s, expect(s, h, ':'), 2, 2, is_digit);
    return m ? m : h ? h : hm ? hm : j;
}

/* h:mm, hh:mm or hh:mm:ss[.fff] with its zone. A numeric offset is taken only
 * after a date and seconds: "10:00-12:00" is a range more often than an offset. */
static size_t time_of_day(const Src *s, size_t i, bool after_date) {
    size_t m = two_digits(s, expect(s, ranged(s, i, 2, 0, 24), ':'), 59);
    size_t sec = seconds(s, m);
    return sec ? zone(s, sec, after_date) : zone(s, m, false);
}

/* A timestamp must not run on into a longer dotted, coloned or comma'd token. */
static size_t ts_end(const Src *s, size_t j) {
    bool more = is_one_of(at(s, j), ".:,") && is_alnum(at(s, j + 1));
    return j && ends_token(s, j) && !more ? j : 0;
}

/* A date, optionally with a time after "t" or one space, is one <ts>. */
static size_t match_ts(const Src *s, size_t i) {
    size_t d = date_parts(s, i, true);

    if (!d) d = date_parts(s, i, false);
    if (!d) return ts_end(s, time_of_day(s, i, false));

    size_t t = is_one_of(at(s, d), "t ") ? ts_end(s, time_of_day(s, d + 1, true)) : 0;
    return t ? t : ts_end(s, d);
}

/* --- masking rules: <hex>, <num> --- */

/* "0x1f" anywhere but after a digit, so "reg0x1f" masks and "10x5" does not. */
static size_t match_0x(const Src *s, size_t i) {
    if (at(s, i) != '0' || at(s, i + 1) != 'x' || is_digit(at(s, i - 1))) return 0;

    size_t j = i + 2 + count_while(s, i + 2, SIZE_MAX, is_hex);
    return j > i + 2 && ends_token(s, j) ? j : 0;
}

/* A whole token of >= 6 hex characters with a letter after a digit: "a1b2c3",
 * "3f2a9c", but not "deadbeef" (no digit) or "cab123" (a name with a number). */
static size_t match_hexrun(const Src *s, size_t i) {
    size_t j = i + count_while(s, i, SIZE_MAX, is_hex);
    bool digit = false;

    if (j - i < 6 || !ends_token(s, j)) return 0;
    for (size_t k = i; k < j; k++) {
        if (digit && !is_digit(at(s, k))) return j;
        digit = digit || is_digit(at(s, k));
    }
    return 0;
}

/* A sign belongs to the number only after a separator, so "wtg-12" keeps its '-'. */
static bool sign_ok(const Src *s, size_t i) {
    int32_t c = at(s, i);
    if ((c != '+' && c != '-') || !is_digit(at(s, i + 1))) return false;
    return i == 1 || is_one_of(at(s, i - 1), " ([{=:,;");
}

static size_t exponent(const Src *s, size_t j) {
    size_t k = j + 1;

    if (at(s, j) != 'e') return j;
    if (is_one_of(at(s, k), "+-")) k++;
    size_t d = count_while(s, k, SIZE_MAX, is_digit);
    return d && ends_token(s, k + d) ? k + d : j;
}

/* Digits, with '.' or ',' between digit groups (decimals, thousands, versions),
 * and an optional exponent. */
static size_t number_body(const Src *s, size_t i) {
    size_t j = i + count_while(s, i, SIZE_MAX, is_digit);

    while (is_one_of(at(s, j), ".,") && is_digit(at(s, j + 1)))
        j += 1 + count_while(s, j + 1, SIZE_MAX, is_digit);
    return exponent(s, j);
}

typedef struct {
    const char *name; /* UTF-8, case-folded as the text is */
    bool spaced;      /* also taken after one space: not a plausible word */
} Unit;

static const Unit units[] = {
    {"°c", true},   {"°f", true},   {"°", true},    {"%", true},     {"%rh", true},  {"‰", true},
    {"ppm", true},  {"ppb", true},  {"kw", true},   {"mw", true},    {"gw", true},   {"kwh", true},
    {"mwh", true},  {"gwh", true},  {"kva", true},  {"mva", true},   {"kvar", true}, {"mvar", true},
    {"kv", true},   {"mv", true},   {"hz", true},   {"khz", true},   {"mhz", true},  {"ghz", true},
    {"rpm", true},  {"bar", true},  {"mbar", true}, {"kpa", true},   {"mpa", true},  {"hpa", true},
    {"psi", true},  {"kg", true},   {"mm", true},   {"cm", true},    {"km", true},   {"m/s", true},
    {"mm/s", true}, {"km/h", true}, {"m3/h", true}, {"l/min", true}, {"m2", true},   {"m3", true},
    {"ms", true},   {"μs", true},   {"ns", true},   {"sec", true},   {"secs", true}, {"min", true},
    {"mins", true}, {"hrs", true},  {"kb", true},   {"mb", true},    {"gb", true},   {"tb", true},
    {"kib", true},  {"mib", true},  {"gib", true},  {"tib", true},   {"kbps", true}, {"mbps", true},
    {"gbps", true}, {"db", true},   {"dbm", true},  {"dba", true},   {"ω", true},    {"kω", true},
    {"mω", true},   {"a", false},   {"ma", false},  {"ka", false},   {"v", false},   {"w", false},
    {"wh", false},  {"va", false},  {"var", false}, {"j", false},    {"kj", false},  {"k", false},
    {"c", false},   {"f", false},   {"s", false},   {"m", false},    {"h", false},   {"hr", false},
    {"d", false},   {"g", false},   {"mg", false},  {"l", false},    {"ml", false},  {"t", false},
    {"b", false},   {"n", false},   {"kn", false},  {"nm", false},   {"pa", false},  {"us", false},
    {"x", false},   {"st", false},  {"nd", false},  {"rd", false},   {"th", false},
};

/* End of the UTF-8 literal lit when the text at i spells it, else 0. The literal
 * is valid UTF-8, so decoding never reads past its NUL. */
static size_t spells(const Src *s, size_t i, const char *lit) {
    const unsigned char *u = (const unsigned char *)lit;
    int32_t c;

    while (*u) {
        u += utf8_decode(u, 4, &c);
        if (at(s, i++) != c) return 0;
    }
    return i;
}

/* End of the longest unit at i that ends the token, else 0. */
static size_t unit_at(const Src *s, size_t i, bool spaced_only) {
    size_t best = 0;
    int32_t first = at(s, i), lead;

    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        if (spaced_only && !units[u].spaced) continue;
        utf8_decode((const unsigned char *)units[u].name, 4, &lead);
        if (lead != first) continue;
        size_t j = spells(s, i, units[u].name);
        if (j > best && ends_token(s, j)) best = j;
    }
    return best;
}

/* Every unit starts with a letter or a symbol; a cheap test spares the table scan
 * for the common number followed by a space or punctuation. */
static bool unit_lead(int32_t c) {
    return (c >= 'a' && c <= 'z') || c == '%' || c == 0xB0 || c == 0x2030 || c == 0x03BC ||
           c == 0x03C9;
}

static size_t with_unit(const Src *s, size_t j) {
    size_t u = unit_lead(at(s, j)) ? unit_at(s, j, false) : 0;

    if (!u && at(s, j) == ' ' && unit_lead(at(s, j + 1))) u = unit_at(s, j + 1, true);
    return u ? u : j;
}

/* --- masking lexer --- */

typedef struct {
    Rule match;
    const char *mask;
} TokenRule;

/* Tried in order at the start of a token; the first match wins. */
static const TokenRule token_rules[] = {
    {match_uuid, "<uuid>"}, {match_mac, "<hex>"}, {match_ipv6, "<ip>"},
    {match_ts, "<ts>"},     {match_ipv4, "<ip>"}, {match_hexrun, "<hex>"},
};

/* Every token rule needs a digit in the run of hex digits and separators that starts
 * the token, and most words that start with a-f have none ("above", "fan"). The last
 * scan is remembered, [from, to) holding no digit and `to` the digit or the end of the
 * run, so that positions inside one run are answered without scanning it again. Calls
 * come with increasing positions, so the check costs linear time overall. */
typedef struct {
    size_t to;
    bool digit; /* at(to) is a digit */
} Lookahead;

static bool is_hexish(int32_t c) {
    return is_hex(c) || c == ':' || c == '-' || c == '.';
}

static bool digit_ahead(const Src *s, size_t i, Lookahead *la) {
    if (i <= la->to) return la->digit;

    size_t j = i;
    while (j <= s->n && is_hexish(at(s, j)) && !is_digit(at(s, j))) j++;
    la->to = j;
    la->digit = is_digit(at(s, j));
    return la->digit;
}

static size_t match_at(const Src *s, size_t i, const char **mask, Lookahead *la) {
    int32_t c = at(s, i);
    size_t j;

    if ((is_hex(c) || c == ':') && token_start(s, i) && digit_ahead(s, i, la)) {
        for (size_t r = 0; r < sizeof token_rules / sizeof token_rules[0]; r++) {
            *mask = token_rules[r].mask;
            if ((j = token_rules[r].match(s, i))) return j;
        }
    }
    *mask = "<hex>";
    if ((j = match_0x(s, i))) return j;

    *mask = "<num>";
    size_t b = sign_ok(s, i) ? i + 1 : i;
    return is_digit(at(s, b)) ? with_unit(s, number_body(s, b)) : 0;
}

static void mask_text(Out *o, const Src *s) {
    size_t i = 1;
    Lookahead la = {0, false};

    while (i <= s->n && !o->full) {
        const char *mask = NULL;
        size_t j = match_at(s, i, &mask, &la);

        if (!j) {
            out_cp(o, at(s, i++));
            continue;
        }
        out_bytes(o, mask, strlen(mask));
        /* A mark left after '>' would compose with it (">" + U+0338 is U+226F). */
        for (i = j; i <= s->n && is_mark(at(s, i)); i++) continue;
    }
}

static void plain_text(Out *o, const Src *s) {
    for (size_t i = 1; i <= s->n && !o->full; i++) out_cp(o, at(s, i));
}

/* --- entry point --- */

ptrdiff_t norm_text(char *out, size_t out_cap, const char *in, size_t in_len, int32_t *work,
                    size_t work_cap, unsigned flags) {
    if (work_cap < norm_work_cap(in_len)) return NORM_E_WORK;
    if (out_cap < norm_out_cap(in_len)) return NORM_E_OUT;

    /* The caps make overflow impossible; the checks inside are a second line. */
    Work w = {work, work_cap, 0, 0, false, true};
    if (!decompose_text(&w, (const unsigned char *)in, in_len)) return NORM_E_WORK;

    Src s = {work, compose(work, w.len, w.ascii)};
    Out o = {out, out_cap, 0, false};
    if (flags & NORM_MASK) {
        mask_text(&o, &s);
    } else {
        plain_text(&o, &s);
    }
    if (o.full) return NORM_E_OUT;

    out[o.len] = '\0';
    return (ptrdiff_t)o.len;
}
