"""The JAX training loss: label-smoothed cross-entropy over the non-pad labels, one definition
for the train step, the evaluation step, the analysis adapter and the parity runners.

Semantics are `spec.label_smoothed_cross_entropy`'s (optax `smooth_labels`): target
`(1 - eps) * onehot + eps / v`, mean over the labels that are not `pad_id`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, pad_id: int,
                           smoothing: float) -> tuple[jax.Array, jax.Array]:
    """`[b, t, v]` logits, `[b, t]` labels -> (sum of per-token losses, non-pad count).

    The cross-entropy against `(1 - eps) * onehot + eps / v` is `(1 - eps) * nll + eps *
    mean_v(-log p)`: written that way, with optax's integer-label cross-entropy, no `[b, t, v]`
    target array is built (measurably faster on CPU at vocabulary 8000).  Pad labels weigh 0:
    the mean is `sum / max(count, 1)`, as in `spec.label_smoothed_cross_entropy`.
    """
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [b, t]
    uniform = -jax.nn.log_softmax(logits).mean(-1)                       # [b, t]
    per_token = (1.0 - smoothing) * nll + smoothing * uniform             # [b, t]
    keep = (labels != pad_id).astype(jnp.float32)
    return (per_token * keep).sum(), keep.sum()


def loss_and_counts(logits: jax.Array, labels: jax.Array, pad_id: int, smoothing: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed smoothed loss, non-pad count, argmax hits on the non-pad labels)."""
    total, count = smoothed_cross_entropy(logits, labels, pad_id, smoothing)
    hits = (logits.argmax(-1) == labels) & (labels != pad_id)                 # [b, t]
    return total, count, hits.sum()
