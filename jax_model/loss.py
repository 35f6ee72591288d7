"""The JAX training loss: label-smoothed cross-entropy over the non-pad labels, one definition
for the train step, the evaluation step, the analysis adapter and the parity runners.

Semantics are `spec.label_smoothed_cross_entropy`'s (optax `smooth_labels`): target
`(1 - eps) * onehot + eps / v`, mean over the labels that are not `pad_id`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, pad_id: int,
                           smoothing: float) -> tuple[jax.Array, jax.Array]:
    """`[b, t, v]` logits, `[b, t]` labels -> (sum of per-token losses, non-pad count).

    The target distribution is optax.smooth_labels' `(1 - eps) * onehot + eps / v`, whose
    cross-entropy is `(1 - eps) * (lse - z_label) + eps * (lse - mean_v z)` with
    `lse = logsumexp_v z`: one logsumexp, one gather and one mean over the logits, and no
    `[b, t, v]` log-probabilities or target array (4x faster, value and gradient, than
    optax's integer-label loss plus a separate log-softmax at vocabulary 8000 on CPU:
    benchmarks/RESULTS.md).  Pad labels weigh 0: the mean is `sum / max(count, 1)`, as in
    `spec.label_smoothed_cross_entropy`.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)                                        # [b, t]
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]  # [b, t]
    per_token = lse - (1.0 - smoothing) * label_logit - smoothing * logits.mean(-1)
    keep = (labels != pad_id).astype(jnp.float32)
    return (per_token * keep).sum(), keep.sum()


def loss_and_counts(logits: jax.Array, labels: jax.Array, pad_id: int, smoothing: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed smoothed loss, non-pad count, argmax hits on the non-pad labels)."""
    total, count = smoothed_cross_entropy(logits, labels, pad_id, smoothing)
    hits = (logits.argmax(-1) == labels) & (labels != pad_id)                 # [b, t]
    return total, count, hits.sum()
