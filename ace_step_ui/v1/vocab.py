"""The lyric vocabulary of ACE-Step v1, which is not part of the model's Hugging Face checkpoint.

Upstream ships it inside its GitHub package (`acestep/models/lyrics_utils/vocab.json`); the official
Space `ACE-Step/ACE-Step` carries the same file. We look for it, in this order: the file named by
ACE_STEP_LYRIC_VOCAB, `<checkpoint>/lyrics_utils/vocab.json`, then the Space through the Hugging Face
cache (downloaded once; offline, the cache only). Whatever is found must be byte-identical to upstream's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ModelUnavailableError

VOCAB_REPO = "ACE-Step/ACE-Step"
VOCAB_REPO_TYPE = "space"
VOCAB_FILE = "models/lyrics_utils/vocab.json"
VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"
VOCAB_ENV = "ACE_STEP_LYRIC_VOCAB"

_HOW_TO_GET = (f"Get it once with `hf download {VOCAB_REPO} {VOCAB_FILE} --repo-type {VOCAB_REPO_TYPE}` "
               f"(or take acestep/models/lyrics_utils/vocab.json from github.com/ace-step/ACE-Step) "
               f"and, for a copy outside the Hugging Face cache, set {VOCAB_ENV} to its path.")


def lyric_vocab_path(checkpoint_root: Path | None = None) -> Path:
    """The verified lyric vocabulary file; ModelUnavailableError (saying how to get it) when there is none."""
    override = os.environ.get(VOCAB_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(
                f"{VOCAB_ENV} is set to {path}, which is not a file. Point it at ACE-Step v1's lyric "
                f"vocabulary (vocab.json) or unset it. {_HOW_TO_GET}")
        return _verified(path)
    if checkpoint_root is not None:
        beside_checkpoint = Path(checkpoint_root) / "lyrics_utils" / "vocab.json"
        if beside_checkpoint.is_file():
            return _verified(beside_checkpoint)
    return _verified(_from_hub())


def _from_hub() -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(VOCAB_REPO, VOCAB_FILE, repo_type=VOCAB_REPO_TYPE))
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(
            f"ACE-Step v1's lyric vocabulary ({VOCAB_FILE} of the Space {VOCAB_REPO}) is not in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached (no network, or "
            f"HF_HUB_OFFLINE is set). {_HOW_TO_GET}") from None
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
