import ast
import json
import shlex

from ace_step_ui import snippets

PARAMS = {"task": "inpaint", "model": "/home/me/checkpoints/tiny-v15", "tags": "jazz", "lyrics": "",
          "seed": 1234, "engine": {"num_inference_steps": 8, "guidance_scale": 1.0},
          "ignored_params": ["variance"],
          "request": {"audio": "/tmp/gradio/abc/song's take.wav", "tags": "jazz, it's late",
                      "start_time": 1, "end_time": 3, "variance": 0.2},
          "sample_rate": 44100, "channels": 2, "duration_s": 4.0,
          "timings_s": {"load": 1.0, "run": 2.25}}


def test_the_summary_reads_as_a_line():
    text = snippets.summary(PARAMS, "ACE-Step 1.5")
    assert text == ("**inpaint** on ACE-Step 1.5 `tiny-v15` · seed **1234** · 8 steps · guidance 1 · "
                    "4 s, 44.1 kHz stereo · took 3.2 s  \nIgnored by this model: `variance`")
    assert snippets.summary({}) == ""


def test_the_python_call_replays_the_request_with_the_seed_used():
    code = snippets.python_call(PARAMS, "http://127.0.0.1:7860/")
    call = ast.parse(code).body[-1].value
    arguments = {keyword.arg: keyword.value for keyword in call.keywords}
    assert ast.literal_eval(arguments["seed"]) == 1234
    assert ast.literal_eval(arguments["tags"]) == "jazz, it's late"
    assert ast.unparse(arguments["audio"]) == "handle_file('song.wav')"  # not the server's copy
    assert ast.literal_eval(arguments["api_name"]) == "/inpaint"
    assert ast.literal_eval(arguments["model"]) == PARAMS["model"]
    assert "Client('http://127.0.0.1:7860/')" in code


def test_the_curl_and_cli_calls_carry_the_same_json():
    curl = shlex.split(snippets.curl_call(PARAMS, "http://host:7860/", "ACE-Step 1.5")
                       .replace("\\\n", " "))
    assert curl[curl.index("-X") + 2] == "http://host:7860/v1/models/acestep-ai/ace-step-1.5/audio-inpaint"
    sent = json.loads(curl[curl.index("-d") + 1])
    assert sent == {**PARAMS["request"], "audio": snippets.PLACEHOLDER_URL, "seed": 1234}
    cli = shlex.split(snippets.cli_call(PARAMS).replace("\\\n", " "))
    assert cli[:5] == ["python", "-m", "ace_step_ui", "run", "inpaint"]
    assert json.loads(cli[cli.index("--input") + 1]) == {**sent, "audio": "song.wav"}
    assert cli[cli.index("--model") + 1] == PARAMS["model"]


def test_a_task_without_a_hosted_endpoint_says_so_in_curl():
    assert snippets.curl_call({**PARAMS, "task": "cover"}, "http://h/", "ACE-Step 1.5") == (
        "# cover has no hosted endpoint; use the Python or CLI call")


def test_extra_ranges_replay_as_the_objects_sent():
    ranges = [{"start_time": 40.0, "end_time": 48.0, "tags": "jazz, it's \"late\"", "lyrics": ""},
              {"start_time": 300.0, "end_time": 310.5, "tags": "", "lyrics": "[verse]\nla la"}]
    params = {**PARAMS, "request": {**PARAMS["request"], "extra_ranges": ranges}}
    call = ast.parse(snippets.python_call(params, "http://h/")).body[-1].value
    arguments = {keyword.arg: keyword.value for keyword in call.keywords}
    assert ast.literal_eval(arguments["extra_ranges"]) == ranges
    curl = shlex.split(snippets.curl_call(params, "http://h/", "ACE-Step 1.5").replace("\\\n", " "))
    assert json.loads(curl[curl.index("-d") + 1])["extra_ranges"] == ranges
    cli = shlex.split(snippets.cli_call(params).replace("\\\n", " "))
    assert json.loads(cli[cli.index("--input") + 1])["extra_ranges"] == ranges
