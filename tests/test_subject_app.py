"""The Subject tab through its API (gradio_client) on a tiny random VAR (tests/test_subject.py): a tuning job in
the background, Generate with its models, Save as a named model, uploads checked, bad input refused while the
server keeps serving."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.conftest import wait_for_job
from tests.test_subject import with_tiny_var

FAST = {"model": "var-shapes", "subject": "orange-square", "shape": "square", "comparison": "arbooth-vs-full",
        "prompt": "a sks square at the top left", "n_images": 2, "seed": 3, "iterations": 2, "lr": 1e-3, "cfg": 4.0,
        "top_k": 0, "top_p": 0.0}


@pytest.fixture
def app_manager(tiny_manager):
    return with_tiny_var(tiny_manager)


@pytest.fixture
def subject_app(app_client, monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    return app_client


def test_a_tuning_job_then_generate_and_save(subject_app, tmp_path):
    app, manager = subject_app
    with pytest.raises(AppError, match="train first"):
        app.predict(**FAST, api_name="/subject_again")
    status, pictures = app.predict(**FAST, api_name="/subject_train")
    assert "Subject tuning" in status and Image.open(pictures).width > Image.open(pictures).height
    job = wait_for_job(app, "/subject_job")
    assert job["status"] == "done" and job["yours"], job  # 2 x 2 tuning steps, then 3 models x 2 prompts x 4 scales
    assert job["step"] == job["total"] == 2 * 2 + 3 * 2 * 4, job
    info, grid, files = app.predict(**{**FAST, "prompt": "a sks square at the bottom right"}, api_name="/subject_again")
    assert "rows base, arbooth, full" in info and Image.open(grid).height > Image.open(grid).width / 2
    with pytest.raises(AppError, match="a name is"):
        app.predict("arbooth", "../etc", api_name="/subject_save")
    assert "Saved" in app.predict("arbooth", "my-orange", api_name="/subject_save")
    assert "my-orange" in manager and (tmp_path / "home" / "tuned" / "my-orange" / "adapter.safetensors").exists()
    with pytest.raises(AppError, match="already exists"):
        app.predict("full", "my-orange", api_name="/subject_save")


def test_uploads_and_bad_input_get_messages_and_the_server_keeps_serving(subject_app, tmp_path):
    app, _ = subject_app
    wide = tmp_path / "wide.png"
    Image.new("RGB", (64, 20), (255, 120, 0)).save(wide)
    with pytest.raises(AppError, match="square picture"):
        app.predict([handle_file(str(wide))], api_name="/subject_upload")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="picture 1"):
        app.predict([handle_file(str(text))], api_name="/subject_upload")
    for kw, match in (({"prompt": " "}, "prompt is empty"), ({"iterations": 0}, "Iterations"),
                      ({"subject": "upload"}, "upload 2 to 8"), ({"model": "../x"}, "unknown VAR model")):
        with pytest.raises(AppError, match=match):
            app.predict(**{**FAST, **kw}, api_name="/subject_train")
    assert app.predict(api_name="/subject_job")["status"] == "idle"
