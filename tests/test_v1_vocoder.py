"""The vocoder's CPU tiles and layouts: the same samples as the whole stage in channels-first
layout, and a halo that is needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ace_step_ui.v1.vocoder import (
    CHANNELS_LAST,
    TILE_BYTES,
    HiFiGANHead,
    WeightNormConv1d,
    is_channels_last,
    to_channels_last,
)
from ace_step_ui.v1.weights import build_on_meta
from test_v1_autoencoder import load_vocoder

MEL_FRAMES = 400  # long enough that every stage of the test vocoder runs in several tiles
# Float rounding only: oneDNN may sum a shorter convolution in another order (seen: ~1e-7).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def vocoder(tiny_v1_weights):
    return load_vocoder(tiny_v1_weights)


def mel() -> torch.Tensor:
    return torch.randn(1, 128, MEL_FRAMES, generator=torch.Generator().manual_seed(0))


def counted_stages(head: HiFiGANHead) -> list[int]:
    """The stage index of each call of `head.stage` from now on."""
    calls: list[int] = []
    plain_stage = head.stage
    head.stage = lambda stage, x: (calls.append(stage), plain_stage(stage, x))[1]
    return calls


def run(vocoder, tile_bytes: int) -> tuple[torch.Tensor, list[int]]:
    """The waveform with `tile_bytes` a tile, and the number of tiles each stage ran in."""
    head = vocoder.head
    calls = counted_stages(head)
    head.tile_bytes = tile_bytes
    try:
        with torch.no_grad():
            wave = vocoder(mel())
    finally:
        del head.stage
        head.tile_bytes = TILE_BYTES
    return wave, [calls.count(stage) for stage in range(len(head.ups))]


def test_tiles_give_the_whole_stage_s_samples(vocoder):
    whole, whole_tiles = run(vocoder, tile_bytes=2**40)
    tiled, tiles = run(vocoder, tile_bytes=1)
    assert whole_tiles == [1] * len(vocoder.head.ups)
    assert all(count >= 2 for count in tiles), tiles
    assert tiled.shape == whole.shape == (1, 1, MEL_FRAMES * vocoder.config.hop_length)
    scale = whole.abs().max().item()
    assert scale > 1e-3
    assert (tiled - whole).abs().max().item() <= TOLERANCE * scale


def test_half_the_halo_is_caught(vocoder, monkeypatch):
    whole, _ = run(vocoder, tile_bytes=2**40)
    halo = type(vocoder.head).stage_halo
    monkeypatch.setattr(type(vocoder.head), "stage_halo", lambda head, stage: halo(head, stage) // 2)
    short, _ = run(vocoder, tile_bytes=1)
    assert (short - whole).abs().max().item() > 3 * TOLERANCE * whole.abs().max().item()


def test_tiles_keep_the_stage_s_layout(vocoder):
    head = vocoder.head
    x = to_channels_last(torch.randn(1, head.ups[0].weight_v.shape[0], MEL_FRAMES))
    calls = counted_stages(head)
    head.tile_bytes = 1
    try:
        with torch.no_grad():
            out = head.stage_in_tiles(0, x)
    finally:
        del head.stage
        head.tile_bytes = TILE_BYTES
    assert len(calls) >= 2  # it ran in tiles
    assert out.shape == (1, head.ups[0].weight_v.shape[1], MEL_FRAMES * vocoder.config.upsample_rates[0])
    assert is_channels_last(out)


def test_a_short_song_runs_each_stage_whole(vocoder):
    _, tiles = run(vocoder, tile_bytes=vocoder.head.tile_bytes)  # 400 frames fit one tile
    assert tiles == [1] * len(vocoder.head.ups)


def test_off_the_cpu_each_stage_runs_whole(vocoder):
    """A GPU gains nothing from cache-sized tiles (shown on the meta device: only shapes run)."""
    head = build_on_meta(lambda: HiFiGANHead(vocoder.config))
    calls = counted_stages(head)
    head.tile_bytes = 1
    features = torch.empty(1, vocoder.config.num_mels, 100 * MEL_FRAMES, device="meta")
    assert head(features).shape == (1, 1, 100 * MEL_FRAMES * vocoder.config.hop_length)
    assert calls == list(range(len(head.ups)))


def reference_stage(head: HiFiGANHead, stage: int, x: torch.Tensor) -> torch.Tensor:
    """HiFi-GAN's stage written out of place: upsample, the mean of the ResBlocks, the output conv."""
    x = head.ups[stage](F.silu(x))
    blocks = head.resblocks[stage * head.kernels_per_stage:(stage + 1) * head.kernels_per_stage]
    outputs = []
    for block in blocks:
        y = x
        for dilated, plain in zip(block.convs1, block.convs2):
            y = y + plain(F.silu(dilated(F.silu(y))))
        outputs.append(y)
    x = sum(outputs) / len(outputs)
    return torch.tanh(head.conv_post(F.silu(x))) if stage == len(head.ups) - 1 else x


@pytest.mark.parametrize("layout", [torch.Tensor.contiguous, to_channels_last])
def test_each_stage_is_the_out_of_place_ops_and_leaves_its_input(vocoder, layout):
    """The stage works in place on its convolutions' fresh outputs only: the same bits as the
    plain ops, and the input (a tile's view of the whole stage input) is untouched; in either
    layout, which it keeps."""
    head = vocoder.head
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for stage in range(len(head.ups)):
            x = layout(torch.randn(1, head.ups[stage].weight_v.shape[0], 40, generator=generator))
            before = x.clone()
            out = head.stage(stage, x)
            assert torch.equal(x, before), stage
            assert torch.equal(out, reference_stage(head, stage, x)), stage
            if stage < len(head.ups) - 1:  # the last one ends in one channel
                assert is_channels_last(out) == is_channels_last(x), stage


@pytest.mark.parametrize("transposed, stride, dilation", [(False, 1, 1), (False, 1, 5), (True, 4, 1)])
def test_a_channels_last_convolution_is_the_channels_first_one(transposed, stride, dilation):
    torch.manual_seed(2)
    kernel = 2 * stride if transposed else 7
    padding = (kernel - stride) // 2 if transposed else 3 * dilation
    conv = WeightNormConv1d(16, 8, kernel, stride=stride, padding=padding, dilation=dilation,
                            transposed=transposed)
    x = torch.randn(2, 16, 300)
    with torch.no_grad():
        first, last = conv(x), conv(to_channels_last(x))
    assert is_channels_last(last) and not is_channels_last(first)
    assert first.shape == last.shape
    assert (last - first).abs().max().item() <= TOLERANCE * first.abs().max().item()


def layouts_run(vocoder) -> tuple[torch.Tensor, set[tuple[int, bool]]]:
    """The waveform, and each stage with whether its input was channels-last."""
    head = vocoder.head
    layouts = set()
    plain_stage = head.stage
    head.stage = lambda stage, x: (layouts.add((stage, is_channels_last(x))), plain_stage(stage, x))[1]
    try:
        with torch.no_grad():
            return vocoder(mel()), layouts
    finally:
        del head.stage


def test_the_stages_of_8_to_128_channels_run_channels_last_on_the_same_samples(vocoder):
    head = vocoder.head
    widths = [up.weight_v.shape[1] for up in head.ups]
    assert widths == [128, 64, 32, 16, 8, 4, 2]  # the test checkpoint: both layouts are used
    wave, layouts = layouts_run(vocoder)
    head.channels_last = range(0)
    try:
        channels_first, first_layouts = layouts_run(vocoder)
    finally:
        head.channels_last = CHANNELS_LAST
    assert layouts == {(stage, width >= 8) for stage, width in enumerate(widths)}
    assert first_layouts == {(stage, False) for stage in range(len(widths))}
    scale = channels_first.abs().max().item()
    assert scale > 1e-3
    assert (wave - channels_first).abs().max().item() <= TOLERANCE * scale


def test_folding_the_weight_norm_keeps_the_bits_and_drops_g_and_v(tiny_v1_weights):
    """`fold_weight_norm` (the loaded pipeline's vocoder) gives the unfolded vocoder's samples bit
    for bit, in float32 and bfloat16, without `weight_g` and `weight_v`; computing the weight no
    more at each call."""
    for dtype in (torch.float32, torch.bfloat16):
        plain = load_vocoder(tiny_v1_weights, dtype)
        folded = load_vocoder(tiny_v1_weights, dtype).fold_weight_norm()
        names = set(folded.state_dict())
        assert not any(name.endswith(("weight_g", "weight_v")) for name in names)
        assert "head.ups.0.weight" in names and "head.ups.0.weight_v" in set(plain.state_dict())
        x = mel()[..., :48].to(dtype)
        with torch.no_grad():
            expected = plain(x)
            norms = []
            with CountNorms(norms):
                out = folded(x)
        assert torch.equal(out, expected), dtype
        assert norms == [], "the folded vocoder computed weight norms"


class CountNorms(torch.overrides.TorchFunctionMode):
    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.linalg.vector_norm:
            self.calls.append(func)
        return func(*args, **(kwargs or {}))
