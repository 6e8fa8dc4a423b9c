"""The Inpaint source's waveform, with the edited range drawn on it and chosen by dragging.

The server sends the track's peaks once per upload (`peaks`), the page draws them and the range
(`waveform.js`, served with the app: nothing from a CDN), and a drag ends in a `release` event
with the new range. Positions are seconds from the track's start here; the form's fields may count
from the end (`*_relative_to`), which is how a range on a track longer than the hosted 240 s
limit is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .audio import read_audio
from .errors import InputError

BUCKETS = 2000  # peaks per track: enough for a 1,000-pixel view zoomed in 2x
SCRIPT = (Path(__file__).resolve().parent / "waveform.js").read_text()
TEMPLATE = """
<div class="wave-tools">
  <button type="button" class="wave-zoom-in" title="Zoom in">+</button>
  <button type="button" class="wave-zoom-out" title="Zoom out">&minus;</button>
  <button type="button" class="wave-fit" title="Show the whole track">Fit</button>
  <span class="wave-readout"></span>
</div>
<canvas class="wave-canvas" height="96"></canvas>
"""
STYLE = """
.wave-tools { display: flex; gap: 6px; align-items: center; margin-bottom: 4px; }
.wave-tools button { padding: 0 10px; border: 1px solid var(--border-color-primary);
                     border-radius: var(--radius-sm); background: var(--background-fill-primary);
                     color: var(--body-text-color); cursor: pointer; line-height: 1.6; }
.wave-readout { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.wave-canvas { width: 100%; height: 96px; display: block; cursor: crosshair; touch-action: none;
               border-radius: var(--radius-sm); background: var(--background-fill-secondary); }
"""


def peaks(path: str | None) -> dict[str, Any] | None:
    """The track's duration and its peak levels (0..1) in `BUCKETS` equal stretches, or None
    when there is no readable source."""
    if not path:
        return None
    try:
        audio = read_audio(path)
    except InputError:
        return None
    level = audio.samples.abs().amax(dim=0)
    count = max(1, min(BUCKETS, level.numel()))
    per_bucket = level.numel() // count
    buckets = level[: count * per_bucket].reshape(count, per_bucket).amax(dim=1)
    top = float(buckets.max()) or 1.0
    return {"duration": round(audio.duration_s, 6),
            "peaks": [round(float(value), 3) for value in torch.clamp(buckets / top, 0, 1)]}


def from_start(value: float | None, anchor: str, duration: float) -> float:
    """A field's time as seconds from the track's start."""
    value = float(value or 0.0)
    return duration - value if anchor == "end" else value


def to_field(seconds: float, duration: float, limit: float) -> tuple[float, str]:
    """A position as a field value and its anchor: from the start where the field's range
    (0..limit) reaches it, else from the end."""
    if seconds <= limit or duration - seconds > limit:
        return round(min(seconds, limit), 2), "start"
    return round(duration - seconds, 2), "end"


def with_range(wave: dict[str, Any] | None, start: float | None, start_anchor: str,
               end: float | None, end_anchor: str) -> dict[str, Any] | None:
    """`wave` with the range the fields give."""
    if not wave:
        return None
    duration = wave["duration"]
    low = min(max(from_start(start, start_anchor, duration), 0.0), duration)
    high = min(max(from_start(end, end_anchor, duration), 0.0), duration)
    return {**wave, "start": round(low, 3), "end": round(high, 3)}


def with_extension(wave: dict[str, Any] | None, before: float | None, after: float | None
                   ) -> dict[str, Any] | None:
    """`wave` as the Outpaint tab shows it: the whole source kept, between the new seconds
    `before` and `after` it (drawn, not dragged)."""
    if not wave:
        return None
    kept = {name: value for name, value in wave.items() if name not in ("start", "end", "others")}
    return {**kept, "before": max(0.0, float(before or 0.0)), "after": max(0.0, float(after or 0.0)),
            "readonly": True}


def with_others(wave: dict[str, Any] | None, rows: list[list[Any]]) -> dict[str, Any] | None:
    """`wave` with the extra ranges of `rows` ([start, end, tags, lyrics], seconds from the start)
    drawn beside the range being dragged; rows without two numbers are left out."""
    if not wave:
        return None
    others = []
    for row in rows:
        try:
            low, high = sorted((float(row[0]), float(row[1])))
        except (TypeError, ValueError, IndexError):
            continue
        if low == low and high == high:  # not NaN (a cleared cell)
            others.append([round(low, 3), round(high, 3)])
    return {**wave, "others": others}
