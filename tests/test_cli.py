"""The CLI end to end, as a user runs it: a subprocess, files on disk, exit codes; in-process
where the point is what lands on disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from ace_step_ui import audio as audio_ops
from ace_step_ui import cli as cli_module
from ace_step_ui.audio import read_audio, read_metadata
from conftest import shared_managers

REPO = Path(__file__).resolve().parents[1]


def cli(*args, check_code=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "ace_step_ui", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    if check_code is not None:
        assert done.returncode == check_code, done.stderr
    return done


def test_generate_inpaint_outpaint_write_audio_and_a_sidecar(tiny_v15, tmp_path):
    out = tmp_path / "out"
    request = {"tags": "lofi, rhodes", "lyrics": "[inst]", "duration": 2, "seed": 11,
               "number_of_steps": 2}
    done = cli("run", "generate", "--input", json.dumps(request), "--output-dir", out, "--model",
               tiny_v15, "--format", "wav", "--device", "cpu", check_code=0)
    song = Path(done.stdout.strip())
    assert song.parent == out and song.suffix == ".wav"
    assert sf.info(song).subtype == "FLOAT" and sf.info(song).frames == 96000
    sidecar = json.loads(song.with_suffix(".json").read_text())
    assert sidecar["seed"] == 11 and sidecar["tags"] == "lofi, rhodes"
    assert read_metadata(song)["seed"] == 11

    inpaint = tmp_path / "inpaint.json"
    inpaint.write_text(json.dumps({"audio": str(song), "tags": "jazz", "start_time": 0.5,
                                   "end_time": 1.5, "seed": 4, "number_of_steps": 2}))
    done = cli("run", "inpaint", "--input", f"@{inpaint}", "--output-dir", out, "--model",
               tiny_v15, "--format", "flac", check_code=0)
    edited = Path(done.stdout.strip())
    assert edited.suffix == ".flac" and sf.info(edited).frames == 96000
    assert sf.info(edited).subtype == "PCM_24"

    done = cli("run", "outpaint", "--input",
               json.dumps({"audio_url": str(song), "tags": "jazz", "extend_after_duration": 1,
                           "seed": 4, "number_of_steps": 2}),
               "--output-dir", out, "--model", tiny_v15, "--format", "mp3", check_code=0)
    longer = read_audio(done.stdout.strip())
    assert abs(longer.duration_s - 3.0) < 0.1


def test_hosted_model_ids_run_their_task_and_json_prints_the_hosted_output(tiny_v15, tmp_path):
    out = tmp_path / "out"
    done = cli("run", "acestep-ai/ace-step-1.5/text-to-audio", "--input",
               json.dumps({"tags": "lofi", "duration": 2, "number_of_steps": 1, "seed": 8}),
               "--output-dir", out, "--model", tiny_v15, "--json", check_code=0)
    output = json.loads(done.stdout)
    song = out / output["audio"]["file_name"]
    assert output["audio"]["url"] == song.resolve().as_uri()
    assert output["audio"]["file_size"] == song.stat().st_size
    assert output["audio"]["content_type"] == "audio/wav"
    assert (output["seed"], output["tags"], output["lyrics"]) == (8, "lofi", "")
    assert output["params"]["task"] == "generate" and output["params"]["model"] == str(tiny_v15)
    assert sf.info(song).frames == 96000

    inpaint = cli("run", "wavespeed-ai/ace-step-1.5/audio-inpaint", "--input",
                  json.dumps({"audio": str(song), "tags": "jazz", "start_time": 0.5,
                              "end_time": 1.5, "number_of_steps": 1}),
                  "--output-dir", out, "--model", tiny_v15, check_code=0)
    assert json.loads(Path(inpaint.stdout.strip()).with_suffix(".json").read_text())["task"] == "inpaint"

    wrong = cli("run", "fal-ai/ace-step/audio-inpaint", "--input", "{}", "--output-dir", out,
                "--model", tiny_v15)
    assert wrong.returncode == 64
    assert wrong.stderr.strip() == (f"python -m ace_step_ui run: fal-ai/ace-step/audio-inpaint runs "
                                    f"ACE-Step v1, but --model {tiny_v15} is ACE-Step 1.5")


@pytest.mark.parametrize("args, code, message", [
    (["run", "generate", "--output-dir", "x"], 64, "the following arguments are required: --input"),
    (["run", "remix", "--input", "{}", "--output-dir", "x"], 64, "invalid choice: 'remix'"),
    (["run", "fal-ai/ace-step/remix", "--input", "{}", "--output-dir", "x"], 64,
     "'fal-ai/ace-step/remix' is not a hosted ACE-Step model id; use one of"),
    (["run", "generate", "--input", "@/no/such.json", "--output-dir", "x"], 64, "cannot read"),
    (["run", "generate", "--input", "{not json", "--output-dir", "x"], 65, "--input is not valid JSON"),
    (["run", "generate", "--input", '{"tags": "x", "duration": 999}', "--output-dir", "x"], 65,
     "'duration' must be between 1 and 240, not 999"),
    (["run", "inpaint", "--input", '{"tags": "x", "audio": "/no/such.wav"}', "--output-dir", "x"],
     65, "/no/such.wav"),
])
def test_bad_arguments_and_bad_input_exit_with_one_line(args, code, message, tmp_path):
    done = cli(*args)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_model_that_cannot_be_downloaded_exits_69_with_the_fix(tmp_path):
    done = cli("run", "generate", "--input", '{"tags": "x", "duration": 1}', "--output-dir", tmp_path,
               "--model", "ACE-Step/acestep-v15-xl-base-diffusers")
    assert done.returncode == 69
    assert "hf download ACE-Step/acestep-v15-xl-base-diffusers" in done.stderr
    assert "Traceback" not in done.stderr


def test_edit_on_a_1_5_model_exits_65_with_the_v1_message(tiny_v15, tmp_path, sine_wav):
    request = {"audio": str(sine_wav), "tags": "jazz", "original_tags": "lofi", "edit_mode": "lyrics"}
    done = cli("run", "edit", "--input", json.dumps(request), "--output-dir", tmp_path / "out",
               "--model", tiny_v15)
    assert done.returncode == 65
    assert done.stderr.strip() == ("error: edit (audio-to-audio) needs ACE-Step v1 "
                                   "(ACE-Step/ACE-Step-v1-3.5B); choose it as the model")
    assert not (tmp_path / "out").exists()


def test_save_latents_from_a_model_without_latents_exits_65_with_one_line(tiny_v15, tmp_path):
    request = {"tags": "lofi", "duration": 1, "number_of_steps": 1}
    done = cli("run", "generate", "--input", json.dumps(request), "--output-dir", tmp_path / "out",
               "--model", tiny_v15, "--save-latents")
    assert done.returncode == 65
    assert done.stderr.strip() == (f"error: the model {tiny_v15} returns no diffusion latents, so "
                                   f"none can be saved; ACE-Step v1 (ACE-Step/ACE-Step-v1-3.5B) does")
    assert not (tmp_path / "out").exists()  # refused before the model ran


@pytest.mark.parametrize("args, message", [
    (["tiny", "v2", "x"], "argument family: invalid choice: 'v2' (choose from v1, v15, planner)"),
    (["tiny", "v1", "x", "--variant", "base"], "--variant applies to v15 only"),
])
def test_tiny_families(args, message):
    done = cli(*args)
    shown = done.stderr.replace("'v1', 'v15', 'planner'", "v1, v15, planner")
    assert done.returncode == 64 and message in shown


def test_tiny_writes_a_loadable_checkpoint(tmp_path):
    done = cli("tiny", "v15", tmp_path / "tiny", "--variant", "base", check_code=0)
    folder = Path(done.stdout.strip())
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "AceStepPipeline"
    assert json.loads((folder / "transformer" / "config.json").read_text())["is_turbo"] is False


@pytest.fixture(scope="module")
def engines():
    return {}


@pytest.fixture
def one_load_per_model(engines, monkeypatch):
    """In-process runs share an EngineManager, so each model loads once per module."""
    monkeypatch.setattr(cli_module, "EngineManager", shared_managers(engines))


def run_in_process(capsys, *args) -> tuple[int, list[str], list[str]]:
    code = cli_module.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.strip().splitlines()


def generate_args(model, out, **request):
    request = {"tags": "lofi", "duration": 1, "seed": 5, "number_of_steps": 1, **request}
    return ["run", "generate", "--input", json.dumps(request), "--output-dir", out, "--model",
            model, "--device", "cpu"]


def test_a_rerun_keeps_the_first_result_and_overwrite_replaces_it(tiny_v15, tmp_path, capsys,
                                                                  one_load_per_model):
    out = tmp_path / "out"
    code, (first,), _ = run_in_process(capsys, *generate_args(tiny_v15, out))
    first = Path(first)
    kept, inode = first.read_bytes(), first.stat().st_ino
    code, (second,), _ = run_in_process(capsys, *generate_args(tiny_v15, out))
    assert code == 0 and Path(second) == out / "generate-lofi-5-2.wav"
    assert (first.read_bytes(), first.stat().st_ino) == (kept, inode)  # not even rewritten
    assert json.loads((out / "generate-lofi-5-2.json").read_text())["audio_path"] == second
    # The sidecar's name is shared by every format, so a FLAC of the same request moves on too.
    code, (third,), _ = run_in_process(capsys, *generate_args(tiny_v15, out), "--format", "flac")
    assert Path(third) == out / "generate-lofi-5-3.flac"

    code, (replaced,), _ = run_in_process(capsys, *generate_args(tiny_v15, out, number_of_steps=2),
                                          "--overwrite")
    assert code == 0 and Path(replaced) == first and first.read_bytes() != kept
    assert json.loads(first.with_suffix(".json").read_text())["request"]["number_of_steps"] == 2
    assert len(list(out.iterdir())) == 6


def test_latents_take_the_same_new_name_as_their_audio(tiny_v1, tmp_path, capsys,
                                                      one_load_per_model):
    args = [*generate_args(tiny_v1, tmp_path), "--save-latents"]
    stem = tmp_path / "generate-lofi-5"
    assert run_in_process(capsys, *args)[:2] == (0, [f"{stem}.wav", f"{stem}.latents.safetensors"])
    code, printed, _ = run_in_process(capsys, *args)
    assert printed == [f"{stem}-2.wav", f"{stem}-2.latents.safetensors"]
    assert json.loads(Path(f"{stem}-2.json").read_text())["latents_path"] == printed[1]
    # Replacing it without latents removes its old latents, which would pass as the new ones'.
    assert run_in_process(capsys, *generate_args(tiny_v1, tmp_path), "--overwrite")[0] == 0
    assert not Path(f"{stem}.latents.safetensors").exists()


def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("fmt, target, failure, code, message", [
    ("wav", (audio_ops, "_append_riff_info"), disk_full, 73,  # the samples are already on disk
     "error: could not write the result in {out}: No space left on device"),
    ("flac", (sf.SoundFile, "write"), disk_full, 73,  # the FLAC header is already on disk
     "error: could not write the result in {out}: No space left on device"),
    ("mp3", (audio_ops, "_encode_mp3"), interrupted, 130, "stopped"),
], ids=["wav-disk-full", "flac-disk-full", "mp3-ctrl-c"])
def test_a_failure_while_writing_leaves_the_earlier_result_and_no_partial_file(
        tiny_v15, tmp_path, capsys, monkeypatch, one_load_per_model, fmt, target, failure, code,
        message):
    out = tmp_path / "out"
    assert run_in_process(capsys, *generate_args(tiny_v15, out), "--format", fmt)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    monkeypatch.setattr(*target, failure)
    done, printed, errors = run_in_process(capsys, *generate_args(tiny_v15, out, number_of_steps=2),
                                           "--format", fmt, "--overwrite")
    assert (done, printed, errors[-1]) == (code, [], message.format(out=out))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
