"""Checkpoint folders: `config.json` + `model.safetensors` (never pickle), written atomically.

The weights are the canonical flat dict (`name -> float32 array`, Dense kernels `[in, out]`),
so a folder written from JAX loads in torch or Hugging Face and the reverse.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .config import TransformerConfig
from .inputs import to_numpy
from .names import param_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What this project writes into a checkpoint folder: the two files above, the tokenizer(s)
# the trainers put beside them (`training.save_tokenizers`) and the torch trainer's state.
# Only a folder holding nothing else is replaced by `save_checkpoint`.
OWN_ENTRIES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json", "src_tokenizer",
                         "tgt_tokenizer", "trainer_state.pt"})


def check_params(flat: Mapping[str, object], config: TransformerConfig) -> None:
    """Raise one ValueError listing every missing, unexpected, mis-shaped or non-float name."""
    expected = param_shapes(config)
    missing = [n for n in expected if n not in flat]
    extra = sorted(n for n in flat if n not in expected)
    wrong_shape, not_float = [], []
    for name, shape in expected.items():
        if name not in flat:
            continue
        value = flat[name]
        got_shape = tuple(getattr(value, "shape", ()))
        if got_shape != shape:
            wrong_shape.append(f"{name}: expected {shape}, got {got_shape}")
        dtype = getattr(value, "dtype", None)
        if dtype is None or not _is_float(dtype):
            not_float.append(f"{name}: dtype {dtype}")
    problems = []
    if missing:
        problems.append(f"missing: {missing}")
    if extra:
        problems.append(f"unexpected: {extra}")
    if wrong_shape:
        problems.append(f"wrong shape: {wrong_shape}")
    if not_float:
        problems.append(f"not floating point: {not_float}")
    if problems:
        raise ValueError("parameters do not match the config: " + "; ".join(problems))


def check_finite_params(flat: Mapping[str, object], where: str) -> None:
    """ValueError naming every parameter holding NaN or inf: such weights are never right."""
    bad = []
    for name, value in flat.items():
        array = to_numpy(value)
        if not np.all(np.isfinite(array)):
            bad.append(f"{name} ({int(np.sum(np.isnan(array)))} NaN, "
                       f"{int(np.sum(np.isinf(array)))} inf of {array.size})")
    if bad:
        raise ValueError(f"{where} holds non-finite weights: {', '.join(bad)}")


def _check_target(folder: Path) -> None:
    """Refuse a target whose loss would destroy what this project did not write."""
    for parent in reversed(folder.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot save a checkpoint to {folder}: {parent} is a file, "
                             f"not a folder")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"cannot save a checkpoint to {folder}: it is a file; a checkpoint "
                         f"is a folder (give a new or a checkpoint folder's path)")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN_ENTRIES)
    if foreign:
        raise ValueError(f"cannot save a checkpoint to {folder}: the folder holds files this "
                         f"project did not write ({foreign[:5]}{' ...' if len(foreign) > 5 else ''}"
                         f"), which replacing it would delete; choose a new or empty folder")


def _is_float(dtype: object) -> bool:
    text = str(dtype).replace("torch.", "")
    return text in ("float16", "bfloat16", "float32", "float64")


def save_checkpoint(folder: str | os.PathLike, flat: Mapping[str, object],
                    config: TransformerConfig) -> Path:
    """Write `flat` and `config` to `folder`, atomically.

    Everything is written to a temporary sibling folder, flushed to disk, then swapped in with
    renames, so a crash leaves either the old checkpoint or the new one, never half of one.
    An existing `folder` is replaced only when it is empty or a checkpoint of ours (entries in
    `OWN_ENTRIES`); a file, or a folder holding anything else, raises ValueError naming it.
    Non-finite weights raise ValueError too: `load_checkpoint` would refuse them.
    """
    check_params(flat, config)
    folder = Path(folder)
    _check_target(folder)
    with np.errstate(over="ignore"):  # a float64 value past float32's range: reported below
        arrays = {name: np.ascontiguousarray(to_numpy(flat[name]), dtype=np.float32)
                  for name in param_shapes(config)}
    check_finite_params(arrays, f"the checkpoint for {folder}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot save a checkpoint to {folder}: {e.strerror}") from None
    from safetensors.numpy import save_file

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_file(arrays, str(tmp / WEIGHTS_FILE), metadata={"format": "transformer-lab"})
        config.to_json(tmp / CONFIG_FILE)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], TransformerConfig]:
    """Read a checkpoint folder back as `(flat, config)`, checking every config field, every
    name and shape, and that every weight is finite."""
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"checkpoint {folder} is a file: expected a folder holding "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"checkpoint {folder} is incomplete: {path.name} is missing")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable {config_path}: {e}") from None
    try:
        config = TransformerConfig.from_dict(data, complete=True)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"unreadable {weights_path}: {e}") from None
    check_params(flat, config)
    check_finite_params(flat, f"checkpoint {weights_path}")
    return dict(flat), config
