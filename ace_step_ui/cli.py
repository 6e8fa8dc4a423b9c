"""`python -m ace_step_ui`: the hosted CLI's shape, running the models in-process.

    python -m ace_step_ui run generate --input '{"tags": "lofi"}' --output-dir out
    python -m ace_step_ui run inpaint --input @request.json --output-dir out --format flac
    python -m ace_step_ui run edit --input @edit.json --output-dir out --save-latents
    python -m ace_step_ui run prompt-to-audio --input '{"prompt": "a song about rain"}' --output-dir out
    python -m ace_step_ui run acestep-ai/ace-step/audio-inpaint --input @request.json --output-dir out
    python -m ace_step_ui run fal-ai/ace-step --input '{"tags": "lofi"}' --output-dir out --json
    python -m ace_step_ui recipe take.recipe.json --output-dir out --source song.wav --check
    python -m ace_step_ui tiny v1 DIR      (or: tiny v15 DIR --variant base, tiny planner DIR)

`recipe` replays a recipe saved from the studio's history (history.py), one line a step; with
--check it exits 1 when a step's samples differ from the recorded ones.

Exit codes follow the hosted CLI: 0 success, 64 bad arguments, 65 input that fails validation,
69 a model that cannot be loaded, 73 a result that cannot be written, 130 stopped. Errors are one
line on stderr. An existing result is kept (the new one gets the next free name) unless --overwrite.
A hosted model id (RunComfy's, fal's or WaveSpeed's) names the task and the model family: the
`ace-step-1.5` ids run ACE-Step 1.5. With --json the hosted output is printed: {"audio": {"url",
"content_type", "file_name", "file_size"}, "seed", "tags", "lyrics", "params"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from . import history, speed, tasks
from .audio import FORMATS
from .engines import (DEFAULT_MODEL, DEFAULT_PLANNER, DTYPES, HUB_PLANNERS, EngineManager,
                      families, family_for, pick_device)
from .errors import Cancelled, InputError, ModelUnavailableError
from .hosted import example_ids, fal_output, is_model_id, parse_model_id
from .requests import TASKS

EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_UNAVAILABLE, EXIT_STOPPED = 0, 64, 65, 69, 130
EXIT_CANTCREAT = 73  # sysexits.h, like the others
EXIT_DIFFERENT = 1  # recipe --check: a step's samples differ from the recorded ones


class UsageError(Exception):
    """Bad command-line arguments: exit 64 with one line."""


class CannotWrite(Exception):
    """The result could not be written (a full disk, no permission): exit 73 with one line."""


class UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; the hosted CLI uses 64
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="python -m ace_step_ui", description="ACE-Step Playground command line")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=UsageParser)
    names = [cli_name(task) for task in TASKS]
    run = commands.add_parser("run", help=f"run {', '.join(names[:-1])} or {names[-1]}")
    run.add_argument("task", type=task_name, metavar="TASK",
                     help=f"{', '.join(names)}, or a hosted model id such as "
                          f"{example_ids()[1]}")
    run.add_argument("--input", required=True, help="the request as JSON, or @file.json")
    run.add_argument("--output-dir", required=True, type=Path)
    run.add_argument("--model", default=None,
                     help=f"Hub model id or checkpoint folder (default {DEFAULT_MODEL}, or for a "
                          f"hosted ace-step-1.5 id the default ACE-Step 1.5 model)")
    run.add_argument("--format", default="wav", choices=FORMATS,
                     help="wav (32-bit float) and flac (24-bit; exact for 16- and 24-bit sources) keep "
                          "the audio outside an edited range bit-exact; mp3 (320 kbps) is lossy")
    add_engine_arguments(run)
    run.add_argument("--save-latents", action="store_true",
                     help="also write the final diffusion latents as <stem>.latents.safetensors "
                          "(ACE-Step v1)")
    run.add_argument("--json", action="store_true",
                     help="print the hosted output JSON (the audio's file:// URL, content type, "
                          "name and size, the seed, tags, lyrics and params) instead of the path")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a result of the same name (by default it is kept and the new "
                          "one is written as <stem>-2, <stem>-3, ...)")
    recipe = commands.add_parser("recipe", help="replay a recipe saved from the studio's history")
    recipe.add_argument("file", type=Path, metavar="FILE.json")
    recipe.add_argument("--output-dir", type=Path, default=Path("."),
                        help="where each step's result is written (default: this folder)")
    recipe.add_argument("--source", type=Path, action="append", default=[], metavar="PATH",
                        help="an uploaded file the recipe starts from, found by its bytes; repeat "
                             "for several")
    recipe.add_argument("--model", default=None,
                        help="Hub model id or checkpoint folder to run every step on (default: "
                             "each step's recorded model)")
    add_engine_arguments(recipe)
    recipe.add_argument("--check", action="store_true",
                        help="exit 1 when a step's samples differ from the recorded ones")
    tiny = commands.add_parser("tiny", help="write a tiny random-weight checkpoint, offline")
    tiny.add_argument("family", choices=("v1", "v15", "planner"),
                      help="planner: the 5 Hz LM of ACE-Step 1.5")
    tiny.add_argument("folder", type=Path)
    tiny.add_argument("--variant", choices=("turbo", "base"), help="v15 only (default turbo)")
    return parser


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the `EngineManager` that runs the models (see `engine_manager`)."""
    parser.add_argument("--planner", default=DEFAULT_PLANNER, metavar="ID_OR_FOLDER",
                        help="the 5 Hz LM that writes prompt-to-audio songs and thinks (ACE-Step "
                             f"1.5 thinking): {', '.join(HUB_PLANNERS)}, a Hub repo id or a folder "
                             f"(default {DEFAULT_PLANNER})")
    parser.add_argument("--device", default="auto", type=device_option,
                        help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="auto: float32 on the CPU, bfloat16 on CUDA; on CPUs with bfloat16 "
                             "units (AVX512-BF16, AMX) bfloat16 runs songs of 30 s and more about "
                             "1.7x faster")
    speed.add_arguments(parser)


def engine_manager(args: argparse.Namespace) -> EngineManager:
    manager = EngineManager(device=args.device, dtype=args.dtype, planner=args.planner,
                            speed=speed.from_arguments(args))
    speed.set_cpu_threads()
    return manager


def cli_name(task: str) -> str:
    return task.replace("_", "-")  # prompt-to-audio, as the hosted model ids spell it


def task_name(value: str) -> str:
    """Our task name (either spelling), or a hosted model id as it is."""
    if is_model_id(value):
        try:
            parse_model_id(value)
        except InputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value.strip().strip("/")
    if value.replace("-", "_") in TASKS:
        return value.replace("-", "_")
    raise argparse.ArgumentTypeError(
        f"invalid choice: '{value}' (choose from {', '.join(cli_name(task) for task in TASKS)}, or "
        f"a hosted model id such as {example_ids()[1]})")


def task_and_model(target: str, model: str | None) -> tuple[str, str]:
    """The task to run and the model to run it on. A hosted id names the family; the model is
    --model when it is of that family, else the family's default."""
    if not is_model_id(target):
        return target, model or DEFAULT_MODEL
    hosted = parse_model_id(target)
    if model is None:
        family = next(family for family in families() if family.name == hosted.family)
        return hosted.task, family.hub_ids[0]
    if family_for(model).name != hosted.family:
        raise UsageError(f"python -m ace_step_ui run: {target} runs {hosted.family}, but --model "
                         f"{model} is {family_for(model).name}")
    return hosted.task, model


def device_option(value: str) -> str:
    """A --device this machine has, checked before any work (engines pick it at model load)."""
    try:
        pick_device(value)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def read_input(value: str) -> Any:
    text: str | bytes = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_bytes()  # bytes: json detects UTF-8/16/32 itself
        except OSError as error:
            raise UsageError(f"--input: cannot read {value[1:]}: {error.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as error:  # UnicodeDecodeError is one too
        raise InputError(f"--input is not valid JSON: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "tiny":
            return tiny_command(args)
        if args.command == "recipe":
            return recipe_command(args)
        return run_command(args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA
    except ModelUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CannotWrite as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANTCREAT
    except (Cancelled, KeyboardInterrupt):
        print("stopped", file=sys.stderr)
        return EXIT_STOPPED


def run_command(args: argparse.Namespace) -> int:
    task, model = task_and_model(args.task, args.model)
    payload = read_input(args.input)
    check_output_dir(args.output_dir)
    manager = engine_manager(args)
    progress = Progress()
    result = tasks.run(task, payload, manager, model, on_step=progress.step,
                       need_latents=args.save_latents, on_phase=progress.phase)
    try:
        path = tasks.save_result(result, args.output_dir, args.format,
                                 save_latents=args.save_latents, overwrite=args.overwrite)
    except OSError as error:
        raise CannotWrite(f"could not write the result in {args.output_dir}: "
                          f"{error.strerror or error}") from None
    if args.json:
        output = fal_output(path, path.resolve().as_uri(), result.seed, result.params)
        if args.save_latents:
            output["latents"] = {"url": tasks.latents_path(path).resolve().as_uri()}
        print(json.dumps(output, ensure_ascii=False))
        return EXIT_OK
    print(path)
    if args.save_latents:
        print(tasks.latents_path(path))
    return EXIT_OK


def recipe_command(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_bytes()
    except OSError as error:
        raise UsageError(f"python -m ace_step_ui recipe: cannot read {args.file}: "
                         f"{error.strerror or error}") from None
    try:
        recipe = json.loads(text)
    except ValueError as error:
        raise InputError(f"{args.file} is not valid JSON: {error}") from None
    check_output_dir(args.output_dir)
    sources = {}
    for path in args.source:
        try:
            sources[history.sha256_file(path)] = path
        except OSError as error:
            raise UsageError(f"--source: cannot read {path}: {error.strerror or error}") from None
    history.check_recipe(recipe)  # before the engine manager: a bad file says so at once
    manager = engine_manager(args)
    progress = Progress()
    same = True
    try:
        for step in history.replay_steps(recipe, manager, out_dir=args.output_dir,
                                         model_override=args.model, sources=sources,
                                         on_step=progress.step, on_phase=progress.phase):
            recorded = recipe["steps"][step["step"]].get("samples_sha256")
            verdict = ("same samples" if step["same"] else
                       "different samples" if recorded else "no recorded samples")
            print(f"step {step['step']}: {step['path']} (seed {step['seed']}, {verdict})", flush=True)
            same = same and step["same"]
    except OSError as error:
        raise CannotWrite(f"could not write the result in {args.output_dir}: "
                          f"{error.strerror or error}") from None
    return EXIT_DIFFERENT if args.check and not same else EXIT_OK


def check_output_dir(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output-dir: {folder} is a file, not a folder")


def tiny_command(args: argparse.Namespace) -> int:
    if args.family != "v15" and args.variant is not None:
        raise UsageError("python -m ace_step_ui tiny: --variant applies to v15 only")
    if args.family == "v1":
        from .v1 import vocab
        from .v1.tiny import add_lyric_vocab, write_tiny_checkpoint as write_v1

        folder = write_v1(args.folder)
        copied = add_lyric_vocab(folder)
        if copied:
            print(f"copied the lyric vocabulary beside the checkpoint: {copied}", file=sys.stderr)
        else:
            print(f"{folder} has no lyric vocabulary ({vocab.VOCAB_ENV} is unset and the Hugging Face "
                  f"cache has none); to generate with it, get it once with `hf download "
                  f"{vocab.VOCAB_REPO} {vocab.VOCAB_FILE} --repo-type {vocab.VOCAB_REPO_TYPE}` or copy "
                  f"upstream's vocab.json to {folder / vocab.BESIDE_CHECKPOINT}", file=sys.stderr)
        print(folder)
    elif args.family == "planner":
        from .v15.planner import make_tiny_planner

        print(make_tiny_planner(args.folder))
    else:
        from .v15.tiny import write_tiny_checkpoint as write_v15

        print(write_v15(args.folder, args.variant or "turbo"))
    return EXIT_OK


class Progress:
    """Progress on stderr, one line a phase: "token N/M" while the planner writes, "step N/M"
    while the model denoises."""

    def __init__(self) -> None:
        self.unit = "step"

    def phase(self, name: str) -> None:
        self.unit = "token" if name == tasks.PLANNING else "step"

    def step(self, step: int, total: int) -> None:
        print(f"\r{self.unit} {step}/{total}", end="\n" if step == total else "", file=sys.stderr,
              flush=True)
