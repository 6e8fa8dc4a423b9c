"""The Gradio Blocks: a tab per task (Generate, Prompt to audio, Inpaint, Outpaint, Edit, Cover,
Stems) over `tasks.run`, one GPU slot.

Every parameter's component is built from `requests.schema(task)`, and each tab's event handler
takes the hosted APIs' parameter names (plus `model` and `format`), so the named endpoints
`/generate`, `/inpaint`, `/outpaint` and `/edit` accept the same keyword arguments as the hosted APIs.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable

import anyio
import gradio as gr
from gradio.components.api_component import Api
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder

from . import snippets, studio, tasks, waveform
from .access import RemoteAccess
from .audio import FORMATS, header_duration_s, read_audio
from .engines import EngineManager, family_for
from .errors import Cancelled, InputError, ModelUnavailableError
from .gpu import JOB_SECONDS, gpu
from .history import HISTORY_DAYS, History
from .requests import ALIASES, TASKS, is_default, schema

logger = logging.getLogger(__name__)

PRESETS_FILE = Path(__file__).resolve().parent.parent / "examples" / "presets.json"
TAB_PRESETS_FILE = PRESETS_FILE.with_name("tab_presets.json")  # task -> presets for that tab
QUEUE_SIZE = 32  # jobs waiting for or holding the model, all users together
OUTPUT_TTL_S = 3600  # results (and gradio's copies of uploads) are kept this long
SOURCE_MAX_S = 240.0  # the hosted ranges of start_time, end_time and the extensions
DESCRIPTIONS = {
    "generate": "Generate a song from tags and lyrics.",
    "inpaint": "Regenerate a time range of an uploaded track; the rest stays as it was.",
    "outpaint": "Extend an uploaded track with new audio before and/or after it.",
    "edit": "Remix an uploaded track in a new style, or give it new lyrics, keeping its structure "
            "(ACE-Step v1).",
    "cover": "Sing an uploaded track anew from new tags and lyrics, keeping its structure "
             "(ACE-Step 1.5; the whole track, up to 4 minutes).",
    "extract": "Take one track (vocals, drums, ...) out of a mix.",
    "lego": "Make a new track (drums, bass, ...) that fits the mix it hears; the result is that "
            "track.",
    "complete": "Fill a partial track (vocals alone, say) in to a full arrangement.",
    "prompt_to_audio": "Describe a song in your words: the planner (ACE-Step 1.5's 5 Hz LM) writes "
                       "its tags, lyrics and metadata, and the selected model sings them.",
}
STEMS_NOTE = ("Stems run on an ACE-Step 1.5 base model (e.g. ACE-Step/acestep-v15-xl-base-diffusers); "
              "upstream does not train the turbo models for them. The whole track is processed, up "
              "to 4 minutes.")
AUDIO_PARAMS = ("audio", "reference_audio")
# Small events: queued (so an error shows as a toast), never waiting behind a job.
QUICK_EVENT: dict[str, Any] = dict(concurrency_limit=None, concurrency_id="ui",
                                   show_progress="hidden")
UI_EVENT: dict[str, Any] = dict(QUICK_EVENT, api_visibility="private")  # the page's alone
# JSON types of the API's parameters, by schema kind.
JSON_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "int_list": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "string"}]},
    "range_list": {"anyOf": [
        {"type": "array", "items": {
            "type": "object", "required": ["start_time", "end_time"],
            "properties": {"start_time": {"type": "number"}, "end_time": {"type": "number"},
                           "tags": {"type": "string"}, "lyrics": {"type": "string"}}}},
        {"type": "string"}]},
}
# The table of inpaint's extra ranges: a row is [start_time, end_time, tags, lyrics].
RANGE_HEADERS = ["Start (s)", "End (s)", "Tags", "Lyrics"]
RANGE_TYPES = ["number", "number", "str", "str"]
RANGES_NOTE = ("Each row is one more range to repaint in the same run, in seconds from the track's "
               "start (anywhere in it, 1–240 s long), with its own tags and lyrics; blank ones are "
               "the Tags and Lyrics below. Ranges may touch but not overlap.")
OSS_PLACEHOLDER = "e.g. 16, 29, 52, 76, 100"
PRESET_PARAMS = ("number_of_steps", "guidance_scale")  # what a model may preset differently
LYRICS_HINT = ("Put section markers on their own lines: `[verse]`, `[chorus]`, `[bridge]`, "
               "`[outro]`. Write just `[inst]` for an instrumental; leave blank to let the model "
               "decide.")
ADVANCED_NOTE = ("Only the parameters the selected model applies are shown. Values left at their "
                 "defaults are not sent, so the model keeps its own presets (e.g. 8 steps on a "
                 "turbo model); the result's params list what it ran with.")
LABELS = {"tags": "Tags", "lyrics": "Lyrics", "seed": "Seed", "duration": "Duration (s)",
          "audio": "Source audio", "start_time": "Start (s)", "end_time": "End (s)",
          "start_time_relative_to": "Start measured from", "end_time_relative_to":
          "End measured from", "variance": "Variance", "extend_before_duration":
          "Extend before (s)", "extend_after_duration": "Extend after (s)",
          "edit_mode": "Edit mode", "original_tags": "Original tags",
          "original_lyrics": "Original lyrics", "original_seed": "Original seed", "reference_audio": "Reference audio (audio-to-audio)",
          "audio2audio_strength": "Reference strength", "use_erg_tag": "ERG on the tags",
          "use_erg_lyric": "ERG on the lyrics", "use_erg_diffusion": "ERG in the diffusion",
          "oss_steps": "OSS steps", "lora": "LoRA", "lora_scale": "LoRA scale",
          "audio_cover_strength": "Cover strength", "track_name": "Track",
          "track_classes": "Tracks to add", "prompt": "Prompt", "instrumental": "Instrumental",
          "bpm": "BPM", "keyscale": "Key", "timesignature": "Time signature",
          "vocal_language": "Vocal language", "thinking": "Thinking (5 Hz LM audio codes)",
          "extra_ranges": "More ranges (each with its own tags and lyrics)"}
# Time signatures by beats per bar, as ACE-Step 1.5 takes them; 0 leaves it to the model.
TIME_SIGNATURE_CHOICES = [("not given", 0), ("2/4", 2), ("3/4", 3), ("4/4", 4), ("6/8", 6)]
PLANNER_NOTE = ("The planner loads on the first run (upstream's 1.7B LM by default; the server's "
                "`--planner` option chooses another). Same seed, same song: the params hold the "
                "written tags, lyrics and metadata, and **Open in Generate** fills them in to "
                "replay or change the song.")
EDIT_LABELS = {"tags": "New tags", "lyrics": "New lyrics"}
RUN_LABELS = {"prompt_to_audio": "Write and generate"}
EDIT_LYRICS_HINT = LYRICS_HINT.replace("leave blank to let the model decide",
                                       "leave blank to keep the original lyrics")


def label(name: str, task: str = "") -> str:
    if task == "edit" and name in EDIT_LABELS:
        return EDIT_LABELS[name]
    return LABELS.get(name, name.replace("_", " ").capitalize())


def advanced_params(task: str) -> list[str]:
    return [name for name, spec in schema(task).items() if spec["advanced"]]


def model_presets(model: str, task: str) -> dict[str, Any]:
    """The values `model` runs unset parameters of `task` with, where they differ from the hosted
    defaults (what the form shows for it)."""
    try:
        return family_for(model).presets(model, task)
    except (InputError, ModelUnavailableError):
        return {}


def family_name(model: str) -> str:
    try:
        return family_for(model).name
    except (InputError, ModelUnavailableError):
        return ""


def visible_advanced(model: str, task: str) -> list[str]:
    """The Advanced parameters of `task` that `model` honours: the ones worth showing."""
    advanced = advanced_params(task)
    try:
        applied = family_for(model).honoured(model, task)
    except (InputError, ModelUnavailableError):
        return advanced
    return [name for name in advanced if name in applied]


def load_presets(path: Path = PRESETS_FILE) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("no examples: cannot read %s", path)
        return []


def tab_presets(tab: "_Tab", presets: list[dict[str, Any]]) -> None:
    """A tab's presets: each fills the fields it names."""
    if not presets:
        return
    fields = [name for name in presets[0] if name != "name"]
    gr.Examples([[preset[name] for name in fields] for preset in presets],
                [tab.inputs[name] for name in fields],
                example_labels=[preset["name"] for preset in presets], cache_examples=False,
                preload=False, api_visibility="private", label="Presets")


def source_seconds(path: str | None) -> float | None:
    """The duration of an uploaded file, or None when it cannot be read cheaply."""
    if not path:
        return None
    seconds = header_duration_s(path)
    if seconds is not None:
        return seconds
    try:
        return read_audio(path).duration_s
    except InputError:  # an unreadable upload is reported when the task runs
        return None


def _output_folder() -> Path:
    """A fresh folder for one result in gradio's cache, which serves it from there without a copy;
    result folders older than an hour go."""
    root = Path(get_upload_folder()) / "results"
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - OUTPUT_TTL_S
    for old in root.iterdir():
        if old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=root))


def _component(task: str, name: str, spec: dict[str, Any], **overrides: Any) -> gr.Component:
    """The input component of one request parameter, from its schema entry."""
    common = dict(label=label(name, task), info=spec["help"], elem_id=f"{task}-{name}")
    common.update(overrides)
    low, high, default = spec["minimum"], spec["maximum"], spec["default"]
    if name in AUDIO_PARAMS:
        common.pop("info")
        return gr.Audio(type="filepath", sources=["upload"], editable=False,
                        buttons=["download"], **common)
    if spec["choices"]:
        return gr.Radio(list(spec["choices"]), value=default, **common)
    if name == "timesignature":
        return gr.Dropdown(TIME_SIGNATURE_CHOICES, value=default, **common)
    if spec["type"] == "bool":
        return gr.Checkbox(value=default, **common)
    if spec["type"] == "int_list":
        return gr.Textbox(value=", ".join(map(str, default)), placeholder=OSS_PLACEHOLDER, **common)
    if spec["type"] == "range_list":
        common.pop("info")  # a table has none: the tab says what a row is
        # Four fixed columns (gradio still reads the (count, "fixed") form); rows come and go.
        return gr.Dataframe(value=[], headers=RANGE_HEADERS, datatype=RANGE_TYPES,
                            column_count=(len(RANGE_HEADERS), "fixed"), interactive=True,
                            **common)
    if spec["type"] == "str":
        return gr.Textbox(value=default, **common)
    if spec["type"] == "int" and high is not None and high - (low or 0) > 1000:
        return gr.Number(value=default, precision=0, minimum=low, maximum=high, **common)
    if spec["type"] == "int":
        return gr.Slider(low, high, value=default, step=1, precision=0, **common)
    step = 0.01 if high - low <= 1 else 0.1
    return gr.Slider(low, high, value=default, step=step, **common)


class _Jobs:
    """The app's side of a job: the checks made before it is accepted, the queue bound, the
    thread it runs in, and its end (a cancel from gradio_client or a closed tab sets its stop)."""

    def __init__(self, manager: EngineManager, access: RemoteAccess):
        self.manager = manager
        self.access = access
        self.run_on_gpu = _gpu_runner(manager)
        self.threads = anyio.CapacityLimiter(QUEUE_SIZE)
        self._count = 0
        self._uploads: Counter[Path] = Counter()  # uploads of running API jobs, and how many
        self._lock = threading.Lock()

    async def submit(self, task: str, payload: dict[str, Any], model: Any, fmt: Any,
                     request: gr.Request | None, progress: gr.Progress, from_api: bool,
                     takes: Any = 1) -> tuple[Any, ...]:
        """Check the job, then run it in a thread; its errors become one message for the caller.
        The API gets the (first) take's file, seed and params; the page also every take's."""
        upload_folder = Path(get_upload_folder())
        try:
            model = self.access.model(model)
            fmt = FORMATS[0] if fmt is None else fmt
            if fmt not in FORMATS:
                raise InputError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
            payload = self.access.payload(payload, upload_folder)
            tasks.check(task, payload, model)  # before the job is queued or any file is read
            takes = _takes(takes)
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        # An API caller's uploads belong to its one call; the UI keeps its source for the next run.
        uploads = self.access.uploaded_files(payload, upload_folder) if from_api else []
        accepted_at = time.time()
        with self._lock:
            full = self._count >= QUEUE_SIZE
            self._count += not full
            self._uploads.update(uploads)
        if full:
            self._release(uploads, accepted_at)
            raise gr.Error(f"the queue is full ({QUEUE_SIZE} jobs are waiting or running); try "
                           f"again when one has finished", title="Queue full",
                           print_exception=False)
        stop = threading.Event()
        number = self.manager.slot.number()
        try:
            made = await anyio.to_thread.run_sync(
                partial(self.run_on_gpu, task, payload, model, fmt, _owner(request), progress,
                        stop, number, takes), abandon_on_cancel=True, limiter=self.threads)
            if len(made) < takes:  # stopped after a take: the ones made are the result
                gr.Info(f"Stopped after {len(made)} of {takes} takes; those are kept.",
                        title="Stopped")
            return tuple(made[0]) if from_api else (*made[0], made)
        except anyio.get_cancelled_exc_class():
            stop.set()  # cancelled by the client or a closed tab: the job ends at its next step
            raise
        except Cancelled as error:
            if from_api:
                raise gr.Error(str(error), title="Stopped", print_exception=False) from None
            # Stopping is not a failure: the page keeps its last result and says so once.
            gr.Info(str(error).capitalize() + "; the last result is kept.", title="Stopped")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        except (InputError, ModelUnavailableError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:  # a bug, not bad input: Gradio logs the traceback
            raise gr.Error(f"{task} failed unexpectedly ({type(error).__name__}: {error}); the "
                           f"server log has the details") from error
        finally:
            with self._lock:
                self._count -= 1
            self._release(uploads, accepted_at)

    def _release(self, uploads: list[Path], accepted_at: float) -> None:
        """Delete a job's uploads, unless another running job uses the same file (gradio stores
        equal uploads once) or it was uploaded again since."""
        with self._lock:
            self._uploads.subtract(uploads)
            unused = [path for path in uploads if self._uploads[path] <= 0]
            for path in unused:
                del self._uploads[path]
                try:
                    if path.stat().st_mtime < accepted_at:
                        path.unlink()
                except OSError:
                    pass


def _endpoint(task: str, jobs: _Jobs, from_api: bool) -> Callable[..., Any]:
    """The event handler of `task`, whose parameters are the hosted API's names (Gradio reads
    them as the endpoint's keyword arguments) plus `model` and `format`.

    It takes the values as sent (no component preprocessing), so the API refuses what the CLI
    refuses. From the UI, advanced values left at their defaults are not sent, so the engine keeps
    its own presets; from the API, every value a caller sends is honoured.
    """
    names = _endpoint_names(task, from_api)
    advanced = set(advanced_params(task))
    tables = {name for name, spec in schema(task).items() if spec["type"] == "range_list"}

    async def endpoint(*args: Any) -> tuple[str, int, dict[str, Any]]:
        *values, request, progress = args
        given = dict(zip(names, values))
        model, fmt, takes = given.pop("model"), given.pop("format"), given.pop("takes", 1)
        if from_api:
            payload = {name: value for name, value in given.items() if value is not None}
        else:
            try:
                presets = model_presets(jobs.access.model(model), task)
            except InputError:
                presets = {}  # submit says what is wrong with the model
            payload = {}
            for name, value in given.items():
                if name in tables:
                    value = table_rows(value)
                    if not value:
                        continue  # an empty table: no extra ranges
                elif name in advanced and (is_default(task, name, value)
                                           or _is_preset(presets, name, value)):
                    continue
                payload[name] = value
        return await jobs.submit(task, payload, model, fmt, request, progress, from_api, takes)

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # A default of None lets API clients leave out any parameter; parse_request says what is
    # required, and an unset parameter keeps the model's preset.
    parameters = [inspect.Parameter(name, positional, default=None) for name in names]
    # Gradio fills these two itself: the request by its annotation, the progress by its default.
    parameters.append(inspect.Parameter("request", positional, default=None,
                                        annotation=gr.Request))
    parameters.append(inspect.Parameter("progress", positional,
                                        default=gr.Progress(track_tqdm=True)))
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    endpoint.__annotations__ = {"request": gr.Request}
    endpoint.__name__ = endpoint.__qualname__ = task
    endpoint.__doc__ = (DESCRIPTIONS[task] + "\n\nArgs:\n"
                        + "\n".join(f"    {name}: {_help(task, name)}" for name in names))
    return endpoint


def table_rows(table: Any) -> Any:
    """A table as its rows of [start, end, tags, lyrics], without the blank ones: the form's
    payload ({"headers", "data", ...}) or an event's pandas DataFrame; anything else as it came,
    for `parse_request` to judge."""
    if hasattr(table, "columns") and hasattr(table, "values"):
        rows = table.values.tolist()
    elif isinstance(table, dict) and isinstance(table.get("data"), list):
        rows = table["data"]
    else:
        return table
    rows = [row[:len(RANGE_HEADERS)] if isinstance(row, list) else row for row in rows]
    return [row for row in rows if not (isinstance(row, list) and all(map(_blank, row)))]


def _blank(cell: Any) -> bool:
    """An empty cell: a new row's are "", a cleared number's None (or NaN)."""
    return (cell is None or (isinstance(cell, str) and not cell.strip())
            or (isinstance(cell, float) and cell != cell))


def _is_preset(presets: dict[str, Any], name: str, value: Any) -> bool:
    """Whether the form shows the model's own preset for `name`, so that it is not sent."""
    try:
        return name in presets and float(value) == float(presets[name])
    except (TypeError, ValueError):
        return False


def _endpoint_names(task: str, from_api: bool) -> list[str]:
    """The endpoint's parameters: the task's, the aliases (API only), then model and format
    (and the page's takes count)."""
    spec = schema(task)
    aliases = [alias for alias, name in ALIASES.items() if name in spec] if from_api else []
    return [*spec, *aliases, "model", "format", *([] if from_api else ["takes"])]


def _takes(value: Any) -> int:
    """The page's takes count, checked."""
    try:
        takes = int(value if value is not None else 1)
    except (TypeError, ValueError):
        takes = 0
    if not 1 <= takes <= tasks.MAX_TAKES:
        raise InputError(f"takes must be a whole number from 1 to {tasks.MAX_TAKES}, not {value!r}")
    return takes


def _help(task: str, name: str) -> str:
    spec = schema(task)
    if name in ALIASES:
        return f"Another name for {ALIASES[name]}."
    if name == "model":
        return "One of the models this server offers, by id (see the Model menu); empty = default."
    if name == "format":
        return f"{', '.join(FORMATS)}; empty = {FORMATS[0]}."
    if name == "takes":
        return f"How many seeds to run, 1 to {tasks.MAX_TAKES} (the page's)."
    return spec[name]["help"]


def _api_inputs(task: str) -> list[Api]:
    """Inputs that pass the caller's values through untouched, each starting empty (None), so an
    omitted parameter is unset rather than sent at the hosted default."""
    spec = schema(task)
    inputs = []
    for name in _endpoint_names(task, from_api=True):
        target = ALIASES.get(name, name)
        kind = spec[target]["type"] if target in spec else "str"
        if target in AUDIO_PARAMS:
            file_schema = FileData.model_json_schema()
            info: dict[str, Any] = {"anyOf": [file_schema, {"type": "string"}],
                                    "$defs": file_schema.pop("$defs", {})}
        else:
            info = dict(JSON_TYPES[kind])
        info["description"] = _help(task, name)
        inputs.append(Api(None, info, label=name))
    return inputs


def _gpu_runner(manager: EngineManager) -> Callable[..., tuple[str, int, dict[str, Any]]]:
    @gpu(duration=JOB_SECONDS)
    def run_on_gpu(task: str, payload: dict[str, Any], model: str, fmt: str, owner: str,
                   progress: gr.Progress, stop: threading.Event, number: int, takes: int = 1
                   ) -> list[tuple[str, int, dict[str, Any]]]:
        phase = [tasks.DIFFUSION]

        def on_step(step: int, total: int) -> None:
            what = "planner token" if phase[0] == tasks.PLANNING else "diffusion step"
            progress((step, total), desc=what)

        def on_wait(ahead: int) -> None:
            progress(None, desc=f"waiting for the model: {ahead} job{'s' * (ahead != 1)} ahead")

        def on_phase(name: str) -> None:
            phase[0] = name
            if name == tasks.PLANNING:
                progress(None, desc="loading the planner")

        results = tasks.run_takes(task, payload, manager, model, takes, on_step, owner, stop=stop,
                                  on_wait=on_wait, number=number, on_phase=on_phase)
        folder = _output_folder()
        return [(str(tasks.save_result(result, folder, fmt)), result.seed, result.params)
                for result in results]

    return run_on_gpu


def _owner(request: gr.Request | None) -> str:
    """Whose job it is: the browser session or API client, so Stop only stops one's own."""
    return getattr(request, "session_hash", None) or ""


def _stopper(manager: EngineManager, quiet: bool = False) -> Callable[[gr.Request], None]:
    def stop(request: gr.Request) -> None:
        """Stop your own running or waiting jobs (this browser tab's, or this API client's)."""
        if not manager.cancel(_owner(request)) and not quiet:
            gr.Info("Nothing of yours is running.")

    return stop


def _playhead(audio: gr.Audio) -> tuple[float, str]:
    """The source player's playhead, in seconds from the start."""
    if not audio.value:
        raise gr.Error("upload the source audio first, then click its waveform to place the "
                       "playhead", print_exception=False)
    return round(float(audio.playback_position), 2), "start"


def _fit_range(path: str | None, start: float, end: float) -> tuple[Any, Any]:
    """On a new source: sliders up to its length, and an end that lies inside it."""
    seconds = source_seconds(path)
    if seconds is None:
        return gr.Slider(maximum=SOURCE_MAX_S), gr.Slider(maximum=SOURCE_MAX_S)
    top = round(min(SOURCE_MAX_S, seconds), 2)
    # Values already inside are left alone, so a value typed meanwhile is never overwritten.
    return tuple(gr.Slider(maximum=top) if value is not None and value <= top
                 else gr.Slider(maximum=top, value=top) for value in (start, end))


def _new_wave(path: str | None, start: float, start_anchor: str, end: float,
              end_anchor: str) -> dict[str, Any] | None:
    """A new source's waveform, with the range the fields give."""
    return waveform.with_range(waveform.peaks(path), start, start_anchor, end, end_anchor)


def _wave_range(wave: dict[str, Any] | None, start: float, start_anchor: str, end: float,
                end_anchor: str) -> Any:
    """The fields' range drawn on the waveform."""
    return waveform.with_range(wave, start, start_anchor, end, end_anchor) if wave else gr.skip()


def _add_range(wave: dict[str, Any] | None, start: float, start_anchor: str, end: float,
               end_anchor: str, table: Any) -> list[list[Any]]:
    """The range of the fields, as one more row of the extra ranges (its tags and lyrics blank:
    the form's, until they are typed in the row)."""
    if not wave:
        raise gr.Error("upload the source audio first, then mark a range on its waveform",
                       print_exception=False)
    marked = waveform.with_range(wave, start, start_anchor, end, end_anchor) or {}
    rows = table_rows(table) or []
    if not marked.get("end", 0) > marked.get("start", 0):
        raise gr.Error("the range is empty: drag across the waveform, or set Start and End",
                       print_exception=False)
    return [*rows, [marked["start"], marked["end"], "", ""]]


def _wave_others(wave: dict[str, Any] | None, start: float, start_anchor: str, end: float,
                 end_anchor: str, table: Any) -> Any:
    """The extra ranges drawn on the waveform beside the fields' range."""
    if not wave:
        return gr.skip()
    return waveform.with_others(waveform.with_range(wave, start, start_anchor, end, end_anchor),
                                table_rows(table))


def _new_extension(path: str | None, before: float, after: float) -> dict[str, Any] | None:
    """A new Outpaint source's waveform, between the new seconds before and after it."""
    return waveform.with_extension(waveform.peaks(path), before, after)


def _extension(wave: dict[str, Any] | None, before: float, after: float) -> Any:
    return waveform.with_extension(wave, before, after) if wave else gr.skip()


def _range_fields(wave: dict[str, Any] | None) -> tuple[Any, ...]:
    """The range dragged on the waveform, in the fields (from the end where the hosted 0-240 s
    range does not reach from the start)."""
    if not wave or "start" not in wave:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    duration = wave["duration"]
    start, start_anchor = waveform.to_field(wave["start"], duration, SOURCE_MAX_S)
    end, end_anchor = waveform.to_field(wave["end"], duration, SOURCE_MAX_S)
    return start, start_anchor, end, end_anchor


def _send_to(task: str) -> Callable[[str | None, str, str], tuple[Any, ...]]:
    """A result, with its tags and lyrics, becomes the source of `task`'s tab, which opens.
    (The Edit tab takes them as the original tags and lyrics, and as the new ones to change.)"""
    def send(audio: str | None, tags: str, lyrics: str) -> tuple[Any, ...]:
        if not audio:
            raise gr.Error("there is no result yet to send", print_exception=False)
        song = (tags, lyrics, tags, lyrics) if task == "edit" else (tags, lyrics)
        return audio, *song, gr.Tabs(selected=task)

    return send


def _send_targets(tab: "_Tab") -> list[gr.Component]:
    """The components `_send_to(tab.task)` fills, in its order (the tab selector not included)."""
    names = ["audio", "original_tags", "original_lyrics"] if tab.task == "edit" else ["audio"]
    return [tab.inputs[name] for name in [*names, "tags", "lyrics"]]


class _Tab:
    """One task's components: inputs by parameter name, and the outputs."""

    def __init__(self, task: str):
        self.task = task
        self.spec = schema(task)
        self.inputs: dict[str, gr.Component] = {}

    def add(self, name: str, **overrides: Any) -> gr.Component:
        spec = self.spec[name]
        if "value" in overrides:  # the model's own preset, shown in place of the hosted default
            spec = {**spec, "default": overrides.pop("value")}
        self.inputs[name] = _component(self.task, name, spec, **overrides)
        return self.inputs[name]

    def song_fields(self) -> None:
        self.add("tags", lines=2, placeholder="e.g. funk, slap bass, brass section, 100 bpm")
        self.add("lyrics", lines=8, info=EDIT_LYRICS_HINT if self.task == "edit" else LYRICS_HINT,
                 placeholder="[verse]\nFirst line of the verse\n\n[chorus]\nThe hook")

    def seed_field(self) -> None:
        with gr.Row(elem_classes="inline-button-row"):
            self.add("seed", scale=4)
            self.dice = gr.Button("Random", scale=0, min_width=90, size="sm",
                                  elem_id=f"{self.task}-random-seed")
        self.dice.click(lambda: -1, None, self.inputs["seed"], **UI_EVENT)

    def advanced(self, model: str) -> None:
        visible = visible_advanced(model, self.task)
        presets = model_presets(model, self.task)
        with gr.Accordion("Advanced", open=False, elem_id=f"{self.task}-advanced"):
            gr.Markdown(ADVANCED_NOTE)
            for name in advanced_params(self.task):
                self.add(name, visible=name in visible,
                         **({"value": presets[name]} if name in presets else {}))

    def song_controls(self, model: str, before_seed: tuple[str, ...] = ()) -> None:
        """What every tab ends its inputs with: the song, the seed, Advanced and the buttons."""
        self.song_fields()
        for name in before_seed:
            self.add(name)
        self.seed_field()
        self.advanced(model)
        self.buttons()

    def source_layout(self, model: str, fields: dict[str, dict[str, Any]], note: str) -> None:
        """A task on a source: the note, the source audio, `fields` (name -> overrides) and the
        song controls, with the outputs beside them."""
        gr.Markdown(note)
        with gr.Row():
            with gr.Column(scale=3):
                self.add("audio")
                for name, overrides in fields.items():
                    self.add(name, **overrides)
                self.song_controls(model)
            with gr.Column(scale=2):
                self.outputs()

    def buttons(self) -> None:
        self.takes = gr.Slider(1, tasks.MAX_TAKES, value=1, step=1, precision=0, label="Takes",
                               info="Run this many seeds in one job (the seed, seed + 1, …); the "
                                    "takes appear side by side under Takes.",
                               elem_id=f"{self.task}-takes")
        self.takes_made = gr.State()  # every take of the last run: [path, seed, params] each
        with gr.Row():
            self.run = gr.Button(RUN_LABELS.get(self.task, self.task.capitalize()),
                                 variant="primary", scale=3,
                                 elem_id=f"{self.task}-run")
            self.stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{self.task}-stop")

    def song(self) -> list[gr.Component]:
        """The components that hold the result's tags and lyrics (what "send to" passes on)."""
        return [self.inputs["tags"], self.inputs["lyrics"]]

    def outputs(self) -> None:
        self.result = gr.Audio(label="Result", type="filepath", interactive=False,
                               buttons=["download"], elem_id=f"{self.task}-result")
        # What only means something once there is a result: hidden until the first one.
        with gr.Column(visible=False, elem_id=f"{self.task}-after") as self.after:
            with gr.Row(elem_classes="inline-button-row"):
                self.seed_used = gr.Number(None, label="Seed used", precision=0, interactive=False,
                                           elem_id=f"{self.task}-seed-used", scale=4)
                self.reuse = gr.Button("Reuse seed", scale=0, min_width=90, size="sm",
                                       elem_id=f"{self.task}-reuse-seed")
            self.written_outputs()
            with gr.Row():
                self.to_inpaint = gr.Button("Edit in Inpaint", size="sm",
                                            elem_id=f"{self.task}-to-inpaint")
                self.to_outpaint = gr.Button("Extend in Outpaint", size="sm",
                                             elem_id=f"{self.task}-to-outpaint")
                self.to_edit = gr.Button("Remix in Edit", size="sm",
                                         elem_id=f"{self.task}-to-edit")
            self.summary = gr.Markdown(elem_id=f"{self.task}-summary")
            with gr.Accordion("All params (JSON)", open=False, elem_id=f"{self.task}-params-json"):
                self.params = gr.JSON(label="Params", height=360, elem_id=f"{self.task}-params")
            with gr.Accordion("Copy as API call", open=False, elem_id=f"{self.task}-api-call"):
                self.calls = [
                    gr.Code(label="Python (gradio_client)", language="python", interactive=False,
                            elem_id=f"{self.task}-call-python"),
                    gr.Code(label="curl (REST, RunComfy shape)", language="shell",
                            interactive=False, elem_id=f"{self.task}-call-curl"),
                    gr.Code(label="Command line", language="shell", interactive=False,
                            elem_id=f"{self.task}-call-cli")]
        self.reuse.click(lambda seed: seed, self.seed_used, self.inputs["seed"], **UI_EVENT)

    def written_outputs(self) -> None:
        """Where a tab shows what the planner wrote (prompt-to-audio only)."""

    def ordered_inputs(self) -> list[gr.Component]:
        return [self.inputs[name] for name in self.spec]


class _PromptTab(_Tab):
    """Prompt-to-audio: the song's tags and lyrics are the planner's, shown with the result."""

    def song(self) -> list[gr.Component]:
        return [self.written_tags, self.written_lyrics]

    def written_outputs(self) -> None:
        self.written_tags = gr.Textbox(label="Written tags", interactive=False, lines=2,
                                       elem_id="prompt_to_audio-written-tags")
        self.written_lyrics = gr.Textbox(label="Written lyrics", interactive=False, lines=6,
                                         elem_id="prompt_to_audio-written-lyrics")
        self.to_generate = gr.Button("Open in Generate", size="sm",
                                     elem_id="prompt_to_audio-to-generate")

    def layout(self, model: str) -> None:
        gr.Markdown(DESCRIPTIONS[self.task] + " " + PLANNER_NOTE)
        with gr.Row():
            with gr.Column(scale=3):
                self.add("prompt", lines=3, placeholder="e.g. a melancholic synth-pop song about "
                                                        "driving home at night")
                with gr.Row():
                    self.add("instrumental", scale=1)
                    self.add("duration", scale=3)
                self.seed_field()
                self.advanced(model)
                self.buttons()
            with gr.Column(scale=2):
                self.outputs()


# What "Open in Generate" fills: the generate request's fields that a plan sets.
REPLAYED = ("tags", "lyrics", "duration", "seed", "bpm", "keyscale", "timesignature",
            "vocal_language", "thinking")


def _open_in_generate(params: dict[str, Any] | None) -> tuple[Any, ...]:
    """The written song, as a generate request, in the Generate tab (which opens)."""
    replay = (params or {}).get("generate_request")
    if not replay:
        raise gr.Error("there is no written song yet: run Prompt to audio first",
                       print_exception=False)
    defaults = schema("generate")
    return (*[replay.get(name, defaults[name]["default"]) for name in REPLAYED],
            gr.Tabs(selected="generate"))


def _after_result(result: str | None, params: dict[str, Any] | None,
                  request: gr.Request) -> tuple[Any, ...]:
    """Show what goes with a result: the seed, the send buttons, the summary and the API calls."""
    if not result or not params:
        return (gr.Column(visible=bool(result)), *[gr.skip()] * 4)
    family = family_name(params.get("model", ""))
    base = _page_url(request)
    return (gr.Column(visible=True), snippets.summary(params, family),
            snippets.python_call(params, base), snippets.curl_call(params, base, family),
            snippets.cli_call(params))


def _page_url(request: gr.Request | None) -> str:
    """The app's address as the visitor reached it."""
    headers = getattr(request, "headers", None) or {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}/"


def _written(params: dict[str, Any] | None) -> tuple[str, str]:
    params = params or {}
    return params.get("tags", ""), params.get("lyrics", "")


def build_app(manager: EngineManager, default_model: str, models: list[str],
              allowed_folders: tuple[Path, ...] = (), data_dir: Path | None = None,
              history_days: float = HISTORY_DAYS) -> gr.Blocks:
    """The playground: one tab per task, a shared model selector and output format, and the
    takes under them.

    Remote callers choose among `default_model` and `models` only, and name no server file outside
    `allowed_folders` (see `access.RemoteAccess`). The takes are kept under `data_dir/history`
    for `history_days` (in a fresh temp folder without `data_dir`: then they last as long as the
    process).
    """
    folder = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="ace-step-history-"))
    history = History(folder / "history", keep_days=history_days)
    choices = list(dict.fromkeys([default_model, *models]))
    jobs = _Jobs(manager, RemoteAccess(tuple(choices), tuple(allowed_folders)))
    tabs: dict[str, _Tab] = {task: _PromptTab(task) if task == "prompt_to_audio" else _Tab(task)
                             for task in TASKS}

    with gr.Blocks(title="ACE-Step Playground", delete_cache=(OUTPUT_TTL_S, OUTPUT_TTL_S)) as demo:
        gr.Markdown("# ACE-Step Playground\nGenerate a song from tags and lyrics (or from a "
                    "prompt), regenerate part "
                    "of a track (Inpaint), extend it (Outpaint), remix it (Edit), sing it anew "
                    "(Cover) or work on its tracks (Stems) with ACE-Step.")
        with gr.Row():
            model = gr.Dropdown([(studio.model_label(choice), choice) for choice in choices],
                                value=default_model, label="Model", elem_id="model",
                                scale=3, info="The models this server offers; a model loads on "
                                              "its first run (downloading it if needed).")
            fmt = gr.Radio(list(FORMATS), value="wav", label="Format", elem_id="format", scale=1,
                           info="File format of the result. WAV and FLAC keep the audio outside an "
                                "edited range bit-exact (FLAC for 16- and 24-bit sources); MP3 is "
                                "lossy.")

        by_task = load_presets(TAB_PRESETS_FILE) or {}
        # wrap: on a phone every tab stays in sight, on a second line, not in an overflow menu
        with gr.Tabs(overflow_behavior="wrap") as tab_group:
            with gr.Tab("Generate", id="generate"):
                tab = tabs["generate"]
                with gr.Row():
                    with gr.Column(scale=3):
                        tab.song_controls(default_model, before_seed=("duration",))
                    with gr.Column(scale=2):
                        tab.outputs()
                tab_presets(tab, load_presets())

            with gr.Tab("Prompt to audio", id="prompt_to_audio"):
                prompt_tab = tabs["prompt_to_audio"]
                assert isinstance(prompt_tab, _PromptTab)
                prompt_tab.layout(default_model)
                tab_presets(prompt_tab, by_task.get("prompt_to_audio", []))

            with gr.Tab("Inpaint", id="inpaint"):
                tab = tabs["inpaint"]
                with gr.Row():
                    with gr.Column(scale=3):
                        source = tab.add("audio")
                        wave = gr.HTML(None, html_template=waveform.TEMPLATE,
                                       css_template=waveform.STYLE, js_on_load=waveform.SCRIPT,
                                       elem_id="inpaint-waveform")
                        with gr.Row():
                            start_here = gr.Button("Start = playhead", size="sm",
                                                   elem_id="inpaint-start-playhead")
                            end_here = gr.Button("End = playhead", size="sm",
                                                 elem_id="inpaint-end-playhead")
                        with gr.Row():
                            start = tab.add("start_time", scale=3)
                            start_anchor = tab.add("start_time_relative_to", scale=2)
                        with gr.Row():
                            end = tab.add("end_time", scale=3)
                            end_anchor = tab.add("end_time_relative_to", scale=2)
                        add_range = gr.Button("Add this range as another one", size="sm",
                                              elem_id="inpaint-add-range")
                        table = tab.add("extra_ranges")
                        gr.Markdown(RANGES_NOTE, elem_id="inpaint-extra_ranges-note")
                        tab.add("variance")
                        tab.song_controls(default_model)
                    with gr.Column(scale=2):
                        tab.outputs()
                fields = [start, start_anchor, end, end_anchor]
                start_here.click(_playhead, source, [start, start_anchor], **UI_EVENT).then(
                    _wave_range, [wave, *fields], wave, **UI_EVENT)
                end_here.click(_playhead, source, [end, end_anchor], **UI_EVENT).then(
                    _wave_range, [wave, *fields], wave, **UI_EVENT)
                source.change(_fit_range, [source, start, end], [start, end], **UI_EVENT).then(
                    _new_wave, [source, *fields], wave, **UI_EVENT).then(
                    _wave_others, [wave, *fields, table], wave, **UI_EVENT)
                add_range.click(_add_range, [wave, *fields, table], table, **UI_EVENT)
                table.change(_wave_others, [wave, *fields, table], wave, **UI_EVENT)
                wave.release(_range_fields, wave, fields, **UI_EVENT)  # a drag ended
                for field in fields:  # typed or picked by the user (not set by the two above)
                    field.input(_wave_range, [wave, *fields], wave, **UI_EVENT)
                tab_presets(tab, by_task.get("inpaint", []))

            with gr.Tab("Outpaint", id="outpaint"):
                tab = tabs["outpaint"]
                with gr.Row():
                    with gr.Column(scale=3):
                        out_source = tab.add("audio")
                        out_wave = gr.HTML(None, html_template=waveform.TEMPLATE,
                                           css_template=waveform.STYLE, js_on_load=waveform.SCRIPT,
                                           elem_id="outpaint-waveform")
                        with gr.Row():
                            before = tab.add("extend_before_duration")
                            after = tab.add("extend_after_duration")
                        tab.song_controls(default_model)
                    with gr.Column(scale=2):
                        tab.outputs()
                out_source.change(_new_extension, [out_source, before, after], out_wave,
                                  **UI_EVENT)
                for field in (before, after):
                    field.change(_extension, [out_wave, before, after], out_wave, **UI_EVENT)
                tab_presets(tab, by_task.get("outpaint", []))

            with gr.Tab("Edit", id="edit"):
                edit_fields = {"edit_mode": {},
                               "original_tags": dict(lines=2, placeholder="e.g. pop, female "
                                                                          "vocals, piano, 90 bpm"),
                               "original_lyrics": dict(lines=4)}
                tabs["edit"].source_layout(default_model, edit_fields, DESCRIPTIONS["edit"]
                                           + " Give the tags and lyrics the track was made with, "
                                             "then the new ones.")
                tab_presets(tabs["edit"], by_task.get("edit", []))

            with gr.Tab("Cover", id="cover"):
                tabs["cover"].source_layout(default_model, {"audio_cover_strength": {}},
                                            DESCRIPTIONS["cover"])
                tab_presets(tabs["cover"], by_task.get("cover", []))

            with gr.Tab("Stems", id="stems"):
                gr.Markdown(STEMS_NOTE)
                with gr.Tabs(overflow_behavior="wrap"):
                    for task, field in (("extract", "track_name"), ("lego", "track_name"),
                                        ("complete", "track_classes")):
                        with gr.Tab(task.capitalize(), id=task):
                            tabs[task].source_layout(default_model, {field: {}}, DESCRIPTIONS[task])
                            tab_presets(tabs[task], by_task.get(task, []))

        current = studio.Studio(history, tabs, model, fmt, tab_group, model_presets, jobs)
        current.layout()

        for task, tab in tabs.items():
            outputs = [tab.result, tab.seed_used, tab.params]
            # concurrency_limit=None: jobs wait for the model in `EngineManager.slot`, after their
            # checks and reads, so a bad request is refused at once and a cancel frees the slot.
            tab.ran = ran = tab.run.click(
                _endpoint(task, jobs, from_api=False),
                [*tab.ordered_inputs(), model, fmt, tab.takes], [*outputs, tab.takes_made],
                api_name=f"{task}_form", api_visibility="private", preprocess=False,
                concurrency_limit=None, show_progress_on=tab.result)
            ran.success(_after_result, [tab.result, tab.params],
                        [tab.after, tab.summary, *tab.calls], **UI_EVENT)
            if isinstance(tab, _PromptTab):
                ran.success(_written, tab.params, tab.song(), **UI_EVENT)
            with gr.Column(visible=False):
                gr.on([], _endpoint(task, jobs, from_api=True), _api_inputs(task), outputs,
                      api_name=task, concurrency_limit=None, show_progress="hidden")
            for button, target in ((tab.to_inpaint, "inpaint"), (tab.to_outpaint, "outpaint"),
                                   (tab.to_edit, "edit")):
                button.click(_send_to(target), [tab.result, *tab.song()],
                             [*_send_targets(tabs[target]), tab_group], **UI_EVENT)
        generate = tabs["generate"]
        prompt_tab.to_generate.click(_open_in_generate, prompt_tab.params,
                                     [*[generate.inputs[name] for name in REPLAYED], tab_group],
                                     **UI_EVENT)
        gr.on([tab.stop.click for tab in tabs.values()], _stopper(manager), None, None,
              api_name="stop", **QUICK_EVENT)
        demo.unload(_stopper(manager, quiet=True))  # a closed tab's jobs end at their next step

        advanced = [tab.inputs[name] for tab in tabs.values() for name in advanced_params(tab.task)]

        def show_honoured(chosen: str) -> list[Any]:
            """The chosen model's parameters, at its own presets (8 steps on a turbo model)."""
            shown = {task: visible_advanced(chosen or "", task) for task in tabs}
            presets = {task: model_presets(chosen or "", task) for task in tabs}
            return [gr.update(visible=name in shown[task],
                              **({"value": presets[task].get(name, schema(task)[name]["default"])}
                                 if name in PRESET_PARAMS else {}))
                    for task in tabs for name in advanced_params(task)]

        model.change(show_honoured, model, advanced, **UI_EVENT)
        current.wire(demo, UI_EVENT)
    demo.history = history  # type: ignore[attr-defined]  # for `launch_options`

    # The jobs bound themselves (QUEUE_SIZE); the gradio queue only carries the quick UI events.
    demo.queue(max_size=4 * QUEUE_SIZE, default_concurrency_limit=None)
    return demo


# A small button beside a field sits on the field's baseline at its own height, rather than
# stretching to the field's box (gradio's rows stretch their children).
CSS = """
.inline-button-row { align-items: flex-end; }
.inline-button-row > button { flex-grow: 0; align-self: flex-end; height: auto;
                              margin-bottom: var(--block-padding, 8px); }
"""


MAX_UPLOAD = "1100mb"  # a 60-minute 48 kHz 24-bit stereo WAV (1.04 GB), the longest source


def launch_options(demo: gr.Blocks | None = None, rest: Any = None) -> dict[str, Any]:
    """`launch()` keywords that belong to the app's look, limits and routes rather than to where
    it runs: the takes' audio (`demo`'s history) and the REST queues (`rest.RestQueue`), served by
    gradio's own server."""
    routes = [*(studio.routes(demo.history) if hasattr(demo, "history") else []),
              *(rest.routes() if rest is not None else [])]
    # show_error: gradio's own refusals (a file that was not uploaded, a file too large) reach the
    # caller with their message; ours are gr.Error already.
    return dict(theme=gr.themes.Soft(), footer_links=["api", "gradio", "settings"],
                max_file_size=MAX_UPLOAD, show_error=True, css=CSS,
                **({"app_kwargs": {"routes": routes}} if routes else {}))

