"""The entry points: `init`, `to_canonical`, `from_canonical`, `forward`, `apply`.

The Flax params tree is already the canonical name set (module names were chosen for that), so
`to_canonical`/`from_canonical` only flatten with "/" and check every name and shape against
`spec.param_shapes`.  `forward` is the checked, full-precision, cached-jit entry for tests,
parity and analysis (with `patch=`); `apply` is the bare pure function for code that jits its
own step.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spec import TransformerConfig, check_params, check_tokens, intermediate_shapes, to_numpy
from spec.patching import forward_plan

from .capture import coefficient_tree, flatten_sown, patch_functions
from .model import Transformer

Params = dict  # the Flax `params` tree: nested dicts of float32 arrays


def check_config(config: object) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a spec.TransformerConfig, got {type(config).__name__}")
    return config


def dropout_key(rng: object, deterministic: bool) -> jax.Array | None:
    """`rng` (a jax PRNG key or an int seed) -> the dropout key; required when not deterministic."""
    if deterministic:
        return None
    if rng is None:
        raise ValueError("rng is None but deterministic=False: dropout needs a PRNG key "
                         "(a jax.random key or an int seed)")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.PRNGKey(int(rng))
    return rng


def init(config: TransformerConfig, seed: int = 0) -> Params:
    """Fresh parameters for `config`; the same seed gives the same numbers."""
    check_config(config)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return _init_fn(config)(jax.random.PRNGKey(int(seed)))


@functools.lru_cache(maxsize=16)
def _init_fn(config: TransformerConfig):
    """One jitted init per config (compiling it costs far more than running it)."""
    dummy = jnp.zeros((1, 1), jnp.int32)  # shapes only: every param's shape is fixed by config

    def make(key: jax.Array) -> Params:
        return Transformer(config).init({"params": key}, dummy, dummy)["params"]

    return jax.jit(make)


def to_canonical(params: Mapping) -> dict[str, np.ndarray]:
    """Flax params tree -> `{canonical_name: float32 np.ndarray}` (kernels stay `[in, out]`)."""
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return {name: np.array(value, dtype=np.float32) for name, value in flat.items()}  # own copies


def from_canonical(flat: Mapping[str, object], config: TransformerConfig) -> Params:
    """`{canonical_name: array}` (numpy, jax or torch) -> Flax params tree.

    Strict: a missing, unexpected, mis-shaped or non-float name raises one ValueError (spec)."""
    check_config(config)
    check_params(flat, config)
    tree = {tuple(name.split("/")): jnp.asarray(to_numpy(value), dtype=jnp.float32)
            for name, value in flat.items()}
    return traverse_util.unflatten_dict(tree)


def apply(params: Params, config: TransformerConfig, src: jax.Array, tgt: jax.Array,
          deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
    """The pure forward for use inside jit (training): ids -> logits `[b, t, v]`.

    No input checks and no precision change (the caller owns both); `rng` is the dropout key,
    needed when `deterministic=False`."""
    rngs = None if deterministic else {"dropout": rng}
    return Transformer(config).apply({"params": params}, src, tgt, deterministic=deterministic,
                                     rngs=rngs)


def forward_body(config: TransformerConfig, capture: bool, deterministic: bool):
    """The pure forward `run(params, src, tgt, rng, patch_tree)` behind `forward`; `patch_tree`
    is the `patch` collection (capture.coefficient_tree) or None."""
    model = Transformer(config)

    def run(params, src, tgt, rng, patch_tree):
        rngs = None if deterministic else {"dropout": rng}
        variables = {"params": params, **({"patch": patch_tree} if patch_tree else {})}
        if not capture:
            return model.apply(variables, src, tgt, deterministic=deterministic, rngs=rngs), {}
        logits, state = model.apply(variables, src, tgt, deterministic=deterministic,
                                    rngs=rngs, mutable=["intermediates"])
        return logits, flatten_sown(state["intermediates"])

    return run


@functools.lru_cache(maxsize=64)
def _forward_fn(config: TransformerConfig, capture: bool, deterministic: bool):
    """One jitted forward per (config, capture, deterministic); config is a frozen dataclass.
    Intervention coefficients are arguments, so jit retraces only for new names or shapes."""
    return jax.jit(forward_body(config, capture, deterministic))


def traced_with(fns: Mapping, run):
    """`run` with patch functions open while it is traced (jit it: one compile per call)."""
    def traced(*args):
        with patch_functions(fns):
            return run(*args)
    return traced


def forward(params: Params, config: TransformerConfig, src: object, tgt: object,
            capture: bool = True, patch: Mapping | None = None, deterministic: bool = True,
            rng: object = None) -> tuple[jax.Array, dict[str, np.ndarray]]:
    """Checked forward at full float32 matmul precision.

    `src [b, s]`, `tgt [b, t]` integer ids (numpy, jax or torch; tgt starts with bos) ->
    `(logits [b, t, v] jax array, {canonical_name: np.ndarray})`, the dict in execution order
    and empty when `capture=False`.  Dropout only with `deterministic=False` and an `rng`.

    `patch` maps canonical names to jnp functions of the value (same shape back) or to
    `spec.interventions.Intervention`s, applied where each value is made (jax_model/capture.py
    `tap`).  Interventions are jit arguments (a sweep compiles once per set of names and
    shapes); a mapping with functions is traced and compiled anew on each call."""
    check_config(config)
    src_np, tgt_np = check_tokens(src, tgt, config)
    fns, coeffs = forward_plan(patch, config, *src_np.shape, tgt_np.shape[1])
    key = dropout_key(rng, deterministic)
    if fns:
        fn = jax.jit(traced_with(fns, forward_body(config, bool(capture), bool(deterministic))))
    else:
        fn = _forward_fn(config, bool(capture), bool(deterministic))
    with jax.default_matmul_precision("highest"):
        logits, raw = fn(params, jnp.asarray(src_np, jnp.int32), jnp.asarray(tgt_np, jnp.int32),
                         key, coefficient_tree(coeffs) if coeffs else None)
    order = intermediate_shapes(config, src_np.shape[0], src_np.shape[1], tgt_np.shape[1])
    names = [n for n in order if n in raw] + [n for n in raw if n not in order]
    return logits, {name: np.asarray(raw[name]) for name in names}
