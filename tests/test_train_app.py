"""The Train tab through its API (gradio_client): bad settings are refused with a message before anything
starts, and the job stays idle."""

from __future__ import annotations

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


def test_bad_settings_are_refused_with_a_message_and_start_nothing(train_app, tmp_path):
    """(A run through the page, its Register and Generate listing the model: tests/test_browser.py; the method's
    runs, Stop and Register: tests/test_train.py.)"""
    client, _ = train_app
    for changes, message in BAD:  # one served app for the whole test (a server start costs seconds)
        with pytest.raises(AppError, match=message):
            start(client, **changes)
    assert not (tmp_path / "runs").exists()
    status = client.predict(api_name="/train_job")
    assert status["status"] == "idle" and status["step"] == 0
