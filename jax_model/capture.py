"""Where a value is made: `tap` patches, perturbs and sows it; `flatten_sown` reads the sown ones.

`tap(module, point, value)` is called at every canonical intermediate (the module's path plus
`point` is the canonical name).  In order it applies

1. a patch *function* for that name, if `patch_functions({...})` is open while the forward is
   traced (jnp functions; traced into the graph, so a new mapping means a new trace);
2. intervention coefficients from the `patch` collection (`{"scale", "shift"}` at the module's
   path under the point's name): `value * scale + shift`.  They are ordinary jit arguments, so a
   sweep of interventions on the same names compiles once;
3. a perturbation from the `perturbations` collection (zeros, added), whose gradient is
   d metric / d value as the rest of the model sees it (after 1 and 2), as flax `perturb`;
4. `sow("intermediates", point, value)`.

With no function, no `patch` and no `perturbations` collection, it adds no operation: capture
off and patch off trace exactly the graph of a bare forward.

`self.sow("intermediates", name, value)` stores `(value,)` under the module path, so the
collection flattened with "/" is `{canonical_name: (value,)}`; nothing else is renamed.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from spec.patching import check_result

_FUNCTIONS: contextvars.ContextVar[Mapping[str, Callable] | None] = contextvars.ContextVar(
    "jax_model_patch_functions", default=None)


@contextlib.contextmanager
def patch_functions(fns: Mapping[str, Callable] | None) -> Iterator[None]:
    """Patch functions `{canonical_name: fn(value) -> value}` for forwards traced inside."""
    token = _FUNCTIONS.set(dict(fns) if fns else None)
    try:
        yield
    finally:
        _FUNCTIONS.reset(token)


def tap(module: nn.Module, point: str, value: jax.Array) -> jax.Array:
    """Patch, perturb and sow `value` at `module`'s `point` (module docstring); returns the value
    the rest of the model uses."""
    fns = _FUNCTIONS.get()
    if fns:
        name = "/".join((*module.path, point))
        fn = fns.get(name)
        if fn is not None:
            new = fn(value)
            check_result(name, value.shape, new)
            value = new
    if module.has_variable("patch", point):
        coeffs = module.get_variable("patch", point)
        value = value * coeffs["scale"].astype(value.dtype) + coeffs["shift"].astype(value.dtype)
    if module.has_variable("perturbations", point):
        value = value + module.get_variable("perturbations", point).astype(value.dtype)
    module.sow("intermediates", point, value)
    return value


def nest(flat: Mapping[str, object]) -> dict:
    """`{canonical_name: leaf}` -> the nested collection Flax scopes read."""
    return traverse_util.unflatten_dict({tuple(n.split("/")): v for n, v in flat.items()})


def coefficient_tree(coeffs: Mapping[str, tuple]) -> dict:
    """`{name: (scale, shift)}` -> the `patch` collection."""
    return nest({n: {"scale": a, "shift": b} for n, (a, b) in coeffs.items()})


def flatten_sown(collection: Mapping) -> dict[str, jax.Array]:
    """`intermediates` collection -> `{canonical_name: array}`; works inside jit."""
    flat = traverse_util.flatten_dict(dict(collection), sep="/")
    out = {}
    for name, values in flat.items():
        if len(values) != 1:
            raise ValueError(f"intermediate {name!r} was recorded {len(values)} times in one "
                             "call; expected exactly once (was a module applied twice?)")
        out[name] = values[0]
    return out


def flatten_intermediates(collection: Mapping) -> dict[str, np.ndarray]:
    """`intermediates` collection -> `{canonical_name: np.ndarray}` (the public capture format)."""
    return {name: np.asarray(value) for name, value in flatten_sown(collection).items()}
