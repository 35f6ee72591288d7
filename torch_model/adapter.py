"""The analysis adapter for the PyTorch model (docs/interfaces.md "Analysis adapters").

`TorchAdapter(model)` gives `analysis` canonical intermediates (from the taps), canonical
gradients of the training loss and canonical parameters, runs with interventions
(`spec.interventions`), gradients of a metric with respect to every intermediate, metric
sweeps and patched decoding, without `analysis` importing torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from spec import (
    TransformerConfig,
    check_token_array,
    check_tokens,
    intermediate_shapes,
    to_numpy,
)
from spec.interventions import Intervention, Metric
from spec.patching import as_patch, forward_plan

from .api import as_ids, forward, full_precision, mode, model_device, patch_functions, patched
from .decoding import beam_search, greedy_decode
from .loss import smoothed_loss
from .model import Transformer
from .taps import watch


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


def metric_value(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """`sum(logit_weights * logits) + sum(logprob_weights * log_softmax(logits))` (spec)."""
    if not isinstance(metric, Metric):
        raise ValueError(f"metric must be a spec.interventions.Metric, got "
                         f"{type(metric).__name__}")
    metric.check(tuple(logits.shape))
    lw = torch.from_numpy(metric.logit_weights).to(logits.device)        # [b, t, v]
    pw = torch.from_numpy(metric.logprob_weights).to(logits.device)      # [b, t, v]
    logits = logits.float()
    return (lw * logits).sum() + (pw * torch.log_softmax(logits, dim=-1)).sum()


def check_names(names: Iterable[str] | None, shapes: dict) -> list[str]:
    """`names=None` -> every canonical intermediate; otherwise each must be one."""
    if names is None:
        return list(shapes)
    names = list(names)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"names {unknown} are not canonical intermediates of this model "
                         f"(e.g. {list(shapes)[:3]})")
    return names


def intervention_grads(model: torch.nn.Module, run: Callable[[], torch.Tensor],
                       metric: Metric, names: list[str], fns: dict
                       ) -> tuple[float, dict[str, np.ndarray]]:
    """(metric, {name: d metric / d value}) of `run()` -> logits, for the torch and HF models:
    patch hooks first, then `watch` makes each tap's output its own autograd node."""
    with own_grads(model), full_precision(), mode(model, False), torch.enable_grad(), \
            patched(model, fns), watch(model, names) as seen:
        value = metric_value(metric, run())
        missing = [n for n in names if n not in seen]
        if missing:
            raise ValueError(f"intermediates {missing} were not made by this forward")
        grads = torch.autograd.grad(value, [seen[n] for n in names], allow_unused=True)
    out = {n: (np.zeros(tuple(seen[n].shape), np.float32) if g is None else to_numpy(g))
           for n, g in zip(names, grads)}
    return float(value.detach()), out


class TorchAdapter:
    """A `torch_model.Transformer` seen through canonical names."""

    name = "torch"

    def __init__(self, model: Transformer) -> None:
        if not isinstance(model, Transformer):
            raise ValueError(f"model must be a torch_model.Transformer, got {type(model).__name__}")
        self.model = model
        self.config = model.config

    @classmethod
    def from_canonical(cls, flat: dict, config: TransformerConfig) -> TorchAdapter:
        """The registry's factory (spec.implementations)."""
        return cls(Transformer(config).load_canonical(flat))

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

    # -- interventions (spec.interventions; docs/interfaces.md "Interventions") ------------
    def _plan(self, src: object, tgt: object, interventions: object) -> tuple:
        src_np, tgt_np = check_tokens(src, tgt, self.config)
        plan = forward_plan(as_patch(interventions), self.config, *src_np.shape, tgt_np.shape[1])
        return src_np, tgt_np, patch_functions(*plan, model_device(self.model))

    def run(self, src: object, tgt: object, interventions: Sequence[Intervention] | None = None,
            capture: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits [b, t, v], {name: array}) of one deterministic forward with the
        interventions applied where each value is made."""
        with torch.no_grad():
            logits, inter = forward(self.model, src, tgt, capture=capture,
                                    patch=as_patch(interventions))
        return to_numpy(logits), inter

    def intermediate_grads(self, src: object, tgt: object, metric: Metric,
                           names: Iterable[str] | None = None,
                           interventions: Sequence[Intervention] | None = None
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(metric value, {name: d metric / d intermediate}) in canonical shapes, each taken
        with respect to the value as the rest of the model sees it (after its intervention)."""
        src_np, tgt_np, fns = self._plan(src, tgt, interventions)
        shapes = intermediate_shapes(self.config, *src_np.shape, tgt_np.shape[1])
        device = model_device(self.model)
        src_t, tgt_t = as_ids(src_np, device), as_ids(tgt_np, device)
        return intervention_grads(self.model, lambda: self.model(src_t, tgt_t),
                                  metric, check_names(names, shapes), fns)

    def metric_under(self, src: object, tgt: object, metric: Metric,
                     sweep: Sequence[Sequence[Intervention]]) -> np.ndarray:
        """[n] float64: the metric of one patched forward per intervention list of `sweep`."""
        out = []
        with torch.no_grad():
            for interventions in sweep:
                logits, _ = forward(self.model, src, tgt, capture=False,
                                    patch=as_patch(interventions))
                out.append(float(metric_value(metric, logits)))
        return np.asarray(out, np.float64)

    def decode(self, src: object, max_len: int, beam_size: int = 1, alpha: float = 1.0,
               interventions: Sequence[Intervention] | None = None) -> np.ndarray:
        """tokens [b, max_len] (greedy when beam_size == 1), the interventions applied at every
        step (positions = the step's query position)."""
        patch = as_patch(interventions)
        if beam_size == 1:
            tokens = greedy_decode(self.model, src, max_len, patch=patch)
        else:
            tokens = beam_search(self.model, src, beam_size, max_len, alpha, patch=patch)
        return to_numpy(tokens)

    def params(self) -> dict[str, np.ndarray]:
        return self.model.to_canonical()

    def with_params(self, flat: dict) -> TorchAdapter:
        """A new model of the same config holding other canonical weights."""
        model = Transformer(self.config).to(model_device(self.model))
        return TorchAdapter(model.load_canonical(flat))
