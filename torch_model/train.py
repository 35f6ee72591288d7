"""Training the PyTorch mirror with a plain loop that does what `jax_model.train` does.

Same `spec.TrainConfig`, same optimisation, same data, same output folder:
- `make_optimizer`: Adam(b1, b2, eps) at base lr 1 under a `LambdaLR` whose factor is
  `spec.learning_rate(step)`, so the lr of update N is exactly the JAX schedule's.
- `train_step`: one optimizer update over `grad_accum_steps` micro-batches; the gradient is the
  mean of the micro-batch gradients (each loss a mean over its own non-pad labels), clipped to
  `clip_norm` by global norm as optax does (`g * clip / max(norm, clip)`), then Adam.
  The loss is `torch_model.loss` (torch's `cross_entropy(label_smoothing, ignore_index)`).
- Mixed precision: `bf16` autocasts to bfloat16 (CPU or GPU); `fp16` autocasts to float16
  with a `GradScaler`.  Parameters stay float32.  `gradient_checkpointing` recomputes each
  layer in the backward pass (`torch.utils.checkpoint`); `compile` runs `torch.compile(model)`.
- `train`: `training.loop.run_loop` with `TorchBackend`.  Batches of step N come from `training.step_batches` (a function of the
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
from training.eval_pass import evaluate_split
from training.loop import run_loop

from .api import forward as checked_forward
from .api import init, mode
from .checkpointing import Checkpointer
from .decoding import greedy_decode
from .loss import loss_and_counts
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
    ids decoded with the task's tokenizer) over one pass of `split`, as JAX's `evaluate`
    (`training.eval_pass.evaluate_split`)."""
    device = next(model.parameters()).device

    def score(fixed: Mapping[str, np.ndarray], real: int):
        b = to_tensors(fixed, device)
        with autocast(train, device):
            logits = model(b["src"], b["tgt_in"])                               # [b, t, v]
        loss, count, hits = loss_and_counts(logits, b["labels"], model_config.pad_id,
                                            train.label_smoothing)
        tokens = greedy_decode(model, fixed["src"][:real], shape[2])          # [real, l]
        return float(loss) * int(count), int(count), int(hits), tokens.cpu().numpy()

    with mode(model, False):
        return evaluate_split(task, split, shape, train.seed, model_config.pad_id, score)


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


class TorchBackend:
    """The torch side of `training.loop.run_loop`: the live `TrainState`, its update, the
    `step_<N>` checkpoints (weights, optimizer, scheduler, scaler and RNG states), evaluation
    and the taps.  fp16's GradScaler skips an update whose gradients overflow, so a non-finite
    gradient norm is only a stop in float32 and bf16."""

    def __init__(self, state: TrainState, model_config: TransformerConfig, train: TrainConfig,
                 task: Any, eval_split: str, shape: tuple[int, int, int],
                 directory: Path) -> None:
        self.state, self.model_config, self.train = state, model_config, train
        self.task, self.eval_split, self.shape = task, eval_split, shape
        self.checkpointer = Checkpointer(directory)
        self.directory = self.checkpointer.directory
        self.checks_grad_norm = state.scaler is None

    def step(self, micro_batches):
        return train_step(self.state, micro_batches, self.model_config, self.train)

    def fetch(self, metrics):
        return [{k: float(v) for k, v in m.items()} for m in metrics]

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.state.model, self.model_config, self.train, self.task,
                        self.eval_split, self.shape)

    def capture(self, probe):
        return capture_internals(self.state.model, probe)

    def save(self, step: int, meta: dict[str, Any]) -> None:
        state = self.state
        self.checkpointer.save(step, state.model.to_canonical(), self.model_config, {
            **meta, "micro_batches": step * self.train.grad_accum_steps,
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "rng": rng_state(state.device)})

    def checkpoints(self) -> list[int]:
        return self.checkpointer.all_steps()

    def read_meta(self, step: int) -> dict[str, Any]:
        return self.checkpointer.read_state(step)

    def restore(self, step: int) -> None:
        flat, _, saved = self.checkpointer.restore(step)
        state = self.state
        state.model.load_canonical(flat)
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        if state.scaler is not None and saved.get("scaler") is not None:
            state.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])  # inside `seeded_rng`: the dropout stream of the run
        state.step = int(saved["step"])

    def delete(self, step: int) -> None:
        self.checkpointer.delete(step)

    def finish(self) -> None:
        """Saves are synchronous."""


def train(model_config: TransformerConfig, train_config: TrainConfig, task: Any,
          output_dir: str | Path, *, resume: bool = False,
          device: str | torch.device | None = None, params: Mapping[str, Any] | None = None,
          train_split: str = "train", eval_split: str = "eval", tensorboard: bool = False,
          wandb: bool = False, wandb_project: str | None = None, progress: bool = True,
          probe_size: int = 4, gradient_checkpointing: bool = False, compile: bool = False
          ) -> TrainResult:
    """Train `model_config` on `task` with the plain torch loop, writing under `output_dir`.

    The loop is `training.loop.run_loop` with `TorchBackend`, and the output folder is JAX's:
    `metrics.jsonl` (+ `tensorboard/`, `wandb/` when asked), checkpoints in
    `checkpoints/step_<N>/` every `checkpoint_every` steps and at the end (the last
    `keep_checkpoints` kept), `internals_step_<N>.npz` every `track_internals_every` steps
    (and at step 0) on a fixed probe batch (the first `probe_size` examples of `eval_split`),
    and the final canonical weights in `final/` (`spec.save_checkpoint`, with the tokenizer).
    `resume=True` continues from the newest good checkpoint (falling back past unreadable
    ones; a fresh start, said, when there is none); other configs or data raise
    `training.ResumeError`.  `params` (canonical weights) replaces the seeded initialisation.
    A NaN/inf loss (or gradient norm, unless fp16) raises `training.NonFiniteLossError` naming
    the step; the checkpoints written before it stay.  Evaluates every `eval_every` steps and
    at the end.
    """
    start_time = time.perf_counter()
    output_dir = Path(output_dir)
    device = torch.device(device) if device is not None else default_device()
    amp_dtype(train_config)
    training.check_task(task, model_config)
    plan = train_data.run_plan(task, model_config, train_config, train_split, eval_split)
    state = create_train_state(model_config, train_config, params, device,
                               gradient_checkpointing=gradient_checkpointing, compile=compile)
    shape = (plan.rows, plan.src_len, plan.tgt_len)
    backend = TorchBackend(state, model_config, train_config, task, eval_split, shape,
                           output_dir / "checkpoints")
    probe = training.probe_batch(task, eval_split, probe_size, plan.src_len, plan.tgt_len,
                                 model_config.pad_id, train_config.seed)
    with seeded_rng(device, train_config.seed):
        result = run_loop(backend, plan, task=task, model_config=model_config,
                          train_config=train_config, output_dir=output_dir, probe=probe,
                          train_split=train_split, resume=resume, tensorboard=tensorboard,
                          wandb=wandb, wandb_project=wandb_project, progress=progress)
    final = spec.save_checkpoint(output_dir / "final", state.model.to_canonical(), model_config)
    training.save_tokenizers(task, final)
    return TrainResult(model=state.model, history=result.history,
                       eval_metrics=result.eval_metrics, steps=state.step,
                       output_dir=output_dir, final_checkpoint=final,
                       seconds=time.perf_counter() - start_time)
