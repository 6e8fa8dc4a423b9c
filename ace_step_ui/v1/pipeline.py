"""The ACE-Step v1 pipeline: upstream's `ACEStepPipeline.__call__`, read top to bottom.

1. seeds -> one torch.Generator per batch item (manual seeds and retake seeds);
2. prompt -> UMT5 hidden states (and the ERG-tag variant); lyrics -> token ids;
3. source / reference audio -> DCAE latents;
4. the diffusion loop of the task (text2music, retake, repaint, extend, audio2audio, edit);
5. latents -> 48 kHz stereo audio.

`PipelineCall` takes upstream's keyword names and defaults, so a call of the official pipeline
maps one to one (the parity tests replay the fixture's recorded calls through it). Where upstream
crashes or returns the wrong length we deviate, and say so where it happens (see `extend_window`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..audio import Audio, to_channels
from ..errors import InputError
from . import checkpoint, sampling
from .autoencoder import LATENT_FRAMES_PER_SECOND, OUTPUT_SAMPLE_RATE, MusicDCAE, build_dcae
from .lyrics import MAX_LYRIC_TOKENS, LyricTokenizer
from .text_encoder import TextEncoder
from .transformer import ACEStepTransformer, TransformerConfig
from .vocoder import HiFiGANVocoder, VocoderConfig
from .vocab import lyric_vocab_path
from .weights import build_on_meta, load_weights

SPEAKER_DIM = 512  # the released checkpoint has no speaker input; upstream feeds zeros of this size
LATENT_CHANNELS = 8
LATENT_HEIGHT = 16
MAX_FRAMES = int(240 * LATENT_FRAMES_PER_SECOND)  # 2583: upstream's 240 s window
SEED_LIMIT = 2 ** 32
EDIT_PRESETS = {"lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}  # upstream UI: only_lyrics, remix

StepCallback = Callable[[int, int], None]


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


@dataclass
class PipelineOutput:
    latents: torch.Tensor  # final latents of the diffusion loop [B, 8, 16, frames]
    audio: list[Audio]  # one 48 kHz stereo clip per batch item
    params: dict[str, Any] = field(default_factory=dict)  # upstream's params dict, minus paths


@dataclass
class Conditions:
    """Everything the transformer is conditioned on, for a batch."""

    text_hidden: torch.Tensor
    text_mask: torch.Tensor
    text_hidden_erg: torch.Tensor | None
    speaker: torch.Tensor
    lyric_ids: torch.Tensor
    lyric_mask: torch.Tensor


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

    @classmethod
    def load(cls, root: Path, device: torch.device, dtype: torch.dtype) -> "V1Pipeline":
        """Load every component of the checkpoint at `root` straight into `dtype` on `device`."""
        from ..engines import read_json

        def weights(component: str) -> Path:
            return root / component / checkpoint.WEIGHTS[component]

        config = TransformerConfig.from_json(read_json(root / checkpoint.TRANSFORMER / "config.json"))
        transformer = load_weights(build_on_meta(lambda: ACEStepTransformer(config)),
                                   weights(checkpoint.TRANSFORMER), device, dtype)
        dcae_config = read_json(root / checkpoint.AUTOENCODER / "config.json")
        dcae = load_weights(build_on_meta(lambda: build_dcae(dcae_config)),
                            weights(checkpoint.AUTOENCODER), device, dtype)
        vocoder_config = VocoderConfig.from_json(read_json(root / checkpoint.VOCODER / "config.json"))
        vocoder = load_weights(build_on_meta(lambda: HiFiGANVocoder(vocoder_config)),
                               weights(checkpoint.VOCODER), device, dtype)
        text_encoder = TextEncoder.load(root / checkpoint.TEXT_ENCODER, device, dtype)
        lyric_tokenizer = LyricTokenizer.from_file(lyric_vocab_path(root))
        return cls(text_encoder, transformer, MusicDCAE(dcae, vocoder), lyric_tokenizer, device, dtype)

    # 1. seeds ------------------------------------------------------------------------------------

    def generators(self, batch_size: int, seeds: Any) -> tuple[list[torch.Generator], list[int]]:
        """Upstream `set_seeds`: one generator per item; unparseable seeds draw from torch's RNG."""
        chosen = parse_seeds(seeds)
        generators, actual = [], []
        for item in range(batch_size):
            if chosen is None:
                seed = int(torch.randint(0, SEED_LIMIT, (1,)).item())
            elif isinstance(chosen, int):
                seed = chosen
            else:
                seed = chosen[min(item, len(chosen) - 1)]
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            generators.append(generator)
            actual.append(seed)
        return generators, actual

    def noise(self, shape: Sequence[int], generators: list[torch.Generator]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(tuple(shape), generator=generators, device=self.device, dtype=self.dtype)

    # 2. conditions -------------------------------------------------------------------------------

    def lyric_ids(self, lyrics: str, what: str) -> list[int]:
        """Upstream's `tokenize_lyrics`, [] for no lyrics; `what` names them if they are too long."""
        ids = self.lyric_tokenizer.encode(lyrics) if len(lyrics) > 0 else []
        if len(ids) > MAX_LYRIC_TOKENS:
            raise InputError(f"{what} make {len(ids):,} lyric tokens; ACE-Step v1 reads at most "
                             f"{MAX_LYRIC_TOKENS:,} (the most it was trained on): shorten them")
        return ids

    def conditions(self, prompt: str, lyric_ids: list[int], batch_size: int, erg_tag: bool) -> Conditions:
        text_hidden, text_mask = self.text_encoder.encode(prompt)
        text_hidden_erg = None
        if erg_tag:
            text_hidden_erg = self.text_encoder.encode(prompt, erg_tag=True)[0].repeat(batch_size, 1, 1)
        ids, mask = self.lyric_tensors(lyric_ids, batch_size)
        return Conditions(text_hidden=text_hidden.repeat(batch_size, 1, 1),
                          text_mask=text_mask.repeat(batch_size, 1),
                          text_hidden_erg=text_hidden_erg,
                          speaker=torch.zeros(batch_size, SPEAKER_DIM, device=self.device, dtype=self.dtype),
                          lyric_ids=ids, lyric_mask=mask)

    def lyric_tensors(self, lyric_ids: list[int], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Upstream feeds one masked [0] token for no lyrics at all.
        ids, mask = (lyric_ids, [1] * len(lyric_ids)) if lyric_ids else ([0], [0])
        as_batch = lambda values: torch.tensor([values], device=self.device).repeat(batch_size, 1)
        return as_batch(ids), as_batch(mask)

    # 3. audio -> latents -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_audio(self, source: Audio) -> torch.Tensor:
        """Upstream `infer_latents`: mono is duplicated to stereo, then the DCAE encodes it.

        (Upstream fails on more than two channels; they are downmixed to stereo here.)
        """
        stereo = source if source.channels == 2 else to_channels(source, 2)
        samples = stereo.samples.unsqueeze(0).to(device=self.device, dtype=self.dtype)
        return self.dcae.encode(samples, source.sample_rate)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[Audio]:
        waves = self.dcae.decode(latents)
        return [Audio(wave.float().cpu(), OUTPUT_SAMPLE_RATE) for wave in waves]

    # LoRA ----------------------------------------------------------------------------------------

    def use_lora(self, name_or_path: str, weight: float) -> None:
        """Upstream `load_lora`: load (or switch, or with "none" unload) the transformer's LoRA."""
        from . import lora

        wanted = None if name_or_path in ("", "none", None) else (name_or_path, float(weight))
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

    # the call ------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, call: PipelineCall, on_step: StepCallback | None = None) -> PipelineOutput:
        task = "audio2audio" if call.audio2audio_enable and call.ref_audio is not None else call.task
        check_call(call, task)
        # Lyrics are tokenised first: too many tokens are refused before any model runs.
        lyric_ids = self.lyric_ids(call.lyrics, "the original lyrics" if task == "edit" else "the lyrics")
        target_lyric_ids = (self.lyric_ids(call.edit_target_lyrics or "", "the lyrics") if task == "edit"
                            else [])
        self.use_lora(call.lora_name_or_path, call.lora_weight)
        generators, seeds = self.generators(call.batch_size, call.manual_seeds)
        retake_generators, retake_seeds = self.generators(call.batch_size, call.retake_seeds)
        oss_steps = parse_oss_steps(call.oss_steps)
        conditions = self.conditions(call.prompt, lyric_ids, call.batch_size, call.use_erg_tag)
        if call.audio_duration <= 0:
            # Upstream's "random length": 30-240 s from Python's global RNG, drawn at this point.
            call = dataclasses.replace(call, audio_duration=random.uniform(30.0, 240.0))

        src_latents = self.encode_audio(call.src_audio) if call.src_audio is not None else None
        ref_latents = (self.encode_audio(call.ref_audio)
                       if call.ref_audio is not None and call.audio2audio_enable else None)
        if task == "edit":
            target = self.conditions(call.edit_target_prompt or "", target_lyric_ids, call.batch_size,
                                     erg_tag=False)
            latents = self.flow_edit(call, conditions, target, src_latents, retake_generators, on_step)
        else:
            repaint_start, repaint_end = call.repaint_start, call.repaint_end
            if task == "retake":
                repaint_start, repaint_end = 0.0, call.audio_duration
            latents = self.diffuse(call, conditions, oss_steps, generators, retake_generators,
                                   add_retake_noise=task in ("retake", "repaint", "extend"),
                                   repaint_start=repaint_start, repaint_end=repaint_end,
                                   src_latents=src_latents, ref_latents=ref_latents, on_step=on_step)
        audio = self.decode_latents(latents)
        params = upstream_params(call, task, seeds, retake_seeds, oss_steps)
        return PipelineOutput(latents=latents, audio=audio, params=params)

    # 4a. text2music / retake / repaint / extend / audio2audio ------------------------------------

    def diffuse(self, call: PipelineCall, cond: Conditions, oss_steps: list[int],
                generators: list[torch.Generator], retake_generators: list[torch.Generator], *,
                add_retake_noise: bool, repaint_start: float, repaint_end: float,
                src_latents: torch.Tensor | None, ref_latents: torch.Tensor | None,
                on_step: StepCallback | None) -> torch.Tensor:
        """Upstream `text2music_diffusion_process`."""
        batch = cond.text_hidden.shape[0]
        guided = call.guidance_scale not in (0.0, 1.0)
        double_condition = (call.guidance_scale_text is not None and call.guidance_scale_text > 1.0
                            and call.guidance_scale_lyric is not None and call.guidance_scale_lyric > 1.0)
        frames = int(call.audio_duration * LATENT_FRAMES_PER_SECOND)
        if src_latents is not None:
            frames = src_latents.shape[-1]
        if ref_latents is not None:
            frames = ref_latents.shape[-1]

        infer_steps = call.infer_step
        if oss_steps:
            infer_steps = max(oss_steps)  # upstream also uses this for the repaint start below
            schedule = sampling.flow_schedule(len(oss_steps), scheduler=call.scheduler_type,
                                              sigmas=sampling.oss_sigmas(oss_steps, self.dtype))
        else:
            schedule = sampling.flow_schedule(infer_steps, scheduler=call.scheduler_type)
        schedule = schedule.to(self.device)
        latents = self.noise((batch, LATENT_CHANNELS, LATENT_HEIGHT, frames), generators)

        repaint: RepaintState | None = None
        trimmed: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if add_retake_noise:
            first_step = int(infer_steps * (1 - call.retake_variance))
            angle = torch.tensor(call.retake_variance * math.pi / 2).to(self.device).to(self.dtype)
            start_frame = int(repaint_start * LATENT_FRAMES_PER_SECOND)
            end_frame = int(repaint_end * LATENT_FRAMES_PER_SECOND)
            extending = start_frame < 0 or end_frame > frames
            retake_frames = frames
            if extending:
                # Deviation: upstream draws the retake noise at the source length and fails (an
                # assertion) when one side is extended by more than that; draw enough for the longer
                # side in that case only, so every extension upstream can run gets upstream's noise.
                retake_frames = max(frames, -start_frame, end_frame - frames)
            retake = self.noise((batch, LATENT_CHANNELS, LATENT_HEIGHT, retake_frames), retake_generators)
            if not extending and end_frame - start_frame == frames:
                latents = torch.cos(angle) * latents + torch.sin(angle) * retake
            elif not extending:
                mask = torch.zeros_like(latents)
                mask[..., start_frame:end_frame] = 1.0
                blended = torch.cos(angle) * latents + torch.sin(angle) * retake
                repaint = RepaintState(x0=src_latents, z0=torch.where(mask == 1.0, blended, latents),
                                       mask=mask, first_step=first_step)
            else:
                window = extend_window(src_latents, latents, retake, start_frame, end_frame)
                repaint = RepaintState(x0=window.x0, z0=window.z0, mask=window.mask, first_step=first_step)
                trimmed = (window.cut_head, window.cut_tail)
                frames = window.x0.shape[-1]

        if call.audio2audio_enable and ref_latents is not None:
            schedule = sampling.flow_schedule(int((1 - call.ref_audio_strength) * infer_steps),
                                              scheduler=call.scheduler_type,
                                              sigma_max=1 - call.ref_audio_strength).to(self.device)
            noise_level = schedule.sigma_max
            latents = ref_latents * (1 - noise_level) + latents * noise_level

        attention_mask = torch.ones(batch, frames, device=self.device, dtype=self.dtype)
        velocity = self.guided_velocity(call, cond, attention_mask, schedule.num_inference_steps,
                                        guided, double_condition)
        if repaint is not None:
            latents = repaint_loop(velocity, repaint, schedule, self.dtype, on_step)
        else:
            latents = sampling.sample(velocity, latents, schedule, call.scheduler_type,
                                      omega_scale=call.omega_scale, generator=generators[0],
                                      on_step=on_step)
        cut_head, cut_tail = trimmed
        if cut_head is not None:
            latents = torch.cat([cut_head, latents], dim=-1)
        if cut_tail is not None:
            latents = torch.cat([latents, cut_tail], dim=-1)
        return latents

    def guided_velocity(self, call: PipelineCall, cond: Conditions, attention_mask: torch.Tensor,
                        num_steps: int, guided: bool, double_condition: bool):
        """velocity(x, t, step) with upstream's guidance: interval, decay, ERG, the cfg rule."""
        model = self.transformer
        hidden, hidden_mask = model.encode(cond.text_hidden, cond.text_mask, cond.speaker,
                                           cond.lyric_ids, cond.lyric_mask)
        zeros_speaker = torch.zeros_like(cond.speaker)
        if call.use_erg_lyric:
            null_text = (cond.text_hidden_erg if cond.text_hidden_erg is not None
                         else torch.zeros_like(cond.text_hidden))
            hidden_null, _ = model.encode(null_text, cond.text_mask, zeros_speaker, cond.lyric_ids,
                                          cond.lyric_mask, erg_lyric=True)
        else:
            hidden_null, _ = model.encode(torch.zeros_like(cond.text_hidden), cond.text_mask,
                                          zeros_speaker, torch.zeros_like(cond.lyric_ids), cond.lyric_mask)
        hidden_text_only = None
        if double_condition:
            if call.use_erg_lyric:
                hidden_text_only, _ = model.encode(cond.text_hidden, cond.text_mask, zeros_speaker,
                                                   cond.lyric_ids, cond.lyric_mask, erg_lyric=True)
            else:
                hidden_text_only, _ = model.encode(cond.text_hidden, cond.text_mask, zeros_speaker,
                                                   torch.zeros_like(cond.lyric_ids), cond.lyric_mask)

        start, end = sampling.guidance_window(num_steps, call.guidance_interval)
        momentum = sampling.APGMomentum()

        def decode(x, timestep, encoder_hidden, erg_diffusion=False):
            return model.decode(x, attention_mask, encoder_hidden, hidden_mask, timestep,
                                erg_diffusion=erg_diffusion)

        def velocity(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            timestep = t.expand(x.shape[0])
            if not (guided and start <= step < end):
                return decode(x, timestep, hidden)
            scale = sampling.guidance_scale_at(step, start, end, call.guidance_scale,
                                               call.min_guidance_scale, call.guidance_interval_decay)
            with_cond = decode(x, timestep, hidden)
            text_only = decode(x, timestep, hidden_text_only) if hidden_text_only is not None else None
            uncond = decode(x, timestep, hidden_null, erg_diffusion=call.use_erg_diffusion)
            if text_only is not None:
                return sampling.double_condition(with_cond, text_only, uncond,
                                                 call.guidance_scale_text, call.guidance_scale_lyric)
            if call.cfg_type == "apg":
                return sampling.apg(with_cond, uncond, scale, momentum)
            if call.cfg_type == "cfg":
                return sampling.cfg(with_cond, uncond, scale)
            return sampling.cfg_zero_star(with_cond, uncond, scale, step)

        return velocity

    # 4b. edit (FlowEdit) -------------------------------------------------------------------------

    def flow_edit(self, call: PipelineCall, source: Conditions, target: Conditions,
                  src_latents: torch.Tensor, generators: list[torch.Generator],
                  on_step: StepCallback | None) -> torch.Tensor:
        """Upstream `flowedit_diffusion_process`: always the Euler schedule, APG, no ERG."""
        guided = call.guidance_scale not in (0.0, 1.0)
        batch = source.text_hidden.shape[0]
        schedule = sampling.flow_schedule(call.infer_step, scheduler="euler").to(self.device)
        timesteps = schedule.timesteps
        attention_mask = torch.ones(batch, src_latents.shape[-1], device=self.device, dtype=self.dtype)
        if guided:
            attention_mask = torch.cat([attention_mask] * 2)
            source, target = with_null_condition(source), with_null_condition(target)
        source_momentum, target_momentum = sampling.APGMomentum(), sampling.APGMomentum()

        def predict(cond: Conditions, x: torch.Tensor, t: torch.Tensor,
                    momentum: sampling.APGMomentum | None) -> torch.Tensor:
            model_input = torch.cat([x, x]) if guided else x
            hidden, mask = self.transformer.encode(cond.text_hidden, cond.text_mask, cond.speaker,
                                                   cond.lyric_ids, cond.lyric_mask)
            v = self.transformer.decode(model_input, attention_mask, hidden, mask,
                                        t.expand(model_input.shape[0]))
            if not guided:
                return v
            with_cond, uncond = v.chunk(2)
            return sampling.apg(with_cond, uncond, call.guidance_scale, momentum)

        x_src = src_latents
        z_edit = x_src.clone()
        x_target = None
        first_step = int(call.infer_step * call.edit_n_min)
        last_edit_step = int(call.infer_step * call.edit_n_max)
        total = len(timesteps)
        for step, t in enumerate(timesteps):
            if step < first_step:
                continue
            t_now = t / 1000
            t_next = timesteps[step + 1] / 1000 if step + 1 < total else torch.zeros_like(t_now)
            if step < last_edit_step:
                delta = torch.zeros_like(x_src)
                for _ in range(call.edit_n_avg):
                    forward_noise = self.noise(x_src.shape, generators)
                    z_src = (1 - t_now) * x_src + t_now * forward_noise
                    z_target = z_edit + z_src - x_src
                    v_src = predict(source, z_src, t, source_momentum)
                    # Upstream passes no momentum buffer to the target pass inside the edit window.
                    v_target = predict(target, z_target, t, None)
                    delta += (1 / call.edit_n_avg) * (v_target - v_src)
                z_edit = z_edit.to(torch.float32)
                if call.scheduler_type != "pingpong":
                    z_edit = (z_edit + (t_next - t_now) * delta).to(self.dtype)
                else:
                    # Upstream's pingpong edit only draws its noise here and never updates z_edit;
                    # kept, because that is what the released app does (same seed, same song).
                    torch.empty_like(z_edit).normal_(generator=generators[0])
            else:
                if step == last_edit_step:
                    forward_noise = self.noise(x_src.shape, generators)
                    sigma = schedule.sigmas[step]
                    x_t = sigma * forward_noise + (1.0 - sigma) * x_src
                    x_target = z_edit + x_t - x_src
                v_target = predict(target, x_target, t, target_momentum)
                x_target = x_target.to(torch.float32)
                if call.scheduler_type != "pingpong":
                    x_target = (x_target + (t_next - t_now) * v_target).to(self.dtype)
                else:
                    denoised = x_target - t_now * v_target
                    noise = torch.empty_like(z_edit).normal_(generator=generators[0])
                    x_target = (1 - t_next) * denoised + t_next * noise
            if on_step is not None:
                on_step(step + 1, total)
        return z_edit if x_target is None else x_target


@dataclass
class RepaintState:
    x0: torch.Tensor  # the source latents the unmasked frames return to
    z0: torch.Tensor  # the noise the masked frames start from
    mask: torch.Tensor  # 1 where new audio is made
    first_step: int  # steps before it are skipped (variance < 1 keeps the start of the path)


@dataclass
class ExtendWindow:
    x0: torch.Tensor
    z0: torch.Tensor
    mask: torch.Tensor
    cut_head: torch.Tensor | None  # source frames outside the 240 s window, put back afterwards
    cut_tail: torch.Tensor | None


def extend_window(src: torch.Tensor, seed_noise: torch.Tensor, retake_noise: torch.Tensor,
                  start_frame: int, end_frame: int) -> ExtendWindow:
    """The latents, start noise and mask of an extension by `-start_frame` / `end_frame - len`.

    Deviations from upstream, which only change requests upstream crashes on or gets wrong:
    - both sides at once: upstream pads the right side by R - L frames (it measures R against the
      already left-padded clip); we pad by R, the length asked for;
    - past 240 s (2583 frames) upstream's trim re-attaches the wrong frames; we keep the new audio
      plus the source next to it in the window and put the cut source frames back unchanged.
    """
    source_frames = src.shape[-1]
    left = -start_frame if start_frame < 0 else 0
    right = end_frame - source_frames if end_frame > source_frames else 0
    if left + right > MAX_FRAMES:
        raise InputError(f"extending by {left / LATENT_FRAMES_PER_SECOND:.1f} s before and "
                         f"{right / LATENT_FRAMES_PER_SECOND:.1f} s after is more than the 240 s ACE-Step "
                         f"v1 can make in one call; extend one side at a time")
    keep_from, keep_to = 0, source_frames  # the source frames inside the window
    overflow = left + source_frames + right - MAX_FRAMES
    if overflow > 0 and left and right:
        raise InputError("extending both sides of this source makes more than 240 s, which ACE-Step "
                         "v1 cannot see at once; extend one side at a time")
    if overflow > 0 and left:
        keep_to = source_frames - overflow
    elif overflow > 0:
        keep_from = overflow
    kept = src[..., keep_from:keep_to]
    x0 = torch.nn.functional.pad(kept, (left, right))
    mask = torch.zeros_like(x0)
    if left:
        mask[..., :left] = 1.0
    if right:
        mask[..., -right:] = 1.0
    pieces = []
    if left:
        pieces.append(retake_noise[..., :left])
    pieces.append(seed_noise[..., keep_from:keep_to])
    if right:
        pieces.append(retake_noise[..., -right:])
    z0 = torch.cat(pieces, dim=-1)
    cut_head = src[..., :keep_from] if keep_from > 0 else None
    cut_tail = src[..., keep_to:] if keep_to < source_frames else None
    return ExtendWindow(x0=x0, z0=z0, mask=mask, cut_head=cut_head, cut_tail=cut_tail)


def repaint_loop(velocity, state: RepaintState, schedule: sampling.Schedule, dtype: torch.dtype,
                 on_step: StepCallback | None) -> torch.Tensor:
    """Upstream's repaint/extend loop: plain Euler on the masked frames, the source path elsewhere."""
    timesteps = schedule.timesteps
    total = len(timesteps)
    x0, z0, mask = state.x0, state.z0, state.mask
    latents = None
    for step, t in enumerate(timesteps):
        if step < state.first_step:
            continue
        t_now = t / 1000
        if step == state.first_step:
            # Upstream writes this as edit + noised - x0 with edit = x0; the rounding is kept.
            latents = x0 + ((1 - t_now) * x0 + t_now * z0) - x0
        v = velocity(latents, t, step)
        t_next = timesteps[step + 1] / 1000 if step + 1 < total else torch.zeros_like(t_now)
        latents = (latents.to(torch.float32) + (t_next - t_now) * v).to(dtype)
        latents = torch.where(mask == 1.0, latents, (1 - t_next) * x0 + t_next * z0)
        if on_step is not None:
            on_step(step + 1, total)
    if latents is None:  # variance 0: nothing is regenerated
        latents = x0.clone()
    return latents


def with_null_condition(cond: Conditions) -> Conditions:
    """[cond; uncond] batched as upstream's FlowEdit does: zero text, speaker, lyric ids and mask."""
    return Conditions(text_hidden=torch.cat([cond.text_hidden, torch.zeros_like(cond.text_hidden)]),
                      text_mask=torch.cat([cond.text_mask] * 2), text_hidden_erg=None,
                      speaker=torch.cat([cond.speaker, torch.zeros_like(cond.speaker)]),
                      lyric_ids=torch.cat([cond.lyric_ids, torch.zeros_like(cond.lyric_ids)]),
                      lyric_mask=torch.cat([cond.lyric_mask, torch.zeros_like(cond.lyric_mask)]))


def parse_seeds(seeds: Any) -> int | list[int] | None:
    """Upstream's seed parsing: "1,2" -> [1, 2]; "7" -> 7; an int or a list of ints; else None."""
    if isinstance(seeds, str):
        if "," in seeds:
            try:
                return [int(part) for part in seeds.split(",")]
            except ValueError:
                raise InputError(f"seeds must be whole numbers separated by commas, not '{seeds}'") from None
        return int(seeds) if seeds.isdigit() else None
    if isinstance(seeds, bool):
        return None
    if isinstance(seeds, int):
        return seeds
    if isinstance(seeds, (list, tuple)) and seeds and all(isinstance(s, int) for s in seeds):
        return list(seeds)
    return None


def parse_oss_steps(oss_steps: Any) -> list[int]:
    """"16, 29, 52" (upstream's text form) or a list of ints -> the list; empty -> []."""
    if oss_steps is None or oss_steps == "":
        return []
    if isinstance(oss_steps, str):
        try:
            steps = [int(part) for part in oss_steps.split(",")]
        except ValueError:
            raise InputError(f"oss_steps must be whole numbers separated by commas, not '{oss_steps}'") from None
    else:
        steps = [int(step) for step in oss_steps]
    if any(step < 1 for step in steps):
        raise InputError(f"oss_steps are 1-based step numbers; {steps} has one below 1")
    return steps


def check_call(call: PipelineCall, task: str) -> None:
    """What upstream asserts (or crashes on later), as messages that say what to fix."""
    if task in ("repaint", "extend", "edit") and call.src_audio is None:
        raise InputError(f"the {task} task needs source audio")
    if task == "edit" and call.edit_target_prompt is None:
        raise InputError("the edit task needs the new tags (edit_target_prompt)")
    if call.scheduler_type not in ("euler", "heun", "pingpong"):
        raise InputError(f"scheduler must be euler, heun or pingpong, not '{call.scheduler_type}'")
    if call.cfg_type not in ("apg", "cfg", "cfg_star"):
        raise InputError(f"guidance type must be apg, cfg or cfg_star, not '{call.cfg_type}'")
    if call.scheduler_type == "heun" and parse_oss_steps(call.oss_steps):
        raise InputError("oss_steps work with the euler and pingpong schedulers, not heun")
    if task == "audio2audio":
        check_audio2audio_steps(call.ref_audio_strength, call.infer_step)


def check_audio2audio_steps(strength: float, steps: int) -> None:
    """Audio-to-audio runs int((1 - strength) x steps) steps: refuse a request that runs none."""
    if int((1 - strength) * steps) < 1:
        raise InputError(f"audio-to-audio runs (1 - audio2audio_strength) x number_of_steps = "
                         f"{(1 - strength) * steps:g} steps, less than one; lower "
                         f"audio2audio_strength or raise number_of_steps")


def upstream_params(call: PipelineCall, task: str, seeds: list[int], retake_seeds: list[int],
                    oss_steps: list[int]) -> dict[str, Any]:
    """The params dict upstream returns (without paths and time costs)."""
    names = [f.name for f in dataclasses.fields(PipelineCall)
             if f.name not in ("src_audio", "ref_audio", "batch_size", "manual_seeds", "retake_seeds")]
    params = {name: getattr(call, name) for name in names}
    params.update(task=task, actual_seeds=seeds, retake_seeds=retake_seeds, oss_steps=oss_steps)
    if task == "edit":
        params.update(prompt=call.edit_target_prompt, lyrics=call.edit_target_lyrics)
    if task == "retake":
        params.update(repaint_start=0, repaint_end=call.audio_duration)
    return params
