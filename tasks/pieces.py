"""A deterministic word-piece vocabulary learner (BPE merges in WordPiece's `##` notation).

The `tokenizers` WordPiece trainer breaks ties between equally frequent pairs in hash-map order,
which changes from process to process: the same seed then gives different vocabularies (and
different numbers).  This learner does the same merges with ties broken by the pair's text, so a
corpus always gives the same pieces with the same ids.  Tokenisation itself stays the library's
`models.WordPiece` (greedy longest match).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable

PREFIX = "##"  # WordPiece's continuation marker
MAX_TEXTS = 10_000  # texts learnt from: plenty for sub-word statistics, and fast


def _join(a: str, b: str) -> str:
    return a + b.removeprefix(PREFIX)


def learn_pieces(texts: Iterable[str], size: int, max_texts: int = MAX_TEXTS) -> list[str]:
    """Up to `size` pieces (alphabet first, sorted; then merges in the order learnt).

    Words are whitespace-separated; a word is spelled as its first character followed by
    `##`-prefixed characters, and the most frequent adjacent pair (ties: smallest text) is merged
    until the vocabulary is full or no pair occurs twice.  Pair counts are updated only for the
    words a merge touches.  A corpus of more than `max_texts` texts is learnt from a sample of
    that many, chosen in a fixed pseudo-random order (a hash of each text), which keeps the
    words' relative frequencies and a large corpus fast.
    """
    texts = list(texts)
    if len(texts) > max_texts:
        texts = sorted(texts, key=lambda t: hashlib.md5(t.encode()).hexdigest())[:max_texts]
    counts = Counter(word for text in texts for word in text.split())
    unique = sorted(counts)
    words = [[w[0], *(PREFIX + c for c in w[1:])] for w in unique]
    weight = [counts[w] for w in unique]
    alphabet = sorted({s for w in words for s in w})
    pieces = list(alphabet)
    known = set(pieces)

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
        merged = _join(*best)
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
    return pieces
