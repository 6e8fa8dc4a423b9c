import math
import operator
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ace_step_ui.errors import InputError
from ace_step_ui.requests import (ALIASES, MAX_TEXT_CHARS, SEED_MAX, TASKS, TIME_SIGNATURES, TRACKS,
                                  EditRequest, ExtraRange,
                                  InpaintRequest, derive_retake_seed, is_default, parse_request,
                                  resolve_extra_ranges, resolve_range, resolve_seed, schema)

REQUIRED = {"generate": {"tags": "lofi"}, "inpaint": {"tags": "lofi", "audio": "song.wav"},
            "outpaint": {"tags": "lofi", "audio": "song.wav"},
            "edit": {"tags": "lofi", "audio": "song.wav", "original_tags": "pop"},
            "cover": {"tags": "lofi", "audio": "song.wav"},
            "extract": {"tags": "lofi", "audio": "song.wav"},
            "lego": {"tags": "lofi", "audio": "song.wav"},
            "complete": {"tags": "lofi", "audio": "song.wav"},
            "prompt_to_audio": {"prompt": "a song about rain"}}
# ACE-Step 1.5's metadata: valid values only (0 and "" are "not given").
METADATA_VALUES = {"bpm": st.sampled_from([0, 30, 120, 300]),
                   "keyscale": st.sampled_from(["", "C major", "F# minor", "Bb major", "e♭ minor"]),
                   "timesignature": st.sampled_from([0, *TIME_SIGNATURES]),
                   "vocal_language": st.sampled_from(["", "en", "ZH", "yue"])}


def separate_ranges(rows):
    """(gap, length, tags, lyrics) rows as ranges one after another, each `gap` after the last."""
    ranges, end = [], 0.0
    for gap, length, tags, lyrics in rows:
        start, end = end + gap, end + gap + length
        ranges.append({"start_time": start, "end_time": end, "tags": tags, "lyrics": lyrics})
    return ranges


def valid_value(spec):
    if spec["type"] == "range_list":  # quarter seconds: sums stay exact
        quarters = lambda low, high: st.integers(4 * low, 4 * high).map(lambda q: q / 4)
        row = st.tuples(quarters(0, 600), quarters(1, 240), st.text(max_size=20),
                        st.text(max_size=20))
        return st.lists(row, max_size=8).map(separate_ranges)
    if spec["choices"]:
        return st.sampled_from(spec["choices"])
    if spec["type"] == "str":
        return st.text(min_size=1).filter(str.strip)
    if spec["type"] == "bool":
        return st.booleans()
    if spec["type"] == "int_list":
        steps = st.lists(st.integers(int(spec["minimum"]), int(spec["maximum"])), unique=True,
                         max_size=12)
        return steps.map(sorted)
    if spec["type"] == "int":
        return st.integers(int(spec["minimum"]), int(spec["maximum"]))
    return st.floats(spec["minimum"], spec["maximum"], allow_nan=False)


@st.composite
def valid_payloads(draw, task):
    fields = schema(task)
    names = draw(st.sets(st.sampled_from(sorted(fields))))
    payload = dict(REQUIRED[task])
    for name in names:
        payload[name] = draw(METADATA_VALUES[name] if name in METADATA_VALUES
                             else valid_value(fields[name]))
    if task == "outpaint" and payload.get("extend_before_duration", 0) <= 0:
        payload["extend_after_duration"] = draw(st.floats(0.5, 240))
    if task == "inpaint":  # keep the range at least 1 s long whatever the anchors
        payload.update(start_time=0.0, start_time_relative_to="start", end_time=30.0,
                       end_time_relative_to="start")
    if payload.get("oss_steps") and payload.get("scheduler") == "heun":
        payload["scheduler"] = "euler"
    if "track_classes" in payload:  # names from upstream's list
        payload["track_classes"] = ", ".join(draw(st.lists(st.sampled_from(TRACKS), max_size=4)))
    return payload


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_valid_requests_pass_and_keep_their_values(task, data):
    payload = data.draw(valid_payloads(task))
    request = parse_request(task, payload)
    for name, value in payload.items():
        got = getattr(request, name)
        if name == "extra_ranges":  # kept as ExtraRange values; sent back as the objects
            got = request.to_dict()[name]
        elif isinstance(value, list):  # a JSON list is kept as a tuple
            value = tuple(value)
        assert got == value or (isinstance(value, float) and math.isclose(got, value))
    assert request.explicit == frozenset(payload)


def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


# Huge ints and long texts are built, not listed: Hypothesis prints its strategies' elements, and
# Python refuses to print an int of more than 4,300 digits.
huge_ints = st.builds(lambda sign, base, power: sign * base ** power, st.sampled_from([1, -1]),
                      st.sampled_from([2, 10]), st.sampled_from([31, 63, 1024, 2000, 4300, 5000]))
numbers = st.integers() | huge_ints | st.floats() | st.sampled_from([-0.0, 1e308, 5e-324, 1.5])
texts = (st.text()
         | st.sampled_from(["12", " 1e999 ", "nan", "-inf", "1_000", "0x10", "١٢", "true",
                            "16, 29, 52", "data:audio/wav;base64,AAAA"])
         | st.builds(operator.mul, st.sampled_from(["9", "x", "é", "🎵", "1, ", "a b "]),
                     st.sampled_from([2_000, 4_001, 4_301, 100_000])))
leaves = st.none() | st.booleans() | numbers | texts
hostile_values = (leaves | st.lists(numbers | texts, max_size=5) | st.integers(1, 1000).map(nested)
                  | st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                 max_leaves=6))
hostile_keys = (st.text(max_size=30) | st.sampled_from([1, None, 1.5, (1, 2), True]) | huge_ints
                | st.builds(operator.mul, st.just("k"), st.just(100_000)))
NAMES = sorted({name for task in TASKS for name in schema(task)} | set(ALIASES))


@st.composite
def hostile_requests(draw):
    task = draw(st.sampled_from(TASKS))
    payload = draw(st.dictionaries(st.sampled_from(NAMES), hostile_values, max_size=6))
    if draw(st.booleans()):
        payload = {**REQUIRED[task], **payload}
    if draw(st.integers(0, 3)) == 0:
        payload[draw(hostile_keys)] = draw(hostile_values)
    return task, payload


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(hostile_requests())
def test_any_input_is_a_request_or_an_input_error_with_a_short_message(case):
    task, payload = case
    try:
        request = parse_request(task, payload)
    except InputError as error:
        assert str(error).strip() and len(str(error)) < 1000
    else:
        accepted = [getattr(request, name, "") for name in ("tags", "lyrics", "original_lyrics",
                                                             "prompt")]
        assert all(len(text) <= MAX_TEXT_CHARS for text in accepted)


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


@pytest.mark.parametrize("payload, message", [
    ({"bpm": 20}, "'bpm' must be 0 (not given) or from 30 to 300, not 20"),
    ({"bpm": 301}, "'bpm' must be between 0 and 300, not 301"),
    ({"keyscale": "H major"}, "'keyscale' must be a note and a mode, like 'C major' or 'F# minor', "
                              "not 'H major'"),
    ({"timesignature": 5}, "'timesignature' must be 0 (not given) or 2, 3, 4 or 6 beats per bar, "
                           "not 5"),
    ({"vocal_language": "english"}, "'vocal_language' must be a language code the model knows"),
])
def test_song_metadata_rejections_say_what_to_change(payload, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_request("generate", {"tags": "x", **payload})


def test_prompt_to_audio_takes_fals_schema_and_no_tags():
    """fal's ACEStepPromptToAudioRequest: prompt (required), instrumental, duration (default 60),
    the steps, seed and guidance set; tags and lyrics are the planner's to write."""
    fal_names = {"prompt", "instrumental", "duration", "number_of_steps", "seed", "scheduler",
                 "guidance_type", "granularity_scale", "guidance_interval",
                 "guidance_interval_decay", "guidance_scale", "minimum_guidance_scale",
                 "tag_guidance_scale", "lyric_guidance_scale"}
    fields = schema("prompt_to_audio")
    assert fal_names <= set(fields)
    assert list(fields)[:3] == ["prompt", "instrumental", "duration"]
    assert fields["duration"]["default"] == 60.0 and fields["instrumental"]["default"] is False
    assert fields["number_of_steps"]["default"] == 27 and fields["guidance_scale"]["default"] == 15
    request = parse_request("prompt_to_audio", {"prompt": "rain", "instrumental": True})
    assert (request.prompt, request.instrumental, request.duration) == ("rain", True, 60.0)
    with pytest.raises(InputError, match="'prompt' is required for prompt_to_audio"):
        parse_request("prompt_to_audio", {"prompt": "  "})
    with pytest.raises(InputError, match="unknown parameter 'tags' for prompt_to_audio"):
        parse_request("prompt_to_audio", {"prompt": "rain", "tags": "lofi"})


@pytest.mark.parametrize("raw", [12, 12.0, "12", " 12 ", "1.2e1"])
def test_whole_numbers_come_as_numbers_or_text(raw):
    assert parse_request("generate", {"tags": "x", "seed": raw}).seed == 12


@pytest.mark.parametrize("payload, message", [
    ({"seed": 2 ** 1024}, "'seed' must be between -1 and 2147483647, not a number beyond ±1e308"),
    ({"seed": -10 ** 5000}, "'seed' must be between -1 and 2147483647, not a number beyond ±1e308"),
    ({"seed": 1e308}, "'seed' must be between -1 and 2147483647, not 1e+308"),
    ({"duration": 10 ** 20}, "'duration' must be between 1 and 240, not 1e+20"),
    ({"use_erg_tag": 10 ** 5000}, "'use_erg_tag' must be true or false, not a number beyond ±1e308"),
    ({"use_erg_tag": [[[]]]}, "'use_erg_tag' must be true or false, not a list"),
    ({"oss_steps": [2 ** 2000]}, "'oss_steps' entries must be between 1 and 1000, not a number beyond"),
    ({"oss_steps": "1, " * 700}, "'oss_steps' is 2,100 characters long; at most 2,000 are allowed"),
    ({"scheduler": "x" * 5000}, "'scheduler' must be one of euler, heun, pingpong, not 'xxxxxxxxxx"
                                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (5,000 characters)"),
    ({"n" * 10_000: 5}, "unknown parameter 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'… (10,000 "
                        "characters) for generate; known: tags"),
    ({2 ** 2000: 1}, "parameter names must be text, not a number beyond ±1e308"),
])
def test_huge_values_get_a_short_message(payload, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_request("generate", {"tags": "x", **payload})


@pytest.mark.parametrize("task, name", [("generate", "tags"), ("generate", "lyrics"),
                                        ("edit", "original_tags"), ("edit", "original_lyrics")])
def test_texts_are_at_most_4000_characters(task, name):
    longest = parse_request(task, {**REQUIRED[task], name: "é" * 4000})
    assert getattr(longest, name) == "é" * 4000
    with pytest.raises(InputError, match=f"'{name}' is 4,001 characters long; at most 4,000 are "
                                         f"allowed: shorten it"):
        parse_request(task, {**REQUIRED[task], name: "é" * 4001})


def test_paths_urls_and_hub_ids_are_bounded_but_data_uris_are_left_to_the_download():
    url = "https://example.com/" + "a" * 2100 + ".wav"
    for task, name in [("inpaint", "audio"), ("generate", "reference_audio"), ("generate", "lora")]:
        with pytest.raises(InputError, match=f"'{name}' is 2,124 characters long; at most 2,048"):
            parse_request(task, {**REQUIRED[task], name: url})
    data_uri = "data:audio/wav;base64," + "A" * 100_000
    assert parse_request("inpaint", {"tags": "x", "audio_url": data_uri}).audio == data_uri
    assert parse_request("generate", {"tags": "x", "reference_audio": data_uri}).reference_audio


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
    with pytest.raises(InputError, match="choose one of generate, inpaint, outpaint, edit"):
        parse_request("remix", {})


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), ("true", True), (" False ", False), ("TRUE", True), (1, True),
    (0, False), ("1", True), ("0", False),
])
def test_switches_take_booleans_words_and_one_or_zero(raw, expected):
    request = parse_request("generate", {"tags": "x", "use_erg_lyric": raw})
    assert request.use_erg_lyric is expected and "use_erg_lyric" in request.explicit


@pytest.mark.parametrize("raw", ["yes", "", 2, -1, 0.5, [], "on"])
def test_switches_refuse_anything_else(raw):
    with pytest.raises(InputError, match="'use_erg_tag' must be true or false"):
        parse_request("generate", {"tags": "x", "use_erg_tag": raw})


def test_erg_switches_default_on_as_upstream():
    request = parse_request("generate", {"tags": "x"})
    assert (request.use_erg_tag, request.use_erg_lyric, request.use_erg_diffusion) == (True,) * 3


@pytest.mark.parametrize("raw, expected", [
    ([16, 29, 52], (16, 29, 52)), ("16, 29, 52, 76, 100", (16, 29, 52, 76, 100)),
    ("16 29,52", (16, 29, 52)), ((3,), (3,)), ([5.0, "7"], (5, 7)), ("", ()), ("  ", ()), ([], ()),
])
def test_oss_steps_take_a_list_or_upstreams_text(raw, expected):
    request = parse_request("generate", {"tags": "x", "oss_steps": raw})
    assert request.oss_steps == expected


@pytest.mark.parametrize("raw, message", [
    ([0, 5], "'oss_steps' entries must be between 1 and 1000, not 0"),
    ("16, 1001", "entries must be between 1 and 1000, not 1001"),
    ([16, 16], "'oss_steps' must increase, but 16 follows 16"),
    ("52, 29", "must increase, but 29 follows 52"),
    ("16, x", "'oss_steps' must be a number, not 'x'"),
    ([1.5], "'oss_steps' must be a whole number"),
    ([True], "'oss_steps' must be a number"),
    (16, r"'oss_steps' must be a list of whole numbers such as \[16, 29, 52\]"),
    (list(range(1, 202)), "'oss_steps' has 201 entries; at most 200"),
])
def test_bad_oss_steps_say_what_is_wrong(raw, message):
    with pytest.raises(InputError, match=message):
        parse_request("generate", {"tags": "x", "oss_steps": raw})


def test_oss_steps_do_not_go_with_heun():
    with pytest.raises(InputError, match="oss_steps work with the euler and pingpong schedulers"):
        parse_request("generate", {"tags": "x", "oss_steps": "10, 20", "scheduler": "heun"})
    assert parse_request("generate", {"tags": "x", "oss_steps": "", "scheduler": "heun"}).oss_steps == ()


def test_v1_fields_and_their_ranges():
    request = parse_request("generate", {"tags": "x", "scheduler": "pingpong", "variance": 0.3,
                                         "lora": "ACE-Step/ACE-Step-v1-chinese-rap-LoRA",
                                         "lora_scale": -0.5,
                                         "reference_audio_url": "https://example.com/ref.mp3",
                                         "audio2audio_strength": 0.8})
    assert request.scheduler == "pingpong" and request.variance == 0.3
    assert (request.lora, request.lora_scale) == ("ACE-Step/ACE-Step-v1-chinese-rap-LoRA", -0.5)
    assert request.reference_audio == "https://example.com/ref.mp3"
    assert request.explicit >= {"reference_audio", "audio2audio_strength"}
    plain = parse_request("generate", {"tags": "x"})
    assert (plain.variance, plain.reference_audio, plain.audio2audio_strength) == (0.0, "", 0.5)
    assert (plain.lora, plain.lora_scale, plain.oss_steps) == ("", 1.0, ())
    with pytest.raises(InputError, match="'lora_scale' must be between -3 and 3, not 4"):
        parse_request("generate", {"tags": "x", "lora_scale": 4})
    with pytest.raises(InputError, match="'variance' must be between 0 and 1"):
        parse_request("generate", {"tags": "x", "variance": 1.5})
    with pytest.raises(InputError, match="both 'reference_audio' and 'reference_audio_url' are set"):
        parse_request("generate", {"tags": "x", "reference_audio": "a.wav",
                                   "reference_audio_url": "b.wav"})
    with pytest.raises(InputError, match="unknown parameter 'reference_audio' for inpaint"):
        parse_request("inpaint", {"tags": "x", "audio": "a.wav", "reference_audio": "b.wav"})


def test_edit_is_the_hosted_audio_to_audio_request():
    request = parse_request("edit", {"audio_url": "https://example.com/a.wav", "tags": "jazz",
                                     "original_tags": "pop, piano"})
    assert isinstance(request, EditRequest) and request.task == "edit"
    assert request.audio == "https://example.com/a.wav"
    assert (request.edit_mode, request.original_lyrics, request.original_seed) == ("remix", "", -1)
    assert request.explicit == {"audio", "tags", "original_tags"}
    lyrics = parse_request("edit", {**REQUIRED["edit"], "edit_mode": "lyrics", "original_seed": 42,
                                    "original_lyrics": "[verse]\nold words"})
    assert (lyrics.edit_mode, lyrics.original_seed) == ("lyrics", 42)


@pytest.mark.parametrize("payload, message", [
    ({"tags": "x", "audio": "a.wav"}, "'original_tags' is required for edit"),
    ({"tags": "x", "audio": "a.wav", "original_tags": " "}, "'original_tags' is required for edit"),
    ({"tags": "x", "original_tags": "pop"}, "'audio' is required for edit"),
    ({"audio": "a.wav", "original_tags": "pop"}, "'tags' is required for edit"),
    ({**REQUIRED["edit"], "edit_mode": "only_lyrics"}, "'edit_mode' must be one of remix, lyrics"),
    ({**REQUIRED["edit"], "original_seed": -2}, "'original_seed' must be between -1 and 2147483647"),
    ({**REQUIRED["edit"], "variance": 0.5}, "unknown parameter 'variance' for edit"),
])
def test_edit_rejections(payload, message):
    with pytest.raises(InputError, match=message):
        parse_request("edit", payload)


def test_schema_names_the_kinds():
    generate = schema("generate")
    assert generate["use_erg_tag"]["type"] == "bool" and generate["use_erg_tag"]["default"] is True
    assert generate["oss_steps"]["type"] == "int_list" and generate["oss_steps"]["default"] == ()
    assert generate["scheduler"]["choices"] == ("euler", "heun", "pingpong")
    assert "pingpong" in generate["scheduler"]["help"] and "v1 only" in generate["oss_steps"]["help"]
    v1_only = ["use_erg_tag", "use_erg_lyric", "use_erg_diffusion", "oss_steps", "variance",
               "reference_audio", "audio2audio_strength"]
    assert all(generate[name]["advanced"] and "ACE-Step v1" in generate[name]["help"]
               for name in v1_only)
    edit = schema("edit")
    assert list(edit)[-5:] == ["audio", "edit_mode", "original_tags", "original_lyrics",
                               "original_seed"]
    assert edit["original_tags"]["required"] and edit["original_seed"]["advanced"]
    assert {spec["type"] for task in TASKS for spec in schema(task).values()} == {
        "str", "int", "float", "bool", "int_list", "range_list"}
    extra = schema("inpaint")["extra_ranges"]
    assert extra["type"] == "range_list" and extra["default"] == () and not extra["advanced"]
    assert list(schema("inpaint"))[-1] == "extra_ranges"  # after the hosted ones: positions hold


@pytest.mark.parametrize("name, value, expected", [
    ("oss_steps", "", True), ("oss_steps", " ", True), ("oss_steps", [], True),
    ("oss_steps", "16", False), ("use_erg_tag", True, True), ("use_erg_tag", False, False),
    ("number_of_steps", 27.0, True), ("number_of_steps", 28, False), ("lora", "", True),
    ("reference_audio", None, True), ("guidance_scale", "oops", False),
])
def test_is_default_reads_form_values(name, value, expected):
    assert is_default("generate", name, value) is expected


@pytest.mark.parametrize("value, expected", [
    (None, True), ([], True), ("", True), ("  ", True), ("[]", True), ([[1, 2]], False),
    ("[[1, 2]]", False), ([[2, 1]], False), ({"start_time": 1}, False),
])
def test_is_default_reads_extra_ranges(value, expected):
    assert is_default("inpaint", "extra_ranges", value) is expected


JAZZ = {"start_time": 40.0, "end_time": 48.0, "tags": "jazz", "lyrics": ""}
SUNG = {"start_time": 300.0, "end_time": 301.5, "tags": "", "lyrics": "[verse]\nla"}


@pytest.mark.parametrize("raw", [
    [JAZZ, SUNG],
    [{"start_time": 40, "end_time": "48", "tags": "jazz"}, {**SUNG, "tags": None}],
    '[{"start_time": 40, "end_time": 48, "tags": "jazz"}, '
    '{"start_time": 300, "end_time": 301.5, "lyrics": "[verse]\\nla"}]',
    [[40, 48, "jazz"], [300, 301.5, "", "[verse]\nla"]],
    [("40", "48.0", "jazz", None),
     {"end_time": 301.5, "start_time": 300.0, "lyrics": "[verse]\nla"}],
    '[[40, 48, "jazz"], [300, 301.5, null, "[verse]\\nla"]]',
])
def test_extra_ranges_take_objects_rows_or_json_text(raw):
    request = inpaint(extra_ranges=raw)
    assert request.extra_ranges == (ExtraRange(40.0, 48.0, "jazz", ""),
                                    ExtraRange(300.0, 301.5, "", "[verse]\nla"))
    assert request.to_dict()["extra_ranges"] == [JAZZ, SUNG]  # what params["request"] keeps
    assert "extra_ranges" in request.explicit


def test_no_extra_ranges_is_the_default_request():
    plain = inpaint()
    assert plain.extra_ranges == () and plain.to_dict()["extra_ranges"] == []
    for empty in ([], "", " ", "[]"):
        assert inpaint(extra_ranges=empty) == plain  # equal: `explicit` does not compare


EXAMPLE = re.escape('[{"start_time": 40, "end_time": 48, "tags": "jazz, brass", "lyrics": ""}]')


@pytest.mark.parametrize("raw, message", [
    (5, f"'extra_ranges' must be a list of ranges such as {EXAMPLE}, or that list as JSON text, "
        f"not int"),
    ({"start_time": 1, "end_time": 3}, "'extra_ranges' must be a list of ranges .*, not dict"),
    ("[[1, 3]", r"'extra_ranges' is not valid JSON \(Expecting ',' delimiter: line 1 column 8"),
    ("[" * 100_000, "'extra_ranges' is nested too deeply"),
    ('"1, 3"', "'extra_ranges' must be a list of ranges such as .*, not str"),
    ("x" * 400_000, "'extra_ranges' is 400,000 characters long; at most 385,600"),
    ([[0, 2]] * 9, "'extra_ranges' has 9 ranges; at most 8 are allowed: drop some, or run the rest "
                   "in a second inpaint"),
    ([[1, 3], "1-3"], f"'extra_ranges' range 2 must be an object such as {EXAMPLE[2:-2]} or a "
                      f"list \\[start_time, end_time, tags, lyrics\\], not str"),
    ([[1]], r"'extra_ranges' range 1 has 1 item; give 2 to 4: \[start_time, end_time, tags, "
            r"lyrics\]"),
    ([[1, 3, "a", "b", "c"]], "'extra_ranges' range 1 has 5 items; give 2 to 4"),
    ([{"start": 1, "end_time": 3}], "'extra_ranges' range 1 has an unknown key 'start' \\(did you "
                                    "mean 'start_time'\\?\\); a range takes start_time, end_time, "
                                    "tags, lyrics"),
    ([{"end_time": 3}], "'extra_ranges' range 1 needs a start_time, in seconds from the track's "
                        "start"),
    ([[1, ""]], "'extra_ranges' range 1 needs a end_time"),
    ([[1, "x"]], "'extra_ranges' range 1: 'end_time' must be a number, not 'x'"),
    ([[True, 3]], "'extra_ranges' range 1: 'start_time' must be a number, not True"),
    ([[float("nan"), 3]], "'extra_ranges' range 1: 'start_time' must be a finite number"),
    ([[-1, 3]], "'extra_ranges' range 1: 'start_time' must be seconds from the track's start, 0 or "
                "more, not -1"),
    ([[0, 10 ** 400]], "'end_time' must be seconds from the track's start, 0 or more, not a number "
                       "beyond ±1e308"),
    ([[1, 3, 7]], "'extra_ranges' range 1: 'tags' must be text, not int"),
    ([[1, 3, "", "é" * 4001]], "'extra_ranges' range 1: 'lyrics' is 4,001 characters long; at most "
                               "4,000 are allowed: shorten it"),
    ([[5, 3]], r"'extra_ranges' range 1 ends at 3 s, before its start 5 s; give an end_time after "
               r"its start_time"),
    ([[0, 8], [5, 5]], r"'extra_ranges' range 2 ends at 5 s, at its start 5 s"),
    ([[10, 10.5]], r"'extra_ranges' range 1 \(10–10.5 s\) is 0.5 s long; a range must be at least "
                   r"1 s: widen it"),
    ([[1000, 1240.25]], r"'extra_ranges' range 1 \(1000–1240.25 s\) is 240.25 s long; at most "
                        r"240 s can be regenerated in one pass: split it into shorter ranges"),
    ([[10, 20], [0, 5], [19.5, 25]], r"extra range 3 \(19.5–25 s\) overlaps extra range 1 \(10–20 "
                                     r"s\): start extra range 3 at 20 s or later, or end extra "
                                     r"range 1 at 19.5 s or earlier \(ranges may touch\)"),
])
def test_bad_extra_ranges_say_what_to_change(raw, message):
    with pytest.raises(InputError, match=message):
        inpaint(extra_ranges=raw)


def test_extra_ranges_may_touch():
    assert len(inpaint(extra_ranges=[[0, 5], [5, 10], [10, 11]]).extra_ranges) == 3


def test_extra_ranges_are_checked_against_the_source_and_the_main_range():
    request = inpaint(start_time=100, end_time=110, extra_ranges=[[3500, 3599.9999999], [90, 100]])
    main = resolve_range(request, 3600.0)
    assert resolve_extra_ranges(request, main, 3600.0) == request.extra_ranges  # past 240 s too
    # an end a hair past the source (a rounding of its length) is the source's end
    touching = inpaint(extra_ranges=[[1, 20.0000001]])
    assert resolve_extra_ranges(touching, (0, 1), 20.0) == (ExtraRange(1.0, 20.0),)
    with pytest.raises(InputError, match=r"extra range 1 \(3500–3600 s\) ends past the end of "
                                         r"the 1800 s source; end it at 1800 s at the latest, or "
                                         r"drop it"):
        resolve_extra_ranges(request, main, 1800.0)
    with pytest.raises(InputError, match=r"the main range \(95–105 s\) overlaps extra range 2 "
                                         r"\(90–100 s\): start the main range at 100 s or later, "
                                         r"or end extra range 2 at 95 s or earlier"):
        resolve_extra_ranges(request, (95.0, 105.0), 3600.0)
    ends_late = inpaint(start_time=20, start_time_relative_to="end", end_time=0,
                        end_time_relative_to="end", extra_ranges=[[30, 45]])
    with pytest.raises(InputError, match=r"the main range \(40–60 s\) overlaps extra range 1 "
                                         r"\(30–45 s\): start the main range at 45 s or later, or "
                                         r"end extra range 1 at 40 s or earlier"):
        resolve_extra_ranges(ends_late, resolve_range(ends_late, 60.0), 60.0)


def test_complete_names_tracks_from_upstreams_list():
    request = parse_request("complete", {"tags": "pop", "audio": "a.wav",
                                         "track_classes": " drums, bass ,"})
    assert request.track_list == ["drums", "bass"]
    with pytest.raises(InputError, match="'kazoo', which is no track; choose from vocals"):
        parse_request("complete", {"tags": "pop", "audio": "a.wav", "track_classes": "drums, kazoo"})
