"""Scaled dot-product attention as small pure functions, and the masks it uses.

Axis legend (every einsum here): b batch, h heads, q query length, k key length, d head dim.
Masks are boolean and broadcast to `[b, h, q, k]`; True means "may attend".  Masked scores are
*replaced* by the dtype's most negative finite value (not added to), so a row whose keys are all
masked softmaxes to exactly uniform weights instead of NaN, and a masked key gets weight 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def padding_mask(tokens: jax.Array, pad_id: int) -> jax.Array:
    """Keys equal to `pad_id` are masked: `[b, k]` ids -> `[b, 1, 1, k]` bool."""
    return (tokens != pad_id)[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
    """Query i sees keys 0..i: `[1, 1, q, k]` bool, lower triangular."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def prefix_mask(index: jax.Array, length: int) -> jax.Array:
    """One decoding step at position `index` sees cache slots 0..index: `[1, 1, 1, k]` bool."""
    return (jnp.arange(length) <= index)[None, None, None, :]


def attention_scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """QK^T / sqrt(d): `[b, h, q, d]`, `[b, h, k, d]` -> `[b, h, q, k]` (no mask yet)."""
    return jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over keys with masked scores replaced by finfo.min: `[b, h, q, k]`."""
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    return jax.nn.softmax(scores, axis=-1)


def weighted_values(weights: jax.Array, v: jax.Array) -> jax.Array:
    """The context: `[b, h, q, k]` weights @ `[b, h, k, d]` values -> `[b, h, q, d]`."""
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
    """softmax(QK^T / sqrt(d)) V without dropout: returns (context `[b,h,q,d]`, weights)."""
    weights = masked_softmax(attention_scores(q, k), mask)
    return weighted_values(weights, v), weights
