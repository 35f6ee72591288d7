"""Inputs shared by the per-framework test files, so the jax and torch suites test the same
batches (imported as `helpers`: pytest puts this folder on sys.path)."""

import numpy as np

import spec


def padded_ids(config: spec.TransformerConfig, seed: int = 0, b: int = 4, s: int = 7,
               t: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """src [b, s] ending in eos then pad (rows of lengths s, 4, 0 = all pad, 6, ...),
    tgt [b, t] starting with bos."""
    rng = np.random.default_rng(seed)
    src = rng.integers(3, config.src_vocab_size, (b, s))
    for row, length in enumerate(((s, 4, 0, 6) * b)[:b]):
        if length:
            src[row, length - 1] = config.eos_id
        src[row, length:] = config.pad_id
    tgt = rng.integers(3, config.tgt_vocab_size, (b, t))
    tgt[:, 0] = config.bos_id
    return src, tgt


def hand_batch(seed: int = 0, rows: int = 8, s: int = 7, t: int = 5) -> dict[str, np.ndarray]:
    """Tiny-preset ids (vocab 64) with two pad label positions per row: every half of the batch
    has the same non-pad count, so accumulated halves equal one full batch."""
    rng = np.random.default_rng(seed)
    src = rng.integers(3, 64, (rows, s)).astype(np.int32)
    src[:, -1] = 0
    tgt = rng.integers(3, 64, (rows, t)).astype(np.int32)
    tgt[:, 0] = 1
    labels = rng.integers(3, 64, (rows, t)).astype(np.int32)
    labels[:, -2:] = 0
    return {"src": src, "tgt_in": tgt, "labels": labels}


def normalised(a: np.ndarray, ref: np.ndarray) -> float:
    """The contract's normalised difference (spec.compare), as one float."""
    return spec.normalised_diff(a, ref)[1]


def random_flat(config: spec.TransformerConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical weights with non-trivial norms and biases, so every parameter matters."""
    return spec.random_params(config, seed, weight_std=0.3)
