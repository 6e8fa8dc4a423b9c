"""The one request -> result path: checks before any work, and the hosted defaults fitted."""

import pytest

from ace_step_ui import tasks
from ace_step_ui.errors import InputError
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
