"""Token-input checks shared by every `forward`: bad ids never reach a gather.

JAX's gather silently clamps an out-of-range id and torch's raises deep inside a kernel, so
each entry point calls `check_tokens` first and gets one clear ValueError naming the argument.
"""

from __future__ import annotations

import numpy as np

from .config import TransformerConfig


def to_numpy(x: object) -> np.ndarray:
    """numpy, jax or torch array -> numpy, with no framework import; torch's half precisions
    are widened to float32 (numpy has no bfloat16).  The one such helper of the project."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x)


def check_token_array(name: str, x: object, vocab_size: int, max_len: int) -> np.ndarray:
    """Check one `[b, len]` integer id array; return it as numpy."""
    try:
        arr = to_numpy(x)
    except (ValueError, TypeError) as e:  # ragged nested lists, unconvertible objects
        raise ValueError(f"{name} must be a 2-D [batch, length] array of token ids, got "
                         f"{type(x).__name__} that numpy cannot read as one ({e})") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [batch, length] array of token ids, "
                         f"got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if arr.shape[1] > max_len:
        raise ValueError(f"{name} has length {arr.shape[1]}, over the config's max_len={max_len}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return arr


def check_tokens(src: object, tgt: object | None, config: TransformerConfig
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate `src` [b, s] and `tgt` [b, t] (decoder input, starting with bos)."""
    src_np = check_token_array("src", src, config.src_vocab_size, config.max_len)
    if tgt is None:
        return src_np, None
    tgt_np = check_token_array("tgt", tgt, config.tgt_vocab_size, config.max_len)
    if tgt_np.shape[0] != src_np.shape[0]:
        raise ValueError(f"src and tgt batch sizes differ: src has {src_np.shape[0]} rows, "
                         f"tgt has {tgt_np.shape[0]}")
    return src_np, tgt_np
