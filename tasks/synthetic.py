"""Synthetic seq2seq tasks: copy, reverse and sort random strings of digits and letters.

Each needs a different attention pattern, which is the point of looking inside the model:
copy attends along the diagonal, reverse along the anti-diagonal, sort by content.
Strings are written without separators ("a3k9"), so with the char tokenizer one symbol is one
token. Evaluation strings never occur in training.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
}
_MAX_EVAL_ROUNDS = 50
Pair = tuple[str, str]


def synthetic_pairs(name: str, *, train_size: int, eval_size: int, seed: int,
                    min_length: int = 1, max_length: int = 10, alphabet: str = ALPHABET
                    ) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, eval pairs) of strings of `min_length..max_length` symbols.

    Lengths are uniform, symbols uniform over `alphabet`. Training strings may repeat;
    evaluation strings are distinct and disjoint from the training ones.
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown synthetic task {name!r}; known: {', '.join(TRANSFORMS)}")
    for field, v in (("train_size", train_size), ("eval_size", eval_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{field}={v!r} is invalid: expected a non-negative integer")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"min_length={min_length!r} is invalid: expected an integer >= 1")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < min_length:
        raise ValueError(f"max_length={max_length!r} is invalid: expected an integer >= "
                         f"min_length={min_length}")
    if len(set(alphabet)) != len(alphabet) or not alphabet or any(c.isspace() for c in alphabet):
        raise ValueError(f"alphabet={alphabet!r} is invalid: expected distinct non-space symbols")
    rng = np.random.default_rng([seed, 0])
    train = _draw(rng, train_size, min_length, max_length, alphabet)
    seen = set(train)
    held_out: list[str] = []
    for _ in range(_MAX_EVAL_ROUNDS):
        if len(held_out) == eval_size:
            break
        for s in _draw(rng, 2 * (eval_size - len(held_out)), min_length, max_length, alphabet):
            if s not in seen and len(held_out) < eval_size:
                seen.add(s)
                held_out.append(s)
    if len(held_out) < eval_size:
        raise ValueError(
            f"could draw only {len(held_out)} of eval_size={eval_size} held-out strings not seen "
            f"in training: lengths {min_length}..{max_length} over {len(alphabet)} symbols are "
            f"too few; widen the length range (max_len) or lower the sizes")
    fn = TRANSFORMS[name]
    return [(s, fn(s)) for s in train], [(s, fn(s)) for s in held_out]


def _draw(rng: np.random.Generator, n: int, lo: int, hi: int, alphabet: str) -> list[str]:
    lengths = rng.integers(lo, hi + 1, size=n)
    symbols = rng.integers(0, len(alphabet), size=(n, hi))  # [n, hi]
    table = np.array(list(alphabet))
    return ["".join(table[row[:length]]) for row, length in zip(symbols, lengths)]
