"""Finding and loading a v1 checkpoint, and the prompt encoder (`umt5-base/`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ace_step_ui.errors import ModelUnavailableError
from ace_step_ui.v1 import checkpoint
from ace_step_ui.v1.text_encoder import TextEncoder, stored_umt5
from ace_step_ui.v1.weights import build_on_meta, load_weights
from v1_fixture import FIXTURE, call_kwargs, refs

FULL_SIZE = json.loads((FIXTURE / "full_size_keys.json").read_text())["components"]
TEXT_ATOL = json.loads((FIXTURE / "tolerances.json").read_text())["recommended"][
    "text.hidden, text.hidden_null"]["atol"]


def file_keys(component: str) -> dict[str, list[int]]:
    keys = FULL_SIZE[component]["file_keys"]
    return dict(keys) if isinstance(keys, list) else keys


def test_umt5_at_full_size_has_the_checkpoint_keys():
    from transformers import UMT5Config

    config = UMT5Config(**FULL_SIZE["umt5-base"]["config_json"])
    model = build_on_meta(lambda: stored_umt5(config))
    shapes = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    assert shapes == file_keys("umt5-base")


@pytest.fixture(scope="module")
def text_encoder(tiny_v1_weights):
    return TextEncoder.load(tiny_v1_weights / checkpoint.TEXT_ENCODER, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("case", ["t2m_euler_apg", "repaint_0p5_4p2s_v08", "edit_remix_pingpong"])
def test_prompt_tokens_and_hidden_states_match_upstream(text_encoder, v1_fixture_root, case):
    recorded = refs(case)
    kwargs = call_kwargs(case, v1_fixture_root)
    prompts = [kwargs["prompt"], kwargs["prompt"], kwargs.get("edit_target_prompt")]
    for index in range(3):
        key = f"text.input_ids.{index:03d}"
        if key in recorded:
            ids, mask = text_encoder.tokenize(prompts[index])
            assert ids.tolist() == recorded[key].tolist()
            assert mask.tolist() == recorded[f"text.attention_mask.{index:03d}"].tolist()
    hidden, mask = text_encoder.encode(kwargs["prompt"])
    assert float((hidden - recorded["text.hidden.000"]).abs().max()) <= TEXT_ATOL
    assert mask.tolist() == recorded["text.mask.000"].tolist()
    if "text.hidden_null.000" in recorded:
        erg, _ = text_encoder.encode(kwargs["prompt"], erg_tag=True)
        assert float((erg - recorded["text.hidden_null.000"]).abs().max()) <= TEXT_ATOL
        assert float((erg - hidden).abs().max()) > 1e-3  # ERG on tags really changes the encoding


def test_weights_load_straight_into_the_target_dtype(tiny_v1_weights):
    encoder = TextEncoder.load(tiny_v1_weights / checkpoint.TEXT_ENCODER, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    assert encoder.model.encoder.embed_tokens is encoder.model.shared
    hidden, _ = encoder.encode("lofi, piano")
    assert hidden.dtype == torch.bfloat16 and torch.isfinite(hidden.float()).all()


def test_a_file_of_another_model_is_refused_with_the_keys_named(tiny_v1_weights):
    with pytest.raises(ModelUnavailableError, match="missing key"):
        load_weights(build_on_meta(lambda: torch.nn.Linear(2, 2)),
                     tiny_v1_weights / "umt5-base" / "model.safetensors", torch.device("cpu"), torch.float32)


def test_official_layout_is_found_in_place(tiny_v1):
    assert checkpoint.is_checkpoint(tiny_v1)
    assert checkpoint.resolve(str(tiny_v1)) == tiny_v1


def test_hub_cache_layouts_are_found(tiny_v1, tmp_path):
    repo = tmp_path / ("models--" + checkpoint.HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_v1, snapshot, ignore=shutil.ignore_patterns("*.safetensors"))
    for name in checkpoint.FILES:
        if name.endswith(".safetensors"):
            (snapshot / name).symlink_to(tiny_v1 / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert checkpoint.resolve(str(repo)) == snapshot
    # upstream's --checkpoint_path: a cache_dir that holds models--ACE-Step--ACE-Step-v1-3.5B/
    assert checkpoint.resolve(str(tmp_path)) == snapshot
    assert checkpoint.is_checkpoint(tmp_path)


def test_partial_download_names_what_is_missing(tiny_v1_weights, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_v1_weights, partial)
    (partial / "music_vocoder" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(partial / "umt5-base")
    with pytest.raises(ModelUnavailableError) as error:
        checkpoint.resolve(str(partial))
    message = str(error.value)
    assert "music_vocoder/diffusion_pytorch_model.safetensors" in message
    assert "umt5-base" in message and "hf download ACE-Step/ACE-Step-v1-3.5B" in message


def test_hub_id_offline_says_how_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="hf download ACE-Step/ACE-Step-v1-3.5B"):
        checkpoint.resolve(checkpoint.HUB_ID)


def test_only_the_needed_files_are_downloaded():
    assert len(checkpoint.FILES) == 11
    assert all(name.split("/")[0] in checkpoint.COMPONENTS for name in checkpoint.FILES)
    assert not any(name.endswith((".bin", ".pt")) for name in checkpoint.FILES)
