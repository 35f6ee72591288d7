"""The one training loop of the JAX and torch trainers, framework-free; the framework is a
`Backend` that supplies the update, the checkpoints, the evaluation and the capture.

What the loop owns, so every trainer behaves alike:
- the plan: update N takes micro-batches `(N-1)*A .. N*A-1` of `training.data.step_batches`,
  padded to the fixed widths, so a resumed run needs no iterator state;
- logging: one `metrics.jsonl` line per update (fetched from the device every `log_every`
  updates, before each checkpoint and at the end, then flushed; fsynced at checkpoints), the
  non-finite guard on the loss and the gradient norm at each fetch (before a checkpoint is
  written, so the kept ones are good), an eval line every `eval_every` updates and at the end;
- internals: `internals_step_<N>.npz` at step 0 and every `track_internals_every` updates;
- checkpoints: every `checkpoint_every` updates and at the end, the last `keep_checkpoints`
  kept (older ones deleted by the loop, not by the framework);
- resuming (`resume_checkpoint`): the newest checkpoint whose meta matches (`check_resume`,
  else `ResumeError`) and whose state restores; an unreadable one is reported, deleted and the
  previous one tried; no checkpoint at all is reported and the run starts from scratch.  A
  fresh (not resumed) run deletes the checkpoints of an earlier run in the same folder, as it
  starts a fresh `metrics.jsonl`, so a later resume cannot pick up the earlier run's state.
A resumed run that was already finished trains nothing, re-evaluates without logging (its log
has that line) and returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import data as train_data
from .guard import check_finite
from .internals import save_internals
from .logger import MetricsLogger
from .run import ResumeError, check_resume, data_identity

Say = Callable[[str], None]


class CheckpointStore(Protocol):
    """The checkpoints of one run folder, in a framework's own format."""

    directory: Path

    def checkpoints(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON meta saved with `step` (`model_config`, `train_config`, `data`, `step`)."""

    def restore(self, step: int) -> None:
        """Load `step` into the live training state; raises if the files are unreadable."""

    def delete(self, step: int) -> None:
        """Remove checkpoint `step`."""


class Backend(CheckpointStore, Protocol):
    """What a framework supplies to `run_loop`.  `checks_grad_norm`: False where a non-finite
    gradient norm is expected and handled (fp16's GradScaler skips such an update)."""

    checks_grad_norm: bool

    def step(self, micro_batches: Sequence[Mapping[str, np.ndarray]]) -> Any:
        """One optimizer update on `grad_accum_steps` padded micro-batches `[b, len]`; returns
        its metrics (`loss`, `grad_norm`, `learning_rate`, `token_accuracy`), maybe still on
        the device."""

    def fetch(self, metrics: Sequence[Any]) -> list[dict[str, float]]:
        """Some steps' metrics as Python floats (one device round trip for all)."""

    def evaluate(self) -> dict[str, float]:
        """One evaluation pass of the current weights (`training.eval_pass.evaluate_split`)."""

    def capture(self, probe: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical intermediates of a deterministic forward on the probe batch."""

    def save(self, step: int, meta: dict[str, Any]) -> None:
        """Checkpoint the live state as `step`, with `meta` (atomically: whole or absent)."""

    def finish(self) -> None:
        """Wait until every started save is on disk."""


@dataclasses.dataclass
class LoopResult:
    """`history`: this process's per-step records; `start`: the step resumed from (0: fresh);
    `steps`: updates applied in all; `eval_metrics`: the last evaluation."""

    history: list[dict[str, float]]
    eval_metrics: dict[str, float]
    start: int
    steps: int


def say(message: str) -> None:
    print(message, flush=True)


def resume_checkpoint(store: CheckpointStore, model_config: Any, train_config: Any,
                      data: Mapping[str, Any] | None, report: Say = say
                      ) -> tuple[int, dict[str, Any]] | None:
    """Restore the newest good checkpoint of `store`: `(step, meta)`, or None (with a note)
    when there is none.  A checkpoint whose meta or state cannot be read is reported, skipped
    for the previous one and, once one restores, deleted (the resumed run writes its step
    again).  A readable checkpoint of another model, optimisation or data raises
    `ResumeError` (not skipped: resuming from an older one would not help)."""
    steps = store.checkpoints()
    if not steps:
        report(f"resume: nothing to resume in {store.directory} (no checkpoint): training "
               f"from scratch")
        return None
    bad: list[int] = []
    for step in reversed(steps):
        try:
            meta = store.read_meta(step)
        except Exception as e:  # noqa: BLE001 (any unreadable file: say why, try the previous)
            bad.append(step)
            report(_unreadable(store, step, e, steps, bad))
            continue
        check_resume(meta, model_config, train_config, data)
        try:
            store.restore(step)
        except Exception as e:  # noqa: BLE001
            bad.append(step)
            report(_unreadable(store, step, e, steps, bad))
            continue
        for broken in bad:
            store.delete(broken)
        report(f"resume: continuing from the checkpoint of step {step} in {store.directory}")
        return step, meta
    raise ResumeError(f"cannot resume: no checkpoint in {store.directory} is readable (steps "
                      f"{steps}); start a new --output_dir or delete the broken checkpoints")


def prepare_checkpoints(store: CheckpointStore, resume: bool, model_config: Any,
                        train_config: Any, data: Mapping[str, Any] | None,
                        report: Say = say) -> int:
    """The step a run starts from: `resume_checkpoint`'s (0 when there is none), or 0 for a
    fresh run, which first deletes (and says so) the checkpoints an earlier run left there."""
    if resume:
        found = resume_checkpoint(store, model_config, train_config, data, report)
        return 0 if found is None else found[0]
    stale = store.checkpoints()
    if stale:
        report(f"a new run in {store.directory.parent}: deleting the checkpoints of an earlier "
               f"run there (steps {stale}); pass --resume to continue it instead")
        for step in stale:
            store.delete(step)
    return 0


def _unreadable(store: CheckpointStore, step: int, error: BaseException, steps: list[int],
                bad: list[int]) -> str:
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    before = [s for s in steps if s < step]
    then = f"falling back to step {before[-1]}" if before else "no earlier checkpoint"
    return (f"resume: the checkpoint of step {step} in {store.directory} is unreadable "
            f"({type(error).__name__}: {reason}); {then}")


def log_eval(logger: MetricsLogger, step: int, metrics: Mapping[str, float]) -> None:
    """An eval line in `metrics.jsonl` and one printed `step N: name value, ...` line."""
    logger.log(step, metrics, split="eval")
    logger.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def probe_inputs(probe: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The probe's token arrays under the names of `internals_step_<N>.npz`'s `inputs/`."""
    return {"src": probe["src"], "tgt": probe["tgt_in"], "labels": probe["labels"]}


def run_loop(backend: Backend, plan: train_data.RunPlan, *, task: Any, model_config: Any,
             train_config: Any, output_dir: str | Path, probe: Mapping[str, np.ndarray],
             train_split: str = "train", resume: bool = False, log_dir: str | Path | None = None,
             primary: bool = True, tensorboard: bool = False, wandb: bool = False,
             wandb_project: str | None = None, progress: bool = True) -> LoopResult:
    """Train `backend` over `plan` as the module docstring says; returns a `LoopResult`.

    `output_dir` receives the internals; `log_dir` (default `output_dir`) `metrics.jsonl`.
    `primary=False` (a secondary process of a multi-host run) captures no internals and logs
    to no external sink."""
    output_dir = Path(output_dir)
    tc = train_config
    data = data_identity(task)
    start = prepare_checkpoints(backend, resume, model_config, tc, data)
    last_saved = start or None
    kept = backend.checkpoints()
    keep = max(tc.keep_checkpoints, 1)
    meta = {"model_config": model_config.to_dict(), "train_config": tc.to_dict(), "data": data}
    history: list[dict[str, float]] = []
    pending: list[tuple[int, Any]] = []
    logger = MetricsLogger(log_dir or output_dir, total_steps=plan.total,
                           resume_step=start if resume else None,
                           tensorboard=tensorboard and primary, wandb=wandb and primary,
                           wandb_project=wandb_project,
                           run_config={**meta["model_config"], **meta["train_config"]},
                           progress=progress and primary)

    def flush(sync: bool = False) -> None:
        """Fetch the pending metrics, log them, stop at the first non-finite value."""
        steps = [step for step, _ in pending]
        fetched = backend.fetch([metrics for _, metrics in pending]) if pending else []
        pending.clear()
        for step, record in zip(steps, fetched):
            logger.log(step, record)
            history.append({"step": step, **record})
            check_finite([(step, record["loss"])], last_saved)
            if backend.checks_grad_norm and "grad_norm" in record:
                # NaN gradients with a finite loss still poison the weights of this update
                check_finite([(step, record["grad_norm"])], last_saved, "gradient norm")
        if fetched:
            logger.advance(len(fetched), {"loss": fetched[-1]["loss"]})
        logger.flush(sync=sync)

    def save(step: int) -> None:
        backend.save(step, {**meta, "step": step})
        if step not in kept:
            kept.append(step)
        while len(kept) > keep:
            backend.delete(kept.pop(0))

    def track(step: int) -> None:
        if primary:
            save_internals(output_dir, step, backend.capture(probe), probe_inputs(probe))

    eval_metrics: dict[str, float] = {}
    try:
        if tc.track_internals_every and start == 0:
            track(0)
        stream = train_data.step_batches(task, train_split, plan.rows, tc.grad_accum_steps,
                                         tc.seed, plan.per_epoch, start)
        for step, micro in stream:
            if step > plan.total:
                break
            fixed = [train_data.pad_batch(b, plan.rows, plan.src_len, plan.tgt_len,
                                          model_config.pad_id) for b in micro]
            pending.append((step, backend.step(fixed)))
            last = step == plan.total
            if step % max(tc.log_every, 1) == 0 or last:
                flush()
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 or last:
                flush(sync=True)  # the log on disk covers every step the checkpoint has
                save(step)
                last_saved = step
            if tc.track_internals_every and step % tc.track_internals_every == 0:
                track(step)
            if tc.eval_every and step % tc.eval_every == 0 and not last:
                eval_metrics = backend.evaluate()
                log_eval(logger, step, eval_metrics)
        flush()
        eval_metrics = backend.evaluate()
        if start < plan.total:  # else: a finished run resumed, whose log has this line
            log_eval(logger, plan.total, eval_metrics)
        backend.finish()
    finally:
        logger.close()
    return LoopResult(history, eval_metrics, start, max(start, plan.total))
