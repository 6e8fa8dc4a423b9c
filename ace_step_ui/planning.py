"""What the planner (ACE-Step 1.5's 5 Hz LM, v15/planner.py) adds to a job.

- prompt-to-audio: the planner *writes* tags, lyrics and metadata from the prompt; the song is then
  an ordinary generate request with them, which the chosen model (v1 or 1.5) sings;
- thinking (1.5): the planner *thinks* the song's tags and lyrics into the metadata left empty and
  the audio codes that the DiT renders.

The generate request a plan leads to is returned whole, so a result can be replayed as a plain
generate (same seed, same song) and edited from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .engines import StepCallback
from .requests import MAX_TEXT_CHARS, GenerateRequest, PromptToAudioRequest, public_fields

GENERATE_FIELDS = frozenset(f.name for f in public_fields(GenerateRequest))
AUDIO_CODE_PREFIX = "<|audio_code_"  # of each of the planner's code tokens, <|audio_code_N|>


def write(planner: Any, request: PromptToAudioRequest, seed: int,
          on_step: StepCallback) -> tuple[GenerateRequest, Any]:
    """The generate request the planner writes from `request`'s prompt, and its plan."""
    plan = planner.write(request.prompt, instrumental=request.instrumental, seed=seed,
                         on_step=on_step)
    shared = {name: getattr(request, name) for name in GENERATE_FIELDS if hasattr(request, name)}
    # A real LM writes a few hundred characters; text past the request limit (a runaway
    # generation) is cut, so the song still passes the checks every generate request passes.
    written = {"tags": plan.tags[:MAX_TEXT_CHARS], "lyrics": plan.lyrics[:MAX_TEXT_CHARS],
               **metadata_fields(plan)}
    explicit = (request.explicit & GENERATE_FIELDS) | {"duration"} | set(written)
    song = GenerateRequest(**{**shared, **written}, explicit=frozenset(explicit))
    return song, plan


def think(planner: Any, request: GenerateRequest, seed: int,
          on_step: StepCallback) -> tuple[GenerateRequest, Any]:
    """`request` with the metadata (and, as upstream, the caption) the planner thought of, and
    the plan, whose `audio_codes` the DiT renders."""
    plan = planner.think(request.tags, request.lyrics, bpm=request.bpm or None,
                         keyscale=request.keyscale.strip() or None,
                         timesignature=request.timesignature or None,
                         duration_s=request.duration,
                         language=request.vocal_language.strip() or None, seed=seed,
                         on_step=on_step)
    thought = {"tags": plan.tags[:MAX_TEXT_CHARS], **metadata_fields(plan)}
    song = dataclasses.replace(request, **thought, explicit=request.explicit | set(thought))
    return song, plan


def metadata_fields(plan: Any) -> dict[str, Any]:
    """A plan's metadata as generate request fields; what the LM left out is not set."""
    values = {"bpm": plan.bpm, "keyscale": plan.keyscale, "vocal_language": plan.language,
              "timesignature": int(plan.timesignature) if plan.timesignature else None}
    return {name: value for name, value in values.items() if value is not None}


def describe_plan(plan: Any) -> dict[str, Any]:
    """What the planner decided, for the result's params."""
    return {"tags": plan.tags, "lyrics": plan.lyrics, "bpm": plan.bpm, "keyscale": plan.keyscale,
            "timesignature": plan.timesignature, "duration_s": plan.duration_s,
            "language": plan.language, "audio_codes": plan.audio_codes.count(AUDIO_CODE_PREFIX)}


def replay_request(song: GenerateRequest, seed: int) -> dict[str, Any]:
    """The generate request that sings `song` again: what was set, with the seed used."""
    sent = song.to_dict()
    return {**{name: sent[name] for name in sent if name in song.explicit}, "seed": seed}
