"""The v1 music autoencoder: stereo audio <-> DCAE latents `[B, 8, 16, frames]`.

Encoding: resample to 44.1 kHz, pad to whole latent frames, log-mel per channel (the vocoder's
`mel_transform`), normalise, `AutoencoderDC.encoder`, then shift and scale. Decoding runs it back:
`AutoencoderDC.decoder` to a two-channel log-mel, the vocoder on each channel, resample to 48 kHz.
The DCAE (`music_dcae_f8c8/`) is diffusers' `AutoencoderDC`, built from the checkpoint's own config.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC
from diffusers.models.autoencoders.autoencoder_dc import (DCDownBlock2d, DCUpBlock2d, Decoder, Encoder,
                                                          ResBlock)
from diffusers.models.normalization import RMSNorm
from torch import nn

from ..audio import resample
from .tiles import equal_tiles, in_tiles
from .vocoder import HiFiGANVocoder

# Latent normalisation and mel range: fixed in upstream's MusicDCAE, not stored in any config.json
# (the config's `scaling_factor` 0.41407 is unused because only encoder/decoder are called).
LATENT_SCALE = 0.1786
LATENT_SHIFT = -1.9091
MEL_MIN = -11.0
MEL_MAX = 3.0

MODEL_SAMPLE_RATE = 44100
OUTPUT_SAMPLE_RATE = 48000
MEL_HOP_SAMPLES = 512
MEL_FRAMES_PER_LATENT_FRAME = 8  # the DCAE's time compression
SAMPLES_PER_LATENT_FRAME = MEL_HOP_SAMPLES * MEL_FRAMES_PER_LATENT_FRAME
LATENT_FRAMES_PER_SECOND = MODEL_SAMPLE_RATE / MEL_HOP_SAMPLES / MEL_FRAMES_PER_LATENT_FRAME
AUDIO_CHANNELS = 2
# Past this many latent frames (~47 s) the DCAE's convolution-only levels (the decoder's and the
# encoder's) run in equal time tiles of at most this many: their activations (at full size 128
# channels x 128 mel bins x 8 frames per latent frame) then stay bounded however long the song, and
# the result is the whole pass's.
DCAE_TILE_FRAMES = 512


def build_dcae(config: dict[str, Any]) -> AutoencoderDC:
    """`AutoencoderDC` from the parsed `music_dcae_f8c8/config.json`, randomly initialised.
    Allocates nothing when called under `torch.device("meta")`."""
    return AutoencoderDC.from_config(config)


def decode_in_tiles(decoder: Decoder, latents: torch.Tensor,
                    tile: int = DCAE_TILE_FRAMES) -> torch.Tensor:
    """`decoder(latents)` with the levels above the deepest one (convolutions, nearest upsampling
    and per-position RMSNorm: all local in time) run in equal tiles of at most `tile` latent frames
    (`equal_tiles`), each with `conv_levels_halo` frames of its input either side, so that every
    kept sample sees what it sees in the whole decode. The deepest level (global linear attention)
    runs whole: it is 1/8 the width. Short latents, and decoders with other blocks, run whole.
    Either way the levels run through `run_level`: diffusers' math, the same bits."""
    hidden = decoder.conv_in(latents)
    if decoder.in_shortcut:  # as diffusers' Decoder.forward
        hidden = hidden + latents.repeat_interleave(decoder.in_shortcut_repeats, dim=1,
                                                     output_size=hidden.shape[1])
    hidden = run_level(decoder.up_blocks[-1], hidden)
    halo = conv_levels_halo(decoder)
    length = latents.shape[-1]
    if halo is None or length <= tile:
        return conv_levels(decoder, hidden)
    return in_tiles(length, equal_tiles(length, tile), halo,
                    lambda first, last: conv_levels(decoder, hidden[..., first:last]),
                    upsampling(decoder))


def conv_levels(decoder: Decoder, hidden: torch.Tensor) -> torch.Tensor:
    """The decoder from the deepest level's output on: as diffusers' Decoder.forward."""
    if len(decoder.up_blocks) == 1:
        hidden = hidden.clone()  # the deepest level's output, which the tiles share
    for up_block in reversed(decoder.up_blocks[:-1]):
        hidden = run_level(up_block, hidden)
    hidden = channel_rms_norm_(decoder.norm_out, hidden)
    return decoder.conv_out(activation_(decoder.conv_act, hidden))


def run_level(level: nn.Sequential, hidden: torch.Tensor) -> torch.Tensor:
    """One level of the DCAE, its ResBlocks and upsampling blocks in fewer passes (`res_block`,
    `up_block`), anything else as its own module."""
    for module in level:
        if isinstance(module, ResBlock):
            hidden = res_block(module, hidden)
        elif isinstance(module, DCUpBlock2d):
            hidden = up_block(module, hidden)
        else:
            hidden = module(hidden)
    return hidden


def res_block(block: ResBlock, x: torch.Tensor) -> torch.Tensor:
    """diffusers' `ResBlock.forward` with its activation, RMSNorm and residual in place on the
    convolutions' fresh outputs, the norm over the channel dim where it lies: the same bits in
    fewer passes (diffusers normalises a `movedim` view, whose passes are slower, and each new
    activation-sized tensor costs page faults; with `up_block`, 0.73-0.96x diffusers' DCAE time,
    bench/dcae_tiles.py --passes)."""
    if block.norm_type != "rms_norm":
        return block(x)
    hidden = block.conv2(activation_(block.nonlinearity, block.conv1(x)))
    return channel_rms_norm_(block.norm, hidden).add_(x)


def channel_rms_norm_(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x.movedim(1, -1)).movedim(-1, 1)` (diffusers' RMSNorm over the channels of
    `[B, C, H, W]`), overwriting `x`: the statistics in float32, then the same operations in the
    same order."""
    if not isinstance(norm, RMSNorm) or norm.weight is None or norm.bias is None:
        return norm(x.movedim(1, -1)).movedim(-1, 1)
    variance = x.to(torch.float32).pow(2).mean(1, keepdim=True)
    # In place, x's dtype holds the float32 product rounded, as diffusers' cast to a 16-bit weight's.
    x.mul_(torch.rsqrt(variance + norm.eps))
    return x.mul_(norm.weight[:, None, None]).add_(norm.bias[:, None, None])


def activation_(activation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`activation(x)`, in place for SiLU and ReLU (`x` is a fresh output nobody else holds)."""
    if isinstance(activation, nn.SiLU):
        return F.silu(x, inplace=True)
    if isinstance(activation, nn.ReLU):
        return x.relu_()
    return activation(x)


def up_block(block: DCUpBlock2d, hidden: torch.Tensor) -> torch.Tensor:
    """diffusers' `DCUpBlock2d.forward`, its shortcut (channels repeated, then pixel-shuffled) added
    as a broadcast view of `hidden` instead of two copies: the same sums. For 1, 2 or 4 repeats
    (the released DCAE has 2), other blocks as diffusers runs them."""
    batch, _, height, width = hidden.shape
    if not block.shortcut or block.repeats not in (1, 2, 4):
        return block(hidden)
    if block.interpolate:
        x = block.conv(F.interpolate(hidden, scale_factor=block.factor, mode=block.interpolation_mode))
    else:
        x = F.pixel_shuffle(block.conv(hidden), block.factor)
    # Output channel c at row offset a and column offset d reads repeated channel 4c + 2a + d,
    # which is input channel (4c + 2a + d) // repeats.
    rows, columns = (2 if block.repeats <= 2 else 1), (2 if block.repeats == 1 else 1)
    shortcut = hidden.view(batch, x.shape[1], rows, columns, height, width).permute(0, 1, 4, 2, 5, 3)
    if not x.is_contiguous():  # another layout: the shortcut as the tensor diffusers makes
        return x.add_(shortcut.expand(-1, -1, -1, 2, -1, 2).reshape(x.shape))
    x.view(batch, x.shape[1], height, 2, width, 2).add_(shortcut)
    return x


def upsampling(decoder: Decoder) -> int:
    """Output frames per frame of the deepest level."""
    return math.prod(module.factor for level in decoder.up_blocks[:-1] for module in level
                     if isinstance(module, DCUpBlock2d))


def conv_levels_halo(decoder: Decoder) -> int | None:
    """Deepest-level frames on each side that reach one output frame of `conv_levels`; None where
    a level holds anything but ResBlocks and upsampling blocks (attention: not local)."""
    if not isinstance(decoder.conv_out, torch.nn.Conv2d):
        return None
    reach, scale = 0.0, 1  # reach in deepest-level frames; frames of this level per deepest one
    for level in reversed(decoder.up_blocks[:-1]):
        level_reach = 0
        for module in level:
            if isinstance(module, DCUpBlock2d):
                scale *= module.factor
                # The conv runs after the upsampling (interpolate) or before the pixel shuffle.
                level_reach += _width_reach(module.conv) * (1 if module.interpolate else module.factor)
            elif isinstance(module, ResBlock):
                level_reach += _width_reach(module.conv1) + _width_reach(module.conv2)
            else:
                return None
        reach += level_reach / scale
    reach += _width_reach(decoder.conv_out) / scale
    return math.ceil(reach) + 1


def encode_in_tiles(encoder: Encoder, mel: torch.Tensor, tile: int = DCAE_TILE_FRAMES) -> torch.Tensor:
    """`encoder(mel)` with the levels below the deepest one (convolutions, strided or pixel-unshuffle
    downsampling, per-position RMSNorm: all local in time) run in equal tiles of at most `tile`
    latent frames (`equal_tiles`), each with `encoder_conv_levels_halo` latent frames of its input
    either side; the deepest level (global linear attention) and the output conv run whole, as
    `decode_in_tiles` for the decoder."""
    halo, factor = encoder_conv_levels_halo(encoder), downsampling(encoder)
    length = mel.shape[-1] // factor

    def conv_levels_of(mel: torch.Tensor) -> torch.Tensor:
        hidden = encoder.conv_in(mel)
        for down_block in encoder.down_blocks[:-1]:
            hidden = run_level(down_block, hidden)
        return hidden

    if halo is None or mel.shape[-1] % factor or length <= tile:
        hidden = conv_levels_of(mel)
    else:  # tiles of latent frames [first, last)
        hidden = in_tiles(length, equal_tiles(length, tile), halo,
                          lambda first, last: conv_levels_of(mel[..., first * factor:last * factor]))
    hidden = run_level(encoder.down_blocks[-1], hidden)
    out = encoder.conv_out(hidden)
    if encoder.out_shortcut:  # as diffusers' Encoder.forward
        out = out + hidden.unflatten(1, (-1, encoder.out_shortcut_average_group_size)).mean(dim=2)
    return out


def downsampling(encoder: Encoder) -> int:
    """Input frames per frame of the deepest level."""
    return math.prod(module.factor for level in encoder.down_blocks[:-1] for module in level
                     if isinstance(module, DCDownBlock2d))


def encoder_conv_levels_halo(encoder: Encoder) -> int | None:
    """Deepest-level frames on each side that reach one frame of the encoder's levels below the
    deepest; None where they hold anything but ResBlocks and downsampling blocks."""
    if not isinstance(encoder.conv_in, torch.nn.Conv2d):
        return None
    reach, scale = _width_reach(encoder.conv_in), 1  # reach in input frames; input frames a frame
    for level in encoder.down_blocks[:-1]:
        for module in level:
            if isinstance(module, DCDownBlock2d):
                reach += _width_reach(module.conv) * scale  # the conv runs at this level's rate
                scale *= module.factor
            elif isinstance(module, ResBlock):
                reach += (_width_reach(module.conv1) + _width_reach(module.conv2)) * scale
            else:
                return None
    return math.ceil(reach / scale) + 1


def _width_reach(conv: torch.nn.Conv2d) -> int:
    return conv.kernel_size[-1] // 2 * conv.dilation[-1]


def normalise_log_mel(mel: torch.Tensor) -> torch.Tensor:
    """Log-mel in [MEL_MIN, MEL_MAX] -> [-1, 1] (values outside are not clamped, as upstream)."""
    return ((mel - MEL_MIN) / (MEL_MAX - MEL_MIN) - 0.5) / 0.5


def denormalise_log_mel(normalised: torch.Tensor) -> torch.Tensor:
    return (normalised * 0.5 + 0.5) * (MEL_MAX - MEL_MIN) + MEL_MIN


def pad_to_latent_frames(samples: torch.Tensor) -> torch.Tensor:
    """Zero-pad the last axis (44.1 kHz samples) up to a whole number of latent frames."""
    remainder = samples.shape[-1] % SAMPLES_PER_LATENT_FRAME
    if remainder == 0:
        return samples
    return torch.nn.functional.pad(samples, (0, SAMPLES_PER_LATENT_FRAME - remainder))


def decoded_samples(latent_frames: int, sample_rate: int = OUTPUT_SAMPLE_RATE) -> int:
    """Samples `MusicDCAE.decode` returns for `latent_frames` frames: ceil(frames * 4096 * sr / 44100)."""
    return -(-latent_frames * SAMPLES_PER_LATENT_FRAME * sample_rate // MODEL_SAMPLE_RATE)


class MusicDCAE:
    """Stereo audio <-> latents with a loaded DCAE and vocoder (upstream's MusicDCAE, no own weights).

    The mel front end and the resampling run in float32; the networks run in their own dtype.
    Items of a batch go through the DCAE one at a time, as upstream does.
    """

    def __init__(self, dcae: AutoencoderDC, vocoder: HiFiGANVocoder) -> None:
        self.dcae = dcae
        self.vocoder = vocoder

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """`[B, 2, N]` samples at `sample_rate` -> latents `[B, 8, 16, ceil(N' / 4096)]` in the DCAE's
        dtype, N' being the length at 44.1 kHz."""
        if audio.ndim != 3 or audio.shape[1] != AUDIO_CHANNELS:
            raise ValueError(f"MusicDCAE.encode expects audio [batch, 2, samples], got {list(audio.shape)}")
        parameter = next(self.dcae.parameters())
        samples = audio.to(device=self.vocoder.mel_transform.spectrogram.window.device, dtype=torch.float32)
        samples = pad_to_latent_frames(resample(samples, sample_rate, MODEL_SAMPLE_RATE))
        mel = normalise_log_mel(self.vocoder.mel_transform(samples))
        mel = mel.to(device=parameter.device, dtype=parameter.dtype)
        latents = torch.cat([encode_in_tiles(self.dcae.encoder, item[None]) for item in mel])
        return (latents - LATENT_SHIFT) * LATENT_SCALE

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, 8, 16, F]` -> float32 stereo `[B, 2, decoded_samples(F)]` at 48 kHz."""
        parameter = next(self.dcae.parameters())
        vocoder_parameter = next(self.vocoder.parameters())
        latents = latents.to(device=parameter.device, dtype=parameter.dtype)
        waves = []
        for item in latents / LATENT_SCALE + LATENT_SHIFT:
            mel = denormalise_log_mel(decode_in_tiles(self.dcae.decoder, item[None]))[0]  # [2, mels, 8F]
            mel = mel.to(device=vocoder_parameter.device, dtype=vocoder_parameter.dtype)
            if mel.device.type == "cpu":
                # Both channels at once: the CPU vocoder's tiles bound its memory, and oneDNN is
                # faster at batch 2 (0.8-0.9x the time of two calls in tiles).
                waves.append(self.vocoder(mel)[:, 0].float())
            else:
                # One channel at a time, as upstream does, to bound the vocoder's peak memory.
                channels = [self.vocoder(mel[channel][None])[0, 0] for channel in range(mel.shape[0])]
                waves.append(torch.stack(channels).float())
        return resample(torch.stack(waves), MODEL_SAMPLE_RATE, OUTPUT_SAMPLE_RATE)
