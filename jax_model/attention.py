"""Scaled dot-product attention as small pure functions, and the masks it uses.

Axis legend (spec/names.py): b batch, h heads, q query length, k key length, d head dim,
l either length, m d_model.  The functions mirror torch_model/attention.py one for one.
Masks are boolean and broadcast to `[b, h, q, k]`; True means "may attend".  Masked scores are
*replaced* by the dtype's most negative finite value (not added to), so a row whose keys are all
masked softmaxes to exactly uniform weights instead of NaN, and a masked key gets weight 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[b, l, m] -> [b, h, l, d]: head h owns the contiguous features h*d:(h+1)*d."""
    b, l, m = x.shape
    return x.reshape(b, l, num_heads, m // num_heads).transpose(0, 2, 1, 3)  # [b, h, l, d]


def merge_heads(x: jax.Array) -> jax.Array:
    """[b, h, l, d] -> [b, l, m], the inverse of `split_heads`."""
    b, h, l, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, l, h * d)  # [b, l, m]


def padding_mask(key_mask: jax.Array) -> jax.Array:
    """[b, k] True for real tokens -> [b, 1, 1, k]: no query attends to a padded key."""
    return key_mask[:, None, None, :]


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
