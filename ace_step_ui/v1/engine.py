"""ACE-Step v1 as an engine: each request becomes one `V1Job` of the pipeline.

- `seed` seeds the start noise; `retake_seed` the retake noise alone (the caller derives it from
  `seed` when it is not given).
- generate: text2music; with `variance` > 0 upstream's retake; with a reference, audio2audio.
- repaint (inpaint's window): the range's latent frames, `variance` as the retake variance.
- extend (outpaint's window): new latent frames before and after, variance 1 as upstream's UI sends.
- edit: FlowEdit from the original tags/lyrics to the new ones, with upstream's UI presets.

Lengths are made in upstream's whole latent frames (10.77 a second, truncated), so the same seed
gives upstream's song; the audio is then fitted to exactly the requested length: the part of a
frame upstream does not make (under 93 ms) is silence at the end of a song or at the outer end of
an extension.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..audio import Audio, seconds_to_frames
from ..edits import fit_end, to_source
from ..engines import (V15_MODEL, EngineOutput, Family, StepCallback, pick_device, pick_dtype,
                       register)
from ..errors import InputError
from ..requests import (CompleteRequest, CoverRequest, ExtractRequest, GenerateRequest, Request,
                        LegoRequest)
from . import checkpoint
from ..speed import Speed, checkpoint_mode
from .autoencoder import LATENT_FRAMES_PER_SECOND
from .pipeline import (EDIT_PRESETS, EditTarget, Sampling, V1Job, V1Pipeline,
                       check_audio2audio_steps, frames_of, latent_frames)
from .transformer import is_training_only

SAMPLE_RATE = 48000
SAMPLING = frozenset({"number_of_steps", "scheduler", "guidance_type", "granularity_scale",
                      "guidance_interval", "guidance_interval_decay", "guidance_scale",
                      "minimum_guidance_scale", "tag_guidance_scale", "lyric_guidance_scale",
                      "use_erg_tag", "use_erg_lyric", "use_erg_diffusion", "oss_steps"})
COMMON = frozenset({"tags", "lyrics", "seed", "lora", "lora_scale"})
TASK_PARAMS = {
    "generate": COMMON | SAMPLING | {"duration", "variance", "retake_seed", "reference_audio",
                                     "audio2audio_strength"},
    "inpaint": COMMON | SAMPLING | {"audio", "start_time", "start_time_relative_to", "end_time",
                                    "end_time_relative_to", "variance", "retake_seed",
                                    "context_duration", "crossfade_duration", "extra_ranges"},
    "outpaint": COMMON | SAMPLING | {"audio", "extend_before_duration", "extend_after_duration",
                                     "retake_seed", "context_duration"},
    # The planner writes the song; v1 sings it as a generate.
    "prompt_to_audio": (COMMON - {"tags", "lyrics"}) | SAMPLING | {"prompt", "instrumental",
                                                                   "duration"},
    # FlowEdit always runs the Euler schedule with APG and no ERG or guidance interval; the
    # scheduler only chooses between the ODE and pingpong updates.
    "edit": COMMON | {"audio", "edit_mode", "original_tags", "original_lyrics", "retake_seed",
                      "number_of_steps", "scheduler", "guidance_scale"},
}


def honoured(model: str, task: str) -> frozenset[str]:
    return TASK_PARAMS.get(task, frozenset())


def check_request(model: str, request: Request) -> None:
    """Refuse what v1 cannot run, before any audio is read or the model loaded."""
    if isinstance(request, (CoverRequest, ExtractRequest, LegoRequest, CompleteRequest)):
        raise InputError(f"{request.task} is an ACE-Step 1.5 task: choose an ACE-Step 1.5 model such "
                         f"as {V15_MODEL}")
    if isinstance(request, GenerateRequest) and request.reference_audio:
        if request.variance > 0:
            raise InputError("variance (a retake) and reference_audio (audio-to-audio) are two "
                             "different ways to vary a song in ACE-Step v1; set only one of them")
        check_audio2audio_steps(request.audio2audio_strength, sampling_of(request).base_steps)


def sampling_of(request: Any) -> Sampling:
    """The request's sampler settings (the edit request has only some of them)."""
    names = [field.name for field in dataclasses.fields(Sampling)]
    given = {name: getattr(request, name) for name in names if hasattr(request, name)}
    return Sampling(**{**given, "oss_steps": tuple(given.get("oss_steps", ()))})


class V1Engine:
    sample_rate = SAMPLE_RATE
    extends_both_sides = True

    def __init__(self, pipeline: V1Pipeline, model_id: str):
        self.pipeline = pipeline
        self.model_id = model_id

    def honoured(self, task: str) -> frozenset[str]:
        return honoured(self.model_id, task)

    def generate(self, request, seed: int, retake_seed: int, on_step: StepCallback,
                 reference: Audio | None = None) -> EngineOutput:
        job = self._job(request, seed, retake_seed, task="text2music",
                        frames=max(1, frames_of(request.duration)))
        seconds = request.duration
        if reference is not None:
            job = dataclasses.replace(job, task="audio2audio", reference=reference,
                                      reference_strength=request.audio2audio_strength)
            seconds = reference.duration_s  # the reference sets the length, as upstream
        elif request.variance > 0:
            job = dataclasses.replace(job, task="retake", variance=request.variance)
        output = self._run(job, on_step)
        audio = output.audio
        return dataclasses.replace(output, audio=Audio(fit_end(audio.samples, seconds_to_frames(
            seconds, audio.sample_rate)), audio.sample_rate))

    def repaint(self, request, window: Audio, start_s: float, end_s: float, seed: int,
                retake_seed: int, on_step: StepCallback) -> EngineOutput:
        job = self._job(request, seed, retake_seed, task="repaint", source=window,
                        region=(frames_of(start_s), frames_of(end_s)), variance=request.variance)
        return self._run(job, on_step)

    def extend(self, request, context: Audio, before_s: float, after_s: float, seed: int,
               retake_seed: int, on_step: StepCallback) -> EngineOutput:
        source_frames = latent_frames(context)
        # Upstream's frames for repaint_start = -before, repaint_end = duration + after; at least
        # one where a side is asked for at all.
        left = max(1, frames_of(before_s)) if before_s > 0 else 0
        right = (max(1, frames_of(context.duration_s + after_s) - source_frames) if after_s > 0
                 else 0)
        job = self._job(request, seed, retake_seed, task="extend", source=context,
                        extension=(left, right), variance=1.0)
        output = self._run(job, on_step)
        made_before_s = left / LATENT_FRAMES_PER_SECOND
        made_after_s = (left + source_frames + right) / LATENT_FRAMES_PER_SECOND - made_before_s \
            - context.duration_s
        return dataclasses.replace(output, extension_s=(made_before_s, made_after_s))

    def edit(self, request, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
        n_min, n_max = EDIT_PRESETS[request.edit_mode]
        # Upstream's UI: empty new lyrics keep the original ones.
        target = EditTarget(tags=request.tags, lyrics=request.lyrics or request.original_lyrics,
                            n_min=n_min, n_max=n_max)
        job = self._job(request, seed, retake_seed, task="edit", source=source, edit=target,
                        tags=request.original_tags, lyrics=request.original_lyrics)
        output = self._run(job, on_step)
        # The source's length, rate and channels, like every other edit.
        return dataclasses.replace(output, audio=Audio(to_source(output.audio, source, source.frames),
                                                       source.sample_rate))

    def _job(self, request, seed: int, retake_seed: int, **fields: Any) -> V1Job:
        settings = {"tags": request.tags, "lyrics": request.lyrics, "seeds": (seed,),
                    "retake_seeds": (retake_seed,), "sampling": sampling_of(request),
                    "lora": request.lora, "lora_scale": request.lora_scale}
        return V1Job(**{**settings, **fields})

    def _run(self, job: V1Job, on_step: StepCallback) -> EngineOutput:
        result = self.pipeline(job, on_step=on_step)
        return EngineOutput(audio=result.audio[0], effective=effective(job), latents=result.latents,
                            unused=unused_parameters(job))


def effective(job: V1Job) -> dict[str, Any]:
    """What the job ran with, under the request's names where it has them."""
    values: dict[str, Any] = {"task": job.task, "seeds": list(job.seeds)}
    if job.task in ("retake", "repaint", "extend", "edit"):
        values["retake_seeds"] = list(job.retake_seeds)
    values.update(dataclasses.asdict(job.sampling), oss_steps=list(job.sampling.oss_steps))
    if job.task in ("text2music", "retake"):
        values["frames"] = job.frames
    if job.task in ("retake", "repaint"):
        values["variance"] = job.variance
    if job.task == "repaint":
        values["region_frames"] = list(job.region)
    if job.task == "extend":
        values["extension_frames"] = list(job.extension)
    if job.task == "audio2audio":
        values["audio2audio_strength"] = job.reference_strength
    if job.edit is not None:
        values.update(edit_n_min=job.edit.n_min, edit_n_max=job.edit.n_max)
    if job.lora:
        values.update(lora=job.lora, lora_scale=job.lora_scale)
    return values


def unused_parameters(job: V1Job) -> frozenset[str]:
    """What the request set that this particular job does not use."""
    unused = set()
    if job.task in ("text2music", "audio2audio"):
        unused.add("retake_seed")  # no retake noise is drawn
    if not job.lora:
        unused.add("lora_scale")
    return frozenset(unused)


def load(root: Path, model: str, device: str, dtype: str, speed: Speed = Speed()) -> V1Engine:
    chosen = pick_device(device)
    torch_dtype = pick_dtype(dtype, chosen)
    mode = checkpoint_mode(speed.memory, root, chosen, torch_dtype, dit_folder=checkpoint.TRANSFORMER,
                           skip=is_training_only)
    pipeline = V1Pipeline.load(root, chosen, torch_dtype, offload=mode == "offload",
                               sequential=mode == "sequential", compile=speed.compile)
    return V1Engine(pipeline, model)


register(Family(name="ACE-Step v1", hub_ids=(checkpoint.HUB_ID,),
                is_checkpoint=checkpoint.is_checkpoint, resolve=checkpoint.resolve, load=load,
                honoured=honoured, check_request=check_request))
