"""Our ACE-Step v1 against upstream's unmodified code, side by side on this CPU, in one run.

    python bench/vs_upstream.py --upstream DIR [--site DIR] [--repeats 3] [--json PATH] [--quick]
                                [--split]

Both sides run in float32 on the CPU with 2 threads, in this one process, the two alternating
(ours first on even repeats, upstream first on odd ones) so that host noise hits both; each figure
is the median of the repeats, printed as ours, upstream and ours/upstream:

1. text2music, 10 s at 27 steps (upstream's defaults otherwise), on a tiny random-weight checkpoint
   in the official layout (written afresh, as `python -m ace_step_ui tiny v1` does): wall and CPU
   time of a call, WAV file in and out, after one warm-up call; peak RSS of a fresh Python per side
   and repeat that loads the checkpoint and makes the clip once (its VmHWM; see `print_peak_rss`).
2. repaint of 10-20 s of a 30 s source (a synthetic stereo WAV) at 27 steps: the same figures.
3. One conditional forward (`decode`) of the full-size DiT (the released config, from
   tests/fixtures/ace_step_v1_tiny/full_size_keys.json) at 108 and 323 latent frames, with a
   condition of 512 tokens, after a warm-up: wall time. Ours is built with random weights, and
   upstream's `ACEStepTransformer2DModel` is built on the meta device and takes the very same
   tensors (`load_state_dict(assign=True)`; its training-only tensors stay on meta, unused), so the
   two share one copy of the weights. Ours prepares the condition's cross-attention keys and values
   once per song (`ACEStepTransformer.condition`): that is done before its clock starts, and timed
   on its own row.

Closeness: the max abs difference of the two sides' output WAVs (both tasks) and of the two DiT
outputs (with the largest output value for scale).

--split times the parts of both tiny cases instead (and nothing else): each side's seconds in its
text encoder, condition encoder, DiT, autoencoder encode and decode and vocoder (`STAGES`, through
bench/speed.py's `StageClock`), per call, medians of the repeats, the sides alternating as above.

Upstream lives outside this repository and is imported only from the folders named here:
`--upstream` is a checkout of github.com/ace-step/ACE-Step (we compare with commit d612523f) and
`--site` a folder of the packages it needs that this environment lacks; `--site` is searched after
our own site-packages, so our torch, diffusers and transformers are the ones that run. To prepare
them (about 750 MB):

    git clone https://github.com/ace-step/ACE-Step /tmp/upstream/ACE-Step
    git -C /tmp/upstream/ACE-Step checkout d612523f50e252c0e138e68ae75b06223f96e934
    pip install --target /tmp/upstream/site loguru==0.7.3 spacy==3.8.4 librosa==0.11.0
    pip download torchaudio==2.11.0 --no-deps -d /tmp/wheels
    python -m zipfile -e /tmp/wheels/torchaudio-2.11.0-cp311-*.whl /tmp/upstream/site
    rm /tmp/upstream/site/torchaudio/lib/*.so

torchaudio's wheels pin another torch, so only its Python code is used, without its C extension;
its `load`/`save` (which want torchcodec) are routed through soundfile here, 32-bit float WAV.
torchvision is not installed: upstream uses only `transforms.Normalize(0.5, 0.5)`, which this
script provides while upstream's modules import. --quick: one repeat and 108 frames only.

A run with 3 repeats takes about 10 minutes on 2 quiet cores and needs about 12 GB of memory (the
full-size DiT's one shared copy of the weights). Other work on the host skews the figures, the
ratios less so (the sides alternate); the load average printed at the start and end tells.
"""

from __future__ import annotations

import argparse
import gc
import importlib.machinery
import itertools
import json
import operator
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's progress bars; read when tqdm is imported

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

FULL_SIZE = REPO / "tests" / "fixtures" / "ace_step_v1_tiny" / "full_size_keys.json"
THREADS = 2
SAMPLE_RATE = 48000
SOURCE_SECONDS = 30.0
CONTEXT_TOKENS = 512
DIT_TIMESTEP = 500.0
LYRIC_VOCAB = Path("acestep") / "models" / "lyrics_utils" / "vocab.json"
SONG = {"prompt": "funk, pop, soul, melodic, guitar, drums, bass, 105 BPM, upbeat",
        "lyrics": "[verse]\nStreet lights hum a quiet tune\nDancing shadows under the moon\n\n"
                  "[chorus]\nHold the night and let it glow",
        "infer_step": 27, "manual_seeds": "42", "retake_seeds": "7"}
# Upstream keyword calls; `src_audio_path` is filled in with the synthetic source.
CASES = {
    "text2music": {**SONG, "task": "text2music", "audio_duration": 10.0},
    "repaint": {**SONG, "task": "repaint", "audio_duration": SOURCE_SECONDS, "repaint_start": 10.0,
                "repaint_end": 20.0},
}
TITLES = {"text2music": "text2music 10 s, 27 steps", "repaint": "repaint 10-20 s of 30 s, 27 steps"}
# --split: the parts timed on each side, as (attribute path from the side, method, stage). Each
# side's autoencoder encode includes its resampling and mel, its decode the vocoder and resampling;
# a call of a stage inside another call of it counts once. ("DiT", not "dit": under that name
# StageClock also keeps our DiT's arguments, which upstream's calls do not match.)
STAGES = {
    "ours": [("pipeline.text_encoder", "encode", "text encoder"),
             ("pipeline.transformer", "encode", "condition encoder"),
             ("pipeline.transformer", "encode_lyrics", "condition encoder"),
             ("pipeline.transformer", "decode", "DiT"),
             ("pipeline.dcae", "encode", "autoencoder encode"),
             ("pipeline.dcae", "decode", "autoencoder decode"),
             ("pipeline.dcae.vocoder", "forward", "vocoder")],
    "upstream": [("pipeline", "get_text_embeddings", "text encoder"),
                 ("pipeline", "get_text_embeddings_null", "text encoder"),
                 ("pipeline.ace_step_transformer", "encode", "condition encoder"),
                 ("pipeline.ace_step_transformer", "decode", "DiT"),
                 ("pipeline.music_dcae", "encode", "autoencoder encode"),
                 ("pipeline.music_dcae", "decode", "autoencoder decode"),
                 ("pipeline.music_dcae.vocoder", "decode", "vocoder")],
}
# Run in a fresh Python: load one side, make one case once, print its peak RSS.
PEAK_RSS_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); import vs_upstream; "
                  "vs_upstream.print_peak_rss(*sys.argv[2:])")


class Ours:
    """Our pipeline, called through the tests' adapter of upstream's keywords. Our package is
    imported only inside functions, so that upstream's peak-RSS child never loads it."""

    name = "ours"

    def __init__(self, checkpoint: Path):
        from ace_step_ui.v1.pipeline import V1Pipeline

        self.pipeline = V1Pipeline.load(checkpoint, torch.device("cpu"), torch.float32)

    def __call__(self, call: dict[str, Any], output: Path) -> None:
        from v1_upstream import PipelineCall, run_call

        from ace_step_ui.audio import read_audio, write_audio

        arguments = dict(call)
        source = arguments.pop("src_audio_path", None)
        result, _ = run_call(self.pipeline, PipelineCall(
            **arguments, src_audio=read_audio(source) if source else None))
        write_audio(output, result.audio[0], "wav", {})


class Upstream:
    """Upstream's pipeline, called with its own keywords; it writes the WAV itself."""

    name = "upstream"

    def __init__(self, checkpoint: Path, pipeline_class: type):
        self.pipeline = pipeline_class(checkpoint_dir=str(checkpoint), dtype="float32",
                                       torch_compile=False, cpu_offload=False,
                                       overlapped_decode=False)
        self.pipeline.load_checkpoint(str(checkpoint))

    def __call__(self, call: dict[str, Any], output: Path) -> None:
        self.pipeline(**call, save_path=str(output))


def import_upstream(upstream: Path, site: Path | None) -> tuple[type, type]:
    """Upstream's `ACEStepPipeline` and `ACEStepTransformer2DModel`, imported from `upstream`."""
    sys.path.insert(0, str(upstream))
    if site is not None:
        sys.path.append(str(site))
    # transformers imports torchvision's image helpers when it can find a `torchvision`: the
    # modules that ask are imported first, and the stand-in is visible only while upstream imports.
    import diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3  # noqa: F401
    import torchaudio
    from loguru import logger

    logger.remove()  # upstream's info lines would break up the table
    torchaudio.load, torchaudio.save = load_with_soundfile, save_with_soundfile
    sys.modules.update(torchvision_stand_in())
    try:
        from acestep.models.ace_step_transformer import ACEStepTransformer2DModel
        from acestep.pipeline_ace_step import ACEStepPipeline
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    return ACEStepPipeline, ACEStepTransformer2DModel


def load_with_soundfile(path: str, *_: Any, **__: Any) -> tuple[torch.Tensor, int]:
    samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()), sample_rate


def save_with_soundfile(path: str, samples: torch.Tensor, sample_rate: int, **_: Any) -> None:
    soundfile.write(path, samples.T.numpy(), sample_rate, subtype="FLOAT")


class Normalize:
    """torchvision's `Normalize` for the scalar mean and std upstream passes."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


class Compose:
    def __init__(self, transforms: list[Callable[[torch.Tensor], torch.Tensor]]):
        self.transforms = transforms

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            tensor = transform(tensor)
        return tensor


def torchvision_stand_in() -> dict[str, types.ModuleType]:
    """`torchvision` and `torchvision.transforms` as far as upstream uses them."""
    package = types.ModuleType("torchvision")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Compose, transforms.Normalize = Compose, Normalize
    package.transforms = transforms
    return {"torchvision": package, "torchvision.transforms": transforms}


def prepare(scratch: Path, upstream: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The tiny checkpoint (with upstream's lyric vocabulary beside it) and the cases' calls."""
    from ace_step_ui.v1 import vocab
    from ace_step_ui.v1.tiny import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(scratch / "checkpoint")
    (checkpoint / vocab.BESIDE_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(upstream / LYRIC_VOCAB, checkpoint / vocab.BESIDE_CHECKPOINT)
    source = scratch / "source.wav"
    soundfile.write(source, synthetic_source(), SAMPLE_RATE, subtype="FLOAT")
    calls = {**CASES, "repaint": {**CASES["repaint"], "src_audio_path": str(source)}}
    return checkpoint, calls


def synthetic_source() -> np.ndarray:
    """30 s of stereo chords over a little noise, `(samples, 2)` float32."""
    rng = np.random.default_rng(0)
    seconds = np.arange(int(SOURCE_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * hz * seconds) for hz in (220.0, 277.2, 329.6)) / 6
    left = chord * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * seconds))
    stereo = np.stack([left, chord], axis=1) + 0.01 * rng.standard_normal((seconds.size, 2))
    return stereo.astype(np.float32)


def timed(action: Callable[..., Any], *arguments: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action(*arguments)
    return time.perf_counter() - wall, time.process_time() - cpu


def alternating(sides: list[Any], repeat: int) -> list[Any]:
    return sides if repeat % 2 == 0 else sides[::-1]


def time_cases(sides: list[Any], calls: dict[str, dict[str, Any]], scratch: Path, repeats: int
               ) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Per case and side the wall and CPU seconds of each repeat; per case the max abs difference
    of the two sides' WAVs."""
    times: dict[str, dict[str, list[float]]] = {}
    closeness = {}
    for case, call in calls.items():
        outputs = {side.name: scratch / f"{side.name}-{case}.wav" for side in sides}
        for side in sides:  # warm-up
            side(call, outputs[side.name])
        closeness[case] = wav_difference(*outputs.values())
        for repeat in range(repeats):
            for side in alternating(sides, repeat):
                wall, cpu = timed(side, call, outputs[side.name])
                times.setdefault(f"{TITLES[case]}: wall s", {}).setdefault(side.name, []).append(wall)
                times.setdefault(f"{TITLES[case]}: CPU s", {}).setdefault(side.name, []).append(cpu)
    return times, closeness


def time_stages(sides: list[Any], calls: dict[str, dict[str, Any]], scratch: Path, repeats: int
                ) -> dict[str, dict[str, list[float]]]:
    """Per case and stage (`STAGES`, then the whole call), each side's seconds in each repeat."""
    from speed import StageClock  # it imports our package, which upstream's RSS child must not

    clock = StageClock(torch.device("cpu"))
    for side in sides:
        for path, method, stage in STAGES[side.name]:
            clock.wrap(operator.attrgetter(path)(side), method, stage)
    rows: dict[str, dict[str, list[float]]] = {}
    for case, call in calls.items():
        output = scratch / f"{case}.wav"
        for side in sides:  # warm-up
            side(call, output)
        for repeat in range(repeats):
            for side in alternating(sides, repeat):
                clock.reset()
                wall, _ = timed(side, call, output)
                for stage, seconds in {**clock.seconds, "whole call": wall}.items():
                    row = rows.setdefault(f"{TITLES[case]}: {stage} s", {})
                    row.setdefault(side.name, []).append(seconds)
    return rows


def wav_difference(ours: Path, theirs: Path) -> float:
    (mine, rate), (reference, reference_rate) = soundfile.read(ours), soundfile.read(theirs)
    if rate != reference_rate or mine.shape != reference.shape:
        raise SystemExit(f"the WAVs differ in form: {mine.shape} at {rate} Hz (ours) vs "
                         f"{reference.shape} at {reference_rate} Hz (upstream)")
    return float(np.abs(mine - reference).max())


def peak_rss(checkpoint: Path, calls: dict[str, dict[str, Any]], scratch: Path, upstream: Path,
             site: Path | None, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per case and side, the peak RSS in MiB of each repeat's fresh Python that loads and runs it
    once (upstream's varies by a few hundred MiB from run to run)."""
    figures: dict[str, dict[str, list[float]]] = {}
    for case, repeat in itertools.product(calls, range(repeats)):
        for side in alternating(["ours", "upstream"], repeat):
            done = subprocess.run(
                [sys.executable, "-c", PEAK_RSS_CHILD, str(REPO / "bench"), side, case,
                 str(checkpoint), str(scratch), str(upstream), str(site or "")],
                capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"the peak-RSS run of {side} {case} failed:\n{done.stderr[-3000:]}")
            kib = int(done.stdout.split()[-2])
            figures.setdefault(f"{TITLES[case]}: peak RSS MiB", {}).setdefault(side, []).append(kib / 1024)
    return figures


def print_peak_rss(side: str, case: str, checkpoint: str, scratch: str, upstream: str,
                   site: str) -> None:
    """The peak-RSS child: load `side`, run `case` once, print this process's VmHWM line (kB).

    Not `ru_maxrss`: Linux carries the parent's peak over into a forked child's, so every child
    of a parent bigger than itself would report the parent's figure.
    """
    torch.set_num_threads(THREADS)
    calls = {**CASES, "repaint": {**CASES["repaint"], "src_audio_path": str(Path(scratch) / "source.wav")}}
    runner = (Ours(Path(checkpoint)) if side == "ours" else
              Upstream(Path(checkpoint), import_upstream(Path(upstream), Path(site) if site else None)[0]))
    with tempfile.TemporaryDirectory() as output:
        runner(calls[case], Path(output) / "out.wav")
    print(next(line for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:")))


def fill_random(model: torch.nn.Module) -> None:
    """Random weights of sensible scale: matrices ~ N(0, 1/fan_in), norm scales ~ 1, biases ~ 0."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim >= 2:
                tensor.copy_(noise / (tensor[0].numel() ** 0.5))
            elif "norm" in name:
                tensor.copy_(1 + 0.02 * noise)
            else:
                tensor.copy_(0.02 * noise)


def time_dit(upstream_class: type, frames_list: list[int], repeats: int
             ) -> tuple[dict[str, dict[str, list[float]]], dict[str, tuple[float, float]]]:
    """Per frame count the decode seconds of each repeat, and the two outputs' max abs difference
    with the largest output value."""
    from accelerate import init_empty_weights

    from ace_step_ui.v1.transformer import ACEStepTransformer, TransformerConfig, is_training_only
    from ace_step_ui.v1.weights import build_on_meta

    config = json.loads(FULL_SIZE.read_text())["components"]["ace_step_transformer"]["config_json"]
    ours = build_on_meta(lambda: ACEStepTransformer(TransformerConfig.from_json(config)))
    ours = ours.to_empty(device="cpu").eval().requires_grad_(False)
    fill_random(ours)
    # Parameters on meta, buffers (the rotary tables) built as upstream builds them.
    with init_empty_weights(include_buffers=False):
        theirs = upstream_class.from_config(config)
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False, assign=True)
    if unexpected or not all(is_training_only(key) for key in missing):
        raise SystemExit(f"the state dicts do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    theirs.eval().requires_grad_(False)
    print(f"full-size DiT: {sum(t.numel() for t in ours.parameters()) / 1e9:.2f} B parameters "
          f"shared, {len(missing)} training-only tensors of upstream's left on meta")

    times: dict[str, dict[str, list[float]]] = {}
    closeness = {}
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(1, CONTEXT_TOKENS, ours.config.inner_dim, generator=generator)
    states_mask = torch.ones(1, CONTEXT_TOKENS)
    timestep = torch.tensor([DIT_TIMESTEP])
    with torch.no_grad():
        condition_times = []
        for _ in range(repeats + 1):
            wall, _ = timed(ours.condition, states)
            condition_times.append(wall)
        times[f"DiT condition K/V, {CONTEXT_TOKENS} tokens: wall s"] = {"ours": condition_times[1:]}
        condition = ours.condition(states)
        for frames in frames_list:
            latents = torch.randn(1, 8, 16, frames, generator=generator)
            mask = torch.ones(1, frames)
            decode = {
                "ours": partial(ours.decode, latents, mask, condition, states_mask, timestep),
                "upstream": partial(upstream_decode, theirs, latents, mask, states, states_mask,
                                    timestep),
            }
            outputs = {name: run() for name, run in decode.items()}  # warm-up
            closeness[f"DiT {frames} frames"] = (
                float((outputs["ours"] - outputs["upstream"]).abs().max()),
                float(outputs["upstream"].abs().max()))
            row = times.setdefault(f"DiT decode, {frames} frames: wall s", {"ours": [], "upstream": []})
            for repeat in range(repeats):
                for name in alternating(list(decode), repeat):
                    row[name].append(timed(decode[name])[0])
    return times, closeness


def upstream_decode(model: torch.nn.Module, latents: torch.Tensor, *arguments: torch.Tensor
                    ) -> torch.Tensor:
    return model.decode(latents, *arguments, output_length=latents.shape[-1]).sample


def print_table(rows: dict[str, dict[str, list[float]]]) -> None:
    width = max(50, *map(len, rows))
    print(f"\n{'figure':{width}} {'ours':>10} {'upstream':>10} {'ours/upstream':>14}")
    for figure, sides in rows.items():
        medians = {name: statistics.median(values) for name, values in sides.items()}
        ours, theirs = medians.get("ours"), medians.get("upstream")
        ratio = f"{ours / theirs:14.3f}" if ours is not None and theirs is not None else f"{'-':>14}"
        print(f"{figure:{width}} {cell(ours)} {cell(theirs)} {ratio}")


def cell(value: float | None) -> str:
    return f"{value:10.3f}" if value is not None else f"{'-':>10}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="checkout of ace-step/ACE-Step")
    parser.add_argument("--site", type=Path, default=None, help="upstream's extra packages")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--quick", action="store_true", help="one repeat, the DiT at 108 frames")
    parser.add_argument("--split", action="store_true", help="the tiny cases' parts, nothing else")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    frames_list = [108] if args.quick else [108, 323]
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads, float32, {platform.machine()} with "
          f"{os.cpu_count()} CPUs, {repeats} repeat(s); load average {os.getloadavg()[0]:.2f}")

    pipeline_class, transformer_class = import_upstream(args.upstream, args.site)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        checkpoint, calls = prepare(scratch, args.upstream)
        sides = [Ours(checkpoint), Upstream(checkpoint, pipeline_class)]
        print(f"float32 matmul precision after upstream's import (both sides run under it): "
              f"{torch.get_float32_matmul_precision()}")
        if args.split:
            print_table(time_stages(sides, calls, scratch, repeats))
            print(f"load average at the end: {os.getloadavg()[0]:.2f}")
            return 0
        times, closeness = time_cases(sides, calls, scratch, repeats)
        del sides
        gc.collect()
        memory = peak_rss(checkpoint, calls, scratch, args.upstream, args.site, repeats)
    dit_rows, dit_closeness = time_dit(transformer_class, frames_list, repeats)
    # Each case's rows together, then the DiT's.
    rows = {name: figures for title in TITLES.values() for name, figures in [*times.items(), *memory.items()]
            if name.startswith(title)}
    rows.update(dit_rows)

    print_table(rows)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("\ncloseness (max abs difference, ours vs upstream):")
    for case, difference in closeness.items():
        print(f"  {TITLES[case]}, output WAV: {difference:.2e}")
    for name, (difference, largest) in dit_closeness.items():
        print(f"  {name}, output: {difference:.2e} (largest |output| {largest:.2f})")
    if args.json:
        args.json.write_text(json.dumps({
            "torch": torch.__version__, "threads": THREADS, "repeats": repeats, "figures": rows,
            "wav_max_abs_difference": closeness,
            "dit_max_abs_difference": {name: pair[0] for name, pair in dit_closeness.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
