"""Working windows, splices and exact lengths of inpaint and outpaint (edits.py).

The unit tests run edits.py on a stand-in engine that records what it was given; the end-to-end
tests run both tiny checkpoints through the CLI and the Gradio API on WAV, FLAC and MP3 sources and
compare every sample outside the edited range with the decoded source.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from gradio_client import Client, handle_file

from ace_step_ui import edits
from ace_step_ui.audio import Audio, equal_power_fades, read_audio
from ace_step_ui.engines import EngineOutput
from ace_step_ui.errors import InputError
from ace_step_ui.requests import SEED_MAX, ExtraRange, parse_request, resolve_extra_ranges

REPO = Path(__file__).resolve().parents[1]
RATE = 8000  # the stand-in engine's tests: small, so a 60-minute source is cheap


class StandIn:
    """An engine that halves what it hears and makes a constant where new audio goes."""

    sample_rate = RATE
    extends_both_sides = True
    NEW = 0.25

    def __init__(self):
        self.calls = []
        self.repainted = []  # what each repaint was given besides the range

    def repaint(self, request, window, start_s, end_s, seed, retake_seed, on_step):
        self.calls.append((window.duration_s, start_s, end_s))
        self.repainted.append({"tags": request.tags, "lyrics": request.lyrics, "seed": seed,
                               "retake_seed": retake_seed, "window": window.samples.clone()})
        rendered = window.samples * 0.5
        rendered[:, round(start_s * RATE):round(end_s * RATE)] = self.NEW
        on_step(1, 1)
        return EngineOutput(Audio(rendered, RATE), {"engine": "stand-in"})

    def extend(self, request, context, before_s, after_s, seed, retake_seed, on_step):
        self.calls.append((context.duration_s, before_s, after_s))
        # Like v1, it makes a little less than asked (whole frames of 0.1 s).
        made_before, made_after = math.floor(before_s * 10) / 10, math.floor(after_s * 10) / 10
        new = lambda seconds: torch.full((context.channels, round(seconds * RATE)), self.NEW)
        rendered = torch.cat([new(made_before), context.samples * 0.5, new(made_after)], dim=-1)
        on_step(1, 1)
        return EngineOutput(Audio(rendered, RATE), {}, extension_s=(made_before, made_after))


def tone(seconds: float, rate: int = RATE, channels: int = 2) -> Audio:
    t = torch.arange(round(seconds * rate)) / rate
    return Audio(0.3 * torch.sin(2 * math.pi * 220 * t).repeat(channels, 1), rate)


def inpaint_request(**values):
    return parse_request("inpaint", {"audio": "x.wav", "tags": "lofi", **values})


def test_the_window_is_the_range_plus_context_and_the_whole_track_when_it_fits():
    assert edits.inpaint_window(20, 30, 60, 30) == (0, 60)
    assert edits.inpaint_window(1795, 1805, 3600, 30) == (1765, 1835)
    assert edits.inpaint_window(5, 15, 3600, 30) == (0, 45)
    assert edits.inpaint_window(3590, 3600, 3600, 30) == (3560, 3600)
    # the model hears at most 240 s: the context shrinks around a long range
    assert edits.inpaint_window(1000, 1200, 3600, 30) == (980, 1220)
    assert edits.inpaint_window(1000, 1240, 3600, 30) == (1000, 1240)


def test_outpaint_hears_the_whole_source_when_it_fits_else_each_end():
    whole = edits.outpaint_passes(2, 20, 3, 30, both_at_once=True)
    assert whole == [edits.ExtendPass(2, 3, (0, 20))]
    one_side_a_call = edits.outpaint_passes(2, 20, 3, 30, both_at_once=False)
    assert one_side_a_call == [edits.ExtendPass(2, 0, (0, 20)), edits.ExtendPass(0, 3, (0, 20))]
    long = edits.outpaint_passes(20, 3600, 0, 30, both_at_once=True)
    assert long == [edits.ExtendPass(20, 0, (0, 30))]
    assert edits.outpaint_passes(0, 3600, 20, 30, True) == [edits.ExtendPass(0, 20, (3570, 3600))]
    # a 235 s extension still hears 10 s of the source
    assert edits.outpaint_passes(0, 600, 235, 30, True) == [edits.ExtendPass(0, 235, (590, 600))]


def test_inpaint_on_a_60_minute_source_works_on_the_window_and_keeps_the_rest():
    source = tone(3600, channels=1)
    engine = StandIn()
    request = inpaint_request(context_duration=10, crossfade_duration=0.5)
    out = edits.inpaint(engine, request, source, 1800, 1810, 1, 2, lambda done, total: None)
    assert engine.calls == [(30.0, 10.0, 20.0)]  # the range plus 10 s each side, nothing else
    start, end = 1800 * RATE, 1810 * RATE
    assert out.audio.samples.shape == source.samples.shape and out.audio.sample_rate == RATE
    assert torch.equal(out.audio.samples[:, :start], source.samples[:, :start])
    assert torch.equal(out.audio.samples[:, end:], source.samples[:, end:])
    # level-matched: the stand-in halves its context, so its new audio is doubled
    assert out.effective["gain"] == pytest.approx(2.0)
    fade = 4000
    inside = out.audio.samples[:, start + fade:end - fade]
    assert torch.allclose(inside, torch.full_like(inside, 2 * StandIn.NEW))
    # equal-power crossfades just inside each edge
    fade_out, fade_in = equal_power_fades(fade)
    head = source.samples[:, start:start + fade] * fade_out + 2 * StandIn.NEW * fade_in
    assert torch.allclose(out.audio.samples[:, start:start + fade], head, atol=1e-6)
    tail = 2 * StandIn.NEW * fade_out + source.samples[:, end - fade:end] * fade_in
    assert torch.allclose(out.audio.samples[:, end - fade:end], tail, atol=1e-6)
    assert out.effective["window_s"] == [1790, 1820] and out.effective["crossfade_s"] == 0.5


def test_extra_ranges_run_after_the_main_range_by_start_each_with_its_song_and_seeds():
    source = tone(600)
    engine = StandIn()
    request = inpaint_request(start_time=100, end_time=110, lyrics="[verse]\nla", seed=7,
                              context_duration=10, crossfade_duration=0.25,
                              extra_ranges=[{"start_time": 500, "end_time": 505.5, "tags": "jazz"},
                                            [112, 120, " ", "[inst]"]])
    extra = resolve_extra_ranges(request, (100, 110), source.duration_s)
    steps = []
    out = edits.inpaint_ranges(engine, request, source, (100, 110), extra, 7, 8,
                               lambda done, total: steps.append((done, total)))
    # the main range first, then the others by start time; one progress bar
    assert engine.calls == [(30.0, 10.0, 20.0), (28.0, 10.0, 18.0), (25.5, 10.0, 15.5)]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    songs = [(call["tags"], call["lyrics"], call["seed"], call["retake_seed"])
             for call in engine.repainted]
    assert songs == [("lofi", "[verse]\nla", 7, 8), ("lofi", "[inst]", 9, 10),
                     ("jazz", "[verse]\nla", 11, 12)]
    # the second pass hears the track as the first left it: the main range's new audio
    heard = engine.repainted[1]["window"]
    new_main = slice(0, round(7.75 * RATE))  # 102-110 s of the source, less the fade out
    assert torch.allclose(heard[:, new_main], torch.full_like(heard[:, new_main], 2 * StandIn.NEW))
    # every sample outside the three ranges is the source's own; inside, the new audio
    samples = out.audio.samples
    assert samples.shape == source.samples.shape
    edited = torch.zeros(source.frames, dtype=torch.bool)
    for start_s, end_s in ((100, 110), (112, 120), (500, 505.5)):
        start, end = round(start_s * RATE), round(end_s * RATE)
        edited[start:end] = True
        inside = samples[:, start + 2000:end - 2000]
        assert torch.allclose(inside, torch.full_like(inside, 2 * StandIn.NEW))
    assert torch.equal(samples[:, ~edited], source.samples[:, ~edited])
    ranges = out.effective["ranges"]
    assert [(r["start_s"], r["end_s"], r["tags"], r["seed"], r["retake_seed"]) for r in ranges] == [
        (100, 110, "lofi", 7, 8), (112, 120, "lofi", 9, 10), (500, 505.5, "jazz", 11, 12)]
    assert [r["window_s"] for r in ranges] == [[90, 120], [102, 130], [490, 515.5]]
    assert all(r["gain"] == pytest.approx(2.0) and r["crossfade_s"] == 0.25 for r in ranges)
    assert list(ranges[0]) == ["start_s", "end_s", "tags", "lyrics", "seed", "retake_seed",
                               "window_s", "gain", "crossfade_s"]
    assert out.effective["window_s"] == [90, 120]  # the rest is the main range's, as range_s is


def test_one_range_is_inpaint_itself():
    source = tone(60)
    request = inpaint_request(start_time=20, end_time=30, context_duration=5)
    alone = edits.inpaint(StandIn(), request, source, 20, 30, 1, 2, lambda done, total: None)
    ranges = edits.inpaint_ranges(StandIn(), request, source, (20, 30), (), 1, 2,
                                  lambda done, total: None)
    assert torch.equal(alone.audio.samples, ranges.audio.samples)
    assert alone.effective == ranges.effective and "ranges" not in ranges.effective


def test_each_extra_pass_takes_the_seeds_two_further_on_wrapping():
    request = inpaint_request(tags="lofi", lyrics="la")
    extra = [ExtraRange(50, 60, "jazz"), ExtraRange(30, 40, lyrics="[inst]")]
    passes = edits.repaint_passes(request, (10, 20), extra, SEED_MAX - 1, SEED_MAX)
    assert passes == [edits.RepaintPass(10, 20, "lofi", "la", SEED_MAX - 1, SEED_MAX),
                      edits.RepaintPass(30, 40, "lofi", "[inst]", 0, 1),
                      edits.RepaintPass(50, 60, "jazz", "la", 2, 3)]
    # a retake seed the caller chose moves along with the seed
    assert [(p.seed, p.retake_seed) for p in edits.repaint_passes(request, (10, 20), extra, 5, 99)
            ] == [(5, 99), (7, 101), (9, 103)]


def test_outpaint_adds_exactly_what_was_asked_around_the_untouched_source():
    source = tone(600)
    engine = StandIn()
    request = parse_request("outpaint", {"audio": "x.wav", "tags": "lofi", "context_duration": 20,
                                         "extend_before_duration": 2.25,
                                         "extend_after_duration": 3.05})
    steps = []
    out = edits.outpaint(engine, request, source, 1, 2, lambda done, total: steps.append((done, total)))
    assert engine.calls == [(20.0, 2.25, 0.0), (20.0, 0.0, 3.05)]
    assert steps == [(1, 2), (2, 2)]  # two passes, one progress bar
    before, after = round(2.25 * RATE), round(3.05 * RATE)
    samples = out.audio.samples
    assert samples.shape == (2, before + source.frames + after)
    assert torch.equal(samples[:, before:before + source.frames], source.samples)
    # what the engine did not make (it makes whole tenths) is silence at the outer ends
    assert not samples[:, :round(0.05 * RATE)].any() and not samples[:, -round(0.05 * RATE):].any()
    made = samples[:, round(0.05 * RATE):before]
    assert torch.allclose(made, torch.full_like(made, 2 * StandIn.NEW))


def test_splice_shortens_fades_to_half_the_range_and_checks_it():
    original, new = torch.zeros(1, 100), torch.ones(1, 10)
    out = edits.splice(original, new, 40, 1000)
    assert out[0, 39] == 0 and out[0, 50] == 0 and out[0, 44] > 0.9 and out[0, 45] > 0.9
    assert torch.equal(edits.splice(original, torch.ones(1, 100), 0, 0), torch.ones(1, 100))
    with pytest.raises(ValueError, match="outside"):
        edits.splice(original, new, 95, 0)


def test_edit_of_more_than_240_s_is_refused():
    edits.check_whole_track_source("edit", tone(240))
    with pytest.raises(InputError, match="the edit task re-renders the whole track.*at most 240 s"):
        edits.check_whole_track_source("edit", tone(241))


# End to end: both tiny checkpoints, real files -------------------------------------------------

SOURCE_S = 30.0


def write_source(folder: Path, fmt: str, rate: int = 44100) -> Path:
    """A 30 s stereo source with some movement, as a 16-bit WAV, a 24-bit FLAC or an MP3."""
    t = np.arange(int(SOURCE_S * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    right = 0.2 * np.sin(2 * np.pi * 330 * t + 1.0)
    data = np.stack([left, right], axis=1).astype(np.float32)
    path = folder / f"source.{fmt}"
    subtype = {"wav": "PCM_16", "flac": "PCM_24", "mp3": "MPEG_LAYER_III"}[fmt]
    sf.write(path, data, rate, subtype=subtype, format={"mp3": "MP3"}.get(fmt, fmt.upper()))
    return path


def check_kept(out: Audio, source: Audio, task: str, params: dict) -> None:
    """Every sample outside the edited range is the decoded source's; the lengths are exact."""
    assert (out.sample_rate, out.channels) == (source.sample_rate, source.channels)
    rate = source.sample_rate
    if task == "inpaint":
        start, end = (round(s * rate) for s in params["range_s"])
        assert out.frames == source.frames
        assert torch.equal(out.samples[:, :start], source.samples[:, :start])
        assert torch.equal(out.samples[:, end:], source.samples[:, end:])
        assert not torch.equal(out.samples[:, start:end], source.samples[:, start:end])
    else:
        before = round(params["request"].get("extend_before_duration", 0) * rate)
        after = round(params["request"].get("extend_after_duration", 0) * rate)
        assert out.frames == before + source.frames + after
        assert torch.equal(out.samples[:, before:before + source.frames], source.samples)
        assert out.samples[:, :before].abs().max() > 0 if before else True


REQUESTS = {
    "start": ("inpaint", {"start_time": 12.0, "end_time": 16.5, "context_duration": 4.0,
                          "crossfade_duration": 0.1}),
    "end": ("inpaint", {"start_time": 9.0, "start_time_relative_to": "end", "end_time": 2.0,
                        "end_time_relative_to": "end", "context_duration": 5.0}),
    "outpaint": ("outpaint", {"extend_before_duration": 1.5, "extend_after_duration": 2.2,
                              "context_duration": 5.0}),
}


@pytest.mark.parametrize("family, source_format, case, output_format", [
    ("v1", "wav", "start", "wav"), ("v1", "flac", "end", "flac"), ("v1", "mp3", "outpaint", "wav"),
    ("v15", "wav", "outpaint", "flac"), ("v15", "flac", "start", "wav"), ("v15", "mp3", "end", "wav"),
])
def test_the_cli_keeps_the_original_outside_the_edit(request, tmp_path, family, source_format, case,
                                                      output_format):
    model = request.getfixturevalue("tiny_v1" if family == "v1" else "tiny_v15")
    path = write_source(tmp_path, source_format)
    task, values = REQUESTS[case]
    payload = {"audio": str(path), "tags": "lofi", "number_of_steps": 2, "seed": 4, **values}
    done = subprocess.run([sys.executable, "-m", "ace_step_ui", "run", task, "--input",
                           json.dumps(payload), "--output-dir", str(tmp_path / "out"), "--model",
                           str(model), "--device", "cpu", "--format", output_format], cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    (written,) = done.stdout.split()
    params = json.loads(Path(written).with_suffix(".json").read_text())
    check_kept(read_audio(written), read_audio(path), task, params)


@pytest.fixture(scope="module")
def clients(served, served_v1):
    return {"v15": Client(served.url, verbose=False), "v1": Client(served_v1.url, verbose=False)}


@pytest.mark.parametrize("family", ["v1", "v15"])
@pytest.mark.parametrize("source_format, case", [("flac", "end"), ("mp3", "outpaint")])
def test_the_api_keeps_the_original_outside_the_edit(clients, tmp_path, family, source_format, case):
    path = write_source(tmp_path, source_format, rate=48000)
    task, values = REQUESTS[case]
    written, _, params = clients[family].predict(audio=handle_file(str(path)), tags="lofi",
                                                 number_of_steps=2, seed=4, api_name=f"/{task}",
                                                 **values)
    check_kept(read_audio(written), read_audio(path), task, params)


@pytest.mark.parametrize("family", ["v1", "v15"])
def test_generate_returns_exactly_the_duration_asked_for(clients, family):
    written, _, params = clients[family].predict(tags="lofi", duration=2.3, number_of_steps=2, seed=1,
                                                 api_name="/generate")
    song = read_audio(written)
    assert (song.sample_rate, song.frames) == (48000, round(2.3 * 48000))
    assert params["duration_s"] == 2.3
