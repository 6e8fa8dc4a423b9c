import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ace_step_ui.errors import InputError
from ace_step_ui.requests import (SEED_MAX, TASKS, InpaintRequest, derive_retake_seed,
                                  parse_request, resolve_range, resolve_seed, schema)

REQUIRED = {"generate": {"tags": "lofi"}, "inpaint": {"tags": "lofi", "audio": "song.wav"},
            "outpaint": {"tags": "lofi", "audio": "song.wav"}}


def valid_value(spec):
    if spec["choices"]:
        return st.sampled_from(spec["choices"])
    if spec["type"] == "str":
        return st.text(min_size=1).filter(str.strip)
    if spec["type"] == "int":
        return st.integers(int(spec["minimum"]), int(spec["maximum"]))
    return st.floats(spec["minimum"], spec["maximum"], allow_nan=False)


@st.composite
def valid_payloads(draw, task):
    fields = schema(task)
    names = draw(st.sets(st.sampled_from(sorted(fields))))
    payload = dict(REQUIRED[task])
    for name in names:
        payload[name] = draw(valid_value(fields[name]))
    if task == "outpaint" and payload.get("extend_before_duration", 0) <= 0:
        payload["extend_after_duration"] = draw(st.floats(0.5, 240))
    if task == "inpaint":  # keep the range at least 1 s long whatever the anchors
        payload.update(start_time=0.0, start_time_relative_to="start", end_time=30.0,
                       end_time_relative_to="start")
    return payload


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_valid_requests_pass_and_keep_their_values(task, data):
    payload = data.draw(valid_payloads(task))
    request = parse_request(task, payload)
    for name, value in payload.items():
        got = getattr(request, name)
        assert got == value or (isinstance(value, float) and math.isclose(got, value))
    assert request.explicit == frozenset(payload)


anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_arbitrary_input_is_accepted_or_rejected_with_a_message(task, data):
    names = sorted(schema(task)) + ["audio_url", "bogus"]
    payload = data.draw(st.dictionaries(st.sampled_from(names), anything, max_size=6))
    if data.draw(st.booleans()):
        payload = {**REQUIRED[task], **payload}
    try:
        parse_request(task, payload)
    except InputError as error:
        assert str(error).strip()


@pytest.mark.parametrize("payload, message", [
    ({}, "'tags' is required"),
    ({"tags": "  "}, "'tags' is required"),
    ({"tags": "x", "duration": 0.5}, "'duration' must be between 1 and 240, not 0.5"),
    ({"tags": "x", "duration": float("nan")}, "finite"),
    ({"tags": "x", "seed": -2}, "'seed' must be between -1 and 2147483647"),
    ({"tags": "x", "seed": 1.5}, "whole number"),
    ({"tags": "x", "seed": True}, "must be a number"),
    ({"tags": "x", "scheduler": "dpm"}, "one of euler, heun"),
    ({"tags": "x", "guidance_type": "APG"}, "one of apg, cfg, cfg_star"),
    ({"tags": "x", "durration": 5}, "did you mean 'duration'"),
    ({"tags": 5}, "'tags' must be text"),
])
def test_generate_rejections_say_what_to_change(payload, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_request("generate", payload)


def test_hosted_defaults():
    request = parse_request("inpaint", {"tags": "x", "audio_url": "https://example.com/a.mp3"})
    assert request.audio == "https://example.com/a.mp3"
    assert (request.start_time, request.end_time, request.variance) == (0.0, 30.0, 0.5)
    assert (request.number_of_steps, request.guidance_scale, request.granularity_scale) == (27, 15.0, 10)
    assert (request.tag_guidance_scale, request.lyric_guidance_scale) == (5.0, 1.5)
    assert request.seed == -1 and request.explicit == {"tags", "audio"}
    out = parse_request("outpaint", {"tags": "x", "audio": "a.wav"})
    assert (out.extend_before_duration, out.extend_after_duration) == (0.0, 30.0)
    assert parse_request("generate", {"tags": "x"}).duration == 60.0


def test_null_takes_the_default_and_strings_of_numbers_are_numbers():
    request = parse_request("generate", {"tags": "x", "seed": None, "duration": "12.5"})
    assert request.seed == -1 and request.duration == 12.5 and "seed" not in request.explicit


def test_audio_and_audio_url_must_agree():
    with pytest.raises(InputError, match="give only one"):
        parse_request("inpaint", {"tags": "x", "audio": "a.wav", "audio_url": "b.wav"})


def test_outpaint_needs_something_to_extend():
    with pytest.raises(InputError, match="set at least one above 0"):
        parse_request("outpaint", {"tags": "x", "audio": "a.wav", "extend_after_duration": 0})


def test_inpaint_range_with_one_anchor_is_checked_before_any_audio_is_read():
    with pytest.raises(InputError, match=r"end_time resolves to 12\.0 s, before start_time 20\.0 s; "
                                         r"the edited range must be at least 1 s long"):
        parse_request("inpaint", {"tags": "x", "audio": "a.wav", "start_time": 20, "end_time": 12})


def inpaint(**fields) -> InpaintRequest:
    return parse_request("inpaint", {"tags": "x", "audio": "a.wav", **fields})


@pytest.mark.parametrize("fields, duration, expected", [
    ({"start_time": 5, "end_time": 12}, 30, (5, 12)),
    ({"start_time": 15, "start_time_relative_to": "end", "end_time": 0,
      "end_time_relative_to": "end"}, 60, (45, 60)),
    ({"start_time": 10, "end_time": 5, "end_time_relative_to": "end"}, 40, (10, 35)),
])
def test_relative_times_resolve_against_the_source(fields, duration, expected):
    assert resolve_range(inpaint(**fields), duration) == expected


@pytest.mark.parametrize("fields, duration, message", [
    ({"start_time": 5, "end_time": 40}, 30, r"end_time resolves to 40\.0 s, past the end of the 30\.0 s"),
    ({"start_time": 50, "start_time_relative_to": "end", "end_time": 30}, 40,
     r"start_time resolves to -10\.0 s, before the start"),
    ({"start_time": 20, "end_time": 15, "end_time_relative_to": "end"}, 30,
     r"end_time resolves to 15\.0 s, before start_time 20\.0 s"),
    ({"start_time": 10, "end_time": 10.5}, 30, r"too close to start_time 10\.0 s"),
    ({"start_time": 0, "end_time": 0, "end_time_relative_to": "end"}, 600,
     r"is 600\.0 s long; at most 240 s can be regenerated in one call"),
])
def test_ranges_that_do_not_fit_the_source_are_rejected(fields, duration, message):
    with pytest.raises(InputError, match=message):
        resolve_range(inpaint(**fields), duration)


def test_seeds():
    assert resolve_seed(42) == 42
    drawn = {resolve_seed(-1) for _ in range(20)}
    assert all(0 <= seed <= SEED_MAX for seed in drawn) and len(drawn) > 1
    assert derive_retake_seed(7) == 8 and derive_retake_seed(SEED_MAX) == 0


def test_unknown_task():
    with pytest.raises(InputError, match="choose one of generate, inpaint, outpaint"):
        parse_request("remix", {})
