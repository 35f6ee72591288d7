"""The training loss, written once in numpy as the reference the frameworks are tested against.

Label-smoothed cross-entropy that ignores pad positions, with torch's `CrossEntropyLoss(
label_smoothing=eps)` / optax `smooth_labels` semantics: the target distribution is
(1 - eps) * onehot + eps / V, and the loss is the mean over non-pad label positions.
"""

from __future__ import annotations

import numpy as np


def label_smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, pad_id: int,
                                 smoothing: float = 0.1) -> float:
    """logits [b, t, v] (float), labels [b, t] (int) -> scalar mean over non-pad labels."""
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))                  # [b, t, v]
    nll = -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # [b, t]
    smooth = -logp.mean(-1)                                              # [b, t]
    per_token = (1.0 - smoothing) * nll + smoothing * smooth
    keep = labels != pad_id
    return float((per_token * keep).sum() / max(keep.sum(), 1))
