"""The studio in a real Chromium: takes side by side, the A/B player, the history across a reload
and a server restart, replay to the same samples, lineage and the recipe."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time

import numpy
import pyloudnorm
import pytest
import soundfile
from playwright.sync_api import Page, expect

from conftest import free_port, serve
from test_browser import (RESULT_TIMEOUT_MS, browser, fast_steps, fill_number,  # noqa: F401
                          fill_text, open_app, screenshot)

pytestmark = pytest.mark.browser
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studio_app(tiny_v15, tmp_path_factory):
    yield from serve(tiny_v15, data_dir=tmp_path_factory.mktemp("studio-data"))


@pytest.fixture
def page(browser, studio_app) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    open_app(page, studio_app.url)
    yield page
    context.close()


def cards(page: Page):
    return page.locator("#history .take-card")


def make_takes(page: Page, takes: int, seed: int, tags: str = "lofi, rhodes") -> None:
    """Generate `takes` takes of a 2 s instrumental at 2 steps from `seed`."""
    fill_text(page, "generate-tags", tags)
    fill_text(page, "generate-lyrics", "[inst]")
    fill_number(page, "generate-duration", 2)
    fill_number(page, "generate-seed", seed)
    if page.locator("#generate-number_of_steps").is_hidden():
        fast_steps(page, "generate")
    else:
        fill_number(page, "generate-number_of_steps", 2)
    fill_number(page, "generate-takes", takes)
    run(page, "generate", takes)


def run(page: Page, tab: str, takes: int = 1) -> None:
    """Run `tab` and wait for its takes to join the history."""
    before = cards(page).count()
    page.locator(f"#{tab}-run").click()
    expect(cards(page)).to_have_count(before + takes, timeout=RESULT_TIMEOUT_MS)


def samples(page: Page, url: str) -> numpy.ndarray:
    """The audio behind a link of the page, decoded."""
    response = page.request.get(url if url.startswith("http") else page.url.split("?")[0] + url)
    assert response.ok, url
    data, _ = soundfile.read(io.BytesIO(response.body()), dtype="float32")
    return data


def take_url(card) -> str:
    return card.locator("audio").get_attribute("src")


def ab_figure(page: Page, name: str) -> str:
    return page.locator("#history .studio").get_attribute(f"data-ab-{name}")


def test_four_takes_side_by_side_and_ab_keeps_the_playhead(page):
    make_takes(page, 4, seed=7)
    run = page.locator("#history .take-run").first
    takes = run.locator(".take-card")
    expect(takes).to_have_count(4)
    assert [takes.nth(i).get_attribute("data-seed") for i in range(4)] == ["7", "8", "9", "10"]
    tops = {round(takes.nth(i).bounding_box()["y"]) for i in range(4)}
    assert len(tops) == 1, "the takes of a run sit side by side"
    audio = [samples(page, take_url(takes.nth(i))) for i in range(4)]
    assert all(not numpy.array_equal(audio[0], other) for other in audio[1:])

    takes.nth(0).get_by_role("button", name="A", exact=True).click()
    takes.nth(1).get_by_role("button", name="B", exact=True).click()
    studio = page.locator("#history .studio")
    expect(studio).to_have_attribute("data-ab-ready", "true", timeout=15_000)
    rate = soundfile.info(io.BytesIO(page.request.get(
        page.url.split("?")[0] + take_url(takes.nth(0))).body())).samplerate
    meter = pyloudnorm.Meter(rate)  # ITU-R BS.1770, as the page's player measures it
    levels = [meter.integrated_loudness(audio[i].astype(numpy.float64)) for i in (0, 1)]
    quiet = min(levels)
    for side, level in zip("ab", levels):
        assert float(ab_figure(page, f"lufs-{side}")) == pytest.approx(level, abs=0.01)
        assert float(ab_figure(page, f"gain-{side}")) == pytest.approx(
            10 ** ((quiet - level) / 20), rel=2e-3)

    page.locator("#history .ab-play").click()
    page.wait_for_function("Number(document.querySelector('#history .studio').dataset"
                           ".abPosition) > 0.5", timeout=10_000)
    before = float(ab_figure(page, "position"))
    page.locator("#history .ab-side-b").click()
    after = float(ab_figure(page, "position"))
    assert ab_figure(page, "side") == "b" and ab_figure(page, "playing") == "true"
    assert 0 <= after - before < 0.3, (before, after)  # the same playhead, no restart
    time.sleep(0.4)
    later = float(ab_figure(page, "position"))
    assert later > after + 0.2, (after, later)  # it kept playing through the switch
    page.locator("#history .ab-side-a").click()
    assert ab_figure(page, "side") == "a" and float(ab_figure(page, "position")) >= later
    screenshot(page, "studio-four-takes-ab")
    page.locator("#history .ab-play").click()
    expect(studio).to_have_attribute("data-ab-playing", "false")


def test_history_survives_a_reload_and_replay_gives_the_same_samples(page):
    make_takes(page, 1, seed=11, tags="replay me, piano")
    card = page.locator('#history .take-card[data-seed="11"]').first
    take_id = card.get_attribute("data-id")
    original = samples(page, take_url(card))

    page.reload()
    expect(page.locator("#generate-run")).to_be_visible(timeout=30_000)
    card = page.locator(f'#history .take-card[data-id="{take_id}"]')
    expect(card).to_have_count(1, timeout=15_000)
    fill_text(page, "generate-tags", "something else")
    fill_number(page, "generate-seed", 1)
    fill_number(page, "generate-duration", 5)
    card.get_by_role("button", name="Replay").click()
    expect(page.locator("#generate-tags textarea")).to_have_value("replay me, piano")
    expect(page.locator("#generate-seed input[type=number]")).to_have_value("11")
    expect(page.locator("#generate-duration input[type=number]")).to_have_value("2")
    run(page, "generate")
    link = page.locator("#generate-result a[download]").get_attribute("href")
    replayed = samples(page, link)
    assert replayed.tobytes() == original.tobytes()
    screenshot(page, "studio-history-after-reload")
    page.set_viewport_size({"width": 375, "height": 800})  # a phone: the cards fit the width
    card = page.locator(f'#history .take-card[data-id="{take_id}"]')
    card.scroll_into_view_if_needed()
    assert card.bounding_box()["width"] <= 375
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "studio-phone-375")


def test_a_take_sent_to_inpaint_shows_its_lineage_and_its_recipe_replays(page, tmp_path):
    make_takes(page, 1, seed=21, tags="the root")
    root = page.locator('#history .take-card[data-seed="21"]').first
    root.get_by_role("button", name="→ Inpaint").click()
    expect(page.locator("#inpaint-audio a[download]")).to_have_count(1, timeout=15_000)
    expect(page.locator("#inpaint-tags textarea")).to_have_value("the root")
    fill_number(page, "inpaint-start_time", 0.5)
    fill_number(page, "inpaint-end_time", 1.5)
    fill_number(page, "inpaint-seed", 22)
    fast_steps(page, "inpaint")
    run(page, "inpaint")
    child_id = cards(page).first.get_attribute("data-id")
    child = page.locator(f'#history .take-card[data-id="{child_id}"]')
    expect(child.locator(".take-parent")).to_contain_text("from generate · seed 21")
    child.locator(".take-parent").click()  # shows where it came from
    expect(root).to_have_class(re.compile("is-shown"))

    fill_number(page, "inpaint-seed", 99)  # the replay puts back the edit's own values and source
    fill_number(page, "inpaint-start_time", 0.2)
    child.get_by_role("button", name="Replay").click()
    expect(page.locator("#inpaint-seed input[type=number]")).to_have_value("22")
    expect(page.locator("#inpaint-start_time input[type=number]")).to_have_value("0.5")
    expect(page.locator("#inpaint-end_time input[type=number]")).to_have_value("1.5")
    run(page, "inpaint")
    replayed = samples(page, page.locator("#inpaint-result a[download]").get_attribute("href"))
    assert replayed.tobytes() == samples(page, take_url(child)).tobytes()

    child.get_by_role("button", name="Recipe").click()
    link = page.locator("#history-recipe a[download]")
    expect(link).to_have_count(1, timeout=15_000)
    recipe = json.loads(page.request.get(link.get_attribute("href")).body())
    assert [step["task"] for step in recipe["steps"]] == ["generate", "inpaint"]
    assert recipe["steps"][1]["source"] == {"step": 0}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    done = subprocess.run([sys.executable, "-m", "ace_step_ui", "recipe", str(path), "--check",
                           "--output-dir", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("same samples") == 2, done.stdout
    screenshot(page, "studio-lineage")

    count = cards(page).count()  # and in the page: every step again, each a take
    page.locator("#history-recipe-runner").get_by_text("Run a recipe").click()
    page.locator("#history-recipe-file input[type=file]").set_input_files(str(path))
    expect(page.locator("#history-recipe-file")).to_contain_text("recipe.json")
    page.locator("#history-recipe-run").click()
    expect(page.locator("#history-recipe-report")).to_contain_text(
        "2 of 2 steps gave the same samples as recorded", timeout=RESULT_TIMEOUT_MS)
    expect(cards(page)).to_have_count(count + 2)
    expect(cards(page).first.locator(".take-parent")).to_contain_text("from generate · seed 21")
    screenshot(page, "studio-recipe-run")


def test_deleting_a_take_removes_it_and_its_file(page):
    make_takes(page, 1, seed=31)
    card = page.locator('#history .take-card[data-seed="31"]').first
    take_id, url = card.get_attribute("data-id"), take_url(card)
    card.get_by_role("button", name="Delete").click()
    expect(page.locator(f'#history .take-card[data-id="{take_id}"]')).to_have_count(0)
    assert page.request.get(page.url.split("?")[0] + url).status == 404


def test_history_survives_a_server_restart(browser, tiny_v15, tmp_path):
    data, port = tmp_path / "data", free_port()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    first = serve(tiny_v15, data_dir=data, port=port)
    app = next(first)
    try:
        page = context.new_page()
        open_app(page, app.url)
        make_takes(page, 2, seed=41)
        ids = [cards(page).nth(i).get_attribute("data-id") for i in range(2)]
        page.close()
    finally:
        first.close()
    second = serve(tiny_v15, data_dir=data, port=port)
    app = next(second)
    try:
        page = context.new_page()
        open_app(page, app.url)
        for take_id in ids:
            card = page.locator(f'#history .take-card[data-id="{take_id}"]')
            expect(card).to_have_count(1, timeout=15_000)
            assert samples(page, take_url(card)).size > 0
        other = browser.new_context().new_page()  # another browser sees none of them
        open_app(other, app.url)
        expect(other.locator("#history .takes-empty")).to_be_visible()
        other.context.close()
    finally:
        second.close()
        context.close()


def log_in(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#generate-run")).to_be_visible(timeout=30_000)


def test_with_auth_a_user_s_takes_follow_them_to_another_browser(browser, tiny_v15, tmp_path):
    from ace_step_ui.engines import EngineManager, known_models
    from ace_step_ui.ui import build_app, launch_options

    demo = build_app(EngineManager(device="cpu"), str(tiny_v15), known_models(), (),
                     tmp_path / "data")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1",
                            server_port=free_port(), quiet=True,
                            auth=[("alice", "alice-pw"), ("bob", "bob-pw")], **launch_options(demo))
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(3)]
    try:
        laptop, phone, other = (context.new_page() for context in contexts)
        log_in(laptop, url, "alice", "alice-pw")
        make_takes(laptop, 1, seed=51)
        take_id = cards(laptop).first.get_attribute("data-id")
        log_in(phone, url, "alice", "alice-pw")  # another browser: no localStorage in common
        expect(phone.locator(f'#history .take-card[data-id="{take_id}"]')).to_have_count(
            1, timeout=15_000)
        log_in(other, url, "bob", "bob-pw")
        expect(other.locator("#history .takes-empty")).to_be_visible()
        expect(other.locator("#history .take-card")).to_have_count(0)
    finally:
        for context in contexts:
            context.close()
        demo.close()
