"""The Gradio app's named endpoints, called through gradio_client on the tiny checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import soundfile
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from ace_step_ui.requests import ALIASES, TASKS, schema
from ace_step_ui.ui import QUEUE_SIZE, table_rows, visible_advanced

FAST = dict(number_of_steps=2)


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served.url, verbose=False)


def read(path: str) -> soundfile._SoundFileInfo:
    return soundfile.info(path)


def test_named_endpoints_take_the_hosted_parameter_names(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {f"/{task}" for task in TASKS} | {"/stop"}
    assert set(TASKS) == {"generate", "inpaint", "outpaint", "edit", "cover", "extract", "lego",
                          "complete", "prompt_to_audio"}
    for task in TASKS:
        info = endpoints[f"/{task}"]
        names = [p["parameter_name"] for p in info["parameters"]]
        aliases = [alias for alias, name in ALIASES.items() if name in schema(task)]
        assert names == [*schema(task), *aliases, "model", "format"]
        # Every parameter may be left out, and then it is unset (the model's preset applies).
        assert all(p["parameter_has_default"] and p["parameter_default"] is None
                   for p in info["parameters"])
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
    assert parameters["original_tags"]["parameter_has_default"]  # required: checked on the server


def test_edit_on_a_1_5_model_says_which_model_to_choose(client, sine_wav):
    with pytest.raises(AppError, match=r"edit \(audio-to-audio\) needs ACE-Step v1 "
                                       r"\(ACE-Step/ACE-Step-v1-3\.5B\); choose it as the model"):
        client.predict(audio=handle_file(str(sine_wav)), original_tags="lofi", tags="jazz",
                       api_name="/edit")
    with pytest.raises(AppError, match="'original_tags' is required for edit"):
        client.predict(audio=handle_file(str(sine_wav)), tags="jazz", api_name="/edit")


def test_values_sent_at_the_hosted_defaults_are_honoured(client):
    """The API runs what the caller sends, as the CLI does; only the UI leaves its defaults out."""
    _, _, params = client.predict(tags="lofi", duration=2, number_of_steps=27, seed=1,
                                  api_name="/generate")
    assert params["engine"]["num_inference_steps"] == 27  # not the turbo preset of 8
    assert params["request"] == {"tags": "lofi", "duration": 2, "number_of_steps": 27, "seed": 1}
    _, _, params = client.predict(tags="lofi", duration=2, use_erg_tag=True, oss_steps="  ",
                                  lora="", variance=0.0, api_name="/generate", **FAST)
    assert params["ignored_params"] == ["oss_steps", "use_erg_tag", "variance"]  # lora "" is none


@pytest.mark.parametrize("values, message", [
    ({"tags": 123}, "'tags' must be text, not int"),
    ({"tags": "x", "seed": 1.5}, "'seed' must be a whole number, not 1.5"),
    ({"tags": "x", "duration": "abc"}, "'duration' must be a number, not 'abc'"),
    ({"tags": "x", "number_of_steps": [27]}, "'number_of_steps' must be a number, not list"),
    ({"tags": "x", "format": "ogg"}, "format must be one of wav, flac, mp3, not 'ogg'"),
])
def test_the_api_refuses_what_the_cli_refuses(client, values, message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(api_name="/generate", **values)


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


def test_cover_keeps_the_sources_length_rate_and_channels(client, sine_wav):
    path, seed, params = client.predict(audio=handle_file(str(sine_wav)), tags="jazz, brass",
                                        audio_cover_strength=0.7, seed=3, api_name="/cover", **FAST)
    source, info = read(str(sine_wav)), read(path)
    assert (info.frames, info.samplerate, info.channels) == (source.frames, source.samplerate,
                                                             source.channels)
    assert params["task"] == "cover" and params["engine"]["audio_cover_strength"] == 0.7
    assert params["ignored_params"] == []


def test_prompt_to_audio_returns_the_written_song(client):
    path, seed, params = client.predict(prompt="a song about the sea", duration=2, seed=11,
                                        api_name="/prompt_to_audio", **FAST)
    assert seed == 11 and read(path).duration == 2
    assert params["task"] == "prompt_to_audio" and params["prompt"] == "a song about the sea"
    written = params["planner"]["written"]
    assert (params["tags"], params["lyrics"]) == (written["tags"], written["lyrics"])
    assert params["generate_request"]["seed"] == 11
    assert params["generate_request"]["tags"] == written["tags"]


@pytest.mark.parametrize("values, message", [
    ({}, "'prompt' is required for prompt_to_audio"),
    ({"prompt": "x", "thinking": True, "duration": 5}, "thinking plans songs of 10 s or more"),
])
def test_prompt_to_audio_refusals_say_what_to_change(client, values, message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(api_name="/prompt_to_audio", **values)


def test_stems_on_a_turbo_model_name_the_base_model(client, sine_wav):
    with pytest.raises(AppError, match="extract runs on an ACE-Step 1.5 base model"):
        client.predict(audio=handle_file(str(sine_wav)), tags="pop", track_name="drums",
                       api_name="/extract")


def test_inpaint_range_anchored_to_the_end(client, sine_wav):
    seconds = read(str(sine_wav)).duration
    _, _, params = client.predict(audio=handle_file(str(sine_wav)), start_time=2.0,
                                  start_time_relative_to="end", end_time=0.0,
                                  end_time_relative_to="end", tags="lofi", api_name="/inpaint",
                                  **FAST)
    assert params["range_s"] == [seconds - 2.0, seconds]


EXTRA = [{"start_time": 3, "end_time": 4, "tags": "jazz"}, {"start_time": 1.5, "end_time": 2.5,
                                                              "lyrics": "[inst]"}]
SENT_BACK = [{"start_time": 3.0, "end_time": 4.0, "tags": "jazz", "lyrics": ""},
             {"start_time": 1.5, "end_time": 2.5, "tags": "", "lyrics": "[inst]"}]


def check_ranges(params: dict) -> None:
    """The main range 0.5-1.5 s, then the extra ranges by start time, each with its seeds."""
    assert params["range_s"] == [0.5, 1.5] and params["request"]["extra_ranges"] == SENT_BACK
    ran = [(r["start_s"], r["end_s"], r["tags"], r["lyrics"], r["seed"], r["retake_seed"])
           for r in params["engine"]["ranges"]]
    assert ran == [(0.5, 1.5, "lofi", "", 3, 4), (1.5, 2.5, "lofi", "[inst]", 5, 6),
                   (3.0, 4.0, "jazz", "", 7, 8)]
    assert params["ignored_params"] == []


@pytest.mark.parametrize("extra", [EXTRA, json.dumps(EXTRA)], ids=["list", "json text"])
def test_inpaint_repaints_extra_ranges_sent_as_a_list_or_json_text(client, sine_wav, extra):
    path, _, params = client.predict(audio=handle_file(str(sine_wav)), start_time=0.5,
                                     end_time=1.5, extra_ranges=extra, tags="lofi", seed=3,
                                     api_name="/inpaint", **FAST)
    check_ranges(params)
    kept = soundfile.read(path, dtype="float32")[0][round(2.5 * 44100):3 * 44100]
    assert (kept == soundfile.read(str(sine_wav), dtype="float32")[0][round(2.5 * 44100):3 * 44100]
            ).all()


def test_extra_ranges_are_described_in_the_api(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/inpaint"]
    extra = next(p for p in info["parameters"] if p["parameter_name"] == "extra_ranges")
    assert extra["type"]["anyOf"][0]["items"]["required"] == ["start_time", "end_time"]
    assert "each with its own tags and lyrics" in extra["type"]["description"]


def test_overlapping_extra_ranges_are_a_clear_error(client, sine_wav):
    with pytest.raises(AppError, match=re.escape("extra range 1 (1–2 s) overlaps the main range "
                                                 "(0.5–1.5 s): start extra range 1 at 1.5 s")):
        client.predict(audio=handle_file(str(sine_wav)), start_time=0.5, end_time=1.5,
                       extra_ranges=[[1, 2, "jazz"]], tags="lofi", api_name="/inpaint")


@pytest.mark.parametrize("table, rows", [
    ({"headers": ["Start (s)", "End (s)", "Tags", "Lyrics"], "data": [], "metadata": None}, []),
    ({"headers": [], "data": [["", "", "", ""], [None, " ", "", None], [float("nan"), "", "", ""]]},
     []),
    ({"headers": [], "data": [["01.5", "3", "jazz", ""], ["", "", "", ""], ["", "", "pop", ""]]},
     [["01.5", "3", "jazz", ""], ["", "", "pop", ""]]),  # text without times: refused, not lost
    ({"data": [[1, 2, "a", "b", "extra column"]]}, [[1, 2, "a", "b"]]),
    ([[1, 2]], [[1, 2]]), ("[[1, 2]]", "[[1, 2]]"), (None, None),
])
def test_a_table_sends_its_filled_rows(table, rows):
    assert table_rows(table) == rows


def upload(url: str, path: Path) -> dict:
    """`path` uploaded as the browser uploads it: gradio's file object."""
    with open(path, "rb") as file:
        answer = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, file)})
    answer.raise_for_status()
    return {"path": answer.json()[0], "meta": {"_type": "gradio.FileData"}}


def call_form(served, values: dict) -> dict:
    """The Inpaint tab's Run, with the components' values by label (the rest at their defaults)."""
    fn_index, fn = next((i, fn) for i, fn in served.demo.fns.items()
                        if fn.api_name == "inpaint_form")
    form = {"Model": served.model, "Format": "wav", "Number of steps": 2, **values}
    data = [form.get(block.label, block.value) for block in fn.inputs]
    return raw_call(served.url, fn_index, data)


RANGES_LABEL = "More ranges (each with its own tags and lyrics)"


def test_the_form_sends_the_tables_filled_rows(served, sine_wav):
    source = upload(served.url, sine_wav)
    base = {"Source audio": source, "Tags": "lofi", "Seed": 3, "Start (s)": 0.5, "End (s)": 1.5}
    # A table as the browser sends it: typed numbers arrive as text, a new row's cells empty.
    table = {"headers": ["Start (s)", "End (s)", "Tags", "Lyrics"], "metadata": None,
             "data": [["03", "4", "jazz", ""], ["", "", "", ""], [1.5, 2.5, "", "[inst]"]]}
    message = call_form(served, {**base, RANGES_LABEL: table})
    assert message["success"], message
    check_ranges(message["output"]["data"][2])
    # an empty table (the default: no rows, or only empty ones) sends nothing
    empty = {**table, "data": [["", "", "", ""]]}
    message = call_form(served, {**base, RANGES_LABEL: empty})
    params = message["output"]["data"][2]
    assert "extra_ranges" not in params["request"] and "ranges" not in params["engine"]
    message = call_form(served, base)
    assert "extra_ranges" not in message["output"]["data"][2]["request"]
    # a row with tags but no times says what is missing
    message = call_form(served, {**base, RANGES_LABEL: {**table, "data": [["", "", "pop", ""]]}})
    assert message["success"] is False
    assert "'extra_ranges' range 1 needs a start_time" in message["output"]["error"]


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


def wait_for_progress(job, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not job.status().progress_data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status().progress_data, "the job never reported a step"


def wait_until_free(manager, seconds: float = 30) -> float:
    """Seconds until no job holds or waits for the model's slot."""
    started = time.monotonic()
    while (manager.slot.busy or manager.slot.waiting()) and time.monotonic() - started < seconds:
        time.sleep(0.01)
    assert not manager.slot.busy and not manager.slot.waiting()
    return time.monotonic() - started


def test_a_bad_request_is_refused_at_once_while_a_job_holds_the_model(served, client, steps_of):
    steps_of(served.manager, pace=0.05)
    job = client.submit(tags="lofi", duration=2, number_of_steps=200, api_name="/generate")
    wait_for_progress(job)
    started = time.monotonic()
    with pytest.raises(AppError, match="'tags' is required for generate"):
        client.predict(tags="  ", duration=2, api_name="/generate")
    with pytest.raises(AppError, match="audio file .* not found|names a file on the server"):
        client.predict(audio="/no/such.wav", tags="x", api_name="/outpaint")
    refused_in = time.monotonic() - started
    assert served.manager.slot.busy  # the long job still runs: nothing waited behind it
    assert client.predict(api_name="/stop") == ()
    with pytest.raises(AppError, match="stopped by the user"):
        job.result(timeout=60)
    assert refused_in < 5, refused_in


def test_a_cancelled_job_frees_the_model_at_its_next_step(served, client, steps_of):
    steps = steps_of(served.manager, pace=0.05)
    job = client.submit(tags="lofi", duration=2, number_of_steps=200, api_name="/generate")
    wait_for_progress(job)
    assert job.cancel()
    wait_until_free(served.manager)
    after_cancel = [step for step, stopping in steps if stopping]
    assert len(after_cancel) <= 1 and steps[-1][0] < 200, steps[-3:]
    path, _, _ = client.predict(tags="lofi", duration=1, api_name="/generate", **FAST)
    assert soundfile.info(path).frames == 48000  # and the next job runs


def test_stop_reaches_only_the_callers_own_jobs(served, client, steps_of):
    steps_of(served.manager, pace=0.05)
    other = Client(served.url, verbose=False)
    job = client.submit(tags="lofi", duration=2, number_of_steps=200, api_name="/generate")
    wait_for_progress(job)
    other.predict(api_name="/stop")  # another client's Stop: nothing of its own runs
    assert served.manager.slot.busy and not job.done()
    client.predict(api_name="/stop")
    with pytest.raises(AppError, match="stopped by the user"):
        job.result(timeout=60)
    wait_until_free(served.manager)


def test_advanced_shows_what_the_model_honours(tiny_v15, tiny_v15_base):
    assert visible_advanced(str(tiny_v15), "edit") == []  # 1.5 does not edit
    v1 = visible_advanced("ACE-Step/ACE-Step-v1-3.5B", "generate")
    assert {"use_erg_tag", "use_erg_lyric", "use_erg_diffusion", "oss_steps", "lora", "lora_scale",
            "variance", "reference_audio", "audio2audio_strength", "scheduler"} <= set(v1)
    lora = ["lora", "lora_scale"]
    song = ["bpm", "keyscale", "timesignature", "vocal_language", "thinking"]  # 1.5's own
    assert not set(song) & set(v1)
    assert visible_advanced(str(tiny_v15), "generate") == ["number_of_steps", *lora, *song]
    assert visible_advanced(str(tiny_v15), "prompt_to_audio") == ["thinking", "number_of_steps",
                                                                  *lora]
    assert "thinking" not in visible_advanced("ACE-Step/ACE-Step-v1-3.5B", "prompt_to_audio")
    assert visible_advanced(str(tiny_v15), "inpaint") == ["retake_seed", "number_of_steps", *lora,
                                                          "context_duration", "crossfade_duration"]
    guided = ["number_of_steps", "guidance_interval", "guidance_scale", *lora, *song]
    assert visible_advanced(str(tiny_v15_base), "generate") == guided
    assert visible_advanced("ACE-Step/acestep-v15-xl-base-diffusers", "generate") == guided
    assert visible_advanced("ACE-Step/acestep-v15-xl-turbo-diffusers", "outpaint") == [
        "number_of_steps", *lora, "context_duration"]


def test_stop_ends_the_running_job(served, client, steps_of):
    steps_of(served.manager, pace=0.05)
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
        client.predict(tags="lofi", duration=2, model="ACE-Step/acestep-v15-xl-base-diffusers",
                       api_name="/generate")


@pytest.mark.parametrize("model", ["nobody/acestep-nonexistent", "/etc", "/nonexistent", "/etc/passwd",
                                   ".", "~", 42])
def test_a_model_the_operator_did_not_list_is_refused_with_the_list(served, client, model):
    resident = served.manager._engine
    with pytest.raises(AppError) as refused:
        client.predict(tags="lofi", duration=2, model=model, api_name="/generate")
    # One message for every unlisted name, so it tells nothing about the server's files.
    assert str(refused.value).endswith(f"is not served here; choose one of: {served.model}, "
                                       f"ACE-Step/ACE-Step-v1-3.5B, "
                                       f"ACE-Step/acestep-v15-xl-turbo-diffusers, "
                                       f"ACE-Step/acestep-v15-xl-base-diffusers")
    assert served.manager._engine is resident  # nothing was loaded or unloaded


@pytest.fixture
def server_file(tmp_path, sine_wav):
    """A readable audio file on the server, outside the upload folder: if the app opened it, the
    call would succeed."""
    return str(sine_wav)


@pytest.mark.parametrize("task, values", [
    ("outpaint", {"audio": "{file}"}),
    ("outpaint", {"audio_url": "{file}"}),
    ("outpaint", {"audio": {"path": "{file}"}}),
    ("outpaint", {"audio": {"path": "{file}", "url": None, "orig_name": "a.wav"}}),
    ("inpaint", {"audio": "{folder}/../{name}", "start_time": 0, "end_time": 2}),
    ("generate", {"reference_audio": "{file}"}),
    ("outpaint", {"audio_url": "file://{file}"}),
    ("generate", {"lora": "/etc/passwd"}),
    ("generate", {"lora": "{folder}"}),
    ("generate", {"lora": "../../etc"}),
    ("generate", {"lora": "~/.cache"}),
])
def test_a_remote_caller_cannot_name_a_server_file(client, server_file, task, values):
    path = Path(server_file)
    filled = json.loads(json.dumps(values).replace("{file}", str(path))
                        .replace("{folder}", str(path.parent)).replace("{name}", path.name))
    with pytest.raises(AppError, match="names a (file|path) on the server|was not uploaded|"
                                       "unsupported URL scheme 'file'"):
        client.predict(tags="lofi", api_name=f"/{task}", **filled, **FAST)


def raw_call(url: str, fn_index: int, data: list) -> dict:
    """One event through gradio's queue over plain HTTP, as a hand-made client would send it
    (gradio_client would upload a local file first): the final message."""
    session = "raw-" + str(time.monotonic_ns())
    joined = httpx.post(f"{url}gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
        "trigger_id": None})
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session},
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") in ("process_completed", "unexpected_error"):
                    return message
    raise AssertionError("no result")


@pytest.mark.parametrize("event", ["outpaint", "outpaint_form"])
def test_a_file_object_naming_a_server_file_is_refused(served, server_file, event):
    """Gradio's file object with a path outside its upload folder, sent to the API endpoint and
    to the UI's own (private) event."""
    fn_index, fn = next((i, fn) for i, fn in served.demo.fns.items() if fn.api_name == event)
    names = [block.label for block in fn.inputs]
    values = {"tags": "lofi", "number_of_steps": 2, "extend_after_duration": 1,
              "audio": {"path": server_file, "meta": {"_type": "gradio.FileData"}}}
    data = [values.get(name) for name in names]
    if event.endswith("_form"):  # the form's components are labelled, not named
        form = {"Source audio": values["audio"], "Tags": "lofi", "Format": "wav",
                "Model": served.model, "Extend after (s)": 1, "Number of steps": 2}
        data = [form.get(name, block.value) for name, block in zip(names, fn.inputs)]
    message = raw_call(served.url, fn_index, data)
    assert message["success"] is False
    # Gradio's own upload check refuses it first; its message reaches the caller.
    assert "was not uploaded by a user" in message["output"]["error"]
    assert server_file not in json.dumps(message.get("output", {}).get("data", []))


def test_uploads_of_an_api_call_are_deleted_and_results_stored_once(served, client, sine_wav):
    uploads = Path(served.demo.GRADIO_CACHE)
    before = {p for p in uploads.rglob("*") if p.is_file()}
    path, _, params = client.predict(audio=handle_file(str(sine_wav)), tags="lofi",
                                     extend_after_duration=1, api_name="/outpaint", **FAST)
    new = {p for p in uploads.rglob("*") if p.is_file()} - before
    # Only the result (audio and its sidecar) remains on the server: the upload is gone, and
    # gradio serves the result from where it was written, without a copy.
    assert sorted(p.suffix for p in new) == [".json", ".wav"], new
    assert all(p.parent.parent.name == "results" for p in new)
    assert soundfile.read(path)[0].shape == soundfile.read(
        str(next(p for p in new if p.suffix == ".wav")))[0].shape


def test_the_hosted_default_end_time_is_fitted_to_a_short_source(client, sine_wav):
    _, _, params = client.predict(audio=handle_file(str(sine_wav)), tags="lofi", start_time=1,
                                  api_name="/inpaint", **FAST)
    assert params["range_s"] == [1.0, 4.0] and params["fitted"] == {"end_time": 4.0}
    with pytest.raises(AppError, match="end_time resolves to 30.0 s, past the end of the 4.0 s"):
        client.predict(audio=handle_file(str(sine_wav)), tags="lofi", start_time=1, end_time=30,
                       api_name="/inpaint", **FAST)


def test_huge_lyrics_are_refused_at_once_and_the_server_stays_up(client):
    started = time.monotonic()
    with pytest.raises(AppError, match="'lyrics' is 1,200,000 characters long; at most 4,000"):
        client.predict(tags="lofi", lyrics="la " * 400_000, duration=2, api_name="/generate")
    assert time.monotonic() - started < 10
    path, _, _ = client.predict(tags="lofi", duration=1, api_name="/generate", **FAST)
    assert soundfile.info(path).frames == 48000


ABANDONED_CLIENT = """
import sys, time
from gradio_client import Client
client = Client(sys.argv[1], verbose=False)
job = client.submit(tags="lofi", duration=2, number_of_steps=200, api_name="/generate")
while not job.status().progress_data:
    time.sleep(0.05)
print("running", flush=True)
time.sleep(600)
"""


def record_slot(slot, monkeypatch) -> dict[int, tuple[float, float]]:
    """number -> (time it began waiting for the model, time it got it), for every job from now."""
    times: dict[int, tuple[float, float]] = {}
    hold = slot.hold

    @contextmanager
    def recording(stop, on_wait=None, number=None):
        waiting = time.monotonic()
        with hold(stop, on_wait, number):
            times[number] = (waiting, time.monotonic())
            yield

    monkeypatch.setattr(slot, "hold", recording)
    return times


def test_fifty_jobs_at_once_each_get_a_result_or_queue_full_in_order(served, sine_wav,
                                                                     monkeypatch, steps_of):
    """50 jobs submitted together (mixed tasks) behind an abandoned slow one: each ends with a
    correct result or a clear "queue full", none is lost, and they get the model in the order
    sent (a job still reading its source lets the ready ones behind it go first)."""
    slot_times = record_slot(served.manager.slot, monkeypatch)
    steps = steps_of(served.manager, pace=0.05)
    abandoned = subprocess.Popen([sys.executable, "-c", ABANDONED_CLIENT, served.url],
                                 stdout=subprocess.PIPE, text=True)
    assert abandoned.stdout.readline().strip() == "running"
    abandoned.kill()  # the client is gone, as a closed tab is: its job stops at its next step
    source = handle_file(str(sine_wav))
    kinds = [
        ("/generate", dict(tags="lofi", duration=1), 48000),
        ("/inpaint", dict(audio=source, tags="jazz", start_time=1, end_time=2), 4 * 44100),
        ("/outpaint", dict(audio=source, tags="jazz", extend_after_duration=1), 5 * 44100),
    ]
    client = Client(served.url, verbose=False)
    started = time.monotonic()
    jobs = []
    for index in range(50):
        api_name, values, frames = kinds[index % 3]
        job = client.submit(api_name=api_name, seed=index, number_of_steps=1, **values)
        while job.status().code.name in ("STARTING",):  # sent: the next one is behind it
            time.sleep(0.005)
        jobs.append((job, frames))
    finished: dict[int, float] = {}
    while len(finished) < len(jobs) and time.monotonic() - started < 240:
        for index, (job, _) in enumerate(jobs):
            if index not in finished and job.done():
                finished[index] = time.monotonic()
        time.sleep(0.01)
    assert len(finished) == 50, "jobs were lost"
    done, full = [], []
    for index, (job, frames) in enumerate(jobs):
        try:
            path, seed, params = job.result()
        except AppError as error:
            assert "the queue is full" in str(error)
            full.append(index)
            continue
        assert seed == index and soundfile.info(path).frames == frames
        done.append(index)
    assert len(done) + len(full) == 50 and len(done) >= QUEUE_SIZE - 1
    numbers = sorted(slot_times)
    assert len(numbers) == len(done) + 1  # the slow job got the model too
    for earlier in numbers:
        for later in numbers:
            waited, _ = slot_times[earlier]
            if later > earlier and slot_times[later][1] < slot_times[earlier][1]:
                assert waited > slot_times[later][1], (earlier, later)  # it was not ready yet
    assert len([step for step, stopping in steps if stopping]) == 1  # the slow one stopped at once
    print(f"50 jobs: {len(done)} results, {len(full)} queue full, "
          f"{time.monotonic() - started:.1f} s")
    wait_until_free(served.manager)
