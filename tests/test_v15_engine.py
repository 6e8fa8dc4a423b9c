import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import soundfile as sf
import torch

from ace_step_ui import engines, tasks
from ace_step_ui.audio import Audio, read_audio
from ace_step_ui.engines import (DEFAULT_MODEL, EngineManager, EngineOutput, Family, families,
                                 family_for)
from ace_step_ui.errors import Cancelled, InputError, ModelUnavailableError
from ace_step_ui.requests import parse_request
from ace_step_ui.v15.engine import blended_noise, guidance_window, honoured, lyrics_for_v15

NEEDS_V1 = "needs ACE-Step v1 (ACE-Step/ACE-Step-v1-3.5B); choose it as the model"

FAST = {"number_of_steps": 2}


@pytest.fixture(scope="module")
def manager():
    return EngineManager(device="cpu")


def run(manager, model, task, **payload):
    return tasks.run(task, {"tags": "lofi, piano", **FAST, **payload}, manager, str(model))


def test_generate_has_the_asked_length_and_the_seed_reproduces_it(manager, tiny_v15):
    first = run(manager, tiny_v15, "generate", duration=2.5, seed=7)
    again = run(manager, tiny_v15, "generate", duration=2.5, seed=7)
    other = run(manager, tiny_v15, "generate", duration=2.5, seed=8)
    assert first.audio.sample_rate == 48000 and first.audio.channels == 2
    assert first.audio.frames == 120000 and first.seed == 7
    assert torch.equal(first.audio.samples, again.audio.samples)
    assert not torch.equal(first.audio.samples, other.audio.samples)
    assert first.params["seed"] == 7 and first.params["duration_s"] == 2.5
    assert "retake_seed" not in first.params  # generate on 1.5 draws no second noise


@pytest.mark.parametrize("duration, latent_frames", [(1.113, 28), (1.1113, 28), (2.1872, 55),
                                                     (2.2243, 56)])
def test_lengths_whose_noise_diffusers_sizes_a_frame_long_run(manager, tiny_v15, duration,
                                                              latent_frames):
    result = run(manager, tiny_v15, "generate", duration=duration, number_of_steps=1, seed=1)
    assert result.audio.frames == round(duration * 48000)
    assert result.params["engine"]["latent_frames"] == latent_frames


def test_every_length_between_1_and_3_s_runs(manager, tiny_v15):
    engine = manager.get(str(tiny_v15))
    for index in range(15):
        duration = round(1 + index * 2 / 14 + 0.0037 * (index % 3), 4)
        request = parse_request("generate", {"tags": "x", "duration": duration, "number_of_steps": 1})
        output = engine.generate(request, 1, 2, lambda step, total: None)
        assert output.audio.frames == round(duration * 48000), duration


def test_a_random_seed_is_drawn_and_reported_and_the_params_replay_the_song(manager, tiny_v15):
    result = tasks.run("generate", {"tags": "lofi", "duration": 1.0}, manager, str(tiny_v15))
    assert 0 <= result.seed <= 2147483647 and result.params["seed"] == result.seed
    assert result.params["request"] == {"tags": "lofi", "duration": 1.0}
    replay = tasks.run("generate", {**result.params["request"], "seed": result.params["seed"]},
                       manager, str(tiny_v15))
    assert torch.equal(result.audio.samples, replay.audio.samples)


def test_turbo_uses_its_preset_and_reports_what_it_ignored(manager, tiny_v15):
    steps = []
    result = tasks.run("generate", {"tags": "x", "duration": 1, "guidance_scale": 9,
                                    "scheduler": "heun"},
                       manager, str(tiny_v15), on_step=lambda step, total: steps.append((step, total)))
    assert steps == [(step, 8) for step in range(1, 9)]
    assert result.params["engine"]["num_inference_steps"] == 8
    assert result.params["engine"]["shift"] == 3.0
    assert result.params["ignored_params"] == ["guidance_scale", "scheduler"]


def test_base_honours_guidance(manager, tiny_v15_base):
    result = run(manager, tiny_v15_base, "generate", duration=1, guidance_scale=4,
                 guidance_interval=0.5)
    assert result.params["engine"]["guidance_scale"] == 4
    assert result.params["engine"]["cfg_interval"] == [0.25, 0.75]
    assert result.params["engine"]["shift"] == 1.0
    assert result.params["ignored_params"] == []


def test_inpaint_keeps_every_sample_outside_the_range(manager, tiny_v15, sine_wav):
    source = read_audio(sine_wav)
    result = run(manager, tiny_v15, "inpaint", audio=str(sine_wav), start_time=2, end_time=3.5,
                 seed=3)
    out = result.audio
    assert (out.sample_rate, out.channels, out.frames) == (44100, 2, source.frames)
    start, end = 2 * 44100, int(3.5 * 44100)
    assert torch.equal(out.samples[:, :start], source.samples[:, :start])
    assert torch.equal(out.samples[:, end:], source.samples[:, end:])
    assert not torch.allclose(out.samples[:, start:end], source.samples[:, start:end], atol=1e-3)
    assert result.params["range_s"] == [2.0, 3.5]
    assert result.params["retake_seed"] == 4  # derived from seed 3: the variance noise


def mono_flac(folder: Path, seconds: int, rate: int = 22050) -> Path:
    """A mono 200 Hz tone as FLAC: a source whose rate and channels differ from the model's."""
    tone = (0.2 * torch.sin(torch.arange(seconds * rate) / rate * 2 * torch.pi * 200)).numpy()
    path = folder / "mono.flac"
    sf.write(path, tone, rate)
    return path


def test_inpaint_relative_to_end_on_a_mono_file(manager, tiny_v15, tmp_path):
    path, rate = mono_flac(tmp_path, 4), 22050
    source = read_audio(path)
    result = run(manager, tiny_v15, "inpaint", audio=str(path), start_time=1.5,
                 start_time_relative_to="end", end_time=0, end_time_relative_to="end", seed=1)
    out = result.audio
    assert (out.sample_rate, out.channels, out.frames) == (rate, source.channels, source.frames)
    keep = int(2.5 * rate)
    assert torch.equal(out.samples[:, :keep], source.samples[:, :keep])
    assert result.params["range_s"] == [2.5, 4.0]


def test_inpaint_variance_changes_the_take_and_zero_variance_is_the_seed_alone(manager, tiny_v15,
                                                                             sine_wav):
    takes = [run(manager, tiny_v15, "inpaint", audio=str(sine_wav), start_time=1, end_time=3,
                 seed=5, variance=variance).audio.samples for variance in (0.0, 0.5)]
    other_retake = run(manager, tiny_v15, "inpaint", audio=str(sine_wav), start_time=1, end_time=3,
                       seed=5, variance=0.0, retake_seed=99).audio.samples
    assert not torch.equal(takes[0], takes[1])
    assert torch.equal(takes[0], other_retake)


def test_blended_noise_is_the_seed_noise_at_zero_and_the_retake_noise_at_one():
    shape, cpu = (1, 5, 8), torch.device("cpu")
    seed_noise = blended_noise(shape, 1, 2, 0.0, cpu, torch.float32)
    retake_noise = blended_noise(shape, 2, 2, 0.0, cpu, torch.float32)
    assert torch.allclose(blended_noise(shape, 1, 2, 1.0, cpu, torch.float32), retake_noise, atol=1e-6)
    half = blended_noise(shape, 1, 2, 0.5, cpu, torch.float32)
    assert torch.allclose(half, (seed_noise + retake_noise) / 2 ** 0.5, atol=1e-6)


@pytest.mark.parametrize("before, after", [(1.5, 0.0), (0.0, 2.0), (1.0, 1.25)])
def test_outpaint_keeps_the_source_exactly_in_the_middle(manager, tiny_v15, sine_wav, before, after):
    source = read_audio(sine_wav)
    result = run(manager, tiny_v15, "outpaint", audio=str(sine_wav), extend_before_duration=before,
                 extend_after_duration=after, seed=2)
    out = result.audio
    head, tail = round(before * 44100), round(after * 44100)
    assert out.frames == head + source.frames + tail and out.sample_rate == 44100
    assert torch.equal(out.samples[:, head:head + source.frames], source.samples)
    if head:
        assert out.samples[:, :head].abs().max() > 0
    if tail:
        assert out.samples[:, -tail:].abs().max() > 0


def test_a_cancelled_job_leaves_the_engine_usable(tiny_v15):
    manager = EngineManager(device="cpu")

    def stop_at_second_step(step, total):
        if step == 2:
            manager.cancel()

    with pytest.raises(Cancelled, match="after step 2 of 8"):
        tasks.run("generate", {"tags": "x", "duration": 1}, manager, str(tiny_v15),
                  on_step=stop_at_second_step)
    assert not manager.slot.busy and manager.slot.waiting() == 0
    result = tasks.run("generate", {"tags": "x", "duration": 1, **FAST}, manager, str(tiny_v15))
    assert result.audio.frames == 48000


def test_one_model_is_resident_at_a_time(tiny_v15, tiny_v15_base):
    manager = EngineManager(device="cpu")
    first = manager.get(str(tiny_v15))
    assert manager.get(str(tiny_v15)) is first
    second = manager.get(str(tiny_v15_base))
    assert second is not first and second.variant == "base"


def test_a_model_that_fails_to_resolve_keeps_the_resident_one(tiny_v15):
    manager = EngineManager(device="cpu")
    resident = manager.get(str(tiny_v15))
    with pytest.raises(ModelUnavailableError):
        manager.get("nobody/acestep-nonexistent")
    assert manager.get(str(tiny_v15)) is resident


def test_stop_before_the_gpu_is_free_cancels_without_running(tiny_v15):
    manager = EngineManager(device="cpu")
    with manager.job("someone") as stop:
        assert manager.cancel("someone") and stop.is_set()
    assert not manager.cancel("someone")  # the job is over: nothing to stop
    with manager.slot.hold(threading.Event()):  # another job holds the model while this one waits
        outcome = {}

        def waiting_job():
            try:
                tasks.run("generate", {"tags": "x", "duration": 1}, manager, str(tiny_v15),
                          owner="waiting")
            except Cancelled as error:
                outcome["error"] = str(error)

        thread = threading.Thread(target=waiting_job)
        thread.start()
        while not manager.cancel("waiting"):
            pass
    thread.join(30)
    assert outcome["error"] == "stopped by the user before it started"


def test_a_hub_id_that_is_not_cached_offline_names_the_repo_and_the_fix(manager, monkeypatch,
                                                                         tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as error:
        manager.get("ACE-Step/acestep-v15-xl-turbo-diffusers")
    message = str(error.value)
    assert "ACE-Step/acestep-v15-xl-turbo-diffusers is not in the Hugging Face cache" in message
    assert "hf download ACE-Step/acestep-v15-xl-turbo-diffusers" in message


def test_a_partial_checkpoint_is_named(manager, tiny_v15, tmp_path):
    partial = shutil.copytree(tiny_v15, tmp_path / "partial")
    shutil.rmtree(partial / "transformer")
    with pytest.raises(ModelUnavailableError, match="incomplete: missing transformer"):
        manager.get(str(partial))


def test_a_folder_in_the_hub_cache_layout_loads(tiny_v15, tmp_path):
    repo = tmp_path / "models--ACE-Step--acestep-v15-xl-turbo-diffusers"
    shutil.copytree(tiny_v15, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    engine = EngineManager(device="cpu").get(str(repo))
    assert engine.variant == "turbo"


def test_a_folder_that_is_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not a checkpoint this app can load") as error:
        family_for(str(tmp_path))
    assert "ace_step_transformer/, music_dcae_f8c8/, music_vocoder/ and umt5-base/" in str(error.value)
    assert "AceStepPipeline" in str(error.value)
    with pytest.raises(InputError, match="neither a folder on this machine nor a Hub id"):
        family_for("no-such-thing")


def test_small_mappings():
    assert lyrics_for_v15(" [inst] ") == "[Instrumental]"
    assert lyrics_for_v15("[verse]\nhello") == "[verse]\nhello"
    assert guidance_window(1.0) == (0.0, 1.0) and guidance_window(0.0) == (0.5, 0.5)


def test_v1_is_the_default_family_whatever_was_imported_first():
    # this module imported the 1.5 engine first; the order of preference still puts v1 first
    assert [family.name for family in families()][:2] == ["ACE-Step v1", "ACE-Step 1.5"]
    assert DEFAULT_MODEL == "ACE-Step/ACE-Step-v1-3.5B"
    assert family_for(DEFAULT_MODEL).name == "ACE-Step v1"


@pytest.mark.parametrize("model, family", [
    ("ACE-Step/acestep-v15-xl-base-diffusers", "ACE-Step 1.5"),
    ("someone/acestep-v15-xl-sft-diffusers", "ACE-Step 1.5"),
    ("someone/ACE-Step-v1-3.5B-finetune", "ACE-Step v1"),
    ("nobody/acestep-nonexistent", "ACE-Step v1"),  # as like one as the other: the default
    ("someone/my-song-model", "ACE-Step v1"),
])
def test_an_unknown_hub_id_goes_to_the_family_of_the_nearest_name(model, family):
    assert family_for(model).name == family


def test_edit_and_a_reference_are_refused_before_the_audio_is_read(manager, tiny_v15):
    with pytest.raises(InputError, match=r"^edit \(audio-to-audio\) " + re.escape(NEEDS_V1)):
        tasks.run("edit", {"audio": "/no/such.wav", "tags": "jazz", "original_tags": "pop"},
                  manager, str(tiny_v15))
    with pytest.raises(InputError, match=re.escape(NEEDS_V1) + ", or clear reference_audio"):
        tasks.run("generate", {"tags": "x", "reference_audio": "/no/such.wav"}, manager,
                  str(tiny_v15))
    assert honoured("turbo", "edit") == frozenset() and honoured("base", "edit") == frozenset()


def test_the_engine_itself_refuses_them_too(manager, tiny_v15, sine_wav):
    engine = manager.get(str(tiny_v15))
    request = parse_request("edit", {"audio": "a.wav", "tags": "jazz", "original_tags": "pop"})
    with pytest.raises(InputError, match=re.escape(NEEDS_V1)):
        engine.edit(request, read_audio(sine_wav), 1, 2, lambda step, total: None)
    with pytest.raises(InputError, match=re.escape(NEEDS_V1)):
        engine.generate(parse_request("generate", {"tags": "x"}), 1, 2, lambda step, total: None,
                        reference=read_audio(sine_wav))


def test_v1_parameters_are_not_honoured_and_are_reported(manager, tiny_v15):
    plain = run(manager, tiny_v15, "generate", duration=1, seed=5)
    v1_only = {"variance": 0.4, "use_erg_tag": False, "use_erg_lyric": "false",
               "use_erg_diffusion": 0, "oss_steps": "3, 6", "lora_scale": 0.5,
               "audio2audio_strength": 0.9, "scheduler": "pingpong"}  # lora_scale: no LoRA given
    result = run(manager, tiny_v15, "generate", duration=1, seed=5, **v1_only)
    assert result.params["ignored_params"] == sorted(v1_only)
    assert torch.equal(plain.audio.samples, result.audio.samples)  # variance is not a retake here
    assert result.params["request"]["oss_steps"] == (3, 6)
    assert result.latents is None  # diffusers decodes inside its pipeline


def test_latents_are_saved_as_float32_next_to_the_audio(manager, tiny_v15, tmp_path):
    from safetensors.torch import load_file

    with pytest.raises(InputError, match="returns no diffusion latents, so none can be saved"):
        tasks.run("generate", {"tags": "x", "reference_audio": ""}, manager, str(tiny_v15),
                  need_latents=True, on_step=lambda step, total: pytest.fail("it ran"))
    result = run(manager, tiny_v15, "generate", duration=1, seed=5)
    with pytest.raises(InputError, match="returns no diffusion latents, so none can be saved"):
        tasks.save_result(result, tmp_path / "none", "wav", save_latents=True)
    assert not (tmp_path / "none").exists()  # refused before anything is written

    latents = torch.randn(1, 8, 20, 16, dtype=torch.bfloat16).transpose(2, 3)  # (1, 8, 16, 20)
    result.latents = latents
    path = tasks.save_result(result, tmp_path, "wav", save_latents=True)
    saved = tasks.latents_path(path)
    assert saved == path.with_name(path.stem + ".latents.safetensors") and saved.is_file()
    stored = load_file(saved)
    assert list(stored) == ["latents"]
    assert stored["latents"].dtype == torch.float32 and stored["latents"].shape == (1, 8, 16, 20)
    assert torch.equal(stored["latents"], latents.float())
    assert json.loads(path.with_suffix(".json").read_text())["latents_path"] == str(saved)
    plain = tasks.save_result(result, tmp_path / "plain", "wav")
    assert not tasks.latents_path(plain).exists()


class RecordingEngine:
    """An engine that returns silence and latents, and records what `tasks.run` handed it."""

    model_id = "recording"
    sample_rate = 48000

    def __init__(self):
        self.calls = []

    def honoured(self, task):
        return frozenset({"tags", "seed", "retake_seed", "audio", "reference_audio",
                          "original_tags"})

    def _output(self, name, **arguments):
        self.calls.append((name, arguments))
        return EngineOutput(Audio(torch.zeros(2, 4800), 48000), {"ran": name},
                            latents=torch.ones(1, 8, 16, 3))

    def generate(self, request, seed, retake_seed, on_step, reference=None):
        return self._output("generate", seed=seed, retake_seed=retake_seed, reference=reference)

    def edit(self, request, source, seed, retake_seed, on_step):
        return self._output("edit", seed=seed, retake_seed=retake_seed, source=source)


@pytest.fixture
def recording(monkeypatch, tmp_path):
    """A model folder that a test-only family loads as a `RecordingEngine`."""
    engine = RecordingEngine()
    folder = tmp_path / "recording-model"
    folder.mkdir()
    family = Family(name="recording", hub_ids=(), is_checkpoint=lambda path: path == folder,
                    resolve=Path, load=lambda root, model, device, dtype, speed: engine,
                    honoured=lambda model, task: engine.honoured(task))
    monkeypatch.setattr(engines, "_FAMILIES", [*families(), family])
    return engine, str(folder)


def test_edit_hands_the_source_and_both_seeds_to_the_engine(recording, sine_wav):
    engine, model = recording
    result = tasks.run("edit", {"audio": str(sine_wav), "tags": "jazz", "original_tags": "lofi",
                                "seed": 3, "original_seed": 9}, EngineManager(device="cpu"), model)
    name, arguments = engine.calls[-1]
    assert name == "edit" and (arguments["seed"], arguments["retake_seed"]) == (3, 4)
    assert torch.equal(arguments["source"].samples, read_audio(sine_wav).samples)
    assert result.params["retake_seed"] == 4 and result.params["original_seed"] == 9
    assert result.params["ignored_params"] == ["original_seed"]
    assert result.latents.shape == (1, 8, 16, 3)


def test_generate_reads_the_reference_audio_and_hands_it_over(recording, sine_wav):
    engine, model = recording
    result = tasks.run("generate", {"tags": "x", "reference_audio_url": str(sine_wav), "seed": 1},
                       EngineManager(device="cpu"), model)
    name, arguments = engine.calls[-1]
    assert name == "generate" and arguments["reference"].frames == read_audio(sine_wav).frames
    assert result.params["reference"] == {"sample_rate": 44100, "channels": 2, "duration_s": 4.0}
    assert "original_seed" not in result.params
    tasks.run("generate", {"tags": "x", "seed": 1}, EngineManager(device="cpu"), model)
    assert engine.calls[-1][1]["reference"] is None


def test_a_hub_id_downloads_only_what_the_pipeline_reads(tiny_v15, tmp_path, monkeypatch):
    from diffusers import AceStepPipeline
    from huggingface_hub.utils import filter_repo_objects

    from ace_step_ui.v15 import engine as v15
    from ace_step_ui.v15.tiny import build_tiny_pipeline

    def listing(folder: Path) -> set[str]:
        return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}

    def download(model, allow_patterns=None, repo_type=None):  # the Hub, filtered as snapshot_download does
        snapshot = tmp_path / "snapshot"
        for name in filter_repo_objects(sorted(listing(repo)), allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / name, snapshot / name)
        return snapshot

    monkeypatch.setattr(v15, "download", download)
    repo = tiny_v15
    assert listing(v15.resolve("someone/acestep-v15-finetune")) == listing(tiny_v15)

    # A repo with sharded weights (like the XL transformer) and extras the pipeline never reads.
    repo = tmp_path / "repo"
    pipeline = build_tiny_pipeline()
    pipeline.save_pretrained(repo, variant="fp16")
    pipeline.save_pretrained(repo, max_shard_size="40KB")
    (repo / "README.md").write_text("a model card\n")
    (repo / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle")
    shutil.rmtree(tmp_path / "snapshot")
    files = listing(repo)
    assert any("-of-" in name for name in files) and any(".fp16." in name for name in files)
    kept = listing(v15.resolve("someone/acestep-v15-finetune"))
    assert kept == {name for name in files if ".fp16." not in name and not name.endswith((".bin", ".md"))}
    AceStepPipeline.from_pretrained(tmp_path / "snapshot")  # everything it reads came down


@pytest.fixture(scope="module")
def tiny_v15_lora(tiny_v15, tmp_path_factory) -> Path:
    """A random LoRA on the tiny transformer's attention, saved by diffusers as users get them."""
    from diffusers import AceStepPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = AceStepPipeline.from_pretrained(tiny_v15)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    folder = tmp_path_factory.mktemp("v15-lora")
    AceStepPipeline.save_lora_weights(folder, get_peft_model_state_dict(pipe.transformer))
    return folder


def test_a_lora_applies_at_its_scale_and_unloads(manager, tiny_v15, tiny_v15_lora, sine_wav):
    base = {"duration": 1.0, "seed": 3}
    plain = run(manager, tiny_v15, "generate", **base)
    with_lora = run(manager, tiny_v15, "generate", lora=str(tiny_v15_lora), **base)
    weaker = run(manager, tiny_v15, "generate", lora=str(tiny_v15_lora), lora_scale=0.3, **base)
    off = run(manager, tiny_v15, "generate", lora=str(tiny_v15_lora), lora_scale=0.0, **base)
    after = run(manager, tiny_v15, "generate", **base)
    assert with_lora.params["ignored_params"] == [] and plain.params["ignored_params"] == []
    assert not torch.equal(plain.audio.samples, with_lora.audio.samples)
    assert not torch.equal(with_lora.audio.samples, weaker.audio.samples)
    assert torch.equal(plain.audio.samples, off.audio.samples)  # scale 0 is the plain model
    assert torch.equal(plain.audio.samples, after.audio.samples)  # and no LoRA unloads it
    outpainted = run(manager, tiny_v15, "outpaint", audio=str(sine_wav), extend_after_duration=1.0,
                    lora=str(tiny_v15_lora), seed=3)
    assert outpainted.params["ignored_params"] == []


def test_a_lora_for_another_model_is_refused_and_leaves_the_model_plain(manager, tiny_v15, tmp_path):
    from safetensors.torch import save_file

    plain = run(manager, tiny_v15, "generate", duration=1.0, seed=3)
    v1_style, too_wide = tmp_path / "v1-style", tmp_path / "too-wide"
    for folder in (v1_style, too_wide):
        folder.mkdir()
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 64),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(64, 4)},
              str(v1_style / "pytorch_lora_weights.safetensors"))
    save_file({"transformer.layers.0.self_attn.to_q.lora_A.weight": torch.ones(4, 4096),
               "transformer.layers.0.self_attn.to_q.lora_B.weight": torch.ones(32, 4)},
              str(too_wide / "pytorch_lora_weights.safetensors"))
    with pytest.raises(InputError, match="no weights for ACE-Step 1.5's transformer"):
        run(manager, tiny_v15, "generate", duration=1.0, lora=str(v1_style))
    with pytest.raises(InputError, match="does not fit"):
        run(manager, tiny_v15, "generate", duration=1.0, lora=str(too_wide))
    with pytest.raises(InputError, match="has no pytorch_lora_weights.safetensors or adapter_model"):
        run(manager, tiny_v15, "generate", duration=1.0, lora=str(tmp_path))
    again = run(manager, tiny_v15, "generate", duration=1.0, seed=3)
    assert torch.equal(plain.audio.samples, again.audio.samples)


def test_the_tiny_checkpoint_has_the_audio_code_path(tiny_v15):
    """Cover from audio and the 5 Hz LM's codes need the FSQ tokenizer and detokenizer."""
    from ace_step_ui.v15.tiny import FSQ_LEVELS

    pipe = EngineManager(device="cpu").get(str(tiny_v15)).pipe
    assert pipe.audio_tokenizer is not None and pipe.audio_token_detokenizer is not None

    def song(**codes):
        return pipe(prompt="lofi", audio_duration=2.0, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(1), **codes).audios

    last = FSQ_LEVELS[0] * FSQ_LEVELS[1] - 1
    codes = "".join(f"<|audio_code_{code}|>" for code in (0, 7, 21, last, 3, 3, 9, 40, 12, 5))
    assert not torch.equal(song(), song(audio_codes=codes))



def test_cover_sings_the_source_anew_at_its_length_rate_and_channels(manager, tiny_v15, tmp_path):
    path, rate = mono_flac(tmp_path, 3), 22050
    source = read_audio(path)

    def cover(**values):
        return run(manager, tiny_v15, "cover", audio=str(path), seed=4, **values)

    first, again, looser = cover(), cover(), cover(audio_cover_strength=0.3)
    out = first.audio
    assert (out.sample_rate, out.channels, out.frames) == (rate, 1, source.frames)
    assert torch.equal(out.samples, again.audio.samples)  # same seed, same cover
    assert not torch.equal(out.samples, looser.audio.samples)
    assert not torch.equal(out.samples, source.samples)
    assert looser.params["engine"]["audio_cover_strength"] == 0.3


def test_cover_is_refused_on_v1_and_past_240_s_before_any_model_work(manager, tiny_v15, tmp_path):
    with pytest.raises(InputError, match="cover is an ACE-Step 1.5 task: choose an ACE-Step 1.5 model"):
        tasks.check("cover", {"tags": "jazz", "audio": "missing.wav"}, DEFAULT_MODEL)
    long = tmp_path / "long.wav"
    sf.write(long, torch.zeros(241 * 8000).numpy(), 8000)
    with pytest.raises(InputError, match="the cover task re-renders the whole track"):
        run(manager, tiny_v15, "cover", audio=str(long))


def test_the_cli_runs_cover(tiny_v15, sine_wav, tmp_path, capsys):
    from ace_step_ui.cli import main

    request = {"audio": str(sine_wav), "tags": "jazz", "lyrics": "[inst]", **FAST}
    assert main(["run", "cover", "--input", json.dumps(request), "--output-dir", str(tmp_path),
                 "--model", str(tiny_v15), "--device", "cpu", "--format", "flac"]) == 0
    (written,) = capsys.readouterr().out.split()
    info, source = sf.info(written), sf.info(str(sine_wav))
    assert (info.frames, info.samplerate, info.channels) == (source.frames, source.samplerate,
                                                             source.channels)
    assert json.loads(Path(written).with_suffix(".json").read_text())["task"] == "cover"



@pytest.mark.parametrize("task, field, values", [("extract", "track_name", ("vocals", "drums")),
                                                 ("lego", "track_name", ("drums", "bass")),
                                                 ("complete", "track_classes", ("drums", "bass, guitar"))])
def test_stem_tasks_run_on_base_at_the_sources_length(manager, tiny_v15_base, sine_wav, task, field,
                                                      values):
    source = read_audio(sine_wav)
    first, second = (run(manager, tiny_v15_base, task, audio=str(sine_wav), seed=2, **{field: value})
                     for value in values)
    out = first.audio
    assert (out.sample_rate, out.channels, out.frames) == (source.sample_rate, source.channels,
                                                           source.frames)
    assert not torch.equal(out.samples, second.audio.samples)  # the track named is the task
    assert first.params["ignored_params"] == [] and first.params["task"] == task
    again = run(manager, tiny_v15_base, task, audio=str(sine_wav), seed=2, **{field: values[0]})
    assert torch.equal(out.samples, again.audio.samples)


@pytest.mark.parametrize("task", ["extract", "lego", "complete"])
def test_stem_tasks_are_refused_on_turbo_and_v1_before_any_work(tiny_v15, task):
    payload = {"tags": "pop", "audio": "missing.wav"}
    with pytest.raises(InputError, match=f"{task} runs on an ACE-Step 1.5 base model"):
        tasks.check(task, payload, str(tiny_v15))
    with pytest.raises(InputError, match=f"{task} is an ACE-Step 1.5 task"):
        tasks.check(task, payload, DEFAULT_MODEL)


def test_sequential_mode_on_a_gpu_asks_diffusers_to_stream_each_layer(tiny_v15, monkeypatch):
    """`--memory sequential` on CUDA: diffusers' sequential offload, and no compile (its hooks
    move the weights at every call). Recorded, not run: this machine has no GPU."""
    from diffusers import AceStepPipeline

    from ace_step_ui.speed import Speed
    from ace_step_ui.v15 import engine as v15_engine

    calls: list[str] = []
    monkeypatch.setattr(v15_engine, "pick_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(AceStepPipeline, "enable_sequential_cpu_offload",
                        lambda pipe, device: calls.append(f"sequential on {device}"))
    monkeypatch.setattr(AceStepPipeline, "enable_model_cpu_offload",
                        lambda pipe, device: calls.append("model offload"))
    monkeypatch.setattr(AceStepPipeline, "to", lambda pipe, device: calls.append(f"to {device}"))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **_: calls.append("compile"))
    loaded = v15_engine.load(tiny_v15, str(tiny_v15), "cuda", "float32",
                             Speed(compile=True, memory="sequential"))
    assert calls == ["sequential on cuda"] and loaded.device == torch.device("cuda")
    calls.clear()
    v15_engine.load(tiny_v15, str(tiny_v15), "cuda", "float32", Speed(compile=True, memory="offload"))
    assert calls == ["model offload", "compile"]
