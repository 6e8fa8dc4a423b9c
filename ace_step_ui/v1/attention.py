"""The two attentions of the ACE-Step v1 DiT block, and its rotary position embedding.

Self-attention over the latent frames is ReLU linear attention (Sana's "LiteLA"); cross-attention to
the condition sequence is ordinary softmax attention. Both rotate queries and keys with RoPE. Layer
names (`to_q`, `to_k`, `to_v`, `to_out.0`) are the checkpoint's, and
every projection is an `nn.Linear` called as a module, so LoRA layers can wrap them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Added to the linear-attention denominator (upstream's value); only matters for all-zero rows.
LINEAR_ATTENTION_EPS = 1e-15


@dataclass(frozen=True)
class ItemScale:
    """A query factor for some items of the batch only: ERG's null branch when the guidance
    passes run as one batch."""

    factor: float
    items: torch.Tensor  # bool [B]


QueryScale = float | ItemScale


def scale_queries(query: torch.Tensor, scale: QueryScale) -> torch.Tensor:
    """`query [B, S, H*D]` times `scale`; for an `ItemScale`, the items it names get exactly the
    numbers they would get alone."""
    if isinstance(scale, ItemScale):
        return torch.where(scale.items[:, None, None], query * scale.factor, query)
    return query * scale if scale != 1.0 else query


def cross_attention_bias(mask: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor | None:
    """The additive mask `[B, 1, S, L]` (0 where both the frame and the condition token are real,
    -inf elsewhere), or None when every pair is real: SDPA then runs its unmasked (flash) kernel."""
    if bool(mask.all()) and bool(context_mask.all()):
        return None
    pair_mask = mask[:, :, None] * context_mask[:, None, :]
    return torch.where(pair_mask == 1, 0.0, -torch.inf)[:, None]


def rotary_tables(length: int, head_dim: int, theta: float, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin `[length, head_dim]` for positions 0..length-1, frequencies in
    half-split layout; the sin of every even element negated (see `apply_rotary`).

    Computed in float32 like upstream's cached tables, then cast to the activations' dtype.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float()
                                / head_dim))
    positions = torch.arange(length, dtype=torch.int64, device=device).float()
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    sin = angles.sin()
    sin[:, 0::2] = -sin[:, 0::2]
    return angles.cos().to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x [B, H, S, D]` by the tables `[S, D]` of `rotary_tables`, in float32.

    Upstream quirk kept on purpose: the tables use the half-split layout (element j has frequency
    j mod D/2) but the rotation pairs neighbours (2k, 2k+1). The weights were trained this way.
    Upstream's `x * cos + (-x[2k+1], x[2k]) * sin`, as `x * cos + (x[2k+1], x[2k]) * signed_sin`:
    the same bits (a negation is exact) in 4 operations instead of 8.
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (x.float() * cos + swapped.float() * signed_sin).to(x.dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`[B, S, H*D]` -> `[B, H, S, D]`."""
    batch, length, _ = x.shape
    return x.view(batch, length, heads, -1).transpose(1, 2)


class LinearSelfAttention(nn.Module):
    """ReLU linear attention over the latent frames: out_s = sum_t v_t (k_t . q_s) / sum_t (k_t . q_s)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor], query_scale: QueryScale = 1.0) -> torch.Tensor:
        """`mask [B, S]` marks the real frames; None when every frame is real."""
        dtype = hidden_states.dtype
        batch, length, _ = hidden_states.shape
        query = scale_queries(self.to_q(hidden_states), query_scale)
        query = apply_rotary(split_heads(query, self.heads), *rotary).transpose(-1, -2)  # [B,H,D,S]
        key = apply_rotary(split_heads(self.to_k(hidden_states), self.heads), *rotary)  # [B,H,S,D]
        value = split_heads(self.to_v(hidden_states), self.heads).transpose(-1, -2)  # [B,H,D,S]

        if mask is not None:
            frame_mask = mask[:, None, :, None].to(key.dtype)  # [B,1,S,1]
            query = query * frame_mask.transpose(-1, -2)
            key = key * frame_mask
            value = value * frame_mask.transpose(-1, -2)
        query, key = torch.relu(query), torch.relu(key)

        # A row of ones appended to v makes the same two matmuls also give the denominator.
        value = F.pad(value.float(), (0, 0, 0, 1), value=1.0)
        weighted = torch.matmul(torch.matmul(value, key.float()), query.float())  # [B,H,D+1,S]
        out = weighted[:, :, :-1] / (weighted[:, :, -1:] + LINEAR_ATTENTION_EPS)
        out = out.reshape(batch, -1, length).transpose(1, 2).to(dtype)
        return self.to_out[0](out)


class CrossAttention(nn.Module):
    """Softmax attention from latent frames to the condition sequence, RoPE on both sides.

    The checkpoint also holds `add_q_proj`, `add_k_proj`, `add_v_proj` and `to_add_out` (joint
    attention projections that inference never runs): they are not built, and loading skips them
    (`transformer.TRAINING_ONLY`).
    """

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def keys_values(self, context: torch.Tensor, context_rotary: tuple[torch.Tensor, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotated keys and the values `[B, H, L, D]` of the condition sequence: the same at
        every step of a song, so the pipeline computes them once (`ACEStepTransformer.condition`)."""
        key = apply_rotary(split_heads(self.to_k(context), self.heads), *context_rotary)
        return key, split_heads(self.to_v(context), self.heads)

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None, context: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor],
                context_rotary: tuple[torch.Tensor, torch.Tensor], query_scale: QueryScale = 1.0,
                keys_values: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`bias`: `cross_attention_bias` of the frame and condition masks."""
        batch = hidden_states.shape[0]
        query = scale_queries(self.to_q(hidden_states), query_scale)
        query = apply_rotary(split_heads(query, self.heads), *rotary)
        key, value = keys_values if keys_values is not None else self.keys_values(context,
                                                                                  context_rotary)
        if bias is not None:
            bias = bias.to(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * query.shape[-1]).to(query.dtype)
        return self.to_out[0](out)
