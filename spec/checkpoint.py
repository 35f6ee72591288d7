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
from .names import param_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


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


def _is_float(dtype: object) -> bool:
    text = str(dtype).replace("torch.", "")
    return text in ("float16", "bfloat16", "float32", "float64")


def save_checkpoint(folder: str | os.PathLike, flat: Mapping[str, object],
                    config: TransformerConfig) -> Path:
    """Write `flat` and `config` to `folder`, atomically.

    Everything is written to a temporary sibling folder, flushed to disk, then swapped in with
    renames, so a crash leaves either the old checkpoint or the new one, never half of one.
    """
    check_params(flat, config)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(_to_numpy(flat[name]), dtype=np.float32)
              for name in param_shapes(config)}
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
    """Read a checkpoint folder back as `(flat, config)`, checking every name and shape."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"checkpoint {folder} is incomplete: {path.name} is missing")
    try:
        config = TransformerConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable {config_path}: {e}") from None
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"unreadable {weights_path}: {e}") from None
    check_params(flat, config)
    return dict(flat), config


def _to_numpy(x: object) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)
