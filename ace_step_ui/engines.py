"""The one interface every model family implements, and the registry that picks and holds one.

An engine turns a validated request into audio. It is built from a checkpoint folder (a local
folder, or a Hub snapshot that the family's `resolve` downloads), declares which request parameters
it honours, and reports progress per diffusion step. `EngineManager` keeps one model resident at a
time and serialises GPU work behind one lock.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

import torch

from . import memory
from .audio import Audio
from .errors import Cancelled, InputError, ModelUnavailableError
from .speed import ComputeThread, Speed
from .requests import (CoverRequest, EditRequest, GenerateRequest, InpaintRequest,
                       OutpaintRequest, Request)

T = TypeVar("T")
DEFAULT_MODEL = "ACE-Step/ACE-Step-v1-3.5B"
V15_MODEL = "ACE-Step/acestep-v15-xl-turbo-diffusers"  # named where a task needs ACE-Step 1.5
# Name -> (Hub repo, folder inside it). Any other name is a local folder or a Hub repo id.
HUB_PLANNERS = {
    "acestep-5Hz-lm-0.6B": ("ACE-Step/acestep-5Hz-lm-0.6B", None),
    "acestep-5Hz-lm-1.7B": ("ACE-Step/Ace-Step1.5", "acestep-5Hz-lm-1.7B"),
    "acestep-5Hz-lm-4B": ("ACE-Step/acestep-5Hz-lm-4B", None),
}
DEFAULT_PLANNER = "acestep-5Hz-lm-1.7B"  # upstream's DEFAULT_LM_MODEL (v15/planner.py)
# The model families in order of preference: the first is the default for an unknown Hub id.
FAMILY_MODULES = (f"{__package__}.v1.engine", f"{__package__}.v15.engine")

DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d{1,3})?")
# step (1-based), total steps
StepCallback = Callable[[int, int], None]


@dataclass
class EngineOutput:
    """What an engine returns: the audio and the values it actually ran with."""

    audio: Audio
    effective: dict[str, Any] = field(default_factory=dict)
    # The final diffusion latents (batch, channels, height, frames), when the engine has them.
    latents: torch.Tensor | None = None
    # Parameters the engine honours for the task but did not use on this run (e.g. a retake seed
    # when nothing was retaken); they are reported as ignored.
    unused: frozenset[str] = frozenset()
    # `extend` only: the seconds of new audio the output starts and ends with.
    extension_s: tuple[float, float] = (0.0, 0.0)


class Engine(Protocol):
    model_id: str
    sample_rate: int

    def honoured(self, task: str) -> frozenset[str]:
        """Request parameters this engine applies for `task`; set ones outside it are ignored."""

    def generate(self, request: GenerateRequest, seed: int, retake_seed: int,
                 on_step: StepCallback, reference: Audio | None = None) -> EngineOutput:
        """A song from `request`; with `reference`, audio-to-audio from that track. A family that
        honours `thinking` (ACE-Step 1.5) also takes `audio_codes=`, the planner's codes."""

    def repaint(self, request: InpaintRequest, window: Audio, start_s: float, end_s: float,
                seed: int, retake_seed: int, on_step: StepCallback) -> EngineOutput:
        """`window`, a stretch of the source, re-rendered with [start_s, end_s) of it made anew
        (edits.py cuts the window and splices the result into the original)."""

    extends_both_sides: bool  # whether one `extend` call can add audio before and after

    def extend(self, request: OutpaintRequest, context: Audio, before_s: float, after_s: float,
               seed: int, retake_seed: int, on_step: StepCallback) -> EngineOutput:
        """[new][`context` re-rendered][new]: up to `before_s` / `after_s` of new audio, the
        seconds actually made in `extension_s` (edits.py fits them to the request)."""

    def edit(self, request: EditRequest, source: Audio, seed: int, retake_seed: int,
             on_step: StepCallback) -> EngineOutput:
        """`source` re-rendered from its original tags and lyrics towards the request's."""

    def cover(self, request: CoverRequest, source: Audio, seed: int, retake_seed: int,
              on_step: StepCallback) -> EngineOutput:
        """`source`'s structure sung anew from the request's tags and lyrics (ACE-Step 1.5)."""

    # extract, lego and complete (ACE-Step 1.5 base) take the same arguments as cover; a family
    # without them refuses them in its check_request.


def accept_any(model: str, request: Request) -> None:
    """A family's request check that accepts every request."""


@dataclass(frozen=True)
class Family:
    """A model family: how to recognise, fetch and load its checkpoints, and what it honours."""

    name: str
    hub_ids: tuple[str, ...]
    is_checkpoint: Callable[[Path], bool]
    # model id or folder -> a complete local checkpoint folder (downloading it if needed)
    resolve: Callable[[str], Path]
    # (checkpoint folder, model id, device, dtype, speed options) -> Engine
    load: Callable[[Path, str, str, str, Speed], Engine]
    # (model id or folder, task) -> the request parameters it applies, told without loading it
    honoured: Callable[[str, str], frozenset[str]]
    # (model id or folder, request) -> None, or InputError for a request the family cannot run at
    # all (a task it lacks); called before any audio is read or any model is loaded
    check_request: Callable[[str, Request], None] = accept_any
    # whether its engines return the final diffusion latents (EngineOutput.latents)
    returns_latents: bool = True
    # (model id or folder, task) -> the values it runs unset parameters with, where they differ
    # from the hosted defaults (a 1.5 turbo model's 8 steps), told without loading it
    presets: Callable[[str, str], dict[str, Any]] = lambda model, task: {}


_FAMILIES: list[Family] = []
_imported = False


def register(family: Family) -> None:
    _FAMILIES.append(family)


def families() -> list[Family]:
    """The registered families, the default (ACE-Step v1) first."""
    global _imported
    if not _imported:
        for module in FAMILY_MODULES:
            importlib.import_module(module)  # registers itself
        _imported = True
    # Import order varies (a caller may import one family's module first): sort by preference.
    return sorted(_FAMILIES, key=_preference)


def _preference(family: Family) -> int:
    module = getattr(family.load, "__module__", "")
    return FAMILY_MODULES.index(module) if module in FAMILY_MODULES else len(FAMILY_MODULES)


def known_models() -> list[str]:
    return [hub_id for family in families() for hub_id in family.hub_ids]


def family_for(model: str) -> Family:
    """The family that loads `model`: a Hub id, a local checkpoint folder or a Hub-cache folder."""
    folder = Path(model).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"model '{model}' is a file; pass a checkpoint folder or a Hub model id")
        for family in families():
            if family.is_checkpoint(folder):
                return family
        raise ModelUnavailableError(
            f"the folder '{model}' is not a checkpoint this app can load: expected ACE-Step v1's "
            f"official layout (folders ace_step_transformer/, music_dcae_f8c8/, music_vocoder/ and "
            f"umt5-base/) or a diffusers ACE-Step 1.5 folder (model_index.json naming "
            f"AceStepPipeline)")
    for family in families():
        if model in family.hub_ids:
            return family
    if model.count("/") == 1 and not model.startswith(("/", ".", "~")):
        return closest_family(model)
    raise InputError(f"model '{model}' is neither a folder on this machine nor a Hub id like "
                     f"'{DEFAULT_MODEL}'; known models: {', '.join(known_models())}")


def closest_family(hub_id: str) -> Family:
    """The family of an unknown Hub id: the one whose repo names share the longest start with its
    name (ignoring case and punctuation), so `me/acestep-v15-finetune` goes to 1.5; ties (and no
    likeness at all) go to the default family."""
    name = _letters(hub_id.split("/")[-1])

    def likeness(family: Family) -> int:
        return max((len(os.path.commonprefix([name, _letters(known.split("/")[-1])]))
                    for known in family.hub_ids), default=0)

    return max(families(), key=likeness)  # max keeps the first of equals: the default


def _letters(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def pick_device(device: str) -> torch.device:
    """The torch device `device` names (auto: CUDA, else MPS, else CPU); InputError for one this
    machine does not have, rather than torch's traceback when the model loads."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise InputError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError(f"device '{device}' was asked for but no CUDA GPU is available; "
                             f"use cpu")
        if chosen.index is not None and chosen.index >= count:
            raise InputError(f"device '{device}': this machine has {count} CUDA GPU(s), cuda:0 "
                             f"to cuda:{count - 1}")
    if chosen.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise InputError(f"device '{device}': no Apple GPU is available here; use cpu")
    return chosen


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 on CPU; bfloat16 on CUDA (float16 where bfloat16 is unsupported); or as asked."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _free_cached() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class GpuSlot:
    """One job at a time on the model, in the order the jobs were submitted (`number`); a job
    waiting for the slot leaves the line as soon as its stop event is set, so a cancelled job never
    holds it, and a job still reading its source lets the ready ones behind it go first."""

    POLL_S = 0.1  # how often a waiting job looks at its stop event

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._line: list[int] = []
        self._busy = False
        self._numbers = itertools.count()

    def number(self) -> int:
        """A place in line, taken when a job is submitted."""
        return next(self._numbers)

    def waiting(self) -> int:
        """How many jobs wait for the slot."""
        with self._changed:
            return len(self._line)

    @property
    def busy(self) -> bool:
        return self._busy

    @contextmanager
    def hold(self, stop: threading.Event, on_wait: Callable[[int], None] | None = None,
             number: int | None = None) -> Iterator[None]:
        """Wait for the slot (reporting how many jobs are ahead), hold it for the block."""
        mine = self.number() if number is None else number
        with self._changed:
            self._line.append(mine)
            try:
                while self._busy or min(self._line) != mine:
                    if stop.is_set():
                        raise Cancelled("stopped by the user before it started")
                    if on_wait is not None:
                        on_wait(sum(other < mine for other in self._line) + int(self._busy))
                    self._changed.wait(self.POLL_S)
            finally:
                self._line.remove(mine)
                self._changed.notify_all()
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()


class EngineManager:
    """Holds at most one loaded engine (and the planner, ACE-Step 1.5's 5 Hz LM, when a job needs
    it) and runs one job at a time on them.

    The engine and the planner share the device's memory (memory.py): when the one about to run
    does not fit beside the other, the planner moves to the CPU (and back when it plans again) and
    the engine is unloaded (and loaded again on its next job); on the CPU itself the other one is
    unloaded. `moves` lists what the current job moved, for the result's params.

    Jobs belong to an owner (a browser session, an API client); `cancel(owner)` stops all of that
    owner's jobs at their next diffusion step, or before they start if they are still waiting for
    the slot. Reading sources happens outside the slot, so a slow download never holds it.

    With `own_thread` (the app) the model work of every job runs on one thread of the manager's
    (`speed.ComputeThread`), whichever thread the job came from; without (the CLI, which runs its
    one job on its main thread) where it is called.
    """

    def __init__(self, device: str = "auto", dtype: str = "auto", planner: str = "",
                 free_memory: Callable[[torch.device], int] = memory.free_bytes,
                 speed: Speed = Speed(), own_thread: bool = False):
        self.device = device
        self.dtype = dtype
        self.speed = speed
        self.planner_model = planner or DEFAULT_PLANNER
        self.free_memory = free_memory
        self.slot = GpuSlot()
        self.moves: list[str] = []
        self._engine: Engine | None = None
        self._engine_key: tuple[str, str, str] | None = None
        self._planner: Any = None
        self._planner_key: tuple[str, str, str] | None = None
        self._stops: dict[str, set[threading.Event]] = {}
        self._stops_lock = threading.Lock()
        self._compute = ComputeThread() if own_thread else None

    def run(self, work: Callable[[], T]) -> T:
        """`work()` on the manager's own thread where it has one, else here."""
        return work() if self._compute is None else self._compute.run(work)

    def get(self, model: str) -> Engine:
        """The engine for `model`, loading it (and unloading the previous one) on first use."""
        key = (model, self.device, self.dtype)
        if self._engine_key != key:
            family = family_for(model)
            # Find (or download) the new checkpoint first: a typo or an offline Hub id must not
            # cost the model that is already loaded.
            folder = family.resolve(model)
            self.unload()
            self._make_room(memory.weights_bytes(folder, self._torch_dtype()), for_planner=False)
            self._engine = family.load(folder, model, self.device, self.dtype, self.speed)
            self._engine_key = key
        else:
            self._make_room(0, for_planner=False)
        assert self._engine is not None
        return self._engine

    def planner(self) -> Any:
        """The 5 Hz LM `planner_model` (a `v15.planner.Planner`) on the device, loaded on first
        use, or brought back from the CPU."""
        from .v15.planner import Planner, PlannerConfig, resolve_planner

        key = (self.planner_model, self.device, self.dtype)
        if self._planner_key != key:
            folder = resolve_planner(self.planner_model)  # a bad name costs nothing loaded
            self.unload_planner()
            self._make_room(memory.weights_bytes(folder, self._torch_dtype()), for_planner=True)
            self._planner = Planner.load(PlannerConfig(model=str(folder)), self.device, self.dtype)
            self._planner_key = key
        elif self._planner.device != pick_device(self.device):
            self._make_room(self._planner.weights_bytes(), for_planner=True)
            self._planner.to(pick_device(self.device))
            self.moves.append("planner back on the device")
        else:
            self._make_room(0, for_planner=True)
        return self._planner

    def _make_room(self, need_bytes: int, for_planner: bool) -> None:
        """Move the other model out of the way when `need_bytes` more do not fit on the device."""
        other = self._engine if for_planner else self._planner
        device = pick_device(self.device)
        if other is None or memory.fits(need_bytes, self.free_memory(device)):
            return
        if for_planner:
            self.unload()
            self.moves.append("unloaded the DiT for the planner")
        elif device.type != "cpu" and self._planner.device.type != "cpu":
            self._planner.to(torch.device("cpu"))
            self.moves.append("planner offloaded to the CPU")
            _free_cached()
        elif device.type == "cpu":
            self.unload_planner()
            self.moves.append("unloaded the planner for the DiT")

    def _torch_dtype(self) -> torch.dtype:
        return pick_dtype(self.dtype, pick_device(self.device))

    def unload(self) -> None:
        """Unload the engine."""
        self._engine = None
        self._engine_key = None
        _free_cached()

    def unload_planner(self) -> None:
        self._planner = None
        self._planner_key = None
        _free_cached()

    @contextmanager
    def job(self, owner: str = "", stop: threading.Event | None = None
            ) -> Iterator[threading.Event]:
        """Register a job of `owner` for its duration; the event (`stop`, or a new one) is set
        when it should stop."""
        stop = stop or threading.Event()
        with self._stops_lock:
            self._stops.setdefault(owner, set()).add(stop)
        try:
            yield stop
        finally:
            with self._stops_lock:
                jobs = self._stops.get(owner, set())
                jobs.discard(stop)
                if not jobs:
                    self._stops.pop(owner, None)

    def cancel(self, owner: str = "") -> bool:
        """Stop `owner`'s waiting and running jobs; False when it has none."""
        with self._stops_lock:
            jobs = list(self._stops.get(owner, ()))
        for stop in jobs:
            stop.set()
        return bool(jobs)

    @staticmethod
    def step_callback(report: StepCallback | None, stop: threading.Event) -> StepCallback:
        """A per-step callback that reports progress and raises `Cancelled` once `stop` is set."""

        def on_step(step: int, total: int) -> None:
            if report is not None:
                report(step, total)
            if stop.is_set():
                raise Cancelled(f"stopped by the user after step {step} of {total}")

        return on_step
