"""Query, key and value statistics per attention block and head, and over training.

For every `{attn}/q`, `{attn}/k`, `{attn}/v` ([b, h, len, k], after projection and the head
split) and every head: the mean and standard deviation of its entries and the mean L2 norm of
its per-token vectors, over the real (non-pad) tokens only.  Over a sequence of captures
(training steps) each statistic becomes a series, summarised by its spread (min, max, std over
the steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .inputs import AttentionMasks, attention_kind, attention_prefixes
from .internals import capture_masks, check_captures

QKV = ("q", "k", "v")
STATISTICS = ("mean", "std", "norm")


def head_statistics(x: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, list[float]]:
    """x [b, h, len, k]; tokens bool [b, len] (real positions) -> {mean, std, norm}: [h] each."""
    x = np.asarray(x, dtype=np.float64)
    b, h, n, _ = x.shape
    if tokens is None:
        tokens = np.ones((b, n), bool)
    sel = x.transpose(1, 0, 2, 3)[:, tokens]  # [h, real tokens, k]
    return {"mean": sel.mean((1, 2)).tolist(), "std": sel.std((1, 2)).tolist(),
            "norm": np.linalg.norm(sel, axis=-1).mean(1).tolist()}


def _token_masks(kind: str, masks: AttentionMasks | None) -> tuple:
    """Real positions of the query side and of the key/value side of one attention kind."""
    if masks is None:
        return None, None
    if kind == "encoder/self_attn":
        return masks.src_real, masks.src_real
    if kind == "decoder/self_attn":
        return masks.tgt_real, masks.tgt_real
    return masks.tgt_real, masks.src_real


def qkv_statistics(inter: dict, masks: AttentionMasks | None = None) -> dict[str, dict]:
    """{attn prefix: {"kind", "q"|"k"|"v": {mean, std, norm: [h]}}} for every captured block."""
    out = {}
    for prefix in attention_prefixes(inter):
        kind = attention_kind(prefix)
        q_real, kv_real = _token_masks(kind, masks)
        entry = {"kind": kind}
        for point in QKV:
            name = f"{prefix}/{point}"
            if name in inter:
                entry[point] = head_statistics(inter[name], q_real if point == "q" else kv_real)
        out[prefix] = entry
    return out


def qkv_evolution(captures: Sequence[tuple[int, dict]], pad_id: int | None = None
                  ) -> dict[str, dict]:
    """Statistics per step over a training run: a list of `(step, {name: array})`.

    -> {prefix: {point: {"steps": [n], stat: [n][h], "spread": {stat: {min, max, std}: [h]}}}}
    Pad positions are left out when `pad_id` is given and each capture carries its token ids
    (`inputs/src`, `inputs/tgt`, see `analysis.internals`); otherwise every position counts.
    """
    series: dict[str, dict] = {}
    for step, inter in check_captures(captures):
        stats = qkv_statistics(inter, capture_masks(inter, pad_id))
        for prefix, entry in stats.items():
            for point in QKV:
                if point not in entry:
                    continue
                s = series.setdefault(prefix, {}).setdefault(
                    point, {"steps": [], **{k: [] for k in STATISTICS}})
                s["steps"].append(int(step))
                for k in STATISTICS:
                    s[k].append(entry[point][k])
    for points in series.values():
        for s in points.values():
            s["spread"] = {k: {"min": np.min(s[k], 0).tolist(), "max": np.max(s[k], 0).tolist(),
                               "std": np.std(s[k], 0).tolist()} for k in STATISTICS}
    return series
