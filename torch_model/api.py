"""The checked entry points: `init` and `forward` (docs/architecture.md "Entry points").

`forward` validates the ids (`spec.check_tokens`), runs deterministic unless asked otherwise
whatever the module's train/eval mode, forces full float32 matmul precision, applies `patch`
(`{canonical_name: fn(tensor) -> tensor or spec Intervention}`, spec/patching.py) at the taps,
and returns the logits with the captured intermediates as numpy arrays keyed by canonical name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from spec import TransformerConfig, check_tokens
from spec.patching import Coefficients, forward_plan

from .model import Transformer
from .taps import capture as capture_taps
from .taps import patch as patch_taps


def init(config: TransformerConfig, seed: int = 0) -> Transformer:
    """A freshly initialised `Transformer`; the same seed gives the same weights.

    Uses its own generator, so the global torch RNG is left untouched.
    """
    model = Transformer(config)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Float32 matmuls at full precision (TF32 off) inside; the previous settings after."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.set_float32_matmul_precision(precision)


@contextlib.contextmanager
def mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in train (dropout on) or eval mode; restore each one's mode after."""
    before = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for m, was_training in before.items():
            m.training = was_training


def as_ids(x: object, device: torch.device) -> torch.Tensor:
    """Checked numpy / torch ids -> int64 tensor on `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.int64)
    return torch.as_tensor(np.asarray(x), dtype=torch.int64, device=device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def affine(scale: np.ndarray, shift: np.ndarray, device: torch.device
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """An intervention's rewrite `value * scale + shift` as a torch function."""
    a = torch.from_numpy(np.ascontiguousarray(scale)).to(device)
    b = torch.from_numpy(np.ascontiguousarray(shift)).to(device)
    return lambda value: value * a.to(value.dtype) + b.to(value.dtype)


def patch_functions(fns: Mapping[str, Callable], coeffs: Coefficients, device: torch.device
                    ) -> dict[str, Callable]:
    """A checked plan (spec.patching) -> `{name: torch fn}` for `taps.patch`."""
    out = dict(fns)
    out.update({name: affine(a, b, device) for name, (a, b) in coeffs.items()})
    return out


def patched(model: nn.Module, fns: Mapping[str, Callable]) -> contextlib.AbstractContextManager:
    """`taps.patch` when there is something to patch; no hook at all otherwise."""
    return patch_taps(model, fns) if fns else contextlib.nullcontext()


def forward(model: Transformer, src: object, tgt: object, capture: bool = True,
            patch: Mapping | None = None, deterministic: bool = True
            ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """src [b, s], tgt [b, t] ids (numpy or torch) -> (logits [b, t, v], {name: array}).

    Gradients flow through the returned logits; `inter` is empty when `capture=False` (and no
    hook is registered then).  `patch` maps canonical names to torch functions of the value
    (same shape back) or to `spec.interventions.Intervention`s; everything downstream, and
    capture, sees the new value.  ValueError naming `src` or `tgt` for bad ids (spec.inputs),
    naming the patch name for an unknown name or a wrong returned shape.
    """
    src_np, tgt_np = check_tokens(src, tgt, model.config)
    device = model_device(model)
    fns = patch_functions(*forward_plan(patch, model.config, *src_np.shape, tgt_np.shape[1]),
                          device)
    src_t, tgt_t = as_ids(src, device), as_ids(tgt, device)
    with full_precision(), mode(model, not deterministic), patched(model, fns):
        if not capture:
            return model(src_t, tgt_t), {}
        with capture_taps(model) as inter:
            logits = model(src_t, tgt_t)
        return logits, dict(inter)
