"""The REST queues against a real server on loopback: each service's documented flow with its own
field names, the README's curl flows, auth, limits, bad bodies, cancel, 50 jobs at once, a restart
in the middle of a queue, and UI and API jobs taking turns on the one model."""

import base64
import functools
import http.server
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import soundfile

from ace_step_ui import remote, rest as rest_module
from ace_step_ui.access import RemoteAccess
from ace_step_ui.engines import EngineManager
from ace_step_ui.hosted import parse_model_id
from ace_step_ui.rest import ApiError, RestQueue
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
KEY_A, KEY_B = "key-alpha", "key-beta"
FAST = {"duration": 1, "number_of_steps": 1}
DONE = ("completed", "failed", "cancelled")


def bearer(key=KEY_A):
    return {"Authorization": f"Bearer {key}"}


def fal_key(key=KEY_A):
    return {"Authorization": f"Key {key}"}


def data_uri(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def poll(fetch, done, timeout=120.0):
    """fetch() until done(answer); every answer seen, in order."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(fetch())
        if done(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not done after {timeout} s; last answer: {seen[-1]}")


def runcomfy_wait(base, request_id, key=KEY_A):
    return poll(lambda: httpx.get(f"{base}/v1/requests/{request_id}/status",
                                  headers=bearer(key)).json(),
                lambda answer: answer["status"] in DONE)


def audio_at(url):
    answer = httpx.get(url)
    assert answer.status_code == 200, answer.text
    return answer, soundfile.info(io.BytesIO(answer.content))


@pytest.fixture(scope="module")
def served_rest(tiny_v15, tiny_v1, tiny_planner, tmp_path_factory):
    """The app with its REST queues on the tiny 1.5 model (the default) and the tiny v1 model,
    keys A and B, and loopback URLs allowed as sources (the tests serve their own)."""
    from ace_step_ui.ui import build_app, launch_options

    previous = os.environ.get(remote.ALLOW_LOOPBACK_ENV)
    os.environ[remote.ALLOW_LOOPBACK_ENV] = "1"
    manager = EngineManager(device="cpu", planner=str(tiny_planner), own_thread=True)
    models = [str(tiny_v15), str(tiny_v1)]
    demo = build_app(manager, models[0], models)
    queue = RestQueue(manager, RemoteAccess(tuple(models)), tmp_path_factory.mktemp("rest-data"),
                      (KEY_A, KEY_B), queue_limit=60).start()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1",
                            server_port=free_port(), quiet=True,
                            **launch_options(demo, queue))
    try:
        yield SimpleNamespace(base=url.rstrip("/"), url=url, queue=queue, manager=manager,
                              models=models)
    finally:
        demo.close()
        queue.close()
        if previous is None:
            os.environ.pop(remote.ALLOW_LOOPBACK_ENV, None)
        else:
            os.environ[remote.ALLOW_LOOPBACK_ENV] = previous


@pytest.fixture(scope="module")
def file_server(tmp_path_factory):
    """A plain http server on loopback for source files: put a file in `.folder`, link `.url`."""
    folder = tmp_path_factory.mktemp("hosted-files")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(folder=folder, url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()


def test_runcomfy_flow_inpaints_a_data_uri_source(served_rest, sine_wav, tiny_v15):
    base = served_rest.base
    body = {"audio": data_uri(sine_wav), "tags": "jazz", "start_time": 1, "end_time": 2,
            "seed": 3, "number_of_steps": 2}
    answer = httpx.post(f"{base}/v1/models/acestep-ai/ace-step-1.5/audio-inpaint", json=body,
                        headers=bearer())
    assert answer.status_code == 200, answer.text
    submitted = answer.json()
    request_id = submitted["request_id"]
    assert submitted["status_url"] == f"{base}/v1/requests/{request_id}/status"
    assert submitted["result_url"] == f"{base}/v1/requests/{request_id}/result"
    assert submitted["cancel_url"] == f"{base}/v1/requests/{request_id}/cancel"
    statuses = [answer["status"] for answer in runcomfy_wait(base, request_id)]
    assert statuses[-1] == "completed" and set(statuses) <= {"in_queue", "in_progress", "completed"}
    result = httpx.get(submitted["result_url"], headers=bearer()).json()
    assert result["status"] == "completed" and result["request_id"] == request_id
    output = result["output"]
    assert output["seed"] == 3 and output["tags"] == "jazz"
    assert output["params"]["model"] == str(tiny_v15) and output["params"]["range_s"] == [1, 2]
    assert re.fullmatch(r"data:audio/wav;base64,… \(\d+ characters\)",
                        output["params"]["request"]["audio"])  # the caller's, not a server path
    audio, info = audio_at(output["audio"])
    assert info.frames == 4 * 44100 and info.samplerate == 44100  # the source's length and rate
    assert output["audio_file"]["file_size"] == len(audio.content)
    assert audio.headers["content-type"] == "audio/wav"


def test_fal_flow_generates_then_outpaints_its_own_result_by_url(served_rest, tiny_v1):
    base = served_rest.base
    answer = httpx.post(f"{base}/fal-ai/ace-step", headers=fal_key(),
                        json={"tags": "lofi", "duration": 2, "number_of_steps": 2, "seed": 11})
    assert answer.status_code == 200, answer.text
    queued = answer.json()
    request_id = queued["request_id"]
    assert queued["response_url"] == f"{base}/fal-ai/ace-step/requests/{request_id}"
    assert queued["status_url"] == queued["response_url"] + "/status"
    assert queued["cancel_url"] == queued["response_url"] + "/cancel"
    assert queued["queue_position"] >= 0
    answers = poll(lambda: httpx.get(queued["status_url"] + "?logs=1", headers=fal_key()),
                   lambda status: status.json()["status"] == "COMPLETED")
    for status in answers[:-1]:
        assert status.status_code == 202 and status.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    final = answers[-1]
    assert final.status_code == 200 and "error" not in final.json()
    assert final.json()["metrics"]["inference_time"] > 0
    output = httpx.get(queued["response_url"], headers=fal_key()).json()
    assert output["seed"] == 11 and output["tags"] == "lofi" and output["lyrics"] == ""
    assert output["params"]["model"] == str(tiny_v1)  # the bare fal app runs the v1 family
    audio, info = audio_at(output["audio"]["url"])
    assert output["audio"]["content_type"] == "audio/wav"
    assert output["audio"]["file_size"] == len(audio.content)
    assert output["audio"]["file_name"] == output["audio"]["url"].rsplit("/", 1)[1]
    assert info.frames == 2 * 48000

    # The result's URL as the next job's source: fetched over HTTP like any hosted file.
    answer = httpx.post(f"{base}/fal-ai/ace-step/audio-outpaint", headers=fal_key(),
                        json={"audio_url": output["audio"]["url"], "tags": "lofi, outro",
                              "extend_after_duration": 1, "number_of_steps": 2, "seed": 5})
    extended_id = answer.json()["request_id"]
    poll(lambda: httpx.get(f"{base}/fal-ai/ace-step/requests/{extended_id}/status",
                           headers=fal_key()).json(),
         lambda status: status["status"] == "COMPLETED")
    extended = httpx.get(f"{base}/fal-ai/ace-step/requests/{extended_id}", headers=fal_key()).json()
    _, info = audio_at(extended["audio"]["url"])
    assert info.frames == 3 * 48000
    assert extended["params"]["request"]["audio"] == output["audio"]["url"]


def test_wavespeed_flow_with_its_envelope_and_flac(served_rest):
    base = served_rest.base
    answer = httpx.post(f"{base}/api/v3/wavespeed-ai/ace-step-1.5/text-to-audio",
                        headers=bearer(), json={"tags": "ambient", "seed": 9, "format": "flac",
                                                **FAST})
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["code"] == 200 and created["message"] == "success"
    data = created["data"]
    assert data["status"] == "created" and data["outputs"] == [] and data["error"] == ""
    assert data["model"] == "wavespeed-ai/ace-step-1.5/text-to-audio"
    assert data["urls"]["get"] == f"{base}/api/v3/predictions/{data['id']}/result"
    seen = poll(lambda: httpx.get(data["urls"]["get"], headers=bearer()).json(),
                lambda answer: answer["data"]["status"] in ("completed", "failed"))
    assert {answer["data"]["status"] for answer in seen} <= {"created", "processing", "completed"}
    done = seen[-1]["data"]
    assert done["seed"] == 9 and done["has_nsfw_contents"] == [False]
    assert done["timings"]["inference"] > 0
    audio, info = audio_at(done["outputs"][0])
    assert done["outputs"][0].endswith(".flac") and info.format == "FLAC"
    assert audio.headers["content-type"] == "audio/flac"
    assert httpx.get(f"{base}/api/v3/predictions/{data['id']}", headers=bearer()).json() == seen[-1]


def readme_examples() -> dict[str, list[str]]:
    """The README's REST curl flows: service -> its curl commands (continuations joined)."""
    text = (REPO / "README.md").read_text()
    examples = {}
    for service, block in re.findall(r"<!-- rest-example: (\w+) -->\n```bash\n(.*?)```", text,
                                     re.DOTALL):
        lines = [line for line in block.splitlines() if not line.startswith("#")]
        examples[service] = [command.strip() for command in
                             re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines()]
    return examples


def test_the_readme_curl_flows_run_as_written(served_rest, file_server, sine_wav):
    examples = readme_examples()
    assert set(examples) == {"runcomfy", "fal", "wavespeed"}
    (file_server.folder / "song.wav").write_bytes(sine_wav.read_bytes())
    env = {**os.environ, "BASE": served_rest.base, "KEY": KEY_A,
           "AUDIO_URL": f"{file_server.url}/song.wav"}

    def run(command, request_id=""):
        done = subprocess.run(["bash", "-c", command], env={**env, "REQUEST_ID": request_id},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    for service, commands in examples.items():
        assert all(command.startswith("curl ") for command in commands), commands
        submitted = run(commands[0])
        request_id = submitted.get("request_id") or submitted["data"]["id"]
        if service == "runcomfy":
            poll(lambda: run(commands[1], request_id), lambda answer: answer["status"] in DONE)
            result = run(commands[2], request_id)
            assert result["status"] == "completed", result
            audio_at(result["output"]["audio"])
            assert "already ended (completed)" in run(commands[3], request_id)["detail"]
        elif service == "fal":
            poll(lambda: run(commands[1], request_id),
                 lambda answer: answer["status"] == "COMPLETED")
            output = run(commands[2], request_id)
            _, info = audio_at(output["audio"]["url"])
            assert abs(info.frames / info.samplerate - 9.0) < 0.05  # 4 s and 5 s after it
            assert run(commands[3], request_id) == {"status": "ALREADY_COMPLETED"}
        else:
            seen = poll(lambda: run(commands[1], request_id),
                        lambda answer: answer["data"]["status"] in ("completed", "failed"))
            assert seen[-1]["data"]["status"] == "completed", seen[-1]
            _, info = audio_at(seen[-1]["data"]["outputs"][0])
            assert info.frames == 4 * 44100


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/models/acestep-ai/ace-step-1.5/text-to-audio"),
    ("GET", "/v1/requests/x/status"),
    ("POST", "/fal-ai/ace-step-1.5"),
    ("GET", "/fal-ai/ace-step/requests/x"),
    ("POST", "/api/v3/wavespeed-ai/ace-step-1.5/text-to-audio"),
    ("GET", "/api/v3/predictions/x/result"),
])
@pytest.mark.parametrize("headers, message", [
    ({}, "this server needs an API key: send 'Authorization: Bearer <key>'"),
    ({"Authorization": "Bearer nope"}, "the API key is not valid on this server"),
    ({"Authorization": f"Basic {KEY_A}"}, "this server needs an API key"),
])
def test_every_route_needs_a_key(served_rest, method, path, headers, message):
    answer = httpx.request(method, served_rest.base + path, headers=headers,
                           json={"tags": "x", **FAST})
    assert answer.status_code == 401
    body = answer.json()
    assert message in (body.get("detail") or body.get("message"))


def test_a_key_sees_only_its_own_jobs_and_results_are_public_by_id(served_rest):
    base = served_rest.base
    job = httpx.post(f"{base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio", headers=bearer(),
                     json={"tags": "x", **FAST}).json()
    runcomfy_wait(base, job["request_id"])
    for url in (job["status_url"], job["result_url"]):
        other = httpx.get(url, headers=bearer(KEY_B))
        assert other.status_code == 404 and "no request" in other.json()["detail"]
    assert httpx.post(job["cancel_url"], headers=bearer(KEY_B)).status_code == 404
    assert httpx.put(f"{base}/fal-ai/ace-step/requests/{job['request_id']}/cancel",
                     headers=fal_key(KEY_B)).json()["status"] == "NOT_FOUND"
    audio = httpx.get(job["result_url"], headers=bearer()).json()["output"]["audio"]
    assert httpx.get(audio).status_code == 200  # no key: a link to share, like a CDN's
    assert httpx.get(audio.rsplit("/", 1)[0] + "/other.wav").status_code == 404


@pytest.mark.parametrize("path, body, status, message", [
    ("acestep-ai/ace-step-1.5/text-to-audio", b"{not json", 422, "the body is not valid JSON"),
    ("acestep-ai/ace-step-1.5/text-to-audio", b"[1, 2]", 422, "the body must be a JSON object"),
    ("acestep-ai/ace-step-1.5/text-to-audio", b"", 422, "the body must be a JSON object"),
    ("acestep-ai/ace-step-1.5/text-to-audio", {"tags": "x", "duration": 999}, 422,
     "'duration' must be between 1 and 240, not 999"),
    ("acestep-ai/ace-step-1.5/text-to-audio", {"tags": "x", "colour": "red"}, 422, "'colour'"),
    ("acestep-ai/ace-step-1.5/text-to-audio", {"tags": " "}, 422, "'tags' is required"),
    ("acestep-ai/ace-step-1.5/text-to-audio", {"tags": "x", "format": "ogg"}, 422,
     "format must be one of wav, flac, mp3"),
    ("acestep-ai/ace-step-1.5/audio-inpaint", {"tags": "x", "audio": "/etc/passwd"}, 422,
     "names a file on the server"),
    ("acestep-ai/ace-step-1.5/audio-inpaint", {"tags": "x", "audio": "data:audio/wav;base64,!!"},
     422, "the data: URI is not valid base64"),
    ("acestep-ai/ace-step-1.5/audio-to-audio", {"tags": "x", "original_tags": "y",
                                                "audio": "https://example.com/a.wav"}, 422, "edit"),
    ("acestep-ai/ace-step/remix", {"tags": "x"}, 404, "is not a hosted ACE-Step model id"),
])
def test_bad_bodies_get_the_message_every_surface_gives(served_rest, path, body, status, message):
    url = f"{served_rest.base}/v1/models/{path}"
    if isinstance(body, bytes):
        answer = httpx.post(url, content=body, headers=bearer())
    else:
        answer = httpx.post(url, json=body, headers=bearer())
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    # the same refusal in the other services' shapes
    fal = httpx.post(f"{served_rest.base}/fal-ai/{path.split('/', 1)[1]}", headers=fal_key(),
                     **({"content": body} if isinstance(body, bytes) else {"json": body}))
    assert fal.status_code == status and message in fal.json()["detail"]
    wave = httpx.post(f"{served_rest.base}/api/v3/wavespeed-ai/{path.split('/', 1)[1]}",
                      headers=bearer(), **({"content": body} if isinstance(body, bytes)
                                           else {"json": body}))
    assert wave.status_code == status and wave.json()["code"] == status
    assert message in wave.json()["message"] and wave.json()["data"] is None


def test_a_body_over_the_cap_is_refused_before_it_is_read(served_rest, monkeypatch):
    monkeypatch.setattr(rest_module, "MAX_BODY_BYTES", 1000)
    answer = httpx.post(f"{served_rest.base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio",
                        headers=bearer(), json={"tags": "x" * 2000})
    assert answer.status_code == 413 and "give the audio as an https:// URL" in answer.json()["detail"]


def test_a_family_the_operator_did_not_load_is_a_404_naming_what_is_served(tiny_v15, tmp_path):
    queue = RestQueue(EngineManager(device="cpu"), RemoteAccess((str(tiny_v15),)), tmp_path)
    try:
        assert queue.model_for(parse_model_id("acestep-ai/ace-step-1.5/audio-inpaint")) == str(tiny_v15)
        with pytest.raises(ApiError) as refused:
            queue.model_for(parse_model_id("fal-ai/ace-step"))
        assert refused.value.status == 404
        assert str(refused.value) == (f"fal-ai/ace-step/text-to-audio runs ACE-Step v1, which this "
                                      f"server does not serve; it serves ACE-Step 1.5 ({tiny_v15}) "
                                      f"(the operator adds models with --models)")
    finally:
        queue.store.close()


def test_the_queue_limit_is_per_key_with_a_429(served_rest, monkeypatch, steps_of):
    steps_of(served_rest.manager, pace=0.05)
    monkeypatch.setattr(served_rest.queue, "queue_limit", 2)
    url = f"{served_rest.base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio"
    long = {"tags": "x", "duration": 2, "number_of_steps": 200}
    jobs = [httpx.post(url, headers=bearer(KEY_B), json=long).json() for _ in range(2)]
    refused = httpx.post(url, headers=bearer(KEY_B), json=long)
    assert refused.status_code == 429
    assert refused.json()["detail"] == ("this API key already has 2 jobs waiting or running, the "
                                        "most this server takes from one key; send more when some "
                                        "have finished")
    other = httpx.post(url, headers=bearer(KEY_A), json={"tags": "x", **FAST})
    assert other.status_code == 200  # another key's line is its own
    for job in jobs:
        httpx.post(job["cancel_url"], headers=bearer(KEY_B))
    for job in [*jobs, other.json()]:
        key = KEY_B if job in jobs else KEY_A
        runcomfy_wait(served_rest.base, job["request_id"], key)


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_step(served_rest,
                                                                            steps_of):
    base = served_rest.base
    steps = steps_of(served_rest.manager, pace=0.05)
    url = f"{base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio"
    running = httpx.post(url, headers=bearer(), json={"tags": "x", "duration": 2,
                                                      "number_of_steps": 200}).json()
    poll(lambda: httpx.get(running["status_url"], headers=bearer()).json(),
         lambda answer: answer["status"] == "in_progress" and "progress" in answer)
    queued = httpx.post(url, headers=bearer(), json={"tags": "x", **FAST}).json()
    status = httpx.get(queued["status_url"], headers=bearer()).json()
    assert status["status"] == "in_queue" and status["queue_position"] == 0
    cancelled = httpx.post(queued["cancel_url"], headers=bearer())
    assert cancelled.json() == {"request_id": queued["request_id"], "status": "cancelled"}
    assert httpx.get(queued["status_url"], headers=bearer()).json()["status"] == "cancelled"

    fal_cancel = httpx.put(f"{base}/fal-ai/ace-step-1.5/requests/{running['request_id']}/cancel",
                           headers=fal_key())
    assert fal_cancel.status_code == 202 and fal_cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    final = runcomfy_wait(base, running["request_id"])[-1]
    assert final["status"] == "cancelled" and "stopped by the user after step" in final["error"]
    assert [stopping for _, stopping in steps].count(True) <= 1 and len(steps) < 200
    fal_status = httpx.get(f"{base}/fal-ai/ace-step-1.5/requests/{running['request_id']}/status",
                           headers=fal_key())
    assert fal_status.status_code == 200 and fal_status.json()["status"] == "COMPLETED"
    assert fal_status.json()["error_type"] == "cancelled"
    response = httpx.get(f"{base}/fal-ai/ace-step-1.5/requests/{running['request_id']}",
                         headers=fal_key())
    assert response.status_code == 400 and "stopped by the user" in response.json()["detail"]
    again = httpx.post(running["cancel_url"], headers=bearer())
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]
    assert not served_rest.manager.slot.busy


def test_fifty_submissions_at_once_all_complete_in_order_per_key(served_rest):
    base = served_rest.base
    url = f"{base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio"
    started = time.monotonic()

    def submit(index):
        key = (KEY_A, KEY_B)[index % 2]
        answer = httpx.post(url, headers=bearer(key), json={"tags": "x", "seed": index, **FAST},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        return index, key, answer.json()["request_id"]

    with ThreadPoolExecutor(50) as pool:
        jobs = list(pool.map(submit, range(50)))
    submitted_in = time.monotonic() - started
    for index, key, request_id in jobs:
        final = poll(lambda: httpx.get(f"{base}/v1/requests/{request_id}/result",
                                       headers=bearer(key)).json(),
                     lambda answer: answer["status"] in DONE, timeout=300)[-1]
        assert final["status"] == "completed", final
        assert final["output"]["seed"] == index
    elapsed = time.monotonic() - started
    store = served_rest.queue.store
    for key in (KEY_A, KEY_B):
        mine = sorted((store.get(request_id) for _, owner, request_id in jobs if owner == key),
                      key=lambda job: job.seq)
        assert [job.started_at for job in mine] == sorted(job.started_at for job in mine)
    print(f"50 REST jobs: submitted in {submitted_in:.2f} s, all completed in {elapsed:.1f} s")


def test_ui_and_api_jobs_take_turns_on_the_model(served_rest, steps_of, monkeypatch):
    """The page's job waits for the REST job on the model as it came, and at most the one the REST
    worker had lined up, never the whole REST queue. Read from the slot's own order (who took a
    place in line, who got the model), so a slow machine cannot change the answer."""
    from gradio_client import Client

    slot = served_rest.manager.slot
    events: list[tuple[str, str]] = []  # ("number" | "holds", "rest" | "page")
    take_number, hold = slot.number, slot.hold

    def who() -> str:
        return "rest" if threading.current_thread().name == "rest-worker" else "page"

    def numbering():
        events.append(("number", who()))
        return take_number()

    @contextmanager
    def holding(*args, **kwargs):
        with hold(*args, **kwargs):
            events.append(("holds", who()))
            yield

    monkeypatch.setattr(slot, "number", numbering)
    monkeypatch.setattr(slot, "hold", holding)
    steps_of(served_rest.manager, pace=0.1)
    url = f"{served_rest.base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio"
    jobs = [httpx.post(url, headers=bearer(), json={"tags": "x", "duration": 1,
                                                    "number_of_steps": 5}).json()
            for _ in range(10)]
    poll(lambda: httpx.get(jobs[0]["status_url"], headers=bearer()).json(),
         lambda answer: answer["status"] != "in_queue")
    client = Client(served_rest.url, verbose=False)
    client.predict(tags="lofi", duration=1, number_of_steps=1, api_name="/generate")
    still_queued = [httpx.get(job["status_url"], headers=bearer()).json()["status"]
                    for job in jobs].count("in_queue")
    assert still_queued >= 3, events  # the REST queue was still long when the page's job ran
    came = events.index(("number", "page"))
    ran = events.index(("holds", "page"))
    rest_started_between = events[came:ran].count(("holds", "rest"))
    assert rest_started_between <= 1, events  # only the one the REST worker had lined up
    for job in jobs:
        runcomfy_wait(served_rest.base, job["request_id"])


def launch_app(model, data_dir, port):
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model", str(model), "--models", str(model), "--device", "cpu",
         "--data-dir", str(data_dir), "--api-key", KEY_A, "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(base + "/v1/requests/none/status", headers=bearer()).status_code == 404:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("app.py did not start within 120 s")


def test_a_restart_in_the_middle_of_the_queue_loses_nothing(tiny_v15, tmp_path):
    data_dir = tmp_path / "data"
    process, base = launch_app(tiny_v15, data_dir, free_port())
    try:
        url = f"{base}/v1/models/acestep-ai/ace-step-1.5/text-to-audio"
        first = httpx.post(url, headers=bearer(), json={"tags": "x", "seed": 1, **FAST}).json()
        assert runcomfy_wait(base, first["request_id"])[-1]["status"] == "completed"
        queue = [httpx.post(url, headers=bearer(), json={"tags": "y", "seed": 10 + index,
                                                         "duration": 2, "number_of_steps": 100}
                            ).json()["request_id"] for index in range(4)]
        poll(lambda: httpx.get(f"{base}/v1/requests/{queue[0]}/status", headers=bearer()).json(),
             lambda answer: answer["status"] == "in_progress")
    finally:
        process.send_signal(signal.SIGKILL)  # no shutdown at all: a crash or a pulled plug
        process.wait()
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    assert states[first["request_id"]] == "completed"
    assert "queued" in {states[request_id] for request_id in queue}  # cut off mid-queue

    process, base = launch_app(tiny_v15, data_dir, free_port())
    try:
        kept = httpx.get(f"{base}/v1/requests/{first['request_id']}/result", headers=bearer())
        assert kept.json()["output"]["seed"] == 1
        assert kept.json()["output"]["audio"].startswith(base)  # linked at the new address
        audio_at(kept.json()["output"]["audio"])
        for index, request_id in enumerate(queue):
            final = runcomfy_wait(base, request_id)[-1]
            assert final["status"] == "completed", final
            result = httpx.get(f"{base}/v1/requests/{request_id}/result", headers=bearer()).json()
            assert result["output"]["seed"] == 10 + index
            _, info = audio_at(result["output"]["audio"])
            assert info.frames == 2 * 48000
    finally:
        process.terminate()
        process.wait(timeout=30)
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        attempts = dict(db.execute("SELECT id, attempts FROM jobs").fetchall())
    assert attempts[queue[0]] in (1, 2)  # 2 when it was still running at the kill
    assert not any((data_dir / "sources").glob("*/*"))  # sources go when their job ends


@pytest.mark.parametrize("args, message", [
    (["--api-queue-limit", "0"], "app.py: --api-queue-limit must be 1 or more"),
    (["--result-retention", "0"], "app.py: --result-retention must be more than 0 hours"),
    (["--api-key", "two words"], "app.py: an API key must be one word without spaces"),
    (["--api-key-file", "/no/such/keys"], "app.py: --api-key-file: cannot read /no/such/keys"),
])
def test_bad_rest_options_stop_the_app_with_one_line(args, message):
    done = subprocess.run([sys.executable, "app.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 64
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1


def test_api_keys_come_from_the_options_and_a_file(tmp_path):
    sys.path.insert(0, str(REPO))
    try:
        import app
    finally:
        sys.path.remove(str(REPO))
    keys = tmp_path / "keys.txt"
    keys.write_text("# the team's keys\nkey-one\n\n  key-two  \nkey-one\n")
    args = app.build_parser().parse_args(["--api-key", "key-zero", "--api-key-file", str(keys)])
    assert app.api_keys(args) == ("key-zero", "key-one", "key-two")


def test_finished_jobs_and_their_files_go_after_the_retention_time(tiny_v15, tmp_path):
    queue = RestQueue(EngineManager(device="cpu"), RemoteAccess((str(tiny_v15),)), tmp_path,
                      retention_hours=1)
    try:
        old = queue.store.add("", "fal", "fal-ai/ace-step-1.5", "generate", str(tiny_v15),
                              {"tags": "x"}, {"tags": "x"}, "wav", True)
        new = queue.store.add("", "fal", "fal-ai/ace-step-1.5", "generate", str(tiny_v15),
                              {"tags": "x"}, {"tags": "x"}, "wav", True)
        for job in (old, new):
            (queue.results_dir / job.id).mkdir(parents=True)
            (queue.results_dir / job.id / "song.wav").write_bytes(b"RIFF")
            queue.store.finish(job.id, "completed", result={"file": "song.wav", "seed": 1,
                                                             "params": {}})
        with sqlite3.connect(queue.store.path) as db:
            db.execute("UPDATE jobs SET finished_at = finished_at - 3601 WHERE id = ?", (old.id,))
        queue._sweep()
        assert queue.store.get(old.id) is None and not (queue.results_dir / old.id).exists()
        assert queue.store.get(new.id) is not None and (queue.results_dir / new.id).exists()
    finally:
        queue.store.close()
