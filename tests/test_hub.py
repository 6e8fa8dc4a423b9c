"""hub.py without a network: the CLI answers in one line, at once, instead of retrying for half a minute."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATE = ("run", "generate", "--input", '{"tags": "x", "duration": 2}')
FIXES = {"model": "hf download ACE-Step/ACE-Step-v1-3.5B",
         "vocabulary": "hf download ACE-Step/ACE-Step models/lyrics_utils/vocab.json --repo-type space"}


def cli_without_the_hub(tmp_path: Path, endpoint: str, *args, **env):
    """The CLI as a user runs it: HF_HUB_OFFLINE unset, a fresh empty HF_HOME, the Hub at `endpoint`;
    returns the finished process and its seconds."""
    unset = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ACE_STEP_LYRIC_VOCAB")
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    environment.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint, **env)
    started = time.monotonic()
    command = [sys.executable, "-m", "ace_step_ui", *map(str, args), "--output-dir", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("missing", ["model", "vocabulary"])
def test_without_a_network_the_error_is_one_line_within_seconds(missing, v1_fixture_root, tmp_path):
    # A refused connection fails like a machine without network (its DNS lookup fails at once),
    # and downloads nothing where there is a network.
    model = ["--model", v1_fixture_root / "checkpoint"] if missing == "vocabulary" else []
    done, seconds = cli_without_the_hub(tmp_path, f"http://127.0.0.1:{closed_port()}", *GENERATE, *model)
    assert done.returncode == 69, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert FIXES[missing] in done.stderr
    assert seconds < 15  # huggingface_hub alone retries for ~25 s, printing 11 lines


def test_a_hub_that_never_answers_times_out(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connections queue up, unanswered
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        done, seconds = cli_without_the_hub(tmp_path, endpoint, *GENERATE, HF_HUB_ETAG_TIMEOUT="1")
    assert done.returncode == 69, done.stderr
    assert len(done.stderr.splitlines()) == 1 and FIXES["model"] in done.stderr
    assert seconds < 30  # snapshot_download alone would wait without a timeout
