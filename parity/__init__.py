"""Cross-framework parity: `python -m parity.check` proves jax, torch, HF (and MarianMT) agree.

Every comparison is keyed by canonical name, normalised as max|a - b| / max(1, max|ref|), with
the tolerances of `parity.tolerances`; the JAX model is the reference side of every pair.
"""

from .report import Check, compare, compare_tokens, format_table, write_json

__all__ = ["Check", "compare", "compare_tokens", "format_table", "write_json"]
