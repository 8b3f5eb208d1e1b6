/* tokenize.c - hashed subword tokeniser (fastText style) for the semantic encoder.
 *
 * Does: decode UTF-8 (each maximal subpart of an ill-formed sequence is one
 * U+FFFD), split into mask tokens (<num> <hex> <ip> <uuid> <ts>), CJK characters
 * and words (runs of letters, marks and digits), and hash each token, each CJK
 * bigram and each selected character n-gram of a word with XXH64 into
 * [1, vocab_size). README.md, "Tokeniser", is the specification.
 *
 * Does not: allocate, normalise (the caller passes kernels/normalize.c output),
 * keep state, or look anything up: there is no vocabulary.
 *
 * Cost is linear in the input: every byte is decoded once by the scan and at
 * most once more by the n-gram cursor of its word, and a word's n-grams are
 * capped at max_ngrams.
 */
#include "tokenize.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

/* --- configuration --- */

#define TOK_DEFAULT_SEED 0x70726f6d70746431ull /* "promptd1" */

TokConfig tok_default_config(uint32_t vocab_size) {
    TokConfig cfg = {
        .vocab_size = vocab_size,
        .ngram = 3,
        .max_ngrams = 6,
        .cjk_bigrams = 1,
        .seed = TOK_DEFAULT_SEED,
    };
    return cfg;
}

/* n >= 3 keeps a word's tokens at most 1 + m for m code points, which is what
 * makes tok_max_tokens() a bound; see README.md, "Tokeniser". */
int tok_check_config(const TokConfig *cfg, char *err, size_t errlen) {
    if (cfg->vocab_size < 2) {
        snprintf(err, errlen, "tokeniser vocab_size %u: must be at least 2", cfg->vocab_size);
        return -1;
    }
    if (cfg->ngram < 3 || cfg->ngram > TOK_MAX_NGRAM) {
        snprintf(err, errlen, "tokeniser ngram %d: must lie in [3, %d]", cfg->ngram, TOK_MAX_NGRAM);
        return -1;
    }
    if (cfg->max_ngrams < 0 || cfg->max_ngrams > 1024) {
        snprintf(err, errlen, "tokeniser max_ngrams %d: must lie in [0, 1024]", cfg->max_ngrams);
        return -1;
    }
    if (cfg->cjk_bigrams != 0 && cfg->cjk_bigrams != 1) {
        snprintf(err, errlen, "tokeniser cjk_bigrams %d: must be 0 or 1", cfg->cjk_bigrams);
        return -1;
    }
    return 0;
}

/* A word of m >= n code points gives 1 + min(m + 3 - n, cap) <= 1 + m <= 2m
 * tokens; a CJK character (3 or 4 bytes) at most 2; a mask (>= 4 bytes) one. */
size_t tok_max_tokens(size_t len) {
    return len > SIZE_MAX / 2 ? SIZE_MAX : 2 * len;
}

/* --- UTF-8 --- */

/* Range of the second byte after lead byte b; excluding overlongs, surrogates and
 * values above U+10FFFF there makes those fail at the second byte (WHATWG). */
static void second_range(unsigned char b, unsigned char *lo, unsigned char *hi) {
    *lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
    *hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
}

/* Decodes one code point from s[0..n), n >= 1; an invalid sequence yields U+FFFD
 * and consumes its maximal subpart. Returns the bytes consumed. */
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

/* Length of the well-formed code point that lead byte b starts (inside a word,
 * whose bytes the scan has already validated). */
static size_t cp_len(unsigned char b) {
    return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

/* --- character classes --- */

/* Han ideographs (with the unassigned gaps of their blocks, so that a Unicode
 * upgrade cannot move a character between classes) and kana. */
static bool is_cjk(int32_t cp) {
    return (cp >= 0x3040 && cp <= 0x30FF) || (cp >= 0x31F0 && cp <= 0x31FF) ||
           (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x4E00 && cp <= 0x9FFF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x20000 && cp <= 0x323AF);
}

/* Letters, marks and numbers (general categories L*, M*, N*) make words; every
 * other code point (punctuation, symbols, spaces, controls, U+FFFD) separates. */
static bool is_word(int32_t cp) {
    utf8proc_category_t cat = utf8proc_category(cp);
    return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO;
}

/* Bytes of the mask token starting at s[0] == '<', or 0 when there is none. */
static size_t mask_len(const char *s, size_t n) {
    static const char *const masks[] = {"<num>", "<hex>", "<ip>", "<uuid>", "<ts>"};

    for (size_t k = 0; k < sizeof masks / sizeof masks[0]; k++) {
        size_t l = strlen(masks[k]);
        if (l <= n && memcmp(s, masks[k], l) == 0) return l;
    }
    return 0;
}

/* --- output --- */

typedef struct {
    int32_t *ids;
    size_t cap;
    size_t n; /* tokens produced, also those past cap */
    const TokConfig *cfg;
} Emit;

/* Seeds of the three hash spaces, so that the word "abc", its n-gram "abc" and a
 * bigram never share an id except by a bucket collision. */
enum { SPACE_WORD = 0, SPACE_NGRAM = 1, SPACE_BIGRAM = 2 };

static void emit(Emit *e, const void *bytes, size_t len, int space) {
    uint64_t h = XXH64(bytes, len, e->cfg->seed + (uint64_t)space);

    if (e->n < e->cap) e->ids[e->n] = (int32_t)(1 + h % (e->cfg->vocab_size - 1));
    e->n++;
}

/* --- words --- */

/* Index of the j-th kept n-gram out of k when at most cap are kept: all when they
 * fit, else cap indices spread evenly from the first to the last. */
static size_t pick_ngram(size_t j, size_t k, size_t cap) {
    if (k <= cap) return j;
    if (cap == 1) return 0;
    return j * (k - 1) / (cap - 1);
}

/* Hashes the n-grams of "<" w ">" for the word w[0..len) of m code points. The
 * cursor (off, pos) only moves forward, since picked indices increase. */
static void emit_ngrams(Emit *e, const unsigned char *w, size_t m) {
    size_t n = (size_t)e->cfg->ngram, cap = (size_t)e->cfg->max_ngrams;
    if (m < n || cap == 0) return;

    size_t k = m + 3 - n, count = k < cap ? k : cap;
    size_t pos = 0, off = 0; /* w[off] starts code point pos of the word */
    for (size_t j = 0; j < count; j++) {
        size_t i = pick_ngram(j, k, cap), first = i ? i - 1 : 0;
        while (pos < first) off += cp_len(w[off]), pos++;

        unsigned char g[TOK_MAX_NGRAM * 4];
        size_t gl = 0, o = off;
        for (size_t p = i; p < i + n; p++) {
            if (p == 0) {
                g[gl++] = '<';
            } else if (p == m + 1) {
                g[gl++] = '>';
            } else {
                size_t l = cp_len(w[o]);
                memcpy(g + gl, w + o, l);
                gl += l, o += l;
            }
        }
        emit(e, g, gl, SPACE_NGRAM);
    }
}

/* Scans the word starting at s[i]; returns the index just past it. */
static size_t scan_word(Emit *e, const unsigned char *s, size_t len, size_t i) {
    size_t start = i, m = 0;

    while (i < len) {
        int32_t cp;
        size_t l = utf8_decode(s + i, len - i, &cp);
        if (!is_word(cp) || is_cjk(cp)) break;
        i += l, m++;
    }
    emit(e, s + start, i - start, SPACE_WORD);
    emit_ngrams(e, s + start, m);
    return i;
}

/* --- tokenise --- */

size_t tok_text(int32_t *ids, size_t cap, const char *text, size_t len, const TokConfig *cfg) {
    const unsigned char *s = (const unsigned char *)text;
    Emit e = {.ids = ids, .cap = cap, .n = 0, .cfg = cfg};
    size_t i = 0;

    while (i < len) {
        size_t ml = s[i] == '<' ? mask_len(text + i, len - i) : 0;
        if (ml) {
            emit(&e, s + i, ml, SPACE_WORD);
            i += ml;
            continue;
        }

        int32_t cp, next;
        size_t l = utf8_decode(s + i, len - i, &cp);
        if (is_cjk(cp)) {
            /* A character is a word; with its right neighbour it is a bigram,
             * whose bytes are contiguous in the input. */
            emit(&e, s + i, l, SPACE_WORD);
            if (cfg->cjk_bigrams && i + l < len) {
                size_t l2 = utf8_decode(s + i + l, len - i - l, &next);
                if (is_cjk(next)) emit(&e, s + i, l + l2, SPACE_BIGRAM);
            }
            i += l;
        } else if (is_word(cp)) {
            i = scan_word(&e, s, len, i);
        } else {
            i += l;
        }
    }
    return e.n;
}
