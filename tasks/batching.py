"""Padded, deterministic, resumable batches as numpy int32 dicts (docs/interfaces.md layout).

For a source x and target y (raw ids, no specials):
    src    = x + [eos]          right-padded with pad_id   [b, s]
    tgt_in = [bos] + y          right-padded with pad_id   [b, t]
    labels = y + [eos]          right-padded with pad_id   [b, t]
The order of an epoch is a pure function of (seed, epoch, sizes, options): `epoch_plan` lists
every batch's example indices up front, so starting at any step yields exactly what an
uninterrupted run would have yielded from there (exact resume after a kill).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .tokenizer import BOS_ID, EOS_ID, PAD_ID

# Bucketing sorts windows of this many batches by length: long enough to group similar
# lengths, short enough to keep the epoch random.
BUCKET_BATCHES = 32
Batch = dict[str, np.ndarray]


def collate(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
            pad_to: int | tuple[int, int] | None = None, pad_multiple: int | None = None
            ) -> Batch:
    """One batch {"src": [b, s], "tgt_in": [b, t], "labels": [b, t]} (int32).

    Without options s and t are the longest lengths in the batch (specials included).
    `pad_to=(s, t)` (or one int for both) fixes the shape, so jitted steps compile once;
    `pad_multiple=8` rounds s and t up to a multiple of 8 (few distinct shapes).
    """
    if len(sources) != len(targets) or not sources:
        raise ValueError(f"collate needs as many sources as targets and at least one, got "
                         f"{len(sources)} sources and {len(targets)} targets")
    s = max(len(x) for x in sources) + 1
    t = max(len(y) for y in targets) + 1
    s, t = fit_lengths(s, t, pad_to=pad_to, pad_multiple=pad_multiple)
    b = len(sources)
    src = np.full((b, s), PAD_ID, np.int32)  # [b, s]
    tgt_in = np.full((b, t), PAD_ID, np.int32)  # [b, t]
    labels = np.full((b, t), PAD_ID, np.int32)  # [b, t]
    for row, (x, y) in enumerate(zip(sources, targets)):
        src[row, :len(x)] = x
        src[row, len(x)] = EOS_ID
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1:len(y) + 1] = y
        labels[row, :len(y)] = y
        labels[row, len(y)] = EOS_ID
    return {"src": src, "tgt_in": tgt_in, "labels": labels}


def fit_lengths(s: int, t: int, *, pad_to: int | tuple[int, int] | None = None,
                pad_multiple: int | None = None) -> tuple[int, int]:
    """The padded (s, t) for needed lengths (s, t) under `pad_to` or `pad_multiple`."""
    if pad_to is not None and pad_multiple is not None:
        raise ValueError("pass pad_to or pad_multiple, not both")
    if pad_to is not None:
        fixed = (pad_to, pad_to) if isinstance(pad_to, (int, np.integer)) else tuple(pad_to)
        if len(fixed) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 1 for v in fixed):
            raise ValueError(f"pad_to={pad_to!r} is invalid: expected a positive int or a "
                             f"pair (src_len, tgt_len)")
        for name, need, have in (("source", s, fixed[0]), ("target", t, fixed[1])):
            if need > have:
                raise ValueError(f"pad_to={pad_to!r} is too short: a {name} needs length {need} "
                                 f"(specials included); use task.max_lengths() for the minimum")
        return int(fixed[0]), int(fixed[1])
    if pad_multiple is not None:
        if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int) or pad_multiple < 1:
            raise ValueError(f"pad_multiple={pad_multiple!r} is invalid: expected a positive int")
        return -(-s // pad_multiple) * pad_multiple, -(-t // pad_multiple) * pad_multiple
    return s, t


def epoch_plan(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, shuffle: bool,
               drop_last: bool = False, bucket: bool = False) -> list[np.ndarray]:
    """The example indices of every batch of one epoch, in order.

    `lengths` is `[n]` (any per-example size to bucket by). With `shuffle` the order is a
    permutation drawn from (seed, epoch); `bucket` then sorts windows of BUCKET_BATCHES
    batches by length and shuffles the batches, so batches hold similar lengths (less padding).
    `drop_last` drops a final batch smaller than `batch_size`.
    """
    n = len(lengths)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected a positive integer")
    for name, v in (("seed", seed), ("epoch", epoch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} is invalid: expected a non-negative integer")
    rng = np.random.default_rng([seed, epoch, 3])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        window = batch_size * BUCKET_BATCHES
        chunks = np.split(order, range(window, n, window))
        order = np.concatenate([c[np.argsort(np.asarray(lengths)[c], kind="stable")]
                                for c in chunks])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if bucket and shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iterate(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], batch_size: int,
            *, seed: int, epoch: int, start_step: int = 0, shuffle: bool = True,
            drop_last: bool = False, bucket: bool = False,
            pad_to: int | tuple[int, int] | None = None, pad_multiple: int | None = None
            ) -> Iterator[Batch]:
    """The batches of one epoch from step `start_step` on (see `epoch_plan`, `collate`)."""
    lengths = np.array([max(len(x), len(y)) for x, y in zip(sources, targets)], np.int64)
    plan = epoch_plan(lengths, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                      drop_last=drop_last, bucket=bucket)
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
            or not 0 <= start_step <= len(plan):
        raise ValueError(f"start_step={start_step!r} is invalid: this epoch has {len(plan)} "
                         f"steps, expected 0 <= start_step <= {len(plan)}")
    fit_lengths(1, 1, pad_to=pad_to, pad_multiple=pad_multiple)  # bad options fail here, not later
    return (collate([sources[i] for i in idx], [targets[i] for i in idx],
                    pad_to=pad_to, pad_multiple=pad_multiple) for idx in plan[start_step:])
