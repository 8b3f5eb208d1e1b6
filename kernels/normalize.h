/* normalize.h - text normalisation of incoming prompts (pure kernel, no I/O).
 *
 * One call maps a prompt to the text that keys the embedding cache and feeds the
 * tokeniser: invalid UTF-8 replaced, NFKC with case folding, whitespace collapsed
 * and, with NORM_MASK, volatile tokens (numbers, ids, addresses, times) masked.
 * The rules are specified in kernels/NORMALIZE.md. Safe to call from any thread:
 * the kernel keeps no state, allocates nothing and depends on no locale.
 */
#ifndef PD_NORMALIZE_H
#define PD_NORMALIZE_H

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever a rule change alters the output for some input, so that a cache
 * keyed by normalised text can be namespaced by (NORM_RULES_VERSION,
 * utf8proc_unicode_version()). */
#define NORM_RULES_VERSION 1

#define NORM_MASK 1u /* replace volatile tokens by <num> <hex> <ip> <uuid> <ts> */

enum { NORM_E_WORK = -1, NORM_E_OUT = -2 };

/* Code points (int32_t elements) of scratch that norm_text needs for in_len input
 * bytes: a bound over all inputs, saturating at SIZE_MAX. */
size_t norm_work_cap(size_t in_len);

/* Bytes of output, terminating NUL included, that norm_text needs at most for
 * in_len input bytes; saturates at SIZE_MAX. */
size_t norm_out_cap(size_t in_len);

/* Normalises in[0..in_len) (any bytes; NUL is a control character, not an end)
 * into out, NUL-terminated UTF-8. work is caller-owned scratch of work_cap code
 * points, clobbered. Bits of flags other than NORM_MASK are reserved and ignored.
 * Returns the output length in bytes without the NUL, or NORM_E_WORK / NORM_E_OUT
 * when work_cap / out_cap is below the cap above (checked before any work). */
ptrdiff_t norm_text(char *out, size_t out_cap, const char *in, size_t in_len, int32_t *work,
                    size_t work_cap, unsigned flags);

#endif
