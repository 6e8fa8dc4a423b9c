"""The takes history: real SQLite and files in tmp_path; replay and the `recipe` command on the tiny
ACE-Step v1 checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from ace_step_ui import cli as cli_module
from ace_step_ui import tasks
from ace_step_ui.audio import Audio, write_audio
from ace_step_ui.engines import EngineManager
from ace_step_ui.errors import InputError
from ace_step_ui.history import (RECIPE_VERSION, History, new_run_id, replay, samples_sha256,
                                 sha256_file)

ALICE, BOB = "user:alice", "browser:0123abcd"


def tone(path: Path, hz: float, fmt: str = "wav", seconds: float = 1.0) -> Path:
    """A short stereo tone at 48 kHz, with metadata as a result carries it."""
    t = torch.arange(int(seconds * 48000)) / 48000
    samples = torch.stack([0.3 * torch.sin(2 * torch.pi * hz * t)] * 2)
    return write_audio(path, Audio(samples, 48000), fmt, {"tags": "test", "seed": int(hz)})


def params(task: str, seed: int, **request) -> dict:
    """`Result.params` as tasks.run makes them, reduced to what the history reads."""
    return {"task": task, "model": "ACE-Step/ACE-Step-v1-3.5B", "tags": request.get("tags", "lofi"),
            "lyrics": "", "seed": seed, "request": {"tags": "lofi", **request},
            "duration_s": 1.0}


@pytest.fixture
def store(tmp_path):
    kept = History(tmp_path / "history")
    yield kept
    kept.close()


def test_add_list_get_and_delete(store, tmp_path):
    song = tone(tmp_path / "generate-lofi-5.wav", 220)
    run_id = new_run_id()
    first = store.add(ALICE, song, params("generate", 5, duration=1), run_id, 0)
    second = store.add(ALICE, tone(tmp_path / "generate-lofi-6.flac", 330, "flac"),
                       params("generate", 6, duration=1), run_id, 1)

    assert song.is_file()  # copied, not moved
    assert re.fullmatch("[0-9a-f]{32}", first.id) and first.id != second.id
    assert (first.task, first.seed, first.format, first.file) == ("generate", 5, "wav", song.name)
    assert first.sha256 == sha256_file(song) and first.samples_sha256 == samples_sha256(song)
    assert first.parent is None and first.params["request"] == {"tags": "lofi", "duration": 1}
    assert [take.id for take in store.list(ALICE)] == [second.id, first.id]
    assert [take.id for take in store.list(ALICE, limit=1)] == [second.id]
    assert store.get(ALICE, first.id) == first
    assert first.summary() == {
        "id": first.id, "run_id": run_id, "index": 0, "created": first.created, "task": "generate",
        "model": "ACE-Step/ACE-Step-v1-3.5B", "seed": 5, "tags": "lofi", "lyrics": "",
        "format": "wav", "file": song.name, "parent": None, "duration_s": 1.0,
        "url": f"takes/{first.id}/{song.name}"}
    json.dumps(first.summary())
    assert store.path(first.id, song.name).read_bytes() == song.read_bytes()

    assert store.delete(ALICE, first.id) is True
    assert store.delete(ALICE, first.id) is False
    assert store.get(ALICE, first.id) is None and store.path(first.id, song.name) is None
    assert not (store.takes / first.id).exists()
    assert [take.id for take in store.list(ALICE)] == [second.id]


def test_add_refuses_what_is_not_a_take(store, tmp_path):
    (tmp_path / "song.ogg").write_bytes(b"OggS")
    with pytest.raises(InputError, match="'song.ogg' is not a take: its file must end in .wav, "
                                         ".flac, .mp3"):
        store.add(ALICE, tmp_path / "song.ogg", params("generate", 1), new_run_id(), 0)
    with pytest.raises(InputError, match="audio file '.*missing.wav' not found"):
        store.add(ALICE, tmp_path / "missing.wav", params("generate", 1), new_run_id(), 0)
    with pytest.raises(InputError, match="source audio '.*nowhere.wav' not found"):
        store.add(ALICE, tone(tmp_path / "a.wav", 200), params("inpaint", 1), new_run_id(), 0,
                  source_path=tmp_path / "nowhere.wav")
    assert store.list(ALICE) == [] and list(store.takes.iterdir()) == []


def test_owners_see_only_their_own_takes(store, tmp_path):
    take = store.add(ALICE, tone(tmp_path / "a.wav", 220), params("generate", 1), new_run_id(), 0)
    assert store.list(BOB) == [] and store.get(BOB, take.id) is None
    assert store.delete(BOB, take.id) is False and store.lineage(BOB, take.id) == []
    with pytest.raises(InputError, match="no take '.*' in this history"):
        store.recipe(BOB, take.id)
    assert store.get(ALICE, take.id) == take
    # Another owner's take of the same bytes is not a parent.
    edit = store.add(BOB, tone(tmp_path / "b.wav", 330), params("inpaint", 2), new_run_id(), 0,
                     source_path=tmp_path / "a.wav")
    assert edit.parent is None and edit.source_sha256 == take.sha256


def test_the_limit_drops_the_oldest_takes_with_their_files(tmp_path):
    store = History(tmp_path / "history", limit=3)
    takes = [store.add(ALICE, tone(tmp_path / f"{n}.wav", 200 + n), params("generate", n),
                       new_run_id(), 0) for n in range(5)]
    kept_by_bob = store.add(BOB, tone(tmp_path / "bob.wav", 100), params("generate", 9),
                            new_run_id(), 0)
    assert [take.id for take in store.list(ALICE)] == [take.id for take in takes[:1:-1]]
    for dropped in takes[:2]:
        assert not (store.takes / dropped.id).exists()
        assert store.path(dropped.id, dropped.file) is None
    assert store.list(BOB) == [kept_by_bob]
    store.close()


def test_a_reopened_history_still_has_the_takes_and_their_files(tmp_path):
    store = History(tmp_path / "history")
    song = tone(tmp_path / "song.mp3", 440, "mp3")
    take = store.add(ALICE, song, params("generate", 3), new_run_id(), 0)
    store.close()
    orphan = tmp_path / "history" / "takes" / ("f" * 32)  # a copy whose row was never written
    orphan.mkdir()

    reopened = History(tmp_path / "history")  # a server restart
    assert reopened.list(ALICE) == [take]
    assert reopened.path(take.id, "song.mp3").read_bytes() == song.read_bytes()
    assert not orphan.exists()
    reopened.close()


def test_path_serves_only_a_take_s_own_file(store, tmp_path):
    take = store.add(ALICE, tone(tmp_path / "song.wav", 220), params("generate", 1), new_run_id(), 0)
    assert store.path(take.id, "song.wav") == store.takes / take.id / "song.wav"
    for take_id, file in [(take.id, "../../history.sqlite3"), (take.id, "other.wav"),
                          ("..", "history.sqlite3"), (f"{take.id}/..", "song.wav"),
                          ("0" * 32, "song.wav"), (take.id.upper(), "song.wav"), ("", "")]:
        assert store.path(take_id, file) is None


def test_a_take_made_from_another_take_s_bytes_has_it_as_parent(store, tmp_path):
    song = store.add(ALICE, tone(tmp_path / "song.wav", 220), params("generate", 1), new_run_id(), 0)
    upload = tmp_path / "upload" / "same-bytes.wav"  # the page sends a copy of the take's file
    upload.parent.mkdir()
    shutil.copyfile(store.path(song.id, song.file), upload)
    edit = store.add(ALICE, tone(tmp_path / "edit.wav", 330), params("inpaint", 2), new_run_id(), 0,
                     source_path=upload)
    other = store.add(ALICE, tone(tmp_path / "other.wav", 440), params("inpaint", 3), new_run_id(),
                      0, source_path=tone(tmp_path / "mine.wav", 550))
    assert edit.parent == song.id and other.parent is None
    assert [take.id for take in store.lineage(ALICE, edit.id)] == [song.id, edit.id]
    assert store.lineage(ALICE, other.id) == [other]
    assert store.lineage(ALICE, "0" * 32) == []
    store.delete(ALICE, song.id)  # the chain now starts at the edit, from its source's bytes
    assert store.lineage(ALICE, edit.id) == [store.get(ALICE, edit.id)]
    assert store.recipe(ALICE, edit.id)["steps"][0]["source"] == {"file": "same-bytes.wav",
                                                                  "sha256": song.sha256}


def test_the_recipe_of_an_edit_chain(store, tmp_path):
    song = store.add(ALICE, tone(tmp_path / "song.wav", 220),
                     params("generate", 7, duration=1, number_of_steps=2), new_run_id(), 0)
    inpainted = store.add(
        ALICE, tone(tmp_path / "inpaint.flac", 330, "flac"),
        {**params("inpaint", 8, audio=str(tmp_path / "song.wav"), start_time=0.2, end_time=0.8),
         "retake_seed": 9}, new_run_id(), 0, source_path=tmp_path / "song.wav")
    longer = store.add(
        ALICE, tone(tmp_path / "outpaint.mp3", 440, "mp3"),
        params("outpaint", 10, audio_url="https://example.com/inpaint.flac",
               extend_after_duration=1), new_run_id(), 0, source_path=tmp_path / "inpaint.flac")
    model = "ACE-Step/ACE-Step-v1-3.5B"
    assert store.recipe(ALICE, longer.id) == {"recipe": RECIPE_VERSION, "steps": [
        {"task": "generate", "model": model, "format": "wav",
         "request": {"tags": "lofi", "duration": 1, "number_of_steps": 2, "seed": 7},
         "source": None, "take": song.id, "samples_sha256": song.samples_sha256},
        {"task": "inpaint", "model": model, "format": "flac",
         "request": {"tags": "lofi", "start_time": 0.2, "end_time": 0.8, "seed": 8, "retake_seed": 9},
         "source": {"step": 0}, "take": inpainted.id, "samples_sha256": inpainted.samples_sha256},
        {"task": "outpaint", "model": model, "format": "mp3",
         "request": {"tags": "lofi", "extend_after_duration": 1, "seed": 10},
         "source": {"step": 1}, "take": longer.id, "samples_sha256": longer.samples_sha256},
    ]}
    # A chain's root made from an upload names the file; one saved without it, the name it was sent.
    upload = store.add(ALICE, tone(tmp_path / "x.wav", 250), params("inpaint", 1, audio="/up/a.wav"),
                       new_run_id(), 0, source_path=tone(tmp_path / "my song.wav", 260))
    assert store.recipe(ALICE, upload.id)["steps"][0]["source"] == {
        "file": "my song.wav", "sha256": sha256_file(tmp_path / "my song.wav")}
    unknown = store.add(ALICE, tone(tmp_path / "y.wav", 270),
                        params("inpaint", 1, audio="https://example.com/a/b.flac?x=1"),
                        new_run_id(), 0)
    assert store.recipe(ALICE, unknown.id)["steps"][0]["source"] == {"file": "b.flac",
                                                                     "sha256": None}


def step(task="generate", source=None, **request):
    return {"task": task, "model": "ACE-Step/ACE-Step-v1-3.5B", "format": "wav",
            "request": {"tags": "lofi", **request}, "source": source}


@pytest.mark.parametrize("recipe, message", [
    ([], "a recipe is a JSON object, not list"),
    ({"steps": []}, 'not an ACE-Step Playground recipe \\(it has no "recipe" field\\)'),
    ({"recipe": "ace-step-playground/9", "steps": [step()]}, "its \"recipe\" is 'ace-step-playground/9'"),
    ({"recipe": RECIPE_VERSION, "steps": []}, '"steps" must be a non-empty list'),
    ({"recipe": RECIPE_VERSION, "steps": [step("remix")]}, "step 0: unknown task 'remix'"),
    ({"recipe": RECIPE_VERSION, "steps": [{**step(), "format": "ogg"}]}, "step 0: format 'ogg'"),
    ({"recipe": RECIPE_VERSION, "steps": [step(), step("inpaint", {"step": 1})]},
     "step 1: its source is step 1, but a step can only start from an earlier step's output \\(0 to 0\\)"),
    ({"recipe": RECIPE_VERSION, "steps": [step("inpaint")]}, "step 0: inpaint needs source audio"),
    ({"recipe": RECIPE_VERSION, "steps": [step(source={"step": 0})]},
     "step 0: generate takes no source audio"),
    ({"recipe": RECIPE_VERSION, "steps": [step(), step("inpaint", {"step": 0}, audio="/a.wav")]},
     'step 1: give the source audio as the step\'s "source"'),
    ({"recipe": RECIPE_VERSION, "steps": [step("inpaint", {"file": "a.wav", "sha256": "1" * 64})]},
     "step 0 starts from the upload 'a.wav' \\(sha256 1{64}\\), which was not given: pass that file "
     "\\(on the command line: --source PATH\\)"),
    ({"recipe": RECIPE_VERSION, "steps": [step(duration=999)]},
     "step 0: 'duration' must be between 1 and 240, not 999"),
])
def test_replay_refuses_a_bad_recipe_before_any_work(recipe, message, tmp_path):
    with pytest.raises(InputError, match=message):
        replay(recipe, EngineManager(device="cpu"), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def manager():
    return EngineManager(device="cpu")


@pytest.fixture(scope="module")
def chain(tiny_v1, manager, tmp_path_factory):
    """A generate → inpaint chain on the tiny v1 model, kept in a history the way the page keeps it:
    the inpaint's source is a copy of the song's file."""
    folder = tmp_path_factory.mktemp("chain")
    store = History(folder / "history")
    model = str(tiny_v1)
    song = tasks.run("generate", {"tags": "lofi", "duration": 2, "number_of_steps": 2, "seed": 7},
                     manager, model)
    song_path = tasks.save_result(song, folder / "results", "wav")
    first = store.add(ALICE, song_path, song.params, new_run_id(), 0)
    source = folder / "upload" / "song.wav"
    source.parent.mkdir()
    shutil.copyfile(song_path, source)
    edit = tasks.run("inpaint", {"audio": str(source), "tags": "jazz", "start_time": 0.5,
                                 "end_time": 1.5, "number_of_steps": 2}, manager, model)
    edit_path = tasks.save_result(edit, folder / "results", "flac")
    second = store.add(ALICE, edit_path, edit.params, new_run_id(), 0, source_path=source)
    assert second.parent == first.id
    yield store.recipe(ALICE, second.id)
    store.close()


def test_replay_makes_the_same_samples_and_another_seed_does_not(chain, manager, tmp_path):
    done = replay(chain, manager, out_dir=tmp_path / "again")
    recorded = [recorded["samples_sha256"] for recorded in chain["steps"]]
    assert [(step["step"], step["same"], step["samples_sha256"]) for step in done] == [
        (0, True, recorded[0]), (1, True, recorded[1])]
    assert [step["seed"] for step in done] == [7, chain["steps"][1]["request"]["seed"]]
    assert done[0]["path"].suffix == ".wav" and done[1]["path"].suffix == ".flac"
    assert all(step["path"].parent == tmp_path / "again" for step in done)

    reseeded = json.loads(json.dumps(chain))
    reseeded["steps"][1]["request"]["seed"] += 1
    done = replay(reseeded, manager, out_dir=tmp_path / "reseeded")
    assert [step["same"] for step in done] == [True, False]


def run_cli(capsys, *args) -> tuple[int, list[str], list[str]]:
    code = cli_module.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.strip().splitlines()


@pytest.fixture
def cli_on(manager, monkeypatch):
    """The CLI runs on the module's manager, so the model loads once."""
    monkeypatch.setattr(cli_module, "EngineManager", lambda **options: manager)


def test_recipe_command_replays_a_chain_and_check_fails_on_other_samples(chain, cli_on, tmp_path,
                                                                         capsys):
    recipe = tmp_path / "take.recipe.json"
    recipe.write_text(json.dumps(chain))
    code, printed, _ = run_cli(capsys, "recipe", recipe, "--output-dir", tmp_path / "out",
                               "--device", "cpu", "--check")
    seeds = [step["request"]["seed"] for step in chain["steps"]]
    assert code == 0 and len(printed) == 2
    for number, line in enumerate(printed):
        path = line.split(": ", 1)[1].split(" (")[0]
        assert line == f"step {number}: {path} (seed {seeds[number]}, same samples)"
        assert Path(path).parent == tmp_path / "out"

    chain["steps"][0]["request"]["seed"] = 8  # the inpaint then starts from another song too
    recipe.write_text(json.dumps(chain))
    code, printed, _ = run_cli(capsys, "recipe", recipe, "--output-dir", tmp_path / "out",
                               "--device", "cpu", "--check")
    assert code == 1
    assert [line.rsplit(", ", 1)[1] for line in printed] == ["different samples)"] * 2


def test_recipe_command_from_an_upload_needs_the_file(tiny_v1, manager, cli_on, tmp_path, capsys):
    store = History(tmp_path / "history")
    upload = tone(tmp_path / "my song.wav", 220, seconds=2)
    edit = tasks.run("inpaint", {"audio": str(upload), "tags": "jazz", "start_time": 0.5,
                                 "end_time": 1.5, "number_of_steps": 2, "seed": 3}, manager,
                     str(tiny_v1))
    take = store.add(BOB, tasks.save_result(edit, tmp_path / "results", "wav"), edit.params,
                     new_run_id(), 0, source_path=upload)
    recipe = tmp_path / "take.recipe.json"
    recipe.write_text(json.dumps(store.recipe(BOB, take.id)))
    store.close()

    args = ["recipe", recipe, "--output-dir", tmp_path / "out", "--model", tiny_v1]
    code, printed, errors = run_cli(capsys, *args)
    assert (code, printed) == (65, [])
    assert errors == [f"error: step 0 starts from the upload 'my song.wav' (sha256 "
                      f"{sha256_file(upload)}), which was not given: pass that file (on the "
                      f"command line: --source PATH)"]
    assert not (tmp_path / "out").exists()

    renamed = tmp_path / "renamed.wav"  # found by its bytes, whatever its name
    shutil.copyfile(upload, renamed)
    code, printed, _ = run_cli(capsys, *args, "--source", renamed)
    assert code == 0 and printed[0].endswith("(seed 3, same samples)")


@pytest.mark.parametrize("content, code, message", [
    (None, 64, "python -m ace_step_ui recipe: cannot read"),
    ("{not json", 65, "is not valid JSON"),
    ('{"recipe": "other"}', 65, "not an ACE-Step Playground recipe"),
])
def test_recipe_command_bad_files_exit_with_one_line(content, code, message, tmp_path, capsys):
    recipe = tmp_path / "take.recipe.json"
    if content is not None:
        recipe.write_text(content)
    done, printed, errors = run_cli(capsys, "recipe", recipe)
    assert (done, printed, len(errors)) == (code, [], 1) and message in errors[0]


def test_a_take_s_source_is_kept_once_for_replay_and_goes_with_its_last_take(store, tmp_path):
    upload = tone(tmp_path / "upload.wav", 550, seconds=2.0)
    song = store.add(ALICE, tone(tmp_path / "song.wav", 220), params("generate", 1), new_run_id(), 0)
    assert store.source_path(ALICE, song.id) is None  # made from nothing
    first, second = (store.add(ALICE, tone(tmp_path / f"edit{n}.wav", 330), params("inpaint", n),
                               new_run_id(), 0, source_path=upload) for n in (2, 3))
    kept = store.source_path(ALICE, first.id)
    assert kept is not None and kept.read_bytes() == upload.read_bytes()
    assert store.source_path(ALICE, second.id) == kept  # one copy for both
    assert store.source_path(BOB, first.id) is None
    upload.unlink()  # the page's upload goes; the replay source stays
    store.delete(ALICE, first.id)
    assert kept.is_file()
    store.delete(ALICE, second.id)
    assert not kept.exists()
    child_source = tmp_path / "copy.wav"  # a take's own bytes: the parent's file is its source
    shutil.copyfile(store.path(song.id, song.file), child_source)
    child = store.add(ALICE, tone(tmp_path / "child.wav", 440), params("inpaint", 4), new_run_id(),
                      0, source_path=child_source)
    assert store.source_path(ALICE, child.id) == store.path(song.id, song.file)
    store.delete(ALICE, song.id)  # the parent goes; the kept copy of its bytes replays the child
    assert store.source_path(ALICE, child.id).read_bytes() == child_source.read_bytes()


def test_takes_older_than_the_kept_days_go_with_their_files(tmp_path):
    kept = History(tmp_path / "history", keep_days=30)
    upload = tone(tmp_path / "upload.wav", 550)
    take = kept.add(ALICE, tone(tmp_path / "a.wav", 220), params("inpaint", 1), new_run_id(), 0,
                    source_path=upload)
    source = kept.source_path(ALICE, take.id)
    assert kept.sweep(now=take.created + 29 * 86400) == [] and kept.get(ALICE, take.id)
    assert kept.sweep(now=take.created + 31 * 86400) == [take.id]
    assert kept.get(ALICE, take.id) is None and not (kept.takes / take.id).exists()
    assert not source.exists()
    forever = History(tmp_path / "forever", keep_days=0)
    old = forever.add(ALICE, tone(tmp_path / "b.wav", 220), params("generate", 2), new_run_id(), 0)
    assert forever.sweep(now=old.created + 3650 * 86400) == []
    with pytest.raises(InputError, match="0 days \\(no end\\) or more"):
        History(tmp_path / "bad", keep_days=-1)


def test_an_owner_s_kept_sources_are_found_by_their_bytes(store, tmp_path):
    upload = tone(tmp_path / "upload.wav", 550)
    store.add(ALICE, tone(tmp_path / "a.wav", 220), params("inpaint", 1), new_run_id(), 0,
              source_path=upload)
    kept = store.kept_sources(ALICE)
    assert list(kept) == [sha256_file(upload)]
    assert kept[sha256_file(upload)].read_bytes() == upload.read_bytes()
    assert store.kept_sources(BOB) == {}
