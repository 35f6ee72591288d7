"""Number translation with num2words: English number words -> German, French or Korean words.

A toy translation task with real linguistic structure: German writes long compounds with
inverted tens ("einundzwanzig"), French counts in twenties with hyphens ("quatre-vingt-dix"),
Korean groups by ten thousand in Hangul ("이만 천" = 21000).

Numbers are drawn by magnitude, not uniformly from [0, max_number) (where almost all numbers
have six digits, and a model never sees "seven"): a training number's digit count d is drawn
from 1 .. digits(max_number - 1) with probability proportional to d (`digit_weights`: 1/21
.. 6/21 below 1,000,000), then the number is uniform among those with that count ([0, 10)
for one digit, so 0 is in).  Weighting by d gives each count a share of training in step with
how much there is to learn in it (a d-digit number has about d words): the eight trainable
one-digit numbers are still seen ~240 times each per 40,000 pairs, and a fixed-width batch
spends its rows where the long numbers' errors were. The held-out numbers of each digit count are drawn first, at most a
fifth of that count's numbers (two of the ten one-digit numbers, never 0: "zero" occurs in no
other number, so it could not be learnt), spread as evenly over the digit counts as those caps
allow; training draws only from the rest, with replacement (there are only ten one-digit
numbers), so train and eval hold disjoint sets of numbers.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from num2words import CONVERTER_CLASSES, num2words

from .tokenizer import lang_token

DEFAULT_MAX_NUMBER = 1_000_000
# Names the draw in a task's summary, so `--resume` refuses a run folder drawn another way
# (folders from before the weighting have no such field).
NUMBER_DRAW = "digit count d with probability proportional to d"
# At most 1/HELD_OUT_SHARE of the numbers of one digit count are held out; the rest train.
HELD_OUT_SHARE = 5
# Numbers never held out: "zero" is part of no other number, so a model could not learn it.
ALWAYS_TRAINED = frozenset({0})
# num2words takes ~100 us a number: above this many conversions they are shared out to worker
# processes (one per core), in order, so the result is the same as a plain loop's.
PARALLEL_MIN = 20_000
Pair = tuple[str, str]


def normalize(text: str) -> str:
    """NFC, lowercase, no commas, single spaces: how every number text is written.

    num2words writes "one hundred and twenty-three thousand, four hundred" (en) and
    "eine Million" (de); the comma and the capital carry no information for the task.
    """
    text = unicodedata.normalize("NFC", text).lower().replace(",", " ")
    return " ".join(text.split())


def check_lang(lang: str, field: str = "lang") -> None:
    if not isinstance(lang, str) or lang not in CONVERTER_CLASSES:
        raise ValueError(f"{field}={lang!r} is not a num2words language; known languages: "
                         f"{', '.join(sorted(CONVERTER_CLASSES))}")


def number_words(n: int, lang: str) -> str:
    """The normalised words of the integer `n` in `lang`, e.g. (21, "de") -> "einundzwanzig"."""
    check_lang(lang)
    return normalize(num2words(int(n), lang=lang))


def digit_count(n: int) -> int:
    """The number of decimal digits of `n >= 0` (0 has one)."""
    return len(str(int(n)))


def magnitude(n: int) -> str:
    """The evaluation group of `n`: "1digit" ... "6digit" (`exact_match_<magnitude>`)."""
    return f"{digit_count(n)}digit"


def magnitude_ranges(max_number: int) -> list[tuple[int, int]]:
    """`[lo, hi)` of each digit count below `max_number`: [(0, 10), (10, 100), ...]; the last
    range ends at `max_number`."""
    return [(0 if d == 1 else 10 ** (d - 1), min(10 ** d, max_number))
            for d in range(1, digit_count(max_number - 1) + 1)]


def held_out_counts(eval_size: int, max_number: int) -> list[int]:
    """How many held-out numbers each digit count gets: as even as the caps (a fifth of the
    count's numbers) allow, the smallest caps filled first, the rest shared by the others."""
    caps = [(hi - lo) // HELD_OUT_SHARE for lo, hi in magnitude_ranges(max_number)]
    if eval_size > sum(caps):
        raise ValueError(
            f"eval_size={eval_size} is too large for max_number={max_number}: at most "
            f"{sum(caps)} numbers can be held out (a fifth of each digit count's numbers)")
    counts, left = [0] * len(caps), eval_size
    order = sorted(range(len(caps)), key=lambda d: caps[d])
    for i, d in enumerate(order):
        counts[d] = min(caps[d], left // (len(caps) - i))
        left -= counts[d]
    return counts


def digit_weights(max_number: int) -> np.ndarray:
    """`[digit counts]` probabilities of a training number's digit count: proportional to it."""
    counts = np.arange(1, len(magnitude_ranges(max_number)) + 1, dtype=np.float64)
    return counts / counts.sum()


def draw_numbers(train_size: int, eval_size: int, seed: int, max_number: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(train numbers [train_size], eval numbers [eval_size]) int64, by magnitude (module
    docstring); eval numbers distinct and never among the train numbers."""
    rng = np.random.default_rng([seed, 1])
    ranges = magnitude_ranges(max_number)
    held, train_pools = [], []
    for (lo, hi), count in zip(ranges, held_out_counts(eval_size, max_number)):
        numbers = np.arange(lo, hi, dtype=np.int64)                  # [hi - lo]
        chosen = rng.choice(numbers[~np.isin(numbers, list(ALWAYS_TRAINED))], size=count,
                            replace=False)
        kept = np.ones(len(numbers), bool)
        kept[chosen - lo] = False
        held.append(chosen)
        train_pools.append(numbers[kept])
    eval_numbers = rng.permutation(np.concatenate(held))
    counts = rng.choice(len(ranges), size=train_size, p=digit_weights(max_number))  # [n] d - 1
    train_numbers = np.empty(train_size, np.int64)
    for d, pool in enumerate(train_pools):
        rows = np.flatnonzero(counts == d)
        train_numbers[rows] = rng.choice(pool, size=len(rows), replace=True)
    return train_numbers, eval_numbers


def number_pairs(*, train_size: int, eval_size: int, seed: int, src_lang: str = "en",
                 tgt_langs: Sequence[str] = ("de",), max_number: int = DEFAULT_MAX_NUMBER
                 ) -> tuple[list[Pair], list[Pair], np.ndarray, np.ndarray]:
    """(train pairs, eval pairs, train numbers, eval numbers), deterministic from `seed`.

    Numbers are drawn by magnitude with the held-out ones kept out of training
    (`draw_numbers`). With several `tgt_langs` the examples cycle through them and the
    source starts with the target-language token: ("<2fr>twenty-one", "vingt et un").
    """
    for name, v in (("train_size", train_size), ("eval_size", eval_size), ("seed", seed),
                    ("max_number", max_number)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} is invalid: expected a non-negative integer")
    if max_number < 2:
        raise ValueError(f"max_number={max_number} is too small: expected at least 2 numbers")
    check_lang(src_lang, "src_lang")
    tgt_langs = check_tgt_langs(tgt_langs)
    train_numbers, eval_numbers = draw_numbers(train_size, eval_size, seed, max_number)
    return (_pairs(train_numbers, src_lang, tgt_langs), _pairs(eval_numbers, src_lang, tgt_langs),
            train_numbers, eval_numbers)


@functools.lru_cache(maxsize=32)
def alphabet_texts(langs: tuple[str, ...], max_number: int = DEFAULT_MAX_NUMBER
                   ) -> tuple[str, ...]:
    """Texts that use every character the languages need below `max_number`.

    The character vocabulary is built from these plus the training pairs, so it does not
    depend on which numbers the seed drew: 0..1099 covers units, teens, tens and hundreds;
    multiples of each power of ten cover the scale words (tausend, mille, 만, million, ...).
    """
    numbers = set(range(min(1100, max_number)))
    power = 1000
    while power < max_number:
        numbers.update(k * power for k in range(1, 1000) if k * power < max_number)
        numbers.add(power + 1)
        power *= 10
    return tuple(number_words(n, lang) for lang in langs for n in sorted(numbers))


def check_tgt_langs(tgt_langs: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tgt_langs, str):
        tgt_langs = (tgt_langs,)
    tgt_langs = tuple(tgt_langs)
    if not tgt_langs:
        raise ValueError("tgt_langs=() is empty: expected at least one target language")
    if len(set(tgt_langs)) != len(tgt_langs):
        raise ValueError(f"tgt_langs={tgt_langs!r} lists a language twice")
    for lang in tgt_langs:
        check_lang(lang, "tgt_langs")
    return tgt_langs


def _pairs(numbers: np.ndarray, src_lang: str, tgt_langs: tuple[str, ...]) -> list[Pair]:
    multi = len(tgt_langs) > 1
    numbers = numbers.tolist()
    langs = [tgt_langs[i % len(tgt_langs)] for i in range(len(numbers))]
    words = _many_words([*((n, src_lang) for n in numbers), *zip(numbers, langs)])
    src, tgt = words[:len(numbers)], words[len(numbers):]
    return [((lang_token(lang) if multi else "") + s, t) for s, t, lang in zip(src, tgt, langs)]


def _many_words(jobs: list[tuple[int, str]]) -> list[str]:
    """`number_words(n, lang)` for each (n, lang) job, in order; a long list in parallel."""
    workers = min(len(os.sched_getaffinity(0)), 8)
    if len(jobs) < PARALLEL_MIN or workers < 2 or not _workers_can_start():
        return _words_chunk(jobs)
    size = -(-len(jobs) // (4 * workers))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    # spawn, not fork: jax and torch may already be running threads in this process.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [w for part in pool.map(_words_chunk, chunks) for w in part]


def _workers_can_start() -> bool:
    """Whether spawned workers can start: each one runs the parent's main script again, which
    fails when that script is no file on disk (`python - < script.py`: "<stdin>")."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.isfile(path)


def _words_chunk(jobs: list[tuple[int, str]]) -> list[str]:
    return [number_words(n, lang) for n, lang in jobs]
