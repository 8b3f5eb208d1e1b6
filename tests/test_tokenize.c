/* test_tokenize.c - Criterion tests for kernels/tokenize.c.
 *
 * The parity tests compare the kernel with the Python reference
 * (tests/reference/tokenize_ref.py) on the 10,000 strings of
 * tests/reference/tok_corpus.bin: English and Chinese alarms, random Unicode,
 * invalid UTF-8, random bytes, empty and very long strings. tok_ids.bin holds the
 * reference's count and XXH64 digest of the ids of each string, under four
 * configurations. Regenerate both with `make reference`. Run from the repository
 * root.
 */
#include "../kernels/tokenize.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define CORPUS_PATH "tests/reference/tok_corpus.bin"
#define IDS_PATH    "tests/reference/tok_ids.bin"

/* --- helpers --- */

typedef struct {
    unsigned char *buf;
    size_t len, pos;
} Reader;

static Reader read_file(const char *path) {
    Reader r = {0};
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (run the tests from the repository root)", path);
    fseek(f, 0, SEEK_END);
    r.len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    r.buf = malloc(r.len ? r.len : 1);
    cr_assert(r.buf && fread(r.buf, 1, r.len, f) == r.len, "cannot read %s", path);
    fclose(f);
    return r;
}

static const unsigned char *take(Reader *r, size_t n) {
    cr_assert(n <= r->len - r->pos, "reference file truncated at byte %zu", r->pos);
    r->pos += n;
    return r->buf + r->pos - n;
}

static uint32_t take_u32(Reader *r) {
    const unsigned char *p = take(r, 4);
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t take_u64(Reader *r) {
    uint64_t lo = take_u32(r);
    return lo | (uint64_t)take_u32(r) << 32;
}

typedef struct {
    size_t n;
    const char **s;
    size_t *len;
    Reader file;
} Corpus;

static Corpus load_corpus(void) {
    Corpus c = {.file = read_file(CORPUS_PATH)};
    cr_assert(memcmp(take(&c.file, 8), "PDTOKC1\n", 8) == 0, "bad magic in %s", CORPUS_PATH);
    c.n = take_u32(&c.file);
    c.s = malloc(c.n * sizeof *c.s);
    c.len = malloc(c.n * sizeof *c.len);
    for (size_t i = 0; i < c.n; i++) {
        c.len[i] = take_u32(&c.file);
        c.s[i] = (const char *)take(&c.file, c.len[i]);
    }
    return c;
}

static void free_corpus(Corpus *c) {
    free(c->s);
    free(c->len);
    free(c->file.buf);
}

/* Tokenises with a buffer of exactly tok_max_tokens(len), so that a wrong bound
 * shows up as a count above it. Returns a malloc'd array. */
static int32_t *tokens(const char *s, size_t len, const TokConfig *cfg, size_t *n) {
    size_t cap = tok_max_tokens(len);
    int32_t *ids = malloc((cap ? cap : 1) * sizeof *ids);
    cr_assert(ids);
    *n = tok_text(ids, cap, s, len, cfg);
    cr_assert_leq(*n, cap, "%zu tokens for %zu bytes exceed tok_max_tokens", *n, len);
    return ids;
}

static int32_t *tokens_str(const char *s, const TokConfig *cfg, size_t *n) {
    return tokens(s, strlen(s), cfg, n);
}

static int32_t hash_id(const char *s, int space, const TokConfig *cfg) {
    uint64_t h = XXH64(s, strlen(s), cfg->seed + (uint64_t)space);
    return (int32_t)(1 + h % (cfg->vocab_size - 1));
}

/* Prints a string with non-printable bytes escaped, for failure messages. */
static const char *escaped(const char *s, size_t len) {
    static char buf[200];
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < sizeof buf; i++) {
        unsigned char b = (unsigned char)s[i];
        o += (size_t)snprintf(buf + o, sizeof buf - o, b >= 0x20 && b < 0x7f ? "%c" : "\\x%02x", b);
    }
    return buf;
}

/* Compares the kernel with configuration number k of tok_ids.bin. */
static void expect_parity(size_t k) {
    Corpus c = load_corpus();
    Reader r = read_file(IDS_PATH);
    cr_assert(memcmp(take(&r, 8), "PDTOKI2\n", 8) == 0, "bad magic in %s", IDS_PATH);
    size_t n_cfg = take_u32(&r);
    cr_assert_gt(n_cfg, k);

    for (size_t j = 0;; j++) {
        TokConfig cfg = {.vocab_size = take_u32(&r)};
        cfg.ngram = (int)take_u32(&r);
        cfg.max_ngrams = (int)take_u32(&r);
        cfg.cjk_bigrams = (int)take_u32(&r);
        cfg.seed = take_u64(&r);
        size_t count = take_u32(&r), bad = 0;
        cr_assert_leq(count, c.n);
        char err[200];
        cr_assert_eq(tok_check_config(&cfg, err, sizeof err), 0, "%s", err);

        for (size_t i = 0; i < count; i++) {
            size_t want_n = take_u32(&r), n;
            uint64_t want_h = take_u64(&r);
            if (j != k) continue;
            int32_t *ids = tokens(c.s[i], c.len[i], &cfg, &n);
            uint64_t h = XXH64(ids, n * sizeof *ids, 0); /* little-endian host */
            if ((n != want_n || h != want_h) && bad++ < 5) {
                cr_log_error("string %zu \"%s\": %zu ids (reference %zu), digest %016llx "
                             "(reference %016llx)",
                             i, escaped(c.s[i], c.len[i]), n, want_n, (unsigned long long)h,
                             (unsigned long long)want_h);
            }
            free(ids);
        }
        if (j == k) {
            cr_expect_eq(bad, 0,
                         "config %zu (V=%u n=%d cap=%d bigrams=%d): %zu of %zu strings "
                         "differ from the Python reference",
                         k, cfg.vocab_size, cfg.ngram, cfg.max_ngrams, cfg.cjk_bigrams, bad, count);
            if (k == 0) cr_expect_geq(count, 10000);
            break;
        }
    }
    free(r.buf);
    free_corpus(&c);
}

/* --- parity with the Python reference --- */

Test(tokenize, matches_python_reference_on_10000_strings) {
    expect_parity(0);
}

Test(tokenize, matches_reference_with_4grams_one_per_word_no_bigrams) {
    expect_parity(1);
}

Test(tokenize, matches_reference_with_5grams_and_wrapping_seed) {
    expect_parity(2);
}

Test(tokenize, matches_reference_with_two_buckets_and_no_ngrams) {
    expect_parity(3);
}

/* --- the rules of the tokeniser specification (README.md) --- */

Test(tokenize, gives_word_then_its_ngrams_in_text_order) {
    TokConfig cfg = tok_default_config(1 << 20);
    size_t n;
    int32_t *ids = tokens_str("wtg-<num> temp", &cfg, &n);

    /* wtg: word + <wt wtg tg>; <num>: word only; temp: word + <te tem emp mp> */
    const char *want[] = {"wtg", "<wt", "wtg", "tg>", "<num>", "temp", "<te", "tem", "emp", "mp>"};
    int space[] = {0, 1, 1, 1, 0, 0, 1, 1, 1, 1};
    cr_assert_eq(n, 10, "got %zu tokens", n);
    for (size_t i = 0; i < n; i++) {
        cr_expect_eq(ids[i], hash_id(want[i], space[i], &cfg), "token %zu (%s)", i, want[i]);
    }
    free(ids);
}

Test(tokenize, word_and_ngram_of_same_letters_get_distinct_ids) {
    TokConfig cfg = tok_default_config(1 << 20);
    size_t n;
    int32_t *ids = tokens_str("abc", &cfg, &n);

    cr_assert_eq(n, 4);
    cr_expect_neq(ids[0], ids[2], "word \"abc\" and n-gram \"abc\" share id %d", ids[0]);
    free(ids);
}

Test(tokenize, spreads_capped_ngrams_from_first_to_last) {
    TokConfig cfg = tok_default_config(1 << 20);
    size_t n;
    int32_t *ids = tokens_str("abcdefghijklmnopqrstuvwxyz", &cfg, &n);

    /* 26 letters give 26 n-grams of "<a..z>"; 6 kept at j*25/5 = 0,5,10,15,20,25. */
    const char *want[] = {"<ab", "efg", "jkl", "opq", "tuv", "yz>"};
    cr_assert_eq(n, 7, "got %zu tokens", n);
    for (size_t i = 0; i < 6; i++) {
        cr_expect_eq(ids[1 + i], hash_id(want[i], 1, &cfg), "n-gram %zu (%s)", i, want[i]);
    }
    free(ids);
}

Test(tokenize, cjk_characters_are_words_with_bigrams) {
    TokConfig cfg = tok_default_config(1 << 20);
    size_t n;
    int32_t *ids = tokens_str("风机<num>号 温度", &cfg, &n);

    const char *want[] = {"风", "风机", "机", "<num>", "号", "温", "温度", "度"};
    int space[] = {0, 2, 0, 0, 0, 0, 2, 0};
    cr_assert_eq(n, 8, "got %zu tokens", n);
    for (size_t i = 0; i < n; i++) {
        cr_expect_eq(ids[i], hash_id(want[i], space[i], &cfg), "token %zu (%s)", i, want[i]);
    }
    free(ids);
}

Test(tokenize, short_words_and_masks_give_no_ngrams) {
    TokConfig cfg = tok_default_config(1 << 20);
    size_t n;
    int32_t *ids = tokens_str("a of <uuid> <ts> <ip> <hex>", &cfg, &n);

    cr_expect_eq(n, 6, "got %zu tokens", n);
    free(ids);
}

Test(tokenize, punctuation_and_invalid_utf8_separate_words) {
    TokConfig cfg = tok_default_config(1 << 20);
#define BYTES(lit)                                                                                 \
    { lit, sizeof lit - 1 }
    const struct {
        const char *s;
        size_t len;
    } variants[] = {BYTES("ab\xff"
                          "cd"),
                    BYTES("ab,cd"),
                    BYTES("ab\xe2\x82"
                          "cd"),
                    BYTES("ab\xed\xa0\x80"
                          "cd"),
                    BYTES("  ab--cd  "),
                    BYTES("ab\0cd"),
                    BYTES("ab\xc0\xaf"
                          "cd")};
#undef BYTES
    size_t n0, n;
    int32_t *want = tokens_str("ab cd", &cfg, &n0);

    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        int32_t *got = tokens(variants[v].s, variants[v].len, &cfg, &n);
        cr_expect(n == n0 && memcmp(got, want, n * sizeof *got) == 0,
                  "\"%s\" does not tokenise like \"ab cd\"",
                  escaped(variants[v].s, variants[v].len));
        free(got);
    }
    free(want);
}

Test(tokenize, empty_and_separator_only_text_gives_no_tokens) {
    TokConfig cfg = tok_default_config(4096);
    int32_t canary = 12345;

    cr_expect_eq(tok_text(&canary, 1, "", 0, &cfg), 0);
    cr_expect_eq(tok_text(&canary, 1, " ,.;<>\xff\xfe", 9, &cfg), 0);
    cr_expect_eq(canary, 12345, "a text without tokens wrote an id");
}

Test(tokenize, reports_full_count_and_writes_only_cap_ids) {
    TokConfig cfg = tok_default_config(4096);
    const char *s = "gearbox bearing temperature high";
    size_t n;
    int32_t *all = tokens_str(s, &cfg, &n), part[8];

    part[5] = -1;
    cr_assert_gt(n, 5);
    cr_expect_eq(tok_text(part, 5, s, strlen(s), &cfg), n, "count with a short buffer");
    cr_expect_eq(memcmp(part, all, 5 * sizeof *part), 0, "first ids differ");
    cr_expect_eq(part[5], -1, "wrote past cap");
    free(all);
}

Test(tokenize, ids_lie_in_one_to_vocab_size_over_the_corpus) {
    Corpus c = load_corpus();
    TokConfig cfg = tok_default_config(97);
    size_t total = 0;

    for (size_t i = 0; i < c.n; i++) {
        size_t n;
        int32_t *ids = tokens(c.s[i], c.len[i], &cfg, &n);
        for (size_t k = 0; k < n; k++) {
            cr_assert(ids[k] >= 1 && ids[k] < 97, "string %zu: id %d", i, ids[k]);
        }
        total += n;
        free(ids);
    }
    cr_expect_gt(total, 100000, "corpus gave only %zu tokens", total);
    free_corpus(&c);
}

Test(tokenize, worst_case_stays_within_max_tokens) {
    /* Three-letter words and lone CJK pairs are the densest inputs: 4 tokens for
     * 4 bytes ("abc "), 3 tokens for 6 bytes. */
    TokConfig cfg = tok_default_config(4096);
    cfg.max_ngrams = 1024;
    const char *dense[] = {"abc abc abc", "abcabcabcabcabcabc", "风机风机风机", "a b c d",
                           "<num><num>"};
    for (size_t i = 0; i < sizeof dense / sizeof dense[0]; i++) {
        size_t n;
        free(tokens_str(dense[i], &cfg, &n)); /* asserts n <= tok_max_tokens */
    }
}

Test(tokenize, refuses_bad_configurations_with_a_message) {
    char err[128];
    TokConfig ok = tok_default_config(4096), bad;

    cr_expect_eq(tok_check_config(&ok, err, sizeof err), 0);
    bad = ok, bad.vocab_size = 1;
    cr_expect_eq(tok_check_config(&bad, err, sizeof err), -1);
    cr_expect(strstr(err, "vocab_size"), "message: %s", err);
    bad = ok, bad.ngram = 2;
    cr_expect_eq(tok_check_config(&bad, err, sizeof err), -1);
    cr_expect(strstr(err, "ngram"), "message: %s", err);
    bad = ok, bad.max_ngrams = -1;
    cr_expect_eq(tok_check_config(&bad, err, sizeof err), -1);
    cr_expect(strstr(err, "max_ngrams"), "message: %s", err);
    bad = ok, bad.cjk_bigrams = 2;
    cr_expect_eq(tok_check_config(&bad, err, sizeof err), -1);
    cr_expect(strstr(err, "cjk_bigrams"), "message: %s", err);
}
