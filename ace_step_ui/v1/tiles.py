"""Time tiles: a local operation over a long sequence, run a tile at a time with its reach of input
either side, so that each kept output frame sees exactly the inputs it sees in one whole run.
The vocoder's stages and the DCAE's convolution levels run this way (less memory, warmer caches).
"""

from __future__ import annotations

from typing import Callable

import torch


def in_tiles(length: int, tile: int, halo: int, run: Callable[[int, int], torch.Tensor],
             scale: int = 1) -> torch.Tensor:
    """`run(0, length)` made of tiles: `run(first, last)` maps input frames [first, last) to
    `scale` output frames each, and output frame i depends only on input frames within `halo` of
    i // scale; each tile of `tile` frames runs with `halo` more either side and is cropped."""
    out = None
    for start in range(0, length, tile):
        end = min(length, start + tile)
        first, last = max(0, start - halo), min(length, end + halo)
        part = run(first, last)[..., (start - first) * scale:(end - first) * scale]
        if out is None:
            out = empty_in_layout_of(part, length * scale)
        out[..., start * scale:end * scale] = part
    return out


def equal_tiles(length: int, tile: int) -> int:
    """The tile length that splits `length` into as many tiles as `tile` does, every tile that long
    but the last, which is shorter by less than a frame a tile. A short last tile would pay a whole
    halo for a few frames, and oneDNN may pick another kernel for it (other rounding: 323 DCAE
    frames in tiles of 160, 160 and 3 encoded 4.3e-6 away from the whole pass; in 3 of 108, 0)."""
    return -(-length // -(-length // tile))


def empty_in_layout_of(part: torch.Tensor, length: int) -> torch.Tensor:
    """An empty tensor of `part`'s shape but `length` long, its dims in `part`'s memory order
    (the vocoder's stages may run time-major)."""
    order = sorted(range(part.dim()), key=lambda dim: -part.stride(dim))  # stable for equal strides
    shape = [*part.shape[:-1], length]
    return part.new_empty([shape[dim] for dim in order]).permute(*[order.index(dim) for dim in range(part.dim())])
