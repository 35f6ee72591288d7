"""The analysis adapter for the Hugging Face model (docs/interfaces.md "Analysis adapters").

`HFAdapter(model)` runs `TransformerLabForConditionalGeneration.forward` itself (HF's inputs,
HF's loss) and reads the canonical intermediates from the torch mirror's taps, which the HF
model shares.
"""

from __future__ import annotations

import numpy as np
import torch

import torch_model
from spec import check_token_array, check_tokens
from torch_model.adapter import own_grads
from torch_model.api import as_ids, full_precision, mode, model_device
from torch_model.loss import smoothed_loss

from .modeling import TransformerLabForConditionalGeneration


class HFAdapter:
    """A `TransformerLabForConditionalGeneration` seen through canonical names."""

    name = "hf"

    def __init__(self, model: TransformerLabForConditionalGeneration) -> None:
        if not isinstance(model, TransformerLabForConditionalGeneration):
            raise ValueError(f"model must be a TransformerLabForConditionalGeneration, got "
                             f"{type(model).__name__}")
        self.model = model
        self.config = model.spec_config

    def _ids(self, src: object, tgt: object) -> tuple[torch.Tensor, torch.Tensor]:
        check_tokens(src, tgt, self.config)
        device = model_device(self.model)
        return as_ids(src, device), as_ids(tgt, device)

    def capture(self, src: object, tgt: object) -> dict[str, np.ndarray]:
        """The taps of one deterministic HF forward (`input_ids`, `decoder_input_ids`)."""
        src_t, tgt_t = self._ids(src, tgt)
        with torch.no_grad(), full_precision(), mode(self.model, False), \
                torch_model.capture(self.model) as inter:
            self.model(input_ids=src_t, decoder_input_ids=tgt_t, use_cache=False)
        return dict(inter)

    def gradients(self, src: object, tgt: object, labels: object, label_smoothing: float = 0.1
                  ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {param name: gradient}) of one deterministic HF forward with `labels`.

        HF's own loss is used when its `config.label_smoothing` is the one asked for; the
        model's `.grad` buffers are put back afterwards."""
        src_t, tgt_t = self._ids(src, tgt)
        labels_np = check_token_array("labels", labels, self.config.tgt_vocab_size,
                                      self.config.max_len)
        if labels_np.shape != tuple(tgt_t.shape):
            raise ValueError(f"labels has shape {labels_np.shape}, expected tgt's "
                             f"{tuple(tgt_t.shape)}")
        labels_t = as_ids(labels_np, tgt_t.device)
        with own_grads(self.model), full_precision(), mode(self.model, False):
            out = self.model(input_ids=src_t, decoder_input_ids=tgt_t, labels=labels_t,
                             use_cache=False)
            loss = out.loss
            if float(self.model.config.label_smoothing) != float(label_smoothing):
                loss = smoothed_loss(out.logits, labels_t, self.config.pad_id, label_smoothing)
            loss.backward()
            grads = self.model.transformer.canonical_grads()
        return float(loss.detach()), grads

    def params(self) -> dict[str, np.ndarray]:
        return self.model.to_canonical()

    def with_params(self, flat: dict) -> HFAdapter:
        """A new HF model of the same config holding other canonical weights."""
        model = type(self.model).from_canonical(flat, self.model.config)
        return HFAdapter(model.to(model_device(self.model)))
