"""Activation memory of one HF training step, with and without gradient checkpointing.

    python -m benchmarks.hf_memory                       # small preset, batch 16 x 64 tokens
    python -m benchmarks.hf_memory --preset base --batch_size 8 --length 128

Both runs are in one process on the same weights and batch (dropout off, so the gradients must
agree).  What is measured:
- saved MiB: the bytes of every tensor autograd keeps for the backward pass (its saved-tensor
  hooks, parameters excluded, each storage counted once).  Under `gradient_checkpointing_enable()`
  a layer keeps only its inputs; its inner activations are recomputed in the backward, one layer
  at a time, so the peak is about the saved bytes plus one layer's activations;
- on a GPU also `torch.cuda.max_memory_allocated` over the step (weights included);
- the step time (forward + backward), which checkpointing raises by about one forward.
"""

from __future__ import annotations

import argparse
import time

import torch

import spec
from hf_bridge import TransformerLabForConditionalGeneration


class SavedBytes:
    """Counts the bytes autograd saves for backward, parameters and repeats excluded."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += t.untyped_storage().nbytes()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def step(model: TransformerLabForConditionalGeneration, batch: dict[str, torch.Tensor]
         ) -> tuple[float, float, float | None, dict[str, torch.Tensor]]:
    """(saved MiB, seconds, peak GPU MiB or None, gradients) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    counter = SavedBytes(list(model.parameters()))
    cuda = batch["input_ids"].is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        loss = model(**batch).loss
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return counter.total / 2**20, seconds, peak, grads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    config = spec.TransformerConfig.preset(args.preset, dropout_rate=0.0,
                                           max_len=max(512, args.length))
    flat = spec.random_params(config, 0)
    model = TransformerLabForConditionalGeneration.from_canonical(flat, config).to(args.device)
    model.train()  # checkpointing acts in training only; dropout is 0, so runs are comparable
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.length)
    src = torch.randint(3, config.src_vocab_size, shape, generator=gen)
    labels = torch.randint(3, config.tgt_vocab_size, shape, generator=gen)
    batch = {"input_ids": src.to(args.device), "labels": labels.to(args.device)}

    step(model, batch)  # warm-up
    plain = step(model, batch)
    # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias)
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable({"use_reentrant": False})
    step(model, batch)
    ckpt = step(model, batch)

    worst = max(float((plain[3][n] - ckpt[3][n]).abs().max()) for n in plain[3])
    print(f"model {args.preset} (d_model {config.d_model}, {config.num_encoder_layers}+"
          f"{config.num_decoder_layers} layers), batch {args.batch_size} x {args.length} tokens, "
          f"{args.device}")
    print(f"{'run':24} {'saved MiB':>10} {'step s':>8} {'peak GPU MiB':>13}")
    for name, (saved, seconds, peak, _) in (("no checkpointing", plain),
                                            ("gradient checkpointing", ckpt)):
        gpu = f"{peak:13.1f}" if peak is not None else f"{'-':>13}"
        print(f"{name:24} {saved:10.1f} {seconds:8.3f} {gpu}")
    print(f"saved-activation ratio (checkpointing / none): {ckpt[0] / plain[0]:.3f}; "
          f"time ratio {ckpt[1] / plain[1]:.2f}; max gradient difference {worst:.2e}")


if __name__ == "__main__":
    main()
