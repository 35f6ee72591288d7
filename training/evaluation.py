"""Evaluation glue: combine per-batch sums and decoded texts into one set of metrics.

A trainer runs its framework's teacher-forced loss and greedy decoding batch by batch and hands
numpy results to `EvalAccumulator`, which turns them into `loss` and `token_accuracy` (exact
means over every non-pad label of the split, not means of batch means) and, on the decoded
texts, `exact_match`, `bleu` and `chrf` from `tasks.metrics` (sacrebleu).  With `groups` (per
example in split order, one label or a tuple of labels, e.g. `("fr", "3digit")`), each label also
gets its own `exact_match_<label>` over the examples that carry it: a multilingual model's weakest
language, or the short numbers a model never learnt, is not hidden by the mean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np


class EvalAccumulator:
    """Collects one evaluation pass.  `tokenizer` needs `decode_batch(rows) -> list[str]`
    stopping at eos and dropping special tokens (a `tasks.Task` or `tasks.TaskTokenizer`)."""

    def __init__(self, tokenizer: Any, pad_id: int = 0,
                 groups: Sequence[str | tuple[str, ...]] | None = None) -> None:
        self.tokenizer, self.pad_id = tokenizer, pad_id
        self.groups = None if groups is None else [
            (g,) if isinstance(g, str) else tuple(g) for g in groups]
        self.loss_sum, self.tokens, self.correct = 0.0, 0, 0
        self.predictions: list[str] = []
        self.references: list[str] = []

    def add(self, loss_sum: float, tokens: int, correct: int, *,
            hypotheses: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        """One batch: the summed per-token loss, the non-pad label count, the argmax hits, and
        optionally greedy `hypotheses [b, l]` with the `labels [b, t]` they should match."""
        self.loss_sum += float(loss_sum)
        self.tokens += int(tokens)
        self.correct += int(correct)
        if hypotheses is not None:
            if labels is None or len(hypotheses) != len(labels):
                raise ValueError(f"hypotheses need labels row for row: got "
                                 f"{None if labels is None else len(labels)} label rows for "
                                 f"{len(hypotheses)} hypotheses")
            self.predictions += self.tokenizer.decode_batch(np.asarray(hypotheses))
            self.references += self.tokenizer.decode_batch(np.asarray(labels))

    def result(self) -> dict[str, float]:
        """{loss, token_accuracy} and, when texts were added, {exact_match, bleu, chrf} and
        one `exact_match_<group>` per group."""
        if self.tokens == 0:
            raise ValueError("the evaluation saw no non-pad label: is the split empty?")
        out = {"loss": self.loss_sum / self.tokens, "token_accuracy": self.correct / self.tokens}
        if self.predictions:
            from tasks.metrics import string_metrics

            out.update(string_metrics(self.predictions, self.references))
            if self.groups is not None:
                out.update(self._group_exact_match())
        return out

    def _group_exact_match(self) -> dict[str, float]:
        """`exact_match_<label>` for every label; the labels of the first tuple position
        (languages) come before those of the second (magnitudes), each in natural order."""
        from tasks.metrics import exact_match

        if len(self.groups) != len(self.predictions):
            raise ValueError(f"groups label {len(self.groups)} examples but {len(self.predictions)}"
                             f" were decoded: evaluate the whole split, unshuffled")
        rows: dict[tuple[int, tuple], list[int]] = {}
        names: dict[tuple[int, tuple], str] = {}
        for i, labels in enumerate(self.groups):
            for position, label in enumerate(labels):
                key = (position, _natural(label))
                rows.setdefault(key, []).append(i)
                names[key] = label
        return {f"exact_match_{names[key]}": exact_match(
                    [self.predictions[i] for i in rows[key]],
                    [self.references[i] for i in rows[key]]) for key in sorted(rows)}


def _natural(label: str) -> tuple:
    """Sort key that puts "2digit" before "10digit"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", label) if part)


def eval_groups(task: Any, split: str) -> list[tuple[str, ...]] | None:
    """The labels of each example of `split` to score separately: its target language
    (`task.target_languages`, multilingual numbers) and its digit count (`task.magnitudes`,
    numbers), as far as the task has them; None when it has neither."""
    columns = []
    for method in ("target_languages", "magnitudes"):
        labels = getattr(task, method, None)
        labels = labels(split) if callable(labels) else None
        if labels is not None:
            columns.append(labels)
    return [tuple(labels) for labels in zip(*columns)] if columns else None
