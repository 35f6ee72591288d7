"""Training checkpoints of the plain torch loop: canonical weights + the optimiser's state.

Layout: `<output_dir>/checkpoints/step_<N>/` holds `config.json` and `model.safetensors` (a
`spec.save_checkpoint` folder, so any implementation loads the weights with
`spec.load_checkpoint`) and `trainer_state.pt`: a `torch.save`d dict of plain tensors, numbers
and strings (optimizer, scheduler, grad scaler, RNG states, data position, configs) that
`torch.load(weights_only=True)` reads back.  Each step is assembled in a hidden staging folder
and renamed into place, so a process killed mid-save leaves only whole checkpoints behind.  Which
to keep is `training.loop`'s decision (`delete`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import spec
from spec import TransformerConfig

STATE_FILE = "trainer_state.pt"
_STEP_RE = re.compile(r"^step_(\d+)$")
_STAGING = ".staging-step_"


class Checkpointer:
    """Save, list and restore `step_<N>` folders under `directory`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(_STAGING + "*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)

    def path(self, step: int) -> Path:
        return self.directory / f"step_{int(step)}"

    def all_steps(self) -> list[int]:
        """The steps with a complete checkpoint, ascending."""
        return sorted(int(m.group(1)) for p in self.directory.iterdir()
                      if (m := _STEP_RE.match(p.name)) and (p / STATE_FILE).is_file())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, flat: Mapping[str, Any], config: TransformerConfig,
             state: Mapping[str, Any]) -> Path:
        """Write canonical weights `flat` and the trainer `state` as checkpoint `step`."""
        staging = self.directory / f"{_STAGING}{int(step)}-{os.getpid()}"
        try:
            spec.save_checkpoint(staging, flat, config)
            tmp = staging / f".{STATE_FILE}.tmp"
            with open(tmp, "wb") as f:
                torch.save(dict(state), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, staging / STATE_FILE)
            final = self.path(step)
            if final.exists():  # the same step saved again (e.g. the end of a resumed run)
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def delete(self, step: int) -> None:
        shutil.rmtree(self.path(step), ignore_errors=True)

    def read_state(self, step: int) -> dict[str, Any]:
        """The trainer state of `step` alone (configs, step, optimizer...), not the weights."""
        return torch.load(self.path(step) / STATE_FILE, map_location="cpu", weights_only=True)

    def restore(self, step: int) -> tuple[dict[str, Any], TransformerConfig, dict[str, Any]]:
        """(canonical weights, model config, trainer state) of checkpoint `step`."""
        folder = self.path(step)
        flat, config = spec.load_checkpoint(folder)
        return flat, config, self.read_state(step)
