"""The analysis adapter for the Flax model (docs/interfaces.md "Analysis adapters").

`JaxAdapter(params, config)` gives `analysis` what it needs without `analysis` importing jax:
canonical intermediates, canonical gradients of the training loss, canonical parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spec import TransformerConfig, check_token_array, check_tokens

from .api import check_config, forward, from_canonical, to_canonical


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

    def params(self) -> dict[str, np.ndarray]:
        return to_canonical(self._params)

    def with_params(self, flat: dict) -> JaxAdapter:
        """The same model with other canonical weights (e.g. after an optimizer step)."""
        return JaxAdapter(from_canonical(flat, self.config), self.config)
