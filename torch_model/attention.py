"""Attention math as small pure functions, and the two masks.

Axis legend (spec/names.py): b batch, h heads, q query length, k key length, d head dim,
l either length, m d_model.  The functions mirror jax_model/attention.py one for one.
Masks are boolean, True where a query may attend; they broadcast to scores `[b, h, q, k]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[b, l, m] -> [b, h, l, d]: head h owns the contiguous features h*d:(h+1)*d."""
    b, l, m = x.shape
    return x.view(b, l, num_heads, m // num_heads).transpose(1, 2)  # [b, h, l, d]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[b, h, l, d] -> [b, l, m], the inverse of `split_heads`."""
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)  # [b, l, m]


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """QK^T / sqrt(d), before any mask: [b, h, q, d], [b, h, k, d] -> [b, h, q, k]."""
    return torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over keys with masked scores *replaced* by the dtype's most negative value.

    Replacing (not adding) makes a row whose keys are all masked exactly uniform, never NaN.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)  # [b, h, q, k]


def weighted_values(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weights @ v: [b, h, q, k], [b, h, k, d] -> [b, h, q, d]."""
    return torch.einsum("bhqk,bhkd->bhqd", weights, v)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
    """`weighted_values(masked_softmax(attention_scores(q, k), mask), v)` by torch's fused
    `scaled_dot_product_attention`: [b, h, q, d], [b, h, k, d] x2 -> [b, h, q, d].

    The mask is given as an additive bias of the dtype's most negative value: in float32
    `score + min` rounds to `min` exactly, so this is the replaced mask of `masked_softmax`
    (an all-masked row stays exactly uniform, never NaN); only the summation order differs.
    """
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~mask, torch.finfo(q.dtype).min)  # broadcasts to [b, h, q, k]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def padding_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """[b, k] True for real tokens -> [b, 1, 1, k]: no query attends to a padded key."""
    return key_mask[:, None, None, :]


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """[1, 1, q, k]: query i (absolute position k_len - q_len + i) sees keys up to itself.

    With a KV cache the queries are the last q_len positions of k_len, so a multi-token first
    step and a one-token later step use the same rule.
    """
    offset = k_len - q_len
    qi = torch.arange(q_len, device=device)[:, None]
    ki = torch.arange(k_len, device=device)[None, :]
    return (ki <= qi + offset)[None, None]  # [1, 1, q, k]
