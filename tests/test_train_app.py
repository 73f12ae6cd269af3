"""The Train tab through its API (gradio_client): bad settings are refused with a message before anything
starts; a tiny run trains in an accelerate subprocess, is polled to its end and registered, and Generate then
drives the registered model."""

from __future__ import annotations

import time

import pytest
from gradio_client.exceptions import AppError


@pytest.fixture
def app_manager(tiny_manager):
    return tiny_manager


@pytest.fixture
def train_app(app_client, tmp_path, monkeypatch):
    import studio.train.common as common

    monkeypatch.setattr(common, "RUNS_DIR", tmp_path / "runs")
    return app_client


def start(client, **changes):
    settings = dict(objective="eps", repa=0.0, self_condition=False, size="small", steps=3, batch=8, lr=2e-3, seed=0,
                    evaluate_every=10, eval_images=20, processes=0)
    return client.predict(**{**settings, **changes}, api_name="/train_start")


BAD = [({"steps": 0}, "Steps must be between"), ({"lr": -1.0}, "Learning rate must be between"),
       ({"batch": 65_536}, "use a batch of at most")]


def test_bad_settings_are_refused_then_a_run_trains_registers_and_generate_drives_it(train_app, tmp_path):
    client, manager = train_app
    for changes, message in BAD:  # one served app for the whole test (a server start costs seconds)
        with pytest.raises(AppError, match=message):
            start(client, **changes)
    assert not (tmp_path / "runs").exists()
    assert "running" in start(client)
    end = time.time() + 240
    while time.time() < end:
        status = client.predict(api_name="/train_job")
        if status["status"] != "running":
            break
        time.sleep(1)
    assert status["status"] == "done", status
    text = client.predict(api_name="/train_register")
    key = next(k for k in manager.keys() if k.startswith("trained-"))
    assert key in text and manager.info(key)["train_parameters"]["objective"] == "eps"
    gallery = client.predict(model=key, digit=7, steps=2, n_images=1, api_name="/generate")[1]
    assert len(gallery) == 1
