"""The analysis adapter for the Flax model (docs/interfaces.md "Analysis adapters").

`JaxAdapter(params, config)` gives `analysis` what it needs without `analysis` importing jax:
canonical intermediates, canonical gradients of the training loss, canonical parameters, runs
with interventions, d metric / d intermediate (through the `perturbations` collection that
`capture.tap` adds), batched metric sweeps (vmap over stacked coefficients) and patched
decoding.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spec import TransformerConfig, check_token_array, check_tokens, intermediate_shapes
from spec.interventions import Intervention, Metric
from spec.patching import as_patch, forward_plan

from .api import check_config, forward, from_canonical, to_canonical
from .beam_search import beam_search
from .capture import coefficient_tree, nest
from .decoding import greedy_decode
from .model import Transformer

SWEEP_BYTES = 1 << 28  # activations one vmapped chunk of `metric_under` may hold (256 MiB)
SWEEP_CHUNK = 64       # and at most this many intervention lists per chunk


def metric_value(logits: jax.Array, logit_weights: jax.Array, logprob_weights: jax.Array
                 ) -> jax.Array:
    """`spec.interventions.Metric` in jnp: sum(lw * logits) + sum(pw * log_softmax(logits))."""
    logits = logits.astype(jnp.float32)
    return (jnp.sum(logit_weights * logits)
            + jnp.sum(logprob_weights * jax.nn.log_softmax(logits, axis=-1)))


@functools.lru_cache(maxsize=16)
def _metric_grad(config: TransformerConfig):
    """value_and_grad of a metric with respect to the `perturbations` collection (zeros at
    every canonical intermediate), i.e. d metric / d intermediate."""
    model = Transformer(config)

    def value(perturbations, params, src, tgt, patch_tree, lw, pw):
        variables = {"params": params, "perturbations": perturbations,
                     **({"patch": patch_tree} if patch_tree else {})}
        return metric_value(model.apply(variables, src, tgt), lw, pw)

    return jax.jit(jax.value_and_grad(value))


@functools.lru_cache(maxsize=16)
def _metric_sweep(config: TransformerConfig):
    """The metric of one forward per leading index of the stacked `patch` collection."""
    model = Transformer(config)

    def one(params, src, tgt, patch_tree, lw, pw):
        variables = {"params": params, **({"patch": patch_tree} if patch_tree else {})}
        return metric_value(model.apply(variables, src, tgt), lw, pw)

    return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0, None, None)))


def _check_metric(metric: object, shape: tuple) -> Metric:
    if not isinstance(metric, Metric):
        raise ValueError(f"metric must be a spec.interventions.Metric, got "
                         f"{type(metric).__name__}")
    metric.check(shape)
    return metric


@functools.lru_cache(maxsize=16)
def _loss_and_grad(config: TransformerConfig, label_smoothing: float):
    """One jitted value-and-grad of `jax_model.train.loss_fn` per (config, smoothing)."""
    from .train import loss_fn

    def loss(params, batch):
        value, _ = loss_fn(params, batch, config, label_smoothing)
        return value

    return jax.jit(jax.value_and_grad(loss))


class JaxAdapter:
    """A Flax params tree with its config, seen through canonical names."""

    name = "jax"

    def __init__(self, params: dict, config: TransformerConfig) -> None:
        self.config = check_config(config)
        self._params = params

    @classmethod
    def from_canonical(cls, flat: dict, config: TransformerConfig) -> JaxAdapter:
        """The registry's factory (spec.implementations)."""
        return cls(from_canonical(flat, config), config)

    def capture(self, src: object, tgt: object) -> dict[str, np.ndarray]:
        """Every canonical intermediate of a deterministic forward (numpy, execution order)."""
        _, inter = forward(self._params, self.config, src, tgt, capture=True)
        return inter

    def gradients(self, src: object, tgt: object, labels: object, label_smoothing: float = 0.1
                  ) -> tuple[float, dict[str, np.ndarray]]:
        """(label-smoothed loss, {param name: gradient}) of one deterministic forward."""
        src_np, tgt_np = check_tokens(src, tgt, self.config)
        labels_np = check_token_array("labels", labels, self.config.tgt_vocab_size,
                                      self.config.max_len)
        if labels_np.shape != tgt_np.shape:
            raise ValueError(f"labels has shape {labels_np.shape}, expected tgt's {tgt_np.shape}")
        batch = {"src": jnp.asarray(src_np, jnp.int32), "tgt_in": jnp.asarray(tgt_np, jnp.int32),
                 "labels": jnp.asarray(labels_np, jnp.int32)}
        with jax.default_matmul_precision("highest"):
            loss, grads = _loss_and_grad(self.config, float(label_smoothing))(self._params, batch)
        return float(loss), to_canonical(grads)

    # -- interventions (spec.interventions; docs/interfaces.md "Interventions") ------------
    def _ids(self, src: object, tgt: object) -> tuple[np.ndarray, np.ndarray]:
        return check_tokens(src, tgt, self.config)

    def run(self, src: object, tgt: object, interventions: Sequence[Intervention] | None = None,
            capture: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits [b, t, v], {name: array}) of one deterministic forward with the
        interventions applied where each value is made."""
        logits, inter = forward(self._params, self.config, src, tgt, capture=capture,
                                patch=as_patch(interventions))
        return np.asarray(logits), inter

    def intermediate_grads(self, src: object, tgt: object, metric: Metric,
                           names: Iterable[str] | None = None,
                           interventions: Sequence[Intervention] | None = None
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(metric value, {name: d metric / d intermediate}) in canonical shapes, each taken
        with respect to the value after its intervention (the perturbation is added after)."""
        src_np, tgt_np = self._ids(src, tgt)
        shapes = intermediate_shapes(self.config, *src_np.shape, tgt_np.shape[1])
        if names is None:
            names = list(shapes)
        names = list(names)
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise ValueError(f"names {unknown} are not canonical intermediates of this model "
                             f"(e.g. {list(shapes)[:3]})")
        metric = _check_metric(metric, (*tgt_np.shape, self.config.tgt_vocab_size))
        _, coeffs = forward_plan(as_patch(interventions), self.config, *src_np.shape,
                                 tgt_np.shape[1])
        zeros = nest({n: jnp.zeros(shape, jnp.float32) for n, shape in shapes.items()})
        with jax.default_matmul_precision("highest"):
            value, grads = _metric_grad(self.config)(
                zeros, self._params, jnp.asarray(src_np, jnp.int32),
                jnp.asarray(tgt_np, jnp.int32), coefficient_tree(coeffs) if coeffs else None,
                metric.logit_weights, metric.logprob_weights)
        flat = traverse_util.flatten_dict(grads, sep="/")
        return float(value), {n: np.asarray(flat[n]) for n in names}

    def metric_under(self, src: object, tgt: object, metric: Metric,
                     sweep: Sequence[Sequence[Intervention]]) -> np.ndarray:
        """[n] float64: the metric under each intervention list of `sweep`.

        Lists that rewrite the same names with the same coefficient shapes are stacked and run
        as one vmapped forward, in chunks of at most `SWEEP_CHUNK` lists and `SWEEP_BYTES` of
        activations (the last chunk is padded, so every chunk has one compiled shape)."""
        src_np, tgt_np = self._ids(src, tgt)
        metric = _check_metric(metric, (*tgt_np.shape, self.config.tgt_vocab_size))
        shapes = intermediate_shapes(self.config, *src_np.shape, tgt_np.shape[1])
        per_run = 4 * sum(int(np.prod(s)) for s in shapes.values())
        chunk = int(max(1, min(SWEEP_CHUNK, SWEEP_BYTES // max(per_run, 1))))
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, interventions in enumerate(sweep):
            _, coeffs = forward_plan(as_patch(interventions), self.config, *src_np.shape,
                                     tgt_np.shape[1])
            key = tuple((n, a.shape, b.shape) for n, (a, b) in sorted(coeffs.items()))
            groups.setdefault(key, []).append((i, coeffs))
        out = np.zeros(len(sweep), np.float64)
        fn = _metric_sweep(self.config)
        src_j, tgt_j = jnp.asarray(src_np, jnp.int32), jnp.asarray(tgt_np, jnp.int32)
        with jax.default_matmul_precision("highest"):
            for members in groups.values():
                for start in range(0, len(members), chunk):
                    part = members[start:start + chunk]
                    padded = part + [part[-1]] * (min(chunk, len(members)) - len(part))
                    stacked = {n: tuple(np.stack([c[n][j] for _, c in padded]) for j in (0, 1))
                               for n in padded[0][1]}
                    tree = (coefficient_tree(stacked) if stacked else
                            {"_": jnp.zeros((len(padded),))})
                    values = fn(self._params, src_j, tgt_j, tree, metric.logit_weights,
                                metric.logprob_weights)
                    for (i, _), v in zip(part, np.asarray(values)):
                        out[i] = float(v)
        return out

    def decode(self, src: object, max_len: int, beam_size: int = 1, alpha: float = 1.0,
               interventions: Sequence[Intervention] | None = None) -> np.ndarray:
        """tokens [b, max_len] (greedy when beam_size == 1), the interventions applied at every
        step (positions = the step's query position)."""
        patch = as_patch(interventions)
        if beam_size == 1:
            return greedy_decode(self._params, self.config, src, max_len, patch=patch)
        return beam_search(self._params, self.config, src, beam_size, max_len, alpha,
                           patch=patch)

    def params(self) -> dict[str, np.ndarray]:
        return to_canonical(self._params)

    def with_params(self, flat: dict) -> JaxAdapter:
        """The same model with other canonical weights (e.g. after an optimizer step)."""
        return JaxAdapter(from_canonical(flat, self.config), self.config)
