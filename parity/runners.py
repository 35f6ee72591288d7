"""How each implementation is run for parity: forward with capture, loss gradients, decoding,
optimizer steps.  Each returns numpy arrays keyed by canonical names, nothing framework-typed,
so `parity.check` only compares dictionaries.

JAX is imported only by the `jax_*` functions and torch only by the others, at call time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from spec import TrainConfig, TransformerConfig

Flat = Mapping[str, np.ndarray]
Batch = Mapping[str, np.ndarray]


# -- JAX (the reference) ---------------------------------------------------------------------
def jax_forward(flat: Flat, config: TransformerConfig, batch: Batch) -> dict[str, np.ndarray]:
    import jax_model

    params = jax_model.from_canonical(flat, config)
    _, inter = jax_model.forward(params, config, batch["src"], batch["tgt_in"], capture=True)
    return inter


def jax_loss_and_grads(flat: Flat, config: TransformerConfig, batch: Batch, smoothing: float
                       ) -> tuple[float, dict[str, np.ndarray]]:
    import jax
    import jax.numpy as jnp

    import jax_model
    from jax_model.train import loss_fn

    params = jax_model.from_canonical(flat, config)
    arrays = {k: jnp.asarray(v) for k, v in batch.items()}
    grad_fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, arrays, config, smoothing)[0]))
    with jax.default_matmul_precision("highest"):
        loss, grads = grad_fn(params)
    return float(loss), jax_model.to_canonical(grads)


def jax_adam_steps(flat: Flat, config: TransformerConfig, batches: list[Batch],
                   train: TrainConfig) -> list[dict[str, np.ndarray]]:
    """Parameters after each of `len(batches)` optimizer steps of the JAX trainer's step."""
    import jax
    import jax.numpy as jnp

    import jax_model
    from jax_model.train import create_train_state, make_train_step

    state = create_train_state(config, train, jax_model.from_canonical(flat, config))
    step = make_train_step(config, train)
    history = []
    with jax.default_matmul_precision("highest"):
        for batch in batches:
            state, _ = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
            history.append(jax_model.to_canonical(state.params))
    return history


# -- PyTorch mirror --------------------------------------------------------------------------
def torch_model_from(flat: Flat, config: TransformerConfig):
    import torch_model

    return torch_model.Transformer(config).load_canonical(flat).eval()


def torch_forward(flat: Flat, config: TransformerConfig, batch: Batch) -> dict[str, np.ndarray]:
    import torch_model

    _, inter = torch_model.forward(torch_model_from(flat, config), batch["src"], batch["tgt_in"])
    return inter


def torch_loss_and_grads(flat: Flat, config: TransformerConfig, batch: Batch, smoothing: float
                         ) -> tuple[float, dict[str, np.ndarray]]:
    import torch
    import torch.nn.functional as F

    import torch_model

    model = torch_model_from(flat, config)
    logits, _ = torch_model.forward(model, batch["src"], batch["tgt_in"], capture=False)
    labels = torch.as_tensor(batch["labels"], dtype=torch.int64)
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=config.pad_id,
                           label_smoothing=smoothing)
    with torch_model.full_precision():
        loss.backward()
    return float(loss.detach()), model.canonical_grads()
