"""One full-size v1 DiT step, this checkout against another (e.g. an older commit), in one run.

    python bench/dit_forward.py [--frames 108 323] [--context 512] [--repeats 3]
                                [--against DIR] [--threads N]

Each checkout's `ACEStepTransformer` is built at the released size (the config in
tests/fixtures/ace_step_v1_tiny/full_size_keys.json) with random float32 weights, in a fresh
Python per checkout and frame count, and times `decode` (one conditional forward at a mid
timestep, after a warm-up) on `frames` latent frames and a condition of `--context` tokens. Where
the checkout prepares the condition once per song (`ACEStepTransformer.condition`), that is done
before the clock starts, as a song does it once for all its steps. The checkouts alternate, and
the medians and their ratio print per frame count; the ratio is the figure that holds across
machines. `--against` names the other checkout (`git worktree add /tmp/old <commit>`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "fixtures" / "ace_step_v1_tiny" / "full_size_keys.json"

CHILD = r"""
import json, sys, time, torch
repo, frames, context, repeats, threads, config_path = sys.argv[1:7]
sys.path.insert(0, repo)
if int(threads):
    torch.set_num_threads(int(threads))
from ace_step_ui.v1.transformer import ACEStepTransformer, TransformerConfig
from ace_step_ui.v1.weights import build_on_meta
config = json.loads(open(config_path).read())["components"]["ace_step_transformer"]["config_json"]
model = build_on_meta(lambda: ACEStepTransformer(TransformerConfig.from_json(config)))
model = model.to_empty(device="cpu").eval().requires_grad_(False)
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
frames, context = int(frames), int(context)
latents = torch.randn(1, 8, 16, frames, generator=generator)
mask = torch.ones(1, frames)
states = torch.randn(1, context, model.config.inner_dim, generator=generator)
states_mask = torch.ones(1, context)
timestep = torch.tensor([500.0])
condition = model.condition(states) if hasattr(model, "condition") else states
times = []
with torch.no_grad():
    for run in range(int(repeats) + 1):
        started = time.perf_counter()
        model.decode(latents, mask, condition, states_mask, timestep)
        if run:
            times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def time_decode(repo: Path, frames: int, context: int, repeats: int, threads: int) -> list[float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(frames), str(context),
                           str(repeats), str(threads), str(CONFIG)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[108, 323])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the checkouts")
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    checkouts = {"this": REPO, **({"against": args.against} if args.against else {})}
    for frames in args.frames:
        times: dict[str, list[float]] = {name: [] for name in checkouts}
        for _ in range(args.rounds):
            for name, repo in checkouts.items():
                times[name] += time_decode(repo, frames, args.context, args.repeats, args.threads)
        medians = {name: statistics.median(values) for name, values in times.items()}
        line = "  ".join(f"{name} {median:.3f} s" for name, median in medians.items())
        ratio = (f"  this/against {medians['this'] / medians['against']:.3f}"
                 if "against" in medians else "")
        print(f"{frames} frames, {args.context} condition tokens: {line}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
