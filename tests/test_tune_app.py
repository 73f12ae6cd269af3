"""The Tune tab through its API (gradio_client), on a tiny random few-step model: a run in the
background that registers the tuned model, one run at a time, Stop, Save, and bad inputs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image



@pytest.fixture
def app_manager(fewstep_manager):
    return fewstep_manager


@pytest.fixture
def tune_app(app_client, tmp_path, monkeypatch):
    """(url, manager, tmp_path) of the studio on a tiny few-step model; saved adapters go to tmp_path."""
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    first, manager = app_client
    return first.src, manager, tmp_path


def client(url, tmp_path):
    return Client(url, verbose=False, download_files=str(tmp_path))


def train(c, uploads=None, **kw):
    if uploads:
        c.predict(uploads, api_name="/pso_upload")
    status, targets = c.predict(**kw, api_name="/pso_train")
    assert Image.open(targets).width > Image.open(targets).height  # the targets in one row
    return status


def wait_for(condition, seconds=120):
    end = time.time() + seconds
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_train_registers_the_tuned_model_and_save_keeps_it(tune_app):
    url, manager, tmp_path = tune_app
    me = client(url, tmp_path)
    with pytest.raises(AppError, match="train a model first"):
        me.predict("thick-1", api_name="/pso_save")
    status = train(me, style="thick", loss="dpo", steps=3, lora_rank=2, n_refs=1, validate_every=2, seed=1)
    assert "running, step 0 /" in status
    assert wait_for(lambda: "digits-fewstep-tuned" in manager)
    with manager.use("digits-fewstep-tuned") as dm:
        assert dm.info["tune"]["trained_steps"] == 3 and dm.info["tune"]["loss"] == "dpo"
    with pytest.raises(AppError, match="lower-case"):
        me.predict("../escape", api_name="/pso_save")
    saved = me.predict("thick-1", api_name="/pso_save")
    assert "thick-1" in saved and "thick-1" in manager
    assert (tmp_path / "home" / "tuned" / "thick-1" / "adapter.safetensors").exists()
    with pytest.raises(AppError, match="already exists"):
        me.predict("thick-1", api_name="/pso_save")
    assert all(row["in use"] == 0 for row in manager.status())


def test_save_answers_with_the_model_name_never_a_server_path(tune_app):
    url, manager, tmp_path = tune_app
    me = client(url, tmp_path)
    train(me, style="thin", steps=1, lora_rank=2, n_refs=1)
    answers = []

    def save():  # the run registers its model a moment before it reports "done"
        try:
            answers.append(me.predict("thin-1", api_name="/pso_save"))
        except AppError as exc:
            assert "train a model first" in str(exc)
        return answers

    assert wait_for(save)
    saved = answers[0]
    assert "thin-1" in saved and (tmp_path / "home" / "tuned" / "thin-1" / "adapter.safetensors").exists()
    for server_path in (str(tmp_path), str(Path.home()), "STUDIO_HOME", "safetensors"):
        assert server_path not in saved
    assert not re.search(r"(^|[\s(`'\"])(/|~|[A-Za-z]:\\)", saved), saved  # no absolute path at all


def test_one_run_at_a_time_and_only_its_owner_stops_it(tune_app):
    url, manager, tmp_path = tune_app
    first, second = client(url, tmp_path), client(url, tmp_path)
    train(first, style="thin", steps=2000, lora_rank=2, n_refs=1)
    with pytest.raises(AppError, match="busy: Tune is already running"):
        train(second, style="thick", steps=2)
    with pytest.raises(AppError, match="another session"):
        second.predict(api_name="/pso_stop")
    assert "stopping" in first.predict(api_name="/pso_stop")
    assert wait_for(lambda: "digits-fewstep-tuned" in manager)
    with manager.use("digits-fewstep-tuned") as dm:
        assert 0 < dm.info["tune"]["trained_steps"] < 2000  # stopped early; the adapter so far is kept


def _image(tmp_path, name, size):
    arr = np.full((size[1], size[0]), 255, np.uint8)
    arr[size[1] // 4: 3 * size[1] // 4, size[0] // 2 - 2: size[0] // 2 + 2] = 0
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    return handle_file(str(path))


def test_bad_targets_get_messages(tune_app):
    url, manager, tmp_path = tune_app
    me = client(url, tmp_path)
    with pytest.raises(AppError, match="at least 2"):
        train(me, style="custom", digit=1, uploads=[_image(tmp_path, "a.png", (32, 32))])
    with pytest.raises(AppError, match="different sizes"):
        train(me, style="custom", digit=1, uploads=[_image(tmp_path, "a.png", (32, 32)),
                                                     _image(tmp_path, "b.png", (40, 30))])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="notes.png"):
        train(me, style="custom", digit=1, uploads=[handle_file(str(text)), _image(tmp_path, "a.png", (32, 32))])
    with pytest.raises(AppError, match="0 to 9|maximum value 9"):
        train(me, style="custom", digit=12, uploads=[_image(tmp_path, "a.png", (32, 32))] * 2)
    with pytest.raises(AppError, match="unknown base model"):
        train(me, style="thick", base="digits-cond")  # not a few-step model
    with pytest.raises(AppError, match="LoRA rank"):
        train(me, style="thick", lora_rank=0)
    assert "digits-fewstep-tuned" not in manager
    status = train(me, style="custom", digit=1, uploads=[_image(tmp_path, "a.png", (32, 32)),
                                                          _image(tmp_path, "c.png", (32, 32))],
                        steps=2, lora_rank=2, n_refs=1)
    assert "running, step 0 /" in status
    assert wait_for(lambda: "digits-fewstep-tuned" in manager)


def test_generate_takes_the_few_step_models_sampler_and_draws_with_it(tune_app):
    url, manager, tmp_path = tune_app
    me = client(url, tmp_path)
    prompt, digit, *defaults = me.predict("digits-fewstep", api_name="/model_fields")
    assert [d["value"] for d in defaults] == ["ddim", 4, 1.0]  # updates to the scheduler, steps and guidance
    preview, gallery, seed, parameters, info = me.predict(model="digits-fewstep", scheduler="ddim", steps=2,
                                                          guidance=1.0, n_images=2, api_name="/generate")
    assert len(gallery) == 2 and parameters["scheduler"] == "ddim"
    for scheduler, steps in (("ddim", 3), ("lcm", 8)):
        with pytest.raises(AppError, match="4-step model"):
            me.predict(model="digits-fewstep", scheduler=scheduler, steps=steps, api_name="/generate")
