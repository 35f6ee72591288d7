"""Small files every part writes: JSON reports, written atomically (numpy only).

`write_json` writes to a hidden sibling, flushes it to disk and renames it into place, so a
crash leaves the old file or the new one, never half of one; `json_safe` turns numpy scalars
and arrays into Python values and, for strict JSON, non-finite floats into null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(x: Any, *, strict: bool = True) -> Any:
    """Numpy scalars/arrays -> Python; with `strict`, NaN and inf -> None (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v, strict=strict) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, strict=strict) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist(), strict=strict)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) or not strict else None
    return x


def write_json(path: str | os.PathLike, doc: Any, *, strict: bool = True, indent: int = 1
               ) -> Path:
    """Write `doc` as JSON to `path` atomically (parents created); returns the path.

    `strict=True` writes non-finite numbers as null (standard JSON); `strict=False` keeps them
    as Python's NaN / Infinity extensions (the parity report, whose differences can be NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(doc, strict=strict), indent=indent, ensure_ascii=False,
                      allow_nan=not strict) + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
