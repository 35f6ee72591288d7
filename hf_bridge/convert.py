"""Canonical weights <-> Hugging Face's own seq2seq models: Marian, FSMT, BART, mBART, M2M100,
Pegasus.

The family tables (what each family fixes in the config, HF name <-> canonical name with every
transpose) are framework-free in `spec.families`, shared with `jax_model.from_pretrained` and
`torch_model.from_pretrained`; this module only moves tensors in and out of HF model instances.
`to_hf` builds eager attention (SDPA returns no attention weights and treats a fully masked row
differently from the contract) and sets no forced tokens.  Compare with an HF model by passing
`attention_mask = input_ids != pad_id` (HF masks by the mask it is given, never by token id).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import transformers

from spec import TransformerConfig, check_params, to_numpy
from spec.families import (
    FAMILIES,
    check_positions,
    family_compatible,
    from_state,
    get_family,
    hf_config_kwargs,
    to_state,
    weight_map,
)

__all__ = ["FAMILIES", "family_compatible", "family_of_model", "from_hf", "hf_config", "to_hf",
           "weight_map"]


def hf_config(config: TransformerConfig, family: str, attn_implementation: str = "eager",
              **overrides: Any) -> transformers.PretrainedConfig:
    """The family's HF config for a canonical config it can express (ValueError otherwise)."""
    fam = get_family(family)
    kwargs = {**hf_config_kwargs(config, family), **overrides}
    return getattr(transformers, fam.config_class)(attn_implementation=attn_implementation,
                                                   **kwargs)


def family_of_model(model: Any) -> str:
    """The family of an HF model instance (its config's model_type and its class must agree)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"model_type={model_type!r} ({type(model).__name__}) is not supported: "
                         f"expected one of {sorted(FAMILIES)}")
    cls = getattr(transformers, FAMILIES[model_type].model_class)
    if not isinstance(model, cls):
        raise ValueError(f"model must be a transformers {cls.__name__} for model_type "
                         f"{model_type!r}, got {type(model).__name__}")
    return model_type


def _numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().to(torch.float32).cpu().numpy()
            for name, t in model.state_dict().items()}


def from_hf(model: Any, output_bias: bool | None = None, ignore_training_only: bool = False
            ) -> tuple[dict[str, np.ndarray], TransformerConfig]:
    """`(flat, config)`: canonical float32 weights and config of any supported HF model.

    `output_bias=None` keeps `final_logits_bias` as `output/bias` only when it is non-zero.
    ValueError naming the field for a model type or config the canonical model cannot compute.
    """
    family_of_model(model)  # a supported model type, of its family's class
    return from_state(model.config.to_dict(), _numpy_state(model), output_bias,
                      ignore_training_only)


def to_hf(flat: dict[str, Any], config: TransformerConfig, family: str,
          attn_implementation: str = "eager", **overrides: Any) -> Any:
    """The family's HF seq2seq model (eval mode, float32) holding the canonical weights."""
    fam = get_family(family)
    family_compatible(config, family)
    check_params(flat, config)
    model = getattr(transformers, fam.model_class)(
        hf_config(config, family, attn_implementation, **overrides))
    live = model.state_dict()  # tied names share storage, so every alias is written
    check_positions(_numpy_state(model), config, family)  # HF's own sinusoids are the spec's
    state = to_state({k: np.asarray(to_numpy(v), np.float32) for k, v in flat.items()}, config,
                     family, {k: tuple(v.shape) for k, v in live.items()})
    with torch.no_grad():
        for name, value in state.items():
            live[name].copy_(torch.from_numpy(value))
    return model.eval()
