"""Canonical weights -> one implementation's model, seen as an analysis adapter that decodes.

Each framework is imported only when its version is asked for, so `--version jax` needs no
torch and `--version pytorch` needs no jax (except to make the initial weights, see
`initial_weights`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spec import TransformerConfig

# The adapter names (`analysis` / docs/interfaces.md) of the command-line versions.
ADAPTER_NAMES = {"jax": "jax", "pytorch": "torch", "huggingface": "hf"}


@dataclasses.dataclass
class LoadedModel:
    """One implementation holding some weights: `adapter` for analysis (capture, gradients,
    params) and `decode(src [b, s], beam_size, max_len) -> [b, max_len]` numpy tokens."""

    version: str
    adapter: Any
    decode: Callable[[np.ndarray, int, int], np.ndarray]


def initial_weights(config: TransformerConfig, seed: int) -> dict[str, np.ndarray]:
    """The canonical initial weights of every version of a run: the Flax reference's
    `jax_model.init(config, seed)`, or torch's own init when jax is not installed."""
    try:
        import jax_model
    except ImportError:
        import torch_model

        return torch_model.init(config, seed).to_canonical()
    return jax_model.to_canonical(jax_model.init(config, seed))


def load(version: str, flat: Mapping[str, Any], config: TransformerConfig) -> LoadedModel:
    """`version` ("jax", "pytorch" or "huggingface") holding canonical weights `flat`."""
    if version == "jax":
        return _jax(flat, config)
    if version == "pytorch":
        return _torch(flat, config)
    if version == "huggingface":
        return _hf(flat, config)
    raise ValueError(f"version={version!r} is unknown: expected one of {tuple(ADAPTER_NAMES)}")


def _jax(flat: Mapping[str, Any], config: TransformerConfig) -> LoadedModel:
    import jax
    import jax.numpy as jnp

    import jax_model
    from jax_model.adapter import JaxAdapter

    params = jax_model.from_canonical(dict(flat), config)

    def decode(src: np.ndarray, beam_size: int, max_len: int) -> np.ndarray:
        src = jnp.asarray(src, jnp.int32)
        with jax.default_matmul_precision("highest"):
            if beam_size == 1:
                out = jax_model.greedy_decode(params, config, src, max_len)
            else:
                out = jax_model.beam_search(params, config, src, beam_size, max_len)
        return np.asarray(out)

    return LoadedModel("jax", JaxAdapter(params, config), decode)


def _torch(flat: Mapping[str, Any], config: TransformerConfig) -> LoadedModel:
    import torch_model
    from torch_model import decoding
    from torch_model.adapter import TorchAdapter

    model = torch_model.Transformer(config).load_canonical(dict(flat)).eval()

    def decode(src: np.ndarray, beam_size: int, max_len: int) -> np.ndarray:
        if beam_size == 1:
            out = decoding.greedy_decode(model, src, max_len)
        else:
            out = decoding.beam_search(model, src, beam_size, max_len)
        return out.cpu().numpy()

    return LoadedModel("pytorch", TorchAdapter(model), decode)


def _hf(flat: Mapping[str, Any], config: TransformerConfig) -> LoadedModel:
    from hf_bridge import TransformerLabForConditionalGeneration, generate_tokens
    from hf_bridge.adapter import HFAdapter

    model = TransformerLabForConditionalGeneration.from_canonical(dict(flat), config)

    def decode(src: np.ndarray, beam_size: int, max_len: int) -> np.ndarray:
        return generate_tokens(model, src, max_len, beam_size=beam_size).cpu().numpy()

    return LoadedModel("huggingface", HFAdapter(model), decode)
