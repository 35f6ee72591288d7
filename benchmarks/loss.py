"""The label-smoothed loss and the token-accuracy count on `[b, t, v]` logits, alone: the
formulations tried for the JAX step, value and gradient, timed round-robin in one process.

    python -m benchmarks.loss                       # b 32, t 32, v 8000 (train_step.py's)

Rows: `jax_model.loss.smoothed_cross_entropy` (logsumexp form, in use); optax's integer-label
cross-entropy plus a separate log-softmax mean (the form before issue 13); one log-softmax with
the label picked by a one-hot `where`; the same with `take_along_axis`; token hits by `argmax`
(in use) and by a fused first-maximum `min`.  Each loss row prints its value and its gradient's
largest difference from the optax form's, so a faster row is also a same-math row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_model_flags,
    apply_threads,
    interleaved_medians,
    load_average,
)
from lab_cli.args import int_at_least  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(p, "batch", "length", "vocab")
    p.add_argument("--repeats", type=int_at_least(1), default=7)
    args = p.parse_args(argv)
    apply_threads(args)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jax_model import loss as jt

    eps, v = 0.1, args.vocab
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((args.batch, args.length, v), dtype=np.float32) * 3)
    labels = jnp.asarray(rng.integers(3, v, (args.batch, args.length)).astype(np.int32))

    def ours(z):
        return jt.smoothed_cross_entropy(z, labels, 0, eps)[0]

    def optax_form(z):
        nll = optax.softmax_cross_entropy_with_integer_labels(z, labels)  # [b, t]
        return ((1 - eps) * nll + eps * -jax.nn.log_softmax(z).mean(-1)).sum()

    def onehot(z):
        logp = jax.nn.log_softmax(z)                                      # [b, t, v]
        picked = jnp.where(labels[..., None] == jnp.arange(v), logp, 0.0).sum(-1)
        return ((1 - eps) * -picked + eps * -logp.mean(-1)).sum()

    def take(z):
        logp = jax.nn.log_softmax(z)                                      # [b, t, v]
        picked = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
        return ((1 - eps) * -picked + eps * -logp.mean(-1)).sum()

    def first_max(z):
        first = jnp.where(z == z.max(-1, keepdims=True), jnp.arange(v), v).min(-1)  # [b, t]
        return (first == labels).sum()

    reference = jax.jit(jax.grad(optax_form))(logits)
    lines = [f"loss and token hits on [{args.batch}, {args.length}, {v}] logits, value and "
             f"gradient, median of {args.repeats} rounds; {load_average()}", "",
             "| row | median ms | loss | max grad diff vs optax form |", "|---|---:|---:|---:|"]
    calls, facts = {}, {}
    for name, fn in (("smoothed_cross_entropy (logsumexp, in use)", ours),
                     ("optax integer-label + log-softmax mean (before)", optax_form),
                     ("one log-softmax, one-hot where", onehot),
                     ("one log-softmax, take_along_axis", take)):
        vg = jax.jit(jax.value_and_grad(fn))
        value, grad = vg(logits)
        facts[name] = (f"{float(value):.4f}", f"{float(jnp.abs(grad - reference).max()):.1e}")
        calls[name] = (lambda f: lambda: jax.block_until_ready(f(logits)))(vg)
    for name, fn in (("hits by argmax (in use)", lambda z: (z.argmax(-1) == labels).sum()),
                     ("hits by fused first-max min", first_max)):
        count = jax.jit(fn)
        facts[name] = (str(int(count(logits))), "")
        calls[name] = (lambda c: lambda: jax.block_until_ready(c(logits)))(count)
    for name, seconds in interleaved_medians(calls, args.repeats, 1).items():
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {facts[name][0]} | {facts[name][1]} |")
    lines.append(f"\nafter: {load_average()}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
