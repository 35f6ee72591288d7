"""The one registry of implementations: their names, aliases, and lazy adapter factories.

Every part that dispatches on "which implementation" (analysis.models, parity, the CLI) uses
these names: "jax" (the Flax reference, `jax_model`), "torch" (the PyTorch mirror,
`torch_model`), "hf" (the transformers model, `hf_bridge`).  The CLI's "pytorch" and
"huggingface" (and "flax", "transformers") are aliases.  Nothing here imports a framework: a
factory imports its package only when called, so a torch-only install never touches jax.

`Adapter` is the protocol every analysis adapter (`jax_model/adapter.py`, `torch_model/adapter.py`,
`hf_bridge/adapter.py`) implements; docs/interfaces.md "Analysis adapters" and "Interventions"
describe each method.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import TransformerConfig
from .interventions import Intervention, Metric

NAMES = ("jax", "torch", "hf")
ALIASES = {"pytorch": "torch", "huggingface": "hf", "flax": "jax", "transformers": "hf"}
PACKAGES = {"jax": "jax_model", "torch": "torch_model", "hf": "hf_bridge"}
ADAPTERS = {"jax": ("jax_model.adapter", "JaxAdapter"),
            "torch": ("torch_model.adapter", "TorchAdapter"),
            "hf": ("hf_bridge.adapter", "HFAdapter")}
TRAINERS = {"jax": "jax_model.train", "torch": "torch_model.train", "hf": "hf_bridge.trainer"}
ADAPTER_API = ("name", "config", "capture", "gradients", "params")  # what duck typing checks


@runtime_checkable
class Adapter(Protocol):
    """A model seen through canonical names (numpy in, numpy out)."""

    name: str
    config: TransformerConfig

    def capture(self, src: Any, tgt: Any) -> dict[str, np.ndarray]: ...

    def gradients(self, src: Any, tgt: Any, labels: Any, label_smoothing: float = 0.1
                  ) -> tuple[float, dict[str, np.ndarray]]: ...

    def params(self) -> dict[str, np.ndarray]: ...

    def with_params(self, flat: Mapping) -> Adapter: ...

    def run(self, src: Any, tgt: Any, interventions: Sequence[Intervention] | None = None,
            capture: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...

    def intermediate_grads(self, src: Any, tgt: Any, metric: Metric,
                           names: Iterable[str] | None = None,
                           interventions: Sequence[Intervention] | None = None
                           ) -> tuple[float, dict[str, np.ndarray]]: ...

    def metric_under(self, src: Any, tgt: Any, metric: Metric,
                     sweep: Sequence[Sequence[Intervention]]) -> np.ndarray: ...

    def decode(self, src: Any, max_len: int, beam_size: int = 1, alpha: float = 1.0,
               interventions: Sequence[Intervention] | None = None) -> np.ndarray: ...


def canonical_name(name: str) -> str:
    """A registry name or alias -> the registry name; ValueError naming the known ones."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise ValueError(f"unknown implementation {name!r}; expected one of {NAMES} (aliases "
                         f"{sorted(ALIASES)})")
    return key


def adapter_class(name: str) -> type:
    """The adapter class of an implementation (imports its package)."""
    module, cls = ADAPTERS[canonical_name(name)]
    return getattr(importlib.import_module(module), cls)


def trainer(name: str) -> Any:
    """The `train(model_config, train_config, task, output_dir, ...)` of an implementation."""
    return importlib.import_module(TRAINERS[canonical_name(name)]).train


def from_canonical(name: str, flat: Mapping, config: TransformerConfig) -> Adapter:
    """An adapter of implementation `name` holding canonical weights `flat`."""
    return adapter_class(name).from_canonical(flat, config)


def importable(names: Iterable[str] = NAMES) -> list[str]:
    """The implementations whose package imports here, in the given order."""
    out = []
    for name in names:
        try:
            importlib.import_module(PACKAGES[canonical_name(name)])
        except ImportError:
            continue
        out.append(canonical_name(name))
    return out


def package_of(obj: object) -> str | None:
    """The registry name of the package an object's class comes from (duck typing, no import)."""
    roots = {package: name for name, package in PACKAGES.items()}
    for cls in type(obj).__mro__:
        root = cls.__module__.split(".")[0]
        if root in roots:
            return roots[root]
    return None
