"""Evolution inputs: captures saved during training, `internals_step_<N>.npz`.

The file format is the trainers' (`training.internals`, see docs/interfaces.md "Captured
intermediates"): one `.npz` per captured optimizer step N in the run folder, keys = canonical
intermediate names (any subset) with their canonical shapes, float32, plus the probe batch's
token ids under `inputs/src`, `inputs/tgt` (and `inputs/labels`).  The same probe at every step
makes the steps comparable.  The analysis takes a list of `(step, {name: array})` pairs; the
`inputs/*` keys may stay in the dict (every statistic ignores non-canonical names) and, with
the config's `pad_id`, let the statistics leave pad positions out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from training.internals import INPUT_PREFIX, list_internals
from training.internals import load_internals as load_internals_file

from .inputs import AttentionMasks, masks_for

# The attention points the evolution plots and QKV series read (to keep capture files small).
EVOLUTION_POINTS = ("q", "k", "v", "weights")


def select_points(inter: Mapping[str, object], points: Iterable[str] = EVOLUTION_POINTS
                  ) -> dict[str, np.ndarray]:
    """The attention intermediates whose last name part is in `points` (e.g. q, k, v, weights)."""
    points = tuple(points)
    return {name: np.asarray(v) for name, v in inter.items()
            if "_attn/" in name and name.rsplit("/", 1)[1] in points}


def load_captures(folder: str | os.PathLike) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Every `internals_step_<N>.npz` of `folder` as `(N, {name: array})`, sorted by N.

    The probe's token ids stay in each dict under `inputs/src`, `inputs/tgt`, `inputs/labels`.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"internals folder not found: {folder}")
    out = []
    for step, path in list_internals(folder):
        try:
            inter, inputs = load_internals_file(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"unreadable internals file {path}: {e}") from None
        out.append((step, {**inter, **{INPUT_PREFIX + k: v for k, v in inputs.items()}}))
    if not out:
        raise ValueError(f"no internals_step_<N>.npz files in {folder}")
    return out


def check_captures(captures: object) -> list[tuple[int, dict]]:
    """A list of `(step, {name: array})` pairs, sorted by step; ValueError otherwise."""
    if not isinstance(captures, (list, tuple)) or not captures:
        raise ValueError("captures must be a non-empty list of (step, {name: array}) pairs, got "
                         f"{type(captures).__name__}")
    for item in captures:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not isinstance(item[1], Mapping)
                or isinstance(item[0], bool) or not isinstance(item[0], (int, np.integer))):
            raise ValueError(f"captures must hold (step: int, {{name: array}}) pairs, got an item "
                             f"of type {type(item).__name__}")
    return sorted(((int(s), dict(i)) for s, i in captures), key=lambda c: c[0])


def capture_masks(inter: Mapping[str, np.ndarray], pad_id: int | None) -> AttentionMasks | None:
    """Masks from a capture's `inputs/src` and `inputs/tgt`, or None without them or pad_id."""
    src, tgt = inter.get(INPUT_PREFIX + "src"), inter.get(INPUT_PREFIX + "tgt")
    if pad_id is None or src is None or tgt is None:
        return None
    return masks_for(dict(inter), np.asarray(src), np.asarray(tgt), int(pad_id))
