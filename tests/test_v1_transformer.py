"""The ACE-Step v1 DiT against the parity fixture's recorded encode/decode calls, and its key layout."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import torch
from v1_fixture import FIXTURE, refs

from ace_step_ui.v1.attention import cross_attention_bias
from ace_step_ui.v1.transformer import (ACEStepTransformer, TransformerConfig, _patch_conv_as_matmul,
                                        is_training_only, training_only_shapes)
from ace_step_ui.v1.weights import build_on_meta, load_weights

TOLERANCES = json.loads((FIXTURE / "tolerances.json").read_text())["recommended"]
ENCODE_ATOL = TOLERANCES["encode.hidden"]["atol"]
DECODE_ATOL = next(value["atol"] for key, value in TOLERANCES.items() if key.startswith("decode.out.000"))
SPEAKER_DIM = 512


def transformer_dir(checkpoint):
    return checkpoint / "ace_step_transformer"


def read_config(checkpoint) -> TransformerConfig:
    return TransformerConfig.from_json(json.loads((transformer_dir(checkpoint) / "config.json").read_text()))


@pytest.fixture(scope="module")
def model(tiny_v1_weights) -> ACEStepTransformer:
    config = read_config(tiny_v1_weights)
    return load_weights(build_on_meta(lambda: ACEStepTransformer(config)),
                        transformer_dir(tiny_v1_weights) / "diffusion_pytorch_model.safetensors",
                        torch.device("cpu"), torch.float32, skip=is_training_only)


class Conditions:
    """A case's recorded prompt and lyrics, batched like the pipeline does."""

    def __init__(self, case: str):
        self.refs = refs(case)
        self.batch = self.refs["decode.in_hidden.000"].shape[0]
        self.text = self.refs["text.hidden.000"].expand(self.batch, -1, -1)
        self.text_null = self.refs["text.hidden_null.000"].expand(self.batch, -1, -1)
        self.text_mask = self.refs["text.mask.000"].expand(self.batch, -1)
        self.speaker = torch.zeros(self.batch, SPEAKER_DIM)
        if "lyrics.token_ids.000" in self.refs:
            self.lyrics = self.refs["lyrics.token_ids.000"][None].expand(self.batch, -1)
            self.lyric_mask = torch.ones_like(self.lyrics)
        else:  # empty lyrics: the pipeline encodes one masked [STOP] token
            self.lyrics = torch.zeros(self.batch, 1, dtype=torch.long)
            self.lyric_mask = torch.zeros(self.batch, 1, dtype=torch.long)

    def cond(self, model):
        return model.encode(self.text, self.text_mask, self.speaker, self.lyrics, self.lyric_mask)

    def erg_null(self, model):
        """ERG lyric null branch with the ERG-tag prompt states (use_erg_lyric and use_erg_tag on)."""
        return model.encode(self.text_null, self.text_mask, self.speaker, self.lyrics, self.lyric_mask,
                            erg_lyric=True)

    def zero_null(self, model):
        """The null branch with use_erg_lyric off: zero prompt, zero lyric ids, real masks."""
        return model.encode(torch.zeros_like(self.text), self.text_mask, self.speaker,
                            torch.zeros_like(self.lyrics), self.lyric_mask)

    def erg_only_text(self, model):
        """Double condition, use_erg_lyric on: real prompt, ERG-weakened lyrics."""
        return model.encode(self.text, self.text_mask, self.speaker, self.lyrics, self.lyric_mask,
                            erg_lyric=True)

    def zero_lyrics_only_text(self, model):
        """Double condition, use_erg_lyric off: real prompt, zero lyric ids."""
        return model.encode(self.text, self.text_mask, self.speaker, torch.zeros_like(self.lyrics),
                            self.lyric_mask)


ENCODE_CALLS = {  # case -> the recorded encode() calls, in order
    "t2m_euler_apg": ["cond", "erg_null"],
    "t2m_no_lyrics": ["cond", "erg_null"],
    "t2m_ui_defaults": ["cond", "zero_null"],
    "t2m_double_cond": ["cond", "erg_null", "erg_only_text"],
    "t2m_double_cond_noerglyric": ["cond", "zero_null", "zero_lyrics_only_text"],
    "t2m_batch2": ["cond", "erg_null"],
}


@pytest.mark.parametrize("case", list(ENCODE_CALLS))
def test_encode_matches_upstream(model, case):
    conditions = Conditions(case)
    for index, branch in enumerate(ENCODE_CALLS[case]):
        with torch.no_grad():
            hidden, mask = getattr(conditions, branch)(model)
        expected = conditions.refs[f"encode.hidden.{index:03d}"]
        assert hidden.shape == expected.shape, branch
        assert (hidden - expected).abs().max().item() <= ENCODE_ATOL, branch
        assert mask.dtype == torch.float32 and torch.equal(mask, conditions.refs[f"encode.mask.{index:03d}"])


def first_decode(model, recorded, **options):
    latents = recorded["decode.in_hidden.000"]
    frames = torch.ones(latents.shape[0], latents.shape[-1])
    with torch.no_grad():
        return model.decode(latents, frames, recorded["encode.hidden.000"], recorded["encode.mask.000"],
                            recorded["decode.timestep.000"], **options)


@pytest.mark.parametrize("case", ["t2m_euler_apg", "t2m_no_lyrics", "t2m_ui_defaults", "t2m_double_cond",
                                  "t2m_batch2", "t2m_dur_7p3"])
def test_decode_matches_upstream(model, case):
    recorded = refs(case)
    velocity = first_decode(model, recorded)
    assert velocity.shape == recorded["decode.out.000"].shape
    assert (velocity - recorded["decode.out.000"]).abs().max().item() <= DECODE_ATOL


def test_erg_diffusion_changes_the_velocity(model):
    recorded = refs("t2m_euler_apg")
    plain = first_decode(model, recorded)
    weakened = first_decode(model, recorded, erg_diffusion=True)
    assert (weakened - plain).abs().max().item() > 1e-3


def test_erg_lyric_only_changes_the_lyric_tokens(model):
    conditions = Conditions("t2m_euler_apg")
    with torch.no_grad():
        plain, _ = conditions.cond(model)
        weakened, _ = model.encode(conditions.text, conditions.text_mask, conditions.speaker,
                                   conditions.lyrics, conditions.lyric_mask, erg_lyric=True)
    prompt_end = 1 + conditions.text.shape[1]
    assert torch.equal(weakened[:, :prompt_end], plain[:, :prompt_end])
    assert (weakened[:, prompt_end:] - plain[:, prompt_end:]).abs().max().item() > 1e-3


def test_per_item_erg_lyric_equals_each_branch_encoded_alone(model):
    """The guidance branches encoded as one batch: ERG on the items marked, their own numbers."""
    conditions = Conditions("t2m_euler_apg")
    doubled = lambda tensor: torch.cat([tensor, tensor])  # noqa: E731
    with torch.no_grad():
        together, mask = model.encode(doubled(conditions.text), doubled(conditions.text_mask),
                                      doubled(conditions.speaker), doubled(conditions.lyrics),
                                      doubled(conditions.lyric_mask),
                                      erg_lyric=torch.tensor([False, True]))
        for item, erg in ((0, False), (1, True)):
            alone, alone_mask = model.encode(conditions.text, conditions.text_mask,
                                             conditions.speaker, conditions.lyrics,
                                             conditions.lyric_mask, erg_lyric=erg)
            assert relative_rms(together[item:item + 1], alone) < 1e-6
            assert torch.equal(mask[item:item + 1], alone_mask)


@pytest.mark.parametrize("erg", [[False, True], [False, False], [True, True]])
def test_lyrics_picked_per_item_are_the_repeated_batch_s_with_the_layers_before_erg_run_once(
        model, erg):
    conditions = Conditions("t2m_euler_apg")
    ids, mask = conditions.lyrics, conditions.lyric_mask
    other = torch.flip(ids, [1])  # a second distinct lyric item, as the zero-lyrics branch is
    batch_rows = []
    hooks = [layer.register_forward_pre_hook(lambda _, inputs: batch_rows.append(len(inputs[0])))
             for layer in model.lyric_encoder.encoders]
    items = torch.tensor([0, 0, 1])
    flags = torch.tensor([*erg, False])
    try:
        with torch.no_grad():
            picked = model.encode_lyrics(torch.cat([ids, other]), mask.repeat(2, 1), erg_lyric=flags,
                                         items=items)
            layer_rows, batch_rows[:] = list(batch_rows), []
            repeated = model.encode_lyrics(torch.cat([ids, ids, other]), mask.repeat(3, 1),
                                           erg_lyric=flags)
    finally:
        for hook in hooks:
            hook.remove()
    assert relative_rms(picked, repeated) < 1e-6
    shared = 4 if any(erg) else 6  # the first ERG layer, or every layer without ERG
    assert layer_rows == [2] * shared + [3] * (6 - shared)
    assert batch_rows == [3] * 6
    if erg == [False, True]:
        assert (picked[0] - picked[1]).abs().max().item() > 1e-3


class PlusDelta(torch.nn.Module):
    """Stands in for a LoRA layer: the wrapped projection's output plus a delta, times `scale`."""

    def __init__(self, base: torch.nn.Linear, scale: float = 1.0):
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x):
        return (self.base(x) + 0.25) * self.scale


@contextmanager
def wrapped_queries(model, scale: float):
    """Wrap the query projections ERG targets (lyric layers 4-5, DiT blocks 15-19) in `PlusDelta`."""
    owners = [model.lyric_encoder.encoders[i].self_attn for i in (4, 5)]
    names = ["linear_q"] * 2
    for index in range(15, 20):
        owners += [model.transformer_blocks[index].attn, model.transformer_blocks[index].cross_attn]
        names += ["to_q", "to_q"]
    originals = [getattr(owner, name) for owner, name in zip(owners, names)]
    for owner, name, original in zip(owners, names, originals):
        setattr(owner, name, PlusDelta(original, scale))
    try:
        yield
    finally:
        for owner, name, original in zip(owners, names, originals):
            setattr(owner, name, original)


def test_erg_scales_the_whole_output_of_a_wrapped_projection(model):
    """ERG multiplies what the named submodule returns, LoRA delta included (like upstream's hooks)."""
    conditions = Conditions("t2m_euler_apg")
    recorded = conditions.refs
    with torch.no_grad(), wrapped_queries(model, scale=1.0):
        hidden, _ = conditions.erg_null(model)
        velocity = first_decode(model, recorded, erg_diffusion=True)
    with torch.no_grad(), wrapped_queries(model, scale=0.01):
        expected_hidden, _ = model.encode(conditions.text_null, conditions.text_mask, conditions.speaker,
                                          conditions.lyrics, conditions.lyric_mask)
        expected_velocity = first_decode(model, recorded)
    assert torch.equal(hidden, expected_hidden)
    assert torch.equal(velocity, expected_velocity)


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).norm() / expected.norm()).item()


def test_the_patch_conv_as_a_matmul_equals_the_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 2048, (16, 1), stride=(16, 1))
    latents = torch.randn(2, 8, 16, 40)
    expected = conv(latents)
    assert (_patch_conv_as_matmul(conv, latents) - expected).abs().max() < 1e-5
    # In bfloat16 on CPU it is what keeps the patch embedding right (oneDNN's AMX conv is not).
    bf16 = _patch_conv_as_matmul(conv.to(torch.bfloat16), latents.to(torch.bfloat16))
    assert relative_rms(bf16, expected) < 0.01


def test_bfloat16_runs(tiny_v1_weights):
    config = read_config(tiny_v1_weights)
    model = load_weights(build_on_meta(lambda: ACEStepTransformer(config)),
                         transformer_dir(tiny_v1_weights) / "diffusion_pytorch_model.safetensors",
                         torch.device("cpu"), torch.bfloat16, skip=is_training_only)
    conditions = Conditions("t2m_no_lyrics")  # one lyric token: bf16 matmuls are slow on most CPUs
    recorded = conditions.refs
    latents = recorded["decode.in_hidden.000"].to(torch.bfloat16)
    frames = torch.ones(1, latents.shape[-1], dtype=torch.bfloat16)
    with torch.no_grad():
        hidden, mask = model.encode(conditions.text.to(torch.bfloat16), conditions.text_mask,
                                    conditions.speaker.to(torch.bfloat16), conditions.lyrics,
                                    conditions.lyric_mask)
        velocity = model.decode(latents, frames, recorded["encode.hidden.000"].to(torch.bfloat16),
                                recorded["encode.mask.000"], recorded["decode.timestep.000"])
    assert hidden.dtype == torch.bfloat16 and velocity.dtype == torch.bfloat16
    assert velocity.shape == latents.shape
    assert torch.isfinite(velocity).all()
    # bf16 is outside the fixture's float32 tolerances; measured: about 1 %.
    assert relative_rms(hidden, recorded["encode.hidden.000"]) < 0.05
    assert relative_rms(velocity, recorded["decode.out.000"]) < 0.05


def built_and_skipped(config: TransformerConfig) -> dict[str, list[int]]:
    """What the module builds, plus the training-only keys it declares: the checkpoint's layout."""
    model = build_on_meta(lambda: ACEStepTransformer(config))
    built = {key: list(value.shape) for key, value in model.state_dict().items()}
    skipped = {key: list(shape) for key, shape in training_only_shapes(config).items()}
    assert not any(is_training_only(key) for key in built) and set(skipped).isdisjoint(built)
    assert all(is_training_only(key) for key in skipped)
    return {**built, **skipped}


def test_state_dict_equals_the_tiny_checkpoint(tiny_v1_weights):
    """The parity fixture's checkpoint, written by upstream's model class."""
    from safetensors import safe_open

    weights = transformer_dir(tiny_v1_weights) / "diffusion_pytorch_model.safetensors"
    with safe_open(str(weights), "pt") as file:
        stored = {key: list(file.get_slice(key).get_shape()) for key in file.keys()}
    assert built_and_skipped(read_config(tiny_v1_weights)) == stored


def test_a_checkpoint_missing_a_used_key_is_refused_and_one_without_training_only_keys_loads(
        tiny_v1_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    from ace_step_ui.errors import ModelUnavailableError

    config = read_config(tiny_v1_weights)
    state = load_file(transformer_dir(tiny_v1_weights) / "diffusion_pytorch_model.safetensors")
    lean = {key: value for key, value in state.items() if not is_training_only(key)}
    save_file(lean, str(tmp_path / "lean.safetensors"))
    load_weights(build_on_meta(lambda: ACEStepTransformer(config)), tmp_path / "lean.safetensors",
                 torch.device("cpu"), torch.float32, skip=is_training_only)
    del lean["transformer_blocks.0.cross_attn.to_k.weight"]
    save_file(lean, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelUnavailableError, match="1 missing key.*cross_attn.to_k.weight"):
        load_weights(build_on_meta(lambda: ACEStepTransformer(config)),
                     tmp_path / "broken.safetensors", torch.device("cpu"), torch.float32,
                     skip=is_training_only)


def test_full_size_layout_equals_the_real_checkpoint():
    """Built on meta with the released config (no memory), keys and shapes equal the real file's."""
    components = json.loads((FIXTURE / "full_size_keys.json").read_text())["components"]
    component = components["ace_step_transformer"]
    config = TransformerConfig.from_json(component["config_json"])
    model = build_on_meta(lambda: ACEStepTransformer(config))
    assert all(tensor.is_meta for tensor in model.state_dict().values())
    assert built_and_skipped(config) == {key: list(shape) for key, shape in component["file_keys"]}
    built = sum(tensor.numel() for tensor in model.state_dict().values())
    skipped = {key: math.prod(shape) for key, shape in training_only_shapes(config).items()}
    assert built + sum(skipped.values()) == component["n_parameters"]
    # What is never allocated: 629 M of joint-attention projections and 88 M of SSL heads.
    add = sum(n for key, n in skipped.items() if "cross_attn" in key)
    assert (round(add / 1e6), round((sum(skipped.values()) - add) / 1e6)) == (629, 88)


def test_config_ignores_bookkeeping_keys():
    config = TransformerConfig.from_json({"_class_name": "ACEStepTransformer2DModel", "inner_dim": 1,
                                          "in_channels": 8, "max_width": 4, "num_layers": 3,
                                          "patch_size": [16, 1], "ssl_latent_dims": [8, 4]})
    assert config.num_layers == 3 and config.patch_size == (16, 1) and config.ssl_latent_dims == (8, 4)
    assert config.inner_dim == config.num_attention_heads * config.attention_head_dim


def test_feed_forward_runs_its_1x1_convolutions_as_gemms_and_its_depthwise_one_channels_last():
    """The reference op: upstream's convolutions on channels-first activations."""
    from ace_step_ui.v1.transformer import GLUMBConv

    torch.manual_seed(0)
    ff = GLUMBConv(48, 120)
    x = torch.randn(2, 37, 48)
    h = torch.nn.functional.silu(ff.inverted_conv(x.transpose(1, 2)))
    h, gate = ff.depth_conv(h).chunk(2, dim=1)
    reference = ff.point_conv(h * torch.nn.functional.silu(gate)).transpose(1, 2)
    got = ff(x)
    assert got.shape == reference.shape
    assert relative_rms(got, reference) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_depthwise_convolution_on_channels_last_tokens_equals_the_conv1d(dtype):
    from ace_step_ui.v1.transformer import depthwise

    torch.manual_seed(1)
    for kernel in (3, 5):
        conv = torch.nn.Conv1d(24, 24, kernel, padding=kernel // 2, groups=24).to(dtype)
        x = torch.randn(3, 17, 24, dtype=dtype)
        reference = conv(x.transpose(1, 2)).transpose(1, 2)
        got = depthwise(conv, x)
        assert got.shape == x.shape and got.dtype == dtype and got.is_contiguous()
        assert relative_rms(got.float(), reference.float()) < (1e-6 if dtype == torch.float32 else 1e-2)


def decode_inputs(config: TransformerConfig, batch: int, seed: int):
    """Random latents `[batch, 8, 16, 9]` and a condition of 11 tokens, every one real."""
    torch.manual_seed(seed)
    return (torch.randn(batch, 8, 16, 9), torch.ones(batch, 9),
            torch.randn(batch, 11, config.inner_dim), torch.ones(batch, 11))


def test_a_prepared_condition_gives_the_same_velocity_as_its_sequence(model):
    """The keys and values made once per song are the ones each call would compute."""
    latents, frames, context, context_mask = decode_inputs(model.config, 2, seed=0)
    context_mask[1, 7:] = 0
    timestep = torch.tensor([900.0, 300.0])
    for erg in (False, True):
        plain = model.decode(latents, frames, context, context_mask, timestep, erg_diffusion=erg)
        prepared = model.decode(latents, frames, model.condition(context), context_mask, timestep,
                                erg_diffusion=erg)
        assert torch.equal(plain, prepared)


def test_per_item_erg_equals_each_item_decoded_alone(model):
    """The batched guidance's ERG branch: items marked get exactly their own numbers."""
    latents, frames, context, context_mask = decode_inputs(model.config, 2, seed=1)
    timestep = torch.tensor([700.0, 700.0])
    together = model.decode(latents, frames, context, context_mask, timestep,
                            erg_diffusion=torch.tensor([False, True]))
    for item, erg in ((0, False), (1, True)):
        alone = model.decode(latents[item:item + 1], frames[:1], context[item:item + 1],
                             context_mask[:1], timestep[:1], erg_diffusion=erg)
        assert relative_rms(together[item:item + 1], alone) < 1e-6
    none_marked = model.decode(latents, frames, context, context_mask, timestep,
                               erg_diffusion=torch.tensor([False, False]))
    assert torch.equal(none_marked, model.decode(latents, frames, context, context_mask, timestep))


def test_an_all_real_mask_runs_unmasked_with_the_masked_result(model):
    """With every frame and token real, SDPA gets no mask (its fast kernel): same velocity."""
    latents, frames, context, _ = decode_inputs(model.config, 1, seed=2)
    config = model.config
    timestep = torch.tensor([500.0])
    assert cross_attention_bias(frames, torch.ones(1, 11)) is None
    unmasked = model.decode(latents, frames, context, torch.ones(1, 11), timestep)
    # The same numbers through the masked kernel: an extra token masked out changes nothing.
    padded = torch.cat([context, torch.randn(1, 1, config.inner_dim)], dim=1)
    padded_mask = torch.cat([torch.ones(1, 11), torch.zeros(1, 1)], dim=1)
    assert cross_attention_bias(frames, padded_mask) is not None
    masked = model.decode(latents, frames, padded, padded_mask, timestep)
    assert relative_rms(unmasked, masked) < 1e-5


def test_self_attention_without_a_frame_mask_equals_it_with_every_frame_real():
    """decode passes no frame mask when every frame is real: the multiplications by one it skips
    change no bit; a real mask still zeroes what it masks."""
    from ace_step_ui.v1.attention import LinearSelfAttention, rotary_tables

    torch.manual_seed(3)
    attention = LinearSelfAttention(32, 4, 8)
    x = torch.randn(2, 13, 32)
    rotary = rotary_tables(13, 8, 10000.0, x.device, x.dtype)
    assert torch.equal(attention(x, None, rotary), attention(x, torch.ones(2, 13), rotary))
    mask = torch.ones(2, 13)
    mask[1, 9:] = 0
    masked = attention(x, mask, rotary)
    assert torch.equal(masked[0], attention(x, None, rotary)[0])
    assert not torch.allclose(masked[1, :9], attention(x, None, rotary)[1, :9])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rotary_embedding_is_upstream_s_pairwise_rotation_bit_for_bit(dtype):
    """Upstream rotates neighbour pairs, `x * cos + (-x[2k+1], x[2k]) * sin`, against half-split
    tables, in float32; ours folds the minus into the sin table."""
    from ace_step_ui.v1.attention import apply_rotary, rotary_tables, split_heads

    length, head_dim = 37, 16
    x = split_heads(torch.randn(2, length, 4 * head_dim, generator=torch.Generator().manual_seed(4))
                    .to(dtype), 4)
    frequencies = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(length).float(), frequencies).repeat(1, 2)
    even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-odd, even], dim=-1).flatten(-2)
    expected = (x.float() * angles.cos().to(dtype) + rotated * angles.sin().to(dtype)).to(dtype)
    assert torch.equal(apply_rotary(x, *rotary_tables(length, head_dim, 1e6, x.device, dtype)), expected)
