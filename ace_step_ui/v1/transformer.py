"""The ACE-Step v1 diffusion transformer (checkpoint folder `ace_step_transformer/`).

`encode` turns the conditions (UMT5 prompt states, speaker embedding, lyric token ids) into one
sequence; `decode` predicts the flow-matching velocity of latents `[B, 8, 16, T]` at a timestep on
the 0..1000 scale. A Sana-style DiT: one token per latent frame, adaLN-single modulation, ReLU linear
self-attention, softmax cross-attention to the conditions, a gated depthwise-conv feed-forward.

Module and parameter names are the checkpoint's, so the weights load strictly. The training-only
parts of the checkpoint (the SSL `projectors`, the cross-attention `add_*` projections: 717 M of its
3.3 B parameters at full size) are declared in `TRAINING_ONLY`, never built and never read.
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from torch import nn
from torch.nn import functional as F

from ..speed import pinned, streamed
from .attention import (CrossAttention, ItemScale, LinearSelfAttention, QueryScale,
                        cross_attention_bias, rotary_tables)
from .lyric_encoder import WIDTH as LYRIC_ENCODER_WIDTH
from .lyric_encoder import LyricEncoder

# ERG ("energy"-style guidance) weakens the unconditional branch by scaling some query projections.
# Upstream hard-codes the layers and the factor in its pipeline hooks.
ERG_QUERY_SCALE = 0.01
ERG_LYRIC_LAYERS = range(4, 6)
ERG_DIFFUSION_BLOCKS = range(15, 20)

NORM_EPS = 1e-6
TIMESTEP_CHANNELS = 256
# PatchEmbed ignores the config's `in_channels`: upstream always builds it with 8 latent channels.
LATENT_CHANNELS = 8
PATCH_HIDDEN_CHANNELS = LATENT_CHANNELS * 256


@dataclass(frozen=True)
class TransformerConfig:
    """The fields of `ace_step_transformer/config.json` the model uses; defaults are upstream's.

    `in_channels`, `inner_dim` and `max_width` are in the file but upstream ignores them (the inner
    width is heads x head_dim).
    """

    num_layers: int = 28
    attention_head_dim: int = 64
    num_attention_heads: int = 24
    mlp_ratio: float = 4.0
    out_channels: int = 8
    max_position: int = 32768
    rope_theta: float = 1000000.0
    speaker_embedding_dim: int = 512
    text_embedding_dim: int = 768
    ssl_encoder_depths: tuple[int, ...] = (9, 9)
    ssl_names: tuple[str, ...] = ("mert", "m-hubert")
    ssl_latent_dims: tuple[int, ...] = (1024, 768)
    lyric_encoder_vocab_size: int = 6681
    lyric_hidden_size: int = 1024
    patch_size: tuple[int, int] = (16, 1)
    max_height: int = 16

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TransformerConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in data.items() if key in known}
        return cls(**values)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def rms_norm(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """RMS normalisation without weights, statistics in float32 (diffusers' RMSNorm)."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ConvLayer(nn.Module):
    """A Conv1d behind a `.conv` attribute (the checkpoint's key layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class GLUMBConv(nn.Module):
    """Feed-forward: 1x1 expand + SiLU, depthwise k=3, gate a * SiLU(g), 1x1 back (no bias).

    The checkpoint stores the 1x1 layers as Conv1d; they run as the GEMMs they are, on views of
    the same weights (`pointwise`): on CPU about 1.7x faster than the convolution at 108 frames and
    as fast at 323, equal to it within float32 rounding (bench/speed.py, tests)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inverted_conv = ConvLayer(dim, 2 * hidden, 1)
        self.depth_conv = ConvLayer(2 * hidden, 2 * hidden, 3, groups=2 * hidden)
        self.point_conv = ConvLayer(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(pointwise(self.inverted_conv.conv, x))  # [B, T, 2H]
        x, gate = depthwise(self.depth_conv.conv, x).chunk(2, dim=-1)
        return pointwise(self.point_conv.conv, x * nn.functional.silu(gate))


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 Conv1d applied to channels-last `x [B, T, C]` as a linear layer."""
    return nn.functional.linear(x, conv.weight.squeeze(-1), conv.bias)


def depthwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise Conv1d applied to channels-last `x [B, T, C]`, returning `[B, T, C]`.

    `x` viewed as `[B, C, 1, T]` is already in torch's channels-last 2-D layout, so it runs as a
    1 x k conv2d with no copy either way. On CPU the op is 7-20x faster than the Conv1d on the
    transposed input at the full-size shapes, and a full-size DiT forward takes about 0.92x its
    time (bench/dit_forward.py); equal to the Conv1d within float32 rounding (tests)."""
    out = nn.functional.conv2d(x.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias,
                               padding=(0, conv.padding[0]), groups=conv.groups)
    return out.squeeze(2).transpose(1, 2)


class TransformerBlock(nn.Module):
    """adaLN-single block: gated self-attention, ungated un-normalised cross-attention, gated FF."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.attn = LinearSelfAttention(dim, heads, head_dim)
        self.cross_attn = CrossAttention(dim, heads, head_dim)
        self.ff = GLUMBConv(dim, int(dim * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)  # upstream's init

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, context: torch.Tensor,
                cross_bias: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor],
                context_rotary: tuple[torch.Tensor, torch.Tensor], timestep_modulation: torch.Tensor,
                query_scale: QueryScale = 1.0,
                keys_values: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        batch = hidden_states.shape[0]
        shift_attn, scale_attn, gate_attn, shift_ff, scale_ff, gate_ff = (
            self.scale_shift_table[None] + timestep_modulation.reshape(batch, 6, -1)).chunk(6, dim=1)

        attended = self.attn(modulate(rms_norm(hidden_states), shift_attn, scale_attn), mask, rotary,
                             query_scale)
        hidden_states = gate_attn * attended + hidden_states
        hidden_states = self.cross_attn(hidden_states, cross_bias, context, rotary, context_rotary,
                                        query_scale, keys_values) + hidden_states
        fed_forward = self.ff(modulate(rms_norm(hidden_states), shift_ff, scale_ff))
        return hidden_states + gate_ff * fed_forward


class PatchEmbed(nn.Module):
    """`[B, 8, 16, T]` latents -> `[B, T, D]` tokens: a (16 x 1) patch conv, GroupNorm, 1x1 conv."""

    def __init__(self, patch_size: tuple[int, int], dim: int):
        super().__init__()
        self.early_conv_layers = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, PATCH_HIDDEN_CHANNELS, kernel_size=patch_size, stride=patch_size),
            nn.GroupNorm(32, PATCH_HIDDEN_CHANNELS, eps=NORM_EPS),
            nn.Conv2d(PATCH_HIDDEN_CHANNELS, dim, kernel_size=1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        patch_conv, norm, pointwise = self.early_conv_layers
        if latents.device.type == "cpu" and latents.dtype == torch.bfloat16:
            patches = _patch_conv_as_matmul(patch_conv, latents)
        else:
            patches = patch_conv(latents)
        return pointwise(norm(patches)).flatten(2).transpose(1, 2)


def _patch_conv_as_matmul(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A conv whose stride is its kernel, as the matmul it is: oneDNN 3.12's AMX bfloat16 kernel
    (torch 2.13 on CPU) gets this 8 -> 2048, (16, 1) conv wrong (relative error about 1)."""
    rows, columns = x.shape[-2] // conv.stride[0], x.shape[-1] // conv.stride[1]
    patches = F.unfold(x, conv.kernel_size, stride=conv.stride)  # [B, C*kh*kw, rows*columns]
    out = conv.weight.flatten(1) @ patches + conv.bias[:, None]
    return out.unflatten(-1, (rows, columns))


class FinalLayer(nn.Module):
    """Modulated RMSNorm and a linear map from tokens back to latent patches."""

    def __init__(self, dim: int, patch_size: tuple[int, int], out_channels: int):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.norm_final = nn.RMSNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(dim, patch_size[0] * patch_size[1] * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim ** 0.5)  # upstream's init

    def forward(self, x: torch.Tensor, timestep_embedding: torch.Tensor, width: int) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + timestep_embedding[:, None]).chunk(2, dim=1)
        patches = self.linear(modulate(self.norm_final(x), shift, scale))
        batch, tokens, _ = patches.shape
        patch_h, patch_w = self.patch_size
        patches = patches.reshape(batch, 1, tokens, patch_h, patch_w, self.out_channels)
        latents = patches.permute(0, 5, 1, 3, 2, 4)  # (b, 1, t, ph, pw, c) -> (b, c, 1, ph, t, pw)
        latents = latents.reshape(batch, self.out_channels, patch_h, tokens * patch_w)
        if latents.shape[-1] < width:  # frames that did not fill a whole patch come back as zeros
            latents = nn.functional.pad(latents, (0, width - latents.shape[-1]))
        return latents


# Checkpoint keys that inference never uses: the SSL feature-regression heads and the joint
# attention projections of each cross-attention. Loading skips them; every other key is strict.
TRAINING_ONLY = re.compile(r"projectors\.\d+\.|transformer_blocks\.\d+\.cross_attn\."
                           r"(add_[qkv]_proj|to_add_out)\.")
PROJECTOR_LAYERS = (0, 2, 4)  # Linear, SiLU, Linear, SiLU, Linear


def is_training_only(key: str) -> bool:
    return TRAINING_ONLY.match(key) is not None


def training_only_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of the checkpoint's training-only tensors (`TRAINING_ONLY`), which are not built."""
    dim = config.inner_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for block in range(config.num_layers):
        prefix = f"transformer_blocks.{block}.cross_attn."
        for name in ("add_k_proj", "add_v_proj", "add_q_proj", "to_add_out"):
            shapes[f"{prefix}{name}.weight"] = (dim, dim)
            shapes[f"{prefix}{name}.bias"] = (dim,)
    for index, ssl_dim in enumerate(config.ssl_latent_dims):
        widths = ((dim, 2 * dim), (2 * dim, 2 * dim), (2 * dim, ssl_dim))
        for layer, (width_in, width_out) in zip(PROJECTOR_LAYERS, widths):
            shapes[f"projectors.{index}.{layer}.weight"] = (width_out, width_in)
            shapes[f"projectors.{index}.{layer}.bias"] = (width_out,)
    return shapes


@dataclass
class Condition:
    """A condition sequence and each block's cross-attention keys and values of it: 2 x layers x
    tokens x width numbers (about 300 MB in float32 for 600 tokens at full size)."""

    states: torch.Tensor
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]


class ACEStepTransformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.transformer_blocks = nn.ModuleList([
            TransformerBlock(dim, config.num_attention_heads, config.attention_head_dim, config.mlp_ratio)
            for _ in range(config.num_layers)])
        self.timestep_embedder = TimestepEmbedding(in_channels=TIMESTEP_CHANNELS, time_embed_dim=dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.speaker_embedder = nn.Linear(config.speaker_embedding_dim, dim)
        self.genre_embedder = nn.Linear(config.text_embedding_dim, dim)
        self.lyric_embs = nn.Embedding(config.lyric_encoder_vocab_size, config.lyric_hidden_size)
        self.lyric_encoder = LyricEncoder(config.lyric_hidden_size)
        self.lyric_proj = nn.Linear(LYRIC_ENCODER_WIDTH, dim)
        self.proj_in = PatchEmbed(config.patch_size, dim)
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels)
        # Sequential mode (`stream_blocks`): the device each block is streamed to when it runs.
        self.block_device: torch.device | None = None

    def stream_blocks(self, device: torch.device) -> None:
        """Sequential mode: all but the blocks on `device`; the blocks stay where they are (CPU
        memory, pinned) and each one's weights are copied to `device` only while it runs, so the
        device holds one block of weights at a time (`speed.streamed`)."""
        for name, child in self.named_children():
            if name != "transformer_blocks":
                child.to(device)
        pinned(self.transformer_blocks)
        self.block_device = torch.device(device)

    def on_device(self, module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> AbstractContextManager[None]:
        """`module` (a block or part of one) but the parts in `skip` on the device for a `with`
        block in sequential mode; where it already is otherwise."""
        if self.block_device is None:
            return nullcontext()
        return streamed(module, self.block_device, skip)

    def encode(self, text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor,
               speaker_embeds: torch.Tensor, lyric_token_ids: torch.Tensor | None,
               lyric_mask: torch.Tensor, *, erg_lyric: bool | torch.Tensor = False,
               lyric_states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition sequence [speaker token, prompt tokens, lyric tokens] and its mask.

        The lyric part is `encode_lyrics` of the ids, or `lyric_states` made with it beforehand.
        The mask is float32 like upstream's (its speaker part is created in the default dtype).
        """
        batch = text_hidden_states.shape[0]
        speaker = self.speaker_embedder(speaker_embeds).unsqueeze(1)
        text = self.genre_embedder(text_hidden_states)
        if lyric_states is None:
            lyric_states = self.encode_lyrics(lyric_token_ids, lyric_mask, erg_lyric=erg_lyric)
        speaker_mask = torch.ones(batch, 1, device=text_hidden_states.device, dtype=torch.float32)
        return (torch.cat([speaker, text, lyric_states], dim=1),
                torch.cat([speaker_mask, text_attention_mask, lyric_mask], dim=1))

    def encode_lyrics(self, lyric_token_ids: torch.Tensor, lyric_mask: torch.Tensor, *,
                      erg_lyric: bool | torch.Tensor = False,
                      items: torch.Tensor | None = None) -> torch.Tensor:
        """The lyric tokens' part of the condition `[B, L, D]`: the Conformer, then the projection.

        `erg_lyric` scales the queries of lyric-encoder layers 4 and 5 by 0.01 (the ERG null
        branch): for the whole batch, or (a bool `[B]`) for the items it marks. `items` (a long
        `[B]`) names the input item of each output item: the layers before 4 run once per input
        item (the same numbers as running them on the repeated batch, in less time).
        """
        scale = erg_query_scale(erg_lyric)
        query_scales = {index: scale for index in ERG_LYRIC_LAYERS} if scale != 1.0 else {}
        lyrics = self.lyric_encoder(self.lyric_embs(lyric_token_ids), lyric_mask, query_scales, items)
        return self.lyric_proj(lyrics)

    def condition(self, encoder_hidden_states: torch.Tensor) -> Condition:
        """The cross-attention keys and values of every block for one condition sequence."""
        head_dim, theta = self.config.attention_head_dim, self.config.rope_theta
        context_rotary = rotary_tables(encoder_hidden_states.shape[1], head_dim, theta,
                                       encoder_hidden_states.device, encoder_hidden_states.dtype)
        keys_values = []
        for block in self.transformer_blocks:
            with self.on_device(block.cross_attn):
                keys_values.append(block.cross_attn.keys_values(encoder_hidden_states, context_rotary))
        return Condition(encoder_hidden_states, keys_values)

    def decode(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
               encoder_hidden_states: torch.Tensor | Condition, encoder_hidden_mask: torch.Tensor,
               timestep: torch.Tensor, *, erg_diffusion: bool | torch.Tensor = False) -> torch.Tensor:
        """Velocity `[B, out_channels, 16, T]` for latents `[B, 8, 16, T]` at `timestep [B]` (0..1000).

        `attention_mask [B, T]` marks real latent frames, `encoder_hidden_mask` real condition tokens.
        The condition is its sequence, or the `Condition` made of it once per song (the same
        result; the keys and values are not recomputed at each step).
        `erg_diffusion` scales the self- and cross-attention queries of blocks 15-19 by 0.01: for
        the whole batch, or (a bool `[B]`) for the items it marks.
        """
        condition = encoder_hidden_states if isinstance(encoder_hidden_states, Condition) else None
        if condition is not None:
            encoder_hidden_states = condition.states
        width = hidden_states.shape[-1]
        sinusoid = get_timestep_embedding(timestep, TIMESTEP_CHANNELS, flip_sin_to_cos=True,
                                          downscale_freq_shift=0)
        timestep_embedding = self.timestep_embedder(sinusoid.to(hidden_states.dtype))
        timestep_modulation = self.t_block(timestep_embedding)

        tokens = self.proj_in(hidden_states)
        head_dim, theta = self.config.attention_head_dim, self.config.rope_theta
        rotary = rotary_tables(tokens.shape[1], head_dim, theta, tokens.device, tokens.dtype)
        context_rotary = rotary_tables(encoder_hidden_states.shape[1], head_dim, theta,
                                       encoder_hidden_states.device, encoder_hidden_states.dtype)
        cross_bias = cross_attention_bias(attention_mask, encoder_hidden_mask)
        # Every frame real (a song's usual case): the self-attention skips multiplying by ones.
        frame_mask = None if bool(attention_mask.all()) else attention_mask
        erg_scale = erg_query_scale(erg_diffusion)
        for index, block in enumerate(self.transformer_blocks):
            query_scale = erg_scale if index in ERG_DIFFUSION_BLOCKS else 1.0
            # With the condition's keys and values made, the block never runs to_k and to_v.
            unused = (block.cross_attn.to_k, block.cross_attn.to_v) if condition is not None else ()
            with self.on_device(block, unused):
                tokens = block(tokens, frame_mask, encoder_hidden_states, cross_bias, rotary,
                               context_rotary, timestep_modulation, query_scale,
                               condition.keys_values[index] if condition is not None else None)
        return self.final_layer(tokens, timestep_embedding, width)


def erg_query_scale(erg: bool | torch.Tensor) -> QueryScale:
    """The ERG blocks' query factor: for every item (True), none (False), or the items marked."""
    if isinstance(erg, torch.Tensor):
        return ItemScale(ERG_QUERY_SCALE, erg) if bool(erg.any()) else 1.0
    return ERG_QUERY_SCALE if erg else 1.0
