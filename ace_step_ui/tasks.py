"""The one path from a request to a result, shared by the UI, the Gradio API, the CLI and the tests.

1. validate the request, and check that the model's family can run it (no heavy work before);
2. fetch and read the source (and reference) audio, resolve the edited range (and inpaint's
   extra ranges) against its duration; inpaint and outpaint then run on a window of it (a window a
   range) and splice the result back (edits.py);
3. pick the seeds;
4. one job at a time: the planner writes the song (prompt-to-audio) or thinks it into audio
   codes (1.5's thinking) (planning.py); then load the model (first use only) and run the task;
5. describe what ran: the seeds used, the values the engine applied, the parameters it ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import edits, planning
from .audio import FORMATS, Audio, encode_audio, read_audio
from .engines import DEFAULT_MODEL, EngineManager, StepCallback, family_for
from .errors import Cancelled, InputError
from .files import staged
from .remote import fetched_source
from .requests import (SEED_MAX, BaseRequest, EditRequest, ExtraRange, GenerateRequest,
                       InpaintRequest, OutpaintRequest, PromptToAudioRequest, Request,
                       SourceRequest, WholeTrackRequest, derive_retake_seed, parse_request,
                       resolve_extra_ranges, resolve_range, resolve_seed)

APP_NAME = "ace_step_ui"
PLANNING, DIFFUSION = "planning", "diffusion"  # what `on_step` counts: LM tokens, or steps
LATENTS_SUFFIX = ".latents.safetensors"


@dataclass
class Result:
    audio: Audio
    seed: int
    params: dict[str, Any]
    latents: torch.Tensor | None = None  # the engine's final diffusion latents, when it has them


def work_dir() -> Path:
    """Where downloads and outputs go: under the system temp folder, which Gradio may serve."""
    folder = Path(tempfile.gettempdir()) / APP_NAME
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check(task: str, payload: Mapping[str, Any], model: str) -> Request:
    """Step 1 alone: the validated request, refused before any file is read or model loaded."""
    request = parse_request(task, payload)
    family_for(model).check_request(model, request)
    return request


MAX_TAKES = 8  # takes of one job, as upstream 1.5 generates up to 8 at once


def run(task: str, payload: Mapping[str, Any], manager: EngineManager, model: str,
        on_step: StepCallback | None = None, owner: str = "", need_latents: bool = False,
        stop: threading.Event | None = None, on_wait: Callable[[int], None] | None = None,
        number: int | None = None, on_phase: Callable[[str], None] | None = None) -> Result:
    """Run `task` on `model`; `need_latents` refuses, before any work, a model that returns none.

    The job belongs to `owner` (see `EngineManager.cancel`) and ends at its next step once `stop`
    is set; `on_wait(jobs_ahead)` reports while it waits for the model's slot, where it keeps the
    place `number` (from `manager.slot.number()`, taken when it was submitted). `on_phase(name)`
    says what the steps `on_step` counts next are: PLANNING (LM tokens) or DIFFUSION.
    """
    return run_takes(task, payload, manager, model, 1, on_step, owner, need_latents, stop, on_wait,
                     number, on_phase)[0]


def take_seeds(seed: int, takes: int) -> list[int]:
    """The seeds of `takes` takes: `seed`, `seed + 1`, ... when one is given, else fresh ones.
    Each take is the song its seed gives alone, so a take replays with its seed."""
    if not 1 <= takes <= MAX_TAKES:
        raise InputError(f"takes must be 1 to {MAX_TAKES}, not {takes}")
    if seed >= 0:
        return [(seed + index) % (SEED_MAX + 1) for index in range(takes)]
    return [resolve_seed(seed) for _ in range(takes)]


def run_takes(task: str, payload: Mapping[str, Any], manager: EngineManager, model: str,
              takes: int = 1, on_step: StepCallback | None = None, owner: str = "",
              need_latents: bool = False, stop: threading.Event | None = None,
              on_wait: Callable[[int], None] | None = None, number: int | None = None,
              on_phase: Callable[[str], None] | None = None) -> list[Result]:
    """`run`, for `takes` seeds (`take_seeds`) in one job: the sources are read once, the slot is
    held once and the model loaded once. The takes run one after another rather than as a batch:
    a batched forward changes the last bits, and a take must replay to the same samples alone.
    A stop after the first take ends the job with the takes made so far."""
    request = check(task, payload, model)
    family = family_for(model)
    thinks = getattr(request, "thinking", False) and "thinking" in family.honoured(model, task)
    if need_latents and not family.returns_latents:
        raise no_latents_error(model)
    seeds = take_seeds(request.seed, takes)
    with manager.job(owner, stop) as stop, ExitStack() as downloads:
        source = reference = None
        source_info: dict[str, Any] = {}
        if isinstance(request, SourceRequest):
            source = read_audio(downloads.enter_context(fetched_source(request.audio, work_dir())))
            source_info["source"] = describe(source)
        if isinstance(request, GenerateRequest) and request.reference_audio:
            reference = read_audio(downloads.enter_context(
                fetched_source(request.reference_audio, work_dir())))
            source_info["reference"] = describe(reference)
        downloads.close()  # read into memory: a downloaded file is not needed any more
        edit_range: tuple[float, float] | None = None
        extra_ranges: tuple[ExtraRange, ...] = ()
        if isinstance(request, InpaintRequest):
            assert source is not None
            request, fitted = fit_defaults(request, source.duration_s)
            edit_range = resolve_range(request, source.duration_s)
            extra_ranges = resolve_extra_ranges(request, edit_range, source.duration_s)
            source_info["range_s"] = list(edit_range)
            if fitted:
                source_info["fitted"] = fitted
        if isinstance(request, WholeTrackRequest):
            assert source is not None
            edits.check_whole_track_source(task, source)

        def take_all() -> list[tuple]:
            ran: list[tuple] = []
            for index, seed in enumerate(seeds):
                try:
                    retake_seed = (request.retake_seed if request.retake_seed >= 0
                                   else derive_retake_seed(seed))
                    step = manager.step_callback(
                        edits.offset_steps(on_step, index, takes) if on_step else None, stop)
                    started = time.perf_counter()
                    manager.moves.clear()  # this job's alone: one job holds the slot at a time
                    song, plans, codes = request, {}, ""
                    if isinstance(request, PromptToAudioRequest) or thinks:
                        _phase(on_phase, PLANNING)
                        planner = manager.planner()
                        if isinstance(song, PromptToAudioRequest):
                            song, plan = planning.write(planner, song, seed, step)
                            plans["written"] = planning.describe_plan(plan)
                        if thinks:
                            assert isinstance(song, GenerateRequest)
                            song, plan = planning.think(planner, song, seed, step)
                            plans["thought"] = planning.describe_plan(plan)
                            codes = plan.audio_codes
                    planned = time.perf_counter()
                    engine = manager.get(model)
                    loaded = time.perf_counter()
                    _phase(on_phase, DIFFUSION)
                    if isinstance(song, GenerateRequest):
                        output = engine.generate(song, seed, retake_seed, step, reference=reference,
                                                 **({"audio_codes": codes} if codes else {}))
                    elif isinstance(request, InpaintRequest):
                        assert source is not None and edit_range is not None
                        output = edits.inpaint_ranges(engine, request, source, edit_range,
                                                      extra_ranges, seed, retake_seed, step)
                    elif isinstance(request, WholeTrackRequest):  # edit, cover and the stem tasks
                        assert source is not None
                        output = getattr(engine, task)(request, source, seed, retake_seed, step)
                    else:
                        assert isinstance(request, OutpaintRequest) and source is not None
                        output = edits.outpaint(engine, request, source, seed, retake_seed, step)
                    finished = time.perf_counter()
                    timings = {**({"plan": round(planned - started, 3)} if plans else {}),
                               "load": round(loaded - planned, 3),
                               "run": round(finished - loaded, 3)}
                    ran.append((seed, retake_seed, song, plans, output, list(manager.moves),
                                timings, engine))
                except Cancelled:
                    if not ran:
                        raise
                    break  # stopped: the takes made before the stop are kept
            return ran

        with manager.slot.hold(stop, on_wait, number):
            if stop.is_set():
                raise Cancelled("stopped by the user before it started")
            ran = manager.run(take_all)  # the model work on the manager's thread, if it has one
    results = [_result(task, model, request, manager, source_info, *take, takes=takes, index=index)
               for index, take in enumerate(ran)]
    return results


def _result(task: str, model: str, request: Request, manager: EngineManager,
            source_info: dict[str, Any], seed: int, retake_seed: int, song: Request,
            plans: dict[str, Any], output: Any, moved: list[Any], timings: dict[str, float],
            engine: Any, takes: int = 1, index: int = 0) -> Result:
    """What ran for one take: the seeds used, the values the engine applied, what it ignored."""
    honoured = engine.honoured(task) - output.unused
    sent = request.to_dict()
    assert isinstance(song, BaseRequest)
    params = {
        "task": task,
        "model": model,
        **({"prompt": request.prompt, "instrumental": request.instrumental}
           if isinstance(request, PromptToAudioRequest) else {}),
        "tags": song.tags,  # the sung ones: the planner's where it wrote or thought them
        "lyrics": song.lyrics,
        "seed": seed,
        **({"retake_seed": retake_seed} if "retake_seed" in honoured else {}),
        **({"original_seed": request.original_seed}
           if isinstance(request, EditRequest) and request.original_seed >= 0 else {}),
        "engine": output.effective,
        "ignored_params": sorted(request.explicit - honoured),
        # What was sent, and only that: with "seed" set to the seed used it replays the same song,
        # where the hosted defaults of the rest would override the model's own presets.
        "request": {name: sent[name] for name in sent if name in request.explicit},
        **source_info,
        **({"planner": {"model": manager.planner_model, **plans},
            # the plain generate request that sings this song again, and can be edited
            "generate_request": planning.replay_request(song, seed)} if plans else {}),
        **({"memory": moved} if moved else {}),
        **({"take": {"index": index, "of": takes}} if takes > 1 else {}),
        "sample_rate": output.audio.sample_rate,
        "channels": output.audio.channels,
        "duration_s": round(output.audio.duration_s, 6),
        "timings_s": timings,
    }
    return Result(output.audio, seed, params, output.latents)


def _phase(report: Callable[[str], None] | None, name: str) -> None:
    if report is not None:
        report(name)


def fit_defaults(request: InpaintRequest, source_seconds: float
                 ) -> tuple[InpaintRequest, dict[str, float]]:
    """The hosted default end_time (30 s) fitted to a shorter source, and what was fitted; a value
    the caller set is left for `resolve_range` to check."""
    if (request.is_set("end_time") or request.end_time_relative_to != "start"
            or request.end_time <= source_seconds):
        return request, {}
    end = round(source_seconds, 6)
    return dataclasses.replace(request, end_time=end), {"end_time": end}


def describe(audio: Audio) -> dict[str, Any]:
    return {"sample_rate": audio.sample_rate, "channels": audio.channels,
            "duration_s": round(audio.duration_s, 6)}


def audio_metadata(result: Result) -> dict[str, Any]:
    return {"tags": result.params["tags"], "lyrics": result.params["lyrics"], "seed": result.seed,
            "params": result.params}


def output_stem(result: Result) -> str:
    tags = re.sub(r"[^a-z0-9]+", "-", result.params["tags"].lower()).strip("-")[:40] or "song"
    return f"{result.params['task']}-{tags}-{result.seed}"


def free_stem(directory: Path, stem: str) -> str:
    """`stem`, else the first of `stem-2`, `stem-3`, ... that no result file in `directory` uses
    (audio of any format, sidecar or latents: they share the stem)."""
    suffixes = [f".{fmt}" for fmt in FORMATS] + [".json", LATENTS_SUFFIX]
    candidate, number = stem, 1
    while any((directory / f"{candidate}{suffix}").exists() for suffix in suffixes):
        number += 1
        candidate = f"{stem}-{number}"
    return candidate


def no_latents_error(model: str) -> InputError:
    return InputError(f"the model {model} returns no diffusion latents, so none can be saved; "
                      f"ACE-Step v1 ({DEFAULT_MODEL}) does")


def latents_path(audio_path: str | Path) -> Path:
    """Where `save_result` puts the latents of the audio at `audio_path`: same folder and stem."""
    audio_path = Path(audio_path)
    return audio_path.with_name(audio_path.stem + LATENTS_SUFFIX)


def save_result(result: Result, directory: str | Path, fmt: str, stem: str | None = None,
                save_latents: bool = False, overwrite: bool = False) -> Path:
    """Write the audio (with its metadata) and a JSON sidecar of the same stem; return the audio.

    With `save_latents`, also `<stem>.latents.safetensors`: the one tensor `latents`, float32, as
    the engine gave it (batch, channels, height, frames). The files appear together and complete,
    the audio last (`files.staged`). A result already under the stem is kept and this one takes the
    first free `<stem>-2`, `<stem>-3`, ...; with `overwrite` it is replaced.
    """
    if save_latents and result.latents is None:
        raise no_latents_error(result.params.get("model", ""))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or output_stem(result)
    if not overwrite:
        stem = free_stem(directory, stem)
    path = directory / f"{stem}.{fmt}"
    latents = latents_path(path) if save_latents else None
    extra = {"audio_path": str(path), **({"latents_path": str(latents)} if latents else {})}
    with staged(([latents] if latents else []) + [directory / f"{stem}.json", path]) as partials:
        if latents is not None:
            from safetensors.torch import save_file

            assert result.latents is not None
            tensor = result.latents.detach().to(device="cpu", dtype=torch.float32).contiguous()
            save_file({"latents": tensor}, str(partials[0]))
        sidecar = json.dumps({**result.params, **extra}, indent=2, ensure_ascii=False)
        partials[-2].write_text(sidecar)
        encode_audio(partials[-1], result.audio, fmt, audio_metadata(result))
    if overwrite and latents is None:
        latents_path(path).unlink(missing_ok=True)  # the replaced result's: it would pass as ours
    return path
