"""`python -m parity.check --hf PATH`: a saved HF folder (Marian, FSMT, BART, mBART, M2M100,
Pegasus) against the Flax reference and the torch mirror opened from the same folder.

Compared: every canonical intermediate torch~jax; what HF's own class exposes (logits, the
hidden states after the embedding and after each layer, the encoder output, the attention
weights) hf~jax; the loss and every weight's gradient hf~jax and torch~jax; greedy and beam
tokens of jax and torch against HF `generate` with the canonical decoding's settings.

Documented gaps: HF's token tables have `padding_idx`, so their pad row gets no gradient (every
canonical implementation trains it): that row is left out of the `grad/` rows of the tables.
`final_logits_bias` is a buffer in HF (never trained): no HF gradient.  HF `generate` runs with
`forced_bos_token_id=None, forced_eos_token_id=None` (and no other processor), since the
canonical decoding has none; a family's forced target-language token (mBART, M2M100) is not
applied.  FSMT builds its causal mask only with `use_cache=False`, which the forward here sets.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from spec import TransformerConfig, intermediate_shapes, param_shapes
from spec.families import family_of, read_hf_folder, weight_map

from . import tolerances
from .report import Check, compare, compare_tokens, interleave

LABEL_SMOOTHING = 0.1


def family_batch(config: TransformerConfig, seed: int = 0, batch: int = 3, src_len: int = 7,
                 tgt_len: int = 6) -> dict[str, np.ndarray]:
    """`{"src", "tgt_in", "labels"}` int64, right-padded, ordinary ids never special.

    Row 0 is full length, the others shorter.  Sources end with eos; `tgt_in` starts with the
    decoder start token (`bos_id`); labels are it shifted left, ending with eos.  Unlike
    `parity.batch.make_batch` the special ids may sit anywhere in the vocabulary (Marian's pad
    is its last id).
    """
    for name, value in (("batch", batch), ("src_len", src_len), ("tgt_len", tgt_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"parity {name}={value!r} is invalid: expected an integer >= 2")
        if name != "batch" and value > config.max_len:
            raise ValueError(f"parity {name}={value} is over the config's max_len={config.max_len}")
    rng = np.random.default_rng(seed)
    special = {config.pad_id, config.bos_id, config.eos_id}

    def ordinary(vocab: int, n: int) -> np.ndarray:
        pool = np.setdiff1d(np.arange(vocab), sorted(special))
        return rng.choice(pool, size=n)

    src = np.full((batch, src_len), config.pad_id, np.int64)
    tgt = np.full((batch, tgt_len), config.pad_id, np.int64)
    labels = np.full((batch, tgt_len), config.pad_id, np.int64)
    for row in range(batch):
        s = src_len if row == 0 else int(rng.integers(2, src_len + 1))
        t = tgt_len if row == 0 else int(rng.integers(2, tgt_len + 1))
        src[row, : s - 1], src[row, s - 1] = ordinary(config.src_vocab_size, s - 1), config.eos_id
        body = ordinary(config.tgt_vocab_size, t - 1)
        tgt[row, 0], tgt[row, 1:t] = config.bos_id, body
        labels[row, : t - 1], labels[row, t - 1] = body, config.eos_id
    return {"src": src, "tgt_in": tgt, "labels": labels}


def open_hf(path: str | os.PathLike) -> Any:
    """HF's own class for the folder, float32, eager attention, eval mode."""
    import torch
    import transformers

    hf_config, _ = read_hf_folder(path)
    cls = getattr(transformers, family_of(hf_config).model_class)
    return cls.from_pretrained(os.fspath(path), attn_implementation="eager",
                               dtype=torch.float32).eval()


def layer_output_names(config: TransformerConfig, side: str) -> list[str]:
    """Canonical names of HF's `*_hidden_states`: the embedding output, then each layer's
    output (the last one after the final norm in pre-LN families, as HF records it)."""
    n = config.num_encoder_layers if side == "encoder" else config.num_decoder_layers
    if config.norm_position == "post":
        layers = [f"{side}/layer_{i}/ffn_norm/output" for i in range(n)]
    else:
        layers = [f"{side}/layer_{i + 1}/self_attn_norm/input" for i in range(n - 1)]
        layers.append(f"{side}/output")
    return [f"{side}/embed/output"] + layers


def hf_outputs(model: Any, config: TransformerConfig, batch: dict, family: str
               ) -> tuple[dict[str, np.ndarray], float, dict[str, np.ndarray]]:
    """HF's forward under the canonical names it equals, its loss, and its gradients mapped to
    canonical names (pad rows of the token tables zeroed; see the module docstring)."""
    import torch
    import torch.nn.functional as F

    src, tgt = torch.as_tensor(batch["src"]), torch.as_tensor(batch["tgt_in"])
    model.zero_grad()
    out = model(input_ids=src, attention_mask=(src != config.pad_id).long(),
                decoder_input_ids=tgt, decoder_attention_mask=torch.ones_like(tgt),
                output_attentions=True, output_hidden_states=True, use_cache=False)
    loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]),
                           torch.as_tensor(batch["labels"]).reshape(-1),
                           ignore_index=config.pad_id, label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    values = {"logits": out.logits, "encoder/output": out.encoder_last_hidden_state}
    for side, hidden in (("encoder", out.encoder_hidden_states),
                         ("decoder", out.decoder_hidden_states)):
        names = layer_output_names(config, side)
        if len(hidden) != len(names):
            raise ValueError(f"{type(model).__name__} returned {len(hidden)} {side} hidden "
                             f"states, expected {len(names)}")
        values.update(zip(names, hidden))
    for key, prefix in (("encoder_attentions", "encoder/layer_{}/self_attn"),
                        ("decoder_attentions", "decoder/layer_{}/self_attn"),
                        ("cross_attentions", "decoder/layer_{}/cross_attn")):
        values.update({prefix.format(i) + "/weights": v for i, v in enumerate(getattr(out, key))})
    params = dict(model.named_parameters(remove_duplicate=False))  # every alias of a tie
    grads: dict[str, np.ndarray] = {}
    for hf_name, (canon, transpose) in weight_map(config, family).items():
        p = params.get(hf_name)
        if canon in grads or p is None or p.grad is None:
            continue
        g = p.grad.detach().numpy()
        grads[canon] = without_pad_row(np.array(g.T if transpose else g), canon, config)
    model.zero_grad()
    return ({k: v.detach().numpy() for k, v in values.items()}, float(loss.detach()), grads)


def without_pad_row(grad: np.ndarray, name: str, config: TransformerConfig) -> np.ndarray:
    """A token table's gradient with its pad row zeroed (HF's padding_idx trains no pad row)."""
    if name.endswith("embedding/embedding"):
        grad = grad.copy()
        grad[config.pad_id] = 0.0
    return grad


def hf_generate(model: Any, config: TransformerConfig, src: np.ndarray, max_new: int,
                beams: int = 1, alpha: float = 1.0) -> np.ndarray:
    """HF `generate` with the canonical decoding's settings (no logits processor), in the
    contract's layout `[b, max_new]`: start token dropped, pad after the first eos."""
    import torch

    from hf_bridge.decoding import pad_after_eos

    src_t = torch.as_tensor(src)
    with torch.no_grad():
        out = model.generate(
            input_ids=src_t, attention_mask=(src_t != config.pad_id).long(),
            max_new_tokens=max_new, num_beams=beams, length_penalty=alpha, do_sample=False,
            early_stopping=False, decoder_start_token_id=config.bos_id,
            eos_token_id=config.eos_id, pad_token_id=config.pad_id, forced_bos_token_id=None,
            forced_eos_token_id=None, num_return_sequences=1)
    tokens = torch.full((src.shape[0], max_new), config.pad_id, dtype=torch.int64)
    tokens[:, :out.shape[1] - 1] = out[:, 1:]
    return pad_after_eos(tokens, config.eos_id, config.pad_id).numpy()


def check_hf_folder(path: str | os.PathLike, seed: int = 0, batch: int = 3, src_len: int = 7,
                    tgt_len: int = 6, beam_size: int = 3, alpha: float = 0.8) -> list[Check]:
    """Every check of the module docstring for one saved HF folder."""
    import jax
    import jax.numpy as jnp

    import jax_model
    import torch_model
    from jax_model.train import loss_fn

    pretrained = jax_model.from_pretrained(path)
    config, params = pretrained.config, pretrained.params
    family = family_of(read_hf_folder(path)[0]).name
    mirror = torch_model.from_pretrained(path).model
    native = open_hf(path)
    data = family_batch(config, seed, batch, src_len, tgt_len)
    order = list(intermediate_shapes(config, batch, src_len, tgt_len))

    arrays = {k: jnp.asarray(v, jnp.int32) for k, v in data.items()}
    with jax.default_matmul_precision("highest"):
        (ref_loss, aux), ref_grads = jax.jit(jax.value_and_grad(
            lambda p: loss_fn(p, arrays, config, LABEL_SMOOTHING, capture=True),
            has_aux=True))(params)
    reference = {k: np.asarray(v) for k, v in aux["inter"].items()}
    ref_grads = {k: without_pad_row(v, k, config)
                 for k, v in jax_model.to_canonical(ref_grads).items()}
    _, torch_inter = torch_model.forward(mirror, data["src"], data["tgt_in"])
    checks = compare("torch~jax", torch_inter, reference, tolerances.FORWARD, order)
    hf_values, hf_loss, hf_grads = hf_outputs(native, config, data, family)
    checks += compare("hf~jax", hf_values, {n: reference[n] for n in hf_values},
                      tolerances.FORWARD, [n for n in order if n in hf_values])
    torch_loss, torch_grads = _torch_loss_and_grads(mirror, data, config)
    grad_order = list(param_shapes(config))
    for pair, loss, grads in (("torch~jax", torch_loss, torch_grads),
                              ("hf~jax", hf_loss, hf_grads)):
        checks += compare(pair, {"loss": loss}, {"loss": float(ref_loss)}, tolerances.FORWARD)
        # HF has no gradient for final_logits_bias (a buffer): its other names must all be there
        names = grad_order if pair == "torch~jax" else [n for n in grad_order
                                                         if n != "output/bias"]
        checks += compare(pair, grads, {n: ref_grads[n] for n in names}, tolerances.GRADIENT,
                          names, prefix="grad/")
    checks = interleave(checks)
    max_new = min(8, config.max_len)
    for name, beams in (("greedy", 1), (f"beam_{beam_size}", beam_size)):
        ref_tokens = hf_generate(native, config, data["src"], max_new, beams, alpha)
        if beams == 1:
            got = {"jax": jax_model.greedy_decode(params, config, data["src"], max_new),
                   "torch": torch_model.greedy_decode(mirror, data["src"], max_new)}
        else:
            got = {"jax": jax_model.beam_search(params, config, data["src"], beams, max_new,
                                                alpha),
                   "torch": torch_model.beam_search(mirror, data["src"], beams, max_new, alpha)}
        for impl, tokens in got.items():
            checks.append(compare_tokens(f"tokens/{name}", f"{impl}~hf", np.asarray(tokens),
                                         ref_tokens))
    return checks


def _torch_loss_and_grads(model: Any, data: dict, config: TransformerConfig
                          ) -> tuple[float, dict[str, np.ndarray]]:
    import torch.nn.functional as F

    import torch_model

    model.zero_grad()
    logits, _ = torch_model.forward(model, data["src"], data["tgt_in"], capture=False)
    labels = torch_model.api.as_ids(data["labels"], logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=config.pad_id, label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    grads = {k: without_pad_row(v, k, config) for k, v in model.canonical_grads().items()}
    model.zero_grad()
    return float(loss.detach()), grads


def run_hf_folder(args: Any, start: float) -> int:
    """`parity.check --hf PATH`: print the table (and the JSON report); 0 when all agree."""
    import sys
    import time

    from .report import format_table, write_json

    try:
        checks = check_hf_folder(args.hf, args.seed, args.batch, args.src_len, args.tgt_len)
    except (ValueError, FileNotFoundError) as e:
        print(f"parity.check: {e}", file=sys.stderr)
        return 2
    print(format_table(checks, verbose=not args.quiet))
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        write_json(args.json, checks, {"hf": os.fspath(args.hf), "seed": args.seed})
    return 0 if all(c.ok for c in checks) else 1
