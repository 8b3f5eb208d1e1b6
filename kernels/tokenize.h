/* tokenize.h - hashed subword tokeniser for the semantic encoder (pure kernel, no I/O).
 *
 * Maps normalised prompt text (see kernels/NORMALIZE.md) to token ids in the
 * fastText style: every word, mask token and CJK character gives one id, words add
 * capped character n-grams with boundary markers, adjacent CJK characters add a
 * bigram, and all of them are hashed with XXH64 into vocab_size buckets. No
 * vocabulary file: unseen spellings and typos share n-grams with their neighbours.
 * The rules are specified in README.md ("Tokeniser"), which tests/reference/
 * tokenize_ref.py implements independently. Any bytes are accepted (invalid UTF-8
 * reads as U+FFFD). Safe from any thread: no state, no allocation, no locale.
 */
#ifndef PD_TOKENIZE_H
#define PD_TOKENIZE_H

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever a rule change alters the ids of some input; model files record
 * the version they were trained with and the loader refuses any other. */
#define TOK_VERSION 1

#define TOK_MAX_NGRAM 8 /* largest supported n of the character n-grams */

/* Parameters of the tokeniser; a model file's metadata carries them. */
typedef struct {
    uint32_t vocab_size; /* V: ids lie in [1, V); 0 is reserved for padding; V >= 2 */
    int ngram;           /* n of the character n-grams, 1..TOK_MAX_NGRAM */
    int max_ngrams;      /* most n-grams kept per word, >= 0 (0: words only) */
    int cjk_bigrams;     /* 1: adjacent CJK characters add a bigram token */
    uint64_t seed;       /* word tokens hash with seed, n-grams seed+1, bigrams seed+2 */
} TokConfig;

/* The defaults of version 1: n = 3, at most 6 n-grams per word, CJK bigrams on. */
TokConfig tok_default_config(uint32_t vocab_size);

/* 0 when cfg is usable, else -1 with a message naming the bad field in err. */
int tok_check_config(const TokConfig *cfg, char *err, size_t errlen);

/* Most tokens that tok_text can produce for len input bytes: 2 * len. */
size_t tok_max_tokens(size_t len);

/* Tokenises text[0..len) (any bytes; NUL is a separator) into ids[0..cap), in text
 * order. Returns the total number of tokens of the text, which may exceed cap:
 * then only the first cap ids were written (snprintf-style). cfg must pass
 * tok_check_config. */
size_t tok_text(int32_t *ids, size_t cap, const char *text, size_t len, const TokConfig *cfg);

#endif
