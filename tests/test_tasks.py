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
