"""Token inputs of an analysis: default decoder inputs, labels, masks.

The seed API passes only `input_ids` in places; this module decides what the decoder sees then.

- `target_ids` is the decoder input `tgt` (docs/architecture.md: starts with `bos_id`, right-padded).
  When it is not given, it defaults to the copy task's decoder input: `bos_id` followed by the
  source without its last position, pad where the source is pad (`default_target`), and the
  labels are the source itself.  That needs every source id inside the target vocabulary,
  else a ValueError asks for `target_ids`.
- Labels are `tgt` shifted left with `eos_id` appended at the end of each row's real tokens,
  pads after (docs/interfaces.md); `labels_from_decoder_input` builds them.
- `attention_mask` ([b, s], 1 = real token, 0 = pad) is optional and carries no information
  the model does not already have: every implementation masks source keys equal to `pad_id`.
  It is checked to agree with `src != pad_id` (ValueError otherwise) and, like that, excludes
  pad positions from the statistics.

Masks used by the statistics (`AttentionMasks`): query rows that are real tokens, and, per
row, the keys the model may attend to (source keys that are not pad; causal keys in the
decoder's self-attention).  Axis legend: b batch, s source length, t target length,
q/k query/key length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec import TransformerConfig, check_tokens, to_numpy

# The three kinds of attention block, as `{side}/{sublayer}` of their canonical prefix.
ATTENTION_KINDS = ("encoder/self_attn", "decoder/self_attn", "decoder/cross_attn")


def as_batch(name: str, ids: object) -> np.ndarray:
    """`[len]` or `[b, len]` ids (numpy, jax or torch) -> a `[b, len]` numpy array."""
    arr = to_numpy(ids)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [batch, length] (or [length]) array of token ids, "
                         f"got shape {arr.shape}")
    return arr


def default_target(src: np.ndarray, config: TransformerConfig) -> np.ndarray:
    """The copy task's decoder input `[bos, src[:, :-1]]` (pad under the source's pads), whose
    labels are `src`: for a source ending with eos, exactly `labels_from_decoder_input`."""
    if int(src.max()) >= config.tgt_vocab_size:
        raise ValueError(
            f"target_ids not given and input_ids holds id {int(src.max())}, outside the target "
            f"vocabulary [0, {config.tgt_vocab_size}): the default decoder input copies the "
            f"source, so pass target_ids explicitly")
    bos = np.full((src.shape[0], 1), config.bos_id, dtype=src.dtype)
    shifted = np.concatenate([bos, src[:, :-1]], axis=1)  # [b, s]
    return np.where(src == config.pad_id, config.pad_id, shifted)


def real_lengths(ids: np.ndarray, pad_id: int, first_is_real: bool = False) -> np.ndarray:
    """Per row, the number of tokens before the first pad (`[b]`).

    `first_is_real` counts position 0 always (the decoder's start token may equal `pad_id`,
    as in MarianMT).
    """
    is_pad = ids == pad_id
    if first_is_real:
        is_pad = is_pad.copy()
        is_pad[:, 0] = False
    first_pad = np.where(is_pad.any(1), is_pad.argmax(1), ids.shape[1])
    return first_pad.astype(np.int64)


def labels_from_decoder_input(tgt: np.ndarray, config: TransformerConfig) -> np.ndarray:
    """tgt [b, t] -> labels [b, t]: tgt shifted left, `eos_id` after the real tokens, pads."""
    n = real_lengths(tgt, config.pad_id, first_is_real=True)
    labels = np.full_like(tgt, config.pad_id)
    for row, length in enumerate(n):
        labels[row, : length - 1] = tgt[row, 1:length]
        labels[row, length - 1] = config.eos_id
    return labels


def check_attention_mask(attention_mask: object, src: np.ndarray, pad_id: int) -> None:
    """Raise ValueError unless `attention_mask` equals `src != pad_id`."""
    mask = to_numpy(attention_mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.shape != src.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, expected the shape of "
                         f"input_ids {src.shape}")
    expected = src != pad_id
    if not np.array_equal(mask.astype(bool), expected):
        row, col = np.argwhere(mask.astype(bool) != expected)[0]
        raise ValueError(
            f"attention_mask disagrees with pad_id={pad_id} masking at [{row}, {col}]: mask is "
            f"{mask[row, col]}, input_ids holds {src[row, col]}; the models mask exactly the "
            f"source positions equal to pad_id, so attention_mask must be (input_ids != pad_id)")


def prepare_inputs(config: TransformerConfig, input_ids: object, target_ids: object = None,
                   attention_mask: object = None, labels: object = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Validate and complete the inputs: `(src, tgt, labels, target_source)`.

    `target_source` records where `tgt` came from: "given" or "copy" (`default_target`).
    """
    src = as_batch("input_ids", input_ids)
    source = "given"
    if target_ids is None:
        src, _ = check_tokens(src, None, config)
        tgt, source = default_target(src, config), "copy"
    else:
        tgt = as_batch("target_ids", target_ids)
    src, tgt = check_tokens(src, tgt, config)
    if attention_mask is not None:
        check_attention_mask(attention_mask, src, config.pad_id)
    if labels is None:
        lab = src.copy() if source == "copy" else labels_from_decoder_input(tgt, config)
    else:
        lab = as_batch("labels", labels)
        if lab.shape != tgt.shape:
            raise ValueError(f"labels has shape {lab.shape}, expected the shape of target_ids "
                             f"{tgt.shape}")
    return src, tgt, lab, source


@dataclass(frozen=True)
class AttentionMasks:
    """Which query rows count and which keys each may see, per attention kind.

    `queries[kind]`: bool [b, q]; `keys[kind]`: bool [b, q, k].
    """

    queries: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    src_real: np.ndarray  # bool [b, s]
    tgt_real: np.ndarray  # bool [b, t]


def attention_masks(src: np.ndarray | None, tgt: np.ndarray | None, pad_id: int,
                    batch: int, src_len: int, tgt_len: int) -> AttentionMasks:
    """Masks from the token ids; without ids every position is real (and self is causal)."""
    pos_s, pos_t = np.arange(src_len), np.arange(tgt_len)
    if src is None:
        src_real = np.ones((batch, src_len), bool)
    else:
        src_real = pos_s[None, :] < real_lengths(src, pad_id)[:, None]
    if tgt is None:
        tgt_real = np.ones((batch, tgt_len), bool)
    else:
        tgt_real = pos_t[None, :] < real_lengths(tgt, pad_id, first_is_real=True)[:, None]
    causal = pos_t[None, :] <= pos_t[:, None]  # [q, k]
    queries = {"encoder/self_attn": src_real, "decoder/self_attn": tgt_real,
               "decoder/cross_attn": tgt_real}
    keys = {
        "encoder/self_attn": np.broadcast_to(src_real[:, None, :], (batch, src_len, src_len)),
        "decoder/self_attn": np.broadcast_to(causal[None] & tgt_real[:, None, :],
                                             (batch, tgt_len, tgt_len)),
        "decoder/cross_attn": np.broadcast_to(src_real[:, None, :], (batch, tgt_len, src_len)),
    }
    return AttentionMasks(queries, keys, src_real, tgt_real)


def attention_kind(prefix: str) -> str:
    """`decoder/layer_3/cross_attn` -> `decoder/cross_attn`."""
    parts = prefix.split("/")
    kind = f"{parts[0]}/{parts[-1]}"
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"{prefix!r} is not a canonical attention prefix "
                         f"(expected {{side}}/layer_{{i}}/{{self_attn,cross_attn}})")
    return kind


def attention_prefixes(inter: dict) -> list[str]:
    """Every captured attention block (`{side}/layer_{i}/{self,cross}_attn`), in capture order."""
    seen: dict[str, None] = {}
    for name in inter:
        parts = name.split("/")
        if len(parts) == 4 and parts[2] in ("self_attn", "cross_attn"):
            seen.setdefault("/".join(parts[:3]))
    return list(seen)


def _query_key_lengths(inter: dict, prefix: str) -> tuple[int, int, int] | None:
    """(batch, query length, key length) of one block, from its weights or its q and k."""
    if f"{prefix}/weights" in inter:
        b, _, nq, nk = np.shape(inter[f"{prefix}/weights"])  # [b, h, q, k]
        return b, nq, nk
    if f"{prefix}/q" in inter and f"{prefix}/k" in inter:
        q, k = np.shape(inter[f"{prefix}/q"]), np.shape(inter[f"{prefix}/k"])  # [b, h, len, d]
        return q[0], q[2], k[2]
    return None


def masks_for(inter: dict, src: np.ndarray | None, tgt: np.ndarray | None,
              pad_id: int) -> AttentionMasks:
    """`attention_masks` with the sizes read from the captured attention blocks."""
    batch, src_len, tgt_len = None, None, None
    for prefix in attention_prefixes(inter):
        sizes = _query_key_lengths(inter, prefix)
        if sizes is None:
            continue
        batch, nq, nk = sizes
        kind = attention_kind(prefix)
        if kind == "encoder/self_attn":
            src_len = nk
        elif kind == "decoder/self_attn":
            tgt_len = nk
        else:
            tgt_len, src_len = nq, nk
    if batch is None:
        raise ValueError("the capture holds no attention block ({attn}/weights or q and k)")
    src_len = src_len if src_len is not None else (src.shape[1] if src is not None else 1)
    tgt_len = tgt_len if tgt_len is not None else (tgt.shape[1] if tgt is not None else 1)
    return attention_masks(src, tgt, pad_id, batch, src_len, tgt_len)
