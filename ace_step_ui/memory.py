"""The one memory budget the DiT and the 5 Hz LM share: what a checkpoint needs and a device has.

`EngineManager` asks `fits` before it places a model, and moves the other one out of the way
when both do not fit: the planner goes to the CPU (cheap to bring back), the DiT is unloaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import torch

GIB = 1024 ** 3
RESERVE_BYTES = 2 * GIB  # kept free beside the weights for a run's activations
ITEM_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
HEADER_LENGTH_BYTES = 8  # safetensors: a little-endian u64, then the JSON header


def weights_bytes(folder: Path, dtype: torch.dtype, skip: Callable[[str], bool] | None = None) -> int:
    """The bytes the safetensors weights under `folder` take once loaded in `dtype` (their size on
    disk, rescaled from the precision they are stored in); with `skip`, only the tensors whose
    names it refuses, as a loader that skips the others allocates (sizes from the headers)."""
    total = 0
    for path in sorted(Path(folder).rglob("*.safetensors")):
        header = _header(path)
        if skip is not None and header is not None:
            total += sum(_span(entry) * dtype.itemsize // ITEM_BYTES.get(entry["dtype"], dtype.itemsize)
                         for name, entry in header.items()
                         if name != "__metadata__" and not skip(name))
            continue
        stored = _stored_item_bytes(header)
        size = path.stat().st_size
        total += size * dtype.itemsize // stored if stored else size
    return total


def _header(path: Path) -> dict | None:
    """A safetensors file's JSON header (no weights are read), or None where it cannot be read."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(HEADER_LENGTH_BYTES))
            return json.loads(file.read(length))
    except (OSError, ValueError, struct.error):
        return None


def _span(entry: dict) -> int:
    return entry["data_offsets"][1] - entry["data_offsets"][0]


def _stored_item_bytes(header: dict | None) -> int:
    """The item size of the file's largest tensor."""
    tensors = [entry for name, entry in (header or {}).items() if name != "__metadata__"]
    if not tensors:
        return 0
    return ITEM_BYTES.get(max(tensors, key=_span)["dtype"], 0)


def free_bytes(device: torch.device) -> int:
    """Memory a new model may take on `device`: free GPU memory plus what torch holds cached
    (it reuses that), or the system's available RAM for the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    import psutil

    return psutil.virtual_memory().available


def fits(need_bytes: int, free: int) -> bool:
    """Whether `need_bytes` of weights fit in `free` with the run's reserve beside them."""
    return need_bytes + RESERVE_BYTES <= free
