"""Which batches make up optimizer step N, and fixed batch shapes.

Every trainer walks the same plan: optimizer step N (1-based) consumes the micro-batches
`(N-1)*A .. N*A-1` (A = `grad_accum_steps`) of one endless stream that runs through epoch 0,
1, 2, ... of `task.batches(split, batch_size, epoch, seed, start_step)`.  The stream depends only
on the seed, so a run resumed after step N asks for the same batches an uninterrupted run gets,
and no data iterator state needs saving.

Jitted steps compile once per shape, so batches are padded to fixed widths (`pad_batch`); a
short last batch is padded with rows of `pad_id`, which the loss ignores.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

BATCH_KEYS = ("src", "tgt_in", "labels")


def batches_per_epoch(task: Any, split: str, batch_size: int, seed: int = 0) -> int:
    """How many batches one epoch of `split` has (`task.steps_per_epoch`, else counted)."""
    counter = getattr(task, "steps_per_epoch", None)
    if callable(counter):
        return int(counter(split, batch_size))
    return sum(1 for _ in task.batches(split, batch_size, 0, seed, 0))


def total_steps(max_steps: int, epochs: int, micro_batches_per_epoch: int,
                grad_accum_steps: int) -> int:
    """`max_steps` when set, else the optimizer steps in `epochs` epochs (rounded down)."""
    if max_steps > 0:
        return max_steps
    steps = epochs * micro_batches_per_epoch // grad_accum_steps
    if steps < 1:
        raise ValueError(f"{epochs} epoch(s) of {micro_batches_per_epoch} batches make no "
                         f"optimizer step with grad_accum_steps={grad_accum_steps}")
    return steps


def step_batches(task: Any, split: str, batch_size: int, grad_accum_steps: int, seed: int,
                 micro_batches_per_epoch: int, start_step: int = 0
                 ) -> Iterator[tuple[int, list[dict[str, np.ndarray]]]]:
    """Yield `(step, micro_batches)` for steps start_step+1, start_step+2, ... forever."""
    if micro_batches_per_epoch < 1:
        raise ValueError(f"split {split!r} has no batches of size {batch_size}")
    index = start_step * grad_accum_steps  # global micro-batch index of the next batch
    epoch, offset = divmod(index, micro_batches_per_epoch)
    stream = task.batches(split, batch_size, epoch, seed, offset)
    step, pending = start_step, []
    while True:
        batch = next(stream, None)
        if batch is None or offset == micro_batches_per_epoch:
            epoch, offset = epoch + 1, 0
            stream = task.batches(split, batch_size, epoch, seed, 0)
            continue
        offset += 1
        pending.append(batch)
        if len(pending) == grad_accum_steps:
            step += 1
            yield step, pending
            pending = []


def pad_batch(batch: Mapping[str, np.ndarray], rows: int, src_len: int, tgt_len: int,
              pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad `src` to `[rows, src_len]` and `tgt_in`, `labels` to `[rows, tgt_len]`.

    Other keys pass through unchanged.  Raises ValueError if a batch is already larger.
    """
    out = dict(batch)
    for name in BATCH_KEYS:
        if name not in batch:
            raise ValueError(f"batch has no {name!r}: expected keys {BATCH_KEYS}, "
                             f"got {sorted(batch)}")
        x = np.asarray(batch[name])
        width = src_len if name == "src" else tgt_len
        if x.ndim != 2 or x.shape[0] > rows or x.shape[1] > width:
            raise ValueError(f"batch[{name!r}] has shape {x.shape}, which does not fit the "
                             f"fixed shape ({rows}, {width})")
        out[name] = np.pad(x, ((0, rows - x.shape[0]), (0, width - x.shape[1])),
                           constant_values=pad_id)
    return out


def stack(batches: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Micro-batches -> one dict with a leading micro-batch axis: `[a, b, len]` per key."""
    return {name: np.stack([b[name] for b in batches]) for name in BATCH_KEYS}


def fixed_lengths(task: Any, splits: tuple[str, ...], batch_size: int, seed: int,
                  max_len: int) -> tuple[int, int]:
    """(src_len, tgt_len) that every batch of `splits` fits: the task's `max_lengths()` when it
    has one, else the widest batch of one epoch of each split.  Checked against `max_len`."""
    lengths = getattr(task, "max_lengths", None)
    if callable(lengths):
        src_len, tgt_len = (int(n) for n in lengths())
    else:
        src_len = tgt_len = 1
        for split in splits:
            for batch in task.batches(split, batch_size, 0, seed, 0):
                src_len = max(src_len, np.shape(batch["src"])[1])
                tgt_len = max(tgt_len, np.shape(batch["tgt_in"])[1])
    if max(src_len, tgt_len) > max_len:
        raise ValueError(f"the task needs sequences of length src {src_len} / tgt {tgt_len}, "
                         f"over the model's max_len={max_len}")
    return src_len, tgt_len


class RunPlan(NamedTuple):
    """What every trainer derives before its first step: the micro-batch `rows`, the fixed
    `src_len`/`tgt_len` of every batch, micro-batches per epoch and optimizer steps in all."""

    rows: int
    src_len: int
    tgt_len: int
    per_epoch: int
    total: int


def run_plan(task: Any, model_config: Any, train_config: Any, train_split: str = "train",
             eval_split: str = "eval") -> RunPlan:
    """The `RunPlan` of training `model_config` with `train_config` on `task` (ValueError when
    the sequences do not fit `max_len` or the epochs make no optimizer step)."""
    rows = train_config.batch_size
    src_len, tgt_len = fixed_lengths(task, (train_split, eval_split), rows, train_config.seed,
                                     model_config.max_len)
    per_epoch = batches_per_epoch(task, train_split, rows, train_config.seed)
    total = total_steps(train_config.max_steps, train_config.epochs, per_epoch,
                        train_config.grad_accum_steps)
    return RunPlan(rows, src_len, tgt_len, per_epoch, total)
