"""The hosted services' model ids and output shapes, for the REST routes (rest.py) and the CLI.

An id names a task and a model family: `acestep-ai/ace-step/audio-inpaint` (RunComfy),
`fal-ai/ace-step/audio-inpaint` and `fal-ai/ace-step` (fal), `wavespeed-ai/ace-step/audio-inpaint`
(WaveSpeed); `ace-step-1.5` in place of `ace-step` names ACE-Step 1.5. Which checkpoint of the family
runs is the operator's choice (`--model`, `--models`), never the caller's.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

# The hosted endpoint names, and the task each one is here.
ENDPOINTS = {"text-to-audio": "generate", "audio-inpaint": "inpaint", "audio-outpaint": "outpaint",
             "audio-to-audio": "edit", "prompt-to-audio": "prompt_to_audio"}
OWNERS = ("acestep-ai", "fal-ai", "wavespeed-ai")  # RunComfy's, fal's and WaveSpeed's namespaces
APPS = {"ace-step": "ACE-Step v1", "ace-step-1.5": "ACE-Step 1.5"}  # app name -> family name
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}


@dataclass(frozen=True)
class HostedModel:
    """What a hosted model id names: `owner/app[/endpoint]`."""

    owner: str
    app: str
    endpoint: str
    task: str
    family: str

    @property
    def model_id(self) -> str:
        return f"{self.owner}/{self.app}/{self.endpoint}"


def is_model_id(text: str) -> bool:
    """Whether `text` has the shape of a hosted model id (it may still name no endpoint)."""
    return isinstance(text, str) and text.split("/", 1)[0] in OWNERS


def parse_model_id(text: str) -> HostedModel:
    """The task and family a hosted id names; fal's bare `fal-ai/ace-step` is text-to-audio."""
    parts = text.strip().strip("/").split("/") if isinstance(text, str) else []
    if len(parts) == 2 and parts[0] in OWNERS:
        parts.append("text-to-audio")
    if len(parts) == 3 and parts[0] in OWNERS and parts[1] in APPS and parts[2] in ENDPOINTS:
        owner, app, endpoint = parts
        return HostedModel(owner, app, endpoint, ENDPOINTS[endpoint], APPS[app])
    raise InputError(f"'{text}' is not a hosted ACE-Step model id; use one of "
                     f"{', '.join(example_ids())}, or another of {', '.join(OWNERS)} in front")


def example_ids() -> list[str]:
    return [f"acestep-ai/{app}/{endpoint}" for app in APPS for endpoint in ENDPOINTS]


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lstrip("."), mimetypes.guess_type(path.name)[0]
                             or "application/octet-stream")


def audio_file(path: Path, url: str) -> dict[str, Any]:
    """fal's `File`: where to download the audio, its type, name and size."""
    return {"url": url, "content_type": content_type(path), "file_name": path.name,
            "file_size": path.stat().st_size}


def fal_output(path: Path, url: str, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """The hosted output (fal's `ACEStepResponse`): the audio file, the seed used and the tags and
    lyrics sung, with our params (what ran, what was ignored) alongside."""
    return {"audio": audio_file(path, url), "seed": seed, "tags": params.get("tags", ""),
            "lyrics": params.get("lyrics", ""), "params": params}
