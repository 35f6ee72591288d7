"""A deterministic sub-word learner: byte-pair merges, in WordPiece's or in Sennrich's notation.

The `tokenizers` trainers break ties between equally frequent pairs in hash-map order, which
changes from process to process: the same seed then gives different vocabularies (and
different numbers).  This learner does the same merges with ties broken by the pair's text, so a
corpus always gives the same pieces with the same ids.  Tokenisation itself stays the library's:
`models.WordPiece` (greedy longest match) over `learn_pieces`, `models.BPE` (the merges, in
order) over `learn_merges`.

The two notations mark a word's pieces differently, and that decides what a model must learn:
- WordPiece marks every piece but the first ("zehntausend" -> "z ##ehn ##tausend"), so a
  morpheme has one token at the start of a word and another inside it: "zehn" alone starts
  with a token that training only ever saw before "##tausend";
- Sennrich's BPE (the paper's tokenizer) marks the last piece with `</w>` ("zehntausend" ->
  "zehn tausend</w>", "dreizehn" -> "drei zehn</w>"), so every word ends on a token that
  also ends other words, and the decoder has seen each such token followed by eos.  Its
  weakness is the mirror image, at a word's start: "neunhundert</w>" (900) ends numbers like
  5900 but starts none, and rarer misses like it are spread over the longer numbers (README,
  "Training quality").
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

PREFIX = "##"  # WordPiece's continuation marker
SUFFIX = "</w>"  # Sennrich's end-of-word marker (subword-nmt, `models.BPE(end_of_word_suffix=)`)
MAX_TEXTS = 10_000  # texts learnt from: plenty for sub-word statistics, and fast
Merge = tuple[str, str]


def learn_pieces(texts: Iterable[str], size: int, max_texts: int = MAX_TEXTS) -> list[str]:
    """Up to `size` WordPiece pieces (alphabet first, sorted; then merges in the order learnt):
    a word is spelled as its first character followed by `##`-prefixed characters."""
    return _learn(texts, size, max_texts, lambda w: [w[0], *(PREFIX + c for c in w[1:])],
                  lambda a, b: a + b.removeprefix(PREFIX))[0]


def learn_merges(texts: Iterable[str], size: int, max_texts: int = MAX_TEXTS
                 ) -> tuple[list[str], list[Merge]]:
    """(up to `size` BPE pieces, the merges in the order learnt): a word is spelled as its
    characters with `</w>` on the last, as `models.BPE(end_of_word_suffix=SUFFIX)` spells it."""
    return _learn(texts, size, max_texts, lambda w: [*w[:-1], w[-1] + SUFFIX],
                  lambda a, b: a + b, both_forms)


def both_forms(symbols: set[str]) -> set[str]:
    """Each character of a BPE alphabet inside a word and at its end, so that a word of known
    characters never needs `<unk>` (a character seen only word-inside may end a new word)."""
    chars = {s.removesuffix(SUFFIX) for s in symbols}
    return chars | {c + SUFFIX for c in chars}


def _learn(texts: Iterable[str], size: int, max_texts: int, spell: Callable[[str], list[str]],
           join: Callable[[str, str], str],
           complete: Callable[[set[str]], set[str]] = set) -> tuple[list[str], list[Merge]]:
    """Pieces and merges: the most frequent adjacent pair (ties: smallest text) is merged until
    the vocabulary is full or no pair occurs twice.

    Words are whitespace-separated and spelled by `spell`; the alphabet is the symbols seen,
    `complete`d, and is never cut (a text of known characters must not need `<unk>`).  Pair
    counts are updated only for the words a merge touches.  A corpus of more than `max_texts`
    texts is learnt from a sample of that many, chosen in a fixed pseudo-random order (a hash
    of each text), which keeps the words' relative frequencies and a large corpus fast.
    """
    texts = list(texts)
    if len(texts) > max_texts:
        texts = sorted(texts, key=lambda t: hashlib.md5(t.encode()).hexdigest())[:max_texts]
    counts = Counter(word for text in texts for word in text.split())
    unique = sorted(counts)
    words = [spell(w) for w in unique]
    weight = [counts[w] for w in unique]
    alphabet = sorted(complete({s for w in words for s in w}))
    pieces = list(alphabet)
    known = set(pieces)
    merges: list[Merge] = []

    pair_count: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += weight[i]
            where[pair].add(i)

    while len(pieces) < size and pair_count:
        best, n = min(pair_count.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < 2:
            break
        merged = join(*best)
        merges.append(best)
        for i in sorted(where.pop(best)):
            w, c = words[i], weight[i]
            for pair in zip(w, w[1:]):
                pair_count[pair] -= c
                if pair_count[pair] <= 0:
                    del pair_count[pair]
                if pair != best:
                    where[pair].discard(i)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for pair in zip(out, out[1:]):
                pair_count[pair] += c
                where[pair].add(i)
        pair_count.pop(best, None)
        if merged not in known:
            known.add(merged)
            pieces.append(merged)
    return pieces, merges
