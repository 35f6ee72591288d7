"""A small KV cache with the duck type of transformers' `EncoderDecoderCache`.

The decoder only touches what HF's own caches offer, so the HF bridge can pass
`EncoderDecoderCache(DynamicCache(), DynamicCache())` straight through and torch_model needs no
transformers import:
- `cache.self_attention_cache.update(k, v, layer_idx)` appends along the length axis and returns
  the full `[b, h, k, d]` keys and values;
- `cache.cross_attention_cache.layers[i].keys / .values` hold the encoder-side K/V, computed once;
  `cache.is_updated[i]` says they are there;
- `cache.get_seq_length()` is the number of decoder positions already cached (the position
  offset of the next step); `cache.reorder_cache(beam_idx)` follows beam search.
"""

from __future__ import annotations

import torch


class DynamicLayer:
    """One layer's keys and values, `[b, h, k, d]`, grown by concatenation."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)      # [b, h, k + new, d]
            self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def reorder(self, beam_idx: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys = self.keys.index_select(0, beam_idx.to(self.keys.device))
            self.values = self.values.index_select(0, beam_idx.to(self.values.device))


class DynamicCache:
    """Per-layer caches, created lazily by `update(key_states, value_states, layer_idx)`."""

    def __init__(self) -> None:
        self.layers: list[DynamicLayer] = []

    def __len__(self) -> int:
        return len(self.layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict | None = None, **kwargs: object
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new `[b, h, new, d]` states of layer `layer_idx`; return all of them."""
        while len(self.layers) <= layer_idx:
            self.layers.append(DynamicLayer())
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].get_seq_length()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Keep batch rows `beam_idx` (beam search picks which hypotheses continue)."""
        for layer in self.layers:
            layer.reorder(beam_idx)


class EncoderDecoderCache:
    """A self-attention cache and a cross-attention cache, as in transformers."""

    def __init__(self, self_attention_cache: DynamicCache | None = None,
                 cross_attention_cache: DynamicCache | None = None) -> None:
        self.self_attention_cache = self_attention_cache or DynamicCache()
        self.cross_attention_cache = cross_attention_cache or DynamicCache()
        self.is_updated: dict[int, bool] = {
            i: self.cross_attention_cache.get_seq_length(i) > 0
            for i in range(len(self.cross_attention_cache))}

    def __len__(self) -> int:
        return len(self.self_attention_cache)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.self_attention_cache.get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)
        self.cross_attention_cache.reorder_cache(beam_idx)
