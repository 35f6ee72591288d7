"""One evaluation pass over a task split, shared by the JAX, torch and HF trainers.

Every trainer evaluated the same way in its own copy of this loop: the split unshuffled in
batches of the training width, each padded to the fixed shape (so jitted code compiles once),
teacher-forced sums and greedy hypotheses per batch, combined by `EvalAccumulator`.  The
framework supplies only `score`, what one padded batch gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .data import pad_batch
from .evaluation import EvalAccumulator, eval_groups

# score(fixed batch [rows, len] numpy, real rows) ->
#   (summed smoothed loss, non-pad label count, argmax hits, greedy hypotheses [real, l])
Score = Callable[[Mapping[str, np.ndarray], int], tuple[float, int, int, np.ndarray]]


def evaluate_split(task: Any, split: str, shape: tuple[int, int, int], seed: int, pad_id: int,
                   score: Score) -> dict[str, float]:
    """`loss`, `token_accuracy` (token-weighted over the split) and the string metrics of the
    greedy hypotheses (`exact_match`, `bleu`, `chrf`, per-group exact match) of `split`."""
    rows, src_len, tgt_len = shape
    acc = EvalAccumulator(task, pad_id=pad_id, groups=eval_groups(task, split))
    for batch in task.batches(split, rows, 0, seed, 0):
        real = len(batch["src"])
        fixed = pad_batch(batch, rows, src_len, tgt_len, pad_id)
        loss_sum, tokens, correct, hypotheses = score(fixed, real)
        acc.add(float(loss_sum), int(tokens), int(correct),
                hypotheses=np.asarray(hypotheses)[:real], labels=np.asarray(batch["labels"]))
    return acc.result()
