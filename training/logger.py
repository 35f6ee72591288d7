"""Per-step metrics: a JSONL file (always), TensorBoard and wandb (optional), a progress bar.

`metrics.jsonl` holds one JSON object per line, `{"step": N, "split": "train", "loss": ...}`,
one line per optimizer step for `train` and one per evaluation for `eval`.  Non-finite values
are written as JSON's NaN/Infinity extensions (Python's `json` reads them back).  A resumed run
first drops the lines after the step it resumes from, so the file reads like one uninterrupted
run.  TensorBoard goes through tensorboardX (`<output_dir>/tensorboard`); wandb runs offline
unless `WANDB_MODE` says otherwise, writing under `<output_dir>/wandb`.  Each line is flushed
as it is written, so a process killed with SIGKILL leaves every line it logged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike, split: str | None = "train") -> list[dict[str, Any]]:
    """Every record of a metrics JSONL file (only those of `split`, unless it is None)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if split is None or record.get("split") == split:
                    records.append(record)
    return records


class MetricsLogger:
    """Write metrics to every enabled sink.  Use as a context manager, or call `close()`.

    `resume_step`: None starts a fresh `metrics.jsonl`; an integer keeps the lines with
    `step <= resume_step` and appends after them.  `total_steps` sizes the progress bar;
    `progress=False` hides it.
    """

    def __init__(self, output_dir: str | os.PathLike, *, total_steps: int | None = None,
                 resume_step: int | None = None, tensorboard: bool = False,
                 wandb: bool = False, wandb_project: str | None = None,
                 run_config: Mapping[str, Any] | None = None, progress: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_FILE
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = self._open_tensorboard() if tensorboard else None
        self._wandb = self._open_wandb(wandb_project, run_config) if wandb else None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step or 0, unit="step",
                             dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        """Record `metrics` (name -> number) for optimizer step `step`."""
        values = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # line by line: a killed run keeps every line it logged
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, int(step))
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in values.items()}, step=int(step))

    def advance(self, steps: int, postfix: Mapping[str, float] | None = None) -> None:
        """Move the progress bar `steps` forward, showing `postfix` (e.g. the latest loss)."""
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(steps)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def flush(self, sync: bool = False) -> None:
        """Push buffered lines to the OS; `sync=True` also fsyncs `metrics.jsonl` (trainers do
        at each checkpoint, so the log on disk covers every step a checkpoint holds)."""
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _truncate_after(self, resume_step: int) -> None:
        """Keep only the records up to `resume_step`: the resumed run rewrites the rest."""
        if not self.path.exists():
            self.path.write_text("", encoding="utf-8")
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def _open_tensorboard(self):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logging was requested but tensorboardX is not "
                              "installed: pip install tensorboardX") from None
        return SummaryWriter(logdir=str(self.output_dir / "tensorboard"))

    def _open_wandb(self, project: str | None, run_config: Mapping[str, Any] | None):
        try:
            import wandb
        except ImportError:
            raise ImportError("wandb logging was requested (--wandb) but the wandb package is "
                              "not installed: pip install wandb") from None
        mode = os.environ.get("WANDB_MODE", "offline")
        return wandb.init(project=project or "transformer-lab", dir=str(self.output_dir),
                          mode=mode, config=dict(run_config or {}))


def _short(value: float) -> str:
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)
