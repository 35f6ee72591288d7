"""Sinusoidal positions, computed once in numpy and shared by every framework.

Feature pair i of position p has angle p / 10000^(2i/d), computed in float64, cast to float32.
"""

from __future__ import annotations

import numpy as np


def sinusoidal_positions(max_len: int, d_model: int, layout: str = "interleaved") -> np.ndarray:
    """The [max_len, d_model] float32 position table.

    `interleaved` (the paper): feature 2i is sin(angle_i), feature 2i+1 is cos(angle_i).
    `split` (MarianMT): the ceil(d/2) sines first, then the floor(d/2) cosines.  Odd d_model is
    legal in both: the last pair simply has no cosine.
    """
    if layout not in ("interleaved", "split"):
        raise ValueError(f"positional layout {layout!r} is invalid: expected 'interleaved' or 'split'")
    pos = np.arange(max_len, dtype=np.float64)[:, None]               # [p, 1]
    pair = np.arange((d_model + 1) // 2, dtype=np.float64)[None, :]    # [1, ceil(d/2)]
    angle = pos / np.power(10000.0, 2.0 * pair / d_model)             # [p, ceil(d/2)]
    sin, cos = np.sin(angle), np.cos(angle[:, : d_model // 2])
    table = np.empty((max_len, d_model), dtype=np.float64)
    if layout == "interleaved":
        table[:, 0::2], table[:, 1::2] = sin, cos
    else:
        table[:, : sin.shape[1]], table[:, sin.shape[1]:] = sin, cos
    return table.astype(np.float32)
