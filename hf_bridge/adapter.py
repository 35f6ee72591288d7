"""The analysis adapter for the Hugging Face model (docs/interfaces.md "Analysis adapters").

`HFAdapter(model)` runs `TransformerLabForConditionalGeneration.forward` itself (HF's inputs,
HF's loss) and reads the canonical intermediates from the torch mirror's taps, which the HF
model shares; interventions patch those taps, and patched decoding runs HF `generate()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

import torch_model
from spec import TransformerConfig, check_token_array, check_tokens, intermediate_shapes, to_numpy
from spec.interventions import Intervention, Metric
from spec.patching import as_patch, forward_plan
from torch_model.adapter import (
    check_names,
    intervention_grads,
    metric_value,
    own_grads,
)
from torch_model.api import as_ids, full_precision, mode, model_device, patch_functions, patched
from torch_model.loss import smoothed_loss

from .decoding import generate_tokens
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

    @classmethod
    def from_canonical(cls, flat: dict, config: TransformerConfig) -> HFAdapter:
        """The registry's factory (spec.implementations)."""
        return cls(TransformerLabForConditionalGeneration.from_canonical(flat, config))

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

    # -- interventions (spec.interventions; docs/interfaces.md "Interventions") ------------
    def _patch(self, src: object, tgt: object, interventions: object) -> dict:
        src_np, tgt_np = check_tokens(src, tgt, self.config)
        plan = forward_plan(as_patch(interventions), self.config, *src_np.shape, tgt_np.shape[1])
        return patch_functions(*plan, model_device(self.model))

    def _logits(self, src_t: torch.Tensor, tgt_t: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=src_t, decoder_input_ids=tgt_t, use_cache=False).logits

    def run(self, src: object, tgt: object, interventions: Sequence[Intervention] | None = None,
            capture: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits [b, t, v], {name: array}) of one deterministic HF forward with the
        interventions applied at the taps."""
        fns = self._patch(src, tgt, interventions)
        src_t, tgt_t = self._ids(src, tgt)
        with torch.no_grad(), full_precision(), mode(self.model, False), \
                patched(self.model, fns), torch_model.capture(self.model, None if capture
                                                              else []) as inter:
            logits = self._logits(src_t, tgt_t)
        return to_numpy(logits), dict(inter)

    def intermediate_grads(self, src: object, tgt: object, metric: Metric,
                           names: Iterable[str] | None = None,
                           interventions: Sequence[Intervention] | None = None
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(metric value, {name: d metric / d intermediate}) of one HF forward, each with
        respect to the value after its intervention."""
        fns = self._patch(src, tgt, interventions)
        src_t, tgt_t = self._ids(src, tgt)
        shapes = intermediate_shapes(self.config, *src_t.shape, tgt_t.shape[1])
        return intervention_grads(self.model, lambda: self._logits(src_t, tgt_t), metric,
                                  check_names(names, shapes), fns)

    def metric_under(self, src: object, tgt: object, metric: Metric,
                     sweep: Sequence[Sequence[Intervention]]) -> np.ndarray:
        """[n] float64: the metric of one patched HF forward per intervention list."""
        src_t, tgt_t = self._ids(src, tgt)
        out = []
        with torch.no_grad(), full_precision(), mode(self.model, False):
            for interventions in sweep:
                with patched(self.model, self._patch(src, tgt, interventions)):
                    out.append(float(metric_value(metric, self._logits(src_t, tgt_t))))
        return np.asarray(out, np.float64)

    def decode(self, src: object, max_len: int, beam_size: int = 1, alpha: float = 1.0,
               interventions: Sequence[Intervention] | None = None) -> np.ndarray:
        """tokens [b, max_len] from HF `generate()` (greedy when beam_size == 1), the
        interventions applied at every step."""
        return to_numpy(generate_tokens(self.model, src, max_len, beam_size, alpha,
                                        patch=as_patch(interventions)))

    def params(self) -> dict[str, np.ndarray]:
        return self.model.to_canonical()

    def with_params(self, flat: dict) -> HFAdapter:
        """A new HF model of the same config holding other canonical weights."""
        model = type(self.model).from_canonical(flat, self.model.config)
        return HFAdapter(model.to(model_device(self.model)))
