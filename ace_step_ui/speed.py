"""How an engine runs fast: compiled blocks, where its parts live, and bfloat16 on the CPU.

- `compile`: the DiT's blocks (v1) or transformer (1.5) go through `torch.compile`; the first song
  of each length pays the compilation (tens of seconds), every later step is faster. Off unless asked.
- memory modes: `resident` keeps every part on the device; `offload` keeps the DiT there and the
  text encoder, autoencoder and vocoder in CPU memory, lent to the device for their stage of each
  song; `sequential` also keeps the DiT's blocks in CPU memory and streams them to the device one
  at a time at each DiT call (a GPU smaller than the DiT; each call copies the blocks' weights);
  `auto` is resident where the weights fit the device's free memory with the run's reserve,
  offload where the DiT does, sequential where not even that.
- CPU threads: one per core this process may use (its CPU affinity and its cgroup's CPU quota,
  as in a container or a Space), where torch would count the host's cores; OMP_NUM_THREADS wins.
  The app runs every job's model work on one thread of its own (`ComputeThread`).
- bfloat16 on the CPU: the full-size DiT about 1.7x faster from 30 s songs up where the CPU has
  bfloat16 matrix units (AVX512-BF16, AMX; no gain on 10 s clips), at about 1.4 % relative
  difference in its output (bench/bfloat16.py); float32 stays the default (the parity suite's
  precision), and start-up says when `--dtype bfloat16` would pay.
"""

from __future__ import annotations

from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import contextvars
import itertools
import math
import os
import queue
import threading

import torch
from torch import nn

from . import memory
from .errors import InputError

MEMORY_MODES = ("auto", "resident", "offload", "sequential")
T = TypeVar("T")


@dataclass(frozen=True)
class Speed:
    """The speed options of `app.py`/the CLI: `--compile`, `--memory MODE`."""

    compile: bool = False
    memory: str = "auto"

    def __post_init__(self) -> None:
        if self.memory not in MEMORY_MODES:
            raise InputError(f"unknown memory mode '{self.memory}'; use {', '.join(MEMORY_MODES)}")


def memory_mode(asked: str, device: torch.device, need_bytes: int, free: int,
                dit_bytes: int | None = None) -> str:
    """`resident`, `offload` or `sequential`: as asked, or for `auto` resident where `need_bytes`
    of weights fit in `free` bytes of the device with the run's reserve (the CPU is always
    resident), offload where the DiT's `dit_bytes` do (or they are not known), else sequential."""
    if asked != "auto":
        return asked
    if device.type == "cpu" or memory.fits(need_bytes, free):
        return "resident"
    if dit_bytes is None or memory.fits(dit_bytes, free):
        return "offload"
    return "sequential"


def checkpoint_mode(asked: str, folder: Path, device: torch.device, dtype: torch.dtype,
                    dit_folder: str | None = None, skip: Callable[[str], bool] | None = None) -> str:
    """`memory_mode` for the checkpoint at `folder` (its DiT in `dit_folder`) on `device` now;
    `skip` names the stored tensors that loading leaves out."""
    if asked != "auto":
        return asked
    dit_bytes = memory.weights_bytes(folder / dit_folder, dtype, skip) if dit_folder else None
    return memory_mode(asked, device, memory.weights_bytes(folder, dtype, skip),
                       memory.free_bytes(device), dit_bytes)


@contextmanager
def lent(modules: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """The modules on `device` for the block, then back where each was (offload mode). Modules
    already there are not moved."""
    homes = [next(module.parameters()).device for module in modules]
    moved = [module for module, home in zip(modules, homes) if home != device]
    for module in moved:
        module.to(device)
    try:
        yield
    finally:
        for module, home in zip(modules, homes):
            if module in moved:
                module.to(home)


@contextmanager
def streamed(module: torch.nn.Module, device: torch.device,
             skip: Iterable[torch.nn.Module] = ()) -> Iterator[None]:
    """The module's weights copied to `device` for the block (sequential mode), from where they
    live; afterwards the module holds those home tensors again and the device copies are freed.
    Nothing is copied back: inference does not change weights. Tensors already there stay, and so
    do those of the submodules in `skip` (parts the block will not run)."""
    skipped = {id(part) for submodule in skip for part in submodule.modules()}
    homes = []  # (the dict a tensor is registered in, its name, the home tensor)
    for part in module.modules():
        if id(part) in skipped:
            continue
        for store in (part._parameters, part._buffers):
            for name, tensor in store.items():
                if tensor is not None and tensor.device != device:
                    homes.append((store, name, tensor))
                    copy = tensor.detach().to(device, non_blocking=True)
                    store[name] = (nn.Parameter(copy, requires_grad=tensor.requires_grad)
                                   if isinstance(tensor, nn.Parameter) else copy)
    try:
        yield
    finally:
        for store, name, home in homes:
            store[name] = home


def pinned(module: torch.nn.Module) -> None:
    """The module's CPU weights in page-locked memory, so that copies to a GPU run asynchronously
    and at full speed (sequential mode); only where CUDA is there to pin them."""
    if not torch.cuda.is_available():
        return
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.pin_memory()


def compile_blocks(blocks: torch.nn.ModuleList, backend: str = "inductor") -> None:
    """Compile each block in place; the blocks share their code, so the graph is made once per
    input shape and reused by every block."""
    for block in blocks:
        block.compile(backend=backend, dynamic=None)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def set_cpu_threads(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Set torch's CPU threads to `usable_cores` unless OMP_NUM_THREADS says otherwise; returns
    the count in force."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(usable_cores(cgroup_cpu_max))
    return torch.get_num_threads()


class ComputeThread:
    """One long-lived thread that runs the work handed to it (`run`), one piece at a time.

    torch runs its CPU ops on an OpenMP team of threads, one team per thread that calls it, and a
    team stays while its caller lives. Once the teams' threads outnumber the cores, libgomp stops
    letting idle ones spin, so every op then waits for its team to be woken: with the team of a
    finished job still alive in another thread, small ops took 3.7x as long and a tiny 30 s song
    1.4x (bench/job_threads.py). The app's jobs come from many threads (Gradio's workers, the REST
    worker); run on this one, they share one team. It is a daemon thread (a job cut off by the
    app's exit is lost, as before), and a forked child (ZeroGPU's workers) starts its own.
    """

    def __init__(self, name: str = "ace-step-compute") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue | None = None
        self._pid: int | None = None
        self._ident: int | None = None

    def run(self, work: Callable[[], T]) -> T:
        """`work()` on the thread (here, when called from it), its result or its exception. It
        runs in a copy of the caller's context variables (Gradio finds a job's progress bar in
        one)."""
        if threading.get_ident() == self._ident and os.getpid() == self._pid:
            return work()
        done: Future = Future()
        self._queue().put((partial(contextvars.copy_context().run, work), done))
        return done.result()

    def _queue(self) -> queue.SimpleQueue:
        with self._lock:
            if self._work is None or self._pid != os.getpid():  # a fork copies no threads
                self._work, self._pid = queue.SimpleQueue(), os.getpid()
                thread = threading.Thread(target=self._serve, args=(self._work,), name=self.name,
                                          daemon=True)
                thread.start()
                self._ident = thread.ident
            return self._work

    @staticmethod
    def _serve(work: queue.SimpleQueue) -> None:
        while True:
            job, done = work.get()
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(job())
                except BaseException as error:  # the caller gets it, as if it had run the job
                    done.set_exception(error)


def cpu_has_bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX)."""
    flags = _cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bfloat16_hint(device: torch.device, dtype: torch.dtype) -> str:
    """A start-up line for a float32 run on a CPU that would run bfloat16 about twice as fast."""
    if device.type == "cpu" and dtype == torch.float32 and cpu_has_bfloat16_units():
        return ("this CPU has bfloat16 matrix units: --dtype bfloat16 runs songs of 30 s and more "
                "about 1.7x faster (about 1.4 % difference in the DiT's output; float32 is the "
                "reference precision)")
    return ""


def add_arguments(parser) -> None:
    """`--compile` and `--memory`, the same on `app.py` and the CLI."""
    parser.add_argument("--compile", action="store_true",
                        help="compile the DiT with torch.compile: the first song of each length "
                             "waits for the compiler, later steps run faster (GPU)")
    parser.add_argument("--memory", default="auto", choices=MEMORY_MODES,
                        help="resident: every part of the model on the device; offload: the text "
                             "encoder and autoencoder wait in CPU memory; sequential: the DiT's "
                             "blocks too, streamed to the device one at a time (a GPU smaller than "
                             "the DiT); auto (default): resident where it fits in the device's "
                             "free memory, else offload, else sequential")


def from_arguments(args) -> Speed:
    return Speed(compile=args.compile, memory=args.memory)
