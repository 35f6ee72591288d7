"""User corpora: source/target pairs from a local TSV or JSONL file.

TSV: two tab-separated columns per line (source, target), an optional header line.
JSONL: one object per line, `{"src": ..., "tgt": ...}` (keys configurable).
Blank lines are skipped. Texts are NFC-normalised with single spaces (case is kept). Any bad
line raises ValueError "path:line: what is wrong", so a user can open the file at that line.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence

import numpy as np

FORMATS = ("tsv", "jsonl")
_SUFFIXES = {".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
Pair = tuple[str, str]


def read_pairs(path: str | os.PathLike, *, format: str | None = None, src_key: str = "src",
               tgt_key: str = "tgt", header: bool | None = None) -> list[Pair]:
    """All (source, target) pairs of a TSV or JSONL file, in file order.

    `format` defaults from the suffix (.tsv/.txt, .jsonl/.json). For TSV, `header=None` skips a
    first line that reads exactly `src_key<TAB>tgt_key` (any case); True always skips the first
    line, False never does.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    if format is None:
        format = _SUFFIXES.get(os.path.splitext(path)[1].lower())
        if format is None:
            raise ValueError(f"cannot tell the format of {path} from its suffix: pass "
                             f"format='tsv' or format='jsonl'")
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; expected one of {FORMATS}")
    pairs: list[Pair] = []
    first = True
    for lineno, line in _lines(path):
        if format == "tsv":
            fields = line.split("\t")
            if first and (header or (header is None and
                                     [f.strip().lower() for f in fields]
                                     == [src_key.lower(), tgt_key.lower()])):
                first = False
                continue
            first = False
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated columns "
                                 f"(source, target), got {len(fields)}")
            src, tgt = fields
            names = ("source (column 1)", "target (column 2)")
        else:
            src, tgt = _json_fields(path, lineno, line, src_key, tgt_key)
            names = (f"source (key {src_key!r})", f"target (key {tgt_key!r})")
        pair = (clean(src), clean(tgt))
        for text, name in zip(pair, names):
            if not text:
                raise ValueError(f"{path}:{lineno}: the {name} is empty")
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"{path}: no source/target pairs found (the file is empty)")
    return pairs


def corpus_pairs(path: str | os.PathLike, *, train_size: int | None, eval_size: int | None,
                 seed: int, eval_path: str | os.PathLike | None = None,
                 **read_kwargs: object) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, eval pairs) from one file split by `seed`, or from two files.

    One file: pairs are shuffled by `seed`, the first `eval_size` are held out, and training
    pairs whose source also occurs in the held-out set are removed, so evaluation sources are
    never seen in training. A size of None takes all that is left.
    """
    for name, v in (("train_size", train_size), ("eval_size", eval_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name}={v!r} is invalid: expected a non-negative integer or None")
    pairs = read_pairs(path, **read_kwargs)
    rng = np.random.default_rng([seed, 2])
    if eval_path is not None:
        held_out = _take(read_pairs(eval_path, **read_kwargs), eval_size, rng, "eval_size",
                         eval_path)
        pool = [pairs[i] for i in rng.permutation(len(pairs))]
    else:
        order = [pairs[i] for i in rng.permutation(len(pairs))]
        n_eval = len(order) if eval_size is None else eval_size
        if n_eval > len(order):
            raise ValueError(f"eval_size={eval_size} is more than the {len(order)} pairs in "
                             f"{os.fspath(path)}")
        held_out, pool = order[:n_eval], order[n_eval:]
    held_sources = {src for src, _ in held_out}
    pool = [p for p in pool if p[0] not in held_sources]
    n_train = len(pool) if train_size is None else train_size
    if n_train > len(pool):
        raise ValueError(f"train_size={train_size} is more than the {len(pool)} training pairs "
                         f"left in {os.fspath(path)} after holding out {len(held_out)}")
    return pool[:n_train], held_out


def clean(text: str) -> str:
    """NFC with runs of whitespace made single spaces, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _take(pairs: list[Pair], size: int | None, rng: np.random.Generator, name: str,
          path: str | os.PathLike) -> list[Pair]:
    if size is None:
        return pairs
    if size > len(pairs):
        raise ValueError(f"{name}={size} is more than the {len(pairs)} pairs in {os.fspath(path)}")
    return [pairs[i] for i in sorted(rng.permutation(len(pairs))[:size])]


def _lines(path: str) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines, decoded as UTF-8 line by line."""
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 text ({e.reason} at byte "
                                 f"{e.start} of the line); save the file as UTF-8") from None
            line = line.rstrip("\r\n")
            if line.strip():
                out.append((lineno, line))
    return out


def _json_fields(path: str, lineno: int, line: str, src_key: str, tgt_key: str
                 ) -> Sequence[str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                         ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object with keys {src_key!r} and "
                         f"{tgt_key!r}, got {type(obj).__name__}")
    values = []
    for key in (src_key, tgt_key):
        if key not in obj:
            raise ValueError(f"{path}:{lineno}: missing key {key!r} (the line has keys "
                             f"{sorted(obj)})")
        if not isinstance(obj[key], str):
            raise ValueError(f"{path}:{lineno}: key {key!r} must hold a string, got "
                             f"{type(obj[key]).__name__}")
        values.append(obj[key])
    return values
