"""Checks and fixed inputs every trainer needs around its loop, framework-free.

`check_task` (the data fits the model), `check_resume` (a resumed run trains the same model the
same way), `probe_batch` (the fixed batch whose internals are captured during training) and
`save_tokenizers` (the tokenizer beside the exported weights, so any implementation can decode).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spec import TrainConfig, TransformerConfig

from .data import pad_batch

# Run length (and with it the cool-down) and bookkeeping may change on resume; the rest of the
# optimisation may not.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "cooldown_steps", "log_every",
                               "eval_every", "checkpoint_every", "keep_checkpoints",
                               "track_internals_every"})


def check_task(task: Any, config: TransformerConfig) -> None:
    """The task's vocabularies must fit the model's (ValueError naming the side)."""
    for side in ("src", "tgt"):
        have = getattr(task, f"{side}_vocab_size", None)
        room = getattr(config, f"{side}_vocab_size")
        if have is not None and have > room:
            raise ValueError(f"the task's {side} vocabulary has {have} tokens, more than the "
                             f"model config's {side}_vocab_size={room}: build the config with "
                             f"task.model_config(...)")


def check_resume(saved: Mapping[str, Any], model_config: TransformerConfig,
                 train_config: TrainConfig) -> None:
    """`saved` holds the checkpoint's `model_config` and `train_config` dicts; ValueError
    naming what differs when the resumed run would train another model or another way."""
    if saved.get("model_config") != model_config.to_dict():
        raise ValueError(f"cannot resume: the checkpoint was written for model config "
                         f"{saved.get('model_config')}, not {model_config.to_dict()}")
    before, now = dict(saved.get("train_config", {})), train_config.to_dict()
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
    if differ:
        raise ValueError(f"cannot resume: train config field(s) {differ} differ from the "
                         f"checkpoint's ({ {k: before.get(k) for k in differ} })")


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
