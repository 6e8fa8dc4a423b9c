"""The one request -> result path: checks before any work, and the hosted defaults fitted."""

import json
import threading

import pytest
import torch

from ace_step_ui import tasks
from ace_step_ui.audio import read_audio
from ace_step_ui.engines import EngineManager
from ace_step_ui.errors import Cancelled, InputError
from ace_step_ui.requests import parse_request, resolve_range


def test_the_hosted_default_end_time_is_fitted_to_a_short_source():
    request = parse_request("inpaint", {"audio": "a.wav", "tags": "x", "start_time": 2})
    fitted, changes = tasks.fit_defaults(request, 20.0)
    assert changes == {"end_time": 20.0} and resolve_range(fitted, 20.0) == (2.0, 20.0)
    assert tasks.fit_defaults(request, 45.0) == (request, {})  # it fits: left alone


def test_an_end_time_the_caller_set_is_not_fitted():
    request = parse_request("inpaint", {"audio": "a.wav", "tags": "x", "end_time": 30})
    assert tasks.fit_defaults(request, 20.0) == (request, {})
    with pytest.raises(InputError, match="end_time resolves to 30.0 s, past the end"):
        resolve_range(request, 20.0)


def test_check_refuses_before_reading_anything(tiny_v15):
    with pytest.raises(InputError, match="edit \\(audio-to-audio\\) needs ACE-Step v1"):
        tasks.check("edit", {"audio": "/no/such/file.wav", "tags": "x", "original_tags": "y"},
                    str(tiny_v15))


def test_take_seeds_count_up_from_a_given_seed_and_are_fresh_without_one():
    assert tasks.take_seeds(7, 4) == [7, 8, 9, 10]
    assert tasks.take_seeds(tasks.SEED_MAX, 2) == [tasks.SEED_MAX, 0]
    fresh = tasks.take_seeds(-1, 8)
    assert len(set(fresh)) == 8 and all(0 <= seed <= tasks.SEED_MAX for seed in fresh)
    for takes in (0, 9):
        with pytest.raises(InputError, match="takes must be 1 to 8"):
            tasks.take_seeds(1, takes)


def test_each_take_is_the_song_its_seed_gives_alone(tiny_v15):
    """Takes run in one job (the model loaded once), each the same samples as a run of its seed."""
    from ace_step_ui.engines import EngineManager

    manager = EngineManager(device="cpu")
    payload = {"tags": "lofi", "lyrics": "[inst]", "duration": 1, "number_of_steps": 2, "seed": 5}
    steps = []
    takes = tasks.run_takes("generate", payload, manager, str(tiny_v15), 3,
                            on_step=lambda done, total: steps.append((done, total)))
    assert [take.seed for take in takes] == [5, 6, 7]
    assert [take.params["take"] for take in takes] == [{"index": i, "of": 3} for i in range(3)]
    assert steps[-1] == (6, 6) and all(total == 6 for _, total in steps)  # one run's progress
    alone = tasks.run("generate", {**payload, "seed": 6}, manager, str(tiny_v15))
    assert alone.params["seed"] == 6 and "take" not in alone.params
    assert alone.audio.samples.numpy().tobytes() == takes[1].audio.samples.numpy().tobytes()
    assert not takes[0].audio.samples.equal(takes[1].audio.samples)


@pytest.fixture(scope="module")
def manager():
    return EngineManager(device="cpu", dtype="float32")


def test_extra_ranges_are_repainted_each_with_its_song_and_the_rest_kept(manager, tiny_v1, sine_wav,
                                                                         monkeypatch):
    """ACE-Step v1 (tiny): the main range, then the extra ranges by start time, one pass each."""
    engine = manager.get(str(tiny_v1))
    given = []
    repaint = engine.repaint

    def recording(request, window, start_s, end_s, seed, retake_seed, on_step):
        given.append((request.tags, request.lyrics, start_s, end_s, seed, retake_seed))
        return repaint(request, window, start_s, end_s, seed, retake_seed, on_step)

    monkeypatch.setattr(engine, "repaint", recording)
    payload = {"audio": str(sine_wav), "tags": "lofi", "lyrics": "[verse]\nrain", "seed": 5,
               "number_of_steps": 2, "start_time": 0.5, "end_time": 1.5}
    extra = [{"start_time": 3, "end_time": 4, "tags": "jazz"}, [1.5, 2.5, "", "[inst]"]]
    steps = []
    result = tasks.run("inpaint", {**payload, "extra_ranges": extra}, manager, str(tiny_v1),
                       on_step=lambda done, total: steps.append((done, total)))
    # the whole 4 s track is each pass's window: the ranges sit where they are in it
    assert given == [("lofi", "[verse]\nrain", 0.5, 1.5, 5, 6), ("lofi", "[inst]", 1.5, 2.5, 7, 8),
                     ("jazz", "[verse]\nrain", 3.0, 4.0, 9, 10)]
    # variance 0.5 of 2 steps runs the second of each pass's: one progress bar of 3 x 2 steps
    assert steps == [(2, 6), (4, 6), (6, 6)]
    params = result.params
    assert params["range_s"] == [0.5, 1.5] and params["seed"] == 5 and params["retake_seed"] == 6
    assert params["request"]["extra_ranges"] == [
        {"start_time": 3.0, "end_time": 4.0, "tags": "jazz", "lyrics": ""},
        {"start_time": 1.5, "end_time": 2.5, "tags": "", "lyrics": "[inst]"}]
    assert [(r["start_s"], r["end_s"], r["tags"], r["seed"], r["retake_seed"], r["window_s"])
            for r in params["engine"]["ranges"]] == [
        (0.5, 1.5, "lofi", 5, 6, [0.0, 4.0]), (1.5, 2.5, "lofi", 7, 8, [0.0, 4.0]),
        (3.0, 4.0, "jazz", 9, 10, [0.0, 4.0])]
    assert "extra_ranges" not in params["ignored_params"]
    json.dumps(params)  # the sidecar's

    source, out = read_audio(sine_wav), result.audio
    rate = source.sample_rate
    assert (out.sample_rate, out.frames) == (rate, source.frames)
    kept = [(0, round(0.5 * rate)), (round(2.5 * rate), 3 * rate)]
    for start, end in kept:
        assert torch.equal(out.samples[:, start:end], source.samples[:, start:end])
    for start_s, end_s in ((0.5, 1.5), (1.5, 2.5), (3.0, 4.0)):
        start, end = round(start_s * rate), round(end_s * rate)
        assert not torch.equal(out.samples[:, start:end], source.samples[:, start:end])

    # the main range runs first, as a one-range inpaint: it comes out the same
    alone = tasks.run("inpaint", payload, manager, str(tiny_v1))
    main = slice(round(0.5 * rate), round(1.5 * rate))
    assert torch.equal(alone.audio.samples[:, main], out.samples[:, main])
    assert "ranges" not in alone.params["engine"] and "extra_ranges" not in alone.params["request"]


@pytest.mark.parametrize("extra, message", [
    ([[3, 5]], r"extra range 1 \(3–5 s\) ends past the end of the 4 s source; end it at 4 s"),
    ([[2.5, 3.5], [1, 2]], r"extra range 2 \(1–2 s\) overlaps the main range \(0.5–1.5 s\): start "
                           r"extra range 2 at 1.5 s or later, or end the main range at 1 s"),
])
def test_extra_ranges_that_do_not_fit_the_source_are_refused_before_the_model_runs(
        manager, tiny_v1, sine_wav, extra, message):
    with pytest.raises(InputError, match=message):
        tasks.run("inpaint", {"audio": str(sine_wav), "tags": "x", "start_time": 0.5,
                              "end_time": 1.5, "extra_ranges": extra}, manager, str(tiny_v1))


def test_a_stop_after_the_first_take_keeps_the_takes_made(tiny_v15):
    stop = threading.Event()

    def on_step(done: int, total: int) -> None:
        if done > total // 3:  # into the second of three takes
            stop.set()

    payload = {"tags": "lofi", "lyrics": "[inst]", "duration": 1, "number_of_steps": 4, "seed": 9}
    manager = EngineManager(device="cpu")
    takes = tasks.run_takes("generate", payload, manager, str(tiny_v15), 3, on_step=on_step,
                            stop=stop)
    assert [take.seed for take in takes] == [9]
    stop.set()  # set before the first take ends: nothing is made, the stop is the answer
    with pytest.raises(Cancelled):
        tasks.run_takes("generate", payload, manager, str(tiny_v15), 3, stop=stop)


def test_an_own_thread_manager_runs_each_job_s_model_work_on_its_thread(tiny_v15, monkeypatch):
    """As in the app: jobs from two threads load and run the model on the manager's one thread,
    and each still gets its result (and a refused job its error) in the thread that asked."""
    manager = EngineManager(device="cpu", own_thread=True)
    get, ran_on, results = manager.get, [], {}
    monkeypatch.setattr(manager, "get", lambda model: ran_on.append(threading.get_ident()) or get(model))
    payload = {"tags": "lofi", "lyrics": "[inst]", "duration": 1, "number_of_steps": 2}

    def job(seed: int) -> None:
        results[seed] = tasks.run("generate", {**payload, "seed": seed}, manager, str(tiny_v15))

    callers = [threading.Thread(target=job, args=(seed,)) for seed in (1, 2)]
    for thread in callers:
        thread.start()
        thread.join(120)
    assert sorted(results) == [1, 2] and [results[seed].seed for seed in (1, 2)] == [1, 2]
    assert len(set(ran_on)) == 1 and ran_on[0] == manager.run(threading.get_ident)
    assert ran_on[0] not in {thread.ident for thread in callers}
    with pytest.raises(Cancelled, match="after step 1 of 2"):  # stopped at its first step
        stop = threading.Event()
        tasks.run("generate", {**payload, "seed": 3}, manager, str(tiny_v15),
                  on_step=lambda done, total: stop.set(), stop=stop)
