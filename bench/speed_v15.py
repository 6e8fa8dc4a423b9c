"""How fast ACE-Step 1.5 runs here: a song per duration through our engine, split by stage.

    python bench/speed_v15.py [--size xl|tiny] [--device cpu|cuda] [--dtype auto|float32|bfloat16]
                              [--durations 10 60 240] [--steps 8] [--quick] [--compile]
                              [--memory auto|resident|offload|sequential] [--work DIR] [--json PATH]

`xl` builds the XL turbo architecture with random weights (no download) in the diffusers layout:
diffusers' `AceStepPipeline` parts at their released widths (DiT hidden 2560, 32 layers, 32 heads,
condition encoder 2048, as the XL model card gives them; a DiT MLP of 9728, which makes the
published ~4.7 B parameters; the 2 B model's condition encoder, Qwen3-Embedding-0.6B's text
encoder and the Oobleck VAE at diffusers' defaults). It is written once under --work (about 10 GB
in bfloat16) and loaded as users load it, through our engine (`v15.engine.load`). `tiny` is the
test checkpoint (`python -m ace_step_ui tiny v15`), for checking the script on a CPU.

Per duration one text2music song at the turbo preset (8 steps, no guidance) after a 2-step
warm-up, through `AceStep15Engine.generate`: wall time, real-time factor, seconds per step, the
split per stage (text encoder, condition encoder, DiT loop, VAE decode), peak RSS and CUDA max
allocated. --quick runs 10 and 240 s on a GPU (10 s on a CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import StageClock, peak_rss_mib, synchronize  # noqa: E402

from ace_step_ui.engines import pick_device  # noqa: E402
from ace_step_ui.speed import MEMORY_MODES, Speed  # noqa: E402

STAGES = ("text_encoder", "condition_encoder", "dit", "vae_decode")
TAGS = "lofi hip hop, chill, dusty vinyl, mellow rhodes, soft drums, 80 bpm"
LYRICS = "[verse]\nStreetlights hum a song we used to know\n\n[chorus]\nHold on, hold on\n"
XL_TRANSFORMER = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      encoder_hidden_size=2048, is_turbo=True, model_version="turbo")
QWEN3_EMBEDDING_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                           num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                           vocab_size=151669, max_position_embeddings=32768, rope_theta=1000000.0,
                           tie_word_embeddings=True)
WARM_UP_STEPS = 2


def write_xl_checkpoint(folder: Path, device: torch.device) -> None:
    """The XL turbo architecture with random weights, saved in bfloat16 in the diffusers layout."""
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import (AceStepAudioTokenDetokenizer,
                                                                AceStepAudioTokenizer,
                                                                AceStepConditionEncoder)
    from transformers import Qwen3Config, Qwen3Model

    from ace_step_ui.v15.tiny import _byte_level_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        parts = dict(
            transformer=AceStepTransformer1DModel(**XL_TRANSFORMER),
            condition_encoder=AceStepConditionEncoder(),
            text_encoder=Qwen3Model(Qwen3Config(**QWEN3_EMBEDDING_06B)),
            vae=AutoencoderOobleck(downsampling_ratios=[2, 4, 4, 6, 10], sampling_rate=48000),
            audio_tokenizer=AceStepAudioTokenizer(),
            audio_token_detokenizer=AceStepAudioTokenDetokenizer())
    parts = {name: part.to(torch.bfloat16) for name, part in parts.items()}
    pipe = AceStepPipeline(tokenizer=_byte_level_tokenizer(),
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=3.0),
                           **parts)
    pipe.save_pretrained(folder)


def checkpoint_folder(size: str, work: Path, device: torch.device) -> Path:
    from ace_step_ui.v15.tiny import write_tiny_checkpoint

    folder = work / f"ace-step-v15-{size}"
    done = folder / ".complete"
    if not done.exists():
        started = time.perf_counter()
        write_xl_checkpoint(folder, device) if size == "xl" else write_tiny_checkpoint(folder)
        done.write_text("")
        print(f"wrote the {size} checkpoint to {folder} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    return folder


def instrument(pipe: Any, clock: StageClock) -> None:
    clock.hook(pipe.text_encoder, "text_encoder")
    clock.hook(pipe.condition_encoder, "condition_encoder")
    clock.hook(pipe.transformer, "dit")
    clock.wrap(pipe.vae, "decode", "vae_decode")


def song(engine: Any, seconds: float, steps: int) -> Any:
    from ace_step_ui.requests import GenerateRequest

    request = GenerateRequest(tags=TAGS, lyrics=LYRICS, duration=seconds, number_of_steps=steps)
    return engine.generate(request, 0, 1, lambda step, total: None)


def measure(engine: Any, clock: StageClock, seconds: float, steps: int,
            device: torch.device) -> dict[str, Any]:
    song(engine, seconds, WARM_UP_STEPS)
    clock.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    output = song(engine, seconds, steps)
    synchronize(device)
    wall = time.perf_counter() - started
    stages = {stage: round(clock.seconds.get(stage, 0.0), 3) for stage in STAGES}
    figures = {"duration_s": seconds, "steps": steps, "wall_s": round(wall, 3),
               "realtime_factor": round(output.audio.duration_s / wall, 2),
               "s_per_step": round(clock.seconds.get("dit", 0.0) / steps, 4),
               "dit_calls": clock.calls["dit"], "stages_s": stages,
               "other_s": round(wall - sum(stages.values()), 3), "peak_rss_mib": round(peak_rss_mib())}
    if device.type == "cuda":
        figures["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("xl", "tiny"), default="xl")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 60.0, 240.0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="10 and 240 s (a CPU: 10 s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    parser.add_argument("--memory", choices=MEMORY_MODES, default="auto")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ace-step-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from ace_step_ui.v15.engine import load

    device = pick_device(args.device)
    durations = args.durations
    if args.quick:
        durations = [10.0] if device.type == "cpu" else [10.0, 240.0]
    folder = checkpoint_folder(args.size, args.work, device)
    started = time.perf_counter()
    engine = load(folder, str(folder), str(device), args.dtype,
                  Speed(compile=args.compile, memory=args.memory))
    synchronize(device)
    load_s = time.perf_counter() - started
    dtype = str(engine.pipe.transformer.dtype).replace("torch.", "")
    parameters = sum(p.numel() for p in engine.pipe.transformer.parameters())
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device), "dtype": dtype,
                    **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})},
        "size": args.size, "load_s": round(load_s, 2), "compile": args.compile,
        "transformer_parameters_m": round(parameters / 1e6, 1), "runs": []}
    print(f"{args.size} 1.5 on {device} ({dtype}{', compiled' if args.compile else ''}): loaded in "
          f"{load_s:.2f} s, DiT {parameters / 1e6:.0f} M parameters")
    clock = StageClock(device)
    instrument(engine.pipe, clock)
    for seconds in durations:
        figures = measure(engine, clock, seconds, args.steps, device)
        report["runs"].append(figures)
        stages = " ".join(f"{stage} {value:.2f}" for stage, value in figures["stages_s"].items())
        print(f"{seconds:>5g} s  {args.steps} steps  wall {figures['wall_s']:.2f} s  "
              f"RTF {figures['realtime_factor']}x  {figures['s_per_step']:.3f} s/step  [{stages} "
              f"other {figures['other_s']:.2f}]  peak RSS {figures['peak_rss_mib']} MiB"
              + (f"  CUDA max {figures['cuda_max_allocated_mib']} MiB"
                 if "cuda_max_allocated_mib" in figures else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
