"""Random canonical weights for tests, demos and benchmarks, framework-free.

Every weight is random and far from an initialiser's symmetric defaults (norm scales away from
1, non-zero biases), so a swapped, transposed or ignored parameter changes the outputs.
"""

from __future__ import annotations

import numpy as np

from .config import TransformerConfig
from .names import param_shapes


def random_params(config: TransformerConfig, seed: int = 0, weight_std: float = 0.2,
                  bias_std: float = 0.1) -> dict[str, np.ndarray]:
    """`{name: float32 array}`: kernels and tables N(0, weight_std), biases N(0, bias_std),
    LayerNorm scales 1 + N(0, bias_std)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in param_shapes(config).items():
        std = weight_std if len(shape) == 2 else bias_std
        value = rng.normal(0.0, std, shape) + (1.0 if name.endswith("/scale") else 0.0)
        flat[name] = value.astype(np.float32)
    return flat
