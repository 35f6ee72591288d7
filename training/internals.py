"""`internals_step_<N>.npz`: intermediates captured during training, for the evolution plots.

One file per captured optimizer step N, written atomically into the run folder.  Keys are the
canonical intermediate names (`spec.intermediate_shapes`, e.g.
`encoder/layer_0/self_attn/weights`) with their documented shapes; the probe batch they were
computed on is stored beside them under `inputs/src`, `inputs/tgt` (and `inputs/labels` when
given).  Every array is numpy; floats are stored as float32.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

INPUT_PREFIX = "inputs/"
_FILE_RE = re.compile(r"^internals_step_(\d+)\.npz$")


def internals_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"internals_step_{int(step)}.npz"


def save_internals(folder: str | os.PathLike, step: int, inter: Mapping[str, object],
                   inputs: Mapping[str, object] | None = None) -> Path:
    """Write `inter` ({canonical_name: array}) and the probe `inputs` for step `step`.

    `inputs` maps short names (`src`, `tgt` (the decoder input), `labels`) to the token arrays
    the intermediates were computed from; they are stored under `inputs/<name>`.
    """
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if not inter:
        raise ValueError("inter is empty: nothing to save (was capture enabled?)")
    arrays: dict[str, np.ndarray] = {}
    for name, value in inter.items():
        if name.startswith(INPUT_PREFIX):
            raise ValueError(f"intermediate name {name!r} uses the reserved prefix "
                             f"{INPUT_PREFIX!r}; pass probe tokens through `inputs`")
        arrays[name] = _as_numpy(value)
    for name, value in (inputs or {}).items():
        arrays[INPUT_PREFIX + name] = np.asarray(value)
    path = internals_path(folder, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_internals(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read one file back as `(inter, inputs)`; `inputs` keys lose the `inputs/` prefix."""
    with np.load(Path(path)) as data:
        inter = {k: data[k] for k in data.files if not k.startswith(INPUT_PREFIX)}
        inputs = {k[len(INPUT_PREFIX):]: data[k] for k in data.files
                  if k.startswith(INPUT_PREFIX)}
    return inter, inputs


def list_internals(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every `internals_step_<N>.npz` in `folder` as `(N, path)`, sorted by N."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE_RE.match(p.name))]
    return sorted(found)


def _as_numpy(value: object) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().float().cpu().numpy()
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16":
        arr = arr.astype(np.float32)
    return arr
