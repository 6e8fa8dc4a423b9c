import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; real users do


@pytest.fixture(scope="session", autouse=True)
def gradio_temp_dir(tmp_path_factory) -> Path:
    """One upload and cache folder for every app the tests start: gradio reads it from the
    environment when it checks an upload, so apps that run together must share it."""
    folder = tmp_path_factory.mktemp("gradio")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


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


@pytest.fixture(scope="session")
def tiny_planner(tmp_path_factory) -> Path:
    """A tiny random-weight 5 Hz LM (ACE-Step 1.5's planner) in the transformers layout."""
    from ace_step_ui.v15.planner import make_tiny_planner

    return make_tiny_planner(tmp_path_factory.mktemp("tiny-planner"))


@pytest.fixture(scope="session")
def v1_fixture_root(tmp_path_factory) -> Path:
    """The v1 parity fixture's tiny checkpoint, materialised: ROOT/checkpoint and ROOT/lora."""
    from v1_fixture import materialise

    return materialise(tmp_path_factory.mktemp("v1-fixture"))


@pytest.fixture(scope="session")
def lyric_vocab() -> Path:
    """Upstream's lyric vocabulary, which users download from the ACE-Step Space and the repository
    does not carry (see `v1_fixture.lyric_vocab`); a test that needs it fails without it."""
    from v1_fixture import lyric_vocab

    return lyric_vocab()


@pytest.fixture(scope="session")
def tiny_v1_weights(v1_fixture_root) -> Path:
    """A tiny ACE-Step v1 checkpoint in the official layout (the parity fixture's weights), for
    tests of single modules, which need no lyric vocabulary."""
    return v1_fixture_root / "checkpoint"


@pytest.fixture(scope="session")
def tiny_v1(tiny_v1_weights, lyric_vocab) -> Path:
    """The same checkpoint, ready to run: ACE_STEP_LYRIC_VOCAB names the lyric vocabulary for this
    process and its subprocesses."""
    os.environ["ACE_STEP_LYRIC_VOCAB"] = str(lyric_vocab)
    return tiny_v1_weights


@pytest.fixture
def steps_of(monkeypatch):
    """steps_of(manager): the (step, whether its job had been told to stop) of every diffusion step
    `manager` runs from now on, as a list that fills as they run. With `pace`, each step of a job
    not yet told to stop takes at least that many seconds more, so a long job is still running when
    a test stops it however fast this machine is."""

    def record(manager, pace: float = 0.0) -> list[tuple[int, bool]]:
        steps: list[tuple[int, bool]] = []
        original = manager.step_callback

        def recording(report, stop):
            inner = original(report, stop)

            def on_step(step, total):
                if pace:
                    stop.wait(pace)  # ends early once the job is told to stop
                steps.append((step, stop.is_set()))
                inner(step, total)

            return on_step

        monkeypatch.setattr(manager, "step_callback", recording)
        return steps

    return record


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(model: Path, allowed_folders: tuple[Path, ...] = (), planner: Path | None = None,
          data_dir: Path | None = None, port: int | None = None):
    """The app with `model` as the default, launched on a free loopback port; visitors may name
    files in `allowed_folders` (the operator's --allow-path); `planner` is its --planner; the
    takes are kept under `data_dir` (a temp folder without one), and it listens on `port` (a
    free one without)."""
    from ace_step_ui.engines import EngineManager, known_models
    from ace_step_ui.ui import build_app, launch_options

    manager = EngineManager(device="cpu", planner=str(planner or ""), own_thread=True)  # as app.py
    demo = build_app(manager, str(model), known_models(), allowed_folders, data_dir)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1",
                            server_port=port or free_port(), quiet=True, **launch_options(demo))
    try:
        yield SimpleNamespace(url=url, manager=manager, demo=demo, model=str(model),
                              history=demo.history)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def served(tiny_v15, tiny_planner):
    """The app on the tiny 1.5 checkpoint (and the tiny planner), for one test module."""
    yield from serve(tiny_v15, planner=tiny_planner)


@pytest.fixture(scope="module")
def served_v1(tiny_v1, tiny_planner):
    """The app on the tiny ACE-Step v1 checkpoint, for one test module; the fixture's LoRA folder
    beside it is an allowed path."""
    yield from serve(tiny_v1, (tiny_v1.parent / "lora",), tiny_planner)


def shared_managers(managers: dict):
    """An `EngineManager` stand-in that hands out one manager per setting from `managers`, so
    in-process CLI runs of a module load each model once."""
    from ace_step_ui.engines import EngineManager

    def manager(device, dtype, planner, speed):
        key = (device, dtype, planner, speed)
        return managers.setdefault(key, EngineManager(device, dtype, planner, speed=speed))

    return manager
