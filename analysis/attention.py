"""Attention entropy and the pattern class of every head.

Each head's weights `[b, h, q, k]` are summarised by a few masses, averaged over the real query
rows that have at least `MIN_KEYS` keys to choose from (a row with a single key has no choice,
e.g. the decoder's first position under the causal mask).  Every mass is also computed for
uniform attention over the same keys (`*_lift` = mass - uniform mass), so that a short
sequence, where any window covers most keys, is not called "local" by accident.

Classes, tested in this order (the first that holds wins):
  delimiter   most mass on the first key or on delimiter tokens (eos by default);
  positional  most mass at one fixed offset k - q (previous token, self, next token, ...);
  local       most mass near the diagonal (within LOCAL_WINDOW), at no single offset;
  focused     most mass on one or two keys away from the diagonal, i.e. chosen by content;
  global      attention spread over many keys (high entropy);
  mixed       none of the above.
For cross-attention "the diagonal" is the monotonic alignment k = q * (n_k - 1) / (n_q - 1).
"""

from __future__ import annotations

import numpy as np

from .inputs import AttentionMasks, attention_kind, attention_prefixes

# Rows with fewer real keys are skipped: their distribution is forced, not learnt.
MIN_KEYS = 2
# "Near the diagonal": |k - diagonal(q)| <= LOCAL_WINDOW.
LOCAL_WINDOW = 1
# Local: at least this much mass inside the window ...
LOCAL_MIN_MASS = 0.6
# ... and, for every class that uses a mass, at least this much more than uniform attention
# over the same keys would give (so short sequences are not classed by their length alone).
MIN_LIFT = 0.25
# Focused: the FOCUSED_TOP_K largest weights of a row hold at least FOCUSED_MIN_MASS.
FOCUSED_TOP_K = 2
FOCUSED_MIN_MASS = 0.75
# Positional: one offset k - q holds at least this mass, averaged over all counted rows
# (rows where q + offset falls outside the keys count as 0, so a first-token head, whose
# offset changes with q, is never positional).
POSITIONAL_MIN_MASS = 0.5
# Delimiter / first token: the first key plus delimiter-token keys hold at least this mass.
DELIMITER_MIN_MASS = 0.5
# Global: entropy at least this fraction of log(number of keys) (uniform = 1).
GLOBAL_MIN_NORMALIZED_ENTROPY = 0.8

PATTERNS = ("delimiter", "positional", "local", "focused", "global", "mixed")

THRESHOLDS = {
    "min_keys": MIN_KEYS, "local_window": LOCAL_WINDOW, "local_min_mass": LOCAL_MIN_MASS,
    "min_lift": MIN_LIFT, "focused_top_k": FOCUSED_TOP_K,
    "focused_min_mass": FOCUSED_MIN_MASS, "positional_min_mass": POSITIONAL_MIN_MASS,
    "delimiter_min_mass": DELIMITER_MIN_MASS,
    "global_min_normalized_entropy": GLOBAL_MIN_NORMALIZED_ENTROPY,
}


def entropy(weights: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with 0 log 0 = 0.  [..., k] -> [...]."""
    w = np.asarray(weights, dtype=np.float64)
    logw = np.log(np.where(w > 0, w, 1.0))
    return -(w * logw).sum(-1)


def _row_metrics(w: np.ndarray, keys: np.ndarray, delimiter_keys: np.ndarray,
                 n_real_queries: np.ndarray, n_real_keys: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row masses of w [b, h, q, k]; keys bool [b, q, k]; delimiter_keys bool [b, k];
    n_real_queries, n_real_keys [b] (real sequence lengths, for the diagonal).

    Returns arrays [b, h, q] plus `offset_mass` [b, h, q, offsets] for offsets
    -(k-1) .. q-1 (index o <-> offset o - (k - 1)).
    """
    b, h, nq, nk = w.shape
    w = np.where(keys[:, None], w, 0.0)
    n_keys = keys.sum(-1)  # [b, q]
    ent = entropy(w)
    norm_ent = ent / np.log(np.maximum(n_keys, 2))[:, None]
    top = np.sort(w, axis=-1)[..., ::-1][..., :FOCUSED_TOP_K].sum(-1)
    # the diagonal: k = q * (n_k - 1) / (n_q - 1) over the real lengths; k = q for self-attention
    qpos, kpos = np.arange(nq)[None, :, None], np.arange(nk)[None, None, :]
    scale = (n_real_keys - 1) / np.maximum(n_real_queries - 1, 1)  # [b]
    near = np.abs(kpos - qpos * scale[:, None, None]) <= LOCAL_WINDOW + 1e-9  # [b, q, k]
    local = (w * near[:, None]).sum(-1)
    first = np.zeros(nk, bool)
    first[0] = True
    delim = (w * (delimiter_keys | first)[:, None, None, :]).sum(-1)
    offsets = np.arange(-(nk - 1), nq)
    offset_mass = np.zeros((b, h, nq, len(offsets)))
    for o, off in enumerate(offsets):
        rows = np.arange(max(0, -off), min(nq, nk - off))
        offset_mass[:, :, rows, o] = w[:, :, rows, rows + off]
    return {"entropy": ent, "normalized_entropy": norm_ent, "max_weight": w.max(-1),
            "top_mass": top, "local_mass": local, "first_token_mass": w[..., 0],
            "delimiter_mass": delim, "offset_mass": offset_mass}


def head_metrics(weights: np.ndarray, queries: np.ndarray, keys: np.ndarray,
                 delimiter_keys: np.ndarray | None = None) -> list[dict]:
    """Per head, the masses the classes use, averaged over counted rows, and its class.

    weights [b, h, q, k]; queries bool [b, q] (real query rows); keys bool [b, q, k] (keys
    each row may see); delimiter_keys bool [b, k] (delimiter-token keys; first key always
    counts).
    """
    w = np.asarray(weights, dtype=np.float64)
    b, h, nq, nk = w.shape
    if queries.shape != (b, nq) or keys.shape != (b, nq, nk):
        raise ValueError(f"masks do not fit weights of shape {w.shape}: queries "
                         f"{queries.shape}, keys {keys.shape}")
    if delimiter_keys is None:
        delimiter_keys = np.zeros((b, nk), bool)
    rows = queries & (keys.sum(-1) >= MIN_KEYS)  # [b, q]
    n_rows = max(int(rows.sum()), 1)
    uniform = keys / np.maximum(keys.sum(-1, keepdims=True), 1)  # [b, q, k]

    def mean(x: np.ndarray) -> np.ndarray:  # [b, h, q, ...] -> [h, ...] over counted rows
        r = rows.reshape(b, 1, nq, *([1] * (x.ndim - 3)))
        return (x * r).sum((0, 2)) / n_rows

    lengths = (queries.sum(-1), keys.any(1).sum(-1))  # [b], [b]
    got = _row_metrics(w, keys, delimiter_keys, *lengths)
    base = {name: mean(x)[0] for name, x in
            _row_metrics(uniform[:, None], keys, delimiter_keys, *lengths).items()}
    offsets = np.arange(-(nk - 1), nq)
    out = []
    avg = {name: mean(x) for name, x in got.items()}  # name -> [h] ([h, offsets])
    for head in range(h):
        best = int(np.argmax(avg["offset_mass"][head]))
        m = {name: float(avg[name][head]) for name in
             ("entropy", "normalized_entropy", "max_weight", "top_mass", "local_mass",
              "first_token_mass", "delimiter_mass")}
        m["positional_offset"] = int(offsets[best])
        m["positional_mass"] = float(avg["offset_mass"][head, best])
        lifts = {
            "local_lift": m["local_mass"] - float(base["local_mass"]),
            "top_lift": m["top_mass"] - float(base["top_mass"]),
            "delimiter_lift": m["delimiter_mass"] - float(base["delimiter_mass"]),
            "positional_lift": m["positional_mass"] - float(base["offset_mass"][best]),
        }
        m.update(lifts)
        m["head"] = head
        m["pattern"] = classify(m)
        out.append(m)
    return out


def classify(m: dict) -> str:
    """The class of one head from its `head_metrics` entry (see the module docstring)."""
    if m["delimiter_mass"] >= DELIMITER_MIN_MASS and m["delimiter_lift"] >= MIN_LIFT:
        return "delimiter"
    if m["positional_mass"] >= POSITIONAL_MIN_MASS and m["positional_lift"] >= MIN_LIFT:
        return "positional"
    if m["local_mass"] >= LOCAL_MIN_MASS and m["local_lift"] >= MIN_LIFT:
        return "local"
    if m["top_mass"] >= FOCUSED_MIN_MASS and m["top_lift"] >= MIN_LIFT:
        return "focused"
    if m["normalized_entropy"] >= GLOBAL_MIN_NORMALIZED_ENTROPY:
        return "global"
    return "mixed"


def attention_patterns(inter: dict, masks: AttentionMasks, src: np.ndarray | None = None,
                       tgt: np.ndarray | None = None,
                       delimiter_ids: tuple[int, ...] = ()) -> dict[str, dict]:
    """Every captured attention block -> {"kind", "heads": [head_metrics...], "counts"}.

    `delimiter_ids` are token ids that count as delimiters (e.g. eos) when the ids are known.
    """
    out = {}
    for prefix in attention_prefixes(inter):
        if f"{prefix}/weights" not in inter:
            continue
        kind = attention_kind(prefix)
        w = np.asarray(inter[f"{prefix}/weights"])  # [b, h, q, k]
        key_ids = tgt if kind == "decoder/self_attn" else src
        delim = None
        if key_ids is not None and delimiter_ids:
            delim = np.isin(key_ids, delimiter_ids)
        heads = head_metrics(w, masks.queries[kind], masks.keys[kind], delim)
        counts = {p: sum(hd["pattern"] == p for hd in heads) for p in PATTERNS}
        out[prefix] = {"kind": kind, "heads": heads, "counts": counts}
    return out


def mean_entropy(weights: np.ndarray, queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per head, the mean entropy (nats) over real query rows with >= MIN_KEYS keys: [h]."""
    return np.array([m["entropy"] for m in head_metrics(weights, queries, keys)])
