"""Training the Flax Transformer: optax Adam with the paper's warm-up, label smoothing, gradient
accumulation, clipping, bf16, dropout, data parallelism, orbax checkpoints, evaluation.

The pieces, each usable alone:
- `make_optimizer`: clip_by_global_norm (when `clip_norm > 0`) then Adam(b1, b2, eps) whose
  learning rate is `spec.learning_rate` wrapped as an optax schedule.
- `loss_fn`: the model's label-smoothed cross-entropy (`jax_model.loss`, optax `smooth_labels`
  semantics), mean over non-pad labels, exactly `spec.label_smoothed_cross_entropy`.
- `make_train_step`: one jitted optimizer update.  Gradient accumulation is an explicit
  `lax.scan` over the `grad_accum_steps` micro-batches stacked on a leading axis (not
  `optax.MultiSteps`): one call is one update, so the step counter, the schedule and the
  checkpoints all count updates, and the gradients are the mean of the micro-batch gradients.
- `train`: `training.loop.run_loop` with `JaxBackend`.  Resuming needs no data-iterator or RNG
  state: the batches of step N come from `training.step_batches` (a function of the seed) and
  the dropout key of step N is `fold_in(key(seed), N)`, so a run killed and resumed repeats
  the uninterrupted losses bit for bit.

Dropout keys use the "rbg" PRNG by default: masks come from XLA's RngBitGenerator instead of
threefry hashing (which a prototype found expensive on accelerators), while key derivation stays
threefry's, so the bits are the same whatever the sharding.  `rng_impl` picks "threefry2x32" or
"unsafe_rbg" instead; `benchmarks/train_step.py` times all three (on CPU they are close).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_model
import spec
import training
from spec import TrainConfig, TransformerConfig
from training import data as train_data
from training.eval_pass import evaluate_split
from training.loop import run_loop

from . import sharding as shard
from .capture import flatten_sown
from .checkpointing import Checkpointer
from .loss import loss_and_counts

RNG_IMPLS = ("rbg", "unsafe_rbg", "threefry2x32")
COMPUTE_DTYPES = {"none": jnp.float32, "bf16": jnp.bfloat16}
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs: `step` counts optimizer updates already applied."""

    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: final params (Flax tree), per-step metrics, the last evaluation."""

    params: Any
    history: list[dict[str, float]]
    eval_metrics: dict[str, float]
    steps: int
    output_dir: Path
    final_checkpoint: Path
    seconds: float


def make_schedule(model_config: TransformerConfig, train: TrainConfig) -> optax.Schedule:
    """`spec.learning_rate` as an optax schedule; optax counts from 0, spec from step 1."""
    return lambda count: spec.learning_rate(count + 1, train, model_config.d_model, xp=jnp)


def make_optimizer(model_config: TransformerConfig, train: TrainConfig
                   ) -> optax.GradientTransformation:
    adam = optax.adam(make_schedule(model_config, train), b1=train.adam_b1, b2=train.adam_b2,
                      eps=train.adam_eps)
    if train.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(train.clip_norm), adam)
    return adam


def create_train_state(model_config: TransformerConfig, train: TrainConfig,
                       params: Any = None) -> TrainState:
    """A fresh state: `jax_model.init(config, train.seed)` unless `params` is given."""
    if params is None:
        params = jax_model.init(model_config, train.seed)
    tx = make_optimizer(model_config, train)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def compute_dtype(train: TrainConfig) -> jnp.dtype:
    """float32, or bfloat16 for `mixed_precision="bf16"` (params stay float32 masters)."""
    if train.mixed_precision not in COMPUTE_DTYPES:
        raise ValueError(f"train config field mixed_precision={train.mixed_precision!r} is not "
                         f"supported by the JAX trainer: expected one of "
                         f"{tuple(COMPUTE_DTYPES)} (fp16 needs loss scaling; use bf16)")
    return COMPUTE_DTYPES[train.mixed_precision]


def apply_model(params: Any, model_config: TransformerConfig, src: jax.Array, tgt: jax.Array,
                *, dropout_key: jax.Array | None = None, dtype: jnp.dtype = jnp.float32,
                capture: bool = False, remat: bool = False
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Traceable forward: logits `[b, t, v]` and the canonical intermediates (when `capture`).

    Dropout is on exactly when `dropout_key` is given.  With `dtype=bfloat16` the parameters
    are cast for the computation only; gradients flow back to the float32 masters.
    `remat=True`: gradient checkpointing per layer (`jax_model.Transformer(remat=True)`).
    """
    if dtype != jnp.float32:
        params = jax.tree.map(lambda p: p.astype(dtype), params)
    deterministic = dropout_key is None
    rngs = None if deterministic else {"dropout": dropout_key}
    model = jax_model.Transformer(model_config, remat=remat)
    if not capture:
        return model.apply({"params": params}, src, tgt, deterministic=deterministic,
                           rngs=rngs), {}
    logits, state = model.apply(
        {"params": params}, src, tgt, deterministic=deterministic, rngs=rngs,
        mutable=["intermediates"])
    return logits, flatten_sown(state["intermediates"])


def loss_fn(params: Any, batch: Batch, model_config: TransformerConfig,
            label_smoothing: float = 0.1, *, dropout_key: jax.Array | None = None,
            dtype: jnp.dtype = jnp.float32, capture: bool = False, remat: bool = False
            ) -> tuple[jax.Array, dict[str, Any]]:
    """Mean label-smoothed loss over the non-pad labels of one `[b, len]` batch.

    Returns `(loss, aux)` with aux `tokens` (non-pad count), `correct` (argmax hits on them)
    and `inter` (canonical intermediates when `capture`, else empty).
    """
    logits, inter = apply_model(params, model_config, batch["src"], batch["tgt_in"],
                                dropout_key=dropout_key, dtype=dtype, capture=capture,
                                remat=remat)
    total, count, hits = loss_and_counts(logits, batch["labels"], model_config.pad_id,
                                         label_smoothing)
    aux = {"tokens": count, "correct": hits, "inter": inter}
    return total / jnp.maximum(count, 1.0), aux


def dropout_key(seed: int, step: jax.Array, rng_impl: str = "rbg") -> jax.Array:
    """The dropout key of optimizer step `step` (a function of seed and step only)."""
    return jax.random.fold_in(jax.random.key(seed, impl=rng_impl), step)


def make_train_step(model_config: TransformerConfig, train: TrainConfig, mesh=None, *,
                    capture: bool = False, rng_impl: str = "rbg", donate: bool = True
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted `step(state, batch) -> (state, metrics)`; one call is one optimizer update.

    `batch` leaves are `[grad_accum_steps, b, len]` (micro-batches on the leading axis).  The
    gradient is the mean of the micro-batch gradients, each micro-batch's loss being the mean
    over its own non-pad labels.  Metrics: `loss` (mean of the micro-batch losses),
    `grad_norm` (before clipping), `learning_rate` (used by this update), `token_accuracy`.
    With `capture=True` metrics also hold `inter`: the canonical intermediates of the forward,
    each with a leading micro-batch axis.  With a `mesh`, parameters are replicated and the
    batch is split along its batch axis over "data"; the state buffers are donated.
    """
    if rng_impl not in RNG_IMPLS:
        raise ValueError(f"rng_impl={rng_impl!r} is unknown; expected one of {RNG_IMPLS}")
    tx = make_optimizer(model_config, train)
    schedule = make_schedule(model_config, train)
    dtype = compute_dtype(train)
    accum = train.grad_accum_steps
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(params, micro, key):
        use_dropout = model_config.dropout_rate > 0 or model_config.attention_dropout_rate > 0
        (loss, aux), grads = grad_fn(params, micro, model_config, train.label_smoothing,
                                     dropout_key=key if use_dropout else None, dtype=dtype,
                                     capture=capture, remat=train.gradient_checkpointing)
        return loss, aux, grads

    def step(state: TrainState, batch: Batch):
        key = dropout_key(train.seed, state.step, rng_impl)

        def body(grad_sum, xs):
            index, micro = xs
            loss, aux, grads = micro_step(state.params, micro, jax.random.fold_in(key, index))
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return grad_sum, (loss, aux)

        if accum == 1:  # no loop: a simpler program that compiles faster
            loss, aux, grads = micro_step(state.params, jax.tree.map(lambda x: x[0], batch),
                                          jax.random.fold_in(key, 0))
            losses, aux = loss[None], jax.tree.map(lambda x: x[None], aux)
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            grad_sum, (losses, aux) = jax.lax.scan(body, zeros, (jnp.arange(accum), batch))
            grads = jax.tree.map(lambda g: g / accum, grad_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": losses.mean(),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
            "token_accuracy": aux["correct"].sum() / jnp.maximum(aux["tokens"].sum(), 1.0),
        }
        if capture:
            metrics["inter"] = aux["inter"]
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return jax.jit(step, donate_argnums=donate_argnums,
                   in_shardings=(shard.replicated(mesh), shard.batch_sharding(mesh, 1)),
                   out_shardings=(shard.replicated(mesh), shard.replicated(mesh)))


def make_eval_step(model_config: TransformerConfig, train: TrainConfig, mesh=None
                   ) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """A jitted `eval_step(params, batch) -> {loss_sum, tokens, correct}` on one `[b, len]`
    batch, without dropout; sums so that batches combine into exact means."""
    dtype = compute_dtype(train)

    def eval_step(params, batch):
        logits, _ = apply_model(params, model_config, batch["src"], batch["tgt_in"], dtype=dtype)
        total, count, hits = loss_and_counts(logits, batch["labels"], model_config.pad_id,
                                             train.label_smoothing)
        return {"loss_sum": total, "tokens": count, "correct": hits}

    if mesh is None:
        return jax.jit(eval_step)
    return jax.jit(eval_step, in_shardings=(shard.replicated(mesh), shard.batch_sharding(mesh)),
                   out_shardings=shard.replicated(mesh))


def make_decode(model_config: TransformerConfig, max_len: int
                ) -> Callable[[Any, np.ndarray], np.ndarray]:
    """Greedy decoding `decode(params, src [b, s]) -> [b, max_len]` tokens (numpy):
    `jax_model.greedy_decode`, one jitted while-loop compiled once per (config, max_len)."""
    return lambda params, src: jax_model.greedy_decode(params, model_config, np.asarray(src),
                                                       max_len)


def evaluate(params: Any, model_config: TransformerConfig, train: TrainConfig, task: Any,
             split: str, shape: tuple[int, int, int], *, mesh=None, eval_step=None,
             decode=None) -> dict[str, float]:
    """Loss and token accuracy (teacher forcing) and exact match and BLEU (greedy decoding,
    ids decoded with the task's tokenizer) over one pass of `split`
    (`training.eval_pass.evaluate_split`)."""
    eval_step = eval_step or make_eval_step(model_config, train, mesh)
    decode = decode or make_decode(model_config, shape[2])

    def score(fixed: Mapping[str, np.ndarray], real: int):
        device_batch = _to_device({k: fixed[k] for k in train_data.BATCH_KEYS}, mesh, 0)
        sums = jax.device_get(eval_step(params, device_batch))
        return (float(sums["loss_sum"]), int(sums["tokens"]), int(sums["correct"]),
                decode(params, fixed["src"])[:real])

    return evaluate_split(task, split, shape, train.seed, model_config.pad_id, score)


def capture_internals(params: Any, model_config: TransformerConfig, probe: Mapping[str, Any]
                      ) -> dict[str, np.ndarray]:
    """Canonical intermediates of a deterministic forward on the probe batch (numpy)."""
    _, inter = jax_model.forward(params, model_config, probe["src"], probe["tgt_in"],
                                 capture=True)
    return inter


class JaxBackend:
    """The JAX side of `training.loop.run_loop`: the live `TrainState`, its jitted step, orbax
    checkpoints, evaluation and capture."""

    checks_grad_norm = True

    def __init__(self, state: TrainState, model_config: TransformerConfig, train: TrainConfig,
                 task: Any, eval_split: str, shape: tuple[int, int, int], directory: Path,
                 mesh=None, rng_impl: str = "rbg") -> None:
        self.state, self.model_config, self.train = state, model_config, train
        self.task, self.eval_split, self.shape, self.mesh = task, eval_split, shape, mesh
        self.checkpointer = Checkpointer(directory)
        self.directory = self.checkpointer.directory
        self._step = make_train_step(model_config, train, mesh, rng_impl=rng_impl)
        self._eval_step = make_eval_step(model_config, train, mesh)
        self._decode = make_decode(model_config, shape[2])

    def step(self, micro_batches):
        batch = _to_device(train_data.stack(list(micro_batches)), self.mesh, 1)
        self.state, metrics = self._step(self.state, batch)
        return metrics

    def fetch(self, metrics):
        return [{k: float(v) for k, v in m.items()} for m in _local(list(metrics))]

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.state.params, self.model_config, self.train, self.task,
                        self.eval_split, self.shape, mesh=self.mesh, eval_step=self._eval_step,
                        decode=self._decode)

    def capture(self, probe):
        return capture_internals(self.state.params, self.model_config, probe)

    def save(self, step: int, meta: dict[str, Any]) -> None:
        self.checkpointer.save(step, self.state, meta)

    def checkpoints(self) -> list[int]:
        return self.checkpointer.all_steps()

    def read_meta(self, step: int) -> dict[str, Any]:
        return self.checkpointer.read_meta(step)

    def restore(self, step: int) -> None:
        self.state, _ = self.checkpointer.restore(step, self.state)

    def delete(self, step: int) -> None:
        self.checkpointer.delete(step)

    def finish(self) -> None:
        self.checkpointer.wait()


def train(model_config: TransformerConfig, train_config: TrainConfig, task: Any,
          output_dir: str | Path, *, resume: bool = False, mesh=None,
          train_split: str = "train", eval_split: str = "eval", tensorboard: bool = False,
          wandb: bool = False, wandb_project: str | None = None, progress: bool = True,
          rng_impl: str = "rbg", probe_size: int = 4, params: Any = None) -> TrainResult:
    """Train `model_config` on `task`, writing everything under `output_dir`.

    The loop is `training.loop.run_loop` (see there): `metrics.jsonl` (+ `tensorboard/`,
    `wandb/` when asked), orbax checkpoints in `checkpoints/` every `checkpoint_every` steps
    and at the end (the last `keep_checkpoints` kept), `internals_step_<N>.npz` every
    `track_internals_every` steps (and at step 0) on a fixed probe batch (the first
    `probe_size` examples of `eval_split`), and the final weights as a canonical checkpoint in
    `final/` (`spec.save_checkpoint`).  `resume=True` continues from the newest good
    checkpoint (falling back past unreadable ones; a fresh start, said, when there is none);
    other configs or data raise `training.ResumeError`.  A NaN/inf loss or gradient norm
    raises `training.NonFiniteLossError` naming the step; the checkpoints written before it
    (all of finite weights) stay.  Evaluates every `eval_every` steps and at the end.
    Multi-host: see `jax_model.sharding`.  `params`: initial weights, a Flax tree or a
    canonical flat dict (default: `jax_model.init(model_config, train_config.seed)`); ignored
    when resuming a checkpoint.
    """
    start_time = time.perf_counter()
    output_dir = Path(output_dir)
    compute_dtype(train_config)
    if rng_impl not in RNG_IMPLS:
        raise ValueError(f"rng_impl={rng_impl!r} is unknown; expected one of {RNG_IMPLS}")
    training.check_task(task, model_config)
    mesh = shard.make_mesh() if mesh is None else mesh
    plan = train_data.run_plan(task, model_config, train_config, train_split, eval_split)
    shard.check_batch_size(plan.rows, mesh)

    if params is not None and any("/" in str(k) for k in params):
        params = jax_model.from_canonical(params, model_config)
    elif params is not None:  # a copy: the train step donates (deletes) the buffers it gets
        params = jax.tree.map(jnp.array, params)
    state = shard.replicate(create_train_state(model_config, train_config, params), mesh)
    shape = (plan.rows, plan.src_len, plan.tgt_len)
    backend = JaxBackend(state, model_config, train_config, task, eval_split, shape,
                         output_dir / "checkpoints", mesh, rng_impl)
    probe = training.probe_batch(task, eval_split, probe_size, plan.src_len, plan.tgt_len,
                                 model_config.pad_id, train_config.seed)
    # Multi-host: every process trains; only process 0 writes logs, internals and the export.
    primary = jax.process_index() == 0
    log_dir = output_dir if primary else output_dir / f"process_{jax.process_index()}"
    try:
        result = run_loop(backend, plan, task=task, model_config=model_config,
                          train_config=train_config, output_dir=output_dir, probe=probe,
                          train_split=train_split, resume=resume, log_dir=log_dir,
                          primary=primary, tensorboard=tensorboard, wandb=wandb,
                          wandb_project=wandb_project, progress=progress)
        final = output_dir / "final"
        if primary:
            spec.save_checkpoint(final, jax_model.to_canonical(_local(backend.state.params)),
                                 model_config)
            training.save_tokenizers(task, final)
    finally:
        backend.checkpointer.close()
    return TrainResult(params=backend.state.params, history=result.history,
                       eval_metrics=result.eval_metrics,
                       steps=int(_local(backend.state.step)), output_dir=output_dir,
                       final_checkpoint=final, seconds=time.perf_counter() - start_time)


def _local(tree: Any) -> Any:
    """Replicated jax arrays -> numpy from this process's own copy (works on many hosts, where
    `jax.device_get` refuses arrays that are not fully addressable)."""
    def one(x: Any) -> Any:
        return np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else x

    return jax.tree.map(one, tree)


def _to_device(batch: Mapping[str, np.ndarray], mesh, batch_axis: int) -> dict[str, jax.Array]:
    arrays = {k: np.asarray(v, dtype=np.int32) for k, v in batch.items()}
    if mesh is None:  # no mesh: the default device, as the unsharded jitted steps expect
        return {k: jnp.asarray(v) for k, v in arrays.items()}
    return shard.shard_batch(arrays, mesh, batch_axis)
