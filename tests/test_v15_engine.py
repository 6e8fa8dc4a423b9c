import shutil

import pytest
import soundfile as sf
import torch

from ace_step_ui import tasks
from ace_step_ui.audio import read_audio
from ace_step_ui.engines import EngineManager, family_for
from ace_step_ui.errors import Cancelled, InputError, ModelUnavailableError
from ace_step_ui.v15.engine import blended_noise, guidance_window, lyrics_for_v15

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


def test_inpaint_relative_to_end_on_a_mono_file(manager, tiny_v15, tmp_path):
    rate = 22050
    mono = (0.2 * torch.sin(torch.arange(4 * rate) / rate * 2 * torch.pi * 200)).numpy()
    path = tmp_path / "mono.flac"
    sf.write(path, mono, rate)
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
    assert not manager.gpu_lock.locked()
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
    with manager.gpu_lock:  # another job holds the GPU while this one waits
        import threading

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
    with pytest.raises(ModelUnavailableError, match="not a checkpoint this app can load"):
        family_for(str(tmp_path))
    with pytest.raises(InputError, match="neither a folder on this machine nor a Hub id"):
        family_for("no-such-thing")


def test_small_mappings():
    assert lyrics_for_v15(" [inst] ") == "[Instrumental]"
    assert lyrics_for_v15("[verse]\nhello") == "[verse]\nhello"
    assert guidance_window(1.0) == (0.0, 1.0) and guidance_window(0.0) == (0.5, 0.5)
