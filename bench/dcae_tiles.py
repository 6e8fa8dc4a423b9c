"""The v1 DCAE on a long song: whole (upstream's way) against its convolution levels in time tiles
(`autoencoder.decode_in_tiles`, `encode_in_tiles`), peak memory and time, each in a fresh Python.

    python bench/dcae_tiles.py [--part decoder|encoder] [--size full|tiny] [--seconds 120]
                               [--device cpu|cuda] [--dtype float32|bfloat16] [--threads 2]
                               [--passes REPEATS]

Random weights at the released sizes (`full`, from tests/fixtures/ace_step_v1_tiny/full_size_keys.json)
or the test checkpoint's (`tiny`), random latents (decoder) or a random two-channel mel (encoder) of
the song's length. Each way runs once to warm up and once timed, in its own process, whose peak
memory over its level before the pass is the figure: RSS on a CPU, CUDA max allocated on a GPU.
Then the largest difference of the two outputs.

--passes REPEATS times the two ways in one process instead, alternating, medians of REPEATS passes
after a warm-up: diffusers' forward (upstream's) against ours (`run_level`'s fewer passes, and tiles
past `DCAE_TILE_FRAMES`), and says whether their outputs are the same bits.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_SIZE = REPO / "tests" / "fixtures" / "ace_step_v1_tiny" / "full_size_keys.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prepared(part: str, size: str, seconds: float, device: torch.device, dtype: torch.dtype
             ) -> tuple[torch.nn.Module, torch.Tensor, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]]:
    """The random-weight network, its random input for the song and our way of running it."""
    from ace_step_ui.v1.autoencoder import (LATENT_FRAMES_PER_SECOND, MEL_FRAMES_PER_LATENT_FRAME,
                                            build_dcae, decode_in_tiles, encode_in_tiles)
    from ace_step_ui.v1.tiny import DCAE_CONFIG

    config = (json.loads(FULL_SIZE.read_text())["components"]["music_dcae_f8c8"]["config_json"]
              if size == "full" else DCAE_CONFIG)
    torch.manual_seed(0)
    network = getattr(build_dcae(config), part).to(device, dtype).eval().requires_grad_(False)
    frames = round(seconds * LATENT_FRAMES_PER_SECOND)
    shape = ((1, 8, 16, frames) if part == "decoder"
             else (1, 2, 128, frames * MEL_FRAMES_PER_LATENT_FRAME))
    latents = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    return network, latents, decode_in_tiles if part == "decoder" else encode_in_tiles


def child(part: str, size: str, seconds: float, device_name: str, dtype_name: str, threads: int,
          way: str, output: str) -> None:
    """One way in this process: prints its time and peak, saves its output to `output`."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    network, latents, in_tiles = prepared(part, size, seconds, device, DTYPES[dtype_name])
    decode = network if way == "whole" else lambda x: in_tiles(network, x)
    with torch.no_grad():
        decode(latents[..., :512])  # warm-up, short: the peak stays the long pass's
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        before = peak_bytes(device) if device.type == "cuda" else current_rss()
        started = time.perf_counter()
        mel = decode(latents)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent = time.perf_counter() - started
    torch.save(mel.float().cpu(), output)
    print(json.dumps({"seconds": spent, "peak_over_start_mib": (peak_bytes(device) - before) / 2**20}))


def passes(args: argparse.Namespace) -> None:
    """diffusers' forward and ours in this process, alternating; medians of `args.passes`."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network, x, in_tiles = prepared(args.part, args.size, args.seconds, device, DTYPES[args.dtype])
    ways = {"diffusers": network, "ours": lambda x: in_tiles(network, x)}
    times: dict[str, list[float]] = {way: [] for way in ways}
    outputs = {}
    with torch.no_grad():
        for repeat in range(args.passes + 1):  # the first round warms up
            for way in (list(ways) if repeat % 2 == 0 else list(ways)[::-1]):
                started = time.perf_counter()
                outputs[way] = ways[way](x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat:
                    times[way].append(time.perf_counter() - started)
    theirs, ours = (statistics.median(times[way]) for way in ways)
    print(f"{args.size}-size DCAE {args.part}, {args.seconds:g} s song, {args.device}, {args.dtype}, "
          f"{args.threads} threads, medians of {args.passes}: diffusers {theirs:.3f} s, ours "
          f"{ours:.3f} s, ours / diffusers {ours / theirs:.3f}; the same bits: "
          f"{torch.equal(outputs['ours'], outputs['diffusers'])}")


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["decoder", "encoder"], default="decoder")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=0)
    args = parser.parse_args(argv)
    if args.passes:
        passes(args)
        return 0
    figures, mels = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for way in ("whole", "tiles"):
            output = str(Path(scratch) / f"{way}.pt")
            done = subprocess.run(
                [sys.executable, __file__, "--child", args.part, args.size, str(args.seconds),
                 args.device, args.dtype, str(args.threads), way, output],
                capture_output=True, text=True, check=True)
            figures[way] = json.loads(done.stdout.strip().splitlines()[-1])
            mels[way] = torch.load(output)
    print(f"{args.size}-size DCAE {args.part}, {args.seconds:g} s song, {args.device}, {args.dtype}, "
          f"{args.threads} threads")
    print("way      seconds   peak over start MiB")
    for way, figure in figures.items():
        print(f"{way:<8} {figure['seconds']:7.2f}   {figure['peak_over_start_mib']:10.0f}")
    ratio = {key: figures["tiles"][key] / figures["whole"][key] for key in figures["whole"]}
    difference = (mels["tiles"] - mels["whole"]).abs().max().item()
    print(f"tiles / whole: time {ratio['seconds']:.2f}, peak {ratio['peak_over_start_mib']:.2f}; "
          f"max |difference| {difference:.1e} (largest |value| {mels['whole'].abs().max().item():.2f})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7]),
              sys.argv[8], sys.argv[9])
    else:
        raise SystemExit(main())
