"""The app in a real Chromium: fill each tab, run it, and check what a musician sees.

Needs /usr/bin/chromium (Debian's package); a missing browser fails these tests rather than
skipping them. Screenshots of each tab land in the test's tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import pytest
import numpy
import soundfile
from playwright.sync_api import Page, expect, sync_playwright


pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--mute-audio"]
RESULT_TIMEOUT_MS = 60_000
# Screenshots a reviewer looks at, kept after the run (gitignored).
ARTIFACTS = Path(os.environ.get("ACE_STEP_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))
AUDIO_MAGIC = (b"RIFF", b"fLaC", b"ID3")


@pytest.fixture(scope="module")
def app_url(served) -> str:
    return served.url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, app_url) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_app(page, app_url)
    yield page
    page.close()


def open_app(page: Page, url: str) -> None:
    """Load the app and wait until it is drawn (the session's heartbeat keeps the network busy)."""
    page.goto(url)
    expect(page.locator("#generate-run")).to_be_visible(timeout=30_000)


def fill_text(page: Page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea").fill(text)


def fill_number(page: Page, elem_id: str, value: float) -> None:
    """A Slider's or Number's box: type the value and leave the field so Gradio takes it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def number_in(page: Page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def fast_steps(page: Page, task: str) -> None:
    """Open Advanced and set 2 steps. A loaded machine may still be drawing the accordion's fields
    when the value is typed, and a field drawn afresh shows its preset again: so the value is
    typed until it holds."""
    page.locator(f"#{task}-advanced").get_by_text("Advanced").click()
    box = page.locator(f"#{task}-number_of_steps input[type=number]")
    for _ in range(3):
        fill_number(page, f"{task}-number_of_steps", 2)
        page.wait_for_timeout(300)
        if box.input_value() == "2":
            break
    expect(box).to_have_value("2")


def seconds(path) -> str:
    return f"{soundfile.info(str(path)).duration:g}"


def upload_source(page: Page, task: str, path) -> None:
    page.locator(f"#{task}-audio input[type=file]").set_input_files(str(path))
    expect(page.locator(f"#{task}-audio a[download]")).to_have_count(1, timeout=15_000)
    if task == "inpaint":  # the range fits itself to the upload: the end (30 s) moves inside
        expect(page.locator("#inpaint-end_time input[type=number]")).to_have_value(seconds(path))


def run_and_check_result(page: Page, task: str) -> int:
    """Click the tab's run button; the result must be a served audio file and the seed shown."""
    page.locator(f"#{task}-run").click()
    link = page.locator(f"#{task}-result a[download]")
    expect(link).to_have_count(1, timeout=RESULT_TIMEOUT_MS)
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    body = response.body()
    assert len(body) > 1000 and body[:4].startswith(AUDIO_MAGIC), body[:16]
    seed = page.locator(f"#{task}-seed-used input")
    expect(seed).to_have_value(re.compile(r"^\d+$"))
    return int(seed.input_value())


def open_params(page: Page, task: str) -> None:
    """Unfold the result's full params (JSON)."""
    page.locator(f"#{task}-params-json").get_by_text("All params (JSON)").click()


def test_generate_tab(page, tmp_path):
    page.get_by_role("button", name="Lo-fi study beat").click()
    expect(page.locator("#generate-tags textarea")).to_have_value(re.compile("lofi hip hop"))
    fill_text(page, "generate-tags", "lofi, rhodes, vinyl crackle")
    fill_text(page, "generate-lyrics", "[inst]")
    fill_number(page, "generate-duration", 2)
    fill_number(page, "generate-seed", 42)
    fast_steps(page, "generate")
    assert run_and_check_result(page, "generate") == 42
    open_params(page, "generate")
    expect(page.locator("#generate-params")).to_contain_text("generate")
    page.screenshot(path=tmp_path / "generate.png", full_page=True)

    page.locator("#generate-to-inpaint").click()  # the result becomes the Inpaint source
    expect(page.get_by_role("tab", name="Inpaint")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#inpaint-audio a[download]")).to_have_count(1)
    expect(page.locator("#inpaint-tags textarea")).to_have_value("lofi, rhodes, vinyl crackle")
    expect(page.locator("#inpaint-end_time input[type=number]")).to_have_value("2")


def test_inpaint_tab(page, sine_wav, tmp_path):
    page.get_by_role("tab", name="Inpaint").click()
    upload_source(page, "inpaint", sine_wav)
    assert page.locator("#inpaint-end_time input[type=range]").get_attribute("max") == seconds(
        sine_wav)
    fill_number(page, "inpaint-start_time", 1)
    fill_number(page, "inpaint-end_time", 3)
    fill_text(page, "inpaint-tags", "lofi")
    fast_steps(page, "inpaint")
    run_and_check_result(page, "inpaint")
    page.screenshot(path=tmp_path / "inpaint.png", full_page=True)


def test_playhead_sets_the_start(page, sine_wav):
    page.get_by_role("tab", name="Inpaint").click()
    upload_source(page, "inpaint", sine_wav)
    length = soundfile.info(str(sine_wav)).duration
    expect(page.locator("#inpaint-audio #duration")).to_have_text(f"0:{length:02.0f}")  # drawn
    box = page.locator("#inpaint-audio #waveform").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    page.locator("#inpaint-start-playhead").click()
    expect(page.locator("#inpaint-start_time input[type=number]")).not_to_have_value("0")
    assert number_in(page, "inpaint-start_time") == pytest.approx(0.75 * length, abs=0.3)


def test_outpaint_tab(page, sine_wav, tmp_path):
    page.get_by_role("tab", name="Outpaint").click()
    upload_source(page, "outpaint", sine_wav)
    fill_number(page, "outpaint-extend_after_duration", 2)
    fill_text(page, "outpaint-tags", "lofi")
    fast_steps(page, "outpaint")
    run_and_check_result(page, "outpaint")
    page.screenshot(path=tmp_path / "outpaint.png", full_page=True)


def test_cover_tab(page, sine_wav, tmp_path):
    page.get_by_role("tab", name="Cover").click()
    upload_source(page, "cover", sine_wav)
    fill_text(page, "cover-tags", "jazz, brass")
    fill_number(page, "cover-audio_cover_strength", 0.6)
    fast_steps(page, "cover")
    run_and_check_result(page, "cover")
    open_params(page, "cover")
    expect(page.locator("#cover-params")).to_contain_text("audio_cover_strength")
    page.screenshot(path=tmp_path / "cover.png", full_page=True)


def test_stems_on_a_turbo_model_say_which_model_runs_them(page, sine_wav):
    page.get_by_role("tab", name="Stems").click()
    page.get_by_role("tab", name="Extract").click()
    upload_source(page, "extract", sine_wav)
    fill_text(page, "extract-tags", "pop")
    page.locator("#extract-run").click()
    expect(toasts(page)).to_contain_text("extract runs on an ACE-Step 1.5 base model",
                                         timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#extract-tags textarea")).to_have_value("pop")  # nothing typed is lost


def test_bad_range_shows_the_message_and_keeps_the_inputs(page, sine_wav, tmp_path):
    page.get_by_role("tab", name="Inpaint").click()
    upload_source(page, "inpaint", sine_wav)
    fill_number(page, "inpaint-start_time", 3)
    fill_number(page, "inpaint-end_time", 2)
    fill_text(page, "inpaint-tags", "dream pop, shoegaze")
    page.locator("#inpaint-run").click()
    expect(page.get_by_text("before start_time 3.0 s")).to_be_visible(timeout=15_000)
    page.screenshot(path=tmp_path / "inpaint-error.png", full_page=True)
    assert number_in(page, "inpaint-start_time") == 3
    assert number_in(page, "inpaint-end_time") == 2
    expect(page.locator("#inpaint-tags textarea")).to_have_value("dream pop, shoegaze")
    expect(page.locator("#inpaint-audio a[download]")).to_have_count(1)
    expect(page.locator("#inpaint-result a[download]")).to_have_count(0)


def test_advanced_follows_the_selected_model(page):
    page.locator("#generate-advanced").get_by_text("Advanced").click()
    expect(page.locator("#generate-number_of_steps")).to_be_visible()
    expect(page.locator("#generate-guidance_scale")).to_be_hidden()  # the tiny model is turbo
    page.locator("#model input").click()
    page.get_by_role("option", name="ACE-Step/acestep-v15-xl-base-diffusers").click()
    expect(page.locator("#generate-guidance_scale")).to_be_visible()
    expect(page.locator("#generate-scheduler")).to_be_hidden()  # no engine applies it yet
    # The fields show the chosen model's own presets: 1.5 base runs 50 steps at guidance 7.
    expect(page.locator("#generate-number_of_steps input[type=number]")).to_have_value("50")
    expect(page.locator("#generate-guidance_scale input[type=number]")).to_have_value("7")
    page.locator("#model input").click()
    page.get_by_role("option", name="ACE-Step/ACE-Step-v1-3.5B").click()
    expect(page.locator("#generate-number_of_steps input[type=number]")).to_have_value("27")
    expect(page.locator("#generate-scheduler")).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def code_in(page: Page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} .cm-content").inner_text()


def test_a_result_brings_its_seed_summary_and_api_calls(page, served):
    """Before a result: no seed, no send buttons; the steps show the turbo model's 8, and Random is
    a small text button. After: the summary, and API calls that replay the same audio."""

    for hidden in ("seed-used", "reuse-seed", "to-inpaint", "to-outpaint", "to-edit", "summary"):
        expect(page.locator(f"#generate-{hidden}")).to_be_hidden()
    page.locator("#generate-advanced").get_by_text("Advanced").click()
    expect(page.locator("#generate-number_of_steps input[type=number]")).to_have_value("8")
    dice = page.locator("#generate-random-seed")
    expect(dice).to_have_text("Random")
    assert dice.bounding_box()["height"] < 0.6 * page.locator("#generate-seed").bounding_box()["height"]
    screenshot(page, "generate-before-a-result")

    fill_text(page, "generate-tags", "lofi, tape hiss")
    fill_number(page, "generate-duration", 1)
    seed = run_and_check_result(page, "generate")
    summary = page.locator("#generate-summary")
    expect(summary).to_contain_text(f"seed {seed}")
    expect(summary).to_contain_text("8 steps")  # the preset ran: it was not sent
    expect(summary).to_contain_text(f"ACE-Step 1.5 {Path(served.model).name}")
    for shown in ("seed-used", "to-inpaint", "to-outpaint", "to-edit"):
        expect(page.locator(f"#generate-{shown}")).to_be_visible()
    page.locator("#generate-api-call").get_by_text("Copy as API call").click()
    python = code_in(page, "generate-call-python")
    curl = code_in(page, "generate-call-curl")
    cli = code_in(page, "generate-call-cli")
    assert f"seed={seed}" in python and "api_name='/generate'" in python
    assert "number_of_steps" not in python  # what the form left at the model's preset
    assert "/v1/models/acestep-ai/ace-step-1.5/text-to-audio" in curl
    assert cli.startswith("python -m ace_step_ui run generate")
    screenshot(page, "generate-after-a-result")

    scope: dict = {}
    exec(python, scope)  # the snippet as a user pastes it, against this server
    shown = page.request.get(page.locator("#generate-result a[download]").get_attribute("href"))
    assert soundfile.read(scope["path"])[0].tobytes() == soundfile.read(
        io.BytesIO(shown.body()))[0].tobytes()


def toasts(page: Page):
    return page.locator(".toast-body")


def test_every_event_shows_its_error_once(page, sine_wav):
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#inpaint-start-playhead").click()  # no source yet
    expect(toasts(page)).to_contain_text("upload the source audio first")
    expect(page.locator("#inpaint-start_time input[type=number]")).to_have_value("0")

    upload_source(page, "inpaint", sine_wav)
    fill_number(page, "inpaint-start_time", 3.5)
    fill_text(page, "inpaint-tags", "lofi")
    page.locator("#inpaint-run").click()  # the range is checked against the source on the server
    expect(toasts(page)).to_contain_text("the edited range must be at least 1 s long")
    # One message (the toast) and one status, on the result only: what goes with a result
    # (the seed used, the params) stays hidden.
    expect(page.locator("#inpaint-after")).to_be_hidden()
    expect(page.locator("#inpaint-result")).to_contain_text("Error")
    expect(page.locator("#inpaint-tags textarea")).to_have_value("lofi")


def test_stop_keeps_the_last_result_and_says_so(page, served, steps_of):
    fill_text(page, "generate-tags", "lofi")
    fill_number(page, "generate-duration", 1)
    fast_steps(page, "generate")
    seed = run_and_check_result(page, "generate")
    first = page.locator("#generate-result a[download]").get_attribute("href")
    fill_number(page, "generate-number_of_steps", 200)
    fill_number(page, "generate-duration", 2)
    steps_of(served.manager, pace=0.05)
    page.locator("#generate-run").click()
    expect(page.locator("#generate-result")).to_contain_text("/200", timeout=RESULT_TIMEOUT_MS)
    page.locator("#generate-stop").click()
    expect(toasts(page)).to_contain_text(re.compile(r"Stopped by the user after step \d+ of 200; "
                                                    r"the last result is kept"))
    expect(page.locator("#generate-result a[download]")).to_have_attribute("href", first)
    expect(page.locator("#generate-seed-used input")).to_have_value(str(seed))
    assert not served.manager.slot.busy


def test_closing_the_tab_stops_its_job(browser, served, steps_of):
    steps = steps_of(served.manager, pace=0.05)
    page = browser.new_page()
    open_app(page, served.url)
    fill_text(page, "generate-tags", "lofi")
    fast_steps(page, "generate")
    fill_number(page, "generate-number_of_steps", 200)
    page.locator("#generate-run").click()
    expect(page.locator("#generate-result")).to_contain_text("/200", timeout=RESULT_TIMEOUT_MS)
    page.close()
    deadline = time.monotonic() + 20
    while served.manager.slot.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served.manager.slot.busy, "the closed tab's job kept the model"
    assert [stopping for _, stopping in steps].count(True) == 1 and len(steps) < 200


def test_the_same_request_gives_the_same_audio_on_every_surface(page, served, tmp_path, capsys):
    """The CLI, the Gradio API and the page, with the same values: the same samples."""
    from gradio_client import Client

    from ace_step_ui import cli
    from ace_step_ui.audio import read_metadata

    values = {"tags": "lofi, rhodes", "lyrics": "[inst]", "duration": 2, "seed": 5,
              "number_of_steps": 2}
    assert cli.main(["run", "generate", "--input", json.dumps(values), "--output-dir",
                     str(tmp_path), "--model", served.model, "--format", "wav"]) == 0
    from_cli = capsys.readouterr().out.strip()
    from_api, _, _ = Client(served.url, verbose=False).predict(api_name="/generate", **values)
    fill_text(page, "generate-tags", values["tags"])
    fill_text(page, "generate-lyrics", values["lyrics"])
    fill_number(page, "generate-duration", values["duration"])
    fill_number(page, "generate-seed", values["seed"])
    fast_steps(page, "generate")
    for name in ("duration", "seed", "number_of_steps"):
        expect(page.locator(f"#generate-{name} input[type=number]")).to_have_value(
            str(values[name]))
    assert run_and_check_result(page, "generate") == values["seed"]
    link = page.locator("#generate-result a[download]").get_attribute("href")
    from_page = tmp_path / "page.wav"
    from_page.write_bytes(page.request.get(link).body())
    for path in (from_cli, from_api, from_page):  # each ran with exactly these values
        assert read_metadata(path)["params"]["request"] == values
    reference, rate = soundfile.read(from_cli, dtype="float32")
    for other in (from_api, from_page):
        samples, other_rate = soundfile.read(str(other), dtype="float32")
        assert other_rate == rate and samples.shape == reference.shape
        assert samples.tobytes() == reference.tobytes()


def test_fals_prompt_to_audio_example_on_every_surface(page, served, tmp_path, capsys):
    """fal's prompt-to-audio request (examples/prompt_to_audio.json) through the CLI, the Gradio API
    and the page: the same written song, and Open in Generate fills it in to replay."""
    from pathlib import Path

    from gradio_client import Client

    from ace_step_ui import cli
    from ace_step_ui.audio import read_metadata

    example_path = Path(__file__).resolve().parent.parent / "examples" / "prompt_to_audio.json"
    example = json.loads(example_path.read_text())
    assert cli.main(["run", "prompt-to-audio", "--input", f"@{example_path}", "--output-dir",
                     str(tmp_path), "--model", served.model, "--planner",
                     served.manager.planner_model]) == 0
    from_cli = read_metadata(capsys.readouterr().out.strip())["params"]
    _, _, from_api = Client(served.url, verbose=False).predict(api_name="/prompt_to_audio",
                                                               **example)
    assert from_api["request"] == from_cli["request"] == example
    assert (from_api["tags"], from_api["lyrics"]) == (from_cli["tags"], from_cli["lyrics"])

    page.get_by_role("tab", name="Prompt to audio").click()
    fill_text(page, "prompt_to_audio-prompt", example["prompt"])
    fill_number(page, "prompt_to_audio-duration", example["duration"])
    fill_number(page, "prompt_to_audio-seed", example["seed"])
    assert run_and_check_result(page, "prompt_to_audio") == example["seed"]
    # The same seed writes the same song (the page leaves the model's own step preset).
    expect(page.locator("#prompt_to_audio-written-tags textarea")).to_have_value(from_cli["tags"])
    expect(page.locator("#prompt_to_audio-written-lyrics textarea")).to_have_value(
        from_cli["lyrics"])
    open_params(page, "prompt_to_audio")
    expect(page.locator("#prompt_to_audio-params")).to_contain_text("generate_request")
    page.screenshot(path=tmp_path / "prompt_to_audio.png", full_page=True)

    page.locator("#prompt_to_audio-to-generate").click()
    expect(page.get_by_role("tab", name="Generate", exact=True)).to_have_attribute(
        "aria-selected", "true")
    expect(page.locator("#generate-tags textarea")).to_have_value(from_cli["tags"])
    expect(page.locator("#generate-lyrics textarea")).to_have_value(from_cli["lyrics"])
    expect(page.locator("#generate-seed input[type=number]")).to_have_value(str(example["seed"]))
    expect(page.locator("#generate-duration input[type=number]")).to_have_value(
        str(example["duration"]))


def test_a_phone_sees_every_tab_and_the_model_name(browser, served):
    page = browser.new_page(viewport={"width": 375, "height": 812}, color_scheme="dark")
    try:
        open_app(page, served.url)
        for name in ("Generate", "Prompt to audio", "Inpaint", "Outpaint", "Edit", "Cover", "Stems"):
            tab = page.get_by_role("tab", name=name, exact=True)
            expect(tab).to_be_visible()  # none hides in an overflow menu
            box = tab.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 375, (name, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing sticks out
        model = page.locator("#model input")
        expect(model).to_have_value(f"{Path(served.model).name} (local folder)")
        assert model.evaluate("box => box.scrollWidth <= box.clientWidth")  # not cut
        # dark mode follows the system's
        background = page.evaluate("getComputedStyle(document.querySelector('gradio-app') || "
                                   "document.body).backgroundColor")
        red, green, blue = map(int, re.findall(r"\d+", background)[:3])
        assert red + green + blue < 3 * 100, background
        screenshot(page, "phone-375-dark")
        page.get_by_role("tab", name="Edit", exact=True).click()
        expect(page.locator("#edit-run")).to_be_visible()
        screenshot(page, "phone-375-edit")
    finally:
        page.close()


def test_the_inpaint_range_is_dragged_on_the_waveform_and_follows_the_fields(page, sine_wav):
    page.get_by_role("tab", name="Inpaint").click()
    canvas = page.locator("#inpaint-waveform canvas")
    expect(page.locator("#inpaint-waveform")).to_contain_text("Upload a source")
    upload_source(page, "inpaint", sine_wav)  # 4 s: the range fits itself to 0-4 s
    readout = page.locator("#inpaint-waveform .wave-readout")
    expect(readout).to_have_text("0.00 s – 4.00 s")
    box = canvas.bounding_box()

    def at(seconds_in: float) -> tuple[float, float]:
        return box["x"] + box["width"] * seconds_in / 4, box["y"] + box["height"] / 2

    page.mouse.move(*at(1.0))
    page.mouse.down()
    page.mouse.move(*at(2.0), steps=5)
    page.mouse.move(*at(3.0), steps=5)
    page.mouse.up()
    start = page.locator("#inpaint-start_time input[type=number]")
    end = page.locator("#inpaint-end_time input[type=number]")
    expect(start).to_have_value(re.compile(r"^(0\.9[5-9]|1(\.0\d?)?)$"))
    expect(end).to_have_value(re.compile(r"^(2\.9[5-9]|3(\.0\d?)?)$"))
    screenshot(page, "inpaint-range-dragged")

    page.mouse.move(*at(3.0))  # grab the end edge and pull it out to 3.5 s
    page.mouse.down()
    page.mouse.move(*at(3.5), steps=5)
    page.mouse.up()
    expect(end).to_have_value(re.compile(r"^3\.(4[5-9]|5\d?)$"))

    fill_number(page, "inpaint-start_time", 0.5)  # and the other way: the field moves the range
    expect(readout).to_contain_text(re.compile(r"^0\.50 s – 3\.\d\d s"))
    page.locator("#inpaint-end_time_relative_to").get_by_text("end", exact=True).click()
    fill_number(page, "inpaint-end_time", 1)  # 1 s before the end
    expect(readout).to_have_text("0.50 s – 3.00 s")
    page.locator("#inpaint-waveform .wave-zoom-in").click()
    expect(readout).to_contain_text("showing 1.0–3.0 s")
    screenshot(page, "inpaint-range-zoomed")


def test_the_outpaint_tab_shows_the_source_kept_between_the_new_parts(page, sine_wav):
    page.get_by_role("tab", name="Outpaint").click()
    readout = page.locator("#outpaint-waveform .wave-readout")
    expect(readout).to_have_text("Upload a source to see its waveform here")
    page.locator("#outpaint-audio input[type=file]").set_input_files(str(sine_wav))
    expect(readout).to_have_text("kept: the whole 4.00 s source; new: 30.00 s after → 34.00 s",
                                 timeout=15_000)
    fill_number(page, "outpaint-extend_before_duration", 5)
    expect(readout).to_have_text("kept: the whole 4.00 s source; new: 5.00 s before, 30.00 s "
                                 "after → 39.00 s")
    screenshot(page, "outpaint-kept-and-new")


def test_two_ranges_are_marked_on_the_waveform_and_repainted_in_one_run(page, sine_wav,
                                                                      tmp_path):
    page.get_by_role("tab", name="Inpaint").click()
    upload_source(page, "inpaint", sine_wav)  # 4 s
    canvas = page.locator("#inpaint-waveform canvas")

    def drag(first: float, last: float) -> None:
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()  # where it is now: editing a cell may scroll the page
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * first / 4, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * last / 4, y, steps=8)
        page.mouse.up()

    readout = page.locator("#inpaint-waveform .wave-readout")
    drag(0.5, 1.5)
    expect(readout).to_contain_text(re.compile(r"^0\.\d\d s – 1\.\d\d s$"))
    page.locator("#inpaint-add-range").click()
    table = page.locator("#inpaint-extra_ranges")
    expect(table.locator('[data-testid="cell-0-0"]')).to_contain_text(re.compile(r"^\s*0\.\d+"))
    expect(table.locator('[data-testid="cell-1-0"]')).to_have_count(0)  # one row
    table.locator('[data-testid="cell-0-2"]').dblclick()  # the row's own tags
    page.keyboard.type("glitch, stutter")
    page.keyboard.press("Enter")
    expect(table.locator('[data-testid="cell-0-2"]')).to_contain_text("glitch, stutter")
    drag(2.5, 3.5)
    expect(readout).to_contain_text(re.compile(r"^2\.\d\d s – 3\.\d\d s and 1 more range$"))
    screenshot(page, "inpaint-two-ranges")
    fill_text(page, "inpaint-tags", "lofi, piano")
    fast_steps(page, "inpaint")
    run_and_check_result(page, "inpaint")
    from ace_step_ui.audio import read_metadata

    link = page.locator("#inpaint-result a[download]").get_attribute("href")
    path = tmp_path / "two-ranges.wav"
    path.write_bytes(page.request.get(link).body())
    params = read_metadata(path)["params"]
    ranges = params["engine"]["ranges"]  # in run order: the dragged range, then the added one
    assert [(item["start_s"], item["end_s"]) for item in ranges] == [
        (pytest.approx(2.5, abs=0.1), pytest.approx(3.5, abs=0.1)),
        (pytest.approx(0.5, abs=0.1), pytest.approx(1.5, abs=0.1))]
    assert [item["tags"] for item in ranges] == ["lofi, piano", "glitch, stutter"]
    assert params["request"]["extra_ranges"][0]["tags"] == "glitch, stutter"
    source, rate = soundfile.read(str(sine_wav), dtype="float32")
    result, _ = soundfile.read(str(path), dtype="float32")
    assert result.shape == source.shape
    for first, last in ((0, 0.4), (1.6, 2.4), (3.6, 4)):  # outside both ranges: the source's own
        kept = slice(int(first * rate), int(last * rate))
        assert numpy.array_equal(result[kept], source[kept]), (first, last)
    assert not numpy.array_equal(result[int(0.6 * rate):int(1.4 * rate)],
                                 source[int(0.6 * rate):int(1.4 * rate)])
