"""PyTorch mirror of the Flax reference: same modules, same canonical names, taps everywhere.

`Transformer(config)` with `load_canonical` / `to_canonical` / `canonical_grads`;
`forward(model, src, tgt, capture=True, patch=None)`; `capture` / `patch` / `watch` context
managers on the taps; `greedy_decode` / `beam_search` with a KV cache (and `patch=`).  Never imports jax or transformers.
"""

from .api import forward, full_precision, init
from .cache import DynamicCache, EncoderDecoderCache
from .canonical import canonical_parameters
from .decoding import beam_search, greedy_decode
from .model import (
    Attention,
    Decoder,
    DecoderLayer,
    Embed,
    Encoder,
    EncoderLayer,
    FeedForward,
    LayerNorm,
    Output,
    TokenTable,
    Transformer,
)
from .pretrained import from_pretrained
from .taps import Tap, capture, has_hooks, name_taps, named_taps, patch, watch

__all__ = [
    "Attention", "Decoder", "DecoderLayer", "DynamicCache", "Embed", "Encoder",
    "EncoderDecoderCache", "EncoderLayer", "FeedForward", "LayerNorm", "Output", "Tap",
    "TokenTable",
    "Transformer", "beam_search", "canonical_parameters", "capture", "forward",
    "from_pretrained", "full_precision", "greedy_decode", "has_hooks", "init", "name_taps",
    "named_taps", "patch", "watch",
]
