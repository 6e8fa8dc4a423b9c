"""A result's params read back to the musician: a one-paragraph summary, and the same request as an
API call (Python gradio_client, curl on the REST routes, the CLI) that replays it.

The replayed request is what was sent, with the seed set to the seed used (params["request"] keeps
only what the caller set, so the model's own presets still apply). A source file becomes a
placeholder the caller replaces: the server's copy of an upload means nothing on their machine.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from .access import SOURCE_PARAMS
from .hosted import APPS, ENDPOINTS

# hosted.py's tables the other way round: our task -> its endpoint, a family -> its app.
HOSTED_ENDPOINTS = {task: endpoint for endpoint, task in ENDPOINTS.items()}
HOSTED_APPS = {family: app for app, family in APPS.items()}
PLACEHOLDER_FILE = "song.wav"
PLACEHOLDER_URL = "https://example.com/song.wav"


def replay_request(params: dict[str, Any]) -> dict[str, Any]:
    """What was sent, with the seed used and the sources as placeholders."""
    request = dict(params.get("request", {}))
    request["seed"] = params.get("seed", request.get("seed", -1))
    return request


def summary(params: dict[str, Any], family: str = "") -> str:
    """A short Markdown line or two: model, seed, steps, guidance, length, what was ignored."""
    if not params:
        return ""
    engine = params.get("engine", {})
    steps = engine.get("num_inference_steps", engine.get("number_of_steps"))
    guidance = engine.get("guidance_scale")
    parts = [f"**{params.get('task', '').replace('_', ' ')}** on "
             f"{family + ' ' if family else ''}`{_short_model(params.get('model', ''))}`",
             f"seed **{params.get('seed')}**"]
    if steps is not None:
        parts.append(f"{steps} steps")
    if guidance is not None:
        parts.append(f"guidance {guidance:g}")
    if "duration_s" in params:
        channels = {1: "mono", 2: "stereo"}.get(params.get("channels"), f"{params.get('channels')} ch")
        parts.append(f"{params['duration_s']:g} s, {params.get('sample_rate', 0) / 1000:g} kHz "
                     f"{channels}")
    run_s = sum(params.get("timings_s", {}).values())
    if run_s:
        parts.append(f"took {run_s:.1f} s")
    ignored = params.get("ignored_params") or []
    text = " · ".join(parts)
    if ignored:
        text += f"  \nIgnored by this model: {', '.join(f'`{name}`' for name in ignored)}"
    return text


def python_call(params: dict[str, Any], base_url: str) -> str:
    request = replay_request(params)
    arguments = []
    for name, value in request.items():
        if name in SOURCE_PARAMS:
            arguments.append(f"{name}=handle_file({PLACEHOLDER_FILE!r})")
        else:
            arguments.append(f"{name}={value!r}")
    arguments += [f"model={params.get('model', '')!r}", f"api_name='/{params.get('task', '')}'"]
    lines = ["from gradio_client import Client, handle_file", "",
             f"client = Client({base_url!r})",
             "path, seed, params = client.predict(" + ",\n    ".join(arguments) + ")"]
    return "\n".join(lines)


def curl_call(params: dict[str, Any], base_url: str, family: str) -> str:
    """The request on the RunComfy-shaped REST route, or a comment where the task has none."""
    task = params.get("task", "")
    if task not in HOSTED_ENDPOINTS or family not in HOSTED_APPS:
        return f"# {task} has no hosted endpoint; use the Python or CLI call"
    request = {name: (PLACEHOLDER_URL if name in SOURCE_PARAMS else value)
               for name, value in replay_request(params).items()}
    model_id = f"acestep-ai/{HOSTED_APPS[family]}/{HOSTED_ENDPOINTS[task]}"
    return (f"curl -s -X POST {shlex.quote(base_url.rstrip('/') + '/v1/models/' + model_id)} \\\n"
            f"  -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(json.dumps(request, ensure_ascii=False))}")


def cli_call(params: dict[str, Any]) -> str:
    request = {name: (PLACEHOLDER_FILE if name in SOURCE_PARAMS else value)
               for name, value in replay_request(params).items()}
    task = params.get("task", "").replace("_", "-")
    return (f"python -m ace_step_ui run {task} \\\n"
            f"  --input {shlex.quote(json.dumps(request, ensure_ascii=False))} \\\n"
            f"  --output-dir out --model {shlex.quote(str(params.get('model', '')))}")


def _short_model(model: str) -> str:
    """A Hub id as it is; a folder by its last part (a long path says little and gets cut)."""
    return Path(model).name if model.startswith(("/", ".", "~")) else model
