"""The one measure of agreement between two arrays (docs/architecture.md "Parity").

`max|a - ref| / max(1, max|ref|)`: an absolute difference for values near or below 1, a
relative one for large values, so one float32 tolerance serves logits, weights and gradients.
The parity suite, the analysis diffs and the tests all use this function.
"""

from __future__ import annotations

import numpy as np


def normalised_diff(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |a - ref|, max |a - ref| / max(1, max |ref|)), computed in float64."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    max_abs = float(np.max(np.abs(a - ref)))
    scale = max(1.0, float(np.max(np.abs(ref))))
    return max_abs, max_abs / scale
