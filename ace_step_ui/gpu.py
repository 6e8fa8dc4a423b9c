"""`spaces.GPU` on Hugging Face ZeroGPU; elsewhere the function runs unchanged."""

from __future__ import annotations

from typing import Any, Callable

try:
    import spaces  # must come before anything that initialises CUDA on ZeroGPU
except ImportError:  # pragma: no cover - spaces is in requirements.txt, but stays optional
    spaces = None

JOB_SECONDS = 120  # what one job may ask of ZeroGPU


def gpu(duration: int = JOB_SECONDS) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that needs the GPU; `spaces.GPU` returns it unchanged off ZeroGPU."""
    if spaces is None:
        return lambda function: function
    return spaces.GPU(duration=duration)
