"""Output files that appear complete or not at all.

Each file is written under a hidden temporary name in its own folder (so the rename stays on one
file system, where it is atomic) and moved onto its final name with `os.replace` once every file of
the set is complete. A failure or Ctrl-C removes the temporary files; a killed process can leave a
hidden `.<name>.<random>.part` behind, never a truncated file under a final name.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

PART_SUFFIX = ".part"


@contextmanager
def staged(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside `finals` to write into, renamed onto them in order when the block
    ends without error (put the file that names the set last); removed, with any already renamed,
    when it raises."""
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for final in finals:
            temps.append(_new_part(Path(final)))
        yield list(temps)
        for temp, final in zip(temps, finals):
            os.replace(temp, final)
            placed.append(Path(final))
    except BaseException:
        for path in temps + placed:
            path.unlink(missing_ok=True)
        raise


def _new_part(final: Path) -> Path:
    while True:
        part = final.with_name(f".{final.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        try:
            # O_EXCL: never another writer's file; 0o666 leaves the mode to the umask, as open() does.
            os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return part
        except FileExistsError:
            continue
