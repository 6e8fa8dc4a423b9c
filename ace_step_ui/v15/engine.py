"""ACE-Step 1.5 on diffusers' `AceStepPipeline`: generate, inpaint and outpaint.

diffusers regenerates the whole clip when it repaints and has no extend, so both are completed here
(see ../shared/reference/ace_step_15_diffusers.md §1.4):
1. the model sees a window of the source around the edit, at 48 kHz stereo, padded to whole latent
   frames (outpaint: the source context plus zeros where the new audio goes);
2. diffusers repaints the edited span of that window;
3. the result goes back to the source's sample rate and channels, is level-matched to the source
   context it re-rendered (diffusers peak-normalises every output), and is spliced into the original
   with equal-power crossfades inside the edited range, so every sample outside it is the input's.

The edit task and audio-to-audio (a reference track) are ACE-Step v1's; 1.5 refuses them before any
work, and does not honour v1's other parameters (ERG, oss_steps, LoRA, a generate variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import audio as audio_ops
from ..audio import Audio
from ..engines import (DEFAULT_MODEL, EngineOutput, Family, StepCallback, pick_device, pick_dtype,
                       read_json, register)
from ..errors import InputError
from ..hub import download, local_checkpoint, require_files
from ..requests import (BaseRequest, EditRequest, GenerateRequest, InpaintRequest, OutpaintRequest,
                        is_instrumental)

HUB_IDS = ("ACE-Step/acestep-v15-xl-turbo-diffusers", "ACE-Step/acestep-v15-xl-base-diffusers")
PIPELINE_CLASS = "AceStepPipeline"
MAX_WINDOW_S = 240.0  # the model sees at most this much around an edit (upstream v1's window)
MIN_CONTEXT_S = 10.0
CROSSFADE_S = 0.05

COMMON = frozenset({"tags", "lyrics", "seed", "number_of_steps"})
GUIDED = frozenset({"guidance_scale", "guidance_interval"})  # base only: turbo is distilled
TASK_PARAMS = {
    "generate": frozenset({"duration"}),
    "inpaint": frozenset({"audio", "start_time", "start_time_relative_to", "end_time",
                          "end_time_relative_to", "variance", "retake_seed"}),
    "outpaint": frozenset({"audio", "extend_before_duration", "extend_after_duration"}),
}


@dataclass(frozen=True)
class Preset:
    """Per-variant defaults from upstream's training registry (turbo 8 steps shift 3; base 50, 1)."""

    steps: int
    shift: float
    guidance_scale: float


PRESETS = {"turbo": Preset(steps=8, shift=3.0, guidance_scale=1.0),
           "base": Preset(steps=50, shift=1.0, guidance_scale=7.0)}


def is_checkpoint(folder: Path) -> bool:
    root = local_checkpoint(str(folder))
    return root is not None and read_json(root / "model_index.json").get("_class_name") == PIPELINE_CLASS


def resolve(model: str) -> Path:
    """The local folder of `model` (a folder, a Hub-cache folder or a Hub id), checked complete."""
    # What AceStepPipeline.from_pretrained reads, as diffusers' own download picks it: the index, each
    # component's config and safetensors weights (whole or sharded; no precision variants, .bin or
    # .onnx copies), the tokenizer and scheduler folders. Nothing else of a repo is downloaded.
    files = ("model_index.json", "*/config.json",
             "*/diffusion_pytorch_model.safetensors", "*/diffusion_pytorch_model.safetensors.index.json",
             "*/diffusion_pytorch_model-*-of-*.safetensors",
             "*/model.safetensors", "*/model.safetensors.index.json", "*/model-*-of-*.safetensors",
             "tokenizer/*", "scheduler/*")
    root = local_checkpoint(model) or download(model, allow_patterns=files)
    index = read_json(root / "model_index.json")
    if index.get("_class_name") != PIPELINE_CLASS:
        require_files(root, ["model_index.json"], model)
        raise_not_v15(model, root)
    components = [name for name, spec in index.items()
                  if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None]
    require_files(root, components, model)
    return root


def raise_not_v15(model: str, root: Path) -> None:
    from ..errors import ModelUnavailableError

    raise ModelUnavailableError(f"{model} at {root} is not an ACE-Step 1.5 diffusers checkpoint "
                                f"(model_index.json does not name {PIPELINE_CLASS})")


def load(root: Path, model: str, device: str = "auto", dtype: str = "auto") -> "AceStep15Engine":
    from diffusers import AceStepPipeline

    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    pipe = AceStepPipeline.from_pretrained(root, dtype=torch_dtype).to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    return AceStep15Engine(pipe, model)


def variant_of(model: str) -> str:
    """turbo or base, told from a local folder's transformer config or else from the Hub id."""
    root = local_checkpoint(model)
    if root is not None:
        config = read_json(root / "transformer" / "config.json")
        turbo = bool(config.get("is_turbo")) or config.get("model_version") == "turbo"
    else:
        turbo = "turbo" in model.lower()
    return "turbo" if turbo else "base"


def honoured(variant: str, task: str) -> frozenset[str]:
    """The request parameters a 1.5 `variant` applies for `task` (none for a task it lacks)."""
    if task not in TASK_PARAMS:
        return frozenset()
    return COMMON | (GUIDED if variant == "base" else frozenset()) | TASK_PARAMS[task]


def check_request(model: str, request: BaseRequest) -> None:
    """Refuse what only ACE-Step v1 can do, before the source is read or the model loaded."""
    if isinstance(request, EditRequest):
        raise _needs_v1("edit (audio-to-audio)")
    if isinstance(request, GenerateRequest) and request.reference_audio:
        raise _needs_v1("audio-to-audio from a reference_audio", "or clear reference_audio")


def _needs_v1(what: str, alternative: str = "") -> InputError:
    return InputError(f"{what} needs ACE-Step v1 ({DEFAULT_MODEL}); choose it as the model"
                      + (f", {alternative}" if alternative else ""))


register(Family(name="ACE-Step 1.5", hub_ids=HUB_IDS, is_checkpoint=is_checkpoint, resolve=resolve,
                load=load, honoured=lambda model, task: honoured(variant_of(model), task),
                check_request=check_request, returns_latents=False))


def lyrics_for_v15(lyrics: str) -> str:
    # 1.5 spells the no-vocals marker "[Instrumental]"; v1's [inst] / [instrumental] map onto it.
    return "[Instrumental]" if is_instrumental(lyrics) else lyrics


def guidance_window(interval: float) -> tuple[float, float]:
    """The hosted `guidance_interval` (a centred share of the steps) as diffusers' cfg interval."""
    return (1.0 - interval) / 2.0, (1.0 + interval) / 2.0


def blended_noise(shape: tuple[int, ...], seed: int, retake_seed: int, variance: float,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """cos·N(seed) + sin·N(retake_seed) at angle variance·π/2, as upstream's retake mixes noise."""
    from diffusers.utils.torch_utils import randn_tensor

    def noise(s: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(s)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    if variance <= 0:
        return noise(seed)
    angle = variance * math.pi / 2
    return math.cos(angle) * noise(seed) + math.sin(angle) * noise(retake_seed)


class AceStep15Engine:
    def __init__(self, pipe: Any, model_id: str):
        self.pipe = pipe
        self.model_id = model_id
        self.sample_rate = int(pipe.sample_rate)
        self.frames_per_latent = round(pipe.sample_rate / pipe.latents_per_second)
        self.variant = "turbo" if pipe.is_turbo else "base"
        self.preset = PRESETS[self.variant]

    def honoured(self, task: str) -> frozenset[str]:
        return honoured(self.variant, task)

    def generate(self, request: GenerateRequest, seed: int, retake_seed: int,
                 on_step: StepCallback, reference: Audio | None = None) -> EngineOutput:
        # v1's retake variance is not honoured here: the song is the seed's (reported as ignored).
        if reference is not None:
            raise _needs_v1("audio-to-audio from a reference_audio", "or clear reference_audio")
        settings = self._settings(request)
        # diffusers sizes its noise from latent_length / latents_per_second, which rounds one frame
        # too long for some lengths (1.113 s: 28 frames, noise 29); we draw the same noise at its length.
        latent_frames = math.ceil(request.duration * self.pipe.latents_per_second)
        shape = (1, latent_frames, self.pipe.transformer.config.audio_acoustic_hidden_dim)
        latents = blended_noise(shape, seed, seed, 0.0, self.pipe.device, self.pipe.transformer.dtype)
        wave = self._run(request, settings, seed, on_step, total_steps=settings["num_inference_steps"],
                         audio_duration=request.duration, latents=latents)
        frames = audio_ops.seconds_to_frames(request.duration, self.sample_rate)
        return EngineOutput(Audio(_fit(wave, frames), self.sample_rate),
                            {**settings, "latent_frames": latent_frames})

    def inpaint(self, request: InpaintRequest, source: Audio, start_s: float, end_s: float,
                seed: int, retake_seed: int, on_step: StepCallback) -> EngineOutput:
        settings = self._settings(request)
        context_s = max(MIN_CONTEXT_S, (MAX_WINDOW_S - (end_s - start_s)) / 2)
        window_start_s = max(0.0, start_s - context_s)
        window_end_s = min(source.duration_s, end_s + context_s)
        window = self._model_audio(source, window_start_s, window_end_s)
        rendered = self._repaint(request, settings, window, start_s - window_start_s,
                                 end_s - window_start_s, seed, retake_seed, request.variance, on_step,
                                 step_offset=0, total_steps=settings["num_inference_steps"])
        rendered = self._back_to_source(rendered, source, window_end_s - window_start_s)

        first = audio_ops.seconds_to_frames(window_start_s, source.sample_rate)
        start = audio_ops.seconds_to_frames(start_s, source.sample_rate)
        end = audio_ops.seconds_to_frames(end_s, source.sample_rate)
        last = first + rendered.shape[-1]
        original = source.samples
        context = torch.cat([original[:, first:start], original[:, end:last]], dim=-1)
        rendered_context = torch.cat([rendered[:, :start - first], rendered[:, end - first:]], dim=-1)
        gain = audio_ops.level_match_gain(context, rendered_context)
        replacement = original.clone()
        replacement[:, first:last] = rendered * gain
        fade = audio_ops.seconds_to_frames(CROSSFADE_S, source.sample_rate)
        spliced = audio_ops.splice(original, replacement, start, end, fade)
        return EngineOutput(Audio(spliced, source.sample_rate),
                            {**settings, "window_s": [window_start_s, window_end_s], "gain": gain})

    def outpaint(self, request: OutpaintRequest, source: Audio, seed: int, retake_seed: int,
                 on_step: StepCallback) -> EngineOutput:
        settings = self._settings(request)
        sides = [(side, seconds) for side, seconds in (("before", request.extend_before_duration),
                                                       ("after", request.extend_after_duration))
                 if seconds > 0]
        steps = settings["num_inference_steps"]
        pieces: dict[str, torch.Tensor] = {}
        gains: dict[str, float] = {}
        for index, (side, seconds) in enumerate(sides):
            pieces[side], gains[side] = self._extend(request, settings, source, side, seconds, seed,
                                                     on_step, index * steps, len(sides) * steps)
        channels = source.channels
        before = pieces.get("before", torch.zeros(channels, 0))
        after = pieces.get("after", torch.zeros(channels, 0))
        extended = torch.cat([before, source.samples, after], dim=-1)
        return EngineOutput(Audio(extended, source.sample_rate), {**settings, "gain": gains})

    def edit(self, request: EditRequest, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
        raise _needs_v1("edit (audio-to-audio)")

    def _extend(self, request: OutpaintRequest, settings: dict[str, Any], source: Audio, side: str,
                seconds: float, seed: int, on_step: StepCallback, step_offset: int,
                total_steps: int) -> tuple[torch.Tensor, float]:
        """New audio of `seconds` on one `side` of the source, at the source's rate and channels."""
        context_s = min(source.duration_s, max(MIN_CONTEXT_S, MAX_WINDOW_S - seconds))
        if side == "before":
            context = self._model_audio(source, 0.0, context_s)
        else:
            context = self._model_audio(source, source.duration_s - context_s, source.duration_s)
        new_frames = audio_ops.seconds_to_frames(seconds, self.sample_rate)
        pad = audio_ops.silence(2, new_frames)
        window = torch.cat([pad, context] if side == "before" else [context, pad], dim=-1)
        start_s, end_s = (0.0, seconds) if side == "before" else (context_s, context_s + seconds)
        # Noise from `seed` alone: the padding is all new, there is no earlier take to stay near.
        rendered = self._repaint(request, settings, window, start_s, end_s, seed, seed, 0.0, on_step,
                                 step_offset, total_steps)
        rendered = self._back_to_source(rendered, source, context_s + seconds)
        new = audio_ops.seconds_to_frames(seconds, source.sample_rate)
        if side == "before":
            piece, rendered_context = rendered[:, :new], rendered[:, new:]
            reference = source.samples[:, :rendered_context.shape[-1]]
        else:
            piece, rendered_context = rendered[:, -new:], rendered[:, :-new]
            reference = source.samples[:, source.frames - rendered_context.shape[-1]:]
        gain = audio_ops.level_match_gain(reference, rendered_context)
        return piece * gain, gain

    def _settings(self, request: Any) -> dict[str, Any]:
        """The values this call runs with: the request's where set, else the variant's preset."""
        steps = request.number_of_steps if request.is_set("number_of_steps") else self.preset.steps
        guidance = self.preset.guidance_scale
        interval = (0.0, 1.0)
        if self.variant == "base":
            if request.is_set("guidance_scale"):
                guidance = request.guidance_scale
            if request.is_set("guidance_interval"):
                interval = guidance_window(request.guidance_interval)
        return {"variant": self.variant, "num_inference_steps": steps, "shift": self.preset.shift,
                "guidance_scale": guidance, "cfg_interval": list(interval)}

    def _model_audio(self, source: Audio, start_s: float, end_s: float) -> torch.Tensor:
        """[start_s, end_s) of the source at the model's rate, stereo."""
        first = audio_ops.seconds_to_frames(start_s, source.sample_rate)
        last = audio_ops.seconds_to_frames(end_s, source.sample_rate)
        piece = Audio(source.samples[:, first:last], source.sample_rate)
        return audio_ops.to_stereo(audio_ops.resample_audio(piece, self.sample_rate)).samples

    def _back_to_source(self, rendered: torch.Tensor, source: Audio, seconds: float) -> torch.Tensor:
        """Model output back at the source's rate and channel count, `seconds` long."""
        audio = audio_ops.resample_audio(Audio(rendered, self.sample_rate), source.sample_rate)
        audio = audio_ops.to_channels(audio, source.channels)
        return _fit(audio.samples, audio_ops.seconds_to_frames(seconds, source.sample_rate))

    def _repaint(self, request: Any, settings: dict[str, Any], window: torch.Tensor, start_s: float,
                 end_s: float, seed: int, retake_seed: int, variance: float, on_step: StepCallback,
                 step_offset: int, total_steps: int) -> torch.Tensor:
        frames = window.shape[-1]
        hop = self.frames_per_latent
        padded = _fit(window, math.ceil(frames / hop) * hop)  # whole latent frames, exact lengths
        latent_frames = padded.shape[-1] // hop
        shape = (1, latent_frames, self.pipe.transformer.config.audio_acoustic_hidden_dim)
        latents = blended_noise(shape, seed, retake_seed, variance, self.pipe.device,
                                self.pipe.transformer.dtype)
        # The VAE samples its posterior from the global RNG; seed it so a seed gives one song.
        devices = [self.pipe.device] if self.pipe.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            wave = self._run(request, settings, seed, on_step, step_offset=step_offset,
                             total_steps=total_steps, src_audio=padded, task_type="repaint",
                             audio_duration=padded.shape[-1] / self.sample_rate,
                             repainting_start=start_s, repainting_end=end_s, latents=latents)
        return wave[:, :frames]

    def _run(self, request: Any, settings: dict[str, Any], seed: int, on_step: StepCallback,
             total_steps: int, step_offset: int = 0, **task_kwargs: Any) -> torch.Tensor:
        def step_end(pipe: Any, step: int, timestep: float, tensors: dict) -> dict:
            on_step(step_offset + step + 1, total_steps)
            return tensors

        start, end = settings["cfg_interval"]
        output = self.pipe(prompt=request.tags, lyrics=lyrics_for_v15(request.lyrics),
                           num_inference_steps=settings["num_inference_steps"],
                           guidance_scale=settings["guidance_scale"], shift=settings["shift"],
                           cfg_interval_start=start, cfg_interval_end=end,
                           callback_on_step_end=step_end, output_type="pt", **task_kwargs)
        return output.audios[0].float().cpu()


def _fit(samples: torch.Tensor, frames: int) -> torch.Tensor:
    """Trim or zero-pad (channels, n) to exactly `frames`."""
    if samples.shape[-1] >= frames:
        return samples[..., :frames]
    return torch.nn.functional.pad(samples, (0, frames - samples.shape[-1]))
