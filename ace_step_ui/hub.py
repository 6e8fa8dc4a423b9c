"""Find a checkpoint folder: a local folder, a Hugging Face cache folder, or a Hub snapshot.

Downloads go through `huggingface_hub.snapshot_download`, whose tqdm bars `gr.Progress(track_tqdm=
True)` shows in the UI and the CLI prints on stderr. Every way of not finding a model becomes a
`ModelUnavailableError` naming the repo and how to pre-download it. Without a network the answer
comes at once: `hub_reachable` asks the Hub once, without retries, before the library is let loose.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

from .errors import ModelUnavailableError

if not os.environ.get("HF_HUB_VERBOSITY"):
    # huggingface_hub warns on every retry ("Retrying in 1s [Retry 1/5]"); our errors are one line.
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)


def snapshot_in_cache_layout(folder: Path) -> Path | None:
    """`models--org--name/snapshots/<rev>` for a folder in the Hub cache layout, else None."""
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    revisions = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
    return revisions[-1] if revisions else None


def local_checkpoint(model: str) -> Path | None:
    """The checkpoint folder `model` names on this machine, or None when it is not a path."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    return snapshot_in_cache_layout(folder) or folder


def download(repo_id: str, allow_patterns: Sequence[str] | None = None,
             repo_type: str | None = None) -> Path:
    """The local snapshot of `repo_id`, downloaded (with progress) when not cached."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    how = (f"Download it once with a connection (`hf download {repo_id}`"
           f"{' --repo-type ' + repo_type if repo_type else ''}), or pass a local folder "
           f"with --model DIR.")
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type,
                                      allow_patterns=list(allow_patterns) if allow_patterns else None,
                                      local_files_only=not hub_reachable(repo_id, repo_type)))
    except IncompleteSnapshotError as error:
        raise ModelUnavailableError(
            f"the cached copy of {repo_id} is incomplete and the Hub cannot be reached "
            f"({error}). {how}") from None
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(
            f"{repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            f"cannot be reached (no network, or HF_HUB_OFFLINE is set). {how}") from None
    except GatedRepoError:
        raise ModelUnavailableError(
            f"{repo_id} is gated: accept its terms on the Hub and log in with `hf auth login`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError):
        raise ModelUnavailableError(
            f"{repo_id} was not found on the Hugging Face Hub; check the model id") from None


def hub_reachable(repo_id: str, repo_type: str | None = None) -> bool:
    """Whether the Hub answers about `repo_id` within HF_HUB_ETAG_TIMEOUT (default 10 s); False
    when HF_HUB_OFFLINE is set or the connection fails.

    One request, never retried: left to itself, hf_hub_download retries a failed connection five
    times with backoff (about 25 s, a warning each) and snapshot_download's first request has no
    timeout at all. An HTTP error is an answer: the download itself reports it.
    """
    from httpx2 import TransportError
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return True
    except (TransportError, OfflineModeIsEnabled):
        return False
    return True


def require_files(root: Path, names: Sequence[str], model: str,
                  describe: Callable[[list[str]], str] | None = None) -> None:
    """Raise when a checkpoint folder lacks any of `names` (a partial download, a wrong folder)."""
    missing = [name for name in names if not (root / name).exists()]
    if missing:
        detail = describe(missing) if describe else ""
        raise ModelUnavailableError(
            f"the checkpoint for {model} at {root} is incomplete: missing {', '.join(missing)}. "
            f"{detail}".strip())


def lora_file(name_or_path: str, names: Sequence[str]) -> Path:
    """A LoRA's weights: a file, a folder holding one of `names` (the first found), or a Hugging
    Face repo id whose snapshot holds one (only those files are downloaded)."""
    from .errors import InputError

    wanted = " or ".join(names)
    if not name_or_path or not name_or_path.strip():
        raise InputError(f"name a LoRA: a folder with {wanted}, the file, or a Hugging Face repo id")
    local = Path(name_or_path).expanduser()
    if local.is_file():
        return local
    folder = local if local.is_dir() else _download_lora(name_or_path, names)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    where = f"the LoRA folder {local}" if local.is_dir() else f"the Hugging Face repo {name_or_path}"
    raise InputError(f"{where} has no {wanted}; LoRAs for this model are saved under that name")


def _download_lora(repo_id: str, names: Sequence[str]) -> Path:
    """The local snapshot of a LoRA repo (only its weights files), downloaded when not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from .errors import InputError

    try:
        # Without a network, the cache alone and at once (see hub_reachable).
        return Path(snapshot_download(repo_id, allow_patterns=list(names),
                                      local_files_only=not hub_reachable(repo_id)))
    except HFValidationError:
        raise InputError(f"no LoRA file or folder at '{repo_id}', and it is not a Hugging Face "
                         f"repo id either") from None
    except GatedRepoError:
        raise ModelUnavailableError(f"the LoRA repo {repo_id} is gated: accept its terms on the Hub "
                                    f"and log in with `hf auth login`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise InputError(f"no LoRA file or folder at '{repo_id}', and no Hugging Face repo of that "
                         f"name") from None
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(
            f"the LoRA {repo_id} is not in the Hugging Face cache and the Hub cannot be reached. "
            f"Download it once with a connection (`hf download {repo_id} {names[0]}`) or "
            f"pass a local folder") from None
    except HfHubHTTPError as error:
        raise ModelUnavailableError(f"could not download the LoRA {repo_id}: {error}") from None
