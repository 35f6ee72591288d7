"""The parity batch: padded rows of different lengths, source and target lengths that differ."""

from __future__ import annotations

import numpy as np

from spec import TransformerConfig


def make_batch(config: TransformerConfig, seed: int = 0, batch: int = 3, src_len: int = 7,
               tgt_len: int = 5, all_pad_row: bool = False) -> dict[str, np.ndarray]:
    """`{"src": [b, s], "tgt_in": [b, t], "labels": [b, t]}` int32, right-padded.

    Row 0 is full length; the others are shorter, so every padding path is exercised.  Sources
    end with eos; `tgt_in` starts with bos and `labels` is it shifted left, ending with eos.
    With `all_pad_row`, the last source row is padding only (its attention must be uniform).
    """
    for name, value in (("batch", batch), ("src_len", src_len), ("tgt_len", tgt_len)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"parity {name}={value!r} is invalid: expected an integer >= 2")
    for name, value in (("src_len", src_len), ("tgt_len", tgt_len)):
        if value > config.max_len:
            raise ValueError(f"parity {name}={value} is over the config's max_len={config.max_len}")
    rng = np.random.default_rng(seed)
    special = {config.pad_id, config.bos_id, config.eos_id}
    vocab_lo = max(special) + 1
    if vocab_lo >= min(config.src_vocab_size, config.tgt_vocab_size):
        raise ValueError("the vocabulary holds only special tokens; parity needs ordinary ids")
    src = np.full((batch, src_len), config.pad_id, np.int32)
    tgt = np.full((batch, tgt_len + 1), config.pad_id, np.int32)
    for row in range(batch):
        s = src_len if row == 0 else int(rng.integers(2, src_len + 1))
        t = tgt_len if row == 0 else int(rng.integers(1, tgt_len + 1))
        src[row, : s - 1] = rng.integers(vocab_lo, config.src_vocab_size, s - 1)
        src[row, s - 1] = config.eos_id
        tgt[row, 0] = config.bos_id
        tgt[row, 1:t] = rng.integers(vocab_lo, config.tgt_vocab_size, t - 1)
        tgt[row, t] = config.eos_id
    if all_pad_row and batch > 1:
        src[-1] = config.pad_id
    tgt_in, labels = tgt[:, :-1].copy(), tgt[:, 1:].copy()
    tgt_in[labels == config.pad_id] = config.pad_id  # the decoder input never holds eos
    return {"src": src, "tgt_in": tgt_in, "labels": labels}
