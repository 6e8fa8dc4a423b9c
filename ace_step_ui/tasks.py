"""The one path from a request to a result, shared by the UI, the Gradio API, the CLI and the tests.

1. validate the request, and check that the model's family can run it (no heavy work before);
2. fetch and read the source (and reference) audio, resolve the edited range against its duration;
3. pick the seeds;
4. load the model (first use only) and run the task on it, one job at a time;
5. describe what ran: the seeds used, the values the engine applied, the parameters it ignored.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .audio import Audio, read_audio, write_audio
from .engines import DEFAULT_MODEL, EngineManager, StepCallback, family_for
from .errors import Cancelled, InputError
from .remote import resolve_audio_source
from .requests import (EditRequest, GenerateRequest, InpaintRequest, OutpaintRequest, SourceRequest,
                       derive_retake_seed, parse_request, resolve_range, resolve_seed)

APP_NAME = "ace_step_ui"
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


def run(task: str, payload: Mapping[str, Any], manager: EngineManager, model: str,
        on_step: StepCallback | None = None, owner: str = "", need_latents: bool = False) -> Result:
    """Run `task` on `model`; `need_latents` refuses, before any work, a model that returns none."""
    request = parse_request(task, payload)
    family = family_for(model)
    family.check_request(model, request)
    if need_latents and not family.returns_latents:
        raise no_latents_error(model)
    source = reference = None
    source_info: dict[str, Any] = {}
    if isinstance(request, SourceRequest):
        source = read_audio(resolve_audio_source(request.audio, work_dir()))
        source_info["source"] = describe(source)
    if isinstance(request, GenerateRequest) and request.reference_audio:
        reference = read_audio(resolve_audio_source(request.reference_audio, work_dir()))
        source_info["reference"] = describe(reference)
    edit_range: tuple[float, float] | None = None
    if isinstance(request, InpaintRequest):
        assert source is not None
        edit_range = resolve_range(request, source.duration_s)
        source_info["range_s"] = list(edit_range)

    seed = resolve_seed(request.seed)
    retake_seed = request.retake_seed if request.retake_seed >= 0 else derive_retake_seed(seed)

    with manager.job(owner) as stop, manager.gpu_lock:
        if stop.is_set():
            raise Cancelled("stopped by the user before it started")
        started = time.perf_counter()
        engine = manager.get(model)
        loaded = time.perf_counter()
        step = manager.step_callback(on_step, stop)
        if isinstance(request, GenerateRequest):
            output = engine.generate(request, seed, retake_seed, step, reference=reference)
        elif isinstance(request, InpaintRequest):
            assert source is not None and edit_range is not None
            output = engine.inpaint(request, source, *edit_range, seed, retake_seed, step)
        elif isinstance(request, EditRequest):
            assert source is not None
            output = engine.edit(request, source, seed, retake_seed, step)
        else:
            assert isinstance(request, OutpaintRequest) and source is not None
            output = engine.outpaint(request, source, seed, retake_seed, step)
        finished = time.perf_counter()

    honoured = engine.honoured(task) - output.unused
    sent = request.to_dict()
    params = {
        "task": task,
        "model": model,
        "tags": request.tags,
        "lyrics": request.lyrics,
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
        "sample_rate": output.audio.sample_rate,
        "channels": output.audio.channels,
        "duration_s": round(output.audio.duration_s, 6),
        "timings_s": {"load": round(loaded - started, 3), "run": round(finished - loaded, 3)},
    }
    return Result(output.audio, seed, params, output.latents)


def describe(audio: Audio) -> dict[str, Any]:
    return {"sample_rate": audio.sample_rate, "channels": audio.channels,
            "duration_s": round(audio.duration_s, 6)}


def audio_metadata(result: Result) -> dict[str, Any]:
    return {"tags": result.params["tags"], "lyrics": result.params["lyrics"], "seed": result.seed,
            "params": result.params}


def output_stem(result: Result) -> str:
    tags = re.sub(r"[^a-z0-9]+", "-", result.params["tags"].lower()).strip("-")[:40] or "song"
    return f"{result.params['task']}-{tags}-{result.seed}"


def no_latents_error(model: str) -> InputError:
    return InputError(f"the model {model} returns no diffusion latents, so none can be saved; "
                      f"ACE-Step v1 ({DEFAULT_MODEL}) does")


def latents_path(audio_path: str | Path) -> Path:
    """Where `save_result` puts the latents of the audio at `audio_path`: same folder and stem."""
    audio_path = Path(audio_path)
    return audio_path.with_name(audio_path.stem + LATENTS_SUFFIX)


def save_result(result: Result, directory: str | Path, fmt: str, stem: str | None = None,
                save_latents: bool = False) -> Path:
    """Write the audio (with its metadata) and a JSON sidecar of the same stem; return the audio.

    With `save_latents`, also `<stem>.latents.safetensors`: the one tensor `latents`, float32, as
    the engine gave it (batch, channels, height, frames).
    """
    if save_latents and result.latents is None:
        raise no_latents_error(result.params.get("model", ""))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or output_stem(result)
    path = write_audio(directory / f"{stem}.{fmt}", result.audio, fmt, audio_metadata(result))
    extra: dict[str, Any] = {"audio_path": str(path)}
    if save_latents:
        from safetensors.torch import save_file

        assert result.latents is not None
        tensor = result.latents.detach().to(device="cpu", dtype=torch.float32).contiguous()
        save_file({"latents": tensor}, str(latents_path(path)))
        extra["latents_path"] = str(latents_path(path))
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**result.params, **extra}, indent=2, ensure_ascii=False))
    return path
