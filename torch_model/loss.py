"""The training loss of every torch-side model (the plain loop, the HF model and Trainer, the
analysis adapters, the parity runners): one definition, so they cannot drift apart.

Label-smoothed cross-entropy over the non-pad labels, `spec.label_smoothed_cross_entropy`'s
semantics: target `(1 - eps) * onehot + eps / V`, which is torch's
`cross_entropy(label_smoothing=eps, ignore_index=pad_id)`.  Logits are upcast to float32, so a
bf16/fp16 forward still gets a float32 loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum")


def smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int,
                  label_smoothing: float, reduction: str = "mean") -> torch.Tensor:
    """logits `[b, t, v]`, labels `[b, t]` -> the smoothed loss over non-pad labels: their mean
    (`reduction="mean"`, 0/0 gives NaN as torch does) or their sum (`"sum"`, for callers that
    normalise themselves, e.g. by a count summed over DDP ranks)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is unknown: expected one of {REDUCTIONS}")
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=pad_id,
                           label_smoothing=label_smoothing, reduction=reduction)


def loss_and_counts(logits: torch.Tensor, labels: torch.Tensor, pad_id: int,
                    label_smoothing: float, reduction: str = "mean"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits `[b, t, v]`, labels `[b, t]` -> (smoothed loss, non-pad label count, argmax hits
    on them); the counts are computed without gradient."""
    loss = smoothed_loss(logits, labels, pad_id, label_smoothing, reduction)
    with torch.no_grad():
        keep = labels != pad_id                                                     # [b, t]
        hits = ((logits.argmax(-1) == labels) & keep).sum()
    return loss, keep.sum(), hits
