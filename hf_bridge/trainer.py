"""Training the Hugging Face model with a `transformers.Trainer` that optimises as JAX does.

`TransformerLabTrainer` (a `Trainer` subclass) brings what the stock Trainer lacks for this
model: Adam(b1, b2, eps) from `spec.TrainConfig` under the `spec.learning_rate` schedule
(`create_optimizer` / `create_scheduler`); the JAX loss semantics (each micro-batch's loss is its
mean over non-pad labels, label smoothed, and the update averages the micro-batches, also under
DDP, where the non-pad count is summed over ranks first); per-step `token_accuracy`; a stop at
the first non-finite loss naming the step; and evaluation by `generate()` (exact match, BLEU).
The data is the plan every trainer walks (`training.data`): micro-batch i of the run, padded to
fixed widths, each DDP rank taking its block of rows, read by a plain `DataLoader` with
`dataloader_num_workers` workers.

Callbacks write what the other trainers write: `metrics.jsonl` (+ TensorBoard) through
`training.MetricsLogger`, and `internals_step_<N>.npz` from the model's taps
(`torch_model.capture` on the HF model, which runs the mirror's modules) on a fixed probe batch.
Mixed precision (`bf16` / `fp16`), gradient accumulation, `torch.compile`, gradient
checkpointing, wandb (`report_to`) and DDP (`torchrun`, gloo on CPU) are the Trainer's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME
from transformers.utils import logging as hf_logging

import spec
import torch_model
import training
from spec import TrainConfig, TransformerConfig
from spec.files import write_json
from torch_model.api import mode
from torch_model.loss import loss_and_counts
from torch_model.train import (
    TrainResult,
    amp_dtype,
    make_adam,
    make_scheduler,
)
from training import data as train_data
from training.eval_pass import evaluate_split
from training.loop import log_eval, prepare_checkpoints, probe_inputs

from .modeling import IGNORE_INDEX, TransformerLabForConditionalGeneration

META_FILE = "transformer_lab_meta.json"  # model and train configs, beside each HF checkpoint
# transformers 5 renamed TrainingArguments.gradient_checkpointing -> activation_checkpointing
CHECKPOINTING_FIELD = ("activation_checkpointing"
                       if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                       else "gradient_checkpointing")


class PlanDataset(Dataset):
    """Item i is micro-batch i of the training plan (epoch i // per_epoch, batch
    i % per_epoch of `task.batches`), padded to `[rows, len]`, of which this rank keeps rows
    `rank * rows / world ...`: HF's input names, int64 tensors."""

    def __init__(self, task: Any, split: str, rows: int, seed: int, per_epoch: int, length: int,
                 src_len: int, tgt_len: int, pad_id: int, rank: int = 0, world: int = 1) -> None:
        if rows % world:
            raise ValueError(f"batch_size={rows} does not split over {world} processes: expected "
                             f"a multiple of the world size")
        self.task, self.split, self.rows, self.seed = task, split, rows, seed
        self.per_epoch, self.length = per_epoch, length
        self.src_len, self.tgt_len, self.pad_id = src_len, tgt_len, pad_id
        part = rows // world
        self.part = slice(rank * part, (rank + 1) * part)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, offset = divmod(int(index), self.per_epoch)
        batch = next(self.task.batches(self.split, self.rows, epoch, self.seed, offset))
        fixed = train_data.pad_batch(batch, self.rows, self.src_len, self.tgt_len, self.pad_id)
        return hf_inputs({k: v[self.part] for k, v in fixed.items()})


def hf_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`src`, `tgt_in`, `labels` -> HF's `input_ids`, `decoder_input_ids`, `labels` (int64)."""
    names = {"src": "input_ids", "tgt_in": "decoder_input_ids", "labels": "labels"}
    return {names[k]: torch.as_tensor(np.asarray(batch[k]), dtype=torch.int64) for k in names}


def _only(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The collate function of a loader whose every batch is one prepared micro-batch."""
    return items[0]


class TransformerLabTrainer(Trainer):
    """A Trainer for `TransformerLabForConditionalGeneration` that trains as `jax_model.train`.

    `train_config` supplies the optimiser, schedule and label smoothing; `evaluation` (an
    `Evaluation`) replaces `evaluate()` by teacher-forced loss and token accuracy plus greedy
    `generate()` -> exact match, BLEU and chrF over a task split.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns per-micro-batch means

    def __init__(self, *args: Any, train_config: TrainConfig,
                 evaluation: Evaluation | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_config = train_config
        self.evaluation = evaluation
        # our forward takes no `num_items_in_batch`; the loss is normalised in compute_loss
        self.model_accepts_loss_kwargs = False
        self.checkpoints = CheckpointCallback(self)
        self.add_callback(self.checkpoints)
        self._hits: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None

    # -- optimisation ------------------------------------------------------------------------
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = make_adam((model or self.model).parameters(), self.train_config)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None
                         ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is None:
            self.lr_scheduler = make_scheduler(optimizer or self.optimizer,
                                               self.model.spec_config, self.train_config)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def get_train_dataloader(self) -> DataLoader:
        """The plan in order, one prepared micro-batch per item (already this rank's rows), so
        it is not handed to accelerate for re-sharding."""
        if self.train_dataset is None:
            raise ValueError("TransformerLabTrainer: training requires a train_dataset")
        workers = self.args.dataloader_num_workers
        # Forked workers can deadlock once JAX's threads run in this process (`main.py
        # --version all`, a test session): start them fresh then.
        context = "spawn" if workers > 0 and "jax" in sys.modules else None
        persistent = workers > 0 and self.args.dataloader_persistent_workers
        return DataLoader(self.train_dataset, batch_size=1, shuffle=False, collate_fn=_only,
                          num_workers=workers, pin_memory=self.args.device.type == "cuda",
                          persistent_workers=persistent, multiprocessing_context=context)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False, num_items_in_batch: Any = None
                     ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The micro-batch's mean label-smoothed loss over its non-pad labels.

        Under DDP each rank holds some rows: its loss is its summed loss over the non-pad count
        of all ranks, times the world size, so DDP's gradient average is the full micro-batch's
        mean (a rank whose rows are all padding contributes 0, not NaN).
        """
        cfg = self.model.config
        labels = inputs["labels"].masked_fill(inputs["labels"] == IGNORE_INDEX, cfg.pad_id)
        outputs = model(input_ids=inputs["input_ids"],
                        decoder_input_ids=inputs["decoder_input_ids"], use_cache=False)
        logits = outputs.logits                                                    # [b, t, v]
        total, tokens, hits = loss_and_counts(logits, labels, cfg.pad_id,
                                              self.train_config.label_smoothing, "sum")
        with torch.no_grad():
            counts = torch.stack([hits, tokens])
            if model.training:  # the next logged step's token accuracy
                self._hits = counts[0] if self._hits is None else self._hits + counts[0]
                self._tokens = counts[1] if self._tokens is None else self._tokens + counts[1]
            world = self.accelerator.num_processes
            count = self.accelerator.reduce(counts[1].clone(), "sum") if world > 1 else counts[1]
        loss = total / torch.clamp(count, min=1) * world
        return (loss, outputs) if return_outputs else loss

    # -- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds `token_accuracy` to each training step's record; stops at a non-finite loss
        (after logging it), keeping the checkpoints written before it."""
        is_step = "loss" in logs and "learning_rate" in logs
        if is_step and self._tokens is not None:
            counts = torch.stack([self._hits, self._tokens])
            if self.accelerator.num_processes > 1:
                counts = self.accelerator.reduce(counts, "sum")
            logs["token_accuracy"] = float(counts[0]) / max(float(counts[1]), 1.0)
            self._hits = self._tokens = None
        super().log(logs, start_time)
        if is_step:
            training.check_finite([(self.state.global_step, logs["loss"])],
                                  self.checkpoints.last_saved)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.evaluation is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = {f"{metric_key_prefix}_{k}": v
                   for k, v in self.evaluation.run(self.model).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics


class Evaluation:
    """One pass over a task split: teacher-forced loss (the model's own, `labels=`, smoothed
    by its config's `label_smoothing`) and token accuracy, and greedy `generate()` decoded with
    the task's tokenizer: exact match, BLEU, chrF (`training.EvalAccumulator`)."""

    def __init__(self, task: Any, split: str, shape: tuple[int, int, int], seed: int) -> None:
        self.task, self.split, self.shape, self.seed = task, split, shape, seed

    @torch.no_grad()
    def run(self, model: TransformerLabForConditionalGeneration) -> dict[str, float]:
        pad_id = model.config.pad_id
        device = next(model.parameters()).device

        def score(fixed: Mapping[str, np.ndarray], real: int):
            inputs = {k: v.to(device) for k, v in hf_inputs(fixed).items()}
            out = model(**inputs, use_cache=False)
            keep = inputs["labels"] != pad_id
            hits = ((out.logits.argmax(-1) == inputs["labels"]) & keep).sum()
            count = int(keep.sum())
            generated = model.generate(input_ids=inputs["input_ids"][:real],
                                       max_new_tokens=self.shape[2], num_beams=1,
                                       do_sample=False)                  # [real, 1 + n]
            return float(out.loss) * count, count, int(hits), generated[:, 1:].cpu().numpy()

        with mode(model, False):
            return evaluate_split(self.task, self.split, self.shape, self.seed, pad_id, score)


class CheckpointCallback(TrainerCallback):
    """Saves at the last step too (as the other trainers do), records the last saved step, and
    writes the model and train configs beside each checkpoint for `check_resume`."""

    def __init__(self, trainer: TransformerLabTrainer) -> None:
        self.trainer = trainer
        self.last_saved: int | None = None
        self.data: dict[str, Any] | None = None  # training.data_identity of the task

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_saved = state.global_step
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            meta = {"model_config": self.trainer.model.spec_config.to_dict(),
                    "train_config": self.trainer.train_config.to_dict(), "data": self.data,
                    "step": state.global_step}
            write_json(folder / META_FILE, meta)
        return control


class MetricsCallback(TrainerCallback):
    """Each step's `loss`, `grad_norm`, `learning_rate`, `token_accuracy` and each evaluation
    into `history` and (on the main process) `metrics.jsonl` via `training.MetricsLogger`."""

    STEP_KEYS = ("loss", "grad_norm", "learning_rate", "token_accuracy")

    def __init__(self, logger: training.MetricsLogger | None) -> None:
        self.logger = logger
        self.history: list[dict[str, float]] = []
        self.eval_metrics: dict[str, float] = {}
        self.eval_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        if "loss" in logs and "learning_rate" in logs:
            record = {k: float(logs[k]) for k in self.STEP_KEYS if k in logs}
            self.history.append({"step": step, **record})
            if self.logger is not None:
                self.logger.log(step, record)
                self.logger.advance(1, {"loss": record["loss"]})
        elif any(k.startswith("eval_") for k in logs):
            self.eval_metrics = {k[len("eval_"):]: float(v) for k, v in logs.items()
                                 if k.startswith("eval_")}
            self.eval_step = step
            if self.logger is not None:
                log_eval(self.logger, step, self.eval_metrics)
        if self.logger is not None:
            self.logger.flush()
        return control


class InternalsCallback(TrainerCallback):
    """`internals_step_<N>.npz` every `every` steps (and at step 0): the canonical taps of a
    deterministic forward of the HF model on the probe batch, via `torch_model.capture`."""

    def __init__(self, output_dir: str | os.PathLike, probe: Mapping[str, np.ndarray],
                 every: int) -> None:
        self.output_dir, self.probe, self.every = Path(output_dir), probe, every

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step == 0 and state.is_world_process_zero:
            self.save(0, model)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.is_world_process_zero:
            self.save(state.global_step, model)
        return control

    def save(self, step: int, model: TransformerLabForConditionalGeneration) -> None:
        training.save_internals(self.output_dir, step, capture_internals(model, self.probe),
                                probe_inputs(self.probe))


@torch.no_grad()
def capture_internals(model: TransformerLabForConditionalGeneration,
                      probe: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every canonical intermediate of a float32, dropout-free forward on `probe`."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in hf_inputs(probe).items()}
    with mode(model, False), torch_model.capture(model) as inter:
        model(input_ids=inputs["input_ids"], decoder_input_ids=inputs["decoder_input_ids"],
              use_cache=False)
    return dict(inter)


class HFCheckpoints:
    """The Trainer's `checkpoint-<N>` folders as a `training.loop.CheckpointStore`, so resuming
    picks, checks and falls back exactly as the JAX and torch trainers do.  `restore` only
    proves the files readable (weights, optimizer, trainer state); the Trainer loads them."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path(self, step: int) -> Path:
        return self.directory / f"{PREFIX_CHECKPOINT_DIR}-{int(step)}"

    def checkpoints(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", p.name)
                 for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found
                      if m and (self.directory / m.group(0) / META_FILE).is_file())

    def read_meta(self, step: int) -> dict[str, Any]:
        return json.loads((self.path(step) / META_FILE).read_text(encoding="utf-8"))

    def restore(self, step: int) -> None:
        folder = self.path(step)
        load_file(folder / SAFE_WEIGHTS_NAME)
        json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        torch.load(folder / OPTIMIZER_NAME, map_location="cpu", weights_only=True)

    def delete(self, step: int) -> None:
        shutil.rmtree(self.path(step), ignore_errors=True)


def training_arguments(output_dir: str | os.PathLike, train: TrainConfig, total_steps: int, *,
                       wandb: bool = False, dataloader_num_workers: int = 0,
                       gradient_checkpointing: bool = False, compile: bool = False,
                       use_cpu: bool | None = None) -> TrainingArguments:
    """`TrainingArguments` equivalent to `train` (checkpoints in `output_dir/checkpoints`).

    One logged record per optimizer step (`logging_steps=1`), with HF's NaN filter off so a
    non-finite loss reaches the guard.  The learning rate here is unused: the optimiser and
    schedule are `TransformerLabTrainer`'s.
    """
    amp = amp_dtype(train)
    if isinstance(dataloader_num_workers, bool) or not isinstance(dataloader_num_workers, int) \
            or dataloader_num_workers < 0:
        raise ValueError(f"dataloader_num_workers={dataloader_num_workers!r} is invalid: "
                         f"expected an integer >= 0")
    use_cpu = not torch.cuda.is_available() if use_cpu is None else use_cpu
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # launched by torchrun
    return TrainingArguments(
        output_dir=str(Path(output_dir) / "checkpoints"),
        per_device_train_batch_size=1,  # one item of the plan is one whole micro-batch
        gradient_accumulation_steps=train.grad_accum_steps,
        max_steps=total_steps,
        learning_rate=1.0,
        adam_beta1=train.adam_b1, adam_beta2=train.adam_b2, adam_epsilon=train.adam_eps,
        weight_decay=0.0,
        max_grad_norm=train.clip_norm,
        label_smoothing_factor=0.0,  # the loss is compute_loss's, smoothed by train.label_smoothing
        bf16=amp is torch.bfloat16, fp16=amp is torch.float16,
        logging_strategy="steps", logging_steps=1, logging_nan_inf_filter=False,
        save_strategy="steps", save_steps=train.checkpoint_every or total_steps,
        save_total_limit=max(train.keep_checkpoints, 1),
        eval_strategy="steps" if train.eval_every else "no",
        eval_steps=train.eval_every or None,
        report_to=["wandb"] if wandb else [],
        seed=train.seed, data_seed=train.seed,
        dataloader_num_workers=dataloader_num_workers,
        remove_unused_columns=False, disable_tqdm=True, log_level="warning",
        ddp_find_unused_parameters=False,  # every parameter is used by every forward
        **({CHECKPOINTING_FIELD: True} if gradient_checkpointing else {}),
        torch_compile=compile, use_cpu=use_cpu, ddp_backend="gloo" if use_cpu and distributed else None,
    )


def train(model_config: TransformerConfig, train_config: TrainConfig, task: Any,
          output_dir: str | Path, *, resume: bool = False,
          params: Mapping[str, Any] | None = None, wandb: bool = False,
          wandb_project: str | None = None, tensorboard: bool = False, progress: bool = True,
          train_split: str = "train", eval_split: str = "eval", probe_size: int = 4,
          dataloader_num_workers: int = 0, gradient_checkpointing: bool = False,
          compile: bool = False, use_cpu: bool | None = None) -> TrainResult:
    """Train the HF model on `task` with `TransformerLabTrainer`, writing under `output_dir`.

    Writes what the JAX and torch trainers write: `metrics.jsonl` (+ `tensorboard/`, and
    `wandb/` through `report_to`, offline unless WANDB_MODE says otherwise),
    `internals_step_<N>.npz`, the final canonical weights in `final/` (with the tokenizer),
    plus the HF folder `hf_model/` (`from_pretrained`) and Trainer checkpoints
    `checkpoints/checkpoint-<N>/` every `checkpoint_every` steps and at the end (the last
    `keep_checkpoints` kept).  `resume=True` continues from the newest good one as the other
    trainers do (`training.loop.prepare_checkpoints`: unreadable ones reported and skipped,
    other configs or data a `training.ResumeError`, none a fresh start said so), through the
    Trainer's `resume_from_checkpoint`.  Under `torchrun` every process calls this; each takes
    its share of every batch (`batch_size` is the global batch) and the main process writes
    the files and picks the checkpoint (the others take the newest).
    """
    start_time = time.perf_counter()
    output_dir = Path(output_dir)
    amp_dtype(train_config)
    training.check_task(task, model_config)
    rows, src_len, tgt_len, per_epoch, total = train_data.run_plan(
        task, model_config, train_config, train_split, eval_split)
    args = training_arguments(output_dir, train_config, total, wandb=wandb,
                              dataloader_num_workers=dataloader_num_workers,
                              gradient_checkpointing=gradient_checkpointing, compile=compile,
                              use_cpu=use_cpu)
    main = args.process_index == 0

    store = HFCheckpoints(args.output_dir)
    data = training.data_identity(task)
    if main:
        start = prepare_checkpoints(store, resume, model_config, train_config, data)
    else:  # the main process chose and cleaned; the others follow its choice
        start = store.checkpoints()[-1] if resume and store.checkpoints() else 0
    last = str(store.path(start)) if start else None

    flat = params if params is not None else torch_model.init(model_config,
                                                              train_config.seed).to_canonical()
    model = TransformerLabForConditionalGeneration.from_canonical(
        flat, model_config, label_smoothing=train_config.label_smoothing)
    dataset = PlanDataset(task, train_split, rows, train_config.seed, per_epoch,
                          total * train_config.grad_accum_steps, src_len, tgt_len,
                          model_config.pad_id, args.process_index, args.world_size)
    probe = training.probe_batch(task, eval_split, probe_size, src_len, tgt_len,
                                 model_config.pad_id, train_config.seed)
    run_config = {**model_config.to_dict(), **train_config.to_dict()}
    logger = training.MetricsLogger(output_dir, total_steps=total,
                                    resume_step=start if resume else None,
                                    tensorboard=tensorboard, run_config=run_config,
                                    progress=progress) if main else None
    metrics_cb = MetricsCallback(logger)
    run = _start_wandb(output_dir, wandb_project, run_config) if wandb and main else None
    try:
        evaluation = Evaluation(task, eval_split, (rows, src_len, tgt_len), train_config.seed)
        trainer = TransformerLabTrainer(
            # the Trainer only checks that an eval set exists; `evaluation` is what evaluates
            model=model, args=args, train_dataset=dataset, eval_dataset=evaluation,
            train_config=train_config, evaluation=evaluation,
            callbacks=[metrics_cb, InternalsCallback(output_dir, probe,
                                                     train_config.track_internals_every)])
        trainer.checkpoints.data = data
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        with _quiet(not progress):
            trainer.train(resume_from_checkpoint=last)
            if start >= total:  # a finished run resumed: its log has the final evaluation
                metrics_cb.eval_metrics = evaluation.run(trainer.model)
            elif metrics_cb.eval_step != trainer.state.global_step:  # not evaluated at the end
                trainer.evaluate()
        model = trainer.model
        final = output_dir / "final"
        if main:
            spec.save_checkpoint(final, model.to_canonical(), model_config)
            training.save_tokenizers(task, final)
            with _quiet(not progress):
                model.save_pretrained(output_dir / "hf_model")
        trainer.accelerator.wait_for_everyone()
    finally:
        if logger is not None:
            logger.close()
        if run is not None:
            run.finish()
    return TrainResult(model=model, history=metrics_cb.history,
                       eval_metrics=metrics_cb.eval_metrics, steps=trainer.state.global_step,
                       output_dir=output_dir, final_checkpoint=final,
                       seconds=time.perf_counter() - start_time)


def _start_wandb(output_dir: Path, project: str | None, config: Mapping[str, Any]) -> Any:
    """A wandb run under `output_dir/wandb` (offline unless WANDB_MODE says otherwise) that
    the Trainer's `WandbCallback` then logs into."""
    try:
        import wandb
    except ImportError:
        raise ImportError("wandb logging was requested (--wandb) but the wandb package is not "
                          "installed: pip install wandb") from None
    output_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=project or "transformer-lab", dir=str(output_dir),
                      mode=os.environ.get("WANDB_MODE", "offline"), config=dict(config))


@contextlib.contextmanager
def _quiet(on: bool) -> Iterator[None]:
    """Without transformers' progress bars (checkpoint shard writing) inside, when `on`."""
    was = hf_logging.is_progress_bar_enabled()
    if on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if on and was:
            hf_logging.enable_progress_bar()
