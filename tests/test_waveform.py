import numpy as np
import pytest
import soundfile as sf

from ace_step_ui import waveform


def test_peaks_follow_the_loudness_of_the_track(tmp_path):
    rate = 8000
    quiet, loud = 0.1 * np.ones(rate), 0.8 * np.ones(rate)  # 1 s each
    path = tmp_path / "steps.wav"
    sf.write(path, np.concatenate([quiet, loud]).astype("float32"), rate, subtype="FLOAT")
    wave = waveform.peaks(str(path))
    assert wave["duration"] == 2.0 and len(wave["peaks"]) == waveform.BUCKETS
    half = waveform.BUCKETS // 2
    assert set(wave["peaks"][:half]) == {0.125} and set(wave["peaks"][half:]) == {1.0}
    assert waveform.peaks(None) is None
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    assert waveform.peaks(str(tmp_path / "bad.wav")) is None


@pytest.mark.parametrize("seconds, field", [
    (10.0, (10.0, "start")),
    (240.0, (240.0, "start")),
    (3500.0, (100.0, "end")),  # on a 60-minute track only the end reaches it
    (1000.0, (240.0, "start")),  # neither reaches: the nearest the hosted range allows
])
def test_a_position_becomes_a_field_from_whichever_end_reaches_it(seconds, field):
    assert waveform.to_field(seconds, 3600.0, 240.0) == field


def test_the_fields_become_a_range_from_the_start():
    wave = {"duration": 100.0, "peaks": [1.0]}
    assert waveform.with_range(wave, 10, "start", 5, "end") == {**wave, "start": 10.0, "end": 95.0}
    assert waveform.with_range(wave, 0, "start", 500, "start")["end"] == 100.0  # clamped
    assert waveform.with_range(None, 1, "start", 2, "start") is None


def test_the_outpaint_view_keeps_the_whole_source_between_the_new_parts():
    wave = {"duration": 12.0, "peaks": [0.5, 1.0], "start": 1.0, "end": 2.0}
    shown = waveform.with_extension(wave, 5, None)
    assert shown == {"duration": 12.0, "peaks": [0.5, 1.0], "before": 5.0, "after": 0.0,
                     "readonly": True}
    assert waveform.with_extension(None, 1, 1) is None


def test_the_extra_ranges_are_drawn_beside_the_dragged_one():
    wave = {"duration": 10.0, "peaks": [1.0], "start": 1.0, "end": 2.0}
    rows = [[3, 4.5, "new", ""], ["", "", "tags only", ""], [8.0, 7.0, "", ""],
            [float("nan"), 1, "", ""]]
    assert waveform.with_others(wave, rows)["others"] == [[3.0, 4.5], [7.0, 8.0]]
    assert waveform.with_others(None, rows) is None
