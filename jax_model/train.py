"""Training the Flax Transformer: optax Adam with the paper's warm-up, label smoothing, gradient
accumulation, clipping, bf16, dropout, data parallelism, orbax checkpoints, evaluation.

The pieces, each usable alone:
- `make_optimizer`: clip_by_global_norm (when `clip_norm > 0`) then Adam(b1, b2, eps) whose
  learning rate is `spec.learning_rate` wrapped as an optax schedule.
- `loss_fn`: label-smoothed cross-entropy (optax `smooth_labels` semantics), mean over non-pad
  labels, exactly `spec.label_smoothed_cross_entropy`.
- `make_train_step`: one jitted optimizer update.  Gradient accumulation is an explicit
  `lax.scan` over the `grad_accum_steps` micro-batches stacked on a leading axis (not
  `optax.MultiSteps`): one call is one update, so the step counter, the schedule and the
  checkpoints all count updates, and the gradients are the mean of the micro-batch gradients.
- `train`: the loop.  Resuming needs no data-iterator or RNG state: the batches of step N come
  from `training.step_batches` (a function of the seed) and the dropout key of step N is
  `fold_in(key(seed), N)`, so a run killed and resumed repeats the uninterrupted losses.

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

from . import sharding as shard
from .capture import flatten_sown
from .checkpointing import Checkpointer

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


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, pad_id: int,
                           smoothing: float) -> tuple[jax.Array, jax.Array]:
    """`[b, t, v]` logits, `[b, t]` labels -> (sum of per-token losses, non-pad count).

    The target distribution is optax.smooth_labels' `(1 - eps) * onehot + eps / v`, whose
    cross-entropy is `(1 - eps) * (lse - z_label) + eps * (lse - mean_v z)` with
    `lse = logsumexp_v z`: one logsumexp, one gather and one mean over the logits, and no
    `[b, t, v]` log-probabilities or target array (4x faster, value and gradient, than
    optax's integer-label loss plus a separate log-softmax at vocabulary 8000 on CPU:
    benchmarks/RESULTS.md).  Pad labels weigh 0: the mean is `sum / max(count, 1)`, as in
    `spec.label_smoothed_cross_entropy`.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)                                        # [b, t]
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]  # [b, t]
    per_token = lse - (1.0 - smoothing) * label_logit - smoothing * logits.mean(-1)
    keep = (labels != pad_id).astype(jnp.float32)
    return (per_token * keep).sum(), keep.sum()


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
    labels = batch["labels"]
    total, count = smoothed_cross_entropy(logits, labels, model_config.pad_id, label_smoothing)
    hits = (logits.argmax(-1) == labels) & (labels != model_config.pad_id)
    aux = {"tokens": count, "correct": hits.sum(), "inter": inter}
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
        labels = batch["labels"]
        total, count = smoothed_cross_entropy(logits, labels, model_config.pad_id,
                                              train.label_smoothing)
        hits = (logits.argmax(-1) == labels) & (labels != model_config.pad_id)
        return {"loss_sum": total, "tokens": count, "correct": hits.sum()}

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
    ids decoded with the task's tokenizer) over one pass of `split`."""
    rows, src_len, tgt_len = shape
    eval_step = eval_step or make_eval_step(model_config, train, mesh)
    decode = decode or make_decode(model_config, tgt_len)
    acc = training.EvalAccumulator(task, pad_id=model_config.pad_id,
                                     groups=training.eval_groups(task, split))
    for batch in task.batches(split, rows, 0, train.seed, 0):
        real = len(batch["src"])
        fixed = train_data.pad_batch(batch, rows, src_len, tgt_len, model_config.pad_id)
        device_batch = _to_device({k: fixed[k] for k in train_data.BATCH_KEYS}, mesh, 0)
        sums = jax.device_get(eval_step(params, device_batch))
        tokens = decode(params, fixed["src"])[:real]
        acc.add(float(sums["loss_sum"]), int(sums["tokens"]), int(sums["correct"]),
                hypotheses=tokens, labels=np.asarray(batch["labels"]))
    return acc.result()


def capture_internals(params: Any, model_config: TransformerConfig, probe: Mapping[str, Any]
                      ) -> dict[str, np.ndarray]:
    """Canonical intermediates of a deterministic forward on the probe batch (numpy)."""
    _, inter = jax_model.forward(params, model_config, probe["src"], probe["tgt_in"],
                                 capture=True)
    return inter


def train(model_config: TransformerConfig, train_config: TrainConfig, task: Any,
          output_dir: str | Path, *, resume: bool = False, mesh=None,
          train_split: str = "train", eval_split: str = "eval", tensorboard: bool = False,
          wandb: bool = False, wandb_project: str | None = None, progress: bool = True,
          rng_impl: str = "rbg", probe_size: int = 4, params: Any = None) -> TrainResult:
    """Train `model_config` on `task`, writing everything under `output_dir`.

    Writes `metrics.jsonl` (+ `tensorboard/`, `wandb/` when asked), orbax checkpoints in
    `checkpoints/` every `checkpoint_every` steps and at the end (the last `keep_checkpoints`
    kept), `internals_step_<N>.npz` every `track_internals_every` steps (and at step 0) on a
    fixed probe batch (the first `probe_size` examples of `eval_split`), and the final weights
    as a canonical checkpoint in `final/` (`spec.save_checkpoint`).  `resume=True` continues
    from the latest checkpoint (a fresh start when there is none).  A NaN/inf loss or gradient
    norm raises `training.NonFiniteLossError` naming the step; the checkpoints written before
    it (all of finite weights) stay.
    Evaluates every `eval_every` steps and at the end.  Multi-host: see `jax_model.sharding`.
    `params`: initial weights, a Flax tree or a canonical flat dict (default:
    `jax_model.init(model_config, train_config.seed)`); ignored when resuming a checkpoint.
    """
    start_time = time.perf_counter()
    output_dir = Path(output_dir)
    compute_dtype(train_config)
    if rng_impl not in RNG_IMPLS:
        raise ValueError(f"rng_impl={rng_impl!r} is unknown; expected one of {RNG_IMPLS}")
    training.check_task(task, model_config)
    mesh = shard.make_mesh() if mesh is None else mesh
    rows, src_len, tgt_len, per_epoch, total = train_data.run_plan(
        task, model_config, train_config, train_split, eval_split)
    shard.check_batch_size(rows, mesh)

    if params is not None and any("/" in str(k) for k in params):
        params = jax_model.from_canonical(params, model_config)
    elif params is not None:  # a copy: the train step donates (deletes) the buffers it gets
        params = jax.tree.map(jnp.array, params)
    state = shard.replicate(create_train_state(model_config, train_config, params), mesh)
    checkpointer = Checkpointer(output_dir / "checkpoints", keep=max(train_config.keep_checkpoints,
                                                                     1))
    start = 0
    latest = checkpointer.latest_step() if resume else None
    if latest is not None:
        state, meta = checkpointer.restore(latest, state)
        training.check_resume(meta, model_config, train_config)
        start = int(_local(state.step))
    # Multi-host: every process trains; only process 0 writes logs, internals and the export.
    primary = jax.process_index() == 0
    log_dir = output_dir if primary else output_dir / f"process_{jax.process_index()}"
    meta = {"model_config": model_config.to_dict(), "train_config": train_config.to_dict()}

    train_step = make_train_step(model_config, train_config, mesh, rng_impl=rng_impl)
    eval_step = make_eval_step(model_config, train_config, mesh)
    decode = make_decode(model_config, tgt_len)
    probe = training.probe_batch(task, eval_split, probe_size, src_len, tgt_len,
                                 model_config.pad_id, train_config.seed)
    shape = (rows, src_len, tgt_len)
    history: list[dict[str, float]] = []
    eval_metrics: dict[str, float] = {}
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_saved = latest

    logger = training.MetricsLogger(
        log_dir, total_steps=total, resume_step=start if resume else None,
        tensorboard=tensorboard and primary, wandb=wandb and primary,
        wandb_project=wandb_project, run_config={**meta["model_config"],
                                                 **meta["train_config"]},
        progress=progress and primary)

    def flush() -> None:
        """Fetch the pending metrics, log them, stop at the first non-finite loss."""
        fetched = _local(pending)
        pending.clear()
        for step, metrics in fetched:
            record = {k: float(v) for k, v in metrics.items()}
            logger.log(step, record)
            history.append({"step": step, **record})
            training.check_finite([(step, record["loss"])], last_saved)
            # NaN gradients with a finite loss still poison the weights of this update
            training.check_finite([(step, record["grad_norm"])], last_saved, "gradient norm")
        if fetched:
            logger.advance(len(fetched), {"loss": fetched[-1][1]["loss"]})
        logger.flush()

    def track(step: int) -> None:
        if not primary:
            return
        inter = capture_internals(state.params, model_config, probe)
        training.save_internals(output_dir, step, inter, {
            "src": probe["src"], "tgt": probe["tgt_in"], "labels": probe["labels"]})

    def run_eval(step: int, log: bool = True) -> dict[str, float]:
        metrics = evaluate(state.params, model_config, train_config, task, eval_split, shape,
                           mesh=mesh, eval_step=eval_step, decode=decode)
        if not log:  # a resumed run that was already finished: its log has this line
            return metrics
        logger.log(step, metrics, split="eval")
        logger.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    try:
        if train_config.track_internals_every and start == 0:
            track(0)
        stream = train_data.step_batches(task, train_split, rows, train_config.grad_accum_steps,
                                         train_config.seed, per_epoch, start)
        for step, micro in stream:
            if step > total:
                break
            fixed = [train_data.pad_batch(b, rows, src_len, tgt_len, model_config.pad_id)
                     for b in micro]
            batch = _to_device(train_data.stack(fixed), mesh, 1)
            state, metrics = train_step(state, batch)
            pending.append((step, metrics))
            last = step == total
            if step % max(train_config.log_every, 1) == 0 or last:
                flush()
            if train_config.checkpoint_every and step % train_config.checkpoint_every == 0 \
                    or last:
                flush()
                checkpointer.save(step, state, {**meta, "step": step})
                last_saved = step
            if train_config.track_internals_every and \
                    step % train_config.track_internals_every == 0:
                track(step)
            if train_config.eval_every and step % train_config.eval_every == 0 and not last:
                eval_metrics = run_eval(step)
        flush()
        eval_metrics = run_eval(total, log=start < total)
        checkpointer.wait()
        final = output_dir / "final"
        if primary:
            spec.save_checkpoint(final, jax_model.to_canonical(_local(state.params)),
                                 model_config)
            training.save_tokenizers(task, final)
    finally:
        checkpointer.close()
        logger.close()
    return TrainResult(params=state.params, history=history, eval_metrics=eval_metrics,
                       steps=int(_local(state.step)), output_dir=output_dir,
                       final_checkpoint=final,
                       seconds=time.perf_counter() - start_time)


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
