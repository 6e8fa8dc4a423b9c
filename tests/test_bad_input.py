"""Bad input through the CLI, in-process, on both model families: each kind of mistake exits with
its code (64 usage, 65 invalid input, 69 model unavailable) and one line on stderr that names the
problem, writes no output file and leaves no download behind. Then random valid-looking requests,
which may fail only in those ways.

Most cases fail before a model loads; the few that need one (LoRA ids, v1's variance with a
reference) share one loaded engine per family.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from ace_step_ui import cli, remote, tasks
from ace_step_ui.engines import EngineManager
from conftest import shared_managers

USAGE, INVALID, UNAVAILABLE = 64, 65, 69
BOTH = ("v1", "v15")
ANY = ("any",)
HUGE_TEXT = "lofi, " * 16_667  # 100,002 characters
# `<name>` inside a request value or an argument stands for one of the files made below.
PLACEHOLDER = re.compile(r"<([a-z0-9_.]+)>")


@dataclass(frozen=True)
class Case:
    task: str
    request: dict[str, Any] | str | None  # a dict goes through json.dumps; a str is sent as it is
    code: int
    message: str  # a piece of the one stderr line
    extra: tuple[str, ...] = ()  # more arguments; a repeated option overrides the usual one
    families: tuple[str, ...] = BOTH  # ANY: a case that names its own --model
    env: dict[str, str] = field(default_factory=dict)
    patch: tuple[tuple[Any, str, Any], ...] = ()


def gen(code: int, message: str, families: tuple[str, ...] = BOTH, **request: Any) -> Case:
    return Case("generate", {"tags": "lofi", **request}, code, message, families=families)


SOURCE = {"audio": "<source.wav>", "tags": "jazz"}

CASES = {
    # Missing, empty and mistyped fields
    "missing tags": Case("generate", {"duration": 5}, INVALID, "'tags' is required"),
    "missing audio": Case("inpaint", {"tags": "x"}, INVALID, "'audio' is required"),
    "missing original_tags": Case("edit", {**SOURCE, "edit_mode": "remix"}, INVALID,
                                  "'original_tags' is required"),
    "empty tags": gen(INVALID, "'tags' is required", tags=""),
    "blank tags": gen(INVALID, "'tags' is required", tags=" \t\n "),
    "blank audio": Case("outpaint", {"tags": "x", "audio": "  "}, INVALID, "'audio' is required"),
    "number for tags": gen(INVALID, "'tags' must be text, not int", tags=5),
    "list for tags": gen(INVALID, "'tags' must be text, not list", tags=["lofi"]),
    "text for duration": gen(INVALID, "'duration' must be a number, not 'long'", duration="long"),
    "list for seed": gen(INVALID, "'seed' must be a number, not list", seed=[1]),
    "dict for lyrics": gen(INVALID, "'lyrics' must be text, not dict", lyrics={"verse": "la"}),
    "true for number_of_steps": gen(INVALID, "'number_of_steps' must be a number",
                                    number_of_steps=True),
    "fraction for number_of_steps": gen(INVALID, "'number_of_steps' must be a whole number",
                                        number_of_steps=2.5),
    "word for a switch": gen(INVALID, "'use_erg_tag' must be true or false", use_erg_tag="maybe"),
    "number for audio": Case("inpaint", {"tags": "x", "audio": 3}, INVALID,
                             "'audio' must be text"),
    "dict for oss_steps": gen(INVALID, "'oss_steps' must be a list of whole numbers",
                              oss_steps={"a": 1}),
    "word in oss_steps": gen(INVALID, "'oss_steps' must be a number, not 'x'", oss_steps="16, x"),
    # Non-finite numbers, as JSON's NaN and Infinity tokens
    "NaN duration": Case("generate", '{"tags": "x", "duration": NaN}', INVALID,
                         "'duration' must be a finite number"),
    "Infinity guidance_scale": Case("generate", '{"tags": "x", "guidance_scale": Infinity}',
                                    INVALID, "'guidance_scale' must be a finite number"),
    "-Infinity start_time": Case("inpaint", '{"tags": "x", "audio": "a.wav", '
                                 '"start_time": -Infinity}', INVALID,
                                 "'start_time' must be a finite number"),
    "NaN seed": Case("generate", '{"tags": "x", "seed": NaN}', INVALID,
                     "'seed' must be a finite number"),
    "1e400 overflows to infinity": Case("generate", '{"tags": "x", "lora_scale": 1e400}',
                                        INVALID, "'lora_scale' must be a finite number"),
    # Out of range, one per numeric parameter
    "duration below 1 s": gen(INVALID, "'duration' must be between 1 and 240, not 0.5",
                              duration=0.5),
    "duration above 240 s": gen(INVALID, "'duration' must be between 1 and 240, not 241",
                                duration=241),
    "seed below -1": gen(INVALID, "'seed' must be between -1 and 2147483647, not -2", seed=-2),
    "seed above 2**31 - 1": gen(INVALID, "'seed' must be between -1 and 2147483647", seed=2 ** 31),
    "retake_seed below -1": gen(INVALID, "'retake_seed' must be between", retake_seed=-5),
    "no steps": gen(INVALID, "'number_of_steps' must be between 1 and 200, not 0",
                    number_of_steps=0),
    "too many steps": gen(INVALID, "'number_of_steps' must be between 1 and 200, not 201",
                          number_of_steps=201),
    "granularity_scale": gen(INVALID, "'granularity_scale' must be between -100 and 100",
                             granularity_scale=101),
    "guidance_interval": gen(INVALID, "'guidance_interval' must be between 0 and 1",
                             guidance_interval=1.5),
    "guidance_interval_decay": gen(INVALID, "'guidance_interval_decay' must be between 0 and 1",
                                   guidance_interval_decay=-0.1),
    "guidance_scale": gen(INVALID, "'guidance_scale' must be between 0 and 200",
                          guidance_scale=201),
    "minimum_guidance_scale": gen(INVALID, "'minimum_guidance_scale' must be between 0 and 200",
                                  minimum_guidance_scale=-1),
    "tag_guidance_scale": gen(INVALID, "'tag_guidance_scale' must be between 0 and 10",
                              tag_guidance_scale=11),
    "lyric_guidance_scale": gen(INVALID, "'lyric_guidance_scale' must be between 0 and 10",
                                lyric_guidance_scale=10.5),
    "lora_scale": gen(INVALID, "'lora_scale' must be between -3 and 3", lora_scale=3.5),
    "generate variance": gen(INVALID, "'variance' must be between 0 and 1", variance=1.1),
    "audio2audio_strength": gen(INVALID, "'audio2audio_strength' must be between 0 and 1",
                                audio2audio_strength=2),
    "inpaint variance": Case("inpaint", {**SOURCE, "variance": -0.1}, INVALID,
                             "'variance' must be between 0 and 1"),
    "negative start_time": Case("inpaint", {**SOURCE, "start_time": -1}, INVALID,
                                "'start_time' must be between 0 and 240"),
    "end_time past 240 s": Case("inpaint", {**SOURCE, "end_time": 241}, INVALID,
                                "'end_time' must be between 0 and 240"),
    "negative extension": Case("outpaint", {**SOURCE, "extend_before_duration": -1}, INVALID,
                               "'extend_before_duration' must be between 0 and 240"),
    "extension past 240 s": Case("outpaint", {**SOURCE, "extend_after_duration": 300}, INVALID,
                                 "'extend_after_duration' must be between 0 and 240, not 300"),
    "original_seed below -1": Case("edit", {**SOURCE, "original_tags": "pop",
                                                "original_seed": -2}, INVALID,
                                   "'original_seed' must be between"),
    "oss_steps entry 0": gen(INVALID, "'oss_steps' entries must be between 1 and 1000, not 0",
                             oss_steps=[0, 5]),
    "oss_steps entry past 1000": gen(INVALID, "'oss_steps' entries must be between 1 and 1000",
                                     oss_steps=[5, 1001]),
    "too many oss_steps": gen(INVALID, "'oss_steps' has 201 entries",
                              oss_steps=list(range(1, 202))),
    # Unknown names and choices
    "unknown scheduler": gen(INVALID, "'scheduler' must be one of euler, heun, pingpong, not "
                                      "'ddim'", scheduler="ddim"),
    "unknown guidance_type": gen(INVALID, "'guidance_type' must be one of apg, cfg, cfg_star",
                                 guidance_type="pag"),
    "unknown edit_mode": Case("edit", {**SOURCE, "original_tags": "pop",
                                           "edit_mode": "translate"}, INVALID,
                              "'edit_mode' must be one of remix, lyrics, not 'translate'"),
    "unknown start anchor": Case("inpaint", {**SOURCE, "start_time_relative_to": "middle"},
                                 INVALID, "'start_time_relative_to' must be one of start, end"),
    "anchor in capitals": Case("inpaint", {**SOURCE, "end_time_relative_to": "END"}, INVALID,
                               "'end_time_relative_to' must be one of start, end, not 'END'"),
    "unknown parameter": gen(INVALID, "unknown parameter 'durration' for generate (did you mean "
                                      "'duration'?)", durration=5),
    "another task's parameter": gen(INVALID, "unknown parameter 'start_time' for generate",
                                    start_time=1),
    "audio and audio_url differ": Case("inpaint", {**SOURCE, "audio_url": "b.wav"}, INVALID,
                                       "both 'audio' and 'audio_url' are set and differ"),
    # Huge values
    "100,000-character tags": gen(INVALID, "'tags'", tags=HUGE_TEXT),
    "100,000-character lyrics": gen(INVALID, "'lyrics'", lyrics=HUGE_TEXT),
    "seed 10**400": Case("generate", '{"tags": "x", "seed": 1' + "0" * 400 + "}", INVALID,
                         "'seed'"),
    "retake_seed -10**30": gen(INVALID, "'retake_seed' must be between", retake_seed=-10 ** 30),
    "a 5,000-digit number": Case("generate", '{"tags": "x", "seed": ' + "9" * 5000 + "}",
                                 INVALID, "--input is not valid JSON"),
    # Source files
    "corrupt MP3": Case("inpaint", {**SOURCE, "audio": "<corrupt.mp3>"}, INVALID,
                        "could not read 'corrupt.mp3' as audio"),
    "empty file": Case("outpaint", {**SOURCE, "audio": "<empty.wav>"}, INVALID,
                       "'empty.wav' is empty (0 bytes)"),
    "text named .mp3": Case("inpaint", {**SOURCE, "audio": "<text.mp3>"}, INVALID,
                            "could not read 'text.mp3' as audio"),
    "truncated WAV": Case("edit", {**SOURCE, "audio": "<truncated.wav>",
                                       "original_tags": "pop"}, INVALID,
                          "could not read 'truncated.wav' as audio", families=("v1",)),
    "WAV without samples": Case("inpaint", {**SOURCE, "audio": "<silent.wav>"}, INVALID,
                                "'silent.wav' contains no audio samples"),
    "longer than 60 minutes": Case("outpaint", {**SOURCE, "audio": "<hour.flac>"}, INVALID,
                                   "'hour.flac' is longer than 60 minutes"),
    "folder as the audio": Case("inpaint", {**SOURCE, "audio": "<folder>"}, INVALID,
                                "is a folder, not an audio file"),
    "missing file": Case("inpaint", {**SOURCE, "audio": "<missing.wav>"}, INVALID,
                         "missing.wav' not found"),
    # (1.5 refuses any reference_audio first: "a reference on 1.5")
    "missing reference_audio": gen(INVALID, "missing.wav' not found", ("v1",),
                                   reference_audio="<missing.wav>"),
    # Edited ranges against the 4 s source
    "end past the end": Case("inpaint", {**SOURCE, "start_time": 1, "end_time": 10}, INVALID,
                             "end_time resolves to 10.0 s, past the end of the 4.0 s source"),
    "start past the end": Case("inpaint", {**SOURCE, "start_time": 10, "end_time": 0,
                                               "end_time_relative_to": "end"}, INVALID,
                               "end_time resolves to 4.0 s, before start_time 10.0 s"),
    "start before the start": Case("inpaint", {**SOURCE, "start_time": 10,
                                                   "start_time_relative_to": "end"}, INVALID,
                                   "start_time resolves to -6.0 s, before the start"),
    "end before start": Case("inpaint", {**SOURCE, "start_time": 3, "end_time": 1}, INVALID,
                             "end_time resolves to 1.0 s, before start_time 3.0 s"),
    "range under 1 s": Case("inpaint", {**SOURCE, "start_time": 1, "end_time": 1.5}, INVALID,
                            "the edited range must be at least 1 s long"),
    "range under 1 s across anchors": Case("inpaint", {
        **SOURCE, "start_time": 3.5, "end_time": 0, "end_time_relative_to": "end"}, INVALID,
        "end_time resolves to 4.0 s, too close to start_time 3.5 s"),
    "range over 240 s": Case("inpaint", {
        **SOURCE, "audio": "<long.wav>", "start_time": 0, "end_time": 0,
        "end_time_relative_to": "end"}, INVALID, "at most 240 s can be regenerated in one call"),
    "both extensions 0": Case("outpaint", {**SOURCE, "extend_after_duration": 0}, INVALID,
                              "extend_before_duration and extend_after_duration are both 0"),
    # URLs and data: URIs (nothing but loopback is ever connected to)
    "unreachable URL": Case("inpaint", {**SOURCE, "audio": "<unreachable>"}, INVALID,
                            "could not download audio from 127.0.0.1: the connection failed",
                            env={remote.ALLOW_LOOPBACK_ENV: "1"}),
    "plain http to a private address": Case("outpaint", {**SOURCE, "audio": "http://10.0.0.1/x"},
                                            INVALID, "plain http:// is not accepted (10.0.0.1)"),
    "private address": Case("inpaint", {**SOURCE, "audio": "https://192.168.1.1/a.wav"},
                            INVALID, "refusing to download from 192.168.1.1"),
    "localhost": Case("inpaint", {**SOURCE, "audio": "https://localhost/"}, INVALID,
                      "refusing to download from localhost"),
    "link-local reference": gen(INVALID, "refusing to download from 169.254.169.254", ("v1",),
                                reference_audio="https://169.254.169.254/latest/meta-data"),
    "file:// URL": Case("inpaint", {**SOURCE, "audio": "file:///etc/passwd"}, INVALID,
                        "unsupported URL scheme 'file'"),
    "ftp:// URL": Case("outpaint", {**SOURCE, "audio": "ftp://example.com/a.wav"}, INVALID,
                       "unsupported URL scheme 'ftp'"),
    "URL without a host": Case("inpaint", {**SOURCE, "audio": "https:///a.wav"}, INVALID,
                               "has no host name"),
    "oversized data: URI": Case("inpaint", {**SOURCE, "audio": "<big_uri>"}, INVALID,
                                "the data: URI is larger than 0.001 MB",
                                patch=((remote, "MAX_DATA_URI_BYTES", 1000),)),
    "data: URI not base64": Case("inpaint", {**SOURCE, "audio": "data:audio/wav;base64,@@@"},
                                 INVALID, "the data: URI is not valid base64"),
    "data: URI of text": Case("inpaint", {**SOURCE, "audio": "data:text/plain;base64,aGk="},
                              INVALID, "unsupported data: URI"),
    "empty data: URI": Case("outpaint", {**SOURCE, "audio": "data:audio/wav;base64,"}, INVALID,
                            "the data: URI holds no data"),
    "data: URI of noise": Case("inpaint", {**SOURCE, "audio": "<noise_uri>"}, INVALID,
                               "as audio"),
    # Combinations
    "oss_steps not increasing": gen(INVALID, "'oss_steps' must increase, but 3 follows 5",
                                    oss_steps=[5, 3]),
    "oss_steps with heun": gen(INVALID, "oss_steps work with the euler and pingpong schedulers, "
                                        "not heun", oss_steps="16, 29", scheduler="heun"),
    "variance with a reference on v1": gen(INVALID, "set only one of them", ("v1",), variance=0.5,
                                           reference_audio="<source.wav>"),
    "a reference too strong for the steps (v1)": gen(INVALID, "less than one", ("v1",),
                                                     reference_audio="<source.wav>",
                                                     audio2audio_strength=0.99,
                                                     number_of_steps=27),
    "a reference on 1.5": Case("generate", {"tags": "x", "reference_audio": "<source.wav>"},
                               INVALID, "audio-to-audio from a reference_audio needs ACE-Step v1",
                               families=("v15",)),
    "edit on 1.5": Case("edit", {**SOURCE, "original_tags": "pop"}, INVALID,
                        "edit (audio-to-audio) needs ACE-Step v1", families=("v15",)),
    # LoRA ids (ACE-Step v1 loads them with the model; 1.5 ignores the parameter)
    "LoRA path that does not exist": Case("generate", {"tags": "x", "lora": "<missing_lora>"},
                                          INVALID, "no LoRA file or folder at", families=("v1",)),
    "malformed LoRA Hub id": Case("generate", {"tags": "x", "lora": "not a/repo id/at all"},
                                  INVALID, "it is not a Hugging Face repo id either",
                                  families=("v1",)),
    "LoRA folder without weights": Case("generate", {"tags": "x", "lora": "<folder>"}, INVALID,
                                        "has no pytorch_lora_weights.safetensors",
                                        families=("v1",)),
    "LoRA not cached, offline": Case("generate", {"tags": "x",
                                                      "lora": "ace-step-ui-tests/no-such-lora"},
                                     UNAVAILABLE, "ace-step-ui-tests/no-such-lora is not in the "
                                                  "Hugging Face cache", families=("v1",)),
    # Command-line arguments
    "unknown task": Case("remix", {"tags": "x"}, USAGE, "invalid choice: 'remix'"),
    "--format ogg": Case("generate", {"tags": "x"}, USAGE,
                         "argument --format: invalid choice: 'ogg'", extra=("--format", "ogg")),
    "--device gpu": Case("generate", {"tags": "x"}, USAGE, "unknown device 'gpu'",
                         extra=("--device", "gpu")),
    "--device cuda:99": Case("generate", {"tags": "x"}, USAGE, "device 'cuda:99'",
                             extra=("--device", "cuda:99")),
    "--dtype float64": Case("generate", {"tags": "x"}, USAGE,
                            "argument --dtype: invalid choice: 'float64'",
                            extra=("--dtype", "float64")),
    "no --input": Case("generate", None, USAGE, "the following arguments are required: --input"),
    "--input not JSON": Case("generate", "{tags: lofi}", INVALID, "--input is not valid JSON"),
    "--input a list": Case("generate", '["tags", "lofi"]', INVALID,
                           "the generate input must be a JSON object of parameters, not list"),
    "--input a string": Case("generate", '"lofi"', INVALID,
                             "the generate input must be a JSON object of parameters, not str"),
    "--input @ a missing file": Case("generate", {"tags": "x"}, USAGE, "--input: cannot read",
                                     extra=("--input", "@<missing.json>")),
    "--input @ a folder": Case("generate", {"tags": "x"}, USAGE, "--input: cannot read",
                               extra=("--input", "@<folder>")),
    "--input @ a file not UTF-8": Case("generate", {"tags": "x"}, INVALID,
                                       "--input is not valid JSON",
                                       extra=("--input", "@<latin1.json>")),
    "--output-dir a file": Case("generate", {"tags": "x"}, USAGE,
                                "--output-dir: ", extra=("--output-dir", "<source.wav>")),
    "--model a folder that is no checkpoint": Case("generate", {"tags": "x"}, UNAVAILABLE,
                                                   "is not a checkpoint this app can load",
                                                   extra=("--model", "<folder>"), families=ANY),
    "--model a file": Case("generate", {"tags": "x"}, INVALID, "is a file; pass a checkpoint",
                           extra=("--model", "<source.wav>"), families=ANY),
    "--model neither a folder nor a Hub id": Case("generate", {"tags": "x"}, INVALID,
                                                  "is neither a folder on this machine nor a Hub",
                                                  extra=("--model", "no-such-model"), families=ANY),
    "--model a Hub id not cached, offline": Case("generate", {"tags": "x"}, UNAVAILABLE,
                                                 "hf download ace-step-ui-tests/nothing",
                                                 extra=("--model", "ace-step-ui-tests/nothing"),
                                                 families=ANY),
}

MATRIX = [(kind, family) for kind, case in CASES.items() for family in case.families]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The files, URLs and data: URIs the cases name as <name>."""
    folder = tmp_path_factory.mktemp("bad-input")
    rate = 44100
    t = np.arange(4 * rate) / rate
    sf.write(folder / "source.wav", np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1)
             .astype(np.float32), rate, subtype="FLOAT")
    # Long files at a low rate: the limits are in seconds, so they cost little to make and read.
    sf.write(folder / "long.wav", np.zeros(250 * 1000, np.int16), 1000)
    sf.write(folder / "hour.flac", np.zeros(3601 * 100, np.int16), 100)
    sf.write(folder / "silent.wav", np.zeros((0, 2), np.float32), rate)
    wav = (folder / "source.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(wav[:30])
    (folder / "corrupt.mp3").write_bytes(random.Random(1).randbytes(5000))
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.mp3").write_text("not audio at all\n" * 40)
    (folder / "latin1.json").write_bytes('{"tags": "caf\xe9"}'.encode("latin-1"))
    (folder / "folder").mkdir()
    names = {path.name: str(path) for path in folder.iterdir()}
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    noise = random.Random(2).randbytes(3000)
    return {**names, "missing.wav": str(folder / "missing.wav"),
            "missing.json": str(folder / "missing.json"),
            "missing_lora": str(folder / "no-such-lora"),
            "unreachable": f"http://127.0.0.1:{port}/a.wav",
            "big_uri": "data:audio/wav;base64," + base64.b64encode(wav[:3000]).decode(),
            "noise_uri": "data:audio/mpeg;base64," + base64.b64encode(noise).decode()}


@pytest.fixture(scope="module")
def engines() -> dict[tuple[str, str], EngineManager]:
    return {}


@pytest.fixture
def in_process(engines, tmp_path, monkeypatch):
    """cli.main with one engine manager for the module, downloads in a folder of this test, and a
    connection to anything but loopback failing the test before a packet is sent."""
    monkeypatch.setattr(cli, "EngineManager", shared_managers(engines))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tasks, "work_dir", lambda: work)
    monkeypatch.delenv(remote.ALLOW_LOOPBACK_ENV, raising=False)
    real = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        assert ipaddress.ip_address(address[0]).is_loopback, f"tried to connect to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    return work


def fill(value: Any, files: dict[str, str]) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: files.get(match[1], match[0]), value)
    if isinstance(value, dict):
        return {key: fill(item, files) for key, item in value.items()}
    return value


def model_of(family: str, request: pytest.FixtureRequest) -> str:
    if family == "any":
        return "unused"  # the case's own --model comes later and wins
    return str(request.getfixturevalue({"v1": "tiny_v1", "v15": "tiny_v15"}[family]))


@pytest.mark.parametrize("kind, family", MATRIX, ids=[f"{k} [{f}]" for k, f in MATRIX])
def test_bad_input_exits_with_one_line(kind, family, files, in_process, tmp_path, capfd,
                                       monkeypatch, request):
    case = CASES[kind]
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    for target, name, value in case.patch:
        monkeypatch.setattr(target, name, value)
    out = tmp_path / "out"
    argv = ["run", case.task, "--output-dir", str(out), "--model", model_of(family, request),
            "--device", "cpu"]
    if case.request is not None:
        payload = case.request if isinstance(case.request, str) else json.dumps(fill(case.request,
                                                                                     files))
        argv += ["--input", payload]
    argv += [fill(argument, files) for argument in case.extra]
    capfd.readouterr()  # what making the fixtures printed
    code = cli.main(argv)
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert (code, len(lines)) == (case.code, 1), captured.err[-2000:]
    assert case.message in lines[0] and "Traceback" not in lines[0]
    assert captured.out == ""
    assert not out.exists() and not list(in_process.iterdir())


# Random valid-looking requests ---------------------------------------------------------------

GOOD_SEEDS = [-1, 0, 1, 42, 2 ** 31 - 1, "12", 3.0]
HUGE_SEEDS = [2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 30, -10 ** 30, 10 ** 400, -(10 ** 400), 1e300,
              "1e400", "99999999999999999999"]


def pick(rng: random.Random, good: list[Any], odd: list[Any], odd_share: float = 0.04) -> Any:
    return rng.choice(odd if rng.random() < odd_share else good)


def random_request(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A request as a person or a script might send it: mostly sensible, now and then a value off
    by a little, a number as text, or a huge seed."""
    task = pick(rng, ["generate", "inpaint", "outpaint"], ["edit"])
    request: dict[str, Any] = {
        "tags": pick(rng, ["lofi", "jazz, piano", "ÉLECTRO, 女声"], [" ", ""]),
        "number_of_steps": pick(rng, [1, 2, 2.0, "1"], [0, 2.5])}
    if rng.random() < 0.5:
        request["lyrics"] = pick(rng, ["[inst]", "[verse]\nla la", "", "la " * 100], ["x" * 4001])
    for name in ("seed", "retake_seed"):
        if rng.random() < 0.6:
            request[name] = pick(rng, GOOD_SEEDS, HUGE_SEEDS + [-2, True, 1.5], odd_share=0.15)
    if task == "generate":
        duration = round(rng.uniform(1, 3), rng.randint(0, 4))
        request["duration"] = pick(rng, [1, 1.113, duration, "2"], [0.99, "two"])
    else:
        request["audio"] = "<source.wav>"
    if task == "inpaint":
        start = round(rng.uniform(0, 2.5), rng.randint(0, 3))
        request.update(start_time=start, end_time=pick(rng, [round(start + rng.uniform(1, 1.5), 2)],
                                                       [start + 0.5, 4.5, start - 1]),
                       variance=pick(rng, [0, 0.5, 1], [1.01]))
        if rng.random() < 0.2:
            request.update(start_time_relative_to="end", start_time=round(rng.uniform(1.5, 4), 2))
    if task == "outpaint":
        request.update(extend_before_duration=rng.choice([0, 0.5, 1.3]),
                       extend_after_duration=pick(rng, [1, 1.7], [0]))
    if task == "edit":
        request.update(original_tags="pop", edit_mode=rng.choice(["remix", "lyrics"]))
    for name, good, odd in (("scheduler", ["euler", "heun"], ["pingpong", "ddim"]),
                            ("guidance_type", ["apg", "cfg", "cfg_star"], ["CFG"]),
                            ("guidance_scale", [0, 7.5, 200], [201, -1]),
                            ("guidance_interval", [0, 0.5, 1], [1.5]),
                            ("granularity_scale", [-100, 10, 100], [101]),
                            ("use_erg_tag", [True, False, "true", 0], ["yes"]),
                            ("oss_steps", ["", [3, 7]], ["7, 3"]),
                            ("lora_scale", [-3, 1, 3], [3.01])):
        if rng.random() < 0.2:
            request[name] = pick(rng, good, odd)
    return task, request


FUZZ_RUNS = 40


@pytest.fixture(scope="module")
def loaded_v15(tiny_v15, engines) -> str:
    """The tiny 1.5 model loaded before the runs, so its loading bars are not in their stderr."""
    engines.setdefault(("cpu", "auto"), EngineManager("cpu", "auto")).get(str(tiny_v15))
    return str(tiny_v15)


@pytest.mark.parametrize("index", range(FUZZ_RUNS))
def test_random_requests_succeed_or_exit_with_one_line(index, loaded_v15, files, in_process,
                                                       tmp_path, capfd):
    task, request = random_request(random.Random(index))
    out = tmp_path / "out"
    capfd.readouterr()
    code = cli.main(["run", task, "--input", json.dumps(fill(request, files)), "--output-dir",
                     str(out), "--model", loaded_v15, "--device", "cpu"])
    captured = capfd.readouterr()
    assert code in (0, USAGE, INVALID, UNAVAILABLE), (request, captured.err[-2000:])
    if code == 0:
        audio = Path(captured.out.strip())
        assert audio.is_file() and audio.with_suffix(".json").is_file()
    else:
        errors = [line for line in captured.err.splitlines() if line.strip()
                  and not line.startswith("step ")]
        assert len(errors) == 1 and errors[0].startswith("error: "), (request, captured.err)
        assert not out.exists()
    assert not list(in_process.iterdir())


# The request cases again, through the Gradio API as a remote caller sends them: files uploaded,
# everything else as in the CLI's JSON. (Cases of command-line arguments, raw JSON text, local
# paths the CLI may name and missing files have no API form; an API caller's own mistakes with
# paths are in test_ui_api.)
API_CASES = [(kind, family) for kind, family in MATRIX
             if isinstance(CASES[kind].request, dict) and not CASES[kind].extra
             and not CASES[kind].env and not CASES[kind].patch
             and "missing" not in json.dumps(CASES[kind].request)
             and "<folder>" not in json.dumps(CASES[kind].request)
             and kind not in ("audio and audio_url differ", "unknown parameter",
                              "another task's parameter", "unknown task")]
# Where a remote caller's message differs from the CLI user's: the server takes Hub ids only.
API_MESSAGES = {"malformed LoRA Hub id": "'lora' must be a Hugging Face Hub repo id (owner/name)"}


def upload_fill(value: Any, files: dict[str, str]) -> Any:
    """`fill`, with the local files the cases name uploaded rather than named by path."""
    from gradio_client import handle_file

    if isinstance(value, str):
        match = PLACEHOLDER.fullmatch(value)
        if match and match[1] in files and Path(files[match[1]]).is_file():
            return handle_file(files[match[1]])
    if isinstance(value, dict):
        return {key: upload_fill(item, files) for key, item in value.items()}
    return fill(value, files)


@pytest.fixture(scope="module")
def clients(request) -> dict[str, Any]:
    from gradio_client import Client

    made: dict[str, Any] = {}

    def client(family: str):
        if family not in made:
            server = request.getfixturevalue({"v1": "served_v1", "v15": "served"}[family])
            made[family] = (Client(server.url, verbose=False), server)
        return made[family]

    return client


@pytest.mark.parametrize("kind, family", API_CASES, ids=[f"{k} [{f}]" for k, f in API_CASES])
def test_bad_input_through_the_api_is_one_clear_message(kind, family, files, clients,
                                                        monkeypatch):
    from gradio_client.exceptions import AppError

    case = CASES[kind]
    monkeypatch.delenv(remote.ALLOW_LOOPBACK_ENV, raising=False)
    client, server = clients(family)
    with pytest.raises(AppError) as refused:
        client.predict(api_name=f"/{case.task}", **upload_fill(case.request, files))
    message = str(refused.value)
    assert API_MESSAGES.get(kind, case.message) in message and "\n" not in message and "Traceback" not in message
    assert len(message) < 1000
    assert not server.manager.slot.busy
