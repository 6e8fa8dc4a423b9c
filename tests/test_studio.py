"""The studio's server side: whose takes, the kept secret, form values, the take route."""

from types import SimpleNamespace

import gradio as gr
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ace_step_ui import studio
from ace_step_ui.audio import Audio, write_audio
from ace_step_ui.history import History


def test_an_auth_user_owns_their_takes_else_the_browser_key_does():
    assert studio.owner_of(SimpleNamespace(username="alice"), "k") == "user:alice"
    assert studio.owner_of(SimpleNamespace(username=None), "abc") == "browser:abc"
    with pytest.raises(gr.Error, match="reload the page"):
        studio.owner_of(SimpleNamespace(username=None), None)


def test_the_browser_secret_is_made_once_and_kept_private(tmp_path):
    secret = studio.browser_secret(tmp_path / "history")
    assert len(secret) == 64 and studio.browser_secret(tmp_path / "history") == secret
    assert (tmp_path / "history" / studio.SECRET_FILE).stat().st_mode & 0o077 == 0


def test_request_values_become_what_the_form_shows():
    assert studio.form_value("generate", "oss_steps", (1, 5, 9)) == "1, 5, 9"
    assert studio.form_value("generate", "tags", "x") == "x"


def test_the_take_route_serves_kept_takes_only(tmp_path):
    import torch

    history = History(tmp_path / "history")
    path = write_audio(tmp_path / "take.wav", Audio(torch.zeros(1, 4410), 44100), "wav", {})
    params = {"task": "generate", "model": "m", "seed": 3, "tags": "t", "lyrics": "",
              "request": {"tags": "t"}, "duration_s": 0.1}
    take = history.add("browser:k", path, params, "run", 0)
    app = FastAPI(routes=studio.routes(history))
    client = TestClient(app)
    answer = client.get(f"/takes/{take.id}/{take.file}")
    assert answer.status_code == 200 and answer.content == history.path(take.id, take.file).read_bytes()
    assert client.get(f"/takes/{take.id}/other.wav").status_code == 404
    assert client.get("/takes/0123/x.wav").status_code == 404
    shown = studio.shown(history, "browser:k")["takes"]
    assert [item["id"] for item in shown] == [take.id]
    assert shown[0]["url"] == f"takes/{take.id}/{take.file}"  # relative: under a proxy's root too
    assert studio.shown(history, "browser:other") == {"takes": []}


def test_a_bad_history_days_stops_the_app_with_one_line():
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "app.py", "--history-days", "-1"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 64
    assert done.stderr.strip() == "app.py: --history-days must be 0 (keep) or more"
