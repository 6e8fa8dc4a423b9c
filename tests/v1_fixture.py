"""The ACE-Step v1 parity fixture (../shared/fixtures/ace_step_v1_tiny/): its checkpoint and its cases.

The checkpoint is stored as a recipe; `materialise` follows the fixture README's rule exactly and
checks every tensor against the manifest's sha256. Fixture data is read in place, never copied into
the repository.
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

FIXTURE_PATH = Path("shared") / "fixtures" / "ace_step_v1_tiny"


def find_fixture() -> Path:
    """`ACE_STEP_V1_FIXTURE`, else ../shared/fixtures/ace_step_v1_tiny next to the checkout (or
    above it, for a clone in a subfolder)."""
    if os.environ.get("ACE_STEP_V1_FIXTURE"):
        return Path(os.environ["ACE_STEP_V1_FIXTURE"])
    repo = Path(__file__).resolve().parents[1]
    for folder in repo.parents:
        if (folder / FIXTURE_PATH / "manifest.json").is_file():
            return folder / FIXTURE_PATH
    raise FileNotFoundError(f"the v1 parity fixture ../{FIXTURE_PATH} was not found above {repo}; "
                            f"set ACE_STEP_V1_FIXTURE to its folder")


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
