"""Taps: identity modules at every canonical intermediate, and the hooks that read or patch them.

Like TransformerLens' `HookPoint`, a `Tap` returns its input unchanged; its place in the module
tree gives it its canonical name (`encoder.layer_0.self_attn.q` <-> `encoder/layer_0/self_attn/q`).
A forward hook on a tap sees the value (capture) and, by returning a tensor, replaces it (patch).
With no hook registered, `nn.Module.__call__` takes its fast path, so an unobserved forward pays
one Python call per tap and nothing else, and `torch.compile` traces straight through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from spec.inputs import to_numpy
from spec.patching import check_result


class Tap(nn.Module):
    """Identity at a named point of the forward pass.

    `name` is the canonical name (slashes); `name_taps` sets it from the module path so that the
    name survives when the model is wrapped in another module (the HF bridge does that).
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def name_taps(root: nn.Module) -> None:
    """Give every tap below `root` its canonical name: the dotted path with `/` for `.`."""
    for path, module in root.named_modules():
        if isinstance(module, Tap):
            module.name = path.replace(".", "/")


def named_taps(model: nn.Module) -> dict[str, Tap]:
    """Every tap of `model`, keyed by canonical name, in registration (= execution) order."""
    found: dict[str, Tap] = {}
    for path, module in model.named_modules():
        if isinstance(module, Tap):
            found[module.name or path.replace(".", "/")] = module
    return found


def _select(model: nn.Module, names: Iterable[str] | None) -> dict[str, Tap]:
    available = named_taps(model)
    if names is None:
        return available
    names = list(names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown tap name(s) {unknown}; this model has {len(available)} taps, "
                         f"e.g. {list(available)[:4]}")
    return {n: available[n] for n in names}


@contextlib.contextmanager
def capture(model: nn.Module, names: Iterable[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield a dict that fills with `{canonical_name: np.ndarray}` as the model runs.

    `names=None` captures every tap.  A tap that fires twice (e.g. recomputed under gradient
    checkpointing) keeps its last value.  Hooks are removed on exit, even after an error.
    """
    store: dict[str, np.ndarray] = {}
    handles = []
    try:
        for name, tap in _select(model, names).items():
            def hook(module: nn.Module, args: tuple, output: torch.Tensor, name: str = name) -> None:
                store[name] = to_numpy(output)
            handles.append(tap.register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def patch(model: nn.Module, fns: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]
          ) -> Iterator[None]:
    """Replace the value at each named tap by `fn(value)` while the context is open.

    Patch hooks are prepended, so a `capture` opened before or after records the patched value.
    A function that returns another shape than it got raises ValueError naming the tap.
    """
    handles = []
    try:
        for name, tap in _select(model, fns).items():
            fn = fns[name]

            def hook(module: nn.Module, args: tuple, output: torch.Tensor, name: str = name,
                     fn: Callable[[torch.Tensor], torch.Tensor] = fn) -> torch.Tensor:
                new = fn(output)
                check_result(name, tuple(output.shape), new)
                return new
            handles.append(tap.register_forward_hook(hook, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def has_hooks(model: nn.Module) -> bool:
    """Whether any tap of `model` carries a forward hook (tests assert none is left behind)."""
    return any(tap._forward_hooks for tap in named_taps(model).values())


def _fresh(value: torch.Tensor) -> torch.Tensor:
    """The tap's value as a new autograd node: its gradient then counts only the uses after the
    tap (a pre-LN `norm/input` is also the residual stream, which must not leak into it)."""
    if value.requires_grad:
        return value.view_as(value)
    return value.detach().requires_grad_(True)


@contextlib.contextmanager
def watch(model: nn.Module, names: Iterable[str] | None = None
          ) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that fills with `{canonical_name: tensor}`, each tap's output as the rest of
    the model sees it (after any `patch`, whose hooks run first), for
    `torch.autograd.grad(metric, list(seen.values()))`: d metric / d intermediate."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, tap in _select(model, names).items():
            def hook(module: nn.Module, args: tuple, output: torch.Tensor,
                     name: str = name) -> torch.Tensor:
                seen[name] = _fresh(output)
                return seen[name]
            handles.append(tap.register_forward_hook(hook))
        yield seen
    finally:
        for handle in handles:
            handle.remove()
