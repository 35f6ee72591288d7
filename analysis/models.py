"""Resolve "a model" to an analysis adapter, importing frameworks only when needed.

Accepted (docs/interfaces.md "Analysis adapters"):
- an adapter already (anything with `name`, `config`, `capture`, `gradients`, `params`);
- a `(params, config)` pair: a Flax params tree (-> `jax_model.adapter.JaxAdapter`) or a
  canonical flat dict (`{"encoder/...": array}`, -> the first importable of jax, torch);
- a `torch_model.Transformer` (-> `torch_model.adapter.TorchAdapter`);
- a `hf_bridge` model (-> `hf_bridge.adapter.HFAdapter`);
- a checkpoint folder (`spec.load_checkpoint`; -> the first importable of jax, torch).
Recognition is by duck typing and by the module a class comes from, so `analysis` imports
no framework until the model in hand needs it.  Implementation names, aliases and adapter
factories come from the one registry, `spec.implementations`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from spec import TransformerConfig, load_checkpoint
from spec import implementations as registry

ADAPTER_API = registry.ADAPTER_API
PREFERENCE = ("jax", "torch")


def is_adapter(obj: object) -> bool:
    return all(hasattr(obj, attr) for attr in ADAPTER_API) and not isinstance(obj, type)


def adapter_from_canonical(flat: Mapping, config: TransformerConfig,
                           prefer: tuple[str, ...] = PREFERENCE):
    """Canonical weights -> an adapter of the first implementation (registry name or alias)
    that imports."""
    errors = []
    for name in prefer:
        name = registry.canonical_name(name)
        try:
            return registry.from_canonical(name, flat, config)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ImportError(f"no model implementation is importable ({'; '.join(errors)})")


def resolve_model(model: object, config: TransformerConfig | None = None):
    """Any accepted model (see the module docstring) -> its adapter."""
    if is_adapter(model):
        return model
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], TransformerConfig):
        model, config = model
    if isinstance(model, (str, os.PathLike)):
        flat, config = load_checkpoint(model)
        return adapter_from_canonical(flat, config)
    if registry.package_of(model) in ("hf", "torch"):
        return registry.adapter_class(registry.package_of(model))(model)
    if isinstance(model, Mapping):
        if config is None:
            raise ValueError("a parameter dict needs its config: pass (params, config) or "
                             "config=")
        if any("/" in str(k) for k in model):  # canonical flat names
            return adapter_from_canonical(model, config)
        return registry.adapter_class("jax")(model, config)
    raise ValueError(
        f"model of type {type(model).__name__} is not supported: expected an analysis adapter, "
        f"a (params, config) pair, a torch_model.Transformer, a hf_bridge model or a "
        f"checkpoint folder")
