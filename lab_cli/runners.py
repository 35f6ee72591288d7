"""Train one version with its own trainer, from the run's shared initial weights.

JAX `jax_model.train.train`, PyTorch `torch_model.train.train`, Hugging Face
`hf_bridge.trainer.train`: each gets the canonical initial weights as `params` (ignored when
resuming from a checkpoint).
`--dataloader_num_workers` reaches the HF Trainer's DataLoader; the JAX trainer and the plain
torch loop make their numpy batches in-process.
Every trainer writes `metrics.jsonl`, `internals_step_<N>.npz` and `final/` into its folder.
`--save_steps` / `--save_total_limit` reach every trainer as `TrainConfig.checkpoint_every` /
`keep_checkpoints`; `--resume` as `resume=True`, which continues from the newest good checkpoint
(`training.loop`) and raises `training.ResumeError` when the flags differ from the run's
(`main.py` turns it into a one-line error naming the flags, exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from spec import implementations, load_checkpoint

from .configs import RunSetup


@dataclasses.dataclass
class RunResult:
    """A finished training run: where it wrote, its final weights and metrics."""

    version: str
    run_dir: Path
    final_weights: dict[str, Any]
    eval_metrics: dict[str, float]
    steps: int
    seconds: float


def train(version: str, setup: RunSetup, initial: dict[str, Any], run_dir: Path,
          args: argparse.Namespace) -> RunResult:
    """Run `version`'s trainer into `run_dir`; the final weights are read back from `final/`."""
    start = time.perf_counter()
    common = dict(resume=args.resume, wandb=args.wandb, wandb_project=args.wandb_project,
                  progress=not args.quiet)
    if implementations.canonical_name(version) == "hf":
        common["dataloader_num_workers"] = args.dataloader_num_workers
    result = implementations.trainer(version)(setup.model, setup.train, setup.task, run_dir,
                                              params=initial, **common)
    flat, _ = load_checkpoint(Path(result.final_checkpoint))
    return RunResult(version, Path(run_dir), flat, dict(result.eval_metrics), int(result.steps),
                     time.perf_counter() - start)
