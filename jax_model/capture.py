"""Reading sown intermediates: the one place that turns Flax's `intermediates` collection into
canonical names.

`self.sow("intermediates", name, value)` stores `(value,)` under the module path, so the
collection flattened with "/" is `{canonical_name: (value,)}`; nothing else is renamed.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util


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
