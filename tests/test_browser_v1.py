"""ACE-Step v1 in a real Chromium, on the tiny v1 checkpoint: every tab runs from the page with every
Advanced parameter v1 applies set away from its default, and the params shown say they were applied.

Needs /usr/bin/chromium (Debian's package); a missing browser fails these tests rather than
skipping them. Screenshots of each tab land in the test's tmp_path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from ace_step_ui.engines import family_for
from ace_step_ui.requests import TASKS, schema
from ace_step_ui.v1.engine import TASK_PARAMS
from test_browser import (browser, fill_number, fill_text, open_app,  # noqa: F401 (a fixture)
                          upload_source)

pytestmark = pytest.mark.browser

RESULT_TIMEOUT_MS = 90_000  # the first run loads the model
V1_HUB_ID = "ACE-Step/ACE-Step-v1-3.5B"
V15_BASE = "ACE-Step/acestep-v15-xl-base-diffusers"
# v1 renders whole latent frames (8 x 512 samples at 44.1 kHz), rounding each part of the song.
FRAME_S = 8 * 512 / 44100
# Non-default values, as typed into the page, of every Advanced parameter v1 applies. Scheduler
# pingpong is the only non-default one that takes oss_steps. oss_steps "1, 2" runs two steps.
ADVANCED_VALUES: dict[str, Any] = {
    "retake_seed": 99, "number_of_steps": 3, "scheduler": "pingpong",
    "guidance_type": "cfg_star", "granularity_scale": 5, "guidance_interval": 0.8,
    "guidance_interval_decay": 0.5, "guidance_scale": 12.5, "minimum_guidance_scale": 2.5,
    "tag_guidance_scale": 4.5, "lyric_guidance_scale": 1.2, "use_erg_tag": False,
    "use_erg_lyric": False, "use_erg_diffusion": False, "oss_steps": "1, 2", "lora_scale": 0.7,
    "variance": 0.3, "audio2audio_strength": 0.6, "context_duration": 2.5, "crossfade_duration": 0.2,
}
# The request value each typed value becomes, where it differs.
AS_SENT = {"oss_steps": [1, 2]}
def applied_advanced(task: str) -> list[str]:
    """The Advanced parameters of `task` that v1 applies: the ones its tab must show."""
    return [name for name, spec in schema(task).items()
            if spec["advanced"] and name in TASK_PARAMS.get(task, ())]


@pytest.fixture(scope="module")
def lora_dir(served_v1) -> str:
    """The parity fixture's LoRA folder, next to the tiny checkpoint."""
    return str(Path(served_v1.model).parent / "lora")


@pytest.fixture
def page(browser, served_v1) -> Page:  # noqa: F811 (browser is the fixture imported above)
    # The params are read back through their Copy button, so the page may read the clipboard.
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    open_app(page, served_v1.url)
    yield page
    context.close()


def open_tab(page: Page, task: str) -> None:
    page.get_by_role("tab", name=task.capitalize()).click()
    expect(page.get_by_role("tab", name=task.capitalize())).to_have_attribute("aria-selected",
                                                                            "true")


def open_advanced(page: Page, task: str) -> None:
    page.locator(f"#{task}-advanced").get_by_text("Advanced").click()
    expect(page.locator(f"#{task}-number_of_steps")).to_be_visible()


def set_field(page: Page, task: str, name: str, value: Any) -> None:
    """Type, tick, choose or upload `value` into the component of parameter `name`."""
    spec = schema(task)[name]
    field = page.locator(f"#{task}-{name}")
    if name in ("audio", "reference_audio"):
        field.locator("input[type=file]").set_input_files(str(value))
        expect(field.locator("a[download]")).to_have_count(1, timeout=15_000)
    elif spec["choices"]:
        field.locator(f"label[data-testid='{value}-radio-label']").click()
        expect(field.locator(f"input[value='{value}']")).to_be_checked()
    elif spec["type"] == "bool":
        field.locator("input[type=checkbox]").set_checked(value)
    elif spec["type"] in ("str", "int_list"):
        fill_text(page, f"{task}-{name}", str(value))
    else:
        fill_number(page, f"{task}-{name}", value)


def set_advanced(page: Page, task: str, values: dict[str, Any]) -> None:
    """Open Advanced, check that exactly the parameters v1 applies are shown, and set `values`."""
    open_advanced(page, task)
    shown = applied_advanced(task)
    for name, spec in schema(task).items():
        if spec["advanced"]:
            field = expect(page.locator(f"#{task}-{name}"))
            if name in shown:
                field.to_be_visible()
            else:
                field.to_be_hidden()
    for name, value in values.items():
        set_field(page, task, name, value)


def run_and_read_params(page: Page, task: str) -> dict[str, Any]:
    """Run the tab; the result must be playable audio with the seed shown. The params as shown."""
    page.locator(f"#{task}-run").click()
    result = page.locator(f"#{task}-result")
    expect(result.locator("a[download]")).to_have_count(1, timeout=RESULT_TIMEOUT_MS)
    expect(result.get_by_role("button", name="Play", exact=True)).to_be_visible()
    expect(result.locator("#duration")).to_have_text(re.compile(r"^0:0[1-9]$"))  # decoded
    response = page.request.get(result.locator("a[download]").get_attribute("href"))
    assert response.ok and response.body()[:4] == b"RIFF", response.body()[:16]
    seed_used = page.locator(f"#{task}-seed-used input")
    expect(seed_used).to_have_value(re.compile(r"^\d+$"))
    page.locator(f"#{task}-params-json").get_by_text("All params (JSON)").click()
    page.locator(f"#{task}-params button[aria-label='Copy']").click()
    params = json.loads(page.evaluate("navigator.clipboard.readText()"))
    assert params["seed"] == int(seed_used.input_value())
    return params


def check_applied(params: dict[str, Any], task: str, values: dict[str, Any]) -> None:
    """Every value set was sent, reached the engine, and none was ignored."""
    assert params["task"] == task and params["ignored_params"] == []
    request, engine = params["request"], params["engine"]
    for name, value in values.items():
        sent = AS_SENT.get(name, value)
        if name in ("audio", "reference_audio"):
            assert Path(request[name]).name == Path(value).name
        else:
            assert request[name] == sent, name
        if name == "retake_seed":
            assert params["retake_seed"] == value and engine["retake_seeds"] == [value]
        elif name == "reference_audio":
            assert engine["task"] == "audio2audio"
        elif name != "audio":
            assert engine[name] == sent, name


def values_for(task: str, lora_dir: str, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """Non-default values for all of `task`'s Advanced parameters that v1 applies."""
    values = {**ADVANCED_VALUES, "lora": lora_dir}
    chosen = {name: values[name] for name in applied_advanced(task) if name not in leave_out}
    missing = set(applied_advanced(task)) - set(values) - {"reference_audio"}
    assert not missing, f"give {task}'s {sorted(missing)} a test value"
    return chosen


def test_generate_applies_every_advanced_parameter(page, lora_dir, tmp_path):
    # variance (a retake) and a reference track (audio-to-audio) are two ways to run: the
    # reference has its own test.
    values = values_for("generate", lora_dir, leave_out=("reference_audio",
                                                         "audio2audio_strength"))
    fill_text(page, "generate-tags", "lofi, rhodes")
    fill_text(page, "generate-lyrics", "[verse]\nla la la")
    fill_number(page, "generate-duration", 2)
    fill_number(page, "generate-seed", 42)
    set_advanced(page, "generate", values)
    params = run_and_read_params(page, "generate")
    page.screenshot(path=tmp_path / "generate.png", full_page=True)
    check_applied(params, "generate", values)
    assert params["seed"] == 42 and params["engine"]["task"] == "retake"
    assert params["request"]["lyrics"] == "[verse]\nla la la"
    assert params["channels"] == 2 and params["duration_s"] == pytest.approx(2, abs=FRAME_S)


def test_generate_from_a_reference_track(page, sine_wav):
    values = {"number_of_steps": 3, "reference_audio": sine_wav, "audio2audio_strength": 0.6}
    fill_text(page, "generate-tags", "jazz")
    set_advanced(page, "generate", values)
    params = run_and_read_params(page, "generate")
    check_applied(params, "generate", values)
    assert params["engine"]["task"] == "audio2audio"
    assert params["reference"]["duration_s"] == pytest.approx(4)


def test_inpaint_applies_every_advanced_parameter(page, sine_wav, lora_dir, tmp_path):
    values = {**values_for("inpaint", lora_dir), "guidance_type": "cfg"}
    open_tab(page, "inpaint")
    upload_source(page, "inpaint", sine_wav)
    fill_number(page, "inpaint-start_time", 1)
    fill_number(page, "inpaint-end_time", 2.5)
    set_field(page, "inpaint", "variance", 0.7)
    fill_text(page, "inpaint-tags", "lofi")
    set_advanced(page, "inpaint", values)
    params = run_and_read_params(page, "inpaint")
    page.screenshot(path=tmp_path / "inpaint.png", full_page=True)
    check_applied(params, "inpaint", {**values, "audio": sine_wav, "variance": 0.7})
    assert params["range_s"] == [1, 2.5]
    engine = params["engine"]
    assert (engine["task"], engine["region_frames"]) == ("repaint", [10, 26])  # 1-2.5 s, as upstream
    assert params["duration_s"] == 4


def test_outpaint_applies_every_advanced_parameter(page, sine_wav, lora_dir, tmp_path):
    values = values_for("outpaint", lora_dir)
    open_tab(page, "outpaint")
    upload_source(page, "outpaint", sine_wav)
    fill_number(page, "outpaint-extend_before_duration", 0.5)
    fill_number(page, "outpaint-extend_after_duration", 1)
    fill_text(page, "outpaint-tags", "lofi")
    set_advanced(page, "outpaint", values)
    params = run_and_read_params(page, "outpaint")
    page.screenshot(path=tmp_path / "outpaint.png", full_page=True)
    check_applied(params, "outpaint", {**values, "audio": sine_wav})
    engine = params["engine"]
    # 2.5 s of context, less than the 4 s source: one side a pass, each next to its end
    assert engine["task"] == "extend"
    assert [(side["context_s"], side["new_s"]) for side in engine["passes"]] == [
        ([0, 2.5], [0.5, 0]), ([1.5, 4], [0, 1])]
    assert params["duration_s"] == 4 + 0.5 + 1


def test_edit_applies_every_advanced_parameter(page, sine_wav, lora_dir, tmp_path):
    values = {**values_for("edit", lora_dir), "number_of_steps": 4}
    open_tab(page, "edit")
    set_field(page, "edit", "audio", sine_wav)
    set_field(page, "edit", "edit_mode", "lyrics")
    fill_text(page, "edit-original_tags", "pop, piano")
    fill_text(page, "edit-original_lyrics", "[verse]\nold words")
    fill_text(page, "edit-tags", "pop, piano")
    fill_text(page, "edit-lyrics", "[verse]\nnew words")
    set_advanced(page, "edit", values)
    params = run_and_read_params(page, "edit")
    page.screenshot(path=tmp_path / "edit.png", full_page=True)
    check_applied(params, "edit", {**values, "audio": sine_wav})
    assert params["request"]["edit_mode"] == "lyrics"
    assert params["lyrics"] == "[verse]\nnew words"
    engine = params["engine"]
    assert (engine["task"], engine["edit_n_min"], engine["edit_n_max"]) == ("edit", 0.6, 1.0)
    assert params["duration_s"] == 4


def test_a_1_5_model_hides_the_v1_only_fields(page):
    def choose(model: str) -> None:
        page.locator("#model input").click()
        page.get_by_role("option", name=model).click()

    v15 = {task: family_for(V15_BASE).honoured(V15_BASE, task) for task in TASKS}
    choose(V15_BASE)
    open_advanced(page, "generate")
    for task in TASKS:
        for name in applied_advanced(task):
            if name not in v15[task]:
                expect(page.locator(f"#{task}-{name}")).to_be_hidden()
    for name in ("number_of_steps", "guidance_scale", "guidance_interval"):  # the base's own
        expect(page.locator(f"#generate-{name}")).to_be_visible()

    choose(V1_HUB_ID)
    for name in applied_advanced("generate"):
        expect(page.locator(f"#generate-{name}")).to_be_visible()
