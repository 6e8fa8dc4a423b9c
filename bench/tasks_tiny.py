"""Print the playground's start-up and per-task figures on a tiny random-weight checkpoint.

    python bench/tasks_tiny.py [--model DIR] [--repeats 3]

Figures: `import app` and `import ace_step_ui.ui` (gradio) times in a fresh interpreter, app build + launch time, model load time, and the
best-of-N wall time of generate / inpaint / outpaint at the sizes below, on this machine's CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {
    "generate": {"tags": "lofi, piano", "duration": 10.0},
    "inpaint": {"tags": "lofi, piano", "start_time": 3.0, "end_time": 6.0},
    "outpaint": {"tags": "lofi, piano", "extend_before_duration": 2.0, "extend_after_duration": 3.0},
}


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


def best_of(repeats: int, action) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="a checkpoint folder (default: a fresh tiny v15)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    from ace_step_ui import tasks
    from ace_step_ui.engines import EngineManager
    from ace_step_ui.v15.tiny import write_tiny_checkpoint

    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    model = str(args.model or write_tiny_checkpoint(scratch / "tiny-v15"))
    source = scratch / "source.wav"
    rate = 44100
    t = np.arange(10 * rate) / rate
    sf.write(source, np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1).astype("float32"), rate)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    for module in ("app", "ace_step_ui.ui"):
        print(f"import {module}: {import_seconds(module):.2f} s (fresh interpreter)")

    from ace_step_ui.ui import build_app

    manager = EngineManager(device="cpu")
    started = time.perf_counter()
    demo = build_app(manager, model, [model])
    demo.queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    print(f"build + launch app: {time.perf_counter() - started:.2f} s")
    demo.close()

    started = time.perf_counter()
    manager.get(model)
    print(f"load tiny checkpoint: {time.perf_counter() - started:.2f} s")
    for task, request in CASES.items():
        payload = {**request, "number_of_steps": args.steps, "seed": 1}
        if task != "generate":
            payload["audio"] = str(source)
        seconds = best_of(args.repeats, lambda: tasks.run(task, payload, manager, model))
        print(f"{task}: {seconds:.2f} s (best of {args.repeats}, {args.steps} steps, "
              f"{'10 s song' if task == 'generate' else '10 s source'})")


if __name__ == "__main__":
    main()
