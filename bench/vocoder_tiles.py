"""The v1 vocoder on a CPU: upstream's way (each channel whole, one after the other, its ResBlocks
out of place, channels-first) against ours (both channels at once, each HiFi-GAN stage in
cache-sized time tiles, in place on each convolution's fresh output, the stages of 8-128 channels
channels-last, its weight norm folded once as the pipeline loads it), in one run.

    python bench/vocoder_tiles.py [--size full|tiny] [--seconds 10 30] [--repeats 3] [--threads 2]
                                  [--sweep] [--layouts]

Random weights (with the test checkpoint's audible gains) at the released sizes (`full`, from tests/fixtures/ace_step_v1_tiny/full_size_keys.json)
or the test checkpoint's (`tiny`), a random stereo log-mel of each length; the ways alternate and
each figure is the median of the repeats, with the largest difference of their waveforms. A third
way, ours with the weight norm computed at every call and tile (`weight_g`, `weight_v`, before
`fold_weight_norm`), gives what folding saves; it must give the folded samples bit for bit.
--sweep also times each stage alone on inputs of 2^15 to 2^22 output elements (ns per element):
how `TILE_BYTES` was chosen. --layouts times each stage alone on one tile of input in both layouts
(alternating, medians of the repeats): how `CHANNELS_LAST` was chosen.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ace_step_ui.v1.tiny import VOCODER_CONFIG, audible_gains  # noqa: E402
from ace_step_ui.v1.vocoder import (  # noqa: E402
    CHANNELS_LAST,
    TILE_BYTES,
    HiFiGANHead,
    HiFiGANVocoder,
    VocoderConfig,
    to_channels_last,
)

FULL_SIZE = REPO / "tests" / "fixtures" / "ace_step_v1_tiny" / "full_size_keys.json"
WHOLE = 2**62  # a tile budget no stage reaches


def build(size: str) -> HiFiGANVocoder:
    config = (json.loads(FULL_SIZE.read_text())["components"]["music_vocoder"]["config_json"]
              if size == "full" else VOCODER_CONFIG)
    torch.manual_seed(0)
    vocoder = HiFiGANVocoder(VocoderConfig.from_json(config)).eval().requires_grad_(False)
    audible_gains(vocoder)  # as the test checkpoint's: a signal of audible scale, not ~1e-11
    return vocoder


def upstream_way(vocoder: HiFiGANVocoder, mel: torch.Tensor) -> torch.Tensor:
    head = vocoder.head
    head.tile_bytes, head.stage = WHOLE, lambda stage, x: upstream_stage(head, stage, x)
    head.channels_last = range(0)
    try:
        return torch.cat([vocoder(mel[channel][None]) for channel in range(mel.shape[0])])
    finally:
        head.tile_bytes, head.channels_last = TILE_BYTES, CHANNELS_LAST
        del head.stage


def upstream_stage(head: HiFiGANHead, stage: int, x: torch.Tensor) -> torch.Tensor:
    """A stage with upstream's buffers: its input activation and the sum of its ResBlocks in place,
    the ResBlocks out of place (`x = xt + x`), the mean and the output activations out of place."""
    x = head.ups[stage](F.silu(x, inplace=True))  # the previous stage's whole output
    total = None
    for block in head.resblocks[stage * head.kernels_per_stage:(stage + 1) * head.kernels_per_stage]:
        y = x
        for dilated, plain in zip(block.convs1, block.convs2):
            y = plain(F.silu(dilated(F.silu(y)))) + y
        total = y if total is None else total.add_(y)
    x = total / head.kernels_per_stage
    return torch.tanh(head.conv_post(F.silu(x))) if stage == len(head.ups) - 1 else x


def timed(action, *arguments) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    result = action(*arguments)
    return time.perf_counter() - started, result


def compare(vocoder: HiFiGANVocoder, folded: HiFiGANVocoder, seconds: float, repeats: int) -> None:
    """Upstream's way (its weight norm computed at each call), ours with the weight norm computed at
    each call and tile (before `fold_weight_norm`), and ours as the pipeline loads it (folded)."""
    mel = torch.randn(2, vocoder.config.n_mels, int(seconds * vocoder.sample_rate / vocoder.config.hop_length),
                      generator=torch.Generator().manual_seed(0))
    ways = {"upstream's way": lambda mels: upstream_way(vocoder, mels), "ours, unfolded": vocoder,
            "ours": folded}
    times: dict[str, list[float]] = {name: [] for name in ways}
    outputs = {}
    for repeat in range(repeats + 1):  # the first round warms up
        for name in (list(ways) if repeat % 2 == 0 else list(ways)[::-1]):
            spent, outputs[name] = timed(ways[name], mel)
            if repeat:
                times[name].append(spent)
    theirs, unfolded, ours = (statistics.median(times[name]) for name in ways)
    difference = (outputs["ours"] - outputs["upstream's way"]).abs().max().item()
    scale = outputs["upstream's way"].abs().max().item()
    assert torch.equal(outputs["ours"], outputs["ours, unfolded"]), "folding changed the samples"
    print(f"{seconds:>6.0f} s stereo   {theirs:8.2f} s {unfolded:8.2f} s {ours:8.2f} s   "
          f"{ours / theirs:5.2f}   {ours / unfolded:5.3f}   {difference:.1e} (largest |sample| "
          f"{scale:.2f})", flush=True)


def sweep(vocoder: HiFiGANVocoder) -> None:
    head = vocoder.head
    print("\nns per output element, one stage alone at batch 2 (columns: log2 of the elements)")
    print("stage channels  " + "  ".join(f"{power:>6}" for power in range(15, 23)))
    with torch.no_grad():
        for stage, upsample in enumerate(head.ups):
            channels = upsample.out_channels
            rate = vocoder.config.upsample_rates[stage]
            row = []
            for power in range(15, 23):
                length = max(8, 2**power // (2 * channels * rate))
                x = torch.randn(2, upsample.in_channels, length)
                head.stage(stage, x)
                repeats = max(1, 2**21 // 2**power)
                started = time.perf_counter()
                for _ in range(repeats):
                    head.stage(stage, x)
                spent = (time.perf_counter() - started) / repeats
                row.append(f"{spent / (2 * channels * rate * length) * 1e9:6.1f}")
            print(f"{stage:>5} {channels:>8}  " + "  ".join(row), flush=True)


def layouts(vocoder: HiFiGANVocoder, repeats: int) -> None:
    head = vocoder.head
    print("\none stage alone on one tile of input at batch 2, ms (medians of the repeats)")
    print("stage channels  channels-first  channels-last  ratio  max |difference| / max |sample|")
    with torch.no_grad():
        for stage, upsample in enumerate(head.ups):
            channels, rate = upsample.out_channels, vocoder.config.upsample_rates[stage]
            length = max(16 * head.stage_halo(stage), TILE_BYTES // (2 * channels * rate * 4))
            x = torch.randn(2, upsample.in_channels, length, generator=torch.Generator().manual_seed(0))
            inputs = {"first": x, "last": to_channels_last(x)}
            times: dict[str, list[float]] = {name: [] for name in inputs}
            outputs = {}
            for repeat in range(repeats + 1):
                for name in (list(inputs) if repeat % 2 == 0 else list(inputs)[::-1]):
                    spent, outputs[name] = timed(head.stage, stage, inputs[name])
                    if repeat:
                        times[name].append(spent)
            first, last = (statistics.median(times[name]) * 1e3 for name in inputs)
            difference = (outputs["last"] - outputs["first"]).abs().max() / outputs["first"].abs().max()
            print(f"{stage:>5} {channels:>8}  {first:14.1f}  {last:13.1f}  {last / first:5.2f}  "
                  f"{difference.item():.1e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--layouts", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocoder = build(args.size)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, {args.size}-size vocoder "
          f"(random weights), tile {vocoder.head.tile_bytes // 2**20} MiB, medians of {args.repeats}")
    folded = copy.deepcopy(vocoder).fold_weight_norm()
    print("length           upstream's way  unfolded     ours   ours/upstream's  ours/unfolded  "
          "max |difference|")
    with torch.no_grad():
        for seconds in args.seconds:
            compare(vocoder, folded, seconds, args.repeats)
    if args.sweep:
        sweep(vocoder)
    if args.layouts:
        layouts(vocoder, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
