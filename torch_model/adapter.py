"""The analysis adapter for the PyTorch model (docs/interfaces.md "Analysis adapters").

`TorchAdapter(model)` gives `analysis` canonical intermediates (from the taps), canonical
gradients of the training loss and canonical parameters, without `analysis` importing torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from spec import check_token_array, check_tokens

from .api import forward, model_device
from .loss import smoothed_loss
from .model import Transformer


@contextlib.contextmanager
def own_grads(model: torch.nn.Module) -> Iterator[None]:
    """Start from empty `.grad` buffers and put the caller's back afterwards, so an analysis
    backward pass never mixes with (or clobbers) gradients of a training loop."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g


class TorchAdapter:
    """A `torch_model.Transformer` seen through canonical names."""

    name = "torch"

    def __init__(self, model: Transformer) -> None:
        if not isinstance(model, Transformer):
            raise ValueError(f"model must be a torch_model.Transformer, got {type(model).__name__}")
        self.model = model
        self.config = model.config

    def capture(self, src: object, tgt: object) -> dict[str, np.ndarray]:
        with torch.no_grad():
            _, inter = forward(self.model, src, tgt, capture=True)
        return inter

    def gradients(self, src: object, tgt: object, labels: object, label_smoothing: float = 0.1
                  ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {param name: gradient}) of one deterministic forward.

        The model's own `.grad` buffers are put back afterwards, so a training loop that calls
        this between its backward and its optimizer step is not disturbed."""
        _, tgt_np = check_tokens(src, tgt, self.config)
        labels_np = check_token_array("labels", labels, self.config.tgt_vocab_size,
                                      self.config.max_len)
        if labels_np.shape != tgt_np.shape:
            raise ValueError(f"labels has shape {labels_np.shape}, expected tgt's {tgt_np.shape}")
        with own_grads(self.model):
            logits, _ = forward(self.model, src, tgt, capture=False)
            target = torch.as_tensor(labels_np, dtype=torch.int64, device=model_device(self.model))
            loss = smoothed_loss(logits, target, self.config.pad_id, label_smoothing)
            loss.backward()
            grads = self.model.canonical_grads()
        return float(loss.detach()), grads

    def params(self) -> dict[str, np.ndarray]:
        return self.model.to_canonical()

    def with_params(self, flat: dict) -> TorchAdapter:
        """A new model of the same config holding other canonical weights."""
        model = Transformer(self.config).to(model_device(self.model))
        return TorchAdapter(model.load_canonical(flat))
