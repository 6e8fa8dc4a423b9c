"""What a remote caller (the UI, the Gradio API, a share link) may name: the operator's models and
no file of the server's.

A remote caller's file parameters accept an uploaded file (gradio puts uploads in its upload
folder), an `https://` URL or a `data:` URI (`remote.py` fetches those, refusing private
addresses), and, for `lora`, a Hub repo id. A path on the server is refused unless it lies in a
folder the operator allowed (`--allow-path DIR`). The CLI is run by the machine's own user and does
not go through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import InputError

SOURCE_PARAMS = ("audio", "audio_url", "reference_audio", "reference_audio_url")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
UPLOAD_HINT = "upload the file, or give an https:// URL or a data: URI"
LORA_EXAMPLE = "ACE-Step/ACE-Step-v1-chinese-rap-LoRA"


@dataclass(frozen=True)
class RemoteAccess:
    """The operator's choices for remote callers: the models they may pick (by id, the first is
    the default) and the folders whose files they may name (uploads, `--allow-path`)."""

    models: tuple[str, ...]
    allowed_folders: tuple[Path, ...] = ()

    def model(self, value: Any) -> str:
        """The model a remote caller chose: one of the operator's, by id; blank = the default."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.models[0]
        if isinstance(value, str) and value.strip() in self.models:
            return value.strip()
        shown = value if isinstance(value, str) else type(value).__name__
        raise InputError(f"model '{_clip(shown)}' is not served here; choose one of: "
                         f"{', '.join(self.models)}")

    def payload(self, payload: Mapping[str, Any], upload_folder: Path | None) -> dict[str, Any]:
        """`payload` with its file parameters checked and uploaded files given as their paths.

        An uploaded file arrives as gradio's file object ({"path": ...}); it must lie in
        `upload_folder` (None: the caller cannot upload, as on the REST routes). Anything naming a
        server path outside the allowed folders is refused.
        """
        checked = dict(payload)
        for name in SOURCE_PARAMS:
            if checked.get(name) is not None:
                checked[name] = self._source(name, checked[name], upload_folder)
        if checked.get("lora") not in (None, ""):
            checked["lora"] = self._lora(checked["lora"])
        return checked

    def uploaded_files(self, payload: Mapping[str, Any], upload_folder: Path) -> list[Path]:
        """The uploaded files a checked payload names (deleted once an API job ends)."""
        return [Path(payload[name]) for name in SOURCE_PARAMS
                if isinstance(payload.get(name), str) and payload[name]
                and _inside(Path(payload[name]), [upload_folder])]

    def _source(self, name: str, value: Any, upload_folder: Path | None) -> Any:
        folders = [*([upload_folder] if upload_folder else []), *self.allowed_folders]
        if isinstance(value, Mapping):
            path = value.get("path")
            if not isinstance(path, str) or not path:
                raise InputError(f"'{name}' is a file object without a path; {UPLOAD_HINT}")
            if not _inside(Path(path), folders):
                raise InputError(f"'{name}' names a file that was not uploaded; {UPLOAD_HINT}")
            return path
        if not isinstance(value, str) or not value.strip():
            return value  # parse_request says what is wrong with it
        if value.strip().lower().startswith("data:") or "://" in value[:16]:
            return value  # remote.py fetches it, or says which schemes it accepts
        if _inside(Path(value.strip()), folders):
            return value
        raise InputError(f"'{name}' names a file on the server, which a remote caller cannot "
                         f"use; {UPLOAD_HINT}")

    def _lora(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        name = value.strip()
        if self.allowed_folders and _inside(Path(name), self.allowed_folders):
            return value
        names_a_path = name.startswith(("/", ".", "~", "\\")) or ".." in name or _exists(name)
        if HUB_ID.match(name) and not names_a_path:
            return value
        if names_a_path:
            raise InputError(f"'lora' names a path on the server ('{_clip(name)}'), which a remote "
                             f"caller cannot use; give a Hugging Face Hub repo id such as "
                             f"{LORA_EXAMPLE}")
        raise InputError(f"'lora' must be a Hugging Face Hub repo id (owner/name) such as "
                         f"{LORA_EXAMPLE}, not '{_clip(name)}'")


def _inside(path: Path, folders: Iterable[Path]) -> bool:
    """Whether `path` (symlinks resolved) lies in one of `folders`."""
    if not path.expanduser().is_absolute():
        return False  # relative to wherever the server runs: never a caller's
    try:
        resolved = path.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    for folder in folders:
        try:
            if resolved.is_relative_to(folder.expanduser().resolve()):
                return True
        except (OSError, RuntimeError, ValueError):
            continue
    return False


def _exists(name: str) -> bool:
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
