"""Incremental decoding with the Flax `cache` collection, and greedy search.

Semantics are those of Hugging Face `generate(decoder_start_token_id=bos_id,
eos_token_id=eos_id, pad_token_id=pad_id, max_new_tokens=max_len, do_sample=False)`: tokens
`[b, max_len]` without the start token, eos included, `pad_id` after a row's eos and after the
end when every row finished early.  Everything runs in one jitted `lax.while_loop`, compiled
once per (config, max_len, capture).

Capture (`capture=True`) records, at every step, the decoder's intermediates of that one
position under their canonical names with a leading step axis, e.g. self-attention weights
`[steps, b, h, 1, steps]` (keys up to the last step's cache length; slots after the current
position are 0, as in torch_model) and cross-attention weights `[steps, b, h, 1, s]`.  The
attention keys/values (`{attn}/k`, `{attn}/v`) are left out: they are the whole cache at every
step, too large to keep per step.

`patch` (as in `forward`) is applied at every step (spec/patching.py): interventions are jit
arguments, the decoder's cut to the step's query position with `lax.dynamic_index_in_dim`
(the self-attention key axis keeps all `max_len` cache slots; unwritten ones are masked);
functions see one step's value, except the decoder self-attention k/v, whose value is the
whole cache `[rows, h, max_len, d]`.  Caches hold raw projections, so a patched decode equals
patched full forwards on its own prefix.

The cache (`cache_layout` lists it; a test checks `start_cache` against it), one entry per
decoder layer i, mirroring torch_model.cache's `EncoderDecoderCache` (L = max_len):

    decoder/layer_{i}/self_attn/cached_key, cached_value   [b, h, L, d]  slot j = position j
    decoder/layer_{i}/self_attn/cache_index                []            positions written
    decoder/layer_{i}/cross_attn/cached_key, cached_value  [b, h, s, d]  projected once
    decoder/embed/cache_index                              []            the next position

torch grows its self-attention K/V by concatenation (`[b, h, steps, d]`); JAX keeps all L
slots (static shapes for `lax.while_loop`) and masks the unwritten ones (`prefix_mask`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from spec import TransformerConfig, check_tokens
from spec.interventions import position_axis
from spec.patching import decode_plan, decode_rule, in_decoder

from .api import Params, check_config, traced_with
from .capture import coefficient_tree, flatten_sown, patch_functions
from .model import Transformer


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_decode_inputs(config: TransformerConfig, src: object, max_len: object) -> np.ndarray:
    """Validate the arguments every search shares; returns `src` as numpy."""
    check_config(config)
    max_len = check_positive_int("max_len", max_len)
    if max_len > config.max_len:
        raise ValueError(f"max_len={max_len} is over the config's max_len={config.max_len}: "
                         "the decoder has no position beyond it")
    src_np, _ = check_tokens(src, None, config)
    return src_np


def captured(name: str) -> bool:
    """Which step intermediates capture keeps: the decoder's, less the whole-cache k and v."""
    return ((name.startswith("decoder/") or name == "logits")
            and not (("_attn/" in name) and name.rsplit("/", 1)[1] in ("k", "v")))


def cache_layout(config: TransformerConfig, batch: int, src_len: int, max_len: int
                 ) -> dict[str, tuple[int, ...]]:
    """The `cache` collection of a decode run, `{path: shape}` (module docstring)."""
    h, d = config.num_heads, config.head_dim
    out: dict[str, tuple[int, ...]] = {"decoder/embed/cache_index": ()}
    for i in range(config.num_decoder_layers):
        prefix = f"decoder/layer_{i}"
        out[f"{prefix}/self_attn/cached_key"] = (batch, h, max_len, d)
        out[f"{prefix}/self_attn/cached_value"] = (batch, h, max_len, d)
        out[f"{prefix}/self_attn/cache_index"] = ()
        out[f"{prefix}/cross_attn/cached_key"] = (batch, h, src_len, d)
        out[f"{prefix}/cross_attn/cached_value"] = (batch, h, src_len, d)
    return out


def start_cache(model: Transformer, params: Params, encoded: jax.Array, src: jax.Array,
                max_len: int) -> dict:
    """Create the decode cache: self-attention slots for `max_len` positions (zeros), the
    cross-attention keys/values projected once from `encoded`, every cache index at 0."""
    dummy = jnp.full((src.shape[0], max_len), model.config.pad_id, jnp.int32)  # [b, max_len]
    with patch_functions(None):  # the creating call's outputs are thrown away: patch nothing
        _, state = model.apply({"params": params}, dummy, encoded, src != model.config.pad_id,
                               decode=True, method=Transformer.decode, mutable=["cache"])
    return state["cache"]


def with_patch(params: Params, tree: dict | None, **collections) -> dict:
    """The variables of one apply: params, other collections, and `patch` when there is one."""
    return {"params": params, **collections, **({"patch": tree} if tree else {})}


def encoder_patch(coeffs: dict) -> dict | None:
    """The `patch` collection of the one encoder pass (full-shape coefficients)."""
    part = {n: c for n, c in coeffs.items() if not in_decoder(n)}
    return coefficient_tree(part) if part else None


def step_patch(coeffs: dict, step: jax.Array) -> dict | None:
    """The `patch` collection of the decode step feeding query position `step` (traced)."""
    part = {}
    for name, pair in coeffs.items():
        if not in_decoder(name):
            continue
        if decode_rule(name) == "step":
            axis = position_axis(name)
            pair = tuple(lax.dynamic_index_in_dim(x, step, axis, keepdims=True)
                         if x.ndim and x.shape[axis] != 1 else x for x in pair)
        part[name] = pair
    return coefficient_tree(part) if part else None


def encode(model: Transformer, params: Params, src: jax.Array, coeffs: dict) -> jax.Array:
    """`[b, s]` -> encoder output `[b, s, m]`, with the encoder's interventions."""
    return model.apply(with_patch(params, encoder_patch(coeffs)), src,
                       method=Transformer.encode)


def decode_step(model: Transformer, params: Params, cache: dict, encoded: jax.Array,
                src: jax.Array, tokens: jax.Array, capture: bool, patch: dict | None = None
                ) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    """Feed one token per row (`[b]`) at the cache index: -> logits `[b, v]`, the updated
    cache, and (capture) this step's intermediates `{name: [b, ...]}`; `patch` is the step's
    `patch` collection (`step_patch`)."""
    mutable = ["cache", "intermediates"] if capture else ["cache"]
    logits, state = model.apply(with_patch(params, patch, cache=cache), tokens[:, None],
                                encoded, src != model.config.pad_id, decode=True,
                                method=Transformer.decode, mutable=mutable)
    inter = {}
    if capture:
        inter = {n: v for n, v in flatten_sown(state["intermediates"]).items() if captured(n)}
    return logits[:, 0], state["cache"], inter


def capture_buffers(step_shapes: dict, max_len: int) -> dict[str, jax.Array]:
    """Zeroed `[max_len, ...]` buffers for the step intermediates (shapes from eval_shape)."""
    return {n: jnp.zeros((max_len, *s.shape), s.dtype) for n, s in step_shapes.items()}


def record(buffers: dict, inter: dict, step: jax.Array) -> dict:
    return {n: buffers[n].at[step].set(inter[n]) for n in buffers}


def finish_capture(buffers: dict, steps: int) -> dict[str, np.ndarray]:
    """Device buffers -> numpy, cut to the steps actually run; the self-attention key axis is
    cut to the cache length reached (slots never written are all masked)."""
    out = {}
    for name, value in buffers.items():
        value = np.asarray(value)[:steps]
        if "/self_attn/" in name and name.endswith(("/scores", "/weights")):
            value = value[..., :steps]  # [steps, b, h, 1, steps]
        out[name] = value
    return out


def greedy_body(config: TransformerConfig, max_len: int, capture: bool):
    """The pure search `run(params, src, coeffs) -> (tokens, steps, buffers)`."""
    model = Transformer(config)

    def run(params: Params, src: jax.Array, coeffs: dict):
        b = src.shape[0]
        encoded = encode(model, params, src, coeffs)                           # [b, s, m]
        cache = start_cache(model, params, encoded, src, max_len)
        first = jnp.full((b,), config.bos_id, jnp.int32)
        buffers = {}
        if capture:
            shapes = jax.eval_shape(lambda c: decode_step(
                model, params, c, encoded, src, first, True, step_patch(coeffs, 0))[2], cache)
            buffers = capture_buffers(shapes, max_len)
        state = dict(
            step=jnp.array(0, jnp.int32),
            tokens=jnp.full((b, max_len), config.pad_id, jnp.int32),  # [b, max_len]
            last=first,                                                # [b]
            finished=jnp.zeros((b,), bool),                            # [b]
            done=jnp.array(False),
            cache=cache,
            buffers=buffers,
        )

        def body(s: dict) -> dict:
            logits, cache, inter = decode_step(model, params, s["cache"], encoded, src,
                                               s["last"], capture, step_patch(coeffs, s["step"]))
            # finished rows emit pad (HF: next * unfinished + pad * (1 - unfinished))
            token = jnp.where(s["finished"], config.pad_id,
                              jnp.argmax(logits, axis=-1).astype(jnp.int32))   # [b]
            finished = s["finished"] | (token == config.eos_id)
            step = s["step"] + 1
            return dict(step=step, tokens=s["tokens"].at[:, s["step"]].set(token), last=token,
                        finished=finished, done=finished.all() | (step >= max_len),
                        cache=cache, buffers=record(s["buffers"], inter, s["step"]))

        out = lax.while_loop(lambda s: ~s["done"], body, state)
        return out["tokens"], out["step"], out["buffers"]

    return run


@functools.lru_cache(maxsize=32)
def _greedy_fn(config: TransformerConfig, max_len: int, capture: bool):
    return jax.jit(greedy_body(config, max_len, capture))


def greedy_decode(params: Params, config: TransformerConfig, src: object, max_len: int,
                  patch=None, capture: bool = False):
    """Greedy search: `src [b, s]` -> tokens `[b, max_len]` (numpy int32), or
    `(tokens, {name: [steps, b, ...]})` with `capture=True`; `patch` as in `forward`, applied
    at every step (module docstring)."""
    src_np = check_decode_inputs(config, src, max_len)
    fns, coeffs = decode_plan(patch, config, *src_np.shape, int(max_len))
    if fns:
        fn = jax.jit(traced_with(fns, greedy_body(config, int(max_len), bool(capture))))
    else:
        fn = _greedy_fn(config, int(max_len), bool(capture))
    return run_search(fn, params, src_np, capture, coeffs)


def run_search(fn, params, src_np: np.ndarray, capture: bool, coeffs: dict):
    """Run a jitted search `fn(params, src, coeffs) -> (tokens, steps, buffers)` at full
    precision: tokens as numpy, plus the per-step capture cut to the steps actually run."""
    coeffs = {n: (jnp.asarray(a), jnp.asarray(b)) for n, (a, b) in coeffs.items()}
    with jax.default_matmul_precision("highest"):
        tokens, steps, buffers = fn(params, jnp.asarray(src_np, jnp.int32), coeffs)
    tokens = np.asarray(tokens)
    if capture:
        return tokens, finish_capture(buffers, int(steps))
    return tokens
