"""The Flax (linen) reference Transformer: model, canonical weights, capture, decoding."""

from .api import apply, forward, from_canonical, init, to_canonical
from .beam_search import beam_search
from .capture import flatten_intermediates
from .decoding import greedy_decode
from .model import Transformer
from .pretrained import from_pretrained

__all__ = ["Transformer", "apply", "beam_search", "flatten_intermediates", "forward",
           "from_canonical", "from_pretrained", "greedy_decode", "init", "to_canonical"]
