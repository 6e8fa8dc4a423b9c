"""The ACE-Step v1 parity fixture (tests/fixtures/ace_step_v1_tiny/): its checkpoint, its cases, and the
lyric vocabulary the v1 tests tokenise with.

The checkpoint is stored as a recipe; `materialise` follows the fixture README's rule exactly and
checks every tensor against the manifest's sha256. The lyric vocabulary is upstream's file, which
the repository does not carry: `lyric_vocab` finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]
IN_REPO = REPO / "tests" / "fixtures" / "ace_step_v1_tiny"
SHARED_FIXTURE = Path("shared") / "fixtures" / "ace_step_v1_tiny"  # a workspace copy, with the vocabulary
VOCAB_NAME = "lyric_vocab.json"


def find_fixture() -> Path:
    """`ACE_STEP_V1_FIXTURE` (another recording in the same format), else the repository's copy."""
    if os.environ.get("ACE_STEP_V1_FIXTURE"):
        return Path(os.environ["ACE_STEP_V1_FIXTURE"])
    return IN_REPO


FIXTURE = find_fixture()


def tensor_values(entry: dict[str, Any], fixture: Path, base_seed: int) -> numpy.ndarray:
    init = entry["init"]
    shape = tuple(entry["shape"])
    if "const" in init:
        values = numpy.full(shape, init["const"], dtype=numpy.float32)
    elif "normal" in init:
        seed = zlib.crc32(f"{entry['file']}/{entry['key']}".encode("utf-8")) ^ base_seed
        assert seed == init["seed"], f"seed rule disagrees with the manifest for {entry['key']}"
        mean, std = init["normal"]
        noise = numpy.random.default_rng(seed).standard_normal(shape, dtype=numpy.float32)
        values = numpy.float32(mean) + numpy.float32(std) * noise
    else:
        with numpy.load(fixture / init["literal"]) as literals:
            values = literals[init["entry"]]
    return values.astype(entry["dtype"])


def materialise(out: Path, fixture: Path = FIXTURE) -> Path:
    """Write the fixture's tiny checkpoint (and LoRA) under `out`; returns `out`.

    Raises AssertionError when a tensor's bytes differ from the manifest (a changed NumPy stream).
    """
    manifest = json.loads((fixture / "manifest.json").read_text())
    done = out / ".materialised"
    if done.exists() and done.read_text() == manifest_digest(fixture):
        return out
    by_file: dict[str, dict[str, numpy.ndarray]] = {}
    for entry in manifest["tensors"]:
        values = numpy.ascontiguousarray(tensor_values(entry, fixture, manifest["base_seed"]))
        digest = hashlib.sha256(values.tobytes()).hexdigest()
        assert digest == entry["sha256"], f"{entry['file']}/{entry['key']}: sha256 differs from the manifest"
        by_file.setdefault(entry["file"], {})[entry["key"]] = values
    for name, tensors in by_file.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / name), metadata=manifest["safetensors_metadata"])
    for name, text in manifest["text_files"].items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    for name, spec in manifest["copy_files"].items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixture / spec["from"], out / name)
    done.write_text(manifest_digest(fixture))
    return out


def manifest_digest(fixture: Path) -> str:
    return hashlib.sha256((fixture / "manifest.json").read_bytes()).hexdigest()


def cases(fixture: Path = FIXTURE) -> dict[str, dict[str, Any]]:
    return json.loads((fixture / "cases.json").read_text())["cases"]


def call_kwargs(case: str, checkpoint_root: Path, fixture: Path = FIXTURE) -> dict[str, Any]:
    """The case's upstream `__call__` keyword arguments with the placeholders filled in."""
    call = json.loads((fixture / case / "call.json").read_text())["call_kwargs"]
    filled = {}
    for key, value in call.items():
        if isinstance(value, str):
            value = (value.replace("$CHECKPOINT", str(checkpoint_root / "checkpoint"))
                     .replace("$LORA", str(checkpoint_root / "lora"))
                     .replace("$FIXTURE", str(fixture)))
        filled[key] = value
    return filled


def refs(case: str, fixture: Path = FIXTURE) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(fixture / case / "refs.safetensors"))


def params(case: str, fixture: Path = FIXTURE) -> dict[str, Any]:
    return json.loads((fixture / case / "params.json").read_text())


def lyric_vocab() -> Path:
    """Upstream's lyric vocabulary: ACE_STEP_LYRIC_VOCAB; else a copy in the fixture (never committed)
    or in ../shared/fixtures/ace_step_v1_tiny/ beside or above the checkout; else the Hugging Face
    cache, or the Hub where HF_HUB_OFFLINE=0 allows it. Without one the calling test fails, saying how
    to get it."""
    import pytest
    from huggingface_hub import is_offline_mode

    from ace_step_ui.errors import ModelUnavailableError
    from ace_step_ui.v1 import vocab

    copies = [FIXTURE / VOCAB_NAME] + [folder / SHARED_FIXTURE / VOCAB_NAME for folder in REPO.parents]
    if not os.environ.get(vocab.VOCAB_ENV):
        for copy in copies:
            if copy.is_file():
                digest = hashlib.sha256(copy.read_bytes()).hexdigest()
                if digest != vocab.VOCAB_SHA256:
                    pytest.fail(f"{copy} is not upstream's lyric vocabulary (its sha256 is {digest}); "
                                f"replace or remove it", pytrace=False)
                return copy
    found = problem = None
    try:
        found = vocab.local_lyric_vocab() if is_offline_mode() else vocab.lyric_vocab_path()
    except ModelUnavailableError as error:  # a wrong file, or a failed download
        problem = str(error)
    if problem:  # failed outside the handler, so pytest prints the message alone
        pytest.fail(problem, pytrace=False)
    if found is None and is_offline_mode():
        found = _download_lyric_vocab()
    if found is None:
        pytest.fail(f"the v1 tests need ACE-Step v1's lyric vocabulary (upstream's file, not in this "
                    f"repository): run `hf download {vocab.VOCAB_REPO} {vocab.VOCAB_FILE} --repo-type "
                    f"{vocab.VOCAB_REPO_TYPE}` once, or `export {vocab.VOCAB_ENV}=/path/to/vocab.json`",
                    pytrace=False)
    return found


def _download_lyric_vocab() -> Path | None:
    """The vocabulary fetched from the Hub as a user's first run does, in a process of its own
    (the tests keep HF_HUB_OFFLINE=1 so that nothing else downloads); None when that fails."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    fetch = "from ace_step_ui.v1.vocab import lyric_vocab_path; print(lyric_vocab_path())"
    done = subprocess.run([sys.executable, "-c", fetch], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    path = Path(done.stdout.strip()) if done.returncode == 0 else None
    return path if path is not None and path.is_file() else None
