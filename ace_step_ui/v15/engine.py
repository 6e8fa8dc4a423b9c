"""ACE-Step 1.5 on diffusers' `AceStepPipeline`: generate (with the song's metadata, and with the
planner's audio codes when thinking), cover, the stems, and the windows of inpaint and outpaint.

diffusers regenerates the whole clip when it repaints and has no extend (see
../shared/reference/ace_step_15_diffusers.md §1.4); edits.py cuts the window, this engine runs it:
1. the window goes to the model at 48 kHz stereo, padded to whole latent frames (extend: the
   source context plus silence where the new audio goes);
2. diffusers repaints the new span of it, with the noise drawn here from the seeds;
3. the re-rendered window goes back to edits.py, which splices it into the original.
Cover runs diffusers' cover task on the whole source (at most 240 s) and returns it in the source's
length, rate and channels.

The edit task and audio-to-audio (a reference track) are ACE-Step v1's; 1.5 refuses them before any
work, and does not honour v1's other parameters (ERG, oss_steps, a generate variance). LoRAs load
through diffusers' `AceStepLoraLoaderMixin` (diffusers' or upstream's peft files), scaled per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import audio as audio_ops
from ..audio import Audio
from ..edits import fit_end, to_source
from ..engines import (DEFAULT_MODEL, V15_MODEL, EngineOutput, Family, StepCallback, pick_device,
                       pick_dtype,
                       read_json, register)
from ..errors import InputError
from ..planning import AUDIO_CODE_PREFIX
from ..hub import download, local_checkpoint, lora_file, require_files
from ..speed import Speed, checkpoint_mode
from ..requests import (CompleteRequest, CoverRequest, EditRequest, ExtractRequest,
                        GenerateRequest, InpaintRequest, LegoRequest, OutpaintRequest, Request,
                        is_instrumental)

BASE_MODEL = "ACE-Step/acestep-v15-xl-base-diffusers"
HUB_IDS = (V15_MODEL, BASE_MODEL)
PIPELINE_CLASS = "AceStepPipeline"

COMMON = frozenset({"tags", "lyrics", "seed", "number_of_steps", "lora", "lora_scale"})
# diffusers' own file name, and peft's, which upstream 1.5's LoRA training writes (diffusers converts it).
LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
GUIDED = frozenset({"guidance_scale", "guidance_interval"})  # base only: turbo is distilled
METADATA = frozenset({"bpm", "keyscale", "timesignature", "vocal_language"})
TASK_PARAMS = {
    "generate": frozenset({"duration", "thinking"}) | METADATA,
    "prompt_to_audio": frozenset({"prompt", "instrumental", "duration", "thinking"}),
    "inpaint": frozenset({"audio", "start_time", "start_time_relative_to", "end_time",
                          "end_time_relative_to", "variance", "retake_seed", "context_duration",
                          "crossfade_duration", "extra_ranges"}),
    "outpaint": frozenset({"audio", "extend_before_duration", "extend_after_duration",
                           "context_duration"}),
    "cover": frozenset({"audio", "audio_cover_strength"}),
    "extract": frozenset({"audio", "track_name"}),
    "lego": frozenset({"audio", "track_name"}),
    "complete": frozenset({"audio", "track_classes"}),
}
BASE_TASKS = ("extract", "lego", "complete")  # upstream trains only the base models for these
MIN_THINKING_S = 10.0  # the 5 Hz LM plans 10 to 600 s (upstream's DURATION_MIN)


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


def load(root: Path, model: str, device: str = "auto", dtype: str = "auto",
         speed: Speed = Speed()) -> "AceStep15Engine":
    """diffusers' pipeline on `device`; in offload mode its parts wait in CPU memory and go to the
    GPU in turn (diffusers' model offload, CUDA only), in sequential mode each layer does
    (diffusers' sequential offload); `speed.compile` compiles the DiT (not when sequential)."""
    from diffusers import AceStepPipeline

    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    pipe = AceStepPipeline.from_pretrained(root, dtype=torch_dtype)
    mode = checkpoint_mode(speed.memory, root, torch_device, torch_dtype, dit_folder="transformer")
    streamed = mode == "sequential" and torch_device.type == "cuda"
    if streamed:  # diffusers' sequential offload: each layer's weights go to the GPU as it runs
        pipe.enable_sequential_cpu_offload(device=torch_device)
    elif mode == "offload" and torch_device.type == "cuda":
        pipe.enable_model_cpu_offload(device=torch_device)
    else:
        pipe.to(torch_device)
    if speed.compile and not streamed:
        pipe.transformer.compile(dynamic=None)
    pipe.set_progress_bar_config(disable=True)
    return AceStep15Engine(pipe, model, torch_device)


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


def check_request(model: str, request: Request) -> None:
    """Refuse what only ACE-Step v1 can do, before the source is read or the model loaded."""
    if isinstance(request, EditRequest):
        raise _needs_v1("edit (audio-to-audio)")
    if isinstance(request, GenerateRequest) and request.reference_audio:
        raise _needs_v1("audio-to-audio from a reference_audio", "or clear reference_audio")
    thinking = getattr(request, "thinking", False)
    if thinking and request.duration < MIN_THINKING_S:
        raise InputError(f"thinking plans songs of {MIN_THINKING_S:g} s or more (the 5 Hz LM's "
                         f"shortest); set duration to at least {MIN_THINKING_S:g} or turn "
                         f"thinking off")
    if request.task in BASE_TASKS and variant_of(model) != "base":
        raise InputError(f"{request.task} runs on an ACE-Step 1.5 base model such as {BASE_MODEL}; "
                         f"upstream does not train the turbo models for it")


def _needs_v1(what: str, alternative: str = "") -> InputError:
    return InputError(f"{what} needs ACE-Step v1 ({DEFAULT_MODEL}); choose it as the model"
                      + (f", {alternative}" if alternative else ""))


def presets(model: str, task: str) -> dict[str, Any]:
    """The variant's own steps (and guidance, on base), for the parameters it applies to `task`."""
    variant = variant_of(model)
    preset = PRESETS[variant]
    values = {"number_of_steps": preset.steps, "guidance_scale": preset.guidance_scale}
    return {name: value for name, value in values.items() if name in honoured(variant, task)}


register(Family(name="ACE-Step 1.5", hub_ids=HUB_IDS, is_checkpoint=is_checkpoint, resolve=resolve,
                load=load, honoured=lambda model, task: honoured(variant_of(model), task),
                check_request=check_request, returns_latents=False, presets=presets))


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
    def __init__(self, pipe: Any, model_id: str, device: torch.device | None = None):
        self.pipe = pipe
        self.model_id = model_id
        # Where the DiT runs and the noise is drawn (in offload mode `pipe.device` is the CPU).
        self.device = device or pipe.device
        self.sample_rate = int(pipe.sample_rate)
        self.frames_per_latent = round(pipe.sample_rate / pipe.latents_per_second)
        self.variant = "turbo" if pipe.is_turbo else "base"
        self.preset = PRESETS[self.variant]
        self.lora: str | None = None  # the LoRA loaded into the transformer, as the request named it

    def honoured(self, task: str) -> frozenset[str]:
        return honoured(self.variant, task)

    def generate(self, request: GenerateRequest, seed: int, retake_seed: int,
                 on_step: StepCallback, reference: Audio | None = None,
                 audio_codes: str = "") -> EngineOutput:
        """A song from the request; with `audio_codes` (the planner's, 5 a second), the DiT
        renders those codes, as diffusers does with them (its cover of the codes)."""
        # v1's retake variance is not honoured here: the song is the seed's (reported as ignored).
        if reference is not None:
            raise _needs_v1("audio-to-audio from a reference_audio", "or clear reference_audio")
        settings = {**self._settings(request), **song_metadata(request)}
        # diffusers sizes its noise from latent_length / latents_per_second, which rounds one frame
        # too long for some lengths (1.113 s: 28 frames, noise 29); we draw the same noise at its length.
        latent_frames = math.ceil(request.duration * self.pipe.latents_per_second)
        task_kwargs: dict[str, Any] = {}
        if audio_codes:
            # The codes set the length: each code is pool_window_size latent frames.
            pool = int(self.pipe.audio_token_detokenizer.config.pool_window_size)
            codes = audio_codes.count(AUDIO_CODE_PREFIX)
            latent_frames = codes * pool
            task_kwargs["audio_codes"] = audio_codes
            settings["audio_codes"] = codes
        shape = (1, latent_frames, self.pipe.transformer.config.audio_acoustic_hidden_dim)
        latents = blended_noise(shape, seed, seed, 0.0, self.device, self.pipe.transformer.dtype)
        wave = self._run(request, settings, seed, on_step, latents=latents,
                         audio_duration=latent_frames / self.pipe.latents_per_second if audio_codes
                         else request.duration, **song_metadata(request), **task_kwargs)
        frames = audio_ops.seconds_to_frames(request.duration, self.sample_rate)
        return EngineOutput(Audio(fit_end(wave, frames), self.sample_rate),
                            {**settings, "latent_frames": latent_frames}, unused=unused(request))

    def repaint(self, request: InpaintRequest, window: Audio, start_s: float, end_s: float,
                seed: int, retake_seed: int, on_step: StepCallback) -> EngineOutput:
        settings = self._settings(request)
        wave = self._repaint(request, settings, self._model_audio(window), start_s, end_s, seed,
                             retake_seed, request.variance, on_step)
        return EngineOutput(Audio(wave, self.sample_rate), settings, unused=unused(request))

    extends_both_sides = False  # diffusers repaints one span a call

    def extend(self, request: OutpaintRequest, context: Audio, before_s: float, after_s: float,
               seed: int, retake_seed: int, on_step: StepCallback) -> EngineOutput:
        """New audio of `before_s` or `after_s` (one side) next to `context`."""
        if before_s > 0 and after_s > 0:
            raise ValueError("ACE-Step 1.5 extends one side a call")
        settings = self._settings(request)
        seconds = before_s or after_s
        pad = audio_ops.silence(2, audio_ops.seconds_to_frames(seconds, self.sample_rate))
        heard = self._model_audio(context)
        window = torch.cat([pad, heard] if before_s > 0 else [heard, pad], dim=-1)
        start_s = 0.0 if before_s > 0 else heard.shape[-1] / self.sample_rate
        # Noise from `seed` alone: the padding is all new, there is no earlier take to stay near.
        wave = self._repaint(request, settings, window, start_s, start_s + seconds, seed, seed, 0.0,
                             on_step)
        made = pad.shape[-1] / self.sample_rate
        return EngineOutput(Audio(wave, self.sample_rate), settings, unused=unused(request),
                            extension_s=(made, 0.0) if before_s > 0 else (0.0, made))

    def edit(self, request: EditRequest, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
        raise _needs_v1("edit (audio-to-audio)")

    def cover(self, request: CoverRequest, source: Audio, seed: int, retake_seed: int,
              on_step: StepCallback) -> EngineOutput:
        """The source's semantic codes (its FSQ tokens) as the structure, sung from the tags and
        lyrics."""
        return self._whole_track(request, source, seed, on_step, task_type="cover",
                                 audio_cover_strength=request.audio_cover_strength)

    def extract(self, request: ExtractRequest, source: Audio, seed: int, retake_seed: int,
                on_step: StepCallback) -> EngineOutput:
        return self._whole_track(request, source, seed, on_step, task_type="extract",
                                 track_name=request.track_name)

    def lego(self, request: LegoRequest, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
        return self._whole_track(request, source, seed, on_step, task_type="lego",
                                 track_name=request.track_name)

    def complete(self, request: CompleteRequest, source: Audio, seed: int, retake_seed: int,
                 on_step: StepCallback) -> EngineOutput:
        return self._whole_track(request, source, seed, on_step, task_type="complete",
                                 complete_track_classes=request.track_list or None)

    def _whole_track(self, request: Any, source: Audio, seed: int, on_step: StepCallback,
                     **task_kwargs: Any) -> EngineOutput:
        """A diffusers task on the whole source; the result has the source's length, rate and
        channels."""
        settings = {**self._settings(request),
                    **{key: value for key, value in task_kwargs.items() if key != "task_type"}}
        wave = self._on_source(request, settings, self._model_audio(source), seed, seed, 0.0, on_step,
                               **task_kwargs)
        rendered = to_source(Audio(wave, self.sample_rate), source, source.frames)
        return EngineOutput(Audio(rendered, source.sample_rate), settings, unused=unused(request))

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

    def _model_audio(self, audio: Audio) -> torch.Tensor:
        """`audio` at the model's rate, stereo."""
        return audio_ops.to_stereo(audio_ops.resample_audio(audio, self.sample_rate)).samples

    def _repaint(self, request: Any, settings: dict[str, Any], window: torch.Tensor, start_s: float,
                 end_s: float, seed: int, retake_seed: int, variance: float,
                 on_step: StepCallback) -> torch.Tensor:
        return self._on_source(request, settings, window, seed, retake_seed, variance, on_step,
                               task_type="repaint", repainting_start=start_s, repainting_end=end_s)

    def _on_source(self, request: Any, settings: dict[str, Any], window: torch.Tensor, seed: int,
                   retake_seed: int, variance: float, on_step: StepCallback,
                   **task_kwargs: Any) -> torch.Tensor:
        """A task on `window` (48 kHz stereo): its output, as long as the window."""
        frames = window.shape[-1]
        hop = self.frames_per_latent
        padded = fit_end(window, math.ceil(frames / hop) * hop)  # whole latent frames, exact lengths
        latent_frames = padded.shape[-1] // hop
        shape = (1, latent_frames, self.pipe.transformer.config.audio_acoustic_hidden_dim)
        latents = blended_noise(shape, seed, retake_seed, variance, self.device,
                                self.pipe.transformer.dtype)
        # The VAE samples its posterior from the global RNG; seed it so a seed gives one song.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            wave = self._run(request, settings, seed, on_step, src_audio=padded,
                             audio_duration=padded.shape[-1] / self.sample_rate, latents=latents,
                             **task_kwargs)
        return wave[:, :frames]

    def _run(self, request: Any, settings: dict[str, Any], seed: int, on_step: StepCallback,
             **task_kwargs: Any) -> torch.Tensor:
        steps = settings["num_inference_steps"]

        def step_end(pipe: Any, step: int, timestep: float, tensors: dict) -> dict:
            on_step(step + 1, steps)
            return tensors

        start, end = settings["cfg_interval"]
        self._use_lora(request.lora)
        if self.lora is not None:
            task_kwargs["attention_kwargs"] = {"scale": request.lora_scale}
        output = self.pipe(prompt=request.tags, lyrics=lyrics_for_v15(request.lyrics),
                           num_inference_steps=settings["num_inference_steps"],
                           guidance_scale=settings["guidance_scale"], shift=settings["shift"],
                           cfg_interval_start=start, cfg_interval_end=end,
                           callback_on_step_end=step_end, output_type="pt", **task_kwargs)
        return output.audios[0].float().cpu()

    def _use_lora(self, name: str) -> None:
        """Load (or switch, or with "" unload) the transformer's LoRA through diffusers' loader."""
        wanted = name or None
        if wanted == self.lora:
            return
        if self.lora is not None:
            self.pipe.unload_lora_weights()
            self.lora = None
        if wanted is None:
            return
        path = lora_file(wanted, LORA_FILES)
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        except (ValueError, KeyError, RuntimeError) as error:
            self.pipe.unload_lora_weights()
            reason = " ".join(str(error).split())[:300]
            raise InputError(f"the LoRA {wanted} does not fit {self.model_id} ({reason}); a LoRA "
                             f"is made for one ACE-Step 1.5 model size") from None
        if not self.pipe.get_list_adapters():  # diffusers only warns when no key matched
            raise InputError(f"the LoRA {wanted} has no weights for ACE-Step 1.5's transformer "
                             f"(an ACE-Step v1 LoRA?); choose a LoRA made for {self.model_id}")
        self.lora = wanted


def song_metadata(request: GenerateRequest) -> dict[str, Any]:
    """The request's bpm, key, time signature and language as diffusers takes them; what is not
    given is left out (diffusers writes "N/A", and "en" for the language)."""
    given = {"bpm": request.bpm or None, "keyscale": request.keyscale.strip() or None,
             "timesignature": str(request.timesignature) if request.timesignature else None,
             "vocal_language": request.vocal_language.strip().lower() or None}
    return {name: value for name, value in given.items() if value is not None}


def unused(request: Any) -> frozenset[str]:
    """What the request set that this run does not use: a LoRA weight without a LoRA."""
    return frozenset() if request.lora else frozenset({"lora_scale"})
