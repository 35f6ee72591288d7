"""Sinusoidal positions, computed once in numpy and shared by every framework.

Two formulas.  "paper": feature pair i of position p has angle p / 10000^(2i/d).  "fairseq"
(FSMT, M2M100, fairseq's `SinusoidalPositionalEmbedding`): angle p * exp(-i ln(10000) / (d//2 - 1)),
i.e. p / 10000^(i/(d//2 - 1)), sines then cosines, a zero last feature when d is odd.  Both are
computed in float64 and cast to float32.
"""

from __future__ import annotations

import numpy as np

FORMULAS = ("paper", "fairseq")


def sinusoidal_positions(max_len: int, d_model: int, layout: str = "interleaved",
                         formula: str = "paper") -> np.ndarray:
    """The [max_len, d_model] float32 position table (row p is position p).

    `interleaved` (the paper): feature 2i is sin(angle_i), feature 2i+1 is cos(angle_i).
    `split` (MarianMT, Pegasus): the ceil(d/2) sines first, then the floor(d/2) cosines.  Odd
    d_model is legal in both: the last pair simply has no cosine.  `formula="fairseq"` needs
    `split` and d_model >= 4: d//2 sines, d//2 cosines, then a zero feature for odd d.
    """
    if layout not in ("interleaved", "split"):
        raise ValueError(f"positional layout {layout!r} is invalid: expected 'interleaved' or 'split'")
    if formula not in FORMULAS:
        raise ValueError(f"sinusoid formula {formula!r} is invalid: expected one of {FORMULAS}")
    pos = np.arange(max_len, dtype=np.float64)[:, None]               # [p, 1]
    if formula == "fairseq":
        return _fairseq(pos, d_model, layout)
    pair = np.arange((d_model + 1) // 2, dtype=np.float64)[None, :]    # [1, ceil(d/2)]
    angle = pos / np.power(10000.0, 2.0 * pair / d_model)             # [p, ceil(d/2)]
    sin, cos = np.sin(angle), np.cos(angle[:, : d_model // 2])
    table = np.empty((max_len, d_model), dtype=np.float64)
    if layout == "interleaved":
        table[:, 0::2], table[:, 1::2] = sin, cos
    else:
        table[:, : sin.shape[1]], table[:, sin.shape[1]:] = sin, cos
    return table.astype(np.float32)


def _fairseq(pos: np.ndarray, d_model: int, layout: str) -> np.ndarray:
    half = d_model // 2
    if layout != "split" or half < 2:
        raise ValueError(f"the fairseq sinusoid needs layout 'split' and d_model >= 4, got "
                         f"layout={layout!r}, d_model={d_model}")
    rate = np.exp(np.arange(half, dtype=np.float64) * -(np.log(10000.0) / (half - 1)))  # [d/2]
    angle = pos * rate[None, :]                                                          # [p, d/2]
    table = np.zeros((pos.shape[0], d_model), dtype=np.float64)
    table[:, :half], table[:, half: 2 * half] = np.sin(angle), np.cos(angle)
    return table.astype(np.float32)


def position_table(config) -> np.ndarray:
    """The config's fixed `[max_len + position_offset, d_model]` table (sinusoidal configs).

    Token j of a sequence reads row j + position_offset; with `zero_pad_positions` a pad token
    reads nothing (its position vector is zero, as fairseq's zeroed padding row gives)."""
    if config.positional_encoding != "sinusoidal":
        raise ValueError(f"config field positional_encoding={config.positional_encoding!r} has "
                         f"no fixed table: its positions are the learned parameter "
                         f"{{side}}/embed/positions")
    return sinusoidal_positions(config.max_len + config.position_offset, config.d_model,
                                config.positional_layout, config.sinusoid_formula)
