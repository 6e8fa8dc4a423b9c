"""Inpaint and outpaint on sources up to 60 minutes, the same way for every model family.

1. cut a working window: the edited range (or the extended end) plus `context_duration` seconds of
   the original on each side, within the 240 s a model sees at once;
2. the engine re-renders that window: `repaint` makes a range of it anew, `extend` adds new audio
   before or after it;
3. the result goes back to the source's sample rate, channels and length, and is level-matched to
   the original context it re-rendered (models normalise their own output);
4. it is spliced into the full-length original: every sample outside the edited range is the
   source's own, with equal-power crossfades just inside the range.

An inpaint with extra ranges repeats 1-4 once a range (`inpaint_ranges`): the main range first,
then the others by start time, each on a window of the track as the passes before it left it.
The cost is set by the windows, not by the track; only the output copies the whole source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from . import audio as audio_ops
from .audio import Audio
from .engines import Engine, EngineOutput, StepCallback
from .errors import InputError
from .requests import ExtraRange, InpaintRequest, OutpaintRequest, offset_seed

MAX_WINDOW_S = 240.0  # the most a model sees at once: upstream v1's window, 1.5's longest song
MIN_CONTEXT_S = 10.0  # an extension of nearly 240 s still hears this much of the source


def inpaint_window(start_s: float, end_s: float, duration_s: float,
                   context_s: float) -> tuple[float, float]:
    """[window_start_s, window_end_s): the range plus up to `context_s` each side, at most 240 s."""
    context_s = max(0.0, min(context_s, (MAX_WINDOW_S - (end_s - start_s)) / 2))
    return max(0.0, start_s - context_s), min(duration_s, end_s + context_s)


def inpaint(engine: Engine, request: InpaintRequest, source: Audio, start_s: float, end_s: float,
            seed: int, retake_seed: int, on_step: StepCallback) -> EngineOutput:
    """`source` with [start_s, end_s) made anew by `engine` from a window around it."""
    window_start_s, window_end_s = inpaint_window(start_s, end_s, source.duration_s,
                                                  request.context_duration)
    rate = source.sample_rate
    first, last = (audio_ops.seconds_to_frames(s, rate) for s in (window_start_s, window_end_s))
    start, end = (audio_ops.seconds_to_frames(s, rate) for s in (start_s, end_s))
    window = Audio(source.samples[:, first:last], rate)
    output = engine.repaint(request, window, start_s - window_start_s, end_s - window_start_s, seed,
                            retake_seed, on_step)
    rendered = to_source(output.audio, source, last - first)
    context = torch.cat([window.samples[:, :start - first], window.samples[:, end - first:]], dim=-1)
    rendered_context = torch.cat([rendered[:, :start - first], rendered[:, end - first:]], dim=-1)
    gain = audio_ops.level_match_gain(context, rendered_context)
    fade = audio_ops.seconds_to_frames(request.crossfade_duration, rate)
    spliced = splice(source.samples, rendered[:, start - first:end - first] * gain, start, fade)
    effective = {**output.effective, "context_duration": request.context_duration,
                 "crossfade_duration": request.crossfade_duration,
                 "window_s": [window_start_s, window_end_s], "gain": gain,
                 "crossfade_s": min(fade, (end - start) // 2) / rate}
    return EngineOutput(Audio(spliced, rate), effective, output.latents, output.unused)


@dataclass(frozen=True)
class RepaintPass:
    """One range of an inpaint, with the song and the seeds it is repainted with."""

    start_s: float
    end_s: float
    tags: str
    lyrics: str
    seed: int
    retake_seed: int


def repaint_passes(request: InpaintRequest, main_range: tuple[float, float],
                   extra_ranges: Sequence[ExtraRange], seed: int,
                   retake_seed: int) -> list[RepaintPass]:
    """The main range with the run's seeds (as a one-range inpaint runs it), then the extra ranges
    by start time, each with its own tags and lyrics or else the request's."""
    passes = [RepaintPass(*main_range, request.tags, request.lyrics, seed, retake_seed)]
    by_start = sorted(extra_ranges, key=lambda extra: extra.start_time)
    for index, extra in enumerate(by_start, 1):
        # A stride of 2: with a derived retake seed (seed + 1) no two passes share a seed.
        seeds = offset_seed(seed, 2 * index), offset_seed(retake_seed, 2 * index)
        passes.append(RepaintPass(extra.start_time, extra.end_time,
                                  extra.tags if extra.tags.strip() else request.tags,
                                  extra.lyrics if extra.lyrics.strip() else request.lyrics, *seeds))
    return passes


def inpaint_ranges(engine: Engine, request: InpaintRequest, source: Audio,
                   main_range: tuple[float, float], extra_ranges: Sequence[ExtraRange], seed: int,
                   retake_seed: int, on_step: StepCallback) -> EngineOutput:
    """`source` with the main range and each extra range repainted, one pass a range
    (`repaint_passes`); with no extra ranges, `inpaint` itself."""
    if not extra_ranges:
        return inpaint(engine, request, source, *main_range, seed, retake_seed, on_step)
    passes = repaint_passes(request, main_range, extra_ranges, seed, retake_seed)
    audio, done, main = source, [], None
    for index, planned in enumerate(passes):
        song = dataclasses.replace(request, tags=planned.tags, lyrics=planned.lyrics)
        output = inpaint(engine, song, audio, planned.start_s, planned.end_s, planned.seed,
                         planned.retake_seed, offset_steps(on_step, index, len(passes)))
        audio = output.audio
        if main is None:
            main = output
        done.append({"start_s": planned.start_s, "end_s": planned.end_s, "tags": planned.tags,
                     "lyrics": planned.lyrics, "seed": planned.seed,
                     "retake_seed": planned.retake_seed, "window_s": output.effective["window_s"],
                     "gain": output.effective["gain"],
                     "crossfade_s": output.effective["crossfade_s"]})
    assert main is not None
    # The engine's values and latents are the main range's, as `range_s` is; each pass's are in
    # "ranges", in the order they ran.
    return EngineOutput(audio, {**main.effective, "ranges": done}, main.latents, main.unused)


def splice(original: torch.Tensor, new: torch.Tensor, start: int, fade_frames: int) -> torch.Tensor:
    """A copy of `original` with `new` from frame `start` on, faded in and out over
    min(fade_frames, len(new) // 2) frames just inside the range with equal-power curves."""
    end = start + new.shape[-1]
    if not 0 <= start <= end <= original.shape[-1]:
        raise ValueError(f"range [{start}, {end}) is outside 0..{original.shape[-1]} frames")
    fade = max(0, min(fade_frames, (end - start) // 2))
    spliced = original.clone()
    spliced[..., start:end] = new
    if fade:
        fade_out, fade_in = (curve.to(original.device, original.dtype)
                             for curve in audio_ops.equal_power_fades(fade))
        head, tail = slice(start, start + fade), slice(end - fade, end)
        spliced[..., head] = original[..., head] * fade_out + new[..., :fade] * fade_in
        spliced[..., tail] = new[..., -fade:] * fade_out + original[..., tail] * fade_in
    return spliced


@dataclass(frozen=True)
class ExtendPass:
    before_s: float  # new seconds before the context
    after_s: float  # new seconds after it
    context: tuple[float, float]  # the stretch of the source the model hears, in seconds


def outpaint_passes(before_s: float, duration_s: float, after_s: float, context_s: float,
                    both_at_once: bool) -> list[ExtendPass]:
    """One pass with the whole source when it fits as both sides' context (and the engine extends
    both sides at once); otherwise one pass a side, each hearing the source next to its end."""
    sides = [seconds for seconds in (before_s, after_s) if seconds > 0]
    if (duration_s <= context_s and before_s + duration_s + after_s <= MAX_WINDOW_S
            and (len(sides) == 1 or both_at_once)):
        return [ExtendPass(before_s, after_s, (0.0, duration_s))]
    passes = []
    for side, seconds in (("before", before_s), ("after", after_s)):
        if seconds <= 0:
            continue
        heard = min(context_s, duration_s, max(MIN_CONTEXT_S, MAX_WINDOW_S - seconds))
        if side == "before":
            passes.append(ExtendPass(seconds, 0.0, (0.0, heard)))
        else:
            passes.append(ExtendPass(0.0, seconds, (duration_s - heard, duration_s)))
    return passes


def outpaint(engine: Engine, request: OutpaintRequest, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
    """`source` with new audio of exactly the requested seconds before and after it."""
    rate, channels = source.sample_rate, source.channels
    passes = outpaint_passes(request.extend_before_duration, source.duration_s,
                             request.extend_after_duration, request.context_duration,
                             engine.extends_both_sides)
    before = after = torch.zeros(channels, 0)
    done: list[dict[str, Any]] = []
    output = None
    for index, planned in enumerate(passes):
        first, last = (audio_ops.seconds_to_frames(s, rate) for s in planned.context)
        context = Audio(source.samples[:, first:last], rate)
        output = engine.extend(request, context, planned.before_s, planned.after_s, seed, retake_seed,
                               offset_steps(on_step, index, len(passes)))
        made_before_s, made_after_s = output.extension_s
        made_before = audio_ops.seconds_to_frames(made_before_s, rate)
        rendered = to_source(output.audio, source, made_before + context.frames
                             + audio_ops.seconds_to_frames(made_after_s, rate))
        rendered_context = rendered[:, made_before:made_before + context.frames]
        gain = audio_ops.level_match_gain(context.samples, rendered_context)
        if planned.before_s > 0:
            # The model makes whole latent frames; a shortfall is silence at the very start.
            wanted = audio_ops.seconds_to_frames(planned.before_s, rate)
            before = fit_end(rendered[:, :made_before].flip(-1), wanted).flip(-1) * gain
        if planned.after_s > 0:
            wanted = audio_ops.seconds_to_frames(planned.after_s, rate)
            after = fit_end(rendered[:, made_before + context.frames:], wanted) * gain
        done.append({"context_s": list(planned.context), "new_s": [planned.before_s, planned.after_s],
                     "made_s": [made_before_s, made_after_s], "gain": gain})
    assert output is not None
    extended = torch.cat([before, source.samples, after], dim=-1)
    # The engine's values are the last pass's; each pass's own are in "passes".
    effective = {**output.effective, "context_duration": request.context_duration, "passes": done}
    return EngineOutput(Audio(extended, rate), effective, output.latents, output.unused)


def offset_steps(on_step: StepCallback, index: int, count: int) -> StepCallback:
    """Pass `index` of `count` reports its steps as part of the whole run."""
    if count == 1:
        return on_step
    return lambda done, total: on_step(index * total + done, count * total)


def to_source(rendered: Audio, source: Audio, frames: int) -> torch.Tensor:
    """An engine's audio at the source's sample rate and channel count, exactly `frames` long."""
    back = audio_ops.to_channels(audio_ops.resample_audio(rendered, source.sample_rate), source.channels)
    return fit_end(back.samples, frames)


def fit_end(samples: torch.Tensor, frames: int) -> torch.Tensor:
    """Trim or zero-pad (channels, n) at the end to exactly `frames`."""
    if samples.shape[-1] >= frames:
        return samples[..., :frames]
    return torch.nn.functional.pad(samples, (0, frames - samples.shape[-1]))


def check_whole_track_source(task: str, source: Audio) -> None:
    """Edit and cover re-render the whole track: at most what a model sees at once."""
    if source.duration_s > MAX_WINDOW_S + 1e-6:
        raise InputError(f"the {task} task re-renders the whole track, and the model hears at most "
                         f"{MAX_WINDOW_S:g} s at once; this one is {source.duration_s:.1f} s: trim it, "
                         f"or change part of it with inpaint")
