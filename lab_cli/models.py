"""Canonical weights -> one implementation's model, seen as its adapter (the registry in
`spec.implementations`, the same names as analysis and parity), which also decodes.

Each framework is imported only when its version is asked for, so `--version jax` needs no
torch and `--version pytorch` needs no jax (except to make the initial weights, see
`initial_weights`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spec import TransformerConfig, implementations


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
    """`version` (a registry name or alias: "jax", "pytorch", "huggingface", ...) holding
    canonical weights `flat`; it decodes through its adapter (`spec.implementations`)."""
    adapter = implementations.from_canonical(version, dict(flat), config)

    def decode(src: np.ndarray, beam_size: int, max_len: int) -> np.ndarray:
        return np.asarray(adapter.decode(src, max_len, beam_size=beam_size))

    return LoadedModel(version, adapter, decode)
