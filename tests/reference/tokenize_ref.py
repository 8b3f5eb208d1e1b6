"""Reference implementation of the promptd tokeniser (README.md "Tokeniser", version 1).

Written from the specification, not from kernels/tokenize.c, so that the two can
be compared. The only shared piece is the Unicode general-category table: it is
read from libutf8proc (through ctypes), the library whose tables the C side uses,
because Python's own unicodedata may carry another Unicode version.

Usage as a module: tokenize(data: bytes, cfg: TokConfig) -> list[int].
"""
import ctypes
import ctypes.util
from dataclasses import dataclass

import xxhash

VERSION = 1
DEFAULT_SEED = 0x70726F6D70746431  # "promptd1"
MASKS = ("<num>", "<hex>", "<ip>", "<uuid>", "<ts>")

_lib = ctypes.CDLL(ctypes.util.find_library("utf8proc") or "libutf8proc.so.2")
_lib.utf8proc_category.argtypes = [ctypes.c_int32]
_lib.utf8proc_category.restype = ctypes.c_int
_cat_cache = {}


@dataclass
class TokConfig:
    vocab_size: int
    ngram: int = 3
    max_ngrams: int = 6
    cjk_bigrams: int = 1
    seed: int = DEFAULT_SEED


def is_word(ch):
    """General category L*, M* or N* (utf8proc values 1..11)."""
    c = _cat_cache.get(ch)
    if c is None:
        c = _cat_cache[ch] = 1 <= _lib.utf8proc_category(ord(ch)) <= 11
    return c


def is_cjk(ch):
    cp = ord(ch)
    return (0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0x3400 <= cp <= 0x4DBF
            or 0x4E00 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF
            or 0x20000 <= cp <= 0x323AF)


def token_id(text, space, cfg):
    h = xxhash.xxh64_intdigest(text.encode("utf-8"), seed=(cfg.seed + space) % (1 << 64))
    return 1 + h % (cfg.vocab_size - 1)


def ngrams(word, cfg):
    """The kept n-grams of '<' + word + '>' (spec: 'Words')."""
    n, cap = cfg.ngram, cfg.max_ngrams
    if len(word) < n or cap == 0:
        return []
    bounded = "<" + word + ">"
    grams = [bounded[i:i + n] for i in range(len(bounded) - n + 1)]
    k = len(grams)
    if k <= cap:
        return grams
    if cap == 1:
        return [grams[0]]
    return [grams[j * (k - 1) // (cap - 1)] for j in range(cap)]


def tokenize(data, cfg):
    """Token ids of data (bytes, any content) under cfg."""
    # Python's 'replace' handler substitutes one U+FFFD per maximal subpart.
    text = data.decode("utf-8", errors="replace")
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        mask = next((m for m in MASKS if text.startswith(m, i)), None) if ch == "<" else None
        if mask:
            out.append(token_id(mask, 0, cfg))
            i += len(mask)
        elif is_cjk(ch):
            out.append(token_id(ch, 0, cfg))
            if cfg.cjk_bigrams and i + 1 < n and is_cjk(text[i + 1]):
                out.append(token_id(text[i:i + 2], 2, cfg))
            i += 1
        elif is_word(ch):
            j = i
            while j < n and is_word(text[j]) and not is_cjk(text[j]):
                j += 1
            word = text[i:j]
            out.append(token_id(word, 0, cfg))
            out.extend(token_id(g, 1, cfg) for g in ngrams(word, cfg))
            i = j
        else:
            i += 1
    return out


if __name__ == "__main__":
    import sys
    cfg = TokConfig(vocab_size=int(sys.argv[1]) if len(sys.argv) > 1 else 32768)
    for line in sys.stdin.buffer:
        print(" ".join(map(str, tokenize(line.rstrip(b"\n"), cfg))))
