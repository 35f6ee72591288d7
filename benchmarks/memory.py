"""Memory of one train step with and without gradient checkpointing, JAX and torch, one process.

    python -m benchmarks.memory                      # train_step.py's model, batch 32x32
    python -m benchmarks.memory --d_model 512 --layers 6 --batch 64 --length 64

Printed per framework, remat off and on (`TrainConfig.gradient_checkpointing`):
- jax, XLA temp: `memory_analysis().temp_size_in_bytes` of the compiled `make_train_step`
  (XLA's buffer assignment: the peak of everything the step allocates besides its arguments
  and outputs; the state is donated);
- jax, residuals: the bytes `jax.vjp` of the loss keeps for the backward pass (the leaves of
  the vjp function returned from `jit`, unique buffers, parameters excluded);
- torch, saved tensors: the bytes autograd keeps for the backward pass of the loss, counted with
  `torch.autograd.graph.saved_tensors_hooks` (unique storages, parameters excluded), plus, with
  checkpointing, the layer inputs `torch.utils.checkpoint` holds to recompute from.
Both models are in training mode (dropout on).  The activations scale with batch x length;
the parameters (and Adam's two moments) do not, and are reported apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spec  # noqa: E402
from benchmarks.common import add_model_flags, apply_threads, load_average  # noqa: E402
from benchmarks.train_step import bench_config, make_batch  # noqa: E402

MiB = 2 ** 20


def jax_memory(config: spec.TransformerConfig, train: spec.TrainConfig,
               batch: dict[str, np.ndarray]) -> dict[str, int]:
    """{"temp": XLA temp bytes of the train step, "residuals": bytes saved for backward,
    "barriers": (optimization barriers in the lowered program, in the compiled one)}."""
    import jax

    from jax_model import train as jt

    micro = {k: jax.numpy.asarray(v)[None] for k, v in batch.items()}  # [accum=1, b, len]
    state = jt.create_train_state(config, train)
    lowered = jt.make_train_step(config, train).lower(state, micro)
    compiled = lowered.compile()
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
    # remat's recomputation is fenced by optimization barriers; count those XLA kept
    barriers = (lowered.as_text().count("optimization_barrier"),
                compiled.as_text().count("opt-barrier"))

    def loss(params, one, key):
        return jt.loss_fn(params, one, config, train.label_smoothing, dropout_key=key,
                          remat=train.gradient_checkpointing)[0]

    one = {k: v[0] for k, v in micro.items()}
    key = jt.dropout_key(train.seed, 0)
    residuals = jax.jit(lambda p: jax.vjp(lambda q: loss(q, one, key), p)[1])(state.params)
    # jit hands an unchanged input back as the same buffer, so weights are excluded by pointer
    params = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(state.params)}
    seen, saved = set(params), 0
    for leaf in jax.tree.leaves(residuals):
        if leaf.unsafe_buffer_pointer() not in seen:
            seen.add(leaf.unsafe_buffer_pointer())
            saved += leaf.nbytes
    return {"temp": temp, "residuals": saved, "barriers": barriers}


def jax_platform() -> str:
    import jax

    return jax.devices()[0].platform


def torch_saved_bytes(config: spec.TransformerConfig, train: spec.TrainConfig,
                      batch: dict[str, np.ndarray]) -> int:
    """Bytes autograd keeps for the backward of one loss (see the module docstring)."""
    import torch

    from torch_model import train as tt

    state = tt.create_train_state(config, train, device="cpu")
    model = state.model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = [0]

    def count(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        count(tensor)
        return tensor

    def layer_inputs(module, args) -> None:  # what checkpoint keeps to recompute the layer
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                count(a)

    handles = []
    if train.gradient_checkpointing:
        for stack in (model.encoder, model.decoder):
            handles += [layer.register_forward_pre_hook(layer_inputs) for layer in stack.layers]
    t = tt.to_tensors(batch, torch.device("cpu"))
    torch.manual_seed(train.seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logits = model(t["src"], t["tgt_in"])  # [b, t, v]
        loss, _, _ = tt.loss_and_counts(logits, t["labels"], config.pad_id,
                                        train.label_smoothing)
    for handle in handles:
        handle.remove()
    loss.backward()
    return total[0]


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(p)
    args = p.parse_args(argv)
    apply_threads(args)
    config = bench_config(args.d_model, args.layers, args.heads, args.vocab, args.length)
    batch = make_batch(config, args.batch, args.length, seed=0)
    n_params = sum(int(np.prod(s)) for s in spec.param_shapes(config).values())
    lines = [f"## Memory per train step, d_model {config.d_model}, {args.layers}+{args.layers} "
             f"layers, vocab {args.vocab}, batch {args.batch}x{args.length}, dropout "
             f"{config.dropout_rate}; {load_average()}", "",
             f"parameters {n_params * 4 / MiB:.1f} MiB (float32); with Adam's two moments and "
             f"the gradients, {n_params * 16 / MiB:.1f} MiB, the same with or without remat",
             "", "| framework | measure | no remat MiB | remat MiB | remat / no remat |",
             "|---|---|---:|---:|---:|"]
    results = {}
    for remat in (False, True):
        train = spec.TrainConfig(batch_size=args.batch, gradient_checkpointing=remat)
        results[remat] = {**{f"jax {k}": v for k, v in jax_memory(config, train, batch).items()},
                          "torch saved": torch_saved_bytes(config, train, batch)}
    labels = {"jax temp": ("jax", "XLA temp of the jitted train step"),
              "jax residuals": ("jax", "saved for backward (vjp residuals)"),
              "torch saved": ("torch", "saved for backward (saved_tensors_hooks)")}
    for key, (framework, measure) in labels.items():
        off, on = results[False][key], results[True][key]
        lines.append(f"| {framework} | {measure} | {off / MiB:.1f} | {on / MiB:.1f} | "
                     f"{on / off:.2f} |")
    lowered, kept = results[True]["jax barriers"]
    why = (" (none left: the compiler is free to merge the recomputation back into the "
           "forward, so XLA's temp peak need not shrink)" if lowered and not kept else "")
    lines += ["", f"jax remat: {lowered} optimization barriers in the lowered step, {kept} left "
                  f"after XLA's passes on {jax_platform()}{why}"]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
