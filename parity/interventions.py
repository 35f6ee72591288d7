"""The `interventions` section of `python -m parity.check`: patched runs agree everywhere.

Interventions of every kind (`spec.interventions`: zero, mean and resample ablation,
activation patching, scaling, steering), with head, position and key selections, are built
from a capture of a second ("corrupted") batch of the same shapes and applied in jax, torch and
HF.  Compared against JAX, at the forward/gradient tolerance (parity/tolerances.py):

* `patched/<name>`: every intermediate and the logits of one run with all the interventions;
* `patched/metric_under`: the target log-prob under each intervention alone (a sweep);
* `patched_grad/<name>`: d loss / d intermediate for every canonical name, under the
  interventions;
* `patched_decode/greedy`, `patched_decode/beam3`: tokens decoded with every intervention
  applied at every step (torch's own search and HF `generate()` against JAX's).

The default `python -m parity.check` runs `quick` (three interventions, one patched forward:
one more JAX compilation), `--section interventions` runs `full`.
"""

from __future__ import annotations

import numpy as np

from spec import TransformerConfig
from spec import implementations as registry
from spec import interventions as iv

from . import tolerances
from .batch import make_batch
from .report import Check, compare, compare_tokens, interleave

BEAM_SIZE = 3
BEAM_ALPHA = 0.8
OTHERS = ("torch", "hf")


def specs(config: TransformerConfig, corrupt: dict[str, np.ndarray], src_len: int,
          tgt_len: int) -> list[iv.Intervention]:
    """One intervention of each kind (and one on a cached decoder key), sized to the config."""
    h, last_enc, last_dec = config.num_heads, config.num_encoder_layers - 1, \
        config.num_decoder_layers - 1
    enc_ffn = f"encoder/layer_{last_enc}/ffn/activation"
    cross_v = "decoder/layer_0/cross_attn/v"
    context = f"decoder/layer_{last_dec}/self_attn/context"
    vector = np.linspace(-2.0, 2.0, config.d_model).astype(np.float32)
    return [
        iv.zero_ablate("encoder/layer_0/self_attn/weights", heads=[h - 1],
                       positions=[src_len - 1], keys=[0]),
        iv.patch_from(context, corrupt[context], heads=[h - 1],
                      positions=sorted({1 % tgt_len, tgt_len - 1})),
        iv.add(f"decoder/layer_{last_dec}/ffn_norm/output", vector,
               positions=[min(2, tgt_len - 1)]),
        iv.mean_ablate(enc_ffn, corrupt[enc_ffn], positions=[0]),
        iv.resample_ablate(cross_v, corrupt[cross_v], seed=1, heads=[0]),
        iv.scale("decoder/layer_0/self_attn/scores", 3.0, heads=[0], keys=[0]),
        iv.zero_ablate(f"decoder/layer_{last_dec}/self_attn/k", positions=[0]),
    ]


def _setup(config: TransformerConfig, flat: dict, batch: dict, count: int | None):
    b, s = batch["src"].shape
    t = batch["tgt_in"].shape[1]
    corrupt = make_batch(config, 7919, b, s, t)
    adapters = {name: registry.from_canonical(name, flat, config)
                for name in ("jax", *OTHERS)}
    _, corrupt_inter = adapters["jax"].run(corrupt["src"], corrupt["tgt_in"])
    chosen = specs(config, corrupt_inter, s, t)
    return adapters, chosen if count is None else chosen[:count]


def _patched_forward(adapters: dict, batch: dict, chosen: list) -> list[Check]:
    logits, ref = adapters["jax"].run(batch["src"], batch["tgt_in"], chosen)
    ref = {**ref, "logits": logits}
    checks = []
    for name in OTHERS:
        logits, got = adapters[name].run(batch["src"], batch["tgt_in"], chosen)
        checks += compare(f"{name}~jax", {**got, "logits": logits}, ref, tolerances.FORWARD,
                          list(ref), prefix="patched/")
    return checks


def quick(config: TransformerConfig, flat: dict, batch: dict) -> list[Check]:
    """Three interventions (zero ablation of a head, activation patching, steering) in one
    patched forward of each implementation."""
    adapters, chosen = _setup(config, flat, batch, 3)
    return interleave(_patched_forward(adapters, batch, chosen))


def full(config: TransformerConfig, flat: dict, batch: dict) -> list[Check]:
    """Every kind: the patched forward, a metric sweep, intermediate gradients, decoding."""
    adapters, chosen = _setup(config, flat, batch, None)
    src, tgt, labels = batch["src"], batch["tgt_in"], batch["labels"]
    checks = _patched_forward(adapters, batch, chosen)

    logprob = iv.target_logprob(labels, config.tgt_vocab_size, config.pad_id)
    sweep = [[spec] for spec in chosen]
    ref_sweep = adapters["jax"].metric_under(src, tgt, logprob, sweep)
    loss = iv.loss_metric(labels, config.tgt_vocab_size, config.pad_id)
    ref_value, ref_grads = adapters["jax"].intermediate_grads(src, tgt, loss,
                                                               interventions=chosen)
    t = tgt.shape[1]
    ref_greedy = adapters["jax"].decode(src, t, interventions=chosen)
    ref_beam = adapters["jax"].decode(src, t, BEAM_SIZE, BEAM_ALPHA, interventions=chosen)
    for name in OTHERS:
        pair, other = f"{name}~jax", adapters[name]
        checks += compare(pair, {"metric_under": other.metric_under(src, tgt, logprob, sweep)},
                          {"metric_under": ref_sweep}, tolerances.FORWARD, prefix="patched/")
        value, grads = other.intermediate_grads(src, tgt, loss, interventions=chosen)
        checks += compare(pair, {"loss": np.float64(value)}, {"loss": np.float64(ref_value)},
                          tolerances.GRADIENT, prefix="patched_grad/")
        checks += compare(pair, grads, ref_grads, tolerances.GRADIENT, list(ref_grads),
                          prefix="patched_grad/")
        checks.append(compare_tokens("patched_decode/greedy", pair,
                                     other.decode(src, t, interventions=chosen), ref_greedy))
        checks.append(compare_tokens(f"patched_decode/beam{BEAM_SIZE}", pair,
                                     other.decode(src, t, BEAM_SIZE, BEAM_ALPHA,
                                                  interventions=chosen), ref_beam))
    return interleave(checks)
