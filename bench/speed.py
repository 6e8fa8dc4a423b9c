"""How fast ACE-Step v1 runs here: a song per duration, split by stage, with the DiT's GFLOP/s.

    python bench/speed.py [--size full|tiny] [--device cpu|cuda] [--dtype auto|float32|bfloat16]
                          [--durations 10 60 240] [--steps 27] [--quick] [--threads N]
                          [--batch-guidance on|off] [--compile]
                          [--memory auto|resident|offload|sequential]
                          [--work DIR] [--json PATH]

It builds the v1 architecture with random weights (no download), at the released sizes (`full`,
from tests/fixtures/ace_step_v1_tiny/full_size_keys.json; about 7 GB written once under --work)
or the test checkpoint's (`tiny`), writes it in the official layout and loads it as users do,
from local safetensors. Then, per duration, it runs one text2music song (the hosted defaults:
27 steps, APG guidance on the middle half, ERG on) after a 2-step warm-up, and reports:

- wall time, real-time factor (seconds of audio per second), seconds per step;
- the split per stage: text encoder (UMT5), condition encoder (lyric Conformer and embeddings),
  DiT loop, autoencoder decode, vocoder;
- peak memory: the process's peak RSS so far and, on CUDA, the run's max allocated;
- `dit_gflops`: the DiT's counted FLOPs (torch's FlopCounterMode, one call of each shape) over
  its time, and `gemm_gflops`: plain matmuls of the shapes its linear and 1x1-conv layers ran,
  timed in the same run. Their ratio holds across machines.

The fast path's switches are the app's (`--compile`, `--memory`), and `--batch-guidance off` for
upstream's separate guidance passes. Load time (checkpoint files to a ready pipeline) comes first. --quick runs 10 and 60 s (10 s
alone on a CPU) for a lent GPU's few minutes. The figures print as a table; --json writes them.
The UMT5 tokenizer is the test one (tags tokenise differently; the encoder's cost is the same
for a tags line), and the lyric vocabulary is the machine's (ACE_STEP_LYRIC_VOCAB, or the
repository's fixture folder where present).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ace_step_ui.speed import MEMORY_MODES  # noqa: E402

FULL_SIZE = REPO / "tests" / "fixtures" / "ace_step_v1_tiny" / "full_size_keys.json"
STAGES = ("text_encoder", "condition_encoder", "dit", "autoencoder_decode", "vocoder")
TAGS = "lofi hip hop, chill, dusty vinyl, mellow rhodes, soft drums, 80 bpm"
LYRICS = ("[verse]\nStreetlights hum a song we used to know\nCity in the rain and nowhere else to go\n"
          "\n[chorus]\nHold on, hold on, the night is young\nWe sing it loud until the morning comes\n")
WARM_UP_STEPS = 2
GEMM_MIN_SECONDS = 0.05  # each plain matmul shape is repeated until it has run this long
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- the checkpoint


def write_full_size_checkpoint(folder: Path) -> Path:
    """The released architecture in the official layout, random weights in each file's stored
    dtype (the transformer with its training-only tensors, as the released file has them)."""
    from safetensors.torch import save_file
    from transformers import UMT5Config

    from ace_step_ui.v1 import checkpoint
    from ace_step_ui.v1.autoencoder import build_dcae
    from ace_step_ui.v1.text_encoder import stored_umt5
    from ace_step_ui.v1.tiny import write_umt5_tokenizer
    from ace_step_ui.v1.transformer import (ACEStepTransformer, TransformerConfig,
                                            training_only_shapes)
    from ace_step_ui.v1.vocoder import HiFiGANVocoder, VocoderConfig
    from ace_step_ui.v1.weights import build_on_meta

    components = json.loads(FULL_SIZE.read_text())["components"]
    transformer_config = TransformerConfig.from_json(components[checkpoint.TRANSFORMER]["config_json"])
    builders: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {
        checkpoint.TRANSFORMER: lambda c: ACEStepTransformer(TransformerConfig.from_json(c)),
        checkpoint.AUTOENCODER: build_dcae,
        checkpoint.VOCODER: lambda c: HiFiGANVocoder(VocoderConfig.from_json(c)),
        checkpoint.TEXT_ENCODER: lambda c: stored_umt5(UMT5Config(**c)),
    }
    generator = torch.Generator().manual_seed(0)
    for component, build in builders.items():
        config = components[component]["config_json"]
        dtype = DTYPES.get(components[component].get("storage_dtype", "float32"), torch.float32)
        shapes = {key: tuple(t.shape) for key, t in build_on_meta(lambda: build(config)).state_dict().items()}
        if component == checkpoint.TRANSFORMER:
            shapes.update(training_only_shapes(transformer_config))
        state = {key: random_tensor(key, shape, dtype, generator) for key, shape in shapes.items()}
        target = folder / component
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text(json.dumps(config, indent=2))
        save_file(state, str(target / checkpoint.WEIGHTS[component]), metadata={"format": "pt"})
        del state
    write_umt5_tokenizer(folder / checkpoint.TEXT_ENCODER)
    return folder


def random_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype,
                  generator: torch.Generator) -> torch.Tensor:
    """Weights that keep activations in range (fan-in scaled), biases zero, 1-D scales one."""
    if len(shape) <= 1:
        return (torch.zeros if key.endswith("bias") else torch.ones)(shape, dtype=dtype)
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=generator) / math.sqrt(fan_in)).to(dtype)


def checkpoint_folder(size: str, work: Path) -> Path:
    from ace_step_ui.v1.tiny import add_lyric_vocab, write_tiny_checkpoint

    folder = work / f"ace-step-v1-{size}"
    done = folder / ".complete"
    if not done.exists():
        started = time.perf_counter()
        (write_full_size_checkpoint if size == "full" else write_tiny_checkpoint)(folder)
        done.write_text("")
        print(f"wrote the {size} checkpoint to {folder} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    if add_lyric_vocab(folder) is None and not (folder / "lyrics_utils" / "vocab.json").exists():
        fixture = Path(os.environ.get("ACE_STEP_FIXTURES", REPO.parent / "shared" / "fixtures"))
        vocab = fixture / "ace_step_v1_tiny" / "lyric_vocab.json"
        if not vocab.exists():
            sys.exit("no lyric vocabulary: set ACE_STEP_LYRIC_VOCAB to upstream's vocab.json")
        os.environ["ACE_STEP_LYRIC_VOCAB"] = str(vocab)
        add_lyric_vocab(folder)
    return folder


# ---- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


class StageClock:
    """Seconds per stage, from wrappers around the pipeline's parts (synchronised on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.dit_shapes: Counter[tuple] = Counter()
        self.dit_args: dict[tuple, tuple] = {}
        self.inside: set[str] = set()

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if stage in self.inside:  # a wrapped call inside another of its stage counts once
                return original(*args, **kwargs)
            synchronize(self.device)
            started = time.perf_counter()
            self.inside.add(stage)
            try:
                result = original(*args, **kwargs)
            finally:
                self.inside.discard(stage)
            synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - started
            self.calls[stage] += 1
            if stage == "dit":
                condition = getattr(args[2], "states", args[2])  # a prepared Condition's
                shape = (tuple(args[0].shape), tuple(condition.shape))
                self.dit_shapes[shape] += 1
                self.dit_args.setdefault(shape, (args, kwargs))
            return result

        setattr(owner, name, timed)

    def hook(self, module: torch.nn.Module, stage: str) -> None:
        """The same for a submodule, through forward hooks (a module cannot be replaced by a
        function)."""
        started: list[float] = []

        def before(*_: Any) -> None:
            synchronize(self.device)
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - started.pop()
            self.calls[stage] += 1

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.dit_shapes.clear()


def instrument(pipeline: Any, clock: StageClock) -> None:
    clock.wrap(pipeline.text_encoder, "encode", "text_encoder")
    clock.wrap(pipeline.transformer, "encode", "condition_encoder")
    clock.wrap(pipeline.transformer, "encode_lyrics", "condition_encoder")
    clock.wrap(pipeline.transformer, "decode", "dit")
    clock.hook(pipeline.dcae.dcae.decoder, "autoencoder_decode")
    clock.hook(pipeline.dcae.vocoder, "vocoder")


def dit_flops_and_gemms(transformer: Any, args: tuple, kwargs: dict,
                        original_decode: Callable) -> tuple[int, Counter]:
    """FLOPs of one decode call with these arguments, and the (m, k, n) matmuls its linear and
    1x1-conv layers ran."""
    from torch.utils.flop_counter import FlopCounterMode

    gemms: Counter[tuple[int, int, int]] = Counter()

    def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(module, torch.nn.Linear):
            gemms[(x.numel() // x.shape[-1], module.in_features, module.out_features)] += 1
        elif isinstance(module, torch.nn.Conv1d) and module.kernel_size == (1,) and module.groups == 1:
            gemms[(x.shape[0] * x.shape[-1], module.in_channels, module.out_channels)] += 1

    handles = [module.register_forward_hook(record) for module in transformer.modules()
               if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d))]
    try:
        # Counted eagerly: the FLOPs are the same, and the counter does not see into compiled code.
        with (FlopCounterMode(display=False) as counter, torch.no_grad(),
              torch._dynamo.config.patch(disable=True)):
            original_decode(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return counter.get_total_flops(), gemms


def gemm_gflops(gemms: Counter, device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of plain matmuls of these shapes, weighted by how often each ran."""
    flops = seconds = 0.0
    for (m, k, n), count in gemms.items():
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm
        runs, started = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            runs += 1
            synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= GEMM_MIN_SECONDS:
                break
        flops += 2 * m * k * n * count
        seconds += elapsed / runs * count
    return flops / seconds / 1e9


# ---- the run


def song_job(seconds: float, steps: int, seed: int = 0) -> Any:
    from ace_step_ui.v1.pipeline import Sampling, V1Job, frames_of

    # The hosted defaults (requests.py), as the v1 engine turns them into a job.
    sampling = Sampling(number_of_steps=steps, tag_guidance_scale=5.0, lyric_guidance_scale=1.5)
    return V1Job(task="text2music", tags=TAGS, lyrics=LYRICS, seeds=(seed,),
                 retake_seeds=(seed + 1,), sampling=sampling, frames=max(1, frames_of(seconds)))


def measure(pipeline: Any, clock: StageClock, original_decode: Callable, seconds: float,
            steps: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    pipeline(song_job(seconds, WARM_UP_STEPS))
    clock.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    output = pipeline(song_job(seconds, steps))
    synchronize(device)
    wall = time.perf_counter() - started
    audio_seconds = output.audio[0].duration_s
    flops = 0
    gemms: Counter = Counter()
    for shape, calls in clock.dit_shapes.items():
        args, kwargs = clock.dit_args[shape]
        call_flops, call_gemms = dit_flops_and_gemms(pipeline.transformer, args, kwargs,
                                                     original_decode)
        flops += call_flops * calls
        for gemm, count in call_gemms.items():
            gemms[gemm] += count * calls
    stages = {stage: round(clock.seconds.get(stage, 0.0), 3) for stage in STAGES}
    dit_seconds = clock.seconds.get("dit", 0.0)
    figures = {
        "duration_s": seconds, "steps": steps, "wall_s": round(wall, 3),
        "realtime_factor": round(audio_seconds / wall, 2),
        "s_per_step": round(dit_seconds / steps, 4), "dit_calls": clock.calls["dit"],
        "stages_s": stages, "other_s": round(wall - sum(stages.values()), 3),
        "peak_rss_mib": round(peak_rss_mib()),
        "dit_gflops": round(flops / dit_seconds / 1e9, 1) if dit_seconds else None,
        "gemm_gflops": round(gemm_gflops(gemms, device, dtype), 1) if gemms else None,
    }
    if figures["dit_gflops"] and figures["gemm_gflops"]:
        figures["dit_over_gemm"] = round(figures["dit_gflops"] / figures["gemm_gflops"], 3)
    if device.type == "cuda":
        figures["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 60.0, 240.0])
    parser.add_argument("--steps", type=int, default=27)
    parser.add_argument("--quick", action="store_true", help="10 and 60 s (a CPU: 10 s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch-guidance", choices=("on", "off"), default="on",
                        help="the guidance passes as one batched forward (the default) or "
                             "upstream's separate forwards")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT's blocks")
    parser.add_argument("--memory", choices=MEMORY_MODES, default="auto")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ace-step-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from ace_step_ui.engines import pick_device, pick_dtype
    from ace_step_ui.speed import checkpoint_mode
    from ace_step_ui.v1 import checkpoint
    from ace_step_ui.v1.pipeline import V1Pipeline
    from ace_step_ui.v1.transformer import is_training_only

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    durations = args.durations
    if args.quick:
        durations = [10.0] if device.type == "cpu" else [10.0, 60.0]
    folder = checkpoint_folder(args.size, args.work)

    memory = checkpoint_mode(args.memory, folder, device, dtype, dit_folder=checkpoint.TRANSFORMER,
                             skip=is_training_only)
    started = time.perf_counter()
    pipeline = V1Pipeline.load(folder, device, dtype, offload=memory == "offload",
                               sequential=memory == "sequential", compile=args.compile)
    synchronize(device)
    load_s = time.perf_counter() - started
    pipeline.batch_guidance = args.batch_guidance == "on"
    parameters = sum(p.numel() for p in pipeline.transformer.parameters())
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                    **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})},
        "size": args.size, "load_s": round(load_s, 2), "memory": memory, "compile": args.compile,
        "batch_guidance": pipeline.batch_guidance,
        "transformer_parameters_m": round(parameters / 1e6, 1),
        "peak_rss_after_load_mib": round(peak_rss_mib()),
        **({"cuda_allocated_after_load_mib": round(torch.cuda.memory_allocated(device) / 2**20)}
           if device.type == "cuda" else {}),
        "runs": [],
    }
    print(f"{args.size} v1 on {device} ({report['machine']['dtype']}, {torch.get_num_threads()} "
          f"threads, {memory}, batched guidance {'on' if pipeline.batch_guidance else 'off'}"
          f"{', compiled' if args.compile else ''}): loaded in {load_s:.2f} s, transformer {parameters / 1e6:.0f} M parameters, "
          f"peak RSS {report['peak_rss_after_load_mib']} MiB")
    clock = StageClock(device)
    original_decode = pipeline.transformer.decode
    instrument(pipeline, clock)
    for seconds in durations:
        figures = measure(pipeline, clock, original_decode, seconds, args.steps, device, dtype)
        report["runs"].append(figures)
        print_row(figures)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_row(figures: dict[str, Any]) -> None:
    stages = " ".join(f"{stage} {seconds:.2f}" for stage, seconds in figures["stages_s"].items())
    print(f"{figures['duration_s']:>5g} s  {figures['steps']} steps  wall {figures['wall_s']:.2f} s  "
          f"RTF {figures['realtime_factor']}x  {figures['s_per_step']:.3f} s/step  "
          f"[{stages} other {figures['other_s']:.2f}]  peak RSS {figures['peak_rss_mib']} MiB"
          + (f"  CUDA max {figures['cuda_max_allocated_mib']} MiB"
             if "cuda_max_allocated_mib" in figures else "")
          + f"  DiT {figures['dit_gflops']} GFLOP/s vs GEMM {figures['gemm_gflops']} GFLOP/s"
          + (f" ({figures['dit_over_gemm']})" if "dit_over_gemm" in figures else ""))


if __name__ == "__main__":
    raise SystemExit(main())
