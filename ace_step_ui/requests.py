"""The hosted ACE-Step APIs' requests: parameter names, ranges, defaults and validation.

One dataclass per task. Each field's metadata carries its range, choices and help text, so the UI,
the CLI and the Gradio API are all built from this one table. `parse_request` validates a plain
mapping (JSON, form values, keyword arguments) once, before any heavy work, and raises `InputError`
with a message that says what to change. Where the hosted pages disagree we follow fal's schema for
the advanced parameters and RunComfy's for inpaint/outpaint; `duration` starts at 1 s (the hosted
pages say 5 s) because upstream accepts any length and short clips make fast tests. Parameters that
only ACE-Step v1 applies (ERG, `oss_steps`, LoRA, audio-to-audio, the edit task) are upstream's, under
the names of the hosted schema where it has them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from .errors import InputError

SEED_MAX = 2147483647
TASKS = ("generate", "inpaint", "outpaint", "edit", "cover", "extract", "lego", "complete",
         "prompt_to_audio")
# The track names of upstream ACE-Step 1.5's stem tasks (its UI's list).
TRACKS = ("vocals", "backing_vocals", "drums", "bass", "guitar", "keyboard", "percussion", "strings",
          "synth", "fx", "brass", "woodwinds")
INSTRUMENTAL_MARKERS = ("[inst]", "[instrumental]")
MIN_EDIT_SECONDS = 1.0
MAX_EDIT_SECONDS = 240.0  # the hosted APIs' per-call limit
CONTEXT_SECONDS = 30.0
CONTEXT_HELP = ("Seconds of the original the model hears next to the edit, on each side (within the "
                "240 s it hears at once); more follows the song more closely and costs more time. "
                "The rest of the track is not processed.")
MAX_OSS_STEPS = 200  # entries, as many as number_of_steps allows
MAX_OSS_STEP = 1000  # the schedulers' training timesteps: a longer base schedule only repeats them
MAX_OSS_STEPS_CHARS = 10 * MAX_OSS_STEPS  # the text form: "1000.0, " fits in 10 characters an entry
# Tags and lyrics: a 240 s song's lyrics take 1,000 to 3,000 characters, and v1's text encoder reads
# only 256 tokens of tags. It bounds the lyric tokenisation; v1 also refuses over 4,096 lyric tokens.
MAX_TEXT_CHARS = 4_000
MAX_SOURCE_CHARS = 2_048  # a path, an https:// URL or a Hub id (URLs past 2,048 break many servers)
AUDIO_SOURCES = ("audio", "reference_audio")  # also take data: URIs, which remote.py bounds (200 MB)
SHOWN_CHARS = 40  # how much of a value a message quotes
# The song metadata ACE-Step 1.5 takes, as its 5 Hz LM writes it (upstream's constants.py).
BPM_RANGE = (30, 300)
TIME_SIGNATURES = (2, 3, 4, 6)  # beats per bar; 6 is 6/8
LANGUAGES = (  # upstream's VALID_LANGUAGES, less "unknown"
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi",
    "hr", "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl",
    "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi",
    "yue", "zh")
# Inpaint's extra ranges: each repainted in its own pass, so each is one edit's length at most.
MAX_EXTRA_RANGES = 8
RANGE_KEYS = ("start_time", "end_time", "tags", "lyrics")
RANGE_EXAMPLE = '[{"start_time": 40, "end_time": 48, "tags": "jazz, brass", "lyrics": ""}]'
# The JSON text form: every range's tags and lyrics at their longest, each character \u-escaped.
MAX_RANGES_CHARS = MAX_EXTRA_RANGES * (2 * 6 * MAX_TEXT_CHARS + 200)
KEYSCALE = re.compile(r"([A-G])\s*(#|b|♯|♭)?\s+(major|minor)", re.IGNORECASE)
V1_ONLY = " ACE-Step v1 only."


def _param(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           choices: tuple[str, ...] | None = None, required: bool = False, advanced: bool = False,
           max_length: int | None = None) -> Any:
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "choices": choices,
            "required": required, "advanced": advanced, "max_length": max_length}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Request:
    """Parameters every task shares: the seed and the advanced sampler set."""

    seed: int = _param(-1, "Random seed; -1 draws one (the seed used is returned).",
                       minimum=-1, maximum=SEED_MAX)
    retake_seed: int = _param(-1, "Seed of the second noise: the one `variance` blends in, and the "
                                  "new parts' noise of outpaint and edit; -1 derives it from `seed`.",
                              minimum=-1, maximum=SEED_MAX, advanced=True)
    number_of_steps: int = _param(27, "Diffusion steps.", minimum=1, maximum=200, advanced=True)
    scheduler: str = _param("euler", "Sampler: euler (ODE), heun (2nd order, about twice the model "
                                     "calls) or pingpong (SDE; ACE-Step v1 only).",
                            choices=("euler", "heun", "pingpong"), advanced=True)
    guidance_type: str = _param("apg", "Classifier-free guidance rule.",
                                choices=("apg", "cfg", "cfg_star"), advanced=True)
    granularity_scale: int = _param(10, "Granularity scale; higher values can reduce artifacts.",
                                    minimum=-100, maximum=100, advanced=True)
    guidance_interval: float = _param(0.5, "Share of the steps, centred, that get guidance "
                                           "(0.5 = steps 25%–75%).", minimum=0.0, maximum=1.0,
                                      advanced=True)
    guidance_interval_decay: float = _param(0.0, "Decay of the guidance scale towards the minimum "
                                                 "across the interval; 0 = none.",
                                            minimum=0.0, maximum=1.0, advanced=True)
    guidance_scale: float = _param(15.0, "Guidance scale.", minimum=0.0, maximum=200.0, advanced=True)
    minimum_guidance_scale: float = _param(3.0, "Guidance scale reached at the end of the decay.",
                                           minimum=0.0, maximum=200.0, advanced=True)
    tag_guidance_scale: float = _param(5.0, "Guidance scale of the tags alone.",
                                       minimum=0.0, maximum=10.0, advanced=True)
    lyric_guidance_scale: float = _param(1.5, "Guidance scale of the lyrics alone.",
                                         minimum=0.0, maximum=10.0, advanced=True)
    use_erg_tag: bool = _param(True, "Entropy rectifying guidance on the tags: the unconditional "
                                     "branch sees weakened tag attention instead of no tags (takes "
                                     "effect only with use_erg_lyric)." + V1_ONLY, advanced=True)
    use_erg_lyric: bool = _param(True, "Entropy rectifying guidance on the lyrics: the unconditional "
                                       "branch sees weakened lyric attention instead of no lyrics."
                                       + V1_ONLY, advanced=True)
    use_erg_diffusion: bool = _param(True, "Entropy rectifying guidance in the transformer: the "
                                           "unconditional pass weakens its cross-attention." + V1_ONLY,
                                     advanced=True)
    oss_steps: tuple[int, ...] = _param((), "Optimal step schedule: increasing 1-based step numbers "
                                            "of a max(oss_steps)-step schedule (e.g. 16, 29, 52, 76, "
                                            "100); overrides number_of_steps; not with heun; empty = "
                                            "the plain schedule." + V1_ONLY,
                                        minimum=1, maximum=MAX_OSS_STEP, advanced=True,
                                        max_length=MAX_OSS_STEPS_CHARS)
    lora: str = _param("", "LoRA adapter for the transformer, made for the chosen model: a local "
                           "folder or file, or a Hub repo id such as "
                           "ACE-Step/ACE-Step-v1-chinese-rap-LoRA; empty = none.",
                       advanced=True, max_length=MAX_SOURCE_CHARS)
    lora_scale: float = _param(1.0, "Weight of the LoRA (negative values push away from it).",
                               minimum=-3.0, maximum=3.0, advanced=True)
    # Names the caller set explicitly; engines keep their own presets for the rest.
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False)

    task = ""

    def is_set(self, name: str) -> bool:
        return name in self.explicit

    def to_dict(self) -> dict[str, Any]:
        """The parameters as JSON has them (extra ranges as objects)."""
        return {f.name: ([dataclasses.asdict(extra) for extra in getattr(self, f.name)]
                         if _field_kind(f) == "range_list" else getattr(self, f.name))
                for f in public_fields(type(self))}


@dataclass(frozen=True, kw_only=True)
class SongText:
    tags: str = _param("", "Comma-separated genre, mood and instrument tags.", required=True,
                       max_length=MAX_TEXT_CHARS)
    lyrics: str = _param("", "Lyrics with [verse], [chorus], [bridge]… markers; [inst] or "
                             "[instrumental] for no vocals; blank lets the model decide.",
                         max_length=MAX_TEXT_CHARS)


# A dataclass lists the fields of its last base first: the song's tags and lyrics, then the rest.
@dataclass(frozen=True, kw_only=True)
class BaseRequest(Request, SongText):
    """A task sung from the caller's tags and lyrics (every task but prompt-to-audio)."""


V15_ONLY = " ACE-Step 1.5 only."
THINKING_HELP = ("ACE-Step 1.5's 5 Hz LM plans the song first: it fills in the bpm, key, time "
                 "signature and language left empty, then writes the song's audio codes, which "
                 "the DiT renders (slower; upstream's thinking mode). Off: the DiT alone."
                 + V15_ONLY)


@dataclass(frozen=True, kw_only=True)
class PromptFields:
    prompt: str = _param("", "What the song should be, in your words: the planner (ACE-Step "
                             "1.5's 5 Hz LM) writes its tags, lyrics and metadata from it.",
                         required=True, max_length=MAX_TEXT_CHARS)
    instrumental: bool = _param(False, "Write an instrumental: no lyrics, no vocals.")
    duration: float = _param(60.0, "Length of the song in seconds.", minimum=1.0, maximum=240.0)
    thinking: bool = _param(False, THINKING_HELP, advanced=True)


@dataclass(frozen=True, kw_only=True)
class PromptToAudioRequest(Request, PromptFields):
    """fal's prompt-to-audio: a prompt becomes tags and lyrics (the planner), then a song."""

    task = "prompt_to_audio"


@dataclass(frozen=True, kw_only=True)
class GenerateRequest(BaseRequest):
    duration: float = _param(60.0, "Length of the song in seconds.", minimum=1.0, maximum=240.0)
    variance: float = _param(0.0, "Retake: how far the song may drift from the one `seed` gives "
                                  "(0 = that song, 1 = the song of retake_seed); it blends the "
                                  "two seeds' noises." + V1_ONLY, minimum=0.0, maximum=1.0,
                             advanced=True)
    reference_audio: str = _param("", "Audio-to-audio: a reference track (file path or https:// "
                                      "URL) that the song starts from; its length sets the song's, "
                                      "and duration is not used. Empty = plain generation."
                                  + V1_ONLY, advanced=True, max_length=MAX_SOURCE_CHARS)
    audio2audio_strength: float = _param(0.5, "How closely the song follows the reference audio "
                                               "(higher = closer); it runs (1 - strength) x "
                                               "number_of_steps steps, at least 1." + V1_ONLY,
                                         minimum=0.0, maximum=1.0, advanced=True)
    bpm: int = _param(0, f"Beats per minute, {BPM_RANGE[0]}–{BPM_RANGE[1]}; 0 = not given (the "
                         f"planner's, when thinking)." + V15_ONLY, minimum=0,
                      maximum=BPM_RANGE[1], advanced=True)
    keyscale: str = _param("", "Key and mode, like 'C major' or 'F# minor'; empty = not given."
                           + V15_ONLY, advanced=True, max_length=20)
    timesignature: int = _param(0, "Beats per bar: 2, 3, 4 or 6 (6/8); 0 = not given." + V15_ONLY,
                                minimum=0, maximum=6, advanced=True)
    vocal_language: str = _param("", "Language of the lyrics as a code (en, zh, ja, es, ...); "
                                     "empty = the model's default (en), or the planner's when "
                                     "thinking." + V15_ONLY, advanced=True, max_length=8)
    thinking: bool = _param(False, THINKING_HELP, advanced=True)

    task = "generate"


@dataclass(frozen=True, kw_only=True)
class SourceRequest(BaseRequest):
    audio: str = _param("", "Source audio: a file path or an https:// URL (WAV, MP3, FLAC, OGG, "
                            "M4A…, up to 60 minutes). `audio_url` is accepted too.", required=True,
                    max_length=MAX_SOURCE_CHARS)


@dataclass(frozen=True)
class ExtraRange:
    """One more range an inpaint repaints, in seconds from the track's start; empty tags or lyrics
    are the request's own."""

    start_time: float
    end_time: float
    tags: str = ""
    lyrics: str = ""


@dataclass(frozen=True, kw_only=True)
class InpaintRequest(SourceRequest):
    start_time: float = _param(0.0, "Start of the edited range in seconds, from the chosen anchor.",
                               minimum=0.0, maximum=240.0)
    start_time_relative_to: str = _param("start", "Anchor of start_time: the start or the end of "
                                                  "the track.", choices=("start", "end"))
    end_time: float = _param(30.0, "End of the edited range in seconds, from the chosen anchor.",
                             minimum=0.0, maximum=240.0)
    end_time_relative_to: str = _param("start", "Anchor of end_time: the start or the end of the "
                                                "track.", choices=("start", "end"))
    variance: float = _param(0.5, "How far the new range may drift from the original (0–1).",
                             minimum=0.0, maximum=1.0)
    context_duration: float = _param(CONTEXT_SECONDS, CONTEXT_HELP, minimum=0.0,
                                     maximum=MAX_EDIT_SECONDS, advanced=True)
    crossfade_duration: float = _param(0.05, "Equal-power crossfade, in seconds, just inside each "
                                             "edge of the range (at most half the range); outside "
                                             "the range every sample is the original's.",
                                       minimum=0.0, maximum=10.0, advanced=True)
    extra_ranges: tuple[ExtraRange, ...] = _param(
        (), f"More ranges to repaint in the same run, each with its own tags and lyrics (empty = "
            f"the request's): up to {MAX_EXTRA_RANGES} of {{start_time, end_time, tags, lyrics}} "
            f"in seconds from the track's start, anywhere in it (past the first 240 s too), each "
            f"{MIN_EDIT_SECONDS:g}–{MAX_EDIT_SECONDS:g} s long; none may overlap the main range "
            f"or another. They run after the main range, by start time, each hearing the track "
            f"as the ranges before it left it. E.g. {RANGE_EXAMPLE}.",
        max_length=MAX_RANGES_CHARS)

    task = "inpaint"


@dataclass(frozen=True, kw_only=True)
class OutpaintRequest(SourceRequest):
    extend_before_duration: float = _param(0.0, "Seconds of new audio before the track.",
                                           minimum=0.0, maximum=240.0)
    extend_after_duration: float = _param(30.0, "Seconds of new audio after the track.",
                                          minimum=0.0, maximum=240.0)
    context_duration: float = _param(CONTEXT_SECONDS, CONTEXT_HELP, minimum=1.0,
                                     maximum=MAX_EDIT_SECONDS, advanced=True)

    task = "outpaint"


@dataclass(frozen=True, kw_only=True)
class WholeTrackRequest(SourceRequest):
    """A task that re-renders the whole source (at most what a model hears at once, 240 s)."""


@dataclass(frozen=True, kw_only=True)
class EditRequest(WholeTrackRequest):
    """The hosted audio-to-audio request: the same song with new tags (remix) or new lyrics."""

    edit_mode: str = _param("remix", "remix: new style, same structure; lyrics: new words, same "
                                     "music.", choices=("remix", "lyrics"))
    original_tags: str = _param("", "The tags the source audio was made with (or that describe "
                                    "it).", required=True, max_length=MAX_TEXT_CHARS)
    original_lyrics: str = _param("", "The lyrics of the source audio; blank if none or unknown.",
                                  max_length=MAX_TEXT_CHARS)
    original_seed: int = _param(-1, "The seed the source audio was made with; -1 = unknown.",
                                minimum=-1, maximum=SEED_MAX, advanced=True)

    task = "edit"


@dataclass(frozen=True, kw_only=True)
class CoverRequest(WholeTrackRequest):
    """ACE-Step 1.5's cover: the source's structure (its 5 Hz semantic codes) sung anew from the
    tags and lyrics."""

    audio_cover_strength: float = _param(1.0, "How closely the cover keeps the source's structure: "
                                              "each step blends the source-conditioned and the "
                                              "tags-only prediction (1 = the source's alone; lower "
                                              "moves towards the tags). ACE-Step 1.5 only.",
                                         minimum=0.0, maximum=1.0)

    task = "cover"


BASE_ONLY = " ACE-Step 1.5 base only."


@dataclass(frozen=True, kw_only=True)
class ExtractRequest(WholeTrackRequest):
    """ACE-Step 1.5's extract: one named track (stem) out of a mix."""

    track_name: str = _param("vocals", "The track to extract from the mix." + BASE_ONLY,
                             choices=TRACKS)

    task = "extract"


@dataclass(frozen=True, kw_only=True)
class LegoRequest(WholeTrackRequest):
    """ACE-Step 1.5's lego: a named track made to fit the mix it hears."""

    track_name: str = _param("drums", "The track to make for the mix; the result is that track."
                             + BASE_ONLY, choices=TRACKS)

    task = "lego"


@dataclass(frozen=True, kw_only=True)
class CompleteRequest(WholeTrackRequest):
    """ACE-Step 1.5's complete: a partial track (e.g. vocals alone) filled in to a full one."""

    track_classes: str = _param("", "Comma-separated tracks to add, from: " + ", ".join(TRACKS)
                                + "; empty lets the model choose." + BASE_ONLY,
                                max_length=MAX_TEXT_CHARS)

    task = "complete"

    @property
    def track_list(self) -> list[str]:
        return [name.strip() for name in self.track_classes.split(",") if name.strip()]


REQUEST_TYPES: dict[str, type[Request]] = {
    "generate": GenerateRequest, "inpaint": InpaintRequest, "outpaint": OutpaintRequest,
    "edit": EditRequest, "cover": CoverRequest, "extract": ExtractRequest, "lego": LegoRequest,
    "complete": CompleteRequest, "prompt_to_audio": PromptToAudioRequest,
}
ALIASES = {"audio_url": "audio", "reference_audio_url": "reference_audio"}
KINDS = {"str": "str", "int": "int", "float": "float", "bool": "bool",
         "tuple[int, ...]": "int_list", "tuple[ExtraRange, ...]": "range_list"}
TRUE_WORDS, FALSE_WORDS = ("true", "1"), ("false", "0")


def public_fields(request_type: type[Request]) -> list[dataclasses.Field]:
    """The request's parameters in schema order, without internal bookkeeping."""
    return [f for f in dataclasses.fields(request_type) if f.name != "explicit"]


def schema(task: str) -> dict[str, dict[str, Any]]:
    """Name → {type, default, minimum, maximum, choices, required, advanced, help} for one task."""
    request_type = _request_type(task)
    return {f.name: {"type": _field_kind(f), "default": f.default, **f.metadata}
            for f in public_fields(request_type)}


def parse_request(task: str, payload: Mapping[str, Any]) -> Request:
    """Validate `payload` against `task`'s schema. Missing or null values take the hosted default."""
    request_type = _request_type(task)
    if not isinstance(payload, Mapping):
        raise InputError(f"the {task} input must be a JSON object of parameters, "
                         f"not {type(payload).__name__}")
    fields = {f.name: f for f in public_fields(request_type)}
    values: dict[str, Any] = {}
    for key, raw in payload.items():
        if not isinstance(key, str):
            raise InputError(f"parameter names must be text, not {_shown(key)}")
        name = ALIASES.get(key, key)
        if name not in fields:
            raise InputError(_unknown_parameter_message(key, task, fields))
        if raw is None:
            continue
        value = _coerce(fields[name], raw)
        if name in values and values[name] != value:
            other = next(alias for alias, target in ALIASES.items() if target == name)
            raise InputError(f"both '{name}' and '{other}' are set and differ; give only one")
        values[name] = value
    for name, spec in fields.items():
        if spec.metadata["required"] and not str(values.get(name, "")).strip():
            raise InputError(f"'{name}' is required for {task}: {spec.metadata['help']}")
    request = request_type(**values, explicit=frozenset(values))
    _check_combination(request)
    return request


def _request_type(task: str) -> type[Request]:
    if not isinstance(task, str) or task not in REQUEST_TYPES:
        raise InputError(f"unknown task {_shown(task)}; choose one of {', '.join(TASKS)}")
    return REQUEST_TYPES[task]


def is_default(task: str, name: str, value: Any) -> bool:
    """Whether `value`, as a form or API sends it, means `name`'s default (an empty oss_steps text
    is the empty schedule, an empty list or text no extra ranges); a value that fails validation is
    not the default."""
    spec = {f.name: f for f in public_fields(_request_type(task))}[name]
    if value is None:
        return True
    try:
        return _coerce(spec, value) == spec.default
    except InputError:
        return False


def _field_kind(spec: dataclasses.Field) -> str:
    annotation = spec.type if isinstance(spec.type, str) else spec.type.__name__
    return KINDS[annotation]


def _unknown_parameter_message(key: str, task: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key[:SHOWN_CHARS], list(fields) + list(ALIASES), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown parameter {_shown(key)} for {task}{hint}; known: {', '.join(fields)}"


def _coerce(spec: dataclasses.Field, raw: Any) -> Any:
    kind = _field_kind(spec)
    meta = spec.metadata
    name = spec.name
    if kind == "bool":
        return _as_bool(name, raw)
    if kind == "int_list":
        return _as_int_list(name, raw, meta["minimum"], meta["maximum"], meta["max_length"])
    if kind == "range_list":
        return _as_ranges(name, raw, meta["max_length"])
    if kind == "str":
        if not isinstance(raw, str):
            raise InputError(f"'{name}' must be text, not {type(raw).__name__}")
        if not (name in AUDIO_SOURCES and raw.lstrip()[:5].lower() == "data:"):
            _check_length(name, raw, meta["max_length"])
        if meta["choices"] and raw not in meta["choices"]:
            raise InputError(f"'{name}' must be one of {', '.join(meta['choices'])}, not {_shown(raw)}")
        return raw
    number = _as_number(name, raw)
    if kind == "int":
        number = _whole(name, number, raw)
    _check_range(name, number, meta["minimum"], meta["maximum"])
    return number


def _whole(name: str, number: float, raw: Any) -> int:
    if number != int(number):
        raise InputError(f"'{name}' must be a whole number, not {_shown(raw)}")
    return int(number)


def _check_range(name: str, number: float, low: float | None, high: float | None) -> None:
    if (low is not None and number < low) or (high is not None and number > high):
        raise InputError(f"'{name}' must be between {_fmt(low)} and {_fmt(high)}, not {_fmt(number)}")


def _check_length(name: str, text: str, limit: int | None) -> None:
    if limit is not None and len(text) > limit:
        raise InputError(f"'{name}' is {len(text):,} characters long; at most {limit:,} are allowed: "
                         f"shorten it")


def _as_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return raw.strip().lower() in TRUE_WORDS
    raise InputError(f"'{name}' must be true or false, not {_shown(raw)}")


def _as_int_list(name: str, raw: Any, low: float, high: float, max_length: int) -> tuple[int, ...]:
    """A JSON list of whole numbers, or upstream's text form "16, 29, 52"; empty = none."""
    if isinstance(raw, str):
        _check_length(name, raw, max_length)
        parts: list[Any] = raw.replace(",", " ").split()
    elif isinstance(raw, (list, tuple)):
        parts = list(raw)
    else:
        raise InputError(f"'{name}' must be a list of whole numbers such as [16, 29, 52] or the "
                         f"text \"16, 29, 52\", not {type(raw).__name__}")
    if len(parts) > MAX_OSS_STEPS:
        raise InputError(f"'{name}' has {len(parts)} entries; at most {MAX_OSS_STEPS} are allowed")
    steps = []
    for part in parts:
        number = _whole(name, _as_number(name, part), part)
        if not low <= number <= high:
            raise InputError(f"'{name}' entries must be between {_fmt(low)} and {_fmt(high)}, "
                             f"not {_fmt(number)}")
        steps.append(number)
    for earlier, later in zip(steps, steps[1:]):
        if later <= earlier:
            raise InputError(f"'{name}' must increase, but {later} follows {earlier}")
    return tuple(steps)


def _as_ranges(name: str, raw: Any, max_length: int) -> tuple[ExtraRange, ...]:
    """A list of {start_time, end_time, tags?, lyrics?} objects or of [start_time, end_time, tags?,
    lyrics?] rows (a table's), or that list as JSON text; empty = none."""
    if isinstance(raw, str):
        _check_length(name, raw, max_length)
        if not raw.strip():
            return ()
        try:
            raw = json.loads(raw)
        except RecursionError:
            raise InputError(f"'{name}' is nested too deeply; give a list such as "
                             f"{RANGE_EXAMPLE}") from None
        except ValueError as error:
            raise InputError(f"'{name}' is not valid JSON ({error}); give a list such as "
                             f"{RANGE_EXAMPLE}") from None
    if not isinstance(raw, (list, tuple)):
        raise InputError(f"'{name}' must be a list of ranges such as {RANGE_EXAMPLE}, or that "
                         f"list as JSON text, not {type(raw).__name__}")
    if len(raw) > MAX_EXTRA_RANGES:
        raise InputError(f"'{name}' has {len(raw)} ranges; at most {MAX_EXTRA_RANGES} are allowed: "
                         f"drop some, or run the rest in a second inpaint")
    ranges = tuple(_as_range(f"'{name}' range {number}", item)
                   for number, item in enumerate(raw, 1))
    check_overlaps([(f"extra range {number}", extra.start_time, extra.end_time)
                    for number, extra in enumerate(ranges, 1)])
    return ranges


def _as_range(where: str, item: Any) -> ExtraRange:
    if isinstance(item, Mapping):
        for key in item:
            if key not in RANGE_KEYS:
                typed = key[:SHOWN_CHARS] if isinstance(key, str) else ""
                close = difflib.get_close_matches(typed, RANGE_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise InputError(f"{where} has an unknown key {_shown(key)}{hint}; a range takes "
                                 f"{', '.join(RANGE_KEYS)}")
        values = dict(item)
    elif isinstance(item, (list, tuple)):
        if not 2 <= len(item) <= len(RANGE_KEYS):
            raise InputError(f"{where} has {len(item)} item{'s' * (len(item) != 1)}; give 2 to "
                             f"{len(RANGE_KEYS)}: [start_time, end_time, tags, lyrics]")
        values = dict(zip(RANGE_KEYS, item))
    else:
        raise InputError(f"{where} must be an object such as {RANGE_EXAMPLE[1:-1]} or a list "
                         f"[start_time, end_time, tags, lyrics], not {type(item).__name__}")
    start, end = (_range_seconds(where, key, values.get(key)) for key in RANGE_KEYS[:2])
    tags, lyrics = (_range_text(where, key, values.get(key)) for key in RANGE_KEYS[2:])
    if end <= start:
        raise InputError(f"{where} ends at {_seconds(end)} s, {'at' if end == start else 'before'} "
                         f"its start {_seconds(start)} s; give an end_time after its start_time")
    spans = f"{where} ({_seconds(start)}–{_seconds(end)} s) is {_seconds(end - start)} s long"
    if end - start < MIN_EDIT_SECONDS:
        raise InputError(f"{spans}; a range must be at least {MIN_EDIT_SECONDS:g} s: widen it")
    if end - start > MAX_EDIT_SECONDS:
        raise InputError(f"{spans}; at most {MAX_EDIT_SECONDS:g} s can be regenerated in one "
                         f"pass: split it into shorter ranges")
    return ExtraRange(start, end, tags, lyrics)


@contextmanager
def _within(where: str) -> Iterator[None]:
    """A message about one part of a value says which part it is."""
    try:
        yield
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def _range_seconds(where: str, key: str, raw: Any) -> float:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InputError(f"{where} needs a {key}, in seconds from the track's start")
    with _within(where):
        number = _as_number(key, raw)
    try:
        seconds = float(number)
    except OverflowError:  # an int past any float
        seconds = math.inf
    if not 0 <= seconds < math.inf:
        raise InputError(f"{where}: '{key}' must be seconds from the track's start, 0 or more, "
                         f"not {_fmt(number)}")
    return seconds


def _range_text(where: str, key: str, raw: Any) -> str:
    if raw is None:
        return ""
    with _within(where):
        if not isinstance(raw, str):
            raise InputError(f"'{key}' must be text, not {type(raw).__name__}")
        _check_length(key, raw, MAX_TEXT_CHARS)
    return raw


def check_overlaps(ranges: list[tuple[str, float, float]]) -> None:
    """No two of the (name, start_s, end_s) ranges overlap; one may end where the next starts."""
    ordered = sorted(ranges, key=lambda named: named[1:])
    for (name, start, end), (later, later_start, later_end) in zip(ordered, ordered[1:]):
        if later_start < end:
            raise InputError(f"{later} ({_seconds(later_start)}–{_seconds(later_end)} s) overlaps "
                             f"{name} ({_seconds(start)}–{_seconds(end)} s): start {later} at "
                             f"{_seconds(end)} s or later, or end {name} at "
                             f"{_seconds(later_start)} s or earlier (ranges may touch)")


def _seconds(x: float) -> str:
    """Seconds as messages show them: to the millisecond, without trailing zeros."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _as_number(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise InputError(f"'{name}' must be a number, not {raw!r}")
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raise InputError(f"'{name}' must be a number, not {_shown(raw)}") from None
    if not isinstance(raw, (int, float)):
        raise InputError(f"'{name}' must be a number, not {type(raw).__name__}")
    if isinstance(raw, float) and not math.isfinite(raw):  # an int of any size is finite
        raise InputError(f"'{name}' must be a finite number, not {raw!r}")
    return raw


def _fmt(x: float | None) -> str:
    """A number as messages show it: whole numbers without ".0", huge ones (of any size) as 1e+20."""
    if x is None:
        return "unbounded"
    if abs(x) >= 1e15:
        try:
            return f"{float(x):.6g}"
        except OverflowError:
            return "a number beyond ±1e308"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _shown(raw: Any) -> str:
    """A value the caller sent, quoted short: numbers as numbers, text cut, anything else by type."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return _fmt(raw)
    if isinstance(raw, str):
        if len(raw) <= SHOWN_CHARS:
            return repr(raw)
        return f"{raw[:SHOWN_CHARS]!r}… ({len(raw):,} characters)"
    if raw is None or isinstance(raw, bool):
        return repr(raw)
    return f"a {type(raw).__name__}"


def _check_combination(request: Request) -> None:
    if isinstance(request, CompleteRequest):
        unknown = [name for name in request.track_list if name not in TRACKS]
        if unknown:
            raise InputError(f"track_classes names {_shown(unknown[0])}, which is no track; "
                             f"choose from {', '.join(TRACKS)}")
    if isinstance(request, GenerateRequest):
        check_song_metadata(request.bpm, request.keyscale, request.timesignature,
                            request.vocal_language)
    if request.oss_steps and request.scheduler == "heun":
        raise InputError("oss_steps work with the euler and pingpong schedulers, not heun; choose "
                         "another scheduler or clear oss_steps")
    if isinstance(request, OutpaintRequest):
        if request.extend_before_duration <= 0 and request.extend_after_duration <= 0:
            raise InputError("extend_before_duration and extend_after_duration are both 0; "
                             "set at least one above 0 to extend the track")
    if isinstance(request, InpaintRequest):
        same_anchor = request.start_time_relative_to == request.end_time_relative_to
        if same_anchor:
            start, end = request.start_time, request.end_time
            if request.start_time_relative_to == "end":
                start, end = -start, -end
            if end - start < MIN_EDIT_SECONDS:
                raise InputError(_range_message(start, end, request))


def check_song_metadata(bpm: int, keyscale: str, timesignature: int, vocal_language: str) -> None:
    """The metadata fields of ACE-Step 1.5 (0 and "" are "not given")."""
    low, high = BPM_RANGE
    if bpm and not low <= bpm <= high:
        raise InputError(f"'bpm' must be 0 (not given) or from {low} to {high}, not {bpm}")
    if keyscale.strip() and not KEYSCALE.fullmatch(keyscale.strip()):
        raise InputError(f"'keyscale' must be a note and a mode, like 'C major' or 'F# minor', "
                         f"not {_shown(keyscale)}")
    if timesignature and timesignature not in TIME_SIGNATURES:
        raise InputError(f"'timesignature' must be 0 (not given) or "
                         f"{', '.join(map(str, TIME_SIGNATURES[:-1]))} or {TIME_SIGNATURES[-1]} "
                         f"beats per bar, not {timesignature}")
    if vocal_language.strip() and vocal_language.strip().lower() not in LANGUAGES:
        raise InputError(f"'vocal_language' must be a language code the model knows "
                         f"({', '.join(LANGUAGES)}), not {_shown(vocal_language)}")


def resolve_range(request: InpaintRequest, source_seconds: float) -> tuple[float, float]:
    """Absolute (start_s, end_s) of the edited range in a source of `source_seconds`."""
    start = _absolute(request.start_time, request.start_time_relative_to, source_seconds)
    end = _absolute(request.end_time, request.end_time_relative_to, source_seconds)
    if start < 0:
        raise InputError(f"start_time resolves to {start:.1f} s, before the start of the "
                         f"{source_seconds:.1f} s source; lower start_time")
    if end > source_seconds + 1e-6:
        raise InputError(f"end_time resolves to {end:.1f} s, past the end of the "
                         f"{source_seconds:.1f} s source; lower end_time or anchor it to the end")
    if end - start < MIN_EDIT_SECONDS:
        raise InputError(_range_message(start, end, request))
    if end - start > MAX_EDIT_SECONDS:
        raise InputError(f"the edited range {start:.1f}–{end:.1f} s is {end - start:.1f} s long; at "
                         f"most {MAX_EDIT_SECONDS:g} s can be regenerated in one call: narrow it")
    return start, min(end, source_seconds)


def resolve_extra_ranges(request: InpaintRequest, main_range: tuple[float, float],
                         source_seconds: float) -> tuple[ExtraRange, ...]:
    """The extra ranges in a source of `source_seconds`: each inside it, none overlapping another
    or the main range (`resolve_range`'s)."""
    inside = []
    for number, extra in enumerate(request.extra_ranges, 1):
        if extra.end_time > source_seconds + 1e-6:
            raise InputError(f"extra range {number} ({_seconds(extra.start_time)}–"
                             f"{_seconds(extra.end_time)} s) ends past the end of the "
                             f"{_seconds(source_seconds)} s source; end it at "
                             f"{_seconds(source_seconds)} s at the latest, or drop it")
        inside.append(dataclasses.replace(extra, end_time=min(extra.end_time, source_seconds)))
    check_overlaps([("the main range", *main_range)]
                   + [(f"extra range {number}", extra.start_time, extra.end_time)
                      for number, extra in enumerate(inside, 1)])
    return tuple(inside)


def _absolute(value: float, anchor: str, source_seconds: float) -> float:
    return source_seconds - value if anchor == "end" else value


def _range_message(start: float, end: float, request: InpaintRequest) -> str:
    where = "before" if end < start else "too close to"
    shown_start, shown_end = abs(start), abs(end)
    if request.start_time_relative_to == request.end_time_relative_to == "end":
        return (f"end_time {shown_end:.1f} s from the end is {where} start_time {shown_start:.1f} s "
                f"from the end; the edited range must be at least {MIN_EDIT_SECONDS:g} s long")
    return (f"end_time resolves to {end:.1f} s, {where} start_time {start:.1f} s; the edited range "
            f"must be at least {MIN_EDIT_SECONDS:g} s long")


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """The seed to use: `seed` itself, or a fresh one when it is -1."""
    if seed >= 0:
        return seed
    return (rng or random.SystemRandom()).randint(0, SEED_MAX)


def offset_seed(seed: int, by: int) -> int:
    """`seed` + `by`, wrapping at the maximum."""
    return (seed + by) % (SEED_MAX + 1)


def derive_retake_seed(seed: int) -> int:
    """The retake seed used when none is given: the next seed, wrapping at the maximum."""
    return offset_seed(seed, 1)


def is_instrumental(lyrics: str) -> bool:
    return lyrics.strip().lower() in INSTRUMENTAL_MARKERS
