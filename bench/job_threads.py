"""How long the app's jobs take on a CPU, by the thread their model work runs on.

    python bench/job_threads.py [--seconds 30] [--steps 27] [--jobs 3] [--rounds 2] [--work DIR]

The app's jobs arrive on different threads: Gradio runs each on one of its worker threads, the
REST queue on its own worker. torch's CPU ops run on an OpenMP team per calling thread, kept while
that thread lives; with two teams alive their threads outnumber the cores and libgomp lets no idle
thread spin, so each op waits for its team to be woken. This runs the same tiny ACE-Step v1 song
(`tasks.run`, then `tasks.save_result`, as the app does) in three ways, each in a fresh process:

- `main`: every job on the main thread (the CLI's way; one team);
- `callers`: jobs alternating between two long-lived caller threads, each running its own job
  (the app before `EngineManager(own_thread=True)`);
- `own thread`: the same callers, the model work on the manager's one thread (the app now).

Each round runs every way once (in turn, the order reversed every other round, against the host's
drift); it prints each way's per-job wall seconds (each process's first job, which loads the
model, aside) and their medians as ratios of `main`'s. The lyric vocabulary is the machine's, as in bench/speed.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

WAYS = ("main", "callers", "own thread")


def run_jobs(way: str, folder: Path, seconds: float, steps: int, jobs: int, out: Path) -> list[float]:
    """Per job (the loading one first) its wall seconds, run `way`."""
    from ace_step_ui import speed, tasks
    from ace_step_ui.engines import EngineManager

    speed.set_cpu_threads()
    manager = EngineManager(device="cpu", dtype="float32", own_thread=way == "own thread")
    payload = {"tags": "lofi hip hop, mellow rhodes, 80 bpm", "lyrics": "[verse]\nhum a song",
               "duration": seconds, "number_of_steps": steps}

    def job(index: int) -> float:
        started = time.perf_counter()
        result = tasks.run("generate", {**payload, "seed": index}, manager, str(folder))
        tasks.save_result(result, out, "wav")
        return time.perf_counter() - started

    if way == "main":
        return [job(index) for index in range(jobs + 1)]
    # Two callers that live on between their jobs, as Gradio's and the REST queue's workers do.
    work: list[tuple[int, threading.Event]] = []
    walls: dict[int, float] = {}
    ready = [threading.Semaphore(0) for _ in range(2)]

    def caller(me: int) -> None:
        while True:
            ready[me].acquire()
            index, done = work.pop()
            if index < 0:
                return
            walls[index] = job(index)
            done.set()

    callers = [threading.Thread(target=caller, args=(me,), daemon=True) for me in range(2)]
    for thread in callers:
        thread.start()
    for index in range(jobs + 1):
        done = threading.Event()
        work.append((index, done))
        ready[index % 2].release()
        done.wait()
    for me in range(2):
        work.append((-1, threading.Event()))
        ready[me].release()
        callers[me].join()
    return [walls[index] for index in range(jobs + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=27)
    parser.add_argument("--jobs", type=int, default=3, help="timed jobs per process, after the first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ace-step-bench")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # a child process's way
    args = parser.parse_args(argv)

    from speed import checkpoint_folder

    folder = checkpoint_folder("tiny", args.work)
    if args.way:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(run_jobs(args.way, folder, args.seconds, args.steps, args.jobs,
                                      Path(out))))
        return 0
    import torch

    print(f"tiny v1, {args.seconds:g} s songs at {args.steps} steps, {args.rounds} rounds of "
          f"{args.jobs} timed jobs per way, torch {torch.__version__}, {torch.get_num_threads()} threads")
    walls: dict[str, list[float]] = {way: [] for way in WAYS}
    for round_ in range(args.rounds):
        for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
            child = subprocess.run([sys.executable, __file__, "--way", way, "--seconds",
                                    str(args.seconds), "--steps", str(args.steps), "--jobs",
                                    str(args.jobs), "--work", str(args.work)],
                                   capture_output=True, text=True, check=True)
            walls[way] += json.loads(child.stdout.strip().splitlines()[-1])[1:]
    medians = {way: statistics.median(walls[way]) for way in WAYS}
    for way in WAYS:
        print(f"{way:>10}: " + " ".join(f"{wall:.2f}" for wall in walls[way])
              + f" s, median {medians[way]:.2f} s, {medians[way] / medians['main']:.2f}x main's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
