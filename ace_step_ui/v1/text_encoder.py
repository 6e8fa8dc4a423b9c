"""The prompt encoder: `umt5-base/` (transformers' UMT5 encoder and its `tokenizer.json`).

ERG on the tags (upstream's `get_text_embeddings_null`) runs the same encoder with the query
projections of self-attention blocks 8 and 9 scaled by 0.01, which flattens their attention.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .weights import build_on_meta, load_weights

MAX_PROMPT_TOKENS = 256
ERG_TAG_BLOCKS = (8, 9)
ERG_SCALE = 0.01


def stored_umt5(config):
    """A UMT5 encoder with exactly the tensors of `model.safetensors`.

    The encoder's input embedding is tied to `shared` and not stored; it is re-tied after loading.
    """
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel(config)
    del model.encoder.embed_tokens
    return model


class TextEncoder:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, folder: Path, device: torch.device, dtype: torch.dtype) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5Config

        config = UMT5Config.from_pretrained(folder)
        model = build_on_meta(lambda: stored_umt5(config))
        load_weights(model, folder / "model.safetensors", device, dtype)
        model.encoder.embed_tokens = model.shared
        return cls(model, AutoTokenizer.from_pretrained(folder))

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer([prompt], padding=True, truncation=True,
                               max_length=MAX_PROMPT_TOKENS, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @torch.no_grad()
    def encode(self, prompt: str, *, erg_tag: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state [1, L, d_model], attention mask [1, L]) of `prompt`."""
        input_ids, mask = self.tokenize(prompt)
        with self._erg_tag(erg_tag):
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return hidden, mask

    @contextmanager
    def _erg_tag(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        blocks = self.model.encoder.block
        if len(blocks) <= max(ERG_TAG_BLOCKS):
            raise ValueError(f"ERG on tags needs at least {max(ERG_TAG_BLOCKS) + 1} UMT5 layers")
        handles = [blocks[i].layer[0].SelfAttention.q.register_forward_hook(
            lambda _module, _inputs, output: output * ERG_SCALE) for i in ERG_TAG_BLOCKS]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
