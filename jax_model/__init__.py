"""The Flax (linen) reference Transformer: model, canonical weights, capture, patching, decoding.

`forward(..., patch=)`, `greedy_decode(..., patch=)` and `beam_search(..., patch=)` take
`{canonical_name: jnp fn or spec Intervention}`; `capture.tap` is where every value is made.
"""

from .api import apply, forward, from_canonical, init, to_canonical
from .beam_search import beam_search
from .capture import flatten_intermediates, patch_functions
from .decoding import greedy_decode
from .model import Transformer

__all__ = ["Transformer", "apply", "beam_search", "flatten_intermediates", "forward",
           "from_canonical", "greedy_decode", "init", "patch_functions", "to_canonical"]
