"""Every take a user made, kept on the server: its audio file, what made it and what it was made from.

A take is one result of the studio. Its row lives in SQLite (`folder/history.sqlite3`) and its audio,
copied in, in `folder/takes/{id}/{file}`, so both survive a page reload and a server restart. Takes
belong to an owner, an opaque string (an `--auth` user, an anonymous browser's key); nobody sees
another owner's takes, except through the unguessable id of the public `/takes/{id}/{file}` route.

A take made from source audio whose bytes are one of the owner's takes has that take as its parent,
so an edit chain (generate, inpaint, outpaint, ...) can be followed back to its root. Its recipe is
that chain as data, root first, each step's request with the seed it used:

    {"recipe": "ace-step-playground/1", "steps": [
        {"task": "generate", "model": ..., "format": "wav", "request": {..., "seed": 7},
         "source": null, "take": <id>, "samples_sha256": <hex>},
        {"task": "inpaint", ..., "source": {"step": 0}, ...}]}

A step's source is null (it takes none), `{"step": i}` (an earlier step's output; steps count from
0) or `{"file": name, "sha256": hex}` (an upload, found again by its bytes). `replay` runs a recipe
again; `samples_sha256` (of the decoded samples, not the file, whose embedded metadata holds
timings) tells whether each step made the same audio.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote, urlsplit

import torch

from . import tasks
from .audio import FORMATS, read_audio
from .engines import EngineManager, StepCallback
from .errors import InputError
from .requests import REQUEST_TYPES, TASKS, SourceRequest

HISTORY_LIMIT = 200  # takes kept per owner; adding more drops the oldest, files too
HISTORY_DAYS = 30.0  # takes older than this go (every visitor of a public Space has a history)
RECIPE_VERSION = "ace-step-playground/1"
TAKE_ID = re.compile(r"[0-9a-f]{32}")
SHA256 = re.compile(r"[0-9a-f]{64}")
HASH_BLOCK_BYTES = 1 << 20
SOURCE_KEYS = ("audio", "audio_url")  # the request's source, which a recipe keeps in "source"
NEWEST_FIRST = "ORDER BY created DESC, take_index DESC, seq DESC"

SCHEMA = """
CREATE TABLE IF NOT EXISTS takes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    run_id TEXT NOT NULL,
    take_index INTEGER NOT NULL,
    created REAL NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    tags TEXT NOT NULL,
    lyrics TEXT NOT NULL,
    format TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    samples_sha256 TEXT NOT NULL,
    parent TEXT,
    source_sha256 TEXT,
    source_name TEXT,
    params TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS takes_owner ON takes (owner, created, take_index, seq);
CREATE INDEX IF NOT EXISTS takes_owner_sha256 ON takes (owner, sha256);
CREATE INDEX IF NOT EXISTS takes_created ON takes (created);
"""


@dataclass(frozen=True)
class Take:
    id: str  # random 32 hex digits: the public file route's only key
    owner: str
    run_id: str  # the takes made by one click share it
    index: int  # 0-based take number within the run
    created: float  # epoch seconds
    task: str
    model: str
    seed: int
    tags: str
    lyrics: str
    format: str  # the file's: wav, flac or mp3
    file: str  # the audio file's name inside the take's folder
    sha256: str  # of the file's bytes
    samples_sha256: str  # of the decoded samples: equal for a replay, whose file's timings differ
    parent: str | None  # the owner's take whose bytes were this one's source audio
    params: dict[str, Any]  # `Result.params`
    source_sha256: str | None = None  # of the source audio's bytes, when it had one
    source_name: str | None = None  # the source file's name, for a recipe that starts from it

    @property
    def url(self) -> str:
        """Relative, so that it resolves under the page's own address (a proxy's root path
        included); `studio.routes` serves it."""
        return f"takes/{self.id}/{quote(self.file)}"

    def summary(self) -> dict[str, Any]:
        """What the page shows of a take, as JSON."""
        return {"id": self.id, "run_id": self.run_id, "index": self.index, "created": self.created,
                "task": self.task, "model": self.model, "seed": self.seed, "tags": self.tags,
                "lyrics": self.lyrics, "format": self.format, "file": self.file,
                "parent": self.parent, "duration_s": self.params.get("duration_s"), "url": self.url}


class History:
    """The takes: one connection, used under a lock by the server's threads."""

    def __init__(self, folder: str | Path, limit: int = HISTORY_LIMIT,
                 keep_days: float = HISTORY_DAYS):
        """Takes older than `keep_days` go (0 keeps them until deleted or beyond `limit`)."""
        if limit < 1:
            raise InputError(f"the history keeps at least 1 take per owner, not {limit}")
        if not keep_days >= 0:
            raise InputError(f"takes are kept for 0 days (no end) or more, not {keep_days}")
        self.keep_days = keep_days
        self.folder = Path(folder)
        self.takes = self.folder / "takes"
        self.takes.mkdir(parents=True, exist_ok=True)
        self.sources = self.folder / "sources"  # uploads takes were made from, by sha256, once each
        self.sources.mkdir(exist_ok=True)
        self.limit = limit
        self._db = sqlite3.connect(self.folder / "history.sqlite3", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._arriving: Counter[str] = Counter()  # sources copied in for rows not written yet
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # a killed process leaves it consistent
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            kept = {row["id"] for row in self._db.execute("SELECT id FROM takes")}
        for orphan in self.takes.iterdir():  # a copy whose row was never written, or whose row went
            if TAKE_ID.fullmatch(orphan.name) and orphan.name not in kept:
                shutil.rmtree(orphan, ignore_errors=True)
        self.sweep()

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete the takes older than `keep_days`, with their files; returns their ids."""
        if not self.keep_days:
            return []
        cutoff = (time.time() if now is None else now) - self.keep_days * 86400
        with self._lock:
            old = [row["id"] for row in self._db.execute("SELECT id FROM takes WHERE created < ?",
                                                         (cutoff,))]
            self._db.executemany("DELETE FROM takes WHERE id = ?", [(take_id,) for take_id in old])
        for take_id in old:
            shutil.rmtree(self.takes / take_id, ignore_errors=True)
        if old:
            self._drop_unused_sources()
        return old

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, owner: str, audio_path: str | Path, params: Mapping[str, Any], run_id: str,
            index: int, source_path: str | Path | None = None) -> Take:
        """Keep a copy of the take at `audio_path` (the caller keeps its own file), made by
        `params` (`Result.params`); `source_path` is the audio it was made from. The owner's
        oldest takes beyond the limit go, with their files."""
        audio_path = Path(audio_path)
        fmt = audio_path.suffix.lstrip(".").lower()
        if not owner:
            raise InputError("a take needs an owner")
        if fmt not in FORMATS:
            raise InputError(f"'{audio_path.name}' is not a take: its file must end in "
                             f"{', '.join('.' + name for name in FORMATS)}")
        if index < 0:
            raise InputError(f"a take's index counts from 0, not {index}")
        missing = [name for name in ("task", "model", "seed", "request") if name not in params]
        if missing:
            raise InputError(f"the take's params lack {', '.join(missing)}: pass Result.params "
                             f"as tasks.run returns them")
        samples = samples_sha256(audio_path)  # reads it as audio: a file that is none fails here
        source_sha256 = source_name = None
        if source_path is not None:
            source_path = Path(source_path)
            if not source_path.is_file():
                raise InputError(f"source audio '{source_path}' not found: pass the file the take "
                                 f"was made from, or none")
            source_sha256, source_name = sha256_file(source_path), source_path.name

        take_id = secrets.token_hex(16)
        folder = self.takes / take_id
        folder.mkdir()
        try:
            if source_path is not None and source_sha256:
                with self._lock:
                    self._arriving[source_sha256] += 1
                self._keep_source(source_path, source_sha256)
            shutil.copyfile(audio_path, folder / audio_path.name)
            digest = sha256_file(folder / audio_path.name)
            with self._lock:
                parent = self._newest_with_bytes(owner, source_sha256) if source_sha256 else None
                self._db.execute(
                    "INSERT INTO takes (id, owner, run_id, take_index, created, task, model, seed,"
                    " tags, lyrics, format, file, sha256, samples_sha256, parent, source_sha256,"
                    " source_name, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                    " ?, ?)",
                    (take_id, owner, run_id, index, time.time(), params["task"], params["model"],
                     params["seed"], params.get("tags", ""), params.get("lyrics", ""), fmt,
                     audio_path.name, digest, samples, parent, source_sha256, source_name,
                     json.dumps(dict(params), ensure_ascii=False)))
                dropped = self._drop_beyond_limit(owner, take_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            if source_sha256:
                with self._lock:
                    self._arriving[source_sha256] -= 1
        for old in dropped:
            shutil.rmtree(self.takes / old, ignore_errors=True)
        self._drop_unused_sources()
        self.sweep()
        take = self.get(owner, take_id)
        assert take is not None
        return take

    def list(self, owner: str, limit: int = 50) -> list[Take]:
        """The owner's takes, newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM takes WHERE owner = ? {NEWEST_FIRST} LIMIT ?",
                                    (owner, max(limit, 0))).fetchall()
        return [_take(row) for row in rows]

    def get(self, owner: str, take_id: str) -> Take | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM takes WHERE id = ? AND owner = ?",
                                   (take_id, owner)).fetchone()
        return _take(row) if row else None

    def delete(self, owner: str, take_id: str) -> bool:
        """Remove the take and its file; False when the owner has no such take. Takes made from it
        keep its id as their parent, and their lineage starts after it."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM takes WHERE id = ? AND owner = ?",
                                       (take_id, owner)).rowcount
        if deleted:
            shutil.rmtree(self.takes / take_id, ignore_errors=True)
            self._drop_unused_sources()
        return bool(deleted)

    def source_path(self, owner: str, take_id: str) -> Path | None:
        """The audio the take was made from: its parent take's file, else the kept upload; None
        for a take made from nothing (generate) or whose source is gone."""
        take = self.get(owner, take_id)
        if take is None or not take.source_sha256:
            return None
        parent = self.get(owner, take.parent) if take.parent else None
        if parent is not None and parent.sha256 == take.source_sha256:
            return self.path(parent.id, parent.file)
        kept = self._source_file(take.source_sha256)
        return kept if kept.is_file() else None

    def _source_file(self, sha256: str) -> Path:
        return self.sources / sha256

    def kept_sources(self, owner: str) -> dict[str, Path]:
        """The sources the owner's takes were made from (sha256 → file), for a recipe's upload."""
        with self._lock:
            digests = [row[0] for row in self._db.execute(
                "SELECT DISTINCT source_sha256 FROM takes WHERE owner = ? AND source_sha256 IS NOT"
                " NULL", (owner,))]
        return {digest: self._source_file(digest) for digest in digests
                if self._source_file(digest).is_file()}

    def _keep_source(self, source_path: Path, sha256: str) -> None:
        """One copy of each source, named by its bytes' digest (an hour-long upload edited eight
        times is kept once)."""
        kept = self._source_file(sha256)
        if not kept.is_file():
            partial = kept.with_name(kept.name + ".partial")
            shutil.copyfile(source_path, partial)
            partial.replace(kept)

    def _drop_unused_sources(self) -> None:
        with self._lock:
            used = {row[0] for row in self._db.execute(
                "SELECT DISTINCT source_sha256 FROM takes WHERE source_sha256 IS NOT NULL")}
            used |= {digest for digest, count in self._arriving.items() if count > 0}
        for kept in self.sources.iterdir():
            if kept.name not in used and not kept.name.endswith(".partial"):
                kept.unlink(missing_ok=True)

    def path(self, take_id: str, file: str) -> Path | None:
        """The file of the public route `/takes/{take_id}/{file}`; None unless `file` is that
        take's own file name (so no other path can be reached through it)."""
        if not TAKE_ID.fullmatch(take_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT file FROM takes WHERE id = ?", (take_id,)).fetchone()
        if row is None or row["file"] != file:
            return None
        path = self.takes / take_id / file
        return path if path.is_file() else None

    def lineage(self, owner: str, take_id: str) -> list[Take]:
        """The take and the takes it was made from, root first; empty when the owner has none."""
        chain: list[Take] = []
        take = self.get(owner, take_id)
        while take is not None and take.id not in {earlier.id for earlier in chain}:
            chain.append(take)
            take = self.get(owner, take.parent) if take.parent else None
        return chain[::-1]

    def recipe(self, owner: str, take_id: str) -> dict[str, Any]:
        """The take's lineage as a recipe that `replay` runs again (see the module's docstring)."""
        chain = self.lineage(owner, take_id)
        if not chain:
            raise InputError(f"no take '{take_id}' in this history: it was deleted, or made in "
                             f"another browser or by another user")
        steps = []
        for number, take in enumerate(chain):
            steps.append({"task": take.task, "model": take.model, "format": take.format,
                          "request": replay_request(take),
                          "source": {"step": number - 1} if number else root_source(take),
                          "take": take.id, "samples_sha256": take.samples_sha256})
        return {"recipe": RECIPE_VERSION, "steps": steps}

    def _newest_with_bytes(self, owner: str, sha256: str) -> str | None:
        row = self._db.execute(f"SELECT id FROM takes WHERE owner = ? AND sha256 = ? {NEWEST_FIRST}"
                               f" LIMIT 1", (owner, sha256)).fetchone()
        return row["id"] if row else None

    def _drop_beyond_limit(self, owner: str, added: str) -> list[str]:
        """Delete the owner's oldest rows beyond the limit, never the one just `added` (a clock set
        back could make it look older); returns their ids."""
        rows = self._db.execute(f"SELECT id FROM takes WHERE owner = ? AND id != ? {NEWEST_FIRST}"
                                f" LIMIT -1 OFFSET ?", (owner, added, self.limit - 1)).fetchall()
        dropped = [row["id"] for row in rows]
        self._db.executemany("DELETE FROM takes WHERE id = ?", [(take_id,) for take_id in dropped])
        return dropped


def new_run_id() -> str:
    return secrets.token_hex(16)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def samples_sha256(path: str | Path) -> str:
    """The sha256 of the decoded samples (float32, channels by frames): the same for two files of
    the same audio whose embedded metadata differ."""
    samples = read_audio(path).samples.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(samples.numpy().tobytes()).hexdigest()


def takes_source(task: str) -> bool:
    return issubclass(REQUEST_TYPES[task], SourceRequest)


def replay_request(take: Take) -> dict[str, Any]:
    """What the take's caller sent, with the seeds it used and without its source audio."""
    sent = take.params.get("request", {})
    request = {name: value for name, value in sent.items() if name not in SOURCE_KEYS}
    request["seed"] = take.seed
    if "retake_seed" in take.params:
        request["retake_seed"] = take.params["retake_seed"]
    return request


def root_source(take: Take) -> dict[str, Any] | None:
    """A recipe's first source: the upload's name and bytes; a take saved without its source file
    gets the name it was sent under, and is found again by that name alone."""
    if take.source_sha256:
        return {"file": take.source_name, "sha256": take.source_sha256}
    if not takes_source(take.task):
        return None
    sent = next((take.params["request"][key] for key in SOURCE_KEYS
                 if key in take.params.get("request", {})), "")
    is_data = str(sent).lstrip()[:5].lower() == "data:"
    return {"file": "" if is_data else Path(urlsplit(str(sent)).path).name, "sha256": None}


def check_recipe(recipe: Any) -> list[dict[str, Any]]:
    """The recipe's steps, checked: version, tasks, formats and that every source is an upload or
    an earlier step's output."""
    if not isinstance(recipe, Mapping):
        raise InputError(f"a recipe is a JSON object, not {type(recipe).__name__}")
    if recipe.get("recipe") != RECIPE_VERSION:
        found = (f"its \"recipe\" is {recipe['recipe']!r}" if "recipe" in recipe
                 else "it has no \"recipe\" field")
        raise InputError(f"not an ACE-Step Playground recipe ({found}); this version reads "
                         f"\"recipe\": \"{RECIPE_VERSION}\"")
    steps = recipe.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InputError("a recipe's \"steps\" must be a non-empty list of steps")
    for number, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise InputError(f"step {number} of the recipe is {type(step).__name__}, not an object")
        task = step.get("task")
        if task not in TASKS:
            raise InputError(f"step {number}: unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if step.get("format", "wav") not in FORMATS:
            raise InputError(f"step {number}: format {step['format']!r} is none of "
                             f"{', '.join(FORMATS)}")
        if not isinstance(step.get("request"), Mapping):
            raise InputError(f"step {number}: \"request\" must be an object of {task} parameters")
        if any(key in step["request"] for key in SOURCE_KEYS):
            raise InputError(f"step {number}: give the source audio as the step's \"source\" "
                             f"({{\"step\": i}} or {{\"file\": name, \"sha256\": hex}}), not in its "
                             f"request")
        _check_source(number, task, step.get("source"))
    return [dict(step) for step in steps]


def _check_source(number: int, task: str, source: Any) -> None:
    if source is None:
        if takes_source(task):
            raise InputError(f"step {number}: {task} needs source audio: set its \"source\" to "
                             f"{{\"step\": i}} (an earlier step's output) or {{\"file\": name, "
                             f"\"sha256\": hex}} (an upload)")
        return
    if not takes_source(task):
        raise InputError(f"step {number}: {task} takes no source audio; set its \"source\" to null")
    if isinstance(source, Mapping) and set(source) == {"step"}:
        earlier = source["step"]
        if type(earlier) is not int or not 0 <= earlier < number:
            raise InputError(f"step {number}: its source is step {earlier!r}, but a step can only "
                             f"start from an earlier step's output"
                             + (f" (0 to {number - 1})" if number else " and this is the first"))
        return
    if isinstance(source, Mapping) and set(source) == {"file", "sha256"}:
        if not isinstance(source["file"], str) or not (
                source["sha256"] is None or (isinstance(source["sha256"], str)
                                             and SHA256.fullmatch(source["sha256"]))):
            raise InputError(f"step {number}: an upload source is {{\"file\": name, \"sha256\": "
                             f"64 hex digits}}, not {json.dumps(source)[:200]}")
        return
    raise InputError(f"step {number}: \"source\" must be null, {{\"step\": i}} or {{\"file\": name, "
                     f"\"sha256\": hex}}, not {json.dumps(source)[:200]}")


def find_upload(number: int, source: Mapping[str, Any], sources: Mapping[str, Path]) -> Path:
    """The file given for an upload source: by its bytes' sha256, or by name when the recipe has
    none."""
    name, sha256 = source["file"] or "the source audio", source["sha256"]
    if sha256 is None:
        found = next((path for path in sources.values() if Path(path).name == source["file"]), None)
    else:
        found = sources.get(sha256)
    if found is not None:
        return Path(found)
    shown = f"'{name}' (sha256 {sha256})" if sha256 else f"'{name}'"
    other = next((path for path in sources.values() if Path(path).name == source["file"]), None)
    if other is not None:
        raise InputError(f"step {number} starts from the upload {shown}, but the file given as "
                         f"{other} has other bytes: pass the original file, unchanged")
    raise InputError(f"step {number} starts from the upload {shown}, which was not given: pass "
                     f"that file (on the command line: --source PATH)")


def replay(recipe: Mapping[str, Any], manager: EngineManager, *, out_dir: str | Path,
           model_override: str | None = None, sources: Mapping[str, Path] | None = None,
           on_step: StepCallback | None = None,
           on_phase: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the recipe's steps again, in order, saving each result in `out_dir` in its step's
    format; uploads come from `sources` (sha256 of the bytes → file). Returns per step
    {"step", "path", "seed", "samples_sha256", "same"}: "same" when the samples equal the
    recorded ones."""
    return list(replay_steps(recipe, manager, out_dir=out_dir, model_override=model_override,
                             sources=sources, on_step=on_step, on_phase=on_phase))


def replay_steps(recipe: Mapping[str, Any], manager: EngineManager, *, out_dir: str | Path,
                 model_override: str | None = None, sources: Mapping[str, Path] | None = None,
                 on_step: StepCallback | None = None,
                 on_phase: Callable[[str], None] | None = None, owner: str = "",
                 stop: threading.Event | None = None,
                 run_task: Callable[..., tasks.Result] = tasks.run) -> Iterator[dict[str, Any]]:
    """`replay`, step by step: each step's outcome as soon as it is saved, with its "params" and
    the "source" file it was made from. Every step is checked, and every upload found, before the
    first runs; the steps are `owner`'s jobs, and end at the next step once `stop` is set. Each
    runs through `run_task` (`tasks.run`, or the app's GPU-wrapped one: one GPU call a step)."""
    steps = check_recipe(recipe)
    models, uploads = [], {}
    for number, step in enumerate(steps):
        model = model_override or step.get("model")
        if not model or not isinstance(model, str):
            raise InputError(f"step {number} names no model: add its \"model\", or choose one "
                             f"for every step (--model)")
        models.append(model)
        source = step.get("source")
        payload = dict(step["request"])
        if source is not None and "file" in source:
            uploads[number] = find_upload(number, source, sources or {})
            payload["audio"] = str(uploads[number])
        elif source is not None:
            payload["audio"] = f"output-of-step-{source['step']}"  # checked here, read once it exists
        try:
            tasks.check(step["task"], payload, model)
        except InputError as error:
            raise InputError(f"step {number}: {error}") from None

    outputs: list[Path] = []
    for number, step in enumerate(steps):
        source = step.get("source")
        payload = dict(step["request"])
        made_from = None
        if source is not None:
            made_from = uploads[number] if "file" in source else outputs[source["step"]]
            payload["audio"] = str(made_from)
        result = run_task(step["task"], payload, manager, models[number], on_step=on_step,
                          on_phase=on_phase, owner=owner, stop=stop)
        path = tasks.save_result(result, out_dir, step.get("format", "wav"))
        outputs.append(path)
        digest = samples_sha256(path)
        yield {"step": number, "path": path, "seed": result.seed, "samples_sha256": digest,
               "same": digest == step.get("samples_sha256"), "params": result.params,
               "source": made_from}


def _take(row: sqlite3.Row) -> Take:
    return Take(id=row["id"], owner=row["owner"], run_id=row["run_id"], index=row["take_index"],
                created=row["created"], task=row["task"], model=row["model"], seed=row["seed"],
                tags=row["tags"], lyrics=row["lyrics"], format=row["format"], file=row["file"],
                sha256=row["sha256"], samples_sha256=row["samples_sha256"], parent=row["parent"],
                params=json.loads(row["params"]), source_sha256=row["source_sha256"],
                source_name=row["source_name"])
