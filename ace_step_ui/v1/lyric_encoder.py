"""The lyric encoder of ACE-Step v1: a 6-layer Conformer (CosyVoice/wenet style) over lyric token embeddings.

Only the parts the checkpoint uses: a linear input layer, ESPnet relative positional encoding,
pre-norm layers of relative-position self-attention and a SiLU feed-forward, full (non-chunked)
attention, no convolution module, no macaron feed-forward. The sizes are fixed by the released
model (upstream hard-codes them), not read from the config.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import QueryScale, scale_queries

WIDTH = 1024
HEADS = 16
FEED_FORWARD_WIDTH = 4096
LAYERS = 6
LAYER_NORM_EPS = 1e-5


def relative_position_table(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ESPnet sinusoids for relative positions length-1 .. -(length-1): `[1, 2*length-1, dim]`.

    Computed in float32 exactly as upstream builds its (longer) cached table, then cast.
    """
    positions = torch.arange(0, length, dtype=torch.float32, device=device).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                            * -(math.log(10000.0) / dim))
    positive = torch.zeros(length, dim, device=device)
    negative = torch.zeros(length, dim, device=device)
    positive[:, 0::2] = torch.sin(positions * frequencies)
    positive[:, 1::2] = torch.cos(positions * frequencies)
    negative[:, 0::2] = torch.sin(-1 * positions * frequencies)
    negative[:, 1::2] = torch.cos(-1 * positions * frequencies)
    table = torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0)
    return table.unsqueeze(0).to(dtype)


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """`[..., T, 2T-1]` scores against the relative-position table -> `[..., T, T]` by key position.

    Column c of the table is relative position T-1-c, so query i and key j read column T-1-i+j.
    """
    length = scores.shape[-2]
    query = torch.arange(length, device=scores.device)[:, None]
    key = torch.arange(length, device=scores.device)[None, :]
    return scores[..., query, length - 1 - query + key]


class RelativePositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (learned biases u and v)."""

    def __init__(self, width: int = WIDTH, heads: int = HEADS):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.linear_q = nn.Linear(width, width)
        self.linear_k = nn.Linear(width, width)
        self.linear_v = nn.Linear(width, width)
        self.linear_out = nn.Linear(width, width)
        self.linear_pos = nn.Linear(width, width, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)  # upstream's init (a no-op on the meta device)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, position_table: torch.Tensor,
                query_scale: QueryScale = 1.0) -> torch.Tensor:
        """`x [B, T, W]`, `key_mask [B, 1, T]` (bool, True = real token), table `[1, 2T-1, W]`."""
        batch, length, _ = x.shape
        query = scale_queries(self.linear_q(x), query_scale)
        query = query.view(batch, length, self.heads, self.head_dim)  # [B, T, H, D]
        key = self.linear_k(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        value = self.linear_v(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        position = self.linear_pos(position_table).view(1, -1, self.heads, self.head_dim).transpose(1, 2)

        content_scores = torch.matmul((query + self.pos_bias_u).transpose(1, 2), key.transpose(-2, -1))
        position_scores = torch.matmul((query + self.pos_bias_v).transpose(1, 2), position.transpose(-2, -1))
        if position_scores.shape != content_scores.shape:
            position_scores = relative_shift(position_scores)
        scores = (content_scores + position_scores) / math.sqrt(self.head_dim)

        padded = key_mask.unsqueeze(1).eq(0)  # [B, 1, 1, T]
        # A fully padded row (empty lyrics) gives NaN from softmax; zeroing afterwards makes it 0.
        weights = torch.softmax(scores.masked_fill(padded, -float("inf")), dim=-1).masked_fill(padded, 0.0)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(batch, length, -1)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, width: int = WIDTH, hidden: int = FEED_FORWARD_WIDTH):
        super().__init__()
        self.w_1 = nn.Linear(width, hidden)
        self.w_2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(nn.functional.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.self_attn = RelativePositionAttention(width)
        self.feed_forward = FeedForward(width)
        self.norm_ff = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, position_table: torch.Tensor,
                query_scale: QueryScale = 1.0) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), key_mask, position_table, query_scale)
        return x + self.feed_forward(self.norm_ff(x))


class InputLayer(nn.Module):
    """Linear -> LayerNorm (checkpoint keys `embed.out.0`, `embed.out.1`)."""

    def __init__(self, input_size: int, width: int = WIDTH):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(input_size, width), nn.LayerNorm(width, eps=LAYER_NORM_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


class LyricEncoder(nn.Module):
    """`[B, T, input_size]` embeddings and `[B, T]` mask -> `[B, T, 1024]`."""

    def __init__(self, input_size: int):
        super().__init__()
        self.embed = InputLayer(input_size)
        self.encoders = nn.ModuleList([ConformerLayer() for _ in range(LAYERS)])
        self.after_norm = nn.LayerNorm(WIDTH, eps=LAYER_NORM_EPS)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor,
                query_scales: dict[int, QueryScale] | None = None,
                items: torch.Tensor | None = None) -> torch.Tensor:
        """`query_scales` maps a layer index to a factor for its `self_attn.linear_q` output (ERG):
        for the whole batch or (an `ItemScale`) for some of its items.

        `items` (a long `[B']`) makes the batch `embeddings[items]`, with `mask[items]` as its
        mask: the layers before the first scaled one run once per input item, and their output
        is then picked for each item (ERG's null branch reads the same lyrics as the conditional
        one and differs only from layer 4 on)."""
        query_scales = query_scales or {}
        key_mask = mask.to(torch.bool).unsqueeze(1)
        x = self.embed(embeddings) * math.sqrt(WIDTH)
        table = relative_position_table(x.shape[1], WIDTH, x.device, x.dtype)
        # The layer from which each item runs on its own (None: every item already does).
        shared = min(query_scales, default=len(self.encoders)) if items is not None else None
        for index, layer in enumerate(self.encoders):
            if index == shared:
                x, key_mask = x[items], key_mask[items]
            x = layer(x, key_mask, table, query_scales.get(index, 1.0))
        if shared == len(self.encoders):
            x = x[items]
        return self.after_norm(x)
