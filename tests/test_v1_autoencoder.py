"""The v1 audio path: log-mel front end, vocoder, DCAE, checked against the parity fixture."""

from __future__ import annotations

import json
import math

import numpy
import pytest
import soundfile
import torch
from diffusers.models.autoencoders.autoencoder_dc import DCUpBlock2d, ResBlock
from safetensors import safe_open

from ace_step_ui.v1 import autoencoder, checkpoint
from ace_step_ui.v1.autoencoder import (
    LATENT_FRAMES_PER_SECOND,
    OUTPUT_SAMPLE_RATE,
    SAMPLES_PER_LATENT_FRAME,
    MusicDCAE,
    build_dcae,
    conv_levels_halo,
    decode_in_tiles,
    decoded_samples,
    encode_in_tiles,
    encoder_conv_levels_halo,
)
from ace_step_ui.v1.mel import periodic_hann_window, slaney_mel_filterbank
from ace_step_ui.v1.vocoder import HiFiGANVocoder, VocoderConfig
from ace_step_ui.v1.weights import build_on_meta, load_weights
from v1_fixture import FIXTURE, cases, refs

FULL_SIZE = json.loads((FIXTURE / "full_size_keys.json").read_text())["components"]
RECOMMENDED = json.loads((FIXTURE / "tolerances.json").read_text())["recommended"]
LATENT_ATOL = RECOMMENDED["infer_latents (DCAE encode of the fixture's source WAV)"]["atol"]
WAV_ATOL = RECOMMENDED["WAV decoded by your DCAE+vocoder from the REFERENCE final_latents.000"]["atol"]
MEL_BUFFER_ATOL = 1e-6
WAV_CASES = [name for name, case in cases().items() if case.get("output_wavs")]
CPU = torch.device("cpu")


def file_keys(component: str) -> dict[str, list[int]]:
    keys = FULL_SIZE[component]["file_keys"]
    return dict(keys) if isinstance(keys, list) else keys


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def read_wav(path) -> torch.Tensor:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    assert rate == OUTPUT_SAMPLE_RATE
    return torch.from_numpy(numpy.ascontiguousarray(samples.T))


def load_vocoder(root, dtype=torch.float32) -> HiFiGANVocoder:
    config = VocoderConfig.from_json(json.loads((root / checkpoint.VOCODER / "config.json").read_text()))
    return load_weights(build_on_meta(lambda: HiFiGANVocoder(config)),
                        root / checkpoint.VOCODER / "diffusion_pytorch_model.safetensors", CPU, dtype)


def load_dcae(root, dtype=torch.float32):
    config = json.loads((root / checkpoint.AUTOENCODER / "config.json").read_text())
    return load_weights(build_on_meta(lambda: build_dcae(config)),
                        root / checkpoint.AUTOENCODER / "diffusion_pytorch_model.safetensors", CPU, dtype)


@pytest.fixture(scope="module")
def music_dcae(tiny_v1_weights) -> MusicDCAE:
    return MusicDCAE(load_dcae(tiny_v1_weights), load_vocoder(tiny_v1_weights))


def test_mel_builders_equal_the_stored_buffers():
    literals = numpy.load(FIXTURE / "literal_tensors.npz")
    window = literals["music_vocoder:mel_transform.spectrogram.window"]
    filterbank = literals["music_vocoder:mel_transform.mel_scale.fb"]
    assert numpy.array_equal(periodic_hann_window(2048).numpy(), window)
    mine = slaney_mel_filterbank(1025, 128, 44100, 40, 16000).numpy()
    assert mine.shape == filterbank.shape and mine.dtype == filterbank.dtype
    # exp() differs by an ulp between CPU kernels, which moves two band edges by an ulp.
    assert numpy.abs(mine - filterbank).max() <= MEL_BUFFER_ATOL
    assert numpy.array_equal(mine > 0, filterbank > 0)


def test_vocoder_at_full_size_has_the_checkpoint_keys():
    config = VocoderConfig.from_json(FULL_SIZE["music_vocoder"]["config_json"])
    assert config == VocoderConfig()
    vocoder = build_on_meta(lambda: HiFiGANVocoder(config))
    assert shapes(vocoder) == file_keys("music_vocoder")
    assert [key for key, tensor in vocoder.state_dict().items() if not tensor.is_meta] == []


def test_dcae_at_full_size_has_the_checkpoint_keys():
    dcae = build_on_meta(lambda: build_dcae(FULL_SIZE["music_dcae_f8c8"]["config_json"]))
    assert shapes(dcae) == file_keys("music_dcae_f8c8")


def test_tiny_modules_have_exactly_the_file_keys(tiny_v1_weights):
    for folder, module in [
        (checkpoint.VOCODER, build_on_meta(lambda: HiFiGANVocoder(VocoderConfig.from_json(
            json.loads((tiny_v1_weights / checkpoint.VOCODER / "config.json").read_text()))))),
        (checkpoint.AUTOENCODER, build_on_meta(lambda: build_dcae(
            json.loads((tiny_v1_weights / checkpoint.AUTOENCODER / "config.json").read_text())))),
    ]:
        with safe_open(str(tiny_v1_weights / folder / "diffusion_pytorch_model.safetensors"), "pt") as stored:
            stored_shapes = {key: list(stored.get_slice(key).get_shape()) for key in stored.keys()}
        assert shapes(module) == stored_shapes


def test_fresh_vocoder_builds_the_mel_buffers():
    vocoder = HiFiGANVocoder(VocoderConfig(depths=(1, 1), dims=(8, 8), num_mels=8,
                                           upsample_initial_channel=8, upsample_rates=(512,),
                                           upsample_kernel_sizes=(512,), resblock_kernel_sizes=(3,),
                                           resblock_dilation_sizes=((1,),)))
    assert torch.equal(vocoder.mel_transform.spectrogram.window, periodic_hann_window(2048))
    assert torch.equal(vocoder.mel_transform.mel_scale.fb, slaney_mel_filterbank(1025, 128, 44100, 40, 16000))
    assert vocoder(torch.zeros(1, 128, 3)).shape == (1, 1, 3 * 512)


def test_vocoder_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="hop_length"):
        VocoderConfig.from_json({"hop_length": 256})
    with pytest.raises(ValueError, match="use_template"):
        VocoderConfig.from_json({"use_template": True})


def test_encode_of_the_source_wav_equals_upstream(music_dcae):
    audio = read_wav(FIXTURE / "t2m_euler_apg" / "output.wav")
    latents = music_dcae.encode(audio[None], OUTPUT_SAMPLE_RATE)
    expected = refs("repaint_1_3s")["infer_latents.000"]
    assert latents.shape == expected.shape
    assert (latents - expected).abs().max().item() <= LATENT_ATOL


@pytest.mark.parametrize("case", WAV_CASES)
def test_decode_of_the_final_latents_equals_the_stored_wav(music_dcae, case):
    latents = refs(case)["final_latents.000"]
    (wav_name,) = cases()[case]["output_wavs"]
    expected = read_wav(FIXTURE / wav_name)
    wav = music_dcae.decode(latents)
    assert wav.dtype == torch.float32
    assert wav.shape == (1, 2, decoded_samples(latents.shape[-1])) == (1, *expected.shape)
    assert (wav[0] - expected).abs().max().item() <= WAV_ATOL


def test_latent_frame_constants_agree():
    assert SAMPLES_PER_LATENT_FRAME * LATENT_FRAMES_PER_SECOND == 44100
    assert decoded_samples(53) == 236287  # the fixture's 5 s text2music WAVs


def test_runs_in_bfloat16(tiny_v1_weights, music_dcae):
    half = MusicDCAE(load_dcae(tiny_v1_weights, torch.bfloat16),
                     load_vocoder(tiny_v1_weights, torch.bfloat16))
    audio = read_wav(FIXTURE / "t2m_euler_apg" / "output.wav")[None, :, :9000]
    latents = half.encode(audio, OUTPUT_SAMPLE_RATE)
    assert latents.dtype == torch.bfloat16 and latents.shape == (1, 8, 16, 3)
    # Loose bounds: bfloat16 keeps ~3 significant digits; a broken dtype path is off by O(1).
    assert (latents.float() - music_dcae.encode(audio, OUTPUT_SAMPLE_RATE)).abs().max().item() < 0.05
    short = refs("t2m_euler_apg")["final_latents.000"][..., :2]
    wav = half.decode(short)
    assert wav.dtype == torch.float32 and wav.shape == (1, 2, decoded_samples(2))
    assert (wav - music_dcae.decode(short)).abs().max().item() < 0.05


def test_the_decoder_in_tiles_gives_the_whole_decode(music_dcae, monkeypatch):
    """Long latents: the convolution levels in tiles (here of 8 frames, so 5 of them) equal the
    whole decode up to float rounding; half the halo is caught; short latents run whole."""
    latents = torch.randn(1, 8, 16, 40, generator=torch.Generator().manual_seed(0))
    check_tiles(music_dcae.dcae.decoder, latents, decode_in_tiles, "conv_levels_halo",
                (1, 2, 128, 40 * 8), monkeypatch)


def check_tiles(network, x, in_tiles, halo_name: str, shape, monkeypatch) -> None:
    """`in_tiles(network, x)` in tiles of 8 latent frames against `network(x)`; with half the
    halo that `halo_name` gives; and whole where `x` is one tile long, bit for bit diffusers'
    forward."""
    with torch.no_grad():
        whole = network(x)
        tiled = in_tiles(network, x, tile=8)
        assert tiled.shape == whole.shape == shape
        scale = whole.abs().max().item()
        assert (tiled - whole).abs().max().item() <= 1e-5 * scale
        halo = getattr(autoencoder, halo_name)(network)
        monkeypatch.setattr(autoencoder, halo_name, lambda _: halo // 2)
        short = in_tiles(network, x, tile=8)
        assert (short - whole).abs().max().item() > 1e-3 * scale
        monkeypatch.setattr(autoencoder, "in_tiles", lambda *_, **__: pytest.fail("ran in tiles"))
        assert torch.equal(in_tiles(network, x, tile=40), whole)


def test_the_dcae_s_tiles_are_equal(music_dcae, monkeypatch):
    """300 latent frames in tiles of at most 128: the decoder's and the encoder's convolution levels
    run in 3 tiles of 100 frames (not 128, 128 and 44), each with its halo, and give the whole
    pass."""
    decoder, encoder = music_dcae.dcae.decoder, music_dcae.dcae.encoder
    latents = torch.randn(1, 8, 16, 300, generator=torch.Generator().manual_seed(0))
    mel = torch.randn(1, 2, 128, 300 * 8, generator=torch.Generator().manual_seed(1))
    # Per network: its tiled pass, its halo, the first level a tile runs and its input frames a
    # latent frame.
    ways = ((decoder, latents, decode_in_tiles, conv_levels_halo(decoder), decoder.up_blocks[-2], 1),
            (encoder, mel, encode_in_tiles, encoder_conv_levels_halo(encoder), encoder.down_blocks[0], 8))
    run_level = autoencoder.run_level
    for network, x, in_tiles, halo, first_level, frames_per_latent in ways:
        widths = []

        def recording(level, hidden):
            if level is first_level:
                widths.append(hidden.shape[-1])
            return run_level(level, hidden)

        monkeypatch.setattr(autoencoder, "run_level", recording)
        with torch.no_grad():
            tiled = in_tiles(network, x, tile=128)
            whole = network(x)
        frames = [width // frames_per_latent for width in widths]
        assert frames == [100 + halo, 100 + 2 * halo, 100 + halo], type(network).__name__
        assert (tiled - whole).abs().max().item() <= 1e-5 * whole.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_dcae_s_res_blocks_in_fewer_passes_are_diffusers_bits(dtype):
    """`res_block` (activation, RMSNorm and residual in place, the norm over dim 1) and
    `channel_rms_norm_` against diffusers' modules, with a norm that is not the identity."""
    generator = torch.Generator().manual_seed(0)
    for act in ("silu", "relu", "gelu"):
        block = ResBlock(12, 12, norm_type="rms_norm", act_fn=act).eval().to(dtype)
        with torch.no_grad():
            for parameter in block.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / 3)
            x = torch.randn(2, 12, 5, 33, generator=generator).to(dtype)
            assert torch.equal(autoencoder.res_block(block, x), block(x)), act
            norm = block.norm
            assert torch.equal(autoencoder.channel_rms_norm_(norm, x.clone()),
                               norm(x.movedim(1, -1)).movedim(-1, 1))


@pytest.mark.parametrize("interpolate", [True, False])
def test_the_dcae_s_upsampling_shortcut_as_a_view_is_diffusers_bits(interpolate):
    """`up_block` against `DCUpBlock2d.forward` for 1, 2 and 4 channel repeats (a broadcast view)
    and 8 (diffusers' own forward), on a whole input and a time slice of one, as a tile is."""
    generator = torch.Generator().manual_seed(1)
    for in_channels, out_channels, repeats in ((32, 8, 1), (16, 8, 2), (8, 8, 4), (4, 8, 8)):
        block = DCUpBlock2d(in_channels, out_channels, interpolate=interpolate).eval()
        assert block.repeats == repeats
        x = torch.randn(1, in_channels, 6, 20, generator=generator)
        with torch.no_grad():
            for part in (x, x[..., 3:17]):
                assert torch.equal(autoencoder.up_block(block, part), block(part)), repeats


def test_the_full_size_decoder_s_halo_covers_its_reach():
    """The released DCAE: 3 ResBlocks and an upsampling a level; the deepest level is attention,
    so only the levels above it are tiled."""
    decoder = build_on_meta(lambda: build_dcae(FULL_SIZE["music_dcae_f8c8"]["config_json"])).decoder
    # Reach in frames of each level: upsampling conv 1 + 3 ResBlocks of two 3x3 convs = 7, at
    # 2, 4 and 8 frames per deepest frame; the output conv 1 at 8.
    assert conv_levels_halo(decoder) == math.ceil(7 / 2 + 7 / 4 + 7 / 8 + 1 / 8) + 1
    decoder.up_blocks[1][1] = decoder.up_blocks[-1][0]  # an attention block above the deepest level
    assert conv_levels_halo(decoder) is None


def test_the_encoder_in_tiles_gives_the_whole_encode(music_dcae, monkeypatch):
    """The same for the encoder: its levels below the deepest in tiles of 8 latent frames (64 mel
    frames) equal the whole encode; half the halo is caught; short mels run whole."""
    mel = torch.randn(1, 2, 128, 40 * 8, generator=torch.Generator().manual_seed(0))
    check_tiles(music_dcae.dcae.encoder, mel, encode_in_tiles, "encoder_conv_levels_halo",
                (1, 8, 16, 40), monkeypatch)


def test_the_full_size_encoder_s_halo_covers_its_reach():
    """The released encoder: 2, 2 and 3 ResBlocks and a stride-2 conv at 1, 2 and 4 input frames a
    frame of their level, after a 3x3 input conv; 8 input frames a latent frame."""
    encoder = build_on_meta(lambda: build_dcae(FULL_SIZE["music_dcae_f8c8"]["config_json"])).encoder
    assert encoder_conv_levels_halo(encoder) == math.ceil((1 + (2 * 2 + 1) * 1 + (2 * 2 + 1) * 2
                                                           + (3 * 2 + 1) * 4) / 8) + 1


def test_the_stft_magnitude_is_upstream_s_sum_of_squares_bit_for_bit():
    """Upstream's `sqrt(view_as_real(X).pow(2).sum(-1) + 1e-6)`, computed as re*re + im*im."""
    from ace_step_ui.v1.mel import MAGNITUDE_EPS, LinearSpectrogram

    spectrogram = LinearSpectrogram(2048, 2048, 512)
    samples = torch.randn(2, 512 * 40, generator=torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(samples[:, None], (768, 768), mode="reflect")[:, 0]
    spectrum = torch.stft(padded, 2048, hop_length=512, win_length=2048, window=spectrogram.window,
                          center=False, onesided=True, return_complex=True)
    expected = torch.sqrt(torch.view_as_real(spectrum).pow(2).sum(-1) + MAGNITUDE_EPS)
    assert torch.equal(spectrogram(samples), expected)
