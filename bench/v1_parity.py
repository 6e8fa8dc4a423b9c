"""Print how close our ACE-Step v1 is to upstream on the parity fixture, and what it costs on CPU.

    python bench/v1_parity.py [--threads 2] [--skip-cases]

Figures: the fixture checkpoint's materialise and load times; per public case the max abs
difference of the final latents (and of the WAV where the fixture stores one) against upstream's
recording; then the CPU and wall time of each task through `tasks.run` at the hosted defaults
(27 steps) on a 10 s clip.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ace_step_ui import tasks  # noqa: E402
from ace_step_ui.audio import read_audio, write_audio  # noqa: E402
from ace_step_ui.engines import EngineManager  # noqa: E402
from ace_step_ui.v1.pipeline import V1Pipeline  # noqa: E402
from test_v1_parity import extends_both_sides, pipeline_call  # noqa: E402
from v1_fixture import FIXTURE, cases, lyric_vocab, materialise, refs  # noqa: E402
from v1_upstream import run_call  # noqa: E402

TASKS = {
    "generate": {"tags": "lofi, piano", "lyrics": "[verse]\nlate night rain", "duration": 10.0},
    "inpaint": {"tags": "lofi, piano", "start_time": 3.0, "end_time": 6.0},
    "outpaint": {"tags": "lofi, piano", "extend_before_duration": 2.0, "extend_after_duration": 3.0},
    "edit": {"tags": "jazz, piano", "original_tags": "lofi, piano", "edit_mode": "remix"},
}


def timed(action):
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cases", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["ACE_STEP_LYRIC_VOCAB"] = str(lyric_vocab())
    print(f"torch {torch.__version__}, {args.threads} threads, float32 CPU")
    with tempfile.TemporaryDirectory() as scratch:
        root, wall, _ = timed(lambda: materialise(Path(scratch) / "fixture"))
        print(f"materialise the fixture checkpoint: {wall:.2f} s")
        pipeline, wall, cpu = timed(lambda: V1Pipeline.load(root / "checkpoint", torch.device("cpu"),
                                                           torch.float32))
        print(f"load the tiny checkpoint: {wall:.2f} s wall, {cpu:.2f} s CPU")
        if not args.skip_cases:
            print_cases(pipeline, root)
        print_tasks(root / "checkpoint", Path(scratch))


def print_cases(pipeline: V1Pipeline, root: Path) -> None:
    print(f"\n{'case':30} {'final latents':>14} {'WAV':>10} {'wall s':>7}")
    for case in sorted(cases()):
        torch.manual_seed(0)
        random.seed(0)
        (out, _), wall, _ = timed(lambda: run_call(pipeline, pipeline_call(case, root)))
        reference = refs(case)["final_latents.000"]
        if extends_both_sides(case):
            print(f"{case:30} {'(fixed: ' + str(out.latents.shape[-1]) + ' frames)':>25} {wall:7.1f}")
            continue
        latents = float((out.latents - reference).abs().max())
        wavs = [float((out.audio[i].samples - read_audio(FIXTURE / name).samples).abs().max())
                for i, name in enumerate(cases()[case]["output_wavs"])]
        wav = f"{max(wavs):.2e}" if wavs else "-"
        print(f"{case:30} {latents:14.2e} {wav:>10} {wall:7.1f}")


def print_tasks(model: Path, scratch: Path) -> None:
    source = scratch / "source.wav"
    manager = EngineManager(device="cpu", dtype="float32")
    tasks.run("generate", {"tags": "warm up", "duration": 10.0, "seed": 1}, manager, str(model))
    first = tasks.run("generate", {"tags": "lofi", "duration": 10.0, "seed": 2}, manager, str(model))
    write_audio(source, first.audio, "wav", {})
    print(f"\n{'task (27 steps, 10 s clip)':30} {'wall s':>8} {'CPU s':>8}")
    for task, payload in TASKS.items():
        if task != "generate":
            payload = {**payload, "audio": str(source)}
        _, wall, cpu = timed(lambda: tasks.run(task, {**payload, "seed": 3}, manager, str(model)))
        print(f"{task:30} {wall:8.2f} {cpu:8.2f}")


if __name__ == "__main__":
    main()
