"""Fluency as n-gram entropy, computed the way the SafeEdit / EasyEdit reference does.

For one text: tokenize into words; for n = 2 and n = 3 take the frequency distribution of the
text's word n-grams and its Shannon entropy in bits, ``H_n = -sum p log2 p``; weight H_2 by 2/3
and H_3 by 4/3 and take the arithmetic mean of the two weighted values::

    ngram_entropy(text) = (2/3 * H_2 + 4/3 * H_3) / 2

Fluency of an instance (its five responses) is the arithmetic mean of ``ngram_entropy`` over
the texts. Repetitive text has few distinct n-grams and scores low.

Differences from the reference, all deliberate:

* Tokenization. The reference uses ``nltk.word_tokenize`` (Punkt + Treebank rules, no
  lower-casing). We use :func:`word_tokens`, a regex with no data download that follows the
  same main rules: words, numbers and punctuation marks are separate tokens, case is kept,
  clitics are split (``don't`` -> ``do n't``, ``I'm`` -> ``I 'm``, ``can't`` -> ``ca n't``),
  ``...`` and ``--`` stay single tokens, hyphenated words stay whole. It does not split
  ``cannot`` into ``can not``, does not rewrite double quotes into ```` `` ```` / ``''`` and
  does not keep abbreviation periods attached (``U.S.`` -> ``U . S .``). Scores therefore differ
  slightly from published ones on some texts; they are exactly comparable among our runs.
* Degenerate inputs. The reference divides by zero (NaN) when a text has fewer than n tokens.
  Here a text with no n-grams of size n contributes ``H_n = 0``, so an empty text scores 0.0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable

#: n-gram sizes and their weights in the reference implementation
NGRAM_SIZES = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)

_TOKEN_RE = re.compile(
    r"""
      \.\.\.+                      # ellipsis
    | -{2,}                        # dash made of hyphens
    | \w+?(?=n't\b)                # "do" of "don't", "ca" of "can't"
    | n't\b                        # negation clitic
    | '(?:s|m|d|ll|re|ve)\b        # other clitics: 's 'm 'd 'll 're 've
    | \d+(?:[.,:]\d+)+             # numbers with separators: 3.5  1,000  10:30
    | \w+(?:-\w+)*                 # words, hyphenated words, plain numbers
    | [^\w\s]                      # any other single symbol or punctuation mark
    """,
    re.VERBOSE | re.IGNORECASE,
)


def word_tokens(text: str) -> list[str]:
    """Split ``text`` into word and punctuation tokens (case kept), approximating nltk.word_tokenize."""
    return _TOKEN_RE.findall(text or "")


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def entropy_bits(counts: Iterable[int]) -> float:
    """Shannon entropy in bits of a frequency distribution; 0.0 when it is empty."""
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in counts) + 0.0  # + 0.0 turns -0.0 into 0.0


def ngram_entropy(text: str) -> float:
    """Weighted word 2-/3-gram entropy of one text in bits (see the module docstring); 0.0 if empty."""
    tokens = word_tokens(text)
    weighted = [w * entropy_bits(Counter(ngrams(tokens, n)).values()) for n, w in zip(NGRAM_SIZES, NGRAM_WEIGHTS)]
    return sum(weighted) / len(weighted)


def fluency(texts: Iterable[str]) -> float:
    """Arithmetic mean of :func:`ngram_entropy` over ``texts`` (e.g. an instance's five responses)."""
    values = [ngram_entropy(text) for text in texts]
    if not values:
        raise ValueError("fluency needs at least one text")
    return sum(values) / len(values)
