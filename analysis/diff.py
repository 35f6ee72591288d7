"""Cross-framework diff: error statistics per intermediate between two captures.

For every name both captures hold: `max_abs` = max|a - b|, `normalized` = max|a - b| /
max(1, max|ref|) (the parity suite's measure, `parity.tolerances.normalised_diff`, docs/architecture.md),
`mean_abs` = mean|a - b|, computed in float64.  Names only one side holds are listed per side; a shape mismatch is reported with
both shapes and no statistics.
"""

from __future__ import annotations

import numpy as np

from spec import to_numpy
from spec.compare import normalised_diff


def error_stats(ref: object, other: object) -> dict[str, float]:
    """{"max_abs", "normalized", "mean_abs", "ref_max_abs"} of two same-shaped arrays."""
    a = np.asarray(to_numpy(ref), dtype=np.float64)
    b = np.asarray(to_numpy(other), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return {"max_abs": 0.0, "normalized": 0.0, "mean_abs": 0.0, "ref_max_abs": 0.0}
    max_abs, normalized = normalised_diff(b, a)
    return {"max_abs": max_abs, "normalized": normalized,
            "mean_abs": float(np.abs(a - b).mean()), "ref_max_abs": float(np.abs(a).max())}


def diff_captures(ref: dict, other: dict, ref_name: str = "jax", other_name: str = "torch",
                  tolerance: float | None = None) -> dict:
    """Compare two `{name: array}` captures (ref's order, then other's extra names).

    -> {"ref", "other", "entries": {name: {"shape", stats... | "shape_ref", "shape_other"}
        [, "ok"]}, "missing": {ref_name: [names only other holds], other_name: [...]},
        "worst": name with the largest normalized error or None}.
    With `tolerance`, each entry gets "ok" = normalized <= tolerance.
    """
    if ref_name == other_name:
        raise ValueError(f"ref_name and other_name must differ, both are {ref_name!r}")
    entries: dict[str, dict] = {}
    for name in ref:
        if name not in other:
            continue
        a, b = to_numpy(ref[name]), to_numpy(other[name])
        if a.shape != b.shape:
            entries[name] = {"shape_ref": list(a.shape), "shape_other": list(b.shape)}
            if tolerance is not None:
                entries[name]["ok"] = False
            continue
        entry = {"shape": list(a.shape), **error_stats(a, b)}
        if tolerance is not None:
            entry["ok"] = bool(entry["normalized"] <= tolerance)
        entries[name] = entry
    scored = [(e["normalized"], n) for n, e in entries.items() if "normalized" in e]
    return {
        "ref": ref_name, "other": other_name, "entries": entries,
        "missing": {ref_name: [n for n in other if n not in ref],
                    other_name: [n for n in ref if n not in other]},
        "worst": max(scored)[1] if scored else None,
    }
