"""Start the ACE-Step Playground: read the options, build the UI, launch.

    python app.py [--model ID_OR_FOLDER] [--models ID_OR_FOLDER ...] [--planner ID_OR_FOLDER]
                  [--allow-path DIR] [--data-dir DIR] [--api-key KEY] [--api-key-file FILE]
                  [--api-queue-limit N] [--result-retention HOURS] [--history-days DAYS]
                  [--share] [--auth user:pass] [--server-name HOST] [--port N]
                  [--device auto|cpu|cuda|mps] [--dtype auto|float32|bfloat16|float16]

Models load on the first request, so the app starts even when the model is not downloaded yet.
Visitors choose among the models listed here, and name no file on this machine outside the
--allow-path folders. The hosted services' REST queues (RunComfy, fal and WaveSpeed shapes) run on
the same server; their jobs and results live under --data-dir and survive a restart, as do the
page's takes (its history).
"""

from __future__ import annotations

from ace_step_ui import gpu  # noqa: F401  (imports `spaces` before torch, as ZeroGPU requires)

import os
import sys
from pathlib import Path

from ace_step_ui import speed
from ace_step_ui.cli import EXIT_USAGE, UsageError, UsageParser
from ace_step_ui.engines import (DEFAULT_MODEL, DEFAULT_PLANNER, DTYPES, HUB_PLANNERS, EngineManager,
                                 known_models, pick_device, pick_dtype)
from ace_step_ui.errors import InputError, ModelUnavailableError
from ace_step_ui.history import HISTORY_DAYS
from ace_step_ui.rest import QUEUE_LIMIT, RETENTION_HOURS


def api_keys(args) -> tuple[str, ...]:
    """The --api-key values and the keys in --api-key-file, each checked."""
    keys = list(args.api_key)
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"app.py: --api-key-file: cannot read {args.api_key_file}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for key in keys:
        if not key or any(char.isspace() for char in key):
            raise UsageError("app.py: an API key must be one word without spaces")
    return tuple(dict.fromkeys(keys))


def credentials(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UsageError(f"app.py: --auth must be user:password, not {value!r}")
    return user, password


def build_parser() -> UsageParser:
    parser = UsageParser(prog="app.py", description="ACE-Step Playground web app")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"Hub model id or checkpoint folder (default {DEFAULT_MODEL})")
    parser.add_argument("--models", nargs="+", default=None, metavar="ID_OR_FOLDER",
                        help="the other models visitors may choose (default: the official "
                             "ACE-Step v1 and 1.5 models)")
    parser.add_argument("--planner", default=DEFAULT_PLANNER, metavar="ID_OR_FOLDER",
                        help="the 5 Hz LM that writes prompt-to-audio songs and thinks for "
                             f"ACE-Step 1.5: {', '.join(HUB_PLANNERS)}, a Hub repo id or a "
                             f"folder (default {DEFAULT_PLANNER}; it loads on first use)")
    parser.add_argument("--allow-path", action="append", default=[], type=Path, metavar="DIR",
                        help="a folder whose files visitors may name as audio or LoRA (repeat "
                             "for more); by default they may only upload files or give URLs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto",
                        choices=("auto", *DTYPES),
                        help="auto: float32 on the CPU, bfloat16 on CUDA (float16 where it lacks "
                             "bfloat16)")
    speed.add_arguments(parser)
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="where the REST jobs, their fetched sources and their results live "
                             "(default ~/.cache/ace-step-playground)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="require this key on the REST routes (repeat for more); without "
                             "keys they are open, as the Gradio API is")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                        help="a file of API keys, one a line (# starts a comment)")
    parser.add_argument("--api-queue-limit", type=int, default=QUEUE_LIMIT, metavar="N",
                        help=f"REST jobs one key may have waiting or running (default "
                             f"{QUEUE_LIMIT}); more are refused with HTTP 429")
    parser.add_argument("--result-retention", type=float, default=RETENTION_HOURS,
                        metavar="HOURS", help=f"how long finished REST jobs and their results "
                                              f"are kept (default {RETENTION_HOURS:g})")
    parser.add_argument("--history-days", type=float, default=HISTORY_DAYS, metavar="DAYS",
                        help=f"how long the page's takes are kept under --data-dir (default "
                             f"{HISTORY_DAYS:g}; 0 keeps them until deleted)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="require a login; repeat for more users")
    parser.add_argument("--server-name", default=None,
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: $GRADIO_SERVER_PORT or the first free from 7860)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        users = [credentials(value) for value in args.auth]
        keys = api_keys(args)
        if args.api_queue_limit < 1:
            raise UsageError("app.py: --api-queue-limit must be 1 or more")
        if not args.result_retention > 0:
            raise UsageError("app.py: --result-retention must be more than 0 hours")
        if not args.history_days >= 0:
            raise UsageError("app.py: --history-days must be 0 (keep) or more")
        pick_device(args.device)  # an unusable --device is a start-up error, not a first-run one
        for folder in args.allow_path:
            if not folder.is_dir():
                raise UsageError(f"app.py: --allow-path {folder} is not a folder")
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except InputError as error:
        print(f"app.py: {error}", file=sys.stderr)
        return EXIT_USAGE

    from ace_step_ui.access import RemoteAccess
    from ace_step_ui.rest import RestQueue, default_data_dir
    from ace_step_ui.ui import build_app, launch_options

    manager = EngineManager(device=args.device, dtype=args.dtype, planner=args.planner,
                            speed=speed.from_arguments(args), own_thread=True)
    speed.set_cpu_threads()
    hint = speed.bfloat16_hint(pick_device(args.device), pick_dtype(args.dtype, pick_device(args.device)))
    if hint:
        print(f"note: {hint}", file=sys.stderr)
    if os.getenv("SPACES_ZERO_GPU") == "true":
        # ZeroGPU wants the weights placed at start-up; GPU calls run in forked workers.
        try:
            manager.run(lambda: manager.get(args.model))
        except (InputError, ModelUnavailableError) as error:
            print(f"warning: {error}; it will load on the first request", file=sys.stderr)
    models = known_models() if args.models is None else args.models
    data_dir = args.data_dir or default_data_dir()
    demo = build_app(manager, args.model, models, tuple(args.allow_path), data_dir,
                     args.history_days)
    access = RemoteAccess(tuple(dict.fromkeys([args.model, *models])), tuple(args.allow_path))
    rest = RestQueue(manager, access, data_dir, keys, args.api_queue_limit,
                     args.result_retention).start()
    try:
        demo.launch(share=args.share, auth=users or None, server_name=args.server_name,
                    server_port=args.port, **launch_options(demo, rest))
    finally:
        rest.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
