"""The lyric vocabulary of ACE-Step v1, which is not part of the model's Hugging Face checkpoint.

Upstream ships it inside its GitHub package (`acestep/models/lyrics_utils/vocab.json`); the official
Space `ACE-Step/ACE-Step` carries the same file. We look for it, in this order: the file named by
ACE_STEP_LYRIC_VOCAB, `<checkpoint>/lyrics_utils/vocab.json`, the Space's file in the Hugging Face
cache, then the Space itself (downloaded once into that cache). Whatever is found must be
byte-identical to upstream's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ModelUnavailableError
from ..hub import hub_reachable

VOCAB_REPO = "ACE-Step/ACE-Step"
VOCAB_REPO_TYPE = "space"
VOCAB_FILE = "models/lyrics_utils/vocab.json"
VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"
VOCAB_ENV = "ACE_STEP_LYRIC_VOCAB"
BESIDE_CHECKPOINT = Path("lyrics_utils") / "vocab.json"

_HOW_TO_GET = (f"Get it once with `hf download {VOCAB_REPO} {VOCAB_FILE} --repo-type {VOCAB_REPO_TYPE}` "
               f"(or take acestep/models/lyrics_utils/vocab.json from github.com/ace-step/ACE-Step) "
               f"and, for a copy outside the Hugging Face cache, set {VOCAB_ENV} to its path.")


def lyric_vocab_path(checkpoint_root: Path | None = None) -> Path:
    """The verified lyric vocabulary file; ModelUnavailableError (saying how to get it) when there is none."""
    if os.environ.get(VOCAB_ENV):
        return _from_environment()
    if checkpoint_root is not None and (Path(checkpoint_root) / BESIDE_CHECKPOINT).is_file():
        return _verified(Path(checkpoint_root) / BESIDE_CHECKPOINT)
    return _from_cache() or _verified(_from_hub())


def local_lyric_vocab() -> Path | None:
    """The verified vocabulary named by ACE_STEP_LYRIC_VOCAB, else the Hugging Face cache's copy,
    found without the network; None when neither has one."""
    return _from_environment() if os.environ.get(VOCAB_ENV) else _from_cache()


def _from_environment() -> Path:
    path = Path(os.environ[VOCAB_ENV]).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"{VOCAB_ENV} is set to {path}, which is not a file. Point it at ACE-Step v1's lyric "
            f"vocabulary (vocab.json) or unset it. {_HOW_TO_GET}")
    return _verified(path)


def _from_cache() -> Path | None:
    """The cached copy, without asking the Hub for a newer one: only one file is ever accepted."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(VOCAB_REPO, VOCAB_FILE, repo_type=VOCAB_REPO_TYPE)
    return _verified(Path(cached)) if isinstance(cached, str) else None


def _from_hub() -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    if not hub_reachable(VOCAB_REPO, VOCAB_REPO_TYPE):
        raise ModelUnavailableError(
            f"ACE-Step v1's lyric vocabulary ({VOCAB_FILE} of the Space {VOCAB_REPO}) is not in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached (no network, or "
            f"HF_HUB_OFFLINE is set). {_HOW_TO_GET}")
    try:
        return Path(hf_hub_download(VOCAB_REPO, VOCAB_FILE, repo_type=VOCAB_REPO_TYPE))
    except (HfHubHTTPError, OSError) as error:
        raise ModelUnavailableError(
            f"ACE-Step v1's lyric vocabulary could not be downloaded from the Space {VOCAB_REPO} "
            f"({error}). {_HOW_TO_GET}") from None


def _verified(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != VOCAB_SHA256:
        raise ModelUnavailableError(
            f"{path} is not ACE-Step v1's lyric vocabulary: its sha256 is {digest}, expected "
            f"{VOCAB_SHA256} (a partial download or another vocab.json). Replace it with the original "
            f"file (add --force-download to replace a damaged cached copy). {_HOW_TO_GET}")
    return path
