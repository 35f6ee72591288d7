"""Checks and fixed inputs every trainer needs around its loop, framework-free.

`check_task` (the data fits the model), `check_resume` (a resumed run trains the same model the
same way on the same data, else `ResumeError`), `probe_batch` (the fixed batch whose internals
are captured during training) and `save_tokenizers` (the tokenizer beside the exported weights, so any implementation can decode).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spec import TrainConfig, TransformerConfig

from .data import pad_batch

# Run length (and with it the cool-down), bookkeeping and gradient checkpointing (memory, not
# numbers) may change on resume; the rest of the optimisation may not.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "cooldown_steps", "log_every",
                               "eval_every", "checkpoint_every", "keep_checkpoints",
                               "track_internals_every", "gradient_checkpointing"})


def check_task(task: Any, config: TransformerConfig) -> None:
    """The task's vocabularies must fit the model's (ValueError naming the side)."""
    for side in ("src", "tgt"):
        have = getattr(task, f"{side}_vocab_size", None)
        room = getattr(config, f"{side}_vocab_size")
        if have is not None and have > room:
            raise ValueError(f"the task's {side} vocabulary has {have} tokens, more than the "
                             f"model config's {side}_vocab_size={room}: build the config with "
                             f"task.model_config(...)")


class ResumeError(ValueError):
    """A resumed run would train another model, another way or on other data (one line naming
    each differing field with the checkpoint's value and this run's)."""


def data_identity(task: Any) -> dict[str, Any] | None:
    """What a resumed run's data must agree on: `task.summary()` (task name as `task`, sizes,
    seed, tokenizer kind and vocabularies, languages, ...); None for a task without one."""
    summary = getattr(task, "summary", None)
    if not callable(summary):
        return None
    data = dict(summary())
    if "name" in data:
        data["task"] = data.pop("name")
    return json.loads(json.dumps(data))  # the JSON form, as a checkpoint's meta reads back


def _differences(before: Mapping[str, Any], now: Mapping[str, Any],
                 skip: frozenset[str] = frozenset()) -> list[str]:
    keys = [k for k in dict.fromkeys([*now, *before]) if k not in skip]
    return [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in keys
            if before.get(k) != now.get(k)]


def check_resume(saved: Mapping[str, Any], model_config: TransformerConfig,
                 train_config: TrainConfig, data: Mapping[str, Any] | None = None) -> None:
    """`saved` holds the checkpoint's `model_config`, `train_config` (and `data`) dicts;
    ResumeError naming every field that differs (checkpoint's value -> this run's) when the
    resumed run would train another model, another way or on other data.  Only
    `RESUMABLE_CHANGES` of the train config may differ."""
    groups = [("model config", saved.get("model_config") or {}, model_config.to_dict(),
               frozenset()),
              ("train config", saved.get("train_config") or {}, train_config.to_dict(),
               RESUMABLE_CHANGES)]
    if data is not None and saved.get("data") is not None:
        groups.append(("data", saved["data"], json.loads(json.dumps(dict(data))), frozenset()))
    parts = []
    for what, before, now, skip in groups:
        differ = _differences(before, now, skip)
        if differ:
            names = [d.split(" ", 1)[0] for d in differ]
            parts.append(f"{what} field(s) {names} differ from the checkpoint's: "
                         + ", ".join(differ))
    if parts:
        raise ResumeError("cannot resume: " + "; ".join(parts)
                          + " (start a new --output_dir, or resume with the run's own settings)")


def probe_batch(task: Any, split: str, size: int, src_len: int, tgt_len: int, pad_id: int,
                seed: int) -> dict[str, np.ndarray]:
    """The first `size` examples of `split`, padded to the training widths: a fixed batch."""
    batch = next(iter(task.batches(split, size, 0, seed, 0)))
    return pad_batch(batch, len(batch["src"]), src_len, tgt_len, pad_id)


def save_tokenizers(task: Any, folder: Path) -> None:
    """Put the tokenizer(s) beside the exported weights, so torch / HF users can decode."""
    if getattr(task, "shared_vocab", False):
        task.tokenizer.save(folder)
    elif hasattr(task, "src_tokenizer"):
        task.src_tokenizer.save(Path(folder) / "src_tokenizer")
        task.tgt_tokenizer.save(Path(folder) / "tgt_tokenizer")
