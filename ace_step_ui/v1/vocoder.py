"""The v1 vocoder (`music_vocoder/`, `_class_name` "ADaMoSHiFiGANV1"): log-mel -> 44.1 kHz waveform.

A ConvNeXt-1D backbone turns the 128-bin log-mel into `dims[-1]` feature channels per frame, and a
HiFi-GAN generator upsamples them by `hop_length` to one mono waveform. The module also carries the
log-mel front end (`mel_transform`) whose buffers are stored in the same checkpoint file.

Parameter names follow the checkpoint; its weight-normed convolutions use the old
`torch.nn.utils.weight_norm` layout (`weight_g`, `weight_v`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .mel import LogMelSpectrogram
from .tiles import equal_tiles, in_tiles

LAYER_SCALE_INIT = 1e-6
NORM_EPS = 1e-6
# A CPU tile of a HiFi-GAN stage: ~2 MiB of activations per tensor stays in cache; from 2^15 to
# 2^22 elements a tile, 2^19 was within ~20% of the fastest for every stage of both the released
# and the test vocoder (2 threads, float32), the whole stage up to 4x slower at 2^22.
TILE_BYTES = 2 * 1024 * 1024
# On a CPU, the HiFi-GAN stages of 8 to 128 channels run channels-last (time-major): a stage's
# tile took 0.31-0.86x its channels-first time at the released widths (8-128) and 0.56-0.98x at
# the test vocoder's (8-128); at 2-4 channels channels-first was faster (1.09-1.36x), at 256-512
# about even (0.94-1.06x) (bench/vocoder_tiles.py --layouts; AMD AVX2 host, 2 threads, float32).
CHANNELS_LAST = range(8, 129)


@dataclass(frozen=True)
class VocoderConfig:
    """`music_vocoder/config.json`; the defaults are the released checkpoint's values."""

    input_channels: int = 128
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (128, 256, 384, 512)
    drop_path_rate: float = 0.0  # training only
    kernel_sizes: tuple[int, ...] = (7,)
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 13)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 4
    num_mels: int = 512  # channels into the HiFi-GAN head, = dims[-1]
    upsample_initial_channel: int = 1024
    use_template: bool = False
    pre_conv_kernel_size: int = 13
    post_conv_kernel_size: int = 13
    sampling_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    f_min: float = 40
    f_max: float | None = 16000
    n_mels: int = 128  # mel bins of the log-mel, = input_channels

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VocoderConfig:
        """From the parsed `config.json`; bookkeeping keys (`_class_name`, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {key: _as_tuples(value) for key, value in data.items() if key in known}
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.use_template:
            raise ValueError("vocoder config: use_template=true (a pitch template input) is not supported")
        if math.prod(self.upsample_rates) != self.hop_length:
            raise ValueError(f"vocoder config: upsample_rates {self.upsample_rates} multiply to "
                             f"{math.prod(self.upsample_rates)}, not hop_length {self.hop_length}")
        if len(self.depths) != len(self.dims):
            raise ValueError("vocoder config: depths and dims must have the same length")
        if self.num_mels != self.dims[-1]:
            raise ValueError(f"vocoder config: num_mels {self.num_mels} must equal dims[-1] {self.dims[-1]}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("vocoder config: upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("vocoder config: resblock_kernel_sizes and resblock_dilation_sizes differ "
                             "in length")


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(item) for item in value) if isinstance(value, list) else value


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of `[B, C, T]`, written out as upstream does (not via F.layer_norm)."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None] * x + self.bias[:, None]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> 4x MLP (GELU) -> layer scale, over `[B, C, T]`."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return (self.gamma * h).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ParallelConvNeXtBlock(nn.Module):
    """Several kernel sizes side by side, their branches summed with the input."""

    def __init__(self, dim: int, kernel_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, k) for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([block.branch(x) for block in self.blocks] + [x], dim=1).sum(dim=1)


class ConvNeXtBackbone(nn.Module):
    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        dims = config.dims
        stem = nn.Sequential(
            nn.Conv1d(config.input_channels, dims[0], 7, padding=3, padding_mode="replicate"),
            ChannelsFirstLayerNorm(dims[0]))
        transitions = [nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], 1))
                       for i in range(len(dims) - 1)]
        self.channel_layers = nn.ModuleList([stem, *transitions])

        def block(dim: int) -> nn.Module:
            if len(config.kernel_sizes) == 1:
                return ConvNeXtBlock(dim, config.kernel_sizes[0])
            return ParallelConvNeXtBlock(dim, config.kernel_sizes)

        self.stages = nn.ModuleList(nn.Sequential(*(block(dim) for _ in range(depth)))
                                    for dim, depth in zip(dims, config.depths))
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for channel_layer, stage in zip(self.channel_layers, self.stages):
            x = stage(channel_layer(x))
        return self.norm(x)


class WeightNormConv1d(nn.Module):
    """Conv1d or ConvTranspose1d with weight `weight_g * weight_v / ||weight_v||`, the norm taken over
    all dims but 0 (so per input channel for the transposed conv, as torch's weight_norm(dim=0) does).

    `fold` replaces the two by the weight they give, once the checkpoint is loaded."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, transposed: bool = False) -> None:
        super().__init__()
        shape = ((in_channels, out_channels, kernel_size) if transposed
                 else (out_channels, in_channels, kernel_size))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight_g = nn.Parameter(torch.empty(shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.stride, self.padding, self.dilation, self.transposed = stride, padding, dilation, transposed
        self.folded = False
        with torch.no_grad():
            nn.init.normal_(self.weight_v, 0.0, 0.01)
            self.weight_g.copy_(self._v_norm())

    def _v_norm(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.weight_v.float(), dim=(1, 2), keepdim=True)

    def effective_weight(self) -> torch.Tensor:
        if self.folded:
            return self.weight
        # Norm in float32 even for 16-bit weights: a sum of squares over in_channels * kernel terms.
        return (self.weight_v.float() * (self.weight_g.float() / self._v_norm())).to(self.weight_v.dtype)

    def fold(self) -> None:
        """Keep only `effective_weight()` (parameter `weight`), as upstream's `remove_weight_norm`
        would: the same bits, not recomputed for every call and time tile (about 2% of the test
        vocoder's time at 30 s and of the released one's at 10 s, bench/vocoder_tiles.py), and no
        `weight_g` and `weight_v` in memory. Call it on a loaded module in its final dtype."""
        if self.folded:
            return
        with torch.no_grad():
            weight = self.effective_weight()
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.folded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` in either layout; a channels-last `x` (`is_channels_last`) gives a
        channels-last output, through the 2-D convolution of its `[B, C, 1, T]` view (torch's
        channels-last layout of that view, no copy)."""
        weight = self.effective_weight()
        if is_channels_last(x):
            x, weight = x.unsqueeze(2), weight.unsqueeze(2)
            if self.transposed:
                out = F.conv_transpose2d(x, weight, self.bias, stride=(1, self.stride),
                                         padding=(0, self.padding))
            else:
                out = F.conv2d(x, weight, self.bias, padding=(0, self.padding),
                               dilation=(1, self.dilation))
            return out.squeeze(2)
        if self.transposed:
            return F.conv_transpose1d(x, weight, self.bias, stride=self.stride, padding=self.padding)
        return F.conv1d(x, weight, self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation)


def is_channels_last(x: torch.Tensor) -> bool:
    """`x [B, C, T]` (C > 1) stored time-major: each frame's C channels side by side."""
    return x.dim() == 3 and x.shape[1] > 1 and x.stride(1) == 1 and x.stride(2) == x.shape[1]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """The same `[B, C, T]` values stored time-major (`is_channels_last`)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1: per dilation, SiLU -> dilated conv -> SiLU -> conv, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, dilation=d,
                             padding=same_padding(kernel_size, d))
            for d in dilations)
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, padding=same_padding(kernel_size))
            for _ in dilations)

    def forward(self, x: torch.Tensor, activated: torch.Tensor | None = None) -> torch.Tensor:
        """`activated` is `F.silu(x)` where the caller has it (a stage's ResBlocks share it)."""
        # In place on each conv's own fresh output (the same values): a third fewer
        # activation-sized buffers, each of which costs the CPU page faults when it is new.
        for dilated, plain in zip(self.convs1, self.convs2):
            activated = F.silu(x) if activated is None else activated
            x = plain(F.silu(dilated(activated), inplace=True)).add_(x)
            activated = None
        return x


class HiFiGANHead(nn.Module):
    """Upsampling stages (transposed conv, then the mean of the stage's ResBlocks) to one channel.

    On a CPU a stage whose activations outgrow the cache runs in time tiles, each with enough of
    its input either side that every kept output sample sees exactly its full-length inputs: the
    same samples up to float rounding (~1e-7), about twice as fast on a 30 s song's last stages.
    """

    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        width = config.upsample_initial_channel
        self.conv_pre = WeightNormConv1d(config.num_mels, width, config.pre_conv_kernel_size,
                                         padding=same_padding(config.pre_conv_kernel_size))
        self.ups = nn.ModuleList(
            WeightNormConv1d(width // 2**i, width // 2**(i + 1), k, stride=u, padding=(k - u) // 2,
                             transposed=True)
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)))
        self.kernels_per_stage = len(config.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList(
            ResBlock(width // 2**(i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        self.conv_post = WeightNormConv1d(width // 2**len(self.ups), 1, config.post_conv_kernel_size,
                                          padding=same_padding(config.post_conv_kernel_size))
        self.config = config
        self.tile_bytes = TILE_BYTES
        self.channels_last = CHANNELS_LAST  # the stage widths that run channels-last on a CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for stage in range(len(self.ups)):
            x = self.stage_in_tiles(stage, x)
        return x

    def stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """One upsampling stage, in the layout of `x`; the last one ends with the output conv and
        tanh."""
        x = self.ups[stage](F.silu(x))
        blocks = self.resblocks[stage * self.kernels_per_stage:(stage + 1) * self.kernels_per_stage]
        activated = F.silu(x)  # each ResBlock's first activation, computed once
        total = blocks[0](x, activated)
        for block in blocks[1:]:
            total += block(x, activated)
        x = total.div_(self.kernels_per_stage)
        if stage == len(self.ups) - 1:
            x = torch.tanh_(self.conv_post(F.silu(x, inplace=True)))
        return x

    def stage_halo(self, stage: int) -> int:
        """Input samples on each side that reach one output sample of `stage`."""
        config = self.config
        reach = max(sum(same_padding(k, d) + same_padding(k) for d in dilations)
                    for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        if stage == len(self.ups) - 1:
            reach += same_padding(config.post_conv_kernel_size)
        rate, kernel = config.upsample_rates[stage], config.upsample_kernel_sizes[stage]
        return -(-reach // rate) + -(-kernel // rate) + 1

    def stage_in_tiles(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        rate, kernel = self.config.upsample_rates[stage], self.config.upsample_kernel_sizes[stage]
        channels = self.ups[stage].out_channels
        halo, length = self.stage_halo(stage), x.shape[-1]
        if x.device.type != "cpu":
            return self.stage(stage, x)  # a GPU gains nothing from either
        if (channels in self.channels_last) != is_channels_last(x):
            x = to_channels_last(x) if channels in self.channels_last else x.contiguous()
        # At least 16 halos a tile, so the overlap costs under 1/8 of the work.
        tile = max(self.tile_bytes // (x.shape[0] * channels * rate * x.element_size()), 16 * halo)
        if length < 2 * tile or (kernel - rate) % 2:
            return self.stage(stage, x)  # short enough, or an output not rate * length
        return in_tiles(length, equal_tiles(length, tile), halo,
                        lambda first, last: self.stage(stage, x[..., first:last]), rate)


class HiFiGANVocoder(nn.Module):
    """Log-mel `[B, n_mels, F]` -> waveform `[B, 1, hop_length * F]` in [-1, 1] at `sampling_rate`."""

    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ConvNeXtBackbone(config)
        self.head = HiFiGANHead(config)
        self.mel_transform = LogMelSpectrogram(
            sample_rate=config.sampling_rate, n_fft=config.n_fft, win_length=config.win_length,
            hop_length=config.hop_length, n_mels=config.n_mels, f_min=config.f_min,
            f_max=config.f_max or config.sampling_rate // 2)

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    def fold_weight_norm(self) -> HiFiGANVocoder:
        """`WeightNormConv1d.fold` for every convolution of the head; the loaded pipeline's way."""
        for module in self.modules():
            if isinstance(module, WeightNormConv1d):
                module.fold()
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(mel))
