"""The one mapping between torch parameters and canonical names (flat, Dense kernels [in, out]).

Module paths already are the canonical names, so the mapping is by module type:
nn.Linear `weight` [out, in] <-> `kernel` [in, out] (transposed), `bias` <-> `bias`;
nn.Embedding `weight` <-> `embedding`; LayerNorm `weight` <-> `scale`, `bias` <-> `bias`;
and a module of our own that holds other parameters lists them itself (`canonical_params()`:
a learned `Embed.positions` <-> `{side}/embed/positions`; the root `Output` `weight` [v, m] <->
`output/kernel` [m, v] (transposed), `bias` <-> `output/bias`).  This module imports nothing
from `model.py`, so the two do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from spec import check_params, param_shapes, to_numpy


def canonical_parameters(model: nn.Module) -> dict[str, tuple[nn.Parameter, bool]]:
    """canonical name -> (torch parameter, whether the canonical array is its transpose)."""
    entries: dict[str, tuple[nn.Parameter, bool]] = {}
    for path, module in model.named_modules():
        prefix = path.replace(".", "/")
        if isinstance(module, nn.Linear):
            entries[f"{prefix}/kernel"] = (module.weight, True)  # [out, in] -> [in, out]
            entries[f"{prefix}/bias"] = (module.bias, False)
        elif isinstance(module, nn.Embedding):
            entries[f"{prefix}/embedding"] = (module.weight, False)
        elif isinstance(module, nn.LayerNorm):
            entries[f"{prefix}/scale"] = (module.weight, False)
            entries[f"{prefix}/bias"] = (module.bias, False)
        elif hasattr(module, "canonical_params"):
            for suffix, entry in module.canonical_params().items():
                entries[f"{prefix}/{suffix}"] = entry
    expected = param_shapes(model.config)
    if set(entries) != set(expected):
        raise AssertionError(f"torch parameters do not map onto the canonical names: "
                             f"extra {sorted(set(entries) - set(expected))}, "
                             f"missing {sorted(set(expected) - set(entries))}")
    return {name: entries[name] for name in expected}


def _export(t: torch.Tensor, transpose: bool) -> np.ndarray:
    """A float32 numpy copy: never a view of the live parameter, which training mutates."""
    t = t.detach().to(torch.float32).cpu()
    return np.array((t.T if transpose else t).numpy(), order="C", copy=True)


def load_canonical(model: nn.Module, flat: Mapping[str, object]) -> None:
    """Copy canonical arrays (numpy, torch or jax) into the model, strictly.

    A missing, unexpected, mis-shaped or non-float name raises one ValueError listing them all
    (`spec.check_params`, the same check as the checkpoint loader); nothing is copied then.
    """
    check_params(flat, model.config)
    with torch.no_grad():
        for name, (param, transpose) in canonical_parameters(model).items():
            value = torch.tensor(np.asarray(to_numpy(flat[name]), dtype=np.float32))
            param.copy_(value.T if transpose else value)  # kernel [in, out] -> weight [out, in]


def to_canonical(model: nn.Module) -> dict[str, np.ndarray]:
    """{canonical name: float32 numpy array}, Dense kernels [in, out]."""
    return {name: _export(param, transpose)
            for name, (param, transpose) in canonical_parameters(model).items()}


def canonical_grads(model: nn.Module) -> dict[str, np.ndarray]:
    """The `.grad` of every parameter in canonical layout (call after `backward`)."""
    entries = canonical_parameters(model)
    missing = [name for name, (param, _) in entries.items() if param.grad is None]
    if missing:
        raise ValueError(f"no gradient for {missing}; run loss.backward() first")
    return {name: _export(param.grad, transpose) for name, (param, transpose) in entries.items()}
