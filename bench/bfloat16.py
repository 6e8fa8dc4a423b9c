"""What bfloat16 costs and buys against float32 on one device: time and difference, in one run.

    python bench/bfloat16.py [--device cpu|cuda] [--frames 108 323] [--song-seconds 10]
                             [--steps 27] [--threads N] [--skip-full]

1. The full-size v1 DiT (random weights at the released widths, built once in float32 and copied
   to bfloat16): one conditional forward per frame count in each dtype; the time ratio, and the
   relative RMS difference of the velocities (bfloat16 against float32).
2. A whole text2music song on the tiny test checkpoint (`python -m ace_step_ui tiny v1`) in each
   dtype, same seed: the time ratio and the relative RMS difference of the final latents, which
   carries the per-step difference through every step of the sampler.

The relative RMS is ||bf16 - fp32|| / ||fp32||. On the CPU bfloat16 pays only where the CPU has
bfloat16 matrix units (AVX512-BF16 or AMX; `speed.cpu_has_bfloat16_units`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import checkpoint_folder, song_job, synchronize  # noqa: E402

from ace_step_ui.engines import pick_device  # noqa: E402
from ace_step_ui.speed import cpu_has_bfloat16_units  # noqa: E402

CONTEXT_TOKENS = 512


def relative_rms(other: torch.Tensor, reference: torch.Tensor) -> float:
    other, reference = other.float(), reference.float()
    return float(torch.linalg.vector_norm(other - reference) / torch.linalg.vector_norm(reference))


def timed(action, device: torch.device, repeats: int) -> tuple[float, object]:
    action()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        result = action()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def full_size_forward(device: torch.device, frame_counts: list[int], repeats: int) -> None:
    from ace_step_ui.v1.transformer import ACEStepTransformer, TransformerConfig

    components = json.loads((Path(__file__).resolve().parents[1] / "tests" / "fixtures" /
                             "ace_step_v1_tiny" / "full_size_keys.json").read_text())["components"]
    config = TransformerConfig.from_json(components["ace_step_transformer"]["config_json"])
    torch.manual_seed(0)
    with torch.device(device):
        model = ACEStepTransformer(config).eval().requires_grad_(False)
    models = {"float32": model}
    generator = torch.Generator().manual_seed(1)
    for frames in frame_counts:
        latents = torch.randn(1, 8, 16, frames, generator=generator).to(device)
        context = torch.randn(1, CONTEXT_TOKENS, config.inner_dim, generator=generator).to(device)
        timestep = torch.tensor([500.0], device=device)
        results = {}
        for name in ("float32", "bfloat16"):
            if name not in models:  # made after the float32 timings, from the same weights
                models[name] = copy.deepcopy(model).to(torch.bfloat16)
            dtype = getattr(torch, name)
            net = models[name]
            condition = net.condition(context.to(dtype))

            def forward() -> torch.Tensor:
                with torch.no_grad():
                    return net.decode(latents.to(dtype), torch.ones(1, frames, device=device, dtype=dtype),
                                      condition, torch.ones(1, CONTEXT_TOKENS, device=device),
                                      timestep)

            results[name] = timed(forward, device, repeats)
        (fp32_s, fp32), (bf16_s, bf16) = results["float32"], results["bfloat16"]
        print(f"full-size DiT forward, {frames} frames: float32 {fp32_s:.2f} s, bfloat16 "
              f"{bf16_s:.2f} s (ratio {bf16_s / fp32_s:.2f}); velocity relative RMS "
              f"{relative_rms(bf16, fp32):.4f}")


def tiny_song(device: torch.device, seconds: float, steps: int, work: Path) -> None:
    from ace_step_ui.v1.pipeline import V1Pipeline

    folder = checkpoint_folder("tiny", work)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipeline = V1Pipeline.load(folder, device, dtype)
        results[dtype] = timed(lambda: pipeline(song_job(seconds, steps)), device, repeats=1)
    (fp32_s, fp32), (bf16_s, bf16) = results[torch.float32], results[torch.bfloat16]
    print(f"tiny text2music {seconds:g} s, {steps} steps: float32 {fp32_s:.2f} s, bfloat16 "
          f"{bf16_s:.2f} s (ratio {bf16_s / fp32_s:.2f}); final latents relative RMS "
          f"{relative_rms(bf16.latents, fp32.latents):.4f}, audio relative RMS "
          f"{relative_rms(bf16.audio[0].samples, fp32.audio[0].samples):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, nargs="+", default=[108, 323])
    parser.add_argument("--song-seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=27)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-full", action="store_true", help="only the tiny song")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ace-step-bench")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cpu":
        print(f"CPU bfloat16 matrix units: {'yes' if cpu_has_bfloat16_units() else 'no'}; "
              f"{torch.get_num_threads()} threads")
    tiny_song(device, args.song_seconds, args.steps, args.work)
    if not args.skip_full:
        full_size_forward(device, args.frames, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
