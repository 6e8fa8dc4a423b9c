"""The studio under the tabs: every take kept (`history.History`), grouped by the run that made
them and shown side by side, with replay, send to a tab, download, recipe and delete; and an A/B
player (`studio.js`, served with the app: nothing from a CDN).

Whose takes: an `--auth` user's are theirs wherever they log in; an anonymous browser's are named
by a random key kept in its localStorage (`gr.BrowserState`, encrypted with a secret kept in the
data folder, so it still opens after a server restart).
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable

import anyio
import gradio as gr
from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute

from . import tasks
from .errors import Cancelled, InputError, ModelUnavailableError
from .gpu import JOB_SECONDS, gpu
from .history import History, Take, check_recipe, new_run_id, replay_steps, sha256_file
from .hosted import content_type
from .requests import schema

SCRIPT = (Path(__file__).resolve().parent / "studio.js").read_text()
TEMPLATE = """
<div class="studio">
  <div class="ab-bar">
    <b>A/B</b>
    <span class="ab-a"></span>
    <span class="ab-b"></span>
    <button type="button" class="ab-play">Play</button>
    <button type="button" class="ab-side-a" title="Hear A">A</button>
    <button type="button" class="ab-side-b" title="Hear B">B</button>
    <span class="ab-time"></span>
    <span class="ab-match"></span>
  </div>
  <div class="takes-list"></div>
</div>
"""
STYLE = """
.studio { display: flex; flex-direction: column; gap: 10px; }
.ab-bar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; padding: 8px;
          border: 1px solid var(--border-color-primary); border-radius: var(--radius-md);
          background: var(--background-fill-secondary); }
.ab-bar span { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.studio button, .studio .take-download {
  padding: 2px 8px; border: 1px solid var(--border-color-primary); border-radius: var(--radius-sm);
  background: var(--background-fill-primary); color: var(--body-text-color); cursor: pointer;
  font-size: var(--text-sm); text-decoration: none; line-height: 1.6; }
.studio button.is-on { background: var(--color-accent); color: white; }
.take-run { display: flex; flex-direction: column; gap: 4px; }
.run-head { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.take-row { display: grid; gap: 8px; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); }
.take-card { display: flex; flex-direction: column; gap: 4px; padding: 8px; min-width: 0;
             border: 1px solid var(--border-color-primary); border-radius: var(--radius-md);
             background: var(--background-fill-primary); }
.take-card.is-a { box-shadow: inset 4px 0 0 var(--color-accent); }
.take-card.is-b { box-shadow: inset -4px 0 0 var(--color-accent); }
.take-card audio { width: 100%; height: 32px; }
.take-tags { font-size: var(--text-sm); overflow: hidden; text-overflow: ellipsis;
             white-space: nowrap; }
.take-parent, .take-time { font-size: var(--text-xs); color: var(--body-text-color-subdued); }
.studio button.take-parent { border: none; background: none; padding: 0; text-align: left;
                             text-decoration: underline dotted; }
.take-card.is-shown { outline: 2px solid var(--color-accent); }
.take-actions { display: flex; flex-wrap: wrap; gap: 4px; }
.takes-empty { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
"""
STORAGE_KEY = "ace-step-playground-history"
SECRET_FILE = "browser-state.secret"
TAKES_ROUTE = "takes"
STEM_TASKS = ("extract", "lego", "complete")  # tabs inside the Stems tab
RECIPE_NOTE = ("Every step of a recipe (a take's **Recipe** button gives one) runs again on this "
               "server, in order, each from the one before; each step becomes a take, and the "
               "report says whether it gave the same samples as recorded. A chain that started "
               "from an upload finds it among your takes' sources, or in the file given here.")


def browser_secret(folder: Path) -> str:
    """The secret the browser's history key is encrypted with, the same after a restart."""
    path = folder / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32)
        path.touch(mode=0o600)
        path.write_text(secret)
        return secret


def owner_of(request: gr.Request | None, key: str | None) -> str:
    """Whose takes these are: the logged-in user's, else this browser's."""
    user = getattr(request, "username", None)
    if user:
        return f"user:{user}"
    if not key:
        raise gr.Error("this page has no history key yet: reload the page", print_exception=False)
    return f"browser:{key}"


def model_label(model: str) -> str:
    folder = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) or folder.is_dir():
        return f"{folder.name} (local folder)"
    return model


def shown(history: History, owner: str) -> dict[str, Any]:
    """The panel's value: the owner's newest takes."""
    return {"takes": [{**take.summary(), "model_label": model_label(take.model),
                       "sample_rate": take.params.get("sample_rate")}
                      for take in history.list(owner, history.limit)]}


def served_copy(path: Path) -> str:
    """A copy of a kept file in the temp folder, which gradio serves (the data folder it is kept
    in is not one gradio may serve from); the copy has the same bytes."""
    folder = Path(tempfile.mkdtemp(prefix="take-", dir=Path(gr.utils.get_upload_folder())))
    return str(shutil.copy2(path, folder / path.name))


def form_value(task: str, name: str, value: Any) -> Any:
    """A request's value as its form field shows it."""
    kind = schema(task)[name]["type"]
    if kind == "int_list":
        return ", ".join(map(str, value))
    if kind == "range_list":
        return [[item.get("start_time"), item.get("end_time"), item.get("tags", ""),
                 item.get("lyrics", "")] for item in value]
    return value


class Studio:
    """The history panel and its actions, over the page's tabs (task -> `ui._Tab`)."""

    def __init__(self, history: History, tabs: dict[str, Any], model: gr.Component,
                 fmt: gr.Component, tab_group: gr.Tabs, presets: Callable[[str, str], dict],
                 jobs: Any):
        self.history = history
        self.jobs = jobs  # `ui._Jobs`: what remote callers may name, and the job threads
        self._run_on_gpu = gpu(duration=JOB_SECONDS)(tasks.run)  # one GPU call a step
        self.tabs = tabs
        self.model = model
        self.fmt = fmt
        self.tab_group = tab_group
        self.presets = presets

    def layout(self) -> None:
        gr.Markdown("## Takes\nEvery result of this browser (or your login), newest first, the "
                    "takes of one run side by side. Pick a take's **A** and another's **B** to "
                    "compare them at the same playhead, loudness-matched.")
        self.key = gr.BrowserState(None, storage_key=STORAGE_KEY,
                                   secret=browser_secret(self.history.folder))
        self.panel = gr.HTML({"takes": []}, html_template=TEMPLATE, css_template=STYLE,
                             js_on_load=SCRIPT, elem_id="history")
        self.recipe = gr.File(label="Recipe (JSON): run it again below, or with `python -m "
                                    "ace_step_ui recipe FILE`", visible=False,
                              elem_id="history-recipe")
        with gr.Accordion("Run a recipe", open=False, elem_id="history-recipe-runner"):
            gr.Markdown(RECIPE_NOTE)
            with gr.Row():
                self.recipe_file = gr.File(label="Recipe (JSON)", file_types=[".json"],
                                           type="filepath", elem_id="history-recipe-file")
                self.recipe_uploads = gr.File(label="The upload it started from (if not kept)",
                                              file_count="multiple", type="filepath",
                                              elem_id="history-recipe-uploads")
            self.recipe_run = gr.Button("Run every step again", elem_id="history-recipe-run")
            self.recipe_report = gr.Markdown(elem_id="history-recipe-report")

    def wire(self, demo: gr.Blocks, event: dict[str, Any]) -> None:
        demo.load(self.opened, self.key, [self.key, self.panel], **event)
        for tab in self.tabs.values():
            if "audio" in tab.inputs:
                tab.ran.success(self.keep_edit, [tab.takes_made, self.key, tab.inputs["audio"]],
                                self.panel, **event)
            else:
                tab.ran.success(self.keep, [tab.takes_made, self.key], self.panel, **event)
        self.targets = [self.model, self.fmt, self.tab_group, self.recipe,
                        *[field for tab in self.tabs.values() for field in tab.ordered_inputs()]]
        self.panel.select(self.act, [self.panel, self.key], [self.panel, *self.targets], **event)
        self.recipe_run.click(self.run_recipe, [self.recipe_file, self.recipe_uploads, self.key],
                              [self.recipe_report, self.panel], api_visibility="private",
                              concurrency_limit=None, show_progress_on=self.recipe_report)

    def opened(self, key: str | None, request: gr.Request) -> tuple[str, dict[str, Any]]:
        """A page load: this browser's key (a new one on its first visit) and its takes."""
        key = key or secrets.token_hex(16)
        return key, shown(self.history, owner_of(request, key))

    def keep(self, made: list[list[Any]] | None, key: str | None, request: gr.Request) -> Any:
        """A run's takes, kept."""
        return self.keep_edit(made, key, None, request)

    def keep_edit(self, made: list[list[Any]] | None, key: str | None, source: str | None,
                  request: gr.Request) -> Any:
        """A run's takes, kept with their source (kept for a replay; where it is one of the
        owner's takes, that take is their parent)."""
        if not made:
            return gr.skip()
        owner = owner_of(request, key)
        run_id = new_run_id()
        for index, (path, _seed, params) in enumerate(made):
            self.history.add(owner, Path(path), params, run_id, index,
                             source_path=Path(source) if source else None)
        return shown(self.history, owner)

    def act(self, value: dict[str, Any] | None, key: str | None, request: gr.Request
            ) -> tuple[Any, ...]:
        """A take's button: replay, send, recipe or delete."""
        skip = [gr.skip()] * len(self.targets)
        action = (value or {}).get("action") or {}
        owner = owner_of(request, key)
        take = self.history.get(owner, str(action.get("id", "")))
        if take is None:
            raise gr.Error("that take is no longer in your history", print_exception=False)
        kind = action.get("kind")
        if kind == "delete":
            self.history.delete(owner, take.id)
            return shown(self.history, owner), *skip
        if kind == "recipe":
            recipe = self.history.recipe(owner, take.id)
            folder = Path(tempfile.mkdtemp(prefix="recipe-",
                                           dir=Path(gr.utils.get_upload_folder())))
            path = folder / f"recipe-{take.task}-{take.seed}.json"
            path.write_text(json.dumps(recipe, indent=2, ensure_ascii=False))
            return (gr.skip(), *self._fill({}, [gr.skip(), gr.skip(), gr.skip(),
                                               gr.File(str(path), visible=True)]))
        if kind == "send":
            return (gr.skip(), *self._send(take, str(action.get("target", ""))))
        if kind == "replay":
            return (gr.skip(), *self._replay(owner, take))
        raise gr.Error(f"unknown action {kind!r}", print_exception=False)

    async def run_recipe(self, recipe_path: str | None, uploads: list[str] | None,
                         key: str | None, request: gr.Request,
                         progress: gr.Progress = gr.Progress()) -> tuple[Any, Any]:
        """Run every step of an uploaded recipe again; each becomes a take."""
        owner = owner_of(request, key)
        if not recipe_path:
            raise gr.Error("upload a recipe (JSON) first: a take's Recipe button gives one",
                           print_exception=False)
        try:
            recipe = self._checked(json.loads(Path(recipe_path).read_bytes()))
        except ValueError as error:  # InputError is one too
            message = str(error) if isinstance(error, InputError) else f"not JSON ({error})"
            raise gr.Error(f"the recipe: {message}", print_exception=False) from None
        sources = {**self.history.kept_sources(owner),
                   **{sha256_file(path): Path(path) for path in uploads or []}}
        stop = threading.Event()
        try:
            done = await anyio.to_thread.run_sync(
                partial(self._run_steps, recipe, sources, owner,
                        getattr(request, "session_hash", None) or "", stop, progress),
                abandon_on_cancel=True, limiter=self.jobs.threads)
        except anyio.get_cancelled_exc_class():
            stop.set()  # a closed tab: the step running ends at its next diffusion step
            raise
        except Cancelled as error:
            gr.Info(str(error).capitalize() + "; the steps done are kept.", title="Stopped")
            return gr.skip(), shown(self.history, owner)
        except (InputError, ModelUnavailableError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        return _report(done), shown(self.history, owner)

    def _checked(self, recipe: Any) -> dict[str, Any]:
        """The recipe, each step's model one this server offers and its request naming no server
        file a visitor may not (as the page's and API's requests)."""
        steps = check_recipe(recipe)
        checked = []
        for number, step in enumerate(steps):
            try:
                model = self.jobs.access.model(step.get("model"))
                request = self.jobs.access.payload(step["request"],
                                                   Path(gr.utils.get_upload_folder()))
            except InputError as error:
                raise InputError(f"step {number}: {error}") from None
            checked.append({**step, "model": model, "request": request})
        return {**recipe, "steps": checked}

    def _run_steps(self, recipe: dict[str, Any], sources: dict[str, Path], owner: str,
                   session: str, stop: threading.Event, progress: gr.Progress
                   ) -> list[dict[str, Any]]:
        """The steps, each kept as `owner`'s take; they are `session`'s jobs (its Stop ends them)."""
        folder = Path(tempfile.mkdtemp(prefix="recipe-", dir=Path(gr.utils.get_upload_folder())))
        count = len(recipe["steps"])
        done: list[dict[str, Any]] = []

        def on_step(step: int, total: int) -> None:
            progress((step, total), desc=f"step {len(done) + 1} of {count}")

        for item in replay_steps(recipe, self.jobs.manager, out_dir=folder, sources=sources,
                                 on_step=on_step, owner=session, stop=stop,
                                 run_task=self._run_on_gpu):
            self.history.add(owner, item["path"], item["params"], new_run_id(), 0,
                             source_path=item["source"])
            done.append(item)
        return done

    def _fill(self, fields: dict[str, dict[str, Any]], head: list[Any]) -> list[Any]:
        """The targets' updates: `head` for model, format, tabs and recipe, then `fields`
        (task -> name -> value), the rest skipped."""
        values = list(head)
        for task, tab in self.tabs.items():
            chosen = fields.get(task, {})
            values += [chosen[name] if name in chosen else gr.skip() for name in tab.spec]
        return values

    def _file(self, take: Take) -> Path:
        path = self.history.path(take.id, take.file)
        if path is None:
            raise gr.Error("this take's audio is gone from the server", print_exception=False)
        return path

    def _send(self, take: Take, target: str) -> list[Any]:
        if target not in ("inpaint", "outpaint", "edit"):
            raise gr.Error(f"a take cannot be sent to {target!r}", print_exception=False)
        audio = served_copy(self._file(take))
        song = {"tags": take.tags, "lyrics": take.lyrics}
        if target == "edit":
            song.update(original_tags=take.tags, original_lyrics=take.lyrics)
        return self._fill({target: {"audio": audio, **song}},
                          [gr.skip(), gr.skip(), gr.Tabs(selected=target), gr.skip()])

    def _replay(self, owner: str, take: Take) -> list[Any]:
        """The take's tab, model and format, its fields as it was sent with its seed, and the
        source it was made from."""
        task = take.task
        sent = dict(take.params.get("request", {}))
        sent["seed"] = take.seed
        presets = self.presets(take.model, task)
        fields: dict[str, Any] = {}
        for name, spec in schema(task).items():
            if name == "audio":
                continue
            value = sent.get(name, presets.get(name, spec["default"]))
            if name == "reference_audio":  # kept where it was sent from, while it lasts
                reference = Path(value) if value else None
                if value and not (reference and reference.is_file()):
                    gr.Warning("this take's reference audio is not kept: upload it again")
                value = str(reference) if reference and reference.is_file() else None
            fields[name] = form_value(task, name, value)
        if "audio" in schema(task):
            source = self.history.source_path(owner, take.id)
            if source is None:
                raise gr.Error("this take's source audio is not kept any more, so it cannot be "
                               "replayed", print_exception=False)
            fields["audio"] = served_copy(source)
        tab_id = "stems" if task in STEM_TASKS else task
        return self._fill({task: fields}, [take.model, take.format, gr.Tabs(selected=tab_id),
                                           gr.skip()])


def routes(history: History) -> list[BaseRoute]:
    """`GET /takes/{id}/{file}`: a take's audio, public by its unguessable id (as a CDN link is),
    so that the page's players, downloads and the A/B player can fetch it."""
    router = APIRouter()

    @router.get(f"/{TAKES_ROUTE}/{{take_id}}/{{file_name}}", include_in_schema=False)
    def take_audio(take_id: str, file_name: str) -> Any:
        path = history.path(take_id, file_name)
        if path is None:
            return JSONResponse({"detail": f"no take {take_id}/{file_name} here"}, 404)
        return FileResponse(path, media_type=content_type(path), filename=path.name)

    return list(router.routes)


def _report(done: list[dict[str, Any]]) -> str:
    """What a recipe's run gave, a line a step."""
    rows = [f"| {item['step']} | {item['params']['task']} | {item['seed']} | "
            f"{'the same as recorded' if item['same'] else 'different'} |" for item in done]
    same = sum(item["same"] for item in done)
    return (f"**{same} of {len(done)} steps gave the same samples as recorded.**\n\n"
            "| step | task | seed | samples |\n|---|---|---|---|\n" + "\n".join(rows))
