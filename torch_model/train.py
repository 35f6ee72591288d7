"""Training the PyTorch mirror with a plain loop that does what `jax_model.train` does.

Same `spec.TrainConfig`, same optimisation, same data, same output folder:
- `make_optimizer`: Adam(b1, b2, eps) at base lr 1 under a `LambdaLR` whose factor is
  `spec.learning_rate(step)`, so the lr of update N is exactly the JAX schedule's.
- `train_step`: one optimizer update over `grad_accum_steps` micro-batches; the gradient is the
  mean of the micro-batch gradients (each loss a mean over its own non-pad labels), clipped to
  `clip_norm` by global norm as optax does (`g * clip / max(norm, clip)`), then Adam.
  Label smoothing is torch's `cross_entropy(label_smoothing=eps, ignore_index=pad_id)`.
- Mixed precision: `bf16` autocasts to bfloat16 (CPU or GPU); `fp16` autocasts to float16
  with a `GradScaler`.  Parameters stay float32.  `gradient_checkpointing` recomputes each
  layer in the backward pass (`torch.utils.checkpoint`); `compile` runs `torch.compile(model)`.
- `train`: the loop.  Batches of step N come from `training.step_batches` (a function of the
  seed), dropout draws from the global torch RNG seeded with `seed` inside a forked RNG scope,
  and checkpoints (`torch_model.checkpointing`) save the optimizer, scheduler, scaler and RNG
  states with the canonical weights, so an interrupted run resumed from its last checkpoint
  repeats the uninterrupted losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

import spec
import training
from spec import TrainConfig, TransformerConfig
from training import data as train_data

from .adapter import smoothed_loss
from .api import forward as checked_forward
from .api import init, mode
from .checkpointing import Checkpointer
from .decoding import greedy_decode
from .model import Transformer

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class TrainResult:
    """What `train` (and `hf_bridge.trainer.train`) returns: the fields of
    `jax_model.train.TrainResult`, with the trained `model` (a `Transformer`, or the HF
    `TransformerLabForConditionalGeneration`) where JAX returns its Flax `params`."""

    model: torch.nn.Module
    history: list[dict[str, float]]
    eval_metrics: dict[str, float]
    steps: int
    output_dir: Path
    final_checkpoint: Path
    seconds: float


@dataclasses.dataclass
class TrainState:
    """Everything one update touches.  `step` counts the updates already applied; `forward`
    is the model itself or its `torch.compile`d wrapper (same parameters)."""

    model: Transformer
    optimizer: torch.optim.Adam
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler | None
    forward: Any
    step: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(model: torch.nn.Module, model_config: TransformerConfig, train: TrainConfig
                   ) -> tuple[torch.optim.Adam, LambdaLR]:
    """Adam over every parameter and the `spec.learning_rate` schedule."""
    optimizer = make_adam(model.parameters(), train)
    return optimizer, make_scheduler(optimizer, model_config, train)


def make_adam(params: Any, train: TrainConfig) -> torch.optim.Adam:
    """Adam(b1, b2, eps) at base lr 1: the scheduler's factor is the learning rate itself."""
    return torch.optim.Adam(params, lr=1.0, betas=(train.adam_b1, train.adam_b2),
                            eps=train.adam_eps)


def make_scheduler(optimizer: torch.optim.Optimizer, model_config: TransformerConfig,
                   train: TrainConfig) -> LambdaLR:
    """`spec.learning_rate` as a LambdaLR.  LambdaLR counts from 0 and spec from step 1: the
    factor of count c is lr(c + 1), so the first update uses lr(1), as optax does."""
    return LambdaLR(optimizer, lambda count: spec.learning_rate(count + 1, train,
                                                                 model_config.d_model))


def amp_dtype(train: TrainConfig) -> torch.dtype | None:
    """None (float32), torch.bfloat16 or torch.float16 for `mixed_precision`."""
    if train.mixed_precision not in AMP_DTYPES:
        raise ValueError(f"train config field mixed_precision={train.mixed_precision!r} is "
                         f"unknown: expected one of {tuple(AMP_DTYPES)}")
    return AMP_DTYPES[train.mixed_precision]


def autocast(train: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's autocast region (a no-op in float32)."""
    dtype = amp_dtype(train)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def create_train_state(model_config: TransformerConfig, train: TrainConfig,
                       params: Mapping[str, Any] | None = None,
                       device: str | torch.device | None = None, *,
                       gradient_checkpointing: bool = False, compile: bool = False
                       ) -> TrainState:
    """A fresh state: `torch_model.init(config, train.seed)`, or the canonical `params`."""
    device = torch.device(device) if device is not None else default_device()
    model = init(model_config, train.seed)
    if params is not None:
        model.load_canonical(params)
    model = model.to(device)
    model.gradient_checkpointing = gradient_checkpointing or train.gradient_checkpointing
    optimizer, scheduler = make_optimizer(model, model_config, train)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype(train) is torch.float16 else None
    fwd = torch.compile(model) if compile else model
    return TrainState(model, optimizer, scheduler, scaler, fwd)


def to_tensors(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """`src`, `tgt_in`, `labels` as int64 tensors on `device`."""
    return {k: torch.as_tensor(np.asarray(batch[k]), dtype=torch.int64, device=device)
            for k in train_data.BATCH_KEYS}


def loss_and_counts(logits: torch.Tensor, labels: torch.Tensor, pad_id: int,
                    label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [b, t, v], labels [b, t] -> (mean smoothed loss, non-pad count, argmax hits)."""
    loss = smoothed_loss(logits, labels, pad_id, label_smoothing)
    with torch.no_grad():
        keep = labels != pad_id
        hits = ((logits.argmax(-1) == labels) & keep).sum()
    return loss, keep.sum(), hits


def clip_by_global_norm(grads: Sequence[torch.Tensor], clip_norm: float) -> torch.Tensor:
    """The global norm of `grads` (returned, before clipping); scales them in place by
    `clip / max(norm, clip)` when `clip_norm > 0` (optax.clip_by_global_norm)."""
    norm = torch.nn.utils.get_total_norm(grads)
    if clip_norm > 0:
        torch._foreach_mul_(list(grads), clip_norm / torch.clamp(norm, min=clip_norm))
    return norm


def train_step(state: TrainState, micro_batches: Sequence[Mapping[str, Any]],
               model_config: TransformerConfig, train: TrainConfig) -> dict[str, torch.Tensor]:
    """One optimizer update (dropout on) over `grad_accum_steps` micro-batches `[b, len]`.

    Returns device scalars (no host sync): `loss` (mean of the micro-batch losses),
    `grad_norm` (before clipping), `learning_rate` (of this update), `token_accuracy`.
    """
    if len(micro_batches) != train.grad_accum_steps:
        raise ValueError(f"got {len(micro_batches)} micro-batches, expected grad_accum_steps="
                         f"{train.grad_accum_steps}")
    model, device = state.model, state.device
    model.train()
    state.optimizer.zero_grad(set_to_none=True)
    losses, tokens, correct = [], 0, 0
    for batch in micro_batches:
        b = to_tensors(batch, device)
        with autocast(train, device):
            logits = state.forward(b["src"], b["tgt_in"])                   # [b, t, v]
        loss, count, hits = loss_and_counts(logits, b["labels"], model_config.pad_id,
                                            train.label_smoothing)
        scaled = loss / len(micro_batches)
        (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        losses.append(loss.detach())
        tokens, correct = tokens + count, correct + hits
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = clip_by_global_norm(grads, train.clip_norm)
    learning_rate = state.scheduler.get_last_lr()[0]
    if state.scaler is not None:
        scale = state.scaler.get_scale()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        applied = state.scaler.get_scale() >= scale  # the scale drops when a step is skipped
    else:
        state.optimizer.step()
        applied = True
    if applied:
        state.scheduler.step()
    state.step += 1
    return {"loss": torch.stack(losses).mean(), "grad_norm": grad_norm.detach(),
            "learning_rate": torch.tensor(learning_rate, dtype=torch.float64),
            "token_accuracy": correct / torch.clamp(tokens, min=1)}


@torch.no_grad()
def evaluate(model: Transformer, model_config: TransformerConfig, train: TrainConfig, task: Any,
             split: str, shape: tuple[int, int, int]) -> dict[str, float]:
    """Loss and token accuracy (teacher forcing) and exact match and BLEU (greedy decoding,
    ids decoded with the task's tokenizer) over one pass of `split`, as JAX's `evaluate`."""
    rows, src_len, tgt_len = shape
    device = next(model.parameters()).device
    acc = training.EvalAccumulator(task, pad_id=model_config.pad_id,
                                     groups=training.eval_groups(task, split))
    with mode(model, False):
        for batch in task.batches(split, rows, 0, train.seed, 0):
            real = len(batch["src"])
            fixed = train_data.pad_batch(batch, rows, src_len, tgt_len, model_config.pad_id)
            b = to_tensors(fixed, device)
            with autocast(train, device):
                logits = model(b["src"], b["tgt_in"])
            loss, count, hits = loss_and_counts(logits, b["labels"], model_config.pad_id,
                                                train.label_smoothing)
            tokens = greedy_decode(model, fixed["src"][:real], tgt_len)
            acc.add(float(loss) * int(count), int(count), int(hits),
                    hypotheses=tokens.cpu().numpy(), labels=np.asarray(batch["labels"]))
    return acc.result()


def capture_internals(model: Transformer, probe: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Canonical intermediates of a deterministic forward on the probe batch (the taps)."""
    with torch.no_grad():
        _, inter = checked_forward(model, probe["src"], probe["tgt_in"], capture=True)
    return inter


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """The global torch RNG (dropout's) seeded with `seed` inside; the caller's state after."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def train(model_config: TransformerConfig, train_config: TrainConfig, task: Any,
          output_dir: str | Path, *, resume: bool = False,
          device: str | torch.device | None = None, params: Mapping[str, Any] | None = None,
          train_split: str = "train", eval_split: str = "eval", tensorboard: bool = False,
          wandb: bool = False, wandb_project: str | None = None, progress: bool = True,
          probe_size: int = 4, gradient_checkpointing: bool = False, compile: bool = False
          ) -> TrainResult:
    """Train `model_config` on `task` with the plain torch loop, writing under `output_dir`.

    The output folder is JAX's: `metrics.jsonl` (+ `tensorboard/`, `wandb/` when asked),
    checkpoints in `checkpoints/step_<N>/` every `checkpoint_every` steps and at the end (the
    last `keep_checkpoints` kept), `internals_step_<N>.npz` every `track_internals_every`
    steps (and at step 0) on a fixed probe batch (the first `probe_size` examples of
    `eval_split`), and the final canonical weights in `final/` (`spec.save_checkpoint`, with
    the tokenizer).  `resume=True` continues from the latest checkpoint (a fresh start when
    there is none).  `params` (canonical weights) replaces the seeded initialisation.  A
    NaN/inf loss raises `training.NonFiniteLossError` naming the step; the checkpoints written
    before it stay.  Evaluates every `eval_every` steps and at the end.
    """
    start_time = time.perf_counter()
    output_dir = Path(output_dir)
    device = torch.device(device) if device is not None else default_device()
    amp_dtype(train_config)
    training.check_task(task, model_config)
    rows, src_len, tgt_len, per_epoch, total = train_data.run_plan(
        task, model_config, train_config, train_split, eval_split)

    state = create_train_state(model_config, train_config, params, device,
                               gradient_checkpointing=gradient_checkpointing, compile=compile)
    checkpointer = Checkpointer(output_dir / "checkpoints", keep=max(train_config.keep_checkpoints,
                                                                     1))
    latest = checkpointer.latest_step() if resume else None
    saved: dict[str, Any] = {}
    if latest is not None:
        flat, _, saved = checkpointer.restore(latest)
        training.check_resume(saved, model_config, train_config)
        state.model.load_canonical(flat)
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        if state.scaler is not None and saved.get("scaler") is not None:
            state.scaler.load_state_dict(saved["scaler"])
        state.step = int(saved["step"])
    start = state.step
    meta = {"model_config": model_config.to_dict(), "train_config": train_config.to_dict()}

    probe = training.probe_batch(task, eval_split, probe_size, src_len, tgt_len,
                                 model_config.pad_id, train_config.seed)
    shape = (rows, src_len, tgt_len)
    history: list[dict[str, float]] = []
    eval_metrics: dict[str, float] = {}
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []
    last_saved = latest

    logger = training.MetricsLogger(
        output_dir, total_steps=total, resume_step=start if resume else None,
        tensorboard=tensorboard, wandb=wandb, wandb_project=wandb_project,
        run_config={**meta["model_config"], **meta["train_config"]}, progress=progress)

    def flush() -> None:
        """Fetch the pending metrics, log them, stop at the first non-finite loss."""
        fetched = [(step, {k: float(v) for k, v in m.items()}) for step, m in pending]
        pending.clear()
        for step, record in fetched:
            logger.log(step, record)
            history.append({"step": step, **record})
            training.check_finite([(step, record["loss"])], last_saved)
        if fetched:
            logger.advance(len(fetched), {"loss": fetched[-1][1]["loss"]})
        logger.flush()

    def save(step: int) -> None:
        checkpointer.save(step, state.model.to_canonical(), model_config, {
            **meta, "step": step, "micro_batches": step * train_config.grad_accum_steps,
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "rng": rng_state(device)})

    def track(step: int) -> None:
        training.save_internals(output_dir, step, capture_internals(state.model, probe),
                                {k: probe[k] for k in train_data.BATCH_KEYS})

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(state.model, model_config, train_config, task, eval_split, shape)
        logger.log(step, metrics, split="eval")
        logger.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    try:
        with seeded_rng(device, train_config.seed):
            if saved:
                set_rng_state(saved["rng"])
            if train_config.track_internals_every and start == 0:
                track(0)
            stream = train_data.step_batches(task, train_split, rows,
                                             train_config.grad_accum_steps, train_config.seed,
                                             per_epoch, start)
            for step, micro in stream:
                if step > total:
                    break
                fixed = [train_data.pad_batch(b, rows, src_len, tgt_len, model_config.pad_id)
                         for b in micro]
                pending.append((step, train_step(state, fixed, model_config, train_config)))
                last = step == total
                if step % max(train_config.log_every, 1) == 0 or last:
                    flush()
                if train_config.checkpoint_every and step % train_config.checkpoint_every == 0 \
                        or last:
                    flush()
                    save(step)
                    last_saved = step
                if train_config.track_internals_every and \
                        step % train_config.track_internals_every == 0:
                    track(step)
                if train_config.eval_every and step % train_config.eval_every == 0 and not last:
                    eval_metrics = run_eval(step)
            flush()
            eval_metrics = run_eval(state.step)
        final = spec.save_checkpoint(output_dir / "final", state.model.to_canonical(),
                                     model_config)
        training.save_tokenizers(task, final)
    finally:
        logger.close()
    return TrainResult(model=state.model, history=history, eval_metrics=eval_metrics,
                       steps=state.step, output_dir=output_dir, final_checkpoint=final,
                       seconds=time.perf_counter() - start_time)
