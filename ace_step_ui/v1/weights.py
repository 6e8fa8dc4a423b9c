"""Build a module without allocating weights, then fill it from safetensors in the target dtype.

Modules are constructed on the `meta` device and every tensor is read from the file straight onto
the target device and converted one at a time, so a 16-bit checkpoint never exists as a full float32
copy. `strict=True`: a missing or unexpected key is an error that names the keys; only keys a module
declares unused (e.g. the v1 transformer's training-only heads) are skipped, unread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import torch
from safetensors import safe_open

from ..errors import ModelUnavailableError

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def build_on_meta(factory: Callable[[], ModuleT]) -> ModuleT:
    with torch.device("meta"):
        module = factory()
    # Some factory functions (seen: torch.linspace after diffusers has run a pipeline in the same
    # process) can escape the device context; such small derived buffers are moved to meta too.
    return module.to("meta")


def read_state_dict(path: Path, device: torch.device, dtype: torch.dtype,
                    skip: Callable[[str], bool] = lambda key: False) -> dict[str, torch.Tensor]:
    """The file's tensors in `dtype` on `device`, less the keys `skip` names (never read)."""
    state = {}
    with safe_open(str(path), framework="pt", device=str(device)) as file:
        for key in file.keys():
            if skip(key):
                continue
            tensor = file.get_tensor(key)
            state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state


def load_weights(module: ModuleT, path: Path, device: torch.device, dtype: torch.dtype,
                 skip: Callable[[str], bool] = lambda key: False) -> ModuleT:
    """Fill a (meta-built) `module` from the safetensors file at `path`, strictly, in eval mode;
    keys `skip` declares unused (and the module does not build) are not read."""
    state = read_state_dict(path, device, dtype, skip)
    missing, unexpected = _key_mismatch(module, state)
    if missing or unexpected:
        raise ModelUnavailableError(
            f"{path} does not fit {type(module).__name__}: "
            f"{_listing('missing', missing)}{'; ' if missing and unexpected else ''}"
            f"{_listing('unexpected', unexpected)}. Is it the right checkpoint folder?")
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"{type(module).__name__} kept tensors without values: {leftover[:5]}")
    return module.eval().requires_grad_(False)


def _key_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(module.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def _listing(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"{len(keys)} {kind} key(s) ({shown})"
