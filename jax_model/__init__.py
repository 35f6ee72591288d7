"""The Flax (linen) reference Transformer: model, canonical weights, capture, decoding."""

from .api import apply, forward, from_canonical, init, to_canonical
from .capture import flatten_intermediates
from .model import Transformer

__all__ = ["Transformer", "apply", "flatten_intermediates", "forward", "from_canonical", "init",
           "to_canonical"]
