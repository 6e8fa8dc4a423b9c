"""ACE-Step v1 through the request path: the CLI as users run it, the request mapping, the fixes.

The CLI cases replay fixture cases from hosted-style requests: with the fixture's weights, the same
seeds and settings, our `--save-latents` output must equal upstream's recording within the fixture's
tolerances, and our 32-bit float WAV must be upstream's audio where it makes new audio and the
source, bit for bit, everywhere else, at exactly the length asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ace_step_ui import tasks
from ace_step_ui.audio import Audio, read_audio, write_audio
from ace_step_ui.cli import main as cli_main
from ace_step_ui.engines import DEFAULT_MODEL, EngineManager, family_for
from ace_step_ui.errors import InputError
from ace_step_ui.v1 import vocab
from ace_step_ui.v1.autoencoder import LATENT_FRAMES_PER_SECOND
from ace_step_ui.v1.engine import TASK_PARAMS
from ace_step_ui.v1.pipeline import extend_latents
from v1_fixture import FIXTURE, call_kwargs, refs

REPO = Path(__file__).resolve().parents[1]
SOURCE = FIXTURE / "t2m_euler_apg" / "output.wav"
TOLERANCES = json.loads((FIXTURE / "tolerances.json").read_text())["recommended"]


def upstream_settings(case: str, root: Path) -> dict:
    """The hosted request fields equal to a fixture case's sampler settings."""
    call = call_kwargs(case, root)
    return {"tags": call["prompt"], "lyrics": call["lyrics"], "seed": int(call["manual_seeds"]),
            "number_of_steps": call["infer_step"], "guidance_scale": call["guidance_scale"],
            "scheduler": call["scheduler_type"], "guidance_type": call["cfg_type"],
            "granularity_scale": call["omega_scale"], "guidance_interval": call["guidance_interval"],
            "guidance_interval_decay": call["guidance_interval_decay"],
            "minimum_guidance_scale": call["min_guidance_scale"],
            "tag_guidance_scale": call["guidance_scale_text"],
            "lyric_guidance_scale": call["guidance_scale_lyric"],
            "use_erg_tag": call["use_erg_tag"], "use_erg_lyric": call["use_erg_lyric"],
            "use_erg_diffusion": call["use_erg_diffusion"]}


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "ace_step_ui", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def requests_for(root: Path) -> dict[str, tuple[str, dict]]:
    edit = call_kwargs("edit_lyrics", root)
    return {
        "t2m_euler_apg": ("generate", {**upstream_settings("t2m_euler_apg", root), "duration": 5.0}),
        "repaint_1_3s": ("inpaint", {**upstream_settings("repaint_1_3s", root), "audio": str(SOURCE),
                                     "start_time": 1.0, "end_time": 3.0, "variance": 0.5,
                                     "retake_seed": 7}),
        "extend_left_2s": ("outpaint", {**upstream_settings("extend_left_2s", root),
                                        "audio": str(SOURCE), "extend_before_duration": 2.0,
                                        "extend_after_duration": 0.0, "retake_seed": 5}),
        "edit_lyrics": ("edit", {**upstream_settings("edit_lyrics", root), "audio": str(SOURCE),
                                 "edit_mode": "lyrics", "original_tags": edit["prompt"],
                                 "original_lyrics": edit["lyrics"], "tags": edit["edit_target_prompt"],
                                 "lyrics": edit["edit_target_lyrics"], "retake_seed": 3}),
    }


def upstream_audio_in(ours: Audio, case: str, source: Audio, sidecar: dict):
    """Check the exact lengths and the source's own samples; return (ours, upstream's, gain) pairs
    of the parts that are upstream's audio (level-matched by `gain` where spliced into a source)."""
    reference = read_audio(FIXTURE / case / "output.wav").samples
    rate = 48000
    if case == "t2m_euler_apg":  # 5 s asked: upstream's 53 frames (4.92 s), then silence
        assert ours.frames == 5 * rate
        assert not ours.samples[:, reference.shape[-1]:].any()
        return [(ours.samples[:, :reference.shape[-1]], reference, 1.0)]
    if case == "edit_lyrics":  # the source's length
        assert ours.frames == source.frames
        return [(ours.samples, reference[:, :source.frames], 1.0)]
    gain = sidecar["engine"]["gain"] if case == "repaint_1_3s" else sidecar["engine"]["passes"][0]["gain"]
    if case == "repaint_1_3s":
        start, end = rate, 3 * rate
        fade = round(sidecar["engine"]["crossfade_s"] * rate)
        assert ours.frames == source.frames
        assert torch.equal(ours.samples[:, :start], source.samples[:, :start])
        assert torch.equal(ours.samples[:, end:], source.samples[:, end:])
        return [(ours.samples[:, start + fade:end - fade], reference[:, start + fade:end - fade], gain)]
    # extend_left_2s: 2 s asked, upstream makes 21 frames (1.95 s); silence before them
    made = round(21 / LATENT_FRAMES_PER_SECOND * rate)
    assert ours.frames == 2 * rate + source.frames
    assert torch.equal(ours.samples[:, 2 * rate:], source.samples)
    assert not ours.samples[:, :2 * rate - made].any()
    return [(ours.samples[:, 2 * rate - made:2 * rate], reference[:, :made], gain)]


@pytest.mark.parametrize("case", ["t2m_euler_apg", "repaint_1_3s", "extend_left_2s", "edit_lyrics"])
def test_cli_reproduces_upstream_audio_and_latents(tiny_v1, v1_fixture_root, tmp_path, case):
    task, request = requests_for(v1_fixture_root)[case]
    audio_path, latents_path = cli("run", task, "--input", json.dumps(request), "--output-dir",
                                   tmp_path, "--model", tiny_v1, "--format", "wav", "--device",
                                   "cpu", "--save-latents")
    ours, reference = read_audio(audio_path), read_audio(FIXTURE / case / "output.wav")
    sidecar = json.loads(Path(audio_path).with_suffix(".json").read_text())
    source = read_audio(SOURCE)
    assert ours.sample_rate == reference.sample_rate == source.sample_rate == 48000
    new = upstream_audio_in(ours, case, source, sidecar)
    atol = TOLERANCES["WAV end to end"]["atol"]
    for (ours_part, upstream_part, gain) in new:
        assert ours_part.shape == upstream_part.shape
        assert float((ours_part - upstream_part * gain).abs().max()) <= atol * max(1.0, gain)

    assert Path(latents_path) == Path(audio_path).with_suffix(".latents.safetensors")
    saved = load_file(latents_path)
    assert list(saved) == ["latents"] and saved["latents"].dtype == torch.float32
    expected = refs(case)["final_latents.000"]
    assert saved["latents"].shape == expected.shape
    assert float((saved["latents"] - expected).abs().max()) <= TOLERANCES["final_latents"]["atol"]

    assert sidecar["seed"] == request["seed"]
    assert sidecar["engine"]["seeds"] == [request["seed"]]
    if "retake_seed" in request:
        assert sidecar["retake_seed"] == request["retake_seed"]
        assert sidecar["engine"]["retake_seeds"] == [request["retake_seed"]]
    # FlowEdit runs APG on the Euler schedule without ERG or a guidance interval, as upstream
    expected_ignored = sorted(set(request) - TASK_PARAMS[task])
    assert sidecar["ignored_params"] == expected_ignored
    assert (expected_ignored == []) == (task != "edit")


@pytest.fixture(scope="module")
def manager():
    return EngineManager(device="cpu", dtype="float32")


def run(manager, model, task, **payload):
    base = {"tags": "lofi, piano", "lyrics": "[verse]\nrain on the window", "number_of_steps": 3,
            "seed": 5}
    return tasks.run(task, {**base, **payload}, manager, str(model))


@pytest.mark.parametrize("case", ["repaint_0p5_4p2s_v08", "extend_right_2s"])
def test_when_the_track_fits_in_the_window_the_latents_are_upstreams(manager, tiny_v1, v1_fixture_root,
                                                                    case):
    call = call_kwargs(case, v1_fixture_root)
    source = read_audio(SOURCE)
    if call["task"] == "repaint":
        task, fields = "inpaint", {"start_time": call["repaint_start"],
                                   "end_time": call["repaint_end"], "variance": call["retake_variance"]}
    else:
        task, fields = "outpaint", {"extend_before_duration": 0.0,
                                    "extend_after_duration": call["repaint_end"] - source.duration_s}
    result = tasks.run(task, {**upstream_settings(case, v1_fixture_root), **fields, "audio": str(SOURCE),
                              "retake_seed": int(call["retake_seeds"])}, manager, str(tiny_v1))
    expected = refs(case)["final_latents.000"]
    assert result.latents.shape == expected.shape
    assert float((result.latents - expected).abs().max()) <= TOLERANCES["final_latents"]["atol"]


def test_v1_is_the_default_model_and_its_family():
    assert DEFAULT_MODEL == "ACE-Step/ACE-Step-v1-3.5B"
    assert family_for(DEFAULT_MODEL).name == "ACE-Step v1"


def test_generate_variance_is_a_retake_and_zero_is_plain_text2music(manager, tiny_v1):
    plain = run(manager, tiny_v1, "generate", duration=2.0)
    again = run(manager, tiny_v1, "generate", duration=2.0, retake_seed=99)
    retake = run(manager, tiny_v1, "generate", duration=2.0, variance=0.3, retake_seed=99)
    other = run(manager, tiny_v1, "generate", duration=2.0, variance=0.3, retake_seed=100)
    assert plain.params["engine"]["task"] == "text2music"
    assert plain.audio.frames == 2 * 48000  # exactly the duration asked for
    assert "retake_seed" not in plain.params and again.params["ignored_params"] == ["retake_seed"]
    assert torch.equal(plain.audio.samples, again.audio.samples)  # no variance: retake seed unused
    assert retake.params["engine"]["task"] == "retake"
    assert retake.params["engine"]["variance"] == 0.3
    assert not torch.equal(plain.audio.samples, retake.audio.samples)
    assert not torch.equal(retake.audio.samples, other.audio.samples)
    frames = int(2.0 * LATENT_FRAMES_PER_SECOND)
    assert plain.latents.shape == (1, 8, 16, frames)
    assert plain.audio.sample_rate == 48000 and plain.audio.channels == 2


def test_retake_seed_defaults_to_the_next_seed(manager, tiny_v1):
    result = run(manager, tiny_v1, "generate", duration=2.0, variance=0.5, seed=41, lora_scale=0.5)
    assert result.params["retake_seed"] == 42
    assert result.params["engine"]["retake_seeds"] == [42]
    assert result.params["ignored_params"] == ["lora_scale"]  # no LoRA was given


def test_reference_audio_runs_audio2audio(manager, tiny_v1):
    result = run(manager, tiny_v1, "generate", duration=2.0, reference_audio=str(SOURCE),
                 audio2audio_strength=0.6, number_of_steps=5)
    assert result.params["engine"]["task"] == "audio2audio"
    assert result.params["engine"]["audio2audio_strength"] == 0.6
    assert result.latents.shape[-1] == 54  # the reference's length, as upstream
    assert result.audio.frames == read_audio(SOURCE).frames  # and exactly its length
    with pytest.raises(InputError, match="set only one"):
        run(manager, tiny_v1, "generate", duration=2.0, reference_audio=str(SOURCE), variance=0.2)


@pytest.mark.parametrize("task, field, what", [("generate", "lyrics", "the lyrics"),
                                               ("edit", "original_lyrics", "the original lyrics")])
def test_lyrics_of_more_than_4096_tokens_are_refused(manager, tiny_v1, task, field, what):
    # 4,000 characters, within the request's limit, of which percentages make 9,002 tokens.
    payload = {field: "77% " * 1000, "duration": 2.0} if task == "generate" else {
        field: "77% " * 1000, "audio": str(SOURCE), "original_tags": "pop"}
    with pytest.raises(InputError, match=f"{what} make 9,002 lyric tokens; ACE-Step v1 reads at most "
                                         f"4,096"):
        run(manager, tiny_v1, task, **payload)


def test_inpaint_of_a_mono_file_encodes_it_as_upstream_does(manager, tiny_v1, tmp_path):
    """Upstream duplicates a mono source to stereo before encoding it."""
    stereo = read_audio(SOURCE)
    mono_path, dual_path = tmp_path / "mono.wav", tmp_path / "dual.wav"
    write_audio(mono_path, Audio(stereo.samples[:1], 48000), "wav", {})
    write_audio(dual_path, Audio(stereo.samples[:1].repeat(2, 1), 48000), "wav", {})
    mono = run(manager, tiny_v1, "inpaint", audio=str(mono_path), start_time=1.0, end_time=2.5)
    dual = run(manager, tiny_v1, "inpaint", audio=str(dual_path), start_time=1.0, end_time=2.5)
    assert mono.params["source"]["channels"] == 1
    assert torch.equal(mono.latents, dual.latents)
    # the result keeps the source's one channel, and every sample outside the range
    assert mono.audio.channels == 1 and mono.audio.sample_rate == 48000
    assert torch.equal(mono.audio.samples[:, :48000], stereo.samples[:1, :48000])


def test_outpaint_longer_than_the_source_works(manager, tiny_v1, tmp_path):
    """Upstream asserts when a side is longer than the source; we make it."""
    short = tmp_path / "short.wav"
    source = read_audio(SOURCE)
    write_audio(short, Audio(source.samples[:, : 48000], 48000), "wav", {})
    result = run(manager, tiny_v1, "outpaint", audio=str(short), extend_before_duration=2.5,
                 extend_after_duration=3.0)
    left, right = int(-2.5 * LATENT_FRAMES_PER_SECOND), int((1.0 + 3.0) * LATENT_FRAMES_PER_SECOND)
    source_frames = 11  # 1 s at 48 kHz -> 44100 samples -> padded to 11 * 4096
    assert result.latents.shape[-1] == -left + source_frames + (right - source_frames)


def test_extend_latents_pad_each_side_by_what_was_asked():
    src, seed_noise, retake = torch.ones(1, 8, 16, 54), torch.zeros(1, 8, 16, 54), torch.rand(1, 8, 16, 54)
    window = extend_latents(src, seed_noise, retake, left=10, right=32, first_step=0)
    assert window.x0.shape[-1] == 10 + 54 + 32
    assert torch.equal(window.mask[..., :10], torch.ones(1, 8, 16, 10))
    assert torch.equal(window.mask[..., -32:], torch.ones(1, 8, 16, 32))
    assert window.mask[..., 10:64].sum() == 0
    assert torch.equal(window.z0[..., :10], retake[..., :10])
    assert torch.equal(window.z0[..., -32:], retake[..., -32:])
    assert torch.equal(window.z0[..., 10:64], seed_noise)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """No ACE_STEP_LYRIC_VOCAB and an empty Hugging Face cache, here and in subprocesses."""
    from huggingface_hub import constants

    monkeypatch.delenv(vocab.VOCAB_ENV, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def test_tiny_v1_command_copies_the_vocabulary_and_generates_offline(tmp_path, lyric_vocab, empty_hub_cache,
                                                                      monkeypatch, capsys):
    folder = tmp_path / "tiny"
    with monkeypatch.context() as env:
        env.setenv(vocab.VOCAB_ENV, str(lyric_vocab))
        assert cli_main(["tiny", "v1", str(folder)]) == 0
    beside = folder / "lyrics_utils" / "vocab.json"
    out, err = capsys.readouterr()
    assert out == f"{folder}\n" and err == f"copied the lyric vocabulary beside the checkpoint: {beside}\n"
    assert beside.read_bytes() == lyric_vocab.read_bytes()

    request = {"tags": "lofi", "lyrics": "[verse]\nrain", "duration": 1.5, "number_of_steps": 2}
    (song,) = cli("run", "generate", "--input", json.dumps(request), "--output-dir", tmp_path / "out",
                  "--model", folder, "--device", "cpu")  # ACE_STEP_LYRIC_VOCAB unset, an empty cache
    assert read_audio(song).samples.abs().max() > 1e-3  # audible, not silence
    weights = load_file(str(folder / "ace_step_transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}  # 16-bit, like the release


def test_tiny_v1_command_without_a_vocabulary_says_how_to_add_one(tmp_path, empty_hub_cache, capsys):
    folder = tmp_path / "tiny"
    assert cli_main(["tiny", "v1", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{folder}\n" and family_for(str(folder)).name == "ACE-Step v1"
    assert len(err.splitlines()) == 1
    assert "hf download ACE-Step/ACE-Step models/lyrics_utils/vocab.json --repo-type space" in err
    assert str(folder / "lyrics_utils" / "vocab.json") in err
    assert not (folder / "lyrics_utils").exists()


def test_lora_applies_and_unloads(manager, tiny_v1, v1_fixture_root):
    lora = str(v1_fixture_root / "lora")
    before = run(manager, tiny_v1, "generate", duration=1.5)
    with_lora = run(manager, tiny_v1, "generate", duration=1.5, lora=lora, lora_scale=0.7)
    stronger = run(manager, tiny_v1, "generate", duration=1.5, lora=lora, lora_scale=1.5)
    after = run(manager, tiny_v1, "generate", duration=1.5)
    assert with_lora.params["engine"]["lora"] == lora
    assert not torch.equal(before.latents, with_lora.latents)
    assert not torch.equal(with_lora.latents, stronger.latents)
    assert torch.equal(before.latents, after.latents)  # "none" restores the plain model
    with pytest.raises(InputError):
        run(manager, tiny_v1, "generate", duration=1.5, lora=str(v1_fixture_root / "missing"))
