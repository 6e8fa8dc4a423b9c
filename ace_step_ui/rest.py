"""The hosted services' REST queues on the playground's own server: a client written for RunComfy,
fal or WaveSpeed works when pointed here.

    RunComfy   POST /v1/models/{model_id}               GET  /v1/requests/{id}/status
                                                        GET  /v1/requests/{id}/result
                                                        POST /v1/requests/{id}/cancel
    fal        POST /fal-ai/{app}[/{endpoint}]          GET  /fal-ai/{app}/requests/{id}/status
                                                        GET  /fal-ai/{app}/requests/{id}
                                                        PUT  /fal-ai/{app}/requests/{id}/cancel
    WaveSpeed  POST /api/v3/{model_id}                  GET  /api/v3/predictions/{id}/result
    results    GET  /results/{id}/{file}               (the audio, as the outputs link it)

The routes are mounted on gradio's FastAPI app (`routes()` goes to `launch(app_kwargs=...)`), and
the jobs take the model's one slot (`EngineManager.slot`) like the UI's, one REST job in line at a
time, so UI users and API callers take turns. Jobs live in SQLite (jobstore.py) under the data
folder with their fetched sources and results, so a restart loses none. With API keys set, every
route but the results' needs one (`Authorization: Bearer KEY`, or fal's `Key KEY`), and a key sees
only its own jobs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute

from . import tasks
from .access import RemoteAccess, SOURCE_PARAMS
from .audio import FORMATS
from .engines import EngineManager, family_for
from .errors import Cancelled, InputError, ModelUnavailableError
from .gpu import JOB_SECONDS, gpu
from .hosted import HostedModel, content_type, fal_output, parse_model_id
from .jobstore import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Job, JobStore
from .remote import MAX_DATA_URI_BYTES, resolve_audio_source
from .requests import ALIASES

logger = logging.getLogger(__name__)
Handler = Callable[..., Any]

APP_FOLDER = "ace-step-playground"
MAX_BODY_BYTES = MAX_DATA_URI_BYTES * 4 // 3 + 1_000_000  # a data: URI source, base64, and the rest
QUEUE_LIMIT = 100  # jobs one API key may have waiting or running
RETENTION_HOURS = 24.0
IDLE_S = 0.2  # how often the idle worker looks for a job
SWEEP_S = 60.0  # how often finished jobs past their retention are deleted
RESULTS_ROUTE = "results"
FAL_STATES = {QUEUED: "IN_QUEUE", RUNNING: "IN_PROGRESS"}  # and COMPLETED for every end
WAVESPEED_STATES = {QUEUED: "created", RUNNING: "processing", COMPLETED: "completed"}


def default_data_dir() -> Path:
    """Where jobs and results live unless `--data-dir` says: a folder in the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / APP_FOLDER


class ApiError(Exception):
    """A refusal with its HTTP status; each service's routes render it in their own shape."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Progress:
    phase: str
    step: int
    total: int


class RestQueue:
    """The REST side of the playground: the routes, the job store and the threads that fetch the
    jobs' sources and run them."""

    def __init__(self, manager: EngineManager, access: RemoteAccess, data_dir: str | Path,
                 api_keys: tuple[str, ...] = (), queue_limit: int = QUEUE_LIMIT,
                 retention_hours: float = RETENTION_HOURS):
        self.manager = manager
        self.access = access
        self.data_dir = Path(data_dir).expanduser()
        self.sources_dir = self.data_dir / "sources"
        self.results_dir = self.data_dir / "results"
        self.store = JobStore(self.data_dir / "jobs.sqlite3")
        self.keys = {_owner_of(key): key for key in api_keys}
        self.queue_limit = queue_limit
        self.retention_s = retention_hours * 3600
        self.progress: dict[str, Progress] = {}
        self._stops: dict[str, threading.Event] = {}
        self._stops_lock = threading.Lock()
        self._stop_early: set[str] = set()  # cancelled between being claimed and starting
        self._wake = threading.Event()
        self._fetch_wake = threading.Event()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._run_on_gpu = gpu(duration=JOB_SECONDS)(self._run)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> RestQueue:
        """Pick up what the last process left, then start fetching and running jobs."""
        requeued, failed = self.store.recover()
        if requeued or failed:
            logger.warning("REST jobs cut off by the last shutdown: %d re-queued, %d failed",
                           len(requeued), len(failed))
        for job_id in failed:
            shutil.rmtree(self.sources_dir / job_id, ignore_errors=True)
        self._sweep()
        for target, name in ((self._work, "rest-worker"), (self._fetch, "rest-fetcher")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._fetch_wake.set()
        with self._stops_lock:
            for stop in self._stops.values():
                stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.store.close()

    # -- submitting -------------------------------------------------------------------------------

    def model_for(self, hosted: HostedModel) -> str:
        """The operator's model of the family `hosted` names (the first listed), or a 404."""
        served: dict[str, str] = {}
        for model in self.access.models:
            try:
                served.setdefault(family_for(model).name, model)
            except (InputError, ModelUnavailableError):
                continue
        if hosted.family in served:
            return served[hosted.family]
        offered = ", ".join(f"{family} ({model})" for family, model in served.items()) or "none"
        raise ApiError(404, f"{hosted.model_id} runs {hosted.family}, which this server does not "
                            f"serve; it serves {offered} (the operator adds models with --models)")

    async def submit(self, request: Request, service: str, model_id: str) -> Job:
        owner = self.authorize(request)
        try:
            hosted = parse_model_id(model_id)
        except InputError as error:
            raise ApiError(404, str(error)) from None
        model = self.model_for(hosted)
        body = await _json_body(request)
        payload = dict(body)
        fmt = payload.pop("format", None) or FORMATS[0]
        try:
            if fmt not in FORMATS:
                raise InputError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
            payload = self.access.payload(payload, upload_folder=None)
            tasks.check(hosted.task, payload, model)
        except InputError as error:
            raise ApiError(422, str(error)) from None
        self._check_limit(owner)  # early, before a data: URI is decoded for nothing
        sent = {name: _shown_source(value) if name in SOURCE_PARAMS else value
                for name, value in body.items()}
        job_id, payload = await anyio.to_thread.run_sync(self._decode_data_uris, payload)
        try:
            self._check_limit(owner)  # again: no await from here to the job's row
        except ApiError:
            shutil.rmtree(self.sources_dir / job_id, ignore_errors=True)
            raise
        ready = not any(_is_url(payload.get(name)) for name in SOURCE_PARAMS)
        job = self.store.add(owner, service, hosted.model_id, hosted.task, model, payload, sent,
                             fmt, ready, job_id=job_id)
        (self._wake if ready else self._fetch_wake).set()
        return job

    def _check_limit(self, owner: str) -> None:
        if self.store.active(owner) >= self.queue_limit:
            raise ApiError(429, f"this API key already has {self.queue_limit} jobs waiting or "
                                f"running, the most this server takes from one key; send more when "
                                f"some have finished")

    def _decode_data_uris(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A new job id, and `payload` with its data: URI sources written to the job's folder."""
        job_id = JobStore.new_id()
        decoded = dict(payload)
        for name in SOURCE_PARAMS:
            value = decoded.get(name)
            if isinstance(value, str) and value.strip()[:5].lower() == "data:":
                folder = self.sources_dir / job_id
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    decoded[name] = str(resolve_audio_source(value, folder))
                except InputError as error:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise ApiError(422, str(error)) from None
        return job_id, decoded

    def authorize(self, request: Request) -> str:
        """The caller's owner name (a digest of its key), or a 401 when keys are required."""
        if not self.keys:
            return ""
        scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() in ("bearer", "key") and key.strip():
            owner = _owner_of(key.strip())
            known = self.keys.get(owner)
            if known is not None and hmac.compare_digest(known, key.strip()):
                return owner
            raise ApiError(401, "the API key is not valid on this server")
        raise ApiError(401, "this server needs an API key: send 'Authorization: Bearer <key>' "
                            "(or fal's 'Authorization: Key <key>')")

    def job_of(self, request: Request, job_id: str) -> Job:
        owner = self.authorize(request)
        job = self.store.get(job_id)
        if job is None or job.owner != owner:
            raise ApiError(404, f"no request {job_id} here (results are kept "
                                f"{self.retention_s / 3600:g} hours after they finish)")
        return job

    def cancel(self, job: Job) -> str:
        """Cancel `job`: "cancelled" when it had not started, "stopping" when it runs (it stops at
        its next step), "ended" when it had already ended."""
        if self.store.cancel_queued(job.id):
            shutil.rmtree(self.sources_dir / job.id, ignore_errors=True)
            return "cancelled"
        with self._stops_lock:
            current = self.store.get(job.id)
            if current is None or current.finished:
                return "ended"
            stop = self._stops.get(job.id)
            if stop is not None:
                stop.set()
            else:  # claimed, and about to start: it starts stopped
                self._stop_early.add(job.id)
        return "stopping"

    # -- fetching and running ---------------------------------------------------------------------

    def _fetch(self) -> None:
        """Download the URL sources of queued jobs, in the order sent, into their job's folder,
        where they stay until the job ends (a restart finds them there)."""
        while not self._closing.is_set():
            waiting = [job for job in self.store.jobs([QUEUED]) if not job.ready]
            if not waiting:
                self._fetch_wake.wait(IDLE_S * 5)
                self._fetch_wake.clear()
                continue
            job = waiting[0]
            folder = self.sources_dir / job.id
            shutil.rmtree(folder, ignore_errors=True)  # a download the last process cut off
            folder.mkdir(parents=True, exist_ok=True)
            payload = dict(job.payload)
            try:
                for name in SOURCE_PARAMS:
                    if _is_url(payload.get(name)):
                        payload[name] = str(resolve_audio_source(payload[name], folder))
            except InputError as error:
                self.store.finish(job.id, FAILED, error=str(error), error_kind="input")
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self.store.fetched(job.id, payload)
            current = self.store.get(job.id)
            if current is None or current.state != QUEUED:  # cancelled while it downloaded
                shutil.rmtree(folder, ignore_errors=True)
            self._wake.set()

    def _work(self) -> None:
        swept = time.monotonic()
        while not self._closing.is_set():
            if time.monotonic() - swept > SWEEP_S:
                self._sweep()
                swept = time.monotonic()
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(IDLE_S)
                self._wake.clear()
                continue
            try:
                self._run_on_gpu(job)
            finally:
                shutil.rmtree(self.sources_dir / job.id, ignore_errors=True)

    def _run(self, job: Job) -> None:
        stop = threading.Event()
        with self._stops_lock:
            self._stops[job.id] = stop
            if job.id in self._stop_early:
                self._stop_early.discard(job.id)
                stop.set()
        phase = [tasks.DIFFUSION]

        def on_step(step: int, total: int) -> None:
            self.progress[job.id] = Progress(phase[0], step, total)

        def on_phase(name: str) -> None:
            phase[0] = name

        try:
            # A place in the model's line taken now: one REST job waits there at a time, so a UI
            # job sent meanwhile waits behind one API job, not behind the whole REST queue.
            result = tasks.run(job.task, job.payload, self.manager, job.model, on_step=on_step,
                               owner=f"rest:{job.id}", stop=stop, number=self.manager.slot.number(),
                               on_phase=on_phase)
            path = tasks.save_result(result, self.results_dir / job.id, job.format)
            params = dict(result.params)
            params["request"] = {**params["request"],  # the sources as sent, not our copies
                                 **{ALIASES.get(name, name): value
                                    for name, value in job.sent.items() if name in SOURCE_PARAMS}}
            self.store.finish(job.id, COMPLETED,
                              result={"file": path.name, "seed": result.seed, "params": params})
        except Cancelled as error:
            self.store.finish(job.id, CANCELLED, error=str(error), error_kind="cancelled")
        except InputError as error:
            self.store.finish(job.id, FAILED, error=str(error), error_kind="input")
        except ModelUnavailableError as error:
            self.store.finish(job.id, FAILED, error=str(error), error_kind="unavailable")
        except Exception as error:  # a bug, not bad input: logged with its traceback
            logger.exception("REST job %s failed", job.id)
            self.store.finish(job.id, FAILED, error=f"{job.task} failed unexpectedly "
                              f"({type(error).__name__}: {error}); the server log has the details",
                              error_kind="internal")
        finally:
            with self._stops_lock:
                self._stops.pop(job.id, None)
            self.progress.pop(job.id, None)

    def _sweep(self) -> None:
        """Delete finished jobs past their retention, with their files."""
        for job in self.store.expired(time.time() - self.retention_s):
            shutil.rmtree(self.results_dir / job.id, ignore_errors=True)
            shutil.rmtree(self.sources_dir / job.id, ignore_errors=True)
            self.store.delete(job.id)

    # -- what the routes show ---------------------------------------------------------------------

    def result_file(self, job: Job) -> Path:
        assert job.result is not None
        return self.results_dir / job.id / job.result["file"]

    def audio_url(self, request: Request, job: Job) -> str:
        assert job.result is not None
        return f"{_base(request)}{RESULTS_ROUTE}/{job.id}/{job.result['file']}"

    def output(self, request: Request, job: Job) -> dict[str, Any]:
        """The hosted output of a completed job (fal's shape)."""
        assert job.result is not None
        return fal_output(self.result_file(job), self.audio_url(request, job), job.result["seed"],
                          job.result["params"])

    def routes(self) -> list[BaseRoute]:
        router = APIRouter()
        _runcomfy_routes(router, self)
        _fal_routes(router, self)
        _wavespeed_routes(router, self)

        @router.get(f"/{RESULTS_ROUTE}/{{job_id}}/{{file_name}}", include_in_schema=False)
        def result_audio(job_id: str, file_name: str) -> Any:
            """A result's audio: public by its unguessable request id, as the hosted CDNs'."""
            job = self.store.get(job_id)
            if job is None or job.state != COMPLETED or job.result is None \
                    or job.result["file"] != file_name or not self.result_file(job).is_file():
                return JSONResponse({"detail": f"no result {job_id}/{file_name} here"}, 404)
            path = self.result_file(job)
            return FileResponse(path, media_type=content_type(path), filename=path.name)

        return list(router.routes)


# -- RunComfy ---------------------------------------------------------------------------------------

RUNCOMFY_STATES = {QUEUED: "in_queue", RUNNING: "in_progress", COMPLETED: "completed",
                   CANCELLED: "cancelled", FAILED: "failed"}


def _runcomfy_routes(router: APIRouter, rest: RestQueue) -> None:
    def refused(error: ApiError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, error.status)

    def urls(request: Request, job: Job) -> dict[str, str]:
        base = f"{_base(request)}v1/requests/{job.id}"
        return {"status_url": f"{base}/status", "result_url": f"{base}/result",
                "cancel_url": f"{base}/cancel"}

    def state(request: Request, job: Job) -> dict[str, Any]:
        shown: dict[str, Any] = {"request_id": job.id, "status": RUNCOMFY_STATES[job.state],
                                 **urls(request, job), "created_at": _iso(job.created_at)}
        shown.update(_common_state(rest, job))
        return shown

    @router.post("/v1/models/{model_id:path}", include_in_schema=False)
    @answering(refused)
    async def submit(model_id: str, request: Request) -> JSONResponse:
        job = await rest.submit(request, "runcomfy", model_id)
        return JSONResponse({"request_id": job.id, **urls(request, job)})

    @router.get("/v1/requests/{job_id}/status", include_in_schema=False)
    @answering(refused)
    def status(job_id: str, request: Request) -> JSONResponse:
        return JSONResponse(state(request, rest.job_of(request, job_id)))

    @router.get("/v1/requests/{job_id}/result", include_in_schema=False)
    @answering(refused)
    def result(job_id: str, request: Request) -> JSONResponse:
        job = rest.job_of(request, job_id)
        shown = state(request, job)
        if job.state == COMPLETED:
            output = rest.output(request, job)
            shown["output"] = {**output, "audio": output["audio"]["url"], "audio_file": output["audio"]}
        return JSONResponse(shown)

    @router.post("/v1/requests/{job_id}/cancel", include_in_schema=False)
    @answering(refused)
    def cancel(job_id: str, request: Request) -> JSONResponse:
        job = rest.job_of(request, job_id)
        outcome = rest.cancel(job)
        if outcome == "cancelled":
            return JSONResponse({"request_id": job.id, "status": "cancelled"})
        if outcome == "stopping":
            return JSONResponse({"request_id": job.id, "status": "in_progress",
                                 "detail": "the job stops at its next step"}, 202)
        ended = rest.store.get(job.id) or job
        return JSONResponse({"detail": f"request {job.id} has already ended "
                                       f"({RUNCOMFY_STATES[ended.state]})"}, 409)


# -- fal --------------------------------------------------------------------------------------------

def _fal_routes(router: APIRouter, rest: RestQueue) -> None:
    def refused(error: ApiError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, error.status)

    def urls(request: Request, app: str, job: Job) -> dict[str, str]:
        base = f"{_base(request)}fal-ai/{app}/requests/{job.id}"  # the app, without the endpoint
        return {"response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    @router.post("/fal-ai/{model_path:path}", include_in_schema=False)
    @answering(refused)
    async def submit(model_path: str, request: Request) -> JSONResponse:
        job = await rest.submit(request, "fal", f"fal-ai/{model_path}")
        app = model_path.strip("/").split("/")[0]
        return JSONResponse({"request_id": job.id, **urls(request, app, job),
                             "queue_position": rest.store.position(job)})

    @router.get("/fal-ai/{app_path:path}/requests/{job_id}/status", include_in_schema=False)
    @answering(refused)
    def status(app_path: str, job_id: str, request: Request) -> JSONResponse:
        job = rest.job_of(request, job_id)
        app = app_path.strip("/").split("/")[0]
        shown: dict[str, Any] = {"status": FAL_STATES.get(job.state, "COMPLETED"),
                                 "request_id": job.id, **urls(request, app, job)}
        common = _common_state(rest, job)
        if job.state == QUEUED:
            shown["queue_position"] = common["queue_position"]
        if request.query_params.get("logs") in ("1", "true"):
            shown["logs"] = _fal_logs(job, common)
        if job.finished:
            shown["metrics"] = {"inference_time": _seconds(job)}
            if job.state != COMPLETED:
                shown["error"] = job.error
                shown["error_type"] = "cancelled" if job.state == CANCELLED else job.error_kind
        return JSONResponse(shown, 200 if job.finished else 202)

    @router.get("/fal-ai/{app_path:path}/requests/{job_id}", include_in_schema=False)
    @answering(refused)
    def response(app_path: str, job_id: str, request: Request) -> JSONResponse:
        job = rest.job_of(request, job_id)
        if job.state == COMPLETED:
            return JSONResponse(rest.output(request, job))
        if not job.finished:
            return JSONResponse({"detail": "Request is still in progress"}, 400)
        status = {"input": 422, "cancelled": 400}.get(job.error_kind, 500)
        return JSONResponse({"detail": job.error, "error_type": job.error_kind}, status)

    @router.put("/fal-ai/{app_path:path}/requests/{job_id}/cancel", include_in_schema=False)
    @answering(refused)
    def cancel(app_path: str, job_id: str, request: Request) -> JSONResponse:
        try:
            job = rest.job_of(request, job_id)
        except ApiError as error:
            if error.status != 404:
                raise
            return JSONResponse({"status": "NOT_FOUND", "detail": error.message}, 404)
        if rest.cancel(job) != "ended":
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, 400)


def _fal_logs(job: Job, common: dict[str, Any]) -> list[dict[str, Any]]:
    progress = common.get("progress")
    if not progress:
        return []
    return [{"message": f"{progress['phase']} {progress['step']}/{progress['total']}",
             "level": "INFO", "source": "ace-step-playground", "timestamp": _iso(time.time())}]


# -- WaveSpeed --------------------------------------------------------------------------------------

def _wavespeed_routes(router: APIRouter, rest: RestQueue) -> None:
    def refused(error: ApiError) -> JSONResponse:
        return JSONResponse({"code": error.status, "message": error.message, "data": None},
                            error.status)

    def prediction(request: Request, job: Job) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": job.id, "model": job.model_id,
            "outputs": [], "urls": {"get": f"{_base(request)}api/v3/predictions/{job.id}/result"},
            "has_nsfw_contents": [], "status": WAVESPEED_STATES.get(job.state, "failed"),
            "created_at": _iso(job.created_at), "error": job.error,
            "timings": {"inference": round(_seconds(job) * 1000)},
        }
        data.update({key: value for key, value in _common_state(rest, job).items()
                     if key in ("queue_position", "progress")})
        if job.state == COMPLETED:
            output = rest.output(request, job)
            data.update(outputs=[output["audio"]["url"]], has_nsfw_contents=[False],
                        seed=output["seed"], params=output["params"])
        return {"code": 200, "message": "success", "data": data}

    @router.post("/api/v3/{model_id:path}", include_in_schema=False)
    @answering(refused)
    async def submit(model_id: str, request: Request) -> JSONResponse:
        job = await rest.submit(request, "wavespeed", model_id)
        return JSONResponse(prediction(request, job))

    @router.get("/api/v3/predictions/{job_id}/result", include_in_schema=False)
    @router.get("/api/v3/predictions/{job_id}", include_in_schema=False)
    @answering(refused)
    def result(job_id: str, request: Request) -> JSONResponse:
        return JSONResponse(prediction(request, rest.job_of(request, job_id)))


# -- shared -----------------------------------------------------------------------------------------

def answering(refused: Callable[[ApiError], JSONResponse]) -> Callable[[Handler], Handler]:
    """A route handler whose `ApiError`s come back as `refused(error)`, the service's own shape."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)  # FastAPI reads the parameters through __wrapped__
        async def answer(*args: Any, **kwargs: Any) -> Any:
            try:
                result = handler(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result
            except ApiError as error:
                return refused(error)

        return answer

    return wrap


def _common_state(rest: RestQueue, job: Job) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    if job.state == QUEUED:
        shown["queue_position"] = rest.store.position(job)
    elif job.state == RUNNING:
        progress = rest.progress.get(job.id)
        if progress is not None:
            shown["progress"] = {"phase": progress.phase, "step": progress.step,
                                 "total": progress.total}
    if job.finished:
        shown["finished_at"] = _iso(job.finished_at or job.created_at)
    if job.state in (FAILED, CANCELLED):
        shown["error"] = job.error
    return shown


async def _json_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, _too_large())
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, _too_large())
    try:
        parsed = json.loads(bytes(body)) if body.strip() else None
    except ValueError as error:
        raise ApiError(422, f"the body is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise ApiError(422, "the body must be a JSON object of the model's input parameters, such "
                            "as {\"tags\": \"lofi, chill\"}")
    return parsed


def _too_large() -> str:
    return (f"the request body is larger than {MAX_BODY_BYTES // 1_000_000} MB; give the audio as "
            f"an https:// URL rather than a data: URI")


def _owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and "://" in value[:16]


def _shown_source(value: Any) -> Any:
    """A source as the result's params show it: a data: URI by its type and size only."""
    if isinstance(value, str) and value.strip()[:5].lower() == "data:":
        header = value.strip().partition(",")[0]
        return f"{header},… ({len(value)} characters)"
    return value


def _base(request: Request) -> str:
    """The server's address as the caller reached it, ending in a slash."""
    base = str(request.base_url)
    return base if base.endswith("/") else base + "/"


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + \
        f".{int(timestamp % 1 * 1000):03d}Z"


def _seconds(job: Job) -> float:
    if job.started_at is None:
        return 0.0
    return max(0.0, (job.finished_at or time.time()) - job.started_at)
