"""ace_step_ui.v1.lora: finding the file, peft-equivalent adapted layers, and the fixture's tiny LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ace_step_ui.errors import InputError, ModelUnavailableError
from ace_step_ui.v1 import lora
from v1_fixture import FIXTURE, refs

DECODE_ATOL = ENCODE_ATOL = 1e-5  # fixture tolerances.json: decode.out.000, encode.hidden


def stand_in(shapes: dict[str, tuple[int, int]], seed: int = 0) -> nn.Module:
    """A module tree with a `nn.Linear(in, out)` at each dotted name (containers made on the way)."""
    torch.manual_seed(seed)
    root = nn.Module()
    for name, (out_features, in_features) in shapes.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, nn.Linear(in_features, out_features))
    return root


def lora_for(shapes: dict[str, tuple[int, int]], rank: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, (out_features, in_features) in shapes.items():
        weights[f"{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator)
        weights[f"{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator)
    return weights


def target_shapes(weights: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    return {key[: -len(".lora_A.weight")]: (weights[key[: -len("A.weight")] + "B.weight"].shape[0],
                                            value.shape[1])
            for key, value in weights.items() if key.endswith(".lora_A.weight")}


SHAPES = {"transformer_blocks.0.attn.to_q": (6, 5), "transformer_blocks.0.attn.to_out.0": (5, 6),
          "speaker_embedder": (5, 7)}


def expected_output(base: nn.Linear, weights, name, scale, x):
    delta = x @ weights[f"{name}.lora_A.weight"].T @ weights[f"{name}.lora_B.weight"].T
    return base(x) + scale * delta


# adapted layers -----------------------------------------------------------------------------------


def test_apply_lora_adds_the_scaled_low_rank_update():
    model, weights = stand_in(SHAPES), lora_for(SHAPES)
    original = {name: model.get_submodule(name) for name in SHAPES}
    lora.apply_lora(model, weights, 0.7)
    for name, (out_features, in_features) in SHAPES.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, lora.LoRALinear)
        x = torch.randn(3, 4, in_features)
        torch.testing.assert_close(layer(x), expected_output(original[name], weights, name, 0.7, x),
                                   rtol=0, atol=1e-6)
    lora.set_lora_scale(model, 0.25)
    x = torch.randn(2, 5)
    torch.testing.assert_close(model.get_submodule("transformer_blocks.0.attn.to_q")(x),
                               expected_output(original["transformer_blocks.0.attn.to_q"], weights,
                                               "transformer_blocks.0.attn.to_q", 0.25, x),
                               rtol=0, atol=1e-6)


def test_state_dict_keeps_the_base_keys_and_adds_the_file_keys():
    model, weights = stand_in(SHAPES), lora_for(SHAPES)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, weights, 1.0)
    state = model.state_dict()
    assert set(state) == set(base_state) | set(weights)
    for key, value in base_state.items():
        assert torch.equal(state[key], value)
    for key, value in weights.items():
        assert torch.equal(state[key], value)


def test_remove_lora_restores_the_plain_layers():
    model, weights = stand_in(SHAPES), lora_for(SHAPES)
    x = torch.randn(2, 7)
    before = model.speaker_embedder(x)
    base_keys = set(model.state_dict())
    lora.apply_lora(model, weights, 1.0)
    assert not torch.equal(model.speaker_embedder(x), before)
    lora.remove_lora(model)
    assert all(type(model.get_submodule(name)) is nn.Linear for name in SHAPES)
    assert set(model.state_dict()) == base_keys
    assert torch.equal(model.speaker_embedder(x), before)
    lora.remove_lora(model)  # no LoRA: nothing to do


def test_applying_again_replaces_instead_of_stacking():
    model = stand_in(SHAPES)
    original = model.speaker_embedder
    first, second = lora_for(SHAPES, seed=1), lora_for(SHAPES, seed=2)
    lora.apply_lora(model, first, 1.0)
    lora.apply_lora(model, second, 0.5)
    x = torch.randn(3, 7)
    torch.testing.assert_close(model.speaker_embedder(x),
                               expected_output(original, second, "speaker_embedder", 0.5, x),
                               rtol=0, atol=1e-6)


def test_forward_hooks_on_the_layer_see_the_adapted_output():
    model, weights = stand_in(SHAPES), lora_for(SHAPES)
    lora.apply_lora(model, weights, 1.0)
    layer = model.get_submodule("transformer_blocks.0.attn.to_q")
    x = torch.randn(2, 5)
    adapted = layer(x)

    def scale_output(module, inputs, output):  # upstream's ERG hook
        output[:] *= 0.01
        return output

    handle = layer.register_forward_hook(scale_output)
    torch.testing.assert_close(layer(x), adapted * 0.01)
    handle.remove()


def test_adapter_takes_the_base_dtype():
    model = stand_in(SHAPES).to(torch.bfloat16)
    lora.apply_lora(model, lora_for(SHAPES), 1.0)
    layer = model.speaker_embedder
    assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.bfloat16
    assert layer(torch.randn(2, 7, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update({"transformer_blocks.3.attn.to_q.lora_A.weight": torch.zeros(2, 5),
                         "transformer_blocks.3.attn.to_q.lora_B.weight": torch.zeros(6, 2)}),
     "no layer named transformer_blocks.3.attn.to_q"),
    (lambda w: w.update({"speaker_embedder.alpha": torch.tensor(4.0)}),
     "unexpected key speaker_embedder.alpha"),
    (lambda w: w.pop("speaker_embedder.lora_B.weight"), "speaker_embedder lacks its lora_B.weight"),
    (lambda w: w.update({"speaker_embedder.lora_A.weight": torch.zeros(2, 9)}), "speaker_embedder: lora_A"),
    (lambda w: w.update({"transformer_blocks.0.attn.lora_A.weight": torch.zeros(2, 5),
                         "transformer_blocks.0.attn.lora_B.weight": torch.zeros(6, 2)}),
     "transformer_blocks.0.attn is a Module, not a linear layer"),
])
def test_a_lora_that_does_not_fit_changes_nothing(change, message):
    model, weights = stand_in(SHAPES), lora_for(SHAPES)
    change(weights)
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        lora.apply_lora(model, weights, 1.0)
    assert all(type(model.get_submodule(name)) is nn.Linear for name in SHAPES)


def test_scale_must_be_finite():
    with pytest.raises(InputError, match="finite"):
        lora.apply_lora(stand_in(SHAPES), lora_for(SHAPES), float("nan"))


# finding the file ---------------------------------------------------------------------------------


def test_lora_weights_path_local(tmp_path):
    folder = tmp_path / "my-lora"
    folder.mkdir()
    with pytest.raises(InputError, match="has no pytorch_lora_weights.safetensors"):
        lora.lora_weights_path(str(folder))
    save_file(lora_for(SHAPES), str(folder / lora.LORA_WEIGHTS_NAME))
    assert lora.lora_weights_path(str(folder)) == folder / lora.LORA_WEIGHTS_NAME
    assert lora.lora_weights_path(str(folder / lora.LORA_WEIGHTS_NAME)) == folder / lora.LORA_WEIGHTS_NAME
    with pytest.raises(InputError, match="name a LoRA"):
        lora.lora_weights_path(" ")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_lora_weights_path_hub_errors(offline_hub):
    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache"):
        lora.lora_weights_path("someone/a-lora-that-is-not-cached")
    with pytest.raises(InputError, match="not a Hugging Face repo id"):
        lora.lora_weights_path("no such/lora folder")


def test_lora_weights_path_hub_cache(offline_hub):
    revision = "0" * 40
    repo = offline_hub / "models--someone--cached-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(lora_for(SHAPES), str(snapshot / lora.LORA_WEIGHTS_NAME))
    assert lora.lora_weights_path("someone/cached-lora") == snapshot / lora.LORA_WEIGHTS_NAME


# the fixture's tiny LoRA --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_lora(v1_fixture_root) -> dict[str, torch.Tensor]:
    return lora.load_lora_weights(lora.lora_weights_path(str(v1_fixture_root / "lora")))


def test_fixture_lora_targets_exist_in_the_real_transformer(fixture_lora):
    """Key names only: every target is a linear layer of the full-size checkpoint."""
    listing = json.loads((FIXTURE / "full_size_keys.json").read_text())
    keys = dict(map(tuple, listing["components"]["ace_step_transformer"]["file_keys"]))
    targets = target_shapes(fixture_lora)
    assert len(targets) == 179
    for name in targets:
        assert len(keys[f"{name}.weight"]) == 2 and f"{name}.bias" in keys, name


def test_fixture_lora_on_a_stand_in_tree(fixture_lora):
    targets = target_shapes(fixture_lora)
    model = stand_in(targets)
    original = {name: model.get_submodule(name) for name in targets}
    lora.apply_lora(model, fixture_lora, 0.7)
    for name in ("speaker_embedder", "lyric_encoder.encoders.5.self_attn.linear_q",
                 "transformer_blocks.19.cross_attn.to_out.0"):
        x = torch.randn(2, 3, targets[name][1])
        torch.testing.assert_close(model.get_submodule(name)(x),
                                   expected_output(original[name], fixture_lora, name, 0.7, x),
                                   rtol=0, atol=1e-6)


def test_fixture_lora_reproduces_the_first_transformer_calls(fixture_lora, tiny_v1_weights):
    """Case lora_0p7 (weight 0.7, alpha ignored): encode and first decode with the LoRA applied."""
    from ace_step_ui.v1 import transformer
    from ace_step_ui.v1.weights import build_on_meta, load_weights

    folder = tiny_v1_weights / "ace_step_transformer"
    config = transformer.TransformerConfig.from_json(json.loads((folder / "config.json").read_text()))
    model = build_on_meta(lambda: transformer.ACEStepTransformer(config))
    load_weights(model, folder / "diffusion_pytorch_model.safetensors", torch.device("cpu"), torch.float32,
                 skip=transformer.is_training_only)
    recorded = refs("lora_0p7")
    latents = recorded["decode.in_hidden.000"]
    frames_mask = torch.ones(latents.shape[0], latents.shape[-1])
    lyric_ids = recorded["lyrics.token_ids.000"].unsqueeze(0)

    def encode():
        return model.encode(recorded["text.hidden.000"], recorded["text.mask.000"],
                            torch.zeros(1, config.speaker_embedding_dim), lyric_ids,
                            torch.ones_like(lyric_ids))[0]

    def decode():  # fed the recorded condition, so it checks the DiT's adapted layers alone
        return model.decode(latents, frames_mask, recorded["encode.hidden.000"],
                            recorded["encode.mask.000"], recorded["decode.timestep.000"])

    with torch.no_grad():
        plain_velocity = decode()
        lora.apply_lora(model, fixture_lora, 0.7)
        hidden, velocity = encode(), decode()
    torch.testing.assert_close(hidden, recorded["encode.hidden.000"], rtol=0, atol=ENCODE_ATOL)
    torch.testing.assert_close(velocity, recorded["decode.out.000"], rtol=0, atol=DECODE_ATOL)
    # without the LoRA the same call is far off: the comparison can fail
    assert (plain_velocity - recorded["decode.out.000"]).abs().max() > 1e-3


def test_lora_weights_for_training_only_layers_are_passed_over():
    """The checkpoint's add_* projections are not built (inference never runs them), so a LoRA's
    weights for them change nothing and are not an error."""
    model = stand_in(SHAPES)
    unused = {"transformer_blocks.0.cross_attn.add_q_proj": (5, 5)}
    targets, problems = lora.lora_targets(model, lora_for({**SHAPES, **unused}))
    assert problems == [] and set(targets) == set(SHAPES)
