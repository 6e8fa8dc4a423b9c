"""`python -m ace_step_ui`: the hosted CLI's shape, running the models in-process.

    python -m ace_step_ui run generate --input '{"tags": "lofi"}' --output-dir out
    python -m ace_step_ui run inpaint --input @request.json --output-dir out --format flac
    python -m ace_step_ui tiny v15 DIR

Exit codes follow the hosted CLI: 0 success, 64 bad arguments, 65 input that fails validation,
69 a model that cannot be loaded, 130 stopped. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from . import tasks
from .audio import FORMATS
from .engines import DEFAULT_MODEL, DTYPES, EngineManager
from .errors import Cancelled, InputError, ModelUnavailableError
from .requests import TASKS

EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_UNAVAILABLE, EXIT_STOPPED = 0, 64, 65, 69, 130


class UsageError(Exception):
    """Bad command-line arguments: exit 64 with one line."""


class UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; the hosted CLI uses 64
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="python -m ace_step_ui", description="ACE-Step Playground command line")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=UsageParser)
    run = commands.add_parser("run", help="run generate, inpaint or outpaint")
    run.add_argument("task", choices=TASKS)
    run.add_argument("--input", required=True, help="the request as JSON, or @file.json")
    run.add_argument("--output-dir", required=True, type=Path)
    run.add_argument("--model", default=DEFAULT_MODEL, help="Hub model id or checkpoint folder")
    run.add_argument("--format", default="wav", choices=FORMATS)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    run.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    tiny = commands.add_parser("tiny", help="write a tiny random-weight checkpoint, offline")
    tiny.add_argument("family", choices=("v15",))
    tiny.add_argument("folder", type=Path)
    tiny.add_argument("--variant", default="turbo", choices=("turbo", "base"))
    return parser


def read_input(value: str) -> Any:
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as error:
            raise UsageError(f"--input: cannot read {value[1:]}: {error.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise InputError(f"--input is not valid JSON: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "tiny":
            from .v15.tiny import write_tiny_checkpoint

            print(write_tiny_checkpoint(args.folder, args.variant))
            return EXIT_OK
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
    except (Cancelled, KeyboardInterrupt):
        print("stopped", file=sys.stderr)
        return EXIT_STOPPED


def run_command(args: argparse.Namespace) -> int:
    payload = read_input(args.input)
    manager = EngineManager(device=args.device, dtype=args.dtype)
    result = tasks.run(args.task, payload, manager, args.model, on_step=_print_step)
    path = tasks.save_result(result, args.output_dir, args.format)
    print(path)
    return EXIT_OK


def _print_step(step: int, total: int) -> None:
    print(f"\rstep {step}/{total}", end="\n" if step == total else "", file=sys.stderr, flush=True)
