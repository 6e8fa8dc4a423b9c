"""Upstream ACE-Step's keyword call (`ACEStepPipeline.__call__`) mapped onto our `V1Job`.

The parity tests replay the fixture's recorded calls through `run_call`: it parses seeds and
oss_steps as upstream does, works out the task and its frames in upstream's arithmetic, runs our
pipeline and returns upstream's params dict beside the output.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch

from ace_step_ui.audio import Audio
from ace_step_ui.errors import InputError
from ace_step_ui.v1.pipeline import (EditTarget, PipelineOutput, Sampling, V1Job, V1Pipeline,
                                     frames_of, latent_frames)

SEED_LIMIT = 2 ** 32
# Our Sampling field <- upstream's keyword.
SAMPLING_NAMES = {
    "number_of_steps": "infer_step", "scheduler": "scheduler_type", "guidance_type": "cfg_type",
    "granularity_scale": "omega_scale", "guidance_scale": "guidance_scale",
    "guidance_interval": "guidance_interval", "guidance_interval_decay": "guidance_interval_decay",
    "minimum_guidance_scale": "min_guidance_scale", "tag_guidance_scale": "guidance_scale_text",
    "lyric_guidance_scale": "guidance_scale_lyric", "use_erg_tag": "use_erg_tag",
    "use_erg_lyric": "use_erg_lyric", "use_erg_diffusion": "use_erg_diffusion",
}


@dataclass(frozen=True, kw_only=True)
class PipelineCall:
    """Upstream `ACEStepPipeline.__call__` arguments (same names and defaults), audio as `Audio`."""

    task: str = "text2music"
    prompt: str = ""
    lyrics: str = ""
    audio_duration: float = 60.0
    infer_step: int = 60
    guidance_scale: float = 15.0
    scheduler_type: str = "euler"
    cfg_type: str = "apg"
    omega_scale: float = 10.0
    manual_seeds: Any = None
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True
    oss_steps: Any = None
    guidance_scale_text: float = 0.0
    guidance_scale_lyric: float = 0.0
    audio2audio_enable: bool = False
    ref_audio_strength: float = 0.5
    ref_audio: Audio | None = None
    lora_name_or_path: str = "none"
    lora_weight: float = 1.0
    retake_seeds: Any = None
    retake_variance: float = 0.5
    repaint_start: float = 0.0
    repaint_end: float = 0.0
    src_audio: Audio | None = None
    edit_target_prompt: str | None = None
    edit_target_lyrics: str | None = None
    edit_n_min: float = 0.0
    edit_n_max: float = 1.0
    edit_n_avg: int = 1
    batch_size: int = 1


def parse_seeds(seeds: Any) -> int | list[int] | None:
    """Upstream's seed parsing: "1,2" -> [1, 2]; "7" -> 7; an int or a list of ints; else None."""
    if isinstance(seeds, str):
        if "," in seeds:
            return [int(part) for part in seeds.split(",")]
        return int(seeds) if seeds.isdigit() else None
    if isinstance(seeds, bool):
        return None
    if isinstance(seeds, int):
        return seeds
    if isinstance(seeds, (list, tuple)) and seeds and all(isinstance(s, int) for s in seeds):
        return list(seeds)
    return None


def batch_seeds(seeds: Any, batch_size: int) -> tuple[int, ...]:
    """Upstream `set_seeds`: one seed per item; seeds it cannot parse are drawn from torch's RNG."""
    chosen = parse_seeds(seeds)
    picked = []
    for item in range(batch_size):
        if chosen is None:
            picked.append(int(torch.randint(0, SEED_LIMIT, (1,)).item()))
        elif isinstance(chosen, int):
            picked.append(chosen)
        else:
            picked.append(chosen[min(item, len(chosen) - 1)])
    return tuple(picked)


def parse_oss_steps(oss_steps: Any) -> tuple[int, ...]:
    """"16, 29, 52" (upstream's text form) or a list of ints -> the steps; empty -> ()."""
    if oss_steps is None or oss_steps == "":
        return ()
    if isinstance(oss_steps, str):
        return tuple(int(part) for part in oss_steps.split(","))
    return tuple(int(step) for step in oss_steps)


def task_of(call: PipelineCall) -> str:
    return "audio2audio" if call.audio2audio_enable and call.ref_audio is not None else call.task


def to_job(call: PipelineCall) -> V1Job:
    """The job our pipeline runs for `call`, with upstream's seeds, frames and task decisions."""
    task = task_of(call)
    seeds = batch_seeds(call.manual_seeds, call.batch_size)
    retake_seeds = batch_seeds(call.retake_seeds, call.batch_size)
    settings = Sampling(**{ours: getattr(call, theirs) for ours, theirs in SAMPLING_NAMES.items()},
                        oss_steps=parse_oss_steps(call.oss_steps))
    job = V1Job(task=task, tags=call.prompt, lyrics=call.lyrics, seeds=seeds, retake_seeds=retake_seeds,
                sampling=settings, frames=frames_of(call.audio_duration), source=call.src_audio,
                variance=call.retake_variance,
                reference=call.ref_audio if task == "audio2audio" else None,
                reference_strength=call.ref_audio_strength,
                lora="" if call.lora_name_or_path == "none" else call.lora_name_or_path,
                lora_scale=call.lora_weight)
    if task == "edit":
        if call.edit_target_prompt is None:
            raise InputError("the edit task needs the new tags (edit_target_prompt)")
        target = EditTarget(tags=call.edit_target_prompt, lyrics=call.edit_target_lyrics or "",
                            n_min=call.edit_n_min, n_max=call.edit_n_max, n_avg=call.edit_n_avg)
        return dataclasses.replace(job, edit=target)
    if task in ("repaint", "extend") and call.src_audio is not None:
        # Upstream decides from frames whether a repaint or an extend call extends the source.
        frames = latent_frames(call.src_audio)
        start, end = frames_of(call.repaint_start), frames_of(call.repaint_end)
        if start < 0 or end > frames:
            return dataclasses.replace(job, task="extend",
                                       extension=(max(0, -start), max(0, end - frames)))
        return dataclasses.replace(job, task="repaint", region=(start, end))
    return job


def upstream_params(call: PipelineCall, job: V1Job) -> dict[str, Any]:
    """The params dict upstream returns (without paths and time costs)."""
    names = [f.name for f in dataclasses.fields(PipelineCall)
             if f.name not in ("src_audio", "ref_audio", "batch_size", "manual_seeds", "retake_seeds")]
    params = {name: getattr(call, name) for name in names}
    params.update(task=task_of(call), actual_seeds=list(job.seeds), retake_seeds=list(job.retake_seeds),
                  oss_steps=list(job.sampling.oss_steps))
    if params["task"] == "edit":
        params.update(prompt=call.edit_target_prompt, lyrics=call.edit_target_lyrics)
    if params["task"] == "retake":
        params.update(repaint_start=0, repaint_end=call.audio_duration)
    return params


def run_call(pipeline: V1Pipeline, call: PipelineCall, on_step=None
             ) -> tuple[PipelineOutput, dict[str, Any]]:
    """Run upstream's `call` on our pipeline: the output and upstream's params dict."""
    if call.audio_duration <= 0:
        # Upstream's "random length": 30-240 s from Python's global RNG.
        call = dataclasses.replace(call, audio_duration=random.uniform(30.0, 240.0))
    job = to_job(call)
    return pipeline(job, on_step=on_step), upstream_params(call, job)
