"""The Hugging Face side: a transformers model over the torch mirror, and MarianMT converters.

Importing the package registers `model_type="transformer_lab"` with `AutoConfig` and
`AutoModelForSeq2SeqLM`, so `AutoModelForSeq2SeqLM.from_pretrained(folder)` works after
`import hf_bridge`.  `hf_bridge.marian` converts to and from HF's own `MarianMTModel`.
"""

from .config import TransformerLabConfig
from .decoding import generate_tokens, pad_after_eos, patched_generation
from .modeling import (
    TransformerLabEncoder,
    TransformerLabForConditionalGeneration,
    TransformerLabPreTrainedModel,
    shift_tokens_right,
)

__all__ = [
    "TransformerLabConfig", "TransformerLabEncoder", "TransformerLabForConditionalGeneration",
    "TransformerLabPreTrainedModel", "generate_tokens", "pad_after_eos", "patched_generation",
    "shift_tokens_right",
]
