import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; real users do


@pytest.fixture(scope="session")
def tiny_v15(tmp_path_factory) -> Path:
    """A tiny random-weight ACE-Step 1.5 turbo checkpoint in the diffusers layout."""
    from ace_step_ui.v15.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-v15-turbo"), "turbo")


@pytest.fixture(scope="session")
def tiny_v15_base(tmp_path_factory) -> Path:
    """The same, as a base (guided) variant."""
    from ace_step_ui.v15.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-v15-base"), "base")


@pytest.fixture
def sine_wav(tmp_path) -> Path:
    """A 4 s stereo 44.1 kHz WAV: a different tone on each side."""
    import numpy as np
    import soundfile as sf

    rate = 44100
    t = np.arange(4 * rate) / rate
    samples = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    path = tmp_path / "source.wav"
    sf.write(path, samples.astype("float32"), rate, subtype="FLOAT")
    return path
