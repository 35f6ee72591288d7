"""The checked entry points: `init` and `forward` (DESIGN.md "Entry points").

`forward` validates the ids (`spec.check_tokens`), runs deterministic unless asked otherwise
whatever the module's train/eval mode, forces full float32 matmul precision, and returns the
logits with the captured intermediates as numpy arrays keyed by canonical name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from spec import TransformerConfig, check_tokens

from .model import Transformer
from .taps import capture as capture_taps


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


def forward(model: Transformer, src: object, tgt: object, capture: bool = True,
            deterministic: bool = True) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """src [b, s], tgt [b, t] ids (numpy or torch) -> (logits [b, t, v], {name: array}).

    Gradients flow through the returned logits; `inter` is empty when `capture=False` (and no
    hook is registered then).  ValueError naming `src` or `tgt` for bad ids (see spec.inputs).
    """
    check_tokens(src, tgt, model.config)
    device = model_device(model)
    src_t, tgt_t = as_ids(src, device), as_ids(tgt, device)
    with full_precision(), mode(model, not deterministic):
        if not capture:
            return model(src_t, tgt_t), {}
        with capture_taps(model) as inter:
            logits = model(src_t, tgt_t)
        return logits, dict(inter)
