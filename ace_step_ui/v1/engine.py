"""ACE-Step v1 as an engine: the hosted requests mapped onto upstream's pipeline call.

- `seed` is upstream's manual seed; `retake_seed` seeds the retake noise alone (the caller derives
  it from `seed` when it is not given).
- generate: text2music; with `variance` > 0 upstream's retake; with a reference, audio2audio.
- inpaint: repaint of the resolved range with `variance` as the retake variance.
- outpaint: extend with `repaint_start = -before` and `repaint_end = source duration + after`,
  which is what upstream's UI sends (variance 1); past 240 s with both sides, one side at a time.
- edit: FlowEdit from the original tags/lyrics to the new ones, with upstream's UI presets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..audio import Audio
from ..engines import EngineOutput, Family, StepCallback, pick_device, pick_dtype, register
from ..errors import InputError
from ..requests import BaseRequest, GenerateRequest
from . import checkpoint
from . import pipeline as pipeline_module
from .autoencoder import LATENT_FRAMES_PER_SECOND
from .pipeline import EDIT_PRESETS, PipelineCall, V1Pipeline, check_audio2audio_steps

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
                                    "end_time_relative_to", "variance", "retake_seed"},
    "outpaint": COMMON | SAMPLING | {"audio", "extend_before_duration", "extend_after_duration",
                                     "retake_seed"},
    # FlowEdit always runs the Euler schedule with APG and no ERG or guidance interval; the
    # scheduler only chooses between the ODE and pingpong updates.
    "edit": COMMON | {"audio", "edit_mode", "original_tags", "original_lyrics", "retake_seed",
                      "number_of_steps", "scheduler", "guidance_scale"},
}


def honoured(model: str, task: str) -> frozenset[str]:
    return TASK_PARAMS.get(task, frozenset())


def check_request(model: str, request: BaseRequest) -> None:
    """Refuse what v1 cannot run, before any audio is read or the model loaded."""
    if isinstance(request, GenerateRequest) and request.reference_audio:
        if request.variance > 0:
            raise InputError("variance (a retake) and reference_audio (audio-to-audio) are two "
                             "different ways to vary a song in ACE-Step v1; set only one of them")
        check_audio2audio_steps(request.audio2audio_strength, request.number_of_steps)


def sampling_arguments(request: Any) -> dict[str, Any]:
    """The request's sampler settings under upstream's argument names."""
    lora = getattr(request, "lora", "") or "none"
    return dict(
        prompt=request.tags, lyrics=request.lyrics, infer_step=request.number_of_steps,
        scheduler_type=request.scheduler, cfg_type=request.guidance_type,
        omega_scale=request.granularity_scale, guidance_interval=request.guidance_interval,
        guidance_interval_decay=request.guidance_interval_decay,
        guidance_scale=request.guidance_scale, min_guidance_scale=request.minimum_guidance_scale,
        guidance_scale_text=request.tag_guidance_scale,
        guidance_scale_lyric=request.lyric_guidance_scale,
        use_erg_tag=getattr(request, "use_erg_tag", True),
        use_erg_lyric=getattr(request, "use_erg_lyric", True),
        use_erg_diffusion=getattr(request, "use_erg_diffusion", True),
        oss_steps=list(getattr(request, "oss_steps", ()) or ()),
        lora_name_or_path=lora, lora_weight=getattr(request, "lora_scale", 1.0))


class V1Engine:
    sample_rate = SAMPLE_RATE

    def __init__(self, pipeline: V1Pipeline, model_id: str):
        self.pipeline = pipeline
        self.model_id = model_id

    def honoured(self, task: str) -> frozenset[str]:
        return honoured(self.model_id, task)

    def generate(self, request, seed: int, retake_seed: int, on_step: StepCallback,
                 reference: Audio | None = None) -> EngineOutput:
        variance = getattr(request, "variance", 0.0)
        arguments = dict(task="text2music", audio_duration=request.duration)
        if reference is not None:
            arguments.update(audio2audio_enable=True, ref_audio=reference,
                             ref_audio_strength=getattr(request, "audio2audio_strength", 0.5))
        elif variance > 0:
            arguments.update(task="retake", retake_variance=variance)
        return self._run(request, seed, retake_seed, on_step, **arguments)

    def inpaint(self, request, source: Audio, start_s: float, end_s: float, seed: int,
                retake_seed: int, on_step: StepCallback) -> EngineOutput:
        return self._run(request, seed, retake_seed, on_step, task="repaint", src_audio=source,
                         repaint_start=start_s, repaint_end=end_s, retake_variance=request.variance,
                         audio_duration=source.duration_s)

    def outpaint(self, request, source: Audio, seed: int, retake_seed: int,
                 on_step: StepCallback) -> EngineOutput:
        before, after = request.extend_before_duration, request.extend_after_duration
        total_frames = int((before + source.duration_s + after) * LATENT_FRAMES_PER_SECOND)
        if before > 0 and after > 0 and total_frames > pipeline_module.MAX_FRAMES:
            # The model sees at most 240 s: extend the start first, then the end of that result.
            first = self._extend(request, source, before, 0.0, seed, retake_seed, on_step)
            second = self._extend(request, first.audio, 0.0, after, seed, retake_seed, on_step)
            second.effective["passes"] = [first.effective, dict(second.effective)]
            return second
        return self._extend(request, source, before, after, seed, retake_seed, on_step)

    def _extend(self, request, source: Audio, before: float, after: float, seed: int,
                retake_seed: int, on_step: StepCallback) -> EngineOutput:
        return self._run(request, seed, retake_seed, on_step, task="extend", src_audio=source,
                         repaint_start=-before, repaint_end=source.duration_s + after,
                         retake_variance=1.0, audio_duration=source.duration_s)

    def edit(self, request, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
        n_min, n_max = EDIT_PRESETS[request.edit_mode]
        arguments = sampling_arguments(request)
        arguments.update(prompt=request.original_tags, lyrics=request.original_lyrics,
                         edit_target_prompt=request.tags,
                         # Upstream's UI: empty new lyrics keep the original ones.
                         edit_target_lyrics=request.lyrics or request.original_lyrics)
        call = PipelineCall(task="edit", src_audio=source, audio_duration=source.duration_s,
                            edit_n_min=n_min, edit_n_max=n_max, manual_seeds=seed,
                            retake_seeds=retake_seed, **arguments)
        return self._output(call, on_step)

    def _run(self, request, seed: int, retake_seed: int, on_step: StepCallback,
             **arguments: Any) -> EngineOutput:
        call = PipelineCall(manual_seeds=seed, retake_seeds=retake_seed,
                            **sampling_arguments(request), **arguments)
        return self._output(call, on_step)

    def _output(self, call: PipelineCall, on_step: StepCallback) -> EngineOutput:
        result = self.pipeline(call, on_step=on_step)
        effective = {key: value for key, value in result.params.items()
                     if key not in ("prompt", "lyrics", "edit_target_prompt", "edit_target_lyrics")}
        return EngineOutput(audio=result.audio[0], effective=effective, latents=result.latents,
                            unused=unused_parameters(call, result.params["task"]))


def unused_parameters(call: PipelineCall, task: str) -> frozenset[str]:
    """What the request set that this particular call does not use."""
    unused = set()
    if task in ("text2music", "audio2audio"):
        unused.add("retake_seed")  # no retake noise is drawn
    if call.lora_name_or_path == "none":
        unused.add("lora_scale")
    return frozenset(unused)


def load(root: Path, model: str, device: str, dtype: str) -> V1Engine:
    chosen = pick_device(device)
    return V1Engine(V1Pipeline.load(root, chosen, pick_dtype(dtype, chosen)), model)


register(Family(name="ACE-Step v1", hub_ids=(checkpoint.HUB_ID,),
                is_checkpoint=checkpoint.is_checkpoint, resolve=checkpoint.resolve, load=load,
                honoured=honoured, check_request=check_request))
