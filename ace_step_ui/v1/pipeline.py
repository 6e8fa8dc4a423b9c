"""The ACE-Step v1 pipeline: upstream's `ACEStepPipeline.__call__` on one typed `V1Job`.

`__call__` reads as its steps: lyrics and LoRA, seeds, conditions, source latents, task latents,
denoise, decode. The task's start latents are pure functions (`start_noise`, `repaint_latents`,
`extend_latents`, `audio2audio_latents`); the loops are `sampling.py`'s samplers. A job is
upstream's call in the app's own terms (the request's parameter names, int seeds, the edited region
in latent frames); the tests map upstream's keyword calls onto it and compare with a recording of
upstream. Where upstream crashes or returns the wrong length we deviate, and say so where it happens.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..audio import Audio, to_channels
from ..errors import InputError
from ..speed import compile_blocks, lent
from . import checkpoint, sampling
from .autoencoder import (LATENT_FRAMES_PER_SECOND, MODEL_SAMPLE_RATE, OUTPUT_SAMPLE_RATE,
                          SAMPLES_PER_LATENT_FRAME, MusicDCAE, build_dcae)
from .lyrics import MAX_LYRIC_TOKENS, LyricTokenizer
from .text_encoder import TextEncoder
from .transformer import ACEStepTransformer, Condition, TransformerConfig, is_training_only
from .vocoder import HiFiGANVocoder, VocoderConfig
from .vocab import lyric_vocab_path
from .weights import build_on_meta, load_weights

SPEAKER_DIM = 512  # the released checkpoint has no speaker input; upstream feeds zeros of this size
LATENT_CHANNELS = 8
LATENT_HEIGHT = 16
TASKS = ("text2music", "retake", "repaint", "extend", "audio2audio", "edit")
EDIT_PRESETS = {"lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}  # upstream UI: only_lyrics, remix

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """The sampler settings, under the request's names (upstream's in the comments)."""

    number_of_steps: int = 60  # infer_step
    scheduler: str = "euler"  # scheduler_type
    guidance_type: str = "apg"  # cfg_type
    granularity_scale: float = 10.0  # omega_scale
    guidance_scale: float = 15.0
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    minimum_guidance_scale: float = 3.0  # min_guidance_scale
    tag_guidance_scale: float = 0.0  # guidance_scale_text
    lyric_guidance_scale: float = 0.0  # guidance_scale_lyric
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True
    oss_steps: tuple[int, ...] = ()  # 1-based steps of a max(oss_steps)-step schedule

    @property
    def guided(self) -> bool:
        return self.guidance_scale not in (0.0, 1.0)

    @property
    def double_condition(self) -> bool:
        """Separate tag and lyric guidance: upstream's rule, both scales above 1."""
        return self.tag_guidance_scale > 1.0 and self.lyric_guidance_scale > 1.0

    @property
    def base_steps(self) -> int:
        """The step count the repaint start and audio2audio derive from (upstream: max(oss_steps))."""
        return max(self.oss_steps) if self.oss_steps else self.number_of_steps


@dataclass(frozen=True, kw_only=True)
class EditTarget:
    """FlowEdit's target description and upstream's `edit_n_min` / `edit_n_max` / `edit_n_avg`."""

    tags: str
    lyrics: str
    n_min: float
    n_max: float
    n_avg: int = 1


@dataclass(frozen=True, kw_only=True)
class V1Job:
    """One pipeline run. `seeds` has one entry per batch item, as does `retake_seeds` (the noise
    `variance` blends in: retake, repaint, extend; FlowEdit's noise)."""

    task: str
    tags: str
    lyrics: str
    seeds: tuple[int, ...]
    retake_seeds: tuple[int, ...]
    sampling: Sampling = Sampling()
    frames: int = 0  # text2music, retake: latent frames to make
    source: Audio | None = None  # repaint, extend, edit
    region: tuple[int, int] = (0, 0)  # repaint: source latent frames [start, end) made anew
    extension: tuple[int, int] = (0, 0)  # extend: new latent frames before and after the source
    variance: float = 0.5  # retake, repaint, extend: upstream's retake_variance
    reference: Audio | None = None  # audio2audio
    reference_strength: float = 0.5
    edit: EditTarget | None = None
    lora: str = ""  # a LoRA name or path as lora.lora_weights_path takes it; "" = none
    lora_scale: float = 1.0

    @property
    def batch_size(self) -> int:
        return len(self.seeds)


@dataclass
class PipelineOutput:
    latents: torch.Tensor  # final latents of the diffusion loop [B, 8, 16, frames]
    audio: list[Audio]  # one 48 kHz stereo clip per batch item


@dataclass
class Conditions:
    """Everything the transformer is conditioned on, for a batch."""

    text_hidden: torch.Tensor
    text_mask: torch.Tensor
    text_hidden_erg: torch.Tensor | None
    speaker: torch.Tensor
    lyric_ids: torch.Tensor
    lyric_mask: torch.Tensor


@dataclass
class Repaint:
    """What `sampling.sample_repaint` runs on: where it starts and what stays the source's."""

    x0: torch.Tensor  # the source latents the unmasked frames return to
    z0: torch.Tensor  # the noise the masked frames start from
    mask: torch.Tensor  # 1 where new audio is made
    first_step: int  # steps before it are skipped (variance < 1 keeps the start of the path)


def check_job(job: V1Job) -> None:
    """What upstream asserts (or crashes on later), as messages that say what to fix."""
    if job.task not in TASKS:
        raise InputError(f"the v1 task must be one of {', '.join(TASKS)}, not '{job.task}'")
    if not job.seeds or len(job.retake_seeds) != len(job.seeds):
        raise InputError("a v1 job needs one seed and one retake seed per batch item")
    if job.task in ("repaint", "extend", "edit") and job.source is None:
        raise InputError(f"the {job.task} task needs source audio")
    if job.task == "edit" and job.edit is None:
        raise InputError("the edit task needs the new tags and lyrics")
    if job.task == "audio2audio":
        if job.reference is None:
            raise InputError("audio-to-audio needs a reference track")
        check_audio2audio_steps(job.reference_strength, job.sampling.base_steps)
    if job.task in ("text2music", "retake") and job.frames < 1:
        raise InputError(f"a song needs at least one latent frame ({1 / LATENT_FRAMES_PER_SECOND:.3f} s)")
    sampling.check_scheduler(job.sampling.scheduler)
    if job.sampling.guidance_type not in ("apg", "cfg", "cfg_star"):
        raise InputError(f"guidance type must be apg, cfg or cfg_star, not '{job.sampling.guidance_type}'")
    if job.sampling.scheduler == "heun" and job.sampling.oss_steps:
        raise InputError("oss_steps work with the euler and pingpong schedulers, not heun")


def check_audio2audio_steps(strength: float, steps: int) -> None:
    """Audio-to-audio runs int((1 - strength) x steps) steps: refuse a request that runs none."""
    if int((1 - strength) * steps) < 1:
        raise InputError(f"audio-to-audio runs (1 - audio2audio_strength) x number_of_steps = "
                         f"{(1 - strength) * steps:g} steps, less than one; lower "
                         f"audio2audio_strength or raise number_of_steps")


def latent_frames(audio: Audio) -> int:
    """Frames `encode_audio` makes of `audio`: its 44.1 kHz length padded to whole frames."""
    model_samples = -(-audio.frames * MODEL_SAMPLE_RATE // audio.sample_rate)
    return -(-model_samples // SAMPLES_PER_LATENT_FRAME)


def frames_of(seconds: float) -> int:
    """Upstream's seconds -> latent frames: int(seconds x 44100 / 512 / 8), truncated."""
    return int(seconds * LATENT_FRAMES_PER_SECOND)


class V1Pipeline:
    def __init__(self, text_encoder: TextEncoder, transformer: ACEStepTransformer, dcae: MusicDCAE,
                 lyric_tokenizer: LyricTokenizer, device: torch.device, dtype: torch.dtype):
        self.text_encoder = text_encoder
        self.transformer = transformer
        self.dcae = dcae
        self.lyric_tokenizer = lyric_tokenizer
        self.device = device
        self.dtype = dtype
        self.lora: tuple[str, float] | None = None
        # The guidance passes of a step (conditional, text-only, unconditional) as one batched
        # forward, not upstream's two or three: fewer, bigger GEMMs (0.7x the DiT time of a tiny
        # song on 2 CPU cores). The numbers differ from separate passes by float32 rounding only
        # (the parity suite's margins are the same either way); False runs upstream's passes.
        self.batch_guidance = True
        # Offload mode: the text encoder, autoencoder and vocoder stay in CPU memory and are lent
        # to the device for their stage (`parts_on_device`); resident: they stay on the device.
        self.offload = False

    @classmethod
    def load(cls, root: Path, device: torch.device, dtype: torch.dtype, *, offload: bool = False,
             sequential: bool = False, compile: bool = False) -> "V1Pipeline":
        """Load every component of the checkpoint at `root` straight into `dtype` on `device`
        (with `offload`, all but the DiT into CPU memory; `sequential`, the DiT's blocks too,
        streamed to the device one at a time); `compile` the DiT's blocks (not when streamed:
        the compiled graphs would be guarded on weights that change place at every call)."""
        from ..engines import read_json

        def weights(component: str) -> Path:
            return root / component / checkpoint.WEIGHTS[component]

        offload = offload or sequential
        parts_device = torch.device("cpu") if offload else device
        config = TransformerConfig.from_json(read_json(root / checkpoint.TRANSFORMER / "config.json"))
        dit_device = parts_device if sequential else device
        transformer = load_weights(build_on_meta(lambda: ACEStepTransformer(config)),
                                   weights(checkpoint.TRANSFORMER), dit_device, dtype,
                                   skip=is_training_only)
        if sequential:
            transformer.stream_blocks(device)
        dcae_config = read_json(root / checkpoint.AUTOENCODER / "config.json")
        dcae = load_weights(build_on_meta(lambda: build_dcae(dcae_config)),
                            weights(checkpoint.AUTOENCODER), parts_device, dtype)
        vocoder_config = VocoderConfig.from_json(read_json(root / checkpoint.VOCODER / "config.json"))
        vocoder = load_weights(build_on_meta(lambda: HiFiGANVocoder(vocoder_config)),
                               weights(checkpoint.VOCODER), parts_device, dtype).fold_weight_norm()
        text_encoder = TextEncoder.load(root / checkpoint.TEXT_ENCODER, parts_device, dtype)
        lyric_tokenizer = LyricTokenizer.from_file(lyric_vocab_path(root))
        if compile and not sequential:
            compile_blocks(transformer.transformer_blocks)
        pipeline = cls(text_encoder, transformer, MusicDCAE(dcae, vocoder), lyric_tokenizer, device,
                       dtype)
        pipeline.offload = offload
        return pipeline

    def parts_on_device(self, *parts: str) -> AbstractContextManager[None]:
        """The named parts (text_encoder, autoencoder) on the device for a stage: a no-op unless
        `offload`."""
        modules = {"text_encoder": [self.text_encoder.model],
                   "autoencoder": [self.dcae.dcae, self.dcae.vocoder]}
        return lent([module for part in parts for module in modules[part]] if self.offload else [],
                    self.device)

    @torch.no_grad()
    def __call__(self, job: V1Job, on_step: StepCallback | None = None) -> PipelineOutput:
        check_job(job)
        settings, batch = job.sampling, job.batch_size
        # 1. Lyrics first, so that too many tokens are refused before any model runs; the LoRA.
        lyric_ids = self.lyric_ids(job.lyrics, "the original lyrics" if job.edit else "the lyrics")
        target_lyric_ids = self.lyric_ids(job.edit.lyrics, "the lyrics") if job.edit else []
        self.use_lora(job.lora, job.lora_scale)

        # 2. Seeds: one generator per batch item for the start noise, one for the retake noise.
        generators = self.generators(job.seeds)
        retake_generators = self.generators(job.retake_seeds)

        # 3. Conditions: tags through UMT5 (and its ERG variant), lyric token ids.
        with self.parts_on_device("text_encoder"):
            conditions = self.conditions(job.tags, lyric_ids, batch, erg_tag=settings.use_erg_tag)
            target = (self.conditions(job.edit.tags, target_lyric_ids, batch, erg_tag=False)
                      if job.edit else None)

        # 4. Source latents.
        with self.parts_on_device("autoencoder"):
            source = self.encode_audio(job.source) if job.source is not None else None
            reference = self.encode_audio(job.reference) if job.task == "audio2audio" else None

        if job.task == "edit":
            assert source is not None and target is not None and job.edit is not None
            # 5-6. FlowEdit from the source latents towards the target description.
            latents = self.flow_edit(job, conditions, target, source, retake_generators, on_step)
        else:
            # 5. Task latents: the noise the sampler starts from and what the source keeps.
            frames = job.frames
            for latents_given in (source, reference):
                if latents_given is not None:
                    frames = latents_given.shape[-1]
            noise = self.noise((batch, LATENT_CHANNELS, LATENT_HEIGHT, frames), generators)
            schedule = sampling_schedule(settings, self.dtype).to(self.device)
            repaint = None
            if job.task == "audio2audio":
                assert reference is not None
                schedule, noise = audio2audio_latents(settings, reference, noise, job.reference_strength)
                schedule = schedule.to(self.device)
            elif job.task != "text2music":
                left, right = job.extension if job.task == "extend" else (0, 0)
                # Deviation: upstream draws the retake noise at the source length and fails (an
                # assertion) when one side is extended by more than that; we draw enough for the
                # longer side in that case only, so every extension upstream runs gets its noise.
                retake = self.noise((batch, LATENT_CHANNELS, LATENT_HEIGHT, max(frames, left, right)),
                                    retake_generators)
                first_step = int(settings.base_steps * (1 - job.variance))
                blended = retake_blend(noise, retake[..., :frames], job.variance)
                if job.task == "extend":
                    assert source is not None
                    repaint = extend_latents(source, noise, retake, left, right, first_step)
                elif job.task == "repaint" and job.region != (0, frames):
                    assert source is not None
                    repaint = repaint_latents(source, noise, blended, job.region, first_step)
                else:  # a retake, or a repaint of every frame: new from the blended noise
                    noise = blended
            frames = repaint.x0.shape[-1] if repaint is not None else noise.shape[-1]

            # 6. Denoise.
            attention_mask = torch.ones(batch, frames, device=self.device, dtype=self.dtype)
            velocity = self.guided_velocity(settings, conditions, attention_mask,
                                            schedule.num_inference_steps)
            if repaint is not None:
                latents = sampling.sample_repaint(velocity, repaint.x0, repaint.z0, repaint.mask,
                                                  schedule, first_step=repaint.first_step,
                                                  on_step=on_step)
            else:
                latents = sampling.sample(velocity, noise, schedule, settings.scheduler,
                                          omega_scale=settings.granularity_scale,
                                          generator=generators[0], on_step=on_step)

        # 7. Decode: latents -> 48 kHz stereo.
        with self.parts_on_device("autoencoder"):
            return PipelineOutput(latents=latents, audio=self.decode_latents(latents))

    def generators(self, seeds: tuple[int, ...]) -> list[torch.Generator]:
        return [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]

    def noise(self, shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(tuple(shape), generator=generators, device=self.device, dtype=self.dtype)

    def lyric_ids(self, lyrics: str, what: str) -> list[int]:
        """Upstream's `tokenize_lyrics`, [] for no lyrics; `what` names them if they are too long."""
        ids = self.lyric_tokenizer.encode(lyrics) if len(lyrics) > 0 else []
        if len(ids) > MAX_LYRIC_TOKENS:
            raise InputError(f"{what} make {len(ids):,} lyric tokens; ACE-Step v1 reads at most "
                             f"{MAX_LYRIC_TOKENS:,} (the most it was trained on): shorten them")
        return ids

    def conditions(self, tags: str, lyric_ids: list[int], batch_size: int, erg_tag: bool) -> Conditions:
        text_hidden, text_mask = self.text_encoder.encode(tags)
        text_hidden_erg = None
        if erg_tag:
            text_hidden_erg = self.text_encoder.encode(tags, erg_tag=True)[0].repeat(batch_size, 1, 1)
        # Upstream feeds one masked [0] token for no lyrics at all.
        ids, mask = (lyric_ids, [1] * len(lyric_ids)) if lyric_ids else ([0], [0])
        as_batch = lambda values: torch.tensor([values], device=self.device).repeat(batch_size, 1)
        return Conditions(text_hidden=text_hidden.repeat(batch_size, 1, 1),
                          text_mask=text_mask.repeat(batch_size, 1),
                          text_hidden_erg=text_hidden_erg,
                          speaker=torch.zeros(batch_size, SPEAKER_DIM, device=self.device, dtype=self.dtype),
                          lyric_ids=as_batch(ids), lyric_mask=as_batch(mask))

    def encode_audio(self, source: Audio) -> torch.Tensor:
        """Upstream `infer_latents`: mono is duplicated to stereo, then the DCAE encodes it.

        (Upstream fails on more than two channels; they are downmixed to stereo here.)
        """
        stereo = source if source.channels == 2 else to_channels(source, 2)
        samples = stereo.samples.unsqueeze(0).to(device=self.device, dtype=self.dtype)
        return self.dcae.encode(samples, source.sample_rate)

    def decode_latents(self, latents: torch.Tensor) -> list[Audio]:
        waves = self.dcae.decode(latents)
        return [Audio(wave.float().cpu(), OUTPUT_SAMPLE_RATE) for wave in waves]

    def use_lora(self, name_or_path: str, weight: float) -> None:
        """Upstream `load_lora`: load (or switch, or with "none" unload) the transformer's LoRA."""
        from . import lora

        wanted = None if name_or_path in ("", "none") else (name_or_path, float(weight))
        if wanted == self.lora:
            return
        if self.lora is not None:
            lora.remove_lora(self.transformer)
            self.lora = None
        if wanted is not None:
            from safetensors.torch import load_file

            state = load_file(str(lora.lora_weights_path(name_or_path)), device=str(self.device))
            lora.apply_lora(self.transformer, state, weight)
            self.lora = wanted

    def encode_branches(self, branches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]],
                        text_mask: torch.Tensor, lyric_mask: torch.Tensor
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The condition sequence of each guidance branch (they share the masks) and the mask:
        one encoder forward of them all as a batch (`batch_guidance`), or one each."""
        model = self.transformer
        if not self.batch_guidance:
            encoded = [model.encode(text, text_mask, speaker, lyric_ids, lyric_mask, erg_lyric=erg)
                       for text, speaker, lyric_ids, erg in branches]
            return [states for states, _ in encoded], encoded[0][1]
        # The lyric encoder once per distinct (lyric ids, ERG) pair: the unconditional and the
        # text-only branches read the same lyric states (upstream computes them twice); and its
        # layers before ERG's once per distinct lyric ids (the conditional and ERG's null branch
        # read the same lyrics).
        count, batch = len(branches), len(text_mask)
        lyric_keys = list(dict.fromkeys((id(lyric_ids), erg) for _, _, lyric_ids, erg in branches))
        ids_of = {id(lyric_ids): lyric_ids for _, _, lyric_ids, _ in branches}
        distinct = list(dict.fromkeys(key for key, _ in lyric_keys))
        items = torch.cat([distinct.index(key) * batch + torch.arange(batch, device=self.device)
                           for key, _ in lyric_keys])
        lyric_states = model.encode_lyrics(
            torch.cat([ids_of[key] for key in distinct]), lyric_mask.repeat(len(distinct), 1),
            erg_lyric=self.item_flags([erg for _, erg in lyric_keys], batch),
            items=items).chunk(len(lyric_keys))
        text, speaker = (torch.cat([branch[part] for branch in branches]) for part in range(2))
        states, mask = model.encode(
            text, text_mask.repeat(count, 1), speaker, None, lyric_mask.repeat(count, 1),
            lyric_states=torch.cat([lyric_states[lyric_keys.index((id(lyric_ids), erg))]
                                    for _, _, lyric_ids, erg in branches]))
        return list(states.chunk(count)), mask[:batch]

    def item_flags(self, flags: list[bool], batch: int) -> torch.Tensor:
        """A bool `[len(flags) * batch]`: each flag for `batch` items in a row."""
        return torch.tensor(flags, device=self.device).repeat_interleave(batch)

    def guided_velocity(self, settings: Sampling, cond: Conditions, attention_mask: torch.Tensor,
                        num_steps: int) -> sampling.VelocityFn:
        """velocity(x, t, step) with upstream's guidance: interval, decay, ERG, the cfg rule."""
        model = self.transformer
        zeros_speaker, zero_lyric_ids = torch.zeros_like(cond.speaker), torch.zeros_like(cond.lyric_ids)
        # (prompt states, speaker, lyric ids, ERG on the lyric encoder) of each branch.
        branches = [(cond.text_hidden, cond.speaker, cond.lyric_ids, False)]
        if settings.use_erg_lyric:
            null_text = (cond.text_hidden_erg if cond.text_hidden_erg is not None
                         else torch.zeros_like(cond.text_hidden))
            branches.append((null_text, zeros_speaker, cond.lyric_ids, True))
        else:
            branches.append((torch.zeros_like(cond.text_hidden), zeros_speaker, zero_lyric_ids, False))
        if settings.double_condition:
            lyric_ids = cond.lyric_ids if settings.use_erg_lyric else zero_lyric_ids
            branches.append((cond.text_hidden, zeros_speaker, lyric_ids, settings.use_erg_lyric))
        encoded, hidden_mask = self.encode_branches(branches, cond.text_mask, cond.lyric_mask)
        hidden, hidden_null = encoded[:2]
        hidden_text_only = encoded[2] if settings.double_condition else None

        start, end = sampling.guidance_window(num_steps, settings.guidance_interval)
        momentum = sampling.APGMomentum()

        # Each condition's cross-attention keys and values, made at its first use and kept for
        # the song (not in upstream, which recomputes them at every call: the same numbers).
        prepared: dict[tuple[int, ...], Condition] = {}

        def decode(x: torch.Tensor, timestep: torch.Tensor,
                   passes: list[tuple[torch.Tensor, bool]]) -> list[torch.Tensor]:
            """One velocity per (condition, ERG) pass at the same input: one forward each, or
            one forward of them all as a batch (`batch_guidance`)."""
            if not self.batch_guidance or len(passes) == 1:
                return [decode_one(x, timestep, [hidden_states], erg) for hidden_states, erg in passes]
            erg = self.item_flags([erg for _, erg in passes], len(x))
            together = decode_one(torch.cat([x] * len(passes)), timestep.repeat(len(passes)),
                                  [hidden_states for hidden_states, _ in passes], erg)
            return list(together.chunk(len(passes)))

        def decode_one(x: torch.Tensor, timestep: torch.Tensor, states: list[torch.Tensor],
                       erg: bool | torch.Tensor) -> torch.Tensor:
            key = tuple(id(hidden_states) for hidden_states in states)
            if key not in prepared:
                prepared[key] = model.condition(torch.cat(states))
            repeat = len(states)
            return model.decode(x, attention_mask.repeat(repeat, 1), prepared[key],
                                hidden_mask.repeat(repeat, 1), timestep, erg_diffusion=erg)

        def velocity(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            timestep = t.expand(x.shape[0])
            if not (settings.guided and start <= step < end):
                return decode(x, timestep, [(hidden, False)])[0]
            scale = sampling.guidance_scale_at(step, start, end, settings.guidance_scale,
                                               settings.minimum_guidance_scale,
                                               settings.guidance_interval_decay)
            passes = [(hidden, False), (hidden_null, settings.use_erg_diffusion)]
            if hidden_text_only is not None:
                passes.insert(1, (hidden_text_only, False))
                with_cond, text_only, uncond = decode(x, timestep, passes)
                return sampling.double_condition(with_cond, text_only, uncond,
                                                 settings.tag_guidance_scale,
                                                 settings.lyric_guidance_scale)
            with_cond, uncond = decode(x, timestep, passes)
            if settings.guidance_type == "apg":
                return sampling.apg(with_cond, uncond, scale, momentum)
            if settings.guidance_type == "cfg":
                return sampling.cfg(with_cond, uncond, scale)
            return sampling.cfg_zero_star(with_cond, uncond, scale, step)

        return velocity

    def flow_edit(self, job: V1Job, source: Conditions, target: Conditions, src_latents: torch.Tensor,
                  generators: list[torch.Generator], on_step: StepCallback | None) -> torch.Tensor:
        """Upstream `flowedit_diffusion_process`: always the Euler schedule, APG, no ERG."""
        assert job.edit is not None
        settings = job.sampling
        batch = job.batch_size
        schedule = sampling.flow_schedule(settings.number_of_steps, scheduler="euler").to(self.device)
        attention_mask = torch.ones(batch, src_latents.shape[-1], device=self.device, dtype=self.dtype)
        if settings.guided:
            attention_mask = torch.cat([attention_mask] * 2)
            source, target = with_null_condition(source), with_null_condition(target)
        source_momentum, target_momentum = sampling.APGMomentum(), sampling.APGMomentum()

        def predict(cond: Conditions, x: torch.Tensor, t: torch.Tensor,
                    momentum: sampling.APGMomentum | None) -> torch.Tensor:
            model_input = torch.cat([x, x]) if settings.guided else x
            hidden, mask = self.transformer.encode(cond.text_hidden, cond.text_mask, cond.speaker,
                                                   cond.lyric_ids, cond.lyric_mask)
            v = self.transformer.decode(model_input, attention_mask, hidden, mask,
                                        t.expand(model_input.shape[0]))
            if not settings.guided:
                return v
            with_cond, uncond = v.chunk(2)
            return sampling.apg(with_cond, uncond, settings.guidance_scale, momentum)

        return sampling.sample_flow_edit(
            lambda x, t: predict(source, x, t, source_momentum),
            # Upstream passes no momentum buffer to the target pass inside the edit window.
            lambda x, t, after_edit: predict(target, x, t, target_momentum if after_edit else None),
            src_latents, schedule, first_step=int(settings.number_of_steps * job.edit.n_min),
            last_edit_step=int(settings.number_of_steps * job.edit.n_max), n_avg=job.edit.n_avg,
            noise_fn=lambda: self.noise(tuple(src_latents.shape), generators),
            pingpong=settings.scheduler == "pingpong", generator=generators[0], on_step=on_step)


def sampling_schedule(settings: Sampling, dtype: torch.dtype) -> sampling.Schedule:
    """The schedule of the job's scheduler: the oss_steps levels when given, else N even steps."""
    if settings.oss_steps:
        return sampling.flow_schedule(len(settings.oss_steps), scheduler=settings.scheduler,
                                      sigmas=sampling.oss_sigmas(settings.oss_steps, dtype))
    return sampling.flow_schedule(settings.number_of_steps, scheduler=settings.scheduler)


def retake_blend(noise: torch.Tensor, retake: torch.Tensor, variance: float) -> torch.Tensor:
    """cos(θ)·noise + sin(θ)·retake at θ = variance·π/2, θ held in the latents' dtype as upstream."""
    angle = torch.tensor(variance * math.pi / 2).to(noise.device).to(noise.dtype)
    return torch.cos(angle) * noise + torch.sin(angle) * retake


def repaint_latents(source: torch.Tensor, noise: torch.Tensor, blended: torch.Tensor,
                    region: tuple[int, int], first_step: int) -> Repaint:
    """Repaint frames [start, end): the blended noise there, the seed's noise elsewhere."""
    start, end = region
    mask = torch.zeros_like(noise)
    mask[..., start:end] = 1.0
    return Repaint(x0=source, z0=torch.where(mask == 1.0, blended, noise), mask=mask,
                   first_step=first_step)


def extend_latents(source: torch.Tensor, noise: torch.Tensor, retake: torch.Tensor, left: int,
                   right: int, first_step: int) -> Repaint:
    """The source with `left` and `right` new frames: retake noise there, the seed's noise on it.

    Deviation from upstream, which only changes requests it gets wrong: extending both sides at
    once, upstream pads the right side by right - left frames (it measures the end against the
    already left-padded clip); we pad by `right`, the length asked for.
    """
    x0 = torch.nn.functional.pad(source, (left, right))
    mask = torch.zeros_like(x0)
    mask[..., :left] = 1.0
    if right:
        mask[..., -right:] = 1.0
    pieces = [retake[..., :left], noise[..., :source.shape[-1]]] + ([retake[..., -right:]] if right else [])
    return Repaint(x0=x0, z0=torch.cat(pieces, dim=-1), mask=mask, first_step=first_step)


def audio2audio_latents(settings: Sampling, reference: torch.Tensor, noise: torch.Tensor,
                        strength: float) -> tuple[sampling.Schedule, torch.Tensor]:
    """Upstream's audio2audio: a schedule topped at σ = 1 - strength, the reference noised to it."""
    schedule = sampling.flow_schedule(int((1 - strength) * settings.base_steps),
                                      scheduler=settings.scheduler, sigma_max=1 - strength)
    noise_level = schedule.sigma_max
    return schedule, reference * (1 - noise_level) + noise * noise_level


def with_null_condition(cond: Conditions) -> Conditions:
    """[cond; uncond] batched as upstream's FlowEdit does: zero text, speaker, lyric ids and mask."""
    return Conditions(text_hidden=torch.cat([cond.text_hidden, torch.zeros_like(cond.text_hidden)]),
                      text_mask=torch.cat([cond.text_mask] * 2), text_hidden_erg=None,
                      speaker=torch.cat([cond.speaker, torch.zeros_like(cond.speaker)]),
                      lyric_ids=torch.cat([cond.lyric_ids, torch.zeros_like(cond.lyric_ids)]),
                      lyric_mask=torch.cat([cond.lyric_mask, torch.zeros_like(cond.lyric_mask)]))
