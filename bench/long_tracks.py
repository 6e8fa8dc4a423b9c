"""Print what a 10 s inpaint and a 20 s outpaint cost on 1-, 10- and 60-minute sources, per model family.

    python bench/long_tracks.py [--v1 DIR] [--v15 DIR] [--minutes 1 10 60] [--families v1 v15]
                                [--tasks inpaint outpaint] [--steps 27] [--repeats 1] [--device cpu]
                                [--threads N]

The target (issue: "a cost set by the edit and not by the track"): the 60-minute edit within 1.5x the
1-minute edit, inpaint and outpaint, both families, on CPU.

Sources are synthetic 48 kHz stereo 16-bit WAVs (a slow chord of sines under a slow swell, a little
noise, -20 dBFS RMS), written block by block into a temp folder once per run; the tiny random-weight
checkpoints come from `python -m ace_step_ui tiny v1|v15 DIR` unless --v1/--v15 name existing ones.
Each (family, task, minutes) runs in a fresh Python, so its peak RSS is that edit's: the child loads
the model with a warm-up 10 s generate (load and first-call costs stay out of the figures), takes
its peak RSS as the baseline, then times `tasks.run` (reading the source and editing it) and
`tasks.save_result` (a 32-bit float WAV), best of --repeats.

Figures: per family and task, a markdown table with one row per length: run s (read and edit),
engine s (the edit alone, as `tasks.run` times it), write s, total s, peak RSS MiB and peak RSS over
the baseline MiB; then the longest source's run and total times over the shortest's, against the
target. Before them, how long each source took to make and the parent's own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SAMPLE_RATE = 48000
BLOCK_SECONDS = 10  # one block of the source in memory at a time: 7.7 MB of float64 stereo
SOURCE_RMS = 0.1  # -20 dBFS
CHORD_HZ = (110.0, 220.0, 261.63, 329.63, 392.0)  # A2, A3, C4, E4, G4: Am7
CHORD_WEIGHTS = (1.0, 0.8, 0.6, 0.5, 0.4)
SWELL_HZ, SWELL_DEPTH = 1 / 8, 0.5  # an 8 s swell between 0.5x and 1.5x
NOISE_RMS = 0.003  # about -50 dBFS
TARGET_RATIO = 1.5

WARM_UP = {"tags": "lofi, piano", "duration": 10.0, "seed": 1}
TASKS = {
    "inpaint": {"tags": "lofi, piano", "start_time": 25.0, "end_time": 35.0},
    "outpaint": {"tags": "lofi, piano", "extend_before_duration": 0.0, "extend_after_duration": 20.0},
}
FAMILIES = {"v1": "ACE-Step v1", "v15": "ACE-Step 1.5"}


def write_source(path: Path, minutes: float) -> Path:
    """A stereo 16-bit WAV of `minutes`, made BLOCK_SECONDS at a time."""
    noise = np.random.default_rng(0)
    hz = np.array(CHORD_HZ)[:, None]
    weights = np.array(CHORD_WEIGHTS)[:, None]
    phases = np.stack([np.zeros(len(CHORD_HZ)), np.linspace(0.5, 2.5, len(CHORD_HZ))], axis=1)
    # RMS of a sum of sines is sqrt(sum(w^2) / 2); the swell, slow beside them, multiplies it by
    # sqrt(1 + depth^2 / 2).
    chord_rms = np.sqrt((weights ** 2).sum() / 2) * np.sqrt(1 + SWELL_DEPTH ** 2 / 2)
    scale = np.sqrt(SOURCE_RMS ** 2 - NOISE_RMS ** 2) / chord_rms
    total = round(minutes * 60 * SAMPLE_RATE)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 2, subtype="PCM_16", format="WAV") as f:
        for start in range(0, total, BLOCK_SECONDS * SAMPLE_RATE):
            t = np.arange(start, min(start + BLOCK_SECONDS * SAMPLE_RATE, total)) / SAMPLE_RATE
            swell = 1 + SWELL_DEPTH * np.sin(2 * np.pi * SWELL_HZ * t)
            channels = [(weights * np.sin(2 * np.pi * hz * t + phases[:, [side]])).sum(axis=0)
                        for side in (0, 1)]
            block = scale * swell[:, None] * np.stack(channels, axis=1)
            f.write(block + noise.normal(0.0, NOISE_RMS, block.shape))
    return path


def lyric_vocab() -> str:
    """ACE_STEP_LYRIC_VOCAB, else the one the v1 tests find (tests/v1_fixture.py); exits with
    its one line when there is none."""
    if os.environ.get("ACE_STEP_LYRIC_VOCAB"):
        return os.environ["ACE_STEP_LYRIC_VOCAB"]
    import pytest
    from v1_fixture import lyric_vocab as find

    try:
        return str(find())
    except pytest.fail.Exception as error:
        sys.exit(f"bench/long_tracks.py: {error.msg}")


def tiny_checkpoint(family: str, folder: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "ace_step_ui", "tiny", family, str(folder)],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench/long_tracks.py: `python -m ace_step_ui tiny {family}` failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(job: dict) -> dict:
    """In the child: warm up, then the edit `job` names, best of its repeats."""
    import torch

    from ace_step_ui import tasks
    from ace_step_ui.engines import EngineManager

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    manager = EngineManager(device=job["device"])
    started = time.perf_counter()
    tasks.run("generate", {**WARM_UP, "number_of_steps": job["steps"]}, manager, job["model"])
    warm_up_s = time.perf_counter() - started
    baseline = peak_rss_mib()
    payload = {**TASKS[job["task"]], "audio": job["source"], "number_of_steps": job["steps"],
               "seed": 1}
    runs = []
    with tempfile.TemporaryDirectory(prefix="out-", dir=job["scratch"]) as out:
        for _ in range(job["repeats"]):
            started = time.perf_counter()
            result = tasks.run(job["task"], payload, manager, job["model"])
            ran = time.perf_counter()
            tasks.save_result(result, out, "wav", stem="edit", overwrite=True)
            runs.append({"run_s": ran - started, "engine_s": result.params["timings_s"]["run"],
                         "write_s": time.perf_counter() - ran})
            del result
    best = min(runs, key=lambda figures: figures["run_s"] + figures["write_s"])
    peak = peak_rss_mib()
    return {**best, "total_s": best["run_s"] + best["write_s"], "peak_mib": peak,
            "over_baseline_mib": peak - baseline, "warm_up_s": warm_up_s,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def run_child(job: dict) -> dict | None:
    """The child's figures, or None (its stderr's tail shown on ours) when it failed."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    print(f"{tail}\nbench/long_tracks.py: the {job['family']} {job['task']} of {job['minutes']:g} min "
          f"failed (exit {done.returncode})", file=sys.stderr)
    return None


def print_table(family: str, task: str, rows: dict[float, dict | None]) -> None:
    done = {minutes: row for minutes, row in rows.items() if row is not None}
    about = ""
    if done:
        first = next(iter(done.values()))
        about = (f" (torch {first['torch']}, {first['threads']} threads; "
                 f"warm-up generate {first['warm_up_s']:.1f} s)")
    print(f"\n{FAMILIES[family]}, {task}{about}\n")
    print("| minutes | run s | engine s | write s | total s | peak RSS MiB | over baseline MiB |")
    print("|--------:|------:|---------:|--------:|--------:|-------------:|------------------:|")
    for minutes, row in rows.items():
        if row is None:
            print(f"| {minutes:g} | failed | | | | | |")
            continue
        print(f"| {minutes:g} | {row['run_s']:.2f} | {row['engine_s']:.2f} | {row['write_s']:.2f} "
              f"| {row['total_s']:.2f} | {row['peak_mib']:.0f} | {row['over_baseline_mib']:.0f} |")
    if len(done) > 1:
        short, long = done[min(done)], done[max(done)]
        run, total = long["run_s"] / short["run_s"], long["total_s"] / short["total_s"]
        verdict = "met" if max(run, total) <= TARGET_RATIO else "not met"
        print(f"\n{max(done):g} min / {min(done):g} min: run {run:.2f}, total {total:.2f} "
              f"(target <= {TARGET_RATIO}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1", type=Path, metavar="DIR",
                        help="a tiny v1 checkpoint (default: a fresh one)")
    parser.add_argument("--v15", type=Path, metavar="DIR",
                        help="a tiny v15 checkpoint (default: a fresh one)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--steps", type=int, default=27, help="diffusion steps (hosted default 27)")
    parser.add_argument("--repeats", type=int, default=1, help="edits per child; the best is shown")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, ... (default cpu)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    if min(args.minutes) * 60 < 35:
        parser.error("--minutes: the inpaint edits 25-35 s, so every source needs at least 0.6 min")

    sys.stdout.reconfigure(line_buffering=True)  # tables in order with a failed child's stderr
    if "v1" in args.families and not args.v1:  # `tiny v1` copies it beside the checkpoint
        os.environ["ACE_STEP_LYRIC_VOCAB"] = lyric_vocab()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, device {args.device}, "
          f"{args.steps} steps, best of {args.repeats}")
    scratch = Path(tempfile.mkdtemp(prefix="long-tracks-"))
    failed = False
    try:
        models = {family: str(getattr(args, family) or tiny_checkpoint(family, scratch / family))
                  for family in args.families}
        sources = {}
        for minutes in sorted(set(args.minutes)):
            started = time.perf_counter()
            sources[minutes] = write_source(scratch / f"source-{minutes:g}min.wav", minutes)
            print(f"make the {minutes:g} min source: {time.perf_counter() - started:.1f} s, "
                  f"{sources[minutes].stat().st_size / 2 ** 20:.0f} MiB")
        print(f"parent peak RSS: {peak_rss_mib():.0f} MiB")
        for family in args.families:
            for task in args.tasks:
                rows = {}
                for minutes, source in sources.items():
                    rows[minutes] = run_child({
                        "family": family, "task": task, "minutes": minutes, "source": str(source),
                        "model": models[family], "steps": args.steps, "repeats": args.repeats,
                        "device": args.device, "threads": args.threads, "scratch": str(scratch)})
                print_table(family, task, rows)
                failed = failed or None in rows.values()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
