"""Find an ACE-Step v1 checkpoint: the Hub id, a folder in the official layout, or a Hub-cache folder.

The official layout (`ACE-Step/ACE-Step-v1-3.5B`) is four folders, one per model, each with its
`config.json`; `FILES` lists exactly what the pipeline reads, and nothing else is downloaded. Upstream's
`--checkpoint_path` convention (a folder holding `models--ACE-Step--ACE-Step-v1-3.5B/`) works too.
"""

from __future__ import annotations

from pathlib import Path

from ..engines import read_json
from ..errors import ModelUnavailableError
from ..hub import download, local_checkpoint, require_files, snapshot_in_cache_layout
from .vocab import lyric_vocab_path

HUB_ID = "ACE-Step/ACE-Step-v1-3.5B"
TRANSFORMER = "ace_step_transformer"
AUTOENCODER = "music_dcae_f8c8"
VOCODER = "music_vocoder"
TEXT_ENCODER = "umt5-base"
COMPONENTS = (TRANSFORMER, AUTOENCODER, VOCODER, TEXT_ENCODER)
WEIGHTS = {TRANSFORMER: "diffusion_pytorch_model.safetensors",
           AUTOENCODER: "diffusion_pytorch_model.safetensors",
           VOCODER: "diffusion_pytorch_model.safetensors",
           TEXT_ENCODER: "model.safetensors"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FILES = tuple(f"{component}/{name}" for component in COMPONENTS
              for name in ("config.json", WEIGHTS[component])) + tuple(
    f"{TEXT_ENCODER}/{name}" for name in TOKENIZER_FILES)
TRANSFORMER_CLASS = "ACEStepTransformer2DModel"


def is_checkpoint(folder: Path) -> bool:
    root = checkpoint_root(folder)
    return root is not None and (
        read_json(root / TRANSFORMER / "config.json").get("_class_name") == TRANSFORMER_CLASS
        or all((root / component).is_dir() for component in COMPONENTS))


def checkpoint_root(folder: Path) -> Path | None:
    """The folder holding the four component folders, for any of the accepted layouts."""
    root = local_checkpoint(str(folder))
    if root is None:
        return None
    if not (root / TRANSFORMER).is_dir():
        nested = snapshot_in_cache_layout(root / ("models--" + HUB_ID.replace("/", "--")))
        if nested is not None:
            return nested
    return root


def resolve(model: str) -> Path:
    """The complete local checkpoint folder of `model`, downloading exactly `FILES` for a Hub id."""
    root = checkpoint_root(Path(model).expanduser())
    if root is None:
        root = download(model, allow_patterns=FILES)
    require_files(root, FILES, model, describe=_describe_missing)
    if read_json(root / TRANSFORMER / "config.json").get("_class_name") not in (TRANSFORMER_CLASS, None):
        raise ModelUnavailableError(f"{model}: {TRANSFORMER}/config.json does not describe an "
                                    f"{TRANSFORMER_CLASS}; is this an ACE-Step v1 checkpoint?")
    lyric_vocab_path(root)  # fetched (or found missing) now, before another model is unloaded
    return root


def _describe_missing(missing: list[str]) -> str:
    folders = sorted({name.split("/")[0] for name in missing})
    return (f"Missing from folder(s) {', '.join(folders)}: a partial download? Run "
            f"`hf download {HUB_ID}` again (it resumes), or copy the whole folder.")
