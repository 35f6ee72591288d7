"""Evaluation metrics, framework-free, shared by every trainer.

String metrics take decoded predictions and references (lists of str); `token_accuracy`
takes id arrays (argmax of the logits against `labels`). BLEU and chrF are sacrebleu's corpus
scores (0..100). BLEU uses `effective_order`, so a corpus without 4-grams (German numbers are
single words) still gets 100 when every prediction is right, instead of 0; for such one-word
targets chrF, or `bleu(..., tokenize="char")`, is the more telling score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from .tokenizer import PAD_ID


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference, in [0, 1]."""
    _check_strings(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def token_accuracy(predictions: object, labels: object, pad_id: int = PAD_ID) -> float:
    """The fraction of non-pad label positions where the predicted id equals the label.

    `predictions` and `labels` are `[b, t]` integer arrays (numpy, or anything np.asarray
    reads); positions where `labels == pad_id` are ignored, as in the loss.
    """
    pred, lab = np.asarray(predictions), np.asarray(labels)
    if pred.shape != lab.shape:
        raise ValueError(f"predictions shape {pred.shape} differs from labels shape {lab.shape}")
    mask = lab != pad_id
    if not mask.any():
        raise ValueError(f"labels hold no token other than pad_id={pad_id}: accuracy is undefined")
    return float((pred == lab)[mask].mean())


def bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (0..100), one reference per prediction."""
    _check_strings(predictions, references)
    metric = BLEU(tokenize=tokenize, effective_order=True)
    return float(metric.corpus_score(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus chrF (0..100): character n-gram F-score, kind to compounds."""
    _check_strings(predictions, references)
    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)


def string_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"exact_match", "bleu", "chrf"} for a trainer's evaluation log."""
    return {"exact_match": exact_match(predictions, references),
            "bleu": bleu(predictions, references),
            "chrf": chrf(predictions, references)}


def _check_strings(predictions: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists of strings, not one string")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("predictions and references are empty: the metric is undefined")
    for name, seq in (("predictions", predictions), ("references", references)):
        for i, x in enumerate(seq):
            if not isinstance(x, str):
                raise ValueError(f"{name}[{i}] must be a string, got {type(x).__name__}: {x!r}")
