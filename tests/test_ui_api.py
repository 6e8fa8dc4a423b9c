"""The Gradio app's named endpoints, called through gradio_client on the tiny checkpoint."""

from __future__ import annotations

import time

import pytest
import soundfile
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from ace_step_ui.requests import TASKS, schema
from ace_step_ui.ui import QUEUE_SIZE, visible_advanced

FAST = dict(number_of_steps=2)


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served.url, verbose=False)


def read(path: str) -> soundfile._SoundFileInfo:
    return soundfile.info(path)


def test_named_endpoints_take_the_hosted_parameter_names(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/generate", "/inpaint", "/outpaint", "/edit"}
    for task in TASKS:
        info = endpoints[f"/{task}"]
        names = [p["parameter_name"] for p in info["parameters"]]
        assert names == [*schema(task), "model", "format"]
        assert [r["label"] for r in info["returns"]] == ["Result", "Seed used", "Params"]


def test_edit_endpoint_takes_the_hosted_audio_to_audio_names(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/edit"]
    parameters = {p["parameter_name"]: p for p in info["parameters"]}
    hosted = {"audio", "edit_mode", "original_tags", "original_lyrics", "tags", "lyrics",
              "number_of_steps", "seed", "scheduler", "guidance_type", "granularity_scale",
              "guidance_interval", "guidance_interval_decay", "guidance_scale",
              "minimum_guidance_scale", "tag_guidance_scale", "lyric_guidance_scale",
              "original_seed"}
    assert hosted <= set(parameters)
    assert parameters["edit_mode"]["parameter_default"] == "remix"
    assert parameters["original_tags"]["parameter_has_default"]  # required: checked on the server


def test_edit_on_a_1_5_model_says_which_model_to_choose(client, sine_wav):
    with pytest.raises(AppError, match=r"edit \(audio-to-audio\) needs ACE-Step v1 "
                                       r"\(ACE-Step/ACE-Step-v1-3\.5B\); choose it as the model"):
        client.predict(audio=handle_file(str(sine_wav)), original_tags="lofi", tags="jazz",
                       api_name="/edit")
    with pytest.raises(AppError, match="'original_tags' is required for edit"):
        client.predict(audio=handle_file(str(sine_wav)), tags="jazz", api_name="/edit")


def test_v1_switches_and_schedules_at_their_defaults_are_not_sent(client):
    _, _, params = client.predict(tags="lofi", duration=2, use_erg_tag=True, oss_steps="  ",
                                  lora="", variance=0.0, api_name="/generate", **FAST)
    assert params["ignored_params"] == []
    _, _, params = client.predict(tags="lofi", duration=2, use_erg_tag=False, oss_steps="4, 8",
                                  variance=0.5, api_name="/generate", **FAST)
    assert params["ignored_params"] == ["oss_steps", "use_erg_tag", "variance"]
    assert params["request"]["oss_steps"] == [4, 8]


@pytest.mark.parametrize("fmt,magic", [("wav", b"RIFF"), ("flac", b"fLaC"), ("mp3", b"ID3")])
def test_generate_returns_audio_seed_and_params(client, fmt, magic):
    path, seed, params = client.predict(tags="lofi, piano", lyrics="[inst]", duration=2, seed=7,
                                        format=fmt, api_name="/generate", **FAST)
    with open(path, "rb") as file:
        assert file.read(4).startswith(magic)
    assert read(path).duration == pytest.approx(2.0, abs=0.06)  # mp3 pads a frame
    assert seed == 7 and params["seed"] == 7
    assert params["task"] == "generate" and params["engine"]["num_inference_steps"] == 2


def test_advanced_values_at_their_defaults_keep_the_engine_presets(client):
    _, _, params = client.predict(tags="lofi", duration=2, api_name="/generate")
    assert params["engine"]["num_inference_steps"] == 8  # the turbo preset, not the schema's 27
    assert params["ignored_params"] == []
    _, _, params = client.predict(tags="lofi", duration=2, guidance_scale=3.0,
                                  api_name="/generate", **FAST)
    assert params["ignored_params"] == ["guidance_scale"]  # turbo is distilled: no guidance


def test_random_seed_is_reported(client):
    _, seed, params = client.predict(tags="lofi", duration=2, seed=-1, api_name="/generate", **FAST)
    assert seed >= 0 and params["seed"] == seed


def test_inpaint_keeps_the_length_of_the_source(client, sine_wav):
    path, seed, params = client.predict(audio=handle_file(str(sine_wav)), start_time=1.0,
                                        end_time=3.0, tags="lofi", seed=3, api_name="/inpaint",
                                        **FAST)
    source, info = read(str(sine_wav)), read(path)
    assert (info.frames, info.samplerate, info.channels) == (source.frames, source.samplerate,
                                                             source.channels)
    assert seed == 3 and params["range_s"] == [1.0, 3.0]


def test_inpaint_range_anchored_to_the_end(client, sine_wav):
    seconds = read(str(sine_wav)).duration
    _, _, params = client.predict(audio=handle_file(str(sine_wav)), start_time=2.0,
                                  start_time_relative_to="end", end_time=0.0,
                                  end_time_relative_to="end", tags="lofi", api_name="/inpaint",
                                  **FAST)
    assert params["range_s"] == [seconds - 2.0, seconds]


def test_outpaint_adds_the_extensions(client, sine_wav):
    path, _, params = client.predict(audio=handle_file(str(sine_wav)), extend_before_duration=1.0,
                                     extend_after_duration=2.0, tags="lofi", api_name="/outpaint",
                                     **FAST)
    assert read(path).frames == read(str(sine_wav)).frames + 3 * 44100
    assert params["task"] == "outpaint"


def test_end_before_start_is_a_clear_error(client, sine_wav):
    with pytest.raises(AppError, match="end_time resolves to 1.0 s, before start_time 3.0 s"):
        client.predict(audio=handle_file(str(sine_wav)), start_time=3.0, end_time=1.0,
                       tags="lofi", api_name="/inpaint")


def test_missing_source_and_tags_are_clear_errors(client):
    with pytest.raises(AppError, match="'audio' is required for outpaint"):
        client.predict(audio=None, tags="lofi", api_name="/outpaint")
    with pytest.raises(AppError, match="'tags' is required for generate"):
        client.predict(tags="  ", duration=2, api_name="/generate")


def test_the_three_tasks_share_one_gpu_slot(served):
    events = [fn for fn in served.demo.fns.values() if fn.api_name in TASKS]
    assert sorted(fn.api_name for fn in events) == sorted(TASKS)
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in events} == {("gpu", 1)}
    assert served.demo._queue.max_size == QUEUE_SIZE


def test_advanced_shows_what_the_model_honours(tiny_v15, tiny_v15_base):
    assert visible_advanced(str(tiny_v15), "edit") == []  # 1.5 does not edit
    v1 = visible_advanced("ACE-Step/ACE-Step-v1-3.5B", "generate")
    assert {"use_erg_tag", "use_erg_lyric", "use_erg_diffusion", "oss_steps", "lora", "lora_scale",
            "variance", "reference_audio", "audio2audio_strength", "scheduler"} <= set(v1)
    assert visible_advanced(str(tiny_v15), "generate") == ["number_of_steps"]
    assert visible_advanced(str(tiny_v15), "inpaint") == ["retake_seed", "number_of_steps"]
    guided = ["number_of_steps", "guidance_interval", "guidance_scale"]
    assert visible_advanced(str(tiny_v15_base), "generate") == guided
    assert visible_advanced("ACE-Step/acestep-v15-xl-base-diffusers", "generate") == guided
    assert visible_advanced("ACE-Step/acestep-v15-xl-turbo-diffusers", "outpaint") == [
        "number_of_steps"]


def test_stop_ends_the_running_job(served, client):
    manager = served.manager
    job = client.submit(tags="lofi", duration=2, number_of_steps=200, api_name="/generate")
    deadline = time.monotonic() + 60
    while not job.status().progress_data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not manager.cancel("another-session")  # Stop only reaches one's own job
    assert manager.cancel(client.session_hash)
    with pytest.raises(AppError, match="stopped by the user"):
        job.result(timeout=60)


def test_unavailable_model_message_reaches_the_client(client):
    with pytest.raises(AppError, match="not in the Hugging Face cache"):
        client.predict(tags="lofi", duration=2, model="nobody/acestep-nonexistent",
                       api_name="/generate")
