"""The planner in a job: prompt-to-audio writes the song, thinking passes audio codes to the DiT,
the planner and the DiT share one memory budget, and Stop works while the planner writes."""

import threading

import pytest
import torch

from ace_step_ui import memory, tasks
from ace_step_ui.engines import EngineManager
from ace_step_ui.errors import Cancelled, InputError
from ace_step_ui.v15.planner import Plan, Planner, PlannerConfig

SECONDS = 10  # the 5 Hz LM's shortest song
CODES = "".join(f"<|audio_code_{(7 * n) % 64}|>" for n in range(SECONDS * 5))  # the tiny 64
WRITTEN = Plan(tags="dream pop, airy female vocals, 92 bpm", lyrics="[verse]\nRain on the glass",
               bpm=92, keyscale="D minor", timesignature="3", duration_s=30.0, language="es")


class ScriptedPlanner:
    """A planner that writes WRITTEN and thinks CODES, recording what it was asked."""

    def __init__(self):
        self.calls = []

    def write(self, idea, *, instrumental, seed, on_step=None):
        self.calls.append(("write", idea, instrumental, seed))
        return WRITTEN

    def think(self, tags, lyrics, *, bpm, keyscale, timesignature, duration_s, language, seed,
              on_step=None):
        self.calls.append(("think", tags, lyrics, bpm, keyscale, timesignature, duration_s,
                           language, seed))
        return Plan(tags=tags, lyrics=lyrics, bpm=bpm or 100, keyscale=keyscale or "A minor",
                    timesignature=str(timesignature or 4), duration_s=duration_s,
                    language=language or "en", audio_codes=CODES)


class RecordingPipe:
    """diffusers' pipeline, with the keyword arguments of each call kept."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@pytest.fixture(scope="module")
def manager(tiny_planner):
    return EngineManager("cpu", planner=str(tiny_planner))


@pytest.fixture
def scripted(manager, monkeypatch):
    planner = ScriptedPlanner()
    monkeypatch.setattr(manager, "planner", lambda: planner)
    return planner


@pytest.fixture
def pipe_calls(manager, tiny_v15, monkeypatch):
    engine = manager.get(str(tiny_v15))
    recording = RecordingPipe(engine.pipe)
    monkeypatch.setattr(engine, "pipe", recording)
    return recording.calls


def test_the_written_song_is_what_the_15_dit_sings(manager, tiny_v15, scripted, pipe_calls):
    result = tasks.run("prompt_to_audio", {"prompt": "rainy night", "duration": SECONDS,
                                           "seed": 7}, manager, str(tiny_v15))
    assert scripted.calls == [("write", "rainy night", False, 7)]
    (call,) = pipe_calls
    assert (call["prompt"], call["lyrics"]) == (WRITTEN.tags, WRITTEN.lyrics)
    assert (call["bpm"], call["keyscale"], call["timesignature"], call["vocal_language"]) == (
        92, "D minor", "3", "es")
    assert "audio_codes" not in call  # no thinking: the DiT alone
    # The request's duration is the song's (fal's default 60 s), not the LM's 30.
    assert call["audio_duration"] == SECONDS and result.audio.duration_s == SECONDS
    params = result.params
    assert (params["tags"], params["lyrics"]) == (WRITTEN.tags, WRITTEN.lyrics)
    assert (params["prompt"], params["instrumental"]) == ("rainy night", False)
    assert params["planner"]["written"]["bpm"] == 92
    assert params["generate_request"] == {
        "tags": WRITTEN.tags, "lyrics": WRITTEN.lyrics, "duration": SECONDS, "seed": 7, "bpm": 92,
        "keyscale": "D minor", "timesignature": 3, "vocal_language": "es"}
    assert set(params["timings_s"]) == {"plan", "load", "run"}


def test_a_written_song_replays_as_a_plain_generate(manager, tiny_v15, scripted):
    first = tasks.run("prompt_to_audio", {"prompt": "rainy night", "duration": SECONDS},
                      manager, str(tiny_v15))
    again = tasks.run("generate", first.params["generate_request"], manager, str(tiny_v15))
    assert len(scripted.calls) == 1  # the replay needs no planner
    assert torch.equal(again.audio.samples, first.audio.samples)


def test_thinking_passes_the_planners_audio_codes_to_the_dit(manager, tiny_v15, scripted,
                                                             pipe_calls):
    request = {"tags": "synthwave", "lyrics": "[inst]", "duration": SECONDS, "seed": 3,
               "bpm": 120}
    plain = tasks.run("generate", request, manager, str(tiny_v15))
    thought = tasks.run("generate", {**request, "thinking": True}, manager, str(tiny_v15))
    assert scripted.calls == [("think", "synthwave", "[inst]", 120, None, None, SECONDS, None, 3)]
    assert "audio_codes" not in pipe_calls[0]
    assert pipe_calls[1]["audio_codes"] == CODES
    assert (pipe_calls[1]["bpm"], pipe_calls[1]["keyscale"]) == (120, "A minor")
    assert thought.params["engine"]["audio_codes"] == SECONDS * 5
    assert thought.params["planner"]["thought"]["audio_codes"] == SECONDS * 5
    assert thought.audio.duration_s == SECONDS
    assert not torch.equal(thought.audio.samples, plain.audio.samples)


def test_prompt_to_audio_on_v1_with_the_tiny_planner(tiny_v1, tiny_planner):
    manager = EngineManager("cpu", planner=str(tiny_planner))
    payload = {"prompt": "a lofi song", "duration": 2, "seed": 0, "number_of_steps": 3,
               "thinking": True}
    result = tasks.run("prompt_to_audio", payload, manager, str(tiny_v1))
    expected = Planner.load(PlannerConfig(model=str(tiny_planner)), "cpu").write(
        "a lofi song", instrumental=False, seed=0)
    assert expected.lyrics  # this seed writes lyrics: the test sees them pass through
    assert (result.params["tags"], result.params["lyrics"]) == (expected.tags, expected.lyrics)
    assert result.params["planner"]["written"]["lyrics"] == expected.lyrics
    assert "thought" not in result.params["planner"]  # v1 cannot take audio codes
    assert "thinking" in result.params["ignored_params"]
    replay = tasks.run("generate", result.params["generate_request"], manager, str(tiny_v1))
    assert torch.equal(replay.audio.samples, result.audio.samples)


def test_thinking_with_the_tiny_planner_makes_five_codes_a_second(tiny_v15, tiny_planner,
                                                                  monkeypatch):
    manager = EngineManager("cpu", planner=str(tiny_planner))
    engine = manager.get(str(tiny_v15))
    recording = RecordingPipe(engine.pipe)
    monkeypatch.setattr(engine, "pipe", recording)
    result = tasks.run("prompt_to_audio", {"prompt": "a lofi song", "duration": SECONDS,
                                           "seed": 1, "thinking": True}, manager, str(tiny_v15))
    codes = recording.calls[0]["audio_codes"]
    assert codes.count("<|audio_code_") == SECONDS * 5
    assert result.params["planner"]["thought"]["audio_codes"] == SECONDS * 5
    assert result.params["generate_request"]["thinking"] is True


def test_thinking_is_refused_below_the_lms_shortest_song_before_any_work(tiny_v15):
    with pytest.raises(InputError, match="thinking plans songs of 10 s or more"):
        tasks.check("generate", {"tags": "x", "thinking": True, "duration": 5}, str(tiny_v15))
    with pytest.raises(InputError, match="set duration to at least 10"):
        tasks.check("prompt_to_audio", {"prompt": "x", "thinking": True, "duration": 5},
                    str(tiny_v15))


def test_stop_ends_the_job_while_the_planner_writes(tiny_v15, tiny_planner):
    manager = EngineManager("cpu", planner=str(tiny_planner))
    stop = threading.Event()
    reports = []

    def on_step(step, total):
        reports.append((step, total))
        stop.set()

    with pytest.raises(Cancelled):
        tasks.run("prompt_to_audio", {"prompt": "a long song", "duration": SECONDS, "seed": 0},
                  manager, str(tiny_v15), on_step=on_step, stop=stop,
                  on_phase=lambda name: reports.append(name))
    assert reports[0] == tasks.PLANNING and len(reports) == 2  # stopped at its first report
    assert manager._engine is None  # the DiT never loaded
    assert not manager.slot.busy


def test_the_planner_and_the_dit_take_turns_when_memory_is_short(tiny_v15, tiny_planner):
    manager = EngineManager("cpu", planner=str(tiny_planner), free_memory=lambda device: 0)
    payload = {"prompt": "a song", "duration": SECONDS, "seed": 2}
    first = tasks.run("prompt_to_audio", payload, manager, str(tiny_v15))
    assert first.params["memory"] == ["unloaded the planner for the DiT"]
    second = tasks.run("prompt_to_audio", payload, manager, str(tiny_v15))
    assert second.params["memory"] == ["unloaded the DiT for the planner",
                                       "unloaded the planner for the DiT"]
    assert torch.equal(first.audio.samples, second.audio.samples)


def test_the_planner_and_the_dit_stay_when_both_fit(tiny_v15, tiny_planner):
    manager = EngineManager("cpu", planner=str(tiny_planner),
                            free_memory=lambda device: 1 << 40)
    payload = {"prompt": "a song", "duration": SECONDS, "seed": 2}
    tasks.run("prompt_to_audio", payload, manager, str(tiny_v15))
    planner, engine = manager.planner(), manager.get(str(tiny_v15))
    second = tasks.run("prompt_to_audio", payload, manager, str(tiny_v15))
    assert "memory" not in second.params
    assert manager.planner() is planner and manager.get(str(tiny_v15)) is engine


def test_weights_bytes_read_the_stored_precision(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(100, 10, dtype=torch.float32), "b": torch.zeros(3)},
              str(tmp_path / "model.safetensors"))
    size = (tmp_path / "model.safetensors").stat().st_size
    assert memory.weights_bytes(tmp_path, torch.float32) == size
    assert memory.weights_bytes(tmp_path, torch.bfloat16) == size // 2
    (tmp_path / "half").mkdir()
    save_file({"w": torch.zeros(100, 10, dtype=torch.bfloat16)},
              str(tmp_path / "half" / "model.safetensors"))
    half = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert memory.weights_bytes(tmp_path / "half", torch.float32) == half * 2
    assert memory.fits(0, memory.RESERVE_BYTES) and not memory.fits(1, memory.RESERVE_BYTES)


def test_weights_bytes_leave_out_what_loading_skips(tmp_path, tiny_v1):
    from safetensors.torch import save_file

    from ace_step_ui.v1 import checkpoint
    from ace_step_ui.v1.pipeline import V1Pipeline
    from ace_step_ui.v1.transformer import is_training_only

    save_file({"kept": torch.zeros(100, 10, dtype=torch.bfloat16), "projectors.0.w": torch.zeros(7)},
              str(tmp_path / "model.safetensors"))
    assert memory.weights_bytes(tmp_path, torch.float32, is_training_only) == 100 * 10 * 4
    # The tiny v1 DiT: what auto memory counts is what loading allocates.
    pipeline = V1Pipeline.load(tiny_v1, torch.device("cpu"), torch.float32)
    loaded = sum(tensor.numel() * 4 for tensor in pipeline.transformer.state_dict().values())
    folder = tiny_v1 / checkpoint.TRANSFORMER
    assert memory.weights_bytes(folder, torch.float32, is_training_only) == loaded
    assert memory.weights_bytes(folder, torch.float32) > loaded  # the training-only tensors


class PlacedPlanner:
    """A planner that only records where it is moved."""

    def __init__(self, device):
        self.device = device

    def to(self, device):
        self.device = device

    def weights_bytes(self):
        return 1 << 30


def test_on_a_gpu_the_planner_waits_on_the_cpu_while_the_dit_runs(monkeypatch):
    from ace_step_ui import engines

    gpu = torch.device("cuda")
    monkeypatch.setattr(engines, "pick_device", lambda device: gpu)
    manager = EngineManager("cuda", "float32", planner="lm", free_memory=lambda device: 0)
    planner = PlacedPlanner(gpu)
    manager._planner, manager._planner_key = planner, ("lm", "cuda", "float32")
    manager._make_room(0, for_planner=False)  # the DiT is about to run: no room beside it
    assert planner.device.type == "cpu" and manager.moves == ["planner offloaded to the CPU"]
    assert manager.planner() is planner and planner.device == gpu
    assert manager.moves[-1] == "planner back on the device"
