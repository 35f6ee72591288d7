"""`build_task` and `Task`: the one object every trainer takes its data from.

A Task holds the train/eval pairs (strings), the tokenizer(s), the encoded ids, and makes
batches and the matching `spec.TransformerConfig`. All of it is a pure function of the
arguments of `build_task` (the seed included).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from spec import TransformerConfig

from . import batching
from .corpus import corpus_pairs
from .numbers import (
    DEFAULT_MAX_NUMBER,
    NUMBER_DRAW,
    alphabet_texts,
    check_lang,
    check_tgt_langs,
    magnitude,
    number_pairs,
)
from .synthetic import ALPHABET, TRANSFORMS, synthetic_pairs
from .tokenizer import (
    BOS_ID,
    EOS_ID,
    KINDS,
    PAD_ID,
    UNK_ID,
    TaskTokenizer,
    build_tokenizer,
    lang_token,
)

TASK_NAMES = ("copy", "reverse", "sort", "numbers", "corpus")
SPLITS = ("train", "eval")
# String length (symbols) of the synthetic tasks when build_task gets max_len=None.
SYNTHETIC_MAX_LENGTH = 10
Pair = tuple[str, str]


@dataclasses.dataclass(eq=False)
class Task:
    """Pairs, tokenizers and batching for one task; see `build_task`.

    `info` records how the data was made (languages, held-out numbers, dropped pairs).
    """

    name: str
    train_pairs: list[Pair]
    eval_pairs: list[Pair]
    src_tokenizer: TaskTokenizer
    tgt_tokenizer: TaskTokenizer
    seed: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    _ids: dict[str, tuple[list[list[int]], list[list[int]]]] = dataclasses.field(
        default_factory=dict, repr=False)

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    # -- vocabulary --------------------------------------------------------------------------
    @property
    def shared_vocab(self) -> bool:
        """One vocabulary for source and target (so `share_embeddings` can be on)."""
        return self.src_tokenizer is self.tgt_tokenizer

    @property
    def tokenizer(self) -> TaskTokenizer:
        """The shared tokenizer (ValueError when source and target vocabularies differ)."""
        if not self.shared_vocab:
            raise ValueError("this task has separate source and target vocabularies: use "
                             "task.src_tokenizer and task.tgt_tokenizer")
        return self.src_tokenizer

    @property
    def src_vocab_size(self) -> int:
        return self.src_tokenizer.vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt_tokenizer.vocab_size

    def model_config(self, preset: str | None = None, **overrides: Any) -> TransformerConfig:
        """A TransformerConfig (a preset, or the defaults) with this task's vocabulary sizes,
        special ids, `share_embeddings` and a `max_len` that fits every sequence."""
        base = TransformerConfig.preset(preset) if preset else TransformerConfig()
        needed = max(self.max_lengths())
        fields = dict(src_vocab_size=self.src_vocab_size, tgt_vocab_size=self.tgt_vocab_size,
                      pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                      share_embeddings=self.shared_vocab, max_len=max(base.max_len, needed))
        fields.update(overrides)
        if isinstance(fields["max_len"], int) and fields["max_len"] < needed:
            raise ValueError(f"max_len={fields['max_len']} is too short for this task: its "
                             f"longest sequence has {needed} tokens (specials included)")
        return base.replace(**fields)

    # -- text <-> ids ------------------------------------------------------------------------
    def pairs(self, split: str) -> list[Pair]:
        _check_split(split)
        return self.train_pairs if split == "train" else self.eval_pairs

    def references(self, split: str) -> list[str]:
        """The target strings of `split`, in the order of unshuffled batches."""
        return [tgt for _, tgt in self.pairs(split)]

    def target_languages(self, split: str) -> list[str] | None:
        """The target language of each pair of `split`, read from its "<2xx>" source prefix,
        for a multilingual numbers task (so evaluation can score each language); else None."""
        langs = self.info.get("tgt_langs") or []
        if len(langs) < 2:
            return None
        out = []
        for src, _ in self.pairs(split):
            lang = next((x for x in langs if src.startswith(lang_token(x))), None)
            if lang is None:
                raise ValueError(f"source {src!r} of split {split!r} starts with no target-"
                                 f"language token of {langs}")
            out.append(lang)
        return out

    def magnitudes(self, split: str) -> list[str] | None:
        """The digit count of each number of `split`, "1digit" ... "6digit", for the numbers
        task (so evaluation can score each magnitude); else None."""
        numbers = self.info.get(f"{_check_split(split)}_numbers")
        return None if numbers is None else [magnitude(n) for n in numbers.tolist()]

    def encoded(self, split: str) -> tuple[list[list[int]], list[list[int]]]:
        """(source ids, target ids) of every pair of `split`, without specials (cached)."""
        if split not in self._ids:
            pairs = self.pairs(split)
            self._ids[split] = (self.src_tokenizer.encode_batch([s for s, _ in pairs]),
                                self.tgt_tokenizer.encode_batch([t for _, t in pairs]))
        return self._ids[split]

    def encode_sources(self, texts: Sequence[str], *, pad_to: int | None = None,
                       pad_multiple: int | None = None) -> np.ndarray:
        """New source strings -> `[b, s]` int32 ids ending with eos, right-padded: decoder input."""
        if isinstance(texts, str):
            raise ValueError("encode_sources takes a list of strings, not one string")
        ids = self.src_tokenizer.encode_batch(list(texts))
        return batching.collate(ids, [[]] * len(ids), pad_to=None if pad_to is None
                                else (pad_to, 1), pad_multiple=pad_multiple)["src"]

    def decode(self, ids: Sequence[int]) -> str:
        """Target ids (e.g. one row of greedy_decode) -> text, up to the first eos."""
        return self.tgt_tokenizer.decode(ids)

    def decode_batch(self, rows: Any) -> list[str]:
        """`[b, t]` target ids -> b strings."""
        return self.tgt_tokenizer.decode_batch(rows)

    def max_lengths(self, split: str | None = None) -> tuple[int, int]:
        """(s, t): the longest source (with eos) and target (with bos) of `split` or of both
        splits: the smallest `pad_to` that fits every batch."""
        splits = SPLITS if split is None else (_check_split(split),)
        s = t = 1
        for name in splits:
            src, tgt = self.encoded(name)
            s = max([s] + [len(x) + 1 for x in src])
            t = max([t] + [len(y) + 1 for y in tgt])
        return s, t

    # -- batches -----------------------------------------------------------------------------
    def steps_per_epoch(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = len(self.pairs(split))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive integer")
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, split: str, batch_size: int, epoch: int = 0, seed: int | None = None,
                start_step: int = 0, *, shuffle: bool | None = None, drop_last: bool = False,
                bucket: bool = False, pad_to: int | tuple[int, int] | None = None,
                pad_multiple: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The batches of one epoch of `split`, from step `start_step` on.

        Each is {"src": [b, s], "tgt_in": [b, t], "labels": [b, t]} int32 (see
        `tasks.batching`). `seed` defaults to the task's seed; `shuffle` defaults to True for
        train and False for eval (eval batch k then holds references(split)[k*B:(k+1)*B]).
        The same arguments always give the same batches, so resuming at (epoch, start_step)
        reproduces an uninterrupted run exactly.
        """
        src, tgt = self.encoded(split)
        return batching.iterate(
            src, tgt, batch_size, seed=self.seed if seed is None else seed, epoch=epoch,
            start_step=start_step, shuffle=(split == "train") if shuffle is None else shuffle,
            drop_last=drop_last, bucket=bucket, pad_to=pad_to, pad_multiple=pad_multiple)

    def stream(self, split: str, batch_size: int, *, seed: int | None = None,
               start_epoch: int = 0, start_step: int = 0, num_epochs: int | None = None,
               **options: Any) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """(epoch, step, batch) across epochs, from (start_epoch, start_step) up to epoch
        `num_epochs` (exclusive; None: forever). `options` as for `batches`."""
        if self.steps_per_epoch(split, batch_size, options.get("drop_last", False)) == 0:
            raise ValueError(f"split {split!r} has {len(self.pairs(split))} pairs: no batch of "
                             f"{batch_size} with drop_last")
        first = self.batches(split, batch_size, start_epoch, seed, start_step, **options)

        def generate() -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
            epoch, step, it = start_epoch, start_step, first
            while num_epochs is None or epoch < num_epochs:
                for batch in it:
                    yield epoch, step, batch
                    step += 1
                epoch, step = epoch + 1, 0
                it = self.batches(split, batch_size, epoch, seed, 0, **options)

        return generate()

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description for run reports."""
        s, t = self.max_lengths()
        return {"name": self.name, "train_size": len(self.train_pairs),
                "eval_size": len(self.eval_pairs), "seed": self.seed,
                "tokenizer": self.src_tokenizer.kind, "shared_vocab": self.shared_vocab,
                "src_vocab_size": self.src_vocab_size, "tgt_vocab_size": self.tgt_vocab_size,
                "max_src_len": s, "max_tgt_len": t,
                **{k: v for k, v in self.info.items() if isinstance(v, (str, int, list, dict))}}


def build_task(name: str, *, train_size: int | None = 1000, eval_size: int | None = 200,
               max_len: int | None = None, seed: int = 0, src_lang: str = "en",
               tgt_langs: Sequence[str] = ("de",), max_number: int = DEFAULT_MAX_NUMBER,
               path: str | os.PathLike | None = None,
               eval_path: str | os.PathLike | None = None, src_key: str = "src",
               tgt_key: str = "tgt", tokenizer: str | TaskTokenizer = "char",
               vocab_size: int = 1000, shared_vocab: bool = True, min_len: int = 1) -> Task:
    """Build one of TASK_NAMES.

    `max_len` bounds every sequence in tokens, specials included (source + eos, bos + target):
    copy/reverse/sort draw strings of `min_len..max_len-1` symbols (default max 10 symbols);
    `numbers` raises if a pair does not fit; `corpus` drops the pairs that do not fit
    (counted in `task.info["dropped"]`). None: no bound.
    numbers: `src_lang` words -> `tgt_langs` words, numbers from [0, max_number) drawn by
    digit count (`tasks.numbers`: a count d with probability proportional to d, held-out
    numbers never in training); several
    `tgt_langs` put "<2xx>" in front of each source. corpus: `path` (TSV or JSONL, keys
    `src_key`/`tgt_key`), held-out pairs from `eval_path` or split off `path`.
    `tokenizer`: "char" (default), "wordpiece" or "bpe" (`vocab_size` tokens; `tasks.pieces`),
    or a TaskTokenizer to reuse.
    `shared_vocab=False` gives source and target their own vocabularies.
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: expected a non-negative integer")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)
                                or max_len < 2):
        raise ValueError(f"max_len={max_len!r} is invalid: expected an integer >= 2 or None")
    if not isinstance(tokenizer, TaskTokenizer) and tokenizer not in KINDS:
        raise ValueError(f"tokenizer={tokenizer!r} is invalid: expected one of {KINDS} or a "
                         f"TaskTokenizer")
    if name != "corpus" and path is not None:
        raise ValueError(f"path={os.fspath(path)!r} is only used by the 'corpus' task, not {name!r}")
    info: dict[str, Any] = {}
    if name in TRANSFORMS:
        max_length = SYNTHETIC_MAX_LENGTH if max_len is None else max_len - 1
        train, held = synthetic_pairs(name, train_size=_size(train_size, "train_size"),
                                      eval_size=_size(eval_size, "eval_size"), seed=seed,
                                      min_length=min_len, max_length=max_length)
        src_texts = tgt_texts = [ALPHABET]
        lang_tokens: tuple[str, ...] = ()
    elif name == "numbers":
        tgt_langs = check_tgt_langs(tgt_langs)
        check_lang(src_lang, "src_lang")
        train, held, train_numbers, eval_numbers = number_pairs(
            train_size=_size(train_size, "train_size"), eval_size=_size(eval_size, "eval_size"),
            seed=seed, src_lang=src_lang, tgt_langs=tgt_langs, max_number=max_number)
        info.update(src_lang=src_lang, tgt_langs=list(tgt_langs), max_number=max_number,
                    number_draw=NUMBER_DRAW, train_numbers=train_numbers,
                    eval_numbers=eval_numbers)
        src_texts = list(alphabet_texts((src_lang,), max_number))
        tgt_texts = list(alphabet_texts(tgt_langs, max_number))
        lang_tokens = tuple(lang_token(lang) for lang in tgt_langs) if len(tgt_langs) > 1 else ()
    else:
        if path is None:
            raise ValueError("the 'corpus' task needs path= a TSV or JSONL file of pairs")
        train, held = corpus_pairs(path, train_size=train_size, eval_size=eval_size, seed=seed,
                                   eval_path=eval_path, src_key=src_key, tgt_key=tgt_key)
        info.update(path=os.fspath(path))
        src_texts, tgt_texts, lang_tokens = [], [], ()
    src_texts = src_texts + [s for s, _ in train]
    tgt_texts = tgt_texts + [t for _, t in train]
    if isinstance(tokenizer, TaskTokenizer):
        src_tok = tgt_tok = tokenizer
    elif shared_vocab:
        src_tok = tgt_tok = build_tokenizer(src_texts + tgt_texts, tokenizer,
                                            lang_tokens=lang_tokens, vocab_size=vocab_size)
    else:
        src_tok = build_tokenizer(src_texts, tokenizer, lang_tokens=lang_tokens,
                                  vocab_size=vocab_size)
        tgt_tok = build_tokenizer(tgt_texts, tokenizer, vocab_size=vocab_size)
    task = Task(name, train, held, src_tok, tgt_tok, seed, info)
    if max_len is not None:
        _apply_max_len(task, max_len)
    return task


def _apply_max_len(task: Task, max_len: int) -> None:
    dropped = {}
    for split in SPLITS:
        src, tgt = task.encoded(split)
        fits = [len(x) < max_len and len(y) < max_len for x, y in zip(src, tgt)]
        if all(fits):
            dropped[split] = 0
            continue
        if task.name != "corpus":
            need = max(max(len(x), len(y)) for x, y in zip(src, tgt)) + 1
            bad = task.pairs(split)[fits.index(False)]
            raise ValueError(f"max_len={max_len} is too short for the {split} pair {bad!r}: "
                             f"this data needs max_len >= {need} (or max_len=None)")
        keep = [i for i, ok in enumerate(fits) if ok]
        pairs = [task.pairs(split)[i] for i in keep]
        task._ids[split] = ([src[i] for i in keep], [tgt[i] for i in keep])
        if split == "train":
            task.train_pairs = pairs
        else:
            task.eval_pairs = pairs
        dropped[split] = len(fits) - len(keep)
    task.info["dropped"] = dropped


def _size(v: int | None, name: str) -> int:
    if v is None:
        raise ValueError(f"{name}=None is only allowed for the 'corpus' task: expected an integer")
    return v


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
    return split
