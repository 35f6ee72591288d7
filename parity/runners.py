"""How each implementation is run for parity: forward with capture, loss gradients, decoding,
optimizer steps.  Each returns numpy arrays keyed by canonical names, nothing framework-typed,
so `parity.check` only compares dictionaries.

JAX is imported only by the `jax_*` functions and torch only by the others, at call time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from spec import TrainConfig, TransformerConfig

Flat = Mapping[str, np.ndarray]
Batch = Mapping[str, np.ndarray]


def together(*thunks: Callable[[], Any]) -> list[Any]:
    """Run the thunks side by side in threads; their results in order (the first error is
    raised).  XLA compiles in its own threads without the GIL, so the JAX reference compiles
    while torch and HF compute; torch, HF and JAX are each given their own models."""
    if len(thunks) == 1:
        return [thunks[0]()]
    with ThreadPoolExecutor(len(thunks)) as pool:
        return [f.result() for f in [pool.submit(thunk) for thunk in thunks]]


_jax_locks: dict[tuple, threading.Lock] = {}
_jax_locks_guard = threading.Lock()


def _once_per_program(*key: Any) -> threading.Lock:
    """A lock per JAX program (config and shapes): two threads that need the same program
    compile it once, the second waiting for the first's compilation cache entry."""
    with _jax_locks_guard:
        return _jax_locks.setdefault(key, threading.Lock())


# -- JAX (the reference) ---------------------------------------------------------------------
def jax_forward(flat: Flat, config: TransformerConfig, batch: Batch) -> dict[str, np.ndarray]:
    import jax_model

    params = jax_model.from_canonical(flat, config)
    with _once_per_program("forward", config, batch["src"].shape, batch["tgt_in"].shape):
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
            micro = {k: jnp.asarray(v)[None] for k, v in batch.items()}  # [accum=1, b, len]
            state, _ = step(state, micro)
            history.append(jax_model.to_canonical(state.params))
    return history


# -- PyTorch mirror --------------------------------------------------------------------------
def torch_model_from(flat: Flat, config: TransformerConfig):
    import torch_model

    return torch_model.Transformer(config).load_canonical(flat).eval()


def torch_adam_steps(flat: Flat, config: TransformerConfig, batches: list[Batch],
                     train: TrainConfig) -> list[dict[str, np.ndarray]]:
    """Parameters after each optimizer step of the torch trainer's own step function."""
    import torch_model
    from torch_model.train import create_train_state, train_step

    state = create_train_state(config, train, flat, device="cpu")
    history = []
    with torch_model.full_precision():
        for batch in batches:
            train_step(state, [batch], config, train)
            history.append(state.model.to_canonical())
    return history


def torch_forward(flat: Flat, config: TransformerConfig, batch: Batch) -> dict[str, np.ndarray]:
    import torch_model

    _, inter = torch_model.forward(torch_model_from(flat, config), batch["src"], batch["tgt_in"])
    return inter


def torch_loss_and_grads(flat: Flat, config: TransformerConfig, batch: Batch, smoothing: float
                         ) -> tuple[float, dict[str, np.ndarray]]:
    import torch

    import torch_model
    from torch_model.loss import smoothed_loss

    model = torch_model_from(flat, config)
    logits, _ = torch_model.forward(model, batch["src"], batch["tgt_in"], capture=False)
    labels = torch.as_tensor(batch["labels"], dtype=torch.int64)
    loss = smoothed_loss(logits, labels, config.pad_id, smoothing)
    with torch_model.full_precision():
        loss.backward()
    return float(loss.detach()), model.canonical_grads()


# -- Hugging Face model over the mirror ------------------------------------------------------
def hf_model_from(flat: Flat, config: TransformerConfig, smoothing: float = 0.1):
    from hf_bridge import TransformerLabForConditionalGeneration

    return TransformerLabForConditionalGeneration.from_canonical(flat, config,
                                                                 label_smoothing=smoothing)


def _hf_attention_outputs(out, config: TransformerConfig) -> dict[str, np.ndarray]:
    """HF's own `encoder_attentions` / `decoder_attentions` / `cross_attentions` under the
    canonical names they correspond to, prefixed `hf_output:` so they never shadow a tap."""
    named = {}
    for field, side, sub in (("encoder_attentions", "encoder", "self_attn"),
                             ("decoder_attentions", "decoder", "self_attn"),
                             ("cross_attentions", "decoder", "cross_attn")):
        for i, weights in enumerate(getattr(out, field) or ()):
            named[f"hf_output:{side}/layer_{i}/{sub}/weights"] = weights.detach().numpy()
    return named


def hf_forward(flat: Flat, config: TransformerConfig, batch: Batch) -> dict[str, np.ndarray]:
    """The taps (same canonical names as torch_model) plus HF's own attention outputs."""
    import torch

    import torch_model

    model = hf_model_from(flat, config)
    src = torch.as_tensor(batch["src"], dtype=torch.int64)
    tgt = torch.as_tensor(batch["tgt_in"], dtype=torch.int64)
    with torch.no_grad(), torch_model.full_precision(), torch_model.capture(model) as inter:
        out = model(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    return {**inter, **_hf_attention_outputs(out, config)}


def hf_loss_and_grads(flat: Flat, config: TransformerConfig, batch: Batch, smoothing: float
                      ) -> tuple[float, dict[str, np.ndarray]]:
    """HF's own loss (`labels=`) and the gradient of every canonical parameter."""
    import torch

    import torch_model

    model = hf_model_from(flat, config, smoothing)
    as_ids = {k: torch.as_tensor(v, dtype=torch.int64) for k, v in batch.items()}
    with torch_model.full_precision():
        out = model(input_ids=as_ids["src"], decoder_input_ids=as_ids["tgt_in"],
                    labels=as_ids["labels"])
        out.loss.backward()
    return float(out.loss.detach()), model.transformer.canonical_grads()


# -- HF's own MarianMT -----------------------------------------------------------------------
def marian_forward(flat: Flat, config: TransformerConfig, batch: Batch) -> dict[str, np.ndarray]:
    """MarianMT's outputs under the canonical names they equal: logits, the per-layer attention
    weights, and the hidden states (embedding output, each layer's output, the stack output)."""
    import torch

    from hf_bridge.marian import to_marian

    model = to_marian(flat, config)
    src = torch.as_tensor(batch["src"], dtype=torch.int64)
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=(src != config.pad_id).long(),
                    decoder_input_ids=torch.as_tensor(batch["tgt_in"], dtype=torch.int64),
                    output_attentions=True, output_hidden_states=True)
    named = {k.removeprefix("hf_output:"): v
             for k, v in _hf_attention_outputs(out, config).items()}
    for field, side in (("encoder_hidden_states", "encoder"),
                        ("decoder_hidden_states", "decoder")):
        states = getattr(out, field)
        named[f"{side}/embed/output"] = states[0].numpy()
        for i, state in enumerate(states[1:]):
            named[f"{side}/layer_{i}/ffn_norm/output"] = state.numpy()  # post-LN layer output
    named["encoder/output"] = out.encoder_last_hidden_state.numpy()
    named["logits"] = out.logits.numpy()
    return named


# -- decoding --------------------------------------------------------------------------------
def jax_decode(flat: Flat, config: TransformerConfig, src: np.ndarray, max_len: int,
               beam_size: int = 1, alpha: float = 1.0, capture: bool = False):
    import jax_model

    params = jax_model.from_canonical(flat, config)
    if beam_size == 1:
        out = jax_model.greedy_decode(params, config, src, max_len, capture=capture)
    else:
        out = jax_model.beam_search(params, config, src, beam_size, max_len, alpha,
                                    capture=capture)
    tokens, inter = out if capture else (out, {})
    return np.asarray(tokens), inter


def torch_decode(flat: Flat, config: TransformerConfig, src: np.ndarray, max_len: int,
                 beam_size: int = 1, alpha: float = 1.0, capture: bool = False):
    import torch_model

    model = torch_model_from(flat, config)
    if beam_size == 1:
        out = torch_model.greedy_decode(model, src, max_len, capture=capture)
    else:
        out = torch_model.beam_search(model, src, beam_size, max_len, alpha, capture=capture)
    tokens, inter = out if capture else (out, {})
    return tokens.numpy(), inter


def hf_generate(flat: Flat, config: TransformerConfig, src: np.ndarray, max_len: int,
                beam_size: int = 1, alpha: float = 1.0) -> np.ndarray:
    """HF `generate()` with the contract's settings, in the contract's token layout."""
    from hf_bridge.decoding import generate_tokens

    return generate_tokens(hf_model_from(flat, config), src, max_len, beam_size, alpha).numpy()


def cached_vs_full(flat: Flat, config: TransformerConfig, src: np.ndarray, tokens: np.ndarray,
                   steps: Mapping[str, np.ndarray], forward) -> tuple[dict, dict]:
    """Per-step attention weights of a cached greedy decode against one full forward pass over
    the decoded sequence: step n of the cache must equal row n of the full causal pass.

    Returns two dicts keyed `{name}` -> `[b, h, n_steps, keys]` (cached, full)."""
    tgt_in = np.concatenate([np.full((src.shape[0], 1), config.bos_id), tokens[:, :-1]], axis=1)
    full = forward(flat, config, {"src": src, "tgt_in": tgt_in.astype(np.int32)})
    cached, reference = {}, {}
    for name, per_step in steps.items():
        if not name.endswith("/weights"):
            continue
        n = per_step.shape[0]                                   # [n, b, h, 1, keys']
        keys = full[name].shape[-1] if "cross_attn" in name else n
        cached[name] = np.moveaxis(per_step[:, :, :, 0, :keys], 0, 2)  # [b, h, n, keys]
        reference[name] = full[name][:, :, :n, :keys]
    return cached, reference
