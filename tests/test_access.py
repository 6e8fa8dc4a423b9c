"""What a remote caller may name: the operator's models, uploads, URLs and Hub ids, no server file."""

from pathlib import Path

import pytest

from ace_step_ui.access import RemoteAccess
from ace_step_ui.errors import InputError

MODELS = ("./my-checkpoint", "ACE-Step/ACE-Step-v1-3.5B")


@pytest.fixture
def folders(tmp_path):
    uploads, allowed, private = (tmp_path / name for name in ("uploads", "allowed", "private"))
    for folder in (uploads, allowed, private):
        folder.mkdir()
        (folder / "song.wav").write_bytes(b"RIFF")
    return uploads, allowed, private


def test_models_are_chosen_among_the_operators_by_id():
    access = RemoteAccess(MODELS)
    assert access.model(None) == access.model("  ") == "./my-checkpoint"
    assert access.model(" ACE-Step/ACE-Step-v1-3.5B ") == "ACE-Step/ACE-Step-v1-3.5B"
    for unlisted in ("ACE-Step/acestep-v15-xl-base-diffusers", "/etc", "my-checkpoint", 7):
        with pytest.raises(InputError, match=r"is not served here; choose one of: "
                                             r"\./my-checkpoint, ACE-Step/ACE-Step-v1-3\.5B$"):
            access.model(unlisted)


def test_uploads_urls_and_allowed_folders_pass(folders):
    uploads, allowed, _ = folders
    access = RemoteAccess(MODELS, (allowed,))
    payload = access.payload({"audio": {"path": str(uploads / "song.wav"), "url": "x"},
                              "reference_audio": str(allowed / "song.wav"),
                              "audio_url": "https://example.com/a.mp3", "lora": "me/my-lora",
                              "tags": "x"}, uploads)
    assert payload == {"audio": str(uploads / "song.wav"),
                       "reference_audio": str(allowed / "song.wav"),
                       "audio_url": "https://example.com/a.mp3", "lora": "me/my-lora",
                       "tags": "x"}
    assert access.payload({"audio": "data:audio/wav;base64,UklGRg=="}, uploads)
    assert access.uploaded_files(payload, uploads) == [uploads / "song.wav"]


@pytest.mark.parametrize("name, value", [
    ("audio", "{private}/song.wav"),
    ("audio", {"path": "{private}/song.wav"}),
    ("audio", "{uploads}/../private/song.wav"),
    ("audio_url", "song.wav"),
    ("reference_audio", "~/song.wav"),
    ("reference_audio_url", {"url": "x"}),
    ("lora", "{private}"),
    ("lora", "../private"),
    ("lora", "a/b/c"),
])
def test_server_paths_are_refused(folders, name, value):
    uploads, allowed, private = folders
    if isinstance(value, str):
        value = value.format(private=private, uploads=uploads)
    elif "path" in value:
        value = {"path": value["path"].format(private=private)}
    with pytest.raises(InputError, match="server|not uploaded|without a path|Hub repo id"):
        RemoteAccess(MODELS, (allowed,)).payload({name: value}, uploads)


def test_a_symlink_out_of_the_upload_folder_is_refused(folders):
    uploads, _, private = folders
    (uploads / "link.wav").symlink_to(private / "song.wav")
    with pytest.raises(InputError, match="was not uploaded"):
        RemoteAccess(MODELS).payload({"audio": {"path": str(uploads / "link.wav")}}, uploads)


def test_a_hub_id_that_is_also_a_local_folder_is_refused(folders, monkeypatch):
    _, _, private = folders
    monkeypatch.chdir(private.parent)
    (private.parent / "me").mkdir()
    (private.parent / "me" / "lora").mkdir()
    with pytest.raises(InputError, match="names a path on the server"):
        RemoteAccess(MODELS).payload({"lora": "me/lora"}, Path("/nonexistent"))
